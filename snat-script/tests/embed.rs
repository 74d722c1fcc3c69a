//! The runner embedded in another program, in process: `snat_script::runner::run` returns
//! the report and prints only what it is asked to, leaves the program's signal handling
//! alone unless asked to handle signals, puts it back when it was, and can be cancelled
//! from another thread.
//!
//! Signal dispositions and file descriptor 1 are process-wide, so the tests that touch
//! them take [`serial`].

use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use snat_core::audit::Verdict;
use snat_script::Error;
use snat_script::engine::Limits;
use snat_script::runner::{self, CancelHandle, OutputFormat, RunRequest, RunResult};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// SIGTERMs the host program's own handler saw.
static HOST_TERMS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn host_handler(_: libc::c_int) {
    HOST_TERMS.fetch_add(1, Ordering::SeqCst);
}

fn host() -> libc::sighandler_t {
    host_handler as extern "C" fn(libc::c_int) as libc::sighandler_t
}

/// The handler of `sig` now.
fn disposition(sig: libc::c_int) -> libc::sighandler_t {
    // SAFETY: a zeroed sigaction to be filled; no new action.
    let mut cur: libc::sigaction = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::sigaction(sig, std::ptr::null(), &mut cur) }, 0);
    cur.sa_sigaction
}

/// Make `handler` the handler of `sig`.
fn set_disposition(sig: libc::c_int, handler: libc::sighandler_t) {
    // SAFETY: a zeroed sigaction (empty mask, no flags) with the handler set.
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = handler;
    assert_eq!(unsafe { libc::sigaction(sig, &new, std::ptr::null_mut()) }, 0);
}

/// The host program: SIGINT at its default (the process dies), SIGTERM to its own handler.
/// Put back to the defaults on drop.
struct HostSignals;

impl HostSignals {
    fn install() -> HostSignals {
        set_disposition(libc::SIGINT, libc::SIG_DFL);
        set_disposition(libc::SIGTERM, host());
        HostSignals
    }
}

impl Drop for HostSignals {
    fn drop(&mut self) {
        set_disposition(libc::SIGTERM, libc::SIG_DFL);
    }
}

fn raise_sigterm() {
    // SAFETY: kill(2) on this process, whose SIGTERM disposition the test set.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().unwrap())
    }

    fn playbook(&self, text: &str) -> PathBuf {
        let p = self.0.path().join("p.rhai");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn audit(&self) -> PathBuf {
        self.0.path().join("audit")
    }
}

/// A playbook that runs until it is stopped.
const ENDLESS: &str = "let i = 0;\nloop { i += 1; }\n";

fn endless(dir: &Dir) -> RunRequest {
    let mut req = RunRequest::new(dir.playbook(ENDLESS), dir.audit());
    req.limits = Limits {
        max_operations: 0,
        ..Limits::default()
    };
    req
}

/// What `f` writes on stdout (file descriptor 1), and what it returns. stdout stays locked
/// meanwhile, so the test harness's own lines wait.
fn stdout_of<T>(f: impl FnOnce() -> T) -> (T, String) {
    let mut file = tempfile::tempfile().unwrap();
    let mut lock = std::io::stdout().lock();
    lock.flush().unwrap();
    // SAFETY: dup/dup2/close on descriptor 1 and descriptors this function owns.
    let saved = unsafe { libc::dup(1) };
    assert!(saved >= 0);
    assert_eq!(unsafe { libc::dup2(file.as_raw_fd(), 1) }, 1);
    let r = f();
    lock.flush().unwrap();
    assert_eq!(unsafe { libc::dup2(saved, 1) }, 1);
    unsafe { libc::close(saved) };
    drop(lock);
    let mut out = String::new();
    file.rewind().unwrap();
    file.read_to_string(&mut out).unwrap();
    (r, out)
}

/// A playbook that reports, with the verdict "SNAT pressure found" (exit 3).
const REPORTS: &str = r#"report::title("Embedded");
report::table("ports", ["pod", "connects"], [["web-1", 900]]);
report::verdict("pressure_found", "web-1 holds 900 ports");
"#;

