//! Measures `Reader::get_many` against single `Reader::get` on the same random keys of a
//! 1M-key store, alternating the two so that machine noise hits both alike:
//! `cargo run --release --example get_many_ratio`.

use std::time::Instant;

fn key(i: u64) -> [u8; 24] {
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&h.to_le_bytes());
    k[8..16].copy_from_slice(&i.to_le_bytes());
    k
}

fn main() -> mapkv::Result<()> {
    const N: u64 = 1_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = mapkv::Store::open(dir.path().join("db"))?;
    for i in 0..N {
        store.put(key(i), [i as u8; 150])?;
    }
    let mut x = 88172645463325252u64;
    let keys: Vec<[u8; 24]> = (0..N)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            key(x % N)
        })
        .collect();
    let reader = store.reader();
    let (mut single, mut many) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        let mut n = 0usize;
        for k in &keys {
            n += reader.get(k)?.map_or(0, <[u8]>::len);
        }
        single.push(t.elapsed().as_nanos() as f64 / N as f64);
        let t = Instant::now();
        let mut m = 0usize;
        for chunk in keys.chunks(64) {
            m += reader.get_many(chunk)?.iter().map(|v| v.map_or(0, <[u8]>::len)).sum::<usize>();
        }
        many.push(t.elapsed().as_nanos() as f64 / N as f64);
        assert_eq!(n, m);
    }
    single.sort_by(f64::total_cmp);
    many.sort_by(f64::total_cmp);
    if let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps_rollup") {
        for l in smaps.lines().filter(|l| l.contains("PmdMapped")) {
            println!("{l}");
        }
    }
    println!(
        "single get {:.1} ns/key, get_many {:.1} ns/key (medians of 5): {:.2}x",
        single[2],
        many[2],
        single[2] / many[2]
    );
    Ok(())
}
