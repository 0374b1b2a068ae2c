//! Options of the daemons `neomaster`, `neostorage` and `neoadmin`
//! (operations.md §1.0–§1.3, §2.2): the command line merged with the
//! section of a configuration file (`-f`, `-s`), the command line winning.
//!
//! Each option is declared once in a table ([`Spec`]): its key (the long
//! name with `_`, also the configuration key), its short and long forms and
//! its type. The command line is parsed by clap from that table; values
//! then come from the command line, else from the file, else the program's
//! default, and are converted with errors naming where the bad value came
//! from (`argument -b/--bind` or `neo.conf:12: bind`).
//!
//! Unlike NEO/py under Python 3 (operations.md §10, Q1), options given only
//! in the file count, including the required `cluster` and `database`.
//! Host names are kept unresolved: resolving is I/O, left to the daemon.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use clap::parser::ValueSource;
use neo_proto::{Address, NodeId};
// The engine names and paths of `-a` and `-d` are the storage's own.
pub use neo_storage::backend::{expand_user, Adapter};

use crate::conf::{parse_bool, ConfError, ConfigFile};

/// Master listening address when none is given.
pub const DEFAULT_MASTER_BIND: &str = "127.0.0.1:10000";
/// Admin listening address when none is given.
pub const DEFAULT_ADMIN_BIND: &str = "127.0.0.1:9999";
/// Storage listening address when none is given (ephemeral port).
pub const DEFAULT_STORAGE_BIND: &str = "127.0.0.1";
/// Masters contacted by storages and admins when none are given.
pub const DEFAULT_MASTERS: &str = "127.0.0.1:10000";
/// Partitions of a new database.
pub const DEFAULT_PARTITIONS: u32 = 100;
/// Port of the SMTP relay when `--smtp` gives none.
pub const DEFAULT_SMTP_PORT: u16 = 25;

/// NEO/py's message when only some of `--ca`, `--cert`, `--key` are given.
pub const TLS_INCOMPLETE: &str = "To enable encryption, 3 files must be provided: the CA \
     certificate, and the certificate of this node with its private key.";

/// How an option's value is written and converted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A non-empty string.
    Text,
    /// A path, `~` expanded.
    Path,
    /// A Python-style integer.
    Int,
    /// A float.
    Float,
    /// A flag on the command line, a boolean in the file.
    Flag,
    /// Repeatable; one value per line in the file.
    Repeat,
    /// One of a fixed list of names.
    Choice(&'static [&'static str]),
}

/// One option of a daemon.
#[derive(Clone, Copy, Debug)]
struct Spec {
    /// Long name with `_`: the configuration key and the clap id.
    key: &'static str,
    short: Option<char>,
    long: &'static str,
    kind: Kind,
}

const fn spec(key: &'static str, short: Option<char>, long: &'static str, kind: Kind) -> Spec {
    Spec {
        key,
        short,
        long,
        kind,
    }
}

/// Options of all three daemons (the "server node" group and TLS).
const COMMON: &[Spec] = &[
    spec("logfile", Some('l'), "logfile", Kind::Path),
    spec("log_level", None, "log-level", Kind::Text),
    spec("ca", None, "ca", Kind::Path),
    spec("cert", None, "cert", Kind::Path),
    spec("key", None, "key", Kind::Path),
    spec("file", Some('f'), "file", Kind::Path),
    spec("section", Some('s'), "section", Kind::Text),
    spec("cluster", Some('c'), "cluster", Kind::Text),
    spec("masters", Some('m'), "masters", Kind::Text),
    spec("bind", Some('b'), "bind", Kind::Text),
    spec(
        "dynamic_master_list",
        Some('D'),
        "dynamic-master-list",
        Kind::Path,
    ),
    spec("nid", Some('i'), "nid", Kind::Text),
    spec("metrics", None, "metrics", Kind::Text),
];

const MASTER: &[Spec] = &[
    spec("autostart", Some('A'), "autostart", Kind::Int),
    spec(
        "upstream_cluster",
        Some('C'),
        "upstream-cluster",
        Kind::Text,
    ),
    spec(
        "upstream_masters",
        Some('M'),
        "upstream-masters",
        Kind::Text,
    ),
    spec("backup", Some('B'), "backup", Kind::Flag),
    spec("replicas", Some('r'), "replicas", Kind::Int),
    spec("partitions", Some('p'), "partitions", Kind::Int),
];

/// Storage backends (`-a/--adapter`).
const ADAPTERS: &[&str] = &[
    "Importer", "MySQL", "MySQLdb", "PyMySQL", "SQLite", "Native",
];

const STORAGE: &[Spec] = &[
    spec("adapter", Some('a'), "adapter", Kind::Choice(ADAPTERS)),
    spec("database", Some('d'), "database", Kind::Text),
    spec("wait", Some('w'), "wait", Kind::Float),
    spec("disable_pack", None, "disable-pack", Kind::Flag),
    spec(
        "disable_drop_partitions",
        None,
        "disable-drop-partitions",
        Kind::Flag,
    ),
    spec("new_nid", None, "new-nid", Kind::Flag),
    spec("engine", Some('e'), "engine", Kind::Text),
    spec("dedup", None, "dedup", Kind::Flag),
    spec("reset", None, "reset", Kind::Flag),
];

