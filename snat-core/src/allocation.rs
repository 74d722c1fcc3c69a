//! SNAT port budgets on Azure: how many ports each node gets, and how many it needs.
//!
//! With AKS's `outboundType: loadBalancer`, every node (backend instance) gets a fixed
//! number of SNAT ports, either from Azure's default table (by backend pool size) or from
//! the cluster's `allocatedOutboundPorts`; each frontend IP brings 64,000 ports to share
//! out. A node that needs more than its share fails connections even while the load
//! balancer has ports to spare. [`AllocationInput::compute`] says what a cluster's nodes
//! get (and whether the pool still fits during an upgrade's surge nodes);
//! [`recommend`] turns an observed peak of concurrent flows to one destination into an
//! `allocatedOutboundPorts` value and a number of outbound IPs, or says when only a NAT
//! gateway can carry it. Sources: MicrosoftDocs/azure-docs
//! `articles/load-balancer/load-balancer-outbound-connections.md` (port table, 64,000
//! ports per IP, manual allocation), MicrosoftDocs/azure-aks-docs
//! `articles/aks/configure-load-balancer-standard.md` (`allocatedOutboundPorts`: 0..=64000,
//! multiples of 8, 0 = table) and `articles/nat-gateway/nat-gateway-resource.md` (NAT
//! gateway: 64,512 ports per IP, up to 16 IPs, 50,000 connections per IP to one
//! destination).

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// SNAT ports each load balancer frontend IP provides (load-balancer-outbound-connections.md).
pub const PORTS_PER_FRONTEND_IP: u32 = 64_000;

/// The largest `allocatedOutboundPorts` AKS accepts (configure-load-balancer-standard.md).
pub const MAX_ALLOCATED_OUTBOUND_PORTS: u32 = 64_000;

/// `allocatedOutboundPorts` must be a multiple of this (configure-load-balancer-standard.md).
pub const PORT_GRANULARITY: u32 = 8;

/// SNAT ports per NAT gateway public IP (nat-gateway-resource.md).
pub const NAT_GATEWAY_PORTS_PER_IP: u32 = 64_512;

/// Public IPs a NAT gateway can have (nat-gateway-resource.md).
pub const NAT_GATEWAY_MAX_IPS: u32 = 16;

/// Concurrent connections a NAT gateway IP carries to one destination (nat-gateway-resource.md).
pub const NAT_GATEWAY_CONNECTIONS_PER_IP_PER_DESTINATION: u32 = 50_000;

/// Azure's default SNAT port pre-allocation for ONE frontend IP: `(largest backend pool
/// size, ports per instance)`, smallest pools first (load-balancer-outbound-connections.md).
/// Each extra frontend IP adds as much again, up to [`DEFAULT_ALLOCATION_CAP`]. The table
/// ends at 1,000 instances.
pub const DEFAULT_PORT_TABLE: [(u32, u32); 6] = [(50, 1024), (100, 512), (200, 256), (400, 128), (800, 64), (1000, 32)];

/// The headroom [`recommend`] callers should use unless they know better: 1.5x the
/// observed peak keeps that peak at 67 % of the allocation, under the 75 % level at which
/// Microsoft suggests a first alert on `UsedSnatPorts / AllocatedSnatPorts`, and leaves a
/// margin for the ports closed connections keep for a while (about 240 s after FIN).
pub const DEFAULT_HEADROOM: f64 = 1.5;

/// Default ports per node for a backend pool of `pool_size` instances and one frontend IP
/// (see [`default_ports_with_ips`] for more IPs).
///
/// Errors for an empty pool, and for pools beyond 1,000 instances, where the published
/// table ends.
pub fn default_ports_per_node(pool_size: u32) -> Result<u32, Error> {
    if pool_size == 0 {
        return Err(Error::InvalidArgument("a backend pool needs at least one node".into()));
    }
    DEFAULT_PORT_TABLE
        .iter()
        .find(|(max, _)| pool_size <= *max)
        .map(|(_, ports)| *ports)
        .ok_or(Error::PoolBeyondTable { nodes: pool_size })
}

/// The most ports default allocation gives a node, however many frontend IPs there are
/// (load-balancer-outbound-connections.md: the table's ports per frontend IP, "up to a
/// maximum of 1024").
pub const DEFAULT_ALLOCATION_CAP: u32 = 1024;

