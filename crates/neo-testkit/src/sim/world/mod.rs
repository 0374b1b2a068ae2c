//! The world of one run: the nodes, the network, the virtual clock and
//! the agenda of what happens next, all in one thread. Events are taken
//! in time order (ties in the order they were scheduled), every random
//! choice comes from the run's seed, and maps are ordered: the same seed
//! gives the same run, line for line.
//!
//! Nodes run as `neo-net`'s shell runs them: the inputs that arrived by
//! the time a node runs are handed over in one batch, its timer if due,
//! then its outputs are taken (the storage commits there: group commit).

mod end;
mod hits;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use neo_master::{Master, MasterConfig};
use neo_net::{ConnId, Input, Node, Output};
use neo_proto::{Address, UnixTime};
use neo_storage::backend::{open, Adapter, OpenOptions};
use neo_storage::db::Database;
use neo_storage::node::{Limits, Storage, StorageConfig};

use super::admin::Admin;
use super::checks::{Announced, Durability};
use super::client::{Client, ClientConfig};
use super::faults::{plan, Fault, Targets};
use super::net::{Arrival, LinkId, Micros, Net, Send, Side};
use super::rng::Rng;
use super::trace::Trace;
use super::{Outcome, SimConfig};
use crate::record::Entry;

/// The virtual clock starts here (a plausible date, for plausible TIDs).
const EPOCH: f64 = 1_750_000_000.0;

const SECOND: Micros = 1_000_000;

/// Inputs handed to a node before its outputs are taken (as the shell).
const BATCH: usize = 64;

/// Far more events than any run needs: past it, nodes keep waking each
/// other without end.
const MAX_EVENTS: u64 = 20_000_000;

/// A held network loses a connection after this much silence while a
/// request waits for its answer: `neo-net` probes after 0.8 s, and the
/// kernel gives the connection up when the probe is unacknowledged 0.8 s
/// later.
const SILENCE: Micros = 1_600_000;

/// How long a crash waits for a batch of inputs to die in.
const CRASH_WAIT: Micros = 20_000;

/// How long the cluster gets to stop once asked.
const STOP_SECONDS: Micros = 30 * SECOND;

const CLUSTER: &str = "sim";

fn unix(micros: Micros) -> UnixTime {
    EPOCH + micros as f64 / 1e6
}

/// The first instant at or after `time`.
fn micros(time: UnixTime) -> Micros {
    let mut at = ((time - EPOCH) * 1e6).ceil().max(0.0) as Micros;
    while unix(at) < time {
        at += 1;
    }
    at
}

/// What a node slot runs.
enum Role {
    Master(Box<Master>),
    Storage(Box<Storage>),
    Client(Box<Client>),
    Admin(Admin),
}

impl Role {
    fn node(&mut self) -> &mut dyn Node {
        match self {
            Role::Master(master) => master.as_mut(),
            Role::Storage(storage) => storage.as_mut(),
            Role::Client(client) => client.as_mut(),
            Role::Admin(admin) => admin,
        }
    }
}

/// One node of the cluster, up or down.
struct Slot {
    name: String,
    address: Option<Address>,
    role: Option<Role>,
    /// Counts the starts: events for an earlier life are ignored.
    life: u32,
    inbox: VecDeque<Input>,
    run_at: Option<Micros>,
    timer_at: Option<Micros>,
    /// Its traffic is held until then.
    held_until: Micros,
    /// No connection to or from it can be made until then.
    isolated_until: Micros,
    /// What a storage promised to make durable (this life).
    durability: Durability,
    /// Crash in the next batch, to restart after this downtime.
    crash: Option<Micros>,
}

/// Something that happens at a given time.
enum Event {
    Arrive(LinkId, Side, Micros),
    Run(usize, u32, Micros),
    Timer(usize, u32, Micros),
    Input(usize, u32, Input),
    Fault(Fault),
    /// A crash that found no batch to die in.
    Crash(usize, u32),
    /// A held node has been silent long enough for its peers' watchdogs.
    Silence(usize),
    Restart(usize),
    /// Faults are over and healed: check the cluster, then stop it.
    Heal,
    /// The cluster must have stopped by now.
    Deadline,
}

