//! Fast path for the common line: a `-v` event with a NETNS column (`tcptracer -t4v`), the
//! shape nearly every line of a real log has (the lines the packed path, `super::packed`,
//! leaves: IPv6, groupings with COMM, long lines). [`Masks::line`] classifies the line 16 bytes
//! at a time (blanks, digits, dots; SSE2 on x86_64, a portable loop elsewhere) while
//! finding its newline, so the reader needs no separate newline search. [`scan`] then
//! locates the columns with bit operations on those masks and checks them completely
//! (every column the full parser checks: numbers and IPv4 addresses on the digit and dot
//! masks, IPv6 ones with the standard parser) but does not parse them: it returns byte slices, and nothing is allocated. Counts
//! are kept per raw key (the key columns' bytes, see [`encode_raw_key`]) and each DISTINCT
//! raw key is parsed once at the end ([`raw_to_key`]). Whenever `scan` is not sure the full
//! parser would read the line as this event (TIME(s) lines, a TIME run into TYPE, `-` columns, lines of
//! `FAST_MAX` bytes or more, anything odd), it returns `None` and the caller uses the full
//! parser, so results are identical either way: the tests check the two agree on
//! near-miss lines and on garbage, and that real `-t4v` lines do take the fast path.

use super::{Family, Field, RawEvent, is_blank, parse_addr, parse_kind, parse_u64};
use crate::aggregate::key_family;
use crate::model::EventKind;

/// The columns of a line [`scan`] accepted, as slices of the line.
#[derive(Debug, Clone, Copy)]
pub(super) struct FastLine<'a> {
    pub(super) kind: EventKind,
    pid: &'a [u8],
    comm: &'a [u8],
    /// The family a ranking keys the line under: its `IP` column, but IPv4 for an
    /// IPv4-mapped DADDR.
    key_family: Family,
    saddr: &'a [u8],
    daddr: &'a [u8],
    sport: &'a [u8],
    dport: &'a [u8],
    netns: &'a [u8],
}

/// Lines shorter than this take the fast path; tcptracer lines are about 120 bytes.
pub(super) const FAST_MAX: usize = 256;

const WORDS: usize = FAST_MAX / 64;

/// Byte classes of 16 bytes, one bit per byte: (blank `<= b' '`, ASCII digit, `.`, `\n`).
type Classes = (u64, u64, u64, u64);

/// [`classify16`] for any target, a byte at a time (also the reference the tests compare
/// the SIMD version with).
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline(always)]
pub(super) fn classify16_portable(chunk: &[u8; 16]) -> Classes {
    let (mut blank, mut digit, mut dot, mut nl) = (0u64, 0u64, 0u64, 0u64);
    for (i, &b) in chunk.iter().enumerate() {
        blank |= u64::from(is_blank(b)) << i;
        digit |= u64::from(b.is_ascii_digit()) << i;
        dot |= u64::from(b == b'.') << i;
        nl |= u64::from(b == b'\n') << i;
    }
    (blank, digit, dot, nl)
}

/// The byte classes of 16 bytes with SSE2 (part of every x86_64 CPU).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn classify16(chunk: &[u8; 16]) -> Classes {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_set1_epi8, _mm_sub_epi8,
    };
    // SAFETY: SSE2 is in the x86_64 baseline (always enabled on this target), and the
    // unaligned load reads exactly the 16 bytes of `chunk`.
    unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast());
        // Unsigned `a <= b` as `min(a, b) == a`.
        let blank = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x20)), v);
        let d = _mm_sub_epi8(v, _mm_set1_epi8(b'0' as i8));
        let digit = _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(9)), d);
        let dot = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'.' as i8));
        let nl = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\n' as i8));
        (
            u64::from(_mm_movemask_epi8(blank) as u16),
            u64::from(_mm_movemask_epi8(digit) as u16),
            u64::from(_mm_movemask_epi8(dot) as u16),
            u64::from(_mm_movemask_epi8(nl) as u16),
        )
    }
}

/// The byte classes of 16 bytes (portable version on this target).
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub(super) fn classify16(chunk: &[u8; 16]) -> Classes {
    classify16_portable(chunk)
}

