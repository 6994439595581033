//! The session with the backend: TLS 1.3 with the agent's client certificate, trusting only
//! the cluster CA; a WebSocket at [`AGENT_PATH`]; the hello, keepalives, check requests, event
//! delivery from the queue with acknowledgements, and certificate renewal.
//!
//! [`run`] keeps a session up until shutdown: it tries the backend URLs in order, moves to the
//! next one whenever a session fails or ends, and waits between attempts with exponential
//! backoff and full jitter.
//!
//! The loop is generic ([`run_with`]) over where checks run ([`CheckRunner`]), where events
//! wait until acknowledged ([`Outbox`]) and who is told about sessions ([`SessionHooks`]): the
//! agent runs it with the [`Executor`] and the on-disk [`EventQueue`]; the simulated agents of
//! [`crate::sim`] run the same loop with in-process checks and an in-memory outbox.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use rcgen::KeyPair;
use reqwest::Url;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use cairn_api::agent::{
    AgentMessage, BackendMessage, CheckRequest, Hello, AGENT_PATH, MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION, READ_BUFFER_BYTES,
};
use cairn_api::model::{Entity, Event, System};
use cairn_api::redact::Redactor;
use cairn_api::ObjectMeta;

use crate::certs::{self, CertInfo};
use crate::config::AgentConfig;
use crate::exec::Executor;
use crate::fsutil::{self, PUBLIC_MODE};
use crate::install::cause_chain;
use crate::queue::{EventQueue, QueueError, QueuedEvent};

/// How long the TCP connection, the TLS handshake and the WebSocket upgrade may take together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the backend may take to answer the hello.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one write to the backend may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How many events may wait for an acknowledgement at once.
pub const EVENT_WINDOW: usize = 100;
/// An event unacknowledged this long is sent again, with every unacknowledged event after it
/// (the backend answers a passing failure with a `Refused` that names no event, and drops
/// an id it already stored).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the certificate's remaining validity is checked.
pub const RENEWAL_CHECK_INTERVAL: Duration = Duration::from_secs(300);
/// How long to wait for a renewed certificate before asking again.
pub const RENEWAL_RETRY: Duration = Duration::from_secs(600);
/// A session that lasted this long resets the backoff when it ends.
pub const STABLE_SESSION: Duration = Duration::from_secs(30);
/// The shortest silence after which the backend is presumed gone.
pub const MIN_DEAD_AFTER: Duration = Duration::from_secs(30);
/// How long a clean close may take at shutdown.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

type Tls = TlsStream<TcpStream>;
type Sink = SplitSink<WebSocketStream<Tls>, Message>;
type Source = SplitStream<WebSocketStream<Tls>>;

/// What the sessions share with the rest of the agent.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The configuration.
    pub config: Arc<AgentConfig>,
    /// The event queue.
    pub queue: Arc<Mutex<EventQueue>>,
    /// Notified when an event was queued.
    pub queued: Arc<Notify>,
    /// Where check results go (to be queued).
    pub events: mpsc::Sender<Event>,
    /// Runs checks.
    pub executor: Arc<Executor>,
    /// Whether a session is established (the local API's `/healthz`).
    pub health: Arc<AtomicBool>,
}

/// Runs the checks the backend requests.
pub trait CheckRunner: Send + Sync + 'static {
    /// The event of running `request` for `entity`. The session sets `processed_by`, redacts
    /// the request's secrets and queues it.
    fn run_check(
        &self,
        request: &CheckRequest,
        entity: &Entity,
    ) -> impl Future<Output = Event> + Send;
}

/// Where events wait until the backend acknowledges them, in the order they were queued; each
/// has a sequence number (increasing) and an id (what the backend acknowledges).
pub trait Outbox: Send + Sync + 'static {
    /// Queues a check result; `false` when the agent is stopping and it was not queued.
    fn push(&self, event: Event) -> impl Future<Output = bool> + Send;
    /// Notified (`notify_one`) whenever an event was queued.
    fn queued(&self) -> &Notify;
    /// Up to `count` queued events after the sequence number `cursor` (from the oldest when
    /// `None`), oldest first.
    fn read_after(
        &self,
        cursor: Option<u64>,
        count: usize,
    ) -> impl Future<Output = Result<Vec<(u64, QueuedEvent)>, SessionError>> + Send;
    /// Removes the acknowledged event `id`; `false` when it is not queued (any more).
    fn ack(&self, id: String) -> impl Future<Output = Result<bool, SessionError>> + Send;
}

/// Told what happens to the sessions; called from the session loop, so it must be quick.
pub trait SessionHooks: Send + Sync + 'static {
    /// A session was established (the welcome arrived).
    fn connected(&self);
    /// A session or an attempt at one ended, after its welcome when `welcomed`; `Ok(())` is
    /// shutdown.
    fn ended(&self, welcomed: bool, outcome: &Result<(), SessionError>);
    /// The backend refused a message without ending the session, or sent one that does not
    /// parse (already logged).
    fn refused(&self, _reason: &str) {}
}

/// What the session loop works with.
#[derive(Debug)]
pub struct Parts<R, Q, H> {
    /// The configuration: name, backend URLs, key, certificate and CA files, keepalive.
    pub config: Arc<AgentConfig>,
    /// Runs the checks.
    pub runner: Arc<R>,
    /// Where events wait until acknowledged.
    pub outbox: Arc<Q>,
    /// Told when sessions start and end.
    pub hooks: Arc<H>,
    /// The host facts of the hello and the entity; `None` collects them at every session.
    pub system: Option<System>,
    /// Whether the session renews the certificate: checks its validity every
    /// [`RENEWAL_CHECK_INTERVAL`], asks for a new one and installs it.
    pub renewal: bool,
}

