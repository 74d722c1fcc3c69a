//! `snat-run --on-node` / `--all-nodes` against the loopback API server, whose Jobs "run"
//! by printing a framed node log: the merged report and exit code follow the nodes, the
//! parameters reach each node's command line, every Job is deleted, exactly one local audit
//! record is written (its stages hold the fleet call) and the fleet files land in a
//! subdirectory that `audit verify` does not trip on.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Server, apiserver, fixtures, kubeconfig};
use serde_json::{Value, json};
use snat_core::k8s::fleet;

const PLAYBOOK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/census.rhai");

fn server() -> Server {
    let st = fixtures::cluster();
    *st.job_runtime.lock().unwrap() = Some(Duration::from_millis(10));
    Server::start(st)
}

fn snat_run(dir: &Path, server: &Server, args: &[&str]) -> Output {
    let kc = kubeconfig(dir, server.addr);
    Command::new(env!("CARGO_BIN_EXE_snat-run"))
        .arg(PLAYBOOK)
        .args(["--output", "json", "--kubeconfig"])
        .arg(&kc)
        .arg("--audit-dir")
        .arg(dir.join("audit"))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

/// Run snat-run as `snat_run` does, but with stderr on a pseudo-terminal, as in an
/// interactive shell. Returns the exit code and what was written to the terminal.
fn snat_run_on_a_terminal(dir: &Path, server: &Server, args: &[&str]) -> (Option<i32>, String) {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new file descriptors, which are then owned here.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and nothing else owns them.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let kc = kubeconfig(dir, server.addr);
    let child = {
        // The Command holds the terminal's slave end; dropping it after the spawn leaves the
        // child the only holder, so reading the master ends when the child exits.
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_snat-run"));
        cmd.arg(PLAYBOOK)
            .args(["--output", "json", "--kubeconfig"])
            .arg(&kc)
            .arg("--audit-dir")
            .arg(dir.join("audit"))
            .args(args)
            .env_remove("KUBECONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::from(slave));
        cmd.spawn().unwrap()
    };
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::from(master);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Linux answers EIO once the last holder of the slave end has closed it.
        while let Ok(n) = f.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&buf).replace("\r\n", "\n")
    });
    let out = child.wait_with_output().unwrap();
    (out.status.code(), reader.join().unwrap())
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Assert `out` is a refusal (exit 2) whose stderr holds every one of `needles`.
fn expect_refused(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
}

fn node_rows(rep: &Value) -> Vec<Value> {
    let s = rep["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["title"] == "Nodes")
        .unwrap_or_else(|| panic!("no Nodes section: {rep:#}"));
    s["rows"].as_array().unwrap().clone()
}

/// The top-level audit records (every `*.json` directly in the audit directory).
fn records(audit: &Path) -> Vec<Value> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(audit).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() && p.extension().is_some_and(|x| x == "json") {
            v.push(serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap());
        }
    }
    v
}

