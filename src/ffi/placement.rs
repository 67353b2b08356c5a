//! C exports placing pages (`pcr_place_page*`, `pcr_get_tmp_page`).

use std::ffi::{c_int, c_void};

use super::incoming::{incoming, PcrIncoming};
use super::ret::ffi_call;
use crate::destination::placement::Placement;
use crate::error::Result;

/// Atomically places the host page at `host` (inside a block, aligned to its page size)
/// from `pagesize` bytes at `from` (`pagesize` must be the block's page size; `from` needs
/// no particular alignment), and wakes the threads faulting on it. Callable from any thread, including `request_page`, after
/// `pcr_incoming_enable_notify`. Returns 0; -EEXIST when the page was already present (a
/// racing placer won; the waiters were woken: benign); or a negative errno (-EINVAL for a
/// bad address or size or a call before enable_notify). After any other error the page
/// stays pending (`pcr_incoming_resend_pending` re-sends it), the threads blocked on it
/// are woken to fault again, and that next fault requests it again.
#[no_mangle]
pub extern "C" fn pcr_place_page(
    mis: *mut PcrIncoming,
    host: *mut c_void,
    from: *const c_void,
    pagesize: usize,
) -> c_int {
    ffi_call!(|| -> Result<Placement> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        let incoming = unsafe { incoming(mis) }?;
        // SAFETY: the header requires `from` to hold `pagesize` readable bytes.
        unsafe { incoming.place_page(host as usize, from.cast(), pagesize as u64) }
    })
}

/// Atomically places a zero page at `host`, as `pcr_place_page`: with UFFDIO_ZEROPAGE
/// where the block's registration offers it, else by copying a zero page (hugetlbfs).
#[no_mangle]
pub extern "C" fn pcr_place_page_zero(
    mis: *mut PcrIncoming,
    host: *mut c_void,
    pagesize: usize,
) -> c_int {
    ffi_call!(|| -> Result<Placement> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        let incoming = unsafe { incoming(mis) }?;
        incoming.place_page_zero(host as usize, pagesize as u64)
    })
}

/// Places `length` bytes of whole pages (one block) from `from` with one UFFDIO_COPY: the
/// batched form of `pcr_place_page` for a contiguous run of the background stream (`from`
/// needs no particular alignment). Pages already present are skipped, not an error: they
/// are counted in `PcrStats.already_present`, and every waiter is woken. Returns the number
/// of pages this call placed (>= 0; 0 when every page was already present, where
/// `pcr_place_page` returns -EEXIST), or a negative errno.
#[no_mangle]
pub extern "C" fn pcr_place_pages(
    mis: *mut PcrIncoming,
    host: *mut c_void,
    from: *const c_void,
    length: usize,
) -> isize {
    ffi_call!(|| -> Result<u64> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        let incoming = unsafe { incoming(mis) }?;
        // SAFETY: the header requires `from` to hold `length` readable bytes.
        let run = unsafe { incoming.place_pages(host as usize, from.cast(), length as u64) }?;
        Ok(run.placed)
    })
}

/// Places `length` bytes of zero pages (one block) in one call: the batched form of
/// `pcr_place_page_zero`. Pages already present are skipped as in `pcr_place_pages`.
/// Returns the number of pages this call placed (>= 0; 0 when every page was already
/// present), or a negative errno.
#[no_mangle]
pub extern "C" fn pcr_place_pages_zero(
    mis: *mut PcrIncoming,
    host: *mut c_void,
    length: usize,
) -> isize {
    ffi_call!(|| -> Result<u64> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        let incoming = unsafe { incoming(mis) }?;
        Ok(incoming
            .place_pages_zero(host as usize, length as u64)?
            .placed)
    })
}

/// A scratch buffer as large as the largest block page, to assemble a page before
/// `pcr_place_page`. The same buffer every call; valid until cleanup or free. NULL (logged)
/// before init or if it cannot be mapped.
#[no_mangle]
pub extern "C" fn pcr_get_tmp_page(mis: *mut PcrIncoming) -> *mut c_void {
    ffi_call!(|| -> Result<*mut c_void> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        let incoming = unsafe { incoming(mis) }?;
        incoming.tmp_page().map(|p| p.cast::<c_void>())
    })
}
