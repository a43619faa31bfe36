//! mapkv's fuzz targets as plain functions of their input bytes.
//!
//! `fuzz/fuzz_targets/*.rs` hand them libFuzzer's inputs; the root crate's
//! `tests/fuzz_regressions.rs` includes this file (`#[path]`) and runs the seed corpora and
//! every input a fuzzer ever found through them as ordinary tests. So this file uses nothing
//! but `mapkv`, its dependencies `crc32fast` and `xxhash-rust`, `tempfile` and `std`.
//!
//! Each target panics when mapkv misbehaves (a panic inside it, a wrong answer, an error
//! that damaged bytes cannot explain) and returns normally otherwise: errors that name
//! damage are the expected answer to damaged files. Stores live in `/dev/shm` when it
//! exists (tmpfs: no disk I/O per execution).
//!
//! Input layouts (the first byte of every input is a mode byte):
//! - `open_data`: bit 0 raw (the rest is `data.mkv` verbatim) or compact (64 bytes of header
//!   slot 0, 64 of slot 1, then the records, placed at 0, 4096 and 8192); bit 1 recompute
//!   both header CRCs; bit 2 recompute every record CRC (so mutations reach past the
//!   checksums); bits 3–4 zero tail (none, to a page, plus 16 KiB, to 1 MiB); bit 5 go on
//!   to write, compact, reopen and crash; bit 6 take the record CRC seed from slot 1;
//!   bit 7 open with `verify_checksums`.
//! - `open_index`: `data.mkv` is a real store's (`fuzz/seeds/base_data.mkv`, history in
//!   [`base_history`], zero-padded to 64 KiB); bit 0 raw (the rest is `index.mkv`) or compact (80 header bytes,
//!   then slot entries `slot: u16, sel: u8, word: u64` with the hash of base key `sel`, or
//!   a raw `hash: u64` after the word when `sel & 0x80`); bit 1 fix the header (magic,
//!   version, store id, capacity, CRC); bit 2 mark it clean at the committed length (so it
//!   is trusted); bit 3 `verify_checksums`; bit 4 also open read-only; bit 5 compact
//!   through it; bits 6–7 capacity 1024 << n.
//! - `record_decode`: mode % 4 = 0 one record (a `u32` CRC seed, then the record), 1 a log
//!   header slot, 2 an index header (80 bytes, then the file length as `u64`), 3 a walk over
//!   consecutive records (seed, then the records).
//! - `ops_vs_model`: a program of operations, one per opcode byte (see [`op`]).
//! - `open_live`: bits 0–3 take the live page's identity, inodes, sequence parity and key
//!   from the writer's real page; bit 4 `verify_checksums`; the rest is the page's words.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use mapkv::fuzzing::{DecodeError, IndexHeader, Kind, LogHeader, Record, crc_seed};
use mapkv::{Batch, Error, OpenOptions, Store, Value};

/// Contents of a store: key to value.
pub type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Where records start in the data file.
pub const DATA_START: usize = 8192;
const PAGE: usize = 4096;
const HEADER_SLOTS: [usize; 2] = [0, PAGE];
/// Size of a new data file (its first growth step).
const FIRST_DATA_LEN: usize = 1 << 20;
const INDEX_HEADER_LEN: usize = 80;
const MIN_SLOTS: usize = 1024;

// ---- shared helpers ---------------------------------------------------------------------

/// A scratch directory, on tmpfs when there is one.
pub fn scratch() -> tempfile::TempDir {
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("mapkv-fuzz-");
        b
    };
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = builder.tempdir_in(shm)
    {
        return dir;
    }
    builder.tempdir().expect("a temporary directory")
}

fn open(dir: &Path, read_only: bool, verify: bool) -> mapkv::Result<Store> {
    OpenOptions::new().read_only(read_only).create(false).verify_checksums(verify).open(dir)
}

