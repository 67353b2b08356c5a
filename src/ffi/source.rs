//! C exports of the source side: discard commands (`pcr_source_*`, `pcr_discard_send_*`).

// `unsigned long` is u64 here but u32 on 32-bit targets: the u64::from conversions stay.
#![allow(clippy::useless_conversion)]

use std::ffi::{c_char, c_int, c_ulong, c_void, CString};

use super::args::{try_handle, try_handle_mut, try_read, try_str, try_take, CHandle};
use super::ret::ffi_call;
use super::types::errno_of;
use crate::error::{Error, Result};
use crate::source::{DiscardBatch, DiscardCommandWriter, Source, SourceHooks};

/// Callbacks and settings of a source, given to `pcr_source_new` (copied). Callbacks run on
/// the thread calling `pcr_discard_send_range` / `_finish`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PcrSourceOps {
    /// Sends one discard command for block `block_name`: `count` (1 to 12) ranges, each
    /// `starts[i]`, `lengths[i]` in bytes within the block. Returns 0 or a negative errno.
    /// Required unless `write_command` is given.
    pub send_discard: Option<
        unsafe extern "C" fn(
            opaque: *mut c_void,
            block_name: *const c_char,
            count: u16,
            starts: *const u64,
            lengths: *const u64,
        ) -> c_int,
    >,
    /// Used when `send_discard` is NULL: writes `length` bytes of one complete QEMU
    /// POSTCOPY_RAM_DISCARD command (envelope included) to the migration stream. Returns 0
    /// or a negative errno.
    pub write_command:
        Option<unsafe extern "C" fn(opaque: *mut c_void, bytes: *const u8, length: usize) -> c_int>,
    /// Target page size in bytes (bitmap bits count in it); 0 means 4096.
    pub target_page_size: usize,
}

/// The source of a postcopy migration. Opaque; `pcr_source_new` / `pcr_source_free`.
pub struct PcrSource {
    pub(crate) source: Source,
}

impl CHandle for PcrSource {
    const NAME: &'static str = "PcrSource";
}

/// Discard ranges of one RAM block being batched into commands. Opaque; from
/// `pcr_discard_send_init`, freed by `pcr_discard_send_finish`.
pub struct PcrDiscardState {
    pub(crate) batch: DiscardBatch,
}

impl CHandle for PcrDiscardState {
    const NAME: &'static str = "PcrDiscardState";
}

struct COps {
    ops: PcrSourceOps,
    opaque: *mut c_void,
}

// SAFETY: the library never dereferences `opaque`; it only passes it back to the callbacks,
// from the threads that call the library, which the header allows.
unsafe impl Send for COps {}
// SAFETY: as above: shared access only reads the table and calls the callbacks.
unsafe impl Sync for COps {}

impl COps {
    fn write_command(&self, bytes: &[u8]) -> std::result::Result<(), i32> {
        let Some(write) = self.ops.write_command else {
            return Err(libc::ENOSYS);
        };
        // SAFETY: a callback of the table with its opaque pointer and `bytes.len()`
        // initialised bytes alive during the call.
        match unsafe { write(self.opaque, bytes.as_ptr(), bytes.len()) } {
            0 => Ok(()),
            rc => Err(errno_of(rc)),
        }
    }
}

