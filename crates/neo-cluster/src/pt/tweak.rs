//! The layout of a new table and rebalancing (architecture.md §3.7).
//!
//! The ideal table is built first, without looking at the current one:
//! `R = min(num_replicas + 1, |members|)` copies of each partition dealt
//! round-robin to `|members|` slots, which gives every member the same
//! number of cells ±1 and puts consecutive partitions (objects created
//! together) on different members. Members are then matched to slots by
//! a backtracking search that first looks for a match moving no data at
//! all (so a tweak of a tweaked table changes nothing), then for one that
//! discards as few cells as possible, readable ones first, placing first
//! the members for which the choice matters most. When the members'
//! topology (`devpath`) allows it, the search also keeps the copies of a
//! row as far apart as the topology goes: `Topology` below.
//!
//! Applying the match adds the missing cells (UP_TO_DATE in a new table,
//! else OUT_OF_DATE), and of the cells a member loses, readable ones
//! become FEEDING while their row lacks `R` readable cells; the others
//! are dropped. Cells of nodes that are not members (those `neoctl tweak`
//! lists, pending and down ones) are left alone: the operator drops such
//! nodes once their data is elsewhere.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use neo_proto::packets::CellChange;
use neo_proto::{CellState, NodeId, Partition};

use super::{Cell, PartitionTable, PtError};

/// Most work one placement search may do (cells examined): a topology that
/// makes the search hopeless must not hold the master for long. Plenty for
/// any real cluster, whose searches need no backtracking at all.
const SEARCH_BUDGET: usize = 20_000_000;

/// A storage that gets cells in a tweak.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The storage.
    pub nid: NodeId,
    /// Where it sits, outermost first (e.g. machine, then disk), as its
    /// `devpath` said at identification (architecture.md §1.6).
    pub devpath: Vec<String>,
}

impl Member {
    /// A member at `devpath`.
    pub fn new(nid: NodeId, devpath: Vec<String>) -> Member {
        Member { nid, devpath }
    }
}

/// What a tweak did.
#[derive(Clone, Debug, PartialEq)]
pub struct Tweaked {
    /// The changes made (the version was bumped if there are any).
    pub changes: Vec<CellChange>,
    /// Set when copies of a row could not be spread over the topology:
    /// why. The table is balanced all the same.
    pub topology_ignored: Option<&'static str>,
}

impl PartitionTable {
    /// Master, new cluster: the table of `members`, every cell UP_TO_DATE,
    /// version 1. Does nothing on a table that has a version already.
    pub fn make(&mut self, members: &[Member]) -> Option<Tweaked> {
        if self.ptid.is_some() {
            return None;
        }
        self.tweak(members).ok()
    }

    /// Master, `neoctl tweak`: rebalances the table over `members`.
    pub fn tweak(&mut self, members: &[Member]) -> Result<Tweaked, PtError> {
        let mut members = members.to_vec();
        members.sort_by_key(|member| member.nid);
        members.dedup_by_key(|member| member.nid);
        if members.is_empty() {
            return Err(PtError::NoNodeLeft);
        }
        let copies = (self.num_replicas as usize)
            .saturating_add(1)
            .min(members.len());
        let layout = Layout::ideal(self.partitions(), copies, members.len());
        let cells: Vec<BTreeMap<Partition, CellState>> = members
            .iter()
            .map(|member| self.cells_of(member.nid).into_iter().collect())
            .collect();
        let (topology, mut topology_ignored) = match Topology::plan(&members, copies) {
            Ok(topology) => (topology, None),
            Err(why) => (None, Some(why)),
        };
        let mut placed = layout.place(&cells, topology);
        if placed.is_none() && topology_ignored.is_none() {
            topology_ignored = Some("no layout spreads the copies over the topology in time");
            placed = layout.place(&cells, None);
        }
        let (order, slots) = placed.ok_or(PtError::Unplaceable)?;
        let mut next = self.clone();
        next.rows = self.apply(&members, &order, &slots, &layout, copies);
        let changes = self.diff(&next);
        Ok(Tweaked {
            changes: self.commit_changes(changes),
            topology_ignored,
        })
    }

