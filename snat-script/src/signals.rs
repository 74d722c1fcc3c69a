//! SIGINT and SIGTERM handlers for the length of one run, for a program that lets the run
//! handle them (`snat-run`; see [`crate::runner::RunRequest::handle_signals`]).
//!
//! The handlers are installed with `sigaction(2)` and the dispositions they replace are put
//! back when the [`Installed`] guard drops, whatever they were: the default (the process
//! dies), ignored, or a handler of the host program's own. signal-hook's registry cannot do
//! that: unregistering its last action leaves its handler in place, and the process then
//! ignores the signal.
//!
//! The handler only counts signals (async-signal-safe atomics); a thread polls the counts
//! and calls the run's callback with each signal, in the order SIGINT, SIGTERM when both
//! came between two polls. One run at a time in a process may hold the handlers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// The signals a run handles, in the order they are delivered to the callback.
pub(crate) const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// How often the thread looks at the counts.
const POLL: Duration = Duration::from_millis(20);

/// Signals received since the handlers were installed, per entry of [`SIGNALS`].
static COUNTS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// Whether a run holds the handlers.
static HELD: AtomicBool = AtomicBool::new(false);

extern "C" fn count_signal(sig: libc::c_int) {
    if let Some(i) = SIGNALS.iter().position(|&s| s == sig) {
        COUNTS[i].fetch_add(1, Ordering::SeqCst);
    }
}

/// The handlers of one run; the previous dispositions come back on drop.
pub(crate) struct Installed {
    previous: Vec<(libc::c_int, libc::sigaction)>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installed").finish_non_exhaustive()
    }
}

/// The current disposition of `sig`, replaced by `new` when given.
fn sigaction(sig: libc::c_int, new: Option<&libc::sigaction>) -> std::io::Result<libc::sigaction> {
    // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask, no flags).
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    let new = new.map_or(std::ptr::null(), |n| n as *const libc::sigaction);
    // SAFETY: valid pointers to sigaction structs (or null for `new`).
    if unsafe { libc::sigaction(sig, new, &mut old) } == 0 {
        Ok(old)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Install the handlers and start the thread that calls `on_signal(SIGNAL)` for each
/// signal received. Fails when another run of this process holds them.
pub(crate) fn install(mut on_signal: impl FnMut(libc::c_int) + Send + 'static) -> std::io::Result<Installed> {
    if HELD.swap(true, Ordering::SeqCst) {
        return Err(std::io::Error::other(
            "another run in this process handles SIGINT/SIGTERM",
        ));
    }
    for c in &COUNTS {
        c.store(0, Ordering::SeqCst);
    }
    // SAFETY: zeroed is a valid sigaction; the fields that matter are set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = count_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // As signal-hook: a read(2) the signal interrupts is restarted.
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: a valid sigset_t to clear.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    let mut installed = Installed {
        previous: Vec::new(),
        stop: Arc::new(AtomicBool::new(false)),
    };
    for sig in SIGNALS {
        // On failure the guard drops and restores what was installed so far.
        let old = sigaction(sig, Some(&action))?;
        installed.previous.push((sig, old));
    }
    let stop = installed.stop.clone();
    std::thread::Builder::new().name("snat-signals".into()).spawn(move || {
        let mut seen = [0usize; 2];
        while !stop.load(Ordering::SeqCst) {
            for (i, &sig) in SIGNALS.iter().enumerate() {
                while seen[i] < COUNTS[i].load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                    seen[i] += 1;
                    on_signal(sig);
                }
            }
            std::thread::sleep(POLL);
        }
    })?;
    Ok(installed)
}

impl Drop for Installed {
    fn drop(&mut self) {
        for (sig, old) in self.previous.drain(..).rev() {
            if let Err(e) = sigaction(sig, Some(&old)) {
                tracing::warn!("cannot restore the disposition of signal {sig}: {e}");
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        HELD.store(false, Ordering::SeqCst);
    }
}
