//! Entry point: parse the command line, run, and exit with the status design.md gives.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use openshell_sandbox::cli::{self, ParseError};
use openshell_sandbox::{Exit, ExitStatus};

fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(ParseError::Clap(e)) => {
            let _ = e.print();
            // --help and --version are answers, not failures; everything else is a usage error.
            return ExitCode::from(if e.use_stderr() { Exit::Usage.code() } else { Exit::Success.code() });
        }
        Err(ParseError::Mode(e)) => return fail(e.exit_status(), anyhow::Error::new(e)),
    };
    match openshell_sandbox::run(cli) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) => fail(e.exit_status(), anyhow::Error::new(e)),
    }
}

fn fail(status: Exit, error: anyhow::Error) -> ExitCode {
    eprintln!("openshell-sandbox: error: {error:#}");
    ExitCode::from(status.code())
}
