//! Per-node SNAT pressure: which destination runs a node out of ports first, and whose
//! flows fill it.
//!
//! A load balancer gives each node a fixed budget of SNAT ports (see
//! [`crate::allocation`]), and for TCP it consumes one port per concurrent flow to the same
//! destination IP and port; the same port is reused for other destinations. So what runs
//! out is the node's hottest destination: its pressure is the sum, over every owner (pod
//! or process) on the node, of their concurrent public flows to that (IP, port), and the
//! node's pressure is the highest such sum as a fraction of the budget. [`pressure`] takes
//! the flows a census counted (ESTABLISHED + SYN_SENT connections to public destinations,
//! per owner and destination) and ranks destinations and owners, with the alert levels
//! Microsoft suggests for `UsedSnatPorts / AllocatedSnatPorts` (75 % and 90 %). Ties are
//! broken by address and owner name, so the same input always gives the same report.
//! TCP only: for UDP, a port is consumed per destination IP whatever the port, so UDP
//! flows would have to be keyed with port 0 by the caller.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The fraction of the budget from which a node is at [`Level::Warning`] (Microsoft's
/// suggested first alert on used/allocated SNAT ports).
pub const WARNING_FRACTION: f64 = 0.75;

/// The fraction of the budget from which a node is at [`Level::Critical`] (Microsoft's
/// suggested second alert).
pub const CRITICAL_FRACTION: f64 = 0.90;

/// How close a node is to running out of SNAT ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Below 75 % of the budget.
    Ok,
    /// At least 75 %.
    Warning,
    /// At least 90 % (including over budget).
    Critical,
}

impl Level {
    /// The level of a fraction of the budget (NaN counts as Ok).
    pub fn of(fraction: f64) -> Level {
        if fraction >= CRITICAL_FRACTION {
            Level::Critical
        } else if fraction >= WARNING_FRACTION {
            Level::Warning
        } else {
            Level::Ok
        }
    }

    /// `ok`, `warning` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One owner's flows to one destination.
///
/// JSON: `owner`, `flows`, `share` (of the destination's flows), `share_of_budget`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnerFlows {
    /// Pod UID or process label, as given.
    pub owner: String,
    /// Its concurrent flows to the destination.
    pub flows: u64,
    /// `flows` / the destination's flows (0 to 1).
    pub share: f64,
    /// `flows` / the node's budget.
    pub share_of_budget: f64,
}

/// The pressure on one destination (IP, port) of a node.
///
/// JSON: `dst` (`"ip:port"`), `flows`, `fraction`, `level`, `owners` (ranked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationPressure {
    /// The destination.
    pub dst: SocketAddr,
    /// Concurrent flows to it from all owners: the SNAT ports it needs.
    pub flows: u64,
    /// `flows` / budget (above 1 when over budget).
    pub fraction: f64,
    /// The level of `fraction`.
    pub level: Level,
    /// Owners with flows to it, most flows first, then by name.
    pub owners: Vec<OwnerFlows>,
}

/// One owner's part in the node's pressure.
///
/// JSON: `owner`, `flows_on_hottest`, `share_of_budget`, `peak_flows`, `peak_destination`,
/// `total_flows`, `destinations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnerShare {
    /// Pod UID or process label.
    pub owner: String,
    /// Its flows to the node's hottest destination.
    pub flows_on_hottest: u64,
    /// `flows_on_hottest` / budget: its share of the ports that run out first.
    pub share_of_budget: f64,
    /// Its most flows to any one destination.
    pub peak_flows: u64,
    /// That destination (the first by address on ties).
    pub peak_destination: SocketAddr,
    /// Its flows to all destinations.
    pub total_flows: u64,
    /// How many destinations it has flows to.
    pub destinations: usize,
}

