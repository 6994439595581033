//! The keepalive watchdog: every second it reads the keepalive state of each agent entity from
//! the session registry and stores the `keepalive` event Sensu would: a warning, then a critical,
//! when keepalives stop; a resolution when they resume; and a passing event at most once per
//! keepalive interval while they keep coming, so the latest keepalive event stays current. An
//! entity that asked to be deregistered is deleted (with its events) when its keepalive reaches
//! its last stage.
//!
//! The decisions are pure functions (`keepalive_transition`, `plan`); the loop around them
//! reads the clock and the registry and writes through [`crate::events::ingest::ingest`], like the REST
//! API.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use cairn_api::agent::{DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_WARNING_TIMEOUT};
use cairn_api::model::{Check, Entity, Event};
use cairn_api::{Kind, ObjectMeta, Spec};

use crate::agents::sessions::{Keepalive, Sessions};
use crate::agents::Agents;
use crate::clock::unix_now;
use crate::coord::{Presence, Role};
use crate::entity::EntityId;
use crate::store::resources::{self, Resources};
use crate::store::Precondition;

/// The check name of keepalive events.
pub(crate) const KEEPALIVE_CHECK: &str = "keepalive";

/// `created_by` of the events the watchdog stores.
pub(crate) const KEEPALIVE_CREATED_BY: &str = "cairn/keepalive";

/// The handler of keepalive events when the entity names none. As Sensu's
/// `createKeepaliveEvent`: every keepalive event names the entity's `keepalive_handlers`, or
/// `keepalive` when they are empty (their default), whether or not such a handler exists; the
/// pipeline ignores one that does not, with an info line as Sensu's does, and runs it once it
/// is defined.
const DEFAULT_KEEPALIVE_HANDLER: &str = "keepalive";

/// How often the watchdog looks.
const TICK: Duration = Duration::from_secs(1);

/// Keepalive writes in flight at once: concurrent writes share a store commit, so ten thousand
/// agents' passing events do not take one fsync each in turn.
const WRITE_CONCURRENCY: usize = 64;

/// How long an entity whose write failed is left alone before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// Starts the watchdog; it runs until `shutdown` holds `true`.
///
/// # Caveats
///
/// - Dropping the sender of `shutdown` does not stop the task (abort it, or send `true`).
/// - Keepalive state lives in the session registry, so an agent that never reconnects after a
///   backend restart is not noticed by this backend.
pub(crate) fn spawn(
    state: Agents,
    sessions: Arc<Sessions>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(run(state, sessions, shutdown))
}

async fn run(state: Agents, sessions: Arc<Sessions>, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut memories: HashMap<EntityId, Memory> = HashMap::new();
    loop {
        tokio::select! {
            biased;
            () = crate::shutdown::requested(&mut shutdown) => return,
            _ = ticker.tick() => {}
        }
        for id in sessions.release_foreign() {
            tracing::debug!(namespace = %id.namespace, entity = %id.name, "keepalives now watched by another backend");
        }
        let coordinator = Arc::clone(sessions.coordinator());
        if coordinator.is_distributed() && coordinator.is_leader(Role::Watchdogs) {
            for (id, presence) in coordinator.take_orphans() {
                adopt_orphan(&state, &sessions, id, presence).await;
            }
        }
        let now = Instant::now();
        let keepalives = sessions.keepalives();
        let known: HashSet<&EntityId> = keepalives.iter().map(|(id, _)| id).collect();
        memories.retain(|id, _| known.contains(id));
        let plans: Vec<(EntityId, Keepalive, Plan)> = keepalives
            .iter()
            .filter_map(|(id, keepalive)| {
                plan(keepalive, memories.get(id), now)
                    .map(|plan| (id.clone(), keepalive.clone(), plan))
            })
            .collect();
        if plans.is_empty() {
            continue;
        }
        let unix = unix_now();
        let state = &state;
        let sessions_ref = &sessions;
        let outcomes: Vec<(EntityId, Keepalive, Plan, Result<(), String>)> =
            futures::stream::iter(plans)
                .map(|(id, keepalive, plan)| async move {
                    let result =
                        execute(state, sessions_ref, &id, &keepalive, plan, now, unix).await;
                    (id, keepalive, plan, result)
                })
                .buffer_unordered(WRITE_CONCURRENCY)
                .collect()
                .await;
        for (id, keepalive, plan, result) in outcomes {
            match (plan, result) {
                (Plan::Deregister, Ok(())) => {
                    tracing::info!(namespace = %id.namespace, entity = %id.name, "entity deregistered");
                    sessions.forget(&id);
                    memories.remove(&id);
                }
                (Plan::Raise(status), Ok(())) => {
                    sessions.set_raised(&id, status);
                    memories.insert(id, Memory::emitted(&keepalive, now));
                }
                (Plan::Refresh, Ok(())) => {
                    memories.insert(id, Memory::emitted(&keepalive, now));
                }
                (plan, Err(reason)) => {
                    tracing::warn!(
                        namespace = %id.namespace,
                        entity = %id.name,
                        ?plan,
                        error = %reason,
                        "keepalive event not stored; trying again later"
                    );
                    memories.entry(id).or_default().retry_after = Some(now + RETRY_AFTER);
                }
            }
        }
    }
}

