//! Global functions: reading `--param KEY=VALUE` values and logging to stderr.
//!
//! `param("log")` is required (a missing value is a playbook error, exit 2, naming the
//! flag to pass); `param("seconds", 10)` is optional and typed by its default: an
//! integer default makes the value parse as an integer, and so on for floats, booleans
//! and arrays (comma-separated).
//!
//! Before a playbook runs, `unread` finds the `--param` names its text never reads, which
//! the runner refuses (a typo would otherwise leave a setting at its default).

use std::collections::BTreeSet;

use rhai::{ASTNode, Dynamic, EvalAltResult, Expr, Module, Stmt};

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
        "param",
        &["name: &str", "default: i64 | f64", "min: i64 | f64", "max: i64 | f64", "i64 | f64"],
        "Like param(name, default) for a number, which must also lie between min and max (inclusive):\nanother value is a playbook error (exit 2) that names the range.",
    )
    .set_into_module(
        &mut m,
        move |name: &str, default: Dynamic, min: Dynamic, max: Dynamic| -> Result<Dynamic, Box<EvalAltResult>> {
            let num = |d: &Dynamic| d.as_int().map(|i| i as f64).or_else(|_| d.as_float());
            // The playbook's own range is checked whether or not the parameter is given.
            match (num(&default), num(&min), num(&max)) {
                (Ok(_), Ok(lo), Ok(hi)) if lo > hi => {
                    return usage(format!(
                        "param(\"{name}\", default, min, max): min {min} is above max {max}: the playbook gives the range backwards"
                    ));
                }
                (Ok(_), Ok(_), Ok(_)) => {}
                _ => {
                    return usage(format!(
                        "param(\"{name}\", default, min, max): default, min and max must be numbers"
                    ));
                }
            }
            let Some(raw) = c.params().get(name) else {
                return Ok(default);
            };
            let v = typed(name, raw, &default)?;
            let (Ok(x), Ok(lo), Ok(hi)) = (num(&v), num(&min), num(&max)) else {
                return usage(format!(
                    "param(\"{name}\", default, min, max): default, min and max must be numbers"
                ));
            };
            if x < lo || x > hi || x.is_nan() {
                return usage(format!(
                    "parameter `{name}`: {} is out of range: pass a value from {min} to {max}",
                    raw.trim()
                ));
            }
            Ok(v)
        },
    );
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
    let c = ctx.clone();
    method(
        "log",
        &["message: ?", "()"],
        "Write a line to stderr (never stdout: stdout carries the report); not with --quiet, which keeps stderr for warnings and errors.",
    )
    .set_into_module(&mut m, move |msg: Dynamic| {
        // The line on stderr is the message; the tracing event (at debug, so not printed
        // a second time by default) puts it in context for -vv. Neither shows a secret
        // parameter's value.
        let msg = c.redact(&msg.to_string());
        tracing::debug!(target: "playbook", "log: {msg}");
        if !c.options().quiet {
            eprintln!("{msg}");
        }
    });
    let c = ctx.clone();
    method("warn", &["message: ?", "()"], "Write a warning line to stderr.").set_into_module(
        &mut m,
        move |msg: Dynamic| {
            let msg = c.redact(&msg.to_string());
            tracing::debug!(target: "playbook", "warning: {msg}");
            eprintln!("warning: {msg}");
        },
    );
    m
}

/// The parameters a playbook reads, as far as its text tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reads {
    /// Every `param` and `has_param` call names its parameter with a literal string, and
    /// nothing else reaches the parameters: these names are all it can read.
    Only(BTreeSet<String>),
    /// Some name is computed, or `params()` (or a function pointer to one of these) is
    /// used: any parameter may be read.
    Any,
}

/// The names a function reads parameters by.
const READERS: [&str; 3] = ["param", "has_param", "params"];

