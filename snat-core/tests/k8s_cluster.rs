//! snat's Kubernetes stages through the real kube client, configured from a real kubeconfig
//! file, against a loopback API server (tests/support/apiserver.rs).
#![cfg(feature = "kube")]

mod support {
    pub mod apiserver;
    pub mod fixtures;
}

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use snat_core::Error;
use snat_core::k8s::fleet::{self, FleetSpec, NodeOutcome};
use snat_core::k8s::{Kube, KubeOptions, exec, lookup};
use support::apiserver::{ExecReply, FakeApi, Fault, State};
use support::fixtures::{cluster, node};

struct Env {
    api: FakeApi,
    _dir: tempfile::TempDir,
    kube: Kube,
}

fn fast_opts(kubeconfig: std::path::PathBuf) -> KubeOptions {
    KubeOptions {
        kubeconfig: Some(kubeconfig),
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(3),
        backoff_base: Duration::from_millis(10),
        page_size: 100,
        ..Default::default()
    }
}

async fn env(state: State) -> Env {
    let api = FakeApi::start(state).await;
    let dir = tempfile::tempdir().unwrap();
    let kc = api.kubeconfig(dir.path(), &[]);
    let kube = Kube::connect(&fast_opts(kc)).await.unwrap();
    Env { api, _dir: dir, kube }
}

fn requests(api: &FakeApi) -> Vec<String> {
    api.state.requests.lock().unwrap().clone()
}

