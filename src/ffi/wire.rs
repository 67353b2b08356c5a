//! C exports of the wire codecs (`postcopy_wire_*`) and of the discard walk
//! (`postcopy_discard_walk`): thin wrappers over [`crate::wire`] and [`crate::discard_walk`].
//!
//! Encoders return the number of bytes written or a negative errno (`-ENOSPC` when the
//! buffer is too small, `-EINVAL` for bad arguments). Decoders take a whole message from
//! the start of the input, fill a caller-provided struct and return the number of bytes
//! the message has, or a negative errno (`-EBADMSG` for malformed bytes, `-EINVAL` for
//! unacceptable values). Every failure is logged as one line naming the cause.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ops::ControlFlow;

use super::guard::guard;
use crate::discard_walk;
use crate::wire::{self, Advise, Command, CommandMsg, ReturnPathMsg, ReturnPathType, WireError};

/// Command numbers of the command envelope (`PostcopyWireCommand.cmd`,
/// `PostcopyWireHeader.kind`).
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum PostcopyWireCmd {
    /// OPEN_RETURN_PATH: no payload.
    POSTCOPY_WIRE_CMD_OPEN_RETURN_PATH = 1,
    /// PING: `value`.
    POSTCOPY_WIRE_CMD_PING = 2,
    /// POSTCOPY_ADVISE: empty, or the two page sizes when `has_page_sizes`.
    POSTCOPY_WIRE_CMD_POSTCOPY_ADVISE = 3,
    /// POSTCOPY_LISTEN: no payload.
    POSTCOPY_WIRE_CMD_POSTCOPY_LISTEN = 4,
    /// POSTCOPY_RUN: no payload.
    POSTCOPY_WIRE_CMD_POSTCOPY_RUN = 5,
    /// POSTCOPY_RAM_DISCARD: block name and ranges (postcopy_wire_encode_discard /
    /// postcopy_wire_decode_discard).
    POSTCOPY_WIRE_CMD_POSTCOPY_RAM_DISCARD = 6,
    /// PACKAGED: `value` is the length of the package that follows.
    POSTCOPY_WIRE_CMD_PACKAGED = 7,
    /// POSTCOPY_RESUME: no payload.
    POSTCOPY_WIRE_CMD_POSTCOPY_RESUME = 9,
    /// RECV_BITMAP: block name.
    POSTCOPY_WIRE_CMD_RECV_BITMAP = 10,
}

/// Return-path message types (`PostcopyWireRpMessage.rp_type`, `PostcopyWireHeader.kind`).
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum PostcopyWireRpType {
    /// SHUT: `value` is the failed flag.
    POSTCOPY_WIRE_RP_SHUT = 1,
    /// PONG: `value` of the PING.
    POSTCOPY_WIRE_RP_PONG = 2,
    /// REQ_PAGES_ID: `start`, `len` and the block `name`.
    POSTCOPY_WIRE_RP_REQ_PAGES_ID = 3,
    /// REQ_PAGES: `start`, `len` (block = the one named last).
    POSTCOPY_WIRE_RP_REQ_PAGES = 4,
    /// RECV_BITMAP: block `name`; the received-bitmap block follows on the stream.
    POSTCOPY_WIRE_RP_RECV_BITMAP = 5,
    /// RESUME_ACK: `value`.
    POSTCOPY_WIRE_RP_RESUME_ACK = 6,
}

// The C numbers are the codec's numbers.
const _: () = {
    use PostcopyWireCmd as C;
    assert!(C::POSTCOPY_WIRE_CMD_OPEN_RETURN_PATH as u16 == Command::OpenReturnPath as u16);
    assert!(C::POSTCOPY_WIRE_CMD_PING as u16 == Command::Ping as u16);
    assert!(C::POSTCOPY_WIRE_CMD_POSTCOPY_ADVISE as u16 == Command::PostcopyAdvise as u16);
    assert!(C::POSTCOPY_WIRE_CMD_POSTCOPY_LISTEN as u16 == Command::PostcopyListen as u16);
    assert!(C::POSTCOPY_WIRE_CMD_POSTCOPY_RUN as u16 == Command::PostcopyRun as u16);
    assert!(C::POSTCOPY_WIRE_CMD_POSTCOPY_RAM_DISCARD as u16 == Command::PostcopyRamDiscard as u16);
    assert!(C::POSTCOPY_WIRE_CMD_PACKAGED as u16 == Command::Packaged as u16);
    assert!(C::POSTCOPY_WIRE_CMD_POSTCOPY_RESUME as u16 == Command::PostcopyResume as u16);
    assert!(C::POSTCOPY_WIRE_CMD_RECV_BITMAP as u16 == Command::RecvBitmap as u16);
    use PostcopyWireRpType as R;
    assert!(R::POSTCOPY_WIRE_RP_SHUT as u16 == ReturnPathType::Shut as u16);
    assert!(R::POSTCOPY_WIRE_RP_PONG as u16 == ReturnPathType::Pong as u16);
    assert!(R::POSTCOPY_WIRE_RP_REQ_PAGES_ID as u16 == ReturnPathType::ReqPagesId as u16);
    assert!(R::POSTCOPY_WIRE_RP_REQ_PAGES as u16 == ReturnPathType::ReqPages as u16);
    assert!(R::POSTCOPY_WIRE_RP_RECV_BITMAP as u16 == ReturnPathType::RecvBitmap as u16);
    assert!(R::POSTCOPY_WIRE_RP_RESUME_ACK as u16 == ReturnPathType::ResumeAck as u16);
};

