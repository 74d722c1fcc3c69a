//! From a node IP to a node, from a node to its pods, from a pod UID to a pod and the
//! workload that owns it: the article's `kubectl get nodes -o wide | grep <IP>` and
//! `kubectl get pods -A -o wide --field-selector spec.nodeName=<node>`, as stages.
//!
//! Lists are paginated (`limit`/`continue`) so a large cluster never arrives as one huge
//! answer. Owners are followed through `ownerReferences`: a ReplicaSet's pod belongs to its
//! Deployment, a Job's pod to its CronJob; for Jobs the owner says whether the Job still runs,
//! because a finished Job's connections are gone (the article: trace Jobs only while they run).

use std::collections::HashMap;
use std::net::IpAddr;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, OwnerReference};
use kube::Resource;
use kube::api::{GetParams, ListParams};
use kube::core::Request;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Kube, Op, Scope};
use crate::error::Error;
use crate::model::{NodeRef, OwnerRef, PodRef, Qos};

#[derive(Deserialize)]
struct Page<K> {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default = "Vec::new")]
    items: Vec<K>,
}

/// Walk the objects at `url_path` page by page (`limit` = the client's page size, following
/// `continue` tokens), with the given selectors, handing each page to `visit` until it
/// returns `false` or the list ends.
pub async fn for_each_page<K: DeserializeOwned>(
    kube: &Kube,
    op: &Op,
    url_path: &str,
    field_selector: Option<&str>,
    label_selector: Option<&str>,
    mut visit: impl FnMut(Vec<K>) -> bool,
) -> Result<(), Error> {
    let mut token: Option<String> = None;
    let req = Request::new(url_path);
    for _page in 0..100_000u32 {
        let mut lp = ListParams::default().limit(kube.options().page_size.max(1));
        if let Some(f) = field_selector {
            lp = lp.fields(f);
        }
        if let Some(l) = label_selector {
            lp = lp.labels(l);
        }
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page: Page<K> = kube.send_json(op, true, || req.list(&lp)).await?;
        if !visit(page.items) {
            return Ok(());
        }
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(()),
        }
    }
    Err(Error::KubeDecode {
        op: op.describe(),
        message: "the API server kept returning continue tokens (100000 pages): giving up".into(),
    })
}

/// List every object at `url_path` (all pages), with the given selectors.
pub async fn list_all<K: DeserializeOwned>(
    kube: &Kube,
    op: &Op,
    url_path: &str,
    field_selector: Option<&str>,
    label_selector: Option<&str>,
) -> Result<Vec<K>, Error> {
    let mut out = Vec::new();
    for_each_page(kube, op, url_path, field_selector, label_selector, |items| {
        out.extend(items);
        true
    })
    .await?;
    Ok(out)
}

/// Find the node that has `ip` as an InternalIP or ExternalIP address (the load balancer's
/// BackendIPAddress is the node's InternalIP). `None` when no node has it.
pub async fn node_by_ip(kube: &Kube, ip: IpAddr) -> Result<Option<NodeRef>, Error> {
    let op = Op {
        verb: "list",
        resource: "nodes",
        scope: Scope::Cluster,
        name: None,
    };
    let nodes: Vec<Node> = list_all(kube, &op, &Node::url_path(&(), None), None, None).await?;
    Ok(node_with_ip(&nodes, ip))
}

/// The node among `nodes` with `ip` as an InternalIP or ExternalIP address.
pub fn node_with_ip(nodes: &[Node], ip: IpAddr) -> Option<NodeRef> {
    nodes.iter().find_map(|n| {
        let has = n.status.as_ref()?.addresses.as_ref()?.iter().any(|a| {
            (a.type_ == "InternalIP" || a.type_ == "ExternalIP") && a.address.trim().parse::<IpAddr>().ok() == Some(ip)
        });
        has.then(|| NodeRef {
            name: n.metadata.name.clone(),
            ip: Some(ip),
        })
    })
}

/// A pod as the stages need it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodInfo {
    /// The pod (uid, namespace, name, QoS, owner, hostNetwork).
    pub pod: PodRef,
    /// The node it is scheduled on.
    pub node: Option<String>,
    /// Its IP.
    pub pod_ip: Option<String>,
    /// Its phase (`Running`, `Succeeded`...).
    pub phase: Option<String>,
    /// Its containers' names, in spec order.
    pub containers: Vec<String>,
    /// For a static pod's mirror pod: the kubelet's config hash ([`MIRROR_ANNOTATION`],
    /// lower case), which is the UID its cgroup carries, not `pod.uid`. `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
}

