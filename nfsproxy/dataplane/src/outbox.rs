//! Outgoing RPC messages, coalesced: the writing half of every connection.
//!
//! Each connection's writes go through one task fed by a bounded queue.
//! Messages queued while the task wrote the last batch leave in the next one
//! (one send() for a burst of pipelined calls). A large message is not copied
//! into the batch: it leaves by a vectored write straight from its buffer.
//! The bound is the flow control: when a peer stops reading, its queue fills
//! and whoever feeds it stops reading from the other side.

use std::io::{self, IoSlice};

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::framing::record_mark;

/// Messages a connection may have queued before its feeder waits.
pub const QUEUE_MESSAGES: usize = 256;
const COALESCE_BYTES: usize = 256 << 10;
const COPY_BELOW_BYTES: usize = 16 << 10;

/// One RPC message on its way out: the record mark and XID, then the rest.
#[derive(Debug)]
pub struct Outgoing {
    head: [u8; 8],
    rest: Bytes,
}

impl Outgoing {
    /// `message` framed as one fragment, its XID replaced by `xid`.
    pub fn with_xid(message: &Bytes, xid: u32) -> Self {
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&record_mark(message.len()));
        head[4..].copy_from_slice(&xid.to_be_bytes());
        Outgoing { head, rest: message.slice(4..) }
    }

    /// A message the relay made itself, XID and all.
    pub fn whole(message: Vec<u8>) -> Self {
        let message = Bytes::from(message);
        let xid = u32::from_be_bytes(message[..4].try_into().unwrap());
        Outgoing::with_xid(&message, xid)
    }
}

/// Write everything queued on `rx` to `w` until the queue closes or `w` fails.
pub async fn drain<W: AsyncWrite + Unpin>(mut rx: mpsc::Receiver<Outgoing>, mut w: W) -> io::Result<()> {
    let mut batch: Vec<u8> = Vec::with_capacity(64 << 10);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(out) = next {
            batch.extend_from_slice(&out.head);
            if out.rest.len() < COPY_BELOW_BYTES {
                batch.extend_from_slice(&out.rest);
            } else {
                write_both(&mut w, &batch, &out.rest).await?;
                batch.clear();
            }
            if batch.len() >= COALESCE_BYTES {
                w.write_all(&batch).await?;
                batch.clear();
            }
            next = rx.try_recv().ok();
        }
        if !batch.is_empty() {
            w.write_all(&batch).await?;
            batch.clear();
        }
    }
    w.shutdown().await
}

async fn write_both<W: AsyncWrite + Unpin>(w: &mut W, mut a: &[u8], mut b: &[u8]) -> io::Result<()> {
    while !a.is_empty() {
        let n = w.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    w.write_all(b).await
}
