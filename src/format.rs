//! On-disk layouts: the data file header, records, and the index header.
//!
//! Everything is little-endian. No I/O and no `unsafe` here: functions turn byte slices into
//! values and back, and every decode of disk bytes returns an error instead of panicking.
//! DESIGN.md has the same layouts as byte tables.

use std::fmt;

/// What exactly was wrong with damaged bytes (see [`Error::Corrupt`](crate::Error::Corrupt)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptKind {
    /// The file is shorter than its fixed header.
    TooShort {
        /// Its length.
        len: u64,
        /// The least length a valid file has.
        min: u64,
    },
    /// The magic number is not mapkv's.
    BadMagic,
    /// Both copies of the data file header fail their checksum.
    NoValidHeader,
    /// Stored and computed CRC-32 differ.
    ChecksumMismatch {
        /// The checksum stored on disk.
        expected: u32,
        /// The checksum of the bytes found.
        found: u32,
    },
    /// A length field points past the end of the file or of the log.
    LengthPastEnd {
        /// Where the structure would end.
        end: u64,
        /// Where the valid bytes end.
        limit: u64,
    },
    /// A record's kind byte (or a reserved field) has a value no version writes.
    BadRecord {
        /// The byte found.
        kind: u8,
    },
    /// A header field holds an impossible value.
    BadField {
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The index file belongs to another store.
    ForeignIndex {
        /// This store's id.
        expected: u64,
        /// The id in the index header.
        found: u64,
    },
    /// An index slot points at something that is not a record.
    BadIndexSlot {
        /// The offset the slot holds.
        target: u64,
    },
    /// The index does not point at the latest record of a key (the record at `record`), or
    /// points at a record that is not its key's latest.
    IndexDisagrees {
        /// The record concerned.
        record: u64,
    },
    /// Zeros where a record should start, with data again further on: a write that never
    /// reached the disk.
    ZeroGap {
        /// Where nonzero bytes resume.
        data_at: u64,
    },
    /// A batch whose commit record never followed: the writer stopped in the middle of it.
    UnfinishedBatch {
        /// Records of the batch that were found.
        records: u64,
    },
    /// A record out of place in the batch structure: a commit record without its batch
    /// (or naming another start or count), or an unbatched record inside a batch.
    BadBatch,
    /// Nonzero bytes in the data file past the end of the log, where every byte must be
    /// zero (DESIGN.md §2): a later record landing there could make them read as part of
    /// the log. The offset given with it is the first such byte.
    NonzeroPastEnd {
        /// Where the log ends.
        log_end: u64,
    },
}

impl CorruptKind {
    /// The same fault with positions measured from the start of the file rather than from
    /// `base` (where the decoded structure starts).
    pub(crate) fn at(self, base: u64) -> Self {
        match self {
            Self::LengthPastEnd { end, limit } => Self::LengthPastEnd {
                end: end.saturating_add(base),
                limit: limit.saturating_add(base),
            },
            other => other,
        }
    }
}

