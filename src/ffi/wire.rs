//! C exports of the wire codecs (`pcr_wire_*`) and of the discard walk
//! (`pcr_discard_walk`): conversions around `crate::wire` and `crate::discard_walk`.
//!
//! Encoders return the number of bytes written or a negative errno (`-ENOSPC` when the
//! buffer is too small, `-EINVAL` for bad arguments). Decoders take a whole message from
//! the start of the input, fill a caller-provided struct and return the number of bytes
//! the message has, or a negative errno (`-EBADMSG` for malformed bytes, `-EINVAL` for
//! unacceptable values). Every failure is logged as one line naming the cause. `uint64_t`
//! arrays and output structs must be naturally aligned, and no output may overlap another
//! argument (a written array over the input bytes, `starts` over `lengths`...): -EINVAL.

use std::ffi::{c_char, c_int, c_void};

use super::args::{
    try_c_bytes, try_disjoint, try_out, try_read, try_slice, try_slice_mut, try_slice_mut_or_empty,
    try_slice_or_empty, Span,
};
use super::ret::ffi_call;
use super::wire_types::{
    PcrDiscardWalkFn, PcrWireCommand, PcrWireDiscard, PcrWireHeader, PcrWireRpMessage,
};
use crate::discard_walk;
use crate::error::{Error, Result};
use crate::wire::{self, Advise, Command, CommandMsg, ReturnPathMsg, ReturnPathType};

/// A name given as pointer + length; NULL is allowed only with length 0 (the codec then
/// reports the empty name).
///
/// # Safety
/// Unless NULL, `ptr` must point to `len` readable bytes valid for `'a`.
unsafe fn try_name<'a>(ptr: *const c_char, len: usize) -> Result<&'a [u8]> {
    // SAFETY: forwarded from the caller.
    unsafe { try_slice_or_empty("name", ptr.cast::<u8>(), len) }
}

// ---------------------------------------------------------------------------------------
// Commands.

/// Encodes the command `*msg` (any but POSTCOPY_RAM_DISCARD, see pcr_wire_encode_discard)
/// into `buf`, envelope included. Returns the bytes written, -ENOSPC when `buf_len` is too
/// small, -EINVAL for NULL, misaligned or overlapping pointers, an unknown command or a bad name.
#[no_mangle]
pub extern "C" fn pcr_wire_encode_command(
    buf: *mut u8,
    buf_len: usize,
    msg: *const PcrWireCommand,
) -> isize {
    ffi_call!(|| -> Result<usize> {
        // SAFETY: `msg` is NULL or a readable PcrWireCommand (the header's contract).
        let m = unsafe { try_read("msg", msg) }?;
        let cmd = match Command::from_u16(m.cmd) {
            Some(Command::PostcopyRamDiscard) => {
                return Err(Error::invalid(
                    "POSTCOPY_RAM_DISCARD needs pcr_wire_encode_discard",
                ));
            }
            Some(c) => c,
            None => return Err(Error::invalid(format!("unknown command {}", m.cmd))),
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
            Command::EnableColo => CommandMsg::EnableColo,
            Command::SwitchoverStart => CommandMsg::SwitchoverStart,
            Command::RecvBitmap | Command::PostcopyRamDiscard => CommandMsg::RecvBitmap {
                // SAFETY: `m.name` holds `m.name_len` readable bytes (the header's contract).
                name: unsafe { try_name(m.name, m.name_len) }?,
            },
        };
        try_disjoint(&[
            Span::output("buf", buf, buf_len),
            Span::input("msg->name", m.name, m.name_len),
        ])?;
        // SAFETY: `buf` holds `buf_len` writable bytes (the header's contract).
        let out = unsafe { try_slice_mut("buf", buf, buf_len) }?;
        Ok(wire::encode_command(out, &cm)?)
    })
}

