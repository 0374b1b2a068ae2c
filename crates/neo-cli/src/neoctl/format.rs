//! Answers as text, in exactly the formats operators and their scripts know
//! (operations.md §3.3–§3.8, §4.3). Pure functions of the decoded answers;
//! the returned text has no final newline (the caller prints one).

use neo_proto::packets::{NodeInfo, Row};
use neo_proto::{CellState, NodeId, NodeState, NodeType, Oid, Ptid, Tid};

use crate::timestamp::{tid_datetime, unix_datetime};

/// `0x«hex» («datetime»)`: hex without leading zeros, then the UTC date.
pub fn format_tid(tid: Tid) -> String {
    format!("{:#x} ({})", tid.0, tid_datetime(tid))
}

fn optional<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "None".to_owned(), |v| v.to_string())
}

/// What `print ids` shows (§3.3).
#[derive(Clone, Debug, PartialEq)]
pub enum Ids {
    /// Normal mode (AskLastIDs).
    Normal {
        /// Last OID; `None` when the cluster knows none.
        last_oid: Option<Oid>,
        /// Last TID; `None` when the cluster knows none.
        last_tid: Option<Tid>,
        /// `None` before the first start.
        ptid: Option<Ptid>,
    },
    /// Backup mode (AskLastTransaction).
    Backup {
        /// TID up to which the backup is consistent.
        backup_tid: Tid,
        /// Last TID replicated.
        last_tid: Tid,
        /// Current partition table id.
        ptid: Option<Ptid>,
    },
}

/// `print ids`.
pub fn format_ids(ids: &Ids) -> String {
    match ids {
        Ids::Normal {
            last_oid,
            last_tid,
            ptid,
        } => format!(
            "last_oid = {}\nlast_tid = {}\nlast_ptid = {}",
            last_oid.map_or_else(|| "None".to_owned(), |oid| format!("{:#x}", oid.0)),
            last_tid.map_or_else(|| "None".to_owned(), format_tid),
            optional(*ptid),
        ),
        Ids::Backup {
            backup_tid,
            last_tid,
            ptid,
        } => format!(
            "backup_tid = {}\nlast_tid = {}\nlast_ptid = {}",
            format_tid(*backup_tid),
            format_tid(*last_tid),
            optional(*ptid),
        ),
    }
}

fn node_state_letter(state: NodeState) -> char {
    match state {
        NodeState::Running => 'R',
        NodeState::Down => 'D',
        NodeState::Pending => 'P',
        NodeState::Unknown => 'U',
    }
}

fn cell_state_letter(state: CellState) -> char {
    match state {
        CellState::UpToDate => 'U',
        CellState::OutOfDate => 'O',
        CellState::Feeding => 'F',
        CellState::Corrupted => 'C',
        CellState::Discarded => 'D',
    }
}

/// The `# ptid: …, replicas: …` line of `print pt`.
pub fn format_pt_header(ptid: Option<Ptid>, num_replicas: u32) -> String {
    format!("# ptid: {}, replicas: {num_replicas}", optional(ptid))
}

/// The compact table (§3.4): one line per storage node, sorted by id, with
/// a header marking every 10th partition when there are more than 10.
/// `storages` gives the node states; running storages without cells get a
/// line of dots, other storages without cells are left out.
pub fn format_compact_table(rows: &[Row], storages: &[NodeInfo]) -> String {
    let state_of = |nid: NodeId| {
        storages
            .iter()
            .find(|node| node.nid == Some(nid))
            .map_or(NodeState::Unknown, |node| node.state)
    };
    let mut nids: Vec<NodeId> = rows.iter().flatten().map(|cell| cell.nid).collect();
    if !rows.is_empty() {
        nids.extend(
            storages
                .iter()
                .filter(|node| node.state == NodeState::Running)
                .filter_map(|node| node.nid),
        );
    }
    nids.sort();
    nids.dedup();
    let width = nids.last().map_or(0, |nid| nid.to_string().len());
    let mut lines = Vec::with_capacity(nids.len() + 1);
    if rows.len() > 10 {
        let mut header = " ".repeat(width + 4);
        for partition in (10..rows.len()).step_by(10) {
            header.push_str(&format!("{partition:>9}v"));
        }
        lines.push(header);
    }
    for nid in nids {
        let cells: String = rows
            .iter()
            .map(|row| {
                row.iter()
                    .find(|cell| cell.nid == nid)
                    .map_or('.', |cell| cell_state_letter(cell.state))
            })
            .collect();
        lines.push(format!(
            "{:<width$} {} {cells}",
            nid.to_string(),
            node_state_letter(state_of(nid))
        ));
    }
    lines.join("\n")
}

