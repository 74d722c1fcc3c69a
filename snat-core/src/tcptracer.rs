//! Reader for BCC `tcptracer` logs: the article's Step 2 (`tcptracer -t4v > log`, then
//! `awk '{print $6,$10}' log | sort | uniq -c | sort -nrk 1`) as a streaming, typed stage.
//!
//! [`LogReader`] turns a log (a file, or stdin with the path `-`) into a [`TraceSummary`]:
//! totals, one ranking table per grouping, the `Possibly lost N samples` lines summed into
//! [`TraceSummary::lost_events`], malformed lines counted and the first few quoted with
//! their line numbers. Memory depends on the number of distinct keys, never on the size of
//! the log; a regular file is split at line boundaries and read by several threads.
//!
//! Every format tcptracer prints is understood, line by line, without needing the header:
//! plain (`T PID COMM IP SADDR DADDR SPORT DPORT`, kinds as letters `C A X U`), `-t` (a
//! `TIME(s)` column in seconds), `-v` (kinds as words, and a `NETNS` column unless `-N` was
//! given), `-t -v` (`TIME(ns)` in nanoseconds), with or without `-4`/`-6`. Columns are found
//! from both ends of the line, never by offset: IPv6 addresses in brackets overflow their
//! 16-character column, and COMM (whatever lies between PID and IP) may contain spaces.
//! [`format_event`] writes the same text for snat's own events (with the extra kind
//! `failed_connect`, for which [`TypeColumn::Wide`] widens the TYPE column), so snat's live
//! output round-trips through this reader.
//!
//! Each line takes the first of three paths that is sure of it, and all three count the
//! same: the packed path (`packed`: IPv4 `-t4v` lines, integer keys, for groupings without
//! COMM), the fast path (`fast`: any `-v` line with NETNS, byte keys), and the full parser
//! ([`parse_line`]), which alone reports malformed lines.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use crate::aggregate::{Aggregator, Counts, Field, TraceSummary, key_family};
use crate::error::Error;
use crate::keytable::{self, KeyTable};
use crate::model::{Clock, Direction, EventKind, Family, TcpEvent};

mod fast;
mod packed;
#[cfg(test)]
mod testgen;

/// The first line tcptracer prints.
pub const BANNER: &str = "Tracing TCP established connections. Ctrl-C to end.";

/// Lines longer than this cannot be tcptracer output; they are malformed and are skipped
/// without being held in memory.
const MAX_LINE: usize = 64 * 1024;

/// Read buffer per thread.
const BUF_SIZE: usize = 1 << 18;

/// Files smaller than this are read by one thread.
const PARALLEL_MIN_BYTES: u64 = 8 << 20;

/// A TIME value at or above this (the year 2000, in nanoseconds since the Unix epoch) is
/// read as wall-clock time ([`Clock::Unix`]); tcptracer's own times count from the first
/// event and stay far below it.
const UNIX_CLOCK_MIN_NS: u64 = 946_684_800_000_000_000;

/// Malformed lines are quoted in notes up to this many characters.
const QUOTE_MAX: usize = 200;

/// Units of a log's TIME column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeUnit {
    /// `TIME(s)`: seconds with three decimals (`tcptracer -t`).
    Seconds,
    /// `TIME(ns)`: integer nanoseconds (`tcptracer -t -v`).
    Nanoseconds,
}

/// The layout a header line announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Format {
    /// The TIME column and its unit, if there is one (`-t`).
    pub time: Option<TimeUnit>,
    /// Kinds as words in a `TYPE` column (`-v`) rather than letters in a `T` column.
    pub verbose: bool,
    /// A `NETNS` column (`-v` without `-N`).
    pub netns: bool,
}

impl Format {
    /// The tcptracer flags that produce this layout, e.g. `-t -v`.
    pub fn flags(&self) -> String {
        let mut f = Vec::new();
        if self.time.is_some() {
            f.push("-t");
        }
        if self.verbose {
            f.push(if self.netns { "-v" } else { "-v -N NETNS" });
        }
        if f.is_empty() { "(no flags)".into() } else { f.join(" ") }
    }
}

/// One line of a tcptracer log, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A TCP event.
    Event(TcpEvent),
    /// The banner, `Tracing TCP established connections. Ctrl-C to end.`
    Banner,
    /// The column header.
    Header(Format),
    /// `Possibly lost N samples` (or older BCC's `Lost N samples`): the perf buffer
    /// overflowed and N events were dropped.
    Lost(u64),
    /// An empty (or all-blank) line.
    Blank,
}

/// Why a line is not tcptracer output.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LineError {
    /// Fewer columns than any tcptracer format has.
    TooFewColumns {
        /// Columns found.
        found: usize,
    },
    /// The TIME column is not a number.
    BadTime(String),
    /// The TYPE column is not a known kind.
    BadKind(String),
    /// The PID column is not a number.
    BadPid(String),
    /// The IP column is not 4 or 6.
    BadFamily(String),
    /// An address column is not an address of the line's family.
    BadAddress {
        /// `SADDR` or `DADDR`.
        column: &'static str,
        /// What was there.
        text: String,
    },
    /// A port column is not a port number.
    BadPort {
        /// `SPORT` or `DPORT`.
        column: &'static str,
        /// What was there.
        text: String,
    },
    /// The NETNS column is not a number.
    BadNetns(String),
    /// A line starting like a header that is not one.
    BadHeader,
    /// A line longer than any tcptracer line.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The last line has no newline and is not a complete non-event line: the log was cut.
    Truncated,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::TooFewColumns { found } => write!(
                f,
                "only {found} columns, expected at least TYPE PID IP SADDR DADDR SPORT DPORT"
            ),
            LineError::BadTime(t) => write!(f, "TIME {t:?} is not a number of seconds or nanoseconds"),
            LineError::BadKind(t) => write!(
                f,
                "TYPE {t:?} is not connect, accept, close, failed_connect, unknown or C, A, X, U"
            ),
            LineError::BadPid(t) => write!(f, "PID {t:?} is not a number"),
            LineError::BadFamily(t) => write!(f, "IP {t:?} is not 4 or 6"),
            LineError::BadAddress { column, text } => {
                write!(f, "{column} {text:?} is not an address of the line's IP family")
            }
            LineError::BadPort { column, text } => write!(f, "{column} {text:?} is not a port number"),
            LineError::BadNetns(t) => write!(f, "NETNS {t:?} is not a namespace inode number"),
            LineError::BadHeader => f.write_str("looks like a column header but is not one tcptracer prints"),
            LineError::TooLong { len } => write!(f, "line of {len} bytes is far longer than any tcptracer line"),
            LineError::Truncated => f.write_str(
                "the log ends inside this line (no newline after it): it looks truncated, as when tcptracer \
                 is stopped with Ctrl-C or the file is copied while still being written; the line is not counted",
            ),
        }
    }
}

