//! The one error type of snat-core.
//!
//! Every variant carries enough context to say what failed, on what, and (where there is
//! one) what to do about it; causes are chained through `#[source]` so a binary can print
//! the whole chain. Variants are grouped by the stage that raises them.

use std::path::PathBuf;

/// Errors raised by snat-core's stages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ----- shared -----------------------------------------------------------------
    /// A caller passed something that cannot work (a bad field name, an empty list...).
    #[error("{0}")]
    InvalidArgument(String),

    /// An I/O operation on a file failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "cannot open tcptracer log".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    // ----- aggregate --------------------------------------------------------------
    /// A grouping asks for a field the records do not carry.
    #[error(
        "field {field:?} is not available from this source (a kernel-aggregated trace has no pid, comm or sport: use the event stream)"
    )]
    FieldUnavailable {
        /// The field.
        field: &'static str,
    },

    /// A ranking was asked for a grouping the trace did not keep.
    #[error(
        "the trace did not keep a grouping by [{fields}] (kept: {kept}); ask for it with the `by` option when reading the trace"
    )]
    GroupingNotKept {
        /// Fields asked for.
        fields: String,
        /// Groupings kept.
        kept: String,
    },

    // ----- audit ------------------------------------------------------------------
    /// The audit directory cannot be created or written: the run must not start.
    #[error(
        "audit directory {} is not usable: {what}: {source}; pass --audit-dir DIR with a writable directory, or fix the permissions of this one (it needs to be a directory the user can create files in)",
        dir.display()
    )]
    AuditDirUnusable {
        /// The directory.
        dir: PathBuf,
        /// What failed, e.g. "cannot create it".
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// Writing, locking or reading an audit record file failed.
    #[error("audit: {what} {}: {source}", path.display())]
    AuditIo {
        /// What was being done, e.g. "cannot write the record".
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// A record handed to the writer cannot be written as it is (a bug in the caller).
    #[error("audit record of run {run_id:?} cannot be written: {reason}")]
    AuditRecordInvalid {
        /// The record's run id, as given.
        run_id: String,
        /// What is wrong with it.
        reason: String,
    },

    /// No record of an audit directory answers a selector such as `prev:triage`.
    #[error(
        "no audit record in {} matches audit:{selector}: {reason} (list the directory, or give a record's path or run id; --audit-dir picks another directory)",
        dir.display()
    )]
    AuditSelect {
        /// The audit directory searched.
        dir: PathBuf,
        /// The selector, as written after `audit:`.
        selector: String,
        /// Why nothing matched, with what was skipped.
        reason: String,
    },

    /// An audit record was asked for its findings but cannot give them (written before
    /// records held findings, or of a run that did not complete).
    #[error("audit record {} (run {run_id}) has no findings to compare: {reason}", path.display())]
    AuditNoFindings {
        /// The record file.
        path: PathBuf,
        /// Its run id.
        run_id: String,
        /// Why, and what to do instead.
        reason: String,
    },
    // ----- policy -----------------------------------------------------------------
    /// A user-given range is not a CIDR.
    #[error(
        "invalid CIDR {cidr:?} for a {set} range: {reason} (expected e.g. 10.240.0.0/16, fd00::/8 or a single address)"
    )]
    InvalidCidr {
        /// The text given.
        cidr: String,
        /// Which set it was for: `private` or `public`.
        set: &'static str,
        /// Why it was rejected.
        reason: String,
    },

    /// A user range kind is not one snat knows.
    #[error("unknown range kind {kind:?} (expected vnet, peered-vnet, pod, service or other)")]
    UnknownRangeKind {
        /// The text given.
        kind: String,
    },

    // ----- cgroup -----------------------------------------------------------------
    /// Content given as a `/proc/PID/cgroup` file is not one.
    #[error(
        "not a /proc/PID/cgroup file: line {line} ({text:?}): {reason} (each line must be hierarchy:controllers:/path, e.g. 0::/kubepods.slice)"
    )]
    NotCgroupFile {
        /// 1-based line number.
        line: usize,
        /// The line (at most 80 characters).
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    // ----- allocation -------------------------------------------------------------
    /// A backend pool is larger than Azure's default port table covers.
    #[error(
        "a backend pool of {nodes} nodes is beyond Azure's default SNAT port table, which ends at 1000 instances: set allocatedOutboundPorts explicitly (or use a NAT gateway)"
    )]
    PoolBeyondTable {
        /// Nodes in the pool.
        nodes: u32,
    },

    /// An `allocatedOutboundPorts` value Azure would reject.
    #[error(
        "allocatedOutboundPorts {ports} is invalid: {reason} (it must be a multiple of 8 from 0 to 64000; 0 means Azure's default table)"
    )]
    InvalidAllocatedPorts {
        /// The value given.
        ports: u32,
        /// What is wrong with it.
        reason: &'static str,
    },

    // ----- tcptracer --------------------------------------------------------------
    /// A tcptracer log line could not be parsed (strict mode, or [`crate::tcptracer::LogEvents`]).
    #[error(
        "{log}:{line}: not a tcptracer line: {reason}: {text:?} (fix or delete the line, or read the log without strict mode to count and skip malformed lines)"
    )]
    TcptracerLine {
        /// The log (a path, or `-` for stdin).
        log: String,
        /// 1-based line number.
        line: u64,
        /// The line (its first 200 bytes).
        text: String,
        /// Why it is not a tcptracer line.
        reason: crate::tcptracer::LineError,
    },
    /// The input is not a tcptracer log at all: empty, or no line of it is one.
    #[error("{log}: not a tcptracer log: {reason}; pass what `tcptracer -t4v` (or -t, -v, or no option) writes")]
    TcptracerNotALog {
        /// The log (a path, or `-` for stdin).
        log: String,
        /// What it is instead.
        reason: String,
    },
    // ----- procindex --------------------------------------------------------------
    /// A process's /proc files could not be read for lack of privilege.
    #[error(
        "cannot read {}: {source}; reading other processes' namespaces, cgroups and file descriptors needs root (or CAP_SYS_PTRACE)",
        path.display()
    )]
    ProcPermission {
        /// The file.
        path: PathBuf,
        /// The cause (EACCES or EPERM).
        #[source]
        source: std::io::Error,
    },

    // ----- census -----------------------------------------------------------------
    /// A netlink sock_diag call failed.
    #[error("sock_diag netlink {what} failed: {source} (the census can fall back to /proc/net/tcp)")]
    SockDiag {
        /// Which call: socket, send, recv, dump request.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// The kernel's sock_diag answer could not be decoded.
    #[error("malformed sock_diag answer: {0} (the census can fall back to /proc/net/tcp)")]
    SockDiagMalformed(String),

    /// A line of /proc/net/tcp or tcp6 text is not a socket line.
    #[error("cannot parse /proc/net/tcp text, line {line}: {reason}: {text:?}")]
    ProcNetTcpParse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
        /// The line (at most 200 characters).
        text: String,
    },

    /// A network namespace could not be entered.
    #[error(
        "cannot enter network namespace {} (setns CLONE_NEWNET): {source}; is it a network namespace file, and are we root (CAP_SYS_ADMIN)?",
        path.display()
    )]
    EnterNetns {
        /// The namespace file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// Every process of a network namespace exited since the process index was taken.
    #[error(
        "network namespace {netns} has no process left (its pod or processes ended since the scan); scan again to see the current namespaces"
    )]
    NetnsGone {
        /// The namespace inode.
        netns: u64,
    },

    /// The dedicated census thread could not be started or died.
    #[error("socket census thread: {0}")]
    CensusThread(String),
    // ----- metrics ----------------------------------------------------------------
    /// An Azure Monitor metrics document is not what `az monitor metrics list -o json` or
    /// the REST API return.
    #[error(
        "metrics {source_name}: at {path}: {problem} (expected the JSON of `az monitor metrics list -o json` or the Azure Monitor REST API)"
    )]
    MetricsFormat {
        /// Where the document came from (path, `-`, command).
        source_name: String,
        /// JSON path of the problem, e.g. `$.value[0].timeseries[1].data[2].average`.
        path: String,
        /// What is wrong there.
        problem: String,
    },

    /// The Azure CLI failed.
    #[error("`{command}` failed ({status}): {stderr} (check `az login` and `az account set --subscription ...`)")]
    AzCli {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error (truncated).
        stderr: String,
    },

    // ----- k8s --------------------------------------------------------------------
    /// The Kubernetes configuration could not be loaded.
    #[error("{what}: {message}")]
    KubeConfig {
        /// What was being loaded.
        what: String,
        /// Why it failed.
        message: String,
    },

    /// The API server refused the credentials (HTTP 401).
    #[error(
        "unauthorized: the API server rejected the credentials to {op}: {message} (refresh them, e.g. `az aks get-credentials`, or check the kubeconfig user)"
    )]
    KubeUnauthorized {
        /// The operation.
        op: String,
        /// The API server's message.
        message: String,
    },

    /// RBAC denied an operation (HTTP 403).
    #[error(
        "forbidden: cannot {verb} {resource}{} {scope} (RBAC): grant `{verb}` on `{resource}` to your user or to snat's ServiceAccount ({}); API server said: {message}",
        name.as_ref().map(|n| format!(" {n:?}")).unwrap_or_default(),
        rbac_role_for(verb, resource, scope)
    )]
    KubeForbidden {
        /// RBAC verb.
        verb: &'static str,
        /// RBAC resource (with group), e.g. `pods`, `jobs.batch`.
        resource: &'static str,
        /// The object's name, for single-object operations.
        name: Option<String>,
        /// "at cluster scope" or "in namespace ...".
        scope: String,
        /// The API server's message.
        message: String,
    },

    /// The object does not exist (HTTP 404).
    #[error("not found: {op}: {message}")]
    KubeNotFound {
        /// The operation.
        op: String,
        /// The API server's message.
        message: String,
    },

    /// The API server answered with another error, after retries where allowed.
    #[error("the API server failed to {op}: HTTP {code} after {attempts} attempt(s): {message}")]
    KubeApi {
        /// The operation.
        op: String,
        /// HTTP status.
        code: u16,
        /// Attempts made.
        attempts: u32,
        /// The API server's message.
        message: String,
    },

    /// No answer in time.
    #[error(
        "timed out trying to {op} on {server} (allowed {timeout}): is the API server reachable from here (VPN, private cluster, authorized IP ranges)?"
    )]
    KubeTimeout {
        /// The operation.
        op: String,
        /// API server URL.
        server: String,
        /// The limits in force.
        timeout: String,
    },

    /// The request could not be sent (connection refused, TLS, DNS...).
    #[cfg(feature = "kube")]
    #[error("cannot reach the API server {server} to {op}")]
    KubeTransport {
        /// The operation.
        op: String,
        /// API server URL.
        server: String,
        /// The cause.
        #[source]
        source: Box<kube::Error>,
    },

    /// The API server's answer is not the JSON expected.
    #[error("unexpected answer to {op}: {message}")]
    KubeDecode {
        /// The operation.
        op: String,
        /// What did not decode.
        message: String,
    },

    /// Running a command in a pod through the exec API failed.
    #[error("exec in pod {pod} failed: {message}")]
    KubeExec {
        /// `namespace/name[/container]`.
        pod: String,
        /// What went wrong and what to do.
        message: String,
    },

    /// A fleet run could not proceed (bad spec, cancelled).
    #[error("fleet run: {0}")]
    Fleet(String),

    // ----- remediate --------------------------------------------------------------
    /// A remediation action cannot be applied to its target as it is now (the pod was
    /// replaced, the owner is not a kind that can be restarted...).
    #[error("cannot {action} {target}: {message}")]
    RemediationTarget {
        /// The action (`event`, `annotate`, `label`, `restart`, `cordon`).
        action: &'static str,
        /// `kind/namespace/name` of the target.
        target: String,
        /// Why, and what to do.
        message: String,
    },

    // ----- timeline ---------------------------------------------------------------
    /// A timeline's bucket cannot be used for its window.
    #[error("timeline bucket of {bucket_secs} s: {reason}")]
    InvalidBucket {
        /// The bucket asked for, in seconds.
        bucket_secs: f64,
        /// What is wrong (with the window, when there is one) and what to do.
        reason: String,
    },

    // ----- report (saved reports) -------------------------------------------------
    /// A saved report or audit record could not be read as one.
    #[error(
        "{} is not a saved snat report or audit record: {reason} (expected the JSON of `snat-run --output json` or a record from the audit directory)",
        path.display()
    )]
    SavedReport {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Which of snat's roles grants `verb` on `resource` (as [`Error::KubeForbidden`] names
/// them), as advice for a 403: the base roles of `deploy/10-rbac.yaml`, or one of the
/// optional roles of `deploy/optional/`, saying what binding it means.
fn rbac_role_for(verb: &str, resource: &str, scope: &str) -> &'static str {
    const FLEET: &str = "bind the Role snat-fleet of deploy/10-rbac.yaml in the Jobs' namespace; creating Jobs in that privileged namespace is root on every node";
    match (verb, resource) {
        (_, "pods/exec") => {
            "bind the optional ClusterRole snat-exec, deploy/optional/rbac-exec.yaml; it allows exec into every pod of the cluster"
        }
        ("patch", _)
        | ("get" | "create", "events")
        | ("get", "pods" | "deployments.apps" | "statefulsets.apps" | "daemonsets.apps") => {
            "bind the optional ClusterRole snat-remediation, deploy/optional/rbac-remediation.yaml"
        }
        ("create" | "delete", "jobs.batch" | "secrets") | ("get", "pods/log") | ("list", "events") => FLEET,
        ("list", "pods") if scope.starts_with("in namespace") => FLEET,
        _ => "bind the ClusterRole snat-reader of deploy/10-rbac.yaml",
    }
}

