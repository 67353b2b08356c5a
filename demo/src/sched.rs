//! Scheduling of the demo's threads on a machine with few CPUs. Three tiers: the threads on
//! a page request's path (the destination's fault thread and urgent reader, the source's
//! request server) first, the workload (the "vCPUs") at the default priority, and the two
//! threads that move the bulk of the pages (the source's push, the destination's main
//! stream) last, so that a request never waits for a time slice behind the bulk.
//!
//! Plain nice values, not real-time classes: `SCHED_FIFO` for the request path was tried
//! and made the fault latency worse here (BENCHMARKS.md, issue 12): a waking real-time
//! thread is placed on another CPU than its waker's, so every hop of a request became an
//! inter-processor interrupt, which costs a VM exit on a virtual machine.

/// The nice value of the bulk threads (lowering needs no privilege).
pub const BULK_NICE: i32 = 10;

/// The nice value of the request path's threads, when the process may raise priority
/// (`CAP_SYS_NICE`, or RLIMIT_NICE); otherwise they stay at the default.
pub const REQUEST_PATH_NICE: i32 = -10;

fn set_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid has no preconditions; setpriority on the calling thread's id only
    // changes its nice value.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Lowers the calling thread (a bulk thread) to nice [`BULK_NICE`]. Threads it starts
/// afterwards inherit that: start the workload's threads before.
pub fn lower_bulk_priority() {
    if let Err(e) = set_nice(BULK_NICE) {
        log::debug!("setpriority(nice {BULK_NICE}): {e}");
    }
}

/// Raises the calling thread (on the request path) to nice [`REQUEST_PATH_NICE`] when
/// permitted; quietly stays at the default otherwise.
pub fn raise_request_path() {
    if let Err(e) = set_nice(REQUEST_PATH_NICE) {
        log::debug!(
            "setpriority(nice {REQUEST_PATH_NICE}): {e} (request path at the default priority)"
        );
    }
}
