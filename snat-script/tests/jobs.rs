//! examples/jobs.rhai on a simulated node (needs root) with a loopback API server: only the
//! pods of active Jobs are counted (not a Deployment's pod with more flows, nor a finished
//! Job's pod), and `wait` waits for a Job to become active.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Server, apiserver, fixtures, kubeconfig};
use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;
use snat_testbed::{Holder, Layout, Netns, Plan, PodCgroup, Qos, Veth, require_root, spawn_holder};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn job(name: &str, active: i32) -> Job {
    Job {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("batch".into()),
            ..Default::default()
        },
        status: Some(JobStatus {
            active: Some(active),
            succeeded: Some(if active == 0 { 1 } else { 0 }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Node {
    _world: Netns,
    _nets: Vec<(Netns, Veth)>,
    pods: Vec<PodCgroup>,
    _holders: Vec<Holder>,
}

/// A world with one public destination and three pods holding 40, 60 and 50 flows to it.
fn node() -> Node {
    let world = Netns::new("jw").unwrap();
    world.add_lo_addr("198.18.0.1/32").unwrap();
    let mut holders = vec![
        spawn_holder(
            Some(&world.path()),
            None,
            &[Plan::Listen {
                on: sa("198.18.0.1:443"),
                backlog: 1024,
            }],
        )
        .unwrap(),
    ];
    let mut nets = Vec::new();
    let mut pods = Vec::new();
    for (i, n) in [40usize, 60, 50].into_iter().enumerate() {
        let ns = Netns::new("jp").unwrap();
        let v = Veth::new(&ns, &format!("10.202.{i}.2/24"), &world, &format!("10.202.{i}.1/24")).unwrap();
        ns.ip(&["route", "add", "default", "via", &format!("10.202.{i}.1")])
            .unwrap();
        let cg = PodCgroup::new(Layout::Systemd, Qos::BestEffort).unwrap();
        holders.push(
            spawn_holder(
                Some(&ns.path()),
                Some(&cg.cgroup),
                &[Plan::Connect {
                    to: sa("198.18.0.1:443"),
                    count: n,
                }],
            )
            .unwrap(),
        );
        nets.push((ns, v));
        pods.push(cg);
    }
    Node {
        _world: world,
        _nets: nets,
        pods,
        _holders: holders,
    }
}

fn cluster(n: &Node, etl_active: i32) -> apiserver::State {
    let pods = vec![
        fixtures::pod(
            "batch",
            "etl-28901-abcde",
            &n.pods[0].uid,
            "node-j",
            Some(fixtures::owner("Job", "etl-28901")),
        ),
        fixtures::pod("shop", "api-1", &n.pods[1].uid, "node-j", None),
        fixtures::pod(
            "batch",
            "old-xyz",
            &n.pods[2].uid,
            "node-j",
            Some(fixtures::owner("Job", "old")),
        ),
    ];
    apiserver::State {
        token: "t0ken".into(),
        nodes: vec![fixtures::node("node-j", "10.224.0.7")].into(),
        pods: pods.into(),
        jobs: vec![job("etl-28901", etl_active), job("old", 0)].into(),
        max_page: 50,
        ..Default::default()
    }
}

fn jobs(dir: &Path, kc: &Path, wait: u32) -> (Output, Value) {
    jobs_on(dir, kc, wait, "node-j")
}

fn jobs_on(dir: &Path, kc: &Path, wait: u32, node: &str) -> (Output, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_snat-run"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/jobs.rhai"))
        .args(["-o", "json", "-q", "-p", &format!("node={node}"), "-p", "ports=48"])
        .arg("-p")
        .arg(format!("wait={wait}"))
        .arg("--kubeconfig")
        .arg(kc)
        .arg("--audit-dir")
        .arg(dir.join("audit"))
        .env_remove("SNAT_AUDIT_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let rep =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out, rep)
}

/// A node name the cluster does not have is an error naming the nodes it has, at once,
/// not "no active Job pod" (or a wait for one that never comes).
#[test]
fn a_mistyped_node_is_an_error_not_clear() {
    let server = Server::start(apiserver::State {
        token: "t0ken".into(),
        nodes: vec![fixtures::node("node-j", "10.224.0.7")].into(),
        max_page: 50,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path(), server.addr);
    let t0 = std::time::Instant::now();
    let (out, rep) = jobs_on(dir.path(), &kc, 5, "node-jj");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(t0.elapsed() < std::time::Duration::from_secs(60));
    let msg = rep["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("no node node-jj in the cluster (did you mean `node-j`?); its nodes: node-j"),
        "{msg}"
    );
}

#[test]
fn only_active_job_pods_are_counted() {
    if !require_root() {
        return;
    }
    let n = node();
    let server = Server::start(cluster(&n, 1));
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path(), server.addr);
    let (out, rep) = jobs(dir.path(), &kc, 0);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let findings = rep["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{findings:#?}");
    let f = &findings[0];
    assert_eq!(f["pod"]["uid"], n.pods[0].uid.as_str());
    assert_eq!(f["pod"]["name"], "etl-28901-abcde");
    assert_eq!(f["pod"]["owner"]["kind"], "Job");
    assert_eq!(f["evidence"]["public_established"], 40);
    assert_eq!(f["destination"], "198.18.0.1:443");
    assert_eq!(f["severity"], "warning");
    assert_eq!(
        rep["summary"],
        "batch/etl-28901-abcde: 40 flows to 198.18.0.1:443 (83% of 48 ports)"
    );
}

#[test]
fn waits_for_a_job_to_become_active() {
    if !require_root() {
        return;
    }
    let n = node();
    let server = Server::start(cluster(&n, 0));
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path(), server.addr);
    // Nothing active and no wait: clear, and says how to wait.
    let (out, rep) = jobs(dir.path(), &kc, 0);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(rep["summary"], "no active Job pod on node-j");
    let text = rep["sections"][0]["text"].as_str().unwrap();
    assert!(text.contains("-p wait=SECONDS"), "{text}");
    // The Job starts while the run waits.
    let state = server.state.clone();
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        state.jobs.lock().unwrap()[0] = job("etl-28901", 1);
    });
    let (out, rep) = jobs(dir.path(), &kc, 30);
    starter.join().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rep["findings"][0]["pod"]["uid"], n.pods[0].uid.as_str());
    assert_eq!(rep["findings"][0]["evidence"]["public_established"], 40);
}
