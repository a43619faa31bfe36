//! mapkv alone: point reads (hit, miss, through `Reader` and `Store::get`), puts, durable
//! puts and open. Peer comparisons live in their own crate so `cargo test` never builds them.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use mapkv::Store;

const KEYS: u64 = 1_000_000;

fn key(i: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    k[..8].copy_from_slice(&h.to_le_bytes());
    k[8..16].copy_from_slice(&i.to_le_bytes());
    k[16..].copy_from_slice(&(!h).to_le_bytes());
    k
}

/// A store of `KEYS` keys with 150-byte values, and a random permutation to read them by.
fn loaded() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("db")).expect("open");
    for i in 0..KEYS {
        store.put(key(i), [i as u8; 150]).expect("put");
    }
    store.sync().expect("sync");
    (dir, store)
}

fn rng(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn reads(c: &mut Criterion) {
    let (_dir, store) = loaded();
    let mut g = c.benchmark_group("get_1M");
    let mut s = 7u64;
    g.bench_function("reader_hit", |b| {
        let r = store.reader();
        b.iter(|| black_box(r.get(key(rng(&mut s) % KEYS)).expect("get").map(<[u8]>::len)))
    });
    g.bench_function("store_get_hit", |b| {
        b.iter(|| black_box(store.get(key(rng(&mut s) % KEYS)).expect("get").map(|v| v.len())))
    });
    g.bench_function("reader_get_many_16", |b| {
        let r = store.reader();
        let mut keys = [[0u8; 24]; 16];
        b.iter(|| {
            for k in &mut keys {
                *k = key(rng(&mut s) % KEYS);
            }
            black_box(r.get_many(&keys).expect("get_many").len())
        })
    });
    g.bench_function("reader_miss", |b| {
        let r = store.reader();
        b.iter(|| black_box(r.get(key(KEYS + rng(&mut s) % KEYS)).expect("get").is_none()))
    });
    g.finish();
}

fn writes(c: &mut Criterion) {
    let mut g = c.benchmark_group("write");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("db")).expect("open");
    let mut i = 0u64;
    g.bench_function("put_24_150", |b| {
        b.iter(|| {
            i += 1;
            store.put(key(i), [7u8; 150]).expect("put")
        })
    });
    g.bench_function("put_sync_24_150", |b| {
        b.iter(|| {
            i += 1;
            store.put(key(i), [7u8; 150]).expect("put");
            store.sync().expect("sync")
        })
    });
    g.finish();
}

fn open(c: &mut Criterion) {
    let (dir, store) = loaded();
    let path = store.path().to_path_buf();
    store.close().expect("close");
    c.bench_function("open_clean_1M", |b| {
        b.iter_batched(|| (), |()| Store::open(&path).expect("open"), BatchSize::PerIteration)
    });
    drop(dir);
}

fn recovery(c: &mut Criterion) {
    // A store left by a killed process: every open rebuilds the index from the log. Each
    // iteration crashes again right after, so the next one recovers too.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let store = Store::open(&path).expect("open");
    for i in 0..100_000 {
        store.put(key(i), [i as u8; 150]).expect("put");
    }
    store.simulate_crash();
    c.bench_function("recover_after_kill_100k", |b| {
        b.iter(|| {
            let s = Store::open(&path).expect("recover");
            assert!(s.recovery().index_rebuilt);
            s.simulate_crash();
        })
    });
}

fn bulk(c: &mut Criterion) {
    // 100k puts into an empty store: the data file grows 5 times, the index 8 times.
    c.bench_function("bulk_load_100k_with_growth", |b| {
        b.iter_batched(
            || tempfile::tempdir().expect("tempdir"),
            |dir| {
                let store = Store::open(dir.path().join("db")).expect("open");
                for i in 0..100_000 {
                    store.put(key(i), [i as u8; 150]).expect("put");
                }
                store.simulate_crash();
                dir
            },
            BatchSize::PerIteration,
        )
    });
    // The same 100k puts as one atomic batch: room is made first and slots are prefetched.
    c.bench_function("bulk_load_100k_one_batch", |b| {
        b.iter_batched(
            || tempfile::tempdir().expect("tempdir"),
            |dir| {
                let store = Store::open(dir.path().join("db")).expect("open");
                let mut batch = mapkv::Batch::new();
                for i in 0..100_000 {
                    batch.put(key(i), [i as u8; 150]);
                }
                store.write(batch).expect("write");
                store.simulate_crash();
                dir
            },
            BatchSize::PerIteration,
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = reads, writes, open, recovery, bulk
}
criterion_main!(benches);
