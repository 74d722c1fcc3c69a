//! A small cluster for tests: two nodes, pods owned by a ReplicaSet (of a Deployment), a
//! finished CronJob's Job, a running Job, a DaemonSet and a bare pod.

#![allow(dead_code)]

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::{Container, Node, NodeAddress, NodeCondition, NodeStatus, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::apiserver::State;

/// A Linux node, Ready, as a kubelet registers it (`kubernetes.io/os=linux`).
pub fn node(name: &str, internal: &str) -> Node {
    node_with(
        name,
        internal,
        &[("kubernetes.io/os", "linux")],
        ("True", "KubeletReady", "kubelet is posting ready status"),
    )
}

/// A node of a Windows node pool.
pub fn windows_node(name: &str, internal: &str) -> Node {
    node_with(
        name,
        internal,
        &[("kubernetes.io/os", "windows")],
        ("True", "KubeletReady", "kubelet is posting ready status"),
    )
}

/// An AKS virtual node (virtual-kubelet on ACI): a Linux node object without a host.
pub fn virtual_node(name: &str, internal: &str) -> Node {
    node_with(
        name,
        internal,
        &[
            ("kubernetes.io/os", "linux"),
            ("type", "virtual-kubelet"),
            ("kubernetes.io/role", "agent"),
        ],
        ("True", "Ready", "ok"),
    )
}

/// A Linux node whose kubelet stopped reporting.
pub fn not_ready_node(name: &str, internal: &str) -> Node {
    node_with(
        name,
        internal,
        &[("kubernetes.io/os", "linux")],
        ("Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status."),
    )
}

/// A node with these labels (plus `kubernetes.io/hostname`) and this Ready condition
/// (status, reason, message).
pub fn node_with(name: &str, internal: &str, labels: &[(&str, &str)], ready: (&str, &str, &str)) -> Node {
    let mut l: std::collections::BTreeMap<String, String> =
        labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    l.insert("kubernetes.io/hostname".into(), name.into());
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(l),
            ..Default::default()
        },
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.into(),
                },
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: internal.into(),
                },
            ]),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: ready.0.into(),
                reason: Some(ready.1.into()),
                message: Some(ready.2.into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn owner(kind: &str, name: &str) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: kind.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        controller: Some(true),
        ..Default::default()
    }
}

pub fn pod(ns: &str, name: &str, uid: &str, node: &str, own: Option<OwnerReference>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            uid: Some(uid.into()),
            owner_references: own.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                name: "app".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            qos_class: Some("Burstable".into()),
            pod_ip: Some("10.244.1.7".into()),
            ..Default::default()
        }),
    }
}

pub fn cluster() -> State {
    let mut pods = Vec::new();
    // 7 pods on node-a (more than a page of 3), 2 on node-b.
    for i in 0..5 {
        pods.push(pod(
            "shop",
            &format!("api-7d9f-{i}"),
            &format!("00000000-0000-0000-0000-00000000000{i}"),
            "node-a",
            Some(owner("ReplicaSet", "api-7d9f")),
        ));
    }
    pods.push(pod(
        "batch",
        "report-28900-x",
        "11111111-0000-0000-0000-000000000001",
        "node-a",
        Some(owner("Job", "report-28900")),
    ));
    pods.push(pod(
        "batch",
        "once-y",
        "11111111-0000-0000-0000-000000000002",
        "node-a",
        Some(owner("Job", "once")),
    ));
    pods.push(pod(
        "kube-system",
        "dns-1",
        "22222222-0000-0000-0000-000000000001",
        "node-b",
        None,
    ));
    pods.push(pod(
        "kube-system",
        "proxy-1",
        "22222222-0000-0000-0000-000000000002",
        "node-b",
        Some(owner("DaemonSet", "kube-proxy")),
    ));
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some("api-7d9f".into()),
            namespace: Some("shop".into()),
            owner_references: Some(vec![owner("Deployment", "api")]),
            ..Default::default()
        },
        ..Default::default()
    };
    let finished = Job {
        metadata: ObjectMeta {
            name: Some("report-28900".into()),
            namespace: Some("batch".into()),
            owner_references: Some(vec![owner("CronJob", "report")]),
            ..Default::default()
        },
        status: Some(JobStatus {
            active: Some(0),
            succeeded: Some(1),
            completion_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2024-06-01T10:00:00Z".parse().unwrap(),
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    let running = Job {
        metadata: ObjectMeta {
            name: Some("once".into()),
            namespace: Some("batch".into()),
            ..Default::default()
        },
        status: Some(JobStatus {
            active: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    };
    State {
        token: "t0ken".into(),
        nodes: vec![node("node-a", "10.224.0.4"), node("node-b", "10.224.0.5")].into(),
        pods: pods.into(),
        replicasets: vec![rs].into(),
        jobs: vec![finished, running].into(),
        workloads: vec![
            serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "api", "namespace": "shop", "uid": "uid-api", "resourceVersion": "7"},
                "spec": {"template": {"metadata": {"labels": {"app": "api"}}}}}),
            serde_json::json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {"name": "kube-proxy", "namespace": "kube-system", "uid": "uid-kube-proxy"},
                "spec": {"template": {"metadata": {}}}}),
        ]
        .into(),
        max_page: 3,
        ..Default::default()
    }
}
