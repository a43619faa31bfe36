//! Sync policies, and the background threads that run timed syncs and automatic
//! compaction.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::compact::Stop;
use crate::{Error, Store};

/// When writes become durable (survive power loss) without an explicit
/// [`Store::sync`]. Whatever the policy, a write that returned survives the process being
/// killed, and `sync()` is always available.
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

/// How often the compaction thread looks at the garbage ratio.
const COMPACT_CHECK: Duration = Duration::from_millis(100);
/// Wait after a failed automatic compaction (a full disk, say) before trying again.
const COMPACT_RETRY: Duration = Duration::from_secs(30);
/// Wait after an automatic compaction that writers outran before trying again.
const OUTRUN_RETRY: Duration = Duration::from_secs(1);
/// Logs smaller than this are never compacted automatically.
const COMPACT_MIN_LOG: u64 = 1 << 20;

/// The background threads of a store handle: one for timed syncs, one for automatic
/// compaction, each working through a handle of its own on the same store, so a
/// compaction never delays a sync. Dropping it stops a running compaction before its swap
/// and joins both.
pub(crate) struct Background {
    stop: Arc<Signal>,
    threads: Vec<JoinHandle<()>>,
}

/// Set once, when the handle is dropped: waiting threads wake at once, and a running
/// compaction sees it between records.
#[derive(Default)]
struct Signal {
    stop: Stop,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Signal {
    /// Waits until `deadline` or until stopped; returns whether stopped. (The flag is read
    /// under `lock`, which `set` takes before waking: no wake-up is lost.)
    fn wait_until(&self, deadline: Instant) -> bool {
        let mut guard = self.lock.lock();
        while !self.stop.is_set() && !self.wake.wait_until(&mut guard, deadline).timed_out() {}
        self.stop.is_set()
    }

    fn set(&self) {
        self.stop.set();
        drop(self.lock.lock());
        self.wake.notify_all();
    }
}

impl Background {
    /// Starts the threads that `interval` (timed syncs) and `compact_at` (automatic
    /// compaction) ask for, each with a handle from `handle`.
    ///
    /// # Errors
    /// The OS refused a thread.
    pub fn spawn(
        handle: impl Fn() -> Store,
        interval: Option<Duration>,
        compact_at: Option<f64>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(Signal::default());
        let mut bg = Self { stop: Arc::clone(&stop), threads: Vec::new() };
        let thread = |name: &str| std::thread::Builder::new().name(name.into());
        if let Some(every) = interval {
            let (store, stop) = (handle(), Arc::clone(&stop));
            bg.threads.push(thread("mapkv-sync").spawn(move || {
                // Syncs start every `every`, however long each takes: a power loss costs
                // at most about `every` plus one flush of the latest writes. A failed flush
                // poisons the store; the user's next call reports it.
                let mut next = Instant::now() + every;
                while !stop.wait_until(next) {
                    next += every;
                    let _ = store.sync();
                    next = next.max(Instant::now());
                }
            })?);
        }
        if let Some(ratio) = compact_at {
            let (store, stop) = (handle(), Arc::clone(&stop));
            bg.threads.push(thread("mapkv-compact").spawn(move || {
                let mut at = Instant::now();
                loop {
                    at = at.max(Instant::now() + COMPACT_CHECK);
                    if stop.wait_until(at) {
                        return;
                    }
                    if !store.garbage_at_least(ratio, COMPACT_MIN_LOG) {
                        continue;
                    }
                    // A failed compaction leaves the store as it was.
                    match store.compact_until(&stop.stop) {
                        Ok(_) | Err(Error::CompactionStopped) => {}
                        Err(Error::CompactionOutrun { .. }) => at = Instant::now() + OUTRUN_RETRY,
                        Err(_) => at = Instant::now() + COMPACT_RETRY,
                    }
                }
            })?);
        }
        Ok(bg)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.set();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
