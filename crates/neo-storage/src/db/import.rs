//! The database while it imports (architecture.md §12.7): what is not
//! imported yet is read from the sources, and what the reading thread
//! prepared is inserted, transaction by transaction, into the permanent
//! tables.
//!
//! The sources cover tids up to `last_tid` (`zodb_ltid`); the destination
//! holds what was imported, up to `imported` (`zodb_tid`), and what
//! clients committed since the start, all above `last_tid` (the master
//! allocates tids above the last ids this node reports). So a revision
//! with a serial in `(imported, last_tid]` is read from the sources, any
//! other from the destination.

use neo_filestorage::Load;
use neo_proto::packets::HistoryEntry;
use neo_proto::{Checksum, Oid, Partition, Tid};

use super::{Database, LastIds, ObjectLookup};
use crate::backend::{
    FatalError, ObjectRecord, ObjectRow, RequestError, Result, Revision, TransactionMeta,
};
use crate::importer::{
    self, ImportError, ImportProgress, Importer, Next, IMPORTED_KEY, LAST_TID_KEY,
};

/// What one import step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportStep {
    /// No import is in progress.
    Idle,
    /// The reading thread has nothing ready yet.
    Waiting,
    /// Transactions were inserted (not committed yet).
    Inserted(usize),
    /// The last transaction was inserted and committed.
    Finished,
}

/// Transactions written back per step.
const WRITEBACK_BATCH: u64 = 64;

/// History entries read per page when looking for a revision.
const HISTORY_PAGE: u64 = 256;

impl Database {
    /// Attaches an import to the database.
    pub fn attach_importer(&mut self, importer: Importer) {
        self.importer = Some(importer);
    }

    /// Whether an import is in progress: some revisions are still only in
    /// the sources.
    pub fn importing(&self) -> bool {
        self.active_importer().is_some()
    }

    /// The import's progress, with the Importer.
    pub fn import_progress(&self) -> Option<ImportProgress> {
        self.importer.as_ref().map(|importer| importer.progress)
    }

    fn active_importer(&self) -> Option<&Importer> {
        self.importer
            .as_ref()
            .filter(|importer| !importer.is_done())
    }

    /// Raw `config` value (the Importer's own keys).
    pub(crate) fn raw_config(&mut self, key: &str) -> Result<Option<String>> {
        self.backend.config(key)
    }

    /// Sets or deletes a raw `config` value.
    pub(crate) fn set_raw_config(&mut self, key: &str, value: Option<&str>) -> Result<()> {
        self.backend.set_config(key, value)
    }

    /// The last tid imported, as saved.
    pub(crate) fn imported_tid(&mut self) -> Result<Option<u64>> {
        Ok(self.config_tid(IMPORTED_KEY)?.map(|tid| tid.0))
    }

    /// The sources' last tid when the import started, as saved.
    pub(crate) fn imported_last_tid(&mut self) -> Result<Option<u64>> {
        Ok(self.config_tid(LAST_TID_KEY)?.map(|tid| tid.0))
    }

    pub(crate) fn save_imported_last_tid(&mut self, tid: u64) -> Result<()> {
        self.set_config_tid(LAST_TID_KEY, Some(Tid(tid)))
    }

    // --- reads ---------------------------------------------------------------

