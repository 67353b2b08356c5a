//! A minimal KVM guest harness, written with raw `ioctl`s through `libc`.
//!
//! It runs one tiny, hand-assembled guest program on one vCPU over a memory
//! region supplied by the caller. The program reads every 4 KiB page of that
//! region, computes a checksum, optionally increments the first dword of every
//! page, and reports the result to the host. Every guest access to the region
//! is made *by the kernel on behalf of the vCPU*. If the region is registered
//! with userfaultfd and its pages are missing, those accesses are resolved
//! through the userfaultfd, the same way QEMU's vCPUs fault during postcopy
//! live migration. This module never reads or writes the region from the
//! host side.
//!
//! Entry points: [`kvm_available`], [`run_checksum_guest`] and
//! [`spawn_checksum_guest`]. The reference model for checking the results is
//! [`reference_checksum`], [`reference_page_hashes`] and
//! [`apply_guest_writes`].
//!
//! # Guest-physical layout
//!
//! | GPA                                    | Memory slot | Contents                                   |
//! |----------------------------------------|-------------|--------------------------------------------|
//! | `0 .. ram_len`                         | 0           | the caller's region (data only, no code)   |
//! | `ram_len .. ram_len + code_len`        | 1           | private anonymous pages: code, page tables |
//! | `mailbox = ram_len + code_len` (4 KiB) | none        | MMIO mailbox, see "Reporting" below        |
//! | `mailbox + 4 KiB` (3 pages)            | KVM's own   | `KVM_SET_TSS_ADDR` area, if supported      |
//!
//! Slot 1 holds the program ([`GUEST_CODE`]) at offset 0. It is followed by
//! the page tables: PML4 at +4 KiB, PDPT at +8 KiB, then one page directory
//! per GiB from +12 KiB. They identity-map `0 .. n GiB` with 2 MiB pages,
//! where `n = ceil((ram_len + 1 MiB) / 1 GiB)`. All mappings are present and
//! writable. `code_len` is [`code_slot_len`]`(ram_len)` = `(3 + n) * 4 KiB`.
//!
//! # CPU mode
//!
//! The vCPU starts directly in **64-bit long mode** with paging (CR0.PE|PG,
//! CR4.PAE, EFER.LME|LMA, a 64-bit code segment). By default it runs at **CPL 3**
//! (user mode) on Linux's user selectors (CS = 0x33, SS/DS/ES/FS/GS = 0x2b),
//! with user-accessible page tables. Everything is set through
//! `KVM_SET_SREGS`/`KVM_SET_REGS`: no GDT or IDT exists in guest memory, and the
//! program never takes an interrupt or an exception. Interrupts stay disabled
//! and no in-kernel irqchip is created.
//!
//! Why not 32-bit protected mode, or CPL 0? On this machine's KVM
//! (`kvm_pvm`, the Pagetable-based Virtual Machine, which needs no VMX/SVM),
//! only 64-bit *user* mode runs natively. 32-bit protected mode and 64-bit
//! CPL 0 (without a PVM-aware guest kernel) are emulated one instruction at
//! a time, about 1 µs per instruction. Measured with this program over a
//! populated 64 MiB region: 32-bit protected mode ≈ 45 s, 64-bit CPL 0 ≈ 60 s,
//! 64-bit CPL 3 ≈ 35 ms (3 GiB ≈ 2.2 s). VMX/SVM KVM should run every one of
//! these natively. This harness has only been run on the `kvm_pvm` host. If a
//! KVM refuses the CPL 3 start state, [`GuestOptions::supervisor_mode`]
//! selects CPL 0 instead.
//!
//! The region can be up to [`MAX_RAM_LEN`] (63 GiB). That keeps everything
//! below the 64 GiB (36-bit) guest-physical limit that KVM applies to a vCPU
//! whose CPUID was never set.
//!
//! # Checksum
//!
//! The guest computes the following (see [`reference_checksum`] and [`page_hash`]):
//!
//! ```text
//! for each page p (0-based index, u32) of the region:
//!     h = 0x811C9DC5 ^ p                      // FNV-1a offset basis, salted with p
//!     for each little-endian u32 word w of the page, in address order (1024 words):
//!         h = (h ^ w) * 0x01000193 (mod 2^32) // FNV-1a step on whole 32-bit words
//!     page_hash[p] = h
//! checksum = sum of page_hash[p] over all pages (mod 2^32)
//! ```
//!
//! Within one page, each step is a bijection of `h`. So changing any single
//! word of a page, or moving a page to another index (even an otherwise
//! correct page), always changes that page's hash. The final sum does not
//! depend on the order in which pages are visited, so
//! [`GuestOptions::stride_pages`] can scatter the accesses without changing
//! the expected value. Each page's hash is computed from the page's contents
//! *before* the guest writes its marker into that page.
//!
//! # Guest writes
//!
//! With [`GuestOptions::write_markers`] set (the default), right after hashing
//! a page the guest adds 1 (wrapping) to that page's first little-endian
//! dword, bytes `0..4` of the page. Nothing else in the region is written.
//! [`apply_guest_writes`] applies the same change to a host buffer, so a
//! caller can compute the expected contents of the region afterwards.
//!
//! # Reporting (guest → host)
//!
//! The guest reports through 4-byte writes to an MMIO mailbox: a guest-physical
//! page with no memory slot behind it, so each write is a `KVM_EXIT_MMIO`.
//! MMIO is used instead of port I/O (`OUT`) because `OUT`, like `HLT`, faults
//! at CPL 3.
//!
//! | Mailbox offset             | Value              | When                                     |
//! |----------------------------|--------------------|------------------------------------------|
//! | [`REG_PAGE_HASH`] 0xC      | `page_hash[p]`     | after each page, if `report_page_hashes` |
//! | [`REG_PROGRESS`] 0x8       | pages done so far  | every `progress_every_pages` pages       |
//! | [`REG_CHECKSUM`] 0x0       | the checksum       | once, at the end                         |
//! | [`REG_DONE`] 0x4           | number of pages    | once, last                               |
//!
//! After `REG_DONE` the guest spins on `PAUSE`, and the host stops running
//! the vCPU and tears the VM down.
//!
//! # Example
//!
//! ```no_run
//! use postcopy_demo::kvm;
//! kvm::kvm_available().expect("no usable /dev/kvm");
//! let len = 64 << 20;
//! // SAFETY: anonymous private mapping, checked below.
//! let ram = unsafe {
//!     libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE,
//!                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
//! };
//! assert_ne!(ram, libc::MAP_FAILED);
//! // SAFETY: `ram` is a live, page-aligned mapping of `len` bytes that nothing
//! // else uses until the guest has finished.
//! let res = unsafe {
//!     kvm::run_checksum_guest(ram.cast(), len, &kvm::GuestOptions::default())
//! }.unwrap();
//! assert_eq!(res.checksum, kvm::zero_region_checksum(len));
//! ```

