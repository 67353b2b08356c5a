//! The C types of the wire codecs (`pcr_wire_*`) and of the discard walk.

use std::ffi::{c_char, c_int, c_void};

use crate::wire::{Command, ReturnPathType};

/// Command numbers of the command envelope (`PcrWireCommand.cmd`,
/// `PcrWireHeader.kind`).
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum PcrWireCmd {
    /// OPEN_RETURN_PATH: no payload.
    PCR_WIRE_CMD_OPEN_RETURN_PATH = 1,
    /// PING: `value`.
    PCR_WIRE_CMD_PING = 2,
    /// POSTCOPY_ADVISE: empty, or the two page sizes when `has_page_sizes`.
    PCR_WIRE_CMD_POSTCOPY_ADVISE = 3,
    /// POSTCOPY_LISTEN: no payload.
    PCR_WIRE_CMD_POSTCOPY_LISTEN = 4,
    /// POSTCOPY_RUN: no payload.
    PCR_WIRE_CMD_POSTCOPY_RUN = 5,
    /// POSTCOPY_RAM_DISCARD: block name and ranges (pcr_wire_encode_discard /
    /// pcr_wire_decode_discard).
    PCR_WIRE_CMD_POSTCOPY_RAM_DISCARD = 6,
    /// PACKAGED: `value` is the length of the package that follows.
    PCR_WIRE_CMD_PACKAGED = 7,
    /// ENABLE_COLO: no payload (COLO, not postcopy; known so that a reader can step over
    /// it).
    PCR_WIRE_CMD_ENABLE_COLO = 8,
    /// POSTCOPY_RESUME: no payload.
    PCR_WIRE_CMD_POSTCOPY_RESUME = 9,
    /// RECV_BITMAP: block name.
    PCR_WIRE_CMD_RECV_BITMAP = 10,
    /// SWITCHOVER_START (QEMU 10.0): no payload.
    PCR_WIRE_CMD_SWITCHOVER_START = 11,
}

/// Return-path message types (`PcrWireRpMessage.rp_type`, `PcrWireHeader.kind`).
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum PcrWireRpType {
    /// SHUT: `value` is the failed flag.
    PCR_WIRE_RP_SHUT = 1,
    /// PONG: `value` of the PING.
    PCR_WIRE_RP_PONG = 2,
    /// REQ_PAGES_ID: `start`, `len` and the block `name`.
    PCR_WIRE_RP_REQ_PAGES_ID = 3,
    /// REQ_PAGES: `start`, `len` (block = the one named last).
    PCR_WIRE_RP_REQ_PAGES = 4,
    /// RECV_BITMAP: block `name`; the received-bitmap block follows on the stream.
    PCR_WIRE_RP_RECV_BITMAP = 5,
    /// RESUME_ACK: `value`.
    PCR_WIRE_RP_RESUME_ACK = 6,
    /// SWITCHOVER_ACK (QEMU 8.1): no payload.
    PCR_WIRE_RP_SWITCHOVER_ACK = 7,
}

// The C numbers are the codec's numbers.
const _: () = {
    use PcrWireCmd as C;
    assert!(C::PCR_WIRE_CMD_OPEN_RETURN_PATH as u16 == Command::OpenReturnPath as u16);
    assert!(C::PCR_WIRE_CMD_PING as u16 == Command::Ping as u16);
    assert!(C::PCR_WIRE_CMD_POSTCOPY_ADVISE as u16 == Command::PostcopyAdvise as u16);
    assert!(C::PCR_WIRE_CMD_POSTCOPY_LISTEN as u16 == Command::PostcopyListen as u16);
    assert!(C::PCR_WIRE_CMD_POSTCOPY_RUN as u16 == Command::PostcopyRun as u16);
    assert!(C::PCR_WIRE_CMD_POSTCOPY_RAM_DISCARD as u16 == Command::PostcopyRamDiscard as u16);
    assert!(C::PCR_WIRE_CMD_PACKAGED as u16 == Command::Packaged as u16);
    assert!(C::PCR_WIRE_CMD_ENABLE_COLO as u16 == Command::EnableColo as u16);
    assert!(C::PCR_WIRE_CMD_SWITCHOVER_START as u16 == Command::SwitchoverStart as u16);
    assert!(C::PCR_WIRE_CMD_POSTCOPY_RESUME as u16 == Command::PostcopyResume as u16);
    assert!(C::PCR_WIRE_CMD_RECV_BITMAP as u16 == Command::RecvBitmap as u16);
    use PcrWireRpType as R;
    assert!(R::PCR_WIRE_RP_SHUT as u16 == ReturnPathType::Shut as u16);
    assert!(R::PCR_WIRE_RP_PONG as u16 == ReturnPathType::Pong as u16);
    assert!(R::PCR_WIRE_RP_REQ_PAGES_ID as u16 == ReturnPathType::ReqPagesId as u16);
    assert!(R::PCR_WIRE_RP_REQ_PAGES as u16 == ReturnPathType::ReqPages as u16);
    assert!(R::PCR_WIRE_RP_RECV_BITMAP as u16 == ReturnPathType::RecvBitmap as u16);
    assert!(R::PCR_WIRE_RP_RESUME_ACK as u16 == ReturnPathType::ResumeAck as u16);
    assert!(R::PCR_WIRE_RP_SWITCHOVER_ACK as u16 == ReturnPathType::SwitchoverAck as u16);
};