/// Panics unless `e` is what damaged files may give.
fn expect_damage(e: &Error, what: &str) {
    assert!(
        matches!(e, Error::Corrupt { .. } | Error::UnsupportedVersion { .. }),
        "{what}: an error that damage does not explain: {e:?}"
    );
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Everything a sound store holds, read every way there is, with every way checked
/// against the others: iteration (each key once, every item Ok), `get`, a reader's `get` and
/// `get_many`, a snapshot's `get` and `iter`, `len`, `stats` and `verify`.
pub fn sound_contents(store: &Store, what: &str) -> Model {
    let mut model = Model::new();
    for item in store.iter() {
        let (k, v) = item.unwrap_or_else(|e| panic!("{what}: iteration failed: {e}"));
        let dup = model.insert(k.to_vec(), v.to_vec());
        assert!(dup.is_none(), "{what}: iteration gave key {:?} twice", short(&k));
    }
    check_contents(store, &model, &[], what);
    let report = store.verify().unwrap_or_else(|e| panic!("{what}: verify failed: {e}"));
    assert!(report.is_ok(), "{what}: verify found {:?}", report.problems);
    assert_eq!(report.live_keys, model.len() as u64, "{what}: verify's key count");
    model
}

/// Checks that `store` holds exactly `model`, and that each of `absent` is absent.
pub fn check_contents(store: &Store, model: &Model, absent: &[Vec<u8>], what: &str) {
    assert_eq!(store.len(), model.len() as u64, "{what}: len");
    assert_eq!(store.stats().live_keys, model.len() as u64, "{what}: stats().live_keys");
    let reader = store.reader();
    let snap = store.snapshot();
    // `get` and a snapshot's `get` here; a reader's lookups through `get_many` below.
    for (k, v) in model {
        let got = store.get(k).unwrap_or_else(|e| panic!("{what}: get failed: {e}"));
        assert_eq!(got.as_deref(), Some(&v[..]), "{what}: get {:?}", short(k));
        let got = snap.get(k).unwrap_or_else(|e| panic!("{what}: snapshot get failed: {e}"));
        assert_eq!(got, Some(&v[..]), "{what}: snapshot get {:?}", short(k));
    }
    for k in absent.iter().filter(|k| !model.contains_key(*k)) {
        let got = store.get(k).unwrap_or_else(|e| panic!("{what}: get failed: {e}"));
        assert!(got.is_none(), "{what}: absent key {:?} found", short(k));
    }
    let keys: Vec<&[u8]> = model.keys().chain(absent).map(Vec::as_slice).collect();
    let many = reader.get_many(&keys).unwrap_or_else(|e| panic!("{what}: get_many: {e}"));
    assert_eq!(many.len(), keys.len(), "{what}: get_many answers");
    for (k, got) in keys.iter().zip(many) {
        assert_eq!(got, model.get(*k).map(Vec::as_slice), "{what}: get_many {:?}", short(k));
    }
    let mut seen = Model::new();
    for item in snap.iter() {
        let (k, v) = item.unwrap_or_else(|e| panic!("{what}: snapshot iteration failed: {e}"));
        assert!(seen.insert(k.to_vec(), v.to_vec()).is_none(), "{what}: snapshot dup");
    }
    assert!(seen == *model, "{what}: snapshot iteration differs from the model");
}

/// A key, shortened for messages.
fn short(k: &[u8]) -> String {
    let s = String::from_utf8_lossy(&k[..k.len().min(24)]).into_owned();
    if k.len() > 24 { format!("{s}...({} bytes)", k.len()) } else { s }
}

// ---- open_data --------------------------------------------------------------------------

/// Builds `data.mkv` from an `open_data` input (see the module docs), with the mode byte.
/// `None` for no input.
pub fn data_file(input: &[u8]) -> Option<(Vec<u8>, u8)> {
    let (&mode, rest) = input.split_first()?;
    let mut f = if mode & 1 != 0 {
        rest.to_vec()
    } else {
        let mut f = vec![0; DATA_START];
        for (slot, at) in HEADER_SLOTS.iter().enumerate() {
            let src = rest.get(slot * 64..).unwrap_or_default();
            let n = src.len().min(64);
            f[*at..at + n].copy_from_slice(&src[..n]);
        }
        f.extend_from_slice(rest.get(128..).unwrap_or_default());
        f
    };
    if mode & 4 != 0 {
        let slot = HEADER_SLOTS[usize::from(mode & 0x40 != 0)];
        if f.len() >= slot + 24 {
            let seed = crc_seed(get_u64(&f, slot + 16));
            fix_record_crcs(&mut f, seed);
        }
    }
    if mode & 2 != 0 {
        for slot in HEADER_SLOTS {
            if f.len() >= slot + 64 {
                let crc = crc32fast::hash(&f[slot..slot + 60]);
                put_u32(&mut f, slot + 60, crc);
            }
        }
    }
    let len = f.len();
    match (mode >> 3) & 3 {
        0 => {}
        1 => f.resize(len.next_multiple_of(PAGE), 0),
        2 => f.resize(len.next_multiple_of(PAGE) + (16 << 10), 0),
        _ => f.resize(len.max(FIRST_DATA_LEN), 0),
    }
    Some((f, mode))
}

/// Gives every record from `DATA_START` on, as far as their lengths chain, the CRC the
/// format asks for (DESIGN.md §2), stopping at an all-zero header (the clean end).
pub fn fix_record_crcs(f: &mut [u8], seed: u32) {
    let mut p = DATA_START;
    while p + 24 <= f.len() && f[p..p + 24].iter().any(|&b| b != 0) {
        let (key_len, value_len) = (get_u32(f, p + 8) as usize, get_u32(f, p + 12) as usize);
        if key_len > 1 << 16 {
            break;
        }
        let end = align8(24 + key_len) + value_len;
        if p + align8(end) > f.len() {
            break;
        }
        let mut h = crc32fast::Hasher::new_with_initial(seed);
        h.update(&f[p + 4..p + end]);
        put_u32(f, p, h.finalize());
        p += align8(end);
    }
}

/// `open_data`: arbitrary bytes as the data file (no index). Opening must never panic and
/// either fail with a damage error or give a sound store: the same contents read-only and
/// writable, `verify` clean; with mode bit 5, writes, compaction, a clean reopen and a
/// crash after it behave as on any store.
pub fn open_data(input: &[u8]) {
    let Some((file, mode)) = data_file(input) else { return };
    let verify = mode & 0x80 != 0;
    let tmp = scratch();
    let db = tmp.path().join("db");
    fs::create_dir(&db).expect("store directory");
    fs::write(db.join("data.mkv"), &file).expect("write data.mkv");

    let seen = match open(&db, true, verify) {
        Ok(ro) => {
            assert!(ro.recovery().index_rebuilt, "no index file, yet open trusted one");
            Some(sound_contents(&ro, "read-only open"))
        }
        Err(e) => {
            expect_damage(&e, "read-only open");
            None
        }
    };
    assert_eq!(fs::read(db.join("data.mkv")).expect("read"), file, "read-only open wrote");
    let (store, model) = match (open(&db, false, verify), seen) {
        (Err(e), None) => return expect_damage(&e, "writable open"),
        (Ok(_), None) => panic!("a writable open accepted what a read-only open refused"),
        (Err(e), Some(_)) => panic!("a writable open refused what a read-only open read: {e}"),
        (Ok(store), Some(seen)) => {
            let got = sound_contents(&store, "writable open");
            assert!(got == seen, "read-only and writable opens disagree");
            (store, got)
        }
    };
    if mode & 0x20 != 0 {
        after_recovery(store, &db, model, verify);
    }
}

/// Writes of every kind on a recovered store, compaction, a clean reopen and a crash: all
/// as on any store.
fn after_recovery(store: Store, db: &Path, mut model: Model, verify: bool) {
    store.put(b"fuzz:a", b"1").expect("put after recovery");
    model.insert(b"fuzz:a".to_vec(), b"1".to_vec());
    if let Some(k) = model.keys().find(|k| k.as_slice() != b"fuzz:a").cloned() {
        assert!(store.delete(&k).expect("delete after recovery"), "a live key was absent");
        model.remove(&k);
    }
    let mut batch = Batch::new();
    batch.put("fuzz:b", "2").delete("fuzz:a").put("fuzz:c", vec![7; 5000]);
    store.write(batch).expect("batch after recovery");
    model.remove(&b"fuzz:a"[..]);
    model.insert(b"fuzz:b".to_vec(), b"2".to_vec());
    model.insert(b"fuzz:c".to_vec(), vec![7; 5000]);
    store.sync().expect("sync after recovery");
    check_contents(&store, &model, &[b"fuzz:a".to_vec()], "writes after recovery");
    store.compact().expect("compaction of a recovered store");
    check_contents(&store, &model, &[], "after compaction");
    store.close().expect("clean close");

    let store = open(db, false, verify).expect("reopen after a clean close");
    assert!(!store.recovery().index_rebuilt, "a clean close was not trusted");
    check_contents(&store, &model, &[], "clean reopen");
    store.put(b"fuzz:d", b"4").expect("put");
    model.insert(b"fuzz:d".to_vec(), b"4".to_vec());
    store.simulate_crash();
    let store = open(db, false, verify).expect("reopen after a crash");
    assert!(!store.recovery().was_clean(), "a crash left a trusted index");
    assert!(sound_contents(&store, "reopen after a crash") == model, "crash lost writes");
    // The same crash after a restart: the index is rebuilt from the log.
    store.simulate_crash();
    mapkv::testing::adopt_page(db, true).expect("reboot the page");
    let store = open(db, false, verify).expect("reopen after a restart");
    assert!(store.recovery().index_rebuilt, "a restart left a resumed index");
    assert!(sound_contents(&store, "reopen after a restart") == model, "restart lost writes");
}

// ---- open_index -------------------------------------------------------------------------

/// The base store of `open_index` and the seeds: `data.mkv` of a real store, cleanly closed,
/// cut to a page past its log (`open_index` pads it with zeros to 64 KiB). Written by
/// `cargo test --test fuzz_regressions -- --ignored write_seed_corpora`.
pub const BASE_DATA: &[u8] = include_bytes!("../seeds/base_data.mkv");

/// Length of the base data file in `open_index`: the log and zeros, room for the writes
/// (a real store's first size is 1 MiB; a shorter file is as valid and much faster to
/// recover, which scans up to 1 MiB past the end for data after a zeroed page).
const BASE_DATA_LEN: usize = 64 << 10;

/// An operation of [`base_history`].
#[derive(Debug, Clone, Copy)]
pub enum BaseOp {
    /// `put(key, value)`.
    Put(usize, usize),
    /// `delete(key)`.
    Delete(usize),
    /// A batch: puts of keys `from..to`, each with the value given.
    Batch(usize, usize, usize),
    /// A batch deleting key `.0` and putting key `.1` with value `.2`.
    BatchSwap(usize, usize, usize),
}

/// Key `i` of the base store (those from 24 on it never held).
pub fn base_key(i: usize) -> Vec<u8> {
    let mut k = format!("base:{i:02}").into_bytes();
    k.resize(k.len() + (i % 4) * 5, b'.');
    k
}

/// Number of [`base_key`]s.
pub const BASE_KEYS: usize = 26;

/// The base store's values: letters only, so no value holds anything a record header or
/// a zero would parse as.
pub fn base_value(n: usize) -> Vec<u8> {
    (0..(n * 7) % 61 + 1).map(|i| b'a' + ((n + i) % 26) as u8).collect()
}

/// What the base store went through, in order (each value number is distinct).
pub fn base_history() -> Vec<BaseOp> {
    use BaseOp::*;
    let mut ops: Vec<BaseOp> = (0..16).map(|k| Put(k, k)).collect();
    ops.extend([Put(3, 100), Put(3, 101), Delete(5), Delete(6), Put(6, 102)]);
    ops.extend([Batch(16, 22, 200), BatchSwap(7, 22, 300), Put(23, 301), Delete(23)]);
    ops.extend([Put(1, 302), Put(9, 303), Delete(9)]);
    ops
}

/// Applies `op` to `model`, and to `store` if given.
pub fn apply_base(op: BaseOp, model: &mut Model, store: Option<&Store>) {
    match op {
        BaseOp::Put(k, v) => {
            if let Some(s) = store {
                s.put(base_key(k), base_value(v)).expect("base put");
            }
            model.insert(base_key(k), base_value(v));
        }
        BaseOp::Delete(k) => {
            if let Some(s) = store {
                s.delete(base_key(k)).expect("base delete");
            }
            model.remove(&base_key(k));
        }
        BaseOp::Batch(from, to, v) => {
            let mut b = Batch::new();
            for k in from..to {
                b.put(base_key(k), base_value(v + k));
                model.insert(base_key(k), base_value(v + k));
            }
            if let Some(s) = store {
                s.write(b).expect("base batch");
            }
        }
        BaseOp::BatchSwap(del, put, v) => {
            let mut b = Batch::new();
            b.delete(base_key(del)).put(base_key(put), base_value(v));
            model.remove(&base_key(del));
            model.insert(base_key(put), base_value(v));
            if let Some(s) = store {
                s.write(b).expect("base batch");
            }
        }
    }
}

/// The base store's contents, and every value each key ever had.
pub fn base_model() -> (Model, BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>>) {
    let mut model = Model::new();
    let mut ever: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for op in base_history() {
        apply_base(op, &mut model, None);
        for (k, v) in &model {
            ever.entry(k.clone()).or_default().insert(v.clone());
        }
    }
    (model, ever)
}

/// The base store's id and committed length, from its newer valid header slot.
pub fn base_header() -> (u64, u64) {
    let slots = HEADER_SLOTS.map(|at| LogHeader::decode(&BASE_DATA[at..at + 64]).ok());
    let h = slots.into_iter().flatten().max_by_key(|h| h.seq).expect("a valid base header");
    (h.store_id, h.committed)
}

/// The hash an index slot stores for `key` in a store with id `store_id`.
pub fn slot_hash(key: &[u8], store_id: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, store_id).max(1)
}