#[tokio::test]
async fn node_by_ip_finds_internal_ip() {
    let e = env(cluster()).await;
    let n = lookup::node_by_ip(&e.kube, "10.224.0.5".parse::<IpAddr>().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.name.as_deref(), Some("node-b"));
    assert!(
        lookup::node_by_ip(&e.kube, "10.9.9.9".parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        requests(&e.api)
            .iter()
            .all(|r| r.starts_with("GET /api/v1/nodes?") && r.contains("limit="))
    );
}

#[tokio::test]
async fn pods_on_node_follow_continue_and_send_the_field_selector() {
    let e = env(cluster()).await;
    let pods = lookup::pods_on_node(&e.kube, "node-a", false).await.unwrap();
    let names: Vec<_> = pods.iter().map(|p| p.pod.name.clone().unwrap()).collect();
    assert_eq!(names.len(), 7, "{names:?}");
    assert!(pods.iter().all(|p| p.node.as_deref() == Some("node-a")));
    assert_eq!(pods[0].containers, vec!["app".to_string()]);
    assert_eq!(pods[0].pod.qos, Some(snat_core::model::Qos::Burstable));
    // Server pages are at most 3 items: 7 pods take 3 requests, each after the first
    // carrying the previous page's continue token.
    let reqs: Vec<_> = requests(&e.api)
        .into_iter()
        .filter(|r| r.contains("/api/v1/pods"))
        .collect();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert!(!reqs[0].contains("continue="));
    assert!(
        reqs[1].contains("continue=off-3") && reqs[2].contains("continue=off-6"),
        "{reqs:?}"
    );
    let sels = e.api.state.field_selectors.lock().unwrap().clone();
    assert_eq!(sels, vec!["spec.nodeName=node-a"; 3]);
    let b = lookup::pods_on_node(&e.kube, "node-b", false).await.unwrap();
    assert_eq!(b.len(), 2);
}

#[tokio::test]
async fn owners_resolve_through_replicasets_and_jobs() {
    let e = env(cluster()).await;
    let pods = lookup::pods_on_node(&e.kube, "node-a", true).await.unwrap();
    let by_name = |n: &str| {
        pods.iter()
            .find(|p| p.pod.name.as_deref() == Some(n))
            .unwrap()
            .pod
            .owner
            .clone()
            .unwrap()
    };
    let dep = by_name("api-7d9f-0");
    assert_eq!(
        (dep.kind.as_str(), dep.name.as_str(), dep.active),
        ("Deployment", "api", None)
    );
    let cron = by_name("report-28900-x");
    assert_eq!(
        (cron.kind.as_str(), cron.name.as_str(), cron.active),
        ("CronJob", "report", Some(false))
    );
    assert!(lookup::finished_job_note(&cron).unwrap().contains("has finished"));
    let job = by_name("once-y");
    assert_eq!((job.kind.as_str(), job.active), ("Job", Some(true)));
    assert!(lookup::finished_job_note(&job).is_none());
    // Five pods of one ReplicaSet cost one `get`.
    let rs_gets = requests(&e.api).iter().filter(|r| r.contains("/replicasets/")).count();
    assert_eq!(rs_gets, 1);
}

#[tokio::test]
async fn pod_by_uid_finds_the_pod_and_its_owner() {
    let e = env(cluster()).await;
    let p = lookup::pod_by_uid(&e.kube, "22222222-0000-0000-0000-000000000002", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.pod.name.as_deref(), Some("proxy-1"));
    assert_eq!(p.pod.owner.unwrap().kind, "DaemonSet");
    // Written without dashes it still matches; restricted to a node.
    let p = lookup::pod_by_uid(&e.kube, "00000000000000000000000000000003", Some("node-a"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.pod.name.as_deref(), Some("api-7d9f-3"));
    assert!(
        lookup::pod_by_uid(&e.kube, "nope", Some("node-b"))
            .await
            .unwrap()
            .is_none()
    );
}

/// A static pod's cgroup is named after its config hash (32 hex digits); the API's mirror
/// pod has a UID of its own and the hash in `kubernetes.io/config.mirror`.
#[tokio::test]
async fn pod_by_uid_finds_a_static_pods_mirror_by_its_config_hash() {
    let hash = "2f8e1b7c9d3a4e5f6a7b8c9d0e1f2a3b";
    let state = cluster();
    let mut mirror = support::fixtures::pod(
        "kube-system",
        "etcd-node-b",
        "33333333-0000-0000-0000-000000000001",
        "node-b",
        Some(support::fixtures::owner("Node", "node-b")),
    );
    mirror.metadata.annotations = Some(
        [
            (lookup::MIRROR_ANNOTATION.to_string(), hash.to_string()),
            ("kubernetes.io/config.source".to_string(), "file".to_string()),
        ]
        .into(),
    );
    state.pods.lock().unwrap().push(mirror);
    let e = env(state).await;
    let p = lookup::pod_by_uid(&e.kube, hash, Some("node-b"))
        .await
        .unwrap()
        .expect("the mirror pod of the static pod");
    assert_eq!(p.pod.name.as_deref(), Some("etcd-node-b"));
    assert_eq!(p.pod.namespace.as_deref(), Some("kube-system"));
    assert_eq!(p.pod.owner.unwrap().kind, "Node");
    // Its own UID still finds it, and a hash no pod carries finds none.
    let p = lookup::pod_by_uid(&e.kube, "33333333-0000-0000-0000-000000000001", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.pod.name.as_deref(), Some("etcd-node-b"));
    assert!(
        lookup::pod_by_uid(&e.kube, "2f8e1b7c9d3a4e5f6a7b8c9d0e1f2a3c", None)
            .await
            .unwrap()
            .is_none()
    );
    // Listed with the node's pods, it carries the hash its cgroup names it by (what
    // playbooks key their pods by), and an ordinary pod carries none.
    let on_b = lookup::pods_on_node(&e.kube, "node-b", false).await.unwrap();
    let etcd = on_b
        .iter()
        .find(|p| p.pod.name.as_deref() == Some("etcd-node-b"))
        .expect("the mirror pod on node-b");
    assert_eq!(etcd.config_hash.as_deref(), Some(hash));
    assert!(
        on_b.iter()
            .filter(|p| p.pod.name.as_deref() != Some("etcd-node-b"))
            .all(|p| p.config_hash.is_none())
    );
}

#[tokio::test]
async fn pod_by_uid_stops_at_the_page_that_has_it() {
    let e = env(cluster()).await;
    // The first pod of the cluster is on the first page (server pages hold 3 pods of 9).
    let p = lookup::pod_by_uid(&e.kube, "00000000-0000-0000-0000-000000000000", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.pod.name.as_deref(), Some("api-7d9f-0"));
    let lists = requests(&e.api)
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/pods?"))
        .count();
    assert_eq!(lists, 1);
    // A UID that is nowhere walks every page: 9 pods in pages of 3.
    assert!(
        lookup::pod_by_uid(&e.kube, "ffffffff-0000-0000-0000-000000000000", None)
            .await
            .unwrap()
            .is_none()
    );
    let lists = requests(&e.api)
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/pods?"))
        .count();
    assert_eq!(lists, 1 + 3);
}

#[tokio::test]
async fn context_selects_the_cluster() {
    let a = FakeApi::start(cluster()).await;
    let mut other = cluster();
    other.nodes = vec![node("other-node", "10.1.0.4")].into();
    let b = FakeApi::start(other).await;
    let dir = tempfile::tempdir().unwrap();
    let kc = a.kubeconfig(dir.path(), &[("second", format!("http://{}", b.addr))]);
    let mut o = fast_opts(kc);
    o.context = Some("second".into());
    let kube = Kube::connect(&o).await.unwrap();
    let n = lookup::node_by_ip(&kube, "10.1.0.4".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.name.as_deref(), Some("other-node"));
    assert!(requests(&a).is_empty());
    o.context = Some("missing".into());
    let err = Kube::connect(&o).await.unwrap_err().to_string();
    assert!(err.contains("missing") && err.contains("kubeconfig"), "{err}");
    // The contexts there are, so the typo is easy to see.
    assert!(err.contains("its contexts are fake, second"), "{err}");
}

#[tokio::test]
async fn wrong_token_is_unauthorized() {
    let api = FakeApi::start(cluster()).await;
    let dir = tempfile::tempdir().unwrap();
    let kc = api.kubeconfig(dir.path(), &[]);
    let text = std::fs::read_to_string(&kc).unwrap().replace("t0ken", "expired");
    std::fs::write(&kc, text).unwrap();
    let kube = Kube::connect(&fast_opts(kc)).await.unwrap();
    let err = lookup::pods_on_node(&kube, "node-a", false).await.unwrap_err();
    assert!(matches!(err, Error::KubeUnauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains("az aks get-credentials"));
}

#[tokio::test]
async fn forbidden_names_verb_and_resource() {
    let e = env(cluster()).await;
    e.api
        .state
        .faults
        .lock()
        .unwrap()
        .push_back(("/api/v1/pods".into(), Fault::Status(403, None)));
    let err = lookup::pods_on_node(&e.kube, "node-a", false).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("forbidden: cannot list pods at cluster scope (RBAC): grant `list` on `pods`"),
        "{msg}"
    );
    e.api
        .state
        .faults
        .lock()
        .unwrap()
        .push_back(("/replicasets/".into(), Fault::Status(403, None)));
    let msg = lookup::pods_on_node(&e.kube, "node-a", true)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("cannot get replicasets.apps \"api-7d9f\" in namespace \"shop\""),
        "{msg}"
    );
}

#[tokio::test]
async fn too_many_requests_then_ok_succeeds_after_retry_after() {
    let e = env(cluster()).await;
    e.api
        .state
        .faults
        .lock()
        .unwrap()
        .push_back(("/api/v1/nodes".into(), Fault::Status(429, Some(1))));
    let t0 = Instant::now();
    let n = lookup::node_by_ip(&e.kube, "10.224.0.4".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(n.unwrap().name.as_deref(), Some("node-a"));
    // The server said Retry-After: 1; backoff alone would have waited 10 ms.
    assert!(t0.elapsed() >= Duration::from_millis(950), "{:?}", t0.elapsed());
    assert_eq!(requests(&e.api).len(), 2);
}

#[tokio::test]
async fn server_errors_retry_then_give_up_with_attempt_count() {
    let e = env(cluster()).await;
    for _ in 0..2 {
        e.api
            .state
            .faults
            .lock()
            .unwrap()
            .push_back(("/api/v1/nodes".into(), Fault::Status(500, None)));
    }
    assert!(
        lookup::node_by_ip(&e.kube, "10.224.0.4".parse().unwrap())
            .await
            .unwrap()
            .is_some()
    );
    for _ in 0..10 {
        e.api
            .state
            .faults
            .lock()
            .unwrap()
            .push_back(("/api/v1/nodes".into(), Fault::Status(503, None)));
    }
    let err = lookup::node_by_ip(&e.kube, "10.224.0.4".parse().unwrap())
        .await
        .unwrap_err();
    match &err {
        Error::KubeApi { code, attempts, .. } => assert_eq!((*code, *attempts), (503, 5)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn hang_times_out() {
    let api = FakeApi::start(cluster()).await;
    api.state
        .faults
        .lock()
        .unwrap()
        .push_back(("/api/v1/nodes".into(), Fault::Hang));
    let dir = tempfile::tempdir().unwrap();
    let mut o = fast_opts(api.kubeconfig(dir.path(), &[]));
    o.read_timeout = Duration::from_millis(300);
    o.connect_timeout = Duration::from_millis(300);
    let kube = Kube::connect(&o).await.unwrap();
    let err = lookup::node_by_ip(&kube, "10.224.0.4".parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KubeTimeout { .. }), "{err:?}");
    assert!(err.to_string().contains("timed out trying to list nodes"), "{err}");
}

#[tokio::test]
async fn unreachable_server_is_a_transport_error() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api = FakeApi::start(cluster()).await;
    let dir = tempfile::tempdir().unwrap();
    let kc = api.kubeconfig(dir.path(), &[("dead", format!("http://127.0.0.1:{port}"))]);
    let mut o = fast_opts(kc);
    o.context = Some("dead".into());
    let kube = Kube::connect(&o).await.unwrap();
    let err = lookup::node_by_ip(&kube, "10.224.0.4".parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot reach the API server"), "{err}");
}

const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 2100E00A:A0C6 0500A8C0:01BB 01 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0000000000000000 20 4 30 10 -1\n   1: 2100E00A:A0C8 0B0B0B14:01BB 02 00000000:00000000 00:00000000 00000000  1000        0 12346 1 0000000000000000 20 4 30 10 -1\n";
const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0\n";

#[tokio::test]
async fn exec_census_over_websocket() {
    let e = env(cluster()).await;
    *e.api.state.exec.lock().unwrap() = Some(ExecReply {
        stdout: format!("{TCP}{TCP6}").into_bytes(),
        stderr: vec![],
        status: json!({"metadata": {}, "status": "Success"}),
    });
    let c = exec::census_in_pod(&e.kube, "shop", "api-7d9f-0", Some("app"))
        .await
        .unwrap();
    assert_eq!(c.sockets.len(), 3);
    assert_eq!(c.sockets[1].remote.to_string(), "20.11.11.11:443");
    assert_eq!(c.sockets[1].state, snat_core::model::TcpState::SynSent);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let r = requests(&e.api).into_iter().find(|r| r.contains("/exec")).unwrap();
    assert!(
        r.contains("command=cat") && r.contains("command=%2Fproc%2Fnet%2Ftcp6") && r.contains("container=app"),
        "{r}"
    );
    assert!(!r.contains("stdin=true"));
}

#[tokio::test]
async fn exec_census_over_the_v5_protocol() {
    let st = cluster();
    *st.exec_protocol.lock().unwrap() = Some("v5.channel.k8s.io".into());
    *st.exec.lock().unwrap() = Some(ExecReply {
        stdout: format!("{TCP}{TCP6}").into_bytes(),
        stderr: vec![],
        status: json!({"metadata": {}, "status": "Success"}),
    });
    let e = env(st).await;
    let c = exec::census_in_pod(&e.kube, "shop", "api-7d9f-0", None).await.unwrap();
    assert_eq!(c.sockets.len(), 3);
}

#[tokio::test]
async fn exec_census_without_tcp6_warns() {
    let e = env(cluster()).await;
    *e.api.state.exec.lock().unwrap() = Some(ExecReply {
        stdout: TCP.as_bytes().to_vec(),
        stderr: b"cat: can't open '/proc/net/tcp6': No such file or directory\n".to_vec(),
        status: json!({"metadata": {}, "status": "Failure", "message": "command terminated with non-zero exit code",
                       "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": "1"}]}}),
    });
    let c = exec::census_in_pod(&e.kube, "shop", "api-7d9f-0", None).await.unwrap();
    assert_eq!(c.sockets.len(), 2);
    assert!(c.warnings.iter().any(|w| w.contains("tcp6")), "{:?}", c.warnings);
}

/// An exec whose answer lacks a table `cat` should have printed is a failure naming the pod,
/// not a pod without sockets: nothing at all (no /proc/net/tcp header), or /proc/net/tcp
/// alone although `cat` reported success (so it read /proc/net/tcp6 too: cut short).
#[tokio::test]
async fn exec_output_missing_a_table_fails() {
    for (stdout, missing) in [("", "no /proc/net/tcp header"), (TCP, "no /proc/net/tcp6 header")] {
        let e = env(cluster()).await;
        *e.api.state.exec.lock().unwrap() = Some(ExecReply {
            stdout: stdout.as_bytes().to_vec(),
            stderr: vec![],
            status: json!({"metadata": {}, "status": "Success"}),
        });
        let err = exec::census_in_pod(&e.kube, "shop", "api-7d9f-0", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("shop/api-7d9f-0") && err.contains(missing), "{err}");
    }
}

#[tokio::test]
async fn exec_without_cat_fails_clearly() {
    let e = env(cluster()).await;
    *e.api.state.exec.lock().unwrap() = Some(ExecReply {
        stdout: vec![],
        stderr: b"exec: \"cat\": executable file not found in $PATH".to_vec(),
        status: json!({"metadata": {}, "status": "Failure", "message": "executable file not found", "reason": "InternalError"}),
    });
    let err = exec::census_in_pod(&e.kube, "shop", "distroless-0", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("shop/distroless-0") && err.contains("needs `cat`"),
        "{err}"
    );
}

#[tokio::test]
async fn exec_forbidden_names_pods_exec() {
    let e = env(cluster()).await;
    e.api
        .state
        .faults
        .lock()
        .unwrap()
        .push_back(("/exec".into(), Fault::Status(403, None)));
    let err = exec::census_in_pod(&e.kube, "shop", "api-7d9f-0", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot create pods/exec \"api-7d9f-0\" in namespace \"shop\""),
        "{err}"
    );
    // Exec is not in the base RBAC: the error names the optional role that grants it.
    assert!(
        err.contains("bind the optional ClusterRole snat-exec, deploy/optional/rbac-exec.yaml"),
        "{err}"
    );
}

