//! The relay's listener and runtime: its own tokio threads, started and
//! stopped from Python, spreading client connections over the threads.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::Notify;

use crate::journal::Journal;
use crate::limits::max_message_bytes;
use crate::session;
use crate::stats::{bump, Stats};
use crate::xid::NasXids;

/// Where the NAS serves NFS and MOUNT.
#[derive(Clone, Debug)]
pub struct Backend {
    pub host: String,
    pub nfs_port: u16,
    pub mount_port: u16,
}

/// What every session of one relay shares.
pub struct Shared {
    pub backend: Backend,
    pub max_message: usize,
    pub max_payload: u32,
    /// The port clients reach the relay on (portmapper answers name it).
    pub port: u16,
    pub nas_xids: NasXids,
    pub stats: Arc<Stats>,
    /// None: relay only, journal nothing.
    pub journal: Option<Arc<Journal>>,
    /// How long a closed client's relayed mutations may take to be answered.
    pub drain_timeout: Duration,
}

/// How to run a relay.
#[derive(Clone)]
pub struct Config {
    pub listen: String,
    pub backend: Backend,
    pub threads: usize,
    pub max_payload_bytes: u32,
    pub journal: Option<Arc<Journal>>,
    pub drain_timeout: Duration,
}

/// A running relay; `stop` (or dropping it) closes every connection.
pub struct Server {
    runtime: Option<Runtime>,
    stopping: Arc<Notify>,
    pub port: u16,
    pub stats: Arc<Stats>,
}

impl Server {
    pub fn start(config: Config) -> io::Result<Server> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads.max(1))
            .thread_name("nfsj-relay")
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind(config.listen.as_str()))?;
        let port = listener.local_addr()?.port();
        let stats = Arc::new(Stats::default());
        let shared = Arc::new(Shared {
            max_message: max_message_bytes(config.max_payload_bytes as usize),
            max_payload: config.max_payload_bytes,
            backend: config.backend,
            port,
            nas_xids: NasXids::new(),
            stats: stats.clone(),
            journal: config.journal,
            drain_timeout: config.drain_timeout,
        });
        let stopping = Arc::new(Notify::new());
        runtime.spawn(accept(listener, shared, stopping.clone()));
        Ok(Server { runtime: Some(runtime), stopping, port, stats })
    }

    /// Stop accepting and close every session (calls in flight get no reply).
    pub fn stop(&mut self) {
        self.stopping.notify_one();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, stopping: Arc<Notify>) {
    loop {
        let client = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.notified() => return,
        };
        match client {
            Ok((stream, _)) => {
                let shared = shared.clone();
                let stats = shared.stats.clone();
                let session = tokio::spawn(session::serve(shared, stream));
                tokio::spawn(async move {
                    if matches!(session.await, Err(e) if e.is_panic()) {
                        bump(&stats.session_panics_total);
                        eprintln!("nfsj data plane: a session panicked; its connection is closed");
                    }
                });
            }
            // Out of descriptors and the like: the listener stays, clients retry.
            Err(e) => {
                eprintln!("nfsj data plane: accept failed ({e})");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
