//! `alloc::` — SNAT port budgets: what each node gets from Azure's load balancer (default
//! table or `allocatedOutboundPorts`), what an observed peak needs, and a node's pressure
//! per destination with each owner's share. Pure arithmetic: not stages. Results are maps
//! whose fields are documented on the Rust types (`snat_core::allocation::Allocation`,
//! `Recommendation`, `snat_core::pressure::PressureReport`).

use std::net::SocketAddr;

use rhai::{Array, Dynamic, EvalAltResult, Map, Module};
use snat_core::allocation::{AllocationInput, DEFAULT_HEADROOM, recommend};
use snat_core::pressure::pressure;

use super::{func, to_dyn, usage};
use crate::ctx::Ctx;

fn int_opt(m: &Map, key: &str) -> Result<Option<u32>, Box<EvalAltResult>> {
    match m.get(key) {
        None => Ok(None),
        Some(v) if v.is_unit() => Ok(None),
        Some(v) => match v.as_int().ok().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Ok(Some(n)),
            None => usage(format!("`{key}` must be a non-negative integer, got {v}")),
        },
    }
}

fn check_keys(m: &Map, known: &[&str], what: &str) -> Result<(), Box<EvalAltResult>> {
    for k in m.keys() {
        if !known.contains(&k.as_str()) {
            return usage(format!("unknown key `{k}` for {what} (known: {})", known.join(", ")));
        }
    }
    Ok(())
}

fn core_err(e: snat_core::Error) -> Box<EvalAltResult> {
    e.to_string().into()
}

fn ports(m: &Map) -> Result<Dynamic, Box<EvalAltResult>> {
    check_keys(
        m,
        &["nodes", "frontend_ips", "allocated_outbound_ports", "surge_nodes"],
        "alloc::ports",
    )?;
    let Some(nodes) = int_opt(m, "nodes")? else {
        return usage("alloc::ports needs `nodes`");
    };
    let mut input = AllocationInput::new(nodes);
    if let Some(n) = int_opt(m, "frontend_ips")? {
        input = input.frontend_ips(n);
    }
    if let Some(p) = int_opt(m, "allocated_outbound_ports")? {
        input = input.allocated_outbound_ports(p);
    }
    if let Some(s) = int_opt(m, "surge_nodes")? {
        input = input.surge_nodes(s);
    }
    to_dyn(&input.compute().map_err(core_err)?)
}

fn recommend_map(m: &Map) -> Result<Dynamic, Box<EvalAltResult>> {
    check_keys(m, &["peak", "nodes", "surge_nodes", "headroom"], "alloc::recommend")?;
    let peak = m
        .get("peak")
        .and_then(|v| v.as_int().ok())
        .and_then(|n| u64::try_from(n).ok());
    let (Some(peak), Some(nodes)) = (peak, int_opt(m, "nodes")?) else {
        return usage("alloc::recommend needs `peak` (concurrent flows to one destination) and `nodes`");
    };
    let surge = int_opt(m, "surge_nodes")?.unwrap_or(0);
    let headroom = match m.get("headroom") {
        None => DEFAULT_HEADROOM,
        Some(v) => v
            .as_float()
            .or_else(|_| v.as_int().map(|i| i as f64))
            .or_else(|_| usage("`headroom` must be a number"))?,
    };
    to_dyn(&recommend(peak, nodes, surge, headroom).map_err(core_err)?)
}

