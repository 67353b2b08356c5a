//! Issue 17 item 8: a failed end (cleanup with pages still pending, no abort) loses every
//! page not received, whether a fault requested it or not: `pages_lost` counts them all.

mod common;
#[path = "common/keep_on_panic.rs"]
mod keep_on_panic;

use std::sync::Arc;
use std::thread;

use common::hooks::TestHooks;
use common::*;
use keep_on_panic::KeepOnPanic;
use postcopy_ram::IncomingConfig;

#[test]
fn a_failed_end_counts_requested_and_never_requested_pages_as_lost() {
    require_uffd!();
    let mem = KeepOnPanic::new(GuestMem::anon(8 * 4096));
    // Every request fails: the source is gone.
    let hooks = TestHooks::new(vec![mem.block("ram")], Arc::new(|_, _| Err(libc::EPIPE)));
    let incoming = hooks.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    hooks.place("ram", 0, 4096).unwrap();
    hooks.place("ram", 4096, 4096).unwrap();
    let base = mem.addr;
    let blocked = thread::spawn(move || mem_read(base + 4 * 4096));
    wait_for(5, "page 4 pending", || incoming.stats().pending_pages == 1);
    assert_eq!(incoming.stats().pages_lost, 0);
    // Cleanup wakes the blocked thread (onto a zero page) and ends failed.
    incoming.cleanup().unwrap();
    join_within(blocked, 5, "the thread blocked on page 4");
    assert_eq!(*hooks.shuts.lock(), vec![true]);
    // Pages 2..8: page 4 requested, five never requested: six lost, not one.
    assert_eq!(incoming.stats().pages_lost, 6, "{:?}", incoming.stats());
}

#[test]
fn a_good_end_loses_nothing_and_an_abort_is_not_counted_twice() {
    require_uffd!();
    let mem = KeepOnPanic::new(GuestMem::anon(4 * 4096));
    let hooks = TestHooks::serving(vec![mem.block("ram")]);
    let incoming = hooks.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    for p in 0..4 {
        hooks.place("ram", p * 4096, 4096).unwrap();
    }
    incoming.cleanup().unwrap();
    assert_eq!(*hooks.shuts.lock(), vec![false]);
    assert_eq!(incoming.stats().pages_lost, 0);

    let mem = KeepOnPanic::new(GuestMem::anon(4 * 4096));
    let hooks = TestHooks::new(vec![mem.block("ram")], Arc::new(|_, _| Ok(())));
    let incoming = hooks.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    hooks.place("ram", 0, 4096).unwrap();
    assert_eq!(incoming.abort().unwrap().pages_lost, 3);
    incoming.cleanup().unwrap();
    assert_eq!(*hooks.shuts.lock(), vec![true]);
    assert_eq!(incoming.stats().pages_lost, 3, "counted by the abort only");
}

fn mem_read(addr: usize) -> u64 {
    // SAFETY: a page of the test's guest memory (it may fault through userfaultfd).
    unsafe { std::ptr::read_volatile(addr as *const u64) }
}
