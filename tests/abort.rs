//! Issue 10 point 3 on real userfaultfd: abort for a source gone for good. No thread hangs
//! and none reads a zero page silently: with UFFDIO_POISON (Linux 6.6) every page not
//! received raises SIGBUS when touched, and the process survives to report it; without it
//! the pages are zero-filled and the outcome says so.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;

use common::hooks::TestHooks;
use common::*;
use postcopy_ram::{IncomingConfig, State};

static SERIAL: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

fn read_first_u64(addr: usize) -> u64 {
    // SAFETY: a page of the test's guest memory.
    unsafe { std::ptr::read_volatile(addr as *const u64) }
}

const BUS_ADRERR: i32 = 2;
const BUS_MCEERR_AR: i32 = 4;

#[test]
fn abort_poisons_missing_pages_and_blocked_threads_get_sigbus() {
    require_uffd!();
    let _serial = SERIAL.lock();
    sigbus::install();
    let mem = GuestMem::anon(16 * 4096);
    let hooks = TestHooks::new(vec![mem.block("ram")], Arc::new(|_, _| Ok(())));
    let incoming = hooks.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    incoming.set_state(State::Running).unwrap();
    hooks.place("ram", 0, 4096).unwrap();
    hooks.place("ram", 4096, 4096).unwrap();
    let before = sigbus::COUNT.load(Ordering::SeqCst);
    // A thread blocks on page 2, which will never come.
    let base = mem.addr;
    let blocked = thread::spawn(move || read_first_u64(base + 2 * 4096));
    wait_for(5, "page 2 pending", || incoming.stats().pending_pages == 1);
    let out = incoming.abort().unwrap();
    assert!(out.poisoned, "this kernel ({}) has UFFDIO_POISON", kernel());
    assert_eq!((out.pages_lost, out.bytes_lost), (14, 14 * 4096));
    // The blocked thread is woken into SIGBUS (not a zero page it would trust).
    join_within(blocked, 5, "the thread blocked on page 2");
    assert_eq!(sigbus::COUNT.load(Ordering::SeqCst), before + 1);
    assert_eq!(sigbus::ADDR.load(Ordering::SeqCst), base + 2 * 4096);
    // Linux 6.6 reported poison markers as a memory failure (BUS_MCEERR_AR); later kernels
    // report a plain SIGBUS (BUS_ADRERR) so as not to fake a hardware error.
    let code = sigbus::CODE.load(Ordering::SeqCst);
    assert!(
        code == BUS_MCEERR_AR || code == BUS_ADRERR,
        "si_code {code}"
    );
    // A later access to another missing page: SIGBUS again, the process survives.
    read_first_u64(base + 9 * 4096);
    assert_eq!(sigbus::COUNT.load(Ordering::SeqCst), before + 2);
    assert_eq!(sigbus::ADDR.load(Ordering::SeqCst), base + 9 * 4096);
    // Received pages are intact.
    assert!(check_page(base, "ram", 0) && check_page(base + 4096, "ram", 4096));
    assert_eq!(incoming.resend_pending().unwrap_err().errno(), libc::EPIPE);
    let s = incoming.stats();
    assert_eq!((s.pages_lost, s.pending_pages), (14, 0), "{s:?}");
    incoming.cleanup().unwrap();
    assert_eq!(
        *hooks.shuts.lock(),
        vec![true],
        "an aborted migration failed"
    );
}

#[test]
fn abort_without_poison_zero_fills_and_says_so() {
    require_uffd!();
    let _serial = SERIAL.lock();
    let mem = GuestMem::anon(8 * 4096);
    let hooks = TestHooks::new(vec![mem.block("ram")], Arc::new(|_, _| Ok(())));
    let incoming = hooks.incoming(IncomingConfig {
        abort_poison: false,
        ..Default::default()
    });
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    hooks.place("ram", 3 * 4096, 4096).unwrap();
    let before = sigbus::COUNT.load(Ordering::SeqCst);
    let base = mem.addr;
    let blocked = thread::spawn(move || read_first_u64(base + 5 * 4096));
    wait_for(5, "page 5 pending", || incoming.stats().pending_pages == 1);
    let out = incoming.abort().unwrap();
    assert!(!out.poisoned);
    assert_eq!(out.pages_lost, 7);
    assert_eq!(
        join_within(blocked, 5, "the blocked thread"),
        0,
        "woken onto a zero page"
    );
    assert_eq!(sigbus::COUNT.load(Ordering::SeqCst), before);
    assert!(check_page(base + 3 * 4096, "ram", 3 * 4096));
    incoming.cleanup().unwrap();
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default()
}

/// After an abort no page can be requested any more: a discard after LISTEN would drop a
/// page that never comes back, so it is refused (EPIPE) and the page keeps its contents;
/// a thread touching it afterwards reads it at once instead of hanging.
#[test]
fn a_discard_after_an_abort_is_refused_and_drops_nothing() {
    require_uffd!();
    let _serial = SERIAL.lock();
    let mem = GuestMem::anon(4 * 4096);
    let hooks = TestHooks::new(vec![mem.block("ram")], Arc::new(|_, _| Ok(())));
    let incoming = hooks.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    incoming.set_state(State::Running).unwrap();
    hooks.place("ram", 0, 4096).unwrap();
    // Before the abort a discard after LISTEN is allowed (a balloon).
    hooks.place("ram", 4096, 4096).unwrap();
    incoming.discard_range("ram", 4096, 4096).unwrap();
    incoming.abort().unwrap();
    let err = incoming.discard_range("ram", 0, 4096).unwrap_err();
    assert_eq!(err.errno(), libc::EPIPE, "{err}");
    let base = mem.addr;
    let reader = thread::spawn(move || check_page(base, "ram", 0));
    assert!(
        join_within(reader, 5, "the thread reading the kept page"),
        "page 0 kept its contents"
    );
    incoming.cleanup().unwrap();
}
