//! JSON audit records: the one file every `snat-run` invocation leaves behind.
//!
//! A record says who ran which playbook (by path and SHA-256), with which parameters, on
//! which host and kernel, with which privileges; every stage the playbook called (name,
//! arguments, duration, item count, outcome); every remediation action planned or applied;
//! and how the run ended (verdict and exit code). Records are chained: each carries the
//! SHA-256 of the previous record file in the same directory, so a removed or edited record
//! is detected by [`verify`].
//!
//! The runner opens the directory with [`AuditDir::open`] *before* it does anything (so a
//! directory it cannot write stops the run at once, with a message saying which directory,
//! why, and what to do; the refusal itself is recorded in the directory
//! [`AuditDir::open_fallback`] gives), fills an [`AuditRecord`] as the run goes, and hands
//! it to [`AuditDir::write`] once, whatever the ending (completed, playbook error, stage
//! failure, SIGINT, SIGTERM). The JSON Schema of a record (draft 2020-12) is
//! `schemas/audit-record.schema.json` at the root of the repository.
//!
//! ```
//! use snat_core::audit::{self, AuditDir, AuditRecord, HostInfo, Outcome, OutcomeKind};
//!
//! # fn main() -> Result<(), snat_core::Error> {
//! # let tmp = tempfile::tempdir().unwrap();
//! # let dir_path = tmp.path().join("audit");
//! // At start-up, before anything else: fails with a clear message if unusable.
//! let dir = AuditDir::open(dir_path)?; // the runner passes --audit-dir or audit::default_dir()
//! let started_at = audit::now_rfc3339();
//! // ... the run ...
//! let mut record = AuditRecord {
//!     schema_version: audit::SCHEMA_VERSION,
//!     run_id: "3f2b8c1e-5d4a-4c2b-9e1f-0a1b2c3d4e5f".into(),
//!     tool: audit::ToolInfo { name: "snat-run".into(), version: "0.1.0".into() },
//!     playbook: audit::PlaybookInfo { path: "triage.rhai".into(), sha256: None },
//!     params: audit::redact_params(&Default::default()),
//!     started_at,
//!     ended_at: audit::now_rfc3339(),
//!     host: HostInfo::current(),
//!     stages: vec![],
//!     actions: vec![],
//!     outcome: Outcome { kind: OutcomeKind::Completed, message: None },
//!     verdict: None,
//!     exit_code: 0,
//!     prev_sha256: None, // set by write
//!     findings: vec![],  // the report's findings, as JSON objects
//!     findings_truncated: 0,
//!     // The raw --param values, so that the writer can find secrets copied into messages.
//!     secret_values: audit::SecretValues::from_params(&Default::default()),
//! };
//! let path = dir.write(&mut record)?;
//! assert!(path.ends_with(audit::record_file_name(&record)?));
//!
//! let report = audit::verify(dir.path())?;
//! assert_eq!((report.records, report.first_break), (1, None));
//! # Ok(())
//! # }
//! ```
//!
//! # The record format (schema version 2)
//!
//! A record is one JSON object, pretty-printed, ending with a newline. Every key below is
//! always present (in version 1 records, all but `findings` and `findings_truncated`); a value documented as "or `null`" is written as `null` when absent. Times
//! are RFC 3339 strings in UTC with nine fractional digits, e.g.
//! `"2026-11-21T05:59:05.123456789Z"` (see [`now_rfc3339`]). Hashes are SHA-256 as 64
//! lower-case hex digits.
//!
//! - `schema_version` (integer): `2` for records this version writes. Version 1 records
//!   (written before findings were recorded) are the same without `findings` and
//!   `findings_truncated`; they still verify and load (see [`SCHEMA_VERSION`]).
//! - `run_id` (string): the run's UUID, lower-case hyphenated, e.g.
//!   `"3f2b8c1e-5d4a-4c2b-9e1f-0a1b2c3d4e5f"`. Also the end of the file name.
//! - `tool` (object): the program that wrote the record.
//!   - `name` (string): e.g. `"snat-run"`.
//!   - `version` (string): its version, e.g. `"0.1.0"`.
//! - `playbook` (object): the playbook that ran.
//!   - `path` (string): as given on the command line.
//!   - `sha256` (hash or `null`): of the playbook file's bytes; `null` when it could not be
//!     read (the outcome then says why).
//! - `params` (object of string to string): the `--param KEY=VALUE` pairs, with the value of
//!   every key that looks secret replaced by `"<redacted>"` (see [`redact_params`] and
//!   "What never enters a record").
//! - `started_at`, `ended_at` (time): start and end of the run.
//! - `host` (object): where and as whom the run happened.
//!   - `hostname` (string): the host name (`uname -n`).
//!   - `kernel_release` (string): `uname -r`, e.g. `"6.18.0-1-amd64"`.
//!   - `uid`, `euid` (integer): real and effective user id.
//!   - `capabilities` (array of string): the effective capabilities of the process
//!     (`CapEff` in `/proc/self/status`) by name, in bit order, e.g.
//!     `["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_BPF"]`; a bit this version does not know is
//!     written `CAP_<bit>` (see [`decode_capabilities`]).
//! - `stages` (array of object): one entry per stage call, in call order.
//!   - `name` (string): `namespace::function`, e.g. `"tcptracer::read"`.
//!   - `args` (any JSON): the call's arguments; keys that look secret are redacted as in
//!     `params` (see [`redact_json`]).
//!   - `started_at` (time): when the call started.
//!   - `duration_ms` (number, at least 0): how long it took, in milliseconds.
//!   - `items` (integer or `null`): how many items it produced, where that means something.
//!   - `outcome` (string): `"ok"`, `"failed"` or `"interrupted"` (the run was stopped
//!     while the call ran; a call that had not returned when the record was written, a
//!     read blocked on a pipe say, has its duration until then).
//!   - `error` (string or `null`): the error message of a failed call, secrets redacted.
//! - `actions` (array of object): remediation actions, planned and applied.
//!   - `action` (string): e.g. `"event"`, `"annotate"`, `"label"`, `"restart"`, `"cordon"`.
//!   - `target` (string): e.g. `"pod/default/api-7d9f"`.
//!   - `request` (any JSON): the exact API request (method, path, body), as the runner
//!     gives it; it never holds headers, so no credential.
//!   - `state` (string): `"planned"`, `"applied"`, `"unchanged"` or `"failed"`.
//!   - `result` (string or `null`): the API's answer, or why it was not applied.
//!   - `cluster` (object or `null`, absent in older records): the cluster the request went
//!     to, or would have, when a client was connected: `server` (the API server's URL) and
//!     `context` (the kubeconfig context, `null` in a pod).
//! - `outcome` (object): how the run ended.
//!   - `kind` (string): `"completed"`, `"playbook_error"`, `"stage_failed"` or
//!     `"interrupted"`. A run refused because its audit directory cannot be written is
//!     `"stage_failed"` (exit 1), recorded in a fallback directory (see "The directory and
//!     the chain"), its message naming the directory and the error.
//!   - `message` (string or `null`): what went wrong, for anything but `"completed"`,
//!     secrets redacted.
//! - `verdict` (string or `null`): `"pressure_found"`, `"clear"`, or `null` when the
//!   playbook gave none.
//! - `exit_code` (integer): the exit code of `snat-run`.
//! - `prev_sha256` (hash or `null`): SHA-256 of the exact bytes of the previous record file
//!   in the directory; `null` for the first record.
//! - `findings` (array of object, since version 2): the findings of the run's report, in
//!   the order the playbook added them, each the same object as in the JSON report
//!   (`snat-run --output json`), see [`crate::model::Finding`]: `kind`, `severity`
//!   (`"info"`, `"warning"`, `"critical"`), `summary`, `node`, `pod`, `process`, `netns`,
//!   `destination` (or `null` each) and `evidence` (an object: the figures behind the
//!   summary, e.g. `public_established`, `failed_connects`, `failed_by_destination`). They
//!   go through [`redact_findings`]. At most [`MAX_FINDINGS`] findings and
//!   [`MAX_FINDINGS_BYTES`] bytes of compact JSON are kept: findings are kept in order
//!   until the next one would pass either bound, and the rest are dropped.
//! - `findings_truncated` (integer, since version 2): how many findings were dropped by
//!   that bound; `0` when `findings` is the whole list.
//!
//! A run that did not complete (`outcome.kind` other than `"completed"`) keeps the findings
//! it had made when it stopped; they are partial, and [`select`] never picks such a record
//! for a comparison.
//!
//! # What never enters a record
//!
//! No environment variable, no token, no kubeconfig (neither its content nor the
//! credentials it points to), no HTTP header. [`AuditDir::write`] applies every rule below
//! itself, so a caller that forgets cannot leak; the rule is deliberately wide: a redacted
//! harmless value costs little, a leaked token costs a lot.
//!
//! - **Secret keys and values.** Parameters and stage arguments go through
//!   [`redact_params`] / [`redact_json`]: a value is replaced by `"<redacted>"` when its
//!   key contains, in any case, one of `token`, `password`, `passwd`, `pwd`, `secret`,
//!   `key`, `credential`, `auth`, `cookie`, `session`, `cert`, `bearer`,
//!   `kubeconfig`, `sas`, `signature`, `connectionstring`, `connstr` (separators ignored),
//!   or has `pat`, `sig`, `otp`, `pin` or `pass` as a whole word (see [`is_secret_key`]);
//!   or when the value itself looks like a secret: a PEM
//!   block (`-----BEGIN`), a JSON Web Token (`eyJ...` with three dot-separated base64url
//!   parts), kubeconfig credential data (`client-key-data`, `client-certificate-data`,
//!   `token:`), an `Authorization`-style `Bearer ` or `Basic ` value, or a URL carrying a
//!   shared-access signature (`sig=`).
//! - **Secrets inside text.** Any other string of `params`, stage `args` and `findings`,
//!   every stage `error` and `outcome.message` keep their text, with the secrets inside
//!   them replaced by [`redact_text`]: a JSON Web Token anywhere (`note=eyJ…`), the value
//!   of a `NAME=VALUE` pair whose name is a secret key or `sig`, also in a URL's query
//!   string (`?sv=…&sig=<redacted>&se=…`), a PEM block, the one-word value of a
//!   `token: …` line, the word after `Bearer` or `Basic`. Whitespace and line breaks are
//!   kept.
//! - **Secret values wherever they were copied.** An error message may quote a parameter
//!   (``parameter `token`: "hunter22" is not an integer``), a stage error may name a secret
//!   path. The record carries the raw values of the secret parameters in
//!   `secret_values` ([`SecretValues::from_params`], filled by the runner; never written),
//!   and the writer replaces every occurrence of them, as given, trimmed, or escaped as
//!   `{:?}` and JSON write them, in `playbook.path`, `params`, stage `args` and `error`,
//!   the actions' `target`, `request` and `result`, `outcome.message` and every string of
//!   `findings`. Values shorter than [`MIN_SECRET_VALUE_CHARS`] (4) characters, and
//!   `true`, `false`, `yes`, `null`, `none`, are not looked for: replacing them
//!   everywhere would ruin the record (every `1` of every message), so such a value stays
//!   protected only where its key or its form gives it away.
//! - **Command lines.** Findings go through [`redact_findings`]: the rules above at any
//!   depth, and in a process's `cmdline` each argument that is a secret on its own,
//!   follows a secret-looking flag given without a value (`--password hunter2`) or the
//!   word `Bearer` or `Basic`, or is the value of a secret-looking flag (`--token=abc`,
//!   `password=abc`) is replaced by `<redacted>`, word by word (see [`redact_cmdline`]).
//!
//! What is left: a secret that the run was not given as a parameter and that has none of
//! the forms above (a password typed into a playbook's text, a secret that holds spaces
//! in free text) is not recognised. The host, tool, times and hashes of a record are not
//! searched for secret values.
//!
//! # The directory and the chain
//!
//! - The default directory is [`default_dir`]: `$SNAT_AUDIT_DIR` if set, else
//!   `/var/lib/snat/audit` for root, else `$XDG_STATE_HOME/snat/audit` or
//!   `$HOME/.local/state/snat/audit`. [`AuditDir::open`] creates it (and its parents)
//!   with mode 0700 if missing; an existing directory keeps its permissions. Record files
//!   are created with mode 0600.
//! - A run whose audit directory cannot be opened does not run, but its refusal is still
//!   recorded, in the directory [`AuditDir::open_fallback`] opens: [`default_dir`] when
//!   that is not the directory that failed, else [`private_temp_dir`]
//!   (`snat-audit-<euid>` in the system's temporary directory, created with mode 0700, and
//!   refused by [`AuditDir::open_private`] when it is a symbolic link, is owned by another
//!   user, or other users may write it). When neither opens, the run leaves no record.
//! - A record file is named `<time>-<run_id>.json`, where `<time>` is
//!   `YYYYMMDDTHHMMSS.nnnnnnnnnZ` (UTC), so that the names sort by time; records that
//!   would sort equal are ordered by the full name (byte order). `<time>` is the record's
//!   `started_at`, except when a record already in the directory sorts at or after it (a
//!   concurrent run that started later but finished first, or a clock stepped back): then
//!   it is the newest record's time plus one nanosecond, so that name order is always
//!   chain order. `started_at` inside the record is always the true start.
//! - Writing takes an exclusive `flock` on `.lock` in the directory, so concurrent runs
//!   (processes or threads) chain one after the other; hashes the newest record file;
//!   writes the new record to a temporary `.tmp-…` file, fsyncs it, renames it to its
//!   final name and fsyncs the directory. A crash leaves either no record or a complete
//!   one, never a partial `.json` file (a stale `.tmp-…` file at most).
//! - Files whose name starts with a dot (`.lock`, `.tmp-…`, `.probe-…`) and files not
//!   ending in `.json` are not records and are ignored. Any other `.json` file is
//!   examined. One not named like a record is a break ([`verify`] names it) but stays
//!   out of the chain: the writer never chains to it, and the record after it is checked
//!   against the record before it. A file named like a record is always in the chain,
//!   even when its content is broken (the next record carries the hash of its bytes).
//! - [`verify`] reads the records in name order and checks that each is valid JSON, has a
//!   supported `schema_version` (1 or 2: a directory may mix them, and the chain runs
//!   across versions), is an audit record, matches its file name, and that its
//!   `prev_sha256` is the SHA-256 of the previous record file (`null` for the first).
//!
//! # Picking records
//!
//! [`select`] picks a record of the directory by a [`Selector`], the text after `audit:`
//! in `report::load("audit:prev:triage")`: `last` (the newest), `prev` (the one before),
//! `last~N`, or a run id (or a unique prefix of at least 8 characters, `~N` to go back
//! from it), optionally followed by `:PLAYBOOK` to count only runs of that playbook
//! (matched by file name, with or without `.rhai`). `last`, `prev` and `~N` count only
//! records that can be compared: version 2 or later (they hold findings) and of a
//! completed run.
//!
//! # Limitations
//!
//! - The newest record has no successor to vouch for it: editing it, or removing the
//!   newest records, cannot be seen from the files alone. [`VerifyReport::head_sha256`]
//!   gives the hash of the newest record so that a caller can pin it elsewhere (print it,
//!   ship it to a log collector) and compare later. The next run chains to the newest
//!   file as it is then, edited or not.
//! - The hashes are not keyed or signed: someone who can write the directory can rewrite
//!   the whole chain consistently, or delete every record. The chain detects edits and
//!   removals by people and tools that do not rewrite every later record; shipping
//!   records (or the head hash) off the host is what protects against more.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod dir;
mod host;
mod redact;
mod select;
mod verify;

