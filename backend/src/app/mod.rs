//! Wiring: `init` writes a data directory and seeds the store; `start` opens it, loads and checks
//! the TLS and JWT material, binds, serves the API over HTTPS and the agent listener (mutual TLS
//! WebSocket), and drains both on shutdown.
//!
//! The store is the embedded one (`store.redb` in the data dir) or etcd, as `store.json`
//! records; [`open_store`] opens either.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use cairn_api::model::{Event, EventFilter, Handler, Silenced};
use cairn_api::{Kind, Spec};

/// What the binary and the benches configure of the lower layers.
pub use crate::events::pipeline::contain;
pub use crate::events::pipeline::{PipelineConfig, DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_CAPACITY};
pub use crate::http::{DEFAULT_BODY_LIMIT, DEFAULT_UI_SESSION_TTL};
pub use crate::secrets::SecretsConfig;

use crate::agents::connection::AgentHub;
use crate::auth::cache::AuthCache;
use crate::auth::rbac;
use crate::auth::{self, TokenIssuer};
use crate::datadir::{self, DataDir, EtcdSettings, InitFiles, StoreSettings};
use crate::events::ingest::EventSink;
use crate::events::pipeline::contain::Containment;
use crate::events::pipeline::{HandlerResolver, Pipeline};
use crate::http::{self, ApiMetrics, AppState};
use crate::listen::{self, Activity, BoundedListener, ConnectionLimits, TrackedIo};
use crate::store::resources::Resources;
#[cfg(feature = "etcd")]
use crate::store::{EtcdConfig, EtcdStore, EtcdTls, ProbeConfig};
use crate::store::{Precondition, Store, StoreError, StoreHealth, StoreStats};
use crate::store::{RedbStore, DEFAULT_CACHE_BYTES};

/// How long in-flight requests get to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How often an HTTP/2 connection is pinged, and how long the answer may take, to find peers
/// that went away without closing.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// Settings of `cairn-backend init`.
#[derive(Debug, Clone)]
pub struct InitConfig {
    /// The data directory to create.
    pub data_dir: PathBuf,
    /// The cluster's name (also the JWT issuer).
    pub cluster_name: String,
    /// Extra names and addresses for the server certificates.
    pub hostnames: Vec<String>,
    /// The first administrator.
    pub admin_username: String,
    /// Their password (at least 8 characters).
    pub admin_password: String,
    /// A shared JWT key pair (federation), or `None` to generate one.
    pub jwt_key_files: Option<(PathBuf, PathBuf)>,
    /// The store to seed, recorded in `store.json`.
    pub store: StoreSettings,
}

/// Where and how handlers', mutators' and filters' runtime assets are cached (`--assets-*`).
#[derive(Debug, Clone)]
pub struct AssetsSettings {
    /// The cache's folder (`--assets-cache-dir`); `None`: [`default_assets_cache_dir`]. Never
    /// inside the data dir, which contained handlers cannot read.
    pub cache_dir: Option<PathBuf>,
    /// A PEM file of CAs trusted for downloads besides the system roots.
    pub trusted_ca_file: Option<PathBuf>,
    /// Whether `http://` asset URLs are allowed.
    pub allow_http: bool,
    /// Bytes of unpacked assets held at most; the least recently used are evicted.
    pub max_cache_bytes: u64,
}

impl Default for AssetsSettings {
    fn default() -> Self {
        AssetsSettings {
            cache_dir: None,
            trusted_ca_file: None,
            allow_http: false,
            max_cache_bytes: cairn_api::assets::DEFAULT_MAX_CACHE_BYTES,
        }
    }
}

/// The default asset cache: next to the data dir, named after it (`/var/lib/cairn` →
/// `/var/lib/cairn-assets`), outside it so that contained handlers can read it.
pub fn default_assets_cache_dir(data_dir: &Path) -> PathBuf {
    let absolute = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    let name = absolute.file_name().map_or_else(
        || "cairn".into(),
        |name| name.to_string_lossy().into_owned(),
    );
    absolute.with_file_name(format!("{name}-assets"))
}

/// Settings of `cairn-backend start`.
#[derive(Debug, Clone)]
pub struct StartConfig {
    /// An initialised data directory.
    pub data_dir: PathBuf,
    /// The runtime assets' cache (`--assets-*`).
    pub assets: AssetsSettings,
    /// Where the HTTPS API listens.
    pub api_listen: SocketAddr,
    /// Where the agent listener (mutual TLS WebSocket) listens.
    pub agent_listen: SocketAddr,
    /// The agent URLs the bootstrap answer names (`--agent-advertise-url`, `wss://…`); when
    /// empty, derived from the bound agent listener (see [`crate::agents::join::AgentUrls`]).
    pub agent_advertise_urls: Vec<String>,
    /// The bounds on the API's connections (count, handshake, header and idle timeouts).
    pub api_limits: ConnectionLimits,
    /// The bounds on the agent listener's connections (count, handshake and upgrade
    /// timeouts).
    pub agent_limits: ConnectionLimits,
    /// Where `/metrics` is served without authentication over plain HTTP, if anywhere
    /// (`--metrics-listen`); the API's own `/metrics` needs a token or API key.
    pub metrics_listen: Option<SocketAddr>,
    /// Largest request body, bytes.
    pub body_limit: usize,
    /// The event pipeline's bounds (queue count and bytes, handler concurrency).
    pub pipeline: PipelineConfig,
    /// The secrets resolver's settings.
    pub secrets: crate::secrets::SecretsConfig,
    /// The store to open: the one the data dir records (`store.json`), possibly with other etcd
    /// endpoints or TLS files; another engine or etcd prefix is refused.
    pub store: StoreSettings,
    /// How long to keep trying to reach etcd before giving up.
    pub store_connect_timeout: Duration,
    /// The embedded store's page cache, bytes (`--store-cache-mib`).
    pub store_cache_bytes: usize,
    /// Whose identity pipe handlers run with (`--handler-user`, `--allow-root-handlers`).
    pub handlers: crate::events::pipeline::contain::ContainConfig,
    /// A web UI session's longest life from its login (`--ui-session-ttl`).
    pub ui_session_ttl: Duration,
}

