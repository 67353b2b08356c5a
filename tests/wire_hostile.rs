//! Wire decoders fed truncated, mutated and random bytes: no panic, and whatever they accept
//! re-encodes to exactly the bytes consumed.

mod common;
mod wire_support;

use common::Rng;
use postcopy_ram::wire::*;
use wire_support::*;

/// Runs every decoder over `bytes`. Whatever they accept must re-encode to exactly the bytes
/// they consumed (the formats have one encoding per message).
fn decode_everything(bytes: &[u8]) {
    if let Ok((msg, used)) = decode_command(bytes) {
        assert!(used <= bytes.len());
        assert_eq!(encode_cmd(&msg), &bytes[..used], "command re-encodes");
    }
    if let Ok(header) = decode_command_header(bytes) {
        let _ = decode_command_payload(header.cmd, bytes.get(COMMAND_HEADER_LEN..).unwrap_or(&[]));
    }
    if let Ok((msg, used)) = decode_return_path(bytes) {
        assert!(used <= bytes.len());
        assert_eq!(encode_rp(&msg), &bytes[..used], "return path re-encodes");
    }
    if let Ok(header) = decode_return_path_header(bytes) {
        let _ = decode_return_path_payload(
            header.rp_type,
            bytes.get(RETURN_PATH_HEADER_LEN..).unwrap_or(&[]),
        );
    }
    if let Ok(d) = decode_discard_payload(bytes) {
        let ranges: Vec<DiscardRange> = d.ranges().collect();
        let mut buf = vec![0u8; bytes.len() + 8];
        if let Ok(n) = encode_discard(&mut buf, d.name(), &ranges) {
            assert_eq!(
                &buf[COMMAND_HEADER_LEN..n],
                bytes,
                "discard payload re-encodes"
            );
        }
    }
    if let Ok((bm, used)) = decode_recv_bitmap(bytes) {
        assert_eq!(used, bm.as_le_bytes().len() + 16);
        let nbits = bm.as_le_bytes().len() * 8;
        let mut words = vec![0u64; nbits / 64];
        bm.copy_to_words(&mut words, nbits).unwrap();
        let mut buf = vec![0u8; used];
        encode_recv_bitmap(&mut buf, &words, nbits).unwrap();
        assert_eq!(&buf[..], &bytes[..used], "bitmap re-encodes");
    }
    let _ = decode_recv_bitmap_size(bytes);
    for cmd in [
        Command::PostcopyRamDiscard,
        Command::RecvBitmap,
        Command::PostcopyAdvise,
    ] {
        let _ = decode_command_payload(cmd, bytes);
    }
    for ty in [
        ReturnPathType::ReqPagesId,
        ReturnPathType::RecvBitmap,
        ReturnPathType::ReqPages,
    ] {
        let _ = decode_return_path_payload(ty, bytes);
    }
}

#[test]
fn truncated_goldens_are_errors() {
    for golden in all_goldens() {
        for len in 0..golden.len() {
            let cut = &golden[..len];
            decode_everything(cut);
            if golden[0] == QEMU_VM_COMMAND {
                assert!(
                    decode_command(cut).is_err(),
                    "prefix of {len} bytes accepted"
                );
                assert!(
                    matches!(decode_command(cut), Err(WireError::Truncated { .. })),
                    "prefix {len}: {:?}",
                    decode_command(cut)
                );
            }
        }
    }
    for (_, golden) in rp_goldens() {
        for len in 0..golden.len() {
            assert!(matches!(
                decode_return_path(&golden[..len]),
                Err(WireError::Truncated { .. })
            ));
        }
    }
}

#[test]
fn mutated_goldens_never_panic() {
    let mut rng = Rng::new(99);
    let goldens = all_goldens();
    for round in 0..20_000 {
        let mut m = goldens[round % goldens.len()].clone();
        for _ in 0..1 + rng.below(3) {
            match rng.below(4) {
                0 if !m.is_empty() => {
                    let i = rng.below(m.len() as u64) as usize;
                    m[i] = rng.byte();
                }
                1 if !m.is_empty() => {
                    let i = rng.below(m.len() as u64) as usize;
                    m[i] ^= 1 << rng.below(8);
                }
                2 => {
                    let i = rng.below(m.len() as u64 + 1) as usize;
                    m.insert(i, rng.byte());
                }
                _ if !m.is_empty() => {
                    let i = rng.below(m.len() as u64) as usize;
                    m.remove(i);
                }
                _ => {}
            }
        }
        decode_everything(&m);
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng::new(4242);
    for _ in 0..20_000 {
        let len = rng.below(300) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        // Often a plausible header, so the payload decoders are reached.
        match rng.below(3) {
            0 if len >= 5 => {
                b[0] = QEMU_VM_COMMAND;
                b[1] = 0;
                b[2] = rng.below(12) as u8;
                let plen = (len - 5) as u16;
                b[3..5].copy_from_slice(&plen.to_be_bytes());
            }
            1 if len >= 4 => {
                b[0] = 0;
                b[1] = rng.below(8) as u8;
                let plen = (len - 4) as u16;
                b[2..4].copy_from_slice(&plen.to_be_bytes());
            }
            _ => {}
        }
        decode_everything(&b);
    }
}
