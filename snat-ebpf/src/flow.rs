//! What the kernel program produces, in snat's data model: per-flow rows aggregated in the
//! kernel ([`FlowRow`]) and single events ([`TcpEvent`], decoded from [`RawEvent`]).
//!
//! ## Aggregated rows as [`Record`]s
//!
//! The kernel keys its counters by (netns, family, direction, port, saddr, daddr). It keeps
//! *one* port: the remote port of an outbound connection (the destination, what a SNAT
//! port is consumed for) and the local, listening port of an inbound one (the client's
//! ephemeral port would make one row per connection). So, as a [`Record`]:
//!
//! | field | outbound / unknown row | inbound row |
//! | --- | --- | --- |
//! | `netns`, `family`, `saddr`, `daddr` | the key's value (an IPv4-mapped address, and its family, as IPv4) | the same |
//! | `dport` | the remote port | `Missing` (`-`): the client's port is not recorded |
//! | `sport` | `Missing` | the listening port |
//! | `pid`, `comm` | not available (`None`: grouping by them is an error) | same |
//! | `kind` | not available on a whole row | same |
//!
//! Grouping by `kind` works on [`KindRow`]s: [`FlowRow::split_by_kind`] splits a row into
//! one record per event kind with a non-zero count (connects, accepts, closes, failed
//! connects), each carrying only that kind's counts; `open` rides on the connect (outbound)
//! or accept (inbound) part. The parts add up to the row, so totals are unchanged.
//!
//! Stream-mode events rank the same way ([`snat_core::aggregate::Field::Dport`]): an
//! event's [`TcpEvent::direction`] is the kernel's direction of its connection, and the
//! `dport` of an inbound event (an accept, or the close of an accepted connection) is
//! `Missing` in rankings, though the event itself carries the client's port. Counted as a
//! [`StreamRecord`], an outbound or unknown event's `sport` (its ephemeral local port) is
//! `Missing` too, as in the table above. So a grouping without `pid` or `comm` gives the
//! same rows and counts in both modes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use snat_core::aggregate::{Counts, Field, Record, Value, key_family};
use snat_core::model::{Clock, Direction, EventKind, Family, TcpEvent, TcpState};

use crate::abi::{self, FlowCounts, FlowKey, RawEvent};

/// Counters the kernel kept for one flow key over the trace window.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FlowRow {
    /// Network namespace inode.
    pub netns: u64,
    /// Address family.
    pub family: Family,
    /// Outbound (this side connected), inbound (accepted), or unknown (a close of a
    /// connection established before the trace started).
    pub direction: Direction,
    /// Local address.
    pub saddr: IpAddr,
    /// Remote address.
    pub daddr: IpAddr,
    /// The server port: remote port for outbound and unknown rows, local port for inbound.
    pub port: u16,
    /// Connects that reached ESTABLISHED.
    pub connects: u64,
    /// Accepted connections.
    pub accepts: u64,
    /// Connects that never reached ESTABLISHED.
    pub failed_connects: u64,
    /// Closes.
    pub closes: u64,
    /// Established in the window and still open at its end.
    pub open: u64,
}

fn family_of(af: u16) -> Option<Family> {
    match af {
        abi::AF_INET => Some(Family::Ipv4),
        abi::AF_INET6 => Some(Family::Ipv6),
        _ => None,
    }
}

fn ip_of(family: Family, b: &[u8; 16]) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(*b)),
    }
}

fn direction_of(d: u8) -> Direction {
    match d {
        abi::DIR_OUTBOUND => Direction::Outbound,
        abi::DIR_INBOUND => Direction::Inbound,
        _ => Direction::Unknown,
    }
}

impl FlowRow {
    /// Decode one entry of the `flows` map; `None` for an unknown address family.
    pub fn from_raw(k: &FlowKey, c: &FlowCounts) -> Option<FlowRow> {
        let family = family_of(k.family)?;
        Some(FlowRow {
            netns: u64::from(k.netns),
            family,
            direction: direction_of(k.direction),
            saddr: ip_of(family, &k.saddr),
            daddr: ip_of(family, &k.daddr),
            port: k.port,
            connects: c.connects,
            accepts: c.accepts,
            failed_connects: c.failed_connects,
            closes: c.closes,
            open: c.open,
        })
    }

