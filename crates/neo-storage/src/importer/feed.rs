//! The import's reading side (architecture.md §12.7 step 4), on a thread
//! of its own: it iterates the sources' transactions after the last one
//! imported, merged by tid, moves their oids, compresses and checksums
//! their records, and hands them over in chunks through a bounded channel.
//! The storage node inserts them between client requests; the thread never
//! touches the destination database.

use std::io::Write;
use std::iter::Peekable;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};

use crate::node::checksum;
use neo_filestorage::TransactionIter;
use neo_proto::Checksum;

use super::sources::{Source, Sources};
use super::ImportError;

/// A chunk is handed over once it holds this many bytes of records...
const CHUNK_BYTES: usize = 1 << 20;
/// ...or this many transactions.
const CHUNK_TRANSACTIONS: usize = 512;
/// Chunks read ahead: what the thread may hold in memory beyond the
/// chunk in progress.
const CHUNKS_AHEAD: usize = 8;

/// One record, ready to insert.
pub(crate) struct ImportedRecord {
    /// Merged oid.
    pub(crate) oid: u64,
    /// `(checksum, compression, bytes)`; `None`: no data. While the chunk
    /// is read, the raw bytes (checksum zero, compression 0), compressed
    /// and checksummed once the chunk is whole.
    pub(crate) data: Option<(Checksum, u8, Vec<u8>)>,
    /// The back-pointer of an undo record.
    pub(crate) data_tid: Option<u64>,
}

/// One transaction, ready to insert.
pub(crate) struct ImportedTransaction {
    pub(crate) tid: u64,
    pub(crate) user: Vec<u8>,
    pub(crate) description: Vec<u8>,
    pub(crate) extension: Vec<u8>,
    pub(crate) packed: bool,
    pub(crate) records: Vec<ImportedRecord>,
}

/// Transactions, and how far into the sources they go.
pub(crate) struct Chunk {
    pub(crate) transactions: Vec<ImportedTransaction>,
    /// Bytes of the sources read up to the end of the chunk.
    pub(crate) position: u64,
}

/// The receiving end of the reading thread.
pub(crate) struct Feed {
    chunks: Receiver<Result<Chunk, ImportError>>,
    /// Bytes of the sources to import.
    pub(crate) total: u64,
}

/// What [`Feed::next`] found.
pub(crate) enum Next {
    Chunk(Chunk),
    /// Nothing ready yet.
    Empty,
    /// Everything was handed over.
    Done,
}

impl Feed {
    /// Starts reading the transactions of `sources` after `imported`.
    pub(crate) fn start(
        sources: &Sources,
        imported: u64,
        compress: Option<u32>,
    ) -> Result<Feed, ImportError> {
        let (sender, chunks) = sync_channel(CHUNKS_AHEAD);
        let mut reader = Reader::new(sources, imported, compress);
        reader.skipped = reader.position();
        let total = sources.size().saturating_sub(reader.skipped);
        std::thread::Builder::new()
            .name("neo-import".into())
            .spawn(move || reader.run(sender))
            .map_err(|source| ImportError::Thread { source })?;
        Ok(Feed { chunks, total })
    }

    /// The next chunk, if one is ready; never waits.
    pub(crate) fn next(&self) -> Result<Next, ImportError> {
        match self.chunks.try_recv() {
            Ok(chunk) => chunk.map(Next::Chunk),
            Err(TryRecvError::Empty) => Ok(Next::Empty),
            Err(TryRecvError::Disconnected) => Ok(Next::Done),
        }
    }
}

/// The reading thread's state.
struct Reader {
    cursors: Vec<(Source, Peekable<TransactionIter>)>,
    compress: Option<u32>,
    /// Bytes of the sources before the first transaction to import.
    skipped: u64,
}

impl Reader {
    fn new(sources: &Sources, imported: u64, compress: Option<u32>) -> Reader {
        let start = imported.checked_add(1);
        let cursors = sources
            .list
            .iter()
            .map(|source| {
                let iter = source.file.iter(start, Some(sources.last_tid));
                (source.clone(), iter.peekable())
            })
            .collect();
        Reader {
            cursors,
            compress,
            skipped: 0,
        }
    }

    fn run(mut self, sender: SyncSender<Result<Chunk, ImportError>>) {
        loop {
            match self.chunk() {
                Ok(Some(chunk)) => {
                    if sender.send(Ok(chunk)).is_err() {
                        return; // the node stopped
                    }
                }
                Ok(None) => return,
                Err(error) => {
                    let _ = sender.send(Err(error));
                    return;
                }
            }
        }
    }

