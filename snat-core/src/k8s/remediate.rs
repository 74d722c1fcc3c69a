//! Remediation actions on a culprit: a Kubernetes Event on the pod, an annotation or label
//! on it, a rollout restart of its owner workload, or cordoning its node. Each action is
//! first a [`Plan`]: the exact API request it would send (method, path, content type,
//! body), which a dry run prints and the audit record keeps. [`apply`] then sends it through
//! the [`Kube`] client, after one read that makes re-runs idempotent:
//!
//! | action   | read first            | unchanged when                                         | then sends                  |
//! |----------|-----------------------|--------------------------------------------------------|-----------------------------|
//! | event    | GET the Event by name | an Event of that name exists (left as it is)           | POST `/api/v1/.../events`   |
//! | annotate | GET the pod           | the annotation already has that value                  | merge PATCH of the pod      |
//! | label    | GET the pod           | the label already has that value                       | merge PATCH of the pod      |
//! | restart  | GET the workload      | its pod template carries `snat.io/restart-key` = key   | merge PATCH of the workload |
//! | cordon   | GET the node          | `spec.unschedulable` is already true                   | merge PATCH of the node     |
//!
//! Idempotency keys: an Event's name is deterministic, `<pod>.snat-<16 hex>` where the hex
//! is SHA-256 of (pod UID, reason, key) and the key defaults to the message, so the same
//! finding reported again does not make a second Event (its count is not bumped: that
//! would need the `patch` verb on events, and the first Event already says it). A restart
//! writes `kubectl.kubernetes.io/restartedAt` (as `kubectl rollout restart` does) and
//! `snat.io/restart-key` into the pod template; the key defaults to the culprit pod's UID,
//! so a workload is restarted at most once per culprit pod however often the playbook
//! re-runs, and again only when a new pod of it is found at fault.
//!
//! Pod patches carry the pod's UID when known (`metadata.uid`), and the read checks it: a
//! pod that was deleted and re-created under the same name is not touched. The RBAC these
//! calls need is `deploy/optional/rbac-remediation.yaml` (get + create events; get + patch pods,
//! deployments, statefulsets, daemonsets and nodes).

use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Kube, Op, Scope};
use crate::error::Error;

/// Annotation on a restarted workload's pod template naming the finding that restarted it.
pub const RESTART_KEY_ANNOTATION: &str = "snat.io/restart-key";
/// The annotation `kubectl rollout restart` sets.
pub const RESTARTED_AT_ANNOTATION: &str = "kubectl.kubernetes.io/restartedAt";
/// `reportingComponent` and `source.component` of snat's Events.
pub const COMPONENT: &str = "snat";
/// Content type of snat's PATCH requests (JSON merge patch, RFC 7386).
pub const MERGE_PATCH: &str = "application/merge-patch+json";

/// A remediation action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A Warning Event on the pod.
    Event,
    /// An annotation on the pod.
    Annotate,
    /// A label on the pod.
    Label,
    /// A rollout restart of the pod's owner (Deployment, StatefulSet, DaemonSet).
    Restart,
    /// Cordon a node (`spec.unschedulable = true`).
    Cordon,
}

impl Action {
    /// Every action, in the order documentation lists them.
    pub const ALL: [Action; 5] = [
        Action::Event,
        Action::Annotate,
        Action::Label,
        Action::Restart,
        Action::Cordon,
    ];

    /// Its name, as `--allow` takes it and the audit record writes it.
    pub fn name(self) -> &'static str {
        match self {
            Action::Event => "event",
            Action::Annotate => "annotate",
            Action::Label => "label",
            Action::Restart => "restart",
            Action::Cordon => "cordon",
        }
    }

    /// The action with this name.
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// A pod an action applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTarget {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID, when known (then checked before patching, and put in the Event).
    pub uid: Option<String>,
}

