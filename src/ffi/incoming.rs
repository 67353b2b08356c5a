//! C exports of the destination's lifecycle (`pcr_incoming_*`).

use std::ffi::{c_char, c_int, c_void};
use std::sync::Arc;
use std::time::Duration;

use super::args::{try_handle, try_out, try_read, try_slice, try_str, try_take, CHandle};
use super::incoming_ops::{COps, PcrIncomingOps};
use super::ret::ffi_call;
use crate::destination::incoming::{Incoming, IncomingConfig};
use crate::error::{Error, Result};
use crate::stats::Stats;
use crate::WaitStrategy;

/// The destination of a postcopy migration. Opaque; create with `pcr_incoming_new`, free
/// with `pcr_incoming_free`.
pub struct PcrIncoming {
    pub(crate) incoming: Arc<Incoming>,
}

impl CHandle for PcrIncoming {
    const NAME: &'static str = "PcrIncoming";
}

/// The destination behind `mis`, or EINVAL for NULL.
///
/// # Safety
/// Unless NULL, `mis` comes from `pcr_incoming_new` and was not freed (the header's
/// contract for every handle argument).
pub(crate) unsafe fn incoming<'a>(mis: *const PcrIncoming) -> Result<&'a Incoming> {
    // SAFETY: forwarded from the caller.
    Ok(&unsafe { try_handle(mis) }?.incoming)
}

/// Creates a destination with the callbacks in `ops` (copied) and `opaque` (passed to each
/// callback). State starts at PCR_STATE_NONE. Returns NULL (and logs why) when `ops` is
/// NULL, lacks `foreach_ram_block`, has neither `request_page` nor `write_return_path`, or
/// the target page size is not a power of two or is larger than the host page size (every
/// block's page is at least the host page; QEMU refuses it too).
#[no_mangle]
pub extern "C" fn pcr_incoming_new(
    ops: *const PcrIncomingOps,
    opaque: *mut c_void,
) -> *mut PcrIncoming {
    ffi_call!(|| -> Result<*mut PcrIncoming> {
        // SAFETY: `ops` is NULL or points to a PcrIncomingOps (the header's contract).
        let ops = unsafe { try_read("ops", ops) }?;
        if ops.foreach_ram_block.is_none()
            || (ops.request_page.is_none() && ops.write_return_path.is_none())
        {
            return Err(Error::invalid(
                "foreach_ram_block, and request_page or write_return_path, are required",
            ));
        }
        let config = IncomingConfig {
            target_page_size: match ops.target_page_size {
                0 => 4096,
                n => n as u64,
            },
            enable_mlock: ops.enable_mlock,
            wait: match ops.spin_wait_us {
                0 => WaitStrategy::Block,
                us => WaitStrategy::Spin(Duration::from_micros(us as u64)),
            },
            never_send_shut: ops.never_send_shut,
            track_remove: ops.track_remove,
            blocktime: ops.blocktime,
            ..Default::default()
        };
        let incoming = Arc::new(Incoming::new(Arc::new(COps { ops, opaque }), config)?);
        #[cfg(feature = "seed-abi")]
        super::seed::register(&incoming);
        Ok(Box::into_raw(Box::new(PcrIncoming { incoming })))
    })
}

/// Frees a destination. If postcopy was initialised and not cleaned up, cleans up first
/// (stops the fault thread, unregisters memory, closes descriptors). NULL is a no-op.
/// Must not be called from a callback. With the seed ABI, a handle-less seed call
/// (postcopy_state_get/set, postcopy_ram_supported_by_host) acting on this destination on
/// another thread is waited for: once this returns, no callback of `mis` runs.
#[no_mangle]
pub extern "C" fn pcr_incoming_free(mis: *mut PcrIncoming) {
    ffi_call!(|| -> Result<()> {
        if mis.is_null() {
            return Ok(());
        }
        // SAFETY: non-NULL handles come from pcr_incoming_new and are freed once (the
        // header's contract).
        let mis = unsafe { try_take(mis) }?;
        #[cfg(feature = "seed-abi")]
        super::seed::unregister(&mis.incoming);
        drop(mis);
        Ok(())
    })
}