/// A decoded message header: tells a stream reader how many bytes the whole message has.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PostcopyWireHeader {
    /// Command number (`POSTCOPY_WIRE_CMD_*`) or return-path type (`POSTCOPY_WIRE_RP_*`).
    pub kind: u16,
    /// Payload length from the header (already checked against the kind).
    pub payload_len: u16,
    /// Bytes of the whole message, header included.
    pub total_len: usize,
}

/// A command other than POSTCOPY_RAM_DISCARD to encode, or any decoded command. Fields
/// that the command does not use are ignored when encoding and zeroed when decoding.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PostcopyWireCommand {
    /// `POSTCOPY_WIRE_CMD_*`.
    pub cmd: u16,
    /// PING: its value. PACKAGED: the package length.
    pub value: u32,
    /// POSTCOPY_ADVISE: nonzero when the payload carries the two page sizes (decode: 1 or 0).
    pub has_page_sizes: u8,
    /// POSTCOPY_ADVISE: OR of all RAM block page sizes.
    pub ram_pagesize_summary: u64,
    /// POSTCOPY_ADVISE: target page size.
    pub target_page_size: u64,
    /// RECV_BITMAP, POSTCOPY_RAM_DISCARD: block name, `name_len` bytes, not NUL-terminated
    /// (decode: points into the input buffer).
    pub name: *const c_char,
    /// Bytes of `name` (1 to 255).
    pub name_len: usize,
    /// POSTCOPY_RAM_DISCARD (decode only): number of ranges; postcopy_wire_decode_discard
    /// returns them.
    pub range_count: usize,
}

/// The block name and range count of a decoded POSTCOPY_RAM_DISCARD.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PostcopyWireDiscard {
    /// Block name, `name_len` bytes, not NUL-terminated; points into the input buffer.
    pub name: *const c_char,
    /// Bytes of `name` (1 to 255).
    pub name_len: usize,
    /// Number of ranges in the message (may exceed the caller's capacity).
    pub range_count: usize,
}

/// A return-path message to encode, or a decoded one. Fields that the type does not use are
/// ignored when encoding and zeroed when decoding.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PostcopyWireRpMessage {
    /// `POSTCOPY_WIRE_RP_*`.
    pub rp_type: u16,
    /// SHUT: failed flag. PONG: the PING's value. RESUME_ACK: its value.
    pub value: u32,
    /// REQ_PAGES, REQ_PAGES_ID: byte offset within the block.
    pub start: u64,
    /// REQ_PAGES, REQ_PAGES_ID: bytes requested (not 0).
    pub len: u32,
    /// REQ_PAGES_ID, RECV_BITMAP: block name, `name_len` bytes, not NUL-terminated (decode:
    /// points into the input buffer).
    pub name: *const c_char,
    /// Bytes of `name` (1 to 255).
    pub name_len: usize,
}

/// Discard-walk callback: called once per run of pages to discard, in ascending order.
/// A nonzero return stops the walk, and postcopy_discard_walk returns that value.
pub type PostcopyDiscardWalkFn =
    Option<unsafe extern "C" fn(opaque: *mut c_void, start: u64, npages: u64) -> c_int>;

// ---------------------------------------------------------------------------------------
// Argument checks: each logs one line naming the export and the cause.

fn einval(what: &str, cause: &str) -> i32 {
    log::error!("{what}: {cause}");
    -libc::EINVAL
}

fn wire_err(what: &str, e: WireError) -> i32 {
    log::error!("{what}: {e}");
    e.to_errno()
}

/// Refuses (with one log line) a NULL pointer, or a length whose byte size overflows isize.
fn check_ptr_len<T>(what: &str, arg: &str, is_null: bool, len: usize) -> Result<(), i32> {
    if is_null {
        return Err(einval(what, &format!("{arg} is NULL")));
    }
    if len
        .checked_mul(std::mem::size_of::<T>())
        .map_or(true, |b| b > isize::MAX as usize)
    {
        return Err(einval(what, &format!("{arg} length {len} is too large")));
    }
    Ok(())
}