/// Why a session failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The agent's key, certificate or CA file is unusable.
    #[error("{0}")]
    Material(String),
    /// A backend URL is unusable.
    #[error("{0}")]
    Url(String),
    /// TCP, TLS or the WebSocket upgrade failed.
    #[error("cannot connect to {url}: {cause}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        cause: String,
    },
    /// Something took too long.
    #[error("{0}")]
    Timeout(String),
    /// The WebSocket failed.
    #[error("the connection failed: {0}")]
    WebSocket(String),
    /// The backend broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The backend refused the session.
    #[error("the backend refused the session: {reason}")]
    Refused {
        /// Its reason.
        reason: String,
    },
    /// The backend closed the session.
    #[error("the backend closed the session{}", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    Closed {
        /// The close reason, if any.
        reason: String,
    },
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The agent's outbox: check results go through the channel to the queue writer, which
/// queues them on disk.
struct DiskOutbox {
    queue: Arc<Mutex<EventQueue>>,
    queued: Arc<Notify>,
    events: mpsc::Sender<Event>,
}

// === impl Shared ===

impl Shared {
    /// The agent's parts: the executor, the on-disk queue, the health flag; facts collected at
    /// every session; certificate renewal.
    fn into_parts(self) -> Parts<Executor, DiskOutbox, AtomicBool> {
        Parts {
            config: self.config,
            runner: self.executor,
            outbox: Arc::new(DiskOutbox {
                queue: self.queue,
                queued: self.queued,
                events: self.events,
            }),
            hooks: self.health,
            system: None,
            renewal: true,
        }
    }
}

// === impl Executor ===

impl CheckRunner for Executor {
    fn run_check(
        &self,
        request: &CheckRequest,
        entity: &Entity,
    ) -> impl Future<Output = Event> + Send {
        self.run(request, entity)
    }
}

// === impl DiskOutbox ===

impl Outbox for DiskOutbox {
    async fn push(&self, event: Event) -> bool {
        self.events.send(event).await.is_ok()
    }

    fn queued(&self) -> &Notify {
        &self.queued
    }

    async fn read_after(
        &self,
        cursor: Option<u64>,
        count: usize,
    ) -> Result<Vec<(u64, QueuedEvent)>, SessionError> {
        // Checked without a blocking task, since mostly nothing is queued.
        let pending = self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_after(cursor)
            .is_some();
        if !pending {
            return Ok(Vec::new());
        }
        let queue = self.queue.clone();
        tokio::task::spawn_blocking(move || read_batch(&queue, cursor, count))
            .await
            .map_err(|err| SessionError::Protocol(format!("queue task failed: {err}")))
    }

    async fn ack(&self, id: String) -> Result<bool, SessionError> {
        let queue = self.queue.clone();
        let removed = tokio::task::spawn_blocking(move || {
            queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .ack(&id)
        })
        .await
        .map_err(|err| SessionError::Protocol(format!("queue task failed: {err}")))??;
        Ok(removed)
    }
}

// === impl AtomicBool ===

/// The agent's health flag: whether a session is established.
impl SessionHooks for AtomicBool {
    fn connected(&self) {
        self.store(true, Ordering::SeqCst);
    }

    fn ended(&self, _welcomed: bool, _outcome: &Result<(), SessionError>) {
        self.store(false, Ordering::SeqCst);
    }
}

/// Keeps a session with one of the backends until `shutdown` turns true.
pub async fn run(shared: Shared, shutdown: watch::Receiver<bool>) {
    run_with(shared.into_parts(), shutdown).await;
}