impl std::error::Error for LineError {}

// ----- parsing ---------------------------------------------------------------------

/// A parsed event borrowing its COMM from the line.
#[derive(Debug, Clone, Copy)]
struct RawEvent<'a> {
    time_ns: Option<u64>,
    kind: EventKind,
    /// What the kind says ([`EventKind::direction`]): a log's close lines carry none. Keys
    /// read it for DPORT, so that keys rebuilt without the kind still know.
    direction: Direction,
    pid: u32,
    comm: &'a [u8],
    family: Family,
    saddr: IpAddr,
    daddr: IpAddr,
    sport: u16,
    dport: u16,
    netns: Option<u64>,
}

impl RawEvent<'_> {
    /// An event with placeholder values, for rebuilding a key's columns one by one
    /// (`encode_key` reads only the grouping's fields).
    fn placeholder() -> Self {
        RawEvent {
            time_ns: None,
            kind: EventKind::Unknown,
            direction: Direction::Unknown,
            pid: 0,
            comm: &[],
            family: Family::Ipv4,
            saddr: std::net::Ipv4Addr::UNSPECIFIED.into(),
            daddr: std::net::Ipv4Addr::UNSPECIFIED.into(),
            sport: 0,
            dport: 0,
            netns: None,
        }
    }
}

impl RawEvent<'_> {
    fn to_event(self) -> TcpEvent {
        let (time_ns, clock) = match self.time_ns {
            Some(t) if t >= UNIX_CLOCK_MIN_NS => (Some(t), Clock::Unix),
            t => (t, Clock::Relative),
        };
        TcpEvent {
            time_ns,
            clock,
            kind: self.kind,
            direction: self.direction,
            pid: self.pid,
            comm: String::from_utf8_lossy(self.comm).into_owned(),
            family: self.family,
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            netns: self.netns,
            cgroup_id: None,
            prev_state: None,
            duration_ns: None,
            error: None,
        }
    }
}

#[derive(Debug)]
enum RawLine<'a> {
    Event(RawEvent<'a>),
    Banner,
    Header(Format),
    Lost(u64),
    Blank,
}

/// Parse one line of a tcptracer log (without its newline; a trailing `\r` is ignored).
pub fn parse_line(line: &str) -> Result<Line, LineError> {
    Ok(match parse_raw(line.as_bytes())? {
        RawLine::Event(e) => Line::Event(e.to_event()),
        RawLine::Banner => Line::Banner,
        RawLine::Header(f) => Line::Header(f),
        RawLine::Lost(n) => Line::Lost(n),
        RawLine::Blank => Line::Blank,
    })
}

/// Column separators: spaces, tabs, `\r` (and other control characters, which tcptracer
/// never prints).
#[inline]
fn is_blank(b: u8) -> bool {
    b <= b' '
}

const EIGHT_SPACES: u64 = u64::from_le_bytes(*b"        ");

/// The eight bytes at `at` as one word (0 if out of range, which is never all spaces).
#[inline]
fn word(line: &[u8], at: usize) -> u64 {
    line.get(at..at + 8)
        .and_then(|w| <[u8; 8]>::try_from(w).ok())
        .map_or(0, u64::from_le_bytes)
}

/// First non-blank at or after `pos` (or `limit`). Padding runs are skipped a word at a time.
#[inline]
fn skip_blanks(line: &[u8], mut pos: usize, limit: usize) -> usize {
    while pos + 8 <= limit && word(line, pos) == EIGHT_SPACES {
        pos += 8;
    }
    while pos < limit && is_blank(line[pos]) {
        pos += 1;
    }
    pos
}

/// One past the last non-blank before `end` (or 0).
#[inline]
fn skip_blanks_back(line: &[u8], mut end: usize) -> usize {
    while end >= 8 && word(line, end - 8) == EIGHT_SPACES {
        end -= 8;
    }
    while end > 0 && is_blank(line[end - 1]) {
        end -= 1;
    }
    end
}

#[inline]
fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s
        && is_blank(*first)
    {
        s = rest;
    }
    while let [rest @ .., last] = s
        && is_blank(*last)
    {
        s = rest;
    }
    s
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[inline]
fn parse_raw(line: &[u8]) -> Result<RawLine<'_>, LineError> {
    let line = trim(line);
    match line.first() {
        None => Ok(RawLine::Blank),
        Some(b'T') => parse_banner_or_header(line),
        Some(b'P' | b'L') => parse_lost(line).map(RawLine::Lost).ok_or_else(|| {
            // Not a lost-samples line: maybe an event whose kind is garbage.
            parse_event(line)
                .err()
                .unwrap_or(LineError::BadKind(text(first_token(line))))
        }),
        Some(_) => parse_event(line).map(RawLine::Event),
    }
}

fn first_token(line: &[u8]) -> &[u8] {
    let end = line.iter().position(|&b| is_blank(b)).unwrap_or(line.len());
    &line[..end]
}

fn parse_banner_or_header(line: &[u8]) -> Result<RawLine<'_>, LineError> {
    if line == BANNER.as_bytes() {
        return Ok(RawLine::Banner);
    }
    let mut toks = line.split(|&b| is_blank(b)).filter(|t| !t.is_empty()).peekable();
    let time = match toks.peek() {
        Some(&b"TIME(s)") => Some(TimeUnit::Seconds),
        Some(&b"TIME(ns)") => Some(TimeUnit::Nanoseconds),
        _ => None,
    };
    if time.is_some() {
        toks.next();
    }
    let verbose = match toks.next() {
        Some(b"TYPE") => true,
        Some(b"T") => false,
        _ => return Err(LineError::BadHeader),
    };
    for want in [&b"PID"[..], b"COMM", b"IP", b"SADDR", b"DADDR", b"SPORT", b"DPORT"] {
        if toks.next() != Some(want) {
            return Err(LineError::BadHeader);
        }
    }
    let netns = match toks.next() {
        None => false,
        Some(b"NETNS") if toks.next().is_none() => true,
        _ => return Err(LineError::BadHeader),
    };
    Ok(RawLine::Header(Format { time, verbose, netns }))
}

fn parse_lost(line: &[u8]) -> Option<u64> {
    let rest = line
        .strip_prefix(b"Possibly lost ")
        .or_else(|| line.strip_prefix(b"Lost "))?;
    let rest = rest.strip_suffix(b" samples")?;
    parse_u64(trim(rest))
}

#[inline]
fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in b {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d))?;
    }
    Some(n)
}

#[inline]
fn parse_kind(b: &[u8]) -> Option<EventKind> {
    Some(match b {
        b"connect" | b"C" => EventKind::Connect,
        b"accept" | b"A" => EventKind::Accept,
        b"close" | b"X" => EventKind::Close,
        b"failed_connect" | b"F" => EventKind::FailedConnect,
        b"unknown" | b"U" => EventKind::Unknown,
        _ => return None,
    })
}