/// A workload a restart applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadTarget {
    /// Its namespace.
    pub namespace: String,
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// One HTTP request to the API server, exactly as sent (headers other than the content
/// type are the client's: credentials never appear here).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiRequest {
    /// `POST` or `PATCH`.
    pub method: &'static str,
    /// The URL path, e.g. `/api/v1/namespaces/shop/events`.
    pub path: String,
    /// The `Content-Type` of the body.
    pub content_type: &'static str,
    /// The JSON body.
    pub body: Value,
}

impl ApiRequest {
    /// The request as a dry run prints it: `METHOD path`, `Content-Type: ...`, then the body
    /// as pretty JSON.
    pub fn render(&self) -> String {
        format!(
            "{} {}\nContent-Type: {}\n{}",
            self.method,
            self.path,
            self.content_type,
            serde_json::to_string_pretty(&self.body).unwrap_or_default()
        )
    }
}

/// What [`apply`] reads first to decide whether the action is needed.
#[derive(Debug, Clone, PartialEq)]
enum Check {
    /// Unchanged if the Event exists.
    EventExists,
    /// Unchanged if `metadata.<field>[key] == value`; the pod's UID must match.
    PodMeta {
        field: &'static str,
        key: String,
        value: String,
        uid: Option<String>,
    },
    /// Unchanged if the pod template's restart key is this one.
    RestartKey(String),
    /// Unchanged if the node is unschedulable.
    Cordoned,
}

/// A planned action: what it acts on and the exact request that applies it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The action.
    pub action: Action,
    /// `pod/NS/NAME`, `deployment/NS/NAME`, `node/NAME`...
    pub target: String,
    /// The mutating request [`apply`] sends when the target does not have it yet.
    pub request: ApiRequest,
    /// The object read first (GET path).
    pub read_path: String,
    check: Check,
    op_read: Op,
    op_write: Op,
}

impl Plan {
    /// The request as the audit record keeps it: `{method, path, content_type, body}`.
    pub fn request_json(&self) -> Value {
        serde_json::to_value(&self.request).unwrap_or(Value::Null)
    }
}

/// The time as Kubernetes writes it (`2026-11-21T07:10:47Z`, UTC, whole seconds).
pub fn now_k8s() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn hex16(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn check_name(what: &str, s: &str) -> Result<(), Error> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{s:?} is not a valid {what} name (lower-case letters, digits, '-' and '.', at most 253)"
        )))
    }
}

fn check_pod(pod: &PodTarget) -> Result<(), Error> {
    check_name("namespace", &pod.namespace)?;
    check_name("pod", &pod.name)
}

/// Whether `s` is a name part of a label or annotation key: at most 63 characters,
/// alphanumeric at both ends, `-`, `_`, `.` inside.
fn is_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Check a label or annotation key (`[prefix/]name`, prefix a DNS subdomain), as the API
/// server does.
pub fn validate_key(key: &str) -> Result<(), Error> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| check_name("key prefix", p).is_ok());
    if prefix_ok && is_name_part(name) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{key:?} is not a valid label/annotation key ([prefix/]name: name at most 63 characters, alphanumeric at both ends, '-', '_', '.' inside; prefix a DNS subdomain such as snat.io)"
        )))
    }
}

/// Check a label value, as the API server does: empty, or a name part (at most 63
/// characters, alphanumeric at both ends, `-`, `_`, `.` inside).
pub fn validate_label_value(value: &str) -> Result<(), Error> {
    if value.is_empty() || is_name_part(value) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{value:?} is not a valid label value (at most 63 characters, alphanumeric at both ends, '-', '_', '.' inside)"
        )))
    }
}

/// The deterministic name of snat's Event for (pod, reason, key): `<pod>.snat-<16 hex>`.
pub fn event_name(pod: &PodTarget, reason: &str, key: &str) -> String {
    let hex = hex16(&[pod.uid.as_deref().unwrap_or(&pod.name), reason, key]);
    let mut base: String = pod.name.chars().take(253 - 22).collect();
    while base.ends_with(['.', '-']) {
        base.pop();
    }
    format!("{base}.snat-{hex}")
}

