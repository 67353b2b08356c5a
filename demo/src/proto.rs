//! The demo's migration stream: QEMU commands (`0x08` envelope, see
//! `postcopy_ram::wire`) interleaved with page frames of our own.
//!
//! Page frames (source -> destination):
//! ```text
//! 'P' (0x50)  u8 name_len  name  be64 offset  be32 length  data[length]   a page with data
//! 'Z' (0x5A)  u8 name_len  name  be64 offset  be32 length                 a zero page
//! 'E' (0x45)                                                               end of pages
//! ```
//! `offset` and `length` are bytes within the named block and cover whole host pages.
//! Return-path messages (destination -> source) are QEMU's: REQ_PAGES_ID / REQ_PAGES for
//! page requests and SHUT at the end travel back on the urgent connection (the one that
//! carries the requested pages), so that a request never waits behind the bulk stream;
//! the main connection's return direction carries a recovery's RECV_BITMAP and
//! RESUME_ACK.

use std::io::{self, Read, Write};

use postcopy_ram::wire::{self, CommandMsg};

/// Frame tag of a page with data.
pub const TAG_PAGE: u8 = b'P';
/// Frame tag of a zero page.
pub const TAG_ZERO: u8 = b'Z';
/// Frame tag ending the stream of pages.
pub const TAG_END: u8 = b'E';

/// One item read from the stream.
#[derive(Debug)]
pub enum Item {
    /// A QEMU command (the raw bytes, envelope included, to decode with `wire`).
    Command(Vec<u8>),
    /// A page with data, read into the caller's buffer.
    Page {
        name: String,
        offset: u64,
        length: u32,
    },
    /// A zero page.
    Zero {
        name: String,
        offset: u64,
        length: u32,
    },
    /// End of pages.
    End,
}

/// Writes a page frame header (the data follows, written by the caller).
pub fn write_page_header(
    w: &mut impl Write,
    zero: bool,
    name: &str,
    offset: u64,
    length: u32,
) -> io::Result<()> {
    let mut hdr = Vec::with_capacity(2 + name.len() + 12);
    hdr.push(if zero { TAG_ZERO } else { TAG_PAGE });
    hdr.push(name.len() as u8);
    hdr.extend_from_slice(name.as_bytes());
    hdr.extend_from_slice(&offset.to_be_bytes());
    hdr.extend_from_slice(&length.to_be_bytes());
    w.write_all(&hdr)
}

/// Writes a QEMU command.
pub fn write_command(w: &mut impl Write, msg: &CommandMsg<'_>) -> io::Result<()> {
    let mut buf = [0u8; 64];
    let n = wire::encode_command(&mut buf, msg)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    w.write_all(&buf[..n])
}

fn read_u8(r: &mut impl Read) -> io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

/// Reads the next item. For a page with data, `data` is resized to the page length and
/// filled.
pub fn read_item(r: &mut impl Read, data: &mut Vec<u8>) -> io::Result<Item> {
    read_item_inner(r, data).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection before the end of the stream",
            )
        } else {
            e
        }
    })
}

fn read_item_inner(r: &mut impl Read, data: &mut Vec<u8>) -> io::Result<Item> {
    let tag = read_u8(r)?;
    match tag {
        wire::QEMU_VM_COMMAND => {
            let mut hdr = [0u8; wire::COMMAND_HEADER_LEN];
            hdr[0] = tag;
            r.read_exact(&mut hdr[1..])?;
            let len = u16::from_be_bytes([hdr[3], hdr[4]]) as usize;
            let mut buf = hdr.to_vec();
            buf.resize(wire::COMMAND_HEADER_LEN + len, 0);
            r.read_exact(&mut buf[wire::COMMAND_HEADER_LEN..])?;
            Ok(Item::Command(buf))
        }
        TAG_PAGE | TAG_ZERO => {
            let name_len = read_u8(r)? as usize;
            let mut name = vec![0u8; name_len];
            r.read_exact(&mut name)?;
            let mut fixed = [0u8; 12];
            r.read_exact(&mut fixed)?;
            let offset = u64::from_be_bytes(fixed[..8].try_into().unwrap());
            let length = u32::from_be_bytes(fixed[8..].try_into().unwrap());
            let name = String::from_utf8(name)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "block name not UTF-8"))?;
            if tag == TAG_ZERO {
                return Ok(Item::Zero {
                    name,
                    offset,
                    length,
                });
            }
            data.resize(length as usize, 0);
            r.read_exact(data)?;
            Ok(Item::Page {
                name,
                offset,
                length,
            })
        }
        TAG_END => Ok(Item::End),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown stream tag {other:#x}"),
        )),
    }
}
