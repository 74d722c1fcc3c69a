//! Tests of the tcptracer log reader against real-looking logs of every format tcptracer
//! prints, generated logs checked against a plain reference count, and round trips of
//! snat's own text output.
#![allow(clippy::too_many_arguments)] // rstest tables

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;

use proptest::prelude::*;
use rstest::rstest;
use snat_core::Error;
use snat_core::aggregate::{Field, Metric, TraceSummary, Value};
use snat_core::model::{Clock, EventKind, Family, TcpEvent};
use snat_core::tcptracer::{
    BANNER, Format, Line, LineError, LogEvents, LogReader, TimeUnit, TypeColumn, format_event, format_header,
    parse_line,
};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/tcptracer");

fn data(name: &str) -> String {
    format!("{DATA}/{name}")
}

fn event(line: &str) -> TcpEvent {
    match parse_line(line) {
        Ok(Line::Event(e)) => e,
        other => panic!("{line:?} did not parse as an event: {other:?}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// ----- single lines --------------------------------------------------------------

#[rstest]
// plain (BCC's example): letters, no time, no netns
#[case::plain_v4(
    "C  28943  telnet           4  192.168.1.2      192.0.2.1        59306  23    ",
    None,
    EventKind::Connect,
    28943,
    "telnet",
    "192.168.1.2",
    "192.0.2.1",
    59306,
    23,
    None
)]
#[case::plain_v6_accept(
    "A  28817  nc               6  [::1]            [::1]            80     55758 ",
    None,
    EventKind::Accept,
    28817,
    "nc",
    "::1",
    "::1",
    80,
    55758,
    None
)]
#[case::plain_close(
    "X  1 a 4 10.0.0.1 10.0.0.2 1 2",
    None,
    EventKind::Close,
    1,
    "a",
    "10.0.0.1",
    "10.0.0.2",
    1,
    2,
    None
)]
#[case::plain_unknown(
    "U 1 a 4 10.0.0.1 10.0.0.2 1 2",
    None,
    EventKind::Unknown,
    1,
    "a",
    "10.0.0.1",
    "10.0.0.2",
    1,
    2,
    None
)]
// -t: seconds with three decimals
#[case::t_seconds(
    "3.546    C  748    curl             6  [::1]            [::1]            42592  80    ",
    Some(3_546_000_000),
    EventKind::Connect,
    748,
    "curl",
    "::1",
    "::1",
    42592,
    80,
    None
)]
#[case::t_seconds_fill_column(
    "12345.678U  748    curl             6  [::1]            [::1]            42592  80    ",
    Some(12_345_678_000_000),
    EventKind::Unknown,
    748,
    "curl",
    "::1",
    "::1",
    42592,
    80,
    None
)]
// -v: words and NETNS
#[case::v(
    "connect      18627  curl             4  10.244.1.7       203.0.113.5      53746  80     4026532785",
    None,
    EventKind::Connect,
    18627,
    "curl",
    "10.244.1.7",
    "203.0.113.5",
    53746,
    80,
    Some(4026532785)
)]
// -t -v: nanoseconds
#[case::t4v(
    "0             connect      18627  curl             4  10.244.1.7       203.0.113.8      53746  80     4026532785",
    Some(0),
    EventKind::Connect,
    18627,
    "curl",
    "10.244.1.7",
    "203.0.113.8",
    53746,
    80,
    Some(4026532785)
)]
#[case::t4v_time_fills_column(
    "12345678901234close        4410   python3          4  10.244.2.33      168.63.129.16    40112  80     4026532184",
    Some(12_345_678_901_234),
    EventKind::Close,
    4410,
    "python3",
    "10.244.2.33",
    "168.63.129.16",
    40112,
    80,
    Some(4026532184)
)]
// -v -N: words without NETNS
#[case::v_without_netns(
    "accept       2201   nginx            4  10.244.1.9       10.244.0.3       80     41234 ",
    None,
    EventKind::Accept,
    2201,
    "nginx",
    "10.244.1.9",
    "10.244.0.3",
    80,
    41234,
    None
)]
// IPv6 wider than its column, and COMM with spaces (even ones that look like columns)
#[case::ipv6_overflow_spaced_comm(
    "1000          connect      5120   Web Content      6  [fd00:10:244:1::7] [2001:db8:85a3::8a2e:370:7334] 50122  443    4026532785",
    Some(1000),
    EventKind::Connect,
    5120,
    "Web Content",
    "fd00:10:244:1::7",
    "2001:db8:85a3::8a2e:370:7334",
    50122,
    443,
    Some(4026532785)
)]
#[case::comm_that_looks_like_columns(
    "3000          connect      5122   4 10.0.0.1       4  10.244.1.7       203.0.113.9      50126  443    4026532785",
    Some(3000),
    EventKind::Connect,
    5122,
    "4 10.0.0.1",
    "10.244.1.7",
    "203.0.113.9",
    50126,
    443,
    Some(4026532785)
)]
#[case::v4_mapped(
    "accept       77     sshd             6  [::ffff:10.244.1.7] [::ffff:10.224.0.5] 22     61000  4026532184",
    None,
    EventKind::Accept,
    77,
    "sshd",
    "::ffff:10.244.1.7",
    "::ffff:10.224.0.5",
    22,
    61000,
    Some(4026532184)
)]
#[case::empty_comm(
    "connect      1                       4  10.0.0.1         10.0.0.2         1      2      3",
    None,
    EventKind::Connect,
    1,
    "",
    "10.0.0.1",
    "10.0.0.2",
    1,
    2,
    Some(3)
)]
// snat's own kind, tabs and CRLF
#[case::failed_connect(
    "failed_connect 9 app 4 10.0.0.1 198.51.100.7 40000 443 4026532000\r",
    None,
    EventKind::FailedConnect,
    9,
    "app",
    "10.0.0.1",
    "198.51.100.7",
    40000,
    443,
    Some(4026532000)
)]
#[case::tabs(
    "C\t1\tmy app\t4\t10.0.0.1\t10.0.0.2\t1\t2",
    None,
    EventKind::Connect,
    1,
    "my app",
    "10.0.0.1",
    "10.0.0.2",
    1,
    2,
    None
)]
fn parses_events(
    #[case] line: &str,
    #[case] time_ns: Option<u64>,
    #[case] kind: EventKind,
    #[case] pid: u32,
    #[case] comm: &str,
    #[case] saddr: &str,
    #[case] daddr: &str,
    #[case] sport: u16,
    #[case] dport: u16,
    #[case] netns: Option<u64>,
) {
    let e = event(line);
    assert_eq!(e.time_ns, time_ns);
    assert_eq!(e.clock, Clock::Relative);
    assert_eq!(e.kind, kind);
    assert_eq!(e.pid, pid);
    assert_eq!(e.comm, comm);
    assert_eq!(e.saddr, ip(saddr));
    assert_eq!(e.daddr, ip(daddr));
    assert_eq!(e.family, Family::of(&e.saddr));
    assert_eq!(e.sport, sport);
    assert_eq!(e.dport, dport);
    assert_eq!(e.netns, netns);
}