impl fmt::Display for CorruptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len, min } => {
                write!(f, "file is {len} bytes, shorter than the {min}-byte header")
            }
            Self::BadMagic => f.write_str("bad magic number: not a mapkv file"),
            Self::NoValidHeader => f.write_str("both header copies are damaged"),
            Self::ChecksumMismatch { expected, found } => {
                write!(f, "checksum mismatch (stored {expected:#010x}, computed {found:#010x})")
            }
            Self::LengthPastEnd { end, limit } => {
                write!(f, "length reaches byte {end}, past the end at {limit}")
            }
            Self::BadRecord { kind } => write!(f, "invalid record kind or flags {kind:#04x}"),
            Self::BadField { field, value } => write!(f, "impossible {field} {value}"),
            Self::ForeignIndex { expected, found } => {
                write!(f, "index belongs to store {found:#018x}, not this store {expected:#018x}")
            }
            Self::BadIndexSlot { target } => {
                write!(f, "index slot points at {target}, which is not a record")
            }
            Self::IndexDisagrees { record } => write!(
                f,
                "index and log disagree about the latest record of the key at byte {record}"
            ),
            Self::ZeroGap { data_at } => {
                write!(f, "zeros where a record should start, with data again at byte {data_at}")
            }
            Self::UnfinishedBatch { records } => write!(
                f,
                "a batch of {records} records without its commit record (the writer stopped \
                 before the batch was complete, so none of it counts)"
            ),
            Self::BadBatch => f.write_str(
                "a record out of place in a batch (a commit without its batch, or an \
                 unbatched record inside one)",
            ),
            Self::NonzeroPastEnd { log_end } => write!(
                f,
                "nonzero bytes past the end of the log (which ends at byte {log_end}), where \
                 the data file must hold only zeros, or a later record could make them read \
                 as part of the log; run `mapkv recover` (or open for writing with \
                 OpenOptions::zero_past_end) to zero them: no record is lost"
            ),
        }
    }
}

/// Format version written and read by this build (both files).
pub const VERSION: u32 = 1;

/// Size of a page as far as the layout is concerned: the two header slots and the index
/// header each sit in a page of their own, so a torn page write damages at most one of them.
pub const PAGE: u64 = 4096;

// ---- data file header -------------------------------------------------------------------

/// Magic of the data file.
pub const LOG_MAGIC: [u8; 8] = *b"MAPKVLOG";
/// Length of one header slot (the rest of its page is zero).
pub const HEADER_LEN: usize = 64;
const H_MAGIC: usize = 0;
const H_VERSION: usize = H_MAGIC + 8;
const _: () = assert!(H_MAGIC == 0, "check_envelope reads the magic at 0");
const H_SLOT_LEN: usize = H_VERSION + 4;
const H_STORE_ID: usize = H_SLOT_LEN + 4;
const H_SEQ: usize = H_STORE_ID + 8;
const H_COMMITTED: usize = H_SEQ + 8;
const H_DATA_START: usize = H_COMMITTED + 8;
const H_RESERVED: usize = H_DATA_START + 8;
const H_CRC: usize = HEADER_LEN - 4;
const _: () = assert!(H_RESERVED + 8 <= H_CRC);

/// File offsets of the two header slots.
pub const HEADER_SLOTS: [u64; 2] = [0, PAGE];
/// Where the first record starts.
pub const DATA_START: u64 = 2 * PAGE;

/// One copy of the data file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHeader {
    /// Random id chosen at creation; seeds the record checksums and the index hash.
    pub store_id: u64,
    /// Incremented at each header write; the valid slot with the higher `seq` wins.
    pub seq: u64,
    /// Every record below this offset is durable and valid.
    pub committed: u64,
}

impl LogHeader {
    /// Writes the header into a slot's [`HEADER_LEN`] bytes.
    pub fn encode_into(&self, out: &mut [u8; HEADER_LEN]) {
        out.fill(0);
        out[H_MAGIC..H_MAGIC + 8].copy_from_slice(&LOG_MAGIC);
        put_u32(out, H_VERSION, VERSION);
        put_u32(out, H_SLOT_LEN, HEADER_LEN as u32);
        put_u64(out, H_STORE_ID, self.store_id);
        put_u64(out, H_SEQ, self.seq);
        put_u64(out, H_COMMITTED, self.committed);
        put_u64(out, H_DATA_START, DATA_START);
        let crc = crc32fast::hash(&out[..H_CRC]);
        put_u32(out, H_CRC, crc);
    }

