//! Byte-exact codecs for the postcopy messages QEMU puts on the migration stream.
//!
//! Two directions, two framings (all integers big-endian unless said otherwise):
//!
//! * **Commands**, source -> destination: `u8 0x08`
//!   ([`QEMU_VM_COMMAND`](crate::wire::QEMU_VM_COMMAND)), `be16 cmd`, `be16 len`, then
//!   `len` payload bytes. See [`Command`](crate::wire::Command) and
//!   [`CommandMsg`](crate::wire::CommandMsg) (`commands.rs`).
//! * **Return-path messages**, destination -> source: `be16 type`, `be16 len`, then `len`
//!   bytes. See [`ReturnPathType`](crate::wire::ReturnPathType) and
//!   [`ReturnPathMsg`](crate::wire::ReturnPathMsg) (`return_path.rs`).
//!
//! plus the **received-bitmap block** the destination writes after a return-path
//! `RECV_BITMAP` message: `be64 size`, `size` bytes of a little-endian bitmap, and the
//! `be64` end marker [`RECV_BITMAP_END_MARK`](crate::wire::RECV_BITMAP_END_MARK) (see
//! [`encode_recv_bitmap`](crate::wire::encode_recv_bitmap), `recv_bitmap.rs`).
//!
//! Encoders write into a caller buffer and return the number of bytes written; a buffer
//! that is too small is [`WireError::BufferTooSmall`](crate::wire::WireError::BufferTooSmall)
//! (errno `ENOSPC`) and nothing useful is written. Decoders borrow from their input where
//! they return names or ranges. No decoder panics or reads past its input, whatever bytes
//! it is given (`cursor.rs` checks every read and write).
//!
//! For a reader on a stream, [`decode_command_header`](crate::wire::decode_command_header)
//! and [`decode_return_path_header`](crate::wire::decode_return_path_header) need only the
//! fixed-size header ([`COMMAND_HEADER_LEN`](crate::wire::COMMAND_HEADER_LEN),
//! [`RETURN_PATH_HEADER_LEN`](crate::wire::RETURN_PATH_HEADER_LEN) bytes) and tell how many
//! bytes the whole message has; the header check already rejects unknown kinds and lengths
//! that no valid message of that kind can have.

mod commands;
mod cursor;
mod error;
mod recv_bitmap;
mod return_path;

pub use commands::*;
pub use error::*;
pub use recv_bitmap::*;
pub use return_path::*;

/// The section-type byte that opens every command on the migration stream.
pub const QEMU_VM_COMMAND: u8 = 0x08;
/// Bytes of a command header: marker, `be16 cmd`, `be16 len`.
pub const COMMAND_HEADER_LEN: usize = 5;
/// Bytes of a return-path header: `be16 type`, `be16 len`.
pub const RETURN_PATH_HEADER_LEN: usize = 4;
/// Largest return-path payload the QEMU source accepts (its receive buffer).
pub const RETURN_PATH_MAX_LEN: usize = 512;
/// Most (start, length) pairs QEMU puts in one `POSTCOPY_RAM_DISCARD` command. The
/// decoder accepts any count that fits in the 16-bit payload length.
pub const MAX_DISCARDS_PER_COMMAND: usize = 12;
/// The only `POSTCOPY_RAM_DISCARD` payload version.
pub const DISCARD_VERSION: u8 = 0;
/// Longest RAM block name (or request id) on the wire: its length travels in one byte.
pub const MAX_NAME_LEN: usize = 255;
/// Bytes of one discard range: `be64 start`, `be64 length`.
pub const DISCARD_RANGE_LEN: usize = 16;
/// Smallest `POSTCOPY_RAM_DISCARD` payload QEMU's destination accepts
/// (version, name length, one name byte, terminator, one range).
pub const DISCARD_MIN_PAYLOAD_LEN: usize = 20;
/// Payload length of a `POSTCOPY_ADVISE` that carries page sizes (the other form is empty).
pub const ADVISE_PAYLOAD_LEN: usize = 16;
/// Payload length of a return-path `REQ_PAGES`.
pub const REQ_PAGES_LEN: usize = 12;
/// Marker closing a received-bitmap block.
pub const RECV_BITMAP_END_MARK: u64 = 0x0123_4567_89ab_cdef;

/// A byte sink for whole QEMU messages (the return path, the migration stream): each call
/// writes one complete message, and an `Err` is a positive errno. Any
/// `Fn(&[u8]) -> Result<(), i32>` is one.
pub trait MessageWriter: Send + Sync {
    /// Writes `bytes`, one whole message.
    fn write_message(&self, bytes: &[u8]) -> Result<(), i32>;
}

impl<F: Fn(&[u8]) -> Result<(), i32> + Send + Sync> MessageWriter for F {
    fn write_message(&self, bytes: &[u8]) -> Result<(), i32> {
        self(bytes)
    }
}
