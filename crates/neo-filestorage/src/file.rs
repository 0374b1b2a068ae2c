//! Reading records at given positions with pread: no shared seek position,
//! so one open file serves every thread. Every read is checked against an
//! end (the committed size) first: a length read from the file never makes
//! us allocate past it, and reading past it is `Truncated`, not a short read.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::format::{
    read_u64, DataHeader, TxnHeader, DATA_HEADER_LEN, FIRST_TXN_POS, MAGIC, MAGIC_PYTHON2,
    TXN_HEADER_LEN, U64_LEN,
};
use crate::{Error, Oid, Result, Tid};

#[derive(Debug)]
pub struct DataFile {
    pub path: PathBuf,
    pub file: File,
}

/// A data record's header with its backpointer (0 when it has data or none).
#[derive(Debug, Clone, Copy)]
pub struct RecordHeader {
    pub header: DataHeader,
    pub back: u64,
}

impl DataFile {
    pub fn open(path: &Path, file: File) -> DataFile {
        DataFile {
            path: path.to_owned(),
            file,
        }
    }

    pub fn corrupt(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::corrupt(&self.path, offset, reason)
    }

    pub fn truncated(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::truncated(&self.path, offset, reason)
    }

    pub fn check_magic(&self, file_len: u64) -> Result<()> {
        let mut magic = [0; MAGIC.len()];
        self.read_exact_at(&mut magic, 0, file_len, "magic")?;
        if &magic != MAGIC && &magic != MAGIC_PYTHON2 {
            return Err(Error::NotFileStorage {
                path: self.path.clone(),
                magic,
            });
        }
        Ok(())
    }

    pub fn len(&self) -> Result<u64> {
        let meta = self.file.metadata().map_err(|e| Error::io(&self.path, e))?;
        Ok(meta.len())
    }

    /// Fills `buf` from `pos`, which must end by `end`.
    pub fn read_exact_at(&self, buf: &mut [u8], pos: u64, end: u64, what: &str) -> Result<()> {
        let past_end = match pos.checked_add(buf.len() as u64) {
            Some(stop) => stop > end,
            None => true,
        };
        if past_end {
            return Err(self.truncated(
                pos,
                format!("{what} ({} bytes) goes past the end ({end})", buf.len()),
            ));
        }
        self.file
            .read_exact_at(buf, pos)
            .map_err(|e| match e.kind() {
                // The file shrank under us.
                io::ErrorKind::UnexpectedEof => self.truncated(pos, format!("{what}: end of file")),
                _ => Error::io(&self.path, e),
            })
    }

    /// Reads `len` bytes at `pos`, allocating only once `pos + len <= end`
    /// is known.
    pub fn read_vec(&self, pos: u64, len: u64, end: u64, what: &str) -> Result<Vec<u8>> {
        let fits = pos.checked_add(len).is_some_and(|stop| stop <= end);
        let len = match usize::try_from(len) {
            Ok(len) if fits => len,
            _ => {
                return Err(self.truncated(
                    pos,
                    format!("{what} ({len} bytes) goes past the end ({end})"),
                ))
            }
        };
        let mut buf = vec![0; len];
        self.read_exact_at(&mut buf, pos, end, what)?;
        Ok(buf)
    }

    pub fn read_u64(&self, pos: u64, end: u64, what: &str) -> Result<u64> {
        let mut b = [0; U64_LEN];
        self.read_exact_at(&mut b, pos, end, what)?;
        Ok(u64::from_be_bytes(b))
    }

    pub fn read_txn_header(&self, pos: u64, end: u64) -> Result<TxnHeader> {
        let mut b = [0; TXN_HEADER_LEN];
        self.read_exact_at(&mut b, pos, end, "transaction header")?;
        Ok(TxnHeader::parse(&b))
    }

    /// The record at `pos` (with its backpointer), checked to be of `oid`
    /// when one is expected and to fit before `end`.
    pub fn read_record_header(&self, pos: u64, end: u64, oid: Option<Oid>) -> Result<RecordHeader> {
        // One read for header and backpointer when both are there.
        let mut b = [0; DATA_HEADER_LEN + U64_LEN];
        let avail = end.saturating_sub(pos).min(b.len() as u64) as usize;
        let (head, _) = b.split_at_mut(avail.max(DATA_HEADER_LEN));
        self.read_exact_at(head, pos, end, "data record header")?;
        let (fixed, rest) = b.split_at(DATA_HEADER_LEN);
        let fixed: &[u8; DATA_HEADER_LEN] = fixed
            .try_into()
            .map_err(|_| self.corrupt(pos, "header size"))?;
        let header = DataHeader::parse(fixed);
        if let Some(oid) = oid {
            if header.oid != oid {
                return Err(self.corrupt(
                    pos,
                    format!(
                        "record of oid {:016x} where oid {oid:016x} was expected",
                        header.oid
                    ),
                ));
            }
        }
        check_record(self, pos, &header, end)?;
        let back = if header.plen == 0 {
            read_u64(rest).ok_or_else(|| self.truncated(pos, "backpointer missing"))?
        } else {
            0
        };
        Ok(RecordHeader { header, back })
    }

    /// The data of the record at `pos` whose header is `rec`.
    pub fn read_data(&self, pos: u64, rec: &RecordHeader, end: u64) -> Result<Vec<u8>> {
        self.read_vec(pos + DATA_HEADER_LEN as u64, rec.header.plen, end, "data")
    }

