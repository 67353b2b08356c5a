//! The source side: batching discard ranges into QEMU-sized discard commands
//! (QEMU's `postcopy_discard_send_*`).

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use crate::error::{Error, Result};

/// At most this many ranges go in one discard command (as QEMU: keeps it around 200 bytes).
pub const MAX_DISCARDS_PER_COMMAND: usize = 12;

/// What the library needs from the hypervisor on the source.
pub trait SourceHooks: Send + Sync {
    /// Sends one discard command for block `name`: `starts[i]`, `lengths[i]` are byte
    /// offsets and lengths within the block (1 to [`MAX_DISCARDS_PER_COMMAND`] ranges).
    fn send_discard(
        &self,
        name: &str,
        starts: &[u64],
        lengths: &[u64],
    ) -> std::result::Result<(), i32>;
}

/// The source of a postcopy migration (QEMU's `MigrationState`, postcopy RAM part).
pub struct Source {
    hooks: Box<dyn SourceHooks>,
    target_page_bits: u32,
    commands_sent: AtomicU64,
    ranges_sent: AtomicU64,
    errors: AtomicU64,
    last_errno: AtomicI32,
}

/// Discard ranges of one block being collected (QEMU's `PostcopyDiscardState`).
#[derive(Debug)]
pub struct DiscardBatch {
    name: String,
    offset: u64,
    starts: [u64; MAX_DISCARDS_PER_COMMAND],
    lengths: [u64; MAX_DISCARDS_PER_COMMAND],
    pending: usize,
    ranges: u64,
    commands: u64,
    errno: i32,
}

impl Source {
    /// A source whose bitmaps count pages of `target_page_size` bytes (a power of two).
    pub fn new(hooks: Box<dyn SourceHooks>, target_page_size: u64) -> Result<Source> {
        if !target_page_size.is_power_of_two() {
            return Err(Error::invalid(format!(
                "target page size {target_page_size} is not a power of two"
            )));
        }
        Ok(Source {
            hooks,
            target_page_bits: target_page_size.trailing_zeros(),
            commands_sent: AtomicU64::new(0),
            ranges_sent: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_errno: AtomicI32::new(0),
        })
    }

    /// The target page size.
    pub fn target_page_size(&self) -> u64 {
        1 << self.target_page_bits
    }

    /// Starts the discards of block `name`, whose first page is bit `offset` of the
    /// migration bitmap.
    pub fn discard_begin(&self, offset: u64, name: &str) -> Result<DiscardBatch> {
        if name.is_empty() || name.len() > 255 || name.contains('\0') {
            return Err(Error::invalid(format!(
                "discard_send_init: block name {name:?} must be 1 to 255 bytes"
            )));
        }
        Ok(DiscardBatch {
            name: name.to_owned(),
            offset,
            starts: [0; MAX_DISCARDS_PER_COMMAND],
            lengths: [0; MAX_DISCARDS_PER_COMMAND],
            pending: 0,
            ranges: 0,
            commands: 0,
            errno: 0,
        })
    }

    /// Queues the discard of `length` pages from bitmap bit `start` (which counts from the
    /// whole migration bitmap, as QEMU's); sends a command when 12 are queued.
    pub fn discard_range(&self, batch: &mut DiscardBatch, start: u64, length: u64) -> Result<()> {
        let queued = self.queue_range(batch, start, length);
        if queued.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        queued?;
        if batch.pending == MAX_DISCARDS_PER_COMMAND {
            self.flush(batch)?;
        }
        Ok(())
    }

