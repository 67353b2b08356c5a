//! Through the C ABI: with a byte writer instead of callbacks, the library itself sends
//! QEMU-format page requests (REQ_PAGES_ID / REQ_PAGES), SHUT, and discard commands.
#![cfg(feature = "capi")]

mod common;

use std::ffi::{c_int, c_void, CString};
use std::ptr;
use std::thread;
use std::time::{Duration, Instant};

use common::GuestMem;
use parking_lot::Mutex;
use postcopy_ram::ffi::incoming::*;
use postcopy_ram::ffi::incoming_ops::PcrIncomingOps;
use postcopy_ram::ffi::placement::*;
use postcopy_ram::ffi::source::*;
use postcopy_ram::ffi::types::PcrRamBlock;
use postcopy_ram::wire::{self, CommandMsg, ReturnPathMsg};

struct Vmm {
    blocks: Vec<(CString, usize, u64)>,
    sent: Mutex<Vec<Vec<u8>>>,
}

unsafe extern "C" fn foreach(
    opaque: *mut c_void,
    visit: postcopy_ram::ffi::types::PcrRamBlockVisitor,
    ctx: *mut c_void,
) -> c_int {
    // SAFETY: `opaque` is the test's Vmm.
    let vmm = unsafe { &*(opaque as *const Vmm) };
    for (name, host, len) in &vmm.blocks {
        let b = PcrRamBlock {
            name: name.as_ptr(),
            host: *host as *mut c_void,
            offset: 0,
            length: *len,
            page_size: 4096,
            fd: -1,
            fd_offset: 0,
            shared: false,
            opaque: std::ptr::null_mut(),
        };
        // SAFETY: the library's visitor with a block valid for the call.
        let rc = unsafe { visit(&b, ctx) };
        if rc != 0 {
            return rc;
        }
    }
    0
}

unsafe extern "C" fn write_bytes(opaque: *mut c_void, bytes: *const u8, len: usize) -> c_int {
    // SAFETY: `opaque` is the test's Vmm; `bytes` holds `len` bytes.
    let (vmm, bytes) = unsafe {
        (
            &*(opaque as *const Vmm),
            std::slice::from_raw_parts(bytes, len),
        )
    };
    vmm.sent.lock().push(bytes.to_vec());
    0
}

