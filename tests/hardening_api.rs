//! Regression tests of issue 9 items 16 and 5 (ram_pages, the request counters, and every
//! QEMU 10.x message kind with its length rule), through the safe Rust API.

mod common;

use common::*;
use postcopy_ram::IncomingConfig;

/// Item 16: `ram_pages` was documented as cross-checked, but a mismatch only warned.
/// Decided: it is checked. Every block must end (its RAM offset plus length) within
/// `ram_pages` target pages (QEMU passes `last_ram_offset() >> TARGET_PAGE_BITS`, which
/// may be larger: gaps between blocks, resizable blocks); otherwise -EINVAL. 0 skips it.
#[test]
fn ram_pages_is_checked_against_the_blocks() {
    require_uffd!();
    let a = GuestMem::anon(16 * 4096);
    let b = GuestMem::anon(8 * 4096);
    let mut block_b = b.block("b");
    block_b.offset = 32 * 4096; // a gap after block a, as QEMU's ram_addr space has
    let server = Server::new(vec![a.block("a"), block_b], false);
    let incoming = server.incoming(IncomingConfig::default());
    for too_small in [1, 24, 39] {
        let err = incoming.init(too_small).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL, "{too_small}: {err}");
        assert_eq!(incoming.state(), postcopy_ram::State::None);
    }
    incoming.init(40).unwrap();
    incoming.cleanup().unwrap();
    incoming.init(1 << 20).unwrap();
    incoming.cleanup().unwrap();
    incoming.init(0).unwrap();
    incoming.cleanup().unwrap();
}

