//! Regression tests of the hardening issue (issue 9), one or more per defect, through the
//! safe Rust API. Its own test binary: some tests change vm.nr_hugepages (and put it back),
//! serialised by `HUGE_LOCK`; run it under /tmp/pcr-test.lock like scripts/test.sh does.

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
        eprintln!("SKIP: cannot reserve 2 huge pages");
        return;
    };
    let Some(mem) = GuestMem::huge(2 * HUGE) else {
        eprintln!("SKIP: MAP_HUGETLB failed");
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

/// A whole `POSTCOPY_RAM_DISCARD` command for `name` with `ranges` (bytes), built by hand
/// (the library's encoder refuses empty ranges, as a source should).
fn discard_command(name: &str, ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut payload = vec![0u8, name.len() as u8];
    payload.extend_from_slice(name.as_bytes());
    payload.push(0);
    for (start, length) in ranges {
        payload.extend_from_slice(&start.to_be_bytes());
        payload.extend_from_slice(&length.to_be_bytes());
    }
    let mut cmd = vec![0x08u8, 0, 6];
    cmd.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    cmd.extend_from_slice(&payload);
    cmd
}

/// Item 1: QEMU 2.6-2.9 sources end a block's discards with `(block_length, 0)` when its
/// last page is clean. The destination accepts empty ranges, skips and counts them.
#[test]
fn empty_discard_ranges_from_old_sources_are_skipped_and_counted() {
    require_uffd!();
    let mem = GuestMem::anon(16 * 4096);
    let server = Server::new(vec![mem.block("ram")], false);
    let incoming = server.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    // SAFETY: inside the mapping, not registered.
    unsafe { std::ptr::write_bytes(mem.addr as *mut u8, 0xCD, mem.len) };
    let cmd = discard_command("ram", &[(2 * 4096, 4096), (16 * 4096, 0)]);
    assert_eq!(incoming.handle_discard_command(&cmd).unwrap(), 1);
    assert_eq!(mem.read_u64(2 * 4096), 0, "the real range was dropped");
    assert_eq!(mem.read_u64(3 * 4096), 0xCDCD_CDCD_CDCD_CDCD);
    // The payload form and the single-range call accept them too.
    assert_eq!(incoming.handle_discard_command(&cmd[5..]).unwrap(), 1);
    incoming.discard_range("ram", 16 * 4096, 0).unwrap();
    incoming.discard_range("ram", 0, 0).unwrap();
    // An empty range must still be page-aligned and inside (or at the end of) the block.
    for (start, what) in [(17 * 4096, "past the end"), (100, "misaligned")] {
        let bad = discard_command("ram", &[(2 * 4096, 4096), (start, 0)]);
        assert_eq!(
            incoming.handle_discard_command(&bad).unwrap_err().errno(),
            libc::EINVAL,
            "{what}"
        );
        assert_eq!(
            incoming.discard_range("ram", start, 0).unwrap_err().errno(),
            libc::EINVAL,
            "{what}"
        );
    }
    assert_eq!(incoming.stats().discard_ranges_empty, 4);
    incoming.cleanup().unwrap();
}
