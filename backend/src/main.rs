//! The `cairn-backend` binary: parses the command line, installs tracing, runs `init` or
//! `start`, and maps the outcome to an exit code.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cairn_backend::app::contain;
use cairn_backend::app::DEFAULT_BODY_LIMIT;
use cairn_backend::app::{self, InitConfig, ServerError, StartConfig};
use cairn_backend::datadir::{self, DataDir, EtcdTlsFiles, StoreEngine, StoreFlags};
use cairn_backend::listen::{ConnectionLimits, AGENT_MAX_CONNECTIONS, API_MAX_CONNECTIONS};
use cairn_backend::store::resources::ResourceError;

/// Environment variable holding the admin password for `init`.
const ENV_ADMIN_PASSWORD: &str = "CAIRN_ADMIN_PASSWORD";

/// Exit code for unusable configuration (nothing was started).
const EXIT_CONFIG: u8 = 64;

/// Exit code when the store (etcd) could not be reached (sysexits' `EX_UNAVAILABLE`): nothing
/// was started, and starting again once etcd is back may work.
const EXIT_UNAVAILABLE: u8 = 69;

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
    ///
    /// With --store etcd, the cluster's state (the admin user, roles, namespaces and everything
    /// else the API stores) goes into etcd, under --etcd-prefix, and the data dir keeps only
    /// certificates, keys and settings (store.json). Run init once per cluster: further
    /// backends join it by starting with a copy of this data dir (give their host names to
    /// --hostnames here). init refuses an etcd prefix that already holds keys.
    Init(InitArgs),
    /// Start the backend.
    ///
    /// Opens the store that init recorded in the data dir (store.json). With etcd, a second
    /// backend joins the same cluster by starting with a copy of the first one's data dir
    /// (which then holds only certificates, keys and settings; keep it as private as the
    /// keys in it); --etcd-endpoints and the --etcd-*-file flags override the recorded ones
    /// when etcd is reached differently from this host.
    Start(StartArgs),
}

/// The store flags of `init` and `start`.
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// Where the cluster's state lives: `embedded` (a file in the data dir, for one backend)
    /// or `etcd` (shared by every backend of a cluster). init defaults to embedded and records
    /// the choice in the data dir; start uses the recorded one and refuses another.
    #[arg(long, value_enum, value_name = "ENGINE")]
    store: Option<StoreArg>,
    /// The etcd members' client URLs, comma-separated: http://HOST:2379, or https:// with the
    /// --etcd-*-file flags. Required with --store etcd; on start, replaces the recorded ones.
    #[arg(long, value_delimiter = ',', value_name = "URL,...")]
    etcd_endpoints: Option<Vec<String>>,
    /// The etcd key prefix that holds this cluster's keys [init default: /cairn/]; on start,
    /// it must be the recorded one.
    #[arg(long, value_name = "PREFIX")]
    etcd_prefix: Option<String>,
    /// The CA certificate (PEM) that etcd's server certificates chain to; with
    /// --etcd-cert-file and --etcd-key-file, for client certificate TLS to etcd.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_cert_file", "etcd_key_file"])]
    etcd_trusted_ca_file: Option<PathBuf>,
    /// This backend's client certificate (PEM) for etcd.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_trusted_ca_file", "etcd_key_file"])]
    etcd_cert_file: Option<PathBuf>,
    /// The private key (PEM) of --etcd-cert-file.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_trusted_ca_file", "etcd_cert_file"])]
    etcd_key_file: Option<PathBuf>,
}

