//! The guest program, its memory layout and options, and the reference model of what it
//! computes.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

// ---------------------------------------------------------------------------
// Public constants
// ---------------------------------------------------------------------------

/// Page size used by the guest program and required for the region (4 KiB).
pub const PAGE_SIZE: usize = 4096;
/// Mailbox offset: the guest writes the final checksum here.
pub const REG_CHECKSUM: u64 = 0x0;
/// Mailbox offset: the guest writes the number of pages visited here, last.
pub const REG_DONE: u64 = 0x4;
/// Mailbox offset: the guest writes the number of pages done so far here every
/// [`GuestOptions::progress_every_pages`] pages.
pub const REG_PROGRESS: u64 = 0x8;
/// Mailbox offset: if [`GuestOptions::report_page_hashes`] is set, the guest
/// writes each page's hash here after hashing that page.
pub const REG_PAGE_HASH: u64 = 0xC;
/// FNV-1a 32-bit offset basis. Each page's hash starts as this value XOR the page index.
pub const FNV_OFFSET_BASIS: u32 = 0x811C_9DC5;
/// FNV-1a 32-bit prime.
pub const FNV_PRIME: u32 = 0x0100_0193;
/// Largest region accepted: 63 GiB. The region, the code slot, the mailbox
/// and the TSS area must fit below the 36-bit guest-physical limit that KVM
/// uses when no CPUID is set.
pub const MAX_RAM_LEN: usize = 63 << 30;

pub(super) const GIB: usize = 1 << 30;
pub(super) const MIB: usize = 1 << 20;
/// Offsets inside the code slot (slot 1).
pub(super) const PML4_OFFSET: usize = PAGE_SIZE;
pub(super) const PDPT_OFFSET: usize = 2 * PAGE_SIZE;
pub(super) const PD_OFFSET: usize = 3 * PAGE_SIZE;

/// Number of GiB identity-mapped by the guest page tables (one page directory each).
pub(super) fn mapped_gib(ram_len: usize) -> usize {
    (ram_len + MIB).div_ceil(GIB)
}

/// Size of the code slot (slot 1) for a region of `ram_len` bytes: code
/// page + PML4 + PDPT + one page directory per identity-mapped GiB, where
/// `ceil((ram_len + 1 MiB) / 1 GiB)` GiB are mapped. That is at most 67
/// pages, so the slot, the mailbox and the TSS area fit in the 1 MiB of
/// slack.
pub fn code_slot_len(ram_len: usize) -> usize {
    (3 + mapped_gib(ram_len)) * PAGE_SIZE
}

/// Guest-physical address of the MMIO mailbox for a region of `ram_len` bytes.
pub fn mailbox_gpa(ram_len: usize) -> u64 {
    (ram_len + code_slot_len(ram_len)) as u64
}

// ---------------------------------------------------------------------------
// Guest program
// ---------------------------------------------------------------------------

