//! examples/find-node.rhai end to end: a metrics file, then (when a cluster answers) the
//! node and its pods, through the real kube client and a loopback API server.

#[path = "../snat-core/tests/support/apiserver.rs"]
mod apiserver;
#[path = "../snat-core/tests/support/fixtures.rs"]
mod fixtures;

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use snat_core::audit::Verdict;
use snat_script::{Ctx, RunOptions};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The fake API server on its own runtime thread (the playbook's stages block on theirs).
struct Server {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        let (tx, rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let api = apiserver::FakeApi::start(fixtures::cluster()).await;
                tx.send(api.addr).unwrap();
                let _ = stop_rx.await;
                drop(api);
            });
        });
        Server {
            addr: rx.recv().unwrap(),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = self.thread.take().map(|t| t.join());
    }
}

fn kubeconfig(dir: &Path, server: &str) -> PathBuf {
    let p = dir.join("kubeconfig");
    std::fs::write(
        &p,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: t0ken\n"
        ),
    )
    .unwrap();
    p
}

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
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let ctx = run(kubeconfig(dir.path(), &format!("http://{}", server.addr)));
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
    let ctx = run(kubeconfig(dir.path(), &format!("http://127.0.0.1:{port}")));
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
    let ctx = run_with(kubeconfig(dir.path(), "http://127.0.0.1:9"), "natgw-metrics.json");
    let rep = ctx.report();
    assert_eq!(rep.verdict, Some(Verdict::PressureFound));
    assert_eq!(
        rep.summary.as_deref(),
        Some("NAT gateway: 12 failed SNAT connections; census every node to find the pod")
    );
    assert!(ctx.stages().iter().all(|s| !s.name.starts_with("kube::")));
}