/// [`run`] with other parts: keeps a session with one of `parts.config`'s backends until
/// `shutdown` turns true.
pub async fn run_with<R: CheckRunner, Q: Outbox, H: SessionHooks>(
    parts: Parts<R, Q, H>,
    mut shutdown: watch::Receiver<bool>,
) {
    let urls = parts.config.backend_urls.clone();
    if urls.is_empty() {
        tracing::error!("no backend URL is configured");
        return;
    }
    let mut backoff = crate::backoff::reconnect();
    let mut index = 0usize;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let url = &urls[index % urls.len()];
        let started = Instant::now();
        let mut welcomed = false;
        let outcome = session(&parts, url, &mut shutdown, &mut welcomed).await;
        parts.hooks.ended(welcomed, &outcome);
        if welcomed && started.elapsed() >= STABLE_SESSION {
            backoff.reset();
        }
        let delay = match outcome {
            Ok(()) => return,
            Err(SessionError::Refused { reason }) => {
                tracing::error!(%url, %reason, "the backend refused the session; retrying slowly");
                backoff.slow_delay()
            }
            Err(err @ SessionError::Closed { .. }) if welcomed => {
                tracing::warn!(%url, "{err}");
                backoff.next_delay()
            }
            Err(err) => {
                tracing::warn!(%url, "session failed: {err}");
                backoff.next_delay()
            }
        };
        index = index.wrapping_add(1);
        tracing::info!(
            next = %urls[index % urls.len()],
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "reconnecting"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One session: connect, hello, welcome, then the exchange until it ends. `Ok(())` means
/// shutdown.
async fn session<R: CheckRunner, Q: Outbox, H: SessionHooks>(
    parts: &Parts<R, Q, H>,
    url: &str,
    shutdown: &mut watch::Receiver<bool>,
    welcomed: &mut bool,
) -> Result<(), SessionError> {
    let config = &parts.config;
    tracing::info!(%url, "connecting");
    let ws = tokio::select! {
        connected = tokio::time::timeout(CONNECT_TIMEOUT, connect(config, url)) => connected
            .map_err(|_| SessionError::Timeout(format!("connecting to {url} took longer than {CONNECT_TIMEOUT:?}")))??,
        _ = shutdown.changed() => return Ok(()),
    };
    let (mut sink, mut source) = ws.split();

    let system = match &parts.system {
        Some(system) => system.clone(),
        None => tokio::task::spawn_blocking(crate::facts::collect)
            .await
            .unwrap_or_default(),
    };
    let entity = entity(config, system.clone());
    send(
        &mut sink,
        &AgentMessage::Hello(Box::new(hello(config, system))),
    )
    .await?;

    let welcome = tokio::select! {
        welcome = tokio::time::timeout(WELCOME_TIMEOUT, wait_for_welcome(&mut source)) => welcome
            .map_err(|_| SessionError::Timeout(format!("no answer to the hello within {WELCOME_TIMEOUT:?}")))??,
        _ = shutdown.changed() => {
            close(&mut sink, &mut source).await;
            return Ok(());
        }
    };
    if welcome != config.name {
        tracing::warn!(registered = %welcome, configured = %config.name, "the backend registered another entity name");
    }
    *welcomed = true;
    parts.hooks.connected();
    tracing::info!(%url, entity = %welcome, "connected");

    let mut live = Live {
        parts,
        entity: Arc::new(entity),
        sink,
        in_flight: HashMap::new(),
        cursor: None,
        renewal_requested: None,
    };
    let result = live.exchange(&mut source, shutdown).await;
    if matches!(result, Ok(())) {
        close(&mut live.sink, &mut source).await;
    }
    result
}

/// The established part of a session.
struct Live<'a, R, Q, H> {
    parts: &'a Parts<R, Q, H>,
    entity: Arc<Entity>,
    sink: Sink,
    /// Ids sent in this session and not acknowledged yet, with when they were sent.
    in_flight: HashMap<String, Instant>,
    /// The sequence number of the last event sent in this session.
    cursor: Option<u64>,
    renewal_requested: Option<Instant>,
}

// === impl Live ===

impl<R: CheckRunner, Q: Outbox, H: SessionHooks> Live<'_, R, Q, H> {
    async fn exchange(
        &mut self,
        source: &mut Source,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), SessionError> {
        let config = &self.parts.config;
        let interval = Duration::from_secs(u64::from(config.keepalive_interval.max(1)));
        let dead_after = (interval * 3).max(MIN_DEAD_AFTER);
        let mut keepalives = tokio::time::interval_at(Instant::now() + interval, interval);
        keepalives.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewal_checks = tokio::time::interval(RENEWAL_CHECK_INTERVAL);
        renewal_checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let renewal = self.parts.renewal;
        let mut last_heard = Instant::now();
        let outbox = self.parts.outbox.clone();

        loop {
            self.send_events().await?;
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                message = source.next() => {
                    last_heard = Instant::now();
                    match message {
                        Some(Ok(Message::Text(text))) => self.handle(text.as_str()).await?,
                        Some(Ok(Message::Close(frame))) => {
                            return Err(SessionError::Closed {
                                reason: frame.map(|frame| frame.reason.to_string()).unwrap_or_default(),
                            })
                        }
                        Some(Ok(Message::Binary(_))) => {
                            tracing::warn!("ignoring a binary message from the backend");
                        }
                        Some(Ok(_)) => {}
                        Some(Err(err)) => return Err(SessionError::WebSocket(cause_chain(&err))),
                        None => return Err(SessionError::Closed { reason: String::new() }),
                    }
                }
                _ = keepalives.tick() => {
                    if last_heard.elapsed() > dead_after {
                        return Err(SessionError::Timeout(format!(
                            "nothing heard from the backend for {} s",
                            last_heard.elapsed().as_secs()
                        )));
                    }
                    self.resend_unacknowledged();
                    let sent_at = certs::now_unix();
                    send(&mut self.sink, &AgentMessage::Keepalive { sent_at }).await?;
                    // Answered by the backend's WebSocket layer: proves the backend is there.
                    send_raw(&mut self.sink, Message::Ping(Vec::new().into())).await?;
                }
                _ = renewal_checks.tick(), if renewal => self.maybe_renew().await?,
                () = outbox.queued().notified(), if self.in_flight.len() < EVENT_WINDOW => {}
            }
        }
    }

    async fn handle(&mut self, text: &str) -> Result<(), SessionError> {
        let message = match serde_json::from_str::<BackendMessage>(text) {
            Ok(message) => message,
            Err(err) => {
                // The error's text may quote the message, which may hold a secret: log only
                // where it is.
                tracing::warn!(
                    category = ?err.classify(),
                    line = err.line(),
                    column = err.column(),
                    "ignoring a message from the backend that does not parse"
                );
                self.parts.hooks.refused(&format!(
                    "a backend message does not parse: {:?}",
                    err.classify()
                ));
                return Ok(());
            }
        };
        match message {
            BackendMessage::CheckRequest(request) => self.run_check(*request),
            BackendMessage::EntityConfig {
                subscriptions,
                labels,
                annotations,
            } => {
                // The entity the backend manages: checks started from now on substitute its
                // tokens, and events carry it.
                let mut entity = Entity::clone(&self.entity);
                entity.subscriptions = subscriptions;
                if let Some(meta) = entity.metadata.as_mut() {
                    meta.labels = labels;
                    meta.annotations = annotations;
                }
                self.entity = Arc::new(entity);
                tracing::info!("entity configuration from the backend applied");
            }
            BackendMessage::Ack { id } => {
                self.in_flight.remove(&id);
                if !self.parts.outbox.ack(id).await? {
                    tracing::debug!("acknowledgement for an event no longer queued");
                }
            }
            BackendMessage::Certificate { cert_pem } if self.parts.renewal => {
                self.install_certificate(cert_pem).await;
            }
            BackendMessage::Certificate { .. } => {
                tracing::debug!("ignoring a certificate: this session does not renew");
            }
            BackendMessage::Refused { reason, fatal } => {
                if fatal {
                    return Err(SessionError::Refused { reason });
                }
                tracing::warn!(%reason, "the backend refused a message");
                self.parts.hooks.refused(&reason);
            }
            BackendMessage::Welcome { .. } => {
                tracing::debug!("ignoring a second welcome");
            }
        }
        Ok(())
    }

    /// Runs a check in its own task; the result is queued. The request's secrets stay in that
    /// task's memory and reach only the command's environment.
    fn run_check(&self, request: CheckRequest) {
        let runner = self.parts.runner.clone();
        let outbox = self.parts.outbox.clone();
        let entity = self.entity.clone();
        let name = self.parts.config.name.clone();
        let check = request
            .config
            .metadata
            .as_ref()
            .map(|meta| meta.name.clone())
            .unwrap_or_default();
        tokio::spawn(async move {
            let redactor = Redactor::of_request(&request);
            let mut event = runner.run_check(&request, &entity).await;
            drop(request);
            if let Some(check) = event.check.as_mut() {
                check.processed_by.clone_from(&name);
            }
            redact_secrets(&mut event, &redactor);
            drop(redactor);
            if !outbox.push(event).await {
                tracing::warn!(%check, "the agent is stopping; check result not queued");
            }
        });
    }

    /// Starts over from the oldest queued event when one has waited too long for its
    /// acknowledgement.
    fn resend_unacknowledged(&mut self) {
        let overdue = self
            .in_flight
            .values()
            .any(|sent| sent.elapsed() > ACK_TIMEOUT);
        if overdue {
            tracing::warn!(
                unacknowledged = self.in_flight.len(),
                "events unacknowledged for {} s; sending them again",
                ACK_TIMEOUT.as_secs()
            );
            self.in_flight.clear();
            self.cursor = None;
        }
    }

    /// Sends queued events after the cursor until the window is full.
    async fn send_events(&mut self) -> Result<(), SessionError> {
        let room = EVENT_WINDOW.saturating_sub(self.in_flight.len());
        if room == 0 {
            return Ok(());
        }
        let batch = self.parts.outbox.read_after(self.cursor, room).await?;
        for (seq, record) in batch {
            self.cursor = Some(seq);
            self.in_flight.insert(record.id.clone(), Instant::now());
            send(
                &mut self.sink,
                &AgentMessage::Event {
                    id: record.id,
                    event: Box::new(record.event),
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Asks for a new certificate when less than a third of the current one's validity is left.
    async fn maybe_renew(&mut self) -> Result<(), SessionError> {
        if self
            .renewal_requested
            .is_some_and(|at| at.elapsed() < RENEWAL_RETRY)
        {
            return Ok(());
        }
        let config = &self.parts.config;
        let info = match read_text(&config.cert_file).and_then(|pem| {
            CertInfo::from_pem(&pem).map_err(|err| format!("{}: {err}", config.cert_file.display()))
        }) {
            Ok(info) => info,
            Err(err) => {
                tracing::warn!("cannot check the certificate's validity: {err}");
                return Ok(());
            }
        };
        if !info.needs_renewal(certs::now_unix()) {
            return Ok(());
        }
        let csr_pem = match load_key(&config.key_file)
            .and_then(|key| certs::csr_pem(&key, &config.name).map_err(|err| err.to_string()))
        {
            Ok(csr) => csr,
            Err(err) => {
                tracing::error!("cannot make a CSR to renew the certificate: {err}");
                return Ok(());
            }
        };
        tracing::info!(
            not_after = info.not_after,
            "the certificate has less than a third of its validity left; asking for a new one"
        );
        self.renewal_requested = Some(Instant::now());
        send(&mut self.sink, &AgentMessage::RenewCertificate { csr_pem }).await
    }

    /// Checks a renewed certificate and writes it for the next connection.
    async fn install_certificate(&mut self, cert_pem: String) {
        let config = self.parts.config.clone();
        let result = tokio::task::spawn_blocking(move || {
            let key = load_key(&config.key_file)?;
            let info = certs::check_issued(&cert_pem, &key, &config.name, certs::now_unix())
                .map_err(|err| format!("the renewed certificate is unusable: {err}"))?;
            fsutil::write_atomic(&config.cert_file, cert_pem.as_bytes(), PUBLIC_MODE)
                .map_err(|err| format!("cannot write {}: {err}", config.cert_file.display()))?;
            Ok::<_, String>(info)
        })
        .await;
        match result {
            Ok(Ok(info)) => {
                self.renewal_requested = None;
                tracing::info!(
                    not_after = info.not_after,
                    fingerprint = %info.fingerprint,
                    "installed a renewed certificate; the next connection uses it"
                );
            }
            Ok(Err(err)) => tracing::error!("{err}"),
            Err(err) => tracing::error!("certificate task failed: {err}"),
        }
    }
}

/// Reads up to `count` queued events after `cursor`; unreadable ones are dropped from the
/// queue with an error logged.
fn read_batch(
    queue: &Mutex<EventQueue>,
    mut cursor: Option<u64>,
    count: usize,
) -> Vec<(u64, QueuedEvent)> {
    let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
    let mut batch = Vec::new();
    while batch.len() < count {
        let Some((seq, id)) = queue.next_after(cursor) else {
            break;
        };
        cursor = Some(seq);
        match queue.read(seq, &id) {
            Ok(record) => batch.push((seq, record)),
            Err(err) => {
                tracing::error!("dropping a queued event: {err}");
                if let Err(err) = queue.ack(&id) {
                    tracing::error!("{err}");
                }
            }
        }
    }
    batch
}

/// Waits for the answer to the hello: the registered entity name, or the refusal.
async fn wait_for_welcome(source: &mut Source) -> Result<String, SessionError> {
    loop {
        match source.next().await {
            Some(Ok(Message::Text(text))) => {
                match serde_json::from_str::<BackendMessage>(text.as_str()) {
                    Ok(BackendMessage::Welcome { entity }) => return Ok(entity),
                    Ok(BackendMessage::Refused { reason, .. }) => {
                        return Err(SessionError::Refused { reason })
                    }
                    Ok(_) => {
                        return Err(SessionError::Protocol(
                            "the backend sent a message before its welcome".into(),
                        ))
                    }
                    Err(err) => {
                        return Err(SessionError::Protocol(format!(
                            "the answer to the hello does not parse ({:?} at column {})",
                            err.classify(),
                            err.column()
                        )))
                    }
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let reason = frame
                    .map(|frame| frame.reason.to_string())
                    .unwrap_or_default();
                // A refusal comes as a `Refused` message first; a bare close is a passing
                // condition (the backend stopping, overloaded).
                return Err(SessionError::Closed { reason });
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(SessionError::WebSocket(cause_chain(&err))),
            None => {
                return Err(SessionError::Closed {
                    reason: String::new(),
                })
            }
        }
    }
}

/// Closes the session cleanly: a close frame, then what the backend still says until it
/// closes too (briefly).
async fn close(sink: &mut Sink, source: &mut Source) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "agent stopping".into(),
    };
    let closing = async {
        if sink.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = source.next().await {
            if message.is_close() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
}

async fn send(sink: &mut Sink, message: &AgentMessage) -> Result<(), SessionError> {
    let text = serde_json::to_string(message).expect("agent messages are plain data");
    send_raw(sink, Message::Text(text.into())).await
}

async fn send_raw(sink: &mut Sink, message: Message) -> Result<(), SessionError> {
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(SessionError::WebSocket(cause_chain(&err))),
        Err(_) => Err(SessionError::Timeout(format!(
            "a write to the backend took longer than {SEND_TIMEOUT:?}"
        ))),
    }
}

/// Opens TCP, TLS 1.3 (client certificate; the cluster CA as the only root; SNI = the URL's
/// host) and the WebSocket at [`AGENT_PATH`].
///
/// # Errors
///
/// [`SessionError::Material`] when the key or certificates cannot be loaded,
/// [`SessionError::Url`] for an unusable URL, [`SessionError::Connect`] otherwise.
pub async fn connect(
    config: &AgentConfig,
    url: &str,
) -> Result<WebSocketStream<Tls>, SessionError> {
    let tls = tls_config(config)?;
    let (ws_url, server_name, address) = target(url)?;
    let failed = |cause: String| SessionError::Connect {
        url: url.to_owned(),
        cause,
    };
    let tcp = match address {
        Target::Ip(ip, port) => TcpStream::connect((ip, port)).await,
        Target::Name(ref host, port) => TcpStream::connect((host.as_str(), port)).await,
    }
    .map_err(|err| failed(err.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let stream = TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|err| failed(format!("TLS: {}", cause_chain(&err))))?;
    let request = ws_url
        .as_str()
        .into_client_request()
        .map_err(|err| failed(err.to_string()))?;
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
        .read_buffer_size(READ_BUFFER_BYTES);
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config))
            .await
            .map_err(|err| failed(format!("WebSocket: {}", cause_chain(&err))))?;
    Ok(ws)
}

enum Target {
    Ip(IpAddr, u16),
    Name(String, u16),
}

/// The WebSocket URL (the path defaulting to [`AGENT_PATH`]), the TLS server name and where to
/// connect.
fn target(url: &str) -> Result<(Url, ServerName<'static>, Target), SessionError> {
    let mut ws_url = crate::config::parse_agent_url(url).map_err(SessionError::Url)?;
    if ws_url.path().is_empty() || ws_url.path() == "/" {
        ws_url.set_path(AGENT_PATH);
    }
    let port = ws_url.port_or_known_default().unwrap_or(443);
    let host = ws_url
        .host_str()
        .ok_or_else(|| SessionError::Url(format!("{url:?} has no host")))?;
    let bare = host
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(host);
    let (name, target) = match bare.parse::<IpAddr>() {
        Ok(ip) => (ServerName::from(ip), Target::Ip(ip, port)),
        Err(_) => (
            ServerName::try_from(bare.to_owned())
                .map_err(|err| SessionError::Url(format!("{url:?}: {err}")))?,
            Target::Name(bare.to_owned(), port),
        ),
    };
    Ok((ws_url, name, target))
}

/// The session's TLS configuration: TLS 1.3 only, ALPN `http/1.1`, the cluster CA from
/// `ca_file` as the only root, and the client certificate and key from their files.
///
/// # Errors
///
/// [`SessionError::Material`] naming the file that is missing or unusable.
pub fn tls_config(config: &AgentConfig) -> Result<Arc<ClientConfig>, SessionError> {
    let certs_in = |path: &Path| -> Result<Vec<CertificateDer<'static>>, SessionError> {
        let pem = read_text(path).map_err(SessionError::Material)?;
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| SessionError::Material(format!("{}: {err}", path.display())))?;
        if certs.is_empty() {
            return Err(SessionError::Material(format!(
                "no certificate in {}",
                path.display()
            )));
        }
        Ok(certs)
    };
    let mut roots = RootCertStore::empty();
    for cert in certs_in(&config.ca_file)? {
        roots.add(cert).map_err(|err| {
            SessionError::Material(format!("{}: {err}", config.ca_file.display()))
        })?;
    }
    let chain = certs_in(&config.cert_file)?;
    let key_pem = read_text(&config.key_file).map_err(SessionError::Material)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| {
        SessionError::Material(format!("no private key in {}", config.key_file.display()))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| SessionError::Material(err.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|err| {
            SessionError::Material(format!(
                "cannot use the certificate {} with the key {}: {err}",
                config.cert_file.display(),
                config.key_file.display()
            ))
        })?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

fn read_text(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|err| format!("cannot read {}: {err}", path.display()))
}

fn load_key(path: &Path) -> Result<KeyPair, String> {
    let pem = read_text(path)?;
    KeyPair::from_pem(&pem).map_err(|_| format!("no usable private key in {}", path.display()))
}

/// The hello for this configuration and host.
pub fn hello(config: &AgentConfig, system: System) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        name: config.name.clone(),
        namespace: config.namespace.clone(),
        subscriptions: config.subscriptions.clone(),
        labels: config.labels.clone(),
        annotations: config.annotations.clone(),
        system,
        keepalive_interval: config.keepalive_interval,
        keepalive_warning_timeout: config.keepalive_warning_timeout,
        keepalive_critical_timeout: config.keepalive_critical_timeout,
        deregister: config.deregister,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        keepalive_pipelines: config.keepalive_pipelines.clone(),
        agent_managed: config.agent_managed_entity,
        keepalive_handlers: config.keepalive_handlers.clone(),
        deregistration_handler: config.deregistration_handler.clone(),
    }
}