fn spec(concurrency: usize) -> FleetSpec {
    let mut s = FleetSpec::new("registry.example/snat:0.1.0", "census.rhai", "report::title(\"x\");");
    s.concurrency = concurrency;
    s.poll_interval = Duration::from_millis(5);
    s.run_id = "0123abcd-0000-4000-8000-000000000000".into();
    s
}

#[tokio::test]
async fn fleet_runs_jobs_and_merges_records() {
    let st = cluster();
    *st.job_runtime.lock().unwrap() = Some(Duration::from_millis(20));
    let e = env(st).await;
    let nodes = fleet::all_node_names(&e.kube).await.unwrap();
    assert_eq!(nodes, vec!["node-a", "node-b"]);
    let res = fleet::run_fleet(&e.kube, &spec(4), &nodes, Arc::new(AtomicBool::new(false)))
        .await
        .unwrap();
    assert_eq!(res.record.nodes.len(), 2);
    for (entry, n) in res.record.nodes.iter().zip(&nodes) {
        assert_eq!(&entry.node, n);
        assert_eq!(entry.outcome, NodeOutcome::Completed, "{entry:?}");
        assert_eq!(entry.exit_code, Some(0));
        assert_eq!(entry.audit_run_id.as_deref(), Some(format!("run-{n}").as_str()));
        assert_eq!(entry.verdict, Some(json!("clear")));
    }
    let run = &res.runs[0];
    assert_eq!(run.output.as_ref().unwrap().report.as_ref().unwrap()["node"], "node-a");
    // Every Job created was deleted.
    let s = &e.api.state;
    assert_eq!(s.created.load(Ordering::SeqCst), 2);
    assert_eq!(s.deleted.load(Ordering::SeqCst), 2);
    // Written record references the node audit files by SHA-256.
    let dir = tempfile::tempdir().unwrap();
    let p = fleet::write_fleet(dir.path(), &res).unwrap();
    let rec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let f = rec["nodes"][1]["audit_file"].as_str().unwrap();
    let bytes = std::fs::read(dir.path().join(f)).unwrap();
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(rec["nodes"][1]["audit_sha256"], json!(sha));
}

/// A node named twice gets one Job: a second create of the same Job name would be refused
/// (409) and that node reported failed.
#[tokio::test]
async fn fleet_runs_a_node_named_twice_once() {
    let st = cluster();
    *st.job_runtime.lock().unwrap() = Some(Duration::from_millis(10));
    let e = env(st).await;
    let nodes: Vec<String> = ["node-a", "node-b", "node-a"].map(String::from).to_vec();
    let res = fleet::run_fleet(&e.kube, &spec(4), &nodes, Arc::new(AtomicBool::new(false)))
        .await
        .unwrap();
    let ran: Vec<(&str, NodeOutcome)> = res.record.nodes.iter().map(|n| (n.node.as_str(), n.outcome)).collect();
    assert_eq!(
        ran,
        [("node-a", NodeOutcome::Completed), ("node-b", NodeOutcome::Completed)]
    );
    assert_eq!(e.api.state.created.load(Ordering::SeqCst), 2);
}

