//! The contract between a fleet Job and snat-run: the container's wrapper script
//! (snat_core::k8s::fleet::NODE_SCRIPT) runs the real snat-run binary with the argv the Job
//! manifest carries, and the framed log it prints parses back into the report, the node's
//! audit record and the exit code.

use std::process::Command;

use snat_core::k8s::fleet::{FleetSpec, NODE_SCRIPT, job_manifest, parse_node_output};

#[test]
fn node_script_runs_snat_run_and_frames_report_and_audit() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let playbook = std::fs::read_to_string(format!("{root}/examples/find-node.rhai")).unwrap();
    let metrics = format!("{root}/tests/data/metrics/sample-az-metrics.json");
    let mut spec = FleetSpec::new("IMAGE", "examples/find-node.rhai", playbook.clone());
    spec.extra_args = vec!["--param".into(), format!("metrics={metrics}")];
    // The container's command line, exactly as the Job carries it, with the paths of the
    // container (/tmp/snat, /host/proc) mapped to this test's directory and /proc.
    let job = job_manifest(&spec, "node-a");
    let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(c.command.as_ref().unwrap()[2], NODE_SCRIPT);
    let cmd: Vec<String> = c
        .command
        .clone()
        .unwrap()
        .into_iter()
        .map(|a| {
            a.replace("/tmp/snat", &work.display().to_string())
                .replace("/host/proc", "/proc")
                .replace("snat-run", env!("CARGO_BIN_EXE_snat-run"))
        })
        .collect();
    assert_eq!(cmd[0], "/bin/sh");
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("SNAT_WORK", &work)
        // No cluster: KUBECONFIG names a file that does not exist (and no in-cluster token).
        .env("KUBECONFIG", dir.path().join("no-kubeconfig"))
        .env("SNAT_PLAYBOOK", c.env.as_ref().unwrap()[0].value.clone().unwrap())
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let o = parse_node_output(&String::from_utf8_lossy(&out.stdout));
    assert!(
        o.problems.is_empty(),
        "{:?}\n{}",
        o.problems,
        String::from_utf8_lossy(&out.stdout)
    );
    // find-node on the sample metrics without a cluster: pressure found, exit 3.
    assert_eq!(o.exit_code, Some(3), "stderr section: {}", o.stderr);
    let report = o.report.unwrap();
    let audit = o.audit.unwrap();
    assert_eq!(audit["exit_code"], 3);
    assert_eq!(report["run_id"], audit["run_id"], "report: {report}");
    let sha = audit["playbook"]["sha256"].as_str().unwrap();
    use sha2::Digest;
    let want: String = sha2::Sha256::digest(playbook.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sha, want, "the node ran exactly the playbook it was given");
}
