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
    let params = [("metrics".to_string(), format!("{ROOT}/tests/data/metrics/{metrics}"))].into();
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
    if let Err(e) = engine.run(&script) {
        panic!("playbook failed: {e}");
    }
    ctx
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
            .starts_with("10.224.0.4: peak 100% of 1024 ports, 0 failed connections"),
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
