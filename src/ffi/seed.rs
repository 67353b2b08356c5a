//! The 2017 seed ABI: QEMU's `postcopy-ram.c` names and signatures, declared by
//! `include/postcopy_ram_seed.h` (not by the generated `postcopy_ram.h`), built with the
//! default-on `seed-abi` feature. Without it the library exports no QEMU-named symbol, so
//! that its static library links into QEMU itself.
//!
//! The handle-less `postcopy_state_get/set` and `postcopy_ram_supported_by_host` act on the
//! newest live destination, which this module tracks.

use std::ffi::{c_char, c_int, c_ulong, c_void};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use super::args::{try_handle, try_handle_mut, try_str, try_take};
use super::incoming::{incoming, PcrIncoming};
use super::ret::{ffi_call, ErrorWith};
use super::source::{PcrDiscardState, PcrSource};
use super::state::set_state;
use super::types::PcrState;
use crate::destination::host_support::check_host_support;
use crate::destination::incoming::Incoming;
use crate::destination::placement::Placement;
use crate::error::{Error, Result};
use crate::state::State;

/// A live destination as the handle-less functions see it: a weak reference (they never
/// own it) and a gate that `pcr_incoming_free` closes, waiting for the calls inside it.
struct Live {
    incoming: Weak<Incoming>,
    gate: RwLock<()>,
}

/// Live destinations, newest last.
static LIVE: Mutex<Vec<Arc<Live>>> = Mutex::new(Vec::new());

/// Records a new destination (`pcr_incoming_new`).
pub(crate) fn register(incoming: &Arc<Incoming>) {
    LIVE.lock().push(Arc::new(Live {
        incoming: Arc::downgrade(incoming),
        gate: RwLock::new(()),
    }));
}

/// Forgets a destination being freed (`pcr_incoming_free`), then waits until no
/// handle-less call still uses it: after this returns none of its callbacks runs from one,
/// and the caller's reference is the last strong one, so cleanup (if still needed) runs in
/// `pcr_incoming_free`, not on another thread after it returned.
pub(crate) fn unregister(incoming: &Arc<Incoming>) {
    let target = Arc::downgrade(incoming);
    let removed: Vec<Arc<Live>> = {
        let mut live = LIVE.lock();
        let (gone, kept) = live.drain(..).partition(|l| l.incoming.ptr_eq(&target));
        *live = kept;
        gone
    };
    for entry in removed {
        drop(entry.gate.write());
    }
}

/// Runs `f` on the newest live destination (or `None`), inside its gate: a concurrent
/// `pcr_incoming_free` waits for `f` to return. The strong reference `f` sees is dropped
/// before the gate opens. The gate is taken recursively, so a callback of `f` may call a
/// handle-less function again; it must not free the handle (that would wait for itself).
fn with_newest<R>(f: impl FnOnce(Option<&Incoming>) -> R) -> R {
    let entry = LIVE.lock().last().cloned();
    let Some(entry) = entry else {
        return f(None);
    };
    let _gate = entry.gate.read_recursive();
    // Taken after the gate, so dropped before it. None: freed between the two locks (its
    // unregister is waiting for this gate or done), so it is not live any more.
    let incoming = entry.incoming.upgrade();
    f(incoming.as_deref())
}

/// `pcr_incoming_supported_by_host` for the newest live destination, or, with none alive,
/// for private anonymous memory of the host page size.
#[no_mangle]
pub extern "C" fn postcopy_ram_supported_by_host() -> bool {
    ffi_call!(|| -> Result<()> {
        with_newest(|newest| match newest {
            Some(incoming) => incoming.supported_by_host(),
            None => check_host_support(Vec::new(), 4096),
        })
    })
}

/// `pcr_incoming_init`.
#[no_mangle]
pub extern "C" fn postcopy_ram_incoming_init(mis: *mut PcrIncoming, ram_pages: usize) -> c_int {
    ffi_call!(|| -> Result<()> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        unsafe { incoming(mis) }?.init(ram_pages)
    })
}

/// `pcr_incoming_cleanup`.
#[no_mangle]
pub extern "C" fn postcopy_ram_incoming_cleanup(mis: *mut PcrIncoming) -> c_int {
    ffi_call!(|| -> Result<()> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        unsafe { incoming(mis) }?.cleanup()
    })
}

/// `pcr_incoming_prepare_discard`.
#[no_mangle]
pub extern "C" fn postcopy_ram_prepare_discard(mis: *mut PcrIncoming) -> c_int {
    ffi_call!(|| -> Result<()> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        unsafe { incoming(mis) }?.prepare_discard()
    })
}

