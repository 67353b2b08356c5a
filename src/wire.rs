//! Byte-exact codecs for the postcopy messages QEMU puts on the migration stream.
//!
//! Two directions, two framings (all integers big-endian unless said otherwise):
//!
//! * **Commands**, source -> destination: `u8 0x08` ([`QEMU_VM_COMMAND`]), `be16 cmd`,
//!   `be16 len`, then `len` payload bytes. See [`Command`] and [`CommandMsg`].
//! * **Return-path messages**, destination -> source: `be16 type`, `be16 len`, then `len`
//!   bytes. See [`ReturnPathType`] and [`ReturnPathMsg`].
//!
//! plus the **received-bitmap block** the destination writes after a return-path
//! `RECV_BITMAP` message: `be64 size`, `size` bytes of a little-endian bitmap, and the
//! `be64` end marker [`RECV_BITMAP_END_MARK`] (see [`encode_recv_bitmap`]).
//!
//! Encoders write into a caller buffer and return the number of bytes written; a buffer
//! that is too small is [`WireError::BufferTooSmall`] (`-ENOSPC`) and nothing useful is
//! written. Decoders borrow from their input where they return names or ranges. No decoder
//! panics or reads past its input, whatever bytes it is given.
//!
//! For a reader on a stream, [`decode_command_header`] and [`decode_return_path_header`]
//! need only the fixed-size header ([`COMMAND_HEADER_LEN`], [`RETURN_PATH_HEADER_LEN`]
//! bytes) and tell how many bytes the whole message has; the header check already rejects
//! unknown kinds and lengths that no valid message of that kind can have.

use std::fmt;