/// Ports per node under default allocation with `frontend_ips` IPs: the table's value
/// for the pool, per frontend IP, capped at 1,024.
pub fn default_ports_with_ips(pool_size: u32, frontend_ips: u32) -> Result<u32, Error> {
    let per_ip = default_ports_per_node(pool_size)?;
    Ok(per_ip.saturating_mul(frontend_ips).min(DEFAULT_ALLOCATION_CAP))
}

/// The largest pool, from `pool_size` up, whose nodes keep the same default allocation.
fn tier_end(pool_size: u32, frontend_ips: u32) -> u32 {
    let ports = default_ports_with_ips(pool_size, frontend_ips).ok();
    DEFAULT_PORT_TABLE
        .iter()
        .filter(|(max, _)| *max >= pool_size)
        .take_while(|(max, _)| default_ports_with_ips(*max, frontend_ips).ok() == ports)
        .map(|(max, _)| *max)
        .last()
        .unwrap_or(pool_size)
}

/// Checks an `allocatedOutboundPorts` value: 0..=64000, a multiple of 8.
pub fn validate_allocated_ports(ports: u32) -> Result<(), Error> {
    if ports > MAX_ALLOCATED_OUTBOUND_PORTS {
        return Err(Error::InvalidAllocatedPorts {
            ports,
            reason: "it is above 64000",
        });
    }
    if !ports.is_multiple_of(PORT_GRANULARITY) {
        return Err(Error::InvalidAllocatedPorts {
            ports,
            reason: "it is not a multiple of 8",
        });
    }
    Ok(())
}

/// Where a node's port count comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortSource {
    /// Azure's default table, by backend pool size (`allocatedOutboundPorts` 0 or unset).
    Table,
    /// An explicit `allocatedOutboundPorts`.
    Manual,
}

/// A cluster's outbound setup, for [`AllocationInput::compute`].
///
/// ```
/// use snat_core::allocation::AllocationInput;
/// let a = AllocationInput::new(60).frontend_ips(2).allocated_outbound_ports(2048).surge_nodes(3).compute().unwrap();
/// assert_eq!(a.ports_per_node, 2048);
/// assert_eq!(a.max_nodes_that_fit, 62); // 2 x 64,000 / 2,048
/// assert!(!a.fits_with_surge);          // 60 + 3 > 62
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AllocationInput {
    /// Nodes in the load balancer's backend pool (all node pools of the cluster).
    pub nodes: u32,
    /// Outbound (frontend) public IPs.
    pub frontend_ips: u32,
    /// The cluster's `allocatedOutboundPorts`; None or 0 means Azure's default table.
    pub allocated_outbound_ports: Option<u32>,
    /// Extra nodes that join during an upgrade (e.g. the node pools' `maxSurge` counts).
    pub surge_nodes: u32,
}

impl AllocationInput {
    /// `nodes` nodes, one frontend IP, the default table, no surge.
    pub fn new(nodes: u32) -> AllocationInput {
        AllocationInput {
            nodes,
            frontend_ips: 1,
            allocated_outbound_ports: None,
            surge_nodes: 0,
        }
    }

    /// Sets the number of outbound IPs.
    pub fn frontend_ips(mut self, n: u32) -> Self {
        self.frontend_ips = n;
        self
    }

    /// Sets `allocatedOutboundPorts` (0 = the default table).
    pub fn allocated_outbound_ports(mut self, ports: u32) -> Self {
        self.allocated_outbound_ports = Some(ports);
        self
    }

    /// Sets the surge headroom, in nodes.
    pub fn surge_nodes(mut self, n: u32) -> Self {
        self.surge_nodes = n;
        self
    }