#[test]
fn wall_clock_times_are_unix() {
    let e = event("1763700000123456789 connect 1 a 4 10.0.0.1 10.0.0.2 1 2 3");
    assert_eq!((e.time_ns, e.clock), (Some(1_763_700_000_123_456_789), Clock::Unix));
}

#[rstest]
#[case::banner(BANNER, Line::Banner)]
#[case::blank("   ", Line::Blank)]
#[case::empty("", Line::Blank)]
#[case::lost("Possibly lost 12 samples", Line::Lost(12))]
#[case::lost_old_bcc("Lost 5 samples", Line::Lost(5))]
#[case::header_plain(
    "T  PID    COMM             IP SADDR            DADDR            SPORT  DPORT ",
    Line::Header(Format { time: None, verbose: false, netns: false })
)]
#[case::header_t(
    "TIME(s)  T  PID    COMM             IP SADDR            DADDR            SPORT  DPORT ",
    Line::Header(Format { time: Some(TimeUnit::Seconds), verbose: false, netns: false })
)]
#[case::header_v(
    "TYPE         PID    COMM             IP SADDR            DADDR            SPORT  DPORT  NETNS   ",
    Line::Header(Format { time: None, verbose: true, netns: true })
)]
#[case::header_t4v(
    "TIME(ns)      TYPE         PID    COMM             IP SADDR            DADDR            SPORT  DPORT  NETNS   ",
    Line::Header(Format { time: Some(TimeUnit::Nanoseconds), verbose: true, netns: true })
)]
#[case::header_v_netns_filter(
    "TYPE         PID    COMM             IP SADDR            DADDR            SPORT  DPORT  ",
    Line::Header(Format { time: None, verbose: true, netns: false })
)]
fn parses_other_lines(#[case] line: &str, #[case] want: Line) {
    assert_eq!(parse_line(line).unwrap(), want);
}

#[rstest]
#[case::stderr_noise("cannot attach kprobe, probe entry may not exist", LineError::BadKind("cannot".into()))]
#[case::too_few("connect 1 curl 4 10.0.0.1 10.0.0.2", LineError::TooFewColumns { found: 6 })]
#[case::bad_kind("connected 1 curl 4 10.0.0.1 10.0.0.2 1 2 3", LineError::BadKind("connected".into()))]
#[case::bad_pid("connect x1 curl 4 10.0.0.1 10.0.0.2 1 2 3", LineError::BadPid("x1".into()))]
#[case::bad_family("connect 1 curl 5 10.0.0.1 10.0.0.2 1 2 3", LineError::BadFamily("5".into()))]
#[case::v4_column_v6_address(
    "connect 1 curl 4 [::1] 10.0.0.2 1 2 3",
    LineError::BadAddress { column: "SADDR", text: "[::1]".into() }
)]
#[case::bad_octet(
    "connect 1 curl 4 10.0.0.1 10.0.0.256 1 2 3",
    LineError::BadAddress { column: "DADDR", text: "10.0.0.256".into() }
)]
#[case::bad_port(
    "connect 1 curl 4 10.0.0.1 10.0.0.2 65536 2 3",
    LineError::BadPort { column: "SPORT", text: "65536".into() }
)]
#[case::bad_netns("connect 1 curl 4 10.0.0.1 10.0.0.2 1 2 x", LineError::BadNetns("x".into()))]
#[case::bad_time("1.2.3 connect 1 curl 4 10.0.0.1 10.0.0.2 1 2 3", LineError::BadTime("1.2.3".into()))]
#[case::bad_header("TIME(ns) TYPE PID COMM", LineError::BadHeader)]
#[case::lost_without_number("Possibly lost some samples", LineError::TooFewColumns { found: 4 })]
fn rejects_malformed_lines(#[case] line: &str, #[case] want: LineError) {
    assert_eq!(parse_line(line).unwrap_err(), want);
}

// ----- whole logs ----------------------------------------------------------------

fn read(name: &str) -> TraceSummary {
    LogReader::new().read_path(data(name)).unwrap()
}

fn top(s: &TraceSummary) -> (String, String, u64) {
    let r = s.rank(&[Field::Saddr, Field::Netns], Metric::Events).unwrap();
    let row = &r.rows[0];
    (row.key[0].to_string(), row.key[1].to_string(), row.counts.events)
}