/// The section-type byte that opens every command on the migration stream.
pub const QEMU_VM_COMMAND: u8 = 0x08;
/// Bytes of a command header: marker, `be16 cmd`, `be16 len`.
pub const COMMAND_HEADER_LEN: usize = 5;
/// Bytes of a return-path header: `be16 type`, `be16 len`.
pub const RETURN_PATH_HEADER_LEN: usize = 4;
/// Largest return-path payload the QEMU source accepts (its receive buffer).
pub const RETURN_PATH_MAX_LEN: usize = 512;
/// Most (start, length) pairs QEMU puts in one `POSTCOPY_RAM_DISCARD` command. The
/// decoder accepts any count that fits in the 16-bit payload length.
pub const MAX_DISCARDS_PER_COMMAND: usize = 12;
/// The only `POSTCOPY_RAM_DISCARD` payload version.
pub const DISCARD_VERSION: u8 = 0;
/// Longest RAM block name (or request id) on the wire: its length travels in one byte.
pub const MAX_NAME_LEN: usize = 255;
/// Bytes of one discard range: `be64 start`, `be64 length`.
pub const DISCARD_RANGE_LEN: usize = 16;
/// Smallest `POSTCOPY_RAM_DISCARD` payload QEMU's destination accepts
/// (version, name length, one name byte, terminator, one range).
pub const DISCARD_MIN_PAYLOAD_LEN: usize = 20;
/// Payload length of a `POSTCOPY_ADVISE` that carries page sizes (the other form is empty).
pub const ADVISE_PAYLOAD_LEN: usize = 16;
/// Payload length of a return-path `REQ_PAGES`.
pub const REQ_PAGES_LEN: usize = 12;
/// Marker closing a received-bitmap block.
pub const RECV_BITMAP_END_MARK: u64 = 0x0123_4567_89ab_cdef;

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
    fn check(self, what: &'static str, len: usize) -> Result<(), WireError> {
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
/// [`WireError::to_errno`] maps each to a negative errno: `-ENOSPC` for an output buffer
/// that is too small, `-EBADMSG` for input bytes that are not a well-formed message
/// (framing, version, markers, lengths), `-EINVAL` for values that are well framed but not
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
    /// The negative errno for this error: `-ENOSPC`, `-EBADMSG` or `-EINVAL` (see the type).
    pub fn to_errno(&self) -> i32 {
        match self {
            WireError::BufferTooSmall { .. } => -libc::ENOSPC,
            WireError::Truncated { .. }
            | WireError::BadCommandMarker(_)
            | WireError::UnknownCommand(_)
            | WireError::UnknownReturnPathType(_)
            | WireError::LengthMismatch { .. }
            | WireError::BadVersion(_)
            | WireError::MissingTerminator(_)
            | WireError::DiscardLengthNotMultipleOf16(_)
            | WireError::BadBitmapSize(_)
            | WireError::BadEndMarker(_) => -libc::EBADMSG,
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
            | WireError::BitmapTooShort { .. } => -libc::EINVAL,
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

// ---------------------------------------------------------------------------------------
// Bounds-checked reading and writing.

/// A cursor over input bytes; every read is checked and fails with `Truncated`.
///
/// Offsets in its errors are relative to the start of its input (the payload, for the
/// payload decoders).
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn truncated(&self, needed: usize) -> WireError {
        WireError::Truncated {
            needed,
            available: self.buf.len(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
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

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let bytes = self.take(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| self.truncated(N))
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn be16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn be32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn be64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        rest
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
}

/// A cursor over an output buffer whose size was checked up front; every write is still
/// checked and fails with `BufferTooSmall` rather than panicking.
struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// Starts writing a message of `total` bytes into `buf`.
    fn new(buf: &'a mut [u8], total: usize) -> Result<Self, WireError> {
        if buf.len() < total {
            return Err(WireError::BufferTooSmall {
                needed: total,
                available: buf.len(),
            });
        }
        Ok(Writer { buf, pos: 0 })
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), WireError> {
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

    fn u8(&mut self, v: u8) -> Result<(), WireError> {
        self.put(&[v])
    }

    fn be16(&mut self, v: u16) -> Result<(), WireError> {
        self.put(&v.to_be_bytes())
    }

    fn be32(&mut self, v: u32) -> Result<(), WireError> {
        self.put(&v.to_be_bytes())
    }

    fn be64(&mut self, v: u64) -> Result<(), WireError> {
        self.put(&v.to_be_bytes())
    }

    fn done(self) -> usize {
        self.pos
    }
}

/// Payload length as the 16-bit field, or `PayloadTooLong`.
fn len16(what: &'static str, len: usize) -> Result<u16, WireError> {
    u16::try_from(len).map_err(|_| WireError::PayloadTooLong { what, len })
}

// ---------------------------------------------------------------------------------------
// Commands (source -> destination).

/// Command numbers (`be16 cmd` of the envelope).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Command {
    /// `MIG_CMD_OPEN_RETURN_PATH`: no payload.
    OpenReturnPath = 1,
    /// `MIG_CMD_PING`: `be32` value, echoed as a return-path PONG.
    Ping = 2,
    /// `MIG_CMD_POSTCOPY_ADVISE`: empty, or `be64 ram_pagesize_summary`, `be64 target_page_size`.
    PostcopyAdvise = 3,
    /// `MIG_CMD_POSTCOPY_LISTEN`: no payload.
    PostcopyListen = 4,
    /// `MIG_CMD_POSTCOPY_RUN`: no payload.
    PostcopyRun = 5,
    /// `MIG_CMD_POSTCOPY_RAM_DISCARD`: see [`Discard`].
    PostcopyRamDiscard = 6,
    /// `MIG_CMD_PACKAGED`: `be32` length of the package that follows the command.
    Packaged = 7,
    /// `MIG_CMD_POSTCOPY_RESUME`: no payload.
    PostcopyResume = 9,
    /// `MIG_CMD_RECV_BITMAP`: `u8 len`, block name.
    RecvBitmap = 10,
}

impl Command {
    /// The command with this number, if known.
    pub const fn from_u16(v: u16) -> Option<Command> {
        Some(match v {
            1 => Command::OpenReturnPath,
            2 => Command::Ping,
            3 => Command::PostcopyAdvise,
            4 => Command::PostcopyListen,
            5 => Command::PostcopyRun,
            6 => Command::PostcopyRamDiscard,
            7 => Command::Packaged,
            9 => Command::PostcopyResume,
            10 => Command::RecvBitmap,
            _ => return None,
        })
    }

    /// The command number.
    pub const fn as_u16(self) -> u16 {
        self as u16
    }

    /// QEMU's name for the command.
    pub const fn name(self) -> &'static str {
        match self {
            Command::OpenReturnPath => "OPEN_RETURN_PATH",
            Command::Ping => "PING",
            Command::PostcopyAdvise => "POSTCOPY_ADVISE",
            Command::PostcopyListen => "POSTCOPY_LISTEN",
            Command::PostcopyRun => "POSTCOPY_RUN",
            Command::PostcopyRamDiscard => "POSTCOPY_RAM_DISCARD",
            Command::Packaged => "PACKAGED",
            Command::PostcopyResume => "POSTCOPY_RESUME",
            Command::RecvBitmap => "RECV_BITMAP",
        }
    }

    /// The payload lengths a command of this kind may have.
    pub const fn payload_len_rule(self) -> LenRule {
        match self {
            Command::OpenReturnPath
            | Command::PostcopyListen
            | Command::PostcopyRun
            | Command::PostcopyResume => LenRule::Exactly(0),
            Command::Ping | Command::Packaged => LenRule::Exactly(4),
            Command::PostcopyAdvise => LenRule::OneOf(0, ADVISE_PAYLOAD_LEN),
            Command::PostcopyRamDiscard => LenRule::AtLeast(DISCARD_MIN_PAYLOAD_LEN),
            Command::RecvBitmap => LenRule::Between(1, 1 + MAX_NAME_LEN),
        }
    }

    fn check_payload_len(self, len: usize) -> Result<(), WireError> {
        self.payload_len_rule().check(self.name(), len)
    }
}

/// A decoded command header: which command, and how long its payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandHeader {
    /// The command.
    pub cmd: Command,
    /// Payload length from the header (already checked against the command's rule).
    pub payload_len: u16,
}

impl CommandHeader {
    /// Bytes of the whole command, header included.
    pub fn total_len(&self) -> usize {
        COMMAND_HEADER_LEN + usize::from(self.payload_len)
    }
}

/// The page sizes of a `POSTCOPY_ADVISE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advise {
    /// OR of the page sizes of all RAM blocks.
    pub ram_pagesize_summary: u64,
    /// The target page size.
    pub target_page_size: u64,
}

/// One discard range, in bytes within the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DiscardRange {
    /// First byte.
    pub start: u64,
    /// Number of bytes (never 0 in a valid message).
    pub length: u64,
}

