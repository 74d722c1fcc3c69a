//! Running one playbook end to end: audit directory check, parameters, the sandboxed
//! engine, signals (when asked), the report on stdout, and exactly one audit record per run.
//!
//! The order matters. The audit directory is proven writable *before* anything runs (a
//! run without its record is not allowed). When it is not, the playbook does not run, and
//! the refusal is recorded in a fallback directory instead (see
//! [`RunRequest::audit_fallback`]), so that even that run leaves its one record. From then
//! on every ending (success, playbook error, stage failure, cancellation, SIGINT, SIGTERM)
//! goes through one finalizer, which writes the record once: whoever gets there first (the
//! main thread when the playbook returns, or the signal thread when a stage does not notice
//! the signal within the grace period) writes it, and the other does nothing.
//!
//! Secrets: the value of every secret `--param` (see [`audit::SecretValues`]) is kept out
//! of the record by its writer, and out of everything the run prints or returns by the
//! finalizer: the error line, the JSON document, the tables, the HTML report,
//! [`RunResult::report`] and [`RunResult::error_message`] (not [`RunResult::error`], the
//! error itself, for a program to match on).
//!
//! Embedding: [`run`] with [`RunRequest::new`] touches no signal disposition, never exits
//! the process and prints nothing on stdout; [`RunResult`] carries the report, the exit
//! code, the error and the audit record's path; a [`CancelHandle`] stops the run from
//! another thread.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use snat_core::audit::{
    self, AuditDir, AuditRecord, HostInfo, Outcome, OutcomeKind, PlaybookInfo, SCHEMA_VERSION, ToolInfo, Verdict,
};

use crate::ctx::{Ctx, RunOptions, Window};
use crate::engine::{self, Failure, Limits};
use crate::error::Error;
use crate::report::{Report, RunFacts};

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Aligned tables for a human.
    #[default]
    Table,
    /// Exactly one JSON document on stdout, also on failure (an audit directory that
    /// cannot be opened included).
    Json,
    /// Nothing on stdout: for programs that embed the runner and read
    /// [`RunResult::report`]. The playbook's `print` and warnings still go to stderr.
    Quiet,
}

/// Everything one run needs. [`RunRequest::new`] gives the defaults an embedding program
/// wants (nothing on stdout, signals left alone); `snat-run` fills every field from its
/// command line.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Playbook path.
    pub playbook: PathBuf,
    /// `--param` values.
    pub params: BTreeMap<String, String>,
    /// Options the stages see.
    pub options: RunOptions,
    /// Sandbox limits.
    pub limits: Limits,
    /// Output format.
    pub output: OutputFormat,
    /// Also write the self-contained HTML report here.
    pub html: Option<PathBuf>,
    /// Audit directory.
    pub audit_dir: PathBuf,
    /// When [`audit_dir`](Self::audit_dir) cannot be opened, the playbook never runs (exit
    /// 1, error [`Error::AuditRefused`]); with this set, the refusal is still recorded, in
    /// the first directory of [`AuditDir::open_fallback`] that opens (the default audit
    /// directory when it is another one, else a private directory of this user under the
    /// system's temporary directory), and [`RunResult::audit_record`] says where. When
    /// false, or when no fallback opens, the run leaves no record. True in
    /// [`RunRequest::new`] and in `snat-run`.
    pub audit_fallback: bool,
    /// Whether the run handles SIGINT and SIGTERM itself, as `snat-run` does. When true,
    /// [`run`] installs handlers for both for as long as it runs and puts the previous
    /// dispositions back before it returns: a signal cancels the run (exit 130 or 143;
    /// during an observation window the first SIGINT only ends the window), and if the run
    /// has not ended [`signal_grace`](Self::signal_grace) later (a stage blocked in a
    /// read), the record is written from the signal thread and **the process exits** with
    /// the run's exit code. Only one run at a time in a process can handle signals; another
    /// one runs without (a warning says so).
    ///
    /// When false (the default of [`RunRequest::new`]) no handler is installed, the
    /// program's own handling of the signals stays as it is, and nothing in the run exits
    /// the process; stop a run with [`cancel`](Self::cancel).
    pub handle_signals: bool,
    /// With [`handle_signals`](Self::handle_signals): how long stages get to notice
    /// SIGINT/SIGTERM before the record is written without them and the process exits.
    pub signal_grace: Duration,
    /// Cancels the run when [`CancelHandle::cancel`] is called (from another thread, before
    /// or during the run): the playbook stops at its next operation or stage, exit 130,
    /// error [`Error::Cancelled`], outcome `interrupted` in the record. A stage blocked in
    /// a read (a log read from a pipe that never ends) notices it only when the read returns.
    pub cancel: Option<CancelHandle>,
    /// Run the playbook on cluster nodes as Jobs instead of locally (`--on-node`,
    /// `--all-nodes`): one `fleet::run` stage, see [`crate::fleet`].
    pub fleet: Option<crate::fleet::FleetOptions>,
    /// A command-line error found before the run ([`Error::Usage`]): the run writes its
    /// audit record (outcome `playbook_error`, exit 2) and runs nothing.
    pub refused: Option<String>,
}

