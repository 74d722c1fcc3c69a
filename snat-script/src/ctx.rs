//! The run context shared by every stage binding: options, parameters, the stage log
//! that becomes the audit record's `stages`, remediation actions, cancellation, and the
//! playbook's report.
//!
//! Every Rhai function that does work (reads a file, traces, talks to an API) is a
//! *stage* and must run its body through [`Ctx::stage`]: that records the call (name,
//! arguments, duration, item count, outcome) and turns failures into script errors that the
//! runner can tell apart from playbook mistakes (exit 1 versus exit 2).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Instant;

use rhai::{Dynamic, EvalAltResult, Position};
use snat_core::audit::{self, ActionRecord, StageCall, StageOutcome};

use crate::error::StageCause;
use crate::report::Report;

/// Options of a run that stages may consult.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `--dry-run`: plan actions, print the exact requests, change nothing.
    pub dry_run: bool,
    /// Root of the host's /proc (`--host-proc`, default `/proc`).
    pub host_proc: PathBuf,
    /// Remediation actions allowed with `--allow`.
    pub allow: BTreeSet<String>,
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`.
    pub kube_context: Option<String>,
    /// Whether to draw progress on stderr (stderr is a terminal and not `--quiet`).
    pub progress: bool,
    /// `--quiet`: no informational lines on stderr (progress, where the HTML report went,
    /// the playbook's `log` lines, the nodes `--all-nodes` skips); warnings, errors and the
    /// playbook's `warn` and `print` lines still go there.
    pub quiet: bool,
    /// The run's audit directory (`--audit-dir`), set by the runner; `None` outside a run,
    /// where readers of earlier records use [`snat_core::audit::default_dir`].
    pub audit_dir: Option<PathBuf>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            dry_run: false,
            host_proc: PathBuf::from("/proc"),
            allow: BTreeSet::new(),
            kubeconfig: None,
            kube_context: None,
            progress: false,
            quiet: false,
            audit_dir: None,
        }
    }
}

/// Why a stage failed.
#[derive(Debug)]
pub enum StageError {
    /// The playbook passed something that cannot work (bad field, bad CIDR, missing
    /// option): a playbook error, exit 2.
    Usage(String),
    /// The stage failed at run time (I/O, permissions, API): exit 1.
    Failed(Box<dyn std::error::Error + Send + Sync>),
    /// The run was cancelled (SIGINT/SIGTERM) while the stage ran.
    Interrupted,
}

impl StageError {
    /// A run-time failure from any error.
    pub fn failed(e: impl std::error::Error + Send + Sync + 'static) -> StageError {
        StageError::Failed(Box::new(e))
    }
}

impl From<snat_core::Error> for StageError {
    fn from(e: snat_core::Error) -> Self {
        use snat_core::Error as E;
        match e {
            E::InvalidArgument(_)
            | E::FieldUnavailable { .. }
            | E::GroupingNotKept { .. }
            | E::InvalidCidr { .. }
            | E::UnknownRangeKind { .. } => StageError::Usage(e.to_string()),
            other => StageError::Failed(Box::new(other)),
        }
    }
}

/// The value a failed stage raises inside the script engine (as the payload of
/// `ErrorRuntime`), so the runner can find it under any wrapping.
#[derive(Debug, Clone)]
pub struct StageFailure {
    /// Stage name.
    pub stage: String,
    /// The error and its causes, `: `-joined.
    pub message: String,
    /// The error itself, for a run-time failure ([`StageError::Failed`]).
    pub cause: Option<StageCause>,
    /// True for [`StageError::Usage`] (exit 2), false for run-time failures (exit 1).
    pub usage: bool,
    /// True when the run was interrupted.
    pub interrupted: bool,
}

impl std::fmt::Display for StageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.stage, self.message)
    }
}

/// Render an error with its whole `source()` chain (see [`snat_core::error::chain`]).
pub use snat_core::error::chain as error_chain;

/// The playbook's hook functions (`on_finding`, `on_stage_end`, `on_error`), called by the
/// runner as things happen.
struct HookSet {
    engine: Weak<rhai::Engine>,
    ast: Arc<rhai::AST>,
    defined: BTreeSet<String>,
}

/// A stage that has started and not yet returned.
struct Running {
    id: u64,
    name: String,
    args: serde_json::Value,
    started_at: String,
    t0: Instant,
}

/// The hooks a playbook may define, each taking one map argument.
pub const HOOKS: [&str; 3] = ["on_finding", "on_stage_end", "on_error"];

struct Inner {
    kube: Mutex<Option<snat_core::k8s::Kube>>,
    hooks: Mutex<Option<HookSet>>,
    in_hook: AtomicBool,
    options: RunOptions,
    params: BTreeMap<String, String>,
    /// The secret values among `params`, kept out of the debug log of stage arguments.
    secrets: audit::SecretValues,
    stages: Mutex<Vec<StageCall>>,
    running: Mutex<Vec<Running>>,
    next_stage: AtomicU64,
    actions: Mutex<Vec<ActionRecord>>,
    cancel: Arc<AtomicBool>,
    window: Arc<Window>,
    report: Mutex<Report>,
    runtime: OnceLock<Result<tokio::runtime::Runtime, String>>,
}

/// An observation window: the part of a stage that watches the node (a live trace, a
/// tcptracer log read from a pipe) and that an operator ends with Ctrl-C, as with
/// tcptracer itself. While one is open, the first SIGINT ends it and the playbook goes on
/// to report what was seen; a second SIGINT, or SIGTERM, stops the run.
#[derive(Debug, Default)]
pub struct Window {
    open: AtomicBool,
    end: Arc<AtomicBool>,
}

impl Window {
    /// End the open window, if one is open and not yet ended: what the first SIGINT does.
    /// Returns whether it did.
    pub fn end_by_signal(&self) -> bool {
        self.open.load(Ordering::SeqCst) && !self.end.swap(true, Ordering::SeqCst)
    }

    /// Stop whatever watches: the run is being cancelled.
    pub fn stop(&self) {
        self.end.store(true, Ordering::SeqCst);
    }
}

/// An open [`Window`]; closes it on drop.
#[derive(Debug)]
pub struct WindowGuard(Arc<Window>);

impl WindowGuard {
    /// The flag that ends the watching: set by the first SIGINT or by a cancellation.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.end.clone()
    }

    /// Whether the window has been ended.
    pub fn ended(&self) -> bool {
        self.0.end.load(Ordering::SeqCst)
    }
}

impl Drop for WindowGuard {
    fn drop(&mut self) {
        self.0.open.store(false, Ordering::SeqCst);
    }
}

/// The shared run context. Cheap to clone; every clone sees the same state.
#[derive(Clone)]
pub struct Ctx(Arc<Inner>);

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("options", &self.0.options)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ctx {
    /// A new context.
    pub fn new(options: RunOptions, params: BTreeMap<String, String>) -> Ctx {
        Ctx(Arc::new(Inner {
            kube: Mutex::new(None),
            hooks: Mutex::new(None),
            in_hook: AtomicBool::new(false),
            options,
            secrets: audit::SecretValues::from_params(&params),
            params,
            stages: Mutex::new(Vec::new()),
            running: Mutex::new(Vec::new()),
            next_stage: AtomicU64::new(0),
            actions: Mutex::new(Vec::new()),
            cancel: Arc::new(AtomicBool::new(false)),
            window: Arc::new(Window::default()),
            report: Mutex::new(Report::default()),
            runtime: OnceLock::new(),
        }))
    }

    /// The run's options.
    pub fn options(&self) -> &RunOptions {
        &self.0.options
    }

    /// The `--param` values.
    pub fn params(&self) -> &BTreeMap<String, String> {
        &self.0.params
    }

    /// `text` without the values of the run's secret parameters (see
    /// [`audit::SecretValues::redact`]): what a stage or the playbook writes to stderr
    /// keeps them out, as the report and the audit record do.
    pub fn redact(&self, text: &str) -> String {
        self.0.secrets.redact(text)
    }

    /// The flag SIGINT/SIGTERM set. Long-running stages poll [`Ctx::is_cancelled`].
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.0.cancel.clone()
    }

    /// Whether the run was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancel.load(Ordering::SeqCst)
    }

    /// The run's observation window (see [`Window`]), for the signal handler.
    pub fn window(&self) -> Arc<Window> {
        self.0.window.clone()
    }

    /// Open an observation window: until the guard is dropped, a first SIGINT (Ctrl-C)
    /// ends the window instead of stopping the run. A stage that traces or reads a stream
    /// stops when [`WindowGuard::flag`] is set (by that SIGINT, or by a cancellation).
    pub fn open_window(&self) -> WindowGuard {
        let w = &self.0.window;
        w.end.store(self.is_cancelled(), Ordering::SeqCst);
        w.open.store(true, Ordering::SeqCst);
        WindowGuard(w.clone())
    }

    /// Run one stage: record it in the stage log and convert its failure into a script
    /// error. `f` returns the value and, where meaningful, how many items it produced.
    pub fn stage<T>(
        &self,
        name: &str,
        args: serde_json::Value,
        f: impl FnOnce() -> Result<(T, Option<u64>), StageError>,
    ) -> Result<T, Box<EvalAltResult>> {
        let started_at = audit::now_rfc3339();
        let t0 = Instant::now();
        // Logged as the audit record has them: a -vv log is no place for a secret either.
        tracing::debug!(
            stage = name,
            args = %self.0.secrets.redact_json(&audit::redact_json(&args)),
            "stage start"
        );
        let id = self.0.next_stage.fetch_add(1, Ordering::SeqCst);
        lock(&self.0.running).push(Running {
            id,
            name: name.to_string(),
            args: args.clone(),
            started_at: started_at.clone(),
            t0,
        });
        let res = if self.is_cancelled() {
            Err(StageError::Interrupted)
        } else {
            f()
        };
        lock(&self.0.running).retain(|r| r.id != id);
        let duration_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let (outcome, items, error, ret) = match res {
            Ok((v, items)) => (StageOutcome::Ok, items, None, Ok(v)),
            Err(e) => {
                let (message, usage, interrupted, cause) = match e {
                    StageError::Usage(m) => (m, true, false, None),
                    StageError::Failed(err) => (error_chain(err.as_ref()), false, false, Some(StageCause::from(err))),
                    StageError::Interrupted => ("interrupted".to_string(), false, true, None),
                };
                let failure = StageFailure {
                    stage: name.to_string(),
                    message: message.clone(),
                    cause,
                    usage,
                    interrupted,
                };
                let outcome = if interrupted {
                    StageOutcome::Interrupted
                } else {
                    StageOutcome::Failed
                };
                (
                    outcome,
                    None,
                    Some(message),
                    Err(Box::new(EvalAltResult::ErrorRuntime(
                        Dynamic::from(failure),
                        Position::NONE,
                    ))),
                )
            }
        };
        tracing::debug!(stage = name, duration_ms, ?outcome, "stage end");
        let call = StageCall {
            name: name.to_string(),
            args,
            started_at,
            duration_ms,
            items,
            outcome,
            error,
        };
        let hook_arg = rhai::serde::to_dynamic(&call).ok();
        lock(&self.0.stages).push(call);
        if let Some(arg) = hook_arg {
            self.fire_hook("on_stage_end", arg);
        }
        ret
    }

    /// Tell the context which engine and script run, so hooks can be called. Only hooks
    /// the script defines (with one parameter) are called.
    pub fn set_hooks(&self, engine: &Arc<rhai::Engine>, ast: &Arc<rhai::AST>) {
        let defined = ast
            .iter_functions()
            .filter(|f| HOOKS.contains(&f.name) && f.params.len() == 1)
            .map(|f| f.name.to_string())
            .collect();
        *lock(&self.0.hooks) = Some(HookSet {
            engine: Arc::downgrade(engine),
            ast: ast.clone(),
            defined,
        });
    }

    /// Whether the playbook defines a hook.
    pub fn has_hook(&self, name: &str) -> bool {
        lock(&self.0.hooks).as_ref().is_some_and(|h| h.defined.contains(name))
    }

    /// Call the playbook's hook `name` with `arg`, if it defines it. Hooks do not fire
    /// from inside hooks. A failing hook is reported on stderr and does not stop the run.
    pub fn fire_hook(&self, name: &str, arg: rhai::Dynamic) {
        let (engine, ast) = {
            let g = lock(&self.0.hooks);
            let Some(h) = g.as_ref().filter(|h| h.defined.contains(name)) else {
                return;
            };
            let Some(engine) = h.engine.upgrade() else { return };
            (engine, h.ast.clone())
        };
        if self.0.in_hook.swap(true, Ordering::SeqCst) {
            return;
        }
        // eval_ast(false): call the function only, never re-run the playbook's top level.
        let opts = rhai::CallFnOptions::new().eval_ast(false).rewind_scope(true);
        let r = engine.call_fn_with_options::<rhai::Dynamic>(opts, &mut rhai::Scope::new(), &ast, name, (arg,));
        self.0.in_hook.store(false, Ordering::SeqCst);
        if let Err(e) = r {
            let e = self.redact(&e.to_string());
            eprintln!("{}: warning: hook {name} failed: {e}", crate::program_name());
        }
    }

    /// A snapshot of the stage log.
    pub fn stages(&self) -> Vec<StageCall> {
        lock(&self.0.stages).clone()
    }

    /// The stage log with the stages still running appended, outcome `interrupted`, each
    /// with its arguments and its duration so far: what the audit record holds when a run
    /// is stopped while a stage blocks (a read of a pipe that never ends), and the record
    /// is written without waiting for the stage to return.
    pub fn stages_at_interrupt(&self) -> Vec<StageCall> {
        let mut stages = self.stages();
        stages.extend(lock(&self.0.running).iter().map(|r| StageCall {
            name: r.name.clone(),
            args: r.args.clone(),
            started_at: r.started_at.clone(),
            duration_ms: r.t0.elapsed().as_secs_f64() * 1000.0,
            items: None,
            outcome: StageOutcome::Interrupted,
            error: Some("interrupted".to_string()),
        }));
        stages
    }

    /// Record a remediation action (planned or applied).
    pub fn record_action(&self, action: ActionRecord) {
        lock(&self.0.actions).push(action);
    }

    /// A snapshot of the actions.
    pub fn actions(&self) -> Vec<ActionRecord> {
        lock(&self.0.actions).clone()
    }

    /// The playbook's report, for reading or adding to.
    pub fn report(&self) -> MutexGuard<'_, Report> {
        lock(&self.0.report)
    }

    /// The Kubernetes client if one was connected already (no connection is attempted).
    pub fn kube_if_connected(&self) -> Option<snat_core::k8s::Kube> {
        lock(&self.0.kube).clone()
    }

    /// The run's Kubernetes client (`--kubeconfig`, `--context`), connected on first use and
    /// shared by every stage that talks to the API.
    pub fn kube(&self) -> Result<snat_core::k8s::Kube, StageError> {
        let mut g = lock(&self.0.kube);
        if let Some(k) = g.as_ref() {
            return Ok(k.clone());
        }
        let opts = snat_core::k8s::KubeOptions {
            kubeconfig: self.options().kubeconfig.clone(),
            context: self.options().kube_context.clone(),
            ..Default::default()
        };
        let k = self.block_on(snat_core::k8s::Kube::connect(&opts))??;
        *g = Some(k.clone());
        Ok(k)
    }

    /// Run a future to completion on the run's tokio runtime (created on first use), for
    /// async stages such as Kubernetes API calls. Must not be called from inside a tokio
    /// runtime.
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> Result<F::Output, StageError> {
        let rt = self.0.runtime.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the async runtime: {e}"))
        });
        match rt {
            Ok(rt) => Ok(rt.block_on(fut)),
            Err(m) => Err(StageError::Failed(m.clone().into())),
        }
    }
}
