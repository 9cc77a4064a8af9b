//! A connection's wake-up signal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Waker;

use futures_util::task::AtomicWaker;

/// A connection's wake-up: raised by its streams, the heartbeat ticker and the retry timer;
/// one flag and one waker, registered once, so waking a connection allocates nothing and a
/// waiting connection holds no timer and no per-wait registration.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Clears the flag; `true` if it was raised.
    pub(crate) fn take(&self) -> bool {
        self.raised.swap(false, Ordering::AcqRel)
    }

    /// Registers the task to wake when raised.
    pub(crate) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }
}
