//! What a run did, as lines: the last ones are kept to explain a failure,
//! and every one goes into a hash so that a replay can be compared with
//! the run it replays, line for line, at the cost of eight bytes.

use std::collections::VecDeque;

/// Lines kept for a failure report.
const KEPT: usize = 400;

/// The trace of one run.
#[derive(Debug)]
pub struct Trace {
    last: VecDeque<String>,
    /// FNV-1a over every line, newline included.
    hash: u64,
    lines: u64,
    /// Print every line as it comes (`NEO_SIM_TRACE=1`).
    echo: bool,
}

impl Trace {
    /// An empty trace; `echo` prints each line to stderr too.
    pub fn new(echo: bool) -> Trace {
        Trace {
            last: VecDeque::with_capacity(KEPT),
            hash: 0xcbf2_9ce4_8422_2325,
            lines: 0,
            echo,
        }
    }

    /// Adds a line stamped with the virtual time in microseconds.
    pub fn line(&mut self, micros: u64, text: std::fmt::Arguments<'_>) {
        let line = format!("{:4}.{:06} {text}", micros / 1_000_000, micros % 1_000_000);
        for byte in line.bytes().chain([b'\n']) {
            self.hash = (self.hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self.lines += 1;
        if self.echo {
            eprintln!("{line}");
        }
        if self.last.len() == KEPT {
            self.last.pop_front();
        }
        self.last.push_back(line);
    }

    /// The hash of every line so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// How many lines there were.
    pub fn count(&self) -> u64 {
        self.lines
    }

    /// The last lines, oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.last.iter().cloned().collect()
    }
}
