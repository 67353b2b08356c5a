//! Counters of a postcopy incoming migration, updated lock-free from any thread.
//!
//! `faults` and its categories (requests, request_errors, duplicate_faults, late_faults,
//! faults_outside, paused_faults) are written by the fault thread alone, each fault
//! counted in `faults` and in its category in one step under a sequence counter
//! ([`Counters::fault_update`]); [`Counters::snapshot`] reads them under the same counter
//! (a seqlock), so that `faults` equals the sum of its categories in every snapshot. The
//! writer never waits and never holds it across a syscall or a callback; a reader retries
//! only while the fault thread is inside one of those few stores.

use std::sync::atomic::{
    fence, AtomicI32, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

/// Live counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Odd while the fault thread updates `faults` and its categories.
    fault_seq: AtomicU64,
    pub faults: AtomicU64,
    pub requests: AtomicU64,
    pub duplicate_faults: AtomicU64,
    pub late_faults: AtomicU64,
    pub faults_outside: AtomicU64,
    pub request_errors: AtomicU64,
    pub last_request_errno: AtomicI32,
    pub pages_placed: AtomicU64,
    pub zero_pages_placed: AtomicU64,
    pub already_present: AtomicU64,
    pub unexpected_events: AtomicU64,
    pub discard_ranges_empty: AtomicU64,
    pub paused_faults: AtomicU64,
    pub resent: AtomicU64,
    pub resend_errors: AtomicU64,
    pub placement_errors: AtomicU64,
    pub last_placement_errno: AtomicI32,
    pub remove_events: AtomicU64,
    pub pages_lost: AtomicU64,
    /// Why the fault thread stopped on its own ([`crate::destination::fault_thread::FaultThreadFailure`],
    /// encoded: 0 none); cleared when a fault thread starts.
    pub fault_thread_failure: AtomicI32,
}

/// A snapshot of the counters of a destination (`pcr_incoming_get_stats` in C, where it is
/// `PcrStats`). `faults` and its categories are read as of one moment, so `faults ==
/// requests + request_errors + duplicate_faults + late_faults + faults_outside +
/// paused_faults` holds in every snapshot, postcopy running or not. The other counters
/// are each updated right after the event they count, so while postcopy runs a woken
/// thread may read them a step behind (a page it saw placed not yet in `pages_placed`);
/// after cleanup, which joins the fault thread, all are final.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Page-fault messages read from the userfaultfd.
    pub faults: u64,
    /// Page requests for faults, counted when the request callback is called, and moved to
    /// `request_errors` if it refuses (so, once it returned, the requests it accepted);
    /// re-sends are counted apart, in `resent`. Every fault is counted once, with its
    /// category, in one step: faults = requests + request_errors + duplicate_faults +
    /// late_faults + faults_outside + paused_faults in every snapshot.
    pub requests: u64,
    /// Faults on a page already requested and not yet placed (no new request).
    pub duplicate_faults: u64,
    /// Faults on a page placed after the fault was queued (no request).
    pub late_faults: u64,
    /// Faults outside every block (logged; the fault thread keeps serving).
    pub faults_outside: u64,
    /// Requests for faults whose callback returned an error (the page stays pending and
    /// requests pause).
    pub request_errors: u64,
    /// Pages placed with data.
    pub pages_placed: u64,
    /// Pages placed as zero.
    pub zero_pages_placed: u64,
    /// Placements that found the page already present (-EEXIST; waiters woken).
    pub already_present: u64,
    /// userfaultfd messages other than page faults (and, with `track_remove`, REMOVE
    /// events).
    pub unexpected_events: u64,
    /// Host pages requested (or recorded while requests were paused) and not yet received:
    /// the pending set, at the snapshot.
    pub pending_pages: u64,
    /// Faults on new pages read while requests were paused (recorded pending, not sent).
    pub paused_faults: u64,
    /// Requests re-sent by `resend_pending` that the callback accepted.
    pub resent: u64,
    /// Re-sends the callback refused (requests paused again).
    pub resend_errors: u64,
    /// Placements that failed with an error other than EEXIST (their pages stay pending,
    /// their threads are woken, and their next fault requests them again).
    pub placement_errors: u64,
    /// UFFD_EVENT_REMOVE messages handled (only with `track_remove`).
    pub remove_events: u64,
    /// Host pages given up by an abort (poisoned, or zero-filled without UFFDIO_POISON), or,
    /// at a failed cleanup without abort, every page not received, requested or not.
    pub pages_lost: u64,
    /// errno (positive) of the last failed page request, 0 if none.
    pub last_request_errno: i32,
    /// errno (positive) of the last failed placement, 0 if none.
    pub last_placement_errno: i32,
    /// Empty discard ranges (length 0) accepted and skipped: QEMU 2.6-2.9 sources send
    /// `(block_length, 0)` after a block whose last page is clean.
    pub discard_ranges_empty: u64,
}

