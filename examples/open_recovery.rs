//! Measures open of a cleanly closed store and recovery after a simulated kill -9, against
//! one plain read of the data file, at N keys (24 B keys, 150 B values):
//! `cargo run --release --example open_recovery -- 10000000`. With `--cold` (root only) the
//! page cache is dropped before the recovery and before the plain read.

use std::io::Read;
use std::time::Instant;

fn drop_caches() {
    let _ = std::process::Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn main() -> mapkv::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let cold = args.iter().any(|a| a == "--cold");
    let dir = tempfile::tempdir_in(std::env::var("MAPKV_DIR").unwrap_or_else(|_| "/tmp".into()))
        .expect("tempdir");
    let path = dir.path().join("db");
    let store = mapkv::Store::open(&path)?;
    let t = Instant::now();
    for i in 0..n {
        let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut k = [0u8; 24];
        k[..8].copy_from_slice(&h.to_le_bytes());
        k[8..16].copy_from_slice(&i.to_le_bytes());
        store.put(k, [i as u8; 150])?;
    }
    println!("loaded {n} keys in {:.2} s", t.elapsed().as_secs_f64());
    store.close()?;

    let mut opens = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let s = mapkv::Store::open(&path)?;
        opens.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(!s.recovery().index_rebuilt);
        drop(s);
    }
    opens.sort_by(f64::total_cmp);
    println!("clean open: median {:.3} ms (of 5: {opens:.3?})", opens[2]);

    let s = mapkv::Store::open(&path)?;
    s.put(b"one more", b"write")?; // dirty the store, then die
    s.simulate_crash();
    if cold {
        drop_caches();
    }
    let t = Instant::now();
    let s = mapkv::Store::open(&path)?;
    let rec = t.elapsed().as_secs_f64();
    let log = s.recovery().log_end;
    println!(
        "recovery after kill: {:.3} s, {} records replayed, log {:.1} MiB, {:.2} GB/s",
        rec,
        s.recovery().records_replayed,
        log as f64 / 1048576.0,
        log as f64 / rec / 1e9
    );
    drop(s);
    if cold {
        drop_caches();
    }
    let t = Instant::now();
    let mut f = std::fs::File::open(path.join("data.mkv")).expect("open data file");
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    while total < log {
        let got = f.read(&mut buf).expect("read");
        if got == 0 {
            break;
        }
        total += got as u64;
    }
    let read = t.elapsed().as_secs_f64();
    println!(
        "plain read of the same {:.1} MiB: {:.3} s, {:.2} GB/s; recovery / read = {:.2}",
        total as f64 / 1048576.0,
        read,
        total as f64 / read / 1e9,
        rec / read
    );
    Ok(())
}
