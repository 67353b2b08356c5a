//! Blocktime and fault latency, with QEMU 7.2's definitions (`migration/postcopy-ram.c`,
//! `mark_postcopy_blocktime_begin/end`).
//!
//! - A vCPU is a thread registered with [`Blocktime::register_vcpu`]; its faults are known
//!   by the thread id the kernel reports (`UFFD_FEATURE_THREAD_ID`). Its blocked time grows,
//!   at each placement of the host page it waits on, by "now minus its fault time".
//! - A placement ends its waits after the ioctl has woken the vCPUs (recording the end
//!   before would put a lock and a clock read on every fault round trip). A woken vCPU may
//!   fault again at once, and that fault may be read before the placer ends the wait: a
//!   vCPU faults again only once woken, so `begin` closes a wait still open on another page
//!   then, counting it up to that moment, instead of overwriting it (QEMU 7.2 overwrites:
//!   back-to-back faults showed one fault's time); the placer's end finds nothing left for
//!   that vCPU. A fault reported again on the page a vCPU already waits on (retried after
//!   a signal or a wake-up) continues its wait.
//! - The total blocktime grows only while *every* registered vCPU is blocked: at a placement
//!   that ends such a period, by "now minus the last fault that began one".
//! - Times are u32 milliseconds since [`Blocktime::reset`] (init), as in QEMU.
//! - A fault on a page already received is undone (QEMU's "already received" case).
//! - The latency histogram covers every faulting thread, vCPU or not: from the read of the
//!   fault message to the placement of its host page, log2 buckets of nanoseconds.
//!
//! The fault thread records a fault without allocating (every table is sized at creation)
//! and holds the lock only for a few stores. A placement looks the lock up only when some
//! fault is waiting (`waiting`), so a background push costs one atomic load a run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

/// Largest vCPU index + 1 that can be registered.
pub const MAX_VCPUS: usize = 1024;
/// Buckets of the latency histogram: bucket `i` counts latencies in `[2^i, 2^(i+1))` ns
/// (bucket 0 also counts 0 ns).
pub const LATENCY_BUCKETS: usize = 40;
/// Faults tracked at once for latency; past this a sample is dropped (counted).
const MAX_IN_FLIGHT: usize = 4096;

/// A snapshot of the figures.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlocktimeReport {
    /// Whether accounting was on ([`crate::IncomingConfig::blocktime`]).
    pub enabled: bool,
    /// Whether the kernel reports faulting thread ids (`UFFD_FEATURE_THREAD_ID`), known from
    /// init on (a migration that ends before LISTEN reports a zero blocktime, as QEMU 7.2
    /// does); without them no fault is attributed to a vCPU and the vCPU figures stay 0.
    pub thread_id_available: bool,
    /// Time during which all registered vCPUs were blocked at once, in ms.
    pub total_ms: u32,
    /// Blocked time of each vCPU in ms, indexed by cpu index (length: highest registered
    /// index + 1; unregistered indexes read 0).
    pub per_vcpu_ms: Vec<u32>,
    /// Registered vCPUs.
    pub vcpus: u32,
    /// Faults whose latency was measured (fault read to page placed).
    pub faults_timed: u64,
    /// Faults not measured because too many were in flight at once.
    pub faults_untimed: u64,
    /// The latency histogram (see [`LATENCY_BUCKETS`]).
    pub latency_buckets: Vec<u64>,
    /// Median latency in ns: the upper bound of its bucket (at most 2x high), capped at
    /// the maximum.
    pub latency_p50_ns: u64,
    /// 99th percentile latency in ns, as `latency_p50_ns`.
    pub latency_p99_ns: u64,
    /// Largest latency in ns (exact).
    pub latency_max_ns: u64,
}

/// What [`Blocktime::begin`] recorded, for [`Blocktime::undo`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Begun {
    /// The vCPU whose wait this fault opened (None: not a vCPU, or a wait continued).
    cpu: Option<u32>,
    in_flight: bool,
}

struct Inner {
    start: Instant,
    /// Thread id of each vCPU slot, 0 = none.
    tid: Vec<i32>,
    /// Slots in use: highest registered index + 1.
    slots: usize,
    vcpus: u32,
    fault_time: Vec<u32>,
    vcpu_addr: Vec<usize>,
    vcpu_blocktime: Vec<u32>,
    cpus_down: u32,
    last_begin: u32,
    total: u32,
    /// (host page address, fault read time in ns since start).
    in_flight: Vec<(usize, u64)>,
    buckets: [u64; LATENCY_BUCKETS],
    timed: u64,
    untimed: u64,
    max_ns: u64,
}

