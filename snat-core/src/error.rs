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
        "forbidden: cannot {verb} {resource}{} {scope} (RBAC): grant `{verb}` on `{resource}` to your user or to snat's ServiceAccount (see deploy/rbac.yaml); API server said: {message}",
        name.as_ref().map(|n| format!(" {n:?}")).unwrap_or_default()
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
}
