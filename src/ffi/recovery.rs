//! C exports of issue 10: never strand a vCPU. Pending requests and their re-send, the
//! received bitmap of a recovery, abort with poison, blocktime.

use std::ffi::{c_char, c_int, c_void};

use super::args::{try_out, try_slice_mut, try_str};
use super::incoming::{incoming, PcrIncoming};
use super::ret::ffi_call;
use crate::destination::blocktime::{LATENCY_BUCKETS, MAX_VCPUS};
use crate::destination::fault_thread::FaultThreadFailure;
use crate::error::{Error, Result};

/// Largest vCPU index + 1 that `pcr_incoming_register_vcpu` accepts.
pub const PCR_MAX_VCPUS: u32 = 1024;
const _: () = assert!(PCR_MAX_VCPUS as usize == MAX_VCPUS);

/// Buckets of `PcrBlocktime.latency_buckets`: bucket i counts latencies in
/// [2^i, 2^(i+1)) nanoseconds (bucket 0 also counts 0).
pub const PCR_LATENCY_BUCKETS: usize = 40;
const _: () = assert!(PCR_LATENCY_BUCKETS == LATENCY_BUCKETS);

/// What `pcr_incoming_abort` did.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct PcrAbortResult {
    /// Host pages that never arrived and were given up.
    pub pages_lost: u64,
    /// Their bytes.
    pub bytes_lost: u64,
    /// true: every lost page was poisoned (UFFDIO_POISON, Linux 6.6): any access raises
    /// SIGBUS, and a KVM vCPU gets a memory-failure SIGBUS (BUS_MCEERR_AR) inside KVM_RUN.
    /// false: the kernel lacks UFFDIO_POISON and the pages were filled with zeros, which is
    /// silent data loss for the guest (logged as such); or nothing was lost.
    pub poisoned: bool,
}

/// Blocktime and fault latency of a destination (`pcr_incoming_get_blocktime`), with QEMU
/// 7.2's definitions.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PcrBlocktime {
    /// Whether accounting is on (`PcrIncomingOps.blocktime`).
    pub enabled: bool,
    /// Whether the kernel reports faulting thread ids (UFFD_FEATURE_THREAD_ID, Linux 4.14),
    /// known from `pcr_incoming_init` on (a migration that ends before LISTEN reports a zero
    /// blocktime, as QEMU 7.2 does). Without them no fault is attributed to a vCPU:
    /// `total_ms` and the per-vCPU figures stay 0 (QEMU then reports no blocktime); the
    /// latency figures still count.
    pub thread_id_available: bool,
    /// Time during which all registered vCPUs were blocked at once, in ms (QEMU's
    /// postcopy-blocktime).
    pub total_ms: u32,
    /// Registered vCPUs.
    pub vcpus: u32,
    /// Faults whose latency was measured: from the read of the fault message to the
    /// placement of its host page, for every faulting thread, vCPU or not.
    pub faults_timed: u64,
    /// Median latency in ns: the upper bound of its log2 bucket (at most 2x high), capped
    /// at the maximum.
    pub latency_p50_ns: u64,
    /// 99th percentile latency in ns, as `latency_p50_ns`.
    pub latency_p99_ns: u64,
    /// Largest latency in ns (exact).
    pub latency_max_ns: u64,
    /// The histogram: bucket i counts latencies in [2^i, 2^(i+1)) ns.
    pub latency_buckets: [u64; PCR_LATENCY_BUCKETS],
}

/// Pauses page requests (`paused` true): faults are still read and their pages recorded
/// pending, but `request_page` is not called (QEMU: the return path went away). From a
/// host thread it returns once no `request_page` call is running; from `request_page`
/// itself it only sets the flag. `paused` false resumes: the same as
/// `pcr_incoming_resend_pending`, whose count it returns. Returns 0 / the count, or a
/// negative errno (-EINVAL outside LISTENING..cleanup).
#[no_mangle]
pub extern "C" fn pcr_incoming_pause_requests(mis: *mut PcrIncoming, paused: bool) -> c_int {
    ffi_call!(|| -> Result<usize> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        let n = unsafe { incoming(mis) }?.pause_requests(paused)?;
        Ok(n as usize)
    })
}

/// Resumes page requests once the channel to the source is back: the fault thread re-sends
/// one request for every pending page (requested, or recorded while paused, and not yet
/// received), the first one naming its block, and this call waits until it has. Safe
/// against the fault thread's own requests; callable from any host thread, not from a
/// callback on the fault thread (-EDEADLK). Returns the number of requests re-sent, or a
/// negative errno: -EINVAL outside LISTENING..cleanup, -EPIPE after `pcr_incoming_abort`,
/// or the error of a re-send that failed (requests are paused again, the rest stay
/// pending).
#[no_mangle]
pub extern "C" fn pcr_incoming_resend_pending(mis: *mut PcrIncoming) -> c_int {
    ffi_call!(|| -> Result<usize> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        let n = unsafe { incoming(mis) }?.resend_pending()?;
        Ok(n as usize)
    })
}

