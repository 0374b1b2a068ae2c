//! Appending transactions to a Data.fs, as ZODB's FileStorage commits
//! them: one write per transaction, the redundant length last, the index
//! saved on close.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::file::DataFile;
use crate::format::{
    DataHeader, TxnHeader, MAGIC, STATUS_COMMITTED, STATUS_PACKED, TXN_HEADER_LEN,
};
use crate::index::{self, OidIndex, MAX_POSITION};
use crate::{Error, NewRecord, NewTransaction, Oid, Result, Tid};

/// Appends transactions to a Data.fs, holding «path».lock as ZODB does. A
/// new file gets the FS30 magic: the one ZODB writes on Python 3, and the
/// only one it opens there. Dropping the writer without [`Writer::close`]
/// leaves no `.index` (the next open scans), as a crash would.
pub struct Writer {
    data: DataFile,
    /// Holds the flock on «path».lock for as long as the writer lives.
    _lock: LockFile,
    index: OidIndex,
    /// End of the committed transactions, where the next one goes.
    size: u64,
    last_tid: Option<Tid>,
}

impl Writer {
    /// Creates the file or opens it to append. A tail ZODB would cut off
    /// (a transaction cut short by a crash) is saved to «path».trN and cut
    /// off, as ZODB does when it opens a file for writing.
    pub fn open(path: impl AsRef<Path>) -> Result<Writer> {
        let path = path.as_ref();
        let lock = take_lock(path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let data = DataFile::open(path, file);
        if data.len()? == 0 {
            data.file
                .write_all_at(MAGIC, 0)
                .map_err(|e| Error::io(path, e))?;
        }
        let file_len = data.len()?;
        data.check_magic(file_len)?;
        let scanned = index::build(&data, file_len)?;
        if file_len > scanned.size {
            save_tail(&data, scanned.size, file_len)?;
        }
        Ok(Writer {
            data,
            _lock: lock,
            index: scanned.index,
            size: scanned.size,
            last_tid: scanned.last_tid,
        })
    }

    pub fn last_tid(&self) -> Option<Tid> {
        self.last_tid
    }

    /// Appends one committed transaction; its tid must be > last_tid.
    /// `data_txn: Some(t)` writes a backpointer to the record of `oid` at
    /// `t`, which must exist; data None and data_txn None writes a no-data
    /// record.
    pub fn append(&mut self, txn: &NewTransaction<'_>) -> Result<()> {
        let path = &self.data.path;
        if let Some(last) = self.last_tid.filter(|&last| txn.tid <= last) {
            return Err(Error::TidNotIncreasing {
                path: path.clone(),
                tid: txn.tid,
                last,
            });
        }
        let bytes = self.encode(txn)?;
        let end = self.size + bytes.buf.len() as u64;
        if end >= MAX_POSITION {
            return Err(Error::invalid(
                path,
                txn.tid,
                None,
                "the file would outgrow ZODB's 6-byte positions",
            ));
        }
        if let Err(e) = self.data.file.write_all_at(&bytes.buf, self.size) {
            // Leave no partial transaction behind, as ZODB's abort does.
            let _ = self.data.file.set_len(self.size);
            return Err(Error::io(path, e));
        }
        self.index.extend(bytes.positions);
        self.size = end;
        self.last_tid = Some(txn.tid);
        Ok(())
    }

    /// fsync.
    pub fn sync(&mut self) -> Result<()> {
        self.data
            .file
            .sync_all()
            .map_err(|e| Error::io(&self.data.path, e))
    }

    /// fsync, then writes «path».index in ZODB's format so that ZODB (and
    /// [`crate::FileStorage::open`]) read it instead of scanning the file.
    pub fn close(mut self) -> Result<()> {
        self.sync()?;
        index::save(&self.data.path, self.size, &self.index)
            .map_err(|e| Error::io(&index::index_path(&self.data.path), e))
    }

    /// The transaction as it goes on disk, with the position of each record.
    fn encode(&self, txn: &NewTransaction<'_>) -> Result<Encoded> {
        let path = &self.data.path;
        let invalid = |oid, reason: String| Error::invalid(path, txn.tid, oid, reason);
        if ![STATUS_COMMITTED, STATUS_PACKED].contains(&txn.status) {
            return Err(invalid(
                None,
                format!("status {:?} is not ' ' or 'p'", char::from(txn.status)),
            ));
        }
        let len16 = |field: &[u8], what: &str| {
            u16::try_from(field.len()).map_err(|_| {
                invalid(
                    None,
                    format!("{what} of {} bytes (at most 65535)", field.len()),
                )
            })
        };
        let mut header = TxnHeader {
            tid: txn.tid,
            tlen: 0,
            status: txn.status,
            ulen: len16(txn.user, "user")?,
            dlen: len16(txn.description, "description")?,
            elen: len16(txn.extension, "extension")?,
        };
        let mut buf = Vec::with_capacity(TXN_HEADER_LEN);
        buf.extend_from_slice(&header.encode());
        buf.extend_from_slice(txn.user);
        buf.extend_from_slice(txn.description);
        buf.extend_from_slice(txn.extension);
        let mut positions = Vec::with_capacity(txn.records.len());
        let mut seen = HashSet::with_capacity(txn.records.len());
        for record in &txn.records {
            let oid = record.oid;
            if !seen.insert(oid) {
                return Err(invalid(Some(oid), format!("oid {oid:016x} twice")));
            }
            let pos = self.size + buf.len() as u64;
            let (plen, payload) = self.payload(txn.tid, record)?;
            let record_header = DataHeader {
                oid,
                tid: txn.tid,
                prev: self.index.get(&oid).copied().unwrap_or(0),
                tpos: self.size,
                vlen: 0,
                plen,
            };
            buf.extend_from_slice(&record_header.encode());
            match payload {
                Payload::Data(data) => buf.extend_from_slice(data),
                Payload::Back(back) => buf.extend_from_slice(&back.to_be_bytes()),
            }
            positions.push((oid, pos));
        }
        header.tlen = buf.len() as u64;
        buf[..TXN_HEADER_LEN].copy_from_slice(&header.encode());
        buf.extend_from_slice(&header.tlen.to_be_bytes());
        Ok(Encoded { buf, positions })
    }

    /// plen and what follows a record's header: its data, or a backpointer
    /// (0 for no data).
    fn payload<'a>(&self, tid: Tid, record: &NewRecord<'a>) -> Result<(u64, Payload<'a>)> {
        let path = &self.data.path;
        let oid = record.oid;
        let invalid = |reason: String| Error::invalid(path, tid, Some(oid), reason);
        match (record.data, record.data_txn) {
            (_, Some(data_txn)) => {
                let back = self.record_at(oid, data_txn)?.ok_or_else(|| {
                    invalid(format!(
                        "no record of oid {oid:016x} at {data_txn:016x} for the backpointer"
                    ))
                })?;
                if let Some(data) = record.data {
                    let resolved = self.data.resolve_back(oid, self.size, back, self.size)?;
                    let same = match resolved.target {
                        Some((at, target)) => self.data.read_data(at, &target, self.size)? == data,
                        None => false,
                    };
                    if !same {
                        return Err(invalid(format!(
                            "data of oid {oid:016x} differs from its revision at {data_txn:016x}"
                        )));
                    }
                }
                Ok((0, Payload::Back(back)))
            }
            (Some([]), None) => Err(invalid(format!(
                "empty data for oid {oid:016x}: a length of 0 means a backpointer"
            ))),
            (Some(data), None) => Ok((data.len() as u64, Payload::Data(data))),
            (None, None) => Ok((0, Payload::Back(0))),
        }
    }

