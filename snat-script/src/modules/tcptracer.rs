//! `tcptracer::` — reading BCC `tcptracer` logs (the article's Step 2: `tcptracer -t4v >
//! log`) into a `Trace`, the same type a live trace gives, so the same ranking code serves
//! both. Streaming: memory grows with the number of distinct keys, not with the log.
//!
//! With `timeline: true` (or `bucket: seconds`) the log is read a second time to bucket
//! its events by their TIME column (`tcptracer -t`), so `trace.timeline()` works as on a
//! live trace. Memory stays bounded: past the bucket limit, buckets are merged.

use std::io::BufReader;
use std::time::Duration;

use rhai::{Dynamic, EvalAltResult, Map, Module};
use snat_core::aggregate::TraceSummary;
use snat_core::held::HeldPorts;
use snat_core::tcptracer::{LogEvents, LogReader};
use snat_core::timeline::{MAX_BUCKETS, Timeline, TimelineBuilder};

use super::types::{Trace, groupings_of};
use super::{func, to_json, usage};
use crate::ctx::Ctx;

fn read(ctx: &Ctx, path: &str, opts: &Map) -> Result<Trace, Box<EvalAltResult>> {
    let mut reader = LogReader::new();
    let mut groupings = TraceSummary::default_groupings();
    let mut timeline = false;
    let mut bucket: Option<Duration> = None;
    for (k, v) in opts {
        match k.as_str() {
            "by" => groupings = groupings_of(v)?,
            "timeline" => match v.as_bool() {
                Ok(b) => timeline = b,
                Err(_) => return usage("option `timeline` must be true or false"),
            },
            "bucket" => {
                bucket = Some(bucket_of(v)?);
                timeline = true;
            }
            "strict" => match v.as_bool() {
                Ok(b) => reader = reader.strict(b),
                Err(_) => return usage("option `strict` must be true or false"),
            },
            "max_errors" => match v.as_int().ok().and_then(|n| usize::try_from(n).ok()) {
                Some(n) => reader = reader.max_reported_errors(n),
                None => return usage("option `max_errors` must be a non-negative integer"),
            },
            other => {
                return usage(format!(
                    "unknown option `{other}` for tcptracer::read{} (known: by, strict, max_errors, timeline, bucket)",
                    super::did_you_mean(other, ["by", "strict", "max_errors", "timeline", "bucket"])
                ));
            }
        }
    }
    if timeline && path == "-" {
        return usage(
            "option `timeline` needs a log file: the log is read a second time for its TIME column, which stdin cannot be",
        );
    }
    let reader = reader.groupings(groupings);
    let mut args = serde_json::json!({ "path": path });
    for (k, v) in opts {
        args[k.as_str()] = to_json(v);
    }
    ctx.stage("tcptracer::read", args, || {
        // `tcptracer -t4v | snat-run ... log=-`: Ctrl-C stops tcptracer and reaches snat-run
        // too; the first one must not throw away what the pipe still holds, so reading
        // stdin is an observation window, read to its end.
        let window = (path == "-").then(|| ctx.open_window());
        let mut summary = match &window {
            Some(w) => {
                let input = WindowedStdin {
                    end: w.flag(),
                    cancel: ctx.cancel_flag(),
                    idle: STDIN_IDLE_AFTER_SIGINT,
                    silent_since: None,
                };
                reader.read(std::io::BufReader::with_capacity(1 << 16, input), "-")?
            }
            None => reader.read_path(path)?,
        };
        // SIGTERM or a second SIGINT: the run stops, and this stage was interrupted.
        if ctx.is_cancelled() {
            return Err(crate::ctx::StageError::Interrupted);
        }
        if window.is_some_and(|w| w.ended()) {
            summary.notes.push(format!(
                "Ctrl-C (SIGINT) came while stdin was read: the log was read until its writer stopped, or fell silent for {} s",
                STDIN_IDLE_AFTER_SIGINT.as_secs()
            ));
        }
        let n = summary.totals.events;
        let tl = if timeline {
            Some(log_timeline(path, bucket)?)
        } else {
            None
        };
        Ok((Trace::with_timeline(summary, tl), Some(n)))
    })
}

/// After the first SIGINT, how long stdin may stay silent before it counts as ended.
const STDIN_IDLE_AFTER_SIGINT: Duration = Duration::from_secs(1);

/// Standard input as an observation window. Until `end` is set it reads as usual. Once
/// it is set (the first Ctrl-C), what the pipe still holds is read, and the input ends when
/// the writer closes it or, if the writer lives on (a SIGINT sent to snat-run alone, by
/// `timeout -s INT` or an orchestrator), when it has been silent for `idle`.
struct WindowedStdin {
    end: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The run's cancellation (SIGTERM, a second SIGINT): stop reading at once.
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    idle: Duration,
    silent_since: Option<std::time::Instant>,
}

