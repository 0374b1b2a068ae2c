//! `neomigrate`: copies a FileStorage into a NEO cluster, or a NEO
//! cluster into a FileStorage (operations.md §1.5, architecture.md §12.8).
//!
//! The direction is NEO/py's: a `source` naming an existing file is a
//! FileStorage to import ([`import`]), anything else is the master list of
//! the cluster to export ([`export`]). Both keep every transaction's TID
//! and metadata and every record's back-pointer (`data_txn`), so that a
//! round trip gives back the same history.

mod export;
mod import;
mod progress;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use neo_client::{ClientConfig, ClientError};
use neo_proto::{Address, Tid};

use crate::daemon::load_tls;
use crate::options::TlsFiles;
use crate::tool;

pub use progress::Progress;

/// `neomigrate --help` (operations.md §11.3).
pub const HELP: &str = include_str!("../help/neomigrate.txt");

/// What the import prints first, unless `-q` (operations.md §11.9). The
/// first line is NEO/py's; its second sentence said undo information is
/// lost, which is not true of ours.
pub const IMPORT_WARNING: &str = "WARNING: This is not the recommended way to import data to \
     NEO: you should use the Importer backend instead.\n\
     This tool keeps every transaction and undo back-pointer, but the cluster must not be \
     used until it is done, and an interrupted copy cannot be resumed.";

