//! RPC record marking over TCP (RFC 5531 section 11), sans-IO.
//!
//! `RecordReader` takes arbitrary chunks of a byte stream and gives back whole
//! RPC messages. A message larger than the limit is refused from its first
//! fragment header, before anything is buffered for it, so a hostile length
//! cannot make the relay allocate.
//!
//! Large messages are read into buffers that are used again once every part
//! of the messages read into them has been dropped (the relay and the LOG
//! hold slices of a message until they are done with it). A fresh megabyte
//! per 1 MiB WRITE cost the relay a page fault per 4 KiB on its way in and
//! an munmap or madvise on its way out: a sixth of its CPU per GiB on the
//! 2-core test VM.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

/// Set in a fragment header when the fragment ends its message.
pub const LAST_FRAGMENT: u32 = 0x8000_0000;

/// The peer broke record marking: close its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    TooLarge { at_least: usize, max: usize },
    EmptyFragment,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { at_least, max } => {
                write!(f, "RPC message of at least {at_least} bytes exceeds the maximum of {max}")
            }
            FrameError::EmptyFragment => write!(f, "empty non-final RPC fragment"),
        }
    }
}

/// A message at least this large gets a buffer that is used again (below
/// it, the allocator's own free lists do the same).
pub const LARGE_MESSAGE: usize = 128 << 10;
/// What a read asks room for beyond the message it is reading, so the next
/// message's header and first bytes land in the same buffer.
const READ_AHEAD: usize = 64 << 10;
/// At most this many bytes of emptied buffers are kept per reader (a
/// connection): 16 WRITEs of 1 MiB in flight and the one being read.
const SPARE_BYTES: usize = 20 << 20;

/// Reassembles RPC messages from a TCP byte stream.
pub struct RecordReader {
    max_message: usize,
    buf: BytesMut,
    fragments: BytesMut,
    in_fragments: bool,
    /// The size of the large allocation `buf` lives in (0: a small one).
    /// Its visible capacity is only what is left after the messages split
    /// from it.
    buf_allocation: usize,
    /// Emptied large buffers with their allocations' sizes, oldest first;
    /// each is reclaimed whole once the messages split from it are dropped.
    spare: VecDeque<(BytesMut, usize)>,
    /// Large buffers allocated (not reclaimed) so far.
    large_allocations: u64,
}

impl RecordReader {
    pub fn new(max_message: usize) -> Self {
        RecordReader {
            max_message,
            buf: BytesMut::new(),
            fragments: BytesMut::new(),
            in_fragments: false,
            buf_allocation: 0,
            spare: VecDeque::new(),
            large_allocations: 0,
        }
    }