fn op(verb: &'static str, resource: &'static str, scope: Scope, name: &str) -> Op {
    Op {
        verb,
        resource,
        scope,
        name: Some(name.to_string()),
    }
}

/// Plan a Warning Event on `pod` with `reason` (e.g. `SNATPressure`) and `message`
/// (truncated to 1024 characters). `key` names the finding for idempotency (defaults to
/// the message); `now` is the time to write ([`now_k8s`]).
pub fn plan_event(pod: &PodTarget, reason: &str, message: &str, key: Option<&str>, now: &str) -> Result<Plan, Error> {
    check_pod(pod)?;
    let reason_ok =
        !reason.is_empty() && reason.len() <= 128 && reason.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !reason_ok {
        return Err(Error::InvalidArgument(format!(
            "{reason:?} is not an Event reason (a short UpperCamelCase word such as SNATPressure, at most 128 characters)"
        )));
    }
    let message: String = message.chars().take(1024).collect();
    let name = event_name(pod, reason, key.unwrap_or(&message));
    let mut involved = json!({"apiVersion": "v1", "kind": "Pod", "namespace": pod.namespace, "name": pod.name});
    if let Some(uid) = &pod.uid {
        involved["uid"] = json!(uid);
    }
    let ns = &pod.namespace;
    let body = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": COMPONENT}},
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "type": "Warning",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    let scope = Scope::Namespace(ns.clone());
    Ok(Plan {
        action: Action::Event,
        target: format!("pod/{ns}/{}", pod.name),
        request: ApiRequest {
            method: "POST",
            path: format!("/api/v1/namespaces/{ns}/events"),
            content_type: "application/json",
            body,
        },
        read_path: format!("/api/v1/namespaces/{ns}/events/{name}"),
        check: Check::EventExists,
        op_read: op("get", "events", scope.clone(), &name),
        op_write: op("create", "events", scope, &name),
    })
}

fn plan_pod_meta(action: Action, pod: &PodTarget, key: &str, value: &str) -> Result<Plan, Error> {
    check_pod(pod)?;
    validate_key(key)?;
    let field = if action == Action::Label {
        validate_label_value(value)?;
        "labels"
    } else {
        "annotations"
    };
    let mut meta = json!({ field: { key: value } });
    if let Some(uid) = &pod.uid {
        meta["uid"] = json!(uid);
    }
    let (ns, name) = (&pod.namespace, &pod.name);
    let path = format!("/api/v1/namespaces/{ns}/pods/{name}");
    let scope = Scope::Namespace(ns.clone());
    Ok(Plan {
        action,
        target: format!("pod/{ns}/{name}"),
        request: ApiRequest {
            method: "PATCH",
            path: path.clone(),
            content_type: MERGE_PATCH,
            body: json!({ "metadata": meta }),
        },
        read_path: path,
        check: Check::PodMeta {
            field,
            key: key.to_string(),
            value: value.to_string(),
            uid: pod.uid.clone(),
        },
        op_read: op("get", "pods", scope.clone(), name),
        op_write: op("patch", "pods", scope, name),
    })
}

/// Plan setting annotation `key` to `value` on `pod`.
pub fn plan_annotate(pod: &PodTarget, key: &str, value: &str) -> Result<Plan, Error> {
    plan_pod_meta(Action::Annotate, pod, key, value)
}

/// Plan setting label `key` to `value` on `pod` (both checked as the API server would).
pub fn plan_label(pod: &PodTarget, key: &str, value: &str) -> Result<Plan, Error> {
    plan_pod_meta(Action::Label, pod, key, value)
}

