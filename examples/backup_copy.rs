//! Figures for hot backup (`Store::copy_to`): the time to copy a store of 1M keys (24-byte
//! keys, 150-byte values, every key overwritten once) as its log and compacted, with no
//! writer and beside a writer overwriting keys flat out, and that writer's longest put
//! meanwhile. Run with `cargo run --release --example backup_copy`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const KEYS: u64 = 1_000_000;

fn key(i: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    k[..8].copy_from_slice(&h.to_le_bytes());
    k[8..16].copy_from_slice(&i.to_le_bytes());
    k[16..].copy_from_slice(&(!h).to_le_bytes());
    k
}

/// A thread overwriting keys flat out until `stop`; returns its puts and its longest put.
fn overwriter(
    store: &Arc<mapkv::Store>,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, Duration)> {
    let (store, stop) = (Arc::clone(store), Arc::clone(stop));
    std::thread::spawn(move || {
        let (mut i, mut longest) = (0u64, Duration::ZERO);
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            store.put(key(i % KEYS), [7u8; 150]).expect("put");
            longest = longest.max(t.elapsed());
            i += 1;
        }
        (i, longest)
    })
}

fn main() -> mapkv::Result<()> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(mapkv::Store::open(tmp.path().join("db"))?);
    let value = [7u8; 150];
    for round in 0..2 {
        let mut b = mapkv::Batch::new();
        for i in 0..KEYS {
            b.put(key(i), value);
            if b.len() == 10_000 {
                store.write(std::mem::take(&mut b))?;
            }
        }
        store.write(b)?;
        let _ = round;
    }
    store.sync()?;
    let s = store.stats();
    println!(
        "store: {} live keys, {:.1} MB of log ({:.0} % garbage)",
        s.live_keys,
        s.log_bytes as f64 / 1e6,
        s.garbage_ratio * 100.0
    );
    let mut n = 0;
    for writer in [false, true] {
        if writer {
            // The writer alone first, for about as long as the copies beside it take.
            let (stop, t) = (Arc::new(AtomicBool::new(false)), Instant::now());
            let alone = overwriter(&store, &stop);
            std::thread::sleep(Duration::from_secs(3));
            stop.store(true, Ordering::Relaxed);
            let (puts, longest) = alone.join().expect("writer");
            println!(
                "writer alone for {:.1} s: {puts} puts, longest {:.2} ms",
                t.elapsed().as_secs_f64(),
                longest.as_secs_f64() * 1e3
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let handle = writer.then(|| overwriter(&store, &stop));
        std::thread::sleep(Duration::from_millis(100));
        for compact in [false, true] {
            n += 1;
            let dest = tmp.path().join(format!("copy-{n}"));
            let t = Instant::now();
            let copy = store.copy_to(&dest, compact)?;
            let took = t.elapsed();
            println!(
                "copy {:<9} {:<13} {:>6.2} s  {:>6.1} MB of log, {:>7} keys ({:.0} MB/s written)",
                if compact { "compacted" } else { "as is" },
                if writer { "beside writer" } else { "idle" },
                took.as_secs_f64(),
                copy.log_bytes as f64 / 1e6,
                copy.live_keys,
                copy.log_bytes as f64 / 1e6 / took.as_secs_f64()
            );
            std::fs::remove_dir_all(&dest).expect("remove the copy");
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(h) = handle {
            let (puts, longest) = h.join().expect("writer");
            println!(
                "writer beside the copies: {puts} puts, longest {:.2} ms",
                longest.as_secs_f64() * 1e3
            );
        }
    }
    Ok(())
}
