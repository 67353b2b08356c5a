//! C-visible types shared by the exports.

use std::ffi::{c_char, c_int, c_void};

/// Most ranges QEMU puts in one POSTCOPY_RAM_DISCARD command.
pub const PCR_MAX_DISCARDS_PER_COMMAND: u32 = 12;
const _: () =
    assert!(PCR_MAX_DISCARDS_PER_COMMAND as usize == crate::wire::MAX_DISCARDS_PER_COMMAND);

/// Largest message (header included) the library passes to `write_return_path`: a
/// REQ_PAGES_ID naming a 255-byte block (4 + 8 + 4 + 1 + 255 bytes). A buffer of this size
/// holds any message the library sends.
pub const PCR_RETURN_PATH_MAX_MESSAGE: u32 = 272;
const _: () = assert!(
    PCR_RETURN_PATH_MAX_MESSAGE as usize == crate::destination::return_path_sender::MAX_MESSAGE
);

/// Largest return-path payload QEMU's source accepts (its receive buffer); every
/// return-path message type's length rule stays within it.
pub const PCR_RETURN_PATH_MAX_PAYLOAD: u32 = 512;
const _: () = assert!(PCR_RETURN_PATH_MAX_PAYLOAD as usize == crate::wire::RETURN_PATH_MAX_LEN);

/// Postcopy state of a destination: one of the `PCR_STATE_*` values.
pub type PcrState = u32;

/// The values of `PcrState` (QEMU's `PostcopyState` numbering).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum PcrStateValue {
    /// No postcopy migration in progress.
    PCR_STATE_NONE = 0,
    /// Postcopy advised: RAM discarded by `pcr_incoming_init`; precopy pages may arrive.
    PCR_STATE_ADVISE = 1,
    /// Discard commands are being applied (`pcr_incoming_prepare_discard` was called).
    PCR_STATE_DISCARD = 2,
    /// RAM registered with userfaultfd, fault thread running (`pcr_incoming_enable_notify`).
    PCR_STATE_LISTENING = 3,
    /// The guest runs on the destination (only reachable from LISTENING).
    PCR_STATE_RUNNING = 4,
    /// Postcopy ended (`pcr_incoming_cleanup`).
    PCR_STATE_END = 5,
}

// The C values are the core's.
const _: () = {
    use crate::state::State;
    use PcrStateValue as V;
    assert!(V::PCR_STATE_NONE as u32 == State::None as u32);
    assert!(V::PCR_STATE_ADVISE as u32 == State::Advise as u32);
    assert!(V::PCR_STATE_DISCARD as u32 == State::Discard as u32);
    assert!(V::PCR_STATE_LISTENING as u32 == State::Listening as u32);
    assert!(V::PCR_STATE_RUNNING as u32 == State::Running as u32);
    assert!(V::PCR_STATE_END as u32 == State::End as u32);
};

/// One guest RAM block, as the hypervisor describes it to the library.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PcrRamBlock {
    /// The block's id (QEMU's idstr): NUL-terminated, 1 to 255 bytes. Copied by the library.
    pub name: *const c_char,
    /// Host address of the block's first byte, aligned to `page_size`.
    pub host: *mut c_void,
    /// Offset of the block in the guest RAM address space (QEMU's ram_addr_t offset).
    pub offset: u64,
    /// Length in bytes: a non-zero multiple of `page_size` (other lengths are refused).
    pub length: u64,
    /// Page size backing the block: the host page size, or the huge page size (2 MiB...).
    pub page_size: u64,
    /// File descriptor the block is mapped from (memfd, hugetlbfs file), or -1 for
    /// anonymous memory (including MAP_HUGETLB). It must stay open while the block is used.
    pub fd: c_int,
    /// File offset of the block's first byte (ignored when `fd` is -1).
    pub fd_offset: u64,
    /// Whether the block is mapped MAP_SHARED.
    pub shared: bool,
    /// The hypervisor's own pointer for this block (QEMU: its `RAMBlock *`), handed back to
    /// `request_page` as `block_opaque`. The library never dereferences it; NULL is fine.
    pub opaque: *mut c_void,
}

/// Visitor the library passes to `PcrIncomingOps::foreach_ram_block`: call it once per
/// block with the block's description (valid during the call) and the `ctx` received. It
/// returns 0, or a negative errno when the block is refused: then stop and return that value.
pub type PcrRamBlockVisitor =
    unsafe extern "C" fn(block: *const PcrRamBlock, ctx: *mut c_void) -> c_int;

/// A log sink: `level` 1 (error) to 5 (trace); `message` is a NUL-terminated line without
/// newline, valid during the call only.
pub type PcrLogCallback =
    Option<unsafe extern "C" fn(opaque: *mut c_void, level: c_int, message: *const c_char)>;

/// A C callback's failed return value (not 0) as a positive errno: a negative value is its
/// errno, anything else (a positive value, or INT_MIN, whose negation overflows) EIO.
pub(crate) fn errno_of(rc: c_int) -> i32 {
    match rc.checked_neg() {
        Some(errno) if errno > 0 => errno,
        _ => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 17 item 10: `errno_of(INT_MIN)` overflowed on negation (a panic in a debug
    /// build; INT_MIN as the "errno" in a release build).
    #[test]
    fn every_failed_return_value_is_a_positive_errno() {
        assert_eq!(errno_of(c_int::MIN), libc::EIO);
        assert_eq!(errno_of(-libc::ENOENT), libc::ENOENT);
        assert_eq!(errno_of(-c_int::MAX), c_int::MAX);
        for rc in [1, 7, c_int::MAX] {
            assert_eq!(errno_of(rc), libc::EIO);
        }
    }
}
