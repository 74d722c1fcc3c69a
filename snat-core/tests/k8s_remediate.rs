//! Remediation actions through the real kube client against a loopback API server
//! (tests/support/apiserver.rs): the exact requests, idempotent re-runs, refusals, and the
//! RBAC file granting exactly the verbs the actions use.
#![cfg(feature = "kube")]

mod support {
    pub mod apiserver;
    pub mod fixtures;
}

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use snat_core::Error;
use snat_core::k8s::remediate::{self, Applied, PodTarget, WorkloadTarget};
use snat_core::k8s::{Kube, KubeOptions};
use support::apiserver::{FakeApi, Fault, State};
use support::fixtures::cluster;

struct Env {
    api: FakeApi,
    _dir: tempfile::TempDir,
    kube: Kube,
}

async fn env(state: State) -> Env {
    let api = FakeApi::start(state).await;
    let dir = tempfile::tempdir().unwrap();
    let kc = api.kubeconfig(dir.path(), &[]);
    let opts = KubeOptions {
        kubeconfig: Some(kc),
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(3),
        backoff_base: Duration::from_millis(10),
        ..Default::default()
    };
    let kube = Kube::connect(&opts).await.unwrap();
    Env { api, _dir: dir, kube }
}

fn requests(api: &FakeApi) -> Vec<String> {
    api.state.requests.lock().unwrap().clone()
}

fn mutating(api: &FakeApi) -> Vec<String> {
    requests(api).into_iter().filter(|r| !r.starts_with("GET ")).collect()
}

fn culprit() -> PodTarget {
    PodTarget {
        namespace: "shop".into(),
        name: "api-7d9f-0".into(),
        uid: Some("00000000-0000-0000-0000-000000000000".into()),
    }
}

#[tokio::test]
async fn event_is_created_exactly_once() {
    let e = env(cluster()).await;
    let msg = "api-7d9f-0 holds 1012 SNAT ports to 20.50.1.2:443";
    let plan = remediate::plan_event(&culprit(), "SNATPressure", msg, None, "2026-11-21T07:00:00Z").unwrap();
    let got = remediate::apply(&e.kube, &plan).await.unwrap();
    assert!(
        matches!(&got, Applied::Applied(s) if s.starts_with("created Event api-7d9f-0.snat-")),
        "{got:?}"
    );
    let events = e.api.state.events.lock().unwrap().clone();
    assert_eq!(events.len(), 1);
    let ev = &events[0];
    assert_eq!(ev["involvedObject"]["kind"], "Pod");
    assert_eq!(ev["involvedObject"]["name"], "api-7d9f-0");
    assert_eq!(ev["involvedObject"]["namespace"], "shop");
    assert_eq!(ev["involvedObject"]["uid"], "00000000-0000-0000-0000-000000000000");
    assert_eq!(ev["reason"], "SNATPressure");
    assert_eq!(ev["message"], msg);
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["source"]["component"], "snat");
    assert_eq!(ev["reportingComponent"], "snat");
    assert_eq!(ev["count"], 1);
    // The body the server received is the plan's, byte for byte as JSON, with its content type.
    let bodies = e.api.state.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0].0, "POST /api/v1/namespaces/shop/events");
    assert_eq!(bodies[0].1, "application/json");
    assert_eq!(bodies[0].2, plan.request.body);

    // A re-run (later, same finding) finds it and sends nothing.
    let again = remediate::plan_event(&culprit(), "SNATPressure", msg, None, "2026-11-21T08:00:00Z").unwrap();
    let got = remediate::apply(&e.kube, &again).await.unwrap();
    assert!(
        matches!(&got, Applied::Unchanged(s) if s.contains("already exists")),
        "{got:?}"
    );
    assert_eq!(e.api.state.events.lock().unwrap().len(), 1);
    assert_eq!(mutating(&e.api).len(), 1);
}

