//! FileStorage → NEO: every source transaction is committed again with
//! its own TID, user, description and extension (the Importer backend's
//! alternative for a live, replicated cluster; architecture.md §12.8).
//!
//! A thread reads the file ahead while the cluster commits; within a
//! transaction the client pipelines the stores until the vote. Unlike
//! NEO/py's `copyTransactionsFrom`, a record that is a back-pointer is
//! stored as an undo store (`AskStoreObject.data_serial`), so that the
//! cluster keeps it as one.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use neo_client::{Client, ClientError, TxnMeta};
use neo_filestorage::{FileStorage, Transaction};
use neo_proto::{Oid, Tid};
use tokio::sync::mpsc;

use super::{MigrateError, Progress};

/// Transactions read ahead of the one being committed: reading is much
/// faster than committing, so a few hide the file's latency, and memory
/// stays bounded by a few of the biggest transactions.
const READ_AHEAD: usize = 4;

/// A source transaction and its length in the file (for the progress).
type Read = Result<(Transaction, u64), neo_filestorage::Error>;

/// Opens the source (scanning it if it has no usable index), before the
/// cluster is contacted: a bad file is reported at once. A file that goes
/// on past its last complete transaction is refused: ZODB would ignore
/// that tail without a word, and it may be a commit in progress.
pub async fn open(source: &Path) -> Result<FileStorage, MigrateError> {
    let path = source.to_owned();
    tokio::task::spawn_blocking(move || {
        let storage = FileStorage::open(&path)?;
        storage.check_complete()?;
        Ok(storage)
    })
    .await
    .map_err(|e| MigrateError::Internal(format!("opening the source: {e}")))?
}

/// Copies `storage` into the cluster.
pub async fn run(
    client: &Client,
    storage: FileStorage,
    progress: &Progress,
) -> Result<(), MigrateError> {
    progress.start_bytes(storage.size());
    // Oids of a cluster that had no transaction need no lookup.
    let cluster_empty = client.last_transaction().is_none_or(|tid| tid == Tid::ZERO);
    let (sender, mut receiver) = mpsc::channel(READ_AHEAD);
    let reader = tokio::task::spawn_blocking(move || read(&storage, &sender));
    let mut importer = Importer {
        client,
        cluster_empty,
        serials: HashMap::new(),
    };
    let mut outcome = Ok(());
    while let Some(read) = receiver.recv().await {
        let (transaction, length) = match read {
            Ok(read) => read,
            Err(error) => {
                outcome = Err(error.into());
                break;
            }
        };
        let tid = Tid(transaction.tid);
        if let Err(error) = importer.commit(transaction).await {
            outcome = Err(error.in_transaction(tid));
            break;
        }
        progress.advance(length);
    }
    // Lets the reader end if we stopped early.
    drop(receiver);
    reader
        .await
        .map_err(|e| MigrateError::Internal(format!("the reader: {e}")))?;
    outcome
}

/// Sends the transactions of `storage`, in TID order, with their lengths:
/// the distance to the next one's header (or to the end).
fn read(storage: &FileStorage, sender: &mpsc::Sender<Read>) {
    let mut previous: Option<Transaction> = None;
    for item in storage.iter(None, None) {
        let next = match item {
            Ok(next) => next,
            Err(error) => {
                let _ = sender.blocking_send(Err(error));
                return;
            }
        };
        if let Some(done) = previous.replace(next) {
            let length = previous
                .as_ref()
                .map_or(0, |next| next.position.saturating_sub(done.position));
            if sender.blocking_send(Ok((done, length))).is_err() {
                return;
            }
        }
    }
    if let Some(last) = previous {
        let length = storage.size().saturating_sub(last.position);
        let _ = sender.blocking_send(Ok((last, length)));
    }
}

/// What the import knows of the cluster's objects.
struct Importer<'a> {
    client: &'a Client,
    /// The cluster had no transaction when the import began.
    cluster_empty: bool,
    /// The serial of each oid as last imported: the base of its next store.
    serials: HashMap<Oid, Tid>,
}

