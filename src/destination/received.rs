//! The received map of a RAM block, one bit per *target* page (QEMU's `receivedmap`).
//!
//! A bit is set when its page was placed through the library, or marked by the host
//! ([`crate::Incoming::mark_received`]: pages it loaded itself before LISTEN); it is
//! cleared by a discard (after LISTEN) and by a `UFFD_EVENT_REMOVE`. The map exists from
//! `init` to `cleanup`, so the RECV_BITMAP answer of a recovery is exact.
//!
//! The fault thread asks "is this host page received?" (every target bit of it set): one
//! load and a mask compare when a host page is at most 64 target pages, one load a word
//! otherwise. All accesses are sequentially consistent: a placer sets "received" then tests
//! "requested", the fault thread sets "requested" then tests "received", so one of them
//! always sees the other.
//!
//! A discard after LISTEN may race a placement of the same pages: the placement's ioctl,
//! then the discard (bits cleared, pages dropped), then the placement's bookkeeping would
//! leave a page marked received but absent, whose every later fault reads as "late" and
//! is never requested. Discards go through [`ReceivedMap::discard`], which counts them
//! (started, finished); a placer takes a [`DiscardToken`] before its ioctl and, once its
//! bits are set, asks [`ReceivedMap::raced_with_discard`]: when a discard ran meanwhile, it
//! clears its bits again and wakes the range, so that the next fault there is requested.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// One bit a target page, set and cleared atomically from any thread.
#[derive(Debug)]
pub struct ReceivedMap {
    words: Box<[AtomicU64]>,
    /// Target pages in the block.
    nbits: u64,
    /// log2(host page size / target page size).
    ratio_shift: u32,
    /// Discards begun and ended through [`ReceivedMap::discard`].
    discards_started: AtomicU64,
    discards_finished: AtomicU64,
}

/// What [`ReceivedMap::discard_token`] saw before a placement: compared after it.
#[derive(Debug, Clone, Copy)]
pub struct DiscardToken {
    started: u64,
    finished: u64,
}

/// `bits` ones starting at bit `from` of one word (`from + bits <= 64`, `bits >= 1`).
#[inline]
fn mask(from: u64, bits: u64) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        ((1u64 << bits) - 1) << from
    }
}

impl ReceivedMap {
    /// A map of `nbits` target pages, all clear, for host pages of `2^ratio_shift` target
    /// pages.
    pub fn new(nbits: u64, ratio_shift: u32) -> ReceivedMap {
        ReceivedMap {
            words: (0..nbits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            nbits,
            ratio_shift,
            discards_started: AtomicU64::new(0),
            discards_finished: AtomicU64::new(0),
        }
    }

    /// Taken by a placer before its ioctl (two loads).
    #[inline(always)]
    pub fn discard_token(&self) -> DiscardToken {
        let started = self.discards_started.load(SeqCst);
        DiscardToken {
            started,
            finished: self.discards_finished.load(SeqCst),
        }
    }

    /// Asked by a placer after it set its received bits: whether a discard was running
    /// when `token` was taken or began since (one load). Conservative: `true` for any
    /// discard of the block in that window, whatever its range.
    #[inline(always)]
    pub fn raced_with_discard(&self, token: DiscardToken) -> bool {
        token.started != token.finished || self.discards_started.load(SeqCst) != token.started
    }

    /// Clears target pages `[page, page+count)`, runs `drop` (which drops their memory),
    /// and clears them again: a placement that set them between the two is either undone
    /// here or sees the discard ([`ReceivedMap::raced_with_discard`]) and undoes itself.
    pub fn discard<R>(&self, page: u64, count: u64, drop: impl FnOnce() -> R) -> R {
        self.discards_started.fetch_add(1, SeqCst);
        self.clear_range(page, count);
        let result = drop();
        self.clear_range(page, count);
        self.discards_finished.fetch_add(1, SeqCst);
        result
    }

    /// Target pages in the block.
    pub fn nbits(&self) -> u64 {
        self.nbits
    }

    /// Whether every target page of host page `host_page` is received (false past the
    /// end: indexes are bounds-checked, whatever the caller's offset).
    #[inline]
    pub fn host_page_received(&self, host_page: u64) -> bool {
        let Some(first) = host_page.checked_mul(1 << self.ratio_shift) else {
            return false;
        };
        if first >= self.nbits {
            return false;
        }
        let bits = 1u64 << self.ratio_shift;
        let w = (first / 64) as usize;
        if bits <= 64 {
            let m = mask(first % 64, bits);
            self.words[w].load(SeqCst) & m == m
        } else {
            self.words
                .get(w..w + (bits / 64) as usize)
                .is_some_and(|ws| ws.iter().all(|x| x.load(SeqCst) == u64::MAX))
        }
    }

    /// Whether target page `page` is received (false past the end).
    pub fn test(&self, page: u64) -> bool {
        page < self.nbits && self.words[(page / 64) as usize].load(SeqCst) & (1 << (page % 64)) != 0
    }

    fn update(&self, first: u64, count: u64, set: bool) {
        let end = first.saturating_add(count).min(self.nbits);
        let mut bit = first;
        while bit < end {
            let in_word = (64 - bit % 64).min(end - bit);
            let m = mask(bit % 64, in_word);
            let word = &self.words[(bit / 64) as usize];
            if set {
                if word.load(SeqCst) & m != m {
                    word.fetch_or(m, SeqCst);
                }
            } else if word.load(SeqCst) & m != 0 {
                word.fetch_and(!m, SeqCst);
            }
            bit += in_word;
        }
    }

    /// Marks `count` host pages from `host_page` received.
    #[inline]
    pub fn set_host_pages(&self, host_page: u64, count: u64) {
        self.update(
            host_page.saturating_mul(1 << self.ratio_shift),
            count.saturating_mul(1 << self.ratio_shift),
            true,
        );
    }

    /// Marks `count` target pages from `page` received.
    pub fn set_range(&self, page: u64, count: u64) {
        self.update(page, count, true);
    }

    /// Clears `count` target pages from `page`.
    pub fn clear_range(&self, page: u64, count: u64) {
        self.update(page, count, false);
    }

    /// Received target pages.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| w.load(SeqCst).count_ones() as u64)
            .sum()
    }

