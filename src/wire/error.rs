//! Errors and value checks shared by the wire codecs.

use std::fmt;

use super::*;

/// What a length field must be, as reported by [`WireError::LengthMismatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LenRule {
    /// Exactly this many bytes.
    Exactly(usize),
    /// One of two lengths.
    OneOf(usize, usize),
    /// At least this many bytes (up to the 16-bit limit).
    AtLeast(usize),
    /// Between the two bounds, both included.
    Between(usize, usize),
}

impl LenRule {
    fn allows(self, len: usize) -> bool {
        match self {
            LenRule::Exactly(n) => len == n,
            LenRule::OneOf(a, b) => len == a || len == b,
            LenRule::AtLeast(n) => len >= n,
            LenRule::Between(lo, hi) => (lo..=hi).contains(&len),
        }
    }

    /// `Ok` when the rule allows `len`, else a [`WireError::LengthMismatch`] for `what`.
    pub(super) fn check(self, what: &'static str, len: usize) -> Result<(), WireError> {
        if self.allows(len) {
            Ok(())
        } else {
            Err(WireError::LengthMismatch {
                what,
                found: len,
                expected: self,
            })
        }
    }
}

impl fmt::Display for LenRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LenRule::Exactly(n) => write!(f, "{n}"),
            LenRule::OneOf(a, b) => write!(f, "{a} or {b}"),
            LenRule::AtLeast(n) => write!(f, "at least {n}"),
            LenRule::Between(lo, hi) => write!(f, "{lo} to {hi}"),
        }
    }
}

/// Everything that can be wrong with a message, or with the arguments of an encoder.
///
/// [`WireError::errno`] maps each to an errno: `ENOSPC` for an output buffer
/// that is too small, `EBADMSG` for input bytes that are not a well-formed message
/// (framing, version, markers, lengths), `EINVAL` for values that are well framed but not
/// acceptable (names, ranges, sizes, encoder arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Encoder: the output buffer holds `available` bytes, the message needs `needed`.
    /// Also returned when a caller-provided output array is too small.
    BufferTooSmall {
        /// Bytes (or elements) the output needs.
        needed: usize,
        /// Bytes (or elements) the caller provided.
        available: usize,
    },
    /// Decoder: the input ends before the message does.
    Truncated {
        /// Bytes the message needs from the start of the input.
        needed: usize,
        /// Bytes the input has.
        available: usize,
    },
    /// A command does not start with [`QEMU_VM_COMMAND`].
    BadCommandMarker(u8),
    /// A command number this codec does not know.
    UnknownCommand(u16),
    /// A return-path message type this codec does not know.
    UnknownReturnPathType(u16),
    /// A length (header field, or implied by the payload) that the message kind forbids.
    LengthMismatch {
        /// The message kind, as QEMU names it.
        what: &'static str,
        /// The length found.
        found: usize,
        /// The length the kind requires.
        expected: LenRule,
    },
    /// A payload longer than its 16-bit length field (or the 512-byte return-path limit).
    PayloadTooLong {
        /// The message kind.
        what: &'static str,
        /// The payload length it would need.
        len: usize,
    },
    /// A `POSTCOPY_RAM_DISCARD` version other than [`DISCARD_VERSION`].
    BadVersion(u8),
    /// A block name or request id of zero bytes.
    EmptyName,
    /// A block name or request id longer than [`MAX_NAME_LEN`] bytes.
    NameTooLong(usize),
    /// A block name or request id with a NUL byte at this offset.
    NameContainsNul {
        /// Offset of the NUL within the name.
        offset: usize,
    },
    /// The byte after a discard's block name is not 0.
    MissingTerminator(u8),
    /// The bytes after a discard's name are not a whole number of 16-byte ranges.
    DiscardLengthNotMultipleOf16(usize),
    /// A discard with no range.
    NoRanges,
    /// Encoder: the `starts` and `lengths` arrays differ in length.
    RangeCountMismatch {
        /// Number of starts.
        starts: usize,
        /// Number of lengths.
        lengths: usize,
    },
    /// A range (discard entry `index`, or a page request when 0) of length 0.
    ZeroLengthRange {
        /// Index of the range within its message.
        index: usize,
    },
    /// A range whose end does not fit in 64 bits.
    RangeOverflow {
        /// Index of the range within its message.
        index: usize,
        /// Its start.
        start: u64,
        /// Its length.
        length: u64,
    },
    /// A range not aligned to the page size (see [`check_range`]).
    Misaligned {
        /// Range start.
        start: u64,
        /// Range length.
        length: u64,
        /// Required alignment.
        align: u64,
    },
    /// A range reaching past the end of its block (see [`check_range`]).
    OutOfBlock {
        /// Range start.
        start: u64,
        /// Range length.
        length: u64,
        /// Length of the block.
        block_len: u64,
    },
    /// A received-bitmap size that is not a multiple of 8 bytes.
    BadBitmapSize(u64),
    /// A received-bitmap size that does not match the block's page count.
    BitmapSizeMismatch {
        /// Size for the block, in bytes.
        expected: u64,
        /// Size in the message, in bytes.
        found: u64,
    },
    /// Encoder: a bitmap of `words` words cannot hold `nbits` bits.
    BitmapTooShort {
        /// Bits asked for.
        nbits: usize,
        /// Words provided.
        words: usize,
    },
    /// A received-bitmap block not closed by [`RECV_BITMAP_END_MARK`].
    BadEndMarker(u64),
}

