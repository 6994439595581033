//! The agent listener: TLS 1.3 with a client certificate from the agent CA, a WebSocket at
//! [`AGENT_PATH`], and one session per connection.
//!
//! A connection goes through these steps, and any failure ends it without registering anything:
//!
//! 0. The listener ([`crate::listen`], `--agent-max-connections`, `--agent-handshake-timeout`):
//!    at most 20,000 connections by default (the rest wait in the kernel's backlog), accept
//!    errors back off, and the lines about refused connections are rate-limited (one per 10 s).
//! 1. TLS ([`crate::datadir::tls::agent_server_config`]) within the handshake timeout (10 s): no client
//!    certificate, one from another CA or an expired one fails here, logged with the peer
//!    address.
//! 2. The identity is the verified certificate's ([`peer_identity`]): the entity is its CN, and
//!    the namespace its one URI SAN `cairn:agent:<namespace>/<entity>` (which must name the same
//!    entity). A certificate without that SAN (issued before certificates named their namespace)
//!    is refused at the hello with a reason that says to re-enrol the agent with a new join token.
//! 3. The WebSocket upgrade, refused on any path but [`AGENT_PATH`]; messages and frames are
//!    limited to [`MAX_MESSAGE_BYTES`].
//! 4. The hello, first and within [`HELLO_TIMEOUT`]: protocol version, name equal to the
//!    certificate's entity, namespace equal to the certificate's (empty means the
//!    certificate's), valid names, an existing namespace, a certificate that is not revoked (by
//!    issue time or by fingerprint), and, when the entity's join token pinned its
//!    subscriptions, no subscription beyond them. A refusal is a [`BackendMessage::Refused`]
//!    with `fatal: true` and a reason, then a close.
//! 5. The entity is upserted (class `agent`, `entity:<name>` among its subscriptions, system
//!    facts, `last_seen`), the session registered in [`Sessions`], and
//!    [`BackendMessage::Welcome`] sent.
//!
//! Then the connection task serves, one at a time, the agent's frames and the session's queue
//! (check requests from the scheduler, a revocation), pings the agent every
//! [`PING_INTERVAL`] and ends the session after [`IDLE_TIMEOUT`] without a frame.
//!
//! # Renewal
//!
//! A renewal signs a certificate for the session's own namespace and entity, and is refused for
//! a revoked certificate, for a certificate that is no longer the entity's recorded one (the
//! entity was enrolled again), and when, after signing and recording the new certificate, the
//! store holds a revocation that covers either certificate: the new one is then never sent.
//!
//! # Events and acknowledgements
//!
//! An event is stored through [`crate::events::ingest::ingest`] as the entity of the session (the agent
//! cannot report as another entity), then acknowledged with [`BackendMessage::Ack`]. An id
//! already acknowledged (the last [`ACKED_IDS_KEPT`] per entity, remembered across reconnects
//! for the life of the process), or equal to the id of the stored latest event of that
//! entity/check, is acknowledged again without storing: a resend after a reconnect is never a
//! duplicate. An event the backend refuses (a client error) gets a non-fatal
//! [`BackendMessage::Refused`] with the reason AND an [`BackendMessage::Ack`], because sending
//! a bad event again never helps and it would block the agent's queue; an event that could not
//! be stored for a passing reason (a store failure, a write conflict) gets only the `Refused`,
//! so the agent keeps it and sends it again.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde::Deserialize;
use sha2::Digest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use cairn_api::agent::{
    AgentMessage, BackendMessage, Hello, AGENT_PATH, DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_WARNING_TIMEOUT, MAX_MESSAGE_BYTES, PROTOCOL_VERSION, READ_BUFFER_BYTES,
};
use cairn_api::model::{Entity, Event};
use cairn_api::validate::check_name;
use cairn_api::{Kind, ObjectMeta, Resource, Spec};

use crate::agents::join::{self, CertRecord, Revocation};
use crate::agents::sessions::{Session, Sessions};
use crate::agents::Agents;
use crate::clock::unix_now;
use crate::entity::{self, EntityId};
use crate::listen::{BoundedListener, ConnectionLimits, SharedRepeatedLog, REPEAT_LOG_INTERVAL};
use crate::store::resources::{ResourceError, Resources};
use crate::store::{Precondition, StoreError};

/// How long the agent has to send its hello after the upgrade.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write to the agent may take before the session is given up.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the backend pings a session.
pub(crate) const PING_INTERVAL: Duration = Duration::from_secs(30);
/// A session that sends nothing (not even a pong) for this long is closed.
pub(crate) const IDLE_TIMEOUT: Duration = ConnectionLimits::AGENT.idle_timeout;
/// The entity's `last_seen` in the store is updated at most this often per entity.
pub(crate) const LAST_SEEN_WRITE_INTERVAL: Duration = Duration::from_secs(60);
/// How many acknowledged event ids are remembered per entity.
pub(crate) const ACKED_IDS_KEPT: usize = 1024;
/// The longest event id accepted.
pub(crate) const MAX_EVENT_ID_LEN: usize = 128;
/// The fewest seconds between two certificate renewals of one session.
pub(crate) const RENEWAL_MIN_INTERVAL: Duration = Duration::from_secs(60);
/// The reason sent to an agent whose certificate is revoked.
pub(crate) const REASON_REVOKED: &str = "certificate revoked";
/// The reason sent to an agent whose certificate does not name its namespace.
pub(crate) const REASON_REENROL: &str = "the client certificate does not name its namespace (no cairn:agent: URI SAN): it was issued before certificates were bound to a namespace; re-enrol the agent with a new join token (cairn-agent install)";
/// How long connections get to close when the backend stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a close waits for the agent's close frame (so that it reads what was sent last).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Close frame reasons are limited to 123 bytes by the protocol.
const MAX_CLOSE_REASON: usize = 120;

type AgentSocket = WebSocketStream<TlsStream<TcpStream>>;

// ------------------------------------------------------------------------------------------
// Shared state across connections
// ------------------------------------------------------------------------------------------

/// What the connections of this process share: the session registry, the certificate of each
/// live session (for revocations), and per-entity memory that outlives a connection.
///
/// Memory is bounded per entity (at most [`ACKED_IDS_KEPT`] 8-byte id hashes) and grows with
/// the number of agent entities that connected since the process started, each of which needed
/// a certificate.
pub(crate) struct AgentHub {
    sessions: Arc<Sessions>,
    live: Mutex<HashMap<EntityId, Live>>,
    memory: Mutex<HashMap<EntityId, Memory>>,
    hasher: RandomState,
}

/// The live connection of an entity.
struct Live {
    connection: u64,
    issued_at: i64,
    fingerprint: String,
    stop: Option<oneshot::Sender<String>>,
}

/// What is remembered about an entity across its connections.
#[derive(Default)]
struct Memory {
    /// Hashes of the last acknowledged event ids, oldest first.
    acked: VecDeque<u64>,
    /// When `last_seen` was last written to the store.
    last_seen_written: Option<Instant>,
}

impl std::fmt::Debug for AgentHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHub")
            .field("live", &self.live.lock().len())
            .field("entities", &self.memory.lock().len())
            .finish_non_exhaustive()
    }
}

impl AgentHub {
    /// A hub over the session registry.
    pub(crate) fn new(sessions: Arc<Sessions>) -> Arc<AgentHub> {
        Arc::new(AgentHub {
            sessions,
            live: Mutex::new(HashMap::new()),
            memory: Mutex::new(HashMap::new()),
            hasher: RandomState::new(),
        })
    }

    /// The session registry.
    pub(crate) fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// Records the live connection of a registered session; the returned receiver hears why
    /// the session must end (replaced by a newer one, revoked). A previous connection of the
    /// same entity is told to end.
    fn attach(
        &self,
        session: &Session,
        issued_at: i64,
        fingerprint: &str,
    ) -> oneshot::Receiver<String> {
        let (stop, stopped) = oneshot::channel();
        let previous = self.live.lock().insert(
            session.id.clone(),
            Live {
                connection: session.connection,
                issued_at,
                fingerprint: fingerprint.to_owned(),
                stop: Some(stop),
            },
        );
        if let Some(stop) = previous.and_then(|mut previous| previous.stop.take()) {
            let _ = stop.send(format!(
                "replaced by a newer session of {}",
                session.id.name
            ));
        }
        stopped
    }

    /// Forgets a connection that ended and unregisters its session (if still its own).
    fn detach(&self, session: &Session) {
        {
            let mut live = self.live.lock();
            if live
                .get(&session.id)
                .is_some_and(|entry| entry.connection == session.connection)
            {
                live.remove(&session.id);
            }
        }
        self.sessions.unregister(session);
    }

    /// Whether an event id of this entity was acknowledged recently.
    pub(crate) fn was_acked(&self, entity: &EntityId, event_id: &str) -> bool {
        let hash = self.hasher.hash_one(event_id);
        self.memory
            .lock()
            .get(entity)
            .is_some_and(|memory| memory.acked.contains(&hash))
    }

    /// Remembers an acknowledged event id (forgetting the oldest beyond [`ACKED_IDS_KEPT`]).
    pub(crate) fn remember_ack(&self, entity: &EntityId, event_id: &str) {
        let hash = self.hasher.hash_one(event_id);
        let mut memory = self.memory.lock();
        let acked = &mut memory.entry(entity.clone()).or_default().acked;
        if acked.contains(&hash) {
            return;
        }
        if acked.len() >= ACKED_IDS_KEPT {
            acked.pop_front();
        }
        acked.push_back(hash);
    }

