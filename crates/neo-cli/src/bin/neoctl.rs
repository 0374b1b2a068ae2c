//! `neoctl`: sends one command to an admin node and prints the result
//! (operations.md §1.4, §3). All the work is in `neo_cli::neoctl::run`.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ERROR: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(neo_cli::neoctl::run(std::env::args_os().skip(1)));
    // A closed stdout (`neoctl print node | head -1`) is not worth a panic.
    let _ = std::io::stdout().write_all(outcome.stdout.as_bytes());
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().write_all(outcome.stderr.as_bytes());
    ExitCode::from(u8::try_from(outcome.status).unwrap_or(1))
}