#[rstest]
#[case::plain("plain.log", 8, 0, 0, ("::1", "-", 4))]
#[case::t("t.log", 4, 0, 0, ("192.168.1.2", "-", 2))]
#[case::v("v.log", 5, 0, 0, ("10.244.1.7", "4026532785", 3))]
#[case::t4v("t4v.log", 12, 0, 0, ("10.244.1.7", "4026532785", 8))]
#[case::ipv6_spaces("ipv6-spaces.log", 5, 0, 0, ("fd00:10:244:1::7", "4026532785", 3))]
#[case::lost("lost.log", 9, 20, 0, ("10.244.3.2", "4026532785", 3))]
#[case::truncated("truncated.log", 4, 0, 1, ("10.244.1.7", "4026532785", 4))]
fn reads_logs(
    #[case] name: &str,
    #[case] events: u64,
    #[case] lost: u64,
    #[case] malformed: u64,
    #[case] want_top: (&str, &str, u64),
) {
    let s = read(name);
    assert_eq!(s.source, data(name));
    assert_eq!(s.totals.events, events, "notes: {:?}", s.notes);
    assert_eq!(s.lost_events, lost);
    assert_eq!(s.malformed_lines, malformed, "notes: {:?}", s.notes);
    let (a, n, c) = top(&s);
    assert_eq!((a.as_str(), n.as_str(), c), want_top);
    // Every event lands in every grouping.
    for g in &s.groupings {
        let sum: u64 = g.ranking(Metric::Events).rows.iter().map(|r| r.counts.events).sum();
        assert_eq!(sum, events);
    }
}

#[test]
fn notes_explain_lost_samples_missing_netns_and_truncation() {
    let lost = read("lost.log");
    assert!(
        lost.notes
            .iter()
            .any(|n| n.contains("20 lost samples in 3") && n.contains("line 6")),
        "{:?}",
        lost.notes
    );
    let plain = read("plain.log");
    assert!(
        plain.notes.iter().any(|n| n.contains("8 of 8 events have no NETNS")),
        "{:?}",
        plain.notes
    );
    let t4v = read("t4v.log");
    assert!(t4v.notes.is_empty(), "{:?}", t4v.notes);
    let tr = read("truncated.log");
    assert!(
        tr.notes
            .iter()
            .any(|n| n.starts_with("line 7: ") && n.contains("looks truncated")),
        "{:?}",
        tr.notes
    );
}

/// Input that is no tcptracer log is an error, not an empty trace that reads as a quiet
/// node; a real log in which tcptracer saw nothing is a trace with a note.
#[rstest]
#[case::empty("", Err("x.log: not a tcptracer log: it is empty"))]
#[case::garbage(
    "hello\nworld of text\n\n",
    Err("x.log: not a tcptracer log: none of its 3 lines is a tcptracer event, banner or column header (line 1:")
)]
#[case::binary("\x7fELF\x02\x01\x01\0\n\0\0\n", Err("not a tcptracer log: none of its 2 lines"))]
#[case::banner_only(
    "Tracing TCP established connections. Ctrl-C to end.\n",
    Ok("no events in 1 lines: tcptracer saw no connection while it ran")
)]
#[case::header_and_garbage(
    "TIME(s)  TYPE         PID    COMM             IP SADDR            DADDR            SPORT  DPORT\nnot an event\n",
    Ok("no events in 2 lines")
)]
#[case::lost_only("Possibly lost 12 samples\n", Ok("no events in 1 lines"))]
fn input_that_is_not_a_log_is_an_error(#[case] log: &str, #[case] want: Result<&str, &str>) {
    match (LogReader::new().read(log.as_bytes(), "x.log"), want) {
        (Ok(s), Ok(note)) => assert!(s.notes.iter().any(|n| n.starts_with(note)), "{:?}", s.notes),
        (Err(e), Err(msg)) => {
            let e = e.to_string();
            assert!(e.contains(msg), "{e}");
            assert!(
                e.ends_with("pass what `tcptracer -t4v` (or -t, -v, or no option) writes"),
                "{e}"
            );
        }
        (got, want) => panic!("got {got:?}, want {want:?}"),
    }
}

#[test]
fn open_connections_are_counted_per_key() {
    let s = read("t4v.log");
    let r = s.rank(&[Field::Saddr, Field::Netns], Metric::Open).unwrap();
    // 10.244.2.33 connected twice and closed once; 10.224.0.4 connected once;
    // 10.244.1.7 closed everything it opened.
    let open: Vec<(String, u64)> = r.rows.iter().map(|r| (r.key[0].to_string(), r.counts.open)).collect();
    assert_eq!(open, [("10.224.0.4".to_string(), 1), ("10.244.2.33".to_string(), 1)]);
    assert_eq!(s.totals.open, 2);
}

