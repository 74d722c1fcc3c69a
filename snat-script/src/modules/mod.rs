//! The Rhai namespaces: one module per namespace, each built by its file's
//! `create_module(ctx)`.
//!
//! Functions that do work are *stages* (recorded in the audit record through
//! [`Ctx::stage`](crate::ctx::Ctx::stage)); functions that only shape data (getters,
//! rankings, report building) are not.

use rhai::{
    Dynamic, Engine, EvalAltResult, FuncMetadata, FuncRegistration, Module, NativeCallContext, Position, RhaiFunc,
    RhaiNativeFunc, Shared, Variant,
};

use crate::ctx::Ctx;

pub mod act;
pub mod alloc;
pub mod audit;
pub mod census;
pub mod kube;
pub mod metrics;
pub mod params;
pub mod policy;
pub mod report;
pub mod tcptracer;
pub mod trace;
pub mod types;

/// A namespace registered in the engine.
#[derive(Debug, Clone, Copy)]
pub struct Namespace {
    /// Name, as used in `name::function(...)`; empty for global functions.
    pub name: &'static str,
    /// What it is for.
    pub doc: &'static str,
}

/// Every namespace, in the order `snat-run functions` lists them.
pub const NAMESPACES: &[Namespace] = &[
    Namespace {
        name: "",
        doc: "Global functions: parameters, logging, and the methods/getters of snat's types.",
    },
    Namespace {
        name: "tcptracer",
        doc: "Read BCC tcptracer logs (the article's Step 2) into a Trace.",
    },
    Namespace {
        name: "trace",
        doc: "Trace TCP connections on this node live with eBPF into a Trace (same API as tcptracer logs).",
    },
    Namespace {
        name: "policy",
        doc: "Which destinations consume SNAT ports (public-IP policy).",
    },
    Namespace {
        name: "census",
        doc: "Network namespaces and their owners (pod or process), and their TCP sockets by state and public destination.",
    },
    Namespace {
        name: "metrics",
        doc: "Azure Monitor SNAT metrics (the article's Step 1): rank node IPs by port usage and failed connections.",
    },
    Namespace {
        name: "kube",
        doc: "Kubernetes API: node by IP, pods on a node, pod by UID and owner, socket census in a pod via exec.",
    },
    Namespace {
        name: "report",
        doc: "Build the run's report: title, verdict, findings, tables.",
    },
    Namespace {
        name: "audit",
        doc: "Earlier runs in the audit directory: pick a record by last, prev, run id and playbook, to compare runs.",
    },
    Namespace {
        name: "act",
        doc: "Remediation, each off unless --allow names it: Event on the pod, annotate/label it, restart its owner, cordon its node.",
    },
    Namespace {
        name: "alloc",
        doc: "SNAT port budgets: ports per node, what a peak needs, per-destination pressure.",
    },
];

/// Register every namespace into `engine`.
pub fn register_all(engine: &mut Engine, ctx: &Ctx) {
    engine.register_global_module(types::create_module(ctx).into());
    engine.register_global_module(params::create_module(ctx).into());
    let policy_module: rhai::Shared<Module> = policy::create_module(ctx).into();
    engine.register_global_module(policy_module.clone());
    engine.register_static_module("policy", policy_module);
    let census_module: rhai::Shared<Module> = census::create_module(ctx).into();
    engine.register_global_module(census_module.clone());
    engine.register_static_module("census", census_module);
    engine.register_static_module("report", report::create_module(ctx).into());
    engine.register_static_module("audit", audit::create_module(ctx).into());
    engine.register_static_module("alloc", alloc::create_module(ctx).into());
    engine.register_static_module("tcptracer", tcptracer::create_module(ctx).into());
    engine.register_static_module("trace", trace::create_module(ctx).into());
    engine.register_static_module("metrics", metrics::create_module(ctx).into());
    engine.register_static_module("kube", kube::create_module(ctx).into());
    engine.register_static_module("act", act::create_module(ctx).into());
}

