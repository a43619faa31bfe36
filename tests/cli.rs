//! The `mapkv` command-line inspector, run as a real binary: every subcommand, exit codes,
//! damaged and torn stores through `verify` and `recover`, and `dump | load` round trips of
//! binary keys and values.
#![cfg(feature = "cli")] // the binary exists only with the `cli` feature

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions as FsOpen};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use mapkv::{OpenOptions, Store};
use predicates::prelude::*;
use serde_json::Value as Json;
use tempfile::TempDir;

const DATA_START: u64 = 8192;
/// A record with a 4-byte key and an 8-byte value: 24 header + 8 key (padded) + 8 value.
const REC: u64 = 40;

// ---- helpers ----------------------------------------------------------------------------

fn mapkv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mapkv"))
}

fn fresh() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    (dir, path)
}

fn key(i: u32) -> [u8; 4] {
    i.to_le_bytes()
}

/// Distinct for every `i`; byte 4 is never 1 or 2, so no value reads as a record header.
fn val(i: u32) -> [u8; 8] {
    let mut v = (u64::from(i) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes();
    v[4] = 0xC3;
    v
}

/// Offset of the record of key `i` in a store filled with keys in order, no deletes.
fn rec(i: u32) -> u64 {
    DATA_START + u64::from(i) * REC
}

/// A cleanly closed store holding keys `0..n`.
fn clean_store(n: u32) -> (TempDir, PathBuf) {
    let (d, path) = fresh();
    let store = Store::open(&path).expect("create");
    for i in 0..n {
        store.put(key(i), val(i)).expect("put");
    }
    store.close().expect("clean close");
    (d, path)
}

fn patch(file: &Path, offset: u64, bytes: &[u8]) {
    let f = FsOpen::new().write(true).open(file).expect("open for patching");
    f.write_all_at(bytes, offset).expect("patch");
}

/// Every live pair, read through the library.
fn contents(path: &Path) -> HashMap<Vec<u8>, Vec<u8>> {
    let store = OpenOptions::new().read_only(true).open(path).expect("open read-only");
    let pairs = store.iter().map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())));
    pairs.collect::<mapkv::Result<_>>().expect("iterate")
}

fn stdout_of(cmd: &mut Command) -> Vec<u8> {
    cmd.assert().success().get_output().stdout.clone()
}

fn json_of(cmd: &mut Command) -> Json {
    serde_json::from_slice(&cmd.assert().get_output().stdout).expect("one JSON object")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Keys and values that a text format would mangle.
fn awkward_pairs() -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (b"plain".to_vec(), b"text value".to_vec()),
        (b"\x00".to_vec(), b"\x00\x00\x00".to_vec()),
        (b"\xff\xfe".to_vec(), b"\xff".to_vec()),
        (b"new\nline".to_vec(), b"a\nb\r\n".to_vec()),
        (b"quote\"back\\slash".to_vec(), b"{\"json\":true}".to_vec()),
        ("unicod\u{e9} \u{1f600}".as_bytes().to_vec(), "\u{202e}rtl".as_bytes().to_vec()),
        (b"half \xc3".to_vec(), b"\xc3\x28 invalid utf-8".to_vec()),
        (b"empty value".to_vec(), Vec::new()),
        (b"big".to_vec(), (0..100_000u32).map(|i| (i % 251) as u8).collect()),
    ]
}

// ---- usage and missing stores -----------------------------------------------------------

#[test]
fn usage_errors_exit_2() {
    let (_d, path) = clean_store(1);
    mapkv().assert().code(2);
    mapkv().arg("frobnicate").assert().code(2);
    mapkv().args(["get"]).arg(&path).assert().code(2).stderr(predicate::str::contains("KEY"));
    mapkv().args(["get", "--hex", "--base64"]).arg(&path).arg("00").assert().code(2);
    mapkv()
        .args(["get", "--hex"])
        .arg(&path)
        .arg("0g")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("KEY is not valid hexadecimal"));
    mapkv()
        .args(["put", "--base64"])
        .arg(&path)
        .args(["AA==", "!!"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("VALUE is not valid base64"));
    mapkv().args(["keys", "--limit", "many"]).arg(&path).assert().code(2);
    mapkv().args(["load", "--batch-size", "0"]).arg(&path).assert().code(2);
    mapkv().arg("--help").assert().success().stdout(predicate::str::contains("recover"));
    mapkv().args(["dump", "--help"]).assert().success().stdout(predicate::str::contains("key_b64"));
}

#[test]
fn a_missing_store_is_a_clear_failure_and_only_created_on_request() {
    let (_d, path) = fresh();
    for args in [&["stats"][..], &["get"], &["keys"], &["dump"], &["verify"], &["compact"]] {
        let mut cmd = mapkv();
        cmd.args(args).arg(&path);
        if args == ["get"] {
            cmd.arg("k");
        }
        cmd.assert().code(1).stderr(predicate::str::contains("no mapkv store at"));
    }
    mapkv().arg("put").arg(&path).args(["k", "v"]).assert().code(1);
    assert!(!path.exists(), "a failed command created the store");
    mapkv().args(["put", "--create"]).arg(&path).args(["k", "v"]).assert().success();
    assert_eq!(contents(&path), HashMap::from([(b"k".to_vec(), b"v".to_vec())]));
}

#[test]
fn read_only_commands_follow_a_live_writer_and_writing_ones_are_refused_clearly() {
    let (_d, path) = clean_store(3);
    let writer = Store::open(&path).expect("writer");
    // Written after the open and never synced: a follower still sees it.
    writer.put(b"fresh", b"from the writer").expect("put");
    writer.put(b"gone", b"soon").expect("put");
    writer.delete(b"gone").expect("delete");
    let got = stdout_of(mapkv().arg("get").arg(&path).arg("fresh"));
    assert_eq!(got, b"from the writer");
    mapkv().arg("get").arg(&path).arg("gone").assert().code(1);
    let stats = json_of(mapkv().args(["stats", "--json"]).arg(&path));
    assert_eq!(stats["live_keys"], 4, "{stats}");
    assert_eq!(stats["writer_open"], true, "{stats}");
    assert_eq!(stats["closed_cleanly"], false, "{stats}");
    let keys = stdout_of(mapkv().arg("keys").arg(&path));
    assert_eq!(String::from_utf8_lossy(&keys).lines().count(), 4);
    mapkv().arg("verify").arg(&path).assert().success();
    mapkv().arg("put").arg(&path).args(["k", "v"]).assert().code(1).stderr(
        predicate::str::contains("open for writing by another process")
            .and(predicate::str::contains("read-only commands")),
    );
    drop(writer);
    let stats = json_of(mapkv().args(["stats", "--json"]).arg(&path));
    assert_eq!(stats["closed_cleanly"], true, "{stats}");
    assert_eq!(stats["writer_open"], false, "{stats}");
}

// ---- get, put, delete, keys -------------------------------------------------------------

