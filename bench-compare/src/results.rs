//! What a run produces: the per-engine result records written to results/results.json, the
//! workload list they are keyed by, the median every figure is taken as, and the harness's
//! error-carrying `Res`. Imports no other module of the crate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// One timed workload's outcome.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Metric {
    /// Operations per run.
    pub ops: u64,
    /// Seconds of each run; the reported figure is their median.
    pub runs_s: Vec<f64>,
    /// Operations per second, from the median run.
    pub ops_per_sec: f64,
    /// Bytes of values read per second (large-value reads only).
    pub bytes_per_sec: Option<f64>,
}

impl Metric {
    pub fn new(ops: u64, mut runs_s: Vec<f64>) -> Self {
        let secs = median(&mut runs_s.clone());
        runs_s.shrink_to_fit();
        Metric { ops, runs_s, ops_per_sec: ops as f64 / secs, bytes_per_sec: None }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct EngineResult {
    pub engine: String,
    pub config: String,
    /// Workload id -> metric; a workload the engine cannot run is absent.
    pub workloads: BTreeMap<String, Metric>,
    /// Why a workload is absent.
    pub skipped: BTreeMap<String, String>,
    /// Sum of file sizes after the bulk load (durable).
    pub file_bytes: u64,
    /// Allocated blocks * 512 after the bulk load.
    pub alloc_bytes: u64,
    /// VmRSS before opening the engine (the harness's own keys and orders).
    pub rss_before_kib: u64,
    /// VmHWM after the main workloads (N keys), before the large-value phase.
    pub peak_rss_main_kib: u64,
    /// VmHWM at the end, large-value phase included.
    pub peak_rss_kib: u64,
    /// Wall time of the child process's whole run.
    pub wall_s: f64,
    pub error: Option<String>,
    /// Records of the YCSB dataset (24-byte keys, 1000-byte values).
    #[serde(default)]
    pub ycsb_records: u64,
    /// Open and recovery after kill -9 (also in `workloads` as "open" and "recovery", as
    /// opens per second, for the summary and the chart).
    #[serde(default)]
    pub open: Option<OpenRecovery>,
}

/// Open of a cleanly closed store and recovery after kill -9.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct OpenRecovery {
    /// Keys in the store (150-byte values), loaded durably and closed cleanly.
    pub keys: u64,
    /// Seconds of each clean open; the median is reported.
    pub open_runs_s: Vec<f64>,
    pub open_s: f64,
    /// Non-durable puts a writer child made before it was killed, per cycle.
    pub extra_writes: u64,
    /// Seconds of the open after each kill; the median is reported.
    pub recovery_runs_s: Vec<f64>,
    pub recovery_s: Option<f64>,
    /// Of each cycle's `extra_writes`, how many were found after the recovery.
    pub survived: Vec<u64>,
    /// mapkv: whether a clean open rebuilt the index (must be false).
    pub rebuilt_clean: Option<bool>,
    /// mapkv: whether the open after kill -9 rebuilt the index, and records replayed.
    pub rebuilt_after_kill: Option<bool>,
    pub replayed_after_kill: Option<u64>,
    /// Why the recovery half is missing, if it is.
    pub recovery_error: Option<String>,
}

/// Workloads in report order: id, short label (chart), title.
pub const WORKLOADS: &[(&str, &str, &str)] = &[
    ("bulk_load", "bulk load", "Bulk load: N puts in one transaction/batch, durable at the end"),
    (
        "put_durable",
        "durable put",
        "Individual durable writes: 3 rounds of 1000 x (one put + durable commit)",
    ),
    (
        "batch_durable",
        "batches",
        "Batch writes: 100 batches of 1000 puts, durable after each batch",
    ),
    ("get_1t", "get 1 thr", "Random reads, 1 thread: N gets of present keys in random order"),
    ("get_2t", "get 2 thr", "Random reads, 2 threads: each thread N gets (ops/s of both together)"),
    ("miss", "miss", "Random misses: N/10 gets of absent keys"),
    ("remove", "remove", "Removals: N/2 deletes in one transaction/batch, durable at the end"),
    (
        "put_nosync",
        "put no-sync",
        "Individual writes, not synced: N/10 single-key commits in each engine's non-durable mode",
    ),
    ("large_150", "read 150 B", "Reads of 150 B values: N/10 keys, random order, every byte read"),
    ("large_4k", "read 4 KiB", "Reads of 4 KiB values: N/50 keys, random order, every byte read"),
    (
        "large_1m",
        "read 1 MiB",
        "Reads of 1 MiB values: N/5000 keys (at least 20), random order, every byte read",
    ),
    ("ycsb_a", "YCSB A", "YCSB A (update heavy): 50% read / 50% update, scrambled zipfian 0.99"),
    ("ycsb_b", "YCSB B", "YCSB B (read mostly): 95% read / 5% update, scrambled zipfian 0.99"),
    ("ycsb_c", "YCSB C", "YCSB C (read only): 100% read, scrambled zipfian 0.99"),
    (
        "ycsb_d",
        "YCSB D",
        "YCSB D (read latest): 95% read of recent records (zipfian over recency) / 5% insert",
    ),
    (
        "ycsb_f",
        "YCSB F",
        "YCSB F (read-modify-write): 50% read / 50% read-modify-write, scrambled zipfian 0.99",
    ),
    ("open", "open", "Open of a cleanly closed store (N keys)"),
    ("recovery", "open after kill", "Open after kill -9 (recovery) (N keys)"),
];

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
