//! Global functions: reading `--param KEY=VALUE` values and logging to stderr.
//!
//! `param("log")` is required (a missing value is a playbook error, exit 2, naming the
//! flag to pass); `param("seconds", 10)` is optional and typed by its default: an
//! integer default makes the value parse as an integer, and so on for floats, booleans
//! and arrays (comma-separated).

use rhai::{Dynamic, EvalAltResult, Module};

use super::{method, usage};
use crate::ctx::Ctx;

fn missing(name: &str) -> String {
    format!("missing parameter `{name}`: pass --param {name}=VALUE")
}

fn typed(name: &str, raw: &str, default: &Dynamic) -> Result<Dynamic, Box<EvalAltResult>> {
    let bad = |what: &str| usage::<Dynamic>(format!("parameter `{name}`: {raw:?} is not {what}"));
    if default.is_int() {
        raw.trim()
            .parse::<i64>()
            .map(Dynamic::from_int)
            .or_else(|_| bad("an integer"))
    } else if default.is_float() {
        raw.trim()
            .parse::<f64>()
            .map(Dynamic::from_float)
            .or_else(|_| bad("a number"))
    } else if default.is_bool() {
        match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" | "on" => Ok(Dynamic::TRUE),
            "false" | "no" | "0" | "off" => Ok(Dynamic::FALSE),
            _ => bad("a boolean (true/false)"),
        }
    } else if default.is_array() {
        Ok(Dynamic::from_array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Dynamic::from(s.to_string()))
                .collect(),
        ))
    } else {
        Ok(Dynamic::from(raw.to_string()))
    }
}

/// The module (registered globally).
pub fn create_module(ctx: &Ctx) -> Module {
    let mut m = Module::new();
    let c = ctx.clone();
    method(
        "param",
        &["name: &str", "String"],
        "The value of `--param NAME=VALUE`. Missing: a playbook error (exit 2) naming the flag to pass.",
    )
    .set_into_module(&mut m, move |name: &str| -> Result<String, Box<EvalAltResult>> {
        c.params().get(name).cloned().ok_or_else(|| missing(name).into())
    });
    let c = ctx.clone();
    method(
        "param",
        &["name: &str", "default: ?", "?"],
        "The value of `--param NAME=VALUE`, or `default` when not given. The value is parsed as the default's\ntype: integer, float, boolean (true/false/yes/no/1/0), array (comma-separated) or string.",
    )
    .set_into_module(&mut m, move |name: &str, default: Dynamic| -> Result<Dynamic, Box<EvalAltResult>> {
        match c.params().get(name) {
            Some(raw) => typed(name, raw, &default),
            None => Ok(default),
        }
    });
    let c = ctx.clone();
    method(
        "has_param",
        &["name: &str", "bool"],
        "Whether `--param NAME=...` was given.",
    )
    .set_into_module(&mut m, move |name: &str| c.params().contains_key(name));
    let c = ctx.clone();
    method("params", &["Map"], "All parameters as a map of strings.").set_into_module(&mut m, move || {
        c.params()
            .iter()
            .map(|(k, v)| (k.as_str().into(), Dynamic::from(v.clone())))
            .collect::<rhai::Map>()
    });
    method(
        "log",
        &["message: ?", "()"],
        "Write a line to stderr (never stdout: stdout carries the report).",
    )
    .set_into_module(&mut m, |msg: Dynamic| {
        tracing::info!(target: "playbook", "{msg}");
        eprintln!("{msg}");
    });
    method("warn", &["message: ?", "()"], "Write a warning line to stderr.").set_into_module(&mut m, |msg: Dynamic| {
        tracing::warn!(target: "playbook", "{msg}");
        eprintln!("warning: {msg}");
    });
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn eval(params: &[(&str, &str)], script: &str) -> Result<Dynamic, Box<EvalAltResult>> {
        let ctx = Ctx::new(
            Default::default(),
            params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        );
        let mut e = rhai::Engine::new();
        e.register_global_module(create_module(&ctx).into());
        e.eval::<Dynamic>(script)
    }

    #[rstest]
    #[case(&[("seconds", "30")], r#"param("seconds", 10)"#, "30")]
    #[case(&[], r#"param("seconds", 10)"#, "10")]
    #[case(&[("f", "0.5")], r#"param("f", 1.0)"#, "0.5")]
    #[case(&[("b", "yes")], r#"param("b", false)"#, "true")]
    #[case(&[("l", "a, b,,c")], r#"param("l", []).len()"#, "3")]
    #[case(&[("log", "x.log")], r#"param("log")"#, "x.log")]
    #[case(&[("log", "x")], r#"has_param("log") && !has_param("y")"#, "true")]
    fn params_are_typed_by_default(#[case] p: &[(&str, &str)], #[case] script: &str, #[case] want: &str) {
        assert_eq!(eval(p, script).unwrap().to_string(), want);
    }

    #[rstest]
    #[case(&[], r#"param("log")"#, "missing parameter `log`: pass --param log=VALUE")]
    #[case(&[("seconds", "ten")], r#"param("seconds", 10)"#, "parameter `seconds`: \"ten\" is not an integer")]
    #[case(&[("b", "maybe")], r#"param("b", true)"#, "is not a boolean")]
    fn param_errors_say_what_to_pass(#[case] p: &[(&str, &str)], #[case] script: &str, #[case] want: &str) {
        let e = eval(p, script).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
}