#[test]
fn put_get_delete_and_their_exit_codes() {
    let (_d, path) = fresh();
    mapkv()
        .args(["put", "--create"])
        .arg(&path)
        .args(["greeting", "hello\nworld"])
        .assert()
        .success();
    let store = OpenOptions::new().read_only(true).open(&path).expect("open");
    assert!(!store.recovery().index_rebuilt, "put left the store unclean");
    drop(store);
    // To a pipe the value is exactly its bytes: no newline added, none escaped.
    let out = stdout_of(mapkv().arg("get").arg(&path).arg("greeting"));
    assert_eq!(out, b"hello\nworld");
    mapkv()
        .arg("get")
        .arg(&path)
        .arg("absent")
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::contains("key not found"));
    mapkv().arg("put").arg(&path).args(["greeting", "bye"]).assert().success();
    assert_eq!(stdout_of(mapkv().arg("get").arg(&path).arg("greeting")), b"bye");
    mapkv().arg("delete").arg(&path).arg("greeting").assert().success();
    mapkv().arg("get").arg(&path).arg("greeting").assert().code(1);
    mapkv()
        .arg("delete")
        .arg(&path)
        .arg("greeting")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("nothing deleted"));
    mapkv().args(["delete", "--force"]).arg(&path).arg("greeting").assert().success();
    // Durable and visible to the library, closed cleanly.
    let store = OpenOptions::new().read_only(true).open(&path).expect("open");
    assert!(store.is_empty());
    assert!(!store.recovery().index_rebuilt, "the CLI left the store unclean");
}

#[test]
fn hex_and_base64_decode_arguments_and_encode_output() {
    let (_d, path) = fresh();
    mapkv()
        .args(["put", "--create", "--hex"])
        .arg(&path)
        .args(["00ff0a", "DEADbeef"])
        .assert()
        .success();
    let pairs = contents(&path);
    assert_eq!(pairs[&b"\x00\xff\n"[..]], b"\xde\xad\xbe\xef");
    let b64 = stdout_of(mapkv().args(["get", "--base64"]).arg(&path).arg("AP8K"));
    assert_eq!(b64, b"3q2+7w==\n");
    let hex = stdout_of(mapkv().args(["get", "--hex"]).arg(&path).arg("00ff0a"));
    assert_eq!(hex, b"deadbeef\n");
    // Raw to a pipe, the exact bytes.
    mapkv().args(["put", "--hex"]).arg(&path).args(["6b", "00ff0a"]).assert().success();
    assert_eq!(stdout_of(mapkv().arg("get").arg(&path).arg("k")), b"\x00\xff\n");
}

#[test]
fn keys_lists_with_prefix_and_limit() {
    let (_d, path) = fresh();
    let store = Store::open(&path).expect("create");
    for k in ["user:1", "user:2", "user:3", "order:1", "order:2"] {
        store.put(k, "v").expect("put");
    }
    store.put("user:\n4", "v").expect("put");
    store.close().expect("close");

    let lines = |out: Vec<u8>| -> Vec<String> {
        let mut l: Vec<String> = text(&out).lines().map(str::to_string).collect();
        l.sort();
        l
    };
    let all = lines(stdout_of(mapkv().args(["keys", "--hex"]).arg(&path)));
    assert_eq!(all.len(), 6);
    assert!(all.contains(&"757365723a0a34".to_string()), "{all:?}");
    let users = lines(stdout_of(mapkv().args(["keys", "--prefix", "user:"]).arg(&path)));
    // Raw to a pipe: the key with a newline spans two lines.
    assert_eq!(users, ["4", "user:", "user:1", "user:2", "user:3"]);
    let orders = lines(stdout_of(mapkv().args(["keys", "--prefix", "order:"]).arg(&path)));
    assert_eq!(orders, ["order:1", "order:2"]);
    let one =
        lines(stdout_of(mapkv().args(["keys", "--limit", "1", "--prefix", "order"]).arg(&path)));
    assert!(one == ["order:1"] || one == ["order:2"], "{one:?}");
    let three = lines(stdout_of(mapkv().args(["keys", "--limit", "3"]).arg(&path)));
    assert!((3..=4).contains(&three.len()), "{three:?}"); // 4 if the key with a newline is among them
    let hex_prefix =
        lines(stdout_of(mapkv().args(["keys", "--hex", "--prefix", "6f72"]).arg(&path)));
    assert_eq!(hex_prefix, ["6f726465723a31", "6f726465723a32"]);
    assert!(stdout_of(mapkv().args(["keys", "--limit", "0"]).arg(&path)).is_empty());
}

#[test]
fn values_to_a_terminal_are_escaped() {
    let (_d, path) = fresh();
    let store = Store::open(&path).expect("create");
    store.put("k", b"a\nb\x1b[31m\xff").expect("put");
    store.close().expect("close");
    // `script` runs the command with a terminal as its stdout.
    let cmd = format!("{} get {} k", env!("CARGO_BIN_EXE_mapkv"), path.display());
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("script (util-linux) runs");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout).trim_end(), r"a\nb\x1b[31m\xff");
}

// ---- stats ------------------------------------------------------------------------------

#[test]
fn stats_reports_figures_as_text_and_json() {
    let (_d, path) = fresh();
    let store = Store::open(&path).expect("create");
    for i in 0..10 {
        store.put(key(i), val(i)).expect("put");
    }
    store.put(key(0), val(100)).expect("overwrite");
    assert!(store.delete(key(1)).expect("delete"));
    let id = store.id();
    store.close().expect("close");

    let out = text(&stdout_of(mapkv().arg("stats").arg(&path)));
    for line in ["format version     1", "live keys          9", "closed cleanly     yes"] {
        assert!(out.contains(line), "{line:?} missing from\n{out}");
    }
    assert!(out.contains(&format!("{id:#018x}")), "{out}");

    let v = json_of(mapkv().args(["stats", "--json"]).arg(&path));
    assert_eq!(v["format_version"], 1);
    assert_eq!(v["store_id"], format!("{id:#018x}"));
    assert_eq!(v["live_keys"], 9);
    assert_eq!(v["records"], 12);
    assert_eq!(v["closed_cleanly"], true);
    assert_eq!(v["committed"], v["log_end"]);
    assert_eq!(v["log_end"], rec(11) + 24 + 8); // 11 records, then a tombstone (key, no value)
    assert!(v["garbage_ratio"].as_f64().expect("ratio") > 0.0);
    assert_eq!(v["data_file_bytes"], 1 << 20);
    assert!(v["torn_tail"].is_null());

    // After a crash: not closed cleanly, and nothing changed by looking.
    let store = Store::open(&path).expect("open");
    store.put(key(50), val(50)).expect("put");
    store.simulate_crash();
    let before = fs::read(path.join("data.mkv")).expect("read");
    let v = json_of(mapkv().args(["stats", "--json"]).arg(&path));
    assert_eq!(v["closed_cleanly"], false);
    assert_eq!(v["live_keys"], 10);
    // Killed in this boot: resumed from the writer's last checkpoint, not rebuilt.
    assert!(v["index_rebuilt_because"].is_null(), "{v}");
    assert_eq!(v["index_resumed_from"], rec(11) + 24 + 8 + rec(1) - rec(0));
    let out = text(&stdout_of(mapkv().arg("stats").arg(&path)));
    assert!(out.contains("closed cleanly     no: the killed writer's index resumed"), "{out}");
    assert!(fs::read(path.join("data.mkv")).expect("read") == before, "stats wrote");
}

