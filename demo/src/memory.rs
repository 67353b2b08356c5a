//! Guest memory for the demo: private anonymous, shared memfd, or hugetlbfs (memfd with
//! MFD_HUGETLB), plus a guard that reserves huge pages and puts the old value back.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use postcopy_ram::{Backing, RamBlock};

/// The kind of memory backing guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Private anonymous memory, 4 KiB pages.
    Anon,
    /// A shared memfd (shmem), 4 KiB pages.
    Memfd,
    /// A hugetlbfs memfd, 2 MiB pages.
    Hugetlb,
}

impl Kind {
    /// Parses `anon`, `memfd` or `hugetlb`.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "anon" => Some(Kind::Anon),
            "memfd" | "shmem" => Some(Kind::Memfd),
            "hugetlb" | "hugetlbfs" => Some(Kind::Hugetlb),
            _ => None,
        }
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Anon => "anon",
            Kind::Memfd => "memfd",
            Kind::Hugetlb => "hugetlb",
        }
    }

    /// Its page size.
    pub fn page_size(self) -> usize {
        match self {
            Kind::Hugetlb => 2 << 20,
            _ => 4096,
        }
    }
}

/// A mapped guest memory region.
pub struct GuestMemory {
    addr: *mut u8,
    len: usize,
    kind: Kind,
    fd: Option<OwnedFd>,
}

// SAFETY: plain memory shared between the demo's threads, which coordinate through the
// migration protocol; the pointer is only handed out.
unsafe impl Send for GuestMemory {}
// SAFETY: as above.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Maps `len` bytes (a multiple of the kind's page size) of `kind`.
    pub fn new(kind: Kind, len: usize) -> io::Result<GuestMemory> {
        if len == 0 || len % kind.page_size() != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "size must be a multiple of the page size",
            ));
        }
        let fd = match kind {
            Kind::Anon => None,
            Kind::Memfd | Kind::Hugetlb => {
                let flags = libc::MFD_CLOEXEC
                    | if kind == Kind::Hugetlb {
                        libc::MFD_HUGETLB
                    } else {
                        0
                    };
                // SAFETY: memfd_create with a static NUL-terminated name.
                let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), flags) };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: just created; owned here.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                // SAFETY: plain syscall on our descriptor.
                if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Some(fd)
            }
        };
        let (flags, raw_fd) = match &fd {
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
            Some(fd) => (libc::MAP_SHARED, fd.as_raw_fd()),
        };
        // SAFETY: a fresh mapping at a kernel-chosen address.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw_fd,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(GuestMemory {
            addr: addr.cast(),
            len,
            kind,
            fd,
        })
    }

    /// Start address.
    pub fn addr(&self) -> *mut u8 {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether empty (never).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The memory as a byte slice.
    ///
    /// # Safety
    /// No other thread may write the memory while the slice lives, and on a postcopy
    /// destination every page must have arrived (or reading blocks until it does).
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes long; the caller handles concurrency.
        unsafe { std::slice::from_raw_parts(self.addr, self.len) }
    }

    /// The block description the library needs.
    pub fn block(&self, name: &str) -> RamBlock {
        RamBlock {
            name: name.into(),
            host: self.addr as usize,
            offset: 0,
            length: self.len as u64,
            page_size: self.kind.page_size() as u64,
            backing: match &self.fd {
                None => Backing::Anonymous { shared: false },
                Some(fd) => Backing::File {
                    fd: fd.as_raw_fd(),
                    offset: 0,
                    shared: true,
                },
            },
            opaque: 0,
        }
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping this value owns.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Raises `vm.nr_hugepages` so that `extra` more 2 MiB pages are free, and puts the old
/// value back on drop.
pub struct HugePageReservation {
    old: Option<u64>,
}

fn free_huge_pages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("HugePages_Free:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

impl HugePageReservation {
    /// Reserves `pages` free 2 MiB pages, or says why it cannot.
    pub fn reserve(pages: u64) -> Result<HugePageReservation, String> {
        let free = free_huge_pages();
        if free >= pages {
            return Ok(HugePageReservation { old: None });
        }
        let old: u64 = std::fs::read_to_string(NR_HUGEPAGES)
            .map_err(|e| format!("{NR_HUGEPAGES}: {e}"))?
            .trim()
            .parse()
            .map_err(|e| format!("{NR_HUGEPAGES}: {e}"))?;
        let want = old + (pages - free);
        std::fs::write(NR_HUGEPAGES, want.to_string())
            .map_err(|e| format!("raising {NR_HUGEPAGES} to {want}: {e}"))?;
        let guard = HugePageReservation { old: Some(old) };
        let got = free_huge_pages();
        if got < pages {
            return Err(format!(
                "asked for {pages} free 2 MiB huge pages, the kernel could provide {got}"
            ));
        }
        Ok(guard)
    }
}

impl Drop for HugePageReservation {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            if let Err(e) = std::fs::write(NR_HUGEPAGES, old.to_string()) {
                eprintln!("warning: could not restore {NR_HUGEPAGES} to {old}: {e}");
            }
        }
    }
}
