//! `neosimple`: a whole cluster in one command (see `neo_cli::simple`).

use std::process::ExitCode;

use clap::Parser;
use neo_cli::daemon::{serve, shutdown_signal};
use neo_cli::simple::{run, SimpleOptions};

const PROGRAM: &str = "neosimple";

fn main() -> ExitCode {
    let options = SimpleOptions::parse();
    serve(PROGRAM, None, run(options, shutdown_signal()))
}