/// The store `init` or `start` opened, from [`open_store`].
pub(crate) struct OpenedStore {
    /// The store, for everything that reads and writes.
    pub(crate) store: Arc<dyn Store>,
    /// The embedded store's commit counters, for `/metrics`; `None` for etcd.
    pub(crate) stats: Option<Arc<StoreStats>>,
    /// The etcd store itself, for coordination on its client (leases, elections) under the
    /// same connection and prefix; `None` for the embedded store.
    #[cfg(feature = "etcd")]
    pub(crate) etcd: Option<EtcdStore>,
    /// The store as logs name it: `embedded store at DIR/store.redb` or
    /// `etcd at URLS (prefix P)`.
    pub(crate) name: String,
}

/// Why the backend could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory is missing, incomplete or unreadable.
    #[error(transparent)]
    DataDir(#[from] datadir::DataDirError),
    /// TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::datadir::tls::TlsError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Resources in the store could not be read.
    #[error("store: {0}")]
    Resources(#[from] crate::store::resources::ResourceError),
    /// JWT keys could not be used.
    #[error("jwt keys: {0}")]
    Jwt(#[from] auth::AuthError),
    /// Reading a key file failed.
    #[error("cannot read {path}: {source}")]
    ReadFailed {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    BindFailed {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent CA or the cluster CA cannot be used for bootstrap.
    #[error(transparent)]
    AgentPki(#[from] crate::agents::join::AgentPkiError),
    /// A setting is unusable.
    #[error("{0}")]
    Invalid(String),
    /// `start` could not reach etcd within `--etcd-connect-timeout`.
    ///
    /// Expected while etcd is down or unreachable from here; starting again later may work.
    #[error("{store} did not answer within {waited:?} (--etcd-connect-timeout): it is down, unreachable from here or without quorum")]
    StoreUnreachable {
        /// The store, with its endpoints.
        store: String,
        /// How long `start` kept trying.
        waited: Duration,
        /// The last failure.
        #[source]
        source: StoreError,
    },
    /// `init` found keys under the etcd prefix: another cluster, or an earlier `init`, is
    /// there. Nothing was written.
    #[error("etcd prefix {prefix} at {endpoints} already holds a cluster (key {key} exists): refusing to init over it; a second backend joins that cluster by starting with a copy of its first backend's data dir; otherwise choose another --etcd-prefix, or, if an earlier init did not finish, remove its keys (etcdctl del --prefix {prefix})")]
    ClusterExists {
        /// The etcd endpoints, comma-separated.
        endpoints: String,
        /// The prefix.
        prefix: String,
        /// The first key found under it.
        key: String,
    },
    /// Handler containment cannot be set up as asked (`--handler-user`).
    #[error(transparent)]
    Contain(#[from] crate::events::pipeline::contain::ContainError),
    /// The data dir or the flags ask for etcd, and this binary was built without it.
    #[error("this cairn-backend was built without etcd support (cargo feature `etcd`), so it cannot use the etcd store of {}", root.display())]
    EtcdNotBuilt {
        /// The data directory.
        root: PathBuf,
    },
}

/// Creates the data directory and seeds the store with the default roles and the admin.
///
/// With etcd, the data dir gets the certificates, keys and settings (`store.json`, no
/// `store.redb`) and etcd the seeded resources.
///
/// # Errors
/// When the directory is already initialised, a setting is invalid, or writing fails; with
/// etcd also when it cannot be reached or already holds keys under the prefix
/// ([`ServerError::ClusterExists`]), before anything is written. Should seeding etcd fail
/// afterwards, the files written are removed again.
pub async fn init(config: &InitConfig) -> Result<datadir::InitSummary, ServerError> {
    if let Some(problem) = cairn_api::validate::check_name(Kind::User, &config.admin_username) {
        return Err(ServerError::Invalid(format!("--admin-user: {problem}")));
    }
    if config.admin_password.chars().count() < 8 {
        return Err(ServerError::Invalid(
            "the admin password must be at least 8 characters".into(),
        ));
    }
    let dir = DataDir::new(&config.data_dir);
    // etcd first, before anything is written: it must answer, and hold no cluster yet.
    let opened = match &config.store {
        StoreSettings::Embedded => None,
        StoreSettings::Etcd(etcd) => {
            let opened =
                open_store(&dir, &config.store, Duration::ZERO, DEFAULT_CACHE_BYTES).await?;
            let page = opened.store.list("", None, 1).await?;
            if let Some(entry) = page.entries.first() {
                return Err(ServerError::ClusterExists {
                    endpoints: etcd.joined_endpoints(),
                    prefix: etcd.prefix.clone(),
                    key: entry.key.clone(),
                });
            }
            Some(opened)
        }
    };
    let summary = datadir::write_init_files_for_store(
        &dir,
        &InitFiles {
            cluster_name: config.cluster_name.clone(),
            hostnames: config.hostnames.clone(),
            jwt: config.jwt_key_files.clone(),
        },
        &config.store,
    )?;
    let opened = match opened {
        Some(opened) => opened,
        None => open_store(&dir, &config.store, Duration::ZERO, DEFAULT_CACHE_BYTES).await?,
    };
    match seed(config, Resources::new(opened.store)).await {
        Ok(()) => Ok(summary),
        Err(err) => {
            // With etcd the data dir holds only files, which init writes again.
            if config.store != StoreSettings::Embedded {
                if let Err(cleanup) = datadir::remove_init_files(&dir, &summary) {
                    tracing::warn!(
                        error = %cairn_api::problem::cause_chain(&cleanup),
                        "cannot remove the files of the failed init"
                    );
                }
            }
            Err(err)
        }
    }
}

/// Writes the default roles, the admin, the `default` namespace and the `env` secrets provider.
async fn seed(config: &InitConfig, resources: Resources) -> Result<(), ServerError> {
    let hash = auth::hash_password(&config.admin_password)?;
    for resource in rbac::default_resources(&config.admin_username, &hash) {
        resources.put(&resource, Precondition::Absent).await?;
    }
    let default_namespace = cairn_api::Resource::new(
        cairn_api::ObjectMeta::named("", "default"),
        Spec::Namespace(cairn_api::model::Namespace {
            name: "default".to_owned(),
        }),
    );
    resources
        .put(&default_namespace, Precondition::Absent)
        .await?;
    let env_provider = cairn_api::Resource::new(
        cairn_api::ObjectMeta::named("", "env"),
        // Serves nothing until the operator allows variables (issue 13).
        Spec::EnvProvider(cairn_api::model::EnvProvider { allow: Vec::new() }),
    );
    resources.put(&env_provider, Precondition::Absent).await?;
    Ok(())
}

/// Opens the store `settings` describe: the embedded store in `dir`, or etcd, tried again while
/// it is unreachable for up to `connect_timeout` (zero: once).
///
/// # Errors
///
/// [`ServerError::StoreUnreachable`] when etcd did not answer in time (with a non-zero
/// `connect_timeout`), [`ServerError::Store`] for other failures, and
/// [`ServerError::EtcdNotBuilt`] for etcd without the `etcd` feature.
pub(crate) async fn open_store(
    dir: &DataDir,
    settings: &StoreSettings,
    connect_timeout: Duration,
    cache_bytes: usize,
) -> Result<OpenedStore, ServerError> {
    match settings {
        StoreSettings::Embedded => {
            let path = dir.store_file();
            let redb = RedbStore::open_with_cache(&path, cache_bytes)?;
            let name = format!("embedded store at {}", path.display());
            Ok(OpenedStore {
                stats: Some(redb.stats()),
                store: Arc::new(redb),
                #[cfg(feature = "etcd")]
                etcd: None,
                name,
            })
        }
        #[cfg(feature = "etcd")]
        StoreSettings::Etcd(etcd) => {
            let name = format!(
                "etcd at {} (prefix {})",
                etcd.joined_endpoints(),
                etcd.prefix
            );
            let config = EtcdConfig {
                endpoints: etcd.endpoints.clone(),
                prefix: etcd.prefix.clone(),
                tls: etcd.tls.as_ref().map(|tls| EtcdTls {
                    ca_file: tls.trusted_ca_file.clone(),
                    cert_file: tls.cert_file.clone(),
                    key_file: tls.key_file.clone(),
                }),
            };
            let store = match EtcdStore::connect_retrying(config, connect_timeout).await {
                Ok(store) => store,
                Err(source) if source.is_unavailable() && !connect_timeout.is_zero() => {
                    return Err(ServerError::StoreUnreachable {
                        store: name,
                        waited: connect_timeout,
                        source,
                    })
                }
                Err(source) => return Err(source.into()),
            };
            Ok(OpenedStore {
                store: Arc::new(store.clone()),
                stats: None,
                etcd: Some(store),
                name,
            })
        }
        #[cfg(not(feature = "etcd"))]
        StoreSettings::Etcd(_) => {
            let _ = connect_timeout;
            Err(ServerError::EtcdNotBuilt {
                root: dir.root().to_owned(),
            })
        }
    }
}

// === impl OpenedStore ===

impl OpenedStore {
    /// The store's health for `/health` and the API: probed in the background for etcd (which
    /// has outages of its own), unprobed for the embedded store. The probe ends with the store.
    pub(crate) fn spawn_health_probe(&self) -> Arc<StoreHealth> {
        #[cfg(feature = "etcd")]
        if self.etcd.is_some() {
            return StoreHealth::spawn_probe(&self.store, ProbeConfig::new(self.name.clone()));
        }
        StoreHealth::unprobed()
    }
}

/// A running backend: its bound addresses and a handle to stop it.
pub struct Running {
    /// Where the API listens.
    pub api_addr: SocketAddr,
    /// Where the agent listener listens.
    pub agent_addr: SocketAddr,
    /// Where the unauthenticated `/metrics` listens (`--metrics-listen`), if it does.
    pub metrics_addr: Option<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
    agent_task: tokio::task::JoinHandle<()>,
    /// The tasks that stop on the shutdown signal by themselves: the scheduler, the keepalive
    /// watchdog, the replicators.
    stopping: Vec<(tokio::task::JoinHandle<()>, &'static str)>,
    /// The handler pipeline, drained once nothing feeds it any more.
    pipeline: Arc<Pipeline>,
    /// The tasks that run until aborted: store watches (auth view, revocations), sweepers, the
    /// pipeline's dispatcher (after its drain).
    background: Vec<(tokio::task::JoinHandle<()>, &'static str)>,
    /// The etcd lease keeper, which leaves the cluster on shutdown.
    coordination_task: Option<tokio::task::JoinHandle<()>>,
}

/// How long each self-stopping task gets after the listeners closed before it is aborted.
const TASK_STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl Running {
    /// Waits for the server to stop (after the shutdown future passed to [`start`] resolved).
    pub async fn wait(self) {
        for (task, what) in [(self.task, "api"), (self.agent_task, "agent listener")] {
            if let Err(err) = task.await {
                tracing::error!(error = %err, "{what} task failed");
            }
        }
        // Nothing new reaches the pipeline once the listeners, the scheduler and the watchdog
        // are done: then the events it holds are handled, within its grace period.
        for (mut task, what) in self.stopping {
            match tokio::time::timeout(TASK_STOP_TIMEOUT, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::error!(error = %err, "{what} task failed"),
                Err(_) => {
                    tracing::warn!(timeout = ?TASK_STOP_TIMEOUT, "{what} did not stop in time; aborted");
                    task.abort();
                }
            }
        }
        match self.pipeline.shutdown().await {
            Ok(()) => tracing::info!("event pipeline drained"),
            Err(err) => tracing::warn!(error = %err, "event pipeline not drained"),
        }
        for (task, what) in self.background {
            task.abort();
            if let Err(err) = task.await {
                if !err.is_cancelled() {
                    tracing::error!(error = %err, "{what} task failed");
                }
            }
        }
        // Leaving the cluster (revoking the lease) lets the other backends adopt this one's
        // agents at once; it is bounded by the lease keeper's own request timeout.
        if let Some(task) = self.coordination_task {
            if tokio::time::timeout(Duration::from_secs(6), task)
                .await
                .is_err()
            {
                tracing::warn!("did not leave the cluster in time; the others take over after the lease expires");
            }
        }
    }
}

/// The runtime assets of handlers, mutators and filters, cached as `config.assets` says. The
/// cache's folder is created now, readable by everyone (handlers may run as `--handler-user`),
/// and refused inside a path handlers must not reach; the trusted CA file is read now.
///
/// # Errors
/// [`ServerError::Invalid`] naming the flag.
fn runtime_assets(config: &StartConfig) -> Result<cairn_api::assets::RuntimeAssets, ServerError> {
    use std::os::unix::fs::PermissionsExt;
    let settings = &config.assets;
    let dir = settings
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_assets_cache_dir(&config.data_dir));
    let invalid = |message: String| ServerError::Invalid(format!("--assets-cache-dir: {message}"));
    let existed = dir.is_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|error| invalid(format!("cannot create {}: {error}", dir.display())))?;
    if !existed {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(
            |error| invalid(format!("cannot set the mode of {}: {error}", dir.display())),
        )?;
    }
    let canonical = std::fs::canonicalize(&dir)
        .map_err(|error| invalid(format!("cannot resolve {}: {error}", dir.display())))?;
    for protected in protected_paths(config) {
        let Ok(protected) = std::fs::canonicalize(&protected) else {
            continue;
        };
        if canonical.starts_with(&protected) {
            return Err(invalid(format!(
                "{} is inside {}, which pipe handlers cannot read; choose a folder outside it",
                dir.display(),
                protected.display()
            )));
        }
    }
    let mut cache = cairn_api::assets::CacheConfig::new(canonical);
    cache.max_bytes = settings.max_cache_bytes;
    cache.fetch.allow_http = settings.allow_http;
    if let Some(path) = &settings.trusted_ca_file {
        let pem = cairn_api::assets::read_trusted_ca(path).map_err(|message| {
            ServerError::Invalid(format!("--assets-trusted-ca-file: {message}"))
        })?;
        cache.fetch.trusted_ca_pem = Some(pem);
    }
    Ok(cairn_api::assets::RuntimeAssets::new(cache))
}

/// What pipe handlers must not reach: the data dir (keys, embedded store, `store.json`) and the
/// etcd client TLS files, wherever they are.
fn protected_paths(config: &StartConfig) -> Vec<PathBuf> {
    let mut protected = vec![config.data_dir.clone()];
    if let StoreSettings::Etcd(EtcdSettings { tls: Some(tls), .. }) = &config.store {
        protected.extend([
            tls.key_file.clone(),
            tls.cert_file.clone(),
            tls.trusted_ca_file.clone(),
        ]);
    }
    protected
}

/// Starts the backend: opens the store, loads TLS and JWT material (failing fast), binds, and
/// serves until `shutdown` resolves, then drains for up to [`SHUTDOWN_GRACE`].
///
/// # Errors
/// Any startup failure, before anything is served.
pub async fn start(
    config: &StartConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, ServerError> {
    // First, before any key is read: non-dumpable, and the handler user checked.
    let containment = Arc::new(Containment::new(
        &config.handlers,
        &protected_paths(config),
    )?);
    let dir = DataDir::new(&config.data_dir);
    let cluster = datadir::read_cluster(&dir)?;
    match listen::raise_fd_limit() {
        Some(limit) => tracing::info!(limit, "open files limit"),
        None => tracing::warn!("cannot read or raise the open files limit"),
    }
    let tls_config = crate::datadir::tls::api_server_config(&dir)?;
    let agent_tls_config = crate::datadir::tls::agent_server_config(&dir)?;
    let agent_pki = crate::agents::join::AgentPki::load(&dir)?;
    let advertised = crate::agents::join::AgentUrls::check_advertised(&config.agent_advertise_urls)
        .map_err(ServerError::Invalid)?;
    let private_pem = read(dir.jwt_private_key())?;
    let public_pem = read(dir.jwt_public_key())?;
    let issuer = Arc::new(TokenIssuer::from_pem(
        Some(&private_pem),
        &public_pem,
        &cluster.name,
    )?);
    datadir::read_store_settings(&dir)?.check_same_store(&dir, &config.store)?;
    let opened = open_store(
        &dir,
        &config.store,
        config.store_connect_timeout,
        config.store_cache_bytes,
    )
    .await?;
    tracing::info!(store = %opened.name, "store opened");
    let store_health = opened.spawn_health_probe();
    let store = Arc::clone(&opened.store);
    let resources = Resources::new(Arc::clone(&store));
    let (auth_cache, auth_task) = AuthCache::start(resources.clone()).await?;
    let (silences, silences_task) =
        crate::events::silences::Silences::start(resources.clone()).await?;
    let secrets = crate::secrets::Secrets::new(resources.clone(), config.secrets.clone());
    containment.log_summary();
    let assets = Arc::new(runtime_assets(config)?);
    tracing::info!(cache_dir = %assets.cache().dir().display(), "runtime assets cache");
    // Stored filters' JavaScript: two sandboxed QuickJS workers, 100 ms and 32 MiB each.
    let js =
        cairn_api::js::Engine::new(cairn_api::js::EngineConfig::default()).map_err(|error| {
            ServerError::Invalid(format!("failed to start the JavaScript workers: {error}"))
        })?;
    let (pipeline, pipeline_task) = Pipeline::start(
        config.pipeline.clone(),
        containment,
        Arc::new(StoreResolver {
            resources: resources.clone(),
            secrets: Arc::clone(&secrets),
            silences: Arc::clone(&silences),
        }),
        js.clone(),
        assets,
    );
    let pipeline = Arc::new(pipeline);
    let metrics = Arc::new(ApiMetrics::default());
    // Set once, right after creation, so this cannot fail.
    let _ = metrics.pipeline.set(pipeline.stats());
    if let Some(store_stats) = opened.stats.clone() {
        let _ = metrics.store.set(store_stats);
    }
    // One shutdown signal, seen by both listeners and the coordination tasks.
    let (stop, stopped) = crate::shutdown::channel();
    // Several backends on one etcd share presence, membership and leader roles through it.
    let backend_id = crate::coord::new_backend_id();
    #[cfg(feature = "etcd")]
    let (coordinator, coordination_task) = match &opened.etcd {
        Some(etcd) => {
            let (coordinator, task) =
                crate::coord::etcd::start(etcd.clone(), backend_id, stopped.clone());
            (coordinator, Some(task))
        }
        None => (crate::coord::Coordinator::single(backend_id), None),
    };
    #[cfg(not(feature = "etcd"))]
    let (coordinator, coordination_task) = (crate::coord::Coordinator::single(backend_id), None);
    tracing::info!(backend = %coordinator.id(), "backend id");
    let sessions = crate::agents::sessions::Sessions::with_coordinator(Arc::clone(&coordinator));
    let hub = AgentHub::new(Arc::clone(&sessions));
    let revocation_hook: crate::agents::join::RevocationHook = {
        let hub = Arc::clone(&hub);
        Arc::new(move |id, revocation| hub.revoke(id, revocation))
    };
    let (revocations, revocation_task) =
        crate::agents::join::Revocations::start(Arc::clone(&store), revocation_hook).await?;
    let token_sweeper = crate::agents::join::spawn_token_sweeper(Arc::clone(&store));
    let refresh_sweeper = http::spawn_refresh_sweeper(Arc::clone(&store));
    let (listener, api_addr) = bind(config.api_listen).await?;
    let (agent_listener, agent_addr) = bind(config.agent_listen).await?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    // The real port, also when port 0 was asked for.
    let agent_urls = crate::agents::join::AgentUrls::new(advertised, agent_addr);
    tracing::info!(agent_urls = %agent_urls.describe(), "bootstrap answers name these agent urls");
    let agent_pki = Arc::new(agent_pki.with_agent_urls(agent_urls));
    let ingest = crate::events::ingest::Ingest {
        resources: resources.clone(),
        check_states: Arc::new(crate::events::checkstate::CheckStateCache::default()),
        sink: Arc::new(PipelineSink::new(Arc::clone(&pipeline))),
        stored: Arc::clone(&metrics.events_ingested),
        silences: Arc::clone(&silences),
    };
    let silence_sweeper = crate::events::silences::spawn_sweeper(
        Arc::clone(&silences),
        resources.clone(),
        stopped.clone(),
    );
    let (adhoc, adhoc_queue) = crate::agents::scheduler::adhoc_queue();
    let agents = crate::agents::Agents {
        resources: resources.clone(),
        auth: Arc::clone(&auth_cache),
        ingest: ingest.clone(),
        sessions,
        agent_pki,
        revocations,
        secrets,
        adhoc,
        js,
    };
    let state = AppState {
        resources,
        auth: auth_cache,
        issuer,
        ingest,
        agents,
        pipeline: Some(Arc::clone(&pipeline)),
        metrics,
        body_limit: config.body_limit,
        store_health,
        passwords: Arc::new(crate::auth::passwords::Passwords::new()?),
        downstream_budget: crate::federation::budget::Budget::new(
            crate::federation::budget::DOWNSTREAM_BUDGET,
        ),
        ui_sessions: Arc::new(http::UiSessions::new(config.ui_session_ttl, &cluster.name)),
    };
    tracing::info!(%api_addr, cluster = %cluster.name, "api listening (https)");
    tracing::info!(%agent_addr, "agent listener listening (mutual tls websocket)");
    tokio::spawn(async move {
        shutdown.await;
        stop.send_replace(true);
    });
    let agent_task = tokio::spawn(crate::agents::connection::serve(
        agent_listener,
        config.agent_limits,
        TlsAcceptor::from(agent_tls_config),
        state.agents.clone(),
        hub,
        stopped.clone(),
    ));
    // Checks go out to this backend's own sessions; keepalives are watched for them too.
    let (scheduler_stats, scheduler_task) = crate::agents::scheduler::spawn(
        state.agents.clone(),
        Arc::clone(&state.agents.sessions),
        adhoc_queue,
        stopped.clone(),
    );
    // Set once, right after creation, so this cannot fail.
    let _ = state.metrics.scheduler.set(scheduler_stats);
    let watchdog_task = crate::agents::watchdog::spawn(
        state.agents.clone(),
        Arc::clone(&state.agents.sessions),
        stopped.clone(),
    );
    // Federation: replicate chosen resources one way to downstream clusters (issue 7).
    // On the one backend of the cluster that leads the replicators.
    let federation = crate::federation::Federation {
        resources: state.resources.clone(),
        issuer: Arc::clone(&state.issuer),
        budget: state.downstream_budget.clone(),
    };
    let replicator_task = crate::federation::replicator::spawn_when_leading(
        &federation,
        coordinator.leadership(crate::coord::Role::Replicators),
        stopped.clone(),
    );
    let metrics_addr = metrics_listener.map(|(listener, addr)| {
        serve_metrics(
            listener,
            addr,
            http::metrics_app(state.clone()),
            stopped.clone(),
        );
        addr
    });
    let app = http::app(state);
    let mut api_stopped = stopped;
    let task = tokio::spawn(serve(
        listener,
        config.api_limits,
        TlsAcceptor::from(tls_config),
        app,
        async move {
            // An error means the sender is gone, which only happens after it sent `true`.
            let _ = api_stopped.wait_for(|stopped| *stopped).await;
        },
    ));
    Ok(Running {
        api_addr,
        agent_addr,
        metrics_addr,
        task,
        agent_task,
        stopping: vec![
            (scheduler_task, "scheduler"),
            (watchdog_task, "keepalive watchdog"),
            (replicator_task, "replicators"),
            (silence_sweeper, "silence sweeper"),
        ],
        pipeline,
        background: vec![
            (auth_task, "auth view"),
            (silences_task, "silenced view"),
            (revocation_task, "revocations view"),
            (token_sweeper, "join token sweeper"),
            (refresh_sweeper, "refresh token sweeper"),
            (pipeline_task, "pipeline dispatcher"),
        ],
        coordination_task,
    })
}

/// Binds a TCP listener and reports the address it got (port 0 picks a free one).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let failed = |source| ServerError::BindFailed { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    Ok((listener, bound))
}

/// Serves `/metrics` alone over plain HTTP on `listener` until `stopped` turns true.
fn serve_metrics(
    listener: TcpListener,
    metrics_addr: SocketAddr,
    app: axum::Router,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    if !metrics_addr.ip().is_loopback() {
        tracing::warn!(%metrics_addr, "metrics are served without authentication on a non-loopback address; keep it on a private network");
    }
    tracing::info!(%metrics_addr, "metrics listening (http, no authentication, /metrics only)");
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|stopped| *stopped).await;
        };
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %err, "metrics listener failed");
        }
    });
}

