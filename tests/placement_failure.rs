//! Issue 17 item 6: a placement that fails with an error other than EEXIST must not leave
//! its page "requested" for good. The threads blocked on it are woken to fault again, and
//! that fault (or any later one) requests the page again: counted in `requests`, not in
//! `duplicate_faults`. A good placement afterwards completes the read.

mod common;
#[path = "common/keep_on_panic.rs"]
mod keep_on_panic;

use std::sync::Arc;
use std::thread;

use common::hooks::TestHooks;
use common::*;
use keep_on_panic::KeepOnPanic;
use postcopy_ram::IncomingConfig;

/// A page-sized source the kernel cannot read (PROT_NONE): UFFDIO_COPY fails with EFAULT.
struct Unreadable(usize);

impl Unreadable {
    fn new() -> Unreadable {
        // SAFETY: a fresh anonymous mapping, never accessed by this process.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Unreadable(p as usize)
    }
}

impl Drop for Unreadable {
    fn drop(&mut self) {
        // SAFETY: the mapping this value owns.
        unsafe { libc::munmap(self.0 as *mut libc::c_void, 4096) };
    }
}

#[test]
fn a_failed_placement_is_requested_again_at_the_next_fault() {
    require_uffd!();
    let mem = KeepOnPanic::new(GuestMem::anon(4 * 4096));
    // Requests are recorded, not served: the test places.
    let hooks = TestHooks::new(vec![mem.block("ram")], Arc::new(|_, _| Ok(())));
    let incoming = hooks.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    let base = mem.addr;
    let reader = thread::spawn(move || check_page(base + 2 * 4096, "ram", 2 * 4096));
    wait_for(5, "the first request", || hooks.requests().len() == 1);
    let bad = Unreadable::new();
    // SAFETY: deliberately unreadable for the kernel; this process never reads it.
    let err =
        unsafe { incoming.place_page(base + 2 * 4096, bad.0 as *const u8, 4096) }.unwrap_err();
    assert_eq!(err.errno(), libc::EFAULT, "{err}");
    // The blocked reader faults again and the page is asked for again.
    wait_for(
        5,
        "the page requested again after the failed placement",
        || hooks.requests().len() == 2,
    );
    let reqs = hooks.requests();
    assert_eq!((reqs[1].offset, reqs[1].length), (2 * 4096, 4096));
    hooks.place("ram", 2 * 4096, 4096).unwrap();
    assert!(join_within(reader, 5, "the reader"), "the page's content");
    let s = incoming.stats();
    assert_eq!(
        (
            s.placement_errors,
            s.last_placement_errno,
            s.requests,
            s.duplicate_faults
        ),
        (1, libc::EFAULT, 2, 0),
        "{s:?}"
    );
    assert_eq!(s.pending_pages, 0, "{s:?}");
    incoming.cleanup().unwrap();
    assert_eq!(*hooks.shuts.lock(), vec![false]);
}

/// Another thread's fault on a page whose placement failed is a new request too, not a
/// duplicate of the request that the failure used up.
#[test]
fn a_second_thread_faulting_after_a_failed_placement_requests_it() {
    require_uffd!();
    let mem = KeepOnPanic::new(GuestMem::anon(4 * 4096));
    let hooks = TestHooks::new(vec![mem.block("ram")], Arc::new(|_, _| Ok(())));
    let incoming = hooks.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    let base = mem.addr;
    let first = thread::spawn(move || check_page(base + 4096, "ram", 4096));
    wait_for(5, "the first request", || hooks.requests().len() == 1);
    let bad = Unreadable::new();
    // SAFETY: deliberately unreadable for the kernel; this process never reads it.
    assert!(unsafe { incoming.place_page(base + 4096, bad.0 as *const u8, 4096) }.is_err());
    wait_for(5, "a new request", || hooks.requests().len() >= 2);
    let second = thread::spawn(move || check_page(base + 4096, "ram", 4096));
    wait_for(5, "the second thread's fault read", || {
        let s = incoming.stats();
        s.faults >= 3
    });
    hooks.place("ram", 4096, 4096).unwrap();
    assert!(join_within(first, 5, "the first reader"));
    assert!(join_within(second, 5, "the second reader"));
    let s = incoming.stats();
    // Every fault after the failure found the page either not requested (a request) or
    // requested again by the fault before it (a duplicate of a live request).
    assert_eq!(
        s.requests + s.duplicate_faults + s.late_faults,
        s.faults,
        "{s:?}"
    );
    assert!(s.requests >= 2, "{s:?}");
    incoming.cleanup().unwrap();
}