/// Each node's Job is reported as it is created, runs and ends, with how many nodes are done.
#[tokio::test]
async fn fleet_reports_each_job_as_it_goes() {
    let st = cluster();
    *st.job_runtime.lock().unwrap() = Some(Duration::from_millis(200));
    st.failing_nodes.lock().unwrap().push("node-b".into());
    let e = env(st).await;
    let nodes: Vec<String> = ["node-a", "node-b"].map(String::from).to_vec();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let on_event: fleet::OnFleetEvent = Arc::new(move |ev: &fleet::FleetEvent<'_>| {
        let line = match ev {
            fleet::FleetEvent::Created { node, .. } => format!("{node} created"),
            fleet::FleetEvent::Running { node, .. } => format!("{node} running"),
            fleet::FleetEvent::Finished { run, done, total } => {
                format!("{} {:?} {done}/{total}", run.node, run.outcome)
            }
        };
        sink.lock().unwrap().push(line);
    });
    fleet::run_fleet_with(&e.kube, &spec(2), &nodes, Arc::new(AtomicBool::new(false)), on_event)
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    for n in ["node-a", "node-b"] {
        let of_node: Vec<&str> = seen
            .iter()
            .filter(|l| l.starts_with(n))
            .map(|l| l.split_once(' ').unwrap().1)
            .collect();
        assert_eq!(of_node.len(), 3, "{seen:?}");
        assert_eq!(&of_node[..2], ["created", "running"], "{seen:?}");
        let want = if n == "node-a" { "Completed" } else { "Failed" };
        assert!(of_node[2].starts_with(want), "{seen:?}");
    }
    let counts: Vec<&str> = seen
        .iter()
        .filter_map(|l| l.rsplit_once(' ').map(|x| x.1))
        .filter(|c| c.contains('/'))
        .collect();
    assert_eq!(counts, ["1/2", "2/2"], "{seen:?}");
}

/// A Job that starts and finishes between two polls is still said to have run: its
/// `running` event comes when its end is seen, marked as between polls, before `finished`.
#[tokio::test]
async fn fleet_job_done_between_two_polls_is_still_reported_running() {
    let st = cluster();
    // Done from the first look at it on.
    *st.job_runtime.lock().unwrap() = Some(Duration::ZERO);
    let e = env(st).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let on_event: fleet::OnFleetEvent = Arc::new(move |ev: &fleet::FleetEvent<'_>| {
        let line = match ev {
            fleet::FleetEvent::Created { node, .. } => format!("{node} created"),
            fleet::FleetEvent::Running {
                node, between_polls, ..
            } => format!("{node} running between_polls={between_polls}"),
            fleet::FleetEvent::Finished { run, .. } => format!("{} {:?}", run.node, run.outcome),
        };
        sink.lock().unwrap().push(line);
    });
    let nodes = vec!["node-a".to_string()];
    fleet::run_fleet_with(&e.kube, &spec(1), &nodes, Arc::new(AtomicBool::new(false)), on_event)
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "node-a created",
            "node-a running between_polls=true",
            "node-a Completed"
        ]
    );
}

#[tokio::test]
async fn fleet_fan_out_over_1000_nodes_respects_concurrency() {
    let st = cluster();
    *st.job_runtime.lock().unwrap() = Some(Duration::from_millis(15));
    let e = env(st).await;
    let nodes: Vec<String> = (0..1000).map(|i| format!("aks-pool-{i:04}")).collect();
    let t0 = Instant::now();
    let res = fleet::run_fleet(&e.kube, &spec(25), &nodes, Arc::new(AtomicBool::new(false)))
        .await
        .unwrap();
    let took = t0.elapsed();
    let s = &e.api.state;
    let max = s.max_in_flight.load(Ordering::SeqCst);
    assert!(max <= 25, "server saw {max} Jobs in flight");
    assert!(max >= 2, "no concurrency at all ({max})");
    assert_eq!(s.created.load(Ordering::SeqCst), 1000);
    assert_eq!(s.in_flight.load(Ordering::SeqCst), 0);
    assert!(res.record.nodes.iter().all(|n| n.outcome == NodeOutcome::Completed));
    // Distinct Job names for distinct nodes.
    let names: std::collections::HashSet<_> = res.runs.iter().map(|r| r.job.clone()).collect();
    assert_eq!(names.len(), 1000);
    eprintln!("fan-out: 1000 nodes, concurrency 25, max in flight {max}, took {took:?}");
}

#[tokio::test]
async fn fleet_cancel_deletes_running_jobs() {
    let st = cluster();
    *st.job_runtime.lock().unwrap() = None; // Jobs never finish.
    let e = env(st).await;
    let nodes: Vec<String> = (0..6).map(|i| format!("n{i}")).collect();
    let cancel = Arc::new(AtomicBool::new(false));
    let c2 = cancel.clone();
    let state = e.api.state.clone();
    tokio::spawn(async move {
        while state.created.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        c2.store(true, Ordering::SeqCst);
    });
    let res = fleet::run_fleet(&e.kube, &secret_spec(3), &nodes, cancel)
        .await
        .unwrap();
    assert!(res.record.cancelled);
    assert!(
        e.api.state.secrets.lock().unwrap().is_empty(),
        "the params Secret deleted on cancel"
    );
    assert!(
        res.record.nodes.iter().all(|n| n.outcome == NodeOutcome::Cancelled),
        "{:?}",
        res.record.nodes
    );
    let s = &e.api.state;
    assert_eq!(s.created.load(Ordering::SeqCst), 3, "no new Jobs after cancel");
    assert_eq!(s.in_flight.load(Ordering::SeqCst), 0, "every created Job deleted");
}

#[tokio::test]
async fn fleet_job_manifest_arrives_as_built() {
    let st = cluster();
    *st.job_runtime.lock().unwrap() = Some(Duration::ZERO);
    let e = env(st).await;
    fleet::run_fleet(
        &e.kube,
        &spec(1),
        &["node-a".to_string()],
        Arc::new(AtomicBool::new(false)),
    )
    .await
    .unwrap();
    let got = e.api.state.manifests.lock().unwrap()[0].clone();
    assert_eq!(got, fleet::job_manifest(&spec(1), "node-a"));
    let req = requests(&e.api).into_iter().find(|r| r.starts_with("POST")).unwrap();
    assert_eq!(req, "POST /apis/batch/v1/namespaces/snat/jobs?");
}

const TOKEN: &str = "tok-3f9a1c77 with = sign";

fn secret_spec(concurrency: usize) -> FleetSpec {
    let mut s = spec(concurrency);
    s.extra_args = vec!["--param".into(), "top=5".into()];
    s.secret_params = fleet::SecretParams([("token".to_string(), TOKEN.to_string())].into());
    s
}