/// Whether this host can do postcopy for the RAM blocks of `mis`: target page not larger
/// than the host page; userfaultfd available (through /dev/userfaultfd or the syscall) with
/// the features the blocks need (huge pages, shared memory); registration offering WAKE,
/// COPY and ZEROPAGE; and, for each block, a test page of its kind (same fd, offset,
/// sharing and page size; never the guest's memory) registering with WAKE and COPY, so that
/// a block the kernel cannot register (a regular-file mapping) fails here, not at LISTEN.
/// Logs the exact missing piece, with the kernel's errno kept (EPERM under
/// vm.unprivileged_userfaultfd=0 names the sysctl). No side effects (unlike QEMU 2.9, it
/// does not munlockall). False for NULL.
#[no_mangle]
pub extern "C" fn pcr_incoming_supported_by_host(mis: *const PcrIncoming) -> bool {
    ffi_call!(|| -> Result<()> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        unsafe { incoming(mis) }?.supported_by_host()
    })
}

/// Reads the RAM blocks (through `foreach_ram_block`), validates them (page-aligned, length
/// a multiple of the page size, no overlap, unique names), unlocks memory per the mlock
/// policy (`mlock(false)`: locked memory refuses the discards) and discards all their
/// memory so that every page faults later. State NONE (or END) -> ADVISE. `ram_pages`, the
/// size of the guest's RAM address space in target pages (QEMU: `last_ram_offset() >>
/// TARGET_PAGE_BITS`), is checked when non-zero: a block whose RAM offset + length ends
/// past it is refused (-EINVAL); a larger value is fine. Returns 0 or a negative errno:
/// -EBUSY when already initialised, -EINVAL for bad blocks, `ram_pages` or state.
#[no_mangle]
pub extern "C" fn pcr_incoming_init(mis: *mut PcrIncoming, ram_pages: usize) -> c_int {
    ffi_call!(|| -> Result<()> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        unsafe { incoming(mis) }?.init(ram_pages)
    })
}

/// Ends postcopy: stops and joins the fault thread, then unregisters memory (threads still
/// blocked on missing pages are woken and find the page as the kernel leaves it: zero for
/// anonymous memory), closes the userfaultfd, ends ballooning inhibition (after
/// enable_notify), turns transparent huge pages back on (MADV_HUGEPAGE, as QEMU) on
/// the parts of blocks prepare_discard turned them off for and nowhere else, re-locks memory per the mlock policy
/// (`mlock(true)`; also in ADVISE or DISCARD: init unlocked it), frees the temporary pages,
/// sets END and calls `shut`. Returns 0 or
/// a negative errno; -EINVAL without a prior init or when called twice. Not from a callback.
#[no_mangle]
pub extern "C" fn pcr_incoming_cleanup(mis: *mut PcrIncoming) -> c_int {
    ffi_call!(|| -> Result<()> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        unsafe { incoming(mis) }?.cleanup()
    })
}

/// Before the first discard: turns transparent huge pages off (MADV_NOHUGEPAGE) on
/// host-page blocks so that discards really drop pages and no THP collapse refills a hole
/// before registration; only on the parts THP could back (MADV_HUGEPAGE, or no flag and
/// THP-eligible as init read /proc/self/smaps): a part already MADV_NOHUGEPAGE or not
/// eligible is left as it is. Cleanup turns back on (MADV_HUGEPAGE) what this turned off,
/// nothing else. State ADVISE -> DISCARD. The first
/// discard (range or command) in ADVISE calls it itself. Returns 0 or a negative errno.
#[no_mangle]
pub extern "C" fn pcr_incoming_prepare_discard(mis: *mut PcrIncoming) -> c_int {
    ffi_call!(|| -> Result<()> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        unsafe { incoming(mis) }?.prepare_discard()
    })
}