    /// The rows once member `order[i]` has slot `slots[i]`.
    fn apply(
        &self,
        members: &[Member],
        order: &[usize],
        slots: &[usize],
        layout: &Layout,
        copies: usize,
    ) -> Vec<Vec<Cell>> {
        let new_state = match self.ptid {
            None => CellState::UpToDate,
            Some(_) => CellState::OutOfDate,
        };
        let mut rows = self.rows.clone();
        // Readable cells each row still lacks among those kept.
        let mut missing = vec![copies; rows.len()];
        let mut discarded: Vec<Vec<NodeId>> = vec![Vec::new(); rows.len()];
        for (&member, &slot) in order.iter().zip(slots) {
            let nid = members[member].nid;
            let slot = &layout.options[slot];
            for &partition in slot {
                let index = partition as usize;
                match rows[index].iter_mut().find(|cell| cell.nid == nid) {
                    None => rows[index].push(Cell {
                        nid,
                        state: new_state,
                    }),
                    Some(cell) if cell.state.is_readable() => {
                        cell.state = CellState::UpToDate;
                        missing[index] = missing[index].saturating_sub(1);
                    }
                    Some(_) => {}
                }
            }
            for (partition, _) in self.cells_of(nid) {
                if slot.binary_search(&partition).is_err() {
                    discarded[partition as usize].push(nid);
                }
            }
        }
        for (index, nids) in discarded.into_iter().enumerate() {
            for nid in nids {
                let Some(position) = rows[index].iter().position(|cell| cell.nid == nid) else {
                    continue;
                };
                if missing[index] > 0 && rows[index][position].state.is_readable() {
                    // Kept readable until enough new copies are up to date.
                    missing[index] -= 1;
                    rows[index][position].state = CellState::Feeding;
                } else {
                    rows[index].remove(position);
                }
            }
        }
        rows
    }
}

/// The ideal table: distinct slots (sets of partitions, sorted), the
/// larger first, and how many members take each.
struct Layout {
    options: Vec<Vec<Partition>>,
    counts: Vec<usize>,
}

impl Layout {
    fn ideal(partitions: u32, copies: usize, members: usize) -> Layout {
        let mut slots = vec![Vec::new(); members];
        let copies_of =
            (0..partitions).flat_map(|partition| std::iter::repeat_n(partition, copies));
        for (index, partition) in copies_of.enumerate() {
            slots[index % members].push(partition);
        }
        let mut grouped: BTreeMap<Vec<Partition>, usize> = BTreeMap::new();
        for slot in slots {
            *grouped.entry(slot).or_default() += 1;
        }
        let mut grouped: Vec<(Vec<Partition>, usize)> = grouped.into_iter().collect();
        grouped.sort_by(|(a, _), (b, _)| (Reverse(a.len()), a).cmp(&(Reverse(b.len()), b)));
        let (options, counts) = grouped.into_iter().unzip();
        Layout { options, counts }
    }

    /// A slot for every member: the members in the order they were placed
    /// and their slots, or `None` if no strategy found one.
    fn place(
        &self,
        cells: &[BTreeMap<Partition, CellState>],
        topology: Option<Topology>,
    ) -> Option<(Vec<usize>, Vec<usize>)> {
        let strategies = [self.moving_nothing(cells), Some(self.moving_least(cells))];
        strategies.into_iter().flatten().find_map(|candidates| {
            let mut search = Search {
                options: &self.options,
                available: self.counts.clone(),
                topology: topology.clone(),
                budget: SEARCH_BUDGET,
            };
            let slots = search.run(&candidates)?;
            Some((
                candidates.into_iter().map(|(member, _)| member).collect(),
                slots,
            ))
        })
    }