/// A secret parameter reaches the nodes in a Secret their pods mount, created before the
/// first Job and deleted at the end: no Job the API server received holds its value.
#[tokio::test]
async fn fleet_secret_params_travel_in_a_secret_not_in_the_jobs() {
    let st = cluster();
    *st.job_runtime.lock().unwrap() = Some(Duration::from_millis(10));
    let e = env(st).await;
    let nodes: Vec<String> = ["node-a", "node-b"].map(String::from).to_vec();
    let s = secret_spec(2);
    let res = fleet::run_fleet(&e.kube, &s, &nodes, Arc::new(AtomicBool::new(false)))
        .await
        .unwrap();
    assert!(res.record.nodes.iter().all(|n| n.outcome == NodeOutcome::Completed));
    let st = &e.api.state;
    let bodies = st.job_bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2);
    let name = fleet::params_secret_name(&s.run_id);
    for b in &bodies {
        assert!(!b.contains("tok-3f9a1c77"), "the secret value is in a Job: {b}");
        let job: serde_json::Value = serde_json::from_str(b).unwrap();
        let pod = &job["spec"]["template"]["spec"];
        let vol = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "params")
            .unwrap();
        assert_eq!(vol["secret"]["secretName"], json!(name));
        let m = pod["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "params")
            .unwrap();
        assert_eq!(
            (&m["mountPath"], &m["readOnly"]),
            (&json!("/etc/snat/params"), &json!(true))
        );
        let cmd: Vec<&str> = pod["containers"][0]["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(
            cmd.windows(2).any(|w| w == ["--param-file", "/etc/snat/params/params"]),
            "{cmd:?}"
        );
        assert!(cmd.windows(2).any(|w| w == ["--param", "top=5"]), "{cmd:?}");
    }
    assert!(
        st.missing_secret_mounts.lock().unwrap().is_empty(),
        "a Job was created before its Secret"
    );
    // The Secret as the API server received it holds the value, labelled with the run id.
    let (_, _, body) = st
        .bodies
        .lock()
        .unwrap()
        .iter()
        .find(|(r, ..)| r == "POST /api/v1/namespaces/snat/secrets")
        .cloned()
        .unwrap();
    assert_eq!(body["metadata"]["name"], json!(name));
    assert_eq!(body["metadata"]["labels"]["snat.io/run-id"], json!(s.run_id));
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(body).unwrap();
    assert_eq!(
        String::from_utf8(secret.data.unwrap()["params"].0.clone()).unwrap(),
        format!("token={TOKEN}\n")
    );
    // And it is gone at the end.
    assert!(st.secrets.lock().unwrap().is_empty());
    assert_eq!(*st.deleted_secrets.lock().unwrap(), [name]);
}

/// Without secret parameters no Secret is created or deleted.
#[tokio::test]
async fn fleet_without_secret_params_creates_no_secret() {
    let st = cluster();
    *st.job_runtime.lock().unwrap() = Some(Duration::ZERO);
    let e = env(st).await;
    let mut s = spec(1);
    s.extra_args = vec!["--param".into(), "top=5".into()];
    fleet::run_fleet(&e.kube, &s, &["node-a".to_string()], Arc::new(AtomicBool::new(false)))
        .await
        .unwrap();
    let secret_calls: Vec<String> = requests(&e.api)
        .into_iter()
        .filter(|r| r.contains("/secrets"))
        .collect();
    assert!(secret_calls.is_empty(), "{secret_calls:?}");
    assert_eq!(e.api.state.created.load(Ordering::SeqCst), 1);
}

