//! Snapshots and iteration: a snapshot never sees later writes, across overwrites, deletes,
//! batches and growth of both files; iteration yields every live key once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

use mapkv::{Batch, Store};
use quickcheck::{Arbitrary, Gen, QuickCheck};

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

fn collect(snap: &mapkv::Snapshot<'_>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    for item in snap.iter() {
        let (k, v) = item.expect("iterate");
        assert!(out.insert(k.to_vec(), v.to_vec()).is_none(), "key {k:?} yielded twice");
    }
    out
}

#[test]
fn a_snapshot_never_sees_later_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    store.put("a", "1").expect("put");
    store.put("b", "2").expect("put");
    let snap = store.snapshot();
    let held = snap.get("a").expect("get").expect("present");
    store.put("a", "3").expect("put");
    store.delete("b").expect("delete");
    store.put("c", "4").expect("put");
    store.put("b", "5").expect("put again after the delete");
    assert_eq!(snap.get("a").expect("get"), Some(&b"1"[..]));
    assert_eq!(snap.get("b").expect("get"), Some(&b"2"[..]));
    assert_eq!(snap.get("c").expect("get"), None);
    assert_eq!(held, b"1");
    let want: BTreeMap<_, _> =
        [(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())].into();
    assert_eq!(collect(&snap), want);
    let now: BTreeMap<_, _> = store
        .iter()
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<mapkv::Result<_>>()
        .expect("iterate");
    let want_now: BTreeMap<_, _> = [
        (b"a".to_vec(), b"3".to_vec()),
        (b"b".to_vec(), b"5".to_vec()),
        (b"c".to_vec(), b"4".to_vec()),
    ]
    .into();
    assert_eq!(now, want_now);
}

#[test]
fn a_snapshot_held_across_growth_reads_its_old_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    for i in 0..300 {
        store.put(key(i), format!("old-{i}")).expect("put");
    }
    let snap = store.snapshot();
    let borrowed: Vec<&[u8]> =
        (0..300).map(|i| snap.get(key(i)).expect("get").expect("present")).collect();
    // Grow the index several times and the log past its first megabyte, overwrite and
    // delete every old key, some in batches.
    for i in 300..20_000 {
        store.put(key(i), vec![i as u8; 100]).expect("put");
    }
    let mut batch = Batch::new();
    for i in 0..300 {
        if i % 2 == 0 {
            batch.delete(key(i));
        } else {
            batch.put(key(i), format!("new-{i}"));
        }
    }
    store.write(batch).expect("batch");
    for i in (1..300).step_by(4) {
        store.delete(key(i)).expect("delete");
    }
    for (i, v) in borrowed.iter().enumerate() {
        assert_eq!(*v, format!("old-{i}").as_bytes(), "borrowed value {i} changed");
        let again = snap.get(key(i as u32)).expect("get");
        assert_eq!(again, Some(format!("old-{i}").as_bytes()), "snapshot lost key {i}");
    }
    assert_eq!(snap.get(key(5000)).expect("get"), None, "a later key is visible");
    let all = collect(&snap);
    assert_eq!(all.len(), 300);
    assert_eq!(store.iter().count() as u64, store.len());
}

#[test]
fn iteration_yields_every_live_key_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let mut model = HashMap::new();
    for i in 0..5000u32 {
        let k = key(i % 1700);
        if i % 7 == 3 {
            store.delete(&k).expect("delete");
            model.remove(&k);
        } else {
            store.put(&k, i.to_le_bytes()).expect("put");
            model.insert(k, i.to_le_bytes().to_vec());
        }
    }
    let got: HashMap<Vec<u8>, Vec<u8>> = store
        .iter()
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<mapkv::Result<_>>()
        .expect("iterate");
    assert_eq!(got, model);
    // Iterated values are owned handles: they outlive the iterator and the store.
    let first = store.iter().next().expect("one").expect("ok");
    drop(store);
    assert_eq!(model.get(&first.0.to_vec()), Some(&first.1.to_vec()));
}

