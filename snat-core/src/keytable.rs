//! Compact storage of counts per key, for aggregations with millions of keys.
//!
//! A key (one [`Value`] per grouping field) is stored as bytes, back to back in one buffer,
//! with its [`Counts`] in one array and a hash index of 4-byte entry numbers: about 64
//! bytes plus the key's encoded length per key (17 for an IPv4 `(netns, daddr, dport)`),
//! where a `HashMap<Vec<Value>, Counts>` takes about 250.
//!
//! The encoding keeps [`Value`]'s order: comparing two encoded keys byte by byte orders
//! them as comparing their values field by field does, so rankings sort keys without
//! decoding them. Each value is a tag (the variant's rank in [`Value`]) and a payload that
//! sorts as the value does and says where it ends:
//!
//! | value | bytes |
//! | --- | --- |
//! | `Missing` | `0` |
//! | `Int(n)` | `1`, `n` big-endian (8 bytes) |
//! | `Kind(k)` | `2`, `k`'s rank in [`EventKind`] |
//! | `Family(f)` | `3`, `0` for IPv4, `1` for IPv6 |
//! | `Ip(a)` | `4`, then `0` and 4 octets (IPv4) or `1` and 16 octets (IPv6) |
//! | `Text(s)` | `5`, the bytes of `s` with `0` written `0 255`, then `0 0` |

use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hashbrown::HashTable;

use crate::aggregate::{Counts, Value};
use crate::model::{EventKind, Family};

const MISSING: u8 = 0;
const INT: u8 = 1;
const KIND: u8 = 2;
const FAMILY: u8 = 3;
const IP: u8 = 4;
const TEXT: u8 = 5;

/// Append the encoding of a missing value.
#[inline]
pub(crate) fn put_missing(out: &mut Vec<u8>) {
    out.push(MISSING);
}

/// Append the encoding of `Value::Int(n)`.
#[inline]
pub(crate) fn put_int(out: &mut Vec<u8>, n: u64) {
    out.push(INT);
    out.extend_from_slice(&n.to_be_bytes());
}

/// Append the encoding of `Value::Kind(k)`.
#[inline]
pub(crate) fn put_kind(out: &mut Vec<u8>, k: EventKind) {
    out.extend_from_slice(&[KIND, kind_rank(k)]);
}

/// Append the encoding of `Value::Family(f)`.
#[inline]
pub(crate) fn put_family(out: &mut Vec<u8>, f: Family) {
    out.extend_from_slice(&[FAMILY, u8::from(f == Family::Ipv6)]);
}

/// Append the encoding of `Value::Ip(ip)` (the address as given: callers canonicalise).
#[inline]
pub(crate) fn put_ip(out: &mut Vec<u8>, ip: &IpAddr) {
    match ip {
        IpAddr::V4(a) => {
            out.extend_from_slice(&[IP, 0]);
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.extend_from_slice(&[IP, 1]);
            out.extend_from_slice(&a.octets());
        }
    }
}

/// Append the encoding of `Value::Text` holding `s`.
pub(crate) fn put_text(out: &mut Vec<u8>, s: &[u8]) {
    out.push(TEXT);
    for &b in s {
        out.push(b);
        if b == 0 {
            out.push(255);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// Append the encoding of `v`.
pub(crate) fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Missing => put_missing(out),
        Value::Int(n) => put_int(out, *n),
        Value::Kind(k) => put_kind(out, *k),
        Value::Family(f) => put_family(out, *f),
        Value::Ip(ip) => put_ip(out, ip),
        Value::Text(s) => put_text(out, s.as_bytes()),
    }
}

fn kind_rank(k: EventKind) -> u8 {
    match k {
        EventKind::Connect => 0,
        EventKind::Accept => 1,
        EventKind::Close => 2,
        EventKind::FailedConnect => 3,
        EventKind::Unknown => 4,
    }
}

fn kind_of_rank(r: u8) -> EventKind {
    match r {
        0 => EventKind::Connect,
        1 => EventKind::Accept,
        2 => EventKind::Close,
        3 => EventKind::FailedConnect,
        _ => EventKind::Unknown,
    }
}

/// Split `n` bytes off the front of `b`; `None` past its end.
fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Some(head)
}

fn value_of(b: &mut &[u8]) -> Option<Value> {
    Some(match take(b, 1)?[0] {
        MISSING => Value::Missing,
        INT => Value::Int(u64::from_be_bytes(take(b, 8)?.try_into().ok()?)),
        KIND => Value::Kind(kind_of_rank(take(b, 1)?[0])),
        FAMILY => Value::Family(if take(b, 1)?[0] == 0 {
            Family::Ipv4
        } else {
            Family::Ipv6
        }),
        IP => {
            if take(b, 1)?[0] == 0 {
                let o: [u8; 4] = take(b, 4)?.try_into().ok()?;
                Value::Ip(IpAddr::V4(Ipv4Addr::from(o)))
            } else {
                let o: [u8; 16] = take(b, 16)?.try_into().ok()?;
                Value::Ip(IpAddr::V6(Ipv6Addr::from(o)))
            }
        }
        TEXT => {
            let mut s = Vec::new();
            loop {
                let c = take(b, 1)?[0];
                if c != 0 {
                    s.push(c);
                } else if take(b, 1)?[0] == 255 {
                    s.push(0);
                } else {
                    break;
                }
            }
            Value::Text(String::from_utf8_lossy(&s).into_owned())
        }
        _ => return None,
    })
}

