//! Agents: the mutual-TLS listener and its connections, the sessions they hold, the keepalive
//! watchdog, joining (join tokens, the agent CA, revocations) and the check scheduler.

pub(crate) mod connection;
pub(crate) mod enrol;
pub(crate) mod join;
pub(crate) mod proxy;
pub(crate) mod scheduler;
pub(crate) mod sessions;
pub(crate) mod watchdog;

use std::sync::Arc;

use crate::auth::cache::AuthCache;
use crate::events::ingest::Ingest;
use crate::secrets::Secrets;
use crate::store::resources::Resources;

/// What the agent side of the backend works with: the listener's connections, the scheduler,
/// the watchdog and joining all take one of these (built once, in `app`).
#[derive(Clone)]
pub(crate) struct Agents {
    /// Typed resources over the store.
    pub resources: Resources,
    /// Users, keys, roles and bindings (an agent's certificate binds it to `system:agent`).
    pub auth: Arc<AuthCache>,
    /// Stores events and hands them to the pipeline.
    pub ingest: Ingest,
    /// The agent sessions connected to this backend.
    pub sessions: Arc<sessions::Sessions>,
    /// The agent CA and the cluster CA's fingerprint, for joining and renewals.
    pub agent_pki: Arc<join::AgentPki>,
    /// Revoked agent certificates, kept current by a store watch.
    pub revocations: Arc<join::Revocations>,
    /// Resolves the secrets of checks and hooks (values in memory only, sent over mTLS).
    pub secrets: Arc<Secrets>,
    /// Queues ad hoc check executions for this backend's scheduler (bounded).
    pub adhoc: scheduler::Adhoc,
    /// The sandboxed JavaScript engine the pipeline's filters use, shared: proxy checks'
    /// `entity_attributes` run on it.
    pub js: cairn_api::js::Engine,
}