/// Takes over the keepalive watch of an entity whose backend left the cluster: from the last
/// stored keepalive event it knows when the agent was last seen and what was raised, so a
/// silent agent gets its warning on time and one that is already critical is not raised again.
async fn adopt_orphan(state: &Agents, sessions: &Sessions, id: EntityId, presence: Presence) {
    let EntityId { namespace, name } = &id;
    match state.resources.get(Kind::Entity, namespace, name).await {
        Ok(Some(_)) => {}
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(%namespace, entity = %name, error = %err, "cannot read an orphaned entity; not adopted");
            return;
        }
    }
    let unix = unix_now();
    let event_name = format!("{name}/{KEEPALIVE_CHECK}");
    let (last_seen, raised) = match state
        .resources
        .get(Kind::Event, namespace, &event_name)
        .await
    {
        Ok(Some(stored)) => match stored.resource.spec {
            Spec::Event(event) => (
                event
                    .entity
                    .as_ref()
                    .map_or(event.timestamp, |entity| entity.last_seen),
                event.check.as_ref().map_or(0, |check| check.status.min(2)),
            ),
            _ => (unix, 0),
        },
        _ => (unix, 0),
    };
    let silence = Duration::from_secs(u64::try_from(unix - last_seen).unwrap_or(0));
    let last_seen = Instant::now()
        .checked_sub(silence)
        .unwrap_or_else(Instant::now);
    if sessions.adopt(&id, &presence, last_seen, raised) {
        tracing::info!(
            %namespace,
            entity = %name,
            from = %presence.backend,
            silence = silence.as_secs(),
            "keepalive watch taken over from a backend that left"
        );
    }
}

/// What the watchdog remembers of an entity between ticks.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    /// The keepalive the last stored event reported, and when it was stored.
    emitted: Option<(Instant, Instant)>,
    /// After a failed write: nothing is tried for the entity before this.
    retry_after: Option<Instant>,
}

impl Memory {
    fn emitted(keepalive: &Keepalive, now: Instant) -> Memory {
        Memory {
            emitted: Some((keepalive.last_seen, now)),
            retry_after: None,
        }
    }
}

/// The keepalive timeouts of an entity, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timeouts {
    /// Silence before a warning.
    warning: u64,
    /// Silence before a critical; 0 for none.
    critical: u64,
}

impl Timeouts {
    /// The entity's timeouts; a warning timeout of 0 means the default.
    fn of(keepalive: &Keepalive) -> Timeouts {
        let warning = match keepalive.warning_timeout {
            0 => DEFAULT_KEEPALIVE_WARNING_TIMEOUT,
            warning => warning,
        };
        Timeouts {
            warning: u64::from(warning),
            critical: u64::from(keepalive.critical_timeout),
        }
    }

