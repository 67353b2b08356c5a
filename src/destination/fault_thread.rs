//! The fault thread: reads missing-page faults from the userfaultfd and asks the source for
//! each page, once.
//!
//! Hot path rules: no allocation, no lock, messages read in batches, block lookup by binary
//! search in the immutable sorted table, per-page "requested"/"received" bits updated with
//! atomics so that a page that many threads fault on is requested once.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::destination::block::BlockTable;
use crate::destination::incoming::IncomingHooks;
use crate::error::{Error, Result};
use crate::stats::Counters;
use crate::sys::uffd::{Uffd, UffdMsg, EVENT_PAGEFAULT};

/// How many messages one read takes at most.
const BATCH: usize = 64;

/// How the fault thread waits for faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitStrategy {
    /// Sleep in `poll(2)` until a fault arrives: no CPU used while idle (the default).
    #[default]
    Block,
    /// Poll the userfaultfd without sleeping for up to this long after the last fault,
    /// then sleep in `poll(2)`. Trades one busy core for a lower fault round trip.
    Spin(Duration),
}

/// What the fault thread shares with its owner.
pub(crate) struct FaultShared {
    pub uffd: Arc<Uffd>,
    pub table: Arc<BlockTable>,
    pub hooks: Arc<dyn IncomingHooks>,
    pub counters: Arc<Counters>,
    /// Set to make the next request name its block (after a return-path reset).
    pub name_next_request: AtomicBool,
    pub quit: AtomicBool,
    pub wake: OwnedFd,
    pub wait: WaitStrategy,
}

/// A running fault thread. Dropped without [`FaultThread::stop`], it is told to quit but
/// not joined.
pub(crate) struct FaultThread {
    shared: Arc<FaultShared>,
    handle: Option<JoinHandle<()>>,
}