/// Encodes a POSTCOPY_RAM_DISCARD command for block `name` (NUL-terminated, 1 to 255 bytes)
/// with `count` ranges `starts[i]`, `lengths[i]` (bytes within the block, lengths not 0)
/// into `buf`, envelope included. QEMU sends at most PCR_MAX_DISCARDS_PER_COMMAND (12)
/// ranges per command; more are accepted while the payload fits 65535 bytes. Returns the
/// bytes written, -ENOSPC when `buf_len` is too small, -EINVAL for NULL, misaligned or overlapping pointers, a bad
/// name, no range, an empty or overflowing range, or too many ranges.
#[no_mangle]
pub extern "C" fn pcr_wire_encode_discard(
    buf: *mut u8,
    buf_len: usize,
    name: *const c_char,
    starts: *const u64,
    lengths: *const u64,
    count: usize,
) -> isize {
    ffi_call!(|| -> Result<usize> {
        // SAFETY: `name` is NULL or a NUL-terminated string (the header's contract).
        let name = unsafe { try_c_bytes("name", name) }?;
        try_disjoint(&[
            Span::output("buf", buf, buf_len),
            Span::input("name", name.as_ptr(), name.len() + 1),
            Span::input("starts", starts, count),
            Span::input("lengths", lengths, count),
        ])?;
        // SAFETY: `starts` and `lengths` hold `count` readable elements each.
        let starts = unsafe { try_slice_or_empty("starts", starts, count) }?;
        // SAFETY: as above.
        let lengths = unsafe { try_slice_or_empty("lengths", lengths, count) }?;
        // SAFETY: `buf` holds `buf_len` writable bytes (the header's contract).
        let out = unsafe { try_slice_mut("buf", buf, buf_len) }?;
        Ok(wire::encode_discard_pairs(out, name, starts, lengths)?)
    })
}

/// Writes a decoded header (kind, payload length, total length) to `out`.
///
/// # Safety
/// `out` is writable (checked non-NULL by the caller with `try_out`).
unsafe fn write_header(out: *mut PcrWireHeader, (kind, payload_len, total_len): (u16, u16, usize)) {
    // SAFETY: the caller guarantees `out` is a writable PcrWireHeader.
    unsafe {
        out.write(PcrWireHeader {
            kind,
            payload_len,
            total_len,
        })
    };
}

/// Decodes a command header from the first 5 bytes of `buf` (`len` >= 5) into `*out`:
/// checks the 0x08 marker, the command number and that the payload length suits the
/// command. Returns 0, -EBADMSG for a bad header or `len` < 5, -EINVAL for NULL, misaligned or overlapping pointers.
#[no_mangle]
pub extern "C" fn pcr_wire_decode_command_header(
    buf: *const u8,
    len: usize,
    out: *mut PcrWireHeader,
) -> c_int {
    ffi_call!(|| -> Result<()> {
        let out = try_out("out", out)?;
        try_disjoint(&[Span::input("buf", buf, len), Span::output("out", out, 1)])?;
        // SAFETY: `buf` holds `len` readable bytes (the header's contract).
        let input = unsafe { try_slice("buf", buf, len) }?;
        let h = wire::decode_command_header(input)?;
        // SAFETY: `out` is non-NULL and writable (the header's contract).
        unsafe { write_header(out, (h.cmd.as_u16(), h.payload_len, h.total_len())) };
        Ok(())
    })
}

/// Decodes one whole command from the start of `buf` (`len` bytes; later bytes are ignored)
/// into `*out`. For POSTCOPY_RAM_DISCARD it gives the name and range count: use
/// pcr_wire_decode_discard for the ranges. `out->name` points into `buf`. Returns the
/// command's length in bytes, -EBADMSG for malformed or truncated bytes, -EINVAL for NULL
/// pointers or unacceptable values (empty name, empty range...).
#[no_mangle]
pub extern "C" fn pcr_wire_decode_command(
    buf: *const u8,
    len: usize,
    out: *mut PcrWireCommand,
) -> isize {
    ffi_call!(|| -> Result<usize> {
        let out = try_out("out", out)?;
        try_disjoint(&[Span::input("buf", buf, len), Span::output("out", out, 1)])?;
        // SAFETY: `buf` holds `len` readable bytes (the header's contract).
        let input = unsafe { try_slice("buf", buf, len) }?;
        let (msg, used) = wire::decode_command(input)?;
        let mut c = PcrWireCommand {
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
            | CommandMsg::EnableColo
            | CommandMsg::PostcopyResume
            | CommandMsg::SwitchoverStart => {}
        }
        // SAFETY: `out` is non-NULL and a writable PcrWireCommand (the header's contract).
        unsafe { out.write(c) };
        Ok(used)
    })
}

