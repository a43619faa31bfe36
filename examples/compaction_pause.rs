//! Compaction of a 1M-key store (24-byte keys, 150-byte values, half of them overwritten)
//! while a writer thread puts and two reader threads read: reports the compaction's time,
//! the writers' pause (`CompactStats::pause`) and the longest put the writer saw, three
//! rounds: `cargo run --release --example compaction_pause [keys]`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn key(i: u64) -> [u8; 24] {
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&h.to_le_bytes());
    k[8..16].copy_from_slice(&i.to_le_bytes());
    k
}

fn main() -> mapkv::Result<()> {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = mapkv::Store::open(dir.path().join("db"))?;
    for round in 0..2u8 {
        for chunk in (0..n).collect::<Vec<_>>().chunks(100_000) {
            let mut batch = mapkv::Batch::new();
            for &i in chunk.iter().filter(|&&i| round == 0 || i % 2 == 0) {
                batch.put(key(i), [round; 150]);
            }
            store.write(batch)?;
        }
    }
    store.sync()?;
    for r in 0..3 {
        let before = store.stats();
        let stop = AtomicBool::new(false);
        let (stats, worst, puts) = std::thread::scope(|s| {
            for t in 0..2u64 {
                let (store, stop) = (&store, &stop);
                s.spawn(move || {
                    let reader = store.reader();
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        assert!(reader.get(key(i % n)).expect("get").is_some());
                        i = i.wrapping_add(7919);
                    }
                });
            }
            let writer = s.spawn(|| {
                let (mut worst, mut puts, mut i) = (Duration::ZERO, 0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    store.put(key(i % n), [9u8; 150]).expect("put");
                    worst = worst.max(t.elapsed());
                    puts += 1;
                    i += 2_654_435_761;
                    if puts % 10 == 0 {
                        // A steady writer (about 10-20k puts/s), not a flat-out one.
                        std::thread::sleep(Duration::from_micros(500));
                    }
                }
                (worst, puts)
            });
            let stats = store.compact().expect("compact");
            stop.store(true, Ordering::Relaxed);
            let (worst, puts) = writer.join().expect("writer");
            (stats, worst, puts)
        });
        println!(
            "round {r}: {} keys, log {:.0} MB -> {:.0} MB (garbage ratio {:.2}), compaction {:.2} s, \
             writers paused {:.2} ms, longest put meanwhile {:.2} ms over {puts} puts ({} caught up)",
            stats.live_keys,
            stats.log_before as f64 / 1e6,
            stats.log_after as f64 / 1e6,
            before.garbage_ratio,
            stats.duration.as_secs_f64(),
            stats.pause.as_secs_f64() * 1e3,
            worst.as_secs_f64() * 1e3,
            stats.caught_up,
        );
    }
    Ok(())
}
