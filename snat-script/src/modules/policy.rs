//! `policy::` — which destinations consume SNAT ports. A `Policy` starts with snat's
//! built-in rules (RFC 1918, CGNAT, loopback, link-local, IMDS, Azure's platform IP, ...);
//! playbooks add the cluster's own ranges (VNet, peered VNets, pod and service CIDRs, which
//! may be public space) and "treat as public" overrides. Every `Verdict` names the rule
//! that decided it. Classifying is pure: not a stage.

use std::net::IpAddr;

use rhai::{Array, Dynamic, EvalAltResult, Map, Module};
use snat_core::policy::{Policy, UserRangeKind, Verdict};
use snat_core::pressure::{CRITICAL_FRACTION, Level, WARNING_FRACTION};

use super::{func, getter, method, to_dyn, usage};
use crate::ctx::Ctx;

fn ip_of(s: &str) -> Result<IpAddr, Box<EvalAltResult>> {
    let t = s.trim().trim_start_matches('[').trim_end_matches(']');
    t.parse::<IpAddr>()
        .or_else(|_| usage(format!("{s:?} is not an IP address")))
}

fn kind_of(s: &str) -> Result<UserRangeKind, Box<EvalAltResult>> {
    s.parse::<UserRangeKind>().map_err(|e| e.to_string().into())
}

fn strings(d: &Dynamic, what: &str) -> Result<Vec<String>, Box<EvalAltResult>> {
    if let Some(a) = d.clone().try_cast::<Array>() {
        return Ok(a.iter().map(|x| x.to_string()).collect());
    }
    if d.is_string() {
        return Ok(d
            .to_string()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect());
    }
    usage(format!(
        "`{what}` must be an array of CIDRs or a comma-separated string"
    ))
}

