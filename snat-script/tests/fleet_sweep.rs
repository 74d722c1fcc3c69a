//! examples/fleet-sweep.rhai through `snat-run` against the loopback API server: every
//! node's pods are read through the exec API and the nodes ranked by flows to one public
//! destination against the SNAT budget.

mod common;

use std::process::{Command, Stdio};

use common::{Server, apiserver, fixtures, kubeconfig};
use serde_json::{Value, json};

const HEADER: &str =
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
/// An empty /proc/net/tcp6, as `cat` prints it after /proc/net/tcp.
const HEADER6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

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
    s.push_str(HEADER6);
    s
}

/// Run fleet-sweep.rhai with `-p ports=24` against the fixture cluster, every exec
/// answering `reply`; returns the exit code, the JSON report and stderr.
fn sweep(reply: apiserver::ExecReply) -> (Option<i32>, Value, String) {
    sweep_on(fixtures::cluster(), reply).0
}

/// `sweep` against the cluster `state`; also returns the requests the server received.
fn sweep_on(state: apiserver::State, reply: apiserver::ExecReply) -> ((Option<i32>, Value, String), Vec<String>) {
    *state.exec.lock().unwrap() = Some(reply);
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
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    let requests = server.state.requests.lock().unwrap().clone();
    ((out.status.code(), rep, stderr), requests)
}

/// The named section's rows as maps from column to cell.
fn table(rep: &Value, title_starts: &str) -> Vec<serde_json::Map<String, Value>> {
    let t = rep["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["title"].as_str().unwrap_or("").starts_with(title_starts))
        .unwrap_or_else(|| panic!("no section {title_starts:?}: {rep:#}"));
    let cols: Vec<String> = t["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            cols.iter()
                .cloned()
                .zip(r.as_array().unwrap().iter().cloned())
                .collect()
        })
        .collect()
}

#[test]
fn ranks_every_node_by_flows_to_one_public_destination() {
    let (code, rep, stderr) = sweep(apiserver::ExecReply {
        stdout: proc_net_tcp().into_bytes(),
        stderr: vec![],
        status: json!({"metadata": {}, "status": "Success"}),
    });
    assert_eq!(code, Some(3), "{stderr}");
    let rows = table(&rep, "Nodes by");
    assert_eq!(rows.len(), 2);
    // node-a: 7 pods x 4 public flows (3 ESTABLISHED + 1 SYN_SENT) = 28 of 24 ports.
    assert_eq!(rows[0]["node"], "node-a");
    assert_eq!(rows[0]["hottest_flows"], 28);
    assert_eq!(rows[0]["hottest_destination"], "20.11.11.11:443");
    assert_eq!(rows[0]["pods_scanned"], 7);
    assert_eq!(rows[0]["level"], "critical");
    // node-b: 2 pods x 4 = 8.
    assert_eq!(rows[1]["node"], "node-b");
    assert_eq!(rows[1]["hottest_flows"], 8);
    assert_eq!(rows[1]["level"], "ok");
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

/// An exec that answers with nothing (no /proc/net/tcp header) is a pod that could not be
/// read, not a pod without flows: no node may come out "scanned, 0 failed".
#[test]
fn empty_exec_output_counts_the_pod_as_failed() {
    let (code, rep, stderr) = sweep(apiserver::ExecReply {
        stdout: vec![],
        stderr: vec![],
        status: json!({"metadata": {}, "status": "Success"}),
    });
    // Nothing read is neither clear nor pressure: a run-time failure, with the tables kept.
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(rep["error"]["kind"], "stage_failed", "{rep:#}");
    assert!(
        rep["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no pod could be read (9 failed"),
        "{rep:#}"
    );
    assert!(rep["verdict"].is_null(), "{rep:#}");
    let rows = table(&rep, "Nodes by");
    assert!(
        rows.iter().all(|r| r["level"] == "unknown"),
        "not read is not ok: {rows:#?}"
    );
    let counts: Vec<(Value, Value, Value)> = rows
        .iter()
        .map(|r| (r["node"].clone(), r["pods_scanned"].clone(), r["pods_failed"].clone()))
        .collect();
    assert_eq!(
        counts,
        vec![
            (json!("node-a"), json!(0), json!(7)),
            (json!("node-b"), json!(0), json!(2))
        ]
    );
    let failures = table(&rep, "Pods that could not be read");
    assert_eq!(failures.len(), 9, "{failures:#?}");
    let api0 = failures
        .iter()
        .find(|f| f["pod"] == "shop/api-7d9f-0")
        .unwrap_or_else(|| panic!("{failures:#?}"));
    let why = api0["error"].as_str().unwrap();
    assert!(
        why.contains("shop/api-7d9f-0") && why.contains("no /proc/net/tcp header"),
        "{why}"
    );
}

/// A Windows node pool and a virtual node are not exec'd into (their pods have no `cat` or
/// no host): they are left out as `--all-nodes` leaves them out, and the report names them.
#[test]
fn windows_and_virtual_nodes_are_skipped_and_named() {
    let state = fixtures::cluster();
    state.nodes.lock().unwrap().extend([
        fixtures::windows_node("akswin000000", "10.224.0.10"),
        fixtures::virtual_node("virtual-node-aci-linux", "10.224.0.11"),
    ]);
    state.pods.lock().unwrap().extend([
        fixtures::pod(
            "web",
            "iis-0",
            "33333333-0000-0000-0000-000000000001",
            "akswin000000",
            None,
        ),
        fixtures::pod(
            "burst",
            "aci-0",
            "33333333-0000-0000-0000-000000000002",
            "virtual-node-aci-linux",
            None,
        ),
    ]);
    let ((code, rep, stderr), requests) = sweep_on(
        state,
        apiserver::ExecReply {
            stdout: proc_net_tcp().into_bytes(),
            stderr: vec![],
            status: json!({"metadata": {}, "status": "Success"}),
        },
    );
    assert_eq!(code, Some(3), "{stderr}");
    let nodes: Vec<Value> = table(&rep, "Nodes by").iter().map(|r| r["node"].clone()).collect();
    assert_eq!(nodes, [json!("node-a"), json!("node-b")], "{rep:#}");
    let skipped: Vec<(Value, Value, Value)> = table(&rep, "Skipped nodes")
        .iter()
        .map(|r| (r["node"].clone(), r["unfit"].clone(), r["detail"].clone()))
        .collect();
    assert_eq!(
        skipped,
        [
            (
                json!("virtual-node-aci-linux"),
                json!("virtual_kubelet"),
                json!("type=virtual-kubelet")
            ),
            (
                json!("akswin000000"),
                json!("not_linux"),
                json!("kubernetes.io/os=windows")
            ),
        ]
    );
    assert!(
        rep["summary"]
            .as_str()
            .unwrap()
            .ends_with("; 2 node(s) skipped: [\"virtual-node-aci-linux\", \"akswin000000\"]"),
        "{}",
        rep["summary"]
    );
    let touched: Vec<&String> = requests
        .iter()
        .filter(|r| {
            r.contains("akswin000000")
                || r.contains("virtual-node-aci-linux")
                || r.contains("iis-0")
                || r.contains("aci-0")
        })
        .collect();
    assert!(
        touched.is_empty(),
        "the skipped nodes' pods were listed or exec'd into: {touched:#?}"
    );
}
