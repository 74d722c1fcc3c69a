//! `snat-run --on-node NODE` / `--all-nodes`: run the playbook on cluster nodes as
//! Kubernetes Jobs (snat_core::k8s::fleet) instead of locally, as one stage, `fleet::run`,
//! of an ordinary run. So the run keeps everything a local run has: the audit directory is
//! checked first, SIGINT/SIGTERM set the cancel flag (which deletes the Jobs still
//! running), and exactly one local audit record is written, its stage log holding the fleet
//! call. The fleet record and each node's audit record and report go to
//! `<audit-dir>/fleet/<run id>/` (a subdirectory, so that `audit verify` on the audit
//! directory only sees the chain). The merged report is marked as a fleet report by its
//! `fleet` field (`fleet_summary`: the run, its record and its nodes), and each of its
//! findings names its node (`node.name`). It has one row per node; the verdict is
//! "SNAT pressure found" if any node found it (exit 3), else the run fails (exit 1) if any
//! node failed, else "clear" (exit 0). A node the run was stopped before it finished
//! (Ctrl-C, SIGTERM) is "interrupted", never "failed", in the summary and the Nodes table;
//! the run then ends interrupted (130/143) with no "clear" verdict. The `--on-node` names are checked first (`get
//! nodes`): a name the cluster does not have is a command-line mistake, exit 2, and no Job
//! is created at all; so is a Windows or virtual node, which the Linux node Job cannot run
//! on. `--all-nodes` runs on the Linux nodes (selected by the API server) and names the
//! nodes it skips on stderr and in the report and fleet record; a NotReady node fails at
//! once, without a Job.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rhai::{Dynamic, EvalAltResult};
use serde_json::{Value, json};
use snat_core::audit::Verdict;
use snat_core::k8s::Kube;
use snat_core::k8s::fleet::{self, FleetEvent, FleetResult, FleetSpec, NodeOutcome};

use crate::ctx::{Ctx, StageError};
use crate::modules::did_you_mean;
use crate::report::{Section, SectionBody};

/// Where and how to run the playbook on nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetOptions {
    /// The nodes named with `--on-node` (ignored with `all_nodes`).
    pub nodes: Vec<String>,
    /// Every Linux node of the cluster that can run the Job (`--all-nodes`; see
    /// `fleet::select_nodes`).
    pub all_nodes: bool,
    /// The snat image the Jobs run.
    pub image: String,
    /// At most this many Jobs at a time.
    pub concurrency: usize,
    /// Namespace of the Jobs.
    pub namespace: String,
    /// Arguments added to each node's `snat-run` (`--param`, `--dry-run`; never `--allow`:
    /// the Jobs have no credentials to act with; never a secret value: anyone who can read
    /// the Jobs sees them).
    pub extra_args: Vec<String>,
    /// The secret parameters (`snat_core::audit::is_secret_param`), given to the nodes in a
    /// Secret their pods mount (see `FleetSpec::secret_params`).
    pub secret_params: fleet::SecretParams,
}

/// How one node ended, as the merged report counts it: each node is in exactly one of
/// these. A node stopped by Ctrl-C/SIGTERM (or a cancelled run) is interrupted, never
/// failed: nothing went wrong on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeState {
    /// It found SNAT pressure (exit 3 or verdict "pressure_found").
    Pressure,
    /// It ran and found nothing (exit 0).
    Clear,
    /// Its Job failed, or snat-run failed on it (another exit code).
    Failed,
    /// The run was stopped before this node finished; its Job was deleted.
    Interrupted,
}

impl NodeState {
    fn of(r: &fleet::FleetNodeEntry) -> NodeState {
        let pressure = r.exit_code == Some(3) || r.verdict.as_ref().and_then(|v| v.as_str()) == Some("pressure_found");
        match r.outcome {
            NodeOutcome::Cancelled => NodeState::Interrupted,
            _ if pressure => NodeState::Pressure,
            NodeOutcome::Completed if r.exit_code == Some(0) => NodeState::Clear,
            _ => NodeState::Failed,
        }
    }

    /// Its name in the Nodes table's outcome column and in the summary.
    fn word(self) -> &'static str {
        match self {
            NodeState::Pressure => "found SNAT pressure",
            NodeState::Clear => "clear",
            NodeState::Failed => "failed",
            NodeState::Interrupted => "interrupted",
        }
    }
}