/// A validated `POSTCOPY_RAM_DISCARD` payload, borrowing the input bytes.
///
/// Its name is 1..=255 bytes without NUL, and it has at least one range, none empty or
/// overflowing. Alignment and block bounds depend on the block: see [`check_range`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discard<'a> {
    name: &'a [u8],
    ranges: &'a [u8],
}

impl<'a> Discard<'a> {
    /// The RAM block name (no terminator).
    pub fn name(&self) -> &'a [u8] {
        self.name
    }

    /// Number of ranges.
    pub fn range_count(&self) -> usize {
        self.ranges.len() / DISCARD_RANGE_LEN
    }

    /// Range `index`, if there is one.
    pub fn range(&self, index: usize) -> Option<DiscardRange> {
        let at = index.checked_mul(DISCARD_RANGE_LEN)?;
        let raw = self.ranges.get(at..at.checked_add(DISCARD_RANGE_LEN)?)?;
        let mut r = Reader::new(raw);
        Some(DiscardRange {
            start: r.be64().ok()?,
            length: r.be64().ok()?,
        })
    }

    /// The ranges, in message order.
    pub fn ranges(&self) -> DiscardRanges<'a> {
        DiscardRanges { raw: self.ranges }
    }

    /// Bytes of the payload.
    pub fn payload_len(&self) -> usize {
        3 + self.name.len() + self.ranges.len()
    }
}

/// Iterator over the ranges of a [`Discard`].
#[derive(Debug, Clone)]
pub struct DiscardRanges<'a> {
    raw: &'a [u8],
}

impl Iterator for DiscardRanges<'_> {
    type Item = DiscardRange;

    fn next(&mut self) -> Option<DiscardRange> {
        let head = self.raw.get(..DISCARD_RANGE_LEN)?;
        let mut r = Reader::new(head);
        let range = DiscardRange {
            start: r.be64().ok()?,
            length: r.be64().ok()?,
        };
        self.raw = self.raw.get(DISCARD_RANGE_LEN..).unwrap_or(&[]);
        Some(range)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.raw.len() / DISCARD_RANGE_LEN;
        (n, Some(n))
    }
}

impl ExactSizeIterator for DiscardRanges<'_> {}

/// A command, decoded or to be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandMsg<'a> {
    /// `OPEN_RETURN_PATH`.
    OpenReturnPath,
    /// `PING` with its value.
    Ping(u32),
    /// `POSTCOPY_ADVISE`, with or without page sizes.
    PostcopyAdvise(Option<Advise>),
    /// `POSTCOPY_LISTEN`.
    PostcopyListen,
    /// `POSTCOPY_RUN`.
    PostcopyRun,
    /// `POSTCOPY_RAM_DISCARD` (build one with [`encode_discard`]; this variant re-encodes a
    /// decoded one).
    PostcopyRamDiscard(Discard<'a>),
    /// `PACKAGED` with the package length.
    Packaged(u32),
    /// `POSTCOPY_RESUME`.
    PostcopyResume,
    /// `RECV_BITMAP` naming a block.
    RecvBitmap {
        /// The block name.
        name: &'a [u8],
    },
}

