//! One adapter per engine, each in its fastest configuration that gives mapkv's guarantee
//! where the engine can give it:
//!
//! > a write that returned survives kill -9 (it is in the page cache); after `sync()` it
//! > survives power loss.
//!
//! Every write phase of the harness ends durable (a sync, a durable commit or a flush), so
//! the durable phases compare like with like. Only the "individual writes, no sync" phase,
//! the YCSB writes and the writer killed in the recovery test use each engine's non-durable
//! mode, and there two peers give less than mapkv (redb's
//! `Durability::None` and sled's buffered writes can lose returned writes on kill -9): see
//! `guarantee()` and README.md.
//!
//! RocksDB is optional: built only with `--features rocksdb` (needs clang/libclang for
//! bindgen, Debian `libclang-dev`; about 20 minutes to compile librocksdb-sys on 2 cores).
//!
//! The loops live inside each adapter (not behind a `dyn` call per key) so the per-key cost
//! is the engine's own.

use std::ops::Range;
use std::path::Path;

use crate::data::{Keys, ReadStats, Values, fold, read_loop};
use crate::results::Res;
use crate::ycsb::{self, Op};

/// The engines of this build, in report order: the default `--engines` list.
#[cfg(not(feature = "rocksdb"))]
pub const ENGINES: &[&str] = &["mapkv", "lmdb", "redb", "fjall", "sled", "candystore"];
/// The engines of this build, in report order: the default `--engines` list.
#[cfg(feature = "rocksdb")]
pub const ENGINES: &[&str] = &["mapkv", "lmdb", "redb", "fjall", "sled", "candystore", "rocksdb"];

/// Every engine the crate knows, built or not (report order and chart colours).
pub const ALL_ENGINES: &[&str] =
    &["mapkv", "lmdb", "redb", "fjall", "sled", "candystore", "rocksdb"];

/// Engines behind a cargo feature of the same name.
pub const OPTIONAL: &[&str] = &["rocksdb"];

/// Checks that `engine` is in this build; for an optional engine that is not, says which
/// cargo feature to rebuild with.
pub fn check(engine: &str) -> Res<()> {
    if ENGINES.contains(&engine) {
        Ok(())
    } else if OPTIONAL.contains(&engine) {
        Err(format!(
            "engine {engine:?} is not in this build: rebuild with `--features {engine}` \
             (cargo run --release --manifest-path bench-compare/Cargo.toml --features {engine} -- ...)"
        )
        .into())
    } else {
        Err(format!("unknown engine {engine:?}; known: {ENGINES:?} (optional: {OPTIONAL:?})")
            .into())
    }
}

pub trait Engine: Sync {
    /// One transaction (or batch) putting `keys[range]` with `vals`, durable on return.
    fn write_batch(&mut self, keys: &Keys, range: Range<usize>, vals: &Values) -> Res<()>;
    /// One put per key, each its own commit, in the engine's non-durable mode.
    fn put_each(&mut self, keys: &Keys, range: Range<usize>, vals: &Values) -> Res<()>;
    /// One put, durable on return.
    fn put_durable(&mut self, key: &[u8], val: &[u8]) -> Res<()>;
    /// Removes `keys[range]` (all present) in one transaction or batch, durable on return.
    fn remove_batch(&mut self, keys: &Keys, range: Range<usize>) -> Res<()>;
    /// Looks up `keys[i]` for each `i` in `order`; with `touch`, folds every byte read.
    fn read(&self, keys: &Keys, order: &[u32], touch: bool) -> ReadStats;
    /// Runs pre-generated YCSB operations (see `ycsb::run`); each read and each write is its
    /// own operation (LMDB and redb: one read transaction per read, one write transaction per
    /// write), writes in the engine's non-durable mode (as `put_each`).
    fn ycsb(&mut self, keys: &Keys, ops: &[Op], vals: &Values) -> Res<ReadStats>;
    /// mapkv only: (index rebuilt, records replayed) from the last open.
    fn recovery_report(&self) -> Option<(bool, u64)> {
        None
    }
    /// Largest value the engine stores (candystore: 65,471 bytes).
    fn max_value_len(&self) -> usize {
        usize::MAX
    }
    fn close(self: Box<Self>) -> Res<()>;
}

