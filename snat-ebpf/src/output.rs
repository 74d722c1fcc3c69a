//! Writing live events the way existing habits and scripts read them: BCC tcptracer's
//! `-t -v` text (what the article's Step 2 pipes into `awk`) and JSON Lines (one
//! [`TcpEvent`] per line, snat's own format).
//!
//! The text is [`snat_core::tcptracer::format_event`]'s, the same formatter the log reader
//! is tested against, so a live trace written here reads back through `tcptracer::read`.
//! Its TYPE column is 14 characters wide ([`TypeColumn::Wide`]), two more than tcptracer's,
//! so that `failed_connect`, which tcptracer never prints, fits it: every line stays aligned
//! under the header. Columns keep tcptracer's order and are separated by blanks, so
//! whitespace-splitting habits (`awk '{print $6,$10}'`) read the same fields.

use std::io::{self, Write};

use snat_core::model::TcpEvent;
use snat_core::tcptracer::{TypeColumn, format_event, format_header};

/// tcptracer's first line.
pub use snat_core::tcptracer::BANNER as TCPTRACER_BANNER;

/// The `-t -v` column header (`TIME(ns) TYPE PID COMM IP SADDR DADDR SPORT DPORT NETNS`),
/// with the wide TYPE column.
pub fn tcptracer_header() -> String {
    format_header(true, true, TypeColumn::Wide)
}

/// One event as a `tcptracer -t -v` line (no newline). `start_ns` is the time of the
/// first event of the trace: tcptracer's TIME column counts from it. Failed connects, which
/// tcptracer never reports, are typed `failed_connect` (snat's log reader accepts it).
/// An owner the tracer could not know ([`TcpEvent::owner_known`]) is printed as pid 0 and
/// comm `[unknown]` (JSON Lines: `pid` and `comm` null); an empty comm also as `[unknown]`,
/// so that the line keeps its number of fields.
pub fn tcptracer_line(ev: &TcpEvent, start_ns: u64) -> String {
    let mut rel = ev.clone();
    rel.time_ns = Some(ev.time_ns.map_or(0, |t| t.saturating_sub(start_ns)));
    if !ev.owner_known() || rel.comm.is_empty() {
        rel.pid = 0;
        rel.comm = "[unknown]".into();
    }
    format_event(&rel, true, true, TypeColumn::Wide)
}

/// Writes events as tcptracer `-t -v` text: the banner and header first, then one line per
/// event, times relative to the first event.
#[derive(Debug)]
pub struct TextWriter<W: Write> {
    out: W,
    start_ns: Option<u64>,
}

impl<W: Write> TextWriter<W> {
    /// Start a text trace on `out` (writes the banner and the header).
    pub fn new(mut out: W) -> io::Result<Self> {
        writeln!(out, "{TCPTRACER_BANNER}")?;
        writeln!(out, "{}", tcptracer_header())?;
        Ok(TextWriter { out, start_ns: None })
    }

    /// Write one event.
    pub fn write(&mut self, ev: &TcpEvent) -> io::Result<()> {
        let start = *self.start_ns.get_or_insert(ev.time_ns.unwrap_or(0));
        writeln!(self.out, "{}", tcptracer_line(ev, start))
    }

    /// Flush and return the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Writes events as JSON Lines (serde of [`TcpEvent`]; its documentation lists the fields).
/// An owner the tracer could not know is `"pid": null, "comm": null`.
#[derive(Debug)]
pub struct JsonlWriter<W: Write> {
    out: W,
}

impl<W: Write> JsonlWriter<W> {
    /// A JSON Lines writer on `out`.
    pub fn new(out: W) -> Self {
        JsonlWriter { out }
    }

