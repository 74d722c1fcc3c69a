//! Ports held at once per destination, from timed connection events.
//!
//! A SNAT port is used per destination (IP and port) from a connection's start until
//! about four minutes after it closes, so what counts against a node's budget is not how
//! many connects a log holds, but how many fell within one such hold time. A log of an
//! hour with 1,000 short connects to one destination, one every 3.6 s, needs about 67
//! ports, not 1,000. [`HeldPorts`] takes the connect and failed-connect events of a log in
//! time order and gives, for each destination, the most connects within any window of the
//! hold time (a sliding window over the events' times), and when that peak came.
//!
//! This is an estimate from connection starts: a connection open for longer than the hold
//! time keeps its port beyond the window, which a census of open sockets shows instead.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use crate::model::TcpEvent;

/// Azure's hold time for a SNAT port after its connection closes: about four minutes.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(240);

/// One destination's peak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationPeak {
    /// Destination address (an IPv4-mapped IPv6 address as the IPv4 address it holds:
    /// both take the same IPv4 SNAT port).
    pub daddr: IpAddr,
    /// Destination port.
    pub dport: u16,
    /// The most connects (and failed connects) to it within one hold time.
    pub peak: u64,
    /// When the window holding the peak ended: the time of its last event, in the events'
    /// clock (nanoseconds).
    pub at_ns: u64,
    /// All its connects in the events.
    pub connects: u64,
}

#[derive(Debug, Default)]
struct Dest {
    window: VecDeque<u64>,
    peak: u64,
    at_ns: u64,
    connects: u64,
}

/// Sliding-window peaks of connects per destination. Feed events with [`HeldPorts::add`],
/// then [`HeldPorts::finish`]. Memory grows with the connects inside one hold time, not
/// with the log.
#[derive(Debug)]
pub struct HeldPorts {
    hold_ns: u64,
    dests: HashMap<(IpAddr, u16), Dest>,
    timed: u64,
    untimed: u64,
    out_of_order: u64,
}

impl HeldPorts {
    /// Peaks over windows of `hold` (see [`DEFAULT_HOLD`]).
    pub fn new(hold: Duration) -> HeldPorts {
        HeldPorts {
            hold_ns: u64::try_from(hold.as_nanos()).unwrap_or(u64::MAX),
            dests: HashMap::new(),
            timed: 0,
            untimed: 0,
            out_of_order: 0,
        }
    }

    /// Count one event: connects and failed connects (each takes a port) with a time;
    /// other kinds are ignored, and events without a time only counted as such.
    pub fn add(&mut self, ev: &TcpEvent) {
        if !ev.is_outbound() {
            return;
        }
        let Some(t) = ev.time_ns else {
            self.untimed += 1;
            return;
        };
        self.timed += 1;
        // An IPv4-mapped destination uses the same IPv4 SNAT port as the IPv4 address.
        let d = self.dests.entry((ev.daddr.to_canonical(), ev.dport)).or_default();
        d.connects += 1;
        // Events from several CPUs may come slightly out of order: count such an event at
        // the latest time seen, which keeps the window sorted.
        let t = match d.window.back() {
            Some(&last) if t < last => {
                self.out_of_order += 1;
                last
            }
            _ => t,
        };
        d.window.push_back(t);
        while d.window.front().is_some_and(|&f| t - f >= self.hold_ns) {
            d.window.pop_front();
        }
        let n = d.window.len() as u64;
        if n > d.peak {
            d.peak = n;
            d.at_ns = t;
        }
    }

    /// Connect events that had a time.
    pub fn timed(&self) -> u64 {
        self.timed
    }

    /// Connect events without a time (a log without its TIME column).
    pub fn untimed(&self) -> u64 {
        self.untimed
    }