fn wait_for(vmm: &Vmm, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while vmm.sent.lock().len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} messages sent",
            vmm.sent.lock().len()
        );
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn library_sends_requests_and_shut_on_the_return_path() {
    require_uffd!();
    let a = GuestMem::anon(4 * 4096);
    let b = GuestMem::anon(4 * 4096);
    let vmm = Box::new(Vmm {
        blocks: vec![
            (CString::new("ram-a").unwrap(), a.addr, 4 * 4096),
            (CString::new("ram-b").unwrap(), b.addr, 4 * 4096),
        ],
        sent: Mutex::new(Vec::new()),
    });
    let ops = PcrIncomingOps {
        foreach_ram_block: Some(foreach),
        request_page: None,
        discard_range: None,
        state_changed: None,
        shut: None,
        balloon_inhibit: None,
        mlock: None,
        write_return_path: Some(write_bytes),
        target_page_size: 0,
        enable_mlock: false,
        spin_wait_us: 0,
        fault_thread_started: None,
        fault_thread_stopping: None,
        never_send_shut: false,
        track_remove: false,
        blocktime: false,
    };
    let vmm_ptr = &*vmm as *const Vmm as *mut c_void;
    let mis = pcr_incoming_new(&ops, vmm_ptr);
    assert!(!mis.is_null());
    assert_eq!(pcr_incoming_init(mis, 0), 0);
    assert_eq!(pcr_incoming_enable_notify(mis), 0);
    let page = vec![0x42u8; 4096];
    let mis_addr = mis as usize;
    // Touch a page of a, another of a, one of b, then (after a return-path reset) one of b.
    let touches = [
        (a.addr, 4096usize),
        (a.addr, 2 * 4096),
        (b.addr, 0),
        (b.addr, 3 * 4096),
    ];
    for (i, (base, off)) in touches.iter().copied().enumerate() {
        if i == 3 {
            pcr_incoming_reset_request_block(mis);
        }
        let toucher = thread::spawn(move || {
            // SAFETY: inside a live registered mapping.
            unsafe { ptr::read_volatile((base + off) as *const u8) }
        });
        wait_for(&vmm, i + 1);
        let rc = pcr_place_page(
            mis_addr as *mut _,
            (base + off) as *mut c_void,
            page.as_ptr() as *mut c_void,
            4096,
        );
        assert_eq!(rc, 0);
        assert_eq!(toucher.join().unwrap(), 0x42);
    }
    assert_eq!(pcr_incoming_cleanup(mis), 0);
    pcr_incoming_free(mis);
    let sent = vmm.sent.lock().clone();
    let decoded: Vec<ReturnPathMsg> = sent
        .iter()
        .map(|m| wire::decode_return_path(m).unwrap().0)
        .collect();
    assert_eq!(
        decoded,
        vec![
            ReturnPathMsg::ReqPagesId {
                start: 4096,
                len: 4096,
                id: b"ram-a"
            },
            ReturnPathMsg::ReqPages {
                start: 2 * 4096,
                len: 4096
            },
            ReturnPathMsg::ReqPagesId {
                start: 0,
                len: 4096,
                id: b"ram-b"
            },
            ReturnPathMsg::ReqPagesId {
                start: 3 * 4096,
                len: 4096,
                id: b"ram-b"
            },
            ReturnPathMsg::Shut { failed: 0 },
        ]
    );
    // Byte-exact: REQ_PAGES_ID is be16 3, be16 len 13+5, be64 start, be32 len, u8 5, "ram-a".
    assert_eq!(
        sent[0],
        [
            &[0, 3, 0, 18][..],
            &4096u64.to_be_bytes(),
            &4096u32.to_be_bytes(),
            &[5],
            b"ram-a"
        ]
        .concat()
    );
}

#[test]
fn library_writes_qemu_discard_commands() {
    let vmm = Box::new(Vmm {
        blocks: Vec::new(),
        sent: Mutex::new(Vec::new()),
    });
    let ops = PcrSourceOps {
        send_discard: None,
        write_command: Some(write_bytes),
        target_page_size: 4096,
    };
    let ms = pcr_source_new(&ops, &*vmm as *const Vmm as *mut c_void);
    assert!(!ms.is_null());
    let name = CString::new("pc.ram").unwrap();
    let pds = pcr_discard_send_init(ms, 1000, name.as_ptr());
    for i in 0..13 {
        pcr_discard_send_range(ms, pds, 1000 + 3 * i, 2);
    }
    pcr_discard_send_finish(ms, pds);
    assert_eq!(pcr_source_discard_errors(ms), 0);
    pcr_source_free(ms);
    let sent = vmm.sent.lock().clone();
    assert_eq!(sent.len(), 2, "12 ranges, then 1");
    for (msg, first, count) in [(&sent[0], 0u64, 12usize), (&sent[1], 12, 1)] {
        // Envelope: 0x08, be16 cmd 6, be16 len = 3 + 6 + 16 n.
        assert_eq!(&msg[..5], &[0x08, 0, 6, 0, (3 + 6 + 16 * count) as u8]);
        let (CommandMsg::PostcopyRamDiscard(d), used) = wire::decode_command(msg).unwrap() else {
            panic!("not a discard");
        };
        assert_eq!(used, msg.len());
        assert_eq!(d.name(), b"pc.ram");
        let ranges: Vec<_> = d.ranges().map(|r| (r.start, r.length)).collect();
        let want: Vec<_> = (first..first + count as u64)
            .map(|i| (3 * i * 4096, 2 * 4096))
            .collect();
        assert_eq!(ranges, want);
    }
}
