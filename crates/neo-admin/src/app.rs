//! The admin node as a state machine: [`Admin::handle`] takes one [`Input`]
//! (a connection event, a packet, an answer, a tick) and the time, and
//! returns what to do. No I/O and no clock: the shell (`shell.rs`) does
//! both, so tests can drive whole scenarios deterministically.
//!
//! The admin has two kinds of connections (operations.md §4.1):
//!
//! - one to the primary master, which it finds by trying the configured
//!   masters in turn (architecture.md §2.4), identifies on as ADMIN, and
//!   through which it keeps a copy of the node table, the partition table
//!   and the cluster state;
//! - any number of unidentified `neoctl` connections (protocol.md §9.1),
//!   whose requests it answers from that copy or relays to the master.
//!
//! Requests sent to the master are tagged with a [`Token`] chosen here and
//! come back with it. That is how an answer relayed to `neoctl` keeps
//! `neoctl`'s msg_id whatever id the request had on the master connection.

use std::collections::{BTreeMap, HashSet};

use neo_cluster::{NodeTable, PartitionTable, PrimaryFinder, UnixTime};
use neo_net::{ConnId, Input, Node, Outbox, Output, Requests, Token};
use neo_proto::packets::{self as p, NodeInfo};
use neo_proto::{Address, ClusterState, ErrorCode, Map, NodeId, NodeType, Oid, Packet, Tid, Value};

use crate::imports::Imports;
use crate::mail::{EmailConfig, Mail, Notifier};
use crate::monitor::{Alert, Level, Watch, ALERT_TARGET};
use crate::status::{Activity, View, ACTIVITY_WINDOW, STATUS_POLL_INTERVAL};
use crate::summary::{ClusterReport, Severity};

/// Message of every refusal while no primary master is at hand; `neoctl`
/// prints it after `ERROR: ` (operations.md §3.1).
pub const NOT_CONNECTED: &str = "Not connected to a primary master.";

/// How long a monitoring question to the master may stay unanswered before
/// the silent connection is closed (protocol.md §9.5).
pub const MONITOR_TIMEOUT: f64 = 60.0;

/// Largest number of `neoctl` requests waiting for the master at once; more
/// are refused rather than queued without bound.
const MAX_FORWARDED: usize = 1024;

/// What the admin is configured with (operations.md §1.3).
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// Name of the cluster; the master refuses any other.
    pub cluster: String,
    /// Masters to try, in this order, to find the primary.
    pub masters: Vec<Address>,
    /// The address published to the master (where `neoctl` connects).
    pub bind: Address,
    /// Names of the backup clusters this admin monitors (`--monitor-backup`),
    /// announced to the master at identification.
    pub monitor_backup: Vec<String>,
    /// The id to propose to the master first (`-i`, for tests).
    pub nid: Option<NodeId>,
    /// Alerts, e-mails and the status page.
    pub monitor: MonitorConfig,
}

/// What the admin watches for and tells (operations.md §4.2, §4.4).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MonitorConfig {
    /// `--monitor-maxlag`: seconds a cell may stay OUT_OF_DATE before it
    /// is reported as lagging (see `monitor.rs`).
    pub max_lag: f64,
    /// `--monitor-email`: where notifications go; `None`: no e-mail.
    pub email: Option<EmailConfig>,
    /// `--status`: the status page is served, so the last ids are asked
    /// of the master every [`STATUS_POLL_INTERVAL`].
    pub status_page: bool,
}

/// Why a configuration cannot run an admin node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// NEO/py refuses an empty cluster name too.
    #[error("the cluster name must not be empty")]
    EmptyCluster,
    /// Nowhere to look for the primary master.
    #[error("no master address given")]
    NoMaster,
    /// A lag limit that is not a number of seconds.
    #[error("--monitor-maxlag must be a number of seconds, not {0}")]
    MaxLag(String),
}

/// Where the admin stands with the primary master.
#[derive(Debug, Clone, PartialEq)]
enum Link {
    /// Nothing yet ([`Input::Start`] not received).
    Idle,
    /// A connection attempt is scheduled (`token` is `None`) or running.
    Connecting { token: Option<Token> },
    /// Connected, `RequestIdentification` sent.
    Identifying { conn: ConnId },
    /// Identified to the primary master: `neoctl` is served.
    Ready { conn: ConnId },
}

/// Why a request to the master was sent.
#[derive(Debug)]
enum Pending {
    /// Our `RequestIdentification`.
    Identification,
    /// The `AskClusterState` that follows identification.
    ClusterState,
    /// A `neoctl` request relayed; the answer goes back to `ctl` as `msg_id`.
    Forward { ctl: ConnId, msg_id: u32 },
    /// Refreshing the last TID (or backup TID) for a summary.
    Monitor,
    /// `AskMonitorInformation` to this storage: its import's progress.
    Import(NodeId),
}

