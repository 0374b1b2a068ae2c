//! A deterministic, seeded simulation of a whole cluster in one thread:
//! the real master and storages (over real SQLite databases), scripted
//! clients committing by the protocol, a simulated network that carries
//! real bytes, a virtual clock, and faults drawn from the seed —
//! connections broken, nodes crashed like `kill -9` and restarted, a
//! node's traffic held, a node cut off. A failing seed replays exactly.
//!
//! The run: the cluster starts and clients commit while faults hit
//! (`load_seconds`); once the last fault's effect is over and the cluster
//! had `heal_seconds` to recover, it must be RUNNING with every storage
//! and every cell UP_TO_DATE, and every client must have committed again;
//! then an admin stops it and the storages' databases are checked
//! ([`crate::record::verify`]): every acknowledged transaction in every
//! replica with its exact data, none half-applied, every counter's
//! revisions going up by one, and every commit the master announced is
//! there. Along the way: a storage never answers a vote (nor the lock of
//! a transaction whose metadata it holds) before committing it, the
//! master's commits never go back in TID order, each client's
//! acknowledged TIDs increase, a client reads its own acknowledged
//! writes, and a master never reports a last TID below one it
//! acknowledged.
//!
//! Layout: `world/` (the nodes, the agenda and the network's events;
//! `hits.rs`: faults as they hit; `end.rs`: the checks once healed, the
//! stop, the databases checked), `net.rs` (connections), `faults.rs` (the
//! faults drawn), `checks.rs` (the invariants checked on outputs),
//! `client/` and `admin.rs` (the scripted nodes) with `session.rs` (their
//! master link), `rng.rs`, `trace.rs`.

mod admin;
mod checks;
mod client;
mod faults;
mod net;
mod rng;
mod session;
mod trace;
mod world;

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use neo_proto::Packet;

/// The shape of a run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Storage nodes.
    pub storages: usize,
    /// Scripted clients.
    pub clients: usize,
    /// Extra replicas of each partition.
    pub replicas: u32,
    /// Partitions.
    pub partitions: u32,
    /// Shared counters the clients increment (they conflict on them).
    pub counters: u64,
    /// Faults happen from the first second until then.
    pub load_seconds: f64,
    /// How long the cluster gets to recover after the last fault's effect
    /// is over.
    pub heal_seconds: f64,
    /// At most this many faults (at least one).
    pub max_faults: usize,
    /// A run acknowledging fewer transactions fails: it proves nothing.
    pub min_acknowledged: usize,
}

impl SimConfig {
    /// `storages` storages, `clients` clients, `replicas` extra replicas;
    /// the rest is sized for a few seconds of a debug build.
    pub fn new(storages: usize, clients: usize, replicas: u32) -> SimConfig {
        SimConfig {
            storages,
            clients,
            replicas,
            partitions: 4,
            counters: 3,
            load_seconds: 8.0,
            heal_seconds: 8.0,
            max_faults: 10,
            min_acknowledged: 20,
        }
    }
}

/// What a successful run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Transactions acknowledged to clients (all checked).
    pub acknowledged: usize,
    /// Transactions whose outcome stayed unknown.
    pub in_doubt: usize,
    /// Faults that hit.
    pub faults: usize,
    /// Events processed.
    pub events: u64,
    /// Lines of the trace: a replay gives as many.
    pub trace_lines: u64,
    /// Hash of the trace: a replay gives the same.
    pub trace_hash: u64,
    /// Virtual time at the end.
    pub seconds: f64,
}

/// A failed run: what broke and the events that led to it.
#[derive(Debug)]
pub struct Failure {
    /// The seed, to replay it.
    pub seed: u64,
    /// What broke.
    pub message: String,
    /// The last lines of the trace.
    pub trace: Vec<String>,
    /// Lines of the whole trace: a replay gives as many.
    pub trace_lines: u64,
    /// Hash of the whole trace: a replay gives the same.
    pub trace_hash: u64,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} failed: {}", self.seed, self.message)?;
        writeln!(
            f,
            "trace: {} lines, hash {:016x}; the last ones:",
            self.trace_lines, self.trace_hash
        )?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Runs the simulation for `seed`; `echo` prints the whole trace as it
/// goes.
pub fn run(config: &SimConfig, seed: u64, echo: bool) -> Result<Outcome, Failure> {
    let failure = |message: String, trace: &trace::Trace| Failure {
        seed,
        message,
        trace: trace.tail(),
        trace_lines: trace.count(),
        trace_hash: trace.hash(),
    };
    let mut world = match world::World::new(config.clone(), seed, echo) {
        Ok(world) => world,
        Err(message) => return Err(failure(message, &trace::Trace::new(false))),
    };
    match catch_unwind(AssertUnwindSafe(|| world.run())) {
        Ok(outcome) => Ok(outcome),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
                .unwrap_or_else(|| "a panic without a message".to_owned());
            Err(failure(message, &world.trace))
        }
    }
}

/// The ids a packet carries that a reader of the trace wants.
fn details(packet: &Packet) -> String {
    match packet {
        Packet::AnswerBeginTransaction(p) => format!(" ttid={}", p.ttid),
        Packet::AskStoreObject(p) => format!(" oid={} serial={} ttid={}", p.oid, p.serial, p.ttid),
        Packet::AnswerStoreObject(p) => match p.conflict {
            Some(tid) => format!(" conflict={tid}"),
            None => String::new(),
        },
        Packet::AskStoreTransaction(p) => format!(" ttid={}", p.ttid),
        Packet::AskVoteTransaction(p) => format!(" ttid={}", p.ttid),
        Packet::AskFinishTransaction(p) => format!(" ttid={}", p.ttid),
        Packet::AnswerTransactionFinished(p) => format!(" ttid={} tid={}", p.ttid, p.tid),
        Packet::AskLockInformation(p) => format!(" ttid={} tid={}", p.ttid, p.tid),
        Packet::AnswerInformationLocked(p) => format!(" ttid={}", p.ttid),
        Packet::NotifyUnlockInformation(p) => format!(" ttid={}", p.ttid),
        Packet::AbortTransaction(p) => format!(" ttid={}", p.ttid),
        Packet::ValidateTransaction(p) => format!(" ttid={} tid={}", p.ttid, p.tid),
        Packet::InvalidateObjects(p) => format!(" tid={}", p.tid),
        Packet::AskObject(p) => format!(" oid={}", p.oid),
        Packet::AnswerObject(p) => format!(" oid={} serial={}", p.oid, p.serial),
        Packet::AnswerNewOIDs(p) => {
            format!(" {:?}", p.oids.iter().map(|oid| oid.0).collect::<Vec<_>>())
        }
        Packet::AskFinalTID(p) => format!(" ttid={}", p.ttid),
        Packet::AnswerFinalTID(p) => format!(" tid={:?}", p.tid.map(|tid| tid.to_string())),
        Packet::AnswerLastTransaction(p) => format!(" tid={}", p.tid),
        Packet::NotifyClusterInformation(p) => format!(" {}", p.state),
        Packet::NotifyNodeInformation(p) => p
            .nodes
            .iter()
            .map(|node| match node.nid {
                Some(nid) => format!(" {nid}:{}", node.state),
                None => format!(" {}:{}", node.node_type, node.state),
            })
            .collect(),
        Packet::Error(p) => format!(" {} {:?}", p.code, p.message),
        _ => String::new(),
    }
}
