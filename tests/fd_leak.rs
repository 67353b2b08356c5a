//! No descriptor leaks across whole destination cycles. Its own test binary, so that no
//! other test opens descriptors while it counts them.

mod common;

use std::sync::Arc;

use common::*;
use postcopy_ram::IncomingConfig;

fn expected_first_word(name: &str, offset: u64) -> u64 {
    let mut page = vec![0u8; 4096];
    page_pattern(name, offset, &mut page);
    u64::from_le_bytes(page[..8].try_into().unwrap())
}

#[test]
fn no_fd_leak_across_a_whole_cycle() {
    require_uffd!();
    let mem = GuestMem::anon(8 * 4096);
    let before = open_fds();
    for _ in 0..3 {
        let server = Server::new(vec![mem.block("ram")], true);
        let incoming = server.incoming(IncomingConfig::default());
        incoming.init(0).unwrap();
        incoming.enable_notify().unwrap();
        assert_eq!(mem.read_u64(4096), expected_first_word("ram", 4096));
        incoming.cleanup().unwrap();
        drop(incoming);
    }
    // Dropping without cleanup cleans up too.
    let server = Server::new(vec![mem.block("ram")], true);
    let incoming = server.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    drop(incoming);
    let _ = Arc::strong_count(&server);
    assert_eq!(open_fds(), before);
}
