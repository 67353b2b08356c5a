//! Regression tests of issue 9 items 14, 4 and 12 (what the host allows: userfaultfd
//! privilege, mlocked memory, block kinds), through the safe Rust API. Some run a helper
//! test of this binary in a child process (as user nobody, or to mlockall alone).

mod common;

use common::*;
use postcopy_ram::{Backing, IncomingConfig, RamBlock};

/// Puts a sysctl back on drop.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Option<Sysctl> {
        let old = std::fs::read_to_string(path).ok()?.trim().to_string();
        std::fs::write(path, value).ok()?;
        Some(Sysctl { path, old })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, &self.old);
    }
}

const PROBE_CHILD_ENV: &str = "PCR_TEST_UFFD_PROBE_CHILD";

/// Not a test on its own: the body of the unprivileged child process that
/// `userfaultfd_eperm_keeps_its_errno_and_names_the_sysctl` runs (as user nobody, so that
/// /dev/userfaultfd, mode 0600 root, is unusable). Prints the probe's outcome. Ignored, so
/// that a plain run neither runs nor counts it; `run_helper` runs it with `--ignored`.
#[test]
#[ignore = "helper: runs only as the child process of another test"]
fn helper_uffd_probe_as_child() {
    if std::env::var_os(PROBE_CHILD_ENV).is_none() {
        return;
    }
    match postcopy_ram::check_host_support(Vec::new(), 4096) {
        Ok(()) => println!("PROBE-RESULT ok"),
        Err(e) => println!("PROBE-RESULT errno={} message={}", e.errno(), e.message()),
    }
}

