//! Requests that must not be lost: the pause flag and the host's commands to the fault
//! thread (re-send the pending pages; wait until no request is in flight).
//!
//! The pending set is the per-host-page "requested" bitmap of each block: a page's bit is
//! set when its first fault is read, and cleared only when the page is placed (or
//! poisoned by an abort). A failed request leaves it set and pauses requests; faults read
//! while paused set it without calling `request_page`.
//!
//! A re-send is performed by the fault thread itself, so it never races the thread's own
//! requests and the "name the block" state stays with one sender: the host raises a
//! command number and wakes the thread through its eventfd; the thread runs the command
//! between two batches, publishes the outcome under a short lock (no syscall inside) and
//! notifies; the host waits for that number.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// Outcome of a command: requests re-sent, or the positive errno of the re-send that failed.
pub(crate) type Outcome = std::result::Result<u64, i32>;

#[derive(Debug)]
struct Done {
    seq: u64,
    outcome: Outcome,
}

/// The fault thread's pause flag and command channel.
#[derive(Debug)]
pub(crate) struct Control {
    /// Requests are paused (a request failed, the host paused them, or an abort).
    pub paused: AtomicBool,
    /// Set by an abort: re-sends are refused from then on.
    pub aborted: AtomicBool,
    /// The thread has exited (commands can no longer run).
    pub exited: AtomicBool,
    wanted: AtomicU64,
    resend: AtomicBool,
    done: Mutex<Done>,
    cv: Condvar,
    /// One host command at a time.
    host: Mutex<()>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            paused: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            exited: AtomicBool::new(false),
            wanted: AtomicU64::new(0),
            resend: AtomicBool::new(false),
            done: Mutex::new(Done {
                seq: 0,
                outcome: Ok(0),
            }),
            cv: Condvar::new(),
            host: Mutex::new(()),
        }
    }
}

impl Control {
    /// Host side: asks the fault thread to run a command (`resend`: re-send the pending
    /// pages; otherwise only pass a point between two messages), wakes it with `wake`, and
    /// waits for the outcome. Must not run on the fault thread.
    pub(crate) fn run(&self, resend: bool, wake: impl Fn()) -> Outcome {
        let _one = self.host.lock();
        if self.exited.load(Ordering::Acquire) {
            return Err(libc::ESRCH);
        }
        self.resend.store(resend, Ordering::Release);
        let seq = self.wanted.fetch_add(1, Ordering::AcqRel) + 1;
        wake();
        let mut done = self.done.lock();
        while done.seq < seq {
            if self.exited.load(Ordering::Acquire) {
                return Err(libc::ESRCH);
            }
            self.cv.wait_for(&mut done, Duration::from_millis(50));
        }
        done.outcome
    }

    /// Fault-thread side: the command number to serve, if one is waiting past `seen`.
    #[inline]
    pub(crate) fn wanted_after(&self, seen: u64) -> Option<u64> {
        let w = self.wanted.load(Ordering::Acquire);
        (w != seen).then_some(w)
    }

    /// Fault-thread side: whether the command being served asks for a re-send.
    pub(crate) fn take_resend(&self) -> bool {
        self.resend.swap(false, Ordering::AcqRel)
    }

    /// Fault-thread side: publishes the outcome of command `seq` and wakes the host.
    pub(crate) fn complete(&self, seq: u64, outcome: Outcome) {
        {
            let mut done = self.done.lock();
            done.seq = seq;
            done.outcome = outcome;
        }
        self.cv.notify_all();
    }

    /// Fault-thread side, on exit: no command will run any more.
    pub(crate) fn thread_exited(&self) {
        self.exited.store(true, Ordering::Release);
        drop(self.done.lock());
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn host_waits_for_the_thread_to_serve_its_command() {
        let c = Arc::new(Control::default());
        let server = {
            let c = c.clone();
            std::thread::spawn(move || {
                let mut seen = 0;
                let mut served = 0;
                while served < 3 {
                    if let Some(w) = c.wanted_after(seen) {
                        let n = if c.take_resend() { 7 } else { 0 };
                        c.complete(w, Ok(n));
                        seen = w;
                        served += 1;
                    }
                    std::thread::yield_now();
                }
                c.thread_exited();
            })
        };
        assert_eq!(c.run(true, || {}), Ok(7));
        assert_eq!(c.run(false, || {}), Ok(0));
        assert_eq!(c.run(true, || {}), Ok(7));
        server.join().unwrap();
        assert_eq!(c.run(true, || {}), Err(libc::ESRCH));
    }
}
