//! `neomigrate`: copies a FileStorage into a NEO cluster or back
//! (operations.md §1.5). All the work is in `neo_cli::neomigrate`.

use std::process::ExitCode;

use neo_cli::neomigrate::{self, Invocation, MigrateError};

fn main() -> ExitCode {
    let options = match neomigrate::parse_args(std::env::args_os().skip(1)) {
        Ok(Invocation::Help) => {
            print!("{}", neomigrate::HELP);
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Run(options)) => options,
        Err(error) => return fail(&error),
    };
    let runtime = match neo_cli::daemon::runtime() {
        Ok(runtime) => runtime,
        Err(message) => return fail(&MigrateError::Internal(message)),
    };
    let outcome = runtime.block_on(neomigrate::run(&options, &mut std::io::stdout()));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// One line on stderr, and the exit status of operations.md §1.10.
fn fail(error: &MigrateError) -> ExitCode {
    eprintln!("neomigrate: error: {error}");
    ExitCode::from(error.exit_status())
}