/// TIME: integer nanoseconds (`-t -v`), seconds with decimals (`-t`), or `-` (no time).
#[inline]
fn parse_time(b: &[u8]) -> Option<Option<u64>> {
    if b == b"-" {
        return Some(None);
    }
    match memchr::memchr(b'.', b) {
        None => parse_u64(b).map(Some),
        Some(dot) => {
            let secs = parse_u64(&b[..dot])?;
            let frac = &b[dot + 1..];
            if frac.is_empty() {
                return None;
            }
            let mut ns: u64 = 0;
            let mut scale: u64 = 1_000_000_000;
            for &c in frac {
                let d = c.wrapping_sub(b'0');
                if d > 9 {
                    return None;
                }
                scale /= 10;
                ns += u64::from(d) * scale;
            }
            Some(Some(secs.checked_mul(1_000_000_000)?.checked_add(ns)?))
        }
    }
}

#[inline]
fn parse_ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut rest = b;
    for (i, o) in octets.iter_mut().enumerate() {
        // Up to three digits, no leading zero (as inet_ntop prints and std parses).
        let mut val: u32 = 0;
        let mut digits = 0;
        while let Some((&c, tail)) = rest.split_first() {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            if digits == 3 || (digits == 1 && val == 0) {
                return None;
            }
            val = val * 10 + u32::from(d);
            digits += 1;
            rest = tail;
        }
        if digits == 0 || val > 255 {
            return None;
        }
        *o = val as u8;
        if i < 3 {
            rest = rest.strip_prefix(b".")?;
        }
    }
    rest.is_empty().then(|| Ipv4Addr::from(octets))
}

#[inline]
fn parse_addr(b: &[u8], family: Family, column: &'static str) -> Result<IpAddr, LineError> {
    let bad = || LineError::BadAddress { column, text: text(b) };
    match family {
        Family::Ipv4 => parse_ipv4(b).map(IpAddr::V4).ok_or_else(bad),
        Family::Ipv6 => {
            let inner = b.strip_prefix(b"[").and_then(|s| s.strip_suffix(b"]")).unwrap_or(b);
            std::str::from_utf8(inner)
                .ok()
                .and_then(|s| s.parse::<Ipv6Addr>().ok())
                .map(IpAddr::V6)
                .ok_or_else(bad)
        }
    }
}

#[inline]
fn is_address_token(b: &[u8]) -> bool {
    b.first() == Some(&b'[') || b.iter().any(|&c| c == b'.' || c == b':')
}

/// Up to `N` whitespace-separated tokens taken from the end of `line`, as (start, end)
/// offsets, last token first.
#[inline]
fn tail_tokens<const N: usize>(line: &[u8]) -> ([(usize, usize); N], usize) {
    let mut out = [(0, 0); N];
    let mut n = 0;
    let mut end = line.len();
    while n < N {
        end = skip_blanks_back(line, end);
        if end == 0 {
            break;
        }
        let mut start = end;
        while start > 0 && !is_blank(line[start - 1]) {
            start -= 1;
        }
        out[n] = (start, end);
        n += 1;
        end = start;
    }
    (out, n)
}

/// The next token at or after `pos` and before `limit`, as (start, end).
#[inline]
fn next_token(line: &[u8], pos: usize, limit: usize) -> Option<(usize, usize)> {
    let mut pos = skip_blanks(line, pos, limit);
    if pos >= limit {
        return None;
    }
    let start = pos;
    while pos < limit && !is_blank(line[pos]) {
        pos += 1;
    }
    Some((start, pos))
}

#[inline]
fn parse_event(line: &[u8]) -> Result<RawEvent<'_>, LineError> {
    // The tail: IP SADDR DADDR SPORT DPORT [NETNS], from the right.
    let (tail, found) = tail_tokens::<6>(line);
    let tok = |i: usize| &line[tail[i].0..tail[i].1];
    // Third from the right is DADDR (an address) without NETNS, SPORT (a number) with it.
    let with_netns = found == 6 && !is_address_token(tok(2));
    let base = usize::from(with_netns);
    let ip_start = if found > base + 4 { tail[base + 4].0 } else { 0 };
    // The head: [TIME] TYPE PID, from the left; COMM is what lies between PID and IP.
    let mut head = [(0usize, 0usize); 3];
    let mut heads = 0;
    let mut p = 0;
    while heads < 3
        && let Some((a, b)) = next_token(line, p, ip_start)
    {
        head[heads] = (a, b);
        heads += 1;
        p = b;
    }
    if found < base + 5 || heads < 2 {
        let mut n = found;
        let mut p = 0;
        while let Some((_, e)) = next_token(line, p, line.len().min(if found > 0 { tail[found - 1].0 } else { 0 })) {
            n += 1;
            p = e;
        }
        return Err(LineError::TooFewColumns { found: n });
    }
    let first = &line[head[0].0..head[0].1];
    let (time_ns, kind, pid_tok) = if let Some(k) = parse_kind(first) {
        (None, k, 1)
    } else if first.first().is_some_and(|c| c.is_ascii_digit() || *c == b'-') {
        // TIME, possibly run together with TYPE: `%-14d` / `%-9.3f` leave no space once
        // the time fills the column (after about 2.8 hours with -t -v).
        let split = first
            .iter()
            .position(|c| c.is_ascii_alphabetic())
            .unwrap_or(first.len());
        let t = parse_time(&first[..split]).ok_or_else(|| LineError::BadTime(text(&first[..split])))?;
        if split < first.len() {
            let k = parse_kind(&first[split..]).ok_or_else(|| LineError::BadKind(text(&first[split..])))?;
            (t, k, 1)
        } else {
            let kt = &line[head[1].0..head[1].1];
            let k = parse_kind(kt).ok_or_else(|| LineError::BadKind(text(kt)))?;
            (t, k, 2)
        }
    } else {
        return Err(LineError::BadKind(text(first)));
    };
    if pid_tok >= heads {
        return Err(LineError::TooFewColumns { found: found + heads });
    }
    let (p0, p1) = head[pid_tok];
    let pid_t = &line[p0..p1];
    let pid = parse_u64(pid_t)
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| LineError::BadPid(text(pid_t)))?;
    let comm = trim(&line[p1..ip_start]);

    let ip_t = tok(base + 4);
    let family = match ip_t {
        b"4" => Family::Ipv4,
        b"6" => Family::Ipv6,
        _ => return Err(LineError::BadFamily(text(ip_t))),
    };
    let saddr = parse_addr(tok(base + 3), family, "SADDR")?;
    let daddr = parse_addr(tok(base + 2), family, "DADDR")?;
    let port = |t: &[u8], column| {
        parse_u64(t)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| LineError::BadPort { column, text: text(t) })
    };
    let sport = port(tok(base + 1), "SPORT")?;
    let dport = port(tok(base), "DPORT")?;
    let netns = if with_netns {
        let t = tok(0);
        if t == b"-" {
            None
        } else {
            Some(parse_u64(t).ok_or_else(|| LineError::BadNetns(text(t)))?)
        }
    } else {
        None
    };
    Ok(RawEvent {
        time_ns,
        kind,
        direction: kind.direction(),
        pid,
        comm,
        family,
        saddr,
        daddr,
        sport,
        dport,
        netns,
    })
}