/// Configuration and guarantee of each engine, printed with the results.
pub fn guarantee(engine: &str) -> &'static str {
    match engine {
        "mapkv" => {
            "defaults. put = in the page cache (survives kill -9); durable = put + sync() (one msync). \
             A batch is one mapkv::Batch (atomic, slots prefetched) + one sync(). Reads via Store::reader() (zero-copy &[u8])."
        }
        "lmdb" => {
            "heed, map_size 64 GiB, MDB_NOSYNC for non-durable commits (commit pwrites pages and meta \
             into the page cache: survives kill -9); NOSYNC cleared for durable commits (default LMDB \
             commit: fdatasync data, then the meta page). One write txn per batch. Reads: one read txn per loop (zero-copy)."
        }
        "redb" => {
            "defaults (1 GiB cache). Durable phases: Durability::Immediate. Non-durable puts: \
             Durability::None, which is WEAKER than mapkv: such commits are not persisted until a later \
             Immediate commit and are lost on kill -9. redb has no page-cache-only durability level."
        }
        "fjall" => {
            "cache 1 GiB (default 32 MiB; raised to match redb and sled), otherwise defaults: \
             manual_journal_persist=false, so every insert/batch flushes the journal's userspace buffer \
             to the OS (PersistMode::Buffer: survives kill -9). Durable = db.persist(PersistMode::SyncAll) \
             (fsync of the journal). One WriteBatch per batch."
        }
        "sled" => {
            "defaults (1 GiB cache, flush_every_ms=500). Durable = db.flush() (fsync). Non-durable inserts \
             are WEAKER than mapkv: they sit in sled's userspace IO buffers for up to 500 ms and are lost \
             on kill -9 until flushed. One sled::Batch per batch."
        }
        "candystore" => {
            "defaults (background checkpoint every 5 s or 128 KiB). set() pwrites into the page cache \
             (survives kill -9, replayed at open); durable = set + flush() (fsync of index, data files, dir). \
             No batch API. Values are limited to 65,471 bytes, so no 1 MiB values."
        }
        "rocksdb" => {
            "rust-rocksdb (optional, --features rocksdb). Defaults (WAL on, 64 MiB memtable, 2 background \
             jobs) plus: block cache 1 GiB (as redb, fjall, sled), full bloom filter 10 bits/key (as fjall), \
             no compression (values are incompressible). Non-durable writes: WriteOptions::set_sync(false) \
             (each write appends to the WAL with write(2): in the page cache, survives kill -9, replayed at \
             open); durable = set_sync(true) (fdatasync of the WAL). One WriteBatch per batch. \
             Reads via get_pinned (no copy out of the block cache or memtable)."
        }
        _ => "",
    }
}

pub fn open(engine: &str, dir: &Path) -> Res<Box<dyn Engine>> {
    std::fs::create_dir_all(dir)?;
    Ok(match engine {
        "mapkv" => Box::new(MapKv { store: mapkv::Store::open(dir.join("store"))? }),
        "lmdb" => Box::new(Lmdb::open(dir)?),
        "redb" => Box::new(Redb::open(dir)?),
        "fjall" => Box::new(Fjall::open(dir)?),
        "sled" => Box::new(Sled { db: sled::Config::new().path(dir.join("sled")).open()? }),
        "candystore" => Box::new(Candy {
            db: candystore::CandyStore::open(dir.join("candy"), candystore::Config::default())?,
        }),
        #[cfg(feature = "rocksdb")]
        "rocksdb" => Box::new(Rocks::open(dir)?),
        other => {
            check(other)?;
            return Err(format!("unknown engine {other:?}").into());
        }
    })
}

#[inline(always)]
fn measure(v: &[u8], touch: bool) -> Option<(usize, u64)> {
    Some((v.len(), if touch { fold(v) } else { 0 }))
}

// ---- mapkv --------------------------------------------------------------------------------

struct MapKv {
    store: mapkv::Store,
}

