//! Group commit: one flush of the log at a time, and a sync whose writes an earlier flush
//! already covered returns without flushing (DESIGN.md, "Durability").

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};

/// How far the log is durable, and who may flush next.
pub(crate) struct Durability {
    turns: Mutex<Turns>,
    done: Condvar,
    /// `Turns::durable`, readable without the lock.
    end: AtomicU64,
}

struct Turns {
    durable: u64,
    flushing: bool,
}

impl Durability {
    pub fn new(end: u64) -> Self {
        Self {
            turns: Mutex::new(Turns { durable: end, flushing: false }),
            done: Condvar::new(),
            end: AtomicU64::new(end),
        }
    }

    /// The end of the durable log.
    pub fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    /// Waits until the log is durable up to `target` (then `None`: nothing to do) or no
    /// flush is running (then the turn to flush). Waiting threads wake at the end of each
    /// flush, so all whose writes it covered return at once.
    pub fn turn(&self, target: u64) -> Option<Turn<'_>> {
        let mut t = self.turns.lock();
        loop {
            if t.durable >= target {
                return None;
            }
            if !t.flushing {
                t.flushing = true;
                return Some(Turn { d: self, durable: t.durable, finished: None });
            }
            self.done.wait(&mut t);
        }
    }

    /// The turn to flush whatever the durable end (compaction, close).
    pub fn exclusive(&self) -> Turn<'_> {
        self.turn(u64::MAX).expect("no log is durable to u64::MAX")
    }
}

/// The right to flush the log; dropping it lets the next one flush.
pub(crate) struct Turn<'a> {
    d: &'a Durability,
    /// The durable end when the turn began.
    pub durable: u64,
    finished: Option<u64>,
}

impl Turn<'_> {
    /// The log is now durable up to `end`.
    pub fn finish(mut self, end: u64) {
        self.finished = Some(end);
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut t = self.d.turns.lock();
        if let Some(end) = self.finished {
            t.durable = end;
            self.d.end.store(end, Ordering::Release);
        }
        t.flushing = false;
        drop(t);
        self.d.done.notify_all();
    }
}
