//! `neosimple`: a whole cluster in one command (see `neo_cli::simple`).

use std::process::ExitCode;

use clap::Parser;
use neo_cli::daemon::{fail, init_logging, runtime, shutdown_signal};
use neo_cli::simple::{run, SimpleOptions};

const PROGRAM: &str = "neosimple";

fn main() -> ExitCode {
    let options = SimpleOptions::parse();
    if let Err(message) = init_logging(None) {
        return fail(PROGRAM, message);
    }
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(message) => return fail(PROGRAM, message),
    };
    match runtime.block_on(run(options, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(PROGRAM, message),
    }
}