/// RBAC refusing the Secret stops the run before any Job, naming the Role to bind.
#[tokio::test]
async fn fleet_secret_forbidden_names_the_role_and_creates_no_job() {
    let st = cluster();
    *st.job_runtime.lock().unwrap() = Some(Duration::ZERO);
    let e = env(st).await;
    e.api
        .state
        .faults
        .lock()
        .unwrap()
        .push_back(("/namespaces/snat/secrets".into(), Fault::Status(403, None)));
    let err = fleet::run_fleet(
        &e.kube,
        &secret_spec(1),
        &["node-a".to_string()],
        Arc::new(AtomicBool::new(false)),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot create the Secret snat-0123abcd-params"), "{err}");
    assert!(
        err.contains("forbidden: cannot create secrets \"snat-0123abcd-params\" in namespace \"snat\""),
        "{err}"
    );
    assert!(err.contains("bind the Role snat-fleet of deploy/10-rbac.yaml"), "{err}");
    assert!(!err.contains("tok-3f9a1c77"), "{err}");
    assert_eq!(
        e.api.state.created.load(Ordering::SeqCst),
        0,
        "no Job without its Secret"
    );
}

/// A Secret that cannot be deleted is said, with the command that deletes it; the run's
/// result stands.
#[tokio::test]
async fn fleet_secret_not_deleted_is_a_warning_not_a_failure() {
    let st = cluster();
    *st.job_runtime.lock().unwrap() = Some(Duration::ZERO);
    let e = env(st).await;
    e.api
        .state
        .faults
        .lock()
        .unwrap()
        .push_back(("/namespaces/snat/secrets/".into(), Fault::Status(403, None)));
    let res = fleet::run_fleet(
        &e.kube,
        &secret_spec(1),
        &["node-a".to_string()],
        Arc::new(AtomicBool::new(false)),
    )
    .await
    .unwrap();
    assert_eq!(res.record.nodes[0].outcome, NodeOutcome::Completed);
    assert_eq!(
        e.api.state.secrets.lock().unwrap().len(),
        1,
        "the refused delete left it"
    );
}

/// (api group, resource[/subresource], verb, namespace or None for cluster-wide).
type Access = (String, String, String, Option<String>);

fn access_of(request: &str) -> Access {
    let (method, pq) = request.split_once(' ').unwrap();
    let path = pq.split('?').next().unwrap();
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match seg[0] {
        "api" => (String::new(), &seg[2..]),
        _ => (seg[1].to_string(), &seg[3..]),
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (resource, has_name) = match rest {
        [r] => (r.to_string(), false),
        [r, _name] => (r.to_string(), true),
        [r, _name, sub] => (format!("{r}/{sub}"), true),
        other => panic!("unexpected path {other:?}"),
    };
    let verb = match (method, has_name) {
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("DELETE", _) => "delete",
        (m, _) => panic!("unexpected method {m}"),
    };
    (group, resource, verb.to_string(), ns)
}

fn rules(doc: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for r in doc["rules"].as_array().unwrap() {
        for g in r["apiGroups"].as_array().unwrap() {
            for res in r["resources"].as_array().unwrap() {
                for v in r["verbs"].as_array().unwrap() {
                    out.push((
                        g.as_str().unwrap().into(),
                        res.as_str().unwrap().into(),
                        v.as_str().unwrap().into(),
                    ));
                }
            }
        }
    }
    out
}

fn yaml_docs(rel: &str) -> Vec<serde_json::Value> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_saphyr::from_multiple(&text).unwrap()
}

#[tokio::test]
async fn rbac_grants_exactly_what_the_code_calls() {
    let mut st = cluster();
    *st.job_runtime.lock().unwrap() = Some(Duration::ZERO);
    *st.exec.lock().unwrap() = Some(ExecReply {
        stdout: format!("{TCP}{TCP6}").into_bytes(),
        stderr: vec![],
        status: json!({"metadata": {}, "status": "Success"}),
    });
    // A node whose Job's pod is refused, so that its events are read.
    st.nodes.get_mut().unwrap().push(node("node-r", "10.224.0.6"));
    st.podless_nodes
        .lock()
        .unwrap()
        .insert("node-r".into(), Some("denied".into()));
    let e = env(st).await;
    // Every API-calling stage snat has.
    lookup::node_by_ip(&e.kube, "10.224.0.4".parse().unwrap())
        .await
        .unwrap();
    lookup::pods_on_node(&e.kube, "node-a", true).await.unwrap();
    lookup::pod_by_uid(&e.kube, "22222222-0000-0000-0000-000000000002", None)
        .await
        .unwrap();
    exec::census_in_pod(&e.kube, "shop", "api-7d9f-0", None).await.unwrap();
    assert_eq!(fleet::all_node_names(&e.kube).await.unwrap().len(), 3);
    let targets = fleet::select_nodes(&e.kube).await.unwrap();
    assert_eq!(
        fleet::check_nodes(&e.kube, &targets.nodes).await.unwrap(),
        fleet::NodeCheck::default()
    );
    // With a secret parameter, so that its Secret is created and deleted.
    let mut s = secret_spec(3);
    s.stuck_check_after = Duration::ZERO;
    let res = fleet::run_fleet_on(
        &e.kube,
        &s,
        &targets,
        Arc::new(AtomicBool::new(false)),
        Arc::new(|_: &fleet::FleetEvent<'_>| {}),
    )
    .await
    .unwrap();
    assert!(
        res.record.nodes[2].error.as_deref().unwrap().contains("denied"),
        "{:?}",
        res.record.nodes[2]
    );

    let base = yaml_docs("deploy/10-rbac.yaml");
    let exec_role = yaml_docs("deploy/optional/rbac-exec.yaml");
    let of_kind = |docs: &[serde_json::Value], k: &str| rules(docs.iter().find(|d| d["kind"] == k).unwrap());
    let cluster_rules = of_kind(&base, "ClusterRole");
    let ns_rules = of_kind(&base, "Role");
    let exec_rules = of_kind(&exec_role, "ClusterRole");
    let role_ns = base.iter().find(|d| d["kind"] == "Role").unwrap()["metadata"]["namespace"].clone();
    assert_eq!(role_ns, "snat");

    let mut used_cluster = std::collections::BTreeSet::new();
    let mut used_ns = std::collections::BTreeSet::new();
    let mut used_exec = std::collections::BTreeSet::new();
    for r in requests(&e.api) {
        let (g, res, verb, ns) = access_of(&r);
        let key = (g, res, verb);
        // The fleet's own calls are in namespace snat and must be covered by the Role; exec
        // by the optional snat-exec ClusterRole; everything else by the reader ClusterRole.
        if ns.as_deref() == Some("snat") {
            assert!(ns_rules.contains(&key), "{r} needs {key:?} in the snat-fleet Role");
            used_ns.insert(key);
        } else if key.1 == "pods/exec" {
            assert!(
                exec_rules.contains(&key),
                "{r} needs {key:?} in the snat-exec ClusterRole"
            );
            used_exec.insert(key);
        } else {
            assert!(
                cluster_rules.contains(&key),
                "{r} needs {key:?} in the snat-reader ClusterRole"
            );
            used_cluster.insert(key);
        }
    }
    // And nothing granted goes unused (pods/exec `create` is how newer API servers
    // authorize the same WebSocket GET).
    used_exec.insert(("".into(), "pods/exec".into(), "create".into()));
    let set = |v: Vec<(String, String, String)>| v.into_iter().collect::<std::collections::BTreeSet<_>>();
    assert_eq!(set(cluster_rules), used_cluster);
    assert_eq!(set(ns_rules), used_ns);
    assert_eq!(set(exec_rules), used_exec);
}

/// `kubectl apply -f deploy/` applies the files directly in deploy/ with a manifest
/// extension, in name order, not its subdirectories: that must be exactly the base install
/// (namespace first, then ServiceAccounts and read-only RBAC plus the fleet Role), nothing
/// optional, no placeholder, no exec, and no way to read a Secret.
#[test]
fn deploy_dir_applies_exactly_the_base_install() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| [".yaml", ".yml", ".json"].iter().any(|x| n.ends_with(x)))
        .collect();
    files.sort();
    assert_eq!(files, ["00-namespace.yaml", "10-rbac.yaml"]);
    let docs: Vec<serde_json::Value> = files.iter().flat_map(|f| yaml_docs(&format!("deploy/{f}"))).collect();
    assert_eq!(docs[0]["kind"], "Namespace", "the namespace must be applied first");
    assert_eq!(docs[0]["metadata"]["name"], "snat");
    assert_eq!(
        docs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    let dns = |n: &str| {
        !n.is_empty()
            && n.len() <= 63
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    let mut kinds = std::collections::BTreeSet::new();
    for d in &docs {
        let kind = d["kind"].as_str().unwrap();
        kinds.insert(kind.to_string());
        let name = d["metadata"]["name"].as_str().unwrap();
        assert!(dns(name), "{kind} {name:?} is not a valid name");
        if !["Namespace", "ClusterRole", "ClusterRoleBinding"].contains(&kind) {
            assert_eq!(d["metadata"]["namespace"], "snat", "{kind} {name}");
        }
        for r in d["rules"].as_array().into_iter().flatten() {
            let res = r["resources"].as_array().unwrap();
            assert!(!res.contains(&json!("pods/exec")), "exec is optional: {r}");
            let verbs = r["verbs"].as_array().unwrap();
            // No Secret can be read: the fleet Role may only create and delete the Secret
            // of a run's secret --param values, in its own namespace.
            if res.contains(&json!("secrets")) {
                assert_eq!((kind, name), ("Role", "snat-fleet"), "{r}");
                assert_eq!(verbs, &[json!("create"), json!("delete")], "{r}");
            }
            assert!(!verbs.contains(&json!("*")) && !verbs.contains(&json!("patch")), "{r}");
        }
    }
    let want: std::collections::BTreeSet<String> = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ]
    .map(String::from)
    .into();
    assert_eq!(kinds, want);
    // The optional roles and the reference Job are where the README says.
    for f in [
        "optional/rbac-exec.yaml",
        "optional/rbac-remediation.yaml",
        "reference/job-template.yaml",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
}

#[tokio::test]
async fn missing_nodes_names_the_nodes_the_cluster_does_not_have() {
    let e = env(cluster()).await;
    let asked: Vec<String> = ["node-b", "nosuchnode", "node-a", "node-c"].map(String::from).to_vec();
    let missing = fleet::missing_nodes(&e.kube, &asked).await.unwrap();
    assert_eq!(missing, ["nosuchnode", "node-c"]);
    // Errors other than "not found" are the caller's to judge.
    e.api
        .state
        .faults
        .lock()
        .unwrap()
        .push_back(("/api/v1/nodes/node-a".into(), Fault::Status(403, None)));
    let err = fleet::missing_nodes(&e.kube, &asked).await.unwrap_err();
    assert!(matches!(err, snat_core::Error::KubeForbidden { .. }), "{err}");
}

#[tokio::test]
async fn fleet_reports_each_nodes_failure_and_carries_on() {
    let st = cluster();
    *st.job_runtime.lock().unwrap() = Some(Duration::ZERO);
    st.failing_nodes.lock().unwrap().push("n2".into());
    let e = env(st).await;
    // RBAC refuses the first Job; n2's Job fails; n3 completes.
    e.api
        .state
        .faults
        .lock()
        .unwrap()
        .push_back(("/namespaces/snat/jobs".into(), Fault::Status(403, None)));
    let nodes: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
    let res = fleet::run_fleet(&e.kube, &spec(1), &nodes, Arc::new(AtomicBool::new(false)))
        .await
        .unwrap();
    let n = &res.record.nodes;
    assert_eq!(n[0].outcome, NodeOutcome::Failed);
    let err = n[0].error.as_deref().unwrap();
    assert!(
        err.starts_with("forbidden: cannot create jobs.batch in namespace \"snat\" (RBAC)"),
        "{err}"
    );
    assert_eq!(n[1].outcome, NodeOutcome::Failed);
    assert!(n[1].error.as_deref().unwrap().contains("cut short"), "{:?}", n[1].error);
    assert_eq!(n[1].audit_file, None);
    assert_eq!(n[2].outcome, NodeOutcome::Completed);
    assert_eq!(
        e.api.state.in_flight.load(Ordering::SeqCst),
        0,
        "the failed Job was deleted too"
    );
}

#[tokio::test]
async fn fleet_fails_fast_on_a_pod_that_cannot_start() {
    let st = cluster();
    *st.job_runtime.lock().unwrap() = None; // Never finishes by itself.
    st.stuck_nodes.lock().unwrap().push("n1".into());
    let e = env(st).await;
    let mut s = spec(1);
    s.stuck_check_after = Duration::ZERO;
    let res = fleet::run_fleet(&e.kube, &s, &["n1".into()], Arc::new(AtomicBool::new(false)))
        .await
        .unwrap();
    let n = &res.record.nodes[0];
    assert_eq!(n.outcome, NodeOutcome::Failed);
    let err = n.error.as_deref().unwrap();
    assert!(
        err.contains("cannot start: ImagePullBackOff: Back-off pulling image"),
        "{err}"
    );
    assert_eq!(
        e.api.state.in_flight.load(Ordering::SeqCst),
        0,
        "the stuck Job was deleted"
    );
}

const GATEKEEPER: &str = "admission webhook \"validation.gatekeeper.sh\" denied the request: [azurepolicy-k8sazurev2noprivilege-1f2e] Privileged container is not allowed: snat, securityContext: {\"privileged\": true}";

/// Run one node with `s`, failing the test if the run outlives `limit` (instead of waiting
/// for the Job's deadline).
async fn run_one(e: &Env, s: &FleetSpec, node: &str, limit: Duration) -> fleet::FleetNodeEntry {
    let t0 = Instant::now();
    let res = tokio::time::timeout(
        limit,
        fleet::run_fleet(&e.kube, s, &[node.to_string()], Arc::new(AtomicBool::new(false))),
    )
    .await
    .unwrap_or_else(|_| panic!("node {node} was still waited for after {limit:?}"))
    .unwrap();
    eprintln!(
        "node {node} ended after {:?}: {:?}",
        t0.elapsed(),
        res.record.nodes[0].error
    );
    assert_eq!(e.api.state.in_flight.load(Ordering::SeqCst), 0, "its Job was deleted");
    res.record.nodes[0].clone()
}

/// A Job whose pod the API server refuses (an admission webhook, Pod Security, a missing
/// ServiceAccount) has no pod and no failed pod: its FailedCreate event says why, and the
/// node fails as soon as the pod is found missing, with the webhook's message, not at the
/// Job's deadline.
#[tokio::test]
async fn fleet_fails_quickly_when_the_pod_is_refused() {
    let st = cluster();
    *st.job_runtime.lock().unwrap() = None;
    st.podless_nodes
        .lock()
        .unwrap()
        .insert("n1".into(), Some(GATEKEEPER.into()));
    let e = env(st).await;
    let mut s = spec(1);
    s.stuck_check_after = Duration::from_millis(100);
    let n = run_one(&e, &s, "n1", Duration::from_secs(10)).await;
    assert_eq!(n.outcome, NodeOutcome::Failed);
    let err = n.error.as_deref().unwrap();
    assert!(
        err.contains(&format!(
            "Job {} on node n1: its pod could not be created: Error creating: {GATEKEEPER}",
            n.job
        )),
        "{err}"
    );
    assert!(err.contains("ServiceAccount \"snat-node\""), "{err}");
    // The Job's own events were asked for, in its namespace, as kubectl describe does.
    let ev: Vec<String> = requests(&e.api).into_iter().filter(|r| r.contains("/events")).collect();
    assert!(!ev.is_empty());
    for r in &ev {
        assert!(r.starts_with("GET /api/v1/namespaces/snat/events?"), "{r}");
        assert!(
            r.contains(&format!(
                "fieldSelector=involvedObject.kind%3DJob%2CinvolvedObject.name%3D{}",
                n.job
            )),
            "{r}"
        );
    }
}

/// A Job the API server has given up on (a `Failed` condition, or `FailureTarget` first on
/// newer clusters) ends the node at once with the condition's reason, also when it never
/// had a pod to fail (nothing else in its status changes) and long before the check for
/// stuck pods.
#[rstest::rstest]
#[case::failed_without_a_pod(
    "Failed",
    true,
    "failed (DeadlineExceeded: Job was active longer than specified deadline) without ever having a pod"
)]
#[case::failure_target(
    "FailureTarget",
    true,
    "failed (DeadlineExceeded: Job was active longer than specified deadline) without ever having a pod"
)]
#[case::failed_with_a_killed_pod(
    "Failed",
    false,
    "the Job failed (DeadlineExceeded: Job was active longer than specified deadline): the log has no `--- snat:exit N ---` line"
)]
#[tokio::test]
async fn fleet_fails_at_once_on_a_failed_job_condition(#[case] type_: &str, #[case] podless: bool, #[case] want: &str) {
    let st = cluster();
    *st.job_runtime.lock().unwrap() = None;
    if podless {
        st.podless_nodes.lock().unwrap().insert("n1".into(), None);
    } else {
        // The pod ran and was killed: its log is cut short.
        st.node_logs
            .lock()
            .unwrap()
            .insert("n1".into(), "--- snat:report ---\n".into());
    }
    st.job_conditions.lock().unwrap().insert(
        "n1".into(),
        (
            Duration::ZERO,
            vec![apiserver_condition(
                type_,
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            )],
        ),
    );
    let e = env(st).await;
    let s = spec(1);
    assert_eq!(s.stuck_check_after, Duration::from_secs(20));
    let n = run_one(&e, &s, "n1", Duration::from_secs(10)).await;
    assert_eq!(n.outcome, NodeOutcome::Failed);
    let err = n.error.as_deref().unwrap();
    assert!(err.contains(want), "{err}");
}

