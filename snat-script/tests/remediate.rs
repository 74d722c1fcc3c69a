//! `act::` through the `snat-run` binary and the real kube client, against the loopback API
//! server of snat-core's tests: `--dry-run` calls nothing and prints the exact requests,
//! actions not named by `--allow` stay planned, allowed ones reach the server exactly once
//! however often the playbook re-runs, and a refused action is recorded without hiding the
//! verdict.

#[path = "../../snat-core/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use support::apiserver::{FakeApi, Fault};
use support::fixtures::cluster;

const MSG: &str = "api-7d9f-0 holds 1012 SNAT ports to 20.50.1.2:443";

/// Every action on the culprit found by UID, then the verdict.
fn playbook() -> String {
    format!(
        r#"
let p = kube::pod_by_uid("00000000-0000-0000-0000-000000000000");
let results = [
    act::event(p, "SNATPressure", "{MSG}"),
    act::annotate(p, "snat.io/culprit", "1012 ports to 20.50.1.2:443"),
    act::label(p, "snat.io/snat-pressure", "true"),
    act::restart(p),
    act::cordon(p),
];
for r in results {{ print(`${{r.action}} ${{r.target}} ${{r.state}}: ${{r.result}}`); }}
report::title("remediation");
report::verdict("pressure_found", "culprit api-7d9f-0");
"#
    )
}

struct Env {
    api: FakeApi,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    playbook: PathBuf,
}

async fn env() -> Env {
    let api = FakeApi::start(cluster()).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path(), &[]);
    let playbook = dir.path().join("act.rhai");
    std::fs::write(&playbook, playbook_text()).unwrap();
    Env {
        api,
        dir,
        kubeconfig,
        playbook,
    }
}

fn playbook_text() -> String {
    playbook()
}

impl Env {
    fn audit(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    /// Run snat-run on the playbook (off the runtime's worker, which serves the API).
    async fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_snat-run"));
        c.arg(&self.playbook)
            .arg("--audit-dir")
            .arg(self.audit())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env_remove("SNAT_AUDIT_DIR")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null());
        tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap()
    }

    /// The newest audit record.
    fn last_record(&self) -> Value {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.audit())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        serde_json::from_slice(&std::fs::read(names.last().unwrap()).unwrap()).unwrap()
    }

    fn requests(&self) -> Vec<String> {
        self.api.state.requests.lock().unwrap().clone()
    }

    fn mutating(&self) -> Vec<String> {
        self.requests().into_iter().filter(|r| !r.starts_with("GET ")).collect()
    }

    /// Requests an action makes (its read or its write), as opposed to the lookups.
    fn action_requests(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r.contains("/events")
                    || r.contains("/pods/api-7d9f-0")
                    || r.contains("/deployments/")
                    || r.contains("/nodes/")
            })
            .collect()
    }
}