/// The input of a decoder: `out` must not be NULL, `buf` is `len` readable bytes.
///
/// # Safety
/// As [`in_slice`] for `buf`.
unsafe fn decoder_input<'a, T>(
    what: &str,
    buf: *const u8,
    len: usize,
    out: *mut T,
) -> Result<&'a [u8], i32> {
    if out.is_null() {
        return Err(einval(what, "out is NULL"));
    }
    // SAFETY: forwarded from the caller.
    unsafe { in_slice(what, "buf", buf, len) }
}

/// `len` bytes at `ptr` as a slice; an error (logged) when `ptr` is NULL or `len` too large.
///
/// # Safety
/// Unless NULL, `ptr` must point to `len` readable bytes that stay valid and unmodified for
/// `'a`.
unsafe fn in_slice<'a, T>(
    what: &str,
    arg: &str,
    ptr: *const T,
    len: usize,
) -> Result<&'a [T], i32> {
    check_ptr_len::<T>(what, arg, ptr.is_null(), len)?;
    // SAFETY: non-NULL and of a valid size (checked above); the caller guarantees the rest.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// `len` elements at `ptr` as a mutable slice; an error (logged) when NULL or too large.
///
/// # Safety
/// Unless NULL, `ptr` must point to `len` writable elements, not otherwise accessed during
/// `'a`.
unsafe fn out_slice<'a, T>(
    what: &str,
    arg: &str,
    ptr: *mut T,
    len: usize,
) -> Result<&'a mut [T], i32> {
    check_ptr_len::<T>(what, arg, ptr.is_null(), len)?;
    // SAFETY: non-NULL and of a valid size (checked above); the caller guarantees the rest.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// A name given as pointer + length; NULL is allowed only with length 0 (the codec then
/// reports the empty name).
///
/// # Safety
/// As [`in_slice`].
unsafe fn in_name<'a>(what: &str, ptr: *const c_char, len: usize) -> Result<&'a [u8], i32> {
    if ptr.is_null() && len == 0 {
        return Ok(&[]);
    }
    // SAFETY: forwarded from the caller.
    unsafe { in_slice(what, "name", ptr.cast::<u8>(), len) }
}

fn ok_len(n: usize) -> isize {
    // Lengths come from slices, which never exceed isize::MAX bytes.
    isize::try_from(n).unwrap_or(isize::MAX)
}

fn done(r: Result<usize, i32>) -> isize {
    match r {
        Ok(n) => ok_len(n),
        Err(e) => e as isize,
    }
}

// ---------------------------------------------------------------------------------------
// Commands.

/// Encodes the command `*msg` (any but POSTCOPY_RAM_DISCARD, see
/// postcopy_wire_encode_discard) into `buf`, envelope included. Returns the bytes written,
/// -ENOSPC when `buf_len` is too small, -EINVAL for NULL pointers, an unknown command or a
/// bad name.
#[no_mangle]
pub extern "C" fn postcopy_wire_encode_command(
    buf: *mut u8,
    buf_len: usize,
    msg: *const PostcopyWireCommand,
) -> isize {
    guard("postcopy_wire_encode_command", || {
        // SAFETY: the C caller upholds the pointer contract documented above.
        done(unsafe { postcopy_wire_encode_command_impl(buf, buf_len, msg) })
    })
}

/// # Safety
/// The pointer contract of the export of the same name (its documentation).
unsafe fn postcopy_wire_encode_command_impl(
    buf: *mut u8,
    buf_len: usize,
    msg: *const PostcopyWireCommand,
) -> Result<usize, i32> {
    const WHAT: &str = "postcopy_wire_encode_command";
    if msg.is_null() {
        return Err(einval(WHAT, "msg is NULL"));
    }
    // SAFETY: non-NULL; the caller passes a valid PostcopyWireCommand.
    let m = unsafe { &*msg };
    let cmd = match Command::from_u16(m.cmd) {
        Some(Command::PostcopyRamDiscard) => {
            return Err(einval(
                WHAT,
                "POSTCOPY_RAM_DISCARD needs postcopy_wire_encode_discard",
            ));
        }
        Some(c) => c,
        None => return Err(einval(WHAT, &format!("unknown command {}", m.cmd))),
    };
    let cm = match cmd {
        Command::OpenReturnPath => CommandMsg::OpenReturnPath,
        Command::Ping => CommandMsg::Ping(m.value),
        Command::PostcopyAdvise => {
            CommandMsg::PostcopyAdvise((m.has_page_sizes != 0).then_some(Advise {
                ram_pagesize_summary: m.ram_pagesize_summary,
                target_page_size: m.target_page_size,
            }))
        }
        Command::PostcopyListen => CommandMsg::PostcopyListen,
        Command::PostcopyRun => CommandMsg::PostcopyRun,
        Command::Packaged => CommandMsg::Packaged(m.value),
        Command::PostcopyResume => CommandMsg::PostcopyResume,
        Command::RecvBitmap | Command::PostcopyRamDiscard => {
            // SAFETY: the caller's name pointer and length (header contract).
            let name = unsafe { in_name(WHAT, m.name, m.name_len)? };
            CommandMsg::RecvBitmap { name }
        }
    };
    // SAFETY: the caller's buffer of `buf_len` writable bytes.
    let out = unsafe { out_slice(WHAT, "buf", buf, buf_len)? };
    wire::encode_command(out, &cm).map_err(|e| wire_err(WHAT, e))
}

