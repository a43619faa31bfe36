//! Group commit: threads that each put and then `sync()` share flushes. Runs 1, 2 and 4
//! threads (alternating, 5 rounds, medians) doing put + sync of 150-byte values (`VLEN`
//! to change), and reports operations per second and flushes per sync:
//! `cargo run --release --example group_commit`.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use mapkv::testing::{Observer, Op};

#[derive(Default)]
struct Flushes(AtomicU64);

impl Observer for Flushes {
    fn before(&self, op: Op<'_>) -> io::Result<()> {
        if let Op::Flush { path, .. } = op
            && path.ends_with("data.mkv")
        {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

const OPS_PER_THREAD: u64 = 2000;

/// One run: `threads` threads each doing put + sync; returns (ops/s, flushes per sync).
fn run(threads: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let flushes = Arc::new(Flushes::default());
    let store = mapkv::OpenOptions::new().observer(flushes.clone()).open(dir.path()).expect("open");
    let before = flushes.0.load(Ordering::Relaxed);
    let t = Instant::now();
    std::thread::scope(|s| {
        for th in 0..threads {
            let store = &store;
            s.spawn(move || {
                for i in 0..OPS_PER_THREAD {
                    let key = (th << 32 | i).to_le_bytes();
                    store
                        .put(
                            key,
                            vec![
                                7u8;
                                std::env::var("VLEN")
                                    .ok()
                                    .and_then(|v| v.parse().ok())
                                    .unwrap_or(150)
                            ],
                        )
                        .expect("put");
                    store.sync().expect("sync");
                }
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    let ops = (threads * OPS_PER_THREAD) as f64;
    let used = (flushes.0.load(Ordering::Relaxed) - before) as f64;
    (ops / secs, used / ops)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    const THREADS: [u64; 3] = [1, 2, 4];
    let mut ops = vec![Vec::new(); THREADS.len()];
    let mut per_sync = vec![Vec::new(); THREADS.len()];
    for _ in 0..5 {
        for (i, &t) in THREADS.iter().enumerate() {
            let (o, f) = run(t);
            ops[i].push(o);
            per_sync[i].push(f);
        }
    }
    let one = median(ops[0].clone());
    for (i, &t) in THREADS.iter().enumerate() {
        let o = median(ops[i].clone());
        println!(
            "put+sync, {t} thread(s): {o:.0} ops/s ({:.2}x one thread), {:.2} flushes per sync (medians of 5)",
            o / one,
            median(per_sync[i].clone())
        );
    }
}
