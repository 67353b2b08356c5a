//! C exports of the source side: discard commands.

// `unsigned long` is u64 here but u32 on 32-bit targets: the u64::from conversions stay.
#![allow(clippy::useless_conversion)]

use std::ffi::{c_char, c_int, c_ulong, c_void, CStr};

use super::guard::guard;
use crate::source::{DiscardBatch, Source, SourceHooks};

/// Callbacks and settings of a source, given to `postcopy_migration_state_new` (copied).
/// Callbacks run on the thread calling `postcopy_discard_send_range` / `_finish`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PostcopySourceOps {
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

/// The source of a postcopy migration. Opaque; `postcopy_migration_state_new` / `_free`.
pub struct MigrationState {
    source: Source,
}

/// Discard ranges of one RAM block being batched into commands. Opaque; from
/// `postcopy_discard_send_init`, freed by `postcopy_discard_send_finish`.
pub struct PostcopyDiscardState {
    batch: DiscardBatch,
}

struct COps {
    ops: PostcopySourceOps,
    opaque: *mut c_void,
}

// SAFETY: the callbacks and opaque pointer are only passed back to the host, from the
// threads that call the library, as the header documents.
unsafe impl Send for COps {}
// SAFETY: as above.
unsafe impl Sync for COps {}

fn errno_of(rc: c_int) -> i32 {
    if rc < 0 {
        -rc
    } else {
        libc::EIO
    }
}

