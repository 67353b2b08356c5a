//! One VM with one vCPU running the guest program: setup, the run loop, entry points.

use std::fmt::Write as _;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::abi::*;
use super::guest::*;

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
                if let Some((addr, code)) = crate::sigbus::take_vcpu_failure() {
                    return Err(format!(
                        "memory failure: the vCPU touched a poisoned page (SIGBUS si_code {code}{}) at host address {addr:#x}, after {} exits",
                        if code == crate::sigbus::BUS_MCEERR_AR { ", BUS_MCEERR_AR" } else { "" },
                        res.exits
                    ));
                }
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
    // A postcopy abort poisons lost pages: KVM then signals this thread (see `sigbus`).
    crate::sigbus::mark_vcpu_thread();
    let (npages, stride) = validate(ram, ram_len, opts)?;
    let vm = setup_vm(ram, ram_len, opts, npages, stride)?;
    if let Some(tid) = &opts.vcpu_tid {
        // SAFETY: gettid has no preconditions.
        tid.store(
            unsafe { libc::gettid() },
            std::sync::atomic::Ordering::SeqCst,
        );
    }
    if let Some(gate) = &opts.start_gate {
        while gate.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
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
