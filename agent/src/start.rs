//! `cairn-agent start`: loads the configuration, opens the event queue, serves the local API,
//! keeps the session with the backend, and stops cleanly on SIGTERM or SIGINT.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch, Notify};

use cairn_api::agent::{AgentMessage, MAX_MESSAGE_BYTES};
use cairn_api::model::{Entity, Event};

use crate::allowlist::{AllowList, AllowListError};
use crate::config::{AgentConfig, ConfigError};
use crate::exec::{ExecLimits, Executor};
use crate::queue::{EventQueue, QueueError, QueueLimits};
use crate::session::{self, SessionError, Shared};

/// How many events may wait between their producers (checks, the local API) and the queue.
pub const EVENT_CHANNEL: usize = 1024;
/// How long the session may take to close at shutdown.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Appended to output cut to fit one message.
pub const TRUNCATED_NOTE: &str = "\n[output truncated by cairn-agent to fit one message]";

/// Why the agent could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The key or certificates are unusable.
    #[error("{0}")]
    Material(#[from] SessionError),
    /// The queue cannot be opened.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The local API cannot listen.
    #[error("cannot listen on {addr} (local_api in {}): {source}", config.display())]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The configuration file.
        config: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The allow list named in the configuration is unusable.
    #[error(transparent)]
    AllowList(#[from] AllowListError),
    /// The local API failed.
    #[error("the local api failed: {0}")]
    LocalApi(io::Error),
    /// Signal handlers could not be installed.
    #[error("cannot install the signal handlers: {0}")]
    Signals(io::Error),
}

// === impl StartError ===

impl StartError {
    /// Whether the configuration is at fault (exit 64) rather than the environment (exit 1).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            StartError::Config(_) | StartError::Material(_) | StartError::AllowList(_)
        )
    }
}

/// Runs the agent until SIGTERM or SIGINT.
///
/// # Errors
///
/// [`StartError`] when something it needs is unusable, before anything started, or when the
/// local API fails.
pub async fn start(config_path: &Path) -> Result<(), StartError> {
    let config = Arc::new(AgentConfig::load(config_path)?);
    // Fail now, with the file named, rather than in the session loop.
    session::tls_config(&config)?;
    warn_about_material(&config);
    let allow_list = config
        .allow_list
        .as_deref()
        .map(AllowList::load)
        .transpose()?;
    if let (Some(path), Some(allow_list)) = (&config.allow_list, &allow_list) {
        tracing::info!(
            allow_list = %path.display(),
            entries = allow_list.entries().len(),
            "only the commands on the allow list run"
        );
    }
    let assets = Arc::new(crate::assets::Assets::from_config(&config.assets).map_err(
        |problem| ConfigError::Invalid {
            path: config_path.to_owned(),
            field: problem.field,
            message: problem.message,
        },
    )?);
    let queue = EventQueue::open(&config.queue_dir, QueueLimits::default())?;
    if !queue.is_empty() {
        tracing::info!(
            events = queue.len(),
            "events from a previous run are queued"
        );
    }
    let queue = Arc::new(Mutex::new(queue));
    let mut terminate = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;

    let listener = TcpListener::bind(config.local_api)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.local_api,
            config: config_path.to_owned(),
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.local_api,
        config: config_path.to_owned(),
        source,
    })?;
    print_line(&format!("local api listening on {local_addr}"));
    tracing::info!(%local_addr, "local api listening");

    let (events_tx, events_rx) = mpsc::channel(EVENT_CHANNEL);
    let health = Arc::new(AtomicBool::new(false));
    let queued = Arc::new(Notify::new());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let mut api = tokio::spawn(crate::localapi::serve(
        listener,
        events_tx.clone(),
        health.clone(),
    ));
    let socket = start_socket(&config, events_tx.clone()).await;
    let fallback_entity = session::entity(&config, crate::facts::collect());
    let writer = tokio::spawn(queue_writer(
        events_rx,
        queue.clone(),
        queued.clone(),
        fallback_entity,
        shutdown_rx.clone(),
    ));
    let shared = Shared {
        config: config.clone(),
        queue,
        queued,
        events: events_tx,
        executor: Arc::new(
            Executor::with_assets(
                ExecLimits {
                    max_concurrency: config.max_concurrency,
                },
                Some(assets),
            )
            .with_allow_list(allow_list),
        ),
        health,
    };
    let mut sessions = tokio::spawn(session::run(shared, shutdown_rx));

    let result = tokio::select! {
        _ = terminate.recv() => {
            tracing::info!("SIGTERM: stopping");
            Ok(())
        }
        _ = interrupt.recv() => {
            tracing::info!("SIGINT: stopping");
            Ok(())
        }
        outcome = &mut api => match outcome {
            Ok(Ok(())) => Err(StartError::LocalApi(io::Error::other("the server stopped"))),
            Ok(Err(err)) => Err(StartError::LocalApi(err)),
            Err(err) => Err(StartError::LocalApi(io::Error::other(err.to_string()))),
        },
        _ = &mut sessions => Ok(()),
    };
    let _ = shutdown_tx.send(true);
    api.abort();
    if let Some(socket) = socket {
        socket.abort();
    }
    if tokio::time::timeout(SHUTDOWN_TIMEOUT, &mut sessions)
        .await
        .is_err()
    {
        sessions.abort();
    }
    let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, writer).await;
    result
}