/// Item 16: `requests` counts the requests the callback accepted; a failed request is
/// counted in `request_errors` only (the docs said `requests` included failed ones).
#[test]
fn failed_requests_are_counted_apart_from_requests() {
    require_uffd!();
    let mem = GuestMem::anon(4 * 4096);
    let server = Server::new(vec![mem.block("ram")], true);
    server
        .fail_requests
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let incoming = server.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    let addr = mem.addr;
    let toucher = std::thread::spawn(move || {
        // SAFETY: inside the mapping; blocks until placed.
        unsafe { std::ptr::read_volatile((addr + 4096) as *const u64) }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while incoming.stats().request_errors == 0 {
        assert!(std::time::Instant::now() < deadline, "no failed request");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // The failed page stays pending and requests pause (issue 10): the re-send asks again.
    assert_eq!(incoming.resend_pending().unwrap(), 1);
    toucher.join().unwrap();
    // A request that succeeds, on another page.
    // SAFETY: inside the mapping; served by the page server.
    let _served = unsafe { std::ptr::read_volatile((mem.addr + 2 * 4096) as *const u64) };
    incoming.cleanup().unwrap();
    let s = incoming.stats();
    assert_eq!((s.request_errors, s.resent), (1, 1), "{s:?}");
    assert_eq!(
        s.requests + s.resent,
        server.requests.lock().len() as u64,
        "requests (and re-sends) count accepted ones only: {s:?}"
    );
    assert_eq!(
        s.faults,
        s.requests
            + s.request_errors
            + s.duplicate_faults
            + s.late_faults
            + s.faults_outside
            + s.paused_faults,
        "{s:?}"
    );
}

/// Item 5: every command and return-path type of QEMU 10.x (migration/savevm.c
/// `mig_cmd_args`, migration/migration.c `rp_cmd_args`) with its payload length rule, as
/// (number, QEMU name, lengths accepted, a length refused). ENABLE_COLO (8),
/// SWITCHOVER_START (11) and SWITCHOVER_ACK (7) were refused as unknown, so a stream
/// reader could not even learn their length.
#[test]
fn every_qemu_10_message_kind_has_its_length_rule() {
    use postcopy_ram::wire::{
        decode_command, decode_command_header, decode_return_path, decode_return_path_header,
        encode_command, encode_return_path, CommandMsg, ReturnPathMsg, WireError,
    };
    let commands: &[(u16, &str, &[usize], usize)] = &[
        (1, "OPEN_RETURN_PATH", &[0], 1),
        (2, "PING", &[4], 0),
        (3, "POSTCOPY_ADVISE", &[0, 16], 8),
        (4, "POSTCOPY_LISTEN", &[0], 1),
        (5, "POSTCOPY_RUN", &[0], 1),
        (6, "POSTCOPY_RAM_DISCARD", &[20, 36, 65535], 19),
        (7, "PACKAGED", &[4], 5),
        (8, "ENABLE_COLO", &[0], 1),
        (9, "POSTCOPY_RESUME", &[0], 1),
        (10, "RECV_BITMAP", &[1, 256], 257),
        (11, "SWITCHOVER_START", &[0], 1),
    ];
    for &(cmd, name, good, bad) in commands {
        for &len in good {
            let mut h = vec![0x08u8];
            h.extend_from_slice(&cmd.to_be_bytes());
            h.extend_from_slice(&(len as u16).to_be_bytes());
            let header = decode_command_header(&h).unwrap_or_else(|e| panic!("{name} {len}: {e}"));
            assert_eq!(header.cmd.name(), name);
            assert_eq!(header.total_len(), 5 + len, "{name}");
        }
        let mut h = vec![0x08u8];
        h.extend_from_slice(&cmd.to_be_bytes());
        h.extend_from_slice(&(bad as u16).to_be_bytes());
        assert!(
            matches!(
                decode_command_header(&h),
                Err(WireError::LengthMismatch { .. })
            ),
            "{name} with {bad} bytes"
        );
    }
    for unknown in [0u16, 12, 0xffff] {
        let h = [0x08, (unknown >> 8) as u8, unknown as u8, 0, 0];
        assert_eq!(
            decode_command_header(&h),
            Err(WireError::UnknownCommand(unknown))
        );
    }
    // The new ones decode and encode whole.
    let mut buf = [0u8; 16];
    for (msg, bytes) in [
        (CommandMsg::EnableColo, [0x08, 0, 8, 0, 0]),
        (CommandMsg::SwitchoverStart, [0x08, 0, 11, 0, 0]),
    ] {
        assert_eq!(decode_command(&bytes).unwrap(), (msg, 5));
        assert_eq!(encode_command(&mut buf, &msg).unwrap(), 5);
        assert_eq!(buf[..5], bytes);
    }

    let rp_types: &[(u16, &str, &[usize], usize)] = &[
        (1, "SHUT", &[4], 0),
        (2, "PONG", &[4], 5),
        (3, "REQ_PAGES_ID", &[13, 268], 12),
        (4, "REQ_PAGES", &[12], 13),
        (5, "RECV_BITMAP", &[1, 256], 257),
        (6, "RESUME_ACK", &[4], 3),
        (7, "SWITCHOVER_ACK", &[0], 1),
    ];
    for &(ty, name, good, bad) in rp_types {
        for &len in good {
            let mut h = ty.to_be_bytes().to_vec();
            h.extend_from_slice(&(len as u16).to_be_bytes());
            let header =
                decode_return_path_header(&h).unwrap_or_else(|e| panic!("{name} {len}: {e}"));
            assert_eq!(header.rp_type.name(), name);
            assert_eq!(header.total_len(), 4 + len, "{name}");
        }
        let mut h = ty.to_be_bytes().to_vec();
        h.extend_from_slice(&(bad as u16).to_be_bytes());
        assert!(
            matches!(
                decode_return_path_header(&h),
                Err(WireError::LengthMismatch { .. })
            ),
            "{name} with {bad} bytes"
        );
    }
    for unknown in [0u16, 8, 0xffff] {
        let h = [(unknown >> 8) as u8, unknown as u8, 0, 0];
        assert_eq!(
            decode_return_path_header(&h),
            Err(WireError::UnknownReturnPathType(unknown))
        );
    }
    let ack = [0u8, 7, 0, 0];
    assert_eq!(
        decode_return_path(&ack).unwrap(),
        (ReturnPathMsg::SwitchoverAck, 4)
    );
    assert_eq!(
        encode_return_path(&mut buf, &ReturnPathMsg::SwitchoverAck).unwrap(),
        4
    );
    assert_eq!(buf[..4], ack);
}
