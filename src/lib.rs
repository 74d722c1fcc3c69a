//! snat: find the pod that exhausts a node's SNAT ports.
//!
//! This facade re-exports the workspace's crates for Rust tools that embed snat:
//! [`core`] (stages and data model), [`ebpf`] (the live TCP tracer) and [`script`] (the
//! Rhai engine behind `snat-run`). The workspace root also holds the end-to-end tests
//! (`tests/`) and the example playbooks (`examples/`).
#![deny(missing_docs)]

pub use snat_core as core;
pub use snat_ebpf as ebpf;
pub use snat_script as script;
