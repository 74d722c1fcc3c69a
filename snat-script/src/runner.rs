//! Running one playbook end to end: audit directory check, parameters, the sandboxed
//! engine, signals, the report on stdout, and exactly one audit record per run.
//!
//! The order matters. The audit directory is proven writable *before* anything runs (a
//! run without its record is not allowed). From then on every ending (success, playbook
//! error, stage failure, SIGINT, SIGTERM) goes through one finalizer, which writes the
//! record once: whoever gets there first (the main thread when the playbook returns, or
//! the signal thread when a stage does not notice the cancellation within the grace
//! period) writes it, and the other does nothing.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use snat_core::audit::{
    self, AuditDir, AuditRecord, HostInfo, Outcome, OutcomeKind, PlaybookInfo, SCHEMA_VERSION, ToolInfo, Verdict,
};

use crate::ctx::{Ctx, RunOptions};
use crate::engine::{self, Failure, Limits};
use crate::error::Error;
use crate::report::{Report, RunFacts};

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Aligned tables for a human.
    #[default]
    Table,
    /// Exactly one JSON document on stdout.
    Json,
}

/// Everything one run needs.
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
    /// How long stages get to notice SIGINT/SIGTERM before the record is written without
    /// them and the process exits.
    pub signal_grace: Duration,
    /// Run the playbook on cluster nodes as Jobs instead of locally (`--on-node`,
    /// `--all-nodes`): one `fleet::run` stage, see [`crate::fleet`].
    pub fleet: Option<crate::fleet::FleetOptions>,
    /// A command-line error found before the run ([`Error::Usage`]): the run writes its
    /// audit record (outcome `playbook_error`, exit 2) and runs nothing.
    pub refused: Option<String>,
}

/// What a run ended with.
#[derive(Debug)]
pub struct RunResult {
    /// Exit code.
    pub exit_code: u8,
    /// The error, for non-zero codes other than 3.
    pub error: Option<Error>,
    /// Path of the audit record, when it was written.
    pub audit_record: Option<PathBuf>,
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
        self.record.stages = self.ctx.stages();
        self.record.actions = self.ctx.actions();
        self.record.outcome = Outcome {
            kind,
            message: error.map(|e| e.to_string()),
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
        let written = self.dir.write(&mut self.record);
        let (audit_path, exit_code, audit_err) = match written {
            Ok(p) => (Some(p), exit_code, None),
            Err(e) => (None, 1, Some(Error::Audit(e))),
        };
        let report = self.ctx.report().clone();
        if let Some(path) = &self.html {
            let audit_s = audit_path.as_ref().map(|p| p.display().to_string());
            let facts = RunFacts {
                playbook: &self.record.playbook.path,
                run_id: &self.record.run_id,
                audit_record: audit_s.as_deref(),
                exit_code,
            };
            match std::fs::write(path, crate::html::render(&report, &facts)) {
                Ok(()) => eprintln!("HTML report: {}", path.display()),
                Err(e) => eprintln!(
                    "snat-run: warning: cannot write the HTML report {}: {e}",
                    path.display()
                ),
            }
        }
        print_report(
            &report,
            self.output,
            &self.record,
            audit_path.as_deref(),
            exit_code,
            error.or(audit_err.as_ref()),
        );
        RunResult {
            exit_code,
            error: audit_err.or(None),
            audit_record: audit_path,
        }
    }
}

