//! The monitoring summary of one cluster (operations.md §4.2, §4.3): its
//! severity and the one-line text `neoctl print summary` shows.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use neo_cluster::datetime_of_tid;
use neo_proto::{CellState, ClusterState, Tid};

/// How bad things are, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Operational, every cell up to date.
    Ok,
    /// Operational, but some cell is not up to date.
    Warning,
    /// Not operational, or a storage with cells is not running.
    Problem,
}

/// What the admin knows of a cluster when it builds a report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterReport {
    /// `None` when nothing is known yet.
    pub state: Option<ClusterState>,
    /// Number of cells in each state over the whole partition table.
    pub histogram: BTreeMap<CellState, usize>,
    /// Storage nodes that own cells but are not running.
    pub down: usize,
    /// Last committed TID (the backup TID in BACKINGUP), when asked.
    pub last_tid: Option<Tid>,
}

impl ClusterReport {
    /// Severity rules of operations.md §4.2 for the admin's own cluster.
    pub fn severity(&self) -> Severity {
        let operational = matches!(
            self.state,
            Some(ClusterState::Running | ClusterState::BackingUp)
        );
        if self.down > 0 || !operational {
            Severity::Problem
        } else if self
            .histogram
            .keys()
            .any(|state| *state != CellState::UpToDate)
        {
            Severity::Warning
        } else {
            Severity::Ok
        }
    }

    /// `STATE[; CELLSTATE=n, …][; DOWN=n][; ltid=… (…)]`, or `None` when
    /// nothing is known. The histogram follows the cell states' own order.
    pub fn line(&self) -> String {
        let Some(state) = self.state else {
            return "None".to_owned();
        };
        let mut line = state.name().to_owned();
        if !self.histogram.is_empty() {
            let cells: Vec<String> = self
                .histogram
                .iter()
                .map(|(state, count)| format!("{state}={count}"))
                .collect();
            let _ = write!(line, "; {}", cells.join(", "));
        }
        if self.down > 0 {
            let _ = write!(line, "; DOWN={}", self.down);
        }
        if matches!(state, ClusterState::Running | ClusterState::BackingUp) {
            if let Some(tid) = self.last_tid {
                let _ = write!(line, "; ltid={tid} ({})", tid_time(tid));
            }
        }
        line
    }
}

/// The UTC time a TID encodes, as Python's `str(datetime)` prints it:
/// `YYYY-MM-DD HH:MM:SS`, and `.ffffff` only when the microseconds are not
/// zero. The fraction is truncated to the microsecond, which matches what
/// NEO/py printed in the captured sessions.
pub fn tid_time(tid: Tid) -> String {
    let Some(when) = datetime_of_tid(tid) else {
        return format!("invalid date ({tid})");
    };
    // The low 32 bits count 60/2^32 s; integer arithmetic avoids float
    // rounding at the second and microsecond boundaries.
    let low = u128::from(tid.0 & 0xffff_ffff);
    let micros = (low * 60_000_000) >> 32;
    let (second, micros) = (micros / 1_000_000, micros % 1_000_000);
    let mut text = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        when.year, when.month, when.day, when.hour, when.minute, second
    );
    if micros > 0 {
        let _ = write!(text, ".{micros:06}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tid_times_print_as_python_does() {
        // From session-basic.jsonl seq 425 and operations.md §11.5.
        assert_eq!(
            tid_time(Tid(0x040d_42d9_fef9_3adc)),
            "2026-11-25 21:45:59.759426"
        );
        assert_eq!(tid_time(Tid::ZERO), "1900-01-01 00:00:00");
    }

    #[test]
    fn lines_follow_operations_4_3() {
        let mut report = ClusterReport {
            state: Some(ClusterState::Running),
            histogram: [(CellState::UpToDate, 8)].into_iter().collect(),
            down: 0,
            last_tid: Some(Tid(0x040d_42d9_fef9_3adc)),
        };
        assert_eq!(
            report.line(),
            "RUNNING; UP_TO_DATE=8; ltid=040d42d9fef93adc (2026-11-25 21:45:59.759426)"
        );
        assert_eq!(report.severity(), Severity::Ok);

        report.histogram = [(CellState::UpToDate, 12), (CellState::OutOfDate, 12)]
            .into_iter()
            .collect();
        report.down = 1;
        report.last_tid = Some(Tid::ZERO);
        assert_eq!(
            report.line(),
            "RUNNING; OUT_OF_DATE=12, UP_TO_DATE=12; DOWN=1; ltid=0000000000000000 (1900-01-01 00:00:00)"
        );
        assert_eq!(report.severity(), Severity::Problem);
        report.down = 0;
        assert_eq!(report.severity(), Severity::Warning);

        let recovering = ClusterReport {
            state: Some(ClusterState::Recovering),
            ..ClusterReport::default()
        };
        assert_eq!(recovering.line(), "RECOVERING");
        assert_eq!(recovering.severity(), Severity::Problem);
        assert_eq!(ClusterReport::default().line(), "None");
    }
}
