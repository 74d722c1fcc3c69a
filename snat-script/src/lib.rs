//! snat-script: the Rhai bindings for snat's stages and the `snat-run` playbook runner.
//!
//! - [`engine::build`]: a sandboxed Rhai engine with every stage module registered
//!   (`census::`, `trace::`, `tcptracer::`, `kube::`, `metrics::`, `policy::`, `alloc::`,
//!   `report::`, ...); each module lives in [`modules`] with its own `create_module()`.
//! - [`Ctx`]: what the stages of one run share: options, `--param` values, and the stage
//!   log that becomes the audit record.
//! - [`runner::run`]: what `snat-run PLAYBOOK.rhai` does: run a playbook, print its report,
//!   and leave exactly one audit record, whatever happens.
//!
//! Embedding the engine in another tool:
//!
//! ```no_run
//! use snat_script::{Ctx, RunOptions};
//! use snat_script::engine::{Limits, build};
//!
//! let ctx = Ctx::new(RunOptions::default(), Default::default());
//! let engine = build(&ctx, &Limits::default());
//! let namespaces: rhai::Array = engine
//!     .eval(r#"census::namespaces().map(|n| n.to_string())"#)
//!     .expect("the playbook runs");
//! println!("{namespaces:?}; stages run: {}", ctx.stages().len());
//! ```
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
mod signals;

pub use ctx::{Ctx, RunOptions, StageError};
pub use error::Error;