/// What `ast` (the playbook and its functions) reads of the parameters.
pub(crate) fn reads(ast: &rhai::AST) -> Reads {
    let mut names = BTreeSet::new();
    let mut any = false;
    ast.walk(&mut |path: &[ASTNode<'_>]| {
        let call = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(f, _)) | ASTNode::Stmt(Stmt::FnCall(f, _))) => Some(f),
            // `"seconds".param(10)`: the name is not among the call's arguments.
            Some(ASTNode::Expr(Expr::MethodCall(f, _))) => {
                any |= READERS.contains(&f.name.as_str());
                None
            }
            // `call("params")`, or `Fn("param")` (a constant function pointer once
            // compiled): a reader reached by name.
            Some(ASTNode::Expr(Expr::StringConstant(s, _))) => {
                any |= READERS.contains(&s.as_str());
                None
            }
            Some(ASTNode::Expr(Expr::DynamicConstant(d, _))) => {
                let name = match d.read_lock::<rhai::FnPtr>() {
                    Some(f) => Some(f.fn_name().to_string()),
                    None => d.read_lock::<rhai::ImmutableString>().map(|s| s.to_string()),
                };
                any |= name.is_some_and(|n| READERS.contains(&n.as_str()));
                None
            }
            _ => None,
        };
        if let Some(f) = call.filter(|f| f.namespace.is_empty() && READERS.contains(&f.name.as_str())) {
            match f.args.first() {
                Some(Expr::StringConstant(s, _)) if f.name != "params" => {
                    names.insert(s.to_string());
                }
                _ => any = true,
            }
        }
        true
    });
    if any { Reads::Any } else { Reads::Only(names) }
}

