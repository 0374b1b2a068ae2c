//! What the tools `neoctl` and `neomigrate` share, as NEO/py's do
//! (`neo/lib/app.py`): `-h`, `-l LOGFILE` and the three TLS files, parsed
//! with clap into argparse's behaviour (exit status 2, one-line messages).

use std::path::PathBuf;

use crate::options::{expand_user, TlsFiles, TLS_INCOMPLETE};

/// A clap command named `name` with `-h`, `-l`, `--ca`, `--cert`, `--key`;
/// the tool adds its own arguments.
pub(crate) fn command(name: &'static str) -> clap::Command {
    use clap::{Arg, ArgAction};
    clap::Command::new(name)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(
            Arg::new("help")
                .short('h')
                .long("help")
                .action(ArgAction::SetTrue),
        )
        .arg(value_arg("logfile", "logfile").short('l'))
        .arg(value_arg("ca", "ca"))
        .arg(value_arg("cert", "cert"))
        .arg(value_arg("key", "key"))
}

/// An option taking a non-empty value.
pub(crate) fn value_arg(id: &'static str, long: &'static str) -> clap::Arg {
    clap::Arg::new(id)
        .long(long)
        .action(clap::ArgAction::Set)
        .value_parser(clap::builder::NonEmptyStringValueParser::new())
}

/// The one-line message of a clap error, without its usage block.
pub(crate) fn clap_message(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// The value of path option `id`, `~` expanded.
pub(crate) fn path(matches: &clap::ArgMatches, id: &str) -> Option<PathBuf> {
    matches.get_one::<String>(id).map(|path| expand_user(path))
}

/// `--ca --cert --key`: all three or none (NEO/py's message otherwise).
pub(crate) fn tls_files(matches: &clap::ArgMatches) -> Result<Option<TlsFiles>, &'static str> {
    match (
        path(matches, "ca"),
        path(matches, "cert"),
        path(matches, "key"),
    ) {
        (None, None, None) => Ok(None),
        (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles { ca, cert, key })),
        _ => Err(TLS_INCOMPLETE),
    }
}
