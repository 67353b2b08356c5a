//! SIGBUS after a postcopy abort: the pages that never arrived are poisoned
//! (UFFDIO_POISON), and a thread that touches one gets SIGBUS instead of a zero page.
//!
//! - On a KVM vCPU thread ([`mark_vcpu_thread`]) KVM raises it inside KVM_RUN, which then
//!   returns EINTR: the handler records the address for [`take_vcpu_failure`], and the run
//!   loop stops the guest with a memory-failure error (QEMU would inject a machine check).
//! - On any other thread (the demo's workload threads) the handler counts it, remembers the
//!   first address, and parks the thread for good: the destination reports the loss and
//!   exits; the thread never sees the page.
//!
//! The handler only stores to atomics and thread-locals and sleeps: async-signal-safe.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// `si_code` of an action-required memory failure.
pub const BUS_MCEERR_AR: i32 = 4;

/// SIGBUS taken by threads other than vCPUs (parked).
pub static PARKED_THREADS: AtomicU64 = AtomicU64::new(0);
/// Address of the first such SIGBUS.
pub static FIRST_ADDR: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static IS_VCPU: Cell<bool> = const { Cell::new(false) };
    static FAILURE_ADDR: Cell<usize> = const { Cell::new(0) };
    static FAILURE_CODE: Cell<i32> = const { Cell::new(0) };
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    if IS_VCPU.try_with(|v| v.get()).unwrap_or(false) {
        let _ = FAILURE_ADDR.try_with(|a| a.set(addr.max(1)));
        let _ = FAILURE_CODE.try_with(|c| c.set(code));
        return;
    }
    let _ = FIRST_ADDR.compare_exchange(0, addr.max(1), Ordering::SeqCst, Ordering::SeqCst);
    PARKED_THREADS.fetch_add(1, Ordering::SeqCst);
    loop {
        // SAFETY: sleep is async-signal-safe; the thread stays here until the process exits.
        unsafe { libc::sleep(3600) };
    }
}

/// Installs the handler (once per process).
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with an SA_SIGINFO handler that is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
    });
}

/// Marks the calling thread as a vCPU thread (see the module docs).
pub fn mark_vcpu_thread() {
    install();
    IS_VCPU.with(|v| v.set(true));
}

/// The memory failure this vCPU thread took since the last call: (host address, si_code).
pub fn take_vcpu_failure() -> Option<(usize, i32)> {
    let addr = FAILURE_ADDR.with(|a| a.replace(0));
    (addr != 0).then(|| (addr, FAILURE_CODE.with(|c| c.get())))
}
