//! The sandboxed Rhai engine that runs playbooks, and the translation of its errors into
//! `PLAYBOOK:LINE:COL` messages and exit codes.
//!
//! The sandbox: no `eval`, no `import` of files (the module resolver refuses everything),
//! `print`/`debug` go to stderr (stdout carries only the report), and limits on
//! operations, call depth, expression depth, string, array and map sizes. The only way a
//! playbook reaches files, the network or processes is through the registered stages.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rhai::module_resolvers::DummyModuleResolver;
use rhai::{Dynamic, Engine, EvalAltResult, ParseError, Position};

use crate::ctx::{Ctx, StageFailure};
use crate::error::Error;
use crate::error::StageCause;
use crate::modules;

/// Sandbox limits. The defaults suit every shipped playbook with a wide margin; raise
/// them with `snat-run --max-*` flags when a playbook needs more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Operations (roughly: expressions evaluated) before the run stops.
    pub max_operations: u64,
    /// Nested function calls.
    pub max_call_depth: usize,
    /// Nested expressions (parser).
    pub max_expr_depth: usize,
    /// Bytes in one string.
    pub max_string_size: usize,
    /// Items in one array.
    pub max_array_size: usize,
    /// Entries in one object map.
    pub max_map_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 50_000_000,
            max_call_depth: 64,
            max_expr_depth: 128,
            max_string_size: 16 * 1024 * 1024,
            max_array_size: 1_000_000,
            max_map_size: 100_000,
        }
    }
}

/// Build the sandboxed engine with every snat namespace registered.
pub fn build(ctx: &Ctx, limits: &Limits) -> Engine {
    let mut e = Engine::new();
    e.set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_depth)
        .set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        .set_max_modules(0)
        .set_module_resolver(DummyModuleResolver::new())
        .set_strict_variables(true);
    e.disable_symbol("eval");
    // A playbook's lines on stderr keep the values of secret parameters out, as its report.
    let c = ctx.clone();
    e.on_print(move |s| eprintln!("{}", c.redact(s)));
    let c = ctx.clone();
    e.on_debug(move |s, src, pos| {
        let s = c.redact(s);
        match (src, pos.line()) {
            (Some(src), Some(l)) => eprintln!("[{src}:{l}] {s}"),
            (_, Some(l)) => eprintln!("[line {l}] {s}"),
            _ => eprintln!("{s}"),
        }
    });
    let cancel: Arc<AtomicBool> = ctx.cancel_flag();
    e.on_progress(move |_| {
        if cancel.load(Ordering::SeqCst) {
            Some(Dynamic::from("interrupted"))
        } else {
            None
        }
    });
    modules::register_all(&mut e, ctx);
    e
}

/// How a playbook error should be reported.
#[derive(Debug)]
pub enum Failure {
    /// The playbook is wrong (exit 2).
    Playbook(Error),
    /// A stage failed at run time (exit 1).
    Stage(Error),
    /// The run was interrupted.
    Interrupted,
}

/// The source line and a caret under `col` (1-based), for error messages.
pub fn snippet(source: &str, line: usize, col: usize) -> String {
    match source.lines().nth(line.saturating_sub(1)) {
        Some(text) if line > 0 => {
            let caret_pad: String = text
                .chars()
                .take(col.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            format!("\n{:>5} | {text}\n      | {caret_pad}^", line)
        }
        _ => String::new(),
    }
}

fn playbook_error(path: &Path, source: &str, pos: Position, message: String) -> Error {
    let line = pos.line().unwrap_or(0);
    let col = pos.position().unwrap_or(0);
    Error::Playbook {
        path: path.to_path_buf(),
        line,
        col,
        message,
        snippet: snippet(source, line, col),
    }
}

/// A parse error as a playbook error.
pub fn parse_failure(path: &Path, source: &str, err: &ParseError) -> Error {
    playbook_error(
        path,
        source,
        err.position(),
        format!("syntax error: {}", err.err_type()),
    )
}

/// Walk down wrapped errors to the innermost one: the position the user should look at.
fn innermost(err: &EvalAltResult) -> &EvalAltResult {
    match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _) | EvalAltResult::ErrorInModule(_, inner, _) => {
            innermost(inner)
        }
        other => other,
    }
}

/// Where an error happened: the innermost position that is known, else the outer one.
fn best_position(err: &EvalAltResult) -> Position {
    let inner = innermost(err);
    if !inner.position().is_none() {
        inner.position()
    } else {
        err.position()
    }
}

