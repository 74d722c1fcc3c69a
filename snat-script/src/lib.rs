//! snat-script: the Rhai bindings for snat's stages and the `snat-run` playbook runner.
//!
//! - [`engine::build`]: a sandboxed Rhai engine with every stage module registered
//!   (`census::`, `trace::`, `tcptracer::`, `kube::`, `metrics::`, `policy::`, `alloc::`,
//!   `report::`, ...); each module lives in [`modules`] with its own `create_module()`.
//! - [`Ctx`]: what the stages of one run share: options, `--param` values, and the stage
//!   log that becomes the audit record.
//! - [`runner::run`]: what `snat-run PLAYBOOK.rhai` does: run a playbook, print its report,
//!   and leave exactly one audit record, whatever happens.
//!
//! Running a playbook from another program, as `snat-run` does, with the report handed back
//! instead of printed. [`runner::RunRequest::new`] prints nothing on stdout
//! ([`runner::OutputFormat::Quiet`]), installs no signal handler and never exits the
//! process (`snat-run` sets [`handle_signals`](runner::RunRequest::handle_signals)); a
//! [`runner::CancelHandle`] stops the run from another thread:
//!
//! ```no_run
//! use snat_script::runner::{self, CancelHandle, RunRequest};
//!
//! let mut req = RunRequest::new("examples/tcptracer-log.rhai", "snat-audit");
//! req.params.insert("log".into(), "tcptracer.log".into());
//! let cancel = CancelHandle::new(); // cancel.cancel() from any thread stops the run
//! req.cancel = Some(cancel.clone());
//!
//! let result = runner::run(req);
//! // The report the playbook built: title, verdict, summary, findings, sections.
//! if let Some(verdict) = result.report.verdict {
//!     println!("verdict: {verdict:?}");
//! }
//! for finding in &result.report.findings {
//!     println!("- {}", finding.summary);
//! }
//! // snat-run's exit code: 0 clear, 3 SNAT pressure found, 2 playbook or parameter
//! // error, 1 stage failure, 130/143 interrupted; the error for the failures.
//! // The message keeps the values of secret parameters out, as the record does.
//! if let Some(message) = &result.error_message {
//!     eprintln!("exit {}: {message}", result.exit_code);
//! }
//! // Every run leaves exactly one record; a run refused because its audit directory
//! // cannot be written leaves it in a fallback directory (none only if that fails too).
//! if let Some(path) = &result.audit_record {
//!     println!("audit record: {}", path.display());
//! }
//! ```
//!
//! Embedding the engine itself, without the runner's audit record and report:
//!
//! ```no_run
//! use snat_script::{Ctx, RunOptions};
//! use snat_script::engine::{Limits, build};
//!
//! let ctx = Ctx::new(RunOptions::default(), Default::default());
//! let engine = build(&ctx, &Limits::default());
//! let namespaces: rhai::Array = engine
//!     .eval(r#"census::namespaces().map(|n| n.to_string())"#)
//!     .expect("the playbook runs");
//! println!("{namespaces:?}; stages run: {}", ctx.stages().len());
//! ```
#![deny(missing_docs)]

pub mod cli;
pub mod ctx;
pub mod engine;
pub mod error;
pub mod fleet;
pub mod html;
pub mod modules;
pub mod report;
pub mod runner;
mod signals;

pub use ctx::{Ctx, RunOptions, StageError};
pub use error::Error;

static PROGRAM_NAME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// The name the command was invoked as, which starts its messages on stderr (`snat-run:
/// warning: ...`): `kubectl snat` when run as the kubectl plugin (`kubectl-snat`), else
/// `snat-run` (also in programs that embed the runner).
pub fn program_name() -> &'static str {
    PROGRAM_NAME.get().copied().unwrap_or("snat-run")
}

/// Set [`program_name`] (once per process; later calls change nothing).
pub(crate) fn set_program_name(name: &'static str) {
    let _ = PROGRAM_NAME.set(name);
}