    /// Whether `last_seen` is due to be written for this entity; when it is, the write is
    /// counted as done now.
    fn last_seen_due(&self, entity: &EntityId, now: Instant) -> bool {
        let mut memory = self.memory.lock();
        let written = &mut memory.entry(entity.clone()).or_default().last_seen_written;
        let due = written.is_none_or(|at| now.duration_since(at) >= LAST_SEEN_WRITE_INTERVAL);
        if due {
            *written = Some(now);
        }
        due
    }

    /// Drops the live session of an entity whose certificate a revocation covers: sends it a
    /// fatal [`BackendMessage::Refused`] (its connection task closes the socket) and removes it
    /// from the registry. A session with a certificate issued after the revocation stays.
    pub(crate) fn revoke(&self, id: &EntityId, revocation: &Revocation) {
        let (connection, stop) = {
            let mut live = self.live.lock();
            let Some(entry) = live.get_mut(id) else {
                return;
            };
            if !revocation.refuses(entry.issued_at, &entry.fingerprint) {
                return;
            }
            let connection = entry.connection;
            let stop = entry.stop.take();
            live.remove(id);
            (connection, stop)
        };
        if let Some(session) = self
            .sessions
            .get(id)
            .filter(|session| session.connection == connection)
        {
            let refused = BackendMessage::Refused {
                reason: REASON_REVOKED.to_owned(),
                fatal: true,
            };
            if let Err(err) = session.send(refused) {
                tracing::debug!(error = %err, "revocation not queued; the connection is told directly");
            }
            self.sessions.drop_session(id);
        }
        // Also tell the connection directly, in case its queue is full.
        if let Some(stop) = stop {
            let _ = stop.send(REASON_REVOKED.to_owned());
        }
        tracing::info!(namespace = %id.namespace, entity = %id.name, "session of a revoked agent dropped");
    }
}

// ------------------------------------------------------------------------------------------
// Pure checks
// ------------------------------------------------------------------------------------------

/// Who the client certificate says the peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerIdentity {
    /// The certificate's CN: the entity name.
    pub name: String,
    /// The namespace its URI SAN names, or why it names none usable (the session is refused
    /// with that reason at the hello).
    pub namespace: Result<String, String>,
    /// The serial number, lowercase hex.
    pub serial: String,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
    /// The certificate's `notBefore`, unix seconds.
    pub not_before: i64,
    /// The certificate's `notAfter`, unix seconds.
    pub not_after: i64,
}

impl PeerIdentity {
    /// When the certificate was issued (see [`join::issued_at`]).
    pub(crate) fn issued_at(&self) -> i64 {
        join::issued_at(self.not_before)
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Reads the identity of a DER certificate that TLS already verified: the entity name (the one
/// CN), the namespace (the one `cairn:agent:` URI SAN, naming the same entity), the serial, the
/// fingerprint and the validity.
///
/// # Errors
/// A reason when the certificate does not parse or has no single, textual CN; a missing or
/// inconsistent URI SAN is reported in [`PeerIdentity::namespace`] instead.
pub(crate) fn peer_identity(der: &[u8]) -> Result<PeerIdentity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| format!("the client certificate does not parse: {err}"))?;
    let mut names = cert.subject().iter_common_name();
    let name = names
        .next()
        .ok_or("the client certificate has no common name")?
        .as_str()
        .map_err(|_| "the client certificate's common name is not text".to_owned())?
        .to_owned();
    if names.next().is_some() {
        return Err("the client certificate has more than one common name".to_owned());
    }
    let namespace = match cert.subject_alternative_name() {
        Ok(sans) => {
            let uris: Vec<&str> = sans
                .map(|ext| {
                    ext.value
                        .general_names
                        .iter()
                        .filter_map(|san| match san {
                            x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
                            _ => None,
                        })
                        .filter(|uri| uri.starts_with(cairn_api::agent::AGENT_URI_PREFIX))
                        .collect()
                })
                .unwrap_or_default();
            certificate_namespace(&uris, &name)
        }
        Err(err) => Err(format!(
            "the client certificate's subject alternative names do not parse: {err}"
        )),
    };
    Ok(PeerIdentity {
        name,
        namespace,
        serial: hex_lower(cert.raw_serial()),
        fingerprint: hex_lower(&sha2::Sha256::digest(der)),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The namespace of the agent URI SANs `uris` of a certificate whose CN is `name`.
fn certificate_namespace(uris: &[&str], name: &str) -> Result<String, String> {
    let [uri] = uris else {
        return Err(if uris.is_empty() {
            REASON_REENROL.to_owned()
        } else {
            "the client certificate names more than one agent identity".to_owned()
        });
    };
    let Some((namespace, entity)) = cairn_api::agent::parse_agent_uri(uri) else {
        return Err(format!(
            "the client certificate's agent URI \"{uri}\" is malformed"
        ));
    };
    if entity != name {
        return Err(format!(
            "the client certificate's agent URI names entity \"{entity}\" but its common name is \"{name}\""
        ));
    }
    if let Some(problem) = check_name(Kind::Namespace, namespace) {
        return Err(format!(
            "the client certificate's namespace is invalid: {problem}"
        ));
    }
    Ok(namespace.to_owned())
}

/// Checks a hello against the certificate's entity `common_name` and `namespace`; returns the
/// namespace.
///
/// # Errors
/// The reason to refuse the session with.
pub(crate) fn check_hello(
    hello: &Hello,
    common_name: &str,
    namespace: &str,
) -> Result<String, String> {
    if hello.protocol != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} is not supported; this backend speaks version {PROTOCOL_VERSION}",
            hello.protocol
        ));
    }
    if hello.name != common_name {
        return Err(format!(
            "the hello names entity \"{}\" but the certificate is for \"{common_name}\"",
            hello.name
        ));
    }
    if let Some(problem) = check_name(Kind::Entity, &hello.name) {
        return Err(format!("invalid entity name: {problem}"));
    }
    if !hello.namespace.is_empty() && hello.namespace != namespace {
        return Err(format!(
            "the hello names namespace \"{}\" but the certificate is for namespace \"{namespace}\"",
            hello.namespace
        ));
    }
    for (idx, subscription) in hello.subscriptions.iter().enumerate() {
        if let Some(problem) = check_name(Kind::Role, subscription) {
            return Err(format!("invalid subscription {idx}: {problem}"));
        }
    }
    Ok(namespace.to_owned())
}

/// Checks a hello's subscriptions against those its join token pinned (`entity:<name>` is
/// always allowed).
///
/// # Errors
/// The reason to refuse the session with, naming the first subscription not allowed.
pub(crate) fn check_pinned(hello: &Hello, pinned: &[String]) -> Result<(), String> {
    let own = format!("entity:{}", hello.name);
    match hello
        .subscriptions
        .iter()
        .find(|subscription| **subscription != own && !pinned.contains(subscription))
    {
        None => Ok(()),
        Some(subscription) => Err(format!(
            "subscription \"{subscription}\" is not allowed: the join token this agent enrolled with pins its subscriptions to [{}]; re-enrol it with a token that grants it",
            pinned.join(", ")
        )),
    }
}

/// The hello with Sensu's defaults for keepalive settings left at 0 (the critical timeout
/// keeps 0, which means "none").
fn with_defaults(mut hello: Hello) -> Hello {
    if hello.keepalive_interval == 0 {
        hello.keepalive_interval = DEFAULT_KEEPALIVE_INTERVAL;
    }
    if hello.keepalive_warning_timeout == 0 {
        hello.keepalive_warning_timeout = DEFAULT_KEEPALIVE_WARNING_TIMEOUT;
    }
    hello
}