/// Plan a rollout restart of `w` (as `kubectl rollout restart`: the pod template gets
/// `kubectl.kubernetes.io/restartedAt = now`), tagged with `key` so the same finding never
/// restarts it twice. Only Deployments, StatefulSets and DaemonSets can be restarted.
pub fn plan_restart(w: &WorkloadTarget, key: &str, now: &str) -> Result<Plan, Error> {
    let (resource, plural, lower) = match w.kind.as_str() {
        "Deployment" => ("deployments.apps", "deployments", "deployment"),
        "StatefulSet" => ("statefulsets.apps", "statefulsets", "statefulset"),
        "DaemonSet" => ("daemonsets.apps", "daemonsets", "daemonset"),
        other => {
            return Err(Error::RemediationTarget {
                action: "restart",
                target: format!("{}/{}/{}", other.to_ascii_lowercase(), w.namespace, w.name),
                message: format!(
                    "only a Deployment, StatefulSet or DaemonSet can be restarted, not a {}",
                    if other.is_empty() { "pod without owner" } else { other }
                ),
            });
        }
    };
    check_name("namespace", &w.namespace)?;
    check_name(lower, &w.name)?;
    if key.is_empty() {
        return Err(Error::InvalidArgument("empty restart key".into()));
    }
    let (ns, name) = (&w.namespace, &w.name);
    let path = format!("/apis/apps/v1/namespaces/{ns}/{plural}/{name}");
    let scope = Scope::Namespace(ns.clone());
    Ok(Plan {
        action: Action::Restart,
        target: format!("{lower}/{ns}/{name}"),
        request: ApiRequest {
            method: "PATCH",
            path: path.clone(),
            content_type: MERGE_PATCH,
            body: json!({"spec": {"template": {"metadata": {"annotations": {
                RESTARTED_AT_ANNOTATION: now,
                RESTART_KEY_ANNOTATION: key,
            }}}}}),
        },
        read_path: path,
        check: Check::RestartKey(key.to_string()),
        op_read: op("get", resource, scope.clone(), name),
        op_write: op("patch", resource, scope, name),
    })
}

/// Plan cordoning `node` (`spec.unschedulable = true`, as `kubectl cordon`).
pub fn plan_cordon(node: &str) -> Result<Plan, Error> {
    check_name("node", node)?;
    let path = format!("/api/v1/nodes/{node}");
    Ok(Plan {
        action: Action::Cordon,
        target: format!("node/{node}"),
        request: ApiRequest {
            method: "PATCH",
            path: path.clone(),
            content_type: MERGE_PATCH,
            body: json!({"spec": {"unschedulable": true}}),
        },
        read_path: path,
        check: Check::Cordoned,
        op_read: op("get", "nodes", Scope::Cluster, node),
        op_write: op("patch", "nodes", Scope::Cluster, node),
    })
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The request was sent and accepted; a summary of the API's answer.
    Applied(String),
    /// The target already had it; nothing was sent. Why.
    Unchanged(String),
}

fn raw_request(method: &str, path: &str, content_type: Option<&str>, body: Vec<u8>) -> http::Request<Vec<u8>> {
    let mut b = http::Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        b = b.header(http::header::CONTENT_TYPE, ct);
    }
    b = b.header(http::header::ACCEPT, "application/json");
    // Only a method, a path we built from validated names, and fixed headers: cannot fail.
    b.body(body).unwrap_or_default()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

