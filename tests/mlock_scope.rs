//! Issue 17 items 5 and 11: the mlock policy.
//!
//! Item 5: init unlocks memory unconditionally, but cleanup re-locked it only after LISTEN,
//! so a cleanup in ADVISE or DISCARD (QEMU 7.2 cleans up in ADVISE when postcopy goes
//! unused) left guest memory unlocked, and an mlock hook never got its `mlock(true)`.
//!
//! Item 11: the library's own policy (enable_mlock without a hook) called munlockall and
//! mlockall, unlocking and relocking every other VM of the process. It now acts on this
//! destination's blocks only, and locks again only what it unlocked, as it was.

mod common;

use std::sync::Arc;

use common::*;
use parking_lot::Mutex;
use postcopy_ram::{IncomingConfig, RamBlock};

fn has_flag(addr: usize, flag: &str) -> bool {
    vm_flags(addr)
        .expect("mapping in smaps")
        .iter()
        .any(|f| f == flag)
}

fn locked(addr: usize) -> bool {
    has_flag(addr, "lo")
}

fn mlock(addr: usize, len: usize) -> bool {
    // SAFETY: locking the test's own mapping.
    unsafe { libc::mlock(addr as *const libc::c_void, len) == 0 }
}

/// Hooks that record the mlock policy's calls and leave the locking to nobody.
struct Recorder {
    server: Arc<Server>,
    calls: Mutex<Vec<bool>>,
}

impl postcopy_ram::IncomingHooks for Recorder {
    fn ram_blocks(&self) -> postcopy_ram::Result<Vec<RamBlock>> {
        self.server.ram_blocks()
    }

    fn request_page(
        &self,
        block: Option<&postcopy_ram::BlockName>,
        offset: u64,
        length: u64,
    ) -> std::result::Result<(), i32> {
        self.server.request_page(block, offset, length)
    }

    fn mlock(&self, lock: bool) -> Option<postcopy_ram::Result<()>> {
        self.calls.lock().push(lock);
        Some(Ok(()))
    }
}

/// Item 5, with an mlock hook: every cleanup after a successful init calls mlock(true),
/// whatever state postcopy reached.
#[test]
fn a_cleanup_before_listen_calls_the_mlock_hook_again() {
    require_uffd!();
    for stop_in in ["ADVISE", "DISCARD", "LISTENING"] {
        let mem = GuestMem::anon(16 * 4096);
        let hooks = Arc::new(Recorder {
            server: Server::new(vec![mem.block("ram")], false),
            calls: Mutex::new(Vec::new()),
        });
        let config = IncomingConfig {
            enable_mlock: true,
            ..Default::default()
        };
        let incoming = postcopy_ram::Incoming::new(hooks.clone(), config).unwrap();
        incoming.init(0).unwrap();
        if stop_in != "ADVISE" {
            incoming.prepare_discard().unwrap();
        }
        if stop_in == "LISTENING" {
            incoming.enable_notify().unwrap();
        }
        incoming.cleanup().unwrap();
        assert_eq!(
            *hooks.calls.lock(),
            vec![false, true],
            "cleanup in {stop_in}"
        );
    }
}

/// Item 5, with the library's own policy: memory init unlocked is locked again by a
/// cleanup in ADVISE.
#[test]
fn a_cleanup_before_listen_locks_memory_again() {
    require_uffd!();
    let mem = GuestMem::anon(16 * 4096);
    if !mlock(mem.addr, mem.len) {
        skip(format_args!("mlock: {}", std::io::Error::last_os_error()));
        return;
    }
    let server = Server::new(vec![mem.block("ram")], false);
    let incoming = server.incoming(IncomingConfig {
        enable_mlock: true,
        ..Default::default()
    });
    incoming.init(0).unwrap();
    assert!(!locked(mem.addr), "unlocked for the discards");
    incoming.cleanup().unwrap();
    assert!(locked(mem.addr), "locked again by a cleanup in ADVISE");
}