// ----- formatting ------------------------------------------------------------------

/// How wide [`format_header`] and [`format_event`] make the TYPE column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TypeColumn {
    /// tcptracer's 12 characters: lines byte-identical to tcptracer's for the kinds it
    /// prints. A `failed_connect` (14 characters) overflows it and pushes the rest of its
    /// line two columns right, out of line with the header.
    #[default]
    Tcptracer,
    /// As wide as the longest kind, `failed_connect` (14 characters): every line aligns
    /// under the header, two blanks wider than tcptracer's. For text that may hold failed
    /// connects. Whitespace-separated fields (`awk '{print $6,$10}'`) are the same.
    Wide,
}

impl TypeColumn {
    /// The column's width in characters.
    pub fn width(self) -> usize {
        match self {
            TypeColumn::Tcptracer => 12,
            TypeColumn::Wide => EventKind::FailedConnect.as_str().len(),
        }
    }
}

/// The column header [`format_event`] lines go under (tcptracer `-v` style, trailing
/// blanks trimmed), with a TYPE column as wide as `types` says.
pub fn format_header(with_time: bool, with_netns: bool, types: TypeColumn) -> String {
    let mut s = String::new();
    if with_time {
        s.push_str("TIME(ns)      ");
    }
    let _ = write!(s, "{:<w$} ", "TYPE", w = types.width());
    s.push_str("PID    COMM             IP SADDR            DADDR            SPORT  DPORT  ");
    if with_netns {
        s.push_str("NETNS");
    }
    s.truncate(s.trim_end().len());
    s
}

/// One event as a `tcptracer -t4v`-style line (kinds as words, IPv6 in brackets, columns
/// padded as tcptracer pads them, the TYPE column as wide as `types` says, trailing blanks
/// trimmed, no newline).
///
/// Unlike tcptracer, a TIME wider than its column is still followed by a space, so the
/// columns stay apart. A missing time or netns is written `-`. Control characters in COMM
/// become `?` so the event stays on one line; blanks at the ends of COMM do not survive a
/// round trip through [`parse_line`].
pub fn format_event(ev: &TcpEvent, with_time: bool, with_netns: bool, types: TypeColumn) -> String {
    let mut s = String::with_capacity(128);
    if with_time {
        match ev.time_ns {
            Some(t) => {
                let _ = write!(s, "{t:<13} ");
            }
            None => s.push_str("-             "),
        }
    }
    let comm: String = ev.comm.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    let addr = |a: &IpAddr| match a {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let _ = write!(
        s,
        "{:<w$} {:<6} {:<16} {:<2} {:<16} {:<16} {:<6} {:<6}",
        ev.kind.as_str(),
        ev.pid,
        comm,
        ev.family.number(),
        addr(&ev.saddr),
        addr(&ev.daddr),
        ev.sport,
        ev.dport,
        w = types.width()
    );
    if with_netns {
        match ev.netns {
            Some(n) => {
                let _ = write!(s, " {n:<8}");
            }
            None => s.push_str(" -"),
        }
    }
    s.truncate(s.trim_end().len());
    s
}

// ----- fast aggregation --------------------------------------------------------------

type FastMap = HashMap<Box<[u8]>, Counts, foldhash::fast::FixedState>;

/// One grouping's tables, keyed by byte encodings of the key so that a lookup borrows a
/// reused buffer instead of allocating per line: `table` by the compact encoding of parsed
/// values ([`encode_key`]), `raw` by the key columns' bytes as the fast path found them
/// ([`fast::encode_raw_key`]), parsed once per distinct key when chunks are put together.
#[derive(Debug)]
struct FastGroup {
    fields: Vec<Field>,
    table: KeyTable,
    raw: FastMap,
}

impl FastGroup {
    /// Move the raw table into `table`, parsing each distinct raw key once.
    fn fold_raw(&mut self) {
        let mut buf = Vec::with_capacity(64);
        for (k, c) in std::mem::take(&mut self.raw) {
            // Raw keys come only from lines the fast path checked, so they always parse.
            if fast::raw_to_key(&k, &self.fields, &mut buf).is_some() {
                self.table.add(&buf, &c);
            }
        }
    }
}

/// Add one event of `kind` to `c` (what `c.add(&Counts::of_kind(kind))` does, cheaper).
#[inline(always)]
fn bump(c: &mut Counts, kind: EventKind) {
    c.events = c.events.saturating_add(1);
    let f = match kind {
        EventKind::Connect => &mut c.connects,
        EventKind::Accept => &mut c.accepts,
        EventKind::Close => &mut c.closes,
        EventKind::FailedConnect => &mut c.failed_connects,
        EventKind::Unknown => &mut c.unknown,
    };
    *f = f.saturating_add(1);
}

fn kind_of_code(c: u8) -> EventKind {
    match c {
        0 => EventKind::Connect,
        1 => EventKind::Accept,
        2 => EventKind::Close,
        3 => EventKind::FailedConnect,
        _ => EventKind::Unknown,
    }
}

fn kind_code(k: EventKind) -> u8 {
    match k {
        EventKind::Connect => 0,
        EventKind::Accept => 1,
        EventKind::Close => 2,
        EventKind::FailedConnect => 3,
        EventKind::Unknown => 4,
    }
}

/// Write the key of `ev` for the grouping `fields` into `buf`, encoded as the values
/// [`Record::value`](crate::aggregate::Record) gives for the event would be (see the
/// `keytable` module).
#[inline]
fn encode_key(ev: &RawEvent<'_>, fields: &[Field], buf: &mut Vec<u8>) {
    buf.clear();
    for f in fields {
        match f {
            Field::Kind => keytable::put_kind(buf, ev.kind),
            Field::Pid => keytable::put_int(buf, u64::from(ev.pid)),
            Field::Comm => keytable::put_text(buf, String::from_utf8_lossy(ev.comm).as_bytes()),
            Field::Family => keytable::put_family(buf, key_family(ev.family, &ev.daddr)),
            // Keys hold an IPv4-mapped address as its IPv4 address (see `Field::Daddr`).
            Field::Saddr => keytable::put_ip(buf, &ev.saddr.to_canonical()),
            Field::Daddr => keytable::put_ip(buf, &ev.daddr.to_canonical()),
            Field::Sport => keytable::put_int(buf, u64::from(ev.sport)),
            // An accept's DPORT is the client's port: not part of its key (see
            // `Field::Dport`).
            Field::Dport if ev.direction == Direction::Inbound => keytable::put_missing(buf),
            Field::Dport => keytable::put_int(buf, u64::from(ev.dport)),
            Field::Netns => match ev.netns {
                None => keytable::put_missing(buf),
                Some(n) => keytable::put_int(buf, n),
            },
        }
    }
}

/// Split `n` bytes off the front of `b` (the caller knows the bytes are there).
fn take<'a>(b: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, rest) = b.split_at(n);
    *b = rest;
    head
}