impl CommandMsg<'_> {
    /// The command number of this message.
    pub fn command(&self) -> Command {
        match self {
            CommandMsg::OpenReturnPath => Command::OpenReturnPath,
            CommandMsg::Ping(_) => Command::Ping,
            CommandMsg::PostcopyAdvise(_) => Command::PostcopyAdvise,
            CommandMsg::PostcopyListen => Command::PostcopyListen,
            CommandMsg::PostcopyRun => Command::PostcopyRun,
            CommandMsg::PostcopyRamDiscard(_) => Command::PostcopyRamDiscard,
            CommandMsg::Packaged(_) => Command::Packaged,
            CommandMsg::PostcopyResume => Command::PostcopyResume,
            CommandMsg::RecvBitmap { .. } => Command::RecvBitmap,
        }
    }

    /// Bytes of the payload.
    pub fn payload_len(&self) -> usize {
        match self {
            CommandMsg::OpenReturnPath
            | CommandMsg::PostcopyListen
            | CommandMsg::PostcopyRun
            | CommandMsg::PostcopyResume
            | CommandMsg::PostcopyAdvise(None) => 0,
            CommandMsg::Ping(_) | CommandMsg::Packaged(_) => 4,
            CommandMsg::PostcopyAdvise(Some(_)) => ADVISE_PAYLOAD_LEN,
            CommandMsg::PostcopyRamDiscard(d) => d.payload_len(),
            CommandMsg::RecvBitmap { name } => 1 + name.len(),
        }
    }

    /// Bytes of the whole command, header included.
    pub fn encoded_len(&self) -> usize {
        COMMAND_HEADER_LEN + self.payload_len()
    }
}

/// Writes a command header for `cmd` with a payload of `payload_len` bytes; returns 5.
/// The length must be one the command allows.
pub fn encode_command_header(
    buf: &mut [u8],
    cmd: Command,
    payload_len: usize,
) -> Result<usize, WireError> {
    cmd.check_payload_len(payload_len)?;
    let len = len16(cmd.name(), payload_len)?;
    let mut w = Writer::new(buf, COMMAND_HEADER_LEN)?;
    w.u8(QEMU_VM_COMMAND)?;
    w.be16(cmd.as_u16())?;
    w.be16(len)?;
    Ok(w.done())
}

/// Encodes a whole command; returns its length.
pub fn encode_command(buf: &mut [u8], msg: &CommandMsg<'_>) -> Result<usize, WireError> {
    let cmd = msg.command();
    if let CommandMsg::RecvBitmap { name } = msg {
        validate_name(name)?;
    }
    let payload_len = msg.payload_len();
    cmd.check_payload_len(payload_len)?;
    let len = len16(cmd.name(), payload_len)?;
    let mut w = Writer::new(buf, COMMAND_HEADER_LEN + payload_len)?;
    w.u8(QEMU_VM_COMMAND)?;
    w.be16(cmd.as_u16())?;
    w.be16(len)?;
    match msg {
        CommandMsg::OpenReturnPath
        | CommandMsg::PostcopyListen
        | CommandMsg::PostcopyRun
        | CommandMsg::PostcopyResume
        | CommandMsg::PostcopyAdvise(None) => {}
        CommandMsg::Ping(v) | CommandMsg::Packaged(v) => w.be32(*v)?,
        CommandMsg::PostcopyAdvise(Some(a)) => {
            w.be64(a.ram_pagesize_summary)?;
            w.be64(a.target_page_size)?;
        }
        CommandMsg::PostcopyRamDiscard(d) => {
            w.u8(DISCARD_VERSION)?;
            w.u8(d.name.len() as u8)?;
            w.put(d.name)?;
            w.u8(0)?;
            w.put(d.ranges)?;
        }
        CommandMsg::RecvBitmap { name } => {
            w.u8(name.len() as u8)?;
            w.put(name)?;
        }
    }
    Ok(w.done())
}

/// Payload length of a discard with a `name_len`-byte name and `count` ranges.
pub const fn discard_payload_len(name_len: usize, count: usize) -> usize {
    3 + name_len + DISCARD_RANGE_LEN * count
}

