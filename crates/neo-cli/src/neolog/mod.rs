//! `neolog`: prints log files merged by time, filtered by node, time
//! range, level and packet type, and follows them as they grow
//! (operations.md §7.4). It reads our text logs (also `.gz`, and `.bz2`,
//! `.xz`, `.zst` through the system's decompressors) and NEO/py's SQLite
//! log databases.

mod source;

use std::collections::HashSet;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Local, NaiveDateTime, TimeZone};
use clap::Parser;

pub use source::{Record, Severity, Source, SourceError};

/// `neolog`'s options: NEO/py's, and `--until`, `-l`, `-p` of ours.
#[derive(Debug, Parser)]
#[command(name = "neolog", about = "Print NEO log files merged by time")]
pub struct NeologOptions {
    /// Also print packets' arguments.
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    /// Colour each line by level.
    #[arg(short = 'c', long = "color")]
    pub color: bool,
    /// Date format (strftime, local time); empty: no date column.
    #[arg(short = 'd', long = "date", default_value = "%F %T")]
    pub date: String,
    /// Keep printing records as they are written.
    #[arg(short = 'f', long = "follow")]
    pub follow: bool,
    /// With -f, send SIGRTMIN (flush the log) to this process at every
    /// pass (NEO/py's nodes need it; ours write through).
    #[arg(short = 'F', long = "flush", value_name = "PID")]
    pub flush: Vec<i32>,
    /// Only these nodes' records (`M1`, `S2`...); `-` hides the node column.
    #[arg(short = 'n', long = "node", value_name = "NODE")]
    pub node: Vec<String>,
    /// Seconds between two passes of -f.
    #[arg(short = 's', long = "sleep-interval", default_value_t = 1.0, value_parser = positive_seconds)]
    pub sleep_interval: f64,
    /// Only records at or after: UNIX time (N > 0), seconds before now
    /// (N < 0), or a date (`2026-12-06 07:52:08`, local time).
    #[arg(long = "from", value_name = "TIME", allow_hyphen_values = true, value_parser = parse_time)]
    pub from: Option<f64>,
    /// Only records at or before this time (same forms as --from).
    #[arg(long = "until", value_name = "TIME", allow_hyphen_values = true, value_parser = parse_time)]
    pub until: Option<f64>,
    /// Only records at this level or above: TRACE, DEBUG (and packets),
    /// INFO, WARNING, ERROR, CRITICAL.
    #[arg(short = 'l', long = "level", value_parser = parse_level)]
    pub level: Option<Severity>,
    /// Only packet records of this type (`AskObject`...).
    #[arg(short = 'p', long = "packet", value_name = "NAME")]
    pub packet: Vec<String>,
    /// Log files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds.is_finite() => Ok(seconds),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

fn parse_level(text: &str) -> Result<Severity, String> {
    let severity = match text.to_ascii_uppercase().as_str() {
        "TRACE" => Severity::Trace,
        "DEBUG" => Severity::Debug,
        "INFO" => Severity::Info,
        "WARN" | "WARNING" => Severity::Warning,
        "ERROR" => Severity::Error,
        "CRITICAL" => Severity::Critical,
        _ => return Err(format!("unknown level {text:?}")),
    };
    Ok(severity)
}

/// A time of `--from`/`--until`, in UNIX seconds.
fn parse_time(text: &str) -> Result<f64, String> {
    if let Ok(number) = text.parse::<f64>() {
        if number.is_finite() && number != 0.0 {
            return Ok(if number > 0.0 {
                number
            } else {
                neo_net::shell::now() + number
            });
        }
    }
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(seconds_of(time.timestamp(), time.timestamp_subsec_micros()));
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S%.f",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            if let Some(time) = Local.from_local_datetime(&naive).earliest() {
                return Ok(seconds_of(time.timestamp(), time.timestamp_subsec_micros()));
            }
        }
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        if let Some(time) = date
            .and_hms_opt(0, 0, 0)
            .and_then(|naive| Local.from_local_datetime(&naive).earliest())
        {
            return Ok(time.timestamp() as f64);
        }
    }
    Err(format!(
        "{text:?} is neither a UNIX time, nor seconds before now, nor a date"
    ))
}

fn seconds_of(seconds: i64, micros: u32) -> f64 {
    seconds as f64 + f64::from(micros) / 1e6
}

/// The filters of one run.
struct Filter {
    nodes: HashSet<String>,
    packets: HashSet<String>,
    level: Option<Severity>,
    from: Option<f64>,
    until: Option<f64>,
}

