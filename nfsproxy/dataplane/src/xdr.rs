//! XDR decoding (RFC 4506), only as far as the relay reads: a bounds-checked cursor.

/// The peer sent bytes that are not the XDR value expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdrError(pub String);

impl std::fmt::Display for XdrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub type Result<T> = std::result::Result<T, XdrError>;

/// A read cursor over one message; every read checks bounds first.
pub struct Reader<'a> {
    data: &'a [u8],
    pub pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(XdrError(format!(
                "truncated: need {n} bytes at offset {}, have {}",
                self.pos,
                self.remaining()
            )));
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }

    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }

    pub fn boolean(&mut self) -> Result<bool> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(XdrError(format!("bool must be 0 or 1, got {v}"))),
        }
    }

    /// `opaque[n]`: n bytes and their padding.
    pub fn fixed(&mut self, n: usize) -> Result<&'a [u8]> {
        let padded = n.checked_add((4 - n % 4) % 4).ok_or_else(|| XdrError("length overflows".into()))?;
        Ok(&self.take(padded)?[..n])
    }

    /// `opaque<max>` or `string<max>`.
    pub fn var(&mut self, max: usize) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(XdrError(format!("length {n} over maximum {max} at offset {}", self.pos - 4)));
        }
        self.fixed(n)
    }

    /// Skip `n` bytes.
    pub fn skip(&mut self, n: usize) -> Result<()> {
        self.take(n).map(|_| ())
    }

    pub fn done(&self) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(XdrError(format!("{n} trailing bytes at offset {}", self.pos))),
        }
    }
}