#[tokio::test]
async fn annotate_and_label_are_idempotent_and_check_the_uid() {
    let e = env(cluster()).await;
    let a = remediate::plan_annotate(&culprit(), "snat.io/culprit", "1012 ports to 20.50.1.2:443").unwrap();
    let l = remediate::plan_label(&culprit(), "snat.io/snat-pressure", "true").unwrap();
    assert!(matches!(
        remediate::apply(&e.kube, &a).await.unwrap(),
        Applied::Applied(_)
    ));
    assert!(matches!(
        remediate::apply(&e.kube, &l).await.unwrap(),
        Applied::Applied(_)
    ));
    {
        let pods = e.api.state.pods.lock().unwrap();
        let p = pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("api-7d9f-0"))
            .unwrap();
        let ann = p.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann["snat.io/culprit"], "1012 ports to 20.50.1.2:443");
        assert_eq!(p.metadata.labels.as_ref().unwrap()["snat.io/snat-pressure"], "true");
    }
    let bodies = e.api.state.bodies.lock().unwrap().clone();
    assert_eq!(bodies[0].0, "PATCH /api/v1/namespaces/shop/pods/api-7d9f-0");
    assert_eq!(bodies[0].1, "application/merge-patch+json");
    assert_eq!(bodies[0].2, a.request.body);
    assert_eq!(mutating(&e.api).len(), 2);
    // Re-run: unchanged, nothing sent.
    assert!(matches!(
        remediate::apply(&e.kube, &a).await.unwrap(),
        Applied::Unchanged(_)
    ));
    assert!(matches!(
        remediate::apply(&e.kube, &l).await.unwrap(),
        Applied::Unchanged(_)
    ));
    assert_eq!(mutating(&e.api).len(), 2);
    // A new value is a change.
    let l2 = remediate::plan_label(&culprit(), "snat.io/snat-pressure", "false").unwrap();
    assert!(matches!(
        remediate::apply(&e.kube, &l2).await.unwrap(),
        Applied::Applied(_)
    ));
    assert_eq!(mutating(&e.api).len(), 3);
    // The pod was replaced under the same name: not touched.
    let mut old = culprit();
    old.uid = Some("99999999-0000-0000-0000-000000000000".into());
    let stale = remediate::plan_annotate(&old, "snat.io/culprit", "x").unwrap();
    let err = remediate::apply(&e.kube, &stale).await.unwrap_err();
    assert!(matches!(err, Error::RemediationTarget { .. }), "{err}");
    assert!(err.to_string().contains("the pod was replaced"), "{err}");
    assert_eq!(mutating(&e.api).len(), 3);
    // A pod that is gone is named.
    let mut gone = culprit();
    gone.name = "api-7d9f-9".into();
    let err = remediate::apply(&e.kube, &remediate::plan_label(&gone, "k", "v").unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pod/shop/api-7d9f-9") && err.contains("no longer exists"),
        "{err}"
    );
}

#[tokio::test]
async fn restart_once_per_key_like_kubectl() {
    let e = env(cluster()).await;
    let w = WorkloadTarget {
        namespace: "shop".into(),
        kind: "Deployment".into(),
        name: "api".into(),
    };
    let p = remediate::plan_restart(&w, "00000000-0000-0000-0000-000000000000", "2026-11-21T07:00:00Z").unwrap();
    let got = remediate::apply(&e.kube, &p).await.unwrap();
    assert!(
        matches!(&got, Applied::Applied(s) if s.starts_with("restarted deployment/shop/api")),
        "{got:?}"
    );
    let dep = e.api.state.workloads.lock().unwrap()[0].clone();
    let ann = &dep["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["kubectl.kubernetes.io/restartedAt"], "2026-11-21T07:00:00Z");
    assert_eq!(ann["snat.io/restart-key"], "00000000-0000-0000-0000-000000000000");
    // The rest of the template is kept.
    assert_eq!(dep["spec"]["template"]["metadata"]["labels"]["app"], "api");
    // Re-run an hour later for the same culprit: no second restart.
    let again = remediate::plan_restart(&w, "00000000-0000-0000-0000-000000000000", "2026-11-21T08:00:00Z").unwrap();
    assert!(matches!(
        remediate::apply(&e.kube, &again).await.unwrap(),
        Applied::Unchanged(_)
    ));
    assert_eq!(mutating(&e.api).len(), 1);
    // A new culprit pod of the same Deployment: restarted again.
    let next = remediate::plan_restart(&w, "new-pod-uid", "2026-11-21T09:00:00Z").unwrap();
    assert!(matches!(
        remediate::apply(&e.kube, &next).await.unwrap(),
        Applied::Applied(_)
    ));
    assert_eq!(mutating(&e.api).len(), 2);
}

#[tokio::test]
async fn cordon_is_idempotent_and_rbac_refusal_names_the_verb() {
    let e = env(cluster()).await;
    let p = remediate::plan_cordon("node-a").unwrap();
    e.api
        .state
        .faults
        .lock()
        .unwrap()
        .push_back(("/api/v1/nodes/node-a".into(), Fault::Status(403, None)));
    let err = remediate::apply(&e.kube, &p).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::KubeForbidden {
                verb: "get",
                resource: "nodes",
                ..
            }
        ),
        "{err}"
    );
    assert!(mutating(&e.api).is_empty());
    let got = remediate::apply(&e.kube, &p).await.unwrap();
    assert!(
        matches!(&got, Applied::Applied(s) if s.contains("cordoned node node-a")),
        "{got:?}"
    );
    let n = e.api.state.nodes.lock().unwrap()[0].clone();
    assert_eq!(n.spec.unwrap().unschedulable, Some(true));
    assert!(matches!(
        remediate::apply(&e.kube, &p).await.unwrap(),
        Applied::Unchanged(_)
    ));
    assert_eq!(mutating(&e.api), vec!["PATCH /api/v1/nodes/node-a".to_string()]);
    // The write refused by RBAC (the read allowed): the patch verb is named.
    let b = remediate::plan_cordon("node-b").unwrap();
    e.api
        .state
        .faults
        .lock()
        .unwrap()
        .push_back(("/api/v1/nodes/node-b".into(), Fault::Status(200, None)));
    // (A scripted 200 Status body for the read decodes as an object without spec: not
    // cordoned, so the patch is sent; then script the refusal of the patch.)
    e.api
        .state
        .faults
        .lock()
        .unwrap()
        .push_back(("/api/v1/nodes/node-b".into(), Fault::Status(403, None)));
    let err = remediate::apply(&e.kube, &b).await.unwrap_err().to_string();
    assert!(err.contains("cannot patch nodes \"node-b\""), "{err}");
}

