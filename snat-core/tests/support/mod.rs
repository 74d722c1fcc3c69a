//! Test support shared by the Kubernetes tests (also used by snat-script's tests).
pub mod apiserver;
pub mod fixtures;