impl SourceHooks for COps {
    fn send_discard(
        &self,
        name: &str,
        starts: &[u64],
        lengths: &[u64],
    ) -> std::result::Result<(), i32> {
        if let Some(send) = self.ops.send_discard {
            let name = std::ffi::CString::new(name).map_err(|_| libc::EINVAL)?;
            // SAFETY: the host's callback with arrays of `starts.len()` (<= 12) entries.
            let rc = unsafe {
                send(
                    self.opaque,
                    name.as_ptr(),
                    starts.len() as u16,
                    starts.as_ptr(),
                    lengths.as_ptr(),
                )
            };
            return if rc == 0 { Ok(()) } else { Err(errno_of(rc)) };
        }
        let Some(write) = self.ops.write_command else {
            return Err(libc::ENOSYS);
        };
        let mut buf = [0u8; 512];
        let len = crate::wire::encode_discard_pairs(&mut buf, name.as_bytes(), starts, lengths)
            .map_err(|e| -e.to_errno())?;
        // SAFETY: the host's callback with `len` initialised bytes.
        let rc = unsafe { write(self.opaque, buf.as_ptr(), len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(errno_of(rc))
        }
    }
}

fn source<'a>(what: &str, ms: *const MigrationState) -> Option<&'a Source> {
    if ms.is_null() {
        log::error!("{what}: MigrationState is NULL");
        return None;
    }
    // SAFETY: non-NULL handles come from postcopy_migration_state_new, valid until _free.
    Some(unsafe { &(*ms).source })
}

/// Creates a source with `ops` (copied) and `opaque`. NULL (logged) when `ops` is NULL,
/// has neither `send_discard` nor `write_command`, or the page size is not a power of two.
#[no_mangle]
pub extern "C" fn postcopy_migration_state_new(
    ops: *const PostcopySourceOps,
    opaque: *mut c_void,
) -> *mut MigrationState {
    guard("postcopy_migration_state_new", || {
        if ops.is_null() {
            log::error!("postcopy_migration_state_new: ops is NULL");
            return std::ptr::null_mut();
        }
        // SAFETY: non-NULL, points to a PostcopySourceOps per the header; copied.
        let ops = unsafe { *ops };
        if ops.send_discard.is_none() && ops.write_command.is_none() {
            log::error!("postcopy_migration_state_new: send_discard or write_command is required");
            return std::ptr::null_mut();
        }
        let page = if ops.target_page_size == 0 {
            4096
        } else {
            ops.target_page_size as u64
        };
        match Source::new(Box::new(COps { ops, opaque }), page) {
            Ok(source) => Box::into_raw(Box::new(MigrationState { source })),
            Err(e) => {
                log::error!("postcopy_migration_state_new: {e}");
                std::ptr::null_mut()
            }
        }
    })
}

/// Frees a source. NULL is a no-op.
#[no_mangle]
pub extern "C" fn postcopy_migration_state_free(ms: *mut MigrationState) {
    guard("postcopy_migration_state_free", || {
        if !ms.is_null() {
            // SAFETY: non-NULL handles come from postcopy_migration_state_new, freed once.
            drop(unsafe { Box::from_raw(ms) });
        }
    })
}

/// Starts the discards of RAM block `name` (copied), whose first page is bit `offset` of
/// the migration bitmap. Returns the batch, or NULL (logged) for NULL arguments or a name
/// that is empty, longer than 255 bytes or not UTF-8.
#[no_mangle]
pub extern "C" fn postcopy_discard_send_init(
    ms: *mut MigrationState,
    offset: c_ulong,
    name: *const c_char,
) -> *mut PostcopyDiscardState {
    guard("postcopy_discard_send_init", || {
        let Some(src) = source("postcopy_discard_send_init", ms) else {
            return std::ptr::null_mut();
        };
        if name.is_null() {
            log::error!("postcopy_discard_send_init: name is NULL");
            return std::ptr::null_mut();
        }
        // SAFETY: non-NULL NUL-terminated string per the header.
        let Ok(name) = unsafe { CStr::from_ptr(name) }.to_str() else {
            log::error!("postcopy_discard_send_init: name is not UTF-8");
            return std::ptr::null_mut();
        };
        match src.discard_begin(u64::from(offset), name) {
            Ok(batch) => Box::into_raw(Box::new(PostcopyDiscardState { batch })),
            Err(e) => {
                log::error!("postcopy_discard_send_init: {e}");
                std::ptr::null_mut()
            }
        }
    })
}

/// Queues the discard of `length` target pages from migration-bitmap bit `start` (at or
/// after the block's `offset`); a command is sent whenever 12 ranges are queued. Errors
/// (NULL arguments, a range before the block, a failed send) are logged and counted in
/// `postcopy_migration_discard_errors`; a failed send also makes `_finish` report it.
#[no_mangle]
pub extern "C" fn postcopy_discard_send_range(
    ms: *mut MigrationState,
    pds: *mut PostcopyDiscardState,
    start: c_ulong,
    length: c_ulong,
) {
    guard("postcopy_discard_send_range", || {
        let Some(src) = source("postcopy_discard_send_range", ms) else {
            return;
        };
        if pds.is_null() {
            log::error!("postcopy_discard_send_range: PostcopyDiscardState is NULL");
            return;
        }
        // SAFETY: non-NULL batches come from postcopy_discard_send_init, valid until _finish.
        let pds = unsafe { &mut *pds };
        if let Err(e) = src.discard_range(&mut pds.batch, u64::from(start), u64::from(length)) {
            log::error!("postcopy_discard_send_range: {e}");
        }
    })
}

/// Sends the ranges still queued and frees `pds` (always, even on error; NULL is a no-op
/// apart from a log line). Failures are logged.
#[no_mangle]
pub extern "C" fn postcopy_discard_send_finish(
    ms: *mut MigrationState,
    pds: *mut PostcopyDiscardState,
) {
    guard("postcopy_discard_send_finish", || {
        if pds.is_null() {
            log::error!("postcopy_discard_send_finish: PostcopyDiscardState is NULL");
            return;
        }
        // SAFETY: non-NULL batches come from postcopy_discard_send_init and are freed here once.
        let pds = unsafe { Box::from_raw(pds) };
        let Some(src) = source("postcopy_discard_send_finish", ms) else {
            return;
        };
        if let Err(e) = src.discard_finish(pds.batch) {
            log::error!("postcopy_discard_send_finish: {e}");
        }
    })
}

/// Discard failures so far: ranges refused by `postcopy_discard_send_range` and commands
/// that failed to send (0 for NULL, logged).
#[no_mangle]
pub extern "C" fn postcopy_migration_discard_errors(ms: *const MigrationState) -> u64 {
    guard("postcopy_migration_discard_errors", || {
        source("postcopy_migration_discard_errors", ms).map_or(0, |s| s.counters().2)
    })
}