    /// Position of `oid`'s record written by `tid`, walking its chain of
    /// previous records back from the newest.
    fn record_at(&self, oid: Oid, tid: Tid) -> Result<Option<u64>> {
        let mut at = self.index.get(&oid).copied();
        while let Some(pos) = at {
            let rec = self.data.read_record_header(pos, self.size, Some(oid))?;
            if rec.header.tid == tid {
                return Ok(Some(pos));
            }
            if rec.header.tid < tid {
                return Ok(None);
            }
            at = match rec.header.prev {
                0 => None,
                prev if prev < pos => Some(prev),
                prev => {
                    return Err(self.data.corrupt(
                        pos,
                        format!("previous record {prev} is not before this one"),
                    ))
                }
            };
        }
        Ok(None)
    }
}

struct Encoded {
    buf: Vec<u8>,
    positions: Vec<(Oid, u64)>,
}

enum Payload<'a> {
    Data(&'a [u8]),
    Back(u64),
}

/// «path».lock, locked.
struct LockFile(File);

impl Drop for LockFile {
    /// Unlocks explicitly: a child process forked meanwhile by another
    /// thread shares the open file (until its exec closes it), and with it
    /// the lock, which closing our descriptor alone would leave held.
    fn drop(&mut self) {
        let _ = flock(&self.0, FlockOperation::Unlock);
    }
}

/// Takes «path».lock as zc.lockfile does: an exclusive, non-blocking flock,
/// then our pid written into it.
fn take_lock(path: &Path) -> Result<LockFile> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let io_error = |e| Error::io(&lock_path, e);
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io_error)?;
    match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            return Err(Error::Locked { path: lock_path })
        }
        Err(e) => return Err(io_error(io::Error::from(e))),
    }
    let pid = format!(" {}\n", std::process::id());
    lock.write_all(pid.as_bytes()).map_err(io_error)?;
    lock.set_len(pid.len() as u64).map_err(io_error)?;
    Ok(LockFile(lock))
}

/// Copies the ignored tail to the first free «path».trN and cuts it off.
fn save_tail(data: &DataFile, size: u64, file_len: u64) -> Result<()> {
    let tail = data.read_vec(size, file_len - size, file_len, "ignored tail")?;
    let mut n = 0;
    let (saved, mut out) = loop {
        let mut name = data.path.as_os_str().to_owned();
        name.push(format!(".tr{n}"));
        let name = PathBuf::from(name);
        match OpenOptions::new().write(true).create_new(true).open(&name) {
            Ok(out) => break (name, out),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(Error::io(&name, e)),
        }
    };
    out.write_all(&tail).map_err(|e| Error::io(&saved, e))?;
    tracing::warn!(file = %data.path.display(), size, saved = %saved.display(), "cutting off a damaged tail, as ZODB does");
    data.file
        .set_len(size)
        .map_err(|e| Error::io(&data.path, e))
}