/// Builds `index.mkv` from an `open_index` input (see the module docs).
pub fn index_file(mode: u8, rest: &[u8]) -> Vec<u8> {
    if mode & 1 != 0 {
        return rest.to_vec();
    }
    let (store_id, committed) = base_header();
    let capacity = MIN_SLOTS << (mode >> 6);
    let mut f = vec![0; PAGE + 16 * capacity];
    let n = rest.len().min(INDEX_HEADER_LEN);
    f[..n].copy_from_slice(&rest[..n]);
    let mut entries = rest.get(INDEX_HEADER_LEN..).unwrap_or_default();
    while entries.len() >= 11 {
        let slot = usize::from(u16::from_le_bytes([entries[0], entries[1]])) % capacity;
        let sel = entries[2];
        let word = get_u64(entries, 3);
        entries = &entries[11..];
        let hash = if sel & 0x80 == 0 {
            slot_hash(&base_key(usize::from(sel) % BASE_KEYS), store_id)
        } else if entries.len() >= 8 {
            let h = get_u64(entries, 0);
            entries = &entries[8..];
            h
        } else {
            break;
        };
        put_u64(&mut f, PAGE + 16 * slot, hash);
        put_u64(&mut f, PAGE + 16 * slot + 8, word);
    }
    if mode & 2 != 0 {
        f[..8].copy_from_slice(b"MAPKVIDX");
        put_u32(&mut f, 8, 1);
        put_u64(&mut f, 16, store_id);
        put_u64(&mut f, 24, capacity as u64);
        if mode & 4 != 0 {
            put_u64(&mut f, 32, committed);
        }
        let crc = crc32fast::hash(&f[..72]);
        put_u32(&mut f, 72, crc);
    }
    f
}