fn read(path: PathBuf) -> Result<String, ServerError> {
    std::fs::read_to_string(&path).map_err(|source| ServerError::ReadFailed { path, source })
}

/// Serves the API over TLS on `listener` within `limits` ([`crate::listen`]) until `shutdown`
/// resolves, then closes connections gracefully for up to [`SHUTDOWN_GRACE`].
async fn serve(
    listener: TcpListener,
    limits: ConnectionLimits,
    acceptor: TlsAcceptor,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut listener = BoundedListener::new(listener, limits, "api");
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (socket, peer, slot) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        tokio::spawn(serve_connection(
            socket,
            peer,
            acceptor.clone(),
            app.clone(),
            limits,
            stopping.clone(),
            slot,
        ));
    }
    tracing::info!("shutting down: draining connections");
    stop.send_replace(true);
    if !listener.drained(SHUTDOWN_GRACE).await {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period");
    }
}

/// One API connection: the TLS handshake within its timeout, then HTTP/1.1 or HTTP/2 until
/// the client leaves, it has been idle too long, or the server stops; `slot` is given back at
/// the end.
async fn serve_connection(
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    app: axum::Router,
    limits: ConnectionLimits,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let _slot = slot;
    let stream = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(socket)).await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "tls handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, timeout = ?limits.handshake_timeout, "tls handshake timed out");
            return;
        }
    };
    let activity = Activity::new();
    let io = TrackedIo::new(stream, Arc::clone(&activity));
    let service = {
        let activity = Arc::clone(&activity);
        tower::service_fn(
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(http::ClientAddr(peer));
                let in_flight = activity.request();
                let app = app.clone();
                async move {
                    let response = tower::ServiceExt::oneshot(app, request).await;
                    drop(in_flight);
                    response
                }
            },
        )
    };
    let mut builder = ConnectionBuilder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_KEEPALIVE_INTERVAL))
        .keep_alive_timeout(H2_KEEPALIVE_INTERVAL);
    let connection =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(connection);
    let mut closing: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(err) = served {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
                return;
            }
            () = activity.until_idle(limits.idle_timeout), if closing.is_none() => {
                tracing::debug!(%peer, "closing an idle connection");
                connection.as_mut().graceful_shutdown();
                closing = Some(Box::pin(tokio::time::sleep(SHUTDOWN_GRACE)));
            }
            _ = stopping.wait_for(|stopping| *stopping), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing = Some(Box::pin(tokio::time::sleep(SHUTDOWN_GRACE)));
            }
            () = async { if let Some(grace) = closing.as_mut() { grace.await } }, if closing.is_some() => {
                tracing::debug!(%peer, "connection did not close within the grace period; dropped");
                return;
            }
        }
    }
}