    /// Events counted at a later time than their own because an earlier one came after
    /// them.
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    /// The peaks, highest first (then by destination).
    pub fn finish(self) -> Vec<DestinationPeak> {
        let mut out: Vec<DestinationPeak> = self
            .dests
            .into_iter()
            .map(|((daddr, dport), d)| DestinationPeak {
                daddr,
                dport,
                peak: d.peak,
                at_ns: d.at_ns,
                connects: d.connects,
            })
            .collect();
        out.sort_by(|a, b| {
            b.peak
                .cmp(&a.peak)
                .then_with(|| (a.daddr, a.dport).cmp(&(b.daddr, b.dport)))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Clock, EventKind, Family};
    use proptest::prelude::*;
    use rstest::rstest;

    fn ev(t: Option<u64>, kind: EventKind, daddr: &str) -> TcpEvent {
        TcpEvent {
            time_ns: t,
            clock: Clock::Relative,
            kind,
            direction: kind.direction(),
            pid: 1,
            comm: "c".into(),
            family: Family::Ipv4,
            saddr: "10.0.0.1".parse().unwrap(),
            daddr: daddr.parse().unwrap(),
            sport: 1000,
            dport: 443,
            netns: None,
            cgroup_id: None,
            prev_state: None,
            duration_ns: None,
            error: None,
        }
    }

    const S: u64 = 1_000_000_000;

    #[rstest]
    // One connect every 3.6 s for an hour: 67 fall within 240 s (0, 3.6, ..., 237.6).
    #[case::an_hour_of_spaced_connects((0..1000).map(|i| i * 3_600_000_000).collect(), 240, 67, 1000)]
    // A burst: all within one window.
    #[case::a_burst((0..500).map(|i| i * 1_000_000).collect(), 240, 500, 500)]
    // Exactly one hold apart: the first has left the window when the second comes.
    #[case::one_hold_apart(vec![0, 240 * S], 240, 1, 2)]
    #[case::just_inside(vec![0, 240 * S - 1], 240, 2, 2)]
    fn peaks_within_the_hold_time(
        #[case] times: Vec<u64>,
        #[case] hold: u64,
        #[case] peak: u64,
        #[case] connects: u64,
    ) {
        let mut h = HeldPorts::new(Duration::from_secs(hold));
        for t in &times {
            h.add(&ev(Some(*t), EventKind::Connect, "20.1.2.3"));
        }
        let p = h.finish();
        assert_eq!((p[0].peak, p[0].connects), (peak, connects));
    }

    #[test]
    fn only_connects_with_a_time_count_per_destination() {
        let mut h = HeldPorts::new(DEFAULT_HOLD);
        h.add(&ev(Some(0), EventKind::Connect, "20.1.2.3"));
        h.add(&ev(Some(S), EventKind::FailedConnect, "20.1.2.3"));
        h.add(&ev(Some(2 * S), EventKind::Close, "20.1.2.3"));
        h.add(&ev(Some(3 * S), EventKind::Accept, "20.1.2.3"));
        h.add(&ev(Some(4 * S), EventKind::Connect, "20.9.9.9"));
        h.add(&ev(None, EventKind::Connect, "20.1.2.3"));
        // Out of order: counted at 4 s, the latest time seen for that destination.
        h.add(&ev(Some(S / 2), EventKind::Connect, "20.9.9.9"));
        assert_eq!((h.timed(), h.untimed(), h.out_of_order()), (4, 1, 1));
        let p = h.finish();
        let got: Vec<(String, u64, u64, u64)> = p
            .iter()
            .map(|d| (d.daddr.to_string(), d.peak, d.at_ns, d.connects))
            .collect();
        assert_eq!(
            got,
            [("20.1.2.3".to_string(), 2, S, 2), ("20.9.9.9".to_string(), 2, 4 * S, 2)]
        );
    }

    /// A dual-stack socket's connects to `::ffff:20.1.2.3` hold the same IPv4 SNAT ports
    /// as IPv4 connects to 20.1.2.3: one destination, one window.
    #[test]
    fn ipv4_mapped_destinations_share_the_ipv4_window() {
        let mut h = HeldPorts::new(DEFAULT_HOLD);
        h.add(&ev(Some(0), EventKind::Connect, "20.1.2.3"));
        let mut mapped = ev(Some(S), EventKind::Connect, "::ffff:20.1.2.3");
        mapped.family = Family::Ipv6;
        h.add(&mapped);
        let p = h.finish();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            (p[0].daddr.to_string(), p[0].peak, p[0].connects),
            ("20.1.2.3".to_string(), 2, 2)
        );
    }

    proptest! {
        /// The sliding window agrees with counting, for every event, the events within
        /// one hold before it.
        #[test]
        fn matches_a_brute_force_count(mut times in proptest::collection::vec(0u64..2_000, 1..200), hold in 1u64..500) {
            times.sort_unstable();
            let mut h = HeldPorts::new(Duration::from_nanos(hold));
            for t in &times {
                h.add(&ev(Some(*t), EventKind::Connect, "20.1.2.3"));
            }
            let want = times
                .iter()
                .enumerate()
                .map(|(i, &t)| times[..=i].iter().filter(|&&u| t - u < hold).count() as u64)
                .max()
                .unwrap();
            prop_assert_eq!(h.finish()[0].peak, want);
        }
    }
}
