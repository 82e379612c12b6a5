//! One connection to the NAS on behalf of one client session.
//!
//! Calls go out through the link's outbox under their NAS XIDs; its reply
//! task reads the NAS's replies, matches each to its call in the session's
//! `XidTable`, completes and journals what capture watches, and queues the
//! reply for the client under the client's XID: at once, or once its record
//! is durable. A NAS that breaks the protocol or closes the connection ends
//! the session: the client retries, as it would against the NAS itself.

use crate::poison::LockAnyway;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::framing::RecordReader;
use crate::capture::OpOf;
use crate::journal::{Entry, Journal};
use crate::limits::clamp_fsinfo;
use crate::nfs3::proc3;
use crate::outbox::{self, Outgoing, QUEUE_MESSAGES};
use crate::record::Record;
use crate::routing::Route;
use crate::rpc::{self, Header, ReplyHeader};
use crate::server::Shared;
use crate::session::{release, send_released, Ending};
use crate::stats::{add, bump, Stats};
use crate::xid::{Call, XidTable};

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
            eprintln!("nfsj data plane: NAS {route:?} connection ended ({why}); closing its client");
        }
    });
    Ok((tx, [writer, replies]))
}

/// A reply for the client, and the LOG seq it waits for (None: it goes now).
struct Answer {
    out: Outgoing,
    /// Its records, appended with the others read with it: their index in the batch.
    entry: Option<usize>,
    after_seq: Option<u64>,
    proc_key: (u32, u32),
    arrival: std::time::Instant,
}

/// Relay the NAS's replies until it closes or breaks the protocol (Err says
/// why). A client that is gone gets nothing, but its replies are still journaled.
///
/// The records of every reply one read brings are appended with one LOG
/// write, before any of those replies is queued for the client.
async fn relay_replies(
    shared: &Shared,
    mut rd: OwnedReadHalf,
    table: &Mutex<XidTable>,
    to_client: &mpsc::Sender<Outgoing>,
) -> Result<(), String> {
    let mut reader = RecordReader::new(shared.max_message);
    let mut answers: Vec<Answer> = Vec::new();
    let mut unappended = Unappended { journal: shared.journal.as_deref(), entries: Vec::new() };
    let batch = &mut unappended.entries;
    loop {
        match rd.read_buf(reader.read_buffer()).await {
            Ok(0) => return Err("closed by the NAS".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        let mut broken = None;
        loop {
            match reader.next_message().map_err(|e| e.to_string()).and_then(|m| match m {
                Some(message) => answer(shared, table, message, batch).map(Some),
                None => Ok(None),
            }) {
                Ok(Some(Some(answer))) => answers.push(answer),
                Ok(Some(None)) => {}
                Ok(None) => break,
                Err(why) => {
                    broken = Some(why);
                    break;
                }
            }
        }
        if let Some(journal) = &shared.journal {
            journal_batch(journal, batch, &mut answers)?;
        }
        for answer in answers.drain(..) {
            match (answer.after_seq, &shared.journal) {
                (Some(seq), Some(journal)) => reply_when_durable(journal, seq, answer, to_client.clone(), shared.stats.clone()),
                _ => {
                    client_latency(&shared.stats, &answer);
                    let _ = to_client.send(answer.out).await;
                }
            }
        }
        if let Some(why) = broken {
            return Err(why);
        }
    }
}

/// Records completed from replies and not yet in the LOG. Should the reply
/// task panic before they are appended, dropping this makes each a gap and
/// releases its stamps, as `Answering` does for the call being answered.
struct Unappended<'a> {
    journal: Option<&'a Journal>,
    entries: Vec<Entry>,
}

impl Drop for Unappended<'_> {
    fn drop(&mut self) {
        let Some(journal) = self.journal else { return };
        if !std::thread::panicking() {
            return;
        }
        for entry in self.entries.drain(..) {
            journal.lost(entry.token, &entry.records[0].0, "?");
            for (t, held) in journal.release_conflicts(entry.token) {
                send_released(journal, t, held);
            }
        }
    }
}

/// Append the records gathered in `batch` with one LOG write; then their
/// stamps leave the in-flight set and each answer learns the seq it waits for.
fn journal_batch(journal: &Journal, batch: &mut Vec<Entry>, answers: &mut [Answer]) -> Result<(), String> {
    if batch.is_empty() {
        return Ok(());
    }
    let seqs = match journal.append_batch(batch) {
        Ok(seqs) => seqs,
        Err(e) => {
            // The NAS applied them and the LOG has no record of them: gaps; the
            // client gets no reply (its connection closes) and retries.
            for entry in batch.drain(..) {
                journal.write_failed(entry.token, &entry.records[0].0, &e);
            }
            return Err(format!("journaling failed ({e})"));
        }
    };
    for entry in batch.iter() {
        journal.note_moves(&entry.records);
        journal.inflight.release(entry.token); // in the LOG now
    }
    for answer in answers.iter_mut() {
        if let Some(i) = answer.entry.take() {
            if batch[i].waits {
                answer.after_seq = Some(seqs[i]);
            }
        }
    }
    batch.clear();
    Ok(())
}

/// Send `out` once the LOG is durable through `seq`; if the LOG fails, the
/// client gets no reply and its connection is closed (it retries).
fn reply_when_durable(journal: &Journal, seq: u64, answer: Answer, to_client: mpsc::Sender<Outgoing>, stats: Arc<Stats>) {
    let mut synced = journal.committer.subscribe();
    tokio::spawn(async move {
        let state = synced.wait_for(|s| s.synced_seq >= seq || s.failed).await.map(|s| *s);
        match state {
            Ok(s) if !s.failed || s.synced_seq >= seq => {
                client_latency(&stats, &answer);
                let _ = to_client.send(answer.out).await;
            }
            _ => eprintln!("nfsj data plane: the LOG failed; a client gets no reply and is closed"),
        }
        // Dropping `to_client` on failure alone does not close the client; the
        // session ends when the LOG's failure fails its next append.
    });
}

