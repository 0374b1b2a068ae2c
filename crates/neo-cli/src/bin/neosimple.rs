//! `neosimple`: a whole cluster in one command (see `neo_cli::simple`).

use std::process::ExitCode;

use clap::Parser;
use neo_cli::daemon::{serve, shutdown_signal, LogSetup};
use neo_cli::simple::{run, SimpleOptions};

const PROGRAM: &str = "neosimple";

fn main() -> ExitCode {
    let options = SimpleOptions::parse();
    let logfile = options.logfile();
    if logfile.is_some() {
        // The log goes in the data directory, which `run` would create.
        if let Err(error) = std::fs::create_dir_all(&options.temp_dir) {
            eprintln!(
                "{PROGRAM}: cannot create {}: {error}",
                options.temp_dir.display()
            );
            return ExitCode::FAILURE;
        }
    }
    let log = LogSetup {
        file: logfile,
        level: None,
    };
    serve(PROGRAM, log, run(options, shutdown_signal()))
}
