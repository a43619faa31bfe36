//! `Stats`: what a store holds, for monitoring and for deciding when to compact.

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
    /// corruption, not a torn tail. It lags `durable_end` by one sync
    /// ([DESIGN.md §5](https://github.com/mapkv/mapkv/blob/main/DESIGN.md#5-durability-protocol)).
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