/// The row form (§3.4): `000 | S1 - UP_TO_DATE | S2 - UP_TO_DATE |`, rows
/// numbered from `first`.
pub fn format_rows(first: u32, rows: &[Row]) -> String {
    let mut lines = Vec::with_capacity(rows.len());
    for (offset, row) in (u64::from(first)..).zip(rows) {
        let mut line = format!("{offset:03} |");
        for cell in row {
            line.push_str(&format!(" {} - {} |", cell.nid, cell.state));
        }
        lines.push(line);
    }
    lines.join("\n")
}

/// `print pt`: the header line, then the compact table when `min` and
/// `max` are both 0, else one line per row.
pub fn format_partition_list(
    ptid: Option<Ptid>,
    num_replicas: u32,
    rows: &[Row],
    min: u32,
    max: u32,
    storages: &[NodeInfo],
) -> String {
    let body = if min == 0 && max == 0 {
        format_compact_table(rows, storages)
    } else {
        format_rows(min, rows)
    };
    format!("{}\n{body}", format_pt_header(ptid, num_replicas))
}

/// `tweak`: the new table without the ptid line, or `No change done.`.
pub fn format_tweak(changed: bool, rows: &[Row], storages: &[NodeInfo]) -> String {
    if changed {
        format_compact_table(rows, storages)
    } else {
        "No change done.".to_owned()
    }
}

/// Order of `print node`: nodes with an id by numeric id (admins, clients,
/// masters, storages), then nodes without id by type.
fn node_order(node: &NodeInfo) -> (bool, i32, NodeType) {
    (
        node.nid.is_none(),
        node.nid.map_or(0, |n| n.0),
        node.node_type,
    )
}

