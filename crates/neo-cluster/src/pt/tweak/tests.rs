use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn s(n: i32) -> NodeId {
    NodeId(n)
}

fn members(nids: impl IntoIterator<Item = i32>) -> Vec<Member> {
    nids.into_iter()
        .map(|n| Member::new(s(n), Vec::new()))
        .collect()
}

/// One line per node as `neoctl print pt` shows it: a letter per
/// partition.
fn picture(table: &PartitionTable) -> Vec<String> {
    table
        .nodes()
        .into_iter()
        .map(|nid| {
            (0..table.partitions())
                .map(|partition| match table.cell_state(partition, nid) {
                    None => '.',
                    Some(CellState::UpToDate) => 'U',
                    Some(CellState::OutOfDate) => 'O',
                    Some(CellState::Feeding) => 'F',
                    Some(CellState::Corrupted) => 'C',
                    Some(CellState::Discarded) => 'D',
                })
                .collect()
        })
        .collect()
}

/// Every OUT_OF_DATE cell replicated: UP_TO_DATE, FEEDING cells gone.
fn replicate_all(table: &mut PartitionTable) {
    for partition in 0..table.partitions() {
        let outdated: Vec<NodeId> = table
            .cells(partition)
            .iter()
            .filter(|cell| cell.state == CellState::OutOfDate)
            .map(|cell| cell.nid)
            .collect();
        for nid in outdated {
            table
                .set_up_to_date(partition, nid, true)
                .expect("assigned");
        }
    }
}

#[test]
fn a_new_table_is_balanced_spread_and_up_to_date() {
    let mut table = PartitionTable::new(12, 1).expect("partitions");
    table.make(&members(1..=3));
    assert_eq!(table.ptid(), Some(1));
    assert!(table.is_operational(|_| true));
    assert_eq!(
        table.count_by_node().values().copied().collect::<Vec<_>>(),
        [8, 8, 8]
    );
    for partition in 0..12 {
        let row = table.cells(partition);
        assert_eq!(row.len(), 2);
        assert!(row.iter().all(|cell| cell.state == CellState::UpToDate));
        assert_ne!(row[0].nid, row[1].nid);
    }
    // A table that exists is not made again.
    assert!(table.make(&members(1..=4)).is_none());
}

/// operations.md §11.6, as NEO/py did it: 12 partitions on 2 storages,
/// then one replica, then back to none.
#[test]
fn the_observed_session_gives_the_observed_tables() {
    let mut table = PartitionTable::new(12, 0).expect("partitions");
    table.make(&members(1..=2));
    assert_eq!(picture(&table), ["U.U.U.U.U.U.", ".U.U.U.U.U.U"]);
    assert!(table
        .tweak(&members(1..=2))
        .expect("tweak")
        .changes
        .is_empty());
    table.set_num_replicas(1);
    let tweaked = table.tweak(&members(1..=2)).expect("tweak");
    assert_eq!(tweaked.changes.len(), 12);
    assert_eq!(picture(&table), ["UOUOUOUOUOUO", "OUOUOUOUOUOU"]);
    assert_eq!(table.ptid(), Some(3));
    replicate_all(&mut table);
    assert!(table
        .tweak(&members(1..=2))
        .expect("tweak")
        .changes
        .is_empty());
    table.set_num_replicas(0);
    table.tweak(&members(1..=2)).expect("tweak");
    assert_eq!(picture(&table), ["U.U.U.U.U.U.", ".U.U.U.U.U.U"]);
}

/// operations.md §11.6: a storage added to a one-storage table gets a
/// copy of everything.
#[test]
fn an_added_storage_gets_out_of_date_cells() {
    let mut table = PartitionTable::new(12, 1).expect("partitions");
    table.make(&members([1]));
    assert_eq!(picture(&table), ["UUUUUUUUUUUU"]);
    table.tweak(&members(1..=2)).expect("tweak");
    assert_eq!(picture(&table), ["UUUUUUUUUUUU", "OOOOOOOOOOOO"]);
}