    /// Reads one slot. `Err` says why the slot is unusable.
    ///
    /// # Errors
    /// [`DecodeError::Corrupt`] for bad magic, checksum or fields;
    /// [`DecodeError::Version`] for a valid header of another format version.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let b: &[u8; HEADER_LEN] = b
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(CorruptKind::TooShort { len: b.len() as u64, min: HEADER_LEN as u64 })?;
        check_envelope(b, &LOG_MAGIC, H_CRC, H_VERSION)?;
        let data_start = get_u64(b, H_DATA_START);
        if data_start != DATA_START {
            return Err(CorruptKind::BadField { field: "data start", value: data_start }.into());
        }
        let committed = get_u64(b, H_COMMITTED);
        if committed < DATA_START || !committed.is_multiple_of(RECORD_ALIGN) {
            return Err(
                CorruptKind::BadField { field: "committed length", value: committed }.into()
            );
        }
        Ok(Self { store_id: get_u64(b, H_STORE_ID), seq: get_u64(b, H_SEQ), committed })
    }
}

/// Why a header could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Damaged bytes.
    Corrupt(CorruptKind),
    /// A well-formed header of another format version.
    Version(u32),
}

impl From<CorruptKind> for DecodeError {
    fn from(k: CorruptKind) -> Self {
        Self::Corrupt(k)
    }
}

// ---- records ----------------------------------------------------------------------------

/// Records start, and values start, on multiples of this.
pub const RECORD_ALIGN: u64 = 8;
/// Length of a record header.
pub const RECORD_HEADER_LEN: usize = 24;
const R_CRC: usize = 0;
const R_KIND: usize = 4;
const R_FLAGS: usize = 5;
const R_RESERVED: usize = 6;
const R_KEY_LEN: usize = 8;
const R_VALUE_LEN: usize = 12;
const R_PREV: usize = 16;
const _: () = assert!(R_PREV + 8 == RECORD_HEADER_LEN);
const _: () = assert!((RECORD_HEADER_LEN as u64).is_multiple_of(RECORD_ALIGN));

/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 64 * 1024;
/// Longest value accepted.
pub const MAX_VALUE_LEN: usize = u32::MAX as usize;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The key now has the record's value.
    Put = 1,
    /// The key is deleted (a tombstone; its value is empty).
    Delete = 2,
    /// Ends a batch: every record since the batch's first (at `prev`) carries
    /// [`Record::batch`], and this record's value is their count (8 bytes, little-endian).
    /// Its key is empty. Recovery keeps a batch only when its commit record is there.
    Commit = 3,
}

/// The flag bit of a record that belongs to a batch still to be committed.
const FLAG_BATCH: u8 = 1;

/// A decoded record header, with the positions of its key and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Put, delete or commit.
    pub kind: Kind,
    /// Part of a batch: valid only once the batch's [`Kind::Commit`] record follows.
    pub batch: bool,
    /// Offset of the previous record of the same key, 0 if none.
    pub prev: u64,
    /// Stored checksum.
    pub crc: u32,
    /// Key length.
    pub key_len: u32,
    /// Value length.
    pub value_len: u32,
}

const fn align_up(n: u64) -> u64 {
    (n + RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1)
}

impl Record {
    /// Offset of the key from the record start.
    pub const KEY_OFFSET: u64 = RECORD_HEADER_LEN as u64;

    /// Offset of the value from the record start: 8-aligned.
    pub fn value_offset(&self) -> u64 {
        align_up(Self::KEY_OFFSET + u64::from(self.key_len))
    }

    /// Total length of the record including padding: a multiple of 8.
    pub fn total_len(&self) -> u64 {
        align_up(self.value_offset() + u64::from(self.value_len))
    }

    /// Length of a record with these key and value lengths (no overflow for lengths within
    /// the limits).
    pub fn len_for(key_len: usize, value_len: usize) -> u64 {
        align_up(align_up(Self::KEY_OFFSET + key_len as u64) + value_len as u64)
    }

