//! The received-bitmap block (after a return-path RECV_BITMAP).

use super::cursor::{Reader, Writer};
use super::*;

/// Bytes of the bitmap part for `nbits` target pages: the bits rounded up to whole 8-byte
/// words (QEMU: `ROUND_UP(DIV_ROUND_UP(nbits, 8), 8)`).
pub const fn recv_bitmap_size(nbits: u64) -> u64 {
    nbits.div_ceil(64) * 8
}

/// Bytes of the whole received-bitmap block for `nbits` pages (size field, bitmap, end
/// marker), or `None` if that does not fit in `usize`.
pub fn recv_bitmap_block_len(nbits: usize) -> Option<usize> {
    nbits.div_ceil(64).checked_mul(8)?.checked_add(16)
}

/// Encodes the received-bitmap block for `nbits` pages from `bitmap` (bit `i` of word `w` is
/// page `64 * w + i`, set = received); bits at and past `nbits` are sent as 0. Returns the
/// length written.
pub fn encode_recv_bitmap(
    buf: &mut [u8],
    bitmap: &[u64],
    nbits: usize,
) -> Result<usize, WireError> {
    let nwords = nbits.div_ceil(64);
    let words = bitmap.get(..nwords).ok_or(WireError::BitmapTooShort {
        nbits,
        words: bitmap.len(),
    })?;
    let total = recv_bitmap_block_len(nbits).ok_or(WireError::BufferTooSmall {
        needed: usize::MAX,
        available: buf.len(),
    })?;
    let mut w = Writer::new(buf, total)?;
    w.be64(recv_bitmap_size(nbits as u64))?;
    let tail_bits = nbits % 64;
    for (i, &word) in words.iter().enumerate() {
        let word = if tail_bits != 0 && i + 1 == nwords {
            word & ((1u64 << tail_bits) - 1)
        } else {
            word
        };
        w.put(&word.to_le_bytes())?;
    }
    w.be64(RECV_BITMAP_END_MARK)?;
    Ok(w.done())
}

/// Reads the `be64 size` that opens a received-bitmap block (first 8 bytes of `buf`), so a
/// stream reader knows that `size + 16` bytes make up the block. Checks that it is a
/// multiple of 8.
pub fn decode_recv_bitmap_size(buf: &[u8]) -> Result<u64, WireError> {
    let size = Reader::new(buf).be64()?;
    if size % 8 != 0 {
        return Err(WireError::BadBitmapSize(size));
    }
    Ok(size)
}

/// A decoded received-bitmap block: its little-endian bitmap bytes, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvBitmap<'a> {
    bytes: &'a [u8],
}

impl<'a> RecvBitmap<'a> {
    /// The bitmap as sent: `size` bytes, little-endian, one bit per target page.
    pub fn as_le_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The `size` field: bytes of bitmap.
    pub fn size_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Word `index` of the bitmap (pages `64 * index ..`), if there is one.
    pub fn word(&self, index: usize) -> Option<u64> {
        let at = index.checked_mul(8)?;
        let raw = self.bytes.get(at..at.checked_add(8)?)?;
        Some(u64::from_le_bytes(<[u8; 8]>::try_from(raw).ok()?))
    }

    /// Whether page `page` is marked received (false past the end of the bitmap).
    pub fn test(&self, page: u64) -> bool {
        let Ok(byte) = usize::try_from(page / 8) else {
            return false;
        };
        self.bytes
            .get(byte)
            .is_some_and(|b| (b >> (page % 8)) & 1 == 1)
    }

    /// Copies the bitmap of a block of `nbits` pages into `out` as native words (bit `i` of
    /// word `w` is page `64 * w + i`), with the bits past `nbits` cleared. The size must be
    /// exactly [`recv_bitmap_size`]`(nbits)`, as QEMU requires, and `out` must have
    /// `nbits.div_ceil(64)` words.
    pub fn copy_to_words(&self, out: &mut [u64], nbits: usize) -> Result<(), WireError> {
        let expected = recv_bitmap_size(nbits as u64);
        if self.size_bytes() != expected {
            return Err(WireError::BitmapSizeMismatch {
                expected,
                found: self.size_bytes(),
            });
        }
        let nwords = nbits.div_ceil(64);
        let available = out.len();
        let out = out.get_mut(..nwords).ok_or(WireError::BufferTooSmall {
            needed: nwords,
            available,
        })?;
        for (dst, src) in out.iter_mut().zip(self.bytes.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(src);
            *dst = u64::from_le_bytes(le);
        }
        let tail_bits = nbits % 64;
        if tail_bits != 0 {
            if let Some(last) = out.last_mut() {
                *last &= (1u64 << tail_bits) - 1;
            }
        }
        Ok(())
    }
}

/// Decodes a whole received-bitmap block from the start of `buf`; returns it and its length
/// in bytes. Checks the size (multiple of 8, present in `buf`) and the end marker; whether
/// the size fits the block is checked by [`RecvBitmap::copy_to_words`].
pub fn decode_recv_bitmap(buf: &[u8]) -> Result<(RecvBitmap<'_>, usize), WireError> {
    let size = decode_recv_bitmap_size(buf)?;
    let mut r = Reader::new(buf);
    r.be64()?;
    let size = usize::try_from(size).map_err(|_| WireError::Truncated {
        needed: usize::MAX,
        available: buf.len(),
    })?;
    let bytes = r.take(size)?;
    let mark = r.be64()?;
    if mark != RECV_BITMAP_END_MARK {
        return Err(WireError::BadEndMarker(mark));
    }
    Ok((RecvBitmap { bytes }, r.pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_is_size_bitmap_end_mark_and_round_trips() {
        assert_eq!(recv_bitmap_block_len(0), Some(16));
        assert_eq!(recv_bitmap_block_len(65), Some(32));
        let bitmap = [u64::MAX, 0b101];
        let mut buf = [0u8; 32];
        let n = encode_recv_bitmap(&mut buf, &bitmap, 66).unwrap();
        assert_eq!(n, 32);
        assert_eq!(&buf[..8], &16u64.to_be_bytes());
        assert_eq!(&buf[8..16], &u64::MAX.to_le_bytes());
        // Bits past nbits (66) are sent as 0: 0b101 becomes 0b01.
        assert_eq!(&buf[16..24], &1u64.to_le_bytes());
        assert_eq!(&buf[24..], &RECV_BITMAP_END_MARK.to_be_bytes());
        let (bm, used) = decode_recv_bitmap(&buf).unwrap();
        assert_eq!(used, 32);
        let mut out = [0u64; 2];
        bm.copy_to_words(&mut out, 66).unwrap();
        assert_eq!(out, [u64::MAX, 1]);
        // The size must be the one of the block the caller expects.
        assert!(bm.copy_to_words(&mut [0u64; 3], 130).is_err());
        buf[31] ^= 1;
        assert_eq!(
            decode_recv_bitmap(&buf).unwrap_err(),
            WireError::BadEndMarker(RECV_BITMAP_END_MARK ^ 1)
        );
    }
}