/// This agent's entity, as checks and events carry it.
pub fn entity(config: &AgentConfig, system: System) -> Entity {
    Entity {
        metadata: Some(ObjectMeta {
            name: config.name.clone(),
            namespace: config.namespace.clone(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            created_by: String::new(),
        }),
        entity_class: "agent".to_owned(),
        subscriptions: config.subscriptions.clone(),
        system: Some(system),
        deregister: config.deregister,
        deregistration: (!config.deregistration_handler.is_empty()).then(|| {
            cairn_api::model::Deregistration {
                handler: config.deregistration_handler.clone(),
            }
        }),
        keepalive_handlers: config.keepalive_handlers.clone(),
        sensu_agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Entity::default()
    }
}

/// Replaces every occurrence of a secret value in what a command wrote (the check's output,
/// its hooks and its metrics) with `*****`. The executor already redacts output; this is the
/// agent's own guarantee that nothing secret reaches the queue.
pub fn redact_secrets(event: &mut Event, redactor: &Redactor) {
    if redactor.is_empty() {
        return;
    }
    if let Some(check) = event.check.as_mut() {
        redactor.redact_in_place(&mut check.output);
        for hook in &mut check.hooks {
            redactor.redact_json(hook);
        }
    }
    if let Some(metrics) = event.metrics.as_mut() {
        redactor.redact_json(metrics);
    }
}

#[cfg(test)]
mod tests {
    use cairn_api::model::Check;

    use super::*;

    #[test]
    fn targets() {
        let (url, name, to) = target("wss://cairn.example.com:8081").unwrap();
        assert_eq!(url.as_str(), "wss://cairn.example.com:8081/agentconnect");
        assert_eq!(name, ServerName::try_from("cairn.example.com").unwrap());
        assert!(matches!(to, Target::Name(ref host, 8081) if host == "cairn.example.com"));
        let (url, name, to) = target("wss://[::1]:8081/").unwrap();
        assert_eq!(url.as_str(), "wss://[::1]:8081/agentconnect");
        assert_eq!(name, ServerName::try_from("::1").unwrap());
        assert!(matches!(to, Target::Ip(ip, 8081) if ip.is_loopback()));
        let (url, _, to) = target("wss://10.0.0.1").unwrap();
        assert_eq!(url.as_str(), "wss://10.0.0.1/agentconnect");
        assert!(matches!(to, Target::Ip(_, 443)));
        assert!(target("ws://h:1").is_err());
    }

    #[test]
    fn secrets_are_redacted_from_output_hooks_and_metrics() {
        let mut event = Event {
            check: Some(Check {
                output: "token=hunter2 ok".into(),
                hooks: vec![serde_json::json!({"output": "hunter2", "status": 0})],
                ..Check::default()
            }),
            metrics: Some(serde_json::json!({"points": [{"name": "x hunter2"}]})),
            ..Event::default()
        };
        redact_secrets(&mut event, &Redactor::new(["hunter2", ""]));
        let json = serde_json::to_string(&event).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert_eq!(event.check.unwrap().output, "token=***** ok");
    }

    #[test]
    fn hello_and_entity_carry_the_configuration() {
        let mut config = AgentConfig::new("web-01", vec!["wss://h:8081".into()]);
        config.subscriptions = vec!["linux".into()];
        config.labels.insert("team".into(), "ops".into());
        config.keepalive_handlers = vec!["slack".into()];
        config.deregistration_handler = "cleanup".into();
        let system = System {
            hostname: "web-01.example.com".into(),
            ..System::default()
        };
        let hello = hello(&config, system.clone());
        assert_eq!(hello.protocol, PROTOCOL_VERSION);
        assert_eq!(hello.name, "web-01");
        assert_eq!(hello.keepalive_interval, 20);
        assert_eq!(hello.subscriptions, ["linux"]);
        assert_eq!(hello.keepalive_handlers, ["slack"]);
        assert_eq!(hello.deregistration_handler, "cleanup");
        let entity = entity(&config, system);
        assert_eq!(entity.keepalive_handlers, ["slack"]);
        assert_eq!(entity.deregistration.as_ref().unwrap().handler, "cleanup");
        let meta = entity.metadata.unwrap();
        assert_eq!(
            (meta.name.as_str(), meta.namespace.as_str()),
            ("web-01", "default")
        );
        assert_eq!(entity.entity_class, "agent");
        assert_eq!(entity.system.unwrap().hostname, "web-01.example.com");
    }

    #[test]
    fn missing_material_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = AgentConfig::new("web-01", vec!["wss://h:8081".into()]);
        config.ca_file = tmp.path().join("ca.pem");
        config.cert_file = tmp.path().join("agent.pem");
        config.key_file = tmp.path().join("agent.key");
        let err = tls_config(&config).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("cannot read {}", config.ca_file.display())),
            "{err}"
        );
        std::fs::write(&config.ca_file, "nothing").unwrap();
        let err = tls_config(&config).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("no certificate in {}", config.ca_file.display())
        );
    }
}

