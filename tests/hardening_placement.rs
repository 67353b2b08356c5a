//! Regression tests of issue 9 item 2 (checked arithmetic on a caller's addresses and
//! lengths), through the safe Rust API. Some change vm.nr_hugepages (and put it back),
//! serialised by `HUGE_LOCK`: run under /tmp/pcr-test.lock as scripts/test.sh does.

mod common;

use common::*;
use postcopy_ram::destination::block::BlockTable;
use postcopy_ram::{Backing, IncomingConfig, Placement, RamBlock};

/// Item 2: a caller's length close to 2^64 must not wrap the placement bounds check. On a
/// hugetlb block (no UFFDIO_ZEROPAGE, so zero pages are copied one page a call) the wrapped
/// check let `place_pages_zero(a, -2 MiB)` zero-fill the next block's page.
#[test]
fn placement_length_overflow_is_refused() {
    require_uffd!();
    let _serial = HUGE_LOCK.lock();
    let Some(_pool) = HugePages::reserve(2) else {
        skip("cannot reserve 2 huge pages");
        return;
    };
    let Some(mem) = GuestMem::huge(2 * HUGE) else {
        skip("MAP_HUGETLB failed");
        return;
    };
    let a = mem.sub_block("a", 0, HUGE, HUGE as u64);
    let b = mem.sub_block("b", HUGE, HUGE, HUGE as u64);
    let server = Server::new(vec![a.clone(), b.clone()], false);
    let incoming = server.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    let minus_2m = (HUGE as u64).wrapping_neg();
    let err = incoming.place_pages_zero(a.host, minus_2m).unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL, "{err}");
    let page = vec![0u8; HUGE];
    // SAFETY: the length check refuses the call before `page` would be read.
    let err = unsafe { incoming.place_pages(a.host, page.as_ptr(), minus_2m) }.unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL, "{err}");
    // Nothing was placed: both blocks' pages are still missing.
    assert_eq!(
        incoming.place_page_zero(b.host, HUGE as u64).unwrap(),
        Placement::Placed,
        "block b's page was zero-filled by the overflowing call"
    );
    assert_eq!(
        incoming.place_page_zero(a.host, HUGE as u64).unwrap(),
        Placement::Placed
    );
    let stats = incoming.stats();
    assert_eq!((stats.zero_pages_placed, stats.already_present), (2, 0));
    incoming.cleanup().unwrap();
}

/// Item 2: the same on host-page blocks, for every placement call and lengths that wrap
/// the address space exactly back into the block.
#[test]
fn placement_wrapping_lengths_are_refused_on_host_pages() {
    require_uffd!();
    let mem = GuestMem::anon(16 * 4096);
    let server = Server::new(vec![mem.block("ram")], false);
    let incoming = server.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    let page = vec![0u8; 4096];
    for len in [
        4096u64.wrapping_neg(),
        (16 * 4096u64).wrapping_neg(),
        1 << 63,
    ] {
        let host = mem.addr + 4096;
        assert_eq!(
            incoming.place_pages_zero(host, len).unwrap_err().errno(),
            libc::EINVAL
        );
        // SAFETY: refused before `page` is read.
        let r = unsafe { incoming.place_pages(host, page.as_ptr(), len) };
        assert_eq!(r.unwrap_err().errno(), libc::EINVAL);
        assert!(incoming
            .place_pages_zero(host, len)
            .unwrap_err()
            .message()
            .contains("run past block"));
    }
    assert_eq!(incoming.stats().zero_pages_placed, 0);
    incoming.cleanup().unwrap();
}

/// Item 2: bitmap lookups with a caller's offset never index out of bounds.
#[test]
fn received_bitmap_lookup_outside_the_block_is_false() {
    let mem = GuestMem::anon(4 * 4096);
    let table = BlockTable::new(vec![mem.block("ram")]).unwrap();
    let entry = table.by_name("ram").unwrap();
    assert!(!entry.is_received(0));
    assert!(!entry.is_received(4 * 4096));
    assert!(!entry.is_received(u64::MAX));
}

/// Item 2: a file-backed block whose file offset plus length overflows is refused when the
/// table is built, before any discard computes `fd_offset + start`.
#[test]
fn file_offset_overflow_is_refused() {
    let mem = GuestMem::anon(4 * 4096);
    let mut block: RamBlock = mem.block("file");
    block.backing = Backing::File {
        fd: 0,
        offset: u64::MAX - 4095,
        shared: true,
    };
    let err = BlockTable::new(vec![block.clone()]).unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
    block.backing = Backing::File {
        fd: 0,
        offset: i64::MAX as u64 - 4095,
        shared: true,
    };
    assert!(BlockTable::new(vec![block]).is_err(), "past off_t");
}
