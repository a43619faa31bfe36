//! Guards what a `Value` promises users: equality with plain bytes, cheap clones that outlive
//! the store, a readable `Debug`, hashing that agrees with `[u8]`, and the 8-byte alignment
//! that lets typed data (bytemuck) and zero-copy archives (rkyv) be read in place.

use std::collections::HashSet;

use mapkv::Store;

#[test]
fn a_value_compares_with_bytes_of_every_common_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    store.put("k", "hello").expect("put");
    let v = store.get("k").expect("get").expect("present");
    assert_eq!(v, b"hello");
    assert_eq!(v, *b"hello");
    assert_eq!(v, &b"hello"[..]);
    assert_eq!(v, b"hello"[..]);
    assert_eq!(v, b"hello".to_vec());
    assert_eq!(v, "hello");
    assert_eq!(b"hello".to_vec(), v);
    assert_eq!("hello", v);
    assert_ne!(v, b"hellO");
    assert_ne!(v, "hell");
    store.put("same", "hello").expect("put");
    store.put("other", "world").expect("put");
    let same = store.get("same").expect("get").expect("present");
    let other = store.get("other").expect("get").expect("present");
    assert_eq!(v, same);
    assert_ne!(v, other);
    assert!(v < other, "ordered by bytes");
}

#[test]
fn a_cloned_value_outlives_the_store_and_its_overwrites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    store.put("k", "first").expect("put");
    let v = store.get("k").expect("get").expect("present");
    let copy = v.clone();
    drop(v);
    store.put("k", "second").expect("put");
    store.compact().expect("compact"); // the old file goes away once no one holds it
    drop(store);
    assert_eq!(copy, "first");
}

#[test]
fn debug_prints_an_escaped_byte_string() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    store.put("k", b"a\"b\n\xff\x00z").expect("put");
    let v = store.get("k").expect("get").expect("present");
    assert_eq!(format!("{v:?}"), r#"b"a\"b\n\xff\x00z""#);
}

#[test]
fn values_hash_as_their_bytes_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    for (k, v) in [("a", "x"), ("b", "y"), ("c", "x")] {
        store.put(k, v).expect("put");
    }
    let set: HashSet<mapkv::Value> =
        ["a", "b", "c"].iter().map(|k| store.get(k).expect("get").expect("present")).collect();
    assert_eq!(set.len(), 2, "equal values are one element");
    assert!(set.contains(&b"x"[..]), "looked up by plain bytes through Borrow<[u8]>");
    assert!(!set.contains(&b"z"[..]));
}

#[test]
fn every_value_starts_on_an_8_byte_boundary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    for key_len in 0..40 {
        for value_len in [0, 1, 7, 8, 9, 100] {
            let key = vec![b'k'; key_len];
            store.put(&key, vec![1u8; value_len]).expect("put");
            let v = store.get(&key).expect("get").expect("present");
            assert_eq!(v.as_ptr() as usize % 8, 0, "key {key_len} B, value {value_len} B");
            let r = store.reader();
            let plain = r.get(&key).expect("get").expect("present");
            assert_eq!(plain.as_ptr() as usize % 8, 0);
        }
    }
}

#[test]
fn typed_data_reads_in_place_with_bytemuck() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    // An odd-length key before it: the value is still aligned.
    let points: Vec<[u32; 3]> = (0..1000).map(|i| [i, i * 2, i * 3]).collect();
    store.put("pts", bytemuck::cast_slice(&points)).expect("put");
    let v = store.get("pts").expect("get").expect("present");
    let read: &[[u32; 3]] = bytemuck::try_cast_slice(&v).expect("aligned, whole elements");
    assert_eq!(read, &points[..]);
    let wide: &[u64] = bytemuck::try_cast_slice(&v[..8 * 1500]).expect("8-aligned too");
    assert_eq!(wide.len(), 1500);
}

#[test]
fn an_rkyv_archive_reads_in_place() {
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
    struct User {
        id: u64,
        name: String,
        scores: Vec<u32>,
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let user = User { id: 42, name: "Ada".into(), scores: vec![3, 1, 4, 1, 5] };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&user).expect("serialise");
    store.put("user:42", &bytes).expect("put");
    let v = store.get("user:42").expect("get").expect("present");
    // Validated and read straight from the mapping: no copy into an aligned buffer.
    let archived =
        rkyv::access::<ArchivedUser, rkyv::rancor::Error>(&v).expect("a valid, aligned archive");
    assert_eq!(archived.id, 42);
    assert_eq!(archived.name, "Ada");
    assert_eq!(archived.scores.iter().map(|s| s.to_native()).collect::<Vec<_>>(), [3, 1, 4, 1, 5]);
    let back: User = rkyv::deserialize::<User, rkyv::rancor::Error>(archived).expect("deserialise");
    assert_eq!(back, user);
}