/// Counts for a log: `open` is what was established and not seen closing, floored at 0.
fn with_open(mut c: Counts) -> Counts {
    c.open = c.connects.saturating_add(c.accepts).saturating_sub(c.closes);
    c
}

// ----- reading -----------------------------------------------------------------------

/// A malformed line, numbered within its chunk until chunks are put together.
#[derive(Debug, Clone)]
struct BadLine {
    line: u64,
    text: String,
    reason: LineError,
}

/// What one thread learned from its part of the log.
#[derive(Debug)]
struct ChunkState {
    strict: bool,
    max_reported: usize,
    groups: Vec<FastGroup>,
    totals: Counts,
    lines: u64,
    events: u64,
    no_netns_events: u64,
    lost: u64,
    lost_lines: u64,
    first_lost_line: Option<u64>,
    /// tcptracer's banner lines.
    banners: u64,
    malformed: u64,
    bad: Vec<BadLine>,
    truncated: bool,
    formats: Vec<(u64, Format)>,
    strict_error: Option<BadLine>,
    key_buf: Vec<u8>,
    /// The integer-keyed path ([`packed`]), when every grouping fits it.
    int: Option<Box<IntPath>>,
}

/// State of the integer-keyed path: one packed-key table per grouping, counts per kind,
/// and the address cache.
#[derive(Debug)]
struct IntPath {
    layouts: Vec<packed::Layout>,
    maps: Vec<packed::IntMap>,
    need: packed::Need,
    cache: packed::AddrCache,
    kinds: packed::KindCounts,
}

impl IntPath {
    /// The path for `groupings`, if every one of them packs into an integer key.
    fn new(groupings: &[Vec<Field>]) -> Option<Box<IntPath>> {
        let layouts = groupings
            .iter()
            .map(|g| packed::Layout::new(g))
            .collect::<Option<Vec<_>>>()?;
        Some(Box::new(IntPath {
            need: packed::Layout::need(&layouts),
            maps: layouts.iter().map(|_| packed::IntMap::default()).collect(),
            layouts,
            cache: packed::AddrCache::default(),
            kinds: [0; 5],
        }))
    }
}

/// Counts of one key from its counts per kind code.
fn counts_of_kinds(k: &packed::KindCounts) -> Counts {
    Counts {
        events: k.iter().fold(0u64, |a, b| a.saturating_add(*b)),
        connects: k[0],
        accepts: k[1],
        closes: k[2],
        failed_connects: k[3],
        unknown: k[4],
        open: 0,
    }
}

impl ChunkState {
    fn new(reader: &LogReader) -> ChunkState {
        ChunkState {
            strict: reader.strict,
            max_reported: reader.max_reported_errors,
            groups: reader
                .groupings
                .iter()
                .map(|f| FastGroup {
                    fields: f.clone(),
                    table: KeyTable::default(),
                    raw: FastMap::default(),
                })
                .collect(),
            totals: Counts::default(),
            lines: 0,
            events: 0,
            no_netns_events: 0,
            lost: 0,
            lost_lines: 0,
            first_lost_line: None,
            banners: 0,
            malformed: 0,
            bad: Vec::new(),
            truncated: false,
            formats: Vec::new(),
            strict_error: None,
            key_buf: Vec::with_capacity(64),
            int: IntPath::new(&reader.groupings),
        }
    }

    /// Move what the integer-keyed path counted into the totals and into `tables` (one
    /// per grouping): straight into the tables being put together, so that a grouping with
    /// millions of keys is not held twice more.
    fn fold_int(&mut self, tables: &mut [KeyTable]) {
        let Some(mut p) = self.int.take() else {
            return;
        };
        self.totals.add(&counts_of_kinds(&p.kinds));
        let mut buf = Vec::with_capacity(64);
        for (((g, t), lay), map) in self.groups.iter().zip(tables).zip(&p.layouts).zip(&mut p.maps) {
            for (k, kc) in map.drain() {
                lay.encode(k, &g.fields, &mut buf);
                t.add(&buf, &counts_of_kinds(&kc));
            }
        }
    }

    /// Take the line at the start of `buf` if the fast path can ([`fast::scan`]): its
    /// length with the newline, or `None` (nothing counted) to leave it to [`Self::line`].
    #[inline(always)]
    fn fast_line<C: packed::Classify>(&mut self, buf: &[u8]) -> Option<usize> {
        if let Some(p) = self.int.as_deref_mut()
            && let Some(w) = buf.first_chunk::<{ packed::LOOKAHEAD }>()
            && let Some((n, l)) = packed::scan::<C>(w, p.need, &mut p.cache)
        {
            self.lines += 1;
            self.events += 1;
            p.kinds[usize::from(l.kind) % 5] += 1;
            for (lay, map) in p.layouts.iter().zip(&mut p.maps) {
                map.bump(lay.pack(&l), l.kind);
            }
            return Some(n);
        }
        let (m, len) = fast::Masks::line(buf)?;
        let ev = fast::scan(&buf[..len], &m)?;
        self.lines += 1;
        self.events += 1;
        bump(&mut self.totals, ev.kind);
        for g in &mut self.groups {
            fast::encode_raw_key(&ev, &g.fields, &mut self.key_buf);
            match g.raw.get_mut(self.key_buf.as_slice()) {
                Some(v) => bump(v, ev.kind),
                None => {
                    let mut c = Counts::default();
                    bump(&mut c, ev.kind);
                    g.raw.insert(self.key_buf.as_slice().into(), c);
                }
            }
        }
        Some(len + 1)
    }

