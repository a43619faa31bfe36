//! The background threads that run timed syncs and automatic
//! compaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};

/// What the background threads do, through a store handle of their own (the store
/// implements it; this module knows nothing else of it).
pub(crate) trait Work: Send + 'static {
    /// Syncs (a failure poisons the store: the user's next call reports it).
    fn sync(&self);
    /// Whether garbage is at least `ratio` of a log of at least `min_log` bytes.
    fn garbage_at_least(&self, ratio: f64, min_log: u64) -> bool;
    /// Compacts, stopping with [`Error::CompactionStopped`] once `stop` is set.
    fn compact(&self, stop: &Stop) -> Result<()>;
}

/// How often the compaction thread looks at the garbage ratio.
const COMPACT_CHECK: Duration = Duration::from_millis(100);
/// Wait after a failed automatic compaction (a full disk, say) before trying again.
const COMPACT_RETRY: Duration = Duration::from_secs(30);
/// Wait after an automatic compaction that writers outran before trying again.
const OUTRUN_RETRY: Duration = Duration::from_secs(1);
/// Logs smaller than this are never compacted automatically.
const COMPACT_MIN_LOG: u64 = 1 << 20;

/// Asks a running compaction to stop before its swap (the store is being dropped).
#[derive(Debug, Default)]
pub(crate) struct Stop(AtomicBool);

impl Stop {
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

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
    pub fn spawn<W: Work>(
        handle: impl Fn() -> W,
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
                    store.sync();
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
                    match store.compact(&stop.stop) {
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