    /// The bits as words (bit `i` of word `w` is target page `64 * w + i`).
    pub fn snapshot(&self) -> Vec<u64> {
        self.words.iter().map(|w| w.load(SeqCst)).collect()
    }

    /// Copies the bits of `other` (another size allowed: the common prefix).
    pub fn copy_from(&self, other: &ReceivedMap) {
        let common = self.nbits.min(other.nbits);
        for page in 0..common {
            if other.test(page) {
                self.set_range(page, 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_pages_of_one_and_many_words() {
        // 4 KiB host pages over 4 KiB target pages.
        let m = ReceivedMap::new(130, 0);
        m.set_host_pages(64, 2);
        assert!(m.host_page_received(64) && m.host_page_received(65));
        assert!(!m.host_page_received(63) && !m.host_page_received(66));
        assert_eq!(m.count(), 2);
        // 2 MiB host pages over 4 KiB target pages: 512 bits a host page.
        let h = ReceivedMap::new(1024, 9);
        h.set_range(512, 511);
        assert!(!h.host_page_received(1), "one target page short");
        h.set_range(1023, 1);
        assert!(h.host_page_received(1) && !h.host_page_received(0));
        h.clear_range(600, 1);
        assert!(!h.host_page_received(1));
        // 16 KiB host pages over 4 KiB target pages.
        let q = ReceivedMap::new(64, 2);
        q.set_host_pages(3, 1);
        assert!(q.host_page_received(3));
        assert_eq!(q.snapshot(), vec![0xF000]);
        q.clear_range(13, 1);
        assert!(!q.host_page_received(3));
        assert_eq!(q.count(), 3);
    }

    #[test]
    fn a_placement_sees_a_discard_that_began_or_ran_after_its_token() {
        let m = ReceivedMap::new(64, 0);
        let before = m.discard_token();
        assert!(!m.raced_with_discard(before));
        // A discard run between the token and the check.
        m.discard(3, 1, || {
            let during = m.discard_token();
            assert!(m.raced_with_discard(during), "taken while a discard runs");
        });
        assert!(m.raced_with_discard(before));
        let after = m.discard_token();
        assert!(!m.raced_with_discard(after));
        // The bits set inside the discard (a placement's bookkeeping) are cleared again.
        m.discard(5, 2, || m.set_range(5, 2));
        assert_eq!(m.count(), 0);
    }

    #[test]
    fn copy_keeps_the_common_prefix() {
        let a = ReceivedMap::new(100, 0);
        a.set_range(10, 5);
        a.set_range(95, 5);
        let b = ReceivedMap::new(50, 0);
        b.copy_from(&a);
        assert_eq!(b.count(), 5);
        assert!(b.test(10) && b.test(14) && !b.test(15));
    }
}