/// The entity an agent's hello describes; what an operator set on an existing entity and the
/// hello does not carry (deregistration handler, redactions, keepalive handlers, user) is kept.
///
/// Who owns subscriptions, labels and annotations (Sensu's rule): the hello when the entity is
/// new or the agent is agent-managed (which the label [`entity::MANAGED_BY_LABEL`] then
/// records); otherwise the stored entity, which the API may have changed since (Sensu's
/// backend-managed entities). `entity:<name>` is always among the subscriptions.
pub(crate) fn agent_entity(
    namespace: &str,
    hello: &Hello,
    existing: Option<(&ObjectMeta, &Entity)>,
    now: i64,
) -> Resource {
    let mut metadata = ObjectMeta::named(namespace, &hello.name);
    let stored = existing.filter(|_| !hello.agent_managed);
    match stored {
        Some((meta, _)) => {
            metadata.labels = meta.labels.clone();
            metadata.annotations = meta.annotations.clone();
            // An entity the agent managed before is the backend's from now on.
            if entity::agent_managed(meta) {
                metadata.labels.remove(entity::MANAGED_BY_LABEL);
            }
        }
        None => {
            metadata.labels = hello.labels.clone();
            metadata.annotations = hello.annotations.clone();
            if hello.agent_managed {
                metadata.labels.insert(
                    entity::MANAGED_BY_LABEL.to_owned(),
                    entity::MANAGED_BY_AGENT.to_owned(),
                );
            }
        }
    }
    metadata.created_by = existing
        .map(|(meta, _)| meta.created_by.clone())
        .filter(|created_by| !created_by.is_empty())
        .unwrap_or_else(|| format!("agent/{}", hello.name));
    let mut entity = existing
        .map(|(_, entity)| entity.clone())
        .unwrap_or_default();
    entity.metadata = None;
    entity.entity_class = "agent".to_owned();
    let wanted = match stored {
        Some((_, entity)) => &entity.subscriptions,
        None => &hello.subscriptions,
    };
    let mut subscriptions: Vec<String> = Vec::with_capacity(wanted.len() + 1);
    for subscription in wanted {
        if !subscriptions.contains(subscription) {
            subscriptions.push(subscription.clone());
        }
    }
    let implicit = format!("entity:{}", hello.name);
    if !subscriptions.contains(&implicit) {
        subscriptions.push(implicit);
    }
    entity.subscriptions = subscriptions;
    entity.system = Some(hello.system.clone());
    entity.last_seen = now;
    entity.deregister = hello.deregister;
    // agent.yaml's keepalive_handlers and deregistration_handler (Sensu's agent flags) win
    // when the agent names them; otherwise what the operator set on the entity stays.
    if !hello.keepalive_handlers.is_empty() {
        entity.keepalive_handlers = hello.keepalive_handlers.clone();
    }
    if !hello.deregistration_handler.is_empty() {
        entity.deregistration = Some(cairn_api::model::Deregistration {
            handler: hello.deregistration_handler.clone(),
        });
    }
    entity.sensu_agent_version = hello.agent_version.clone();
    Resource::new(metadata, Spec::Entity(entity))
}

/// The entity as events embed it (with its metadata).
fn embedded(resource: &Resource) -> Entity {
    let mut entity = match &resource.spec {
        Spec::Entity(entity) => entity.clone(),
        _ => Entity::default(),
    };
    entity.metadata = Some(resource.metadata.clone());
    entity
}

/// Makes an agent's event the session entity's: the entity's name and namespace forced to the
/// session's (other fields kept, missing ones filled from the registered entity), the check in
/// the session's namespace, `created_by` set, and the message id as the event id when the event
/// has none. Returns the event's name (`<entity>/<check>`, or `<entity>/metrics`).
///
/// # Errors
/// Why the event is refused.
pub(crate) fn prepare_event(
    mut event: Event,
    registered: &Entity,
    namespace: &str,
    message_id: &str,
) -> Result<(String, Event), String> {
    let registered_meta = registered.metadata.clone().unwrap_or_default();
    let name = registered_meta.name.clone();
    let created_by = format!("agent/{name}");
    if event.check.is_none() && event.metrics.is_none() {
        return Err("an event needs a check or metrics".to_owned());
    }
    let entity = match event.entity.take() {
        None => registered.clone(),
        Some(mut entity) => {
            let meta = entity.metadata.get_or_insert_with(ObjectMeta::default);
            meta.name = name.clone();
            meta.namespace = namespace.to_owned();
            if meta.labels.is_empty() {
                meta.labels = registered_meta.labels.clone();
            }
            if meta.annotations.is_empty() {
                meta.annotations = registered_meta.annotations.clone();
            }
            if entity.entity_class.is_empty() {
                entity.entity_class = registered.entity_class.clone();
            }
            if entity.subscriptions.is_empty() {
                entity.subscriptions = registered.subscriptions.clone();
            }
            if entity.system.is_none() {
                entity.system = registered.system.clone();
            }
            if entity.sensu_agent_version.is_empty() {
                entity.sensu_agent_version = registered.sensu_agent_version.clone();
            }
            if entity.last_seen == 0 {
                entity.last_seen = registered.last_seen;
            }
            entity
        }
    };
    event.entity = Some(entity);
    if let Some(meta) = event
        .entity
        .as_mut()
        .and_then(|entity| entity.metadata.as_mut())
    {
        meta.created_by = created_by.clone();
    }
    let check_name_part = match event.check.as_mut() {
        Some(check) => {
            let meta = check.metadata.get_or_insert_with(ObjectMeta::default);
            if let Some(problem) = check_name(Kind::CheckConfig, &meta.name) {
                return Err(format!("check.metadata.name: {problem}"));
            }
            meta.namespace = namespace.to_owned();
            meta.created_by = created_by;
            meta.name.clone()
        }
        None => "metrics".to_owned(),
    };
    if let Some(meta) = event.metadata.as_mut() {
        meta.namespace = namespace.to_owned();
    }
    if event.id.is_empty() && is_uuid(message_id) {
        event.id = message_id.to_owned();
    }
    Ok((format!("{name}/{check_name_part}"), event))
}

/// Whether an agent's event is a proxy check's result (see [`super::proxy`]).
fn names_proxy(event: &Event) -> bool {
    event
        .check
        .as_ref()
        .is_some_and(|check| !check.proxy_entity_name.is_empty())
}

fn is_uuid(text: &str) -> bool {
    text.len() == 36 && uuid::Uuid::try_parse(text).is_ok()
}

fn event_id_problem(id: &str) -> Option<String> {
    (id.is_empty() || id.len() > MAX_EVENT_ID_LEN || id.chars().any(char::is_control))
        .then(|| format!("an event id must be 1 to {MAX_EVENT_ID_LEN} bytes of printable text"))
}

fn message_type(message: &AgentMessage) -> &'static str {
    match message {
        AgentMessage::Hello(_) => "hello",
        AgentMessage::Event { .. } => "event",
        AgentMessage::Keepalive { .. } => "keepalive",
        AgentMessage::RenewCertificate { .. } => "renew_certificate",
    }
}

fn refused(reason: impl Into<String>) -> BackendMessage {
    BackendMessage::Refused {
        reason: reason.into(),
        fatal: false,
    }
}

// ------------------------------------------------------------------------------------------
// The listener
// ------------------------------------------------------------------------------------------

/// Serves agent connections on `listener` within `limits` ([`crate::listen`]: a connection
/// cap, handshake and upgrade timeouts, accept back-off) until `stop` turns true, then closes
/// every session (bounded by a short grace period).
pub(crate) async fn serve(
    listener: TcpListener,
    limits: ConnectionLimits,
    acceptor: TlsAcceptor,
    state: Agents,
    hub: Arc<AgentHub>,
    mut stop: watch::Receiver<bool>,
) {
    let mut listener = BoundedListener::new(listener, limits, "agent");
    // The lines about connections refused before a session exists (failed handshakes,
    // unusable certificates, failed upgrades): anyone who can reach the port can cause them,
    // so at most one per 10 s, with the count of those not logged.
    let refusals = Arc::new(SharedRepeatedLog::new(REPEAT_LOG_INTERVAL));
    let stop_for_connections = stop.clone();
    let mut connections = JoinSet::new();
    loop {
        let (socket, peer, slot) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = crate::shutdown::requested(&mut stop) => break,
        };
        // Reap the sessions that ended (at most `max_connections` wait here).
        while let Some(joined) = connections.try_join_next() {
            report_panic(joined);
        }
        connections.spawn(run_connection(
            Accepted {
                socket,
                peer,
                slot,
                limits,
            },
            acceptor.clone(),
            state.clone(),
            Arc::clone(&hub),
            stop_for_connections.clone(),
            Arc::clone(&refusals),
        ));
    }
    drop(listener);
    tracing::info!(
        sessions = connections.len(),
        "agent listener stopping: closing sessions"
    );
    let drain = async {
        while let Some(joined) = connections.join_next().await {
            report_panic(joined);
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!("agent sessions still open after the grace period; dropping them");
        connections.abort_all();
    }
}

fn report_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(err) = joined {
        if err.is_panic() {
            tracing::error!(error = %err, "an agent connection task panicked");
        }
    }
}

/// A connection the listener accepted, with its slot (given back when it drops).
struct Accepted {
    socket: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
    limits: ConnectionLimits,
}

/// Logs a failed TLS handshake: certificate problems at info (an agent to fix; rate-limited
/// by `refusals`), the rest (scanners, resets) at debug.
fn log_tls_failure(peer: SocketAddr, err: &std::io::Error, refusals: &SharedRepeatedLog) {
    let certificate_problem = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|inner| {
            matches!(
                inner,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::PeerIncompatible(_)
                    | rustls::Error::AlertReceived(_)
            )
        });
    if certificate_problem {
        if let Some(repeated) = refusals.due() {
            tracing::info!(%peer, error = %err, repeated, "agent tls handshake refused");
        }
    } else {
        tracing::debug!(%peer, error = %err, "agent tls handshake failed");
    }
}

/// Accepts the upgrade on [`AGENT_PATH`] only.
#[allow(clippy::result_large_err)] // the signature tungstenite's callback requires
fn check_path(request: &Request, response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() == AGENT_PATH {
        return Ok(response);
    }
    let mut refusal = ErrorResponse::new(Some(format!(
        "not found: the agent endpoint is {AGENT_PATH}\n"
    )));
    *refusal.status_mut() = StatusCode::NOT_FOUND;
    Err(refusal)
}

