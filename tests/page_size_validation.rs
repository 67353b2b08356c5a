//! Issue 17 item 4: a target page larger than a block's page size was accepted (a debug
//! build panicked in init with "attempt to subtract with overflow", a release build wrapped
//! silently). It is refused with EINVAL when the destination is created, and again when a
//! block table is built (init, enable_notify's re-read, or a caller's own table).

mod common;

use common::*;
use postcopy_ram::destination::block::{host_page_size, BlockTable};
use postcopy_ram::{Incoming, IncomingConfig};

#[test]
fn a_target_page_larger_than_the_host_page_is_refused_at_creation() {
    let host = host_page_size();
    for target in [host * 2, host * 16, 1 << 21, 1 << 40] {
        let server = Server::new(Vec::new(), false);
        let config = IncomingConfig {
            target_page_size: target,
            ..Default::default()
        };
        let err = Incoming::new(server, config)
            .err()
            .unwrap_or_else(|| panic!("target page {target} accepted (host page {host})"));
        assert_eq!(err.errno(), libc::EINVAL, "{err}");
        assert!(err.to_string().contains("host page"), "{err}");
    }
    // The host page itself and smaller powers of two are fine.
    for target in [host, host / 2, 1024] {
        let server = Server::new(Vec::new(), false);
        let config = IncomingConfig {
            target_page_size: target,
            ..Default::default()
        };
        assert!(Incoming::new(server, config).is_ok(), "target {target}");
    }
}

#[test]
fn a_block_table_refuses_a_target_page_larger_than_a_block_page() {
    let mem = GuestMem::anon(16 * 4096);
    let block = mem.block("ram");
    for target in [block.page_size * 2, 1 << 21, 0, 3000] {
        let err = BlockTable::with_target_page(vec![block.clone()], target)
            .expect_err("accepted a target page the block cannot hold");
        assert_eq!(err.errno(), libc::EINVAL, "target {target}: {err}");
    }
    let table = BlockTable::with_target_page(vec![block.clone()], block.page_size).unwrap();
    assert_eq!(table.entries().len(), 1);
}

/// A huge-page block holds target pages larger than the host page; a table with one such
/// block and one host-page block refuses a target page between the two.
#[test]
fn the_smallest_block_page_bounds_the_target_page() {
    let mem = GuestMem::anon(4 << 20);
    let base = (mem.addr + (2 << 20) - 1) & !((2 << 20) - 1);
    let mut huge = mem.block("huge");
    huge.host = base;
    huge.length = 2 << 20;
    huge.page_size = 2 << 20;
    let small = GuestMem::anon(16 * 4096);
    let blocks = vec![huge, small.block("small")];
    let err = BlockTable::with_target_page(blocks.clone(), 8192).unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
    assert!(err.to_string().contains("small"), "names the block: {err}");
    assert!(BlockTable::with_target_page(blocks, 4096).is_ok());
}
