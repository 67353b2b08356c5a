//! Never strand a vCPU: the pending set and its re-send, the received bitmap of a
//! recovery, abort with poison, and the blocktime figures (issue 10).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::destination::block::{BlockEntry, BlockTable};
use crate::destination::blocktime::BlocktimeReport;
use crate::destination::incoming::{Active, Incoming};
use crate::error::{Error, Result};
use crate::stats::Counters;
use crate::sys::uffd::PlaceError;

/// What [`Incoming::abort`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AbortOutcome {
    /// Host pages not received that were given up.
    pub pages_lost: u64,
    /// Their bytes.
    pub bytes_lost: u64,
    /// `true`: every lost page was poisoned (UFFDIO_POISON): any access raises SIGBUS.
    /// `false`: the kernel lacks UFFDIO_POISON (before Linux 6.6) or poisoning was turned
    /// off, and the lost pages were filled with zeros: silent data loss (logged).
    pub poisoned: bool,
}

fn pending_in(entry: &BlockEntry) -> u64 {
    let mut n = 0;
    for w in 0..entry.requested.words() {
        let mut bits = entry.requested.word_bits(w);
        while bits != 0 {
            let page = (w as u64) * 64 + bits.trailing_zeros() as u64;
            bits &= bits - 1;
            if !entry.received.host_page_received(page) {
                n += 1;
            }
        }
    }
    n
}

impl Incoming {
    /// Host pages requested (or recorded while paused) and not yet received.
    pub fn pending_pages(&self) -> u64 {
        self.table
            .read()
            .as_ref()
            .map_or(0, |t| t.entries().iter().map(pending_in).sum())
    }

    /// Whether page requests are paused (a request failed, or the host paused them).
    pub fn requests_paused(&self) -> bool {
        self.active
            .enter()
            .is_some_and(|a| a.control.paused.load(Ordering::Acquire))
    }

    fn wake_fault_thread(active: &Active) {
        if let Some(t) = active.fault_thread.lock().as_ref() {
            t.shared().wake();
        }
    }

    /// Pauses (`true`) page requests: faults are still read and their pages recorded
    /// pending, but `request_page` is not called. From a host thread, it returns once no
    /// `request_page` call is running; from `request_page` itself it only sets the flag.
    /// Resuming (`false`) is [`Incoming::resend_pending`]; returns its count.
    pub fn pause_requests(&self, paused: bool) -> Result<u64> {
        if !paused {
            return self.resend_pending();
        }
        let active = self.active("pause_requests")?;
        active.control.paused.store(true, Ordering::Release);
        if self.on_fault_thread() {
            return Ok(0);
        }
        active
            .control
            .run(false, || Self::wake_fault_thread(&active))
            .map_err(|errno| Error::new(errno, "pause_requests: the fault thread has exited"))
    }

    fn on_fault_thread(&self) -> bool {
        crate::destination::fault_thread::on_fault_thread_of(self.owner_id())
    }

    /// Resumes page requests after a pause or a failed request (the channel to the source
    /// is back): the fault thread re-sends one request for every pending page, the first
    /// naming its block, and this call waits for it. Safe against the fault thread's own
    /// requests; callable from any host thread, not from `request_page` (EDEADLK). Returns
    /// the number of requests re-sent. If a re-send fails, requests pause again, the rest
    /// stay pending, and the error is returned. Refused after [`Incoming::abort`] (EPIPE).
    pub fn resend_pending(&self) -> Result<u64> {
        self.refuse_on_fault_thread("resend_pending")?;
        let active = self.active("resend_pending")?;
        active
            .control
            .run(true, || Self::wake_fault_thread(&active))
            .map_err(|errno| {
                Error::new(
                    errno,
                    match errno {
                        libc::ESRCH => "resend_pending: the fault thread has exited".to_owned(),
                        libc::EPIPE => "resend_pending after abort".to_owned(),
                        e => format!(
                            "resend_pending: a re-sent request failed ({}); requests are paused again",
                            std::io::Error::from_raw_os_error(e)
                        ),
                    },
                )
            })
    }