/// Why the last TID is asked of the master.
#[derive(Debug, Clone, Copy)]
enum Refresh {
    /// `neoctl print summary`, to answer with this msg_id.
    Summary(ConnId, u32),
    /// An e-mail report.
    Notify,
    /// The status page's periodic question (the last OID too).
    Page,
}

/// A summary being built: the last TID was asked of the master.
#[derive(Debug, Default)]
struct MonitorRefresh {
    asked_at: UnixTime,
    /// `neoctl` requests waiting for the summary.
    waiters: Vec<(ConnId, u32)>,
    /// An e-mail report waits for it.
    notify: bool,
}

impl MonitorRefresh {
    fn add(&mut self, why: Refresh) {
        match why {
            Refresh::Summary(conn, msg_id) => self.waiters.push((conn, msg_id)),
            Refresh::Notify => self.notify = true,
            Refresh::Page => {}
        }
    }
}

/// The admin node.
#[derive(Debug)]
pub struct Admin {
    config: AdminConfig,
    /// The masters to find the primary among.
    finder: PrimaryFinder,
    link: Link,
    /// Our id, as last given by a primary master; proposed again when
    /// reconnecting.
    nid: Option<NodeId>,
    /// Id of the primary master we are identified to.
    primary: Option<NodeId>,
    /// `None` until the master tells it.
    cluster_state: Option<ClusterState>,
    nodes: NodeTable,
    /// The next `NotifyNodeInformation` is the full list sent after
    /// identification (architecture.md §1.4 rule 1).
    expect_full_node_list: bool,
    /// Timestamp of the last `NotifyNodeInformation` (must increase).
    last_node_timestamp: Option<f64>,
    /// `None` until the master sends a table with at least one partition.
    pt: Option<PartitionTable>,
    /// Open `neoctl` connections.
    ctl: HashSet<ConnId>,
    /// Requests sent to the master, not answered yet.
    pending: Requests<Pending>,
    monitor: Option<MonitorRefresh>,
    /// Alerts: the concerns last reported, cells being replicated.
    watch: Watch,
    /// The monitored values of operations.md §4.4 as last seen (the
    /// report without its TID, and whether cells lag).
    monitored: Option<(ClusterReport, bool)>,
    /// `None` without `--monitor-email`.
    notifier: Option<Notifier>,
    /// Mails for the shell to send.
    mails: Vec<Mail>,
    /// Last ids asked for the status page.
    activity: Activity,
    /// When to ask them next; `None` without the page.
    status_poll_at: Option<UnixTime>,
    /// When the page last asked its data: the master is asked only while
    /// someone looks.
    status_seen_at: Option<UnixTime>,
    /// The storages' import progress.
    imports: Imports,
    out: Outbox,
}

impl Admin {
    /// An admin node that has not started yet (send [`Input::Start`]).
    pub fn new(config: AdminConfig) -> Result<Admin, ConfigError> {
        if config.cluster.is_empty() {
            return Err(ConfigError::EmptyCluster);
        }
        let finder = PrimaryFinder::new(&config.masters).ok_or(ConfigError::NoMaster)?;
        let max_lag = config.monitor.max_lag;
        if !(max_lag.is_finite() && max_lag >= 0.0) {
            return Err(ConfigError::MaxLag(max_lag.to_string()));
        }
        let nid = config.nid;
        let notifier = config
            .monitor
            .email
            .clone()
            .map(|email| Notifier::new(email, config.cluster.clone()));
        Ok(Admin {
            config,
            finder,
            link: Link::Idle,
            nid,
            primary: None,
            cluster_state: None,
            nodes: NodeTable::new(),
            expect_full_node_list: false,
            last_node_timestamp: None,
            pt: None,
            ctl: HashSet::new(),
            pending: Requests::default(),
            monitor: None,
            watch: Watch::default(),
            monitored: None,
            notifier,
            mails: Vec::new(),
            activity: Activity::default(),
            status_poll_at: None,
            status_seen_at: None,
            imports: Imports::default(),
            out: Outbox::default(),
        })
    }

    /// Since when the cell OUT_OF_DATE the longest has been so, as this
    /// admin saw it (UNIX time), if any.
    pub fn out_of_date_since(&self) -> Option<UnixTime> {
        self.watch.out_of_date_since()
    }

    /// Whether the admin is identified to a primary master (and so serves
    /// `neoctl`).
    pub fn is_connected(&self) -> bool {
        matches!(self.link, Link::Ready { .. })
    }

    /// Our node id, once a master gave one.
    pub fn nid(&self) -> Option<NodeId> {
        self.nid
    }

