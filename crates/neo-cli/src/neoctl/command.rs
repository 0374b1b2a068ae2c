//! The `neoctl` command language (operations.md §3.1, §3.2): the words after
//! the options, turned into a typed [`Command`]. Pure: nothing here talks to
//! the network, so every rule is unit-tested.
//!
//! Where NEO/py crashes with a traceback on bad input (operations.md §10,
//! Q4 and Q6) we return a [`CommandError`] whose text is one line.

use neo_proto::{ClusterState, NodeId, NodeType, Partition, Tid};

use crate::timestamp::tid_from_unix;

/// Which storage nodes a command applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeSelection {
    /// The word `all`.
    All,
    /// The listed nodes.
    Nodes(Vec<NodeId>),
}

/// One `partition:reference` argument of `check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckTarget {
    /// `None` (empty before the colon): every partition.
    pub partition: Option<Partition>,
    /// `None` (empty after the colon): the master picks the reference.
    pub reference: Option<NodeId>,
}

/// A parsed `neoctl` command; one variant per command of §3.2.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// `print ids`.
    PrintIds,
    /// `print pt [min [max [node]]]`; `max` 0 means "to the end".
    PrintPt {
        /// First row.
        min: u32,
        /// End row, exclusive; 0 = up to the end.
        max: u32,
        /// Sent to the admin, which ignores it (operations.md §10, Q5).
        node: Option<NodeId>,
    },
    /// `print node [type]`.
    PrintNode(Option<NodeType>),
    /// `print cluster`.
    PrintCluster,
    /// `print primary`.
    PrintPrimary,
    /// `print summary`.
    PrintSummary,
    /// `set cluster STATE`.
    SetCluster(ClusterState),
    /// `set replicas N`.
    SetReplicas(u32),
    /// `start`: `set cluster VERIFYING`.
    Start,
    /// `add all | node…`.
    Add(NodeSelection),
    /// `tweak [-n] [node…]`.
    Tweak {
        /// `-n`: compute without applying.
        dry_run: bool,
        /// Nodes to evacuate.
        drop: Vec<NodeId>,
    },
    /// `kill node`: SetNodeState(DOWN).
    Kill(NodeId),
    /// `drop node`: SetNodeState(UNKNOWN).
    Drop(NodeId),
    /// `check [partition]:[reference] … [min_tid [max_tid]]`.
    Check {
        /// The pairs, in the order given.
        targets: Vec<CheckTarget>,
        /// Lower bound (ZERO_TID when not given).
        min_tid: Tid,
        /// Upper bound; `None` = the last TID.
        max_tid: Option<Tid>,
    },
    /// `prune_orphan dry_run all | node…`.
    PruneOrphan {
        /// `1`: only report.
        dry_run: bool,
        /// Which storages.
        nodes: NodeSelection,
    },
    /// `truncate tid`.
    Truncate(Tid),
    /// `flush_log`.
    FlushLog,
}

/// Why a command line was refused. Each message is one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Unknown word, or `print`/`set` without their second word. The text
    /// is NEO/py's.
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// Too many or too few parameters.
    #[error("{command}: wrong number of parameters (usage: {command} {usage})")]
    Arity {
        /// The command words (`print pt`).
        command: &'static str,
        /// Its parameter syntax.
        usage: &'static str,
    },
    /// Not `M`/`S`/`C`/`A` followed by a positive number.
    #[error("invalid node id {0:?}: expected a type letter (M, S, C or A) followed by a number, e.g. S1")]
    NodeId(String),
    /// `print node` with an unknown type.
    #[error("invalid node type {0:?}: expected master, storage, client or admin")]
    NodeType(String),
    /// `set cluster` with an unknown state name.
    #[error("invalid cluster state {0:?}: expected one of RECOVERING, VERIFYING, RUNNING, STOPPING, STARTING_BACKUP, BACKINGUP, STOPPING_BACKUP")]
    ClusterState(String),
    /// A parameter that must be a non-negative integer.
    #[error("invalid {what} {value:?}: expected a non-negative integer")]
    Integer {
        /// What the parameter is.
        what: &'static str,
        /// As given.
        value: String,
    },
    /// Negative replica count; NEO/py's text.
    #[error("invalid number of replicas")]
    Replicas,
    /// `prune_orphan` with a `dry_run` other than 0 or 1.
    #[error("invalid dry_run {0:?}: expected 0 or 1")]
    DryRun(String),
    /// Neither `tid:«integer»` nor a UNIX timestamp.
    #[error("invalid TID {0:?}: expected tid:<integer> or a UNIX timestamp")]
    Tid(String),
    /// A `partition:reference` pair after a TID, or more than two TIDs.
    #[error("check: {0}")]
    Check(String),
}