    /// Take one line (without its newline). Returns false when reading must stop (strict
    /// mode hit a malformed line).
    #[inline]
    fn line(&mut self, line: &[u8], terminated: bool) -> bool {
        self.lines += 1;
        let parsed = if line.len() > MAX_LINE {
            Err(LineError::TooLong { len: line.len() })
        } else {
            parse_raw(line)
        };
        let parsed = match parsed {
            // tcptracer ends every line with a newline; an event without one was cut, and a
            // cut inside the last column still parses, to a wrong value.
            Ok(RawLine::Event(_)) | Err(_) if !terminated => Err(LineError::Truncated),
            p => p,
        };
        match parsed {
            Ok(RawLine::Event(ev)) => {
                self.events += 1;
                if ev.netns.is_none() {
                    self.no_netns_events += 1;
                }
                let c = Counts::of_kind(ev.kind);
                self.totals.add(&c);
                for g in &mut self.groups {
                    encode_key(&ev, &g.fields, &mut self.key_buf);
                    g.table.add(&self.key_buf, &c);
                }
                true
            }
            Ok(RawLine::Lost(n)) => {
                self.lost = self.lost.saturating_add(n);
                self.lost_lines += 1;
                self.first_lost_line.get_or_insert(self.lines);
                true
            }
            Ok(RawLine::Header(f)) => {
                if self.formats.len() < 8 && self.formats.last().is_none_or(|(_, last)| *last != f) {
                    self.formats.push((self.lines, f));
                }
                true
            }
            Ok(RawLine::Banner) => {
                self.banners += 1;
                true
            }
            Ok(RawLine::Blank) => true,
            Err(reason) => {
                if reason == LineError::Truncated {
                    self.truncated = true;
                }
                self.malformed += 1;
                let quoted = &line[..line.len().min(QUOTE_MAX)];
                let bad = BadLine {
                    line: self.lines,
                    text: text(quoted).trim_end_matches('\r').to_string(),
                    reason,
                };
                if self.strict {
                    self.strict_error = Some(bad);
                    return false;
                }
                if self.bad.len() < self.max_reported || bad.reason == LineError::Truncated {
                    self.bad.push(bad);
                }
                true
            }
        }
    }
}

/// Feed the lines of `input` to `state`. With `skip_first`, bytes up to the first newline
/// belong to the previous chunk. With `limit`, stop at the first line starting at or past
/// that many bytes into `input`.
fn drive<R: Read>(input: R, state: &mut ChunkState, skip_first: bool, limit: Option<u64>) -> io::Result<()> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("bmi1")
            && std::arch::is_x86_feature_detected!("lzcnt")
            && std::arch::is_x86_feature_detected!("popcnt")
        {
            // SAFETY: the CPU has every feature `drive_avx2` is compiled for.
            return unsafe { drive_avx2(input, state, skip_first, limit) };
        }
        drive_with::<packed::Sse2, R>(input, state, skip_first, limit)
    }
    #[cfg(not(target_arch = "x86_64"))]
    drive_with::<packed::Portable, R>(input, state, skip_first, limit)
}

/// [`drive_with`] compiled for CPUs with AVX2 (and the bit-counting instructions).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,bmi1,lzcnt,popcnt")]
fn drive_avx2<R: Read>(input: R, state: &mut ChunkState, skip_first: bool, limit: Option<u64>) -> io::Result<()> {
    drive_with::<packed::Avx2, R>(input, state, skip_first, limit)
}

/// [`drive`] with the byte classifier `C` for the integer-keyed path.
#[inline(always)]
fn drive_with<C: packed::Classify, R: Read>(
    mut input: R,
    state: &mut ChunkState,
    skip_first: bool,
    limit: Option<u64>,
) -> io::Result<()> {
    let mut buf = vec![0u8; BUF_SIZE];
    let mut filled = 0; // bytes in buf
    let mut pos = 0; // start of the unprocessed part of buf
    let mut consumed: u64 = 0; // bytes of input before buf[0]
    let mut skipping = skip_first; // dropping bytes up to the next newline
    let mut overlong: Option<(usize, Vec<u8>)> = None; // a line too long to buffer: (length, its start)
    loop {
        let n = match input.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let eof = n == 0;
        let scan_from = filled;
        filled += n;
        let mut search = scan_from.max(pos);
        loop {
            if !skipping && overlong.is_none() {
                // Lines starting before `lim` (relative to buf) are this chunk's.
                let lim = limit.map_or(usize::MAX, |l| {
                    l.saturating_sub(consumed).min(usize::MAX as u64) as usize
                });
                while pos < lim
                    && let Some(n) = state.fast_line::<C>(&buf[pos..filled])
                {
                    pos += n;
                }
                search = search.max(pos);
            }
            let Some(i) = memchr::memchr(b'\n', &buf[search..filled]) else {
                break;
            };
            let nl = search + i;
            let start_abs = consumed + pos as u64;
            if skipping {
                skipping = false;
            } else if let Some((len, head)) = overlong.take() {
                let len = len + (nl - pos);
                state.lines += 1;
                state.malformed += 1;
                let bad = BadLine {
                    line: state.lines,
                    text: text(&head),
                    reason: LineError::TooLong { len },
                };
                if state.strict {
                    state.strict_error = Some(bad);
                    return Ok(());
                }
                if state.bad.len() < state.max_reported {
                    state.bad.push(bad);
                }
            } else {
                if limit.is_some_and(|l| start_abs >= l) {
                    return Ok(());
                }
                if !state.line(&buf[pos..nl], true) {
                    return Ok(());
                }
            }
            pos = nl + 1;
            search = pos;
        }
        if eof {
            let start_abs = consumed + pos as u64;
            if pos < filled && !skipping && overlong.is_none() && limit.is_none_or(|l| start_abs < l) {
                state.line(&buf[pos..filled], false);
            } else if let Some((len, head)) = overlong {
                state.lines += 1;
                state.malformed += 1;
                state.truncated = true;
                let bad = BadLine {
                    line: state.lines,
                    text: text(&head),
                    reason: LineError::TooLong {
                        len: len + (filled - pos),
                    },
                };
                if state.strict {
                    state.strict_error = Some(bad);
                } else {
                    state.bad.push(bad);
                }
            }
            return Ok(());
        }
        if pos == 0 && filled == buf.len() {
            // A whole buffer without a newline: not a tcptracer line. Remember its start
            // for the report and drop the rest as it streams past.
            if !skipping {
                let start_abs = consumed;
                if limit.is_some_and(|l| start_abs >= l) && overlong.is_none() {
                    return Ok(());
                }
                match &mut overlong {
                    Some((len, _)) => *len += filled,
                    None => overlong = Some((filled, buf[..QUOTE_MAX].to_vec())),
                }
            }
            consumed += filled as u64;
            filled = 0;
        } else {
            buf.copy_within(pos..filled, 0);
            consumed += pos as u64;
            filled -= pos;
        }
        pos = 0;
    }
}