    /// The cluster state as last told by the master.
    pub fn cluster_state(&self) -> Option<ClusterState> {
        self.cluster_state
    }

    /// The node table as the master announced it.
    pub fn nodes(&self) -> &NodeTable {
        &self.nodes
    }

    /// The partition table as the master announced it.
    pub fn partition_table(&self) -> Option<&PartitionTable> {
        self.pt.as_ref()
    }

    // --- the master connection -------------------------------------------

    /// The connection to the master, identified or not.
    fn master_conn(&self) -> Option<ConnId> {
        match self.link {
            Link::Identifying { conn } | Link::Ready { conn } => Some(conn),
            Link::Idle | Link::Connecting { .. } => None,
        }
    }

    /// Schedules a connection to `preferred` or else to the next master in
    /// turn (see [`PrimaryFinder::schedule`]); it is made when due.
    fn connect_next(&mut self, preferred: Option<Address>, now: UnixTime) {
        self.finder.schedule(preferred, now);
        self.link = Link::Connecting { token: None };
        self.connect_if_due(now);
    }

    fn connect_if_due(&mut self, now: UnixTime) {
        if self.link != (Link::Connecting { token: None }) {
            return;
        }
        if let Some(address) = self.finder.due(now) {
            tracing::debug!(%address, "connecting to master");
            let token = self.pending.fresh();
            self.link = Link::Connecting { token: Some(token) };
            self.out.connect(token, address);
        }
    }

    fn on_connected(&mut self, conn: ConnId, token: Token) {
        if let Some(nid) = self.imports.connected(token, conn) {
            self.pending.send(
                &mut self.out,
                conn,
                Pending::Import(nid),
                p::AskMonitorInformation {},
            );
            return;
        }
        if self.link != (Link::Connecting { token: Some(token) }) {
            // Not the attempt we are waiting for.
            self.out.close(conn);
            return;
        }
        let backups = self
            .config
            .monitor_backup
            .iter()
            .map(|name| Value::Bin(name.clone().into_bytes().into()))
            .collect();
        let request = p::RequestIdentification {
            node_type: NodeType::Admin,
            nid: self.nid,
            address: Some(self.config.bind.clone()),
            cluster: self.config.cluster.clone(),
            id_timestamp: None,
            extra: Map(vec![("backup".to_owned(), Value::Array(backups))]),
        };
        self.link = Link::Identifying { conn };
        self.pending
            .send(&mut self.out, conn, Pending::Identification, request);
    }

    fn on_master_packet(&mut self, conn: ConnId, msg_id: u32, packet: Packet, now: UnixTime) {
        let ready = matches!(self.link, Link::Ready { .. });
        match packet {
            Packet::NotPrimaryMaster(redirect) if !ready => self.redirect(conn, redirect, now),
            Packet::Ping(_) => self.answer(conn, msg_id, p::Pong {}),
            Packet::NotifyNodeInformation(notification) if ready => {
                // Every master the primary knows: a failover may need them.
                for node in &notification.nodes {
                    if let (NodeType::Master, Some(address)) = (node.node_type, &node.address) {
                        self.finder.learn(address);
                    }
                }
                self.on_node_information(notification.timestamp, &notification.nodes)
            }
            Packet::SendPartitionTable(table) if ready => {
                if table.rows.is_empty() {
                    self.pt = None;
                } else {
                    match PartitionTable::from_rows(table.ptid, table.num_replicas, &table.rows) {
                        Ok(pt) => self.pt = Some(pt),
                        Err(error) => self.master_protocol_error(conn, msg_id, &error.to_string()),
                    }
                }
            }
            Packet::NotifyPartitionChanges(changes) if ready => {
                let applied = match &mut self.pt {
                    Some(pt) => pt
                        .apply_changes(changes.ptid, changes.num_replicas, &changes.changes)
                        .map_err(|error| error.to_string()),
                    None => Err("partition table change before any table".to_owned()),
                };
                if let Err(error) = applied {
                    // Our copy is out of sync: a new session brings a full one.
                    self.master_protocol_error(conn, msg_id, &error);
                }
            }
            Packet::NotifyClusterInformation(notification) if ready => {
                tracing::info!(state = %notification.state, "cluster state");
                self.cluster_state = Some(notification.state);
            }
            Packet::NotifyUpstreamAdmin(notification) => {
                tracing::warn!(
                    address = %notification.address,
                    "reporting to an upstream admin is not supported; ignoring"
                );
            }
            // The master relays `neoctl flush_log` to every node.
            Packet::FlushLog(_) => neo_log::flush_requested(),
            Packet::Error(error) => {
                tracing::warn!("error from the master: {error}");
            }
            packet if packet.kind() == p::PacketKind::Request => {
                let message = format!("unexpected packet {} from the master", packet.name());
                self.master_protocol_error(conn, msg_id, &message);
            }
            packet => {
                tracing::warn!(
                    packet = packet.name(),
                    "ignoring unexpected notification from the master"
                );
            }
        }
    }