/// A failure within one transaction, before it is tagged with its TID.
enum CommitError {
    Client(ClientError),
    TidChanged(Tid),
}

impl From<ClientError> for CommitError {
    fn from(error: ClientError) -> CommitError {
        CommitError::Client(error)
    }
}

impl CommitError {
    fn in_transaction(self, tid: Tid) -> MigrateError {
        match self {
            CommitError::Client(source) => MigrateError::Transaction {
                tid,
                source: Box::new(source),
            },
            CommitError::TidChanged(committed) => MigrateError::TidChanged { tid, committed },
        }
    }
}

impl Importer<'_> {
    /// Commits `source` with its TID; its stores are answered at the vote.
    async fn commit(&mut self, source: Transaction) -> Result<(), CommitError> {
        let tid = Tid(source.tid);
        let mut transaction = self.client.begin(Some(tid)).await?;
        for record in source.records {
            let oid = Oid(record.oid);
            let base = self.base_serial(oid).await?;
            let data = record.data.map(Bytes::from);
            let conflicts = transaction
                .store_record(oid, base, data, record.data_txn.map(Tid))
                .await?;
            if !conflicts.is_empty() {
                // The cluster changed under us: nothing to resolve here.
                return Err(ClientError::Conflicts(conflicts).into());
            }
            self.serials.insert(oid, tid);
        }
        let meta = TxnMeta {
            user: source.user.into(),
            description: source.description.into(),
            extension: source.extension.into(),
            pack: None,
        };
        transaction.vote(&meta).await?;
        let committed = transaction.finish().await?;
        if committed != tid {
            return Err(CommitError::TidChanged(committed));
        }
        Ok(())
    }

    /// The serial a store of `oid` is based on: the one imported last, or
    /// for an oid not imported yet, the cluster's current one (NEO/py's
    /// `importFrom`), zero for a new object.
    async fn base_serial(&self, oid: Oid) -> Result<Tid, ClientError> {
        if let Some(serial) = self.serials.get(&oid) {
            return Ok(*serial);
        }
        if self.cluster_empty {
            return Ok(Tid::ZERO);
        }
        match self.client.object(oid, None, None).await {
            Ok(record) => Ok(record.serial),
            Err(ClientError::OidDoesNotExist { .. } | ClientError::OidNotFound { .. }) => {
                Ok(Tid::ZERO)
            }
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neo_filestorage::{NewRecord, NewTransaction, Writer};

    /// The reader's lengths cover the file from the first transaction to
    /// the end, each one its transaction's span: the progress ends at the
    /// source's size.
    #[test]
    fn read_gives_each_transaction_its_span() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Data.fs");
        let mut writer = Writer::open(&path).unwrap();
        for (tid, data) in [(1, Some(&b"a"[..])), (2, Some(&[7; 3000][..])), (3, None)] {
            writer
                .append(&NewTransaction {
                    tid,
                    status: b' ',
                    user: b"user",
                    description: b"",
                    extension: b"",
                    records: vec![NewRecord {
                        oid: tid,
                        data,
                        data_txn: None,
                    }],
                })
                .unwrap();
        }
        writer.close().unwrap();
        let storage = FileStorage::open(&path).unwrap();
        let (sender, mut receiver) = mpsc::channel(READ_AHEAD);
        std::thread::scope(|scope| {
            // The sender moves in: its drop at the end closes the channel.
            scope.spawn(|| {
                let sender = sender;
                read(&storage, &sender)
            });
            let mut spans = Vec::new();
            while let Some(read) = receiver.blocking_recv() {
                let (transaction, length) = read.unwrap();
                spans.push((transaction.tid, transaction.position, length));
            }
            assert_eq!(spans.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2, 3]);
            for pair in spans.windows(2) {
                assert_eq!(pair[0].1 + pair[0].2, pair[1].1, "{spans:?}");
            }
            let (_, position, length) = spans[2];
            assert_eq!(position + length, storage.size());
            assert!(spans[1].2 > 3000, "{spans:?}");
        });
    }
}
