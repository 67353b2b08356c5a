//! An owned anonymous memory mapping (temporary and zero pages).

use std::io;

/// A private anonymous mapping, unmapped on drop.
#[derive(Debug)]
pub struct AnonMapping {
    addr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; it may be moved between and
// shared among threads (writers are coordinated by the owner).
unsafe impl Send for AnonMapping {}
// SAFETY: as above; `&AnonMapping` only hands out the address.
unsafe impl Sync for AnonMapping {}

impl AnonMapping {
    /// Maps `len` bytes of zeroed, readable and writable private anonymous memory.
    pub fn new(len: usize) -> io::Result<AnonMapping> {
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address touches no existing
        // memory; the result is checked before use.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(AnonMapping {
            addr: addr.cast(),
            len,
        })
    }

    /// Start address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: `new` refuses a zero length).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for AnonMapping {
    fn drop(&mut self) {
        // SAFETY: `addr..addr+len` is exactly the mapping this value owns; nobody may use it
        // after drop (pointers handed out are documented as valid until the owner goes).
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}
