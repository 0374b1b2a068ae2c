//! Finding the primary master (architecture.md §2.4): which master a node
//! tries next, and when. Storages, admins and clients all try the masters
//! they know in turn, follow `NotPrimaryMaster` redirections, and make at
//! most four connection attempts per address per second. NEO/py makes one
//! (protocol.md §9.5); a refused attempt costs the master nothing, and
//! this is most of how fast a new primary is found after a failover.

use std::collections::HashMap;

use neo_proto::packets::NotPrimaryMaster;
use neo_proto::{Address, UnixTime, MAX_MASTERS};

/// At most one connection attempt per master address per this interval.
pub const RETRY_INTERVAL: f64 = 0.25;

/// The masters known and the next connection attempt.
#[derive(Debug, Clone)]
pub struct PrimaryFinder {
    /// The configured masters, then those learnt from redirections.
    masters: Vec<Address>,
    /// Index in `masters` of the next one to try.
    next: usize,
    /// When each address was (or will be) last tried.
    last_attempt: HashMap<Address, UnixTime>,
    /// The attempt scheduled, not made yet.
    scheduled: Option<(Address, UnixTime)>,
    /// At most one attempt per address per this many seconds.
    retry_interval: f64,
}

impl PrimaryFinder {
    /// Tries `masters` in this order (duplicates dropped); `None` if empty.
    pub fn new(masters: &[Address]) -> Option<PrimaryFinder> {
        let mut known: Vec<Address> = Vec::new();
        for address in masters {
            if !known.contains(address) && known.len() < MAX_MASTERS {
                known.push(address.clone());
            }
        }
        (!known.is_empty()).then_some(PrimaryFinder {
            masters: known,
            next: 0,
            last_attempt: HashMap::new(),
            scheduled: None,
            retry_interval: RETRY_INTERVAL,
        })
    }

    /// Spaces the attempts to one address by `seconds` instead of
    /// [`RETRY_INTERVAL`].
    pub fn with_retry_interval(mut self, seconds: f64) -> PrimaryFinder {
        self.retry_interval = seconds;
        self
    }

    /// The masters known.
    pub fn masters(&self) -> &[Address] {
        &self.masters
    }

    /// Schedules an attempt to `preferred`, or else to the next master in
    /// turn, no sooner than the retry interval after the last attempt to
    /// the same address. Replaces any attempt scheduled before.
    pub fn schedule(&mut self, preferred: Option<Address>, now: UnixTime) {
        let address = preferred.unwrap_or_else(|| {
            let index = self.next % self.masters.len();
            self.next = index + 1;
            self.masters[index].clone()
        });
        let earliest = self
            .last_attempt
            .get(&address)
            .map_or(now, |last| last + self.retry_interval);
        let at = earliest.clamp(now, now + self.retry_interval);
        self.scheduled = Some((address, at));
    }

    /// When the scheduled attempt is due.
    pub fn deadline(&self) -> Option<UnixTime> {
        self.scheduled.as_ref().map(|(_, at)| *at)
    }

    /// The address to connect to now, if the scheduled attempt is due.
    pub fn due(&mut self, now: UnixTime) -> Option<Address> {
        match &self.scheduled {
            Some((_, at)) if *at <= now => {
                let (address, _) = self.scheduled.take()?;
                self.last_attempt.insert(address.clone(), now);
                Some(address)
            }
            _ => None,
        }
    }

    /// Forgets the scheduled attempt.
    pub fn cancel(&mut self) {
        self.scheduled = None;
    }

    /// Learns a master (from a notification, a file...), up to
    /// [`MAX_MASTERS`]; `true` if it was new.
    pub fn learn(&mut self, address: &Address) -> bool {
        if self.masters.len() >= MAX_MASTERS || self.masters.contains(address) {
            return false;
        }
        self.masters.push(address.clone());
        true
    }

    /// A secondary master said who the primary is: learns the masters it
    /// listed (up to [`MAX_MASTERS`]) and returns the primary's address, if
    /// it named one.
    pub fn redirected(&mut self, redirect: &NotPrimaryMaster) -> Option<Address> {
        for address in &redirect.known_masters {
            self.learn(address);
        }
        redirect
            .primary
            .and_then(|index| redirect.known_masters.get(index as usize))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(port: u16) -> Address {
        Address::new("127.0.0.1", port)
    }

    #[test]
    fn masters_are_tried_in_turn_at_most_once_a_second_each() {
        let mut finder = PrimaryFinder::new(&[master(1), master(2), master(1)])
            .unwrap()
            .with_retry_interval(1.0);
        assert_eq!(finder.masters(), [master(1), master(2)]);
        finder.schedule(None, 100.0);
        assert_eq!(finder.due(100.0), Some(master(1)));
        assert_eq!(finder.due(100.0), None, "an attempt is made once");
        finder.schedule(None, 100.25);
        assert_eq!(finder.due(100.25), Some(master(2)));
        // Back to the first, tried 0.5 s ago: waits until a second passed.
        finder.schedule(None, 100.5);
        assert_eq!(finder.deadline(), Some(101.0));
        assert_eq!(finder.due(100.9), None);
        assert_eq!(finder.due(101.0), Some(master(1)));
        let mut quick = PrimaryFinder::new(&[master(1)]).unwrap();
        quick.schedule(None, 0.0);
        assert_eq!(quick.due(0.0), Some(master(1)));
        quick.schedule(None, 0.0);
        assert_eq!(quick.deadline(), Some(RETRY_INTERVAL));
    }

    #[test]
    fn redirections_teach_masters_but_never_too_many() {
        let mut finder = PrimaryFinder::new(&[master(1)]).unwrap();
        let redirect = NotPrimaryMaster {
            primary: Some(1),
            known_masters: (0..200).map(master).collect(),
        };
        assert_eq!(finder.redirected(&redirect), Some(master(1)));
        assert_eq!(finder.masters().len(), MAX_MASTERS);
        let unknown = NotPrimaryMaster {
            primary: Some(500),
            known_masters: vec![],
        };
        assert_eq!(finder.redirected(&unknown), None);
        assert!(PrimaryFinder::new(&[]).is_none());
    }
}
