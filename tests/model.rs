//! Guards the store's behaviour against a `HashMap` model: random sequences of put, delete,
//! batch, get, sync, clean reopen and simulated process crash must agree with the model at
//! every step.

use std::collections::HashMap;

use mapkv::{Batch, OpenOptions, Store};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u16),
    Delete(u8),
    /// `Store::write` of these operations, applied to the model in order.
    Batch(Vec<BatchOp>),
    Get(u8),
    Sync,
    Reopen,
    Crash,
    ReadOnlyCheck,
}

#[derive(Clone, Debug)]
enum BatchOp {
    Put(u8, u16),
    Delete(u8),
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Self {
        // Few distinct keys, so overwrites and deletes of existing keys are common.
        let key = u8::arbitrary(g) % 48;
        match u8::arbitrary(g) % 23 {
            0..=8 => Op::Put(key, u16::arbitrary(g) % 3000),
            9..=11 => Op::Delete(key),
            12..=15 => Op::Get(key),
            16 => Op::Sync,
            17 => Op::Reopen,
            18 => Op::Crash,
            19 => Op::ReadOnlyCheck,
            _ => Op::Batch(arbitrary_batch(g)),
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        match self {
            Op::Batch(ops) => Box::new(ops.shrink().map(Op::Batch)),
            _ => Box::new(std::iter::empty()),
        }
    }
}

/// A batch of 0 to 24 operations. Keys often repeat within the batch (a put after a put, a
/// delete after a put, a put after a delete), and deletes often name absent keys.
fn arbitrary_batch(g: &mut Gen) -> Vec<BatchOp> {
    let n = usize::from(u8::arbitrary(g) % 25);
    let mut ops: Vec<BatchOp> = Vec::with_capacity(n);
    for _ in 0..n {
        let key = match ops.last() {
            // Again one of the keys this batch already touched.
            Some(_) if u8::arbitrary(g) % 3 == 0 => {
                let i = usize::arbitrary(g) % ops.len();
                match ops[i] {
                    BatchOp::Put(k, _) | BatchOp::Delete(k) => k,
                }
            }
            // A key nothing ever puts, so deleting it deletes nothing.
            _ if u8::arbitrary(g) % 8 == 0 => ABSENT[usize::from(u8::arbitrary(g)) % 4],
            _ => u8::arbitrary(g) % 48,
        };
        ops.push(if u8::arbitrary(g) % 3 == 0 {
            BatchOp::Delete(key)
        } else {
            BatchOp::Put(key, u16::arbitrary(g) % 3000)
        });
    }
    ops
}

impl Arbitrary for BatchOp {
    fn arbitrary(g: &mut Gen) -> Self {
        let key = u8::arbitrary(g) % 48;
        if bool::arbitrary(g) {
            BatchOp::Put(key, u16::arbitrary(g) % 3000)
        } else {
            BatchOp::Delete(key)
        }
    }
}

/// Key ids that only batches delete, never put (their keys differ from those of 0..48).
const ABSENT: [u8; 4] = [201, 202, 203, 204];

fn key(k: u8) -> Vec<u8> {
    // Keys of varying length, including the empty key.
    vec![k; usize::from(k % 5) * 7]
}

fn value(k: u8, len: u16) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31) ^ k).collect()
}

