//! Issue 17 item 2: an abort that zero-fills (no UFFDIO_POISON, or `abort_poison` off) on a
//! block without UFFDIO_ZEROPAGE (hugetlbfs before Linux 6.6, or anonymous memory with the
//! zero-page path forced off) must fill every lost page, not one page a run, and wake every
//! thread blocked on one. Observable: the blocked threads return, every page not received
//! reads as zeros without blocking, and the count of lost pages matches.

mod common;
#[path = "common/keep_on_panic.rs"]
mod keep_on_panic;

use std::sync::Arc;
use std::thread;

use common::hooks::TestHooks;
use common::*;
use keep_on_panic::KeepOnPanic;
use postcopy_ram::{Incoming, IncomingConfig};

fn read_u64(addr: usize) -> u64 {
    // SAFETY: a page of the test's guest memory (it may fault through userfaultfd).
    unsafe { std::ptr::read_volatile(addr as *const u64) }
}

/// Threads that each read one page of `pages` (host page `psize`) and wait there.
fn block_on(
    incoming: &Incoming,
    base: usize,
    psize: usize,
    pages: &[usize],
) -> Vec<thread::JoinHandle<u64>> {
    let threads: Vec<_> = pages
        .iter()
        .map(|&p| thread::spawn(move || read_u64(base + p * psize)))
        .collect();
    wait_for(5, "every thread blocked on its page", || {
        incoming.stats().pending_pages == pages.len() as u64
    });
    threads
}

/// After the abort: every page of the block reads without blocking; the pages not
/// received read as zeros.
fn every_page_readable(base: usize, psize: usize, pages: usize, received: &[usize]) {
    let received = received.to_vec();
    let reader = thread::spawn(move || {
        (0..pages)
            .filter(|p| !received.contains(p))
            .map(|p| read_u64(base + p * psize))
            .collect::<Vec<u64>>()
    });
    let got = join_within(
        reader,
        5,
        "a reader of the lost pages (a page neither filled nor poisoned)",
    );
    assert!(got.iter().all(|&v| v == 0), "{got:?}");
}

#[test]
fn abort_fills_every_lost_page_on_anonymous_memory_without_the_zero_page_path() {
    require_uffd!();
    let mem = KeepOnPanic::new(GuestMem::anon(8 * 4096));
    let hooks = TestHooks::new(vec![mem.block("ram")], Arc::new(|_, _| Ok(())));
    let incoming = hooks.incoming(IncomingConfig {
        abort_poison: false,
        ..Default::default()
    });
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    incoming.test_only_without_zeropage().unwrap();
    hooks.place("ram", 3 * 4096, 4096).unwrap();
    let blocked = block_on(&incoming, mem.addr, 4096, &[1, 5, 7]);
    let out = incoming.abort().unwrap();
    assert!(!out.poisoned);
    assert_eq!((out.pages_lost, out.bytes_lost), (7, 7 * 4096), "{out:?}");
    for (i, t) in blocked.into_iter().enumerate() {
        assert_eq!(join_within(t, 5, &format!("blocked thread {i}")), 0);
    }
    every_page_readable(mem.addr, 4096, 8, &[3]);
    assert!(check_page(mem.addr + 3 * 4096, "ram", 3 * 4096));
    assert_eq!(incoming.stats().pages_lost, 7);
    incoming.cleanup().unwrap();
}

#[test]
fn abort_fills_every_lost_page_on_hugetlbfs() {
    require_uffd!();
    let _serial = HUGE_LOCK.lock();
    let Some(_reserved) = HugePages::reserve(4) else {
        skip("cannot reserve 4 huge pages of 2 MiB (vm.nr_hugepages)");
        return;
    };
    let Some(mem) = GuestMem::huge(4 * HUGE).map(KeepOnPanic::new) else {
        skip("MAP_HUGETLB refused");
        return;
    };
    let block = mem.sub_block("ram", 0, 4 * HUGE, HUGE as u64);
    let hooks = TestHooks::new(vec![block], Arc::new(|_, _| Ok(())));
    let incoming = hooks.incoming(IncomingConfig {
        abort_poison: false,
        ..Default::default()
    });
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    hooks.place("ram", 0, HUGE as u64).unwrap();
    let blocked = block_on(&incoming, mem.addr, HUGE, &[1, 3]);
    let out = incoming.abort().unwrap();
    assert!(!out.poisoned);
    assert_eq!(
        (out.pages_lost, out.bytes_lost),
        (3, 3 * HUGE as u64),
        "{out:?}"
    );
    for (i, t) in blocked.into_iter().enumerate() {
        assert_eq!(join_within(t, 5, &format!("blocked thread {i}")), 0);
    }
    every_page_readable(mem.addr, HUGE, 4, &[0]);
    assert!(check_page(mem.addr, "ram", 0));
    incoming.cleanup().unwrap();
}
