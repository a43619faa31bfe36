//! Guards the zero-copy contract under concurrency: values held across overwrites, deletes,
//! file growth and index growth stay valid and unchanged; readers on several threads never
//! see a torn or foreign value, nor part of a batch, while a writer appends and grows the
//! files; and every slice lent out lies in a read-only mapping, so no reader can write the
//! store through it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mapkv::{Batch, Store};

/// A value that says which key and version it belongs to, and checks itself.
fn value(key: u64, version: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len.max(24));
    v.extend_from_slice(&key.to_le_bytes());
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&(len as u64).to_le_bytes());
    let mut x = key ^ version.rotate_left(17) ^ 0x9E37_79B9_7F4A_7C15;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

/// Checks that `v` is exactly some version of `key`'s value; returns the version.
fn check(key: u64, v: &[u8]) -> u64 {
    assert!(v.len() >= 24, "value of {} bytes for key {key}", v.len());
    let k = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
    let version = u64::from_le_bytes(v[8..16].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(v[16..24].try_into().expect("8 bytes")) as usize;
    assert_eq!(k, key, "value of another key");
    assert_eq!(v, &value(key, version, len)[..], "torn value for key {key} version {version}");
    version
}

#[test]
fn held_values_survive_overwrite_delete_and_growth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("db")).expect("create");
    store.put(b"a", value(1, 0, 100)).expect("put");
    store.put(b"b", value(2, 0, 5000)).expect("put");
    let a = store.get(b"a").expect("get").expect("present");
    let b = store.get(b"b").expect("get").expect("present");
    let reader = store.reader();
    let a_ref = reader.get(b"a").expect("get").expect("present");
    assert_eq!(a_ref.as_ptr() as usize % 8, 0, "values start on 8-byte boundaries");

    store.put(b"a", value(1, 1, 100)).expect("overwrite");
    assert!(store.delete(b"b").expect("delete"));
    // Grow the data file many times over (1 MiB, then doubling) and the index past 1024 slots.
    for i in 0..3000u64 {
        store.put(i.to_le_bytes(), value(i, 9, 4000)).expect("put");
    }
    assert_eq!(&a[..], &value(1, 0, 100)[..]);
    assert_eq!(&b[..], &value(2, 0, 5000)[..]);
    assert_eq!(a_ref, &value(1, 0, 100)[..]);
    assert_eq!(reader.get(b"a").expect("get"), Some(&value(1, 1, 100)[..]));
    assert_eq!(reader.get(b"b").expect("get"), None);
    assert_eq!(reader.get(2999u64.to_le_bytes()).expect("get"), Some(&value(2999, 9, 4000)[..]));

    // Values outlive the store itself.
    drop(reader);
    drop(store);
    assert_eq!(&a[..], &value(1, 0, 100)[..]);
    assert_eq!(&b[..], &value(2, 0, 5000)[..]);
}

#[test]
fn readers_on_threads_during_writes_and_growth() {
    const KEYS: u64 = 2000;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path().join("db")).expect("create"));
    // Versions the writer has finished, per key: a reader must see at least this one.
    let done: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    for k in 0..KEYS {
        store.put(k.to_le_bytes(), value(k, 1, 40)).expect("put");
        done[k as usize].store(1, Ordering::Release);
    }
    let readers: Vec<_> = (0..3)
        .map(|t| {
            let (store, done, stop) = (Arc::clone(&store), Arc::clone(&done), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut held = Vec::new();
                let mut reads = 0u64;
                let mut x = 0x1234_5678u64 + t;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = x % KEYS;
                    let floor = done[k as usize].load(Ordering::Acquire);
                    if t == 0 {
                        // The pinned reader: plain slices, following growth.
                        let r = store.reader();
                        for _ in 0..64 {
                            let v = r.get(k.to_le_bytes()).expect("get").expect("present");
                            assert!(check(k, v) >= floor, "stale read of key {k}");
                        }
                    } else {
                        let v = store.get(k.to_le_bytes()).expect("get").expect("present");
                        assert!(check(k, &v) >= floor, "stale read of key {k}");
                        if reads.is_multiple_of(97) {
                            held.push((k, v)); // hold values across growth
                        }
                    }
                    reads += 1;
                }
                for (k, v) in &held {
                    check(*k, v);
                }
                reads
            })
        })
        .collect();
    // The writer: overwrites with growing values, so the log and the index both grow.
    for version in 2..40u64 {
        for k in (0..KEYS).step_by(version as usize % 7 + 1) {
            let len = 24 + ((k * version) % 900) as usize;
            store.put(k.to_le_bytes(), value(k, version, len)).expect("put");
            done[k as usize].store(version, Ordering::Release);
        }
        if version % 10 == 0 {
            store.sync().expect("sync");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let reads = r.join().expect("reader thread panicked");
        assert!(reads > 0);
    }
}

#[test]
fn store_is_send_and_sync_and_values_cross_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
    assert_send_sync::<mapkv::Value>();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("db")).expect("create");
    store.put(b"k", b"v").expect("put");
    let v = store.get(b"k").expect("get").expect("present");
    let joined = std::thread::spawn(move || v.to_vec()).join().expect("thread");
    assert_eq!(joined, b"v");
}