/// Whatever the output format, the caller gets the report; stdout carries only what the
/// format says: nothing at all for `Quiet`.
#[rstest::rstest]
#[case::quiet(OutputFormat::Quiet, "")]
#[case::table(OutputFormat::Table, "Embedded\n========")]
#[case::json(OutputFormat::Json, "\"schema\": \"snat.report/v1\"")]
fn the_result_holds_the_report_and_stdout_only_what_the_format_says(#[case] output: OutputFormat, #[case] want: &str) {
    let _serial = serial();
    let dir = Dir::new();
    let mut req = RunRequest::new(dir.playbook(REPORTS), dir.audit());
    req.output = output;
    let (r, out): (RunResult, String) = stdout_of(|| runner::run(req));
    assert_eq!(r.exit_code, 3, "{:?}", r.error);
    assert_eq!(r.report.title.as_deref(), Some("Embedded"));
    assert_eq!(r.report.verdict, Some(Verdict::PressureFound));
    assert_eq!(r.report.summary.as_deref(), Some("web-1 holds 900 ports"));
    assert_eq!(r.report.sections.len(), 1);
    assert!(r.audit_record.is_some());
    if want.is_empty() {
        assert_eq!(out, "", "{output:?} prints nothing on stdout");
    } else {
        assert!(out.contains(want), "{output:?}: want {want:?} in {out:?}");
    }
    if output == OutputFormat::Json {
        let doc: Value = serde_json::from_str(&out).expect("one JSON document");
        assert_eq!(doc["verdict"], "pressure_found");
    }
}

/// An audit directory that cannot be opened, with the fallback turned off: no run, no
/// record, exit 1, and with `Json` still exactly one document on stdout, which says why
/// (with `Quiet`, nothing).
#[rstest::rstest]
#[case::json(OutputFormat::Json)]
#[case::quiet(OutputFormat::Quiet)]
fn an_unusable_audit_dir_keeps_the_output_contract(#[case] output: OutputFormat) {
    let _serial = serial();
    let dir = Dir::new();
    let file = dir.0.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let mut req = RunRequest::new(dir.playbook(REPORTS), file.join("audit"));
    req.output = output;
    req.audit_fallback = false;
    let (r, out) = stdout_of(|| runner::run(req));
    assert_eq!(r.exit_code, 1);
    assert!(matches!(r.error, Some(Error::Audit(_))), "{:?}", r.error);
    assert!(r.error_message.as_deref().unwrap().contains("is not usable"), "{r:?}");
    assert!(r.audit_record.is_none());
    assert_eq!(r.report, snat_script::report::Report::default());
    if output == OutputFormat::Quiet {
        assert_eq!(out, "");
        return;
    }
    let doc: Value = serde_json::from_str(&out).expect("exactly one JSON document");
    assert_eq!(doc["error"]["kind"], "audit_unwritable", "{doc}");
    assert!(
        doc["error"]["message"].as_str().unwrap().contains("is not usable"),
        "{doc}"
    );
    assert_eq!(doc["exit_code"], 1);
    assert_eq!(doc["run_id"], Value::Null);
    assert!(doc["playbook"].as_str().unwrap().ends_with("p.rhai"), "{doc}");
}

/// What a run returns keeps a secret parameter's value out as what it prints does: the
/// report and the error's message; the error itself is the program's to match on.
#[test]
fn the_report_and_message_returned_keep_secret_values_out() {
    let dir = Dir::new();
    let mut req = RunRequest::new(
        dir.playbook("let t = param(\"password\");\nreport::title(\"for \" + t);\nthrow \"bad \" + t;\n"),
        dir.audit(),
    );
    req.params.insert("password".into(), "Hunter2Hunter2".into());
    let r = runner::run(req);
    assert_eq!(r.exit_code, 2, "{:?}", r.error);
    assert_eq!(r.report.title.as_deref(), Some("for <redacted>"));
    let message = r.error_message.as_deref().unwrap();
    assert!(
        message.contains("bad <redacted>") && !message.contains("Hunter2"),
        "{message}"
    );
    assert!(matches!(r.error, Some(Error::Playbook { .. })), "{:?}", r.error);
}