/// Looks handlers, filters and silences up in the store for the pipeline, and resolves
/// handlers' secrets.
struct StoreResolver {
    resources: Resources,
    secrets: Arc<crate::secrets::Secrets>,
    silences: Arc<crate::events::silences::Silences>,
}

impl StoreResolver {
    /// The spec of the stored resource, taken by `take`; a store error is logged and counts as
    /// missing (the pipeline skips what it cannot read).
    async fn spec<T>(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        take: impl FnOnce(Spec) -> Option<T>,
    ) -> Option<T> {
        match self.resources.get(kind, namespace, name).await {
            Ok(Some(stored)) => take(stored.resource.spec),
            Ok(None) => None,
            Err(err) => {
                tracing::error!(error = %err, kind = ?kind, name, "cannot read a resource the pipeline needs");
                None
            }
        }
    }
}

#[async_trait::async_trait]
impl HandlerResolver for StoreResolver {
    async fn handler(&self, namespace: &str, name: &str) -> Option<Handler> {
        self.spec(Kind::Handler, namespace, name, |spec| match spec {
            Spec::Handler(handler) => Some(handler),
            _ => None,
        })
        .await
    }

    async fn filter(&self, namespace: &str, name: &str) -> Option<EventFilter> {
        self.spec(Kind::EventFilter, namespace, name, |spec| match spec {
            Spec::EventFilter(filter) => Some(filter),
            _ => None,
        })
        .await
    }

