//! Compaction under a hot writer (DESIGN.md §4, "Compaction"): 100k keys of 1 KiB, then one
//! key overwritten flat out with 4 KiB values (and then four keys, one per thread), with
//! `SyncPolicy::Interval(50 ms)`. Three scenes, each printing its figures:
//!
//! 1. `compact()` called three times while the writers run: compaction time, bytes
//!    reclaimed, log after / live bytes, the longest put and the oldest unsynced write
//!    while it ran;
//! 2. `auto_compact(Some(0.5))` for a sustained run: the largest log / live bytes seen, the
//!    longest put and the oldest unsynced write;
//! 3. the store dropped while an automatic compaction runs: how long the drop takes.
//!
//! `cargo run --release --example hot_writer [keys] [seconds]` (defaults 100000 and 10).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use mapkv::{OpenOptions, Store, SyncPolicy};

const INTERVAL: Duration = Duration::from_millis(50);

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    k[8..].copy_from_slice(&i.to_le_bytes());
    k
}

/// What the writer and monitor threads saw.
#[derive(Default, Clone, Copy)]
struct Seen {
    puts: u64,
    longest_put: Duration,
    oldest_unsynced: Duration,
    /// Largest log bytes over live bytes, and data file bytes over live bytes.
    log_ratio: f64,
    file_ratio: f64,
}

impl Seen {
    fn merge(self, o: Seen) -> Seen {
        Seen {
            puts: self.puts + o.puts,
            longest_put: self.longest_put.max(o.longest_put),
            oldest_unsynced: self.oldest_unsynced.max(o.oldest_unsynced),
            log_ratio: self.log_ratio.max(o.log_ratio),
            file_ratio: self.file_ratio.max(o.file_ratio),
        }
    }
}

fn open(dir: &Path, auto: Option<f64>) -> Store {
    OpenOptions::new()
        .sync_policy(SyncPolicy::Interval(INTERVAL))
        .auto_compact(auto)
        .open(dir)
        .expect("open")
}

fn load(dir: &Path, n: u64) {
    let store = Store::open(dir).expect("open");
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let mut batch = mapkv::Batch::new();
        for &i in chunk {
            batch.put(key(i), [i as u8; 1024]);
        }
        store.write(batch).expect("load");
    }
    store.close().expect("close");
}

/// Runs `writers` threads overwriting one key each with 4 KiB values, and a monitor
/// sampling the store every millisecond, while `work` runs; returns what `work` returned
/// and what they saw while it ran.
fn under_load<T: Send>(store: &Store, writers: u64, work: impl FnOnce() -> T + Send) -> (T, Seen) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..writers)
            .map(|t| {
                let stop = &stop;
                s.spawn(move || {
                    let mut value = [7u8; 4096];
                    let mut seen = Seen::default();
                    while !stop.load(Ordering::Relaxed) {
                        value[..8].copy_from_slice(&seen.puts.to_le_bytes());
                        let at = Instant::now();
                        store.put(key(t), value).expect("put");
                        seen.longest_put = seen.longest_put.max(at.elapsed());
                        seen.puts += 1;
                    }
                    seen
                })
            })
            .collect();
        let monitor = s.spawn(|| {
            // (when, log end then): every write that returned by then lies below that end.
            // A compaction is durable like a sync: what returned before it is durable, and
            // ends after it are in the new file.
            let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
            let mut seen = Seen::default();
            let mut generation = store.stats().compactions;
            while !stop.load(Ordering::Relaxed) {
                let st = store.stats();
                let now = Instant::now();
                if st.compactions != generation {
                    (generation, samples) = (st.compactions, VecDeque::new());
                }
                samples.push_back((now, st.log_end));
                while samples.front().is_some_and(|&(_, end)| end <= st.durable_end) {
                    samples.pop_front();
                }
                if let Some(&(t, _)) = samples.front() {
                    seen.oldest_unsynced = seen.oldest_unsynced.max(now - t);
                }
                let live = st.log_bytes.saturating_sub(st.garbage_bytes).max(1) as f64;
                seen.log_ratio = seen.log_ratio.max(st.log_bytes as f64 / live);
                seen.file_ratio = seen.file_ratio.max(st.data_file_bytes as f64 / live);
                std::thread::sleep(Duration::from_millis(1));
            }
            seen
        });
        // Let the writers get going first.
        std::thread::sleep(Duration::from_millis(500));
        let out = work();
        stop.store(true, Ordering::Relaxed);
        let mut seen = monitor.join().expect("monitor");
        for t in threads {
            seen = seen.merge(t.join().expect("writer"));
        }
        (out, seen)
    })
}