/// Encodes a `POSTCOPY_RAM_DISCARD` command for block `name` with `ranges` (bytes within the
/// block); returns its length. QEMU sends at most [`MAX_DISCARDS_PER_COMMAND`] ranges per
/// command; more are allowed here as long as the payload fits its 16-bit length.
pub fn encode_discard(
    buf: &mut [u8],
    name: &[u8],
    ranges: &[DiscardRange],
) -> Result<usize, WireError> {
    encode_discard_with(buf, name, ranges.len(), |i| ranges.get(i).copied())
}

/// Like [`encode_discard`] with the ranges as two parallel arrays (QEMU's form).
pub fn encode_discard_pairs(
    buf: &mut [u8],
    name: &[u8],
    starts: &[u64],
    lengths: &[u64],
) -> Result<usize, WireError> {
    if starts.len() != lengths.len() {
        return Err(WireError::RangeCountMismatch {
            starts: starts.len(),
            lengths: lengths.len(),
        });
    }
    encode_discard_with(buf, name, starts.len(), |i| {
        Some(DiscardRange {
            start: *starts.get(i)?,
            length: *lengths.get(i)?,
        })
    })
}

fn encode_discard_with(
    buf: &mut [u8],
    name: &[u8],
    count: usize,
    range: impl Fn(usize) -> Option<DiscardRange>,
) -> Result<usize, WireError> {
    const WHAT: &str = "POSTCOPY_RAM_DISCARD";
    validate_name(name)?;
    if count == 0 {
        return Err(WireError::NoRanges);
    }
    for index in 0..count {
        let r = range(index).ok_or(WireError::NoRanges)?;
        check_discard_range(index, r)?;
    }
    let payload_len = name
        .len()
        .checked_add(3)
        .and_then(|n| count.checked_mul(DISCARD_RANGE_LEN)?.checked_add(n))
        .ok_or(WireError::PayloadTooLong {
            what: WHAT,
            len: usize::MAX,
        })?;
    let len = len16(WHAT, payload_len)?;
    let mut w = Writer::new(buf, COMMAND_HEADER_LEN + payload_len)?;
    w.u8(QEMU_VM_COMMAND)?;
    w.be16(Command::PostcopyRamDiscard.as_u16())?;
    w.be16(len)?;
    w.u8(DISCARD_VERSION)?;
    w.u8(name.len() as u8)?;
    w.put(name)?;
    w.u8(0)?;
    for index in 0..count {
        let r = range(index).ok_or(WireError::NoRanges)?;
        w.be64(r.start)?;
        w.be64(r.length)?;
    }
    Ok(w.done())
}

fn check_discard_range(index: usize, r: DiscardRange) -> Result<(), WireError> {
    if r.length == 0 {
        return Err(WireError::ZeroLengthRange { index });
    }
    if r.start.checked_add(r.length).is_none() {
        return Err(WireError::RangeOverflow {
            index,
            start: r.start,
            length: r.length,
        });
    }
    Ok(())
}

/// Decodes a command header from the first [`COMMAND_HEADER_LEN`] bytes of `buf`: checks
/// the marker, the command number and that the length is one the command allows.
pub fn decode_command_header(buf: &[u8]) -> Result<CommandHeader, WireError> {
    let mut r = Reader::new(buf);
    let marker = r.u8()?;
    if marker != QEMU_VM_COMMAND {
        return Err(WireError::BadCommandMarker(marker));
    }
    let raw = r.be16()?;
    let payload_len = r.be16()?;
    let cmd = Command::from_u16(raw).ok_or(WireError::UnknownCommand(raw))?;
    cmd.check_payload_len(usize::from(payload_len))?;
    Ok(CommandHeader { cmd, payload_len })
}

/// Decodes the payload of a command `cmd`; `payload` must be exactly the payload.
pub fn decode_command_payload(cmd: Command, payload: &[u8]) -> Result<CommandMsg<'_>, WireError> {
    cmd.check_payload_len(payload.len())?;
    let mut r = Reader::new(payload);
    let msg = match cmd {
        Command::OpenReturnPath => CommandMsg::OpenReturnPath,
        Command::PostcopyListen => CommandMsg::PostcopyListen,
        Command::PostcopyRun => CommandMsg::PostcopyRun,
        Command::PostcopyResume => CommandMsg::PostcopyResume,
        Command::Ping => CommandMsg::Ping(r.be32()?),
        Command::Packaged => CommandMsg::Packaged(r.be32()?),
        Command::PostcopyAdvise => {
            if payload.is_empty() {
                CommandMsg::PostcopyAdvise(None)
            } else {
                CommandMsg::PostcopyAdvise(Some(Advise {
                    ram_pagesize_summary: r.be64()?,
                    target_page_size: r.be64()?,
                }))
            }
        }
        Command::PostcopyRamDiscard => {
            CommandMsg::PostcopyRamDiscard(decode_discard_payload(payload)?)
        }
        Command::RecvBitmap => {
            let name = decode_counted_name(&mut r, cmd.name())?;
            CommandMsg::RecvBitmap { name }
        }
    };
    Ok(msg)
}

