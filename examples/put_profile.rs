//! Profiling aid: one million puts (24-byte keys, 150-byte values) and nothing else.
//! `perf record -g target/release/examples/put_profile`.

fn main() -> mapkv::Result<()> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = mapkv::Store::open(dir.path().join("db"))?;
    let t = std::time::Instant::now();
    for i in 0..1_000_000u64 {
        let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut k = [0u8; 24];
        k[..8].copy_from_slice(&h.to_le_bytes());
        k[8..16].copy_from_slice(&i.to_le_bytes());
        store.put(k, [i as u8; 150])?;
    }
    println!("{:.0} ns/put", t.elapsed().as_nanos() as f64 / 1e6);
    Ok(())
}
