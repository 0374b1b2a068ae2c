//! The async client: connection management in background tasks, and the
//! operations ZODB needs.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use neo_proto::packets::{self, HistoryEntry};
use neo_proto::{ErrorCode, NodeId, Oid, Packet, Partition, Tid, INVALID_PARTITION};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::ClientConfig;
use crate::data::{self, DecodeError};
use crate::error::ClientError;
use crate::master::{self, Shared};
use crate::storage::{self, ask_readable, Next, ReadKey};
use crate::txn::Transaction;
use crate::util::lock;

/// One object revision, as loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The object.
    pub oid: Oid,
    /// TID of the transaction that wrote this revision.
    pub serial: Tid,
    /// Serial of the next revision; `None` if it is the latest one.
    pub next_serial: Option<Tid>,
    /// Uncompressed data; `None` for a deletion or an undone creation.
    pub data: Option<Bytes>,
    /// Back-pointer of an undo record: the revision whose data it shares.
    pub data_serial: Option<Tid>,
}

/// One object revision with data, as `load*` return it.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// Uncompressed data.
    pub data: Bytes,
    /// TID of the transaction that wrote this revision.
    pub serial: Tid,
    /// Serial of the next revision; `None` if it is the latest one.
    pub next_serial: Option<Tid>,
}

/// Transaction metadata, from `AskTransactionInformation`.
#[derive(Clone, Debug, PartialEq)]
pub struct TransactionInfo {
    /// The transaction.
    pub tid: Tid,
    /// ZODB user.
    pub user: Bytes,
    /// ZODB description.
    pub description: Bytes,
    /// Pickled extension.
    pub extension: Bytes,
    /// Imported from a packed FileStorage.
    pub packed: bool,
    /// Oids stored or checked by it.
    pub oids: Vec<Oid>,
}

struct Inner {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let shared = self.shared.clone();
        // Close connections; the runtime may be shutting down, which is fine.
        self.shared
            .runtime
            .spawn(async move { shared.shutdown().await });
    }
}