// ---- dump and load ----------------------------------------------------------------------

#[test]
fn dump_load_round_trips_binary_keys_and_values_exactly() {
    let (_d, path) = fresh();
    let store = Store::open(&path).expect("create");
    for (k, v) in awkward_pairs() {
        store.put(k, v).expect("put");
    }
    store.put("gone", "x").expect("put");
    store.delete("gone").expect("delete");
    store.put("plain", "overwritten").expect("overwrite");
    store.close().expect("close");
    let expected = contents(&path);
    assert_eq!(expected.len(), awkward_pairs().len());

    let dump = stdout_of(mapkv().arg("dump").arg(&path));
    let dump_text = text(&dump);
    assert_eq!(dump_text.lines().count(), expected.len());
    assert!(dump_text.contains(r#"{"key":"plain","value":"overwritten"}"#), "{dump_text}");
    assert!(dump_text.contains(r#""key_b64":"//4=""#), "{dump_text}"); // 0xff 0xfe
    assert!(dump_text.contains(r#""value_b64":"wyggaW52YWxpZCB1dGYtOA==""#), "{dump_text}");

    for flags in [&[][..], &["--base64"], &["--hex"]] {
        let dump = stdout_of(mapkv().arg("dump").args(flags).arg(&path));
        let (_d2, copy) = fresh();
        mapkv()
            .arg("load")
            .arg(&copy)
            .write_stdin(dump.clone())
            .assert()
            .success()
            .stdout(predicate::str::contains(format!("loaded {} pairs", expected.len())));
        assert_eq!(contents(&copy), expected, "dump {flags:?} | load");
        // And dumping the copy gives the same lines (the order may differ).
        let sorted = |b: &[u8]| {
            let mut l: Vec<String> = text(b).lines().map(str::to_string).collect();
            l.sort();
            l
        };
        let again = stdout_of(mapkv().arg("dump").args(flags).arg(&copy));
        assert_eq!(sorted(&again), sorted(&dump));
    }
}

#[test]
fn load_reads_a_file_in_batches_and_overwrites_existing_keys() {
    let (d, path) = clean_store(3);
    let input = d.path().join("in.jsonl");
    let mut lines = String::new();
    for i in 0..25 {
        lines.push_str(&format!("{{\"key\":\"k{i}\",\"value_hex\":\"{i:02x}\"}}\n"));
    }
    lines.push_str("\n   \n"); // blank lines are skipped
    lines.push_str(&format!("{{\"key_hex\":\"{}\",\"value\":\"new\"}}\r\n", "00000000"));
    fs::write(&input, lines).expect("write input");
    mapkv()
        .args(["load", "--batch-size", "7"])
        .arg(&path)
        .arg(&input)
        .assert()
        .success()
        .stdout(predicate::str::contains("loaded 26 pairs"));
    let pairs = contents(&path);
    assert_eq!(pairs.len(), 28); // keys 1 and 2 of the old store, 25 + the overwritten key 0
    assert_eq!(pairs[&b"k24"[..]], [24]);
    assert_eq!(pairs[&key(0)[..]], b"new");
    assert_eq!(pairs[&key(2)[..]], val(2));
}

#[test]
fn a_malformed_line_names_its_number_and_writes_nothing_of_its_batch() {
    let (_d, path) = fresh();
    let good = |i: u32| format!("{{\"key\":\"k{i}\",\"value\":\"v{i}\"}}\n");
    let mut input: String = (0..5).map(good).collect();
    input.push_str("{\"key\":\"k5\"}\n"); // line 6: no value
    input.push_str(&good(6));
    mapkv()
        .args(["load", "--batch-size", "2"])
        .arg(&path)
        .write_stdin(input)
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("stdin:6: no value")
                .and(predicate::str::contains("nothing from line 5 on was written"))
                .and(predicate::str::contains("the 4 pairs before it")),
        );
    let loaded: BTreeMap<_, _> = contents(&path).into_iter().collect();
    let expected: BTreeMap<_, _> =
        (0..4).map(|i| (format!("k{i}").into_bytes(), format!("v{i}").into_bytes())).collect();
    assert_eq!(loaded, expected);

    for (line, message) in [
        ("not json\n", "not a JSON object"),
        ("{\"key\":\"a\",\"value\":\"b\",\"extra\":1}\n", "unknown field \"extra\""),
        ("{\"key\":\"a\",\"key_b64\":\"YQ==\",\"value\":\"b\"}\n", "both \"key\" and \"key_b64\""),
        ("{\"key\":\"a\",\"value_b64\":\"%%\"}\n", "\"value_b64\" is not valid base64"),
        ("{\"key\":\"a\",\"value_hex\":\"abc\"}\n", "\"value_hex\" is not valid hexadecimal"),
        ("{\"key\":1,\"value\":\"b\"}\n", "\"key\" is not a string"),
    ] {
        mapkv()
            .arg("load")
            .arg(&path)
            .write_stdin(format!("{}{line}", good(9)))
            .assert()
            .code(1)
            .stderr(predicate::str::contains(format!("stdin:2: {message}")));
    }
    assert!(!contents(&path).contains_key(&b"k9"[..]), "a failed batch was written");
}

// ---- verify -----------------------------------------------------------------------------

#[test]
fn verify_passes_a_sound_store() {
    let (_d, path) = clean_store(20);
    mapkv().arg("verify").arg(&path).assert().success().stdout(
        predicate::str::contains("20 records, 20 live keys")
            .and(predicate::str::ends_with("sound\n")),
    );
    let v = json_of(mapkv().args(["verify", "--json"]).arg(&path));
    assert_eq!(v["ok"], true);
    assert_eq!(v["live_keys"], 20);
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(0));
}

#[test]
fn verify_lists_damage_with_file_and_offset_and_exits_1() {
    let (_d, path) = clean_store(10);
    let data = path.join("data.mkv");
    patch(&data, rec(3) + 32, b"\x00"); // inside key 3's value: its checksum fails
    let before = fs::read(&data).expect("read");

    let expected = format!("{} at byte {}: checksum mismatch", data.display(), rec(3));
    mapkv().arg("verify").arg(&path).assert().code(1).stdout(
        predicate::str::contains(expected).and(predicate::str::contains("damaged: 1 problem")),
    );
    let v = json_of(mapkv().args(["verify", "--json"]).arg(&path));
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"][0]["file"], data.display().to_string());
    assert_eq!(v["problems"][0]["offset"], rec(3));
    assert_eq!(v["problems"][0]["kind"], "ChecksumMismatch");

    // Reads of the damaged key fail (checksums are verified); the others still work.
    mapkv()
        .arg("get")
        .arg(&path)
        .arg("--hex")
        .arg("03000000")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("damaged").and(predicate::str::contains("mapkv verify")));
    mapkv().args(["get", "--hex"]).arg(&path).arg("04000000").assert().success();
    mapkv().arg("dump").arg(&path).assert().code(1);
    let salvage = mapkv().args(["dump", "--skip-damaged"]).arg(&path).assert().code(1);
    assert_eq!(text(&salvage.get_output().stdout).lines().count(), 9);
    assert!(fs::read(&data).expect("read") == before, "inspection changed the file");
}

#[test]
fn damage_below_the_committed_length_stops_recover_and_verify_names_it() {
    let (_d, path) = clean_store(10);
    let data = path.join("data.mkv");
    patch(&data, rec(5) + 32, b"\x00");
    // Without its index the store must be rebuilt from the log, which meets the damage.
    fs::remove_file(path.join("index.mkv")).expect("remove index");
    let before = fs::read(&data).expect("read");

    mapkv().arg("recover").arg(&path).assert().code(1).stderr(
        predicate::str::contains(format!("is damaged at byte {}", rec(5)))
            .and(predicate::str::contains("below the committed length"))
            .and(predicate::str::contains("changed nothing")),
    );
    assert!(fs::read(&data).expect("read") == before, "recover changed a damaged store");
    assert!(!path.join("index.mkv").exists());

    mapkv().arg("verify").arg(&path).assert().code(1).stdout(
        predicate::str::contains(format!("{} at byte {}", data.display(), rec(5)))
            .and(predicate::str::contains("does not open")),
    );
    let v = json_of(mapkv().args(["verify", "--json"]).arg(&path));
    assert_eq!((v["ok"].clone(), v["opened"].clone()), (Json::Bool(false), Json::Bool(false)));
    assert_eq!(v["problems"][0]["offset"], rec(5));
}

// ---- recover ----------------------------------------------------------------------------

#[test]
fn recover_rebuild_index_repairs_an_index_damaged_after_a_clean_close() {
    let (_d, path) = clean_store(10);
    let index = path.join("index.mkv");
    let bytes = fs::read(&index).expect("read index");
    // Key 3's slot now names key 4's record: the index disagrees with the log.
    let slot = (4096..bytes.len()) // slots start after the header page
        .step_by(16)
        .find(|&at| bytes[at + 8..at + 16] == rec(3).to_le_bytes())
        .expect("key 3's slot");
    patch(&index, slot as u64 + 8, &rec(4).to_le_bytes());
    mapkv()
        .arg("verify")
        .arg(&path)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("the log is sound: `mapkv recover --rebuild-index"));
    // A plain recover trusts a cleanly closed store; asked, it rebuilds the index.
    mapkv()
        .arg("recover")
        .arg(&path)
        .assert()
        .success()
        .stdout(predicate::str::contains("closed cleanly: nothing to recover"));
    let before = fs::read(&index).expect("read");
    mapkv()
        .args(["recover", "--rebuild-index", "--dry-run"])
        .arg(&path)
        .assert()
        .success()
        .stdout(predicate::str::contains("index     would be rebuilt (a rebuild was asked for)"));
    assert!(fs::read(&index).expect("read") == before, "a dry run changed the index");
    mapkv().args(["recover", "--rebuild-index"]).arg(&path).assert().success().stdout(
        predicate::str::contains("index     rebuilt (a rebuild was asked for)")
            .and(predicate::str::contains("replayed  10 records")),
    );
    mapkv().arg("verify").arg(&path).assert().success();
    let want: HashMap<_, _> = (0..10).map(|i| (key(i).to_vec(), val(i).to_vec())).collect();
    assert_eq!(contents(&path), want);
}

#[test]
fn recover_cuts_a_torn_tail_and_says_exactly_what() {
    let (d, path) = fresh();
    let store = Store::open(&path).expect("create");
    for i in 0..5 {
        store.put(key(i), val(i)).expect("put");
    }
    store.simulate_crash();
    let data = path.join("data.mkv");
    // The last record, torn: the page holding its value never reached the disk (a power
    // cut, so the next open is in another boot and rebuilds).
    mapkv::testing::adopt_page(&path, true).expect("reboot the page");
    patch(&data, rec(4) + 32, &[0xAB; 8]);
    let before = fs::read(&data).expect("read");

    // Inspection sees the torn tail and changes nothing.
    let v = json_of(mapkv().args(["stats", "--json"]).arg(&path));
    assert_eq!(v["torn_tail"]["offset"], rec(4));
    mapkv().arg("verify").arg(&path).assert().success().stdout(
        predicate::str::contains(format!("torn tail at byte {}", rec(4)))
            .and(predicate::str::contains("sound")),
    );
    mapkv().args(["recover", "--dry-run"]).arg(&path).assert().success().stdout(
        predicate::str::contains("would recover")
            .and(predicate::str::contains(format!(
                "cut       at byte {}: checksum mismatch",
                rec(4)
            )))
            .and(predicate::str::contains(format!(
                "bytes {}..{} (40 bytes) would be discarded",
                rec(4),
                rec(5)
            )))
            .and(predicate::str::contains("nothing was changed")),
    );
    assert!(fs::read(&data).expect("read") == before, "a dry run changed the file");

    let saved = d.path().join("tail.bin");
    mapkv().arg("recover").arg(&path).arg("--save-tail").arg(&saved).assert().success().stdout(
        predicate::str::contains("recovered")
            .and(predicate::str::contains(
                "index     rebuilt (the store was not closed cleanly, and it could not resume: \
                 the machine restarted",
            ))
            .and(predicate::str::contains("replayed  4 records"))
            .and(predicate::str::contains(format!("log end   byte {}", rec(4))))
            .and(predicate::str::contains(format!(
                "cut       at byte {}: checksum mismatch",
                rec(4)
            )))
            .and(predicate::str::contains(format!(
                "bytes {}..{} (40 bytes) discarded and zeroed",
                rec(4),
                rec(5)
            ))),
    );
    let torn = &before[rec(4) as usize..rec(5) as usize];
    assert_eq!(fs::read(&saved).expect("saved tail"), torn);
    // The tail is gone, the rest kept, and the store closed cleanly.
    let after = fs::read(&data).expect("read");
    assert!(after[rec(4) as usize..rec(5) as usize].iter().all(|&b| b == 0));
    let records = DATA_START as usize..rec(4) as usize;
    assert!(after[records.clone()] == before[records], "records below the cut changed");
    let store = OpenOptions::new().read_only(true).open(&path).expect("open");
    assert!(!store.recovery().index_rebuilt);
    assert_eq!(store.len(), 4);
    drop(store);
    mapkv()
        .arg("recover")
        .arg(&path)
        .assert()
        .success()
        .stdout(predicate::str::contains("was closed cleanly: nothing to recover"));
    mapkv().arg("verify").arg(&path).assert().success();
    // --save-tail never overwrites a file.
    let store = Store::open(&path).expect("open");
    store.put(key(9), val(9)).expect("put");
    store.simulate_crash();
    mapkv::testing::adopt_page(&path, true).expect("reboot the page"); // a power cut
    patch(&data, rec(4) + 32, &[0xAB; 8]);
    let before = fs::read(&data).expect("read");
    mapkv()
        .arg("recover")
        .arg(&path)
        .arg("--save-tail")
        .arg(&saved)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("File exists"));
    assert!(fs::read(&data).expect("read") == before, "cut without saving the tail");
}

#[test]
fn recover_after_a_crash_without_a_torn_tail_cuts_nothing() {
    let (_d, path) = fresh();
    let store = Store::open(&path).expect("create");
    for i in 0..5 {
        store.put(key(i), val(i)).expect("put");
    }
    store.simulate_crash();
    // Killed in this boot: the index is resumed from the writer's last checkpoint (past
    // all five puts, so nothing is replayed).
    mapkv().arg("recover").arg(&path).assert().success().stdout(
        predicate::str::contains(format!(
            "index     resumed from the killed writer's last checkpoint, at byte {}",
            rec(5)
        ))
        .and(predicate::str::contains("replayed  0 records"))
        .and(predicate::str::contains("cut       nothing")),
    );
    assert_eq!(contents(&path).len(), 5);
    // After a restart, the same crash rebuilds the index from the whole log.
    let store = Store::open(&path).expect("open");
    store.put(key(5), val(5)).expect("put");
    store.simulate_crash();
    mapkv::testing::adopt_page(&path, true).expect("reboot the page");
    mapkv().arg("recover").arg(&path).assert().success().stdout(
        predicate::str::contains("index     rebuilt")
            .and(predicate::str::contains("replayed  6 records"))
            .and(predicate::str::contains("cut       nothing")),
    );
    assert_eq!(contents(&path).len(), 6);
}

#[test]
fn recover_zeroes_nonzero_bytes_past_the_end_of_a_cleanly_closed_store() {
    let (d, path) = clean_store(10);
    let data = path.join("data.mkv");
    let (end, at) = (rec(10), rec(10) + 100);
    patch(&data, at, &[0xCD; 16]);
    let before = fs::read(&data).expect("read");

    let expected =
        format!("{} at byte {at}: nonzero bytes past the end of the log", data.display());
    mapkv().arg("verify").arg(&path).assert().code(1).stdout(
        predicate::str::contains(expected)
            .and(predicate::str::contains(format!("(which ends at byte {end})")))
            .and(predicate::str::contains("run `mapkv recover`"))
            .and(predicate::str::contains("damaged: 1 problem")),
    );
    let v = json_of(mapkv().args(["verify", "--json"]).arg(&path));
    assert_eq!(v["problems"][0]["offset"], at, "{v}");
    assert_eq!(v["problems"][0]["kind"], "NonzeroPastEnd", "{v}");

    mapkv().args(["recover", "--dry-run"]).arg(&path).assert().success().stdout(
        predicate::str::contains("would recover")
            .and(predicate::str::contains("index     kept (the store was closed cleanly)"))
            .and(predicate::str::contains(format!("past end  nonzero bytes from byte {at}")))
            .and(predicate::str::contains(format!(
                "bytes {at}..{} (16 bytes) would be discarded and zeroed",
                at + 16
            )))
            .and(predicate::str::contains("nothing was changed")),
    );
    assert!(fs::read(&data).expect("read") == before, "a dry run changed the file");

    let saved = d.path().join("past.bin");
    mapkv().arg("recover").arg(&path).arg("--save-tail").arg(&saved).assert().success().stdout(
        predicate::str::contains("recovered")
            .and(predicate::str::contains(format!("log end   byte {end}")))
            .and(predicate::str::contains(format!(
                "bytes {at}..{} (16 bytes) discarded and zeroed",
                at + 16
            ))),
    );
    assert_eq!(fs::read(&saved).expect("saved"), [0xCD; 16]);
    let after = fs::read(&data).expect("read");
    assert_eq!(after.len(), before.len());
    assert!(after[end as usize..].iter().all(|&b| b == 0), "not zeroed");
    assert!(after[..end as usize] == before[..end as usize], "the log changed");
    mapkv().arg("verify").arg(&path).assert().success();
    let want: HashMap<_, _> = (0..10).map(|i| (key(i).to_vec(), val(i).to_vec())).collect();
    assert_eq!(contents(&path), want);
    mapkv()
        .arg("recover")
        .arg(&path)
        .assert()
        .success()
        .stdout(predicate::str::contains("was closed cleanly: nothing to recover"));
}

#[test]
fn recover_beside_a_live_writer_refuses_and_changes_nothing() {
    let (_d, path) = clean_store(3);
    let writer = Store::open(&path).expect("writer");
    writer.put(b"fresh", b"unsynced").expect("put");
    let files = || ["data.mkv", "index.mkv"].map(|f| fs::read(path.join(f)).expect("read"));
    let before = files();
    for dry_run in [false, true] {
        let mut cmd = mapkv();
        cmd.arg("recover").arg(&path);
        if dry_run {
            cmd.arg("--dry-run");
        }
        cmd.assert().code(1).stdout(predicate::str::is_empty()).stderr(predicate::str::contains(
            "a writer has this store open (process still running); stop it first, nothing \
                 was changed",
        ));
    }
    assert!(files() == before, "recover changed the files under a live writer");
    // The writer was not disturbed, and once it is gone there is nothing to recover.
    writer.put(b"later", b"still writing").expect("put");
    assert_eq!(writer.get(b"fresh").expect("get").as_deref(), Some(&b"unsynced"[..]));
    writer.close().expect("close");
    mapkv()
        .arg("recover")
        .arg(&path)
        .assert()
        .success()
        .stdout(predicate::str::contains("was closed cleanly: nothing to recover"));
    assert_eq!(contents(&path).len(), 5);
}

// ---- compact ----------------------------------------------------------------------------

#[test]
fn compact_gives_back_garbage_and_keeps_every_pair() {
    let (_d, path) = fresh();
    let store = Store::open(&path).expect("create");
    for round in 0..5 {
        for i in 0..200 {
            store.put(key(i), val(i + round)).expect("put");
        }
    }
    store.close().expect("close");
    let expected = contents(&path);
    let before = json_of(mapkv().args(["stats", "--json"]).arg(&path));
    assert!(before["garbage_ratio"].as_f64().expect("ratio") > 0.7);

    mapkv().arg("compact").arg(&path).assert().success().stdout(
        predicate::str::contains("compacted").and(predicate::str::contains("live keys   200")),
    );
    let after = json_of(mapkv().args(["stats", "--json"]).arg(&path));
    assert_eq!(after["garbage_bytes"], 0);
    assert_eq!(after["closed_cleanly"], true);
    assert!(after["log_bytes"].as_u64() < before["log_bytes"].as_u64());
    assert_eq!(contents(&path), expected);
}

// ---- salvaging damaged data files -------------------------------------------------------

/// A commit record: 24 header + 8 value (the batch's record count).
const COMMIT: u64 = 32;

/// A cleanly closed store of `batches` atomic batches of `per` keys each, keys in order.
fn batched_store(batches: u32, per: u32) -> (TempDir, PathBuf) {
    let (d, path) = fresh();
    let store = Store::open(&path).expect("create");
    for b in 0..batches {
        let mut batch = mapkv::Batch::new();
        for i in b * per..(b + 1) * per {
            batch.put(key(i), val(i));
        }
        store.write(batch).expect("write");
    }
    store.close().expect("clean close");
    (d, path)
}

/// Where batch `b` starts in a [`batched_store`] of `per` keys a batch.
fn batch_at(b: u32, per: u32) -> u64 {
    DATA_START + u64::from(b) * (u64::from(per) * REC + COMMIT)
}

/// The pairs of `dump --hex` output, in order.
fn dumped(stdout: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let hex = |v: &Json| {
        let s = v.as_str().expect("hex string");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    };
    text(stdout)
        .lines()
        .map(|l| {
            let v: Json = serde_json::from_str(l).expect("a JSON line");
            (hex(&v["key_hex"]), hex(&v["value_hex"]))
        })
        .collect()
}

/// The pairs of keys `keys`, as a dump of a store filled in order gives them.
fn pairs_of(keys: impl IntoIterator<Item = u32>) -> Vec<(Vec<u8>, Vec<u8>)> {
    keys.into_iter().map(|i| (key(i).to_vec(), val(i).to_vec())).collect()
}

fn stderr_of(out: &assert_cmd::assert::Assert) -> String {
    text(&out.get_output().stderr)
}

/// Every file of a store directory, by name, to check that nothing changed.
fn files_of(path: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(path)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("entry");
            (e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).expect("read"))
        })
        .collect()
}