/// The options of `neomigrate`.
#[derive(Clone, Debug, PartialEq)]
pub struct MigrateOptions {
    /// `-c`: the NEO cluster's name.
    pub cluster: String,
    /// A FileStorage path, or the masters of the cluster to export.
    pub source: String,
    /// The masters to import into, or the FileStorage to write.
    pub destination: String,
    /// `-q`: nothing on stdout, no progress bar.
    pub quiet: bool,
    /// `-l`: the client's log.
    pub logfile: Option<PathBuf>,
    /// `--ca --cert --key`: TLS, as the cluster's nodes.
    pub tls: Option<TlsFiles>,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Invocation {
    /// `-h/--help`.
    Help,
    /// Copy.
    Run(MigrateOptions),
}

/// Which way the copy goes, decided by the source as NEO/py does.
#[derive(Clone, Debug, PartialEq)]
pub enum Direction {
    /// FileStorage `source` → the cluster at `masters`.
    Import {
        /// The FileStorage read.
        source: PathBuf,
        /// Masters of the cluster written.
        masters: Vec<Address>,
    },
    /// The cluster at `masters` → FileStorage `destination`.
    Export {
        /// Masters of the cluster read.
        masters: Vec<Address>,
        /// The FileStorage written (created, or appended to).
        destination: PathBuf,
    },
}

/// Why a migration failed. `Display` is the line printed after
/// `neomigrate: error: `.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Bad command line: exit status 2, as argparse.
    #[error("{0}")]
    Usage(String),
    /// Incomplete TLS options (NEO/py's message).
    #[error("{0}")]
    TlsOptions(&'static str),
    /// TLS files that cannot be used.
    #[error("{0}")]
    Tls(String),
    /// `-l` could not be set up.
    #[error("log file: {0}")]
    Log(#[from] neo_log::LogError),
    /// The source is not a file and not a master list either.
    #[error("{text}: no such file, and not a master list (host:port ...): {reason}")]
    NoSource {
        /// The source argument.
        text: String,
        /// Why it is not a master list.
        reason: String,
    },
    /// A FileStorage could not be read or written: its error names the
    /// file and, for a bad file, the offset.
    #[error(transparent)]
    FileStorage(#[from] neo_filestorage::Error),
    /// No primary master of this cluster answered in time.
    #[error("cannot reach cluster {cluster:?} at {masters}: {source}")]
    Connect {
        /// The cluster name.
        cluster: String,
        /// The masters tried.
        masters: String,
        /// The client's error.
        source: Box<ClientError>,
    },
    /// The cluster failed an operation on one transaction.
    #[error("transaction {tid}: {source}")]
    Transaction {
        /// The transaction being copied.
        tid: Tid,
        /// The client's error.
        source: Box<ClientError>,
    },
    /// The cluster failed an operation outside of a transaction.
    #[error("{what}: {source}")]
    Cluster {
        /// What was being done.
        what: &'static str,
        /// The client's error.
        source: Box<ClientError>,
    },
    /// An imported transaction did not keep its TID.
    #[error("transaction {tid} was committed as {committed}: is the cluster empty and used by nobody else?")]
    TidChanged {
        /// The source TID.
        tid: Tid,
        /// The TID the cluster gave it.
        committed: Tid,
    },
    /// A thread of the copy panicked or stopped early.
    #[error("internal error: {0}")]
    Internal(String),
    /// Standard output could not be written.
    #[error("cannot write to stdout: {0}")]
    Output(#[source] std::io::Error),
}

impl MigrateError {
    /// The exit status for this error (operations.md §1.10).
    pub fn exit_status(&self) -> u8 {
        match self {
            MigrateError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Parses the arguments (without the program name).
pub fn parse_args<I, T>(args: I) -> Result<Invocation, MigrateError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    use clap::{Arg, ArgAction};
    let command = tool::command("neomigrate")
        .arg(tool::value_arg("cluster", "cluster").short('c'))
        .arg(
            Arg::new("quiet")
                .short('q')
                .long("quiet")
                .action(ArgAction::SetTrue),
        )
        .arg(Arg::new("source"))
        .arg(Arg::new("destination"));
    let args =
        std::iter::once(OsString::from("neomigrate")).chain(args.into_iter().map(Into::into));
    let matches = command
        .try_get_matches_from(args)
        .map_err(|e| MigrateError::Usage(tool::clap_message(&e)))?;
    if matches.get_flag("help") {
        return Ok(Invocation::Help);
    }
    // Checked here rather than by clap, so that `-h` alone is help.
    let required = |id: &str, what: &str| {
        matches.get_one::<String>(id).cloned().ok_or_else(|| {
            MigrateError::Usage(format!("the following arguments are required: {what}"))
        })
    };
    let cluster = required("cluster", "-c/--cluster")?;
    let source = required("source", "source")?;
    let destination = required("destination", "destination")?;
    let tls = tool::tls_files(&matches).map_err(MigrateError::TlsOptions)?;
    Ok(Invocation::Run(MigrateOptions {
        cluster,
        source,
        destination,
        quiet: matches.get_flag("quiet"),
        logfile: tool::path(&matches, "logfile"),
        tls,
    }))
}

/// A whitespace-separated master list; every master needs its port
/// (operations.md §2.4).
fn parse_masters(text: &str) -> Result<Vec<Address>, String> {
    let masters = text
        .split_whitespace()
        .map(|word| {
            let address = Address::parse(word, 0).map_err(|e| format!("{word:?}: {e}"))?;
            if address.port == 0 {
                return Err(format!("{word:?} has no port"));
            }
            Ok(address)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if masters.is_empty() {
        return Err("empty".into());
    }
    Ok(masters)
}

impl MigrateOptions {
    /// The direction: import if the source is an existing file.
    pub fn direction(&self) -> Result<Direction, MigrateError> {
        let source = Path::new(&self.source);
        if source.is_file() {
            let masters = parse_masters(&self.destination).map_err(|reason| {
                MigrateError::Usage(format!("destination: invalid master list: {reason}"))
            })?;
            return Ok(Direction::Import {
                source: source.to_owned(),
                masters,
            });
        }
        let masters = parse_masters(&self.source).map_err(|reason| MigrateError::NoSource {
            text: self.source.clone(),
            reason,
        })?;
        Ok(Direction::Export {
            masters,
            destination: PathBuf::from(&self.destination),
        })
    }

    /// The client's settings for the cluster at `masters`.
    fn client_config(
        &self,
        masters: Vec<Address>,
        read_only: bool,
    ) -> Result<ClientConfig, MigrateError> {
        let mut config = ClientConfig::new(masters, self.cluster.clone());
        config.read_only = read_only;
        config.connection.tls = load_tls(self.tls.as_ref()).map_err(MigrateError::Tls)?;
        Ok(config)
    }
}

/// Connects to the cluster, waiting at most the client's `ready_timeout`.
async fn connect(config: ClientConfig) -> Result<neo_client::Client, MigrateError> {
    let cluster = config.cluster.clone();
    let masters = config
        .masters
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    neo_client::Client::connect(config)
        .await
        .map_err(|source| MigrateError::Connect {
            cluster,
            masters,
            source: Box::new(source),
        })
}

/// Runs the copy the options ask for, printing NEO/py's lines on `stdout`
/// (unless `-q`) and the progress on stderr if it is a terminal.
pub async fn run(options: &MigrateOptions, stdout: &mut impl Write) -> Result<(), MigrateError> {
    let direction = options.direction()?;
    if let Some(path) = &options.logfile {
        neo_log::log_to("neomigrate", path)?;
        tracing::info!(source = %options.source, destination = %options.destination, "neomigrate");
    }
    let progress = Progress::new(!options.quiet);
    let mut say = |text: String| -> Result<(), MigrateError> {
        if options.quiet {
            return Ok(());
        }
        writeln!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .map_err(MigrateError::Output)
    };
    if matches!(direction, Direction::Import { .. }) {
        say(IMPORT_WARNING.to_owned())?;
    }
    say(format!(
        "Migrating from {} to {}",
        options.source, options.destination
    ))?;
    let start = Instant::now();
    match direction {
        Direction::Import { source, masters } => {
            let storage = import::open(&source).await?;
            let client = connect(options.client_config(masters, false)?).await?;
            let outcome = import::run(&client, storage, &progress).await;
            client.close().await;
            outcome?;
        }
        Direction::Export {
            masters,
            destination,
        } => {
            let client = connect(options.client_config(masters, true)?).await?;
            let outcome = export::run(&client, &destination, &progress).await;
            client.close().await;
            outcome?;
        }
    }
    progress.finish();
    tracing::info!(transactions = progress.transactions(), "migration done");
    say(format!(
        "Migration done in {:.5}",
        start.elapsed().as_secs_f64()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> MigrateOptions {
        match parse_args(args.iter().copied()).unwrap() {
            Invocation::Run(options) => options,
            Invocation::Help => panic!("help"),
        }
    }

    #[test]
    fn options_as_neo_py() {
        let parsed = options(&["-q", "-c", "db", "-l", "/tmp/x.log", "a", "b"]);
        assert_eq!(
            parsed,
            MigrateOptions {
                cluster: "db".into(),
                source: "a".into(),
                destination: "b".into(),
                quiet: true,
                logfile: Some("/tmp/x.log".into()),
                tls: None,
            }
        );
        assert!(!options(&["--cluster", "db", "a", "b"]).quiet);
        assert_eq!(parse_args(["-h"]).unwrap(), Invocation::Help);
        assert!(HELP.starts_with("usage: neomigrate [-h] [-l LOGFILE]"));
    }

    #[test]
    fn usage_errors_exit_2() {
        for args in [
            &["a", "b"][..],
            &["-c", "db", "a"],
            &["-c", "db", "a", "b", "c"],
            &["-c", "db", "--bogus", "a", "b"],
            &["-c"],
        ] {
            let error = parse_args(args.iter().copied()).unwrap_err();
            assert_eq!(error.exit_status(), 2, "{args:?}: {error}");
            assert!(!error.to_string().contains('\n'), "{error}");
        }
        let error = parse_args(["a", "b"]).unwrap_err();
        assert!(error.to_string().contains("-c/--cluster"), "{error}");
        let error = parse_args(["-c", "x", "--ca", "ca.pem", "a", "b"]).unwrap_err();
        assert_eq!(error.exit_status(), 1);
    }

    #[test]
    fn direction_follows_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("Data.fs");
        std::fs::write(&file, b"FS21").unwrap();
        let file = file.to_str().unwrap();
        let import = options(&["-c", "db", file, "127.0.0.1:1 [::1]:2"]);
        assert_eq!(
            import.direction().unwrap(),
            Direction::Import {
                source: file.into(),
                masters: vec![Address::new("127.0.0.1", 1), Address::new("::1", 2)],
            }
        );
        let export = options(&["-c", "db", "127.0.0.1:1", "out.fs"]);
        assert_eq!(
            export.direction().unwrap(),
            Direction::Export {
                masters: vec![Address::new("127.0.0.1", 1)],
                destination: "out.fs".into(),
            }
        );
        // A missing file is not taken for a host name without a port.
        let missing = dir.path().join("missing.fs");
        let error = options(&["-c", "db", missing.to_str().unwrap(), "127.0.0.1:1"])
            .direction()
            .unwrap_err();
        assert!(matches!(error, MigrateError::NoSource { .. }), "{error}");
        assert!(error.to_string().contains("missing.fs"), "{error}");
        let error = options(&["-c", "db", file, "127.0.0.1"])
            .direction()
            .unwrap_err();
        assert_eq!(error.exit_status(), 2, "{error}");
    }

    #[test]
    fn warning_keeps_neo_py_first_line() {
        let first = IMPORT_WARNING.lines().next().unwrap();
        assert_eq!(
            first,
            "WARNING: This is not the recommended way to import data to NEO: you should use \
             the Importer backend instead."
        );
        assert_eq!(IMPORT_WARNING.lines().count(), 2);
    }
}