/// Runs the helper test `name` of this binary in a child process with `PROBE_CHILD_ENV`
/// set (as uid/gid 65534 when `nobody`) and returns its PROBE-RESULT line.
fn run_helper(name: &str, nobody: bool) -> String {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        name,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(PROBE_CHILD_ENV, "1");
    if nobody {
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = cmd.output().expect("running the helper child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.find("PROBE-RESULT").map(|at| l[at..].to_string()))
        .unwrap_or_else(|| {
            panic!(
                "no PROBE-RESULT from {name}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn probe_as_nobody() -> String {
    run_helper("helper_uffd_probe_as_child", true)
}

/// Item 14: a userfaultfd that cannot be opened keeps its real errno (it was -ENOSYS for
/// everything), and EPERM from vm.unprivileged_userfaultfd=0 says so, naming the sysctl.
/// Run as an unprivileged user (uid 65534, no access to /dev/userfaultfd), once with the
/// sysctl at 0 (EPERM) and once at 1 (works: the failure was the sysctl's).
#[test]
fn userfaultfd_eperm_keeps_its_errno_and_names_the_sysctl() {
    require_uffd!();
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        skip("needs root to change vm.unprivileged_userfaultfd and drop to nobody");
        return;
    }
    const SYSCTL: &str = "/proc/sys/vm/unprivileged_userfaultfd";
    let Some(_restore) = Sysctl::set(SYSCTL, "0") else {
        skip(format_args!("cannot write {SYSCTL}"));
        return;
    };
    let denied = probe_as_nobody();
    assert!(
        denied.contains(&format!("errno={} ", libc::EPERM)),
        "{denied}"
    );
    assert!(denied.contains("vm.unprivileged_userfaultfd=0"), "{denied}");
    std::fs::write(SYSCTL, "1").unwrap();
    assert_eq!(probe_as_nobody(), "PROBE-RESULT ok");
}

/// Hooks whose mlock policy locks and unlocks the guest block only, recording the calls.
struct BlockLock {
    server: std::sync::Arc<Server>,
    calls: parking_lot::Mutex<Vec<bool>>,
}

impl postcopy_ram::IncomingHooks for BlockLock {
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
        let b = &self.server.blocks[0];
        let (addr, len) = (b.host as *const libc::c_void, b.length as usize);
        // SAFETY: (un)locking the test's own mapping.
        let rc = unsafe {
            if lock {
                libc::mlock(addr, len)
            } else {
                libc::munlock(addr, len)
            }
        };
        Some(if rc == 0 {
            Ok(())
        } else {
            Err(postcopy_ram::Error::new(libc::EIO, "mlock hook"))
        })
    }
}

fn is_locked(mem: &GuestMem) -> bool {
    vm_flags(mem.addr)
        .expect("mapping in smaps")
        .iter()
        .any(|f| f == "lo")
}

/// Item 4: with mlocked guest memory (QEMU's -overcommit mem-lock=on) MADV_DONTNEED is
/// refused, so init's discard failed with -EINVAL: memory is now unlocked before the first
/// discard (the mlock policy with `false`), and locked again at cleanup.
#[test]
fn mlocked_guest_memory_is_unlocked_before_the_first_discard() {
    require_uffd!();
    let mem = GuestMem::anon(16 * 4096);
    // SAFETY: locking the test's own mapping.
    if unsafe { libc::mlock(mem.addr as *const libc::c_void, mem.len) } != 0 {
        skip(format_args!("mlock: {}", std::io::Error::last_os_error()));
        return;
    }
    let hooks = std::sync::Arc::new(BlockLock {
        server: Server::new(vec![mem.block("ram")], false),
        calls: parking_lot::Mutex::new(Vec::new()),
    });
    let config = IncomingConfig {
        enable_mlock: true,
        ..Default::default()
    };
    let incoming = postcopy_ram::Incoming::new(hooks.clone(), config).unwrap();
    incoming.init(0).unwrap();
    assert!(!is_locked(&mem));
    incoming.discard_range("ram", 0, 4096).unwrap();
    incoming.enable_notify().unwrap();
    incoming.cleanup().unwrap();
    assert!(is_locked(&mem), "locked again at cleanup");
    assert_eq!(*hooks.calls.lock(), vec![false, true]);
}

/// Not a test on its own: the child of `default_mlock_policy_unlocks_before_discarding`,
/// which locks all of its memory (mlockall) and so runs alone in its own process. Ignored
/// as `helper_uffd_probe_as_child` is.
#[test]
#[ignore = "helper: runs only as the child process of another test"]
fn helper_mlockall_migration_as_child() {
    if std::env::var_os(PROBE_CHILD_ENV).is_none() {
        return;
    }
    let mem = GuestMem::anon(16 * 4096);
    // SAFETY: mlockall has no memory-safety preconditions.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
        println!(
            "PROBE-RESULT skip mlockall: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let locked_before = is_locked(&mem);
    let server = Server::new(vec![mem.block("ram")], false);
    let incoming = server.incoming(IncomingConfig {
        enable_mlock: true,
        ..Default::default()
    });
    let outcome = incoming
        .init(0)
        .and_then(|()| incoming.discard_range("ram", 0, 4096))
        .and_then(|()| incoming.enable_notify())
        .and_then(|()| incoming.cleanup());
    println!(
        "PROBE-RESULT {outcome:?} locked_before={locked_before} locked_after={}",
        is_locked(&mem)
    );
}

/// Item 4 with the library's own policy (munlockall / mlockall), in a child process.
#[test]
fn default_mlock_policy_unlocks_before_discarding() {
    require_uffd!();
    let result = run_helper("helper_mlockall_migration_as_child", false);
    // Only the child's own skip line (mlockall refused) skips: any other result, whatever
    // its words, is compared below.
    if let Some(reason) = result.strip_prefix("PROBE-RESULT skip ") {
        skip(reason);
        return;
    }
    assert_eq!(
        result,
        "PROBE-RESULT Ok(()) locked_before=true locked_after=true"
    );
}

/// Item 12: the host check only registered an anonymous test page, so a block that cannot
/// be registered (a regular-file mapping) passed it and failed at LISTEN, after the source
/// had stopped the guest. Every block kind that will be registered is now checked.
#[test]
fn host_check_covers_every_block_kind() {
    require_uffd!();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("regular-file-block");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(16 * 4096).unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: a fresh shared mapping of our own file.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            16 * 4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            raw,
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED);
    let mapped = GuestMem {
        addr: addr as usize,
        len: 16 * 4096,
    };
    let regular = RamBlock {
        backing: Backing::File {
            fd: raw,
            offset: 0,
            shared: true,
        },
        ..mapped.block("ext4-file")
    };
    let anon = GuestMem::anon(16 * 4096);
    // Anonymous memory alone passes.
    postcopy_ram::check_host_support(vec![anon.block("ram")], 4096).unwrap();
    let err = postcopy_ram::check_host_support(vec![anon.block("ram"), regular.clone()], 4096)
        .expect_err("a regular-file block cannot be registered for missing faults");
    assert!(err.message().contains("ext4-file"), "{err}");
    // What it protects against: the same blocks fail at enable_notify (LISTEN).
    let server = Server::new(vec![anon.block("ram"), regular], false);
    let incoming = server.incoming(IncomingConfig::default());
    assert_eq!(
        incoming.supported_by_host().unwrap_err().errno(),
        err.errno()
    );
    incoming.init(0).unwrap();
    assert_eq!(incoming.enable_notify().unwrap_err().errno(), err.errno());
    incoming.cleanup().unwrap();
    drop(mapped);
    drop(file);
    let _ = std::fs::remove_file(path);
}
