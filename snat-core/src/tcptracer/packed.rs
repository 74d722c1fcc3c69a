//! Fastest path, for the line nearly every real log consists of: an IPv4 `tcptracer -t4v`
//! event (or `-4v`, without TIME) shorter than 128 bytes, counted under groupings whose
//! fields fit in 127 bits (any without COMM, for example the article's `(SADDR, NETNS)`).
//!
//! [`scan`] classifies the first 128 bytes of the buffer (blanks, digits, newline) into
//! three 128-bit masks with SIMD ([`Classify`]: SSE2, or AVX2 when the CPU has it), finds
//! the columns from both ends with bit operations (right to left for IP SADDR DADDR SPORT
//! DPORT NETNS, since COMM may hold blanks), and checks every column the full parser checks
//! with a few mask tests. Addresses are checked and parsed through [`AddrCache`], a small
//! direct-mapped cache from an address's bytes to its value, since a log repeats the same
//! few thousand addresses millions of times. The key columns become integers packed into
//! one `u128` ([`Layout`]) counted in [`IntMap`], an open-addressing table with a cheap
//! hash; each distinct key is turned into the general encoding once, at the end.
//!
//! Whenever `scan` is not sure the full parser would read exactly this event from the line
//! (IPv6, `failed_connect`, a TIME with decimals or run into TYPE, `-` columns, leading or
//! trailing blanks, lines of 128 bytes or more, too little of the buffer left to look
//! ahead, anything odd), it returns `None` and the caller tries the next path; results are
//! identical either way (the tests compare the paths on generated and corrupted logs).

use super::{Field, RawEvent, kind_of_code, parse_ipv4, parse_u64};
use crate::model::{Direction, EventKind};

/// A packed DPORT that stands for "left out of the key" (an accept's).
const DPORT_MISSING: u64 = 1 << 16;

/// Bytes [`scan`] needs in the buffer from the line's start: the 128 classified, plus 16 so
/// that a 16-byte load at any position inside the line stays in bounds.
pub(super) const LOOKAHEAD: usize = 144;

/// `u64::MAX` in decimal.
const U64_MAX: &[u8] = b"18446744073709551615";

/// Byte classes of the 128-byte window at the start of a line, one bit per byte (bit `i`
/// for byte `i`): blanks (`<= b' '`, as [`super::is_blank`]), ASCII digits, newlines.
pub(super) trait Classify {
    /// Classify `w[..128]`.
    fn classify(w: &[u8; LOOKAHEAD]) -> (u128, u128, u128);
}

/// The byte classes a byte at a time: the portable fallback, and the reference the tests
/// compare the SIMD versions with.
#[cfg(any(test, not(target_arch = "x86_64")))]
#[derive(Debug)]
pub(super) struct Portable;

#[cfg(any(test, not(target_arch = "x86_64")))]
impl Classify for Portable {
    #[inline(always)]
    fn classify(w: &[u8; LOOKAHEAD]) -> (u128, u128, u128) {
        let (mut blank, mut digit, mut nl) = (0u128, 0u128, 0u128);
        for (i, &b) in w[..128].iter().enumerate() {
            blank |= u128::from(super::is_blank(b)) << i;
            digit |= u128::from(b.is_ascii_digit()) << i;
            nl |= u128::from(b == b'\n') << i;
        }
        (blank, digit, nl)
    }
}

/// SSE2, part of every x86_64 CPU.
#[cfg(target_arch = "x86_64")]
#[derive(Debug)]
pub(super) struct Sse2;

#[cfg(target_arch = "x86_64")]
impl Classify for Sse2 {
    #[inline(always)]
    fn classify(w: &[u8; LOOKAHEAD]) -> (u128, u128, u128) {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_set1_epi8, _mm_sub_epi8,
        };
        let (mut blank, mut digit, mut nl) = (0u128, 0u128, 0u128);
        for i in 0..8 {
            // SAFETY: SSE2 is in the x86_64 baseline, and the unaligned load reads bytes
            // 16 * i .. 16 * i + 16 of `w`, which has LOOKAHEAD >= 128 bytes.
            let (b, d, n) = unsafe {
                let v = _mm_loadu_si128(w.as_ptr().add(16 * i).cast());
                // Unsigned `a <= b` as `min(a, b) == a`.
                let b = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x20)), v);
                let d = _mm_sub_epi8(v, _mm_set1_epi8(b'0' as i8));
                let d = _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(9)), d);
                let n = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\n' as i8));
                (_mm_movemask_epi8(b), _mm_movemask_epi8(d), _mm_movemask_epi8(n))
            };
            blank |= u128::from(b as u16) << (16 * i);
            digit |= u128::from(d as u16) << (16 * i);
            nl |= u128::from(n as u16) << (16 * i);
        }
        (blank, digit, nl)
    }
}

