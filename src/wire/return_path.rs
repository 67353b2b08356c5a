//! Return-path messages (destination -> source).

use super::cursor::{len16, Reader, Writer};
use super::*;

/// Return-path message types (`be16 type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ReturnPathType {
    /// `MIG_RP_MSG_SHUT`: `be32` failed flag.
    Shut = 1,
    /// `MIG_RP_MSG_PONG`: `be32` value of the PING.
    Pong = 2,
    /// `MIG_RP_MSG_REQ_PAGES_ID`: `be64 start`, `be32 len`, `u8 idlen`, id.
    ReqPagesId = 3,
    /// `MIG_RP_MSG_REQ_PAGES`: `be64 start`, `be32 len` (block = the last one named).
    ReqPages = 4,
    /// `MIG_RP_MSG_RECV_BITMAP`: `u8 len`, block name; the bitmap block follows.
    RecvBitmap = 5,
    /// `MIG_RP_MSG_RESUME_ACK`: `be32` value.
    ResumeAck = 6,
    /// `MIG_RP_MSG_SWITCHOVER_ACK` (QEMU 8.1): no payload; the destination is ready for
    /// the switchover.
    SwitchoverAck = 7,
}

impl ReturnPathType {
    /// The type with this number, if known.
    pub const fn from_u16(v: u16) -> Option<ReturnPathType> {
        Some(match v {
            1 => ReturnPathType::Shut,
            2 => ReturnPathType::Pong,
            3 => ReturnPathType::ReqPagesId,
            4 => ReturnPathType::ReqPages,
            5 => ReturnPathType::RecvBitmap,
            6 => ReturnPathType::ResumeAck,
            7 => ReturnPathType::SwitchoverAck,
            _ => return None,
        })
    }

    /// The type number.
    pub const fn as_u16(self) -> u16 {
        self as u16
    }

    /// QEMU's name for the type.
    pub const fn name(self) -> &'static str {
        match self {
            ReturnPathType::Shut => "SHUT",
            ReturnPathType::Pong => "PONG",
            ReturnPathType::ReqPagesId => "REQ_PAGES_ID",
            ReturnPathType::ReqPages => "REQ_PAGES",
            ReturnPathType::RecvBitmap => "RECV_BITMAP",
            ReturnPathType::ResumeAck => "RESUME_ACK",
            ReturnPathType::SwitchoverAck => "SWITCHOVER_ACK",
        }
    }

    /// The payload lengths a message of this type may have (all within
    /// [`RETURN_PATH_MAX_LEN`]).
    pub const fn payload_len_rule(self) -> LenRule {
        match self {
            ReturnPathType::Shut | ReturnPathType::Pong | ReturnPathType::ResumeAck => {
                LenRule::Exactly(4)
            }
            ReturnPathType::ReqPages => LenRule::Exactly(REQ_PAGES_LEN),
            ReturnPathType::SwitchoverAck => LenRule::Exactly(0),
            ReturnPathType::ReqPagesId => {
                LenRule::Between(REQ_PAGES_LEN + 1, REQ_PAGES_LEN + 1 + MAX_NAME_LEN)
            }
            ReturnPathType::RecvBitmap => LenRule::Between(1, 1 + MAX_NAME_LEN),
        }
    }

    fn check_payload_len(self, len: usize) -> Result<(), WireError> {
        self.payload_len_rule().check(self.name(), len)
    }
}

/// A decoded return-path header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReturnPathHeader {
    /// The message type.
    pub rp_type: ReturnPathType,
    /// Payload length from the header (already checked against the type's rule).
    pub payload_len: u16,
}

impl ReturnPathHeader {
    /// Bytes of the whole message, header included.
    pub fn total_len(&self) -> usize {
        RETURN_PATH_HEADER_LEN + usize::from(self.payload_len)
    }
}