/// Encodes a POSTCOPY_RAM_DISCARD command for block `name` (NUL-terminated, 1 to 255 bytes)
/// with `count` ranges `starts[i]`, `lengths[i]` (bytes within the block, lengths not 0)
/// into `buf`, envelope included. QEMU sends at most POSTCOPY_MAX_DISCARDS_PER_COMMAND (12)
/// ranges per command; more are accepted while the payload fits 65535 bytes. Returns the
/// bytes written, -ENOSPC when `buf_len` is too small, -EINVAL for NULL pointers, a bad
/// name, no range, an empty or overflowing range, or too many ranges.
#[no_mangle]
pub extern "C" fn postcopy_wire_encode_discard(
    buf: *mut u8,
    buf_len: usize,
    name: *const c_char,
    starts: *const u64,
    lengths: *const u64,
    count: usize,
) -> isize {
    guard("postcopy_wire_encode_discard", || {
        // SAFETY: the C caller upholds the pointer contract documented above.
        done(unsafe {
            postcopy_wire_encode_discard_impl(buf, buf_len, name, starts, lengths, count)
        })
    })
}

/// # Safety
/// The pointer contract of the export of the same name (its documentation).
unsafe fn postcopy_wire_encode_discard_impl(
    buf: *mut u8,
    buf_len: usize,
    name: *const c_char,
    starts: *const u64,
    lengths: *const u64,
    count: usize,
) -> Result<usize, i32> {
    const WHAT: &str = "postcopy_wire_encode_discard";
    if name.is_null() {
        return Err(einval(WHAT, "name is NULL"));
    }
    // SAFETY: non-NULL; the caller passes a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(name) }.to_bytes();
    let (starts, lengths): (&[u64], &[u64]) = if count == 0 {
        (&[], &[])
    } else {
        // SAFETY: the caller's arrays of `count` elements.
        unsafe {
            (
                in_slice(WHAT, "starts", starts, count)?,
                in_slice(WHAT, "lengths", lengths, count)?,
            )
        }
    };
    // SAFETY: the caller's buffer of `buf_len` writable bytes.
    let out = unsafe { out_slice(WHAT, "buf", buf, buf_len)? };
    wire::encode_discard_pairs(out, name, starts, lengths).map_err(|e| wire_err(WHAT, e))
}

/// Decodes a command header from the first 5 bytes of `buf` (`len` >= 5) into `*out`:
/// checks the 0x08 marker, the command number and that the payload length suits the
/// command. Returns 0, -EBADMSG for a bad header or `len` < 5, -EINVAL for NULL pointers.
#[no_mangle]
pub extern "C" fn postcopy_wire_decode_command_header(
    buf: *const u8,
    len: usize,
    out: *mut PostcopyWireHeader,
) -> c_int {
    guard("postcopy_wire_decode_command_header", || {
        // SAFETY: the C caller upholds the pointer contract documented above.
        unsafe {
            decode_header_into(
                "postcopy_wire_decode_command_header",
                buf,
                len,
                out,
                |input| {
                    wire::decode_command_header(input)
                        .map(|h| (h.cmd.as_u16(), h.payload_len, h.total_len()))
                },
            )
        }
        .unwrap_or_else(|e| e)
    })
}

/// Decodes a header with `decode` (kind, payload length, total length) into `*out`.
///
/// # Safety
/// `buf` holds `len` readable bytes (or is NULL), `out` is NULL or writable.
unsafe fn decode_header_into(
    what: &'static str,
    buf: *const u8,
    len: usize,
    out: *mut PostcopyWireHeader,
    decode: impl FnOnce(&[u8]) -> Result<(u16, u16, usize), wire::WireError>,
) -> Result<c_int, i32> {
    // SAFETY: the caller's buffer of `len` readable bytes.
    let input = unsafe { decoder_input(what, buf, len, out)? };
    let (kind, payload_len, total_len) = decode(input).map_err(|e| wire_err(what, e))?;
    // SAFETY: non-NULL; the caller passes a writable PostcopyWireHeader.
    unsafe {
        out.write(PostcopyWireHeader {
            kind,
            payload_len,
            total_len,
        })
    };
    Ok(0)
}