fn pressure_of(flows: &Array, budget: i64) -> Result<Dynamic, Box<EvalAltResult>> {
    let budget = u32::try_from(budget).or_else(|_| usage("budget must be a non-negative integer"))?;
    let mut triples = Vec::with_capacity(flows.len());
    for f in flows {
        let Some(m) = f.clone().try_cast::<Map>() else {
            return usage("each flow must be a map #{owner, dst: \"ip:port\", flows}");
        };
        let owner = m.get("owner").map(|o| o.to_string()).unwrap_or_default();
        let dst_text = m.get("dst").map(|d| d.to_string()).unwrap_or_default();
        let dst: SocketAddr = dst_text
            .parse()
            .or_else(|_| usage(format!("flow dst {dst_text:?} is not ip:port (IPv6 as [addr]:port)")))?;
        let n = m
            .get("flows")
            .and_then(|v| v.as_int().ok())
            .and_then(|n| u64::try_from(n).ok());
        let Some(n) = n else {
            return usage("each flow needs `flows`, a non-negative integer");
        };
        triples.push((owner, dst, n));
    }
    to_dyn(&pressure(triples, budget).map_err(core_err)?)
}

/// The `alloc` module.
pub fn create_module(_ctx: &Ctx) -> Module {
    let mut m = Module::new();
    func(
        "ports",
        &["input: Map", "Map"],
        "SNAT ports per node: #{nodes, frontend_ips?: 1, allocated_outbound_ports?: 0 (= default table),\nsurge_nodes?: 0} -> #{ports_per_node, source, max_nodes_that_fit, fits, fits_with_surge, notes, ...}.",
    )
    .set_into_module(&mut m, |input: Map| ports(&input));
    func(
        "recommend",
        &["input: Map", "Map"],
        "Settings for an observed peak of concurrent flows from one node to one destination:\n#{peak, nodes, surge_nodes?: 0, headroom?: 1.5} -> #{allocated_outbound_ports, outbound_ips_needed,\ndefault_table_suffices, fits_load_balancer, nat_gateway_ips_needed, advice, ...}.",
    )
    .set_into_module(&mut m, |input: Map| recommend_map(&input));
    func(
        "pressure",
        &["flows: Array", "budget: i64", "Map"],
        "A node's SNAT pressure: flows are #{owner, dst: \"ip:port\", flows} (concurrent public flows);\nbudget is the node's SNAT ports. -> #{level, fraction, exhausted, hottest, destinations, owners}.",
    )
    .set_into_module(&mut m, |flows: Array, budget: i64| pressure_of(&flows, budget));
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn eval(script: &str) -> Result<Dynamic, Box<EvalAltResult>> {
        let mut e = rhai::Engine::new();
        e.register_static_module(
            "alloc",
            create_module(&Ctx::new(Default::default(), Default::default())).into(),
        );
        e.eval::<Dynamic>(script)
    }

    #[rstest]
    #[case("alloc::ports(#{nodes: 30}).ports_per_node", "1024")]
    #[case("alloc::ports(#{nodes: 51}).ports_per_node", "512")]
    #[case(
        "alloc::ports(#{nodes: 10, frontend_ips: 2, allocated_outbound_ports: 4000}).max_nodes_that_fit",
        "32"
    )]
    #[case(
        "alloc::recommend(#{peak: 1500, nodes: 20, surge_nodes: 2}).allocated_outbound_ports",
        "2256"
    )]
    #[case(r#"let p = alloc::pressure([#{owner: "a", dst: "203.0.113.5:443", flows: 800}, #{owner: "b", dst: "203.0.113.5:443", flows: 100}], 1024); `${p.level} ${p.owners[0].owner} ${p.hottest.flows}`"#, "warning a 900")]
    fn computes(#[case] script: &str, #[case] want: &str) {
        assert_eq!(eval(script).unwrap().to_string(), want);
    }

    #[rstest]
    #[case("alloc::ports(#{})", "needs `nodes`")]
    #[case("alloc::ports(#{nodes: 5, allocated_outbound_ports: 1001})", "multiple of 8")]
    #[case("alloc::ports(#{nodes: 5, nodez: 1})", "unknown key `nodez`")]
    #[case(r#"alloc::pressure([#{owner: "a", dst: "nope", flows: 1}], 1024)"#, "is not ip:port")]
    #[case("alloc::pressure([], 0)", "budget of 0")]
    fn rejects(#[case] script: &str, #[case] want: &str) {
        let e = eval(script).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
}