impl RunRequest {
    /// A run of `playbook` recording into `audit_dir`, with the defaults for embedding:
    /// no parameters, default options and limits, [`OutputFormat::Quiet`], no HTML report,
    /// a refusal recorded in a fallback directory when `audit_dir` cannot be written,
    /// signals not handled, no cancel handle, run here (not on cluster nodes).
    pub fn new(playbook: impl Into<PathBuf>, audit_dir: impl Into<PathBuf>) -> RunRequest {
        RunRequest {
            playbook: playbook.into(),
            params: BTreeMap::new(),
            options: RunOptions::default(),
            limits: Limits::default(),
            output: OutputFormat::Quiet,
            html: None,
            audit_dir: audit_dir.into(),
            audit_fallback: true,
            handle_signals: false,
            signal_grace: Duration::from_secs(3),
            cancel: None,
            fleet: None,
            refused: None,
        }
    }
}

/// What a run ended with.
#[derive(Debug)]
pub struct RunResult {
    /// Exit code, as `snat-run` would exit: 0 clear, 3 SNAT pressure found, 2 playbook or
    /// parameter error, 1 stage failure or no audit record, 130/143 interrupted.
    pub exit_code: u8,
    /// The error, for non-zero codes other than 3, as it is (secrets included: see
    /// [`error_message`](Self::error_message) for the text to show).
    pub error: Option<Error>,
    /// The error with its causes, as `snat-run` prints it: every value of a secret
    /// parameter replaced by `<redacted>`, as in the audit record.
    pub error_message: Option<String>,
    /// Path of the audit record, when it was written: in the audit directory asked for,
    /// or, for a run refused because that one cannot be written, in the fallback
    /// directory (see [`RunRequest::audit_fallback`]).
    pub audit_record: Option<PathBuf>,
    /// The playbook's report as it stood when the run ended: what `snat-run` prints, as
    /// tables or as the JSON document's title, verdict, summary, findings and sections
    /// (empty when the run could not start), with every value of a secret parameter
    /// replaced by `<redacted>` (see [`Report::redacted`]).
    pub report: Report,
}

/// Stops a run from another thread; see [`RunRequest::cancel`]. Cheap to clone; every
/// clone cancels the same run.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle(Arc<CancelState>);

#[derive(Debug, Default)]
struct CancelState {
    requested: AtomicBool,
    /// The run's cancel flag and observation window, once it started.
    run: Mutex<Option<(Arc<AtomicBool>, Arc<Window>)>>,
}

impl CancelHandle {
    /// A handle for one run.
    pub fn new() -> CancelHandle {
        CancelHandle::default()
    }

    /// Ask the run to stop. Before the run starts, it stops at once when it does.
    pub fn cancel(&self) {
        self.0.requested.store(true, Ordering::SeqCst);
        if let Some((flag, window)) = lock(&self.0.run).as_ref() {
            flag.store(true, Ordering::SeqCst);
            window.stop();
        }
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }

    fn attach(&self, ctx: &Ctx) {
        let (flag, window) = (ctx.cancel_flag(), ctx.window());
        let mut g = lock(&self.0.run);
        if self.is_cancelled() {
            flag.store(true, Ordering::SeqCst);
            window.stop();
        }
        *g = Some((flag, window));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes the one record of a run and prints the report; usable once.
struct Finalizer {
    dir: AuditDir,
    record: AuditRecord,
    ctx: Ctx,
    output: OutputFormat,
    html: Option<PathBuf>,
}

impl Finalizer {
    fn finish(
        mut self,
        kind: OutcomeKind,
        error: Option<&Error>,
        verdict: Option<Verdict>,
        exit_code: u8,
    ) -> RunResult {
        self.record.ended_at = audit::now_rfc3339();
        // Stopped by a signal, the record may be written while a stage still blocks (the
        // signal thread's, after the grace period): that stage is in it, interrupted.
        self.record.stages = if kind == OutcomeKind::Interrupted {
            self.ctx.stages_at_interrupt()
        } else {
            self.ctx.stages()
        };
        self.record.actions = self.ctx.actions();
        self.record.outcome = Outcome {
            kind,
            message: error.map(|e| crate::ctx::error_chain(e)),
        };
        self.record.verdict = verdict;
        self.record.exit_code = i32::from(exit_code);
        // The report's findings, as in the JSON report; the writer redacts and bounds them.
        self.record.findings = self
            .ctx
            .report()
            .findings
            .iter()
            .filter_map(|f| serde_json::to_value(f).ok())
            .collect();
        // The writer empties them from the record: kept for what is printed.
        let secrets = self.record.secret_values.clone();
        let written = self.dir.write(&mut self.record);
        let (audit_path, exit_code, audit_err) = match written {
            Ok(p) => (Some(p), exit_code, None),
            Err(e) => (None, 1, Some(Error::Audit(e))),
        };
        // What is printed, written as HTML and returned keeps the secret values out, as the
        // record does: CI logs keep stdout and stderr.
        let report = self.ctx.report().redacted(&secrets);
        let playbook = secrets.redact(&self.record.playbook.path);
        let audit_s = audit_path.as_ref().map(|p| p.display().to_string());
        let facts = RunFacts {
            playbook: &playbook,
            run_id: &self.record.run_id,
            audit_record: audit_s.as_deref(),
            host: Some(&self.record.host.hostname),
            exit_code,
        };
        let message = |e: &Error| secrets.redact(&crate::ctx::error_chain(e));
        // A refused run ran nothing to show (and its --html may be what was refused).
        let refused = matches!(error, Some(Error::Usage(_) | Error::AuditRefused { .. }));
        let shown = error.or(audit_err.as_ref()).map(|e| (e.kind(), message(e)));
        if let Some(path) = self.html.as_ref().filter(|_| !refused) {
            let html_error = shown.as_ref().map(|(k, m)| (*k, m.as_str()));
            match std::fs::write(path, crate::html::render(&report, &facts, html_error)) {
                Ok(()) if self.ctx.options().quiet => {}
                Ok(()) => eprintln!("HTML report: {}", path.display()),
                Err(e) => eprintln!(
                    "{}: warning: cannot write the HTML report {}: {e}",
                    crate::program_name(),
                    path.display()
                ),
            }
        }
        print_report(&report, self.output, &facts, shown);
        // `run` returns this error, else the run's: the message is of the same one.
        let error_message = audit_err.as_ref().or(error).map(message);
        RunResult {
            exit_code,
            error: audit_err,
            error_message,
            audit_record: audit_path,
            report,
        }
    }
}

/// Print `report` as `output` says; `error` is the error's kind and message.
fn print_report(report: &Report, output: OutputFormat, facts: &RunFacts<'_>, error: Option<(&str, String)>) {
    match output {
        OutputFormat::Json => {
            let mut doc = report.to_json(facts);
            if let Some((kind, message)) = error {
                doc["error"] = serde_json::json!({ "kind": kind, "message": message });
            }
            print_json(&doc);
        }
        OutputFormat::Table => {
            if error.is_none() || !report.sections.is_empty() || report.verdict.is_some() {
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "{}", report.to_text(facts));
                let _ = out.flush();
            } else if let Some(a) = facts.audit_record {
                eprintln!("audit record: {a}");
            }
        }
        OutputFormat::Quiet => {}
    }
}

/// Print one JSON document on stdout (a reader that went away is no error).
fn print_json(doc: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::to_string_pretty(doc).unwrap_or_default());
    let _ = out.flush();
}