    /// What each node gets, and whether the pool fits.
    pub fn compute(&self) -> Result<Allocation, Error> {
        if self.nodes == 0 {
            return Err(Error::InvalidArgument("a backend pool needs at least one node".into()));
        }
        if self.frontend_ips == 0 {
            return Err(Error::InvalidArgument(
                "the load balancer needs at least one outbound (frontend) IP for SNAT".into(),
            ));
        }
        let total_ports = u64::from(self.frontend_ips) * u64::from(PORTS_PER_FRONTEND_IP);
        let with_surge = self.nodes.saturating_add(self.surge_nodes);
        let mut notes = Vec::new();
        let manual = match self.allocated_outbound_ports {
            Some(p) => {
                validate_allocated_ports(p)?;
                (p > 0).then_some(p)
            }
            None => None,
        };
        let alloc = match manual {
            Some(ports) => {
                let max_nodes = u32::try_from(total_ports / u64::from(ports)).unwrap_or(u32::MAX);
                if self.nodes > max_nodes {
                    notes.push(format!(
                        "{} nodes x {ports} ports need more than the {total_ports} ports of {} frontend IP(s): Azure rejects this allocation or new nodes get no outbound ports; add IPs or lower allocatedOutboundPorts",
                        self.nodes, self.frontend_ips
                    ));
                } else if with_surge > max_nodes {
                    notes.push(format!(
                        "only {max_nodes} nodes fit: the {} surge node(s) of an upgrade do not; add IPs or lower allocatedOutboundPorts",
                        self.surge_nodes
                    ));
                }
                Allocation {
                    ports_per_node: ports,
                    source: PortSource::Manual,
                    nodes: self.nodes,
                    surge_nodes: self.surge_nodes,
                    frontend_ips: self.frontend_ips,
                    total_ports,
                    max_nodes_that_fit: max_nodes,
                    fits: self.nodes <= max_nodes,
                    fits_with_surge: with_surge <= max_nodes,
                    ports_per_node_during_surge: Some(ports),
                    largest_manual_ports_with_surge: 0,
                    notes,
                }
            }
            None => {
                let ports = default_ports_with_ips(self.nodes, self.frontend_ips)?;
                let during_surge = default_ports_with_ips(with_surge, self.frontend_ips).ok();
                let end = tier_end(self.nodes, self.frontend_ips);
                match during_surge {
                    None => notes.push(format!(
                        "with {} surge node(s) the pool ({with_surge}) goes beyond the default table's 1000 nodes: set allocatedOutboundPorts",
                        self.surge_nodes
                    )),
                    Some(s) if s < ports => notes.push(format!(
                        "during an upgrade the pool grows to {with_surge} nodes and every node's default allocation drops from {ports} to {s} ports"
                    )),
                    Some(_) => {}
                }
                let uncapped = default_ports_per_node(self.nodes)?.saturating_mul(self.frontend_ips);
                if uncapped > DEFAULT_ALLOCATION_CAP {
                    notes.push(format!(
                        "default allocation stops at {DEFAULT_ALLOCATION_CAP} ports per node, so part of the {total_ports} ports of {} frontend IP(s) is unused: set allocatedOutboundPorts (up to {}) to use them",
                        self.frontend_ips,
                        largest_manual_ports(total_ports, with_surge)
                    ));
                }
                Allocation {
                    ports_per_node: ports,
                    source: PortSource::Table,
                    nodes: self.nodes,
                    surge_nodes: self.surge_nodes,
                    frontend_ips: self.frontend_ips,
                    total_ports,
                    max_nodes_that_fit: end,
                    fits: true,
                    fits_with_surge: during_surge == Some(ports),
                    ports_per_node_during_surge: during_surge,
                    largest_manual_ports_with_surge: 0,
                    notes,
                }
            }
        };
        Ok(Allocation {
            largest_manual_ports_with_surge: largest_manual_ports(total_ports, with_surge),
            ..alloc
        })
    }
}

/// The largest valid `allocatedOutboundPorts` for `nodes` nodes sharing `total_ports`.
fn largest_manual_ports(total_ports: u64, nodes: u32) -> u32 {
    let per_node = total_ports / u64::from(nodes.max(1));
    let per_node = per_node.min(u64::from(MAX_ALLOCATED_OUTBOUND_PORTS)) as u32;
    per_node / PORT_GRANULARITY * PORT_GRANULARITY
}

