//! The `cairnctl` binary: parses the command line, runs the subcommand, prints its report and
//! maps the outcome to an exit code.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

use cairn_reconciler::cli::{Command, Opts};
use cairn_reconciler::exit::Outcome;
use cairn_reconciler::lint;

fn main() -> ExitCode {
    let opts = match Opts::try_parse() {
        Ok(opts) => opts,
        Err(err) => {
            // Usage errors exit 64, never 2: `diff` uses 2 for drift and CI gates read it.
            let code = if err.use_stderr() {
                Outcome::Usage.code()
            } else {
                0
            };
            // Printing help or a usage error to a closed pipe is not worth failing over.
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    if let Err(err) = cairn_api::logging::init("warn") {
        eprintln!("cairnctl: {err}");
        return ExitCode::from(Outcome::Usage.code());
    }
    let outcome = match opts.command {
        Command::Lint(args) => {
            let report = lint::run(&args);
            let lines = report.lines.iter().chain(std::iter::once(&report.summary));
            if let Err(err) = print_lines(lines) {
                eprintln!("cairnctl: cannot write the report: {err}");
                return ExitCode::from(Outcome::Failure.code());
            }
            report.outcome
        }
    };
    ExitCode::from(outcome.code())
}

/// Writes report lines to stdout. A reader that went away (`cairnctl lint | head`) is not an
/// error.
fn print_lines<'a>(mut lines: impl Iterator<Item = &'a String>) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    let result = lines.try_for_each(|line| writeln!(stdout, "{line}"));
    match result.and_then(|()| stdout.flush()) {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
