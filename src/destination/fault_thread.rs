//! The fault thread: reads missing-page faults from the userfaultfd and asks the source for
//! each page, once.
//!
//! Hot path rules: no allocation, no lock across a syscall (the blocktime accounting, when
//! on, takes a short lock with no syscall inside), messages read in batches, block lookup by binary
//! search in the immutable sorted table, per-page "requested"/"received" bits updated with
//! atomics so that a page that many threads fault on is requested once.

use std::cell::Cell;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::destination::block::BlockTable;
use crate::destination::blocktime::Blocktime;
use crate::destination::incoming::IncomingHooks;
use crate::destination::pending::{Control, Outcome};
use crate::error::{Error, Result};
use crate::stats::Counters;
use crate::sys::uffd::{Uffd, UffdMsg, EVENT_PAGEFAULT, EVENT_REMOVE};

pub use super::fault_thread_failure::FaultThreadFailure;
use super::fault_thread_failure::{transient, Retry};

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

/// Run by the fault thread when it stops on a failure (not when told to quit): the
/// destination's abort ([`crate::Incoming::abort`]), so that no fault waits for a thread
/// that is gone.
pub(crate) type OnFailure = Box<dyn Fn() + Send + Sync>;

/// The fault thread's state beyond the table, hooks and counters: the pause flag and the
/// host's commands, the blocktime accounting, the "name the next request" flag.
pub(crate) struct FaultState {
    /// Pause flag and the host's commands.
    pub control: Arc<Control>,
    /// Blocktime accounting (used when enabled).
    pub blocktime: Arc<Blocktime>,
    /// Set to make the next request name its block (after a return-path reset).
    pub name_next_request: AtomicBool,
    /// Whether UFFD_EVENT_REMOVE was registered for.
    pub track_remove: bool,
    /// Identity of the owning destination, for [`on_fault_thread_of`].
    pub owner: usize,
    /// The abort, run when the thread stops on a failure.
    pub on_failure: OnFailure,
}

/// What the fault thread shares with its owner.
pub(crate) struct FaultShared {
    pub uffd: Arc<Uffd>,
    pub table: Arc<BlockTable>,
    pub hooks: Arc<dyn IncomingHooks>,
    pub counters: Arc<Counters>,
    pub state: FaultState,
    pub quit: AtomicBool,
    pub wake: OwnedFd,
    pub wait: WaitStrategy,
}

thread_local! {
    /// The owner id of the fault thread running on this thread (0: not a fault thread).
    static FAULT_OWNER: Cell<usize> = const { Cell::new(0) };
}

/// Whether the calling thread is the fault thread of destination `owner` (a callback
/// running on it). Independent of the destination's state, so it holds while cleanup
/// runs too.
pub(crate) fn on_fault_thread_of(owner: usize) -> bool {
    FAULT_OWNER.with(|o| o.get()) == owner
}

