//! A loopback Kubernetes API server for tests: enough of the real API (JSON built from
//! k8s-openapi types, `limit`/`continue` pagination it enforces, field and label selectors,
//! the exec WebSocket protocol, Jobs with their status conditions, events, pod logs and the
//! Secrets a fleet run creates and deletes) to
//! drive snat's real kube client.
//! Faults (status codes, Retry-After, hangs) are scripted per path.

#![allow(dead_code)]
// Handlers return early with a ready response; its size does not matter in a test server.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// A scripted answer for requests whose path contains `path_contains`.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status (and `Retry-After` seconds, if given) and a Status body.
    Status(u16, Option<u64>),
    /// Never answer.
    Hang,
}

/// What the exec endpoint sends back.
#[derive(Debug, Clone)]
pub struct ExecReply {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: Value,
}

#[derive(Default)]
pub struct State {
    pub token: String,
    pub nodes: Mutex<Vec<Node>>,
    pub pods: Mutex<Vec<Pod>>,
    pub replicasets: Mutex<Vec<ReplicaSet>>,
    pub jobs: Mutex<Vec<Job>>,
    /// Largest page the server returns; it also refuses lists without `limit`.
    pub max_page: usize,
    /// Every request: "METHOD path?query".
    pub requests: Mutex<Vec<String>>,
    /// Field selectors received on pod lists.
    pub field_selectors: Mutex<Vec<String>>,
    /// Label selectors received on node lists.
    pub node_label_selectors: Mutex<Vec<String>>,
    /// Faults, consumed in order, by path substring.
    pub faults: Mutex<VecDeque<(String, Fault)>>,
    pub exec: Mutex<Option<ExecReply>>,
    /// Fleet: Jobs created and not yet deleted.
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub created: AtomicUsize,
    pub deleted: AtomicUsize,
    /// Fleet: created Jobs by name (node, creation time, the manifest).
    pub fleet_jobs: Mutex<HashMap<String, (String, Instant)>>,
    pub manifests: Mutex<Vec<Job>>,
    /// Fleet: each created Job's request body, as received.
    pub job_bodies: Mutex<Vec<String>>,
    /// Fleet: the Jobs whose pod mounts a Secret that did not exist when the Job was created.
    pub missing_secret_mounts: Mutex<Vec<String>>,
    /// Secrets that exist (created and not yet deleted).
    pub secrets: Mutex<Vec<Secret>>,
    /// Names of the Secrets deleted, in order.
    pub deleted_secrets: Mutex<Vec<String>>,
    /// Fleet: how long a Job takes to finish; `None` = never finishes.
    pub job_runtime: Mutex<Option<Duration>>,
    /// Fleet: nodes whose Jobs never finish, whatever `job_runtime` says.
    pub hanging_nodes: Mutex<Vec<String>>,
    /// Fleet: nodes whose Job pods wait in ImagePullBackOff forever.
    pub stuck_nodes: Mutex<Vec<String>>,
    /// Fleet: nodes whose Jobs never get a pod, as when admission refuses it. With a
    /// message, the Job controller's `FailedCreate` Warning event carrying it is recorded
    /// against the Job when it is created (what `kubectl describe job` shows).
    pub podless_nodes: Mutex<HashMap<String, Option<String>>>,
    /// Fleet: status conditions a node's Job gets once it is this old (then it has no
    /// active pod), e.g. `Failed`/`DeadlineExceeded`.
    pub job_conditions: Mutex<HashMap<String, (Duration, Vec<JobCondition>)>>,
    /// Exec: the subprotocol the server picks (default v4.channel.k8s.io).
    pub exec_protocol: Mutex<Option<String>>,
    /// Exec: binary frames the client sent (channel byte first).
    pub exec_client_frames: Mutex<Vec<Vec<u8>>>,
    /// Fleet: nodes whose Jobs fail (status.failed = 1) and print a cut-short log.
    pub failing_nodes: Mutex<Vec<String>>,
    /// Fleet: the log a node's Job prints instead of [`node_log`]'s.
    pub node_logs: Mutex<HashMap<String, String>>,
    /// Remediation: every POST/PATCH body received ("METHOD path", content type, JSON body).
    pub bodies: Mutex<Vec<(String, String, Value)>>,
    /// core/v1 Events: created by remediation, or by the fake Job controller.
    pub events: Mutex<Vec<Value>>,
    /// Remediation: Deployments, StatefulSets and DaemonSets (JSON with `kind`).
    pub workloads: Mutex<Vec<Value>>,
    /// Remediation: resourceVersion counter for patched objects.
    pub version: AtomicUsize,
}