/// Which bytes of a line are blanks, digits and dots, as bit sets (bit `j % 64` of word
/// `j / 64` for byte `j`; past the end of the line counts as blank). Finding and checking
/// a column then costs a few bit operations instead of a loop over its bytes.
pub(super) struct Masks {
    blank: [u64; WORDS],
    // One word more than the line can fill (always 0), so that any 64-bit window starting
    // inside the line can be read from two words.
    digit: [u64; WORDS + 1],
    dot: [u64; WORDS + 1],
}

impl Masks {
    /// Classify the line at the start of `buf`, 16 bytes at a time, up to its newline:
    /// the masks and the line's length (without the newline). `None` if there is no
    /// newline in the first `FAST_MAX` bytes or `buf` ends within 16 bytes of it.
    #[inline(always)]
    pub(super) fn line(buf: &[u8]) -> Option<(Masks, usize)> {
        let mut m = Masks {
            blank: [!0; WORDS],
            digit: [0; WORDS + 1],
            dot: [0; WORDS + 1],
        };
        let (chunks, _) = buf.as_chunks::<16>();
        let n = chunks.len().min(FAST_MAX / 16);
        let mut i = 0;
        while i < n {
            let (blank, digit, dot, nl) = classify16(&chunks[i]);
            let (w, sh) = (i / 4, (i % 4) * 16);
            m.blank[w] = (m.blank[w] & !(0xffff << sh)) | (blank << sh);
            m.digit[w] |= digit << sh;
            m.dot[w] |= dot << sh;
            if nl != 0 {
                let len = i * 16 + nl.trailing_zeros() as usize;
                // Bytes from the newline on belong to the next line.
                let (w, b) = (len / 64, len % 64);
                let keep = (1u64 << b) - 1;
                m.blank[w] |= !keep;
                m.digit[w] &= keep;
                m.dot[w] &= keep;
                return Some((m, len));
            }
            i += 1;
        }
        None
    }

    /// The last position before `p` that is (`blank`) or is not (`!blank`) a blank.
    #[inline(always)]
    fn prev(&self, p: usize, blank: bool) -> Option<usize> {
        let sel = |k: usize| if blank { self.blank[k] } else { !self.blank[k] };
        let mut k = p >> 6;
        let mut w = if k < WORDS {
            sel(k) & ((1u64 << (p & 63)) - 1)
        } else {
            0
        };
        loop {
            if w != 0 {
                return Some(k * 64 + 63 - w.leading_zeros() as usize);
            }
            if k == 0 {
                return None;
            }
            k -= 1;
            w = sel(k);
        }
    }

    /// The first position at or after `p` that is (`blank`) or is not (`!blank`) a blank
    /// (`FAST_MAX` if none).
    #[inline(always)]
    fn next(&self, p: usize, blank: bool) -> usize {
        let sel = |k: usize| if blank { self.blank[k] } else { !self.blank[k] };
        let mut k = p >> 6;
        if k >= WORDS {
            return FAST_MAX;
        }
        let mut w = sel(k) & (!0u64 << (p & 63));
        loop {
            if w != 0 {
                return k * 64 + w.trailing_zeros() as usize;
            }
            k += 1;
            if k == WORDS {
                return FAST_MAX;
            }
            w = sel(k);
        }
    }

    /// The token ending at `end` (exclusive): its start, if a blank precedes it.
    #[inline(always)]
    fn token_back(&self, end: usize) -> Option<usize> {
        self.prev(end, true).map(|b| b + 1).filter(|&s| s < end)
    }

    /// The end of the last token before `p`.
    #[inline(always)]
    fn token_end_before(&self, p: usize) -> Option<usize> {
        self.prev(p, false).map(|j| j + 1)
    }
}

/// `u64::MAX` in decimal.
const U64_MAX: &[u8] = b"18446744073709551615";

/// The 64 bits of `m` from position `s` on (`s < FAST_MAX`), bit 0 for byte `s`.
#[inline(always)]
fn window(m: &[u64; WORDS + 1], s: usize) -> u64 {
    let k = s >> 6;
    let pair = (u128::from(m[k + 1]) << 64) | u128::from(m[k]);
    (pair >> (s & 63)) as u64
}

