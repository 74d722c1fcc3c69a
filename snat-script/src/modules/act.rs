//! `act::` — remediation on a culprit from a playbook: a Warning Event on the pod, an
//! annotation or label on it, a rollout restart of its owner, cordoning its node
//! ([`snat_core::k8s::remediate`] builds and applies the requests).
//!
//! Every action is off unless `snat-run --allow ACTION` names it. With `--dry-run` the exact
//! API request is printed on stderr and nothing is called, allowed or not. Each call is a
//! stage (`act::event`...) and adds one action to the audit record with its exact request
//! and its state:
//!
//! - `planned`: `--dry-run` (result `dry run: not sent`) or not allowed (result
//!   `not allowed: pass --allow ACTION`);
//! - `applied`: sent and accepted (result: the API's answer, e.g. the Event's name);
//! - `unchanged`: the target already had it (a re-run), nothing sent;
//! - `failed`: the API refused it or could not be reached (result: the error, e.g. the RBAC
//!   verb to grant), or the target cannot take it (a pod that was replaced, an owner that is
//!   a Job).
//!
//! Stage arguments name the idempotency key `dedup` and an annotation/label key `name`: the
//! audit writer redacts any argument whose name contains `key`.
//!
//! A failed action does not raise a script error: the findings the playbook has made so
//! far still reach the report and the verdict still decides the exit code. Each function
//! returns `#{action, target, state, result, request}` for the playbook to check. Arguments
//! that cannot make a valid request (a pod map without namespace, a label value with
//! spaces, a bad reason) are playbook errors (exit 2), raised before anything is recorded.

use rhai::{Dynamic, EvalAltResult, Map, Module};
use serde_json::{Value, json};
use snat_core::audit::{ActionRecord, ActionState};
use snat_core::k8s::remediate::{self, Action, Applied, Plan, PodTarget, WorkloadTarget};

use super::func;
use crate::ctx::{Ctx, StageError, error_chain};

/// A stage error from the runtime as a message (the runtime failing to start is the only
/// case).
fn runtime_msg(e: StageError) -> String {
    match e {
        StageError::Failed(e) => error_chain(e.as_ref()),
        StageError::Usage(m) => m,
        StageError::Interrupted => "interrupted".into(),
    }
}

fn text(m: &Map, key: &str) -> Option<String> {
    m.get(key)
        .and_then(|v| v.clone().into_string().ok())
        .filter(|s| !s.is_empty())
}

fn need(m: &Map, key: &str, what: &str) -> Result<String, StageError> {
    text(m, key).ok_or_else(|| {
        StageError::Usage(format!(
            "{what} needs a map with a `{key}` string (e.g. a pod from kube::pod_by_uid or kube::pods_on_node)"
        ))
    })
}

fn pod_target(m: &Map, what: &str) -> Result<PodTarget, StageError> {
    Ok(PodTarget {
        namespace: need(m, "namespace", what)?,
        name: need(m, "name", what)?,
        uid: text(m, "uid"),
    })
}

fn state_name(s: ActionState) -> &'static str {
    match s {
        ActionState::Planned => "planned",
        ActionState::Applied => "applied",
        ActionState::Unchanged => "unchanged",
        ActionState::Failed => "failed",
    }
}

/// What a call planned: a plan, or a target that cannot take the action (recorded as
/// failed, with no request).
enum Planned {
    Plan(Box<Plan>),
    Refused { target: String, reason: String },
}

fn planned(r: Result<Plan, snat_core::Error>) -> Result<Planned, StageError> {
    match r {
        Ok(p) => Ok(Planned::Plan(Box::new(p))),
        Err(e) => match &e {
            snat_core::Error::RemediationTarget { target, .. } => Ok(Planned::Refused {
                target: target.clone(),
                reason: e.to_string(),
            }),
            _ => Err(StageError::from(e)),
        },
    }
}

/// When `--allow` named something that is not an action (a typo), say so: otherwise the
/// user believes an action is allowed and sees it only planned.
fn unknown_allow_hint(ctx: &Ctx) -> String {
    let unknown: Vec<&str> = ctx
        .options()
        .allow
        .iter()
        .map(String::as_str)
        .filter(|a| Action::from_name(a).is_none())
        .collect();
    if unknown.is_empty() {
        return String::new();
    }
    let known: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
    format!(
        " (--allow got unknown action(s) {}; known: {})",
        unknown.join(", "),
        known.join(", ")
    )
}

