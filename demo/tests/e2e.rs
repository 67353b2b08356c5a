//! End-to-end: the `postcopy-migrate` command migrates between two real processes.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn migrate(args: &[&str]) -> Output {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_postcopy-migrate"))
        .args(args)
        .arg("--quiet")
        .output()
        .expect("run postcopy-migrate");
    assert!(
        start.elapsed() < Duration::from_secs(120),
        "migration took too long"
    );
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn uffd_available() -> bool {
    match postcopy_ram::sys::uffd::probe() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIP: userfaultfd unavailable: {e}");
            false
        }
    }
}

fn assert_ok(out: &Output) {
    let t = text(out);
    assert!(out.status.success(), "migration failed:\n{t}");
    assert!(
        t.contains("memory checksum") && t.contains(": MATCH"),
        "{t}"
    );
    assert!(t.contains("result                 OK"), "{t}");
}

#[test]
fn anonymous_memory_with_precopy_and_faults() {
    if !uffd_available() {
        return;
    }
    let out = migrate(&["--size", "32M", "--precopy-rounds", "1", "--threads", "4"]);
    assert_ok(&out);
    let t = text(&out);
    assert!(t.contains("pages requested"), "{t}");
}

#[test]
fn pure_postcopy_of_a_shared_memfd() {
    if !uffd_available() {
        return;
    }
    let out = migrate(&["--size", "16M", "--kind", "memfd", "--precopy-rounds", "0"]);
    assert_ok(&out);
}

#[test]
fn hugetlbfs_memory() {
    if !uffd_available() {
        return;
    }
    let out = migrate(&[
        "--size",
        "16M",
        "--kind",
        "hugetlb",
        "--precopy-rounds",
        "1",
    ]);
    let t = text(&out);
    if !out.status.success() && t.contains("huge pages") {
        eprintln!("SKIP: {t}");
        return;
    }
    assert_ok(&out);
}

#[test]
fn kvm_guest_runs_on_migrating_memory() {
    if !uffd_available() {
        return;
    }
    if let Err(e) = postcopy_demo::kvm::kvm_available() {
        eprintln!("SKIP: KVM unavailable: {e}");
        return;
    }
    let out = migrate(&["--size", "16M", "--kvm", "--precopy-rounds", "0"]);
    assert_ok(&out);
    let t = text(&out);
    assert!(
        t.contains("KVM guest checksum") && !t.contains("MISMATCH"),
        "{t}"
    );
    // Pure postcopy: the guest's vCPU faults went through the library.
    let faults: u64 = t
        .lines()
        .find(|l| l.starts_with("destination library"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(faults > 0, "no vCPU fault reached the library:\n{t}");
}

#[test]
fn source_failure_is_reported_and_nothing_hangs() {
    if !uffd_available() {
        return;
    }
    let out = migrate(&[
        "--size",
        "32M",
        "--precopy-rounds",
        "0",
        "--abort-postcopy-after",
        "300",
    ]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("postcopy ended early (state End"), "{t}");
    assert!(t.contains("the peer closed the connection"), "{t}");
}
