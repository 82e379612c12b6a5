//! One client connection: reads its calls, routes them, relays them to the NAS.
//!
//! The session task reads and frames the client's calls. Portmapper calls and
//! refusals are answered here; the rest enter the session's `XidTable` and go
//! to the NAS link for their route (opened on first use). Replies come back
//! through each link's reply task. Every task of the session holds an
//! `EndOnDrop`, so when any of them ends (or panics), the session ends, and
//! dropping the session aborts the others and closes its sockets: one
//! client's garbage, or a bug hit by one connection, closes that one only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::framing::RecordReader;
use crate::outbox::{self, Outgoing, QUEUE_MESSAGES};
use crate::routing::{self, Route, NFS_PROGRAM};
use crate::rpc::{self, Header, RPCSEC_GSS};
use crate::server::Shared;
use crate::stats::{add, bump, drop_one};
use crate::xid::{Admitted, XidTable};
use crate::link;

const NFSPROC3_FSINFO: u32 = 19;

/// Wakes the session when any of its tasks ends.
#[derive(Clone, Default)]
pub struct Ending(Arc<Notify>);

impl Ending {
    pub fn guard(&self) -> EndOnDrop {
        EndOnDrop(self.0.clone())
    }
}

/// Held by a session's task; dropped (returned or unwound), it ends the session.
pub struct EndOnDrop(Arc<Notify>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// Why a session ended, for the log; None is an orderly end.
type Closed = Option<String>;

struct Session {
    shared: Arc<Shared>,
    table: Arc<Mutex<XidTable>>,
    to_client: mpsc::Sender<Outgoing>,
    links: HashMap<Route, mpsc::Sender<Outgoing>>,
    tasks: Vec<JoinHandle<()>>,
    ending: Ending,
}

impl Drop for Session {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        drop_one(&self.shared.stats.sessions_open);
    }
}

/// Serve one client until it leaves, breaks the protocol, or its NAS link ends.
pub async fn serve(shared: Arc<Shared>, client: TcpStream) {
    bump(&shared.stats.sessions_total);
    bump(&shared.stats.sessions_open);
    let _ = client.set_nodelay(true);
    let peer = client.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    let (mut rd, wr) = client.into_split();
    let (to_client, rx) = mpsc::channel(QUEUE_MESSAGES);
    let ending = Ending::default();
    let guard = ending.guard();
    let writer = tokio::spawn(async move {
        let _end = guard;
        let _ = outbox::drain(rx, wr).await;
    });
    let mut session = Session {
        table: Arc::new(Mutex::new(XidTable::new(shared.nas_xids.clone()))),
        shared,
        to_client,
        links: HashMap::new(),
        tasks: vec![writer],
        ending,
    };
    let mut reader = RecordReader::new(session.shared.max_message);
    if let Some(why) = session.run(&mut rd, &mut reader).await {
        eprintln!("nfsj data plane: closing client {peer}: {why}");
    }
}

impl Session {
    async fn run(&mut self, rd: &mut tokio::net::tcp::OwnedReadHalf, reader: &mut RecordReader) -> Closed {
        let ending = self.ending.0.clone();
        loop {
            let buf = reader.buffer();
            if buf.capacity() - buf.len() < 16 << 10 {
                buf.reserve(64 << 10);
            }
            tokio::select! {
                read = rd.read_buf(reader.buffer()) => match read {
                    Ok(0) => return None,
                    Ok(_) => {}
                    Err(e) => return Some(e.to_string()),
                },
                _ = ending.notified() => return None,
            }
            loop {
                match reader.next_message() {
                    Ok(Some(message)) => {
                        if let Err(closed) = self.on_call(message).await {
                            return closed;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Some(self.protocol_error(e.to_string())),
                }
            }
        }
    }

    fn protocol_error(&self, why: String) -> String {
        bump(&self.shared.stats.protocol_errors_total);
        format!("it broke the RPC protocol ({why})")
    }

    /// Handle one call; Err(Some(why)) ends the session.
    async fn on_call(&mut self, message: Bytes) -> Result<(), Closed> {
        let call = match rpc::parse(&message) {
            Ok(Header::Call(call)) => call,
            Ok(Header::Reply(_)) => return Err(Some(self.protocol_error("a client sent a REPLY".into()))),
            Err(e) => return Err(Some(self.protocol_error(e.to_string()))),
        };
        bump(&self.shared.stats.calls_total);
        add(&self.shared.stats.call_bytes_total, message.len() as u64);
        let route = routing::route(&call);
        let out = match route {
            Route::Reject => Outgoing::whole(routing::reject(&call)),
            Route::Portmap => match routing::answer_portmap(&call, &message[call.body..], self.shared.port) {
                Ok(answer) => Outgoing::whole(answer),
                Err(e) => return Err(Some(self.protocol_error(e.to_string()))),
            },
            Route::Nfs | Route::Mount => return self.relay(route, &call, message).await,
        };
        self.to_client.send(out).await.map_err(|_| None)
    }

    async fn relay(&mut self, route: Route, call: &rpc::CallHeader, message: Bytes) -> Result<(), Closed> {
        let clamp = call.prog == NFS_PROGRAM && call.proc_ == NFSPROC3_FSINFO;
        let keep_xid = call.cred_flavor == RPCSEC_GSS;
        let admitted = self.table.lock().unwrap().admit(call.xid, message.clone(), route, clamp, keep_xid);
        let nas_xid = match admitted {
            Ok(Admitted::New(nas_xid)) => nas_xid,
            Ok(Admitted::Retransmission) => {
                bump(&self.shared.stats.retransmissions_absorbed_total);
                return Ok(());
            }
            Err(in_use) => {
                let why = format!("XID {:#010x} is still in flight with another call", in_use.0);
                return Err(Some(self.protocol_error(why)));
            }
        };
        let link = self.link(route).await?;
        link.send(Outgoing::with_xid(&message, nas_xid)).await.map_err(|_| None)
    }

    async fn link(&mut self, route: Route) -> Result<mpsc::Sender<Outgoing>, Closed> {
        if let Some(link) = self.links.get(&route) {
            return Ok(link.clone());
        }
        match link::open(&self.shared, route, self.table.clone(), self.to_client.clone(), &self.ending).await {
            Ok((link, tasks)) => {
                self.tasks.extend(tasks);
                self.links.insert(route, link.clone());
                Ok(link)
            }
            Err(e) => {
                bump(&self.shared.stats.backend_failures_total);
                Err(Some(format!("cannot reach the NAS for {route:?} ({e})")))
            }
        }
    }
}