fn comments(doc: &str) -> Vec<String> {
    vec![
        doc.lines()
            .map(|l| format!("/// {l}").trim_end().to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    ]
}

/// A function reached as `namespace::name(...)`. `params` are `"name: Type"` strings
/// followed by the return type; `doc` is plain text (one or more lines).
pub(crate) fn func(name: &str, params: &[&str], doc: &str) -> Qualified {
    Qualified(
        FuncRegistration::new(name)
            .in_internal_namespace()
            .with_params_info(params)
            .with_comments(comments(doc)),
    )
}

/// The registration of a `namespace::name(...)` function, whose errors point at the call.
///
/// Rhai gives the error of a native function the position of its call when the call is
/// unqualified (`name(...)`, `value.name(...)`), but not when it is qualified: a failed
/// `trace::run(...)` would be reported at line 0. [`Qualified::set_into_module`] registers
/// the function with a wrapper that fills the call's position into an error that has
/// none, so a stage failure or a bad argument names `playbook.rhai:LINE:COL`.
pub(crate) struct Qualified(FuncRegistration);

impl Qualified {
    /// Register `f` (any function `FuncRegistration::set_into_module` takes) into `module`.
    pub(crate) fn set_into_module<A: 'static, const N: usize, const X: bool, R, const F: bool, FUNC>(
        self,
        module: &mut Module,
        f: FUNC,
    ) -> &FuncMetadata
    where
        R: Variant + Clone,
        FUNC: RhaiNativeFunc<A, N, X, R, F> + Send + Sync + 'static,
    {
        // Purity as FuncRegistration decides it for these names: pure (no setter or
        // indexer is registered through `func`), not volatile.
        let wrapped = match f.into_rhai_function(true, false) {
            RhaiFunc::Pure {
                func,
                has_context,
                is_pure,
                is_volatile,
            } => RhaiFunc::Pure {
                func: at_call(func, has_context),
                has_context: true,
                is_pure,
                is_volatile,
            },
            RhaiFunc::Method {
                func,
                has_context,
                is_pure,
                is_volatile,
            } => RhaiFunc::Method {
                func: at_call(func, has_context),
                has_context: true,
                is_pure,
                is_volatile,
            },
            other => other,
        };
        self.0.set_into_module_raw(module, FUNC::param_types(), wrapped)
    }
}

/// A native function's body as Rhai stores it.
type NativeBody =
    dyn Fn(Option<NativeCallContext<'_>>, &mut [&mut Dynamic]) -> Result<Dynamic, Box<EvalAltResult>> + Send + Sync;

/// Wrap `inner` so that an error it returns without a position gets the call's. The
/// wrapper always takes the call context (for the position); `inner` gets it only if it
/// asked for it.
fn at_call(inner: Shared<NativeBody>, inner_has_context: bool) -> Shared<NativeBody> {
    Shared::new(move |ctx: Option<NativeCallContext<'_>>, args: &mut [&mut Dynamic]| {
        let pos = ctx.as_ref().map_or(Position::NONE, NativeCallContext::call_position);
        inner(if inner_has_context { ctx } else { None }, args).map_err(|mut e| {
            if e.position().is_none() {
                e.set_position(pos);
            }
            e
        })
    })
}

/// A method or global function (callable as `value.name(...)` or `name(...)`).
pub(crate) fn method(name: &str, params: &[&str], doc: &str) -> FuncRegistration {
    FuncRegistration::new(name)
        .in_global_namespace()
        .with_params_info(params)
        .with_comments(comments(doc))
}

/// Add a documented getter (`value.name`) for a custom type.
pub(crate) fn getter<T: Clone + Send + Sync + 'static, R: Clone + Send + Sync + 'static>(
    module: &mut Module,
    name: &str,
    ret: &str,
    doc: &str,
    f: impl Fn(&mut T) -> R + Send + Sync + 'static,
) {
    let ty = std::any::type_name::<T>()
        .rsplit("::")
        .next()
        .unwrap_or("?")
        .to_string();
    FuncRegistration::new(format!("get${name}"))
        .in_global_namespace()
        .with_purity(true)
        .with_params_info([format!("self: {ty}"), ret.to_string()])
        .with_comments(comments(doc))
        .set_into_module(module, f);
}

/// Convert a serializable value to a Rhai value (maps and arrays), for data a playbook
/// reads with `.field` access.
pub(crate) fn to_dyn<T: serde::Serialize>(v: &T) -> Result<rhai::Dynamic, Box<rhai::EvalAltResult>> {
    rhai::serde::to_dynamic(v)
}