/// One run.
pub struct World {
    config: SimConfig,
    now: Micros,
    agenda: BTreeMap<(Micros, u64), Event>,
    seq: u64,
    events: u64,
    rng: Rng,
    net: Net,
    master: Address,
    slots: Vec<Slot>,
    databases: Vec<PathBuf>,
    pub trace: Trace,
    announced: Announced,
    /// Records of client lives that ended.
    records: Vec<Entry>,
    faults: usize,
    /// When the last fault's effect is over.
    settled_at: Micros,
    /// When the cluster is checked, then stopped.
    heal_at: Micros,
    stopping: bool,
    done: bool,
    _dir: tempfile::TempDir,
}

impl World {
    /// A world for `config` and `seed`, nothing started yet.
    pub fn new(config: SimConfig, seed: u64, echo: bool) -> Result<World, String> {
        // Commits are fsyncs: in memory, they cost nothing.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new().prefix("neo-sim").tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("neo-sim").tempdir()
        }
        .map_err(|e| format!("no temporary directory: {e}"))?;
        let master = Address::new("10.0.0.1", 10000);
        let mut slots = vec![slot("M", Some(master.clone()))];
        let mut databases = Vec::new();
        for index in 0..config.storages {
            slots.push(slot(&format!("S{index}"), Some(storage_address(index))));
            databases.push(dir.path().join(format!("storage{index}.sqlite")));
        }
        for index in 0..config.clients {
            slots.push(slot(&format!("C{index}"), None));
        }
        slots.push(slot("A", None));
        Ok(World {
            config,
            now: 0,
            agenda: BTreeMap::new(),
            seq: 0,
            events: 0,
            rng: Rng::new(seed),
            net: Net::default(),
            master,
            slots,
            databases,
            trace: Trace::new(echo),
            announced: Announced::default(),
            records: Vec::new(),
            faults: 0,
            settled_at: 0,
            heal_at: 0,
            stopping: false,
            done: false,
            _dir: dir,
        })
    }

    fn at(&mut self, at: Micros, event: Event) {
        self.seq += 1;
        self.agenda.insert((at, self.seq), event);
    }

    /// The time a packet takes: mostly a fraction of a millisecond,
    /// sometimes tens of milliseconds (so connections overtake each other).
    fn latency(&mut self) -> Micros {
        let base = self.rng.range(50, 1500);
        if self.rng.chance(3) {
            base + self.rng.range(5_000, 50_000)
        } else {
            base
        }
    }

    fn arrivals(&mut self, arrivals: Vec<Arrival>) {
        for (link, side, at) in arrivals {
            self.at(at, Event::Arrive(link, side, at));
        }
    }

    /// Runs the world to its end: the cluster stopped and checked.
    pub fn run(&mut self) -> Outcome {
        let targets = Targets {
            storages: self.config.storages,
            clients: self.config.clients,
        };
        let load = (self.config.load_seconds * 1e6) as Micros;
        let faults = plan(&mut self.rng, targets, self.config.max_faults, SECOND, load);
        let mut settled = load;
        for (at, fault) in faults {
            settled = settled.max(fault.over_at(at));
            self.at(at, Event::Fault(fault));
        }
        self.heal_at = settled + (self.config.heal_seconds * 1e6) as Micros;
        self.at(self.heal_at, Event::Heal);
        self.at(self.heal_at + STOP_SECONDS, Event::Deadline);
        for node in 0..self.slots.len() - 1 {
            self.start(node);
        }
        while let Some(((at, _), event)) = self.agenda.pop_first() {
            self.now = at;
            self.events += 1;
            assert!(
                self.events < MAX_EVENTS,
                "more than {MAX_EVENTS} events: a livelock?"
            );
            self.handle(event);
            if self.done {
                return self.check();
            }
        }
        panic!("nothing left to happen, yet the cluster did not stop")
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Arrive(link, side, at) => {
                if self.net.fire(link, side, at) {
                    self.arrive(link, side);
                }
            }
            Event::Run(node, life, at) => {
                let slot = &mut self.slots[node];
                if slot.life == life && slot.run_at == Some(at) {
                    slot.run_at = None;
                    self.run_node(node);
                }
            }
            Event::Timer(node, life, at) => {
                let slot = &mut self.slots[node];
                if slot.life == life && slot.timer_at == Some(at) {
                    slot.timer_at = None;
                    self.wake(node, 0);
                }
            }
            Event::Input(node, life, input) => {
                if self.slots[node].life == life && self.slots[node].role.is_some() {
                    self.trace.line(
                        self.now,
                        format_args!("{} <- {}", self.slots[node].name, describe(&input)),
                    );
                    self.slots[node].inbox.push_back(input);
                    self.wake(node, 0);
                }
            }
            Event::Fault(fault) => self.fault(fault),
            Event::Crash(node, life) => {
                if self.slots[node].life == life {
                    self.crash(node);
                }
            }
            Event::Silence(node) => self.silence(node),
            Event::Restart(node) => {
                self.trace
                    .line(self.now, format_args!("restart {}", self.slots[node].name));
                self.start(node);
            }
            Event::Heal => self.heal(),
            Event::Deadline => panic!(
                "the cluster did not stop within {} s",
                STOP_SECONDS / SECOND
            ),
        }
    }

    /// Starts (or restarts) `node`.
    fn start(&mut self, node: usize) {
        let role = self.make(node);
        let slot = &mut self.slots[node];
        slot.role = Some(role);
        slot.life += 1;
        slot.inbox = VecDeque::from([Input::Start]);
        slot.run_at = None;
        slot.timer_at = None;
        slot.durability = Durability::default();
        self.wake(node, 0);
    }

    fn make(&mut self, node: usize) -> Role {
        let master = self.master.clone();
        let storages = self.config.storages;
        if node == 0 {
            let config = MasterConfig {
                cluster: CLUSTER.to_owned(),
                address: master,
                partitions: self.config.partitions,
                replicas: self.config.replicas,
                autostart: Some(storages as u32),
                masters: Vec::new(),
                nid: None,
            };
            let master = Master::new(config).unwrap_or_else(|e| panic!("no master: {e}"));
            return Role::Master(Box::new(master));
        }
        if node <= storages {
            let path = &self.databases[node - 1];
            let name = path.display().to_string();
            let backend = open(Adapter::Sqlite, &name, &OpenOptions::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let db = Database::new(backend).unwrap_or_else(|e| panic!("{name}: {e}"));
            let config = StorageConfig {
                cluster: CLUSTER.to_owned(),
                address: storage_address(node - 1),
                masters: vec![master],
                limits: Limits::default(),
                devpath: Vec::new(),
            };
            let storage = Storage::new(config, db).unwrap_or_else(|e| panic!("{name}: {e}"));
            return Role::Storage(Box::new(storage));
        }
        if node < self.slots.len() - 1 {
            let config = ClientConfig {
                name: self.slots[node].name.clone(),
                cluster: CLUSTER.to_owned(),
                master,
                counters: self.config.counters,
                stop_at: unix(self.heal_at),
            };
            let rng = self.rng.fork(node as u64);
            return Role::Client(Box::new(Client::new(config, rng)));
        }
        Role::Admin(Admin::new(master, CLUSTER.to_owned()))
    }

    /// Makes `node` run `delay` from now, unless it runs sooner.
    fn wake(&mut self, node: usize, delay: Micros) {
        let at = self.now + delay;
        let slot = &mut self.slots[node];
        if slot.role.is_none() || slot.run_at.is_some_and(|run_at| run_at <= at) {
            return;
        }
        slot.run_at = Some(at);
        let life = slot.life;
        self.at(at, Event::Run(node, life, at));
    }

    /// Hands what is due toward `side` of `link` to its node.
    fn arrive(&mut self, link: LinkId, side: Side) {
        while let Some((next, travels)) = self.net.next_arrival(link, side) {
            let Some((node, peer)) = self.net.nodes(link, side) else {
                return;
            };
            let due = if travels {
                next.max(self.slots[node].held_until)
                    .max(self.slots[peer].held_until)
            } else {
                next
            };
            if due > self.now {
                if let Some(arrival) = self.net.rearm(link, side, due) {
                    self.arrivals(vec![arrival]);
                }
                return;
            }
            let delivered = self
                .net
                .deliver(link, side)
                .unwrap_or_else(|error| panic!("{error}"));
            let Some((node, inputs, closed)) = delivered else {
                return;
            };
            if closed {
                let at = self.now + self.latency();
                let arrivals = self.net.peer_sees_end(link, side, at);
                self.arrivals(arrivals);
            }
            for input in inputs {
                let (to, from) = (&self.slots[node].name, &self.slots[peer].name);
                let line = format!("{to} <- {from} {}", describe(&input));
                self.trace.line(self.now, format_args!("{line}"));
                self.slots[node].inbox.push_back(input);
            }
            // A node takes a moment to get to its inputs; what arrives
            // meanwhile joins the batch.
            let delay = self.rng.range(0, 300);
            self.wake(node, delay);
        }
    }

    /// Runs `node` once: a batch of inputs, its timer if due, then its
    /// outputs are carried out.
    fn run_node(&mut self, node: usize) {
        if self.slots[node].crash.is_some() && !self.slots[node].inbox.is_empty() {
            return self.crash(node);
        }
        let now = unix(self.now);
        let batch: Vec<Input> = {
            let inbox = &mut self.slots[node].inbox;
            let count = inbox.len().min(BATCH);
            inbox.drain(..count).collect()
        };
        let slot = &mut self.slots[node];
        slot.durability.inputs(&batch);
        let Some(role) = slot.role.as_mut() else {
            return;
        };
        let machine = role.node();
        for input in batch {
            machine.handle(input, now);
        }
        if machine.poll_timeout().is_some_and(|due| due <= now) {
            machine.handle(Input::Timeout, now);
        }
        let outputs = machine.poll_output();
        let timeout = machine.poll_timeout();
        let slot = &mut self.slots[node];
        match slot.role.as_ref() {
            Some(Role::Storage(storage)) => slot.durability.outputs(&slot.name, storage, &outputs),
            Some(Role::Master(_)) => self.announced.master_outputs(&outputs),
            _ => {}
        }
        self.apply(node, outputs);
        if self.slots[node].role.is_none() {
            return;
        }
        if !self.slots[node].inbox.is_empty() {
            self.wake(node, 1);
        }
        if let Some(due) = timeout.filter(|due| due.is_finite()) {
            let at = micros(due).max(self.now + 1);
            let slot = &mut self.slots[node];
            if slot.timer_at != Some(at) {
                slot.timer_at = Some(at);
                let life = slot.life;
                self.at(at, Event::Timer(node, life, at));
            }
        }
    }

    /// Carries out a node's outputs.
    fn apply(&mut self, node: usize, outputs: Vec<Output>) {
        let mut exit = None;
        for output in outputs {
            let (conn, how, packet) = match output {
                Output::Answer {
                    conn,
                    msg_id,
                    packet,
                } => (conn, Send::Answer(msg_id), packet),
                Output::Notify { conn, packet } => (conn, Send::Notify, packet),
                Output::Request {
                    conn,
                    token,
                    packet,
                } => (conn, Send::Request(token), packet),
                Output::Connect { token, address } => {
                    self.connect(node, token, &address);
                    continue;
                }
                Output::Close { conn } => {
                    let at = self.now + self.latency();
                    let closed = self.net.close(node, conn, at);
                    self.closed(node, conn, closed);
                    continue;
                }
                Output::CloseClient { conn } => {
                    let at = self.now + self.latency();
                    let cut = self.rng.chance(5).then(|| self.rng.range(1, 999));
                    let closed = self.net.close_client(node, conn, at, cut);
                    self.closed(node, conn, closed);
                    continue;
                }
                Output::Exit(result) => {
                    exit = Some(result);
                    continue;
                }
            };
            let at = self.now + self.latency();
            let cut = self.rng.chance(5).then(|| self.rng.range(1, 999));
            let arrivals = self.net.send(node, conn, how, &packet, at, cut);
            self.arrivals(arrivals);
        }
        if let Some(result) = exit {
            self.exit(node, result);
        }
    }

    /// `node` closed `conn` (`open`: it was open, so it is told `Closed`).
    fn closed(&mut self, node: usize, conn: ConnId, (open, arrivals): (bool, Vec<Arrival>)) {
        self.arrivals(arrivals);
        if open {
            self.slots[node].inbox.push_back(Input::Closed { conn });
            self.wake(node, 0);
        }
    }

    /// `node` connects to `address`, a node's listener.
    fn connect(&mut self, node: usize, token: neo_net::Token, address: &Address) {
        let target = self
            .slots
            .iter()
            .position(|slot| slot.address.as_ref() == Some(address));
        let isolated = |slot: &Slot| slot.isolated_until > self.now;
        let reachable = target.filter(|target| {
            self.slots[*target].role.is_some()
                && !isolated(&self.slots[*target])
                && !isolated(&self.slots[node])
        });
        let from = self.slots[node].name.clone();
        match reachable {
            Some(target) => {
                let accepted = self.now + self.latency();
                let connected = accepted + self.latency();
                let to = self.slots[target].name.clone();
                self.trace
                    .line(self.now, format_args!("{from} connects to {to}"));
                let arrivals = self.net.connect(node, target, token, accepted, connected);
                self.arrivals(arrivals);
            }
            None => {
                // Refused at once; unanswered when the network is cut.
                let isolated = isolated(&self.slots[node])
                    || target.is_some_and(|target| isolated(&self.slots[target]));
                let delay = if isolated {
                    self.rng.range(SECOND / 10, SECOND)
                } else {
                    self.latency()
                };
                self.trace
                    .line(self.now, format_args!("{from} cannot connect to {address}"));
                let life = self.slots[node].life;
                let input = Input::ConnectFailed { token };
                self.at(self.now + delay, Event::Input(node, life, input));
            }
        }
    }

    /// Takes `node` down: what it sent still arrives, then its peers see
    /// its connections close. Its pending work is lost.
    fn take_down(&mut self, node: usize) -> Option<Role> {
        let slot = &mut self.slots[node];
        let role = slot.role.take();
        slot.inbox.clear();
        slot.run_at = None;
        slot.timer_at = None;
        let at = self.now + self.latency();
        let arrivals = self.net.node_down(node, at);
        self.arrivals(arrivals);
        role
    }

    fn exit(&mut self, node: usize, result: Result<(), String>) {
        let name = self.slots[node].name.clone();
        if let Err(reason) = result {
            panic!("{name} stopped: {reason}");
        }
        assert!(
            self.stopping,
            "{name} exited while nobody stopped the cluster"
        );
        self.trace.line(self.now, format_args!("{name} exits"));
        if let Some(Role::Client(client)) = self.take_down(node) {
            self.records.extend(client.record());
        }
        let cluster_down = (0..=self.config.storages).all(|node| self.slots[node].role.is_none());
        if cluster_down {
            self.done = true;
        }
    }
}