use std::fmt::Write as _;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

const GIB: usize = 1 << 30;
const MIB: usize = 1 << 20;
/// Offsets inside the code slot (slot 1).
const PML4_OFFSET: usize = PAGE_SIZE;
const PDPT_OFFSET: usize = 2 * PAGE_SIZE;
const PD_OFFSET: usize = 3 * PAGE_SIZE;

/// Number of GiB identity-mapped by the guest page tables (one page directory each).
fn mapped_gib(ram_len: usize) -> usize {
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
const FLAG_WRITE_MARKERS: u64 = 1 << 0;
/// Flag in `R8`: write each page hash to [`REG_PAGE_HASH`].
const FLAG_REPORT_PAGE_HASHES: u64 = 1 << 1;

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
/// `gcd(stride, npages) == 1` (checked by [`run_checksum_guest`]) this is a
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

fn gcd(mut a: u32, mut b: u32) -> u32 {
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

/// Options for [`run_checksum_guest`].
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

// ---------------------------------------------------------------------------
// Kernel ABI: ioctl numbers and structures (from <linux/kvm.h>, x86_64)
// ---------------------------------------------------------------------------

const KVMIO: u64 = 0xAE;
const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

/// `_IOC(dir, type, nr, size)` as in `<asm-generic/ioctl.h>`.
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}

const KVM_GET_API_VERSION: u64 = ioc(IOC_NONE, KVMIO, 0x00, 0);
const KVM_CREATE_VM: u64 = ioc(IOC_NONE, KVMIO, 0x01, 0);
const KVM_CHECK_EXTENSION: u64 = ioc(IOC_NONE, KVMIO, 0x03, 0);
const KVM_GET_VCPU_MMAP_SIZE: u64 = ioc(IOC_NONE, KVMIO, 0x04, 0);
const KVM_CREATE_VCPU: u64 = ioc(IOC_NONE, KVMIO, 0x41, 0);
const KVM_SET_USER_MEMORY_REGION: u64 = ioc(
    IOC_WRITE,
    KVMIO,
    0x46,
    size_of::<KvmUserspaceMemoryRegion>(),
);
const KVM_SET_TSS_ADDR: u64 = ioc(IOC_NONE, KVMIO, 0x47, 0);
const KVM_RUN: u64 = ioc(IOC_NONE, KVMIO, 0x80, 0);
const KVM_GET_REGS: u64 = ioc(IOC_READ, KVMIO, 0x81, size_of::<KvmRegs>());
const KVM_SET_REGS: u64 = ioc(IOC_WRITE, KVMIO, 0x82, size_of::<KvmRegs>());
const KVM_GET_SREGS: u64 = ioc(IOC_READ, KVMIO, 0x83, size_of::<KvmSregs>());
const KVM_SET_SREGS: u64 = ioc(IOC_WRITE, KVMIO, 0x84, size_of::<KvmSregs>());

// Cross-check against the values in the kernel headers.
const _: () = assert!(KVM_GET_API_VERSION == 0xAE00);
const _: () = assert!(KVM_CREATE_VM == 0xAE01);
const _: () = assert!(KVM_SET_USER_MEMORY_REGION == 0x4020_AE46);
const _: () = assert!(KVM_RUN == 0xAE80);
const _: () = assert!(KVM_GET_REGS == 0x8090_AE81);
const _: () = assert!(KVM_SET_REGS == 0x4090_AE82);
const _: () = assert!(KVM_GET_SREGS == 0x8138_AE83);
const _: () = assert!(KVM_SET_SREGS == 0x4138_AE84);

/// The only `KVM_GET_API_VERSION` value any kernel has ever returned.
const KVM_API_VERSION: i32 = 12;
const KVM_CAP_USER_MEMORY: u64 = 3;
const KVM_CAP_SET_TSS_ADDR: u64 = 4;

const KVM_EXIT_MMIO: u32 = 6;
const KVM_EXIT_SHUTDOWN: u32 = 8;
const KVM_EXIT_FAIL_ENTRY: u32 = 9;
const KVM_EXIT_INTR: u32 = 10;
const KVM_EXIT_INTERNAL_ERROR: u32 = 17;

fn exit_reason_name(reason: u32) -> &'static str {
    match reason {
        0 => "KVM_EXIT_UNKNOWN",
        1 => "KVM_EXIT_EXCEPTION",
        2 => "KVM_EXIT_IO",
        3 => "KVM_EXIT_HYPERCALL",
        4 => "KVM_EXIT_DEBUG",
        5 => "KVM_EXIT_HLT",
        6 => "KVM_EXIT_MMIO",
        7 => "KVM_EXIT_IRQ_WINDOW_OPEN",
        8 => "KVM_EXIT_SHUTDOWN (triple fault)",
        9 => "KVM_EXIT_FAIL_ENTRY",
        10 => "KVM_EXIT_INTR",
        17 => "KVM_EXIT_INTERNAL_ERROR",
        24 => "KVM_EXIT_SYSTEM_EVENT",
        39 => "KVM_EXIT_MEMORY_FAULT",
        _ => "unknown exit reason",
    }
}

