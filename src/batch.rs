//! `Batch`: puts and deletes that [`Store::write`](crate::Store::write) applies atomically.

use crate::format::Kind;

/// Puts and deletes applied all together by [`Store::write`](crate::Store::write): after a
/// crash either every one of them is in the store or none is, and readers see all of them
/// or none. Later operations on the same key win, as if applied in order.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let store = mapkv::Store::open(dir.path())?;
/// let mut batch = mapkv::Batch::new();
/// batch.put("alice", "1").put("bob", "2").delete("carol");
/// store.write(batch)?;
/// assert_eq!(store.get("bob")?.as_deref(), Some(&b"2"[..]));
/// # Ok::<(), mapkv::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Each operation: its kind, and where its key and value end in `bytes` (each starts
    /// where the one before it ends).
    ops: Vec<(Kind, usize, usize)>,
    bytes: Vec<u8>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds setting `key` to `value`. Sizes are checked by `write`, before anything is
    /// written.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Self {
        self.push(Kind::Put, key.as_ref(), value.as_ref())
    }

    /// Adds deleting `key` (nothing is written for a key that is absent by then).
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        self.push(Kind::Delete, key.as_ref(), &[])
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn push(&mut self, kind: Kind, key: &[u8], value: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(key);
        let key_end = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.ops.push((kind, key_end, self.bytes.len()));
        self
    }

    /// The operations in order: kind, key, value.
    pub(crate) fn ops(&self) -> impl Iterator<Item = (Kind, &[u8], &[u8])> + '_ {
        let mut start = 0;
        self.ops.iter().map(move |&(kind, key_end, value_end)| {
            let op = (kind, &self.bytes[start..key_end], &self.bytes[key_end..value_end]);
            start = value_end;
            op
        })
    }
}