/// The [`PodInfo`] of a pod object (owner not yet resolved).
pub fn pod_info(p: &Pod) -> PodInfo {
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    PodInfo {
        pod: PodRef {
            uid: p.metadata.uid.clone().unwrap_or_default(),
            namespace: p.metadata.namespace.clone(),
            name: p.metadata.name.clone(),
            qos: status.and_then(|s| s.qos_class.as_deref()).and_then(|q| match q {
                "Guaranteed" => Some(Qos::Guaranteed),
                "Burstable" => Some(Qos::Burstable),
                "BestEffort" => Some(Qos::Besteffort),
                _ => None,
            }),
            owner: None,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        },
        node: spec.and_then(|s| s.node_name.clone()),
        pod_ip: status.and_then(|s| s.pod_ip.clone()),
        phase: status.and_then(|s| s.phase.clone()),
        containers: spec
            .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default(),
        config_hash: p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(MIRROR_ANNOTATION))
            .map(|h| h.trim().to_ascii_lowercase()),
    }
}

async fn list_pods(kube: &Kube, field_selector: Option<&str>) -> Result<Vec<Pod>, Error> {
    let op = Op {
        verb: "list",
        resource: "pods",
        scope: Scope::Cluster,
        name: None,
    };
    list_all(kube, &op, &Pod::url_path(&(), None), field_selector, None).await
}

/// Every pod scheduled on `node`, in all namespaces (field selector `spec.nodeName`), with
/// owners resolved when `resolve_owners` is set (one `get` per distinct ReplicaSet or Job).
pub async fn pods_on_node(kube: &Kube, node: &str, resolve_owners: bool) -> Result<Vec<PodInfo>, Error> {
    if node.is_empty() || node.contains([',', '=', '!']) {
        return Err(Error::InvalidArgument(format!("{node:?} is not a node name")));
    }
    let pods = list_pods(kube, Some(&format!("spec.nodeName={node}"))).await?;
    let mut cache = OwnerCache::default();
    let mut out = Vec::with_capacity(pods.len());
    for p in &pods {
        let mut info = pod_info(p);
        if resolve_owners {
            info.pod.owner = owner_of(kube, p, &mut cache).await?;
        }
        out.push(info);
    }
    Ok(out)
}

/// The annotation the kubelet puts on a static pod's mirror pod: the static pod's config
/// hash, which is the UID its cgroup is named after (the mirror pod has a UID of its own).
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Whether `pod` is the one a cgroup names with `uid` (dashes removed, lower case): its
/// own UID, or for a static pod's mirror pod the config hash in [`MIRROR_ANNOTATION`].
pub fn pod_has_uid(pod: &Pod, uid: &str) -> bool {
    let same = |s: &str| s.trim().replace('-', "").eq_ignore_ascii_case(uid);
    pod.metadata.uid.as_deref().is_some_and(same)
        || pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(MIRROR_ANNOTATION))
            .is_some_and(|h| same(h))
}

/// The pod with this UID (dashed or, for static pods, the 32 hex digits of their cgroup:
/// their mirror pod is found by its [`MIRROR_ANNOTATION`]), searching only `node` when
/// given. Its owner is resolved. `None` when no pod has it.
pub async fn pod_by_uid(kube: &Kube, uid: &str, node: Option<&str>) -> Result<Option<PodInfo>, Error> {
    let want = uid.trim().replace('-', "").to_ascii_lowercase();
    if want.is_empty() {
        return Err(Error::InvalidArgument("empty pod UID".into()));
    }
    let op = Op {
        verb: "list",
        resource: "pods",
        scope: Scope::Cluster,
        name: None,
    };
    let selector = node.map(|n| format!("spec.nodeName={n}"));
    let mut found: Option<Pod> = None;
    // Stop at the page that has it: on a large cluster, most pages are never fetched.
    for_each_page(
        kube,
        &op,
        &Pod::url_path(&(), None),
        selector.as_deref(),
        None,
        |items: Vec<Pod>| {
            found = items.into_iter().find(|p| pod_has_uid(p, &want));
            found.is_none()
        },
    )
    .await?;
    let Some(p) = found.as_ref() else {
        return Ok(None);
    };
    let mut info = pod_info(p);
    info.pod.owner = owner_of(kube, p, &mut OwnerCache::default()).await?;
    Ok(Some(info))
}

