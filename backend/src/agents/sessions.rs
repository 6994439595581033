//! The agent sessions connected to this backend, and the keepalive state of every agent entity
//! that has connected since it started.
//!
//! The agent listener registers a session after its hello and removes it when the connection
//! ends; the scheduler asks which sessions a check goes to and sends them requests; the
//! keepalive watchdog reads the keepalive state, which outlives the session so that an agent
//! that went away is noticed.
//!
//! Every change is announced to the [`Coordinator`], so that the backends sharing a store know
//! which of them holds each entity (see [`crate::coord`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::mpsc;

use cairn_api::agent::{BackendMessage, Hello};

use crate::coord::{Coordinator, Presence};
use crate::entity::EntityId;

/// How many messages may wait for one session's writer before sends fail (a slow agent never
/// blocks the scheduler).
pub(crate) const SESSION_QUEUE: usize = 256;

/// One connected session, as the scheduler sees it.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// Namespace and entity name (the certificate's CN).
    pub id: EntityId,
    /// Subscriptions, `entity:<name>` included.
    pub subscriptions: Vec<String>,
    /// Whether the peer authenticated with a client certificate (always true on the mTLS
    /// listener; secrets are only ever sent when it is).
    pub authenticated: bool,
    /// A number unique to this connection, so a late unregister of an old connection does not
    /// remove a newer one of the same agent.
    pub connection: u64,
    sender: mpsc::Sender<BackendMessage>,
}

/// Why a message could not be handed to a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SendError {
    /// The session's queue is full: the agent is not reading.
    #[error("the session of {0} is not keeping up")]
    Full(String),
    /// The session ended.
    #[error("the session of {0} is closed")]
    Closed(String),
}

impl Session {
    /// Queues a message for the agent without waiting.
    ///
    /// # Errors
    /// [`SendError`] when the queue is full or the session ended.
    pub(crate) fn send(&self, message: BackendMessage) -> Result<(), SendError> {
        self.sender.try_send(message).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => SendError::Full(self.id.name.clone()),
            mpsc::error::TrySendError::Closed(_) => SendError::Closed(self.id.name.clone()),
        })
    }

    /// Whether the session subscribes to any of `subscriptions`.
    pub(crate) fn subscribes_to_any(&self, subscriptions: &[String]) -> bool {
        crate::entity::subscribes_to_any(&self.subscriptions, subscriptions)
    }
}

/// The keepalive state of one agent entity.
#[derive(Debug, Clone)]
pub(crate) struct Keepalive {
    /// When the last keepalive (or the hello) arrived.
    pub last_seen: Instant,
    /// Seconds between keepalives the agent promised.
    pub interval: u32,
    /// Seconds of silence before a warning.
    pub warning_timeout: u32,
    /// Seconds of silence before a critical; 0 for none.
    pub critical_timeout: u32,
    /// Delete the entity when the keepalive goes critical.
    pub deregister: bool,
    /// The pipelines its keepalive events name.
    pub pipelines: Vec<String>,
    /// Whether a session of this entity is connected now.
    pub connected: bool,
    /// The status the watchdog last raised (0 ok, 1 warning, 2 critical).
    pub raised: u32,
}

/// The registry.
#[derive(Debug)]
pub(crate) struct Sessions {
    inner: Mutex<Inner>,
    coordinator: Arc<Coordinator>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<EntityId, Session>,
    keepalives: HashMap<EntityId, Keepalive>,
    next_connection: u64,
    /// The entity configuration last sent to each connected session (see
    /// [`Sessions::push_entity_config`]), so an unchanged one is not sent again.
    entity_configs: HashMap<EntityId, BackendMessage>,
}

impl Sessions {
    #[cfg(test)]
    /// An empty registry of a backend alone on its store.
    pub(crate) fn new() -> Arc<Sessions> {
        Sessions::with_coordinator(Coordinator::single("local"))
    }

    /// An empty registry that announces its entities to `coordinator`.
    pub(crate) fn with_coordinator(coordinator: Arc<Coordinator>) -> Arc<Sessions> {
        Arc::new(Sessions {
            inner: Mutex::new(Inner::default()),
            coordinator,
        })
    }