fn print_report(
    report: &Report,
    output: OutputFormat,
    record: &AuditRecord,
    audit: Option<&Path>,
    exit_code: u8,
    error: Option<&Error>,
) {
    let audit_s = audit.map(|p| p.display().to_string());
    let facts = RunFacts {
        playbook: &record.playbook.path,
        run_id: &record.run_id,
        audit_record: audit_s.as_deref(),
        exit_code,
    };
    let mut out = std::io::stdout().lock();
    match output {
        OutputFormat::Json => {
            let mut doc = report.to_json(&facts);
            if let Some(e) = error {
                doc["error"] = serde_json::json!({ "kind": e.kind(), "message": e.to_string() });
            }
            let _ = writeln!(out, "{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        OutputFormat::Table => {
            if error.is_none() || !report.sections.is_empty() || report.verdict.is_some() {
                let _ = write!(out, "{}", report.to_text(&facts));
            } else if let Some(a) = &audit_s {
                eprintln!("audit record: {a}");
            }
        }
    }
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

/// Signals a run reacts to.
const SIGNALS: [i32; 2] = [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM];

fn signal_name(sig: i32) -> &'static str {
    if sig == signal_hook::consts::SIGTERM {
        "SIGTERM"
    } else {
        "SIGINT"
    }
}

/// Run one playbook. Prints the report on stdout; returns the exit code.
pub fn run(req: RunRequest) -> RunResult {
    let started_at = audit::now_rfc3339();
    let dir = match AuditDir::open(&req.audit_dir) {
        Ok(d) => d,
        Err(e) => {
            return RunResult {
                exit_code: 1,
                error: Some(Error::Audit(e)),
                audit_record: None,
            };
        }
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
        move || f.lock().unwrap_or_else(|p| p.into_inner()).take()
    };

    // Signals: set the cancel flag; if the run has not ended within the grace period (a
    // stage blocked in a read, say), write the record from here and exit.
    let caught: Arc<Mutex<Option<i32>>> = Arc::new(Mutex::new(None));
    let mut signals = match signal_hook::iterator::Signals::new(SIGNALS) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot install signal handlers: {e}");
            None
        }
    };
    let handle = signals.as_ref().map(|s| s.handle());
    if let Some(mut sigs) = signals.take() {
        let cancel = ctx.cancel_flag();
        let window = ctx.window();
        let caught = caught.clone();
        let take = take.clone();
        let grace = req.signal_grace;
        std::thread::spawn(move || {
            // A first SIGINT during an observation window (a live trace, a log read from a
            // pipe) only ends the window, as Ctrl-C ends tcptracer: the playbook reports.
            let mut sigs = sigs
                .forever()
                .skip_while(|&sig| {
                    let ended = sig == signal_hook::consts::SIGINT && window.end_by_signal();
                    if ended {
                        eprintln!(
                            "\nsnat-run: SIGINT received: ending the observation window now; the playbook goes on to report (SIGINT again stops the run)"
                        );
                    }
                    ended
                });
            if let Some(sig) = sigs.next() {
                *caught.lock().unwrap_or_else(|p| p.into_inner()) = Some(sig);
                cancel.store(true, std::sync::atomic::Ordering::SeqCst);
                window.stop();
                eprintln!(
                    "snat-run: {} received, stopping (the audit record will be written)",
                    signal_name(sig)
                );
                std::thread::sleep(grace);
                if let Some(f) = take() {
                    let err = Error::Interrupted {
                        signal: signal_name(sig),
                    };
                    let code = err.exit_code();
                    let r = f.finish(OutcomeKind::Interrupted, Some(&err), None, code);
                    eprintln!("snat-run: {err}");
                    std::process::exit(i32::from(r.exit_code));
                }
            }
        });
    }

    let (kind, error, verdict, code) = execute(&req, &ctx, source, &run_id);
    let (kind, error, code) = match *caught.lock().unwrap_or_else(|p| p.into_inner()) {
        Some(sig) if kind == OutcomeKind::Interrupted || code != 0 && code != 3 => {
            let e = Error::Interrupted {
                signal: signal_name(sig),
            };
            let c = e.exit_code();
            (OutcomeKind::Interrupted, Some(e), c)
        }
        _ => (kind, error, code),
    };
    if let Some(h) = handle {
        h.close();
    }
    match take() {
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
        return classify(req, &script, ctx, result);
    }
    ast.set_source(req.playbook.display().to_string());
    let ast = Arc::new(ast);
    ctx.set_hooks(&engine, &ast);
    let result = engine.eval_ast::<rhai::Dynamic>(&ast);
    let outcome = classify(req, &script, ctx, result);
    if let (Some(e), false) = (&outcome.1, ctx.is_cancelled()) {
        let arg = serde_json::json!({ "kind": e.kind(), "message": e.to_string(), "exit_code": outcome.3 });
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