/// Classify an evaluation error.
pub fn eval_failure(path: &Path, source: &str, err: &EvalAltResult) -> Failure {
    let inner = innermost(err);
    let pos = best_position(err);
    match inner {
        EvalAltResult::ErrorRuntime(v, _) if v.is::<StageFailure>() => {
            let f = v.clone_cast::<StageFailure>();
            if f.interrupted {
                Failure::Interrupted
            } else if f.usage {
                Failure::Playbook(playbook_error(path, source, pos, format!("{}: {}", f.stage, f.message)))
            } else {
                Failure::Stage(Error::Stage {
                    called_at: pos
                        .line()
                        .map(|l| crate::error::place(path, l, pos.position().unwrap_or(0))),
                    stage: f.stage.clone(),
                    source: f.cause.clone().unwrap_or_else(|| StageCause::new(f.message.clone())),
                    message: f.message,
                })
            }
        }
        EvalAltResult::ErrorTerminated(..) => Failure::Interrupted,
        EvalAltResult::ErrorTooManyOperations(_) => Failure::Playbook(playbook_error(
            path,
            source,
            pos,
            "limit hit: too many operations (an endless loop?); raise it with --max-operations N".into(),
        )),
        EvalAltResult::ErrorStackOverflow(_) => Failure::Playbook(playbook_error(
            path,
            source,
            pos,
            "limit hit: calls nested too deeply (runaway recursion?); raise it with --max-call-depth N".into(),
        )),
        EvalAltResult::ErrorDataTooLarge(what, _) => Failure::Playbook(playbook_error(
            path,
            source,
            pos,
            format!("limit hit: {what} too large; raise it with --max-string-size, --max-array-size or --max-map-size"),
        )),
        EvalAltResult::ErrorTooManyModules(_) | EvalAltResult::ErrorModuleNotFound(..) => {
            Failure::Playbook(playbook_error(
                path,
                source,
                pos,
                "`import` is not allowed in playbooks (sandbox)".into(),
            ))
        }
        EvalAltResult::ErrorRuntime(v, _) => Failure::Playbook(playbook_error(
            path,
            source,
            pos,
            if v.is_string() { v.to_string() } else { format!("{v:?}") },
        )),
        other => {
            let msg = other.to_string();
            // Rhai appends " (line L, position C)" to its messages; the prefix says it already.
            let msg = match msg.rfind(" (line ") {
                Some(i) if msg.ends_with(')') => msg[..i].to_string(),
                _ => msg,
            };
            Failure::Playbook(playbook_error(path, source, pos, msg))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx {
        Ctx::new(Default::default(), Default::default())
    }

    fn fail(script: &str, limits: Limits) -> Failure {
        let c = ctx();
        let e = build(&c, &limits);
        let p = Path::new("pb.rhai");
        match e.compile(script) {
            Err(pe) => Failure::Playbook(parse_failure(p, script, &pe)),
            Ok(ast) => eval_failure(p, script, &e.eval_ast::<Dynamic>(&ast).unwrap_err()),
        }
    }

    fn msg(f: Failure) -> String {
        match f {
            Failure::Playbook(e) => e.to_string(),
            other => panic!("expected a playbook error, got {other:?}"),
        }
    }

    #[test]
    fn syntax_error_has_position_and_caret() {
        let m = msg(fail("let x = 1;\nlet y = ;\n", Limits::default()));
        assert!(m.starts_with("pb.rhai:2:9: syntax error"), "{m}");
        assert!(m.contains("\n    2 | let y = ;\n      |         ^"), "{m}");
    }

    #[test]
    fn endless_loop_stops_with_clear_message() {
        let m = msg(fail(
            "let i = 0;\nloop { i += 1; }",
            Limits {
                max_operations: 10_000,
                ..Limits::default()
            },
        ));
        assert!(m.contains("limit hit: too many operations"), "{m}");
        assert!(m.contains("--max-operations"), "{m}");
    }

    #[test]
    fn eval_and_import_are_refused() {
        let m = msg(fail("eval(\"1\")", Limits::default()));
        assert!(m.contains("pb.rhai:1:1"), "{m}");
        let m = msg(fail("import \"x\" as y;", Limits::default()));
        assert!(m.contains("pb.rhai:1:"), "{m}");
    }

    #[test]
    fn error_inside_function_points_at_its_body() {
        let m = msg(fail("fn f(x) {\n  x.nope()\n}\nf(1);", Limits::default()));
        assert!(m.starts_with("pb.rhai:2:5"), "{m}");
    }

    #[test]
    fn recursion_and_big_strings_hit_limits() {
        let m = msg(fail("fn f(x) { f(x + 1) }\nf(0)", Limits::default()));
        assert!(m.contains("--max-call-depth"), "{m}");
        let m = msg(fail(
            "let s = \"xxxxxxxx\";\nloop { s += s; }",
            Limits {
                max_string_size: 1024,
                ..Limits::default()
            },
        ));
        assert!(m.contains("--max-string-size"), "{m}");
    }

    #[test]
    fn undefined_variable_is_caught_at_compile_time() {
        let m = msg(fail("let a = 1;\nprint(b);", Limits::default()));
        assert!(m.starts_with("pb.rhai:2:7"), "{m}");
    }
}