/// (api group, resource, verb) of a request line "METHOD path".
fn access_of(request: &str) -> (String, String, String) {
    let (method, pq) = request.split_once(' ').unwrap();
    let path = pq.split('?').next().unwrap();
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match seg[0] {
        "api" => (String::new(), &seg[2..]),
        _ => (seg[1].to_string(), &seg[3..]),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] => rest,
        rest => rest,
    };
    let (resource, has_name) = match rest {
        [r] => (r.to_string(), false),
        [r, _name] => (r.to_string(), true),
        other => panic!("unexpected path {other:?}"),
    };
    let verb = match (method, has_name) {
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        (m, _) => panic!("unexpected method {m}"),
    };
    (group, resource, verb.to_string())
}

#[tokio::test]
async fn rbac_remediation_grants_exactly_what_the_actions_call() {
    let e = env(cluster()).await;
    let now = "2026-11-21T07:00:00Z";
    let plans = [
        remediate::plan_event(&culprit(), "SNATPressure", "m", None, now).unwrap(),
        remediate::plan_annotate(&culprit(), "snat.io/a", "v").unwrap(),
        remediate::plan_label(&culprit(), "snat.io/l", "v").unwrap(),
        remediate::plan_cordon("node-a").unwrap(),
    ];
    for p in &plans {
        remediate::apply(&e.kube, p).await.unwrap();
    }
    e.api
        .state
        .workloads
        .lock()
        .unwrap()
        .extend([serde_json::json!({"kind": "StatefulSet", "metadata": {"name": "db", "namespace": "shop"}})]);
    for (kind, ns, name) in [
        ("Deployment", "shop", "api"),
        ("StatefulSet", "shop", "db"),
        ("DaemonSet", "kube-system", "kube-proxy"),
    ] {
        let w = WorkloadTarget {
            namespace: ns.into(),
            kind: kind.into(),
            name: name.into(),
        };
        remediate::apply(&e.kube, &remediate::plan_restart(&w, "k", now).unwrap())
            .await
            .unwrap();
    }
    let used: BTreeSet<_> = requests(&e.api).iter().map(|r| access_of(r)).collect();

    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/optional/rbac-remediation.yaml"
    ))
    .unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let role = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    let mut granted = BTreeSet::new();
    for r in role["rules"].as_array().unwrap() {
        for g in r["apiGroups"].as_array().unwrap() {
            for res in r["resources"].as_array().unwrap() {
                for v in r["verbs"].as_array().unwrap() {
                    granted.insert((
                        g.as_str().unwrap().to_string(),
                        res.as_str().unwrap().to_string(),
                        v.as_str().unwrap().to_string(),
                    ));
                }
            }
        }
    }
    assert_eq!(granted, used);
}
