//! A small, safe wrapper over the userfaultfd ioctls this library uses.
//!
//! The kernel ABI structures are declared here as `repr(C)` with compile-time size checks
//! against `linux/userfaultfd.h`. The file descriptor is opened through `/dev/userfaultfd`
//! (`USERFAULTFD_IOC_NEW`) first, which lets kernel-mode faults (a KVM vCPU touching guest
//! RAM) be handled without extra privilege, and through the `userfaultfd(2)` syscall second.

use std::fs::OpenOptions;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::raw_ioctl::ioctl_errno;

/// `UFFD_API`: the only API version the kernel knows.
pub const UFFD_API: u64 = 0xAA;

/// Bits of `uffdio_api.features`.
pub mod feature {
    /// Missing-page faults on hugetlbfs mappings.
    pub const MISSING_HUGETLBFS: u64 = 1 << 4;
    /// Missing-page faults on shmem (memfd, shared anonymous) mappings.
    pub const MISSING_SHMEM: u64 = 1 << 5;
    /// `UFFD_EVENT_REMOVE` messages for MADV_REMOVE / MADV_DONTNEED on registered ranges.
    pub const EVENT_REMOVE: u64 = 1 << 3;
    /// The faulting thread's id is reported in each message.
    pub const THREAD_ID: u64 = 1 << 8;
    /// `UFFDIO_POISON` (Linux 6.6).
    pub const POISON: u64 = 1 << 14;
}

/// Bit numbers of the ioctls reported in `uffdio_api.ioctls` / `uffdio_register.ioctls`.
pub mod ioctl_bit {
    /// UFFDIO_REGISTER.
    pub const REGISTER: u64 = 1 << 0x00;
    /// UFFDIO_UNREGISTER.
    pub const UNREGISTER: u64 = 1 << 0x01;
    /// UFFDIO_WAKE.
    pub const WAKE: u64 = 1 << 0x02;
    /// UFFDIO_COPY.
    pub const COPY: u64 = 1 << 0x03;
    /// UFFDIO_ZEROPAGE.
    pub const ZEROPAGE: u64 = 1 << 0x04;
    /// UFFDIO_POISON.
    pub const POISON: u64 = 1 << 0x08;
}