    /// The buffer the next read from the socket should fill (see
    /// `tokio::io::AsyncReadExt::read_buf`), with room for at least 16 KiB.
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < 16 << 10 {
            self.make_room(self.buf.len() + READ_AHEAD);
        }
        &mut self.buf
    }

    /// Room in `buf` for `total` bytes: its own allocation when no message
    /// read into it is alive any more; for a large message (or in a buffer
    /// that came from the spares) a spare whose messages are all gone, else
    /// a new allocation.
    fn make_room(&mut self, total: usize) {
        let additional = total - self.buf.len();
        if self.buf.try_reclaim(additional) {
            return;
        }
        // A buffer from the spares stays among them, whatever it is asked for
        // next: reserve() would move its bytes to an allocation no spare tracks.
        if total < LARGE_MESSAGE && self.buf_allocation == 0 {
            self.buf.reserve(additional);
            return;
        }
        let want = total + READ_AHEAD;
        let (mut next, size) = match self.spare.iter_mut().position(|(b, _)| b.try_reclaim(want)) {
            Some(i) => self.spare.remove(i).expect("position() found it"),
            None => {
                self.large_allocations += 1;
                (BytesMut::with_capacity(want), want)
            }
        };
        next.extend_from_slice(&self.buf);
        let mut emptied = std::mem::replace(&mut self.buf, next);
        let emptied_size = std::mem::replace(&mut self.buf_allocation, size);
        if emptied_size > 0 {
            emptied.clear();
            self.keep_spare(emptied, emptied_size);
        }
    }

    fn keep_spare(&mut self, emptied: BytesMut, size: usize) {
        self.spare.push_back((emptied, size));
        let mut kept: usize = self.spare.iter().map(|(_, size)| size).sum();
        while kept > SPARE_BYTES {
            let (_, oldest) = self.spare.pop_front().expect("kept > 0");
            kept -= oldest;
        }
    }

    /// Add bytes read from the peer.
    pub fn receive(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held that are not yet part of a returned message.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.fragments.len()
    }

    /// How many more bytes the message being read needs at least (for sizing reads).
    pub fn wanted(&self) -> usize {
        if self.buf.len() < 4 {
            return 4 - self.buf.len();
        }
        let size = (u32::from_be_bytes(self.buf[..4].try_into().unwrap()) & !LAST_FRAGMENT) as usize;
        (4 + size).saturating_sub(self.buf.len())
    }

    /// The next whole message, `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, FrameError> {
        loop {
            if self.buf.len() < 4 {
                return Ok(None);
            }
            let header = u32::from_be_bytes(self.buf[..4].try_into().unwrap());
            let size = (header & !LAST_FRAGMENT) as usize;
            let last = header & LAST_FRAGMENT != 0;
            if self.fragments.len() + size > self.max_message {
                return Err(FrameError::TooLarge { at_least: self.fragments.len() + size, max: self.max_message });
            }
            if !last && size == 0 {
                return Err(FrameError::EmptyFragment);
            }
            if self.buf.len() - 4 < size {
                self.make_room(4 + size);
                return Ok(None);
            }
            self.buf.advance(4);
            let fragment = self.buf.split_to(size);
            if last && !self.in_fragments {
                return Ok(Some(fragment.freeze()));
            }
            self.fragments.extend_from_slice(&fragment);
            self.in_fragments = true;
            if last {
                self.in_fragments = false;
                return Ok(Some(std::mem::take(&mut self.fragments).freeze()));
            }
        }
    }
}