/// Parses the command words. `Ok(None)`: no words, i.e. "print the command
/// list". Command words are case-sensitive, as in NEO/py.
pub fn parse_command(words: &[String]) -> Result<Option<Command>, CommandError> {
    let Some((first, rest)) = words.split_first() else {
        return Ok(None);
    };
    let invalid = || CommandError::InvalidCommand(words.join(" "));
    let command = match first.as_str() {
        "print" => {
            let (second, params) = rest.split_first().ok_or_else(invalid)?;
            match second.as_str() {
                "ids" => no_params(params, "print ids", Command::PrintIds)?,
                "pt" => parse_print_pt(params)?,
                "node" => parse_print_node(params)?,
                "cluster" => no_params(params, "print cluster", Command::PrintCluster)?,
                "primary" => no_params(params, "print primary", Command::PrintPrimary)?,
                "summary" => no_params(params, "print summary", Command::PrintSummary)?,
                _ => return Err(invalid()),
            }
        }
        "set" => {
            let (second, params) = rest.split_first().ok_or_else(invalid)?;
            match second.as_str() {
                "cluster" => {
                    let [state] = exactly(params, "set cluster", "state")?;
                    Command::SetCluster(parse_cluster_state(state)?)
                }
                "replicas" => {
                    let [count] = exactly(params, "set replicas", "nr")?;
                    Command::SetReplicas(parse_replicas(count)?)
                }
                _ => return Err(invalid()),
            }
        }
        "start" => no_params(rest, "start", Command::Start)?,
        "add" => {
            if rest.is_empty() {
                return Err(CommandError::Arity {
                    command: "add",
                    usage: "all | node [node [...]]",
                });
            }
            Command::Add(parse_selection(rest)?)
        }
        "tweak" => {
            let (dry_run, nodes) = match rest.split_first() {
                Some((flag, nodes)) if flag == "-n" => (true, nodes),
                _ => (false, rest),
            };
            Command::Tweak {
                dry_run,
                drop: parse_node_ids(nodes)?,
            }
        }
        "kill" => {
            let [node] = exactly(rest, "kill", "node")?;
            Command::Kill(parse_node_id(node)?)
        }
        "drop" => {
            let [node] = exactly(rest, "drop", "node")?;
            Command::Drop(parse_node_id(node)?)
        }
        "check" => parse_check(rest)?,
        "prune_orphan" => {
            let Some((dry_run, nodes)) = rest.split_first().filter(|(_, n)| !n.is_empty()) else {
                return Err(CommandError::Arity {
                    command: "prune_orphan",
                    usage: "dry_run all | node [node [...]]",
                });
            };
            let dry_run = match dry_run.as_str() {
                "0" => false,
                "1" => true,
                other => return Err(CommandError::DryRun(other.to_owned())),
            };
            Command::PruneOrphan {
                dry_run,
                nodes: parse_selection(nodes)?,
            }
        }
        "truncate" => {
            let [tid] = exactly(rest, "truncate", "tid")?;
            Command::Truncate(parse_tid(tid)?)
        }
        "flush_log" => no_params(rest, "flush_log", Command::FlushLog)?,
        _ => return Err(invalid()),
    };
    Ok(Some(command))
}

