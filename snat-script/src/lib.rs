//! snat-script: the Rhai bindings for snat's stages and the `snat-run` playbook runner.
#![deny(missing_docs)]

pub mod cli;
pub mod ctx;
pub mod engine;
pub mod error;
pub mod fleet;
pub mod html;
pub mod modules;
pub mod report;
pub mod runner;

pub use ctx::{Ctx, RunOptions, StageError};
pub use error::Error;