/// Binds and serves the agent socket (`socket:` in agent.yaml) unless it is disabled. As Sensu's,
/// a socket that cannot listen is logged as an error and the agent runs on without it.
async fn start_socket(
    config: &AgentConfig,
    events: mpsc::Sender<Event>,
) -> Option<tokio::task::JoinHandle<()>> {
    use crate::socket::{AgentSocket, Origin, SocketLimits};
    if config.socket.disable {
        return None;
    }
    let addr = config.socket.addr();
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "the agent socket listens on a non-loopback address: whoever reaches it can send \
             events as this agent, unauthenticated"
        );
    }
    let socket = match AgentSocket::bind(addr, SocketLimits::default()).await {
        Ok(socket) => socket,
        Err(err) => {
            tracing::error!(error = %err, "the agent socket cannot listen; running without it");
            return None;
        }
    };
    let bound = socket.local_addr().map_or(addr, |bound| bound);
    tracing::info!(addr = %bound, "agent socket listening (tcp and udp)");
    let origin = Origin {
        name: config.name.clone(),
        namespace: config.namespace.clone(),
    };
    Some(tokio::spawn(socket.serve(events, origin)))
}

/// Logs what will keep the backend from accepting the agent, or what puts the key at risk:
/// a key readable by others, a certificate for another name, an expired certificate.
fn warn_about_material(config: &AgentConfig) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(&config.key_file) {
        if metadata.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                key = %config.key_file.display(),
                "the private key is readable by other users; chmod 600 it"
            );
        }
    }
    let Ok(info) = std::fs::read_to_string(&config.cert_file)
        .map_err(|_| ())
        .and_then(|pem| crate::certs::CertInfo::from_pem(&pem).map_err(|_| ()))
    else {
        return;
    };
    if info.common_name != config.name {
        tracing::error!(
            certificate = %info.common_name,
            configured = %config.name,
            "the certificate is for another entity name; the backend will refuse the session"
        );
    }
    if info.not_after <= crate::certs::now_unix() {
        tracing::error!(
            cert = %config.cert_file.display(),
            not_after = info.not_after,
            "the certificate expired; the backend will refuse the session until the agent is \
             installed again with a new join token"
        );
    }
}

/// Writes one line to stdout and flushes it (the CLI contract; logs go to stderr).
fn print_line(line: &str) {
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Moves events from the channel into the queue, completing them first (the agent's entity
/// when they have none, a timestamp, output cut to fit one message). At shutdown, takes what is
/// already in the channel and stops.
pub(crate) async fn queue_writer(
    mut events: mpsc::Receiver<Event>,
    queue: Arc<Mutex<EventQueue>>,
    queued: Arc<Notify>,
    entity: Entity,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = shutdown.changed() => {
                events.close();
                while let Some(event) = events.recv().await {
                    enqueue(&queue, &queued, &entity, event).await;
                }
                return;
            }
        };
        let Some(event) = event else { return };
        enqueue(&queue, &queued, &entity, event).await;
    }
}

async fn enqueue(queue: &Arc<Mutex<EventQueue>>, queued: &Notify, entity: &Entity, event: Event) {
    let Some(event) = complete(event, entity) else {
        tracing::warn!("dropping an event that does not fit in one message even without output");
        return;
    };
    let queue = queue.clone();
    let pushed = tokio::task::spawn_blocking(move || {
        queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event)
    })
    .await;
    match pushed {
        Ok(Ok(pushed)) => {
            tracing::debug!(id = %pushed.id, "event queued");
            queued.notify_one();
        }
        Ok(Err(err)) => tracing::error!("cannot queue an event: {err}"),
        Err(err) => tracing::error!("queue task failed: {err}"),
    }
}

