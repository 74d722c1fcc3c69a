//! A playbook on many nodes at once, as short-lived Kubernetes Jobs (`snat-run --on-node`,
//! `--all-nodes`), for nodes nobody can SSH into.
//!
//! Each node gets one Job pinned to it by `nodeName`, privileged with the host's PID and
//! network namespaces, the host's `/proc` and `/sys/kernel/btf` mounted read-only, tolerating
//! every taint, and removed by the API server `ttlSecondsAfterFinished` after it ends even if
//! snat never comes back. The Job's container receives the playbook in an environment
//! variable, runs `snat-run --output json --audit-dir ...` and prints a framed log
//! ([`NODE_SCRIPT`]): the JSON report, the node's audit record, snat-run's stderr and its
//! exit code, each after a marker line. [`run_fleet`] creates the Jobs with bounded
//! concurrency, waits for each, reads its pod's log, deletes the Job, and merges the results
//! into one [`FleetRecord`] that references every node's audit record by run id and SHA-256;
//! [`run_fleet_with`] also reports each Job's creation, start and end as it happens.
//! Setting the cancel flag (Ctrl-C) deletes every Job still running and starts no more.
//!
//! A Job that fails is reported as soon as its status says so: a `Failed` (or, on newer
//! clusters, `FailureTarget`) condition ends the wait at once, with the condition's reason.
//! A Job still without a pod after [`FleetSpec::stuck_check_after`] is looked into as
//! `kubectl describe job` does: its `FailedCreate` events carry the admission webhook's or
//! Pod Security's refusal, which fails the node at once.
//!
//! Which nodes: [`select_nodes`] (`--all-nodes`) asks the API server for the Linux nodes
//! (label selector [`LINUX_NODES`]), leaves out virtual nodes (`type=virtual-kubelet`) and
//! names every node left out and why; [`check_nodes`] (`--on-node`) says which names are no
//! node, or a node the Job cannot run on ([`Unfit`]). A NotReady node fails at once, without a
//! Job (a pod there would stay Pending until the deadline), so that the run never calls the
//! fleet clear with a node unchecked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{Job, JobSpec, JobStatus};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, Event, HostPathVolumeSource, Node, Pod, PodSpec, PodTemplateSpec, ResourceRequirements, Secret,
    SecretVolumeSource, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::{DeleteParams, GetParams, LogParams, PostParams};
use kube::core::Request;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::lookup::list_all;
use super::{Kube, Op, Scope};
use crate::error::Error;

/// Version of the fleet record format.
pub const FLEET_SCHEMA_VERSION: u32 = 1;

/// Where the container works (an `emptyDir`, so the image may have a read-only root).
pub const WORK_DIR: &str = "/tmp/snat";

/// Most bytes of a node Job's log read back (the framed report and audit record).
pub const MAX_LOG_BYTES: i64 = 32 << 20;

/// Where the host's `/proc` is mounted in the container.
pub const HOST_PROC: &str = "/host/proc";

/// Where a node Job's container mounts the run's params Secret ([`params_secret`]), read-only.
pub const PARAMS_DIR: &str = "/etc/snat/params";

/// The params Secret's one key, and so the file under [`PARAMS_DIR`] the node's `snat-run`
/// reads with `--param-file`.
pub const PARAMS_FILE: &str = "params";

/// The secret `--param` values of a fleet run (those snat hides everywhere else, see
/// [`crate::audit::is_secret_param`]), by key. They never go into a Job's spec: they travel
/// in one Secret per run ([`params_secret`]) that each node's pod mounts. Its `Debug` shows
/// the keys only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretParams(pub BTreeMap<String, String>);