fn check_all(store: &Store, model: &HashMap<Vec<u8>, Vec<u8>>) -> Result<(), String> {
    if store.len() != model.len() as u64 {
        return Err(format!("len {} but model has {}", store.len(), model.len()));
    }
    let reader = store.reader();
    for k in (0..48u8).chain(ABSENT) {
        let got = reader.get(key(k)).map_err(|e| e.to_string())?;
        if got != model.get(&key(k)).map(Vec::as_slice) {
            return Err(format!("key {k}: got {got:?}"));
        }
    }
    // The batched lookup answers exactly as single gets, in order (with a repeat and a
    // key never written).
    let keys: Vec<Vec<u8>> = (0..48u8).chain([3, 200]).map(key).collect();
    let many = reader.get_many(&keys).map_err(|e| e.to_string())?;
    for (k, got) in keys.iter().zip(&many) {
        if *got != model.get(k).map(Vec::as_slice) {
            return Err(format!("get_many for key {k:?}: got {got:?}"));
        }
    }
    if many.len() != keys.len() {
        return Err(format!("get_many returned {} answers for {} keys", many.len(), keys.len()));
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> TestResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let mut store = Some(Store::open(&path).expect("create"));
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for (n, op) in ops.into_iter().enumerate() {
        let s = store.as_ref().expect("open");
        let step = || format!("step {n}: {op:?}");
        match &op {
            Op::Put(k, len) => {
                s.put(key(*k), value(*k, *len)).expect("put");
                model.insert(key(*k), value(*k, *len));
            }
            Op::Delete(k) => {
                let existed = s.delete(key(*k)).expect("delete");
                if existed != model.remove(&key(*k)).is_some() {
                    return TestResult::error(format!("{}: delete said {existed}", step()));
                }
            }
            Op::Batch(ops) => {
                let mut batch = Batch::new();
                for op in ops {
                    match *op {
                        BatchOp::Put(k, len) => {
                            batch.put(key(k), value(k, len));
                            model.insert(key(k), value(k, len));
                        }
                        BatchOp::Delete(k) => {
                            batch.delete(key(k));
                            model.remove(&key(k));
                        }
                    }
                }
                if batch.len() != ops.len() {
                    return TestResult::error(format!("{}: batch.len() {}", step(), batch.len()));
                }
                s.write(batch).expect("write batch");
            }
            Op::Get(k) => {
                let got = s.get(key(*k)).expect("get");
                if got.as_deref() != model.get(&key(*k)).map(Vec::as_slice) {
                    return TestResult::error(format!("{}: got {got:?}", step()));
                }
            }
            Op::Sync => s.sync().expect("sync"),
            Op::Reopen | Op::Crash => {
                let old = store.take().expect("open");
                if matches!(op, Op::Crash) {
                    old.simulate_crash();
                } else {
                    old.close().expect("close");
                }
                let s = Store::open(&path).expect("reopen");
                if matches!(op, Op::Reopen) && !s.recovery().was_clean() {
                    return TestResult::error(format!(
                        "{}: clean reopen rebuilt the index",
                        step()
                    ));
                }
                store = Some(s);
            }
            Op::ReadOnlyCheck => {
                // A read-only view of the same state, after a clean close.
                store.take().expect("open").close().expect("close");
                let ro = OpenOptions::new()
                    .read_only(true)
                    .verify_checksums(true)
                    .open(&path)
                    .expect("read-only open");
                if let Err(e) = check_all(&ro, &model) {
                    return TestResult::error(format!("{} (read-only): {e}", step()));
                }
                if !matches!(ro.put(b"x", b"y"), Err(mapkv::Error::ReadOnly)) {
                    return TestResult::error("read-only handle accepted a put");
                }
                drop(ro);
                store = Some(Store::open(&path).expect("reopen"));
            }
        }
        if let Err(e) = check_all(store.as_ref().expect("open"), &model) {
            return TestResult::error(format!("{}: {e}", step()));
        }
    }
    TestResult::passed()
}

#[test]
fn store_agrees_with_a_hashmap() {
    let tests = std::env::var("MAPKV_QUICKCHECK_TESTS").ok().and_then(|s| s.parse().ok());
    QuickCheck::new()
        .tests(tests.unwrap_or(60))
        .rng(Gen::new(200))
        .quickcheck(run as fn(Vec<Op>) -> TestResult);
}

#[test]
fn long_sequence_with_growth_agrees_with_the_model() {
    // Enough data to grow the log past several doublings and the index past 1024 slots.
    let mut g = Gen::new(400);
    let mut ops: Vec<Op> = (0..3000).map(|_| Op::arbitrary(&mut g)).collect();
    ops.extend((0..2000).map(|i| Op::Put((i % 48) as u8, 2999)));
    assert!(!run(ops).is_failure(), "see the message above");
}

/// Opens a crashed store twice, checking it with `check` each time: resumed (this boot),
/// then rebuilt from the whole log (as after a restart); crashes it again after each.
fn resumed_then_rebuilt(path: &std::path::Path, check: impl Fn(&Store, &str)) {
    for reboot in [false, true] {
        if reboot {
            mapkv::testing::adopt_page(path, true).expect("reboot the page");
        }
        let store = Store::open(path).expect("recover");
        let r = store.recovery();
        assert_eq!((r.index_rebuilt, r.resumed_from.is_some()), (reboot, !reboot), "{r:?}");
        assert_eq!(store.recovery().cut, None);
        check(&store, if reboot { "rebuilt after the crash" } else { "resumed after the crash" });
        store.simulate_crash();
    }
}

#[test]
fn many_distinct_keys_survive_crash_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let store = Store::open(&path).expect("create");
    for i in 0..20_000u32 {
        store.put(i.to_le_bytes(), i.to_be_bytes()).expect("put");
    }
    for i in (0..20_000u32).step_by(3) {
        assert!(store.delete(i.to_le_bytes()).expect("delete"));
    }
    store.simulate_crash();
    resumed_then_rebuilt(&path, |store, _| {
        let live = (0..20_000u32).filter(|i| i % 3 != 0).count() as u64;
        assert_eq!(store.len(), live);
        for i in 0..20_000u32 {
            let got = store.get(i.to_le_bytes()).expect("get");
            let want = (i % 3 != 0).then(|| i.to_be_bytes());
            assert_eq!(got.as_deref(), want.as_ref().map(|w| &w[..]), "key {i}");
        }
    });
    let live = (0..20_000u32).filter(|i| i % 3 != 0).count() as u64;
    let store = Store::open(&path).expect("recover");
    store.close().expect("close");
    let store = Store::open(&path).expect("clean reopen");
    assert!(!store.recovery().index_rebuilt, "a clean close must not need a rebuild");
    assert_eq!(store.len(), live);
}