#[test]
fn strict_mode_names_source_line_and_reason() {
    let err = LogReader::new()
        .strict(true)
        .read_path(data("truncated.log"))
        .unwrap_err();
    match &err {
        Error::TcptracerLine {
            log,
            line,
            text,
            reason,
        } => {
            assert_eq!(log, &data("truncated.log"));
            assert_eq!(*line, 7);
            assert!(text.ends_with("40265"), "{text}");
            assert_eq!(*reason, LineError::Truncated);
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("truncated.log:7:") && msg.contains("looks truncated"),
        "{msg}"
    );

    let log =
        format!("{BANNER}\nconnect 1 a 4 10.0.0.1 10.0.0.2 1 2 3\n\nconnect 1 a 4 10.0.0.1 10.0.0.2 1 2\nX 1 a\n");
    let err = LogReader::new().strict(true).read(log.as_bytes(), "mem").unwrap_err();
    match err {
        Error::TcptracerLine { log, line, reason, .. } => {
            assert_eq!((log.as_str(), line), ("mem", 5));
            assert_eq!(reason, LineError::TooFewColumns { found: 3 });
        }
        other => panic!("unexpected {other:?}"),
    }
    // Lenient: the same log reads, with the line counted and quoted.
    let s = LogReader::new().read(log.as_bytes(), "mem").unwrap();
    assert_eq!((s.totals.events, s.malformed_lines), (2, 1));
    assert!(
        s.notes.iter().any(|n| n.starts_with("malformed line 5: ")),
        "{:?}",
        s.notes
    );
}

#[test]
fn quotes_only_the_first_malformed_lines() {
    let mut log = String::from("connect 1 a 4 10.0.0.1 10.0.0.2 1 2 3\n");
    for i in 0..20 {
        log.push_str(&format!("garbage {i}\n"));
    }
    let s = LogReader::new()
        .max_reported_errors(3)
        .read(log.as_bytes(), "mem")
        .unwrap();
    assert_eq!(s.malformed_lines, 20);
    let quoted: Vec<&String> = s.notes.iter().filter(|n| n.starts_with("malformed line")).collect();
    assert_eq!(quoted.len(), 3);
    assert!(quoted[0].starts_with("malformed line 2: ") && quoted[0].contains("\"garbage 0\""));
    assert!(quoted[2].starts_with("malformed line 4: "));
    assert!(
        s.notes.iter().any(|n| n.contains("17 more malformed lines")),
        "{:?}",
        s.notes
    );
}

#[test]
fn a_final_line_without_newline_is_never_counted_as_an_event() {
    // Cut inside NETNS: it would parse, to a wrong namespace.
    let s = LogReader::new()
        .read(
            "C 1 a 4 10.0.0.1 10.0.0.2 1 2\nconnect 1 a 4 10.0.0.1 10.0.0.2 1 2 40265".as_bytes(),
            "m",
        )
        .unwrap();
    assert_eq!((s.totals.events, s.malformed_lines), (1, 1));
    // A complete banner or header without newline is fine; trailing blanks are nothing.
    let s = LogReader::new().read(BANNER.as_bytes(), "m").unwrap();
    assert_eq!(s.malformed_lines, 0);
    let s = LogReader::new()
        .read("C 1 a 4 10.0.0.1 10.0.0.2 1 2\n  ".as_bytes(), "m")
        .unwrap();
    assert_eq!((s.totals.events, s.malformed_lines), (1, 0));
}

#[test]
fn overlong_lines_are_malformed_not_buffered() {
    let mut log = String::from("C 1 a 4 10.0.0.1 10.0.0.2 1 2\n");
    log.push_str(&"x".repeat(3 << 20));
    log.push_str("\nC 1 a 4 10.0.0.1 10.0.0.2 1 2\n");
    let s = LogReader::new().read(log.as_bytes(), "m").unwrap();
    assert_eq!((s.totals.events, s.malformed_lines), (2, 1));
    assert!(
        s.notes
            .iter()
            .any(|n| n.starts_with("malformed line 2: line of 3145728 bytes")),
        "{:?}",
        s.notes
    );
    let evs: Vec<_> = LogEvents::new(log.as_bytes(), "m").collect();
    assert_eq!(evs.len(), 3);
    assert!(matches!(
        &evs[1],
        Err(Error::TcptracerLine {
            line: 2,
            reason: LineError::TooLong { len: 3145728 },
            ..
        })
    ));
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let err = LogReader::new().read_path(data("no-such.log")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(
        err,
        Error::Io {
            what: "cannot open tcptracer log",
            ..
        }
    ));
    assert!(msg.contains("no-such.log"), "{msg}");
}

#[test]
fn several_headers_are_noted() {
    let a = std::fs::read_to_string(data("t4v.log")).unwrap();
    let b = std::fs::read_to_string(data("plain.log")).unwrap();
    let s = LogReader::new().read(format!("{a}{b}").as_bytes(), "m").unwrap();
    assert_eq!(s.totals.events, 20);
    assert!(s.notes.iter().any(|n| n.contains("several runs")), "{:?}", s.notes);
}

fn summary_fingerprint(s: &TraceSummary) -> (String, u64, u64, Vec<String>) {
    let mut rows = String::new();
    for g in &s.groupings {
        rows.push_str(&g.ranking(Metric::Events).to_text());
        rows.push_str(&format!("{:?}\n", g.ranking(Metric::Open).rows.len()));
    }
    (rows, s.lost_events, s.malformed_lines, s.notes.clone())
}

#[test]
fn parallel_reading_matches_sequential_at_every_split() {
    // A log with every kind of line, read with 1..=9 threads so chunk boundaries fall
    // everywhere: inside lines, on newlines, inside the truncated tail.
    let mut log = String::new();
    for name in [
        "t4v.log",
        "lost.log",
        "ipv6-spaces.log",
        "v.log",
        "plain.log",
        "truncated.log",
    ] {
        log.push_str(&std::fs::read_to_string(data(name)).unwrap());
        log.push_str("bad line here\n");
    }
    log.pop(); // and no final newline
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.log");
    std::fs::File::create(&path).unwrap().write_all(log.as_bytes()).unwrap();
    let seq = LogReader::new()
        .max_reported_errors(100)
        .read(log.as_bytes(), "x")
        .unwrap();
    // The last "bad line here" runs on from the truncated line: one malformed line.
    assert_eq!(seq.malformed_lines, 6, "{:?}", seq.notes);
    for threads in 1..=9 {
        let par = LogReader::new()
            .max_reported_errors(100)
            .threads(threads)
            .read_path(&path)
            .unwrap();
        assert_eq!(
            summary_fingerprint(&par),
            summary_fingerprint(&seq),
            "threads {threads}"
        );
    }
    // Strict mode reports the same first line whatever the split.
    for threads in 1..=9 {
        let err = LogReader::new()
            .strict(true)
            .threads(threads)
            .read_path(&path)
            .unwrap_err();
        assert!(
            matches!(err, Error::TcptracerLine { line: 15, .. }),
            "threads {threads}: {err}"
        );
    }
}

#[test]
fn sample_log_is_realistic() {
    let s = read("sample-t4v.log");
    assert!(s.totals.events >= 200, "{}", s.totals.events);
    assert_eq!((s.malformed_lines, s.lost_events), (0, 0));
    let r = s.rank(&[Field::Saddr, Field::Netns], Metric::Events).unwrap();
    assert!(r.rows.len() >= 5);
    let dests = s
        .rank(&[Field::Netns, Field::Daddr, Field::Dport], Metric::Events)
        .unwrap();
    let has = |a: &str| dests.rows.iter().any(|row| row.key[1] == Value::Ip(ip(a)));
    assert!(has("168.63.129.16") && has("169.254.169.254"));
    assert!(
        dests
            .rows
            .iter()
            .any(|row| matches!(row.key[1], Value::Ip(IpAddr::V6(_))))
    );
    assert!(
        dests
            .rows
            .iter()
            .any(|row| matches!(row.key[1], Value::Ip(IpAddr::V4(a)) if a.octets()[0] == 10))
    );
}

#[test]
fn event_iterator_streams_events_and_errors() {
    let f = std::fs::File::open(data("lost.log")).unwrap();
    let mut it = LogEvents::new(std::io::BufReader::new(f), "lost.log");
    let evs: Vec<TcpEvent> = it.by_ref().map(|r| r.unwrap()).collect();
    assert_eq!(evs.len(), 9);
    assert_eq!(it.lost_events(), 20);
    assert_eq!(it.line_number(), 14);
    let f = std::fs::File::open(data("truncated.log")).unwrap();
    let res: Vec<_> = LogEvents::new(std::io::BufReader::new(f), "t").collect();
    assert_eq!(res.len(), 5);
    assert!(matches!(
        &res[4],
        Err(Error::TcptracerLine {
            line: 7,
            reason: LineError::Truncated,
            ..
        })
    ));
}

// ----- formatting and round trips --------------------------------------------------

#[test]
fn format_matches_tcptracer_layout() {
    let e = event("0 connect 18627 curl 4 10.244.1.7 203.0.113.8 53746 80 4026532785");
    assert_eq!(
        format_event(&e, true, true, TypeColumn::Tcptracer),
        "0             connect      18627  curl             4  10.244.1.7       203.0.113.8      53746  80     4026532785"
    );
    assert_eq!(
        format_header(true, true, TypeColumn::Tcptracer),
        "TIME(ns)      TYPE         PID    COMM             IP SADDR            DADDR            SPORT  DPORT  NETNS"
    );
    // The article's awk columns still work on our output: $6 SADDR, $10 NETNS.
    let line = format_event(&e, true, true, TypeColumn::Tcptracer);
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((cols[5], cols[9]), ("10.244.1.7", "4026532785"));
    let mut f = e.clone();
    f.time_ns = Some(1_763_700_000_123_456_789);
    f.comm = "bad\nname".into();
    let line = format_event(&f, true, false, TypeColumn::Tcptracer);
    assert!(
        line.starts_with("1763700000123456789 connect      18627  bad?name "),
        "{line}"
    );
}

/// Where each whitespace-separated field of `line` starts.
fn field_starts(line: &str) -> Vec<usize> {
    let b = line.as_bytes();
    (0..b.len())
        .filter(|&i| b[i] != b' ' && (i == 0 || b[i - 1] == b' '))
        .collect()
}

/// With the wide TYPE column every kind, `failed_connect` included, starts each field
/// where the header's starts, and splits into as many fields; tcptracer's own width
/// pushes a `failed_connect` line's fields two columns right.
#[rstest]
#[case::connect(EventKind::Connect)]
#[case::accept(EventKind::Accept)]
#[case::close(EventKind::Close)]
#[case::unknown(EventKind::Unknown)]
#[case::failed_connect(EventKind::FailedConnect)]
fn wide_type_column_aligns_every_kind(#[case] kind: EventKind) {
    let mut e = event("0 connect 18627 curl 4 10.244.1.7 203.0.113.8 53746 80 4026532785");
    e.kind = kind;
    for with_time in [true, false] {
        let header = format_header(with_time, true, TypeColumn::Wide);
        let line = format_event(&e, with_time, true, TypeColumn::Wide);
        assert_eq!(field_starts(&line), field_starts(&header), "\n{header}\n{line}");
    }
    let narrow = format_event(&e, true, true, TypeColumn::Tcptracer);
    let header = format_header(true, true, TypeColumn::Tcptracer);
    assert_eq!(
        field_starts(&narrow) == field_starts(&header),
        kind != EventKind::FailedConnect,
        "\n{header}\n{narrow}"
    );
}

fn arb_ip(v6: bool) -> BoxedStrategy<IpAddr> {
    if v6 {
        any::<[u8; 16]>().prop_map(IpAddr::from).boxed()
    } else {
        any::<[u8; 4]>().prop_map(IpAddr::from).boxed()
    }
}

fn arb_event() -> impl Strategy<Value = TcpEvent> {
    (
        any::<bool>(),
        prop_oneof![
            Just(None),
            (0u64..10u64.pow(15)).prop_map(Some),
            (1_600_000_000_000_000_000u64..1_900_000_000_000_000_000).prop_map(Some)
        ],
        prop_oneof![
            Just(EventKind::Connect),
            Just(EventKind::Accept),
            Just(EventKind::Close),
            Just(EventKind::FailedConnect),
            Just(EventKind::Unknown)
        ],
        any::<u32>(),
        "[a-zA-Z0-9_.:/-]([a-zA-Z0-9 _.:/-]{0,13}[a-zA-Z0-9_.:/-])?",
        any::<u16>(),
        any::<u16>(),
        proptest::option::of(any::<u64>()),
    )
        .prop_flat_map(|(v6, time_ns, kind, pid, comm, sport, dport, netns)| {
            (arb_ip(v6), arb_ip(v6)).prop_map(move |(saddr, daddr)| TcpEvent {
                time_ns,
                clock: match time_ns {
                    Some(t) if t >= 946_684_800_000_000_000 => Clock::Unix,
                    _ => Clock::Relative,
                },
                kind,
                direction: kind.direction(),
                pid,
                comm: comm.clone(),
                family: Family::of(&saddr),
                saddr,
                daddr,
                sport,
                dport,
                netns,
                cgroup_id: None,
                prev_state: None,
                duration_ns: None,
                error: None,
            })
        })
}

/// One event as BCC's tcptracer prints it in the given layout (its printf formats).
fn bcc_line(e: &TcpEvent, time: Option<TimeUnit>, verbose: bool, netns: bool) -> String {
    let addr = |a: &IpAddr| match a {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    let mut s = String::new();
    match time {
        Some(TimeUnit::Nanoseconds) => s.push_str(&format!("{:<14}", e.time_ns.unwrap_or(0))),
        Some(TimeUnit::Seconds) => s.push_str(&format!("{:<9.3}", e.time_ns.unwrap_or(0) as f64 / 1e9)),
        None => {}
    }
    let letter = match e.kind {
        EventKind::Connect => "C",
        EventKind::Accept => "A",
        EventKind::Close => "X",
        _ => "U",
    };
    if verbose {
        s.push_str(&format!("{:<12} ", e.kind.as_str()));
    } else {
        s.push_str(&format!("{letter:<2} "));
    }
    s.push_str(&format!(
        "{:<6} {:<16} {:<2} {:<16} {:<16} {:<6} {:<6}",
        e.pid,
        e.comm,
        e.family.number(),
        addr(&e.saddr),
        addr(&e.daddr),
        e.sport,
        e.dport
    ));
    if verbose && netns {
        s.push_str(&format!(" {:<8}", e.netns.unwrap_or(0)));
    }
    s
}

fn bcc_header(time: Option<TimeUnit>, verbose: bool, netns: bool) -> String {
    let mut h = String::new();
    match (time, verbose) {
        (Some(_), true) => h.push_str("TIME(ns)      "),
        (Some(_), false) => h.push_str("TIME(s)  "),
        _ => {}
    }
    h.push_str(if verbose { "TYPE        " } else { "T " });
    h.push_str(" PID    COMM             IP SADDR            DADDR            SPORT  DPORT  ");
    if verbose && netns {
        h.push_str("NETNS");
    }
    h
}

/// The plain reference: read the header to know where SADDR and NETNS are, then count
/// the whitespace-separated columns of every other line, from the right.
fn reference_count(log: &str) -> (BTreeMap<(String, String), u64>, u64) {
    let mut counts = BTreeMap::new();
    let mut lost = 0;
    let mut has_netns = false;
    for line in log.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        match cols.first() {
            None => continue,
            Some(&"Tracing") => continue,
            Some(&"Possibly") => {
                lost += cols[2].parse::<u64>().unwrap();
                continue;
            }
            Some(&"TIME(ns)" | &"TIME(s)" | &"TYPE" | &"T") => {
                has_netns = cols.last() == Some(&"NETNS");
                continue;
            }
            _ => {}
        }
        let n = cols.len();
        let (saddr, netns) = if has_netns {
            (cols[n - 5], cols[n - 1].to_string())
        } else {
            (cols[n - 4], "-".into())
        };
        let saddr: IpAddr = saddr.trim_start_matches('[').trim_end_matches(']').parse().unwrap();
        *counts.entry((saddr.to_string(), netns)).or_default() += 1;
    }
    (counts, lost)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn format_then_parse_round_trips(
        ev in arb_event(),
        with_time in any::<bool>(),
        with_netns in any::<bool>(),
        types in prop_oneof![Just(TypeColumn::Tcptracer), Just(TypeColumn::Wide)],
    ) {
        let line = format_event(&ev, with_time, with_netns, types);
        let mut want = ev.clone();
        if !with_time {
            want.time_ns = None;
            want.clock = Clock::Relative;
        }
        if !with_netns {
            want.netns = None;
        }
        prop_assert_eq!(parse_line(&line), Ok(Line::Event(want)), "line {:?}", line);
    }

    #[test]
    fn generated_logs_count_like_the_reference(
        evs in proptest::collection::vec((arb_event(), 0u8..10), 0..120),
        time in prop_oneof![Just(None), Just(Some(TimeUnit::Seconds)), Just(Some(TimeUnit::Nanoseconds))],
        verbose in any::<bool>(),
        netns in any::<bool>(),
        threads in 1usize..5,
    ) {
        let netns = netns && verbose;
        let mut log = format!("{BANNER}\n{}\n", bcc_header(time, verbose, netns));
        for (e, r) in &evs {
            log.push_str(&bcc_line(e, time, verbose, netns));
            log.push('\n');
            if *r == 0 {
                log.push_str(&format!("Possibly lost {} samples\n", e.sport % 50));
            }
        }
        let (want, want_lost) = reference_count(&log);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gen.log");
        std::fs::write(&path, &log).unwrap();
        let s = LogReader::new().threads(threads).read_path(&path).unwrap();
        prop_assert_eq!(s.malformed_lines, 0, "{:?}", s.notes);
        prop_assert_eq!(s.lost_events, want_lost);
        prop_assert_eq!(s.totals.events, evs.len() as u64);
        let got: BTreeMap<(String, String), u64> = s
            .rank(&[Field::Saddr, Field::Netns], Metric::Events)
            .unwrap()
            .rows
            .iter()
            .map(|r| ((r.key[0].to_string(), r.key[1].to_string()), r.counts.events))
            .collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn arbitrary_input_never_panics_and_every_line_is_accounted(lines in proptest::collection::vec("[ -~\t]{0,60}", 0..40)) {
        let log = lines.join("\n") + "\n";
        let r = LogReader::new().read(log.as_bytes(), "fuzz");
        let (mut events, mut bad, mut tcptracer_lines) = (0, 0, 0);
        for l in &lines {
            match parse_line(l) {
                Ok(Line::Event(_)) => events += 1,
                Ok(Line::Blank) => {}
                Ok(_) => tcptracer_lines += 1,
                Err(_) => bad += 1,
            }
        }
        // Not a log at all: some lines, none of them tcptracer's (blank ones aside).
        if events + tcptracer_lines == 0 && bad > 0 {
            let e = r.unwrap_err().to_string();
            prop_assert!(e.starts_with("fuzz: not a tcptracer log: none of its"), "{}", e);
        } else {
            let s = r.unwrap();
            prop_assert_eq!((s.totals.events, s.malformed_lines), (events, bad));
        }
    }

    /// The fast path for `-t4v` lines must count exactly what the full parser reads: every
    /// field of every event, and every malformed line, also with near-miss corruptions
    /// (a digit, dot, blank or letter written over any byte) and any thread split.
    #[test]
    fn corrupted_t4v_logs_count_like_the_line_parser(
        evs in proptest::collection::vec(
            (arb_event(), proptest::collection::vec((any::<proptest::sample::Index>(), 0usize..12), 0..3)),
            1..80,
        ),
        threads in 1usize..4,
    ) {
        const BYTES: &[u8] = b"0159. \tx:-[\r";
        let all = vec![
            Field::Kind, Field::Pid, Field::Comm, Field::Family, Field::Saddr,
            Field::Daddr, Field::Sport, Field::Dport, Field::Netns,
        ];
        let mut log = format!("{BANNER}\n{}\n", bcc_header(Some(TimeUnit::Nanoseconds), true, true));
        let mut want: BTreeMap<Vec<String>, (u64, u64)> = BTreeMap::new();
        let (mut events, mut bad) = (0u64, 0u64);
        for (e, muts) in &evs {
            let mut line = bcc_line(e, Some(TimeUnit::Nanoseconds), true, true).into_bytes();
            for (at, b) in muts {
                let at = at.index(line.len());
                line[at] = BYTES[*b];
            }
            let line = String::from_utf8(line).unwrap();
            match parse_line(&line) {
                Ok(Line::Event(ev)) => {
                    events += 1;
                    let key = vec![
                        ev.kind.as_str().to_string(), ev.pid.to_string(), ev.comm.clone(),
                        ev.family.number().to_string(), ev.saddr.to_string(), ev.daddr.to_string(),
                        // An accept's DPORT (the client's port) is no part of its key.
                        ev.sport.to_string(),
                        if ev.kind == EventKind::Accept { "-".into() } else { ev.dport.to_string() },
                        ev.netns.map_or("-".into(), |n| n.to_string()),
                    ];
                    let c = want.entry(key).or_default();
                    c.0 += 1;
                    c.1 += u64::from(ev.kind == EventKind::Close);
                }
                Ok(_) => {}
                Err(_) => bad += 1,
            }
            log.push_str(&line);
            log.push('\n');
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t4v.log");
        std::fs::write(&path, &log).unwrap();
        let s = LogReader::new().groupings(vec![all.clone()]).threads(threads).read_path(&path).unwrap();
        prop_assert_eq!((s.totals.events, s.malformed_lines), (events, bad), "{:?}", s.notes);
        let got: BTreeMap<Vec<String>, (u64, u64)> = s
            .rank(&all, Metric::Events)
            .unwrap()
            .rows
            .iter()
            .map(|r| (r.key.iter().map(|v| v.to_string()).collect(), (r.counts.events, r.counts.closes)))
            .collect();
        prop_assert_eq!(got, want);
    }
}

/// Accepts from one client on many ephemeral ports are one row per (netns, client, `-`) in
/// every path of the reader, as in both live modes; their SPORT is the listening port. A
/// close line does not say who opened the connection, so it keeps its DPORT.
#[rstest]
#[case::packed_path(vec![Field::Netns, Field::Daddr, Field::Dport], "", 1)]
#[case::fast_path(vec![Field::Comm, Field::Netns, Field::Daddr, Field::Dport], "", 1)]
// A leading blank leaves every line to the full parser.
#[case::full_parser(vec![Field::Netns, Field::Daddr, Field::Dport], " ", 1)]
#[case::packed_path_threads(vec![Field::Netns, Field::Daddr, Field::Dport], "", 3)]
fn accepts_rank_without_the_clients_port(#[case] fields: Vec<Field>, #[case] lead: &str, #[case] threads: usize) {
    let mut log = format!("{BANNER}\n{}\n", bcc_header(Some(TimeUnit::Nanoseconds), true, true));
    for i in 0..40u64 {
        let port = 40000 + i;
        log.push_str(&format!(
            "{lead}{:<14}accept       9      server           4  10.244.0.9       10.244.1.7       8080   {port:<6} 4026532785\n",
            i * 1000
        ));
        log.push_str(&format!(
            "{lead}{:<14}close        9      server           4  10.244.0.9       10.244.1.7       8080   {port:<6} 4026532785\n",
            i * 1000 + 500
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("accepts.log");
    std::fs::write(&path, &log).unwrap();
    let s = LogReader::new()
        .groupings(vec![fields.clone(), vec![Field::Kind, Field::Sport]])
        .threads(threads)
        .read_path(&path)
        .unwrap();
    let r = s.rank(&fields, Metric::Accepts).unwrap();
    assert_eq!(r.rows.len(), 1, "{r:?}");
    assert_eq!(r.rows[0].counts.accepts, 40);
    assert_eq!(r.value(&r.rows[0], Field::Dport), Some(&Value::Missing));
    assert_eq!(r.value(&r.rows[0], Field::Daddr), Some(&Value::Ip(ip("10.244.1.7"))));
    assert_eq!(r.rows[0].counts.closes, 0, "closes keep their DPORT: {r:?}");
    assert_eq!(s.rank(&fields, Metric::Closes).unwrap().rows.len(), 40);
    let k = s.rank(&[Field::Kind, Field::Sport], Metric::Accepts).unwrap();
    assert_eq!(k.rows[0].key, vec![Value::Kind(EventKind::Accept), Value::Int(8080)]);
}

proptest! {
    /// Connects, failures and closes between two IPv4 addresses, some from IPv4 sockets and
    /// some from dual-stack IPv6 sockets (IPv4-mapped addresses, `IP` 6): every path of the
    /// reader (packed, fast, full) and any thread split ranks them in one row per grouping,
    /// keyed by the IPv4 addresses, with every event counted.
    #[test]
    fn ipv4_mapped_lines_rank_with_ipv4_lines(
        local in any::<[u8; 4]>(),
        remote in any::<[u8; 4]>(),
        evs in proptest::collection::vec(
            (any::<bool>(), prop_oneof![Just(EventKind::Connect), Just(EventKind::FailedConnect), Just(EventKind::Close)]),
            1..60,
        ),
        threads in 1usize..4,
    ) {
        let (l4, r4) = (std::net::Ipv4Addr::from(local), std::net::Ipv4Addr::from(remote));
        let mut log = format!("{BANNER}\n{}\n", bcc_header(Some(TimeUnit::Nanoseconds), true, true));
        for (i, (mapped, kind)) in evs.iter().enumerate() {
            let (saddr, daddr) = if *mapped {
                (IpAddr::V6(l4.to_ipv6_mapped()), IpAddr::V6(r4.to_ipv6_mapped()))
            } else {
                (IpAddr::V4(l4), IpAddr::V4(r4))
            };
            let e = TcpEvent {
                time_ns: Some(i as u64 * 1000),
                clock: Clock::Relative,
                kind: *kind,
                direction: kind.direction(),
                pid: 7,
                comm: "app".into(),
                family: Family::of(&saddr),
                saddr,
                daddr,
                sport: 40000 + i as u16,
                dport: 443,
                netns: Some(4026532785),
                cgroup_id: None,
                prev_state: None,
                duration_ns: None,
                error: None,
            };
            log.push_str(&format_event(&e, true, true, TypeColumn::Wide));
            log.push('\n');
        }
        let groupings = vec![
            vec![Field::Saddr, Field::Netns],
            vec![Field::Netns, Field::Daddr, Field::Dport],
            vec![Field::Family, Field::Daddr],
            vec![Field::Comm, Field::Daddr],
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mapped.log");
        std::fs::write(&path, &log).unwrap();
        let s = LogReader::new().groupings(groupings.clone()).threads(threads).read_path(&path).unwrap();
        prop_assert_eq!(s.malformed_lines, 0, "{:?}", s.notes);
        for g in &groupings {
            let r = s.rank(g, Metric::Events).unwrap();
            prop_assert_eq!(r.rows.len(), 1, "{:?}: {:?}", g, r.rows);
            prop_assert_eq!(r.rows[0].counts.events, evs.len() as u64);
            for (f, v) in g.iter().zip(&r.rows[0].key) {
                match f {
                    Field::Saddr => prop_assert_eq!(v, &Value::Ip(IpAddr::V4(l4))),
                    Field::Daddr => prop_assert_eq!(v, &Value::Ip(IpAddr::V4(r4))),
                    Field::Family => prop_assert_eq!(v, &Value::Family(Family::Ipv4)),
                    _ => {}
                }
            }
        }
    }
}

/// A log mixing everything the reader's paths must agree on: `-t4v` events (IPv4 and IPv6,
/// COMM with spaces), some with a byte overwritten by a near miss, `Possibly lost` lines,
/// headers, blank lines, garbage, and maybe no newline at the end.
fn mixed_t4v_log() -> impl Strategy<Value = String> {
    const BYTES: &[u8] = b"0159. \tx:-[\r";
    let line = prop_oneof![
        12 => (arb_event(), proptest::collection::vec((any::<proptest::sample::Index>(), 0usize..12), 0..2))
            .prop_map(|(mut e, muts)| {
                // Real namespaces: 10 digits, so no trailing padding.
                e.netns = Some(4_026_531_840 + e.netns.unwrap_or(0) % 100_000);
                let mut line = bcc_line(&e, Some(TimeUnit::Nanoseconds), true, true).into_bytes();
                for (at, b) in muts {
                    let at = at.index(line.len());
                    line[at] = BYTES[b];
                }
                String::from_utf8(line).unwrap_or_default()
            }),
        1 => (1u64..100).prop_map(|n| format!("Possibly lost {n} samples")),
        1 => Just(bcc_header(Some(TimeUnit::Nanoseconds), true, true)),
        1 => Just(String::new()),
        1 => "[ -~]{0,130}",
    ];
    (proptest::collection::vec(line, 0..60), any::<bool>()).prop_map(|(lines, cut)| {
        let mut log = format!("{BANNER}\n");
        for l in lines {
            log.push_str(&l);
            log.push('\n');
        }
        if cut {
            log.pop();
        }
        log
    })
}

/// Counts of a ranking's rows, without `open` (computed differently by the two paths).
fn rows_of(s: &TraceSummary, fields: &[Field]) -> BTreeMap<Vec<Value>, [u64; 6]> {
    s.rank(fields, Metric::Events)
        .unwrap()
        .rows
        .into_iter()
        .map(|r| {
            let c = r.counts;
            (
                r.key,
                [c.events, c.connects, c.accepts, c.closes, c.failed_connects, c.unknown],
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// With groupings of integer columns (the reader's packed fast path), the reader counts
    /// exactly what the line-by-line event iterator (the full parser) reads, and reports
    /// the same malformed lines by the same line numbers, whatever the thread split.
    #[test]
    fn packed_fast_path_agrees_with_the_event_iterator(log in mixed_t4v_log(), threads in 1usize..4) {
        let groupings = vec![
            vec![Field::Saddr, Field::Netns],
            vec![Field::Netns, Field::Daddr, Field::Dport],
            vec![Field::Kind, Field::Pid, Field::Family, Field::Sport],
        ];
        let mut want = TraceSummary::new("ref", groupings.clone());
        let mut bad_lines = Vec::new();
        let mut it = LogEvents::new(log.as_bytes(), "ref");
        for r in &mut it {
            match r {
                Ok(ev) => want.add(&ev).unwrap(),
                Err(Error::TcptracerLine { line, .. }) => bad_lines.push(line),
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mixed.log");
        std::fs::write(&path, &log).unwrap();
        let got = LogReader::new()
            .groupings(groupings.clone())
            .max_reported_errors(1000)
            .threads(threads)
            .read_path(&path)
            .unwrap();
        prop_assert_eq!(got.totals.events, want.totals.events);
        prop_assert_eq!(got.malformed_lines, bad_lines.len() as u64, "{:?}", got.notes);
        prop_assert_eq!(got.lost_events, it.lost_events());
        // Every malformed line is quoted (truncated last lines as `line N:`), by number.
        let quoted: Vec<u64> = got
            .notes
            .iter()
            .filter_map(|n| n.strip_prefix("malformed line ").or_else(|| n.strip_prefix("line ")))
            .filter_map(|n| n.split(':').next()?.parse().ok())
            .collect();
        prop_assert_eq!(quoted, bad_lines, "{:?}", got.notes);
        for g in &groupings {
            prop_assert_eq!(rows_of(&got, g), rows_of(&want, g), "{:?}", g);
        }
    }
}
