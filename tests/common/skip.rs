//! Skipped tests, counted as skipped: [`skip`] says why and records the test for the test
//! command (scripts/test.sh), which counts it as skipped, not passed, and prints the reason.
//! Shared by the library's tests (tests/common) and the demo's (demo/tests/common).

use std::io::Write;

/// Names the file that [`skip`] appends its records to (set by scripts/test.sh).
pub const SKIP_LOG_ENV: &str = "PCR_TEST_SKIP_LOG";

/// Marks the calling test as skipped, then the caller returns: prints `SKIP: <reason>` to
/// stderr and, when `PCR_TEST_SKIP_LOG` names a file, appends one line
/// `<binary>\t<test>\t<reason>` to it. libtest runs each test on a thread named after the
/// test, so call it from the test's own thread. A test that records a skip and then fails
/// still counts as failed.
pub fn skip(reason: impl std::fmt::Display) {
    let reason = reason.to_string().replace(['\n', '\t'], " ");
    eprintln!("SKIP: {reason}");
    let Some(path) = std::env::var_os(SKIP_LOG_ENV) else {
        return;
    };
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "?".into());
    let test = std::thread::current()
        .name()
        .unwrap_or("?")
        .replace(['\n', '\t'], " ");
    // One write of one line to a file opened for appending: lines of tests running in
    // parallel (in this process or another) do not interleave.
    let line = format!("{binary}\t{test}\t{reason}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        // The test command then counts this test as passed: make that loud.
        panic!("recording the skip in {}: {e}", path.to_string_lossy());
    }
}
