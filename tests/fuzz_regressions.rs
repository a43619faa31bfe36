//! The fuzz targets (fuzz/) as plain tests: every seed of fuzz/corpus/<target>/ and every
//! input kept in fuzz/regressions/<target>/ (each one made mapkv misbehave once) goes
//! through the same function the libFuzzer target calls, from fuzz/src/lib.rs. This is
//! what runs where no nightly compiler features are available, and it keeps every fixed
//! finding fixed in `cargo test`.
//!
//! The seeds are real stores: `cargo test --test fuzz_regressions -- --ignored
//! write_seed_corpora` rewrites them after a format change, with the stores under fuzz/seeds/
//! (`base_data.mkv`, the log under `open_index`; `empty_*.mkv`, where `ops_vs_model` starts).

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use harness::{Model, op};
use mapkv::fuzzing::Record;
use mapkv::{Batch, Store};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Runs `target` on each seed and kept regression of `name`; reports every file that fails.
fn run_corpus(name: &str, target: fn(&[u8])) {
    let mut files = Vec::new();
    for dir in [fuzz_dir().join("corpus").join(name), fuzz_dir().join("regressions").join(name)] {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for e in entries {
            let path = e.expect("directory entry").path();
            let seed = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seed-"));
            if seed || dir.ends_with(Path::new("regressions").join(name)) {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no seeds for {name}");
    let failed: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let input = fs::read(f).expect("read an input");
            let r = catch_unwind(AssertUnwindSafe(|| target(&input)));
            r.is_err().then(|| f.display().to_string())
        })
        .collect();
    assert!(failed.is_empty(), "{name} failed on {failed:#?}");
    eprintln!("{name}: {} inputs passed", files.len());
}

#[test]
fn open_data_corpus() {
    run_corpus("open_data", harness::open_data);
}

#[test]
fn open_index_corpus() {
    run_corpus("open_index", harness::open_index);
}

#[test]
fn record_decode_corpus() {
    run_corpus("record_decode", harness::record_decode);
}

#[test]
fn ops_vs_model_corpus() {
    run_corpus("ops_vs_model", harness::ops_vs_model);
}

#[test]
fn open_live_corpus() {
    run_corpus("open_live", harness::open_live);
}

// ---- the seed corpora -------------------------------------------------------------------

const PAGE: usize = 4096;
const DATA_START: usize = harness::DATA_START;

fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    let dir = fuzz_dir().join("corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus directory");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
}

/// `data.mkv` of the store in `db` cut at `end`, as a compact `open_data` input.
fn compact_data(db: &Path, end: usize, mode: u8) -> Vec<u8> {
    let data = fs::read(db.join("data.mkv")).expect("read data.mkv");
    let mut out = vec![mode & !1];
    out.extend_from_slice(&data[..64]);
    out.extend_from_slice(&data[PAGE..PAGE + 64]);
    out.extend_from_slice(&data[DATA_START..end]);
    out
}

fn log_end(store: &Store) -> usize {
    store.stats().log_end as usize
}

/// Fills a store with puts, overwrites, deletes and a batch.
fn fill(store: &Store, n: usize) {
    for i in 0..n {
        store.put(format!("key{i}"), vec![b'v'; i * 3]).expect("put");
    }
    store.put("key1", "again").expect("put");
    store.delete("key2").expect("delete");
    let mut b = Batch::new();
    b.put("b1", "x").delete("key3").put("b2", vec![b'y'; 40]);
    store.write(b).expect("batch");
}

