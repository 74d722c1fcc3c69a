//! `trace::` — live TCP tracing on this node with eBPF (snat-ebpf), returning the same
//! `Trace` as `tcptracer::read`, so one playbook ranks a live window or a log.
//!
//! ```rhai
//! let t = trace::run(#{seconds: 30, mode: "aggregated", by: [["saddr", "netns"], ["netns", "daddr", "dport"]]});
//! report::table("top talkers", t.rank(["saddr", "netns"]).top(10));
//! ```
//!
//! Options (all optional):
//!
//! | option | meaning | default |
//! | --- | --- | --- |
//! | `seconds` | how long to trace (integer or float, > 0) | 10 |
//! | `mode` | `"aggregated"` (counters in the kernel) or `"stream"` (one event per connection) | `"aggregated"` |
//! | `by` | groupings to keep, arrays of field names | `[["saddr","netns"],["netns","daddr","dport"]]` |
//! | `netns` | network namespace inodes to trace (array of integers); one no process is in at attach gets a warning and a note | all |
//! | `pid` | only sockets owned by this process; a pid with no process at attach gets a warning and a note | all |
//! | `dport` | only this server port (remote port outbound, local port inbound) | all |
//! | `family` | `"ipv4"` or `"ipv6"` | both |
//! | `text_out` | write events as `tcptracer -t -v` text to this file (stream mode; TYPE is 14 characters wide so `failed_connect` lines align, fields split by blanks as tcptracer's) | none |
//! | `jsonl_out` | write events as JSON Lines to this file (stream mode; fields as documented for `snat_core::model::TcpEvent`; an owner the tracer could not know is `"pid": null, "comm": null`) | none |
//! | `bucket` | timeline bucket in seconds (0.5 to `seconds`, at most 1440 buckets) | max(1, seconds / 60) |
//! | `seed_owners` | at attach, name the owners of sockets older than the trace (in stream mode listeners and connections; in aggregated mode listeners, and only with a `pid` filter, the one case that uses owners) from a census and `/proc` snapshot, so their accepts and closes do not show pid 0 | `true` |
//! | `attach` | `"auto"` (raw tracepoint, else the classic one), `"raw_tracepoint"` or `"tracepoint"` (needs tracefs): same events, the raw one costs less | `"auto"` |
//!
//! Every live trace keeps a timeline (`t.timeline()`): per bucket and network namespace,
//! connects, accepts, failed connects and closes, and the connections still open at each
//! bucket's end. In aggregated mode the kernel's counters are read at every bucket end and
//! the differences kept; in stream mode events are bucketed by their timestamp (events
//! lost from the event rings are missing from it, the kernel's counters are not) and the
//! open connections still come from the counters. Memory is buckets x namespaces.
//!
//! In aggregated mode the kernel keeps one port per row (the remote port of outbound
//! connections, the listening port of inbound ones) and no pid or comm: grouping by `pid`
//! or `comm` needs `mode: "stream"`, and `sport` of an outbound row is `()`, in stream mode
//! too (the local port of an outbound connection is ephemeral: the events written to
//! `text_out` and `jsonl_out` carry it, rankings do not). In both modes
//! (and in `tcptracer::read`) `dport` is the destination port of connections this side
//! opened and `()` for inbound ones (accepts, and the closes of accepted connections): their
//! remote port is the client's ephemeral port, worth nothing in a ranking. So a ranking by
//! `["netns", "daddr", "dport"]` gives the same rows in either mode; the events written to
//! `text_out` and `jsonl_out` still carry the client's port.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use rhai::{Dynamic, EvalAltResult, Map, Module};
use snat_core::aggregate::{Field, TraceSummary};
use snat_core::model::{Family, TcpEvent};
use snat_core::procindex::{ProcIndex, netns_without_process};
use snat_core::timeline::{self, BucketCounts, TimelineBuilder};
use snat_ebpf::output::{JsonlWriter, TextWriter};
use snat_ebpf::{AttachPoint, Mode, Progress, RunEnd, TraceResult, TracerBuilder};
use snat_ebpf::{FlowRow, StreamRecord};

use super::types::{Trace, groupings_of};
use super::{func, to_json};
use crate::ctx::{Ctx, StageError};

const KNOWN: [&str; 12] = [
    "seconds",
    "mode",
    "by",
    "netns",
    "pid",
    "dport",
    "family",
    "text_out",
    "jsonl_out",
    "bucket",
    "seed_owners",
    "attach",
];

