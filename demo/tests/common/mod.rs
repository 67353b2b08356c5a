//! Shared helpers for the demo's tests: [`skip`], the library tests' own (one copy, in
//! tests/common/skip.rs), so that scripts/test.sh counts these skips as skips too.
#![allow(dead_code)]

#[path = "../../../tests/common/skip.rs"]
mod skip;
#[allow(unused_imports)] // not every test binary skips
pub use skip::skip;

/// How long [`wait_until`] waits before calling it a hang. A liveness guard, not a timing
/// check: far above any run, it only turns a hang into a failure.
pub const HANG_GUARD: std::time::Duration = std::time::Duration::from_secs(120);

/// Polls `cond` every millisecond until it holds; fails the test with `what` if it still does
/// not after [`HANG_GUARD`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < HANG_GUARD, "hang: {what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
