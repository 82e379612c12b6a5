//! RPC record marking over TCP (RFC 5531 section 11), sans-IO.
//!
//! `RecordReader` takes arbitrary chunks of a byte stream and gives back whole
//! RPC messages. A message larger than the limit is refused from its first
//! fragment header, before anything is buffered for it, so a hostile length
//! cannot make the relay allocate.

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

/// Reassembles RPC messages from a TCP byte stream.
pub struct RecordReader {
    max_message: usize,
    buf: BytesMut,
    fragments: BytesMut,
    in_fragments: bool,
}

impl RecordReader {
    pub fn new(max_message: usize) -> Self {
        RecordReader { max_message, buf: BytesMut::new(), fragments: BytesMut::new(), in_fragments: false }
    }

    /// The buffer the next read from the socket should fill (see `tokio::io::AsyncReadExt::read_buf`).
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
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
                self.buf.reserve(4 + size - self.buf.len());
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
}
