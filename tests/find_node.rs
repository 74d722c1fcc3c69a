//! examples/find-node.rhai end to end: a metrics file, then (when a cluster answers) the
//! node and its pods, through the real kube client and a loopback API server.

#[path = "../snat-script/tests/common/mod.rs"]
mod common;

use common::{Server, fixtures, kubeconfig};

use std::path::PathBuf;

use snat_core::audit::Verdict;
use snat_script::{Ctx, RunOptions};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(kubeconfig: PathBuf) -> Ctx {
    run_with(kubeconfig, "sample-az-metrics.json")
}

fn run_with(kubeconfig: PathBuf, metrics: &str) -> Ctx {
    let (ctx, r) = try_run_with(kubeconfig, metrics);
    if let Err(e) = r {
        panic!("playbook failed: {e}");
    }
    ctx
}

/// `metrics` is one file of tests/data/metrics, or several separated by commas.
fn try_run_with(kubeconfig: PathBuf, metrics: &str) -> (Ctx, Result<(), Box<rhai::EvalAltResult>>) {
    let files: Vec<String> = metrics
        .split(',')
        .map(|f| format!("{ROOT}/tests/data/metrics/{f}"))
        .collect();
    let params = [("metrics".to_string(), files.join(","))].into();
    let ctx = Ctx::new(
        RunOptions {
            kubeconfig: Some(kubeconfig),
            ..Default::default()
        },
        params,
    );
    let mut engine = rhai::Engine::new();
    snat_script::modules::register_all(&mut engine, &ctx);
    let script = std::fs::read_to_string(format!("{ROOT}/examples/find-node.rhai")).unwrap();
    let r = engine.run(&script);
    (ctx, r)
}

/// The port metrics and SnatConnectionCount come from two az calls: read together, the
/// failed connections are counted; with the port metrics alone they are unknown, not 0.
#[test]
fn failed_connections_come_from_the_second_file_and_are_unknown_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = kubeconfig(dir.path(), ([127, 0, 0, 1], 9).into());
    let ctx = run_with(
        nowhere.clone(),
        "sample-az-metrics.json,sample-az-snat-connections.json",
    );
    let rep = ctx.report();
    assert_eq!(rep.verdict, Some(Verdict::PressureFound));
    assert_eq!(rep.findings[0].evidence["failed"], 89.0);
    assert!(
        rep.summary.as_deref().unwrap().ends_with("89 failed connections"),
        "{:?}",
        rep.summary
    );
    let ctx = run_with(nowhere, "sample-az-metrics.json");
    let rep = ctx.report();
    assert!(
        rep.findings[0].evidence["failed"].is_null(),
        "{:?}",
        rep.findings[0].evidence
    );
    assert!(
        rep.summary.as_deref().unwrap().contains("failed connections unknown"),
        "{:?}",
        rep.summary
    );
}

/// Metrics that name no backend cannot say "clear": the playbook fails, naming the split
/// it needs.
#[test]
fn metrics_without_a_backend_split_are_an_error_not_clear() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, r) = try_run_with(kubeconfig(dir.path(), ([127, 0, 0, 1], 9).into()), "lb-unsplit.json");
    let err = r.expect_err("no verdict from unsplit metrics").to_string();
    assert!(
        err.contains("name no backend IP") && err.contains("BackendIPAddress eq '*'"),
        "{err}"
    );
    assert_eq!(ctx.report().verdict, None);
}

/// A 403 on the pod list keeps the node and the verdict already found.
#[test]
fn a_forbidden_pod_list_keeps_the_verdict() {
    let server = Server::start(fixtures::cluster());
    server
        .state
        .faults
        .lock()
        .unwrap()
        .push_back(("/api/v1/pods".into(), common::apiserver::Fault::Status(403, None)));
    let dir = tempfile::tempdir().unwrap();
    let ctx = run(kubeconfig(dir.path(), server.addr));
    let rep = ctx.report();
    assert_eq!(rep.verdict, Some(Verdict::PressureFound));
    assert!(
        rep.summary.as_deref().unwrap().starts_with("node-a (10.224.0.4"),
        "{:?}",
        rep.summary
    );
    let text = serde_json::to_string(&rep.sections).unwrap();
    assert!(text.contains("Cannot list the pods on node-a"), "{text}");
    assert!(rep.sections.iter().all(|s| s.title != "Pods on node-a"));
}

#[test]
fn names_the_node_and_its_pods_when_the_cluster_answers() {
    let server = Server::start(fixtures::cluster());
    let dir = tempfile::tempdir().unwrap();
    let ctx = run(kubeconfig(dir.path(), server.addr));
    let rep = ctx.report();
    assert_eq!(rep.verdict, Some(Verdict::PressureFound));
    assert!(
        rep.summary.as_deref().unwrap().starts_with("node-a (10.224.0.4"),
        "{:?}",
        rep.summary
    );
    let f = &rep.findings[0];
    assert_eq!(f.node.as_ref().unwrap().name.as_deref(), Some("node-a"));
    let pods = rep
        .sections
        .iter()
        .find(|s| s.title == "Pods on node-a")
        .expect("a pods table");
    let json = serde_json::to_value(&pods.body).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 7);
    assert!(rows.iter().any(|r| r[2] == "Deployment/api"), "{rows:?}");
    assert!(rows.iter().any(|r| r[2] == "CronJob/report"), "{rows:?}");
    let stages: Vec<String> = ctx.stages().iter().map(|s| s.name.clone()).collect();
    assert_eq!(stages, ["metrics::read", "kube::node_by_ip", "kube::pods_on_node"]);
}

#[test]
fn names_the_hottest_ip_and_says_no_cluster_is_reachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let ctx = run(kubeconfig(dir.path(), ([127, 0, 0, 1], port).into()));
    let rep = ctx.report();
    assert_eq!(rep.verdict, Some(Verdict::PressureFound));
    assert!(
        rep.summary
            .as_deref()
            .unwrap()
            .starts_with("10.224.0.4: peak 100% of 1024 ports, failed connections unknown"),
        "{:?}",
        rep.summary
    );
    let k = rep
        .sections
        .iter()
        .find(|s| s.title == "Kubernetes")
        .expect("a Kubernetes section");
    let text = serde_json::to_value(&k.body).unwrap()["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        text.starts_with("No cluster reachable") && text.contains("grep 10.224.0.4"),
        "{text}"
    );
    assert_eq!(rep.findings[0].node.as_ref().unwrap().name, None);
}

#[test]
fn nat_gateway_metrics_send_you_to_a_census_of_every_node() {
    let dir = tempfile::tempdir().unwrap();
    // No cluster is contacted for a NAT gateway: the metrics cannot name a node.
    let ctx = run_with(kubeconfig(dir.path(), ([127, 0, 0, 1], 9).into()), "natgw-metrics.json");
    let rep = ctx.report();
    assert_eq!(rep.verdict, Some(Verdict::PressureFound));
    assert_eq!(
        rep.summary.as_deref(),
        Some("NAT gateway: 12 failed SNAT connections; census every node to find the pod")
    );
    assert!(ctx.stages().iter().all(|s| !s.name.starts_with("kube::")));
}
