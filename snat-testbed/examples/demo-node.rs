//! A simulated AKS node for scripts/demo (root): a "world" namespace holding the
//! destinations, ten pods (network namespace, veth, kubelet-named cgroup, a process holding
//! connections), one of which storms a public destination and keeps retrying a closed port,
//! and a loopback Kubernetes API server with the matching Node and Pod objects.
//!
//! `demo-node DIR` writes `DIR/kubeconfig`, prints `READY <node name> <storm pod uid>` on
//! stdout, and holds everything until stdin closes; then removes it all.
//!
//! An instance killed without the chance to clean up (SIGKILL) leaves its namespaces,
//! cgroups and processes behind: the next one to start removes them, and says so on stderr,
//! before it builds its own. Each instance records what it creates (see
//! `snat_testbed::DemoRecord`); the leftovers of an instance that still runs are never
//! touched.

#[path = "../../snat-core/tests/support/apiserver.rs"]
mod apiserver;
#[path = "../../snat-core/tests/support/fixtures.rs"]
mod fixtures;

use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use snat_testbed::{
    DemoRecord, Layout, Netns, Plan, PodCgroup, Qos, Veth, remove_dead_demo_nodes, require_root, spawn_holder,
};

const NODE: &str = "aks-demo-vmss000003";

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const USAGE: &str = "usage: demo-node DIR (as root; writes DIR/kubeconfig, prints READY <node> <storm pod uid>, holds the node until stdin closes)";
    let dir = match std::env::args().nth(1) {
        Some(a) if !a.starts_with('-') => std::path::PathBuf::from(a),
        Some(a) if a == "-h" || a == "--help" => {
            println!("{USAGE}");
            return Ok(());
        }
        _ => return Err(USAGE.into()),
    };
    if !require_root() {
        return Ok(());
    }
    for line in remove_dead_demo_nodes() {
        eprintln!("demo-node: removed the leftover {line}");
    }
    let record = DemoRecord::create()?;
    let world = Netns::named(&record.netns_name("w"))?;
    for a in ["198.18.0.1/32", "203.0.113.10/32", "10.99.0.1/32"] {
        world.add_lo_addr(a)?;
    }
    let mut holders = vec![spawn_holder(
        Some(&world.path()),
        None,
        &[
            Plan::Listen {
                on: sa("198.18.0.1:443"),
                backlog: 4096,
            },
            Plan::Listen {
                on: sa("203.0.113.10:80"),
                backlog: 1024,
            },
            Plan::Listen {
                on: sa("10.99.0.1:443"),
                backlog: 4096,
            },
        ],
    )?];
    let mut nets = Vec::new();
    let mut cgs = Vec::new();
    let mut api_pods = Vec::new();
    for i in 0..10u32 {
        let ns = Netns::named(&record.netns_name(&format!("p{i}")))?;
        let v = Veth::new(&ns, &format!("10.203.{i}.2/24"), &world, &format!("10.203.{i}.1/24"))?;
        ns.ip(&["route", "add", "default", "via", &format!("10.203.{i}.1")])?;
        let layout = if i % 2 == 0 { Layout::Systemd } else { Layout::Cgroupfs };
        let cg = PodCgroup::new(layout, Qos::Burstable)?;
        record.add_cgroup(&cg.cgroup)?;
        let (plan, name, owner) = match i {
            // The storm: 300 flows to one public destination.
            0 => (
                Plan::Connect {
                    to: sa("198.18.0.1:443"),
                    count: 300,
                },
                "checkout-5c8d-x7k2p".to_string(),
                Some(fixtures::owner("ReplicaSet", "checkout-5c8d")),
            ),
            // A decoy with more flows, all private.
            1 => (
                Plan::Connect {
                    to: sa("10.99.0.1:443"),
                    count: 400,
                },
                "cache-warmer-0".to_string(),
                None,
            ),
            _ => (
                Plan::Connect {
                    to: sa("203.0.113.10:80"),
                    count: 2,
                },
                format!("web-{i}"),
                None,
            ),
        };
        holders.push(spawn_holder(Some(&ns.path()), Some(&cg.cgroup), &[plan])?);
        api_pods.push(fixtures::pod("shop", &name, &cg.uid, NODE, owner));
        eprintln!("pod shop/{name} uid {} in netns {}", cg.uid, ns.name());
        nets.push((ns, v));
        cgs.push(cg);
    }

    // The storm pod keeps retrying a closed port: failed connects for the live trace.
    let stop = Arc::new(AtomicBool::new(false));
    let retry = {
        let stop = stop.clone();
        let path = nets[0].0.path();
        std::thread::spawn(move || {
            let Ok(f) = std::fs::File::open(&path) else { return };
            // SAFETY: a valid namespace descriptor; setns only changes this thread.
            if unsafe { libc_setns(f.as_raw_fd()) } != 0 {
                return;
            }
            while !stop.load(Ordering::SeqCst) {
                let _ = TcpStream::connect_timeout(&sa("198.18.0.1:444"), Duration::from_millis(200));
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // The API server, on its own runtime thread.
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some("checkout-5c8d".into()),
            namespace: Some("shop".into()),
            owner_references: Some(vec![fixtures::owner("Deployment", "checkout")]),
            ..Default::default()
        },
        ..Default::default()
    };
    let state = apiserver::State {
        token: "t0ken".into(),
        nodes: vec![fixtures::node(NODE, "10.224.0.9")].into(),
        pods: api_pods.into(),
        replicasets: vec![rs].into(),
        max_page: 100,
        ..Default::default()
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async move {
            let api = apiserver::FakeApi::start(state).await;
            let _ = tx.send(api.addr);
            let _ = stop_rx.await;
            drop(api);
        });
    });
    let addr = rx.recv()?;
    std::fs::write(
        dir.join("kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: demo\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: demo\n  context:\n    cluster: demo\n    user: demo\ncurrent-context: demo\nusers:\n- name: demo\n  user:\n    token: t0ken\n"
        ),
    )?;

    println!("READY {NODE} {}", cgs[0].uid);
    std::io::stdout().flush()?;
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let _ = retry.join();
    let _ = stop_tx.send(());
    let _ = server.join();
    drop(holders);
    drop(cgs);
    drop(nets);
    drop(world);
    drop(record);
    Ok(())
}

/// setns(fd, CLONE_NEWNET) for the calling thread.
///
/// # Safety
/// `fd` must be an open network namespace descriptor.
unsafe fn libc_setns(fd: i32) -> i32 {
    // SAFETY: the caller passes a namespace descriptor.
    unsafe { libc::setns(fd, libc::CLONE_NEWNET) }
}