impl SourceHooks for COps {
    fn send_discard(
        &self,
        name: &str,
        starts: &[u64],
        lengths: &[u64],
    ) -> std::result::Result<(), i32> {
        let Some(send) = self.ops.send_discard else {
            return DiscardCommandWriter::new(|bytes: &[u8]| self.write_command(bytes))
                .send_discard(name, starts, lengths);
        };
        let name = CString::new(name).map_err(|_| libc::EINVAL)?;
        // SAFETY: a callback of the table with its opaque pointer, a NUL-terminated name and
        // two arrays of `starts.len()` (<= 12) entries, all alive during the call.
        let rc = unsafe {
            send(
                self.opaque,
                name.as_ptr(),
                starts.len() as u16,
                starts.as_ptr(),
                lengths.as_ptr(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(errno_of(rc))
        }
    }
}

/// Creates a source with `ops` (copied) and `opaque`. NULL (logged) when `ops` is NULL,
/// has neither `send_discard` nor `write_command`, or the page size is not a power of two.
#[no_mangle]
pub extern "C" fn pcr_source_new(ops: *const PcrSourceOps, opaque: *mut c_void) -> *mut PcrSource {
    ffi_call!(|| -> Result<*mut PcrSource> {
        // SAFETY: `ops` is NULL or points to a PcrSourceOps (the header's contract).
        let ops = unsafe { try_read("ops", ops) }?;
        if ops.send_discard.is_none() && ops.write_command.is_none() {
            return Err(Error::invalid("send_discard or write_command is required"));
        }
        let page = match ops.target_page_size {
            0 => 4096,
            n => n as u64,
        };
        let source = Source::new(Box::new(COps { ops, opaque }), page)?;
        Ok(Box::into_raw(Box::new(PcrSource { source })))
    })
}

/// Frees a source. NULL is a no-op.
#[no_mangle]
pub extern "C" fn pcr_source_free(ms: *mut PcrSource) {
    ffi_call!(|| -> Result<()> {
        if !ms.is_null() {
            // SAFETY: non-NULL handles come from pcr_source_new and are freed once.
            drop(unsafe { try_take(ms) }?);
        }
        Ok(())
    })
}

/// Starts the discards of RAM block `name` (copied), whose first page is bit `offset` of
/// the migration bitmap. Returns the batch, or NULL (logged) for NULL arguments or a name
/// that is empty, longer than 255 bytes or not UTF-8.
#[no_mangle]
pub extern "C" fn pcr_discard_send_init(
    ms: *mut PcrSource,
    offset: c_ulong,
    name: *const c_char,
) -> *mut PcrDiscardState {
    ffi_call!(|| -> Result<*mut PcrDiscardState> {
        // SAFETY: `ms` is NULL or a live handle (the header's contract).
        let ms = unsafe { try_handle(ms) }?;
        // SAFETY: `name` is NULL or a NUL-terminated string (the header's contract).
        let name = unsafe { try_str("name", name) }?;
        let batch = ms.source.discard_begin(u64::from(offset), name)?;
        Ok(Box::into_raw(Box::new(PcrDiscardState { batch })))
    })
}

/// Queues the discard of `length` target pages from migration-bitmap bit `start` (at or
/// after the block's `offset`); a command is sent whenever 12 ranges are queued. Errors
/// (NULL arguments, a range before the block, a failed send) are logged and counted in
/// `pcr_source_discard_errors`; a failed send also makes `_finish` report it.
#[no_mangle]
pub extern "C" fn pcr_discard_send_range(
    ms: *mut PcrSource,
    pds: *mut PcrDiscardState,
    start: c_ulong,
    length: c_ulong,
) {
    ffi_call!(|| -> Result<()> {
        // SAFETY: `ms` is NULL or a live handle (the header's contract).
        let ms = unsafe { try_handle(ms) }?;
        // SAFETY: `pds` is NULL or a live batch from pcr_discard_send_init, used by one
        // thread at a time (the header's contract).
        let pds = unsafe { try_handle_mut(pds) }?;
        ms.source
            .discard_range(&mut pds.batch, u64::from(start), u64::from(length))
    })
}

/// Sends the ranges still queued and frees `pds` (always, even on error; NULL is a no-op
/// apart from a log line). Failures are logged.
#[no_mangle]
pub extern "C" fn pcr_discard_send_finish(ms: *mut PcrSource, pds: *mut PcrDiscardState) {
    ffi_call!(|| -> Result<()> {
        // SAFETY: non-NULL batches come from pcr_discard_send_init and are given back here
        // once (the header's contract).
        let pds = unsafe { try_take(pds) }?;
        // SAFETY: `ms` is NULL or a live handle (the header's contract).
        let ms = unsafe { try_handle(ms) }?;
        ms.source.discard_finish(pds.batch).map(drop)
    })
}

/// Discard failures so far: ranges refused by `pcr_discard_send_range` and commands that
/// failed to send (0 for NULL, logged).
#[no_mangle]
pub extern "C" fn pcr_source_discard_errors(ms: *const PcrSource) -> u64 {
    ffi_call!(|| -> Result<u64> {
        // SAFETY: `ms` is NULL or a live handle (the header's contract).
        Ok(unsafe { try_handle(ms) }?.source.counters().2)
    })
}
