//! The one error type of snat-script, and how errors map to `snat-run`'s exit codes.
//!
//! | exit | meaning | variants |
//! | --- | --- | --- |
//! | 0 | ran, nothing found | — |
//! | 3 | ran, the playbook's verdict is "SNAT pressure found" | — |
//! | 2 | the playbook or its params are wrong | [`Error::Playbook`], [`Error::Param`], [`Error::ReadPlaybook`] |
//! | 1 | a stage failed at run time, or the run could not be audited | [`Error::Stage`], [`Error::Audit`] |
//! | 130 / 143 | interrupted by SIGINT / SIGTERM, or (130) cancelled by the embedding program | [`Error::Interrupted`], [`Error::Cancelled`] |

use std::path::PathBuf;

/// Errors of the playbook runner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The playbook is wrong: syntax, a limit hit, a bad call. Rendered as
    /// `PLAYBOOK:LINE:COL: message`, then the source line and a caret (`PLAYBOOK: message`
    /// when the place is unknown).
    #[error("{}: {message}{snippet}", place(path, *line, *col))]
    Playbook {
        /// Playbook path as given.
        path: PathBuf,
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
        col: usize,
        /// What is wrong.
        message: String,
        /// The source line and a caret under the column, preceded by a newline (or empty).
        snippet: String,
    },

    /// A `--param` is malformed, missing or of the wrong type.
    #[error("{0}")]
    Param(String),

    /// The command line is wrong in a way the CLI finds after parsing it (an unknown
    /// `--allow` action, a repeated `--param`, an `--html` directory that cannot be
    /// written): the run is recorded and stops before the playbook runs.
    #[error("{0}")]
    Usage(String),

    /// The playbook file cannot be read.
    #[error("cannot read playbook {}: {source}", path.display())]
    ReadPlaybook {
        /// Path as given.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },

    /// A stage failed at run time (permissions, I/O, API). Rendered as
    /// `PLAYBOOK:LINE:COL: stage NAME failed: message`, the place being the stage's call.
    #[error("{}stage {stage} failed: {message}", called_at.as_ref().map(|p| format!("{p}: ")).unwrap_or_default())]
    Stage {
        /// Where the playbook called the stage, `PLAYBOOK:LINE:COL`, when known.
        called_at: Option<String>,
        /// Stage name, `namespace::function`.
        stage: String,
        /// The cause, with its chain, as text (the cause crossed the script engine).
        message: String,
    },

    /// The audit record cannot be written (the run fails before doing anything).
    #[error("audit: {0}")]
    Audit(#[source] snat_core::Error),

    /// SIGINT or SIGTERM stopped the run.
    #[error("interrupted by {signal}")]
    Interrupted {
        /// `SIGINT` or `SIGTERM`.
        signal: &'static str,
    },

    /// The program that embeds the runner cancelled the run
    /// ([`crate::runner::CancelHandle::cancel`]).
    #[error("cancelled by the program running it")]
    Cancelled,
}

impl Error {
    /// The `error.kind` of the JSON report: `playbook_error`, `usage_error`,
    /// `stage_failed`, `audit_unwritable` or `interrupted` (also for [`Error::Cancelled`]).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Playbook { .. } | Error::Param(_) | Error::ReadPlaybook { .. } => "playbook_error",
            Error::Usage(_) => "usage_error",
            Error::Stage { .. } => "stage_failed",
            Error::Audit(_) => "audit_unwritable",
            Error::Interrupted { .. } | Error::Cancelled => "interrupted",
        }
    }

    /// The exit code `snat-run` uses for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Playbook { .. } | Error::Param(_) | Error::Usage(_) | Error::ReadPlaybook { .. } => 2,
            Error::Stage { .. } | Error::Audit(_) => 1,
            Error::Interrupted { signal } => {
                if *signal == "SIGTERM" {
                    143
                } else {
                    130
                }
            }
            Error::Cancelled => 130,
        }
    }
}

/// `PATH:LINE:COL`, or `PATH` when the line is unknown (0).
pub(crate) fn place(path: &std::path::Path, line: usize, col: usize) -> String {
    match (line, col) {
        (0, _) => path.display().to_string(),
        (l, 0) => format!("{}:{l}", path.display()),
        (l, c) => format!("{}:{l}:{c}", path.display()),
    }
}
