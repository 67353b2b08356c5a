//! Postcopy recovery in the demo, as QEMU does it (`migrate-recover` + `migrate -r`):
//! both connections are cut; the source reconnects; for each block it sends the
//! RECV_BITMAP command and the destination answers with the block's received bitmap (in
//! target pages, from the library); the source re-sends what the destination lacks; the
//! source sends POSTCOPY_RESUME, the destination answers RESUME_ACK and re-sends its
//! pending page requests (`Incoming::resend_pending`), the first one naming its block.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use postcopy_ram::wire::{self, CommandMsg, ReturnPathMsg};
use postcopy_ram::Incoming;

use crate::proto::{read_item, Item};

/// How long the destination waits for the source to come back.
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts the two connections of a resumed migration (main, then urgent).
pub fn accept_pair(listener: &TcpListener) -> Result<(TcpStream, TcpStream), String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + RECONNECT_TIMEOUT;
    let mut got = Vec::new();
    while got.len() < 2 {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                got.push(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(format!(
                        "the source did not reconnect within {} s",
                        RECONNECT_TIMEOUT.as_secs()
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
    let urgent = got.pop().expect("two");
    Ok((got.pop().expect("two"), urgent))
}

fn write_rp(w: &mut impl Write, msg: &ReturnPathMsg<'_>) -> std::io::Result<()> {
    let mut buf = [0u8; wire::RETURN_PATH_MAX_LEN];
    let n = wire::encode_return_path(&mut buf, msg)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    w.write_all(&buf[..n])
}

/// Destination: answers the source's RECV_BITMAP commands and its POSTCOPY_RESUME on the
/// new main connection (`rp`), then installs `requests` (the new urgent connection) as the
/// return path of page requests and re-sends the pending ones. Requests are paused
/// meanwhile. Returns (bitmaps sent, requests re-sent).
pub fn dest_resume(
    reader: &mut impl Read,
    mut rp: TcpStream,
    requests: TcpStream,
    return_path: &Mutex<Option<TcpStream>>,
    incoming: &Incoming,
) -> Result<(u64, u64), String> {
    let mut data = Vec::new();
    let mut bitmaps = 0;
    loop {
        let bytes = match read_item(reader, &mut data).map_err(|e| format!("resume: {e}"))? {
            Item::Command(bytes) => bytes,
            _ => return Err("resume: a page arrived before POSTCOPY_RESUME".into()),
        };
        let (msg, _) = wire::decode_command(&bytes).map_err(|e| format!("resume: {e}"))?;
        match msg {
            CommandMsg::RecvBitmap { name } => {
                let name = std::str::from_utf8(name).map_err(|_| "resume: block name")?;
                let mut block =
                    vec![0u8; incoming.recv_bitmap_len(name).map_err(|e| e.to_string())?];
                let n = incoming
                    .encode_recv_bitmap(name, &mut block)
                    .map_err(|e| e.to_string())?;
                write_rp(
                    &mut rp,
                    &ReturnPathMsg::RecvBitmap {
                        name: name.as_bytes(),
                    },
                )
                .and_then(|()| rp.write_all(&block[..n]))
                .map_err(|e| format!("resume: sending the received bitmap: {e}"))?;
                bitmaps += 1;
            }
            CommandMsg::PostcopyResume => {
                write_rp(&mut rp, &ReturnPathMsg::ResumeAck(1))
                    .map_err(|e| format!("resume: RESUME_ACK: {e}"))?;
                *return_path.lock() = Some(requests);
                incoming.reset_request_block();
                let resent = incoming.resend_pending().map_err(|e| e.to_string())?;
                return Ok((bitmaps, resent));
            }
            other => return Err(format!("resume: unexpected {:?}", other.command())),
        }
    }
}

fn read_rp(rp: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    buf.resize(wire::RETURN_PATH_HEADER_LEN, 0);
    rp.read_exact(buf).map_err(|e| e.to_string())?;
    let total = wire::decode_return_path_header(buf)
        .map_err(|e| e.to_string())?
        .total_len();
    buf.resize(total, 0);
    rp.read_exact(&mut buf[wire::RETURN_PATH_HEADER_LEN..])
        .map_err(|e| e.to_string())
}

/// Source: asks for block `name`'s received bitmap on the new connections (command on
/// `out`, answer on `rp`); returns it as words of target pages (bit set = received).
pub fn source_fetch_bitmap(
    out: &mut impl Write,
    rp: &mut TcpStream,
    name: &str,
    target_pages: usize,
) -> Result<Vec<u64>, String> {
    crate::proto::write_command(
        out,
        &CommandMsg::RecvBitmap {
            name: name.as_bytes(),
        },
    )
    .and_then(|()| out.flush())
    .map_err(|e| format!("RECV_BITMAP: {e}"))?;
    let mut buf = Vec::new();
    read_rp(rp, &mut buf)?;
    match wire::decode_return_path(&buf).map_err(|e| e.to_string())? {
        (ReturnPathMsg::RecvBitmap { name: got }, _) if got == name.as_bytes() => {}
        (other, _) => return Err(format!("expected RECV_BITMAP, got {:?}", other.rp_type())),
    }
    let mut head = [0u8; 8];
    rp.read_exact(&mut head).map_err(|e| e.to_string())?;
    let size = wire::decode_recv_bitmap_size(&head).map_err(|e| e.to_string())? as usize;
    let mut block = head.to_vec();
    block.resize(8 + size + 8, 0);
    rp.read_exact(&mut block[8..]).map_err(|e| e.to_string())?;
    let (bitmap, _) = wire::decode_recv_bitmap(&block).map_err(|e| e.to_string())?;
    let mut words = vec![0u64; target_pages.div_ceil(64)];
    bitmap
        .copy_to_words(&mut words, target_pages)
        .map_err(|e| e.to_string())?;
    Ok(words)
}

/// Source: sends POSTCOPY_RESUME and waits for RESUME_ACK.
pub fn source_resume(out: &mut impl Write, rp: &mut TcpStream) -> Result<(), String> {
    crate::proto::write_command(out, &CommandMsg::PostcopyResume)
        .and_then(|()| out.flush())
        .map_err(|e| format!("POSTCOPY_RESUME: {e}"))?;
    let mut buf = Vec::new();
    read_rp(rp, &mut buf)?;
    match wire::decode_return_path(&buf).map_err(|e| e.to_string())? {
        (ReturnPathMsg::ResumeAck(_), _) => Ok(()),
        (other, _) => Err(format!("expected RESUME_ACK, got {:?}", other.rp_type())),
    }
}