    /// The status of a keepalive silent for `silence` seconds.
    fn status(self, silence: u64) -> u32 {
        if self.critical > 0 && silence >= self.critical {
            2
        } else if silence >= self.warning {
            1
        } else {
            0
        }
    }

    /// The last status a silence can reach.
    fn last_stage(self) -> u32 {
        if self.critical > 0 {
            2
        } else {
            1
        }
    }

    /// The timeout a status was raised for.
    fn threshold(self, status: u32) -> u64 {
        if status >= 2 {
            self.critical
        } else {
            self.warning
        }
    }
}

/// The status to raise for a keepalive silent for `silence` seconds when `raised` was raised
/// last: a warning or critical not raised yet (ok → warning → critical, or straight to
/// critical), or 0 when keepalives came back after a raise. `None` when nothing changes.
fn keepalive_transition(silence: u64, timeouts: Timeouts, raised: u32) -> Option<u32> {
    match timeouts.status(silence) {
        0 if raised > 0 => Some(0),
        0 => None,
        status if status > raised => Some(status),
        _ => None,
    }
}

/// What to do for one entity this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Store a keepalive event with this status.
    Raise(u32),
    /// Store a passing keepalive event for a keepalive not reported yet.
    Refresh,
    /// Delete the entity and its events.
    Deregister,
}

/// The plan for one entity at `now`, from its keepalive state and what was last done for it.
fn plan(keepalive: &Keepalive, memory: Option<&Memory>, now: Instant) -> Option<Plan> {
    if memory
        .and_then(|memory| memory.retry_after)
        .is_some_and(|retry_after| now < retry_after)
    {
        return None;
    }
    let silence = now.saturating_duration_since(keepalive.last_seen).as_secs();
    let timeouts = Timeouts::of(keepalive);
    match keepalive_transition(silence, timeouts, keepalive.raised) {
        Some(status) if keepalive.deregister && status == timeouts.last_stage() => {
            Some(Plan::Deregister)
        }
        Some(status) => Some(Plan::Raise(status)),
        None if keepalive.raised == 0 && refresh_due(keepalive, memory, now) => Some(Plan::Refresh),
        None => None,
    }
}

/// Whether a keepalive arrived since the last stored event and a keepalive interval has passed
/// since that event.
fn refresh_due(keepalive: &Keepalive, memory: Option<&Memory>, now: Instant) -> bool {
    let interval = match keepalive.interval {
        0 => DEFAULT_KEEPALIVE_INTERVAL,
        interval => interval,
    };
    match memory.and_then(|memory| memory.emitted) {
        None => true,
        Some((reported, stored_at)) => {
            keepalive.last_seen > reported
                && now.saturating_duration_since(stored_at)
                    >= Duration::from_secs(u64::from(interval))
        }
    }
}