    /// Members in order, each with the slots holding all its cells but
    /// FEEDING ones (which are leaving anyway); `None` if a member has no
    /// such slot.
    fn moving_nothing(
        &self,
        cells: &[BTreeMap<Partition, CellState>],
    ) -> Option<Vec<(usize, Vec<usize>)>> {
        cells
            .iter()
            .enumerate()
            .map(|(member, cells)| {
                let fits = |option: &Vec<Partition>| {
                    cells
                        .iter()
                        .filter(|(_, state)| **state != CellState::Feeding)
                        .all(|(partition, _)| option.binary_search(partition).is_ok())
                };
                let slots: Vec<usize> = (0..self.options.len())
                    .filter(|option| fits(&self.options[*option]))
                    .collect();
                (!slots.is_empty()).then_some((member, slots))
            })
            .collect()
    }

    /// Every member with every slot, the slots that discard the fewest of
    /// its readable cells (then of its other cells) first; the members for
    /// which the best and worst slots differ most come first.
    fn moving_least(&self, cells: &[BTreeMap<Partition, CellState>]) -> Vec<(usize, Vec<usize>)> {
        let mut members: Vec<((i64, i64, usize), Vec<usize>)> = cells
            .iter()
            .enumerate()
            .map(|(member, cells)| {
                let mut costs: Vec<((i64, i64), usize)> = self
                    .options
                    .iter()
                    .enumerate()
                    .map(|(option, slot)| {
                        let mut discarded = (0, 0);
                        for (partition, state) in cells {
                            if slot.binary_search(partition).is_err() {
                                if state.is_readable() {
                                    discarded.0 += 1;
                                } else {
                                    discarded.1 += 1;
                                }
                            }
                        }
                        (discarded, option)
                    })
                    .collect();
                costs.sort();
                let best = costs.first().map_or((0, 0), |(cost, _)| *cost);
                let worst = costs.last().map_or((0, 0), |(cost, _)| *cost);
                let key = (best.0 - worst.0, best.1 - worst.1, member);
                (key, costs.into_iter().map(|(_, option)| option).collect())
            })
            .collect();
        members.sort_by_key(|(key, _)| *key);
        members
            .into_iter()
            .map(|((_, _, member), slots)| (member, slots))
            .collect()
    }
}

/// A depth-first search giving each member one of its candidate slots,
/// within the slots' counts and the topology's limits.
struct Search<'a> {
    options: &'a [Vec<Partition>],
    available: Vec<usize>,
    topology: Option<Topology>,
    /// Work left (cells examined); the search gives up at 0.
    budget: usize,
}

impl Search<'_> {
    /// The slot of each member of `candidates`, in that order.
    fn run(&mut self, candidates: &[(usize, Vec<usize>)]) -> Option<Vec<usize>> {
        let mut chosen: Vec<usize> = Vec::with_capacity(candidates.len());
        // Next candidate to try at each depth.
        let mut cursor: Vec<usize> = vec![0];
        loop {
            let depth = chosen.len();
            let Some((member, slots)) = candidates.get(depth) else {
                return Some(chosen);
            };
            let Some(&option) = slots.get(cursor[depth]) else {
                // Every candidate failed: back to the previous member.
                cursor.pop();
                let option = chosen.pop()?;
                let (previous, _) = candidates[depth - 1];
                self.release(previous, option);
                continue;
            };
            cursor[depth] += 1;
            let cost = 1 + self.options[option].len();
            self.budget = self.budget.checked_sub(cost)?;
            if self.available[option] > 0 && self.take(*member, option) {
                chosen.push(option);
                cursor.push(0);
            }
        }
    }

    fn take(&mut self, member: usize, option: usize) -> bool {
        let slot = &self.options[option];
        if let Some(topology) = &mut self.topology {
            if !topology.fits(member, slot) {
                return false;
            }
            topology.count(member, slot, true);
        }
        self.available[option] -= 1;
        true
    }

    fn release(&mut self, member: usize, option: usize) {
        if let Some(topology) = &mut self.topology {
            topology.count(member, &self.options[option], false);
        }
        self.available[option] += 1;
    }
}