/// Reads `u8 len` + name, which must end exactly at the end of the reader's input.
fn decode_counted_name<'a>(r: &mut Reader<'a>, what: &'static str) -> Result<&'a [u8], WireError> {
    let len = usize::from(r.u8()?);
    if r.remaining() != len {
        return Err(WireError::LengthMismatch {
            what,
            found: r.buf.len(),
            expected: LenRule::Exactly(r.pos + len),
        });
    }
    let name = r.take(len)?;
    validate_name(name)?;
    Ok(name)
}

/// Decodes a `POSTCOPY_RAM_DISCARD` payload (without the command header).
///
/// Checks, in order: version 0, a name of 1..=255 bytes without NUL, the 0 terminator, a
/// whole number (at least one) of 16-byte ranges, and that no range is empty or overflows.
pub fn decode_discard_payload(payload: &[u8]) -> Result<Discard<'_>, WireError> {
    let mut r = Reader::new(payload);
    let version = r.u8()?;
    if version != DISCARD_VERSION {
        return Err(WireError::BadVersion(version));
    }
    let name_len = usize::from(r.u8()?);
    if name_len == 0 {
        return Err(WireError::EmptyName);
    }
    let name = r.take(name_len)?;
    validate_name(name)?;
    let term = r.u8()?;
    if term != 0 {
        return Err(WireError::MissingTerminator(term));
    }
    let ranges = r.rest();
    if ranges.len() % DISCARD_RANGE_LEN != 0 {
        return Err(WireError::DiscardLengthNotMultipleOf16(ranges.len()));
    }
    if ranges.is_empty() {
        return Err(WireError::NoRanges);
    }
    let discard = Discard { name, ranges };
    for (index, range) in discard.ranges().enumerate() {
        check_discard_range(index, range)?;
    }
    Ok(discard)
}

/// Decodes one whole command from the start of `buf`; returns it and its length in bytes
/// (bytes after it are left alone).
pub fn decode_command(buf: &[u8]) -> Result<(CommandMsg<'_>, usize), WireError> {
    let header = decode_command_header(buf)?;
    let total = header.total_len();
    let payload = buf
        .get(COMMAND_HEADER_LEN..total)
        .ok_or(WireError::Truncated {
            needed: total,
            available: buf.len(),
        })?;
    Ok((decode_command_payload(header.cmd, payload)?, total))
}

// ---------------------------------------------------------------------------------------
// Return path (destination -> source).

/// Return-path message types (`be16 type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ReturnPathType {
    /// `MIG_RP_MSG_SHUT`: `be32` failed flag.
    Shut = 1,
    /// `MIG_RP_MSG_PONG`: `be32` value of the PING.
    Pong = 2,
    /// `MIG_RP_MSG_REQ_PAGES_ID`: `be64 start`, `be32 len`, `u8 idlen`, id.
    ReqPagesId = 3,
    /// `MIG_RP_MSG_REQ_PAGES`: `be64 start`, `be32 len` (block = the last one named).
    ReqPages = 4,
    /// `MIG_RP_MSG_RECV_BITMAP`: `u8 len`, block name; the bitmap block follows.
    RecvBitmap = 5,
    /// `MIG_RP_MSG_RESUME_ACK`: `be32` value.
    ResumeAck = 6,
}

impl ReturnPathType {
    /// The type with this number, if known.
    pub const fn from_u16(v: u16) -> Option<ReturnPathType> {
        Some(match v {
            1 => ReturnPathType::Shut,
            2 => ReturnPathType::Pong,
            3 => ReturnPathType::ReqPagesId,
            4 => ReturnPathType::ReqPages,
            5 => ReturnPathType::RecvBitmap,
            6 => ReturnPathType::ResumeAck,
            _ => return None,
        })
    }

    /// The type number.
    pub const fn as_u16(self) -> u16 {
        self as u16
    }

