//! The demo (the README's Quick start, CI's main job): create a store, write and read a
//! million keys, sync, reopen, and say what happened and how fast. Run with
//! `cargo run --release --bin mapkv-demo`; it builds the library and nothing else.

use std::time::{Duration, Instant};

const KEYS: u64 = 1_000_000;
const VALUE_LEN: usize = 150;

fn key(i: u64) -> [u8; 24] {
    // 24-byte keys spread like random ones, reproducible from `i`.
    let mut k = [0u8; 24];
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    k[..8].copy_from_slice(&h.to_le_bytes());
    k[8..16].copy_from_slice(&i.to_le_bytes());
    k[16..].copy_from_slice(&(!h).to_le_bytes());
    k
}

fn value(i: u64) -> [u8; VALUE_LEN] {
    let mut v = [0u8; VALUE_LEN];
    for (n, b) in v.iter_mut().enumerate() {
        *b = (i as u8).wrapping_add(n as u8);
    }
    v
}

fn rate(n: u64, d: Duration) -> String {
    format!(
        "{:>7.0} ns/op, {:>6.2} M ops/s",
        d.as_nanos() as f64 / n as f64,
        n as f64 / d.as_secs_f64() / 1e6
    )
}

/// A directory of its own under the system's temporary directory, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> mapkv::Result<()> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let name = format!("mapkv-demo-{}-{}", std::process::id(), nanos.map_or(0, |d| d.as_nanos()));
    let dir = Scratch(std::env::temp_dir().join(name));
    let path = dir.0.join("demo.mapkv");
    println!(
        "mapkv demo: {KEYS} keys of 24 bytes, values of {VALUE_LEN} bytes, in {}",
        path.display()
    );

    let store = mapkv::Store::open(&path)?;
    let t = Instant::now();
    for i in 0..KEYS {
        store.put(key(i), value(i))?;
    }
    println!("put      {}", rate(KEYS, t.elapsed()));

    let t = Instant::now();
    store.sync()?;
    println!(
        "sync     {:>7.2} ms (one flush of everything written)",
        t.elapsed().as_secs_f64() * 1e3
    );

    let t = Instant::now();
    let reader = store.reader();
    for i in 0..KEYS {
        let v = reader.get(key(i))?.expect("every key written is found");
        assert_eq!(v, value(i));
    }
    println!("get      {} (reader, in write order)", rate(KEYS, t.elapsed()));
    drop(reader);

    let t = Instant::now();
    let misses = 100_000;
    for i in KEYS..KEYS + misses {
        assert!(store.get(key(i))?.is_none());
    }
    println!("miss     {}", rate(misses, t.elapsed()));

    let t = Instant::now();
    store.close()?;
    println!("close    {:>7.2} ms", t.elapsed().as_secs_f64() * 1e3);

    let t = Instant::now();
    let store = mapkv::Store::open(&path)?;
    let open = t.elapsed();
    println!(
        "reopen   {:>7.3} ms, {} keys, index rebuilt: {}",
        open.as_secs_f64() * 1e3,
        store.len(),
        store.recovery().index_rebuilt
    );
    assert_eq!(store.len(), KEYS);
    for i in (0..KEYS).step_by(1000) {
        assert_eq!(store.get(key(i))?.as_deref(), Some(&value(i)[..]));
    }
    let size = std::fs::metadata(path.join("data.mkv")).map(|m| m.len()).unwrap_or(0);
    let index = std::fs::metadata(path.join("index.mkv")).map(|m| m.len()).unwrap_or(0);
    println!(
        "files    data {:.1} MiB, index {:.1} MiB; every key read back after reopen",
        size as f64 / 1048576.0,
        index as f64 / 1048576.0
    );
    Ok(())
}
