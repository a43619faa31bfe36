//! Sync policies, and the background thread that runs timed syncs and automatic compaction.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::Store;

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

/// How often the thread looks at the garbage ratio when only compacting automatically.
const COMPACT_CHECK: Duration = Duration::from_millis(250);
/// Wait after a failed automatic compaction (a full disk, say) before trying again.
const COMPACT_RETRY: Duration = Duration::from_secs(30);
/// Logs smaller than this are never compacted automatically.
const COMPACT_MIN_LOG: u64 = 1 << 20;

/// The background thread of a store handle; dropping it stops and joins the thread.
pub(crate) struct Background {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts the thread working through `store` (a second handle on the same store).
    ///
    /// # Errors
    /// The OS refused a thread.
    pub fn spawn(
        store: Store,
        interval: Option<Duration>,
        compact_at: Option<f64>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = Arc::clone(&stop);
        let tick = interval.map_or(COMPACT_CHECK, |i| i.min(COMPACT_CHECK));
        let thread =
            std::thread::Builder::new().name("mapkv-background".into()).spawn(move || {
                let (mut last_sync, mut retry_at) = (Instant::now(), Instant::now());
                loop {
                    {
                        let mut stopped = signal.0.lock();
                        if !*stopped {
                            signal.1.wait_for(&mut stopped, tick);
                        }
                        if *stopped {
                            return;
                        }
                    }
                    // Errors poison the store (a failed flush) or leave it as it was (a
                    // failed compaction); the user's next call reports the former.
                    if interval.is_some_and(|i| last_sync.elapsed() >= i) {
                        let _ = store.sync();
                        last_sync = Instant::now();
                    }
                    if let Some(ratio) = compact_at
                        && Instant::now() >= retry_at
                        && store.garbage_at_least(ratio, COMPACT_MIN_LOG)
                        && store.compact().is_err()
                    {
                        retry_at = Instant::now() + COMPACT_RETRY;
                    }
                }
            })?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
