//! snat-script: Rhai bindings for snat's stages and the `snat-run` runner (in progress).
#![deny(missing_docs)]