/// `struct kvm_userspace_memory_region`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct KvmUserspaceMemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}
const _: () = assert!(size_of::<KvmUserspaceMemoryRegion>() == 32);

/// `struct kvm_regs` (x86).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct KvmRegs {
    rax: u64,
    rbx: u64,
    rcx: u64,
    rdx: u64,
    rsi: u64,
    rdi: u64,
    rsp: u64,
    rbp: u64,
    r8: u64,
    r9: u64,
    r10: u64,
    r11: u64,
    r12: u64,
    r13: u64,
    r14: u64,
    r15: u64,
    rip: u64,
    rflags: u64,
}
const _: () = assert!(size_of::<KvmRegs>() == 144);

/// `struct kvm_segment`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct KvmSegment {
    base: u64,
    limit: u32,
    selector: u16,
    type_: u8,
    present: u8,
    dpl: u8,
    db: u8,
    s: u8,
    l: u8,
    g: u8,
    avl: u8,
    unusable: u8,
    padding: u8,
}
const _: () = assert!(size_of::<KvmSegment>() == 24);

/// `struct kvm_dtable`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct KvmDtable {
    base: u64,
    limit: u16,
    padding: [u16; 3],
}
const _: () = assert!(size_of::<KvmDtable>() == 16);

/// `struct kvm_sregs` (x86).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct KvmSregs {
    cs: KvmSegment,
    ds: KvmSegment,
    es: KvmSegment,
    fs: KvmSegment,
    gs: KvmSegment,
    ss: KvmSegment,
    tr: KvmSegment,
    ldt: KvmSegment,
    gdt: KvmDtable,
    idt: KvmDtable,
    cr0: u64,
    cr2: u64,
    cr3: u64,
    cr4: u64,
    cr8: u64,
    efer: u64,
    apic_base: u64,
    /// `(KVM_NR_INTERRUPTS + 63) / 64` with `KVM_NR_INTERRUPTS = 256`.
    interrupt_bitmap: [u64; 4],
}
const _: () = assert!(size_of::<KvmSregs>() == 312);

/// `kvm_run.mmio`: a guest access to guest-physical memory without a memory slot.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct KvmRunMmio {
    phys_addr: u64,
    data: [u8; 8],
    len: u32,
    is_write: u8,
}
const _: () = assert!(size_of::<KvmRunMmio>() == 24);

/// `kvm_run.fail_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct KvmRunFailEntry {
    hardware_entry_failure_reason: u64,
    cpu: u32,
}

/// `kvm_run.internal`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct KvmRunInternal {
    suberror: u32,
    ndata: u32,
    data: [u64; 16],
}