    /// Decodes the 24-byte header at the start of `b` and checks that the whole record lies
    /// within `b`. Does not check the checksum (see [`Record::checksum`]).
    ///
    /// # Errors
    /// [`CorruptKind::BadRecord`] for an unknown kind or nonzero reserved bits (zeros never
    /// parse), [`CorruptKind::LengthPastEnd`] if the record would run past `b`.
    pub fn decode(b: &[u8]) -> Result<Self, CorruptKind> {
        let h: &[u8; RECORD_HEADER_LEN] =
            b.get(..RECORD_HEADER_LEN).and_then(|s| s.try_into().ok()).ok_or(
                CorruptKind::LengthPastEnd { end: RECORD_HEADER_LEN as u64, limit: b.len() as u64 },
            )?;
        let kind = match h[R_KIND] {
            1 => Kind::Put,
            2 => Kind::Delete,
            3 => Kind::Commit,
            k => return Err(CorruptKind::BadRecord { kind: k }),
        };
        let flags_ok = h[R_FLAGS] == 0 || (h[R_FLAGS] == FLAG_BATCH && kind != Kind::Commit);
        if !flags_ok || h[R_RESERVED] != 0 || h[R_RESERVED + 1] != 0 {
            return Err(CorruptKind::BadRecord { kind: h[R_KIND] | h[R_FLAGS] });
        }
        let rec = Self {
            kind,
            batch: h[R_FLAGS] == FLAG_BATCH,
            crc: get_u32(h, R_CRC),
            key_len: get_u32(h, R_KEY_LEN),
            value_len: get_u32(h, R_VALUE_LEN),
            prev: get_u64(h, R_PREV),
        };
        if rec.key_len as usize > MAX_KEY_LEN {
            return Err(CorruptKind::BadField { field: "key length", value: rec.key_len.into() });
        }
        if kind == Kind::Delete && rec.value_len != 0 {
            return Err(CorruptKind::BadField {
                field: "tombstone value length",
                value: rec.value_len.into(),
            });
        }
        if kind == Kind::Commit && (rec.key_len != 0 || rec.value_len != 8) {
            return Err(CorruptKind::BadField {
                field: "commit record length",
                value: u64::from(rec.key_len) << 32 | u64::from(rec.value_len),
            });
        }
        if rec.total_len() > b.len() as u64 {
            return Err(CorruptKind::LengthPastEnd { end: rec.total_len(), limit: b.len() as u64 });
        }
        Ok(rec)
    }

    /// The key of the record at the start of `b` (which `decode` accepted).
    pub fn key<'a>(&self, b: &'a [u8]) -> &'a [u8] {
        &b[Self::KEY_OFFSET as usize..][..self.key_len as usize]
    }

    /// The value of the record at the start of `b` (which `decode` accepted).
    pub fn value<'a>(&self, b: &'a [u8]) -> &'a [u8] {
        &b[self.value_offset() as usize..][..self.value_len as usize]
    }

    /// Computes the checksum of the record at the start of `b` (which `decode` accepted).
    /// It covers one contiguous run: the header after the CRC, the key, the zero padding
    /// after it, and the value (one pass is much faster than three on short records).
    pub fn checksum(&self, seed: u32, b: &[u8]) -> u32 {
        let end = (self.value_offset() + u64::from(self.value_len)) as usize;
        let mut h = crc32fast::Hasher::new_with_initial(seed);
        h.update(&b[R_CRC + 4..end]);
        h.finalize()
    }

    /// Checks the stored checksum.
    ///
    /// # Errors
    /// [`CorruptKind::ChecksumMismatch`] if it differs.
    pub fn verify(&self, seed: u32, b: &[u8]) -> Result<(), CorruptKind> {
        let found = self.checksum(seed, b);
        if found == self.crc {
            Ok(())
        } else {
            Err(CorruptKind::ChecksumMismatch { expected: self.crc, found })
        }
    }

    /// Encodes a whole record (header, key, padding, value, padding) into `out`, which must
    /// be exactly `len_for(key.len(), value.len())` bytes and is overwritten entirely.
    pub fn encode_into(
        seed: u32,
        (kind, batch): (Kind, bool),
        prev: u64,
        key: &[u8],
        value: &[u8],
        out: &mut [u8],
    ) {
        debug_assert_eq!(out.len() as u64, Self::len_for(key.len(), value.len()));
        let (key_len, value_len) = (key.len() as u32, value.len() as u32);
        let rec = Self { kind, batch, prev, crc: 0, key_len, value_len };
        let (k, v) = (Self::KEY_OFFSET as usize, rec.value_offset() as usize);
        out[..RECORD_HEADER_LEN].fill(0);
        out[R_KIND] = kind as u8;
        out[R_FLAGS] = if batch { FLAG_BATCH } else { 0 };
        put_u32(out, R_KEY_LEN, rec.key_len);
        put_u32(out, R_VALUE_LEN, rec.value_len);
        put_u64(out, R_PREV, prev);
        out[k..k + key.len()].copy_from_slice(key);
        out[k + key.len()..v].fill(0);
        out[v..v + value.len()].copy_from_slice(value);
        out[v + value.len()..].fill(0);
        let crc = rec.checksum(seed, out);
        put_u32(out, R_CRC, crc);
    }
}

