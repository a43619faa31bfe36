//! Stats, sync policies, group commit and automatic compaction.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mapkv::testing::{Observer, Op};
use mapkv::{Batch, OpenOptions, Store, SyncPolicy};

/// Counts flushes of the data file; optionally makes each one slow, as a disk would.
#[derive(Default)]
struct Flushes {
    count: AtomicU64,
    delay_ms: u64,
}

impl Observer for Flushes {
    fn before(&self, op: Op<'_>) -> io::Result<()> {
        if let Op::Flush { path, .. } = op
            && path.ends_with("data.mkv")
        {
            self.count.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(self.delay_ms));
        }
        Ok(())
    }
}

fn flushes(f: &Flushes) -> u64 {
    f.count.load(Ordering::SeqCst)
}

/// Length of a record with a 6-byte key and a 100-byte value (24-byte header, key padded
/// to 8, value padded to 8).
const REC: u64 = 24 + 8 + 104;

#[test]
fn stats_count_keys_records_and_garbage_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let s = store.stats();
    assert_eq!((s.live_keys, s.records, s.log_bytes, s.garbage_bytes), (0, 0, 0, 0));
    assert!(!s.recovered_at_open);
    for i in 0..100u32 {
        store.put(format!("k{i:05}"), [1u8; 100]).expect("put");
    }
    for i in 0..50u32 {
        store.put(format!("k{i:05}"), [2u8; 100]).expect("overwrite");
    }
    let s = store.stats();
    assert_eq!((s.live_keys, s.records), (100, 150));
    assert_eq!(s.log_bytes, 150 * REC);
    assert_eq!(s.garbage_bytes, 50 * REC);
    assert!((s.garbage_ratio - 1.0 / 3.0).abs() < 1e-9, "{}", s.garbage_ratio);
    assert!(s.index_load_factor > 0.0 && s.index_load_factor < 0.7);
    assert!(s.durable_end < s.log_end);
    store.sync().expect("sync");
    assert_eq!(store.stats().durable_end, store.stats().log_end);
    store.close().expect("close");

    let store = Store::open(dir.path()).expect("clean reopen");
    let again = store.stats();
    assert!(!again.recovered_at_open);
    assert_eq!((again.records, again.garbage_bytes), (150, 50 * REC), "counts not persisted");
    store.delete("k00000").expect("delete");
    let s = store.stats();
    // The deleted record and its tombstone (24 + 8 bytes) are garbage too.
    assert_eq!(s.garbage_bytes, 51 * REC + 32);
    store.simulate_crash();

    let store = Store::open(dir.path()).expect("reopen after a crash");
    let rebuilt = store.stats();
    assert!(rebuilt.recovered_at_open);
    assert_eq!(
        (rebuilt.live_keys, rebuilt.records, rebuilt.garbage_bytes),
        (99, 151, s.garbage_bytes)
    );
    let c = store.compact().expect("compact");
    let after = store.stats();
    assert_eq!((after.garbage_bytes, after.records, after.compactions), (0, 99, 1));
    assert_eq!(after.log_bytes, c.log_after, "the same unit as Stats::log_bytes");
    assert_eq!(rebuilt.log_bytes, c.log_before);
}

#[test]
fn every_write_makes_each_write_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = Arc::new(Flushes::default());
    let store = OpenOptions::new()
        .observer(f.clone())
        .sync_policy(SyncPolicy::EveryWrite)
        .open(dir.path())
        .expect("open");
    let before = flushes(&f);
    for i in 0..20u32 {
        store.put(i.to_le_bytes(), b"v").expect("put");
        let s = store.stats();
        assert_eq!(s.durable_end, s.log_end, "put {i} returned before it was durable");
    }
    let mut b = Batch::new();
    b.put("x", "1").put("y", "2");
    store.write(b).expect("batch");
    assert!(store.delete("x").expect("delete"));
    let s = store.stats();
    assert_eq!(s.durable_end, s.log_end);
    assert_eq!(flushes(&f) - before, 22, "one flush per write");
}