    async fn asset(&self, namespace: &str, name: &str) -> Option<cairn_api::model::Asset> {
        match self.resources.get(Kind::Asset, namespace, name).await {
            Ok(Some(stored)) => match stored.resource.spec {
                Spec::Asset(mut asset) => {
                    asset.metadata = Some(stored.resource.metadata);
                    Some(asset)
                }
                _ => None,
            },
            Ok(None) => None,
            Err(err) => {
                tracing::error!(error = %err, name, "cannot read an asset the pipeline needs");
                None
            }
        }
    }

    async fn mutator(&self, namespace: &str, name: &str) -> Option<cairn_api::model::Mutator> {
        self.spec(Kind::Mutator, namespace, name, |spec| match spec {
            Spec::Mutator(mutator) => Some(mutator),
            _ => None,
        })
        .await
    }

    async fn pipeline(&self, namespace: &str, name: &str) -> Option<cairn_api::model::Pipeline> {
        self.spec(Kind::Pipeline, namespace, name, |spec| match spec {
            Spec::Pipeline(pipeline) => Some(pipeline),
            _ => None,
        })
        .await
    }

    async fn secrets(
        &self,
        namespace: &str,
        refs: &[cairn_api::model::SecretRef],
    ) -> Result<Vec<cairn_api::agent::SecretValue>, String> {
        self.secrets
            .resolve(namespace, refs)
            .await
            .map_err(|err| err.to_string())
    }