    /// Follows the backpointer `back` of `oid`'s record at `pos` to the
    /// record holding the data, if the chain does not end in a record
    /// without data. Each link must point backwards, so that a damaged
    /// chain cannot loop.
    pub fn resolve_back(&self, oid: Oid, pos: u64, back: u64, end: u64) -> Result<Resolved> {
        let mut from = pos;
        let mut at = back;
        let mut data_txn = None;
        loop {
            if at >= from || at < FIRST_TXN_POS {
                return Err(self.corrupt(
                    from,
                    format!("backpointer {at} of oid {oid:016x} does not point backwards"),
                ));
            }
            let rec = self.read_record_header(at, end, Some(oid))?;
            let data_txn = *data_txn.get_or_insert(rec.header.tid);
            if rec.header.plen != 0 {
                return Ok(Resolved {
                    data_txn,
                    target: Some((at, rec)),
                });
            }
            if rec.back == 0 {
                return Ok(Resolved {
                    data_txn,
                    target: None,
                });
            }
            from = at;
            at = rec.back;
        }
    }
}

/// Where a backpointer leads.
pub struct Resolved {
    /// Tid of the record the backpointer points at (ZODB's `data_txn`,
    /// even when that record points further).
    pub data_txn: Tid,
    /// Position and header of the record with the data; None when the
    /// chain ends in a record without data.
    pub target: Option<(u64, RecordHeader)>,
}

/// Bytes read ahead for sequential reading: big reads, not a syscall per
/// field.
const WINDOW_LEN: usize = 4 << 20;

/// A read-ahead buffer over a [`DataFile`] for reading it in order (the
/// scan at open, iteration). A piece larger than the window is read into a
/// window of its size, which [`Window::take`] avoids for record data.
#[derive(Debug, Default)]
pub struct Window {
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    start: u64,
}

impl Window {
    /// The `len` bytes at `pos`, which must end by `end`.
    pub fn get(
        &mut self,
        data: &DataFile,
        pos: u64,
        len: usize,
        end: u64,
        what: &str,
    ) -> Result<&[u8]> {
        let Some(stop) = pos.checked_add(len as u64).filter(|&stop| stop <= end) else {
            return Err(data.truncated(
                pos,
                format!("{what} ({len} bytes) goes past the end ({end})"),
            ));
        };
        let cached = pos >= self.start && stop <= self.start + self.buf.len() as u64;
        if !cached {
            // Bounded by `end`, itself checked against the file's size.
            let want = (len.max(WINDOW_LEN) as u64).min(end - pos) as usize;
            self.buf.resize(want, 0);
            self.start = pos;
            if let Err(e) = data.read_exact_at(&mut self.buf, pos, end, what) {
                self.buf.clear();
                return Err(e);
            }
        }
        let at = (pos - self.start) as usize;
        self.buf
            .get(at..at + len)
            .ok_or_else(|| data.corrupt(pos, format!("{what}: read-ahead window out of step")))
    }

    /// `len` bytes at `pos` as a new vector: copied from the window when
    /// small, read straight from the file when large.
    pub fn take(
        &mut self,
        data: &DataFile,
        pos: u64,
        len: u64,
        end: u64,
        what: &str,
    ) -> Result<Vec<u8>> {
        match usize::try_from(len) {
            Ok(small) if small <= WINDOW_LEN / 4 => {
                Ok(self.get(data, pos, small, end, what)?.to_vec())
            }
            _ => data.read_vec(pos, len, end, what),
        }
    }

    pub fn u64(&mut self, data: &DataFile, pos: u64, end: u64) -> Result<u64> {
        let b = self.get(data, pos, U64_LEN, end, "redundant transaction length")?;
        read_u64(b).ok_or_else(|| data.truncated(pos, "8 bytes expected"))
    }

    pub fn txn_header(&mut self, data: &DataFile, pos: u64, end: u64) -> Result<TxnHeader> {
        let b = self.get(data, pos, TXN_HEADER_LEN, end, "transaction header")?;
        let b: &[u8; TXN_HEADER_LEN] =
            b.try_into().map_err(|_| data.corrupt(pos, "header size"))?;
        Ok(TxnHeader::parse(b))
    }

    /// The record at `pos`, which must end by `end` (its transaction's end).
    pub fn record_header(&mut self, data: &DataFile, pos: u64, end: u64) -> Result<RecordHeader> {
        let b = self.get(data, pos, DATA_HEADER_LEN, end, "data record header")?;
        let b: &[u8; DATA_HEADER_LEN] =
            b.try_into().map_err(|_| data.corrupt(pos, "header size"))?;
        let header = DataHeader::parse(b);
        check_record(data, pos, &header, end)?;
        let back = if header.plen == 0 {
            let at = pos + DATA_HEADER_LEN as u64;
            read_u64(self.get(data, at, U64_LEN, end, "backpointer")?)
                .ok_or_else(|| data.truncated(at, "backpointer"))?
        } else {
            0
        };
        Ok(RecordHeader { header, back })
    }
}

/// What every record must satisfy to be read at all.
fn check_record(data: &DataFile, pos: u64, header: &DataHeader, end: u64) -> Result<()> {
    if header.vlen != 0 {
        return Err(data.corrupt(
            pos,
            format!(
                "version length {} (versions are gone since ZODB 3.9)",
                header.vlen
            ),
        ));
    }
    if pos.saturating_add(header.record_len()) > end {
        return Err(data.corrupt(
            pos,
            format!(
                "data record of {} bytes goes past its end ({end})",
                header.record_len()
            ),
        ));
    }
    Ok(())
}
