//! Run snat's tracer for N seconds and print what it saw.
//!
//! Usage: `trace SECONDS [aggregated|stream] [--text|--jsonl|--quiet]`
//!
//! With `--quiet` only a summary line is printed (`events=N read=N lost=N dropped=N flows=N
//! skipped=N`): the benchmark (`scripts/bench-trace`) uses that. `lost` counts every event
//! that may be missing, program runs the kernel skipped (`skipped`) included. Needs root (or CAP_BPF + CAP_PERFMON).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use snat_ebpf::output::{JsonlWriter, TextWriter};
use snat_ebpf::{Mode, TracerBuilder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs: f64 = args.first().map(|s| s.parse()).transpose()?.unwrap_or(5.0);
    let mode: Mode = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(Mode::Aggregated);
    let style = args.get(2).map(String::as_str).unwrap_or("--text");
    let cancel = Arc::new(AtomicBool::new(false));
    signal_flag(&cancel);
    let mut tracer = TracerBuilder::new()
        .duration(Duration::from_secs_f64(secs))
        .mode(mode)
        .cancel_flag(cancel)
        .attach()?;
    eprintln!("tracing for {secs} s in {mode:?} mode");
    let stdout = std::io::stdout().lock();
    let mut text = if style == "--text" {
        Some(TextWriter::new(std::io::BufWriter::new(stdout))?)
    } else {
        None
    };
    let mut jsonl = (style == "--jsonl").then(|| JsonlWriter::new(std::io::stdout()));
    let mut seen = 0u64;
    let mut on_event = |ev: snat_core::model::TcpEvent| {
        seen += 1;
        if let Some(t) = text.as_mut() {
            let _ = t.write(&ev);
        }
        if let Some(j) = jsonl.as_mut() {
            let _ = j.write(&ev);
        }
    };
    tracer.run(&mut on_event, |_| {})?;
    let res = tracer.finish(&mut on_event)?;
    if style != "--quiet" {
        for f in &res.flows {
            eprintln!("{}", serde_json::to_string(f)?);
        }
    }
    let counted: u64 = res.flows.iter().map(|f| f.counts().events).sum();
    println!(
        "events={} read={} lost={} dropped={} flows={} skipped={}",
        counted,
        res.stats.events_read,
        res.stats.possibly_lost(),
        res.stats.events_dropped,
        res.flows.len(),
        res.stats.missed_runs
    );
    Ok(())
}

fn signal_flag(flag: &Arc<AtomicBool>) {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let _ = signal_hook_registry(sig, flag.clone());
    }
}

// A minimal SIGINT/SIGTERM -> flag bridge without extra dependencies.
fn signal_hook_registry(sig: libc::c_int, flag: Arc<AtomicBool>) -> Result<(), ()> {
    use std::sync::OnceLock;
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    extern "C" fn handler(_: libc::c_int) {
        if let Some(f) = FLAG.get() {
            f.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let _ = FLAG.set(flag);
    // SAFETY: installing an async-signal-safe handler (an atomic store).
    let prev = unsafe { libc::signal(sig, handler as *const () as libc::sighandler_t) };
    if prev == libc::SIG_ERR { Err(()) } else { Ok(()) }
}