const ADMIN: &[Spec] = &[
    spec("monitor_maxlag", None, "monitor-maxlag", Kind::Float),
    spec("monitor_email", None, "monitor-email", Kind::Repeat),
    spec("monitor_backup", None, "monitor-backup", Kind::Repeat),
    spec("smtp", None, "smtp", Kind::Text),
    spec("smtp_tls", None, "smtp-tls", Kind::Flag),
    spec("smtp_auth", None, "smtp-auth", Kind::Text),
    // Ours: NEO/py has no status page.
    spec("status", None, "status", Kind::Text),
];

/// Where a value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The command line: `-b/--bind` (or `--smtp`).
    CommandLine(String),
    /// A configuration file entry.
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key.
        line: usize,
        /// The key.
        key: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::CommandLine(option) => write!(f, "argument {option}"),
            Origin::File { path, line, key } => write!(f, "{}:{line}: {key}", path.display()),
        }
    }
}

/// Why the options were refused, or help was asked. One line each (but
/// the help text).
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// `-h/--help`: print the text on stdout and exit 0.
    #[error("{0}")]
    Help(&'static str),
    /// The command line does not parse (unknown option, missing value).
    #[error("{0}")]
    Usage(String),
    /// A required option is given nowhere (argparse's text).
    #[error("the following arguments are required: {0}")]
    Missing(&'static str),
    /// An empty value where one is needed.
    #[error("{0}: value is empty")]
    Empty(Origin),
    /// A value of the wrong type or syntax.
    #[error("{origin}: {message}")]
    Invalid {
        /// Where it came from.
        origin: Origin,
        /// What is wrong, with the value.
        message: String,
    },
    /// The configuration file cannot be read or is malformed, or lacks the
    /// section.
    #[error(transparent)]
    Conf(#[from] ConfError),
    /// A start-up check on the values (NEO/py's texts).
    #[error("{0}")]
    Check(String),
}

impl OptionsError {
    /// The exit status NEO/py uses: 0 for help, 2 for command-line usage
    /// errors, 1 for the file and for start-up checks.
    pub fn exit_status(&self) -> i32 {
        let from_command_line = |origin: &Origin| matches!(origin, Origin::CommandLine(_));
        match self {
            OptionsError::Help(_) => 0,
            OptionsError::Usage(_) | OptionsError::Missing(_) => 2,
            OptionsError::Empty(origin) | OptionsError::Invalid { origin, .. } => {
                if from_command_line(origin) {
                    2
                } else {
                    1
                }
            }
            OptionsError::Conf(_) | OptionsError::Check(_) => 1,
        }
    }
}

/// For a daemon's `main`: prints the help on stdout, or
/// `«program»: error: «message»` on stderr, and exits with
/// [`OptionsError::exit_status`].
pub fn report_and_exit(program: &str, error: &OptionsError) -> ! {
    match error {
        OptionsError::Help(text) => print!("{text}"),
        error => eprintln!("{program}: error: {error}"),
    }
    std::process::exit(error.exit_status())
}

/// The three TLS files; NEO/py wants all or none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--ca`: CA certificate(s), PEM.
    pub ca: PathBuf,
    /// `--cert`: this node's certificate, PEM.
    pub cert: PathBuf,
    /// `--key`: its private key, PEM.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Loads and checks the credentials, as a node needs them.
    pub fn load(&self) -> Result<neo_net::Tls, neo_net::TlsError> {
        neo_net::Tls::load(&self.ca, &self.cert, &self.key)
    }
}

/// Options shared by the three daemons.
#[derive(Clone, Debug, PartialEq)]
pub struct CommonOptions {
    /// `-c`: the cluster name (required, never empty).
    pub cluster: String,
    /// `-m`: masters to contact.
    pub masters: Vec<Address>,
    /// `-b`: listening address; port 0 = ephemeral.
    pub bind: Address,
    /// `-l`: the log file (stderr without one).
    pub logfile: Option<PathBuf>,
    /// `--log-level`: levels and per-module filters (else `RUST_LOG`).
    pub log_level: Option<String>,
    /// `--ca --cert --key`.
    pub tls: Option<TlsFiles>,
    /// `-D`: JSON file of known masters.
    pub dynamic_master_list: Option<PathBuf>,
    /// `-f`: the configuration file read, if any.
    pub file: Option<PathBuf>,
    /// `-s`: its section (the program's name by default).
    pub section: String,
    /// `-i`: forced node id (testing).
    pub nid: Option<NodeId>,
    /// `--metrics`: where to serve OpenMetrics (`GET /metrics`), if
    /// anywhere; port 0 = ephemeral.
    pub metrics: Option<Address>,
}

impl CommonOptions {
    /// `-m`, then the masters of the `-D` file (created with them if
    /// missing, operations.md §2.3).
    pub fn all_masters(&self) -> Vec<Address> {
        let list =
            neo_net::master_list::MasterList::new(&self.masters, self.dynamic_master_list.clone());
        list.known().to_vec()
    }
}

/// Options of `neomaster` (operations.md §1.1).
#[derive(Clone, Debug, PartialEq)]
pub struct MasterOptions {
    /// Shared options.
    pub common: CommonOptions,
    /// `-A`: leave RECOVERING of a new cluster once this many storages are
    /// pending.
    pub autostart: Option<u32>,
    /// `-C`: name of the cluster this one backs up.
    pub upstream_cluster: Option<String>,
    /// `-M`: masters of that cluster.
    pub upstream_masters: Vec<Address>,
    /// `-B`: go straight to BACKINGUP for an empty database.
    pub backup: bool,
    /// `-r`: replicas of a new database.
    pub replicas: u32,
    /// `-p`: partitions of a new database.
    pub partitions: u32,
}

/// Options of `neostorage` (operations.md §1.2).
#[derive(Clone, Debug, PartialEq)]
pub struct StorageOptions {
    /// Shared options.
    pub common: CommonOptions,
    /// `-a`: backend.
    pub adapter: Adapter,
    /// `-d`: backend connection string (operations.md §2.5), kept as given.
    pub database: String,
    /// `-w`: MySQL connection retry time in seconds (−1 = forever).
    pub wait: f64,
    /// `--disable-pack`.
    pub disable_pack: bool,
    /// `--disable-drop-partitions`.
    pub disable_drop_partitions: bool,
    /// `--new-nid`.
    pub new_nid: bool,
    /// `-e`: MySQL engine; `None` = the backend's default (InnoDB).
    pub engine: Option<String>,
    /// `--dedup`.
    pub dedup: bool,
    /// `--reset`.
    pub reset: bool,
}

/// Options of `neoadmin` (operations.md §1.3).
#[derive(Clone, Debug, PartialEq)]
pub struct AdminOptions {
    /// Shared options.
    pub common: CommonOptions,
    /// `--monitor-maxlag`: seconds.
    pub monitor_maxlag: f64,
    /// `--monitor-email`: recipients (file lines first, then the command
    /// line, as NEO/py under Python 3.11 does).
    pub monitor_email: Vec<String>,
    /// `--monitor-backup`: backup clusters allowed to report.
    pub monitor_backup: Vec<String>,
    /// `--smtp`: relay; `None` = localhost:25.
    pub smtp: Option<Address>,
    /// `--smtp-tls`: STARTTLS.
    pub smtp_tls: bool,
    /// `--smtp-auth`: user and password (split at the first colon).
    pub smtp_auth: Option<(String, String)>,
    /// `--status`: where to serve the status page (ours); port 0 when
    /// none is given (any free port).
    pub status: Option<Address>,
}

impl AdminOptions {
    /// The SMTP relay to use.
    pub fn smtp_address(&self) -> Address {
        self.smtp
            .clone()
            .unwrap_or_else(|| Address::new("localhost", DEFAULT_SMTP_PORT))
    }
}

/// The merged view of command line and configuration file.
struct Values {
    specs: Vec<Spec>,
    matches: clap::ArgMatches,
    conf: Option<(ConfigFile, String)>,
    /// `-s`, else the program name without `neo`.
    section: String,
}

fn option_name(spec: &Spec) -> String {
    match spec.short {
        Some(short) => format!("-{short}/--{}", spec.long),
        None => format!("--{}", spec.long),
    }
}

impl Values {
    fn parse<I, T>(
        program: &'static str,
        specs: &[&[Spec]],
        help: &'static str,
        args: I,
    ) -> Result<Values, OptionsError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        use clap::{Arg, ArgAction};
        let specs: Vec<Spec> = specs.iter().flat_map(|s| s.iter().copied()).collect();
        let mut command = clap::Command::new(program)
            .disable_help_flag(true)
            .disable_version_flag(true)
            .arg(
                Arg::new("help")
                    .short('h')
                    .long("help")
                    .action(ArgAction::SetTrue),
            );
        for spec in &specs {
            let mut arg = Arg::new(spec.key).long(spec.long);
            if let Some(short) = spec.short {
                arg = arg.short(short);
            }
            arg = match spec.kind {
                Kind::Flag => arg.action(ArgAction::SetTrue),
                Kind::Repeat => arg.action(ArgAction::Append),
                // `-r -1` and `--nid -268435455` are values, as with argparse.
                _ => arg.action(ArgAction::Set).allow_negative_numbers(true),
            };
            command = command.arg(arg);
        }
        let args = std::iter::once(OsString::from(program)).chain(args.into_iter().map(Into::into));
        let matches = command
            .try_get_matches_from(args)
            .map_err(|e| OptionsError::Usage(crate::tool::clap_message(&e)))?;
        if matches.get_flag("help") {
            return Err(OptionsError::Help(help));
        }
        let mut values = Values {
            specs,
            matches,
            conf: None,
            section: program.trim_start_matches("neo").to_owned(),
        };
        if let Some((section, _)) = values.command_line("section") {
            values.section = section;
        }
        if let Some((file, _)) = values.command_line("file") {
            let path = expand_user(&file);
            let config = ConfigFile::read(&path)?;
            if !config.has_section(&values.section) {
                let section = values.section.clone();
                return Err(ConfError::NoSection { path, section }.into());
            }
            values.conf = Some((config, values.section.clone()));
        }
        Ok(values)
    }

    fn spec(&self, key: &str) -> Spec {
        self.specs
            .iter()
            .copied()
            .find(|s| s.key == key)
            .unwrap_or(spec("?", None, "?", Kind::Text))
    }

    fn command_line(&self, key: &str) -> Option<(String, Origin)> {
        let value = self.matches.get_one::<String>(key)?;
        Some((
            value.clone(),
            Origin::CommandLine(option_name(&self.spec(key))),
        ))
    }

    fn in_file(&self, key: &str) -> Result<Option<(String, Origin)>, OptionsError> {
        let Some((config, section)) = &self.conf else {
            return Ok(None);
        };
        Ok(config.get(section, key)?.map(|found| {
            let origin = Origin::File {
                path: config.path.clone(),
                line: found.line,
                key: key.to_owned(),
            };
            (found.value, origin)
        }))
    }

    /// The value of `key`: command line, else file. Never empty.
    fn get(&self, key: &str) -> Result<Option<(String, Origin)>, OptionsError> {
        let found = match self.command_line(key) {
            Some(found) => Some(found),
            None => self.in_file(key)?,
        };
        match found {
            Some((value, origin)) if value.trim().is_empty() => Err(OptionsError::Empty(origin)),
            found => Ok(found),
        }
    }

    fn text(&self, key: &str) -> Result<Option<String>, OptionsError> {
        Ok(self.get(key)?.map(|(value, _)| value))
    }

    fn required(&self, key: &str, name: &'static str) -> Result<String, OptionsError> {
        self.text(key)?.ok_or(OptionsError::Missing(name))
    }

    fn path(&self, key: &str) -> Result<Option<PathBuf>, OptionsError> {
        Ok(self.get(key)?.map(|(value, _)| expand_user(value.trim())))
    }

    fn int(&self, key: &str) -> Result<Option<(i64, Origin)>, OptionsError> {
        let Some((value, origin)) = self.get(key)? else {
            return Ok(None);
        };
        match parse_int(&value) {
            Some(number) => Ok(Some((number, origin))),
            None => Err(OptionsError::Invalid {
                origin,
                message: format!("invalid int value: {value:?}"),
            }),
        }
    }

    fn float(&self, key: &str) -> Result<Option<f64>, OptionsError> {
        let Some((value, origin)) = self.get(key)? else {
            return Ok(None);
        };
        value
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| OptionsError::Invalid {
                origin,
                message: format!("invalid float value: {value:?}"),
            })
    }

    fn flag(&self, key: &str) -> Result<bool, OptionsError> {
        if self.matches.value_source(key) == Some(ValueSource::CommandLine) {
            return Ok(true);
        }
        match self.in_file(key)? {
            None => Ok(false),
            Some((value, origin)) => parse_bool(&value).ok_or_else(|| OptionsError::Invalid {
                origin,
                message: format!(
                    "invalid boolean value: {value:?} (use 1/yes/true/on or 0/no/false/off)"
                ),
            }),
        }
    }

    /// File lines first, then command-line occurrences (operations.md §1.0).
    fn repeated(&self, key: &str) -> Result<Vec<String>, OptionsError> {
        let mut values: Vec<String> = match self.in_file(key)? {
            Some((value, _)) => value
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(str::to_owned)
                .collect(),
            None => Vec::new(),
        };
        if let Some(given) = self.matches.get_many::<String>(key) {
            for value in given {
                if value.trim().is_empty() {
                    return Err(OptionsError::Empty(Origin::CommandLine(option_name(
                        &self.spec(key),
                    ))));
                }
                values.push(value.clone());
            }
        }
        Ok(values)
    }

    fn address(
        &self,
        key: &str,
        default: &str,
        default_port: u16,
    ) -> Result<Address, OptionsError> {
        match self.get(key)? {
            Some((value, origin)) => parse_address(&value, default_port, origin),
            None => parse_address(default, default_port, Origin::CommandLine(String::new())),
        }
    }

    fn optional_address(&self, key: &str) -> Result<Option<Address>, OptionsError> {
        self.get(key)?
            .map(|(value, origin)| parse_address(&value, 0, origin))
            .transpose()
    }

    fn address_list(&self, key: &str, default: &str) -> Result<Vec<Address>, OptionsError> {
        let (value, origin) = match self.get(key)? {
            Some(found) => found,
            None => (default.to_owned(), Origin::CommandLine(String::new())),
        };
        value
            .split_whitespace()
            .map(|address| parse_address(address, 0, origin.clone()))
            .collect()
    }

    fn choice(&self, key: &str, default: &str) -> Result<String, OptionsError> {
        let Kind::Choice(choices) = self.spec(key).kind else {
            return Ok(default.to_owned());
        };
        match self.get(key)? {
            None => Ok(default.to_owned()),
            Some((value, _)) if choices.contains(&value.as_str()) => Ok(value),
            Some((value, origin)) => Err(OptionsError::Invalid {
                origin,
                message: format!(
                    "invalid choice: {value:?} (choose from {})",
                    choices
                        .iter()
                        .map(|c| format!("'{c}'"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    fn common(
        &self,
        default_bind: &str,
        default_masters: &str,
    ) -> Result<CommonOptions, OptionsError> {
        let tls = match (self.path("ca")?, self.path("cert")?, self.path("key")?) {
            (None, None, None) => None,
            (Some(ca), Some(cert), Some(key)) => Some(TlsFiles { ca, cert, key }),
            _ => return Err(OptionsError::Check(TLS_INCOMPLETE.to_owned())),
        };
        let nid = match self.get("nid")? {
            None => None,
            Some((value, origin)) => {
                Some(
                    NodeId::parse(value.trim()).ok_or_else(|| OptionsError::Invalid {
                        origin,
                        message: format!("invalid node id: {value:?}"),
                    })?,
                )
            }
        };
        Ok(CommonOptions {
            cluster: self.required("cluster", "-c/--cluster")?,
            masters: self.address_list("masters", default_masters)?,
            bind: self.address("bind", default_bind, 0)?,
            logfile: self.path("logfile")?,
            log_level: self.text("log_level")?,
            tls,
            dynamic_master_list: self.path("dynamic_master_list")?,
            file: self.command_line("file").map(|(f, _)| expand_user(&f)),
            section: self.section.clone(),
            nid,
            metrics: self.optional_address("metrics")?,
        })
    }
}

/// An integer as Python's `int()` reads it: surrounding blanks, a sign,
/// underscores between digits.
fn parse_int(text: &str) -> Option<i64> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    let number: i64 = digits.replace('_', "").parse().ok()?;
    Some(if negative { -number } else { number })
}

fn parse_address(text: &str, default_port: u16, origin: Origin) -> Result<Address, OptionsError> {
    Address::parse(text, default_port).map_err(|error| OptionsError::Invalid {
        origin,
        message: format!("invalid address {text:?}: {error}"),
    })
}

fn to_u32(value: Option<(i64, Origin)>, default: u32) -> Result<u32, OptionsError> {
    match value {
        None => Ok(default),
        Some((number, origin)) => u32::try_from(number).map_err(|_| OptionsError::Invalid {
            origin,
            message: format!("value out of range: {number}"),
        }),
    }
}

const MASTER_HELP: &str = include_str!("help/neomaster.txt");
const STORAGE_HELP: &str = include_str!("help/neostorage.txt");
const ADMIN_HELP: &str = include_str!("help/neoadmin.txt");

/// Parses the arguments of `neomaster` (without the program name).
pub fn parse_master<I, T>(args: I) -> Result<MasterOptions, OptionsError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let values = Values::parse("neomaster", &[COMMON, MASTER], MASTER_HELP, args)?;
    let common = values.common(DEFAULT_MASTER_BIND, "")?;
    let replicas = match values.int("replicas")? {
        Some((number, _)) if number < 0 => {
            return Err(OptionsError::Check(
                "replicas must be a positive integer".into(),
            ))
        }
        other => to_u32(other, 0)?,
    };
    let partitions = match values.int("partitions")? {
        Some((number, _)) if number <= 0 => {
            return Err(OptionsError::Check(
                "partitions must be more than zero".into(),
            ))
        }
        other => to_u32(other, DEFAULT_PARTITIONS)?,
    };
    let upstream_cluster = values.text("upstream_cluster")?;
    if upstream_cluster.as_deref() == Some(common.cluster.as_str()) {
        return Err(OptionsError::Check(
            "upstream cluster name must be different from cluster name".into(),
        ));
    }
    Ok(MasterOptions {
        autostart: values
            .int("autostart")?
            .map(|v| to_u32(Some(v), 0))
            .transpose()?,
        upstream_cluster,
        upstream_masters: values.address_list("upstream_masters", "")?,
        backup: values.flag("backup")?,
        replicas,
        partitions,
        common,
    })
}

/// Parses the arguments of `neostorage` (without the program name).
pub fn parse_storage<I, T>(args: I) -> Result<StorageOptions, OptionsError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let values = Values::parse("neostorage", &[COMMON, STORAGE], STORAGE_HELP, args)?;
    let common = values.common(DEFAULT_STORAGE_BIND, DEFAULT_MASTERS)?;
    let adapter = values.choice("adapter", "MySQL")?;
    Ok(StorageOptions {
        adapter: Adapter::from_name(&adapter).unwrap_or(Adapter::MySql),
        database: values.required("database", "-d/--database")?,
        wait: values.float("wait")?.unwrap_or(0.0),
        disable_pack: values.flag("disable_pack")?,
        disable_drop_partitions: values.flag("disable_drop_partitions")?,
        new_nid: values.flag("new_nid")?,
        engine: values.text("engine")?,
        dedup: values.flag("dedup")?,
        reset: values.flag("reset")?,
        common,
    })
}

/// Parses the arguments of `neoadmin` (without the program name).
pub fn parse_admin<I, T>(args: I) -> Result<AdminOptions, OptionsError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let values = Values::parse("neoadmin", &[COMMON, ADMIN], ADMIN_HELP, args)?;
    let common = values.common(DEFAULT_ADMIN_BIND, DEFAULT_MASTERS)?;
    let smtp = match values.get("smtp")? {
        None => None,
        Some((value, origin)) => Some(parse_address(&value, DEFAULT_SMTP_PORT, origin)?),
    };
    let smtp_auth = match values.get("smtp_auth")? {
        None => None,
        Some((value, origin)) => match value.split_once(':') {
            Some((user, password)) => Some((user.to_owned(), password.to_owned())),
            None => {
                return Err(OptionsError::Invalid {
                    origin,
                    message: "expected USER:PASS".into(),
                })
            }
        },
    };
    let monitor_maxlag = match values.get("monitor_maxlag")? {
        None => 0.0,
        Some((_, origin)) => match values.float("monitor_maxlag")? {
            Some(seconds) if seconds.is_finite() && seconds >= 0.0 => seconds,
            _ => {
                return Err(OptionsError::Invalid {
                    origin,
                    message: "expected a number of seconds, 0 or more".into(),
                })
            }
        },
    };
    let status = match values.get("status")? {
        None => None,
        Some((value, origin)) => Some(parse_address(&value, 0, origin)?),
    };
    Ok(AdminOptions {
        status,
        monitor_maxlag,
        monitor_email: values.repeated("monitor_email")?,
        monitor_backup: values.repeated("monitor_backup")?,
        smtp,
        smtp_tls: values.flag("smtp_tls")?,
        smtp_auth,
        common,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn conf(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn path(file: &tempfile::NamedTempFile) -> String {
        file.path().display().to_string()
    }

    /// The `t.conf` of operations.md §11.10.
    const T_CONF: &str =
        "[DEFAULT]\ncluster = cfgtest\nmasters = [::1]:21800\nunknown_key = ignored\n\
        [master]\nbind = [::1]:21800\npartitions = 3\n\
        [admin]\nbind = [::1]:21801\nmonitor_email = a@example.invalid\n  b@example.invalid\n\
        smtp_tls = yes\ndedup = on\n";

    #[test]
    fn master_defaults() {
        let options = parse_master(["-c", "x"]).unwrap();
        assert_eq!(options.common.cluster, "x");
        assert_eq!(options.common.bind, Address::new("127.0.0.1", 10000));
        assert!(options.common.masters.is_empty());
        assert_eq!(options.common.section, "master");
        assert_eq!((options.replicas, options.partitions), (0, 100));
        assert_eq!(options.autostart, None);
        assert!(!options.backup);
        assert_eq!(options.common.tls, None);
    }

    #[test]
    fn values_from_file_only_count() {
        // NEO/py on Python 3 wants -c on the command line (§10, Q1); not us.
        let file = conf(T_CONF);
        let options = parse_master(["-f", &path(&file)]).unwrap();
        assert_eq!(options.common.cluster, "cfgtest");
        assert_eq!(options.common.bind, Address::new("::1", 21800));
        assert_eq!(options.common.masters, [Address::new("::1", 21800)]);
        assert_eq!(options.partitions, 3);
        assert_eq!(options.replicas, 0);
        assert_eq!(options.common.section, "master");
        assert_eq!(options.common.file, Some(file.path().to_owned()));
        let admin = parse_admin(["-f", &path(&file)]).unwrap();
        assert_eq!(admin.common.bind, Address::new("::1", 21801));
        assert_eq!(
            admin.monitor_email,
            ["a@example.invalid", "b@example.invalid"]
        );
        assert!(admin.smtp_tls);
        assert_eq!(admin.monitor_maxlag, 0.0);
        assert_eq!(admin.smtp_address(), Address::new("localhost", 25));
        let storage =
            conf("[storage1]\ncluster = c\ndatabase = ~/s1.sqlite\nadapter = SQLite\ndedup = on\n");
        let options = parse_storage(["-f", &path(&storage), "-s", "storage1"]).unwrap();
        assert_eq!(
            options.database, "~/s1.sqlite",
            "database strings stay as given"
        );
        assert_eq!(options.adapter, Adapter::Sqlite);
        assert!(options.dedup);
    }

    #[test]
    fn command_line_wins() {
        let file = conf(T_CONF);
        let options =
            parse_master(["-f", &path(&file), "-p", "7", "-b", "127.0.0.1", "-c", "x"]).unwrap();
        assert_eq!(options.partitions, 7);
        assert_eq!(options.common.bind, Address::new("127.0.0.1", 0));
        assert_eq!(options.common.cluster, "x");
        // Repeatable options: file lines, then command-line occurrences.
        let admin = parse_admin(["-f", &path(&file), "--monitor-email", "c"]).unwrap();
        assert_eq!(
            admin.monitor_email,
            ["a@example.invalid", "b@example.invalid", "c"]
        );
    }

    #[test]
    fn storage_options() {
        let options = parse_storage([
            "-c",
            "x",
            "-d",
            "neo1",
            "-m",
            "127.0.0.1:1 [::1] localhost:5",
        ])
        .unwrap();
        assert_eq!(
            options.common.masters,
            [
                Address::new("127.0.0.1", 1),
                Address::new("::1", 0),
                Address::new("localhost", 5)
            ]
        );
        assert_eq!(options.common.bind, Address::new("127.0.0.1", 0));
        assert_eq!(options.adapter, Adapter::MySql);
        assert_eq!(options.wait, 0.0);
        assert_eq!(options.engine, None);
        let options = parse_storage([
            "-c",
            "x",
            "-d",
            "file:x.sqlite?cache_size=1",
            "-a",
            "SQLite",
            "-w",
            "-1",
            "--disable-pack",
            "--disable-drop-partitions",
            "--new-nid",
            "--reset",
            "-e",
            "RocksDB",
            "-i",
            "1",
        ])
        .unwrap();
        assert_eq!(options.database, "file:x.sqlite?cache_size=1");
        assert_eq!(options.wait, -1.0);
        assert!(options.disable_pack && options.disable_drop_partitions);
        assert!(options.new_nid && options.reset && !options.dedup);
        assert_eq!(options.engine.as_deref(), Some("RocksDB"));
        assert_eq!(options.common.nid, Some(NodeId(1)));
        let error = parse_storage(["-c", "x", "-d", "y", "-a", "Foo"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "argument -a/--adapter: invalid choice: \"Foo\" (choose from 'Importer', 'MySQL', 'MySQLdb', 'PyMySQL', 'SQLite', 'Native')"
        );
        assert_eq!(error.exit_status(), 2);
    }

    #[test]
    fn admin_options() {
        let options = parse_admin([
            "-c",
            "x",
            "--monitor-email",
            "a",
            "--monitor-email",
            "b",
            "--monitor-backup",
            "bk",
            "--smtp",
            "mail:587",
            "--smtp-tls",
            "--smtp-auth",
            "u:p:w",
            "--monitor-maxlag",
            "2.5",
        ])
        .unwrap();
        assert_eq!(options.common.bind, Address::new("127.0.0.1", 9999));
        assert_eq!(options.common.masters, [Address::new("127.0.0.1", 10000)]);
        assert_eq!(options.monitor_email, ["a", "b"]);
        assert_eq!(options.monitor_backup, ["bk"]);
        assert_eq!(options.smtp, Some(Address::new("mail", 587)));
        assert!(options.smtp_tls);
        assert_eq!(options.smtp_auth, Some(("u".into(), "p:w".into())));
        assert_eq!(options.monitor_maxlag, 2.5);
        assert_eq!(options.status, None);
        assert!(matches!(
            parse_admin(["-c", "x", "--smtp-auth", "nopass"]),
            Err(OptionsError::Invalid { .. })
        ));
        let options = parse_admin(["-c", "x", "--status", "127.0.0.1:8080"]).unwrap();
        assert_eq!(options.status, Some(Address::new("127.0.0.1", 8080)));
        assert!(matches!(
            parse_admin(["-c", "x", "--status", "[::1"]),
            Err(OptionsError::Invalid { .. })
        ));
        let file = conf("[admin]\ncluster = c\nstatus = 127.0.0.1:9980\nmonitor_maxlag = -2\n");
        let error = parse_admin(["-f", &path(&file)]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("expected a number of seconds, 0 or more"),
            "{error}"
        );
        let options = parse_admin(["-f", &path(&file), "--monitor-maxlag", "1.5"]).unwrap();
        assert_eq!(options.status, Some(Address::new("127.0.0.1", 9980)));
        assert_eq!(options.monitor_maxlag, 1.5);
    }

    #[test]
    fn missing_and_empty_required_options() {
        let error = parse_master::<[&str; 0], &str>([]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the following arguments are required: -c/--cluster"
        );
        assert_eq!(error.exit_status(), 2);
        let error = parse_storage(["-c", "x"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the following arguments are required: -d/--database"
        );
        let error = parse_master(["-c", ""]).unwrap_err();
        assert_eq!(error.to_string(), "argument -c/--cluster: value is empty");
        assert_eq!(error.exit_status(), 2);
    }

    #[test]
    fn bad_values_name_the_option() {
        let error = parse_master(["-c", "x", "-A", "abc"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "argument -A/--autostart: invalid int value: \"abc\""
        );
        assert_eq!(error.exit_status(), 2);
        let error = parse_master(["-c", "x", "-b", "host:port"]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("argument -b/--bind: invalid address \"host:port\""),
            "{error}"
        );
        let error = parse_master(["-c", "x", "-m", "a:1 [::1"]).unwrap_err();
        assert!(error
            .to_string()
            .starts_with("argument -m/--masters: invalid address \"[::1\""));
        let error = parse_storage(["-c", "x", "-d", "y", "-w", "soon"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "argument -w/--wait: invalid float value: \"soon\""
        );
        let error = parse_master(["-c", "x", "--bogus"]).unwrap_err();
        assert!(matches!(error, OptionsError::Usage(_)));
        assert!(error.to_string().contains("--bogus"));
        assert!(!error.to_string().contains('\n'));
        assert_eq!(error.exit_status(), 2);
        assert!(matches!(
            parse_master(["-c", "x", "-i", "X"]),
            Err(OptionsError::Invalid { .. })
        ));
    }

    #[test]
    fn bad_values_in_file_name_file_and_line() {
        let file = conf("[master]\ncluster = x\nautostart = many\n");
        let error = parse_master(["-f", &path(&file)]).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("{}:3: autostart: invalid int value: \"many\"", path(&file))
        );
        assert_eq!(error.exit_status(), 1);
        let file = conf("[master]\ncluster = x\nbackup = perhaps\n");
        let error = parse_master(["-f", &path(&file)]).unwrap_err();
        assert!(error
            .to_string()
            .starts_with(&format!("{}:3: backup: invalid boolean", path(&file))));
        let file = conf("[master]\ncluster =\n");
        let error = parse_master(["-f", &path(&file)]).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("{}:2: cluster: value is empty", path(&file))
        );
    }

    #[test]
    fn file_and_section_errors() {
        let error = parse_master(["-c", "x", "-f", "/nonexistent/neo.conf"]).unwrap_err();
        assert!(matches!(error, OptionsError::Conf(ConfError::Read { .. })));
        assert_eq!(error.exit_status(), 1);
        let file = conf(T_CONF);
        let error = parse_master(["-c", "x", "-f", &path(&file), "-s", "nosuch"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("{}: no section [nosuch]", path(&file))
        );
        // No [storage] section in t.conf.
        assert!(matches!(
            parse_storage(["-c", "x", "-d", "y", "-f", &path(&file)]),
            Err(OptionsError::Conf(ConfError::NoSection { .. }))
        ));
        let file = conf("[master]\nno delimiter here\n");
        let error = parse_master(["-f", &path(&file)]).unwrap_err();
        assert!(error
            .to_string()
            .starts_with(&format!("{}:2: ", path(&file))));
    }

    #[test]
    fn start_up_checks() {
        let check = |args: &[&str]| parse_master(args.iter().copied()).unwrap_err().to_string();
        assert_eq!(
            check(&["-c", "x", "-r", "-1"]),
            "replicas must be a positive integer"
        );
        assert_eq!(
            check(&["-c", "x", "-p", "0"]),
            "partitions must be more than zero"
        );
        assert_eq!(
            check(&["-c", "x", "-C", "x", "-M", "127.0.0.1:1"]),
            "upstream cluster name must be different from cluster name"
        );
        assert_eq!(check(&["-c", "x", "--ca", "/nonexistent"]), TLS_INCOMPLETE);
        let options = parse_master([
            "-c",
            "x",
            "-C",
            "up",
            "-M",
            "10.0.0.1:10000 10.0.0.2:10000",
            "-B",
            "-A",
            "2",
            "--ca",
            "a",
            "--cert",
            "b",
            "--key",
            "c",
            "-i",
            "-268435455",
        ])
        .unwrap();
        assert_eq!(options.upstream_cluster.as_deref(), Some("up"));
        assert_eq!(options.upstream_masters.len(), 2);
        assert!(options.backup);
        assert_eq!(options.autostart, Some(2));
        assert_eq!(
            options.common.nid.map(|n| n.to_string()).as_deref(),
            Some("M1")
        );
        assert_eq!(
            options.common.tls,
            Some(TlsFiles {
                ca: "a".into(),
                cert: "b".into(),
                key: "c".into()
            })
        );
    }

    #[test]
    fn help_is_the_observed_text() {
        match parse_master(["--help"]) {
            Err(error @ OptionsError::Help(_)) => {
                assert_eq!(error.exit_status(), 0);
                assert!(error.to_string().starts_with("usage: neomaster [-h]"));
                assert!(error
                    .to_string()
                    .contains("partitions number (default: 100)"));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(parse_storage(["-h"]), Err(OptionsError::Help(t)) if t.contains("NEO Storage node"))
        );
        assert!(
            matches!(parse_admin(["-h"]), Err(OptionsError::Help(t)) if t.contains("NEO Admin node"))
        );
    }

    #[test]
    fn metrics_address_from_the_command_line_or_the_file() {
        let options = parse_storage(["-c", "x", "-d", "db", "--metrics", "127.0.0.1:0"]).unwrap();
        assert_eq!(options.common.metrics, Some(Address::new("127.0.0.1", 0)));
        assert_eq!(parse_admin(["-c", "x"]).unwrap().common.metrics, None);
        let file = conf("[master]\ncluster = x\nmetrics = [::1]:9100\n");
        let options = parse_master(["-f", &path(&file)]).unwrap();
        assert_eq!(options.common.metrics, Some(Address::new("::1", 9100)));
        let error = parse_master(["-c", "x", "--metrics", "127.0.0.1:port"]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("argument --metrics: invalid address"),
            "{error}"
        );
        assert_eq!(error.exit_status(), 2);
    }

    #[test]
    fn paths_expand_home() {
        let home = std::env::var("HOME").unwrap_or_default();
        if !home.is_empty() {
            assert_eq!(
                expand_user("~/log/m.log"),
                PathBuf::from(&home).join("log/m.log")
            );
            assert_eq!(expand_user("~"), PathBuf::from(&home));
        }
        assert_eq!(expand_user("~root/x"), PathBuf::from("/root/x"));
        assert_eq!(
            expand_user("~no-such-user-here/x"),
            PathBuf::from("~no-such-user-here/x")
        );
        assert_eq!(expand_user("./a~b"), PathBuf::from("./a~b"));
        let options = parse_master(["-c", "x", "-l", "~root/master.log"]).unwrap();
        assert_eq!(
            options.common.logfile,
            Some(PathBuf::from("/root/master.log"))
        );
    }
}