/// A fake backend (TLS 1.3 requiring a client certificate from the agent CA, WebSocket) driving
/// the real session loop, executor and queue.
#[cfg(test)]
mod fake_backend {
    use std::sync::atomic::AtomicBool;

    use cairn_api::agent::SecretValue;
    use cairn_api::model::CheckConfig;
    use rcgen::PublicKeyData;
    use rustls::pki_types::PrivatePkcs8KeyDer;
    use rustls::server::WebPkiClientVerifier;
    use rustls::ServerConfig;
    use tokio::net::TcpListener;
    use tokio_rustls::server::TlsStream as ServerTls;
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::certs::tests::{days_around_now, test_ca, test_cert, TestCa};
    use crate::exec::ExecLimits;
    use crate::queue::QueueLimits;

    const WAIT: Duration = Duration::from_secs(20);
    const SECRET: &str = "hunter2-very-secret";

    type Ws = WebSocketStream<ServerTls<TcpStream>>;

    struct Backend {
        listener: TcpListener,
        acceptor: TlsAcceptor,
        agent_ca: TestCa,
    }

    impl Backend {
        async fn accept(&self) -> Ws {
            let (tcp, _) = tokio::time::timeout(WAIT, self.listener.accept())
                .await
                .expect("the agent connects")
                .unwrap();
            let tls = self.acceptor.accept(tcp).await.expect("mutual TLS");
            let (_, connection) = tls.get_ref();
            assert_eq!(
                connection.protocol_version(),
                Some(rustls::ProtocolVersion::TLSv1_3)
            );
            assert!(connection.peer_certificates().is_some());
            tokio_tungstenite::accept_async(tls).await.unwrap()
        }