/// Length of a record with a `klen`-byte key and a `vlen`-byte value (DESIGN.md §2).
fn record_len(klen: u64, vlen: u64) -> u64 {
    (24 + klen).div_ceil(8) * 8 + vlen.div_ceil(8) * 8
}

#[test]
fn a_record_straddling_the_growth_boundary_is_found_not_reported_corrupt() {
    // The record that makes the file grow starts inside the old mapping and ends past it.
    // Readers that loaded the old mapping just before must follow to the new one.
    let errors = Arc::new(AtomicU64::new(0));
    for _ in 0..20 {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let store = Arc::new(Store::open(&path).expect("create"));
        store.put(b"hot", [1u8; 8]).expect("put");
        let mut end = 8192 + record_len(3, 8);
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|t| {
                let (store, stop, errors) = (store.clone(), stop.clone(), errors.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let r = if t == 0 {
                            store.get(b"hot").map(|v| v.map(|v| v.len()))
                        } else {
                            store.reader().get(b"hot").map(|v| v.map(<[u8]>::len))
                        };
                        match r {
                            Ok(Some(8 | 4000)) => {}
                            other => {
                                eprintln!("reader saw {other:?}");
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for _ in 0..3 {
            let file_len = std::fs::metadata(path.join("data.mkv")).expect("stat").len();
            // Fill until 16 bytes are left, then write a record that cannot fit.
            while file_len - end - 16 >= record_len(1, 4000) + 32 {
                store.put(b"f", [0u8; 4000]).expect("put");
                end += record_len(1, 4000);
            }
            let v = file_len - end - 16 - 32;
            store.put(b"f", vec![0u8; v as usize]).expect("put");
            end += record_len(1, v);
            assert_eq!(file_len - end, 16, "the test lost track of the log's layout");
            std::thread::sleep(std::time::Duration::from_millis(5));
            store.put(b"hot", [2u8; 4000]).expect("put across the boundary");
            end += record_len(3, 4000);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().expect("reader thread");
        }
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0, "readers saw errors across growth");
}

/// The value a batch of generation `generation` gives every hot key: the generation, then
/// filler, of a length that changes from batch to batch.
fn generation_value(generation: u64) -> Vec<u8> {
    let len = 8 + (generation * 73 % 500) as usize;
    let mut v = generation.to_le_bytes().to_vec();
    v.resize(len, generation as u8);
    v
}

fn generation_of(v: &[u8]) -> u64 {
    u64::from_le_bytes(v[..8].try_into().expect("8 bytes"))
}

/// Reader thread `t` of `readers_never_see_part_of_a_batch`: reads the hot keys with
/// `get_many` until `done`, checking that all of them hold one generation's value and that
/// generations never go back; counts in `changes` how often the generation changed.
/// Returns the number of reads.
fn read_hot_keys(
    store: &Store,
    hot: &[Vec<u8>],
    t: usize,
    done: &AtomicBool,
    changes: &AtomicU64,
) -> u64 {
    // Reader 0 keeps one `Reader` for the whole run (following growth); the others take a
    // new one every 64 reads.
    let pinned = store.reader();
    let (mut last, mut reads) = (0u64, 0u64);
    while !done.load(Ordering::Acquire) {
        let fresh = store.reader();
        let reader = if t == 0 { &pinned } else { &fresh };
        for _ in 0..64 {
            let values = reader.get_many(hot).expect("get_many");
            let first = values[0].expect("hot key present");
            for (i, v) in values.iter().enumerate() {
                let v = v.expect("hot key present");
                assert!(
                    v == first,
                    "reader {t} saw part of a batch: hot-0 holds generation {}, hot-{i} \
                     generation {}",
                    generation_of(first),
                    generation_of(v),
                );
            }
            let generation = generation_of(first);
            assert_eq!(first, &generation_value(generation)[..], "torn value");
            assert!(generation >= last, "reader {t} went back from {last} to {generation}");
            if generation != last {
                changes.fetch_add(1, Ordering::Relaxed);
            }
            last = generation;
            reads += 1;
        }
    }
    reads
}

#[test]
fn readers_never_see_part_of_a_batch() {
    const HOT: usize = 16;
    const READERS: usize = 3;
    /// At least this many batches; more (up to 4 times as many) if a reader has not yet
    /// seen the generation change a few times.
    const BATCHES: u64 = 3000;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let store = Store::open(&path).expect("create");
    let hot: Vec<Vec<u8>> = (0..HOT).map(|i| format!("hot-{i}").into_bytes()).collect();
    let file_len = |name: &str| std::fs::metadata(path.join(name)).expect("stat").len();
    let batch = |generation: u64| {
        // Each hot key, then a new key: the records of the hot keys lie apart, and the new
        // keys (16 per batch) make the index grow again and again.
        let mut b = Batch::new();
        for (i, k) in hot.iter().enumerate() {
            b.put(k, generation_value(generation));
            b.put(format!("new-{generation}-{i}"), [i as u8; 40]);
        }
        b
    };
    store.write(batch(0)).expect("first batch");
    let (data_before, index_before) = (file_len("data.mkv"), file_len("index.mkv"));
    let done = AtomicBool::new(false);
    let changes: Vec<AtomicU64> = (0..READERS).map(|_| AtomicU64::new(0)).collect();
    let mut last = 0;
    let reads: Vec<u64> = std::thread::scope(|s| {
        let readers: Vec<_> = (0..READERS)
            .map(|t| {
                let (store, hot, done, changes) = (&store, &hot, &done, &changes[t]);
                s.spawn(move || read_hot_keys(store, hot, t, done, changes))
            })
            .collect();
        let lagging = || changes.iter().any(|c| c.load(Ordering::Relaxed) < 3);
        while last < BATCHES || (lagging() && last < 4 * BATCHES) {
            last += 1;
            store.write(batch(last)).expect("batch");
        }
        done.store(true, Ordering::Release);
        readers.into_iter().map(|r| r.join().expect("reader thread panicked")).collect()
    });
    let changes: Vec<u64> = changes.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    eprintln!(
        "{last} batches; readers: {reads:?} reads, generation changes seen {changes:?}; data \
         file {data_before} -> {}, index {index_before} -> {}",
        file_len("data.mkv"),
        file_len("index.mkv")
    );
    // The readers ran while the batches changed, and the files grew under them.
    assert!(changes.iter().all(|&c| c >= 3), "readers saw few batches: {changes:?}");
    assert!(file_len("data.mkv") >= 4 * data_before, "the data file barely grew");
    assert!(file_len("index.mkv") >= 16 * index_before, "the index barely grew");
    assert_eq!(store.len(), HOT as u64 * (last + 2));
    let reader = store.reader();
    for v in reader.get_many(&hot).expect("get_many") {
        assert_eq!(v, Some(&generation_value(last)[..]));
    }
}

/// The permissions and file of the mapping of this process that holds `p`, from
/// `/proc/self/maps` (e.g. `("r--s", ".../data.mkv")`).
fn mapping_of(p: *const u8) -> (String, String) {
    let at = p as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (lo, hi) = fields[0].split_once('-').expect("an address range");
        let (lo, hi) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16));
        if (lo.expect("hex")..hi.expect("hex")).contains(&at) {
            return (fields[1].to_string(), fields.get(5).unwrap_or(&"").to_string());
        }
    }
    panic!("{p:?} is in no mapping");
}

#[track_caller]
fn assert_read_only(bytes: &[u8], what: &str) {
    let (perms, file) = mapping_of(bytes.as_ptr());
    assert!(file.ends_with("data.mkv"), "{what} is not in the data file's mapping: {file}");
    assert_eq!(perms, "r--s", "{what} lies in a mapping a reader could write through");
}

#[test]
fn every_slice_lent_out_lies_in_a_read_only_mapping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let held = {
        store.put(1u64.to_le_bytes(), value(1, 0, 300)).expect("put");
        store.get(1u64.to_le_bytes()).expect("get").expect("present")
    };
    // Grow the log (the first mapping is 1 MiB) and the index, so later slices come from
    // new mappings.
    for k in 2..6000u64 {
        store.put(k.to_le_bytes(), value(k, 0, 300)).expect("put");
    }
    let mut batch = Batch::new();
    batch.put(7000u64.to_le_bytes(), value(7000, 0, 100));
    store.write(batch).expect("batch");
    let value_now = store.get(5999u64.to_le_bytes()).expect("get").expect("present");
    let reader = store.reader();
    let snapshot = store.snapshot();
    let follower = mapkv::OpenOptions::new().read_only(true).open(dir.path()).expect("follow");
    let followed = follower.get(7000u64.to_le_bytes()).expect("get").expect("present");
    assert_read_only(&held, "a Value from the first mapping");
    assert_read_only(&value_now, "a Value after growth");
    let k = 4321u64.to_le_bytes();
    assert_read_only(reader.get(k).expect("get").expect("present"), "a Reader's slice");
    assert_read_only(snapshot.get(k).expect("get").expect("present"), "a Snapshot's slice");
    let (key, v) = snapshot.iter().next().expect("a pair").expect("iter");
    assert_read_only(key, "a key from iteration");
    assert_read_only(v, "a value from iteration");
    let item = store.iter().next().expect("a pair").expect("iter");
    assert_read_only(&item.1, "a value from store.iter()");
    assert_read_only(&followed, "a follower's Value");
    // The writer still writes (through a mapping of its own), and what it writes is seen.
    store.put(1u64.to_le_bytes(), value(1, 1, 300)).expect("put after");
    assert_eq!(check(1, &store.get(1u64.to_le_bytes()).expect("get").expect("present")), 1);
    assert_eq!(check(1, &held), 0, "a held value changed");
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let data = dir.path().join("data.mkv");
    let writable =
        maps.lines().filter(|l| l.contains(" rw-s ") && l.ends_with(data.to_str().expect("utf-8")));
    assert_eq!(writable.count(), 1, "the writer should map the file writable exactly once");
}
