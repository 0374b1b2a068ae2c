//! `neolog`: prints NEO log files (see `neo_cli::neolog`).

use std::io::ErrorKind;
use std::process::ExitCode;

use clap::Parser;
use neo_cli::neolog::{run, NeologError, NeologOptions};

fn main() -> ExitCode {
    let options = NeologOptions::parse();
    let stdout = std::io::stdout();
    match run(&options, &mut stdout.lock()) {
        Ok(()) => ExitCode::SUCCESS,
        // `neolog ... | head`: a closed output ends it quietly.
        Err(NeologError::Output(error)) if error.kind() == ErrorKind::BrokenPipe => {
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("neolog: error: {error}");
            ExitCode::FAILURE
        }
    }
}