/// Parse `KEY=VALUE`.
pub fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => {
            let k = k.trim();
            if k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            {
                Ok((k.to_string(), v.to_string()))
            } else {
                Err(format!(
                    "bad parameter name {k:?}: use letters, digits, '_', '-' or '.'"
                ))
            }
        }
        _ => Err(format!("bad --param {s:?}: expected KEY=VALUE")),
    }
}

fn signal_name(sig: i32) -> &'static str {
    if sig == libc::SIGTERM { "SIGTERM" } else { "SIGINT" }
}

/// Run one playbook: check the audit directory, run the playbook, print its report as
/// [`RunRequest::output`] says, write exactly one audit record, and return the exit code,
/// the error, the report and where the record is.
///
/// An audit directory that cannot be written stops the run before the playbook runs (exit
/// 1, [`Error::AuditRefused`], `audit_unwritable` in the JSON document); the refusal is
/// recorded in a fallback directory ([`RunRequest::audit_fallback`]), named by the error's
/// message, the JSON document's `audit_record` and [`RunResult::audit_record`]. Only when
/// no fallback directory can be written either (or the fallback is off) does the run
/// leave no record; the error then says why for each directory.
///
/// Everything printed and returned keeps the values of secret parameters out (see the
/// module documentation).
///
/// Signals: with [`RunRequest::handle_signals`] (what `snat-run` does), SIGINT and SIGTERM
/// are handled for the length of the run, their previous dispositions come back before
/// this returns, and a stage that does not notice a signal within the grace period makes
/// the process exit once the record is written. Without it, the run leaves signals alone
/// and never exits the process; [`RunRequest::cancel`] stops it.
pub fn run(req: RunRequest) -> RunResult {
    let started_at = audit::now_rfc3339();
    // The audit directory asked for, or the fallback that records the refusal to run
    // without it (the playbook will not run).
    let (dir, refusal) = match AuditDir::open(&req.audit_dir) {
        Ok(d) => (d, None),
        Err(e) => match fall_back(&req, e) {
            (Some(d), refusal) => (d, Some(refusal)),
            (None, error) => return unrecorded(&req, error),
        },
    };
    let source = std::fs::read(&req.playbook);
    let playbook_info = PlaybookInfo {
        path: req.playbook.display().to_string(),
        sha256: source.as_ref().ok().map(|b| audit::sha256_hex(b)),
    };
    // Stages that read earlier records (`report::load("audit:prev")`) use this run's directory.
    let mut options = req.options.clone();
    options.audit_dir = Some(dir.path().to_path_buf());
    let ctx = Ctx::new(options, req.params.clone());
    if let Some(c) = &req.cancel {
        c.attach(&ctx);
    }
    let run_id = uuid::Uuid::new_v4().to_string();
    let record = AuditRecord {
        schema_version: SCHEMA_VERSION,
        run_id: run_id.clone(),
        tool: ToolInfo {
            name: "snat-run".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        playbook: playbook_info,
        params: audit::redact_params(&req.params),
        started_at,
        ended_at: String::new(),
        host: HostInfo::current(),
        stages: Vec::new(),
        actions: Vec::new(),
        outcome: Outcome {
            kind: OutcomeKind::Completed,
            message: None,
        },
        verdict: None,
        exit_code: 0,
        prev_sha256: None,
        findings: Vec::new(),
        findings_truncated: 0,
        // The raw values behind the redacted params, for the writer to find in messages.
        secret_values: audit::SecretValues::from_params(&req.params),
    };
    let finalizer = Arc::new(Mutex::new(Some(Finalizer {
        dir,
        record,
        ctx: ctx.clone(),
        output: req.output,
        html: req.html.clone(),
    })));
    let take = {
        let f = finalizer.clone();
        move || lock(&f).take()
    };

    // Signals, when the caller leaves them to the run: set the cancel flag; if the run has
    // not ended within the grace period (a stage blocked in a read, say), write the record
    // from the signal thread and exit.
    let caught: Arc<Mutex<Option<i32>>> = Arc::new(Mutex::new(None));
    let signals = if req.handle_signals {
        let cancel = ctx.cancel_flag();
        let window = ctx.window();
        let caught = caught.clone();
        let take = take.clone();
        let grace = req.signal_grace;
        let mut stopping = false;
        let on_signal = move |sig: i32| {
            if stopping {
                return;
            }
            // A first SIGINT during an observation window (a live trace, a log read from a
            // pipe) only ends the window, as Ctrl-C ends tcptracer: the playbook reports.
            if sig == libc::SIGINT && window.end_by_signal() {
                eprintln!(
                    "\n{}: SIGINT received: ending the observation window now; the playbook goes on to report (SIGINT again stops the run)",
                    crate::program_name()
                );
                return;
            }
            stopping = true;
            *lock(&caught) = Some(sig);
            cancel.store(true, Ordering::SeqCst);
            window.stop();
            eprintln!(
                "{}: {} received, stopping (the audit record will be written)",
                crate::program_name(),
                signal_name(sig)
            );
            std::thread::sleep(grace);
            if let Some(f) = take() {
                let err = Error::Interrupted {
                    signal: signal_name(sig),
                };
                let code = err.exit_code();
                let r = f.finish(OutcomeKind::Interrupted, Some(&err), None, code);
                eprintln!("{}: {err}", crate::program_name());
                std::process::exit(i32::from(r.exit_code));
            }
        };
        match crate::signals::install(on_signal) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot install signal handlers: {e}");
                None
            }
        }
    } else {
        None
    };

    let (kind, error, verdict, code) = match refusal {
        Some(e) => {
            // Exit 1 as any failure to record; `stage_failed` keeps the record's schema.
            let code = e.exit_code();
            (OutcomeKind::StageFailed, Some(e), None, code)
        }
        None => execute(&req, &ctx, source, &run_id),
    };
    let stopped = kind == OutcomeKind::Interrupted || code != 0 && code != 3;
    let (kind, error, code) = match *lock(&caught) {
        Some(sig) if stopped => {
            let e = Error::Interrupted {
                signal: signal_name(sig),
            };
            let c = e.exit_code();
            (OutcomeKind::Interrupted, Some(e), c)
        }
        None if stopped && req.cancel.as_ref().is_some_and(CancelHandle::is_cancelled) => {
            let e = Error::Cancelled;
            let c = e.exit_code();
            (OutcomeKind::Interrupted, Some(e), c)
        }
        _ => (kind, error, code),
    };
    let result = match take() {
        Some(f) => {
            let mut r = f.finish(kind, error.as_ref(), verdict, code);
            if r.error.is_none() {
                r.error = error;
            }
            r
        }
        // The signal thread is writing the record and will exit the process.
        None => loop {
            std::thread::park();
        },
    };
    // The record is written: a signal now finds the dispositions the caller had.
    drop(signals);
    result
}

