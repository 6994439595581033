//! Wiring: `init` writes a data directory and seeds the store; `start` opens it, loads and checks
//! the TLS and JWT material, binds, serves the API over HTTPS and the agent listener (mutual TLS
//! WebSocket), and drains both on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use cairn_api::model::{Event, EventFilter, Handler, Silenced};
use cairn_api::{Kind, Spec};

use crate::agentd::AgentHub;
use crate::api::{self, ApiMetrics, AppState, EventSink};
use crate::auth::{self, TokenIssuer};
use crate::authcache::AuthCache;
use crate::datadir::{self, DataDir, InitFiles};
use crate::pipeline::{HandlerResolver, Pipeline, PipelineConfig};
use crate::rbac;
use crate::resources::Resources;
use crate::store::RedbStore;
use crate::store::{Precondition, Store};

/// How long in-flight requests get to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
}

/// Settings of `cairn-backend start`.
#[derive(Debug, Clone)]
pub struct StartConfig {
    /// An initialised data directory.
    pub data_dir: PathBuf,
    /// Where the HTTPS API listens.
    pub api_listen: SocketAddr,
    /// Where the agent listener (mutual TLS WebSocket) listens.
    pub agent_listen: SocketAddr,
    /// Largest request body, bytes.
    pub body_limit: usize,
    /// The secrets resolver's settings.
    pub secrets: crate::secrets::SecretsConfig,
}

/// Why the backend could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory is missing, incomplete or unreadable.
    #[error(transparent)]
    DataDir(#[from] datadir::DataDirError),
    /// TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Resources in the store could not be read.
    #[error("store: {0}")]
    Resources(#[from] crate::resources::ResourceError),
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
    AgentPki(#[from] crate::bootstrap::AgentPkiError),
    /// A setting is unusable.
    #[error("{0}")]
    Invalid(String),
}

/// Creates the data directory and seeds the store with the default roles and the admin.
///
/// # Errors
/// When the directory is already initialised, a setting is invalid, or writing fails.
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
    let summary = datadir::write_init_files(
        &dir,
        &InitFiles {
            cluster_name: config.cluster_name.clone(),
            hostnames: config.hostnames.clone(),
            jwt: config.jwt_key_files.clone(),
        },
    )?;
    let store = RedbStore::open(dir.store_file())?;
    let resources = Resources::new(Arc::new(store));
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
        Spec::EnvProvider(cairn_api::model::EnvProvider {}),
    );
    resources.put(&env_provider, Precondition::Absent).await?;
    Ok(summary)
}

/// A running backend: its bound addresses and a handle to stop it.
pub struct Running {
    /// Where the API listens.
    pub api_addr: SocketAddr,
    /// Where the agent listener listens.
    pub agent_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    agent_task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits for the server to stop (after the shutdown future passed to [`start`] resolved).
    pub async fn wait(self) {
        for (task, what) in [(self.task, "api"), (self.agent_task, "agent listener")] {
            if let Err(err) = task.await {
                tracing::error!(error = %err, "{what} task failed");
            }
        }
    }
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
    let dir = DataDir::new(&config.data_dir);
    let cluster = datadir::read_cluster(&dir)?;
    let tls_config = crate::tls::api_server_config(&dir)?;
    let agent_tls_config = crate::tls::agent_server_config(&dir)?;
    let agent_pki = Arc::new(crate::bootstrap::AgentPki::load(&dir)?);
    let private_pem = read(dir.jwt_private_key())?;
    let public_pem = read(dir.jwt_public_key())?;
    let issuer = Arc::new(TokenIssuer::from_pem(
        Some(&private_pem),
        &public_pem,
        &cluster.name,
    )?);
    let redb = RedbStore::open(dir.store_file())?;
    let store_stats = redb.stats();
    let store: Arc<dyn Store> = Arc::new(redb);
    let resources = Resources::new(Arc::clone(&store));
    let (auth_cache, _auth_task) = AuthCache::start(resources.clone()).await?;
    let secrets = crate::secrets::Secrets::new(resources.clone(), config.secrets.clone());
    let (pipeline, _pipeline_task) = Pipeline::start(
        PipelineConfig::default(),
        Arc::new(StoreResolver {
            resources: resources.clone(),
            secrets: Arc::clone(&secrets),
        }),
    );
    let metrics = Arc::new(ApiMetrics::default());
    // Set once, right after creation, so this cannot fail.
    let _ = metrics.pipeline.set(pipeline.stats());
    let _ = metrics.store.set(store_stats);
    let sessions = crate::sessions::Sessions::new();
    let hub = AgentHub::new(Arc::clone(&sessions));
    let revocation_hook: crate::bootstrap::RevocationHook = {
        let hub = Arc::clone(&hub);
        Arc::new(move |id, revocation| hub.revoke(id, revocation))
    };
    let (revocations, _revocation_task) =
        crate::bootstrap::Revocations::start(Arc::clone(&store), revocation_hook).await?;
    let _token_sweeper = crate::bootstrap::spawn_token_sweeper(Arc::clone(&store));
    let state = AppState {
        secrets,
        resources,
        auth: auth_cache,
        issuer,
        events: Arc::new(PipelineSink(pipeline)),
        metrics,
        body_limit: config.body_limit,
        check_states: Arc::new(crate::checkstate::CheckStateCache::default()),
        sessions,
        agent_pki,
        revocations,
    };
    let (listener, api_addr) = bind(config.api_listen).await?;
    let (agent_listener, agent_addr) = bind(config.agent_listen).await?;
    tracing::info!(%api_addr, cluster = %cluster.name, "api listening (https)");
    tracing::info!(%agent_addr, "agent listener listening (mutual tls websocket)");
    // One shutdown signal, seen by both listeners.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        stop.send_replace(true);
    });
    let agent_task = tokio::spawn(crate::agentd::serve(
        agent_listener,
        TlsAcceptor::from(agent_tls_config),
        state.clone(),
        hub,
        stopped.clone(),
    ));
    // Checks go out to this backend's own sessions; keepalives are watched for them too.
    let (scheduler_stats, _scheduler_task) =
        crate::scheduler::spawn(state.clone(), Arc::clone(&state.sessions), stopped.clone());
    // Set once, right after creation, so this cannot fail.
    let _ = state.metrics.scheduler.set(scheduler_stats);
    let _watchdog_task =
        crate::watchdog::spawn(state.clone(), Arc::clone(&state.sessions), stopped.clone());
    // Federation: replicate chosen resources one way to downstream clusters (issue 7).
    let _replicator_task = crate::federation::replicator::spawn(&state, stopped.clone());
    let app = api::app(state);
    let mut api_stopped = stopped;
    let task = tokio::spawn(serve(
        listener,
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
        task,
        agent_task,
    })
}