/// What each node of a cluster gets.
///
/// JSON: `ports_per_node`, `source` (`table`/`manual`), `nodes`, `surge_nodes`,
/// `frontend_ips`, `total_ports`, `max_nodes_that_fit`, `fits`, `fits_with_surge`,
/// `ports_per_node_during_surge`, `largest_manual_ports_with_surge`, `notes`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Allocation {
    /// SNAT ports each node gets: its budget (Azure's `AllocatedSnatPorts` per backend IP).
    pub ports_per_node: u32,
    /// Table or manual.
    pub source: PortSource,
    /// Nodes in the pool.
    pub nodes: u32,
    /// Surge nodes allowed for.
    pub surge_nodes: u32,
    /// Frontend IPs.
    pub frontend_ips: u32,
    /// `frontend_ips` x 64,000.
    pub total_ports: u64,
    /// Manual: the most nodes that fit (`total_ports / ports_per_node`). Table: the
    /// largest pool that keeps `ports_per_node` (past it, every node's ports drop).
    pub max_nodes_that_fit: u32,
    /// Whether the current nodes fit (always true for the table, which is sized to fit).
    pub fits: bool,
    /// Whether `nodes + surge_nodes` fit without any node losing ports.
    pub fits_with_surge: bool,
    /// Ports per node while the surge nodes are in the pool (None: beyond the table).
    pub ports_per_node_during_surge: Option<u32>,
    /// The largest `allocatedOutboundPorts` that fits `nodes + surge_nodes` with these IPs.
    pub largest_manual_ports_with_surge: u32,
    /// Sentences for a human: what does not fit and what to do.
    pub notes: Vec<String>,
}

/// Outbound settings that carry an observed peak, from [`recommend`].
///
/// JSON: `peak_flows`, `headroom`, `nodes`, `surge_nodes`, `ports_needed`,
/// `allocated_outbound_ports`, `outbound_ips_needed`, `default_table_ports`,
/// `default_table_suffices`, `fits_load_balancer`, `nat_gateway_ips_needed`, `advice`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// Peak concurrent flows from one node to one destination (IP, port).
    pub peak_flows: u64,
    /// The headroom factor applied.
    pub headroom: f64,
    /// Nodes in the pool.
    pub nodes: u32,
    /// Surge nodes allowed for.
    pub surge_nodes: u32,
    /// `ceil(peak_flows x headroom)`.
    pub ports_needed: u64,
    /// `ports_needed` rounded up to a multiple of 8 (at least 8); None when even 64,000
    /// ports per node cannot carry it.
    pub allocated_outbound_ports: Option<u32>,
    /// Outbound IPs for `allocated_outbound_ports` on `nodes + surge_nodes` nodes
    /// (`ceil(ports x nodes / 64,000)`); None when it does not fit.
    pub outbound_ips_needed: Option<u32>,
    /// What default allocation gives each of `nodes + surge_nodes` nodes with one frontend
    /// IP (None beyond 1,000 nodes); more IPs multiply it, up to 1,024.
    pub default_table_ports: Option<u32>,
    /// Whether default allocation with one frontend IP already gives `ports_needed`.
    pub default_table_suffices: bool,
    /// Whether a load balancer can carry the peak at all (`ports_needed <= 64,000`).
    pub fits_load_balancer: bool,
    /// NAT gateway IPs for this node's peak to one destination
    /// (`ceil(ports_needed / 50,000)`); None above the 16-IP limit.
    pub nat_gateway_ips_needed: Option<u32>,
    /// One paragraph for a human.
    pub advice: String,
}

