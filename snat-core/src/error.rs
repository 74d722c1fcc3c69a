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
}
