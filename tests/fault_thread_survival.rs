//! Issue 17 item 3: the fault thread survives signals (EINTR on read and poll) and bursts
//! of wake-ups, in both wait modes; and when it does stop on a failure, the destination
//! says so and a fault gets the abort path instead of hanging.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use postcopy_ram::{
    BlockName, FaultThreadFailure, Incoming, IncomingConfig, IncomingHooks, RamBlock, Result,
    State, WaitStrategy,
};

/// Serves every request at once from the fault thread; records the fault thread's id.
struct Hooks {
    blocks: Vec<RamBlock>,
    incoming: Mutex<Weak<Incoming>>,
    tid: AtomicI32,
    panic_at_start: bool,
    stopped: AtomicU64,
    failure: Mutex<Option<FaultThreadFailure>>,
    shuts: Mutex<Vec<bool>>,
}

impl Hooks {
    fn new(blocks: Vec<RamBlock>, panic_at_start: bool) -> Arc<Hooks> {
        Arc::new(Hooks {
            blocks,
            incoming: Mutex::new(Weak::new()),
            tid: AtomicI32::new(0),
            panic_at_start,
            stopped: AtomicU64::new(0),
            failure: Mutex::new(None),
            shuts: Mutex::new(Vec::new()),
        })
    }

    fn incoming(&self) -> Arc<Incoming> {
        self.incoming.lock().upgrade().expect("incoming alive")
    }

    fn make(self: &Arc<Self>, config: IncomingConfig) -> Arc<Incoming> {
        let incoming = Arc::new(Incoming::new(self.clone(), config).unwrap());
        *self.incoming.lock() = Arc::downgrade(&incoming);
        incoming
    }
}

impl IncomingHooks for Hooks {
    fn ram_blocks(&self) -> Result<Vec<RamBlock>> {
        Ok(self.blocks.clone())
    }

    fn request_page(
        &self,
        block: Option<&BlockName>,
        offset: u64,
        length: u64,
    ) -> std::result::Result<(), i32> {
        let _ = block;
        let b = &self.blocks[0];
        let mut page = vec![0u8; length as usize];
        page_pattern(&b.name, offset, &mut page);
        let incoming = self.incoming.lock().upgrade().ok_or(libc::ESHUTDOWN)?;
        // SAFETY: `page` holds `length` bytes.
        unsafe { incoming.place_page(b.host + offset as usize, page.as_ptr(), length) }
            .map(|_| ())
            .map_err(|e| e.errno())
    }

    fn fault_thread_started(&self) {
        // SAFETY: gettid has no arguments.
        self.tid.store(unsafe { libc::gettid() }, Ordering::SeqCst);
        if self.panic_at_start {
            panic!("test: the fault thread fails");
        }
    }

    fn fault_thread_stopping(&self, failure: Option<FaultThreadFailure>) {
        // What the destination says, read from the hook: already recorded.
        assert_eq!(self.incoming().fault_thread_failure(), failure);
        *self.failure.lock() = failure;
        self.stopped.fetch_add(1, Ordering::SeqCst);
    }

    fn shut(&self, failed: bool) {
        self.shuts.lock().push(failed);
    }
}

extern "C" fn on_sigusr1(_: libc::c_int) {}

/// A no-op SIGUSR1 handler installed WITHOUT SA_RESTART: a signal makes the interrupted
/// read(2) or poll(2) of the fault thread fail with EINTR.
fn install_sigusr1() {
    // SAFETY: a zeroed sigaction with a plain handler; the old action is not needed.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as *const () as usize;
        sa.sa_flags = 0;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
}

/// Sends SIGUSR1 to thread `tid` of this process until `stop`, counting them in `sent`.
fn signaller(tid: i32, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        // SAFETY: getpid has no arguments.
        let pid = unsafe { libc::getpid() };
        while !stop.load(Ordering::SeqCst) {
            // SAFETY: tgkill with plain integers; the target is the fault thread of this
            // process, alive until cleanup (which runs after `stop`).
            let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR1) };
            if rc != 0 {
                break; // the thread is gone
            }
            if sent.fetch_add(1, Ordering::SeqCst) % 64 == 63 {
                thread::yield_now();
            }
        }
    })
}