/// Encodes an index file as a compact `open_index` input with mode `mode` (bits 0 and 6–7
/// are ignored: compact, capacity from the file).
pub fn compact_index_input(index: &[u8], mode: u8) -> Vec<u8> {
    let capacity = (index.len() - PAGE) / 16;
    let shift = (capacity / MIN_SLOTS).trailing_zeros() as u8;
    let mut out = vec![(mode & 0x3e) | (shift << 6)];
    out.extend_from_slice(&index[..INDEX_HEADER_LEN]);
    for slot in 0..capacity {
        let (hash, word) = (get_u64(index, PAGE + 16 * slot), get_u64(index, PAGE + 16 * slot + 8));
        if hash != 0 {
            out.extend_from_slice(&(slot as u16).to_le_bytes());
            out.push(0x80);
            out.extend_from_slice(&word.to_le_bytes());
            out.extend_from_slice(&hash.to_le_bytes());
        }
    }
    out
}

/// The keys `open_index` reads: the base keys (those from 24 on never written) and the key
/// its writes add.
fn index_universe() -> Vec<Vec<u8>> {
    (0..BASE_KEYS + 2).map(base_key).chain([b"fuzz:new".to_vec()]).collect()
}

/// Reads through a possibly damaged but trusted index: never a panic; with checksums
/// verified, never a value that was not written for the key.
fn read_damaged(store: &Store, ever: &BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>>, verify: bool) {
    let allowed = |k: &[u8], v: &[u8]| ever.get(k).is_some_and(|vs| vs.contains(v));
    let keys = index_universe();
    let reader = store.reader();
    let snap = store.snapshot();
    for k in &keys {
        let got = store.get(k);
        if let Ok(Some(v)) = &got {
            assert!(allowed(k, v), "get {:?} gave a value never written for it", short(k));
        }
        let by_reader = reader.get(k);
        assert_eq!(
            by_reader.as_ref().ok().copied(),
            got.as_ref().ok().map(|v| v.as_deref()),
            "reader and store disagree on {:?}",
            short(k)
        );
        let by_snap = snap.get(k);
        assert_eq!(by_snap.ok(), by_reader.ok(), "snapshot and reader disagree on {:?}", short(k));
    }
    if let Ok(many) = reader.get_many(&keys) {
        for (k, got) in keys.iter().zip(many) {
            assert_eq!(
                reader.get(k).ok(),
                Some(got),
                "get_many and get disagree on {:?}",
                short(k)
            );
        }
    }
    for (k, v) in store.iter().flatten() {
        assert!(!verify || allowed(&k, &v), "iteration gave a pair never written");
    }
    let _ = store.stats();
    let _ = store.verify();
}

