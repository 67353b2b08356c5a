//! Why a fault thread stops on its own ([`FaultThreadFailure`], the destination's failed
//! state), and which errors of read(2) and poll(2) it survives instead ([`transient`],
//! [`Retry`]).

use std::sync::atomic::Ordering;

/// Why the fault thread stopped serving faults before cleanup asked it to (see
/// [`crate::Incoming::fault_thread_failure`]). Transient errors (EINTR, EAGAIN, ENOMEM,
/// ENOBUFS) never stop it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultThreadFailure {
    /// Reading or polling the userfaultfd failed for good with this errno (positive).
    Os(i32),
    /// The fault thread panicked (a bug, or a panicking `fault_thread_started` hook).
    Panic,
}

impl FaultThreadFailure {
    /// The errno that stands for it: the OS error's, or EFAULT for a panic (as an internal
    /// panic reaches C).
    pub fn errno(self) -> i32 {
        match self {
            FaultThreadFailure::Os(errno) => errno,
            FaultThreadFailure::Panic => libc::EFAULT,
        }
    }

    /// Stored form in [`Counters::fault_thread_failure`]: 0 none, errno, or -1 (panic).
    pub(crate) fn encode(failure: Option<FaultThreadFailure>) -> i32 {
        match failure {
            None => 0,
            Some(FaultThreadFailure::Os(errno)) => errno.max(1),
            Some(FaultThreadFailure::Panic) => -1,
        }
    }

    pub(crate) fn decode(raw: i32) -> Option<FaultThreadFailure> {
        match raw {
            0 => None,
            -1 => Some(FaultThreadFailure::Panic),
            errno => Some(FaultThreadFailure::Os(errno)),
        }
    }
}

/// Errors of read(2) and poll(2) on the userfaultfd (or the wake eventfd) that pass: a
/// signal (EINTR), a spurious wake-up (EAGAIN), a short lack of kernel memory (ENOMEM,
/// ENOBUFS). Anything else is a failure of the thread.
pub(super) fn transient(errno: i32) -> bool {
    matches!(
        errno,
        libc::EINTR | libc::EAGAIN | libc::ENOMEM | libc::ENOBUFS
    )
}

/// Counts consecutive transient errors other than EINTR: logs the first of a run, and
/// backs off 1 ms before each retry, so that a lasting ENOMEM does not spin a core. An
/// EINTR is retried at once: a signal is no error, and a sleep of a fixed length would
/// never end under a flood of signals (each one restarts it).
#[derive(Default)]
pub(super) struct Retry {
    run: u32,
}

impl Retry {
    #[cold]
    pub(super) fn again(&mut self, what: &str, err: &std::io::Error) {
        if err.raw_os_error() == Some(libc::EINTR) {
            return;
        }
        self.run = self.run.saturating_add(1);
        if self.run == 1 {
            log::warn!("postcopy fault thread: {what}: {err}; retrying");
        }
        // SAFETY: poll with no descriptors is a 1 ms sleep; a signal only ends it early.
        unsafe { libc::poll(std::ptr::null_mut(), 0, 1) };
    }

    #[inline]
    pub(super) fn reset(&mut self) {
        self.run = 0;
    }
}

impl crate::destination::incoming::Incoming {
    /// `Some` when the fault thread of the current (or last) migration stopped on its own
    /// rather than for cleanup: a fatal userfaultfd error or a panic. The destination is
    /// then in a failed state: it was aborted as by [`crate::Incoming::abort`] (every
    /// missing page poisoned or zero-filled, so a later fault raises SIGBUS or reads zeros
    /// and never hangs), `resend_pending` and `pause_requests` fail with ESRCH, and cleanup
    /// reports the migration failed. Reset when `enable_notify` starts a new fault thread.
    pub fn fault_thread_failure(&self) -> Option<FaultThreadFailure> {
        FaultThreadFailure::decode(self.counters.fault_thread_failure.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_and_short_shortages_are_transient_other_errors_are_not() {
        for errno in [libc::EINTR, libc::EAGAIN, libc::ENOMEM, libc::ENOBUFS] {
            assert!(transient(errno), "{errno}");
        }
        for errno in [
            libc::EBADF,
            libc::EINVAL,
            libc::EFAULT,
            libc::EIO,
            libc::ENOTTY,
        ] {
            assert!(!transient(errno), "{errno}");
        }
    }

    #[test]
    fn the_stored_failure_reads_back() {
        for f in [
            None,
            Some(FaultThreadFailure::Panic),
            Some(FaultThreadFailure::Os(libc::EBADF)),
        ] {
            assert_eq!(FaultThreadFailure::decode(FaultThreadFailure::encode(f)), f);
        }
        assert_eq!(FaultThreadFailure::Panic.errno(), libc::EFAULT);
    }
}
