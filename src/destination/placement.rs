//! Placing pages: UFFDIO_COPY / UFFDIO_ZEROPAGE into registered blocks, with the
//! arithmetic that checks a placement against its block and the bookkeeping of received
//! pages and counters.

use std::sync::atomic::Ordering;

use super::block::{BlockEntry, BlockTable};
use super::incoming::{Active, Incoming};
use super::received::DiscardToken;
use crate::error::{Error, Result};
use crate::sys::uffd::PlaceError;

/// What a successful placement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The page was placed and its waiters woken.
    Placed,
    /// The page was already present (another placer won the race); its waiters were woken.
    AlreadyPresent,
}

/// Result of placing a run of pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunPlacement {
    /// Pages this call placed.
    pub placed: u64,
    /// Pages that were already present.
    pub already_present: u64,
}

impl Incoming {
    /// Checks a placement of `len` bytes at `host` against the blocks: inside one block,
    /// aligned to its page size, a non-zero multiple of it; and exactly one page when
    /// `single` is set. Why a placement is refused is worked out out of line.
    #[inline(always)]
    fn check_place<'a>(
        table: &'a BlockTable,
        what: &'static str,
        host: usize,
        len: u64,
        single: bool,
    ) -> Result<&'a BlockEntry> {
        if let Some(entry) = table.find(host) {
            let b = &entry.block;
            // Page sizes are powers of two (BlockTable::new): masks, not divisions.
            let mask = b.page_size - 1;
            let room = b.length - (host - b.host) as u64;
            if (host as u64 | len) & mask == 0
                && len != 0
                && len <= room
                && (!single || len == b.page_size)
            {
                return Ok(entry);
            }
        }
        Err(Self::refused(table, what, host, len, single))
    }

    /// Why [`Incoming::check_place`] refused a placement.
    #[cold]
    #[inline(never)]
    fn refused(table: &BlockTable, what: &str, host: usize, len: u64, single: bool) -> Error {
        let Some(entry) = table.find(host) else {
            return Error::invalid(format!(
                "{what}: host address {host:#x} is outside every RAM block"
            ));
        };
        let b = &entry.block;
        let mask = b.page_size - 1;
        if host as u64 & mask != 0 {
            return Error::invalid(format!(
                "{what}: host address {host:#x} is not aligned to block {}'s page size {:#x}",
                b.name, b.page_size
            ));
        }
        if (single && len != b.page_size) || len == 0 || len & mask != 0 {
            return Error::invalid(format!(
                "{what}: size {len:#x} does not match block {}'s page size {:#x}",
                b.name, b.page_size
            ));
        }
        Error::invalid(format!(
            "{what}: {len:#x} bytes at {host:#x} run past block {}",
            b.name
        ))
    }

    /// Bookkeeping of placed pages: received bits set, requested bits cleared (one atomic
    /// operation a word of each, the second only where a bit is set), blocktime ended (a
    /// vCPU woken by the placement that faulted again first had its wait closed by that
    /// fault: [`crate::destination::blocktime`]). When a discard ran since `token` was taken
    /// (before the placement's ioctl), the received bits are cleared again and the range
    /// woken (see [`Incoming::undo_after_discard`]).
    #[inline(always)]
    fn mark_placed(&self, entry: &BlockEntry, host: usize, len: usize, token: DiscardToken) {
        if len == 0 {
            return;
        }
        let first = ((host - entry.block.host) as u64) >> entry.page_shift;
        let count = len as u64 >> entry.page_shift;
        entry.received.set_host_pages(first, count);
        entry.requested.clear_range(first, count);
        if entry.received.raced_with_discard(token) {
            self.undo_after_discard(entry, host, len);
        }
        self.blocktime.end(host, len);
    }

    /// A discard ran between a placement's ioctl and its bookkeeping (issue 17 item 7): the
    /// pages may be gone again. Their received bits are cleared, so that their next fault
    /// is requested, and the range is woken, so that a fault read meanwhile (taken for
    /// "late", never requested) is raised again. A page that is in fact present is then
    /// only marked not received (a recovery would ask for it again, and find it present).
    #[cold]
    #[inline(never)]
    fn undo_after_discard(&self, entry: &BlockEntry, host: usize, len: usize) {
        let off = (host - entry.block.host) as u64;
        entry
            .received
            .clear_range(off >> entry.target_shift, len as u64 >> entry.target_shift);
        if let Some(active) = self.active.enter() {
            if let Err(e) = active.uffd.wake(host, len) {
                log::error!("placement raced with a discard: UFFDIO_WAKE: {e}");
            }
        }
        log::debug!(
            "placement of {len:#x} bytes at {host:#x} in {} raced with a discard: marked not received",
            entry.block.name
        );
    }

    /// Places the whole pages of `[host, host+len)` in `entry` with `fill(offset, bytes)`,
    /// which places `bytes` from `offset` into the run on and returns how many bytes it
    /// placed (the whole rest, or one page). A page found present (EEXIST) is counted,
    /// skipped, and the fill resumes after it; every waiter in the run has been woken.
    /// An OS error stops the run and is returned (the pages placed before it stay placed,
    /// marked and counted); the pages not placed stay pending and their next fault asks for
    /// them again, and the threads blocked there are woken to fault again at once (issue 17
    /// item 6).
    ///
    /// The one placement path of every `place_*` call. Inlined into each: the first fill
    /// and, when it placed the whole run (the common case), the bookkeeping; anything else
    /// continues out of line in [`Incoming::place_run_rest`].
    #[inline(always)]
    pub(super) fn place_run(
        &self,
        what: &'static str,
        entry: &BlockEntry,
        host: usize,
        len: usize,
        zero: bool,
        mut fill: impl FnMut(usize, usize) -> std::result::Result<usize, PlaceError>,
    ) -> Result<RunPlacement> {
        let token = entry.received.discard_token();
        let first = fill(0, len);
        if let Ok(n) = first {
            if n == len {
                self.mark_placed(entry, host, len, token);
                let placed = (len >> entry.page_shift) as u64;
                self.count_placed(zero, placed);
                return Ok(RunPlacement {
                    placed,
                    already_present: 0,
                });
            }
        }
        self.place_run_rest(what, entry, host, len, zero, token, first, &mut fill)
    }

    #[inline(always)]
    fn count_placed(&self, zero: bool, placed: u64) {
        let counter = if zero {
            &self.counters.zero_pages_placed
        } else {
            &self.counters.pages_placed
        };
        counter.fetch_add(placed, Ordering::Relaxed);
    }

    /// [`Incoming::place_run`] after a first fill (`first`) that did not place the whole
    /// run.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn place_run_rest(
        &self,
        what: &str,
        entry: &BlockEntry,
        host: usize,
        len: usize,
        zero: bool,
        token: DiscardToken,
        first: std::result::Result<usize, PlaceError>,
        fill: &mut dyn FnMut(usize, usize) -> std::result::Result<usize, PlaceError>,
    ) -> Result<RunPlacement> {
        let page = entry.block.page_size as usize;
        let mut run = RunPlacement::default();
        let mut off = 0;
        let mut failure = None;
        let mut result = Some(first);
        while off < len {
            let (placed, present) = match result.take().unwrap_or_else(|| fill(off, len - off)) {
                Ok(n) => (n, false),
                Err(PlaceError::AlreadyPresent { placed }) => (placed - placed % page, true),
                Err(PlaceError::Os { errno, placed }) => {
                    // Keep what the calls before the error placed (and woke).
                    let placed = placed - placed % page;
                    self.mark_placed(entry, host + off, placed, token);
                    run.placed += (placed / page) as u64;
                    off += placed;
                    failure = Some(errno);
                    break;
                }
            };
            self.mark_placed(entry, host + off, placed, token);
            run.placed += (placed / page) as u64;
            off += placed;
            if present {
                log::debug!(
                    "{what}: page at {:#x} in {} was already present",
                    host + off,
                    entry.block.name
                );
                self.mark_placed(entry, host + off, page, token);
                run.already_present += 1;
                off += page;
            }
        }
        self.count_placed(zero, run.placed);
        if run.already_present != 0 {
            self.counters
                .already_present
                .fetch_add(run.already_present, Ordering::Relaxed);
        }
        match failure {
            None => Ok(run),
            Some(errno) => {
                self.requeue_unplaced(entry, host + off, len - off);
                self.counters
                    .placement_errors
                    .fetch_add(1, Ordering::Relaxed);
                self.counters
                    .last_placement_errno
                    .store(errno, Ordering::Relaxed);
                let e = Error::new(
                    errno,
                    format!(
                        "{what}: {} bytes at {:#x} in {}: {}",
                        len - off,
                        host + off,
                        entry.block.name,
                        std::io::Error::from_raw_os_error(errno)
                    ),
                );
                log::error!("{e}; the page will be requested again at its next fault (its waiters were woken to fault again)");
                Err(e)
            }
        }
    }

    /// A placement failed (not EEXIST) on `[host, host+len)`: those pages were not placed.
    /// They stay pending (requested, for `resend_pending`), and are marked for retry, so
    /// that the next fault on each is requested again instead of counted a duplicate; the
    /// range is woken, so that the threads blocked there fault again now rather than wait
    /// for a page nobody will send.
    #[cold]
    #[inline(never)]
    fn requeue_unplaced(&self, entry: &BlockEntry, host: usize, len: usize) {
        let first = ((host - entry.block.host) as u64) >> entry.page_shift;
        entry.retry.set_range(first, len as u64 >> entry.page_shift);
        if let Some(active) = self.active.enter() {
            if let Err(e) = active.uffd.wake(host, len) {
                log::error!("waking the threads of a failed placement: UFFDIO_WAKE: {e}");
            }
        }
    }

    /// Zero-fills with UFFDIO_ZEROPAGE where the block's registration offered it (the whole
    /// rest of the run in one call), else by copying the zero page (one page a call:
    /// hugetlbfs has no UFFDIO_ZEROPAGE).
    #[inline(always)]
    pub(super) fn zero_fill(
        active: &Active,
        entry: &BlockEntry,
        dst: usize,
        len: usize,
    ) -> std::result::Result<usize, PlaceError> {
        if entry.zeropage_ok.load(Ordering::Acquire) {
            return active.uffd.zeropage(dst, len).map(|()| len);
        }
        Self::zero_copy(active, entry, dst)
    }

    /// Test-only, not part of the API: from now until cleanup, zero fills of every block
    /// take the path of a block whose registration did not offer UFFDIO_ZEROPAGE (hugetlbfs
    /// before Linux 6.6...), copying the zero page one host page at a time, so that the
    /// tests can exercise it on anonymous memory. It only clears the flag the placement
    /// path reads anyway: no branch is added to it. Needs enable_notify.
    #[doc(hidden)]
    pub fn test_only_without_zeropage(&self) -> Result<()> {
        let active = self.placing("test_only_without_zeropage")?;
        for entry in active.table.entries() {
            entry.zeropage_ok.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// One zero page by copy, where UFFDIO_ZEROPAGE is not offered (hugetlbfs).
    #[inline(never)]
    fn zero_copy(
        active: &Active,
        entry: &BlockEntry,
        dst: usize,
    ) -> std::result::Result<usize, PlaceError> {
        let page = entry.block.page_size as usize;
        // SAFETY: the zero page mapping is at least the largest block page size long and
        // stays mapped while `active` is alive.
        unsafe {
            active
                .uffd
                .copy(dst, active.zero_page.as_ptr() as usize, page)
        }
        .map(|()| page)
    }

    #[inline(always)]
    fn single(run: RunPlacement) -> Placement {
        if run.placed == 1 {
            Placement::Placed
        } else {
            Placement::AlreadyPresent
        }
    }

    /// Atomically places one host page at `host` from `from` (`pagesize` bytes, the block's
    /// page size), waking the threads that faulted on it.
    ///
    /// # Safety
    /// `from` must point to `pagesize` readable bytes.
    #[inline(always)]
    pub unsafe fn place_page(
        &self,
        host: usize,
        from: *const u8,
        pagesize: u64,
    ) -> Result<Placement> {
        let active = self.placing("place_page")?;
        let entry = Self::check_place(&active.table, "place_page", host, pagesize, true)?;
        if from.is_null() {
            return Err(null_source("place_page"));
        }
        let run = self.place_run(
            "place_page",
            entry,
            host,
            pagesize as usize,
            false,
            |off, len| {
                // SAFETY: the caller guarantees `from` readable for `pagesize` bytes; the
                // destination was checked to be one page inside a registered block.
                unsafe { active.uffd.copy(host + off, from as usize + off, len) }.map(|()| len)
            },
        )?;
        Ok(Self::single(run))
    }

    /// Atomically places a zero page at `host`: UFFDIO_ZEROPAGE where the block's
    /// registration offered it, otherwise a copy of a zero page (hugetlbfs).
    #[inline(always)]
    pub fn place_page_zero(&self, host: usize, pagesize: u64) -> Result<Placement> {
        let active = self.placing("place_page_zero")?;
        let entry = Self::check_place(&active.table, "place_page_zero", host, pagesize, true)?;
        let run = self.place_run(
            "place_page_zero",
            entry,
            host,
            pagesize as usize,
            true,
            |off, len| Self::zero_fill(&active, entry, host + off, len),
        )?;
        Ok(Self::single(run))
    }

    /// Places a run of whole pages (`len` bytes, one block) from `from`, in one UFFDIO_COPY
    /// when none is present. Pages already present are skipped and counted; every waiter
    /// in the run is woken.
    ///
    /// # Safety
    /// `from` must point to `len` readable bytes.
    #[inline(always)]
    pub unsafe fn place_pages(
        &self,
        host: usize,
        from: *const u8,
        len: u64,
    ) -> Result<RunPlacement> {
        let active = self.placing("place_pages")?;
        let entry = Self::check_place(&active.table, "place_pages", host, len, false)?;
        if from.is_null() {
            return Err(null_source("place_pages"));
        }
        self.place_run(
            "place_pages",
            entry,
            host,
            len as usize,
            false,
            |off, rest| {
                // SAFETY: `off..off+rest` lies inside the checked run and inside the caller's
                // readable source of `len` bytes.
                unsafe { active.uffd.copy(host + off, from as usize + off, rest) }.map(|()| rest)
            },
        )
    }

    /// Places a run of zero pages (`len` bytes, one block), one UFFDIO_ZEROPAGE where
    /// offered; pages already present are skipped as in [`Incoming::place_pages`].
    #[inline(always)]
    pub fn place_pages_zero(&self, host: usize, len: u64) -> Result<RunPlacement> {
        let active = self.placing("place_pages_zero")?;
        let entry = Self::check_place(&active.table, "place_pages_zero", host, len, false)?;
        self.place_run(
            "place_pages_zero",
            entry,
            host,
            len as usize,
            true,
            |off, rest| Self::zero_fill(&active, entry, host + off, rest),
        )
    }
}

#[cold]
#[inline(never)]
fn null_source(what: &str) -> Error {
    Error::invalid(format!("{what}: source pointer is NULL"))
}

#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;