impl Engine for MapKv {
    fn write_batch(&mut self, keys: &Keys, range: Range<usize>, vals: &Values) -> Res<()> {
        let mut batch = mapkv::Batch::new();
        for i in range {
            batch.put(keys.get(i), vals.get(i));
        }
        self.store.write(batch)?;
        Ok(self.store.sync()?)
    }
    fn put_each(&mut self, keys: &Keys, range: Range<usize>, vals: &Values) -> Res<()> {
        for i in range {
            self.store.put(keys.get(i), vals.get(i))?;
        }
        Ok(())
    }
    fn put_durable(&mut self, key: &[u8], val: &[u8]) -> Res<()> {
        self.store.put(key, val)?;
        Ok(self.store.sync()?)
    }
    fn remove_batch(&mut self, keys: &Keys, range: Range<usize>) -> Res<()> {
        let mut batch = mapkv::Batch::new();
        for i in range {
            batch.delete(keys.get(i));
        }
        self.store.write(batch)?;
        Ok(self.store.sync()?)
    }
    fn read(&self, keys: &Keys, order: &[u32], touch: bool) -> ReadStats {
        let reader = self.store.reader();
        read_loop(keys, order, |k| {
            reader.get(k).expect("mapkv get").and_then(|v| measure(v, touch))
        })
    }
    fn ycsb(&mut self, keys: &Keys, ops: &[Op], vals: &Values) -> Res<ReadStats> {
        let st = &self.store;
        ycsb::run(
            keys,
            ops,
            vals,
            |k, buf| Ok(st.get(k)?.and_then(|v| ycsb::seen(&v, buf))),
            |k, v| Ok(st.put(k, v)?),
        )
    }
    fn recovery_report(&self) -> Option<(bool, u64)> {
        let r = self.store.recovery();
        Some((r.index_rebuilt, r.records_replayed))
    }
    fn close(self: Box<Self>) -> Res<()> {
        Ok(self.store.close()?)
    }
}

// ---- LMDB (heed) --------------------------------------------------------------------------

struct Lmdb {
    env: heed::Env,
    db: heed::Database<'static, heed::types::Bytes, heed::types::Bytes>,
}

impl Lmdb {
    fn open(dir: &Path) -> Res<Self> {
        let path = dir.join("lmdb");
        std::fs::create_dir_all(&path)?;
        let mut opts = heed::EnvOpenOptions::new();
        opts.map_size(64 << 30).max_dbs(1);
        // SAFETY: NO_SYNC is "unsafe" only in that commits are not durable until the next
        // synced commit; the harness clears it for every durable commit.
        // Not WRITE_MAP: tried, it made durable commits 3-4x slower here (LMDB then msyncs
        // the map) and bulk loads no faster.
        unsafe { opts.flags(heed::EnvFlags::NO_SYNC) };
        // SAFETY: the directory is used by one process at a time (a writer child that the
        // harness kills, then the harness).
        let env = unsafe { opts.open(&path)? };
        // The unnamed database always exists: open it with a read transaction, so that
        // reopening an existing environment writes nothing.
        let rtxn = env.read_txn()?;
        let db = env
            .open_databases_and_commit(rtxn, |opener, rtxn| -> heed::Result<_> {
                let db = opener.open_database(rtxn, None)?;
                Ok(heed::CommitOrAbort::<_, ()>::Commit(db))
            })?
            .unwrap_commit()
            .ok_or("LMDB: no unnamed database")?;
        Ok(Lmdb { env, db })
    }

    /// Commits with LMDB's default, synced commit.
    fn commit_durable(&self, txn: heed::RwTxn<'_>) -> Res<()> {
        use heed::{EnvFlags, FlagSetMode};
        // SAFETY: only this thread writes or changes flags.
        unsafe { self.env.set_flags(EnvFlags::NO_SYNC, FlagSetMode::Disable)? };
        let r = txn.commit();
        // SAFETY: as above.
        unsafe { self.env.set_flags(EnvFlags::NO_SYNC, FlagSetMode::Enable)? };
        Ok(r?)
    }
}