/// The Nodes table's outcome cell: the Job's outcome, with "interrupted" for a node the run
/// was stopped before it finished (the fleet record says `cancelled`).
fn outcome_cell(r: &fleet::FleetNodeEntry) -> Value {
    match r.outcome {
        NodeOutcome::Cancelled => json!(NodeState::Interrupted.word()),
        o => serde_json::to_value(o).unwrap_or(Value::Null),
    }
}

/// The merged report's summary: how many nodes ended each way, e.g. `3 node(s): 2 clear, 1
/// interrupted` (ways no node ended are left out).
fn summary(states: &[NodeState]) -> String {
    let counts: Vec<String> = [
        NodeState::Pressure,
        NodeState::Clear,
        NodeState::Failed,
        NodeState::Interrupted,
    ]
    .into_iter()
    .filter_map(|s| {
        let n = states.iter().filter(|x| **x == s).count();
        (n > 0).then(|| format!("{n} {}", s.word()))
    })
    .collect();
    format!("{} node(s): {}", states.len(), counts.join(", "))
}

/// The merged report's verdict: pressure if any node found it; clear only when every node
/// ran and found nothing; else none (a failed or interrupted node was not checked).
fn verdict(states: &[NodeState]) -> Option<Verdict> {
    if states.contains(&NodeState::Pressure) {
        Some(Verdict::PressureFound)
    } else if states.iter().all(|s| *s == NodeState::Clear) {
        Some(Verdict::Clear)
    } else {
        None
    }
}

fn top_finding(res: &FleetResult, i: usize) -> Value {
    res.runs
        .get(i)
        .and_then(|r| r.output.as_ref()?.report.as_ref()?.get("findings")?.get(0).cloned())
        .map(|f| f.get("summary").cloned().unwrap_or(f))
        .unwrap_or(Value::Null)
}

/// The report's `fleet` object for the fleet record `record`, written at `path`: what marks
/// a report (or, read back by `report::load`, an audit record) as a fleet run's, and which
/// nodes it covered (see the `fleet` field in [`crate::report`]).
pub(crate) fn fleet_summary(record: &fleet::FleetRecord, path: &Path) -> Value {
    let nodes: Vec<Value> = record
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node": n.node,
                "hostname": n.hostname,
                "outcome": n.outcome,
                "exit_code": n.exit_code,
                "verdict": n.verdict,
            })
        })
        .collect();
    json!({
        "run_id": record.run_id,
        "record": path.display().to_string(),
        "nodes": nodes,
        "skipped": record.skipped,
    })
}

/// Fill the run's report from a fleet result; returns (pressure nodes, failed nodes).
/// Interrupted nodes are neither.
fn merge_report(ctx: &Ctx, playbook: &Path, res: &FleetResult, record: &Path) -> (usize, Vec<String>) {
    let mut rows = Vec::new();
    let states: Vec<NodeState> = res.record.nodes.iter().map(NodeState::of).collect();
    let pressure = states.iter().filter(|s| **s == NodeState::Pressure).count();
    let failed: Vec<String> = res
        .record
        .nodes
        .iter()
        .zip(&states)
        .filter(|(_, s)| **s == NodeState::Failed)
        .map(|(n, _)| n.node.clone())
        .collect();
    for (i, n) in res.record.nodes.iter().enumerate() {
        rows.push(vec![
            json!(n.node),
            outcome_cell(n),
            n.exit_code.map_or(Value::Null, |c| json!(c)),
            n.verdict.clone().unwrap_or(Value::Null),
            top_finding(res, i),
            n.error.clone().map_or(Value::Null, Value::String),
        ]);
    }
    // Every node's findings, each naming its node, so that `-o json`, the audit record and
    // verify-fix see what the nodes found, not only a table of them.
    let mut findings = Vec::new();
    for (i, n) in res.record.nodes.iter().enumerate() {
        let Some(list) = res
            .runs
            .get(i)
            .and_then(|r| r.output.as_ref()?.report.as_ref()?.get("findings")?.as_array().cloned())
        else {
            continue;
        };
        for f in list {
            match serde_json::from_value::<snat_core::model::Finding>(f) {
                Ok(mut f) => {
                    let node = f.node.get_or_insert(snat_core::model::NodeRef { name: None, ip: None });
                    if node.name.is_none() {
                        node.name = Some(n.node.clone());
                    }
                    findings.push(f);
                }
                Err(e) => tracing::warn!(node = %n.node, "a finding in the node's report cannot be read: {e}"),
            }
        }
    }
    let total = res.record.nodes.len();
    let mut rep = ctx.report();
    rep.findings.extend(findings);
    rep.title = Some(format!("{} on {total} node(s)", playbook.display()));
    rep.verdict = verdict(&states);
    rep.summary = Some(summary(&states));
    rep.fleet = Some(fleet_summary(&res.record, record));
    rep.sections.push(Section {
        title: "Nodes".into(),
        body: SectionBody::Table {
            columns: ["node", "outcome", "exit", "verdict", "top finding", "error"]
                .map(String::from)
                .to_vec(),
            rows,
        },
    });
    rep.sections.push(Section {
        title: "Fleet record".into(),
        body: SectionBody::Text {
            text: format!(
                "{} (each node's audit record and report are next to it)",
                record.display()
            ),
        },
    });
    (pressure, failed)
}