/// The exit-specific union of `struct kvm_run` (256 bytes). Only the members used here are listed.
#[repr(C)]
#[derive(Clone, Copy)]
union KvmRunExit {
    mmio: KvmRunMmio,
    fail_entry: KvmRunFailEntry,
    internal: KvmRunInternal,
    padding: [u8; 256],
}
const _: () = assert!(size_of::<KvmRunExit>() == 256);

/// The leading part of `struct kvm_run` (up to and including the exit
/// union). The rest of the mmapped area (sync regs, I/O data pages) is not
/// described here.
#[repr(C)]
#[derive(Clone, Copy)]
struct KvmRun {
    request_interrupt_window: u8,
    immediate_exit: u8,
    padding1: [u8; 6],
    exit_reason: u32,
    ready_for_interrupt_injection: u8,
    if_flag: u8,
    flags: u16,
    cr8: u64,
    apic_base: u64,
    exit: KvmRunExit,
}
const _: () = assert!(size_of::<KvmRun>() == 32 + 256);
const _: () = assert!(std::mem::offset_of!(KvmRun, exit_reason) == 8);
const _: () = assert!(std::mem::offset_of!(KvmRun, exit) == 32);

// ---------------------------------------------------------------------------
// Small RAII helpers
// ---------------------------------------------------------------------------

fn os_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// `ioctl(fd, req, arg)` with an integer (or no) argument; returns the non-negative result.
fn ioctl_val(fd: RawFd, req: u64, arg: u64, what: &str) -> Result<i32, String> {
    // SAFETY: every request passed here takes an integer argument (or
    // ignores it), so the kernel does not dereference `arg`.
    let r = unsafe { libc::ioctl(fd, req as libc::Ioctl, arg as libc::c_ulong) };
    if r < 0 {
        Err(os_err(what))
    } else {
        Ok(r)
    }
}

/// `ioctl(fd, req, ptr)` where `req` reads or writes one `T` at `ptr`.
fn ioctl_ptr<T>(fd: RawFd, req: u64, arg: *mut T, what: &str) -> Result<i32, String> {
    // SAFETY: callers pass a request whose size field encodes size_of::<T>()
    // (checked by the const assertions above), and `arg` points to a live,
    // properly aligned T that the kernel may read or write.
    let r = unsafe { libc::ioctl(fd, req as libc::Ioctl, arg) };
    if r < 0 {
        Err(os_err(what))
    } else {
        Ok(r)
    }
}

/// Takes ownership of a fd returned by an ioctl or `open`.
fn own_fd(fd: i32) -> OwnedFd {
    debug_assert!(fd >= 0);
    // SAFETY: `fd` was just returned by the kernel as a new descriptor, and nothing
    // else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// An mmapped area, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    /// Private anonymous read/write mapping.
    fn anonymous(len: usize) -> Result<Self, String> {
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address does not
        // alias any existing memory.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(os_err("mmap of the guest code slot"));
        }
        Ok(Mapping { ptr, len })
    }

    /// Shared mapping of `len` bytes of `fd` (the vCPU's `kvm_run` area).
    fn shared_fd(fd: RawFd, len: usize) -> Result<Self, String> {
        // SAFETY: maps a new area at a kernel-chosen address; it does not alias
        // existing memory.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(os_err("mmap of the vCPU kvm_run area"));
        }
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping created by us and unmapped only here.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

fn open_kvm() -> Result<OwnedFd, String> {
    // SAFETY: `open` with a NUL-terminated constant path.
    let fd = unsafe { libc::open(c"/dev/kvm".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::ENOENT) => {
                " (no /dev/kvm: KVM module not loaded or no hardware virtualization)"
            }
            Some(libc::EACCES) | Some(libc::EPERM) => {
                " (no permission: need root or the kvm group)"
            }
            _ => "",
        };
        return Err(format!("cannot open /dev/kvm: {e}{hint}"));
    }
    Ok(own_fd(fd))
}

/// Checks that KVM is usable: `/dev/kvm` opens read/write,
/// `KVM_GET_API_VERSION` is 12, `KVM_CAP_USER_MEMORY` is present and a VM can
/// be created. The error message names the first thing that failed. All
/// descriptors are closed before returning.
pub fn kvm_available() -> Result<(), String> {
    let kvm = open_kvm()?;
    let version = ioctl_val(
        kvm.as_raw_fd(),
        KVM_GET_API_VERSION,
        0,
        "KVM_GET_API_VERSION",
    )?;
    if version != KVM_API_VERSION {
        return Err(format!(
            "KVM_GET_API_VERSION returned {version}, expected {KVM_API_VERSION}"
        ));
    }
    if ioctl_val(
        kvm.as_raw_fd(),
        KVM_CHECK_EXTENSION,
        KVM_CAP_USER_MEMORY,
        "KVM_CHECK_EXTENSION",
    )? <= 0
    {
        return Err("KVM lacks KVM_CAP_USER_MEMORY".into());
    }
    let vm = ioctl_val(kvm.as_raw_fd(), KVM_CREATE_VM, 0, "KVM_CREATE_VM")
        .map_err(|e| format!("/dev/kvm opens but cannot create a VM: {e}"))?;
    drop(own_fd(vm));
    Ok(())
}

