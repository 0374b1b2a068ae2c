//! The faults of a run as they hit the world: crashes in the middle of a
//! batch, holds and the watchdogs they wake, isolations, cuts.

use neo_net::Input;

use super::{unix, Event, Role, World, CRASH_WAIT, SILENCE};
use crate::sim::faults::Fault;
use crate::sim::net::LinkId;

impl World {
    pub(super) fn fault(&mut self, fault: Fault) {
        let name = |world: &World, node: usize| world.slots[node].name.clone();
        match fault {
            Fault::Crash { node, down } => {
                if self.slots[node].role.is_none() {
                    let name = name(self, node);
                    return self
                        .trace
                        .line(self.now, format_args!("{name} is down already: no crash"));
                }
                self.faults += 1;
                // It dies in the middle of its next batch of inputs, or
                // idle if none comes soon.
                let life = self.slots[node].life;
                self.slots[node].crash = Some(down);
                self.at(self.now + CRASH_WAIT, Event::Crash(node, life));
            }
            Fault::Hold { node, span } => {
                self.faults += 1;
                self.trace.line(
                    self.now,
                    format_args!("HOLD {} for {:.3} s", name(self, node), span as f64 / 1e6),
                );
                let slot = &mut self.slots[node];
                slot.held_until = slot.held_until.max(self.now + span);
                if span > SILENCE {
                    self.at(self.now + SILENCE, Event::Silence(node));
                }
            }
            Fault::Isolate { node, span } => {
                self.faults += 1;
                self.trace.line(
                    self.now,
                    format_args!(
                        "ISOLATE {} for {:.3} s",
                        name(self, node),
                        span as f64 / 1e6
                    ),
                );
                self.slots[node].isolated_until = self.now + span;
                for link in self.net.links_of(node) {
                    self.cut(link);
                }
            }
            Fault::Cut => {
                let links = self.net.open_links();
                if links.is_empty() {
                    return;
                }
                self.faults += 1;
                let link = links[self.rng.index(links.len())];
                if let Some((a, b)) = self.net.nodes(link, 0) {
                    self.trace.line(
                        self.now,
                        format_args!("CUT {} - {}", name(self, a), name(self, b)),
                    );
                }
                self.cut(link);
            }
        }
        self.settled_at = self.settled_at.max(fault.over_at(self.now));
    }

    /// The watchdogs of `node`'s connections give up those that wait for
    /// an answer, if it is still held.
    pub(super) fn silence(&mut self, node: usize) {
        if self.slots[node].held_until <= self.now {
            return;
        }
        for link in self.net.links_of(node) {
            if self.net.awaits_answer(link) {
                let name = self.slots[node].name.clone();
                self.trace.line(
                    self.now,
                    format_args!("{name} silent: a watchdog gives up a connection"),
                );
                self.cut(link);
            }
        }
    }

    fn cut(&mut self, link: LinkId) {
        let at = self.now + self.latency();
        let arrivals = self.net.cut(link, at);
        self.arrivals(arrivals);
    }

    /// `kill -9` of `node` in the middle of its batch of inputs: they are
    /// handled, but it dies before its outputs go out and before it
    /// commits what they wrote. It comes back after its downtime.
    pub(super) fn crash(&mut self, node: usize) {
        let Some(down) = self.slots[node].crash.take() else {
            return;
        };
        let now = unix(self.now);
        let batch: Vec<Input> = self.slots[node].inbox.drain(..).collect();
        let name = self.slots[node].name.clone();
        self.trace.line(
            self.now,
            format_args!(
                "CRASH {name} with {} inputs half handled, back in {:.3} s",
                batch.len(),
                down as f64 / 1e6
            ),
        );
        if let Some(role) = self.slots[node].role.as_mut() {
            let machine = role.node();
            for input in batch {
                machine.handle(input, now);
            }
        }
        if let Some(Role::Client(client)) = self.take_down(node) {
            self.records.extend(client.record());
        }
        self.at(self.now + down, Event::Restart(node));
    }
}