/// The values of `--store`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StoreArg {
    /// The embedded store: redb, one file in the data dir.
    Embedded,
    /// An etcd cluster, shared by every backend of the cluster.
    Etcd,
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
    #[command(flatten)]
    store: StoreArgs,
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
    /// The agent URL (wss://HOST:PORT) that the bootstrap answer tells `cairn-agent install` to
    /// connect to; repeat for several, tried in order. Give it when agents reach the agent
    /// listener under another name or port (a load balancer, NAT, a certificate naming only a
    /// DNS name). Default: wss://IP:PORT of the --agent-listen address when it is one address;
    /// when it is 0.0.0.0 or [::], the host name each bootstrap request reached with the
    /// listener's port.
    #[arg(long = "agent-advertise-url", value_name = "URL")]
    agent_advertise_urls: Vec<String>,
    /// Also serve `/metrics` here, over plain HTTP and without authentication, for a
    /// Prometheus scraper (e.g. 127.0.0.1:9464; port 0 picks a free port). Keep it on loopback
    /// or a private network. The API's own `/metrics` always needs a token or API key.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// The most API connections open at once; further clients wait in the kernel's backlog.
    #[arg(long, default_value_t = API_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    api_max_connections: u32,
    /// Seconds a client may take for the TLS handshake.
    #[arg(long, default_value_t = ConnectionLimits::API.handshake_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    api_handshake_timeout: u64,
    /// Seconds an HTTP/1.1 client may take to send a request's headers.
    #[arg(long, default_value_t = ConnectionLimits::API.header_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    api_header_timeout: u64,
    /// Seconds an API connection with no request in flight and no traffic stays open.
    #[arg(long, default_value_t = ConnectionLimits::API.idle_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    api_idle_timeout: u64,
    /// The most agent connections (sessions and handshakes) open at once; further agents
    /// wait in the kernel's backlog.
    #[arg(long, default_value_t = AGENT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    agent_max_connections: u32,
    /// Seconds an agent may take for the TLS handshake, and again for the WebSocket upgrade.
    #[arg(long, default_value_t = ConnectionLimits::AGENT.handshake_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    agent_handshake_timeout: u64,
    /// Events that may wait for handlers; beyond it an event is stored but not handled
    /// (counted in `cairn_pipeline_events_dropped_total`).
    #[arg(long, default_value_t = cairn_backend::app::DEFAULT_QUEUE_CAPACITY as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pipeline_queue_events: u32,
    /// MiB of events (their JSON) the pipeline holds at once, queued or read by running
    /// handlers; beyond it an event is stored but not handled (counted in
    /// `cairn_pipeline_events_dropped_bytes_total`).
    #[arg(long, default_value_t = (cairn_backend::app::DEFAULT_QUEUE_BYTES >> 20) as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pipeline_queue_mib: u32,
    /// MiB of memory the embedded store may use to cache its file's pages.
    #[arg(long, default_value_t = (cairn_backend::store::DEFAULT_CACHE_BYTES >> 20) as u32, value_parser = clap::value_parser!(u32).range(1..))]
    store_cache_mib: u32,
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
    #[command(flatten)]
    store: StoreArgs,
    /// How long to keep trying to reach etcd at start, seconds (each failed attempt is logged);
    /// then the backend exits with status 69.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    etcd_connect_timeout: u64,
    /// Run pipe handlers as this user (name or uid; supplementary groups dropped). Needs the
    /// backend to run as root.
    #[arg(long, value_name = "USER")]
    handler_user: Option<String>,
    /// Let pipe handlers run as root when the backend runs as root without --handler-user;
    /// otherwise the backend refuses to run them (each run fails with a logged reason).
    #[arg(long, conflicts_with = "handler_user")]
    allow_root_handlers: bool,
    /// The folder where handlers', mutators' and filters' runtime assets are unpacked (created
    /// readable by everyone, so that handlers running as --handler-user can run them). Not
    /// inside the data dir, which contained handlers cannot read. Default: next to the data
    /// dir, `<data-dir>-assets`.
    #[arg(long, value_name = "PATH")]
    assets_cache_dir: Option<PathBuf>,
    /// A PEM file of CAs trusted for asset downloads besides the system roots.
    #[arg(long, value_name = "PATH")]
    assets_trusted_ca_file: Option<PathBuf>,
    /// Allow `http://` asset URLs (the sha512 is still checked).
    #[arg(long)]
    assets_allow_http: bool,
    /// Bytes of unpacked assets the cache holds at most; the least recently used are evicted.
    #[arg(long, value_name = "BYTES", default_value_t = cairn_api::assets::DEFAULT_MAX_CACHE_BYTES, value_parser = clap::value_parser!(u64).range(1..))]
    assets_max_cache_bytes: u64,
    /// The longest a web UI session lasts from its login, seconds; then the user logs in again.
    /// Logging out ends it at once.
    #[arg(long, default_value_t = cairn_backend::app::DEFAULT_UI_SESSION_TTL.as_secs(), value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    ui_session_ttl: u64,
}

fn main() -> ExitCode {
    // The handler containment helper (see `contain`): before anything else, with no logging.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|arg| arg == contain::EXEC_ARG) {
        return contain::exec_main(args);
    }
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
            // The error and its causes, each once (some errors repeat their cause's words).
            eprintln!("cairn-backend: {}", cairn_api::problem::cause_chain(&*err));
            ExitCode::from(code)
        }
    }
}