/// The low `n` bits set (`n <= 63`).
#[inline(always)]
fn low(n: usize) -> u64 {
    (1u64 << n) - 1
}

/// Bytes `s..e` are 1 to `max` (at most 20) digits and, at exactly `max` digits, at most
/// `limit` (a string of `max` digits).
#[inline(always)]
fn number_ok(line: &[u8], m: &Masks, s: usize, e: usize, max: usize, limit: &[u8]) -> bool {
    let n = e.wrapping_sub(s);
    if n == 0 || n > max {
        return false;
    }
    let full = low(n);
    window(&m.digit, s) & full == full && (n < max || &line[s..e] <= limit)
}

/// What [`super::parse_ipv4`] accepts (four decimal octets of 1 to 3 digits, no leading
/// zero, each at most 255), checked on the masks without building the address.
#[inline(always)]
fn ipv4_ok(line: &[u8], m: &Masks, s: usize, e: usize) -> bool {
    let n = e - s;
    if !(7..=15).contains(&n) {
        return false;
    }
    let full = low(n);
    let dots = window(&m.dot, s) & full;
    if dots | (window(&m.digit, s) & full) != full {
        return false;
    }
    // Exactly three dots: take them off one by one.
    let d1 = dots.trailing_zeros() as usize;
    let rest = dots & dots.wrapping_sub(1);
    let d2 = rest.trailing_zeros() as usize;
    let rest = rest & rest.wrapping_sub(1);
    let d3 = rest.trailing_zeros() as usize;
    if rest == 0 || rest & rest.wrapping_sub(1) != 0 {
        return false;
    }
    // Octets between the dots (and the ends): 1 to 3 digits, no leading zero, <= 255.
    let octet_ok = |a: usize, b: usize| {
        let len = b.wrapping_sub(a);
        (1..=3).contains(&len) && (len == 1 || line[s + a] != b'0') && (len < 3 || line[s + a..s + b] <= b"255"[..])
    };
    octet_ok(0, d1) && octet_ok(d1 + 1, d2) && octet_ok(d2 + 1, d3) && octet_ok(d3 + 1, n)
}