// ---------------------------------------------------------------------------
// VM setup and run loop
// ---------------------------------------------------------------------------

/// All KVM resources of one run. Fields drop in declaration order: first
/// the `kvm_run` mapping, then the vCPU, the VM, the code slot and `/dev/kvm`.
struct Vm {
    run: Mapping,
    vcpu: OwnedFd,
    /// GPA of the MMIO mailbox.
    mailbox: u64,
    _vm: OwnedFd,
    _code: Mapping,
    _kvm: OwnedFd,
}

/// Checks the arguments and returns `(npages, effective stride)`.
fn validate(ram: usize, ram_len: usize, opts: &GuestOptions) -> Result<(u32, u32), String> {
    if ram == 0 {
        return Err("ram pointer is null".into());
    }
    if ram % PAGE_SIZE != 0 {
        return Err(format!("ram pointer {ram:#x} is not 4 KiB aligned"));
    }
    if ram_len == 0 || ram_len % PAGE_SIZE != 0 {
        return Err(format!(
            "ram_len {ram_len:#x} must be a non-zero multiple of 4 KiB"
        ));
    }
    if ram_len > MAX_RAM_LEN {
        return Err(format!(
            "ram_len {ram_len:#x} exceeds the maximum {MAX_RAM_LEN:#x}"
        ));
    }
    let npages = (ram_len / PAGE_SIZE) as u32;
    let stride = opts.stride_pages % npages;
    if gcd(stride, npages) != 1 {
        return Err(format!(
            "stride_pages {} (mod {npages} = {stride}) is not coprime with the page count {npages}: \
             not every page would be visited (use coprime_stride())",
            opts.stride_pages
        ));
    }
    Ok((npages, stride))
}