/// `open_index`: a real store's data file with arbitrary bytes as its index. Opening always
/// succeeds (the log is sound: the index is trusted or rebuilt). A rebuilt index gives
/// exactly the base contents; a trusted damaged one gives errors or values written for
/// the key, never a panic. Writes through it that return Ok are in the log: a rebuild from
/// the log afterwards gives exactly the base contents with those writes.
pub fn open_index(input: &[u8]) {
    let Some((&mode, rest)) = input.split_first() else { return };
    let index = index_file(mode, rest);
    let verify = mode & 8 != 0;
    let (base, mut ever) = base_model();
    let tmp = scratch();
    let db = tmp.path().join("db");
    fs::create_dir(&db).expect("store directory");
    let mut data = BASE_DATA.to_vec();
    data.resize(BASE_DATA_LEN, 0);
    fs::write(db.join("data.mkv"), &data).expect("write data.mkv");
    fs::write(db.join("index.mkv"), &index).expect("write index.mkv");

    if mode & 0x10 != 0 {
        let ro = open(&db, true, verify).expect("a read-only open of a sound log");
        if ro.recovery().index_rebuilt {
            assert!(sound_contents(&ro, "read-only, rebuilt") == base, "rebuilt wrongly");
        } else {
            read_damaged(&ro, &ever, verify);
        }
        drop(ro);
        assert_eq!(fs::read(db.join("index.mkv")).expect("read"), index, "read-only wrote");
    }

    let store = open(&db, false, verify).expect("a writable open of a sound log");
    let trusted = !store.recovery().index_rebuilt;
    if !trusted {
        assert!(sound_contents(&store, "writable, rebuilt") == base, "rebuilt wrongly");
    }
    read_damaged(&store, &ever, verify);
    // Writes: the log must get exactly those that return Ok.
    let mut replay = base.clone();
    let mut wrote = |k: &[u8], v: Option<&[u8]>, replay: &mut Model| {
        match v {
            Some(v) => {
                replay.insert(k.to_vec(), v.to_vec());
                ever.entry(k.to_vec()).or_default().insert(v.to_vec());
            }
            None => {
                replay.remove(k);
            }
        }
        if let Ok(got) = store.get(k) {
            assert_eq!(got.as_deref(), v, "a write that returned Ok is not what get reads");
        }
    };
    let fresh = b"fuzz:new".to_vec();
    for (k, v) in [(fresh.clone(), b"N1".to_vec()), (base_key(3), b"N2".to_vec())] {
        if store.put(&k, &v).is_ok() {
            wrote(&k, Some(&v), &mut replay);
        }
    }
    for k in [base_key(0), base_key(7), base_key(5)] {
        if let Ok(true) = store.delete(&k) {
            wrote(&k, None, &mut replay);
        }
    }
    let mut batch = Batch::new();
    batch.put(base_key(1), "N3").put(base_key(5), "N4").put(&fresh, "N5");
    if store.write(batch).is_ok() {
        for (k, v) in [(base_key(1), "N3"), (base_key(5), "N4"), (fresh.clone(), "N5")] {
            wrote(&k, Some(v.as_bytes()), &mut replay);
        }
    }
    read_damaged(&store, &ever, verify);
    let compacted = mode & 0x20 != 0 && store.compact().is_ok();
    if compacted {
        read_damaged(&store, &ever, verify);
    }
    if trusted {
        let _ = store.close();
    } else {
        store.close().expect("clean close after a rebuild");
    }
    // Whatever happened, the log is sound: without its index it rebuilds to the writes.
    for name in ["index.mkv", "index.mkv.tmp"] {
        let _ = fs::remove_file(db.join(name));
    }
    let store = open(&db, false, verify).expect("a rebuild from the log");
    let got = sound_contents(&store, "rebuilt from the log");
    if compacted && trusted {
        // Compaction copies what the (damaged) index names; what it kept must be values
        // written for their keys.
        for (k, v) in &got {
            assert!(ever.get(k).is_some_and(|vs| vs.contains(v)), "compaction invented a pair");
        }
    } else {
        assert!(got == replay, "the log does not hold exactly the writes that returned Ok");
    }
}

// ---- record_decode ----------------------------------------------------------------------

/// `record_decode`: the decoders of on-disk bytes on arbitrary input. Never a panic; what
/// decodes is within the bytes given and self-consistent, re-encodes to itself, and
/// checksums as DESIGN.md §2 specifies.
pub fn record_decode(input: &[u8]) {
    let Some((&mode, rest)) = input.split_first() else { return };
    match mode % 4 {
        0 => {
            if rest.len() >= 4 {
                let seed = get_u32(rest, 0);
                check_record(&rest[4..], seed);
            }
        }
        1 => {
            if let Ok(h) = LogHeader::decode(rest) {
                assert!(h.committed >= DATA_START as u64 && h.committed.is_multiple_of(8));
                assert_eq!(crc32fast::hash(&rest[..60]), get_u32(rest, 60), "header CRC");
                let mut b = [0; 64];
                h.encode_into(&mut b);
                assert_eq!(LogHeader::decode(&b).ok(), Some(h), "header round trip");
            }
        }
        2 => {
            if rest.len() >= INDEX_HEADER_LEN + 8 {
                let b: &[u8; INDEX_HEADER_LEN] = rest[..INDEX_HEADER_LEN].try_into().expect("80");
                let file_len = get_u64(rest, INDEX_HEADER_LEN);
                match IndexHeader::decode(b, file_len) {
                    Ok(h) => {
                        assert!(h.capacity.is_power_of_two() && h.capacity >= MIN_SLOTS as u64);
                        assert_eq!(IndexHeader::file_len(h.capacity), Some(file_len));
                        assert!(h.live <= h.used && h.used <= h.capacity);
                        let mut e = [0; INDEX_HEADER_LEN];
                        h.encode_into(&mut e);
                        assert_eq!(IndexHeader::decode(&e, file_len).ok(), Some(h));
                    }
                    Err(DecodeError::Version(v)) => assert_ne!(v, 1, "version 1 refused as other"),
                    Err(DecodeError::Corrupt(_)) => {}
                }
            }
        }
        _ => {
            if rest.len() >= 4 {
                let seed = get_u32(rest, 0);
                let mut b = &rest[4..];
                while let Some(len) = check_record(b, seed) {
                    b = &b[len..];
                }
            }
        }
    }
}

/// Decodes the record at the start of `b` and checks it; returns its length if it decoded.
fn check_record(b: &[u8], seed: u32) -> Option<usize> {
    let rec = Record::decode(b).ok()?;
    let total = rec.total_len() as usize;
    assert!(total <= b.len() && total.is_multiple_of(8) && total >= 24, "record length {total}");
    assert!(rec.value_offset().is_multiple_of(8), "unaligned value");
    let (key, value) = (rec.key(b), rec.value(b));
    assert_eq!((key.len(), value.len()), (rec.key_len as usize, rec.value_len as usize));
    assert!(key.len() <= 1 << 16, "key of {} bytes accepted", key.len());
    match rec.kind {
        Kind::Put => {}
        Kind::Delete => assert!(value.is_empty(), "a tombstone with a value"),
        Kind::Commit => assert!(key.is_empty() && value.len() == 8 && !rec.batch, "commit"),
    }
    assert_eq!(u32::from(b[4]), rec.kind as u32, "kind byte");
    assert_eq!(b[5], u8::from(rec.batch), "flags byte");
    assert_eq!(&b[6..8], &[0, 0], "reserved bytes");
    // The checksum covers bytes 4 to the end of the value, seeded (DESIGN.md §2).
    let end = rec.value_offset() as usize + value.len();
    let mut h = crc32fast::Hasher::new_with_initial(seed);
    h.update(&b[4..end]);
    let spec = h.finalize();
    assert_eq!(rec.checksum(seed, b), spec, "checksum differs from the format's");
    assert_eq!(rec.verify(seed, b).is_ok(), spec == get_u32(b, 0), "verify");
    // Nothing shorter than the record decodes as it.
    assert!(Record::decode(&b[..total - 1]).is_err(), "a cut record decoded");
    // Re-encoding what was decoded gives a record that decodes to the same and verifies.
    let mut out = vec![0xAA; Record::len_for(key.len(), value.len()) as usize];
    assert_eq!(out.len(), total, "len_for disagrees with total_len");
    Record::encode_into(seed, (rec.kind, rec.batch), rec.prev, key, value, &mut out);
    let again = Record::decode(&out).expect("a re-encoded record decodes");
    assert_eq!((again.kind, again.batch, again.prev), (rec.kind, rec.batch, rec.prev));
    assert_eq!((again.key(&out), again.value(&out)), (key, value), "round trip");
    assert!(again.verify(seed, &out).is_ok(), "a re-encoded record fails its checksum");
    if rec.verify(seed, b).is_ok() && b[24 + key.len()..rec.value_offset() as usize] == [0; 8][..] {
        assert_eq!(&out[..end], &b[..end], "a valid record re-encodes differently");
    }
    Some(total)
}