/// Decodes a whole POSTCOPY_RAM_DISCARD command from the start of `buf` (`len` bytes):
/// `*out` gets the block name (pointing into `buf`) and the range count, and
/// `starts`/`lengths` (arrays of `capacity` elements; may be NULL when `capacity` is 0) get
/// the ranges in message order. Returns the command's length in bytes; -ENOSPC when the
/// message has more than `capacity` ranges (`*out` is filled, and the first `capacity`
/// ranges); -EBADMSG for malformed or truncated bytes or another command; -EINVAL for NULL
/// pointers or unacceptable values (empty name, empty range...).
#[no_mangle]
pub extern "C" fn pcr_wire_decode_discard(
    buf: *const u8,
    len: usize,
    out: *mut PcrWireDiscard,
    starts: *mut u64,
    lengths: *mut u64,
    capacity: usize,
) -> isize {
    ffi_call!(|| -> Result<usize> {
        let out = try_out("out", out)?;
        try_disjoint(&[
            Span::input("buf", buf, len),
            Span::output("out", out, 1),
            Span::output("starts", starts, capacity),
            Span::output("lengths", lengths, capacity),
        ])?;
        // SAFETY: `buf` holds `len` readable bytes (the header's contract).
        let input = unsafe { try_slice("buf", buf, len) }?;
        // SAFETY: `starts` and `lengths` hold `capacity` writable elements each, disjoint
        // from each other and from `buf` (checked above).
        let starts = unsafe { try_slice_mut_or_empty("starts", starts, capacity) }?;
        // SAFETY: as above.
        let lengths = unsafe { try_slice_mut_or_empty("lengths", lengths, capacity) }?;
        let (msg, used) = wire::decode_command(input)?;
        let CommandMsg::PostcopyRamDiscard(d) = msg else {
            return Err(Error::new(
                libc::EBADMSG,
                format!(
                    "command {} is not POSTCOPY_RAM_DISCARD",
                    msg.command().name()
                ),
            ));
        };
        let info = PcrWireDiscard {
            name: d.name().as_ptr().cast(),
            name_len: d.name().len(),
            range_count: d.range_count(),
        };
        // SAFETY: `out` is non-NULL and a writable PcrWireDiscard (the header's contract).
        unsafe { out.write(info) };
        for ((s, l), r) in starts.iter_mut().zip(lengths.iter_mut()).zip(d.ranges()) {
            *s = r.start;
            *l = r.length;
        }
        if d.range_count() > capacity {
            return Err(Error::new(
                libc::ENOSPC,
                format!("{} ranges, room for {capacity}", d.range_count()),
            ));
        }
        Ok(used)
    })
}

// ---------------------------------------------------------------------------------------
// Return path.

/// Encodes the return-path message `*msg` into `buf`, header included. Returns the bytes
/// written, -ENOSPC when `buf_len` is too small, -EINVAL for NULL, misaligned or overlapping pointers, an unknown
/// type, a bad name or a request of 0 bytes.
#[no_mangle]
pub extern "C" fn pcr_wire_encode_return_path(
    buf: *mut u8,
    buf_len: usize,
    msg: *const PcrWireRpMessage,
) -> isize {
    ffi_call!(|| -> Result<usize> {
        // SAFETY: `msg` is NULL or a readable PcrWireRpMessage (the header's contract).
        let m = unsafe { try_read("msg", msg) }?;
        let Some(ty) = ReturnPathType::from_u16(m.rp_type) else {
            return Err(Error::invalid(format!(
                "unknown return-path type {}",
                m.rp_type
            )));
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
                // SAFETY: `m.name` holds `m.name_len` readable bytes (the header's contract).
                id: unsafe { try_name(m.name, m.name_len) }?,
            },
            ReturnPathType::RecvBitmap => ReturnPathMsg::RecvBitmap {
                // SAFETY: as above.
                name: unsafe { try_name(m.name, m.name_len) }?,
            },
            ReturnPathType::SwitchoverAck => ReturnPathMsg::SwitchoverAck,
        };
        try_disjoint(&[
            Span::output("buf", buf, buf_len),
            Span::input("msg->name", m.name, m.name_len),
        ])?;
        // SAFETY: `buf` holds `buf_len` writable bytes (the header's contract).
        let out = unsafe { try_slice_mut("buf", buf, buf_len) }?;
        Ok(wire::encode_return_path(out, &rp)?)
    })
}