/// A return-path message, decoded or to be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnPathMsg<'a> {
    /// `SHUT`: the destination is done; `failed` nonzero if it failed.
    Shut {
        /// Failure flag (QEMU sends 0 or 1).
        failed: u32,
    },
    /// `PONG` answering a PING with this value.
    Pong(u32),
    /// `REQ_PAGES`: bytes `start..start+len` of the block named last.
    ReqPages {
        /// Offset within the block.
        start: u64,
        /// Bytes requested (never 0).
        len: u32,
    },
    /// `REQ_PAGES_ID`: bytes `start..start+len` of block `id`.
    ReqPagesId {
        /// Offset within the block.
        start: u64,
        /// Bytes requested (never 0).
        len: u32,
        /// The block name.
        id: &'a [u8],
    },
    /// `RECV_BITMAP` naming the block whose received bitmap follows.
    RecvBitmap {
        /// The block name.
        name: &'a [u8],
    },
    /// `RESUME_ACK` with its value.
    ResumeAck(u32),
    /// `SWITCHOVER_ACK`.
    SwitchoverAck,
}

impl ReturnPathMsg<'_> {
    /// The type of this message.
    pub fn rp_type(&self) -> ReturnPathType {
        match self {
            ReturnPathMsg::Shut { .. } => ReturnPathType::Shut,
            ReturnPathMsg::Pong(_) => ReturnPathType::Pong,
            ReturnPathMsg::ReqPages { .. } => ReturnPathType::ReqPages,
            ReturnPathMsg::ReqPagesId { .. } => ReturnPathType::ReqPagesId,
            ReturnPathMsg::RecvBitmap { .. } => ReturnPathType::RecvBitmap,
            ReturnPathMsg::ResumeAck(_) => ReturnPathType::ResumeAck,
            ReturnPathMsg::SwitchoverAck => ReturnPathType::SwitchoverAck,
        }
    }

    /// Bytes of the payload.
    pub fn payload_len(&self) -> usize {
        match self {
            ReturnPathMsg::Shut { .. } | ReturnPathMsg::Pong(_) | ReturnPathMsg::ResumeAck(_) => 4,
            ReturnPathMsg::ReqPages { .. } => REQ_PAGES_LEN,
            ReturnPathMsg::ReqPagesId { id, .. } => REQ_PAGES_LEN + 1 + id.len(),
            ReturnPathMsg::RecvBitmap { name } => 1 + name.len(),
            ReturnPathMsg::SwitchoverAck => 0,
        }
    }

    /// Bytes of the whole message, header included.
    pub fn encoded_len(&self) -> usize {
        RETURN_PATH_HEADER_LEN + self.payload_len()
    }
}

pub(super) fn check_request(start: u64, len: u32) -> Result<(), WireError> {
    if len == 0 {
        return Err(WireError::ZeroLengthRange { index: 0 });
    }
    if start.checked_add(u64::from(len)).is_none() {
        return Err(WireError::RangeOverflow {
            index: 0,
            start,
            length: u64::from(len),
        });
    }
    Ok(())
}

/// Encodes a whole return-path message; returns its length.
pub fn encode_return_path(buf: &mut [u8], msg: &ReturnPathMsg<'_>) -> Result<usize, WireError> {
    match *msg {
        ReturnPathMsg::ReqPages { start, len } => check_request(start, len)?,
        ReturnPathMsg::ReqPagesId { start, len, id } => {
            validate_name(id)?;
            check_request(start, len)?;
        }
        ReturnPathMsg::RecvBitmap { name } => validate_name(name)?,
        ReturnPathMsg::Shut { .. }
        | ReturnPathMsg::Pong(_)
        | ReturnPathMsg::ResumeAck(_)
        | ReturnPathMsg::SwitchoverAck => {}
    }
    let ty = msg.rp_type();
    let payload_len = msg.payload_len();
    ty.check_payload_len(payload_len)?;
    let len = len16(ty.name(), payload_len)?;
    let mut w = Writer::new(buf, RETURN_PATH_HEADER_LEN + payload_len)?;
    w.be16(ty.as_u16())?;
    w.be16(len)?;
    match *msg {
        ReturnPathMsg::Shut { failed: v }
        | ReturnPathMsg::Pong(v)
        | ReturnPathMsg::ResumeAck(v) => w.be32(v)?,
        ReturnPathMsg::ReqPages { start, len } => {
            w.be64(start)?;
            w.be32(len)?;
        }
        ReturnPathMsg::ReqPagesId { start, len, id } => {
            w.be64(start)?;
            w.be32(len)?;
            w.u8(id.len() as u8)?;
            w.put(id)?;
        }
        ReturnPathMsg::RecvBitmap { name } => {
            w.u8(name.len() as u8)?;
            w.put(name)?;
        }
        ReturnPathMsg::SwitchoverAck => {}
    }
    Ok(w.done())
}