/// Decodes one whole command from the start of `buf` (`len` bytes; later bytes are ignored)
/// into `*out`. For POSTCOPY_RAM_DISCARD it gives the name and range count: use
/// postcopy_wire_decode_discard for the ranges. `out->name` points into `buf`. Returns the
/// command's length in bytes, -EBADMSG for malformed or truncated bytes, -EINVAL for NULL
/// pointers or unacceptable values (empty name, empty range...).
#[no_mangle]
pub extern "C" fn postcopy_wire_decode_command(
    buf: *const u8,
    len: usize,
    out: *mut PostcopyWireCommand,
) -> isize {
    guard("postcopy_wire_decode_command", || {
        // SAFETY: the C caller upholds the pointer contract documented above.
        done(unsafe { postcopy_wire_decode_command_impl(buf, len, out) })
    })
}

/// # Safety
/// The pointer contract of the export of the same name (its documentation).
unsafe fn postcopy_wire_decode_command_impl(
    buf: *const u8,
    len: usize,
    out: *mut PostcopyWireCommand,
) -> Result<usize, i32> {
    const WHAT: &str = "postcopy_wire_decode_command";
    // SAFETY: the caller's buffer of `len` readable bytes.
    let input = unsafe { decoder_input(WHAT, buf, len, out)? };
    let (msg, used) = wire::decode_command(input).map_err(|e| wire_err(WHAT, e))?;
    let mut c = PostcopyWireCommand {
        cmd: msg.command().as_u16(),
        value: 0,
        has_page_sizes: 0,
        ram_pagesize_summary: 0,
        target_page_size: 0,
        name: std::ptr::null(),
        name_len: 0,
        range_count: 0,
    };
    match msg {
        CommandMsg::Ping(v) | CommandMsg::Packaged(v) => c.value = v,
        CommandMsg::PostcopyAdvise(Some(a)) => {
            c.has_page_sizes = 1;
            c.ram_pagesize_summary = a.ram_pagesize_summary;
            c.target_page_size = a.target_page_size;
        }
        CommandMsg::PostcopyRamDiscard(d) => {
            c.name = d.name().as_ptr().cast();
            c.name_len = d.name().len();
            c.range_count = d.range_count();
        }
        CommandMsg::RecvBitmap { name } => {
            c.name = name.as_ptr().cast();
            c.name_len = name.len();
        }
        CommandMsg::OpenReturnPath
        | CommandMsg::PostcopyAdvise(None)
        | CommandMsg::PostcopyListen
        | CommandMsg::PostcopyRun
        | CommandMsg::PostcopyResume => {}
    }
    // SAFETY: non-NULL; the caller passes a writable PostcopyWireCommand.
    unsafe { out.write(c) };
    Ok(used)
}

/// Decodes a whole POSTCOPY_RAM_DISCARD command from the start of `buf` (`len` bytes):
/// `*out` gets the block name (pointing into `buf`) and the range count, and
/// `starts`/`lengths` (arrays of `capacity` elements; may be NULL when `capacity` is 0) get
/// the ranges in message order. Returns the command's length in bytes; -ENOSPC when the
/// message has more than `capacity` ranges (`*out` is filled, and the first `capacity`
/// ranges); -EBADMSG for malformed or truncated bytes or another command; -EINVAL for NULL
/// pointers or unacceptable values (empty name, empty range...).
#[no_mangle]
pub extern "C" fn postcopy_wire_decode_discard(
    buf: *const u8,
    len: usize,
    out: *mut PostcopyWireDiscard,
    starts: *mut u64,
    lengths: *mut u64,
    capacity: usize,
) -> isize {
    guard("postcopy_wire_decode_discard", || {
        // SAFETY: the C caller upholds the pointer contract documented above.
        done(unsafe { postcopy_wire_decode_discard_impl(buf, len, out, starts, lengths, capacity) })
    })
}