/// Decodes a return-path header from the first 4 bytes of `buf` (`len` >= 4) into `*out`:
/// checks the type and that the payload length suits it. Returns 0, -EBADMSG for a bad
/// header or `len` < 4, -EINVAL for NULL, misaligned or overlapping pointers.
#[no_mangle]
pub extern "C" fn pcr_wire_decode_return_path_header(
    buf: *const u8,
    len: usize,
    out: *mut PcrWireHeader,
) -> c_int {
    ffi_call!(|| -> Result<()> {
        let out = try_out("out", out)?;
        try_disjoint(&[Span::input("buf", buf, len), Span::output("out", out, 1)])?;
        // SAFETY: `buf` holds `len` readable bytes (the header's contract).
        let input = unsafe { try_slice("buf", buf, len) }?;
        let h = wire::decode_return_path_header(input)?;
        // SAFETY: `out` is non-NULL and writable (the header's contract).
        unsafe { write_header(out, (h.rp_type.as_u16(), h.payload_len, h.total_len())) };
        Ok(())
    })
}

/// Decodes one whole return-path message from the start of `buf` (`len` bytes; later bytes
/// are ignored) into `*out`; `out->name` points into `buf`. Returns the message's length in
/// bytes, -EBADMSG for malformed or truncated bytes, -EINVAL for NULL, misaligned or overlapping pointers or
/// unacceptable values (empty name, request of 0 bytes...).
#[no_mangle]
pub extern "C" fn pcr_wire_decode_return_path(
    buf: *const u8,
    len: usize,
    out: *mut PcrWireRpMessage,
) -> isize {
    ffi_call!(|| -> Result<usize> {
        let out = try_out("out", out)?;
        try_disjoint(&[Span::input("buf", buf, len), Span::output("out", out, 1)])?;
        // SAFETY: `buf` holds `len` readable bytes (the header's contract).
        let input = unsafe { try_slice("buf", buf, len) }?;
        let (msg, used) = wire::decode_return_path(input)?;
        let mut m = PcrWireRpMessage {
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
            ReturnPathMsg::SwitchoverAck => {}
        }
        // SAFETY: `out` is non-NULL and a writable PcrWireRpMessage (the header's contract).
        unsafe { out.write(m) };
        Ok(used)
    })
}

// ---------------------------------------------------------------------------------------
// Received-bitmap block.

/// Bytes of the received-bitmap block for a block of `nbits` target pages: 8 (size) +
/// the bitmap rounded up to whole 8-byte words + 8 (end marker). -EINVAL if that overflows.
#[no_mangle]
pub extern "C" fn pcr_wire_recv_bitmap_len(nbits: usize) -> isize {
    ffi_call!(|| -> Result<usize> {
        wire::recv_bitmap_block_len(nbits)
            .filter(|&n| isize::try_from(n).is_ok())
            .ok_or_else(|| Error::invalid(format!("{nbits} pages is too many")))
    })
}

/// Encodes the received-bitmap block (be64 size, little-endian bitmap, be64 end marker) for
/// `nbits` pages of `bitmap` (bit i of word w = page 64 * w + i, set = received; bits past
/// `nbits` are sent as 0) into `buf`. Returns the bytes written (pcr_wire_recv_bitmap_len),
/// -ENOSPC when `buf_len` is too small, -EINVAL for NULL, misaligned or overlapping pointers.
#[no_mangle]
pub extern "C" fn pcr_wire_encode_recv_bitmap(
    buf: *mut u8,
    buf_len: usize,
    bitmap: *const u64,
    nbits: usize,
) -> isize {
    ffi_call!(|| -> Result<usize> {
        try_disjoint(&[
            Span::output("buf", buf, buf_len),
            Span::input("bitmap", bitmap, nbits.div_ceil(64)),
        ])?;
        // SAFETY: `bitmap` holds nbits.div_ceil(64) readable words (the header's contract).
        let words = unsafe { try_slice("bitmap", bitmap, nbits.div_ceil(64)) }?;
        // SAFETY: `buf` holds `buf_len` writable bytes (the header's contract).
        let out = unsafe { try_slice_mut("buf", buf, buf_len) }?;
        Ok(wire::encode_recv_bitmap(out, words, nbits)?)
    })
}