fn open_data_seeds() {
    let tmp = harness::scratch();
    // A cleanly closed store: as is, with every CRC to be fixed, and raw.
    let db = tmp.path().join("clean");
    let store = Store::open(&db).expect("create");
    fill(&store, 12);
    let end = log_end(&store);
    store.close().expect("close");
    write_seed("open_data", "clean", &compact_data(&db, end, 0x18 | 0x20));
    write_seed("open_data", "clean-fixed-verify", &compact_data(&db, end, 0x0e | 0x80));
    let mut raw = vec![0x01];
    raw.extend_from_slice(&fs::read(db.join("data.mkv")).expect("read")[..end + 64]);
    write_seed("open_data", "clean-raw", &raw);

    // A crash with a torn tail: the last record cut in half (the rest reads as zeros).
    let db = tmp.path().join("torn");
    let store = Store::open(&db).expect("create");
    fill(&store, 6);
    store.sync().expect("sync");
    store.put("after-sync", vec![b'z'; 50]).expect("put");
    let end = log_end(&store);
    store.simulate_crash();
    write_seed("open_data", "torn-tail", &compact_data(&db, end - 40, 0x08 | 0x20));

    // A batch without its commit record (32 bytes), and a zeroed record past the
    // committed length with data after it (a page that never reached the disk).
    let db = tmp.path().join("batch");
    let store = Store::open(&db).expect("create");
    fill(&store, 4);
    store.sync().expect("sync");
    store.sync().expect("sync");
    let gap = log_end(&store);
    store.put("lost", "page").expect("put");
    store.put("kept", "after the gap").expect("put");
    let mut b = Batch::new();
    b.put("c1", "1").put("c2", "2").delete("key0");
    store.write(b).expect("batch");
    let end = log_end(&store);
    store.simulate_crash();
    write_seed("open_data", "unfinished-batch", &compact_data(&db, end - 32, 0x08));
    let mut zeroed = compact_data(&db, end, 0x08);
    let at = 129 + gap - DATA_START;
    zeroed[at..at + 32].fill(0);
    write_seed("open_data", "zero-gap", &zeroed);

    // A new, empty store (also the start of every `ops_vs_model` run).
    let db = tmp.path().join("empty");
    let store = Store::open(&db).expect("create");
    let end = log_end(&store);
    store.close().expect("close");
    write_seed("open_data", "empty", &compact_data(&db, end, 0x08));
    let data = fs::read(db.join("data.mkv")).expect("read data.mkv");
    let index = fs::read(db.join("index.mkv")).expect("read index.mkv");
    assert!(data[DATA_START..].iter().chain(&index[PAGE..]).all(|&b| b == 0), "not empty");
    fs::write(fuzz_dir().join("seeds/empty_data.mkv"), &data[..DATA_START]).expect("write");
    fs::write(fuzz_dir().join("seeds/empty_index.mkv"), &index[..PAGE]).expect("write");
}

/// Writes the base store of `open_index` and its seeds, and the `record_decode` seeds cut
/// from its log.
fn base_and_index_seeds() {
    let tmp = harness::scratch();
    let db = tmp.path().join("base");
    let store = Store::open(&db).expect("create");
    let mut model = Model::new();
    for step in harness::base_history() {
        harness::apply_base(step, &mut model, Some(&store));
    }
    let (end, id) = (log_end(&store), store.id());
    store.close().expect("close");
    let data = fs::read(db.join("data.mkv")).expect("read data.mkv");
    fs::write(fuzz_dir().join("seeds/base_data.mkv"), &data[..end.next_multiple_of(PAGE)])
        .expect("write base_data.mkv");
    let index = fs::read(db.join("index.mkv")).expect("read index.mkv");
    write_seed("open_index", "clean", &harness::compact_index_input(&index, 0));
    write_seed("open_index", "clean-fixed-verify", &harness::compact_index_input(&index, 0x0e));
    write_seed("open_index", "dirty-fixed", &harness::compact_index_input(&index, 0x02));
    write_seed("open_index", "clean-ro-compact", &harness::compact_index_input(&index, 0x36));
    let mut raw = vec![0x01 | 0x10];
    raw.extend_from_slice(&index);
    write_seed("open_index", "clean-raw", &raw);

    // record_decode: one record of each kind, both headers, and the whole log.
    let seed = mapkv::fuzzing::crc_seed(id).to_le_bytes();
    let mut p = DATA_START;
    let mut kinds = std::collections::BTreeSet::new();
    while p < end {
        let rec = Record::decode(&data[p..end]).expect("a base record");
        let len = rec.total_len() as usize;
        if kinds.insert((rec.kind as u8, rec.batch)) {
            let name = format!("record-kind{}-batch{}", rec.kind as u8, u8::from(rec.batch));
            write_seed("record_decode", &name, &[&[0][..], &seed, &data[p..p + len]].concat());
        }
        p += len;
    }
    write_seed("record_decode", "log-header", &[&[1][..], &data[..64]].concat());
    let index_len = (index.len() as u64).to_le_bytes();
    write_seed("record_decode", "index-header", &[&[2][..], &index[..80], &index_len].concat());
    let log = &data[DATA_START..end];
    write_seed("record_decode", "log-walk", &[&[3][..], &seed, log].concat());
}

