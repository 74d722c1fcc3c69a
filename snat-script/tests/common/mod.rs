//! Shared by the CLI tests that need a Kubernetes API: snat-core's loopback API server
//! on its own runtime thread, and a kubeconfig pointing at it.

#![allow(dead_code)]

#[path = "../../../snat-core/tests/support/apiserver.rs"]
pub mod apiserver;
#[path = "../../../snat-core/tests/support/fixtures.rs"]
pub mod fixtures;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};

/// The fake API server on its own runtime thread.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state (to change pods and Jobs while a run waits).
    pub state: Arc<apiserver::State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Start serving `state`.
    pub fn start(state: apiserver::State) -> Server {
        let (tx, rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let api = apiserver::FakeApi::start(state).await;
                tx.send((api.addr, api.state.clone())).unwrap();
                let _ = stop_rx.await;
                drop(api);
            });
        });
        let (addr, state) = rx.recv().unwrap();
        Server {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = self.thread.take().map(|t| t.join());
    }
}

/// A kubeconfig for the server at `server`, with a token it accepts.
pub fn kubeconfig(dir: &std::path::Path, server: SocketAddr) -> PathBuf {
    let p = dir.join("kubeconfig");
    std::fs::write(
        &p,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{server}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: t0ken\n"
        ),
    )
    .unwrap();
    p
}
