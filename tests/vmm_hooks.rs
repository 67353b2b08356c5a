//! Issue 10 point 6: what an embedding VMM needs from the library's thread and lifetime.

mod common;

use std::sync::Arc;

use common::hooks::TestHooks;
use common::*;
use postcopy_ram::IncomingConfig;

#[test]
fn fault_thread_callbacks_run_on_it_and_blocks_carry_their_opaque() {
    require_uffd!();
    let a = GuestMem::anon(4 * 4096);
    let b = GuestMem::anon(4 * 4096);
    let mut ba = a.block("ram-a");
    ba.opaque = 0xA11CE;
    let mut bb = b.block("ram-b");
    bb.opaque = 0xB0B;
    let hooks = TestHooks::serving(vec![ba, bb]);
    let incoming = hooks.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    assert!(hooks.started.lock().is_empty());
    incoming.enable_notify().unwrap();
    assert!(check_page(a.addr, "ram-a", 0));
    assert!(check_page(a.addr + 4096, "ram-a", 4096));
    assert!(check_page(b.addr, "ram-b", 0));
    wait_for(5, "three requests", || hooks.requests().len() == 3);
    let reqs = hooks.requests();
    assert_eq!(
        reqs.iter()
            .map(|r| (r.named.clone(), r.opaque))
            .collect::<Vec<_>>(),
        vec![
            (Some("ram-a".to_owned()), 0xA11CE),
            (None, 0xA11CE),
            (Some("ram-b".to_owned()), 0xB0B)
        ],
        "the opaque comes with every request, named or not"
    );
    incoming.cleanup().unwrap();
    assert_eq!(*hooks.started.lock(), vec!["postcopy/fault".to_owned()]);
    assert_eq!(*hooks.stopping.lock(), vec!["postcopy/fault".to_owned()]);
}

#[test]
fn never_send_shut_leaves_shut_to_the_host() {
    require_uffd!();
    let mem = GuestMem::anon(4 * 4096);
    for never in [false, true] {
        let hooks = TestHooks::new(vec![mem.block("ram")], Arc::new(|_, _| Err(libc::EIO)));
        let incoming = hooks.incoming(IncomingConfig {
            never_send_shut: never,
            ..Default::default()
        });
        incoming.init(0).unwrap();
        incoming.enable_notify().unwrap();
        incoming.cleanup().unwrap();
        let want: Vec<bool> = if never { vec![] } else { vec![false] };
        assert_eq!(*hooks.shuts.lock(), want, "never_send_shut {never}");
    }
}

#[test]
fn enable_notify_reads_the_blocks_again() {
    require_uffd!();
    // The block is 4 pages at ADVISE and grows to 8 before LISTEN (QEMU resizes RAM while
    // syncing blocks with the source).
    let mem = GuestMem::anon(8 * 4096);
    let mut small = mem.block("ram");
    small.length = 4 * 4096;
    let hooks = TestHooks::serving(vec![small]);
    let incoming = hooks.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.mark_received(mem.addr, 4096).unwrap();
    // Precopy wrote the grown tail already: it must be dropped so that it faults.
    // SAFETY: inside the mapping, not registered yet.
    unsafe { std::ptr::write_bytes((mem.addr + 6 * 4096) as *mut u8, 0xEE, 4096) };
    *hooks.blocks.lock() = vec![mem.block("ram")];
    incoming.enable_notify().unwrap();
    assert_eq!(incoming.recv_bitmap_len("ram").unwrap(), 8 + 8 + 8);
    assert!(
        check_page(mem.addr + 6 * 4096, "ram", 6 * 4096),
        "the grown tail is served"
    );
    wait_for(5, "one request", || hooks.requests().len() == 1);
    assert_eq!(hooks.requests()[0].offset, 6 * 4096);
    // The mark made at ADVISE survived the re-read.
    let mut buf = vec![0u8; 24];
    incoming.encode_recv_bitmap("ram", &mut buf).unwrap();
    assert_eq!(buf[8], 0b0100_0001, "pages 0 (marked) and 6 (placed)");
    incoming.cleanup().unwrap();
}
