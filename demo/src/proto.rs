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

/// A page frame parsed in place from a receive buffer ([`parse_page_frame`]).
#[derive(Debug, PartialEq, Eq)]
pub struct PageFrame<'a> {
    pub name: &'a str,
    pub offset: u64,
    pub length: u32,
    /// The page data; `None` for a zero page.
    pub data: Option<&'a [u8]>,
    /// Bytes of the buffer the frame takes, header included.
    pub size: usize,
}

/// The `be64 offset be32 length` that end a page frame's header.
fn offset_and_length(fixed: &[u8; 12]) -> (u64, u32) {
    let (offset, length) = fixed.split_at(8);
    (
        u64::from_be_bytes(offset.try_into().expect("8 bytes")),
        u32::from_be_bytes(length.try_into().expect("4 bytes")),
    )
}

/// The page frame (`P` or `Z`) at the start of `buf` when `buf` holds all of it, header
/// and data; `None` otherwise (another item, a partial frame, a name not UTF-8: read it
/// with [`read_item`], which reports what is wrong).
pub fn parse_page_frame(buf: &[u8]) -> Option<PageFrame<'_>> {
    let (&tag, &name_len) = (buf.first()?, buf.get(1)?);
    if tag != TAG_PAGE && tag != TAG_ZERO {
        return None;
    }
    let header = 2 + name_len as usize + 12;
    let (offset, length) = offset_and_length(buf.get(header - 12..header)?.try_into().ok()?);
    let name = std::str::from_utf8(&buf[2..header - 12]).ok()?;
    let (data, size) = if tag == TAG_ZERO {
        (None, header)
    } else {
        let end = header + length as usize;
        (Some(buf.get(header..end)?), end)
    };
    Some(PageFrame {
        name,
        offset,
        length,
        data,
        size,
    })
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
            let (offset, length) = offset_and_length(&fixed);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(zero: bool, data: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        write_page_header(&mut buf, zero, "pc.ram", 0x3000, 4096).unwrap();
        buf.extend_from_slice(data);
        buf
    }

    #[test]
    fn a_whole_buffered_frame_parses_as_read_item_reads_it() {
        let page = vec![7u8; 4096];
        let mut buf = frame(false, &page);
        let size = buf.len();
        buf.extend_from_slice(&frame(true, &[]));
        let f = parse_page_frame(&buf).expect("a whole page frame");
        assert_eq!(
            f,
            PageFrame {
                name: "pc.ram",
                offset: 0x3000,
                length: 4096,
                data: Some(&page[..]),
                size
            }
        );
        let z = parse_page_frame(&buf[size..]).expect("a zero frame");
        assert_eq!((z.data, z.size), (None, buf.len() - size));
        let mut data = Vec::new();
        let mut r = &buf[..];
        match read_item(&mut r, &mut data).unwrap() {
            Item::Page {
                name,
                offset,
                length,
            } => assert_eq!(
                (name.as_str(), offset, length, &data[..]),
                ("pc.ram", 0x3000, 4096, &page[..])
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_item(&mut r, &mut data).unwrap(),
            Item::Zero { offset: 0x3000, .. }
        ));
    }

    #[test]
    fn a_partial_frame_or_another_item_is_left_to_read_item() {
        let buf = frame(false, &[1u8; 4096]);
        for cut in [0, 1, 2, 10, buf.len() - 12, buf.len() - 1] {
            assert_eq!(parse_page_frame(&buf[..cut]), None, "cut at {cut}");
        }
        assert_eq!(parse_page_frame(&[TAG_END]), None);
        let mut bad_name = frame(true, &[]);
        bad_name[2] = 0xff;
        assert_eq!(parse_page_frame(&bad_name), None);
    }
}
