//! The `cairn-backend` binary: parses the command line and runs the chosen subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The Cairn backend: stores resources, serves the Sensu-compatible REST API, schedules checks
/// and runs the event pipeline.
#[derive(Debug, Parser)]
#[command(name = "cairn-backend", version, about)]
struct Opts {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the data directory: CA, certificates, JWT keys and the admin user.
    Init,
    /// Start the backend.
    Start,
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    if let Err(err) = cairn_api::logging::init("info") {
        eprintln!("cairn-backend: {err}");
        return ExitCode::from(64);
    }
    let name = match opts.command {
        Command::Init => "init",
        Command::Start => "start",
    };
    eprintln!("cairn-backend: `{name}` is not built yet");
    ExitCode::FAILURE
}
