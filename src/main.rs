//! Entry point: parse the command line, run, and exit with the status docs/architecture.md gives.

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
    eprintln!("openshell-sandbox: error: {}", describe(&error));
    ExitCode::from(status.code())
}

/// The error and its causes, each cause once: most messages already name their source
/// (`cannot read {path}: {source}`), so a cause whose text is already there is skipped.
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}
