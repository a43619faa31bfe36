//! Guards mapkv against a hostile environment: a full disk (small tmpfs and ext4 mounts, and
//! RLIMIT_FSIZE in a child process), a read-only file system, immutable files, and an I/O
//! error injected at every kind of OS-layer operation. Each must give a clean `Error`, never
//! a panic or a SIGBUS (which would kill this whole test binary), and lose nothing synced.
//!
//! The privileged cases (`mount`, `chattr`) set up everything themselves and undo it in
//! `Drop` guards, also when a test fails. Where the machine refuses a privileged operation,
//! the case prints a `SKIPPED` line on stderr saying why, and the rest is still asserted.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use mapkv::testing::{Observer, Op};
use mapkv::{Error, OpenOptions, Store};

const MIB: u64 = 1 << 20;

/// The tests here spawn processes (`mount`, `chattr`, child tests). From fork to exec a child
/// holds a copy of every descriptor of this process, store locks included (an `flock`
/// belongs to the open file description), so a test reopening a store it has just closed
/// would get `Locked` while another test spawns. So the tests of this file run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- data, models and checks ---------------------------------------------------------------

/// Key → value of every write that returned `Ok` (or of those made durable by a `sync`).
type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:07}").into_bytes()
}

/// `len` pseudo-random bytes, different for every `(i, generation)`.
fn value(i: usize, generation: usize, len: usize) -> Vec<u8> {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (generation as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
        ^ len as u64
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Puts and records in `model`; panics on an error.
fn put_ok(store: &Store, model: &mut Model, i: usize, generation: usize, len: usize) {
    let (k, v) = (key(i), value(i, generation, len));
    store.put(&k, &v).unwrap_or_else(|e| panic!("put of key {i}: {e}"));
    model.insert(k, v);
}

/// Every key of `expected` has exactly its value (other keys may exist too).
fn check_subset(store: &Store, expected: &Model, what: &str) {
    for (k, v) in expected {
        let got = store.get(k).unwrap_or_else(|e| panic!("{what}: get {}: {e}", show(k)));
        match got {
            Some(g) if *g == **v => {}
            Some(g) => panic!(
                "{what}: key {} has the wrong bytes ({} bytes, expected {})",
                show(k),
                g.len(),
                v.len()
            ),
            None => panic!("{what}: key {} is missing", show(k)),
        }
    }
}

/// The store holds exactly `expected`.
fn check_exact(store: &Store, expected: &Model, what: &str) {
    check_subset(store, expected, what);
    assert_eq!(store.len(), expected.len() as u64, "{what}: number of live keys");
}

/// Every key of `synced` is there, with its synced value or a later acknowledged one.
fn check_synced(store: &Store, synced: &Model, acked: &Model, what: &str) {
    for (k, v) in synced {
        let got = store.get(k).unwrap_or_else(|e| panic!("{what}: get {}: {e}", show(k)));
        let got = got.unwrap_or_else(|| panic!("{what}: SYNCED key {} is missing", show(k)));
        assert!(
            *got == **v || acked.get(k).is_some_and(|a| *got == **a),
            "{what}: SYNCED key {} has bytes that were never written to it ({} bytes)",
            show(k),
            got.len()
        );
    }
}

/// Reopens `path` without any observer or limit and checks the promise: every synced write
/// is there with its bytes, and (the process never died, so the page cache kept everything)
/// so is every acknowledged one, and nothing else. Returns whether the store had not been
/// closed cleanly (open resumed or rebuilt the index).
fn reopen_and_check(path: &Path, synced: &Model, acked: &Model, what: &str) -> bool {
    let store = Store::open(path).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
    check_synced(&store, synced, acked, what);
    check_exact(&store, acked, &format!("{what}: an acknowledged write"));
    let report = store.verify().unwrap_or_else(|e| panic!("{what}: verify: {e}"));
    assert!(report.is_ok(), "{what}: verify found problems: {:?}", report.problems);
    let unclean = !store.recovery().was_clean();
    store.close().unwrap_or_else(|e| panic!("{what}: close after reopen: {e}"));
    unclean
}

fn show(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

fn raw_os_error(err: &Error) -> Option<i32> {
    match err {
        Error::Io { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

fn io_path(err: &Error) -> Option<&Path> {
    match err {
        Error::Io { path, .. } => Some(path),
        _ => None,
    }
}

/// A full disk must surface as `Error::Io` carrying ENOSPC, with a message saying so.
fn assert_disk_full(err: &Error, what: &str) {
    let msg = err.to_string();
    assert!(matches!(err, Error::Io { .. }), "{what}: expected Error::Io, got {err:?}");
    assert!(
        raw_os_error(err) == Some(libc::ENOSPC) || msg.contains("disk is full"),
        "{what}: expected ENOSPC, got {err:?}"
    );
    assert!(msg.contains("full"), "{what}: the message should say the disk is full: {msg}");
    println!("{what}: {msg}");
}

/// Every call on a poisoned handle refuses with `Poisoned`.
fn assert_poisoned(store: &Store, what: &str) {
    let poisoned = |r: Result<(), Error>, call: &str| {
        assert!(matches!(r, Err(Error::Poisoned { .. })), "{what}: {call} after the failure: {r:?}")
    };
    poisoned(store.sync(), "sync");
    poisoned(store.put(b"after", b"failure"), "put");
    poisoned(store.delete(key(0)).map(drop), "delete");
    poisoned(store.get(key(0)).map(drop), "get");
    poisoned(store.reader().get(key(0)).map(drop), "reader().get");
    poisoned(store.verify().map(drop), "verify");
    let msg = store.sync().expect_err("poisoned").to_string();
    assert!(msg.contains("reopen"), "{what}: the message says what to do: {msg}");
}

// ---- machine helpers: commands, mounts, space ------------------------------------------------

/// Prints a skipped case where it is seen even when libtest captures output.
fn skip(case: &str, why: &str) {
    let _ = writeln!(io::stderr(), "SKIPPED {case}: {why}");
}

/// Runs a command, `Err` with what went wrong (including its stderr).
fn run(cmd: &mut Command) -> Result<(), String> {
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{cmd:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("{cmd:?} could not run: {e}")),
    }
}

/// A system tool, also where `PATH` lacks the sbin directories.
fn tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A file system mounted on a fresh temporary directory, lazily unmounted on drop (also when
/// the test fails), before the directory is removed.
struct Mount {
    point: tempfile::TempDir,
    /// Holds the image file of a loop-mounted file system.
    _image: Option<tempfile::TempDir>,
}

impl Mount {
    /// A tmpfs of `mib` MiB, or `None` (after a SKIPPED line) if the machine refuses.
    fn tmpfs(mib: u64, case: &str) -> Option<Self> {
        let point = tempfile::tempdir().expect("mount point");
        let opts = format!("size={mib}m,mode=0755");
        let mounted = run(Command::new(tool("mount"))
            .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
            .arg(point.path()));
        match mounted {
            Ok(()) => Some(Self { point, _image: None }),
            Err(why) => {
                skip(case, &format!("cannot mount a {mib} MiB tmpfs: {why}"));
                None
            }
        }
    }

    /// A fresh ext4 of `mib` MiB on a loop device, or `None` (after a SKIPPED line).
    fn ext4(mib: u64, case: &str) -> Option<Self> {
        let image_dir = tempfile::tempdir().expect("image dir");
        let image = image_dir.path().join("fs.img");
        File::create(&image).and_then(|f| f.set_len(mib * MIB)).expect("image file");
        let made = run(Command::new(tool("mkfs.ext4"))
            .args(["-q", "-F", "-m", "0", "-b", "4096"])
            .arg(&image));
        if let Err(why) = made {
            skip(case, &format!("cannot make an ext4 image: {why}"));
            return None;
        }
        let point = tempfile::tempdir().expect("mount point");
        match run(Command::new(tool("mount")).args(["-o", "loop"]).arg(&image).arg(point.path())) {
            Ok(()) => Some(Self { point, _image: Some(image_dir) }),
            Err(why) => {
                skip(case, &format!("cannot loop-mount an ext4 image: {why}"));
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.point.path()
    }

    fn remount_read_only(&self) -> Result<(), String> {
        run(Command::new(tool("mount")).args(["-o", "remount,ro"]).arg(self.path()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new(tool("umount")).arg("-l").arg(self.path()).output();
    }
}

/// The immutable flag on a file or directory, cleared again on drop (also when the test
/// fails), so that the temporary directory can be removed.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Result<Self, String> {
        run(Command::new(tool("chattr")).arg("+i").arg(path))?;
        Ok(Self(path.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new(tool("chattr")).arg("-i").arg(&self.0).output();
    }
}

fn fallocate(file: &File, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: a plain system call on a descriptor we own; no memory is passed.
    let rc =
        unsafe { libc::posix_fallocate(file.as_raw_fd(), off as libc::off_t, len as libc::off_t) };
    if rc == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(rc)) }
}

/// Makes a file of `len` bytes with all its blocks allocated (not sparse).
fn filler(path: &Path, len: u64) {
    let f = File::create(path).expect("create filler");
    fallocate(&f, 0, len).unwrap_or_else(|e| panic!("allocate a {len}-byte filler: {e}"));
}

/// Grows a filler file until the file system has no block left; returns its size.
fn fill_up(path: &Path) -> u64 {
    let f = fs::OpenOptions::new().create(true).append(true).open(path).expect("filler");
    let mut len = f.metadata().expect("stat").len();
    let mut chunk = MIB;
    while chunk >= 4096 {
        match fallocate(&f, len, chunk) {
            Ok(()) => len += chunk,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => chunk /= 2,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    len
}

/// Bytes the file system at `path` has free (for root, reserved blocks included).
fn free_bytes(path: &Path) -> u64 {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: `statvfs` is plain old data (all zeros is a valid value).
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs {}: {}", path.display(), io::Error::last_os_error());
    st.f_bfree * st.f_frsize
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

// ---- 1. full disk ------------------------------------------------------------------------------

/// Fills a store until a data file growth meets a full disk, then checks that the error is
/// clean, the handle keeps working, a clean close and a reopen need no space, nothing
/// acknowledged is lost, and that the store grows again once space is freed.
fn data_growth_on_a_full_disk(root: &Path, fs_name: &str) {
    let what = format!("{fs_name}, data file growth on a full disk");
    let free = free_bytes(root);
    assert!(free >= 12 * MIB, "{what}: only {free} bytes free");
    // Leave about 6 MiB: enough for the data file to reach 4 MiB, not to double to 8 MiB.
    let filler_path = root.join("filler");
    filler(&filler_path, (free - 6 * MIB) / MIB * MIB);
    let path = root.join("db");
    let data = path.join("data.mkv");

    let store = Store::open(&path).expect("create on a nearly full disk");
    let mut acked = Model::new();
    for i in 0..64 {
        put_ok(&store, &mut acked, i, 0, 4096);
    }
    store.sync().expect("sync the prefix");
    let mut synced = acked.clone();

    let mut failure = None;
    for i in 64..4000 {
        let (k, v) = (key(i), value(i, 0, 16 << 10));
        if let Err(e) = store.put(&k, &v) {
            failure = Some((i, e));
            break;
        }
        acked.insert(k, v);
        if i % 16 == 0 {
            if let Err(e) = store.sync() {
                failure = Some((i, e));
                break;
            }
            synced = acked.clone();
        }
    }
    let (failed_at, err) = failure.expect("the disk never filled up");
    assert_disk_full(&err, &what);
    assert_eq!(io_path(&err), Some(data.as_path()), "{what}: the error names the data file");
    println!("{what}: put #{failed_at} failed, data file {} bytes", file_len(&data));

    // Nothing was written and the handle is not poisoned: it reads, refuses the same write
    // again the same way, and syncs what it acknowledged.
    check_exact(&store, &acked, &format!("{what}: same handle after ENOSPC"));
    let again = store.put(key(failed_at), value(failed_at, 0, 16 << 10)).expect_err("still full");
    assert_disk_full(&again, &format!("{what}: the retry"));
    store.sync().expect("sync after ENOSPC: a failed allocation does not poison");
    store.close().expect("a clean close needs no new space");

    // Reopening on the still-full disk needs no space either.
    let rebuilt = reopen_and_check(&path, &synced, &acked, &format!("{what}: reopen while full"));
    assert!(!rebuilt, "{what}: the clean close was not recorded");

    // Free space: the write that failed now succeeds and the data file grows. (On ext4 the
    // failed `posix_fallocate` may have left the file partly extended, which a reopen maps:
    // so write until the file grows rather than a fixed amount.)
    fs::remove_file(&filler_path).expect("remove filler");
    let len_before = file_len(&data);
    let store = Store::open(&path).expect("reopen after freeing space");
    let mut i = failed_at;
    while file_len(&data) == len_before && i < failed_at + 1000 {
        put_ok(&store, &mut acked, i, 0, 16 << 10);
        i += 1;
    }
    store.sync().expect("sync after freeing space");
    drop(store);
    assert!(file_len(&data) > len_before, "{what}: the data file did not grow after freeing");
    println!("{what}: after freeing space the data file grew to {} bytes", file_len(&data));
    reopen_and_check(&path, &acked, &acked, &format!("{what}: after freeing space"));
}

#[test]
fn full_tmpfs_refuses_data_growth_cleanly_and_loses_nothing() {
    let _serial = serial();
    let Some(mnt) = Mount::tmpfs(16, "full tmpfs, data growth") else { return };
    data_growth_on_a_full_disk(mnt.path(), "tmpfs");
}

/// The same on ext4, the file system mapkv is meant for: `posix_fallocate` reserves real
/// (unwritten) extents, and stores through the mapping then write into them.
#[test]
fn full_ext4_refuses_data_growth_cleanly_and_loses_nothing() {
    let _serial = serial();
    let Some(mnt) = Mount::ext4(40, "full ext4, data growth") else { return };
    data_growth_on_a_full_disk(mnt.path(), "ext4");
}

/// Many small keys on a completely full disk: the data file has room, but the index must
/// grow (a new `index.mkv.tmp`), which fails. Updates of existing keys still work.
#[test]
fn full_tmpfs_refuses_index_growth_cleanly_and_loses_nothing() {
    let _serial = serial();
    let what = "tmpfs, index growth on a full disk";
    let Some(mnt) = Mount::tmpfs(4, what) else { return };
    let path = mnt.path().join("db");
    let data = path.join("data.mkv");
    let store = Store::open(&path).expect("create");
    let mut acked = Model::new();
    for i in 0..600 {
        put_ok(&store, &mut acked, i, 0, 8);
    }
    store.sync().expect("sync the prefix");
    let synced = acked.clone();
    let data_len = file_len(&data);

    let filled = fill_up(&mnt.path().join("filler"));
    println!("{what}: filler of {filled} bytes, {} bytes left", free_bytes(mnt.path()));
    let mut failure = None;
    for i in 600..5000 {
        let (k, v) = (key(i), value(i, 0, 8));
        match store.put(&k, &v) {
            Ok(()) => drop(acked.insert(k, v)),
            Err(e) => {
                failure = Some((i, e));
                break;
            }
        }
    }
    let (failed_at, err) = failure.expect("the index never had to grow");
    assert_disk_full(&err, what);
    let named = io_path(&err).and_then(Path::file_name).and_then(OsStr::to_str).unwrap_or("");
    assert!(named.starts_with("index.mkv"), "{what}: the error should name the index: {err}");
    assert_eq!(file_len(&data), data_len, "{what}: the data file did not need to grow");
    println!("{what}: new key #{failed_at} refused");

    // The handle is not poisoned: it reads, updates existing keys (no new slot), syncs.
    check_exact(&store, &acked, &format!("{what}: same handle after ENOSPC"));
    for i in (0..600).step_by(50) {
        put_ok(&store, &mut acked, i, 1, 8);
    }
    let again = store.put(key(failed_at), b"x").expect_err("still full");
    assert_disk_full(&again, &format!("{what}: the retry"));
    store.sync().expect("sync after ENOSPC");
    store.close().expect("a clean close needs no new space");

    let rebuilt = reopen_and_check(&path, &synced, &acked, &format!("{what}: reopen while full"));
    assert!(!rebuilt, "{what}: the clean close was not recorded");

    fs::remove_file(mnt.path().join("filler")).expect("remove filler");
    let store = Store::open(&path).expect("reopen after freeing space");
    for i in failed_at..failed_at + 1000 {
        put_ok(&store, &mut acked, i, 0, 8);
    }
    store.close().expect("close");
    assert!(!path.join("index.mkv.tmp").exists(), "{what}: a grown index was left as .tmp");
    reopen_and_check(&path, &acked, &acked, &format!("{what}: after freeing space"));
}

/// Opening on a disk that is already full: creating a store fails cleanly and leaves no
/// half-made store; a cleanly closed store opens (it needs no space); a crashed one, whose
/// recovery needs a new index file, fails cleanly but opens read-only; all of them work once
/// space is freed.
#[test]
fn full_tmpfs_at_open_gives_clean_errors() {
    let _serial = serial();
    let what = "tmpfs, open on a full disk";
    let Some(mnt) = Mount::tmpfs(4, what) else { return };
    let root = mnt.path();

    let clean = root.join("clean");
    let store = Store::open(&clean).expect("create");
    let mut clean_model = Model::new();
    for i in 0..100 {
        put_ok(&store, &mut clean_model, i, 0, 64);
    }
    store.close().expect("close");

    let crashed = root.join("crashed");
    let store = Store::open(&crashed).expect("create");
    let mut acked = Model::new();
    for i in 0..200 {
        put_ok(&store, &mut acked, i, 0, 64);
    }
    store.sync().expect("sync");
    let synced = acked.clone();
    for i in 200..250 {
        put_ok(&store, &mut acked, i, 0, 64);
    }
    store.simulate_crash();

    let filled = fill_up(&root.join("filler"));
    println!("{what}: filler of {filled} bytes, {} bytes left", free_bytes(root));

    let fresh = root.join("fresh");
    let err = Store::open(&fresh).expect_err("no room for a new data file");
    assert_disk_full(&err, &format!("{what}: creating a store"));
    assert!(!fresh.join("data.mkv").exists(), "{what}: a half-made store was left behind");

    let store = Store::open(&clean).expect("a cleanly closed store opens on a full disk");
    check_exact(&store, &clean_model, &format!("{what}: clean store"));
    drop(store);

    // Resuming after the crash (same boot) writes no new file: it opens on a full disk.
    let store = Store::open(&crashed).expect("a crashed store resumes on a full disk");
    assert!(store.recovery().resumed_from.is_some(), "{what}: {:?}", store.recovery());
    check_exact(&store, &acked, &format!("{what}: resumed after a crash"));
    store.simulate_crash();
    // After a restart the index must be rebuilt, into a new file: no room for it.
    mapkv::testing::adopt_page(&crashed, true).expect("reboot the page");
    let err = Store::open(&crashed).expect_err("recovery needs a new index file");
    assert_disk_full(&err, &format!("{what}: recovering a crashed store"));
    let ro = OpenOptions::new().read_only(true).open(&crashed).expect("read-only open");
    assert!(ro.recovery().index_rebuilt, "{what}: the reader rebuilt in memory");
    check_exact(&ro, &acked, &format!("{what}: read-only after a crash"));
    drop(ro);

    fs::remove_file(root.join("filler")).expect("remove filler");
    let store = Store::open(&fresh).expect("create after freeing space");
    store.put(b"k", b"v").expect("put");
    store.close().expect("close");
    let store = Store::open(&fresh).expect("reopen");
    assert_eq!(store.get(b"k").expect("get").as_deref(), Some(&b"v"[..]));
    drop(store);
    let rebuilt = reopen_and_check(&crashed, &synced, &acked, &format!("{what}: recovered"));
    assert!(rebuilt, "{what}: the crashed store was recovered");
}

/// A store copied sparsely (`cp --sparse=always`, as backups and `rsync -S` do) has holes
/// where its reserved, zeroed tail was. Stores into a hole need a new block: on a full disk
/// that would be a SIGBUS. A writable open re-reserves the blocks, so a full disk must fail
/// the open cleanly instead, while a reader still works.
#[test]
fn sparse_copy_onto_a_full_disk_fails_at_open_not_with_sigbus() {
    let _serial = serial();
    let what = "sparse copy onto a full tmpfs";
    let Some(mnt) = Mount::tmpfs(4, what) else { return };
    let src = tempfile::tempdir().expect("tempdir");
    let src_db = src.path().join("db");
    let store = Store::open(&src_db).expect("create");
    let mut acked = Model::new();
    for i in 0..600 {
        put_ok(&store, &mut acked, i, 0, 32);
    }
    store.close().expect("close");

    let path = mnt.path().join("db");
    let copied = run(Command::new("cp").args(["-r", "--sparse=always"]).arg(&src_db).arg(&path));
    if let Err(why) = copied {
        return skip(what, &format!("cannot make a sparse copy: {why}"));
    }
    let data = path.join("data.mkv");
    let meta = fs::metadata(&data).expect("stat copy");
    let allocated = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    if allocated * 2 > meta.len() {
        return skip(
            what,
            &format!("the copy is not sparse ({allocated} of {} bytes)", meta.len()),
        );
    }
    println!("{what}: data.mkv has {allocated} of {} bytes allocated", meta.len());
    fill_up(&mnt.path().join("filler"));

    let err = Store::open(&path).expect_err("the holes cannot be reserved on a full disk");
    assert_disk_full(&err, what);
    let ro = OpenOptions::new().read_only(true).open(&path).expect("read-only open");
    check_exact(&ro, &acked, &format!("{what}: read-only"));
    drop(ro);

    fs::remove_file(mnt.path().join("filler")).expect("remove filler");
    let store = Store::open(&path).expect("open after freeing space");
    for i in 600..6000 {
        put_ok(&store, &mut acked, i, 0, 100); // fills most of the first MiB: the old holes
    }
    store.sync().expect("sync");
    store.close().expect("close");
    reopen_and_check(&path, &acked, &acked, what);
}

/// The data file grows by doubling (DESIGN.md §5) and nothing smaller is tried when that
/// fails. So with a 4 MiB data file and ~3 MiB free, a 16 KiB write is refused with "the
/// disk is full", and stays refused however much short of 4 MiB is freed.
#[test]
fn a_write_that_fits_in_the_free_space_is_not_refused() {
    let _serial = serial();
    let what = "nearly full tmpfs";
    let Some(mnt) = Mount::tmpfs(8, what) else { return };
    filler(&mnt.path().join("filler"), MIB);
    let store = Store::open(mnt.path().join("db")).expect("create");
    for i in 0..2000 {
        let v = value(i, 0, 16 << 10);
        if let Err(err) = store.put(key(i), &v) {
            let free = free_bytes(mnt.path());
            assert_disk_full(&err, what);
            assert!(
                free < 4 * v.len() as u64,
                "put #{i} of a {}-byte value was refused as '{err}' with {free} bytes free",
                v.len()
            );
            return;
        }
    }
    panic!("{what}: the disk never filled up");
}

// ---- 1b. RLIMIT_FSIZE, in a child process ------------------------------------------------------

/// Names the role a re-executed child plays.
const ROLE_ENV: &str = "MAPKV_ENV_CHILD";
/// The directory a child works in.
const DIR_ENV: &str = "MAPKV_ENV_DIR";
/// Prefix of the lines a child reports on (anything else on stdout is libtest's).
const MARK: &str = "@env ";
const LIMIT_TEST: &str = "file_size_limit_gives_efbig_not_a_signal";

fn report(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{MARK}{line}");
    let _ = out.flush();
}

/// Lowers this process's file size limit. Exceeding it raises SIGXFSZ, which kills by
/// default; ignored, the system call fails with EFBIG instead, which mapkv must report.
fn limit_file_size(bytes: u64) {
    // SAFETY: plain system calls; `lim` is a valid `rlimit` the kernel reads and writes.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim), 0, "getrlimit");
        lim.rlim_cur = bytes;
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0, "setrlimit");
    }
}

fn report_err(err: &Error) {
    let file = io_path(err).and_then(Path::file_name).map(|f| f.to_string_lossy().into_owned());
    report(&format!(
        "error {} {} {err}",
        raw_os_error(err).unwrap_or(-1),
        file.unwrap_or_else(|| "-".into())
    ));
}

/// Child: values of 16 KiB under a 3 MiB limit, so the data file's growth to 4 MiB fails.
/// Then: still usable, closes cleanly, and reopens under a limit below its own size.
fn child_data_limit(dir: &Path) {
    limit_file_size(3 * MIB);
    let path = dir.join("db");
    let store = Store::open(&path).expect("create under the limit");
    let (mut acked, mut synced) = (0, 0);
    for i in 0..1000 {
        if let Err(e) = store.put(key(i), value(i, 0, 16 << 10)) {
            report_err(&e);
            break;
        }
        acked = i + 1;
        if acked % 16 == 0 {
            if let Err(e) = store.sync() {
                report_err(&e);
                break;
            }
            synced = acked;
        }
    }
    report(&format!("synced-before {synced}"));
    report(&format!("acked {acked}"));
    let v = store.get(key(0)).expect("get after EFBIG");
    assert_eq!(v.as_deref(), Some(&value(0, 0, 16 << 10)[..]), "value 0 after EFBIG");
    store.sync().expect("sync after EFBIG: a failed allocation does not poison");
    store.close().expect("clean close under the limit");
    report("closed");
    // A limit below the files' sizes must not stop an open that does not grow them.
    limit_file_size(MIB);
    let store = Store::open(&path).expect("reopen under a limit below the file size");
    let v = store.get(key(acked - 1)).expect("get");
    assert_eq!(v.as_deref(), Some(&value(acked - 1, 0, 16 << 10)[..]), "last value");
    drop(store);
    report("reopened-under-smaller-limit");
}

/// Child: creating a store under a 512 KiB limit fails. Then tiny records under a 1 MiB
/// limit: the data file (1 MiB) never grows, but the index reaches 65536 slots (1 MiB +
/// 4 KiB), which fails.
fn child_index_limit(dir: &Path) {
    // Below the first data file size (1 MiB), creating a store fails cleanly.
    limit_file_size(MIB / 2);
    let err = Store::open(dir.join("tiny")).expect_err("a 1 MiB data file under a 512 KiB limit");
    report(&format!("create-refused {}", raw_os_error(&err).unwrap_or(-1)));
    limit_file_size(MIB);
    let path = dir.join("db");
    let store = Store::open(&path).expect("create under the limit");
    let mut acked = 0;
    for i in 0..40_000 {
        if let Err(e) = store.put(key(i), b"") {
            report_err(&e);
            break;
        }
        acked = i + 1;
    }
    report(&format!("acked {acked}"));
    store.put(key(0), b"updated").expect("an update needs no new slot");
    report("updated 0");
    store.close().expect("clean close under the limit");
    report("closed");
}

/// Runs this test binary as a child playing `role` in `dir`; returns its marked lines.
fn run_child(role: &str, dir: &Path) -> Vec<String> {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args(["--exact", LIMIT_TEST, "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .env(DIR_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {role} hung");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let (out, err) = (out.join().expect("stdout"), err.join().expect("stderr"));
    let signal = status.signal().map(|s| {
        let name = if s == libc::SIGXFSZ { " (SIGXFSZ)" } else { "" };
        format!("; killed by signal {s}{name}")
    });
    assert!(
        status.success(),
        "child {role} failed: {status}{}\n--- stdout\n{out}\n--- stderr\n{err}",
        signal.unwrap_or_default()
    );
    // libtest prints `test <name> ... ` without a newline first, so a mark may start mid-line.
    out.lines().filter_map(|l| l.split_once(MARK)).map(|(_, r)| r.to_owned()).collect()
}

fn has_line(lines: &[String], tag: &str) -> bool {
    lines.iter().any(|l| l == tag)
}

fn line_value<'a>(lines: &'a [String], tag: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("the child reported no `{tag}`: {lines:?}"))
}

/// RLIMIT_FSIZE, set in a child process so no other test is affected: growing past it
/// must give `Error::Io` with EFBIG (SIGXFSZ ignored), for the data file and for the index,
/// with the handle still usable and nothing lost.
#[test]
fn file_size_limit_gives_efbig_not_a_signal() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        let dir = PathBuf::from(std::env::var(DIR_ENV).expect("child without a directory"));
        match role.as_str() {
            "data-limit" => child_data_limit(&dir),
            "index-limit" => child_index_limit(&dir),
            other => panic!("unknown child role {other}"),
        }
        std::process::exit(0);
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data_dir, index_dir) = (tmp.path().join("data"), tmp.path().join("index"));
    fs::create_dir(&data_dir).expect("mkdir");
    fs::create_dir(&index_dir).expect("mkdir");
    let index_child = {
        let dir = index_dir.clone();
        thread::spawn(move || run_child("index-limit", &dir))
    };
    let data_lines = run_child("data-limit", &data_dir);
    let index_lines = index_child.join().expect("index child");

    let what = "RLIMIT_FSIZE, data file growth";
    println!("{what}: child said {data_lines:?}");
    let err = line_value(&data_lines, "error");
    assert!(err.starts_with("27 data.mkv "), "{what}: expected EFBIG on data.mkv: {err}");
    let acked: usize = line_value(&data_lines, "acked").parse().expect("number");
    assert!(acked >= 16, "{what}: the limit bit too early ({acked} puts)");
    assert!(has_line(&data_lines, "closed"), "{what}: the child could not close cleanly");
    let reopened = has_line(&data_lines, "reopened-under-smaller-limit");
    assert!(reopened, "{what}: no reopen under a limit below the file size");
    let model: Model = (0..acked).map(|i| (key(i), value(i, 0, 16 << 10))).collect();
    reopen_and_check(&data_dir.join("db"), &model, &model, what);

    let what = "RLIMIT_FSIZE, index growth";
    println!("{what}: child said {index_lines:?}");
    let refused = line_value(&index_lines, "create-refused");
    assert_eq!(refused, "27", "{what}: creating a store over the limit: EFBIG");
    let err = line_value(&index_lines, "error");
    assert!(err.starts_with("27 index.mkv"), "{what}: expected EFBIG on the index: {err}");
    let acked: usize = line_value(&index_lines, "acked").parse().expect("number");
    assert!(has_line(&index_lines, "updated 0"), "{what}: an update was refused");
    assert!(has_line(&index_lines, "closed"), "{what}: the child could not close cleanly");
    let mut model: Model = (0..acked).map(|i| (key(i), Vec::new())).collect();
    model.insert(key(0), b"updated".to_vec());
    reopen_and_check(&index_dir.join("db"), &model, &model, what);
}

// ---- 2. read-only file system ------------------------------------------------------------------

/// A store on a file system remounted read-only: a writable open fails with a clear error
/// naming the file, a read-only open serves the data, also after an unclean shutdown (it
/// rebuilds the index in memory).
#[test]
fn read_only_file_system_refuses_writers_and_serves_readers() {
    let _serial = serial();
    let what = "read-only file system";
    let Some(mnt) = Mount::tmpfs(8, what) else { return };
    let clean = mnt.path().join("clean");
    let store = Store::open(&clean).expect("create");
    let mut clean_model = Model::new();
    for i in 0..300 {
        put_ok(&store, &mut clean_model, i, 0, 200);
    }
    store.close().expect("clean close");

    let crashed = mnt.path().join("crashed");
    let store = Store::open(&crashed).expect("create");
    let mut acked = Model::new();
    for i in 0..300 {
        put_ok(&store, &mut acked, i, 0, 200);
    }
    store.sync().expect("sync");
    for i in 300..400 {
        put_ok(&store, &mut acked, i, 0, 200);
    }
    store.simulate_crash();

    if let Err(why) = mnt.remount_read_only() {
        skip(what, &format!("cannot remount read-only: {why}"));
        return;
    }
    assert!(File::create(mnt.path().join("probe")).is_err(), "the remount did not take");

    for (dir, name) in [(&clean, "clean"), (&crashed, "crashed")] {
        let err = Store::open(dir).expect_err("a writer on a read-only file system");
        let msg = err.to_string();
        println!("{what}: writable open of the {name} store: {msg}");
        assert!(matches!(err, Error::Io { .. }), "{what}: {err:?}");
        assert_eq!(raw_os_error(&err), Some(libc::EROFS), "{what}: {err:?}");
        let file = io_path(&err).expect("a path");
        assert!(file.starts_with(dir), "{what}: the error names a file of the store: {msg}");
        assert!(msg.contains(&*file.to_string_lossy()), "{what}: message names the file: {msg}");
        assert!(msg.contains("Read-only file system"), "{what}: says what happened: {msg}");
    }
    let err = Store::open(mnt.path().join("new")).expect_err("creating on a read-only fs");
    println!("{what}: creating a store: {err}");
    assert_eq!(raw_os_error(&err), Some(libc::EROFS), "{what}: {err:?}");

    // Readers need no write access; two at once share the lock.
    let ro = OpenOptions::new().read_only(true).open(&clean).expect("read-only open, clean");
    let ro2 = OpenOptions::new().read_only(true).open(&clean).expect("second reader");
    assert!(!ro.recovery().index_rebuilt, "{what}: a clean store opens from its index");
    check_exact(&ro, &clean_model, &format!("{what}: clean store"));
    check_exact(&ro2, &clean_model, &format!("{what}: clean store, second reader"));
    assert!(matches!(ro.put(b"k", b"v"), Err(Error::ReadOnly)));
    drop((ro, ro2));

    let ro = OpenOptions::new().read_only(true).open(&crashed).expect("read-only open, crashed");
    assert!(!ro.recovery().was_clean(), "{what}: the index was dirty, so it was recovered");
    check_exact(&ro, &acked, &format!("{what}: crashed store"));
    let report = ro.verify().expect("verify");
    assert!(report.is_ok(), "{what}: {:?}", report.problems);
}

// ---- 3. immutable files ------------------------------------------------------------------------

/// `chattr +i`: a writable open fails with a clear error naming the file and a read-only
/// open works. With the directory immutable no file can be created in it: whatever needs a
/// new file (index growth) fails cleanly, the rest works.
#[test]
fn immutable_files_are_refused_clearly_and_stay_readable() {
    let _serial = serial();
    let what = "immutable file";
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("db");
    let store = Store::open(&path).expect("create");
    let mut acked = Model::new();
    for i in 0..600 {
        put_ok(&store, &mut acked, i, 0, 32);
    }
    store.close().expect("close");

    for name in ["data.mkv", "index.mkv"] {
        let file = path.join(name);
        let guard = match Immutable::set(&file) {
            Ok(g) => g,
            Err(why) => {
                skip(what, &format!("chattr +i {name} failed: {why}"));
                return;
            }
        };
        let err = Store::open(&path).expect_err("a writer on an immutable file");
        let msg = err.to_string();
        println!("{what}: writable open with {name} immutable: {msg}");
        assert!(matches!(err, Error::Io { .. }), "{what}: {err:?}");
        assert_eq!(raw_os_error(&err), Some(libc::EPERM), "{what}: {err:?}");
        assert_eq!(io_path(&err), Some(file.as_path()), "{what}: names the file: {msg}");
        assert!(msg.contains(&*file.to_string_lossy()), "{what}: message names the file: {msg}");

        let ro = OpenOptions::new().read_only(true).open(&path).expect("read-only open");
        check_exact(&ro, &acked, &format!("{what}: read-only with {name} immutable"));
        drop(ro);
        drop(guard);
        let store = Store::open(&path).expect("writable again once the flag is cleared");
        assert!(!store.recovery().index_rebuilt, "{what}: the refused open changed something");
        store.close().expect("close");
    }

    let what = "immutable directory";
    let guard = match Immutable::set(&path) {
        Ok(g) => g,
        Err(why) => return skip(what, &format!("chattr +i on the directory failed: {why}")),
    };
    match Store::open(&path) {
        Err(err) => {
            println!("{what}: writable open refused: {err}");
            assert!(matches!(err, Error::Io { .. }), "{what}: {err:?}");
        }
        Ok(store) => {
            // The clean index needs no new name; the index growth at 704 keys does.
            let mut failure = None;
            for i in 600..2000 {
                let (k, v) = (key(i), value(i, 0, 32));
                match store.put(&k, &v) {
                    Ok(()) => drop(acked.insert(k, v)),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            let err = failure.expect("index growth never needed a new file");
            println!("{what}: index growth: {err}");
            assert_eq!(raw_os_error(&err), Some(libc::EPERM), "{what}: {err:?}");
            assert_eq!(
                io_path(&err),
                Some(path.join("index.mkv.tmp").as_path()),
                "{what}: names the file it could not create"
            );
            put_ok(&store, &mut acked, 0, 1, 32);
            store.sync().expect("sync: a failed create does not poison");
            store.close().expect("close");
        }
    }
    let ro = OpenOptions::new().read_only(true).open(&path).expect("read-only open");
    check_exact(&ro, &acked, &format!("{what}: read-only"));
    drop(ro);
    drop(guard);
    reopen_and_check(&path, &acked, &acked, what);
}

// ---- 4. injected I/O errors --------------------------------------------------------------------

/// The kinds of OS-layer operation an [`Injector`] can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Flush,
    SyncFile,
    SyncDir,
    Extend,
    Rename,
    Create,
    Zero,
}

fn classify<'a>(op: &Op<'a>) -> Option<(Kind, &'a Path)> {
    Some(match *op {
        Op::Flush { path, .. } => (Kind::Flush, path),
        Op::SyncFile { path } => (Kind::SyncFile, path),
        Op::SyncDir { path } => (Kind::SyncDir, path),
        Op::Extend { path, .. } => (Kind::Extend, path),
        Op::Rename { from, .. } => (Kind::Rename, from),
        Op::Create { path } => (Kind::Create, path),
        Op::Zero { path, .. } => (Kind::Zero, path),
        _ => return None,
    })
}

/// Fails one operation with EIO, as a dying disk would: once armed, the first operation of
/// `kind` on a file named `file` (any file if `None`) after letting `skip` of them pass.
/// Records every operation it sees.
struct Injector {
    kind: Kind,
    file: Option<&'static str>,
    armed: AtomicBool,
    skip: AtomicUsize,
    fired: Mutex<Option<String>>,
    seen: Mutex<Vec<(Kind, PathBuf)>>,
}

impl Injector {
    fn new(kind: Kind, file: Option<&'static str>, skip: usize) -> Arc<Self> {
        Arc::new(Self {
            kind,
            file,
            armed: AtomicBool::new(false),
            skip: AtomicUsize::new(skip),
            fired: Mutex::new(None),
            seen: Mutex::new(Vec::new()),
        })
    }

    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    fn fired(&self) -> Option<String> {
        self.fired.lock().expect("lock").clone()
    }

    fn seen(&self) -> Vec<(Kind, PathBuf)> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Observer for Injector {
    fn before(&self, op: Op<'_>) -> io::Result<()> {
        let Some((kind, path)) = classify(&op) else { return Ok(()) };
        self.seen.lock().expect("lock").push((kind, path.to_path_buf()));
        let file_matches = self.file.is_none_or(|f| path.file_name() == Some(OsStr::new(f)));
        if kind != self.kind || !file_matches || !self.armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        if self.skip.load(Ordering::SeqCst) > 0 {
            self.skip.fetch_sub(1, Ordering::SeqCst);
            return Ok(());
        }
        self.armed.store(false, Ordering::SeqCst);
        *self.fired.lock().expect("lock") = Some(format!("{op:?}"));
        Err(io::Error::from_raw_os_error(libc::EIO))
    }
}

/// Asserts that a call failed with the injected EIO.
fn assert_injected(err: &Error, what: &str) {
    assert!(matches!(err, Error::Io { .. }), "{what}: expected the injected Error::Io: {err:?}");
    assert_eq!(raw_os_error(err), Some(libc::EIO), "{what}: {err:?}");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Put,
    Sync,
    Close,
}

/// One failure to inject into a running store.
struct Target {
    kind: Kind,
    file: Option<&'static str>,
    /// Matching operations to let through first.
    skip: usize,
    /// Arm only just before `close` (else right after open).
    at_close: bool,
    /// The call the failure must surface in.
    during: Call,
    /// A failed flush poisons the handle; a failed growth step need not.
    poisons: bool,
    /// Whether the reopen must rebuild the index exactly when the handle ended poisoned.
    check_rebuilt: bool,
}

const BASE: usize = 50;
const STEPS: usize = 900;

/// The workload's key and value length at `step`: mostly new keys (the index grows at 704
/// keys, near step 725), every tenth an update; values of 1..4096 bytes (the data file
/// outgrows its first MiB near step 500). A sync every 50 steps.
fn step_key(step: usize) -> usize {
    if step % 10 == 9 { step / 2 } else { BASE + step }
}

fn step_len(step: usize) -> usize {
    1 + (step * 997) % 4096
}

/// Arms `t` on a store with a clean, durable base, drives puts and syncs (and a final
/// close) until the failure surfaces, then checks the handle (poisoned, or still usable)
/// and what a reopen without the injector finds.
fn inject(t: Target) {
    let what = format!("injected EIO at {:?} of {}", t.kind, t.file.unwrap_or("any file"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("db");
    let mut acked = Model::new();
    let store = Store::open(&path).expect("create");
    for i in 0..BASE {
        put_ok(&store, &mut acked, i, 0, 100);
    }
    store.close().expect("close"); // the index is clean: the first change must mark it
    let mut synced = acked.clone();

    let inj = Injector::new(t.kind, t.file, t.skip);
    let store = OpenOptions::new().observer(inj.clone()).open(&path).expect("open");
    if !t.at_close {
        inj.arm();
    }
    let mut failed: Option<(Call, usize)> = None;
    let mut poisoned = false;
    let mut step = 0;
    while step < STEPS {
        let (i, v) = (step_key(step), value(step_key(step), step, step_len(step)));
        let mut outcome = store.put(key(i), &v).map_err(|e| (Call::Put, e));
        if outcome.is_ok() {
            acked.insert(key(i), v);
            if step % 50 == 49 {
                outcome = store.sync().map_err(|e| (Call::Sync, e));
                if outcome.is_ok() {
                    synced = acked.clone();
                }
            }
        }
        let Err((call, err)) = outcome else {
            step += 1;
            continue;
        };
        assert!(failed.is_none(), "{what}: a second failure after the injected one: {err}");
        let op = inj.fired().unwrap_or_else(|| panic!("{what}: {call:?} failed by itself: {err}"));
        println!("{what}: {op} -> {call:?} at step {step} returned: {err}");
        assert_injected(&err, &what);
        assert_eq!(call, t.during, "{what}: the failure surfaced in the wrong call");
        failed = Some((call, step));
        if t.poisons {
            assert_poisoned(&store, &what);
            poisoned = true;
            break;
        }
        // Not a flush: the handle may stay usable (then the retry and everything after it
        // must work) or refuse everything from now on; never anything in between.
        match store.get(key(0)) {
            Err(Error::Poisoned { .. }) => {
                println!("{what}: the handle poisoned itself (allowed)");
                assert_poisoned(&store, &what);
                poisoned = true;
                break;
            }
            other => drop(other.unwrap_or_else(|e| panic!("{what}: get after the failure: {e}"))),
        }
        if call == Call::Sync {
            step += 1; // the put was acknowledged; a later sync covers it
        }
    }
    if poisoned {
        drop(store);
    } else {
        if t.at_close {
            inj.arm();
        }
        match store.close() {
            Ok(()) => {
                assert!(failed.is_some(), "{what}: the injected operation never happened");
                synced = acked.clone();
            }
            Err(err) => {
                let op = inj.fired().unwrap_or_else(|| panic!("{what}: close failed: {err}"));
                println!("{what}: {op} -> close returned: {err}");
                assert_injected(&err, &what);
                assert!(failed.is_none(), "{what}: a second failure at close");
                assert_eq!(Call::Close, t.during, "{what}: the failure surfaced at close");
                // `close` consumed the handle; its drop must not retry and mark it clean.
                failed = Some((Call::Close, STEPS));
                poisoned = true;
            }
        }
    }
    assert!(failed.is_some(), "{what}: nothing failed");
    let rebuilt = reopen_and_check(&path, &synced, &acked, &what);
    if t.check_rebuilt {
        // A poisoned handle never marks the index clean; one that carried on closed cleanly.
        assert_eq!(rebuilt, poisoned, "{what}: index rebuilt at the reopen");
    }
}

const fn target(kind: Kind, file: Option<&'static str>, during: Call) -> Target {
    let poisons = matches!(kind, Kind::Flush | Kind::SyncFile | Kind::SyncDir);
    Target { kind, file, skip: 0, at_close: false, during, poisons, check_rebuilt: true }
}

#[test]
fn injected_data_flush_failure_at_sync_poisons() {
    let _serial = serial();
    inject(target(Kind::Flush, Some("data.mkv"), Call::Sync));
}

#[test]
fn injected_data_flush_failure_at_close_poisons() {
    let _serial = serial();
    inject(Target { at_close: true, ..target(Kind::Flush, Some("data.mkv"), Call::Close) });
}

#[test]
fn injected_header_flush_failure_at_close_poisons() {
    let _serial = serial();
    // The second data flush of a close writes the header naming the new end.
    let t = target(Kind::Flush, Some("data.mkv"), Call::Close);
    inject(Target { at_close: true, skip: 1, ..t });
}

#[test]
fn injected_index_flush_failure_at_first_mutation_poisons() {
    let _serial = serial();
    // The first put after a clean open marks the index dirty and flushes that page.
    inject(target(Kind::Flush, Some("index.mkv"), Call::Put));
}

#[test]
fn injected_index_flush_failure_at_close_poisons() {
    let _serial = serial();
    inject(Target { at_close: true, ..target(Kind::Flush, Some("index.mkv"), Call::Close) });
}

#[test]
fn injected_index_clean_mark_failure_at_close_poisons() {
    let _serial = serial();
    // The last flush of a close marks the index clean. It failed, but the page cache holds
    // a correct, clean index, so the reopen may trust it: either outcome is right.
    let t = target(Kind::Flush, Some("index.mkv"), Call::Close);
    inject(Target { at_close: true, skip: 1, check_rebuilt: false, ..t });
}

#[test]
fn injected_directory_sync_failure_at_close_poisons() {
    let _serial = serial();
    inject(Target { at_close: true, ..target(Kind::SyncDir, None, Call::Close) });
}

#[test]
fn injected_extend_failure_at_data_growth_leaves_the_store_usable() {
    let _serial = serial();
    inject(target(Kind::Extend, Some("data.mkv"), Call::Put));
}

#[test]
fn injected_extend_failure_at_index_growth_leaves_the_store_usable() {
    let _serial = serial();
    inject(target(Kind::Extend, Some("index.mkv.tmp"), Call::Put));
}

#[test]
fn injected_create_failure_at_index_growth_leaves_the_store_usable() {
    let _serial = serial();
    inject(target(Kind::Create, Some("index.mkv.tmp"), Call::Put));
}

#[test]
fn injected_rename_failure_at_index_growth_leaves_the_store_usable() {
    let _serial = serial();
    inject(target(Kind::Rename, Some("index.mkv.tmp"), Call::Put));
}

const OPEN_KINDS: [Kind; 7] = [
    Kind::Create,
    Kind::Extend,
    Kind::SyncFile,
    Kind::Flush,
    Kind::Rename,
    Kind::SyncDir,
    Kind::Zero,
];

/// Every failure point of creating a store, one at a time: open returns the error (no
/// panic, nothing half-made that a retry trips over), and a retry creates a working store.
#[test]
fn injected_failures_while_creating_a_store_leave_it_creatable() {
    let _serial = serial();
    for kind in OPEN_KINDS {
        let mut points = 0;
        for n in 0..16 {
            let what = format!("creation, {kind:?} #{n}");
            let tmp = tempfile::tempdir().expect("tempdir");
            let path = tmp.path().join("db");
            let inj = Injector::new(kind, None, n);
            inj.arm();
            let opened = OpenOptions::new().observer(inj.clone()).open(&path);
            let Some(op) = inj.fired() else {
                opened.unwrap_or_else(|e| panic!("{what}: nothing injected, yet: {e}"));
                break;
            };
            points += 1;
            let err = opened.expect_err("the injected failure");
            println!("{what}: {op} -> open returned: {err}");
            assert_injected(&err, &what);

            let store = Store::open(&path).unwrap_or_else(|e| panic!("{what}: retry: {e}"));
            assert!(store.is_empty(), "{what}: a new store holds nothing");
            store.put(b"k", b"v").expect("put");
            store.sync().expect("sync");
            store.close().expect("close");
            let model = Model::from([(b"k".to_vec(), b"v".to_vec())]);
            reopen_and_check(&path, &model, &model, &what);
        }
        assert!(points > 0, "creating a store performs no {kind:?}");
    }
}

/// Builds a store that crashed with 900 keys (600 synced), optionally losing its index.
fn crashed_store(path: &Path, lose_index: bool) -> (Model, Model) {
    let store = Store::open(path).expect("create");
    let mut acked = Model::new();
    for i in 0..600 {
        put_ok(&store, &mut acked, i, 0, 24);
    }
    store.sync().expect("sync");
    let synced = acked.clone();
    for i in 600..900 {
        put_ok(&store, &mut acked, i, 0, 24);
    }
    store.simulate_crash();
    // As after a restart, so that open rebuilds (resuming does none of these operations
    // unless a write was torn; tests/resume.rs covers it).
    mapkv::testing::adopt_page(path, true).expect("reboot the page");
    if lose_index {
        fs::remove_file(path.join("index.mkv")).expect("remove index");
    }
    (synced, acked)
}

/// Every failure point of recovery after a crash (rebuilding a dirty or lost index, which
/// grows while it is rebuilt, zeroing the tail, the header, the directory): open returns
/// the error, and a retry recovers everything.
#[test]
fn injected_failures_during_recovery_lose_nothing() {
    let _serial = serial();
    for lose_index in [false, true] {
        for kind in OPEN_KINDS {
            let mut points = 0;
            for n in 0..16 {
                let what = format!("recovery (index lost: {lose_index}), {kind:?} #{n}");
                let tmp = tempfile::tempdir().expect("tempdir");
                let path = tmp.path().join("db");
                let (synced, acked) = crashed_store(&path, lose_index);
                let inj = Injector::new(kind, None, n);
                inj.arm();
                let opened = OpenOptions::new().observer(inj.clone()).open(&path);
                let Some(op) = inj.fired() else {
                    let store = opened.unwrap_or_else(|e| panic!("{what}: not injected: {e}"));
                    check_exact(&store, &acked, &what);
                    break;
                };
                points += 1;
                let err = opened.expect_err("the injected failure");
                println!("{what}: {op} -> open returned: {err}");
                assert_injected(&err, &what);
                let rebuilt = reopen_and_check(&path, &synced, &acked, &what);
                assert!(rebuilt, "{what}: the retry must recover");
            }
            assert!(points > 0, "recovery (index lost: {lose_index}) performs no {kind:?}");
        }
    }
}

/// DESIGN.md §5: "when open creates the directory, it fsyncs the parent so the directory's
/// name is durable before anything synced inside it". If that fsync fails, open returns the
/// error; the retry finds the directory already there and never fsyncs the parent, so the
/// store's name may never become durable while data synced inside it is.
#[test]
fn a_retried_open_redoes_the_failed_parent_fsync() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("db");
    let inj = Injector::new(Kind::SyncDir, None, 0);
    inj.arm();
    let err = OpenOptions::new().observer(inj.clone()).open(&path).expect_err("injected");
    assert_injected(&err, "parent fsync");
    assert_eq!(io_path(&err), Some(tmp.path()), "the failed fsync was the parent's: {err}");

    let watch = Injector::new(Kind::SyncDir, None, 0); // never armed: records only
    let store = OpenOptions::new().observer(watch.clone()).open(&path).expect("retry");
    store.put(b"k", b"v").expect("put");
    store.sync().expect("sync");
    let parent_synced = watch.seen().iter().any(|(k, p)| *k == Kind::SyncDir && p == tmp.path());
    assert!(
        parent_synced,
        "data was synced inside {} but its parent was never fsynced; operations: {:?}",
        path.display(),
        watch.seen()
    );
}

/// A process being spawned holds a copy of every descriptor of this one until its exec,
/// the writer's lock among them. A closed writer must still leave the store free at once:
/// the lock is released for every copy, so the next writer opens (no `Locked`) and a
/// read-only handle reads alone instead of following a writer that is gone (what made
/// `mapkv recover` refuse, saying a writer was running, right after a close).
#[test]
fn a_closed_writer_frees_the_store_while_another_thread_spawns_a_process() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let writer = Store::open(&path).expect("writer");
    writer.put(b"k", b"v").expect("put");
    let (forked_tx, forked_rx) = std::sync::mpsc::channel();
    let spawner = thread::spawn(move || {
        let mut cmd = Command::new("true");
        // SAFETY: the closure runs in the child between fork and exec and only sleeps (no
        // allocation, no locks): long enough for the parent to close the writer meanwhile.
        unsafe {
            cmd.pre_exec(|| {
                std::thread::sleep(Duration::from_millis(500));
                Ok(())
            });
        }
        forked_tx.send(()).expect("send");
        cmd.status().expect("spawn true")
    });
    forked_rx.recv().expect("about to fork");
    thread::sleep(Duration::from_millis(100)); // the child has forked and holds the copies
    writer.close().expect("close");
    let started = Instant::now();
    let reader = OpenOptions::new().read_only(true).open(&path).expect("read-only open");
    assert!(!reader.stats().following, "a read-only handle followed a writer that is gone");
    drop(reader);
    let next = Store::open(&path).expect("the next writer opens while the child lives");
    assert!(started.elapsed() < Duration::from_millis(300), "the child was still in its sleep");
    assert_eq!(next.get(b"k").expect("get").as_deref(), Some(&b"v"[..]));
    drop(next);
    assert!(spawner.join().expect("join").success());
}