/// Decodes a received-bitmap block from the start of `buf` (`len` bytes) for a block of
/// `nbits` pages into `bitmap` (nbits.div_ceil(64) words; bits past `nbits` in the last
/// word are cleared). The size field must be exactly the one for `nbits`. Returns the
/// block's length in bytes, -EBADMSG for malformed or truncated bytes or a bad end marker,
/// -EINVAL for NULL, misaligned or overlapping pointers or a size that does not match `nbits`.
#[no_mangle]
pub extern "C" fn pcr_wire_decode_recv_bitmap(
    buf: *const u8,
    len: usize,
    bitmap: *mut u64,
    nbits: usize,
) -> isize {
    ffi_call!(|| -> Result<usize> {
        try_disjoint(&[
            Span::input("buf", buf, len),
            Span::output("bitmap", bitmap, nbits.div_ceil(64)),
        ])?;
        // SAFETY: `buf` holds `len` readable bytes (the header's contract).
        let input = unsafe { try_slice("buf", buf, len) }?;
        // SAFETY: `bitmap` holds nbits.div_ceil(64) writable words (the header's contract).
        let words = unsafe { try_slice_mut("bitmap", bitmap, nbits.div_ceil(64)) }?;
        let (bm, used) = wire::decode_recv_bitmap(input)?;
        bm.copy_to_words(words, nbits)?;
        Ok(used)
    })
}

// ---------------------------------------------------------------------------------------
// Discard walk.

/// Bits of the bitmap [`pcr_discard_walk`] canonicalises before it calls back for them.
const WALK_CHUNK_BITS: usize = 1 << 16;

/// Source-side discard walk over one RAM block: `bitmap` holds `nbits` target pages that
/// are dirty or unsent (bit i of word w = page 64 * w + i; bits past `nbits` are ignored
/// and left alone). With `host_ratio` = host page size / target page size (a power of two),
/// every host page with any page set is first made wholly set in `bitmap` (so the source
/// re-sends it); then `callback(opaque, start, npages)` is called for every run of set
/// pages, in ascending order, each starting and ending on a host-page boundary (the last may
/// end at `nbits`). The bitmap is canonicalised 64 Ki pages (or one host page, if larger)
/// at a time, ahead of the callbacks for those pages; the library holds no reference into
/// `bitmap` while `callback` runs, so the callback may read it (it must not change it).
/// Returns 0; the callback's value if it returned nonzero (the walk stops there); -EINVAL
/// for NULL or misaligned pointers or a `host_ratio` that is not a power of two.
#[no_mangle]
pub extern "C" fn pcr_discard_walk(
    bitmap: *mut u64,
    nbits: usize,
    host_ratio: usize,
    callback: PcrDiscardWalkFn,
    opaque: *mut c_void,
) -> c_int {
    ffi_call!(|| -> Result<c_int> {
        let callback = callback.ok_or_else(|| Error::invalid("callback is NULL"))?;
        if !host_ratio.is_power_of_two() {
            return Err(discard_walk::DiscardWalkError::BadHostRatio(host_ratio).into());
        }
        // Checks the pointer (NULL, alignment) and the size; the slice is not kept.
        // SAFETY: `bitmap` holds nbits.div_ceil(64) writable words (the header's contract).
        let _ = unsafe { try_slice_mut("bitmap", bitmap, nbits.div_ceil(64)) }?;
        // No reference into the bitmap may be live while the C callback runs (it may read
        // the bitmap): walk it a chunk at a time, collecting the chunk's runs, and call
        // back only after the chunk's slice is gone. A run reaching the end of a chunk is
        // held back and merged with one starting the next chunk.
        let chunk_bits = host_ratio.max(WALK_CHUNK_BITS);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut pending: Option<(u64, u64)> = None;
        let mut first = 0usize;
        while first < nbits {
            let bits = chunk_bits.min(nbits - first);
            runs.clear();
            {
                // SAFETY: words first/64 .. of the caller's bitmap, inside the checked
                // nbits.div_ceil(64) words (`first` is a multiple of 64); no other
                // reference to them exists while this slice lives, and it is dropped
                // before any callback.
                let chunk = unsafe {
                    std::slice::from_raw_parts_mut(bitmap.add(first / 64), bits.div_ceil(64))
                };
                discard_walk::discard_walk(chunk, bits, host_ratio, |start, npages| {
                    runs.push((first as u64 + start, npages));
                })?;
            }
            for &(start, npages) in &runs {
                match pending {
                    Some((s, n)) if s + n == start => pending = Some((s, n + npages)),
                    Some((s, n)) => {
                        // SAFETY: the caller's callback with its opaque pointer and plain
                        // integers; the library holds no reference into the bitmap now.
                        let rc = unsafe { callback(opaque, s, n) };
                        if rc != 0 {
                            return Ok(rc);
                        }
                        pending = Some((start, npages));
                    }
                    None => pending = Some((start, npages)),
                }
            }
            first += bits;
        }
        Ok(match pending {
            // SAFETY: as above.
            Some((s, n)) => unsafe { callback(opaque, s, n) },
            None => 0,
        })
    })
}
