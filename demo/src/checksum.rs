//! Checksums and the deterministic content and writes of the demo's workloads.

/// A 64-bit checksum of `data` (FNV-1a over 64-bit little-endian words, then mixed).
pub fn checksum(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(0x0000_0100_0000_01b3);
    }
    for &b in words.remainder() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ (h >> 29)
}

/// splitmix64: a small deterministic generator.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Initial content of 4 KiB page `page`: every 8th page is zero (to exercise zero pages),
/// the others pseudo-random from `seed`.
pub fn fill_initial(seed: u64, page: u64, buf: &mut [u8]) {
    if page % 8 == 5 {
        buf.fill(0);
        return;
    }
    let mut x = mix(seed ^ page.wrapping_mul(0x1000_0000_01b3));
    for chunk in buf.chunks_exact_mut(8) {
        x = mix(x);
        chunk.copy_from_slice(&x.to_le_bytes());
    }
}

/// The destination workload writes this word at the start of every 4 KiB page whose index
/// is a multiple of 4 (idempotent, so the final memory is deterministic).
pub fn dest_marker(page: u64) -> u64 {
    mix(page ^ 0xDE57_0000_0000_0000) | 1
}

/// Applies the destination workload's writes to `data` (for the expected checksum).
pub fn apply_dest_writes(data: &mut [u8]) {
    for (page, chunk) in data.chunks_exact_mut(4096).enumerate() {
        if page % 4 == 0 {
            chunk[..8].copy_from_slice(&dest_marker(page as u64).to_le_bytes());
        }
    }
}
