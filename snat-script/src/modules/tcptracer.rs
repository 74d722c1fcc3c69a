//! `tcptracer::` — reading BCC `tcptracer` logs (the article's Step 2: `tcptracer -t4v >
//! log`) into a `Trace`, the same type a live trace gives, so the same ranking code serves
//! both. Streaming: memory grows with the number of distinct keys, not with the log.

use std::sync::Arc;

use rhai::{EvalAltResult, Map, Module};
use snat_core::aggregate::TraceSummary;
use snat_core::tcptracer::LogReader;

use super::types::{Trace, groupings_of};
use super::{func, to_json, usage};
use crate::ctx::Ctx;

fn read(ctx: &Ctx, path: &str, opts: &Map) -> Result<Trace, Box<EvalAltResult>> {
    let mut reader = LogReader::new();
    let mut groupings = TraceSummary::default_groupings();
    for (k, v) in opts {
        match k.as_str() {
            "by" => groupings = groupings_of(v)?,
            "strict" => match v.as_bool() {
                Ok(b) => reader = reader.strict(b),
                Err(_) => return usage("option `strict` must be true or false"),
            },
            "max_errors" => match v.as_int().ok().and_then(|n| usize::try_from(n).ok()) {
                Some(n) => reader = reader.max_reported_errors(n),
                None => return usage("option `max_errors` must be a non-negative integer"),
            },
            other => {
                return usage(format!(
                    "unknown option `{other}` for tcptracer::read (known: by, strict, max_errors)"
                ));
            }
        }
    }
    let reader = reader.groupings(groupings);
    let mut args = serde_json::json!({ "path": path });
    for (k, v) in opts {
        args[k.as_str()] = to_json(v);
    }
    ctx.stage("tcptracer::read", args, || {
        let summary = reader.read_path(path)?;
        let n = summary.totals.events;
        Ok((Trace(Arc::new(summary)), Some(n)))
    })
}

/// The `tcptracer` module.
pub fn create_module(ctx: &Ctx) -> Module {
    let mut m = Module::new();
    let c = ctx.clone();
    func(
        "read",
        &["path: &str", "Trace"],
        "Read a tcptracer log (`-t4v`, `-t`, `-v` or plain; `-` for stdin) and count it by the default\ngroupings [saddr, netns] and [netns, daddr, dport]. Lost-sample lines are counted, malformed lines\ncounted and the first few noted.",
    )
    .set_into_module(&mut m, move |path: &str| read(&c, path, &Map::new()));
    let c = ctx.clone();
    func(
        "read",
        &["path: &str", "options: Map", "Trace"],
        "Same, with options: by: [[field, ...], ...] (groupings to keep), strict: bool (fail on the first\nmalformed line), max_errors: int (malformed lines to note, default 5).",
    )
    .set_into_module(&mut m, move |path: &str, opts: Map| read(&c, path, &opts));
    m
}