fn no_params(
    params: &[String],
    command: &'static str,
    parsed: Command,
) -> Result<Command, CommandError> {
    if params.is_empty() {
        Ok(parsed)
    } else {
        Err(CommandError::Arity { command, usage: "" }.trim_usage())
    }
}

impl CommandError {
    /// Commands without parameters say so instead of showing an empty usage.
    fn trim_usage(self) -> CommandError {
        match self {
            CommandError::Arity { command, usage: "" } => CommandError::Arity {
                command,
                usage: "(no parameters)",
            },
            other => other,
        }
    }
}

fn exactly<'a, const N: usize>(
    params: &'a [String],
    command: &'static str,
    usage: &'static str,
) -> Result<[&'a str; N], CommandError> {
    let words: Vec<&str> = params.iter().map(String::as_str).collect();
    words
        .try_into()
        .map_err(|_| CommandError::Arity { command, usage })
}

fn parse_print_pt(params: &[String]) -> Result<Command, CommandError> {
    if params.len() > 3 {
        return Err(CommandError::Arity {
            command: "print pt",
            usage: "[min [max [node]]]",
        });
    }
    let offset = |index: usize, what| {
        params
            .get(index)
            .map(|value| parse_u32(value, what))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    Ok(Command::PrintPt {
        min: offset(0, "min offset")?,
        max: offset(1, "max offset")?,
        node: params.get(2).map(|n| parse_node_id(n)).transpose()?,
    })
}

fn parse_print_node(params: &[String]) -> Result<Command, CommandError> {
    match params {
        [] => Ok(Command::PrintNode(None)),
        [name] => NodeType::from_name(&name.to_ascii_uppercase())
            .map(|t| Command::PrintNode(Some(t)))
            .ok_or_else(|| CommandError::NodeType(name.clone())),
        _ => Err(CommandError::Arity {
            command: "print node",
            usage: "[type]",
        }),
    }
}

fn parse_u32(value: &str, what: &'static str) -> Result<u32, CommandError> {
    value.parse().map_err(|_| CommandError::Integer {
        what,
        value: value.to_owned(),
    })
}

/// Cluster state names are case-insensitive (`stopping` works).
pub fn parse_cluster_state(name: &str) -> Result<ClusterState, CommandError> {
    ClusterState::from_name(&name.to_ascii_uppercase())
        .ok_or_else(|| CommandError::ClusterState(name.to_owned()))
}

fn parse_replicas(value: &str) -> Result<u32, CommandError> {
    match value.parse::<i64>() {
        Ok(count) if count < 0 => Err(CommandError::Replicas),
        Ok(count) => u32::try_from(count).map_err(|_| CommandError::Replicas),
        Err(_) => Err(CommandError::Integer {
            what: "number of replicas",
            value: value.to_owned(),
        }),
    }
}

/// A node id in text form: upper-case type letter and a positive decimal
/// number (`S1`, `M2`). Lower-case letters and bare integers are refused,
/// like NEO/py does (with a traceback there).
pub fn parse_node_id(text: &str) -> Result<NodeId, CommandError> {
    let error = || CommandError::NodeId(text.to_owned());
    let mut chars = text.chars();
    let letter = chars.next().ok_or_else(error)?;
    let node_type = NodeType::ALL
        .iter()
        .copied()
        .find(|t| t.letter() == letter)
        .ok_or_else(error)?;
    let digits = chars.as_str();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(error());
    }
    let number: u32 = digits.parse().map_err(|_| error())?;
    NodeId::new(node_type, number).ok_or_else(error)
}

fn parse_node_ids(words: &[String]) -> Result<Vec<NodeId>, CommandError> {
    words.iter().map(|w| parse_node_id(w)).collect()
}

fn parse_selection(words: &[String]) -> Result<NodeSelection, CommandError> {
    match words {
        [all] if all == "all" => Ok(NodeSelection::All),
        nodes => parse_node_ids(nodes).map(NodeSelection::Nodes),
    }
}