async fn run_connection(
    accepted: Accepted,
    acceptor: TlsAcceptor,
    state: Agents,
    hub: Arc<AgentHub>,
    stop: watch::Receiver<bool>,
    refusals: Arc<SharedRepeatedLog>,
) {
    let Accepted {
        socket,
        peer,
        slot: _slot,
        limits,
    } = accepted;
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(socket)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => return log_tls_failure(peer, &err, &refusals),
        Err(_) => {
            tracing::debug!(%peer, "agent tls handshake timed out");
            return;
        }
    };
    let identity = match tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
    {
        Some(cert) => peer_identity(cert.as_ref()),
        None => Err("no client certificate".to_owned()),
    };
    let identity = match identity {
        Ok(identity) => identity,
        Err(reason) => {
            if let Some(repeated) = refusals.due() {
                tracing::info!(%peer, %reason, repeated, "agent refused: unusable client certificate");
            }
            return;
        }
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
        .read_buffer_size(READ_BUFFER_BYTES);
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(tls, check_path, Some(config));
    let ws = match tokio::time::timeout(limits.header_timeout, upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(err)) => {
            if let Some(repeated) = refusals.due() {
                tracing::info!(%peer, entity = %identity.name, error = %err, repeated, "agent websocket upgrade failed");
            }
            return;
        }
        Err(_) => {
            if let Some(repeated) = refusals.due() {
                tracing::info!(%peer, entity = %identity.name, repeated, "agent websocket upgrade timed out");
            }
            return;
        }
    };
    let mut conn = Conn { ws, peer };
    let Some((namespace, hello, record)) = conn.hello(&state, &identity).await else {
        return;
    };
    let registered = match upsert_entity(&state, &namespace, &hello).await {
        Ok((entity, created)) => {
            if created {
                submit_registration(&state, &namespace, &entity);
            }
            entity
        }
        Err(EntityFailure::Invalid(reason)) => {
            conn.refuse(&identity.name, &reason).await;
            return;
        }
        Err(EntityFailure::Store(detail)) => {
            tracing::error!(%peer, namespace, entity = %identity.name, error = %detail, "cannot store the agent's entity");
            conn.close(CloseCode::Again, "backend error; try again later")
                .await;
            return;
        }
    };
    // The scheduler sends this session the checks of the stored entity's subscriptions (the
    // hello's, unless the API changed a backend-managed entity's).
    let effective = Hello {
        subscriptions: registered.subscriptions.clone(),
        ..hello.clone()
    };
    let (session, queue) = hub.sessions().register(&namespace, &effective, true);
    let stopped = hub.attach(&session, identity.issued_at(), &identity.fingerprint);
    // The revocation view is updated before it drops sessions; checking it after registering
    // means a revocation arriving meanwhile is seen by one side or the other.
    if state.revocations.revokes(
        &namespace,
        &identity.name,
        identity.issued_at(),
        &identity.fingerprint,
    ) {
        hub.detach(&session);
        conn.refuse(&identity.name, REASON_REVOKED).await;
        return;
    }
    hub.last_seen_due(&session.id, Instant::now());
    tracing::info!(
        %peer,
        namespace,
        entity = %identity.name,
        agent_version = %hello.agent_version,
        "agent connected"
    );
    let welcome = BackendMessage::Welcome {
        entity: identity.name.clone(),
    };
    // Then, through the session's queue (written after the welcome), the stored entity's
    // subscriptions, labels and annotations, for a backend-managed entity.
    if let Some(meta) = registered.metadata.as_ref() {
        if let Some(config) = entity::entity_config(meta, &registered) {
            hub.sessions().push_entity_config(&session.id, config);
        }
    }
    let reason = match conn.send(&welcome).await {
        Ok(()) => {
            let mut agent = AgentSession {
                state,
                hub: Arc::clone(&hub),
                session: session.clone(),
                namespace: namespace.clone(),
                registered,
                issued_at: identity.issued_at(),
                fingerprint: identity.fingerprint.clone(),
                recorded: record.map(|record| record.fingerprint),
                last_renewal: None,
            };
            agent.run(&mut conn, queue, stopped, stop).await
        }
        Err(err) => err,
    };
    hub.detach(&session);
    tracing::info!(%peer, namespace, entity = %identity.name, %reason, "agent disconnected");
}

/// Why the entity could not be upserted.
enum EntityFailure {
    /// The hello describes an invalid entity: refuse the session.
    Invalid(String),
    /// The store failed: close and let the agent retry.
    Store(String),
}

/// Creates or updates the agent's entity from its hello; returns it as events embed it.
async fn upsert_entity(
    state: &Agents,
    namespace: &str,
    hello: &Hello,
) -> Result<(Entity, bool), EntityFailure> {
    const ATTEMPTS: usize = 4;
    for _ in 0..ATTEMPTS {
        let existing = state
            .resources
            .get(Kind::Entity, namespace, &hello.name)
            .await
            .map_err(|err| EntityFailure::Store(err.to_string()))?;
        let (previous, precondition) = match &existing {
            Some(stored) => (
                match &stored.resource.spec {
                    Spec::Entity(entity) => Some((&stored.resource.metadata, entity)),
                    _ => None,
                },
                Precondition::Revision(stored.revision),
            ),
            None => (None, Precondition::Absent),
        };
        let resource = agent_entity(namespace, hello, previous, unix_now());
        if let Some(issue) = cairn_api::validate::validate(&resource)
            .into_iter()
            .find(|issue| issue.is_error())
        {
            return Err(EntityFailure::Invalid(format!(
                "the agent's entity is invalid: {issue}"
            )));
        }
        match state.resources.put(&resource, precondition).await {
            Ok(_) => return Ok((embedded(&resource), precondition == Precondition::Absent)),
            Err(ResourceError::Store(StoreError::PreconditionFailed { .. })) => {
                tracing::debug!(namespace, entity = %hello.name, "entity changed while upserting; retrying");
            }
            Err(err) => return Err(EntityFailure::Store(err.to_string())),
        }
    }
    Err(EntityFailure::Store(format!(
        "entity {namespace}/{} kept changing under {ATTEMPTS} attempts to update it",
        hello.name
    )))
}

/// The name of the check of a registration event, and of the handler it names.
pub(crate) const REGISTRATION: &str = "registration";

/// Hands the pipeline Sensu's registration event for an agent entity seen for the first time:
/// check `registration`, status 1, interval 1, handler `registration` (which need not exist).
/// Like Sensu's, it is not stored: it only reaches the handlers.
fn submit_registration(state: &Agents, namespace: &str, entity: &Entity) {
    if entity.entity_class != "agent" {
        return;
    }
    let now = unix_now();
    let event = Event {
        entity: Some(entity.clone()),
        check: Some(cairn_api::model::Check {
            metadata: Some(ObjectMeta::named(namespace, REGISTRATION)),
            interval: 1,
            status: 1,
            handlers: vec![REGISTRATION.to_owned()],
            executed: now,
            ..cairn_api::model::Check::default()
        }),
        ..Event::default()
    };
    match crate::events::rules::process_event(None, event, now) {
        Ok(event) => state.ingest.sink.submit(namespace, event),
        Err(err) => tracing::warn!(error = %err, "registration event refused"),
    }
}

/// The id of the stored latest event at `key`, reading nothing else of it.
async fn stored_event_id(state: &Agents, key: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Document {
        #[serde(default)]
        spec: IdOnly,
    }
    #[derive(Default, Deserialize)]
    struct IdOnly {
        #[serde(default)]
        id: String,
    }
    match state.resources.store().get(key).await {
        Ok(entry) => entry
            .and_then(|entry| serde_json::from_slice::<Document>(&entry.value).ok())
            .map(|document| document.spec.id),
        Err(err) => {
            tracing::warn!(key, error = %err, "cannot read the stored event for duplicate detection");
            None
        }
    }
}

// ------------------------------------------------------------------------------------------
// One connection
// ------------------------------------------------------------------------------------------

/// The WebSocket of one agent and its peer address.
struct Conn {
    ws: AgentSocket,
    peer: SocketAddr,
}

/// Why no hello came.
enum HelloFailure {
    /// Refuse with this reason.
    Refuse(String),
    /// The connection is gone; nothing to send.
    Gone(String),
}

