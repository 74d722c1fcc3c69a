//! `metrics::` — Azure Monitor SNAT metrics (the article's Step 1): read a metrics file
//! (`az monitor metrics list -o json` or the REST API's JSON) or fetch it with `az`, and
//! rank the load balancer's backend IPs (node IPs) by port usage and failed connections.

use std::sync::Arc;

use rhai::{Array, Dynamic, EvalAltResult, ImmutableString, Map, Module};
use serde_json::json;
use snat_core::metrics::{self as core, BackendUsage, SnatMetrics};

use super::{func, getter, method, to_dyn};
use crate::ctx::Ctx;

/// Analysed SNAT metrics.
#[derive(Debug, Clone)]
pub struct Metrics(pub Arc<SnatMetrics>);

fn rows(v: &[BackendUsage]) -> Array {
    v.iter().map(backend).collect()
}

fn backend(b: &BackendUsage) -> Dynamic {
    to_dyn(b).unwrap_or(Dynamic::UNIT)
}

fn read(ctx: &Ctx, paths: &[String]) -> Result<Metrics, Box<EvalAltResult>> {
    let args = if let [one] = paths {
        json!({ "path": one })
    } else {
        json!({ "paths": paths })
    };
    ctx.stage("metrics::read", args, || {
        let paths: Vec<&std::path::Path> = paths.iter().map(std::path::Path::new).collect();
        let doc = core::read_paths(&paths)?;
        let a = core::analyze(&doc)?;
        let n = a.by_ratio.len() as u64;
        Ok((Metrics(Arc::new(a)), Some(n)))
    })
}