/// Whether a `check` parameter is a TID rather than a `partition:reference`
/// pair: NEO/py took every word with a colon for a pair (§10, Q4).
fn is_tid_word(word: &str) -> bool {
    !word.contains(':')
        || word
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("tid:"))
}

fn parse_check(params: &[String]) -> Result<Command, CommandError> {
    let pairs = params.iter().take_while(|w| !is_tid_word(w)).count();
    let (pair_words, tid_words) = params.split_at(pairs);
    let mut targets = Vec::with_capacity(pair_words.len());
    for word in pair_words {
        let (partition, reference) = word.split_once(':').unwrap_or((word, ""));
        targets.push(CheckTarget {
            partition: match partition {
                "" => None,
                p => Some(parse_u32(p, "partition")?),
            },
            reference: match reference {
                "" => None,
                r => Some(parse_node_id(r)?),
            },
        });
    }
    if let Some(late) = tid_words.iter().find(|w| !is_tid_word(w)) {
        return Err(CommandError::Check(format!(
            "partition:reference pair {late:?} after a TID"
        )));
    }
    let tids = tid_words
        .iter()
        .map(|w| parse_tid(w))
        .collect::<Result<Vec<_>, _>>()?;
    let (min_tid, max_tid) = match tids.as_slice() {
        [] => (Tid::ZERO, None),
        [min] => (*min, None),
        [min, max] => (*min, Some(*max)),
        _ => {
            return Err(CommandError::Check(
                "at most two TIDs (min_tid max_tid) may be given".into(),
            ))
        }
    };
    Ok(Command::Check {
        targets,
        min_tid,
        max_tid,
    })
}

/// A TID argument: `tid:«integer»` (prefix case-insensitive; the integer
/// may be written in decimal or with a `0x`, `0o` or `0b` prefix) or a
/// float UNIX timestamp in UTC.
pub fn parse_tid(text: &str) -> Result<Tid, CommandError> {
    let error = || CommandError::Tid(text.to_owned());
    if let Some(prefix) = text.get(..4).filter(|p| p.eq_ignore_ascii_case("tid:")) {
        let number = &text[prefix.len()..];
        return parse_python_int(number).map(Tid).ok_or_else(error);
    }
    let seconds: f64 = text.trim().parse().map_err(|_| error())?;
    tid_from_unix(seconds).ok_or_else(error)
}