/// AVX2; only used after `is_x86_feature_detected!("avx2")` said yes, inside a function
/// compiled with the feature enabled.
#[cfg(target_arch = "x86_64")]
#[derive(Debug)]
pub(super) struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Classify for Avx2 {
    #[inline(always)]
    fn classify(w: &[u8; LOOKAHEAD]) -> (u128, u128, u128) {
        use std::arch::x86_64::{
            _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_min_epu8, _mm256_movemask_epi8, _mm256_set1_epi8,
            _mm256_sub_epi8,
        };
        let (mut blank, mut digit, mut nl) = (0u128, 0u128, 0u128);
        for i in 0..4 {
            // SAFETY: only reached through `drive_avx2`, which runs when the CPU has AVX2;
            // the unaligned load reads bytes 32 * i .. 32 * i + 32 of `w` (LOOKAHEAD >= 128).
            let (b, d, n) = unsafe {
                let v = _mm256_loadu_si256(w.as_ptr().add(32 * i).cast());
                let b = _mm256_cmpeq_epi8(_mm256_min_epu8(v, _mm256_set1_epi8(0x20)), v);
                let d = _mm256_sub_epi8(v, _mm256_set1_epi8(b'0' as i8));
                let d = _mm256_cmpeq_epi8(_mm256_min_epu8(d, _mm256_set1_epi8(9)), d);
                let n = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\n' as i8));
                (
                    _mm256_movemask_epi8(b),
                    _mm256_movemask_epi8(d),
                    _mm256_movemask_epi8(n),
                )
            };
            blank |= u128::from(b as u32) << (32 * i);
            digit |= u128::from(d as u32) << (32 * i);
            nl |= u128::from(n as u32) << (32 * i);
        }
        (blank, digit, nl)
    }
}

/// The columns of an accepted line that keys can use, as integers (IPv4 addresses as their
/// big-endian `u32`, the kind as its code).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct IntLine {
    pub(super) kind: u8,
    pub(super) pid: u32,
    pub(super) saddr: u32,
    pub(super) daddr: u32,
    pub(super) sport: u16,
    pub(super) dport: u16,
    pub(super) netns: u64,
}

/// Which columns [`scan`] must turn into numbers (the others are only checked).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Need {
    pid: bool,
    sport: bool,
    dport: bool,
    netns: bool,
}

/// Bits a field takes in a packed key: IPv4 only, so the family is implied (0 bits); DPORT
/// has a 17th bit, set for an accept, whose DPORT is left out of keys (`Field::Dport`).
fn width(f: Field) -> Option<u32> {
    Some(match f {
        Field::Kind => 3,
        Field::Pid => 32,
        Field::Comm => return None,
        Field::Family => 0,
        Field::Saddr | Field::Daddr => 32,
        Field::Sport => 16,
        Field::Dport => 17,
        Field::Netns => 64,
    })
}

/// How one grouping's fields are packed into a `u128`: each at a bit offset, never across
/// the two 64-bit halves (so packing takes 64-bit shifts only).
#[derive(Debug, Clone)]
pub(super) struct Layout {
    parts: Vec<(Field, u32)>,
}

impl Layout {
    /// The layout for `fields`, if they fit (first fit in field order, in 127 bits: the key
    /// is never all ones, so that a stored key `+ 1` is never 0, the empty slot).
    pub(super) fn new(fields: &[Field]) -> Option<Layout> {
        let mut used = [0u32; 2];
        let mut parts = Vec::with_capacity(fields.len());
        for &f in fields {
            let wd = width(f)?;
            let half = (0..2).find(|&h| used[h] + wd <= 64)?;
            parts.push((f, 64 * half as u32 + used[half]));
            used[half] += wd;
        }
        (used[0] + used[1] <= 127).then_some(Layout { parts })
    }

    /// The columns the layouts need as numbers.
    pub(super) fn need(layouts: &[Layout]) -> Need {
        let mut n = Need::default();
        for (f, _) in layouts.iter().flat_map(|l| &l.parts) {
            match f {
                Field::Pid => n.pid = true,
                Field::Sport => n.sport = true,
                Field::Dport => n.dport = true,
                Field::Netns => n.netns = true,
                _ => {}
            }
        }
        n
    }