/// Locate and check the columns of a `[TIME] TYPE PID COMM IP SADDR DADDR SPORT DPORT NETNS`
/// line (without its newline) whose masks are `m`. `Some` only if the full parser would
/// read exactly this event from the line; `None` means "not sure", never "malformed".
#[inline(always)]
pub(super) fn scan<'a>(line: &'a [u8], m: &Masks) -> Option<FastLine<'a>> {
    // Leading or trailing blanks, `-` for NETNS, letters-only formats: the full parser.
    if !line.last()?.is_ascii_digit() || is_blank(line[0]) {
        return None;
    }
    let len = line.len();
    // From the right: NETNS, DPORT, SPORT, DADDR, SADDR, IP, each preceded by a blank.
    let netns_s = m.token_back(len)?;
    let dport_e = m.token_end_before(netns_s)?;
    let dport_s = m.token_back(dport_e)?;
    let sport_e = m.token_end_before(dport_s)?;
    let sport_s = m.token_back(sport_e)?;
    let daddr_e = m.token_end_before(sport_s)?;
    let daddr_s = m.token_back(daddr_e)?;
    let saddr_e = m.token_end_before(daddr_s)?;
    let saddr_s = m.token_back(saddr_e)?;
    let ip_e = m.token_end_before(saddr_s)?;
    let ip_s = m.token_back(ip_e)?;
    if ip_e - ip_s != 1 {
        return None;
    }
    let family = match line[ip_s] {
        b'4' => Family::Ipv4,
        b'6' => Family::Ipv6,
        _ => return None,
    };
    if !number_ok(line, m, netns_s, len, 20, U64_MAX)
        || !number_ok(line, m, sport_s, sport_e, 5, b"65535")
        || !number_ok(line, m, dport_s, dport_e, 5, b"65535")
    {
        return None;
    }
    // From the left: [TIME] TYPE PID, all before IP.
    let first_e = m.next(0, true);
    let kind_s = if line[0].is_ascii_digit() {
        // TIME in integer nanoseconds. (Seconds with decimals, and a TIME run together
        // with TYPE, take the full parser.)
        if !number_ok(line, m, 0, first_e, 20, U64_MAX) {
            return None;
        }
        m.next(first_e, false)
    } else {
        0
    };
    let kind_e = m.next(kind_s, true);
    if kind_e >= ip_s {
        return None;
    }
    let kind = parse_kind(&line[kind_s..kind_e])?;
    let pid_s = m.next(kind_e, false);
    let pid_e = m.next(pid_s, true);
    // PID ends before IP and fits a u32.
    if pid_e >= ip_s || !number_ok(line, m, pid_s, pid_e, 10, b"4294967295") {
        return None;
    }
    let key_family = match family {
        Family::Ipv4 => (ipv4_ok(line, m, saddr_s, saddr_e) && ipv4_ok(line, m, daddr_s, daddr_e)).then_some(family),
        Family::Ipv6 => match (
            parse_addr(&line[saddr_s..saddr_e], family, "SADDR"),
            parse_addr(&line[daddr_s..daddr_e], family, "DADDR"),
        ) {
            (Ok(_), Ok(daddr)) => Some(key_family(family, &daddr)),
            _ => None,
        },
    }?;
    // COMM: what lies between PID and IP, without the blanks around it.
    let comm_s = m.next(pid_e, false).min(ip_s);
    let comm_e = m.token_end_before(ip_s).unwrap_or(0).max(comm_s);
    Some(FastLine {
        kind,
        pid: &line[pid_s..pid_e],
        comm: &line[comm_s..comm_e],
        key_family,
        saddr: &line[saddr_s..saddr_e],
        daddr: &line[daddr_s..daddr_e],
        sport: &line[sport_s..sport_e],
        dport: &line[dport_s..dport_e],
        netns: &line[netns_s..len],
    })
}

