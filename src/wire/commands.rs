//! Commands (source -> destination).

use super::cursor::{len16, Reader, Writer};
use super::*;

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
    /// `MIG_CMD_ENABLE_COLO`: no payload (COLO, not postcopy; known so that a reader can
    /// step over it).
    EnableColo = 8,
    /// `MIG_CMD_POSTCOPY_RESUME`: no payload.
    PostcopyResume = 9,
    /// `MIG_CMD_RECV_BITMAP`: `u8 len`, block name.
    RecvBitmap = 10,
    /// `MIG_CMD_SWITCHOVER_START` (QEMU 10.0): no payload; marks the switchover point in
    /// the main stream.
    SwitchoverStart = 11,
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
            8 => Command::EnableColo,
            9 => Command::PostcopyResume,
            10 => Command::RecvBitmap,
            11 => Command::SwitchoverStart,
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
            Command::EnableColo => "ENABLE_COLO",
            Command::PostcopyResume => "POSTCOPY_RESUME",
            Command::RecvBitmap => "RECV_BITMAP",
            Command::SwitchoverStart => "SWITCHOVER_START",
        }
    }

    /// The payload lengths a command of this kind may have.
    pub const fn payload_len_rule(self) -> LenRule {
        match self {
            Command::OpenReturnPath
            | Command::PostcopyListen
            | Command::PostcopyRun
            | Command::EnableColo
            | Command::PostcopyResume
            | Command::SwitchoverStart => LenRule::Exactly(0),
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
    /// `ENABLE_COLO`.
    EnableColo,
    /// `POSTCOPY_RESUME`.
    PostcopyResume,
    /// `SWITCHOVER_START`.
    SwitchoverStart,
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
            CommandMsg::EnableColo => Command::EnableColo,
            CommandMsg::PostcopyResume => Command::PostcopyResume,
            CommandMsg::SwitchoverStart => Command::SwitchoverStart,
            CommandMsg::RecvBitmap { .. } => Command::RecvBitmap,
        }
    }

    /// Bytes of the payload.
    pub fn payload_len(&self) -> usize {
        match self {
            CommandMsg::OpenReturnPath
            | CommandMsg::PostcopyListen
            | CommandMsg::PostcopyRun
            | CommandMsg::EnableColo
            | CommandMsg::PostcopyResume
            | CommandMsg::SwitchoverStart
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
        | CommandMsg::EnableColo
        | CommandMsg::PostcopyResume
        | CommandMsg::SwitchoverStart
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

pub(super) fn encode_discard_with(
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

pub(super) fn check_discard_range(index: usize, r: DiscardRange) -> Result<(), WireError> {
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
        Command::EnableColo => CommandMsg::EnableColo,
        Command::SwitchoverStart => CommandMsg::SwitchoverStart,
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
pub(super) fn decode_counted_name<'a>(
    r: &mut Reader<'a>,
    what: &'static str,
) -> Result<&'a [u8], WireError> {
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
/// whole number (at least one) of 16-byte ranges, and that no range overflows. Empty
/// ranges are accepted: QEMU 2.6-2.9 sources end a block whose last page is clean with
/// `(block_length, 0)`, which QEMU's destination takes (a 0-byte madvise). The encoders
/// never write one.
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
        match check_discard_range(index, range) {
            Ok(()) | Err(WireError::ZeroLengthRange { .. }) => {}
            Err(e) => return Err(e),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discard_command_is_byte_exact() {
        let mut buf = [0u8; 64];
        let n = encode_discard_pairs(&mut buf, b"ram", &[0x1000], &[0x2000]).unwrap();
        let want: &[u8] = &[
            0x08, 0x00, 0x06, 0x00, 0x16, // envelope: POSTCOPY_RAM_DISCARD, 22 bytes
            0x00, 0x03, b'r', b'a', b'm', 0x00, // version 0, name length, name, terminator
            0, 0, 0, 0, 0, 0, 0x10, 0, // start
            0, 0, 0, 0, 0, 0, 0x20, 0, // length
        ];
        assert_eq!(&buf[..n], want);
        let (msg, used) = decode_command(want).unwrap();
        assert_eq!(used, want.len());
        let CommandMsg::PostcopyRamDiscard(d) = msg else {
            panic!("{msg:?}")
        };
        assert_eq!(d.name(), b"ram");
        assert_eq!(
            d.ranges().collect::<Vec<_>>(),
            vec![DiscardRange {
                start: 0x1000,
                length: 0x2000
            }]
        );
    }

    #[test]
    fn the_header_alone_tells_the_message_length() {
        let mut buf = [0u8; 16];
        let n = encode_command(&mut buf, &CommandMsg::Ping(7)).unwrap();
        assert_eq!(&buf[..n], &[0x08, 0, 2, 0, 4, 0, 0, 0, 7]);
        let h = decode_command_header(&buf[..COMMAND_HEADER_LEN]).unwrap();
        assert_eq!((h.cmd, h.payload_len, h.total_len()), (Command::Ping, 4, n));
        // A PING of 3 bytes cannot exist: refused from the header.
        assert!(matches!(
            decode_command_header(&[0x08, 0, 2, 0, 3]),
            Err(WireError::LengthMismatch { .. })
        ));
        assert_eq!(
            decode_command_header(&[0x07, 0, 2, 0, 4]),
            Err(WireError::BadCommandMarker(7))
        );
    }
}