/// Where storage `index` listens.
fn storage_address(index: usize) -> Address {
    Address::new(format!("10.0.1.{}", index + 1), 20000)
}

fn slot(name: &str, address: Option<Address>) -> Slot {
    Slot {
        name: name.to_owned(),
        address,
        role: None,
        life: 0,
        inbox: VecDeque::new(),
        run_at: None,
        timer_at: None,
        held_until: 0,
        isolated_until: 0,
        durability: Durability::default(),
        crash: None,
    }
}

/// An input, in a line of the trace.
fn describe(input: &Input) -> String {
    match input {
        Input::Start => "start".to_owned(),
        Input::Accepted { conn } => format!("{conn} accepted"),
        Input::Connected { conn, .. } => format!("{conn} connected"),
        Input::ConnectFailed { .. } => "connection failed".to_owned(),
        Input::Packet {
            conn,
            msg_id,
            packet,
        } => format!(
            "{conn} {} #{msg_id}{}",
            packet.name(),
            super::details(packet)
        ),
        Input::Answer { conn, packet, .. } | Input::AnswerPart { conn, packet, .. } => {
            format!("{conn} {}{}", packet.name(), super::details(packet))
        }
        Input::Closed { conn } => format!("{conn} closed"),
        Input::Timeout => "timeout".to_owned(),
    }
}