/// The CRC-32 seed of a store: records copied from another store do not verify.
pub fn crc_seed(store_id: u64) -> u32 {
    (store_id ^ (store_id >> 32)) as u32
}

/// The hash of `key` in store `store_id`'s index: xxh3-64 seeded with the store id (a
/// frozen function: the hash is on disk; DESIGN.md §3).
#[inline]
pub fn key_hash(key: &[u8], store_id: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, store_id)
}

// ---- file names --------------------------------------------------------------------------

/// The data file (the log) of a store directory.
pub const DATA_FILE: &str = "data.mkv";
/// The index file.
pub const INDEX_FILE: &str = "index.mkv";
/// The writer's live page (DESIGN.md §4, "Readers in other processes").
pub const LIVE_FILE: &str = "live.mkv";
/// The new data file while a compaction builds it.
pub const DATA_COMPACT: &str = "data.mkv.compact";
/// The new index file while a compaction builds it.
pub const INDEX_COMPACT: &str = "index.mkv.compact";
/// Added to a file's name while it is built, before it is renamed into place.
pub const TMP_SUFFIX: &str = ".tmp";

/// Whether a file named `name` is one a store keeps in its directory (or one of them being
/// built, under its temporary name).
pub fn is_store_file(name: &str) -> bool {
    let name = name.strip_suffix(TMP_SUFFIX).unwrap_or(name);
    [DATA_FILE, INDEX_FILE, LIVE_FILE, DATA_COMPACT, INDEX_COMPACT].contains(&name)
}

// ---- index file -------------------------------------------------------------------------

/// Magic of the index file.
pub const INDEX_MAGIC: [u8; 8] = *b"MAPKVIDX";
/// Index header length in bytes (10 words); slots start at `PAGE`.
pub const INDEX_HEADER_LEN: usize = 80;
/// Where the index file keeps the tag of the writer's checkpoint it matches (a little-endian
/// word after the header, outside its checksum: the writer stores it after every write).
pub const INDEX_TAG_OFFSET: u64 = INDEX_HEADER_LEN as u64;
/// Bytes per slot: the 64-bit key hash, then the record offset.
pub const SLOT_LEN: u64 = 16;
/// Least number of slots.
pub const MIN_SLOTS: u64 = 1024;
const I_MAGIC: usize = 0;
const _: () = assert!(I_MAGIC == 0, "check_envelope reads the magic at 0");
const I_VERSION: usize = 8;
const I_STORE_ID: usize = 16;
const I_CAPACITY: usize = 24;
const I_CLEAN_LEN: usize = 32;
const I_LIVE: usize = 40;
const I_USED: usize = 48;
const I_LIVE_BYTES: usize = 56;
const I_RECORDS: usize = 64;
const I_CRC: usize = 72;

