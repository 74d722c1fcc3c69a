//! examples/verify-fix.rhai through `snat-run` on saved reports (tests/data/verify-fix):
//! culprits matched by workload across a restart, the drop per culprit, exit 0 when every
//! culprit dropped and 3 (naming the ones that did not) otherwise, clear errors on bad files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn verify(dir: &Path, params: &[(&str, PathBuf)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_snat-run"));
    c.arg(root().join("examples/verify-fix.rhai"))
        .args(["-o", "json", "-q", "--audit-dir"])
        .arg(dir.join("audit"))
        .env_remove("SNAT_AUDIT_DIR")
        .stdin(Stdio::null());
    for (k, v) in params {
        c.arg("-p").arg(format!("{k}={}", v.display()));
    }
    c.output().unwrap()
}

fn data(name: &str) -> PathBuf {
    root().join("tests/data/verify-fix").join(name)
}

fn table_rows(report: &Value) -> Vec<Value> {
    let t = &report["sections"][0];
    let cols: Vec<String> = t["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().into())
        .collect();
    t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut m = serde_json::Map::new();
            for (c, v) in cols.iter().zip(r.as_array().unwrap()) {
                m.insert(c.clone(), v.clone());
            }
            Value::Object(m)
        })
        .collect()
}

#[test]
fn every_culprit_dropped_exits_0_and_matches_the_restarted_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let out = verify(
        dir.path(),
        &[("before", data("before.json")), ("after", data("after-fixed.json"))],
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["verdict"], "clear");
    let rows = table_rows(&rep);
    let checkout = rows
        .iter()
        .find(|r| r["culprit"] == "shop/Deployment/checkout")
        .unwrap();
    assert_eq!(checkout["before_flows"], 124);
    assert_eq!(checkout["after_flows"], 4);
    assert_eq!(checkout["drop_percent"], 97);
    assert_eq!(checkout["before_failed"], 145);
    assert_eq!(checkout["after_failed"], 0);
    assert_eq!(checkout["dropped"], true);
    assert!(
        rep["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["kind"] == "pressure_dropped")
    );
}

#[test]
fn a_culprit_that_did_not_drop_exits_3_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = verify(
        dir.path(),
        &[("before", data("before.json")), ("after", data("after-partial.json"))],
    );
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    let summary = rep["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("pressure did not drop for 1 of 2 culprit(s)")
            && summary.contains("pod bbbbbbbb-0000-0000-0000-000000000002"),
        "{summary}"
    );
    let rows = table_rows(&rep);
    let other = rows
        .iter()
        .find(|r| r["culprit"] == "pod bbbbbbbb-0000-0000-0000-000000000002")
        .unwrap();
    assert_eq!(
        (other["before_flows"].as_i64(), other["after_flows"].as_i64()),
        (Some(60), Some(58))
    );
    assert_eq!(other["dropped"], false);
}

#[test]
fn an_audit_record_or_a_broken_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"schema\": \"snat.report/v1\", \"findings\": ").unwrap();
    let out = verify(
        dir.path(),
        &[("before", broken.clone()), ("after", data("after-fixed.json"))],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.json is not a saved snat report or audit record: not JSON"),
        "{err}"
    );

    // An audit record is recognised, and refused for lack of findings.
    let first = verify(
        dir.path(),
        &[("before", data("before.json")), ("after", data("after-fixed.json"))],
    );
    let rep: Value = serde_json::from_slice(&first.stdout).unwrap();
    let record = PathBuf::from(rep["audit_record"].as_str().unwrap());
    let out = verify(dir.path(), &[("before", record), ("after", data("after-fixed.json"))]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is an audit record: it holds the verdict but no findings"),
        "{err}"
    );

    // No before: the playbook says which flag to pass.
    let out = verify(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("before"));
}
