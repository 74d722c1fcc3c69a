//! The README's example playbook, run as a reader would copy it: the "Playbook guide"
//! section's `rhai` block, extracted from README.md, on the shipped incident log (pressure:
//! exit 3) and on a log with no public destination above its threshold (clear: exit 0).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The first ```` ```rhai ```` block after the "## Playbook guide" heading.
fn guide_playbook() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let guide = readme
        .split_once("\n## Playbook guide\n")
        .expect("README.md has a \"## Playbook guide\" section")
        .1;
    let block = guide.split_once("```rhai\n").expect("the guide has a rhai block").1;
    block
        .split_once("\n```")
        .expect("the rhai block is closed")
        .0
        .to_string()
}

/// Run the guide's playbook on `log` with `-o json`: (exit code, the JSON document).
fn run_guide(log: &Path) -> (i32, Value) {
    let dir = tempfile::tempdir().unwrap();
    let playbook = dir.path().join("guide.rhai");
    std::fs::write(&playbook, guide_playbook()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_snat-run"))
        .arg(&playbook)
        .arg("-p")
        .arg(format!("log={}", log.display()))
        .args(["-o", "json", "--audit-dir"])
        .arg(dir.path().join("audit"))
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {:?} stderr {}",
            out.stdout,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), doc)
}

#[test]
fn guide_playbook_finds_the_incident_and_exits_3() {
    let (code, doc) = run_guide(&repo().join("tests/data/tcptracer/incident-t4v.log"));
    assert_eq!(code, 3, "{doc:#}");
    assert_eq!(doc["verdict"], "pressure_found", "{doc:#}");
    let findings = doc["findings"].as_array().expect("findings");
    assert!(
        findings
            .iter()
            .any(|f| f["summary"].as_str().is_some_and(|s| s.contains("203.0.113.10:443"))),
        "{doc:#}"
    );
}

#[test]
fn guide_playbook_says_clear_without_pressure() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("quiet.log");
    let mut text = String::from(
        "Tracing TCP established connections. Ctrl-C to end.\n\
         TIME(ns)      TYPE         PID    COMM             IP SADDR            DADDR            SPORT  DPORT  NETNS\n",
    );
    for i in 0..20u64 {
        text.push_str(&format!(
            "{:<13} connect      4242   curl             4  10.244.1.7       203.0.113.10     {:<6} 443    4026532844\n",
            1000 + i,
            40000 + i
        ));
    }
    std::fs::write(&log, text).unwrap();
    let (code, doc) = run_guide(&log);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["verdict"], "clear", "{doc:#}");
    assert_eq!(doc["findings"].as_array().map(Vec::len), Some(0), "{doc:#}");
}