    fn queue_range(&self, batch: &mut DiscardBatch, start: u64, length: u64) -> Result<()> {
        if start < batch.offset || length == 0 {
            return Err(Error::invalid(format!(
                "discard_send_range {}: range [{start}, +{length}) is empty or before the block's first bit {}",
                batch.name, batch.offset
            )));
        }
        let byte_start = (start - batch.offset)
            .checked_mul(1 << self.target_page_bits)
            .ok_or_else(|| Error::invalid("discard_send_range: start overflows"))?;
        let byte_len = length
            .checked_mul(1 << self.target_page_bits)
            .ok_or_else(|| Error::invalid("discard_send_range: length overflows"))?;
        batch.starts[batch.pending] = byte_start;
        batch.lengths[batch.pending] = byte_len;
        batch.pending += 1;
        batch.ranges += 1;
        Ok(())
    }

    fn flush(&self, batch: &mut DiscardBatch) -> Result<()> {
        let n = batch.pending;
        batch.pending = 0;
        if n == 0 {
            return Ok(());
        }
        batch.commands += 1;
        match self
            .hooks
            .send_discard(&batch.name, &batch.starts[..n], &batch.lengths[..n])
        {
            Ok(()) => {
                self.commands_sent.fetch_add(1, Ordering::Relaxed);
                self.ranges_sent.fetch_add(n as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(errno) => {
                batch.errno = errno;
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.last_errno.store(errno, Ordering::Relaxed);
                Err(Error::new(
                    errno,
                    format!(
                        "sending a discard command for {} ({n} ranges) failed: {}",
                        batch.name,
                        std::io::Error::from_raw_os_error(errno)
                    ),
                ))
            }
        }
    }

    /// Sends what is still queued and ends the block's discards. Fails if this or any
    /// earlier command of the batch could not be sent.
    pub fn discard_finish(&self, mut batch: DiscardBatch) -> Result<DiscardSummary> {
        self.flush(&mut batch)?;
        log::debug!(
            "discards for {}: {} ranges in {} commands",
            batch.name,
            batch.ranges,
            batch.commands
        );
        if batch.errno != 0 {
            return Err(Error::new(
                batch.errno,
                format!("a discard command for {} was not sent", batch.name),
            ));
        }
        Ok(DiscardSummary {
            ranges: batch.ranges,
            commands: batch.commands,
        })
    }

    /// Commands sent, ranges sent, failures (ranges refused and commands not sent), last
    /// errno of a failed send.
    pub fn counters(&self) -> (u64, u64, u64, i32) {
        (
            self.commands_sent.load(Ordering::Relaxed),
            self.ranges_sent.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            self.last_errno.load(Ordering::Relaxed),
        )
    }
}

/// What one block's discards amounted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscardSummary {
    /// Ranges queued.
    pub ranges: u64,
    /// Commands sent.
    pub commands: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Sent = Arc<Mutex<Vec<(String, Vec<u64>, Vec<u64>)>>>;
    struct Recorder(Sent);
    impl SourceHooks for Recorder {
        fn send_discard(
            &self,
            name: &str,
            starts: &[u64],
            lengths: &[u64],
        ) -> std::result::Result<(), i32> {
            self.0
                .lock()
                .unwrap()
                .push((name.into(), starts.into(), lengths.into()));
            Ok(())
        }
    }

    #[test]
    fn batches_of_twelve_in_bytes() {
        let sent: Sent = Default::default();
        let src = Source::new(Box::new(Recorder(sent.clone())), 4096).unwrap();
        let mut b = src.discard_begin(100, "pc.ram").unwrap();
        for i in 0..25 {
            src.discard_range(&mut b, 100 + 2 * i, 1).unwrap();
        }
        assert_eq!(sent.lock().unwrap().len(), 2);
        let summary = src.discard_finish(b).unwrap();
        assert_eq!(
            summary,
            DiscardSummary {
                ranges: 25,
                commands: 3
            }
        );
        let sent = sent.lock().unwrap();
        assert_eq!(sent[0].1.len(), 12);
        assert_eq!(sent[2].1, vec![48 * 4096]);
        assert_eq!(sent[0].1[1], 2 * 4096);
        assert!(sent
            .iter()
            .all(|c| c.0 == "pc.ram" && c.2.iter().all(|&l| l == 4096)));
    }
}