    /// [`Database::get_object`] while importing (NEO/py's `getObject` of
    /// the Importer): the destination unless the revision asked for may
    /// still be only in the sources.
    pub(super) fn import_get_object(
        &mut self,
        partition: Partition,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> Result<ObjectLookup> {
        let Some(importer) = self.active_importer() else {
            return self.backend_get_object(partition, oid, at, before);
        };
        let (imported, last_tid, last_oid) =
            (importer.imported, importer.last_tid(), importer.last_oid());
        // The newest revision the answer may be.
        let target = match (at, before) {
            (Some(at), _) => at.0,
            (None, Some(before)) => before.0.saturating_sub(1),
            (None, None) => u64::MAX,
        };
        let in_sources = oid.0 <= last_oid
            && match (at, before) {
                (Some(at), _) => imported < at.0 && at.0 <= last_tid,
                (None, Some(before)) => imported < before.0,
                (None, None) => true,
            };
        let destination = if imported < target && target <= last_tid {
            None
        } else {
            let found = self.backend_get_object(partition, oid, at, before)?;
            let newer = matches!(&found, ObjectLookup::Found(record) if record.serial.0 > last_tid);
            if newer || !in_sources {
                return Ok(found);
            }
            Some(found)
        };
        let (source, source_oid) = self.importer_sources()?.of_oid(oid.0);
        let source = source.clone();
        let load_before = match (at, before) {
            (Some(at), _) => at.0.saturating_add(1),
            (None, Some(before)) => before.0,
            (None, None) => u64::MAX,
        };
        let load = source
            .file
            .load_before(source_oid, load_before)
            .map_err(source_failed)?;
        let (serial, next_serial, data, data_serial) = match load {
            Load::NoSuchOid => {
                return Ok(destination.unwrap_or(ObjectLookup::OidDoesNotExist));
            }
            Load::NoRevision => return Ok(ObjectLookup::NoMatchingRevision),
            Load::NoData {
                serial,
                next_serial,
            } => (serial, next_serial, None, None),
            Load::Found(loaded) => (
                loaded.serial,
                loaded.next_serial,
                Some(loaded.data),
                loaded.data_txn,
            ),
        };
        if at.is_some_and(|at| at.0 != serial) {
            return Ok(ObjectLookup::NoMatchingRevision);
        }
        if serial <= imported {
            if let Some(found @ ObjectLookup::Found(_)) = destination {
                return Ok(found);
            }
        }
        // The next revision may be one committed through NEO since, but
        // not for the latest: the destination's newest was not newer.
        let next_serial = match next_serial {
            Some(next) => Some(Tid(next)),
            None if at.is_none() && before.is_none() => None,
            None => self.first_serial_after(partition, oid, Tid(last_tid))?,
        };
        let record = match data {
            Some(data) => {
                let data = source.repickle(source_oid, data).map_err(import_failed)?;
                ObjectRecord {
                    serial: Tid(serial),
                    next_serial,
                    compression: Some(0),
                    checksum: crate::node::checksum(&data),
                    data,
                    data_serial: data_serial.map(Tid),
                }
            }
            None => ObjectRecord {
                serial: Tid(serial),
                next_serial,
                compression: None,
                checksum: Checksum::ZERO,
                data: Vec::new(),
                data_serial: None,
            },
        };
        Ok(ObjectLookup::Found(record))
    }

    /// The oldest serial of `oid` in the destination after `tid`.
    fn first_serial_after(
        &mut self,
        partition: Partition,
        oid: Oid,
        tid: Tid,
    ) -> Result<Option<Tid>> {
        let mut offset = 0;
        let mut oldest = None;
        loop {
            let page = self
                .backend
                .object_history(partition, oid, offset, HISTORY_PAGE)?;
            // Newest first: stop at the first one not after `tid`.
            for entry in &page {
                if entry.serial <= tid {
                    return Ok(oldest);
                }
                oldest = Some(entry.serial);
            }
            if (page.len() as u64) < HISTORY_PAGE {
                return Ok(oldest);
            }
            offset += HISTORY_PAGE;
        }
    }

    /// Serial of the newest revision of `oid`, in the sources or not.
    pub(super) fn import_last_object_tid(
        &mut self,
        partition: Partition,
        oid: Oid,
    ) -> Result<Option<Tid>> {
        let in_destination = self.backend.last_serial(partition, oid)?;
        let Some(importer) = self.active_importer() else {
            return Ok(in_destination);
        };
        // Every serial of the sources is at most their last tid.
        if oid.0 > importer.last_oid()
            || in_destination.is_some_and(|serial| serial.0 > importer.last_tid())
        {
            return Ok(in_destination);
        }
        let (source, source_oid) = self.importer_sources()?.of_oid(oid.0);
        let in_source = match source.file.load_before(source_oid, u64::MAX) {
            Ok(Load::Found(loaded)) => Some(loaded.serial),
            Ok(Load::NoData { serial, .. }) => Some(serial),
            Ok(Load::NoRevision | Load::NoSuchOid) => None,
            Err(error) => return Err(source_failed(error)),
        };
        Ok(in_destination.max(in_source.map(Tid)))
    }

    /// Transaction metadata while importing: from the sources when `tid`
    /// is not imported yet (the records of every source with that tid,
    /// the user, description and extension of the first).
    pub(super) fn import_transaction(&mut self, tid: Tid) -> Result<Option<TransactionMeta>> {
        let sources = self.importer_sources()?.clone();
        let mut meta: Option<TransactionMeta> = None;
        for source in &sources.list {
            let Some(transaction) = source.file.transaction(tid.0).map_err(source_failed)? else {
                continue;
            };
            let meta = meta.get_or_insert_with(|| TransactionMeta {
                oids: Vec::new(),
                user: transaction.user.clone(),
                description: transaction.description.clone(),
                extension: transaction.extension.clone(),
                packed: transaction.status == b'p',
                ttid: tid,
            });
            meta.oids.extend(
                transaction
                    .records
                    .iter()
                    .map(|record| Oid(source.merged_oid(record.oid))),
            );
        }
        Ok(meta)
    }

    /// Whether `tid` is a transaction still only in the sources.
    pub(super) fn import_has_transaction(&self, tid: Tid) -> bool {
        self.active_importer()
            .is_some_and(|importer| importer.in_sources(tid.0))
    }

    /// History while importing: the revisions still only in the sources
    /// merged with the destination's, newest first.
    pub(super) fn import_object_history(
        &mut self,
        partition: Partition,
        oid: Oid,
        offset: u64,
        length: u64,
    ) -> Result<Vec<HistoryEntry>> {
        let Some(importer) = self.active_importer() else {
            return self.backend.object_history(partition, oid, offset, length);
        };
        let (imported, last_tid) = (importer.imported, importer.last_tid());
        if oid.0 > importer.last_oid() {
            return self.backend.object_history(partition, oid, offset, length);
        }
        let (source, source_oid) = self.importer_sources()?.of_oid(oid.0);
        let from_source: Vec<HistoryEntry> = source
            .file
            .history(source_oid)
            .map_err(source_failed)?
            .into_iter()
            .filter(|(serial, _)| imported < *serial && *serial <= last_tid)
            .map(|(serial, size)| HistoryEntry {
                serial: Tid(serial),
                size: size as u64,
            })
            .collect();
        let wanted = offset.saturating_add(length);
        let mut entries = self.backend.object_history(partition, oid, 0, wanted)?;
        entries.extend(from_source);
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.serial));
        Ok(entries
            .into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(length).unwrap_or(usize::MAX))
            .collect())
    }

    /// The last ids, counting the sources' (the master allocates above).
    pub(super) fn import_last_ids(&self, mut last: LastIds) -> LastIds {
        if let Some(importer) = &self.importer {
            last.tid = last.tid.max(Some(Tid(importer.last_tid())));
            last.oid = last.oid.max(Some(Oid(importer.last_oid())));
        }
        last
    }

    /// The first tid, counting the sources'.
    pub(super) fn import_first_tid(&self, first: Tid) -> Tid {
        let from_sources = self
            .importer
            .as_ref()
            .and_then(|importer| importer.sources.first_tid());
        from_sources.map_or(first, |tid| first.min(Tid(tid)))
    }

    /// Refuses what can not be done before the import is finished.
    pub(super) fn refuse_while_importing(&self, what: &'static str) -> Result<()> {
        if self.importing() {
            return Err(RequestError::Importing { what }.into());
        }
        Ok(())
    }

    fn importer_sources(&self) -> Result<&importer::Sources> {
        self.importer
            .as_ref()
            .map(|importer| &importer.sources)
            .ok_or_else(|| FatalError::Import("no import in progress".into()).into())
    }

    // --- the import ----------------------------------------------------------

    /// Inserts the next chunk the reading thread prepared: each
    /// transaction straight into the permanent tables, with the progress
    /// saved beside, so that whatever commits them commits whole
    /// transactions and the progress that covers them. Finishing commits.
    pub fn import_step(&mut self) -> Result<ImportStep> {
        let Some(importer) = self.importer.as_mut() else {
            return Ok(ImportStep::Idle);
        };
        if importer.is_done() {
            return Ok(ImportStep::Idle);
        }
        let Some(feed) = &importer.feed else {
            return Ok(ImportStep::Idle);
        };
        let chunk = match feed.next().map_err(import_failed)? {
            Next::Chunk(chunk) => chunk,
            Next::Empty => return Ok(ImportStep::Waiting),
            Next::Done => {
                return Err(FatalError::Import(format!(
                    "the sources ended before their last transaction {:016x}",
                    importer.last_tid()
                ))
                .into())
            }
        };
        let count = chunk.transactions.len();
        for transaction in chunk.transactions {
            self.import_transaction_rows(transaction)?;
        }
        let Some(importer) = self.importer.as_mut() else {
            return Ok(ImportStep::Idle);
        };
        importer.progress.transactions += count as u64;
        importer.progress.bytes = chunk.position;
        let imported = Tid(importer.imported);
        self.set_config_tid(IMPORTED_KEY, Some(imported))?;
        let Some(importer) = self.importer.as_mut() else {
            return Ok(ImportStep::Idle);
        };
        if importer.is_done() {
            importer.progress.done = true;
            importer.feed = None;
            self.commit()?;
            importer::all_imported();
            return Ok(ImportStep::Finished);
        }
        Ok(ImportStep::Inserted(count))
    }

    /// One imported transaction into `obj`, `data` and `trans`.
    fn import_transaction_rows(
        &mut self,
        transaction: importer::ImportedTransaction,
    ) -> Result<()> {
        let tid = Tid(transaction.tid);
        let mut rows = Vec::with_capacity(transaction.records.len());
        for record in transaction.records {
            let oid = Oid(record.oid);
            let data_tid = record.data_tid.map(Tid);
            let (checksum, compression, data) =
                record.data.unwrap_or((Checksum::ZERO, 0, Vec::new()));
            let data_id = match self.store_data(oid, checksum, &data, compression, data_tid) {
                // The back-pointer's record is gone (a packed source):
                // its data is here anyway.
                Err(crate::backend::Error::Request(RequestError::UndoPack { .. })) => {
                    self.store_data(oid, checksum, &data, compression, None)?
                }
                stored => stored?,
            };
            rows.push(ObjectRow {
                oid,
                data_id,
                data_serial: data_tid,
            });
        }
        let meta = TransactionMeta {
            oids: rows.iter().map(|row| row.oid).collect(),
            user: transaction.user,
            description: transaction.description,
            extension: transaction.extension,
            packed: transaction.packed,
            ttid: tid,
        };
        self.store_transaction(tid, &rows, Some(&meta), false)?;
        if let Some(importer) = self.importer.as_mut() {
            importer.imported = tid.0;
        }
        Ok(())
    }

    // --- write-back ----------------------------------------------------------

    /// Whether write-back has work: transactions may wait to be written
    /// back, and every partition is readable here.
    pub fn writeback_due(&self) -> bool {
        let pending = self
            .importer
            .as_ref()
            .and_then(|importer| importer.writeback.as_ref())
            .is_some_and(|writeback| writeback.pending);
        pending
            && self.pt.is_some()
            && self.readable_partitions().len() == self.num_partitions() as usize
    }

    /// A transaction was committed: write-back has work.
    pub(super) fn writeback_committed(&mut self) {
        if let Some(writeback) = self
            .importer
            .as_mut()
            .and_then(|importer| importer.writeback.as_mut())
        {
            writeback.pending = true;
        }
    }

    /// Appends to the source, durably, the next transactions committed
    /// through NEO after its last one; returns how many.
    pub fn writeback_step(&mut self) -> Result<usize> {
        let Some(writeback) = self
            .importer
            .as_mut()
            .and_then(|importer| importer.writeback.as_mut())
        else {
            return Ok(0);
        };
        let after = writeback.writer().map_err(import_failed)?.last_tid();
        let first = Tid(after.map_or(0, |tid| tid.saturating_add(1)));
        let mut tids = Vec::new();
        for partition in 0..self.num_partitions() {
            tids.extend(
                self.backend
                    .tids_between(partition, first, Tid::MAX, WRITEBACK_BATCH)?,
            );
        }
        tids.sort_unstable();
        tids.truncate(WRITEBACK_BATCH as usize);
        let mut transactions = Vec::with_capacity(tids.len());
        for tid in tids {
            transactions.extend(self.committed_transaction(tid)?);
        }
        let Some(writeback) = self
            .importer
            .as_mut()
            .and_then(|importer| importer.writeback.as_mut())
        else {
            return Ok(0);
        };
        if transactions.is_empty() {
            writeback.pending = false;
            return Ok(0);
        }
        let writer = writeback.writer().map_err(import_failed)?;
        for (tid, meta, records) in &transactions {
            let transaction = neo_filestorage::NewTransaction {
                tid: tid.0,
                status: if meta.packed { b'p' } else { b' ' },
                user: &meta.user,
                description: &meta.description,
                extension: &meta.extension,
                records: records
                    .iter()
                    .map(|(oid, data, data_serial)| neo_filestorage::NewRecord {
                        oid: oid.0,
                        data: data.as_deref(),
                        data_txn: data_serial.map(|tid| tid.0),
                    })
                    .collect(),
            };
            writer
                .append(&transaction)
                .map_err(|error| FatalError::Import(format!("writing back: {error}")))?;
        }
        writer
            .sync()
            .map_err(|error| FatalError::Import(format!("writing back: {error}")))?;
        Ok(transactions.len())
    }

    /// A committed transaction as ZODB stores it: its metadata and, for
    /// each object, its uncompressed data or its back-pointer.
    #[allow(clippy::type_complexity)]
    fn committed_transaction(
        &mut self,
        tid: Tid,
    ) -> Result<
        Option<(
            Tid,
            TransactionMeta,
            Vec<(Oid, Option<Vec<u8>>, Option<Tid>)>,
        )>,
    > {
        const CONTEXT: &str = "writing back";
        let partition = self.partition_of_tid(tid, CONTEXT)?;
        let Some(meta) = self.backend.transaction(partition, tid)? else {
            return Ok(None);
        };
        let mut records = Vec::with_capacity(meta.oids.len());
        for &oid in &meta.oids {
            let partition = self.partition_of_oid(oid, CONTEXT)?;
            // Oids only checked by the transaction have no record.
            let Some(row) = self.backend.object(partition, oid, tid)? else {
                continue;
            };
            let data = match (row.data_id, row.data_serial) {
                (Some(id), None) => {
                    let (compression, _, data) = self.backend.load_data(id)?.ok_or_else(|| {
                        FatalError::Corrupted(format!("data {id} of {oid} at {tid} is missing"))
                    })?;
                    Some(decompressed(compression, data)?)
                }
                _ => None,
            };
            records.push((oid, data, row.data_serial));
        }
        Ok(Some((tid, meta, records)))
    }

    /// [`Database::get_object`] on the destination only.
    pub(super) fn backend_get_object(
        &mut self,
        partition: Partition,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> Result<ObjectLookup> {
        let revision = match (at, before) {
            (Some(at), _) => Revision::Serial(at),
            (None, Some(before)) => Revision::Before(before),
            (None, None) => Revision::Latest,
        };
        if let Some(record) = self.backend.load_object(partition, oid, revision)? {
            return Ok(ObjectLookup::Found(record));
        }
        // Only a miss costs a second read.
        Ok(if self.backend.has_object(partition, oid)? {
            ObjectLookup::NoMatchingRevision
        } else {
            ObjectLookup::OidDoesNotExist
        })
    }
}

/// Stored data as ZODB wants it: zlib-decompressed if it is compressed.
fn decompressed(compression: u8, data: Vec<u8>) -> Result<Vec<u8>> {
    match compression {
        0 => Ok(data),
        1 => {
            let mut plain = Vec::with_capacity(data.len() * 2);
            std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&data[..]), &mut plain)
                .map_err(|error| FatalError::Corrupted(format!("stored data: {error}")))?;
            Ok(plain)
        }
        other => Err(FatalError::Corrupted(format!("unknown compression {other}")).into()),
    }
}

/// A source that can not be read stops the node: the operator must mend it.
fn source_failed(error: neo_filestorage::Error) -> crate::backend::Error {
    FatalError::Import(error.to_string()).into()
}

fn import_failed(error: ImportError) -> crate::backend::Error {
    FatalError::Import(error.to_string()).into()
}
