//! examples/census.rhai on a simulated node (needs root): a pod holding many flows to one
//! public destination and connects stuck in SYN_SENT is named by its UID, with the
//! node-wide per-destination pressure (two namespaces, each under the threshold alone),
//! and the verdict is "pressure found".

use std::net::SocketAddr;

use snat_core::audit::Verdict;
use snat_script::engine::{Limits, build};
use snat_script::{Ctx, RunOptions};
use snat_testbed::{Layout, Netns, Plan, PodCgroup, Qos, Veth, require_root, spawn_holder};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn census_playbook_names_the_pod_under_pressure() {
    if !require_root() {
        return;
    }
    let world = Netns::new("w").unwrap();
    world.add_lo_addr("198.18.0.1/32").unwrap();
    world.add_lo_addr("10.99.0.1/32").unwrap();
    let _srv = spawn_holder(
        Some(&world.path()),
        None,
        &[
            Plan::Listen {
                on: sa("198.18.0.1:443"),
                backlog: 1024,
            },
            Plan::Listen {
                on: sa("10.99.0.1:443"),
                backlog: 1024,
            },
        ],
    )
    .unwrap();
    let pod_ns = Netns::new("p").unwrap();
    let _veth = Veth::new(&pod_ns, "10.201.7.2/24", &world, "10.201.7.1/24").unwrap();
    pod_ns.ip(&["route", "add", "default", "via", "10.201.7.1"]).unwrap();
    let pod = PodCgroup::new(Layout::Systemd, Qos::Burstable).unwrap();
    let _app = spawn_holder(
        Some(&pod_ns.path()),
        Some(&pod.cgroup),
        &[
            Plan::Connect {
                to: sa("198.18.0.1:443"),
                count: 30,
            },
            // Private: must not count.
            Plan::Connect {
                to: sa("10.99.0.1:443"),
                count: 50,
            },
            Plan::ConnectNoWait {
                to: sa("198.18.9.9:443"),
                count: 3,
            },
        ],
    )
    .unwrap();
    // A second namespace with fewer flows to the same destination: neither reaches `warn`
    // alone, the node does.
    let other_ns = Netns::new("q").unwrap();
    let _veth2 = Veth::new(&other_ns, "10.201.8.2/24", &world, "10.201.8.1/24").unwrap();
    other_ns.ip(&["route", "add", "default", "via", "10.201.8.1"]).unwrap();
    let _other = spawn_holder(
        Some(&other_ns.path()),
        None,
        &[Plan::Connect {
            to: sa("198.18.0.1:443"),
            count: 15,
        }],
    )
    .unwrap();

    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/census.rhai")).unwrap();
    let census = |params: &[(&str, &str)]| {
        let params = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let ctx = Ctx::new(RunOptions::default(), params);
        build(&ctx, &Limits::default()).run(&script).unwrap();
        let report: snat_script::report::Report = ctx.report().clone();
        report
    };
    let node_flow_findings = |r: &snat_script::report::Report| -> Vec<serde_json::Value> {
        r.findings
            .iter()
            .filter(|f| f.evidence.get("node_held").is_some())
            .map(|f| serde_json::to_value(f).unwrap())
            .collect()
    };
    // The threshold follows the node's SNAT ports, as triage's: 75 % of them (45 of 60)
    // is a warning, 90 % (45 of 50) critical, and 45 of 61 (73 %) nothing.
    let r = census(&[("ports", "61")]);
    assert!(node_flow_findings(&r).is_empty(), "{:?}", r.findings);
    let r = census(&[("ports", "60")]);
    let hot = node_flow_findings(&r);
    assert_eq!(hot.len(), 1, "{:?}", r.findings);
    assert_eq!(hot[0]["severity"], "warning");
    assert_eq!(
        (&hot[0]["evidence"]["threshold_percent"], &hot[0]["evidence"]["ports"]),
        (&75.into(), &60.into())
    );
    let r = census(&[("ports", "50")]);
    assert_eq!(node_flow_findings(&r)[0]["severity"], "critical", "{:?}", r.findings);
    // A `warn` above the ports does not hide a destination at the budget.
    let r = census(&[("ports", "50"), ("warn", "100")]);
    assert_eq!(node_flow_findings(&r)[0]["severity"], "critical", "{:?}", r.findings);
    // 60 nodes get 512 ports each from AKS's table: 45 flows are not pressure.
    let r = census(&[("nodes", "60"), ("syn_warn", "100")]);
    assert!(node_flow_findings(&r).is_empty(), "{:?}", r.findings);
    assert_eq!(r.verdict, Some(Verdict::Clear));

    let report = census(&[("warn", "40"), ("syn_warn", "3")]);
    assert_eq!(report.verdict, Some(Verdict::PressureFound));
    // The destination is hot for the node (30 + 15 flows), named by its biggest user.
    let hot: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.evidence.get("node_held").is_some())
        .collect();
    assert_eq!(hot.len(), 1, "{:?}", report.findings);
    assert_eq!(hot[0].destination, Some(sa("198.18.0.1:443")));
    assert_eq!(hot[0].evidence["node_held"], 45);
    assert_eq!(hot[0].evidence["owners"], 2);
    assert_eq!(hot[0].evidence["established"], 30);
    assert_eq!(hot[0].netns, Some(pod_ns.inode().unwrap()));
    assert!(hot[0].summary.contains(&pod.uid), "{}", hot[0].summary);
    // The connects waiting in SYN_SENT reach `syn_warn`: named by the namespace with most.
    let syn: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.evidence.get("node_syn_sent").is_some())
        .collect();
    assert_eq!(syn.len(), 1, "{:?}", report.findings);
    assert_eq!(syn[0].evidence["node_syn_sent"], 3);
    assert_eq!(syn[0].netns, Some(pod_ns.inode().unwrap()));
    assert_eq!(syn[0].destination, Some(sa("198.18.9.9:443")));
    // The namespace table: our pod's row has 30 public ESTABLISHED and 3 SYN_SENT.
    let table = report
        .sections
        .iter()
        .find_map(|s| match &s.body {
            snat_script::report::SectionBody::Table { columns, rows } if columns[0] == "netns" => {
                Some((columns.clone(), rows.clone()))
            }
            _ => None,
        })
        .expect("namespace table");
    let col = |name: &str| table.0.iter().position(|c| c == name).unwrap();
    let row = table
        .1
        .iter()
        .find(|r| r[col("netns")] == pod_ns.inode().unwrap())
        .expect("a row for the pod's namespace");
    assert_eq!(row[col("owner")], format!("pod {}", pod.uid));
    assert_eq!(row[col("public_established")], 30);
    assert_eq!(row[col("public_syn_sent")], 3);
    assert_eq!(row[col("established")], 80);
}
