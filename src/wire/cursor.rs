//! Bounds-checked cursors over input and output bytes.

use super::*;

/// A cursor over input bytes; every read is checked and fails with `Truncated`.
///
/// Offsets in its errors are relative to the start of its input (the payload, for the
/// payload decoders).
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn truncated(&self, needed: usize) -> WireError {
        WireError::Truncated {
            needed,
            available: self.buf.len(),
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| self.truncated(usize::MAX))?;
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.truncated(end))?;
        self.pos = end;
        Ok(bytes)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let bytes = self.take(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| self.truncated(N))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn be16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn be32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn be64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        rest
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
}

/// A cursor over an output buffer whose size was checked up front; every write is still
/// checked and fails with `BufferTooSmall` rather than panicking.
pub(crate) struct Writer<'a> {
    pub(crate) buf: &'a mut [u8],
    pub(crate) pos: usize,
}

impl<'a> Writer<'a> {
    /// Starts writing a message of `total` bytes into `buf`.
    pub(crate) fn new(buf: &'a mut [u8], total: usize) -> Result<Self, WireError> {
        if buf.len() < total {
            return Err(WireError::BufferTooSmall {
                needed: total,
                available: buf.len(),
            });
        }
        Ok(Writer { buf, pos: 0 })
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let available = self.buf.len();
        let end = self
            .pos
            .checked_add(bytes.len())
            .ok_or(WireError::BufferTooSmall {
                needed: usize::MAX,
                available,
            })?;
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(WireError::BufferTooSmall {
                needed: end,
                available,
            })?;
        dst.copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }

    pub(crate) fn u8(&mut self, v: u8) -> Result<(), WireError> {
        self.put(&[v])
    }

    pub(crate) fn be16(&mut self, v: u16) -> Result<(), WireError> {
        self.put(&v.to_be_bytes())
    }

    pub(crate) fn be32(&mut self, v: u32) -> Result<(), WireError> {
        self.put(&v.to_be_bytes())
    }

    pub(crate) fn be64(&mut self, v: u64) -> Result<(), WireError> {
        self.put(&v.to_be_bytes())
    }

    pub(crate) fn done(self) -> usize {
        self.pos
    }
}

/// Payload length as the 16-bit field, or `PayloadTooLong`.
pub(crate) fn len16(what: &'static str, len: usize) -> Result<u16, WireError> {
    u16::try_from(len).map_err(|_| WireError::PayloadTooLong { what, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_big_endian_and_never_past_the_input() {
        let bytes = [1, 0, 2, 0, 0, 0, 3, 9];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.be16(), Ok(2));
        assert_eq!(r.be32(), Ok(3));
        assert_eq!(r.remaining(), 1);
        assert_eq!(
            r.be16(),
            Err(WireError::Truncated {
                needed: 9,
                available: 8
            })
        );
        // A failed read consumes nothing.
        assert_eq!(r.rest(), &[9]);
        let mut r = Reader::new(&bytes);
        assert!(matches!(
            r.take(usize::MAX),
            Err(WireError::Truncated { .. })
        ));
    }

    #[test]
    fn writes_stop_at_the_buffer_end() {
        let mut buf = [0u8; 7];
        assert_eq!(
            Writer::new(&mut buf, 8).err(),
            Some(WireError::BufferTooSmall {
                needed: 8,
                available: 7
            })
        );
        let mut w = Writer::new(&mut buf, 7).unwrap();
        w.u8(0xaa).unwrap();
        w.be16(0x0102).unwrap();
        w.be32(0x0304_0506).unwrap();
        assert_eq!(
            w.u8(0),
            Err(WireError::BufferTooSmall {
                needed: 8,
                available: 7
            })
        );
        assert_eq!(w.done(), 7);
        assert_eq!(buf, [0xaa, 1, 2, 3, 4, 5, 6]);
        assert_eq!(len16("payload", 65535), Ok(65535));
        assert!(len16("payload", 65536).is_err());
    }
}
