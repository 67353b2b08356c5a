//! End-to-end: the `postcopy-migrate` command migrates between two real processes.

mod common;

use std::process::{Command, Output};
use std::time::Instant;

use common::skip;

fn migrate(args: &[&str]) -> Output {
    migrate_timed(args).0
}

/// The run's output and its wall time in ms (the baseline of the abort tests' ratio).
fn migrate_timed(args: &[&str]) -> (Output, f64) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_postcopy-migrate"))
        .args(args)
        .arg("--quiet")
        .output()
        .expect("run postcopy-migrate");
    (out, start.elapsed().as_secs_f64() * 1e3)
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
            skip(format_args!("userfaultfd unavailable: {e}"));
            false
        }
    }
}

/// For the KVM guest tests: userfaultfd and KVM, or false after printing why not.
fn uffd_and_kvm_available() -> bool {
    if !uffd_available() {
        return false;
    }
    match postcopy_demo::kvm::kvm_available() {
        Ok(()) => true,
        Err(e) => {
            skip(format_args!("KVM unavailable: {e}"));
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

/// The line of the summary `t` that starts with `prefix` (the test fails without one).
fn line_starting<'a>(t: &'a str, prefix: &str) -> &'a str {
    t.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}:\n{t}"))
}

/// The count in a summary line's closing parenthesis (`(12 touches faulted)`).
fn count_in_parens(line: &str) -> f64 {
    line.rsplit('(')
        .next()
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no count in parentheses in {line:?}"))
}

/// The number after `key` in `line` (`key 12.5 us`).
fn number_after(line: &str, key: &str) -> f64 {
    let rest = &line[line
        .find(key)
        .unwrap_or_else(|| panic!("{key:?} in {line:?}"))
        + key.len()..];
    rest.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a number after {key:?} in {line:?}"))
}

#[test]
fn latency_split_accounts_for_sampled_faulted_touches() {
    if !uffd_available() {
        return;
    }
    let out = migrate(&[
        "--size",
        "64M",
        "--precopy-rounds",
        "0",
        "--bandwidth",
        "0",
        "--threads",
        "2",
        "--latency-split",
    ]);
    assert_ok(&out);
    let t = text(&out);
    let whole = line_starting(&t, "fault latency  ");
    let split = line_starting(&t, "fault latency split");
    let max = number_after(whole, "max");
    let faulted_touches = count_in_parens(whole);
    let sampled = count_in_parens(split);
    // Pure postcopy: the threads fault, most faulted touches are sampled, none twice.
    assert!(faulted_touches > 0.0, "{t}");
    assert!(sampled > 0.0 && sampled <= faulted_touches, "{t}");
    let page = number_after(split, "placed p50");
    let cpu = number_after(split, "again p50");
    assert!(page > 0.0 && cpu > 0.0, "{t}");
    // Each part of a touch is at most the touch, so each median is at most the largest.
    assert!(page <= max && cpu <= max, "{t}");
    // Without the option there is no split line.
    let plain = text(&migrate(&["--size", "16M", "--precopy-rounds", "0"]));
    assert!(!plain.contains("fault latency split"), "{plain}");
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
    // The huge pages the run needs (16 MiB), reserved here: without them the test is
    // skipped, and with them any failure of the run fails the test, whatever its output.
    let Ok(_huge) = postcopy_demo::memory::HugePageReservation::reserve(8)
        .map_err(|e| skip(format_args!("16 MiB of huge pages: {e}")))
    else {
        return;
    };
    let out = migrate(&[
        "--size",
        "16M",
        "--kind",
        "hugetlb",
        "--precopy-rounds",
        "1",
    ]);
    assert_ok(&out);
}

#[test]
fn kvm_guest_runs_on_migrating_memory() {
    if !uffd_and_kvm_available() {
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

/// The destination's abort line: lost pages, and how soon after the failure it exits,
/// against the whole run's wall time `run_ms` (starting both processes, connecting, the
/// migration up to the failure): a destination that waited for a timeout before exiting
/// would spend most of the run on it. No absolute threshold: this machine may be slow.
fn assert_aborted_fast(t: &str, run_ms: f64) {
    let line = t
        .lines()
        .find(|l| l.contains("[dest] postcopy aborted:"))
        .unwrap_or_else(|| panic!("no abort report:\n{t}"));
    assert!(
        line.contains("never arrived and were poisoned")
            || line.contains("never arrived and were filled with zeros"),
        "{line}"
    );
    let lost: u64 = line
        .split("; ")
        .nth(1)
        .and_then(|p| p.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(lost > 0, "the lost page count is reported: {line}");
    let ms: f64 = line
        .rsplit("exiting ")
        .next()
        .and_then(|p| p.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("exit delay");
    assert!(
        ms * 2.0 <= run_ms,
        "exits promptly after the failure (within half of the {run_ms:.0} ms run): {line}"
    );
}

#[test]
fn source_death_aborts_postcopy_reports_lost_pages_and_exits_within_a_second() {
    if !uffd_available() {
        return;
    }
    let (out, run_ms) = migrate_timed(&[
        "--size",
        "32M",
        "--precopy-rounds",
        "0",
        "--abort-postcopy-after",
        "300",
    ]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("the peer closed the connection"), "{t}");
    assert!(t.contains("destination exit status: exit status: 1"), "{t}");
    assert_aborted_fast(&t, run_ms);
}

#[test]
fn a_failed_placement_aborts_within_a_second_naming_the_cause() {
    if !uffd_available() {
        return;
    }
    let (out, run_ms) = migrate_timed(&[
        "--size",
        "32M",
        "--precopy-rounds",
        "0",
        "--inject-placement-failure",
        "200",
    ]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    let line = t
        .lines()
        .find(|l| l.contains("[dest] postcopy aborted:"))
        .unwrap_or("");
    assert!(
        line.contains("placing the page") && line.contains("Bad address"),
        "the cause is named: {t}"
    );
    assert_aborted_fast(&t, run_ms);
}

#[test]
fn recovery_after_both_channels_are_cut_completes_with_match() {
    if !uffd_available() {
        return;
    }
    let out = migrate(&[
        "--size",
        "32M",
        "--precopy-rounds",
        "1",
        "--fail-channel-after",
        "400",
    ]);
    assert_ok(&out);
    let t = text(&out);
    let line = line_starting(&t, "recovery ");
    assert!(line.contains("received bitmap lacked"), "{line}");
    assert!(t.contains("blocktime              total"), "{t}");
}

#[test]
fn kvm_guest_recovery_and_per_vcpu_blocktime() {
    if !uffd_and_kvm_available() {
        return;
    }
    let out = migrate(&[
        "--size",
        "16M",
        "--kvm",
        "--precopy-rounds",
        "0",
        "--fail-channel-after",
        "500",
    ]);
    assert_ok(&out);
    let t = text(&out);
    assert!(
        t.contains("KVM guest checksum") && !t.contains("MISMATCH"),
        "{t}"
    );
    assert!(t.lines().any(|l| l.starts_with("recovery ")), "{t}");
    let bt = line_starting(&t, "blocktime");
    assert!(bt.contains("per vCPU: ["), "{bt}");
}

#[test]
fn kvm_guest_abort_reports_lost_pages() {
    if !uffd_and_kvm_available() {
        return;
    }
    let (out, run_ms) = migrate_timed(&[
        "--size",
        "16M",
        "--kvm",
        "--precopy-rounds",
        "0",
        "--abort-postcopy-after",
        "500",
    ]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert_aborted_fast(&t, run_ms);
}