/// The guest program: 64-bit x86 code, hand-assembled. The encodings were
/// checked with `as --64` + `objdump -d`.
///
/// Initial registers, set by the host through `KVM_SET_REGS` (all others are 0):
///
/// * `RBX` = first page index (0), `RCX` = pages left, `RDX` = number of pages,
/// * `RBP` = stride in pages (`0 < stride < npages`, coprime with `npages`, or 0 if `npages == 1`),
/// * `RDI` = running checksum (0),
/// * `R8` = flags: bit 0 = write markers, bit 1 = report page hashes,
/// * `R9` = progress interval in pages (0 = off), `R10` = countdown to the next report (= `R9`),
/// * `R12` = GPA (= virtual address) of the MMIO mailbox,
/// * `RIP` = GPA of this code (identity-mapped), `RFLAGS` = 0x2 (interrupts off).
///
/// The program uses no stack, and no privileged instruction, so it runs
/// unchanged at CPL 3 or CPL 0.
pub const GUEST_CODE: [u8; 0x6C] = [
    // page_loop:                               ; 0x00
    0x89,
    0xDE, //                              mov  esi, ebx          ; rsi = p (zero-extended)
    0x48, 0xC1, 0xE6,
    0x0C, //                  shl  rsi, 12           ; rsi = p * 4096 = address of page p
    0xB8, 0xC5, 0x9D, 0x1C, 0x81, //            mov  eax, 0x811C9DC5   ; h = FNV offset basis
    0x31, 0xD8, //                              xor  eax, ebx          ; h ^= p
    // word_loop:                               ; 0x0D
    0x33,
    0x06, //                              xor  eax, [rsi]        ; h ^= word   (guest READ of the region)
    0x69, 0xC0, 0x93, 0x01, 0x00, 0x01, //      imul eax, eax, 0x01000193 ; h *= FNV prime
    0x48, 0x83, 0xC6, 0x04, //                  add  rsi, 4
    0xF7, 0xC6, 0xFF, 0x0F, 0x00, 0x00, //      test esi, 0xFFF        ; end of page?
    0x75, 0xEC, //                              jnz  word_loop         ; (-> 0x0D)
    0x01, 0xC7, //                              add  edi, eax          ; checksum += h
    0x41, 0xF6, 0xC0, 0x02, //                  test r8b, 2            ; report page hashes?
    0x74, 0x05, //                              jz   +5                ; (-> 0x2E)
    0x41, 0x89, 0x44, 0x24, 0x0C, //            mov  [r12+0xC], eax    ; REG_PAGE_HASH <- h
    // 0x2E:
    0x41, 0xF6, 0xC0, 0x01, //                  test r8b, 1            ; write markers?
    0x74, 0x07, //                              jz   +7                ; (-> 0x3B)
    0x83, 0x86, 0x00, 0xF0, 0xFF, 0xFF,
    0x01, // add dword [rsi-0x1000], 1 ; guest WRITE: page[0..4] += 1
    // 0x3B:
    0x01, 0xEB, //                              add  ebx, ebp          ; p += stride
    0x39, 0xD3, //                              cmp  ebx, edx
    0x72, 0x02, //                              jb   +2                ; (-> 0x43)
    0x29, 0xD3, //                              sub  ebx, edx          ; p -= npages
    // 0x43:
    0xFF, 0xC9, //                              dec  ecx               ; one page fewer left
    0x45, 0x85,
    0xC9, //                        test r9d, r9d          ; progress reports enabled?
    0x74, 0x11, //                              jz   +0x11             ; (-> 0x5B)
    0x41, 0xFF, 0xCA, //                        dec  r10d              ; countdown
    0x75, 0x0C, //                              jnz  +0x0C             ; (-> 0x5B)
    0x45, 0x89, 0xCA, //                        mov  r10d, r9d         ; re-arm countdown
    0x89, 0xD0, //                              mov  eax, edx
    0x29, 0xC8, //                              sub  eax, ecx          ; eax = pages done
    0x41, 0x89, 0x44, 0x24,
    0x08, //            mov  [r12+0x8], eax    ; REG_PROGRESS <- pages done
    // 0x5B:
    0x85, 0xC9, //                              test ecx, ecx
    0x75, 0xA1, //                              jnz  page_loop         ; (-> 0x00)
    0x41, 0x89, 0x3C,
    0x24, //                  mov  [r12], edi        ; REG_CHECKSUM <- checksum
    0x41, 0x89, 0x54, 0x24, 0x04, //            mov  [r12+0x4], edx    ; REG_DONE <- npages
    // 0x68:
    0xF3, 0x90, //                              pause
    0xEB,
    0xFC, //                              jmp  0x68              ; spin; the host never resumes us
];

const _: () = assert!(GUEST_CODE.len() <= PAGE_SIZE);

/// Flag in `R8`: add 1 to the first dword of every page.
pub(super) const FLAG_WRITE_MARKERS: u64 = 1 << 0;
/// Flag in `R8`: write each page hash to [`REG_PAGE_HASH`].
pub(super) const FLAG_REPORT_PAGE_HASHES: u64 = 1 << 1;

// ---------------------------------------------------------------------------
// Reference model
// ---------------------------------------------------------------------------

/// Hash of one page exactly as the guest computes it. `index` is the page's
/// index in the region; `page` must be exactly [`PAGE_SIZE`] bytes.
///
/// # Panics
/// If `page.len() != PAGE_SIZE`.
pub fn page_hash(index: u32, page: &[u8]) -> u32 {
    assert_eq!(page.len(), PAGE_SIZE, "page_hash needs exactly one page");
    page.chunks_exact(4).fold(FNV_OFFSET_BASIS ^ index, |h, w| {
        (h ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]])).wrapping_mul(FNV_PRIME)
    })
}