/// Decide, apply and record one action; the map returned to the playbook.
fn act(ctx: &Ctx, action: Action, planned: Planned) -> (Map, Option<u64>) {
    let name = action.name();
    let opts = ctx.options();
    let allowed = opts.allow.contains(name);
    let (target, request, state, result) = match planned {
        Planned::Refused { target, reason } => {
            eprintln!("{}: act::{name}: {}", crate::program_name(), ctx.redact(&reason));
            (target, Value::Null, ActionState::Failed, reason)
        }
        Planned::Plan(plan) => {
            let request = plan.request_json();
            let (state, result) = if opts.dry_run {
                // Printed as the record keeps it: without the values of secret parameters.
                eprintln!(
                    "{}",
                    ctx.redact(&format!(
                        "{}: dry-run: act::{name} on {} would send (after GET {} to skip it if already done):\n{}",
                        crate::program_name(),
                        plan.target,
                        plan.read_path,
                        plan.request.render()
                    ))
                );
                let mut r = "dry run: not sent".to_string();
                if !allowed {
                    r.push_str(&format!(" (and not allowed: pass --allow {name})"));
                }
                (ActionState::Planned, r)
            } else if !allowed {
                eprintln!(
                    "{}: act::{name} on {} planned only: not allowed (pass --allow {name})",
                    crate::program_name(),
                    ctx.redact(&plan.target)
                );
                (
                    ActionState::Planned,
                    format!("not allowed: pass --allow {name}{}", unknown_allow_hint(ctx)),
                )
            } else {
                let outcome = ctx.kube().map_err(runtime_msg).and_then(|kube| {
                    ctx.block_on(remediate::apply(&kube, &plan))
                        .map_err(runtime_msg)?
                        .map_err(|e| error_chain(&e))
                });
                match outcome {
                    Ok(Applied::Applied(s)) => (ActionState::Applied, s),
                    Ok(Applied::Unchanged(s)) => (ActionState::Unchanged, s),
                    Err(msg) => {
                        eprintln!(
                            "{}",
                            ctx.redact(&format!(
                                "{}: act::{name} on {} failed: {msg}",
                                crate::program_name(),
                                plan.target
                            ))
                        );
                        (ActionState::Failed, msg)
                    }
                }
            };
            (plan.target.clone(), request, state, result)
        }
    };
    ctx.record_action(ActionRecord {
        action: name.to_string(),
        target: target.clone(),
        request: request.clone(),
        state,
        result: Some(result.clone()),
        cluster: ctx.kube_if_connected().map(|k| snat_core::audit::ClusterRef {
            server: k.server().to_string(),
            context: k.context().map(str::to_string),
        }),
    });
    let mut m = Map::new();
    m.insert("action".into(), name.into());
    m.insert("target".into(), target.into());
    m.insert("state".into(), state_name(state).into());
    m.insert("result".into(), result.into());
    m.insert(
        "request".into(),
        rhai::serde::to_dynamic(&request).unwrap_or(Dynamic::UNIT),
    );
    let applied = matches!(state, ActionState::Applied) as u64;
    (m, Some(applied))
}

type R = Result<Map, Box<EvalAltResult>>;