#[test]
fn a_data_file_cut_short_is_salvaged_up_to_the_record_cut() {
    let per = 4;
    // Cut inside the third record of batch 3, and exactly where batch 3 starts.
    for (cut, damage, kept, dropped) in [
        (batch_at(3, per) + 2 * REC + 12, batch_at(3, per) + 2 * REC, 12, 2),
        (batch_at(3, per), batch_at(3, per), 12, 0),
    ] {
        let (_d, path) = batched_store(5, per);
        let data = path.join("data.mkv");
        let committed = batch_at(5, per);
        FsOpen::new().write(true).open(&data).expect("open").set_len(cut).expect("truncate");
        let before = files_of(&path);
        let what = format!("{} is damaged at byte {damage}", data.display());
        let fault = format!("length reaches byte {committed}, past the end at {cut}");
        let mut intact =
            format!("the {kept} records before the damage at byte {damage} are intact");
        if dropped > 0 {
            intact += &format!(" ({dropped} records of batches the damage broke are not");
        }

        // Without the flag: the real offset, what is intact, and the way to salvage it.
        let out = mapkv().args(["dump", "--hex"]).arg(&path).assert().code(1);
        let err = stderr_of(&out);
        for want in [&what, &fault, &intact, "dump --skip-damaged"] {
            assert!(err.contains(want), "dump (cut at {cut}): no {want:?} in {err}");
        }
        assert!(out.get_output().stdout.is_empty());

        let out = mapkv().args(["dump", "--hex", "--skip-damaged"]).arg(&path).assert().code(1);
        assert_eq!(dumped(&out.get_output().stdout), pairs_of(0..kept), "cut at {cut}");
        let err = stderr_of(&out);
        let line = format!("mapkv: {} at byte {damage}: {fault}", data.display());
        assert!(err.contains(&line), "dump --skip-damaged (cut at {cut}): {err}");
        assert!(err.contains(&intact), "dump --skip-damaged (cut at {cut}): {err}");
        assert!(err.contains(&format!("dumped the {kept} pairs they hold")), "{err}");
        if dropped > 0 {
            let knock_on = format!(
                "mapkv:   knock-on: {} at byte {}: a batch of {dropped} records without its commit",
                data.display(),
                batch_at(3, per)
            );
            assert!(err.contains(&knock_on), "{err}");
        }

        for dry_run in [true, false] {
            let mut cmd = mapkv();
            cmd.arg("recover").arg(&path);
            if dry_run {
                cmd.arg("--dry-run");
            }
            let err = stderr_of(&cmd.assert().code(1));
            let intact = intact.replacen("the", "The", 1);
            for want in [&what, &fault, "changed nothing", &intact, "dump --skip-damaged"] {
                assert!(err.contains(want), "recover (cut at {cut}): no {want:?} in {err}");
            }
        }

        let out = mapkv().arg("verify").arg(&path).assert().code(1);
        let stdout = text(&out.get_output().stdout);
        let head = format!("{} records intact before the damage, 0 past it", kept);
        assert!(stdout.contains(&head), "verify (cut at {cut}): {stdout}");
        assert!(stdout.contains(&format!("{} at byte {damage}: {fault}", data.display())));
        let verdict = if dropped > 0 {
            "damaged: 1 problem (and 1 knock-on)"
        } else {
            "damaged: 1 problem\n"
        };
        assert!(stdout.contains(verdict), "verify (cut at {cut}): {stdout}");
        let v = json_of(mapkv().args(["verify", "--json"]).arg(&path));
        assert_eq!(v["problems"][0]["offset"], damage, "{v}");
        assert_eq!(v["problems"][0]["kind"], "LengthPastEnd", "{v}");
        assert_eq!(v["intact"]["records_before_damage"], kept, "{v}");
        assert_eq!(v["intact"]["records_in_broken_batches"], dropped, "{v}");
        if dropped > 0 {
            assert_eq!(v["problems"][1]["offset"], batch_at(3, per), "{v}");
            assert_eq!(v["problems"][1]["knock_on_of"], 0, "{v}");
        }
        assert!(files_of(&path) == before, "cut at {cut}: salvaging changed the store");
    }
}