#[test]
fn moved_cells_feed_until_their_new_copy_is_up_to_date() {
    let mut table = PartitionTable::new(6, 0).expect("partitions");
    table.make(&members(1..=2));
    table.tweak(&members(1..=3)).expect("tweak");
    assert_eq!(picture(&table), ["U.FOF.", ".U.FOF", "..O..O"]);
    for partition in 0..6 {
        // Still one readable copy everywhere; the moving ones are FEEDING.
        assert_eq!(table.readable_cells(partition).count(), 1);
    }
    let counts: Vec<usize> = [1, 2, 3]
        .iter()
        .map(|n| {
            table
                .cells_of(s(*n))
                .iter()
                .filter(|(_, state)| *state != CellState::Feeding)
                .count()
        })
        .collect();
    assert_eq!(counts, [2, 2, 2]);
    replicate_all(&mut table);
    assert!(table
        .nodes()
        .iter()
        .all(|nid| table.cells_of(*nid).len() == 2));
    assert!(table
        .tweak(&members(1..=3))
        .expect("tweak")
        .changes
        .is_empty());
}

#[test]
fn cells_of_excluded_nodes_are_left_alone() {
    let mut table = PartitionTable::new(4, 0).expect("partitions");
    table.make(&members(1..=2));
    let before = table.cells_of(s(2));
    // S2 excluded (`neoctl tweak S2`): S1 gets every partition, S2 keeps
    // its cells for now.
    table.tweak(&members([1])).expect("tweak");
    assert_eq!(table.cells_of(s(2)), before);
    assert_eq!(picture(&table), ["UOUO", ".U.U"]);
    assert_eq!(
        table.tweak(&members([])),
        Err(PtError::NoNodeLeft),
        "Can't remove all nodes."
    );
}

/// Two machines with two disks each: the copies of every row are on
/// both machines, which the order of the ids alone would not give.
#[test]
fn copies_are_spread_over_the_topology() {
    let at = |n, machine: &str, disk: &str| Member::new(s(n), vec![machine.into(), disk.into()]);
    let cluster = [
        at(1, "a", "1"),
        at(2, "a", "2"),
        at(3, "b", "1"),
        at(4, "b", "2"),
    ];
    let mut table = PartitionTable::new(12, 1).expect("partitions");
    let made = table.make(&cluster).expect("made");
    assert_eq!(made.topology_ignored, None);
    for partition in 0..12 {
        let machines: BTreeSet<i32> = table
            .cells(partition)
            .iter()
            .map(|cell| (cell.nid.0 - 1) / 2)
            .collect();
        assert_eq!(
            machines.len(),
            2,
            "partition {partition}: {:?}",
            picture(&table)
        );
    }
    // Without topology, the first two storages share their rows.
    let mut plain = PartitionTable::new(12, 1).expect("partitions");
    plain.make(&members(1..=4));
    assert_eq!(
        plain.cells(0).iter().map(|c| c.nid).collect::<Vec<_>>(),
        [s(1), s(2)]
    );
}

#[test]
fn an_uneven_topology_is_ignored_with_a_reason() {
    let at = |n, machine: &str| Member::new(s(n), vec![machine.into()]);
    let mut table = PartitionTable::new(6, 1).expect("partitions");
    let made = table
        .make(&[at(1, "a"), at(2, "a"), at(3, "b")])
        .expect("made");
    assert!(made.topology_ignored.is_some());
    assert_eq!(table.count_by_node().values().sum::<usize>(), 12);
}

/// A table in any state a master can reach: made over some storages,
/// then storages added, lost, replicated or not, the replicas changed.
fn reachable_table() -> impl Strategy<Value = (PartitionTable, Vec<Member>)> {
    (
        1u32..40,
        0u32..4,
        1i32..6,
        1i32..8,
        proptest::collection::vec((0u8..4, any::<u16>()), 0..12),
        0u32..4,
    )
        .prop_map(
            |(partitions, replicas, first, total, steps, replicas_after)| {
                let total = total.max(first);
                let mut table = PartitionTable::new(partitions, replicas).expect("partitions");
                table.make(&members(1..=first));
                let mut up: BTreeSet<i32> = (1..=first).collect();
                for (action, seed) in steps {
                    let nid = 1 + i32::from(seed) % total;
                    let current: Vec<Member> = members(up.iter().copied());
                    match action {
                        0 => {
                            up.insert(nid);
                        }
                        1 if up.len() > 1 => {
                            up.remove(&nid);
                            let running = |n: NodeId| up.contains(&n.0);
                            table.outdate(running, Some(s(nid)));
                        }
                        2 => replicate_all(&mut table),
                        _ => {
                            let _ = table.tweak(&current);
                        }
                    }
                }
                table.set_num_replicas(replicas_after);
                (table, members(up))
            },
        )
}