/// Adds `n` (wrapping: `u64::MAX` subtracts one) to a counter that has one writer, the
/// fault thread: a load and a store, no locked read-modify-write on the hot path.
#[inline(always)]
fn add_one_writer(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

impl Counters {
    /// Fault thread only (the one writer of the fault counters): runs `update`, a few
    /// relaxed stores to `faults` and its categories, as one step for
    /// [`Counters::snapshot`]. No syscall, callback or lock inside.
    #[inline(always)]
    fn fault_update(&self, update: impl FnOnce()) {
        let seq = self.fault_seq.load(Relaxed);
        self.fault_seq.store(seq.wrapping_add(1), Relaxed);
        fence(Release);
        update();
        self.fault_seq.store(seq.wrapping_add(2), Release);
    }

    /// Fault thread only: one fault, counted in `faults` and in `category` together.
    #[inline(always)]
    pub(crate) fn count_fault(&self, category: &AtomicU64) {
        self.fault_update(|| {
            add_one_writer(&self.faults, 1);
            add_one_writer(category, 1);
        });
    }

    /// Fault thread only: a request `request_page` refused moves from `requests` to
    /// `request_errors`, in one step.
    #[inline]
    pub(crate) fn request_refused(&self) {
        self.fault_update(|| {
            add_one_writer(&self.requests, u64::MAX);
            add_one_writer(&self.request_errors, 1);
        });
    }

    /// `faults` and its categories as of one moment of the fault thread.
    fn fault_counts(&self) -> [u64; 7] {
        loop {
            let before = self.fault_seq.load(Acquire);
            if before & 1 == 0 {
                let counts = [
                    self.faults.load(Relaxed),
                    self.requests.load(Relaxed),
                    self.request_errors.load(Relaxed),
                    self.duplicate_faults.load(Relaxed),
                    self.late_faults.load(Relaxed),
                    self.faults_outside.load(Relaxed),
                    self.paused_faults.load(Relaxed),
                ];
                fence(Acquire);
                if self.fault_seq.load(Relaxed) == before {
                    return counts;
                }
            }
            std::hint::spin_loop();
            std::thread::yield_now();
        }
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let [faults, requests, request_errors, duplicate_faults, late_faults, faults_outside, paused_faults] =
            self.fault_counts();
        Stats {
            faults,
            requests,
            duplicate_faults,
            late_faults,
            faults_outside,
            request_errors,
            last_request_errno: self.last_request_errno.load(Relaxed),
            pages_placed: self.pages_placed.load(Relaxed),
            zero_pages_placed: self.zero_pages_placed.load(Relaxed),
            already_present: self.already_present.load(Relaxed),
            unexpected_events: self.unexpected_events.load(Relaxed),
            pending_pages: 0,
            paused_faults,
            resent: self.resent.load(Relaxed),
            resend_errors: self.resend_errors.load(Relaxed),
            placement_errors: self.placement_errors.load(Relaxed),
            remove_events: self.remove_events.load(Relaxed),
            pages_lost: self.pages_lost.load(Relaxed),
            last_placement_errno: self.last_placement_errno.load(Relaxed),
            discard_ranges_empty: self.discard_ranges_empty.load(Relaxed),
        }
    }
}
