//! The relay's listener and runtime: its own tokio threads, started and
//! stopped from Python, spreading client connections over the threads.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::journal::Journal;

use crate::limits::max_message_bytes;
use crate::session;
use crate::stats::{bump, Stats};
use crate::xid::NasXids;

// One connection's bug closes that connection only: tokio catches a panic in
// a session's task, which needs the panic to unwind.
#[cfg(panic = "abort")]
compile_error!("the relay needs panic = \"unwind\": a panic in one connection must not abort the proxy");

/// Where the NAS serves NFS and MOUNT.
#[derive(Clone, Debug)]
pub struct Backend {
    pub host: String,
    pub nfs_port: u16,
    pub mount_port: u16,
}

/// The longest a stop waits for relayed calls: service managers kill a
/// process that takes longer than their stop timeout (30 s in deploy/), and
/// the LOG must still be synced and closed after it.
const STOP_DRAIN: Duration = Duration::from_secs(10);

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
    /// True once the relay stops: sessions read no more calls and drain.
    pub stopping: watch::Receiver<bool>,
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
    stopping: watch::Sender<bool>,
    drain_timeout: Duration,
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
        let (stopping, stop_signal) = watch::channel(false);
        let shared = Arc::new(Shared {
            max_message: max_message_bytes(config.max_payload_bytes as usize),
            max_payload: config.max_payload_bytes,
            backend: config.backend,
            port,
            nas_xids: NasXids::new(),
            stats: stats.clone(),
            journal: config.journal,
            drain_timeout: config.drain_timeout,
            stopping: stop_signal,
        });
        runtime.spawn(accept(listener, shared));
        Ok(Server { runtime: Some(runtime), stopping, drain_timeout: config.drain_timeout, port, stats })
    }

    /// Stop accepting, let every session finish the calls it has relayed
    /// (their replies journaled and sent; a client's calls not yet read are
    /// never read), up to the drain timeout but at most `STOP_DRAIN`, then
    /// close every connection. A routine restart so leaves no gap; what is
    /// still unanswered then is one (marked before the LOG closes).
    pub fn stop(&mut self) {
        let Some(runtime) = self.runtime.take() else { return };
        let _ = self.stopping.send(true);
        let deadline = std::time::Instant::now() + self.drain_timeout.min(STOP_DRAIN);
        while self.stats.sessions_open.load(std::sync::atomic::Ordering::Relaxed) > 0
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        runtime.shutdown_timeout(Duration::from_secs(2));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut stopping = shared.stopping.clone();
    loop {
        let client = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|s| *s) => return,
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

/// The real relay on loopback, journaling into a real LOG, in front of a
/// tiny NAS that answers NULL and WRITE: a panic in one connection's task
/// (see `session::fault`) closes that connection only.
#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener as StdListener, TcpStream};
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    use crate::framing::{record_mark, RecordReader};
    use crate::hlc::{Hlc, HlcOptions};
    use crate::journal::Durability;
    use crate::log::{self, GroupCommitter, Log, LogOptions};
    use crate::routing::NFS_PROGRAM;
    use crate::rpc::{self, tests::call, Header};
    use crate::session::fault::{PANIC_ON_CALL, PANIC_ON_REPLY};

    const NULL: u32 = 0;
    const WRITE: u32 = 7;

    /// The NAS: NULL gets an empty success, WRITE a FILE_SYNC WRITE3resok.
    fn fake_nas() -> u16 {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut reader = RecordReader::new(1 << 20);
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = conn.read(&mut buf) {
                        reader.receive(&buf[..n]);
                        while let Ok(Some(message)) = reader.next_message() {
                            let Ok(Header::Call(c)) = rpc::parse(&message) else { return };
                            let mut out = Vec::new();
                            rpc::accepted(c.xid, 0, &mut out);
                            if c.proc_ == WRITE {
                                // NFS3_OK, no wcc attributes, count 5, FILE_SYNC, the verifier.
                                for v in [0u32, 0, 0, 5, 2] {
                                    out.extend_from_slice(&v.to_be_bytes());
                                }
                                out.extend_from_slice(b"verifier");
                            }
                            let mut framed = record_mark(out.len()).to_vec();
                            framed.extend_from_slice(&out);
                            if conn.write_all(&framed).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        port
    }

    fn write_args() -> Vec<u8> {
        let mut body = 4u32.to_be_bytes().to_vec();
        body.extend_from_slice(b"fh01");
        body.extend_from_slice(&0u64.to_be_bytes());
        for v in [5u32, 2, 5] {
            body.extend_from_slice(&v.to_be_bytes());
        }
        body.extend_from_slice(b"hello\0\0\0");
        body
    }

    struct Client(TcpStream);

    impl Client {
        fn connect(port: u16) -> Client {
            let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            Client(s)
        }

        /// Send one call; its reply, or None when the relay closed the connection.
        fn call(&mut self, xid: u32, proc_: u32) -> Option<Vec<u8>> {
            let body = if proc_ == WRITE { write_args() } else { Vec::new() };
            let message = call(xid, NFS_PROGRAM, 3, proc_, &body);
            let mut framed = record_mark(message.len()).to_vec();
            framed.extend_from_slice(&message);
            self.0.write_all(&framed).ok()?;
            let mut mark = [0u8; 4];
            self.0.read_exact(&mut mark).ok()?;
            let mut reply = vec![0u8; (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize];
            self.0.read_exact(&mut reply).ok()?;
            assert_eq!(reply[..4], xid.to_be_bytes(), "a reply to another call");
            Some(reply)
        }
    }

    fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let start = Instant::now();
        while !check() {
            assert!(start.elapsed() < Duration::from_secs(60), "never: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_panic_in_one_connection_closes_that_connection_only() {
        let dir = std::env::temp_dir().join(format!("nfsj-panic-isolation-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = Arc::new(Log::open(&dir, LogOptions::default()).unwrap());
        let committer =
            Arc::new(GroupCommitter::start(log.clone(), log::Durability::Async, Duration::from_millis(2)).unwrap());
        let hlc = Arc::new(Hlc::new(1, HlcOptions::default()).unwrap());
        let journal = Arc::new(Journal::new(committer.clone(), hlc, Durability::Sync, [0; 8]));
        let nas_port = fake_nas();
        let mut server = Server::start(Config {
            listen: "127.0.0.1:0".into(),
            backend: Backend { host: "127.0.0.1".into(), nfs_port: nas_port, mount_port: nas_port },
            threads: 2,
            max_payload_bytes: 1 << 20,
            journal: Some(journal.clone()),
            drain_timeout: Duration::from_secs(1),
        })
        .unwrap();
        let stats = server.stats.clone();

        let mut steady = Client::connect(server.port);
        assert!(steady.call(1, NULL).is_some());

        // A session task panics holding every lock the sessions share.
        assert_eq!(Client::connect(server.port).call(PANIC_ON_CALL, NULL), None);
        assert!(steady.call(2, WRITE).is_some(), "a connection open before the panic still relays");
        assert!(Client::connect(server.port).call(3, WRITE).is_some(), "a new connection relays");
        assert_eq!(journal.records_total.load(Ordering::Relaxed), 2);
        assert!(committer.synced_seq() >= 2, "both WRITEs are in the LOG (sync durability)");

        // A reply task panics with the NAS's reply taken and not yet journaled.
        assert_eq!(Client::connect(server.port).call(PANIC_ON_REPLY, WRITE), None);
        let gaps = journal.take_gaps();
        assert_eq!(gaps.len(), 1, "the WRITE whose reply task panicked is a gap, not silently lost");
        assert_eq!(gaps[0].cause, "no_reply");
        assert_eq!(journal.inflight.len(), 1, "only the gap's stamp is held (until it is marked)");
        journal.inflight.release(gaps[0].token);

        assert!(steady.call(4, WRITE).is_some(), "the steady connection still relays and journals");
        assert_eq!(journal.records_total.load(Ordering::Relaxed), 3);
        assert_eq!(journal.inflight.len(), 0, "no stamp is left in flight");
        eventually("both panics counted", || stats.session_panics_total.load(Ordering::Relaxed) == 2);
        eventually("the panicked sessions closed", || stats.sessions_open.load(Ordering::Relaxed) == 1);
        server.stop();
        committer.close().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
