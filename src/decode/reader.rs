//! A small bounds-checked big-endian cursor over one pgoutput payload.

use bytes::Bytes;

use super::error::DecodeError;

/// Bounds-checked cursor over a [`Bytes`] buffer.
///
/// Every read either returns the value and advances, or returns a
/// [`DecodeError`] naming `what` was being read and leaves the input
/// untouched for inspection. Nothing here panics on any input.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Number of unread bytes.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// True when every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The unread part of the input.
    fn rest(&self) -> &'a [u8] {
        let buf: &'a [u8] = self.buf;
        buf.get(self.pos..).unwrap_or_default()
    }

    /// Consumes `n` bytes, returning them as a borrowed slice.
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let remaining = self.remaining();
        let truncated = DecodeError::Truncated {
            what,
            needed: n,
            remaining,
        };
        let end = self.pos.checked_add(n).ok_or(truncated.clone())?;
        let buf: &'a [u8] = self.buf;
        let out = buf.get(self.pos..end).ok_or(truncated)?;
        self.pos = end;
        Ok(out)
    }

    /// Consumes exactly `N` bytes into an array.
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let remaining = self.remaining();
        <[u8; N]>::try_from(self.take(N, what)?).map_err(|_| DecodeError::Truncated {
            what,
            needed: N,
            remaining,
        })
    }

    /// Consumes `n` bytes as a zero-copy slice of the input buffer.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n, what)?;
        // `take` succeeded, so `start..self.pos` lies within the buffer.
        Ok(self.buf.slice(start..self.pos))
    }

    /// Reads one byte (Byte1 / Int8).
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let [b] = self.array::<1>(what)?;
        Ok(b)
    }

    /// Reads a big-endian Int16.
    pub fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    /// Reads a big-endian Int32.
    pub fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    /// Reads a big-endian Int32 reinterpreted as unsigned (OIDs, xids).
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// Reads a big-endian Int64.
    pub fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    /// Reads a big-endian Int64 reinterpreted as unsigned (LSNs).
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// Reads an Int16 count; negative values are [`DecodeError::NegativeLength`].
    pub fn count_i16(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.i16(what)?;
        usize::try_from(n).map_err(|_| DecodeError::NegativeLength {
            what,
            len: i32::from(n),
        })
    }

    /// Reads an Int32 length; negative values are [`DecodeError::NegativeLength`].
    pub fn len_i32(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.i32(what)?;
        usize::try_from(n).map_err(|_| DecodeError::NegativeLength { what, len: n })
    }

    /// Reads a NUL-terminated UTF-8 string (the NUL is consumed, not returned).
    pub fn cstr(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let rest = self.rest();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::MissingNul { what })?;
        let raw = rest.get(..nul).ok_or(DecodeError::MissingNul { what })?;
        let s = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8 { what })?;
        let s = s.to_owned();
        self.take(nul.saturating_add(1), what)?;
        Ok(s)
    }

    /// How many of `count` declared items, each at least `min_item_len`
    /// bytes long, the unread input could possibly hold: the most a decoder
    /// may reserve up front, whatever the declared count says.
    pub fn capacity_for(&self, count: usize, min_item_len: usize) -> usize {
        count.min(self.remaining().checked_div(min_item_len).unwrap_or(self.remaining()))
    }

    /// Succeeds only if the whole input was consumed.
    pub fn finish(&self, tag: u8) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { tag, count }),
        }
    }
}