/// Apply a plan: read the target, return [`Applied::Unchanged`] if it already has what the
/// plan would do, else send the plan's request. Errors say what failed and what to do (an
/// RBAC refusal names the verb and resource to grant).
pub async fn apply(kube: &Kube, plan: &Plan) -> Result<Applied, Error> {
    let get = || Ok(raw_request("GET", &plan.read_path, None, Vec::new()));
    let current: Option<Value> = match kube.send_json::<Value>(&plan.op_read, true, get).await {
        Ok(v) => Some(v),
        Err(Error::KubeNotFound { .. }) if plan.check == Check::EventExists => None,
        Err(Error::KubeNotFound { message, .. }) => {
            return Err(Error::RemediationTarget {
                action: plan.action.name(),
                target: plan.target.clone(),
                message: format!("it no longer exists ({message})"),
            });
        }
        Err(e) => return Err(e),
    };
    if let Some(cur) = &current {
        match &plan.check {
            Check::EventExists => {
                let count = cur.get("count").and_then(Value::as_i64).unwrap_or(1);
                let name = str_at(cur, &["metadata", "name"]).unwrap_or("?");
                return Ok(Applied::Unchanged(format!(
                    "Event {name} already exists (count {count}); not duplicated"
                )));
            }
            Check::PodMeta { field, key, value, uid } => {
                let have_uid = str_at(cur, &["metadata", "uid"]);
                if let (Some(want), Some(have)) = (uid, have_uid)
                    && want != have
                {
                    return Err(Error::RemediationTarget {
                        action: plan.action.name(),
                        target: plan.target.clone(),
                        message: format!(
                            "the pod was replaced (UID {have}, the finding was about {want}); re-run the playbook to find the current culprit"
                        ),
                    });
                }
                if str_at(cur, &["metadata", field, key]) == Some(value.as_str()) {
                    return Ok(Applied::Unchanged(format!("{field} {key}={value} already set")));
                }
            }
            Check::RestartKey(key) => {
                let ann = ["spec", "template", "metadata", "annotations"];
                let have = str_at(cur, &[ann.as_slice(), &[RESTART_KEY_ANNOTATION]].concat());
                if have == Some(key.as_str()) {
                    let at = str_at(cur, &[ann.as_slice(), &[RESTARTED_AT_ANNOTATION]].concat()).unwrap_or("?");
                    return Ok(Applied::Unchanged(format!(
                        "already restarted for this finding ({RESTART_KEY_ANNOTATION}={key}, restartedAt {at})"
                    )));
                }
            }
            Check::Cordoned => {
                if cur.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                    return Ok(Applied::Unchanged("node already cordoned".into()));
                }
            }
        }
    }
    let body = serde_json::to_vec(&plan.request.body).unwrap_or_default();
    let req = &plan.request;
    let send = || Ok(raw_request(req.method, &req.path, Some(req.content_type), body.clone()));
    // A create is not retried on 5xx (it may have happened); patches are idempotent.
    let idempotent = req.method != "POST";
    let answer: Value = match kube.send_json(&plan.op_write, idempotent, send).await {
        Ok(v) => v,
        Err(Error::KubeApi { code: 409, .. }) if plan.check == Check::EventExists => {
            return Ok(Applied::Unchanged(
                "Event created meanwhile by another run; not duplicated".into(),
            ));
        }
        Err(e) => return Err(e),
    };
    let name = str_at(&answer, &["metadata", "name"]).unwrap_or("?");
    let rv = str_at(&answer, &["metadata", "resourceVersion"]).unwrap_or("?");
    Ok(Applied::Applied(match plan.action {
        Action::Event => format!(
            "created Event {name} (uid {})",
            str_at(&answer, &["metadata", "uid"]).unwrap_or("?")
        ),
        Action::Annotate | Action::Label => match &plan.check {
            Check::PodMeta { field, key, value, .. } => {
                format!("set {field} {key}={value} on pod {name} (resourceVersion {rv})")
            }
            _ => format!("patched pod {name}"),
        },
        Action::Restart => format!(
            "restarted {} (resourceVersion {rv}; the rollout replaces its pods)",
            plan.target
        ),
        Action::Cordon => format!("cordoned node {name} (resourceVersion {rv}); undo with kubectl uncordon {name}"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodTarget {
        PodTarget {
            namespace: "shop".into(),
            name: "api-7d9f-0".into(),
            uid: Some("00000000-0000-0000-0000-000000000000".into()),
        }
    }

    #[test]
    fn event_request_is_exact_and_its_name_is_deterministic() {
        let p = plan_event(
            &pod(),
            "SNATPressure",
            "42 ports to 20.1.2.3:443",
            None,
            "2026-11-21T07:00:00Z",
        )
        .unwrap();
        assert_eq!(p.request.method, "POST");
        assert_eq!(p.request.path, "/api/v1/namespaces/shop/events");
        let b = &p.request.body;
        assert_eq!(b["involvedObject"]["uid"], "00000000-0000-0000-0000-000000000000");
        assert_eq!(b["type"], "Warning");
        assert_eq!(b["reportingComponent"], "snat");
        let name = b["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("api-7d9f-0.snat-") && name.len() == "api-7d9f-0.snat-".len() + 16);
        assert_eq!(p.read_path, format!("/api/v1/namespaces/shop/events/{name}"));
        // Same finding later: same name; another message or key: another name.
        let again = plan_event(
            &pod(),
            "SNATPressure",
            "42 ports to 20.1.2.3:443",
            None,
            "2026-11-22T00:00:00Z",
        )
        .unwrap();
        assert_eq!(again.request.body["metadata"]["name"], name);
        let other = plan_event(&pod(), "SNATPressure", "other", None, "2026-11-21T07:00:00Z").unwrap();
        assert_ne!(other.request.body["metadata"]["name"], name);
        let keyed = plan_event(&pod(), "SNATPressure", "other", Some("42 ports to 20.1.2.3:443"), "x").unwrap();
        assert_eq!(keyed.request.body["metadata"]["name"], name);
    }

    #[test]
    fn long_pod_names_still_give_valid_event_names() {
        let mut p = pod();
        p.name = format!("{}-x", "a".repeat(250));
        let n = event_name(&p, "R", "k");
        assert!(n.len() <= 253, "{}", n.len());
        assert!(check_name("event", &n).is_ok(), "{n}");
    }

    #[rstest::rstest]
    #[case("snat.io/culprit", true)]
    #[case("culprit", true)]
    #[case("a_b.c-d", true)]
    #[case("", false)]
    #[case("-x", false)]
    #[case("snat.io/", false)]
    #[case("Snat.IO/x", false)]
    #[case("a/b/c", false)]
    #[case("snat io/x", false)]
    fn label_keys(#[case] key: &str, #[case] ok: bool) {
        assert_eq!(validate_key(key).is_ok(), ok, "{key:?}");
    }

    #[rstest::rstest]
    #[case("", true)]
    #[case("true", true)]
    #[case("20.1.2.3", true)]
    #[case("a b", false)]
    #[case("x-", false)]
    #[case("20.1.2.3:443", false)]
    fn label_values(#[case] v: &str, #[case] ok: bool) {
        assert_eq!(validate_label_value(v).is_ok(), ok, "{v:?}");
    }

    #[test]
    fn bad_input_is_an_invalid_argument_not_a_request() {
        assert!(plan_label(&pod(), "snat.io/x", "a b").is_err());
        assert!(plan_annotate(&pod(), "snat.io/x", "any value: at all").is_ok());
        assert!(plan_event(&pod(), "SNAT Pressure", "m", None, "t").is_err());
        assert!(plan_cordon("Node_1").is_err());
        let mut bad = pod();
        bad.namespace = "../x".into();
        assert!(plan_annotate(&bad, "k", "v").is_err());
        let job = WorkloadTarget {
            namespace: "shop".into(),
            kind: "Job".into(),
            name: "once".into(),
        };
        let e = plan_restart(&job, "k", "t").unwrap_err().to_string();
        assert!(e.contains("only a Deployment, StatefulSet or DaemonSet"), "{e}");
    }

    #[test]
    fn restart_patches_the_template_like_kubectl() {
        let w = WorkloadTarget {
            namespace: "shop".into(),
            kind: "StatefulSet".into(),
            name: "db".into(),
        };
        let p = plan_restart(&w, "uid-1", "2026-11-21T07:00:00Z").unwrap();
        assert_eq!(p.target, "statefulset/shop/db");
        assert_eq!(p.request.path, "/apis/apps/v1/namespaces/shop/statefulsets/db");
        assert_eq!(p.request.content_type, MERGE_PATCH);
        let ann = &p.request.body["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(ann[RESTARTED_AT_ANNOTATION], "2026-11-21T07:00:00Z");
        assert_eq!(ann[RESTART_KEY_ANNOTATION], "uid-1");
    }
}
