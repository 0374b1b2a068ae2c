//! The persistent cache's file format: one snapshot of the client cache,
//! consistent at one TID. Pure encoding and decoding over `Read`/`Write`,
//! plus [`save`] (temporary file, fsync, rename) and [`load`].
//!
//! Layout, every integer big-endian:
//!
//! ```text
//! header   "NEOcache"  version u32  name_len u16  name
//!          first_tid u64  cache_tid u64  count u64
//! record   oid u64  tid u64  next u64 (0: current at cache_tid)  len u32  data
//!          (count records, most recently used first)
//! trailer  crc32 u32 of every byte before it
//! ```
//!
//! One checksum over the whole file rather than one per record: the file is
//! used all or nothing (a prefix of a snapshot would be safe to serve, but a
//! file that is not exactly what a writer completed is a sign of trouble and
//! is dropped). A file is replaced by renaming a complete, fsynced temporary
//! file over it, so a writer killed at any moment leaves the previous file
//! or none; the checksum catches what the disk or a second writer did.
//!
//! Everything read is bounded before it is allocated: the file's size (by
//! the caller, from the cache budget), the name, the record count (each
//! record takes at least [`RECORD_HEADER_BYTES`]), each record's data (what
//! remains of the file).

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use neo_proto::{Oid, Tid};

use crate::cache::{Saved, ENTRY_OVERHEAD};

const MAGIC: [u8; 8] = *b"NEOcache";
/// Bumped on any change of the layout: other versions are dropped.
pub const VERSION: u32 = 1;
/// Longest cluster name accepted (NEO's are short words).
pub const MAX_NAME_BYTES: usize = 1024;
/// Bytes of a record before its data.
pub const RECORD_HEADER_BYTES: u64 = 8 + 8 + 8 + 4;
const TRAILER_BYTES: u64 = 4;

/// What a file was written for and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The cluster's name.
    pub cluster: String,
    /// TID of the cluster's first transaction: tells apart two clusters
    /// with the same name (TIDs are timestamps; two databases created
    /// separately do not start at the same instant).
    pub first_tid: Tid,
    /// The client's last TID when the snapshot was taken: every change
    /// committed up to it is reflected in the records, none after.
    pub cache_tid: Tid,
}

/// A file read back.
pub struct Loaded {
    pub header: Header,
    /// Most recently used first; only as many as the budget holds.
    pub entries: Vec<Saved>,
    /// Records valid but left out: over the budget.
    pub skipped: u64,
}

/// Why a file cannot be used. It is then dropped, never served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a cache file of this client")]
    Magic,
    #[error("format version {0}, this client reads version {VERSION}")]
    Version(u32),
    #[error("truncated")]
    Truncated,
    #[error("checksum mismatch (corrupt)")]
    Checksum,
    #[error("corrupt: {0}")]
    Corrupt(String),
    #[error("{size} bytes, more than the {limit} this cache size allows")]
    TooLarge { size: u64, limit: u64 },
    #[error("{0} bytes after the end")]
    TrailingBytes(u64),
}

fn corrupt(what: impl Into<String>) -> FileError {
    FileError::Corrupt(what.into())
}

/// A writer that checksums what goes through it.
struct Summing<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.crc.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that checksums what it reads and counts down what remains.
struct Checking<R> {
    inner: R,
    crc: crc32fast::Hasher,
    /// Bytes of the file not read yet (from its size).
    remaining: u64,
}

