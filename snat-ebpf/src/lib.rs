//! snat-ebpf: snat's live TCP tracer. A small CO-RE kernel program (C, `bpf/snat_tcp.bpf.c`,
//! committed compiled as `bpf/snat_tcp.bpf.o` and embedded here, so building this crate
//! needs no clang) on tracepoint `sock:inet_sock_set_state`, and its loader on aya. It
//! attaches as a raw tracepoint, or as a classic one (through tracefs) on kernels that
//! refuse raw tracepoints ([`AttachPoint`]). On Linux 6.2+ it reads sockets with plain
//! loads through the kernel function `bpf_rdonly_cast`, elsewhere with
//! `bpf_probe_read_kernel` ([`KernelReads`]).
//!
//! It needs no kprobes, no fentry and no kernel headers, only BTF
//! (`/sys/kernel/btf/vmlinux`) and root or CAP_BPF + CAP_PERFMON. It reports
//! what BCC's tcptracer reports (connect, accept, close, with pid, comm, addresses, ports
//! and netns inode) plus **failed connects** (SYN_SENT -> CLOSE: refused, reset, timed out,
//! with the socket error) and, for closes, the state left and the connection's lifetime.
//!
//! - [`TracerBuilder`] / [`Tracer`]: configure (duration, [`Filters`] applied in the
//!   kernel, [`Mode`]), attach, run, finish. Nothing stays attached after the tracer is
//!   gone.
//! - [`FlowRow`]: the kernel's per-flow counters; implements
//!   [`snat_core::aggregate::Record`], so a [`snat_core::aggregate::TraceSummary`] ranks
//!   a live window exactly like a tcptracer log.
//! - [`output`]: tcptracer `-t -v` text and JSON Lines writers.
//!
//! Attribution: pid/comm/cgroup are those of the task that called `connect()` (recorded at
//! SYN_SENT) or `listen()` (recorded at LISTEN; accepted sockets inherit it, which is wrong
//! for pre-fork servers and sockets passed to another process). Sockets and listeners
//! created before the trace started get their owner from a snapshot taken at attach time
//! ([`seed`], on by default: [`TracerBuilder::seed_owners`]); those it cannot name have an
//! unknown owner ([`snat_core::model::TcpEvent::owner_known`]: pid 0 and an empty comm in
//! the event, written `0 [unknown]` in tcptracer text and `"pid": null, "comm": null` in
//! JSON Lines).
//!
//! Counting connections per flow for ten seconds, in the kernel, and ranking them like
//! the article's `tcptracer | awk | sort | uniq`:
//!
//! ```no_run
//! use std::time::Duration;
//! use snat_core::aggregate::{Field, Metric, TraceSummary};
//! use snat_ebpf::TracerBuilder;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut tracer = TracerBuilder::new().duration(Duration::from_secs(10)).attach()?;
//! tracer.run(|_event| {}, |_progress| {})?;
//! let result = tracer.finish(|_event| {})?;
//! let mut summary = TraceSummary::new("live", TraceSummary::default_groupings());
//! for flow in &result.flows {
//!     summary.add(flow)?;
//! }
//! print!("{}", summary.rank(&[Field::Saddr, Field::Netns], Metric::Events)?.top(10).to_text());
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod abi;
mod cpu_rings;
pub mod error;
pub mod flow;
mod kfunc;
pub mod output;
pub mod seed;
pub mod tracer;

pub use error::Error;
pub use flow::{FlowRow, KindRow, StreamRecord, WallClock, event_from_raw};
pub use seed::SeedReport;
pub use tracer::{
    AttachPoint, Filters, KernelReads, KernelStats, Mode, Progress, RunEnd, TraceResult, Tracer, TracerBuilder, object,
    preflight,
};