/// A decoded message header: tells a stream reader how many bytes the whole message has.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PcrWireHeader {
    /// Command number (`PCR_WIRE_CMD_*`) or return-path type (`PCR_WIRE_RP_*`).
    pub kind: u16,
    /// Payload length from the header (already checked against the kind).
    pub payload_len: u16,
    /// Bytes of the whole message, header included.
    pub total_len: usize,
}

/// A command other than POSTCOPY_RAM_DISCARD to encode, or any decoded command. Fields
/// that the command does not use are ignored when encoding and zeroed when decoding.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PcrWireCommand {
    /// `PCR_WIRE_CMD_*`.
    pub cmd: u16,
    /// PING: its value. PACKAGED: the package length.
    pub value: u32,
    /// POSTCOPY_ADVISE: nonzero when the payload carries the two page sizes (decode: 1 or 0).
    pub has_page_sizes: u8,
    /// POSTCOPY_ADVISE: OR of all RAM block page sizes.
    pub ram_pagesize_summary: u64,
    /// POSTCOPY_ADVISE: target page size.
    pub target_page_size: u64,
    /// RECV_BITMAP, POSTCOPY_RAM_DISCARD: block name, `name_len` bytes, not NUL-terminated
    /// (decode: points into the input buffer).
    pub name: *const c_char,
    /// Bytes of `name` (1 to 255).
    pub name_len: usize,
    /// POSTCOPY_RAM_DISCARD (decode only): number of ranges; pcr_wire_decode_discard
    /// returns them.
    pub range_count: usize,
}

/// The block name and range count of a decoded POSTCOPY_RAM_DISCARD.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PcrWireDiscard {
    /// Block name, `name_len` bytes, not NUL-terminated; points into the input buffer.
    pub name: *const c_char,
    /// Bytes of `name` (1 to 255).
    pub name_len: usize,
    /// Number of ranges in the message (may exceed the caller's capacity).
    pub range_count: usize,
}

/// A return-path message to encode, or a decoded one. Fields that the type does not use are
/// ignored when encoding and zeroed when decoding.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PcrWireRpMessage {
    /// `PCR_WIRE_RP_*`.
    pub rp_type: u16,
    /// SHUT: failed flag. PONG: the PING's value. RESUME_ACK: its value.
    pub value: u32,
    /// REQ_PAGES, REQ_PAGES_ID: byte offset within the block.
    pub start: u64,
    /// REQ_PAGES, REQ_PAGES_ID: bytes requested (not 0).
    pub len: u32,
    /// REQ_PAGES_ID, RECV_BITMAP: block name, `name_len` bytes, not NUL-terminated (decode:
    /// points into the input buffer).
    pub name: *const c_char,
    /// Bytes of `name` (1 to 255).
    pub name_len: usize,
}

/// Discard-walk callback: called once per run of pages to discard, in ascending order.
/// A nonzero return stops the walk, and pcr_discard_walk returns that value.
pub type PcrDiscardWalkFn =
    Option<unsafe extern "C" fn(opaque: *mut c_void, start: u64, npages: u64) -> c_int>;
