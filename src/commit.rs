//! Sync policies, and group commit: one flush of the log at a time, and a sync whose writes an earlier flush
//! already covered returns without flushing (DESIGN.md, "Durability").

use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// When writes become durable (survive power loss) without an explicit
/// [`Store::sync`](crate::Store::sync). Whatever the policy, a write that returned survives
/// the process being killed, and `sync()` is always available.
///
/// ```
/// # let tmp = tempfile::tempdir().unwrap();
/// use mapkv::{OpenOptions, SyncPolicy};
/// // Durable once 1 MiB has been written since the last sync (and at every sync()).
/// let store = OpenOptions::new().sync_policy(SyncPolicy::EveryBytes(1 << 20)).open(tmp.path())?;
/// store.put("k", "v")?;
/// # Ok::<(), mapkv::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SyncPolicy {
    /// Only `sync()` (and a clean close) makes writes durable.
    #[default]
    Manual,
    /// Every put, delete and batch is durable when it returns. Threads writing at the
    /// same time share flushes (group commit).
    EveryWrite,
    /// A sync inside the write that brings the bytes written since the last sync to at
    /// least this many.
    EveryBytes(u64),
    /// A background thread syncs this often: a power loss costs at most about this much
    /// of the latest writes.
    Interval(Duration),
}

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

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_turn_is_needed_only_past_the_durable_end() {
        let d = Durability::new(100);
        assert!(d.turn(100).is_none(), "already durable");
        let turn = d.turn(150).expect("a flush is needed");
        assert_eq!(turn.durable, 100);
        turn.finish(200);
        assert_eq!(d.end(), 200);
        assert!(d.turn(200).is_none());
        // A turn dropped without finishing (a failed flush) leaves the end where it was
        // and lets the next one flush.
        drop(d.turn(300).expect("turn"));
        assert_eq!(d.end(), 200);
        assert!(d.turn(300).is_some());
    }

    #[test]
    fn waiters_covered_by_the_running_flush_return_without_flushing() {
        let d = Durability::new(0);
        let running = d.turn(10).expect("first flush");
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            let (covered, not_covered, d) = (tx.clone(), tx, &d);
            s.spawn(move || covered.send(("covered", d.turn(40).is_none())).expect("send"));
            s.spawn(move || not_covered.send(("past it", d.turn(60).is_some())).expect("send"));
            // Both wait while the flush runs.
            assert!(rx.recv_timeout(Duration::from_millis(100)).is_err(), "did not wait");
            running.finish(50);
            let mut got: Vec<_> = (0..2).map(|_| rx.recv().expect("answer")).collect();
            got.sort();
            assert_eq!(got, [("covered", true), ("past it", true)]);
        });
        assert_eq!(d.end(), 50, "the second waiter's turn ended without a flush");
    }

    #[test]
    fn the_exclusive_turn_waits_for_a_running_flush() {
        let d = Durability::new(0);
        let running = d.turn(10).expect("flush");
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            let d = &d;
            s.spawn(move || {
                let t = d.exclusive();
                tx.send(t.durable).expect("send");
            });
            assert!(rx.recv_timeout(Duration::from_millis(100)).is_err(), "did not wait");
            running.finish(10);
            assert_eq!(rx.recv().expect("exclusive turn"), 10);
        });
    }
}
