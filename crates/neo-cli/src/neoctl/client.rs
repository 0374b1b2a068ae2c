//! Sends a [`Command`] to the admin node and turns the answers into the
//! text to print. neoctl does not identify: it connects and sends its
//! requests at once (protocol.md §9.1), one connection per invocation.

use std::time::Duration;

use neo_net::{AskError, Connection, ConnectionConfig, EventKind, Inbox, NetError, Tls};
use neo_proto::packets::{self, NodeInfo};
use neo_proto::{
    Address, ClusterState, ErrorCode, Map, NodeId, NodeState, NodeType, Packet, Partition,
};

use super::command::{CheckTarget, Command, NodeSelection};
use super::format::{self, Ids};

/// How long to wait, once a request failed because the connection closed,
/// for an `Error` the admin sent just before closing with a fresh msg_id
/// (protocol.md §2.3), and for our own last packet to leave on `flush_log`.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Why a command did not succeed. `Display` is the line printed on stderr;
/// every variant exits with status 1.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The admin cannot be reached (NEO/py's text).
    #[error("ERROR: not connected")]
    NotConnected {
        /// Why the connection failed.
        #[source]
        source: NetError,
    },
    /// The connection closed before the answer came.
    #[error("ERROR: Connection closed")]
    Closed,
    /// The peer is not a NEO node of our protocol version.
    #[error("ERROR: Connection closed ({0})")]
    NotNeo(NetError),
    /// The master refused the operation: its message, verbatim.
    #[error("{0}")]
    Denied(String),
    /// The admin cannot serve yet (e.g. no primary master).
    #[error("ERROR: {0}")]
    NotReady(String),
    /// Any other error answer (e.g. an invalid partition table offset).
    #[error("ERROR: {code}: {message}")]
    Refused {
        /// The error code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The admin answered with something we did not ask for.
    #[error("ERROR: {0}")]
    Protocol(NetError),
    /// An answer that cannot be used (e.g. a partition table too large).
    #[error("ERROR: {0}")]
    Unexpected(String),
}

impl CtlError {
    fn from_error_packet(error: packets::Error) -> CtlError {
        match error.code {
            ErrorCode::Denied => CtlError::Denied(error.message),
            ErrorCode::NotReady => CtlError::NotReady(error.message),
            code => CtlError::Refused {
                code,
                message: error.message,
            },
        }
    }

    fn from_net(error: NetError) -> CtlError {
        match error {
            NetError::Closed { .. } | NetError::ClosedInHandshake { .. } | NetError::Io { .. } => {
                CtlError::Closed
            }
            error @ (NetError::VersionMismatch { .. }
            | NetError::NotNeo { .. }
            | NetError::HandshakeTimeout { .. }) => CtlError::NotNeo(error),
            error => CtlError::Protocol(error),
        }
    }
}

/// A connection to the admin node.
pub struct AdminConnection {
    connection: Connection,
    inbox: Inbox,
}

impl AdminConnection {
    /// Connects to the admin node at `address` (with TLS if given) and
    /// runs the handshake.
    pub async fn connect(address: &Address, tls: Option<Tls>) -> Result<AdminConnection, CtlError> {
        let config = ConnectionConfig {
            tls,
            ..ConnectionConfig::default()
        };
        let (connection, inbox) =
            neo_net::connect_alone(address, &config)
                .await
                .map_err(|error| match error {
                    NetError::Resolve { .. } | NetError::Io { .. } => {
                        CtlError::NotConnected { source: error }
                    }
                    error => CtlError::from_net(error),
                })?;
        Ok(AdminConnection { connection, inbox })
    }

    /// An error the admin sent outside of an answer just before closing
    /// (it does so for a bad `print pt` range), if any.
    async fn unsolicited_error(&mut self) -> Option<packets::Error> {
        loop {
            let event = tokio::time::timeout(CLOSE_GRACE, self.inbox.recv())
                .await
                .ok()??;
            match event.kind {
                EventKind::Packet(frame) => {
                    if let Packet::Error(error) = frame.packet {
                        return Some(error);
                    }
                }
                EventKind::Closed(_) => return None,
                // Answers to requests we did not send this way: nothing to do.
                _ => {}
            }
        }
    }

