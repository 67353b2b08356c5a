//! The source's default discard sender: POSTCOPY_RAM_DISCARD commands in QEMU's format,
//! written whole to a byte writer. Used by the C layer (when a hypervisor gives
//! `write_command` instead of `send_discard`) and by the demo.

use super::discard_batch::SourceHooks;
use crate::wire::{encode_discard_pairs, MessageWriter, COMMAND_HEADER_LEN, DISCARD_RANGE_LEN};

/// Room for the largest command sent here: 12 ranges of a block with a 255-byte name.
pub const MAX_DISCARD_COMMAND: usize = COMMAND_HEADER_LEN
    + 2
    + 255
    + 1
    + DISCARD_RANGE_LEN * super::discard_batch::MAX_DISCARDS_PER_COMMAND;

/// Writes each batch of discard ranges as one POSTCOPY_RAM_DISCARD command through `W`:
/// a [`SourceHooks`] for a source that owns its migration stream.
#[derive(Debug, Clone)]
pub struct DiscardCommandWriter<W> {
    writer: W,
}

impl<W: MessageWriter> DiscardCommandWriter<W> {
    /// A sender writing to `writer`.
    pub fn new(writer: W) -> Self {
        DiscardCommandWriter { writer }
    }
}

impl<W: MessageWriter> SourceHooks for DiscardCommandWriter<W> {
    fn send_discard(&self, name: &str, starts: &[u64], lengths: &[u64]) -> Result<(), i32> {
        let mut buf = [0u8; MAX_DISCARD_COMMAND];
        let len = encode_discard_pairs(&mut buf, name.as_bytes(), starts, lengths)
            .map_err(|e| e.errno())?;
        self.writer.write_message(&buf[..len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode_command, CommandMsg};
    use parking_lot::Mutex;

    #[test]
    fn a_batch_is_one_whole_discard_command() {
        let sent = Mutex::new(Vec::<Vec<u8>>::new());
        let w = DiscardCommandWriter::new(|b: &[u8]| {
            sent.lock().push(b.to_vec());
            Ok(())
        });
        let name = "x".repeat(255);
        let starts = [0x1000u64; 12];
        let lengths = [0x1000u64; 12];
        w.send_discard(&name, &starts, &lengths).unwrap();
        let sent = sent.lock();
        let (msg, used) = decode_command(&sent[0]).unwrap();
        assert_eq!(used, sent[0].len());
        let CommandMsg::PostcopyRamDiscard(d) = msg else {
            panic!("not a discard: {msg:?}")
        };
        assert_eq!(d.name(), name.as_bytes());
        assert_eq!(d.range_count(), 12);
    }

    #[test]
    fn encoder_and_writer_errors_are_errnos() {
        let w = DiscardCommandWriter::new(|_: &[u8]| Err(libc::EPIPE));
        assert_eq!(w.send_discard("", &[0], &[1]), Err(libc::EINVAL));
        assert_eq!(w.send_discard("ram", &[0], &[1]), Err(libc::EPIPE));
    }
}
