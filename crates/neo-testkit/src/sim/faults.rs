//! The faults of a run, drawn from its seed before it starts. TCP does
//! not lose single packets: a loss is a connection that breaks. Nodes
//! crash like `kill -9` (what they were handling is lost with their
//! uncommitted writes) and come back; a node's traffic is held, then
//! released all at once; a node is cut off from everybody for a while.

use super::net::Micros;
use super::rng::Rng;

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The node is killed and restarted `down` later.
    Crash { node: usize, down: Micros },
    /// Nothing from or to the node moves for `span`; then all of it does,
    /// in order.
    Hold { node: usize, span: Micros },
    /// The node's connections break and none can be made for `span`.
    Isolate { node: usize, span: Micros },
    /// One connection, any, breaks.
    Cut,
}

impl Fault {
    /// When its effect is over, for a fault at `at`.
    pub fn over_at(&self, at: Micros) -> Micros {
        match *self {
            Fault::Crash { down: span, .. }
            | Fault::Hold { span, .. }
            | Fault::Isolate { span, .. } => at + span,
            Fault::Cut => at,
        }
    }
}

/// Who can be hit: the master is node 0, then `storages`, then `clients`.
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    pub storages: usize,
    pub clients: usize,
}

const SECOND: Micros = 1_000_000;

/// Up to `max` faults at random times in `from..until`, in time order.
pub fn plan(
    rng: &mut Rng,
    targets: Targets,
    max: usize,
    from: Micros,
    until: Micros,
) -> Vec<(Micros, Fault)> {
    let count = rng.range(1, max.max(1) as u64);
    let storage = |rng: &mut Rng| 1 + rng.index(targets.storages);
    let client = |rng: &mut Rng| 1 + targets.storages + rng.index(targets.clients);
    let any = |rng: &mut Rng| rng.index(1 + targets.storages + targets.clients);
    let mut faults: Vec<(Micros, Fault)> = (0..count)
        .map(|_| {
            let at = rng.range(from, until);
            let span = rng.range(SECOND / 10, 3 * SECOND);
            let fault = match rng.range(0, 99) {
                0..=24 => Fault::Crash {
                    node: storage(rng),
                    down: span,
                },
                25..=36 => Fault::Crash {
                    node: 0,
                    down: span,
                },
                37..=44 => Fault::Crash {
                    node: client(rng),
                    down: span,
                },
                45..=59 => Fault::Hold {
                    node: any(rng),
                    span,
                },
                60..=69 => Fault::Isolate {
                    node: any(rng),
                    span,
                },
                _ => Fault::Cut,
            };
            (at, fault)
        })
        .collect();
    faults.sort_by_key(|(at, _)| *at);
    faults
}