impl FaultShared {
    /// Wakes the thread from poll (for quit and for commands).
    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to the eventfd the thread polls.
        let n = unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if n != 8 {
            log::error!(
                "postcopy: waking the fault thread failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
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
        state: FaultState,
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
            state,
            quit: AtomicBool::new(false),
            wake,
            wait,
        });
        shared
            .counters
            .fault_thread_failure
            .store(0, Ordering::Release);
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("postcopy/fault".into())
            .spawn(move || thread_main(&thread_shared))
            .map_err(|e| Error::os(&e, "starting the fault thread"))?;
        Ok(FaultThread {
            shared,
            handle: Some(handle),
        })
    }

    fn signal_quit(&self) {
        self.shared.quit.store(true, Ordering::Release);
        self.shared.wake();
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

/// The fault thread's body: the started hook and the loop, then, if the loop ended on a
/// failure rather than on quit, the failed state (recorded before anything else, so that
/// the hooks and woken threads see it) and the abort; last, the stopping hook.
fn thread_main(s: &FaultShared) {
    FAULT_OWNER.with(|o| o.set(s.state.owner));
    let failure = match catch_unwind(AssertUnwindSafe(|| {
        s.hooks.fault_thread_started();
        run(s)
    })) {
        Ok(Ok(())) => None,
        Ok(Err(failure)) => Some(failure),
        Err(payload) => {
            log::error!(
                "postcopy fault thread: internal panic: {}",
                crate::panic::panic_text(payload.as_ref())
            );
            Some(FaultThreadFailure::Panic)
        }
    };
    if let Some(failure) = failure {
        s.counters
            .fault_thread_failure
            .store(FaultThreadFailure::encode(Some(failure)), Ordering::Release);
        // Commands fail from now on (ESRCH) rather than wait for a thread that is gone.
        s.state.control.thread_exited();
        if s.quit.load(Ordering::Acquire) {
            log::error!("postcopy fault thread: stopped on {failure:?} while quitting");
        } else {
            log::error!(
                "postcopy fault thread: stopped on {failure:?}: faults are no longer served; aborting (every missing page poisoned or zero-filled)"
            );
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| (s.state.on_failure)())) {
                log::error!(
                    "postcopy fault thread: the abort after a failure panicked: {}",
                    crate::panic::panic_text(payload.as_ref())
                );
            }
        }
    }
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| s.hooks.fault_thread_stopping(failure)))
    {
        log::error!(
            "postcopy fault thread: fault_thread_stopping panicked: {}",
            crate::panic::panic_text(payload.as_ref())
        );
    }
    s.state.control.thread_exited();
}