/// When the audit directory asked for cannot be opened (`e`): the fallback directory, when
/// one opens, and the error the refused run ends with.
fn fall_back(req: &RunRequest, e: snat_core::Error) -> (Option<AuditDir>, Error) {
    if !req.audit_fallback {
        return (None, Error::Audit(e));
    }
    let usage = req.refused.clone();
    match AuditDir::open_fallback(&req.audit_dir) {
        Ok(dir) => {
            let fallback = Ok(dir.path().to_path_buf());
            let error = Error::AuditRefused {
                fallback,
                usage,
                source: e,
            };
            (Some(dir), error)
        }
        Err(errors) => {
            let why: Vec<String> = errors
                .iter()
                .map(|f| match f {
                    snat_core::Error::AuditDirUnusable { dir, what, source } => {
                        format!("{}: {what}: {source}", dir.display())
                    }
                    other => crate::ctx::error_chain(other),
                })
                .collect();
            let why = if why.is_empty() {
                "no other directory to try".to_string()
            } else {
                why.join("; ")
            };
            let error = Error::AuditRefused {
                fallback: Err(why),
                usage,
                source: e,
            };
            (None, error)
        }
    }
}

/// A run that cannot be recorded anywhere: nothing runs, nothing is written, and
/// `--output json` still prints its one document.
fn unrecorded(req: &RunRequest, error: Error) -> RunResult {
    let secrets = audit::SecretValues::from_params(&req.params);
    let exit_code = error.exit_code();
    let message = secrets.redact(&crate::ctx::error_chain(&error));
    if req.output == OutputFormat::Json {
        let playbook = secrets.redact(&req.playbook.display().to_string());
        print_json(&crate::report::refused_json(
            (!playbook.is_empty()).then_some(playbook.as_str()),
            error.kind(),
            &message,
            exit_code,
        ));
    }
    RunResult {
        exit_code,
        error: Some(error),
        error_message: Some(message),
        audit_record: None,
        report: Report::default(),
    }
}

