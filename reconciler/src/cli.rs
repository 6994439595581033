//! The `cairnctl` command line, as clap parses it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Operate Cairn from Git: lint, diff and apply manifests, and manage the backend.
#[derive(Debug, Parser)]
#[command(name = "cairnctl", version, about)]
pub struct Opts {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `cairnctl` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate manifest files and folders; report every problem with its file, line and field.
    Lint(LintArgs),
}

/// Arguments of `cairnctl lint`.
#[derive(Debug, clap::Args)]
pub struct LintArgs {
    /// Files or folders to check (`-` reads standard input). Folders are read recursively.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Skip documents of Sensu types Cairn does not model, with a warning, instead of failing.
    #[arg(long)]
    pub allow_unsupported: bool,
}