fn record(path: Option<&Path>) -> Value {
    let path = path.expect("an audit record was written");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// An embedding program that handles SIGTERM itself keeps doing so during a run that does
/// not handle signals; the run installs nothing, is stopped with its cancel handle (not by
/// the signal, not by exiting the process) and says so.
#[test]
fn a_run_that_does_not_handle_signals_leaves_them_to_the_host() {
    let _serial = serial();
    let _host = HostSignals::install();
    let dir = Dir::new();
    let cancel = CancelHandle::new();
    let mut req = endless(&dir);
    req.cancel = Some(cancel.clone());
    assert!(!req.handle_signals, "RunRequest::new leaves signals alone");
    let before = HOST_TERMS.load(Ordering::SeqCst);
    let during = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let seen = (disposition(libc::SIGINT), disposition(libc::SIGTERM));
        raise_sigterm();
        std::thread::sleep(Duration::from_millis(200));
        cancel.cancel();
        seen
    });
    let r = runner::run(req);
    let (int_during, term_during) = during.join().unwrap();
    assert_eq!(int_during, libc::SIG_DFL, "no SIGINT handler during the run");
    assert_eq!(term_during, host(), "the host's SIGTERM handler stays during the run");
    assert_eq!(
        HOST_TERMS.load(Ordering::SeqCst),
        before + 1,
        "the host got its SIGTERM"
    );
    assert_eq!(r.exit_code, 130, "{:?}", r.error);
    assert!(matches!(r.error, Some(Error::Cancelled)), "{:?}", r.error);
    let rec = record(r.audit_record.as_deref());
    assert_eq!(rec["outcome"]["kind"], "interrupted");
    assert_eq!(rec["exit_code"], 130);
    assert_eq!(disposition(libc::SIGINT), libc::SIG_DFL);
    assert_eq!(disposition(libc::SIGTERM), host());
}

/// A run that handles signals (as snat-run's) is stopped by SIGTERM, returns (the playbook
/// noticed within the grace period: no exit), and puts back the dispositions it replaced:
/// SIGINT kills the process again, SIGTERM reaches the host's handler again.
#[test]
fn a_run_that_handles_signals_puts_the_previous_dispositions_back() {
    let _serial = serial();
    let _host = HostSignals::install();
    let dir = Dir::new();
    let mut req = endless(&dir);
    req.handle_signals = true;
    let during = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(300));
        let seen = (disposition(libc::SIGINT), disposition(libc::SIGTERM));
        raise_sigterm();
        seen
    });
    let r = runner::run(req);
    let (int_during, term_during) = during.join().unwrap();
    assert_ne!(int_during, libc::SIG_DFL, "the run handles SIGINT while it runs");
    assert_ne!(term_during, host(), "the run handles SIGTERM while it runs");
    assert_eq!(r.exit_code, 143, "{:?}", r.error);
    assert!(
        matches!(r.error, Some(Error::Interrupted { signal: "SIGTERM" })),
        "{:?}",
        r.error
    );
    assert_eq!(record(r.audit_record.as_deref())["outcome"]["kind"], "interrupted");
    assert_eq!(disposition(libc::SIGINT), libc::SIG_DFL, "SIGINT is not left ignored");
    assert_eq!(disposition(libc::SIGTERM), host(), "the host's SIGTERM handler is back");
}

/// A handle cancelled before the run starts stops it before its first stage; the run is
/// still recorded.
#[test]
fn a_run_cancelled_before_it_starts_runs_nothing() {
    let dir = Dir::new();
    let cancel = CancelHandle::new();
    cancel.cancel();
    let mut req = RunRequest::new(
        dir.playbook("let t = tcptracer::read(\"/nonexistent/t.log\");\nreport::verdict(\"clear\", \"\");\n"),
        dir.audit(),
    );
    req.cancel = Some(cancel);
    let r = runner::run(req);
    assert_eq!(r.exit_code, 130, "{:?}", r.error);
    assert!(matches!(r.error, Some(Error::Cancelled)), "{:?}", r.error);
    let rec = record(r.audit_record.as_deref());
    assert_eq!(rec["outcome"]["kind"], "interrupted");
    assert_eq!(rec["stages"], serde_json::json!([]), "no stage ran");
}

/// A stage failure keeps its cause for the embedding program: `source()` is the stage's
/// own error, and the messages (the record's, the chain) still name it.
#[test]
fn a_stage_failure_keeps_its_cause() {
    let dir = Dir::new();
    let req = RunRequest::new(
        dir.playbook("let t = tcptracer::read(\"/nonexistent/t.log\");\n"),
        dir.audit(),
    );
    let r = runner::run(req);
    assert_eq!(r.exit_code, 1, "{:?}", r.error);
    let e = r.error.as_ref().expect("an error");
    assert!(
        matches!(e, Error::Stage { stage, .. } if stage == "tcptracer::read"),
        "{e:?}"
    );
    let cause = std::error::Error::source(e).expect("the stage's error");
    assert!(
        matches!(
            cause.downcast_ref::<snat_core::Error>(),
            Some(snat_core::Error::Io { .. })
        ),
        "{cause:?}"
    );
    let chain = snat_script::ctx::error_chain(e);
    assert!(
        chain.contains("stage tcptracer::read failed: cannot open tcptracer log /nonexistent/t.log"),
        "{chain}"
    );
    let rec = record(r.audit_record.as_deref());
    assert_eq!(rec["outcome"]["message"], chain.as_str());
}