/// Decodes a return-path header from the first [`RETURN_PATH_HEADER_LEN`] bytes of `buf`:
/// checks the type and that the length is one the type allows.
pub fn decode_return_path_header(buf: &[u8]) -> Result<ReturnPathHeader, WireError> {
    let mut r = Reader::new(buf);
    let raw = r.be16()?;
    let payload_len = r.be16()?;
    let rp_type = ReturnPathType::from_u16(raw).ok_or(WireError::UnknownReturnPathType(raw))?;
    rp_type.check_payload_len(usize::from(payload_len))?;
    Ok(ReturnPathHeader {
        rp_type,
        payload_len,
    })
}

/// Decodes the payload of a return-path message of type `rp_type`; `payload` must be
/// exactly the payload.
pub fn decode_return_path_payload(
    rp_type: ReturnPathType,
    payload: &[u8],
) -> Result<ReturnPathMsg<'_>, WireError> {
    rp_type.check_payload_len(payload.len())?;
    let mut r = Reader::new(payload);
    let msg = match rp_type {
        ReturnPathType::Shut => ReturnPathMsg::Shut { failed: r.be32()? },
        ReturnPathType::Pong => ReturnPathMsg::Pong(r.be32()?),
        ReturnPathType::ResumeAck => ReturnPathMsg::ResumeAck(r.be32()?),
        ReturnPathType::ReqPages => {
            let start = r.be64()?;
            let len = r.be32()?;
            check_request(start, len)?;
            ReturnPathMsg::ReqPages { start, len }
        }
        ReturnPathType::ReqPagesId => {
            let start = r.be64()?;
            let len = r.be32()?;
            let id = decode_counted_name(&mut r, rp_type.name())?;
            check_request(start, len)?;
            ReturnPathMsg::ReqPagesId { start, len, id }
        }
        ReturnPathType::RecvBitmap => ReturnPathMsg::RecvBitmap {
            name: decode_counted_name(&mut r, rp_type.name())?,
        },
        ReturnPathType::SwitchoverAck => ReturnPathMsg::SwitchoverAck,
    };
    Ok(msg)
}

/// Decodes one whole return-path message from the start of `buf`; returns it and its
/// length in bytes (bytes after it are left alone).
pub fn decode_return_path(buf: &[u8]) -> Result<(ReturnPathMsg<'_>, usize), WireError> {
    let header = decode_return_path_header(buf)?;
    let total = header.total_len();
    let payload = buf
        .get(RETURN_PATH_HEADER_LEN..total)
        .ok_or(WireError::Truncated {
            needed: total,
            available: buf.len(),
        })?;
    Ok((decode_return_path_payload(header.rp_type, payload)?, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_requests_are_byte_exact_and_round_trip() {
        let mut buf = [0u8; 32];
        let msg = ReturnPathMsg::ReqPagesId {
            start: 0x2000,
            len: 0x1000,
            id: b"pc",
        };
        let n = encode_return_path(&mut buf, &msg).unwrap();
        assert_eq!(
            &buf[..n],
            &[0, 3, 0, 15, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0x10, 0, 2, b'p', b'c']
        );
        assert_eq!(decode_return_path(&buf[..n]), Ok((msg, n)));
        let h = decode_return_path_header(&buf[..RETURN_PATH_HEADER_LEN]).unwrap();
        assert_eq!((h.rp_type, h.total_len()), (ReturnPathType::ReqPagesId, n));
    }

    #[test]
    fn a_request_of_zero_bytes_is_refused_both_ways() {
        let mut buf = [0u8; 32];
        let zero = ReturnPathMsg::ReqPages { start: 0, len: 0 };
        let err = encode_return_path(&mut buf, &zero).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
        let bytes = [0, 4, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            decode_return_path(&bytes).unwrap_err().errno(),
            libc::EINVAL
        );
    }
}
