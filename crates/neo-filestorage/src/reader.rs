//! The read-only view of a Data.fs: the index at open, then everything
//! else read from the file when asked.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::file::{DataFile, RecordHeader, Window};
use crate::format::{DATA_HEADER_LEN, FIRST_TXN_POS, STATUS_UNDONE, TXN_HEADER_LEN, U64_LEN};
use crate::index::{self, OidIndex};
use crate::{Error, Load, Loaded, Oid, Record, Result, Tid, Transaction};

/// Read-only view of a Data.fs; cheap to clone (Arc inside), Send + Sync,
/// reads with pread so `&self` methods are safe from several threads.
#[derive(Clone)]
pub struct FileStorage {
    inner: Arc<Inner>,
}

struct Inner {
    data: DataFile,
    /// End of the committed transactions: nothing past it is read, so a
    /// writer may append meanwhile.
    size: u64,
    index: OidIndex,
    first_tid: Option<Tid>,
    last_tid: Option<Tid>,
    last_oid: Option<Oid>,
    index_used: bool,
    /// (tid, position) of every transaction, to find where an iteration
    /// starts without reading records: known at open after a full scan,
    /// else built from the transaction headers alone the first time it is
    /// needed.
    txns: OnceLock<Vec<(Tid, u64)>>,
}