/// Convert a Rhai value to JSON (for reports and stage arguments).
pub(crate) fn to_json(v: &rhai::Dynamic) -> serde_json::Value {
    rhai::serde::from_dynamic::<serde_json::Value>(v).unwrap_or(serde_json::Value::Null)
}

/// The name of `known` most like `word`, when it is alike enough to be a typo or a
/// shortening of it (Jaro-Winkler similarity of 0.8 or more, or one edit or swap apart,
/// which catches `tpo` for `top`), as `` (did you mean `x`?)``; else empty.
pub(crate) fn did_you_mean<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(word, k), k))
        .filter(|(sim, k)| *sim >= 0.8 || strsim::damerau_levenshtein(word, k) <= 1)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

/// A plain script error (a playbook mistake: exit 2).
pub(crate) fn usage<T>(msg: impl Into<String>) -> Result<T, Box<rhai::EvalAltResult>> {
    Err(msg.into().into())
}

/// Render Rhai's function metadata (from `Engine::gen_fn_metadata_to_json`) as the text
/// `snat-run functions` prints: one block per namespace, each function with its signature
/// and documentation; getters are shown as `Type.property`.
pub fn describe_functions(meta_json: &str) -> Result<String, serde_json::Error> {
    let meta: serde_json::Value = serde_json::from_str(meta_json)?;
    let mut out = String::new();
    let render = |f: &serde_json::Value, ns: &str| -> (String, String) {
        let name = f["name"].as_str().unwrap_or("?");
        let params: Vec<String> = f["params"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| match (p["name"].as_str(), p["type"].as_str()) {
                        (Some(n), Some(t)) if n != "_" => format!("{n}: {t}"),
                        (_, Some(t)) => t.to_string(),
                        (Some(n), None) => n.to_string(),
                        _ => "?".into(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ret = f["returnType"]
            .as_str()
            .filter(|r| !r.is_empty() && *r != "()")
            .map(|r| format!(" -> {r}"));
        let sig = if let Some(prop) = name.strip_prefix("get$") {
            let ty = params
                .first()
                .map(|p| p.trim_start_matches("self: ").to_string())
                .unwrap_or_default();
            format!("{ty}.{prop}{}", ret.unwrap_or_default())
        } else if ns.is_empty() {
            format!("{name}({}){}", params.join(", "), ret.unwrap_or_default())
        } else {
            format!("{ns}::{name}({}){}", params.join(", "), ret.unwrap_or_default())
        };
        let doc = f["docComments"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|c| c.as_str())
                    .flat_map(|c| c.lines())
                    .map(|l| l.trim_start_matches("///").trim().to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        (sig, doc)
    };
    for ns in NAMESPACES {
        let fns = if ns.name.is_empty() {
            meta["functions"].as_array().cloned().unwrap_or_default()
        } else {
            meta["modules"][ns.name]["functions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let title = if ns.name.is_empty() {
            "(global)".to_string()
        } else {
            format!("{}::", ns.name)
        };
        out.push_str(&format!("{title}  {}\n", ns.doc));
        let mut rows: Vec<(String, String)> = fns.iter().map(|f| render(f, ns.name)).collect();
        rows.sort();
        rows.dedup();
        for (sig, doc) in rows {
            out.push_str(&format!("  {sig}\n"));
            for l in doc.lines().filter(|l| !l.is_empty()) {
                out.push_str(&format!("      {l}\n"));
            }
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rstest::rstest]
    #[case::typo("secnds", " (did you mean `seconds`?)")]
    #[case::shortened("secs", " (did you mean `seconds`?)")]
    #[case::swapped_in_a_short_name("tpo", " (did you mean `top`?)")]
    #[case::missing_letter("sed_owners", " (did you mean `seed_owners`?)")]
    #[case::unlike_all("foo", "")]
    #[case::unlike_all_long("kubeconfig", "")]
    fn did_you_mean_names_a_close_name_only(#[case] word: &str, #[case] want: &str) {
        assert_eq!(did_you_mean(word, ["seconds", "top", "seed_owners", "mode"]), want);
    }
}
