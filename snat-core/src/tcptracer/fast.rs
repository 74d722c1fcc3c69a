//! Fast path for the common line: a `-v` event with a NETNS column (`tcptracer -t4v`), the
//! shape nearly every line of a real log has. [`scan`] checks such a line completely (every
//! column the full parser checks) but only locates the columns: it returns byte slices, not
//! parsed values, so a line costs a few dozen byte comparisons and no allocation. Counts are
//! kept per raw key (the key columns' bytes, see [`encode_raw_key`]) and each DISTINCT raw
//! key is parsed once at the end ([`raw_to_key`]). Whenever `scan` is not sure the full
//! parser would read the line as an event, it returns `None` and the caller uses the full
//! parser, so results are identical either way (the tests check the two agree on every
//! generated line and on garbage).

use super::{Family, Field, RawEvent, is_blank, parse_addr, parse_kind, parse_u64, skip_blanks, skip_blanks_back};
use crate::model::EventKind;

/// The columns of a line [`scan`] accepted, as slices of the line.
#[derive(Debug, Clone, Copy)]
pub(super) struct FastLine<'a> {
    pub(super) kind: EventKind,
    pid: &'a [u8],
    comm: &'a [u8],
    family: Family,
    saddr: &'a [u8],
    daddr: &'a [u8],
    sport: &'a [u8],
    dport: &'a [u8],
    netns: &'a [u8],
}

/// Start of the run of ASCII digits ending at `end`, if it has 1 to `max` digits and a blank
/// before it.
#[inline(always)]
fn digits_back(line: &[u8], end: usize, max: usize) -> Option<usize> {
    let mut i = end;
    while i > 0 && line[i - 1].is_ascii_digit() {
        i -= 1;
    }
    let n = end - i;
    (n > 0 && n <= max && i > 0 && is_blank(line[i - 1])).then_some(i)
}

/// Start of the non-blank run ending at `end`, if a blank precedes it.
#[inline(always)]
fn token_back(line: &[u8], end: usize) -> Option<usize> {
    let mut i = end;
    while i > 0 && !is_blank(line[i - 1]) {
        i -= 1;
    }
    (i < end && i > 0).then_some(i)
}

/// End of the non-blank run starting at `start`.
#[inline(always)]
fn token_fwd(line: &[u8], start: usize, limit: usize) -> usize {
    let mut i = start;
    while i < limit && !is_blank(line[i]) {
        i += 1;
    }
    i
}

#[inline(always)]
fn all_digits(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_digit)
}

#[inline(always)]
fn port_ok(b: &[u8]) -> bool {
    // digits_back already checked 1..=5 digits.
    parse_u64(b).is_some_and(|p| p <= u64::from(u16::MAX))
}

/// Locate and check the columns of a `[TIME] TYPE PID COMM IP SADDR DADDR SPORT DPORT NETNS`
/// line (without its newline). `Some` only if the full parser would read exactly this event
/// from the line; `None` means "not sure", never "malformed".
#[inline]
pub(super) fn scan(line: &[u8]) -> Option<FastLine<'_>> {
    // Leading or trailing blanks, `-` for NETNS, letters-only formats: the full parser.
    let len = line.len();
    if len > super::MAX_LINE || !line.last()?.is_ascii_digit() || is_blank(line[0]) {
        return None;
    }
    // From the right: NETNS (at most 19 digits, so it cannot overflow), DPORT, SPORT.
    let netns_s = digits_back(line, len, 19)?;
    let dport_e = skip_blanks_back(line, netns_s);
    let dport_s = digits_back(line, dport_e, 5)?;
    let sport_e = skip_blanks_back(line, dport_s);
    let sport_s = digits_back(line, sport_e, 5)?;
    let daddr_e = skip_blanks_back(line, sport_s);
    let daddr_s = token_back(line, daddr_e)?;
    let saddr_e = skip_blanks_back(line, daddr_s);
    let saddr_s = token_back(line, saddr_e)?;
    let ip_e = skip_blanks_back(line, saddr_s);
    let ip_s = ip_e.checked_sub(1)?;
    if ip_s == 0 || !is_blank(line[ip_s - 1]) {
        return None;
    }
    let family = match line[ip_s] {
        b'4' => Family::Ipv4,
        b'6' => Family::Ipv6,
        _ => return None,
    };
    // From the left: [TIME] TYPE PID, all before IP.
    let first_e = token_fwd(line, 0, ip_s);
    let first = &line[..first_e];
    let kind_s = if first[0].is_ascii_digit() {
        // TIME in integer nanoseconds; at most 19 digits cannot overflow. (Seconds with
        // decimals, and a TIME run together with TYPE, take the full parser.)
        if first.len() > 19 || !all_digits(first) {
            return None;
        }
        skip_blanks(line, first_e, ip_s)
    } else {
        0
    };
    let kind_e = token_fwd(line, kind_s, ip_s);
    let kind = parse_kind(&line[kind_s..kind_e])?;
    let pid_s = skip_blanks(line, kind_e, ip_s);
    let pid_e = token_fwd(line, pid_s, ip_s);
    // The PID must end before IP (pid_e == ip_s would mean PID is glued to nothing: no blank).
    if pid_e >= ip_s || pid_e == pid_s || pid_e - pid_s > 10 {
        return None;
    }
    let pid = &line[pid_s..pid_e];
    if !all_digits(pid) || (pid.len() == 10 && parse_u64(pid).is_none_or(|p| p > u64::from(u32::MAX))) {
        return None;
    }
    let saddr = &line[saddr_s..saddr_e];
    let daddr = &line[daddr_s..daddr_e];
    let sport = &line[sport_s..sport_e];
    let dport = &line[dport_s..dport_e];
    if !port_ok(sport) || !port_ok(dport) {
        return None;
    }
    if parse_addr(saddr, family, "SADDR").is_err() || parse_addr(daddr, family, "DADDR").is_err() {
        return None;
    }
    Some(FastLine {
        kind,
        pid,
        comm: super::trim(&line[pid_e..ip_s]),
        family,
        saddr,
        daddr,
        sport,
        dport,
        netns: &line[netns_s..],
    })
}