/// Recommends `allocatedOutboundPorts` and outbound IPs for a node whose hottest
/// destination saw `peak_flows_per_destination` concurrent flows, in a pool of `nodes`
/// nodes with `surge_nodes` more during upgrades. `headroom` multiplies the peak (use
/// [`DEFAULT_HEADROOM`] unless you know better); it must be finite and at least 1.
///
/// ```
/// use snat_core::allocation::{recommend, DEFAULT_HEADROOM};
/// let r = recommend(1500, 20, 2, DEFAULT_HEADROOM).unwrap();
/// assert_eq!(r.allocated_outbound_ports, Some(2256)); // 1500 x 1.5 = 2250 -> 2256
/// assert_eq!(r.outbound_ips_needed, Some(1));         // 22 x 2256 = 49,632 <= 64,000
/// ```
pub fn recommend(
    peak_flows_per_destination: u64,
    nodes: u32,
    surge_nodes: u32,
    headroom: f64,
) -> Result<Recommendation, Error> {
    if !headroom.is_finite() || headroom < 1.0 {
        return Err(Error::InvalidArgument(format!(
            "headroom {headroom} must be a finite factor of at least 1 (e.g. {DEFAULT_HEADROOM}: allocate 1.5x the peak)"
        )));
    }
    if nodes == 0 {
        return Err(Error::InvalidArgument("a backend pool needs at least one node".into()));
    }
    let peak = peak_flows_per_destination;
    // f64 is exact for integers below 2^53; a peak beyond that saturates, which is still
    // far above every limit here.
    let ports_needed = (peak as f64 * headroom).ceil().min(u64::MAX as f64) as u64;
    let pool = nodes.saturating_add(surge_nodes);
    let default_table_ports = default_ports_per_node(pool).ok();
    let default_table_suffices = default_table_ports.is_some_and(|d| u64::from(d) >= ports_needed);
    let fits_load_balancer = ports_needed <= u64::from(MAX_ALLOCATED_OUTBOUND_PORTS);
    let allocated = fits_load_balancer.then(|| {
        let rounded = ports_needed.div_ceil(u64::from(PORT_GRANULARITY)) * u64::from(PORT_GRANULARITY);
        rounded.max(u64::from(PORT_GRANULARITY)) as u32
    });
    let outbound_ips_needed = allocated.map(|p| {
        let total = u64::from(p) * u64::from(pool);
        u32::try_from(total.div_ceil(u64::from(PORTS_PER_FRONTEND_IP))).unwrap_or(u32::MAX)
    });
    let nat_ips = ports_needed
        .div_ceil(u64::from(NAT_GATEWAY_CONNECTIONS_PER_IP_PER_DESTINATION))
        .max(1);
    let nat_gateway_ips_needed = (nat_ips <= u64::from(NAT_GATEWAY_MAX_IPS)).then_some(nat_ips as u32);
    let advice = match (allocated, outbound_ips_needed) {
        (Some(p), Some(ips)) if default_table_suffices => format!(
            "a peak of {peak} concurrent flows to one destination needs {ports_needed} ports with {headroom}x headroom; default allocation already gives each of {pool} nodes {} ports with one frontend IP, so no change is needed (set allocatedOutboundPorts={p} with {ips} outbound IP(s) to pin it)",
            default_table_ports.unwrap_or(0)
        ),
        (Some(p), Some(ips)) => format!(
            "a peak of {peak} concurrent flows to one destination needs {ports_needed} ports with {headroom}x headroom: set allocatedOutboundPorts={p} and use at least {ips} outbound IP(s) for {pool} nodes ({nodes} + {surge_nodes} surge); reusing connections (keep-alive, pooling) lowers the need"
        ),
        _ => format!(
            "a peak of {peak} concurrent flows to one destination needs {ports_needed} ports with {headroom}x headroom, more than the 64000 a load balancer can give one node: use a NAT gateway (64512 ports per IP, up to 16 IPs, allocated on demand with no per-node quota, 50000 connections per IP to one destination{}) and make the application reuse connections",
            match nat_gateway_ips_needed {
                Some(n) => format!("; at least {n} IP(s) for this peak"),
                None => "; even 16 IPs cannot carry this peak to one destination".to_string(),
            }
        ),
    };
    Ok(Recommendation {
        peak_flows: peak,
        headroom,
        nodes,
        surge_nodes,
        ports_needed,
        allocated_outbound_ports: allocated,
        outbound_ips_needed,
        default_table_ports,
        default_table_suffices,
        fits_load_balancer,
        nat_gateway_ips_needed,
        advice,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    #[rstest]
    #[case(1, 1024)]
    #[case(50, 1024)]
    #[case(51, 512)]
    #[case(100, 512)]
    #[case(101, 256)]
    #[case(200, 256)]
    #[case(201, 128)]
    #[case(400, 128)]
    #[case(401, 64)]
    #[case(800, 64)]
    #[case(801, 32)]
    #[case(1000, 32)]
    fn default_table(#[case] pool: u32, #[case] ports: u32) {
        assert_eq!(default_ports_per_node(pool).unwrap(), ports);
        // The table is sized so that one frontend IP always covers the pool.
        assert!(pool * ports <= PORTS_PER_FRONTEND_IP);
    }

    #[test]
    fn table_ends_at_1000() {
        let msg = default_ports_per_node(1001).unwrap_err().to_string();
        assert!(
            msg.contains("1001") && msg.contains("1000") && msg.contains("allocatedOutboundPorts"),
            "{msg}"
        );
        assert!(default_ports_per_node(0).is_err());
    }

    #[rstest]
    #[case(0, true)]
    #[case(8, true)]
    #[case(64_000, true)]
    #[case(4, false)]
    #[case(1025, false)]
    #[case(64_008, false)]
    fn allocated_ports_validation(#[case] ports: u32, #[case] ok: bool) {
        assert_eq!(validate_allocated_ports(ports).is_ok(), ok);
        assert_eq!(
            AllocationInput::new(3)
                .allocated_outbound_ports(ports)
                .compute()
                .is_ok(),
            ok
        );
    }

    /// (nodes, ips, allocatedOutboundPorts, surge) -> (ports, source, max nodes, fits, fits with surge)
    #[rstest]
    #[case((10, 1, None, 0), (1024, PortSource::Table, 50, true, true))]
    #[case((50, 1, None, 1), (1024, PortSource::Table, 50, true, false))]
    #[case((51, 1, Some(0), 0), (512, PortSource::Table, 100, true, true))]
    #[case((60, 2, Some(2048), 3), (2048, PortSource::Manual, 62, true, false))]
    #[case((60, 2, Some(2048), 2), (2048, PortSource::Manual, 62, true, true))]
    #[case((10, 1, Some(8000), 0), (8000, PortSource::Manual, 8, false, false))]
    #[case((1, 1, Some(64_000), 0), (64_000, PortSource::Manual, 1, true, true))]
    #[case((3, 4, Some(64_000), 1), (64_000, PortSource::Manual, 4, true, true))]
    // Default allocation: the table's ports per frontend IP, capped at 1024.
    #[case((60, 2, None, 0), (1024, PortSource::Table, 100, true, true))]
    #[case((10, 3, None, 0), (1024, PortSource::Table, 100, true, true))]
    #[case((150, 4, None, 60), (1024, PortSource::Table, 200, true, false))]
    #[case((150, 4, None, 50), (1024, PortSource::Table, 200, true, true))]
    #[case((900, 2, Some(0), 0), (64, PortSource::Table, 1000, true, true))]
    fn allocations(#[case] input: (u32, u32, Option<u32>, u32), #[case] want: (u32, PortSource, u32, bool, bool)) {
        let (nodes, ips, manual, surge) = input;
        let input = AllocationInput {
            nodes,
            frontend_ips: ips,
            allocated_outbound_ports: manual,
            surge_nodes: surge,
        };
        let a = input.compute().unwrap();
        assert_eq!(
            (
                a.ports_per_node,
                a.source,
                a.max_nodes_that_fit,
                a.fits,
                a.fits_with_surge
            ),
            want
        );
        assert_eq!(a.total_ports, u64::from(ips) * 64_000);
        let capped = a.source == PortSource::Table && default_ports_per_node(nodes).unwrap() * ips > 1024;
        let quiet = a.fits_with_surge && !capped;
        assert_eq!(a.notes.is_empty(), quiet, "{:?}", a.notes);
    }

    #[test]
    fn default_allocation_cap_is_explained() {
        let a = AllocationInput::new(10).frontend_ips(3).compute().unwrap();
        assert_eq!(a.ports_per_node, 1024);
        assert!(
            a.notes[0].contains("stops at 1024") && a.notes[0].contains("up to 19200"),
            "{:?}",
            a.notes
        );
        assert_eq!(default_ports_with_ips(100, 2).unwrap(), 1024);
        assert_eq!(default_ports_with_ips(101, 2).unwrap(), 512);
        assert_eq!(default_ports_with_ips(1000, 5).unwrap(), 160);
    }

    #[test]
    fn surge_across_a_tier_halves_ports() {
        let a = AllocationInput::new(50).surge_nodes(1).compute().unwrap();
        assert_eq!(a.ports_per_node_during_surge, Some(512));
        assert!(a.notes[0].contains("from 1024 to 512"), "{:?}", a.notes);
        let a = AllocationInput::new(999).surge_nodes(5).compute().unwrap();
        assert_eq!(a.ports_per_node_during_surge, None);
        assert!(a.notes[0].contains("beyond the default table"), "{:?}", a.notes);
    }

    #[test]
    fn largest_manual_value_for_the_pool() {
        // 2 IPs, 60 + 3 nodes: 128,000 / 63 = 2031.7 -> 2024 (multiple of 8).
        let a = AllocationInput::new(60)
            .frontend_ips(2)
            .surge_nodes(3)
            .compute()
            .unwrap();
        assert_eq!(a.largest_manual_ports_with_surge, 2024);
        // Capped at 64,000 per node.
        let a = AllocationInput::new(1).frontend_ips(3).compute().unwrap();
        assert_eq!(a.largest_manual_ports_with_surge, 64_000);
    }

    #[rstest]
    #[case(AllocationInput::new(0))]
    #[case(AllocationInput::new(5).frontend_ips(0))]
    #[case(AllocationInput::new(1001))]
    fn bad_inputs(#[case] input: AllocationInput) {
        assert!(input.compute().is_err());
    }

    /// (peak, nodes, surge, headroom) -> (ports needed, allocatedOutboundPorts, IPs, default suffices)
    #[rstest]
    #[case((1500, 20, 2, 1.5), (2250, Some(2256), Some(1), false))]
    #[case((600, 20, 0, 1.5), (900, Some(904), Some(1), true))]
    #[case((600, 60, 0, 1.5), (900, Some(904), Some(1), false))]
    #[case((10_000, 30, 3, 1.5), (15_000, Some(15_000), Some(8), false))]
    #[case((0, 5, 0, 1.5), (0, Some(8), Some(1), true))]
    #[case((42_667, 1, 0, 1.5), (64_001, None, None, false))]
    #[case((42_666, 1, 0, 1.5), (63_999, Some(64_000), Some(1), false))]
    #[case((1000, 10, 0, 1.0), (1000, Some(1000), Some(1), true))]
    fn recommendations(#[case] input: (u64, u32, u32, f64), #[case] want: (u64, Option<u32>, Option<u32>, bool)) {
        let (peak, nodes, surge, headroom) = input;
        let r = recommend(peak, nodes, surge, headroom).unwrap();
        assert_eq!(
            (
                r.ports_needed,
                r.allocated_outbound_ports,
                r.outbound_ips_needed,
                r.default_table_suffices
            ),
            want
        );
        assert_eq!(r.fits_load_balancer, want.1.is_some());
        if want.1.is_none() {
            assert!(r.advice.contains("NAT gateway"), "{}", r.advice);
            assert_eq!(r.nat_gateway_ips_needed, Some(2));
        }
    }

    #[rstest]
    #[case(0.5)]
    #[case(f64::NAN)]
    #[case(f64::INFINITY)]
    fn bad_headroom(#[case] h: f64) {
        let msg = recommend(100, 3, 0, h).unwrap_err().to_string();
        assert!(msg.contains("headroom"), "{msg}");
    }

    #[test]
    fn huge_peak_beyond_nat_gateway() {
        let r = recommend(u64::MAX, 3, 0, DEFAULT_HEADROOM).unwrap();
        assert_eq!(r.nat_gateway_ips_needed, None);
        assert!(r.advice.contains("even 16 IPs"), "{}", r.advice);
    }

    proptest! {
        #[test]
        fn recommendation_carries_the_peak(peak in 0u64..100_000, nodes in 1u32..2000, surge in 0u32..50, h in 1.0f64..4.0) {
            let r = recommend(peak, nodes, surge, h).unwrap();
            if let (Some(p), Some(ips)) = (r.allocated_outbound_ports, r.outbound_ips_needed) {
                prop_assert!(validate_allocated_ports(p).is_ok());
                prop_assert!(u64::from(p) >= r.ports_needed && f64::from(p) >= peak as f64 * h - 1e-6);
                // The recommended IPs hold the pool with surge, and one fewer would not.
                let a = AllocationInput { nodes, frontend_ips: ips, allocated_outbound_ports: Some(p), surge_nodes: surge }
                    .compute().unwrap();
                prop_assert!(a.fits_with_surge);
                if ips > 1 {
                    let fewer = AllocationInput { frontend_ips: ips - 1, ..AllocationInput::new(nodes) }
                        .allocated_outbound_ports(p).surge_nodes(surge).compute().unwrap();
                    prop_assert!(!fewer.fits_with_surge);
                }
            } else {
                prop_assert!(r.ports_needed > 64_000);
            }
        }

        #[test]
        fn manual_max_nodes_is_tight(ips in 1u32..20, eighths in 1u32..=8000, nodes in 1u32..5000) {
            let ports = eighths * 8;
            let a = AllocationInput::new(nodes).frontend_ips(ips).allocated_outbound_ports(ports).compute().unwrap();
            prop_assert!(u64::from(a.max_nodes_that_fit) * u64::from(ports) <= a.total_ports);
            prop_assert!(u64::from(a.max_nodes_that_fit + 1) * u64::from(ports) > a.total_ports);
            prop_assert_eq!(a.fits, nodes <= a.max_nodes_that_fit);
        }
    }
}