/// Item 11: another VM's memory in the same process is neither unlocked nor locked; of
/// this destination's blocks only what was locked is locked again, as it was (a block
/// locked on fault stays on fault).
#[test]
fn the_default_mlock_policy_acts_on_this_destinations_locked_ranges_only() {
    require_uffd!();
    let other_locked = GuestMem::anon(16 * 4096);
    let other_unlocked = GuestMem::anon(16 * 4096);
    let guest = GuestMem::anon(32 * 4096);
    let on_fault = GuestMem::anon(16 * 4096);
    let half = 16 * 4096;
    // SAFETY: locking the test's own mapping, on fault.
    let on_fault_ok =
        unsafe { libc::mlock2(on_fault.addr as *const libc::c_void, on_fault.len, 1) } == 0;
    if !(mlock(other_locked.addr, other_locked.len) && mlock(guest.addr, half) && on_fault_ok) {
        skip(format_args!("mlock: {}", std::io::Error::last_os_error()));
        return;
    }
    // The guest block: its first half locked, its second half not.
    assert!(locked(guest.addr) && !locked(guest.addr + half));
    let server = Server::new(vec![guest.block("ram"), on_fault.block("ram2")], true);
    let incoming = server.incoming(IncomingConfig {
        enable_mlock: true,
        ..Default::default()
    });
    incoming.init(0).unwrap();
    assert!(
        !locked(guest.addr) && !locked(on_fault.addr),
        "unlocked for the discards"
    );
    assert!(
        locked(other_locked.addr),
        "init unlocked another VM's memory"
    );
    incoming.enable_notify().unwrap();
    assert!(
        locked(other_locked.addr),
        "enable_notify unlocked another VM's memory"
    );
    assert_ne!(guest.read_u64(0), 0xdead, "a fault served during postcopy");
    incoming.cleanup().unwrap();
    assert!(
        locked(other_locked.addr),
        "cleanup left another VM's memory unlocked"
    );
    assert!(
        !locked(other_unlocked.addr),
        "cleanup locked another VM's memory"
    );
    assert!(locked(guest.addr), "the locked half is locked again");
    assert!(!locked(guest.addr + half), "the unlocked half was locked");
    assert!(
        locked(on_fault.addr) && has_flag(on_fault.addr, "lf"),
        "locked on fault again, not populated by mlock: {:?}",
        vm_flags(on_fault.addr)
    );
}

/// Hooks whose block list the test changes between init and enable_notify.
struct Resizable {
    server: Arc<Server>,
    blocks: Mutex<Vec<RamBlock>>,
}

impl postcopy_ram::IncomingHooks for Resizable {
    fn ram_blocks(&self) -> postcopy_ram::Result<Vec<RamBlock>> {
        Ok(self.blocks.lock().clone())
    }

    fn request_page(
        &self,
        block: Option<&postcopy_ram::BlockName>,
        offset: u64,
        length: u64,
    ) -> std::result::Result<(), i32> {
        self.server.request_page(block, offset, length)
    }
}

/// Item 11, with munlockall gone, MCL_FUTURE stays in force: a block grown after init comes
/// locked, and locked memory refuses the discard of the new part at enable_notify. The
/// library unlocks the new part too, and locks it again at cleanup.
#[test]
fn a_block_grown_locked_after_init_is_unlocked_for_its_discard() {
    require_uffd!();
    let mem = GuestMem::anon(32 * 4096);
    let half = 16 * 4096;
    if !mlock(mem.addr, half) {
        skip(format_args!("mlock: {}", std::io::Error::last_os_error()));
        return;
    }
    let mut small = mem.block("ram");
    small.length = half as u64;
    let hooks = Arc::new(Resizable {
        server: Server::new(vec![mem.block("ram")], false),
        blocks: Mutex::new(vec![small]),
    });
    let config = IncomingConfig {
        enable_mlock: true,
        ..Default::default()
    };
    let incoming = postcopy_ram::Incoming::new(hooks.clone(), config).unwrap();
    incoming.init(0).unwrap();
    assert!(!locked(mem.addr));
    // The block grows; its new part is locked, as mlockall(MCL_FUTURE) would have it.
    assert!(mlock(mem.addr + half, half));
    *hooks.blocks.lock() = vec![mem.block("ram")];
    incoming.enable_notify().unwrap();
    assert!(!locked(mem.addr + half), "the new part is unlocked");
    incoming.cleanup().unwrap();
    assert!(
        locked(mem.addr) && locked(mem.addr + half),
        "both locked again"
    );
}