/// Joins `h` (a thread faulting on guest pages); a thread still blocked after 120 s fails
/// the test with the destination's counters and fault-thread status.
fn join_or_report<T>(h: thread::JoinHandle<T>, incoming: &Incoming, what: &str) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !h.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: still blocked after 120 s; fault thread failure {:?}, {:?}",
            incoming.fault_thread_failure(),
            incoming.stats()
        );
        thread::sleep(Duration::from_millis(5));
    }
    h.join().expect("faulting thread panicked")
}

const PAGES: usize = 512;
/// Signals sent before the second half of the pages is faulted (the thread of d48cf57
/// died within 2 million in both modes; a few thousand were not always enough).
const SIGNALS: u64 = 2_000_000;
/// `resend_pending` calls (wake-ups with an empty queue) made meanwhile, when asked.
const RESENDS: u64 = 50_000;

/// Faults on every page of `mem` while the fault thread is flooded with signals (and, with
/// `resends`, with wake-ups from `resend_pending`); every page must be served with its
/// content and every resend must succeed.
fn survive(wait: WaitStrategy, resends: bool) {
    install_sigusr1();
    let mem = GuestMem::anon(PAGES * 4096);
    let hooks = Hooks::new(vec![mem.block("ram")], false);
    let incoming = hooks.make(IncomingConfig {
        wait,
        ..Default::default()
    });
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    incoming.set_state(State::Running).unwrap();
    wait_for(10, "fault thread started", || {
        hooks.tid.load(Ordering::SeqCst) != 0
    });
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sig = signaller(hooks.tid.load(Ordering::SeqCst), stop.clone(), sent.clone());
    let calls = Arc::new(AtomicU64::new(0));
    let resender = resends.then(|| {
        let (incoming, stop, calls) = (incoming.clone(), stop.clone(), calls.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Err(e) = incoming.resend_pending() {
                    return Err(e.to_string());
                }
                calls.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        })
    });
    // Half of the pages while the signals flow...
    let base = mem.addr;
    let faulter = thread::spawn(move || {
        for p in 0..PAGES / 2 {
            assert!(check_page(base + p * 4096, "ram", (p * 4096) as u64));
        }
    });
    join_or_report(faulter, &incoming, "faults while signalled");
    // ...the flood goes on until enough signals were sent...
    wait_for(600, "signals and wake-ups sent", || {
        let resent = !resends || calls.load(Ordering::SeqCst) >= RESENDS;
        let done = resender.as_ref().is_some_and(|r| r.is_finished());
        (sent.load(Ordering::SeqCst) >= SIGNALS && resent) || sig.is_finished() || done
    });
    // ...then the other half must still be served.
    let faulter = thread::spawn(move || {
        for p in PAGES / 2..PAGES {
            assert!(check_page(base + p * 4096, "ram", (p * 4096) as u64));
        }
    });
    join_or_report(faulter, &incoming, "faults after the signals");
    stop.store(true, Ordering::SeqCst);
    sig.join().unwrap();
    eprintln!(
        "{wait:?}: {} signals sent to the fault thread",
        sent.load(Ordering::SeqCst)
    );
    if let Some(r) = resender {
        let n = calls.load(Ordering::SeqCst);
        match r.join().unwrap() {
            Ok(()) => eprintln!("{wait:?}: {n} resend_pending calls, all Ok"),
            Err(e) => panic!("resend_pending failed after {n} calls: {e}"),
        }
    }
    let s = incoming.stats();
    assert_eq!(s.faults, PAGES as u64);
    assert_eq!(s.requests, PAGES as u64);
    assert_eq!(s.pages_placed, PAGES as u64);
    assert_eq!(incoming.fault_thread_failure(), None);
    assert_eq!(hooks.stopped.load(Ordering::SeqCst), 0);
    incoming.cleanup().unwrap();
    assert_eq!(hooks.stopped.load(Ordering::SeqCst), 1);
    assert_eq!(
        *hooks.failure.lock(),
        None,
        "cleanup stopped it: no failure"
    );
    assert_eq!(*hooks.shuts.lock(), vec![false]);
}