    /// Pack the layout's fields of `l`.
    #[inline(always)]
    pub(super) fn pack(&self, l: &IntLine) -> u128 {
        let mut k = [0u64; 2];
        for &(f, sh) in &self.parts {
            let v: u64 = match f {
                Field::Kind => u64::from(l.kind),
                Field::Pid => u64::from(l.pid),
                Field::Comm | Field::Family => 0,
                Field::Saddr => u64::from(l.saddr),
                Field::Daddr => u64::from(l.daddr),
                Field::Sport => u64::from(l.sport),
                Field::Dport if kind_of_code(l.kind) == EventKind::Accept => DPORT_MISSING,
                Field::Dport => u64::from(l.dport),
                Field::Netns => l.netns,
            };
            // A branch per field, the same every line, keeps both halves in registers.
            if sh < 64 {
                k[0] |= v << sh;
            } else {
                k[1] |= v << (sh - 64);
            }
        }
        u128::from(k[0]) | (u128::from(k[1]) << 64)
    }

    /// The event a packed key stands for, as the full path's key encoding for `fields`
    /// (the layout's fields, in order) appended to `out` (cleared first).
    pub(super) fn encode(&self, key: u128, fields: &[Field], out: &mut Vec<u8>) {
        let mut ev = RawEvent::placeholder();
        for &(f, sh) in &self.parts {
            let bits = |w: u32| ((key >> sh) & ((1u128 << w) - 1)) as u64;
            match f {
                Field::Kind => ev.kind = kind_of_code(bits(3) as u8),
                Field::Pid => ev.pid = bits(32) as u32,
                Field::Comm | Field::Family => {}
                Field::Saddr => ev.saddr = std::net::Ipv4Addr::from(bits(32) as u32).into(),
                Field::Daddr => ev.daddr = std::net::Ipv4Addr::from(bits(32) as u32).into(),
                Field::Sport => ev.sport = bits(16) as u16,
                Field::Dport => match bits(17) {
                    DPORT_MISSING => ev.direction = Direction::Inbound,
                    p => ev.dport = p as u16,
                },
                Field::Netns => ev.netns = Some(bits(64)),
            }
        }
        super::encode_key(&ev, fields, out);
    }
}

/// Counts per kind code (connect, accept, close, failed_connect, unknown).
pub(super) type KindCounts = [u64; 5];

/// Slots from which an [`IntMap`] may be three quarters full instead of half (2^16 slots:
/// 3.5 MiB).
const BIG_TABLE: usize = 1 << 16;

/// Counts per packed key: open addressing, linear probing, keys stored `+ 1` so that 0
/// marks an empty slot, at most half full (three quarters from [`BIG_TABLE`] slots).
#[derive(Debug)]
pub(super) struct IntMap {
    keys: Vec<u128>,
    counts: Vec<KindCounts>,
    len: usize,
}

impl Default for IntMap {
    fn default() -> Self {
        IntMap {
            keys: vec![0; 1024],
            counts: vec![[0; 5]; 1024],
            len: 0,
        }
    }
}

#[inline(always)]
fn slot_of(stored: u128, mask: usize) -> usize {
    let h = ((stored as u64) ^ ((stored >> 64) as u64).rotate_left(23)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // The high bits are the well-mixed ones.
    (h >> 32) as usize & mask
}

impl IntMap {
    /// Count one event of kind code `kind` under `key` (at most 127 bits).
    #[inline(always)]
    pub(super) fn bump(&mut self, key: u128, kind: u8) {
        let stored = key + 1;
        let mask = self.keys.len() - 1;
        let mut i = slot_of(stored, mask);
        loop {
            let k = self.keys[i];
            if k == stored {
                self.counts[i][usize::from(kind) % 5] += 1;
                return;
            }
            if k == 0 {
                self.keys[i] = stored;
                self.counts[i][usize::from(kind) % 5] = 1;
                self.len += 1;
                let cap = self.keys.len();
                // At most half full while the table fits in a CPU cache (few probes where
                // speed is all that counts), three quarters full past that, where a table
                // of millions of keys would otherwise take twice the memory.
                let full = if cap < BIG_TABLE { cap / 2 } else { cap - cap / 4 };
                if self.len > full {
                    self.grow();
                }
                return;
            }
            i = (i + 1) & mask;
        }
    }

    #[cold]
    fn grow(&mut self) {
        let cap = self.keys.len() * 2;
        let keys = std::mem::replace(&mut self.keys, vec![0; cap]);
        let counts = std::mem::replace(&mut self.counts, vec![[0; 5]; cap]);
        let mask = cap - 1;
        for (k, c) in keys.into_iter().zip(counts) {
            if k != 0 {
                let mut i = slot_of(k, mask);
                while self.keys[i] != 0 {
                    i = (i + 1) & mask;
                }
                self.keys[i] = k;
                self.counts[i] = c;
            }
        }
    }

    /// The keys counted and their counts.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = (u128, KindCounts)> + '_ {
        self.len = 0;
        let keys = std::mem::take(&mut self.keys);
        let counts = std::mem::take(&mut self.counts);
        keys.into_iter()
            .zip(counts)
            .filter(|(k, _)| *k != 0)
            .map(|(k, c)| (k - 1, c))
    }
}