/// The parsed options of `trace::run`.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceOptions {
    /// How long to trace.
    pub duration: Duration,
    /// Aggregated or stream.
    pub mode: Mode,
    /// Groupings to keep.
    pub by: Vec<Vec<Field>>,
    /// netns filter.
    pub netns: Vec<u64>,
    /// pid filter.
    pub pid: Option<u32>,
    /// port filter.
    pub dport: Option<u16>,
    /// family filter.
    pub family: Option<Family>,
    /// tcptracer text output file.
    pub text_out: Option<PathBuf>,
    /// JSON Lines output file.
    pub jsonl_out: Option<PathBuf>,
    /// Timeline bucket.
    pub bucket: Duration,
    /// Name the owners of sockets older than the trace from a snapshot taken at attach.
    pub seed_owners: bool,
    /// Where to attach the program.
    pub attach: AttachPoint,
}

fn int_in<T: TryFrom<i64>>(name: &str, v: &Dynamic, what: &str) -> Result<T, String> {
    let n = v
        .as_int()
        .map_err(|t| format!("option `{name}` must be an integer ({what}), got {t}"))?;
    T::try_from(n).map_err(|_| format!("option `{name}`: {n} is not {what}"))
}

/// What is wrong with an option the tracer refused, without the tracer's own prefix.
fn option_message(e: snat_ebpf::Error) -> String {
    match e {
        snat_ebpf::Error::InvalidOption(m) => m,
        other => other.to_string(),
    }
}

fn string_of(name: &str, v: &Dynamic) -> Result<String, String> {
    v.clone()
        .into_string()
        .map_err(|t| format!("option `{name}` must be a string, got {t}"))
}