#[test]
fn garbage_in_the_middle_is_skipped_and_the_records_past_it_are_found_again() {
    let (_d, path) = clean_store(20);
    let data = path.join("data.mkv");
    patch(&data, rec(8), &[0xA5; 2 * REC as usize]); // keys 8 and 9 overwritten
    let survivors: Vec<u32> = (0..20).filter(|i| !(8..10).contains(i)).collect();

    // The index is intact: the store opens, and the pairs whose records are gone are
    // skipped, each named by where its record should be.
    let out = mapkv().args(["dump", "--hex"]).arg(&path).assert().code(1);
    let err = stderr_of(&out);
    assert!(err.contains("cannot read a pair") && err.contains("--skip-damaged"), "{err}");
    assert!(
        [rec(8), rec(9)].iter().any(|r| err.contains(&format!("byte {r} of the data"))),
        "{err}"
    );
    let out = mapkv().args(["dump", "--hex", "--skip-damaged"]).arg(&path).assert().code(1);
    let mut got = dumped(&out.get_output().stdout);
    got.sort();
    let mut want = pairs_of(survivors.iter().copied());
    want.sort();
    assert_eq!(got, want);
    let err = stderr_of(&out);
    for r in [rec(8), rec(9)] {
        assert!(err.contains(&format!("points at byte {r} of the data file")), "{err}");
    }
    assert!(err.contains("2 damaged pairs skipped; the other 18 were dumped"), "{err}");

    // Without the index the store must be rebuilt from the log and does not open: the
    // data file is read record by record, past the damage too.
    fs::remove_file(path.join("index.mkv")).expect("remove index");
    let before = files_of(&path);
    let intact = format!(
        "the 8 records before the damage at byte {} are intact, and 10 more past it",
        rec(8)
    );
    let out = mapkv().args(["dump", "--hex", "--skip-damaged"]).arg(&path).assert().code(1);
    assert_eq!(dumped(&out.get_output().stdout), pairs_of(survivors.iter().copied()));
    let err = stderr_of(&out);
    let line =
        format!("mapkv: {} at byte {}: invalid record kind or flags 0xa5", data.display(), rec(8));
    assert!(err.contains(&line) && err.contains(&intact), "{err}");
    let err = stderr_of(&mapkv().arg("recover").arg(&path).assert().code(1));
    let what = format!("{} is damaged at byte {}", data.display(), rec(8));
    assert!(err.contains(&what) && err.contains("changed nothing"), "{err}");
    assert!(err.contains(&intact.replacen("the", "The", 1)), "{err}");
    let out = mapkv().arg("verify").arg(&path).assert().code(1);
    let stdout = text(&out.get_output().stdout);
    assert!(stdout.contains("8 records intact before the damage, 10 past it"), "{stdout}");
    assert!(stdout.contains(&format!("{} at byte {}", data.display(), rec(8))), "{stdout}");
    assert!(files_of(&path) == before, "salvaging changed the store");
}