impl Engine for Lmdb {
    fn write_batch(&mut self, keys: &Keys, range: Range<usize>, vals: &Values) -> Res<()> {
        let mut txn = self.env.write_txn()?;
        for i in range {
            self.db.put(&mut txn, keys.get(i), vals.get(i))?;
        }
        self.commit_durable(txn)
    }
    fn put_each(&mut self, keys: &Keys, range: Range<usize>, vals: &Values) -> Res<()> {
        for i in range {
            let mut txn = self.env.write_txn()?;
            self.db.put(&mut txn, keys.get(i), vals.get(i))?;
            txn.commit()?;
        }
        Ok(())
    }
    fn put_durable(&mut self, key: &[u8], val: &[u8]) -> Res<()> {
        let mut txn = self.env.write_txn()?;
        self.db.put(&mut txn, key, val)?;
        self.commit_durable(txn)
    }
    fn remove_batch(&mut self, keys: &Keys, range: Range<usize>) -> Res<()> {
        let mut txn = self.env.write_txn()?;
        for i in range {
            assert!(self.db.delete(&mut txn, keys.get(i))?);
        }
        self.commit_durable(txn)
    }
    fn read(&self, keys: &Keys, order: &[u32], touch: bool) -> ReadStats {
        let txn = self.env.read_txn().expect("lmdb read txn");
        read_loop(keys, order, |k| {
            self.db.get(&txn, k).expect("lmdb get").and_then(|v| measure(v, touch))
        })
    }
    fn ycsb(&mut self, keys: &Keys, ops: &[Op], vals: &Values) -> Res<ReadStats> {
        let (env, db) = (&self.env, self.db);
        ycsb::run(
            keys,
            ops,
            vals,
            |k, buf| {
                let txn = env.read_txn()?;
                Ok(db.get(&txn, k)?.and_then(|v| ycsb::seen(v, buf)))
            },
            |k, v| {
                let mut txn = env.write_txn()?;
                db.put(&mut txn, k, v)?;
                Ok(txn.commit()?)
            },
        )
    }
    fn close(self: Box<Self>) -> Res<()> {
        let Lmdb { env, db: _ } = *self;
        env.prepare_for_closing().wait();
        Ok(())
    }
}

// ---- redb ---------------------------------------------------------------------------------

const REDB_TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");

struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(dir: &Path) -> Res<Self> {
        let path = dir.join("db.redb");
        let existed = path.exists();
        let db = redb::Database::builder().create(&path)?;
        // Reopening an existing store writes nothing (the table was created with it).
        if !existed {
            let txn = db.begin_write()?;
            txn.open_table(REDB_TABLE)?;
            txn.commit()?;
        }
        Ok(Redb { db })
    }
}

impl Engine for Redb {
    fn write_batch(&mut self, keys: &Keys, range: Range<usize>, vals: &Values) -> Res<()> {
        let txn = self.db.begin_write()?; // Durability::Immediate is the default
        {
            let mut t = txn.open_table(REDB_TABLE)?;
            for i in range {
                t.insert(keys.get(i), vals.get(i))?;
            }
        }
        Ok(txn.commit()?)
    }
    fn put_each(&mut self, keys: &Keys, range: Range<usize>, vals: &Values) -> Res<()> {
        for i in range {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(redb::Durability::None)?;
            {
                let mut t = txn.open_table(REDB_TABLE)?;
                t.insert(keys.get(i), vals.get(i))?;
            }
            txn.commit()?;
        }
        Ok(())
    }
    fn put_durable(&mut self, key: &[u8], val: &[u8]) -> Res<()> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(REDB_TABLE)?;
            t.insert(key, val)?;
        }
        Ok(txn.commit()?)
    }
    fn remove_batch(&mut self, keys: &Keys, range: Range<usize>) -> Res<()> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(REDB_TABLE)?;
            for i in range {
                assert!(t.remove(keys.get(i))?.is_some());
            }
        }
        Ok(txn.commit()?)
    }
    fn read(&self, keys: &Keys, order: &[u32], touch: bool) -> ReadStats {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read().expect("redb read txn");
        let t = txn.open_table(REDB_TABLE).expect("redb table");
        read_loop(keys, order, |k| {
            t.get(k).expect("redb get").and_then(|g| measure(g.value(), touch))
        })
    }
    fn ycsb(&mut self, keys: &Keys, ops: &[Op], vals: &Values) -> Res<ReadStats> {
        use redb::ReadableDatabase;
        let db = &self.db;
        ycsb::run(
            keys,
            ops,
            vals,
            |k, buf| {
                let txn = db.begin_read()?;
                let t = txn.open_table(REDB_TABLE)?;
                Ok(t.get(k)?.and_then(|g| ycsb::seen(g.value(), buf)))
            },
            |k, v| {
                let mut txn = db.begin_write()?;
                txn.set_durability(redb::Durability::None)?;
                {
                    let mut t = txn.open_table(REDB_TABLE)?;
                    t.insert(k, v)?;
                }
                Ok(txn.commit()?)
            },
        )
    }
    fn close(self: Box<Self>) -> Res<()> {
        Ok(())
    }
}

// ---- fjall --------------------------------------------------------------------------------

struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
}

impl Fjall {
    fn open(dir: &Path) -> Res<Self> {
        let db = fjall::Database::builder(dir.join("fjall")).cache_size(1 << 30).open()?;
        let ks = db.keyspace("kv", fjall::KeyspaceCreateOptions::default)?;
        Ok(Fjall { db, ks })
    }
}