pub use dir::{AuditDir, default_dir, now_rfc3339, private_temp_dir, record_file_name, sha256_hex};
pub use host::{decode_capabilities, hostname_of};
pub use redact::{
    MIN_SECRET_VALUE_CHARS, REDACTED, SecretValues, is_secret_key, is_secret_param, looks_secret_value, redact_cmdline,
    redact_findings, redact_json, redact_params, redact_text,
};
pub use select::{Reference, Selected, Selector, playbook_matches, read_record, record_paths, select};
pub use verify::{ChainBreak, VerifyReport, verify};

/// Version of the record format this snat writes; bumped on any change of the format.
///
/// Version 2 added `findings` and `findings_truncated`. Readers accept every version from 1
/// to this one: a version 1 record reads with empty `findings`, and
/// [`AuditRecord::holds_findings`] tells the two apart.
pub const SCHEMA_VERSION: u32 = 2;

/// The most findings a record keeps (see `findings_truncated`).
pub const MAX_FINDINGS: usize = 500;

/// The most bytes of compact JSON the findings of a record take (1 MiB).
pub const MAX_FINDINGS_BYTES: usize = 1 << 20;

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
    /// The findings of the run's report, as the JSON objects of the report (see
    /// [`crate::model::Finding`]), redacted and bounded by the writer. Empty in version 1
    /// records, which did not record them.
    #[serde(default)]
    pub findings: Vec<serde_json::Value>,
    /// How many findings the writer dropped to keep the record within [`MAX_FINDINGS`] and
    /// [`MAX_FINDINGS_BYTES`].
    #[serde(default)]
    pub findings_truncated: u64,
    /// The raw values of the secret parameters (see [`SecretValues::from_params`]), for the
    /// writer to find and redact wherever they were copied (a message, an error, a
    /// finding). Never written: [`AuditDir::write`] empties it, and a record read from a
    /// file has none.
    #[serde(skip)]
    pub secret_values: SecretValues,
}

impl AuditRecord {
    /// True when the record holds the run's findings (schema version 2 or later); false for
    /// version 1 records, whose empty `findings` say nothing.
    pub fn holds_findings(&self) -> bool {
        self.schema_version >= 2
    }

    /// True when the run ran to its end (`outcome.kind` is `completed`), so its findings
    /// are the whole picture.
    pub fn completed(&self) -> bool {
        self.outcome.kind == OutcomeKind::Completed
    }

    /// Why this record cannot stand for its run's findings (written before records held
    /// findings, or of a run that did not complete), with what to do instead; `None` when
    /// it can be compared.
    pub fn findings_problem(&self) -> Option<String> {
        select::unusable_reason(self)
    }
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
    /// The cluster the request went to (or would have gone to), when a client was connected:
    /// with several clusters, "cordoned node X" means nothing without it.
    #[serde(default)]
    pub cluster: Option<ClusterRef>,
}

/// Which Kubernetes cluster an action was sent to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRef {
    /// The API server's URL.
    pub server: String,
    /// The kubeconfig context (null for the in-cluster configuration).
    pub context: Option<String>,
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