#[test]
fn many_distinct_keys_in_batches_survive_crash_and_reopen() {
    // Batches of very different sizes (one larger than the whole first index) over 20,000
    // keys: the index grows before batches several times, and the log grows too.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let store = Store::open(&path).expect("create");
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let (mut i, mut size) = (0u32, 5000u32);
    while i < 20_000 {
        let mut batch = Batch::new();
        for j in i..(i + size).min(20_000) {
            let (k, v) = (j.to_le_bytes(), j.to_be_bytes().repeat(1 + j as usize % 7));
            batch.put(k, &v);
            model.insert(k.to_vec(), v);
        }
        store.write(batch).expect("write batch");
        assert_eq!(store.len(), model.len() as u64, "after the batch at {i}");
        i += size;
        size = size % 487 + 1;
    }
    // Deletes in batches: every third key, with deletes of absent keys, and keys put and
    // deleted (or deleted and put again) within the same batch.
    for chunk in (0..20_000u32).step_by(3).collect::<Vec<_>>().chunks(300) {
        let mut batch = Batch::new();
        for &j in chunk {
            batch.delete(j.to_le_bytes()).delete((j + 1_000_000).to_le_bytes());
            model.remove(&j.to_le_bytes()[..]);
            let fresh = (j + 2_000_000).to_le_bytes();
            batch.put(fresh, b"brief").delete(fresh);
            if j % 2 == 0 {
                batch
                    .put(j.to_le_bytes(), b"gone")
                    .delete(j.to_le_bytes())
                    .put(j.to_le_bytes(), b"back");
                model.insert(j.to_le_bytes().to_vec(), b"back".to_vec());
            }
        }
        store.write(batch).expect("write batch");
    }
    let check = |store: &Store, when: &str| {
        assert_eq!(store.len(), model.len() as u64, "{when}");
        let reader = store.reader();
        for j in (0..20_000u32).chain(1_000_000..1_000_010).chain(2_000_000..2_020_000) {
            let got = reader.get(j.to_le_bytes()).expect("get");
            assert_eq!(got, model.get(&j.to_le_bytes()[..]).map(Vec::as_slice), "{when}: key {j}");
        }
    };
    check(&store, "before the crash");
    let index_len = std::fs::metadata(path.join("index.mkv")).expect("index").len();
    assert!(index_len > 4096 + 16 * 16_384, "the index never grew: {index_len} bytes");
    store.simulate_crash();
    resumed_then_rebuilt(&path, check);
    let store = Store::open(&path).expect("recover");
    store.close().expect("close");
    let store = Store::open(&path).expect("clean reopen");
    assert!(!store.recovery().index_rebuilt, "a clean close must not need a rebuild");
    check(&store, "after a clean reopen");
}
