//! The runner embedded in another program, in process: `snat_script::runner::run` leaves the
//! program's signal handling alone unless asked to handle signals, puts it back when it
//! was, and can be cancelled from another thread.
//!
//! Signal dispositions are process-wide, so the tests that touch them take [`serial`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use snat_script::Error;
use snat_script::engine::Limits;
use snat_script::runner::{self, CancelHandle, RunRequest};

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
