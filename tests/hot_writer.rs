//! Compaction under writers that do not stop (DESIGN.md §4, "Compaction"): the catch-up
//! copies only each key's newest record, the pause's work is bounded whatever the writers
//! do (compaction gives up rather than make them wait), timed syncs go on while an
//! automatic compaction runs, and dropping the store stops one cleanly. Work is counted,
//! not timed: the writes happen at named points of the compaction, through the test seam.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use mapkv::testing::{Observer, Op};
use mapkv::{Error, OpenOptions, Store, SyncPolicy};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// What the hook does when the compaction reaches its point (given the hook, to reach the
/// store through).
type Action = Box<dyn FnMut(&Hook) + Send>;

/// Runs an action whenever a compaction reaches the point named `at`; records whether a
/// compaction reached its swap (the rename of the new data file).
struct Hook {
    at: &'static str,
    store: OnceLock<Weak<Store>>,
    action: Mutex<Option<Action>>,
    swapped: AtomicBool,
}

impl Hook {
    fn new(at: &'static str, action: impl FnMut(&Hook) + Send + 'static) -> Arc<Self> {
        Arc::new(Self {
            at,
            store: OnceLock::new(),
            action: Mutex::new(Some(Box::new(action))),
            swapped: AtomicBool::new(false),
        })
    }

    /// Opens the store at `dir` with this hook and `opts`' other settings.
    fn open(self: &Arc<Self>, dir: &Path, opts: &mut OpenOptions) -> Arc<Store> {
        let store = Arc::new(opts.observer(self.clone()).open(dir).expect("open"));
        self.store.set(Arc::downgrade(&store)).expect("one store per hook");
        store
    }

    fn disarm(&self) {
        *self.action.lock().expect("action") = None;
    }

    /// The store, for an action that writes (held only while it does).
    fn store(&self) -> Arc<Store> {
        self.store.get().and_then(Weak::upgrade).expect("the store is open")
    }
}

impl Observer for Hook {
    fn before(&self, op: Op<'_>) -> std::io::Result<()> {
        match op {
            Op::Point { name } if name == self.at => {
                if let Some(action) = self.action.lock().expect("action").as_mut() {
                    action(self);
                }
            }
            Op::Rename { from, .. } if from.ends_with("data.mkv.compact") => {
                self.swapped.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
        Ok(())
    }
}

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

fn contents(store: &Store) -> Model {
    store
        .iter()
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<mapkv::Result<_>>()
        .expect("iterate")
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .filter(|n| n.contains("compact"))
        .collect()
}

/// `n` keys of 100 bytes, then as many again overwritten: garbage ratio about 0.5.
fn fill(store: &Store, model: &Mutex<Model>, n: u32) {
    for round in 0..2u8 {
        for i in 0..n {
            let v = vec![round; 100];
            store.put(key(i), &v).expect("put");
            model.lock().expect("model").insert(key(i), v);
        }
    }
}

#[test]
fn catch_up_copies_only_the_newest_version_of_each_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = Arc::new(Mutex::new(Model::new()));
    let m = Arc::clone(&model);
    // While the compaction catches up: 5,000 overwrites of one key (5 MB, far more than the
    // pause may take), 10 copied keys deleted, 10 new keys of which 5 deleted again, and a
    // key put and deleted.
    let hook = Hook::new("compaction copied the snapshot", move |hook| {
        let (store, mut m) = (hook.store(), m.lock().expect("model"));
        for n in 0..5000u32 {
            let v = format!("hot-{n}-{}", "h".repeat(1000)).into_bytes();
            store.put(key(0), &v).expect("put");
            m.insert(key(0), v);
        }
        for i in 1..=10 {
            assert!(store.delete(key(i)).expect("delete"));
            m.remove(&key(i));
        }
        for i in 100_000..100_010 {
            store.put(key(i), b"new").expect("put");
            m.insert(key(i), b"new".to_vec());
        }
        for i in 100_000..100_005 {
            store.delete(key(i)).expect("delete");
            m.remove(&key(i));
        }
        store.put(b"ghost", b"boo").expect("put");
        store.delete(b"ghost").expect("delete");
    });
    let store = hook.open(dir.path(), &mut OpenOptions::new());
    fill(&store, &model, 2000);
    let stats = store.compact().expect("compact");
    hook.disarm();
    // The hot key once, 10 tombstones that shadow copied puts, 5 new keys: nothing else
    // (no superseded version, no tombstone of a key the new files never held).
    assert_eq!(stats.caught_up, 16, "{stats:?}");
    assert!(stats.pause_log_bytes <= 256 << 10, "{stats:?}");
    let after = store.stats();
    assert!(
        after.log_bytes <= 2 * (after.log_bytes - after.garbage_bytes),
        "log not within twice the live bytes: {after:?}"
    );
    let model = model.lock().expect("model").clone();
    assert_eq!(contents(&store), model);
    assert!(store.verify().expect("verify").is_ok());
    let store = Arc::into_inner(store).expect("one handle");
    store.close().expect("close");
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(contents(&store), model);
    store.simulate_crash();
    let store = Store::open(dir.path()).expect("reopen after crash");
    assert_eq!(contents(&store), model);
}

#[test]
fn writers_that_outrun_compaction_make_it_give_up_instead_of_waiting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = Arc::new(Mutex::new(Model::new()));
    // Each time the compaction is about to take the writer lock, more than the pause may
    // walk is written first, `outruns` times in all.
    let outruns = Arc::new(AtomicU32::new(u32::MAX));
    let (m, left) = (Arc::clone(&model), Arc::clone(&outruns));
    let written = Arc::new(AtomicU32::new(0));
    let w = Arc::clone(&written);
    let hook = Hook::new("compaction takes the writer lock", move |hook| {
        if left.load(Ordering::Relaxed) == 0 {
            return;
        }
        left.fetch_sub(1, Ordering::Relaxed);
        let (store, mut m) = (hook.store(), m.lock().expect("model"));
        for _ in 0..300 {
            let n = w.fetch_add(1, Ordering::Relaxed);
            let v = format!("{n}-{}", "o".repeat(1000)).into_bytes();
            store.put(key(n % 50), &v).expect("put");
            m.insert(key(n % 50), v);
        }
    });
    let store = hook.open(dir.path(), &mut OpenOptions::new());
    fill(&store, &model, 2000);
    let before = store.stats();
    let err = store.compact().expect_err("writers outran it every time");
    assert!(matches!(err, Error::CompactionOutrun { behind } if behind > 256 << 10), "{err}");
    assert!(!hook.swapped.load(Ordering::Relaxed), "it swapped after giving up");
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
    let tries = written.load(Ordering::Relaxed) / 300;
    assert!((2..=64).contains(&tries), "gave up after {tries} tries");
    assert_eq!(store.stats().compactions, before.compactions);
    let model_now = model.lock().expect("model").clone();
    assert_eq!(contents(&store), model_now);