/// Carries out a plan.
async fn execute(
    state: &Agents,
    sessions: &Sessions,
    id: &EntityId,
    keepalive: &Keepalive,
    plan: Plan,
    now: Instant,
    unix: i64,
) -> Result<(), String> {
    let silence = now.saturating_duration_since(keepalive.last_seen).as_secs();
    let last_seen = unix - i64::try_from(silence).unwrap_or(i64::MAX).min(unix);
    let timeouts = Timeouts::of(keepalive);
    let EntityId { namespace, name } = id;
    let (status, output) = match plan {
        Plan::Deregister => return deregister(state, id, unix).await,
        Plan::Refresh => (0, alive_output(name, last_seen)),
        Plan::Raise(0) => (0, alive_output(name, last_seen)),
        Plan::Raise(status) => (
            status,
            silent_output(name, silence, timeouts.threshold(status)),
        ),
    };
    let entity = match state.resources.get(Kind::Entity, namespace, name).await {
        Ok(Some(stored)) => match stored.resource.spec {
            Spec::Entity(mut entity) => {
                entity.metadata = Some(stored.resource.metadata);
                entity
            }
            _ => return Err("an entity key holds another kind".to_owned()),
        },
        Ok(None) => Entity {
            metadata: Some(ObjectMeta::named(namespace, name)),
            entity_class: "agent".to_owned(),
            subscriptions: sessions
                .get(id)
                .map(|session| session.subscriptions)
                .unwrap_or_default(),
            deregister: keepalive.deregister,
            ..Entity::default()
        },
        Err(err) => return Err(err.to_string()),
    };
    let event = keepalive_event(entity, keepalive, status, output, last_seen, unix);
    let event_name = format!("{name}/{KEEPALIVE_CHECK}");
    state
        .ingest
        .ingest(namespace, &event_name, event, KEEPALIVE_CREATED_BY)
        .await
        .map_err(|err| err.to_string())?;
    if status > 0 {
        tracing::info!(%namespace, entity = %name, status, silence, "keepalive overdue");
    } else if plan != Plan::Refresh {
        tracing::info!(%namespace, entity = %name, "keepalive resumed");
    }
    Ok(())
}

/// The keepalive event of an entity, as Sensu builds it: check `keepalive` with the keepalive
/// interval, the warning timeout as `timeout` and the critical one as `ttl`, handled by the
/// entity's keepalive handlers or `keepalive`, and by the agent's keepalive pipelines.
fn keepalive_event(
    mut entity: Entity,
    keepalive: &Keepalive,
    status: u32,
    output: String,
    last_seen: i64,
    now: i64,
) -> Event {
    let namespace = entity
        .metadata
        .as_ref()
        .map(|meta| meta.namespace.clone())
        .unwrap_or_default();
    let handlers = if entity.keepalive_handlers.is_empty() {
        vec![DEFAULT_KEEPALIVE_HANDLER.to_owned()]
    } else {
        entity.keepalive_handlers.clone()
    };
    entity.last_seen = last_seen;
    let timeouts = Timeouts::of(keepalive);
    let interval = match keepalive.interval {
        0 => DEFAULT_KEEPALIVE_INTERVAL,
        interval => interval,
    };
    let check = Check {
        metadata: Some(ObjectMeta::named(&namespace, KEEPALIVE_CHECK)),
        status,
        output,
        interval: i64::from(interval),
        timeout: i64::try_from(timeouts.warning).unwrap_or(i64::MAX),
        ttl: i64::try_from(timeouts.critical).unwrap_or(i64::MAX),
        handlers,
        pipelines: keepalive
            .pipelines
            .iter()
            .map(|name| cairn_api::model::ResourceReference {
                name: name.clone(),
                type_name: "Pipeline".to_owned(),
                api_version: "core/v2".to_owned(),
            })
            .collect(),
        executed: now,
        issued: now,
        ..Check::default()
    };
    Event {
        timestamp: now,
        entity: Some(entity),
        check: Some(check),
        ..Event::default()
    }
}

/// Sensu's output for an overdue keepalive.
fn silent_output(name: &str, silence: u64, threshold: u64) -> String {
    format!("No keepalive sent from {name} for {silence} seconds (>= {threshold})")
}

/// Sensu's output for a passing keepalive.
fn alive_output(name: &str, last_seen: i64) -> String {
    format!("Keepalive last sent from {name} at {}", go_time(last_seen))
}

/// A unix time as Go's `time.Time.String()` prints it in UTC (`2006-01-02 15:04:05 +0000 UTC`).
fn go_time(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(at) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} +0000 UTC",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        ),
        Err(_) => unix.to_string(),
    }
}

