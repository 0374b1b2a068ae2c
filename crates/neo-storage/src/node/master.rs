//! The session with the primary master (architecture.md §2.4, §5, §5.3):
//! finding it and identifying, recovery and verification questions, the
//! partition table, start and stop of operation, node notifications and
//! what the master says of clients.

use neo_net::{ConnId, Token};
use neo_proto::packets as p;
use neo_proto::{Address, ErrorCode, Map, NodeId, NodeState, NodeType, Packet, Tid, Value};

use super::{Asked, Handled, Peer, Storage};
use crate::backend::{Error, RequestError};

/// Where the storage stands with the primary master.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Link {
    /// A connection attempt is scheduled, not made yet.
    Scheduled,
    /// A connection attempt is running.
    Connecting {
        /// Its token.
        token: Token,
        /// Where to.
        address: Address,
    },
    /// Connected to the master at `address`: identifying or identified.
    Connected {
        /// The connection.
        conn: ConnId,
        /// Where it goes, tried first again when it is lost.
        address: Address,
    },
}

impl Storage {
    /// Looks for the primary: `preferred` first, else the next master in
    /// turn, at most once a second per address (§2.4).
    pub(super) fn connect_master(&mut self, preferred: Option<Address>) {
        self.finder.schedule(preferred, self.now);
        self.link = Link::Scheduled;
        self.connect_if_due();
    }

    /// Makes the scheduled connection attempt once it is due.
    pub(super) fn connect_if_due(&mut self) {
        if self.link != Link::Scheduled {
            return;
        }
        if let Some(address) = self.finder.due(self.now) {
            let token = self.asked.fresh();
            self.out.connect(token, address.clone());
            self.link = Link::Connecting { token, address };
        }
    }

    /// The connection attempt `token` failed: try the next master.
    pub(super) fn on_connect_failed(&mut self, token: Token) {
        if matches!(&self.link, Link::Connecting { token: attempt, .. } if *attempt == token) {
            self.connect_master(None);
        }
    }

    /// The connection attempt `token` succeeded: identify.
    pub(super) fn on_master_connected(&mut self, conn: ConnId, token: Token) {
        let address = match &self.link {
            Link::Connecting {
                token: attempt,
                address,
            } if *attempt == token => address.clone(),
            // Not the attempt we wait for.
            _ => return self.out.close(conn),
        };
        self.link = Link::Connected { conn, address };
        self.identify_to_master(conn);
    }

    pub(super) fn identify_to_master(&mut self, conn: ConnId) {
        self.pack.reset();
        // The new master gives a new one (§1.5).
        self.id_timestamp = None;
        let extra = Map(vec![
            (
                "devpath".to_owned(),
                Value::Array(
                    self.config
                        .devpath
                        .iter()
                        // Bytes, as NEO/py sends them.
                        .map(|part| Value::Bin(part.clone().into_bytes().into()))
                        .collect(),
                ),
            ),
            ("new_nid".to_owned(), Value::Array(vec![])),
        ]);
        let request = p::RequestIdentification {
            node_type: NodeType::Storage,
            nid: self.nid,
            address: Some(self.config.address.clone()),
            cluster: self.config.cluster.clone(),
            id_timestamp: None,
            extra,
        };
        self.asked
            .send(&mut self.out, conn, Asked::MasterIdentification, request);
    }

    /// The answer of the master to a request of ours.
    pub(super) fn on_master_answer(&mut self, conn: ConnId, why: Asked, packet: Packet) -> Handled {
        match (why, packet) {
            (Asked::MasterIdentification, Packet::AcceptIdentification(accept)) => {
                let Some(nid) = accept
                    .your_nid
                    .filter(|_| accept.node_type == NodeType::Master)
                else {
                    tracing::warn!("{} answered our identification: closing", accept.node_type);
                    self.out.close(conn);
                    return Ok(());
                };
                if self.nid != Some(nid) {
                    self.db.set_nid(nid)?;
                    self.db.commit()?;
                    self.nid = Some(nid);
                }
                neo_log::set_node(&nid.to_string());
                tracing::info!(%nid, "identified to the primary master");
            }
            (Asked::PackOrders, Packet::AnswerPackOrders(answer)) => self.on_pack_orders(answer)?,
            (Asked::Unfinished(partitions), Packet::AnswerUnfinishedTransactions(answer)) => {
                self.on_unfinished(&partitions, answer)?
            }
            (why, Packet::Error(error)) => {
                tracing::warn!(?why, "the master refused us: {error}");
                self.out.close(conn);
            }
            // `neo-net` lets only the request's answer or `Error` through.
            (why, other) => {
                tracing::warn!(?why, "unexpected answer {} from the master", other.name())
            }
        }
        Ok(())
    }

