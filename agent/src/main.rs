//! The `cairn-agent` binary: parses the command line and runs the chosen subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The Cairn agent: connects to the backend over mutual TLS, runs checks and sends events.
#[derive(Debug, Parser)]
#[command(name = "cairn-agent", version, about)]
struct Opts {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enrol this host with a join token: key, certificate, config and a systemd unit.
    Install,
    /// Start the agent.
    Start,
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    if let Err(err) = cairn_api::logging::init("info") {
        eprintln!("cairn-agent: {err}");
        return ExitCode::from(64);
    }
    let name = match opts.command {
        Command::Install => "install",
        Command::Start => "start",
    };
    eprintln!("cairn-agent: `{name}` is not built yet");
    ExitCode::FAILURE
}