/// Build a policy from a map: `#{vnet: [...], peered_vnet: [...], pod: [...],
/// service: [...], other: [...], as_public: [...]}` (each an array or a comma-separated string).
fn from_map(m: &Map) -> Result<Policy, Box<EvalAltResult>> {
    let mut p = Policy::new();
    for (k, v) in m {
        let key = k.as_str();
        if key == "as_public" {
            for c in strings(v, key)? {
                p.add_public(&c, None).map_err(|e| e.to_string())?;
            }
        } else {
            let kind = kind_of(&key.replace('_', "-")).map_err(|_| {
                format!("unknown policy key `{key}`: expected vnet, peered_vnet, pod, service, other or as_public")
            })?;
            for c in strings(v, key)? {
                p.add_private(&c, kind, None).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(p)
}

fn ports_of(flows: i64, ports: i64) -> Result<(u64, u64), Box<EvalAltResult>> {
    match (u64::try_from(flows), u64::try_from(ports)) {
        (Ok(f), Ok(p)) if p > 0 => Ok((f, p)),
        _ => usage(format!(
            "flows must be 0 or more and ports more than 0, not {flows} flows and {ports} ports"
        )),
    }
}

/// The alert level of `flows` against `ports`: the levels `alloc::pressure` gives.
fn snat_level(flows: i64, ports: i64) -> Result<String, Box<EvalAltResult>> {
    let (f, p) = ports_of(flows, ports)?;
    Ok(Level::of(f as f64 / p as f64).as_str().to_string())
}

/// `flows` as a percent of `ports`, rounded down: never at a level's threshold when the
/// level is below it.
fn snat_percent(flows: i64, ports: i64) -> Result<i64, Box<EvalAltResult>> {
    let (f, p) = ports_of(flows, ports)?;
    Ok(i64::try_from(u128::from(f) * 100 / u128::from(p)).unwrap_or(i64::MAX))
}

/// The `policy` module.
pub fn create_module(_ctx: &Ctx) -> Module {
    let mut m = Module::new();
    func(
        "snat_level",
        &["flows: i64", "ports: i64", "String"],
        "The level of `flows` concurrent flows from the node to one destination against its `ports` SNAT ports:\n\"ok\", \"warning\" from 75 % or \"critical\" from 90 % (Microsoft's suggested alerts on used/allocated\nSNAT ports; the levels of alloc::pressure). The one threshold policy of census.rhai and triage.rhai.",
    )
    .set_into_module(&mut m, snat_level);
    func(
        "snat_percent",
        &["flows: i64", "ports: i64", "i64"],
        "`flows` as a percent of `ports`, rounded down, so the percent printed agrees with snat_level\n(767 of 1024 is 74, ok; 768 is 75, warning).",
    )
    .set_into_module(&mut m, snat_percent);
    func(
        "snat_thresholds",
        &["Map"],
        "The percents at which snat_level changes: #{warning: 75, critical: 90}.",
    )
    .set_into_module(&mut m, || {
        let mut t = Map::new();
        t.insert(
            "warning".into(),
            Dynamic::from_int((WARNING_FRACTION * 100.0).round() as i64),
        );
        t.insert(
            "critical".into(),
            Dynamic::from_int((CRITICAL_FRACTION * 100.0).round() as i64),
        );
        t
    });
    m.set_custom_type::<Policy>("Policy");
    m.set_custom_type::<Verdict>("Verdict");

    func("azure", &["Policy"], "A policy with snat's built-in rules only.").set_into_module(&mut m, Policy::new);
    func(
        "azure",
        &["ranges: Map", "Policy"],
        "A policy with the built-in rules plus the cluster's ranges:\n#{vnet: [..], peered_vnet: [..], pod: [..], service: [..], other: [..], as_public: [..]}\n(arrays of CIDRs or comma-separated strings; `as_public` ranges are treated as public).",
    )
    .set_into_module(&mut m, |ranges: Map| from_map(&ranges));

    method(
        "add_private",
        &["policy: Policy", "cidr: &str", "kind: &str", "()"],
        "Add a range that does not use SNAT; kind: vnet, peered-vnet, pod, service or other.",
    )
    .set_into_module(
        &mut m,
        |p: &mut Policy, cidr: &str, kind: &str| -> Result<(), Box<EvalAltResult>> {
            p.add_private(cidr, kind_of(kind)?, None)
                .map_err(|e| e.to_string().into())
        },
    );
    method(
        "add_private",
        &["policy: Policy", "cidr: &str", "kind: &str", "label: &str", "()"],
        "Same, with a label shown in verdicts.",
    )
    .set_into_module(
        &mut m,
        |p: &mut Policy, cidr: &str, kind: &str, label: &str| -> Result<(), Box<EvalAltResult>> {
            p.add_private(cidr, kind_of(kind)?, Some(label))
                .map_err(|e| e.to_string().into())
        },
    );
    method(
        "add_public",
        &["policy: Policy", "cidr: &str", "()"],
        "Treat a range as public (consuming SNAT) whatever the other rules say.",
    )
    .set_into_module(&mut m, |p: &mut Policy, cidr: &str| -> Result<(), Box<EvalAltResult>> {
        p.add_public(cidr, None).map_err(|e| e.to_string().into())
    });
    method(
        "classify",
        &["policy: Policy", "ip: &str", "Verdict"],
        "Classify a destination address.",
    )
    .set_into_module(
        &mut m,
        |p: &mut Policy, ip: &str| -> Result<Verdict, Box<EvalAltResult>> { Ok(p.classify(ip_of(ip)?)) },
    );
    method(
        "is_public",
        &["policy: Policy", "ip: &str", "bool"],
        "Whether flows to this address consume SNAT ports.",
    )
    .set_into_module(&mut m, |p: &mut Policy, ip: &str| -> Result<bool, Box<EvalAltResult>> {
        Ok(p.classify(ip_of(ip)?).snat)
    });
    method(
        "rules",
        &["policy: Policy", "Array"],
        "Every rule, in precedence order, as maps.",
    )
    .set_into_module(&mut m, |p: &mut Policy| -> Result<Array, Box<EvalAltResult>> {
        p.rules().iter().map(to_dyn).collect()
    });

    getter(&mut m, "ip", "String", "The address classified.", |v: &mut Verdict| {
        v.ip.to_string()
    });
    getter(
        &mut m,
        "snat",
        "bool",
        "Whether flows to it consume SNAT ports (public).",
        |v: &mut Verdict| v.snat,
    );
    getter(&mut m, "is_public", "bool", "Same as `snat`.", |v: &mut Verdict| v.snat);
    getter(
        &mut m,
        "class",
        "String",
        "The address class, e.g. public, private, imds, pod_cidr.",
        |v: &mut Verdict| v.class.as_str().to_string(),
    );
    getter(
        &mut m,
        "rule",
        "String",
        "The name of the rule that decided.",
        |v: &mut Verdict| v.rule.name.clone(),
    );
    getter(
        &mut m,
        "rule_cidr",
        "String",
        "The range of the rule that decided.",
        |v: &mut Verdict| v.rule.cidr.to_string(),
    );
    getter(
        &mut m,
        "documentation",
        "bool",
        "Whether it is a documentation/benchmark range.",
        |v: &mut Verdict| v.documentation,
    );
    getter(&mut m, "note", "?", "A caveat, or ().", |v: &mut Verdict| {
        v.note.clone().map_or(Dynamic::UNIT, Dynamic::from)
    });
    method(
        "to_map",
        &["verdict: Verdict", "Map"],
        "The verdict as a map (for reports).",
    )
    .set_into_module(&mut m, |v: &mut Verdict| to_dyn(v));
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn eval(script: &str) -> Result<Dynamic, Box<EvalAltResult>> {
        let ctx = Ctx::new(Default::default(), Default::default());
        let mut e = rhai::Engine::new();
        let module: rhai::Shared<Module> = create_module(&ctx).into();
        e.register_global_module(module.clone());
        e.register_static_module("policy", module);
        e.eval::<Dynamic>(script)
    }

    #[rstest]
    #[case(r#"policy::azure().is_public("203.0.113.9")"#, "true")]
    #[case(r#"policy::azure().is_public("10.1.2.3")"#, "false")]
    #[case(r#"policy::azure().classify("169.254.169.254").class"#, "imds")]
    #[case(r#"policy::azure().classify("[::ffff:10.0.0.1]").snat"#, "false")]
    #[case(
        r#"let p = policy::azure(); p.add_private("20.50.0.0/16", "vnet", "my vnet"); p.classify("20.50.1.1").rule"#,
        "my vnet"
    )]
    #[case(r#"let p = policy::azure(#{pod: "100.200.0.0/16", as_public: ["10.9.0.0/16"]}); `${p.is_public("100.200.3.4")} ${p.is_public("10.9.1.1")}`"#, "false true")]
    #[case("policy::snat_level(767, 1024)", "ok")]
    #[case("policy::snat_level(768, 1024)", "warning")]
    #[case("policy::snat_level(115, 128)", "warning")]
    #[case("policy::snat_level(116, 128)", "critical")]
    #[case("policy::snat_level(2000, 1024)", "critical")]
    #[case("policy::snat_level(0, 32)", "ok")]
    #[case("`${policy::snat_percent(767, 1024)} ${policy::snat_percent(768, 1024)}`", "74 75")]
    #[case("`${policy::snat_percent(9, 10)} ${policy::snat_level(9, 10)}`", "90 critical")]
    #[case("let t = policy::snat_thresholds(); `${t.warning} ${t.critical}`", "75 90")]
    fn classifies(#[case] script: &str, #[case] want: &str) {
        assert_eq!(eval(script).unwrap().to_string(), want);
    }

    #[rstest]
    #[case(r#"policy::azure().classify("not-an-ip")"#, "is not an IP address")]
    #[case(r#"let p = policy::azure(); p.add_private("10.0.0.0/33", "vnet")"#, "invalid CIDR")]
    #[case(
        r#"let p = policy::azure(); p.add_private("10.0.0.0/8", "lan")"#,
        "unknown range kind"
    )]
    #[case(r#"policy::azure(#{lan: "10.0.0.0/8"})"#, "unknown policy key `lan`")]
    #[case("policy::snat_level(1, 0)", "ports more than 0")]
    #[case("policy::snat_percent(-1, 10)", "flows must be 0 or more")]
    fn rejects_bad_input(#[case] script: &str, #[case] want: &str) {
        let e = eval(script).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
}
