//! One client connection: reads its calls, routes them, relays them to the NAS.
//!
//! The session task reads and frames the client's calls. Portmapper calls and
//! refusals are answered here; the rest enter the session's `XidTable` and go
//! to the NAS link for their route (opened on first use). With a journal, a
//! watched call is decoded by capture when it arrives (bad arguments close
//! the client: nothing of it is journaled), and a mutation is stamped, or
//! held behind a conflicting one, before it is sent. Replies come back
//! through each link's reply task (`link`).
//!
//! Every task of the session holds an `EndOnDrop`, so when any of them ends
//! (or panics), the session ends. Mutations already relayed still run on the
//! NAS, so the links stay open until their replies are journaled or the
//! drain timeout passes; what is still unanswered then becomes a gap. Held
//! calls never reached the NAS and are dropped (the client retries them).
//! A stopping relay ends every session the same way, but its clients stay
//! connected for the replies of what was relayed.
//! One client's garbage, or a bug hit by one connection, closes that one only.

use crate::poison::LockAnyway;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::{AbortHandle, JoinHandle};

use crate::capture::Pending;
use crate::conflict::Claims;
use crate::framing::RecordReader;
use crate::journal::{Held, Journal};
use crate::link;
use crate::nfs3::proc3;
use crate::outbox::{self, Outgoing, QUEUE_MESSAGES};
use crate::routing::{self, Route, NFS_PROGRAM};
use crate::rpc::{self, Header, RPCSEC_GSS};
use crate::server::Shared;
use crate::stats::{add, bump, drop_one};
use crate::xid::{Admission, Admitted, XidTable};

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
    peer: Arc<str>,
    table: Arc<Mutex<XidTable>>,
    to_client: mpsc::Sender<Outgoing>,
    links: HashMap<Route, mpsc::Sender<Outgoing>>,
    writer: JoinHandle<()>,
    /// The NAS links' tasks, watched for panics (`watched`).
    link_tasks: Vec<AbortHandle>,
    ending: Ending,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.writer.abort();
        for task in &self.link_tasks {
            task.abort();
        }
        self.abandon();
        drop_one(&self.shared.stats.sessions_open);
    }
}

/// Serve one client until it leaves, breaks the protocol, or its NAS link ends.
pub async fn serve(shared: Arc<Shared>, client: TcpStream) {
    bump(&shared.stats.sessions_total);
    bump(&shared.stats.sessions_open);
    let _ = client.set_nodelay(true);
    let peer: Arc<str> = client.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into()).into();
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
        peer: peer.clone(),
        to_client,
        links: HashMap::new(),
        writer,
        link_tasks: Vec::new(),
        ending,
    };
    let mut reader = RecordReader::new(session.shared.max_message);
    let end = session.run(&mut rd, &mut reader).await;
    if let End::Closed(Some(why)) = &end {
        eprintln!("nfsj data plane: closing client {peer}: {why}");
    }
    drop(rd);
    session.drain(end == End::Stopping).await;
}

/// Why a session stops reading calls.
#[derive(Debug, PartialEq)]
enum End {
    Closed(Closed),
    /// The relay stops: the client is still there for the replies in flight.
    Stopping,
}