// ---- ops_vs_model -----------------------------------------------------------------------

/// Opcodes of `ops_vs_model` (the opcode byte modulo 16). Operands follow as bytes.
pub mod op {
    /// `put(key(k), value(len class, len))`: operands `k`, `class`, `len`.
    pub const PUT: u8 = 0;
    /// `delete(key(k))`: operand `k`.
    pub const DELETE: u8 = 5;
    /// `get(key(k))`: operand `k`.
    pub const GET: u8 = 7;
    /// A batch: operand `n`, then `n % 12 + 1` entries of `kind, k, class, len` (delete if
    /// `kind` is odd).
    pub const BATCH: u8 = 8;
    /// `sync()`.
    pub const SYNC: u8 = 9;
    /// Clean close and reopen.
    pub const REOPEN: u8 = 10;
    /// `simulate_crash()` and reopen.
    pub const CRASH: u8 = 11;
    /// `compact()`.
    pub const COMPACT: u8 = 12;
    /// A snapshot held over the next `n % 6` put, delete, batch or compact operations
    /// (operand `n`), then checked against the model of its moment.
    pub const SNAPSHOT: u8 = 13;
    /// Keeps the `Value` of `key(k)` (operand `k`), checked unchanged after every later
    /// operation, across growth, compaction, reopen and crash.
    pub const HOLD: u8 = 14;
    /// Operand `m % 4`: 0 read-only reopen, 1 `verify()`, 2 a batch of 720 new keys (index
    /// growth), 3 a 300 KiB value (log growth).
    pub const MISC: u8 = 15;
}

/// Number of keys `ops_vs_model` uses (operand `k` is taken modulo this).
pub const MODEL_KEYS: usize = 40;

/// Key `k` of `ops_vs_model`: lengths 0 to 45, and one of `MAX_KEY_LEN`.
pub fn model_key(k: u8) -> Vec<u8> {
    let k = usize::from(k) % MODEL_KEYS;
    match k {
        0 => Vec::new(),
        39 => vec![b'K'; mapkv::MAX_KEY_LEN],
        _ => {
            let mut key = format!("k{k}").into_bytes();
            key.resize(key.len() + (k * 7) % 44, b'_');
            key
        }
    }
}

/// A value of length class `class` (0 empty, 1–4 short, 5–6 up to 2 KiB, 7 up to 255 KiB),
/// with content depending on `salt`.
pub fn model_value(class: u8, len: u8, salt: u64) -> Vec<u8> {
    let n = match class % 8 {
        0 => 0,
        1..=4 => usize::from(len % 24),
        5 | 6 => usize::from(len) * 8,
        _ => usize::from(len) * 1024,
    };
    let mut x = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The files of a new store, closed cleanly: `fuzz/seeds/empty_data.mkv` and
/// `empty_index.mkv` (cut after their headers, written by the seed generator) padded back
/// to their real lengths. `ops_vs_model` starts from a copy rather than creating a store,
/// which would scan the new 1 MiB file for data past the end; the fixed store id also
/// makes a finding reproducible (the id seeds the index hash).
pub fn empty_store() -> &'static (Vec<u8>, Vec<u8>) {
    static FILES: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let mut data = include_bytes!("../seeds/empty_data.mkv").to_vec();
        data.resize(FIRST_DATA_LEN, 0);
        let mut index = include_bytes!("../seeds/empty_index.mkv").to_vec();
        index.resize(PAGE + 16 * MIN_SLOTS, 0);
        (data, index)
    })
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn or0(&mut self) -> u8 {
        self.next().unwrap_or(0)
    }
}

/// What `ops_vs_model` knows besides the store: the model, held values, counters.
struct Run {
    tmp: tempfile::TempDir,
    model: Model,
    held: Vec<(Value, Vec<u8>)>,
    salt: u64,
    bulks: usize,
    step: usize,
    /// Written since the last clean close.
    dirty: bool,
}

impl Run {
    fn path(&self) -> PathBuf {
        self.tmp.path().join("db")
    }

    fn what(&self, op: &str) -> String {
        format!("step {} ({op})", self.step)
    }

    /// Closes `store` cleanly (or abandons it, as a killed process would) and reopens it.
    /// A clean close is trusted; after a crash, the index is rebuilt if anything was
    /// written since the last clean close (else it is still exactly right).
    fn reopen(&mut self, store: Store, crash: bool) -> Store {
        if crash {
            store.simulate_crash();
        } else {
            store.close().expect("clean close");
        }
        let store = OpenOptions::new().open(self.path()).expect("reopen");
        let rebuilt = !store.recovery().was_clean();
        if crash {
            assert!(
                rebuilt || !self.dirty,
                "{}: a crash after writes left a trusted index",
                self.what("crash")
            );
        } else {
            assert!(!rebuilt, "{}: a clean close was not trusted", self.what("reopen"));
        }
        // A rebuilt index is dirty until the next clean close.
        self.dirty = rebuilt;
        store
    }

