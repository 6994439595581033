//! The `cairnctl` binary: parses the command line, runs the subcommand, prints its report and
//! maps the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;

use cairn_reconciler::cli::{Command, Opts};
use cairn_reconciler::exit::Outcome;
use cairn_reconciler::lint;

fn main() -> ExitCode {
    let opts = Opts::parse();
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