/// Parse and check `trace::run`'s options (a playbook mistake is an `Err` message).
pub fn parse_options(opts: &Map) -> Result<TraceOptions, String> {
    if let Some(k) = opts.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!(
            "unknown option `{k}`{}: expected one of {}",
            super::did_you_mean(k, KNOWN),
            KNOWN.join(", ")
        ));
    }
    let seconds = match opts.get("seconds") {
        None => 10.0,
        Some(v) if v.is_int() => v.as_int().unwrap_or(0) as f64,
        Some(v) if v.is_float() => v.as_float().unwrap_or(0.0),
        Some(v) => return Err(format!("option `seconds` must be a number, got {}", v.type_name())),
    };
    if !(seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!(
            "option `seconds` must be more than 0 and at most 86400, got {seconds}"
        ));
    }
    let mode = match opts.get("mode") {
        None => Mode::Aggregated,
        Some(v) => string_of("mode", v)?
            .parse::<Mode>()
            .map_err(|e| format!("option `mode`: {}", option_message(e)))?,
    };
    let by = match opts.get("by") {
        None => TraceSummary::default_groupings(),
        Some(v) => groupings_of(v)?,
    };
    if mode == Mode::Aggregated
        && let Some(f) = by.iter().flatten().find(|f| matches!(f, Field::Pid | Field::Comm))
    {
        return Err(format!(
            "grouping by `{f}` needs mode: \"stream\" (the kernel's aggregation keeps no pid or comm)"
        ));
    }
    let netns = match opts.get("netns") {
        None => Vec::new(),
        Some(v) => {
            let arr = v
                .clone()
                .into_array()
                .map_err(|t| format!("option `netns` must be an array of inode numbers, got {t}"))?;
            if arr.is_empty() {
                return Err("option `netns` is empty: leave it out to trace every namespace".into());
            }
            arr.iter()
                .map(|d| int_in::<u32>("netns", d, "a network namespace inode").map(u64::from))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let pid = opts
        .get("pid")
        .map(|v| int_in::<u32>("pid", v, "a process id"))
        .transpose()?;
    if pid == Some(0) {
        return Err("option `pid` must not be 0".into());
    }
    let dport = opts
        .get("dport")
        .map(|v| int_in::<u16>("dport", v, "a port (1-65535)"))
        .transpose()?;
    if dport == Some(0) {
        return Err("option `dport` must be a port (1-65535), got 0".into());
    }
    let family = match opts.get("family") {
        None => None,
        Some(v) => Some(match string_of("family", v)?.to_ascii_lowercase().as_str() {
            "ipv4" | "4" | "inet" => Family::Ipv4,
            "ipv6" | "6" | "inet6" => Family::Ipv6,
            other => return Err(format!("option `family`: {other:?} is not \"ipv4\" or \"ipv6\"")),
        }),
    };
    let path = |name: &str| -> Result<Option<PathBuf>, String> {
        opts.get(name)
            .map(|v| string_of(name, v).map(PathBuf::from))
            .transpose()
    };
    let text_out = path("text_out")?;
    let jsonl_out = path("jsonl_out")?;
    if mode == Mode::Aggregated && (text_out.is_some() || jsonl_out.is_some()) {
        return Err("options `text_out` and `jsonl_out` write events: they need mode: \"stream\"".into());
    }
    let duration = Duration::from_secs_f64(seconds);
    let bucket = match opts.get("bucket") {
        None => timeline::default_bucket(duration),
        Some(v) => {
            let b = if v.is_int() {
                v.as_int().unwrap_or(0) as f64
            } else if v.is_float() {
                v.as_float().unwrap_or(0.0)
            } else {
                return Err(format!(
                    "option `bucket` must be a number of seconds, got {}",
                    v.type_name()
                ));
            };
            if !(b.is_finite() && b > 0.0 && b <= 86_400.0) {
                return Err(format!(
                    "option `bucket` must be more than 0 seconds and at most the trace's {seconds} seconds, got {b}"
                ));
            }
            Duration::from_secs_f64(b)
        }
    };
    timeline::bucket_count(duration, bucket).map_err(|e| format!("option `bucket`: {e}"))?;
    let seed_owners = match opts.get("seed_owners") {
        None => true,
        Some(v) => v
            .as_bool()
            .map_err(|t| format!("option `seed_owners` must be true or false, got {t}"))?,
    };
    let attach = match opts.get("attach") {
        None => AttachPoint::Auto,
        Some(v) => v
            .clone()
            .into_immutable_string()
            .map_err(|t| format!("option `attach` must be a string, got {t}"))?
            .parse::<AttachPoint>()
            .map_err(|e| format!("option `attach`: {}", option_message(e)))?,
    };
    Ok(TraceOptions {
        seed_owners,
        attach,
        duration,
        bucket,
        mode,
        by,
        netns,
        pid,
        dport,
        family,
        text_out,
        jsonl_out,
    })
}

/// An output file opened before the tracer attaches, so that a path that cannot be
/// written fails at once, but emptied only once the trace has started: a trace that
/// cannot start leaves an existing file as it was, and removes one it created.
struct OutFile {
    path: PathBuf,
    file: Option<File>,
    created: bool,
}

impl OutFile {
    fn open(path: &PathBuf) -> Result<OutFile, StageError> {
        let created = !path.exists();
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map(|f| OutFile {
                path: path.clone(),
                file: Some(f),
                created,
            })
            .map_err(|e| StageError::Failed(format!("cannot create trace output file {}: {e}", path.display()).into()))
    }

    /// The file, emptied, for the trace's output.
    fn start(mut self) -> Result<BufWriter<File>, StageError> {
        let f = self.file.take().expect("started once");
        f.set_len(0).map(|()| BufWriter::new(f)).map_err(|e| {
            StageError::Failed(format!("cannot write trace output file {}: {e}", self.path.display()).into())
        })
    }
}

impl Drop for OutFile {
    /// Not started: the trace failed to start; remove the file if this run created it.
    fn drop(&mut self) {
        if self.file.is_some() && self.created {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn ebpf_error(e: snat_ebpf::Error) -> StageError {
    match e {
        snat_ebpf::Error::InvalidOption(m) => StageError::Usage(m),
        other => StageError::failed(other),
    }
}

fn progress_line(p: &Progress) {
    eprint!(
        "\rtrace: {}   ",
        progress_text(p.elapsed, p.remaining, p.events, p.lost)
    );
}

/// "3s elapsed, 7s left, N events, M lost": whole seconds that add up to the trace's length
/// (both truncated, 1.5 s and 1.5 s would read "1s elapsed, 1s left").
fn progress_text(elapsed: Duration, remaining: Option<Duration>, events: u64, lost: u64) -> String {
    let shown = elapsed.as_secs();
    let left = remaining.map_or(String::new(), |r| {
        let total = (elapsed + r).as_secs_f64().round() as u64;
        format!(", {}s left", total.saturating_sub(shown))
    });
    format!("{shown}s elapsed{left}, {events} events, {lost} lost")
}

/// What the trace says about processes: stream mode names one per event, the pid filter
/// matches one, and aggregated mode without it records none (its rows are keyed by network
/// namespace, which is what names a pod).
fn attribution_note(mode: Mode, pid: Option<u32>) -> &'static str {
    match (mode, pid) {
        (Mode::Stream, _) => {
            "pid/comm are the connect() caller's for connects and the listen() caller's for accepts (wrong for pre-fork servers and sockets passed to another process)"
        }
        (Mode::Aggregated, Some(_)) => {
            "the pid filter matches the connect() caller for connects and the listen() caller for accepts (wrong for pre-fork servers and sockets passed to another process)"
        }
        (Mode::Aggregated, None) => {
            "aggregated mode records no pid/comm: rows are keyed by network namespace (examples/triage.rhai names each one's pod; mode \"stream\" records the process of every event)"
        }
    }
}

/// With a pid filter and no owner snapshot, a listener older than the trace has no owner,
/// so the kernel's pid filter drops its accepts without counting them anywhere: say so.
fn pid_without_seed_note(pid: Option<u32>, seed_owners: bool) -> Option<String> {
    pid.filter(|_| !seed_owners).map(|p| {
        format!(
            "pid {p} with seed_owners false: accepts on sockets it was listening on before the trace have no owner, so the pid filter leaves them out (and closes of its older connections); seed_owners true names them"
        )
    })
}

/// Finish the summary: feed the kernel's rows (aggregated mode; in stream mode the events
/// were fed as they came), account for losses, and explain the attribution.
fn summarise(o: &TraceOptions, mut s: TraceSummary, res: &TraceResult) -> Result<TraceSummary, StageError> {
    match o.mode {
        // Open connections are only known from the kernel's counters.
        Mode::Stream => s.totals.open = res.flows.iter().map(|f| f.open).sum(),
        Mode::Aggregated => {
            for f in &res.flows {
                for part in f.split_by_kind() {
                    s.add(&part)?;
                }
            }
        }
    }
    let st = &res.stats;
    s.lost_events = st.possibly_lost();
    s.notes.push(format!(
        "live trace, {} mode, {:.1} s, {}; {} events counted in the kernel",
        match o.mode {
            Mode::Aggregated => "aggregated",
            Mode::Stream => "stream",
        },
        res.elapsed.as_secs_f64(),
        match (res.attach_point, &res.raw_refused) {
            (AttachPoint::Tracepoint, Some(why)) =>
                format!("classic tracepoint (the raw tracepoint was refused: {why})"),
            (AttachPoint::Tracepoint, None) => "classic tracepoint".to_string(),
            _ => match &res.direct_refused {
                Some(why) => format!("raw tracepoint, probe reads (direct reads unavailable: {why})"),
                None => format!("raw tracepoint, {}", res.kernel_reads),
            },
        },
        st.counted
    ));
    s.notes.push(attribution_note(o.mode, o.pid).into());
    if let Some(n) = pid_without_seed_note(o.pid, o.seed_owners) {
        s.notes.push(n);
    }
    if st.events_dropped > 0 {
        s.notes.push(format!(
            "{} events lost: the event rings were full (reader too slow); kernel counters are complete",
            st.events_dropped
        ));
    }
    if st.socks_full > 0 {
        s.notes.push(format!(
            "{} sockets found no slot in the kernel's socket table: counted, but not as open, and their closes have no direction",
            st.socks_full
        ));
    }
    if st.flows_full > 0 {
        s.notes.push(format!(
            "{} events not counted: the kernel's flow table was full",
            st.flows_full
        ));
    }
    if st.missed_runs > 0 {
        s.notes.push(format!(
            "the kernel skipped the tracer {} times (a state change came while it was already running on that CPU, from an interrupt; with attach \"tracepoint\", while any tracing program was): up to that many events are missing, included in lost_events",
            st.missed_runs
        ));
    }
    if let Some(r) = &res.seed {
        s.notes.push(seed_note(r));
        s.notes
            .extend(r.problems.iter().map(|p| format!("owner snapshot: {p}")));
    }
    match o.mode {
        Mode::Stream => {
            if st.events_owner_from_snapshot > 0 {
                s.notes.push(format!(
                    "{} closes/failures of connections older than the trace got their owner from the snapshot taken at attach",
                    st.events_owner_from_snapshot
                ));
            }
            if st.events_owner_unknown > 0 {
                s.notes.push(format!(
                    "{} events have no owner (pid 0 and comm [unknown] in text_out, pid and comm null in jsonl_out): their socket predates the trace and {}",
                    st.events_owner_unknown,
                    if o.seed_owners {
                        "the snapshot taken at attach did not name it"
                    } else {
                        "seed_owners is false"
                    }
                ));
            }
        }
        Mode::Aggregated => {
            if st.owner_unknown > 0 {
                s.notes.push(format!(
                    "{} connects/accepts/failures had no owner in the kernel: their socket or listener predates the trace{}",
                    st.owner_unknown,
                    if o.seed_owners { "" } else { " (seed_owners is false)" }
                ));
            }
        }
    }
    Ok(s)
}

/// One line on what the attach-time owner snapshot found.
fn seed_note(r: &snat_ebpf::SeedReport) -> String {
    format!(
        "owners of older sockets: {}/{} listeners and {}/{} connections named, in {} namespaces ({} ms at attach)",
        r.listeners_seeded, r.listeners, r.connections_owned, r.connections, r.namespaces, r.took_ms
    )
}

fn run(ctx: &Ctx, o: TraceOptions) -> Result<(Trace, Option<u64>), StageError> {
    let text_file = o.text_out.as_ref().map(OutFile::open).transpose()?;
    let jsonl_file = o.jsonl_out.as_ref().map(OutFile::open).transpose()?;
    let mut b = TracerBuilder::new()
        .duration(o.duration)
        .mode(o.mode)
        .seed_owners(o.seed_owners)
        .attach_point(o.attach)
        .seed_proc_root(ctx.options().host_proc.clone());
    // Ctrl-C ends the trace window early (a second one, or SIGTERM, stops the run).
    let window = ctx.open_window();
    b = b.cancel_flag(window.flag());
    if !o.netns.is_empty() {
        b = b.netns(o.netns.iter().copied());
    }
    if let Some(p) = o.pid {
        b = b.pid(p);
    }
    if let Some(p) = o.dport {
        b = b.dport(p);
    }
    if let Some(f) = o.family {
        b = b.family(f);
    }
    let filter_notes = check_filters(&o, &ctx.options().host_proc);
    for n in &filter_notes {
        eprintln!("{}: warning: trace::run: {n}", crate::program_name());
    }
    let tl = std::cell::RefCell::new(
        TimelineBuilder::new(o.duration, o.bucket).map_err(|e| StageError::Usage(e.to_string()))?,
    );
    let stream = o.mode == Mode::Stream;
    let mut tracer = b.attach().map_err(ebpf_error)?;
    let mut text = text_file
        .map(OutFile::start)
        .transpose()?
        .map(TextWriter::new)
        .transpose()
        .map_err(|e| StageError::Failed(format!("cannot write trace output: {e}").into()))?;
    let mut jsonl = jsonl_file.map(OutFile::start).transpose()?.map(JsonlWriter::new);
    if ctx.options().progress
        && let Some(r) = tracer.seed_report()
    {
        eprintln!("trace: {}", seed_note(r));
    }
    let start_ns = tracer.started_unix_ns();
    // Events are counted as they come: memory grows with distinct keys, not with events.
    let mut summary = TraceSummary::new("live", o.by.clone());
    let mut add_err: Option<snat_core::Error> = None;
    let mut write_err: Option<std::io::Error> = None;
    let mut on_event = |ev: TcpEvent| {
        if let Some(t) = ev.time_ns {
            let offset = Duration::from_nanos(t.saturating_sub(start_ns));
            tl.borrow_mut().add_event(offset, ev.netns.unwrap_or(0), ev.kind);
        }
        if add_err.is_none()
            && let Err(e) = summary.add(&StreamRecord(&ev))
        {
            add_err = Some(e);
        }
        if write_err.is_none() {
            let r = text
                .as_mut()
                .map_or(Ok(()), |t| t.write(&ev))
                .and_then(|()| jsonl.as_mut().map_or(Ok(()), |j| j.write(&ev)));
            if let Err(e) = r {
                write_err = Some(e);
            }
        }
    };
    let show = ctx.options().progress;
    let on_sample = |i: usize, rows: &[FlowRow]| tl.borrow_mut().sample(i, &per_netns(rows, !stream));
    let t_run = std::time::Instant::now();
    let end = tracer
        .run_sampled(
            Some(o.bucket),
            &mut on_event,
            |p| {
                if show {
                    progress_line(p);
                }
            },
            on_sample,
        )
        .map_err(ebpf_error)?;
    let ran = t_run.elapsed();
    drop(window);
    // Ended by the flag without a cancellation: the first Ctrl-C ended the window.
    let ended_early = end == RunEnd::Cancelled && !ctx.is_cancelled();
    let res = tracer.finish(&mut on_event).map_err(ebpf_error)?;
    let mut tl = tl.into_inner();
    tl.sample(usize::MAX, &per_netns(&res.flows, !stream));
    let mut timeline = tl.finish(Some(o.duration));
    timeline.notes.push(if stream {
        "stream mode: counts from event timestamps (events lost from the event rings are missing), open connections from the kernel's counters at each bucket end".into()
    } else {
        "aggregated mode: the kernel's counters read at each bucket end; open = established during the trace and not closed yet".into()
    });
    let lost = if stream {
        res.stats.possibly_lost()
    } else {
        res.stats.flows_full + res.stats.missed_runs
    };
    if lost > 0 {
        timeline.notes.push(format!(
            "up to {lost} events are missing from the timeline (see the trace's notes): its counts are lower bounds"
        ));
    }
    let early_note = ended_early.then(|| {
        format!(
            "the trace window was ended by Ctrl-C (SIGINT) after {:.1} s of {} s: the counts cover that part only",
            ran.as_secs_f64(),
            o.duration.as_secs_f64()
        )
    });
    if let Some(n) = &early_note {
        timeline.notes.push(format!("{n}; later buckets are empty"));
    }
    if show {
        eprintln!();
    }
    if end == RunEnd::Cancelled && !ended_early {
        return Err(StageError::Interrupted);
    }
    if let Some(e) = add_err {
        return Err(e.into());
    }
    if let Some(e) = write_err {
        return Err(StageError::Failed(format!("cannot write trace output: {e}").into()));
    }
    let flush = |r: std::io::Result<BufWriter<File>>| -> Result<(), StageError> {
        r.and_then(|mut w| w.flush())
            .map_err(|e| StageError::Failed(format!("cannot write trace output: {e}").into()))
    };
    if let Some(t) = text {
        flush(t.finish())?;
    }
    if let Some(j) = jsonl {
        flush(j.finish())?;
    }
    let mut s = summarise(&o, summary, &res)?;
    s.notes.extend(filter_notes);
    s.notes.extend(early_note);
    let n = s.totals.events;
    Ok((Trace::with_timeline(s, Some(timeline)), Some(n)))
}

/// Check the netns and pid filters against the node as it is at attach (`proc_root`): a
/// filter nothing matches makes an empty trace that looks like a quiet node. The trace
/// still runs (a namespace or process may appear); the warnings go to stderr and notes.
fn check_filters(o: &TraceOptions, proc_root: &std::path::Path) -> Vec<String> {
    // The netns filter is checked only when given and when /proc can be read.
    let (netns, live, mut out) = if o.netns.is_empty() {
        (&[][..], BTreeSet::new(), Vec::new())
    } else {
        match ProcIndex::scan(proc_root) {
            Ok(ix) => {
                let mut live: BTreeSet<u64> = ix.namespaces().collect();
                let missing: BTreeSet<u64> = o.netns.iter().copied().filter(|n| !live.contains(n)).collect();
                live.extend(netns_without_process(proc_root, &missing).into_keys());
                (&o.netns[..], live, Vec::new())
            }
            Err(e) => (
                &[][..],
                BTreeSet::new(),
                vec![format!(
                    "cannot check the netns filter against {}: {e}",
                    proc_root.display()
                )],
            ),
        }
    };
    out.extend(filter_warnings(netns, o.pid, &live, |pid| {
        proc_root.join(pid.to_string()).exists()
    }));
    out
}

/// The warnings for [`check_filters`]: each netns inode that is not on the node (`live`
/// holds the inodes of those processes, threads or mounts hold), and a pid with no process
/// (`pid_alive`).
fn filter_warnings(
    netns: &[u64],
    pid: Option<u32>,
    live: &BTreeSet<u64>,
    pid_alive: impl Fn(u32) -> bool,
) -> Vec<String> {
    let mut out: Vec<String> = netns
        .iter()
        .filter(|n| !live.contains(n))
        .map(|n| {
            format!(
                "netns {n}: no process, thread or mount on this node holds that network namespace (census::namespaces() lists those with processes): only connections from one that appears during the trace are counted"
            )
        })
        .collect();
    if let Some(p) = pid.filter(|p| !pid_alive(*p)) {
        out.push(format!(
            "pid {p}: there is no such process on this node: only connections of a process that starts with that pid during the trace are counted"
        ));
    }
    out
}

/// The kernel's cumulative counts (all zero unless `counts`) and open connections per
/// network namespace.
fn per_netns(rows: &[FlowRow], counts: bool) -> BTreeMap<u64, (BucketCounts, u64)> {
    let mut out: BTreeMap<u64, (BucketCounts, u64)> = BTreeMap::new();
    for r in rows {
        let e = out.entry(r.netns).or_default();
        if counts {
            e.0.add(&BucketCounts {
                connects: r.connects,
                accepts: r.accepts,
                failed_connects: r.failed_connects,
                closes: r.closes,
            });
        }
        e.1 += r.open;
    }
    out
}

/// The `trace` module.
pub fn create_module(ctx: &Ctx) -> Module {
    let mut m = Module::new();
    let c = ctx.clone();
    func(
        "run",
        &["options: Map", "Trace"],
        "Trace TCP connections on this node live with eBPF (root or CAP_BPF + CAP_PERFMON; BTF; tracefs only for attach \"tracepoint\") and\nreturn a Trace, like tcptracer::read. Options: seconds (10), mode (\"aggregated\" | \"stream\"),\nby ([[\"saddr\",\"netns\"],[\"netns\",\"daddr\",\"dport\"]]), netns ([inode, ...]), pid, dport,\nfamily (\"ipv4\" | \"ipv6\"), text_out (tcptracer -t -v text file), jsonl_out (JSON Lines file),\nbucket (timeline bucket in seconds, default max(1, seconds / 60); see trace.timeline()),\nseed_owners (true: name the owners of sockets older than the trace from a snapshot at attach),\nattach (\"auto\" | \"raw_tracepoint\" | \"tracepoint\").\nFailed connects (SYN_SENT -> CLOSE) are counted too. Lost events are in trace.lost_events.",
    )
    .set_into_module(&mut m, move |opts: Map| -> Result<Trace, Box<EvalAltResult>> {
        let args = to_json(&Dynamic::from_map(opts.clone()));
        c.stage("trace::run", args, || {
            let o = parse_options(&opts).map_err(StageError::Usage)?;
            run(&c, o)
        })
    });
    let c = ctx.clone();
    func(
        "run",
        &["Trace"],
        "trace::run with default options: 10 seconds, aggregated, groupings (saddr, netns) and (netns, daddr, dport).",
    )
    .set_into_module(&mut m, move || -> Result<Trace, Box<EvalAltResult>> {
        c.stage("trace::run", serde_json::json!({}), || {
            let o = parse_options(&Map::new()).map_err(StageError::Usage)?;
            run(&c, o)
        })
    });
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rstest::rstest]
    #[case::halfway(1500, Some(1500), "1s elapsed, 2s left, 7 events, 0 lost")]
    #[case::start(0, Some(10_000), "0s elapsed, 10s left, 7 events, 0 lost")]
    #[case::end(10_000, Some(0), "10s elapsed, 0s left, 7 events, 0 lost")]
    #[case::until_stopped(2500, None, "2s elapsed, 7 events, 0 lost")]
    fn progress_seconds_add_up(#[case] elapsed_ms: u64, #[case] remaining_ms: Option<u64>, #[case] want: &str) {
        let ms = Duration::from_millis;
        assert_eq!(progress_text(ms(elapsed_ms), remaining_ms.map(ms), 7, 0), want);
    }

    #[rstest::rstest]
    #[case::all_present(&[1, 2], Some(7), &[], )]
    #[case::no_filters(&[], None, &[])]
    #[case::gone_netns(&[1, 3], None, &["netns 3: no process, thread or mount on this node holds that network namespace"])]
    #[case::gone_pid(&[], Some(8), &["pid 8: there is no such process on this node"])]
    #[case::both(&[4], Some(8), &["netns 4: ", "pid 8: "])]
    fn filters_that_match_nothing_now_are_named(
        #[case] netns: &[u64],
        #[case] pid: Option<u32>,
        #[case] want: &[&str],
    ) {
        let live: BTreeSet<u64> = [1, 2].into();
        let got = filter_warnings(netns, pid, &live, |p| p == 7);
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.starts_with(w), "{g:?} should start with {w:?}");
        }
    }

    #[rstest::rstest]
    #[case::stream(Mode::Stream, None, "pid/comm are the connect() caller's")]
    #[case::stream_with_pid(Mode::Stream, Some(7), "pid/comm are the connect() caller's")]
    #[case::aggregated_pid_filter(Mode::Aggregated, Some(7), "the pid filter matches the connect() caller")]
    #[case::aggregated(Mode::Aggregated, None, "aggregated mode records no pid/comm")]
    fn the_attribution_note_fits_what_was_recorded(#[case] mode: Mode, #[case] pid: Option<u32>, #[case] starts: &str) {
        assert!(attribution_note(mode, pid).starts_with(starts));
    }

    #[rstest::rstest]
    #[case::pid_without_snapshot(Some(7), false, true)]
    #[case::pid_with_snapshot(Some(7), true, false)]
    #[case::no_pid(None, false, false)]
    fn a_pid_filter_without_the_snapshot_says_what_it_misses(
        #[case] pid: Option<u32>,
        #[case] seed: bool,
        #[case] noted: bool,
    ) {
        let n = pid_without_seed_note(pid, seed);
        assert_eq!(n.is_some(), noted, "{n:?}");
        assert!(n.is_none_or(|n| n.starts_with("pid 7 with seed_owners false: accepts on sockets")));
    }

    fn opts(script: &str) -> Result<TraceOptions, String> {
        let e = rhai::Engine::new();
        let m: Map = e.eval(script).unwrap();
        parse_options(&m)
    }

    #[test]
    fn defaults() {
        let o = opts("#{}").unwrap();
        assert_eq!(o.duration, Duration::from_secs(10));
        assert_eq!(o.mode, Mode::Aggregated);
        assert_eq!(o.by, TraceSummary::default_groupings());
        assert!(o.netns.is_empty() && o.pid.is_none() && o.text_out.is_none());
        assert_eq!(o.bucket, Duration::from_secs(1));
        assert!(o.seed_owners);
        assert!(!opts("#{seed_owners: false}").unwrap().seed_owners);
        assert_eq!(o.attach, AttachPoint::Auto);
        assert_eq!(
            opts("#{attach: \"tracepoint\"}").unwrap().attach,
            AttachPoint::Tracepoint
        );
        assert_eq!(
            opts("#{attach: \"raw_tracepoint\"}").unwrap().attach,
            AttachPoint::RawTracepoint
        );
        assert_eq!(opts("#{seconds: 600}").unwrap().bucket, Duration::from_secs(10));
        assert_eq!(
            opts("#{seconds: 30, bucket: 2.5}").unwrap().bucket,
            Duration::from_millis(2500)
        );
    }

    #[test]
    fn all_options() {
        let o = opts(
            r#"#{seconds: 2.5, mode: "stream", by: [["pid", "comm"]], netns: [4026531840], pid: 12, dport: 443,
                 family: "ipv6", text_out: "t.log", jsonl_out: "t.jsonl"}"#,
        )
        .unwrap();
        assert_eq!(o.duration, Duration::from_millis(2500));
        assert_eq!(o.mode, Mode::Stream);
        assert_eq!(o.by, vec![vec![Field::Pid, Field::Comm]]);
        assert_eq!(o.netns, vec![4026531840]);
        assert_eq!((o.pid, o.dport, o.family), (Some(12), Some(443), Some(Family::Ipv6)));
        assert_eq!(o.text_out, Some(PathBuf::from("t.log")));
    }

    #[test]
    fn bad_options_are_playbook_errors() {
        for (script, needle) in [
            (
                "#{secs: 1}",
                "unknown option `secs` (did you mean `seconds`?): expected one of seconds,",
            ),
            ("#{seconds: 0}", "more than 0"),
            ("#{seconds: \"ten\"}", "must be a number"),
            ("#{mode: \"fast\"}", "option `mode`: unknown mode \"fast\""),
            (
                "#{attach: \"kprobe\"}",
                "option `attach`: unknown attach point \"kprobe\"",
            ),
            ("#{attach: 1}", "option `attach` must be a string"),
            ("#{by: [[\"pid\"]]}", "needs mode: \"stream\""),
            ("#{by: [[\"bogus\"]]}", "option `by`: unknown field \"bogus\""),
            ("#{netns: []}", "empty"),
            ("#{netns: [-1]}", "not a network namespace inode"),
            ("#{pid: 0}", "must not be 0"),
            ("#{dport: 70000}", "not a port"),
            ("#{family: \"ipx\"}", "not \"ipv4\""),
            ("#{text_out: \"x\"}", "need mode: \"stream\""),
            ("#{bucket: 0.1}", "shorter than 0.5 s"),
            ("#{seconds: 10, bucket: 20}", "longer than the 10 s window"),
            ("#{seconds: 86400, bucket: 1}", "at most 1440"),
            ("#{bucket: \"x\"}", "number of seconds"),
            ("#{bucket: -2}", "more than 0"),
            ("#{seed_owners: \"no\"}", "must be true or false"),
        ] {
            let err = opts(script).unwrap_err();
            assert!(err.contains(needle), "{script}: {err}");
        }
    }

    #[test]
    fn bad_options_fail_the_stage_as_usage_before_touching_the_kernel() {
        let ctx = Ctx::new(Default::default(), Default::default());
        let mut e = rhai::Engine::new();
        e.register_static_module("trace", create_module(&ctx).into());
        let err = e.eval::<Dynamic>("trace::run(#{mode: \"fast\"})").unwrap_err();
        let failure = match *err {
            EvalAltResult::ErrorRuntime(d, _) => d.try_cast::<crate::ctx::StageFailure>().unwrap(),
            other => panic!("{other:?}"),
        };
        assert!(failure.usage, "{failure:?}");
        assert_eq!(ctx.stages()[0].name, "trace::run");
    }
}