/// The module.
pub fn create_module(ctx: &Ctx) -> Module {
    let mut m = Module::new();

    for keyed in [false, true] {
        let c = ctx.clone();
        let f = move |pod: Map, reason: &str, message: &str, key: Option<&str>| -> R {
            let args = json!({"pod": format!("{}/{}", text(&pod, "namespace").unwrap_or_default(), text(&pod, "name").unwrap_or_default()),
                              "uid": text(&pod, "uid"), "reason": reason, "message": message, "dedup": key});
            c.stage("act::event", args, || {
                let target = pod_target(&pod, "act::event")?;
                let p = planned(remediate::plan_event(
                    &target,
                    reason,
                    message,
                    key,
                    &remediate::now_k8s(),
                ))?;
                Ok(act(&c, Action::Event, p))
            })
        };
        if keyed {
            func(
                "event",
                &["pod: Map", "reason: &str", "message: &str", "key: &str", "Map"],
                "Same as event(pod, reason, message), with `key` naming the finding (instead of the message) for\nidempotency: the same key on the same pod never makes a second Event.",
            )
            .set_into_module(&mut m, move |pod: Map, reason: &str, message: &str, key: &str| {
                f(pod, reason, message, Some(key))
            });
        } else {
            func(
                "event",
                &["pod: Map", "reason: &str", "message: &str", "Map"],
                "A Warning Event on the pod (#{namespace, name, uid} as kube:: returns it), e.g. reason \"SNATPressure\",\nsource/reportingComponent \"snat\". Its name is derived from (pod UID, reason, message), so a re-run\nleaves the existing Event (state unchanged). Needs --allow event and RBAC get+create events.\nReturns #{action, target, state: planned|applied|unchanged|failed, result, request}.",
            )
            .set_into_module(&mut m, move |pod: Map, reason: &str, message: &str| {
                f(pod, reason, message, None)
            });
        }
    }

    for action in [Action::Annotate, Action::Label] {
        let c = ctx.clone();
        let stage = format!("act::{}", action.name());
        let doc = format!(
            "Set {0} `key` to `value` on the pod (merge PATCH; the pod's UID must still match). Unchanged when it\nalready has that value. Needs --allow {1} and RBAC get+patch pods. Returns #{{action, target, state,\nresult, request}}.",
            if action == Action::Label { "label" } else { "annotation" },
            action.name()
        );
        func(action.name(), &["pod: Map", "key: &str", "value: &str", "Map"], &doc).set_into_module(
            &mut m,
            move |pod: Map, key: &str, value: &str| -> R {
                let args = json!({"pod": format!("{}/{}", text(&pod, "namespace").unwrap_or_default(), text(&pod, "name").unwrap_or_default()),
                                  "uid": text(&pod, "uid"), "name": key, "value": value});
                c.stage(&stage, args, || {
                    let target = pod_target(&pod, &stage)?;
                    let p = if action == Action::Label {
                        remediate::plan_label(&target, key, value)
                    } else {
                        remediate::plan_annotate(&target, key, value)
                    };
                    Ok(act(&c, action, planned(p)?))
                })
            },
        );
    }

    for keyed in [false, true] {
        let c = ctx.clone();
        let f = move |target: Map, key: Option<&str>| -> R {
            let owner = target.get("owner").and_then(|o| o.clone().try_cast::<Map>());
            let args = json!({"target": super::to_json(&Dynamic::from_map(target.clone())), "dedup": key});
            c.stage("act::restart", args, || {
                let ns = need(&target, "namespace", "act::restart")?;
                // A pod (with `owner`): restart its owner, keyed by the pod's UID by default.
                // A workload map #{namespace, kind, name}: a key is required.
                let (kind, name, default_key) = match &owner {
                    Some(o) => (text(o, "kind"), text(o, "name"), text(&target, "uid")),
                    None if target.contains_key("owner") || !target.contains_key("kind") => (
                        Some(String::new()),
                        Some(need(&target, "name", "act::restart")?),
                        text(&target, "uid"),
                    ),
                    None => (text(&target, "kind"), text(&target, "name"), None),
                };
                let name = name.ok_or_else(|| StageError::Usage("act::restart: the owner has no name".into()))?;
                let key = match key.map(str::to_string).or(default_key) {
                    Some(k) => k,
                    None => {
                        return Err(StageError::Usage(
                            "act::restart(workload) needs a key naming the finding: act::restart(w, key), or pass the culprit pod".into(),
                        ));
                    }
                };
                let w = WorkloadTarget {
                    namespace: ns,
                    kind: kind.unwrap_or_default(),
                    name,
                };
                let p = planned(remediate::plan_restart(&w, &key, &remediate::now_k8s()))?;
                Ok(act(&c, Action::Restart, p))
            })
        };
        if keyed {
            func(
                "restart",
                &["target: Map", "key: &str", "Map"],
                "Same as restart(pod), keyed by `key` instead of the pod's UID; also takes a workload map\n#{namespace, kind, name}.",
            )
            .set_into_module(&mut m, move |t: Map, key: &str| f(t, Some(key)));
        } else {
            func(
                "restart",
                &["pod: Map", "Map"],
                "Rollout restart of the pod's owner (Deployment, StatefulSet or DaemonSet), as `kubectl rollout restart`:\nthe pod template gets kubectl.kubernetes.io/restartedAt and snat.io/restart-key = the pod's UID, so\nre-runs about the same pod restart it once. An owner of another kind is a failed action. Needs\n--allow restart and RBAC get+patch on deployments/statefulsets/daemonsets.",
            )
            .set_into_module(&mut m, move |t: Map| f(t, None));
        }
    }

    let cordon = {
        let c = ctx.clone();
        move |node: String| -> R {
            c.stage("act::cordon", json!({ "node": node }), || {
                let p = planned(remediate::plan_cordon(&node))?;
                Ok(act(&c, Action::Cordon, p))
            })
        }
    };
    let f = cordon.clone();
    func(
        "cordon",
        &["node: &str", "Map"],
        "Cordon the node (spec.unschedulable = true, as `kubectl cordon`); unchanged if already cordoned.\nNeeds --allow cordon and RBAC get+patch nodes. Undo with `kubectl uncordon NODE`.",
    )
    .set_into_module(&mut m, move |node: &str| f(node.to_string()));
    func(
        "cordon",
        &["target: Map", "Map"],
        "Cordon the node of a pod map (its `node`) or a node map from kube::node_by_ip (its `name`).",
    )
    .set_into_module(&mut m, move |t: Map| -> R {
        match text(&t, "node").or_else(|| text(&t, "name").filter(|_| !t.contains_key("namespace"))) {
            Some(n) => cordon(n),
            None => super::usage("act::cordon needs a node name, a pod map with `node`, or a node map with `name`"),
        }
    });
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctx::RunOptions;

    fn engine(ctx: &Ctx) -> rhai::Engine {
        let mut e = rhai::Engine::new();
        e.register_static_module("act", create_module(ctx).into());
        e
    }

    const POD: &str = r#"#{namespace: "shop", name: "api-7d9f-0", uid: "u-1", node: "node-a", owner: #{kind: "Deployment", name: "api"}}"#;

    #[test]
    fn not_allowed_is_planned_without_any_connection_and_names_a_typo() {
        // No kubeconfig anywhere: a planned action must not try to connect.
        let ctx = Ctx::new(
            RunOptions {
                kubeconfig: Some("/nonexistent/snat-test-kubeconfig".into()),
                allow: ["evnt".to_string()].into(),
                ..Default::default()
            },
            Default::default(),
        );
        let r = engine(&ctx)
            .eval::<Map>(&format!(r#"act::event({POD}, "SNATPressure", "m")"#))
            .unwrap();
        assert_eq!(r["state"].clone().into_string().unwrap(), "planned");
        let result = r["result"].clone().into_string().unwrap();
        assert_eq!(
            result,
            "not allowed: pass --allow event (--allow got unknown action(s) evnt; known: event, annotate, label, restart, cordon)"
        );
        let a = ctx.actions();
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].action.as_str(), a[0].state), ("event", ActionState::Planned));
        assert_eq!(a[0].request["path"], "/api/v1/namespaces/shop/events");
        assert_eq!(ctx.stages()[0].name, "act::event");
    }

    #[test]
    fn an_unreachable_cluster_is_a_failed_action_not_a_script_error() {
        let ctx = Ctx::new(
            RunOptions {
                kubeconfig: Some("/nonexistent/snat-test-kubeconfig".into()),
                allow: ["cordon".to_string()].into(),
                ..Default::default()
            },
            Default::default(),
        );
        let r = engine(&ctx).eval::<Map>(&format!("act::cordon({POD})")).unwrap();
        assert_eq!(r["state"].clone().into_string().unwrap(), "failed");
        assert!(
            r["result"]
                .clone()
                .into_string()
                .unwrap()
                .contains("cannot read kubeconfig"),
            "{r:?}"
        );
        assert_eq!(ctx.actions()[0].target, "node/node-a");
        assert_eq!(ctx.actions()[0].state, ActionState::Failed);
    }

    #[test]
    fn bad_arguments_are_playbook_errors_and_record_no_action() {
        let ctx = Ctx::new(RunOptions::default(), Default::default());
        let e = engine(&ctx);
        for (script, want) in [
            (
                r#"act::event(#{name: "x"}, "SNATPressure", "m")"#.to_string(),
                "needs a map with a `namespace`",
            ),
            (
                format!(r#"act::event({POD}, "not a reason", "m")"#),
                "is not an Event reason",
            ),
            (
                format!(r#"act::label({POD}, "k", "two words")"#),
                "not a valid label value",
            ),
            (
                r#"act::restart(#{namespace: "shop", kind: "Deployment", name: "api"})"#.to_string(),
                "needs a key naming the finding",
            ),
            (
                r#"act::cordon(#{namespace: "shop", name: "api"})"#.to_string(),
                "needs a node name",
            ),
        ] {
            let err = e.eval::<Map>(&script).unwrap_err();
            let msg = match err.as_ref() {
                EvalAltResult::ErrorRuntime(d, _) => match d.clone().try_cast::<crate::ctx::StageFailure>() {
                    Some(f) => {
                        assert!(f.usage, "{script}: {f}");
                        f.message
                    }
                    None => d.to_string(),
                },
                other => other.to_string(),
            };
            assert!(msg.contains(want), "{script}: {msg}");
        }
        assert!(ctx.actions().is_empty());
    }
}