/// Deregisters an entity as Sensu does: deletes each of its events and hands the pipeline a
/// resolution of it (`Resolving due to entity deregistering`), deletes the entity, and hands
/// the pipeline a `deregistration` event when the entity names a deregistration handler.
/// The resolutions are not stored: the entity is gone.
async fn deregister(state: &Agents, id: &EntityId, now: i64) -> Result<(), String> {
    let EntityId { namespace, name } = id;
    let entity = match state.resources.get(Kind::Entity, namespace, name).await {
        Ok(Some(stored)) => match stored.resource.spec {
            Spec::Entity(mut entity) => {
                entity.metadata = Some(stored.resource.metadata);
                Some(entity)
            }
            _ => None,
        },
        Ok(None) => None,
        Err(err) => return Err(err.to_string()),
    };
    for previous in delete_events(&state.resources, namespace, name).await? {
        if let Some(resolution) = resolution_event(&previous, now) {
            state.ingest.sink.submit(namespace, resolution);
        }
    }
    state
        .resources
        .delete(Kind::Entity, namespace, name, Precondition::None)
        .await
        .map_err(|err| err.to_string())?;
    let handler = entity
        .as_ref()
        .and_then(|entity| entity.deregistration.as_ref())
        .map(|deregistration| deregistration.handler.clone())
        .filter(|handler| !handler.is_empty());
    if let (Some(entity), Some(handler)) = (entity, handler) {
        let event = Event {
            entity: Some(entity),
            check: Some(Check {
                metadata: Some(ObjectMeta::named(namespace, "deregistration")),
                interval: 1,
                status: 1,
                handlers: vec![handler],
                executed: now,
                ..Check::default()
            }),
            ..Event::default()
        };
        match crate::events::rules::process_event(None, event, now) {
            Ok(event) => state.ingest.sink.submit(namespace, event),
            Err(err) => tracing::warn!(error = %err, "deregistration event refused"),
        }
    }
    Ok(())
}

/// The resolution handed to the pipeline for an event of a deregistered entity.
fn resolution_event(previous: &Event, now: i64) -> Option<Event> {
    let mut incoming = previous.clone();
    let check = incoming.check.as_mut()?;
    check.status = 0;
    check.output = "Resolving due to entity deregistering".to_owned();
    check.executed = now;
    check.hooks.clear();
    incoming.id.clear();
    incoming.timestamp = 0;
    crate::events::rules::process_event(Some(previous), incoming, now).ok()
}

