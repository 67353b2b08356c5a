//! C exports of the postcopy state machine.

use super::guard::guard;
use super::incoming::{current, handle, MigrationIncomingState};
use super::types::PostcopyState;
use crate::incoming::Incoming;
use crate::state::State;

fn set_on(what: &str, incoming: &Incoming, new_state: PostcopyState) -> PostcopyState {
    let Some(new) = State::from_raw(new_state) else {
        log::error!("{what}: {new_state} is not a PostcopyState");
        return incoming.state() as u32;
    };
    match incoming.set_state(new) {
        Ok(old) => old as u32,
        Err(e) => {
            log::error!("{what}: {e}");
            incoming.state() as u32
        }
    }
}

/// The state of the newest live destination (load-acquire); POSTCOPY_INCOMING_NONE when
/// there is none.
#[no_mangle]
pub extern "C" fn postcopy_state_get() -> PostcopyState {
    guard("postcopy_state_get", || {
        current().map_or(State::None as u32, |i| i.state() as u32)
    })
}

/// Sets the state of the newest live destination and returns the previous one. Steps are
/// checked: NONE -> ADVISE -> [DISCARD] -> LISTENING -> RUNNING, anything -> END,
/// END -> NONE, or staying put. A refused step (or an unknown value) changes nothing, is
/// logged, and returns the current state: compare with `postcopy_state_get()` to detect it.
/// With no live destination, logs and returns POSTCOPY_INCOMING_NONE.
#[no_mangle]
pub extern "C" fn postcopy_state_set(new_state: PostcopyState) -> PostcopyState {
    guard("postcopy_state_set", || match current() {
        Some(incoming) => set_on("postcopy_state_set", &incoming, new_state),
        None => {
            log::error!("postcopy_state_set: no live MigrationIncomingState");
            State::None as u32
        }
    })
}

/// The state of `mis` (POSTCOPY_INCOMING_NONE for NULL, logged).
#[no_mangle]
pub extern "C" fn postcopy_state_get_for(mis: *const MigrationIncomingState) -> PostcopyState {
    guard("postcopy_state_get_for", || {
        handle("postcopy_state_get_for", mis)
            .map_or(State::None as u32, |m| m.incoming.state() as u32)
    })
}

/// `postcopy_state_set` on `mis`.
#[no_mangle]
pub extern "C" fn postcopy_state_set_for(
    mis: *mut MigrationIncomingState,
    new_state: PostcopyState,
) -> PostcopyState {
    guard("postcopy_state_set_for", || {
        match handle("postcopy_state_set_for", mis) {
            Some(m) => set_on("postcopy_state_set_for", &m.incoming, new_state),
            None => State::None as u32,
        }
    })
}