fn ops_vs_model_seeds() {
    use op::*;
    let put = |k: u8, class: u8, len: u8| [PUT, k, class, len];
    let seeds: [(&str, Vec<u8>); 5] = [
        (
            "basic",
            [
                &put(1, 1, 5)[..],
                &put(2, 5, 30),
                &put(0, 0, 0),
                &[GET, 1, DELETE, 2, GET, 2, SYNC, REOPEN],
                &put(3, 1, 9),
                &[CRASH, MISC, 1],
            ]
            .concat(),
        ),
        (
            "batch-snapshot-compact",
            [
                &put(4, 1, 4)[..],
                &put(5, 1, 4),
                &[BATCH, 3, 0, 6, 1, 7, 1, 4, 0, 0, 0, 7, 5, 20, 0, 5, 1, 3],
                &[SNAPSHOT, 3],
                &put(4, 1, 8),
                &[DELETE, 5, COMPACT, HOLD, 4, COMPACT],
                &[MISC, 0, CRASH],
            ]
            .concat(),
        ),
        (
            "held-across-growth",
            [
                &put(6, 5, 200)[..],
                &[HOLD, 6, HOLD, 0],
                &put(6, 1, 3),
                &[MISC, 3, 7, MISC, 3, 8, MISC, 3, 9, MISC, 3, 10],
                &[COMPACT, CRASH, REOPEN, GET, 6],
            ]
            .concat(),
        ),
        (
            "index-growth",
            [
                &put(8, 1, 2)[..],
                &[DELETE, 8, MISC, 2, HOLD, 8],
                &put(8, 1, 3),
                &[CRASH, MISC, 2, MISC, 1],
            ]
            .concat(),
        ),
        (
            "max-key",
            [&put(39, 5, 10)[..], &[SNAPSHOT, 2, DELETE, 39], &put(39, 0, 0), &[REOPEN, GET, 39]]
                .concat(),
        ),
    ];
    for (name, bytes) in seeds {
        write_seed("ops_vs_model", name, &bytes);
    }
}

/// Rewrites every seed corpus from real stores (and the base store of `open_index`).
#[test]
#[ignore = "rewrites fuzz/corpus and fuzz/seeds: run by hand after a format change"]
fn write_seed_corpora() {
    base_and_index_seeds();
    open_data_seeds();
    ops_vs_model_seeds();
    open_live_seeds();
}

/// Writes the `open_live` seeds only (they need the base store already written).
#[test]
#[ignore = "rewrites fuzz/corpus/open_live: run by hand"]
fn write_open_live_seeds() {
    open_live_seeds();
}

/// `open_live` seeds: a live writer's own page on the base store, under each mode.
fn open_live_seeds() {
    let tmp = harness::scratch();
    let db = tmp.path().join("db");
    fs::create_dir(&db).expect("store directory");
    fs::write(db.join("data.mkv"), harness::BASE_DATA).expect("write data.mkv");
    let store = Store::open(&db).expect("open the base store");
    let page = fs::read(db.join("live.mkv")).expect("read live.mkv");
    drop(store);
    let words = &page[..22 * 8];
    for (name, mode) in [("exact", 0x0f), ("exact-verify", 0x1f), ("identity", 0x01), ("raw", 0)] {
        write_seed("open_live", name, &[&[mode][..], words].concat());
    }
}