/// Reads tcptracer logs into a [`TraceSummary`]. A builder: set options, then call
/// [`LogReader::read_path`] or [`LogReader::read`].
///
/// ```
/// use snat_core::aggregate::{Field, Metric};
/// use snat_core::tcptracer::LogReader;
///
/// let log = "Tracing TCP established connections. Ctrl-C to end.\n\
///            TIME(ns)      TYPE         PID    COMM             IP SADDR            DADDR            SPORT  DPORT  NETNS\n\
///            0             connect      18627  curl             4  10.244.1.7       203.0.113.5      53746  80     4026532785\n";
/// let summary = LogReader::new().read(log.as_bytes(), "example").unwrap();
/// let top = summary.rank(&[Field::Saddr, Field::Netns], Metric::Events).unwrap();
/// assert_eq!(top.to_text(), "Count  SADDR       NETNS\n1      10.244.1.7  4026532785\n");
/// ```
#[derive(Debug, Clone)]
pub struct LogReader {
    strict: bool,
    groupings: Vec<Vec<Field>>,
    max_reported_errors: usize,
    threads: usize,
}

impl Default for LogReader {
    fn default() -> Self {
        LogReader::new()
    }
}

impl LogReader {
    /// A reader with the defaults: lenient, [`TraceSummary::default_groupings`], the first
    /// 5 malformed lines quoted in notes, threads chosen from the CPUs available.
    pub fn new() -> Self {
        LogReader {
            strict: false,
            groupings: TraceSummary::default_groupings(),
            max_reported_errors: 5,
            threads: 0,
        }
    }

    /// Fail on the first malformed line ([`Error::TcptracerLine`]) instead of counting it.
    pub fn strict(mut self, yes: bool) -> Self {
        self.strict = yes;
        self
    }

    /// The groupings to count (each a list of fields, in key order).
    pub fn groupings(mut self, g: Vec<Vec<Field>>) -> Self {
        self.groupings = g;
        self
    }

    /// How many malformed lines to quote in the summary's notes (all are counted).
    pub fn max_reported_errors(mut self, n: usize) -> Self {
        self.max_reported_errors = n;
        self
    }

    /// How many threads read a regular file: 0 (the default) means one per CPU (at most 8)
    /// for files of 8 MiB or more and one for smaller files; 1 means sequential. Stdin,
    /// pipes and [`LogReader::read`] are always read by one thread.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// Read the log at `path`, or stdin when `path` is `-`. The summary's `source` is the
    /// path as given.
    pub fn read_path(&self, path: impl AsRef<Path>) -> Result<TraceSummary, Error> {
        let path = path.as_ref();
        let source = path.display().to_string();
        if path == Path::new("-") {
            let stdin = io::stdin();
            return self.read(stdin.lock(), "-");
        }
        let open_err = |e| Error::Io {
            what: "cannot open tcptracer log",
            path: path.to_path_buf(),
            source: e,
        };
        let file = File::open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let threads = match self.threads {
            0 if meta.len() < PARALLEL_MIN_BYTES => 1,
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()).min(8),
            n => (n as u64).min(meta.len()) as usize,
        };
        if !meta.is_file() || threads < 2 {
            return self.read(io::BufReader::with_capacity(0, file), &source);
        }
        self.read_file_parallel(path, meta.len(), threads, &source)
    }

    /// Read a log from any buffered input, sequentially. `source` names it in the summary
    /// and in errors.
    pub fn read<R: BufRead>(&self, input: R, source: &str) -> Result<TraceSummary, Error> {
        let mut state = ChunkState::new(self);
        drive(input, &mut state, false, None).map_err(|e| read_error(source, e))?;
        self.finish(vec![state], source)
    }

    fn read_file_parallel(&self, path: &Path, len: u64, threads: usize, source: &str) -> Result<TraceSummary, Error> {
        let step = len / threads as u64;
        let bounds: Vec<(u64, u64)> = (0..threads as u64)
            .map(|i| (i * step, if i + 1 == threads as u64 { len } else { (i + 1) * step }))
            .collect();
        let results: Vec<io::Result<ChunkState>> = std::thread::scope(|s| {
            let handles: Vec<_> = bounds
                .iter()
                .map(|&(start, end)| {
                    s.spawn(move || -> io::Result<ChunkState> {
                        let mut state = ChunkState::new(self);
                        let mut f = File::open(path)?;
                        // Chunk i > 0 starts one byte early: if that byte is a newline, the
                        // chunk's first line starts exactly at `start`.
                        let from = start.saturating_sub(1);
                        f.seek(SeekFrom::Start(from))?;
                        drive(f, &mut state, start > 0, Some(end - from))?;
                        Ok(state)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("reader thread panicked")))
                })
                .collect()
        });
        let mut states = Vec::with_capacity(results.len());
        for r in results {
            states.push(r.map_err(|e| read_error(source, e))?);
        }
        self.finish(states, source)
    }

    /// Put the chunks' results together, in file order.
    fn finish(&self, states: Vec<ChunkState>, source: &str) -> Result<TraceSummary, Error> {
        let mut offset = 0u64;
        let mut bad: Vec<BadLine> = Vec::new();
        let mut summary = TraceSummary::new(source, self.groupings.clone());
        let (mut events, mut no_netns, mut lost_lines, mut truncated) = (0u64, 0u64, 0u64, false);
        let mut banners = 0u64;
        let mut first_lost: Option<u64> = None;
        let mut formats: Vec<(u64, Format)> = Vec::new();
        let mut tables: Vec<KeyTable> = self.groupings.iter().map(|_| KeyTable::default()).collect();
        for mut st in states {
            st.fold_int(&mut tables);
            if let Some(e) = st.strict_error {
                return Err(Error::TcptracerLine {
                    log: source.to_string(),
                    line: offset + e.line,
                    text: e.text,
                    reason: e.reason,
                });
            }
            for mut b in st.bad {
                b.line += offset;
                bad.push(b);
            }
            for (l, f) in st.formats {
                if formats.last().is_none_or(|(_, last)| *last != f) {
                    formats.push((l + offset, f));
                }
            }
            if first_lost.is_none() {
                first_lost = st.first_lost_line.map(|l| l + offset);
            }
            events += st.events;
            no_netns += st.no_netns_events;
            lost_lines += st.lost_lines;
            banners += st.banners;
            truncated |= st.truncated;
            summary.lost_events = summary.lost_events.saturating_add(st.lost);
            summary.malformed_lines += st.malformed;
            summary.totals.add(&st.totals);
            for (t, mut g) in tables.iter_mut().zip(st.groups) {
                g.fold_raw();
                t.merge(&g.table);
            }
            offset += st.lines;
        }
        // Nothing to count is not the same as a quiet node: a log without a single line
        // (tcptracer never started) or without one tcptracer line (another file).
        if offset == 0 {
            return Err(Error::TcptracerNotALog {
                log: source.to_string(),
                reason: "it is empty, and tcptracer writes its banner and column header before any event: it never started (see its own error output), or wrote elsewhere".into(),
            });
        }
        if events + banners + lost_lines == 0 && formats.is_empty() && summary.malformed_lines > 0 {
            let first = bad
                .first()
                .map(|b| format!(" (line {}: {}: {:?})", b.line, b.reason, b.text))
                .unwrap_or_default();
            return Err(Error::TcptracerNotALog {
                log: source.to_string(),
                reason: format!("none of its {offset} lines is a tcptracer event, banner or column header{first}"),
            });
        }
        summary.totals = with_open(summary.totals);
        for (agg, mut t) in summary.groupings.iter_mut().zip(tables) {
            for c in t.counts_mut() {
                *c = with_open(*c);
            }
            *agg = Aggregator::from_table(agg.fields().to_vec(), t);
        }
        self.write_notes(
            &mut summary,
            NoteFacts {
                lines: offset,
                events,
                no_netns,
                lost_lines,
                first_lost,
                truncated,
                formats,
                bad,
            },
        );
        Ok(summary)
    }

    fn write_notes(&self, s: &mut TraceSummary, f: NoteFacts) {
        if f.events == 0 {
            s.notes.push(format!(
                "no events in {} lines: tcptracer saw no connection while it ran",
                f.lines
            ));
        }
        if f.formats.len() > 1 {
            let list: Vec<String> = f
                .formats
                .iter()
                .map(|(l, fm)| format!("line {l}: {}", fm.flags()))
                .collect();
            s.notes.push(format!(
                "the log has several headers with different columns ({}): several runs were concatenated",
                list.join("; ")
            ));
        }
        if s.lost_events > 0 {
            s.notes.push(format!(
                "tcptracer reported {} lost samples in {} `Possibly lost` lines (first at line {}): the perf \
                 buffer overflowed, so every count here is a lower bound",
                s.lost_events,
                f.lost_lines,
                f.first_lost.unwrap_or(0)
            ));
        }
        if f.no_netns > 0 {
            s.notes.push(format!(
                "{} of {} events have no NETNS column (tcptracer ran without -v, or with -N): their netns is `-`; \
                 run `tcptracer -t4v` to tell pods apart by network namespace",
                f.no_netns, f.events
            ));
        }
        let shown = f
            .bad
            .iter()
            .filter(|b| b.reason != LineError::Truncated)
            .take(self.max_reported_errors);
        let mut quoted = 0u64;
        for b in shown {
            quoted += 1;
            s.notes
                .push(format!("malformed line {}: {}: {:?}", b.line, b.reason, b.text));
        }
        let trunc = f.bad.iter().find(|b| b.reason == LineError::Truncated);
        let others = s.malformed_lines - quoted - u64::from(trunc.is_some());
        if others > 0 {
            s.notes.push(format!(
                "{others} more malformed lines not quoted ({} malformed in all)",
                s.malformed_lines
            ));
        }
        if let Some(b) = trunc {
            s.notes.push(format!("line {}: {}: {:?}", b.line, b.reason, b.text));
        } else if f.truncated {
            s.notes
                .push("the log looks truncated: its last line has no newline".into());
        }
    }
}