fn setup_vm(
    ram: usize,
    ram_len: usize,
    opts: &GuestOptions,
    npages: u32,
    stride: u32,
) -> Result<Vm, String> {
    let kvm = open_kvm()?;
    let kfd = kvm.as_raw_fd();
    let version = ioctl_val(kfd, KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")?;
    if version != KVM_API_VERSION {
        return Err(format!(
            "KVM_GET_API_VERSION returned {version}, expected {KVM_API_VERSION}"
        ));
    }
    let vm = own_fd(ioctl_val(kfd, KVM_CREATE_VM, 0, "KVM_CREATE_VM")?);
    let vmfd = vm.as_raw_fd();
    let user = !opts.supervisor_mode;

    // Slot 1: code page, then identity-mapping page tables (see the module docs).
    let code_gpa = ram_len as u64;
    let code_len = code_slot_len(ram_len);
    let mailbox = mailbox_gpa(ram_len);
    let code = Mapping::anonymous(code_len)?;
    let pml4_gpa = code_gpa + PML4_OFFSET as u64;
    let pdpt_gpa = code_gpa + PDPT_OFFSET as u64;
    const PTE_P: u64 = 1 << 0; // present
    const PTE_RW: u64 = 1 << 1; // writable
    const PTE_US: u64 = 1 << 2; // user-accessible (needed at CPL 3)
    const PDE_PS: u64 = 1 << 7; // 2 MiB page
    let pte = PTE_P | PTE_RW | if user { PTE_US } else { 0 };
    // SAFETY: `code` is a fresh private read/write mapping of `code_len` bytes that we
    // own. Every write below is in bounds: the code fits in its first page
    // (const assertion), the PML4 and PDPT are pages 1 and 2, and PD `i` is page
    // 3 + i with i < mapped_gib(ram_len). 8-byte writes at 8-byte offsets of a
    // page-aligned mapping are aligned.
    unsafe {
        let base = code.ptr.cast::<u8>();
        ptr::copy_nonoverlapping(GUEST_CODE.as_ptr(), base, GUEST_CODE.len());
        let pml4 = base.add(PML4_OFFSET).cast::<u64>();
        pml4.write(pdpt_gpa | pte);
        let pdpt = base.add(PDPT_OFFSET).cast::<u64>();
        for i in 0..mapped_gib(ram_len) {
            let pd_gpa = code_gpa + (PD_OFFSET + i * PAGE_SIZE) as u64;
            pdpt.add(i).write(pd_gpa | pte);
            let pd = base.add(PD_OFFSET + i * PAGE_SIZE).cast::<u64>();
            for j in 0..512 {
                let gpa = ((i * 512 + j) as u64) << 21;
                pd.add(j).write(gpa | PDE_PS | pte);
            }
        }
    }

    // Slot 0: the caller's region at GPA 0. Slot 1: the code slot right after it.
    let mut regions = [
        KvmUserspaceMemoryRegion {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: ram_len as u64,
            userspace_addr: ram as u64,
        },
        KvmUserspaceMemoryRegion {
            slot: 1,
            flags: 0,
            guest_phys_addr: code_gpa,
            memory_size: code_len as u64,
            userspace_addr: code.ptr as u64,
        },
    ];
    for r in regions.iter_mut() {
        let what = format!(
            "KVM_SET_USER_MEMORY_REGION slot {} (GPA {:#x}, {:#x} bytes)",
            r.slot, r.guest_phys_addr, r.memory_size
        );
        ioctl_ptr(vmfd, KVM_SET_USER_MEMORY_REGION, r as *mut _, &what)?;
    }
    // Intel without "unrestricted guest" needs a TSS area for real-mode
    // emulation. Our vCPU never runs in real mode, but give KVM a spot that
    // overlaps nothing anyway. AMD ignores it.
    if ioctl_val(
        kfd,
        KVM_CHECK_EXTENSION,
        KVM_CAP_SET_TSS_ADDR,
        "KVM_CHECK_EXTENSION",
    )? > 0
    {
        let tss = mailbox + PAGE_SIZE as u64;
        ioctl_val(vmfd, KVM_SET_TSS_ADDR, tss, "KVM_SET_TSS_ADDR")?;
    }

    let vcpu = own_fd(ioctl_val(vmfd, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU")?);
    let cfd = vcpu.as_raw_fd();
    let run_size = ioctl_val(kfd, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")? as usize;
    if run_size < size_of::<KvmRun>() {
        return Err(format!(
            "KVM_GET_VCPU_MMAP_SIZE {run_size} is smaller than struct kvm_run"
        ));
    }
    let run = Mapping::shared_fd(cfd, run_size)?;

    // 64-bit long mode with paging (the identity map above), at CPL 3 or 0.
    let mut sregs = KvmSregs::default();
    ioctl_ptr(cfd, KVM_GET_SREGS, &mut sregs as *mut _, "KVM_GET_SREGS")?;
    // Linux's selectors: __KERNEL_CS/__KERNEL_DS = 0x10/0x18 and
    // __USER_CS/__USER_DS = 0x33/0x2b. PVM requires the user ones. There is
    // no GDT: the values below are loaded straight into the segment
    // registers' hidden parts, and the guest never reloads a segment.
    let (dpl, cs_sel, ds_sel) = if user {
        (3, 0x33, 0x2b)
    } else {
        (0, 0x10, 0x18)
    };
    let code_seg = KvmSegment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector: cs_sel,
        type_: 0xB, // execute/read, accessed
        present: 1,
        dpl,
        db: 0, // must be 0 when l = 1
        s: 1,  // code/data (not system) segment
        l: 1,  // 64-bit code segment
        g: 1,  // 4 KiB granularity
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let data_seg = KvmSegment {
        selector: ds_sel,
        type_: 0x3, // read/write, accessed
        db: 1,
        l: 0,
        ..code_seg
    };
    sregs.cs = code_seg;
    sregs.ds = data_seg;
    sregs.es = data_seg;
    sregs.fs = data_seg;
    sregs.gs = data_seg;
    sregs.ss = data_seg;
    const CR0_PE: u64 = 1 << 0;
    const CR0_MP: u64 = 1 << 1;
    const CR0_ET: u64 = 1 << 4;
    const CR0_NE: u64 = 1 << 5;
    const CR0_WP: u64 = 1 << 16;
    const CR0_AM: u64 = 1 << 18;
    const CR0_PG: u64 = 1 << 31;
    const CR4_PAE: u64 = 1 << 5;
    const EFER_LME: u64 = 1 << 8;
    const EFER_LMA: u64 = 1 << 10;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG;
    sregs.cr3 = pml4_gpa;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    ioctl_ptr(cfd, KVM_SET_SREGS, &mut sregs as *mut _, "KVM_SET_SREGS")?;

    let mut flags = 0u64;
    if opts.write_markers {
        flags |= FLAG_WRITE_MARKERS;
    }
    if opts.report_page_hashes {
        flags |= FLAG_REPORT_PAGE_HASHES;
    }
    let mut regs = KvmRegs {
        rbx: 0,
        rcx: npages as u64,
        rdx: npages as u64,
        rbp: stride as u64,
        rdi: 0,
        r8: flags,
        r9: opts.progress_every_pages as u64,
        r10: opts.progress_every_pages as u64,
        r12: mailbox,
        rip: code_gpa,
        rflags: 0x2,
        ..Default::default()
    };
    ioctl_ptr(cfd, KVM_SET_REGS, &mut regs as *mut _, "KVM_SET_REGS")?;

    Ok(Vm {
        run,
        vcpu,
        mailbox,
        _vm: vm,
        _code: code,
        _kvm: kvm,
    })
}

/// A short register dump for error messages.
fn regs_summary(vcpu: RawFd) -> String {
    let mut r = KvmRegs::default();
    match ioctl_ptr(vcpu, KVM_GET_REGS, &mut r as *mut _, "KVM_GET_REGS") {
        Ok(_) => format!(
            "rip={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x} r12={:#x} rflags={:#x}",
            r.rip, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r12, r.rflags
        ),
        Err(e) => format!("(registers unavailable: {e})"),
    }
}

fn run_loop(vm: &Vm, npages: u32, stride: u32, opts: &GuestOptions) -> Result<GuestResult, String> {
    let cfd = vm.vcpu.as_raw_fd();
    let run_ptr = vm.run.ptr.cast::<KvmRun>();
    let mut res = GuestResult {
        checksum: 0,
        pages: 0,
        stride_pages: stride,
        exits: 0,
        mmio_exits: 0,
        progress_reports: 0,
        interrupted: 0,
        page_hashes: None,
        run_time: Duration::ZERO,
        total_time: Duration::ZERO,
    };
    // Page hashes arrive in visit order; map them back to page numbers.
    let mut order = visit_order(npages, stride);
    let mut hashes = opts.report_page_hashes.then(|| vec![0u32; npages as usize]);
    let mut hashes_seen = 0u32;
    let mut checksum: Option<u32> = None;
    let start = Instant::now();

    loop {
        // SAFETY: KVM_RUN takes no argument; the vCPU fd is valid.
        let r = unsafe { libc::ioctl(cfd, KVM_RUN as libc::Ioctl, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) {
                res.interrupted += 1;
                continue;
            }
            // SAFETY: the run area stays mapped while `vm` lives. The kernel
            // does not write it while no KVM_RUN is in progress on this vCPU.
            let reason = unsafe { ptr::read_volatile(ptr::addr_of!((*run_ptr).exit_reason)) };
            return Err(format!(
                "KVM_RUN failed: {e} (exit_reason {reason} {}, after {} exits); {}",
                exit_reason_name(reason),
                res.exits,
                regs_summary(cfd)
            ));
        }
        res.exits += 1;
        // SAFETY: as above. A volatile read of the plain-old-data header that
        // the kernel filled in for this exit.
        let run: KvmRun = unsafe { ptr::read_volatile(run_ptr) };
        match run.exit_reason {
            KVM_EXIT_MMIO => {
                res.mmio_exits += 1;
                // SAFETY: `mmio` is the active union member for KVM_EXIT_MMIO; all of
                // its bit patterns are valid.
                let mmio = unsafe { run.exit.mmio };
                let reg = mmio.phys_addr.wrapping_sub(vm.mailbox);
                if mmio.is_write == 0 || mmio.len != 4 || reg >= PAGE_SIZE as u64 {
                    return Err(format!(
                        "unexpected MMIO access from guest: {mmio:?} (mailbox at {:#x}); {}",
                        vm.mailbox,
                        regs_summary(cfd)
                    ));
                }
                let d = mmio.data;
                let value = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
                match reg {
                    REG_PAGE_HASH => {
                        let Some(page) = order.next() else {
                            return Err("guest reported more page hashes than pages".into());
                        };
                        if let Some(h) = hashes.as_mut() {
                            h[page as usize] = value;
                        }
                        hashes_seen += 1;
                    }
                    REG_PROGRESS => {
                        res.progress_reports += 1;
                        if let Some(p) = &opts.progress {
                            p.store(value, Ordering::Release);
                        }
                    }
                    REG_CHECKSUM => checksum = Some(value),
                    REG_DONE => {
                        res.run_time = start.elapsed();
                        res.pages = value;
                        let Some(sum) = checksum else {
                            return Err("guest reported done without a checksum".into());
                        };
                        if value != npages {
                            return Err(format!(
                                "guest reported {value} pages done, expected {npages}"
                            ));
                        }
                        if opts.report_page_hashes && hashes_seen != npages {
                            return Err(format!(
                                "guest reported {hashes_seen} page hashes, expected {npages}"
                            ));
                        }
                        if let Some(p) = &opts.progress {
                            p.store(value, Ordering::Release);
                        }
                        res.checksum = sum;
                        res.page_hashes = hashes;
                        // Done. The guest now spins; it is never run again.
                        return Ok(res);
                    }
                    _ => {
                        return Err(format!(
                            "guest wrote {value:#x} to unknown mailbox offset {reg:#x}; {}",
                            regs_summary(cfd)
                        ))
                    }
                }
            }
            KVM_EXIT_INTR => res.interrupted += 1,
            reason => {
                let mut msg = format!(
                    "unexpected VM exit {reason} ({}) after {} exits",
                    exit_reason_name(reason),
                    res.exits
                );
                // SAFETY: reading the union member that matches the exit reason;
                // all bit patterns are valid for these integer-only structs.
                unsafe {
                    if reason == KVM_EXIT_FAIL_ENTRY {
                        let f = run.exit.fail_entry;
                        let _ = write!(
                            msg,
                            ": hardware_entry_failure_reason={:#x} cpu={}",
                            f.hardware_entry_failure_reason, f.cpu
                        );
                    } else if reason == KVM_EXIT_INTERNAL_ERROR {
                        let i = run.exit.internal;
                        let n = (i.ndata as usize).min(i.data.len());
                        let _ = write!(msg, ": suberror={} data={:x?}", i.suberror, &i.data[..n]);
                    } else if reason == KVM_EXIT_SHUTDOWN {
                        msg.push_str(
                            ": the guest took an exception it cannot handle (triple fault); \
                             if this happens at the first instruction, try supervisor_mode",
                        );
                    }
                }
                let _ = write!(msg, "; {}", regs_summary(cfd));
                return Err(msg);
            }
        }
    }
}

fn run_checksum_guest_impl(
    ram: usize,
    ram_len: usize,
    opts: &GuestOptions,
) -> Result<GuestResult, String> {
    let t0 = Instant::now();
    let (npages, stride) = validate(ram, ram_len, opts)?;
    let vm = setup_vm(ram, ram_len, opts, npages, stride)?;
    let result = run_loop(&vm, npages, stride, opts);
    drop(vm); // closes every fd and unmaps the run area and the code slot
    result.map(|mut r| {
        r.total_time = t0.elapsed();
        r
    })
}

/// Runs the checksum guest over `ram_len` bytes at `ram` on the calling
/// thread, and returns after the guest reports done.
///
/// Creates a VM with the region at GPA 0 (slot 0) and a private code slot
/// (code + page tables) at GPA `ram_len` (slot 1). It creates one vCPU in
/// 64-bit long mode (CPL 3 unless [`GuestOptions::supervisor_mode`]), runs
/// it until the guest reports done, then closes every fd and unmaps
/// everything it mapped (on error paths too). This function never reads or
/// writes `ram` itself. Every access is made by the guest, so a page that is
/// missing in a userfaultfd-registered region is faulted in through the
/// userfaultfd by the vCPU thread, inside `KVM_RUN`, and this call blocks until
/// the fault is resolved. See the module docs for the checksum, the writes
/// and the mailbox protocol.
///
/// Errors: invalid arguments (alignment, size, stride not coprime), any
/// failed KVM ioctl, or an unexpected VM exit (with a register dump).
///
/// # Safety
/// `ram .. ram + ram_len` must be a mapping that stays valid (not unmapped or
/// remapped) until this function returns. The guest writes to it (unless
/// `write_markers` is false): no Rust reference to that memory may be alive
/// during the call, and other threads must not rely on its contents staying
/// unchanged. Filling missing pages with `UFFDIO_COPY`, as a userfaultfd
/// handler does, is fine.
pub unsafe fn run_checksum_guest(
    ram: *mut u8,
    ram_len: usize,
    opts: &GuestOptions,
) -> Result<GuestResult, String> {
    run_checksum_guest_impl(ram as usize, ram_len, opts)
}

/// Same as [`run_checksum_guest`], but runs on a new thread named
/// `kvm-vcpu0` and returns its handle at once. Your own code (e.g. the
/// migration's page server or userfaultfd handler) can run concurrently,
/// and [`GuestOptions::progress`] lets you watch the guest.
///
/// # Panics
/// If the thread cannot be spawned (like [`std::thread::spawn`]).
///
/// # Safety
/// As for [`run_checksum_guest`], until the returned thread has finished
/// (joined): the region must stay mapped for that long.
pub unsafe fn spawn_checksum_guest(
    ram: *mut u8,
    ram_len: usize,
    opts: GuestOptions,
) -> JoinHandle<Result<GuestResult, String>> {
    let addr = ram as usize; // raw pointers are not Send
    std::thread::Builder::new()
        .name("kvm-vcpu0".into())
        .spawn(move || run_checksum_guest_impl(addr, ram_len, &opts))
        .expect("failed to spawn the vCPU thread")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visit_order_is_permutation() {
        for npages in [1u32, 2, 7, 64, 1000] {
            for approx in [1u32, 3, 618, 999] {
                let s = coprime_stride(npages, approx);
                let mut seen = vec![false; npages as usize];
                for p in visit_order(npages, s) {
                    assert!(!seen[p as usize]);
                    seen[p as usize] = true;
                }
                assert!(seen.iter().all(|&b| b));
            }
        }
    }

    #[test]
    fn checksum_helpers_agree() {
        let mut data = vec![0u8; 3 * PAGE_SIZE];
        assert_eq!(reference_checksum(&data), zero_region_checksum(data.len()));
        data[5] = 1;
        let hashes = reference_page_hashes(&data);
        assert_eq!(
            hashes.iter().fold(0u32, |a, &h| a.wrapping_add(h)),
            reference_checksum(&data)
        );
        apply_guest_writes(&mut data);
        assert_eq!(&data[..8], &[1, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(data[PAGE_SIZE], 1);
    }
}
