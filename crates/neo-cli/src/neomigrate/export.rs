//! NEO → FileStorage, with a read-only client: NEO's iterator (§8.5) —
//! the TIDs in order, then each transaction's metadata and records, data
//! and back-pointer — written with [`neo_filestorage::Writer`].
//!
//! Several transactions are fetched at once, in order of TID, while a
//! thread appends the ones fetched to the file.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use neo_client::{Client, ClientError};
use neo_filestorage::{NewRecord, NewTransaction, Writer};
use neo_proto::{Oid, Tid};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{MigrateError, Progress};

/// TIDs asked per `AskTIDsFrom` round (NEO/py's iterator asks 100).
const TIDS_PER_CHUNK: u32 = 1000;

/// Transactions fetched at once: each waits on its own round trips, so a
/// few in parallel keep the storages busy.
const FETCH_WINDOW: usize = 16;

/// Transactions fetched but not yet written: appending is faster than
/// fetching, so a few are enough (and bound memory with the window).
const WRITE_BEHIND: usize = 4;

/// One transaction as read from the cluster.
struct Fetched {
    tid: Tid,
    packed: bool,
    user: Bytes,
    description: Bytes,
    extension: Bytes,
    records: Vec<FetchedRecord>,
}

struct FetchedRecord {
    oid: Oid,
    /// `None`: no data (deletion or undone creation).
    data: Option<Bytes>,
    /// The revision whose data this one shares (an undo).
    data_serial: Option<Tid>,
}

impl Fetched {
    /// Bytes of record data, for the progress.
    fn data_bytes(&self) -> u64 {
        let bytes: usize = self
            .records
            .iter()
            .filter_map(|record| record.data.as_ref().map(Bytes::len))
            .sum();
        bytes as u64
    }
}

/// Copies every transaction of the cluster to the FileStorage at
/// `destination` (created, or appended to).
pub async fn run(
    client: &Client,
    destination: &Path,
    progress: &Progress,
) -> Result<(), MigrateError> {
    let tids = all_tids(client).await?;
    progress.start_transactions(tids.len() as u64);
    let (sender, receiver) = mpsc::channel(WRITE_BEHIND);
    let path = destination.to_owned();
    let writer_progress = progress.clone();
    let writer = tokio::task::spawn_blocking(move || write(path, receiver, &writer_progress));
    let mut fetching: VecDeque<JoinHandle<Result<Fetched, MigrateError>>> = VecDeque::new();
    let mut tids = tids.into_iter();
    let mut outcome = Ok(());
    loop {
        while fetching.len() < FETCH_WINDOW {
            let Some(tid) = tids.next() else { break };
            fetching.push_back(tokio::spawn(fetch(client.clone(), tid)));
        }
        let Some(next) = fetching.pop_front() else {
            break;
        };
        let fetched = match next.await {
            Ok(Ok(fetched)) => fetched,
            Ok(Err(error)) => {
                outcome = Err(error);
                break;
            }
            Err(error) => {
                outcome = Err(MigrateError::Internal(format!("fetching: {error}")));
                break;
            }
        };
        // A closed channel is a writer that failed: its error is below.
        if sender.send(fetched).await.is_err() {
            break;
        }
    }
    for task in fetching {
        task.abort();
    }
    drop(sender);
    let written = writer
        .await
        .map_err(|e| MigrateError::Internal(format!("the writer: {e}")))?;
    // The writer's error first: a failed fetch after it is only its echo.
    written?;
    outcome
}

/// Every TID of the cluster, ascending.
async fn all_tids(client: &Client) -> Result<Vec<Tid>, MigrateError> {
    let mut tids = Vec::new();
    let mut start = Tid::ZERO;
    loop {
        let chunk = client
            .iterate_tids(start, None, TIDS_PER_CHUNK)
            .await
            .map_err(|source| MigrateError::Cluster {
                what: "listing the transactions",
                source: Box::new(source),
            })?;
        let Some(last) = chunk.last().copied() else {
            return Ok(tids);
        };
        debug_assert!(tids.last() < chunk.first(), "TIDs not ascending");
        tids.extend(chunk);
        start = Tid(last.0 + 1);
    }
}

/// Transaction `tid`: its metadata and each record at that serial.
async fn fetch(client: Client, tid: Tid) -> Result<Fetched, MigrateError> {
    let in_transaction = |source| MigrateError::Transaction {
        tid,
        source: Box::new(source),
    };
    let info = client.transaction_info(tid).await.map_err(in_transaction)?;
    let mut records = Vec::with_capacity(info.oids.len());
    for oid in info.oids {
        match client.object(oid, Some(tid), None).await {
            Ok(record) => records.push(FetchedRecord {
                oid,
                data: record.data,
                data_serial: record.data_serial,
            }),
            // Packed away (the transaction's oid list is not updated by a
            // pack), or only checked (readCurrent): no record, as NEO/py's
            // iterator skips it.
            Err(ClientError::OidNotFound { .. } | ClientError::OidDoesNotExist { .. }) => {}
            Err(error) => return Err(in_transaction(error)),
        }
    }
    Ok(Fetched {
        tid,
        packed: info.packed,
        user: info.user,
        description: info.description,
        extension: info.extension,
        records,
    })
}

/// Appends what comes on `receiver` to the FileStorage at `path`, then
/// closes it (fsync and `.index`).
fn write(
    path: PathBuf,
    mut receiver: mpsc::Receiver<Fetched>,
    progress: &Progress,
) -> Result<(), MigrateError> {
    let mut writer = Writer::open(&path)?;
    while let Some(fetched) = receiver.blocking_recv() {
        let records = fetched
            .records
            .iter()
            .map(|record| NewRecord {
                oid: record.oid.0,
                data: record.data.as_deref(),
                data_txn: record.data_serial.map(|tid| tid.0),
            })
            .collect();
        writer.append(&NewTransaction {
            tid: fetched.tid.0,
            status: if fetched.packed { b'p' } else { b' ' },
            user: &fetched.user,
            description: &fetched.description,
            extension: &fetched.extension,
            records,
        })?;
        progress.advance(fetched.data_bytes());
    }
    writer.close()?;
    Ok(())
}
