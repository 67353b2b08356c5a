//! The slot holding a destination's postcopy state between enable_notify and cleanup
//! ([`super::incoming::Active`]: the userfaultfd, the block table, the fault thread).
//!
//! Placement runs on any thread, once a page, so reaching the state costs it no lock and
//! no reference count: a placer announces itself in an in-flight count, then loads the
//! published pointer ([`ActiveSlot::enter`]: two atomic operations a call, on one cache
//! line that only placers write). Cleanup unpublishes the pointer, then waits until no
//! placer is in flight before it goes on ([`ActiveSlot::take`]); so once cleanup has the
//! state, no placement touches the userfaultfd, the table or the counters any more, and
//! the counters are final when cleanup returns. Control calls that hold the state for
//! long (pause, resend, abort: they wait for the fault thread) take a reference count
//! instead ([`ActiveSlot::arc`]), as before.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use super::incoming::Active;

/// An `Arc<Active>` published for lock-free readers, taken back by one writer.
pub(super) struct ActiveSlot {
    /// From `Arc::into_raw`; the slot owns that reference while published.
    ptr: AtomicPtr<Active>,
    in_flight: AtomicUsize,
}

/// Access to the published state for one placement; cleanup waits while it is alive.
pub(super) struct ActiveGuard<'a> {
    slot: &'a ActiveSlot,
    active: &'a Active,
}

impl std::ops::Deref for ActiveGuard<'_> {
    type Target = Active;

    #[inline(always)]
    fn deref(&self) -> &Active {
        self.active
    }
}

impl Drop for ActiveGuard<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.slot.in_flight.fetch_sub(1, SeqCst);
    }
}

impl ActiveSlot {
    pub(super) fn new() -> ActiveSlot {
        ActiveSlot {
            ptr: AtomicPtr::new(std::ptr::null_mut()),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// The published state, if any. The in-flight count is raised before the pointer is
    /// loaded, both sequentially consistent: either [`ActiveSlot::take`] sees this caller
    /// in flight and waits for the guard, or this caller sees the pointer already gone.
    #[inline(always)]
    pub(super) fn enter(&self) -> Option<ActiveGuard<'_>> {
        self.in_flight.fetch_add(1, SeqCst);
        let ptr = self.ptr.load(SeqCst);
        if ptr.is_null() {
            self.in_flight.fetch_sub(1, SeqCst);
            return None;
        }
        // SAFETY: a non-null pointer came from `Arc::into_raw` in `publish`, and the slot's
        // reference is released only by `take`, after it unpublished the pointer and saw no
        // caller in flight; this caller stays counted until the guard (which borrows the
        // slot) drops.
        let active = unsafe { &*ptr };
        Some(ActiveGuard { slot: self, active })
    }

    /// A counted reference to the published state, for callers that hold it across waits.
    pub(super) fn arc(&self) -> Option<Arc<Active>> {
        let guard = self.enter()?;
        let ptr: *const Active = guard.active;
        // SAFETY: `ptr` came from `Arc::into_raw` and the slot's reference is alive while
        // the guard is; one more strong count for the Arc returned.
        unsafe {
            Arc::increment_strong_count(ptr);
            Some(Arc::from_raw(ptr))
        }
    }

    /// Whether a state is published (a hint: it may change right after).
    pub(super) fn is_set(&self) -> bool {
        !self.ptr.load(SeqCst).is_null()
    }

    /// Publishes `active`; the caller serialises publish and take (the control lock) and
    /// has checked the slot empty. If it was not, `active` is handed back.
    pub(super) fn publish(&self, active: Arc<Active>) -> Result<(), Arc<Active>> {
        let raw = Arc::into_raw(active).cast_mut();
        match self
            .ptr
            .compare_exchange(std::ptr::null_mut(), raw, SeqCst, SeqCst)
        {
            Ok(_) => Ok(()),
            // SAFETY: `raw` came from `Arc::into_raw` just above and was not published.
            Err(_) => Err(unsafe { Arc::from_raw(raw) }),
        }
    }

    /// Unpublishes the state and returns the slot's reference to it once no placer holds
    /// it any more. The calling thread must not hold a guard (it would wait for itself).
    pub(super) fn take(&self) -> Option<Arc<Active>> {
        let raw = self.ptr.swap(std::ptr::null_mut(), SeqCst);
        if raw.is_null() {
            return None;
        }
        // A placement in flight is one ioctl: spin a little, then sleep between looks.
        let mut looks = 0u32;
        while self.in_flight.load(SeqCst) != 0 {
            looks += 1;
            if looks < 1000 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        // SAFETY: `raw` came from `Arc::into_raw` in `publish`; it is unpublished, so this
        // is the slot's one reference, handed to the caller.
        Some(unsafe { Arc::from_raw(raw) })
    }
}

impl Drop for ActiveSlot {
    fn drop(&mut self) {
        drop(self.take());
    }
}