async fn run_init(args: InitArgs) -> Result<(), (u8, anyhow::Error)> {
    let store = store_flags(args.store)
        .for_init()
        .map_err(|err| (EXIT_CONFIG, err.into()))?;
    let config = InitConfig {
        data_dir: args.data_dir,
        cluster_name: args.cluster_name,
        hostnames: args.hostnames,
        admin_username: args.admin_user,
        admin_password: args.admin_password,
        jwt_key_files: args.jwt_private_key_file.zip(args.jwt_public_key_file),
        store,
    };
    let summary = app::init(&config)
        .await
        .map_err(|err| (exit_code(&err), err.into()))?;
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
    let dir = DataDir::new(&args.data_dir);
    // An uninitialised data dir says so, rather than that it records no store.
    let store = datadir::read_cluster(&dir)
        .and_then(|_| datadir::read_store_settings(&dir))
        .and_then(|recorded| store_flags(args.store).for_start(&dir, recorded))
        .map_err(|err| (EXIT_CONFIG, err.into()))?;
    let config = StartConfig {
        assets: cairn_backend::app::AssetsSettings {
            cache_dir: args.assets_cache_dir,
            trusted_ca_file: args.assets_trusted_ca_file,
            allow_http: args.assets_allow_http,
            max_cache_bytes: args.assets_max_cache_bytes,
        },
        data_dir: args.data_dir,
        api_listen: args.api_listen,
        agent_listen: agent_listen(args.agent_listen, args.api_listen),
        agent_advertise_urls: args.agent_advertise_urls,
        metrics_listen: args.metrics_listen,
        api_limits: ConnectionLimits {
            max_connections: usize::try_from(args.api_max_connections).unwrap_or(usize::MAX),
            handshake_timeout: std::time::Duration::from_secs(args.api_handshake_timeout),
            header_timeout: std::time::Duration::from_secs(args.api_header_timeout),
            idle_timeout: std::time::Duration::from_secs(args.api_idle_timeout),
        },
        agent_limits: ConnectionLimits {
            max_connections: usize::try_from(args.agent_max_connections).unwrap_or(usize::MAX),
            handshake_timeout: std::time::Duration::from_secs(args.agent_handshake_timeout),
            header_timeout: std::time::Duration::from_secs(args.agent_handshake_timeout),
            ..ConnectionLimits::AGENT
        },
        body_limit: args.api_request_limit,
        pipeline: cairn_backend::app::PipelineConfig {
            queue_capacity: usize::try_from(args.pipeline_queue_events).unwrap_or(usize::MAX),
            queue_bytes: usize::try_from(args.pipeline_queue_mib)
                .unwrap_or(usize::MAX)
                .saturating_mul(1024 * 1024),
            ..cairn_backend::app::PipelineConfig::default()
        },
        secrets: cairn_backend::app::SecretsConfig {
            max_ttl: std::time::Duration::from_secs(args.secrets_cache_ttl),
            failure_backoff_max: std::time::Duration::from_secs(args.secrets_retry_max),
            ..cairn_backend::app::SecretsConfig::default()
        },
        store,
        store_connect_timeout: std::time::Duration::from_secs(args.etcd_connect_timeout),
        store_cache_bytes: usize::try_from(args.store_cache_mib)
            .unwrap_or(usize::MAX)
            .saturating_mul(1024 * 1024),
        handlers: contain::ContainConfig {
            handler_user: args.handler_user,
            allow_root_handlers: args.allow_root_handlers,
        },
        ui_session_ttl: std::time::Duration::from_secs(args.ui_session_ttl),
    };
    let running = app::start(&config, shutdown_signal())
        .await
        .map_err(|err| (exit_code(&err), err.into()))?;
    // Tests and scripts read the bound address from this line.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "api listening on https://{}", running.api_addr);
    let _ = writeln!(stdout, "agent listening on {}", running.agent_addr);
    if let Some(metrics_addr) = running.metrics_addr {
        let _ = writeln!(stdout, "metrics listening on http://{metrics_addr}/metrics");
    }
    let _ = stdout.flush();
    drop(stdout);
    running.wait().await;
    Ok(())
}

/// The store flags as the data dir layer takes them (clap has checked that the TLS files come
/// together).
fn store_flags(args: StoreArgs) -> StoreFlags {
    let etcd_tls = match (
        args.etcd_trusted_ca_file,
        args.etcd_cert_file,
        args.etcd_key_file,
    ) {
        (Some(trusted_ca_file), Some(cert_file), Some(key_file)) => Some(EtcdTlsFiles {
            trusted_ca_file,
            cert_file,
            key_file,
        }),
        _ => None,
    };
    StoreFlags {
        engine: args.store.map(|store| match store {
            StoreArg::Embedded => StoreEngine::Embedded,
            StoreArg::Etcd => StoreEngine::Etcd,
        }),
        etcd_endpoints: args.etcd_endpoints,
        etcd_prefix: args.etcd_prefix,
        etcd_tls,
    }
}

/// [`EXIT_UNAVAILABLE`] when the store could not be reached, else [`EXIT_CONFIG`].
fn exit_code(err: &ServerError) -> u8 {
    match err {
        ServerError::StoreUnreachable { .. } => EXIT_UNAVAILABLE,
        ServerError::Store(store) | ServerError::Resources(ResourceError::Store(store))
            if store.is_unavailable() =>
        {
            EXIT_UNAVAILABLE
        }
        _ => EXIT_CONFIG,
    }
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