proptest! {
    #[test]
    fn tweaked_tables_meet_every_goal((table, members) in reachable_table()) {
        let before = table.clone();
        let mut table = table;
        table.tweak(&members).expect("members");
        let copies = (table.num_replicas() as usize + 1).min(members.len());
        let is_member = |nid: NodeId| members.iter().any(|m| m.nid == nid);
        for partition in 0..table.partitions() {
            // R cells that are or will be readable, on members.
            let assigned: Vec<NodeId> = table
                .cells(partition)
                .iter()
                .filter(|cell| is_member(cell.nid) && cell.state != CellState::Feeding)
                .map(|cell| cell.nid)
                .collect();
            prop_assert_eq!(assigned.len(), copies);
            // The only readable copy is never dropped.
            if before.readable_cells(partition).next().is_some() {
                prop_assert!(table.readable_cells(partition).next().is_some());
            }
            // Consecutive partitions on different members when possible.
            if members.len() >= 2 * copies && partition + 1 < table.partitions() {
                let next: BTreeSet<NodeId> = table
                    .cells(partition + 1)
                    .iter()
                    .filter(|cell| is_member(cell.nid) && cell.state != CellState::Feeding)
                    .map(|cell| cell.nid)
                    .collect();
                prop_assert!(assigned.iter().all(|nid| !next.contains(nid)));
            }
        }
        let mut counts: BTreeMap<NodeId, usize> = members.iter().map(|m| (m.nid, 0)).collect();
        for partition in 0..table.partitions() {
            for cell in table.cells(partition) {
                if let Some(count) = counts.get_mut(&cell.nid) {
                    *count += usize::from(cell.state != CellState::Feeding);
                }
            }
        }
        let (min, max) = (counts.values().min(), counts.values().max());
        prop_assert!(max.zip(min).is_some_and(|(max, min)| max - min <= 1), "{:?}", counts);
        // Others' cells are untouched.
        for nid in before.nodes().into_iter().filter(|nid| !is_member(*nid)) {
            prop_assert_eq!(before.cells_of(nid), table.cells_of(nid));
        }
        // A tweak of a tweaked table changes nothing.
        let ptid = table.ptid();
        prop_assert!(table.tweak(&members).expect("members").changes.is_empty());
        prop_assert_eq!(table.ptid(), ptid);
    }

    #[test]
    fn copies_land_on_different_machines_when_the_topology_allows(
        partitions in 1u32..40,
        machines in 2usize..5,
        per_machine in 1usize..4,
        replicas in 0u32..4,
        grow in any::<bool>(),
    ) {
        let cluster: Vec<Member> = (0..machines * per_machine)
            .map(|index| {
                // Consecutive ids on one machine: the order of the ids
                // alone would put copies together.
                let machine = format!("m{}", index / per_machine);
                let disk = format!("d{}", index % per_machine);
                Member::new(s(index as i32 + 1), vec![machine, disk])
            })
            .collect();
        let copies = (replicas as usize + 1).min(cluster.len());
        prop_assume!(copies <= machines);
        let mut table = PartitionTable::new(partitions, replicas).expect("partitions");
        // Made on part of the cluster, then tweaked over all of it, or
        // made on all of it at once.
        let first = if grow { per_machine } else { cluster.len() };
        table.make(&cluster[..first]);
        let tweaked = table.tweak(&cluster).expect("members");
        prop_assert_eq!(tweaked.topology_ignored, None);
        let machine_of = |nid: NodeId| (nid.0 as usize - 1) / per_machine;
        for partition in 0..partitions {
            let places: Vec<usize> = table
                .cells(partition)
                .iter()
                .filter(|cell| cell.state != CellState::Feeding)
                .map(|cell| machine_of(cell.nid))
                .collect();
            let distinct: BTreeSet<usize> = places.iter().copied().collect();
            prop_assert_eq!(distinct.len(), places.len(), "partition {}", partition);
        }
    }
}