/// An unsigned integer in Python literal syntax (underscores allowed
/// between digits).
fn parse_python_int(text: &str) -> Option<u64> {
    let text = text.trim();
    let text = text.strip_prefix('+').unwrap_or(text);
    let lower = text.to_ascii_lowercase();
    let (radix, digits) = match lower.get(..2) {
        Some("0x") => (16, &lower[2..]),
        Some("0o") => (8, &lower[2..]),
        Some("0b") => (2, &lower[2..]),
        _ => (10, lower.as_str()),
    };
    let digits = digits.strip_prefix('_').unwrap_or(digits);
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || digits.starts_with('-')
        || digits.starts_with('+')
    {
        return None;
    }
    u64::from_str_radix(&digits.replace('_', ""), radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Option<Command>, CommandError> {
        let words: Vec<String> = line.split_whitespace().map(String::from).collect();
        parse_command(&words)
    }

    fn ok(line: &str) -> Command {
        parse(line).unwrap().unwrap()
    }

    fn s(n: u32) -> NodeId {
        NodeId::new(NodeType::Storage, n).unwrap()
    }

    #[test]
    fn no_words_means_command_list() {
        assert_eq!(parse(""), Ok(None));
    }

    #[test]
    fn print_commands() {
        assert_eq!(ok("print ids"), Command::PrintIds);
        assert_eq!(ok("print cluster"), Command::PrintCluster);
        assert_eq!(ok("print primary"), Command::PrintPrimary);
        assert_eq!(ok("print summary"), Command::PrintSummary);
        assert_eq!(
            ok("print pt"),
            Command::PrintPt {
                min: 0,
                max: 0,
                node: None
            }
        );
        assert_eq!(
            ok("print pt 2 5 S2"),
            Command::PrintPt {
                min: 2,
                max: 5,
                node: Some(s(2))
            }
        );
        assert_eq!(
            ok("print pt 2"),
            Command::PrintPt {
                min: 2,
                max: 0,
                node: None
            }
        );
        assert_eq!(ok("print node"), Command::PrintNode(None));
        assert_eq!(
            ok("print node Storage"),
            Command::PrintNode(Some(NodeType::Storage))
        );
        assert_eq!(
            ok("print node admin"),
            Command::PrintNode(Some(NodeType::Admin))
        );
    }

    #[test]
    fn unknown_words_are_invalid_commands() {
        for line in [
            "foo",
            "print foo",
            "print",
            "set",
            "set node S1 DOWN",
            "PRINT ids",
        ] {
            let error = parse(line).unwrap_err();
            assert_eq!(error, CommandError::InvalidCommand(line.into()));
            assert_eq!(error.to_string(), format!("invalid command: {line}"));
        }
    }

    #[test]
    fn wrong_arity_is_refused() {
        for line in [
            "print ids 1",
            "print pt 1 2 S1 4",
            "print node master admin",
            "set cluster",
            "set cluster RUNNING STOPPING",
            "set replicas",
            "start now",
            "add",
            "kill",
            "kill S1 S2",
            "drop",
            "truncate",
            "truncate 1 2",
            "prune_orphan",
            "prune_orphan 1",
            "flush_log x",
        ] {
            assert!(
                matches!(parse(line), Err(CommandError::Arity { .. })),
                "{line}"
            );
        }
        assert_eq!(
            parse("kill").unwrap_err().to_string(),
            "kill: wrong number of parameters (usage: kill node)"
        );
        assert_eq!(
            parse("start now").unwrap_err().to_string(),
            "start: wrong number of parameters (usage: start (no parameters))"
        );
    }

    #[test]
    fn set_commands() {
        assert_eq!(
            ok("set cluster STOPPING"),
            Command::SetCluster(ClusterState::Stopping)
        );
        assert_eq!(
            ok("set cluster stopping"),
            Command::SetCluster(ClusterState::Stopping)
        );
        assert_eq!(
            ok("set cluster starting_backup"),
            Command::SetCluster(ClusterState::StartingBackup)
        );
        assert_eq!(
            parse("set cluster FOO"),
            Err(CommandError::ClusterState("FOO".into()))
        );
        assert_eq!(ok("set replicas 1"), Command::SetReplicas(1));
        assert_eq!(parse("set replicas -1"), Err(CommandError::Replicas));
        assert_eq!(
            parse("set replicas -1").unwrap_err().to_string(),
            "invalid number of replicas"
        );
        assert!(matches!(
            parse("set replicas x"),
            Err(CommandError::Integer { .. })
        ));
        assert_eq!(ok("start"), Command::Start);
    }

    #[test]
    fn node_ids_must_be_upper_case_letter_and_number() {
        assert_eq!(parse_node_id("S1"), Ok(s(1)));
        assert_eq!(
            parse_node_id("M2"),
            Ok(NodeId::new(NodeType::Master, 2).unwrap())
        );
        assert_eq!(
            parse_node_id("C17").map(|n| n.to_string()),
            Ok("C17".into())
        );
        for bad in [
            "s1",
            "S",
            "S0",
            "S-1",
            "S+1",
            "X1",
            "1",
            "",
            "S1x",
            "S99999999",
        ] {
            assert_eq!(parse_node_id(bad), Err(CommandError::NodeId(bad.into())));
        }
        assert!(matches!(parse("kill s1"), Err(CommandError::NodeId(_))));
        assert!(matches!(
            parse("print node foo"),
            Err(CommandError::NodeType(_))
        ));
    }

    #[test]
    fn node_selections() {
        assert_eq!(ok("add all"), Command::Add(NodeSelection::All));
        assert_eq!(
            ok("add S2 S3"),
            Command::Add(NodeSelection::Nodes(vec![s(2), s(3)]))
        );
        assert_eq!(
            ok("tweak"),
            Command::Tweak {
                dry_run: false,
                drop: vec![]
            }
        );
        assert_eq!(
            ok("tweak -n S2"),
            Command::Tweak {
                dry_run: true,
                drop: vec![s(2)]
            }
        );
        assert_eq!(
            ok("tweak S1 S2"),
            Command::Tweak {
                dry_run: false,
                drop: vec![s(1), s(2)]
            }
        );
        assert_eq!(ok("kill S2"), Command::Kill(s(2)));
        assert_eq!(ok("drop S1"), Command::Drop(s(1)));
        assert_eq!(
            ok("prune_orphan 1 all"),
            Command::PruneOrphan {
                dry_run: true,
                nodes: NodeSelection::All
            }
        );
        assert_eq!(
            ok("prune_orphan 0 S1"),
            Command::PruneOrphan {
                dry_run: false,
                nodes: NodeSelection::Nodes(vec![s(1)])
            }
        );
        assert!(matches!(
            parse("prune_orphan 2 S1"),
            Err(CommandError::DryRun(_))
        ));
        assert_eq!(ok("flush_log"), Command::FlushLog);
    }

    #[test]
    fn tid_arguments() {
        // The examples of the command list (operations.md §11.4).
        assert_eq!(
            parse_tid("tid:257684787499560686"),
            Ok(Tid(257684787499560686))
        );
        assert_eq!(
            parse_tid("TID:0x3937af2eeeeeeee"),
            Ok(Tid(0x3937af2eeeeeeee))
        );
        assert_eq!(parse_tid("1325421296"), Ok(Tid(0x3937af2eeeeeeee)));
        assert_eq!(parse_tid("tid:0b101"), Ok(Tid(5)));
        assert_eq!(parse_tid("tid:1_000"), Ok(Tid(1000)));
        assert_eq!(parse_tid("0"), Ok(Tid(0x023c_2b00_0000_0000)));
        for bad in [
            "tid:", "tid:x", "tid:-1", "tid:0x", "abc", "nan", "inf", "tid:1__0",
        ] {
            assert_eq!(parse_tid(bad), Err(CommandError::Tid(bad.into())), "{bad}");
        }
        assert_eq!(ok("truncate tid:1"), Command::Truncate(Tid(1)));
    }

    #[test]
    fn check_arguments() {
        let target = |partition, reference| CheckTarget {
            partition,
            reference,
        };
        assert_eq!(
            ok("check"),
            Command::Check {
                targets: vec![],
                min_tid: Tid::ZERO,
                max_tid: None
            }
        );
        assert_eq!(
            ok("check 0:"),
            Command::Check {
                targets: vec![target(Some(0), None)],
                min_tid: Tid::ZERO,
                max_tid: None
            }
        );
        // NEO/py bug Q4: `tid:` words were taken for pairs.
        assert_eq!(
            ok("check 1:S2 tid:0 tid:0x7fffffffffffffff"),
            Command::Check {
                targets: vec![target(Some(1), Some(s(2)))],
                min_tid: Tid(0),
                max_tid: Some(Tid::MAX)
            }
        );
        assert_eq!(
            ok("check :S1"),
            Command::Check {
                targets: vec![target(None, Some(s(1)))],
                min_tid: Tid::ZERO,
                max_tid: None
            }
        );
        assert!(
            matches!(ok("check 0:S1 :S2"), Command::Check { targets, .. } if targets.len() == 2)
        );
        assert!(matches!(parse("check 1 0:S1"), Err(CommandError::Check(_))));
        assert!(matches!(parse("check 1 2 3"), Err(CommandError::Check(_))));
        assert!(matches!(
            parse("check x:S1"),
            Err(CommandError::Integer { .. })
        ));
        assert!(matches!(parse("check 0:s1"), Err(CommandError::NodeId(_))));
    }
}