/// Facts gathered while reading that only notes need.
struct NoteFacts {
    lines: u64,
    events: u64,
    no_netns: u64,
    lost_lines: u64,
    first_lost: Option<u64>,
    truncated: bool,
    formats: Vec<(u64, Format)>,
    bad: Vec<BadLine>,
}

fn read_error(source: &str, e: io::Error) -> Error {
    Error::Io {
        what: "cannot read tcptracer log",
        path: PathBuf::from(source),
        source: e,
    }
}

/// The events of a tcptracer log, one at a time, for consumers that want events rather
/// than counts. Banner, header, blank and lost-sample lines are consumed silently (the
/// lost samples are summed in [`LogEvents::lost_events`]); a malformed line yields an
/// [`Error::TcptracerLine`] and iteration goes on; a read error yields [`Error::Io`] and
/// ends it. A final line without a newline is reported as truncated, not parsed.
#[derive(Debug)]
pub struct LogEvents<R> {
    input: R,
    source: String,
    buf: Vec<u8>,
    line: u64,
    lost: u64,
    malformed: u64,
    done: bool,
}

impl<R: BufRead> LogEvents<R> {
    /// Events from `input`; `source` names it in errors.
    pub fn new(input: R, source: impl Into<String>) -> Self {
        LogEvents {
            input,
            source: source.into(),
            buf: Vec::with_capacity(256),
            line: 0,
            lost: 0,
            malformed: 0,
            done: false,
        }
    }

    /// Samples tcptracer said it lost, so far.
    pub fn lost_events(&self) -> u64 {
        self.lost
    }

    /// Malformed lines so far.
    pub fn malformed_lines(&self) -> u64 {
        self.malformed
    }

    /// The number of the last line read (1-based).
    pub fn line_number(&self) -> u64 {
        self.line
    }

    fn bad(&mut self, text_bytes: &[u8], reason: LineError) -> Error {
        self.malformed += 1;
        Error::TcptracerLine {
            log: self.source.clone(),
            line: self.line,
            text: text(&text_bytes[..text_bytes.len().min(QUOTE_MAX)]),
            reason,
        }
    }
}

impl<R: BufRead> Iterator for LogEvents<R> {
    type Item = Result<TcpEvent, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.buf.clear();
            let limit = (MAX_LINE + 1) as u64;
            let n = match (&mut self.input).take(limit).read_until(b'\n', &mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.done = true;
                    return Some(Err(read_error(&self.source, e)));
                }
            };
            if n == 0 {
                self.done = true;
                return None;
            }
            self.line += 1;
            let terminated = self.buf.last() == Some(&b'\n');
            if !terminated && n as u64 == limit {
                // Over-long: drop the rest of it.
                let mut len = n;
                loop {
                    let chunk = match self.input.fill_buf() {
                        Ok(c) => c,
                        Err(e) => {
                            self.done = true;
                            return Some(Err(read_error(&self.source, e)));
                        }
                    };
                    if chunk.is_empty() {
                        break;
                    }
                    match memchr::memchr(b'\n', chunk) {
                        Some(i) => {
                            self.input.consume(i + 1);
                            len += i;
                            break;
                        }
                        None => {
                            let l = chunk.len();
                            self.input.consume(l);
                            len += l;
                        }
                    }
                }
                let head = std::mem::take(&mut self.buf);
                return Some(Err(self.bad(&head, LineError::TooLong { len })));
            }
            let line = if terminated { &self.buf[..n - 1] } else { &self.buf[..] };
            let parsed = match parse_raw(line) {
                Ok(RawLine::Event(_)) | Err(_) if !terminated => Err(LineError::Truncated),
                p => p.map(|l| match l {
                    RawLine::Event(e) => Some(e.to_event()),
                    RawLine::Lost(n) => {
                        self.lost = self.lost.saturating_add(n);
                        None
                    }
                    _ => None,
                }),
            };
            match parsed {
                Ok(Some(ev)) => return Some(Ok(ev)),
                Ok(None) => {}
                Err(reason) => {
                    let line = line.to_vec();
                    return Some(Err(self.bad(&line, reason)));
                }
            }
        }
        None
    }
}