    /// The row's counts (`events` is the sum of the four kinds).
    pub fn counts(&self) -> Counts {
        Counts {
            events: self.connects + self.accepts + self.closes + self.failed_connects,
            connects: self.connects,
            accepts: self.accepts,
            closes: self.closes,
            failed_connects: self.failed_connects,
            unknown: 0,
            open: self.open,
        }
    }

    /// One record per event kind with a non-zero count (see the module docs).
    pub fn split_by_kind(&self) -> Vec<KindRow<'_>> {
        let mut out = Vec::with_capacity(4);
        let open_kind = match self.direction {
            Direction::Inbound => EventKind::Accept,
            _ => EventKind::Connect,
        };
        for (kind, n) in [
            (EventKind::Connect, self.connects),
            (EventKind::Accept, self.accepts),
            (EventKind::Close, self.closes),
            (EventKind::FailedConnect, self.failed_connects),
        ] {
            let open = if kind == open_kind { self.open } else { 0 };
            if n == 0 && open == 0 {
                continue;
            }
            let mut counts = Counts {
                events: n,
                open,
                ..Counts::default()
            };
            match kind {
                EventKind::Connect => counts.connects = n,
                EventKind::Accept => counts.accepts = n,
                EventKind::Close => counts.closes = n,
                _ => counts.failed_connects = n,
            }
            out.push(KindRow {
                row: self,
                kind,
                counts,
            });
        }
        out
    }

    fn field(&self, field: Field) -> Option<Value> {
        let inbound = self.direction == Direction::Inbound;
        Some(match field {
            Field::Kind | Field::Pid | Field::Comm => return None,
            // As for events: an IPv4-mapped address is keyed as IPv4 (see `Field::Daddr`).
            Field::Family => Value::Family(key_family(self.family, &self.daddr)),
            Field::Saddr => Value::Ip(self.saddr.to_canonical()),
            Field::Daddr => Value::Ip(self.daddr.to_canonical()),
            Field::Sport if inbound => Value::Int(u64::from(self.port)),
            Field::Sport => Value::Missing,
            Field::Dport if inbound => Value::Missing,
            Field::Dport => Value::Int(u64::from(self.port)),
            Field::Netns => Value::Int(self.netns),
        })
    }
}

impl Record for FlowRow {
    fn value(&self, field: Field) -> Option<Value> {
        self.field(field)
    }

    fn counts(&self) -> Counts {
        FlowRow::counts(self)
    }
}

/// One event kind's share of a [`FlowRow`]: a [`Record`] that can also be grouped by
/// `kind`.
#[derive(Debug, Clone, Copy)]
pub struct KindRow<'a> {
    row: &'a FlowRow,
    kind: EventKind,
    counts: Counts,
}

impl KindRow<'_> {
    /// The kind this part counts.
    pub fn kind(&self) -> EventKind {
        self.kind
    }
}

impl Record for KindRow<'_> {
    fn value(&self, field: Field) -> Option<Value> {
        match field {
            Field::Kind => Some(Value::Kind(self.kind)),
            f => self.row.field(f),
        }
    }

    fn counts(&self) -> Counts {
        self.counts
    }
}

/// A stream-mode event as a ranking [`Record`], keyed as aggregated mode keys its row:
/// the event's own values, except `sport`, which is the listening port of an inbound
/// connection (an accept, the close of an accepted connection) and `Missing` otherwise.
/// The local port of a connection this side opened is ephemeral, one row per connection,
/// and aggregated mode does not record it, so a ranking by `sport` from a stream-mode
/// trace has the rows an aggregated-mode trace gives. The event itself (text and JSON
/// Lines output) keeps its port.
#[derive(Debug, Clone, Copy)]
pub struct StreamRecord<'a>(pub &'a TcpEvent);

