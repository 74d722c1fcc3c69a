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

impl Kube {
    /// Load the configuration as kubectl would and build a client. No request is made.
    pub async fn connect(opts: &KubeOptions) -> Result<Kube, Error> {
        let kco = KubeConfigOptions {
            context: opts.context.clone(),
            ..Default::default()
        };
        let mut config = match &opts.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path)
                    .map_err(|e| config_error(format!("cannot read kubeconfig {}", path.display()), e))?;
                kube::Config::from_custom_kubeconfig(kc, &kco).await.map_err(|e| {
                    config_error(
                        format!(
                            "cannot use kubeconfig {}{}",
                            path.display(),
                            opts.context.as_deref().map(|c| format!(" (context {c:?})")).unwrap_or_default()
                        ),
                        e,
                    )
                })?
            }
            None => match kube::Config::from_kubeconfig(&kco).await {
                Ok(c) => c,
                Err(file_err) if opts.context.is_none() => kube::Config::incluster().map_err(|in_err| {
                    config_error(
                        "no usable kubeconfig (KUBECONFIG or ~/.kube/config) and not running in a pod".into(),
                        format!("kubeconfig: {file_err}; in-cluster: {in_err} (pass --kubeconfig or run `az aks get-credentials`)"),
                    )
                })?,
                Err(e) => {
                    return Err(config_error(
                        format!("cannot use context {:?} of the default kubeconfig", opts.context),
                        e,
                    ));
                }
            },
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