/// `UFFD_EVENT_PAGEFAULT`.
pub const EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_EVENT_REMOVE`: `flags` holds `arg.remove.start`, `address` holds `arg.remove.end`.
pub const EVENT_REMOVE: u8 = 0x15;
/// `UFFD_PAGEFAULT_FLAG_WRITE`.
pub const PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
const REGISTER_MODE_MISSING: u64 = 1;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// `struct uffdio_poison`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioPoison {
    range: UffdioRange,
    mode: u64,
    updated: i64,
}

/// `struct uffd_msg`, page-fault view of its union (the only event registered for here).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdMsg {
    /// `UFFD_EVENT_*`.
    pub event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    /// `arg.pagefault.flags`.
    pub flags: u64,
    /// `arg.pagefault.address`.
    pub address: u64,
    /// `arg.pagefault.feat.ptid` (with `UFFD_FEATURE_THREAD_ID`).
    pub ptid: u32,
    pad: u32,
}

impl UffdMsg {
    /// A message of `event` at `address` with `flags`, as the kernel would send it (for
    /// tests of the code that reads messages).
    #[cfg(test)]
    pub(crate) fn for_test(event: u8, flags: u64, address: u64) -> UffdMsg {
        UffdMsg {
            event,
            flags,
            address,
            ..UffdMsg::default()
        }
    }
}

const _: () = assert!(size_of::<UffdioApi>() == 24);
const _: () = assert!(size_of::<UffdioRange>() == 16);
const _: () = assert!(size_of::<UffdioRegister>() == 32);
const _: () = assert!(size_of::<UffdioCopy>() == 40);
const _: () = assert!(size_of::<UffdioZeropage>() == 32);
const _: () = assert!(size_of::<UffdMsg>() == 32);
const _: () = assert!(size_of::<UffdioPoison>() == 32);

const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}
const UFFDIO_API: u64 = ioc(IOC_READ | IOC_WRITE, 0x3F, size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = ioc(IOC_READ | IOC_WRITE, 0x00, size_of::<UffdioRegister>());
const UFFDIO_UNREGISTER: u64 = ioc(IOC_READ, 0x01, size_of::<UffdioRange>());
const UFFDIO_WAKE: u64 = ioc(IOC_READ, 0x02, size_of::<UffdioRange>());
const UFFDIO_COPY: u64 = ioc(IOC_READ | IOC_WRITE, 0x03, size_of::<UffdioCopy>());
const UFFDIO_ZEROPAGE: u64 = ioc(IOC_READ | IOC_WRITE, 0x04, size_of::<UffdioZeropage>());
const UFFDIO_POISON: u64 = ioc(IOC_READ | IOC_WRITE, 0x08, size_of::<UffdioPoison>());
const USERFAULTFD_IOC_NEW: u64 = ioc(0, 0x00, 0);

// The values of linux/userfaultfd.h, as a cross-check of the encoding above.
const _: () = assert!(UFFDIO_API == 0xc018_aa3f);
const _: () = assert!(UFFDIO_REGISTER == 0xc020_aa00);
const _: () = assert!(UFFDIO_UNREGISTER == 0x8010_aa01);
const _: () = assert!(UFFDIO_WAKE == 0x8010_aa02);
const _: () = assert!(UFFDIO_COPY == 0xc028_aa03);
const _: () = assert!(UFFDIO_ZEROPAGE == 0xc020_aa04);
const _: () = assert!(UFFDIO_POISON == 0xc020_aa08);
const _: () = assert!(USERFAULTFD_IOC_NEW == 0xaa00);

/// How many times an `EAGAIN` from UFFDIO_COPY / UFFDIO_ZEROPAGE is retried before it is
/// reported. EAGAIN means the address space changed under the call (mremap, fork...).
const EAGAIN_RETRIES: u32 = 10_000;

/// Why a userfaultfd could not be had, with the exact missing piece.
#[derive(Debug)]
pub struct OpenError {
    /// Error of `open("/dev/userfaultfd")` or its `USERFAULTFD_IOC_NEW`.
    pub dev: io::Error,
    /// Error of the `userfaultfd(2)` syscall.
    pub syscall: io::Error,
}

impl OpenError {
    /// The errno to report: the syscall's (EPERM, ENOSYS, EMFILE...), unless the kernel
    /// lacks the syscall and the device failed for another reason than being absent.
    pub fn errno(&self) -> i32 {
        match (self.syscall.raw_os_error(), self.dev.raw_os_error()) {
            (Some(libc::ENOSYS), Some(dev)) if dev != libc::ENOENT => dev,
            (Some(errno), _) => errno,
            (None, _) => libc::EIO,
        }
    }
}

/// Reads `vm.unprivileged_userfaultfd` (None where the kernel has no such sysctl).
fn unprivileged_userfaultfd() -> Option<String> {
    std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .ok()
        .map(|s| s.trim().to_string())
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hint = match self.syscall.raw_os_error() {
            Some(libc::ENOSYS) => " (kernel built without CONFIG_USERFAULTFD)".to_string(),
            Some(libc::EPERM) => match unprivileged_userfaultfd().as_deref() {
                Some("0") => " (vm.unprivileged_userfaultfd=0: only a process with \
                    CAP_SYS_PTRACE may create a userfaultfd that also handles kernel faults; \
                    set the sysctl to 1, or give this process read-write access to \
                    /dev/userfaultfd)"
                    .to_string(),
                Some(v) => format!(
                    " (no privilege; vm.unprivileged_userfaultfd={v}; need CAP_SYS_PTRACE or \
                     read-write access to /dev/userfaultfd)"
                ),
                None => " (no privilege: need CAP_SYS_PTRACE or read-write access to \
                    /dev/userfaultfd)"
                    .to_string(),
            },
            _ => String::new(),
        };
        write!(
            f,
            "userfaultfd unavailable: /dev/userfaultfd: {}; userfaultfd(2): {}{}",
            self.dev, self.syscall, hint
        )
    }
}

/// Why a userfaultfd could not be opened or probed, keeping the kernel's errno.
#[derive(Debug)]
pub enum UffdError {
    /// Neither `/dev/userfaultfd` nor the syscall gave a descriptor.
    Unavailable(OpenError),
    /// The UFFDIO_API handshake requesting `features` failed.
    Handshake {
        /// The features requested.
        features: u64,
        /// The ioctl's error.
        error: io::Error,
    },
    /// The handshake did not offer UFFDIO_REGISTER/UNREGISTER (the missing ioctl bits).
    MissingIoctls(u64),
}

impl UffdError {
    /// The positive errno of the failure (ENOTSUP for missing ioctls).
    pub fn errno(&self) -> i32 {
        match self {
            UffdError::Unavailable(e) => e.errno(),
            UffdError::Handshake { error, .. } => error.raw_os_error().unwrap_or(libc::EIO),
            UffdError::MissingIoctls(_) => libc::ENOTSUP,
        }
    }
}

impl std::fmt::Display for UffdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UffdError::Unavailable(e) => e.fmt(f),
            UffdError::Handshake { features: 0, error } => {
                write!(f, "UFFDIO_API handshake failed: {error}")
            }
            UffdError::Handshake { features, error } => {
                write!(
                    f,
                    "UFFDIO_API handshake (features {features:#x}) failed: {error}"
                )
            }
            UffdError::MissingIoctls(bits) => write!(
                f,
                "userfaultfd lacks UFFDIO_REGISTER/UNREGISTER (missing ioctl bits {bits:#x})"
            ),
        }
    }
}

impl std::error::Error for UffdError {}

/// Outcome of a placement ioctl that did not simply succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceError {
    /// A page of the range was already present (EEXIST): the one `placed` bytes into the
    /// range, after the pages before it were placed. The whole range has been woken.
    AlreadyPresent {
        /// Bytes placed before the present page.
        placed: usize,
    },
    /// Any other failure, as a positive errno, after `placed` bytes of the range were placed
    /// (and woken) by the calls before it.
    Os {
        /// The positive errno.
        errno: i32,
        /// Bytes placed before the failure.
        placed: usize,
    },
}

/// An open, API-handshaken userfaultfd.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    features: u64,
}

pub(crate) fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Opens a raw (not yet handshaken) userfaultfd, non-blocking and close-on-exec.
fn open_raw() -> Result<OwnedFd, OpenError> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    let dev = match OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")
    {
        Ok(dev) => {
            // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and returns a new fd or -1;
            // `dev` is a valid open fd for the duration of the call.
            let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) };
            if fd >= 0 {
                // SAFETY: the ioctl just returned this fd; nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            io::Error::last_os_error()
        }
        Err(e) => e,
    };
    // SAFETY: the userfaultfd syscall takes one int of flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd >= 0 {
        // SAFETY: the syscall just returned this fd; nothing else owns it.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    }
    Err(OpenError {
        dev,
        syscall: io::Error::last_os_error(),
    })
}

fn api_handshake(fd: &OwnedFd, features: u64) -> io::Result<UffdioApi> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one `uffdio_api`, which `api` is, for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, &mut api) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(api)
}

/// What the kernel offers, probed on a throw-away userfaultfd.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// `UFFD_FEATURE_*` bits the kernel supports.
    pub features: u64,
    /// Ioctl bits the API handshake advertised.
    pub ioctls: u64,
}

/// Probes the kernel's userfaultfd features on a descriptor opened for that purpose only
/// (the kernel accepts one UFFDIO_API per descriptor).
pub fn probe() -> Result<Capabilities, UffdError> {
    let fd = open_raw().map_err(UffdError::Unavailable)?;
    let api = api_handshake(&fd, 0).map_err(|error| UffdError::Handshake { features: 0, error })?;
    Ok(Capabilities {
        features: api.features,
        ioctls: api.ioctls,
    })
}

impl Uffd {
    /// Opens a userfaultfd and performs the API handshake requesting `features`.
    pub fn open(features: u64) -> Result<Uffd, UffdError> {
        let fd = open_raw().map_err(UffdError::Unavailable)?;
        let api = api_handshake(&fd, features)
            .map_err(|error| UffdError::Handshake { features, error })?;
        let needed = ioctl_bit::REGISTER | ioctl_bit::UNREGISTER;
        if api.ioctls & needed != needed {
            return Err(UffdError::MissingIoctls(needed & !api.ioctls));
        }
        Ok(Uffd {
            fd,
            features: api.features,
        })
    }

    /// Features granted by the handshake.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The descriptor, for `poll`.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Registers `[start, start+len)` for missing-page faults; returns the ioctl bits the
    /// kernel offers on that range.
    pub fn register_missing(&self, start: usize, len: usize) -> io::Result<u64> {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one `uffdio_register`; it only changes the
        // userfault tracking of the given range, never the memory itself.
        if unsafe { libc::ioctl(self.raw_fd(), UFFDIO_REGISTER as _, &mut reg) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(reg.ioctls)
    }

    /// Unregisters `[start, start+len)`; threads blocked there are woken.
    pub fn unregister(&self, start: usize, len: usize) -> io::Result<()> {
        let range = UffdioRange {
            start: start as u64,
            len: len as u64,
        };
        // SAFETY: UFFDIO_UNREGISTER reads one `uffdio_range`.
        if unsafe { libc::ioctl(self.raw_fd(), UFFDIO_UNREGISTER as _, &range) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wakes threads blocked on faults in `[start, start+len)`.
    pub fn wake(&self, start: usize, len: usize) -> io::Result<()> {
        let range = UffdioRange {
            start: start as u64,
            len: len as u64,
        };
        // SAFETY: UFFDIO_WAKE reads one `uffdio_range`.
        if unsafe { libc::ioctl(self.raw_fd(), UFFDIO_WAKE as _, &range) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Runs one placement ioctl over `[dst, dst+len)` until it is all placed. `once(done)`
    /// issues the ioctl for the part from `done` on and returns its result, its errno and
    /// the bytes it reported placed. EAGAIN (the address space changed under the call) is
    /// retried from where the kernel stopped. EEXIST (a page is already present) wakes the
    /// range and reports [`PlaceError::AlreadyPresent`] with the bytes placed before it.
    #[inline(always)]
    fn place_loop(
        &self,
        dst: usize,
        len: usize,
        mut once: impl FnMut(usize) -> (i32, i32, i64),
    ) -> Result<(), PlaceError> {
        // The common case, inlined: the whole range in one call.
        let (rc, err, progressed) = once(0);
        if rc == 0 {
            return Ok(());
        }
        self.place_retry(dst, len, err, progressed, &mut once)
    }

    /// The rest of [`Uffd::place_loop`] after a first call that did not place everything.
    #[inline(never)]
    fn place_retry(
        &self,
        dst: usize,
        len: usize,
        mut err: i32,
        mut progressed: i64,
        once: &mut dyn FnMut(usize) -> (i32, i32, i64),
    ) -> Result<(), PlaceError> {
        let mut done = 0usize;
        let mut retries = 0u32;
        loop {
            if progressed > 0 {
                done += progressed as usize;
            }
            match err {
                libc::EAGAIN if retries < EAGAIN_RETRIES => {
                    retries += 1;
                    std::thread::yield_now();
                }
                libc::EEXIST => {
                    let _ = self.wake(dst, len);
                    return Err(PlaceError::AlreadyPresent { placed: done });
                }
                e => {
                    return Err(PlaceError::Os {
                        errno: e,
                        placed: done,
                    })
                }
            }
            if done >= len {
                return Ok(());
            }
            let rc;
            (rc, err, progressed) = once(done);
            if rc == 0 {
                return Ok(());
            }
        }
    }

    /// Atomically fills `[dst, dst+len)` with a copy of `[src, src+len)` and wakes the
    /// threads that faulted there; see `place_loop` for EAGAIN and EEXIST.
    ///
    /// # Safety
    /// `src..src+len` must be readable memory for the duration of the call.
    #[inline(always)]
    pub unsafe fn copy(&self, dst: usize, src: usize, len: usize) -> Result<(), PlaceError> {
        self.place_loop(dst, len, |done| {
            let mut arg = UffdioCopy {
                dst: (dst + done) as u64,
                src: (src + done) as u64,
                len: (len - done) as u64,
                mode: 0,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY reads and writes one `uffdio_copy`; the kernel reads the
            // source range, which the caller guarantees readable, and writes only into the
            // registered destination range, which is not Rust-owned memory.
            let err = unsafe {
                ioctl_errno(
                    self.raw_fd(),
                    UFFDIO_COPY,
                    (&mut arg as *mut UffdioCopy).cast(),
                )
            };
            (if err == 0 { 0 } else { -1 }, err, arg.copy)
        })
    }

    /// Atomically maps zero pages over `[dst, dst+len)` and wakes the faulting threads;
    /// EAGAIN and EEXIST as in [`Uffd::copy`].
    #[inline(always)]
    pub fn zeropage(&self, dst: usize, len: usize) -> Result<(), PlaceError> {
        self.place_loop(dst, len, |done| {
            let mut arg = UffdioZeropage {
                range: UffdioRange {
                    start: (dst + done) as u64,
                    len: (len - done) as u64,
                },
                mode: 0,
                zeropage: 0,
            };
            // SAFETY: UFFDIO_ZEROPAGE reads and writes one `uffdio_zeropage` and only maps
            // zero pages into the registered range, which is not Rust-owned memory.
            let err = unsafe {
                ioctl_errno(
                    self.raw_fd(),
                    UFFDIO_ZEROPAGE,
                    (&mut arg as *mut UffdioZeropage).cast(),
                )
            };
            (if err == 0 { 0 } else { -1 }, err, arg.zeropage)
        })
    }

    /// Poisons `[dst, dst+len)` (UFFDIO_POISON, Linux 6.6): any later access there raises
    /// SIGBUS (a KVM vCPU gets a memory-failure signal); threads blocked there are woken.
    /// EAGAIN is retried as for [`Uffd::copy`]; EEXIST reports the present page.
    pub fn poison(&self, dst: usize, len: usize) -> Result<(), PlaceError> {
        self.place_loop(dst, len, |done| {
            let mut arg = UffdioPoison {
                range: UffdioRange {
                    start: (dst + done) as u64,
                    len: (len - done) as u64,
                },
                mode: 0,
                updated: 0,
            };
            // SAFETY: UFFDIO_POISON reads and writes one `uffdio_poison` and only installs
            // poison markers in the registered range, which is not Rust-owned memory.
            let rc = unsafe { libc::ioctl(self.raw_fd(), UFFDIO_POISON as _, &mut arg) };
            (rc, if rc == 0 { 0 } else { last_errno() }, arg.updated)
        })
    }

    /// Reads as many pending messages as fit in `buf` without blocking; returns how many.
    /// `Ok(0)` means none was read now: none was pending (EAGAIN), or a signal interrupted
    /// the read (EINTR: finding the queue empty, the kernel checks for a pending signal
    /// before it honours O_NONBLOCK, so a signal handler without SA_RESTART makes even
    /// a non-blocking read fail so); either way, read again. Other errors are returned as
    /// they are (the fault thread tells transient ones from fatal ones).
    pub fn read_messages(&self, buf: &mut [UffdMsg]) -> io::Result<usize> {
        let bytes = std::mem::size_of_val(buf);
        // SAFETY: `buf` is a valid, writable slice of plain-old-data messages of `bytes` bytes;
        // the kernel writes whole `uffd_msg` records into it.
        let n = unsafe { libc::read(self.raw_fd(), buf.as_mut_ptr().cast(), bytes) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => Ok(0),
                _ => Err(err),
            };
        }
        let n = n as usize;
        if n % size_of::<UffdMsg>() != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("short userfaultfd read of {n} bytes"),
            ));
        }
        Ok(n / size_of::<UffdMsg>())
    }
}
