//! The destination's default return-path sender: page requests and SHUT in QEMU's format,
//! written whole to a byte writer. Used by the C layer (when a hypervisor gives
//! `write_return_path` instead of its own callbacks) and by the demo.

use super::block::BlockName;
use crate::wire::{encode_return_path, MessageWriter, ReturnPathMsg, RETURN_PATH_HEADER_LEN};

/// Room for the largest message sent here (REQ_PAGES_ID with a 255-byte name).
pub const MAX_MESSAGE: usize = RETURN_PATH_HEADER_LEN + 8 + 4 + 1 + 255;

/// Sends QEMU return-path messages through `W`, one whole message per write.
#[derive(Debug, Clone)]
pub struct ReturnPathSender<W> {
    writer: W,
}

impl<W: MessageWriter> ReturnPathSender<W> {
    /// A sender writing to `writer`.
    pub fn new(writer: W) -> Self {
        ReturnPathSender { writer }
    }

    /// Requests `length` bytes at `offset`: REQ_PAGES_ID when `block` is named (the fault
    /// thread names it whenever it differs from the previous request, and after a
    /// return-path reset), REQ_PAGES otherwise. Fits [`crate::IncomingHooks::request_page`].
    pub fn request_page(
        &self,
        block: Option<&BlockName>,
        offset: u64,
        length: u64,
    ) -> Result<(), i32> {
        let mut buf = [0u8; MAX_MESSAGE];
        let len = encode_page_request(&mut buf, block, offset, length)?;
        self.writer.write_message(&buf[..len])
    }

    /// Sends SHUT with the failure flag.
    pub fn shut(&self, failed: bool) -> Result<(), i32> {
        let mut buf = [0u8; MAX_MESSAGE];
        let len = encode_shut(&mut buf, failed)?;
        self.writer.write_message(&buf[..len])
    }
}

/// Encodes a page request into `buf` (see [`ReturnPathSender::request_page`]). Returns the
/// length, or a positive errno.
pub fn encode_page_request(
    buf: &mut [u8; MAX_MESSAGE],
    block: Option<&BlockName>,
    offset: u64,
    length: u64,
) -> Result<usize, i32> {
    let len = u32::try_from(length).map_err(|_| libc::EINVAL)?;
    let msg = match block {
        Some(name) => ReturnPathMsg::ReqPagesId {
            start: offset,
            len,
            id: name.as_str().as_bytes(),
        },
        None => ReturnPathMsg::ReqPages { start: offset, len },
    };
    encode_return_path(buf, &msg).map_err(|e| e.errno())
}

/// Encodes SHUT with the failure flag.
pub fn encode_shut(buf: &mut [u8; MAX_MESSAGE], failed: bool) -> Result<usize, i32> {
    encode_return_path(
        buf,
        &ReturnPathMsg::Shut {
            failed: failed as u32,
        },
    )
    .map_err(|e| e.errno())
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    #[test]
    fn requests_and_shut_are_whole_qemu_messages() {
        let sent = Mutex::new(Vec::<Vec<u8>>::new());
        let rp = ReturnPathSender::new(|b: &[u8]| {
            sent.lock().push(b.to_vec());
            Ok(())
        });
        let name = BlockName::new("pc.ram").unwrap();
        rp.request_page(Some(&name), 0x2000, 0x1000).unwrap();
        rp.request_page(None, 0x3000, 0x1000).unwrap();
        rp.shut(true).unwrap();
        let sent = sent.lock();
        // REQ_PAGES_ID: type 3, length 8 + 4 + 1 + 6.
        assert_eq!(&sent[0][..4], &[0, 3, 0, 19]);
        assert_eq!(&sent[0][4..12], &0x2000u64.to_be_bytes());
        assert_eq!(&sent[0][12..16], &0x1000u32.to_be_bytes());
        assert_eq!(&sent[0][16..], b"\x06pc.ram");
        // REQ_PAGES: type 4, length 12.
        assert_eq!(&sent[1][..4], &[0, 4, 0, 12]);
        // SHUT: type 1, length 4, failed = 1.
        assert_eq!(sent[2], [0, 1, 0, 4, 0, 0, 0, 1]);
    }

    #[test]
    fn a_request_over_4_gib_is_refused_and_writer_errors_pass_through() {
        let rp = ReturnPathSender::new(|_: &[u8]| Err(libc::EPIPE));
        assert_eq!(rp.request_page(None, 0, 1 << 32), Err(libc::EINVAL));
        assert_eq!(rp.shut(false), Err(libc::EPIPE));
    }
}
