//! The `cairn-backend` binary: parses the command line, installs tracing, runs `init` or
//! `start`, and maps the outcome to an exit code.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cairn_backend::api::DEFAULT_BODY_LIMIT;
use cairn_backend::server::{self, InitConfig, StartConfig};

/// Environment variable holding the admin password for `init`.
const ENV_ADMIN_PASSWORD: &str = "CAIRN_ADMIN_PASSWORD";

/// Exit code for unusable configuration (nothing was started).
const EXIT_CONFIG: u8 = 64;

/// Where agents connect unless told otherwise.
const DEFAULT_AGENT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8081);

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
    Init(InitArgs),
    /// Start the backend.
    Start(StartArgs),
}

#[derive(Debug, clap::Args)]
struct InitArgs {
    /// The data directory to create; refuses one that is already initialised.
    #[arg(long)]
    data_dir: PathBuf,
    /// The cluster's name, also the issuer of its tokens.
    #[arg(long, default_value = "cairn")]
    cluster_name: String,
    /// Extra host names and addresses for the server certificates (localhost and 127.0.0.1 are
    /// always included).
    #[arg(long, value_delimiter = ',')]
    hostnames: Vec<String>,
    /// The first administrator's user name.
    #[arg(long, default_value = "admin")]
    admin_user: String,
    /// The administrator's password (prefer the environment variable CAIRN_ADMIN_PASSWORD, which
    /// stays out of the process list).
    #[arg(long, env = ENV_ADMIN_PASSWORD, hide_env_values = true)]
    admin_password: String,
    /// A shared JWT private key (PKCS#8 PEM, P-256), for clusters of one federation.
    #[arg(long, requires = "jwt_public_key_file")]
    jwt_private_key_file: Option<PathBuf>,
    /// The matching public key.
    #[arg(long, requires = "jwt_private_key_file")]
    jwt_public_key_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct StartArgs {
    /// An initialised data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// Where the HTTPS API listens (port 0 picks a free port).
    #[arg(long, default_value = "0.0.0.0:8080")]
    api_listen: SocketAddr,
    /// Where agents connect (mutual TLS WebSocket; port 0 picks a free port). Default
    /// 0.0.0.0:8081, or a free port on the API's address when --api-listen asks for port 0, so
    /// that throwaway backends never collide.
    #[arg(long, value_name = "ADDR")]
    agent_listen: Option<SocketAddr>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = DEFAULT_BODY_LIMIT)]
    api_request_limit: usize,
    /// The longest a resolved secret value is kept in memory, seconds (a shorter Vault lease
    /// wins); a value rotated at its provider is seen after at most this long.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    secrets_cache_ttl: u64,
    /// The longest a failed secret read is remembered before the provider is asked again,
    /// seconds (failures back off from 1 s, doubling): how soon a check recovers once its
    /// Vault is back.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    secrets_retry_max: u64,
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    if let Err(err) = cairn_api::logging::init("info") {
        eprintln!("cairn-backend: {err}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cairn-backend: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match opts.command {
            Command::Init(args) => run_init(args).await,
            Command::Start(args) => run_start(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, err)) => {
            eprintln!("cairn-backend: {err:#}");
            ExitCode::from(code)
        }
    }
}

async fn run_init(args: InitArgs) -> Result<(), (u8, anyhow::Error)> {
    let config = InitConfig {
        data_dir: args.data_dir,
        cluster_name: args.cluster_name,
        hostnames: args.hostnames,
        admin_username: args.admin_user,
        admin_password: args.admin_password,
        jwt_key_files: args.jwt_private_key_file.zip(args.jwt_public_key_file),
    };
    let summary = server::init(&config)
        .await
        .map_err(|err| (EXIT_CONFIG, err.into()))?;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "initialised {}", config.data_dir.display());
    let _ = writeln!(
        stdout,
        "ca fingerprint (sha256): {}",
        summary.ca_fingerprint_sha256
    );
    Ok(())
}

async fn run_start(args: StartArgs) -> Result<(), (u8, anyhow::Error)> {
    let config = StartConfig {
        data_dir: args.data_dir,
        api_listen: args.api_listen,
        agent_listen: agent_listen(args.agent_listen, args.api_listen),
        body_limit: args.api_request_limit,
        secrets: cairn_backend::secrets::SecretsConfig {
            max_ttl: std::time::Duration::from_secs(args.secrets_cache_ttl),
            failure_backoff_max: std::time::Duration::from_secs(args.secrets_retry_max),
            ..cairn_backend::secrets::SecretsConfig::default()
        },
    };
    let running = server::start(&config, shutdown_signal())
        .await
        .map_err(|err| (EXIT_CONFIG, err.into()))?;
    // Tests and scripts read the bound address from this line.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "api listening on https://{}", running.api_addr);
    let _ = writeln!(stdout, "agent listening on {}", running.agent_addr);
    let _ = stdout.flush();
    drop(stdout);
    running.wait().await;
    Ok(())
}

/// The agent listener's address: the one given, else [`DEFAULT_AGENT_LISTEN`], except that an
/// API on port 0 (a test or a throwaway backend) gets its agent listener on a free port of the
/// same address too.
fn agent_listen(given: Option<SocketAddr>, api_listen: SocketAddr) -> SocketAddr {
    match given {
        Some(addr) => addr,
        None if api_listen.port() == 0 => SocketAddr::new(api_listen.ip(), 0),
        None => DEFAULT_AGENT_LISTEN,
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