impl Conn {
    /// Reads and checks the hello; on any problem refuses (or notes that the agent left) and
    /// returns `None`.
    async fn hello(
        &mut self,
        state: &Agents,
        identity: &PeerIdentity,
    ) -> Option<(String, Hello, Option<CertRecord>)> {
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, self.read_hello()).await {
            Ok(Ok(hello)) => hello,
            Ok(Err(HelloFailure::Refuse(reason))) => {
                self.refuse(&identity.name, &reason).await;
                return None;
            }
            Ok(Err(HelloFailure::Gone(reason))) => {
                tracing::info!(peer = %self.peer, entity = %identity.name, %reason, "agent left before its hello");
                return None;
            }
            Err(_) => {
                let reason = format!("no hello within {} s", HELLO_TIMEOUT.as_secs());
                self.refuse(&identity.name, &reason).await;
                return None;
            }
        };
        let checked = identity
            .namespace
            .clone()
            .and_then(|namespace| check_hello(&hello, &identity.name, &namespace));
        let namespace = match checked {
            Ok(namespace) => namespace,
            Err(reason) => {
                self.refuse(&identity.name, &reason).await;
                return None;
            }
        };
        if !state.auth.snapshot().has_namespace(&namespace) {
            let reason = format!("namespace \"{namespace}\" does not exist");
            self.refuse(&identity.name, &reason).await;
            return None;
        }
        if state.revocations.revokes(
            &namespace,
            &identity.name,
            identity.issued_at(),
            &identity.fingerprint,
        ) {
            self.refuse(&identity.name, REASON_REVOKED).await;
            return None;
        }
        let store = state.resources.store().as_ref();
        let record = match join::load_cert_record(store, &namespace, &identity.name).await {
            Ok(record) => record.map(|(record, _)| record),
            Err(err) => {
                tracing::error!(peer = %self.peer, namespace, entity = %identity.name, error = %err, "cannot read the agent's certificate record");
                self.close(CloseCode::Again, "backend error; try again later")
                    .await;
                return None;
            }
        };
        if let Some(pinned) = record
            .as_ref()
            .and_then(|record| record.pinned_subscriptions.as_deref())
        {
            if let Err(reason) = check_pinned(&hello, pinned) {
                self.refuse(&identity.name, &reason).await;
                return None;
            }
        }
        Some((namespace, with_defaults(hello), record))
    }

    async fn read_hello(&mut self) -> Result<Hello, HelloFailure> {
        loop {
            let frame = match self.ws.next().await {
                None => return Err(HelloFailure::Gone("connection closed".to_owned())),
                Some(Err(err)) => {
                    return Err(HelloFailure::Gone(format!("connection error: {err}")))
                }
                Some(Ok(frame)) => frame,
            };
            match frame {
                Message::Text(text) => {
                    return match serde_json::from_str::<AgentMessage>(text.as_str()) {
                        Ok(AgentMessage::Hello(hello)) => Ok(*hello),
                        Ok(other) => Err(HelloFailure::Refuse(format!(
                            "the first message must be a hello, not a {}",
                            message_type(&other)
                        ))),
                        Err(err) => Err(HelloFailure::Refuse(format!(
                            "the first message is not a valid hello: {err}"
                        ))),
                    }
                }
                Message::Binary(_) => {
                    return Err(HelloFailure::Refuse(
                        "the first message must be a hello in a JSON text frame".to_owned(),
                    ))
                }
                // tungstenite queued the pong; flushing sends it.
                Message::Ping(_) => {
                    let _ = self.ws.flush().await;
                }
                Message::Pong(_) | Message::Frame(_) => {}
                Message::Close(_) => {
                    let _ = self.ws.flush().await;
                    return Err(HelloFailure::Gone("closed by the agent".to_owned()));
                }
            }
        }
    }

    async fn send(&mut self, message: &BackendMessage) -> Result<(), String> {
        let text = serde_json::to_string(message)
            .map_err(|err| format!("cannot encode a message: {err}"))?;
        self.send_frame(Message::text(text)).await
    }

    async fn send_frame(&mut self, frame: Message) -> Result<(), String> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.ws.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(format!("cannot write to the agent: {err}")),
            Err(_) => Err(format!(
                "the agent did not read for {} s",
                WRITE_TIMEOUT.as_secs()
            )),
        }
    }

    /// Sends a fatal refusal and closes.
    async fn refuse(&mut self, entity: &str, reason: &str) {
        tracing::info!(peer = %self.peer, entity, reason, "agent session refused");
        let refusal = BackendMessage::Refused {
            reason: reason.to_owned(),
            fatal: true,
        };
        if self.send(&refusal).await.is_ok() {
            self.close(CloseCode::Policy, reason).await;
        }
    }

    /// Sends a close frame and waits (briefly) for the agent's, so that it reads everything
    /// sent before the socket goes.
    async fn close(&mut self, code: CloseCode, reason: &str) {
        let mut end = MAX_CLOSE_REASON.min(reason.len());
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let frame = CloseFrame {
            code,
            reason: reason[..end].into(),
        };
        let closing = async {
            if self.ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }
}

/// A registered session and what its messages need.
struct AgentSession {
    state: Agents,
    hub: Arc<AgentHub>,
    session: Session,
    namespace: String,
    /// The entity as registered at the hello, with metadata: what events fall back on.
    registered: Entity,
    /// The session certificate's issue time and fingerprint.
    issued_at: i64,
    fingerprint: String,
    /// The fingerprint of the entity's recorded certificate as this session last knew it
    /// (`None` when it had no record, as certificates minted outside bootstrap).
    recorded: Option<String>,
    last_renewal: Option<Instant>,
}

impl AgentSession {
    fn name(&self) -> &str {
        &self.session.id.name
    }