/// The progress line for a fleet event (`node NODE: job JOB running`, ..., `2/5 nodes done`).
fn progress_text(ev: &FleetEvent<'_>) -> String {
    match ev {
        FleetEvent::Created { node, job } => format!("node {node}: job {job} created"),
        FleetEvent::Running {
            node,
            job,
            between_polls: false,
        } => format!("node {node}: job {job} running"),
        FleetEvent::Running {
            node,
            job,
            between_polls: true,
        } => format!("node {node}: job {job} ran (it started and finished between two polls)"),
        FleetEvent::Finished { run, done, total } => {
            let how = match run.outcome {
                NodeOutcome::Completed => match run.output.as_ref().and_then(|o| o.exit_code) {
                    Some(0) => "done: clear".to_string(),
                    Some(3) => "done: SNAT pressure found".to_string(),
                    Some(c) => match &run.error {
                        Some(e) => format!("done: {e}"),
                        None => format!("done: snat-run exited {c} on the node (see its report)"),
                    },
                    None => "done".to_string(),
                },
                NodeOutcome::Failed => format!("failed: {}", run.error.as_deref().unwrap_or("the Job failed")),
                NodeOutcome::Cancelled => "interrupted".to_string(),
            };
            format!("node {}: job {} {how}; {done}/{total} nodes done", run.node, run.job)
        }
    }
}

/// How many known nodes an unknown `--on-node` message lists.
const KNOWN_SHOWN: usize = 5;

/// What is wrong with `--on-node` names the cluster does not have: each with the closest
/// known name, if one is close, and a few of the nodes it does have (`known`: `None` when
/// they could not be listed).
fn unknown_nodes_message(missing: &[String], known: Option<&[String]>) -> String {
    let named: Vec<String> = missing
        .iter()
        .map(|m| {
            let hint = known.map_or_else(String::new, |k| did_you_mean(m, k.iter().map(String::as_str)));
            format!("{m}{hint}")
        })
        .collect();
    let mut msg = match named.as_slice() {
        [one] => format!("--on-node {one}: no such node in the cluster"),
        many => format!("--on-node: no such nodes in the cluster: {}", many.join(", ")),
    };
    if let Some(k) = known {
        msg.push_str("; ");
        msg.push_str(&known_nodes(k));
    }
    msg.push_str("; no Job was created");
    msg
}

/// A few of the cluster's nodes, for a message about a node name it does not have: `its
/// nodes: a, b, c and 7 more (kubectl get nodes)`, or `it has no nodes`.
pub(crate) fn known_nodes(known: &[String]) -> String {
    if known.is_empty() {
        return "it has no nodes".into();
    }
    let mut k = known.to_vec();
    k.sort();
    let more = k.len().saturating_sub(KNOWN_SHOWN);
    k.truncate(KNOWN_SHOWN);
    let mut text = format!("its nodes: {}", k.join(", "));
    if more > 0 {
        text.push_str(&format!(" and {more} more (kubectl get nodes)"));
    }
    text
}

/// What is wrong with `--on-node` nodes the node Job cannot run on (Windows, virtual).
fn unfit_nodes_message(unfit: &[fleet::UnfitNode]) -> String {
    let named: Vec<String> = unfit.iter().map(ToString::to_string).collect();
    format!(
        "--on-node {}: snat's node Job is a privileged Linux pod and cannot run there; no Job was created",
        named.join("; ")
    )
}

