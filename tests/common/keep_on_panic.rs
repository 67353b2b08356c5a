//! Guest memory that outlives a failed test. A thread blocked in it when an assertion
//! fails is woken by the cleanup that unwinding runs, and must not then find its page
//! unmapped (a SIGSEGV would take the whole test binary down and hide the failure).

use std::ops::Deref;

use super::GuestMem;

pub struct KeepOnPanic(Option<GuestMem>);

impl KeepOnPanic {
    pub fn new(mem: GuestMem) -> KeepOnPanic {
        KeepOnPanic(Some(mem))
    }
}

impl Deref for KeepOnPanic {
    type Target = GuestMem;

    fn deref(&self) -> &GuestMem {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::mem::forget(self.0.take());
        }
    }
}