/// The record mark for a message of `len` bytes sent as one fragment.
pub fn record_mark(len: usize) -> [u8; 4] {
    debug_assert!(len < LAST_FRAGMENT as usize);
    (LAST_FRAGMENT | len as u32).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testrand::Rng;

    fn framed(message: &[u8], fragment: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let chunks: Vec<&[u8]> = if message.is_empty() { vec![&[][..]] } else { message.chunks(fragment).collect() };
        for (i, chunk) in chunks.iter().enumerate() {
            let last = if i + 1 == chunks.len() { LAST_FRAGMENT } else { 0 };
            out.extend_from_slice(&(last | chunk.len() as u32).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn any_fragmenting_and_any_chunking_gives_the_messages_back() {
        let mut rng = Rng::new(7);
        for _ in 0..300 {
            let messages: Vec<Vec<u8>> =
                (0..rng.below(5) + 1).map(|_| rng.some_bytes(300)).collect();
            let mut stream = Vec::new();
            for m in &messages {
                stream.extend(framed(m, rng.below(64) as usize + 1));
            }
            let mut reader = RecordReader::new(1024);
            let mut got = Vec::new();
            let mut pos = 0;
            while pos < stream.len() {
                let n = (rng.below(40) as usize + 1).min(stream.len() - pos);
                reader.receive(&stream[pos..pos + n]);
                pos += n;
                while let Some(m) = reader.next_message().unwrap() {
                    got.push(m.to_vec());
                }
            }
            assert_eq!(got, messages);
            assert_eq!(reader.buffered(), 0);
        }
    }

    #[test]
    fn an_oversized_message_is_refused_from_its_header() {
        let mut reader = RecordReader::new(100);
        reader.receive(&(LAST_FRAGMENT | 101).to_be_bytes());
        assert!(matches!(reader.next_message(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn fragments_count_toward_the_limit() {
        let mut reader = RecordReader::new(100);
        reader.receive(&framed(&[1u8; 150], 60));
        assert!(matches!(reader.next_message(), Err(FrameError::TooLarge { at_least: 120, .. })));
    }

    #[test]
    fn an_empty_non_final_fragment_is_refused() {
        let mut reader = RecordReader::new(100);
        reader.receive(&0u32.to_be_bytes());
        assert_eq!(reader.next_message(), Err(FrameError::EmptyFragment));
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rng = Rng::new(11);
        for _ in 0..2000 {
            let mut reader = RecordReader::new(4096);
            reader.receive(&rng.some_bytes(64));
            while let Ok(Some(_)) = reader.next_message() {}
        }
    }

    /// What a socket read into `read_buffer()` does: at most the room it
    /// has, without growing it.
    fn read_into(reader: &mut RecordReader, stream: &[u8], pos: &mut usize, most: usize) {
        let buf = reader.read_buffer();
        let n = (buf.capacity() - buf.len()).min(most).min(stream.len() - *pos);
        buf.extend_from_slice(&stream[*pos..*pos + n]);
        *pos += n;
    }

    fn large_stream(rng: &mut Rng, count: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
        let messages: Vec<Vec<u8>> =
            (0..count).map(|k| vec![k as u8 ^ 0x5a; LARGE_MESSAGE + rng.below(300 << 10) as usize]).collect();
        let stream = messages.iter().flat_map(|m| framed(m, m.len())).collect();
        (messages, stream)
    }

    #[test]
    fn large_messages_dropped_as_they_come_reuse_a_few_buffers() {
        let mut rng = Rng::new(11);
        let (messages, stream) = large_stream(&mut rng, 40);
        let mut reader = RecordReader::new(1 << 30);
        let (mut pos, mut got) = (0, 0);
        while pos < stream.len() {
            read_into(&mut reader, &stream, &mut pos, 64 << 10);
            while let Some(m) = reader.next_message().unwrap() {
                assert_eq!(m, messages[got]);
                got += 1;
            }
        }
        assert_eq!(got, messages.len());
        assert!(reader.large_allocations <= 2, "{} buffers for {got} messages", reader.large_allocations);
    }

    #[test]
    fn large_messages_held_keep_their_bytes_while_later_ones_are_read() {
        let mut rng = Rng::new(12);
        let (messages, stream) = large_stream(&mut rng, 60);
        let mut reader = RecordReader::new(1 << 30);
        let (mut pos, mut held) = (0, std::collections::VecDeque::new());
        let mut got = 0;
        while pos < stream.len() {
            read_into(&mut reader, &stream, &mut pos, 1 + rng.below(200 << 10) as usize);
            while let Some(m) = reader.next_message().unwrap() {
                held.push_back((got, m));
                got += 1;
                if held.len() > 1 + rng.below(20) as usize {
                    let (k, old) = held.pop_front().unwrap();
                    assert_eq!(old, messages[k], "message {k} changed while held");
                }
            }
            let kept: usize = reader.spare.iter().map(|(_, size)| size).sum();
            assert!(kept <= SPARE_BYTES);
        }
        assert_eq!(got, messages.len());
        assert!(reader.large_allocations < got as u64 / 2, "{} buffers for {got} messages",
                reader.large_allocations);
        for (k, m) in held {
            assert_eq!(m, messages[k]);
        }
    }

    #[test]
    fn small_messages_between_large_ones_keep_the_buffers_in_use() {
        let mut rng = Rng::new(13);
        let mut messages: Vec<Vec<u8>> = Vec::new();
        for k in 0..30u8 {
            messages.push(vec![k; LARGE_MESSAGE + rng.below(200 << 10) as usize]);
            for _ in 0..20 + rng.below(80) {
                messages.push(rng.some_bytes(3000));
            }
        }
        let stream: Vec<u8> = messages.iter().flat_map(|m| framed(m, m.len().max(1))).collect();
        let mut reader = RecordReader::new(1 << 30);
        let (mut pos, mut got, mut held) = (0, 0, std::collections::VecDeque::new());
        while pos < stream.len() {
            read_into(&mut reader, &stream, &mut pos, 1 + rng.below(100 << 10) as usize);
            while let Some(m) = reader.next_message().unwrap() {
                assert_eq!(m, messages[got]);
                got += 1;
                if m.len() >= LARGE_MESSAGE {
                    held.push_back(m); // the last few large calls are in flight
                    if held.len() > 4 {
                        held.pop_front();
                    }
                }
            }
        }
        assert_eq!(got, messages.len());
        assert!(reader.large_allocations <= 12, "{} buffers for 30 large messages",
                reader.large_allocations);
    }
}