/// Apply a JSON merge patch (RFC 7386) to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Patch `obj` as the API server does for a merge patch: the UID in the patch, if any, must
/// match; metadata.resourceVersion is bumped only when something changed.
fn patch_object(state: &State, obj: &mut Value, patch: &Value) -> Result<(), Response<Full<Bytes>>> {
    if let Some(uid) = patch.pointer("/metadata/uid")
        && obj.pointer("/metadata/uid") != Some(uid)
    {
        return Err(status(
            409,
            "Conflict",
            "Precondition failed: UID in precondition does not match UID in object",
        ));
    }
    let before = obj.clone();
    merge_patch(obj, patch);
    if *obj != before {
        let v = state.version.fetch_add(1, Ordering::SeqCst) + 100;
        obj["metadata"]["resourceVersion"] = json!(v.to_string());
    }
    Ok(())
}

pub struct FakeApi {
    pub state: Arc<State>,
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    pub async fn start(state: State) -> FakeApi {
        let state = Arc::new(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        FakeApi { state, addr, task }
    }

    /// Write a kubeconfig with contexts `fake` (this server, current) and any `extra`
    /// (name, server URL) contexts.
    pub fn kubeconfig(&self, dir: &Path, extra: &[(&str, String)]) -> PathBuf {
        let mut clusters = format!("- name: fake\n  cluster:\n    server: http://{}\n", self.addr);
        let mut contexts = "- name: fake\n  context:\n    cluster: fake\n    user: fake\n".to_string();
        for (name, url) in extra {
            clusters.push_str(&format!("- name: {name}\n  cluster:\n    server: {url}\n"));
            contexts.push_str(&format!(
                "- name: {name}\n  context:\n    cluster: {name}\n    user: fake\n"
            ));
        }
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n{clusters}contexts:\n{contexts}current-context: fake\nusers:\n- name: fake\n  user:\n    token: {}\n",
            self.state.token
        );
        let p = dir.join("kubeconfig");
        std::fs::write(&p, text).unwrap();
        p
    }
}

