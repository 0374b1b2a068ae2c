//! `neoctl`, the control tool (operations.md §1.4, §3): options, the
//! command language ([`command`]), the requests sent to the admin node
//! ([`client`]) and the text printed ([`format`]).
//!
//! [`run`] does everything but printing, so the binary is a few lines and
//! tests can check stdout, stderr and the exit status without a process.

pub mod client;
pub mod command;
pub mod format;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use neo_proto::Address;

use crate::daemon::load_tls;
use crate::options::TlsFiles;
use crate::tool;

/// NEO/py's message when only some TLS files are given.
pub use crate::options::TLS_INCOMPLETE;
pub use client::{AdminConnection, CtlError};
pub use command::{parse_command, CheckTarget, Command, CommandError, NodeSelection};

/// Port of the admin node when `-a` gives none.
pub const DEFAULT_ADMIN_PORT: u16 = 9999;

/// `neoctl --help` (operations.md §11.3).
pub const HELP: &str = include_str!("../help/neoctl.txt");

/// What `neoctl` without a command prints (operations.md §11.4).
pub const COMMAND_LIST: &str = include_str!("../help/neoctl-commands.txt");

/// The options of `neoctl`.
#[derive(Clone, Debug, PartialEq)]
pub struct CtlOptions {
    /// The admin node to talk to.
    pub address: Address,
    /// `-l`: accepted for compatibility; neoctl writes no log yet.
    pub logfile: Option<PathBuf>,
    /// `--ca --cert --key`: TLS, as the cluster's nodes.
    pub tls: Option<TlsFiles>,
    /// The command words, verbatim.
    pub words: Vec<String>,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Invocation {
    /// `-h/--help`.
    Help,
    /// Run a command (or print the command list when there is none).
    Run(CtlOptions),
}

/// Why the options were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CtlUsageError {
    /// Unknown option, missing value…: exit status 2, as argparse.
    #[error("{0}")]
    Usage(String),
    /// TLS options: exit status 1 (NEO/py fails at start-up too).
    #[error("{0}")]
    Tls(&'static str),
}

impl CtlUsageError {
    /// The exit status for this error.
    pub fn exit_status(&self) -> i32 {
        match self {
            CtlUsageError::Usage(_) => 2,
            CtlUsageError::Tls(_) => 1,
        }
    }
}

fn clap_command() -> clap::Command {
    use clap::{Arg, ArgAction};
    tool::command("neoctl")
        .arg(tool::value_arg("address", "address").short('a'))
        .arg(
            Arg::new("cmd")
                .num_args(0..)
                .trailing_var_arg(true)
                .action(ArgAction::Append),
        )
}

/// Parses the arguments (without the program name).
pub fn parse_args<I, T>(args: I) -> Result<Invocation, CtlUsageError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = std::iter::once(OsString::from("neoctl")).chain(args.into_iter().map(Into::into));
    let matches = clap_command()
        .try_get_matches_from(args)
        .map_err(|e| CtlUsageError::Usage(tool::clap_message(&e)))?;
    if matches.get_flag("help") {
        return Ok(Invocation::Help);
    }
    let tls = tool::tls_files(&matches).map_err(CtlUsageError::Tls)?;
    let address = match matches.get_one::<String>("address") {
        Some(text) => Address::parse(text, DEFAULT_ADMIN_PORT).map_err(|e| {
            CtlUsageError::Usage(format!(
                "argument -a/--address: invalid address {text:?}: {e}"
            ))
        })?,
        None => Address::new("127.0.0.1", DEFAULT_ADMIN_PORT),
    };
    Ok(Invocation::Run(CtlOptions {
        address,
        logfile: tool::path(&matches, "logfile"),
        tls,
        words: matches
            .get_many::<String>("cmd")
            .map(|words| words.cloned().collect())
            .unwrap_or_default(),
    }))
}

/// What a run produced: the caller prints `stdout` and `stderr` as they
/// are and exits with `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Text for standard output.
    pub stdout: String,
    /// Text for standard error.
    pub stderr: String,
    /// 0 accepted, 1 refused or failed, 2 usage error (operations.md §1.10).
    pub status: i32,
}

impl Outcome {
    fn failure(status: i32, line: impl std::fmt::Display) -> Outcome {
        Outcome {
            stdout: String::new(),
            stderr: format!("{line}\n"),
            status,
        }
    }
}

/// `-l`: the command and every packet exchanged go to `path` (as NEO/py's
/// neoctl logs everything it does). A second run in the same process
/// switches the file.
fn log_to(path: &Path) -> Result<(), neo_log::LogError> {
    neo_log::log_to("neoctl", path)?;
    neo_log::set_packet_log(true)
}