    /// Marks `[host, host+len)` received: pages the host loaded itself (precopy pages
    /// copied before LISTEN), so that the received bitmap of a recovery is exact and the
    /// fault thread never requests them. In target pages: `host` and `len` aligned to the
    /// target page size, inside one block. From init until cleanup.
    pub fn mark_received(&self, host: usize, len: u64) -> Result<()> {
        let table = self.require_table("mark_received")?;
        let entry = table.find(host).ok_or_else(|| {
            Error::invalid(format!(
                "mark_received: {host:#x} is outside every RAM block"
            ))
        })?;
        let tmask = (1u64 << entry.target_shift) - 1;
        let off = (host - entry.block.host) as u64;
        if off & tmask != 0 || len & tmask != 0 || len == 0 {
            return Err(Error::invalid(format!(
                "mark_received: {len:#x} bytes at {host:#x} are not whole target pages"
            )));
        }
        if off
            .checked_add(len)
            .map_or(true, |end| end > entry.block.length)
        {
            return Err(Error::invalid(format!(
                "mark_received: {len:#x} bytes at {host:#x} run past block {}",
                entry.block.name
            )));
        }
        entry
            .received
            .set_range(off >> entry.target_shift, len >> entry.target_shift);
        Ok(())
    }

    /// Bytes [`Incoming::encode_recv_bitmap`] writes for block `name`.
    pub fn recv_bitmap_len(&self, name: &str) -> Result<usize> {
        let table = self.require_table("recv_bitmap_len")?;
        let entry = table.by_name(name).ok_or_else(|| {
            Error::invalid(format!("recv_bitmap_len: no RAM block named {name:?}"))
        })?;
        crate::wire::recv_bitmap_block_len(entry.received.nbits() as usize)
            .ok_or_else(|| Error::invalid("recv_bitmap_len: block too large"))
    }

    /// Writes block `name`'s received bitmap in QEMU's RECV_BITMAP format (what follows
    /// the return-path header: `be64 size`, the little-endian bitmap of target pages, the
    /// `be64` end marker) into `buf`; returns the bytes written. A bit is set for a page
    /// placed through the library or marked with [`Incoming::mark_received`], and cleared
    /// by a discard after LISTEN or a REMOVE event. From init until cleanup.
    pub fn encode_recv_bitmap(&self, name: &str, buf: &mut [u8]) -> Result<usize> {
        let table = self.require_table("encode_recv_bitmap")?;
        let entry = table.by_name(name).ok_or_else(|| {
            Error::invalid(format!("encode_recv_bitmap: no RAM block named {name:?}"))
        })?;
        let words = entry.received.snapshot();
        crate::wire::encode_recv_bitmap(buf, &words, entry.received.nbits() as usize)
            .map_err(|e| Error::new(e.errno(), format!("encode_recv_bitmap of {name}: {e}")))
    }

    /// For a source gone for good: gives up every page not yet received, so that no thread
    /// hangs and none reads a zero page it should not. Requests stop for good (a later
    /// resend_pending fails with EPIPE). Where the kernel has UFFDIO_POISON (Linux 6.6) and
    /// [`crate::IncomingConfig::abort_poison`] is on, each such page is poisoned: any
    /// access raises SIGBUS (`BUS_MCEERR_AR`), and a KVM vCPU gets the same memory-failure
    /// signal, which the VMM can act on. Otherwise the pages are filled with zeros, which is
    /// data loss and is logged as such. Threads blocked on those pages are woken either way.
    /// Callable from any thread, the fault thread included, between LISTEN and cleanup.
    pub fn abort(&self) -> Result<AbortOutcome> {
        let active = self.active("abort")?;
        Self::abort_active(
            &active,
            self.config.abort_poison,
            &self.counters,
            &self.aborted,
        )
    }

