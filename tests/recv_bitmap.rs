//! Issue 10 point 2 (library side): the received bitmap is exact, in target pages, counts
//! pages the host loaded itself before LISTEN, and is encoded in QEMU's RECV_BITMAP format.

mod common;

use std::sync::Arc;

use common::hooks::{serve, TestHooks};
use common::*;
use postcopy_ram::wire::{decode_recv_bitmap, RECV_BITMAP_END_MARK};
use postcopy_ram::IncomingConfig;

fn bitmap_of(incoming: &postcopy_ram::Incoming, name: &str) -> (Vec<u8>, Vec<bool>, usize) {
    let len = incoming.recv_bitmap_len(name).unwrap();
    let mut buf = vec![0u8; len];
    let n = incoming.encode_recv_bitmap(name, &mut buf).unwrap();
    assert_eq!(n, len);
    let (bm, used) = decode_recv_bitmap(&buf).unwrap();
    assert_eq!(used, len);
    let bits = (0..bm.size_bytes() * 8).map(|p| bm.test(p)).collect();
    (buf, bits, n)
}

#[test]
fn precopy_marks_placements_and_discards_make_an_exact_bitmap() {
    require_uffd!();
    let mem = GuestMem::anon(100 * 4096);
    let hooks = TestHooks::serving(vec![mem.block("ram")]);
    let incoming = hooks.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    // Precopy: the host copies pages 0..10 and 50 itself, and says so.
    for p in (0..10u64).chain([50]) {
        let mut page = vec![0u8; 4096];
        page_pattern("ram", p * 4096, &mut page);
        // SAFETY: inside the block, before LISTEN (not registered yet).
        unsafe {
            std::ptr::copy_nonoverlapping(
                page.as_ptr(),
                (mem.addr + p as usize * 4096) as *mut u8,
                4096,
            )
        };
    }
    incoming.mark_received(mem.addr, 10 * 4096).unwrap();
    incoming.mark_received(mem.addr + 50 * 4096, 4096).unwrap();
    assert!(
        incoming.mark_received(mem.addr + 100, 4096).is_err(),
        "not a whole target page"
    );
    assert!(
        incoming
            .mark_received(mem.addr + 99 * 4096, 2 * 4096)
            .is_err(),
        "past the block"
    );
    incoming.enable_notify().unwrap();
    // Marked pages were kept across LISTEN and are never requested.
    assert!(check_page(mem.addr + 3 * 4096, "ram", 3 * 4096));
    // Postcopy: pages 20 and 21 are requested and placed; 90 is placed unrequested.
    assert!(check_page(mem.addr + 20 * 4096, "ram", 20 * 4096));
    assert!(check_page(mem.addr + 21 * 4096, "ram", 21 * 4096));
    hooks.place("ram", 90 * 4096, 4096).unwrap();
    // `requests` counts a request from the call of request_page on: wait for the placements.
    wait_for(5, "pages 20, 21 and 90 placed", || {
        incoming.stats().pages_placed == 3
    });
    // A discard after LISTEN (a balloon) clears page 5.
    incoming.discard_range("ram", 5 * 4096, 4096).unwrap();
    let (buf, bits, n) = bitmap_of(&incoming, "ram");
    assert_eq!(
        n,
        8 + 16 + 8,
        "be64 size, 100 bits in two words, be64 end mark"
    );
    assert_eq!(u64::from_be_bytes(buf[..8].try_into().unwrap()), 16);
    assert_eq!(
        u64::from_be_bytes(buf[n - 8..].try_into().unwrap()),
        RECV_BITMAP_END_MARK
    );
    let want: Vec<u64> = (0..10)
        .filter(|&p| p != 5)
        .chain([20, 21, 50, 90])
        .collect();
    let got: Vec<u64> = (0..bits.len() as u64)
        .filter(|&p| bits[p as usize])
        .collect();
    assert_eq!(got, want);
    let reqs: Vec<u64> = hooks.requests().iter().map(|r| r.offset / 4096).collect();
    assert_eq!(reqs, vec![20, 21], "marked pages are never requested");
    // The discarded page faults again and is requested again.
    assert!(check_page(mem.addr + 5 * 4096, "ram", 5 * 4096));
    wait_for(5, "the third request", || hooks.requests().len() == 3);
    assert_eq!(hooks.requests().last().unwrap().offset, 5 * 4096);
    let mut small = vec![0u8; n - 1];
    assert!(incoming.encode_recv_bitmap("ram", &mut small).is_err());
    assert!(incoming.recv_bitmap_len("nope").is_err());
    incoming.cleanup().unwrap();
}

#[test]
fn target_pages_smaller_than_host_pages() {
    require_uffd!();
    // 1 KiB target pages over 4 KiB host pages: four bits a host page.
    let mem = GuestMem::anon(8 * 4096);
    let hooks = TestHooks::new(vec![mem.block("ram")], Arc::new(serve));
    let incoming = hooks.incoming(IncomingConfig {
        target_page_size: 1024,
        ..Default::default()
    });
    incoming.init(0).unwrap();
    incoming.mark_received(mem.addr + 1024, 2048).unwrap();
    incoming.enable_notify().unwrap();
    // Host page 0 is only partly marked: it still faults and is requested whole.
    assert!(check_page(mem.addr, "ram", 0));
    assert!(check_page(mem.addr + 3 * 4096, "ram", 3 * 4096));
    // A woken thread may run before the placer has set the bits: wait for the fault thread.
    wait_for(5, "two pages placed", || incoming.stats().pages_placed == 2);
    let (_, bits, n) = bitmap_of(&incoming, "ram");
    assert_eq!(n, 8 + 8 + 8, "32 target pages: one word");
    let got: Vec<usize> = (0..32).filter(|&p| bits[p]).collect();
    assert_eq!(got, vec![0, 1, 2, 3, 12, 13, 14, 15]);
    incoming.cleanup().unwrap();
}