#[test]
fn lost_header_pages_are_damage_and_the_log_is_salvaged() {
    let (_d, path) = clean_store(10);
    let data = path.join("data.mkv");
    patch(&data, 0, &[0; DATA_START as usize]);
    let before = files_of(&path);
    let what = format!("{} is damaged at byte 0: both header copies are damaged", data.display());

    let err = stderr_of(&mapkv().arg("dump").arg(&path).assert().code(1));
    assert!(err.contains(&what) && err.contains("10 records of its log are intact"), "{err}");
    let out = mapkv().args(["dump", "--hex", "--skip-damaged"]).arg(&path).assert().code(1);
    assert_eq!(dumped(&out.get_output().stdout), pairs_of(0..10));
    let err = stderr_of(&mapkv().arg("recover").arg(&path).assert().code(1));
    for want in [&what[..], "A lost header cannot be rebuilt", "changed nothing", "10 records"] {
        assert!(err.contains(want), "recover: no {want:?} in {err}");
    }
    let out = mapkv().arg("verify").arg(&path).assert().code(1);
    let stdout = text(&out.get_output().stdout);
    assert!(stdout.contains("10 records intact before the damage"), "{stdout}");
    assert!(files_of(&path) == before, "salvaging changed the store");

    // The store id that seeds the checksums comes from the index: without it, nothing can
    // be checked, and nothing is dumped.
    fs::remove_file(path.join("index.mkv")).expect("remove index");
    let out = mapkv().args(["dump", "--skip-damaged"]).arg(&path).assert().code(1);
    assert!(out.get_output().stdout.is_empty());
    let err = stderr_of(&out);
    assert!(err.contains("no record's checksum can be checked"), "{err}");
}

