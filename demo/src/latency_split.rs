//! `--latency-split`: where the time of a faulted touch goes. A touch that faulted waits
//! first for its page to be placed (the request path: the fault read, the request, the
//! source's answer, the placement), then, with its page in, for a CPU to run on again
//! (the workload's own threads and the bulk threads compete for it). The demo's fault
//! latency is the sum; this splits it per touch.
//!
//! Every placement stamps its pages with the time just before its ioctl (CLOCK_MONOTONIC;
//! the first successful placement of a page wins; before, not after, because the kernel
//! wakes the waiting thread inside the ioctl and it may run before the ioctl returns). A
//! workload thread that timed a faulted touch from `t0` to `t1` looks up its page's stamp
//! `tp` and, when `t0 < tp <= t1` (the page came in while it waited), records `tp - t0`
//! (waiting for the page: the fault, the request, the answer) and `t1 - tp` (the ioctl, the
//! wake-up and the wait for a CPU). Touches whose page's placement began before the touch
//! (between the residency check and the touch) are left out.
//!
//! Costs one 8-byte stamp per 4 KiB page (2 MiB per GiB), one atomic store per placed
//! page and two clock reads per faulted touch; allocated only with the option.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

const PAGE: usize = 4096;

/// The placement stamps and the per-touch samples of one migration.
pub struct LatencySplit {
    /// When each 4 KiB page was first placed (ns), 0 while it has not been.
    placed_at: Vec<AtomicU64>,
    /// (touch -> placed, placed -> running) per sampled touch, in ns.
    samples: Mutex<Vec<(u64, u64)>>,
}

/// Percentiles of both parts, in ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitSummary {
    /// Touches sampled.
    pub touches: usize,
    pub placed_p50: u64,
    pub placed_p99: u64,
    pub running_p50: u64,
    pub running_p99: u64,
}

impl LatencySplit {
    /// Stamps for `len` bytes of guest memory.
    pub fn new(len: usize) -> Self {
        LatencySplit {
            placed_at: (0..len.div_ceil(PAGE)).map(|_| AtomicU64::new(0)).collect(),
            samples: Mutex::new(Vec::new()),
        }
    }

    /// Stamps the pages of `length` bytes at `offset` as placed at `now`, unless placed
    /// before. Out-of-range pages are ignored.
    pub fn placed(&self, offset: usize, length: usize, now: u64) {
        let first = offset / PAGE;
        let end = (offset + length).div_ceil(PAGE).min(self.placed_at.len());
        for stamp in self.placed_at.get(first..end).unwrap_or(&[]) {
            let _ = stamp.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// The split of a touch of the page at `offset` that lasted from `t0` to `t1`:
    /// `(placed - t0, t1 - placed)`, or `None` when the page was not placed in between.
    pub fn split(&self, offset: usize, t0: u64, t1: u64) -> Option<(u64, u64)> {
        let placed = self.placed_at.get(offset / PAGE)?.load(Ordering::Relaxed);
        (t0 < placed && placed <= t1).then(|| (placed - t0, t1 - placed))
    }

    /// Adds one workload thread's samples.
    pub fn add(&self, samples: &[(u64, u64)]) {
        self.samples.lock().extend_from_slice(samples);
    }

    /// Percentiles over all samples (the same rank rule as the demo's fault latency).
    pub fn summary(&self) -> SplitSummary {
        let samples = self.samples.lock();
        let mut placed: Vec<u64> = samples.iter().map(|s| s.0).collect();
        let mut running: Vec<u64> = samples.iter().map(|s| s.1).collect();
        placed.sort_unstable();
        running.sort_unstable();
        SplitSummary {
            touches: samples.len(),
            placed_p50: percentile(&placed, 0.5),
            placed_p99: percentile(&placed, 0.99),
            running_p50: percentile(&running, 0.5),
            running_p99: percentile(&running, 0.99),
        }
    }
}

/// The value at rank `q` (0..=1) of sorted `v`, 0 when empty.
pub fn percentile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        0
    } else {
        v[((v.len() - 1) as f64 * q).round() as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_touch_is_split_at_its_page_s_first_placement() {
        let s = LatencySplit::new(4 * PAGE);
        s.placed(PAGE, 2 * PAGE, 150);
        s.placed(PAGE, PAGE, 170); // placed again (already present): the first stamp stays
        assert_eq!(s.split(PAGE, 100, 200), Some((50, 50)));
        assert_eq!(s.split(2 * PAGE + 8, 120, 400), Some((30, 250)));
        // Placed before the touch started, or never: no sample.
        assert_eq!(s.split(PAGE, 160, 200), None);
        assert_eq!(s.split(0, 100, 200), None);
        assert_eq!(s.split(64 * PAGE, 100, 200), None);
        s.placed(3 * PAGE, 8 * PAGE, 10); // runs past the end: clipped, no panic
        assert_eq!(s.split(3 * PAGE, 5, 20), Some((5, 10)));
    }

    #[test]
    fn summary_takes_percentiles_of_each_part() {
        let s = LatencySplit::new(PAGE);
        s.add(&[(10, 1), (30, 3)]);
        s.add(&[(20, 2)]);
        assert_eq!(
            s.summary(),
            SplitSummary {
                touches: 3,
                placed_p50: 20,
                placed_p99: 30,
                running_p50: 2,
                running_p99: 3
            }
        );
        assert_eq!(LatencySplit::new(PAGE).summary().touches, 0);
    }
}