/// Marks `[host, host + length)` received: pages the host loaded itself (precopy pages
/// copied before LISTEN), so that the received bitmap is exact and the fault thread never
/// requests them. `host` and `length` are whole target pages inside one block. From
/// `pcr_incoming_init` until cleanup. Returns 0 or a negative errno.
#[no_mangle]
pub extern "C" fn pcr_incoming_mark_received(
    mis: *mut PcrIncoming,
    host: *const c_void,
    length: u64,
) -> c_int {
    ffi_call!(|| -> Result<()> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        unsafe { incoming(mis) }?.mark_received(host as usize, length)
    })
}

/// Bytes `pcr_incoming_encode_recv_bitmap` writes for block `block_name`, or a negative
/// errno. From init until cleanup.
#[no_mangle]
pub extern "C" fn pcr_incoming_recv_bitmap_len(
    mis: *const PcrIncoming,
    block_name: *const c_char,
) -> isize {
    ffi_call!(|| -> Result<usize> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        let incoming = unsafe { incoming(mis) }?;
        // SAFETY: `block_name` is NULL or a NUL-terminated string (the header's contract).
        incoming.recv_bitmap_len(unsafe { try_str("block name", block_name) }?)
    })
}

/// Writes block `block_name`'s received bitmap in QEMU's RECV_BITMAP format (the bytes
/// that follow the return-path RECV_BITMAP header: be64 size, the little-endian bitmap of
/// target pages, the be64 end mark 0x0123456789abcdef) into `buf` of `buflen` bytes, for a
/// destination answering its source's recovery. A bit is set for a target page placed
/// through the library or marked with `pcr_incoming_mark_received`, and cleared by a
/// discard or a REMOVE event. Returns the bytes written, or a negative errno (-ENOSPC when
/// `buflen` is short: see `pcr_incoming_recv_bitmap_len`).
#[no_mangle]
pub extern "C" fn pcr_incoming_encode_recv_bitmap(
    mis: *const PcrIncoming,
    block_name: *const c_char,
    buf: *mut u8,
    buflen: usize,
) -> isize {
    ffi_call!(|| -> Result<usize> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        let incoming = unsafe { incoming(mis) }?;
        // SAFETY: `block_name` is NULL or a NUL-terminated string (the header's contract).
        let name = unsafe { try_str("block name", block_name) }?;
        // SAFETY: `buf` is NULL or holds `buflen` writable bytes (the header's contract).
        let buf = unsafe { try_slice_mut("buf", buf, buflen) }?;
        incoming.encode_recv_bitmap(name, buf)
    })
}

/// For a source gone for good: gives up every page not yet received, so that no thread
/// hangs and none reads a zero page unknowingly. Where the kernel has UFFDIO_POISON (Linux
/// 6.6) each such page is poisoned: an access raises SIGBUS, and a KVM vCPU gets a
/// memory-failure SIGBUS (BUS_MCEERR_AR) the VMM can act on. Without it (or with
/// `abort_poison` off) the pages are filled with zeros, every one of them, one page at a
/// time on blocks without UFFDIO_ZEROPAGE (hugetlbfs), and the loss is logged. Threads
/// blocked on those pages are woken either way. Requests stop for good. Callable from any thread, the fault thread
/// included, between LISTEN and cleanup; `out` (may be NULL) says what happened. Returns
/// 0 or a negative errno.
#[no_mangle]
pub extern "C" fn pcr_incoming_abort(mis: *mut PcrIncoming, out: *mut PcrAbortResult) -> c_int {
    ffi_call!(|| -> Result<()> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        let o = unsafe { incoming(mis) }?.abort()?;
        if !out.is_null() {
            // SAFETY: non-NULL `out` points to a writable PcrAbortResult (the header's
            // contract).
            unsafe {
                out.write(PcrAbortResult {
                    pages_lost: o.pages_lost,
                    bytes_lost: o.bytes_lost,
                    poisoned: o.poisoned,
                })
            };
        }
        Ok(())
    })
}