impl Engine for Fjall {
    fn write_batch(&mut self, keys: &Keys, range: Range<usize>, vals: &Values) -> Res<()> {
        let mut batch = self.db.batch();
        for i in range {
            batch.insert(&self.ks, keys.get(i), vals.get(i));
        }
        batch.commit()?;
        Ok(self.db.persist(fjall::PersistMode::SyncAll)?)
    }
    fn put_each(&mut self, keys: &Keys, range: Range<usize>, vals: &Values) -> Res<()> {
        for i in range {
            self.ks.insert(keys.get(i), vals.get(i))?;
        }
        Ok(())
    }
    fn put_durable(&mut self, key: &[u8], val: &[u8]) -> Res<()> {
        self.ks.insert(key, val)?;
        Ok(self.db.persist(fjall::PersistMode::SyncAll)?)
    }
    fn remove_batch(&mut self, keys: &Keys, range: Range<usize>) -> Res<()> {
        let mut batch = self.db.batch();
        for i in range {
            batch.remove(&self.ks, keys.get(i));
        }
        batch.commit()?;
        Ok(self.db.persist(fjall::PersistMode::SyncAll)?)
    }
    fn read(&self, keys: &Keys, order: &[u32], touch: bool) -> ReadStats {
        read_loop(keys, order, |k| {
            self.ks.get(k).expect("fjall get").and_then(|v| measure(&v, touch))
        })
    }
    fn ycsb(&mut self, keys: &Keys, ops: &[Op], vals: &Values) -> Res<ReadStats> {
        let ks = &self.ks;
        ycsb::run(
            keys,
            ops,
            vals,
            |k, buf| Ok(ks.get(k)?.and_then(|v| ycsb::seen(&v, buf))),
            |k, v| Ok(ks.insert(k, v)?),
        )
    }
    fn close(self: Box<Self>) -> Res<()> {
        Ok(())
    }
}

// ---- sled ---------------------------------------------------------------------------------

struct Sled {
    db: sled::Db,
}

impl Engine for Sled {
    fn write_batch(&mut self, keys: &Keys, range: Range<usize>, vals: &Values) -> Res<()> {
        let mut batch = sled::Batch::default();
        for i in range {
            batch.insert(keys.get(i), vals.get(i));
        }
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }
    fn put_each(&mut self, keys: &Keys, range: Range<usize>, vals: &Values) -> Res<()> {
        for i in range {
            self.db.insert(keys.get(i), vals.get(i))?;
        }
        Ok(())
    }
    fn put_durable(&mut self, key: &[u8], val: &[u8]) -> Res<()> {
        self.db.insert(key, val)?;
        self.db.flush()?;
        Ok(())
    }
    fn remove_batch(&mut self, keys: &Keys, range: Range<usize>) -> Res<()> {
        let mut batch = sled::Batch::default();
        for i in range {
            batch.remove(keys.get(i));
        }
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }
    fn read(&self, keys: &Keys, order: &[u32], touch: bool) -> ReadStats {
        read_loop(keys, order, |k| {
            self.db.get(k).expect("sled get").and_then(|v| measure(&v, touch))
        })
    }
    fn ycsb(&mut self, keys: &Keys, ops: &[Op], vals: &Values) -> Res<ReadStats> {
        let db = &self.db;
        ycsb::run(
            keys,
            ops,
            vals,
            |k, buf| Ok(db.get(k)?.and_then(|v| ycsb::seen(&v, buf))),
            |k, v| {
                db.insert(k, v)?;
                Ok(())
            },
        )
    }
    fn close(self: Box<Self>) -> Res<()> {
        self.db.flush()?;
        Ok(())
    }
}

// ---- candystore ---------------------------------------------------------------------------

struct Candy {
    db: candystore::CandyStore,
}