    /// The coordinator this registry announces to.
    pub(crate) fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coordinator
    }

    fn presence(&self, keepalive: &Keepalive, subscriptions: Vec<String>) -> Presence {
        Presence {
            backend: self.coordinator.id().to_owned(),
            subscriptions,
            connected: keepalive.connected,
            keepalive_interval: keepalive.interval,
            keepalive_warning_timeout: keepalive.warning_timeout,
            keepalive_critical_timeout: keepalive.critical_timeout,
            deregister: keepalive.deregister,
            keepalive_pipelines: keepalive.pipelines.clone(),
        }
    }

    /// Registers a session after its hello; returns it and the receiving end of its queue.
    /// A previous session of the same entity is replaced (its queue closes, so its writer ends).
    pub(crate) fn register(
        &self,
        namespace: &str,
        hello: &Hello,
        authenticated: bool,
    ) -> (Session, mpsc::Receiver<BackendMessage>) {
        let (sender, receiver) = mpsc::channel(SESSION_QUEUE);
        let id = EntityId::new(namespace, hello.name.clone());
        let mut subscriptions = hello.subscriptions.clone();
        let implicit = format!("entity:{}", hello.name);
        if !subscriptions.contains(&implicit) {
            subscriptions.push(implicit);
        }
        let mut inner = self.lock();
        inner.next_connection += 1;
        let session = Session {
            id: id.clone(),
            subscriptions,
            authenticated,
            connection: inner.next_connection,
            sender,
        };
        inner.sessions.insert(id.clone(), session.clone());
        inner.entity_configs.remove(&id);
        let raised = inner.keepalives.get(&id).map_or(0, |state| state.raised);
        let keepalive = Keepalive {
            last_seen: Instant::now(),
            interval: hello.keepalive_interval,
            warning_timeout: hello.keepalive_warning_timeout,
            critical_timeout: hello.keepalive_critical_timeout,
            deregister: hello.deregister,
            pipelines: hello.keepalive_pipelines.clone(),
            connected: true,
            raised,
        };
        inner.keepalives.insert(id.clone(), keepalive.clone());
        drop(inner);
        self.coordinator.claim(
            &id,
            self.presence(&keepalive, session.subscriptions.clone()),
        );
        (session, receiver)
    }

    /// Replaces the subscriptions of the connected session of `id` after its stored entity
    /// changed (`entity:<name>` is kept whatever the entity says); returns whether they changed.
    /// Nothing happens when the entity has no session on this backend.
    pub(crate) fn set_subscriptions(&self, id: &EntityId, mut subscriptions: Vec<String>) -> bool {
        let implicit = format!("entity:{}", id.name);
        if !subscriptions.contains(&implicit) {
            subscriptions.push(implicit);
        }
        let mut inner = self.lock();
        let Some(session) = inner.sessions.get_mut(id) else {
            return false;
        };
        if session.subscriptions == subscriptions {
            return false;
        }
        session.subscriptions.clone_from(&subscriptions);
        let presence = inner
            .keepalives
            .get(id)
            .map(|state| self.presence(state, subscriptions));
        drop(inner);
        if let Some(presence) = presence {
            self.coordinator.update(id, presence);
        }
        true
    }

    /// Sends `config` (a [`BackendMessage::EntityConfig`]) to the connected session of `id`
    /// unless it is what that session was sent last; returns whether it was sent. A full
    /// queue loses it (the next change, or the next connection, sends it again).
    pub(crate) fn push_entity_config(&self, id: &EntityId, config: BackendMessage) -> bool {
        let mut inner = self.lock();
        let Some(session) = inner.sessions.get(id).cloned() else {
            return false;
        };
        if inner.entity_configs.get(id) == Some(&config) {
            return false;
        }
        if session.send(config.clone()).is_err() {
            return false;
        }
        inner.entity_configs.insert(id.clone(), config);
        true
    }

    /// Removes a session when its connection ends (only if it is still the registered one).
    pub(crate) fn unregister(&self, session: &Session) {
        let mut inner = self.lock();
        if inner
            .sessions
            .get(&session.id)
            .is_some_and(|current| current.connection == session.connection)
        {
            inner.sessions.remove(&session.id);
            inner.entity_configs.remove(&session.id);
            if let Some(state) = inner.keepalives.get_mut(&session.id) {
                state.connected = false;
                let presence = self.presence(state, session.subscriptions.clone());
                drop(inner);
                // Still watched here for its keepalives, unless it is connected elsewhere by
                // now (then the coordinator leaves the other backend's claim alone).
                self.coordinator.update(&session.id, presence);
            }
        }
    }

    /// Takes over the keepalive watch of an entity whose backend left the cluster
    /// (see [`Coordinator::take_orphans`]), with the settings its last presence `last` carried,
    /// seen last at `last_seen` with `raised` raised; nothing when this backend already knows
    /// it. Returns whether it was adopted.
    pub(crate) fn adopt(
        &self,
        id: &EntityId,
        last: &Presence,
        last_seen: Instant,
        raised: u32,
    ) -> bool {
        let keepalive = Keepalive {
            last_seen,
            interval: last.keepalive_interval,
            warning_timeout: last.keepalive_warning_timeout,
            critical_timeout: last.keepalive_critical_timeout,
            deregister: last.deregister,
            pipelines: last.keepalive_pipelines.clone(),
            connected: false,
            raised,
        };
        let presence = self.presence(&keepalive, last.subscriptions.clone());
        {
            let mut inner = self.lock();
            if inner.keepalives.contains_key(id) {
                return false;
            }
            inner.keepalives.insert(id.clone(), keepalive);
        }
        self.coordinator.adopt(id, presence);
        true
    }

    /// Stops watching the keepalives of the entities another backend holds now (their agent
    /// connected there); returns them.
    pub(crate) fn release_foreign(&self) -> Vec<EntityId> {
        let me = self.coordinator.id();
        let mut inner = self.lock();
        let foreign: Vec<EntityId> = inner
            .keepalives
            .iter()
            .filter(|(id, state)| {
                !state.connected && self.coordinator.owner(id).is_some_and(|owner| owner != me)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &foreign {
            inner.keepalives.remove(id);
        }
        foreign
    }

    /// Records a keepalive.
    pub(crate) fn keepalive(&self, id: &EntityId) {
        if let Some(state) = self.lock().keepalives.get_mut(id) {
            state.last_seen = Instant::now();
        }
    }

    /// Drops the session of an entity at once (revocation); returns whether there was one.
    pub(crate) fn drop_session(&self, id: &EntityId) -> bool {
        let mut inner = self.lock();
        inner.keepalives.remove(id);
        let dropped = inner.sessions.remove(id).is_some();
        drop(inner);
        self.coordinator.withdraw(id);
        dropped
    }

    /// The connected sessions in `namespace` that subscribe to any of `subscriptions`, in a
    /// stable order (by entity name).
    pub(crate) fn matching(&self, namespace: &str, subscriptions: &[String]) -> Vec<Session> {
        let mut matching: Vec<Session> = self
            .lock()
            .sessions
            .values()
            .filter(|session| {
                session.id.namespace == namespace && session.subscribes_to_any(subscriptions)
            })
            .cloned()
            .collect();
        matching.sort_by(|left, right| left.id.cmp(&right.id));
        matching
    }

    /// The session of one entity, if connected.
    pub(crate) fn get(&self, id: &EntityId) -> Option<Session> {
        self.lock().sessions.get(id).cloned()
    }

    /// A copy of every keepalive state, for the watchdog.
    pub(crate) fn keepalives(&self) -> Vec<(EntityId, Keepalive)> {
        self.lock()
            .keepalives
            .iter()
            .map(|(id, state)| (id.clone(), state.clone()))
            .collect()
    }

    /// Records the status the watchdog raised for an entity.
    pub(crate) fn set_raised(&self, id: &EntityId, status: u32) {
        if let Some(state) = self.lock().keepalives.get_mut(id) {
            state.raised = status;
        }
    }

    /// Forgets an entity's keepalive state (after deregistration).
    pub(crate) fn forget(&self, id: &EntityId) {
        self.lock().keepalives.remove(id);
        self.coordinator.withdraw(id);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(name: &str, subscriptions: &[&str]) -> Hello {
        Hello {
            name: name.to_owned(),
            subscriptions: subscriptions.iter().map(|s| (*s).to_owned()).collect(),
            keepalive_interval: 20,
            keepalive_warning_timeout: 120,
            ..Hello::default()
        }
    }

    #[test]
    fn matching_by_namespace_and_subscription_and_replacement() {
        let sessions = Sessions::new();
        let (web, _web_rx) = sessions.register("default", &hello("web", &["linux"]), true);
        let (_db, _db_rx) = sessions.register("default", &hello("db", &["linux", "db"]), true);
        let (_other, _other_rx) = sessions.register("prod", &hello("x", &["linux"]), true);
        let names = |list: Vec<Session>| list.into_iter().map(|s| s.id.name).collect::<Vec<_>>();
        assert_eq!(
            names(sessions.matching("default", &["linux".into()])),
            ["db", "web"]
        );
        assert_eq!(names(sessions.matching("default", &["db".into()])), ["db"]);
        assert_eq!(
            names(sessions.matching("default", &["entity:web".into()])),
            ["web"]
        );
        // A reconnect replaces the session; the old connection's unregister does not remove it.
        let (web2, mut web2_rx) = sessions.register("default", &hello("web", &["linux"]), true);
        sessions.unregister(&web);
        assert!(sessions.get(&web2.id).is_some());
        web2.send(BackendMessage::Ack { id: "1".into() })
            .expect("send");
        assert_eq!(
            web2_rx.try_recv().expect("queued"),
            BackendMessage::Ack { id: "1".into() }
        );
        sessions.unregister(&web2);
        assert!(sessions.get(&web2.id).is_none());
        let state = sessions
            .keepalives()
            .into_iter()
            .find(|(id, _)| id == &web2.id)
            .expect("kept after disconnect")
            .1;
        assert!(!state.connected);
    }
}