/// Fills in the entity and timestamp and makes the event fit in one message; `None` when it
/// cannot.
pub fn complete(mut event: Event, entity: &Entity) -> Option<Event> {
    if event.entity.is_none() {
        event.entity = Some(entity.clone());
    }
    if event.timestamp == 0 {
        event.timestamp = crate::certs::now_unix();
    }
    fit_message(&mut event).then_some(event)
}

/// The size of the event message for `event`, bytes.
fn message_size(event: &Event) -> usize {
    let message = AgentMessage::Event {
        id: uuid::Uuid::nil().to_string(),
        event: Box::new(event.clone()),
    };
    serde_json::to_vec(&message).map_or(usize::MAX, |json| json.len())
}

/// Cuts the check output (then hook output, then metrics) until the event message fits in
/// [`MAX_MESSAGE_BYTES`]; `false` when even that is not enough.
fn fit_message(event: &mut Event) -> bool {
    // A little room for framing.
    let limit = MAX_MESSAGE_BYTES - 1024;
    for _ in 0..32 {
        let size = message_size(event);
        if size <= limit {
            return true;
        }
        let Some(check) = event.check.as_mut() else {
            break;
        };
        if check.output.is_empty() {
            break;
        }
        // Escaping makes the JSON longer than the text by a factor; cut in proportion.
        let len = check.output.len();
        let proportional = len.saturating_mul(limit / 1024) / (size / 1024).max(1);
        let keep = (proportional / 100 * 95).saturating_sub(TRUNCATED_NOTE.len());
        let mut cut = keep;
        while !check.output.is_char_boundary(cut) {
            cut -= 1;
        }
        check.output.truncate(cut);
        if cut > 0 {
            check.output.push_str(TRUNCATED_NOTE);
        }
    }
    if message_size(event) <= limit {
        return true;
    }
    if let Some(check) = event.check.as_mut() {
        check.output.clear();
        check.hooks.clear();
    }
    if message_size(event) <= limit {
        return true;
    }
    event.metrics = None;
    message_size(event) <= limit
}

#[cfg(test)]
mod tests {
    use cairn_api::model::Check;
    use cairn_api::ObjectMeta;

    use super::*;

    fn entity() -> Entity {
        Entity {
            metadata: Some(ObjectMeta::named("default", "web-01")),
            entity_class: "agent".into(),
            ..Entity::default()
        }
    }

    #[test]
    fn completes_local_events() {
        let event = complete(Event::default(), &entity()).unwrap();
        assert_eq!(event.entity, Some(entity()));
        assert!(event.timestamp > 0);
        let other = Entity {
            metadata: Some(ObjectMeta::named("default", "proxy-1")),
            ..Entity::default()
        };
        let event = complete(
            Event {
                entity: Some(other.clone()),
                timestamp: 7,
                ..Event::default()
            },
            &entity(),
        )
        .unwrap();
        assert_eq!(event.entity, Some(other));
        assert_eq!(event.timestamp, 7);
    }

    #[test]
    fn huge_output_is_cut_to_fit() {
        for filler in ["x", "\u{1}", "é"] {
            let event = Event {
                check: Some(Check {
                    output: filler.repeat(3 * MAX_MESSAGE_BYTES / filler.len()),
                    ..Check::default()
                }),
                ..Event::default()
            };
            let event = complete(event, &entity()).unwrap();
            assert!(message_size(&event) <= MAX_MESSAGE_BYTES, "{filler:?}");
            let output = &event.check.unwrap().output;
            assert!(output.ends_with(TRUNCATED_NOTE), "{filler:?}");
            assert!(
                output.len() > MAX_MESSAGE_BYTES / 8,
                "{filler:?}: {}",
                output.len()
            );
        }
    }

    #[test]
    fn small_events_are_untouched() {
        let event = Event {
            check: Some(Check {
                output: "ok".into(),
                ..Check::default()
            }),
            timestamp: 1,
            entity: Some(entity()),
            ..Event::default()
        };
        assert_eq!(complete(event.clone(), &entity()), Some(event));
    }
}
