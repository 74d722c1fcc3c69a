//! `kube::` — the Kubernetes API from a playbook: node by IP, pods on a node, pod by UID
//! with its owner workload, and a socket census inside a pod through `exec`. The cluster is
//! the one `--kubeconfig` / `--context` name (else `KUBECONFIG`, `~/.kube/config`, or the
//! in-cluster ServiceAccount). Every function is a stage: it is recorded in the audit
//! record, and a failure (unreachable cluster, RBAC) is a run-time error a playbook can catch
//! with `try { ... } catch (e) { ... }`.

use rhai::{Array, Dynamic, EvalAltResult, Map, Module};
use serde_json::json;
use snat_core::k8s::exec;
use snat_core::k8s::lookup::{self, PodInfo};

use super::{func, to_dyn};
use crate::ctx::{Ctx, StageError};

fn pod_dyn(p: &PodInfo) -> Dynamic {
    let mut d = to_dyn(p).unwrap_or(Dynamic::UNIT);
    // Flatten the most used fields so a playbook writes `p.name`, not `p.pod.name`.
    if let (Some(mut m), Some(pm)) = (
        d.clone().try_cast::<Map>(),
        to_dyn(&p.pod).ok().and_then(|x| x.try_cast::<Map>()),
    ) {
        for (k, v) in pm {
            m.entry(k).or_insert(v);
        }
        if let Some(o) = &p.pod.owner
            && let Some(note) = lookup::finished_job_note(o)
        {
            m.insert("note".into(), note.into());
        }
        d = Dynamic::from_map(m);
    }
    d
}

