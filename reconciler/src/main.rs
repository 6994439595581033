//! The `cairnctl` binary: parses the command line, runs the subcommand, prints its report and
//! maps the outcome to an exit code.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

use cairn_reconciler::cli::{Command, Opts};
use cairn_reconciler::config::{Overlay, ProcessEnv, ENV_CLUSTER};
use cairn_reconciler::exit::Outcome;
use cairn_reconciler::{ctl, gitops, lint, operate, silenced, status, watch};

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
        Command::Completion { shell } => {
            let script = cairn_reconciler::cli::completion_script(shell);
            let mut stdout = io::stdout().lock();
            match stdout.write_all(&script).and_then(|()| stdout.flush()) {
                Err(err) if err.kind() != io::ErrorKind::BrokenPipe => {
                    eprintln!("cairnctl: cannot write the completion script: {err}");
                    return ExitCode::from(Outcome::Failure.code());
                }
                _ => Outcome::Success,
            }
        }
        command => match run_online(command, opts.cluster) {
            Ok(report) => {
                for line in &report.errors {
                    eprintln!("{line}");
                }
                if let Err(err) = print_lines(report.lines.iter()) {
                    eprintln!("cairnctl: cannot write the report: {err}");
                    return ExitCode::from(Outcome::Failure.code());
                }
                report.outcome
            }
            Err(err) => {
                eprintln!("cairnctl: {err:#}");
                match err.downcast_ref::<ctl::CtlError>() {
                    Some(ctl::CtlError::Config(_) | ctl::CtlError::Usage(_)) => Outcome::Usage,
                    _ => Outcome::Failure,
                }
            }
        },
    };
    ExitCode::from(outcome.code())
}

/// Runs a command that talks to a backend, on a runtime built here; `cluster` (`--cluster`)
/// aims its API requests at a cluster registered on that backend.
fn run_online(command: Command, cluster: Option<String>) -> anyhow::Result<ctl::Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let env = Overlay::new(ProcessEnv).set(ENV_CLUSTER, cluster);
    let report = runtime.block_on(async move {
        match command {
            Command::Lint(_) | Command::Completion { .. } => {
                unreachable!("lint and completion run offline")
            }
            Command::Diff(args) => gitops::diff(&env, &args).await,
            Command::Apply(args) => gitops::apply(&env, &args).await,
            Command::Watch(args) => watch::run(&env, &args).await,
            Command::Status(args) => status::run(&args).await,
            Command::Configure(args) => {
                ctl::configure(
                    &env,
                    &args.url,
                    args.ca_file,
                    &args.username,
                    &args.password,
                    &args.namespace,
                )
                .await
            }
            Command::Get(args) => ctl::get(&env, &args).await,
            Command::Delete(args) => {
                ctl::delete(
                    &env,
                    &args.resource_type,
                    &args.name,
                    args.namespace.as_deref(),
                )
                .await
            }
            Command::Create(args) => {
                ctl::create(
                    &env,
                    &args.files,
                    args.namespace.as_deref(),
                    args.allow_unsupported,
                )
                .await
            }
            Command::User { command } => ctl::user(&env, &command).await,
            Command::ApiKey { command } => ctl::api_key(&env, &command).await,
            Command::Agent { command } => ctl::agent(&env, &command).await,
            Command::Cluster { command } => ctl::cluster(&env, &command).await,
            Command::Check { command } => operate::check(&env, &command).await,
            Command::Entity { command } => operate::entity(&env, &command).await,
            Command::Event { command } => silenced::event(&env, &command).await,
            Command::Silenced { command } => silenced::silenced(&env, &command).await,
        }
    })?;
    Ok(report)
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