/// How the copies of a row may be spread over the members' topology.
///
/// Members are grouped by the first `d` components of their devpath, for
/// `d = 1, 2, …` until there are at least as many groups as copies: at
/// each level, a group may hold at most `q` copies of a row and at most
/// `k` groups under one parent may hold that many, with `q, k` what an
/// even spread of the copies over the level's groups gives. A level whose
/// groups are uneven is only used when no group is larger than `members /
/// copies`; otherwise the topology is not good enough to rely on and it is
/// ignored (with a warning), rather than have the search fail.
#[derive(Clone, Debug)]
struct Topology {
    /// `group[level][member]`: which group of the level the member is in.
    group: Vec<Vec<usize>>,
    /// `(q, k)` of each level.
    limits: Vec<(usize, usize)>,
    /// Copies of each row in each group, per level.
    copies: Vec<HashMap<(Partition, usize), usize>>,
    /// Groups at their limit `q` under each parent, per level and row.
    full: Vec<HashMap<(Partition, usize), usize>>,
}

impl Topology {
    fn plan(members: &[Member], copies: usize) -> Result<Option<Topology>, &'static str> {
        if copies <= 1 {
            return Ok(None);
        }
        let depth = members.iter().map(|m| m.devpath.len()).min().unwrap_or(0);
        let mut topology = Topology {
            group: Vec::new(),
            limits: Vec::new(),
            copies: Vec::new(),
            full: Vec::new(),
        };
        for level in 1..=depth {
            let mut ids: BTreeMap<&[String], usize> = BTreeMap::new();
            let mut sizes: Vec<usize> = Vec::new();
            let mut group = Vec::with_capacity(members.len());
            for member in members {
                let next = ids.len();
                let id = *ids.entry(&member.devpath[..level]).or_insert(next);
                if id == sizes.len() {
                    sizes.push(0);
                }
                sizes[id] += 1;
                group.push(id);
            }
            let largest = sizes.iter().copied().max().unwrap_or(0);
            let even = sizes.iter().all(|size| *size == largest);
            if !even && largest * copies > members.len() {
                return Err("the storages' devpaths are too uneven to spread copies over them");
            }
            let groups = sizes.len();
            topology.limits.push(match copies % groups {
                0 => (copies / groups, groups),
                extra => (copies / groups + 1, extra),
            });
            topology.group.push(group);
            topology.copies.push(HashMap::new());
            topology.full.push(HashMap::new());
            if groups >= copies {
                return Ok(Some(topology));
            }
        }
        Err("the storages' devpaths do not tell enough places apart for the copies")
    }

    /// The member's group and its parent, at each level.
    fn path(&self, member: usize) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        (0..self.limits.len()).map(move |level| {
            let parent = match level {
                0 => 0,
                _ => self.group[level - 1][member],
            };
            (level, self.group[level][member], parent)
        })
    }

    fn fits(&self, member: usize, slot: &[Partition]) -> bool {
        slot.iter().all(|&partition| {
            self.path(member).all(|(level, group, parent)| {
                let (most, groups_at_most) = self.limits[level];
                let held = self.copies[level]
                    .get(&(partition, group))
                    .copied()
                    .unwrap_or(0);
                let full = self.full[level]
                    .get(&(partition, parent))
                    .copied()
                    .unwrap_or(0);
                held < most && (held + 1 < most || full < groups_at_most)
            })
        })
    }

    /// Counts the member's copies of `slot` in (`taken`) or out.
    fn count(&mut self, member: usize, slot: &[Partition], taken: bool) {
        let path: Vec<_> = self.path(member).collect();
        for &partition in slot {
            for &(level, group, parent) in &path {
                let most = self.limits[level].0;
                let held = self.copies[level].entry((partition, group)).or_default();
                let full = self.full[level].entry((partition, parent)).or_default();
                if taken {
                    *held += 1;
                    *full += usize::from(*held == most);
                } else {
                    *full -= usize::from(*held == most);
                    *held -= 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