/// The checksum the guest reports for a region whose contents were `data`
/// *before* the guest ran. It does not depend on
/// [`GuestOptions::stride_pages`] or on the other options.
///
/// # Panics
/// If `data.len()` is not a multiple of [`PAGE_SIZE`] or has more than `u32::MAX` pages.
pub fn reference_checksum(data: &[u8]) -> u32 {
    reference_page_hashes(data)
        .into_iter()
        .fold(0u32, u32::wrapping_add)
}

/// The per-page hashes of `data` (index = page number), as the guest reports them
/// in [`GuestResult::page_hashes`]. Same panics as [`reference_checksum`].
pub fn reference_page_hashes(data: &[u8]) -> Vec<u32> {
    assert_eq!(
        data.len() % PAGE_SIZE,
        0,
        "length must be a multiple of 4 KiB"
    );
    assert!(
        data.len() / PAGE_SIZE <= u32::MAX as usize,
        "too many pages"
    );
    data.chunks_exact(PAGE_SIZE)
        .enumerate()
        .map(|(i, page)| page_hash(i as u32, page))
        .collect()
}

/// Checksum of an all-zero region of `len` bytes, computed without allocating
/// `len` bytes. `len` must be a multiple of [`PAGE_SIZE`].
pub fn zero_region_checksum(len: usize) -> u32 {
    assert_eq!(len % PAGE_SIZE, 0, "length must be a multiple of 4 KiB");
    let zero = [0u8; PAGE_SIZE];
    (0..len / PAGE_SIZE).fold(0u32, |sum, i| sum.wrapping_add(page_hash(i as u32, &zero)))
}

/// Applies to `data` the writes the guest makes when
/// [`GuestOptions::write_markers`] is set: for every page, the little-endian
/// u32 at byte offset 0 of the page is incremented by 1, wrapping. Every
/// page is visited exactly once, whatever the stride.
///
/// # Panics
/// If `data.len()` is not a multiple of [`PAGE_SIZE`].
pub fn apply_guest_writes(data: &mut [u8]) {
    assert_eq!(
        data.len() % PAGE_SIZE,
        0,
        "length must be a multiple of 4 KiB"
    );
    for page in data.chunks_exact_mut(PAGE_SIZE) {
        let v = u32::from_le_bytes([page[0], page[1], page[2], page[3]]).wrapping_add(1);
        page[..4].copy_from_slice(&v.to_le_bytes());
    }
}

/// The order in which the guest visits pages: `p_0 = 0`,
/// `p_{k+1} = (p_k + stride) mod npages`, for `npages` steps. When
/// `gcd(stride, npages) == 1` (checked by [`run_checksum_guest`](super::run_checksum_guest)) this is a
/// permutation of `0..npages`.
pub fn visit_order(npages: u32, stride: u32) -> impl Iterator<Item = u32> {
    let stride = if npages == 0 { 0 } else { stride % npages };
    let mut p: u32 = 0;
    (0..npages).map(move |_| {
        let cur = p;
        // The guest does this in 32-bit registers; npages <= 63 GiB / 4 KiB < 2^24,
        // so p + stride never overflows. Use u64 anyway.
        p = ((p as u64 + stride as u64) % npages as u64) as u32;
        cur
    })
}

pub(super) fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The smallest stride `>= approx` (taken modulo `npages`, at least 1) that
/// is coprime with `npages`, so that [`visit_order`] visits every page. Returns 0
/// when `npages <= 1`.
pub fn coprime_stride(npages: u32, approx: u32) -> u32 {
    if npages <= 1 {
        return 0;
    }
    let mut s = (approx % npages).max(1);
    while gcd(s, npages) != 1 {
        s = s % (npages - 1) + 1; // stays in 1..npages; 1 is always coprime
    }
    s
}

// ---------------------------------------------------------------------------
// Options and results
// ---------------------------------------------------------------------------