/// # Safety
/// The pointer contract of the export of the same name (its documentation).
unsafe fn postcopy_wire_decode_discard_impl(
    buf: *const u8,
    len: usize,
    out: *mut PostcopyWireDiscard,
    starts: *mut u64,
    lengths: *mut u64,
    capacity: usize,
) -> Result<usize, i32> {
    const WHAT: &str = "postcopy_wire_decode_discard";
    // SAFETY: the caller's buffer of `len` readable bytes.
    let input = unsafe { decoder_input(WHAT, buf, len, out)? };
    let (starts, lengths): (&mut [u64], &mut [u64]) = if capacity == 0 {
        (&mut [], &mut [])
    } else {
        // SAFETY: the caller's arrays of `capacity` writable elements.
        unsafe {
            (
                out_slice(WHAT, "starts", starts, capacity)?,
                out_slice(WHAT, "lengths", lengths, capacity)?,
            )
        }
    };
    let (msg, used) = wire::decode_command(input).map_err(|e| wire_err(WHAT, e))?;
    let CommandMsg::PostcopyRamDiscard(d) = msg else {
        log::error!(
            "{WHAT}: command {} is not POSTCOPY_RAM_DISCARD",
            msg.command().name()
        );
        return Err(-libc::EBADMSG);
    };
    let info = PostcopyWireDiscard {
        name: d.name().as_ptr().cast(),
        name_len: d.name().len(),
        range_count: d.range_count(),
    };
    // SAFETY: non-NULL; the caller passes a writable PostcopyWireDiscard.
    unsafe { out.write(info) };
    for ((s, l), r) in starts.iter_mut().zip(lengths.iter_mut()).zip(d.ranges()) {
        *s = r.start;
        *l = r.length;
    }
    if d.range_count() > capacity {
        log::debug!("{WHAT}: {} ranges, room for {capacity}", d.range_count());
        return Err(-libc::ENOSPC);
    }
    Ok(used)
}

// ---------------------------------------------------------------------------------------
// Return path.

/// Encodes the return-path message `*msg` into `buf`, header included. Returns the bytes
/// written, -ENOSPC when `buf_len` is too small, -EINVAL for NULL pointers, an unknown
/// type, a bad name or a request of 0 bytes.
#[no_mangle]
pub extern "C" fn postcopy_wire_encode_return_path(
    buf: *mut u8,
    buf_len: usize,
    msg: *const PostcopyWireRpMessage,
) -> isize {
    guard("postcopy_wire_encode_return_path", || {
        // SAFETY: the C caller upholds the pointer contract documented above.
        done(unsafe { postcopy_wire_encode_return_path_impl(buf, buf_len, msg) })
    })
}

/// # Safety
/// The pointer contract of the export of the same name (its documentation).
unsafe fn postcopy_wire_encode_return_path_impl(
    buf: *mut u8,
    buf_len: usize,
    msg: *const PostcopyWireRpMessage,
) -> Result<usize, i32> {
    const WHAT: &str = "postcopy_wire_encode_return_path";
    if msg.is_null() {
        return Err(einval(WHAT, "msg is NULL"));
    }
    // SAFETY: non-NULL; the caller passes a valid PostcopyWireRpMessage.
    let m = unsafe { &*msg };
    let Some(ty) = ReturnPathType::from_u16(m.rp_type) else {
        return Err(einval(
            WHAT,
            &format!("unknown return-path type {}", m.rp_type),
        ));
    };
    let rp = match ty {
        ReturnPathType::Shut => ReturnPathMsg::Shut { failed: m.value },
        ReturnPathType::Pong => ReturnPathMsg::Pong(m.value),
        ReturnPathType::ResumeAck => ReturnPathMsg::ResumeAck(m.value),
        ReturnPathType::ReqPages => ReturnPathMsg::ReqPages {
            start: m.start,
            len: m.len,
        },
        ReturnPathType::ReqPagesId => ReturnPathMsg::ReqPagesId {
            start: m.start,
            len: m.len,
            // SAFETY: the caller's name pointer and length (header contract).
            id: unsafe { in_name(WHAT, m.name, m.name_len)? },
        },
        ReturnPathType::RecvBitmap => ReturnPathMsg::RecvBitmap {
            // SAFETY: the caller's name pointer and length (header contract).
            name: unsafe { in_name(WHAT, m.name, m.name_len)? },
        },
    };
    // SAFETY: the caller's buffer of `buf_len` writable bytes.
    let out = unsafe { out_slice(WHAT, "buf", buf, buf_len)? };
    wire::encode_return_path(out, &rp).map_err(|e| wire_err(WHAT, e))
}

/// Decodes a return-path header from the first 4 bytes of `buf` (`len` >= 4) into `*out`:
/// checks the type and that the payload length suits it. Returns 0, -EBADMSG for a bad
/// header or `len` < 4, -EINVAL for NULL pointers.
#[no_mangle]
pub extern "C" fn postcopy_wire_decode_return_path_header(
    buf: *const u8,
    len: usize,
    out: *mut PostcopyWireHeader,
) -> c_int {
    guard("postcopy_wire_decode_return_path_header", || {
        // SAFETY: the C caller upholds the pointer contract documented above.
        unsafe {
            decode_header_into(
                "postcopy_wire_decode_return_path_header",
                buf,
                len,
                out,
                |input| {
                    wire::decode_return_path_header(input)
                        .map(|h| (h.rp_type.as_u16(), h.payload_len, h.total_len()))
                },
            )
        }
        .unwrap_or_else(|e| e)
    })
}

