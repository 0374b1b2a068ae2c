//! The import's background steps (architecture.md §12.7 step 4): one chunk
//! of what the reading thread prepared is inserted per step, between
//! client requests, committed at most once a second with whatever else is
//! waiting; the progress is logged every [`REPORT_SECONDS`].

use neo_cluster::UnixTime;

use super::{Handled, Storage, DEFERRED_COMMIT_SECONDS};
use crate::db::ImportStep;

/// How long to wait before looking again when the reading thread had
/// nothing ready.
const RETRY_SECONDS: f64 = 0.02;
/// How often the progress is logged.
const REPORT_SECONDS: f64 = 10.0;

/// The node's side of an import.
#[derive(Debug, Default)]
pub(super) struct Importing {
    /// When to look again for what the reading thread prepared.
    retry_at: Option<UnixTime>,
    /// When the first step ran, and when progress was last logged.
    started: Option<UnixTime>,
    reported: UnixTime,
}

impl Importing {
    /// When the next step may run, if the reading thread was not ready.
    pub(super) fn retry_at(&self) -> Option<UnixTime> {
        self.retry_at
    }
}

impl Storage {
    /// Whether an import step is due now.
    pub(super) fn has_import_step(&self) -> bool {
        self.db.importing() && self.importing.retry_at.is_none_or(|at| self.now >= at)
    }

    /// One background step of the import.
    pub(super) fn import_step(&mut self) -> Handled {
        if !self.has_import_step() {
            return Ok(());
        }
        self.importing.retry_at = None;
        let started = *self.importing.started.get_or_insert(self.now);
        match self.db.import_step()? {
            ImportStep::Idle => {}
            ImportStep::Waiting => self.importing.retry_at = Some(self.now + RETRY_SECONDS),
            ImportStep::Inserted(_) => {
                self.commit_due
                    .get_or_insert(self.now + DEFERRED_COMMIT_SECONDS);
                if self.now - self.importing.reported >= REPORT_SECONDS {
                    self.importing.reported = self.now;
                    self.report_import(started);
                }
            }
            ImportStep::Finished => {
                self.report_import(started);
                // Pack orders waited for the import.
                self.maybe_pack()?;
            }
        }
        Ok(())
    }

    /// One background step of write-back.
    pub(super) fn writeback_step(&mut self) -> Handled {
        if self.db.writeback_due() {
            let written = self.db.writeback_step()?;
            if written > 0 {
                tracing::debug!(written, "transactions written back to the source");
            }
        }
        Ok(())
    }

    /// Logs how far the import went.
    fn report_import(&self, started: UnixTime) {
        if let Some(summary) = self.import_summary(started) {
            tracing::info!("{summary}");
        }
    }

    /// How far the import went, in one line; `None` without the Importer.
    fn import_summary(&self, started: UnixTime) -> Option<String> {
        let progress = self.db.import_progress()?;
        if progress.done {
            return Some(
                "import: all data are imported; restart this storage with its native backend"
                    .to_owned(),
            );
        }
        let elapsed = (self.now - started).max(1e-3);
        let rate = progress.bytes as f64 / elapsed;
        let left = progress.total.saturating_sub(progress.bytes) as f64;
        let eta = if rate > 0.0 {
            format!("{:.0} s", left / rate)
        } else {
            "unknown".to_owned()
        };
        Some(format!(
            "import: {:.1}% ({} transactions, {:.1} of {:.1} MiB, {:.1} MiB/s, ETA {eta})",
            if progress.total == 0 {
                100.0
            } else {
                progress.bytes as f64 * 100.0 / progress.total as f64
            },
            progress.transactions,
            progress.bytes as f64 / 1048576.0,
            progress.total as f64 / 1048576.0,
            rate / 1048576.0,
        ))
    }

    /// `AskMonitorInformation` from anyone (the admin asks each storage,
    /// unidentified): the import's progress as the summary, and a warning
    /// (`[nil]`: this node) while it goes on, so that the admin asks
    /// again; all empty without the Importer. NEO/py's storages refuse
    /// the question.
    pub(super) fn answer_monitor_information(&mut self, conn: neo_net::ConnId, msg_id: u32) {
        let started = self.importing.started.unwrap_or(self.now);
        let summary = self.import_summary(started).unwrap_or_default();
        let warning = if self.db.importing() {
            vec![None]
        } else {
            Vec::new()
        };
        self.answer(
            conn,
            msg_id,
            neo_proto::packets::AnswerMonitorInformation {
                warning,
                problem: Vec::new(),
                summary,
            },
        );
    }
}