#[test]
fn a_data_file_that_was_never_a_store_is_named_so_and_left_alone() {
    // Deterministic bytes that are no mapkv file, as a binary would be.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let binary: Vec<u8> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut cases = vec![
        ("text", "hello, this is not a store\n".repeat(1000).into_bytes(), "magic number"),
        ("binary", binary, "magic number"),
        ("short", b"hi\n".to_vec(), "file is 3 bytes, shorter than the 8192-byte header"),
        ("empty", Vec::new(), "file is 0 bytes"),
    ];
    if let Ok(ls) = fs::read("/bin/ls") {
        cases.push(("/bin/ls", ls, "magic number"));
    }
    for (what, bytes, why) in cases {
        let (_d, path) = clean_store(5);
        let data = path.join("data.mkv");
        fs::write(&data, &bytes).expect("replace data.mkv");
        let before = files_of(&path);
        let not = format!("{} is not a mapkv data file (", data.display());
        for args in [
            &["dump"][..],
            &["dump", "--skip-damaged"],
            &["recover"],
            &["recover", "--dry-run"],
            &["stats"],
        ] {
            let out = mapkv().args(args).arg(&path).assert().code(1);
            assert!(out.get_output().stdout.is_empty(), "{what}: {args:?}");
            let err = stderr_of(&out);
            assert!(err.contains(&not) && err.contains(why), "{what}: {args:?}: {err}");
            if args[0] == "recover" {
                assert!(err.contains("recover changed nothing"), "{what}: {err}");
            }
        }
        let out = mapkv().arg("verify").arg(&path).assert().code(1);
        let stdout = text(&out.get_output().stdout);
        let head = format!("{} does not open: {not}", path.display());
        assert!(stdout.contains(&head), "{what}: {stdout}");
        assert!(files_of(&path) == before, "{what}: a command changed the store");
    }
}