/// Slots of the address cache: 4096 of 24 bytes, 96 KiB per thread (larger caches measured
/// no faster on the benchmark's 4,600 distinct addresses).
const CACHE_SLOTS: usize = 1 << CACHE_BITS;
const CACHE_BITS: u32 = 12;

/// `LOW_BYTES[n]`: the low `n` bytes of a `u128` set (`n <= 16`).
const LOW_BYTES: [u128; 17] = {
    let mut t = [0u128; 17];
    let mut n = 1;
    while n <= 16 {
        t[n] = u128::MAX >> (8 * (16 - n));
        n += 1;
    }
    t
};

/// IPv4 addresses already parsed, by their text: direct-mapped, a slot is the text's 16
/// bytes (zero past its end; tokens never contain a zero byte, which is a blank) and the
/// address. Only valid addresses are stored.
#[derive(Debug)]
pub(super) struct AddrCache {
    slots: Vec<(u64, u64, u32)>,
}

impl Default for AddrCache {
    fn default() -> Self {
        AddrCache {
            slots: vec![(0, 0, 0); CACHE_SLOTS],
        }
    }
}

impl AddrCache {
    /// The text of the address `w[s..e]` as a slot key, and its slot; `None` if it is not
    /// 7 to 15 bytes long (so not an IPv4 address).
    #[inline(always)]
    fn key(w: &[u8; LOOKAHEAD], s: usize, e: usize) -> Option<(u64, u64, usize)> {
        let n = e.wrapping_sub(s);
        if !(7..=15).contains(&n) {
            return None;
        }
        let raw = u128::from_le_bytes(w[s..s + 16].try_into().ok()?) & LOW_BYTES[n];
        let (lo, hi) = (raw as u64, (raw >> 64) as u64);
        let h = (lo ^ hi.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - CACHE_BITS);
        Some((lo, hi, h as usize % CACHE_SLOTS))
    }

    /// The IPv4 addresses `w[s1..e1]` and `w[s2..e2]` as the full parser reads them, or
    /// `None` if one is not an address. Both slots are read before either is compared, so
    /// that the two memory loads overlap.
    #[inline(always)]
    fn get2(&mut self, w: &[u8; LOOKAHEAD], (s1, e1): (usize, usize), (s2, e2): (usize, usize)) -> Option<(u32, u32)> {
        let (lo1, hi1, i1) = Self::key(w, s1, e1)?;
        let (lo2, hi2, i2) = Self::key(w, s2, e2)?;
        let a = self.slots[i1];
        let b = self.slots[i2];
        let ip1 = if a.0 == lo1 && a.1 == hi1 {
            a.2
        } else {
            let ip = u32::from(parse_ipv4(&w[s1..e1])?);
            self.slots[i1] = (lo1, hi1, ip);
            ip
        };
        let ip2 = if b.0 == lo2 && b.1 == hi2 {
            b.2
        } else {
            let ip = u32::from(parse_ipv4(&w[s2..e2])?);
            self.slots[i2] = (lo2, hi2, ip);
            ip
        };
        Some((ip1, ip2))
    }
}

/// Take the highest set bit of `m` off and return its position (`m` must not be 0).
#[inline(always)]
fn pop_high(m: &mut u64) -> usize {
    let p = 63 - m.leading_zeros() as usize;
    *m &= !(1u64 << p);
    p
}

/// Take the lowest set bit of `m` off and return its position (64 if `m` is 0).
#[inline(always)]
fn pop_low(m: &mut u64) -> usize {
    let p = m.trailing_zeros() as usize;
    *m &= m.wrapping_sub(1);
    p
}

/// Bits `s..e` set (`s <= e <= 63`).
#[inline(always)]
fn range(s: usize, e: usize) -> u64 {
    ((1u64 << e) - 1) & !((1u64 << s) - 1)
}

/// The 64 bits of the 128-bit mask `m` from bit `o` (1 to 63) on.
#[inline(always)]
fn window(m: u128, o: usize) -> u64 {
    ((m as u64) >> o) | (((m >> 64) as u64) << (64 - o))
}