impl WireError {
    /// The positive errno for this error: `ENOSPC`, `EBADMSG` or `EINVAL` (see the type).
    pub fn errno(&self) -> i32 {
        match self {
            WireError::BufferTooSmall { .. } => libc::ENOSPC,
            WireError::Truncated { .. }
            | WireError::BadCommandMarker(_)
            | WireError::UnknownCommand(_)
            | WireError::UnknownReturnPathType(_)
            | WireError::LengthMismatch { .. }
            | WireError::BadVersion(_)
            | WireError::MissingTerminator(_)
            | WireError::DiscardLengthNotMultipleOf16(_)
            | WireError::BadBitmapSize(_)
            | WireError::BadEndMarker(_) => libc::EBADMSG,
            WireError::PayloadTooLong { .. }
            | WireError::EmptyName
            | WireError::NameTooLong(_)
            | WireError::NameContainsNul { .. }
            | WireError::NoRanges
            | WireError::RangeCountMismatch { .. }
            | WireError::ZeroLengthRange { .. }
            | WireError::RangeOverflow { .. }
            | WireError::Misaligned { .. }
            | WireError::OutOfBlock { .. }
            | WireError::BitmapSizeMismatch { .. }
            | WireError::BitmapTooShort { .. } => libc::EINVAL,
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WireError::BufferTooSmall { needed, available } => {
                write!(
                    f,
                    "output buffer too small: need {needed}, have {available}"
                )
            }
            WireError::Truncated { needed, available } => {
                write!(
                    f,
                    "message truncated: need {needed} bytes, have {available}"
                )
            }
            WireError::BadCommandMarker(b) => {
                write!(
                    f,
                    "command marker is {b:#04x}, expected {QEMU_VM_COMMAND:#04x}"
                )
            }
            WireError::UnknownCommand(c) => write!(f, "unknown command {c}"),
            WireError::UnknownReturnPathType(t) => {
                write!(f, "unknown return-path message type {t}")
            }
            WireError::LengthMismatch {
                what,
                found,
                expected,
            } => {
                write!(f, "{what}: length {found}, expected {expected}")
            }
            WireError::PayloadTooLong { what, len } => {
                write!(
                    f,
                    "{what}: payload of {len} bytes does not fit its length field"
                )
            }
            WireError::BadVersion(v) => {
                write!(
                    f,
                    "POSTCOPY_RAM_DISCARD: version {v}, expected {DISCARD_VERSION}"
                )
            }
            WireError::EmptyName => write!(f, "empty block name"),
            WireError::NameTooLong(n) => {
                write!(
                    f,
                    "block name of {n} bytes, longest allowed is {MAX_NAME_LEN}"
                )
            }
            WireError::NameContainsNul { offset } => {
                write!(f, "block name has a NUL byte at offset {offset}")
            }
            WireError::MissingTerminator(b) => {
                write!(
                    f,
                    "POSTCOPY_RAM_DISCARD: name terminator is {b:#04x}, expected 0x00"
                )
            }
            WireError::DiscardLengthNotMultipleOf16(n) => write!(
                f,
                "POSTCOPY_RAM_DISCARD: {n} bytes of ranges, not a multiple of {DISCARD_RANGE_LEN}"
            ),
            WireError::NoRanges => write!(f, "POSTCOPY_RAM_DISCARD without any range"),
            WireError::RangeCountMismatch { starts, lengths } => {
                write!(f, "{starts} range starts but {lengths} range lengths")
            }
            WireError::ZeroLengthRange { index } => write!(f, "range {index} has length 0"),
            WireError::RangeOverflow {
                index,
                start,
                length,
            } => {
                write!(
                    f,
                    "range {index} ({start:#x} + {length:#x}) overflows 64 bits"
                )
            }
            WireError::Misaligned {
                start,
                length,
                align,
            } => {
                write!(
                    f,
                    "range {start:#x} + {length:#x} not aligned to {align:#x}"
                )
            }
            WireError::OutOfBlock {
                start,
                length,
                block_len,
            } => {
                write!(
                    f,
                    "range {start:#x} + {length:#x} past the block end {block_len:#x}"
                )
            }
            WireError::BadBitmapSize(s) => {
                write!(f, "received bitmap size {s} is not a multiple of 8 bytes")
            }
            WireError::BitmapSizeMismatch { expected, found } => {
                write!(
                    f,
                    "received bitmap of {found} bytes, the block needs {expected}"
                )
            }
            WireError::BitmapTooShort { nbits, words } => {
                write!(f, "bitmap of {words} words cannot hold {nbits} bits")
            }
            WireError::BadEndMarker(m) => write!(
                f,
                "received bitmap end marker is {m:#018x}, expected {RECV_BITMAP_END_MARK:#018x}"
            ),
        }
    }
}

impl std::error::Error for WireError {}

/// Checks a block name or request id: 1..=255 bytes, no NUL.
pub fn validate_name(name: &[u8]) -> Result<(), WireError> {
    if name.is_empty() {
        return Err(WireError::EmptyName);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(WireError::NameTooLong(name.len()));
    }
    if let Some(offset) = name.iter().position(|&b| b == 0) {
        return Err(WireError::NameContainsNul { offset });
    }
    Ok(())
}

/// Checks a (start, length) byte range against its block, as both ends of the stream must:
/// non-empty, start and length multiples of `page_size` (a power of two; 0 or 1 skips the
/// alignment check), and `start + length <= block_len`.
pub fn check_range(
    start: u64,
    length: u64,
    page_size: u64,
    block_len: u64,
) -> Result<(), WireError> {
    if length == 0 {
        return Err(WireError::ZeroLengthRange { index: 0 });
    }
    let end = start.checked_add(length).ok_or(WireError::RangeOverflow {
        index: 0,
        start,
        length,
    })?;
    if page_size > 1 && (start % page_size != 0 || length % page_size != 0) {
        return Err(WireError::Misaligned {
            start,
            length,
            align: page_size,
        });
    }
    if end > block_len {
        return Err(WireError::OutOfBlock {
            start,
            length,
            block_len,
        });
    }
    Ok(())
}