/// `pcr_incoming_enable_notify`.
#[no_mangle]
pub extern "C" fn postcopy_ram_enable_notify(mis: *mut PcrIncoming) -> c_int {
    ffi_call!(|| -> Result<()> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        unsafe { incoming(mis) }?.enable_notify()
    })
}

/// `pcr_place_page`.
#[no_mangle]
pub extern "C" fn postcopy_place_page(
    mis: *mut PcrIncoming,
    host: *mut c_void,
    from: *mut c_void,
    pagesize: usize,
) -> c_int {
    ffi_call!(|| -> Result<Placement> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        let incoming = unsafe { incoming(mis) }?;
        // SAFETY: the header requires `from` to hold `pagesize` readable bytes.
        unsafe { incoming.place_page(host as usize, from.cast(), pagesize as u64) }
    })
}

/// `pcr_place_page_zero`.
#[no_mangle]
pub extern "C" fn postcopy_place_page_zero(
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

/// `pcr_get_tmp_page`.
#[no_mangle]
pub extern "C" fn postcopy_get_tmp_page(mis: *mut PcrIncoming) -> *mut c_void {
    ffi_call!(|| -> Result<*mut c_void> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        unsafe { incoming(mis) }?
            .tmp_page()
            .map(|p| p.cast::<c_void>())
    })
}

/// `pcr_discard_send_init`.
#[no_mangle]
pub extern "C" fn postcopy_discard_send_init(
    ms: *mut PcrSource,
    offset: c_ulong,
    name: *const c_char,
) -> *mut PcrDiscardState {
    ffi_call!(|| -> Result<*mut PcrDiscardState> {
        // SAFETY: `ms` is NULL or a live handle (the header's contract).
        let ms = unsafe { try_handle(ms) }?;
        // SAFETY: `name` is NULL or a NUL-terminated string (the header's contract).
        let name = unsafe { try_str("name", name) }?;
        #[allow(clippy::useless_conversion)]
        let batch = ms.source.discard_begin(u64::from(offset), name)?;
        Ok(Box::into_raw(Box::new(PcrDiscardState { batch })))
    })
}

/// `pcr_discard_send_range`.
#[no_mangle]
pub extern "C" fn postcopy_discard_send_range(
    ms: *mut PcrSource,
    pds: *mut PcrDiscardState,
    start: c_ulong,
    length: c_ulong,
) {
    ffi_call!(|| -> Result<()> {
        // SAFETY: `ms` is NULL or a live handle (the header's contract).
        let ms = unsafe { try_handle(ms) }?;
        // SAFETY: `pds` is NULL or a live batch, used by one thread at a time.
        let pds = unsafe { try_handle_mut(pds) }?;
        #[allow(clippy::useless_conversion)]
        ms.source
            .discard_range(&mut pds.batch, u64::from(start), u64::from(length))
    })
}

/// `pcr_discard_send_finish`.
#[no_mangle]
pub extern "C" fn postcopy_discard_send_finish(ms: *mut PcrSource, pds: *mut PcrDiscardState) {
    ffi_call!(|| -> Result<()> {
        // SAFETY: non-NULL batches come from *_discard_send_init and are given back once.
        let pds = unsafe { try_take(pds) }?;
        // SAFETY: `ms` is NULL or a live handle (the header's contract).
        let ms = unsafe { try_handle(ms) }?;
        ms.source.discard_finish(pds.batch).map(drop)
    })
}

/// The state of the newest live destination; PCR_STATE_NONE when there is none.
#[no_mangle]
pub extern "C" fn postcopy_state_get() -> PcrState {
    ffi_call!(|| -> Result<PcrState> {
        Ok(with_newest(|newest| {
            newest.map_or(State::None as u32, |i| i.state() as u32)
        }))
    })
}

/// `pcr_state_set` on the newest live destination. With none alive, logs and returns
/// PCR_STATE_NONE.
#[no_mangle]
pub extern "C" fn postcopy_state_set(new_state: PcrState) -> PcrState {
    ffi_call!(|| -> std::result::Result<PcrState, ErrorWith<PcrState>> {
        with_newest(|newest| {
            let incoming = newest.ok_or_else(|| ErrorWith {
                error: Error::invalid("no live destination (PcrIncoming)"),
                value: State::None as u32,
            })?;
            set_state(incoming, new_state)
        })
    })
}