/// Decodes one whole return-path message from the start of `buf` (`len` bytes; later bytes
/// are ignored) into `*out`; `out->name` points into `buf`. Returns the message's length in
/// bytes, -EBADMSG for malformed or truncated bytes, -EINVAL for NULL pointers or
/// unacceptable values (empty name, request of 0 bytes...).
#[no_mangle]
pub extern "C" fn postcopy_wire_decode_return_path(
    buf: *const u8,
    len: usize,
    out: *mut PostcopyWireRpMessage,
) -> isize {
    guard("postcopy_wire_decode_return_path", || {
        // SAFETY: the C caller upholds the pointer contract documented above.
        done(unsafe { postcopy_wire_decode_return_path_impl(buf, len, out) })
    })
}

/// # Safety
/// The pointer contract of the export of the same name (its documentation).
unsafe fn postcopy_wire_decode_return_path_impl(
    buf: *const u8,
    len: usize,
    out: *mut PostcopyWireRpMessage,
) -> Result<usize, i32> {
    const WHAT: &str = "postcopy_wire_decode_return_path";
    // SAFETY: the caller's buffer of `len` readable bytes.
    let input = unsafe { decoder_input(WHAT, buf, len, out)? };
    let (msg, used) = wire::decode_return_path(input).map_err(|e| wire_err(WHAT, e))?;
    let mut m = PostcopyWireRpMessage {
        rp_type: msg.rp_type().as_u16(),
        value: 0,
        start: 0,
        len: 0,
        name: std::ptr::null(),
        name_len: 0,
    };
    match msg {
        ReturnPathMsg::Shut { failed: v }
        | ReturnPathMsg::Pong(v)
        | ReturnPathMsg::ResumeAck(v) => m.value = v,
        ReturnPathMsg::ReqPages { start, len } => {
            m.start = start;
            m.len = len;
        }
        ReturnPathMsg::ReqPagesId { start, len, id } => {
            m.start = start;
            m.len = len;
            m.name = id.as_ptr().cast();
            m.name_len = id.len();
        }
        ReturnPathMsg::RecvBitmap { name } => {
            m.name = name.as_ptr().cast();
            m.name_len = name.len();
        }
    }
    // SAFETY: non-NULL; the caller passes a writable PostcopyWireRpMessage.
    unsafe { out.write(m) };
    Ok(used)
}

// ---------------------------------------------------------------------------------------
// Received-bitmap block.

/// Bytes of the received-bitmap block for a block of `nbits` target pages: 8 (size) +
/// the bitmap rounded up to whole 8-byte words + 8 (end marker). -EINVAL if that overflows.
#[no_mangle]
pub extern "C" fn postcopy_wire_recv_bitmap_len(nbits: usize) -> isize {
    const WHAT: &str = "postcopy_wire_recv_bitmap_len";
    guard(WHAT, || {
        match wire::recv_bitmap_block_len(nbits).and_then(|n| isize::try_from(n).ok()) {
            Some(n) => n,
            None => einval(WHAT, &format!("{nbits} pages is too many")) as isize,
        }
    })
}

/// Encodes the received-bitmap block (be64 size, little-endian bitmap, be64 end marker) for
/// `nbits` pages of `bitmap` (bit i of word w = page 64 * w + i, set = received; bits past
/// `nbits` are sent as 0) into `buf`. Returns the bytes written
/// (postcopy_wire_recv_bitmap_len), -ENOSPC when `buf_len` is too small, -EINVAL for NULL
/// pointers.
#[no_mangle]
pub extern "C" fn postcopy_wire_encode_recv_bitmap(
    buf: *mut u8,
    buf_len: usize,
    bitmap: *const u64,
    nbits: usize,
) -> isize {
    guard("postcopy_wire_encode_recv_bitmap", || {
        // SAFETY: the C caller upholds the pointer contract documented above.
        done(unsafe { postcopy_wire_encode_recv_bitmap_impl(buf, buf_len, bitmap, nbits) })
    })
}

/// # Safety
/// The pointer contract of the export of the same name (its documentation).
unsafe fn postcopy_wire_encode_recv_bitmap_impl(
    buf: *mut u8,
    buf_len: usize,
    bitmap: *const u64,
    nbits: usize,
) -> Result<usize, i32> {
    const WHAT: &str = "postcopy_wire_encode_recv_bitmap";
    // SAFETY: the caller's bitmap of nbits.div_ceil(64) words.
    let words = unsafe { in_slice(WHAT, "bitmap", bitmap, nbits.div_ceil(64))? };
    // SAFETY: the caller's buffer of `buf_len` writable bytes.
    let out = unsafe { out_slice(WHAT, "buf", buf, buf_len)? };
    wire::encode_recv_bitmap(out, words, nbits).map_err(|e| wire_err(WHAT, e))
}