/// The module.
pub fn create_module(ctx: &Ctx) -> Module {
    let mut m = Module::new();

    let c = ctx.clone();
    func(
        "node_by_ip",
        &["ip: &str", "?"],
        "The node with this InternalIP/ExternalIP (e.g. a load balancer BackendIPAddress): #{name, ip}, or () when\nno node has it. `kubectl get nodes -o wide | grep IP`. Needs RBAC list nodes.",
    )
    .set_into_module(&mut m, move |ip: &str| -> Result<Dynamic, Box<EvalAltResult>> {
        c.stage("kube::node_by_ip", json!({ "ip": ip }), || {
            let addr: std::net::IpAddr = ip
                .trim()
                .parse()
                .map_err(|_| StageError::Usage(format!("{ip:?} is not an IP address")))?;
            let kube = c.kube()?;
            let n = c.block_on(lookup::node_by_ip(&kube, addr))??;
            let found = n.is_some() as u64;
            Ok((n.map_or(Dynamic::UNIT, |n| to_dyn(&n).unwrap_or(Dynamic::UNIT)), Some(found)))
        })
    });

    let c = ctx.clone();
    func(
        "pods_on_node",
        &["node: &str", "Array"],
        "Every pod on a node, all namespaces (`--field-selector spec.nodeName=NODE`), each a map: uid, namespace,\nname, qos, owner #{kind, name, active}, host_network, node, pod_ip, phase, containers, and `note` when the\nowner is a Job that has finished. Needs RBAC list pods (+ get replicasets, jobs for owners).",
    )
    .set_into_module(&mut m, move |node: &str| -> Result<Array, Box<EvalAltResult>> {
        c.stage("kube::pods_on_node", json!({ "node": node }), || {
            let kube = c.kube()?;
            let pods = c.block_on(lookup::pods_on_node(&kube, node, true))??;
            let n = pods.len() as u64;
            Ok((pods.iter().map(pod_dyn).collect(), Some(n)))
        })
    });

    let c = ctx.clone();
    func(
        "unknown_node",
        &["name: &str", "?"],
        "() when the cluster has a node of this name; else what is wrong, for a message: `no node NAME in the\ncluster (did you mean `NAME2`?); its nodes: a, b and 3 more`. A typo in a node parameter would otherwise\nlook like a node without pods. Needs RBAC get nodes (and list nodes for the names).",
    )
    .set_into_module(&mut m, move |name: &str| -> Result<Dynamic, Box<EvalAltResult>> {
        c.stage("kube::unknown_node", json!({ "node": name }), || {
            let kube = c.kube()?;
            let missing = c.block_on(snat_core::k8s::fleet::missing_nodes(&kube, &[name.to_string()]))??;
            if missing.is_empty() {
                return Ok((Dynamic::UNIT, Some(0)));
            }
            // The names only help: a cluster that lets us get a node but not list them
            // still gets the answer.
            let known = c
                .block_on(snat_core::k8s::fleet::all_node_names(&kube))
                .ok()
                .and_then(Result::ok);
            let mut text = format!("no node {name} in the cluster");
            if let Some(k) = &known {
                text.push_str(&super::did_you_mean(name, k.iter().map(String::as_str)));
                text.push_str("; ");
                text.push_str(&crate::fleet::known_nodes(k));
            }
            Ok((Dynamic::from(text), Some(1)))
        })
    });

    let c = ctx.clone();
    func(
        "nodes",
        &["Array"],
        "Every node's name (`kubectl get nodes`), Windows and virtual nodes included: to exec into the nodes' pods,\ntake kube::linux_nodes() instead. Needs RBAC list nodes.",
    )
    .set_into_module(&mut m, move || -> Result<Array, Box<EvalAltResult>> {
        c.stage("kube::nodes", json!({}), || {
            let kube = c.kube()?;
            let names = c.block_on(snat_core::k8s::fleet::all_node_names(&kube))??;
            let n = names.len() as u64;
            Ok((names.into_iter().map(Dynamic::from).collect(), Some(n)))
        })
    });

    let c = ctx.clone();
    func(
        "linux_nodes",
        &["Map"],
        "The nodes a sweep can look into, chosen as `snat-run --all-nodes` chooses them: #{nodes, skipped, not_ready}.\n`nodes`: the Linux nodes' names (label kubernetes.io/os=linux, selected by the API server), virtual nodes\n(type=virtual-kubelet) left out. `skipped`: the nodes left out, each #{node, unfit: \"not_linux\"|\"virtual_kubelet\",\ndetail, text}: Windows nodes, whose pods have no `cat` or /proc/net/tcp, and virtual nodes, with no host of\ntheir own. `not_ready`: the nodes of `nodes` whose Ready condition is not True (same shape; their pods are\nlikely unreachable). Needs RBAC list nodes.",
    )
    .set_into_module(&mut m, move || -> Result<Map, Box<EvalAltResult>> {
        c.stage("kube::linux_nodes", json!({}), || {
            let kube = c.kube()?;
            let t = c.block_on(snat_core::k8s::fleet::select_nodes(&kube))??;
            let unfit = |list: &[snat_core::k8s::fleet::UnfitNode]| -> Vec<serde_json::Value> {
                list.iter()
                    .map(|u| json!({ "node": u.node, "unfit": u.unfit, "detail": u.detail, "text": u.to_string() }))
                    .collect()
            };
            let v = json!({ "nodes": t.nodes, "skipped": unfit(&t.skipped), "not_ready": unfit(&t.not_ready) });
            let n = t.nodes.len() as u64;
            let map = to_dyn(&v).ok().and_then(|d| d.try_cast::<Map>()).unwrap_or_default();
            Ok((map, Some(n)))
        })
    });

    let c = ctx.clone();
    func(
        "active_job_pods",
        &["node: &str", "wait_seconds: i64", "Array"],
        "The Running pods on a node whose Job (or CronJob, through its Job) is still active, as pods_on_node maps.\nWhen there is none, polls every 2 s for up to `wait_seconds` (0: look once) for one to start; [] when none did.\nThe article: troubleshoot Jobs only while they run.",
    )
    .set_into_module(
        &mut m,
        move |node: &str, wait: i64| -> Result<Array, Box<EvalAltResult>> {
            c.stage(
                "kube::active_job_pods",
                json!({ "node": node, "wait_seconds": wait }),
                || {
                    if wait < 0 {
                        return Err(StageError::Usage(format!(
                            "wait_seconds must be 0 or more, got {wait}"
                        )));
                    }
                    let kube = c.kube()?;
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait as u64);
                    loop {
                        let pods = c.block_on(lookup::pods_on_node(&kube, node, true))??;
                        let active: Array = pods
                            .iter()
                            .filter(|p| {
                                p.phase.as_deref() == Some("Running")
                                    && p.pod.owner.as_ref().is_some_and(|o| {
                                        matches!(o.kind.as_str(), "Job" | "CronJob") && o.active == Some(true)
                                    })
                            })
                            .map(pod_dyn)
                            .collect();
                        let now = std::time::Instant::now();
                        if !active.is_empty() || now >= deadline {
                            let n = active.len() as u64;
                            return Ok((active, Some(n)));
                        }
                        if c.is_cancelled() {
                            return Err(StageError::Interrupted);
                        }
                        let nap = (deadline - now).min(std::time::Duration::from_secs(2));
                        c.block_on(async move { tokio::time::sleep(nap).await })?;
                    }
                },
            )
        },
    );

    let c = ctx.clone();
    func(
        "pod_by_uid",
        &["uid: &str", "?"],
        "The pod with this UID (as found in a cgroup path), with its owner; () when none. Searches all nodes.",
    )
    .set_into_module(&mut m, move |uid: &str| -> Result<Dynamic, Box<EvalAltResult>> {
        c.stage("kube::pod_by_uid", json!({ "uid": uid }), || {
            let kube = c.kube()?;
            let p = c.block_on(lookup::pod_by_uid(&kube, uid, None))??;
            let n = p.is_some() as u64;
            Ok((p.as_ref().map_or(Dynamic::UNIT, pod_dyn), Some(n)))
        })
    });

    let c = ctx.clone();
    func(
        "pod_by_uid",
        &["uid: &str", "node: &str", "?"],
        "The pod with this UID among one node's pods (cheaper on big clusters); () when none.",
    )
    .set_into_module(
        &mut m,
        move |uid: &str, node: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            c.stage("kube::pod_by_uid", json!({ "uid": uid, "node": node }), || {
                let kube = c.kube()?;
                let p = c.block_on(lookup::pod_by_uid(&kube, uid, Some(node)))??;
                let n = p.is_some() as u64;
                Ok((p.as_ref().map_or(Dynamic::UNIT, pod_dyn), Some(n)))
            })
        },
    );

    for with_container in [false, true] {
        let c = ctx.clone();
        let f = move |ns: &str, pod: &str, container: Option<&str>| -> Result<Map, Box<EvalAltResult>> {
            c.stage(
                "kube::census_in_pod",
                json!({ "namespace": ns, "pod": pod, "container": container }),
                || {
                    let kube = c.kube()?;
                    let r = c.block_on(exec::census_in_pod(&kube, ns, pod, container))??;
                    let n = r.sockets.len() as u64;
                    let map = to_dyn(&r).ok().and_then(|d| d.try_cast::<Map>()).unwrap_or_default();
                    Ok((map, Some(n)))
                },
            )
        };
        if with_container {
            func(
                "census_in_pod",
                &["namespace: &str", "pod: &str", "container: &str", "Map"],
                "Same as census_in_pod(namespace, pod), in the named container.",
            )
            .set_into_module(&mut m, move |ns: &str, pod: &str, ctr: &str| f(ns, pod, Some(ctr)));
        } else {
            func(
                "census_in_pod",
                &["namespace: &str", "pod: &str", "Map"],
                "Every TCP socket of a pod, read with `cat /proc/net/tcp /proc/net/tcp6` through the exec API (nothing\ninstalled, no node access): #{pod, container, sockets: [#{family, state, local, remote, inode, uid}],\nwarnings}. Needs RBAC create (and get) on pods/exec, and `cat` in the container. Output without the\n/proc/net/tcp header (e.g. empty) fails, naming the pod: it is never counted as a pod without sockets.",
            )
            .set_into_module(&mut m, move |ns: &str, pod: &str| f(ns, pod, None));
        }
    }
    m
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ctx::RunOptions;

    pub(crate) fn failure(e: Box<EvalAltResult>) -> crate::ctx::StageFailure {
        match e.as_ref() {
            EvalAltResult::ErrorRuntime(d, _) => d
                .clone()
                .try_cast::<crate::ctx::StageFailure>()
                .expect("a StageFailure"),
            other => panic!("not a stage failure: {other}"),
        }
    }

    #[test]
    fn unreachable_cluster_is_a_failed_stage_with_a_clear_message() {
        // A kubeconfig pointing at a loopback port where nothing listens.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("kubeconfig");
        std::fs::write(
            &kc,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: t\n"
            ),
        )
        .unwrap();
        let ctx = Ctx::new(
            RunOptions {
                kubeconfig: Some(kc),
                ..Default::default()
            },
            Default::default(),
        );
        let mut e = rhai::Engine::new();
        e.register_global_module(crate::modules::types::create_module(&ctx).into());
        e.register_static_module("kube", create_module(&ctx).into());
        let msg = e
            .eval::<String>(
                r#"let r = ""; try { kube::node_by_ip("10.224.0.4"); r = "reached"; } catch (err) { r = `${err.stage}|${err}`; } r"#,
            )
            .unwrap();
        assert!(
            msg.starts_with("kube::node_by_ip|kube::node_by_ip: cannot reach the API server"),
            "{msg}"
        );
        let st = ctx.stages();
        assert_eq!(st[0].name, "kube::node_by_ip");
        assert_eq!(st[0].args["ip"], "10.224.0.4");
        assert_eq!(st[0].outcome, snat_core::audit::StageOutcome::Failed);
        // A bad IP is a playbook error, before any connection.
        let err = failure(e.eval::<Dynamic>(r#"kube::node_by_ip("node-1")"#).unwrap_err());
        assert!(err.usage && err.message.contains("not an IP address"), "{err}");
    }

    #[test]
    fn missing_kubeconfig_file_is_named() {
        let ctx = Ctx::new(
            RunOptions {
                kubeconfig: Some("/nonexistent/snat-test-kubeconfig".into()),
                ..Default::default()
            },
            Default::default(),
        );
        let mut e = rhai::Engine::new();
        e.register_static_module("kube", create_module(&ctx).into());
        let err = failure(e.eval::<Dynamic>(r#"kube::pods_on_node("n")"#).unwrap_err()).message;
        assert!(
            err.contains("cannot read kubeconfig") && err.contains("snat-test-kubeconfig"),
            "{err}"
        );
    }
}