fn apiserver_condition(type_: &str, reason: &str, message: &str) -> k8s_openapi::api::batch::v1::JobCondition {
    support::apiserver::job_condition(type_, reason, message)
}

/// Without the RBAC to list events, a podless Job's cause cannot be looked up: the node
/// still fails when the Job does (its condition), and the error says the events could
/// not be read and how to see them. Events are asked for once, not at every poll.
#[tokio::test]
async fn fleet_says_when_events_cannot_be_listed() {
    let st = cluster();
    *st.job_runtime.lock().unwrap() = None;
    st.podless_nodes
        .lock()
        .unwrap()
        .insert("n1".into(), Some(GATEKEEPER.into()));
    st.job_conditions.lock().unwrap().insert(
        "n1".into(),
        (
            Duration::from_millis(300),
            vec![
                apiserver_condition(
                    "FailureTarget",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                ),
                apiserver_condition(
                    "Failed",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                ),
            ],
        ),
    );
    st.faults
        .lock()
        .unwrap()
        .push_back(("/namespaces/snat/events".into(), Fault::Status(403, None)));
    let e = env(st).await;
    let mut s = spec(1);
    s.stuck_check_after = Duration::ZERO;
    let n = run_one(&e, &s, "n1", Duration::from_secs(10)).await;
    assert_eq!(n.outcome, NodeOutcome::Failed);
    let err = n.error.as_deref().unwrap();
    for want in [
        "failed (DeadlineExceeded: Job was active longer than specified deadline) without ever having a pod",
        "the Job's events, which say why a pod is not created, could not be read (forbidden: cannot list events in namespace \"snat\"",
        "bind the Role snat-fleet",
        &format!("`kubectl -n snat describe job {}` shows them", n.job),
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    let asked = requests(&e.api).iter().filter(|r| r.contains("/events")).count();
    assert_eq!(asked, 1, "events are not asked for again once refused");
}

/// The cluster of `cluster()` plus a Windows node, an ACI virtual node and a NotReady node.
fn mixed_cluster() -> State {
    let mut st = cluster();
    st.nodes.get_mut().unwrap().extend([
        support::fixtures::windows_node("akswin000000", "10.224.0.10"),
        support::fixtures::virtual_node("virtual-node-aci-linux", "10.224.0.11"),
        support::fixtures::not_ready_node("node-c", "10.224.0.12"),
    ]);
    st
}

/// `--all-nodes` asks the API server for the Linux nodes, leaves out virtual nodes, and
/// names every node it leaves out and why; a NotReady node stays, to fail without a Job.
#[tokio::test]
async fn select_nodes_keeps_linux_nodes_and_names_the_rest() {
    let e = env(mixed_cluster()).await;
    let t = fleet::select_nodes(&e.kube).await.unwrap();
    assert_eq!(t.nodes, ["node-a", "node-b", "node-c"]);
    let unfit = |v: &[fleet::UnfitNode]| -> Vec<(String, fleet::Unfit, String)> {
        v.iter().map(|u| (u.node.clone(), u.unfit, u.detail.clone())).collect()
    };
    assert_eq!(
        unfit(&t.not_ready),
        [(
            "node-c".into(),
            fleet::Unfit::NotReady,
            "Ready=Unknown: NodeStatusUnknown: Kubelet stopped posting node status.".into()
        )]
    );
    assert_eq!(
        unfit(&t.skipped),
        [
            (
                "virtual-node-aci-linux".into(),
                fleet::Unfit::VirtualKubelet,
                "type=virtual-kubelet".into()
            ),
            (
                "akswin000000".into(),
                fleet::Unfit::NotLinux,
                "kubernetes.io/os=windows".into()
            ),
        ]
    );
    // Selected by the server (page after page), not by reading every node.
    let mut sel = e.api.state.node_label_selectors.lock().unwrap().clone();
    sel.dedup();
    assert_eq!(sel, ["kubernetes.io/os=linux", "kubernetes.io/os!=linux"]);
    assert!(
        requests(&e.api)
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/nodes?"))
            .all(|r| r.contains("labelSelector=kubernetes.io%2Fos")),
        "{:#?}",
        requests(&e.api)
    );
}

/// The NotReady node fails at once without a Job; the record names the skipped nodes.
#[tokio::test]
async fn fleet_fails_a_not_ready_node_without_a_job() {
    let st = mixed_cluster();
    *st.job_runtime.lock().unwrap() = Some(Duration::ZERO);
    let e = env(st).await;
    let t = fleet::select_nodes(&e.kube).await.unwrap();
    let res = fleet::run_fleet_on(
        &e.kube,
        &spec(4),
        &t,
        Arc::new(AtomicBool::new(false)),
        Arc::new(|_: &fleet::FleetEvent<'_>| {}),
    )
    .await
    .unwrap();
    let n = &res.record.nodes;
    assert_eq!(n.len(), 3);
    assert_eq!(
        (n[0].outcome, n[1].outcome),
        (NodeOutcome::Completed, NodeOutcome::Completed)
    );
    assert_eq!(n[2].node, "node-c");
    assert_eq!(n[2].outcome, NodeOutcome::Failed);
    assert_eq!(
        n[2].error.as_deref(),
        Some(
            "node node-c: NotReady (Ready=Unknown: NodeStatusUnknown: Kubelet stopped posting node status.): no Job was created (its pod would stay Pending until the deadline)"
        )
    );
    let created: Vec<_> = e
        .api
        .state
        .manifests
        .lock()
        .unwrap()
        .iter()
        .map(|j| j.metadata.annotations.clone().unwrap()["snat.io/node"].clone())
        .collect();
    assert_eq!(created, ["node-a", "node-b"]);
    assert_eq!(res.record.skipped, t.skipped);
    let dir = tempfile::tempdir().unwrap();
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fleet::write_fleet(dir.path(), &res).unwrap()).unwrap()).unwrap();
    assert_eq!(
        rec["skipped"],
        json!([
            {"node": "virtual-node-aci-linux", "unfit": "virtual_kubelet", "detail": "type=virtual-kubelet"},
            {"node": "akswin000000", "unfit": "not_linux", "detail": "kubernetes.io/os=windows"}
        ])
    );
}

