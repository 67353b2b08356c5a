//! The KVM kernel ABI this harness uses (ioctl numbers and structures from
//! <linux/kvm.h>, x86_64, with size checks), and the small RAII helpers around it.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

// ---------------------------------------------------------------------------
// Kernel ABI: ioctl numbers and structures (from <linux/kvm.h>, x86_64)
// ---------------------------------------------------------------------------

pub(super) const KVMIO: u64 = 0xAE;
pub(super) const IOC_NONE: u64 = 0;
pub(super) const IOC_WRITE: u64 = 1;
pub(super) const IOC_READ: u64 = 2;

/// `_IOC(dir, type, nr, size)` as in `<asm-generic/ioctl.h>`.
pub(super) const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}

pub(super) const KVM_GET_API_VERSION: u64 = ioc(IOC_NONE, KVMIO, 0x00, 0);
pub(super) const KVM_CREATE_VM: u64 = ioc(IOC_NONE, KVMIO, 0x01, 0);
pub(super) const KVM_CHECK_EXTENSION: u64 = ioc(IOC_NONE, KVMIO, 0x03, 0);
pub(super) const KVM_GET_VCPU_MMAP_SIZE: u64 = ioc(IOC_NONE, KVMIO, 0x04, 0);
pub(super) const KVM_CREATE_VCPU: u64 = ioc(IOC_NONE, KVMIO, 0x41, 0);
pub(super) const KVM_SET_USER_MEMORY_REGION: u64 = ioc(
    IOC_WRITE,
    KVMIO,
    0x46,
    size_of::<KvmUserspaceMemoryRegion>(),
);
pub(super) const KVM_SET_TSS_ADDR: u64 = ioc(IOC_NONE, KVMIO, 0x47, 0);
pub(super) const KVM_RUN: u64 = ioc(IOC_NONE, KVMIO, 0x80, 0);
pub(super) const KVM_GET_REGS: u64 = ioc(IOC_READ, KVMIO, 0x81, size_of::<KvmRegs>());
pub(super) const KVM_SET_REGS: u64 = ioc(IOC_WRITE, KVMIO, 0x82, size_of::<KvmRegs>());
pub(super) const KVM_GET_SREGS: u64 = ioc(IOC_READ, KVMIO, 0x83, size_of::<KvmSregs>());
pub(super) const KVM_SET_SREGS: u64 = ioc(IOC_WRITE, KVMIO, 0x84, size_of::<KvmSregs>());

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
pub(super) const KVM_API_VERSION: i32 = 12;
pub(super) const KVM_CAP_USER_MEMORY: u64 = 3;
pub(super) const KVM_CAP_SET_TSS_ADDR: u64 = 4;

pub(super) const KVM_EXIT_MMIO: u32 = 6;
pub(super) const KVM_EXIT_SHUTDOWN: u32 = 8;
pub(super) const KVM_EXIT_FAIL_ENTRY: u32 = 9;
pub(super) const KVM_EXIT_INTR: u32 = 10;
pub(super) const KVM_EXIT_INTERNAL_ERROR: u32 = 17;

pub(super) fn exit_reason_name(reason: u32) -> &'static str {
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
pub(super) struct KvmUserspaceMemoryRegion {
    pub(super) slot: u32,
    pub(super) flags: u32,
    pub(super) guest_phys_addr: u64,
    pub(super) memory_size: u64,
    pub(super) userspace_addr: u64,
}
const _: () = assert!(size_of::<KvmUserspaceMemoryRegion>() == 32);

/// `struct kvm_regs` (x86).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct KvmRegs {
    pub(super) rax: u64,
    pub(super) rbx: u64,
    pub(super) rcx: u64,
    pub(super) rdx: u64,
    pub(super) rsi: u64,
    pub(super) rdi: u64,
    pub(super) rsp: u64,
    pub(super) rbp: u64,
    pub(super) r8: u64,
    pub(super) r9: u64,
    pub(super) r10: u64,
    pub(super) r11: u64,
    pub(super) r12: u64,
    pub(super) r13: u64,
    pub(super) r14: u64,
    pub(super) r15: u64,
    pub(super) rip: u64,
    pub(super) rflags: u64,
}
const _: () = assert!(size_of::<KvmRegs>() == 144);

/// `struct kvm_segment`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct KvmSegment {
    pub(super) base: u64,
    pub(super) limit: u32,
    pub(super) selector: u16,
    pub(super) type_: u8,
    pub(super) present: u8,
    pub(super) dpl: u8,
    pub(super) db: u8,
    pub(super) s: u8,
    pub(super) l: u8,
    pub(super) g: u8,
    pub(super) avl: u8,
    pub(super) unusable: u8,
    pub(super) padding: u8,
}
const _: () = assert!(size_of::<KvmSegment>() == 24);

