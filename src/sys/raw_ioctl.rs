//! The placement ioctls' system call, with as few call frames alive across it as the raw
//! loop (issue 12): returns 0 or a positive errno.

/// `ioctl(fd, request, arg)` as one `syscall` instruction, inlined into its caller,
/// returning 0 or a positive errno: no libc frame and no thread-local errno. After a
/// placement ioctl the return stack buffer is empty (the kernel's own call depth, with this
/// CPU's return-address mitigations), so every call frame alive across the syscall costs a
/// mispredicted return on the way back; a placement is as fast as the raw ioctl only with
/// as few frames as the raw loop (BENCHMARKS.md, issue 12).
///
/// # Safety
/// As for `libc::ioctl` with the same arguments.
#[inline(always)]
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) unsafe fn ioctl_errno(fd: i32, request: u64, arg: *mut libc::c_void) -> i32 {
    let ret: isize;
    // SAFETY: the Linux x86_64 system call ABI: number in rax, arguments in rdi, rsi, rdx;
    // the kernel returns in rax (-errno on failure) and clobbers rcx and r11, nothing else.
    // What the kernel reads or writes through `arg` is the caller's contract.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") libc::SYS_ioctl as isize => ret,
            in("rdi") fd as isize,
            in("rsi") request as isize,
            in("rdx") arg,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        -ret as i32
    } else {
        0
    }
}

/// `ioctl(fd, request, arg)` returning 0 or a positive errno (libc, other targets).
///
/// # Safety
/// As for `libc::ioctl` with the same arguments.
#[inline(always)]
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub(crate) unsafe fn ioctl_errno(fd: i32, request: u64, arg: *mut libc::c_void) -> i32 {
    // SAFETY: forwarded from the caller.
    if unsafe { libc::ioctl(fd, request as _, arg) } == 0 {
        0
    } else {
        super::uffd::last_errno()
    }
}
