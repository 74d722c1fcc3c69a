//! examples/verify-fix.rhai through `snat-run` on saved reports (tests/data/verify-fix):
//! culprits matched by workload across a restart, the drop per culprit, exit 0 when every
//! culprit dropped and 3 (naming the ones that did not) otherwise, clear errors on bad files.
//! Then on audit records: runs of a playbook leave records holding their findings, and
//! verify-fix compares the last two (or the ones named) without any saved report; with
//! root, the real triage.rhai on a simulated pod before and after its flows drop.

mod common;

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

/// `verify`, with more snat-run arguments.
fn verify_with(dir: &Path, params: &[(&str, PathBuf)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_snat-run"));
    c.arg(root().join("examples/verify-fix.rhai"))
        .args(["-o", "json", "-q", "--audit-dir"])
        .arg(dir.join("audit"))
        .args(args)
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
    let t = report["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "table")
        .unwrap();
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

/// verify-fix of before.json against a later run that is before.json with `edit` applied to
/// each finding, expected to exit 3: the report and checkout's row.
fn against_an_edited_before(edit: impl Fn(&mut Value)) -> (Value, Value) {
    let dir = tempfile::tempdir().unwrap();
    let mut after: Value = serde_json::from_str(&std::fs::read_to_string(data("before.json")).unwrap()).unwrap();
    after["run_id"] = "a-later-run".into();
    after["findings"].as_array_mut().unwrap().iter_mut().for_each(edit);
    let after_path = dir.path().join("after.json");
    std::fs::write(&after_path, serde_json::to_string(&after).unwrap()).unwrap();
    let out = verify(dir.path(), &[("before", data("before.json")), ("after", after_path)]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    let checkout = table_rows(&rep)
        .into_iter()
        .find(|r| r["culprit"] == "shop/Deployment/checkout")
        .unwrap();
    (rep, checkout)
}

/// A later run that could not reach the API names the same pod by UID only: it is still
/// the culprit, matched by UID, and its unchanged flows are not "dropped" (before, the
/// workload key and the UID key never met, and the run said the fix worked).
#[test]
fn a_culprit_named_only_by_uid_later_is_still_matched() {
    let (rep, checkout) = against_an_edited_before(|f| {
        let uid = f["pod"]["uid"].clone();
        f["pod"] = serde_json::json!({ "uid": uid });
    });
    assert_eq!(
        (checkout["before_flows"].as_i64(), checkout["after_flows"].as_i64()),
        (Some(124), Some(124))
    );
    assert_eq!(checkout["seen_after"], true);
    assert_eq!(checkout["dropped"], false);
    let summary = rep["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["summary"].as_str().unwrap().starts_with("shop/Deployment/checkout"))
        .unwrap()["summary"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        summary.contains("matched in the later run as [\"pod aaaaaaaa-0000-0000-0000-000000000001\"]"),
        "{summary}"
    );
    // Matched holders are not listed again as new ones.
    assert!(
        rep["sections"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["title"] != "Holders of public flows now that were not culprits before"),
        "{rep}"
    );
}

/// A culprit that fell to `info` in the later run (under the warning level, another pod now
/// critical) still holds the flows it holds: they count, and a 0 % drop is no fix.
#[test]
fn a_culprit_that_fell_to_info_still_counts_its_flows() {
    let (_, checkout) = against_an_edited_before(|f| {
        if f["pod"]["owner"]["name"] == "checkout" {
            f["severity"] = "info".into();
        }
    });
    assert_eq!(
        (checkout["after_flows"].as_i64(), checkout["dropped"].as_bool()),
        (Some(124), Some(false))
    );
}

#[test]
fn a_broken_file_or_a_record_of_another_playbook_is_a_clear_error() {
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

    // No triage run yet: the defaults find nothing, and say so.
    let out = verify(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("matches audit:prev:triage") && err.contains("run the playbook first"),
        "{err}"
    );

    // A verify-fix record holds findings, but not triage's: refused, naming its playbook.
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
        err.contains("verify-fix.rhai, whose findings are not triage culprits")
            && err.contains("-p before=audit:last:triage"),
        "{err}"
    );
    // The same record twice is refused.
    let out = verify(
        dir.path(),
        &[("before", data("before.json")), ("after", data("before.json"))],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the same run"));
}

// ----- comparing audit records ---------------------------------------------------------------

/// A stand-in for triage.rhai that needs no root: it re-emits the findings and verdict of
/// a saved triage report (`-p from=`), so its audit record holds exactly those findings.
/// It fails (exit 1, no findings) when `from` cannot be read.
const REPLAY: &str = r#"
let r = report::load(param("from"));
report::title("SNAT port exhaustion triage (replayed)");
for f in r.findings { report::finding(f); }
report::verdict(r.verdict, "replayed");
"#;

/// Runs the stand-in triage playbook in `dir` against the audit directory of `verify`.
fn triage(dir: &Path, from: &Path) -> (Output, Value) {
    let playbook = dir.join("triage.rhai");
    std::fs::write(&playbook, REPLAY).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_snat-run"))
        .arg(&playbook)
        .args(["-o", "json", "-q", "--audit-dir"])
        .arg(dir.join("audit"))
        .arg("-p")
        .arg(format!("from={}", from.display()))
        .env_remove("SNAT_AUDIT_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let rep = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, rep)
}

fn compared(rep: &Value) -> String {
    rep["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["title"] == "Compared")
        .map(|s| s["text"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[test]
fn the_last_two_triage_runs_are_compared_by_their_audit_records() {
    let dir = tempfile::tempdir().unwrap();
    let (out, before) = triage(dir.path(), &data("before.json"));
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let (out, after) = triage(dir.path(), &data("after-fixed.json"));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // A triage run that fails leaves a record without a full picture: it is skipped.
    let (out, _) = triage(dir.path(), &dir.path().join("missing.json"));
    assert_eq!(out.status.code(), Some(1));

    // The records hold the findings, and the chain across all runs holds.
    let rec: Value = serde_json::from_slice(&std::fs::read(after["audit_record"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(rec["schema_version"], 2);
    assert_eq!(rec["findings"], after["findings"]);
    assert_eq!(rec["findings_truncated"], 0);

    let out = verify(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["verdict"], "clear");
    let text = compared(&rep);
    // before, after, and what was compared: these runs' findings predate closing sockets.
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.lines()
            .nth(2)
            .unwrap()
            .starts_with("measure: public flows (open only"),
        "{text}"
    );
    let (b_id, a_id) = (before["run_id"].as_str().unwrap(), after["run_id"].as_str().unwrap());
    assert!(
        text.contains(&format!(
            "before: audit record {}",
            before["audit_record"].as_str().unwrap()
        )) && text.contains(&format!("run {b_id} of "))
            && text.contains(&format!(
                "after:  audit record {}",
                after["audit_record"].as_str().unwrap()
            ))
            && text.contains(&format!("run {a_id} of ")),
        "{text}"
    );
    let started = rec["started_at"].as_str().unwrap();
    assert!(text.contains(started), "the times of the runs are shown: {text}");
    let rows = table_rows(&rep);
    let checkout = rows
        .iter()
        .find(|r| r["culprit"] == "shop/Deployment/checkout")
        .unwrap();
    assert_eq!(
        (checkout["before_flows"].as_i64(), checkout["after_flows"].as_i64()),
        (Some(124), Some(4))
    );
    assert_eq!(checkout["dropped"], true);

    // A partial fix, named by run id: exit 3, naming the culprit that did not drop.
    let (_, partial) = triage(dir.path(), &data("after-partial.json"));
    let p_id = partial["run_id"].as_str().unwrap();
    let out = verify(
        dir.path(),
        &[
            ("before", PathBuf::from(format!("audit:{}", &b_id[..8]))),
            ("after", PathBuf::from(format!("audit:{p_id}"))),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        rep["summary"]
            .as_str()
            .unwrap()
            .contains("pod bbbbbbbb-0000-0000-0000-000000000002"),
        "{rep:#}"
    );
    assert!(compared(&rep).contains(&format!("run {p_id} of ")));

    // Only `after`: before is the triage run before it (the fixed one, not the failed one).
    let out = verify(dir.path(), &[("after", PathBuf::from(format!("audit:{p_id}")))]);
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = compared(&rep);
    assert!(
        text.contains(&format!(
            "before: audit record {}",
            after["audit_record"].as_str().unwrap()
        )),
        "{text}"
    );

    // A saved report and an audit record mix.
    let out = verify(
        dir.path(),
        &[
            ("before", data("before.json")),
            ("after", PathBuf::from("audit:last:triage")),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(compared(&serde_json::from_slice::<Value>(&out.stdout).unwrap()).contains("before: saved report"));

    // Every record snat-run wrote (completed, failed, verify-fix's own) matches the
    // committed schema.
    let schema: Value =
        serde_json::from_slice(&std::fs::read(root().join("schemas/audit-record.schema.json")).unwrap()).unwrap();
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let records: Vec<_> = std::fs::read_dir(dir.path().join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(
        records.len(),
        8,
        "one record per run (4 triage, 4 verify-fix): {records:?}"
    );
    for p in &records {
        let v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        let errs: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errs.is_empty(), "{}: {errs:?}", p.display());
    }

    // Every run left one record, and the chain holds across them.
    let status = Command::new(env!("CARGO_BIN_EXE_snat-run"))
        .args(["audit", "verify"])
        .arg(dir.path().join("audit"))
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
}

// ----- the real triage.rhai, before and after (needs root) ---------------------------------

/// Runs examples/triage.rhai (census only, no cluster) into the audit directory of `dir`.
fn real_triage(dir: &Path, kubeconfig: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_snat-run"))
        .arg(root().join("examples/triage.rhai"))
        .args([
            "-p",
            "seconds=0",
            "-p",
            "node=node-v",
            "-p",
            "ports=32",
            "-o",
            "json",
            "-q",
        ])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--audit-dir")
        .arg(dir.join("audit"))
        .env_remove("SNAT_AUDIT_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn real_triage_runs_before_and_after_a_fix_are_compared_by_their_records() {
    use snat_testbed::{Layout, Netns, Plan, PodCgroup, Qos, Veth, require_root, spawn_holder};
    if !require_root() {
        return;
    }
    let sa = |s: &str| -> std::net::SocketAddr { s.parse().unwrap() };
    let world = Netns::new("vw").unwrap();
    world.add_lo_addr("203.0.113.91/32").unwrap();
    let _srv = spawn_holder(
        Some(&world.path()),
        None,
        &[Plan::Listen {
            on: sa("203.0.113.91:443"),
            backlog: 1024,
        }],
    )
    .unwrap();
    // The pod's network namespace, made again for the run after the fix as a redeployed
    // pod's would be: the closed connections' TIME_WAIT sockets (ports the load balancer
    // still holds, which triage counts) go with the old one.
    let pod_netns = |subnet: u8| {
        let ns = Netns::new("vp").unwrap();
        let veth = Veth::new(
            &ns,
            &format!("10.202.{subnet}.2/24"),
            &world,
            &format!("10.202.{subnet}.1/24"),
        )
        .unwrap();
        ns.ip(&["route", "add", "default", "via", &format!("10.202.{subnet}.1")])
            .unwrap();
        (veth, ns)
    };
    let cg = PodCgroup::new(Layout::Systemd, Qos::Burstable).unwrap();
    let holder = |ns: &Netns, count: usize| {
        spawn_holder(
            Some(&ns.path()),
            Some(&cg.cgroup),
            &[Plan::Connect {
                to: sa("203.0.113.91:443"),
                count,
            }],
        )
        .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let kc = common::kubeconfig(dir.path(), closed);
    let culprit = format!("pod {}", cg.uid);

    // Before: 40 flows to one public destination against 32 ports.
    let (veth, ns) = pod_netns(91);
    let before_holder = holder(&ns, 40);
    let before = real_triage(dir.path(), &kc);
    drop(before_holder);
    drop((veth, ns));
    // After the fix: 2 pooled flows, from the pod made again.
    let (veth, ns) = pod_netns(92);
    let fixed_holder = holder(&ns, 2);
    let after = real_triage(dir.path(), &kc);
    drop(fixed_holder);
    drop((veth, ns));

    let out = verify(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = table_rows(&rep)
        .into_iter()
        .find(|r| r["culprit"] == culprit.as_str())
        .unwrap_or_else(|| panic!("no row for {culprit}: {rep:#}"));
    assert_eq!(
        (row["before_flows"].as_i64(), row["after_flows"].as_i64()),
        (Some(40), Some(2))
    );
    assert_eq!(row["dropped"], true);
    let text = compared(&rep);
    // triage counts open and closing sockets alike (ports held): so does the comparison.
    assert!(
        text.contains("\nmeasure: SNAT ports held (open and closing sockets)"),
        "{text}"
    );
    for r in [&before, &after] {
        assert!(
            text.contains(&format!("run {} of ", r["run_id"].as_str().unwrap())),
            "{text}"
        );
    }

    // A fix that did not work: 30 flows left, against the first run by id: exit 3.
    let (_veth, ns) = pod_netns(93);
    let _partial = holder(&ns, 30);
    real_triage(dir.path(), &kc);
    let b = format!("audit:{}", before["run_id"].as_str().unwrap());
    let out = verify(
        dir.path(),
        &[
            ("before", PathBuf::from(b)),
            ("after", PathBuf::from("audit:last:triage")),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = table_rows(&rep)
        .into_iter()
        .find(|r| r["culprit"] == culprit.as_str())
        .unwrap();
    assert_eq!(
        (row["before_flows"].as_i64(), row["after_flows"].as_i64()),
        (Some(40), Some(30))
    );
    assert!(rep["summary"].as_str().unwrap().contains(&culprit), "{rep:#}");
}

// ----- after=now: only on the host the earlier run was on ----------------------------------

/// before.json saved into `dir` as a report of a run on `host` (`None`: a report that does
/// not say, as saved by an older snat).
fn before_on(dir: &Path, host: Option<&str>) -> PathBuf {
    let mut v: Value = serde_json::from_slice(&std::fs::read(data("before.json")).unwrap()).unwrap();
    match host {
        Some(h) => v["host"] = serde_json::json!({ "hostname": h }),
        None => assert!(v.get("host").is_none(), "before.json names no host"),
    }
    let p = dir.join("before-on-a-host.json");
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    p
}

/// A `--host-proc` tree of a host named `name` (PID 1's /etc/hostname), with no process.
fn proc_of_host(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join("hostproc");
    std::fs::create_dir_all(p.join("1").join("root").join("etc")).unwrap();
    std::fs::write(p.join("1").join("root").join("etc/hostname"), format!("{name}\n")).unwrap();
    p
}

fn stages(rep: &Value) -> Vec<String> {
    let rec: Value = serde_json::from_slice(&std::fs::read(rep["audit_record"].as_str().unwrap()).unwrap()).unwrap();
    rec["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

/// A census here says nothing about another node's culprits (every one would look gone,
/// "fixed", exit 0): an earlier run on another host is refused, naming it and how to
/// compare there, before any census.
#[test]
fn after_now_refuses_an_earlier_run_on_another_host() {
    let dir = tempfile::tempdir().unwrap();
    let here = snat_core::audit::HostInfo::current().hostname;
    let before = before_on(dir.path(), Some("aks-elsewhere-vmss000007"));
    let out = verify(
        dir.path(),
        &[("before", before.clone()), ("after", PathBuf::from("now"))],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    let msg = rep["error"]["message"].as_str().unwrap();
    assert_eq!(rep["error"]["kind"], "playbook_error", "{rep:#}");
    for want in [
        format!(
            "before: {} is a run on host aks-elsewhere-vmss000007, but this is host {here}",
            before.display()
        ),
        "Run verify-fix on aks-elsewhere-vmss000007".into(),
        "or pass -p after= a saved report or audit record of a later run on aks-elsewhere-vmss000007".into(),
    ] {
        assert!(msg.contains(&want), "{want:?} not in {msg:?}");
    }
    assert!(rep["verdict"].is_null(), "{rep:#}");
    assert_eq!(stages(&rep), ["report::load"], "no census was taken");
}

/// "This host" is the host of --host-proc: its name decides, not the name of the machine
/// snat-run runs on.
#[test]
fn after_now_checks_the_host_of_host_proc() {
    let dir = tempfile::tempdir().unwrap();
    let before = before_on(dir.path(), Some("aks-nodepool1-12345678-vmss000003"));
    let params = [("before", before), ("after", PathBuf::from("now"))];
    let other = proc_of_host(dir.path(), "aks-nodepool1-12345678-vmss000009");
    let out = verify_with(dir.path(), &params, &["--host-proc", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        rep["error"]["message"].as_str().unwrap().contains(
            "is a run on host aks-nodepool1-12345678-vmss000003, but this is host aks-nodepool1-12345678-vmss000009"
        ),
        "{rep:#}"
    );

    // The same host: no refusal; the census of that /proc (of no socket) goes on.
    std::fs::remove_dir_all(&other).unwrap();
    let same = proc_of_host(dir.path(), "aks-nodepool1-12345678-vmss000003");
    let out = verify_with(dir.path(), &params, &["--host-proc", same.to_str().unwrap()]);
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(rep["error"].is_null(), "{rep:#}");
    assert!(stages(&rep).contains(&"census::namespaces".to_string()), "{rep:#}");
    assert!(
        compared(&rep).contains("a socket census of this node (host aks-nodepool1-12345678-vmss000003) now"),
        "{rep:#}"
    );
}

/// On the earlier run's own host the census is taken as before, and the report says which
/// host both sides are; an earlier run that does not say its host gets a warning and is
/// compared all the same. A census of this host needs root.
#[test]
fn after_now_on_the_same_host_compares_and_an_unknown_host_warns() {
    if !snat_testbed::require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let here = snat_core::audit::HostInfo::current().hostname;
    let before = before_on(dir.path(), Some(&here));
    let out = verify(dir.path(), &[("before", before), ("after", PathBuf::from("now"))]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("warning"), "{err}");
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = compared(&rep);
    assert!(
        text.contains(&format!("of examples/triage.rhai on host {here}, "))
            && text.contains(&format!("after:  a socket census of this node (host {here}) now")),
        "{text}"
    );

    let before = before_on(dir.path(), None);
    let out = verify(
        dir.path(),
        &[("before", before.clone()), ("after", PathBuf::from("now"))],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "verify-fix: warning: before: {} does not say which host it ran on",
            before.display()
        )) && err.contains(&format!("a census of this host ({here}) now")),
        "{err}"
    );
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(compared(&rep).contains("on host unknown, "), "{}", compared(&rep));
}

/// Two saved runs that name different hosts cannot be compared (every culprit of one would
/// look gone on the other): refused, naming both hosts and what to pass instead. The same
/// host, or a run that names none (saved by an older snat), is compared as before.
#[test]
fn two_saved_runs_of_different_hosts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let before = before_on(dir.path(), Some("aks-nodepool1-12345678-vmss000003"));
    let mut after: Value = serde_json::from_slice(&std::fs::read(data("after-fixed.json")).unwrap()).unwrap();
    after["host"] = serde_json::json!({ "hostname": "aks-nodepool1-12345678-vmss000009" });
    let after_p = dir.path().join("after-elsewhere.json");
    std::fs::write(&after_p, after.to_string()).unwrap();
    let out = verify(dir.path(), &[("before", before.clone()), ("after", after_p.clone())]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    let msg = rep["error"]["message"].as_str().unwrap();
    for want in [
        format!(
            "before: {} is a run on host aks-nodepool1-12345678-vmss000003, but after: {} is a run on host aks-nodepool1-12345678-vmss000009",
            before.display(),
            after_p.display()
        ),
        "Pass two runs of the same host".to_string(),
    ] {
        assert!(msg.contains(&want), "{want:?} not in {msg:?}");
    }
    assert_eq!(stages(&rep), ["report::load", "report::load"], "nothing compared");

    // The same host: compared.
    after["host"] = serde_json::json!({ "hostname": "aks-nodepool1-12345678-vmss000003" });
    std::fs::write(&after_p, after.to_string()).unwrap();
    let out = verify(dir.path(), &[("before", before), ("after", after_p.clone())]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // One side names no host: compared, as before.
    let out = verify(dir.path(), &[("before", data("before.json")), ("after", after_p)]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