fn audit_verify(audit: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_snat-run"))
        .args(["audit", "verify"])
        .arg(audit)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pressure_log(node: &str) -> String {
    let report = json!({
        "title": "node census", "node": node, "verdict": "pressure_found",
        "findings": [{"kind": "snat_pressure", "severity": "critical", "summary": "pod shop/api-0 holds 900 ports to 20.1.1.1:443"}],
    });
    let audit = json!({"schema_version": 1, "run_id": format!("run-{node}"), "exit_code": 3});
    format!(
        "--- snat:report ---\n{report}\n\n--- snat:audit ---\n{audit}\n\n--- snat:stderr ---\n\n--- snat:exit 3 ---\n"
    )
}

#[test]
fn on_node_runs_one_job_and_reports_its_pressure() {
    let srv = server();
    srv.state
        .node_logs
        .lock()
        .unwrap()
        .insert("node-a".into(), pressure_log("node-a"));
    let dir = tempfile::tempdir().unwrap();
    let out = snat_run(
        dir.path(),
        &srv,
        &[
            "--on-node",
            "node-a",
            "--image",
            "registry.example/snat:1",
            "--param",
            "warn=64",
            "--dry-run",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep = report(&out);
    assert_eq!(rep["verdict"], "pressure_found", "{rep:#}");
    assert_eq!(rep["exit_code"], 3);
    let rows = node_rows(&rep);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][0], "node-a");
    assert_eq!(rows[0][2], 3);
    assert_eq!(rows[0][3], "pressure_found");
    assert_eq!(rows[0][4], "pod shop/api-0 holds 900 ports to 20.1.1.1:443");
    // The node's findings are the run's, each naming its node (also in the audit record).
    let findings = rep["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{rep:#}");
    assert_eq!(findings[0]["node"]["name"], "node-a");
    assert_eq!(findings[0]["severity"], "critical");
    let rec: Value =
        serde_json::from_str(&std::fs::read_to_string(rep["audit_record"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(rec["findings"][0]["node"]["name"], "node-a", "{rec:#}");

    // One Job, on node-a, deleted afterwards; it carries the image and the run's options.
    let s = &srv.state;
    assert_eq!(s.created.load(Ordering::SeqCst), 1);
    assert_eq!(s.deleted.load(Ordering::SeqCst), 1);
    let job = serde_json::to_value(&s.manifests.lock().unwrap()[0]).unwrap();
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["nodeName"], "node-a");
    assert_eq!(job["metadata"]["namespace"], "snat");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example/snat:1");
    let argv: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for w in [["--param", "warn=64"].as_slice(), &["--dry-run"]] {
        assert!(argv.windows(w.len()).any(|x| x == w), "{w:?} not in {argv:?}");
    }
    // No secret parameter: no Secret, nothing mounted, no --param-file.
    assert!(!argv.contains(&"--param-file"), "{argv:?}");
    let secret_calls = s
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.contains("/secrets"))
        .count();
    assert_eq!(secret_calls, 0);

    // Exactly one local record, with the fleet stage; the fleet files in fleet/<run id>/.
    let audit = dir.path().join("audit");
    let recs = records(&audit);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    let rec = &recs[0];
    assert_eq!(rec["exit_code"], 3);
    let stages = rec["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 1, "{stages:?}");
    assert_eq!(stages[0]["name"], "fleet::run");
    let run_id = rec["run_id"].as_str().unwrap();
    assert_eq!(rep["run_id"], run_id);
    let fdir = audit.join("fleet").join(run_id);
    let fleet: Value =
        serde_json::from_str(&std::fs::read_to_string(fdir.join(format!("fleet-{run_id}.json"))).unwrap()).unwrap();
    assert_eq!(fleet["run_id"], run_id);
    assert_eq!(fleet["nodes"][0]["node"], "node-a");
    assert_eq!(fleet["nodes"][0]["audit_run_id"], "run-node-a");
    assert!(fdir.join(fleet["nodes"][0]["audit_file"].as_str().unwrap()).is_file());
    assert_eq!(assert_fleet_record_valid(dir.path()), fleet);
    audit_verify(&audit);
}

#[test]
fn all_nodes_covers_every_node() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    let out = snat_run(
        dir.path(),
        &srv,
        &[
            "--all-nodes",
            "--image",
            "img:1",
            "--namespace",
            "ops",
            "--concurrency",
            "1",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep = report(&out);
    assert_eq!(rep["verdict"], "clear");
    let nodes: Vec<Value> = node_rows(&rep).iter().map(|r| r[0].clone()).collect();
    assert_eq!(nodes, vec![json!("node-a"), json!("node-b")]);
    assert_eq!(srv.state.created.load(Ordering::SeqCst), 2);
    assert_eq!(srv.state.deleted.load(Ordering::SeqCst), 2);
    assert_eq!(srv.state.max_in_flight.load(Ordering::SeqCst), 1);
    for j in srv.state.manifests.lock().unwrap().iter() {
        assert_eq!(j.metadata.namespace.as_deref(), Some("ops"));
    }
    let audit = dir.path().join("audit");
    assert_eq!(records(&audit).len(), 1);
    audit_verify(&audit);
}

/// The fixture cluster plus a Windows node, an ACI virtual node and, if asked, a NotReady
/// node.
fn mixed_server(not_ready: bool) -> Server {
    let st = fixtures::cluster();
    *st.job_runtime.lock().unwrap() = Some(Duration::from_millis(10));
    let mut nodes = st.nodes.lock().unwrap();
    nodes.push(fixtures::windows_node("akswin000000", "10.224.0.10"));
    nodes.push(fixtures::virtual_node("virtual-node-aci-linux", "10.224.0.11"));
    if not_ready {
        nodes.push(fixtures::not_ready_node("node-c", "10.224.0.12"));
    }
    drop(nodes);
    Server::start(st)
}

/// Assert the fleet record the run in `dir` wrote matches `schemas/fleet-record.schema.json`.
fn assert_fleet_record_valid(dir: &Path) -> Value {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../schemas/fleet-record.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let rec = fleet_record(dir);
    let errs: Vec<String> = validator
        .iter_errors(&rec)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errs.is_empty(), "{errs:#?}\n{rec:#}");
    rec
}

/// The fleet record the run wrote.
fn fleet_record(dir: &Path) -> Value {
    let fdir = std::fs::read_dir(dir.join("audit/fleet"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let f = std::fs::read_dir(&fdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("fleet-"))
        .unwrap();
    serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap()
}

/// A Windows node pool or a virtual node does not make a clear --all-nodes run fail: the
/// Linux node Job is not created there, and stderr, the report and the fleet record say
/// which nodes were skipped and why.
#[test]
fn all_nodes_skips_windows_and_virtual_nodes() {
    let srv = mixed_server(false);
    let dir = tempfile::tempdir().unwrap();
    let out = snat_run(dir.path(), &srv, &["--all-nodes", "--image", "img:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {err}");
    assert!(
        err.contains(
            "snat-run: --all-nodes skips 2 node(s) snat's Linux node Job cannot run on: virtual-node-aci-linux: a virtual node (type=virtual-kubelet), with no host of its own; akswin000000: not a Linux node (kubernetes.io/os=windows)"
        ),
        "{err}"
    );
    let rep = report(&out);
    assert_eq!(rep["verdict"], "clear");
    let nodes: Vec<Value> = node_rows(&rep).iter().map(|r| r[0].clone()).collect();
    assert_eq!(nodes, vec![json!("node-a"), json!("node-b")]);
    let skipped = rep["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["title"] == "Skipped nodes")
        .unwrap_or_else(|| panic!("no Skipped nodes section: {rep:#}"));
    assert_eq!(
        skipped["rows"],
        json!([
            ["virtual-node-aci-linux", "virtual_kubelet", "type=virtual-kubelet"],
            ["akswin000000", "not_linux", "kubernetes.io/os=windows"]
        ])
    );
    assert_eq!(srv.state.created.load(Ordering::SeqCst), 2);
    let rec = assert_fleet_record_valid(dir.path());
    assert_eq!(rec["skipped"].as_array().unwrap().len(), 2, "{rec:#}");
    assert_eq!(rec["skipped"][1]["node"], "akswin000000");
}

/// A NotReady node is not waited for until the Jobs' deadline: it fails at once, without
/// a Job, and the run is not called clear with a node unchecked.
#[test]
fn all_nodes_fails_a_not_ready_node_without_a_job() {
    let srv = mixed_server(true);
    let dir = tempfile::tempdir().unwrap();
    let out = snat_run(dir.path(), &srv, &["--all-nodes", "--image", "img:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("snat-run: warning: node node-c: NotReady (Ready=Unknown: NodeStatusUnknown: Kubelet stopped posting node status.): it fails without a Job"),
        "{err}"
    );
    let rep = report(&out);
    let rows = node_rows(&rep);
    assert_eq!(rows.len(), 3);
    assert_eq!(
        (rows[2][0].as_str(), rows[2][1].as_str()),
        (Some("node-c"), Some("failed"))
    );
    assert!(rows[2][5].as_str().unwrap().contains("NotReady"), "{rep:#}");
    assert!(rep["error"]["message"].as_str().unwrap().contains("node-c"), "{rep:#}");
    assert_eq!(
        srv.state.created.load(Ordering::SeqCst),
        2,
        "no Job for the NotReady node"
    );
}

/// --on-node naming a Windows or virtual node is refused (exit 2) before any Job is created.
#[test]
fn on_node_refuses_a_node_the_job_cannot_run_on() {
    let srv = mixed_server(false);
    let dir = tempfile::tempdir().unwrap();
    let out = snat_run(
        dir.path(),
        &srv,
        &["--on-node", "node-a", "--on-node", "akswin000000", "--image", "img:1"],
    );
    expect_refused(
        &out,
        &[
            "--on-node akswin000000: not a Linux node (kubernetes.io/os=windows): snat's node Job is a privileged Linux pod and cannot run there; no Job was created",
        ],
    );
    assert_eq!(report(&out)["error"]["kind"], "usage_error");
    let out = snat_run(
        dir.path(),
        &srv,
        &["--on-node", "virtual-node-aci-linux", "--image", "img:1"],
    );
    expect_refused(&out, &["virtual-node-aci-linux: a virtual node (type=virtual-kubelet)"]);
    assert_eq!(srv.state.created.load(Ordering::SeqCst), 0);
}

#[test]
fn a_failed_node_without_pressure_fails_the_run() {
    let srv = server();
    srv.state.failing_nodes.lock().unwrap().push("node-b".into());
    let dir = tempfile::tempdir().unwrap();
    let out = snat_run(dir.path(), &srv, &["--all-nodes", "--image", "img:1"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep = report(&out);
    let rows = node_rows(&rep);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1][0], "node-b");
    assert_eq!(rows[1][1], "failed");
    assert!(rep["error"]["message"].as_str().unwrap().contains("node-b"), "{rep:#}");
    let rec = assert_fleet_record_valid(dir.path());
    assert_eq!(rec["nodes"][1]["outcome"], "failed", "{rec:#}");
    let audit = dir.path().join("audit");
    let recs = records(&audit);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["stages"][0]["outcome"], "failed");
    audit_verify(&audit);
}

/// A node named twice gets one Job (a second Job of the same name would be refused with
/// 409 and that node reported failed), and one warning names it.
#[test]
fn a_node_named_twice_runs_once_with_a_warning() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    let out = snat_run(
        dir.path(),
        &srv,
        &[
            "--on-node",
            "node-b",
            "--on-node",
            "node-a",
            "--on-node",
            "node-b",
            "--on-node",
            "node-b",
            "--image",
            "img:1",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(
        warnings,
        ["snat-run: warning: --on-node node-b given more than once: each node runs once"],
        "{err}"
    );
    let rep = report(&out);
    let rows: Vec<(Value, Value)> = node_rows(&rep).iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    assert_eq!(
        rows,
        [
            (json!("node-b"), json!("completed")),
            (json!("node-a"), json!("completed"))
        ],
        "{rep:#}"
    );
    assert_eq!(srv.state.created.load(Ordering::SeqCst), 2);
    let pinned: Vec<String> = srv
        .state
        .manifests
        .lock()
        .unwrap()
        .iter()
        .map(|j| {
            j.spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .node_name
                .clone()
                .unwrap()
        })
        .filter(|n| n == "node-b")
        .collect();
    assert_eq!(pinned.len(), 1, "one Job on node-b");
}

#[test]
fn on_node_without_image_is_a_usage_error() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    let out = snat_run(dir.path(), &srv, &["--on-node", "node-a"]);
    expect_refused(&out, &["--image"]);
    assert_eq!(srv.state.created.load(Ordering::SeqCst), 0);

    let out = snat_run(
        dir.path(),
        &srv,
        &["--on-node", "node-a", "--all-nodes", "--image", "i"],
    );
    expect_refused(&out, &["cannot be used with"]);
    assert_eq!(srv.state.created.load(Ordering::SeqCst), 0);
}

/// A mistyped --on-node is refused (exit 2, naming it and the known nodes) before any Job
/// is created, also for the nodes that do exist: on a real cluster its Job would stay
/// Pending until the deadline.
#[test]
fn an_unknown_node_is_refused_before_any_job_is_created() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    let out = snat_run(
        dir.path(),
        &srv,
        &["--on-node", "node-a", "--on-node", "nosuchnode", "--image", "img:1"],
    );
    expect_refused(
        &out,
        &["--on-node nosuchnode: no such node in the cluster; its nodes: node-a, node-b; no Job was created"],
    );
    let rep = report(&out);
    assert_eq!(rep["error"]["kind"], "usage_error", "{rep:#}");
    assert_eq!(rep["exit_code"], 2);
    assert_eq!(srv.state.created.load(Ordering::SeqCst), 0);
    let reqs = srv.state.requests.lock().unwrap().clone();
    assert!(reqs.iter().any(|r| r == "GET /api/v1/nodes/nosuchnode"), "{reqs:#?}");
    assert!(!reqs.iter().any(|r| r.starts_with("POST")), "{reqs:#?}");
    // Recorded like any refused command line.
    let audit = dir.path().join("audit");
    let recs = records(&audit);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["exit_code"], 2);
    assert!(
        recs[0]["outcome"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nosuchnode"),
        "{:#}",
        recs[0]
    );
    audit_verify(&audit);
}

/// Without the RBAC to get nodes the names cannot be checked: the run says so and goes on.
#[test]
fn node_names_that_cannot_be_checked_do_not_stop_the_run() {
    let srv = server();
    srv.state
        .faults
        .lock()
        .unwrap()
        .push_back(("/api/v1/nodes/node-a".into(), apiserver::Fault::Status(403, None)));
    let dir = tempfile::tempdir().unwrap();
    let out = snat_run(dir.path(), &srv, &["--on-node", "node-a", "--image", "img:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {err}");
    assert!(
        err.contains("warning: cannot check that the --on-node names are nodes"),
        "{err}"
    );
    assert_eq!(srv.state.created.load(Ordering::SeqCst), 1);
}

/// With stderr a terminal, a fleet run says what each node's Job does and how many nodes are
/// done (a run can last until the Jobs' deadline); `-q` silences it.
#[test]
fn progress_lines_on_a_terminal() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = snat_run_on_a_terminal(dir.path(), &srv, &["--all-nodes", "--image", "img:1"]);
    assert_eq!(code, Some(0), "{err}");
    let job_a = fleet::job_name(&fleet_run_id(&srv), "node-a");
    for want in [
        "fleet: ".to_string() + PLAYBOOK + " on 2 node(s), at most 10 Job(s) at a time, in namespace snat",
        format!("fleet: node node-a: job {job_a} created"),
        format!("fleet: node node-a: job {job_a} done: clear; "),
        "/2 nodes done".into(),
        "fleet: node node-b: job ".into(),
    ] {
        assert!(err.contains(&want), "{want:?} not in:\n{err}");
    }
    let done: Vec<&str> = err.lines().filter(|l| l.ends_with(" nodes done")).collect();
    assert_eq!(done.len(), 2, "{err}");
    assert!(done[1].ends_with("; 2/2 nodes done"), "{err}");

    let srv = server();
    let (code, err) = snat_run_on_a_terminal(dir.path(), &srv, &["--all-nodes", "--image", "img:1", "-q"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("fleet:"), "-q: {err}");
}

/// Not on a terminal, the same lines are logged with -v, and nothing is said without it.
#[test]
fn progress_is_logged_with_v_and_silent_without() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    let out = snat_run(dir.path(), &srv, &["--on-node", "node-b", "--image", "img:1", "-v"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let job_b = fleet::job_name(&fleet_run_id(&srv), "node-b");
    assert!(err.contains(&format!("node node-b: job {job_b} created")), "{err}");
    assert!(err.contains("done: clear; 1/1 nodes done"), "{err}");

    let srv = server();
    let out = snat_run(dir.path(), &srv, &["--on-node", "node-b", "--image", "img:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("nodes done") && !err.contains("created"), "{err}");
}

/// The fleet-only flags do nothing without --on-node or --all-nodes: each one given says so
/// (also when it repeats the default), and the playbook still runs here.
#[rstest::rstest]
#[case::image(&["--image", "img:1"], &["--image"])]
#[case::concurrency(&["--concurrency", "3"], &["--concurrency"])]
#[case::concurrency_at_its_default(&["--concurrency", "10"], &["--concurrency"])]
#[case::namespace(&["--namespace", "ops"], &["--namespace"])]
#[case::all(
    &["--namespace", "ops", "--image", "i", "--concurrency", "2"],
    &["--image", "--concurrency", "--namespace"]
)]
#[case::none(&[], &[])]
fn fleet_flags_without_nodes_warn(#[case] args: &[&str], #[case] warned: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let playbook = dir.path().join("local.rhai");
    std::fs::write(&playbook, "report::verdict(\"clear\", \"ran here\");\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_snat-run"))
        .arg(&playbook)
        .arg("--audit-dir")
        .arg(dir.path().join("audit"))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    for flag in ["--image", "--concurrency", "--namespace"] {
        let line = format!("snat-run: warning: {flag} is only used with --on-node or --all-nodes");
        assert_eq!(err.contains(&line), warned.contains(&flag), "{flag}: {err}");
    }
}

/// find-node.rhai's "Next step" advice is a fleet command line that snat-run accepts: it
/// names --image, without which --on-node/--all-nodes is refused.
#[rstest::rstest]
#[case::nat_gateway(
    "natgw-metrics.json",
    "snat-run examples/census.rhai --all-nodes --image <your snat image>"
)]
#[case::load_balancer(
    "sample-az-metrics.json",
    "snat-run examples/census.rhai --on-node node-a --image <your snat image>"
)]
fn find_node_advises_a_fleet_run_with_an_image(#[case] metrics: &str, #[case] want: &str) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_snat-run"))
        .arg(format!("{root}/examples/find-node.rhai"))
        .args(["--output", "json", "--param"])
        .arg(format!("metrics={root}/tests/data/metrics/{metrics}"))
        .arg("--kubeconfig")
        .arg(kubeconfig(dir.path(), srv.addr))
        .arg("--audit-dir")
        .arg(dir.path().join("audit"))
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let rep = report(&out);
    let next: Vec<&str> = rep["sections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["title"] == "Next step")
        .filter_map(|s| s["text"].as_str())
        .collect();
    assert_eq!(next.len(), 1, "{rep:#}");
    assert!(next[0].contains(want), "{:?} not in {:?}", want, next[0]);
}

/// The run id the Jobs were created with (their `snat.io/run-id` label).
fn fleet_run_id(srv: &Server) -> String {
    let m = srv.state.manifests.lock().unwrap();
    m[0].metadata.labels.as_ref().unwrap()["snat.io/run-id"].clone()
}

/// The node Jobs have no Kubernetes credentials: --allow on nodes would only make every
/// action fail there, so it is refused (exit 2) before anything reaches the cluster.
#[test]
fn allow_on_nodes_is_a_usage_error() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    let out = snat_run(
        dir.path(),
        &srv,
        &["--on-node", "node-a", "--image", "img:1", "--allow", "event"],
    );
    expect_refused(
        &out,
        &[
            "--allow event cannot be used with --on-node/--all-nodes",
            "Remediation runs where your kubeconfig is",
        ],
    );
    assert_eq!(report(&out)["error"]["kind"], "usage_error");
    assert!(
        srv.state.requests.lock().unwrap().is_empty(),
        "nothing sent to the cluster"
    );
    assert_eq!(records(&dir.path().join("audit")).len(), 1);
}

/// `snat-run PLAYBOOK -o json --all-nodes` against the kubeconfig `kc`, recording into
/// `audit`, started and left running (for the tests that signal it).
fn spawn_all_nodes(kc: &Path, audit: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_snat-run"))
        .arg(PLAYBOOK)
        .args(["--output", "json", "--all-nodes", "--image", "img:1", "--kubeconfig"])
        .arg(kc)
        .arg("--audit-dir")
        .arg(audit)
        .env_remove("KUBECONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn sigint_deletes_the_running_jobs_and_still_writes_the_record() {
    let st = fixtures::cluster();
    *st.job_runtime.lock().unwrap() = None; // the Jobs never finish
    let srv = Server::start(st);
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path(), srv.addr);
    let audit = dir.path().join("audit");
    let child = spawn_all_nodes(&kc, &audit);
    let t0 = std::time::Instant::now();
    while srv.state.created.load(Ordering::SeqCst) < 2 {
        assert!(t0.elapsed() < Duration::from_secs(60), "the Jobs were never created");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(srv.state.deleted.load(Ordering::SeqCst), 2, "every Job deleted");
    assert!(srv.state.fleet_jobs.lock().unwrap().is_empty());
    let recs = records(&audit);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["outcome"]["kind"], "interrupted");
    assert_eq!(recs[0]["stages"][0]["name"], "fleet::run");
    audit_verify(&audit);
}

/// A node still running when the run is stopped is "interrupted", never "failed": in the
/// summary, the Nodes table and the error; the nodes that finished keep their result, and
/// the run ends as interrupted (130).
#[test]
fn a_node_stopped_by_sigint_is_interrupted_not_failed() {
    let srv = server();
    srv.state.hanging_nodes.lock().unwrap().push("node-b".into());
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path(), srv.addr);
    let audit = dir.path().join("audit");
    let child = spawn_all_nodes(&kc, &audit);
    // node-a's Job is done (and deleted) while node-b's still runs.
    let t0 = std::time::Instant::now();
    while srv.state.deleted.load(Ordering::SeqCst) < 1 || srv.state.created.load(Ordering::SeqCst) < 2 {
        assert!(t0.elapsed() < Duration::from_secs(60), "node-a's Job never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "stderr: {err}");
    let rep = report(&out);
    assert_eq!(rep["summary"], "2 node(s): 1 clear, 1 interrupted", "{rep:#}");
    assert_eq!(rep["verdict"], Value::Null, "not every node was checked: {rep:#}");
    assert_eq!(rep["error"]["kind"], "interrupted");
    let rows: Vec<(Value, Value)> = node_rows(&rep).iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    assert_eq!(
        rows,
        [
            (json!("node-a"), json!("completed")),
            (json!("node-b"), json!("interrupted"))
        ]
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("failed"), "{stdout}");
    let recs = records(&audit);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["outcome"]["kind"], "interrupted");
    assert!(!recs[0].to_string().contains("failed"), "{:#}", recs[0]);
    let rec = assert_fleet_record_valid(dir.path());
    assert_eq!(
        (rec["cancelled"].clone(), rec["nodes"][1]["outcome"].clone()),
        (json!(true), json!("cancelled"))
    );
    audit_verify(&audit);
}

// ----- fleet reports as verify-fix's input ---------------------------------------------------

/// A triage culprit: pod `name` of Deployment `owner` in `shop`, holding `flows` public flows.
fn culprit(owner: &str, uid: &str, flows: u32) -> Value {
    json!({
        "kind": "snat_culprit", "severity": "critical", "summary": format!("{owner} holds {flows} flows"),
        "pod": {"uid": uid, "namespace": "shop", "name": format!("{owner}-0"), "host_network": false,
                "owner": {"kind": "Deployment", "name": owner}},
        "destination": "198.18.0.1:443",
        "evidence": {"public_established": flows, "public_syn_sent": 0, "failed_connects": 0, "time_wait": 0},
    })
}

/// A node Job's log of a triage run on a host named `hostname` that found `findings`.
fn triage_log(hostname: &str, findings: &[Value]) -> String {
    let report = json!({
        "schema": "snat.report/v1", "title": "SNAT port exhaustion triage", "host": {"hostname": hostname},
        "verdict": if findings.is_empty() { "clear" } else { "pressure_found" }, "findings": findings, "sections": [],
    });
    let code = if findings.is_empty() { 0 } else { 3 };
    let audit = json!({"schema_version": 2, "run_id": format!("run-{hostname}"), "host": {"hostname": hostname}});
    format!(
        "--- snat:report ---\n{report}\n\n--- snat:audit ---\n{audit}\n\n--- snat:stderr ---\n\n--- snat:exit {code} ---\n"
    )
}

/// A fleet run whose nodes print `logs` (node, log), saved as `name` in `dir`; returns the
/// saved report's path and the report.
fn saved_fleet_run(dir: &Path, name: &str, logs: &[(&str, String)], args: &[&str]) -> (std::path::PathBuf, Value) {
    let srv = server();
    for (node, log) in logs {
        srv.state
            .node_logs
            .lock()
            .unwrap()
            .insert(node.to_string(), log.clone());
    }
    let out = snat_run(dir, &srv, args);
    let rep = report(&out);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{rep:#}");
    let p = dir.join(name);
    std::fs::write(&p, &out.stdout).unwrap();
    (p, rep)
}

/// A `--host-proc` tree of a host named `name`, with no process (a census of it is empty).
fn proc_of_host(dir: &Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(format!("hostproc-{name}"));
    // The host name as pid 1 sees it (its root, then etc/hostname), under the tree.
    let etc = ["1", "root", "etc"].iter().collect::<std::path::PathBuf>();
    std::fs::create_dir_all(p.join(&etc)).unwrap();
    std::fs::write(p.join(etc).join("hostname"), format!("{name}\n")).unwrap();
    p
}

/// verify-fix.rhai with `params` and more `args`, recording into `dir`'s audit directory.
fn verify_fix(dir: &Path, params: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_snat-run"));
    c.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/verify-fix.rhai"))
        .args(["-o", "json", "-q", "--audit-dir"])
        .arg(dir.join("audit"))
        .args(args)
        .env_remove("SNAT_AUDIT_DIR");
    for (k, v) in params {
        c.arg("-p").arg(format!("{k}={v}"));
    }
    c.output().unwrap()
}

fn compared(rep: &Value) -> String {
    rep["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["title"] == "Compared")
        .and_then(|s| s["text"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The culprit column of verify-fix's culprit table.
fn culprits_compared(rep: &Value) -> Vec<String> {
    let t = rep["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["title"].as_str().unwrap_or("").starts_with("Culprits of"))
        .unwrap_or_else(|| panic!("no culprit table: {rep:#}"));
    t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect()
}

/// node-a: checkout (120 flows); node-b (reporting host name node-b.internal): cart and
/// search.
fn fleet_before(dir: &Path) -> (std::path::PathBuf, Value) {
    saved_fleet_run(
        dir,
        "fleet-before.json",
        &[
            (
                "node-a",
                triage_log(
                    "node-a",
                    &[culprit("checkout", "aaaaaaaa-0000-0000-0000-000000000001", 120)],
                ),
            ),
            (
                "node-b",
                triage_log(
                    "node-b.internal",
                    &[
                        culprit("cart", "bbbbbbbb-0000-0000-0000-000000000001", 80),
                        culprit("search", "bbbbbbbb-0000-0000-0000-000000000002", 70),
                    ],
                ),
            ),
        ],
        &["--all-nodes", "--image", "img:1"],
    )
}

/// A fleet report says it is one (`fleet`: run id, record, each node with the host name it
/// reported) and each finding names its node; with after=now, verify-fix compares the
/// culprits the fleet run found on this node with a census of it, saying how many of other
/// nodes it left out, and refuses a node the fleet run did not cover, naming those it did.
#[test]
fn verify_fix_after_now_compares_this_nodes_culprits_of_a_fleet_report() {
    let dir = tempfile::tempdir().unwrap();
    let (before, rep) = fleet_before(dir.path());
    let fl = &rep["fleet"];
    assert_eq!(fl["run_id"], rep["run_id"], "{rep:#}");
    assert!(Path::new(fl["record"].as_str().unwrap()).is_file(), "{fl:#}");
    let nodes: Vec<(Value, Value, Value)> = fl["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].clone(), n["hostname"].clone(), n["outcome"].clone()))
        .collect();
    assert_eq!(
        nodes,
        [
            (json!("node-a"), json!("node-a"), json!("completed")),
            (json!("node-b"), json!("node-b.internal"), json!("completed"))
        ]
    );
    let on: Vec<&str> = rep["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["node"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(on, ["node-a", "node-b", "node-b"]);

    let before_s = before.to_str().unwrap();
    let run_id = rep["run_id"].as_str().unwrap();
    // On node-a: only node-a's culprit, against a census of node-a (no flows left).
    let here = proc_of_host(dir.path(), "node-a");
    let out = verify_fix(
        dir.path(),
        &[("before", before_s), ("after", "now")],
        &["--host-proc", here.to_str().unwrap()],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{v:#}");
    assert_eq!(culprits_compared(&v), ["shop/Deployment/checkout"], "{v:#}");
    let text = compared(&v);
    assert!(
        text.contains(&format!(
            "before: fleet run {run_id}, 1 culprit(s) on this node (node-a), 2 on other nodes left out"
        )) && text.contains(&format!("on 2 node(s) (fleet run {run_id}, launched on host ")),
        "{text}"
    );
    // On node-b, known by the host name its run reported.
    let here = proc_of_host(dir.path(), "node-b.internal");
    let out = verify_fix(
        dir.path(),
        &[("before", before_s), ("after", "now")],
        &["--host-proc", here.to_str().unwrap()],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{v:#}");
    assert_eq!(
        culprits_compared(&v),
        ["shop/Deployment/cart", "shop/Deployment/search"],
        "{v:#}"
    );
    assert!(
        compared(&v).contains("2 culprit(s) on this node (node-b), 1 on other nodes left out"),
        "{v:#}"
    );

    // The fleet run's audit record is read as a fleet run too (its fleet record is next to it).
    let record = rep["audit_record"].as_str().unwrap();
    let out = verify_fix(
        dir.path(),
        &[("before", record), ("after", "now")],
        &["--host-proc", proc_of_host(dir.path(), "node-a").to_str().unwrap()],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{v:#}");
    assert_eq!(culprits_compared(&v), ["shop/Deployment/checkout"], "{v:#}");

    // A node the fleet run did not cover: refused, naming the nodes it did.
    let out = verify_fix(
        dir.path(),
        &[("before", before_s), ("after", "now")],
        &["--host-proc", proc_of_host(dir.path(), "node-c").to_str().unwrap()],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(2), "{v:#}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "is fleet run {run_id}, which covered node(s) [\"node-a\", \"node-b\"], and this host node-c is not one of them"
        )),
        "{msg}"
    );
}

/// Two saved runs, a fleet run on either side, are compared per node on the nodes both
/// cover: a culprit of one node never matches (or hides) the same workload on another.
#[test]
fn verify_fix_compares_fleet_runs_per_node() {
    let dir = tempfile::tempdir().unwrap();
    let (before, _) = fleet_before(dir.path());
    let before_s = before.to_str().unwrap();
    // Later: checkout dropped on node-a, but now runs on node-b too; cart did not drop.
    let (after, _) = saved_fleet_run(
        dir.path(),
        "fleet-after.json",
        &[
            (
                "node-a",
                triage_log(
                    "node-a",
                    &[culprit("checkout", "aaaaaaaa-0000-0000-0000-000000000009", 10)],
                ),
            ),
            (
                "node-b",
                triage_log(
                    "node-b.internal",
                    &[
                        culprit("cart", "bbbbbbbb-0000-0000-0000-000000000001", 79),
                        culprit("checkout", "bbbbbbbb-0000-0000-0000-000000000009", 300),
                    ],
                ),
            ),
        ],
        &["--all-nodes", "--image", "img:1"],
    );
    let out = verify_fix(
        dir.path(),
        &[("before", before_s), ("after", after.to_str().unwrap())],
        &[],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(3), "{v:#}");
    assert_eq!(
        culprits_compared(&v),
        [
            "node-a: shop/Deployment/checkout",
            "node-b: shop/Deployment/cart",
            "node-b: shop/Deployment/search"
        ]
    );
    let rows = v["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["title"].as_str().unwrap().starts_with("Culprits of"))
        .unwrap()["rows"]
        .clone();
    // checkout on node-a: 120 -> 10, whatever it holds on node-b.
    assert_eq!(
        (rows[0][1].clone(), rows[0][2].clone()),
        (json!(120), json!(10)),
        "{v:#}"
    );
    assert!(
        v["summary"].as_str().unwrap().contains("node-b: shop/Deployment/cart"),
        "{v:#}"
    );
    assert!(
        compared(&v).contains("per node: compared on 2 node(s) both runs cover: [\"node-a\", \"node-b\"]"),
        "{v:#}"
    );

    // A run on one host against a fleet run: that host's node only (node-b by the host name
    // its run reported), the other nodes left out.
    let mut local: Value = serde_json::from_str(&std::fs::read_to_string(&after).unwrap()).unwrap();
    local["fleet"] = Value::Null;
    local["host"] = json!({"hostname": "node-b.internal"});
    local["run_id"] = json!("a-run-on-node-b");
    local["findings"] = json!([culprit("cart", "bbbbbbbb-0000-0000-0000-000000000001", 8)]);
    let local_p = dir.path().join("local-after.json");
    std::fs::write(&local_p, local.to_string()).unwrap();
    let out = verify_fix(
        dir.path(),
        &[("before", before_s), ("after", local_p.to_str().unwrap())],
        &[],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "cart dropped, search is gone: {v:#}");
    assert_eq!(
        culprits_compared(&v),
        ["node-b: shop/Deployment/cart", "node-b: shop/Deployment/search"],
        "{v:#}"
    );
    assert!(compared(&v).contains("left out, only in before: [\"node-a\"]"), "{v:#}");

    // No node in common: refused, naming what each side covers.
    local["host"] = json!({"hostname": "node-z"});
    std::fs::write(&local_p, local.to_string()).unwrap();
    let out = verify_fix(
        dir.path(),
        &[("before", before_s), ("after", local_p.to_str().unwrap())],
        &[],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(2), "{v:#}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("have no node in common, so no culprit can be compared: before covers [\"node-a\", \"node-b\"], after [\"node-z\"]"),
        "{v:#}"
    );
}

/// A node whose playbook fails names the playbook the user gave (line and column kept), not
/// the in-pod copy the node ran: in the Nodes table, the progress, the fleet record and the
/// node's saved report.
#[test]
fn a_node_side_playbook_error_names_the_users_playbook() {
    let srv = server();
    let pod_path = fleet::node_playbook_path();
    let message = format!("{pod_path}:12:5: Variable not found: warn_at");
    let node_report = json!({
        "schema": "snat.report/v1", "playbook": pod_path, "verdict": null, "findings": [], "sections": [],
        "exit_code": 2, "error": {"kind": "playbook_error", "message": message},
    });
    let log = format!(
        "--- snat:report ---\n{node_report}\n\n--- snat:audit ---\n{{\"run_id\":\"r\"}}\n\n--- snat:stderr ---\nsnat-run: {message}\n\n--- snat:exit 2 ---\n"
    );
    srv.state.node_logs.lock().unwrap().insert("node-a".into(), log);
    let dir = tempfile::tempdir().unwrap();
    let out = snat_run(dir.path(), &srv, &["--on-node", "node-a", "--image", "img:1", "-v"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let want = format!("snat-run exited 2 on the node: {PLAYBOOK}:12:5: Variable not found: warn_at");
    let rep = report(&out);
    assert_eq!(node_rows(&rep)[0][5], json!(want), "{rep:#}");
    assert!(err.contains(&format!("done: {want}; 1/1 nodes done")), "{err}");
    let rec = assert_fleet_record_valid(dir.path());
    assert_eq!(rec["nodes"][0]["error"], json!(want), "{rec:#}");
    let fdir = dir.path().join("audit/fleet").join(rep["run_id"].as_str().unwrap());
    let saved = std::fs::read_to_string(fdir.join(rec["nodes"][0]["report_file"].as_str().unwrap())).unwrap();
    assert!(saved.contains(&format!("{PLAYBOOK}:12:5")), "{saved}");
    for text in [
        String::from_utf8_lossy(&out.stdout).into_owned(),
        err.into_owned(),
        rec.to_string(),
        saved,
    ] {
        assert!(!text.contains(&pod_path), "the in-pod path is shown: {text}");
    }
}

/// A Job that started and finished between two polls is still said to have run, before it
/// is said to be done.
#[test]
fn a_job_done_between_two_polls_is_said_to_have_run() {
    let st = fixtures::cluster();
    *st.job_runtime.lock().unwrap() = Some(Duration::ZERO);
    let srv = Server::start(st);
    let dir = tempfile::tempdir().unwrap();
    let out = snat_run(dir.path(), &srv, &["--on-node", "node-b", "--image", "img:1", "-v"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let job = fleet::job_name(&fleet_run_id(&srv), "node-b");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(&format!("job {job} "))).collect();
    let at = |s: &str| {
        lines
            .iter()
            .position(|l| l.contains(s))
            .unwrap_or_else(|| panic!("{s:?} not in {lines:#?}"))
    };
    assert!(
        at(&format!("node node-b: job {job} created"))
            < at(&format!(
                "node node-b: job {job} ran (it started and finished between two polls)"
            ))
            && at("ran (it started") < at(&format!("node node-b: job {job} done: clear")),
        "{lines:#?}"
    );
}

const NODE_TOKEN: &str = "tok-9d8e7f6a5b";

/// Run a playbook reading `token` and `top` on node-a with `-p token=... -p top=5`.
fn run_with_token(dir: &Path, srv: &Server) -> Output {
    let pb = dir.join("tok.rhai");
    std::fs::write(&pb, "let t = param(\"token\");\nlet n = param(\"top\", 1);\n").unwrap();
    let kc = kubeconfig(dir, srv.addr);
    Command::new(env!("CARGO_BIN_EXE_snat-run"))
        .arg(&pb)
        .args(["--output", "json", "--kubeconfig"])
        .arg(&kc)
        .arg("--audit-dir")
        .arg(dir.join("audit"))
        .args(["--on-node", "node-a", "--image", "img:1", "-p"])
        .arg(format!("token={NODE_TOKEN}"))
        .args(["-p", "top=5"])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

/// `-p token=...` on the nodes: the Job the API server receives holds no secret value (its
/// pod reads the run's Secret, mounted read-only, with --param-file); the plain parameter
/// stays on the command line; the Secret is deleted at the end; the local record and the
/// output hold no secret value either.
#[test]
fn secret_params_reach_the_nodes_in_a_secret_not_in_the_job() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_token(dir.path(), &srv);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let s = &srv.state;
    let bodies = s.job_bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    assert!(
        !bodies[0].contains(NODE_TOKEN),
        "the token is in the Job: {}",
        bodies[0]
    );
    let job: Value = serde_json::from_str(&bodies[0]).unwrap();
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    let argv: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for w in [["--param", "top=5"], ["--param-file", "/etc/snat/params/params"]] {
        assert!(argv.windows(2).any(|x| x == w), "{w:?} not in {argv:?}");
    }
    let run_id = fleet_run_id(&srv);
    let name = fleet::params_secret_name(&run_id);
    let mounted = &job["spec"]["template"]["spec"]["volumes"];
    assert!(
        mounted
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == json!(name)),
        "{mounted}"
    );
    assert!(s.missing_secret_mounts.lock().unwrap().is_empty());
    let posted: Vec<Value> = s
        .bodies
        .lock()
        .unwrap()
        .iter()
        .filter(|(r, ..)| r.ends_with("/namespaces/snat/secrets"))
        .map(|(.., b)| b.clone())
        .collect();
    assert_eq!(posted.len(), 1);
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(posted[0].clone()).unwrap();
    assert_eq!(
        String::from_utf8(secret.data.unwrap()["params"].0.clone()).unwrap(),
        format!("token={NODE_TOKEN}\n")
    );
    assert!(s.secrets.lock().unwrap().is_empty(), "the Secret is deleted at the end");
    assert_eq!(*s.deleted_secrets.lock().unwrap(), [name]);
    // Nothing local holds it either; the stage names the secret parameter's key only.
    let rec = &records(&dir.path().join("audit"))[0];
    for text in [
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        rec.to_string(),
    ] {
        assert!(!text.contains(NODE_TOKEN), "{text}");
    }
    assert_eq!(rec["stages"][0]["args"]["hidden_params"], json!(["token"]), "{rec:#}");
}

/// A params Secret the launcher cannot delete is said on stderr, with the command that
/// deletes it; the run's result stands.
#[test]
fn a_secret_left_behind_is_said_with_how_to_delete_it() {
    let srv = server();
    srv.state
        .faults
        .lock()
        .unwrap()
        .push_back(("/secrets/".into(), apiserver::Fault::Status(403, None)));
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_token(dir.path(), &srv);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let run_id = fleet_run_id(&srv);
    assert!(err.contains("could not delete the Secret"), "{err}");
    assert!(
        err.contains(&format!("kubectl -n snat delete secret -l snat.io/run-id={run_id}")),
        "{err}"
    );
    assert!(!err.contains(NODE_TOKEN), "{err}");
}

/// A secret value with a line break cannot go in the nodes' params file: refused before any
/// Secret or Job (exit 2), naming the key, never the value.
#[test]
fn a_secret_value_with_a_line_break_is_refused_before_any_job() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    let pb = dir.path().join("tok.rhai");
    std::fs::write(&pb, "let t = param(\"token\");\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_snat-run"))
        .arg(&pb)
        .arg("--kubeconfig")
        .arg(kubeconfig(dir.path(), srv.addr))
        .arg("--audit-dir")
        .arg(dir.path().join("audit"))
        .args([
            "--on-node",
            "node-a",
            "--image",
            "img:1",
            "-p",
            "token=first-line\nsecond-line",
        ])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--param token: a secret value with a line break"), "{err}");
    assert!(!err.contains("first-line") && !err.contains("second-line"), "{err}");
    assert_eq!(srv.state.created.load(Ordering::SeqCst), 0);
    assert!(
        srv.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .all(|r| !r.contains("/secrets"))
    );
}