/// The values of an encoded key (empty if `b` is not one: keys are only ever encoded here).
pub(crate) fn decode(mut b: &[u8]) -> Vec<Value> {
    let mut out = Vec::with_capacity(4);
    while !b.is_empty() {
        match value_of(&mut b) {
            Some(v) => out.push(v),
            None => break,
        }
    }
    out
}

/// One key's place: where its bytes end in the buffer (they start where the previous
/// key's end), and its counts.
#[derive(Debug, Clone, Copy)]
struct Entry {
    end: usize,
    counts: Counts,
}

/// Counts per encoded key, in the order keys were first added.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyTable {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
    index: HashTable<u32>,
    hasher: foldhash::fast::FixedState,
}

fn key_at<'a>(bytes: &'a [u8], entries: &[Entry], i: usize) -> &'a [u8] {
    let start = if i == 0 { 0 } else { entries[i - 1].end };
    &bytes[start..entries[i].end]
}

impl KeyTable {
    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The encoded key of entry `i`.
    pub(crate) fn key(&self, i: usize) -> &[u8] {
        key_at(&self.bytes, &self.entries, i)
    }

    /// The counts of entry `i`.
    pub(crate) fn counts(&self, i: usize) -> &Counts {
        &self.entries[i].counts
    }

    /// Every entry's counts, to adjust in place.
    pub(crate) fn counts_mut(&mut self) -> impl Iterator<Item = &mut Counts> {
        self.entries.iter_mut().map(|e| &mut e.counts)
    }

    /// Add `counts` to `key`'s.
    pub(crate) fn add(&mut self, key: &[u8], counts: &Counts) {
        let KeyTable {
            bytes,
            entries,
            index,
            hasher,
        } = self;
        let hash = hasher.hash_one(key);
        if let Some(&i) = index.find(hash, |&i| key_at(bytes, entries, i as usize) == key) {
            entries[i as usize].counts.add(counts);
            return;
        }
        let i = u32::try_from(entries.len()).expect("fewer than 2^32 keys in one grouping");
        bytes.extend_from_slice(key);
        entries.push(Entry {
            end: bytes.len(),
            counts: *counts,
        });
        index.insert_unique(hash, i, |&j| hasher.hash_one(key_at(bytes, entries, j as usize)));
    }

    /// Add every key of `other` into this table.
    pub(crate) fn merge(&mut self, other: &KeyTable) {
        for i in 0..other.len() {
            self.add(other.key(i), other.counts(i));
        }
    }

    /// Give back spare capacity (after a table is complete).
    pub(crate) fn shrink_to_fit(&mut self) {
        self.bytes.shrink_to_fit();
        self.entries.shrink_to_fit();
        let KeyTable {
            bytes,
            entries,
            index,
            hasher,
        } = self;
        index.shrink_to_fit(|&j| hasher.hash_one(key_at(bytes, entries, j as usize)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(vals: &[Value]) -> Vec<u8> {
        let mut b = Vec::new();
        for v in vals {
            put_value(&mut b, v);
        }
        b
    }

    fn arb_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Value::Missing),
            any::<u64>().prop_map(Value::Int),
            (0u8..5).prop_map(|r| Value::Kind(kind_of_rank(r))),
            any::<bool>().prop_map(|b| Value::Family(if b { Family::Ipv6 } else { Family::Ipv4 })),
            any::<[u8; 4]>().prop_map(|o| Value::Ip(IpAddr::V4(o.into()))),
            any::<[u8; 16]>().prop_map(|o| Value::Ip(IpAddr::V6(o.into()))),
            "[\\x00-\\x02a-c ]{0,6}".prop_map(Value::Text),
        ]
    }

    proptest::proptest! {
        /// Encoded keys decode to their values and sort as the values do.
        #[test]
        fn encoding_round_trips_and_keeps_the_order(
            a in proptest::collection::vec(arb_value(), 1..4),
            b in proptest::collection::vec(arb_value(), 1..4),
        ) {
            let (ea, eb) = (enc(&a), enc(&b));
            proptest::prop_assert_eq!(&decode(&ea), &a);
            proptest::prop_assert_eq!(&decode(&eb), &b);
            if a.len() == b.len() {
                proptest::prop_assert_eq!(ea.cmp(&eb), a.cmp(&b), "{:?} {:?}", a, b);
            }
        }
    }

    #[test]
    fn adds_up_counts_per_key_in_first_seen_order() {
        let mut t = KeyTable::default();
        let one = Counts {
            events: 1,
            connects: 1,
            ..Counts::default()
        };
        let keys: Vec<Vec<u8>> = (0..5000u64).map(|n| enc(&[Value::Int(n % 1000)])).collect();
        for k in &keys {
            t.add(k, &one);
        }
        t.shrink_to_fit();
        assert_eq!(t.len(), 1000);
        for i in 0..1000 {
            assert_eq!(decode(t.key(i)), vec![Value::Int(i as u64)]);
            assert_eq!(t.counts(i).connects, 5);
        }
        let mut u = KeyTable::default();
        u.add(&enc(&[Value::Int(7)]), &one);
        u.add(&enc(&[Value::Int(5000)]), &one);
        t.merge(&u);
        assert_eq!((t.len(), t.counts(7).connects, t.counts(1000).connects), (1001, 6, 1));
    }
}