fn states(record: &Value) -> Vec<(String, String)> {
    record["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap().into(),
                a["state"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn all(state: &str) -> Vec<(String, String)> {
    ["event", "annotate", "label", "restart", "cordon"]
        .iter()
        .map(|a| (a.to_string(), state.to_string()))
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn validate(record: &Value) {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/audit-record.schema.json"))
            .unwrap(),
    )
    .unwrap();
    let v = jsonschema::draft202012::options().build(&schema).unwrap();
    let errs: Vec<String> = v.iter_errors(record).map(|e| e.to_string()).collect();
    assert!(errs.is_empty(), "{errs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_calls_nothing_and_records_the_exact_requests() {
    let e = env().await;
    let allow_all = [
        "--dry-run",
        "--allow",
        "event",
        "--allow",
        "annotate",
        "--allow",
        "label",
        "--allow",
        "restart",
        "--allow",
        "cordon",
    ];
    let o = e.run(&allow_all).await;
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    // The lookup happened; no action touched the server, not even its read.
    assert!(e.requests().iter().any(|r| r.starts_with("GET /api/v1/pods?")));
    assert_eq!(e.mutating(), Vec::<String>::new());
    assert_eq!(e.action_requests(), Vec::<String>::new());
    let err = stderr(&o);
    assert!(
        err.contains("dry-run: act::event on pod/shop/api-7d9f-0 would send")
            && err.contains("POST /api/v1/namespaces/shop/events\nContent-Type: application/json\n{"),
        "{err}"
    );
    assert!(
        err.contains("PATCH /apis/apps/v1/namespaces/shop/deployments/api"),
        "{err}"
    );
    assert!(err.contains("PATCH /api/v1/nodes/node-a"), "{err}");
    let rec = e.last_record();
    validate(&rec);
    assert_eq!(states(&rec), all("planned"));
    // Stage arguments survive the writer's redaction (no argument is named like a secret).
    let label = rec["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "act::label")
        .unwrap();
    assert_eq!(label["args"]["name"], "snat.io/snat-pressure");
    assert_eq!(label["args"]["value"], "true");
    let acts = rec["actions"].as_array().unwrap();
    assert!(acts.iter().all(|a| a["result"] == "dry run: not sent"));
    let ev = &acts[0];
    assert_eq!(ev["target"], "pod/shop/api-7d9f-0");
    assert_eq!(ev["request"]["method"], "POST");
    assert_eq!(ev["request"]["path"], "/api/v1/namespaces/shop/events");
    assert_eq!(
        ev["request"]["body"]["involvedObject"]["uid"],
        "00000000-0000-0000-0000-000000000000"
    );
    assert_eq!(ev["request"]["body"]["message"], MSG);
    assert_eq!(
        acts[4]["request"],
        json!({"method": "PATCH", "path": "/api/v1/nodes/node-a",
               "content_type": "application/merge-patch+json", "body": {"spec": {"unschedulable": true}}})
    );
    assert_eq!(
        acts[2]["request"]["body"],
        json!({"metadata": {"uid": "00000000-0000-0000-0000-000000000000",
                            "labels": {"snat.io/snat-pressure": "true"}}})
    );
    // Dry run without --allow says both.
    let o = e.run(&["--dry-run"]).await;
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(
        e.last_record()["actions"][0]["result"],
        "dry run: not sent (and not allowed: pass --allow event)"
    );
    assert_eq!(e.action_requests(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_not_allowed_stay_planned() {
    let e = env().await;
    let o = e.run(&["--allow", "label"]).await;
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let rec = e.last_record();
    let s = states(&rec);
    assert_eq!(s[2], ("label".to_string(), "applied".to_string()));
    for (i, name) in [(0, "event"), (1, "annotate"), (3, "restart"), (4, "cordon")] {
        assert_eq!(s[i], (name.to_string(), "planned".to_string()));
        assert_eq!(rec["actions"][i]["result"], format!("not allowed: pass --allow {name}"));
    }
    // Only the label's read and patch reached the server.
    assert_eq!(
        e.action_requests(),
        vec![
            "GET /api/v1/namespaces/shop/pods/api-7d9f-0".to_string(),
            "PATCH /api/v1/namespaces/shop/pods/api-7d9f-0".to_string()
        ]
    );
    assert!(stderr(&o).contains("act::event on pod/shop/api-7d9f-0 planned only: not allowed (pass --allow event)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_actions_apply_once_and_reruns_change_nothing() {
    let e = env().await;
    let allow = [
        "--allow", "event", "--allow", "annotate", "--allow", "label", "--allow", "restart", "--allow", "cordon",
    ];
    let o = e.run(&allow).await;
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let rec = e.last_record();
    validate(&rec);
    assert_eq!(states(&rec), all("applied"), "{:#}", rec["actions"]);
    // Each action names the cluster it changed.
    for a in rec["actions"].as_array().unwrap() {
        assert_eq!(
            a["cluster"],
            json!({ "server": format!("http://{}/", e.api.addr), "context": "fake" }),
            "{a:#}"
        );
    }
    // The Event, as the server received it.
    {
        let events = e.api.state.events.lock().unwrap();
        assert_eq!(events.len(), 1);
        let ev = &events[0];
        assert_eq!(
            ev["involvedObject"],
            json!({"apiVersion": "v1", "kind": "Pod", "namespace": "shop", "name": "api-7d9f-0",
                   "uid": "00000000-0000-0000-0000-000000000000"})
        );
        assert_eq!(ev["reason"], "SNATPressure");
        assert_eq!(ev["message"], MSG);
        assert_eq!(ev["type"], "Warning");
        assert_eq!(ev["source"]["component"], "snat");
        assert_eq!(ev["reportingComponent"], "snat");
        // The record's request is what was sent.
        assert_eq!(
            rec["actions"][0]["request"]["body"],
            e.api.state.bodies.lock().unwrap()[0].2
        );
    }
    {
        let pods = e.api.state.pods.lock().unwrap();
        let p = pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("api-7d9f-0"))
            .unwrap();
        assert_eq!(
            p.metadata.annotations.as_ref().unwrap()["snat.io/culprit"],
            "1012 ports to 20.50.1.2:443"
        );
        assert_eq!(p.metadata.labels.as_ref().unwrap()["snat.io/snat-pressure"], "true");
    }
    let dep = e.api.state.workloads.lock().unwrap()[0].clone();
    assert_eq!(
        dep["spec"]["template"]["metadata"]["annotations"]["snat.io/restart-key"],
        "00000000-0000-0000-0000-000000000000"
    );
    assert!(dep["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].is_string());
    assert_eq!(
        e.api.state.nodes.lock().unwrap()[0]
            .spec
            .as_ref()
            .unwrap()
            .unschedulable,
        Some(true)
    );
    let writes = e.mutating();
    assert_eq!(writes.len(), 5, "{writes:?}");

    // The same playbook again: everything unchanged, nothing written, still one Event.
    let o = e.run(&allow).await;
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let rec = e.last_record();
    assert_eq!(states(&rec), all("unchanged"), "{:#}", rec["actions"]);
    assert!(rec["actions"][0]["result"].as_str().unwrap().contains("already exists"));
    assert_eq!(e.mutating(), writes);
    assert_eq!(e.api.state.events.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_action_is_recorded_and_the_verdict_stands() {
    let e = env().await;
    e.api
        .state
        .faults
        .lock()
        .unwrap()
        .push_back(("/api/v1/nodes/node-a".into(), Fault::Status(403, None)));
    let o = e.run(&["--allow", "cordon"]).await;
    // The findings and verdict are intact: exit 3, not a stage failure.
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let rec = e.last_record();
    validate(&rec);
    assert_eq!(rec["outcome"]["kind"], "completed");
    let c = &rec["actions"][4];
    assert_eq!(c["state"], "failed");
    let res = c["result"].as_str().unwrap();
    assert!(
        res.contains("forbidden") && res.contains("get nodes \"node-a\""),
        "{res}"
    );
    assert!(
        stderr(&o).contains("act::cordon on node/node-a failed: forbidden"),
        "{}",
        stderr(&o)
    );
    // A restart of a pod without an owner of a restartable kind is a failed action too.
    std::fs::write(
        &e.playbook,
        r#"let p = kube::pod_by_uid("11111111-0000-0000-0000-000000000002");
           let r = act::restart(p); print(`${r.state}|${r.result}`);"#,
    )
    .unwrap();
    let o = e.run(&["--allow", "restart"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rec = e.last_record();
    assert_eq!(rec["actions"][0]["state"], "failed");
    assert!(
        rec["actions"][0]["result"]
            .as_str()
            .unwrap()
            .contains("only a Deployment, StatefulSet or DaemonSet can be restarted, not a Job"),
        "{}",
        rec["actions"][0]["result"]
    );
    assert_eq!(rec["actions"][0]["request"], Value::Null);
    // Bad arguments are a playbook error (exit 2), before anything is recorded or sent.
    std::fs::write(
        &e.playbook,
        r#"act::label(#{namespace: "shop", name: "api-7d9f-0"}, "k", "not a value");"#,
    )
    .unwrap();
    let before = e.requests().len();
    let o = e.run(&["--allow", "label"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a valid label value"), "{}", stderr(&o));
    assert_eq!(e.last_record()["actions"], json!([]));
    assert_eq!(e.requests().len(), before);
}