/// Options for [`run_checksum_guest`](super::run_checksum_guest).
#[derive(Clone, Debug)]
pub struct GuestOptions {
    /// Distance between consecutive pages visited, in pages (see
    /// [`visit_order`]). 1 (the default) reads the region sequentially. Any
    /// value coprime with the number of pages is accepted (it is reduced
    /// modulo the number of pages). Use [`GuestOptions::scattered`] or
    /// [`coprime_stride`] for a scattered, random-looking order.
    pub stride_pages: u32,
    /// If true (default), the guest adds 1 to the first dword of every page
    /// after hashing it (see [`apply_guest_writes`]).
    pub write_markers: bool,
    /// If non-zero, the guest reports progress every this many pages (each
    /// report is one VM exit). 0 (default) = no progress reports.
    pub progress_every_pages: u32,
    /// If set, every progress report (and the final "done") stores the number
    /// of pages done so far here, so another thread can follow the guest.
    pub progress: Option<Arc<AtomicU32>>,
    /// If true, the guest reports every page's hash (one VM exit per page),
    /// and they are returned in [`GuestResult::page_hashes`]. Useful to find
    /// which pages are wrong when the checksum does not match. Default false.
    pub report_page_hashes: bool,
    /// Run the guest at CPL 0 (supervisor) instead of CPL 3 (user). The
    /// program and the results are the same. Default false, because on a
    /// `kvm_pvm` host only 64-bit user mode runs natively, and CPL 0 is
    /// emulated about 200 times slower (see the module docs). Use it if
    /// your KVM rejects the CPL 3 start state.
    pub supervisor_mode: bool,
    /// If set, the vCPU thread stores its thread id here before the guest starts, then
    /// waits until it reads non-zero in [`GuestOptions::start_gate`] (if that is set too):
    /// a VMM registers the thread for postcopy blocktime before the first fault.
    pub vcpu_tid: Option<Arc<std::sync::atomic::AtomicI32>>,
    /// See [`GuestOptions::vcpu_tid`]: the guest starts once this is non-zero.
    pub start_gate: Option<Arc<std::sync::atomic::AtomicU32>>,
}

impl Default for GuestOptions {
    fn default() -> Self {
        GuestOptions {
            stride_pages: 1,
            write_markers: true,
            progress_every_pages: 0,
            progress: None,
            report_page_hashes: false,
            supervisor_mode: false,
            vcpu_tid: None,
            start_gate: None,
        }
    }
}

impl GuestOptions {
    /// Default options, except that the stride is about `0.618 * npages`
    /// (golden ratio), adjusted to be coprime with `npages`. Consecutive
    /// accesses then land far apart all over a region of `ram_len` bytes.
    pub fn scattered(ram_len: usize) -> Self {
        let npages = (ram_len / PAGE_SIZE) as u32;
        let approx = ((npages as u64 * 618_034) / 1_000_000) as u32;
        GuestOptions {
            stride_pages: coprime_stride(npages, approx),
            ..Default::default()
        }
    }
}

/// What one guest run produced.
#[derive(Clone, Debug)]
pub struct GuestResult {
    /// Checksum reported by the guest (see the module docs and [`reference_checksum`]).
    pub checksum: u32,
    /// Number of pages the guest visited, as it reported in [`REG_DONE`].
    pub pages: u32,
    /// The effective stride (reduced modulo the number of pages).
    pub stride_pages: u32,
    /// Total number of VM exits that returned to user space (successful `KVM_RUN` calls).
    pub exits: u64,
    /// How many of those were `KVM_EXIT_MMIO` (mailbox writes).
    pub mmio_exits: u64,
    /// Number of progress reports received.
    pub progress_reports: u64,
    /// `KVM_RUN` calls that returned `EINTR`/`EAGAIN` or exited with `KVM_EXIT_INTR`
    /// (a signal arrived) and were restarted.
    pub interrupted: u64,
    /// Per-page hashes indexed by page number, if
    /// [`GuestOptions::report_page_hashes`] was set.
    pub page_hashes: Option<Vec<u32>>,
    /// Wall time from the first `KVM_RUN` to the guest's final "done" report.
    pub run_time: Duration,
    /// Wall time of the whole call, including VM setup and teardown.
    pub total_time: Duration,
}