    /// A secondary master said where the primary is (§2.4 step 3).
    fn redirected(&mut self, conn: ConnId, redirect: &p::NotPrimaryMaster) {
        let primary = self.finder.redirected(redirect);
        tracing::info!(?primary, "not the primary master");
        self.asked.closed(conn);
        self.out.close(conn);
        self.connect_master(primary);
    }

    pub(super) fn on_master_packet(
        &mut self,
        conn: ConnId,
        msg_id: u32,
        packet: Packet,
    ) -> Handled {
        match packet {
            Packet::NotPrimaryMaster(redirect) => self.redirected(conn, &redirect),
            Packet::NotifyNodeInformation(notification) => self.on_nodes(notification)?,
            Packet::NotifyClusterInformation(_) => {}
            Packet::NotifyPackSigned(signed) => self.on_pack_signed(signed)?,
            Packet::AskRecovery(_) => {
                let answer = p::AnswerRecovery {
                    ptid: self.db.ptid()?,
                    backup_tid: self.db.backup_tid()?,
                    truncate_tid: self.db.truncate_tid()?,
                };
                self.answer(conn, msg_id, answer);
            }
            Packet::AskPartitionTable(_) => {
                let answer = p::AnswerPartitionTable {
                    ptid: self.db.ptid()?,
                    num_replicas: self.db.num_replicas()?,
                    rows: self
                        .db
                        .partition_table()
                        .map(|pt| pt.to_rows())
                        .unwrap_or_default(),
                };
                self.answer(conn, msg_id, answer);
            }
            Packet::SendPartitionTable(table) => {
                if let Some(ptid) = table.ptid {
                    let cells: Vec<_> = table
                        .rows
                        .iter()
                        .enumerate()
                        .flat_map(|(partition, row)| {
                            row.iter()
                                .map(move |cell| (partition as u32, cell.nid, cell.state))
                        })
                        .collect();
                    let dropped =
                        self.db
                            .change_partition_table(ptid, table.num_replicas, &cells, true)?;
                    self.partitions_dropped(dropped);
                }
            }
            Packet::NotifyPartitionChanges(changes) => {
                let partitions = self.db.partition_table().map_or(0, |pt| pt.partitions());
                if let Some(change) = changes.changes.iter().find(|c| c.partition >= partitions) {
                    let message = format!(
                        "partition {} out of range (0..{partitions})",
                        change.partition
                    );
                    self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
                    return Ok(());
                }
                let current = self.db.ptid()?;
                if current.map(|ptid| ptid + 1) != Some(changes.ptid) {
                    tracing::warn!(
                        ?current,
                        got = changes.ptid,
                        "partition table change out of order"
                    );
                    self.refuse(conn, msg_id, ErrorCode::ProtocolError, "ptid out of order");
                    return Ok(());
                }
                let cells: Vec<_> = changes
                    .changes
                    .iter()
                    .map(|c| (c.partition, c.nid, c.state))
                    .collect();
                let dropped = self.db.change_partition_table(
                    changes.ptid,
                    changes.num_replicas,
                    &cells,
                    false,
                )?;
                self.forget_partitions(&dropped)?;
                self.partitions_dropped(dropped);
                if self.operational {
                    self.replication_cells_changed(&changes.changes)?;
                    // Cells that went away may raise the smallest pack id.
                    self.report_pack_completed()?;
                    self.maybe_pack()?;
                }
            }
            Packet::AskLockedTransactions(_) => {
                let ttids = Map(self.db.unfinished_transactions()?.into_iter().collect());
                self.answer(conn, msg_id, p::AnswerLockedTransactions { ttids });
            }
            Packet::AskFinalTID(request) => {
                let tid = self.final_tid(request.ttid)?;
                self.answer(conn, msg_id, p::AnswerFinalTID { tid });
            }
            Packet::ValidateTransaction(validate) => {
                self.db.lock_transaction(validate.ttid, validate.tid)?;
                self.db.unlock_transaction(validate.ttid, validate.tid)?;
                self.db.commit()?;
            }
            Packet::Truncate(truncate) => {
                self.db.set_truncate_tid(Some(truncate.tid))?;
                self.db.commit()?;
            }
            Packet::AskLastIDs(_) => {
                // A pending truncation is carried out before answering.
                self.db.truncate()?;
                if !self.pack.disabled {
                    self.report_pack_completed()?;
                }
                let last = self.db.last_ids()?;
                let answer = p::AnswerLastIDs {
                    last_tid: last.tid,
                    last_oid: last.oid,
                    first_tid: self.db.first_tid()?,
                };
                self.answer(conn, msg_id, answer);
            }
            Packet::AskPackOrders(request) => {
                let orders = self.db.pack_orders(request.min_id)?;
                self.answer(conn, msg_id, p::AnswerPackOrders { orders });
            }
            Packet::StartOperation(_) => {
                self.db.drop_unfinished_data()?;
                self.db.commit()?;
                self.locks.clear();
                self.take_waiting();
                self.operational = true;
                tracing::info!("operational");
                self.notify(conn, p::NotifyReady {});
                self.start_replication();
                self.maybe_pack()?;
            }
            Packet::StopOperation(_) => self.stop_operation(),
            Packet::AskLockInformation(request) => self.lock_transaction(conn, msg_id, request)?,
            Packet::NotifyUnlockInformation(unlock) => self.unlock_transaction(unlock.ttid)?,
            Packet::AbortTransaction(abort) => {
                self.abort(abort.ttid)?;
                self.replication_transaction_finished(abort.ttid, None)?;
            }
            Packet::NotifyTransactionFinished(finished) => {
                self.abort(finished.ttid)?;
                self.replication_transaction_finished(finished.ttid, Some(finished.max_tid))?;
            }
            Packet::Ping(_) => self.answer(conn, msg_id, p::Pong {}),
            Packet::Replicate(replicate) => {
                // The master would wait for this replication forever: stop
                // and say why rather than leave cells out of date.
                let partitions: Vec<String> = replicate
                    .sources
                    .0
                    .iter()
                    .map(|(partition, _)| partition.to_string())
                    .collect();
                let reason = format!(
                    "the master asked this storage to replicate partitions {}, which it \
                     cannot do yet: use NEO/py storages for replication",
                    partitions.join(", ")
                );
                tracing::error!("{reason}");
                self.out.exit(Err(reason));
            }
            Packet::CheckPartition(check) => self.on_check_partition(check)?,
            Packet::NotifyRepair(_) => tracing::warn!(
                "the master asked to repair partitions, which this storage cannot do yet: ignored"
            ),
            Packet::FlushLog(_) => neo_log::flush_requested(),
            packet => {
                let message = format!("unexpected packet {} from the master", packet.name());
                self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
            }
        }
        Ok(())
    }