/// Batches move value between accounts, keeping the total fixed; every snapshot taken
/// meanwhile, by get or by iteration, must see the same total.
#[test]
fn snapshots_taken_during_batches_are_consistent() {
    const ACCOUNTS: u32 = 64;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let mut init = Batch::new();
    for a in 0..ACCOUNTS {
        init.put(key(a), 1000u64.to_le_bytes());
    }
    store.write(init).expect("init");
    let total = u64::from(ACCOUNTS) * 1000;
    let num = |v: &[u8]| u64::from_le_bytes(v.try_into().expect("8 bytes"));
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut x = 7u64;
            for round in 0..4000u32 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let (from, to) = ((x >> 33) as u32 % ACCOUNTS, (x >> 13) as u32 % ACCOUNTS);
                let snap = store.snapshot();
                let f = num(snap.get(key(from)).expect("get").expect("account"));
                let t = num(snap.get(key(to)).expect("get").expect("account"));
                let amount = x % 10;
                if from == to || f < amount {
                    continue;
                }
                let mut b = Batch::new();
                b.put(key(from), (f - amount).to_le_bytes())
                    .put(key(to), (t + amount).to_le_bytes());
                // Filler keys make the log and the index grow under the readers.
                b.put(format!("filler-{round}"), [0u8; 200]);
                drop(snap);
                store.write(b).expect("batch");
            }
            done.store(true, Ordering::Release);
        });
        for _ in 0..2 {
            s.spawn(|| {
                let mut checks = 0u32;
                while !done.load(Ordering::Acquire) || checks < 10 {
                    let snap = store.snapshot();
                    let by_get: u64 = (0..ACCOUNTS)
                        .map(|a| num(snap.get(key(a)).expect("get").expect("account")))
                        .sum();
                    assert_eq!(by_get, total, "a snapshot saw part of a batch (get)");
                    let by_iter: u64 = snap
                        .iter()
                        .map(|r| r.expect("iterate"))
                        .filter(|(k, _)| k.starts_with(b"key-"))
                        .map(|(_, v)| num(v))
                        .sum();
                    assert_eq!(by_iter, total, "a snapshot saw part of a batch (iter)");
                    checks += 1;
                }
            });
        }
    });
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    Batch(Vec<(u8, Option<u8>)>),
    Snapshot,
    Grow(u16),
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Self {
        match u8::arbitrary(g) % 10 {
            0..=3 => Op::Put(u8::arbitrary(g) % 40, u8::arbitrary(g)),
            4 | 5 => Op::Delete(u8::arbitrary(g) % 40),
            6 => Op::Batch(
                (0..u8::arbitrary(g) % 12)
                    .map(|_| (u8::arbitrary(g) % 40, Option::<u8>::arbitrary(g)))
                    .collect(),
            ),
            7 | 8 => Op::Snapshot,
            _ => Op::Grow(u16::arbitrary(g) % 1500),
        }
    }
}

/// Random histories: every snapshot, checked at the end, equals the model as it was when
/// the snapshot was taken, by get and by iteration.
fn snapshots_match_their_models(ops: Vec<Op>) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut snaps = Vec::new();
    let k = |i: u8| vec![b'k', i];
    let mut filler = 0u32;
    for op in ops {
        match op {
            Op::Put(i, v) => {
                store.put(k(i), [v; 3]).expect("put");
                model.insert(k(i), vec![v; 3]);
            }
            Op::Delete(i) => {
                assert_eq!(store.delete(k(i)).expect("delete"), model.remove(&k(i)).is_some());
            }
            Op::Batch(ops) => {
                let mut b = Batch::new();
                for (i, v) in ops {
                    match v {
                        Some(v) => {
                            b.put(k(i), [v; 2]);
                            model.insert(k(i), vec![v; 2]);
                        }
                        None => {
                            b.delete(k(i));
                            model.remove(&k(i));
                        }
                    }
                }
                store.write(b).expect("write");
            }
            Op::Snapshot => snaps.push((store.snapshot(), model.clone())),
            Op::Grow(n) => {
                // Many short-lived keys: the index grows (dropping tombstones) and so
                // does the log.
                for _ in 0..n {
                    filler += 1;
                    store.put(filler.to_le_bytes(), [1u8; 64]).expect("put");
                    store.delete(filler.to_le_bytes()).expect("delete");
                }
            }
        }
    }
    snaps.iter().all(|(snap, want)| {
        let by_get =
            (0..40).all(|i| snap.get(k(i)).expect("get") == want.get(&k(i)).map(|v| &v[..]));
        let iterated: BTreeMap<Vec<u8>, Vec<u8>> =
            collect(snap).into_iter().filter(|(key, _)| key.len() == 2).collect();
        by_get && &iterated == want
    })
}

#[test]
fn random_histories_keep_every_snapshot_intact() {
    let cases = std::env::var("MAPKV_SNAPSHOT_CASES").ok().and_then(|v| v.parse().ok());
    QuickCheck::new()
        .tests(cases.unwrap_or(60))
        .quickcheck(snapshots_match_their_models as fn(Vec<Op>) -> bool);
}