    /// QEMU's name for the type.
    pub const fn name(self) -> &'static str {
        match self {
            ReturnPathType::Shut => "SHUT",
            ReturnPathType::Pong => "PONG",
            ReturnPathType::ReqPagesId => "REQ_PAGES_ID",
            ReturnPathType::ReqPages => "REQ_PAGES",
            ReturnPathType::RecvBitmap => "RECV_BITMAP",
            ReturnPathType::ResumeAck => "RESUME_ACK",
        }
    }

    /// The payload lengths a message of this type may have (all within
    /// [`RETURN_PATH_MAX_LEN`]).
    pub const fn payload_len_rule(self) -> LenRule {
        match self {
            ReturnPathType::Shut | ReturnPathType::Pong | ReturnPathType::ResumeAck => {
                LenRule::Exactly(4)
            }
            ReturnPathType::ReqPages => LenRule::Exactly(REQ_PAGES_LEN),
            ReturnPathType::ReqPagesId => {
                LenRule::Between(REQ_PAGES_LEN + 1, REQ_PAGES_LEN + 1 + MAX_NAME_LEN)
            }
            ReturnPathType::RecvBitmap => LenRule::Between(1, 1 + MAX_NAME_LEN),
        }
    }

    fn check_payload_len(self, len: usize) -> Result<(), WireError> {
        self.payload_len_rule().check(self.name(), len)
    }
}

/// A decoded return-path header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReturnPathHeader {
    /// The message type.
    pub rp_type: ReturnPathType,
    /// Payload length from the header (already checked against the type's rule).
    pub payload_len: u16,
}

impl ReturnPathHeader {
    /// Bytes of the whole message, header included.
    pub fn total_len(&self) -> usize {
        RETURN_PATH_HEADER_LEN + usize::from(self.payload_len)
    }
}

/// A return-path message, decoded or to be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnPathMsg<'a> {
    /// `SHUT`: the destination is done; `failed` nonzero if it failed.
    Shut {
        /// Failure flag (QEMU sends 0 or 1).
        failed: u32,
    },
    /// `PONG` answering a PING with this value.
    Pong(u32),
    /// `REQ_PAGES`: bytes `start..start+len` of the block named last.
    ReqPages {
        /// Offset within the block.
        start: u64,
        /// Bytes requested (never 0).
        len: u32,
    },
    /// `REQ_PAGES_ID`: bytes `start..start+len` of block `id`.
    ReqPagesId {
        /// Offset within the block.
        start: u64,
        /// Bytes requested (never 0).
        len: u32,
        /// The block name.
        id: &'a [u8],
    },
    /// `RECV_BITMAP` naming the block whose received bitmap follows.
    RecvBitmap {
        /// The block name.
        name: &'a [u8],
    },
    /// `RESUME_ACK` with its value.
    ResumeAck(u32),
}

impl ReturnPathMsg<'_> {
    /// The type of this message.
    pub fn rp_type(&self) -> ReturnPathType {
        match self {
            ReturnPathMsg::Shut { .. } => ReturnPathType::Shut,
            ReturnPathMsg::Pong(_) => ReturnPathType::Pong,
            ReturnPathMsg::ReqPages { .. } => ReturnPathType::ReqPages,
            ReturnPathMsg::ReqPagesId { .. } => ReturnPathType::ReqPagesId,
            ReturnPathMsg::RecvBitmap { .. } => ReturnPathType::RecvBitmap,
            ReturnPathMsg::ResumeAck(_) => ReturnPathType::ResumeAck,
        }
    }

    /// Bytes of the payload.
    pub fn payload_len(&self) -> usize {
        match self {
            ReturnPathMsg::Shut { .. } | ReturnPathMsg::Pong(_) | ReturnPathMsg::ResumeAck(_) => 4,
            ReturnPathMsg::ReqPages { .. } => REQ_PAGES_LEN,
            ReturnPathMsg::ReqPagesId { id, .. } => REQ_PAGES_LEN + 1 + id.len(),
            ReturnPathMsg::RecvBitmap { name } => 1 + name.len(),
        }
    }

    /// Bytes of the whole message, header included.
    pub fn encoded_len(&self) -> usize {
        RETURN_PATH_HEADER_LEN + self.payload_len()
    }
}

fn check_request(start: u64, len: u32) -> Result<(), WireError> {
    if len == 0 {
        return Err(WireError::ZeroLengthRange { index: 0 });
    }
    if start.checked_add(u64::from(len)).is_none() {
        return Err(WireError::RangeOverflow {
            index: 0,
            start,
            length: u64::from(len),
        });
    }
    Ok(())
}