/// Binds a TCP listener and reports the address it got (port 0 picks a free one).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let failed = |source| ServerError::BindFailed { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    Ok((listener, bound))
}

fn read(path: PathBuf) -> Result<String, ServerError> {
    std::fs::read_to_string(&path).map_err(|source| ServerError::ReadFailed { path, source })
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match acceptor.accept(socket).await {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::debug!(%peer, error = %err, "tls handshake failed");
                    return;
                }
            };
            let builder = ConnectionBuilder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(err) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    tracing::info!("shutting down: draining connections");
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period");
    }
}

/// Looks handlers, filters and silences up in the store for the pipeline, and resolves
/// handlers' secrets.
struct StoreResolver {
    resources: Resources,
    secrets: Arc<crate::secrets::Secrets>,
}

#[async_trait::async_trait]
impl HandlerResolver for StoreResolver {
    async fn handler(&self, namespace: &str, name: &str) -> Option<Handler> {
        match self.resources.get(Kind::Handler, namespace, name).await {
            Ok(Some(stored)) => match stored.resource.spec {
                Spec::Handler(handler) => Some(handler),
                _ => None,
            },
            Ok(None) => None,
            Err(err) => {
                tracing::error!(error = %err, handler = name, "cannot read handler");
                None
            }
        }
    }

    async fn filter(&self, namespace: &str, name: &str) -> Option<EventFilter> {
        match self.resources.get(Kind::EventFilter, namespace, name).await {
            Ok(Some(stored)) => match stored.resource.spec {
                Spec::EventFilter(filter) => Some(filter),
                _ => None,
            },
            Ok(None) => None,
            Err(err) => {
                tracing::error!(error = %err, filter = name, "cannot read filter");
                None
            }
        }
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

    async fn silenced(&self, namespace: &str) -> Vec<(String, Silenced)> {
        match self
            .resources
            .list(Kind::Silenced, Some(namespace), None, 0)
            .await
        {
            Ok((items, _)) => items
                .into_iter()
                .filter_map(|(_, stored)| match stored.resource.spec {
                    Spec::Silenced(silenced) => Some((stored.resource.metadata.name, silenced)),
                    _ => None,
                })
                .collect(),
            Err(err) => {
                tracing::error!(error = %err, "cannot read silenced entries");
                Vec::new()
            }
        }
    }
}

/// Hands stored events to the pipeline; a full queue is counted there.
struct PipelineSink(Pipeline);

impl EventSink for PipelineSink {
    fn submit(&self, namespace: &str, event: Event) {
        if let Err(err) = self.0.submit(namespace.to_owned(), event) {
            tracing::warn!(error = %err, namespace, "event not handed to the pipeline");
        }
    }
}