impl FaultThread {
    /// Starts the fault thread ("postcopy/fault") serving the faults of `uffd` on the
    /// blocks of `table`, with the eventfd that wakes it to quit.
    pub(crate) fn spawn(
        uffd: Arc<Uffd>,
        table: Arc<BlockTable>,
        hooks: Arc<dyn IncomingHooks>,
        counters: Arc<Counters>,
        wait: WaitStrategy,
    ) -> Result<FaultThread> {
        // SAFETY: eventfd takes no pointers; the result is checked before it is owned.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            let err = std::io::Error::last_os_error();
            return Err(Error::os(&err, "eventfd for the fault thread"));
        }
        // SAFETY: eventfd just returned this descriptor, so it is open and nothing else
        // owns it.
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        let shared = Arc::new(FaultShared {
            uffd,
            table,
            hooks,
            counters,
            name_next_request: AtomicBool::new(false),
            quit: AtomicBool::new(false),
            wake,
            wait,
        });
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("postcopy/fault".into())
            .spawn(move || {
                if let Err(payload) = catch_unwind(AssertUnwindSafe(|| run(&thread_shared))) {
                    log::error!(
                        "postcopy fault thread: internal panic, faults are no longer served: {}",
                        crate::panic::panic_text(payload.as_ref())
                    );
                }
            })
            .map_err(|e| Error::os(&e, "starting the fault thread"))?;
        Ok(FaultThread {
            shared,
            handle: Some(handle),
        })
    }

    /// Whether the calling thread is this fault thread (a callback running on it).
    pub(crate) fn is_current(&self) -> bool {
        self.handle
            .as_ref()
            .is_some_and(|h| h.thread().id() == std::thread::current().id())
    }

    fn signal_quit(&self) {
        self.shared.quit.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to the eventfd the thread polls.
        let n =
            unsafe { libc::write(self.shared.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if n != 8 {
            log::error!(
                "postcopy: waking the fault thread failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    pub(crate) fn shared(&self) -> &Arc<FaultShared> {
        &self.shared
    }

    /// Tells the thread to quit, wakes it and joins it.
    pub(crate) fn stop(mut self) {
        self.signal_quit();
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                log::error!("postcopy cleanup: the fault thread ended by panic");
            }
        }
    }
}

fn drain_eventfd(fd: &OwnedFd) {
    let mut value: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64; the eventfd is non-blocking.
    unsafe { libc::read(fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
}

/// Blocks in poll until the uffd or the wake fd is readable. Returns false on a fatal error.
fn wait_readable(shared: &FaultShared) -> bool {
    let mut fds = [
        libc::pollfd {
            fd: shared.uffd.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: shared.wake.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a live array of two pollfd structures.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc >= 0 {
            if fds[1].revents != 0 {
                drain_eventfd(&shared.wake);
            }
            return true;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            log::error!("postcopy fault thread: poll failed, faults are no longer served: {err}");
            return false;
        }
    }
}

fn run(shared: &FaultShared) {
    let mut msgs = [UffdMsg::default(); BATCH];
    // Index of the block named by the last request; usize::MAX = none yet.
    let mut last_block = usize::MAX;
    let mut spin_until: Option<Instant> = None;
    log::debug!("postcopy fault thread: serving faults");
    loop {
        if shared.quit.load(Ordering::Acquire) {
            break;
        }
        let n = match shared.uffd.read_messages(&mut msgs) {
            Ok(n) => n,
            Err(e) => {
                log::error!("postcopy fault thread: reading the userfaultfd failed, faults are no longer served: {e}");
                break;
            }
        };
        if n == 0 {
            if let WaitStrategy::Spin(window) = shared.wait {
                let deadline = *spin_until.get_or_insert_with(|| Instant::now() + window);
                if Instant::now() < deadline {
                    std::hint::spin_loop();
                    continue;
                }
            }
            spin_until = None;
            if !wait_readable(shared) {
                break;
            }
            continue;
        }
        spin_until = None;
        if shared.name_next_request.swap(false, Ordering::AcqRel) {
            last_block = usize::MAX;
        }
        for msg in &msgs[..n] {
            handle_message(
                &shared.table,
                &*shared.hooks,
                &shared.counters,
                msg,
                &mut last_block,
            );
        }
        // A short batch means the queue was drained: sleep in poll now rather than spend a
        // read(2) that would only answer EAGAIN (one syscall less per fault round trip).
        if n < BATCH && shared.wait == WaitStrategy::Block && !wait_readable(shared) {
            break;
        }
    }
    log::debug!("postcopy fault thread: exiting");
}

/// The bookkeeping of one userfaultfd message: count it, and request its page unless it
/// is outside every block, already received, or already requested. `last_block` is the
/// index of the block the previous successful request named (`usize::MAX`: none), so that
/// a request names its block only when it changes.
#[inline]
fn handle_message(
    table: &BlockTable,
    hooks: &dyn IncomingHooks,
    c: &Counters,
    msg: &UffdMsg,
    last_block: &mut usize,
) {
    if msg.event != EVENT_PAGEFAULT {
        c.unexpected_events.fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "postcopy fault thread: unexpected userfaultfd event {:#x}, ignored",
            msg.event
        );
        return;
    }
    c.faults.fetch_add(1, Ordering::Relaxed);
    let addr = msg.address as usize;
    let Some(index) = table.index_of(addr) else {
        c.faults_outside.fetch_add(1, Ordering::Relaxed);
        log::error!(
            "postcopy fault thread: fault at {addr:#x} outside every RAM block; still serving"
        );
        return;
    };
    let entry = &table.entries()[index];
    let page = ((addr - entry.block.host) as u64) >> entry.page_shift;
    if entry.received.test(page) {
        c.late_faults.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if entry.requested.test_and_set(page) {
        c.duplicate_faults.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // The page may have been placed between the two tests; a request then is harmless
    // (the placer sees EEXIST) but wasteful, so look once more.
    if entry.received.test(page) {
        entry.requested.clear(page);
        c.late_faults.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let name = if *last_block == index {
        None
    } else {
        Some(&entry.name)
    };
    let offset = page << entry.page_shift;
    let len = entry.block.page_size;
    let result = catch_unwind(AssertUnwindSafe(|| hooks.request_page(name, offset, len)));
    match result {
        Ok(Ok(())) => {
            *last_block = index;
            c.requests.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(errno)) => {
            entry.requested.clear(page);
            // The peer may not have seen the block name: name it again next time.
            *last_block = usize::MAX;
            c.request_errors.fetch_add(1, Ordering::Relaxed);
            c.last_request_errno.store(errno, Ordering::Relaxed);
            log::error!(
                "postcopy fault thread: page request {} +{offset:#x} ({len} bytes) failed: {}",
                entry.name.as_str(),
                std::io::Error::from_raw_os_error(errno)
            );
        }
        Err(payload) => {
            entry.requested.clear(page);
            *last_block = usize::MAX;
            c.request_errors.fetch_add(1, Ordering::Relaxed);
            c.last_request_errno.store(libc::EFAULT, Ordering::Relaxed);
            log::error!(
                "postcopy fault thread: page-request callback panicked: {}",
                crate::panic::panic_text(payload.as_ref())
            );
        }
    }
}

impl Drop for FaultThread {
    fn drop(&mut self) {
        if self.handle.is_some() {
            self.signal_quit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::block::{Backing, BlockName, RamBlock};
    use crate::sys::uffd::PAGEFAULT_FLAG_WRITE;
    use parking_lot::Mutex;
    use std::sync::atomic::Ordering::Relaxed;

    /// Records requests; fails them with `fail` (an errno) or panics when `panic` is set.
    #[derive(Default)]
    struct Recorder {
        requests: Mutex<Vec<(Option<String>, u64, u64)>>,
        fail: Mutex<Option<i32>>,
        panic: AtomicBool,
    }

    impl IncomingHooks for Recorder {
        fn ram_blocks(&self) -> crate::Result<Vec<RamBlock>> {
            Ok(Vec::new())
        }

        fn request_page(
            &self,
            block: Option<&BlockName>,
            offset: u64,
            length: u64,
        ) -> std::result::Result<(), i32> {
            if self.panic.load(Relaxed) {
                panic!("request hook panics");
            }
            self.requests
                .lock()
                .push((block.map(|b| b.as_str().to_owned()), offset, length));
            self.fail.lock().map_or(Ok(()), Err)
        }
    }

    /// The host page size (the blocks' page size).
    fn page() -> usize {
        crate::destination::block::host_page_size() as usize
    }

    const A: usize = 0x10_0000_0000;
    const B: usize = 0x20_0000_0000;

    fn table() -> BlockTable {
        let block = |name: &str, host| RamBlock {
            name: name.into(),
            host,
            offset: 0,
            length: 8 * page() as u64,
            page_size: page() as u64,
            backing: Backing::Anonymous { shared: false },
        };
        BlockTable::new(vec![block("a", A), block("b", B)]).unwrap()
    }

    fn fault(addr: usize) -> UffdMsg {
        UffdMsg::for_test(EVENT_PAGEFAULT, PAGEFAULT_FLAG_WRITE, addr as u64)
    }

    struct Rig {
        table: BlockTable,
        hooks: Recorder,
        counters: Counters,
        last: usize,
    }

    impl Rig {
        fn new() -> Rig {
            Rig {
                table: table(),
                hooks: Recorder::default(),
                counters: Counters::default(),
                last: usize::MAX,
            }
        }

        fn deliver(&mut self, msg: UffdMsg) {
            handle_message(
                &self.table,
                &self.hooks,
                &self.counters,
                &msg,
                &mut self.last,
            );
        }

        fn requests(&self) -> Vec<(Option<String>, u64, u64)> {
            std::mem::take(&mut *self.hooks.requests.lock())
        }
    }

    #[test]
    fn a_request_names_its_block_only_when_the_block_changes() {
        let mut r = Rig::new();
        r.deliver(fault(A + 2 * page() + 123));
        r.deliver(fault(A + 5 * page()));
        r.deliver(fault(B));
        r.deliver(fault(A + page()));
        assert_eq!(
            r.requests(),
            vec![
                (Some("a".into()), 2 * page() as u64, page() as u64),
                (None, 5 * page() as u64, page() as u64),
                (Some("b".into()), 0, page() as u64),
                (Some("a".into()), page() as u64, page() as u64),
            ]
        );
        let s = r.counters.snapshot();
        assert_eq!((s.faults, s.requests), (4, 4));
    }

    #[test]
    fn duplicate_late_outside_and_foreign_messages_send_no_request() {
        let mut r = Rig::new();
        r.deliver(fault(A));
        r.deliver(fault(A + 8)); // same page, still requested
        let entry = &r.table.entries()[0];
        assert!(!entry.received.test_and_set(3));
        r.deliver(fault(A + 3 * page())); // already placed
        r.deliver(fault(A + 8 * page())); // just past block a
        r.deliver(UffdMsg::for_test(0x15, 0, 0)); // UFFD_EVENT_REMOVE
        assert_eq!(r.requests().len(), 1);
        let s = r.counters.snapshot();
        assert_eq!(s.faults, 4);
        assert_eq!(s.requests, 1);
        assert_eq!(s.duplicate_faults, 1);
        assert_eq!(s.late_faults, 1);
        assert_eq!(s.faults_outside, 1);
        assert_eq!(s.unexpected_events, 1);
        // The invariant the C tests check after every run.
        assert_eq!(
            s.faults,
            s.requests + s.request_errors + s.duplicate_faults + s.late_faults + s.faults_outside
        );
    }

    #[test]
    fn a_failed_request_is_counted_and_asked_again_with_its_block_named() {
        let mut r = Rig::new();
        r.deliver(fault(A));
        *r.hooks.fail.lock() = Some(libc::EPIPE);
        r.deliver(fault(A + page()));
        *r.hooks.fail.lock() = None;
        r.deliver(fault(A + page()));
        let reqs = r.requests();
        assert_eq!(reqs.len(), 3);
        assert_eq!(reqs[1], (None, page() as u64, page() as u64));
        // After a failure the peer may have missed the name: the retry names the block.
        assert_eq!(reqs[2], (Some("a".into()), page() as u64, page() as u64));
        let s = r.counters.snapshot();
        assert_eq!((s.requests, s.request_errors), (2, 1));
        assert_eq!(s.last_request_errno, libc::EPIPE);
        assert_eq!(s.duplicate_faults, 0);
    }

    #[test]
    fn a_panicking_request_hook_is_a_failed_request() {
        let mut r = Rig::new();
        r.hooks.panic.store(true, Relaxed);
        r.deliver(fault(B + page()));
        r.hooks.panic.store(false, Relaxed);
        r.deliver(fault(B + page()));
        let s = r.counters.snapshot();
        assert_eq!((s.requests, s.request_errors), (1, 1));
        assert_eq!(s.last_request_errno, libc::EFAULT);
        assert_eq!(
            r.requests(),
            vec![(Some("b".into()), page() as u64, page() as u64)]
        );
    }
}
