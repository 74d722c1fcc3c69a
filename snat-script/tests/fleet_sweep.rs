//! examples/fleet-sweep.rhai through `snat-run` against the loopback API server: every
//! node's pods are read through the exec API and the nodes ranked by flows to one public
//! destination against the SNAT budget.

mod common;

use std::process::{Command, Stdio};

use common::{Server, apiserver, fixtures, kubeconfig};
use serde_json::{Value, json};

const HEADER: &str =
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

/// One pod's /proc/net/tcp: 3 ESTABLISHED to 20.11.11.11:443 (public), 1 SYN_SENT to it,
/// 2 ESTABLISHED to 10.0.0.5:443 (private), 1 TIME_WAIT to the public one.
fn proc_net_tcp() -> String {
    let mut s = HEADER.to_string();
    let line = |i: u32, port: u32, remote: &str, st: &str| {
        format!(
            "   {i}: 0701F40A:{port:04X} {remote} {st} 00000000:00000000 00:00000000 00000000     0        0 {} 1 0000000000000000 100 0 0 10 0\n",
            1000 + i
        )
    };
    for i in 0..3 {
        s.push_str(&line(i, 40000 + i, "0B0B0B14:01BB", "01"));
    }
    s.push_str(&line(3, 40003, "0B0B0B14:01BB", "02"));
    s.push_str(&line(4, 40004, "0500000A:01BB", "01"));
    s.push_str(&line(5, 40005, "0500000A:01BB", "01"));
    s.push_str(&line(6, 40006, "0B0B0B14:01BB", "06"));
    s
}

#[test]
fn ranks_every_node_by_flows_to_one_public_destination() {
    let state = fixtures::cluster();
    *state.exec.lock().unwrap() = Some(apiserver::ExecReply {
        stdout: proc_net_tcp().into_bytes(),
        stderr: vec![],
        status: json!({"metadata": {}, "status": "Success"}),
    });
    let server = Server::start(state);
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path(), server.addr);
    let out = Command::new(env!("CARGO_BIN_EXE_snat-run"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/fleet-sweep.rhai"))
        .args(["-o", "json", "-q", "-p", "ports=24", "--kubeconfig"])
        .arg(&kc)
        .arg("--audit-dir")
        .arg(dir.path().join("audit"))
        .env_remove("SNAT_AUDIT_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &rep["sections"][0];
    let cols: Vec<&str> = t["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let col = |n: &str| cols.iter().position(|c| *c == n).unwrap();
    let rows = t["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    // node-a: 7 pods x 4 public flows (3 ESTABLISHED + 1 SYN_SENT) = 28 of 24 ports.
    assert_eq!(rows[0][col("node")], "node-a");
    assert_eq!(rows[0][col("hottest_flows")], 28);
    assert_eq!(rows[0][col("hottest_destination")], "20.11.11.11:443");
    assert_eq!(rows[0][col("pods_scanned")], 7);
    assert_eq!(rows[0][col("level")], "critical");
    // node-b: 2 pods x 4 = 8.
    assert_eq!(rows[1][col("node")], "node-b");
    assert_eq!(rows[1][col("hottest_flows")], 8);
    assert_eq!(rows[1][col("level")], "ok");
    let findings = rep["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0]["node"]["name"], "node-a");
    assert!(
        rep["summary"]
            .as_str()
            .unwrap()
            .starts_with("1 of 2 node(s) under SNAT pressure; worst node-a: 28 flows"),
        "{}",
        rep["summary"]
    );
}