/// A NEO client: cheap to clone, usable from any task of the runtime it
/// was started on.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.shared().config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts the client in the background: it looks for the primary master
    /// and keeps following it. Operations wait (up to `ready_timeout`) for
    /// it to be ready. Must be called within a tokio runtime.
    pub fn start(config: ClientConfig) -> Client {
        let runtime = tokio::runtime::Handle::current();
        let (events_tx, events_rx) = mpsc::channel(config.connection.event_capacity.max(1));
        let shared = Arc::new(Shared::new(config, events_tx, runtime.clone()));
        let tasks = vec![
            runtime.spawn(master::supervise(shared.clone())),
            runtime.spawn(storage::dispatch(shared.clone(), events_rx)),
        ];
        Client {
            inner: Arc::new(Inner { shared, tasks }),
        }
    }

    /// [`Client::start`], then waits until the client is ready, so that a
    /// wrong address or cluster name is reported here.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let client = Client::start(config);
        client.shared().session().await?;
        Ok(client)
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Closes the connections; later operations fail with `Closed`.
    pub async fn close(&self) {
        for task in &self.inner.tasks {
            task.abort();
        }
        self.shared().shutdown().await;
    }

    /// Our node id, once identified.
    pub fn node_id(&self) -> Option<NodeId> {
        self.shared().state.borrow().session.as_ref().map(|s| s.nid)
    }

    /// Whether the client is connected and its partition table operational.
    pub fn is_ready(&self) -> bool {
        self.shared().current_session().is_some()
    }

    /// The last committed TID known, without network traffic; `None` before
    /// the first connection. Invalidations up to it were delivered.
    pub fn last_transaction(&self) -> Option<Tid> {
        *lock(&self.shared().last_tid)
    }

    /// Network barrier (§7.6): on return, the invalidations of every
    /// transaction committed before the call were delivered.
    pub async fn sync(&self) -> Result<(), ClientError> {
        let session = self.shared().session().await?;
        match session.ask_ordered(packets::Ping {}).await? {
            Packet::Pong(_) => Ok(()),
            other => Err(ClientError::Protocol {
                peer: session.master.peer().to_owned(),
                reason: format!("{} in answer to Ping", other.name()),
            }),
        }
    }

    /// A new oid, from a pool refilled 100 at a time (§6.3).
    pub async fn new_oid(&self) -> Result<Oid, ClientError> {
        let session = self.shared().session().await?;
        let mut pool = session.oids.lock().await;
        if pool.is_empty() {
            let answer = session
                .master
                .ask(packets::AskNewOIDs { count: 100 })
                .await
                .map_err(|e| refused_as_read_only("AskNewOIDs", e))?;
            pool.extend(answer.oids);
        }
        pool.pop_front().ok_or_else(|| ClientError::Protocol {
            peer: session.master.peer().to_owned(),
            reason: "AnswerNewOIDs gave no oid".into(),
        })
    }

    /// `tpc_begin`: a new transaction; `tid` imposes its TID (replaying
    /// history), else the master chooses a TTID.
    pub async fn begin(&self, tid: Option<Tid>) -> Result<Transaction, ClientError> {
        if self.shared().config.read_only {
            return Err(ClientError::ReadOnly(
                ": the client was opened read-only".into(),
            ));
        }
        let session = self.shared().session().await?;
        let answer = session
            .master
            .ask(packets::AskBeginTransaction { tid })
            .await
            .map_err(|e| refused_as_read_only("AskBeginTransaction", e))?;
        Ok(Transaction::new(
            self.shared().clone(),
            session,
            answer.ttid,
        ))
    }

    /// The current revision as of the last known transaction (§7.4 rule 2:
    /// never newer than the invalidations delivered).
    pub async fn load(&self, oid: Oid) -> Result<Loaded, ClientError> {
        // Waiting for readiness first makes `last_tid` known.
        self.shared().session().await?;
        let last = self.last_transaction().unwrap_or(Tid::ZERO);
        let before = Tid(last.0.saturating_add(1));
        self.load_before(oid, before)
            .await?
            .ok_or_else(|| ClientError::OidNotFound {
                oid,
                what: format!("before {before}"),
            })
    }

    /// The revision current just before `before` (`loadBefore`); `None` if
    /// the object did not exist yet then.
    pub async fn load_before(&self, oid: Oid, before: Tid) -> Result<Option<Loaded>, ClientError> {
        match self.object(oid, None, Some(before)).await {
            Ok(record) => with_data(record).map(Some),
            Err(ClientError::OidNotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The revision written by transaction `serial` (`loadSerial`).
    pub async fn load_serial(&self, oid: Oid, serial: Tid) -> Result<Loaded, ClientError> {
        with_data(self.object(oid, Some(serial), None).await?)
    }

    /// Any revision, "no data" ones included (for iteration and undo):
    /// `AskObject(oid, at, before)` on a readable cell, checksum verified.
    pub async fn object(
        &self,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> Result<Record, ClientError> {
        let max_size = self.shared().config.max_object_size;
        let what = match (at, before) {
            (Some(at), _) => format!("at {at}"),
            (None, Some(before)) => format!("before {before}"),
            (None, None) => "at all".to_owned(),
        };
        // The first answer whose data does not match its checksum.
        let mut bad_checksum: Option<packets::AnswerObject> = None;
        let request = packets::AskObject { oid, at, before };
        let result = ask_readable(
            self.shared(),
            ReadKey::Oid(oid),
            request,
            &[],
            |nid, answer| {
                let answer = match answer {
                    Ok(answer) => answer,
                    Err(error) => {
                        return match error.code {
                            ErrorCode::OidDoesNotExist => {
                                Next::Fail(ClientError::OidDoesNotExist { oid })
                            }
                            ErrorCode::OidNotFound => Next::Fail(ClientError::OidNotFound {
                                oid,
                                what: what.clone(),
                            }),
                            _ => Next::Another(error.to_string()),
                        }
                    }
                };
                if answer.oid != oid {
                    return Next::Another(format!("answered oid {} for {oid}", answer.oid));
                }
                match data::decode(answer.compression, &answer.checksum, &answer.data, max_size) {
                    Ok(data) => Next::Done(Record {
                        oid,
                        serial: answer.serial,
                        next_serial: answer.next_serial,
                        data,
                        data_serial: answer.data_serial,
                    }),
                    Err(DecodeError::Checksum) => {
                        tracing::warn!(%nid, %oid, serial = %answer.serial, "checksum mismatch");
                        bad_checksum.get_or_insert(answer);
                        Next::Another("checksum mismatch".into())
                    }
                    Err(error) => Next::Fail(ClientError::BadData {
                        oid,
                        reason: format!("serial {}: {error}", answer.serial),
                    }),
                }
            },
        )
        .await;
        match (result, bad_checksum) {
            (Err(ClientError::NoStorage(_)), Some(answer)) => {
                if !self.shared().config.ignore_wrong_checksum {
                    return Err(ClientError::ChecksumMismatch {
                        oid,
                        serial: answer.serial,
                    });
                }
                tracing::warn!(%oid, serial = %answer.serial,
                    "every replica has a wrong checksum: returning the data (ignore_wrong_checksum)");
                let data = data::decompress(answer.compression, &answer.data, max_size)
                    .unwrap_or_default();
                Ok(Record {
                    oid,
                    serial: answer.serial,
                    next_serial: answer.next_serial,
                    data: Some(data),
                    data_serial: answer.data_serial,
                })
            }
            (result, _) => result,
        }
    }

    /// Transaction metadata (§8.1).
    pub async fn transaction_info(&self, tid: Tid) -> Result<TransactionInfo, ClientError> {
        let request = packets::AskTransactionInformation { tid };
        ask_readable(
            self.shared(),
            ReadKey::Tid(tid),
            request,
            &[],
            |_, answer| match answer {
                Ok(info) => Next::Done(TransactionInfo {
                    tid: info.tid,
                    user: info.user,
                    description: info.description,
                    extension: info.extension,
                    packed: info.packed,
                    oids: info.oids,
                }),
                Err(error) if error.code == ErrorCode::TidNotFound => {
                    Next::Fail(ClientError::TidNotFound { tid })
                }
                Err(error) => Next::Another(error.to_string()),
            },
        )
        .await
    }

    /// Revisions of `oid` by position, newest first: `first..last` (§8.4).
    pub async fn history(
        &self,
        oid: Oid,
        first: u64,
        last: u64,
    ) -> Result<Vec<HistoryEntry>, ClientError> {
        let request = packets::AskObjectHistory { oid, first, last };
        ask_readable(
            self.shared(),
            ReadKey::Oid(oid),
            request,
            &[],
            |_, answer| match answer {
                Ok(answer) => Next::Done(answer.history),
                Err(error) if error.code == ErrorCode::OidNotFound => {
                    Next::Fail(ClientError::OidNotFound {
                        oid,
                        what: "in history".into(),
                    })
                }
                Err(error) => Next::Another(error.to_string()),
            },
        )
        .await
    }

    /// TIDs for `undoLog` (§8.2): `AskTIDs(first, last)` to every storage
    /// with a readable cell, merged, newest first, at most `last - first`.
    pub async fn undo_log_tids(&self, first: u64, last: u64) -> Result<Vec<Tid>, ClientError> {
        if first >= last {
            return Ok(Vec::new());
        }
        let session = self.shared().session().await?;
        let nodes: BTreeSet<NodeId> = {
            let view = lock(&session.view);
            let mut nodes = BTreeSet::new();
            if let Some(pt) = &view.pt {
                for partition in 0..pt.partitions() {
                    nodes.extend(
                        pt.readable_cells(partition)
                            .map(|cell| cell.nid)
                            .filter(|nid| view.nodes.is_running(*nid)),
                    );
                }
            }
            nodes
        };
        let mut tids = BTreeSet::new();
        let mut answered = 0;
        let mut errors = Vec::new();
        for nid in nodes {
            let request = packets::AskTIDs {
                first,
                last,
                partition: INVALID_PARTITION,
            };
            match session.storage(self.shared(), nid).await {
                Ok(connection) => match connection.ask(request).await {
                    Ok(answer) => {
                        answered += 1;
                        tids.extend(answer.tids);
                    }
                    Err(error) => errors.push(format!("{nid}: {error}")),
                },
                Err(error) => errors.push(format!("{nid}: {error}")),
            }
        }
        if answered == 0 {
            return Err(ClientError::NoStorage(format!(
                "undo log: {}",
                errors.join("; ")
            )));
        }
        let limit = usize::try_from(last - first).unwrap_or(usize::MAX);
        Ok(tids.into_iter().rev().take(limit).collect())
    }

    /// One chunk of the iterator (§8.5): at most `limit` TIDs in
    /// `start..=stop`, ascending, merged over partitions. An empty result
    /// means the end; else continue from the last TID + 1.
    pub async fn iterate_tids(
        &self,
        start: Tid,
        stop: Option<Tid>,
        limit: u32,
    ) -> Result<Vec<Tid>, ClientError> {
        let session = self.shared().session().await?;
        let last = self.last_transaction().unwrap_or(Tid::ZERO);
        let mut stop = stop.unwrap_or(Tid::MAX).min(last);
        let partitions = session.partitions().unwrap_or(0);
        let limit_len = limit as usize;
        let mut merged: BTreeSet<Tid> = BTreeSet::new();
        for partition in 0..partitions {
            if start > stop {
                break;
            }
            let request = packets::AskTIDsFrom {
                min_tid: start,
                max_tid: stop,
                length: limit,
                partition,
            };
            let tids = ask_readable(
                self.shared(),
                ReadKey::Partition(partition),
                request,
                &[],
                |_, answer| match answer {
                    Ok(answer) => Next::Done(answer.tids),
                    Err(error) => Next::Another(error.to_string()),
                },
            )
            .await?;
            merged.extend(tids);
            while merged.len() > limit_len {
                merged.pop_last();
            }
            if merged.len() == limit_len {
                // Later partitions need not look beyond what is kept.
                if let Some(max) = merged.last() {
                    stop = *max;
                }
            }
        }
        Ok(merged.into_iter().collect())
    }

    /// Oids of one partition existing at `tid` (§8.6), ascending from
    /// `min_oid`; the second value is where to continue (`None`: done).
    pub async fn oids_from(
        &self,
        partition: Partition,
        length: u32,
        min_oid: Oid,
        tid: Tid,
    ) -> Result<(Vec<Oid>, Option<Oid>), ClientError> {
        let request = packets::AskOIDsFrom {
            partition,
            length,
            min_oid,
            tid,
        };
        ask_readable(
            self.shared(),
            ReadKey::Partition(partition),
            request,
            &[],
            |_, answer| match answer {
                Ok(answer) => Next::Done((answer.oids, answer.next_min_oid)),
                Err(error) => Next::Another(error.to_string()),
            },
        )
        .await
    }

    /// Number of partitions of the cluster.
    pub async fn partitions(&self) -> Result<u32, ClientError> {
        let session = self.shared().session().await?;
        Ok(session.partitions().unwrap_or(0))
    }

    /// `IStorage.pack` (§11.3 step 1): asks the cluster to remove the
    /// history older than `pack_tid` (clamped to the last committed TID),
    /// for every object or only for `oids` (partial pack). Commits an empty
    /// transaction carrying the order and returns its TID, which is the
    /// pack id to give to [`Client::wait_for_pack`]; `None` when there is
    /// nothing to pack (empty database or `pack_tid` is `ZERO_TID`). The
    /// storages pack in the background, after this returns.
    pub async fn pack(
        &self,
        pack_tid: Tid,
        oids: Option<Vec<Oid>>,
    ) -> Result<Option<Tid>, ClientError> {
        self.shared().session().await?;
        let last = self.last_transaction().unwrap_or(Tid::ZERO);
        let pack_tid = pack_tid.min(last);
        if pack_tid == Tid::ZERO {
            return Ok(None);
        }
        let oids = oids.map(|mut oids| {
            oids.sort_unstable();
            oids.dedup();
            oids
        });
        let meta = crate::txn::TxnMeta {
            description: Bytes::from_static(b"IStorage.pack"),
            pack: Some(packets::PackRequest { oids, pack_tid }),
            ..Default::default()
        };
        let mut txn = self.begin(None).await?;
        if let Err(error) = txn.vote(&meta).await {
            let _ = txn.abort().await;
            return Err(error);
        }
        txn.finish().await.map(Some)
    }

    /// Waits until the pack order `pack_id` (the TID returned by
    /// [`Client::pack`]) is completed by every storage with readable cells
    /// (`WaitForPack`); returns at once for an unknown or finished order.
    pub async fn wait_for_pack(&self, pack_id: Tid) -> Result<(), ClientError> {
        let session = self.shared().session().await?;
        session
            .master
            .ask(packets::WaitForPack { pack_id })
            .await
            .map_err(|e| ClientError::from_ask("WaitForPack", e))?;
        Ok(())
    }

    /// Every pack order with an id `>= min_id` (`AskPackOrders`, §11.3),
    /// completed ones included (the master collects those from the
    /// storages): what the undo log needs to hide what pack removed.
    pub async fn pack_orders(&self, min_id: Tid) -> Result<Vec<packets::PackOrder>, ClientError> {
        let session = self.shared().session().await?;
        let answer = session
            .master
            .ask(packets::AskPackOrders { min_id })
            .await
            .map_err(|e| ClientError::from_ask("AskPackOrders", e))?;
        Ok(answer.orders)
    }

    /// The readable storages of every partition, for diagnostics.
    pub fn readable_cells(&self) -> HashMap<Partition, Vec<NodeId>> {
        let mut cells = HashMap::new();
        if let Some(session) = self.shared().current_session() {
            let view = lock(&session.view);
            if let Some(pt) = &view.pt {
                for partition in 0..pt.partitions() {
                    cells.insert(
                        partition,
                        pt.readable_cells(partition).map(|c| c.nid).collect(),
                    );
                }
            }
        }
        cells
    }
}

fn with_data(record: Record) -> Result<Loaded, ClientError> {
    match record.data {
        Some(data) => Ok(Loaded {
            data,
            serial: record.serial,
            next_serial: record.next_serial,
        }),
        None => Err(ClientError::NoData {
            oid: record.oid,
            serial: record.serial,
        }),
    }
}

fn refused_as_read_only(request: &'static str, error: neo_net::AskError) -> ClientError {
    match error {
        neo_net::AskError::Refused { error, .. } if error.code == ErrorCode::ReadOnlyAccess => {
            ClientError::ReadOnly(format!(": {error}"))
        }
        neo_net::AskError::Net(error) => ClientError::master_lost(format!("{request}: {error}")),
        error => ClientError::from_ask(request, error),
    }
}
