//! Kubernetes API stages: connecting like kubectl does, and every request made with
//! timeouts, retries and errors an on-call engineer can act on.
//!
//! [`Kube::connect`] loads a kubeconfig (`--kubeconfig`, else `KUBECONFIG`, else
//! `~/.kube/config`, with `--context` as kubectl has it) or, when there is none, the
//! in-cluster ServiceAccount. Every request then goes through one path that bounds connect
//! and read time, retries 429 (after the server's `Retry-After`) and 5xx with exponential
//! backoff, and turns 401/403 into errors that name the verb and resource RBAC denied.
//!
//! The stages themselves live in submodules: [`lookup`] (node by IP, pods on a node, pod by
//! UID and its owner workload), [`exec`] (a socket census inside a pod through the exec API,
//! for users who cannot reach the node), [`fleet`] (a playbook on many nodes as
//! short-lived Jobs) and [`remediate`] (Events, annotations, labels, rollout restarts and
//! cordons on a culprit, gated by the caller and idempotent).

use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;
use kube::client::Body;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::de::DeserializeOwned;

use crate::error::Error;

pub mod exec;
pub mod fleet;
pub mod lookup;
pub mod remediate;

/// How to reach the cluster and how patient to be.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// `--kubeconfig`: the kubeconfig file (else `KUBECONFIG`, else `~/.kube/config`, else
    /// in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// `--context`: the kubeconfig context (else the current context).
    pub context: Option<String>,
    /// Time allowed to open a connection (default 10 s).
    pub connect_timeout: Duration,
    /// Time allowed for a response, per attempt (default 30 s).
    pub read_timeout: Duration,
    /// Retries after a 429 or 5xx answer (default 4; 0 disables retries).
    pub max_retries: u32,
    /// First backoff delay (default 250 ms), doubled per retry up to `backoff_max`.
    pub backoff_base: Duration,
    /// Longest wait between retries, including a server's `Retry-After` (default 30 s).
    pub backoff_max: Duration,
    /// Items asked per page of a list (`limit`; default 500).
    pub page_size: u32,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            kubeconfig: None,
            context: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            max_retries: 4,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            page_size: 500,
        }
    }
}

/// Where a request applies, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Cluster-wide (all namespaces, or a cluster-scoped resource).
    Cluster,
    /// One namespace.
    Namespace(String),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Cluster => f.write_str("at cluster scope"),
            Scope::Namespace(ns) => write!(f, "in namespace {ns:?}"),
        }
    }
}

/// One API operation, as RBAC sees it: a verb on a resource in a scope.
#[derive(Debug, Clone)]
pub struct Op {
    /// RBAC verb: `get`, `list`, `create`, `delete`.
    pub verb: &'static str,
    /// Resource as RBAC names it, with its API group when not core, e.g. `pods`,
    /// `pods/log`, `jobs.batch`, `replicasets.apps`.
    pub resource: &'static str,
    /// Where.
    pub scope: Scope,
    /// The object's name, for single-object operations.
    pub name: Option<String>,
}

impl Op {
    /// `verb resource [name] scope`, as error messages say it.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(n) => format!("{} {} {n:?} {}", self.verb, self.resource, self.scope),
            None => format!("{} {} {}", self.verb, self.resource, self.scope),
        }
    }
}