/// Encodes a whole return-path message; returns its length.
pub fn encode_return_path(buf: &mut [u8], msg: &ReturnPathMsg<'_>) -> Result<usize, WireError> {
    match *msg {
        ReturnPathMsg::ReqPages { start, len } => check_request(start, len)?,
        ReturnPathMsg::ReqPagesId { start, len, id } => {
            validate_name(id)?;
            check_request(start, len)?;
        }
        ReturnPathMsg::RecvBitmap { name } => validate_name(name)?,
        ReturnPathMsg::Shut { .. } | ReturnPathMsg::Pong(_) | ReturnPathMsg::ResumeAck(_) => {}
    }
    let ty = msg.rp_type();
    let payload_len = msg.payload_len();
    ty.check_payload_len(payload_len)?;
    let len = len16(ty.name(), payload_len)?;
    let mut w = Writer::new(buf, RETURN_PATH_HEADER_LEN + payload_len)?;
    w.be16(ty.as_u16())?;
    w.be16(len)?;
    match *msg {
        ReturnPathMsg::Shut { failed: v }
        | ReturnPathMsg::Pong(v)
        | ReturnPathMsg::ResumeAck(v) => w.be32(v)?,
        ReturnPathMsg::ReqPages { start, len } => {
            w.be64(start)?;
            w.be32(len)?;
        }
        ReturnPathMsg::ReqPagesId { start, len, id } => {
            w.be64(start)?;
            w.be32(len)?;
            w.u8(id.len() as u8)?;
            w.put(id)?;
        }
        ReturnPathMsg::RecvBitmap { name } => {
            w.u8(name.len() as u8)?;
            w.put(name)?;
        }
    }
    Ok(w.done())
}

/// Decodes a return-path header from the first [`RETURN_PATH_HEADER_LEN`] bytes of `buf`:
/// checks the type and that the length is one the type allows.
pub fn decode_return_path_header(buf: &[u8]) -> Result<ReturnPathHeader, WireError> {
    let mut r = Reader::new(buf);
    let raw = r.be16()?;
    let payload_len = r.be16()?;
    let rp_type = ReturnPathType::from_u16(raw).ok_or(WireError::UnknownReturnPathType(raw))?;
    rp_type.check_payload_len(usize::from(payload_len))?;
    Ok(ReturnPathHeader {
        rp_type,
        payload_len,
    })
}

/// Decodes the payload of a return-path message of type `rp_type`; `payload` must be
/// exactly the payload.
pub fn decode_return_path_payload(
    rp_type: ReturnPathType,
    payload: &[u8],
) -> Result<ReturnPathMsg<'_>, WireError> {
    rp_type.check_payload_len(payload.len())?;
    let mut r = Reader::new(payload);
    let msg = match rp_type {
        ReturnPathType::Shut => ReturnPathMsg::Shut { failed: r.be32()? },
        ReturnPathType::Pong => ReturnPathMsg::Pong(r.be32()?),
        ReturnPathType::ResumeAck => ReturnPathMsg::ResumeAck(r.be32()?),
        ReturnPathType::ReqPages => {
            let start = r.be64()?;
            let len = r.be32()?;
            check_request(start, len)?;
            ReturnPathMsg::ReqPages { start, len }
        }
        ReturnPathType::ReqPagesId => {
            let start = r.be64()?;
            let len = r.be32()?;
            let id = decode_counted_name(&mut r, rp_type.name())?;
            check_request(start, len)?;
            ReturnPathMsg::ReqPagesId { start, len, id }
        }
        ReturnPathType::RecvBitmap => ReturnPathMsg::RecvBitmap {
            name: decode_counted_name(&mut r, rp_type.name())?,
        },
    };
    Ok(msg)
}

/// Decodes one whole return-path message from the start of `buf`; returns it and its
/// length in bytes (bytes after it are left alone).
pub fn decode_return_path(buf: &[u8]) -> Result<(ReturnPathMsg<'_>, usize), WireError> {
    let header = decode_return_path_header(buf)?;
    let total = header.total_len();
    let payload = buf
        .get(RETURN_PATH_HEADER_LEN..total)
        .ok_or(WireError::Truncated {
            needed: total,
            available: buf.len(),
        })?;
    Ok((decode_return_path_payload(header.rp_type, payload)?, total))
}

// ---------------------------------------------------------------------------------------
// Received-bitmap block.

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