    /// The master sent something we cannot accept: tell it and close; the
    /// `Closed` that follows starts a new session.
    fn master_protocol_error(&mut self, conn: ConnId, msg_id: u32, message: &str) {
        tracing::error!("protocol error with the master: {message}");
        self.answer(
            conn,
            msg_id,
            p::Error::new(ErrorCode::ProtocolError, message),
        );
        self.out.close(conn);
    }

    /// A secondary master told us where the primary is (architecture.md
    /// §2.4 step 3).
    fn redirect(&mut self, conn: ConnId, redirect: p::NotPrimaryMaster, now: UnixTime) {
        let primary = self.finder.redirected(&redirect);
        tracing::info!(?primary, "not the primary master");
        self.fail_pending();
        self.out.close(conn);
        self.connect_next(primary, now);
    }

    fn on_node_information(&mut self, timestamp: f64, nodes: &[NodeInfo]) {
        if let Some(last) = self.last_node_timestamp {
            if timestamp <= last {
                tracing::warn!(
                    timestamp,
                    last,
                    "node notification timestamps do not increase"
                );
            }
        }
        self.last_node_timestamp = Some(timestamp);
        if std::mem::take(&mut self.expect_full_node_list) {
            let listed: HashSet<NodeId> = nodes.iter().filter_map(|node| node.nid).collect();
            let forgotten: Vec<NodeId> = self
                .nodes
                .iter()
                .map(|node| node.nid)
                .filter(|nid| !listed.contains(nid))
                .collect();
            for nid in forgotten {
                self.nodes.remove(nid);
            }
        }
        for node in nodes {
            self.nodes.apply(node);
        }
    }

    fn on_answer(&mut self, conn: ConnId, token: Token, packet: Packet, now: UnixTime) {
        let Some(why) = self.pending.answered(conn, token) else {
            return;
        };
        match why {
            Pending::Identification => self.on_identification(conn, packet),
            Pending::ClusterState => match packet {
                Packet::AnswerClusterState(answer) => self.cluster_state = answer.state,
                other => tracing::warn!(
                    packet = other.name(),
                    "unexpected answer to AskClusterState"
                ),
            },
            Pending::Forward { ctl, msg_id } => {
                if self.ctl.contains(&ctl) {
                    let fatal = matches!(&packet, Packet::Error(error) if error.code == ErrorCode::ProtocolError);
                    self.answer(ctl, msg_id, packet);
                    if fatal {
                        self.out.close(ctl);
                    }
                }
            }
            Pending::Monitor => self.on_monitor_answer(packet, now),
            Pending::Import(nid) => {
                self.imports.answered(nid, packet, now);
                self.out.close(conn);
            }
        }
    }

    /// Asks the storages due their import's progress.
    fn ask_imports(&mut self, now: UnixTime) {
        if !self.is_connected() {
            return;
        }
        self.imports.update(&self.nodes, now);
        let pending = &mut self.pending;
        for (token, address) in self.imports.due(&self.nodes, now, || pending.fresh()) {
            self.out.connect(token, address);
        }
    }

    fn on_identification(&mut self, conn: ConnId, packet: Packet) {
        match packet {
            Packet::AcceptIdentification(accept)
                if accept.node_type == NodeType::Master && accept.your_nid.is_some() =>
            {
                if let Some(nid) = accept.your_nid {
                    neo_log::set_node(&nid.to_string());
                }
                tracing::info!(primary = ?accept.nid, nid = ?accept.your_nid, "identified to the primary master");
                self.link = Link::Ready { conn };
                self.nid = accept.your_nid;
                self.primary = accept.nid;
                self.cluster_state = None;
                self.expect_full_node_list = true;
                self.last_node_timestamp = None;
                self.pt = None;
                self.activity.clear();
                self.pending.send(
                    &mut self.out,
                    conn,
                    Pending::ClusterState,
                    p::AskClusterState {},
                );
            }
            Packet::AcceptIdentification(accept) => {
                tracing::warn!(node_type = %accept.node_type, "not a master, or no id given; closing");
                self.out.close(conn);
            }
            Packet::Error(error) => {
                tracing::warn!("identification refused: {error}");
                self.out.close(conn);
            }
            other => {
                tracing::warn!(packet = other.name(), "unexpected answer to identification");
                self.out.close(conn);
            }
        }
    }

