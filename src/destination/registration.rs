//! Registering the RAM blocks with a userfaultfd, as one step that either completes or
//! leaves nothing registered: a guard unregisters what it registered unless kept.

use std::sync::atomic::Ordering;

use super::block::{BlockEntry, BlockTable};
use crate::error::{Error, Result};
use crate::sys::uffd::{ioctl_bit, Uffd};

/// The blocks registered so far with `uffd`. Dropped without [`Registration::keep`], it
/// unregisters them all (errors ignored: the failure that dropped it is the one reported).
pub(crate) struct Registration<'a> {
    uffd: &'a Uffd,
    registered: Vec<&'a BlockEntry>,
}

impl<'a> Registration<'a> {
    /// Registers every block of `table` for missing-page faults. Each must offer
    /// UFFDIO_COPY; whether it offers UFFDIO_ZEROPAGE is recorded in the block, and its
    /// received/requested bitmaps are cleared. On any failure, nothing stays registered.
    pub(crate) fn register(uffd: &'a Uffd, table: &'a BlockTable) -> Result<Registration<'a>> {
        let mut reg = Registration {
            uffd,
            registered: Vec::with_capacity(table.entries().len()),
        };
        for entry in table.entries() {
            let b = &entry.block;
            let ioctls = uffd
                .register_missing(b.host, b.length as usize)
                .map_err(|e| {
                    Error::os(&e, format_args!("UFFDIO_REGISTER of RAM block {}", b.name))
                })?;
            reg.registered.push(entry);
            if ioctls & ioctl_bit::COPY == 0 {
                return Err(Error::new(
                    libc::ENOTSUP,
                    format!(
                        "RAM block {}: userfaultfd offers no UFFDIO_COPY there",
                        b.name
                    ),
                ));
            }
            entry
                .zeropage_ok
                .store(ioctls & ioctl_bit::ZEROPAGE != 0, Ordering::Release);
            entry
                .poison_ok
                .store(ioctls & ioctl_bit::POISON != 0, Ordering::Release);
            // The received bits stay: they count the pages the host loaded before LISTEN.
            entry.requested.clear_all();
        }
        Ok(reg)
    }

    /// Keeps the blocks registered (the caller unregisters them at cleanup).
    pub(crate) fn keep(mut self) {
        self.registered.clear();
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        for e in &self.registered {
            let _ = self.uffd.unregister(e.block.host, e.block.length as usize);
        }
    }
}