fn drain_eventfd(fd: &OwnedFd) {
    let mut value: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64; the eventfd is non-blocking.
    unsafe { libc::read(fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
}

/// Blocks in poll until the uffd or the wake fd is readable; retries transient errors.
fn wait_readable(shared: &FaultShared) -> std::result::Result<(), FaultThreadFailure> {
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
    let mut retry = Retry::default();
    loop {
        // SAFETY: `fds` is a live array of two pollfd structures.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc >= 0 {
            if fds[1].revents != 0 {
                drain_eventfd(&shared.wake);
            }
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        let errno = err.raw_os_error().unwrap_or(libc::EIO);
        if !transient(errno) {
            log::error!("postcopy fault thread: poll failed: {err}");
            return Err(FaultThreadFailure::Os(errno));
        }
        if shared.quit.load(Ordering::Acquire) {
            return Ok(());
        }
        retry.again("poll", &err);
    }
}

/// The fault loop: until quit (`Ok`) or a failure that is not transient (`Err`).
fn run(shared: &FaultShared) -> std::result::Result<(), FaultThreadFailure> {
    let mut msgs = [UffdMsg::default(); BATCH];
    // Index of the block named by the last request; usize::MAX = none yet.
    let mut last_block = usize::MAX;
    let mut seen_command = 0u64;
    let mut spin_until: Option<Instant> = None;
    let mut retry = Retry::default();
    log::debug!("postcopy fault thread: serving faults");
    loop {
        if shared.quit.load(Ordering::Acquire) {
            break;
        }
        let control = &shared.state.control;
        if let Some(seq) = control.wanted_after(seen_command) {
            let outcome = if control.take_resend() {
                resend(
                    &shared.table,
                    &*shared.hooks,
                    &shared.counters,
                    &shared.state,
                    &mut last_block,
                )
            } else {
                Ok(0)
            };
            control.complete(seq, outcome);
            seen_command = seq;
        }
        let n = match shared.uffd.read_messages(&mut msgs) {
            Ok(n) => {
                retry.reset();
                n
            }
            Err(e) => match e.raw_os_error() {
                Some(errno) if transient(errno) => {
                    retry.again("reading the userfaultfd", &e);
                    continue;
                }
                errno => {
                    log::error!("postcopy fault thread: reading the userfaultfd failed: {e}");
                    return Err(FaultThreadFailure::Os(errno.unwrap_or(libc::EIO)));
                }
            },
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
            wait_readable(shared)?;
            continue;
        }
        spin_until = None;
        for msg in &msgs[..n] {
            handle_message(
                &shared.table,
                &*shared.hooks,
                &shared.counters,
                &shared.state,
                msg,
                &mut last_block,
            );
        }
        // A short batch means the queue was drained: sleep in poll now rather than spend a
        // read(2) that would only answer EAGAIN (one syscall less per fault round trip).
        if n < BATCH && shared.wait == WaitStrategy::Block {
            wait_readable(shared)?;
        }
    }
    log::debug!("postcopy fault thread: exiting");
    Ok(())
}

/// The bookkeeping of one userfaultfd message: a page fault is counted and its page
/// requested unless it is outside every block, already received, already requested
/// (pending), or requests are paused (then it is recorded pending); a REMOVE event (with
/// `track_remove`) clears the received bits of its range. `last_block` is the index of the
/// block the previous successful request named (`usize::MAX`: none), so that a request
/// names its block only when it changes.
#[inline]
fn handle_message(
    table: &BlockTable,
    hooks: &dyn IncomingHooks,
    c: &Counters,
    st: &FaultState,
    msg: &UffdMsg,
    last_block: &mut usize,
) {
    match msg.event {
        EVENT_PAGEFAULT => handle_fault(table, hooks, c, st, msg, last_block),
        EVENT_REMOVE if st.track_remove => handle_remove(table, c, msg.flags, msg.address),
        other => {
            c.unexpected_events.fetch_add(1, Ordering::Relaxed);
            log::warn!("postcopy fault thread: unexpected userfaultfd event {other:#x}, ignored");
        }
    }
}

/// MADV_DONTNEED / MADV_REMOVE dropped `[start, end)`: its pages are no longer received,
/// so their next fault is requested again.
fn handle_remove(table: &BlockTable, c: &Counters, start: u64, end: u64) {
    c.remove_events.fetch_add(1, Ordering::Relaxed);
    let (start, end) = (start as usize, end as usize);
    for entry in table.entries() {
        let from = start.max(entry.block.host);
        let to = end.min(entry.end());
        if from >= to {
            continue;
        }
        let first = ((from - entry.block.host) as u64) >> entry.target_shift;
        let last = ((to - entry.block.host) as u64).div_ceil(1 << entry.target_shift);
        // Counted as a discard: a placement whose bookkeeping races it undoes itself.
        entry.received.discard(first, last - first, || ());
    }
}

#[inline]
fn handle_fault(
    table: &BlockTable,
    hooks: &dyn IncomingHooks,
    c: &Counters,
    st: &FaultState,
    msg: &UffdMsg,
    last_block: &mut usize,
) {
    let addr = msg.address as usize;
    let Some(index) = table.index_of(addr) else {
        c.count_fault(&c.faults_outside);
        log::error!(
            "postcopy fault thread: fault at {addr:#x} outside every RAM block; still serving"
        );
        return;
    };
    let entry = &table.entries()[index];
    let page = ((addr - entry.block.host) as u64) >> entry.page_shift;
    // Blocktime begins before the "received" test, as in QEMU, so that a placement between
    // the two is either seen here (undo) or ends the fault it began.
    let begun = st.blocktime.enabled().then(|| {
        let page_addr = entry.block.host + (page << entry.page_shift) as usize;
        (st.blocktime.begin(msg.ptid, page_addr), page_addr)
    });
    let late = || {
        c.count_fault(&c.late_faults);
        if let Some((b, a)) = begun {
            st.blocktime.undo(b, a);
        }
    };
    if entry.received.host_page_received(page) {
        late();
        return;
    }
    // Already requested: a duplicate, unless its placement failed since (retry).
    if entry.requested.test_and_set(page) && !entry.retry.take(page) {
        c.count_fault(&c.duplicate_faults);
        return;
    }
    // The page may have been placed between the two tests; a request then is harmless
    // (the placer sees EEXIST) but wasteful, so look once more.
    if entry.received.host_page_received(page) {
        entry.requested.clear(page);
        late();
        return;
    }
    if st.control.paused.load(Ordering::Acquire) {
        // Pending: re-sent by resend_pending.
        c.count_fault(&c.paused_faults);
        return;
    }
    let _ = send_request(table, hooks, c, st, index, page, false, last_block);
}

/// Asks for host page `page` of block `index` (`resend`: for `resend_pending`, counted
/// apart, so that every fault is counted once). A failure keeps the page pending (its
/// requested bit stays set) and pauses requests until the host re-sends them.
#[allow(clippy::too_many_arguments)]
fn send_request(
    table: &BlockTable,
    hooks: &dyn IncomingHooks,
    c: &Counters,
    st: &FaultState,
    index: usize,
    page: u64,
    resend: bool,
    last_block: &mut usize,
) -> std::result::Result<(), i32> {
    // Read per request, not per batch: a reset made while a batch is being served (even
    // by the previous request's callback) names the very next request.
    if st.name_next_request.load(Ordering::Acquire)
        && st.name_next_request.swap(false, Ordering::AcqRel)
    {
        *last_block = usize::MAX;
    }
    let entry = &table.entries()[index];
    let named = *last_block != index;
    let offset = page << entry.page_shift;
    let len = entry.block.page_size;
    if !resend {
        // The fault is counted now, as a request: a refusal moves it to request_errors.
        c.count_fault(&c.requests);
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        hooks.request_page_in(entry, named, offset, len)
    }));
    let (errno, panic) = match result {
        Ok(Ok(())) => {
            *last_block = index;
            if resend {
                c.resent.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(());
        }
        Ok(Err(errno)) => (errno, None),
        Err(payload) => (libc::EFAULT, Some(payload)),
    };
    // Count and pause first, then log: a host that sees the log line sees the counters.
    st.control.paused.store(true, Ordering::Release);
    // The peer may not have seen the block name: name it again next time.
    *last_block = usize::MAX;
    if resend {
        c.resend_errors.fetch_add(1, Ordering::Relaxed);
    } else {
        c.request_refused();
    }
    c.last_request_errno.store(errno, Ordering::Relaxed);
    match panic {
        None => log::error!(
            "postcopy fault thread: page request {} +{offset:#x} ({len} bytes) failed: {}; the page stays pending and requests pause until resend_pending",
            entry.name.as_str(),
            std::io::Error::from_raw_os_error(errno)
        ),
        Some(payload) => log::error!(
            "postcopy fault thread: page-request callback panicked: {}; the page stays pending and requests pause until resend_pending",
            crate::panic::panic_text(payload.as_ref())
        ),
    }
    Err(errno)
}

/// Re-sends one request for every pending page (requested, not received), the first
/// naming its block; clears the pause first. Stops at a failed request (requests pause
/// again, the rest stay pending) or when the host pauses again meanwhile.
fn resend(
    table: &BlockTable,
    hooks: &dyn IncomingHooks,
    c: &Counters,
    st: &FaultState,
    last_block: &mut usize,
) -> Outcome {
    if st.control.aborted.load(Ordering::Acquire) {
        return Err(libc::EPIPE);
    }
    st.control.paused.store(false, Ordering::Release);
    *last_block = usize::MAX;
    let mut sent = 0u64;
    for (index, entry) in table.entries().iter().enumerate() {
        for w in 0..entry.requested.words() {
            let mut bits = entry.requested.word_bits(w);
            while bits != 0 {
                let page = (w as u64) * 64 + bits.trailing_zeros() as u64;
                bits &= bits - 1;
                if entry.received.host_page_received(page) {
                    continue;
                }
                if st.control.paused.load(Ordering::Acquire) {
                    return Ok(sent);
                }
                send_request(table, hooks, c, st, index, page, true, last_block)?;
                sent += 1;
            }
        }
    }
    log::debug!("postcopy fault thread: re-sent {sent} pending page requests");
    Ok(sent)
}

impl Drop for FaultThread {
    fn drop(&mut self) {
        if self.handle.is_some() {
            self.signal_quit();
        }
    }
}

#[cfg(test)]
#[path = "fault_thread_tests.rs"]
mod tests;