impl std::io::Read for WindowedStdin {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::sync::atomic::Ordering;
        loop {
            if self.cancel.load(Ordering::SeqCst) {
                return Ok(0);
            }
            let mut fd = libc::pollfd {
                fd: libc::STDIN_FILENO,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the duration of the call.
            let n = unsafe { libc::poll(&mut fd, 1, 100) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n > 0 {
                // Readable, closed (POLLHUP) or in error: read() says which.
                self.silent_since = None;
                // SAFETY: `buf` is valid for writes of its length.
                let got = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
                if got < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                return Ok(got as usize);
            }
            if self.end.load(Ordering::SeqCst) {
                let since = *self.silent_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= self.idle {
                    return Ok(0);
                }
            }
        }
    }
}

fn bucket_of(v: &Dynamic) -> Result<Duration, Box<EvalAltResult>> {
    let secs = if v.is_int() {
        v.as_int().unwrap_or(0) as f64
    } else if v.is_float() {
        v.as_float().unwrap_or(0.0)
    } else {
        return usage(format!(
            "option `bucket` must be a number of seconds, got {}",
            v.type_name()
        ));
    };
    if !(secs.is_finite() && secs >= snat_core::timeline::MIN_BUCKET.as_secs_f64() && secs <= 86_400.0) {
        return usage(format!(
            "option `bucket` must be between {} and 86400 seconds, got {secs}",
            snat_core::timeline::MIN_BUCKET.as_secs_f64()
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Second pass over the log: bucket events by their TIME column (seconds since the first
/// event). Without a bucket: one second, doubled until at most 60 buckets cover the span.
fn log_timeline(path: &str, bucket: Option<Duration>) -> Result<Timeline, snat_core::Error> {
    let file = std::fs::File::open(path).map_err(|source| snat_core::Error::Io {
        what: "cannot open tcptracer log",
        path: path.into(),
        source,
    })?;
    let mut b = match bucket {
        Some(d) => TimelineBuilder::growing(d, MAX_BUCKETS)?,
        None => TimelineBuilder::growing(Duration::from_secs(1), 60)?,
    };
    let (mut timed, mut untimed) = (0u64, 0u64);
    for ev in LogEvents::new(BufReader::new(file), path).flatten() {
        match ev.time_ns {
            Some(t) => {
                timed += 1;
                b.add_event(Duration::from_nanos(t), ev.netns.unwrap_or(0), ev.kind);
            }
            None => untimed += 1,
        }
    }
    if timed == 0 && untimed > 0 {
        return Err(snat_core::Error::InvalidArgument(format!(
            "{path} has no TIME column, so no timeline: record the log with tcptracer -t (e.g. -t4v), or read it without `timeline`"
        )));
    }
    let mut tl = b.finish(None);
    if untimed > 0 {
        tl.notes
            .push(format!("{untimed} events without a time are not in the timeline"));
    }
    if tl.series.iter().any(|s| s.netns == 0) {
        tl.notes
            .push("netns 0: events of a log without a NETNS column (tcptracer -v adds it)".into());
    }
    Ok(tl)
}

/// `tcptracer::held`: per destination, the most connects within one hold time.
fn held(ctx: &Ctx, path: &str, hold_secs: i64) -> Result<Map, Box<EvalAltResult>> {
    if path == "-" {
        return usage(
            "tcptracer::held needs a log file: it reads the log a second time for its TIME column, which stdin cannot be",
        );
    }
    if !(1..=86_400).contains(&hold_secs) {
        return usage(format!(
            "tcptracer::held: hold must be 1 to 86400 seconds, got {hold_secs}"
        ));
    }
    let args = serde_json::json!({ "path": path, "hold": hold_secs });
    ctx.stage("tcptracer::held", args, || {
        let file = std::fs::File::open(path).map_err(|source| snat_core::Error::Io {
            what: "cannot open tcptracer log",
            path: path.into(),
            source,
        })?;
        let mut h = HeldPorts::new(Duration::from_secs(hold_secs.unsigned_abs()));
        for ev in LogEvents::new(BufReader::new(file), path).flatten() {
            h.add(&ev);
        }
        let (timed, untimed, late) = (h.timed(), h.untimed(), h.out_of_order());
        let peaks: rhai::Array = h
            .finish()
            .into_iter()
            .map(|p| {
                let mut m = Map::new();
                m.insert("daddr".into(), p.daddr.to_string().into());
                m.insert("dport".into(), Dynamic::from_int(i64::from(p.dport)));
                m.insert("peak".into(), Dynamic::from_int(p.peak as i64));
                m.insert("at".into(), Dynamic::from_float(p.at_ns as f64 / 1e9));
                m.insert("connects".into(), Dynamic::from_int(p.connects as i64));
                Dynamic::from_map(m)
            })
            .collect();
        let n = peaks.len() as u64;
        let mut m = Map::new();
        m.insert("peaks".into(), Dynamic::from_array(peaks));
        m.insert("timed".into(), Dynamic::from_int(timed as i64));
        m.insert("untimed".into(), Dynamic::from_int(untimed as i64));
        m.insert("out_of_order".into(), Dynamic::from_int(late as i64));
        Ok((m, Some(n)))
    })
}

/// The `tcptracer` module.
pub fn create_module(ctx: &Ctx) -> Module {
    let mut m = Module::new();
    let c = ctx.clone();
    func(
        "read",
        &["path: &str", "Trace"],
        "Read a tcptracer log (`-t4v`, `-t`, `-v` or plain; `-` for stdin) and count it by the default\ngroupings [saddr, netns] and [netns, daddr, dport]. Lost-sample lines are counted, malformed lines\ncounted and the first few noted.",
    )
    .set_into_module(&mut m, move |path: &str| read(&c, path, &Map::new()));
    let c = ctx.clone();
    func(
        "read",
        &["path: &str", "options: Map", "Trace"],
        "Same, with options: by: [[field, ...], ...] (groupings to keep), strict: bool (fail on the first\nmalformed line), max_errors: int (malformed lines to note, default 5), timeline: bool (also bucket\nthe events by their TIME column, for trace.timeline(); needs a -t log and a file), bucket: seconds\n(the timeline's bucket; default 1 s, doubled until 60 buckets cover the log).",
    )
    .set_into_module(&mut m, move |path: &str, opts: Map| read(&c, path, &opts));
    let c = ctx.clone();
    func(
        "held",
        &["path: &str", "hold: i64", "Map"],
        "SNAT ports held at once per destination, from a log with a TIME column (-t): for each (daddr, dport),
the most connects and failed connects within any `hold` seconds (Azure holds a port about 240 s after
its connection closes). Returns #{peaks: [#{daddr, dport, peak, at (seconds into the log), connects}],
highest first, timed, untimed (connects without a time: a log without -t gives no peaks), out_of_order}.",
    )
    .set_into_module(&mut m, move |path: &str, hold: i64| held(&c, path, hold));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> String {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/tcptracer/").to_string() + name
    }

    fn eval(script: &str) -> Result<Dynamic, Box<EvalAltResult>> {
        let ctx = Ctx::new(Default::default(), Default::default());
        let mut e = rhai::Engine::new();
        e.register_global_module(super::super::types::create_module(&ctx).into());
        e.register_static_module("tcptracer", create_module(&ctx).into());
        e.eval::<Dynamic>(script)
    }

    #[test]
    fn a_t_log_gives_a_timeline_whose_buckets_add_up_to_the_trace() {
        // 61 s of log: one-second buckets are merged to two seconds to stay within 60.
        let out = eval(&format!(
            r#"let t = tcptracer::read({:?}, #{{timeline: true}});
               let tl = t.timeline();
               let sum = 0;
               for s in tl.series {{ for v in s.connects {{ sum += v; }} }}
               let g = tl.grouped(#{{"4026532801": "db/pgbouncer"}}, 1, "connects");
               [t.has_timeline, tl.bucket_secs, tl.starts.len(), sum == t.connects, tl.series[0].open,
                g[0].name, g[0].total, g[1].name, g.len(), g[0].points.len()]"#,
            data("incident-t4v.log")
        ))
        .unwrap()
        .into_array()
        .unwrap();
        let s: Vec<String> = out.iter().map(|d| d.to_string()).collect();
        assert_eq!(s[..5], ["true", "2.0", "31", "true", ""]);
        assert_eq!(s[5], "db/pgbouncer");
        assert_eq!(s[7..], ["other", "2", "31"]);
        assert!(s[6].parse::<i64>().unwrap() > 0);
    }

    #[test]
    fn bucket_option_and_errors() {
        let n = eval(&format!(
            r#"tcptracer::read({:?}, #{{bucket: 10}}).timeline().starts.len()"#,
            data("incident-t4v.log")
        ))
        .unwrap();
        assert_eq!(n.as_int().unwrap(), 7);
        for (script, needle) in [
            (
                format!(r#"tcptracer::read({:?}).timeline()"#, data("t4v.log")),
                "has no timeline",
            ),
            (
                format!(r#"tcptracer::read({:?}, #{{timeline: true}})"#, data("v.log")),
                "no TIME column",
            ),
            (
                format!(r#"tcptracer::read({:?}, #{{bucket: 0.01}})"#, data("t.log")),
                "between 0.5 and 86400",
            ),
            (
                format!(r#"tcptracer::read({:?}, #{{bucket: "x"}})"#, data("t.log")),
                "number of seconds",
            ),
            (
                r#"tcptracer::read("-", #{timeline: true})"#.to_string(),
                "needs a log file",
            ),
        ] {
            let e = eval(&script).unwrap_err();
            let msg = match e.unwrap_inner() {
                EvalAltResult::ErrorRuntime(d, _) => d
                    .clone()
                    .try_cast::<crate::ctx::StageFailure>()
                    .map_or_else(|| d.to_string(), |f| f.to_string()),
                other => other.to_string(),
            };
            assert!(msg.contains(needle), "{script}: {msg}");
        }
    }
}
