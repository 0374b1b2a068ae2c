//! A master node plays the primary role, and the secondary role after
//! losing an election, and the primary role again when no primary can be
//! reached (architecture.md §2). [`MasterNode`] is the [`Node`] the shell
//! runs; each role is its own state machine and a switch starts the new
//! role from scratch: masters keep no state of their own, a new primary
//! rebuilds everything from the storages (§2.1).

use neo_cluster::UnixTime;
use neo_net::{Input, Node, Output};

use crate::master::{Master, MasterConfig};
use crate::metrics::MasterMetrics;
use crate::secondary::Secondary;

/// The role played now.
#[derive(Debug)]
enum Role {
    Primary(Box<Master>),
    Secondary(Box<Secondary>),
}

/// A master node, whatever its role.
#[derive(Debug)]
pub struct MasterNode {
    config: MasterConfig,
    role: Role,
    /// Outputs of a role that ended, sent before the new role's.
    leftover: Vec<Output>,
    metrics: Option<MasterMetrics>,
}

impl MasterNode {
    /// A master that starts by playing the primary role.
    pub fn new(config: MasterConfig) -> Result<MasterNode, neo_cluster::PtError> {
        let master = Master::new(config.clone())?;
        Ok(MasterNode {
            config,
            role: Role::Primary(Box::new(master)),
            leftover: Vec::new(),
            metrics: None,
        })
    }

    /// The node with its metrics kept in `metrics` (`--metrics`).
    pub fn with_metrics(mut self, metrics: MasterMetrics) -> MasterNode {
        if let Role::Primary(master) = &mut self.role {
            master.counters = metrics.counters.clone();
        }
        self.metrics = Some(metrics);
        self
    }

    /// The primary role's state, while this master plays it.
    pub fn primary(&self) -> Option<&Master> {
        match &self.role {
            Role::Primary(master) => Some(master),
            Role::Secondary(_) => None,
        }
    }

    /// The secondary role's state, while this master plays it.
    pub fn secondary(&self) -> Option<&Secondary> {
        match &self.role {
            Role::Primary(_) => None,
            Role::Secondary(secondary) => Some(secondary),
        }
    }

    /// Switches roles as long as the current one says it ended.
    fn switch_roles(&mut self, now: UnixTime) -> Result<(), neo_cluster::PtError> {
        loop {
            match &mut self.role {
                Role::Primary(master) => {
                    let Some(elected) = master.election.lost_to.take() else {
                        return Ok(());
                    };
                    let kept = elected.identified.map(|(conn, _)| conn);
                    self.leftover.extend(master.poll_output());
                    for conn in master.connections() {
                        if Some(conn) != kept {
                            self.leftover.push(Output::Close { conn });
                        }
                    }
                    let masters = master.election.masters.clone();
                    let mut secondary =
                        Secondary::new(self.config.clone(), Some(master.nid), masters, elected);
                    secondary.handle(Input::Start, now);
                    self.role = Role::Secondary(Box::new(secondary));
                }
                Role::Secondary(secondary) => {
                    let Some((masters, nid)) = secondary.gave_up() else {
                        return Ok(());
                    };
                    self.leftover.extend(secondary.poll_output());
                    for conn in secondary.connections() {
                        self.leftover.push(Output::Close { conn });
                    }
                    let config = MasterConfig {
                        masters,
                        ..self.config.clone()
                    };
                    let mut master = match nid {
                        Some(nid) => Master::with_nid(config, nid)?,
                        None => Master::new(config)?,
                    };
                    if let Some(metrics) = &self.metrics {
                        master.counters = metrics.counters.clone();
                    }
                    master.handle(Input::Start, now);
                    self.role = Role::Primary(Box::new(master));
                }
            }
        }
    }
}

impl Node for MasterNode {
    fn handle(&mut self, input: Input, now: UnixTime) {
        match &mut self.role {
            Role::Primary(master) => master.handle(input, now),
            Role::Secondary(secondary) => secondary.handle(input, now),
        }
        if let Err(error) = self.switch_roles(now) {
            // The configuration made a table once: it cannot fail now.
            self.leftover.push(Output::Exit(Err(format!(
                "cannot play the primary role: {error}"
            ))));
        }
    }

    fn poll_output(&mut self) -> Vec<Output> {
        let mut outputs = std::mem::take(&mut self.leftover);
        outputs.extend(match &mut self.role {
            Role::Primary(master) => master.poll_output(),
            Role::Secondary(secondary) => secondary.poll_output(),
        });
        if let Some(metrics) = &mut self.metrics {
            match &self.role {
                Role::Primary(master) => metrics.observe(master),
                Role::Secondary(_) => metrics.observe_secondary(),
            }
        }
        outputs
    }

    fn poll_timeout(&self) -> Option<UnixTime> {
        match &self.role {
            Role::Primary(master) => master.poll_timeout(),
            Role::Secondary(secondary) => secondary.poll_timeout(),
        }
    }
}