/// Resolved owners by (namespace, kind, name), so a node's pods cost one `get` per
/// ReplicaSet or Job, not one per pod.
#[derive(Debug, Default)]
pub struct OwnerCache(HashMap<(String, String, String), OwnerRef>);

fn controller_of(refs: Option<&Vec<OwnerReference>>) -> Option<&OwnerReference> {
    let refs = refs?;
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
}

/// Whether a Job still runs: it has active pods and no `Complete`/`Failed` condition.
pub fn job_is_active(job: &Job) -> bool {
    let Some(st) = &job.status else { return true };
    let finished = st.completion_time.is_some()
        || st
            .conditions
            .iter()
            .flatten()
            .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
    !finished && st.active.unwrap_or(0) > 0
}

/// The workload that owns `pod`: its controller's controller where there is one
/// (ReplicaSet -> Deployment, Job -> CronJob), with `active` set for Job-owned pods.
/// A ReplicaSet or Job that no longer exists is reported as itself.
pub async fn owner_of(kube: &Kube, pod: &Pod, cache: &mut OwnerCache) -> Result<Option<OwnerRef>, Error> {
    let Some(r) = controller_of(pod.metadata.owner_references.as_ref()) else {
        return Ok(None);
    };
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let key = (ns.clone(), r.kind.clone(), r.name.clone());
    if let Some(o) = cache.0.get(&key) {
        return Ok(Some(o.clone()));
    }
    let owner = match r.kind.as_str() {
        "ReplicaSet" => {
            let op = Op {
                verb: "get",
                resource: "replicasets.apps",
                scope: Scope::Namespace(ns.clone()),
                name: Some(r.name.clone()),
            };
            let req = Request::new(ReplicaSet::url_path(&(), Some(&ns)));
            match kube
                .send_json::<ReplicaSet>(&op, true, || req.get(&r.name, &GetParams::default()))
                .await
            {
                Ok(rs) => match controller_of(rs.metadata.owner_references.as_ref()) {
                    Some(o) => OwnerRef {
                        kind: o.kind.clone(),
                        name: o.name.clone(),
                        active: None,
                    },
                    None => plain(r),
                },
                Err(Error::KubeNotFound { .. }) => plain(r),
                Err(e) => return Err(e),
            }
        }
        "Job" => {
            let op = Op {
                verb: "get",
                resource: "jobs.batch",
                scope: Scope::Namespace(ns.clone()),
                name: Some(r.name.clone()),
            };
            let req = Request::new(Job::url_path(&(), Some(&ns)));
            match kube
                .send_json::<Job>(&op, true, || req.get(&r.name, &GetParams::default()))
                .await
            {
                Ok(job) => {
                    let active = Some(job_is_active(&job));
                    match controller_of(job.metadata.owner_references.as_ref()) {
                        Some(o) => OwnerRef {
                            kind: o.kind.clone(),
                            name: o.name.clone(),
                            active,
                        },
                        None => OwnerRef {
                            kind: "Job".into(),
                            name: r.name.clone(),
                            active,
                        },
                    }
                }
                Err(Error::KubeNotFound { .. }) => OwnerRef {
                    kind: "Job".into(),
                    name: r.name.clone(),
                    active: Some(false),
                },
                Err(e) => return Err(e),
            }
        }
        _ => plain(r),
    };
    cache.0.insert(key, owner.clone());
    Ok(Some(owner))
}

fn plain(r: &OwnerReference) -> OwnerRef {
    OwnerRef {
        kind: r.kind.clone(),
        name: r.name.clone(),
        active: None,
    }
}

/// What to tell the user when the culprit belongs to a Job that has finished: its
/// connections are gone, so tracing now shows nothing.
pub fn finished_job_note(owner: &OwnerRef) -> Option<String> {
    (owner.active == Some(false)).then(|| {
        format!(
            "{} {} has finished: its connections are gone, so tracing now shows nothing; trace Jobs only while they run (e.g. at the next {} run)",
            owner.kind,
            owner.name,
            if owner.kind == "CronJob" { "scheduled" } else { "Job" }
        )
    })
}