    async fn silenced(&self, namespace: &str) -> Arc<[(String, Silenced)]> {
        self.silences.in_namespace(namespace)
    }
}

/// Hands stored events to the pipeline; a full queue is counted there, and said in the log at
/// most once per [`listen::REPEAT_LOG_INTERVAL`] (with the count), since a flood of events is
/// exactly when it happens.
struct PipelineSink {
    pipeline: Arc<Pipeline>,
    refused: listen::SharedRepeatedLog,
}

impl PipelineSink {
    fn new(pipeline: Arc<Pipeline>) -> PipelineSink {
        PipelineSink {
            pipeline,
            refused: listen::SharedRepeatedLog::new(listen::REPEAT_LOG_INTERVAL),
        }
    }
}

impl EventSink for PipelineSink {
    fn submit(&self, namespace: &str, event: Event) {
        if let Err(err) = self.pipeline.submit(namespace.to_owned(), event) {
            if let Some(repeated) = self.refused.due() {
                tracing::warn!(error = %err, namespace, repeated, "event not handed to the pipeline");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! `init` and `start` on either store: what is recorded, what is refused, and (with a real
    //! etcd) seeding, a second `init`, and giving up on an unreachable etcd.

    use crate::datadir::EtcdSettings;

    use super::*;

    fn init_config(data_dir: PathBuf, store: StoreSettings) -> InitConfig {
        InitConfig {
            data_dir,
            cluster_name: "test".to_owned(),
            hostnames: Vec::new(),
            admin_username: "admin".to_owned(),
            admin_password: "admin-password".to_owned(),
            jwt_key_files: None,
            store,
        }
    }

    fn start_config(data_dir: PathBuf, store: StoreSettings, patience: Duration) -> StartConfig {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        StartConfig {
            assets: AssetsSettings {
                cache_dir: Some(data_dir.with_file_name("assets")),
                ..AssetsSettings::default()
            },
            data_dir,
            api_listen: loopback,
            agent_listen: loopback,
            agent_advertise_urls: Vec::new(),
            metrics_listen: None,
            api_limits: ConnectionLimits::API,
            agent_limits: ConnectionLimits::AGENT,
            body_limit: crate::http::DEFAULT_BODY_LIMIT,
            pipeline: PipelineConfig::default(),
            store_cache_bytes: DEFAULT_CACHE_BYTES,
            secrets: crate::secrets::SecretsConfig::default(),
            store,
            store_connect_timeout: patience,
            handlers: crate::events::pipeline::contain::ContainConfig {
                handler_user: None,
                allow_root_handlers: true,
            },
            ui_session_ttl: crate::http::DEFAULT_UI_SESSION_TTL,
        }
    }

    fn etcd_settings(endpoint: &str) -> StoreSettings {
        StoreSettings::Etcd(
            EtcdSettings::new(vec![endpoint.to_owned()], "/cairn/".to_owned(), None).unwrap(),
        )
    }

    fn init_files() -> InitFiles {
        InitFiles {
            cluster_name: "test".to_owned(),
            hostnames: Vec::new(),
            jwt: None,
        }
    }

    /// An endpoint where nothing listens.
    fn dead_endpoint() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    async fn start_error(config: &StartConfig) -> ServerError {
        match start(config, std::future::pending()).await {
            Ok(_) => panic!("start succeeded"),
            Err(err) => err,
        }
    }

    #[tokio::test]
    async fn start_refuses_another_store_than_the_recorded_one() {
        let tmp = tempfile::tempdir().unwrap();

        // An embedded data dir is not opened as etcd...
        let embedded = tmp.path().join("embedded");
        init(&init_config(embedded.clone(), StoreSettings::Embedded))
            .await
            .unwrap();
        let config = start_config(
            embedded.clone(),
            etcd_settings(&dead_endpoint()),
            Duration::ZERO,
        );
        let err = start_error(&config).await;
        assert!(
            matches!(
                err,
                ServerError::DataDir(datadir::DataDirError::StoreEngineMismatch { .. })
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("uses the embedded store") && text.contains("--store etcd"),
            "{text}"
        );

        // ...nor an etcd data dir as embedded, which would create an empty store.redb.
        let on_etcd = DataDir::new(tmp.path().join("etcd"));
        datadir::write_init_files_for_store(
            &on_etcd,
            &init_files(),
            &etcd_settings(&dead_endpoint()),
        )
        .unwrap();
        let config = start_config(
            on_etcd.root().to_owned(),
            StoreSettings::Embedded,
            Duration::ZERO,
        );
        let text = start_error(&config).await.to_string();
        assert!(
            text.contains("uses the etcd store") && text.contains("--store embedded"),
            "{text}"
        );
        assert!(
            !on_etcd.store_file().exists(),
            "an empty store.redb appeared"
        );
    }

    #[cfg(feature = "etcd")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn init_on_unreachable_etcd_writes_nothing() {
        let endpoint = dead_endpoint();
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        let err = init(&init_config(data_dir.clone(), etcd_settings(&endpoint)))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ServerError::Store(store) if store.is_unavailable()),
            "{err:?}"
        );
        let text = cairn_api::problem::cause_chain(&err);
        assert!(text.contains(&endpoint), "{text}");
        assert!(!data_dir.exists(), "init wrote {}", data_dir.display());
    }

    #[cfg(feature = "etcd")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_gives_up_on_unreachable_etcd_naming_the_endpoints() {
        let endpoint = dead_endpoint();
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let settings = etcd_settings(&endpoint);
        datadir::write_init_files_for_store(&dir, &init_files(), &settings).unwrap();

        let patience = Duration::from_secs(2);
        let started = tokio::time::Instant::now();
        let err = start_error(&start_config(dir.root().to_owned(), settings, patience)).await;
        let elapsed = started.elapsed();
        assert!(
            matches!(err, ServerError::StoreUnreachable { .. }),
            "{err:?}"
        );
        let text = cairn_api::problem::cause_chain(&err);
        assert!(
            text.starts_with(&format!(
                "etcd at {endpoint} (prefix /cairn/) did not answer within 2s"
            )),
            "{text}"
        );
        assert!(text.contains("failed to connect to etcd at"), "{text}");
        assert!(elapsed >= patience, "gave up after {elapsed:?}");
    }

    #[cfg(feature = "etcd")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn init_seeds_etcd_once_and_start_runs_on_it() {
        let Some(etcd) = crate::store::etcd_testing::Etcd::start().await else {
            return;
        };
        let settings = etcd_settings(&etcd.client_url);
        let tmp = tempfile::tempdir().unwrap();
        let first = DataDir::new(tmp.path().join("first"));
        init(&init_config(first.root().to_owned(), settings.clone()))
            .await
            .unwrap();
        assert!(!first.store_file().exists(), "no embedded store with etcd");
        assert_eq!(datadir::read_store_settings(&first).unwrap(), settings);
        let store = etcd.store("/cairn/").await;
        for key in [
            Resources::key(Kind::User, "", "admin"),
            Resources::key(Kind::Namespace, "", "default"),
            Resources::key(Kind::EnvProvider, "", "env"),
        ] {
            assert!(store.get(&key).await.unwrap().is_some(), "{key} is seeded");
        }

        // The prefix holds a cluster now: a second init writes nothing, here or in etcd.
        let revision = store.revision().await.unwrap();
        let second = tmp.path().join("second");
        let err = init(&init_config(second.clone(), settings.clone()))
            .await
            .unwrap_err();
        assert!(matches!(err, ServerError::ClusterExists { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "etcd prefix /cairn/ at {} already holds a cluster (key ",
                etcd.client_url
            )),
            "{text}"
        );
        assert!(
            !second.exists(),
            "the second init wrote {}",
            second.display()
        );
        assert_eq!(store.revision().await.unwrap(), revision);

        // Another prefix is another cluster.
        let other = StoreSettings::Etcd(
            EtcdSettings::new(vec![etcd.client_url.clone()], "/other".to_owned(), None).unwrap(),
        );
        init(&init_config(tmp.path().join("other"), other))
            .await
            .unwrap();

        // The first data dir starts on etcd, and stops.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = start(
            &start_config(first.root().to_owned(), settings, Duration::from_secs(10)),
            async move {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap_or_else(|err| panic!("start on etcd: {err:#?}"));
        drop(stop);
        tokio::time::timeout(SHUTDOWN_GRACE * 2, running.wait())
            .await
            .expect("the backend stops");
    }
}