fn execute(
    req: &RunRequest,
    ctx: &Ctx,
    source: std::io::Result<Vec<u8>>,
    run_id: &str,
) -> (OutcomeKind, Option<Error>, Option<Verdict>, u8) {
    let fail = |e: Error| {
        let code = e.exit_code();
        let kind = if code == 2 {
            OutcomeKind::PlaybookError
        } else {
            OutcomeKind::StageFailed
        };
        (kind, Some(e), None, code)
    };
    if let Some(msg) = &req.refused {
        return fail(Error::Usage(msg.clone()));
    }
    let bytes = match source {
        Ok(b) => b,
        Err(e) => {
            return fail(Error::ReadPlaybook {
                path: req.playbook.clone(),
                source: e,
            });
        }
    };
    let script = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            return fail(Error::Playbook {
                path: req.playbook.clone(),
                line: 0,
                col: 0,
                message: format!(
                    "not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
                snippet: String::new(),
            });
        }
    };
    let engine = Arc::new(engine::build(ctx, &req.limits));
    let mut ast = match engine.compile(&script) {
        Ok(a) => a,
        Err(pe) => return fail(engine::parse_failure(&req.playbook, &script, &pe)),
    };
    // A --param the playbook never reads is a typo or a wrong playbook: the run would
    // silently use the default (a 10 s trace instead of 60, a remediation key left unset).
    let unread = crate::modules::params::unread(&ast, req.params.keys());
    if !unread.is_empty() {
        return fail(Error::Param(unread.join("\n")));
    }
    // On nodes: the playbook was checked for syntax and parameters here, and runs there.
    if let Some(f) = &req.fleet {
        let result = crate::fleet::run(ctx, f, &req.playbook, &script, run_id, &req.audit_dir);
        // The fleet stage's usage errors are about the command line (an --on-node naming no
        // node), not about a place in the playbook, which has not run.
        if let Err(e) = &result
            && let rhai::EvalAltResult::ErrorRuntime(v, _) = e.as_ref()
            && let Some(f) = v.clone().try_cast::<crate::ctx::StageFailure>()
            && f.usage
        {
            return fail(Error::Usage(f.message));
        }
        return classify(req, &script, ctx, result);
    }
    ast.set_source(req.playbook.display().to_string());
    let ast = Arc::new(ast);
    ctx.set_hooks(&engine, &ast);
    let result = engine.eval_ast::<rhai::Dynamic>(&ast);
    let outcome = classify(req, &script, ctx, result);
    if let (Some(e), false) = (&outcome.1, ctx.is_cancelled()) {
        let arg =
            serde_json::json!({ "kind": e.kind(), "message": crate::ctx::error_chain(e), "exit_code": outcome.3 });
        if let Ok(d) = rhai::serde::to_dynamic(&arg) {
            ctx.fire_hook("on_error", d);
        }
    }
    outcome
}

fn classify(
    req: &RunRequest,
    script: &str,
    ctx: &Ctx,
    result: Result<rhai::Dynamic, Box<rhai::EvalAltResult>>,
) -> (OutcomeKind, Option<Error>, Option<Verdict>, u8) {
    let fail = |e: Error| {
        let code = e.exit_code();
        let kind = if code == 2 {
            OutcomeKind::PlaybookError
        } else {
            OutcomeKind::StageFailed
        };
        (kind, Some(e), None, code)
    };
    match result {
        Ok(_) => {
            let verdict = ctx.report().verdict;
            let code = if verdict == Some(Verdict::PressureFound) { 3 } else { 0 };
            (OutcomeKind::Completed, None, verdict, code)
        }
        Err(err) => match engine::eval_failure(&req.playbook, script, &err) {
            Failure::Playbook(e) | Failure::Stage(e) => fail(e),
            Failure::Interrupted => (
                OutcomeKind::Interrupted,
                Some(Error::Interrupted { signal: "SIGINT" }),
                None,
                130,
            ),
        },
    }
}

/// Whether progress lines should be drawn on stderr.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}
