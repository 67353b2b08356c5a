//! Issue 10 points 1 and 7 on real userfaultfd: a failed request or a failed placement
//! never loses a page; requests pause and are re-sent by `resend_pending`.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;

use common::hooks::{serve, TestHooks};
use common::*;
use postcopy_ram::{IncomingConfig, State};

fn touch_pages(base: usize, pages: Vec<u64>) -> thread::JoinHandle<bool> {
    thread::spawn(move || {
        pages
            .into_iter()
            .all(|p| check_page(base + (p * 4096) as usize, "ram", p * 4096))
    })
}

#[test]
fn failed_requests_stay_pending_until_resend() {
    require_uffd!();
    let mem = GuestMem::anon(32 * 4096);
    let failures = Arc::new(AtomicU32::new(3));
    let f = failures.clone();
    let hooks = TestHooks::new(
        vec![mem.block("ram")],
        Arc::new(move |h, r| {
            if f.load(Ordering::SeqCst) > 0 {
                f.fetch_sub(1, Ordering::SeqCst);
                return Err(libc::EPIPE);
            }
            serve(h, r)
        }),
    );
    let incoming = hooks.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    incoming.set_state(State::Running).unwrap();
    // Four threads, four pages each: each blocks on its first page.
    let threads: Vec<_> = (0..4u64)
        .map(|t| touch_pages(mem.addr, (t * 4..t * 4 + 4).collect()))
        .collect();
    wait_for(5, "four pending pages", || {
        incoming.stats().pending_pages == 4
    });
    let s = incoming.stats();
    assert!(incoming.requests_paused());
    assert_eq!(
        s.request_errors, 1,
        "the first request failed, then requests paused: {s:?}"
    );
    assert_eq!(s.paused_faults, 3, "{s:?}");
    assert!(hooks.requests().is_empty());
    // The channel "comes back" only on the third try: each failed re-send pauses again.
    let mut errors = 0;
    let sent = loop {
        match incoming.resend_pending() {
            Ok(n) => break n,
            Err(e) => {
                assert_eq!(e.errno(), libc::EPIPE);
                assert!(incoming.requests_paused());
                errors += 1;
                assert!(errors < 5);
            }
        }
    };
    assert_eq!((errors, sent), (2, 4));
    for t in threads {
        assert!(
            join_within(t, 10, "a faulting thread"),
            "wrong page content"
        );
    }
    let reqs = hooks.requests();
    assert_eq!(
        reqs[0].named.as_deref(),
        Some("ram"),
        "the first re-sent request names its block"
    );
    incoming.cleanup().unwrap();
    let s = incoming.stats();
    assert_eq!(s.pending_pages, 0, "{s:?}");
    assert_eq!((s.resent, s.resend_errors), (4, 2), "{s:?}");
    assert_eq!(
        s.faults,
        s.requests + s.request_errors + s.duplicate_faults + s.late_faults + s.paused_faults,
        "every fault counted once: {s:?}"
    );
    assert_eq!(s.pages_placed, 16, "{s:?}");
    assert_eq!(
        *hooks.shuts.lock(),
        vec![false],
        "a recovered migration did not fail"
    );
}

#[test]
fn host_pause_records_faults_and_resume_sends_them() {
    require_uffd!();
    let mem = GuestMem::anon(16 * 4096);
    let hooks = TestHooks::serving(vec![mem.block("ram")]);
    let incoming = hooks.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    assert_eq!(incoming.pause_requests(true).unwrap(), 0);
    let threads: Vec<_> = [3u64, 7, 11]
        .into_iter()
        .map(|p| touch_pages(mem.addr, vec![p]))
        .collect();
    wait_for(5, "three pending pages", || {
        incoming.stats().pending_pages == 3
    });
    assert!(hooks.requests().is_empty(), "no request while paused");
    assert_eq!(incoming.pause_requests(false).unwrap(), 3);
    for t in threads {
        assert!(join_within(t, 10, "a faulting thread"));
    }
    wait_for(5, "three re-sent requests", || incoming.stats().resent == 3);
    let reqs = hooks.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].named.as_deref(), Some("ram"));
    assert!(reqs[1..].iter().all(|r| r.named.is_none()));
    incoming.cleanup().unwrap();
}

#[test]
fn resend_pending_is_refused_from_the_callback_and_outside_listen() {
    require_uffd!();
    let mem = GuestMem::anon(4 * 4096);
    let seen = Arc::new(parking_lot::Mutex::new(None));
    let s2 = seen.clone();
    let hooks = TestHooks::new(
        vec![mem.block("ram")],
        Arc::new(move |h, r| {
            *s2.lock() = Some(h.get().resend_pending().map_err(|e| e.errno()));
            serve(h, r)
        }),
    );
    let incoming = hooks.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    assert_eq!(incoming.resend_pending().unwrap_err().errno(), libc::EINVAL);
    incoming.enable_notify().unwrap();
    assert!(check_page(mem.addr, "ram", 0));
    assert_eq!(*seen.lock(), Some(Err(libc::EDEADLK)));
    incoming.cleanup().unwrap();
    assert_eq!(incoming.resend_pending().unwrap_err().errno(), libc::EINVAL);
}

#[test]
fn failed_placement_keeps_the_page_pending() {
    require_uffd!();
    let mem = GuestMem::anon(16 * 4096);
    let hooks = TestHooks::new(vec![mem.block("ram")], Arc::new(|_, _| Ok(())));
    let incoming = hooks.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    let t = touch_pages(mem.addr, vec![5]);
    wait_for(5, "page 5 pending", || incoming.stats().pending_pages == 1);
    // A source buffer the kernel cannot read: UFFDIO_COPY fails with EFAULT.
    let bad = GuestMem::anon(4096);
    // SAFETY: our own mapping.
    let rc = unsafe { libc::mprotect(bad.addr as *mut _, 4096, libc::PROT_NONE) };
    assert_eq!(rc, 0);
    // SAFETY: the kernel reads `from`, which is mapped (if unreadable).
    let err = unsafe { incoming.place_page(mem.addr + 5 * 4096, bad.addr as *const u8, 4096) }
        .unwrap_err();
    assert_eq!(err.errno(), libc::EFAULT);
    let s = incoming.stats();
    assert_eq!(
        (s.placement_errors, s.last_placement_errno),
        (1, libc::EFAULT),
        "{s:?}"
    );
    assert_eq!(s.pending_pages, 1, "the page stays pending: {s:?}");
    assert!(!t.is_finished());
    // The VMM retries: the source is asked again and this time the page is served.
    hooks.set_on_request(Arc::new(serve));
    assert_eq!(incoming.resend_pending().unwrap(), 1);
    assert!(join_within(t, 10, "the faulting thread"));
    assert_eq!(incoming.stats().pending_pages, 0);
    incoming.cleanup().unwrap();
}