    fn on_closed(&mut self, conn: ConnId, now: UnixTime) {
        if self.imports.closed(conn) {
            self.pending.closed(conn);
            return;
        }
        if self.ctl.remove(&conn) {
            self.pending
                .retain(|_, why| !matches!(why, Pending::Forward { ctl, .. } if *ctl == conn));
            if let Some(monitor) = &mut self.monitor {
                monitor.waiters.retain(|(ctl, _)| *ctl != conn);
            }
            return;
        }
        if self.master_conn() != Some(conn) {
            return;
        }
        let was_ready = matches!(self.link, Link::Ready { .. });
        self.fail_pending();
        if was_ready {
            if self.cluster_state == Some(ClusterState::Stopping) {
                tracing::info!("the cluster is stopped");
                self.link = Link::Idle;
                self.out.exit(Ok(()));
                return;
            }
            tracing::error!("primary master is down");
        }
        self.primary = None;
        self.cluster_state = None;
        self.connect_next(None, now);
    }

    /// Forgets the requests sent on the master connection, which is gone or
    /// given up (there is only ever one with requests pending); `neoctl`
    /// requests relayed on it, and summaries waiting for it, are refused.
    fn fail_pending(&mut self) {
        let mut refused: Vec<(ConnId, u32)> = self
            .pending
            .clear()
            .into_iter()
            .filter_map(|why| match why {
                Pending::Forward { ctl, msg_id } => Some((ctl, msg_id)),
                _ => None,
            })
            .collect();
        if let Some(monitor) = self.monitor.take() {
            refused.extend(monitor.waiters);
        }
        for (ctl, msg_id) in refused {
            if self.ctl.contains(&ctl) {
                self.not_ready(ctl, msg_id);
            }
        }
    }

    fn on_timeout(&mut self, now: UnixTime) {
        self.connect_if_due(now);
        if self.status_poll_at.is_some_and(|due| due <= now) {
            self.status_poll_at = Some(now + STATUS_POLL_INTERVAL);
            let watched = self
                .status_seen_at
                .is_some_and(|seen| now - seen <= ACTIVITY_WINDOW);
            if watched && self.cluster_state == Some(ClusterState::Running) {
                self.refresh(Refresh::Page, now);
            }
        }
        let timed_out = self
            .monitor
            .as_ref()
            .is_some_and(|monitor| now >= monitor.asked_at + MONITOR_TIMEOUT);
        if let (true, Some(conn)) = (timed_out, self.master_conn()) {
            tracing::warn!("the master did not answer a monitoring question in time; closing");
            if let Some(monitor) = &mut self.monitor {
                // Once: the `Closed` that follows refuses its waiters.
                monitor.asked_at = f64::INFINITY;
            }
            self.out.close(conn);
        }
    }

    // --- neoctl --------------------------------------------------------------

    fn answer(&mut self, conn: ConnId, msg_id: u32, packet: impl Into<Packet>) {
        self.out.answer(conn, msg_id, packet);
    }

    fn not_ready(&mut self, conn: ConnId, msg_id: u32) {
        self.answer(
            conn,
            msg_id,
            p::Error::new(ErrorCode::NotReady, NOT_CONNECTED),
        );
    }

    /// Answers PROTOCOL_ERROR, which ends the connection (protocol.md §8).
    fn ctl_protocol_error(&mut self, conn: ConnId, msg_id: u32, message: &str) {
        self.answer(
            conn,
            msg_id,
            p::Error::new(ErrorCode::ProtocolError, message),
        );
        self.out.close(conn);
    }