#[test]
fn verify_lists_problems_by_offset_with_knock_ons_under_their_root() {
    let per = 4;
    let (_d, path) = batched_store(6, per);
    let data = path.join("data.mkv");
    // A damaged value in batch 1: one problem, not a misplaced commit at every batch after.
    let value = batch_at(1, per) + 2 * REC + 32;
    patch(&data, value, b"\x00");
    // A damaged record header in batch 4: the walk ends inside the batch, which is then
    // left without its commit (a knock-on).
    let header = batch_at(4, per) + REC;
    patch(&data, header + 4, b"\x7f");
    let out = mapkv().arg("verify").arg(&path).assert().code(1);
    let stdout = text(&out.get_output().stdout);
    let d = data.display();
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains("data.mkv at byte")).collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with(&format!("{d} at byte {}: checksum mismatch", rec_of(value))),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with(&format!("{d} at byte {header}: invalid record kind")),
        "{stdout}"
    );
    let knock_on = format!("  knock-on: {d} at byte {}: a batch of 1 records", batch_at(4, per));
    assert!(lines[2].starts_with(&knock_on), "{stdout}");
    assert!(stdout.ends_with("damaged: 2 problems (and 1 knock-on)\n"), "{stdout}");
    let v = json_of(mapkv().args(["verify", "--json"]).arg(&path));
    let offsets: Vec<u64> = v["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(offsets, [rec_of(value), header, batch_at(4, per)], "{v}");
    let roots: Vec<&Json> =
        v["problems"].as_array().expect("problems").iter().map(|p| &p["knock_on_of"]).collect();
    assert_eq!(roots, [&Json::Null, &Json::Null, &Json::from(1)], "{v}");

    // One damaged index slot is two disagreements at that slot: one problem, one knock-on.
    let (_d, path) = clean_store(10);
    let index = path.join("index.mkv");
    let bytes = fs::read(&index).expect("read index");
    let slot = (4096..bytes.len())
        .step_by(16)
        .find(|&at| bytes[at + 8..at + 16] == rec(3).to_le_bytes())
        .expect("key 3's slot");
    patch(&index, slot as u64 + 8, &rec(4).to_le_bytes());
    let out = mapkv().arg("verify").arg(&path).assert().code(1);
    let stdout = text(&out.get_output().stdout);
    let i = index.display();
    let root = format!(
        "{i} at byte {slot}: index and log disagree about the latest record of the key at byte {}",
        rec(3)
    );
    let knock_on = format!(
        "  knock-on: {i} at byte {slot}: index and log disagree about the latest record of the key at byte {}",
        rec(4)
    );
    assert!(stdout.contains(&format!("{root}\n{knock_on}\n")), "{stdout}");
    assert!(stdout.contains("damaged: 1 problem (and 1 knock-on)"), "{stdout}");
}

#[test]
fn one_damaged_record_in_a_batch_is_one_problem_with_or_without_the_index() {
    let (_d, path) = batched_store(2, 3);
    let data = path.join("data.mkv");
    let second = batch_at(1, 3) + REC; // the 2nd record of the 2nd batch
    patch(&data, second + 32, b"\x00"); // a bit of its value: its checksum fails
    let out = mapkv().arg("verify").arg(&path).assert().code(1);
    let stdout = text(&out.get_output().stdout);
    assert!(stdout.ends_with("damaged: 1 problem\n"), "{stdout}");
    // Without the index the store does not open and is read record by record: the batch
    // the damage broke is a knock-on of it, and its commit, found again past the damage,
    // is no second problem.
    fs::remove_file(path.join("index.mkv")).expect("remove index");
    let out = mapkv().arg("verify").arg(&path).assert().code(1);
    let stdout = text(&out.get_output().stdout);
    assert!(
        stdout.contains("3 records intact before the damage, 0 past it, 2 in batches"),
        "{stdout}"
    );
    let line = format!("{} at byte {second}: checksum mismatch", data.display());
    assert!(stdout.contains(&line), "{stdout}");
    assert!(stdout.ends_with("damaged: 1 problem (and 1 knock-on)\n"), "{stdout}");
}

/// The start of the record holding byte `at` of a [`batched_store`] of 4 keys a batch.
fn rec_of(at: u64) -> u64 {
    let batch = REC * 4 + COMMIT;
    let b = (at - DATA_START) / batch;
    DATA_START + b * batch + (at - DATA_START - b * batch) / REC * REC
}

// ---- interrupting load ------------------------------------------------------------------

#[test]
fn ctrl_c_stops_load_at_a_clean_point_and_says_where_to_resume() {
    use std::io::Write as _;
    use std::process::{Command as Process, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    let (_d, path) = fresh();
    let line = |i: u64| format!("{{\"key\":\"k{i:09}\",\"value\":\"value {i}\"}}\n");
    let mut child = Process::new(env!("CARGO_BIN_EXE_mapkv"))
        .args(["load", "--batch-size", "1000"])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mapkv load");
    // Feed lines until the load stops reading (the pipe breaks).
    let written = Arc::new(AtomicU64::new(0));
    let mut stdin = child.stdin.take().expect("stdin");
    let feeder = {
        let written = Arc::clone(&written);
        std::thread::spawn(move || {
            for i in 0..100_000_000u64 {
                if stdin.write_all(line(i).as_bytes()).is_err() {
                    return;
                }
                written.store(i + 1, Ordering::Relaxed);
            }
        })
    };
    // The pipe, the reader's buffer and its queue hold fewer than 10,000 lines, so once
    // 50,000 are written, tens of batches of 1,000 are in the store.
    let start = Instant::now();
    while written.load(Ordering::Relaxed) < 50_000 {
        assert!(start.elapsed() < Duration::from_secs(120), "the load does not read");
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = child.id().to_string();
    let sent = Process::new("kill").args(["-INT", &pid]).status().expect("run kill");
    assert!(sent.success());
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(180), "the load did not stop");
        std::thread::sleep(Duration::from_millis(10));
    };
    feeder.join().expect("feeder");
    let out = child.wait_with_output().expect("output");
    let err = text(&out.stderr);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));

    // "interrupted: loaded N pairs into DIR, from lines 1 to L of stdin, and closed it
    // cleanly (durable)" and "to resume, load stdin from line L+1 (byte B) on".
    let number_after = |what: &str| -> u64 {
        let at = err.find(what).unwrap_or_else(|| panic!("no {what:?} in {err}")) + what.len();
        err[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().expect("number")
    };
    let loaded = number_after("mapkv: interrupted: loaded ");
    let last_line = number_after(" from lines 1 to ");
    assert!(err.contains(&format!("{loaded} pairs into {}", path.display())), "{err}");
    assert!(err.contains("of stdin, and closed it cleanly"), "{err}");
    assert_eq!(loaded, last_line, "every line is a pair: {err}");
    assert!(loaded >= 40_000 && loaded <= written.load(Ordering::Relaxed), "{err}");
    let bytes: u64 = (0..loaded).map(|i| line(i).len() as u64).sum();
    let resume = format!("load stdin from line {} (byte {bytes}) on", loaded + 1);
    assert!(err.contains(&resume), "{err}");

    // The store is sound, closed cleanly, and holds exactly the pairs of those lines.
    mapkv().arg("verify").arg(&path).assert().success().stdout(predicate::str::contains(format!(
        "checked {}: {loaded} records, {loaded} live keys",
        path.display()
    )));
    let store = OpenOptions::new().read_only(true).open(&path).expect("open");
    assert!(store.recovery().was_clean(), "{:?}", store.recovery());
    assert_eq!(store.len(), loaded);
    let value = |i: u64| store.get(format!("k{i:09}")).expect("get").map(|v| v.to_vec());
    assert_eq!(value(0), Some(b"value 0".to_vec()));
    assert_eq!(value(loaded - 1), Some(format!("value {}", loaded - 1).into_bytes()));
    assert_eq!(value(loaded), None, "a line past the reported one was loaded");
}
