//! examples/tcptracer-log.rhai on a log with more (netns, daddr, dport) rows than the
//! sandbox lets a playbook hold in one array: the per-namespace tables are built in Rust
//! (`snat_only`, `sum_by`), so the playbook still answers instead of hitting the limit.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

#[test]
fn tcptracer_log_copes_with_more_destinations_than_an_array_may_hold() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("wide.log");
    let mut text = String::from(
        "Tracing TCP established connections. Ctrl-C to end.\n\
         TIME(ns)      TYPE         PID    COMM             IP SADDR            DADDR            SPORT  DPORT  NETNS\n",
    );
    // 15 namespaces x 10 public destinations = 150 rows by (netns, daddr, dport), above the
    // limit of 100 given below; netns 4026532800 makes the most connects.
    let mut sport = 40000;
    for ns in 0..15u64 {
        for d in 0..10u64 {
            for _ in 0..(if ns == 0 { 3 } else { 1 }) {
                sport += 1;
                text.push_str(&format!(
                    "{:<13} connect      {:<6} curl             4  10.244.{ns}.7      203.0.113.{d:<3}    {sport:<6} 443    {}\n",
                    1000 + sport,
                    4000 + ns,
                    4026532800 + ns
                ));
            }
        }
    }
    std::fs::write(&log, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_snat-run"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tcptracer-log.rhai"))
        .arg("-p")
        .arg(format!("log={}", log.display()))
        .args(["-o", "json", "--max-array-size", "100", "--audit-dir"])
        .arg(dir.path().join("audit"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let culprits = doc["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["title"] == "Network namespaces by connects to public destinations")
        .expect("the namespaces table");
    let rows = culprits["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 10, "top 10 of 15: {culprits:#}");
    assert_eq!(rows[0], serde_json::json!([30, 4026532800u64]), "{culprits:#}");
    assert_eq!(rows[1], serde_json::json!([10, 4026532801u64]), "{culprits:#}");
}