    fn on_ctl_packet(&mut self, conn: ConnId, msg_id: u32, packet: Packet, now: UnixTime) {
        let local = matches!(
            packet,
            Packet::AskClusterState(_)
                | Packet::AskNodeList(_)
                | Packet::AskPartitionList(_)
                | Packet::AskPrimary(_)
                | Packet::AskMonitorInformation(_)
        );
        let forwarded = matches!(
            packet,
            Packet::SetClusterState(_)
                | Packet::AskLastIDs(_)
                | Packet::AskRecovery(_)
                | Packet::AskLastTransaction(_)
                | Packet::AddPendingNodes(_)
                | Packet::SetNodeState(_)
                | Packet::SetNumReplicas(_)
                | Packet::TweakPartitionTable(_)
                | Packet::CheckReplicas(_)
                | Packet::Repair(_)
                | Packet::Truncate(_)
        );
        match packet {
            Packet::Ping(_) => self.answer(conn, msg_id, p::Pong {}),
            Packet::FlushLog(flush) => {
                neo_log::flush_requested();
                match self.link {
                    Link::Ready { conn: master } => self.out.notify(master, flush),
                    // A notification gets no answer, not even a refusal.
                    _ => tracing::info!("flush_log while not connected to the master: not relayed"),
                }
            }
            Packet::RequestIdentification(request) => {
                // Admins of monitored backup clusters would identify here
                // (operations.md §4.5); that is not supported yet.
                let message = format!(
                    "monitoring of backup cluster {:?} is not supported by this admin",
                    request.cluster
                );
                self.ctl_protocol_error(conn, msg_id, &message);
            }
            packet if !local && !forwarded => {
                let message = format!("unexpected packet: {} from neoctl", packet.name());
                self.ctl_protocol_error(conn, msg_id, &message);
            }
            _ if !self.is_connected() => self.not_ready(conn, msg_id),
            Packet::AskClusterState(_) => {
                let state = self.cluster_state;
                self.answer(conn, msg_id, p::AnswerClusterState { state });
            }
            Packet::AskPrimary(_) => {
                let primary = self.primary;
                self.answer(conn, msg_id, p::AnswerPrimary { primary });
            }
            Packet::AskNodeList(request) => {
                let nodes = self
                    .nodes
                    .iter()
                    .filter(|node| match request.node_type {
                        Some(node_type) => node_type == node.node_type,
                        None => true,
                    })
                    .map(|node| node.info())
                    .collect();
                self.answer(conn, msg_id, p::AnswerNodeList { nodes });
            }
            Packet::AskPartitionList(request) => self.partition_list(conn, msg_id, &request),
            Packet::AskMonitorInformation(_) => self.refresh(Refresh::Summary(conn, msg_id), now),
            packet => {
                if self.pending.len() >= MAX_FORWARDED {
                    self.answer(
                        conn,
                        msg_id,
                        p::Error::new(ErrorCode::NotReady, "too many requests in progress"),
                    );
                    return;
                }
                if let Link::Ready { conn: master } = self.link {
                    let why = Pending::Forward { ctl: conn, msg_id };
                    self.pending.send(&mut self.out, master, why, packet);
                }
            }
        }
    }

    /// Rows `min_offset .. max_offset` (0 = to the end) of the table. The
    /// `nid` filter is ignored, as NEO/py does (operations.md §10 Q5).
    /// Out-of-range bounds are a protocol error; unlike NEO/py, which sends
    /// it with a fresh msg_id (protocol.md §2.3), we answer the request
    /// itself so that `neoctl` can show the reason.
    fn partition_list(&mut self, conn: ConnId, msg_id: u32, request: &p::AskPartitionList) {
        let (ptid, num_replicas, rows) = match &self.pt {
            Some(pt) => (pt.ptid(), pt.num_replicas(), pt.to_rows()),
            None => (None, 0, Vec::new()),
        };
        let end = match request.max_offset {
            0 => rows.len(),
            max => max as usize,
        };
        if end > rows.len() {
            self.ctl_protocol_error(conn, msg_id, "invalid partition table offset");
            return;
        }
        let start = (request.min_offset as usize).min(end);
        let rows = rows.into_iter().take(end).skip(start).collect::<Vec<_>>();
        self.answer(
            conn,
            msg_id,
            p::AnswerPartitionList {
                ptid,
                num_replicas,
                rows,
            },
        );
    }

    // --- monitoring ----------------------------------------------------------

    /// Builds a report (operations.md §4.3) for `why`. When the cluster
    /// is operational the last TID (in BACKINGUP: the backup TID) is asked
    /// of the master first, as NEO/py does; a report already waiting for
    /// it serves this one too.
    fn refresh(&mut self, why: Refresh, now: UnixTime) {
        let Link::Ready { conn: master } = self.link else {
            if let Refresh::Summary(conn, msg_id) = why {
                self.not_ready(conn, msg_id);
            }
            return;
        };
        if let Some(monitor) = &mut self.monitor {
            monitor.add(why);
            return;
        }
        let mut monitor = MonitorRefresh {
            asked_at: now,
            ..MonitorRefresh::default()
        };
        monitor.add(why);
        let question: Packet = match (self.cluster_state, why) {
            (Some(ClusterState::Running), Refresh::Page) => p::AskLastIDs {}.into(),
            (Some(ClusterState::Running), _) => p::AskLastTransaction {}.into(),
            (Some(ClusterState::BackingUp), _) => p::AskRecovery {}.into(),
            _ => {
                self.refreshed(monitor, None, now);
                return;
            }
        };
        self.pending
            .send(&mut self.out, master, Pending::Monitor, question);
        self.monitor = Some(monitor);
    }

    fn on_monitor_answer(&mut self, packet: Packet, now: UnixTime) {
        let Some(monitor) = self.monitor.take() else {
            return;
        };
        let (tid, oid): (Option<Tid>, Option<Oid>) = match packet {
            Packet::AnswerLastIDs(answer) => (answer.last_tid, answer.last_oid),
            Packet::AnswerLastTransaction(answer) => (Some(answer.tid), None),
            Packet::AnswerRecovery(answer) => (answer.backup_tid, None),
            other => {
                tracing::warn!(packet = other.name(), "no last TID for the summary");
                (None, None)
            }
        };
        if self.status_poll_at.is_some() && tid.is_some() {
            self.activity.record(now, tid, oid);
        }
        self.refreshed(monitor, tid, now);
    }