/// The index file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexHeader {
    /// Must equal the data file's store id.
    pub store_id: u64,
    /// Number of slots: a power of two.
    pub capacity: u64,
    /// Nonzero: the index matches exactly the log up to this length and nothing changed
    /// since. Zero: the index may be stale or torn and must be rebuilt.
    pub clean_len: u64,
    /// Live keys.
    pub live: u64,
    /// Occupied slots (live keys and deleted keys).
    pub used: u64,
    /// Bytes of the log in live records (the rest of it is garbage).
    pub live_bytes: u64,
    /// Put and delete records in the log.
    pub records: u64,
}

impl IndexHeader {
    /// Length of an index file with `capacity` slots.
    pub fn file_len(capacity: u64) -> Option<u64> {
        capacity.checked_mul(SLOT_LEN)?.checked_add(PAGE)
    }

    /// Encodes into the header's [`INDEX_HEADER_LEN`] bytes (the tag after them is not
    /// part of it).
    pub fn encode_into(&self, out: &mut [u8; INDEX_HEADER_LEN]) {
        out.fill(0);
        out[I_MAGIC..I_MAGIC + 8].copy_from_slice(&INDEX_MAGIC);
        put_u32(out, I_VERSION, VERSION);
        put_u64(out, I_STORE_ID, self.store_id);
        put_u64(out, I_CAPACITY, self.capacity);
        put_u64(out, I_CLEAN_LEN, self.clean_len);
        put_u64(out, I_LIVE, self.live);
        put_u64(out, I_USED, self.used);
        put_u64(out, I_LIVE_BYTES, self.live_bytes);
        put_u64(out, I_RECORDS, self.records);
        let crc = crc32fast::hash(&out[..I_CRC]);
        put_u32(out, I_CRC, crc);
    }

    /// Decodes and checks a header against the file length it came from.
    ///
    /// # Errors
    /// As [`LogHeader::decode`], plus impossible capacity or counts.
    pub fn decode(b: &[u8; INDEX_HEADER_LEN], file_len: u64) -> Result<Self, DecodeError> {
        check_envelope(b, &INDEX_MAGIC, I_CRC, I_VERSION)?;
        let h = Self {
            store_id: get_u64(b, I_STORE_ID),
            capacity: get_u64(b, I_CAPACITY),
            clean_len: get_u64(b, I_CLEAN_LEN),
            live: get_u64(b, I_LIVE),
            used: get_u64(b, I_USED),
            live_bytes: get_u64(b, I_LIVE_BYTES),
            records: get_u64(b, I_RECORDS),
        };
        if !h.capacity.is_power_of_two()
            || h.capacity < MIN_SLOTS
            || Self::file_len(h.capacity) != Some(file_len)
        {
            return Err(CorruptKind::BadField { field: "index capacity", value: h.capacity }.into());
        }
        if h.live > h.used || h.used > h.capacity {
            return Err(CorruptKind::BadField { field: "index count", value: h.used }.into());
        }
        Ok(h)
    }
}

// ---- helpers ----------------------------------------------------------------------------

