//! C exports of the postcopy state machine (`pcr_state_get/set`).

use super::incoming::{incoming, PcrIncoming};
use super::ret::{ffi_call, ErrorWith};
use super::types::PcrState;
use crate::destination::incoming::Incoming;
use crate::error::{Error, Result};
use crate::state::State;

/// Moves `incoming` to `new_state`; a refused step (or an unknown value) is an error whose
/// C value is the current state.
pub(crate) fn set_state(
    incoming: &Incoming,
    new_state: PcrState,
) -> std::result::Result<PcrState, ErrorWith<PcrState>> {
    let refused = |error: Error| ErrorWith {
        error,
        value: incoming.state() as u32,
    };
    let new = State::from_raw(new_state)
        .ok_or_else(|| refused(Error::invalid(format!("{new_state} is not a PcrState"))))?;
    incoming
        .set_state(new)
        .map(|old| old as u32)
        .map_err(refused)
}

/// The state of `mis` (load-acquire); PCR_STATE_NONE for NULL (logged).
#[no_mangle]
pub extern "C" fn pcr_state_get(mis: *const PcrIncoming) -> PcrState {
    ffi_call!(|| -> Result<PcrState> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        Ok(unsafe { incoming(mis) }?.state() as u32)
    })
}

/// Sets the state of `mis` and returns the previous one. Steps are checked: NONE -> ADVISE
/// -> [DISCARD] -> LISTENING -> RUNNING, anything -> END, END -> NONE, or staying put. A
/// refused step (or an unknown value) changes nothing, is logged, and returns the current
/// state: compare with `pcr_state_get()` to detect it. PCR_STATE_NONE for NULL (logged).
#[no_mangle]
pub extern "C" fn pcr_state_set(mis: *mut PcrIncoming, new_state: PcrState) -> PcrState {
    ffi_call!(|| -> std::result::Result<PcrState, ErrorWith<PcrState>> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        let incoming = unsafe { incoming(mis) }.map_err(|error| ErrorWith {
            error,
            value: State::None as u32,
        })?;
        set_state(incoming, new_state)
    })
}