/// The value of the digits `w[s..e]` (already checked to be 1 to 16 digits), for `e >= 16`:
/// eight digits at a time with SWAR multiplications.
#[inline(always)]
fn digits16(w: &[u8; LOOKAHEAD], s: usize, e: usize) -> u64 {
    // Eight digits (first byte most significant) to their value.
    fn eight(v: u64) -> u64 {
        let v = (v & 0x0F0F_0F0F_0F0F_0F0F).wrapping_mul(2561) >> 8;
        let v = (v & 0x00FF_00FF_00FF_00FF).wrapping_mul(6_553_601) >> 16;
        (v & 0x0000_FFFF_0000_FFFF).wrapping_mul(42_949_672_960_001) >> 32
    }
    // The 16 bytes ending at `e`; digits before `s` read as 0: clear their bytes (b'0' &
    // 0x0F is 0 as well). The last `n` bytes are the high ones of the little-endian word.
    let v = u128::from_le_bytes(w[e - 16..e].try_into().unwrap_or_default()) & !LOW_BYTES[16 - (e - s)];
    let (lo, hi) = (v as u64, (v >> 64) as u64);
    eight(lo) * 100_000_000 + eight(hi)
}

/// The value of the 1 to 20 checked digits `w[s..e]` that fit in a `u64`.
#[inline(always)]
fn number(w: &[u8; LOOKAHEAD], s: usize, e: usize) -> u64 {
    if e >= 16 && e - s <= 16 {
        digits16(w, s, e)
    } else {
        parse_u64(&w[s..e]).unwrap_or(0)
    }
}

/// Known kind words of up to 8 bytes, zero-padded little-endian, with their codes.
const fn word(s: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let mut i = 0;
    while i < s.len() {
        b[i] = s[i];
        i += 1;
    }
    u64::from_le_bytes(b)
}

/// The kind code of the token `w[s..e]` (`failed_connect`, longer than 8 bytes, is left to
/// the other paths).
#[inline(always)]
fn kind(w: &[u8; LOOKAHEAD], s: usize, e: usize) -> Option<u8> {
    let n = e - s;
    if n > 8 {
        return None;
    }
    let v = u64::from_le_bytes(w[s..s + 8].try_into().ok()?) & (!0u64 >> (64 - 8 * n));
    const CONNECT: u64 = word(b"connect");
    const CLOSE: u64 = word(b"close");
    const ACCEPT: u64 = word(b"accept");
    const UNKNOWN: u64 = word(b"unknown");
    const C: u64 = word(b"C");
    const X: u64 = word(b"X");
    const A: u64 = word(b"A");
    const F: u64 = word(b"F");
    const U: u64 = word(b"U");
    Some(match v {
        CONNECT | C => 0,
        ACCEPT | A => 1,
        CLOSE | X => 2,
        F => 3,
        UNKNOWN | U => 4,
        _ => return None,
    })
}

/// `w[s..e]`, a run of `max` digits, is at most `limit`.
#[inline(always)]
fn at_most(w: &[u8; LOOKAHEAD], s: usize, e: usize, max: usize, limit: &[u8]) -> bool {
    e - s < max || (e - s == max && &w[s..e] <= limit)
}