        /// Accepts a session and answers its hello.
        async fn session(&self) -> (Ws, Hello) {
            let mut ws = self.accept().await;
            let AgentMessage::Hello(hello) = receive(&mut ws).await else {
                panic!("the first message is not a hello");
            };
            reply(
                &mut ws,
                &BackendMessage::Welcome {
                    entity: hello.name.clone(),
                },
            )
            .await;
            (ws, *hello)
        }

        /// Receives until a message that is not a keepalive; answers a renewal.
        async fn next(&self, ws: &mut Ws) -> AgentMessage {
            loop {
                match receive(ws).await {
                    AgentMessage::Keepalive { .. } => {}
                    AgentMessage::RenewCertificate { csr_pem } => {
                        let csr =
                            rcgen::CertificateSigningRequestParams::from_pem(&csr_pem).unwrap();
                        let (cert_pem, _) = test_cert(
                            &self.agent_ca,
                            &csr.public_key,
                            "web-01",
                            &[],
                            days_around_now(0, 90),
                        );
                        reply(ws, &BackendMessage::Certificate { cert_pem }).await;
                    }
                    other => return other,
                }
            }
        }
    }

    async fn receive(ws: &mut Ws) -> AgentMessage {
        loop {
            let message = tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("the agent says something")
                .expect("the connection is open")
                .unwrap();
            if let Message::Text(text) = message {
                return serde_json::from_str(text.as_str()).unwrap();
            }
        }
    }