    /// Write one event as one line.
    pub fn write(&mut self, ev: &TcpEvent) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, ev)?;
        self.out.write_all(b"\n")
    }

    /// Flush and return the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snat_core::model::{Clock, EventKind, Family};
    use snat_core::tcptracer::{Line, parse_line};

    fn ev(kind: EventKind, family: Family, s: &str, d: &str, t: u64) -> TcpEvent {
        TcpEvent {
            time_ns: Some(t),
            clock: Clock::Unix,
            kind,
            direction: kind.direction(),
            pid: 4242,
            comm: "curl worker".into(),
            family,
            saddr: s.parse().unwrap(),
            daddr: d.parse().unwrap(),
            sport: 40000,
            dport: 443,
            netns: Some(4026532785),
            cgroup_id: None,
            prev_state: None,
            duration_ns: None,
            error: None,
        }
    }

    #[test]
    fn text_has_tcptracer_columns() {
        let mut w = TextWriter::new(Vec::new()).unwrap();
        w.write(&ev(EventKind::Connect, Family::Ipv4, "10.0.0.1", "203.0.113.5", 1_000))
            .unwrap();
        w.write(&ev(
            EventKind::FailedConnect,
            Family::Ipv6,
            "fd00::1",
            "2001:db8::5",
            1_500,
        ))
        .unwrap();
        let text = String::from_utf8(w.finish().unwrap()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], TCPTRACER_BANNER);
        let head: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            head,
            [
                "TIME(ns)", "TYPE", "PID", "COMM", "IP", "SADDR", "DADDR", "SPORT", "DPORT", "NETNS"
            ]
        );
        let l: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            l,
            [
                "0",
                "connect",
                "4242",
                "curl",
                "worker",
                "4",
                "10.0.0.1",
                "203.0.113.5",
                "40000",
                "443",
                "4026532785"
            ]
        );
        let l: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(l[0], "500");
        assert_eq!(l[1], "failed_connect");
        assert_eq!(l[6], "[fd00::1]");
        assert_eq!(l[7], "[2001:db8::5]");
        // TYPE starts at column 14 as in tcptracer; PID at 29, two further right.
        assert_eq!(&lines[2][14..21], "connect");
        assert_eq!(&lines[2][29..33], "4242");
    }

    /// Where each whitespace-separated field of `line` starts.
    fn field_starts(line: &str) -> Vec<usize> {
        let b = line.as_bytes();
        (0..b.len())
            .filter(|&i| b[i] != b' ' && (i == 0 || b[i - 1] == b' '))
            .collect()
    }

    /// A failed connect's line and a connect's line (and every other kind's) start each
    /// field under the header's, and split into as many fields as the header names.
    #[test]
    fn failed_connect_lines_align_with_the_others_under_the_header() {
        let mut w = TextWriter::new(Vec::new()).unwrap();
        let kinds = [
            EventKind::Connect,
            EventKind::FailedConnect,
            EventKind::Accept,
            EventKind::Close,
        ];
        for (i, kind) in kinds.into_iter().enumerate() {
            let mut e = ev(kind, Family::Ipv4, "10.0.0.1", "203.0.113.5", 1_000 + i as u64);
            e.comm = "curl".into();
            w.write(&e).unwrap();
        }
        let text = String::from_utf8(w.finish().unwrap()).unwrap();
        let lines: Vec<&str> = text.lines().skip(1).collect();
        let header = field_starts(lines[0]);
        assert_eq!(header.len(), 10, "{}", lines[0]);
        for (kind, line) in kinds.iter().zip(&lines[1..]) {
            assert_eq!(field_starts(line), header, "{kind:?}:\n{}\n{line}", lines[0]);
            assert_eq!(line.split_whitespace().count(), 10, "{line}");
            assert_eq!(line.split_whitespace().nth(1), Some(kind.as_str()));
        }
    }

    /// An event whose owner the tracer could not know: pid 0 and `[unknown]` in the text
    /// (whose columns need a number and a word), null pid and comm in JSON Lines, and both
    /// read back as an event without owner.
    #[test]
    fn an_unknown_owner_reads_as_unknown_in_text_and_json() {
        let mut e = ev(EventKind::Close, Family::Ipv4, "10.0.0.1", "203.0.113.5", 7);
        e.pid = 0;
        e.comm = String::new();
        let line = tcptracer_line(&e, 0);
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((cols.len(), cols[2], cols[3]), (10, "0", "[unknown]"), "{line}");
        match parse_line(&line).unwrap() {
            Line::Event(back) => assert!(!back.owner_known(), "{back:?}"),
            other => panic!("{other:?}"),
        }
        let mut w = JsonlWriter::new(Vec::new());
        w.write(&e).unwrap();
        let text = String::from_utf8(w.finish().unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert!(v["pid"].is_null() && v["comm"].is_null(), "{text}");
        let back: TcpEvent = serde_json::from_str(text.trim_end()).unwrap();
        assert!(!back.owner_known());
        assert_eq!(back, e);
    }

    #[test]
    fn jsonl_round_trips() {
        let mut w = JsonlWriter::new(Vec::new());
        let e = ev(EventKind::Close, Family::Ipv4, "10.0.0.1", "203.0.113.5", 7);
        w.write(&e).unwrap();
        let text = String::from_utf8(w.finish().unwrap()).unwrap();
        assert!(text.ends_with('\n'));
        let back: TcpEvent = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn lines_read_back_through_the_log_reader_even_late_in_long_traces() {
        // 4 hours in (a 14-digit TIME) and a comm with a control character: both once broke
        // the columns; the log reader must get the event back.
        let mut e = ev(
            EventKind::Close,
            Family::Ipv4,
            "10.0.0.1",
            "203.0.113.5",
            14_400_000_000_000,
        );
        e.comm = "bad\ncomm".into();
        let line = tcptracer_line(&e, 0);
        assert!(!line.contains('\n'), "{line:?}");
        match parse_line(&line).unwrap() {
            Line::Event(back) => {
                assert_eq!(back.time_ns, Some(14_400_000_000_000));
                assert_eq!(back.kind, EventKind::Close);
                assert_eq!((back.sport, back.dport, back.netns), (40000, 443, Some(4026532785)));
            }
            other => panic!("{other:?}"),
        }
    }
}
