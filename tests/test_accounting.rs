//! Issue 17 item 12: the test command's count must mean what it says. A skipped test is
//! recorded by `common::skip` and counted as skipped (scripts/test.sh), the child-process
//! helpers are not tests of their own, and no test compares a duration with a fixed bound.
//! The last three are checks over the test sources (tests/, demo/tests/ and the unit tests
//! in src/ and demo/src/), so that a new test cannot quietly undo them.

mod common;

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CHILD_ENV: &str = "PCR_TEST_ACCOUNTING_CHILD";
const REASON: &str = "forced: the skip helper's own test";

/// Not a test on its own: the child of `a_skip_is_recorded_with_the_test_name_and_reason`.
#[test]
#[ignore = "helper: runs only as the child process of another test"]
fn helper_skip_as_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    common::skip(REASON);
}

/// `skip` prints the reason (stderr) and appends `binary<TAB>test<TAB>reason` to the file
/// named by PCR_TEST_SKIP_LOG, with the test's own name, which scripts/test.sh matches
/// against libtest's list of tests run.
#[test]
fn a_skip_is_recorded_with_the_test_name_and_reason() {
    let log = std::env::temp_dir().join(format!("pcr-skip-log-{}", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(&exe)
        .args(["--exact", "helper_skip_as_child", "--ignored"])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env(common::SKIP_LOG_ENV, &log)
        .output()
        .expect("running the helper child");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("SKIP: {REASON}")), "{stderr}");
    let recorded = std::fs::read_to_string(&log).expect("the skip log");
    let _ = std::fs::remove_file(&log);
    let binary = exe.file_name().unwrap().to_string_lossy();
    assert_eq!(
        recorded,
        format!("{binary}\thelper_skip_as_child\t{REASON}\n")
    );
}

/// Every `.rs` file under `dir` (recursively).
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// (file, first line number, lines) of the test code: whole files under tests/ and
/// demo/tests/, and what follows `#[cfg(test)]` in src/ and demo/src/. This file is left
/// out (it spells the patterns it looks for).
fn test_code() -> Vec<(String, usize, Vec<String>)> {
    let root = Path::new(ROOT);
    let mut out = Vec::new();
    for (dir, whole) in [
        ("tests", true),
        ("demo/tests", true),
        ("src", false),
        ("demo/src", false),
    ] {
        let mut files = Vec::new();
        rust_files(&root.join(dir), &mut files);
        files.sort();
        for f in files {
            if f.ends_with("tests/test_accounting.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            let first = if whole {
                0
            } else {
                match lines.iter().position(|l| l.trim() == "#[cfg(test)]") {
                    Some(at) => at,
                    None => continue,
                }
            };
            let name = f.strip_prefix(root).unwrap().display().to_string();
            out.push((name, first + 1, lines[first..].to_vec()));
        }
    }
    out
}

/// A skip printed by hand (`eprintln!("SKIP: ...")`) is counted as a pass: skips go through
/// `common::skip` (tests/common/skip.rs, shared with demo/tests/common), which records them.
#[test]
fn every_skip_goes_through_the_skip_helper() {
    let mut found = Vec::new();
    for (file, first, lines) in test_code() {
        if file.ends_with("common/skip.rs") {
            continue;
        }
        for (i, l) in lines.iter().enumerate() {
            if l.contains("\"SKIP") {
                found.push(format!("{file}:{}: {}", first + i, l.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "skips printed by hand (use common::skip):\n{}",
        found.join("\n")
    );
}

/// A test function that only serves as another test's child process is not a test: it is
/// `#[ignore]`d and run with `--ignored --exact` by its parent.
#[test]
fn child_process_helpers_are_ignored() {
    let mut found = Vec::new();
    for (file, first, lines) in test_code() {
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let Some(name) = t.strip_prefix("fn helper_") else {
                continue;
            };
            if !name.contains("_as_child") {
                continue;
            }
            let attrs = lines[..i].iter().rev().take_while(|a| {
                a.trim_start().starts_with("#[") || a.trim_start().starts_with("///")
            });
            if !attrs
                .into_iter()
                .any(|a| a.trim_start().starts_with("#[ignore"))
            {
                found.push(format!("{file}:{}: {}", first + i, t));
            }
        }
    }
    assert!(
        found.is_empty(),
        "child-process helpers counted as tests (mark them #[ignore]):\n{}",
        found.join("\n")
    );
}

/// Whether `l` compares a measured time with a fixed upper bound: `x.elapsed() < ...`
/// (except the hang guard `HANG_GUARD`), or a name ending in `ms`/`_ms`/`_ns`/`_us`/`secs`
/// (indexed or not) followed by `<` or `<=` and a number.
fn wall_clock_bound(l: &str) -> bool {
    let code = l.split("//").next().unwrap_or("");
    if code.contains(".elapsed() <") && !code.contains("HANG_GUARD") {
        return true;
    }
    let b = code.as_bytes();
    for (at, _) in code.match_indices('<') {
        let next = b.get(at + 1).copied();
        if next == Some(b'<') || at > 0 && b[at - 1] == b'<' {
            continue;
        }
        let rhs = code[at + 1..].trim_start_matches('=').trim_start();
        if !rhs.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        let lhs = code[..at].trim_end();
        let lhs = lhs.trim_end_matches(|c: char| c == ']' || c.is_ascii_digit() || c == '[');
        let lhs = lhs.trim_end_matches(')');
        let ident: String = lhs
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect::<String>()
            .chars()
            .rev()
            .collect();
        if ident == "ms"
            || ident.ends_with("_ms")
            || ident.ends_with("_ns")
            || ident.ends_with("_us")
            || ident.ends_with("secs")
        {
            return true;
        }
    }
    false
}

#[test]
fn the_wall_clock_bound_check_sees_the_patterns() {
    for l in [
        "assert!(start.elapsed() < Duration::from_secs(120), \"slow\");",
        "assert!(ms < 1000.0, \"exits within a second\");",
        "assert!(r.per_vcpu_ms[0] >= 99 && r.per_vcpu_ms[0] < 400, \"{r:?}\");",
        "assert!(r.total_ms >= 29 && r.total_ms < 45, \"{r:?}\");",
        "assert!(r.latency_max_ns <= 5_000_000);",
    ] {
        assert!(wall_clock_bound(l), "{l}");
    }
    for l in [
        "assert!(start.elapsed() < HANG_GUARD, \"hang: {what}\");",
        "assert!(r.total_ms <= r.per_vcpu_ms[1] + 1, \"{r:?}\");",
        "assert!(ms * 2.0 <= run_ms, \"{line}\");",
        "let x: Vec<u8> = 1 << 20;",
        "assert!(r.per_vcpu_ms[0] >= 99);",
    ] {
        assert!(!wall_clock_bound(l), "{l}");
    }
}

/// No test fails because the machine is slow: durations are compared with each other
/// (order, sums, ratios against a baseline of the same run), never with a fixed bound.
/// Timings belong in the benchmarks.
#[test]
fn no_test_compares_a_duration_with_a_fixed_bound() {
    let mut found = Vec::new();
    for (file, first, lines) in test_code() {
        for (i, l) in lines.iter().enumerate() {
            if wall_clock_bound(l) {
                found.push(format!("{file}:{}: {}", first + i, l.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "wall-clock thresholds in tests:\n{}",
        found.join("\n")
    );
}