/// Call arrival to reply sent to the client.
fn client_latency(stats: &Stats, answer: &Answer) {
    let seconds = answer.arrival.elapsed().as_secs_f64();
    stats.by_proc.with(answer.proc_key, |s| s.client_latency.observe(seconds));
}

/// The client's copy of one NAS reply, or None when it answers no call of
/// ours; the records it completes join `batch`.
fn answer(shared: &Shared, table: &Mutex<XidTable>, message: Bytes, batch: &mut Vec<Entry>) -> Result<Option<Answer>, String> {
    let reply = match rpc::parse(&message).map_err(|e| e.to_string())? {
        Header::Reply(reply) => reply,
        Header::Call(_) => return Err("the NAS sent a CALL".into()),
    };
    let Some(mut call) = table.lock_anyway().take(reply.xid) else {
        // Every call has its own NAS XID: this reply answers nothing we sent.
        bump(&shared.stats.unmatched_replies_total);
        return Ok(None);
    };
    bump(&shared.stats.replies_total);
    add(&shared.stats.reply_bytes_total, message.len() as u64);
    let waited = call.arrival.elapsed().as_secs_f64();
    shared.stats.by_proc.with(call.proc_key, |s| {
        s.reply_bytes += message.len() as u64;
        s.backend_latency.observe(waited);
    });
    let (message, entry) = match (&shared.journal, call.pending.take()) {
        (Some(journal), Some(pending)) => {
            let mut answering = Answering { journal, token: call.token, record: pending.record().cloned(), done: false };
            journal_reply(&mut answering, &call, pending, &reply, message, batch)?
        }
        _ => (message, None),
    };
    let message = if call.clamp_fsinfo && reply.success {
        let mut copy = message.to_vec();
        clamp_fsinfo(&mut copy, reply.body, shared.max_payload).map_err(|e| e.to_string())?;
        Bytes::from(copy)
    } else {
        message
    };
    Ok(Some(Answer {
        out: Outgoing::with_xid(&message, call.client_xid),
        entry,
        // Written ahead: the reply waits for its intent, not its record.
        after_seq: call.intent_seq,
        proc_key: call.proc_key,
        arrival: call.arrival,
    }))
}

/// A watched call taken out of its session's table for its reply, until its
/// records are in the LOG. Out of the table, the session's own cleanup no
/// longer sees it: should this reply task panic first, dropping this makes
/// its mutation a gap (the outcome is unknown, as when no reply comes) and
/// releases its stamps and the calls held behind it, so that no stamp stays
/// in flight forever under the stable stamp.
struct Answering<'a> {
    journal: &'a Journal,
    token: u64,
    /// The mutation's record as the call made it (None: LOOKUP, READDIRPLUS).
    record: Option<Record>,
    /// Journaled, or settled by an error path of its own.
    done: bool,
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        if self.done || !std::thread::panicking() {
            return;
        }
        match &self.record {
            Some(record) => {
                self.journal.lost(self.token, record, "?");
                for (t, held) in self.journal.release_conflicts(self.token) {
                    send_released(self.journal, t, held);
                }
            }
            None => release(self.journal, self.token),
        }
    }
}

/// Complete a watched call's records and add them to `batch`; the reply to
/// send (its verifier rewritten where durability says) and its entry's index.
fn journal_reply(
    answering: &mut Answering,
    call: &Call,
    pending: crate::capture::Pending,
    reply: &ReplyHeader,
    message: Bytes,
    batch: &mut Vec<Entry>,
) -> Result<(Bytes, Option<usize>), String> {
    let (journal, token) = (answering.journal, answering.token);
    // The NAS applied it: calls held behind it may go (stamped now, after it).
    for (t, held) in journal.release_conflicts(token) {
        send_released(journal, t, held);
    }
    let mut bind_stamp = || journal.stamp(token).map(|s| s.to_vec()).unwrap_or_default();
    let records = match journal.capture.complete(pending, reply, &message, &mut bind_stamp) {
        Ok(records) => records,
        Err(e) => {
            // Its outcome is unknown: a gap (the stamp stays held until Python marks it).
            answering.done = true;
            if let Some(record) = &answering.record {
                journal.lost(token, record, "?");
            }
            return Err(format!("an undecodable reply ({})", e.0));
        }
    };
    if records.is_empty() {
        answering.done = true;
        release(journal, token);
        return Ok((message, None));
    }
    if journal.drop_over_quota(token, &records) {
        answering.done = true;
        return Ok((message, None)); // its stamp stays held until Python marks the gap
    }
    #[cfg(test)]
    crate::session::fault::on_reply(call.client_xid);
    // Written ahead, the record's fsync need not be hurried: the reply waits for the intent's.
    let waits = call.intent_seq.is_none() && journal.waits(&records);
    let record = &records[0].0;
    let message = if journal.rewrites_verifier() && record.ok && matches!(record.op3(), proc3::WRITE | proc3::COMMIT) {
        let mut copy = message.to_vec();
        let at = copy.len() - 8; // WRITE3resok and COMMIT3resok end with the verifier
        journal.verifier(&mut copy[at..]);
        Bytes::from(copy)
    } else {
        message
    };
    batch.push(Entry { token, records, call: call.message.clone(), waits });
    answering.done = true; // `Unappended` answers for it now
    Ok((message, Some(batch.len() - 1)))
}