    fn on_nodes(&mut self, notification: p::NotifyNodeInformation) -> Handled {
        self.last_notification = notification.timestamp;
        for info in &notification.nodes {
            // Every master the primary knows: a failover may need them.
            if let (NodeType::Master, Some(address)) = (info.node_type, &info.address) {
                self.finder.learn(address);
            }
            if info.nid.is_some() && info.nid == self.nid {
                self.id_timestamp = info.id_timestamp;
                match info.state {
                    NodeState::Down => {
                        tracing::info!("told to stop by the master");
                        self.db.commit()?;
                        self.out.exit(Ok(()));
                    }
                    NodeState::Unknown => {
                        tracing::warn!("dropped from the cluster: erasing the database");
                        self.db.erase()?;
                        self.out.exit(Ok(()));
                    }
                    _ => {}
                }
            }
            if info.node_type == NodeType::Client && info.state != NodeState::Running {
                if let Some(client) = info.nid {
                    self.client_gone(client)?;
                }
            }
            self.nodes.apply(info);
        }
        // Identifications that were too early may be decidable now.
        for (conn, msg_id, request) in std::mem::take(&mut self.early_identifications) {
            self.identify_peer(conn, msg_id, request);
        }
        // A source may have come up.
        self.next_replication()
    }

    /// The master reported a client gone: abort its transactions that are
    /// not locked, voted or not, and drop its connections (§1.3).
    fn client_gone(&mut self, client: NodeId) -> Handled {
        for ttid in self.locks.of_client(client) {
            self.abort(ttid)?;
        }
        let conns: Vec<ConnId> = self
            .peers
            .iter()
            .filter(|(_, peer)| **peer == Peer::Client(client))
            .map(|(conn, _)| *conn)
            .collect();
        for conn in conns {
            self.out.close(conn);
        }
        Ok(())
    }

    pub(super) fn stop_operation(&mut self) {
        self.operational = false;
        self.pack.stop();
        self.replicator.reset();
        self.feeding.clear();
        self.checker.clear();
        self.links.clear();
        self.locks.clear();
        self.take_waiting();
        let conns: Vec<ConnId> = self.peers.keys().copied().collect();
        for conn in conns {
            self.out.close(conn);
        }
    }

    pub(super) fn final_tid(&mut self, ttid: Tid) -> Result<Option<Tid>, Error> {
        if let Some(tid) = self.locks.locked_tid(ttid) {
            return Ok(Some(tid));
        }
        match self.db.final_tid(ttid) {
            Err(Error::Request(RequestError::NonReadableCell { .. })) => Ok(None),
            other => other,
        }
    }
}