#[test]
fn every_n_bytes_syncs_when_that_much_was_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = Arc::new(Flushes::default());
    let store = OpenOptions::new()
        .observer(f.clone())
        .sync_policy(SyncPolicy::EveryBytes(10 * REC))
        .open(dir.path())
        .expect("open");
    let before = flushes(&f);
    for i in 0..95u32 {
        store.put(format!("k{i:05}"), [0u8; 100]).expect("put");
    }
    assert_eq!(flushes(&f) - before, 9, "95 records of {REC} bytes, a sync every 10");
    let s = store.stats();
    assert_eq!(s.log_end - s.durable_end, 5 * REC);
}

#[test]
fn interval_syncs_in_the_background() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OpenOptions::new()
        .sync_policy(SyncPolicy::Interval(Duration::from_millis(20)))
        .open(dir.path())
        .expect("open");
    store.put("k", "v").expect("put");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = store.stats();
        if s.durable_end == s.log_end {
            break;
        }
        assert!(Instant::now() < deadline, "the background thread never synced");
        std::thread::sleep(Duration::from_millis(5));
    }
    store.close().expect("close joins the thread");
    assert_eq!(
        Store::open(dir.path()).expect("reopen").get("k").expect("get").as_deref(),
        Some(&b"v"[..])
    );
}

/// Once armed, holds the first flush of the data file until released; counts flushes.
#[derive(Default)]
struct HeldFlush {
    armed: AtomicBool,
    count: AtomicU64,
    held: AtomicBool,
    release: AtomicBool,
}

impl Observer for HeldFlush {
    fn before(&self, op: Op<'_>) -> io::Result<()> {
        if let Op::Flush { path, .. } = op
            && path.ends_with("data.mkv")
            && self.armed.load(Ordering::SeqCst)
            && self.count.fetch_add(1, Ordering::SeqCst) == 0
        {
            self.held.store(true, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(20);
            while !self.release.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    }
}

/// Group commit: while one sync's flush is under way, other threads can still write, and
/// the syncs they then call share a single flush.
#[test]
fn syncs_waiting_on_a_flush_share_the_next_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = Arc::new(HeldFlush::default());
    let store = OpenOptions::new().observer(f.clone()).open(dir.path()).expect("open");
    f.armed.store(true, Ordering::SeqCst);
    std::thread::scope(|s| {
        s.spawn(|| {
            store.put("a", "1").expect("put");
            store.sync().expect("sync a");
        });
        while !f.held.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let mut syncs = Vec::new();
        for k in ["b", "c", "d"] {
            let (store, tx) = (&store, tx.clone());
            syncs.push(s.spawn(move || {
                store.put(k, "2").expect("put");
                tx.send(()).expect("send");
                store.sync().expect("sync");
                let s = store.stats();
                assert_eq!(
                    s.durable_end, s.log_end,
                    "{k}: sync returned before its put was durable"
                );
            }));
        }
        for _ in 0..3 {
            let put = rx.recv_timeout(Duration::from_secs(10));
            assert!(put.is_ok(), "a put waited for another thread's flush");
        }
        // Let the three reach their syncs, then let the first flush finish.
        std::thread::sleep(Duration::from_millis(50));
        f.release.store(true, Ordering::SeqCst);
        for t in syncs {
            t.join().expect("sync thread");
        }
    });
    assert_eq!(f.count.load(Ordering::SeqCst), 2, "three waiting syncs did not share one flush");
}

#[test]
fn garbage_past_the_ratio_is_compacted_automatically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = OpenOptions::new().auto_compact(Some(0.5)).open(dir.path()).expect("open");
    // 4 MiB of overwrites of 100 keys: almost everything is garbage.
    for round in 0..40u32 {
        for i in 0..100u32 {
            store.put(format!("k{i}"), vec![round as u8; 1000]).expect("put");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.stats().compactions == 0 {
        assert!(Instant::now() < deadline, "no automatic compaction: {:?}", store.stats());
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = store.stats();
    assert!(s.garbage_ratio < 0.5, "{s:?}");
    for i in 0..100u32 {
        assert_eq!(store.get(format!("k{i}")).expect("get").as_deref(), Some(&[39u8; 1000][..]));
    }
}
