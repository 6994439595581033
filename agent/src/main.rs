//! The `cairn-agent` binary: parses the command line and runs the chosen subcommand.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use cairn_agent::config::{self, DEFAULT_CONFIG_DIR, ENV_CONFIG};
use cairn_agent::install::{self, AgentUrlSource, InstallOptions};
use cairn_agent::start;

/// Exit code for a usage or configuration error.
const EXIT_USAGE: u8 = 64;

/// The Cairn agent: connects to the backend over mutual TLS, runs checks and sends events.
#[derive(Parser)]
#[command(name = "cairn-agent", version, about)]
struct Opts {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enrol this host with a join token: key, certificate, config and a systemd unit.
    Install(InstallArgs),
    /// Start the agent.
    Start(StartArgs),
}

#[derive(Args)]
struct InstallArgs {
    /// The backend's REST API, e.g. https://cairn.example.com:8080.
    #[arg(long, value_name = "URL")]
    backend_url: String,
    /// The join token from `cairnctl agent token create` (prefer the environment variable
    /// CAIRN_JOIN_TOKEN, which stays out of the process list).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CAIRN_JOIN_TOKEN",
        hide_env_values = true
    )]
    token: String,
    /// The entity name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Subscriptions, comma-separated (added to those the token grants).
    #[arg(long, value_delimiter = ',')]
    subscriptions: Vec<String>,
    /// A backend agent URL, wss://HOST:PORT; repeat for several backends, tried in order
    /// (default: the URLs the backend's answer names; from a backend that names none, the
    /// backend URL's host on port 8081).
    #[arg(long = "agent-url", value_name = "URL")]
    agent_urls: Vec<String>,
    /// Where the configuration, key and certificates go.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CONFIG_DIR)]
    config_dir: PathBuf,
    /// Write the systemd unit here (default: print it).
    #[arg(long, value_name = "PATH")]
    systemd_unit: Option<PathBuf>,
    /// Replace an existing installation (a new key and certificate).
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct StartArgs {
    /// The configuration file.
    #[arg(long, value_name = "FILE", env = ENV_CONFIG, default_value_os_t = config::default_config_file())]
    config: PathBuf,
}

fn main() -> ExitCode {
    let opts = match Opts::try_parse() {
        Ok(opts) => opts,
        Err(err) => {
            let code = if err.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    if let Err(err) = cairn_api::logging::init("info") {
        eprintln!("cairn-agent: {err}");
        return ExitCode::from(EXIT_USAGE);
    }
    // Two workers whatever the host's core count: the agent waits on one session and its
    // checks' processes, and a thread per core would cost memory on big hosts for nothing.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cairn-agent: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match opts.command {
        Command::Install(args) => runtime.block_on(run_install(args)),
        Command::Start(args) => match runtime.block_on(start::start(&args.config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("cairn-agent: {err}");
                ExitCode::from(if err.is_config() { EXIT_USAGE } else { 1 })
            }
        },
    }
}

async fn run_install(args: InstallArgs) -> ExitCode {
    let options = InstallOptions {
        backend_url: args.backend_url,
        token: args.token,
        name: args.name,
        subscriptions: args.subscriptions,
        agent_urls: args.agent_urls,
        config_dir: args.config_dir,
        systemd_unit: args.systemd_unit,
        force: args.force,
    };
    let report = match install::install(&options).await {
        Ok(report) => report,
        Err(err) => {
            eprintln!("cairn-agent: {err}");
            return ExitCode::from(if err.is_usage() { EXIT_USAGE } else { 1 });
        }
    };
    let expires = time::OffsetDateTime::from_unix_timestamp(report.cert_not_after)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| report.cert_not_after.to_string());
    eprintln!(
        "installed entity {} in namespace {} (subscriptions: {}); certificate valid until {}",
        report.name,
        report.namespace,
        if report.subscriptions.is_empty() {
            "none".to_owned()
        } else {
            report.subscriptions.join(", ")
        },
        expires
    );
    eprintln!("configuration: {}", report.config_file.display());
    let from = match report.agent_urls_from {
        AgentUrlSource::Given => "--agent-url",
        AgentUrlSource::Backend => "named by the backend",
        AgentUrlSource::Guessed => {
            "guessed: the backend named none; pass --agent-url if agents connect elsewhere"
        }
    };
    eprintln!("agent urls: {} ({from})", report.agent_urls.join(", "));
    let printed = match &report.unit_file {
        Some(path) => {
            eprintln!(
                "systemd unit: {} (systemctl daemon-reload && systemctl enable --now {})",
                path.display(),
                path.file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default()
            );
            Ok(())
        }
        None => {
            let mut stdout = io::stdout().lock();
            stdout
                .write_all(report.unit.as_bytes())
                .and_then(|()| stdout.flush())
        }
    };
    if let Err(err) = printed {
        eprintln!("cairn-agent: cannot print the systemd unit: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
