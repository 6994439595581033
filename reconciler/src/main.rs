//! The `cairnctl` binary: parses the command line, runs the subcommand, prints its report and
//! maps the outcome to an exit code.

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
            for line in &report.lines {
                println!("{line}");
            }
            println!("{}", report.summary);
            report.outcome
        }
    };
    ExitCode::from(outcome.code())
}