    /// The last TID is known (or needs not be): answers the summaries
    /// waiting for it and makes the e-mail report.
    fn refreshed(&mut self, monitor: MonitorRefresh, last_tid: Option<Tid>, now: UnixTime) {
        if !monitor.waiters.is_empty() {
            let report = self.report(last_tid);
            self.answer_summary(&monitor.waiters, &report);
        }
        if monitor.notify {
            self.evaluate(last_tid, now);
        }
    }

    fn report(&self, last_tid: Option<Tid>) -> ClusterReport {
        let mut histogram = BTreeMap::new();
        let mut down = 0;
        if let Some(pt) = &self.pt {
            for partition in 0..pt.partitions() {
                for cell in pt.cells(partition) {
                    *histogram.entry(cell.state).or_insert(0) += 1;
                }
            }
            down = pt
                .nodes()
                .into_iter()
                .filter(|nid| !self.nodes.is_running(*nid))
                .count();
        }
        ClusterReport {
            state: self.cluster_state,
            histogram,
            down,
            last_tid,
        }
    }

    /// Answers `print summary`: an unsent e-mail is appended and makes the
    /// cluster a problem (operations.md §4.3).
    fn answer_summary(&mut self, waiters: &[(ConnId, u32)], report: &ClusterReport) {
        let mut warning = Vec::new();
        let mut problem = Vec::new();
        let failure = self.mail_failure().map(str::to_owned);
        let severity = match failure {
            Some(_) => Severity::Problem,
            None => report.severity(),
        };
        match severity {
            Severity::Problem => problem.push(None),
            Severity::Warning => warning.push(None),
            Severity::Ok => {}
        }
        let text = report.line() + failure.as_deref().unwrap_or("") + &self.imports.lines();
        for (conn, msg_id) in waiters {
            if self.ctl.contains(conn) {
                self.answer(
                    *conn,
                    *msg_id,
                    p::AnswerMonitorInformation {
                        warning: warning.clone(),
                        problem: problem.clone(),
                        summary: text.clone(),
                    },
                );
            }
        }
    }

    // --- alerts and e-mails ----------------------------------------------------

    /// After every input: reports the alerts that changed and, when a
    /// monitored value changed or the re-evaluation timer is due, makes an
    /// e-mail report.
    fn watch(&mut self, now: UnixTime) {
        let changes = self.watch.update(
            self.is_connected(),
            self.cluster_state,
            &self.nodes,
            self.pt.as_ref(),
            self.config.monitor.max_lag,
            now,
        );
        for alert in &changes {
            log_alert(&self.config.cluster, alert);
        }
        if self.notifier.is_none() {
            return;
        }
        let monitored = (self.report(None), self.watch.lagging());
        let changed = self.monitored.as_ref() != Some(&monitored);
        if changed {
            self.monitored = Some(monitored);
        }
        let Some(notifier) = &mut self.notifier else {
            return;
        };
        if changed {
            notifier.changed();
        }
        if notifier.take_due(now) || changed {
            self.notify(now);
        }
    }

    /// Makes an e-mail report, asking the last TID first when the cluster
    /// is operational.
    fn notify(&mut self, now: UnixTime) {
        match (&self.link, self.cluster_state) {
            (Link::Ready { .. }, Some(_)) => self.refresh(Refresh::Notify, now),
            // Identified but no state yet: its arrival is a change.
            (Link::Ready { .. } | Link::Identifying { .. }, None) => {}
            // Nothing to report before the first master.
            _ if !self.watch.had_master() => {}
            _ => self.evaluate(None, now),
        }
    }

    fn evaluate(&mut self, last_tid: Option<Tid>, now: UnixTime) {
        let (severity, body) = if self.is_connected() {
            let report = self.report(last_tid);
            (report.severity(), report.line())
        } else {
            (Severity::Problem, NOT_CONNECTED.to_owned())
        };
        if let Some(notifier) = &mut self.notifier {
            if let Some(mail) = notifier.evaluate(severity, &body, now) {
                tracing::debug!(subject = mail.subject, "sending a notification");
                self.mails.push(mail);
            }
        }
    }

    /// The mails to send now (at most one in flight at a time).
    pub fn poll_mail(&mut self) -> Vec<Mail> {
        std::mem::take(&mut self.mails)
    }

