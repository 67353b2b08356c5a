//! Issue 10 point 4 on real userfaultfd: pages dropped after placement are requested again.

mod common;

use std::thread;

use common::hooks::TestHooks;
use common::*;
use postcopy_ram::IncomingConfig;

fn dontneed(addr: usize, len: usize) {
    // SAFETY: drops pages of the test's own guest memory.
    let rc = unsafe { libc::madvise(addr as *mut _, len, libc::MADV_DONTNEED) };
    assert_eq!(rc, 0);
}

#[test]
fn madv_dontneed_on_a_received_page_is_requested_again_with_track_remove() {
    require_uffd!();
    let mem = GuestMem::anon(8 * 4096);
    let hooks = TestHooks::serving(vec![mem.block("ram")]);
    let incoming = hooks.incoming(IncomingConfig {
        track_remove: true,
        ..Default::default()
    });
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    hooks.place("ram", 2 * 4096, 4096).unwrap();
    assert!(check_page(mem.addr + 2 * 4096, "ram", 2 * 4096));
    // A balloon drops page 2 (the madvise returns once the fault thread read the event).
    dontneed(mem.addr + 2 * 4096, 4096);
    // The kernel returns from madvise once the event is read; the fault thread counts it
    // right after (and clears the bits before it serves any later fault).
    wait_for(5, "the REMOVE event", || {
        incoming.stats().remove_events == 1
    });
    let base = mem.addr;
    let t = thread::spawn(move || check_page(base + 2 * 4096, "ram", 2 * 4096));
    assert!(join_within(t, 5, "the thread touching the dropped page"));
    wait_for(5, "the request", || incoming.stats().requests == 1);
    let reqs = hooks.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].offset,
        2 * 4096,
        "the dropped page was requested again"
    );
    incoming.cleanup().unwrap();
    let s = incoming.stats();
    assert_eq!((s.late_faults, s.pages_placed), (0, 2), "{s:?}");
}

#[test]
fn discard_range_after_listen_requests_the_page_again() {
    require_uffd!();
    let mem = GuestMem::anon(8 * 4096);
    let hooks = TestHooks::serving(vec![mem.block("ram")]);
    // REMOVE events stay off by default.
    let incoming = hooks.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    hooks.place("ram", 4 * 4096, 4096).unwrap();
    hooks.place("ram", 5 * 4096, 4096).unwrap();
    assert!(check_page(mem.addr + 4 * 4096, "ram", 4 * 4096));
    incoming.discard_range("ram", 4 * 4096, 2 * 4096).unwrap();
    let base = mem.addr;
    let t = thread::spawn(move || {
        check_page(base + 4 * 4096, "ram", 4 * 4096) && check_page(base + 5 * 4096, "ram", 5 * 4096)
    });
    assert!(join_within(t, 5, "the thread touching discarded pages"));
    wait_for(5, "two requests", || incoming.stats().requests == 2);
    let offs: Vec<u64> = hooks.requests().iter().map(|r| r.offset / 4096).collect();
    assert_eq!(offs, vec![4, 5]);
    assert_eq!(incoming.stats().remove_events, 0);
    incoming.cleanup().unwrap();
}
