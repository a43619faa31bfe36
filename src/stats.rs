//! `Stats`: what a store holds, for monitoring and for deciding when to compact.

use crate::Store;
use crate::format::DATA_START;

/// A store's figures at one moment; see [`Store::stats`](crate::Store::stats).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Live keys.
    pub live_keys: u64,
    /// Put and delete records in the log.
    pub records: u64,
    /// Bytes of log (records, from the first to the end).
    pub log_bytes: u64,
    /// Bytes of log in records that are no longer live (overwritten, deleted, tombstones,
    /// batch commits): what compaction gives back.
    pub garbage_bytes: u64,
    /// `garbage_bytes / log_bytes` (0 for an empty log).
    pub garbage_ratio: f64,
    /// Size of the data file on disk (the log plus space reserved for growth).
    pub data_file_bytes: u64,
    /// Size of the index file.
    pub index_file_bytes: u64,
    /// Occupied index slots (live and deleted keys) over slots.
    pub index_load_factor: f64,
    /// End of the log: every write that returned lies below it.
    pub log_end: u64,
    /// End of the log that is durable (survives power loss).
    pub durable_end: u64,
    /// The committed length in the data file's header: recovery treats damage below it as
    /// corruption, not a torn tail. It lags `durable_end` by one sync (DESIGN.md §5).
    pub committed: u64,
    /// Whether open had to rebuild the index (the store was not closed cleanly, or its
    /// index was missing or damaged).
    pub recovered_at_open: bool,
    /// Compactions since open (for a following handle: times it moved to new files).
    pub compactions: u64,
    /// Whether this is a read-only handle following a writer in another process: the
    /// figures are the writer's, from its live page.
    pub following: bool,
}

impl Store {
    /// The store's figures now: keys, records, garbage, file sizes, index load, how much
    /// is durable. Takes the writer lock briefly (never waits for a flush).
    pub fn stats(&self) -> Stats {
        let _ = self.follow();
        let durable = self.shared.durability.end();
        let w = self.shared.writer.lock();
        // A follower shows the writer's figures, from the live page.
        let page = self.shared.follow.as_ref().filter(|f| f.attached()).map(|f| f.live.figures());
        let (end, records, live_bytes, used, durable, committed) = match page {
            Some(f) => {
                (w.log.map().visible(), f.records, f.live_bytes, f.used, f.durable, f.committed)
            }
            None => {
                (w.end, w.counts.records, w.counts.live_bytes, w.used, durable, w.header.committed)
            }
        };
        let log_bytes = end.saturating_sub(DATA_START);
        let garbage_bytes = log_bytes.saturating_sub(live_bytes);
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        Stats {
            live_keys: self.len(),
            records,
            log_bytes,
            garbage_bytes,
            garbage_ratio: ratio(garbage_bytes, log_bytes),
            data_file_bytes: w.log.map().len(),
            index_file_bytes: w.index.len(),
            index_load_factor: ratio(used, self.capacity(&w)),
            log_end: end,
            durable_end: durable,
            committed,
            recovered_at_open: !self.shared.recovery.was_clean(),
            compactions: w.generation,
            following: page.is_some(),
        }
    }

    /// Whether garbage is at least `ratio` of a log of at least `min_log` bytes.
    pub(crate) fn garbage_at_least(&self, ratio: f64, min_log: u64) -> bool {
        let w = self.shared.writer.lock();
        let log_bytes = w.end.saturating_sub(DATA_START);
        let garbage = log_bytes.saturating_sub(w.counts.live_bytes);
        log_bytes >= min_log && garbage as f64 >= ratio * log_bytes as f64
    }
}
