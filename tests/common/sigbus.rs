//! A SIGBUS recorder for tests of poisoned pages: the handler records the signal's
//! address and code, then maps a fresh page over the poisoned one, so that the access
//! completes and the thread can report it.

use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};

/// SIGBUS signals seen since the process started.
pub static COUNT: AtomicU64 = AtomicU64::new(0);
/// The address of the last one.
pub static ADDR: AtomicUsize = AtomicUsize::new(0);
/// The si_code of the last one.
pub static CODE: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    ADDR.store(addr, Ordering::SeqCst);
    CODE.store(code, Ordering::SeqCst);
    COUNT.fetch_add(1, Ordering::SeqCst);
    // SAFETY: replaces one page of the test's own guest memory (async-signal-safe syscall).
    unsafe {
        libc::mmap(
            (addr & !4095) as *mut libc::c_void,
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
}

/// Installs the recorder as the process's SIGBUS handler.
pub fn install() {
    // SAFETY: a zeroed sigaction with our SA_SIGINFO handler; the old action is not needed.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()), 0);
    }
}
