//! snat-core: the stages of a SNAT-exhaustion investigation, as typed Rust.
//!
//! Each module is one stage with typed inputs and outputs, so the stages compose in a
//! playbook (through `snat-script`) or directly in a Rust tool:
//!
//! - [`model`]: the data model every stage shares (events, sockets, processes, pods, findings).
//! - [`metrics`]: Azure Monitor SNAT metrics (the article's Step 1): which backend IP, so
//!   which node, is short of ports or failing connections.
//! - [`tcptracer`]: reads BCC `tcptracer` logs (the article's Step 2), streaming.
//! - [`aggregate`]: counts and ranks events by any subset of fields.
//! - [`policy`]: which destinations consume SNAT ports, and which rule says so.
//! - [`cgroup`]: pod UID, QoS and container of a process, from `/proc/PID/cgroup`.
//! - [`pressure`]: per-node SNAT pressure by destination, and each owner's share.
//! - [`allocation`]: Azure SNAT port budgets per node, and what a peak needs.
//! - [`procindex`]: which processes live in which network namespace, from /proc.
//! - [`census`]: the TCP sockets of a network namespace (sock_diag, or /proc/net/tcp).
//! - [`resolve`]: from a network namespace (or a socket) to its pod or process.
//! - [`audit`]: the JSON audit record every run leaves, and its hash chain.
//! - [`timeline`]: connections over a trace window per network namespace, in time buckets.
//! - [`held`]: SNAT ports held at once per destination: connects within one hold time.
//! - `k8s` (feature `kube`, on by default): the Kubernetes API stages: node by IP, pods on a
//!   node and their owner workloads, a socket census through the exec API, a playbook on
//!   many nodes as Jobs, and gated remediation. Without the feature, the rest builds with no
//!   Kubernetes or async dependencies.
//!
//! ```no_run
//! use snat_core::aggregate::{Field, Metric};
//! use snat_core::tcptracer::LogReader;
//!
//! # fn main() -> Result<(), snat_core::Error> {
//! let summary = LogReader::new().read_path("tcptracer.log")?;
//! let ranking = summary.rank(&[Field::Saddr, Field::Netns], Metric::Events)?;
//! print!("{}", ranking.top(10).to_text());
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod aggregate;
pub mod allocation;
pub mod audit;
pub mod census;
pub mod cgroup;
mod diag_split;
pub mod error;
pub mod held;
mod keytable;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod pressure;
pub mod procindex;
pub mod resolve;
pub mod tcptracer;
pub mod timeline;

#[cfg(feature = "kube")]
pub mod k8s;

pub use error::Error;