/// Read the line at the start of `w` (`w` holds at least [`LOOKAHEAD`] bytes of the buffer
/// from the line's start): its length with the newline and its columns, if it is an IPv4
/// `[TIME] TYPE PID COMM 4 SADDR DADDR SPORT DPORT NETNS` event of 64 to 126 bytes that
/// the full parser would read exactly so. `None` means "not sure", never "malformed".
///
/// The six tail columns are found in the 64-bit window of the masks that ends at the
/// newline, the head ones (TIME TYPE PID) in the first 64 bits, so that every step is a
/// 64-bit operation.
#[inline(always)]
pub(super) fn scan<C: Classify>(w: &[u8; LOOKAHEAD], need: Need, cache: &mut AddrCache) -> Option<(usize, IntLine)> {
    let (blank, digit, nl) = C::classify(w);
    let len = nl.trailing_zeros() as usize;
    // Leading or trailing blanks, or no number at the end: the other paths.
    if !(64..=126).contains(&len) || super::is_blank(w[0]) || !w[len - 1].is_ascii_digit() {
        return None;
    }
    // From the newline on is not this line: count it as blank.
    let blank = blank | (!0u128 << len);
    let other = !blank & !digit;
    let starts = !blank & ((blank << 1) | 1);
    let ends = blank & (!blank << 1);
    let time = w[0].is_ascii_digit();
    // [TIME] TYPE PID, then COMM (maybe empty), then the six tail columns.
    if (starts.count_ones() as usize) < 8 + usize::from(time) {
        return None;
    }
    // The tail window: bit 63 is the newline (the end of NETNS), bit j is byte o + j.
    let o = len - 63;
    let mut ts = window(starts, o);
    let mut te = window(ends, o);
    if ts.count_ones() < 6 {
        return None;
    }
    // From the right: NETNS DPORT SPORT DADDR SADDR IP. (The first end popped is `len`.)
    let netns_s = pop_high(&mut ts) + o;
    pop_high(&mut te);
    let dport_s = pop_high(&mut ts) + o;
    let dport_e = pop_high(&mut te) + o;
    let sport_s = pop_high(&mut ts) + o;
    let sport_e = pop_high(&mut te) + o;
    let daddr_s = pop_high(&mut ts) + o;
    let daddr_e = pop_high(&mut te);
    let saddr_s = pop_high(&mut ts) + o;
    let saddr_e = pop_high(&mut te) + o;
    let ip_s = pop_high(&mut ts) + o;
    let ip_e = pop_high(&mut te) + o;
    // SPORT DPORT NETNS (and the blanks between them) are all digits.
    if ip_e != ip_s + 1 || w[ip_s] != b'4' || window(other, o) >> daddr_e != 0 {
        return None;
    }
    let daddr_e = daddr_e + o;
    // The head, in the first 64 bytes: [TIME] TYPE PID.
    let mut hs = starts as u64;
    let mut he = ends as u64;
    if (he.count_ones() as usize) < 2 + usize::from(time) {
        return None;
    }
    pop_low(&mut hs);
    let first_e = pop_low(&mut he);
    let mut numeric = 0;
    let (kind_s, kind_e) = if time {
        // TIME in integer nanoseconds; seconds with decimals, or a TIME run together with
        // TYPE, have a non-digit in it and take another path.
        if !at_most(w, 0, first_e, 20, U64_MAX) {
            return None;
        }
        numeric = range(0, first_e);
        (pop_low(&mut hs), pop_low(&mut he))
    } else {
        (0, first_e)
    };
    let kind = kind(w, kind_s, kind_e)?;
    let pid_s = pop_low(&mut hs);
    let pid_e = pop_low(&mut he);
    numeric |= range(pid_s, pid_e);
    if (other as u64) & numeric != 0
        || !at_most(w, pid_s, pid_e, 10, b"4294967295")
        || !at_most(w, sport_s, sport_e, 5, b"65535")
        || !at_most(w, dport_s, dport_e, 5, b"65535")
        || !at_most(w, netns_s, len, 20, U64_MAX)
    {
        return None;
    }
    let (saddr, daddr) = cache.get2(w, (saddr_s, saddr_e), (daddr_s, daddr_e))?;
    let mut l = IntLine {
        kind,
        saddr,
        daddr,
        ..IntLine::default()
    };
    if need.pid {
        l.pid = number(w, pid_s, pid_e) as u32;
    }
    if need.sport {
        l.sport = number(w, sport_s, sport_e) as u16;
    }
    if need.dport {
        l.dport = number(w, dport_s, dport_e) as u16;
    }
    if need.netns {
        l.netns = number(w, netns_s, len);
    }
    Some((len + 1, l))
}

/// [`scan`] with every column parsed, for a line given alone (without its newline), for
/// tests.
#[cfg(test)]
pub(super) fn scan_line<C: Classify>(line: &[u8]) -> Option<IntLine> {
    let mut buf = line.to_vec();
    buf.push(b'\n');
    buf.resize(buf.len().max(LOOKAHEAD), b'x');
    let w: &[u8; LOOKAHEAD] = buf[..LOOKAHEAD].try_into().ok()?;
    let need = Need {
        pid: true,
        sport: true,
        dport: true,
        netns: true,
    };
    let (n, l) = scan::<C>(w, need, &mut AddrCache::default())?;
    (n == line.len() + 1).then_some(l)
}

#[cfg(test)]
mod tests {
    use super::super::testgen::structured_line;
    use super::super::{RawLine, encode_key, parse_raw};
    use super::*;
    use crate::model::Family;
    use proptest::prelude::*;
    use std::net::IpAddr;

    /// Groupings that pack, covering every packable field in both halves of the key.
    const GROUPINGS: [&[Field]; 6] = [
        &[Field::Saddr, Field::Netns],
        &[Field::Netns, Field::Daddr, Field::Dport],
        &[Field::Kind, Field::Pid, Field::Family, Field::Sport],
        &[Field::Pid, Field::Netns, Field::Sport],
        &[Field::Daddr, Field::Saddr, Field::Kind, Field::Sport, Field::Dport],
        &[Field::Dport],
    ];

