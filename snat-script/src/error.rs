//! The one error type of snat-script, and how errors map to `snat-run`'s exit codes.
//!
//! | exit | meaning | variants |
//! | --- | --- | --- |
//! | 0 | ran, nothing found | — |
//! | 3 | ran, the playbook's verdict is "SNAT pressure found" | — |
//! | 2 | the playbook or its params are wrong | [`Error::Playbook`], [`Error::Param`], [`Error::ReadPlaybook`] |
//! | 1 | a stage failed at run time, or the run could not be audited | [`Error::Stage`], [`Error::Audit`], [`Error::AuditRefused`] |
//! | 130 / 143 | interrupted by SIGINT / SIGTERM, or (130) cancelled by the embedding program | [`Error::Interrupted`], [`Error::Cancelled`] |

//!
//! A variant with a cause returns it from [`std::error::Error::source`] and leaves it out of
//! its own message, so that a chain (`{:#}` of anyhow, [`snat_core::error::chain`]) names
//! each cause once; render with [`crate::ctx::error_chain`] for the whole story.

use std::path::PathBuf;
use std::sync::Arc;

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
    #[error("cannot read playbook {}", path.display())]
    ReadPlaybook {
        /// Path as given.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },

    /// A stage failed at run time (permissions, I/O, API). Rendered as
    /// `PLAYBOOK:LINE:COL: stage NAME failed`, the place being the stage's call; the cause
    /// is [`source`](std::error::Error::source) (with its chain: `PLAYBOOK:LINE:COL: stage
    /// NAME failed: cause`).
    #[error("{}stage {stage} failed", called_at.as_ref().map(|p| format!("{p}: ")).unwrap_or_default())]
    Stage {
        /// Where the playbook called the stage, `PLAYBOOK:LINE:COL`, when known.
        called_at: Option<String>,
        /// Stage name, `namespace::function`.
        stage: String,
        /// The cause with its chain, as text: what [`crate::ctx::error_chain`] renders of
        /// `source`.
        message: String,
        /// The error the stage failed with, e.g. a [`snat_core::Error`]; `source()` returns
        /// it, so it can be downcast.
        #[source]
        source: StageCause,
    },

    /// The audit record cannot be written: when the run ends, or before the run when
    /// [`RunRequest::audit_fallback`](crate::runner::RunRequest::audit_fallback) is off
    /// (the run does nothing; with it on, that is [`Error::AuditRefused`]). The cause is
    /// [`source`](std::error::Error::source).
    #[error("cannot record the run")]
    Audit(#[source] snat_core::Error),

    /// The audit directory asked for cannot be written, so the playbook was not run: a
    /// run must not act without the audit trail it asked for. The refusal is recorded
    /// in a fallback directory when one opens ([`snat_core::audit::AuditDir::open_fallback`];
    /// [`RunResult::audit_record`](crate::runner::RunResult::audit_record) is the record).
    /// The cause, why the directory cannot be written, is
    /// [`source`](std::error::Error::source).
    #[error("{}", audit_refused(fallback, usage.as_deref()))]
    AuditRefused {
        /// The fallback directory the refusal is recorded in, or why none could be used
        /// (each directory tried, with its error).
        fallback: Result<PathBuf, String>,
        /// A mistake of the command line found as well ([`Error::Usage`]'s message), so
        /// that the record still names it.
        usage: Option<String>,
        /// Why the audit directory asked for cannot be written.
        #[source]
        source: snat_core::Error,
    },

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
            Error::Audit(_) | Error::AuditRefused { .. } => "audit_unwritable",
            Error::Interrupted { .. } | Error::Cancelled => "interrupted",
        }
    }

    /// The exit code `snat-run` uses for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Playbook { .. } | Error::Param(_) | Error::Usage(_) | Error::ReadPlaybook { .. } => 2,
            Error::Stage { .. } | Error::Audit(_) | Error::AuditRefused { .. } => 1,
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

/// The error a stage failed with. The script engine clones a stage's failure, so the error
/// is shared; it derefs to the error itself, which [`Error::Stage`]'s `source()` returns.
#[derive(Debug, Clone)]
pub struct StageCause(Arc<dyn std::error::Error + Send + Sync>);

impl StageCause {
    /// A cause from any error, or from a message (`String`, `&str`).
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StageCause {
        StageCause(Arc::from(e.into()))
    }
}

impl From<Box<dyn std::error::Error + Send + Sync>> for StageCause {
    fn from(e: Box<dyn std::error::Error + Send + Sync>) -> StageCause {
        StageCause(Arc::from(e))
    }
}

impl std::ops::Deref for StageCause {
    type Target = dyn std::error::Error + Send + Sync + 'static;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// The message of [`Error::AuditRefused`], before its cause.
fn audit_refused(fallback: &Result<PathBuf, String>, usage: Option<&str>) -> String {
    let usage = usage
        .map(|u| format!(" (the command line was refused too: {u})"))
        .unwrap_or_default();
    match fallback {
        Ok(dir) => format!(
            "the playbook was not run{usage}: its audit directory cannot be written, so this refusal is recorded in the fallback audit directory {} instead",
            dir.display()
        ),
        Err(why) => format!(
            "the playbook was not run{usage} and left no audit record: its audit directory cannot be written, and no fallback audit directory could be used either ({why})"
        ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// Each cause is rendered once, by the chain and by anyhow's `{:#}`, which joins every
    /// level's message.
    #[rstest::rstest]
    #[case::audit(
        Error::Audit(snat_core::Error::AuditRecordInvalid { run_id: "r1".into(), reason: "no host".into() }),
        "cannot record the run: audit record of run \"r1\" cannot be written: no host"
    )]
    #[case::read_playbook(
        Error::ReadPlaybook { path: "p.rhai".into(), source: io::Error::other("gone") },
        "cannot read playbook p.rhai: gone"
    )]
    #[case::stage(
        Error::Stage {
            called_at: Some("p.rhai:2:9".into()),
            stage: "tcptracer::read".into(),
            message: "gone".into(),
            source: StageCause::new(io::Error::other("gone")),
        },
        "p.rhai:2:9: stage tcptracer::read failed: gone"
    )]
    fn a_cause_is_rendered_once(#[case] e: Error, #[case] want: &str) {
        assert_eq!(crate::ctx::error_chain(&e), want);
        assert_eq!(format!("{:#}", anyhow::Error::from(e)), want);
    }

    #[test]
    fn a_stage_failure_gives_its_error_to_downcast() {
        let e = Error::Stage {
            called_at: None,
            stage: "metrics::read".into(),
            message: "m.json: bad".into(),
            source: StageCause::new(snat_core::Error::InvalidArgument("m.json: bad".into())),
        };
        let cause = std::error::Error::source(&e).expect("a source");
        assert!(
            matches!(
                cause.downcast_ref::<snat_core::Error>(),
                Some(snat_core::Error::InvalidArgument(_))
            ),
            "{cause:?}"
        );
    }
}
