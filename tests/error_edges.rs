//! Issue 17 item 10: error edge cases. A C callback returning INT_MIN overflowed on
//! negation (a debug build's panic reached C as -EFAULT "internal panic"); an `Error`
//! whose errno is 0 (or negative) would reach C as 0, which reads as success.
#![cfg(feature = "capi")]

mod common;

use std::ffi::{c_int, c_void, CString};

use common::GuestMem;
use postcopy_ram::ffi::incoming::*;
use postcopy_ram::ffi::incoming_ops::PcrIncomingOps;
use postcopy_ram::ffi::types::{PcrRamBlock, PcrRamBlockVisitor};
use postcopy_ram::Error;

#[test]
fn an_error_always_has_a_positive_errno() {
    for errno in [0, -1, -libc::EINVAL, i32::MIN, i32::MAX, 4096] {
        assert_eq!(Error::new(errno, "odd").errno(), libc::EIO, "errno {errno}");
    }
    assert_eq!(Error::new(libc::ENOENT, "gone").errno(), libc::ENOENT);
    let zero = std::io::Error::from_raw_os_error(0);
    assert_eq!(
        Error::os(&zero, "a call that failed without errno").errno(),
        libc::EIO
    );
}

struct Vmm {
    name: CString,
    mem: GuestMem,
    foreach_rc: c_int,
    mlock_rc: c_int,
}

unsafe extern "C" fn foreach(
    opaque: *mut c_void,
    visit: PcrRamBlockVisitor,
    ctx: *mut c_void,
) -> c_int {
    // SAFETY: `opaque` is the test's Vmm.
    let vmm = unsafe { &*(opaque as *const Vmm) };
    let b = PcrRamBlock {
        name: vmm.name.as_ptr(),
        host: vmm.mem.addr as *mut c_void,
        offset: 0,
        length: vmm.mem.len as u64,
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
    vmm.foreach_rc
}

unsafe extern "C" fn request(
    _: *mut c_void,
    _: *mut c_void,
    _: *const i8,
    _: u64,
    _: u64,
) -> c_int {
    0
}

unsafe extern "C" fn mlock_cb(opaque: *mut c_void, _lock: bool) -> c_int {
    // SAFETY: `opaque` is the test's Vmm.
    unsafe { &*(opaque as *const Vmm) }.mlock_rc
}

fn ops() -> PcrIncomingOps {
    // SAFETY: every field of PcrIncomingOps is an Option of a function pointer, an integer
    // or a bool: all zeroes is a valid table (no callbacks, defaults).
    let mut ops: PcrIncomingOps = unsafe { std::mem::zeroed() };
    ops.foreach_ram_block = Some(foreach);
    ops.request_page = Some(request);
    ops
}

#[test]
fn int_min_from_a_callback_is_an_error_not_a_panic() {
    require_uffd!();
    for (foreach_rc, mlock_rc) in [(c_int::MIN, 0), (0, c_int::MIN), (c_int::MIN, c_int::MIN)] {
        let vmm = Box::new(Vmm {
            name: CString::new("pc.ram").unwrap(),
            mem: GuestMem::anon(16 * 4096),
            foreach_rc,
            mlock_rc,
        });
        let mut ops = ops();
        ops.mlock = Some(mlock_cb);
        let mis = pcr_incoming_new(&ops, &*vmm as *const Vmm as *mut c_void);
        assert!(!mis.is_null());
        assert_eq!(
            pcr_incoming_init(mis, 0),
            -libc::EIO,
            "foreach_ram_block {foreach_rc}, mlock {mlock_rc}"
        );
        pcr_incoming_free(mis);
    }
}