    /// Whenever the packed path accepts a line, the full parser reads an IPv4 event from it
    /// with the same length, and every packed key encodes to the full path's key.
    fn check_agrees<C: Classify>(line: &[u8]) -> Result<bool, TestCaseError> {
        let Some(l) = scan_line::<C>(line) else {
            return Ok(false);
        };
        let ev = match parse_raw(line) {
            Ok(RawLine::Event(ev)) => ev,
            other => {
                return Err(TestCaseError::fail(format!(
                    "packed path accepted {:?}, full parser said {other:?}",
                    String::from_utf8_lossy(line)
                )));
            }
        };
        prop_assert_eq!(ev.family, Family::Ipv4);
        let want = IntLine {
            kind: super::super::kind_code(ev.kind),
            pid: ev.pid,
            saddr: match ev.saddr {
                IpAddr::V4(a) => u32::from(a),
                IpAddr::V6(_) => return Err(TestCaseError::fail("v6 saddr")),
            },
            daddr: match ev.daddr {
                IpAddr::V4(a) => u32::from(a),
                IpAddr::V6(_) => return Err(TestCaseError::fail("v6 daddr")),
            },
            sport: ev.sport,
            dport: ev.dport,
            netns: ev.netns.ok_or_else(|| TestCaseError::fail("no netns"))?,
        };
        prop_assert_eq!(l, want, "{:?}", String::from_utf8_lossy(line));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for g in GROUPINGS {
            let lay = Layout::new(g).ok_or_else(|| TestCaseError::fail("layout"))?;
            lay.encode(lay.pack(&l), g, &mut a);
            encode_key(&ev, g, &mut b);
            prop_assert_eq!(&a, &b, "{:?}", g);
        }
        Ok(true)
    }

    fn check_all(line: &[u8]) -> Result<bool, TestCaseError> {
        let portable = check_agrees::<Portable>(line)?;
        #[cfg(target_arch = "x86_64")]
        {
            prop_assert_eq!(check_agrees::<Sse2>(line)?, portable);
            if std::arch::is_x86_feature_detected!("avx2") {
                prop_assert_eq!(check_agrees::<Avx2>(line)?, portable);
            }
        }
        Ok(portable)
    }

    /// A `tcptracer -t4v` line as its printf writes it (one argument per column).
    #[allow(clippy::too_many_arguments)]
    fn t4v(time: u64, kind: &str, pid: u32, comm: &str, sa: &str, da: &str, sp: u16, dp: u16, ns: u64) -> String {
        let line = format!("{time:<14} {kind:<12} {pid:<6} {comm:<16} 4  {sa:<16} {da:<16} {sp:<6} {dp:<6} {ns:<8}");
        line.trim_end().to_string()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn simd_classes_match_the_portable_ones(bytes in proptest::collection::vec(any::<u8>(), LOOKAHEAD), pick in proptest::collection::vec(any::<u8>(), LOOKAHEAD)) {
            const SPECIAL: [u8; 14] = [b' ', b'\t', b'\n', b'\r', 0, b'.', b'0', b'9', b'/', b':', 0x20, 0x21, 0x80, 0xff];
            let mut w = [0u8; LOOKAHEAD];
            for ((o, b), p) in w.iter_mut().zip(bytes).zip(pick) {
                *o = if p % 2 == 0 { SPECIAL[usize::from(p / 2) % SPECIAL.len()] } else { b };
            }
            let want = Portable::classify(&w);
            #[cfg(target_arch = "x86_64")]
            {
                prop_assert_eq!(Sse2::classify(&w), want);
                if std::arch::is_x86_feature_detected!("avx2") {
                    prop_assert_eq!(Avx2::classify(&w), want);
                }
            }
            let _ = want;
        }

        #[test]
        fn packed_path_agrees_with_the_full_parser(line in structured_line()) {
            check_all(&line)?;
        }

        #[test]
        fn packed_path_agrees_on_garbage(line in proptest::collection::vec(any::<u8>(), 0..140)) {
            check_all(&line)?;
        }

        /// One byte of a real line overwritten by a near miss: a digit, dot, blank, letter.
        #[test]
        fn packed_path_agrees_on_corrupted_lines(
            time in any::<u64>(), pid in any::<u32>(), sa in any::<[u8; 4]>(), da in any::<[u8; 4]>(),
            sp in any::<u16>(), dp in any::<u16>(), ns in 4_026_531_840u64..4_026_600_000,
            at in any::<proptest::sample::Index>(), b in 0usize..14,
        ) {
            const BYTES: &[u8] = b"0159. \tx:-[\r\n6";
            let mut line = t4v(time, "connect", pid, "curl", &std::net::Ipv4Addr::from(sa).to_string(),
                &std::net::Ipv4Addr::from(da).to_string(), sp, dp, ns).into_bytes();
            let at = at.index(line.len());
            line[at] = BYTES[b];
            check_all(&line)?;
        }

        #[test]
        fn packed_path_takes_tcptracer_t4v_lines(
            time in any::<u64>(), kind in 0usize..4, pid in any::<u32>(), comm in "[a-z][a-z0-9 _-]{0,14}[a-z]",
            sa in any::<[u8; 4]>(), da in any::<[u8; 4]>(), sp in any::<u16>(), dp in any::<u16>(),
            ns in 4_026_531_840u64..4_026_600_000,
        ) {
            let kind = ["connect", "accept", "close", "unknown"][kind];
            let line = t4v(time, kind, pid, &comm, &std::net::Ipv4Addr::from(sa).to_string(),
                &std::net::Ipv4Addr::from(da).to_string(), sp, dp, ns);
            prop_assert!(line.len() < 127);
            prop_assert!(check_all(line.as_bytes())?, "packed path refused {:?}", line);
        }
    }