    async fn ask<R: neo_proto::Request>(&mut self, request: R) -> Result<R::Answer, CtlError> {
        match self.connection.ask(request).await {
            Ok(answer) => Ok(answer),
            Err(AskError::Refused { error, .. }) => Err(CtlError::from_error_packet(error)),
            Err(AskError::Net(error @ NetError::Closed { .. })) => {
                match self.unsolicited_error().await {
                    Some(error) => Err(CtlError::from_error_packet(error)),
                    None => Err(CtlError::from_net(error)),
                }
            }
            Err(AskError::Net(error)) => Err(CtlError::from_net(error)),
        }
    }

    /// Requests answered by `Error(ACK)`: the acknowledgement message.
    async fn ask_ack<R>(&mut self, request: R) -> Result<String, CtlError>
    where
        R: neo_proto::Request<Answer = packets::Error>,
    {
        self.ask(request).await.map(|ack| ack.message)
    }

    async fn storages(&mut self) -> Result<Vec<NodeInfo>, CtlError> {
        let answer = self
            .ask(packets::AskNodeList {
                node_type: Some(NodeType::Storage),
            })
            .await?;
        Ok(answer.nodes)
    }

    /// Runs `command`; `Ok(Some(text))` is printed followed by a newline,
    /// `Ok(None)` prints nothing.
    pub async fn execute(&mut self, command: &Command) -> Result<Option<String>, CtlError> {
        let text = match command {
            Command::PrintIds => self.print_ids().await?,
            Command::PrintPt { min, max, node } => {
                let answer = self
                    .ask(packets::AskPartitionList {
                        min_offset: *min,
                        max_offset: *max,
                        nid: *node,
                    })
                    .await?;
                let compact = *min == 0 && *max == 0;
                let storages = if compact {
                    self.storages().await?
                } else {
                    Vec::new()
                };
                format::format_partition_list(
                    answer.ptid,
                    answer.num_replicas,
                    &answer.rows,
                    *min,
                    *max,
                    &storages,
                )
            }
            Command::PrintNode(node_type) => {
                let answer = self
                    .ask(packets::AskNodeList {
                        node_type: *node_type,
                    })
                    .await?;
                format::format_node_list(&answer.nodes)
            }
            Command::PrintCluster => {
                let answer = self.ask(packets::AskClusterState {}).await?;
                answer
                    .state
                    .map_or_else(|| "None".to_owned(), |s| s.to_string())
            }
            Command::PrintPrimary => self
                .ask(packets::AskPrimary {})
                .await?
                .primary
                .map_or_else(|| "None".to_owned(), |nid| nid.to_string()),
            Command::PrintSummary => {
                let answer = self.ask(packets::AskMonitorInformation {}).await?;
                format::format_summary(&answer.warning, &answer.problem, &answer.summary)
            }
            Command::SetCluster(state) => {
                self.ask_ack(packets::SetClusterState { state: *state })
                    .await?
            }
            Command::Start => {
                self.ask_ack(packets::SetClusterState {
                    state: ClusterState::Verifying,
                })
                .await?
            }
            Command::SetReplicas(num_replicas) => {
                self.ask_ack(packets::SetNumReplicas {
                    num_replicas: *num_replicas,
                })
                .await?
            }
            Command::Add(selection) => {
                let nids = match selection {
                    // Every storage the admin knows: the master only
                    // enables the pending ones.
                    NodeSelection::All => self
                        .storages()
                        .await?
                        .iter()
                        .filter_map(|n| n.nid)
                        .collect(),
                    NodeSelection::Nodes(nids) => nids.clone(),
                };
                self.ask_ack(packets::AddPendingNodes { nids }).await?
            }
            Command::Tweak { dry_run, drop } => {
                let answer = self
                    .ask(packets::TweakPartitionTable {
                        dry_run: *dry_run,
                        drop_nids: drop.clone(),
                    })
                    .await?;
                let storages = if answer.changed {
                    self.storages().await?
                } else {
                    Vec::new()
                };
                format::format_tweak(answer.changed, &answer.rows, &storages)
            }
            Command::Kill(nid) => self.set_node_state(*nid, NodeState::Down).await?,
            Command::Drop(nid) => self.set_node_state(*nid, NodeState::Unknown).await?,
            Command::Check {
                targets,
                min_tid,
                max_tid,
            } => {
                let partitions = self.check_partitions(targets).await?;
                self.ask_ack(packets::CheckReplicas {
                    partitions,
                    min_tid: *min_tid,
                    max_tid: *max_tid,
                })
                .await?;
                return Ok(None);
            }
            Command::PruneOrphan { dry_run, nodes } => {
                let nids = match nodes {
                    // An empty list asks every connected storage.
                    NodeSelection::All => Vec::new(),
                    NodeSelection::Nodes(nids) => nids.clone(),
                };
                self.ask_ack(packets::Repair {
                    nids,
                    dry_run: *dry_run,
                })
                .await?
            }
            Command::Truncate(tid) => {
                self.ask_ack(packets::Truncate { tid: *tid }).await?;
                return Ok(None);
            }
            Command::FlushLog => {
                self.connection
                    .notify(packets::FlushLog {})
                    .await
                    .map_err(CtlError::from_net)?;
                return Ok(None);
            }
        };
        Ok(Some(text))
    }