/// Decodes a received-bitmap block from the start of `buf` (`len` bytes) for a block of
/// `nbits` pages into `bitmap` (nbits.div_ceil(64) words; bits past `nbits` in the last
/// word are cleared). The size field must be exactly the one for `nbits`. Returns the
/// block's length in bytes, -EBADMSG for malformed or truncated bytes or a bad end marker,
/// -EINVAL for NULL pointers or a size that does not match `nbits`.
#[no_mangle]
pub extern "C" fn postcopy_wire_decode_recv_bitmap(
    buf: *const u8,
    len: usize,
    bitmap: *mut u64,
    nbits: usize,
) -> isize {
    guard("postcopy_wire_decode_recv_bitmap", || {
        // SAFETY: the C caller upholds the pointer contract documented above.
        done(unsafe { postcopy_wire_decode_recv_bitmap_impl(buf, len, bitmap, nbits) })
    })
}

/// # Safety
/// The pointer contract of the export of the same name (its documentation).
unsafe fn postcopy_wire_decode_recv_bitmap_impl(
    buf: *const u8,
    len: usize,
    bitmap: *mut u64,
    nbits: usize,
) -> Result<usize, i32> {
    const WHAT: &str = "postcopy_wire_decode_recv_bitmap";
    // SAFETY: the caller's buffer of `len` readable bytes.
    let input = unsafe { in_slice(WHAT, "buf", buf, len)? };
    // SAFETY: the caller's bitmap of nbits.div_ceil(64) writable words.
    let words = unsafe { out_slice(WHAT, "bitmap", bitmap, nbits.div_ceil(64))? };
    let (bm, used) = wire::decode_recv_bitmap(input).map_err(|e| wire_err(WHAT, e))?;
    bm.copy_to_words(words, nbits)
        .map_err(|e| wire_err(WHAT, e))?;
    Ok(used)
}

// ---------------------------------------------------------------------------------------
// Discard walk.

/// Source-side discard walk over one RAM block: `bitmap` holds `nbits` target pages that
/// are dirty or unsent (bit i of word w = page 64 * w + i; bits past `nbits` are ignored
/// and left alone). With `host_ratio` = host page size / target page size (a power of two),
/// every host page with any page set is first made wholly set in `bitmap` (so the source
/// re-sends it); then `callback(opaque, start, npages)` is called for every run of set
/// pages, in ascending order, each starting and ending on a host-page boundary (the last may
/// end at `nbits`). Returns 0; the callback's value if it returned nonzero (the walk stops
/// there); -EINVAL for NULL pointers or a `host_ratio` that is not a power of two.
#[no_mangle]
pub extern "C" fn postcopy_discard_walk(
    bitmap: *mut u64,
    nbits: usize,
    host_ratio: usize,
    callback: PostcopyDiscardWalkFn,
    opaque: *mut c_void,
) -> c_int {
    guard("postcopy_discard_walk", || {
        // SAFETY: the C caller upholds the pointer contract documented above.
        unsafe { postcopy_discard_walk_impl(bitmap, nbits, host_ratio, callback, opaque) }
            .unwrap_or_else(|e| e)
    })
}

/// # Safety
/// The pointer contract of the export of the same name (its documentation).
unsafe fn postcopy_discard_walk_impl(
    bitmap: *mut u64,
    nbits: usize,
    host_ratio: usize,
    callback: PostcopyDiscardWalkFn,
    opaque: *mut c_void,
) -> Result<c_int, i32> {
    const WHAT: &str = "postcopy_discard_walk";
    let Some(callback) = callback else {
        return Err(einval(WHAT, "callback is NULL"));
    };
    // SAFETY: the caller's bitmap of nbits.div_ceil(64) writable words.
    let words = unsafe { out_slice(WHAT, "bitmap", bitmap, nbits.div_ceil(64))? };
    let flow = discard_walk::try_discard_walk(words, nbits, host_ratio, |start, npages| {
        // SAFETY: the caller's callback, with the opaque pointer it gave us.
        match unsafe { callback(opaque, start, npages) } {
            0 => ControlFlow::Continue(()),
            rc => ControlFlow::Break(rc),
        }
    })
    .map_err(|e| einval(WHAT, &e.to_string()))?;
    Ok(match flow {
        ControlFlow::Continue(_) => 0,
        ControlFlow::Break(rc) => rc,
    })
}