impl Inner {
    fn new() -> Inner {
        Inner {
            start: Instant::now(),
            tid: vec![0; MAX_VCPUS],
            slots: 0,
            vcpus: 0,
            fault_time: vec![0; MAX_VCPUS],
            vcpu_addr: vec![0; MAX_VCPUS],
            vcpu_blocktime: vec![0; MAX_VCPUS],
            cpus_down: 0,
            last_begin: 0,
            total: 0,
            in_flight: Vec::with_capacity(MAX_IN_FLIGHT),
            buckets: [0; LATENCY_BUCKETS],
            timed: 0,
            untimed: 0,
            max_ns: 0,
        }
    }

    /// QEMU's get_low_time_offset: ms since start, at least 1.
    fn low_time(&self, now: Instant) -> u32 {
        let ms = now.saturating_duration_since(self.start).as_millis() as u64;
        (ms as u32).max(1)
    }

    fn ns(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_nanos() as u64
    }

    fn cpu_of(&self, tid: i32) -> Option<u32> {
        if tid == 0 {
            return None;
        }
        self.tid[..self.slots]
            .iter()
            .position(|&t| t == tid)
            .map(|i| i as u32)
    }

    /// Closes vCPU `i`'s open wait at `t` for a new one that begins at once: its blocked
    /// time grows, and the total too when every vCPU was blocked (they stay so).
    fn close_wait(&mut self, i: usize, t: u32) {
        let blocked = t.wrapping_sub(self.fault_time[i]);
        self.vcpu_blocktime[i] = self.vcpu_blocktime[i].wrapping_add(blocked);
        if self.cpus_down == self.vcpus {
            self.total = self.total.wrapping_add(t.wrapping_sub(self.last_begin));
        }
    }

    fn waiting(&self) -> u64 {
        (self.in_flight.len() + self.cpus_down as usize) as u64
    }
}

/// The blocktime context of one destination. It lives as long as the destination, so the
/// figures stay readable after cleanup until the handle is freed.
pub struct Blocktime {
    enabled: AtomicBool,
    thread_id: AtomicBool,
    /// Faults recorded and not yet ended (in flight + vCPUs down): placements skip the lock
    /// while it is 0.
    waiting: AtomicU64,
    inner: Mutex<Inner>,
}

impl Default for Blocktime {
    fn default() -> Self {
        Blocktime {
            enabled: AtomicBool::new(false),
            thread_id: AtomicBool::new(false),
            waiting: AtomicU64::new(0),
            inner: Mutex::new(Inner::new()),
        }
    }
}

fn bucket_of(ns: u64) -> usize {
    ((63 - ns.max(1).leading_zeros()) as usize).min(LATENCY_BUCKETS - 1)
}

impl Blocktime {
    /// Starts a new migration's accounting (at init): figures zeroed, the time base reset;
    /// registered vCPUs are kept.
    pub(crate) fn reset(&self, enabled: bool) {
        let mut g = self.inner.lock();
        let (tid, slots, vcpus) = (std::mem::take(&mut g.tid), g.slots, g.vcpus);
        *g = Inner::new();
        g.tid = tid;
        g.slots = slots;
        g.vcpus = vcpus;
        self.waiting.store(0, Ordering::SeqCst);
        self.thread_id.store(false, Ordering::Relaxed);
        self.enabled.store(enabled, Ordering::Release);
    }

    /// Whether accounting is on.
    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub(crate) fn set_thread_id_available(&self, yes: bool) {
        self.thread_id.store(yes, Ordering::Relaxed);
    }

    /// Registers vCPU `cpu` as thread `tid` (replacing what was registered there).
    pub fn register_vcpu(&self, cpu: u32, tid: i32) -> crate::Result<()> {
        if cpu as usize >= MAX_VCPUS || tid <= 0 {
            return Err(crate::Error::invalid(format!(
                "register_vcpu: cpu index {cpu} must be below {MAX_VCPUS} and tid {tid} positive"
            )));
        }
        let mut g = self.inner.lock();
        let i = cpu as usize;
        if g.tid[i] == 0 {
            g.vcpus += 1;
        }
        g.tid[i] = tid;
        g.slots = g.slots.max(i + 1);
        Ok(())
    }

