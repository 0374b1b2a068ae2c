//! The log of every NEO program: daemons, `neoctl`, the client library.
//!
//! A record is one line (a multi-line message repeats the prefix on each
//! line), in one format everywhere, which `neolog` reads back:
//!
//! ```text
//! 2026-12-06T07:52:08.123456Z INFO  S1 neo_storage::node::master: identified to the primary master nid=S1
//! ```
//!
//! UTC time in RFC 3339 with microseconds, level, node (its NID once it has
//! one, the program's name before), module, message and fields. Escape codes
//! only go to a terminal.
//!
//! Records are written through, one `write` each: nothing waits in memory,
//! so no exit, clean or not, loses a record (NEO/py keeps a backlog and loses
//! it on exit, operations.md §7.1, §10 Q9). [`flush`] makes the file durable
//! (fsync): that is what SIGRTMIN and `neoctl flush_log` mean here.
//!
//! The packet log (a line per packet sent or received, at DEBUG on the
//! target [`PACKET_TARGET`]) is switched at runtime by [`set_packet_log`],
//! so an operator can watch a live node's traffic without restarting it.

mod line;

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::SystemTime;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{reload, EnvFilter, Registry};

pub use line::{parse_line, Line, ParseLineError};

/// The target of packet records (`neolog --packet` reads them).
pub const PACKET_TARGET: &str = "neo::packet";

/// Level filter when neither the option nor the environment sets one.
const DEFAULT_FILTER: &str = "info";

/// A failure to set up or to change the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open log file {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot sync log file {}: {source}", path.display())]
    Sync { path: PathBuf, source: io::Error },
    #[error("invalid log filter {filter:?} (from {origin}): {reason}")]
    Filter {
        filter: String,
        origin: &'static str,
        reason: String,
    },
    #[error("logging is already set up in this process")]
    AlreadySetUp,
    #[error("logging is not set up")]
    NotSetUp,
    #[error("cannot change the log filter: {0}")]
    Reload(String),
}

/// How a program logs.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogOptions<'a> {
    /// Names the node until it has a NID (`master`, `neoctl`...).
    pub program: &'a str,
    /// Appends to this file; stderr without one.
    pub file: Option<&'a Path>,
    /// Levels and per-module filters (`info,neo_storage=debug`); else
    /// `RUST_LOG`, else `NEO_LOG`, else `info`.
    pub filter: Option<&'a str>,
}

/// The handles that change a running log.
pub struct Logging {
    file: Option<Arc<LogFile>>,
    /// The filter as configured, without any packet directive.
    base_filter: String,
    filter: reload::Handle<EnvFilter, Registry>,
}

static LOGGING: OnceLock<Logging> = OnceLock::new();

/// What fills the node column: the program's name, then the NID.
static NODE: RwLock<String> = RwLock::new(String::new());

/// Sets up this process's log. Fails if it was already set up.
pub fn init(options: LogOptions<'_>) -> Result<(), LogError> {
    let (subscriber, logging) = build(options)?;
    tracing::subscriber::set_global_default(subscriber).map_err(|_| LogError::AlreadySetUp)?;
    LOGGING.set(logging).map_err(|_| LogError::AlreadySetUp)
}

/// Logs this process to `path` from now on: sets the log up (as
/// `program`, filtered by `RUST_LOG`) the first time, switches the file
/// after (a library configured again: one log per process, the last file
/// configured wins).
pub fn log_to(program: &str, path: &Path) -> Result<(), LogError> {
    let options = LogOptions {
        program,
        file: Some(path),
        filter: None,
    };
    match init(options) {
        Err(LogError::AlreadySetUp) => logging()?.log_to(path),
        outcome => outcome,
    }
}

/// The process's log, if [`init`] set it up.
pub fn logging() -> Result<&'static Logging, LogError> {
    LOGGING.get().ok_or(LogError::NotSetUp)
}