fn respond(code: u16, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Response<Full<Bytes>> {
    respond(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in req.uri().query().unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| {
            let s = s.replace('+', " ");
            let bytes = s.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' && i + 2 < bytes.len() {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 3;
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            String::from_utf8(out).unwrap()
        };
        m.entry(dec(k)).or_default().push(dec(v));
    }
    m
}

/// A page of `items` as a List, enforcing `limit`.
fn page(state: &State, q: &BTreeMap<String, Vec<String>>, kind: &str, items: Vec<Value>) -> Response<Full<Bytes>> {
    let Some(limit) = q.get("limit").and_then(|v| v[0].parse::<usize>().ok()) else {
        return status(400, "BadRequest", "test server: lists must be paginated with limit");
    };
    let limit = limit.min(state.max_page.max(1));
    let start = match q.get("continue") {
        Some(v) => match v[0].strip_prefix("off-").and_then(|s| s.parse::<usize>().ok()) {
            Some(n) => n,
            None => return status(400, "BadRequest", "bad continue token"),
        },
        None => 0,
    };
    let end = (start + limit).min(items.len());
    let cont = (end < items.len()).then(|| format!("off-{end}"));
    let mut meta = json!({"resourceVersion": "1"});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    respond(
        200,
        json!({"kind": kind, "apiVersion": "v1", "metadata": meta, "items": items[start.min(end)..end]}),
    )
}

fn ws_accept(req: &Request<Incoming>) -> Option<String> {
    let key = req.headers().get("sec-websocket-key")?.as_bytes();
    Some(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key))
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let pq = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    state.requests.lock().unwrap().push(format!("{} {pq}", req.method()));
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {}", state.token) {
        return Ok(status(401, "Unauthorized", "Unauthorized"));
    }
    let fault = {
        let mut f = state.faults.lock().unwrap();
        let pos = f.iter().position(|(p, _)| path.contains(p.as_str()));
        pos.and_then(|i| f.remove(i)).map(|(_, f)| f)
    };
    match fault {
        Some(Fault::Hang) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Some(Fault::Status(code, retry_after)) => {
            let mut r = status(code, "Scripted", &format!("scripted {code} for {path}"));
            if let Some(s) = retry_after {
                r.headers_mut().insert("retry-after", s.to_string().parse().unwrap());
            }
            return Ok(r);
        }
        None => {}
    }
    let q = query(&req);
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let r = match (method, seg.as_slice()) {
        (Method::GET, ["api", "v1", "nodes"]) => {
            let sel = q.get("labelSelector").map(|v| v[0].clone()).unwrap_or_default();
            if !sel.is_empty() {
                state.node_label_selectors.lock().unwrap().push(sel.clone());
            }
            let nodes = state.nodes.lock().unwrap().clone();
            let mut items = Vec::new();
            for n in nodes {
                match labels_match(n.metadata.labels.as_ref(), &sel) {
                    Ok(true) => items.push(serde_json::to_value(n).unwrap()),
                    Ok(false) => {}
                    Err(e) => return Ok(status(400, "BadRequest", &e)),
                }
            }
            page(&state, &q, "NodeList", items)
        }
        (Method::GET, ["api", "v1", "pods"]) => {
            let sel = q.get("fieldSelector").map(|v| v[0].clone());
            let node = match &sel {
                None => None,
                Some(s) => {
                    state.field_selectors.lock().unwrap().push(s.clone());
                    match s.strip_prefix("spec.nodeName=") {
                        Some(n) if !n.contains(',') => Some(n.to_string()),
                        _ => return Ok(status(400, "BadRequest", &format!("field label not supported: {s}"))),
                    }
                }
            };
            let items = state
                .pods
                .lock()
                .unwrap()
                .iter()
                .filter(|p| node.is_none() || p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == node.as_deref())
                .map(|p| serde_json::to_value(p).unwrap())
                .collect();
            page(&state, &q, "PodList", items)
        }
        (Method::GET, ["apis", "apps", "v1", "namespaces", ns, "replicasets", name]) => {
            let rs = state
                .replicasets
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.metadata.namespace.as_deref() == Some(*ns) && r.metadata.name.as_deref() == Some(*name))
                .cloned();
            match rs {
                Some(r) => respond(200, serde_json::to_value(r).unwrap()),
                None => status(404, "NotFound", &format!("replicasets.apps \"{name}\" not found")),
            }
        }
        (Method::GET, ["apis", "batch", "v1", "namespaces", ns, "jobs", name]) => {
            if let Some((node, t0)) = state.fleet_jobs.lock().unwrap().get(*name).cloned() {
                let done = state.job_runtime.lock().unwrap().is_some_and(|d| t0.elapsed() >= d)
                    && !state.hanging_nodes.lock().unwrap().contains(&node);
                let fails = state.failing_nodes.lock().unwrap().contains(&node);
                let podless = state.podless_nodes.lock().unwrap().contains_key(&node);
                let conditions = state
                    .job_conditions
                    .lock()
                    .unwrap()
                    .get(&node)
                    .filter(|(after, _)| t0.elapsed() >= *after)
                    .map(|(_, c)| c.clone());
                let active = !done && !podless && conditions.is_none();
                let j = Job {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        namespace: Some(ns.to_string()),
                        ..Default::default()
                    },
                    status: Some(JobStatus {
                        active: Some(if active { 1 } else { 0 }),
                        ready: Some(if active { 1 } else { 0 }),
                        succeeded: Some(if done && !fails && !podless { 1 } else { 0 }),
                        failed: Some(if done && fails && !podless { 1 } else { 0 }),
                        conditions,
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                return Ok(respond(200, serde_json::to_value(j).unwrap()));
            }
            let j = state
                .jobs
                .lock()
                .unwrap()
                .iter()
                .find(|j| j.metadata.namespace.as_deref() == Some(*ns) && j.metadata.name.as_deref() == Some(*name))
                .cloned();
            match j {
                Some(j) => respond(200, serde_json::to_value(j).unwrap()),
                None => status(404, "NotFound", &format!("jobs.batch \"{name}\" not found")),
            }
        }
        (Method::POST, ["apis", "batch", "v1", "namespaces", ns, "jobs"]) => {
            let ns = ns.to_string();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let job: Job = match serde_json::from_slice(&body) {
                Ok(j) => j,
                Err(e) => return Ok(status(400, "BadRequest", &format!("bad Job: {e}"))),
            };
            let name = job.metadata.name.clone().unwrap_or_default();
            state
                .job_bodies
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let mounted = job
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|s| s.volumes.clone())
                .unwrap_or_default();
            let secrets = state.secrets.lock().unwrap().clone();
            let exists = |n: &str| {
                secrets
                    .iter()
                    .any(|s| s.metadata.namespace.as_deref() == Some(&ns) && s.metadata.name.as_deref() == Some(n))
            };
            if mounted
                .iter()
                .filter_map(|v| v.secret.as_ref()?.secret_name.as_deref())
                .any(|n| !exists(n))
            {
                state.missing_secret_mounts.lock().unwrap().push(name.clone());
            }
            let node = job
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            if state
                .fleet_jobs
                .lock()
                .unwrap()
                .insert(name.clone(), (node.clone(), Instant::now()))
                .is_some()
            {
                return Ok(status(
                    409,
                    "AlreadyExists",
                    &format!("jobs.batch \"{name}\" already exists"),
                ));
            }
            if let Some(Some(message)) = state.podless_nodes.lock().unwrap().get(&node) {
                let ev = failed_create(&ns, &name, message);
                state.events.lock().unwrap().push(serde_json::to_value(ev).unwrap());
            }
            let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            state.max_in_flight.fetch_max(now, Ordering::SeqCst);
            state.created.fetch_add(1, Ordering::SeqCst);
            state.manifests.lock().unwrap().push(job.clone());
            respond(201, serde_json::to_value(job).unwrap())
        }
        (Method::DELETE, ["apis", "batch", "v1", "namespaces", _ns, "jobs", name]) => {
            if state.fleet_jobs.lock().unwrap().remove(*name).is_some() {
                state.in_flight.fetch_sub(1, Ordering::SeqCst);
                state.deleted.fetch_add(1, Ordering::SeqCst);
                respond(
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
                )
            } else {
                status(404, "NotFound", &format!("jobs.batch \"{name}\" not found"))
            }
        }
        (Method::POST, ["api", "v1", "namespaces", ns, "secrets"]) => {
            let (ns, path) = (ns.to_string(), path.clone());
            let v = match read_body(&state, "POST", &path, req).await {
                Ok(v) => v,
                Err(r) => return Ok(r),
            };
            let secret: Secret = match serde_json::from_value(v) {
                Ok(s) => s,
                Err(e) => return Ok(status(400, "BadRequest", &format!("bad Secret: {e}"))),
            };
            if secret.metadata.namespace.as_deref().is_some_and(|n| n != ns) {
                return Ok(status(
                    400,
                    "BadRequest",
                    "the namespace of the Secret does not match the request",
                ));
            }
            let name = secret.metadata.name.clone().unwrap_or_default();
            let mut secrets = state.secrets.lock().unwrap();
            if secrets
                .iter()
                .any(|s| s.metadata.namespace.as_deref() == Some(&ns) && s.metadata.name.as_deref() == Some(&name))
            {
                return Ok(status(
                    409,
                    "AlreadyExists",
                    &format!("secrets \"{name}\" already exists"),
                ));
            }
            let mut stored = secret;
            stored.metadata.namespace = Some(ns);
            secrets.push(stored.clone());
            respond(201, serde_json::to_value(stored).unwrap())
        }
        (Method::DELETE, ["api", "v1", "namespaces", ns, "secrets", name]) => {
            let mut secrets = state.secrets.lock().unwrap();
            let before = secrets.len();
            secrets.retain(|s| {
                !(s.metadata.namespace.as_deref() == Some(*ns) && s.metadata.name.as_deref() == Some(*name))
            });
            if secrets.len() < before {
                state.deleted_secrets.lock().unwrap().push(name.to_string());
                respond(
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
                )
            } else {
                status(404, "NotFound", &format!("secrets \"{name}\" not found"))
            }
        }
        (Method::GET, ["api", "v1", "namespaces", ns, "pods"]) => {
            let sel = q.get("labelSelector").map(|v| v[0].clone()).unwrap_or_default();
            let Some(job) = sel.strip_prefix("job-name=") else {
                return Ok(status(
                    400,
                    "BadRequest",
                    "test server: expected labelSelector job-name=...",
                ));
            };
            let node = state.fleet_jobs.lock().unwrap().get(job).map(|(n, _)| n.clone());
            let node = node.filter(|n| !state.podless_nodes.lock().unwrap().contains_key(n));
            let items = match node {
                Some(node) => {
                    let stuck = state.stuck_nodes.lock().unwrap().contains(&node);
                    let status = stuck.then(|| {
                        serde_json::from_value(json!({"phase": "Pending", "containerStatuses": [{
                            "name": "snat", "image": "IMAGE", "imageID": "", "ready": false, "restartCount": 0,
                            "state": {"waiting": {"reason": "ImagePullBackOff",
                                                  "message": "Back-off pulling image \"IMAGE\""}}}]}))
                        .unwrap()
                    });
                    vec![
                        serde_json::to_value(Pod {
                            metadata: ObjectMeta {
                                name: Some(format!("{job}-abcde")),
                                namespace: Some(ns.to_string()),
                                ..Default::default()
                            },
                            status,
                            ..Default::default()
                        })
                        .unwrap(),
                    ]
                }
                None => vec![],
            };
            page(&state, &q, "PodList", items)
        }
        (Method::GET, ["api", "v1", "namespaces", _ns, "pods", pod, "log"]) => {
            let job = pod.trim_end_matches("-abcde");
            let node = state.fleet_jobs.lock().unwrap().get(job).map(|(n, _)| n.clone());
            match node {
                Some(node) => {
                    let mut log = state
                        .node_logs
                        .lock()
                        .unwrap()
                        .get(&node)
                        .cloned()
                        .unwrap_or_else(|| node_log(&node));
                    if state.failing_nodes.lock().unwrap().contains(&node) {
                        log = "--- snat:report ---\n".to_string();
                    }
                    Response::builder()
                        .status(200)
                        .header("content-type", "text/plain")
                        .body(Full::new(Bytes::from(log)))
                        .unwrap()
                }
                None => status(404, "NotFound", "no such pod"),
            }
        }
        (Method::GET, ["api", "v1", "namespaces", _ns, "pods", _pod, "exec"]) => {
            let Some(accept) = ws_accept(&req) else {
                return Ok(status(400, "BadRequest", "exec needs a WebSocket upgrade"));
            };
            let protos = req
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let proto = state
                .exec_protocol
                .lock()
                .unwrap()
                .clone()
                .unwrap_or("v4.channel.k8s.io".into());
            if !protos.split(',').any(|p| p.trim() == proto) {
                return Ok(status(400, "BadRequest", "no supported channel.k8s.io subprotocol"));
            }
            let st2 = state.clone();
            let reply = state.exec.lock().unwrap().clone().unwrap_or(ExecReply {
                stdout: vec![],
                stderr: vec![],
                status: json!({"metadata": {}, "status": "Success"}),
            });
            let upgrade = hyper::upgrade::on(req);
            tokio::spawn(async move {
                let Ok(up) = upgrade.await else { return };
                let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
                let frame = |ch: u8, data: &[u8]| {
                    let mut v = vec![ch];
                    v.extend_from_slice(data);
                    Message::Binary(v.into())
                };
                // stdout in two frames, to exercise reassembly.
                let mid = reply.stdout.len() / 2;
                let _ = ws.send(frame(1, &reply.stdout[..mid])).await;
                let _ = ws.send(frame(1, &reply.stdout[mid..])).await;
                if !reply.stderr.is_empty() {
                    let _ = ws.send(frame(2, &reply.stderr)).await;
                }
                let _ = ws.send(frame(3, reply.status.to_string().as_bytes())).await;
                let _ = ws.close(None).await;
                // Drain what the client sends until it closes (v5 clients may send close signals).
                use futures_util::StreamExt;
                while let Some(Ok(m)) = ws.next().await {
                    if let Message::Binary(b) = m {
                        st2.exec_client_frames.lock().unwrap().push(b.to_vec());
                    }
                }
            });
            return Ok(Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "Upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .header("sec-websocket-protocol", proto)
                .body(Full::new(Bytes::new()))
                .unwrap());
        }
        (Method::GET, ["api", "v1", "namespaces", ns, "events"]) => {
            let sel = q.get("fieldSelector").map(|v| v[0].clone()).unwrap_or_default();
            let mut want = vec![("metadata.namespace".to_string(), ns.to_string())];
            for term in sel.split(',').filter(|t| !t.is_empty()) {
                let Some((k, v)) = term.split_once('=') else {
                    return Ok(status(400, "BadRequest", &format!("invalid field selector {term:?}")));
                };
                let known = [
                    "involvedObject.kind",
                    "involvedObject.name",
                    "involvedObject.namespace",
                    "involvedObject.uid",
                    "reason",
                    "type",
                ];
                if !known.contains(&k) {
                    return Ok(status(400, "BadRequest", &format!("field label not supported: {k}")));
                }
                want.push((k.to_string(), v.to_string()));
            }
            let items = state
                .events
                .lock()
                .unwrap()
                .iter()
                .filter(|e| {
                    want.iter().all(|(k, v)| {
                        let path = format!("/{}", k.replace('.', "/"));
                        e.pointer(&path).and_then(Value::as_str) == Some(v.as_str())
                    })
                })
                .cloned()
                .collect();
            page(&state, &q, "EventList", items)
        }
        (Method::GET, ["api", "v1", "namespaces", ns, "events", name]) => {
            let ev = state
                .events
                .lock()
                .unwrap()
                .iter()
                .find(|e| e["metadata"]["namespace"] == *ns && e["metadata"]["name"] == *name)
                .cloned();
            match ev {
                Some(e) => respond(200, e),
                None => status(404, "NotFound", &format!("events \"{name}\" not found")),
            }
        }
        (Method::POST, ["api", "v1", "namespaces", ns, "events"]) => {
            let (ns, path) = (ns.to_string(), path.clone());
            let mut ev = match read_body(&state, "POST", &path, req).await {
                Ok(v) => v,
                Err(r) => return Ok(r),
            };
            let name = ev["metadata"]["name"].as_str().unwrap_or("").to_string();
            if ev["metadata"]["namespace"] != ns.as_str() || ev["involvedObject"]["namespace"] != ns.as_str() {
                return Ok(status(422, "Invalid", "event namespace does not match the request"));
            }
            let mut events = state.events.lock().unwrap();
            if events.iter().any(|e| e["metadata"]["name"] == name.as_str()) {
                return Ok(status(
                    409,
                    "AlreadyExists",
                    &format!("events \"{name}\" already exists"),
                ));
            }
            ev["metadata"]["uid"] = json!(format!("ev-uid-{}", events.len()));
            ev["metadata"]["resourceVersion"] = json!("1");
            events.push(ev.clone());
            respond(201, ev)
        }
        (Method::GET, ["api", "v1", "namespaces", ns, "pods", name]) => {
            let pod = state
                .pods
                .lock()
                .unwrap()
                .iter()
                .find(|p| p.metadata.namespace.as_deref() == Some(*ns) && p.metadata.name.as_deref() == Some(*name))
                .cloned();
            match pod {
                Some(p) => respond(200, serde_json::to_value(p).unwrap()),
                None => status(404, "NotFound", &format!("pods \"{name}\" not found")),
            }
        }
        (Method::PATCH, ["api", "v1", "namespaces", ns, "pods", name]) => {
            let (ns, name, path) = (ns.to_string(), name.to_string(), path.clone());
            let patch = match read_body(&state, "PATCH", &path, req).await {
                Ok(v) => v,
                Err(r) => return Ok(r),
            };
            let mut pods = state.pods.lock().unwrap();
            let Some(p) = pods
                .iter_mut()
                .find(|p| p.metadata.namespace.as_deref() == Some(&ns) && p.metadata.name.as_deref() == Some(&name))
            else {
                return Ok(status(404, "NotFound", &format!("pods \"{name}\" not found")));
            };
            let mut v = serde_json::to_value(&*p).unwrap();
            if let Err(r) = patch_object(&state, &mut v, &patch) {
                return Ok(r);
            }
            *p = serde_json::from_value(v.clone()).unwrap();
            respond(200, v)
        }
        (Method::GET | Method::PATCH, ["apis", "apps", "v1", "namespaces", ns, plural, name])
            if ["deployments", "statefulsets", "daemonsets"].contains(plural) =>
        {
            let kind = match *plural {
                "deployments" => "Deployment",
                "statefulsets" => "StatefulSet",
                _ => "DaemonSet",
            };
            let (ns, name, path) = (ns.to_string(), name.to_string(), path.clone());
            let is_patch = req.method() == Method::PATCH;
            let patch = if is_patch {
                match read_body(&state, "PATCH", &path, req).await {
                    Ok(v) => Some(v),
                    Err(r) => return Ok(r),
                }
            } else {
                None
            };
            let mut wl = state.workloads.lock().unwrap();
            let Some(w) = wl.iter_mut().find(|w| {
                w["kind"] == kind && w["metadata"]["namespace"] == ns.as_str() && w["metadata"]["name"] == name.as_str()
            }) else {
                return Ok(status(404, "NotFound", &format!("{plural}.apps \"{name}\" not found")));
            };
            if let Some(p) = patch
                && let Err(r) = patch_object(&state, w, &p)
            {
                return Ok(r);
            }
            respond(200, w.clone())
        }
        (Method::GET | Method::PATCH, ["api", "v1", "nodes", name]) => {
            let (name, path) = (name.to_string(), path.clone());
            let patch = if req.method() == Method::PATCH {
                match read_body(&state, "PATCH", &path, req).await {
                    Ok(v) => Some(v),
                    Err(r) => return Ok(r),
                }
            } else {
                None
            };
            let mut nodes = state.nodes.lock().unwrap();
            let Some(n) = nodes.iter_mut().find(|n| n.metadata.name.as_deref() == Some(&name)) else {
                return Ok(status(404, "NotFound", &format!("nodes \"{name}\" not found")));
            };
            let mut v = serde_json::to_value(&*n).unwrap();
            if let Some(p) = patch {
                if let Err(r) = patch_object(&state, &mut v, &p) {
                    return Ok(r);
                }
                *n = serde_json::from_value(v.clone()).unwrap();
            }
            respond(200, v)
        }
        _ => status(404, "NotFound", &format!("test server has no route for {path}")),
    };
    Ok(r)
}

