//! The incoming postcopy state machine (QEMU's `PostcopyState`).

use std::sync::atomic::{AtomicU32, Ordering};

/// Where the destination is in a postcopy migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum State {
    /// No postcopy migration in progress.
    None = 0,
    /// The source advised postcopy: RAM has been discarded, precopy pages may arrive.
    Advise = 1,
    /// Discard commands are being applied.
    Discard = 2,
    /// Memory is registered with userfaultfd and the fault thread runs.
    Listening = 3,
    /// The guest runs on the destination.
    Running = 4,
    /// Postcopy has finished (cleanup done, or failed).
    End = 5,
}

impl State {
    /// The state numbered `raw`, if any.
    pub fn from_raw(raw: u32) -> Option<State> {
        Some(match raw {
            0 => State::None,
            1 => State::Advise,
            2 => State::Discard,
            3 => State::Listening,
            4 => State::Running,
            5 => State::End,
            _ => return None,
        })
    }

    /// Whether going from `self` to `next` is a legal step. Staying put is always legal.
    ///
    /// NONE -> ADVISE -> [DISCARD] -> LISTENING -> RUNNING; anything -> END; END -> NONE.
    pub fn can_go_to(self, next: State) -> bool {
        use State::*;
        self == next
            || matches!(
                (self, next),
                (None, Advise)
                    | (Advise, Discard)
                    | (Advise, Listening)
                    | (Discard, Listening)
                    | (Listening, Running)
                    | (_, End)
                    | (End, None)
            )
    }
}

/// An atomically updated [`State`] with checked transitions.
#[derive(Debug)]
pub struct StateCell(AtomicU32);

impl Default for StateCell {
    fn default() -> Self {
        StateCell(AtomicU32::new(State::None as u32))
    }
}

impl StateCell {
    /// The current state (load-acquire).
    pub fn get(&self) -> State {
        State::from_raw(self.0.load(Ordering::Acquire)).unwrap_or(State::End)
    }

    /// Moves to `next` if that is legal from the current state; returns the old state, or
    /// the current one as the error when the step is refused.
    pub fn transition(&self, next: State) -> Result<State, State> {
        let mut current = self.0.load(Ordering::Acquire);
        loop {
            let from = State::from_raw(current).unwrap_or(State::End);
            if !from.can_go_to(next) {
                return Err(from);
            }
            match self.0.compare_exchange_weak(
                current,
                next as u32,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(from),
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_only_from_listening() {
        for from in [
            State::None,
            State::Advise,
            State::Discard,
            State::Running,
            State::End,
        ] {
            assert_eq!(
                from.can_go_to(State::Running),
                from == State::Running,
                "{from:?}"
            );
        }
        assert!(State::Listening.can_go_to(State::Running));
    }

    #[test]
    fn refused_transition_leaves_state() {
        let cell = StateCell::default();
        assert_eq!(cell.transition(State::Running), Err(State::None));
        assert_eq!(cell.get(), State::None);
        assert_eq!(cell.transition(State::Advise), Ok(State::None));
        assert_eq!(cell.transition(State::Listening), Ok(State::Advise));
        assert_eq!(cell.transition(State::Running), Ok(State::Listening));
        assert_eq!(cell.transition(State::End), Ok(State::Running));
        assert_eq!(cell.transition(State::None), Ok(State::End));
    }
}