impl Filter {
    fn keeps(&self, record: &Record) -> bool {
        (self.nodes.is_empty() || self.nodes.contains(&record.node))
            && (self.packets.is_empty()
                || record
                    .packet
                    .as_ref()
                    .is_some_and(|name| self.packets.contains(name)))
            && self
                .level
                .is_none_or(|minimum| record.severity.at_least(minimum))
            && self.from.is_none_or(|from| record.time >= from)
            && self.until.is_none_or(|until| record.time <= until)
    }
}

/// Writes records as NEO/py's neolog does:
/// `«date».«4 digits» «LEVEL» «node» «text»`.
struct Printer<'a> {
    options: &'a NeologOptions,
    hide_node: bool,
}

impl Printer<'_> {
    fn print(&self, out: &mut impl Write, record: &Record) -> io::Result<()> {
        let mut prefix = String::new();
        if !self.options.date.is_empty() {
            let seconds = record.time.floor();
            let fraction = ((record.time - seconds) * 1e4) as u32;
            if let Some(time) = Local.timestamp_opt(seconds as i64, 0).single() {
                // A format chrono cannot render prints as it is.
                let mut date = String::new();
                if std::fmt::write(
                    &mut date,
                    format_args!("{}", time.format(&self.options.date)),
                )
                .is_err()
                {
                    date = self.options.date.clone();
                }
                prefix.push_str(&format!("{date}.{fraction:04} "));
            }
        }
        let (colour, reset) = if self.options.color {
            (colour_of(record.severity), "\x1b[39;49;0m")
        } else {
            ("", "")
        };
        if !self.options.color {
            prefix.push_str(&format!("{:<9} ", record.severity.name()));
        }
        if !self.hide_node {
            prefix.push_str(&format!("{:<10} ", record.node));
        }
        let mut text = record.text.clone();
        if let (true, Some(arguments)) = (self.options.all, &record.arguments) {
            text.push_str(" \t| ");
            text.push_str(arguments);
        }
        for line in text.split('\n') {
            writeln!(out, "{colour}{prefix}{line}{reset}")?;
        }
        Ok(())
    }
}

fn colour_of(severity: Severity) -> &'static str {
    match severity {
        Severity::Trace | Severity::Debug => "\x1b[34m",
        Severity::Info => "\x1b[32m",
        Severity::Warning => "\x1b[33m",
        Severity::Error => "\x1b[31m",
        Severity::Critical => "\x1b[31;01m",
        Severity::Packet | Severity::Unreadable => "",
    }
}

/// Prints the files' records merged by time, then, with `-f`, what is
/// written to them until the output is closed.
pub fn run(options: &NeologOptions, out: &mut impl Write) -> Result<(), NeologError> {
    let mut sources = options
        .files
        .iter()
        .map(|path| Source::open(path))
        .collect::<Result<Vec<_>, _>>()?;
    let hide_node = options.node.iter().any(|node| node == "-");
    let filter = Filter {
        nodes: options
            .node
            .iter()
            .filter(|node| *node != "-")
            .cloned()
            .collect(),
        packets: options.packet.iter().cloned().collect(),
        level: options.level,
        from: options.from,
        until: options.until,
    };
    let printer = Printer { options, hide_node };
    loop {
        let mut records: Vec<Record> = sources.iter_mut().flat_map(Source::read_new).collect();
        // Stable: records of one file keep their order on equal times.
        records.sort_by(|a, b| a.time.total_cmp(&b.time));
        for record in records.iter().filter(|record| filter.keeps(record)) {
            printer.print(out, record)?;
        }
        out.flush()?;
        if !options.follow {
            return Ok(());
        }
        for pid in &options.flush {
            flush_process(*pid);
        }
        std::thread::sleep(Duration::from_secs_f64(options.sleep_interval));
    }
}

/// SIGRTMIN to `pid`: NEO/py's nodes write their log backlog. Through
/// kill(1): this crate has no unsafe code, which libc::kill would need.
fn flush_process(pid: i32) {
    let status = Command::new("kill")
        .arg(format!("-{}", libc::SIGRTMIN()))
        .arg(pid.to_string())
        .stderr(std::process::Stdio::null())
        .status();
    if !status.is_ok_and(|status| status.success()) {
        eprintln!("neolog: cannot signal process {pid}");
    }
}

/// Why `neolog` stopped.
#[derive(Debug, thiserror::Error)]
pub enum NeologError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot write: {0}")]
    Output(#[from] io::Error),
}