    /// Serves the session until it ends; returns why.
    async fn run(
        &mut self,
        conn: &mut Conn,
        mut queue: mpsc::Receiver<BackendMessage>,
        mut stopped: oneshot::Receiver<String>,
        mut shutdown: watch::Receiver<bool>,
    ) -> String {
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                frame = conn.ws.next() => {
                    let frame = match frame {
                        None => return "connection closed".to_owned(),
                        Some(Err(err)) => return format!("connection error: {err}"),
                        Some(Ok(frame)) => frame,
                    };
                    last_heard = Instant::now();
                    let replies = match frame {
                        Message::Text(text) => self.handle(text.as_str()).await,
                        Message::Binary(_) => vec![refused(
                            "binary frames are not part of the agent protocol; send JSON text frames",
                        )],
                        Message::Ping(_) => {
                            // tungstenite queued the pong; flushing sends it.
                            if let Err(err) = conn.ws.flush().await {
                                return format!("cannot answer a ping: {err}");
                            }
                            Vec::new()
                        }
                        Message::Pong(_) | Message::Frame(_) => Vec::new(),
                        Message::Close(_) => {
                            // tungstenite queued the close reply; flushing sends it.
                            let _ = conn.ws.flush().await;
                            return "closed by the agent".to_owned();
                        }
                    };
                    for reply in replies {
                        if let Some(reason) = Self::deliver(conn, &reply).await {
                            return reason;
                        }
                    }
                }
                queued = queue.recv() => {
                    let Some(message) = queued else {
                        return "session queue closed".to_owned();
                    };
                    if let Some(reason) = Self::deliver(conn, &message).await {
                        return reason;
                    }
                }
                reason = &mut stopped => {
                    let reason = reason.unwrap_or_else(|_| "session ended".to_owned());
                    conn.refuse(self.name(), &reason).await;
                    return reason;
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > IDLE_TIMEOUT {
                        conn.close(CloseCode::Away, "nothing heard from the agent").await;
                        return format!("nothing heard for {} s", IDLE_TIMEOUT.as_secs());
                    }
                    if let Err(err) = conn.send_frame(Message::Ping(Default::default())).await {
                        return err;
                    }
                }
                () = crate::shutdown::requested(&mut shutdown) => {
                    conn.close(CloseCode::Restart, "backend shutting down").await;
                    return "backend shutting down".to_owned();
                }
            }
        }
    }

    /// Writes one message; after a fatal refusal closes the socket. Returns why the session
    /// ends, if it does.
    async fn deliver(conn: &mut Conn, message: &BackendMessage) -> Option<String> {
        if let Err(err) = conn.send(message).await {
            return Some(err);
        }
        if let BackendMessage::Refused {
            reason,
            fatal: true,
        } = message
        {
            conn.close(CloseCode::Policy, reason).await;
            return Some(reason.clone());
        }
        None
    }

    /// Handles one text frame; returns the replies.
    async fn handle(&mut self, text: &str) -> Vec<BackendMessage> {
        let message: AgentMessage = match serde_json::from_str(text) {
            Ok(message) => message,
            Err(err) => return vec![refused(format!("message not understood: {err}"))],
        };
        match message {
            AgentMessage::Hello(_) => vec![refused(
                "the session is already open; a hello is only the first message",
            )],
            AgentMessage::Event { id, event } => self.on_event(id, *event).await,
            AgentMessage::Keepalive { .. } => {
                self.on_keepalive().await;
                Vec::new()
            }
            AgentMessage::RenewCertificate { csr_pem } => self.on_renew(&csr_pem).await,
        }
    }

    async fn on_event(&mut self, id: String, event: Event) -> Vec<BackendMessage> {
        if let Some(problem) = event_id_problem(&id) {
            return vec![refused(format!("event refused: {problem}"))];
        }
        let entity_id = self.session.id.clone();
        if self.hub.was_acked(&entity_id, &id) {
            tracing::debug!(entity = %entity_id.name, event_id = %id, "duplicate event acknowledged again");
            return vec![BackendMessage::Ack { id }];
        }
        let prepared = match prepare_event(event, &self.registered, &self.namespace, &id) {
            Ok((name, event)) if names_proxy(&event) => {
                super::proxy::onto_proxy(&self.state.resources, &self.namespace, self.name(), event)
                    .await
                    .map_err(|reason| format!("{name}: {reason}"))
            }
            other => other,
        };
        let (event_name, event) = match prepared {
            Ok(prepared) => prepared,
            Err(reason) => {
                tracing::info!(entity = %entity_id.name, event_id = %id, %reason, "agent event refused");
                return vec![
                    refused(format!("event {id} refused: {reason}")),
                    BackendMessage::Ack { id },
                ];
            }
        };
        if !event.id.is_empty() {
            let key = Resources::key(Kind::Event, &self.namespace, &event_name);
            if stored_event_id(&self.state, &key).await.as_deref() == Some(event.id.as_str()) {
                tracing::debug!(entity = %entity_id.name, event_id = %id, "event already stored; acknowledged again");
                self.hub.remember_ack(&entity_id, &id);
                return vec![BackendMessage::Ack { id }];
            }
        }
        let created_by = format!("agent/{}", self.name());
        match self
            .state
            .ingest
            .ingest(&self.namespace, &event_name, event, &created_by)
            .await
        {
            Ok(()) => {
                self.hub.remember_ack(&entity_id, &id);
                vec![BackendMessage::Ack { id }]
            }
            Err(err) if err.is_permanent() => {
                tracing::info!(entity = %entity_id.name, event_id = %id, reason = %err, "agent event refused");
                vec![
                    refused(format!("event {id} refused: {err}")),
                    BackendMessage::Ack { id },
                ]
            }
            Err(err) => {
                tracing::warn!(entity = %entity_id.name, event_id = %id, error = %err, "agent event not stored");
                vec![refused(format!(
                    "event {id} was not stored because of a backend error; keep it and send it again"
                ))]
            }
        }
    }

    async fn on_keepalive(&mut self) {
        self.hub.sessions().keepalive(&self.session.id);
        if self.hub.last_seen_due(&self.session.id, Instant::now()) {
            self.touch_last_seen().await;
        }
    }

    /// Writes the entity's `last_seen`; recreates the entity if it was deleted meanwhile.
    async fn touch_last_seen(&self) {
        let now = unix_now();
        let (namespace, name) = (&self.namespace, self.name());
        let resources = &self.state.resources;
        let write = match resources.get(Kind::Entity, namespace, name).await {
            Ok(Some(stored)) => {
                let Spec::Entity(mut entity) = stored.resource.spec else {
                    tracing::warn!(namespace, entity = name, "an entity key holds another kind");
                    return;
                };
                entity.last_seen = now;
                let resource = Resource::new(stored.resource.metadata, Spec::Entity(entity));
                resources
                    .put(&resource, Precondition::Revision(stored.revision))
                    .await
            }
            Ok(None) => {
                let mut entity = self.registered.clone();
                let metadata = entity.metadata.take().unwrap_or_default();
                entity.last_seen = now;
                tracing::info!(
                    namespace,
                    entity = name,
                    "entity of a connected agent recreated"
                );
                let resource = Resource::new(metadata, Spec::Entity(entity));
                resources.put(&resource, Precondition::Absent).await
            }
            Err(err) => Err(err),
        };
        match write {
            Ok(_) => {}
            // Someone else wrote it; the next keepalive's turn writes it again.
            Err(ResourceError::Store(StoreError::PreconditionFailed { .. })) => {}
            Err(err) => {
                tracing::warn!(namespace, entity = name, error = %err, "cannot update last_seen")
            }
        }
    }

    async fn on_renew(&mut self, csr_pem: &str) -> Vec<BackendMessage> {
        let name = self.name().to_owned();
        let namespace = self.namespace.clone();
        let revoked = || {
            vec![BackendMessage::Refused {
                reason: REASON_REVOKED.to_owned(),
                fatal: true,
            }]
        };
        let backend_error = |what: &str, err: &dyn std::fmt::Display| {
            tracing::warn!(namespace = %namespace, entity = %name, error = %err, "certificate renewal failed: {what}");
            vec![refused(
                "certificate renewal refused: backend error; try again later",
            )]
        };
        if self
            .state
            .revocations
            .revokes(&namespace, &name, self.issued_at, &self.fingerprint)
        {
            return revoked();
        }
        if self
            .last_renewal
            .is_some_and(|at| at.elapsed() < RENEWAL_MIN_INTERVAL)
        {
            return vec![refused(format!(
                "certificate renewal refused: at most one renewal every {} s",
                RENEWAL_MIN_INTERVAL.as_secs()
            ))];
        }
        let store = self.state.resources.store().as_ref();
        let previous = match join::load_cert_record(store, &namespace, &name).await {
            Ok(previous) => previous,
            Err(err) => return backend_error("cannot read the certificate record", &err),
        };
        if let Some((record, _)) = &previous {
            let ours = record.fingerprint == self.fingerprint
                || self.recorded.as_deref() == Some(record.fingerprint.as_str());
            if !ours {
                tracing::info!(namespace = %namespace, entity = %name, "certificate renewal refused: the entity was enrolled again");
                return vec![refused(format!(
                    "certificate renewal refused: this certificate is no longer the current one of {namespace}/{name} (the entity was enrolled again); re-enrol the agent with a new join token"
                ))];
            }
        }
        // No waiting past a revocation here: a renewal is never newer than a revocation of the
        // certificate it renews.
        let issued = match self.state.agent_pki.sign(csr_pem, &namespace, &name) {
            Ok(issued) => issued,
            Err(err) => {
                let reason = join::describe_pki_error(&err);
                tracing::info!(namespace = %namespace, entity = %name, %reason, "certificate renewal refused");
                return vec![refused(format!("certificate renewal refused: {reason}"))];
            }
        };
        let (token_id, pinned) = previous
            .as_ref()
            .map_or((String::new(), None), |(record, _)| {
                (record.token_id.clone(), record.pinned_subscriptions.clone())
            });
        let record = issued.record(&token_id, pinned);
        let written =
            match join::put_cert_record(store, &namespace, &name, &record, &previous).await {
                Ok(written) => written,
                Err(StoreError::PreconditionFailed { .. }) => {
                    return vec![refused(
                "certificate renewal refused: the certificate record changed meanwhile; try again",
            )]
                }
                Err(err) => return backend_error("cannot write the certificate record", &err),
            };
        // A revocation stored before or while this signed is in the store now (the revocation
        // reads the record after storing itself, so it names this certificate otherwise).
        let revocation = match join::load_revocation(store, &namespace, &name).await {
            Ok(revocation) => revocation,
            Err(err) => {
                join::restore_cert_record(store, &namespace, &name, previous.as_ref(), written)
                    .await;
                return backend_error("cannot read the revocations", &err);
            }
        };
        if revocation.is_some_and(|revocation| {
            revocation.refuses(self.issued_at, &self.fingerprint)
                || revocation.refuses(record.issued_at, &record.fingerprint)
        }) {
            join::restore_cert_record(store, &namespace, &name, previous.as_ref(), written).await;
            tracing::info!(namespace = %namespace, entity = %name, "certificate renewal refused: revoked while signing");
            return revoked();
        }
        self.last_renewal = Some(Instant::now());
        self.recorded = Some(record.fingerprint);
        tracing::info!(namespace = %namespace, entity = %name, serial = %record.serial, "agent certificate renewed");
        vec![BackendMessage::Certificate {
            cert_pem: issued.cert_pem,
        }]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cairn_api::model::{Check, System};

    use super::*;

    fn hello(name: &str) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            name: name.to_owned(),
            subscriptions: vec!["linux".into()],
            ..Hello::default()
        }
    }

    fn der(pem: &str) -> Vec<u8> {
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn the_certificate_names_entity_and_namespace() {
        let ca = crate::pki::generate_ca("agent CA").unwrap();
        let client =
            crate::pki::issue_agent_cert(&ca, "dev", "web-01", Duration::from_secs(3600)).unwrap();
        let identity = peer_identity(&der(&client.cert_pem)).unwrap();
        assert_eq!(identity.name, "web-01");
        assert_eq!(identity.namespace, Ok("dev".to_owned()));
        assert_eq!(
            identity.fingerprint,
            crate::pki::fingerprint_sha256(&client.cert_pem).unwrap()
        );
        assert_eq!(identity.serial.len(), 32, "{identity:?}");
        let now = unix_now();
        assert!(
            (identity.issued_at() - now).abs() <= 2,
            "{identity:?} {now}"
        );
        assert!(peer_identity(b"not a certificate")
            .unwrap_err()
            .starts_with("the client certificate does not parse"));

        // A certificate of before namespaces were bound: told to re-enrol.
        let old = crate::pki::issue_client_cert(&ca, "web-01", Duration::from_secs(3600)).unwrap();
        let identity = peer_identity(&der(&old.cert_pem)).unwrap();
        assert_eq!(identity.namespace, Err(REASON_REENROL.to_owned()));
        assert!(REASON_REENROL.contains("re-enrol"));

        assert_eq!(
            certificate_namespace(&["cairn:agent:prod/db"], "web-01").unwrap_err(),
            "the client certificate's agent URI names entity \"db\" but its common name is \"web-01\""
        );
        assert!(
            certificate_namespace(&["cairn:agent:a/web", "cairn:agent:b/web"], "web")
                .unwrap_err()
                .contains("more than one")
        );
        assert!(certificate_namespace(&["cairn:agent:web"], "web")
            .unwrap_err()
            .contains("malformed"));
        assert!(certificate_namespace(&["cairn:agent:a b/web"], "web")
            .unwrap_err()
            .contains("namespace is invalid"));
    }

    use rustls::pki_types::pem::PemObject;

    #[test]
    fn hellos_are_checked_against_the_certificate() {
        assert_eq!(
            check_hello(&hello("web"), "web", "dev"),
            Ok("dev".to_owned()),
            "an empty namespace is the certificate's"
        );
        let mut same_namespace = hello("web");
        same_namespace.namespace = "dev".into();
        assert_eq!(
            check_hello(&same_namespace, "web", "dev"),
            Ok("dev".to_owned())
        );
        let mut other_namespace = hello("web");
        other_namespace.namespace = "prod".into();
        assert_eq!(
            check_hello(&other_namespace, "web", "dev").unwrap_err(),
            "the hello names namespace \"prod\" but the certificate is for namespace \"dev\""
        );
        let mut old = hello("web");
        old.protocol = 0;
        assert!(check_hello(&old, "web", "default")
            .unwrap_err()
            .starts_with("protocol version 0 is not supported"));
        assert_eq!(
            check_hello(&hello("db"), "web", "default").unwrap_err(),
            "the hello names entity \"db\" but the certificate is for \"web\""
        );
        assert!(check_hello(&hello("bad name"), "bad name", "default")
            .unwrap_err()
            .starts_with("invalid entity name"));
        let mut bad_subscription = hello("web");
        bad_subscription.subscriptions = vec!["ok".into(), "".into()];
        assert!(check_hello(&bad_subscription, "web", "default")
            .unwrap_err()
            .starts_with("invalid subscription 1"));
    }

    #[test]
    fn pinned_subscriptions_allow_only_themselves_and_the_entity() {
        let mut greeting = hello("web");
        greeting.subscriptions = vec!["linux".into(), "entity:web".into()];
        assert_eq!(check_pinned(&greeting, &["linux".into()]), Ok(()));
        greeting.subscriptions.push("prod-db".into());
        let reason = check_pinned(&greeting, &["linux".into(), "web".into()]).unwrap_err();
        assert!(
            reason.starts_with("subscription \"prod-db\" is not allowed")
                && reason.contains("[linux, web]"),
            "{reason}"
        );
        greeting.subscriptions = vec!["entity:db".into()];
        assert!(check_pinned(&greeting, &[]).is_err());
    }

    #[test]
    fn the_entity_comes_from_the_hello_and_keeps_operator_fields() {
        let mut greeting = hello("web");
        greeting.subscriptions = vec!["linux".into(), "linux".into()];
        greeting.labels = BTreeMap::from([("team".to_owned(), "ops".to_owned())]);
        greeting.system = System {
            hostname: "web.example".into(),
            ..System::default()
        };
        greeting.agent_version = "0.1.0".into();
        greeting.deregister = true;
        let resource = agent_entity("default", &greeting, None, 42);
        assert_eq!(resource.metadata.created_by, "agent/web");
        assert_eq!(resource.metadata.labels["team"], "ops");
        let Spec::Entity(entity) = &resource.spec else {
            panic!("not an entity");
        };
        assert_eq!(entity.entity_class, "agent");
        assert_eq!(entity.subscriptions, ["linux", "entity:web"]);
        assert_eq!(entity.last_seen, 42);
        assert!(entity.deregister);
        assert_eq!(entity.sensu_agent_version, "0.1.0");
        assert_eq!(entity.system.as_ref().unwrap().hostname, "web.example");
        assert!(cairn_api::validate::validate(&resource)
            .iter()
            .all(|issue| !issue.is_error()));

        let mut existing = entity.clone();
        existing.keepalive_handlers = vec!["pager".into()];
        existing.redact = vec!["secret".into()];
        let mut existing_meta = ObjectMeta::named("default", "web");
        existing_meta.created_by = "admin".into();
        let again = agent_entity("default", &greeting, Some((&existing_meta, &existing)), 50);
        let Spec::Entity(again_entity) = &again.spec else {
            panic!("not an entity");
        };
        assert_eq!(again.metadata.created_by, "admin");
        assert_eq!(again_entity.keepalive_handlers, ["pager"]);
        assert_eq!(again_entity.redact, ["secret"]);
        assert_eq!(again_entity.last_seen, 50);
    }

    #[test]
    fn the_api_owns_a_backend_managed_entity_and_the_agent_an_agent_managed_one() {
        let mut greeting = hello("web");
        greeting.subscriptions = vec!["linux".into()];
        greeting.labels = BTreeMap::from([("team".to_owned(), "ops".to_owned())]);
        // Changed through the API since the entity was created.
        let mut stored_meta = ObjectMeta::named("default", "web");
        stored_meta.labels = BTreeMap::from([("tier".to_owned(), "front".to_owned())]);
        let stored = Entity {
            entity_class: "agent".into(),
            subscriptions: vec!["web".into()],
            ..Entity::default()
        };
        let subscriptions = |resource: &Resource| match &resource.spec {
            Spec::Entity(entity) => entity.subscriptions.clone(),
            _ => panic!("not an entity"),
        };
        let kept = agent_entity("default", &greeting, Some((&stored_meta, &stored)), 50);
        assert_eq!(subscriptions(&kept), ["web", "entity:web"]);
        assert_eq!(kept.metadata.labels, stored_meta.labels);

        greeting.agent_managed = true;
        let replaced = agent_entity("default", &greeting, Some((&stored_meta, &stored)), 50);
        assert_eq!(subscriptions(&replaced), ["linux", "entity:web"]);
        assert_eq!(replaced.metadata.labels["team"], "ops");
        assert!(entity::agent_managed(&replaced.metadata));
        assert!(!replaced.metadata.labels.contains_key("tier"));

        // Turned off again: the backend owns what the agent last set, without the mark.
        greeting.agent_managed = false;
        let Spec::Entity(managed) = &replaced.spec else {
            panic!("not an entity");
        };
        let back = agent_entity(
            "default",
            &greeting,
            Some((&replaced.metadata, managed)),
            60,
        );
        assert!(!entity::agent_managed(&back.metadata));
        assert_eq!(back.metadata.labels["team"], "ops");
    }

    #[test]
    fn keepalive_and_deregistration_handlers_from_the_hello_win_when_set() {
        let existing = Entity {
            keepalive_handlers: vec!["pager".into()],
            deregistration: Some(cairn_api::model::Deregistration {
                handler: "operator-cleanup".into(),
            }),
            ..Entity::default()
        };
        let meta = ObjectMeta::named("default", "web");
        let handlers = |resource: &Resource| match &resource.spec {
            Spec::Entity(entity) => (
                entity.keepalive_handlers.clone(),
                entity
                    .deregistration
                    .as_ref()
                    .map(|deregistration| deregistration.handler.clone()),
            ),
            _ => panic!("not an entity"),
        };
        // The hello names none: the operator's stay.
        let kept = agent_entity("default", &hello("web"), Some((&meta, &existing)), 1);
        assert_eq!(
            handlers(&kept),
            (
                vec!["pager".to_owned()],
                Some("operator-cleanup".to_owned())
            )
        );
        // The hello names them: they replace the operator's.
        let mut greeting = hello("web");
        greeting.keepalive_handlers = vec!["slack".into(), "pager".into()];
        greeting.deregistration_handler = "cleanup".into();
        let set = agent_entity("default", &greeting, Some((&meta, &existing)), 1);
        assert_eq!(
            handlers(&set),
            (
                vec!["slack".to_owned(), "pager".to_owned()],
                Some("cleanup".to_owned())
            )
        );
        let fresh = agent_entity("default", &greeting, None, 1);
        assert_eq!(handlers(&fresh).1, Some("cleanup".to_owned()));
        assert!(cairn_api::validate::validate(&fresh)
            .iter()
            .all(|issue| !issue.is_error()));
    }

    #[tokio::test]
    async fn the_first_connection_of_an_agent_raises_a_registration_event_only() {
        let dir = tempfile::tempdir().unwrap();
        let (state, sink) = crate::agents::scheduler::tests::test_state(dir.path()).await;
        for _ in 0..2 {
            let Ok((entity, created)) = upsert_entity(&state, "default", &hello("web")).await
            else {
                panic!("the entity could not be stored");
            };
            if created {
                submit_registration(&state, "default", &entity);
            }
        }
        let submitted = sink.0.lock();
        assert_eq!(
            submitted.len(),
            1,
            "the second connection registers nothing"
        );
        let check = submitted[0].1.check.as_ref().unwrap();
        assert_eq!(check.metadata.as_ref().unwrap().name, "registration");
        assert_eq!(check.handlers, ["registration"]);
        assert_eq!((check.status, check.interval), (1, 1));
    }

    fn registered() -> Entity {
        let mut greeting = hello("web");
        greeting.agent_version = "0.1.0".into();
        embedded(&agent_entity("prod", &greeting, None, 42))
    }

    fn check_event(check: &str) -> Event {
        Event {
            check: Some(Check {
                metadata: Some(ObjectMeta::named("", check)),
                status: 1,
                ..Check::default()
            }),
            ..Event::default()
        }
    }

    #[test]
    fn events_are_made_the_sessions_own() {
        let registered = registered();
        let id = "0b9b4a58-4c1b-4c4f-a5e7-2d0d2f5f5e11";

        // No entity: the registered one.
        let (name, event) = prepare_event(check_event("cpu"), &registered, "prod", id).unwrap();
        assert_eq!(name, "web/cpu");
        assert_eq!(event.id, id);
        let entity = event.entity.as_ref().unwrap();
        assert_eq!(entity.metadata.as_ref().unwrap().name, "web");
        assert_eq!(entity.metadata.as_ref().unwrap().created_by, "agent/web");
        assert_eq!(entity.entity_class, "agent");
        let check_meta = event.check.as_ref().unwrap().metadata.as_ref().unwrap();
        assert_eq!(check_meta.namespace, "prod");
        assert_eq!(check_meta.created_by, "agent/web");

        // Another entity's name and namespace are overridden; its own fields are kept.
        let mut spoofed = check_event("cpu");
        spoofed.entity = Some(Entity {
            metadata: Some(ObjectMeta::named("default", "db")),
            entity_class: "proxy".into(),
            ..Entity::default()
        });
        let (name, event) = prepare_event(spoofed, &registered, "prod", "not-a-uuid").unwrap();
        assert_eq!(name, "web/cpu");
        assert!(
            event.id.is_empty(),
            "a non-UUID message id is not an event id"
        );
        let entity = event.entity.as_ref().unwrap();
        let meta = entity.metadata.as_ref().unwrap();
        assert_eq!(
            (meta.namespace.as_str(), meta.name.as_str()),
            ("prod", "web")
        );
        assert_eq!(entity.entity_class, "proxy");
        assert_eq!(entity.subscriptions, registered.subscriptions);
        assert_eq!(entity.sensu_agent_version, "0.1.0");

        // Metrics only.
        let metrics = Event {
            metrics: Some(serde_json::json!({"points": []})),
            ..Event::default()
        };
        assert_eq!(
            prepare_event(metrics, &registered, "prod", id).unwrap().0,
            "web/metrics"
        );

        // Neither, or an unnamed check.
        assert_eq!(
            prepare_event(Event::default(), &registered, "prod", id).unwrap_err(),
            "an event needs a check or metrics"
        );
        assert!(prepare_event(check_event(""), &registered, "prod", id)
            .unwrap_err()
            .starts_with("check.metadata.name"));
    }

    #[test]
    fn acked_ids_are_remembered_per_entity_and_bounded() {
        let hub = AgentHub::new(Sessions::new());
        let web = EntityId::new("default", "web");
        let db = EntityId::new("default", "db");
        hub.remember_ack(&web, "e-0");
        assert!(hub.was_acked(&web, "e-0"));
        assert!(!hub.was_acked(&db, "e-0"));
        for idx in 1..=ACKED_IDS_KEPT {
            hub.remember_ack(&web, &format!("e-{idx}"));
        }
        assert!(!hub.was_acked(&web, "e-0"), "the oldest is forgotten");
        assert!(hub.was_acked(&web, "e-1"));
        assert!(hub.was_acked(&web, &format!("e-{ACKED_IDS_KEPT}")));
        assert_eq!(hub.memory.lock()[&web].acked.len(), ACKED_IDS_KEPT);

        let now = Instant::now();
        assert!(hub.last_seen_due(&web, now));
        assert!(!hub.last_seen_due(&web, now + Duration::from_secs(59)));
        assert!(hub.last_seen_due(&web, now + LAST_SEEN_WRITE_INTERVAL));
        assert!(event_id_problem("").is_some());
        assert!(event_id_problem(&"x".repeat(MAX_EVENT_ID_LEN + 1)).is_some());
        assert!(event_id_problem("a\nb").is_some());
        assert!(event_id_problem("0b9b4a58-4c1b-4c4f-a5e7-2d0d2f5f5e11").is_none());
    }

    #[test]
    fn revocation_drops_only_sessions_with_older_certificates() {
        let sessions = Sessions::new();
        let hub = AgentHub::new(Arc::clone(&sessions));
        let (old, mut old_queue) = sessions.register("default", &hello("old"), true);
        let mut old_stopped = hub.attach(&old, 100, "f-old");
        let (new, _new_queue) = sessions.register("default", &hello("new"), true);
        let mut new_stopped = hub.attach(&new, 300, "f-new");
        let revocation = |revoked_at| Revocation::new(revoked_at, "admin");
        hub.revoke(&old.id, &revocation(200));
        hub.revoke(&new.id, &revocation(200));
        assert!(sessions.get(&old.id).is_none());
        assert!(sessions.get(&new.id).is_some());
        assert_eq!(
            old_queue.try_recv().unwrap(),
            BackendMessage::Refused {
                reason: REASON_REVOKED.into(),
                fatal: true
            }
        );
        assert_eq!(old_stopped.try_recv().unwrap(), REASON_REVOKED);

        // A revocation naming a certificate refuses it whatever its issue time.
        let mut named = revocation(200);
        named.certificates.push(join::CertRef {
            serial: "01".into(),
            fingerprint: "f-new".into(),
        });
        hub.revoke(&new.id, &named);
        assert!(sessions.get(&new.id).is_none());
        assert_eq!(new_stopped.try_recv().unwrap(), REASON_REVOKED);

        // A newer connection of the same entity tells the older one to end.
        let (first, _first_queue) = sessions.register("default", &hello("twice"), true);
        let mut first_stopped = hub.attach(&first, 100, "f-1");
        let (second, _second_queue) = sessions.register("default", &hello("twice"), true);
        let _second_stopped = hub.attach(&second, 100, "f-2");
        assert!(first_stopped
            .try_recv()
            .unwrap()
            .starts_with("replaced by a newer session"));
        hub.detach(&first);
        assert_eq!(
            sessions.get(&second.id).map(|session| session.connection),
            Some(second.connection)
        );
        assert!(hub.live.lock().contains_key(&second.id));
    }

    /// A session of `dev/web-01` on a backend whose revocation view has not caught up (it
    /// stays empty), with its certificate recorded as bootstrap records it.
    async fn renewing_session(dir: &std::path::Path) -> (AgentSession, String, join::Issued) {
        let (mut state, _sink) = crate::agents::scheduler::tests::test_state(dir).await;
        let (pki, csr) = join::tests::pki_and_csr();
        state.agent_pki = Arc::new(pki);
        let issued = state.agent_pki.sign(&csr, "dev", "web-01").unwrap();
        let record = issued.record("tok", Some(vec!["linux".into()]));
        let store = state.resources.store().as_ref();
        join::put_cert_record(store, "dev", "web-01", &record, &None)
            .await
            .unwrap();
        let hub = AgentHub::new(Sessions::new());
        let (session, _queue) = hub.sessions().register("dev", &hello("web-01"), true);
        let agent = AgentSession {
            hub,
            session,
            namespace: "dev".into(),
            registered: registered(),
            issued_at: issued.identity.issued_at(),
            fingerprint: issued.identity.fingerprint.clone(),
            recorded: Some(record.fingerprint),
            last_renewal: None,
            state,
        };
        (agent, csr, issued)
    }

    #[tokio::test]
    async fn renewal_keeps_the_identity_and_the_pin_and_updates_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut agent, csr, issued) = renewing_session(dir.path()).await;
        let replies = agent.on_renew(&csr).await;
        let [BackendMessage::Certificate { cert_pem }] = replies.as_slice() else {
            panic!("{replies:?}");
        };
        let renewed = peer_identity(&der(cert_pem)).unwrap();
        assert_eq!(renewed.namespace, Ok("dev".to_owned()));
        assert_ne!(renewed.fingerprint, issued.identity.fingerprint);
        let store = Arc::clone(agent.state.resources.store());
        let (record, _) = join::load_cert_record(store.as_ref(), "dev", "web-01")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.fingerprint, renewed.fingerprint);
        assert_eq!(record.token_id, "tok");
        assert_eq!(record.pinned_subscriptions, Some(vec!["linux".to_owned()]));
        // At most one renewal a minute.
        assert!(matches!(
            agent.on_renew(&csr).await.as_slice(),
            [BackendMessage::Refused { fatal: false, .. }]
        ));

        // A certificate that is no longer the recorded one (the entity was enrolled again).
        let other_dir = tempfile::tempdir().unwrap();
        let (mut other, csr, _) = renewing_session(other_dir.path()).await;
        other.recorded = None;
        other.fingerprint = "superseded".into();
        let replies = other.on_renew(&csr).await;
        assert!(
            matches!(replies.as_slice(), [BackendMessage::Refused { reason, fatal: false }] if reason.contains("enrolled again")),
            "{replies:?}"
        );
    }

    /// The race a renewal must never win: a revocation already in the store that this
    /// backend's view has not seen yet. The certificate is signed, then refused, never sent.
    #[tokio::test]
    async fn renewal_after_a_stored_revocation_hands_out_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut agent, csr, issued) = renewing_session(dir.path()).await;
        let store = Arc::clone(agent.state.resources.store());
        let store = store.as_ref();
        // Dated before the certificate: it refuses it by name only.
        let certificate = join::CertRef {
            serial: issued.identity.serial.clone(),
            fingerprint: issued.identity.fingerprint.clone(),
        };
        join::merge_revocation(store, "dev", "web-01", 1, "admin", &[certificate])
            .await
            .unwrap();
        assert!(!agent.state.revocations.revokes(
            "dev",
            "web-01",
            agent.issued_at,
            &agent.fingerprint
        ));
        let replies = agent.on_renew(&csr).await;
        assert_eq!(
            replies,
            [BackendMessage::Refused {
                reason: REASON_REVOKED.into(),
                fatal: true
            }]
        );
        let (record, _) = join::load_cert_record(store, "dev", "web-01")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            record.fingerprint, issued.identity.fingerprint,
            "the record of the refused renewal is put back"
        );
    }

    #[test]
    fn only_the_agent_path_upgrades() {
        let request = |path: &str| {
            Request::builder()
                .uri(format!("wss://backend{path}"))
                .body(())
                .unwrap()
        };
        assert!(check_path(&request(AGENT_PATH), Response::new(())).is_ok());
        let refusal = check_path(&request("/other"), Response::new(())).unwrap_err();
        assert_eq!(refusal.status(), StatusCode::NOT_FOUND);
    }
}
