//! The library's own mlock policy (`enable_mlock` without an mlock hook): unlock this
//! destination's locked block ranges before the first discard (locked memory refuses
//! MADV_DONTNEED) and lock exactly those again at cleanup. Never munlockall/mlockall: a VMM
//! may run several VMs in one process, and their memory is not ours to unlock (issue 17
//! item 11).

use parking_lot::Mutex;

use super::block::BlockTable;
use super::incoming::Incoming;
use super::vma::{parts_of, VmaPart};
use crate::error::{Error, Result};

/// `mlock2` flag: lock pages as they fault in (linux/mman.h).
const MLOCK_ONFAULT: libc::c_uint = 1;

/// The ranges this library unlocked, to lock again at cleanup, and whether its own policy
/// is in use (from init to cleanup).
#[derive(Debug, Default)]
pub(crate) struct Unlocked(Mutex<(bool, Vec<VmaPart>)>);

// munlock and mlock2 are raw system calls: sanitizers (ASan) replace the libc functions by
// no-ops, which would leave the blocks locked and their discards refused.

fn munlock(part: &VmaPart) -> Result<()> {
    // SAFETY: munlock changes no contents and no mapping; the range is guest RAM the
    // hypervisor described as a block (or part of one).
    if unsafe { libc::syscall(libc::SYS_munlock, part.start, part.len()) } != 0 {
        return Err(Error::os(
            &std::io::Error::last_os_error(),
            format_args!("munlock of [{:#x}, {:#x})", part.start, part.end),
        ));
    }
    Ok(())
}

fn mlock(part: &VmaPart) -> Result<()> {
    // mlock2 only where its flag is needed: plain mlock is the older call, which every
    // kernel and valgrind (which lacks mlock2) implement.
    let rc = if part.lock_on_fault {
        // SAFETY: as munlock: mlock2 locks the range as it faults in; contents and
        // mappings stay.
        unsafe { libc::syscall(libc::SYS_mlock2, part.start, part.len(), MLOCK_ONFAULT) }
    } else {
        // SAFETY: as munlock: mlock populates and locks the range; contents and mappings
        // stay.
        unsafe { libc::syscall(libc::SYS_mlock, part.start, part.len()) }
    };
    if rc != 0 {
        return Err(Error::os(
            &std::io::Error::last_os_error(),
            format_args!("mlock of [{:#x}, {:#x})", part.start, part.end),
        ));
    }
    Ok(())
}

impl Unlocked {
    /// Unlocks the locked parts of `ranges` (`(host, length)` each) and records them. On a
    /// failure, locks again what this call unlocked and returns the error.
    pub(crate) fn unlock(&self, ranges: &[(usize, usize)]) -> Result<()> {
        let parts = parts_of(ranges)
            .map_err(|e| Error::os(&e, "reading /proc/self/smaps for the mlocked ranges"))?;
        let mut guard = self.0.lock();
        guard.0 = true;
        let done = &mut guard.1;
        let before = done.len();
        for part in parts.into_iter().filter(|p| p.locked) {
            if let Err(e) = munlock(&part) {
                for part in done.drain(before..) {
                    if let Err(relock) = mlock(&part) {
                        log::error!("re-locking after a failed munlock: {relock}");
                    }
                }
                return Err(e);
            }
            log::debug!("munlock [{:#x}, {:#x})", part.start, part.end);
            done.push(part);
        }
        Ok(())
    }

    /// Whether [`Unlocked::unlock`] ran since the last [`Unlocked::relock`]: the library's
    /// own policy is in use.
    pub(crate) fn in_use(&self) -> bool {
        self.0.lock().0
    }

    /// Locks again every range [`Unlocked::unlock`] unlocked (as it was: on fault or
    /// populated), and forgets them. Every range is tried; the first error is returned.
    pub(crate) fn relock(&self) -> Result<()> {
        let mut first = None;
        let mut guard = self.0.lock();
        guard.0 = false;
        for part in guard.1.drain(..) {
            if let Err(e) = mlock(&part) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Incoming {
    /// The mlock policy with `false` ([`IncomingHooks::mlock`]): the hook, or the library's
    /// own policy on the blocks of `table` (their locked parts only).
    pub(super) fn unlock_memory(&self, table: &BlockTable) -> Result<()> {
        match self.hooks.mlock(false) {
            Some(result) => result,
            None if !self.config.enable_mlock => Ok(()),
            None => {
                let ranges: Vec<(usize, usize)> = table
                    .entries()
                    .iter()
                    .map(|e| (e.block.host, e.block.length as usize))
                    .collect();
                self.unlocked.unlock(&ranges)
            }
        }
    }

    /// The mlock policy with `true`: the hook, or the library's own policy (what
    /// [`Incoming::unlock_memory`] unlocked, locked again).
    pub(super) fn relock_memory(&self) -> Result<()> {
        match self.hooks.mlock(true) {
            Some(result) => result,
            None if !self.config.enable_mlock => Ok(()),
            None => self.unlocked.relock(),
        }
    }
}
