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

mod abi;
mod guest;
mod vm;

pub use abi::kvm_available;
pub use guest::*;
pub use vm::{run_checksum_guest, spawn_checksum_guest};

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