/// Refuse `--on-node` names that are no node of the cluster, or a node the Job cannot run on
/// (Windows, virtual), before any Job is created: such a Job stays Pending or is refused
/// until its deadline. Either is a command-line mistake (exit 2) and stops the whole run, so
/// that the report never covers fewer nodes than were asked for. A NotReady node is kept,
/// to fail at once without a Job. Without the RBAC to `get nodes`, say so and go on.
fn check_node_names(ctx: &Ctx, kube: &Kube, names: &[String]) -> Result<fleet::FleetTargets, StageError> {
    match ctx.block_on(fleet::check_nodes(kube, names))? {
        Ok(c) if !c.missing.is_empty() => {
            let known = ctx.block_on(fleet::all_node_names(kube)).ok().and_then(Result::ok);
            Err(StageError::Usage(unknown_nodes_message(&c.missing, known.as_deref())))
        }
        Ok(c) => {
            let (not_ready, unfit): (Vec<_>, Vec<_>) =
                c.unfit.into_iter().partition(|u| u.unfit == fleet::Unfit::NotReady);
            if !unfit.is_empty() {
                return Err(StageError::Usage(unfit_nodes_message(&unfit)));
            }
            Ok(fleet::FleetTargets {
                nodes: names.to_vec(),
                not_ready,
                skipped: Vec::new(),
            })
        }
        Err(e @ snat_core::Error::KubeForbidden { .. }) => {
            eprintln!(
                "{}: warning: cannot check that the --on-node names are nodes ({e}); creating the Jobs anyway",
                crate::program_name()
            );
            Ok(fleet::FleetTargets::of(names))
        }
        Err(e) => Err(e.into()),
    }
}

/// Say which nodes the run leaves out and which fail without a Job, and why. `quiet`
/// (`--quiet`) leaves out the skipped nodes (the report lists them too).
fn say_left_out(targets: &fleet::FleetTargets, quiet: bool) {
    if !targets.skipped.is_empty() && !quiet {
        let list: Vec<String> = targets.skipped.iter().map(ToString::to_string).collect();
        eprintln!(
            "snat-run: --all-nodes skips {} node(s) snat's Linux node Job cannot run on: {}",
            list.len(),
            list.join("; ")
        );
    }
    for u in &targets.not_ready {
        eprintln!("snat-run: warning: node {u}: it fails without a Job (a pod there would wait until the deadline)");
    }
}