/// Deletes every event of the entity `namespace/name` (as Sensu does when an entity is deleted
/// or deregisters); returns those deleted, in key order. An unreadable one is deleted and
/// logged, not returned.
///
/// # Errors
/// A store failure, as text; the events deleted until then stay deleted.
pub(crate) async fn delete_events(
    resources: &Resources,
    namespace: &str,
    name: &str,
) -> Result<Vec<Event>, String> {
    let store = resources.store();
    // Entity names hold no `/`, so this prefix is exactly this entity's events.
    let prefix = format!("{}{name}/", Resources::prefix(Kind::Event, Some(namespace)));
    let mut deleted = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list(&prefix, after.as_deref(), 1_000)
            .await
            .map_err(|err| err.to_string())?;
        for entry in &page.entries {
            if store
                .delete(&entry.key, Precondition::None)
                .await
                .map_err(|err| err.to_string())?
                .is_none()
            {
                continue;
            }
            match resources::decode(entry) {
                Ok(stored) => {
                    if let Spec::Event(event) = stored.resource.spec {
                        deleted.push(*event);
                    }
                }
                Err(err) => {
                    tracing::warn!(key = %entry.key, error = %err, "unreadable event deleted");
                }
            }
        }
        after = page.entries.last().map(|entry| entry.key.clone());
        if !page.more || after.is_none() {
            break;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use cairn_api::agent::Hello;

    use super::*;
    use crate::agents::scheduler::tests::{stored_event, test_state};
    use crate::testing::eventually;

    fn keepalive(last_seen: Instant, warning: u32, critical: u32, raised: u32) -> Keepalive {
        Keepalive {
            last_seen,
            interval: 20,
            warning_timeout: warning,
            critical_timeout: critical,
            deregister: false,
            pipelines: Vec::new(),
            connected: true,
            raised,
        }
    }

    #[test]
    fn keepalive_goes_ok_warning_critical_ok() {
        let timeouts = Timeouts {
            warning: 120,
            critical: 180,
        };
        let mut raised = 0;
        let mut seen = Vec::new();
        for silence in (0..=200).chain([0, 1, 2]) {
            if let Some(status) = keepalive_transition(silence, timeouts, raised) {
                seen.push((silence, status));
                raised = status;
            }
        }
        assert_eq!(seen, [(120, 1), (180, 2), (0, 0)]);
    }

    #[test]
    fn keepalive_transitions_table() {
        let both = Timeouts {
            warning: 120,
            critical: 180,
        };
        let warning_only = Timeouts {
            warning: 120,
            critical: 0,
        };
        let cases = [
            (both, 0, 0, None),
            (both, 119, 0, None),
            (both, 120, 0, Some(1)),
            (both, 150, 1, None),
            (both, 179, 1, None),
            (both, 180, 1, Some(2)),
            (both, 500, 0, Some(2)),
            (both, 500, 2, None),
            (both, 150, 2, None),
            (both, 10, 2, Some(0)),
            (both, 10, 1, Some(0)),
            (warning_only, 10_000, 0, Some(1)),
            (warning_only, 10_000, 1, None),
            (warning_only, 3, 1, Some(0)),
        ];
        for (timeouts, silence, raised, expected) in cases {
            assert_eq!(
                keepalive_transition(silence, timeouts, raised),
                expected,
                "{timeouts:?} silence {silence} raised {raised}"
            );
        }
    }

    #[test]
    fn plans_raise_refresh_and_deregister() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        // Never reported: report at once.
        assert_eq!(
            plan(&keepalive(start, 120, 180, 0), None, start),
            Some(Plan::Refresh)
        );
        // Reported, no new keepalive: nothing.
        let memory = Memory::emitted(&keepalive(start, 120, 180, 0), start);
        assert_eq!(
            plan(&keepalive(start, 120, 180, 0), Some(&memory), at(30)),
            None
        );
        // A new keepalive, but within the interval of the last event: wait.
        assert_eq!(
            plan(&keepalive(at(10), 120, 180, 0), Some(&memory), at(10)),
            None
        );
        // After the interval: report.
        assert_eq!(
            plan(&keepalive(at(10), 120, 180, 0), Some(&memory), at(20)),
            Some(Plan::Refresh)
        );
        // Silent: warning, then critical; the raised state comes from the registry.
        assert_eq!(
            plan(&keepalive(start, 120, 180, 0), Some(&memory), at(121)),
            Some(Plan::Raise(1))
        );
        assert_eq!(
            plan(&keepalive(start, 120, 180, 1), Some(&memory), at(150)),
            None
        );
        assert_eq!(
            plan(&keepalive(start, 120, 180, 1), Some(&memory), at(181)),
            Some(Plan::Raise(2))
        );
        // Back: resolved.
        assert_eq!(
            plan(&keepalive(at(182), 120, 180, 2), Some(&memory), at(183)),
            Some(Plan::Raise(0))
        );
        // Deregistration at the last stage: critical, or warning when there is no critical.
        let mut leaving = keepalive(start, 120, 180, 1);
        leaving.deregister = true;
        assert_eq!(plan(&leaving, None, at(181)), Some(Plan::Deregister));
        leaving.raised = 0;
        assert_eq!(plan(&leaving, None, at(121)), Some(Plan::Raise(1)));
        let mut no_critical = keepalive(start, 120, 0, 0);
        no_critical.deregister = true;
        assert_eq!(plan(&no_critical, None, at(121)), Some(Plan::Deregister));
        // A failed write waits before the next attempt.
        let failed = Memory {
            emitted: None,
            retry_after: Some(at(130)),
        };
        assert_eq!(
            plan(&keepalive(start, 120, 180, 0), Some(&failed), at(125)),
            None
        );
        assert_eq!(
            plan(&keepalive(start, 120, 180, 0), Some(&failed), at(130)),
            Some(Plan::Raise(1))
        );
        // A warning timeout of 0 means the default.
        assert_eq!(
            plan(&keepalive(start, 0, 0, 0), Some(&memory), at(119)),
            None
        );
        assert_eq!(
            plan(&keepalive(start, 0, 0, 0), Some(&memory), at(120)),
            Some(Plan::Raise(1))
        );
    }

    #[test]
    fn keepalive_event_is_sensus() {
        let entity = Entity {
            metadata: Some(ObjectMeta::named("default", "web")),
            entity_class: "agent".into(),
            ..Entity::default()
        };
        let state = keepalive(Instant::now(), 120, 180, 0);
        let output = silent_output("web", 121, 120);
        assert_eq!(
            output,
            "No keepalive sent from web for 121 seconds (>= 120)"
        );
        let event = keepalive_event(entity.clone(), &state, 1, output.clone(), 1000, 1121);
        let check = event.check.as_ref().unwrap();
        assert_eq!(
            check.metadata,
            Some(ObjectMeta::named("default", "keepalive"))
        );
        assert_eq!((check.status, check.output.as_str()), (1, output.as_str()));
        assert_eq!((check.interval, check.timeout, check.ttl), (20, 120, 180));
        assert_eq!(check.handlers, ["keepalive"]);
        assert_eq!(check.executed, 1121);
        assert_eq!(event.entity.as_ref().unwrap().last_seen, 1000);
        assert_eq!(event.timestamp, 1121);

        let mut paged = entity;
        paged.keepalive_handlers = vec!["pagerduty".into()];
        let event = keepalive_event(paged, &state, 0, String::new(), 1000, 1001);
        assert_eq!(event.check.unwrap().handlers, ["pagerduty"]);

        // The agent's keepalive pipelines (`keepalive_pipelines`) are named too.
        let piped = Keepalive {
            pipelines: vec!["keepalive_alerts".into()],
            ..state
        };
        let event = keepalive_event(
            entity_with_name("web"),
            &piped,
            0,
            String::new(),
            1000,
            1001,
        );
        let pipelines = event.check.unwrap().pipelines;
        assert_eq!(pipelines.len(), 1);
        assert_eq!(
            (pipelines[0].name.as_str(), pipelines[0].type_name.as_str()),
            ("keepalive_alerts", "Pipeline")
        );
    }

    fn entity_with_name(name: &str) -> Entity {
        Entity {
            metadata: Some(ObjectMeta::named("default", name)),
            entity_class: "agent".into(),
            ..Entity::default()
        }
    }

    #[test]
    fn alive_output_prints_go_time() {
        assert_eq!(
            alive_output("web", 1_704_067_205),
            "Keepalive last sent from web at 2024-01-01 00:00:05 +0000 UTC"
        );
    }

    #[test]
    fn resolution_of_a_deregistered_entitys_event() {
        let previous = crate::events::rules::process_event(
            None,
            Event {
                entity: Some(Entity {
                    metadata: Some(ObjectMeta::named("default", "web")),
                    ..Entity::default()
                }),
                check: Some(Check {
                    metadata: Some(ObjectMeta::named("default", "cpu")),
                    status: 2,
                    output: "high".into(),
                    ..Check::default()
                }),
                ..Event::default()
            },
            100,
        )
        .unwrap();
        let resolved = resolution_event(&previous, 200).unwrap();
        let check = resolved.check.unwrap();
        assert_eq!(check.status, 0);
        assert_eq!(check.output, "Resolving due to entity deregistering");
        assert_eq!(check.history.len(), 2);
        assert_ne!(resolved.id, previous.id);
    }

    fn hello(name: &str, warning: u32, critical: u32, deregister: bool) -> Hello {
        Hello {
            name: name.to_owned(),
            subscriptions: vec!["linux".to_owned()],
            keepalive_interval: 1,
            keepalive_warning_timeout: warning,
            keepalive_critical_timeout: critical,
            deregister,
            ..Hello::default()
        }
    }

    /// The keepalive statuses the pipeline was handed for `entity`, in order.
    fn statuses(sink: &crate::agents::scheduler::tests::CollectingSink, entity: &str) -> Vec<u32> {
        sink.0
            .lock()
            .iter()
            .filter_map(|(_, event)| {
                let check = event.check.as_ref()?;
                let name = &event.entity.as_ref()?.metadata.as_ref()?.name;
                let check_name = &check.metadata.as_ref()?.name;
                (name == entity && check_name == KEEPALIVE_CHECK).then_some(check.status)
            })
            .collect()
    }

    #[tokio::test]
    async fn the_loop_raises_resolves_and_deregisters() {
        let dir = tempfile::tempdir().unwrap();
        let (state, sink) = test_state(dir.path()).await;
        let sessions = Arc::clone(&state.sessions);
        let (web, _web_rx) = sessions.register("default", &hello("web", 1, 2, false), true);
        let (gone, _gone_rx) = sessions.register("default", &hello("gone", 1, 0, true), true);
        let (stop, shutdown) = watch::channel(false);
        let task = spawn(state.clone(), Arc::clone(&sessions), shutdown);

        // Passing, then warning, then critical as keepalives stay away.
        eventually("ok, warning, critical", Duration::from_secs(10), || async {
            (statuses(&sink, "web") == [0, 1, 2]).then_some(())
        })
        .await;
        let (event, created_by) = stored_event(&state, "web", KEEPALIVE_CHECK).await.unwrap();
        assert_eq!(created_by, KEEPALIVE_CREATED_BY);
        let check = event.check.unwrap();
        assert_eq!(check.status, 2);
        assert!(
            check.output.starts_with("No keepalive sent from web for "),
            "{}",
            check.output
        );
        assert!(check.output.ends_with("(>= 2)"), "{}", check.output);
        let raised = |id: &EntityId| {
            sessions
                .keepalives()
                .into_iter()
                .find(|(other, _)| other == id)
                .map(|(_, keepalive)| keepalive.raised)
        };
        assert_eq!(raised(&web.id), Some(2));
        // The first keepalive event created the entity.
        assert!(state
            .resources
            .get(Kind::Entity, "default", "web")
            .await
            .unwrap()
            .is_some());

        // Keepalives resume: resolved.
        sessions.keepalive(&web.id);
        eventually("the resolution", Duration::from_secs(5), || async {
            statuses(&sink, "web")
                .starts_with(&[0, 1, 2, 0])
                .then_some(())
        })
        .await;

        // `gone` asked to be deregistered and has no critical timeout: at the warning it is
        // deleted with its events, its resolution goes to the pipeline, and it is forgotten.
        eventually("the deregistration", Duration::from_secs(10), || async {
            let entity = state
                .resources
                .get(Kind::Entity, "default", "gone")
                .await
                .unwrap();
            (entity.is_none() && raised(&gone.id).is_none() && !statuses(&sink, "gone").is_empty())
                .then_some(())
        })
        .await;
        assert!(stored_event(&state, "gone", KEEPALIVE_CHECK)
            .await
            .is_none());
        let resolution = sink
            .0
            .lock()
            .iter()
            .filter_map(|(_, event)| event.check.clone())
            .find(|check| check.output == "Resolving due to entity deregistering");
        assert_eq!(resolution.map(|check| check.status), Some(0));
        assert_eq!(
            statuses(&sink, "gone"),
            [0, 0],
            "stored passing event, then its resolution"
        );

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the watchdog stops on shutdown")
            .unwrap();
    }
}