impl<R: Read> Checking<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], FileError> {
        let mut buf = [0u8; N];
        self.exact(&mut buf)?;
        Ok(buf)
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), FileError> {
        if (buf.len() as u64) > self.remaining {
            return Err(FileError::Truncated);
        }
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => FileError::Truncated,
            _ => FileError::Io(e),
        })?;
        self.remaining -= buf.len() as u64;
        self.crc.update(buf);
        Ok(())
    }

    fn u16(&mut self) -> Result<u16, FileError> {
        Ok(u16::from_be_bytes(self.bytes()?))
    }

    fn u32(&mut self) -> Result<u32, FileError> {
        Ok(u32::from_be_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, FileError> {
        Ok(u64::from_be_bytes(self.bytes()?))
    }
}

/// Writes `header` and `entries` (most recently used first); returns the
/// bytes written.
pub fn encode(out: impl Write, header: &Header, entries: &[Saved]) -> Result<u64, FileError> {
    let name = header.cluster.as_bytes();
    if name.len() > MAX_NAME_BYTES {
        return Err(corrupt("cluster name too long"));
    }
    let mut w = Summing {
        inner: out,
        crc: crc32fast::Hasher::new(),
    };
    w.write_all(&MAGIC)?;
    w.write_all(&VERSION.to_be_bytes())?;
    w.write_all(&(name.len() as u16).to_be_bytes())?;
    w.write_all(name)?;
    w.write_all(&header.first_tid.to_bytes())?;
    w.write_all(&header.cache_tid.to_bytes())?;
    w.write_all(&(entries.len() as u64).to_be_bytes())?;
    let mut size = (MAGIC.len() + 4 + 2 + name.len() + 8 * 3) as u64;
    for entry in entries {
        let len = u32::try_from(entry.data.len()).map_err(|_| corrupt("record over 4 GiB"))?;
        debug_assert!(entry.tid <= header.cache_tid);
        debug_assert!(match entry.next {
            Some(next) => entry.tid < next && next <= header.cache_tid,
            None => true,
        });
        w.write_all(&entry.oid.to_bytes())?;
        w.write_all(&entry.tid.to_bytes())?;
        w.write_all(&entry.next.unwrap_or(Tid::ZERO).to_bytes())?;
        w.write_all(&len.to_be_bytes())?;
        w.write_all(&entry.data)?;
        size += RECORD_HEADER_BYTES + u64::from(len);
    }
    let crc = w.crc.clone().finalize();
    w.inner.write_all(&crc.to_be_bytes())?;
    w.flush()?;
    Ok(size + TRAILER_BYTES)
}

/// Reads a file of `size` bytes, keeping the most recently used records
/// that fit in `budget` (counted as the cache counts them). The whole file
/// is checked (checksum, exact length) before anything is returned.
pub fn decode(input: impl Read, size: u64, budget: usize) -> Result<Loaded, FileError> {
    let mut r = Checking {
        inner: input,
        crc: crc32fast::Hasher::new(),
        remaining: size,
    };
    if r.bytes::<8>().map_err(|_| FileError::Magic)? != MAGIC {
        return Err(FileError::Magic);
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(FileError::Version(version));
    }
    let name_len = usize::from(r.u16()?);
    if name_len > MAX_NAME_BYTES {
        return Err(corrupt("cluster name too long"));
    }
    let mut name = vec![0u8; name_len];
    r.exact(&mut name)?;
    let cluster = String::from_utf8(name).map_err(|_| corrupt("cluster name not UTF-8"))?;
    let first_tid = Tid(r.u64()?);
    let cache_tid = Tid(r.u64()?);
    if cache_tid == Tid::ZERO || first_tid == Tid::ZERO || first_tid > cache_tid {
        return Err(corrupt("TIDs out of order in the header"));
    }
    let count = r.u64()?;
    if count > r.remaining / RECORD_HEADER_BYTES {
        return Err(corrupt(format!("{count} records cannot fit in the file")));
    }
    let mut entries = Vec::new();
    let mut skipped = 0;
    let mut cost = 0usize;
    let mut seen = std::collections::HashSet::new();
    let mut current = std::collections::HashSet::new();
    for _ in 0..count {
        let oid = Oid(r.u64()?);
        let tid = Tid(r.u64()?);
        let next = Some(Tid(r.u64()?)).filter(|next| *next != Tid::ZERO);
        let len = u64::from(r.u32()?);
        if len > r.remaining {
            return Err(FileError::Truncated);
        }
        if tid == Tid::ZERO || tid > cache_tid {
            return Err(corrupt(format!(
                "record {oid} at {tid} after the cache TID"
            )));
        }
        if next.is_some_and(|next| next <= tid || next > cache_tid) {
            return Err(corrupt(format!("record {oid} at {tid} ends out of range")));
        }
        if !seen.insert((oid, tid)) || (next.is_none() && !current.insert(oid)) {
            return Err(corrupt(format!("record {oid} at {tid} twice")));
        }
        // `len` is at most what remains of a file whose size the caller
        // bounded: the allocation is bounded too.
        let mut data = vec![0u8; len as usize];
        r.exact(&mut data)?;
        let entry_cost = data.len() + ENTRY_OVERHEAD;
        if cost + entry_cost <= budget {
            cost += entry_cost;
            entries.push(Saved {
                oid,
                tid,
                next,
                data: Bytes::from(data),
            });
        } else {
            skipped += 1;
        }
    }
    let computed = r.crc.clone().finalize();
    let stored = u32::from_be_bytes(r.bytes()?);
    if stored != computed {
        return Err(FileError::Checksum);
    }
    if r.remaining != 0 {
        return Err(FileError::TrailingBytes(r.remaining));
    }
    Ok(Loaded {
        header: Header {
            cluster,
            first_tid,
            cache_tid,
        },
        entries,
        skipped,
    })
}

/// Where a file is written before it replaces `path`.
fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Replaces the file at `path` atomically: written to a temporary file
/// beside it, fsynced, renamed over it, the directory fsynced. Returns the
/// size written.
pub fn save(path: &Path, header: &Header, entries: &[Saved]) -> Result<u64, FileError> {
    let tmp = temporary(path);
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        let size = encode(&mut out, header, entries)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        File::open(dir.unwrap_or(Path::new(".")))?.sync_all()?;
        Ok(size)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads the file at `path`: `None` if there is none. Files larger than
/// `max_size` are refused unread.
pub fn load(path: &Path, budget: usize, max_size: u64) -> Result<Option<Loaded>, FileError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let size = file.metadata()?.len();
    if size > max_size {
        return Err(FileError::TooLarge {
            size,
            limit: max_size,
        });
    }
    decode(BufReader::with_capacity(1 << 16, file), size, budget).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            cluster: "test".into(),
            first_tid: Tid(5),
            cache_tid: Tid(100),
        }
    }

    fn saved(oid: u64, tid: u64, next: Option<u64>, data: &[u8]) -> Saved {
        Saved {
            oid: Oid(oid),
            tid: Tid(tid),
            next: next.map(Tid),
            data: Bytes::copy_from_slice(data),
        }
    }

    fn sample() -> Vec<Saved> {
        vec![
            saved(1, 10, None, b"one"),
            saved(2, 7, Some(20), b"two, old"),
            saved(2, 20, None, b"two"),
            saved(3, 30, None, b""),
        ]
    }

    fn encoded(header: &Header, entries: &[Saved]) -> Vec<u8> {
        let mut buf = Vec::new();
        let size = encode(&mut buf, header, entries).expect("encode");
        assert_eq!(size, buf.len() as u64);
        buf
    }

    fn decoded(buf: &[u8], budget: usize) -> Result<Loaded, FileError> {
        decode(buf, buf.len() as u64, budget)
    }

    fn same(a: &[Saved], b: &[Saved]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(a, b)| (a.oid, a.tid, a.next, &a.data) == (b.oid, b.tid, b.next, &b.data))
    }

    #[test]
    fn round_trip() {
        let buf = encoded(&header(), &sample());
        let loaded = decoded(&buf, 1 << 20).expect("decode");
        assert_eq!(loaded.header, header());
        assert!(same(&loaded.entries, &sample()));
        assert_eq!(loaded.skipped, 0);
    }

    #[test]
    fn empty_round_trip() {
        let buf = encoded(&header(), &[]);
        let loaded = decoded(&buf, 0).expect("decode");
        assert!(loaded.entries.is_empty());
    }

    /// A smaller budget keeps the most recently used records (the first).
    #[test]
    fn budget_keeps_the_first_records() {
        let buf = encoded(&header(), &sample());
        let budget = 2 * ENTRY_OVERHEAD + 3 + 8;
        let loaded = decoded(&buf, budget).expect("decode");
        assert!(same(&loaded.entries, &sample()[..2]));
        assert_eq!(loaded.skipped, 2);
    }

    /// Every single-byte change, anywhere, is an error (never a panic,
    /// never a file accepted with other contents).
    #[test]
    fn any_corrupt_byte_is_refused() {
        let buf = encoded(&header(), &sample());
        for offset in 0..buf.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = buf.clone();
                bad[offset] ^= flip;
                assert!(
                    decoded(&bad, 1 << 20).is_err(),
                    "byte {offset} ^ {flip:#x} accepted"
                );
            }
        }
    }

    /// Every truncation, and any byte appended, is an error.
    #[test]
    fn any_truncation_is_refused() {
        let buf = encoded(&header(), &sample());
        for len in 0..buf.len() {
            assert!(
                decoded(&buf[..len], 1 << 20).is_err(),
                "{len} bytes accepted"
            );
        }
        let mut longer = buf.clone();
        longer.push(0);
        assert!(matches!(
            decoded(&longer, 1 << 20),
            Err(FileError::TrailingBytes(1))
        ));
    }

    /// A size that does not match the input is an error, not a hang.
    #[test]
    fn size_other_than_input_is_refused() {
        let buf = encoded(&header(), &sample());
        for size in [buf.len() as u64 - 1, buf.len() as u64 + 100, u64::MAX] {
            assert!(decode(&buf[..], size, 1 << 20).is_err(), "size {size}");
        }
    }

    /// The layout of the module's doc comment, written by hand (no checks):
    /// pins the format, and makes files `encode` refuses to write.
    fn raw(cache_tid: u64, records: &[(u64, u64, u64, &[u8])]) -> Vec<u8> {
        let mut buf = b"NEOcache".to_vec();
        buf.extend(1u32.to_be_bytes());
        buf.extend(4u16.to_be_bytes());
        buf.extend(b"test");
        buf.extend(5u64.to_be_bytes());
        buf.extend(cache_tid.to_be_bytes());
        buf.extend((records.len() as u64).to_be_bytes());
        for (oid, tid, next, data) in records {
            buf.extend(oid.to_be_bytes());
            buf.extend(tid.to_be_bytes());
            buf.extend(next.to_be_bytes());
            buf.extend((data.len() as u32).to_be_bytes());
            buf.extend(*data);
        }
        let crc = crc32fast::hash(&buf);
        buf.extend(crc.to_be_bytes());
        buf
    }

    #[test]
    fn layout_is_as_documented() {
        let records: Vec<_> = sample()
            .iter()
            .map(|e| (e.oid.0, e.tid.0, e.next.map_or(0, |n| n.0), e.data.to_vec()))
            .collect();
        let records: Vec<_> = records
            .iter()
            .map(|(o, t, n, d)| (*o, *t, *n, &d[..]))
            .collect();
        assert_eq!(raw(100, &records), encoded(&header(), &sample()));
    }

    #[test]
    fn other_version_is_refused() {
        let mut buf = encoded(&header(), &sample());
        buf[11] = 2;
        assert!(matches!(decoded(&buf, 1 << 20), Err(FileError::Version(2))));
    }

    /// Checksummed but inconsistent records (a writer's bug) are refused:
    /// a record after the cache TID, two current revisions of one oid.
    #[test]
    fn inconsistent_records_are_refused() {
        let x: &[u8] = b"x";
        for records in [
            vec![(1, 101, 0, x)],
            vec![(1, 0, 0, x)],
            vec![(1, 10, 101, x)],
            vec![(1, 10, 10, x)],
            vec![(1, 10, 0, x), (1, 20, 0, x)],
            vec![(1, 10, 20, x), (1, 10, 20, x)],
        ] {
            let buf = raw(100, &records);
            assert!(
                matches!(decoded(&buf, 1 << 20), Err(FileError::Corrupt(_))),
                "{records:?} accepted"
            );
        }
        assert!(matches!(
            decoded(&raw(0, &[]), 1 << 20),
            Err(FileError::Corrupt(_))
        ));
        assert!(decoded(&raw(100, &[(1, 10, 20, x), (1, 20, 0, x)]), 1 << 20).is_ok());
    }

    #[test]
    fn save_and_load_replace_the_file() {
        let dir = std::env::temp_dir().join(format!("neo-cache-file-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("cache");
        assert!(load(&path, 1 << 20, 1 << 20).expect("load").is_none());
        save(&path, &header(), &sample()[..1]).expect("save");
        save(&path, &header(), &sample()).expect("save again");
        let loaded = load(&path, 1 << 20, 1 << 20)
            .expect("load")
            .expect("a file");
        assert!(same(&loaded.entries, &sample()));
        assert!(!temporary(&path).exists());
        assert!(matches!(
            load(&path, 1 << 20, 10),
            Err(FileError::TooLarge { limit: 10, .. })
        ));
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