    // Outrun twice only: it converges, and the pause walks no more than its bound.
    outruns.store(2, Ordering::Relaxed);
    let stats = store.compact().expect("compact");
    assert!(hook.swapped.load(Ordering::Relaxed));
    assert!(stats.pause_log_bytes <= 256 << 10, "{stats:?}");
    assert_eq!(outruns.load(Ordering::Relaxed), 0);
    let model = model.lock().expect("model").clone();
    assert_eq!(contents(&store), model);
    assert!(store.verify().expect("verify").is_ok());
}

/// A store whose automatic compaction starts at once: `fill` leaves garbage about half of
/// a log over 1 MiB before it is opened with the hook.
fn auto_compacting(hook: &Arc<Hook>, dir: &Path, sync: SyncPolicy) -> (Arc<Store>, Model) {
    let model = Mutex::new(Model::new());
    let store = Store::open(dir).expect("open");
    fill(&store, &model, 8000);
    store.close().expect("close");
    let opts = &mut OpenOptions::new();
    let store = hook.open(dir, opts.auto_compact(Some(0.4)).sync_policy(sync));
    (store, model.into_inner().expect("model"))
}

#[test]
fn timed_syncs_go_on_while_an_automatic_compaction_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (running_tx, running) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    // The automatic compaction stops at its point until the test has looked.
    let hook = Hook::new("compaction copied the snapshot", move |_| {
        let _ = running_tx.send(());
        let _ = go_rx.recv_timeout(Duration::from_secs(60));
    });
    let (store, _) =
        auto_compacting(&hook, dir.path(), SyncPolicy::Interval(Duration::from_millis(20)));
    running.recv_timeout(Duration::from_secs(60)).expect("an automatic compaction started");
    store.put(b"during", b"compaction").expect("put");
    let end = store.stats().log_end;
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.stats().durable_end < end && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let durable = store.stats().durable_end;
    go.send(()).expect("release the compaction");
    drop(go); // later compactions pass the point at once
    assert!(durable >= end, "no timed sync while compacting: durable {durable} < {end}");
}

#[test]
fn dropping_the_store_stops_its_background_compaction_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (running_tx, running) = mpsc::channel();
    // The compaction waits at its point long enough for the drop to ask it to stop.
    let hook = Hook::new("compaction copied the snapshot", move |_| {
        let _ = running_tx.send(());
        std::thread::sleep(Duration::from_secs(1));
    });
    let (store, model) = auto_compacting(&hook, dir.path(), SyncPolicy::Manual);
    running.recv_timeout(Duration::from_secs(60)).expect("an automatic compaction started");
    drop(Arc::into_inner(store).expect("one handle"));
    assert!(!hook.swapped.load(Ordering::Relaxed), "the compaction was not stopped");
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
    let store = Store::open(dir.path()).expect("reopen");
    assert!(store.recovery().was_clean(), "{:?}", store.recovery());
    assert_eq!(contents(&store), model);
    assert!(store.verify().expect("verify").is_ok());
}