/// Whether the label is the process's, whatever its nodes say.
static PINNED: AtomicBool = AtomicBool::new(false);

/// Names every later line `label`, and keeps it: for a process running
/// several nodes (`neosimple`), whose NIDs would overwrite each other.
pub fn pin_node(label: &str) {
    set_node(label);
    PINNED.store(true, Ordering::Relaxed);
}

/// Names the node in every later line (its NID once it is identified),
/// unless the label is pinned.
pub fn set_node(label: &str) {
    if PINNED.load(Ordering::Relaxed) {
        return;
    }
    // The column is one word: `neolog` splits on spaces.
    let label: String = label
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    *NODE.write().unwrap_or_else(PoisonError::into_inner) = label;
}

/// Makes the log file durable, if the process logs to one.
pub fn flush() -> Result<(), LogError> {
    match LOGGING.get() {
        Some(logging) => logging.flush(),
        None => Ok(()),
    }
}

/// `neoctl flush_log` reached this node: its log is made durable. A
/// failure is logged, not fatal.
pub fn flush_requested() {
    match flush() {
        Ok(()) => tracing::debug!("flush_log: log file synced"),
        Err(error) => tracing::warn!("flush_log: {error}"),
    }
}

/// Switches the packet log of the process on or off.
pub fn set_packet_log(on: bool) -> Result<(), LogError> {
    logging()?.set_packet_log(on)
}

/// Whether packets are logged now.
pub fn packet_log_enabled() -> bool {
    tracing::enabled!(target: PACKET_TARGET, Level::DEBUG)
}

/// The subscriber `init` installs, and its handles (tests install the
/// subscriber for one thread only).
pub fn build(
    options: LogOptions<'_>,
) -> Result<(impl Subscriber + Send + Sync + 'static, Logging), LogError> {
    let (base_filter, origin) = match options.filter {
        Some(filter) => (filter.to_owned(), "the log level option"),
        None => match std::env::var("RUST_LOG") {
            Ok(filter) => (filter, "RUST_LOG"),
            Err(_) => match std::env::var("NEO_LOG") {
                Ok(filter) => (filter, "NEO_LOG"),
                Err(_) => (DEFAULT_FILTER.to_owned(), "the default"),
            },
        },
    };
    let filter = parse_filter(&base_filter, origin)?;
    let (filter, handle) = reload::Layer::new(filter);
    let file = options.file.map(LogFile::open).transpose()?.map(Arc::new);
    let ansi = file.is_none() && io::stderr().is_terminal();
    let destination = match &file {
        Some(file) => Destination::File(Arc::clone(file)),
        None => Destination::Stderr,
    };
    let lines = tracing_subscriber::fmt::layer()
        .event_format(LineFormat)
        .with_ansi(ansi)
        .with_writer(destination);
    set_node(options.program);
    let subscriber = Registry::default().with(filter).with(lines);
    Ok((
        subscriber,
        Logging {
            file,
            base_filter,
            filter: handle,
        },
    ))
}

fn parse_filter(filter: &str, origin: &'static str) -> Result<EnvFilter, LogError> {
    EnvFilter::try_new(filter).map_err(|error| LogError::Filter {
        filter: filter.to_owned(),
        origin,
        reason: error.to_string(),
    })
}

impl Logging {
    /// The log file, if any.
    pub fn path(&self) -> Option<PathBuf> {
        self.file.as_ref().map(|file| file.lock().0.clone())
    }

    /// Opens the file's path again: after logrotate renamed the file, the
    /// next lines go to a new file at the same path. Without a file, nothing.
    pub fn reopen(&self) -> Result<(), LogError> {
        match &self.file {
            Some(file) => file.reopen(None),
            None => Ok(()),
        }
    }

    /// Logs to `path` from now on (a client configured again).
    pub fn log_to(&self, path: &Path) -> Result<(), LogError> {
        match &self.file {
            Some(file) => file.reopen(Some(path)),
            None => Err(LogError::NotSetUp),
        }
    }