/// Whether the fault thread stopped on its own, and why (`pcr_incoming_fault_thread_status`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct PcrFaultThreadStatus {
    /// true: the fault thread of the current (or last) migration stopped on a failure, not
    /// for cleanup. The destination is then in a failed state: it was aborted as by
    /// `pcr_incoming_abort` (every missing page poisoned, or zero-filled: a later fault
    /// raises SIGBUS or reads zeros, never hangs), `pcr_incoming_resend_pending` and
    /// `pcr_incoming_pause_requests` fail with -ESRCH, and cleanup reports a failure
    /// (`shut` with `failed` true). Signals (EINTR) and other transient errors (EAGAIN,
    /// ENOMEM, ENOBUFS) never stop the thread. Reset by `pcr_incoming_enable_notify`.
    pub failed: bool,
    /// true: the failure was an internal panic (`error` is then EFAULT).
    pub panicked: bool,
    /// Positive errno of the failure (of the userfaultfd read or poll that failed), 0 when
    /// `failed` is false.
    pub error: c_int,
}

/// Writes into `*out` whether the fault thread stopped on a failure, and why (see
/// `PcrFaultThreadStatus`). The failure is recorded before `fault_thread_stopping` runs,
/// so that callback may call this to learn why the thread stops. Any thread, any time.
/// Returns 0 or -EINVAL for NULL arguments.
#[no_mangle]
pub extern "C" fn pcr_incoming_fault_thread_status(
    mis: *const PcrIncoming,
    out: *mut PcrFaultThreadStatus,
) -> c_int {
    ffi_call!(|| -> Result<()> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        let incoming = unsafe { incoming(mis) }?;
        let out = try_out("out", out)?;
        let failure = incoming.fault_thread_failure();
        let status = PcrFaultThreadStatus {
            failed: failure.is_some(),
            panicked: failure == Some(FaultThreadFailure::Panic),
            error: failure.map_or(0, FaultThreadFailure::errno),
        };
        // SAFETY: `out` is non-NULL and points to a writable PcrFaultThreadStatus (the
        // header's contract).
        unsafe { out.write(status) };
        Ok(())
    })
}

/// Registers vCPU `cpu_index` (< PCR_MAX_VCPUS) as thread `tid` (gettid()) for blocktime:
/// faults are attributed by the thread id the kernel reports. Any time (QEMU: at LISTEN);
/// registrations outlive cleanup. Returns 0 or a negative errno.
#[no_mangle]
pub extern "C" fn pcr_incoming_register_vcpu(
    mis: *mut PcrIncoming,
    cpu_index: u32,
    tid: i32,
) -> c_int {
    ffi_call!(|| -> Result<()> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        unsafe { incoming(mis) }?.register_vcpu(cpu_index, tid)
    })
}

/// Copies the blocktime figures into `*out` and, when `per_vcpu_ms` is not NULL, each
/// vCPU's blocked time in ms into `per_vcpu_ms[cpu_index]` for cpu_index < `n_vcpus` (0 for
/// unregistered indexes). QEMU 7.2's definitions: a vCPU's time grows from its fault to
/// the placement of the host page it waits on (or to its next fault, when that is read
/// before the placement's end: back-to-back faults each count in full); the total only
/// while every registered vCPU is blocked, never more than any vCPU's figure. Readable at any time, after cleanup too, until `pcr_incoming_free`. Returns
/// 0 or a negative errno.
#[no_mangle]
pub extern "C" fn pcr_incoming_get_blocktime(
    mis: *const PcrIncoming,
    out: *mut PcrBlocktime,
    per_vcpu_ms: *mut u32,
    n_vcpus: usize,
) -> c_int {
    ffi_call!(|| -> Result<()> {
        // SAFETY: `mis` is NULL or a live handle (the header's contract).
        let incoming = unsafe { incoming(mis) }?;
        let out = try_out("out", out)?;
        let r = incoming.blocktime();
        if !per_vcpu_ms.is_null() {
            // SAFETY: non-NULL `per_vcpu_ms` holds `n_vcpus` writable u32 (the header's
            // contract); checked for a sane length.
            let dst = unsafe { try_slice_mut("per_vcpu_ms", per_vcpu_ms, n_vcpus) }?;
            for (i, d) in dst.iter_mut().enumerate() {
                *d = r.per_vcpu_ms.get(i).copied().unwrap_or(0);
            }
        } else if n_vcpus != 0 {
            return Err(Error::invalid("per_vcpu_ms is NULL with n_vcpus > 0"));
        }
        let mut buckets = [0u64; PCR_LATENCY_BUCKETS];
        buckets.copy_from_slice(&r.latency_buckets);
        // SAFETY: `out` is non-NULL and points to a writable PcrBlocktime (the header's
        // contract).
        unsafe {
            out.write(PcrBlocktime {
                enabled: r.enabled,
                thread_id_available: r.thread_id_available,
                total_ms: r.total_ms,
                vcpus: r.vcpus,
                faults_timed: r.faults_timed,
                latency_p50_ns: r.latency_p50_ns,
                latency_p99_ns: r.latency_p99_ns,
                latency_max_ns: r.latency_max_ns,
                latency_buckets: buckets,
            })
        };
        Ok(())
    })
}