#[inline(always)]
fn push_slice(buf: &mut Vec<u8>, s: &[u8]) {
    // Columns are shorter than a line, and lines longer than MAX_LINE (64 KiB) never get here.
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s);
}

/// The raw key of `line` for `fields`: each column's bytes, length-prefixed, in field order
/// (the kind as its code).
#[inline]
pub(super) fn encode_raw_key(line: &FastLine<'_>, fields: &[Field], buf: &mut Vec<u8>) {
    buf.clear();
    for f in fields {
        match f {
            Field::Kind => buf.push(super::kind_code(line.kind)),
            Field::Pid => push_slice(buf, line.pid),
            Field::Comm => push_slice(buf, line.comm),
            Field::Family => buf.push(line.family.number()),
            Field::Saddr => push_slice(buf, line.saddr),
            Field::Daddr => push_slice(buf, line.daddr),
            Field::Sport => push_slice(buf, line.sport),
            Field::Dport => push_slice(buf, line.dport),
            Field::Netns => push_slice(buf, line.netns),
        }
    }
}

fn take_slice<'a>(b: &mut &'a [u8]) -> &'a [u8] {
    let len = u32::from_le_bytes(super::take(b, 4).try_into().unwrap_or_default()) as usize;
    super::take(b, len)
}

/// Turn a raw key (from lines [`scan`] accepted, so every column parses) into the compact
/// key encoding of the full path, appended to `out` (cleared first). `None` only if the raw
/// key is not one `encode_raw_key` wrote.
pub(super) fn raw_to_key(mut raw: &[u8], fields: &[Field], out: &mut Vec<u8>) -> Option<()> {
    let b = &mut raw;
    // A RawEvent holding the parsed key columns; the others keep placeholder values that
    // encode_key does not read for these fields.
    let mut ev = RawEvent {
        time_ns: None,
        kind: EventKind::Unknown,
        pid: 0,
        comm: &[],
        family: Family::Ipv4,
        saddr: std::net::Ipv4Addr::UNSPECIFIED.into(),
        daddr: std::net::Ipv4Addr::UNSPECIFIED.into(),
        sport: 0,
        dport: 0,
        netns: None,
    };
    for f in fields {
        match f {
            Field::Kind => ev.kind = super::kind_of_code(*super::take(b, 1).first()?),
            Field::Pid => ev.pid = u32::try_from(parse_u64(take_slice(b))?).ok()?,
            Field::Comm => ev.comm = take_slice(b),
            Field::Family => {
                ev.family = if super::take(b, 1).first()? == &4 {
                    Family::Ipv4
                } else {
                    Family::Ipv6
                }
            }
            Field::Saddr | Field::Daddr => {
                let t = take_slice(b);
                // The family is not always part of the key: IPv6 addresses are bracketed or
                // contain ':', IPv4 ones never do.
                let fam = if t.iter().any(|&c| c == b':' || c == b'[') {
                    Family::Ipv6
                } else {
                    Family::Ipv4
                };
                let ip = parse_addr(t, fam, "SADDR").ok()?;
                if *f == Field::Saddr {
                    ev.saddr = ip;
                } else {
                    ev.daddr = ip;
                }
            }
            Field::Sport => ev.sport = u16::try_from(parse_u64(take_slice(b))?).ok()?,
            Field::Dport => ev.dport = u16::try_from(parse_u64(take_slice(b))?).ok()?,
            Field::Netns => ev.netns = Some(parse_u64(take_slice(b))?),
        }
    }
    super::encode_key(&ev, fields, out);
    Some(())
}