    async fn reply(ws: &mut Ws, message: &BackendMessage) {
        let text = serde_json::to_string(message).unwrap();
        ws.send(Message::Text(text.into())).await.unwrap();
    }

    fn queue_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|items| {
                items
                    .map(|item| item.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn session_runs_checks_resends_unacknowledged_events_and_renews() {
        let tmp = tempfile::tempdir().unwrap();
        let cluster_ca = test_ca("cairn CA");
        let agent_ca = test_ca("cairn agent CA");

        // The backend's listener certificate, from the cluster CA.
        let server_key = certs::generate_key().unwrap();
        let (_, server_der) = test_cert(
            &cluster_ca,
            &server_key,
            "cairn-agent-listener",
            &["localhost", "127.0.0.1"],
            days_around_now(1, 30),
        );
        let verifier = WebPkiClientVerifier::builder_with_provider(
            {
                let mut roots = RootCertStore::empty();
                roots
                    .add(CertificateDer::from(agent_ca.der.clone()))
                    .unwrap();
                Arc::new(roots)
            },
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let server =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(
                    vec![CertificateDer::from(server_der)],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
                )
                .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();

        // The agent: a certificate with less than a third of its validity left.
        let agent_key = certs::generate_key().unwrap();
        let (agent_pem, _) =
            test_cert(&agent_ca, &agent_key, "web-01", &[], days_around_now(20, 1));
        let mut config = AgentConfig::new("web-01", vec![format!("wss://127.0.0.1:{port}")]);
        config.keepalive_interval = 1;
        config.subscriptions = vec!["linux".into()];
        config.key_file = tmp.path().join("agent.key");
        config.cert_file = tmp.path().join("agent.pem");
        config.ca_file = tmp.path().join("ca.pem");
        config.queue_dir = tmp.path().join("queue");
        std::fs::write(&config.key_file, agent_key.serialize_pem()).unwrap();
        std::fs::write(&config.cert_file, &agent_pem).unwrap();
        std::fs::write(&config.ca_file, &cluster_ca.cert_pem).unwrap();
        let config = Arc::new(config);

        let queue = Arc::new(Mutex::new(
            EventQueue::open(&config.queue_dir, QueueLimits::default()).unwrap(),
        ));
        let queued = Arc::new(Notify::new());
        let (events_tx, events_rx) = mpsc::channel(16);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let fallback = entity(&config, System::default());
        let writer = tokio::spawn(crate::start::queue_writer(
            events_rx,
            queue.clone(),
            queued.clone(),
            fallback,
            shutdown_rx.clone(),
        ));
        let health = Arc::new(AtomicBool::new(false));
        let shared = Shared {
            config: config.clone(),
            queue: queue.clone(),
            queued,
            events: events_tx,
            executor: Arc::new(Executor::new(ExecLimits { max_concurrency: 4 })),
            health: health.clone(),
        };
        let agent = tokio::spawn(run(shared, shutdown_rx));
        let backend = Backend {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(server)),
            agent_ca,
        };

        // Session 1: the hello, a check with a secret, no acknowledgement.
        let (mut ws, hello) = backend.session().await;
        assert_eq!(hello.name, "web-01");
        assert_eq!(hello.protocol, PROTOCOL_VERSION);
        assert_eq!(hello.subscriptions, ["linux"]);
        assert_eq!(hello.keepalive_interval, 1);
        assert_eq!(hello.system.os, std::env::consts::OS);
        eventually("health", || health.load(Ordering::SeqCst)).await;
        let request = CheckRequest {
            config: CheckConfig {
                metadata: Some(ObjectMeta::named("default", "with-secret")),
                command: "echo token=$CAIRN_TEST_SECRET; echo done".into(),
                timeout: 10,
                ..CheckConfig::default()
            },
            issued: certs::now_unix(),
            secrets: vec![SecretValue {
                name: "CAIRN_TEST_SECRET".into(),
                value: SECRET.into(),
            }],
            ..CheckRequest::default()
        };
        reply(&mut ws, &BackendMessage::CheckRequest(Box::new(request))).await;
        let AgentMessage::Event { id, event } = backend.next(&mut ws).await else {
            panic!("expected the check result");
        };
        let check = event.check.as_ref().unwrap();
        assert_eq!(check.output, "token=*****\ndone\n");
        assert_eq!(check.processed_by, "web-01");
        assert_eq!(event.id, id);
        // Queued on disk until acknowledged, without the secret.
        let files = queue_files(&config.queue_dir);
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].ends_with(&format!("-{id}.json")));
        let stored = std::fs::read_to_string(config.queue_dir.join(&files[0])).unwrap();
        assert!(!stored.contains(SECRET));

        // The renewal asked for right after the welcome was answered by `next`.
        eventually("the renewed certificate", || {
            std::fs::read_to_string(&config.cert_file).unwrap() != agent_pem
        })
        .await;
        let renewed =
            CertInfo::from_pem(&std::fs::read_to_string(&config.cert_file).unwrap()).unwrap();
        assert_eq!(renewed.common_name, "web-01");
        assert_eq!(renewed.public_key, agent_key.subject_public_key_info());
        assert!(!renewed.needs_renewal(certs::now_unix()));

        // The backend goes away without acknowledging.
        drop(ws);
        eventually("unhealthy", || !health.load(Ordering::SeqCst)).await;

        // Session 2 (with the renewed certificate): the same event again; acknowledged.
        let (mut ws, _) = backend.session().await;
        let AgentMessage::Event { id: resent, .. } = backend.next(&mut ws).await else {
            panic!("expected the unacknowledged event again");
        };
        assert_eq!(resent, id);
        reply(&mut ws, &BackendMessage::Ack { id }).await;
        eventually("an empty queue", || {
            queue_files(&config.queue_dir).is_empty()
        })
        .await;

        // Shutdown closes the session cleanly.
        shutdown_tx.send(true).unwrap();
        let closed = tokio::time::timeout(WAIT, async {
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Close(frame) = message {
                    return frame.map(|frame| frame.code);
                }
            }
            None
        })
        .await
        .unwrap();
        assert_eq!(closed, Some(CloseCode::Normal));
        tokio::time::timeout(WAIT, agent).await.unwrap().unwrap();
        tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
    }
}