    /// A fault by thread `tid` (0 = unknown) on the host page at `addr` was read.
    #[inline]
    pub(crate) fn begin(&self, tid: u32, addr: usize) -> Begun {
        let now = Instant::now();
        let mut g = self.inner.lock();
        let mut begun = Begun::default();
        if let Some(cpu) = g.cpu_of(tid as i32) {
            let i = cpu as usize;
            let t = g.low_time(now);
            let open = g.vcpu_addr[i];
            if open != addr {
                if open == 0 {
                    g.cpus_down += 1;
                } else {
                    // Woken from `open`, whose placer has not ended the wait yet: it ended
                    // by now (see the module comment).
                    g.close_wait(i, t);
                }
                g.last_begin = t;
                g.fault_time[i] = t;
                g.vcpu_addr[i] = addr;
                begun.cpu = Some(cpu);
            }
        }
        if g.in_flight.len() < MAX_IN_FLIGHT {
            let t = g.ns(now);
            g.in_flight.push((addr, t));
            begun.in_flight = true;
        } else {
            g.untimed += 1;
        }
        self.waiting.store(g.waiting(), Ordering::SeqCst);
        begun
    }

    /// Undoes [`Blocktime::begin`]: the page was already received.
    pub(crate) fn undo(&self, begun: Begun, addr: usize) {
        if begun.cpu.is_none() && !begun.in_flight {
            return;
        }
        let mut g = self.inner.lock();
        if let Some(cpu) = begun.cpu {
            let i = cpu as usize;
            if g.vcpu_addr[i] == addr {
                g.vcpu_addr[i] = 0;
                g.fault_time[i] = 0;
                g.cpus_down = g.cpus_down.saturating_sub(1);
            }
        }
        if begun.in_flight {
            if let Some(pos) = g.in_flight.iter().rposition(|&(a, _)| a == addr) {
                g.in_flight.swap_remove(pos);
            }
        }
        self.waiting.store(g.waiting(), Ordering::SeqCst);
    }

    /// Host pages `[start, start + len)` were placed: ends the faults waiting there.
    #[inline]
    pub(crate) fn end(&self, start: usize, len: usize) {
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        self.end_slow(start, len);
    }

    #[cold]
    fn end_slow(&self, start: usize, len: usize) {
        let now = Instant::now();
        let end = start + len;
        let mut g = self.inner.lock();
        let g = &mut *g;
        let low = g.low_time(now);
        let mut affected = 0u32;
        let mut all_down = false;
        for i in 0..g.slots {
            let addr = g.vcpu_addr[i];
            if addr < start || addr >= end || g.fault_time[i] == 0 {
                continue;
            }
            g.vcpu_addr[i] = 0;
            let blocked = low.wrapping_sub(g.fault_time[i]);
            g.fault_time[i] = 0;
            affected += 1;
            if !all_down && g.cpus_down == g.vcpus {
                all_down = true;
            }
            g.vcpu_blocktime[i] = g.vcpu_blocktime[i].wrapping_add(blocked);
        }
        g.cpus_down = g.cpus_down.saturating_sub(affected);
        if all_down {
            g.total = g.total.wrapping_add(low.wrapping_sub(g.last_begin));
        }
        let t = g.ns(now);
        let mut k = 0;
        while k < g.in_flight.len() {
            let (addr, begun) = g.in_flight[k];
            if addr >= start && addr < end {
                let ns = t.saturating_sub(begun);
                g.buckets[bucket_of(ns)] += 1;
                g.timed += 1;
                g.max_ns = g.max_ns.max(ns);
                g.in_flight.swap_remove(k);
            } else {
                k += 1;
            }
        }
        self.waiting.store(g.waiting(), Ordering::SeqCst);
    }