/// Run `script` on the nodes `opts` names, as the stage `fleet::run`, writing the fleet
/// files under `<audit_dir>/fleet/<run_id>/` and the merged report into `ctx`'s report.
pub fn run(
    ctx: &Ctx,
    opts: &FleetOptions,
    playbook: &Path,
    script: &str,
    run_id: &str,
    audit_dir: &Path,
) -> Result<Dynamic, Box<EvalAltResult>> {
    let args = json!({
        "nodes": if opts.all_nodes { json!("all") } else { json!(opts.nodes) },
        "image": opts.image,
        "namespace": opts.namespace,
        "concurrency": opts.concurrency,
        "extra_args": opts.extra_args,
        // Their keys only: the values go in the run's params Secret. (A key named
        // secret_params would itself be redacted in the record.)
        "hidden_params": opts.secret_params.0.keys().collect::<Vec<_>>(),
    });
    ctx.stage("fleet::run", args, || {
        let kube = ctx.kube()?;
        let targets = if opts.all_nodes {
            ctx.block_on(fleet::select_nodes(&kube))??
        } else {
            check_node_names(ctx, &kube, &opts.nodes)?
        };
        // With no node left, the skipped ones are what the error points to.
        say_left_out(&targets, ctx.options().quiet && !targets.nodes.is_empty());
        let nodes = targets.nodes.clone();
        if nodes.is_empty() {
            return Err(StageError::failed(snat_core::Error::Fleet(format!(
                "the cluster has no Linux nodes to run on{}",
                if targets.skipped.is_empty() {
                    ""
                } else {
                    " (see the skipped nodes above)"
                }
            ))));
        }
        let mut spec = FleetSpec::new(opts.image.clone(), playbook.display().to_string(), script);
        spec.namespace = opts.namespace.clone();
        spec.concurrency = opts.concurrency;
        spec.extra_args = opts.extra_args.clone();
        spec.secret_params = opts.secret_params.clone();
        spec.run_id = run_id.to_string();
        // A run lasts as long as its slowest node (up to the Jobs' deadline): say what happens.
        let progress = ctx.options().progress;
        let say = move |line: String| {
            if progress {
                eprintln!("fleet: {line}");
            } else {
                tracing::info!("{line}");
            }
        };
        say(format!(
            "{} on {} node(s), at most {} Job(s) at a time, in namespace {}",
            playbook.display(),
            nodes.len(),
            opts.concurrency,
            opts.namespace
        ));
        let on_event: fleet::OnFleetEvent = Arc::new(move |ev: &FleetEvent<'_>| say(progress_text(ev)));
        let res = ctx.block_on(fleet::run_fleet_on(&kube, &spec, &targets, ctx.cancel_flag(), on_event))??;
        let dir: PathBuf = fleet::fleet_dir(audit_dir, run_id);
        let record = fleet::write_fleet(&dir, &res)?;
        let (pressure, failed) = merge_report(ctx, playbook, &res, &record);
        if !res.record.skipped.is_empty() {
            let rows = res.record.skipped.iter().map(|u| {
                let why = serde_json::to_value(u.unfit).unwrap_or(Value::Null);
                vec![json!(u.node), why, json!(u.detail)]
            });
            ctx.report().sections.push(Section {
                title: "Skipped nodes".into(),
                body: SectionBody::Table {
                    columns: ["node", "why", "detail"].map(String::from).to_vec(),
                    rows: rows.collect(),
                },
            });
        }
        if res.record.cancelled {
            return Err(StageError::Interrupted);
        }
        if pressure == 0 && !failed.is_empty() {
            return Err(StageError::failed(snat_core::Error::Fleet(format!(
                "{} of {} node(s) failed: {} (see {})",
                failed.len(),
                nodes.len(),
                failed.join(", "),
                record.display()
            ))));
        }
        Ok((Dynamic::UNIT, Some(nodes.len() as u64)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn finished(outcome: NodeOutcome, exit: Option<i32>, error: Option<&str>) -> fleet::NodeRun {
        fleet::NodeRun {
            node: "aks-pool-vmss000003".into(),
            job: "snat-0123abcd-1a2b3c4d5e".into(),
            pod: None,
            outcome,
            output: exit.map(|c| fleet::parse_node_output(&format!("--- snat:exit {c} ---\n"))),
            error: error.map(String::from),
            duration_ms: 1.0,
        }
    }

    #[rstest]
    #[case::clear(finished(NodeOutcome::Completed, Some(0), None), "done: clear; 2/5 nodes done")]
    #[case::pressure(
        finished(NodeOutcome::Completed, Some(3), None),
        "done: SNAT pressure found; 2/5 nodes done"
    )]
    #[case::failed_on_the_node(
        finished(NodeOutcome::Completed, Some(1), None),
        "done: snat-run exited 1 on the node (see its report); 2/5 nodes done"
    )]
    #[case::failed_on_the_node_saying_why(
        finished(
            NodeOutcome::Completed,
            Some(2),
            Some("snat-run exited 2 on the node: census.rhai:12:5: Variable not found: x")
        ),
        "done: snat-run exited 2 on the node: census.rhai:12:5: Variable not found: x; 2/5 nodes done"
    )]
    #[case::job_failed(
        finished(NodeOutcome::Failed, None, Some("Job snat-x cannot start: ImagePullBackOff")),
        "failed: Job snat-x cannot start: ImagePullBackOff; 2/5 nodes done"
    )]
    #[case::interrupted(finished(NodeOutcome::Cancelled, None, None), "interrupted; 2/5 nodes done")]
    fn a_finished_node_says_how_it_ended(#[case] run: fleet::NodeRun, #[case] want: &str) {
        let line = progress_text(&FleetEvent::Finished {
            run: &run,
            done: 2,
            total: 5,
        });
        assert_eq!(
            line,
            format!("node aks-pool-vmss000003: job snat-0123abcd-1a2b3c4d5e {want}")
        );
    }

    fn entry(outcome: NodeOutcome, exit: Option<i32>, verdict: Option<&str>) -> fleet::FleetNodeEntry {
        fleet::FleetNodeEntry {
            node: "n".into(),
            job: "snat-0123abcd-1a2b3c4d5e".into(),
            outcome,
            exit_code: exit,
            hostname: None,
            verdict: verdict.map(|v| json!(v)),
            audit_run_id: None,
            audit_sha256: None,
            audit_file: None,
            report_file: None,
            error: None,
        }
    }

    #[rstest]
    #[case::clear(entry(NodeOutcome::Completed, Some(0), Some("clear")), NodeState::Clear, "completed")]
    #[case::pressure(
        entry(NodeOutcome::Completed, Some(3), Some("pressure_found")),
        NodeState::Pressure,
        "completed"
    )]
    #[case::pressure_in_a_failed_run(
        entry(NodeOutcome::Completed, Some(1), Some("pressure_found")),
        NodeState::Pressure,
        "completed"
    )]
    #[case::failed_on_the_node(entry(NodeOutcome::Completed, Some(1), None), NodeState::Failed, "completed")]
    #[case::job_failed(entry(NodeOutcome::Failed, None, None), NodeState::Failed, "failed")]
    #[case::interrupted(entry(NodeOutcome::Cancelled, None, None), NodeState::Interrupted, "interrupted")]
    fn each_node_is_counted_one_way(
        #[case] e: fleet::FleetNodeEntry,
        #[case] state: NodeState,
        #[case] table_outcome: &str,
    ) {
        assert_eq!(NodeState::of(&e), state);
        assert_eq!(outcome_cell(&e), json!(table_outcome));
    }

    use NodeState::{Clear, Failed, Interrupted, Pressure};

    #[rstest]
    #[case::all_clear(&[Clear, Clear], "2 node(s): 2 clear", Some(Verdict::Clear))]
    #[case::interrupted_is_not_failed(&[Clear, Interrupted, Clear], "3 node(s): 2 clear, 1 interrupted", None)]
    #[case::every_way(
        &[Interrupted, Failed, Clear, Pressure],
        "4 node(s): 1 found SNAT pressure, 1 clear, 1 failed, 1 interrupted",
        Some(Verdict::PressureFound)
    )]
    #[case::failed(&[Failed, Clear], "2 node(s): 1 clear, 1 failed", None)]
    #[case::all_interrupted(&[Interrupted, Interrupted], "2 node(s): 2 interrupted", None)]
    fn the_summary_counts_interrupted_nodes_apart(
        #[case] states: &[NodeState],
        #[case] want: &str,
        #[case] want_verdict: Option<Verdict>,
    ) {
        assert_eq!(summary(states), want);
        assert_eq!(verdict(states), want_verdict);
    }

    #[test]
    fn jobs_are_named_as_they_start() {
        let (node, job) = ("node-a", "snat-0123abcd-1a2b3c4d5e");
        assert_eq!(
            progress_text(&FleetEvent::Created { node, job }),
            "node node-a: job snat-0123abcd-1a2b3c4d5e created"
        );
        assert_eq!(
            progress_text(&FleetEvent::Running {
                node,
                job,
                between_polls: false
            }),
            "node node-a: job snat-0123abcd-1a2b3c4d5e running"
        );
        assert_eq!(
            progress_text(&FleetEvent::Running {
                node,
                job,
                between_polls: true
            }),
            "node node-a: job snat-0123abcd-1a2b3c4d5e ran (it started and finished between two polls)"
        );
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[rstest]
    #[case::typo(
        &["aks-pool-vmss000003"],
        Some(&["aks-pool-vmss000001", "aks-pool-vmss000002", "aks-pool-vmss00003"][..]),
        "--on-node aks-pool-vmss000003 (did you mean `aks-pool-vmss00003`?): no such node in the cluster; its nodes: aks-pool-vmss000001, aks-pool-vmss000002, aks-pool-vmss00003; no Job was created"
    )]
    #[case::nothing_close(
        &["nosuchnode"],
        Some(&["node-b", "node-a"][..]),
        "--on-node nosuchnode: no such node in the cluster; its nodes: node-a, node-b; no Job was created"
    )]
    #[case::two_of_many(
        &["x", "nod-3"],
        Some(&["node-1", "node-2", "node-3", "node-4", "node-5", "node-6", "node-7"][..]),
        "--on-node: no such nodes in the cluster: x, nod-3 (did you mean `node-3`?); its nodes: node-1, node-2, node-3, node-4, node-5 and 2 more (kubectl get nodes); no Job was created"
    )]
    #[case::not_listed(&["n"], None, "--on-node n: no such node in the cluster; no Job was created")]
    #[case::no_nodes(
        &["n"],
        Some(&[][..]),
        "--on-node n: no such node in the cluster; it has no nodes; no Job was created"
    )]
    fn unknown_nodes_are_named_with_the_known_ones(
        #[case] missing: &[&str],
        #[case] known: Option<&[&str]>,
        #[case] want: &str,
    ) {
        let known = known.map(names);
        assert_eq!(unknown_nodes_message(&names(missing), known.as_deref()), want);
    }
}