#[test]
fn spin_mode_survives_signals() {
    require_uffd!();
    survive(WaitStrategy::Spin(Duration::from_secs(3600)), false);
}

#[test]
fn block_mode_survives_signals() {
    require_uffd!();
    survive(WaitStrategy::Block, false);
}

#[test]
fn block_mode_survives_signals_and_resend_bursts() {
    require_uffd!();
    survive(WaitStrategy::Block, true);
}

#[test]
fn spin_mode_survives_signals_and_resend_bursts() {
    require_uffd!();
    survive(WaitStrategy::Spin(Duration::from_secs(3600)), true);
}

/// A fault thread that stops on a failure (here a panic in its first hook, the one way
/// from outside to make it fail) leaves a failed state that the destination reports and
/// the stopping hook is told of, and the abort path instead of a hang: with `poison`,
/// every missing page raises SIGBUS; without, it reads zeros.
fn failed_thread_aborts(poison: bool, wait: WaitStrategy) {
    let mem = GuestMem::anon(16 * 4096);
    let hooks = Hooks::new(vec![mem.block("ram")], true);
    let incoming = hooks.make(IncomingConfig {
        wait,
        abort_poison: poison,
        ..Default::default()
    });
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    incoming.set_state(State::Running).unwrap();
    wait_for(60, "the fault thread stopped", || {
        hooks.stopped.load(Ordering::SeqCst) == 1
    });
    assert_eq!(
        incoming.fault_thread_failure(),
        Some(FaultThreadFailure::Panic)
    );
    assert_eq!(*hooks.failure.lock(), Some(FaultThreadFailure::Panic));
    assert!(incoming.aborted());
    let before = sigbus::COUNT.load(Ordering::SeqCst);
    let base = mem.addr;
    let faulter = thread::spawn(move || {
        // SAFETY: a page of the test's guest memory.
        unsafe { std::ptr::read_volatile((base + 3 * 4096) as *const u64) }
    });
    join_or_report(faulter, &incoming, "a fault after the failure");
    if poison {
        assert_eq!(sigbus::COUNT.load(Ordering::SeqCst), before + 1);
        assert_eq!(sigbus::ADDR.load(Ordering::SeqCst), base + 3 * 4096);
    } else {
        assert!(mem.read_u64(5 * 4096) == 0, "zero-filled");
    }
    let s = incoming.stats();
    assert_eq!(s.pages_lost, 16, "every page given up");
    assert_eq!(s.pending_pages, 0);
    let e = incoming.resend_pending().unwrap_err();
    assert_eq!(e.errno(), libc::ESRCH, "{e}");
    incoming.cleanup().unwrap();
    assert_eq!(*hooks.shuts.lock(), vec![true], "SHUT says failed");
    assert_eq!(hooks.stopped.load(Ordering::SeqCst), 1);
    // Still readable after cleanup (until the next enable_notify).
    assert_eq!(
        incoming.fault_thread_failure(),
        Some(FaultThreadFailure::Panic)
    );
}

static SIGBUS_SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn a_failed_fault_thread_poisons_and_a_fault_gets_sigbus() {
    require_uffd!();
    let _serial = SIGBUS_SERIAL.lock();
    sigbus::install();
    failed_thread_aborts(true, WaitStrategy::Block);
}

#[test]
fn a_failed_fault_thread_zero_fills_without_poison() {
    require_uffd!();
    let _serial = SIGBUS_SERIAL.lock();
    failed_thread_aborts(false, WaitStrategy::Spin(Duration::from_millis(10)));
}