/// `struct kvm_dtable`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct KvmDtable {
    pub(super) base: u64,
    pub(super) limit: u16,
    pub(super) padding: [u16; 3],
}
const _: () = assert!(size_of::<KvmDtable>() == 16);

/// `struct kvm_sregs` (x86).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct KvmSregs {
    pub(super) cs: KvmSegment,
    pub(super) ds: KvmSegment,
    pub(super) es: KvmSegment,
    pub(super) fs: KvmSegment,
    pub(super) gs: KvmSegment,
    pub(super) ss: KvmSegment,
    pub(super) tr: KvmSegment,
    pub(super) ldt: KvmSegment,
    pub(super) gdt: KvmDtable,
    pub(super) idt: KvmDtable,
    pub(super) cr0: u64,
    pub(super) cr2: u64,
    pub(super) cr3: u64,
    pub(super) cr4: u64,
    pub(super) cr8: u64,
    pub(super) efer: u64,
    pub(super) apic_base: u64,
    /// `(KVM_NR_INTERRUPTS + 63) / 64` with `KVM_NR_INTERRUPTS = 256`.
    pub(super) interrupt_bitmap: [u64; 4],
}
const _: () = assert!(size_of::<KvmSregs>() == 312);

/// `kvm_run.mmio`: a guest access to guest-physical memory without a memory slot.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(super) struct KvmRunMmio {
    pub(super) phys_addr: u64,
    pub(super) data: [u8; 8],
    pub(super) len: u32,
    pub(super) is_write: u8,
}
const _: () = assert!(size_of::<KvmRunMmio>() == 24);

/// `kvm_run.fail_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(super) struct KvmRunFailEntry {
    pub(super) hardware_entry_failure_reason: u64,
    pub(super) cpu: u32,
}

/// `kvm_run.internal`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(super) struct KvmRunInternal {
    pub(super) suberror: u32,
    pub(super) ndata: u32,
    pub(super) data: [u64; 16],
}

/// The exit-specific union of `struct kvm_run` (256 bytes). Only the members used here are listed.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) union KvmRunExit {
    pub(super) mmio: KvmRunMmio,
    pub(super) fail_entry: KvmRunFailEntry,
    pub(super) internal: KvmRunInternal,
    pub(super) padding: [u8; 256],
}
const _: () = assert!(size_of::<KvmRunExit>() == 256);

/// The leading part of `struct kvm_run` (up to and including the exit
/// union). The rest of the mmapped area (sync regs, I/O data pages) is not
/// described here.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct KvmRun {
    pub(super) request_interrupt_window: u8,
    pub(super) immediate_exit: u8,
    pub(super) padding1: [u8; 6],
    pub(super) exit_reason: u32,
    pub(super) ready_for_interrupt_injection: u8,
    pub(super) if_flag: u8,
    pub(super) flags: u16,
    pub(super) cr8: u64,
    pub(super) apic_base: u64,
    pub(super) exit: KvmRunExit,
}
const _: () = assert!(size_of::<KvmRun>() == 32 + 256);
const _: () = assert!(std::mem::offset_of!(KvmRun, exit_reason) == 8);
const _: () = assert!(std::mem::offset_of!(KvmRun, exit) == 32);

// ---------------------------------------------------------------------------
// Small RAII helpers
// ---------------------------------------------------------------------------

pub(super) fn os_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// `ioctl(fd, req, arg)` with an integer (or no) argument; returns the non-negative result.
pub(super) fn ioctl_val(fd: RawFd, req: u64, arg: u64, what: &str) -> Result<i32, String> {
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
pub(super) fn ioctl_ptr<T>(fd: RawFd, req: u64, arg: *mut T, what: &str) -> Result<i32, String> {
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
pub(super) fn own_fd(fd: i32) -> OwnedFd {
    debug_assert!(fd >= 0);
    // SAFETY: `fd` was just returned by the kernel as a new descriptor, and nothing
    // else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// An mmapped area, unmapped on drop.
pub(super) struct Mapping {
    pub(super) ptr: *mut libc::c_void,
    pub(super) len: usize,
}

impl Mapping {
    /// Private anonymous read/write mapping.
    pub(super) fn anonymous(len: usize) -> Result<Self, String> {
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
    pub(super) fn shared_fd(fd: RawFd, len: usize) -> Result<Self, String> {
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

pub(super) fn open_kvm() -> Result<OwnedFd, String> {
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
