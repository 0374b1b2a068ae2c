//! The progress bar on stderr: drawn only on a terminal and without `-q`,
//! so that scripts and logs get NEO/py's output alone.

use std::fmt;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use indicatif::{
    HumanBytes, HumanCount, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle,
};

/// How often the bar is redrawn at most; more is only terminal traffic.
const REFRESH_PER_SECOND: u8 = 4;

/// The bar of an import, whose source's size is known.
const BYTES_TEMPLATE: &str =
    "{wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}";

/// The bar of an export, whose number of transactions is known.
const TRANSACTIONS_TEMPLATE: &str =
    "{wide_bar} {human_pos}/{human_len} transactions {rate} ETA {eta} {msg}";

/// What the bar's position counts.
#[derive(Clone, Copy, Debug)]
enum Unit {
    Bytes,
    Transactions,
}

#[derive(Debug, Default)]
struct Counts {
    unit: OnceLock<Unit>,
    transactions: AtomicU64,
    bytes: AtomicU64,
}

/// Progress of one copy: transactions and bytes done. Cheap to clone and
/// shared with the copy's threads.
#[derive(Clone, Debug)]
pub struct Progress {
    bar: ProgressBar,
    counts: Arc<Counts>,
}

impl Progress {
    /// A bar on stderr if `wanted` and stderr is a terminal, else one
    /// that only counts.
    pub fn new(wanted: bool) -> Progress {
        let bar = if wanted && std::io::stderr().is_terminal() {
            ProgressBar::with_draw_target(
                None,
                ProgressDrawTarget::stderr_with_hz(REFRESH_PER_SECOND),
            )
        } else {
            ProgressBar::hidden()
        };
        Progress {
            bar,
            counts: Arc::default(),
        }
    }

    /// Starts counting towards `total` bytes (and transactions as they come).
    pub fn start_bytes(&self, total: u64) {
        self.start(Unit::Bytes, total, BYTES_TEMPLATE);
    }

    /// Starts counting towards `total` transactions (and bytes).
    pub fn start_transactions(&self, total: u64) {
        self.start(Unit::Transactions, total, TRANSACTIONS_TEMPLATE);
    }

    fn start(&self, unit: Unit, total: u64, template: &str) {
        let _ = self.counts.unit.set(unit);
        // The templates are constants: one that does not parse is a bug
        // that a test of this module shows, not worth failing a copy.
        if let Ok(style) = ProgressStyle::with_template(template) {
            let style = style
                .progress_chars("=> ")
                // indicatif's {per_sec} has four decimals.
                .with_key("rate", |state: &ProgressState, out: &mut dyn fmt::Write| {
                    let _ = write!(out, "{:.0}/s", state.per_sec());
                });
            self.bar.set_style(style);
        }
        self.bar.set_length(total);
        self.bar.enable_steady_tick(Duration::from_millis(500));
    }

    /// One more transaction done, of `bytes` bytes (record data for an
    /// export, the transaction's length in the file for an import).
    pub fn advance(&self, bytes: u64) {
        let counts = &self.counts;
        let transactions = counts.transactions.fetch_add(1, Ordering::Relaxed) + 1;
        let total_bytes = counts.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        match counts.unit.get() {
            Some(Unit::Bytes) => {
                self.bar.set_position(total_bytes);
                self.bar
                    .set_message(format!("{} transactions", HumanCount(transactions)));
            }
            Some(Unit::Transactions) | None => {
                self.bar.set_position(transactions);
                self.bar.set_message(HumanBytes(total_bytes).to_string());
            }
        }
    }

    /// Transactions done so far.
    pub fn transactions(&self) -> u64 {
        self.counts.transactions.load(Ordering::Relaxed)
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_without_a_terminal() {
        let progress = Progress::new(false);
        progress.start_bytes(100);
        progress.advance(30);
        progress.advance(20);
        assert_eq!(progress.transactions(), 2);
        assert_eq!(progress.bar.position(), 50);
        assert_eq!(progress.bar.message(), "2 transactions");
        let progress = Progress::new(false);
        progress.start_transactions(10);
        progress.advance(2048);
        assert_eq!(progress.bar.position(), 1);
        assert_eq!(progress.bar.message(), "2.00 KiB");
        progress.finish();
    }

    #[test]
    fn templates_parse() {
        for template in [BYTES_TEMPLATE, TRANSACTIONS_TEMPLATE] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }
}