    /// The outcome of sending mail `id`.
    pub fn mail_sent(&mut self, id: u64, result: Result<(), String>, now: UnixTime) {
        if let Err(error) = &result {
            tracing::error!(
                target: ALERT_TARGET,
                severity = Level::Error.name(),
                cluster = self.config.cluster,
                concern = "notification",
                "a notification could not be sent: {error}"
            );
        }
        let again = self
            .notifier
            .as_mut()
            .is_some_and(|notifier| notifier.sent(id, result));
        if again {
            self.notify(now);
        }
    }

    /// The note of the last e-mail that could not be sent.
    pub fn mail_failure(&self) -> Option<&str> {
        self.notifier.as_ref().and_then(Notifier::failure)
    }

    /// The current alerts, most serious first.
    pub fn alerts(&self) -> Vec<Alert> {
        self.watch.current()
    }

    /// `GET /status.json` of the status page.
    pub fn status_json(&mut self, now: UnixTime) -> String {
        self.status_seen_at = Some(now);
        let alerts = self.alerts();
        let summary = if self.is_connected() {
            self.report(self.activity.last_tid()).line()
        } else {
            NOT_CONNECTED.to_owned()
        };
        View {
            cluster: &self.config.cluster,
            connected: self.is_connected(),
            state: self.cluster_state,
            nodes: &self.nodes,
            pt: self.pt.as_ref(),
            activity: &self.activity,
            alerts: &alerts,
            summary,
            mail_failure: self.mail_failure(),
            now,
        }
        .to_json()
    }
}

/// One structured event per alert change: at ERROR or WARN for a problem,
/// INFO when back to normal.
fn log_alert(cluster: &str, alert: &Alert) {
    let severity = alert.level.name();
    let concern = alert.concern.kind();
    let message = &alert.message;
    match alert.level {
        Level::Error => {
            tracing::error!(target: ALERT_TARGET, severity, cluster, concern, "{message}")
        }
        Level::Warning => {
            tracing::warn!(target: ALERT_TARGET, severity, cluster, concern, "{message}")
        }
        Level::Ok => {
            tracing::info!(target: ALERT_TARGET, severity, cluster, concern, "{message}")
        }
    }
}

impl Node for Admin {
    fn handle(&mut self, input: Input, now: UnixTime) {
        match input {
            Input::Start => {
                if self.link == Link::Idle {
                    if self.config.monitor.status_page {
                        self.status_poll_at = Some(now);
                    }
                    self.connect_next(None, now);
                }
            }
            Input::Connected { conn, token } => self.on_connected(conn, token),
            Input::ConnectFailed { token } => {
                if self.link == (Link::Connecting { token: Some(token) }) {
                    self.connect_next(None, now);
                } else {
                    self.imports.connect_failed(token, now);
                }
            }
            Input::Accepted { conn } => {
                self.ctl.insert(conn);
            }
            Input::Packet {
                conn,
                msg_id,
                packet,
            } => {
                if self.ctl.contains(&conn) {
                    self.on_ctl_packet(conn, msg_id, packet, now);
                } else if self.master_conn() == Some(conn) {
                    self.on_master_packet(conn, msg_id, packet, now);
                } else if self.imports.owns(conn) {
                    // A storage we asked about its import, probing us.
                    if let Packet::Ping(_) = packet {
                        self.answer(conn, msg_id, p::Pong {});
                    }
                } else {
                    // A master connection we gave up (redirected): whatever
                    // it still says is moot.
                    tracing::debug!(%conn, packet = packet.name(), "ignoring packet");
                }
            }
            Input::Answer {
                conn,
                token,
                packet,
            } => self.on_answer(conn, token, packet, now),
            // Nothing the admin asks is answered in parts.
            Input::AnswerPart { .. } => {}
            Input::Closed { conn } => self.on_closed(conn, now),
            Input::Timeout => self.on_timeout(now),
        }
        self.watch(now);
        self.ask_imports(now);
    }

    fn poll_output(&mut self) -> Vec<Output> {
        self.out.take()
    }

    fn poll_timeout(&self) -> Option<UnixTime> {
        let reconnect = match self.link {
            Link::Connecting { token: None } => self.finder.deadline(),
            _ => None,
        };
        let monitor = self
            .monitor
            .as_ref()
            .map(|monitor| monitor.asked_at + MONITOR_TIMEOUT)
            .filter(|due| due.is_finite());
        let notify = self.notifier.as_ref().and_then(Notifier::deadline);
        let lag = self.watch.lag_deadline(self.config.monitor.max_lag);
        let imports = self.imports.deadline().filter(|_| self.is_connected());
        [
            reconnect,
            monitor,
            notify,
            lag,
            self.status_poll_at,
            imports,
        ]
        .into_iter()
        .flatten()
        .min_by(f64::total_cmp)
    }
}