    fn check_all(&self, store: &Store, op: &str) {
        // Every key not in the model must be absent (but the longest one is looked up only
        // when it is in the model, where `check_contents` finds it: hashing and comparing
        // 64 KiB per check would halve the executions per second).
        let absent: Vec<Vec<u8>> = (0..MODEL_KEYS as u8 - 1).map(model_key).collect();
        check_contents(store, &self.model, &absent, &self.what(op));
    }

    fn check_held(&self) {
        for (v, expected) in &self.held {
            assert!(**v == expected[..], "{}: a held value changed", self.what("held"));
        }
    }

    fn value(&mut self, class: u8, len: u8) -> Vec<u8> {
        self.salt += 1;
        model_value(class, len, self.salt)
    }

    /// Runs one put, delete, batch or compaction decoded from `code` and `b`; returns the
    /// keys it wrote, or `None` if `code` is none of these.
    fn write_op(&mut self, store: &Store, code: u8, b: &mut Bytes) -> Option<Vec<Vec<u8>>> {
        let keys = match code % 16 {
            0..=4 => {
                let (k, class, len) = (model_key(b.or0()), b.or0(), b.or0());
                let v = self.value(class, len);
                store.put(&k, &v).expect("put");
                self.model.insert(k.clone(), v);
                vec![k]
            }
            5 | 6 => {
                let k = model_key(b.or0());
                let existed = store.delete(&k).expect("delete");
                assert_eq!(existed, self.model.remove(&k).is_some(), "{}", self.what("delete"));
                if !existed {
                    return Some(vec![k]); // nothing written
                }
                vec![k]
            }
            op::BATCH => {
                let n = b.or0() % 12 + 1;
                let mut batch = Batch::new();
                let mut after = self.model.clone();
                let mut keys = Vec::new();
                for _ in 0..n {
                    let (kind, k) = (b.or0(), model_key(b.or0()));
                    let (class, len) = (b.or0(), b.or0());
                    if kind % 2 == 1 {
                        batch.delete(&k);
                        after.remove(&k);
                    } else {
                        let v = self.value(class, len);
                        batch.put(&k, &v);
                        after.insert(k.clone(), v);
                    }
                    keys.push(k);
                }
                store.write(batch).expect("batch");
                self.model = after;
                keys
            }
            op::COMPACT => {
                let stats = store.compact().expect("compact");
                assert_eq!(stats.live_keys, self.model.len() as u64, "{}", self.what("compact"));
                Vec::new()
            }
            _ => return None,
        };
        self.dirty = true;
        Some(keys)
    }

    /// Runs one operation that is not a write; returns the store to go on with.
    fn other_op(&mut self, mut store: Store, code: u8, b: &mut Bytes) -> Store {
        match code % 16 {
            op::GET => {
                let k = model_key(b.or0());
                let got = store.get(&k).expect("get");
                let want = self.model.get(&k).map(Vec::as_slice);
                assert_eq!(got.as_deref(), want, "{}", self.what("get"));
            }
            op::SYNC => store.sync().expect("sync"),
            op::REOPEN => {
                store = self.reopen(store, false);
                self.check_all(&store, "reopen");
            }
            op::CRASH => {
                store = self.reopen(store, true);
                self.check_all(&store, "crash");
            }
            op::SNAPSHOT => {
                let n = b.or0() % 6;
                let before = self.model.clone();
                let snap = store.snapshot();
                for _ in 0..n {
                    let Some(code) = b.next() else { break };
                    if self.write_op(&store, code, b).is_none() {
                        break;
                    }
                }
                let mut seen = Model::new();
                for item in snap.iter() {
                    let (k, v) = item.expect("snapshot iteration");
                    seen.insert(k.to_vec(), v.to_vec());
                }
                assert!(seen == before, "{}: the snapshot saw later writes", self.what("snap"));
                for k in (0..MODEL_KEYS as u8).map(model_key) {
                    let got = snap.get(&k).expect("snapshot get");
                    assert_eq!(got, before.get(&k).map(Vec::as_slice), "{}", self.what("snap"));
                }
                drop(snap);
                self.check_all(&store, "after a snapshot");
            }
            op::HOLD => {
                let k = model_key(b.or0());
                if let Some(v) = store.get(&k).expect("get") {
                    if self.held.len() >= 8 {
                        self.held.remove(0);
                    }
                    let bytes = v.to_vec();
                    self.held.push((v, bytes));
                }
            }
            _ => match b.or0() % 4 {
                0 => {
                    store.close().expect("close");
                    self.dirty = false;
                    let ro = OpenOptions::new().read_only(true).open(self.path()).expect("ro");
                    self.check_all(&ro, "read-only reopen");
                    drop(ro);
                    store = OpenOptions::new().open(self.path()).expect("reopen");
                }
                1 => {
                    let report = store.verify().expect("verify");
                    assert!(report.is_ok(), "{}: {:?}", self.what("verify"), report.problems);
                }
                2 if self.bulks < 2 => {
                    self.bulks += 1;
                    let mut batch = Batch::new();
                    for i in 0..720 {
                        let k = format!("bulk:{}:{i}", self.bulks).into_bytes();
                        batch.put(&k, &k[5..]);
                        self.model.insert(k.clone(), k[5..].to_vec());
                    }
                    store.write(batch).expect("bulk batch");
                    self.dirty = true;
                    self.check_all(&store, "bulk");
                }
                2 => {}
                _ => {
                    let k = model_key(b.or0());
                    let v = self.value(7, 255);
                    let v = [v.as_slice(), &v[..45 << 10]].concat();
                    store.put(&k, &v).expect("large put");
                    self.dirty = true;
                    self.model.insert(k, v);
                }
            },
        }
        store
    }
}