/// The module.
pub fn create_module(ctx: &Ctx) -> Module {
    let mut m = Module::new();
    m.set_custom_type::<Metrics>("Metrics");

    let c = ctx.clone();
    func(
        "read",
        &["path: &str", "Metrics"],
        "Read and analyse a metrics file: the JSON of `az monitor metrics list -o json` or of the Azure Monitor\nREST API, for a load balancer (AllocatedSnatPorts, UsedSnatPorts, SnatConnectionCount split by\nBackendIPAddress) or a NAT gateway. Malformed files fail with the JSON path of the problem.",
    )
    .set_into_module(&mut m, move |path: &str| read(&c, &[path.to_string()]));

    let c = ctx.clone();
    func(
        "read",
        &["paths: Array", "Metrics"],
        "Read several metrics files of one load balancer as one document: the port metrics and
SnatConnectionCount come from two `az` calls (see metrics::az_commands).",
    )
    .set_into_module(&mut m, move |paths: Array| {
        // A list split from `a.json, b.json,`: spaces around a name and empty entries are
        // slips, not files.
        let paths: Vec<String> = paths
            .into_iter()
            .map(|p| p.to_string().trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        if paths.is_empty() {
            return Err("metrics::read: no file named".into());
        }
        read(&c, &paths)
    });

    func(
        "parse",
        &["json: &str", "Metrics"],
        "Analyse metrics given as a JSON string (not a stage: touches nothing).",
    )
    .set_into_module(&mut m, |text: &str| -> Result<Metrics, Box<EvalAltResult>> {
        let doc = core::parse(text, "string").map_err(|e| e.to_string())?;
        let a = core::analyze(&doc).map_err(|e| e.to_string())?;
        Ok(Metrics(Arc::new(a)))
    });

    let c = ctx.clone();
    func(
        "fetch",
        &["resource_id: &str", "offset: &str", "?"],
        "Fetch the last `offset` (e.g. \"1h\") of SNAT metrics with the Azure CLI for a load balancer or NAT gateway\nresource id. Returns () when `az` is not on PATH (use metrics::read with a saved file instead).",
    )
    .set_into_module(
        &mut m,
        move |id: &str, offset: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            c.stage("metrics::fetch", json!({ "resource_id": id, "offset": offset }), || {
                let path = std::env::var_os("PATH").unwrap_or_default();
                match core::fetch_with_az(id, offset, &path)? {
                    None => Ok((Dynamic::UNIT, Some(0))),
                    Some(doc) => {
                        let a = core::analyze(&doc)?;
                        let n = a.by_ratio.len() as u64;
                        Ok((Dynamic::from(Metrics(Arc::new(a))), Some(n)))
                    }
                }
            })
        },
    );

    func(
        "az_commands",
        &["resource_id: &str", "offset: &str", "Array"],
        "The exact `az` command lines metrics::fetch runs (each an array of arguments after `az`).",
    )
    .set_into_module(&mut m, |id: &str, offset: &str| -> Result<Array, Box<EvalAltResult>> {
        let cmds = core::az_commands(id, offset).map_err(|e| e.to_string())?;
        Ok(cmds
            .into_iter()
            .map(|argv| Dynamic::from(argv.into_iter().map(Dynamic::from).collect::<Array>()))
            .collect())
    });

    getter(
        &mut m,
        "resource",
        "String",
        "\"load_balancer\", \"nat_gateway\" or the namespace of another resource.",
        |x: &mut Metrics| match &x.0.resource {
            core::ResourceKind::LoadBalancer => ImmutableString::from("load_balancer"),
            core::ResourceKind::NatGateway => ImmutableString::from("nat_gateway"),
            core::ResourceKind::Other(s) => ImmutableString::from(s.as_str()),
        },
    );
    getter(
        &mut m,
        "flavour",
        "String",
        "\"az_cli\" or \"rest\": which tool produced the JSON.",
        |x: &mut Metrics| to_dyn(&x.0.flavour).unwrap_or(Dynamic::UNIT),
    );
    getter(
        &mut m,
        "timespan",
        "?",
        "The window, as the document gave it (or ()).",
        |x: &mut Metrics| x.0.timespan.clone().map_or(Dynamic::UNIT, Dynamic::from),
    );
    getter(
        &mut m,
        "per_node",
        "bool",
        "Whether the metrics can name a node (false for NAT gateways: census every node instead).",
        |x: &mut Metrics| x.0.per_node,
    );
    getter(
        &mut m,
        "failed_known",
        "bool",
        "Whether the document has SnatConnectionCount split by BackendIPAddress. When false, every
backend's `failed` is 0 because nothing was measured (a note says so).",
        |x: &mut Metrics| x.0.failed_known,
    );
    getter(
        &mut m,
        "by_ratio",
        "Array",
        "Backends ranked by peak used/allocated ports: maps with backend_ip, allocated, used_peak, used_mean,\npeak_ratio, failed, connections, severity.",
        |x: &mut Metrics| rows(&x.0.by_ratio),
    );
    getter(
        &mut m,
        "by_failed",
        "Array",
        "Backends ranked by failed SNAT connections over the window (same maps as by_ratio).",
        |x: &mut Metrics| rows(&x.0.by_failed),
    );
    getter(
        &mut m,
        "hottest",
        "?",
        "The backend most under pressure (most failed connections, else highest ratio), or ().",
        |x: &mut Metrics| x.0.hottest().map_or(Dynamic::UNIT, backend),
    );
    getter(
        &mut m,
        "nat_gateway",
        "Map",
        "NAT gateway totals by metric and connection state, e.g. \"SNATConnectionCount/Failed\".",
        |x: &mut Metrics| {
            x.0.nat_gateway
                .iter()
                .map(|(k, v)| (k.as_str().into(), Dynamic::from_float(*v)))
                .collect::<Map>()
        },
    );
    getter(
        &mut m,
        "notes",
        "Array",
        "What the reader must know: missing BackendIPAddress split, metric errors, the NAT gateway caveat.",
        |x: &mut Metrics| x.0.notes.iter().map(|n| Dynamic::from(n.clone())).collect::<Array>(),
    );
    method(
        "to_string",
        &["metrics: Metrics", "String"],
        "One line per backend: IP, peak/allocated ports, ratio, failed connections.",
    )
    .set_into_module(&mut m, |x: &mut Metrics| {
        let mut s = String::new();
        for b in &x.0.by_ratio {
            s.push_str(&format!(
                "{:<16} used {:>6} / {:<6} ({:>5}) failed {}\n",
                b.backend_ip.to_string(),
                b.used_peak.map_or("-".into(), |v| format!("{v:.0}")),
                b.allocated.map_or("-".into(), |v| format!("{v:.0}")),
                b.peak_ratio.map_or("-".into(), |r| format!("{:.0}%", r * 100.0)),
                if x.0.failed_known {
                    b.failed.to_string()
                } else {
                    "unknown".into()
                }
            ));
        }
        for n in &x.0.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        s
    });
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> String {
        format!("{}/../tests/data/metrics/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn run(script: &str) -> (Ctx, Result<Dynamic, Box<EvalAltResult>>) {
        let ctx = Ctx::new(Default::default(), Default::default());
        let mut e = rhai::Engine::new();
        e.register_static_module("metrics", create_module(&ctx).into());
        let r = e.eval::<Dynamic>(script);
        (ctx, r)
    }

    #[test]
    fn reads_and_ranks_and_records_the_stage() {
        let (ctx, r) = run(&format!(
            r#"let m = metrics::read("{}"); [m.hottest.backend_ip, m.by_ratio.len(), m.resource, m.per_node]"#,
            data("sample-az-metrics.json")
        ));
        let a = r.unwrap().cast::<Array>();
        assert_eq!(a[0].to_string(), "10.224.0.4");
        assert_eq!(a[1].as_int().unwrap(), 2);
        assert_eq!(a[2].to_string(), "load_balancer");
        assert!(a[3].as_bool().unwrap());
        let st = ctx.stages();
        assert_eq!(st[0].name, "metrics::read");
        assert_eq!(st[0].items, Some(2));
    }

    #[test]
    fn a_list_of_files_is_trimmed() {
        let (ctx, r) = run(&format!(
            r#"metrics::read([" {} ", "{}", "", " "]).failed_known"#,
            data("sample-az-metrics.json"),
            data("sample-az-snat-connections.json")
        ));
        assert!(r.unwrap().as_bool().unwrap());
        assert_eq!(ctx.stages()[0].args["paths"].as_array().unwrap().len(), 2);
        let (_, r) = run(r#"metrics::read(["", " "])"#);
        assert!(r.unwrap_err().to_string().contains("no file named"));
    }

    #[test]
    fn nat_gateway_says_census() {
        let (_, r) = run(&format!(
            r#"let m = metrics::read("{}"); [m.per_node, m.notes[0], m.hottest]"#,
            data("natgw-metrics.json")
        ));
        let a = r.unwrap().cast::<Array>();
        assert!(!a[0].as_bool().unwrap());
        assert!(a[1].to_string().contains("census"));
        assert!(a[2].is_unit());
    }

    #[test]
    fn bad_file_is_a_failed_stage_naming_the_path() {
        let (ctx, r) = run(&format!(
            r#"metrics::read("{}")"#,
            data("malformed-string-average.json")
        ));
        let msg = super::super::kube::tests::failure(r.unwrap_err()).message;
        assert!(msg.contains("$.value[0].timeseries[0].data[1].average"), "{msg}");
        assert_eq!(ctx.stages()[0].outcome, snat_core::audit::StageOutcome::Failed);
    }
}