/// A connected Kubernetes API client with snat's timeouts and retry policy.
#[derive(Clone)]
pub struct Kube {
    client: kube::Client,
    opts: KubeOptions,
    server: String,
    context: Option<String>,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

fn config_error(what: String, e: impl std::fmt::Display) -> Error {
    Error::KubeConfig {
        what,
        message: e.to_string(),
    }
}

/// The kubeconfig kubectl would use, and a description of where it came from: the file
/// given, else the files of `KUBECONFIG` merged (those that do not exist are skipped, as
/// kubectl skips them), else `~/.kube/config`. `None` when there is none (then only the
/// in-cluster configuration is left).
fn load_kubeconfig(explicit: Option<&std::path::Path>) -> Result<Option<(Kubeconfig, String)>, Error> {
    load_kubeconfig_from(explicit, std::env::var_os("KUBECONFIG"), std::env::var_os("HOME"))
}

/// The context names of the kubeconfig kubectl would use (`explicit`, else `KUBECONFIG`,
/// else `~/.kube/config`); `Ok(None)` when there is none. No request is made.
pub fn kubeconfig_contexts(explicit: Option<&std::path::Path>) -> Result<Option<Vec<String>>, Error> {
    Ok(load_kubeconfig(explicit)?.map(|(kc, _)| kc.contexts.into_iter().map(|c| c.name).collect()))
}

fn load_kubeconfig_from(
    explicit: Option<&std::path::Path>,
    kubeconfig_var: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Result<Option<(Kubeconfig, String)>, Error> {
    if let Some(path) = explicit {
        let kc = Kubeconfig::read_from(path)
            .map_err(|e| config_error(format!("cannot read kubeconfig {}", path.display()), e))?;
        return Ok(Some((kc, format!("kubeconfig {}", path.display()))));
    }
    if let Some(list) = kubeconfig_var {
        let named: Vec<std::path::PathBuf> = std::env::split_paths(&list)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        let existing: Vec<&std::path::PathBuf> = named.iter().filter(|p| p.exists()).collect();
        if !named.is_empty() {
            if existing.is_empty() {
                let all: Vec<String> = named.iter().map(|p| p.display().to_string()).collect();
                return Err(config_error(
                    "KUBECONFIG names no file that exists".into(),
                    format!("{} (fix KUBECONFIG, or pass --kubeconfig FILE)", all.join(", ")),
                ));
            }
            let mut merged = Kubeconfig::default();
            for p in &existing {
                let kc = Kubeconfig::read_from(p).map_err(|e| {
                    config_error(format!("cannot read kubeconfig {} (from KUBECONFIG)", p.display()), e)
                })?;
                merged = merged.merge(kc).map_err(|e| {
                    config_error(format!("cannot merge kubeconfig {} (from KUBECONFIG)", p.display()), e)
                })?;
            }
            let shown: Vec<String> = existing.iter().map(|p| p.display().to_string()).collect();
            return Ok(Some((merged, format!("kubeconfig {} (KUBECONFIG)", shown.join(":")))));
        }
    }
    let Some(home) = home.filter(|h| !h.is_empty()) else {
        return Ok(None);
    };
    let path = std::path::Path::new(&home).join(".kube/config");
    if !path.exists() {
        return Ok(None);
    }
    let kc = Kubeconfig::read_from(&path)
        .map_err(|e| config_error(format!("cannot read kubeconfig {}", path.display()), e))?;
    Ok(Some((kc, format!("kubeconfig {}", path.display()))))
}

impl Kube {
    /// Load the configuration as kubectl would and build a client. No request is made.
    pub async fn connect(opts: &KubeOptions) -> Result<Kube, Error> {
        let kco = KubeConfigOptions {
            context: opts.context.clone(),
            ..Default::default()
        };
        let mut context = None;
        let mut config = match load_kubeconfig(opts.kubeconfig.as_deref())? {
            Some((kc, source)) => {
                context = opts.context.clone().or_else(|| kc.current_context.clone());
                if let Some(want) = &opts.context
                    && !kc.contexts.iter().any(|c| &c.name == want)
                {
                    let names: Vec<&str> = kc.contexts.iter().map(|c| c.name.as_str()).collect();
                    return Err(config_error(
                        format!("no context {want:?} in {source}"),
                        format!(
                            "its contexts are {} (kubectl config get-contexts lists them)",
                            if names.is_empty() {
                                "none".to_string()
                            } else {
                                names.join(", ")
                            }
                        ),
                    ));
                }
                kube::Config::from_custom_kubeconfig(kc, &kco).await.map_err(|e| {
                    config_error(
                        format!(
                            "cannot use {source}{}",
                            opts.context
                                .as_deref()
                                .map(|c| format!(" (context {c:?})"))
                                .unwrap_or_default()
                        ),
                        e,
                    )
                })?
            }
            None if opts.context.is_some() => {
                return Err(config_error(
                    format!(
                        "--context {:?} given, but there is no kubeconfig",
                        opts.context.as_deref().unwrap_or_default()
                    ),
                    "pass --kubeconfig FILE, set KUBECONFIG, or run `az aks get-credentials`",
                ));
            }
            None => kube::Config::incluster().map_err(|in_err| {
                config_error(
                    "no kubeconfig (--kubeconfig, KUBECONFIG or ~/.kube/config) and not running in a pod".into(),
                    format!("in-cluster: {in_err} (pass --kubeconfig or run `az aks get-credentials`)"),
                )
            })?,
        };
        config.connect_timeout = Some(opts.connect_timeout);
        config.read_timeout = Some(opts.read_timeout);
        config.write_timeout = Some(opts.read_timeout);
        config.reset_reader_on_write = true;
        // Retries are ours (they also cover 500 and log each attempt).
        config.default_retry = false;
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config)
            .map_err(|e| config_error(format!("cannot build a client for {server}"), e))?;
        Ok(Kube {
            client,
            opts: opts.clone(),
            server,
            context,
        })
    }

    /// The underlying kube client (for calls snat does not wrap).
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The kubeconfig context in use (the one asked for, else the current context); `None`
    /// for the in-cluster configuration.
    pub fn context(&self) -> Option<&str> {
        self.context.as_deref()
    }

    /// The options in use.
    pub fn options(&self) -> &KubeOptions {
        &self.opts
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let d = self.opts.backoff_base.saturating_mul(1u32 << attempt.min(16));
        d.min(self.opts.backoff_max)
    }

    /// Send a request built by `build` (called again for each attempt) and return the
    /// response body. `idempotent: false` (creates) retries only 429, which the server
    /// answers before acting.
    pub(crate) async fn send_raw(
        &self,
        op: &Op,
        idempotent: bool,
        build: impl Fn() -> Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<Vec<u8>, Error> {
        let mut attempt = 0u32;
        loop {
            let req = build()
                .map_err(|e| Error::InvalidArgument(format!("cannot build request to {}: {e}", op.describe())))?;
            let limit = self.opts.connect_timeout + self.opts.read_timeout;
            let fut = async {
                let res = self.client.send(req.map(Body::from)).await?;
                let status = res.status();
                let retry_after = res
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                let body = res.into_body().collect_bytes().await?;
                Ok::<_, kube::Error>((status, retry_after, body.to_vec()))
            };
            let outcome = match tokio::time::timeout(limit, fut).await {
                Err(_) => return Err(self.timeout_error(op)),
                Ok(Err(e)) => {
                    if is_timeout(&e) {
                        return Err(self.timeout_error(op));
                    }
                    return Err(Error::KubeTransport {
                        op: op.describe(),
                        server: self.server.clone(),
                        source: Box::new(e),
                    });
                }
                Ok(Ok(o)) => o,
            };
            let (status, retry_after, body) = outcome;
            if status.is_success() {
                return Ok(body);
            }
            let retryable = status == StatusCode::TOO_MANY_REQUESTS || (idempotent && status.is_server_error());
            if retryable && attempt < self.opts.max_retries {
                let wait = match retry_after {
                    Some(s) if status == StatusCode::TOO_MANY_REQUESTS => {
                        Duration::from_secs(s).min(self.opts.backoff_max)
                    }
                    _ => self.backoff(attempt),
                };
                tracing::debug!(op = %op.describe(), %status, ?wait, attempt, "retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
                continue;
            }
            return Err(api_error(op, status, &body, attempt + 1));
        }
    }

    /// Send a request and decode its JSON answer.
    pub(crate) async fn send_json<T: DeserializeOwned>(
        &self,
        op: &Op,
        idempotent: bool,
        build: impl Fn() -> Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<T, Error> {
        let body = self.send_raw(op, idempotent, build).await?;
        serde_json::from_slice(&body).map_err(|e| Error::KubeDecode {
            op: op.describe(),
            message: e.to_string(),
        })
    }

    fn timeout_error(&self, op: &Op) -> Error {
        Error::KubeTimeout {
            op: op.describe(),
            server: self.server.clone(),
            timeout: format!(
                "{:?} connect + {:?} read",
                self.opts.connect_timeout, self.opts.read_timeout
            ),
        }
    }
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        if c.to_string().to_ascii_lowercase().contains("timed out") {
            return true;
        }
        cur = c.source();
    }
    false
}

/// The API server's message: a `Status` object's `message`, else the body's text.
fn status_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct St {
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<St>(body) {
        Ok(s) if !s.message.is_empty() => s.message,
        _ => String::from_utf8_lossy(body).trim().chars().take(500).collect(),
    }
}

/// Map a failed answer to an error that says what to do.
pub(crate) fn api_error(op: &Op, status: StatusCode, body: &[u8], attempts: u32) -> Error {
    let message = status_message(body);
    match status {
        StatusCode::UNAUTHORIZED => Error::KubeUnauthorized {
            op: op.describe(),
            message,
        },
        StatusCode::FORBIDDEN => Error::KubeForbidden {
            verb: op.verb,
            resource: op.resource,
            name: op.name.clone(),
            scope: op.scope.to_string(),
            message,
        },
        StatusCode::NOT_FOUND => Error::KubeNotFound {
            op: op.describe(),
            message,
        },
        _ => Error::KubeApi {
            op: op.describe(),
            code: status.as_u16(),
            attempts,
            message,
        },
    }
}

pub(crate) use crate::error::chain;

#[cfg(test)]
mod kubeconfig_tests {
    use super::*;

    const ONE: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: a\n  cluster:\n    server: http://127.0.0.1:1\ncontexts:\n- name: a\n  context:\n    cluster: a\n    user: u\ncurrent-context: a\nusers:\n- name: u\n  user:\n    token: t\n";

    /// KUBECONFIG as kubectl reads it: a file in the list that does not exist is skipped;
    /// a list of only missing files is an error naming them; without KUBECONFIG,
    /// ~/.kube/config; without either, nothing (in-cluster is left).
    #[test]
    fn kubeconfig_is_found_as_kubectl_finds_it() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, ONE).unwrap();
        let missing = dir.path().join("missing");
        let list = std::env::join_paths([&missing, &good]).unwrap();
        let (kc, source) = load_kubeconfig_from(None, Some(list), None).unwrap().unwrap();
        assert_eq!(kc.contexts[0].name, "a");
        assert!(source.contains("good") && !source.contains("missing"), "{source}");

        let err = load_kubeconfig_from(None, Some(missing.clone().into_os_string()), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("KUBECONFIG names no file that exists") && err.contains("missing"),
            "{err}"
        );

        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".kube")).unwrap();
        assert!(
            load_kubeconfig_from(None, None, Some(home.clone().into_os_string()))
                .unwrap()
                .is_none()
        );
        std::fs::write(home.join(".kube/config"), ONE).unwrap();
        let (_, source) = load_kubeconfig_from(None, None, Some(home.into_os_string()))
            .unwrap()
            .unwrap();
        assert!(source.ends_with(".kube/config"), "{source}");

        // The file given wins, and a missing one is an error, not a fallback.
        let err = load_kubeconfig_from(Some(&missing), Some(good.into_os_string()), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read kubeconfig") && err.contains("missing"),
            "{err}"
        );
    }
}
