//! The destination side on real userfaultfd, through the safe Rust API.

mod common;

use std::thread;

use common::*;
use postcopy_ram::{IncomingConfig, Placement, State};

fn expected_page(name: &str, offset: u64) -> Vec<u8> {
    let mut page = vec![0u8; 4096];
    page_pattern(name, offset, &mut page);
    page
}

#[test]
fn faulting_threads_read_exactly_the_served_pages() {
    require_uffd!();
    let a = GuestMem::anon(64 * 4096);
    let b = GuestMem::anon(32 * 4096);
    let server = Server::new(vec![a.block("ram-a"), b.block("ram-b")], true);
    let incoming = server.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    assert_eq!(incoming.state(), State::Advise);
    incoming.enable_notify().unwrap();
    assert_eq!(incoming.state(), State::Listening);
    incoming.set_state(State::Running).unwrap();

    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (aa, ba) = (a.addr, b.addr);
            thread::spawn(move || {
                for i in 0..64usize {
                    let (base, name, pages) = if (i + t) % 3 == 0 {
                        (ba, "ram-b", 32)
                    } else {
                        (aa, "ram-a", 64)
                    };
                    let page = (i * 7 + t * 13) % pages;
                    let off = page * 4096;
                    // SAFETY: inside a live mapping; the fault is served by the library.
                    let got =
                        unsafe { std::slice::from_raw_parts((base + off) as *const u8, 4096) };
                    assert_eq!(
                        got,
                        &expected_page(name, off as u64)[..],
                        "{name} page {page}"
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    // Cleanup joins the fault thread: the counters are final after it.
    incoming.cleanup().unwrap();
    assert_eq!(incoming.state(), State::End);
    let stats = incoming.stats();
    let requests = server.requests.lock().clone();
    assert_eq!(stats.requests as usize, requests.len());
    assert_eq!(stats.pages_placed, stats.requests, "{stats:?}");
    assert!(stats.requests > 0 && stats.requests <= 96, "{stats:?}");
    assert_eq!(
        stats.faults,
        stats.requests + stats.duplicate_faults + stats.late_faults,
        "{stats:?}"
    );
    assert!(
        requests[0].name.is_some(),
        "the first request names its block"
    );
    for r in &requests {
        assert_eq!(r.length, 4096);
        assert_eq!(r.offset % 4096, 0);
    }
}

#[test]
fn zero_pages_discards_and_eexist() {
    require_uffd!();
    let mem = GuestMem::anon(16 * 4096);
    // Data written before init must be gone after it.
    // SAFETY: inside the mapping, not yet registered.
    unsafe { std::ptr::write_bytes(mem.addr as *mut u8, 0xAB, mem.len) };
    let server = Server::new(vec![mem.block("pc.ram")], false);
    let incoming = server.incoming(IncomingConfig::default());
    incoming.init(16).unwrap();
    assert_eq!(mem.read_u64(0), 0, "init discarded the block");
    // Precopy writes, then a discard of pages 2..4.
    // SAFETY: inside the mapping, not yet registered.
    unsafe { std::ptr::write_bytes(mem.addr as *mut u8, 0xCD, mem.len) };
    incoming.prepare_discard().unwrap();
    assert_eq!(incoming.state(), State::Discard);
    incoming
        .discard_range("pc.ram", 2 * 4096, 2 * 4096)
        .unwrap();
    assert!(
        incoming.discard_range("pc.ram", 100, 4096).is_err(),
        "misaligned"
    );
    assert!(
        incoming
            .discard_range("pc.ram", 15 * 4096, 2 * 4096)
            .is_err(),
        "past the end"
    );
    assert!(
        incoming.discard_range("nope", 0, 4096).is_err(),
        "unknown block"
    );
    assert_eq!(mem.read_u64(2 * 4096), 0);
    assert_eq!(mem.read_u64(3 * 4096), 0);
    assert_eq!(mem.read_u64(4 * 4096), 0xCDCD_CDCD_CDCD_CDCD);
    // Re-discard what the reads above populated, then go live.
    incoming
        .discard_range("pc.ram", 2 * 4096, 2 * 4096)
        .unwrap();
    incoming.enable_notify().unwrap();
    assert_eq!(
        incoming.place_page_zero(mem.addr + 2 * 4096, 4096).unwrap(),
        Placement::Placed
    );
    assert_eq!(mem.read_u64(2 * 4096), 0);
    let data = vec![0x5Au8; 4096];
    // SAFETY: `data` is one page.
    let r = unsafe { incoming.place_page(mem.addr + 3 * 4096, data.as_ptr(), 4096) }.unwrap();
    assert_eq!(r, Placement::Placed);
    assert_eq!(mem.read_u64(3 * 4096), 0x5A5A_5A5A_5A5A_5A5A);
    // SAFETY: as above.
    let again = unsafe { incoming.place_page(mem.addr + 3 * 4096, data.as_ptr(), 4096) }.unwrap();
    assert_eq!(again, Placement::AlreadyPresent);
    // Precopied pages are present too.
    // SAFETY: as above.
    let present = unsafe { incoming.place_page(mem.addr + 4 * 4096, data.as_ptr(), 4096) }.unwrap();
    assert_eq!(present, Placement::AlreadyPresent);
    let stats = incoming.stats();
    assert_eq!(
        (
            stats.pages_placed,
            stats.zero_pages_placed,
            stats.already_present
        ),
        (1, 1, 2)
    );
    incoming.cleanup().unwrap();
}

#[test]
fn misuse_is_an_error_not_a_crash() {
    require_uffd!();
    let mem = GuestMem::anon(8 * 4096);
    let server = Server::new(vec![mem.block("ram")], false);
    let incoming = server.incoming(IncomingConfig::default());
    let page = vec![0u8; 4096];
    // SAFETY: `page` is one page.
    let before_enable = unsafe { incoming.place_page(mem.addr, page.as_ptr(), 4096) };
    assert_eq!(before_enable.unwrap_err().errno(), libc::EINVAL);
    assert_eq!(
        incoming.cleanup().unwrap_err().errno(),
        libc::EINVAL,
        "cleanup without init"
    );
    assert!(incoming.enable_notify().is_err(), "enable before init");
    incoming.init(0).unwrap();
    assert_eq!(incoming.init(0).unwrap_err().errno(), libc::EBUSY);
    incoming.enable_notify().unwrap();
    assert_eq!(
        incoming.enable_notify().unwrap_err().errno(),
        libc::EBUSY,
        "enable twice"
    );
    // SAFETY: `page` is one page in each call.
    unsafe {
        assert!(
            incoming
                .place_page(mem.addr + 100, page.as_ptr(), 4096)
                .is_err(),
            "misaligned"
        );
        assert!(
            incoming
                .place_page(mem.addr + 8 * 4096, page.as_ptr(), 4096)
                .is_err(),
            "outside"
        );
        assert!(
            incoming.place_page(mem.addr, page.as_ptr(), 8192).is_err(),
            "wrong page size"
        );
        assert!(
            incoming
                .place_page(mem.addr, std::ptr::null(), 4096)
                .is_err(),
            "NULL source"
        );
    }
    assert!(
        incoming.set_state(State::Advise).is_err(),
        "LISTENING -> ADVISE refused"
    );
    assert_eq!(incoming.state(), State::Listening);
    incoming.cleanup().unwrap();
    assert_eq!(
        incoming.cleanup().unwrap_err().errno(),
        libc::EINVAL,
        "cleanup twice"
    );
}

#[test]
fn refuses_block_length_not_multiple_of_page() {
    require_uffd!();
    let mem = GuestMem::anon(3 * 4096);
    let mut block = mem.block("odd");
    block.length = 4096 + 100;
    let server = Server::new(vec![block], false);
    let incoming = server.incoming(IncomingConfig::default());
    let err = incoming.init(0).unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
    assert!(err.message().contains("multiple"), "{err}");
}

#[test]
fn request_failure_is_reported_and_cleanup_does_not_hang() {
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
    let toucher = thread::spawn(move || {
        // SAFETY: inside the mapping; blocks until placed or unregistered.
        unsafe { std::ptr::read_volatile(addr as *const u64) }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while incoming.stats().request_errors == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the failed request was never reported"
        );
        thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(incoming.stats().last_request_errno, libc::EPIPE);
    // The blocked thread is woken by cleanup's unregister and reads a zero page.
    incoming.cleanup().unwrap();
    assert_eq!(toucher.join().unwrap(), 0);
}

#[test]
fn bad_discard_command_is_rejected_whole() {
    require_uffd!();
    use postcopy_ram::wire::encode_discard_pairs;
    let mem = GuestMem::anon(16 * 4096);
    let server = Server::new(vec![mem.block("pc.ram")], false);
    let incoming = server.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    // Precopy fills every page.
    // SAFETY: inside the mapping, not registered.
    unsafe { std::ptr::write_bytes(mem.addr as *mut u8, 0x77, mem.len) };
    let mut buf = [0u8; 512];
    let cases: [(&[u8], &[u64], &[u64]); 4] = [
        (b"pc.ram", &[0, 4096 + 1], &[4096, 4096]), // second range misaligned
        (b"pc.ram", &[0, 15 * 4096], &[4096, 8192]), // second range past the end
        (b"nope", &[0], &[4096]),                   // unknown block
        (b"pc.ram", &[0, 4096], &[4096, 4095]),     // length not a page multiple
    ];
    for (name, starts, lengths) in cases {
        let n = encode_discard_pairs(&mut buf, name, starts, lengths).unwrap();
        let err = incoming.handle_discard_command(&buf[..n]).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL, "{err}");
        assert_eq!(
            mem.read_u64(0),
            0x7777_7777_7777_7777,
            "no page touched by a rejected command: {err}"
        );
        assert_eq!(
            incoming.state(),
            State::Advise,
            "a rejected command changes no state"
        );
    }
    // Truncated bytes are a decode error.
    let n = encode_discard_pairs(&mut buf, b"pc.ram", &[0], &[4096]).unwrap();
    assert!(incoming.handle_discard_command(&buf[..n - 3]).is_err());
    // A good command: the first discard moves ADVISE -> DISCARD and drops exactly its ranges.
    let n = encode_discard_pairs(&mut buf, b"pc.ram", &[0, 8 * 4096], &[4096, 2 * 4096]).unwrap();
    assert_eq!(incoming.handle_discard_command(&buf[..n]).unwrap(), 2);
    assert_eq!(incoming.state(), State::Discard);
    assert_eq!(mem.read_u64(0), 0);
    assert_eq!(mem.read_u64(4096), 0x7777_7777_7777_7777);
    assert_eq!(mem.read_u64(8 * 4096), 0);
    assert_eq!(mem.read_u64(9 * 4096), 0);
    assert_eq!(mem.read_u64(10 * 4096), 0x7777_7777_7777_7777);
    // After LISTEN, discards are refused.
    incoming.enable_notify().unwrap();
    assert!(incoming.handle_discard_command(&buf[..n]).is_err());
    incoming.cleanup().unwrap();
}

#[test]
fn cleanup_from_the_fault_thread_is_refused() {
    require_uffd!();
    use parking_lot::Mutex;
    use postcopy_ram::{BlockName, Incoming, IncomingHooks, RamBlock};
    use std::sync::{Arc, Weak};

    struct Reentrant {
        block: RamBlock,
        me: Mutex<Weak<Incoming>>,
        errno: Mutex<Option<i32>>,
    }
    impl IncomingHooks for Reentrant {
        fn ram_blocks(&self) -> postcopy_ram::Result<Vec<RamBlock>> {
            Ok(vec![self.block.clone()])
        }
        fn request_page(&self, _: Option<&BlockName>, offset: u64, len: u64) -> Result<(), i32> {
            let incoming = self.me.lock().upgrade().unwrap();
            *self.errno.lock() = incoming.cleanup().err().map(|e| e.errno());
            let page = vec![1u8; len as usize];
            // SAFETY: one page.
            unsafe { incoming.place_page(self.block.host + offset as usize, page.as_ptr(), len) }
                .map(|_| ())
                .map_err(|e| e.errno())
        }
    }
    let mem = GuestMem::anon(4 * 4096);
    let hooks = Arc::new(Reentrant {
        block: mem.block("ram"),
        me: Mutex::new(Weak::new()),
        errno: Mutex::new(None),
    });
    let incoming = Arc::new(Incoming::new(hooks.clone(), IncomingConfig::default()).unwrap());
    *hooks.me.lock() = Arc::downgrade(&incoming);
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    assert_eq!(mem.read_u64(0), 0x0101_0101_0101_0101);
    assert_eq!(*hooks.errno.lock(), Some(libc::EDEADLK));
    incoming.cleanup().unwrap();
}

#[test]
fn runs_with_a_present_page_in_the_middle_count_exactly() {
    require_uffd!();
    let mem = GuestMem::anon(8 * 4096);
    let server = Server::new(vec![mem.block("pc.ram")], false);
    let incoming = server.incoming(IncomingConfig::default());
    incoming.init(0).unwrap();
    incoming.enable_notify().unwrap();
    let data = vec![7u8; 3 * 4096];
    // SAFETY: `data` holds the bytes of each call.
    unsafe {
        assert_eq!(
            incoming
                .place_page(mem.addr + 4096, data.as_ptr(), 4096)
                .unwrap(),
            Placement::Placed
        );
        let run = incoming
            .place_pages(mem.addr, data.as_ptr(), 3 * 4096)
            .unwrap();
        assert_eq!((run.placed, run.already_present), (2, 1));
    }
    assert_eq!(
        incoming.place_page_zero(mem.addr + 5 * 4096, 4096).unwrap(),
        Placement::Placed
    );
    let run = incoming
        .place_pages_zero(mem.addr + 4 * 4096, 3 * 4096)
        .unwrap();
    assert_eq!((run.placed, run.already_present), (2, 1));
    // A run entirely present.
    let run = incoming
        .place_pages_zero(mem.addr + 4 * 4096, 3 * 4096)
        .unwrap();
    assert_eq!((run.placed, run.already_present), (0, 3));
    incoming.cleanup().unwrap();
    let s = incoming.stats();
    assert_eq!(
        (s.pages_placed, s.zero_pages_placed, s.already_present),
        (3, 3, 5)
    );
    assert_eq!(mem.read_u64(2 * 4096), 0x0707_0707_0707_0707);
    assert_eq!(mem.read_u64(6 * 4096), 0);
}
