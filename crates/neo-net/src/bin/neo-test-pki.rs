//! `neo-test-pki DIR`: writes throw-away certificates into DIR (see
//! `neo_net::test_pki`), for tests outside Rust (the Python package's).

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: neo-test-pki DIR");
        return ExitCode::from(2);
    };
    match neo_net::test_pki::TestPki::create(std::path::Path::new(&dir)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("neo-test-pki: error: {error}");
            ExitCode::FAILURE
        }
    }
}