/// [`scan`] for a line given alone (without its newline), for tests: `None` for lines of
/// `FAST_MAX` bytes or more, as in reading.
#[cfg(test)]
pub(super) fn scan_line(line: &[u8]) -> Option<FastLine<'_>> {
    let mut buf = line.to_vec();
    buf.push(b'\n');
    buf.resize(buf.len() + 16, b'x');
    let (m, len) = Masks::line(&buf)?;
    if len != line.len() {
        return None;
    }
    scan(line, &m)
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
            Field::Family => buf.push(line.key_family.number()),
            Field::Saddr => push_slice(buf, line.saddr),
            Field::Daddr => push_slice(buf, line.daddr),
            Field::Sport => push_slice(buf, line.sport),
            // An accept's DPORT is left out of its key (see `Field::Dport`): empty.
            Field::Dport if line.kind == EventKind::Accept => push_slice(buf, &[]),
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
    let mut ev = RawEvent::placeholder();
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
            Field::Dport => match take_slice(b) {
                [] => ev.direction = crate::model::Direction::Inbound,
                t => ev.dport = u16::try_from(parse_u64(t)?).ok()?,
            },
            Field::Netns => ev.netns = Some(parse_u64(take_slice(b))?),
        }
    }
    super::encode_key(&ev, fields, out);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::super::testgen::structured_line;
    use super::super::{RawLine, encode_key, parse_raw};
    use super::*;
    use proptest::prelude::*;

    const ALL: [Field; 9] = Field::ALL;

    /// The fast path never disagrees with the full parser: whenever it accepts a line, the
    /// full parser reads an event from it, and every key built from the raw columns is the
    /// key built from the parsed event.
    fn check_agrees(line: &[u8]) -> Result<bool, TestCaseError> {
        let Some(f) = scan_line(line) else {
            return Ok(false);
        };
        let ev = match parse_raw(line) {
            Ok(RawLine::Event(ev)) => ev,
            other => {
                return Err(TestCaseError::fail(format!(
                    "fast path accepted {:?}, full parser said {other:?}",
                    String::from_utf8_lossy(line)
                )));
            }
        };
        prop_assert_eq!(f.kind, ev.kind);
        prop_assert_eq!(f.comm, ev.comm);
        prop_assert_eq!(f.key_family, key_family(ev.family, &ev.daddr));
        let (mut raw, mut want, mut got) = (Vec::new(), Vec::new(), Vec::new());
        for n in 1..=ALL.len() {
            for fields in [&ALL[..n], &ALL[ALL.len() - n..]] {
                encode_raw_key(&f, fields, &mut raw);
                encode_key(&ev, fields, &mut want);
                prop_assert!(raw_to_key(&raw, fields, &mut got).is_some());
                prop_assert_eq!(
                    &got,
                    &want,
                    "fields {:?} of {:?}",
                    fields,
                    String::from_utf8_lossy(line)
                );
            }
        }
        Ok(true)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn simd_classes_match_the_portable_ones(chunk in any::<[u8; 16]>(), pick in any::<[u8; 16]>()) {
            // Bias towards the interesting bytes: blanks, digits, dots, newlines, edges.
            const SPECIAL: [u8; 12] = [b' ', b'\t', b'\n', b'\r', 0, b'.', b'0', b'9', b'/', b':', 0x20, 0x21];
            let mut c = chunk;
            for (b, p) in c.iter_mut().zip(pick) {
                if p % 2 == 0 {
                    *b = SPECIAL[usize::from(p / 2) % SPECIAL.len()];
                }
            }
            prop_assert_eq!(classify16(&c), classify16_portable(&c));
        }

        #[test]
        fn fast_path_agrees_with_the_full_parser(line in structured_line()) {
            check_agrees(&line)?;
        }

        #[test]
        fn fast_path_agrees_on_garbage(line in proptest::collection::vec(any::<u8>(), 0..300)) {
            check_agrees(&line)?;
        }

        #[test]
        fn fast_path_takes_tcptracer_t4v_lines(
            time in any::<u64>(), kind in 0u8..5, pid in any::<u32>(), comm in "[a-z][a-z0-9 _-]{0,14}[a-z]",
            sa in any::<[u8; 4]>(), da in any::<[u8; 4]>(), sp in any::<u16>(), dp in any::<u16>(), ns in any::<u64>(),
            v6 in any::<[u8; 16]>(), use_v6 in any::<bool>(),
        ) {
            let (fam, sa, da) = if use_v6 {
                (6, format!("[{}]", std::net::Ipv6Addr::from(v6)), format!("[{}]", std::net::Ipv6Addr::from(v6).to_bits().rotate_left(7)))
            } else {
                (4, std::net::Ipv4Addr::from(sa).to_string(), std::net::Ipv4Addr::from(da).to_string())
            };
            let da = if use_v6 { format!("[{}]", std::net::Ipv6Addr::from(da.trim_matches(['[', ']']).parse::<u128>().unwrap_or(1))) } else { da };
            let kind = ["connect", "accept", "close", "failed_connect", "unknown"][usize::from(kind)];
            // tcptracer's printf: "%-14d %-12s %-6d %-16s %-2d %-16s %-16s %-6d %-6d %-8d"
            let line = format!("{time:<14} {kind:<12} {pid:<6} {comm:<16} {fam:<2} {sa:<16} {da:<16} {sp:<6} {dp:<6} {ns:<8}");
            let line = line.trim_end();
            prop_assert!(check_agrees(line.as_bytes())?, "fast path refused {:?}", line);
        }
    }

    #[test]
    fn lines_at_the_length_limit_take_the_full_parser() {
        let head = "1 connect 2 ";
        let tail = " 4 10.0.0.1 10.0.0.2 1 2 3";
        let comm = "c".repeat(FAST_MAX - head.len() - tail.len() - 1);
        let line = format!("{head}{comm}{tail}");
        assert_eq!(line.len(), FAST_MAX - 1);
        assert!(check_agrees(line.as_bytes()).unwrap());
        let longer = format!("{head}c{comm}{tail}");
        assert!(scan_line(longer.as_bytes()).is_none());
        assert!(matches!(parse_raw(longer.as_bytes()), Ok(RawLine::Event(_))));
    }
}