    async fn print_ids(&mut self) -> Result<String, CtlError> {
        let recovery = self.ask(packets::AskRecovery {}).await?;
        let ids = match recovery.backup_tid {
            Some(backup_tid) => {
                let last = self.ask(packets::AskLastTransaction {}).await?;
                Ids::Backup {
                    backup_tid,
                    last_tid: last.tid,
                    ptid: recovery.ptid,
                }
            }
            None => {
                let last = self.ask(packets::AskLastIDs {}).await?;
                Ids::Normal {
                    last_oid: last.last_oid,
                    last_tid: last.last_tid,
                    ptid: recovery.ptid,
                }
            }
        };
        Ok(format::format_ids(&ids))
    }

    async fn set_node_state(&mut self, nid: NodeId, state: NodeState) -> Result<String, CtlError> {
        self.ask_ack(packets::SetNodeState { nid, state }).await
    }

    /// The partition → reference map of `check`; a target without a
    /// partition (`:S1`) stands for every partition of the table.
    async fn check_partitions(
        &mut self,
        targets: &[CheckTarget],
    ) -> Result<Map<Partition, Option<NodeId>>, CtlError> {
        let mut partitions: Vec<(Partition, Option<NodeId>)> = Vec::new();
        let mut set = |partition: Partition, reference: Option<NodeId>| match partitions
            .iter_mut()
            .find(|(p, _)| *p == partition)
        {
            Some(entry) => entry.1 = reference,
            None => partitions.push((partition, reference)),
        };
        let mut count: Option<u32> = None;
        for target in targets {
            match target.partition {
                Some(partition) => set(partition, target.reference),
                None => {
                    let count = match count {
                        Some(count) => count,
                        None => {
                            let answer = self
                                .ask(packets::AskPartitionList {
                                    min_offset: 0,
                                    max_offset: 0,
                                    nid: None,
                                })
                                .await?;
                            let rows = u32::try_from(answer.rows.len()).map_err(|_| {
                                CtlError::Unexpected("partition table too large".into())
                            })?;
                            *count.insert(rows)
                        }
                    };
                    for partition in 0..count {
                        set(partition, target.reference);
                    }
                }
            }
        }
        Ok(partitions.into_iter().collect())
    }

    /// Waits until what we sent has left (the connection is then closed).
    pub async fn close(mut self) {
        self.connection.close().await;
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(event) = self.inbox.recv().await {
                if let EventKind::Closed(_) = event.kind {
                    break;
                }
            }
        })
        .await;
    }
}
