//! snat-ebpf: the kernel-side TCP tracer and its loader (not yet implemented).
#![deny(missing_docs)]