/// A node's SNAT pressure.
///
/// JSON: `budget`, `level`, `fraction`, `exhausted`, `hottest` (a destination or null),
/// `destinations` (ranked), `owners` (ranked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PressureReport {
    /// SNAT ports the node has (its `AllocatedSnatPorts`).
    pub budget: u32,
    /// The level of the hottest destination.
    pub level: Level,
    /// The hottest destination's flows / budget (0 with no flows).
    pub fraction: f64,
    /// Whether the hottest destination needs at least the whole budget: new connections
    /// to it fail.
    pub exhausted: bool,
    /// The destination that runs out first (the first of `destinations`).
    pub hottest: Option<DestinationPressure>,
    /// Every destination, most flows first, ties by address then port.
    pub destinations: Vec<DestinationPressure>,
    /// Every owner, most flows on the hottest destination first, then most flows to any
    /// one destination, then most flows in total, then by name.
    pub owners: Vec<OwnerShare>,
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

/// Computes a node's SNAT pressure from its flows: `(owner, destination, concurrent
/// flows)` triples, where repeated (owner, destination) pairs add up and zero counts are
/// ignored. `budget` is the node's SNAT ports (e.g. [`crate::allocation::Allocation`]'s
/// `ports_per_node`); it must not be 0.
pub fn pressure<I, S>(flows: I, budget: u32) -> Result<PressureReport, Error>
where
    I: IntoIterator<Item = (S, SocketAddr, u64)>,
    S: Into<String>,
{
    if budget == 0 {
        return Err(Error::InvalidArgument(
            "a SNAT port budget of 0 leaves nothing to measure against: give the node's ports (allocatedOutboundPorts or the default table's value)".into(),
        ));
    }
    // dst -> owner -> flows; BTreeMaps make every later order deterministic.
    let mut by_dst: BTreeMap<SocketAddr, BTreeMap<String, u64>> = BTreeMap::new();
    for (owner, dst, count) in flows {
        if count == 0 {
            continue;
        }
        let slot = by_dst.entry(dst).or_default().entry(owner.into()).or_default();
        *slot = slot.saturating_add(count);
    }
    let budget64 = u64::from(budget);
    let mut destinations: Vec<DestinationPressure> = by_dst
        .into_iter()
        .map(|(dst, owners)| {
            let total = owners.values().fold(0u64, |a, &b| a.saturating_add(b));
            let mut owners: Vec<OwnerFlows> = owners
                .into_iter()
                .map(|(owner, flows)| OwnerFlows {
                    owner,
                    flows,
                    share: ratio(flows, total),
                    share_of_budget: ratio(flows, budget64),
                })
                .collect();
            owners.sort_by(|a, b| b.flows.cmp(&a.flows).then_with(|| a.owner.cmp(&b.owner)));
            let fraction = ratio(total, budget64);
            DestinationPressure {
                dst,
                flows: total,
                fraction,
                level: Level::of(fraction),
                owners,
            }
        })
        .collect();
    // Stable sort on flows only: equal destinations keep the map's address order.
    destinations.sort_by_key(|d| std::cmp::Reverse(d.flows));

    let hottest = destinations.first().cloned();
    let mut per_owner: BTreeMap<&str, OwnerShare> = BTreeMap::new();
    for (rank, d) in destinations.iter().enumerate() {
        for o in &d.owners {
            let share = per_owner.entry(&o.owner).or_insert_with(|| OwnerShare {
                owner: o.owner.clone(),
                flows_on_hottest: 0,
                share_of_budget: 0.0,
                peak_flows: 0,
                peak_destination: d.dst,
                total_flows: 0,
                destinations: 0,
            });
            if rank == 0 {
                share.flows_on_hottest = o.flows;
                share.share_of_budget = ratio(o.flows, budget64);
            }
            if o.flows > share.peak_flows || (o.flows == share.peak_flows && d.dst < share.peak_destination) {
                share.peak_flows = o.flows;
                share.peak_destination = d.dst;
            }
            share.total_flows = share.total_flows.saturating_add(o.flows);
            share.destinations += 1;
        }
    }
    let mut owners: Vec<OwnerShare> = per_owner.into_values().collect();
    owners.sort_by(|a, b| {
        b.flows_on_hottest
            .cmp(&a.flows_on_hottest)
            .then_with(|| b.peak_flows.cmp(&a.peak_flows))
            .then_with(|| b.total_flows.cmp(&a.total_flows))
            .then_with(|| a.owner.cmp(&b.owner))
    });
    let fraction = hottest.as_ref().map_or(0.0, |h| h.fraction);
    Ok(PressureReport {
        budget,
        level: Level::of(fraction),
        fraction,
        exhausted: hottest.as_ref().is_some_and(|h| h.flows >= budget64),
        hottest,
        destinations,
        owners,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hand_computed_report() {
        // Budget 1024. 20.1.1.1:443 gets 600 (pod-a) + 250 (pod-b) = 850 -> 83 % (warning);
        // 20.1.1.1:80 gets 700 (pod-b) -> 68 %: the same IP on another port is another
        // destination; 20.2.2.2:443 gets 100 (pod-c) + 100 (pod-a, in two rows).
        let flows = vec![
            ("pod-a", sa("20.1.1.1:443"), 400),
            ("pod-b", sa("20.1.1.1:443"), 250),
            ("pod-a", sa("20.1.1.1:443"), 200),
            ("pod-b", sa("20.1.1.1:80"), 700),
            ("pod-c", sa("20.2.2.2:443"), 100),
            ("pod-a", sa("20.2.2.2:443"), 60),
            ("pod-a", sa("20.2.2.2:443"), 40),
            ("pod-d", sa("20.3.3.3:443"), 0),
        ];
        let r = pressure(flows, 1024).unwrap();
        let dsts: Vec<(String, u64)> = r.destinations.iter().map(|d| (d.dst.to_string(), d.flows)).collect();
        assert_eq!(
            dsts,
            [
                ("20.1.1.1:443".into(), 850),
                ("20.1.1.1:80".into(), 700),
                ("20.2.2.2:443".into(), 200)
            ]
        );
        let hot = r.hottest.as_ref().unwrap();
        assert_eq!(hot.dst, sa("20.1.1.1:443"));
        assert!((r.fraction - 850.0 / 1024.0).abs() < 1e-12);
        assert_eq!(r.level, Level::Warning);
        assert!(!r.exhausted);
        assert_eq!(hot.owners[0].owner, "pod-a");
        assert_eq!(hot.owners[0].flows, 600);
        assert!((hot.owners[0].share - 600.0 / 850.0).abs() < 1e-12);
        assert_eq!(r.destinations[1].level, Level::Ok);
        let owners: Vec<(&str, u64, u64, u64)> = r
            .owners
            .iter()
            .map(|o| (o.owner.as_str(), o.flows_on_hottest, o.peak_flows, o.total_flows))
            .collect();
        // pod-b has fewer flows on the hottest destination than pod-a, pod-c none.
        assert_eq!(
            owners,
            [
                ("pod-a", 600, 600, 700),
                ("pod-b", 250, 700, 950),
                ("pod-c", 0, 100, 100)
            ]
        );
        assert!((r.owners[0].share_of_budget - 600.0 / 1024.0).abs() < 1e-12);
        assert_eq!(r.owners[1].peak_destination, sa("20.1.1.1:80"));
        assert_eq!(r.owners[1].destinations, 2);
        assert!(r.owners.iter().all(|o| o.owner != "pod-d"), "zero counts are ignored");
    }

    #[rstest]
    #[case(0, Level::Ok)]
    #[case(767, Level::Ok)]
    #[case(768, Level::Warning)]
    #[case(921, Level::Warning)]
    #[case(922, Level::Critical)]
    #[case(1024, Level::Critical)]
    #[case(5000, Level::Critical)]
    fn levels_at_1024(#[case] flows: u64, #[case] level: Level) {
        // 75 % of 1024 is 768; 90 % is 921.6.
        let r = pressure([("p", sa("20.0.0.1:443"), flows)], 1024).unwrap();
        assert_eq!(r.level, level);
        assert_eq!(r.exhausted, flows >= 1024);
    }

    #[test]
    fn ties_are_deterministic() {
        let a = [
            ("z", sa("20.0.0.2:443"), 5),
            ("y", sa("20.0.0.1:443"), 5),
            ("x", sa("[2001:db8::1]:443"), 5),
        ];
        let mut b = a;
        b.reverse();
        let ra = pressure(a, 64).unwrap();
        let rb = pressure(b, 64).unwrap();
        assert_eq!(ra, rb);
        assert_eq!(ra.hottest.unwrap().dst, sa("20.0.0.1:443"));
        let names: Vec<&str> = ra.owners.iter().map(|o| o.owner.as_str()).collect();
        assert_eq!(
            names,
            ["y", "x", "z"],
            "y owns the hottest destination; x and z tie and go by name"
        );
    }

    #[test]
    fn empty_and_bad_budget() {
        let r = pressure(Vec::<(String, SocketAddr, u64)>::new(), 1024).unwrap();
        assert_eq!(
            (r.level, r.fraction, r.hottest.is_none(), r.owners.len()),
            (Level::Ok, 0.0, true, 0)
        );
        let msg = pressure([("p", sa("20.0.0.1:443"), 1)], 0).unwrap_err().to_string();
        assert!(msg.contains("budget"), "{msg}");
    }

    #[test]
    fn report_json_shape() {
        let v = serde_json::to_value(pressure([("pod-a", sa("20.0.0.1:443"), 950)], 1024).unwrap()).unwrap();
        assert_eq!(v["level"], "critical");
        assert_eq!(v["hottest"]["dst"], "20.0.0.1:443");
        assert_eq!(v["owners"][0]["owner"], "pod-a");
        assert_eq!(v["destinations"][0]["owners"][0]["flows"], 950);
    }

    fn flow_strategy() -> impl Strategy<Value = Vec<(String, SocketAddr, u64)>> {
        proptest::collection::vec(
            ("[a-d]", 0u8..4, prop_oneof![Just(80u16), Just(443u16)], 0u64..5000)
                .prop_map(|(o, h, port, n)| (o, SocketAddr::from(([20, 0, 0, h], port)), n)),
            0..40,
        )
    }

    proptest! {
        #[test]
        fn shares_sum_to_flows(flows in flow_strategy(), budget in 1u32..70_000) {
            let total_in: u64 = flows.iter().map(|f| f.2).sum();
            let r = pressure(flows, budget).unwrap();
            let mut total_out = 0;
            for d in &r.destinations {
                prop_assert_eq!(d.owners.iter().map(|o| o.flows).sum::<u64>(), d.flows);
                if d.flows > 0 {
                    prop_assert!((d.owners.iter().map(|o| o.share).sum::<f64>() - 1.0).abs() < 1e-9);
                }
                total_out += d.flows;
            }
            prop_assert_eq!(total_out, total_in);
            prop_assert_eq!(r.owners.iter().map(|o| o.total_flows).sum::<u64>(), total_in);
            let hot = r.hottest.as_ref().map_or(0, |h| h.flows);
            prop_assert_eq!(r.owners.iter().map(|o| o.flows_on_hottest).sum::<u64>(), hot);
            prop_assert!(r.destinations.iter().all(|d| d.flows <= hot));
        }

        #[test]
        fn levels_are_monotonic(a in 0u64..200_000, b in 0u64..200_000, budget in 1u32..70_000) {
            let (lo, hi) = (a.min(b), a.max(b));
            let l = |n| pressure([("p", SocketAddr::from(([20, 0, 0, 1], 443)), n)], budget).unwrap().level;
            prop_assert!(l(lo) <= l(hi));
            prop_assert!(Level::of(lo as f64 / 1000.0) <= Level::of(hi as f64 / 1000.0));
        }
    }
}