/// `ops_vs_model`: a program of puts, deletes, batches, syncs, snapshots, held values,
/// clean reopens, simulated crashes, compactions, read-only reopens and growth, run on a
/// fresh store and checked against a `BTreeMap` after each step, and at the end verified and
/// reopened. A crash loses nothing that returned (the process-crash promise), and a held
/// value never changes.
pub fn ops_vs_model(input: &[u8]) {
    let tmp = scratch();
    let db = tmp.path().join("db");
    fs::create_dir(&db).expect("store directory");
    let (data, index) = empty_store();
    fs::write(db.join("data.mkv"), data).expect("write data.mkv");
    fs::write(db.join("index.mkv"), index).expect("write index.mkv");
    let mut store = OpenOptions::new().open(&db).expect("open the empty store");
    assert!(!store.recovery().index_rebuilt, "a cleanly closed empty store was rebuilt");
    let mut run = Run {
        tmp,
        model: Model::new(),
        held: Vec::new(),
        salt: 0,
        bulks: 0,
        step: 0,
        dirty: false,
    };
    let mut b = Bytes(input);
    while let Some(code) = b.next() {
        run.step += 1;
        match run.write_op(&store, code, &mut b) {
            Some(keys) if keys.is_empty() => run.check_all(&store, "compact"),
            Some(keys) => {
                // What was just written reads back at once.
                for k in keys {
                    let got = store.get(&k).expect("get");
                    let want = run.model.get(&k).map(Vec::as_slice);
                    assert_eq!(got.as_deref(), want, "{}", run.what("read back"));
                }
            }
            None => store = run.other_op(store, code, &mut b),
        }
        run.check_held();
    }
    run.check_all(&store, "end");
    let report = store.verify().expect("verify");
    assert!(report.is_ok(), "verify at the end: {:?}", report.problems);
    let store = run.reopen(store, false);
    run.check_all(&store, "clean reopen at the end");
    drop(store);
    run.check_held();
}

// ---- open_live ----------------------------------------------------------------------------

/// Word numbers of the live page (`live.mkv`, DESIGN.md §4) that `open_live` can set right.
const LIVE_IDENTITY: std::ops::Range<usize> = 0..6; // magic, version, boot id, store id, session
const LIVE_SEQ: usize = 8;
const LIVE_KEY: usize = 9;
const LIVE_INODES: std::ops::Range<usize> = 10..12;

/// The live page's words from `input` (zero-filled to a page), with the words `mode` asks
/// for taken from `real` (the page a live writer wrote).
pub fn live_page(mode: u8, input: &[u8], real: &[u8]) -> Vec<u8> {
    let mut page = input.to_vec();
    page.resize(PAGE, 0);
    let take = |page: &mut Vec<u8>, words: std::ops::Range<usize>| {
        page[words.start * 8..words.end * 8].copy_from_slice(&real[words.start * 8..words.end * 8]);
    };
    if mode & 1 != 0 {
        take(&mut page, LIVE_IDENTITY);
    }
    if mode & 2 != 0 {
        take(&mut page, LIVE_INODES);
    }
    if mode & 4 != 0 {
        let seq = get_u64(&page, LIVE_SEQ * 8) & !1;
        put_u64(&mut page, LIVE_SEQ * 8, seq);
    }
    if mode & 8 != 0 {
        take(&mut page, LIVE_KEY..LIVE_KEY + 1);
    }
    page
}

/// `open_live`: a live writer on the base store, and arbitrary bytes written over its live
/// page (mode bits 0–3 set the identity, the inodes, an even sequence number and the
/// writer's key right, so mutations get past those checks; bit 4 `verify_checksums`).
/// A read-only open beside it follows the page, reads alone, or is `Locked`; it never
/// panics, and reads give errors or values once written for the key. After a new writer
/// session rewrites the page, an open follower sees that writer's writes. The page never
/// changes what the writer stores.
pub fn open_live(input: &[u8]) {
    use std::os::unix::fs::FileExt;
    let Some((&mode, rest)) = input.split_first() else { return };
    let verify = mode & 0x10 != 0;
    let (base, ever) = base_model();
    let tmp = scratch();
    let db = tmp.path().join("db");
    fs::create_dir(&db).expect("store directory");
    let mut data = BASE_DATA.to_vec();
    data.resize(BASE_DATA_LEN, 0);
    fs::write(db.join("data.mkv"), &data).expect("write data.mkv");
    let writer = open(&db, false, verify).expect("a writable open of a sound log");
    let live = db.join("live.mkv");
    let real = fs::read(&live).expect("the writer's live page");
    let page = live_page(mode, rest, &real);
    let file = fs::OpenOptions::new().write(true).open(&live).expect("open live.mkv");
    file.write_all_at(&page, 0).expect("write over the live page");

    let reader = OpenOptions::new()
        .read_only(true)
        .verify_checksums(verify)
        .attach_wait(std::time::Duration::from_millis(5))
        .open(&db);
    let reader = match reader {
        Ok(r) => Some(r),
        Err(Error::Locked { .. }) => None,
        Err(e) => {
            expect_damage(&e, "read-only open beside a writer with a damaged page");
            None
        }
    };
    if let Some(r) = &reader {
        read_damaged(r, &ever, verify);
        let _ = r.len();
    }
    // The writer's own data is untouched by its page.
    writer.put(b"fuzz:new", b"W1").expect("put beside a damaged page");
    writer.sync().expect("sync");
    if let Some(r) = &reader {
        read_damaged(r, &ever_with(&ever, b"fuzz:new", b"W1"), verify);
    }
    writer.close().expect("close");
    // A new session rewrites the page: an open follower moves to it.
    let writer = open(&db, false, verify).expect("reopen");
    writer.put(b"fuzz:new", b"W2").expect("put");
    writer.sync().expect("sync");
    if let Some(r) = &reader {
        let got = r.get(b"fuzz:new").expect("a follower of a sound page");
        assert_eq!(got.as_deref(), Some(&b"W2"[..]), "the follower missed the new session");
    }
    drop(reader);
    let mut want = base;
    want.insert(b"fuzz:new".to_vec(), b"W2".to_vec());
    assert!(sound_contents(&writer, "after a damaged page") == want, "the page changed the data");
}

fn ever_with(
    ever: &BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>>,
    k: &[u8],
    v: &[u8],
) -> BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> {
    let mut ever = ever.clone();
    ever.entry(k.to_vec()).or_default().insert(v.to_vec());
    ever
}