/// Render an error with its whole `source()` chain, `: `-joined, skipping a cause whose text
/// the message already contains (thiserror messages often embed their source).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    /// A 403 names the role that grants the refused verb: exec and remediation are optional
    /// roles, not part of the base RBAC.
    #[rstest]
    #[case::exec(
        "create",
        "pods/exec",
        "in namespace \"shop\"",
        "ClusterRole snat-exec, deploy/optional/rbac-exec.yaml"
    )]
    #[case::exec_get("get", "pods/exec", "in namespace \"shop\"", "ClusterRole snat-exec")]
    #[case::cordon("patch", "nodes", "at cluster scope", "ClusterRole snat-remediation")]
    #[case::event("create", "events", "in namespace \"shop\"", "ClusterRole snat-remediation")]
    #[case::restart_get("get", "deployments.apps", "in namespace \"shop\"", "ClusterRole snat-remediation")]
    #[case::fleet_create("create", "jobs.batch", "in namespace \"snat\"", "Role snat-fleet")]
    #[case::fleet_secret("create", "secrets", "in namespace \"snat\"", "Role snat-fleet")]
    #[case::fleet_events("list", "events", "in namespace \"snat\"", "Role snat-fleet")]
    #[case::fleet_pods("list", "pods", "in namespace \"snat\"", "Role snat-fleet")]
    #[case::all_pods("list", "pods", "at cluster scope", "ClusterRole snat-reader")]
    #[case::nodes("list", "nodes", "at cluster scope", "ClusterRole snat-reader")]
    #[case::owner_job("get", "jobs.batch", "in namespace \"batch\"", "ClusterRole snat-reader")]
    fn forbidden_names_the_role_to_bind(
        #[case] verb: &'static str,
        #[case] resource: &'static str,
        #[case] scope: &str,
        #[case] want: &str,
    ) {
        let e = Error::KubeForbidden {
            verb,
            resource,
            name: None,
            scope: scope.into(),
            message: "denied".into(),
        }
        .to_string();
        assert!(
            e.contains(&format!("bind the {want}")) || e.contains(&format!("bind the optional {want}")),
            "{e}"
        );
    }
}