    #[rstest::rstest]
    #[case::ipv6(
        "71457         connect      2547   curl             6  [fd00::1]        [2001:db8::1]    32769  443    4026533033"
    )]
    #[case::failed_connect(
        "71457         failed_connect 2547   curl             4  10.0.0.1         10.0.0.2         32769  443    4026533033"
    )]
    #[case::seconds(
        "71.457    connect      2547   curl             4  10.0.0.1         10.0.0.2         32769  443    4026533033"
    )]
    #[case::no_netns(
        "71457         connect      2547   curl             4  10.0.0.1         10.0.0.2         32769  443    -"
    )]
    #[case::cr(
        "71457         connect      2547   curl             4  10.0.0.1         10.0.0.2         32769  443    4026533033\r"
    )]
    #[case::short("1 connect 2 c 4 10.0.0.1 10.0.0.2 1 2 3")]
    fn unusual_lines_are_left_to_the_other_paths(#[case] line: &str) {
        assert!(scan_line::<Portable>(line.as_bytes()).is_none());
    }

    #[test]
    fn layouts_pack_what_fits() {
        assert!(Layout::new(&[Field::Comm]).is_none());
        assert!(Layout::new(&[Field::Netns, Field::Pid, Field::Saddr, Field::Daddr]).is_none());
        assert!(Layout::new(&[Field::Netns, Field::Netns]).is_none());
        // 128 bits: the key could be all ones.
        assert!(Layout::new(&[Field::Pid, Field::Netns, Field::Sport, Field::Dport]).is_none());
        assert!(Layout::new(&[Field::Kind, Field::Netns, Field::Saddr, Field::Dport]).is_some());
        for g in GROUPINGS {
            assert!(Layout::new(g).is_some(), "{g:?}");
        }
    }

    /// Addresses looked up again (cache hits), next to near misses that share a prefix or
    /// hash alike, read as the parser reads them every time.
    #[test]
    fn address_cache_hits_agree_with_the_parser() {
        let addrs = [
            "10.0.0.1",
            "10.0.0.10",
            "10.0.0.100",
            "1.2.3.4",
            "01.2.3.4",
            "256.1.1.1",
            "10.0.0",
            "10.0.0.1.",
            "10.0.0:1",
            "255.255.255.255",
            "0.0.0.0",
        ];
        let mut cache = AddrCache::default();
        for _ in 0..3 {
            for a in addrs {
                for b in addrs {
                    let mut w = [b' '; LOOKAHEAD];
                    w[10..10 + a.len()].copy_from_slice(a.as_bytes());
                    w[40..40 + b.len()].copy_from_slice(b.as_bytes());
                    let got = cache.get2(&w, (10, 10 + a.len()), (40, 40 + b.len()));
                    let p = |t: &str| super::super::parse_ipv4(t.as_bytes()).map(u32::from);
                    assert_eq!(got, p(a).zip(p(b)), "{a} {b}");
                }
            }
        }
    }

    #[test]
    fn map_counts_every_key_across_growth() {
        let mut m = IntMap::default();
        for i in 0..5000u128 {
            for _ in 0..(i % 3) + 1 {
                m.bump(i << 64 | i, (i % 5) as u8);
            }
        }
        let mut got: Vec<(u128, KindCounts)> = m.drain().collect();
        got.sort();
        assert_eq!(got.len(), 5000);
        for (i, (k, c)) in got.into_iter().enumerate() {
            let i = i as u128;
            assert_eq!(k, i << 64 | i);
            let mut want = [0; 5];
            want[(i % 5) as usize] = ((i % 3) + 1) as u64;
            assert_eq!(c, want);
        }
    }
}