/// `print node` (§3.5): columns separated by ` | `, each but the last
/// padded to its widest value; `Empty list!` when there is no node.
pub fn format_node_list(nodes: &[NodeInfo]) -> String {
    if nodes.is_empty() {
        return "Empty list!".to_owned();
    }
    let mut sorted: Vec<&NodeInfo> = nodes.iter().collect();
    sorted.sort_by_key(|node| node_order(node));
    let table: Vec<[String; 5]> = sorted
        .iter()
        .map(|node| {
            [
                optional(node.nid),
                node.node_type.to_string(),
                node.address
                    .as_ref()
                    .map_or_else(String::new, |a| a.to_string()),
                node.state.to_string(),
                node.id_timestamp
                    .map_or_else(|| "None".to_owned(), unix_datetime),
            ]
        })
        .collect();
    let mut widths = [0usize; 4];
    for line in &table {
        for (width, column) in widths.iter_mut().zip(line) {
            *width = (*width).max(column.chars().count());
        }
    }
    table
        .iter()
        .map(|line| {
            let mut text = String::new();
            for (column, width) in line.iter().zip(widths) {
                text.push_str(&format!("{column:<width$} | "));
            }
            text.push_str(&line[4]);
            text
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A JSON string with Python's `json.dumps` escaping (ASCII only).
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

fn json_cluster_list(clusters: &[Option<String>]) -> String {
    let mut sorted: Vec<&Option<String>> = clusters.iter().collect();
    // `None` (this cluster, JSON null) sorts first.
    sorted.sort();
    let items: Vec<String> = sorted
        .iter()
        .map(|name| {
            name.as_deref()
                .map_or_else(|| "null".to_owned(), json_string)
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// `print summary` (§4.3): `# ` + the JSON severities (only non-empty
/// lists, `warning` before `problem`), then the admin's summary text.
pub fn format_summary(
    warning: &[Option<String>],
    problem: &[Option<String>],
    summary: &str,
) -> String {
    let mut severities = Vec::new();
    if !warning.is_empty() {
        severities.push(format!("\"warning\": {}", json_cluster_list(warning)));
    }
    if !problem.is_empty() {
        severities.push(format!("\"problem\": {}", json_cluster_list(problem)));
    }
    format!("# {{{}}}\n{summary}", severities.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use neo_proto::packets::CellInfo;
    use neo_proto::Address;

    fn s(n: u32) -> NodeId {
        NodeId::new(NodeType::Storage, n).unwrap()
    }

    fn node(
        node_type: NodeType,
        number: Option<u32>,
        address: Option<&str>,
        state: NodeState,
        time: Option<f64>,
    ) -> NodeInfo {
        NodeInfo {
            node_type,
            address: address.map(|a| Address::parse(a, 0).unwrap()),
            nid: number.map(|n| NodeId::new(node_type, n).unwrap()),
            state,
            id_timestamp: time,
        }
    }

    fn storage(n: u32, state: NodeState) -> NodeInfo {
        node(
            NodeType::Storage,
            Some(n),
            Some("127.0.0.1:1"),
            state,
            Some(0.0),
        )
    }

    /// A table of `partitions` rows from one letter string per storage.
    fn table(columns: &[(u32, &str)]) -> Vec<Row> {
        let partitions = columns[0].1.len();
        (0..partitions)
            .map(|p| {
                columns
                    .iter()
                    .filter_map(|(n, letters)| {
                        let state = match letters.as_bytes()[p] {
                            b'U' => CellState::UpToDate,
                            b'O' => CellState::OutOfDate,
                            b'F' => CellState::Feeding,
                            b'C' => CellState::Corrupted,
                            _ => return None,
                        };
                        Some(CellInfo { nid: s(*n), state })
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn ids_as_observed() {
        let ids = Ids::Normal {
            last_oid: Some(Oid(0)),
            last_tid: Some(Tid(0)),
            ptid: None,
        };
        assert_eq!(
            format_ids(&ids),
            "last_oid = 0x0\nlast_tid = 0x0 (1900-01-01 00:00:00)\nlast_ptid = None"
        );
        let ids = Ids::Normal {
            last_oid: Some(Oid(0)),
            last_tid: Some(Tid(0x040d42d5afed5c12)),
            ptid: Some(1),
        };
        assert_eq!(
            format_ids(&ids),
            "last_oid = 0x0\nlast_tid = 0x40d42d5afed5c12 (2026-11-25 21:41:41.232934)\nlast_ptid = 1"
        );
        let ids = Ids::Backup {
            backup_tid: Tid(0x040d42d5afed5c12),
            last_tid: Tid(0x040d42d5c02149d3),
            ptid: Some(45),
        };
        assert_eq!(
            format_ids(&ids),
            "backup_tid = 0x40d42d5afed5c12 (2026-11-25 21:41:41.232934)\n\
             last_tid = 0x40d42d5c02149d3 (2026-11-25 21:41:45.030476)\nlast_ptid = 45"
        );
    }

    #[test]
    fn compact_table_with_header() {
        let rows = table(&[(1, "U.U.U.U.U.U."), (2, ".U.U.U.U.U.U")]);
        let storages = [
            storage(1, NodeState::Running),
            storage(2, NodeState::Running),
        ];
        assert_eq!(
            format_partition_list(Some(1), 0, &rows, 0, 0, &storages),
            "# ptid: 1, replicas: 0\n             10v\nS1 R U.U.U.U.U.U.\nS2 R .U.U.U.U.U.U"
        );
    }

    #[test]
    fn compact_table_without_header_and_states() {
        let rows = table(&[(1, "U.U."), (2, ".U.U")]);
        let storages = [
            storage(1, NodeState::Running),
            storage(2, NodeState::Running),
        ];
        assert_eq!(
            format_partition_list(Some(1), 0, &rows, 0, 0, &storages),
            "# ptid: 1, replicas: 0\nS1 R U.U.\nS2 R .U.U"
        );
        let rows = table(&[(1, "UUUUUUUUUUUU"), (2, "OOOOOOOOOOOO")]);
        let storages = [storage(1, NodeState::Running), storage(2, NodeState::Down)];
        assert_eq!(
            format_compact_table(&rows, &storages),
            "             10v\nS1 R UUUUUUUUUUUU\nS2 D OOOOOOOOOOOO"
        );
    }

    #[test]
    fn compact_table_node_selection() {
        // A running storage without cells shows dots; a pending one is hidden.
        let rows = table(&[(1, "UUUUUUUUUUUU")]);
        let storages = [
            storage(1, NodeState::Running),
            storage(2, NodeState::Running),
            storage(3, NodeState::Pending),
        ];
        assert_eq!(
            format_compact_table(&rows, &storages),
            "             10v\nS1 R UUUUUUUUUUUU\nS2 R ............"
        );
        // Empty table before the first start: header line, then an empty line.
        let pending = [storage(1, NodeState::Pending)];
        assert_eq!(
            format_partition_list(None, 0, &[], 0, 0, &pending),
            "# ptid: None, replicas: 0\n"
        );
    }

    #[test]
    fn compact_header_for_many_partitions_and_wide_ids() {
        let letters = "U".repeat(30);
        let rows = table(&[(1, &letters), (10, &letters)]);
        let storages = [
            storage(1, NodeState::Running),
            storage(10, NodeState::Running),
        ];
        let text = format_compact_table(&rows, &storages);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("{}{:>9}v{:>9}v", " ".repeat(7), 10, 20));
        assert_eq!(lines[1], format!("S1  R {letters}"));
        assert_eq!(lines[2], format!("S10 R {letters}"));
        // The `v` sits above partition 10's column.
        assert_eq!(lines[0].find('v'), Some("S10 R ".len() + 10));
        assert_eq!(lines[0].len(), lines[0].trim_end().len());
    }

    #[test]
    fn row_form() {
        let rows = table(&[(1, "U.U"), (2, ".UU")]);
        assert_eq!(
            format_partition_list(Some(15), 1, &rows, 2, 5, &[]),
            "# ptid: 15, replicas: 1\n\
             002 | S1 - UP_TO_DATE |\n\
             003 | S2 - UP_TO_DATE |\n\
             004 | S1 - UP_TO_DATE | S2 - UP_TO_DATE |"
        );
        let feeding = vec![vec![
            CellInfo {
                nid: s(2),
                state: CellState::UpToDate,
            },
            CellInfo {
                nid: s(1),
                state: CellState::Feeding,
            },
        ]];
        assert_eq!(
            format_rows(1000, &feeding),
            "1000 | S2 - UP_TO_DATE | S1 - FEEDING |"
        );
        assert_eq!(format_rows(7, &[vec![]]), "007 |");
    }

    #[test]
    fn tweak_output() {
        let rows = table(&[(1, "UOUOUOUOUOUO"), (2, "OUOUOUOUOUOU")]);
        let storages = [
            storage(1, NodeState::Running),
            storage(2, NodeState::Running),
        ];
        assert_eq!(
            format_tweak(true, &rows, &storages),
            "             10v\nS1 R UOUOUOUOUOUO\nS2 R OUOUOUOUOUOU"
        );
        assert_eq!(format_tweak(false, &rows, &storages), "No change done.");
    }

    #[test]
    fn node_list_as_observed() {
        let nodes = [
            node(
                NodeType::Storage,
                Some(2),
                Some("127.0.0.1:21102"),
                NodeState::Running,
                Some(1795642863.496154),
            ),
            node(
                NodeType::Master,
                Some(1),
                Some("127.0.0.1:21000"),
                NodeState::Running,
                None,
            ),
            node(
                NodeType::Client,
                Some(1),
                None,
                NodeState::Running,
                Some(1795642905.023565),
            ),
            node(
                NodeType::Admin,
                Some(1),
                Some("127.0.0.1:21999"),
                NodeState::Running,
                Some(1795642857.585259),
            ),
            node(
                NodeType::Storage,
                Some(1),
                Some("127.0.0.1:21101"),
                NodeState::Down,
                Some(1795642885.570998),
            ),
        ];
        assert_eq!(
            format_node_list(&nodes),
            "A1 | ADMIN   | 127.0.0.1:21999 | RUNNING | 2026-11-25 21:40:57.585259\n\
             C1 | CLIENT  |                 | RUNNING | 2026-11-25 21:41:45.023565\n\
             M1 | MASTER  | 127.0.0.1:21000 | RUNNING | None\n\
             S1 | STORAGE | 127.0.0.1:21101 | DOWN    | 2026-11-25 21:41:25.570998\n\
             S2 | STORAGE | 127.0.0.1:21102 | RUNNING | 2026-11-25 21:41:03.496154"
        );
        assert_eq!(
            format_node_list(&nodes[1..2]),
            "M1 | MASTER | 127.0.0.1:21000 | RUNNING | None"
        );
        assert_eq!(format_node_list(&[]), "Empty list!");
    }

    #[test]
    fn node_list_ipv6_and_nodes_without_id() {
        let nodes = [
            node(
                NodeType::Admin,
                None,
                Some("[::1]:21999"),
                NodeState::Down,
                None,
            ),
            node(
                NodeType::Master,
                Some(1),
                Some("[::1]:21800"),
                NodeState::Running,
                None,
            ),
            node(NodeType::Storage, None, None, NodeState::Unknown, None),
        ];
        assert_eq!(
            format_node_list(&nodes),
            "M1   | MASTER  | [::1]:21800 | RUNNING | None\n\
             None | STORAGE |             | UNKNOWN | None\n\
             None | ADMIN   | [::1]:21999 | DOWN    | None"
        );
    }

    #[test]
    fn summary_as_observed() {
        assert_eq!(
            format_summary(&[], &[None], "RECOVERING"),
            "# {\"problem\": [null]}\nRECOVERING"
        );
        assert_eq!(format_summary(&[], &[], "RUNNING"), "# {}\nRUNNING");
        assert_eq!(
            format_summary(
                &[Some("opsbackup".into())],
                &[Some("b\u{e9}\"".into()), None],
                "X"
            ),
            "# {\"warning\": [\"opsbackup\"], \"problem\": [null, \"b\\u00e9\\\"\"]}\nX"
        );
    }
}