impl FileStorage {
    /// Opens read-only: uses «path».index when valid (ZODB's fsIndex
    /// format) and scans only what follows its position; otherwise scans
    /// the file. A file ending in the middle of a transaction, or with a
    /// transaction still marked 'c', is read up to there, as ZODB does.
    pub fn open(path: impl AsRef<Path>) -> Result<FileStorage> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let data = DataFile::new(path, file);
        let file_len = data.len()?;
        let scanned = if file_len == 0 {
            // ZODB reads an empty file as an empty storage.
            index::Scanned::empty()
        } else {
            data.check_magic(file_len)?;
            index::build(&data, file_len)?
        };
        let first_tid = if scanned.size > FIRST_TXN_POS {
            Some(data.read_txn_header(FIRST_TXN_POS, scanned.size)?.tid)
        } else {
            None
        };
        Ok(FileStorage {
            inner: Arc::new(Inner {
                size: scanned.size,
                first_tid,
                last_tid: scanned.last_tid,
                last_oid: scanned.index.keys().max().copied(),
                index: scanned.index,
                index_used: scanned.index_used,
                txns: scanned.txns.map_or_else(OnceLock::new, OnceLock::from),
                data,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.data.path
    }

    /// Refuses a file that goes on past its last whole transaction: the
    /// tail a crash leaves (or a commit in progress), which ZODB ignores
    /// without a word. A migration must not leave it behind unnoticed.
    pub fn check_complete(&self) -> Result<()> {
        let length = self.inner.data.len()?;
        if length > self.inner.size {
            return Err(Error::truncated(
                &self.inner.data.path,
                self.inner.size,
                format!(
                    "{} bytes of an incomplete transaction after the last whole one (a crash, \
                     or a commit in progress); opening the file once with ZODB cuts them off",
                    length - self.inner.size
                ),
            ));
        }
        Ok(())
    }

    /// Bytes of committed transactions, the magic included (ZODB's getSize).
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    pub fn first_tid(&self) -> Option<Tid> {
        self.inner.first_tid
    }

    pub fn last_tid(&self) -> Option<Tid> {
        self.inner.last_tid
    }

    /// The greatest oid having a record.
    pub fn last_oid(&self) -> Option<Oid> {
        self.inner.last_oid
    }

    /// Oids in the index.
    pub fn object_count(&self) -> usize {
        self.inner.index.len()
    }

    /// Whether open trusted «path».index (and scanned only what follows it).
    pub fn index_used(&self) -> bool {
        self.inner.index_used
    }

    /// Transactions with start <= tid <= stop, ascending, read lazily.
    pub fn iter(&self, start: Option<Tid>, stop: Option<Tid>) -> TransactionIter {
        let (pos, pending) = match start {
            None => (FIRST_TXN_POS, None),
            Some(start) => match self.txns() {
                Ok(txns) => {
                    let i = txns.partition_point(|&(tid, _)| tid < start);
                    (txns.get(i).map_or(self.inner.size, |&(_, pos)| pos), None)
                }
                Err(e) => (self.inner.size, Some(e)),
            },
        };
        TransactionIter {
            fs: self.clone(),
            pos,
            stop,
            pending,
            last: None,
            window: Window::default(),
        }
    }

    /// The transaction with this tid, if the file has it.
    pub fn transaction(&self, tid: Tid) -> Result<Option<Transaction>> {
        match self.iter(Some(tid), Some(tid)).next() {
            Some(Ok(txn)) => Ok(Some(txn)),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }

    /// Newest revision of `oid` with serial < before (ZODB's loadBefore).
    pub fn load_before(&self, oid: Oid, before: Tid) -> Result<Load> {
        self.find(oid, |tid| tid < before)
    }

    /// The revision of `oid` with exactly this serial (ZODB's loadSerial).
    pub fn load_serial(&self, oid: Oid, serial: Tid) -> Result<Load> {
        match self.find(oid, |tid| tid <= serial)? {
            Load::Found(Loaded { serial: found, .. }) | Load::NoData { serial: found, .. }
                if found != serial =>
            {
                Ok(Load::NoRevision)
            }
            load => Ok(load),
        }
    }

    /// (serial, data length) of each revision, newest first. Unlike ZODB,
    /// which gives 0 for an undo, the length is that of the data the
    /// revision has, backpointers followed (0: no data).
    pub fn history(&self, oid: Oid) -> Result<Vec<(Tid, usize)>> {
        let mut history = Vec::new();
        let mut at = self.inner.index.get(&oid).copied();
        while let Some(pos) = at {
            let rec = self.record(oid, pos)?;
            let len = match self.data_of(oid, pos, &rec)? {
                (Some(target), _) => target.rec.header.plen,
                (None, _) => 0,
            };
            let len =
                usize::try_from(len).map_err(|_| self.inner.data.corrupt(pos, "data length"))?;
            history.push((rec.header.tid, len));
            at = self.previous(pos, &rec)?;
        }
        Ok(history)
    }

    /// The newest revision of `oid` whose tid satisfies `wanted`, walking
    /// back from the newest; the tid of the revision after it is its
    /// next_serial.
    fn find(&self, oid: Oid, wanted: impl Fn(Tid) -> bool) -> Result<Load> {
        let Some(&newest) = self.inner.index.get(&oid) else {
            return Ok(Load::NoSuchOid);
        };
        let mut pos = newest;
        let mut next_serial = None;
        loop {
            let rec = self.record(oid, pos)?;
            if wanted(rec.header.tid) {
                return self.load_at(oid, pos, &rec, next_serial);
            }
            next_serial = Some(rec.header.tid);
            match self.previous(pos, &rec)? {
                Some(prev) => pos = prev,
                None => return Ok(Load::NoRevision),
            }
        }
    }

    fn load_at(
        &self,
        oid: Oid,
        pos: u64,
        rec: &RecordHeader,
        next_serial: Option<Tid>,
    ) -> Result<Load> {
        let serial = rec.header.tid;
        let (target, data_txn) = self.data_of(oid, pos, rec)?;
        Ok(match target {
            Some(target) => Load::Found(Loaded {
                data: self
                    .inner
                    .data
                    .read_data(target.pos, &target.rec, self.inner.size)?,
                serial,
                next_serial,
                data_txn,
            }),
            None => Load::NoData {
                serial,
                next_serial,
            },
        })
    }

    /// Where the data of `oid`'s record at `pos` is (None: it has none),
    /// and the tid its backpointer points at, if it has one.
    fn data_of(
        &self,
        oid: Oid,
        pos: u64,
        rec: &RecordHeader,
    ) -> Result<(Option<Target>, Option<Tid>)> {
        let data = &self.inner.data;
        if rec.header.plen != 0 {
            return Ok((Some(Target { pos, rec: *rec }), None));
        }
        if rec.back == 0 {
            return Ok((None, None));
        }
        let resolved = data.resolve_back(oid, pos, rec.back, self.inner.size)?;
        let target = resolved.target.map(|(pos, rec)| Target { pos, rec });
        Ok((target, Some(resolved.data_txn)))
    }

    fn record(&self, oid: Oid, pos: u64) -> Result<RecordHeader> {
        self.inner
            .data
            .read_record_header(pos, self.inner.size, Some(oid))
    }

    /// The position of the revision before the record at `pos`; it must be
    /// earlier in the file, so that a damaged chain cannot loop.
    fn previous(&self, pos: u64, rec: &RecordHeader) -> Result<Option<u64>> {
        match rec.header.prev {
            0 => Ok(None),
            prev if prev < pos => Ok(Some(prev)),
            prev => Err(self.inner.data.corrupt(
                pos,
                format!("previous record {prev} is not before this one"),
            )),
        }
    }

    fn txns(&self) -> Result<&[(Tid, u64)]> {
        if let Some(txns) = self.inner.txns.get() {
            return Ok(txns);
        }
        let built = self.walk_txn_headers()?;
        // Another thread may have built it meanwhile: the same list.
        Ok(self.inner.txns.get_or_init(|| built))
    }

    /// Every transaction's (tid, position), reading only their headers.
    fn walk_txn_headers(&self) -> Result<Vec<(Tid, u64)>> {
        let data = &self.inner.data;
        let size = self.inner.size;
        let mut txns = Vec::new();
        let mut pos = FIRST_TXN_POS;
        let mut last = None;
        while pos < size {
            let header = data.read_txn_header(pos, size)?;
            if pos.saturating_add(header.total_len()) > size {
                return Err(data.corrupt(
                    pos,
                    format!(
                        "transaction length {} past the committed end {size}",
                        header.tlen
                    ),
                ));
            }
            index::check_order(data, pos, &header, last)?;
            if header.status != STATUS_UNDONE {
                txns.push((header.tid, pos));
            }
            last = Some(header.tid);
            pos += header.total_len();
        }
        Ok(txns)
    }
}

struct Target {
    pos: u64,
    rec: RecordHeader,
}

/// The transactions of an interval, read lazily in order with a read-ahead
/// window. After an error it ends.
pub struct TransactionIter {
    fs: FileStorage,
    /// Position of the next transaction header.
    pos: u64,
    stop: Option<Tid>,
    /// An error met before the first transaction (finding the start).
    pending: Option<Error>,
    /// Tid of the transaction read last, to check their order.
    last: Option<Tid>,
    window: Window,
}

impl Iterator for TransactionIter {
    type Item = Result<Transaction>;

    fn next(&mut self) -> Option<Result<Transaction>> {
        if let Some(e) = self.pending.take() {
            return Some(Err(e));
        }
        match self.read_next() {
            Ok(txn) => txn.map(Ok),
            Err(e) => {
                self.pos = self.fs.inner.size;
                Some(Err(e))
            }
        }
    }
}

impl TransactionIter {
    fn read_next(&mut self) -> Result<Option<Transaction>> {
        // A handle of our own, so that `self` stays free to borrow.
        let inner = Arc::clone(&self.fs.inner);
        let (data, size) = (&inner.data, inner.size);
        loop {
            let pos = self.pos;
            if pos >= size {
                return Ok(None);
            }
            let header = self.window.txn_header(data, pos, size)?;
            if pos.saturating_add(header.total_len()) > size || header.tlen < header.header_len() {
                return Err(data.corrupt(
                    pos,
                    format!("transaction length {} does not fit", header.tlen),
                ));
            }
            if self.stop.is_some_and(|stop| header.tid > stop) {
                self.pos = size;
                return Ok(None);
            }
            index::check_order(data, pos, &header, self.last)?;
            self.last = Some(header.tid);
            let tend = pos + header.tlen;
            index::check_redundant_length(data, &mut self.window, tend, &header)?;
            self.pos = tend + U64_LEN as u64;
            if header.status == STATUS_UNDONE {
                continue;
            }
            let meta_len = (header.header_len() - TXN_HEADER_LEN as u64) as usize;
            let meta_pos = pos + TXN_HEADER_LEN as u64;
            let meta = self.window.get(
                data,
                meta_pos,
                meta_len,
                tend,
                "user, description and extension",
            )?;
            let (user, rest) = meta.split_at(usize::from(header.ulen));
            let (description, extension) = rest.split_at(usize::from(header.dlen));
            let mut txn = Transaction {
                tid: header.tid,
                status: header.status,
                user: user.to_vec(),
                description: description.to_vec(),
                extension: extension.to_vec(),
                position: pos,
                records: Vec::new(),
            };
            let mut rpos = pos + header.header_len();
            while rpos < tend {
                let rec = self.window.record_header(data, rpos, tend)?;
                if rec.header.tpos != pos {
                    return Err(data.corrupt(
                        rpos,
                        format!(
                            "record points to transaction {}, not {pos}",
                            rec.header.tpos
                        ),
                    ));
                }
                txn.records.push(self.record(rpos, &rec, tend)?);
                rpos += rec.header.record_len();
            }
            return Ok(Some(txn));
        }
    }

    /// The record at `pos`, its backpointer followed as ZODB's iterator
    /// does.
    fn record(&mut self, pos: u64, rec: &RecordHeader, tend: u64) -> Result<Record> {
        let oid = rec.header.oid;
        let data_file = &self.fs.inner.data;
        if rec.header.plen != 0 {
            let at = pos + DATA_HEADER_LEN as u64;
            let data = self
                .window
                .take(data_file, at, rec.header.plen, tend, "data")?;
            return Ok(Record {
                oid,
                data: Some(data),
                data_txn: None,
            });
        }
        if rec.back == 0 {
            return Ok(Record {
                oid,
                data: None,
                data_txn: None,
            });
        }
        let resolved = data_file.resolve_back(oid, pos, rec.back, self.fs.inner.size)?;
        let data = match resolved.target {
            Some((at, target)) => Some(data_file.read_data(at, &target, self.fs.inner.size)?),
            None => None,
        };
        Ok(Record {
            oid,
            data,
            data_txn: Some(resolved.data_txn),
        })
    }
}
