//! Simulated agents for load tests: many agent sessions in one process.
//!
//! [`run`] is the agent's own session loop ([`crate::session::run_with`]): the same connection,
//! hello, keepalives, failover, backoff, event window, acknowledgements and resending. So that
//! thousands fit in one process and the load tool measures the backend rather than itself, a
//! check request is answered in-process at once with a passing result ([`SIM_OUTPUT`]) instead
//! of forking the command, events wait in memory (at most [`SIM_QUEUE_EVENTS`], the oldest
//! dropped beyond) instead of the on-disk queue, the host facts are given, and there is no
//! certificate renewal and no local API. What happens is told to an [`Observer`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use tokio::sync::{watch, Notify};

use cairn_api::agent::CheckRequest;
use cairn_api::model::{Check, Entity, Event, System};

use crate::config::AgentConfig;
use crate::queue::QueuedEvent;
use crate::session::{self, CheckRunner, Outbox, Parts, SessionError, SessionHooks};

/// The output of every simulated check.
pub const SIM_OUTPUT: &str = "ok\n";
/// How many events a simulated agent keeps until acknowledged; beyond, the oldest are dropped.
pub const SIM_QUEUE_EVENTS: usize = 1_000;

/// One simulated agent.
#[derive(Debug, Clone)]
pub struct SimAgent {
    /// Its configuration: name, backend URLs, key, certificate and CA files, subscriptions,
    /// keepalive interval.
    pub config: Arc<AgentConfig>,
    /// The host facts of its hello and entity (collected once for all of them, say).
    pub system: System,
}

/// When things happened to one check request, wall-clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckTiming {
    /// The request's `issued` (unix seconds, set by the backend's scheduler).
    pub issued: i64,
    /// When the request's result was queued (at once when it arrived).
    pub received: SystemTime,
    /// When its event was last taken to be sent.
    pub sent: SystemTime,
    /// When the acknowledgement arrived (the backend acknowledges after storing).
    pub acked: SystemTime,
}

/// Told what happens to simulated agents; called from their tasks, so it must be quick.
pub trait Observer: Send + Sync {
    /// A session was established (the welcome arrived).
    fn connected(&self, _name: &str) {}
    /// An established session failed or ended.
    fn disconnected(&self, _name: &str, _reason: &str) {}
    /// An attempt failed before the session was established (connection, TLS, hello).
    fn failed(&self, _name: &str, _reason: &str) {}
    /// An event was acknowledged.
    fn acked(&self, _name: &str, _timing: &CheckTiming) {}
    /// The backend refused a message (not fatally), or sent one that does not parse.
    fn refused(&self, _name: &str, _reason: &str) {}
}

/// Keeps a simulated agent's session with one of its backends until `shutdown` turns true.
pub async fn run(agent: SimAgent, observer: Arc<dyn Observer>, shutdown: watch::Receiver<bool>) {
    if agent.config.backend_urls.is_empty() {
        observer.failed(&agent.config.name, "no backend URL is configured");
        return;
    }
    let sim = Arc::new(Sim {
        name: agent.config.name.clone(),
        entity: session::entity(&agent.config, agent.system.clone()),
        observer,
        events: Mutex::default(),
        queued: Notify::new(),
    });
    let parts = Parts {
        config: agent.config,
        runner: sim.clone(),
        outbox: sim.clone(),
        hooks: sim,
        system: Some(agent.system),
        renewal: false,
    };
    session::run_with(parts, shutdown).await;
}

/// One simulated agent's checks (answered at once), outbox (in memory) and observer.
struct Sim {
    name: String,
    /// Completes the events.
    entity: Entity,
    observer: Arc<dyn Observer>,
    /// The next sequence number, and the events not acknowledged yet, oldest first (at
    /// most [`SIM_QUEUE_EVENTS`]).
    events: Mutex<(u64, VecDeque<Pending>)>,
    queued: Notify,
}

/// An event waiting for its acknowledgement.
struct Pending {
    seq: u64,
    record: QueuedEvent,
    issued: i64,
    received: SystemTime,
    /// When it was last taken to be sent.
    sent: SystemTime,
}

// === impl Sim ===

impl CheckRunner for Sim {
    /// Status 0, [`SIM_OUTPUT`], the check as the request configures it.
    async fn run_check(&self, request: &CheckRequest, entity: &Entity) -> Event {
        let now = crate::certs::now_unix();
        let mut check: Check = serde_json::to_value(&request.config)
            .and_then(serde_json::from_value)
            .unwrap_or_default();
        check.issued = request.issued;
        check.executed = now;
        check.duration = Some(0.0);
        check.status = 0;
        check.output = SIM_OUTPUT.to_owned();
        Event {
            timestamp: now,
            entity: Some(entity.clone()),
            check: Some(check),
            ..Event::default()
        }
    }
}

impl Outbox for Sim {
    /// Completes the event as the agent's queue writer does and queues it with a UUID id.
    async fn push(&self, event: Event) -> bool {
        let Some(mut event) = crate::start::complete(event, &self.entity) else {
            tracing::warn!("dropping an event that does not fit in one message");
            return true;
        };
        let id = uuid::Uuid::new_v4().to_string();
        event.id.clone_from(&id);
        let issued = event.check.as_ref().map_or(0, |check| check.issued);
        let (received, record) = (SystemTime::now(), QueuedEvent { id, event });
        {
            let (next_seq, pending) =
                &mut *self.events.lock().unwrap_or_else(PoisonError::into_inner);
            if pending.len() >= SIM_QUEUE_EVENTS {
                pending.pop_front();
                tracing::warn!("simulated event queue full; dropped the oldest event");
            }
            let seq = std::mem::replace(next_seq, *next_seq + 1);
            let sent = received;
            pending.push_back(Pending {
                seq,
                record,
                issued,
                received,
                sent,
            });
        }
        self.queued.notify_one();
        true
    }

    fn queued(&self) -> &Notify {
        &self.queued
    }

    async fn read_after(
        &self,
        cursor: Option<u64>,
        count: usize,
    ) -> Result<Vec<(u64, QueuedEvent)>, SessionError> {
        let (_, pending) = &mut *self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let start = cursor.map_or(0, |cursor| {
            pending.partition_point(|event| event.seq <= cursor)
        });
        let now = SystemTime::now();
        let batch = pending.iter_mut().skip(start).take(count).map(|event| {
            event.sent = now;
            (event.seq, event.record.clone())
        });
        Ok(batch.collect())
    }

    async fn ack(&self, id: String) -> Result<bool, SessionError> {
        let acked = {
            let (_, pending) = &mut *self.events.lock().unwrap_or_else(PoisonError::into_inner);
            let position = pending.iter().position(|event| event.record.id == id);
            position.and_then(|position| pending.remove(position))
        };
        let Some(event) = acked else { return Ok(false) };
        let timing = CheckTiming {
            issued: event.issued,
            received: event.received,
            sent: event.sent,
            acked: SystemTime::now(),
        };
        self.observer.acked(&self.name, &timing);
        Ok(true)
    }
}

impl SessionHooks for Sim {
    fn connected(&self) {
        self.observer.connected(&self.name);
    }

    fn ended(&self, welcomed: bool, outcome: &Result<(), SessionError>) {
        match outcome {
            Ok(()) if welcomed => self.observer.disconnected(&self.name, "shutdown"),
            Ok(()) => {}
            Err(err) if welcomed => self.observer.disconnected(&self.name, &err.to_string()),
            Err(err) => self.observer.failed(&self.name, &err.to_string()),
        }
    }

    fn refused(&self, reason: &str) {
        self.observer.refused(&self.name, reason);
    }
}
