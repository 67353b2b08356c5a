//! The destination's default return-path sender: page requests and SHUT in QEMU's format,
//! for hypervisors that give the library a byte writer instead of their own callbacks.

use crate::block::BlockName;
use crate::wire::{encode_return_path, ReturnPathMsg, RETURN_PATH_HEADER_LEN};

/// Room for the largest message sent here (REQ_PAGES_ID with a 255-byte name).
pub const MAX_MESSAGE: usize = RETURN_PATH_HEADER_LEN + 8 + 4 + 1 + 255;

/// Encodes a page request into `buf`: REQ_PAGES_ID when `block` is named (the fault thread
/// names it whenever it differs from the previous request, and after a return-path
/// reset), REQ_PAGES otherwise. Returns the length, or a positive errno.
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
    encode_return_path(buf, &msg).map_err(|e| -e.to_errno())
}

/// Encodes SHUT with the failure flag.
pub fn encode_shut(buf: &mut [u8; MAX_MESSAGE], failed: bool) -> Result<usize, i32> {
    encode_return_path(
        buf,
        &ReturnPathMsg::Shut {
            failed: failed as u32,
        },
    )
    .map_err(|e| -e.to_errno())
}
