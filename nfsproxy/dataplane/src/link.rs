//! One connection to the NAS on behalf of one client session.
//!
//! Calls go out through the link's outbox under their NAS XIDs; its reply
//! task reads the NAS's replies, matches each to its call in the session's
//! `XidTable`, and queues it for the client under the client's XID.
//! A NAS that breaks the protocol or closes the connection ends the session:
//! the client retries, as it would against the NAS itself.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::framing::RecordReader;
use crate::limits::clamp_fsinfo;
use crate::outbox::{self, Outgoing, QUEUE_MESSAGES};
use crate::routing::Route;
use crate::rpc::{self, Header};
use crate::server::Shared;
use crate::session::Ending;
use crate::stats::{add, bump};
use crate::xid::XidTable;

/// Open a link to the NAS for `route`; its outbox is the returned queue.
pub async fn open(
    shared: &Arc<Shared>,
    route: Route,
    table: Arc<Mutex<XidTable>>,
    to_client: mpsc::Sender<Outgoing>,
    ending: &Ending,
) -> std::io::Result<(mpsc::Sender<Outgoing>, [tokio::task::JoinHandle<()>; 2])> {
    let port = if route == Route::Mount { shared.backend.mount_port } else { shared.backend.nfs_port };
    let stream = TcpStream::connect((shared.backend.host.as_str(), port)).await?;
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(QUEUE_MESSAGES);
    let guard = ending.guard();
    let writer = tokio::spawn(async move {
        let _end = guard;
        let _ = outbox::drain(rx, wr).await;
    });
    let guard = ending.guard();
    let shared = shared.clone();
    let replies = tokio::spawn(async move {
        let _end = guard;
        if let Err(why) = relay_replies(&shared, rd, &table, &to_client).await {
            bump(&shared.stats.backend_failures_total);
            log::warn(&format!("NAS {route:?} connection ended ({why}); closing its client"));
        }
    });
    Ok((tx, [writer, replies]))
}

/// Relay the NAS's replies until it closes or breaks the protocol (Err says why),
/// or the client is gone (Ok).
async fn relay_replies(
    shared: &Shared,
    mut rd: OwnedReadHalf,
    table: &Mutex<XidTable>,
    to_client: &mpsc::Sender<Outgoing>,
) -> Result<(), String> {
    let mut reader = RecordReader::new(shared.max_message);
    loop {
        let buf = reader.buffer();
        if buf.capacity() - buf.len() < 16 << 10 {
            buf.reserve(64 << 10);
        }
        match rd.read_buf(reader.buffer()).await {
            Ok(0) => return Err("closed by the NAS".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        while let Some(message) = reader.next_message().map_err(|e| e.to_string())? {
            let Some(out) = answer(shared, table, message)? else { continue };
            if to_client.send(out).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// The client's copy of one NAS reply, or None when it answers no call of ours.
fn answer(shared: &Shared, table: &Mutex<XidTable>, message: Bytes) -> Result<Option<Outgoing>, String> {
    let reply = match rpc::parse(&message).map_err(|e| e.to_string())? {
        Header::Reply(reply) => reply,
        Header::Call(_) => return Err("the NAS sent a CALL".into()),
    };
    let Some(call) = table.lock().unwrap().take(reply.xid) else {
        // Every call has its own NAS XID: this reply answers nothing we sent.
        bump(&shared.stats.unmatched_replies_total);
        return Ok(None);
    };
    bump(&shared.stats.replies_total);
    add(&shared.stats.reply_bytes_total, message.len() as u64);
    let message = if call.clamp_fsinfo && reply.success {
        let mut copy = message.to_vec();
        clamp_fsinfo(&mut copy, reply.body, shared.max_payload).map_err(|e| e.to_string())?;
        Bytes::from(copy)
    } else {
        message
    };
    Ok(Some(Outgoing::with_xid(&message, call.client_xid)))
}

mod log {
    /// The data plane logs to stderr, as the Python daemon's logging does.
    pub fn warn(text: &str) {
        eprintln!("nfsj data plane: {text}");
    }
}