/// Ends the process if the returned sender is not dropped within 90 s.
fn watchdog(what: &'static str) -> std::sync::mpsc::Sender<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if rx.recv_timeout(Duration::from_secs(90)) == Err(RecvTimeoutError::Timeout) {
            println!("{what} still running after 90 s: giving up");
            std::process::exit(2);
        }
    });
    tx
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>().expect("a number"));
    let n = args.next().unwrap_or(100_000);
    let secs = args.next().unwrap_or(10);
    let tmp = tempfile::tempdir().expect("tempdir");
    for writers in [1, 4] {
        let dir = tmp.path().join(format!("w{writers}"));
        load(&dir, n);
        println!(
            "== {writers} writer thread(s), {n} keys of 1 KiB, 4 KiB overwrites, Interval(50 ms)"
        );

        // 0. The writers alone, for comparison.
        let store = open(&dir, None);
        let ((), seen) = under_load(&store, writers, || std::thread::sleep(Duration::from_secs(2)));
        println!(
            "no compaction, 2 s: longest put {:.1} ms, oldest unsynced {:.0} ms, {} puts",
            ms(seen.longest_put),
            ms(seen.oldest_unsynced),
            seen.puts
        );

        // 1. compact() while the writers run.
        for round in 0..3 {
            let (stats, seen) = under_load(&store, writers, || {
                std::thread::sleep(Duration::from_millis(500));
                let before = store.stats();
                let done = watchdog("compact()");
                let stats = store.compact();
                drop(done);
                (before, stats)
            });
            let (before, stats) = (stats.0, stats.1.expect("compact"));
            let after = store.stats();
            let live = (after.log_bytes - after.garbage_bytes).max(1);
            println!(
                "compact {round}: {:.2} s, paused {:.1} ms, log {:.0} MB -> {:.0} MB \
                 (reclaimed {:.0} MB; log after / live {:.2}; garbage before {:.3}), \
                 {} caught up; longest put {:.1} ms, oldest unsynced {:.0} ms, {} puts",
                stats.duration.as_secs_f64(),
                ms(stats.pause),
                stats.log_before as f64 / 1e6,
                stats.log_after as f64 / 1e6,
                stats.log_before.saturating_sub(stats.log_after) as f64 / 1e6,
                stats.log_after as f64 / live as f64,
                before.garbage_ratio,
                stats.caught_up,
                ms(seen.longest_put),
                ms(seen.oldest_unsynced),
                seen.puts,
            );
        }
        drop(store);

        // 2. Automatic compaction, sustained.
        let store = open(&dir, Some(0.5));
        let (compactions, seen) = under_load(&store, writers, || {
            let start = store.stats().compactions;
            std::thread::sleep(Duration::from_secs(secs));
            store.stats().compactions - start
        });
        println!(
            "auto_compact(0.5) for {secs} s: {compactions} compactions, largest log / live \
             {:.2}, largest data file / live {:.2}, longest put {:.1} ms, oldest unsynced \
             {:.0} ms, {} puts",
            seen.log_ratio,
            seen.file_ratio,
            ms(seen.longest_put),
            ms(seen.oldest_unsynced),
            seen.puts,
        );

        // 3. Drop while an automatic compaction runs (its new file exists).
        let compacting = dir.join("data.mkv.compact");
        let (took, _) = under_load(&store, writers, || {
            let give_up = Instant::now() + Duration::from_secs(30);
            while !compacting.exists() && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(1));
            }
            compacting.exists()
        });
        let at = Instant::now();
        let done = watchdog("drop");
        drop(store);
        drop(done);
        println!(
            "drop mid-compaction: {:.1} ms (a compaction was running: {took})",
            ms(at.elapsed())
        );
        let store = Store::open(&dir).expect("reopen");
        assert!(store.verify().expect("verify").problems.is_empty(), "verify after drop");
        assert_eq!(store.len(), n, "every key survives");
    }
}