    /// fsyncs the log file (lines are already written through).
    pub fn flush(&self) -> Result<(), LogError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let guard = file.lock();
        guard.1.sync_data().map_err(|source| LogError::Sync {
            path: guard.0.clone(),
            source,
        })
    }

    /// Adds or removes the packet log, keeping the configured filter.
    pub fn set_packet_log(&self, on: bool) -> Result<(), LogError> {
        let mut directives: Vec<&str> = self
            .base_filter
            .split(',')
            .map(str::trim)
            .filter(|directive| !directive.is_empty() && !directive.starts_with(PACKET_TARGET))
            .collect();
        let packets = format!("{PACKET_TARGET}={}", if on { "debug" } else { "off" });
        directives.push(&packets);
        let filter = parse_filter(&directives.join(","), "the packet log switch")?;
        self.filter
            .reload(filter)
            .map_err(|error| LogError::Reload(error.to_string()))
    }
}

/// A log file that logrotate can move away.
struct LogFile(Mutex<(PathBuf, File)>);

impl LogFile {
    fn open(path: &Path) -> Result<Self, LogError> {
        Ok(Self(Mutex::new((path.to_owned(), append_to(path)?))))
    }

    fn lock(&self) -> MutexGuard<'_, (PathBuf, File)> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Switches to a fresh file at `path` (the current path if `None`).
    /// The old one stays open until the new one is.
    fn reopen(&self, path: Option<&Path>) -> Result<(), LogError> {
        let mut guard = self.lock();
        let path = path.map_or_else(|| guard.0.clone(), Path::to_owned);
        let file = append_to(&path)?;
        *guard = (path, file);
        Ok(())
    }
}

fn append_to(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogError::Open {
            path: path.to_owned(),
            source,
        })
}

#[derive(Clone)]
enum Destination {
    Stderr,
    File(Arc<LogFile>),
}

/// Where one record goes. The formatter hands over a whole record in one
/// `write_all` under the file's lock, so records never interleave.
enum DestinationWriter<'a> {
    Stderr(io::Stderr),
    File(MutexGuard<'a, (PathBuf, File)>),
}

impl<'a> MakeWriter<'a> for Destination {
    type Writer = DestinationWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        match self {
            Destination::Stderr => DestinationWriter::Stderr(io::stderr()),
            Destination::File(file) => DestinationWriter::File(file.lock()),
        }
    }
}

impl Write for DestinationWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            DestinationWriter::Stderr(stderr) => stderr.write(bytes),
            DestinationWriter::File(file) => file.1.write(bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            DestinationWriter::Stderr(stderr) => stderr.flush(),
            DestinationWriter::File(file) => file.1.flush(),
        }
    }
}

/// Formats records as the module documentation shows.
struct LineFormat;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let metadata = event.metadata();
        let mut message = String::new();
        ctx.format_fields(Writer::new(&mut message), event)?;
        let time = humantime::format_rfc3339_micros(SystemTime::now());
        let level = metadata.level();
        let (colour, reset) = if writer.has_ansi_escapes() {
            (level_colour(level), "\x1b[0m")
        } else {
            ("", "")
        };
        let node = NODE.read().unwrap_or_else(PoisonError::into_inner);
        let node = if node.is_empty() { "-" } else { node.as_str() };
        let target = metadata.target();
        for text in message.split('\n') {
            writeln!(
                writer,
                "{time} {colour}{:<5}{reset} {node} {target}: {text}",
                level.as_str()
            )?;
        }
        Ok(())
    }
}

fn level_colour(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "\x1b[31m",
        Level::WARN => "\x1b[33m",
        Level::INFO => "\x1b[32m",
        Level::DEBUG => "\x1b[34m",
        Level::TRACE => "\x1b[2m",
    }
}

#[cfg(test)]
mod tests;