/// Runs `neoctl` with these arguments (without the program name).
pub async fn run<I, T>(args: I) -> Outcome
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let options = match parse_args(args) {
        Ok(Invocation::Help) => {
            return Outcome {
                stdout: HELP.to_owned(),
                ..Outcome::default()
            }
        }
        Ok(Invocation::Run(options)) => options,
        Err(error) => {
            return Outcome::failure(error.exit_status(), format!("neoctl: error: {error}"))
        }
    };
    let command = match parse_command(&options.words) {
        Ok(Some(command)) => command,
        Ok(None) => {
            return Outcome {
                stdout: COMMAND_LIST.to_owned(),
                ..Outcome::default()
            }
        }
        Err(error) => return Outcome::failure(1, error),
    };
    if let Some(path) = &options.logfile {
        if let Err(error) = log_to(path) {
            return Outcome::failure(1, format!("neoctl: error: {error}"));
        }
        tracing::info!(command = ?options.words, admin = %options.address, "neoctl");
    }
    let tls = match load_tls(options.tls.as_ref()) {
        Ok(tls) => tls,
        Err(message) => return Outcome::failure(1, format!("neoctl: error: {message}")),
    };
    let mut admin = match AdminConnection::connect(&options.address, tls).await {
        Ok(admin) => admin,
        Err(error) => return Outcome::failure(1, error),
    };
    let result = admin.execute(&command).await;
    admin.close().await;
    match result {
        Ok(Some(text)) => Outcome {
            stdout: format!("{text}\n"),
            ..Outcome::default()
        },
        Ok(None) => Outcome::default(),
        Err(error) => Outcome::failure(1, error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_options(args: &[&str]) -> CtlOptions {
        match parse_args(args.iter().copied()).unwrap() {
            Invocation::Run(options) => options,
            Invocation::Help => panic!("help"),
        }
    }

    #[test]
    fn address_defaults_and_port() {
        assert_eq!(
            run_options(&[]).address,
            Address::new("127.0.0.1", DEFAULT_ADMIN_PORT)
        );
        assert_eq!(
            run_options(&["-a", "[::1]"]).address,
            Address::new("::1", 9999)
        );
        assert_eq!(
            run_options(&["--address", "10.0.0.1:21999"]).address,
            Address::new("10.0.0.1", 21999)
        );
        assert_eq!(
            run_options(&["-a127.0.0.1:5"]).address,
            Address::new("127.0.0.1", 5)
        );
    }

    #[test]
    fn command_words_are_taken_verbatim() {
        assert_eq!(
            run_options(&["-a", "h:1", "tweak", "-n", "S2"]).words,
            ["tweak", "-n", "S2"]
        );
        assert_eq!(
            run_options(&["print", "node", "-a", "x"]).words,
            ["print", "node", "-a", "x"]
        );
        assert!(run_options(&[]).words.is_empty());
    }

    #[test]
    fn help_and_usage_errors() {
        assert_eq!(parse_args(["--help"]), Ok(Invocation::Help));
        assert_eq!(parse_args(["-h", "print"]), Ok(Invocation::Help));
        let error = parse_args(["--bogus"]).unwrap_err();
        assert_eq!(error.exit_status(), 2);
        assert!(error.to_string().contains("--bogus"), "{error}");
        assert!(!error.to_string().contains('\n'));
        let error = parse_args(["-a", "host:x"]).unwrap_err();
        assert_eq!(error.exit_status(), 2);
        assert!(error.to_string().starts_with("argument -a/--address"));
        assert!(matches!(parse_args(["-a"]), Err(CtlUsageError::Usage(_))));
    }

    #[test]
    fn tls_takes_all_three_files() {
        assert_eq!(
            run_options(&["--ca", "a", "--cert", "b", "--key", "c", "print", "cluster"]).tls,
            Some(TlsFiles {
                ca: "a".into(),
                cert: "b".into(),
                key: "c".into(),
            })
        );
        assert_eq!(run_options(&["print", "cluster"]).tls, None);
        assert_eq!(
            parse_args(["--ca", "a"]),
            Err(CtlUsageError::Tls(TLS_INCOMPLETE))
        );
    }

    #[test]
    fn command_list_text_is_verbatim() {
        assert!(COMMAND_LIST.starts_with("Available commands:\nprint\n  ids\n"));
        assert!(COMMAND_LIST.contains("    Get last ids.\n    \n  pt\n"));
        assert!(COMMAND_LIST.ends_with("for 2012-01-01 12:34:56 UTC.\n"));
        assert!(HELP.starts_with("usage: neoctl [-h] [-l LOGFILE]"));
    }

    #[tokio::test]
    async fn local_errors_need_no_admin() {
        let outcome = run(["-a", "127.0.0.1:1", "foo", "bar"]).await;
        assert_eq!(outcome.stderr, "invalid command: foo bar\n");
        assert_eq!(outcome.status, 1);
        let outcome = run(["-a", "127.0.0.1:1"]).await;
        assert_eq!(outcome.stdout, COMMAND_LIST);
        assert_eq!(outcome.status, 0);
        let outcome = run(["set", "replicas", "-1"]).await;
        assert_eq!(outcome.stderr, "invalid number of replicas\n");
        assert_eq!(outcome.status, 1);
    }
}
