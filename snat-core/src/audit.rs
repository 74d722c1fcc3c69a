//! JSON audit records: the one file every `snat-run` invocation leaves behind.
//!
//! A record says who ran which playbook (by path and SHA-256), with which parameters, on
//! which host and kernel, with which privileges; every stage the playbook called (name,
//! arguments, duration, item count, outcome); every remediation action planned or applied;
//! and how the run ended (verdict and exit code). Records are chained: each carries the
//! SHA-256 of the previous record file in the same directory, so a removed or edited record
//! is detected by [`verify`].
//!
//! (Writer, chain verification and schema: in progress.)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the record format; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// One run of `snat-run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Always [`SCHEMA_VERSION`] for records this version writes.
    pub schema_version: u32,
    /// Unique id of the run (UUID v4).
    pub run_id: String,
    /// The tool that wrote the record.
    pub tool: ToolInfo,
    /// The playbook that ran.
    pub playbook: PlaybookInfo,
    /// Parameters as given with `--param` (values of keys that look secret are redacted).
    pub params: BTreeMap<String, String>,
    /// Start of the run, RFC 3339 UTC with nanoseconds.
    pub started_at: String,
    /// End of the run, RFC 3339 UTC with nanoseconds.
    pub ended_at: String,
    /// Host the run happened on.
    pub host: HostInfo,
    /// One entry per stage call, in call order.
    pub stages: Vec<StageCall>,
    /// Remediation actions, planned and applied.
    pub actions: Vec<ActionRecord>,
    /// How the run ended.
    pub outcome: Outcome,
    /// The playbook's verdict, if it gave one.
    pub verdict: Option<Verdict>,
    /// The process's exit code.
    pub exit_code: i32,
    /// SHA-256 (hex) of the previous record file in the directory; `None` for the first.
    pub prev_sha256: Option<String>,
}

/// The tool that wrote a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolInfo {
    /// Binary name, e.g. `snat-run`.
    pub name: String,
    /// Its version.
    pub version: String,
}

/// The playbook of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaybookInfo {
    /// Path as given on the command line.
    pub path: String,
    /// SHA-256 (hex) of the playbook's bytes; `None` when it could not be read.
    pub sha256: Option<String>,
}

/// The host of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Host name.
    pub hostname: String,
    /// Kernel release (`uname -r`).
    pub kernel_release: String,
    /// Real user id.
    pub uid: u32,
    /// Effective user id.
    pub euid: u32,
    /// Effective capabilities by name, e.g. `CAP_BPF` (`/proc/self/status` CapEff).
    pub capabilities: Vec<String>,
}

/// One call of a stage function by the playbook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageCall {
    /// Stage name, `namespace::function`, e.g. `tcptracer::read`.
    pub name: String,
    /// Arguments as JSON (secrets never appear here).
    pub args: serde_json::Value,
    /// When the call started, RFC 3339 UTC.
    pub started_at: String,
    /// How long it took, in milliseconds.
    pub duration_ms: f64,
    /// How many items it produced (events, sockets, pods...), where that means something.
    pub items: Option<u64>,
    /// Whether it succeeded.
    pub outcome: StageOutcome,
    /// The error message, for failed calls.
    pub error: Option<String>,
}

/// Result of a stage call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageOutcome {
    /// It returned normally.
    Ok,
    /// It failed; see `error`.
    Failed,
    /// The run was interrupted while it ran.
    Interrupted,
}

/// A remediation action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// Action name, e.g. `event`, `annotate`, `label`, `restart`, `cordon`.
    pub action: String,
    /// What it acts on, e.g. `pod/default/api-7d9f`.
    pub target: String,
    /// The exact API request (method, path, body).
    pub request: serde_json::Value,
    /// What happened to it.
    pub state: ActionState,
    /// The API's answer or the reason it was not applied.
    pub result: Option<String>,
}

/// What happened to a remediation action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    /// Planned only (`--dry-run`, or not allowed by `--allow`).
    Planned,
    /// Applied, and the API accepted it.
    Applied,
    /// Not needed: the target already had it (re-runs are idempotent).
    Unchanged,
    /// The API refused it.
    Failed,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The kind of ending.
    pub kind: OutcomeKind,
    /// Message for anything but `completed`.
    pub message: Option<String>,
}

/// The kind of ending of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// The playbook ran to its end.
    Completed,
    /// The playbook or its parameters are wrong (exit 2).
    PlaybookError,
    /// A stage failed at run time (exit 1).
    StageFailed,
    /// SIGINT or SIGTERM stopped the run.
    Interrupted,
}

/// A playbook's conclusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// SNAT pressure found (exit 3).
    PressureFound,
    /// Nothing found (exit 0).
    Clear,
}

/// The current time, RFC 3339 in UTC with nanoseconds.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}