    /// The next chunk; `None` once every source is read.
    fn chunk(&mut self) -> Result<Option<Chunk>, ImportError> {
        let mut transactions = Vec::new();
        let mut bytes = 0;
        while bytes < CHUNK_BYTES && transactions.len() < CHUNK_TRANSACTIONS {
            let Some(transaction) = self.next_transaction()? else {
                break;
            };
            bytes += transaction
                .records
                .iter()
                .filter_map(|record| record.data.as_ref())
                .map(|(_, _, data)| data.len())
                .sum::<usize>();
            transactions.push(transaction);
        }
        if transactions.is_empty() {
            return Ok(None);
        }
        seal(self.compress, &mut transactions);
        Ok(Some(Chunk {
            transactions,
            position: self.position(),
        }))
    }

    /// Bytes of the sources read so far.
    fn position(&mut self) -> u64 {
        let mut position = 0;
        for (source, cursor) in &mut self.cursors {
            position += match cursor.peek() {
                Some(Ok(next)) => next.position,
                _ => source.file.size(),
            };
        }
        position.saturating_sub(self.skipped)
    }

    /// The next transaction of the merged sources: the smallest tid among
    /// their next ones, with the records of every source having that tid
    /// (user, description and extension of the first).
    fn next_transaction(&mut self) -> Result<Option<ImportedTransaction>, ImportError> {
        let mut tid = None;
        for (_, cursor) in &mut self.cursors {
            match cursor.peek() {
                Some(Ok(next)) => tid = Some(tid.map_or(next.tid, |tid: u64| tid.min(next.tid))),
                Some(Err(_)) => {
                    if let Some(Err(error)) = cursor.next() {
                        return Err(error.into());
                    }
                }
                None => {}
            }
        }
        let Some(tid) = tid else {
            return Ok(None);
        };
        let mut merged: Option<ImportedTransaction> = None;
        for (source, cursor) in &mut self.cursors {
            if !matches!(cursor.peek(), Some(Ok(next)) if next.tid == tid) {
                continue;
            }
            let Some(Ok(transaction)) = cursor.next() else {
                continue;
            };
            let merged = merged.get_or_insert_with(|| ImportedTransaction {
                tid,
                user: transaction.user,
                description: transaction.description,
                extension: transaction.extension,
                packed: transaction.status == b'p',
                records: Vec::new(),
            });
            for record in transaction.records {
                let data = match record.data {
                    Some(data) => {
                        let data = source.repickle(record.oid, data)?;
                        Some((Checksum::ZERO, 0, data))
                    }
                    None => None,
                };
                merged.records.push(ImportedRecord {
                    oid: source.merged_oid(record.oid),
                    data,
                    data_tid: record.data_txn,
                });
            }
        }
        Ok(merged)
    }
}

/// Compresses and checksums the records of a chunk, on as many threads as
/// the machine has cores (zlib is what sets the pace of an import with
/// `compress`).
fn seal(compress: Option<u32>, transactions: &mut [ImportedTransaction]) {
    let mut records: Vec<&mut (Checksum, u8, Vec<u8>)> = transactions
        .iter_mut()
        .flat_map(|transaction| transaction.records.iter_mut())
        .filter_map(|record| record.data.as_mut())
        .collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let share = records.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| {
        for part in records.chunks_mut(share) {
            scope.spawn(move || {
                for record in part {
                    let raw = std::mem::take(&mut record.2);
                    **record = compressed(compress, raw);
                }
            });
        }
    });
}

/// `(checksum, compression, bytes)` of a record: zlib-compressed at level
/// `compress` when that makes it smaller, as NEO/py's `compress` option.
fn compressed(compress: Option<u32>, data: Vec<u8>) -> (Checksum, u8, Vec<u8>) {
    if let Some(level) = compress {
        let mut encoder = flate2::write::ZlibEncoder::new(
            Vec::with_capacity(data.len() / 2),
            flate2::Compression::new(level),
        );
        if let Ok(compressed) = encoder.write_all(&data).and_then(|()| encoder.finish()) {
            if compressed.len() < data.len() {
                return (checksum(&compressed), 1, compressed);
            }
        }
    }
    (checksum(&data), 0, data)
}