/// Checks what both headers share: the magic at 0, the CRC-32 at `crc_at` of every byte
/// before it, and the version at `version_at` (checked last, so that a damaged header is
/// reported as damage, not as another version).
fn check_envelope(
    b: &[u8],
    magic: &[u8; 8],
    crc_at: usize,
    version_at: usize,
) -> Result<(), DecodeError> {
    if b[..8] != magic[..] {
        return Err(CorruptKind::BadMagic.into());
    }
    let (expected, found) = (get_u32(b, crc_at), crc32fast::hash(&b[..crc_at]));
    if expected != found {
        return Err(CorruptKind::ChecksumMismatch { expected, found }.into());
    }
    match get_u32(b, version_at) {
        VERSION => Ok(()),
        other => Err(DecodeError::Version(other)),
    }
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Index of the first nonzero byte of `b`. Scans a page at a time with an OR that the
/// compiler vectorises (a byte-at-a-time search of the 1 MiB window took 40 % of the
/// power-loss simulator's time).
pub(crate) fn first_nonzero(b: &[u8]) -> Option<usize> {
    let page = b.chunks(4096).position(|c| c.iter().fold(0, |acc, &x| acc | x) != 0)?;
    let at = page * 4096;
    b[at..].iter().position(|&x| x != 0).map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> LogHeader {
        LogHeader { store_id: 0xfeed_beef_1234_5678, seq: 7, committed: DATA_START + 64 }
    }

    #[test]
    fn log_header_round_trips() {
        let mut b = [0; HEADER_LEN];
        header().encode_into(&mut b);
        assert_eq!(LogHeader::decode(&b), Ok(header()));
    }

    #[test]
    fn log_header_rejects_every_single_byte_flip() {
        let mut b = [0; HEADER_LEN];
        header().encode_into(&mut b);
        for i in 0..HEADER_LEN {
            let mut d = b;
            d[i] ^= 0x40;
            assert!(LogHeader::decode(&d).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn log_header_rejects_zeros_short_and_future_version() {
        assert!(matches!(
            LogHeader::decode(&[0; HEADER_LEN]),
            Err(DecodeError::Corrupt(CorruptKind::BadMagic))
        ));
        assert!(matches!(
            LogHeader::decode(&[0; 10]),
            Err(DecodeError::Corrupt(CorruptKind::TooShort { len: 10, .. }))
        ));
        let mut b = [0; HEADER_LEN];
        header().encode_into(&mut b);
        b[H_VERSION] = 9;
        let crc = crc32fast::hash(&b[..H_CRC]);
        put_u32(&mut b, H_CRC, crc);
        assert_eq!(LogHeader::decode(&b), Err(DecodeError::Version(9)));
    }

    fn encoded(kind: Kind, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = vec![0xAA; Record::len_for(key.len(), value.len()) as usize];
        Record::encode_into(42, (kind, false), 8192, key, value, &mut out);
        out
    }

    #[test]
    fn record_round_trips_with_aligned_value() {
        for klen in [0, 1, 7, 8, 9, 24, 100] {
            let key = vec![b'k'; klen];
            let b = encoded(Kind::Put, &key, b"value!");
            let r = Record::decode(&b).expect("decodes");
            assert_eq!(r.value_offset() % RECORD_ALIGN, 0);
            assert_eq!(r.total_len() as usize, b.len());
            assert_eq!(r.key(&b), &key[..]);
            assert_eq!(r.value(&b), b"value!");
            assert_eq!(r.prev, 8192);
            assert_eq!(r.verify(42, &b), Ok(()));
            assert!(r.verify(43, &b).is_err(), "another store's seed must not verify");
        }
    }

    #[test]
    fn zeros_never_parse_as_a_record() {
        assert_eq!(Record::decode(&[0; 64]), Err(CorruptKind::BadRecord { kind: 0 }));
    }

    #[test]
    fn record_lengths_past_the_end_are_refused() {
        let b = encoded(Kind::Put, b"key", &[1; 100]);
        for cut in 0..b.len() {
            assert!(Record::decode(&b[..cut]).is_err(), "accepted a record cut at {cut}");
        }
        let mut huge = b.clone();
        put_u32(&mut huge, R_VALUE_LEN, u32::MAX);
        assert!(matches!(Record::decode(&huge), Err(CorruptKind::LengthPastEnd { .. })));
        let mut long_key = b;
        put_u32(&mut long_key, R_KEY_LEN, u32::MAX);
        assert!(matches!(Record::decode(&long_key), Err(CorruptKind::BadField { .. })));
    }

    #[test]
    fn every_bit_flip_in_a_record_is_detected() {
        let b = encoded(Kind::Put, b"some key", b"some value");
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut d = b.clone();
                d[i] ^= 1 << bit;
                let caught = match Record::decode(&d) {
                    Err(_) => true,
                    Ok(r) => r.verify(42, &d).is_err(),
                };
                // The padding after the value (which ends at 42) is neither checksummed nor
                // read; the padding between key and value is checksummed.
                let padding = i >= 42;
                assert!(caught || padding, "flip of bit {bit} at byte {i} went unnoticed");
            }
        }
    }

    #[test]
    fn batch_flags_and_commit_records_decode_and_nothing_else_does() {
        let mut out = vec![0; Record::len_for(3, 1) as usize];
        Record::encode_into(42, (Kind::Put, true), 0, b"key", b"v", &mut out);
        let r = Record::decode(&out).expect("a batch member decodes");
        assert!(r.batch && r.verify(42, &out).is_ok());
        let mut commit = vec![0; Record::len_for(0, 8) as usize];
        Record::encode_into(42, (Kind::Commit, false), 8192, b"", &5u64.to_le_bytes(), &mut commit);
        let c = Record::decode(&commit).expect("a commit decodes");
        assert_eq!(
            (c.kind, c.batch, c.prev, c.value(&commit)),
            (Kind::Commit, false, 8192, &5u64.to_le_bytes()[..])
        );
        let mut flagged = commit.clone();
        flagged[R_FLAGS] = FLAG_BATCH;
        assert!(matches!(Record::decode(&flagged), Err(CorruptKind::BadRecord { .. })));
        let mut other_flag = out.clone();
        other_flag[R_FLAGS] = 2;
        assert!(matches!(Record::decode(&other_flag), Err(CorruptKind::BadRecord { .. })));
        let mut keyed = vec![0; Record::len_for(1, 8) as usize];
        Record::encode_into(42, (Kind::Commit, false), 0, b"k", &[0; 8], &mut keyed);
        assert!(matches!(Record::decode(&keyed), Err(CorruptKind::BadField { .. })));
    }

    #[test]
    fn tombstones_carry_no_value() {
        let b = encoded(Kind::Delete, b"gone", b"");
        let r = Record::decode(&b).expect("decodes");
        assert_eq!(r.kind, Kind::Delete);
        let mut bad = b;
        put_u32(&mut bad, R_VALUE_LEN, 8);
        assert!(Record::decode(&bad).is_err());
    }

    #[test]
    fn index_header_round_trips_and_checks_sizes() {
        let h = IndexHeader {
            store_id: 5,
            capacity: 2048,
            clean_len: 8192,
            live: 3,
            used: 4,
            live_bytes: 96,
            records: 7,
        };
        let mut b = [0; INDEX_HEADER_LEN];
        h.encode_into(&mut b);
        let len = IndexHeader::file_len(2048).expect("fits");
        assert_eq!(IndexHeader::decode(&b, len), Ok(h));
        assert!(IndexHeader::decode(&b, len - 1).is_err());
        let mut d = b;
        d[I_LIVE] ^= 1;
        assert!(IndexHeader::decode(&d, len).is_err());
        let bad = IndexHeader { capacity: 3000, ..h };
        bad.encode_into(&mut b);
        assert!(IndexHeader::decode(&b, IndexHeader::file_len(3000).expect("fits")).is_err());
    }

    #[test]
    fn first_nonzero_finds_the_first_nonzero_byte() {
        let mut b = vec![0u8; 3 * 4096 + 100];
        assert_eq!(first_nonzero(&b), None);
        for at in [0, 1, 4095, 4096, 8191, 3 * 4096 + 99] {
            b[at] = 7;
            assert_eq!(first_nonzero(&b), Some(at));
            b[at] = 0;
        }
        b[5000] = 1;
        b[9000] = 1;
        assert_eq!(first_nonzero(&b), Some(5000));
    }
}