    /// The figures.
    pub fn report(&self) -> BlocktimeReport {
        let g = self.inner.lock();
        let percentile = |p: u64| -> u64 {
            if g.timed == 0 {
                return 0;
            }
            let want = (g.timed * p).div_ceil(100).max(1);
            let mut seen = 0;
            for (i, &n) in g.buckets.iter().enumerate() {
                seen += n;
                if seen >= want {
                    return (1u64 << (i + 1)).min(g.max_ns);
                }
            }
            g.max_ns
        };
        BlocktimeReport {
            enabled: self.enabled(),
            thread_id_available: self.thread_id.load(Ordering::Relaxed),
            total_ms: g.total,
            per_vcpu_ms: g.vcpu_blocktime[..g.slots].to_vec(),
            vcpus: g.vcpus,
            faults_timed: g.timed,
            faults_untimed: g.untimed,
            latency_buckets: g.buckets.to_vec(),
            latency_p50_ns: percentile(50),
            latency_p99_ns: percentile(99),
            latency_max_ns: g.max_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn total_counts_only_while_every_vcpu_is_blocked() {
        let bt = Blocktime::default();
        bt.reset(true);
        bt.register_vcpu(0, 100).unwrap();
        bt.register_vcpu(1, 101).unwrap();
        // vCPU 0 blocks alone for ~30 ms (u32 ms as in QEMU: each figure may read 1 low).
        bt.begin(100, 0x1000);
        std::thread::sleep(Duration::from_millis(30));
        bt.end(0x1000, 0x1000);
        let r = bt.report();
        assert!(r.per_vcpu_ms[0] >= 29, "{r:?}");
        assert_eq!(r.total_ms, 0, "only one of two vCPUs was blocked");
        // Both block; the total counts from the second fault.
        bt.begin(100, 0x2000);
        std::thread::sleep(Duration::from_millis(20));
        bt.begin(101, 0x3000);
        std::thread::sleep(Duration::from_millis(30));
        bt.end(0x3000, 0x1000);
        bt.end(0x2000, 0x1000);
        let r = bt.report();
        // Only while both were blocked: vCPU 1's wait (each figure may read 1 low).
        assert!(
            r.total_ms >= 29 && r.total_ms <= r.per_vcpu_ms[1] + 1,
            "{r:?}"
        );
        assert!(r.per_vcpu_ms[1] >= 29, "{r:?}");
        assert!(r.per_vcpu_ms[0] >= 78, "{r:?}");
        assert_eq!(r.faults_timed, 3);
        assert!(r.latency_max_ns >= 50_000_000, "{r:?}");
        assert!(r.latency_p50_ns >= 30_000_000, "{r:?}");
    }

    #[test]
    fn already_received_is_undone_and_unknown_threads_only_timed() {
        let bt = Blocktime::default();
        bt.reset(true);
        bt.register_vcpu(3, 7).unwrap();
        let b = bt.begin(7, 0x5000);
        bt.undo(b, 0x5000);
        assert_eq!(bt.waiting.load(Ordering::SeqCst), 0);
        bt.begin(999, 0x6000);
        bt.end(0x6000, 0x1000);
        let r = bt.report();
        assert_eq!(r.per_vcpu_ms, vec![0, 0, 0, 0]);
        assert_eq!((r.vcpus, r.faults_timed), (1, 1));
        assert!(bt.register_vcpu(MAX_VCPUS as u32, 1).is_err());
        assert!(bt.register_vcpu(0, 0).is_err());
    }

    #[test]
    fn a_fault_read_before_the_previous_placement_ended_closes_that_wait() {
        // Issue 17 item 1: the placement of A woke the vCPU, which faulted on B, and that
        // fault was read before the placer's end(A).
        let bt = Blocktime::default();
        bt.reset(true);
        bt.register_vcpu(0, 100).unwrap();
        let started = Instant::now();
        bt.begin(100, 0xA000);
        std::thread::sleep(Duration::from_millis(20));
        bt.begin(100, 0xB000);
        bt.end(0xA000, 0x1000);
        // The same fault reported again (retried after a signal) continues its wait.
        std::thread::sleep(Duration::from_millis(10));
        let again = bt.begin(100, 0xB000);
        bt.undo(again, 0xB000);
        std::thread::sleep(Duration::from_millis(10));
        bt.end(0xB000, 0x1000);
        let elapsed = started.elapsed().as_millis() as u32;
        let r = bt.report();
        assert!(
            r.per_vcpu_ms[0] * 10 >= elapsed * 8,
            "{r:?} over {elapsed} ms"
        );
        assert!(r.per_vcpu_ms[0] <= elapsed + 1, "{r:?} over {elapsed} ms");
        assert_eq!(
            r.total_ms, r.per_vcpu_ms[0],
            "one vCPU: all were blocked with it"
        );
        assert_eq!(bt.waiting.load(Ordering::SeqCst), 0);
    }
}