/// Read a JSON request body, recording it; PATCH must be a JSON merge patch.
async fn read_body(
    state: &State,
    method: &str,
    path: &str,
    req: Request<Incoming>,
) -> Result<Value, Response<Full<Bytes>>> {
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).map_err(|e| status(400, "BadRequest", &format!("bad JSON: {e}")))?;
    state
        .bodies
        .lock()
        .unwrap()
        .push((format!("{method} {path}"), ct.clone(), v.clone()));
    let want = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    if ct != want {
        return Err(status(
            415,
            "UnsupportedMediaType",
            &format!("expected {want}, got {ct:?}"),
        ));
    }
    Ok(v)
}

/// The framed log a node Job prints (see snat_core::k8s::fleet::NODE_SCRIPT).
pub fn node_log(node: &str) -> String {
    let report = json!({"title": "node census", "node": node, "verdict": "clear", "findings": []});
    let audit = json!({"schema_version": 1, "run_id": format!("run-{node}"), "exit_code": 0});
    format!(
        "--- snat:report ---\n{report}\n\n--- snat:audit ---\n{audit}\n\n--- snat:stderr ---\n\n--- snat:exit 0 ---\n"
    )
}

/// Whether `labels` match a label selector (`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-joined),
/// as the API server evaluates it: `k!=v` also matches objects without `k`.
pub fn labels_match(labels: Option<&BTreeMap<String, String>>, selector: &str) -> Result<bool, String> {
    let get = |k: &str| labels.and_then(|l| l.get(k.trim()));
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let ok = if let Some((k, v)) = term.split_once("!=") {
            get(k).map(String::as_str) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            get(k).map(String::as_str) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            get(k).is_none()
        } else if term.contains(' ') || term.contains('(') {
            return Err(format!("test server: unsupported label selector {term:?}"));
        } else {
            get(term).is_some()
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The Warning event the Job controller records when the API server refuses a Job's pod.
pub fn failed_create(ns: &str, job: &str, message: &str) -> Event {
    let now = Time("2025-01-01T00:00:00Z".parse().unwrap());
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{job}.17f0c0ffee")),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("batch/v1".into()),
            kind: Some("Job".into()),
            name: Some(job.into()),
            namespace: Some(ns.into()),
            uid: Some(format!("uid-{job}")),
            ..Default::default()
        },
        reason: Some("FailedCreate".into()),
        message: Some(format!("Error creating: {message}")),
        type_: Some("Warning".into()),
        count: Some(3),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        source: Some(EventSource {
            component: Some("job-controller".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Job status condition with status `True`.
pub fn job_condition(type_: &str, reason: &str, message: &str) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        ..Default::default()
    }
}
