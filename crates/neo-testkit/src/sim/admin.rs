//! The scripted admin node: it asks the master to stop the cluster, as
//! `neoctl set cluster STOPPING` does through the admin, so that every
//! storage commits and stops cleanly before its database is checked.

use neo_net::{Input, Node, Outbox, Output, Requests};
use neo_proto::packets as p;
use neo_proto::{Address, ClusterState, ErrorCode, NodeType, Packet, UnixTime};

use super::session::{Event, MasterLink};

/// The admin that stops the cluster.
#[derive(Debug)]
pub struct Admin {
    master: MasterLink,
    asked: Requests<()>,
    out: Outbox,
}

impl Admin {
    /// An admin that connects to `master` at once.
    pub fn new(master: Address, cluster: String) -> Admin {
        Admin {
            master: MasterLink::new(master, cluster, NodeType::Admin),
            asked: Requests::default(),
            out: Outbox::default(),
        }
    }
}

impl Node for Admin {
    fn handle(&mut self, input: Input, now: UnixTime) {
        match self
            .master
            .handle(&input, || self.asked.fresh(), &mut self.out)
        {
            Event::Identified { conn, .. } => {
                let stop = p::SetClusterState {
                    state: ClusterState::Stopping,
                };
                self.asked.send(&mut self.out, conn, (), stop);
            }
            Event::Lost => {
                self.asked.clear();
                self.master.lose(now + 1.0);
            }
            Event::Handled => {}
            Event::Other => {
                if let Input::Answer {
                    conn,
                    token,
                    packet: Packet::Error(answer),
                } = input
                {
                    if self.asked.answered(conn, token).is_some() && answer.code == ErrorCode::Ack {
                        self.master.stop();
                        self.out.exit(Ok(()));
                    }
                }
            }
        }
        self.master.poll(now, || self.asked.fresh(), &mut self.out);
    }

    fn poll_output(&mut self) -> Vec<Output> {
        self.out.take()
    }

    fn poll_timeout(&self) -> Option<UnixTime> {
        self.master.deadline().filter(|at| at.is_finite())
    }
}