/// `--on-node` names are looked up one by one: which are no node, which the Job cannot run on.
#[tokio::test]
async fn check_nodes_names_missing_and_unfit_nodes() {
    let e = env(mixed_cluster()).await;
    let asked: Vec<String> = ["node-a", "akswin000000", "nosuch", "virtual-node-aci-linux", "node-c"]
        .map(String::from)
        .to_vec();
    let c = fleet::check_nodes(&e.kube, &asked).await.unwrap();
    assert_eq!(c.missing, ["nosuch"]);
    let unfit: Vec<String> = c.unfit.iter().map(ToString::to_string).collect();
    assert_eq!(
        unfit,
        [
            "akswin000000: not a Linux node (kubernetes.io/os=windows)",
            "virtual-node-aci-linux: a virtual node (type=virtual-kubelet), with no host of its own",
            "node-c: NotReady (Ready=Unknown: NodeStatusUnknown: Kubelet stopped posting node status.)",
        ]
    );
}

#[tokio::test]
async fn fleet_rejects_unusable_specs() {
    let e = env(cluster()).await;
    let mut s = spec(0);
    let err = fleet::run_fleet(&e.kube, &s, &["n".into()], Arc::new(AtomicBool::new(false)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("concurrency"), "{err}");
    s.concurrency = 1;
    s.image = " ".into();
    let err = fleet::run_fleet(&e.kube, &s, &["n".into()], Arc::new(AtomicBool::new(false)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no image"), "{err}");
    assert!(requests(&e.api).is_empty());
}