impl Engine for Candy {
    fn write_batch(&mut self, keys: &Keys, range: Range<usize>, vals: &Values) -> Res<()> {
        for i in range {
            self.db.set(keys.get(i), vals.get(i))?;
        }
        Ok(self.db.flush()?)
    }
    fn put_each(&mut self, keys: &Keys, range: Range<usize>, vals: &Values) -> Res<()> {
        for i in range {
            self.db.set(keys.get(i), vals.get(i))?;
        }
        Ok(())
    }
    fn put_durable(&mut self, key: &[u8], val: &[u8]) -> Res<()> {
        self.db.set(key, val)?;
        Ok(self.db.flush()?)
    }
    fn remove_batch(&mut self, keys: &Keys, range: Range<usize>) -> Res<()> {
        for i in range {
            assert!(self.db.remove(keys.get(i))?.is_some());
        }
        Ok(self.db.flush()?)
    }
    fn read(&self, keys: &Keys, order: &[u32], touch: bool) -> ReadStats {
        read_loop(keys, order, |k| {
            self.db.get(k).expect("candystore get").and_then(|v| measure(&v, touch))
        })
    }
    fn ycsb(&mut self, keys: &Keys, ops: &[Op], vals: &Values) -> Res<ReadStats> {
        let db = &self.db;
        ycsb::run(
            keys,
            ops,
            vals,
            |k, buf| Ok(db.get(k)?.and_then(|v| ycsb::seen(&v, buf))),
            |k, v| {
                db.set(k, v)?;
                Ok(())
            },
        )
    }
    fn max_value_len(&self) -> usize {
        candystore::MAX_VALUE_LEN
    }
    fn close(self: Box<Self>) -> Res<()> {
        Ok(())
    }
}

// ---- RocksDB (optional) -------------------------------------------------------------------

#[cfg(feature = "rocksdb")]
struct Rocks {
    db: rocksdb::DB,
}

#[cfg(feature = "rocksdb")]
impl Rocks {
    fn open(dir: &Path) -> Res<Self> {
        let mut bb = rocksdb::BlockBasedOptions::default();
        bb.set_block_cache(&rocksdb::Cache::new_lru_cache(1 << 30));
        bb.set_bloom_filter(10.0, false);
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        opts.set_block_based_table_factory(&bb);
        Ok(Rocks { db: rocksdb::DB::open(&opts, dir.join("rocksdb"))? })
    }
}

/// WAL on (the default) in both modes; `sync` = fdatasync of the WAL before returning.
/// Made per call: `WriteOptions` is not `Sync`, and one allocation per call (not per key of
/// `put_each`) is noise next to a write.
#[cfg(feature = "rocksdb")]
fn rocks_wopts(sync: bool) -> rocksdb::WriteOptions {
    let mut w = rocksdb::WriteOptions::default();
    w.set_sync(sync);
    w.disable_wal(false);
    w
}

#[cfg(feature = "rocksdb")]
impl Engine for Rocks {
    fn write_batch(&mut self, keys: &Keys, range: Range<usize>, vals: &Values) -> Res<()> {
        let mut batch = rocksdb::WriteBatch::default();
        for i in range {
            batch.put(keys.get(i), vals.get(i));
        }
        Ok(self.db.write_opt(batch, &rocks_wopts(true))?)
    }
    fn put_each(&mut self, keys: &Keys, range: Range<usize>, vals: &Values) -> Res<()> {
        let w = rocks_wopts(false);
        for i in range {
            self.db.put_opt(keys.get(i), vals.get(i), &w)?;
        }
        Ok(())
    }
    fn put_durable(&mut self, key: &[u8], val: &[u8]) -> Res<()> {
        Ok(self.db.put_opt(key, val, &rocks_wopts(true))?)
    }
    fn remove_batch(&mut self, keys: &Keys, range: Range<usize>) -> Res<()> {
        let mut batch = rocksdb::WriteBatch::default();
        for i in range {
            batch.delete(keys.get(i));
        }
        Ok(self.db.write_opt(batch, &rocks_wopts(true))?)
    }
    fn read(&self, keys: &Keys, order: &[u32], touch: bool) -> ReadStats {
        read_loop(keys, order, |k| {
            self.db.get_pinned(k).expect("rocksdb get").and_then(|v| measure(&v, touch))
        })
    }
    fn ycsb(&mut self, keys: &Keys, ops: &[Op], vals: &Values) -> Res<ReadStats> {
        let db = &self.db;
        let w = rocks_wopts(false);
        ycsb::run(
            keys,
            ops,
            vals,
            |k, buf| Ok(db.get_pinned(k)?.and_then(|v| ycsb::seen(&v, buf))),
            |k, v| Ok(db.put_opt(k, v, &w)?),
        )
    }
    fn close(self: Box<Self>) -> Res<()> {
        // Drop closes the database (memtables stay in the WAL, replayed at the next open).
        drop(self);
        Ok(())
    }
}