    /// The body of [`Incoming::abort`], also run by the fault thread when it stops on a
    /// failure (it holds the pieces, not the destination).
    pub(super) fn abort_active(
        active: &Active,
        abort_poison: bool,
        counters: &Counters,
        aborted: &AtomicBool,
    ) -> Result<AbortOutcome> {
        active.control.paused.store(true, Ordering::Release);
        active.control.aborted.store(true, Ordering::Release);
        aborted.store(true, Ordering::Release);
        let mut out = AbortOutcome {
            poisoned: true,
            ..Default::default()
        };
        let mut failure = None;
        for entry in active.table.entries() {
            let poison = abort_poison && entry.poison_ok.load(Ordering::Acquire);
            out.poisoned &= poison;
            let pages = entry.block.length >> entry.page_shift;
            let psize = entry.block.page_size as usize;
            let mut page = 0;
            while page < pages {
                if entry.received.host_page_received(page) {
                    page += 1;
                    continue;
                }
                let mut end = page + 1;
                while end < pages && !entry.received.host_page_received(end) {
                    end += 1;
                }
                let mut at = page;
                while at < end {
                    let dst = entry.block.host + (at as usize) * psize;
                    let len = (end - at) as usize * psize;
                    // The bytes given up from `dst` on, and whether the page after them
                    // is to be skipped (present, or neither poisoned nor filled).
                    let (done, skip) = match Self::give_up(active, entry, poison, dst, len) {
                        Ok(n) => (n, false),
                        Err(PlaceError::AlreadyPresent { placed }) => {
                            (placed - placed % psize, true)
                        }
                        Err(PlaceError::Os { errno, placed }) => {
                            let done = placed - placed % psize;
                            let page_at = dst + done;
                            // Poisoning refused: zero-fill that page rather than leave its
                            // threads blocked.
                            let filled =
                                poison && Self::zero_fill(active, entry, page_at, psize).is_ok();
                            // Not every page poisoned then: zeros are data loss.
                            out.poisoned &= !filled;
                            if !filled {
                                failure.get_or_insert(Error::new(
                                    errno,
                                    format!(
                                        "abort: {} of {} at {page_at:#x}: {}",
                                        if poison { "UFFDIO_POISON" } else { "zero fill" },
                                        entry.block.name,
                                        std::io::Error::from_raw_os_error(errno)
                                    ),
                                ));
                            }
                            (done + if filled { psize } else { 0 }, !filled)
                        }
                    };
                    let lost = (done / psize) as u64;
                    out.pages_lost += lost;
                    out.bytes_lost += done as u64;
                    for p in at..at + lost {
                        entry.requested.clear(p);
                    }
                    at += lost + u64::from(skip);
                }
                page = end;
            }
        }
        counters
            .pages_lost
            .fetch_add(out.pages_lost, Ordering::Relaxed);
        if out.pages_lost == 0 {
            out.poisoned = false;
        }
        if out.poisoned {
            log::error!(
                "postcopy abort: {} pages ({} bytes) never arrived and were poisoned: an access raises SIGBUS",
                out.pages_lost,
                out.bytes_lost
            );
        } else if out.pages_lost != 0 {
            log::error!(
                "postcopy abort: DATA LOSS: {} pages ({} bytes) never arrived and were filled with zeros (no UFFDIO_POISON: needs Linux 6.6)",
                out.pages_lost,
                out.bytes_lost
            );
        }
        match failure {
            Some(e) => {
                log::error!("{e}");
                Err(e)
            }
            None => Ok(out),
        }
    }

    /// Gives up `[dst, dst+len)` of `entry`: poisons it, or zero-fills it. Returns the bytes
    /// given up, which a zero fill by copy (no UFFDIO_ZEROPAGE: hugetlbfs, or the
    /// test-only knob) leaves at one page: the caller goes on from there.
    fn give_up(
        active: &Active,
        entry: &BlockEntry,
        poison: bool,
        dst: usize,
        len: usize,
    ) -> std::result::Result<usize, PlaceError> {
        if poison {
            active.uffd.poison(dst, len).map(|()| len)
        } else {
            Self::zero_fill(active, entry, dst, len)
        }
    }

    /// A failed end (cleanup, after the fault thread stopped and placements drained):
    /// every host page not received is lost, whether a fault requested it or not (issue 17
    /// item 8). Counted in `pages_lost` and logged, with how many were requested. After an
    /// abort, which counted what it gave up, nothing more is counted. Exact when the host
    /// marked the pages it loaded itself ([`Incoming::mark_received`]).
    pub(super) fn count_lost_at_end(&self, table: &BlockTable) -> u64 {
        if self.aborted.load(Ordering::Acquire) {
            return 0;
        }
        let (mut lost, mut requested, mut bytes) = (0u64, 0u64, 0u64);
        for entry in table.entries() {
            let pages = entry.block.length >> entry.page_shift;
            for page in 0..pages {
                if !entry.received.host_page_received(page) {
                    lost += 1;
                    bytes += entry.block.page_size;
                    requested += entry.requested.word_bits((page / 64) as usize) >> (page % 64) & 1;
                }
            }
        }
        if lost != 0 {
            self.counters.pages_lost.fetch_add(lost, Ordering::Relaxed);
            log::error!(
                "postcopy ended failed: {lost} pages ({bytes} bytes) never arrived ({requested} requested, {} never requested); the guest reads what the kernel maps there",
                lost - requested
            );
        }
        lost
    }

    /// Whether [`Incoming::abort`] ran in this migration.
    pub fn aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// Registers vCPU `cpu_index` as thread `tid` for blocktime (QEMU registers every vCPU
    /// at LISTEN). Faults are attributed by the thread id the kernel reports, which needs
    /// UFFD_FEATURE_THREAD_ID (Linux 4.14). Any time; registrations survive cleanup.
    pub fn register_vcpu(&self, cpu_index: u32, tid: i32) -> Result<()> {
        self.blocktime.register_vcpu(cpu_index, tid)
    }

    /// The blocktime and latency figures (QEMU 7.2's definitions), readable at any time,
    /// after cleanup too, until the destination is dropped.
    pub fn blocktime(&self) -> BlocktimeReport {
        self.blocktime.report()
    }
}