/// The `--param` names `ast` never reads, with a message for each: what was given, what
/// the playbook reads, and the nearest name when one is close. Empty when every name is
/// read, or when the playbook may read any (see [`Reads::Any`]).
pub(crate) fn unread<'a>(ast: &rhai::AST, given: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let Reads::Only(known) = reads(ast) else {
        return Vec::new();
    };
    given
        .into_iter()
        .filter(|g| !known.contains(*g))
        .map(|g| {
            let near = super::did_you_mean(g, known.iter().map(String::as_str));
            let list = if known.is_empty() {
                "it reads no parameters".to_string()
            } else {
                format!(
                    "it reads {}",
                    known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                )
            };
            format!("--param {g}: the playbook never reads a parameter `{g}`{near}; {list}")
        })
        .collect()
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

    fn names(v: &[&str]) -> Reads {
        Reads::Only(v.iter().map(|s| s.to_string()).collect())
    }

    #[rstest]
    #[case::literal_names(r#"let s = param("seconds", 10); if has_param("log") { param("log") }"#, names(&["log", "seconds"]))]
    #[case::in_a_function(r#"fn f() { param("top", 5) } f();"#, names(&["top"]))]
    #[case::as_a_statement(r#"param("must");"#, names(&["must"]))]
    #[case::in_a_map_and_a_closure(r#"let m = #{ a: param("a", 1) }; let f = |x| param("b", x);"#, names(&["a", "b"]))]
    #[case::ranged(r#"param("top", 10, 1, 100)"#, names(&["top"]))]
    #[case::none("let x = 1;", names(&[]))]
    #[case::other_namespace(r#"trace::param("x")"#, names(&[]))]
    #[case::computed_name(r#"let k = "sec" + "onds"; param(k, 1)"#, Reads::Any)]
    #[case::all_of_them("let p = params();", Reads::Any)]
    #[case::function_pointer(r#"let f = Fn("param"); f.call("x")"#, Reads::Any)]
    #[case::method_call(r#""seconds".param(10)"#, Reads::Any)]
    fn what_a_playbook_reads(#[case] script: &str, #[case] want: Reads) {
        let ast = rhai::Engine::new().compile(script).unwrap();
        assert_eq!(reads(&ast), want);
    }

    #[rstest]
    #[case::typo(&["secnds"], "--param secnds: the playbook never reads a parameter `secnds` (did you mean `seconds`?); it reads `seconds`, `top`")]
    #[case::not_close(&["foo"], "--param foo: the playbook never reads a parameter `foo`; it reads `seconds`, `top`")]
    fn unread_names_say_what_the_playbook_reads(#[case] given: &[&str], #[case] want: &str) {
        let ast = rhai::Engine::new()
            .compile(r#"param("seconds", 10); param("top", 3);"#)
            .unwrap();
        let given: Vec<String> = given.iter().map(|s| s.to_string()).collect();
        assert_eq!(unread(&ast, &given), vec![want.to_string()]);
        assert!(unread(&ast, &["seconds".to_string(), "top".to_string()]).is_empty());
        let any = rhai::Engine::new().compile("params()").unwrap();
        assert!(
            unread(&any, &given).is_empty(),
            "a playbook that reads params() may read any"
        );
    }

    /// Every example reads its parameters by literal name (so a typo in `--param` is
    /// caught), and names each one in its header comment.
    #[test]
    fn examples_declare_the_parameters_they_read() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|x| x != "rhai") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let mut engine = rhai::Engine::new();
            engine.set_max_expr_depths(0, 0);
            let ast = engine.compile(&text).unwrap();
            let Reads::Only(names) = reads(&ast) else {
                panic!("{}: reads parameters by computed names", path.display());
            };
            let header: Vec<&str> = text.lines().take_while(|l| l.starts_with("//")).collect();
            let header = header.join("\n");
            for n in &names {
                let named = header.match_indices(n.as_str()).any(|(i, _)| {
                    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
                    !word(header[..i].chars().next_back()) && !word(header[i + n.len()..].chars().next())
                });
                assert!(
                    named,
                    "{}: parameter `{n}` is read but not named in the header",
                    path.display()
                );
            }
            seen += 1;
        }
        assert!(seen >= 9, "examples found: {seen}");
    }

    #[rstest]
    #[case(&[], r#"param("log")"#, "missing parameter `log`: pass --param log=VALUE")]
    #[case(&[("seconds", "ten")], r#"param("seconds", 10)"#, "parameter `seconds`: \"ten\" is not an integer")]
    #[case(&[("b", "maybe")], r#"param("b", true)"#, "is not a boolean")]
    #[case::below(&[("top", "-1")], r#"param("top", 10, 1, 1000)"#, "parameter `top`: -1 is out of range: pass a value from 1 to 1000")]
    #[case::above(&[("alert", "75")], r#"param("alert", 0.75, 0.01, 1.0)"#, "parameter `alert`: 75 is out of range: pass a value from 0.01 to 1.0")]
    #[case::not_a_number(&[("top", "x")], r#"param("top", 10, 1, 1000)"#, "parameter `top`: \"x\" is not an integer")]
    #[case::nan(&[("f", "NaN")], r#"param("f", 1.0, 0.0, 2.0)"#, "is out of range")]
    #[case::string_default(&[("s", "a")], r#"param("s", "x", 1, 2)"#, "default, min and max must be numbers")]
    #[case::backwards_range(&[], r#"param("n", 5, 10, 1)"#, "min 10 is above max 1: the playbook gives the range backwards")]
    fn param_errors_say_what_to_pass(#[case] p: &[(&str, &str)], #[case] script: &str, #[case] want: &str) {
        let e = eval(p, script).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }

    #[rstest]
    #[case::inside(&[("top", "5")], r#"param("top", 10, 1, 1000)"#, "5")]
    #[case::at_the_edges(&[("top", "1000")], r#"param("top", 10, 1, 1000)"#, "1000")]
    #[case::float(&[("alert", "0.9")], r#"param("alert", 0.75, 0.01, 1.0)"#, "0.9")]
    #[case::mixed_types(&[("b", "2")], r#"param("b", 1.0, 1, 60)"#, "2.0")]
    #[case::not_given(&[], r#"param("top", 10, 1, 1000)"#, "10")]
    fn ranged_params_within_their_range(#[case] p: &[(&str, &str)], #[case] script: &str, #[case] want: &str) {
        assert_eq!(eval(p, script).unwrap().to_string(), want);
    }
}