impl std::fmt::Debug for SecretParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The container's shell script. `$@` is the snat-run command line; the playbook arrives in
/// `$SNAT_PLAYBOOK` and is written to `$SNAT_WORK/playbook.rhai` (default [`WORK_DIR`]). It always exits 0 once it has printed the framed output, because the
/// playbook's own exit code (3 = pressure found) travels in the `--- snat:exit N ---` line
/// and must not make the Job "fail".
pub const NODE_SCRIPT: &str = r#"set -u
w=${SNAT_WORK:-/tmp/snat}
mkdir -p "$w/audit" || exit 70
printf '%s' "$SNAT_PLAYBOOK" > "$w/playbook.rhai" || exit 70
"$@" > "$w/report.json" 2> "$w/stderr"
rc=$?
echo '--- snat:report ---'
cat "$w/report.json"
echo
echo '--- snat:audit ---'
for f in "$w"/audit/*.json; do [ -f "$f" ] && cat "$f"; done
echo
echo '--- snat:stderr ---'
tail -c 65536 "$w/stderr"
echo
echo "--- snat:exit $rc ---"
exit 0
"#;

/// What to run on the nodes and how.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Namespace of the Jobs (default `snat`; see `deploy/00-namespace.yaml`).
    pub namespace: String,
    /// Container image with `snat-run` and `/bin/sh` (see `deploy/Dockerfile`).
    pub image: String,
    /// ServiceAccount of the Job pods (default `snat-node`; its token is not mounted).
    pub service_account: String,
    /// The playbook's source text.
    pub playbook: String,
    /// The playbook's name or path, for the record.
    pub playbook_name: String,
    /// Extra `snat-run` arguments (e.g. `--param`, `--dry-run`), before the playbook path.
    /// Visible to whoever can read Jobs or pods: never a secret value (see `secret_params`).
    pub extra_args: Vec<String>,
    /// Secret `--param` values: put in the run's params Secret, not in the Jobs. Empty (the
    /// default): no Secret is created and the Jobs mount none.
    pub secret_params: SecretParams,
    /// Most Jobs in flight at once (default 10).
    pub concurrency: usize,
    /// `ttlSecondsAfterFinished` (default 600).
    pub ttl_seconds_after_finished: i32,
    /// `activeDeadlineSeconds` (default 900).
    pub active_deadline_seconds: i64,
    /// How often a Job's status is polled (default 2 s).
    pub poll_interval: Duration,
    /// After this long, each poll also looks at the Job's pod so a pod that can never start
    /// (image pull failures, bad config), or a pod the API server refuses to create (its
    /// `FailedCreate` events), fails the node at once instead of at the deadline (default 20 s).
    pub stuck_check_after: Duration,
    /// Run id (UUID v4 by default), in every Job's labels.
    pub run_id: String,
}

impl FleetSpec {
    /// A spec with the defaults above.
    pub fn new(image: impl Into<String>, playbook_name: impl Into<String>, playbook: impl Into<String>) -> FleetSpec {
        FleetSpec {
            namespace: "snat".into(),
            image: image.into(),
            service_account: "snat-node".into(),
            playbook: playbook.into(),
            playbook_name: playbook_name.into(),
            extra_args: Vec::new(),
            secret_params: SecretParams::default(),
            concurrency: 10,
            ttl_seconds_after_finished: 600,
            active_deadline_seconds: 900,
            poll_interval: Duration::from_secs(2),
            stuck_check_after: Duration::from_secs(20),
            run_id: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// The `snat-run` command line the Job runs (the script's `$@`).
    pub fn snat_run_argv(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "snat-run",
            "--output",
            "json",
            "--audit-dir",
            "/tmp/snat/audit",
            "--host-proc",
            HOST_PROC,
        ]
        .map(String::from)
        .to_vec();
        if !self.secret_params.0.is_empty() {
            a.extend(["--param-file".to_string(), format!("{PARAMS_DIR}/{PARAMS_FILE}")]);
        }
        a.extend(self.extra_args.iter().cloned());
        a.push(node_playbook_path());
        a
    }
}

/// Where the playbook is inside a node Job's container (`WORK_DIR/playbook.rhai`): the
/// path the node's `snat-run` names in its errors (`.../playbook.rhai:12:5: ...`), which
/// [`map_playbook_path`] turns back into the playbook the user gave.
pub fn node_playbook_path() -> String {
    format!("{WORK_DIR}/playbook.rhai")
}

/// `output` with every mention of the in-pod playbook path ([`node_playbook_path`]) in its
/// report's strings and its stderr replaced by `playbook` (the path the user gave), so that
/// a node's error reads `census.rhai:12:5: ...` (line and column kept) wherever the
/// launcher prints or records it. The audit record text is left as the node wrote it: its
/// SHA-256 is what the fleet record vouches for.
pub fn map_playbook_path(output: &mut NodeOutput, playbook: &str) {
    fn map_json(v: &mut serde_json::Value, from: &str, to: &str) {
        match v {
            serde_json::Value::String(s) if s.contains(from) => *s = s.replace(from, to),
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| map_json(x, from, to)),
            serde_json::Value::Object(m) => m.values_mut().for_each(|x| map_json(x, from, to)),
            _ => {}
        }
    }
    let from = node_playbook_path();
    if let Some(r) = output.report.as_mut() {
        map_json(r, &from, playbook);
    }
    output.stderr = output.stderr.replace(&from, playbook);
}

/// Why snat-run failed on a node, from its output: `snat-run exited C on the node: MESSAGE`,
/// MESSAGE being its report's `error.message`, else the last line of its stderr. `None`
/// for exit 0 (clear) and 3 (pressure found), and when it did not say how it exited.
pub fn node_failure(output: &NodeOutput) -> Option<String> {
    let code = output.exit_code.filter(|c| *c != 0 && *c != 3)?;
    let message = output
        .report
        .as_ref()
        .and_then(|r| r.get("error")?.get("message")?.as_str().map(str::to_string))
        .or_else(|| {
            output
                .stderr
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_string)
        });
    Some(match message {
        Some(m) => format!("snat-run exited {code} on the node: {m}"),
        None => format!("snat-run exited {code} on the node (its stderr is empty)"),
    })
}

/// The Job name for a node: `snat-<first 8 of run id>-<first 10 hex of sha256(node)>`, a
/// valid DNS label whatever the node's name.
pub fn job_name(run_id: &str, node: &str) -> String {
    let run: String = run_id.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    let h = Sha256::digest(node.as_bytes());
    let hex: String = h.iter().take(5).map(|b| format!("{b:02x}")).collect();
    format!("snat-{}-{hex}", run.to_ascii_lowercase())
}

fn labels(spec: &FleetSpec) -> BTreeMap<String, String> {
    let run: String = spec
        .run_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(63)
        .collect();
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "snat".to_string()),
        ("app.kubernetes.io/component".to_string(), "node-run".to_string()),
        ("snat.io/run-id".to_string(), run),
    ])
}

/// The name of a fleet run's params Secret: `snat-<first 8 of run id>-params`, a valid DNS
/// name whatever the run id.
pub fn params_secret_name(run_id: &str) -> String {
    let run: String = run_id.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    format!("snat-{}-params", run.to_ascii_lowercase())
}

/// The text of the params file: one `KEY=VALUE` line per secret parameter, as
/// `snat-run --param-file` reads it. A value with a line break cannot be written as one
/// line: it is refused, naming the key only.
pub fn params_file_text(params: &SecretParams) -> Result<String, Error> {
    let mut text = String::new();
    for (k, v) in &params.0 {
        if v.contains(['\n', '\r']) {
            return Err(Error::Fleet(format!(
                "--param {k}: its value has a line break, which the params file given to the nodes (one KEY=VALUE per line) cannot hold"
            )));
        }
        text.push_str(&format!("{k}={v}\n"));
    }
    Ok(text)
}

/// The Secret holding `spec`'s secret parameters ([`params_file_text`] under the key
/// [`PARAMS_FILE`]) in the Jobs' namespace, labelled like the Jobs (`snat.io/run-id`), or
/// `None` when there are none. Immutable: nothing changes it while the nodes read it.
pub fn params_secret(spec: &FleetSpec) -> Result<Option<Secret>, Error> {
    if spec.secret_params.0.is_empty() {
        return Ok(None);
    }
    let text = params_file_text(&spec.secret_params)?;
    let mut labels = labels(spec);
    labels.insert("app.kubernetes.io/component".into(), "node-run-params".into());
    Ok(Some(Secret {
        metadata: ObjectMeta {
            name: Some(params_secret_name(&spec.run_id)),
            namespace: Some(spec.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            PARAMS_FILE.to_string(),
            k8s_openapi::ByteString(text.into_bytes()),
        )])),
        ..Default::default()
    }))
}

/// The Job that runs the playbook on `node` (mirrored by `deploy/reference/job-template.yaml`).
/// With secret parameters, its pod also mounts the run's params Secret ([`params_secret`])
/// read-only at [`PARAMS_DIR`], and `snat-run` reads them with `--param-file`: their values
/// are in no Job or pod spec.
pub fn job_manifest(spec: &FleetSpec, node: &str) -> Job {
    let mount = |name: &str, path: &str, ro: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(ro),
        ..Default::default()
    };
    let host = |name: &str, path: &str, ty: &str| Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(ty.into()),
        }),
        ..Default::default()
    };
    let mut command = vec![
        "/bin/sh".to_string(),
        "-c".into(),
        NODE_SCRIPT.into(),
        "snat-node".into(),
    ];
    command.extend(spec.snat_run_argv());
    let labels = labels(spec);
    let mut mounts = vec![
        mount("host-proc", HOST_PROC, true),
        mount("btf", "/sys/kernel/btf", true),
        mount("work", WORK_DIR, false),
    ];
    let mut volumes = vec![
        host("host-proc", "/proc", "Directory"),
        host("btf", "/sys/kernel/btf", "Directory"),
        Volume {
            name: "work".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        },
    ];
    if !spec.secret_params.0.is_empty() {
        mounts.push(mount("params", PARAMS_DIR, true));
        volumes.push(Volume {
            name: "params".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(params_secret_name(&spec.run_id)),
                default_mode: Some(0o400),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&spec.run_id, node)),
            namespace: Some(spec.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([("snat.io/node".to_string(), node.to_string())])),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            ttl_seconds_after_finished: Some(spec.ttl_seconds_after_finished),
            active_deadline_seconds: Some(spec.active_deadline_seconds),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    node_name: Some(node.to_string()),
                    host_pid: Some(true),
                    host_network: Some(true),
                    dns_policy: Some("ClusterFirstWithHostNet".into()),
                    restart_policy: Some("Never".into()),
                    service_account_name: Some(spec.service_account.clone()),
                    automount_service_account_token: Some(false),
                    tolerations: Some(vec![Toleration {
                        operator: Some("Exists".into()),
                        ..Default::default()
                    }]),
                    containers: vec![Container {
                        name: "snat".into(),
                        image: Some(spec.image.clone()),
                        image_pull_policy: Some("IfNotPresent".into()),
                        command: Some(command),
                        env: Some(vec![EnvVar {
                            name: "SNAT_PLAYBOOK".into(),
                            value: Some(spec.playbook.clone()),
                            ..Default::default()
                        }]),
                        security_context: Some(SecurityContext {
                            privileged: Some(true),
                            read_only_root_filesystem: Some(true),
                            ..Default::default()
                        }),
                        resources: Some(ResourceRequirements {
                            requests: Some(BTreeMap::from([
                                ("cpu".to_string(), Quantity("50m".into())),
                                ("memory".to_string(), Quantity("64Mi".into())),
                            ])),
                            limits: Some(BTreeMap::from([("memory".to_string(), Quantity("512Mi".into()))])),
                            ..Default::default()
                        }),
                        volume_mounts: Some(mounts),
                        ..Default::default()
                    }],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What a node's Job printed, unframed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeOutput {
    /// The JSON report (`snat-run --output json`).
    pub report: Option<serde_json::Value>,
    /// The node's audit record, as printed.
    pub audit_text: Option<String>,
    /// The node's audit record, parsed.
    pub audit: Option<serde_json::Value>,
    /// SHA-256 (hex) of `audit_text`: the bytes written to `<node>.audit.json`.
    pub audit_sha256: Option<String>,
    /// snat-run's stderr (last 64 KiB).
    pub stderr: String,
    /// snat-run's exit code (0 clear, 3 pressure found, 1 failed, 2 playbook error).
    pub exit_code: Option<i32>,
    /// What could not be read (truncated log, bad JSON).
    pub problems: Vec<String>,
}

/// Split a node Job's log into its sections (see [`NODE_SCRIPT`]). Never fails: what
/// cannot be read is listed in `problems`.
pub fn parse_node_output(log: &str) -> NodeOutput {
    let mut sections: BTreeMap<&str, String> = BTreeMap::new();
    let mut current: Option<&str> = None;
    let mut exit_code = None;
    let mut problems = Vec::new();
    for line in log.lines() {
        let t = line.trim_end();
        if let Some(rest) = t.strip_prefix("--- snat:").and_then(|r| r.strip_suffix(" ---")) {
            if let Some(code) = rest.strip_prefix("exit ") {
                exit_code = code.trim().parse().ok();
                current = None;
                continue;
            }
            if matches!(rest, "report" | "audit" | "stderr") {
                current = Some(match rest {
                    "report" => "report",
                    "audit" => "audit",
                    _ => "stderr",
                });
                sections.entry(current.unwrap_or("stderr")).or_default();
                continue;
            }
        }
        if let Some(c) = current {
            let s = sections.entry(c).or_default();
            s.push_str(line);
            s.push('\n');
        }
    }
    if exit_code.is_none() {
        problems
            .push("the log has no `--- snat:exit N ---` line: the Job was cut short (killed, deadline, OOM?)".into());
    }
    let json = |name: &str, problems: &mut Vec<String>| -> (Option<String>, Option<serde_json::Value>) {
        let text = sections
            .get(name)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let v = text.as_deref().and_then(|t| match serde_json::from_str(t) {
            Ok(v) => Some(v),
            Err(e) => {
                problems.push(format!("the {name} section is not JSON: {e}"));
                None
            }
        });
        if text.is_none() {
            problems.push(format!("no {name} in the log"));
        }
        (text, v)
    };
    let (_, report) = json("report", &mut problems);
    let (audit_text, audit) = json("audit", &mut problems);
    NodeOutput {
        report,
        audit_sha256: audit_text.as_ref().map(|t| hex_sha256(t.as_bytes())),
        audit_text,
        audit,
        stderr: sections.get("stderr").map(|s| s.trim().to_string()).unwrap_or_default(),
        exit_code,
        problems,
    }
}

fn hex_sha256(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// How one node's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeOutcome {
    /// The Job ran and its output was read.
    Completed,
    /// The Job failed (deadline, image, OOM...) or its output could not be read.
    Failed,
    /// Cancelled before or while it ran; its Job was deleted.
    Cancelled,
}

/// One node's run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRun {
    /// Node name.
    pub node: String,
    /// Job name.
    pub job: String,
    /// The Job's pod, once known.
    pub pod: Option<String>,
    /// How it ended.
    pub outcome: NodeOutcome,
    /// What the Job printed (absent when it never ran or its log could not be read).
    pub output: Option<NodeOutput>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Wall time, in milliseconds.
    pub duration_ms: f64,
}

/// One node in the fleet record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetNodeEntry {
    /// Node name.
    pub node: String,
    /// Job name.
    pub job: String,
    /// How it ended.
    pub outcome: NodeOutcome,
    /// snat-run's exit code on the node.
    pub exit_code: Option<i32>,
    /// The host name the node's run reported (its report's `host.hostname`, else its audit
    /// record's), which can differ from the node's name. Absent in records written before it
    /// existed, and when the node printed neither.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The node report's verdict, if it had one.
    pub verdict: Option<serde_json::Value>,
    /// `run_id` of the node's audit record.
    pub audit_run_id: Option<String>,
    /// SHA-256 of the node's audit record file.
    pub audit_sha256: Option<String>,
    /// File name of the node's audit record, relative to the fleet record.
    pub audit_file: Option<String>,
    /// File name of the node's report.
    pub report_file: Option<String>,
    /// Why it failed: the Job's failure, or how snat-run failed on the node
    /// ([`node_failure`]), naming the user's playbook ([`map_playbook_path`]).
    pub error: Option<String>,
}

/// The record of a fleet run: which playbook ran where, and a reference to each node's own
/// audit record. Written by [`write_fleet`] as `fleet-<run id>.json`; its JSON Schema is
/// `schemas/fleet-record.schema.json` (every field described there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetRecord {
    /// [`FLEET_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The fleet run id (also the `snat.io/run-id` label of its Jobs).
    pub run_id: String,
    /// Start, RFC 3339 UTC.
    pub started_at: String,
    /// End, RFC 3339 UTC.
    pub ended_at: String,
    /// Playbook name or path.
    pub playbook: String,
    /// SHA-256 of the playbook's text.
    pub playbook_sha256: String,
    /// Image the Jobs ran.
    pub image: String,
    /// Namespace of the Jobs.
    pub namespace: String,
    /// Concurrency bound.
    pub concurrency: usize,
    /// Whether the run was cancelled.
    pub cancelled: bool,
    /// One entry per node, in the order asked.
    pub nodes: Vec<FleetNodeEntry>,
    /// The nodes `--all-nodes` left out, and why (Windows, virtual nodes). Absent in records
    /// written before it existed.
    #[serde(default)]
    pub skipped: Vec<UnfitNode>,
}

/// The result of [`run_fleet`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetResult {
    /// The merged record.
    pub record: FleetRecord,
    /// Each node's run, in the order asked.
    pub runs: Vec<NodeRun>,
}

/// What a fleet run reports as it goes ([`run_fleet_with`]), for progress lines: a run can
/// take as long as the Jobs' deadline, and nothing else is said until it ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FleetEvent<'a> {
    /// The node's Job was created.
    Created {
        /// Node name.
        node: &'a str,
        /// Job name.
        job: &'a str,
    },
    /// The Job's pod runs: the Job counts it ready (or, from an API server that does not
    /// count ready pods, active). A Job that succeeded before any poll saw it running gets
    /// this event too, when its end is seen (before [`FleetEvent::Finished`]), with
    /// `between_polls`, so that every node that ran is said to have run.
    Running {
        /// Node name.
        node: &'a str,
        /// Job name.
        job: &'a str,
        /// The Job started and finished between two polls: no poll saw it running.
        between_polls: bool,
    },
    /// The node is done, however it ended (also when its Job could not be created).
    Finished {
        /// The node's run.
        run: &'a NodeRun,
        /// Nodes done so far, this one included.
        done: usize,
        /// Nodes in the run.
        total: usize,
    },
}

/// Receives the [`FleetEvent`]s of a run, from the tasks that run the nodes.
pub type OnFleetEvent = Arc<dyn Fn(&FleetEvent<'_>) + Send + Sync>;

fn safe_file(node: &str) -> String {
    node.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Container waiting reasons that never resolve by themselves.
const STUCK_REASONS: [&str; 6] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Why a Job's pod cannot start, if it cannot.
fn stuck_reason(p: &Pod) -> Option<String> {
    let st = p.status.as_ref()?;
    st.container_statuses.iter().flatten().find_map(|c| {
        let w = c.state.as_ref()?.waiting.as_ref()?;
        let reason = w.reason.as_deref()?;
        STUCK_REASONS.contains(&reason).then(|| match &w.message {
            Some(m) => format!("{reason}: {m}"),
            None => reason.to_string(),
        })
    })
}

/// Every node's name (`list nodes`), Windows and virtual nodes included: what `kubectl get
/// nodes` shows. A fleet run takes its nodes from [`select_nodes`] instead.
pub async fn all_node_names(kube: &Kube) -> Result<Vec<String>, Error> {
    let nodes: Vec<Node> = list_all(kube, &list_nodes_op(), &Node::url_path(&(), None), None, None).await?;
    Ok(nodes.into_iter().filter_map(|n| n.metadata.name).collect())
}

fn list_nodes_op() -> Op {
    Op {
        verb: "list",
        resource: "nodes",
        scope: Scope::Cluster,
        name: None,
    }
}

/// The label selector of the nodes a node Job can run on, sent to the API server: the
/// Job is a privileged Linux pod (`kubernetes.io/os` is set by every kubelet).
pub const LINUX_NODES: &str = "kubernetes.io/os=linux";

/// The label selector of the other nodes, listed only to name them as skipped.
pub const NOT_LINUX_NODES: &str = "kubernetes.io/os!=linux";

/// Why snat's node Job cannot run on a node (see [`unfit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unfit {
    /// Not a Linux node (`kubernetes.io/os` is not `linux`: a Windows node pool). The Job's
    /// privileged, hostPID Linux pod is refused there. Skipped by `--all-nodes`.
    NotLinux,
    /// A virtual node (label `type=virtual-kubelet`: AKS virtual nodes on ACI), with no
    /// host of its own to look at and no privileged pods. Skipped by `--all-nodes`.
    VirtualKubelet,
    /// The node's `Ready` condition is not `True`: a pod pinned there would stay Pending
    /// until the Job's deadline. The node fails at once, without a Job.
    NotReady,
}

/// A node snat's Job cannot run on, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnfitNode {
    /// Node name.
    pub node: String,
    /// Why.
    pub unfit: Unfit,
    /// What the node object says: `kubernetes.io/os=windows`, `type=virtual-kubelet`,
    /// `Ready=Unknown: NodeStatusUnknown: Kubelet stopped posting node status.`
    pub detail: String,
}

impl std::fmt::Display for UnfitNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (node, d) = (&self.node, &self.detail);
        match self.unfit {
            Unfit::NotLinux => write!(f, "{node}: not a Linux node ({d})"),
            Unfit::VirtualKubelet => write!(f, "{node}: a virtual node ({d}), with no host of its own"),
            Unfit::NotReady => write!(f, "{node}: NotReady ({d})"),
        }
    }
}

/// Why snat's node Job cannot run on `node`, if it cannot: checked in the order of
/// [`Unfit`]'s variants. A node without a `Ready` condition counts as ready (nothing says
/// otherwise).
pub fn unfit(node: &Node) -> Option<(Unfit, String)> {
    let labels = node.metadata.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    match label("kubernetes.io/os") {
        Some("linux") => {}
        Some(os) => return Some((Unfit::NotLinux, format!("kubernetes.io/os={os}"))),
        None => return Some((Unfit::NotLinux, "no kubernetes.io/os label".into())),
    }
    if label("type") == Some("virtual-kubelet") {
        return Some((Unfit::VirtualKubelet, "type=virtual-kubelet".into()));
    }
    let ready = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    if ready.status == "True" {
        return None;
    }
    let mut detail = format!("Ready={}", ready.status);
    for part in [&ready.reason, &ready.message].into_iter().flatten() {
        detail.push_str(": ");
        detail.push_str(part.trim());
    }
    Some((Unfit::NotReady, detail))
}

fn unfit_node(n: &Node) -> Option<UnfitNode> {
    let (unfit, detail) = unfit(n)?;
    Some(UnfitNode {
        node: n.metadata.name.clone().unwrap_or_default(),
        unfit,
        detail,
    })
}

/// The nodes a fleet run covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetTargets {
    /// The nodes, in order; each gets a Job, except those in `not_ready`.
    pub nodes: Vec<String>,
    /// Nodes of `nodes` known to be NotReady: each fails at once, without a Job.
    pub not_ready: Vec<UnfitNode>,
    /// Nodes left out (not Linux, virtual), for the record and the user.
    pub skipped: Vec<UnfitNode>,
}

impl FleetTargets {
    /// Exactly `nodes`, nothing known about them.
    pub fn of(nodes: &[String]) -> FleetTargets {
        FleetTargets {
            nodes: nodes.to_vec(),
            ..Default::default()
        }
    }
}

/// The nodes `--all-nodes` runs on (`list nodes`): the Linux nodes, selected by the API
/// server ([`LINUX_NODES`]), except virtual nodes. The nodes left out are listed too
/// ([`NOT_LINUX_NODES`]), so that `skipped` names every node the run does not cover. A
/// NotReady Linux node stays in `nodes` and is named in `not_ready`.
pub async fn select_nodes(kube: &Kube) -> Result<FleetTargets, Error> {
    let url = Node::url_path(&(), None);
    let linux: Vec<Node> = list_all(kube, &list_nodes_op(), &url, None, Some(LINUX_NODES)).await?;
    let other: Vec<Node> = list_all(kube, &list_nodes_op(), &url, None, Some(NOT_LINUX_NODES)).await?;
    let mut t = FleetTargets::default();
    for n in &linux {
        let Some(name) = n.metadata.name.clone() else { continue };
        match unfit_node(n) {
            None => t.nodes.push(name),
            Some(u) if u.unfit == Unfit::NotReady => {
                t.nodes.push(name);
                t.not_ready.push(u);
            }
            Some(u) => t.skipped.push(u),
        }
    }
    t.skipped.extend(other.iter().filter_map(unfit_node));
    Ok(t)
}

/// What `get nodes NAME` says about the `--on-node` names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCheck {
    /// Names that are no node of the cluster (404), in the order given.
    pub missing: Vec<String>,
    /// Nodes the Job cannot run on, in the order given.
    pub unfit: Vec<UnfitNode>,
}

/// Look up each of `names` (`get nodes NAME`) before any Job is created: a Job pinned to a
/// node that does not exist is never scheduled, and one on a Windows or virtual node is
/// refused; both would wait until the Job's deadline. Any error other than "not found"
/// (RBAC, transport) is returned.
pub async fn check_nodes(kube: &Kube, names: &[String]) -> Result<NodeCheck, Error> {
    let req = Request::new(Node::url_path(&(), None));
    let mut check = NodeCheck::default();
    for name in names {
        let op = Op {
            verb: "get",
            resource: "nodes",
            scope: Scope::Cluster,
            name: Some(name.clone()),
        };
        match kube
            .send_json::<Node>(&op, true, || req.get(name, &GetParams::default()))
            .await
        {
            Ok(n) => check.unfit.extend(unfit_node(&n).map(|u| UnfitNode {
                node: name.clone(),
                ..u
            })),
            Err(Error::KubeNotFound { .. }) => check.missing.push(name.clone()),
            Err(e) => return Err(e),
        }
    }
    Ok(check)
}

/// The names in `names` that are no node of the cluster (`get nodes NAME` answers 404), in
/// the order given ([`check_nodes`]'s `missing`). Any other error (RBAC, transport) is
/// returned.
pub async fn missing_nodes(kube: &Kube, names: &[String]) -> Result<Vec<String>, Error> {
    Ok(check_nodes(kube, names).await?.missing)
}

fn ops(ns: &str) -> (Op, Op, Op, Op, Op) {
    let o = |verb, resource| Op {
        verb,
        resource,
        scope: Scope::Namespace(ns.to_string()),
        name: None,
    };
    (
        o("create", "jobs.batch"),
        o("get", "jobs.batch"),
        o("list", "pods"),
        o("get", "pods/log"),
        o("delete", "jobs.batch"),
    )
}

fn secret_op(verb: &'static str, ns: &str, name: &str) -> Op {
    Op {
        verb,
        resource: "secrets",
        scope: Scope::Namespace(ns.to_string()),
        name: Some(name.to_string()),
    }
}

/// Create the run's params Secret ([`params_secret`]) before any Job, if the run has secret
/// parameters; returns its name. A 403 names the Role to bind (snat-fleet).
async fn create_params_secret(kube: &Kube, spec: &FleetSpec) -> Result<Option<String>, Error> {
    let Some(secret) = params_secret(spec)? else {
        return Ok(None);
    };
    let ns = spec.namespace.as_str();
    let name = params_secret_name(&spec.run_id);
    let body = serde_json::to_vec(&secret).map_err(|e| Error::Fleet(format!("cannot encode the Secret: {e}")))?;
    let req = Request::new(Secret::url_path(&(), Some(ns)));
    kube.send_raw(&secret_op("create", ns, &name), false, || {
        req.create(&PostParams::default(), body.clone())
    })
    .await
    .map_err(|e| {
        Error::Fleet(format!(
            "cannot create the Secret {name} that gives the secret --param values to the node Jobs, so no Job was created: {}",
            super::chain(&e)
        ))
    })?;
    Ok(Some(name))
}

/// Delete the run's params Secret (already gone is fine).
async fn delete_params_secret(kube: &Kube, ns: &str, name: &str) -> Result<(), Error> {
    let req = Request::new(Secret::url_path(&(), Some(ns)));
    match kube
        .send_raw(&secret_op("delete", ns, name), true, || {
            req.delete(name, &DeleteParams::default())
        })
        .await
    {
        Ok(_) | Err(Error::KubeNotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn delete_job(kube: &Kube, ns: &str, job: &str) -> Result<(), Error> {
    let (.., del) = ops(ns);
    let req = Request::new(Job::url_path(&(), Some(ns)));
    match kube
        .send_raw(&del, true, || req.delete(job, &DeleteParams::background()))
        .await
    {
        Ok(_) | Err(Error::KubeNotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// How a node's Job ended, as its status says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum JobEnd {
    /// `status.succeeded` > 0.
    Succeeded,
    /// `status.failed` > 0 or a failure condition (its text, see [`job_failure`]).
    Failed(Option<String>),
}

/// Why a Job has failed, from its conditions: the `Failed` condition with status `True`, or
/// else `FailureTarget` (set first by newer clusters, while the pods are being stopped), as
/// `REASON: MESSAGE`, e.g. `DeadlineExceeded: Job was active longer than specified
/// deadline`. `None` while the Job has not failed. A Job whose pod was never created has
/// no failed pod to count: only this condition says it has ended.
pub fn job_failure(st: &JobStatus) -> Option<String> {
    let c = st
        .conditions
        .iter()
        .flatten()
        .filter(|c| c.status == "True" && (c.type_ == "Failed" || c.type_ == "FailureTarget"))
        .min_by_key(|c| c.type_ != "Failed")?;
    let parts: Vec<&str> = [&c.reason, &c.message]
        .into_iter()
        .flatten()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    Some(if parts.is_empty() {
        format!("condition {}", c.type_)
    } else {
        parts.join(": ")
    })
}

/// The newest `FailedCreate` event among `events` (a Job's): the API server's refusal of
/// the Job's pod, e.g. an admission webhook's `denied the request: ...` or Pod Security's
/// `violates PodSecurity "baseline:latest": ...`.
pub fn pod_creation_refusal(events: &[Event]) -> Option<String> {
    let when = |e: &Event| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or(e.event_time.as_ref().map(|t| t.0))
            .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
        .enumerate()
        .max_by_key(|(i, e)| (when(e), *i))
        .map(|(_, e)| e.message.clone().unwrap_or_else(|| "FailedCreate".into()))
}

/// Looks for why a Job has no pod, in the Job's events (`list events` in its namespace, as
/// `kubectl describe job` does), and remembers it when events cannot be listed, so that the
/// node's error can say so.
#[derive(Debug, Default)]
struct Podless {
    /// Why the events could not be listed.
    events_unreadable: Option<String>,
}

impl Podless {
    /// The Job's pod-creation refusal, if its events have one. The first failure to list
    /// them is logged as a warning; the events are not asked for again.
    async fn look(&mut self, kube: &Kube, ns: &str, job: &str) -> Option<String> {
        if self.events_unreadable.is_some() {
            return None;
        }
        let op = Op {
            verb: "list",
            resource: "events",
            scope: Scope::Namespace(ns.to_string()),
            name: None,
        };
        let selector = format!("involvedObject.kind=Job,involvedObject.name={job}");
        match list_all::<Event>(kube, &op, &Event::url_path(&(), Some(ns)), Some(&selector), None).await {
            Ok(events) => pod_creation_refusal(&events),
            Err(e) => {
                let e = super::chain(&e);
                tracing::warn!(
                    "Job {job} has no pod yet, and its events, which would say why, cannot be read: {e}; `kubectl -n {ns} describe job {job}` shows them"
                );
                self.events_unreadable = Some(e);
                None
            }
        }
    }

    /// `; ...` saying the events could not be read, or nothing.
    fn note(&self, ns: &str, job: &str) -> String {
        match &self.events_unreadable {
            Some(e) => format!(
                "; the Job's events, which say why a pod is not created, could not be read ({e}); `kubectl -n {ns} describe job {job}` shows them"
            ),
            None => String::new(),
        }
    }
}

/// The node's error when the API server refused to create its Job's pod.
fn refused_pod(spec: &FleetSpec, node: &str, job: &str, condition: Option<&str>, why: &str) -> Error {
    Error::Fleet(format!(
        "Job {job} on node {node}{}: its pod could not be created: {why} (FailedCreate: an admission policy such as Azure Policy/Gatekeeper or Pod Security, the ServiceAccount {sa:?} or a ResourceQuota in namespace {ns:?} refused it; the namespace must allow privileged pods, see deploy/00-namespace.yaml and deploy/10-rbac.yaml)",
        condition.map(|c| format!(" failed ({c})")).unwrap_or_default(),
        sa = spec.service_account,
        ns = spec.namespace,
    ))
}

async fn run_node(kube: &Kube, spec: &FleetSpec, node: &str, cancel: &AtomicBool, on_event: &OnFleetEvent) -> NodeRun {
    let t0 = Instant::now();
    let job = job_name(&spec.run_id, node);
    let mut run = NodeRun {
        node: node.to_string(),
        job: job.clone(),
        pod: None,
        outcome: NodeOutcome::Failed,
        output: None,
        error: None,
        duration_ms: 0.0,
    };
    if cancel.load(Ordering::SeqCst) {
        run.outcome = NodeOutcome::Cancelled;
        return run;
    }
    let ns = spec.namespace.as_str();
    let (create, get, list, logs, _) = ops(ns);
    let jobs_req = Request::new(Job::url_path(&(), Some(ns)));
    let body = match serde_json::to_vec(&job_manifest(spec, node)) {
        Ok(b) => b,
        Err(e) => {
            run.error = Some(format!("cannot encode the Job: {e}"));
            return run;
        }
    };
    if let Err(e) = kube
        .send_raw(&create, false, || jobs_req.create(&PostParams::default(), body.clone()))
        .await
    {
        run.error = Some(super::chain(&e));
        run.duration_ms = t0.elapsed().as_secs_f64() * 1000.0;
        return run;
    }
    on_event(&FleetEvent::Created { node, job: &job });
    let mut podless = Podless::default();
    let result = async {
        let deadline = Duration::from_secs(u64::try_from(spec.active_deadline_seconds).unwrap_or(900) + 120);
        let mut running = false;
        let end = loop {
            if cancel.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let j: Job = kube
                .send_json(&get, true, || jobs_req.get(&job, &GetParams::default()))
                .await?;
            let st = j.status.unwrap_or_default();
            if st.succeeded.unwrap_or(0) > 0 {
                if !running {
                    on_event(&FleetEvent::Running {
                        node,
                        job: &job,
                        between_polls: true,
                    });
                }
                break JobEnd::Succeeded;
            }
            let condition = job_failure(&st);
            if st.failed.unwrap_or(0) > 0 || condition.is_some() {
                break JobEnd::Failed(condition);
            }
            let runs = match st.ready {
                Some(ready) => ready > 0,
                None => st.active.unwrap_or(0) > 0,
            };
            if runs && !running {
                running = true;
                on_event(&FleetEvent::Running {
                    node,
                    job: &job,
                    between_polls: false,
                });
            }
            if t0.elapsed() > deadline {
                return Err(Error::Fleet(format!(
                    "Job {job} on node {node} did not finish within {deadline:?}{}",
                    podless.note(ns, &job)
                )));
            }
            if t0.elapsed() >= spec.stuck_check_after {
                let pods: Vec<Pod> = list_all(
                    kube,
                    &list,
                    &Pod::url_path(&(), Some(ns)),
                    None,
                    Some(&format!("job-name={job}")),
                )
                .await?;
                if let Some(why) = pods.iter().find_map(stuck_reason) {
                    return Err(Error::Fleet(format!(
                        "Job {job} on node {node} cannot start: {why} (check the image name and that the node can pull it)"
                    )));
                }
                if pods.is_empty()
                    && let Some(why) = podless.look(kube, ns, &job).await
                {
                    return Err(refused_pod(spec, node, &job, None, &why));
                }
            }
            tokio::time::sleep(spec.poll_interval).await;
        };
        let pods: Vec<Pod> = list_all(
            kube,
            &list,
            &Pod::url_path(&(), Some(ns)),
            None,
            Some(&format!("job-name={job}")),
        )
        .await?;
        let Some(pod) = pods.iter().filter_map(|p| p.metadata.name.clone()).next_back() else {
            return Err(match &end {
                JobEnd::Succeeded => Error::Fleet(format!("Job {job} has no pod (was it evicted?)")),
                JobEnd::Failed(condition) => match podless.look(kube, ns, &job).await {
                    Some(why) => refused_pod(spec, node, &job, condition.as_deref(), &why),
                    None => Error::Fleet(format!(
                        "Job {job} on node {node} failed{} without ever having a pod{}",
                        condition.as_deref().map(|c| format!(" ({c})")).unwrap_or_default(),
                        podless.note(ns, &job)
                    )),
                },
            });
        };
        let pods_req = Request::new(Pod::url_path(&(), Some(ns)));
        // Reports are small; a runaway log must not exhaust memory across 1,000 nodes.
        let log_params = LogParams {
            limit_bytes: Some(MAX_LOG_BYTES),
            ..Default::default()
        };
        let log = match kube
            .send_raw(&logs, true, || pods_req.logs(&pod, &log_params))
            .await
        {
            Ok(log) => log,
            Err(e) => match &end {
                JobEnd::Failed(Some(c)) => {
                    return Err(Error::Fleet(format!(
                        "Job {job} on node {node} failed ({c}); the log of its pod {pod} cannot be read: {}",
                        super::chain(&e)
                    )));
                }
                _ => return Err(e),
            },
        };
        Ok(Some((end, pod, String::from_utf8_lossy(&log).into_owned())))
    }
    .await;
    match result {
        Ok(None) => run.outcome = NodeOutcome::Cancelled,
        Ok(Some((end, pod, log))) => {
            let mut out = parse_node_output(&log);
            map_playbook_path(&mut out, &spec.playbook_name);
            run.outcome = if end == JobEnd::Succeeded && out.exit_code.is_some() {
                NodeOutcome::Completed
            } else {
                NodeOutcome::Failed
            };
            if run.outcome == NodeOutcome::Failed {
                let problems = (!out.problems.is_empty()).then(|| out.problems.join("; "));
                run.error = Some(match (&end, problems) {
                    (JobEnd::Failed(Some(c)), Some(p)) => format!("the Job failed ({c}): {p}"),
                    (JobEnd::Failed(Some(c)), None) => format!("the Job failed ({c})"),
                    (_, Some(p)) => p,
                    (_, None) => "the Job failed".to_string(),
                });
            } else {
                run.error = node_failure(&out);
            }
            run.pod = Some(pod);
            run.output = Some(out);
        }
        Err(e) => run.error = Some(super::chain(&e)),
    }
    if let Err(e) = delete_job(kube, ns, &job).await {
        let m = format!(
            "could not delete Job {job} (ttlSecondsAfterFinished will): {}",
            super::chain(&e)
        );
        run.error = Some(match run.error.take() {
            Some(prev) => format!("{prev}; {m}"),
            None => m,
        });
    }
    run.duration_ms = t0.elapsed().as_secs_f64() * 1000.0;
    run
}

/// `names` with each name kept once, at its first place, and the names that were given
/// more than once (each once, in the order they first repeat). A node's Job name is derived
/// from the node, so a second Job for the same node would be refused by the API server
/// (409 AlreadyExists) and that node reported failed.
pub fn unique_nodes(names: &[String]) -> (Vec<String>, Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    let (mut unique, mut repeated) = (Vec::new(), Vec::new());
    for n in names {
        if seen.insert(n.as_str()) {
            unique.push(n.clone());
        } else if !repeated.contains(n) {
            repeated.push(n.clone());
        }
    }
    (unique, repeated)
}

/// Run `spec`'s playbook on `nodes`, at most `spec.concurrency` Jobs at a time; a node named
/// more than once runs once ([`unique_nodes`]). Errors only for an unusable spec; each
/// node's failure is in its [`NodeRun`].
pub async fn run_fleet(
    kube: &Kube,
    spec: &FleetSpec,
    nodes: &[String],
    cancel: Arc<AtomicBool>,
) -> Result<FleetResult, Error> {
    run_fleet_with(kube, spec, nodes, cancel, Arc::new(|_: &FleetEvent<'_>| {})).await
}

/// [`run_fleet`], telling `on_event` as each node's Job is created, runs and ends.
pub async fn run_fleet_with(
    kube: &Kube,
    spec: &FleetSpec,
    nodes: &[String],
    cancel: Arc<AtomicBool>,
    on_event: OnFleetEvent,
) -> Result<FleetResult, Error> {
    run_fleet_on(kube, spec, &FleetTargets::of(nodes), cancel, on_event).await
}

/// [`run_fleet_with`] on `targets` ([`select_nodes`], [`check_nodes`]): its NotReady nodes
/// fail at once without a Job, and its skipped nodes are named in the record.
pub async fn run_fleet_on(
    kube: &Kube,
    spec: &FleetSpec,
    targets: &FleetTargets,
    cancel: Arc<AtomicBool>,
    on_event: OnFleetEvent,
) -> Result<FleetResult, Error> {
    let nodes = targets.nodes.as_slice();
    if spec.concurrency == 0 {
        return Err(Error::Fleet("concurrency must be at least 1".into()));
    }
    if spec.image.trim().is_empty() {
        return Err(Error::Fleet("no image: give the snat image to run on the nodes".into()));
    }
    if let Some(n) = nodes.iter().find(|n| n.is_empty()) {
        return Err(Error::Fleet(format!("bad node name {n:?}")));
    }
    let (nodes, _) = unique_nodes(nodes);
    let nodes = nodes.as_slice();
    let started_at = crate::audit::now_rfc3339();
    // The secret parameters go to the nodes in a Secret, created before the first Job
    // mounts it and deleted once every Job is done, however the run ends.
    let secret = create_params_secret(kube, spec).await?;
    let runs = run_nodes(kube, spec, targets, nodes, &cancel, &on_event).await;
    if let Some(name) = &secret
        && let Err(e) = delete_params_secret(kube, &spec.namespace, name).await
    {
        tracing::warn!(
            "could not delete the Secret {name} holding this run's secret --param values: {}; delete it with `kubectl -n {} delete secret -l snat.io/run-id={}`",
            super::chain(&e),
            spec.namespace,
            labels(spec)["snat.io/run-id"]
        );
    }
    let runs = runs?;
    let entries = runs
        .iter()
        .map(|r| {
            let out = r.output.as_ref();
            let has_audit = out.is_some_and(|o| o.audit_text.is_some());
            FleetNodeEntry {
                node: r.node.clone(),
                job: r.job.clone(),
                outcome: r.outcome,
                exit_code: out.and_then(|o| o.exit_code),
                hostname: out.and_then(|o| {
                    [&o.report, &o.audit]
                        .into_iter()
                        .find_map(|d| d.as_ref()?.get("host")?.get("hostname")?.as_str().map(str::to_string))
                }),
                verdict: out.and_then(|o| o.report.as_ref()?.get("verdict").cloned()),
                audit_run_id: out.and_then(|o| o.audit.as_ref()?.get("run_id")?.as_str().map(str::to_string)),
                audit_sha256: out.and_then(|o| o.audit_sha256.clone()),
                audit_file: has_audit.then(|| format!("{}.audit.json", safe_file(&r.node))),
                report_file: out
                    .is_some_and(|o| o.report.is_some())
                    .then(|| format!("{}.report.json", safe_file(&r.node))),
                error: r.error.clone(),
            }
        })
        .collect();
    Ok(FleetResult {
        record: FleetRecord {
            schema_version: FLEET_SCHEMA_VERSION,
            run_id: spec.run_id.clone(),
            started_at,
            ended_at: crate::audit::now_rfc3339(),
            playbook: spec.playbook_name.clone(),
            playbook_sha256: hex_sha256(spec.playbook.as_bytes()),
            image: spec.image.clone(),
            namespace: spec.namespace.clone(),
            concurrency: spec.concurrency,
            cancelled: cancel.load(Ordering::SeqCst),
            nodes: entries,
            skipped: targets.skipped.clone(),
        },
        runs,
    })
}

/// Run every node of `nodes` (NotReady ones fail at once), at most `spec.concurrency` at a
/// time, telling `on_event`; the runs in the order of `nodes`.
async fn run_nodes(
    kube: &Kube,
    spec: &FleetSpec,
    targets: &FleetTargets,
    nodes: &[String],
    cancel: &Arc<AtomicBool>,
    on_event: &OnFleetEvent,
) -> Result<Vec<NodeRun>, Error> {
    let sem = Arc::new(tokio::sync::Semaphore::new(spec.concurrency));
    let spec_arc = Arc::new(spec.clone());
    let mut set = tokio::task::JoinSet::new();
    for (i, node) in nodes.iter().enumerate() {
        let (sem, spec, kube, cancel, node, on_event) = (
            sem.clone(),
            spec_arc.clone(),
            kube.clone(),
            cancel.clone(),
            node.clone(),
            on_event.clone(),
        );
        if let Some(u) = targets.not_ready.iter().find(|u| u.node == node) {
            let run = NodeRun {
                job: job_name(&spec.run_id, &node),
                node,
                pod: None,
                outcome: NodeOutcome::Failed,
                output: None,
                error: Some(format!(
                    "node {u}: no Job was created (its pod would stay Pending until the deadline)"
                )),
                duration_ms: 0.0,
            };
            set.spawn(async move { (i, run) });
            continue;
        }
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            (i, run_node(&kube, &spec, &node, &cancel, &on_event).await)
        });
    }
    let mut runs: Vec<Option<NodeRun>> = vec![None; nodes.len()];
    let mut done = 0;
    while let Some(r) = set.join_next().await {
        match r {
            Ok((i, run)) => {
                done += 1;
                on_event(&FleetEvent::Finished {
                    run: &run,
                    done,
                    total: nodes.len(),
                });
                runs[i] = Some(run);
            }
            Err(e) => return Err(Error::Fleet(format!("a node task failed: {e}"))),
        }
    }
    Ok(runs.into_iter().flatten().collect())
}

/// Where `snat-run --on-node`/`--all-nodes` puts a fleet run's files: `<audit dir>/fleet/<run
/// id>/` (a subdirectory, so that `audit verify` on the audit directory only sees the chain).
/// The run id is also the id of the launcher's own audit record.
pub fn fleet_dir(audit_dir: &Path, run_id: &str) -> PathBuf {
    audit_dir.join("fleet").join(run_id)
}

/// The fleet record of run `run_id` in the audit directory `audit_dir`, where [`write_fleet`]
/// writes it into [`fleet_dir`].
pub fn record_path(audit_dir: &Path, run_id: &str) -> PathBuf {
    fleet_dir(audit_dir, run_id).join(record_file_name(run_id))
}

fn record_file_name(run_id: &str) -> String {
    format!("fleet-{}.json", safe_file(run_id))
}

/// Write a fleet run to `dir`: `fleet-<run id>.json` (the record) and, per node,
/// `<node>.audit.json` (the node's audit record, byte for byte, so its SHA-256 matches) and
/// `<node>.report.json`. Returns the record's path.
pub fn write_fleet(dir: &Path, result: &FleetResult) -> Result<PathBuf, Error> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { what, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io("cannot create fleet output directory", dir))?;
    for (run, entry) in result.runs.iter().zip(&result.record.nodes) {
        let Some(out) = &run.output else { continue };
        if let (Some(f), Some(text)) = (&entry.audit_file, &out.audit_text) {
            let p = dir.join(f);
            std::fs::write(&p, text).map_err(io("cannot write node audit record", &p))?;
        }
        if let (Some(f), Some(rep)) = (&entry.report_file, &out.report) {
            let p = dir.join(f);
            let text = serde_json::to_string_pretty(rep).unwrap_or_default();
            std::fs::write(&p, text).map_err(io("cannot write node report", &p))?;
        }
    }
    let p = dir.join(record_file_name(&result.record.run_id));
    let text = serde_json::to_string_pretty(&result.record).unwrap_or_default();
    std::fs::write(&p, text).map_err(io("cannot write fleet record", &p))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn spec() -> FleetSpec {
        let mut s = FleetSpec::new("registry.example/snat:0.1.0", "census.rhai", "report::title(\"t\");");
        s.run_id = "0123abcd-0000-4000-8000-000000000000".into();
        s.extra_args = vec!["--param".into(), "top=5".into()];
        s
    }

    #[test]
    fn job_manifest_fields() {
        let j = job_manifest(&spec(), "aks-nodepool1-12345678-vmss000003");
        let meta = &j.metadata;
        assert_eq!(
            meta.name.as_deref(),
            Some(job_name(&spec().run_id, "aks-nodepool1-12345678-vmss000003").as_str())
        );
        assert_eq!(meta.namespace.as_deref(), Some("snat"));
        assert_eq!(meta.labels.as_ref().unwrap()["snat.io/run-id"], spec().run_id);
        assert_eq!(
            meta.annotations.as_ref().unwrap()["snat.io/node"],
            "aks-nodepool1-12345678-vmss000003"
        );
        let js = j.spec.as_ref().unwrap();
        assert_eq!(js.backoff_limit, Some(0));
        assert_eq!(js.ttl_seconds_after_finished, Some(600));
        assert_eq!(js.active_deadline_seconds, Some(900));
        let ps = js.template.spec.as_ref().unwrap();
        assert_eq!(ps.node_name.as_deref(), Some("aks-nodepool1-12345678-vmss000003"));
        assert_eq!(ps.host_pid, Some(true));
        assert_eq!(ps.host_network, Some(true));
        assert_eq!(ps.restart_policy.as_deref(), Some("Never"));
        assert_eq!(ps.service_account_name.as_deref(), Some("snat-node"));
        assert_eq!(ps.automount_service_account_token, Some(false));
        let tol = ps.tolerations.as_ref().unwrap();
        assert_eq!(tol.len(), 1);
        assert_eq!(tol[0].operator.as_deref(), Some("Exists"));
        assert_eq!(tol[0].key, None);
        assert_eq!(tol[0].effect, None);
        let c = &ps.containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.example/snat:0.1.0"));
        assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
        let cmd = c.command.as_ref().unwrap();
        assert_eq!(&cmd[..2], ["/bin/sh", "-c"]);
        assert_eq!(cmd[2], NODE_SCRIPT);
        assert_eq!(
            &cmd[4..],
            [
                "snat-run",
                "--output",
                "json",
                "--audit-dir",
                "/tmp/snat/audit",
                "--host-proc",
                "/host/proc",
                "--param",
                "top=5",
                "/tmp/snat/playbook.rhai"
            ]
        );
        let env = c.env.as_ref().unwrap();
        assert_eq!(env[0].name, "SNAT_PLAYBOOK");
        assert_eq!(env[0].value.as_deref(), Some("report::title(\"t\");"));
        let mounts = c.volume_mounts.as_ref().unwrap();
        let m = |n: &str| mounts.iter().find(|m| m.name == n).unwrap();
        assert_eq!(
            (m("host-proc").mount_path.as_str(), m("host-proc").read_only),
            ("/host/proc", Some(true))
        );
        assert_eq!(
            (m("btf").mount_path.as_str(), m("btf").read_only),
            ("/sys/kernel/btf", Some(true))
        );
        assert_eq!(m("work").mount_path, WORK_DIR);
        let vols = ps.volumes.as_ref().unwrap();
        let v = |n: &str| vols.iter().find(|v| v.name == n).unwrap();
        assert_eq!(v("host-proc").host_path.as_ref().unwrap().path, "/proc");
        assert_eq!(v("btf").host_path.as_ref().unwrap().path, "/sys/kernel/btf");
        assert!(v("work").empty_dir.is_some());
    }

    /// Secret parameters are in the Secret, never in the Job: the pod mounts the Secret
    /// read-only and snat-run reads it with --param-file.
    #[test]
    fn secret_params_go_to_a_mounted_secret_not_the_job() {
        let mut s = spec();
        s.secret_params = SecretParams(BTreeMap::from([
            ("token".to_string(), "s3cr3t-value with = sign".to_string()),
            ("db_password".to_string(), "hunter2hunter2".to_string()),
        ]));
        let j = job_manifest(&s, "node-a");
        let text = serde_json::to_string(&j).unwrap();
        for v in ["s3cr3t", "hunter2"] {
            assert!(!text.contains(v), "{v} in the Job: {text}");
        }
        let ps = j.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let cmd = ps.containers[0].command.as_ref().unwrap();
        let at = cmd.iter().position(|a| a == "--param-file").unwrap();
        assert_eq!(cmd[at + 1], "/etc/snat/params/params");
        assert!(cmd.contains(&"top=5".to_string()), "plain params stay: {cmd:?}");
        let m = ps.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "params")
            .unwrap();
        assert_eq!((m.mount_path.as_str(), m.read_only), (PARAMS_DIR, Some(true)));
        let v = ps
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "params")
            .unwrap();
        let name = params_secret_name(&s.run_id);
        assert_eq!(v.secret.as_ref().unwrap().secret_name.as_deref(), Some(name.as_str()));
        assert!(
            ps.containers[0]
                .env
                .as_ref()
                .unwrap()
                .iter()
                .all(|e| e.value_from.is_none())
        );

        let secret = params_secret(&s).unwrap().unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("snat-0123abcd-params"));
        assert_eq!(secret.metadata.labels.as_ref().unwrap()["snat.io/run-id"], s.run_id);
        let data = &secret.data.as_ref().unwrap()[PARAMS_FILE].0;
        assert_eq!(
            String::from_utf8_lossy(data),
            "db_password=hunter2hunter2\ntoken=s3cr3t-value with = sign\n"
        );
        assert!(!format!("{s:?}").contains("hunter2"), "Debug shows keys only");
    }

    #[test]
    fn no_secret_params_no_secret() {
        let s = spec();
        assert_eq!(params_secret(&s).unwrap(), None);
        let j = serde_json::to_string(&job_manifest(&s, "node-a")).unwrap();
        assert!(!j.contains("params") && !j.contains("--param-file"), "{j}");
    }

    #[test]
    fn a_secret_value_with_a_line_break_is_refused_by_key() {
        let mut s = spec();
        s.secret_params = SecretParams(BTreeMap::from([("token".to_string(), "a\nb-secret".to_string())]));
        let e = params_secret(&s).unwrap_err().to_string();
        assert!(e.contains("--param token") && e.contains("line break"), "{e}");
        assert!(!e.contains("b-secret"), "{e}");
    }

    #[rstest]
    #[case("0123abcd-0000", "node-a")]
    #[case("RUN_ID with spaces!", "aks-nodepool1-12345678-vmss000003")]
    #[case("", "x")]
    fn job_names_are_dns_labels(#[case] run: &str, #[case] node: &str) {
        let n = job_name(run, node);
        assert!(n.len() <= 63, "{n}");
        assert!(
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{n}"
        );
        assert!(n.starts_with("snat-") && !n.ends_with('-'));
        assert_ne!(job_name(run, node), job_name(run, &format!("{node}x")));
    }

    #[rstest]
    #[case::complete(
        "--- snat:report ---\n{\"verdict\":\"pressure_found\"}\n\n--- snat:audit ---\n{\"run_id\":\"r1\"}\n\n--- snat:stderr ---\nwarn: x\n\n--- snat:exit 3 ---\n",
        Some(3),
        true,
        true,
        0
    )]
    #[case::cut_short("--- snat:report ---\n{\"verdict\":\"clear\"}\n", None, true, false, 2)]
    #[case::bad_json(
        "--- snat:report ---\n{oops\n--- snat:audit ---\n{}\n--- snat:exit 1 ---\n",
        Some(1),
        false,
        true,
        1
    )]
    #[case::empty("", None, false, false, 3)]
    fn node_output_sections(
        #[case] log: &str,
        #[case] exit: Option<i32>,
        #[case] has_report: bool,
        #[case] has_audit: bool,
        #[case] problems: usize,
    ) {
        let o = parse_node_output(log);
        assert_eq!(o.exit_code, exit);
        assert_eq!(o.report.is_some(), has_report);
        assert_eq!(o.audit.is_some(), has_audit);
        assert_eq!(o.problems.len(), problems, "{:?}", o.problems);
        if let Some(t) = &o.audit_text {
            assert_eq!(o.audit_sha256.as_deref(), Some(hex_sha256(t.as_bytes()).as_str()));
        }
    }

    #[test]
    fn node_script_frames_a_real_run() {
        // Run the container script with /bin/sh and a stand-in snat-run that writes a report,
        // an audit record, some stderr, and exits 3 (pressure found).
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("snat-run");
        std::fs::write(
            &fake,
            "#!/bin/sh\nwhile [ $# -gt 1 ]; do [ \"$1\" = --audit-dir ] && a=$2; shift; done\n\
             echo '{\"playbook\":\"'\"$1\"'\",\"verdict\":\"pressure_found\"}'\n\
             printf '{\"run_id\":\"abc\"}' > \"$a/run.json\"\necho 'tracing...' >&2\nexit 3\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let work = dir.path().join("work");
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(NODE_SCRIPT)
            .arg("snat-node")
            .arg(&fake)
            .arg("--audit-dir")
            .arg(work.join("audit"))
            .arg(work.join("playbook.rhai"))
            .env("SNAT_WORK", &work)
            .env("SNAT_PLAYBOOK", "let x = 1;\n")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the script must exit 0 whatever snat-run returned"
        );
        let o = parse_node_output(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(o.exit_code, Some(3));
        assert_eq!(o.report.as_ref().unwrap()["verdict"], "pressure_found");
        assert_eq!(o.audit.as_ref().unwrap()["run_id"], "abc");
        assert_eq!(o.audit_text.as_deref(), Some("{\"run_id\":\"abc\"}"));
        assert_eq!(o.stderr, "tracing...");
        assert!(o.problems.is_empty(), "{:?}", o.problems);
        assert_eq!(
            std::fs::read_to_string(work.join("playbook.rhai")).unwrap(),
            "let x = 1;\n"
        );
    }

    #[test]
    fn deploy_job_template_mirrors_the_code() {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/reference/job-template.yaml");
        let text = std::fs::read_to_string(p).unwrap();
        let mut file: Job = serde_saphyr::from_str(&text).unwrap();
        // The playbook is an example a reader replaces, given as a literal block scalar:
        // its lines as written, one per line, as the code passes a playbook's source.
        assert!(text.contains("value: |\n"), "SNAT_PLAYBOOK is a literal block scalar");
        let container = &file.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
        let example = container.env.as_ref().unwrap()[0].value.clone().unwrap();
        assert!(example.lines().count() > 3 && example.ends_with(");\n"), "{example:?}");
        assert!(
            example.starts_with("// ") && example.contains("\nreport::verdict("),
            "{example:?}"
        );
        let mut s = FleetSpec::new("IMAGE", "PLAYBOOK", &example);
        s.run_id = "RUN_ID".into();
        let built = job_manifest(&s, "NODE_NAME");
        // The file's name is a placeholder: the code derives it from the run id and node.
        assert_eq!(file.metadata.name.as_deref(), Some("snat-RUN-NODEHASH"));
        file.metadata.name = built.metadata.name.clone();
        assert_eq!(file, built);
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[rstest]
    #[case::none_repeated(&["a", "b"], &["a", "b"], &[])]
    #[case::twice(&["a", "a"], &["a"], &["a"])]
    #[case::first_place_kept(&["b", "a", "b", "c", "a", "b"], &["b", "a", "c"], &["b", "a"])]
    #[case::empty(&[], &[], &[])]
    fn repeated_nodes_are_kept_once(#[case] given: &[&str], #[case] unique: &[&str], #[case] repeated: &[&str]) {
        assert_eq!(unique_nodes(&names(given)), (names(unique), names(repeated)));
    }

    fn node_of(labels: &[(&str, &str)], ready: Option<(&str, Option<&str>, Option<&str>)>) -> Node {
        use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
        Node {
            metadata: ObjectMeta {
                name: Some("n".into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            status: ready.map(|(status, reason, message)| NodeStatus {
                conditions: Some(vec![
                    NodeCondition {
                        type_: "MemoryPressure".into(),
                        status: "False".into(),
                        ..Default::default()
                    },
                    NodeCondition {
                        type_: "Ready".into(),
                        status: status.into(),
                        reason: reason.map(Into::into),
                        message: message.map(Into::into),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const LINUX: (&str, &str) = ("kubernetes.io/os", "linux");

    #[rstest]
    #[case::linux_ready(node_of(&[LINUX], Some(("True", None, None))), None)]
    #[case::no_conditions_yet(node_of(&[LINUX], None), None)]
    #[case::windows(
        node_of(&[("kubernetes.io/os", "windows")], Some(("True", None, None))),
        Some((Unfit::NotLinux, "kubernetes.io/os=windows"))
    )]
    #[case::no_os_label(node_of(&[], Some(("True", None, None))), Some((Unfit::NotLinux, "no kubernetes.io/os label")))]
    #[case::aci_virtual_node(
        node_of(&[LINUX, ("type", "virtual-kubelet")], Some(("True", None, None))),
        Some((Unfit::VirtualKubelet, "type=virtual-kubelet"))
    )]
    #[case::not_ready(
        node_of(&[LINUX], Some(("False", Some("KubeletNotReady"), Some("container runtime is down")))),
        Some((Unfit::NotReady, "Ready=False: KubeletNotReady: container runtime is down"))
    )]
    #[case::unknown(node_of(&[LINUX], Some(("Unknown", None, None))), Some((Unfit::NotReady, "Ready=Unknown")))]
    // Windows and NotReady: the node is out whatever its state.
    #[case::windows_not_ready(
        node_of(&[("kubernetes.io/os", "windows")], Some(("False", None, None))),
        Some((Unfit::NotLinux, "kubernetes.io/os=windows"))
    )]
    fn nodes_the_job_cannot_run_on(#[case] node: Node, #[case] want: Option<(Unfit, &str)>) {
        assert_eq!(unfit(&node), want.map(|(u, d)| (u, d.to_string())));
    }

    fn cond(type_: &str, status: &str, reason: Option<&str>, message: Option<&str>) -> JobCondition {
        JobCondition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.map(Into::into),
            message: message.map(Into::into),
            ..Default::default()
        }
    }

    use k8s_openapi::api::batch::v1::JobCondition;

    #[rstest]
    #[case::none(vec![], None)]
    #[case::complete(vec![cond("Complete", "True", None, None)], None)]
    #[case::suspended(vec![cond("Suspended", "True", Some("JobSuspended"), None)], None)]
    #[case::failed_false(vec![cond("Failed", "False", Some("X"), None)], None)]
    #[case::deadline(
        vec![cond("Failed", "True", Some("DeadlineExceeded"), Some("Job was active longer than specified deadline"))],
        Some("DeadlineExceeded: Job was active longer than specified deadline")
    )]
    #[case::failure_target_first(
        vec![cond("FailureTarget", "True", Some("BackoffLimitExceeded"), Some("Job has reached the specified backoff limit"))],
        Some("BackoffLimitExceeded: Job has reached the specified backoff limit")
    )]
    #[case::failed_wins_over_failure_target(
        vec![cond("FailureTarget", "True", Some("A"), None), cond("Failed", "True", Some("B"), None)],
        Some("B")
    )]
    #[case::bare(vec![cond("Failed", "True", None, Some(" "))], Some("condition Failed"))]
    fn job_failure_reads_the_conditions(#[case] conditions: Vec<JobCondition>, #[case] want: Option<&str>) {
        let st = JobStatus {
            conditions: Some(conditions),
            ..Default::default()
        };
        assert_eq!(job_failure(&st).as_deref(), want);
    }

    fn event(reason: &str, message: &str, last: Option<&str>) -> Event {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        Event {
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_timestamp: last.map(|t| Time(t.parse().unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn the_newest_failed_create_event_says_why() {
        let events = [
            event("FailedCreate", "old: quota", Some("2025-01-01T00:00:02Z")),
            event("SuccessfulCreate", "Created pod: x", Some("2025-01-01T00:00:09Z")),
            event("FailedCreate", "new: denied", Some("2025-01-01T00:00:05Z")),
            event("FailedCreate", "older", Some("2025-01-01T00:00:01Z")),
        ];
        assert_eq!(pod_creation_refusal(&events).as_deref(), Some("new: denied"));
        assert_eq!(pod_creation_refusal(&events[1..2]), None);
        // Without times, the last one listed.
        let untimed = [event("FailedCreate", "a", None), event("FailedCreate", "b", None)];
        assert_eq!(pod_creation_refusal(&untimed).as_deref(), Some("b"));
    }

    /// A node's playbook error names the playbook the user gave, line and column kept, in
    /// its report and stderr; the audit record stays as the node wrote it (its hash).
    #[test]
    fn node_errors_name_the_users_playbook() {
        let pod_path = node_playbook_path();
        let report = serde_json::json!({
            "playbook": pod_path,
            "error": {"kind": "playbook_error", "message": format!("{pod_path}:12:5: Variable not found: x")},
        });
        let audit = format!("{{\"playbook\":{{\"path\":\"{pod_path}\"}}}}");
        let log = format!(
            "--- snat:report ---\n{report}\n--- snat:audit ---\n{audit}\n--- snat:stderr ---\nsnat-run: {pod_path}:12:5: Variable not found: x\n--- snat:exit 2 ---\n"
        );
        let mut out = parse_node_output(&log);
        let sha = out.audit_sha256.clone();
        map_playbook_path(&mut out, "examples/census.rhai");
        let r = out.report.as_ref().unwrap();
        assert_eq!(r["playbook"], "examples/census.rhai");
        assert_eq!(
            r["error"]["message"],
            "examples/census.rhai:12:5: Variable not found: x"
        );
        assert_eq!(out.stderr, "snat-run: examples/census.rhai:12:5: Variable not found: x");
        assert_eq!(
            (out.audit_text.as_deref(), out.audit_sha256.clone()),
            (Some(audit.as_str()), sha)
        );
        assert_eq!(
            node_failure(&out).as_deref(),
            Some("snat-run exited 2 on the node: examples/census.rhai:12:5: Variable not found: x")
        );
    }

    #[rstest]
    #[case::clear("--- snat:exit 0 ---\n", None)]
    #[case::pressure("--- snat:exit 3 ---\n", None)]
    #[case::cut_short("--- snat:stderr ---\nx\n", None)]
    #[case::stderr_only(
        "--- snat:stderr ---\nfirst\nerror: no BTF\n\n--- snat:exit 1 ---\n",
        Some("snat-run exited 1 on the node: error: no BTF")
    )]
    #[case::silent("--- snat:exit 1 ---\n", Some("snat-run exited 1 on the node (its stderr is empty)"))]
    fn node_failure_says_how_snat_run_failed(#[case] log: &str, #[case] want: Option<&str>) {
        assert_eq!(node_failure(&parse_node_output(log)).as_deref(), want);
    }

    #[test]
    fn node_output_keeps_stderr() {
        let o = parse_node_output("--- snat:stderr ---\nerror: no BTF\n--- snat:exit 1 ---\n");
        assert_eq!(o.stderr, "error: no BTF");
        assert_eq!(o.exit_code, Some(1));
    }
}