impl Record for StreamRecord<'_> {
    fn value(&self, field: Field) -> Option<Value> {
        match field {
            Field::Sport if self.0.direction != Direction::Inbound => Some(Value::Missing),
            f => self.0.value(f),
        }
    }

    fn counts(&self) -> Counts {
        self.0.counts()
    }
}

/// Converts the kernel program's times (`CLOCK_MONOTONIC` nanoseconds) to Unix time.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC`, in nanoseconds.
    offset_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec; clock_gettime only writes into it.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl WallClock {
    /// Measure the offset now.
    pub fn now() -> WallClock {
        let mono1 = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        let mono2 = clock_ns(libc::CLOCK_MONOTONIC);
        WallClock {
            offset_ns: real - (mono1 + mono2) / 2,
        }
    }

    /// Unix nanoseconds for a `CLOCK_MONOTONIC` time.
    pub fn unix_ns(&self, mono_ns: u64) -> u64 {
        u64::try_from(i128::from(mono_ns) + self.offset_ns).unwrap_or(0)
    }
}

fn comm_of(b: &[u8; 16]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Decode an event-ring record into snat's event; `None` for a record the program never
/// writes (unknown kind or family).
pub fn event_from_raw(r: &RawEvent, clock: &WallClock) -> Option<TcpEvent> {
    let family = family_of(r.family)?;
    let kind = match r.kind {
        abi::KIND_CONNECT => EventKind::Connect,
        abi::KIND_ACCEPT => EventKind::Accept,
        abi::KIND_CLOSE => EventKind::Close,
        abi::KIND_FAILED_CONNECT => EventKind::FailedConnect,
        _ => return None,
    };
    let owner_known = r.flags & abi::FLAG_OWNER_KNOWN != 0;
    let closing = matches!(kind, EventKind::Close | EventKind::FailedConnect);
    Some(TcpEvent {
        time_ns: Some(clock.unix_ns(r.ts_ns)),
        clock: Clock::Unix,
        kind,
        direction: direction_of(r.direction),
        // An unknown owner is pid 0 and no comm, whatever the record holds.
        pid: if owner_known { r.pid } else { 0 },
        comm: if owner_known { comm_of(&r.comm) } else { String::new() },
        family,
        saddr: ip_of(family, &r.saddr),
        daddr: ip_of(family, &r.daddr),
        sport: r.sport,
        dport: r.dport,
        netns: Some(u64::from(r.netns)),
        cgroup_id: owner_known.then_some(r.cgroup_id),
        prev_state: if closing {
            TcpState::from_number(r.prev_state)
        } else {
            None
        },
        duration_ns: (r.flags & abi::FLAG_DURATION_KNOWN != 0).then_some(r.duration_ns),
        error: (kind == EventKind::FailedConnect && r.error != 0).then_some(r.error),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use snat_core::aggregate::{Metric, TraceSummary};

    fn row(direction: u8, port: u16, c: FlowCounts) -> FlowRow {
        let mut k = FlowKey {
            netns: 4026532001,
            family: abi::AF_INET,
            port,
            direction,
            ..FlowKey::default()
        };
        k.saddr[..4].copy_from_slice(&[198, 18, 0, 1]);
        k.daddr[..4].copy_from_slice(&[198, 18, 0, 2]);
        FlowRow::from_raw(&k, &c).unwrap()
    }

    #[test]
    fn rows_decode_and_feed_a_summary() {
        let out = row(
            abi::DIR_OUTBOUND,
            443,
            FlowCounts {
                connects: 5,
                failed_connects: 2,
                closes: 3,
                open: 2,
                ..Default::default()
            },
        );
        let inb = row(
            abi::DIR_INBOUND,
            8080,
            FlowCounts {
                accepts: 4,
                closes: 4,
                ..Default::default()
            },
        );
        assert_eq!(out.saddr, "198.18.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(out.direction, Direction::Outbound);
        let mut s = TraceSummary::new(
            "live",
            vec![
                vec![Field::Netns, Field::Daddr, Field::Dport],
                vec![Field::Kind, Field::Sport],
            ],
        );
        for r in [&out, &inb] {
            for part in r.split_by_kind() {
                s.add(&part).unwrap();
            }
        }
        assert_eq!(s.totals.events, 5 + 2 + 3 + 4 + 4);
        assert_eq!(s.totals.open, 2);
        assert_eq!(s.totals.failed_connects, 2);
        let r = s
            .rank(&[Field::Netns, Field::Daddr, Field::Dport], Metric::Events)
            .unwrap();
        assert_eq!(r.rows[0].key[2], Value::Int(443));
        assert_eq!(r.rows[0].counts.events, 10);
        assert_eq!(r.rows[1].key[2], Value::Missing);
        let k = s.rank(&[Field::Kind, Field::Sport], Metric::Events).unwrap();
        // connect part of the outbound row carries its open count
        let conn = k
            .rows
            .iter()
            .find(|r| r.key[0] == Value::Kind(EventKind::Connect))
            .unwrap();
        assert_eq!(conn.counts.open, 2);
        assert_eq!(conn.key[1], Value::Missing);
        let acc = k
            .rows
            .iter()
            .find(|r| r.key[0] == Value::Kind(EventKind::Accept))
            .unwrap();
        assert_eq!(acc.key[1], Value::Int(8080));
        // pid cannot come from kernel-aggregated rows
        let mut bad = TraceSummary::new("live", vec![vec![Field::Pid]]);
        assert!(bad.add(&out).is_err());
    }

    /// The kernel keys a dual-stack socket's flow to `::ffff:198.18.0.2` apart from an IPv4
    /// socket's flow to 198.18.0.2 (family and addresses differ): rankings put them in one
    /// row, keyed by the IPv4 addresses, with the counts summed.
    #[test]
    fn ipv4_mapped_rows_rank_with_ipv4_rows() {
        let v4 = row(
            abi::DIR_OUTBOUND,
            443,
            FlowCounts {
                connects: 3,
                ..Default::default()
            },
        );
        let mut k = FlowKey {
            netns: 4026532001,
            family: abi::AF_INET6,
            port: 443,
            direction: abi::DIR_OUTBOUND,
            ..FlowKey::default()
        };
        k.saddr = Ipv4Addr::new(198, 18, 0, 1).to_ipv6_mapped().octets();
        k.daddr = Ipv4Addr::new(198, 18, 0, 2).to_ipv6_mapped().octets();
        let mapped = FlowRow::from_raw(
            &k,
            &FlowCounts {
                connects: 4,
                failed_connects: 1,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(mapped.daddr, "::ffff:198.18.0.2".parse::<IpAddr>().unwrap());
        let by = vec![
            vec![Field::Netns, Field::Daddr, Field::Dport],
            vec![Field::Saddr, Field::Netns],
            vec![Field::Family, Field::Kind],
        ];
        let mut s = TraceSummary::new("live", by.clone());
        for r in [&v4, &mapped] {
            for part in r.split_by_kind() {
                s.add(&part).unwrap();
            }
        }
        let r = s.rank(&by[0], Metric::Attempts).unwrap();
        assert_eq!(r.rows.len(), 1, "{r:?}");
        assert_eq!(r.rows[0].key[1], Value::Ip("198.18.0.2".parse().unwrap()));
        assert_eq!(r.rows[0].counts.get(Metric::Attempts), 8);
        let r = s.rank(&by[1], Metric::Events).unwrap();
        assert_eq!(r.rows.len(), 1, "{r:?}");
        assert_eq!(r.rows[0].key[0], Value::Ip("198.18.0.1".parse().unwrap()));
        let r = s.rank(&by[2], Metric::Events).unwrap();
        assert!(
            r.rows.iter().all(|row| row.key[0] == Value::Family(Family::Ipv4)),
            "{r:?}"
        );
    }

    /// An accepted connection as the kernel's inbound row and as stream-mode events (an
    /// accept and a close per connection, each with the client's port and the kernel's
    /// direction): the same rows with the same counts.
    #[test]
    fn inbound_events_rank_like_the_inbound_row() {
        let inb = row(
            abi::DIR_INBOUND,
            8080,
            FlowCounts {
                accepts: 3,
                closes: 3,
                ..Default::default()
            },
        );
        let mut events = Vec::new();
        for (i, kind) in [EventKind::Accept, EventKind::Close]
            .into_iter()
            .cycle()
            .take(6)
            .enumerate()
        {
            events.push(TcpEvent {
                time_ns: None,
                clock: Clock::Unix,
                kind,
                direction: Direction::Inbound,
                pid: 1,
                comm: "srv".into(),
                family: Family::Ipv4,
                saddr: inb.saddr,
                daddr: inb.daddr,
                sport: 8080,
                dport: 50000 + (i / 2) as u16,
                netns: Some(inb.netns),
                cgroup_id: None,
                prev_state: None,
                duration_ns: None,
                error: None,
            });
        }
        let by = vec![
            vec![Field::Netns, Field::Daddr, Field::Dport],
            vec![Field::Kind, Field::Sport, Field::Dport],
        ];
        let mut from_row = TraceSummary::new("live", by.clone());
        for part in inb.split_by_kind() {
            from_row.add(&part).unwrap();
        }
        let mut from_events = TraceSummary::new("live", by.clone());
        for e in &events {
            from_events.add(e).unwrap();
        }
        for g in &by {
            let rows = |s: &TraceSummary| {
                s.rank(g, Metric::Events)
                    .unwrap()
                    .rows
                    .into_iter()
                    .map(|r| (r.key, r.counts.events, r.counts.accepts, r.counts.closes))
                    .collect::<Vec<_>>()
            };
            assert_eq!(rows(&from_events), rows(&from_row), "{g:?}");
        }
        assert_eq!(from_events.rank(&by[0], Metric::Events).unwrap().rows.len(), 1);
    }

    #[test]
    fn events_decode() {
        let mut r = RawEvent {
            ts_ns: 1_000,
            pid: 77,
            netns: 5,
            family: abi::AF_INET6,
            sport: 1,
            dport: 2,
            kind: abi::KIND_FAILED_CONNECT,
            prev_state: 2,
            flags: abi::FLAG_OWNER_KNOWN,
            error: libc::ECONNREFUSED,
            cgroup_id: 9,
            ..RawEvent::default()
        };
        r.comm[..4].copy_from_slice(b"curl");
        r.daddr[15] = 1;
        let clock = WallClock { offset_ns: 10 };
        let e = event_from_raw(&r, &clock).unwrap();
        assert_eq!(e.time_ns, Some(1_010));
        assert_eq!(e.kind, EventKind::FailedConnect);
        assert_eq!(e.comm, "curl");
        assert_eq!(e.daddr, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(e.error, Some(libc::ECONNREFUSED));
        assert_eq!(e.prev_state, Some(TcpState::SynSent));
        assert_eq!(e.cgroup_id, Some(9));
        assert_eq!(e.direction, Direction::Unknown);
        r.direction = abi::DIR_OUTBOUND;
        assert_eq!(event_from_raw(&r, &clock).unwrap().direction, Direction::Outbound);
        r.flags = 0;
        r.kind = abi::KIND_CLOSE;
        let e = event_from_raw(&r, &clock).unwrap();
        assert_eq!((e.pid, e.comm.as_str()), (0, ""));
        assert!(!e.owner_known());
        assert_eq!(e.cgroup_id, None);
        assert_eq!(e.error, None);
        r.kind = 99;
        assert!(event_from_raw(&r, &clock).is_none());
    }

    #[test]
    fn wall_clock_is_close_to_now() {
        let c = WallClock::now();
        let mono = clock_ns(libc::CLOCK_MONOTONIC) as u64;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(c.unix_ns(mono).abs_diff(unix) < 1_000_000_000);
    }
}