impl Session {
    async fn run(&mut self, rd: &mut tokio::net::tcp::OwnedReadHalf, reader: &mut RecordReader) -> End {
        let ending = self.ending.0.clone();
        // One registration for the whole session, not one per read.
        let ended = ending.notified();
        tokio::pin!(ended);
        let mut stopping = self.shared.stopping.clone();
        loop {
            tokio::select! {
                read = rd.read_buf(reader.read_buffer()) => match read {
                    Ok(0) => return End::Closed(None),
                    Ok(_) => {}
                    Err(e) => return End::Closed(Some(e.to_string())),
                },
                _ = &mut ended => return End::Closed(None),
                _ = stopping.wait_for(|s| *s) => return End::Stopping,
            }
            loop {
                match reader.next_message() {
                    Ok(Some(message)) => {
                        if let Err(closed) = self.on_call(message).await {
                            return End::Closed(closed);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return End::Closed(Some(self.protocol_error(e.to_string()))),
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
        #[cfg(test)]
        fault::on_call(&self.shared, &self.table, call.xid);
        bump(&self.shared.stats.calls_total);
        add(&self.shared.stats.call_bytes_total, message.len() as u64);
        self.shared.stats.by_proc.with((call.prog, call.proc_), |s| {
            s.calls += 1;
            s.call_bytes += message.len() as u64;
        });
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
        let journal = self.shared.journal.clone();
        let pending = match &journal {
            Some(j) => j.capture.begin(call, &message, &self.peer).map_err(|e| Some(self.protocol_error(e.0)))?,
            None => None,
        };
        let mutation = pending.as_ref().is_some_and(|p| p.record().is_some());
        let token = match (&journal, &pending) {
            (Some(j), Some(_)) => j.token(),
            _ => 0,
        };
        let how = Admission {
            route,
            clamp_fsinfo: call.prog == NFS_PROGRAM && call.proc_ == proc3::FSINFO,
            keep_xid: call.cred_flavor == RPCSEC_GSS,
            pending,
            token,
            proc_key: (call.prog, call.proc_),
        };
        let admitted = self.table.lock_anyway().admit(call.xid, message.clone(), how);
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
        let out = Outgoing::with_xid(&message, nas_xid);
        if let (Some(j), true) = (&journal, mutation) {
            let claims = {
                let table = self.table.lock_anyway();
                let record = table.get(nas_xid).and_then(|c| c.pending.as_ref()).and_then(|p| p.record());
                let bindings = j.capture.bindings.lock_anyway();
                record.map(|r| Claims::of(r, Some(&bindings))).unwrap_or_default()
            };
            if !j.conflicts.lock_anyway().admit(token, claims) {
                // Stamped when released: after the NAS applied the earlier call.
                bump(&self.shared.stats.conflict_holds_total);
                j.hold_back(token, Held { table: self.table.clone(), nas_xid, link, out });
                return Ok(());
            }
            // Block policy: nothing reaches the NAS unjournaled; later calls of
            // this client wait behind this one (the session reads no further).
            j.wait_under_quota().await;
            stamp_for_sending(j, &self.table, nas_xid, token).map_err(Some)?;
        } else if let Some(c) = self.table.lock_anyway().get_mut(nas_xid) {
            c.sent = true;
        }
        link.send(out).await.map_err(|_| None)
    }

    async fn link(&mut self, route: Route) -> Result<mpsc::Sender<Outgoing>, Closed> {
        if let Some(link) = self.links.get(&route) {
            return Ok(link.clone());
        }
        let opened = link::open(&self.shared, route, self.table.clone(), self.to_client.clone(), &self.ending).await;
        match opened {
            Ok((link, tasks)) => {
                self.link_tasks.extend(tasks.into_iter().map(|t| watched(&self.shared, t)));
                self.links.insert(route, link.clone());
                Ok(link)
            }
            Err(e) => {
                bump(&self.shared.stats.backend_failures_total);
                Err(Some(format!("cannot reach the NAS for {route:?} ({e})")))
            }
        }
    }

    /// The client is gone, or the relay stops: give relayed mutations until
    /// the drain timeout to be answered and journaled. A client that is
    /// still there (`stopping`) gets their replies meanwhile.
    async fn drain(&mut self, stopping: bool) {
        if !stopping {
            self.writer.abort();
        }
        self.drop_unsent();
        let deadline = Instant::now() + self.shared.drain_timeout;
        while self.mutations_in_flight() && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for task in &self.link_tasks {
            task.abort();
        }
        if stopping {
            self.flush_replies(deadline).await;
        }
    }

    /// Let the client writer send what is queued, and the replies still
    /// waiting for their fsync, then close the connection: once every
    /// sender is gone the writer drains its queue and ends.
    async fn flush_replies(&mut self, deadline: Instant) {
        drop(std::mem::replace(&mut self.to_client, mpsc::channel(1).0));
        let left = deadline.saturating_duration_since(Instant::now()).max(std::time::Duration::from_secs(1));
        let _ = tokio::time::timeout(left, &mut self.writer).await;
    }

    /// True while a relayed mutation may still get its reply (a link is up).
    fn mutations_in_flight(&self) -> bool {
        if self.link_tasks.iter().all(|t| t.is_finished()) {
            return false;
        }
        let table = self.table.lock_anyway();
        table.nas_xids().into_iter().any(|x| {
            table.get(x).is_some_and(|c| c.sent && c.pending.as_ref().is_some_and(|p| p.record().is_some()))
        })
    }

    /// Held calls never reached the NAS: nothing to wait for; the client retries them.
    fn drop_unsent(&self) {
        let Some(journal) = &self.shared.journal else { return };
        let unsent: Vec<u64> = {
            let mut table = self.table.lock_anyway();
            let xids: Vec<u32> = table.nas_xids().into_iter().filter(|&x| !table.get(x).unwrap().sent).collect();
            xids.into_iter().filter_map(|x| table.take(x)).map(|c| c.token).collect()
        };
        for token in unsent {
            release(journal, token);
        }
    }

    /// Forget every call: what was relayed and never answered is a gap.
    fn abandon(&self) {
        let calls = self.table.lock_anyway().clear();
        let Some(journal) = &self.shared.journal else { return };
        let mut lost = 0;
        for call in calls {
            match call.pending.as_ref().and_then(|p| p.record()) {
                Some(record) if call.sent => {
                    journal.lost(call.token, record, &self.peer);
                    lost += 1;
                    for (t, held) in journal.release_conflicts(call.token) {
                        send_released(journal, t, held);
                    }
                }
                _ => release(journal, call.token),
            }
        }
        if lost > 0 {
            eprintln!(
                "nfsj data plane: client {}: {lost} relayed mutation(s) got no NAS reply; their outcome is \
                 unknown and they are not journaled: marking a gap",
                self.peer
            );
        }
    }
}

/// `task`'s abort handle; a panic in it is counted as the session's (it
/// ends the session through its `EndOnDrop`, as any end of a task does).
fn watched(shared: &Shared, task: JoinHandle<()>) -> AbortHandle {
    let abort = task.abort_handle();
    let stats = shared.stats.clone();
    tokio::spawn(async move {
        if matches!(task.await, Err(e) if e.is_panic()) {
            bump(&stats.session_panics_total);
            eprintln!("nfsj data plane: a NAS link task panicked; its client's connection is closed");
        }
    });
    abort
}

/// Stamp a mutation about to be sent (its stamp held in flight), write its
/// intent ahead where durability says, and mark it sent.
fn stamp_for_sending(journal: &Journal, table: &Mutex<XidTable>, nas_xid: u32, token: u64) -> Result<(), String> {
    let stamp = journal.stamp(token).map_err(|e| format!("the clock failed ({e})"))?;
    let mut table = table.lock_anyway();
    let Some(call) = table.get_mut(nas_xid) else { return Ok(()) };
    if let Some(Pending::Mutation { record, data, .. }) = &mut call.pending {
        record.stamp = stamp.to_vec();
        let data = data.clone().map_or(&[][..], |d| &call.message[d]);
        if journal.writes_ahead(record, data.len()) {
            let seq = journal.append_intent(token, record, data).map_err(|e| format!("journaling failed ({e})"))?;
            call.intent_seq = Some(seq);
        }
    }
    call.sent = true;
    Ok(())
}

/// A call leaves without a record: its stamp and the calls held behind it go.
pub fn release(journal: &Journal, token: u64) {
    journal.intents.forget(token);
    journal.inflight.release(token);
    for (t, held) in journal.release_conflicts(token) {
        send_released(journal, t, held);
    }
}

/// Send a held mutation whose earlier conflicting calls are all answered,
/// stamped now. One whose session is gone was dropped with it.
pub fn send_released(journal: &Journal, token: u64, held: Held) {
    if held.table.lock_anyway().get(held.nas_xid).is_none() {
        release(journal, token);
        return;
    }
    if stamp_for_sending(journal, &held.table, held.nas_xid, token).is_err() {
        release(journal, token);
        return;
    }
    let Held { link, out, .. } = held;
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = link.send(out).await;
        });
    }
}

/// Test-only faults, keyed by client XID: a bug hit by one connection,
/// in its session task (while holding every lock the sessions share, so
/// they are left poisoned) or in its NAS link's reply task (after capture
/// completed the call, before its records are in the LOG).
#[cfg(test)]
pub(crate) mod fault {
    use super::*;

    pub const PANIC_ON_CALL: u32 = 0xFA17_0001;
    pub const PANIC_ON_REPLY: u32 = 0xFA17_0002;

    pub fn on_call(shared: &Shared, table: &Mutex<XidTable>, xid: u32) {
        if xid != PANIC_ON_CALL {
            return;
        }
        let _table = table.lock_anyway();
        match &shared.journal {
            Some(journal) => journal.with_every_lock(|| panic!("fault injected into a session task")),
            None => panic!("fault injected into a session task"),
        }
    }

    pub fn on_reply(client_xid: u32) {
        assert_ne!(client_xid, PANIC_ON_REPLY, "fault injected into a reply task");
    }
}