/// Drops `[start, start + length)` (bytes) of block `block_name` (QEMU's
/// `ram_discard_range`), through the `discard_range` callback or the library default, and
/// clears the range's received bits. Allowed in ADVISE and DISCARD (in ADVISE it first does
/// `pcr_incoming_prepare_discard`: no discard runs while THP is on), and after LISTEN
/// (LISTENING, RUNNING: a balloon or virtio-mem dropping received pages), where the next
/// fault on those pages is requested again; a placement of the same pages racing the
/// discard leaves them either placed and received or dropped and requested at their next
/// fault. The range must be aligned to the block's page
/// size and inside the block (checked arithmetic: -EINVAL if `start + length` wraps). An
/// empty range (aligned, at most the block length) is skipped and counted in
/// `PcrStats.discard_ranges_empty`. -EDEADLK from a callback on the fault thread when
/// `track_remove` is on. -EPIPE after LISTEN once postcopy was aborted
/// (`pcr_incoming_abort`, or the fault thread stopped on a failure): no page can be
/// requested any more, so a dropped page would never come back. Returns 0 or a negative
/// errno.
#[no_mangle]
pub extern "C" fn pcr_incoming_discard_range(
    mis: *mut PcrIncoming,
    block_name: *const c_char,
    start: u64,
    length: u64,
) -> c_int {
    ffi_call!(|| -> Result<()> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        let incoming = unsafe { incoming(mis) }?;
        // SAFETY: `block_name` is NULL or a NUL-terminated string (the header's contract).
        let name = unsafe { try_str("block name", block_name) }?;
        incoming.discard_range(name, start, length)
    })
}

/// Applies one QEMU POSTCOPY_RAM_DISCARD command: `bytes` is the whole command (with its
/// 0x08 envelope) or just its payload, `length` bytes long. Checks the state (the first
/// discard in ADVISE does `pcr_incoming_prepare_discard`), the block name, and every range
/// (aligned to the block page size and inside the block) before dropping any page: a bad
/// command is rejected whole. Empty ranges (QEMU 2.6-2.9 sources end a block whose last
/// page is clean with `(block_length, 0)`) are accepted, skipped and counted in
/// `PcrStats.discard_ranges_empty`. Returns the number of (non-empty) ranges dropped, or a
/// negative errno.
#[no_mangle]
pub extern "C" fn pcr_incoming_handle_discard_command(
    mis: *mut PcrIncoming,
    bytes: *const u8,
    length: usize,
) -> c_int {
    ffi_call!(|| -> Result<usize> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        let incoming = unsafe { incoming(mis) }?;
        // SAFETY: `bytes` is NULL or holds `length` readable bytes (the header's contract).
        let bytes = unsafe { try_slice("bytes", bytes, length) }?;
        incoming.handle_discard_command(bytes)
    })
}

/// Opens a userfaultfd, registers every block for missing-page faults, starts the fault
/// thread ("postcopy/fault"), calls `balloon_inhibit(true)`; state -> LISTENING. Needs
/// init; allowed in ADVISE, DISCARD or LISTENING. Returns 0 or a negative errno: -EBUSY
/// when already enabled; on any failure nothing stays registered or open.
#[no_mangle]
pub extern "C" fn pcr_incoming_enable_notify(mis: *mut PcrIncoming) -> c_int {
    ffi_call!(|| -> Result<()> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        unsafe { incoming(mis) }?.enable_notify()
    })
}

/// Makes the next page request name its block (call after the return path reconnected).
#[no_mangle]
pub extern "C" fn pcr_incoming_reset_request_block(mis: *mut PcrIncoming) {
    ffi_call!(|| -> Result<()> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        unsafe { incoming(mis) }?.reset_request_block();
        Ok(())
    })
}

/// Copies the counters of `mis` into `*out`. Returns 0 or -EINVAL for NULL arguments.
#[no_mangle]
pub extern "C" fn pcr_incoming_get_stats(mis: *const PcrIncoming, out: *mut Stats) -> c_int {
    ffi_call!(|| -> Result<()> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        let incoming = unsafe { incoming(mis) }?;
        let out = try_out("out", out)?;
        // SAFETY: `out` is non-NULL and points to a writable PcrStats (the header's contract).
        unsafe { out.write(incoming.stats()) };
        Ok(())
    })
}
