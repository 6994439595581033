//! The check scheduler and the check TTL watchdog.
//!
//! One task keeps an in-memory view of every check and hook (a list of the store, then a watch
//! from the listed revision, listed again when the watch falls behind or ends), fires published
//! checks on their interval or cron schedule and sends a check request to every matching agent
//! session (one of them for a round-robin check). The same task watches stored events and raises
//! a warning event for an entity/check whose result is overdue by more than the check's `ttl`.
//!
//! The timing lives in pure functions of `now` (unix seconds): `Timetable` for firings and
//! `TtlTracker` for overdue results, so they are tested on a simulated clock. The async loop
//! around them only reads the clock, the store and the sessions.
//!
//! Ad hoc executions (Sensu's `POST …/checks/{check}/execute`) reach the loop through a bounded
//! queue ([`Adhoc`], [`ADHOC_QUEUE`] requests) and go out through the same firing path as a
//! scheduled firing (hooks, secrets, slices, failure events), to this backend's sessions; they
//! leave the check's schedule as it is.
//!
//! A firing of a check with `proxy_requests` is first matched against the entities the loop
//! holds (see [`super::proxy`]), off the loop on the JavaScript engine, and comes back as one
//! firing per matching entity (splayed ones wait in the loop until their second). A scheduled
//! firing that one of the check's `subdues` windows holds is counted and not sent; cron
//! checks fire in their `CRON_TZ=` zone (`cairn_api::schedule`).
//!
//! Interval checks are spread over their interval by a splay: a check fires at the unix times `t`
//! with `(t - offset) % interval == 0`, where `offset` is a hash of `namespace/name` modulo the
//! interval, so the spread is the same after a restart and on every backend.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use cairn_api::agent::{BackendMessage, CheckRequest};
use cairn_api::model::{Asset, Check, CheckConfig, Entity, Event, HookConfig};
use cairn_api::schedule::{self, CronSchedule, Subdue};
use cairn_api::{Kind, ObjectMeta, Spec};

use crate::agents::proxy;
use crate::agents::sessions::{Session, Sessions};
use crate::agents::watchdog::KEEPALIVE_CHECK;
use crate::agents::Agents;
use crate::clock::unix_now;
use crate::store::keyspace;
use crate::store::reflector::{Reflector, View};
use crate::store::resources::{self, Resources};
use crate::store::{Entry, Revision, Store, StoreError, WatchEvent};

/// `created_by` of the events the TTL watchdog raises.
pub(crate) const TTL_CREATED_BY: &str = "cairn/ttl";

/// Keys read per store page when the view is (re)loaded.
const LIST_PAGE: usize = 1000;

/// TTL events stored at once: each is a guarded store write, and concurrent writes share a
/// commit, so a burst of expiries does not take one fsync each in turn.
const TTL_CONCURRENCY: usize = 32;

/// Check requests one firing sends per second at most. A check that matches more sessions is
/// spread over several seconds, sessions in entity order in equal slices, one slice at each tick
/// (each request `issued` at its own second), and over no more than half its interval (or 30 s
/// for a cron check): 10,000 agents on one 10 s check become 2,000 requests a second for 5 s
/// instead of a burst of 10,000 results that the store must take in one second. Sensu's
/// `splay_coverage` does the same for proxy requests. An agent keeps its slot from firing to
/// firing while the fleet does not change, so its results stay one interval apart.
const FANOUT_PER_SECOND: usize = 2_000;

/// Ad hoc requests waiting for the scheduler's loop at most; a request beyond it is refused
/// ([`AdhocError::QueueFull`], a 503), never waited for. The loop takes one between ticks, so
/// the queue only fills when requests come faster than the loop runs.
pub(crate) const ADHOC_QUEUE: usize = 1_000;

/// An ad hoc execution of one check: its stored configuration, with the subscriptions it goes
/// to (the check's own unless the request named others).
#[derive(Debug)]
pub(crate) struct AdhocRequest {
    /// The check's namespace.
    pub namespace: String,
    /// The check, its metadata in the spec as a check request carries it (see
    /// [`request_config`]).
    pub config: CheckConfig,
    /// Who asked, for the log.
    pub creator: String,
    /// Why, for the log (Sensu's `reason`).
    pub reason: String,
}

/// The sending side of the ad hoc queue, held by the API (cloned cheaply).
#[derive(Debug, Clone)]
pub(crate) struct Adhoc(mpsc::Sender<AdhocRequest>);

/// The receiving side of the ad hoc queue, handed to [`spawn`].
#[derive(Debug)]
pub(crate) struct AdhocQueue(mpsc::Receiver<AdhocRequest>);

/// Why an ad hoc request was not queued.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdhocError {
    /// [`ADHOC_QUEUE`] requests are already waiting. Expected under a burst; retrying a little
    /// later helps.
    #[error("{ADHOC_QUEUE} ad hoc check requests are already waiting; retry later")]
    QueueFull,
    /// The scheduler has stopped (shutdown). A retry here does not help.
    #[error("the scheduler is not running")]
    Stopped,
}

/// A new ad hoc queue of [`ADHOC_QUEUE`] requests.
pub(crate) fn adhoc_queue() -> (Adhoc, AdhocQueue) {
    let (sender, receiver) = mpsc::channel(ADHOC_QUEUE);
    (Adhoc(sender), AdhocQueue(receiver))
}

// === impl Adhoc ===

impl Adhoc {
    /// Queues `request` for the scheduler's loop without waiting.
    ///
    /// # Errors
    /// [`AdhocError::QueueFull`] when [`ADHOC_QUEUE`] requests wait already,
    /// [`AdhocError::Stopped`] once the scheduler has stopped.
    pub(crate) fn request(&self, request: AdhocRequest) -> Result<(), AdhocError> {
        self.0.try_send(request).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => AdhocError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => AdhocError::Stopped,
        })
    }
}

// === impl AdhocQueue ===

impl AdhocQueue {
    /// The next waiting request, if any: what the API queued, for its tests.
    #[cfg(test)]
    pub(crate) fn try_recv(&mut self) -> Option<AdhocRequest> {
        self.0.try_recv().ok()
    }
}

/// Counters of the scheduler, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct SchedulerStats {
    /// Check firings: one per check per scheduled time (and per ad hoc request), whether or not
    /// a session matched.
    pub firings: AtomicU64,
    /// Check requests queued for a session.
    pub requests_sent: AtomicU64,
    /// Check requests not queued because the session's queue was full or the session ended.
    pub requests_dropped: AtomicU64,
    /// Check requests not sent because their secrets could not be resolved or the session is
    /// not authenticated with a client certificate (each stores a status 3 event instead).
    pub requests_undeliverable: AtomicU64,
    /// Events raised by the TTL watchdog.
    pub ttl_events: AtomicU64,
    /// Scheduled firings not sent because the check's `subdues` held the time.
    pub subdued_firings: AtomicU64,
}

/// Starts the scheduler (with its TTL watchdog); returns its counters and its task.
///
/// The task runs until `shutdown` holds `true`.
///
/// # Caveats
///
/// - Dropping the sender of `shutdown` does not stop the task (abort it, or send `true`).
/// - Every backend running a scheduler raises TTL events for the results it sees, so on a store
///   shared by several backends only one should run it (check requests are not affected: each
///   backend only sends to its own sessions).
pub(crate) fn spawn(
    state: Agents,
    sessions: Arc<Sessions>,
    adhoc: AdhocQueue,
    shutdown: watch::Receiver<bool>,
) -> (Arc<SchedulerStats>, JoinHandle<()>) {
    let stats = Arc::new(SchedulerStats::default());
    let (resolved_sender, resolved) = mpsc::unbounded_channel();
    let (proxied_sender, proxied) = mpsc::unbounded_channel();
    let scheduler = Scheduler {
        state,
        timetable: Timetable::default(),
        dispatcher: Dispatcher {
            sessions,
            stats: Arc::clone(&stats),
            hooks: HashMap::new(),
            warned_hooks: HashSet::new(),
            assets: HashMap::new(),
            paced: BTreeMap::new(),
            undeliverable: Vec::new(),
        },
        ttl: TtlTracker::default(),
        resolved,
        resolved_sender,
        adhoc: adhoc.0,
        adhoc_firings: 0,
        entities: HashMap::new(),
        proxied,
        proxied_sender,
        delayed: BTreeMap::new(),
    };
    (stats, tokio::spawn(run(scheduler, shutdown)))
}

/// Resources of one kind by namespace, then name.
type ByName<T> = HashMap<String, HashMap<String, T>>;

/// `(namespace, name)` of a check or hook.
type NameKey = (String, String);

/// `(namespace, entity name, check name)` of an event.
type EventKey = (String, String, String);

// === the loop ===

struct Scheduler {
    state: Agents,
    timetable: Timetable,
    dispatcher: Dispatcher,
    ttl: TtlTracker,
    /// Firings whose secrets were resolved (or failed to) off the loop, back for dispatch.
    resolved: mpsc::UnboundedReceiver<(Prepared, Result<(), String>)>,
    resolved_sender: mpsc::UnboundedSender<(Prepared, Result<(), String>)>,
    /// Ad hoc requests from the API (bounded, [`ADHOC_QUEUE`]).
    adhoc: mpsc::Receiver<AdhocRequest>,
    /// Ad hoc firings so far: the round-robin turn of the next one.
    adhoc_firings: u64,
    /// Every stored entity, by namespace and name, for proxy checks' `entity_attributes` (at
    /// most [`proxy::MAX_PROXY_ENTITIES`]).
    entities: ByName<Entity>,
    /// Proxy firings whose entities were matched off the loop, back for dispatch (one message
    /// per firing of a check with `proxy_requests`).
    proxied: mpsc::UnboundedReceiver<(Firing, Result<Vec<Entity>, String>)>,
    proxied_sender: mpsc::UnboundedSender<(Firing, Result<Vec<Entity>, String>)>,
    /// Splayed proxy requests, by the second they are due.
    delayed: BTreeMap<i64, Vec<Firing>>,
}

async fn run(mut scheduler: Scheduler, mut shutdown: watch::Receiver<bool>) {
    let tick = tokio::time::sleep_until(next_second());
    tokio::pin!(tick);
    let store = Arc::clone(scheduler.state.resources.store());
    let mut reflector = Reflector::new(store, keyspace::RESOURCES, "scheduler");
    // Loaded outside the select: a tick must not cancel a load half-way.
    while reflector.sync(&mut scheduler, &mut shutdown).await {
        loop {
            tokio::select! {
                biased;
                () = crate::shutdown::requested(&mut shutdown) => return,
                () = &mut tick => {
                    scheduler.tick(unix_now()).await;
                    tick.as_mut().reset(next_second());
                }
                Some((prepared, outcome)) = scheduler.resolved.recv() => {
                    scheduler.resolved(prepared, outcome, unix_now());
                }
                Some(request) = scheduler.adhoc.recv() => {
                    scheduler.adhoc(request, unix_now());
                }
                Some((firing, matched)) = scheduler.proxied.recv() => {
                    scheduler.expand_proxy(firing, matched, unix_now());
                }
                change = reflector.change() => match change {
                    Some(change) => scheduler.apply(&change, unix_now()),
                    None => break,
                },
            }
        }
    }
}

/// The instant just after the next whole unix second.
fn next_second() -> tokio::time::Instant {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let to_next =
        Duration::from_secs(1) - Duration::from_nanos(u64::from(since_epoch.subsec_nanos()));
    // A millisecond past the boundary, so that the clock reads the new second when it fires.
    tokio::time::Instant::now() + to_next + Duration::from_millis(1)
}

#[async_trait::async_trait]
impl View for Scheduler {
    async fn reload(&mut self, _: &dyn Store) -> Result<Revision, StoreError> {
        Scheduler::reload(self, unix_now()).await
    }

    fn apply(&mut self, change: &WatchEvent) {
        Scheduler::apply(self, change, unix_now());
    }
}

// === impl Scheduler ===

impl Scheduler {
    /// Lists checks, hooks and events afresh and returns the revision to watch from.
    async fn reload(&mut self, now: i64) -> Result<Revision, StoreError> {
        let store = Arc::clone(self.state.resources.store());
        // Read before listing: the watch then replays whatever the listing may have missed, and
        // applying a change twice leaves the view as applying it once.
        let revision = store.revision().await?;

        let mut listed = HashSet::new();
        let mut pages = Pages::new(&*store, Resources::prefix(Kind::CheckConfig, None));
        while let Some(page) = pages.next().await? {
            for entry in &page {
                if let Some(Watched::Check(namespace, name)) = classify(&entry.key) {
                    if let Some(config) = decode_check(entry) {
                        let key = (namespace.to_owned(), name.to_owned());
                        listed.insert(key.clone());
                        self.timetable.upsert(key, config, now);
                    }
                }
            }
        }
        self.timetable.retain(|key| listed.contains(key));

        self.dispatcher.hooks = load_by_name(&*store, Kind::HookConfig, decode_hook).await?;
        self.dispatcher.warned_hooks.clear();
        self.dispatcher.assets = load_by_name(&*store, Kind::Asset, decode_asset).await?;
        self.entities = load_by_name(&*store, Kind::Entity, decode_entity).await?;
        let held: usize = self.entities.values().map(HashMap::len).sum();
        if held > proxy::MAX_PROXY_ENTITIES {
            tracing::warn!(
                held,
                limit = proxy::MAX_PROXY_ENTITIES,
                "more entities than proxy checks match against; the rest are left out"
            );
            let mut left = proxy::MAX_PROXY_ENTITIES;
            for by_name in self.entities.values_mut() {
                let keep = by_name.len().min(left);
                left -= keep;
                let names: Vec<String> = by_name.keys().skip(keep).cloned().collect();
                for name in names {
                    by_name.remove(&name);
                }
            }
        }

        let mut listed = HashSet::new();
        let mut pages = Pages::new(&*store, Resources::prefix(Kind::Event, None));
        while let Some(page) = pages.next().await? {
            for entry in &page {
                if let Some(Watched::Event(namespace, entity, check)) = classify(&entry.key) {
                    let key = (namespace.to_owned(), entity.to_owned(), check.to_owned());
                    self.observe_event(&key, entry, now, true);
                    listed.insert(key);
                }
            }
        }
        self.ttl.retain(|key| listed.contains(key));
        tracing::debug!(
            revision,
            checks = self.timetable.checks.len(),
            ttl_tracked = self.ttl.entries.len(),
            "scheduler view loaded"
        );
        Ok(revision)
    }

    /// Applies one change seen by the watch.
    fn apply(&mut self, change: &WatchEvent, now: i64) {
        match change {
            WatchEvent::Put(entry) => match classify(&entry.key) {
                Some(Watched::Check(namespace, name)) => {
                    if let Some(config) = decode_check(entry) {
                        let key = (namespace.to_owned(), name.to_owned());
                        self.timetable.upsert(key, config, now);
                    }
                }
                Some(Watched::Hook(namespace, name)) => {
                    if let Some(hook) = decode_hook(entry) {
                        self.dispatcher
                            .hooks
                            .entry(namespace.to_owned())
                            .or_default()
                            .insert(name.to_owned(), hook);
                        self.dispatcher.warned_hooks.clear();
                    }
                }
                Some(Watched::Asset(namespace, name)) => {
                    if let Some(asset) = decode_asset(entry) {
                        self.dispatcher
                            .assets
                            .entry(namespace.to_owned())
                            .or_default()
                            .insert(name.to_owned(), asset);
                    }
                }
                Some(Watched::Event(namespace, entity, check)) => {
                    let key = (namespace.to_owned(), entity.to_owned(), check.to_owned());
                    self.observe_event(&key, entry, now, false);
                }
                Some(Watched::Entity(namespace, name)) => {
                    self.entity_changed(namespace, name, entry);
                }
                None => {}
            },
            WatchEvent::Delete { key, .. } => match classify(key) {
                Some(Watched::Check(namespace, name)) => {
                    self.timetable
                        .remove(&(namespace.to_owned(), name.to_owned()));
                    self.ttl.forget_check(namespace, name);
                }
                Some(Watched::Hook(namespace, name)) => {
                    if let Some(hooks) = self.dispatcher.hooks.get_mut(namespace) {
                        hooks.remove(name);
                    }
                }
                Some(Watched::Asset(namespace, name)) => {
                    if let Some(assets) = self.dispatcher.assets.get_mut(namespace) {
                        assets.remove(name);
                    }
                }
                // A deleted entity's session keeps what it had until it reconnects (and
                // registers the entity again).
                Some(Watched::Entity(namespace, name)) => {
                    if let Some(by_name) = self.entities.get_mut(namespace) {
                        by_name.remove(name);
                    }
                }
                Some(Watched::Event(namespace, entity, check)) => {
                    self.ttl
                        .remove(&(namespace.to_owned(), entity.to_owned(), check.to_owned()));
                }
                None => {}
            },
        }
    }

    /// A stored entity changed: a connected agent of it gets the checks of its subscriptions
    /// from now on (an operator changed a backend-managed entity through the API). Sessions
    /// registered before read the entity when they connected, so nothing is listed on reload.
    fn entity_changed(&mut self, namespace: &str, name: &str, entry: &Entry) {
        let Some(entity) = decode_entity(entry) else {
            return;
        };
        let subscriptions = entity.subscriptions.clone();
        let config = entity
            .metadata
            .as_ref()
            .and_then(|meta| crate::entity::entity_config(meta, &entity));
        let is_agent = entity.entity_class == "agent";
        let held: usize = self.entities.values().map(HashMap::len).sum();
        let by_name = self.entities.entry(namespace.to_owned()).or_default();
        if by_name.contains_key(name) || held < proxy::MAX_PROXY_ENTITIES {
            by_name.insert(name.to_owned(), entity);
        } else {
            tracing::warn!(%namespace, entity = %name, limit = proxy::MAX_PROXY_ENTITIES, "entity left out of proxy check matching");
        }
        if !is_agent {
            return;
        }
        let id = crate::entity::EntityId::new(namespace, name);
        if let Some(config) = config {
            self.dispatcher.sessions.push_entity_config(&id, config);
        }
        if self
            .dispatcher
            .sessions
            .set_subscriptions(&id, subscriptions)
        {
            tracing::info!(%namespace, entity = %name, "agent subscriptions changed through the API");
        }
    }

    /// Tracks (or stops tracking) the TTL of a stored event.
    ///
    /// `loading` is set while the view is listed: the result then arrived at some unknown time
    /// before, taken from its `executed` time unless the view already knew it.
    fn observe_event(&mut self, key: &EventKey, entry: &Entry, now: i64, loading: bool) {
        if key.2 == KEEPALIVE_CHECK {
            // The keepalive watchdog owns keepalive events.
            return;
        }
        let probe = match serde_json::from_slice::<EventProbe>(&entry.value) {
            Ok(probe) => probe,
            Err(err) => {
                tracing::error!(key = %entry.key, error = %err, "unreadable stored event");
                self.ttl.remove(key);
                return;
            }
        };
        let Some(check) = probe.spec.check else {
            self.ttl.remove(key);
            return;
        };
        if probe.metadata.created_by == TTL_CREATED_BY {
            self.ttl
                .raised_stored(key, check.ttl, check.executed, entry.mod_revision);
            return;
        }
        let config_ttl = self
            .timetable
            .config(&key.0, &key.2)
            .map(|config| config.ttl);
        if check.ttl <= 0 && config_ttl.unwrap_or(0) <= 0 {
            self.ttl.remove(key);
            return;
        }
        let seen_at = match self.ttl.entries.get(key) {
            // Already seen: a listing, or the watch replaying what the listing had.
            Some(tracked) if tracked.revision >= entry.mod_revision => return,
            Some(_) => now,
            None if loading && check.executed > 0 => check.executed.min(now),
            None => now,
        };
        self.ttl.result(key, check.ttl, seen_at, entry.mod_revision);
    }

    /// One second of scheduling: fires due checks and raises overdue TTLs.
    /// Sends a firing whose secrets were resolved, or stores why it cannot be sent.
    fn resolved(&mut self, prepared: Prepared, outcome: Result<(), String>, now: i64) {
        match outcome {
            Ok(()) => self.dispatcher.dispatch(prepared, now),
            Err(reason) => self.dispatcher.undeliverable(prepared, reason),
        }
        spawn_undeliverable_events(&self.state, self.dispatcher.take_undeliverable(), now);
    }

    async fn tick(&mut self, now: i64) {
        let mut firings = self.timetable.due(now);
        while let Some(entry) = self.delayed.first_entry() {
            if *entry.key() > now {
                break;
            }
            firings.extend(entry.remove());
        }
        firings.retain(|firing| {
            if !firing.subdued {
                return true;
            }
            self.dispatcher
                .stats
                .subdued_firings
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(namespace = %firing.key.0, check = %firing.key.1, "check is subdued; not sent");
            false
        });
        self.fire(&firings, now);
        // Every backend tracks TTLs; the watchdog leader raises them.
        if !self
            .dispatcher
            .sessions
            .coordinator()
            .is_leader(crate::coord::Role::Watchdogs)
        {
            return;
        }
        self.raise_ttls(now).await;
    }

    /// Fires one ad hoc request now: the same path as a scheduled firing, the schedule left as
    /// it is. A round-robin check goes to one of this backend's matching sessions (the request
    /// reached this backend alone).
    fn adhoc(&mut self, request: AdhocRequest, now: i64) {
        let AdhocRequest {
            namespace,
            config,
            creator,
            reason,
        } = request;
        let name = config
            .metadata
            .as_ref()
            .map(|meta| meta.name.clone())
            .unwrap_or_default();
        tracing::info!(%namespace, check = %name, %creator, %reason, "ad hoc check execution");
        let firing = Firing {
            key: (namespace, name),
            config: Arc::new(config),
            at: now,
            number: self.adhoc_firings,
            adhoc: true,
            // An ad hoc request runs in a subdue window too, as Sensu's (only its schedulers
            // skip subdued checks).
            subdued: false,
        };
        self.adhoc_firings += 1;
        self.fire(&[firing], now);
    }

    /// Sends `firings` (those whose secrets must be resolved once that is done).
    fn fire(&mut self, firings: &[Firing], now: i64) {
        let (proxies, direct): (Vec<&Firing>, Vec<&Firing>) = firings
            .iter()
            .partition(|firing| firing.config.proxy_requests.is_some());
        for firing in proxies {
            self.match_proxy_entities(firing);
        }
        let direct: Vec<Firing> = direct.into_iter().cloned().collect();
        for mut prepared in self.dispatcher.fire(&direct, now) {
            // Resolved off the loop: a slow or unreachable provider must not hold up the other
            // checks (its own failures are answered from the secrets cache's backoff).
            let secrets = Arc::clone(&self.state.secrets);
            let back = self.resolved_sender.clone();
            tokio::spawn(async move {
                let outcome = prepared.resolve_secrets(&secrets).await;
                // The loop only stops at shutdown, when nothing needs sending any more.
                let _ = back.send((prepared, outcome));
            });
        }
        spawn_undeliverable_events(&self.state, self.dispatcher.take_undeliverable(), now);
    }

    /// Matches a proxy check's `entity_attributes` against the entities of its namespace, off
    /// the loop (on the JavaScript engine); the outcome comes back to
    /// [`Scheduler::expand_proxy`].
    fn match_proxy_entities(&mut self, firing: &Firing) {
        let attributes = firing
            .config
            .proxy_requests
            .as_ref()
            .map(|requests| requests.entity_attributes.clone())
            .unwrap_or_default();
        let candidates: Vec<Entity> = self
            .entities
            .get(&firing.key.0)
            .map(|by_name| by_name.values().cloned().collect())
            .unwrap_or_default();
        let js = self.state.js.clone();
        let back = self.proxied_sender.clone();
        let firing = firing.clone();
        tokio::spawn(async move {
            let mut matched = proxy::matching(&js, &attributes, candidates).await;
            if let Ok(entities) = &mut matched {
                entities.sort_by(|a, b| proxy::name_of(a).cmp(proxy::name_of(b)));
            }
            // The loop only stops at shutdown, when nothing needs sending any more.
            let _ = back.send((firing, matched));
        });
    }

    /// Fans a proxy firing out over the entities it matched: one request each, at once or
    /// splayed; an entity whose tokens do not substitute gets a status 3 event instead.
    fn expand_proxy(&mut self, firing: Firing, matched: Result<Vec<Entity>, String>, now: i64) {
        let (namespace, check) = &firing.key;
        let entities = match matched {
            Ok(entities) => entities,
            Err(reason) => {
                tracing::warn!(%namespace, %check, %reason, "proxy check not run");
                return;
            }
        };
        if entities.is_empty() {
            tracing::debug!(%namespace, %check, "no entity matches the proxy check's entity_attributes");
            return;
        }
        let requests = firing.config.proxy_requests.clone().unwrap_or_default();
        let period = if firing.config.interval > 0 {
            firing.config.interval
        } else {
            60
        };
        let delays = proxy::splay_delays(
            entities.len(),
            requests.splay,
            requests.splay_coverage,
            period,
        );
        let mut now_firings = Vec::new();
        for (entity, delay) in entities.iter().zip(delays) {
            match proxy::for_entity(&firing.config, entity) {
                Ok(mut config) => {
                    config.proxy_requests = None;
                    let one = Firing {
                        config: Arc::new(config),
                        ..firing.clone()
                    };
                    if delay == 0 {
                        now_firings.push(one);
                    } else {
                        self.delayed
                            .entry(now.saturating_add(delay))
                            .or_default()
                            .push(one);
                    }
                }
                Err(reason) => self.dispatcher.undeliverable.push(Undeliverable {
                    namespace: namespace.clone(),
                    config: CheckConfig {
                        proxy_entity_name: proxy::name_of(entity).to_owned(),
                        ..CheckConfig::clone(&firing.config)
                    },
                    entities: vec![proxy::name_of(entity).to_owned()],
                    reason,
                }),
            }
        }
        tracing::debug!(%namespace, %check, entities = entities.len(), "proxy check fanned out");
        self.fire(&now_firings, now);
    }

    /// Raises the TTL events that are due (on the watchdogs leader).
    async fn raise_ttls(&mut self, now: i64) {
        let timetable = &self.timetable;
        // The ttl of each check, looked up once per tick rather than once per entity.
        let mut check_ttls: HashMap<(&str, &str), Option<i64>> = HashMap::new();
        let due = self.ttl.due(now, |key, tracked| {
            check_ttls
                .entry((&key.0, &key.2))
                .or_insert_with(|| timetable.config(&key.0, &key.2).map(|config| config.ttl))
                .unwrap_or(tracked.event_ttl)
        });
        if due.is_empty() {
            return;
        }
        let state = &self.state;
        let outcomes: Vec<(EventKey, RaiseOutcome)> = futures::stream::iter(due)
            .map(|due| async move {
                let outcome = raise_ttl(state, &due, now).await;
                (due.key, outcome)
            })
            .buffer_unordered(TTL_CONCURRENCY)
            .collect()
            .await;
        for (key, outcome) in outcomes {
            match outcome {
                RaiseOutcome::Raised => {
                    self.dispatcher
                        .stats
                        .ttl_events
                        .fetch_add(1, Ordering::Relaxed);
                    self.ttl.mark_raised(&key, now);
                }
                // The event changed since the watch last saw it; decide again once it has.
                RaiseOutcome::Changed => {}
                RaiseOutcome::Failed(reason) => {
                    tracing::warn!(
                        namespace = %key.0,
                        entity = %key.1,
                        check = %key.2,
                        error = %reason,
                        "cannot raise the ttl event; trying again after another ttl"
                    );
                    self.ttl.mark_raised(&key, now);
                }
            }
        }
    }
}

/// Keys of one prefix, a page at a time.
struct Pages<'a> {
    store: &'a dyn Store,
    prefix: String,
    after: Option<String>,
    done: bool,
}

impl<'a> Pages<'a> {
    fn new(store: &'a dyn Store, prefix: String) -> Pages<'a> {
        Pages {
            store,
            prefix,
            after: None,
            done: false,
        }
    }

    async fn next(&mut self) -> Result<Option<Vec<Entry>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .store
            .list(&self.prefix, self.after.as_deref(), LIST_PAGE)
            .await?;
        self.after = page.entries.last().map(|entry| entry.key.clone());
        self.done = !page.more || self.after.is_none();
        Ok(Some(page.entries))
    }
}

/// What a watched key is.
#[derive(Debug, PartialEq, Eq)]
enum Watched<'a> {
    /// `res/checks/<namespace>/<name>`.
    Check(&'a str, &'a str),
    /// `res/hooks/<namespace>/<name>`.
    Hook(&'a str, &'a str),
    /// `res/assets/<namespace>/<name>`.
    Asset(&'a str, &'a str),
    /// `res/entities/<namespace>/<name>`.
    Entity(&'a str, &'a str),
    /// `res/events/<namespace>/<entity>/<check>`.
    Event(&'a str, &'a str, &'a str),
}

fn classify(key: &str) -> Option<Watched<'_>> {
    let (plural, rest) = key.strip_prefix(keyspace::RESOURCES)?.split_once('/')?;
    let (namespace, name) = rest.split_once('/')?;
    if plural == Kind::CheckConfig.plural() {
        Some(Watched::Check(namespace, name))
    } else if plural == Kind::HookConfig.plural() {
        Some(Watched::Hook(namespace, name))
    } else if plural == Kind::Asset.plural() {
        Some(Watched::Asset(namespace, name))
    } else if plural == Kind::Entity.plural() {
        Some(Watched::Entity(namespace, name))
    } else if plural == Kind::Event.plural() {
        let (entity, check) = name.split_once('/')?;
        Some(Watched::Event(namespace, entity, check))
    } else {
        None
    }
}

/// A stored check with its metadata put back into the spec (as a check request carries it).
fn decode_check(entry: &Entry) -> Option<CheckConfig> {
    match resources::decode(entry) {
        Ok(stored) => request_config(stored.resource),
        Err(err) => {
            tracing::error!(key = %entry.key, error = %err, "unreadable stored check");
            None
        }
    }
}

/// A check resource as a check request carries it: its metadata put back into the spec;
/// `None` for a resource of another kind.
pub(crate) fn request_config(resource: cairn_api::Resource) -> Option<CheckConfig> {
    match resource.spec {
        Spec::CheckConfig(mut config) => {
            config.metadata = Some(resource.metadata);
            Some(config)
        }
        _ => None,
    }
}

/// A stored hook with its metadata put back into the spec.
fn decode_hook(entry: &Entry) -> Option<HookConfig> {
    match resources::decode(entry) {
        Ok(stored) => match stored.resource.spec {
            Spec::HookConfig(mut hook) => {
                hook.metadata = Some(stored.resource.metadata);
                Some(hook)
            }
            _ => None,
        },
        Err(err) => {
            tracing::error!(key = %entry.key, error = %err, "unreadable stored hook");
            None
        }
    }
}

/// Every stored resource of `kind` that `decode` takes, by namespace and name.
async fn load_by_name<T>(
    store: &dyn Store,
    kind: Kind,
    decode: fn(&Entry) -> Option<T>,
) -> Result<ByName<T>, StoreError> {
    let prefix = Resources::prefix(kind, None);
    let mut found: ByName<T> = HashMap::new();
    let mut pages = Pages::new(store, prefix.clone());
    while let Some(page) = pages.next().await? {
        for entry in &page {
            let Some((namespace, name)) = entry
                .key
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            if let Some(resource) = decode(entry) {
                found
                    .entry(namespace.to_owned())
                    .or_default()
                    .insert(name.to_owned(), resource);
            }
        }
    }
    Ok(found)
}

/// A stored asset with its metadata put back into the spec (as a check request carries it).
fn decode_asset(entry: &Entry) -> Option<Asset> {
    match resources::decode(entry) {
        Ok(stored) => match stored.resource.spec {
            Spec::Asset(mut asset) => {
                asset.metadata = Some(stored.resource.metadata);
                Some(asset)
            }
            _ => None,
        },
        Err(err) => {
            tracing::error!(key = %entry.key, error = %err, "unreadable stored asset");
            None
        }
    }
}

/// A stored entity with its metadata put back into the spec.
fn decode_entity(entry: &Entry) -> Option<Entity> {
    match resources::decode(entry) {
        Ok(stored) => match stored.resource.spec {
            Spec::Entity(mut entity) => {
                entity.metadata = Some(stored.resource.metadata);
                Some(entity)
            }
            _ => None,
        },
        Err(err) => {
            tracing::error!(key = %entry.key, error = %err, "unreadable stored entity");
            None
        }
    }
}

/// The few fields of a stored event the TTL watchdog reads, decoded without building the
/// event (results arrive at the ingest rate).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EventProbe {
    metadata: ProbeMeta,
    spec: ProbeSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ProbeMeta {
    created_by: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ProbeSpec {
    check: Option<ProbeCheck>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ProbeCheck {
    ttl: i64,
    executed: i64,
}

// === schedules ===

/// When a check fires.
#[derive(Debug, Clone)]
enum Schedule {
    /// At the unix times `t` with `(t - offset) % interval == 0`.
    Interval { interval: i64, offset: i64 },
    /// At each occurrence of a cron pattern, in its zone.
    Cron(Box<CronSchedule>),
}

impl Schedule {
    /// The schedule of a check; `Ok(None)` when it is not scheduled (not published, no
    /// subscriptions, or neither an interval nor a cron schedule).
    ///
    /// A cron schedule wins over an interval (validation refuses both).
    fn of(namespace: &str, name: &str, config: &CheckConfig) -> Result<Option<Schedule>, String> {
        if !config.publish || config.subscriptions.is_empty() {
            return Ok(None);
        }
        if !config.cron.trim().is_empty() {
            let cron = CronSchedule::parse(&config.cron)?;
            return Ok(Some(Schedule::Cron(Box::new(cron))));
        }
        if config.interval > 0 {
            return Ok(Some(Schedule::Interval {
                interval: config.interval,
                offset: splay_offset(namespace, name, config.interval),
            }));
        }
        Ok(None)
    }

    /// The first firing strictly after `after`; `None` when a cron pattern never matches again.
    fn next_after(&self, after: i64) -> Option<i64> {
        match self {
            Schedule::Interval { interval, offset } => Some(next_interval_fire(
                after.saturating_add(1),
                *interval,
                *offset,
            )),
            Schedule::Cron(cron) => cron.next_after(after),
        }
    }
}

/// The splay of an interval check: a hash (FNV-1a, stable across builds and platforms) of
/// `namespace/name`, modulo the interval. `interval` must be positive.
fn splay_offset(namespace: &str, name: &str, interval: i64) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in namespace.bytes().chain([b'/']).chain(name.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let interval = u64::try_from(interval.max(1)).expect("positive");
    i64::try_from(hash % interval).expect("below an i64 interval")
}

/// The first `t >= at_or_after` with `(t - offset) % interval == 0`. `interval` must be positive.
fn next_interval_fire(at_or_after: i64, interval: i64, offset: i64) -> i64 {
    at_or_after + (offset - at_or_after).rem_euclid(interval)
}

/// Which of `count` sessions (sorted by entity) a round-robin firing goes to.
fn round_robin_index(firing_number: u64, count: usize) -> usize {
    let count = u64::try_from(count.max(1)).unwrap_or(u64::MAX);
    usize::try_from(firing_number % count).expect("below a usize count")
}

// === impl Timetable ===

/// Every check and when each scheduled one fires next: a min-heap of `(time, generation, key)`.
///
/// A change to a check's timing gives it a new generation; queue entries of an older generation
/// (and of deleted checks) are skipped when they come up, and swept when they pile up.
#[derive(Default)]
struct Timetable {
    checks: HashMap<NameKey, Scheduled>,
    queue: BinaryHeap<Reverse<(i64, u64, NameKey)>>,
    generations: u64,
}

struct Scheduled {
    config: Arc<CheckConfig>,
    schedule: Option<Schedule>,
    /// The check's `subdues`, parsed (validation refused bad ones; an unreadable stored one is
    /// logged and left out).
    subdues: Vec<Subdue>,
    generation: u64,
    /// Firings so far (since the last change of timing): a cron check's round-robin turn. An
    /// interval check's turn is its place on the interval grid, the same on every backend.
    firings: u64,
}

/// One check due to fire.
#[derive(Debug, Clone)]
struct Firing {
    key: NameKey,
    config: Arc<CheckConfig>,
    /// The scheduled time (the firing may run late).
    at: i64,
    /// Counts the check's firings; picks the round-robin session.
    number: u64,
    /// An ad hoc request (not scheduled): a round-robin check picks among this backend's
    /// sessions, since no other backend fires it.
    adhoc: bool,
    /// One of the check's `subdues` holds the time: the firing is counted but not sent.
    subdued: bool,
}

impl Timetable {
    /// Adds or replaces a check. A change to its timing takes effect from `now` on; any other
    /// change (subscriptions, command, ...) at its next firing.
    fn upsert(&mut self, key: NameKey, config: CheckConfig, now: i64) {
        let subdues = subdues_of(&key, &config);
        if let Some(scheduled) = self.checks.get_mut(&key) {
            if same_timing(&scheduled.config, &config) {
                scheduled.config = Arc::new(config);
                scheduled.subdues = subdues;
                return;
            }
        }
        let schedule = match Schedule::of(&key.0, &key.1, &config) {
            Ok(schedule) => schedule,
            Err(problem) => {
                tracing::warn!(namespace = %key.0, check = %key.1, %problem, "check not scheduled");
                None
            }
        };
        self.generations += 1;
        let generation = self.generations;
        if let Some(at) = schedule
            .as_ref()
            .and_then(|schedule| schedule.next_after(now))
        {
            self.queue.push(Reverse((at, generation, key.clone())));
        }
        self.checks.insert(
            key,
            Scheduled {
                config: Arc::new(config),
                schedule,
                subdues,
                generation,
                firings: 0,
            },
        );
        self.sweep();
    }

    fn remove(&mut self, key: &NameKey) {
        self.checks.remove(key);
        self.sweep();
    }

    /// Keeps only the checks `keep` accepts.
    fn retain(&mut self, keep: impl Fn(&NameKey) -> bool) {
        self.checks.retain(|key, _| keep(key));
        self.sweep();
    }

    fn config(&self, namespace: &str, name: &str) -> Option<&CheckConfig> {
        // A borrowed `(&str, &str)` cannot look a `(String, String)` up.
        self.checks
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|scheduled| &*scheduled.config)
    }

    /// The firings due at `now`, each check once however late, and the next firing of each.
    fn due(&mut self, now: i64) -> Vec<Firing> {
        let mut firings = Vec::new();
        while self
            .queue
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now)
        {
            let Some(Reverse((at, generation, key))) = self.queue.pop() else {
                break;
            };
            let Some(scheduled) = self.checks.get_mut(&key) else {
                continue;
            };
            if scheduled.generation != generation {
                continue;
            }
            let (number, next) = match &scheduled.schedule {
                None => continue,
                Some(schedule @ Schedule::Interval { interval, offset }) => (
                    u64::try_from((at - offset).div_euclid(*interval)).unwrap_or(0),
                    schedule.next_after(now.max(at)),
                ),
                Some(schedule @ Schedule::Cron(_)) => {
                    (scheduled.firings, schedule.next_after(now.max(at)))
                }
            };
            scheduled.firings += 1;
            if let Some(next) = next {
                self.queue.push(Reverse((next, generation, key.clone())));
            }
            firings.push(Firing {
                config: Arc::clone(&scheduled.config),
                key,
                at,
                number,
                adhoc: false,
                subdued: schedule::subdued(&scheduled.subdues, now),
            });
        }
        firings
    }

    /// Drops stale queue entries once they outnumber the checks.
    fn sweep(&mut self) {
        if self.queue.len() <= 2 * self.checks.len() + 1024 {
            return;
        }
        let checks = &self.checks;
        self.queue.retain(|Reverse((_, generation, key))| {
            checks
                .get(key)
                .is_some_and(|scheduled| scheduled.generation == *generation)
        });
    }
}

/// A check's parsed `subdues`; an entry that does not parse (stored before validation knew it)
/// is logged and left out.
fn subdues_of(key: &NameKey, config: &CheckConfig) -> Vec<Subdue> {
    config
        .subdues
        .iter()
        .enumerate()
        .filter_map(|(index, value)| match Subdue::parse(value) {
            Ok(subdue) => Some(subdue),
            Err(problem) => {
                tracing::warn!(namespace = %key.0, check = %key.1, index, %problem, "subdue window ignored");
                None
            }
        })
        .collect()
}

/// Whether two versions of a check fire at the same times.
fn same_timing(old: &CheckConfig, new: &CheckConfig) -> bool {
    old.publish == new.publish
        && old.subscriptions.is_empty() == new.subscriptions.is_empty()
        && old.interval == new.interval
        && old.cron == new.cron
}

// === impl Dispatcher ===

/// Sends check requests to sessions.
struct Dispatcher {
    sessions: Arc<Sessions>,
    stats: Arc<SchedulerStats>,
    /// Hooks by namespace and name.
    hooks: ByName<HookConfig>,
    /// `(namespace, check, hook)` already reported missing, so a missing hook is logged once
    /// (until the hooks change) rather than at every firing.
    warned_hooks: HashSet<(String, String, String)>,
    /// Assets by namespace and name.
    assets: ByName<Asset>,
    /// Slices of large firings still to send, by the second they are due (see
    /// [`FANOUT_PER_SECOND`]).
    paced: BTreeMap<i64, Vec<Slice>>,
    /// Requests that could not be sent, waiting for their failure events.
    undeliverable: Vec<Undeliverable>,
}

/// Part of a large firing, sent at a later tick.
struct Slice {
    namespace: String,
    check: String,
    request: CheckRequest,
    sessions: Vec<Session>,
}

/// How a firing to `targets` sessions of a check with `interval` (0 for cron) is spread:
/// `(seconds, sessions per second)`.
fn fanout_slices(targets: usize, interval: i64) -> (usize, usize) {
    let period = if interval > 0 { interval } else { 60 };
    let most_seconds = usize::try_from((period / 2).max(1)).unwrap_or(1);
    let seconds = targets.div_ceil(FANOUT_PER_SECOND).clamp(1, most_seconds);
    (seconds, targets.div_ceil(seconds).max(1))
}

impl Dispatcher {
    /// Handles one tick: sends the slices of earlier large firings that are due, then the
    /// requests of `firings`. Never waits: a session whose queue is full or closed misses the
    /// request. Returns the firings whose check or hooks name secrets, for the caller to resolve
    /// off the loop and hand to [`Dispatcher::dispatch`] (or [`Dispatcher::undeliverable`]).
    fn fire(&mut self, firings: &[Firing], now: i64) -> Vec<Prepared> {
        while let Some(entry) = self.paced.first_entry() {
            if *entry.key() > now {
                break;
            }
            for slice in entry.remove() {
                let request = CheckRequest {
                    issued: now,
                    ..slice.request
                };
                self.send_all(&slice.namespace, &slice.check, &request, &slice.sessions);
            }
        }
        // Checks of one tick that share subscriptions share one look-up of the sessions.
        let mut targets: HashMap<(String, Vec<String>), Vec<Session>> = HashMap::new();
        let mut with_secrets = Vec::new();
        for firing in firings {
            self.stats.firings.fetch_add(1, Ordering::Relaxed);
            let (namespace, name) = &firing.key;
            let config = &firing.config;
            let sessions = targets
                .entry((namespace.clone(), config.subscriptions.clone()))
                .or_insert_with(|| self.sessions.matching(namespace, &config.subscriptions));
            if sessions.is_empty() {
                tracing::debug!(%namespace, check = %name, "no session subscribes to the check");
                continue;
            }
            let chosen = if config.round_robin && firing.adhoc {
                let idx = round_robin_index(firing.number, sessions.len());
                &sessions[idx..=idx]
            } else if config.round_robin {
                // Chosen among the connected agents of every backend, so that the firing runs
                // once cluster-wide; the backend holding the chosen agent sends it.
                let cluster = self
                    .sessions
                    .coordinator()
                    .connected_matching(namespace, &config.subscriptions);
                let Some(pick) = cluster.get(round_robin_index(firing.number, cluster.len()))
                else {
                    continue;
                };
                match sessions.iter().position(|session| &session.id == pick) {
                    Some(idx) => &sessions[idx..=idx],
                    None => {
                        tracing::debug!(%namespace, check = %name, entity = %pick.name, "round-robin firing goes to an agent of another backend");
                        continue;
                    }
                }
            } else {
                &sessions[..]
            };
            let hooks = hooks_for(&self.hooks, &mut self.warned_hooks, namespace, config);
            let assets = assets_for(&self.assets, namespace, config, &hooks);
            let mut prepared = Prepared {
                namespace: namespace.clone(),
                check: name.clone(),
                request: CheckRequest {
                    config: CheckConfig::clone(config),
                    hooks,
                    issued: now,
                    ..CheckRequest::default()
                },
                sessions: chosen.to_vec(),
            };
            match assets {
                Ok(assets) => prepared.request.assets = assets,
                Err(reason) => {
                    self.undeliverable(prepared, reason);
                    continue;
                }
            }
            tracing::debug!(
                %namespace,
                check = %name,
                scheduled = firing.at,
                sessions = chosen.len(),
                "check fired"
            );
            if prepared.names_secrets() {
                with_secrets.push(prepared);
            } else {
                self.dispatch(prepared, now);
            }
        }
        with_secrets
    }

    /// Sends a prepared request to its sessions: at once, or in slices over the next seconds
    /// when there are many (see [`FANOUT_PER_SECOND`]).
    fn dispatch(&mut self, prepared: Prepared, now: i64) {
        let Prepared {
            namespace,
            check,
            mut request,
            sessions,
        } = prepared;
        request.issued = now;
        let (_, per_second) = fanout_slices(sessions.len(), request.config.interval);
        let mut slices = sessions.chunks(per_second);
        if let Some(first) = slices.next() {
            self.send_all(&namespace, &check, &request, first);
        }
        for (later, sessions) in (1_i64..).zip(slices) {
            self.paced
                .entry(now.saturating_add(later))
                .or_default()
                .push(Slice {
                    namespace: namespace.clone(),
                    check: check.clone(),
                    request: request.clone(),
                    sessions: sessions.to_vec(),
                });
        }
    }

    /// Records that `prepared` cannot be sent, for `reason`: each of its sessions gets a failure
    /// event (see [`Dispatcher::take_undeliverable`]).
    fn undeliverable(&mut self, prepared: Prepared, reason: String) {
        tracing::warn!(
            namespace = %prepared.namespace,
            check = %prepared.check,
            sessions = prepared.sessions.len(),
            %reason,
            "check not sent"
        );
        self.stats
            .requests_undeliverable
            .fetch_add(prepared.sessions.len() as u64, Ordering::Relaxed);
        self.undeliverable.push(Undeliverable {
            namespace: prepared.namespace,
            config: prepared.request.config,
            entities: prepared
                .sessions
                .into_iter()
                .map(|session| session.id.name)
                .collect(),
            reason,
        });
    }

    /// The requests that could not be sent since the last call.
    fn take_undeliverable(&mut self) -> Vec<Undeliverable> {
        std::mem::take(&mut self.undeliverable)
    }

    /// Queues `request` for each of `sessions`, counting what was sent and what was dropped. A
    /// request carrying secret values only goes to a session authenticated with a client
    /// certificate; any other gets a failure event instead.
    fn send_all(
        &mut self,
        namespace: &str,
        check: &str,
        request: &CheckRequest,
        sessions: &[Session],
    ) {
        let carries_secrets = !request.secrets.is_empty() || !request.hook_secrets.is_empty();
        let mut refused = Vec::new();
        for session in sessions {
            if carries_secrets && !session.authenticated {
                refused.push(session.clone());
                continue;
            }
            let message = BackendMessage::CheckRequest(Box::new(request.clone()));
            match session.send(message) {
                Ok(()) => {
                    self.stats.requests_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    self.stats.requests_dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        namespace,
                        check,
                        entity = %session.id.name,
                        error = %err,
                        "check request dropped"
                    );
                }
            }
        }
        if !refused.is_empty() {
            self.undeliverable(
                Prepared {
                    namespace: namespace.to_owned(),
                    check: check.to_owned(),
                    request: CheckRequest {
                        config: request.config.clone(),
                        ..CheckRequest::default()
                    },
                    sessions: refused,
                },
                "the check names secrets, and secrets are only sent to an agent whose session \
                 is authenticated with a client certificate (mutual TLS); this one is not"
                    .to_owned(),
            );
        }
    }
}

/// A firing's request and the sessions it goes to, before it is sent.
struct Prepared {
    namespace: String,
    check: String,
    request: CheckRequest,
    sessions: Vec<Session>,
}

impl Prepared {
    /// Whether the check or one of its hooks names secrets, to be resolved before sending.
    fn names_secrets(&self) -> bool {
        !self.request.config.secrets.is_empty()
            || self
                .request
                .hooks
                .iter()
                .any(|hook| !hook.secrets.is_empty())
    }

    /// Resolves the secrets of the check and its hooks into the request; all or nothing.
    ///
    /// # Errors
    /// What failed, naming the secret (never a value).
    async fn resolve_secrets(&mut self, secrets: &crate::secrets::Secrets) -> Result<(), String> {
        let request = &mut self.request;
        request.secrets = secrets
            .resolve(&self.namespace, &request.config.secrets)
            .await
            .map_err(|err| err.to_string())?;
        for hook in &request.hooks {
            if hook.secrets.is_empty() {
                continue;
            }
            let name = hook
                .metadata
                .as_ref()
                .map(|meta| meta.name.clone())
                .unwrap_or_default();
            let values = secrets
                .resolve(&self.namespace, &hook.secrets)
                .await
                .map_err(|err| format!("hook {name}: {err}"))?;
            request.hook_secrets.insert(name, values);
        }
        Ok(())
    }
}

/// A check request that could not be sent to some sessions, and why.
struct Undeliverable {
    namespace: String,
    config: CheckConfig,
    entities: Vec<String>,
    reason: String,
}

/// `created_by` of the events stored for checks that could not be sent.
pub(crate) const UNDELIVERABLE_CREATED_BY: &str = "cairn/scheduler";

/// The event stored for `entity` when its check could not be sent: status 3 (unknown), the
/// reason as output, so the failure is seen (and handled) rather than the check going quiet.
fn undeliverable_event(
    namespace: &str,
    entity: &str,
    config: &CheckConfig,
    reason: &str,
    now: i64,
) -> Event {
    let mut check = Check::from_config(config, now);
    check.status = 3;
    check.executed = now;
    check.output = format!("check not sent: {reason}");
    Event {
        entity: Some(Entity {
            metadata: Some(ObjectMeta::named(namespace, entity)),
            entity_class: "agent".to_owned(),
            ..Entity::default()
        }),
        check: Some(check),
        ..Event::default()
    }
}

/// Stores the failure events of `undeliverable` in the background (a few at a time).
fn spawn_undeliverable_events(state: &Agents, undeliverable: Vec<Undeliverable>, now: i64) {
    if undeliverable.is_empty() {
        return;
    }
    let jobs: Vec<(Arc<Undeliverable>, String)> = undeliverable
        .into_iter()
        .flat_map(|mut item| {
            let entities = std::mem::take(&mut item.entities);
            let item = Arc::new(item);
            entities
                .into_iter()
                .map(move |entity| (Arc::clone(&item), entity))
        })
        .collect();
    let state = state.clone();
    tokio::spawn(async move {
        futures::stream::iter(jobs)
            .for_each_concurrent(TTL_CONCURRENCY, |(item, entity)| {
                let state = state.clone();
                async move { store_undeliverable_event(&state, &item, &entity, now).await }
            })
            .await;
    });
}

async fn store_undeliverable_event(state: &Agents, item: &Undeliverable, entity: &str, now: i64) {
    let check = item
        .config
        .metadata
        .as_ref()
        .map(|meta| meta.name.as_str())
        .unwrap_or_default();
    let event = undeliverable_event(&item.namespace, entity, &item.config, &item.reason, now);
    let name = format!("{entity}/{check}");
    if let Err(err) = state
        .ingest
        .ingest(&item.namespace, &name, event, UNDELIVERABLE_CREATED_BY)
        .await
    {
        tracing::warn!(
            namespace = %item.namespace,
            %entity,
            %check,
            error = %err,
            "cannot store the event of a check that was not sent"
        );
    }
}

/// The hooks a check names (in `check_hooks` order, each once); missing ones are skipped.
fn hooks_for(
    hooks: &ByName<HookConfig>,
    warned: &mut HashSet<(String, String, String)>,
    namespace: &str,
    config: &CheckConfig,
) -> Vec<HookConfig> {
    let mut names: Vec<&str> = Vec::new();
    for name in config
        .check_hooks
        .iter()
        .flat_map(|by_status| by_status.values())
        .flatten()
    {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    let check = config
        .metadata
        .as_ref()
        .map(|meta| meta.name.as_str())
        .unwrap_or_default();
    let in_namespace = hooks.get(namespace);
    names
        .into_iter()
        .filter_map(
            |name| match in_namespace.and_then(|hooks| hooks.get(name)) {
                Some(hook) => Some(hook.clone()),
                None => {
                    if warned.insert((namespace.to_owned(), check.to_owned(), name.to_owned())) {
                        tracing::warn!(
                            namespace,
                            check,
                            hook = name,
                            "check names a missing hook; sent without it"
                        );
                    }
                    None
                }
            },
        )
        .collect()
}

/// The assets the check's and its hooks' `runtime_assets` name, check first, each once.
///
/// # Errors
/// A named asset that does not exist in the namespace: the check cannot run as written, so it
/// is not sent, and its agents get a failure event naming the asset.
fn assets_for(
    assets: &ByName<Asset>,
    namespace: &str,
    config: &CheckConfig,
    hooks: &[HookConfig],
) -> Result<Vec<Asset>, String> {
    let names = config
        .runtime_assets
        .iter()
        .map(|name| (name, None))
        .chain(hooks.iter().flat_map(|hook| {
            let hook_name = hook.metadata.as_ref().map(|meta| meta.name.as_str());
            hook.runtime_assets
                .iter()
                .map(move |name| (name, hook_name))
        }));
    let in_namespace = assets.get(namespace);
    let mut found: Vec<Asset> = Vec::new();
    for (name, hook) in names {
        let named = |asset: &Asset| {
            asset
                .metadata
                .as_ref()
                .is_some_and(|meta| meta.name == *name)
        };
        if found.iter().any(named) {
            continue;
        }
        match in_namespace.and_then(|assets| assets.get(name)) {
            Some(asset) => found.push(asset.clone()),
            None => {
                let whose = match hook {
                    Some(hook) => format!("its hook \"{hook}\" names"),
                    None => "it names".to_owned(),
                };
                return Err(format!(
                    "the check was not run: {whose} the runtime asset \"{name}\", which does not exist in namespace \"{namespace}\""
                ));
            }
        }
    }
    Ok(found)
}

// === impl TtlTracker ===

/// The last result of every entity/check whose check has a ttl, and whether an overdue one was
/// raised.
#[derive(Default)]
struct TtlTracker {
    entries: HashMap<EventKey, Tracked>,
}

#[derive(Debug, Clone, PartialEq)]
struct Tracked {
    /// When the last result arrived (unix s).
    last_seen: i64,
    /// The ttl the last result carried; used when no check of that name exists (a result
    /// posted for a check the backend does not schedule).
    event_ttl: i64,
    /// When the watchdog last raised an event for this entity/check since the last result.
    raised_at: Option<i64>,
    /// The store revision of the stored event as the watch last saw it.
    revision: Revision,
}

/// An overdue entity/check.
#[derive(Debug, PartialEq)]
struct TtlDue {
    key: EventKey,
    /// Seconds since the last result.
    silence: i64,
    /// The revision of the stored event the raise is based on.
    revision: Revision,
}

/// Whether a TTL event is due at `now`: the last result is more than `ttl` seconds old and,
/// after a raise, another `ttl` has passed since it (Sensu raises again each ttl while results
/// stay away; each raise counts one more occurrence).
fn ttl_due(last_seen: i64, ttl: i64, raised_at: Option<i64>, now: i64) -> bool {
    if ttl <= 0 {
        return false;
    }
    match raised_at {
        None => now - last_seen > ttl,
        Some(raised_at) => now - raised_at >= ttl,
    }
}

impl TtlTracker {
    /// A fresh result: clears any raise.
    fn result(&mut self, key: &EventKey, event_ttl: i64, seen_at: i64, revision: Revision) {
        self.entries.insert(
            key.clone(),
            Tracked {
                last_seen: seen_at,
                event_ttl,
                raised_at: None,
                revision,
            },
        );
    }

    /// A raised TTL event came back through the watch (or was listed: then, with no memory of
    /// the last real result, it is taken to be one `ttl` before the raise).
    fn raised_stored(&mut self, key: &EventKey, event_ttl: i64, executed: i64, revision: Revision) {
        let tracked = self.entries.entry(key.clone()).or_insert_with(|| Tracked {
            last_seen: executed - event_ttl,
            event_ttl,
            raised_at: None,
            revision,
        });
        tracked.revision = revision;
        tracked.raised_at.get_or_insert(executed);
    }

    fn mark_raised(&mut self, key: &EventKey, now: i64) {
        if let Some(tracked) = self.entries.get_mut(key) {
            tracked.raised_at = Some(now);
        }
    }

    fn remove(&mut self, key: &EventKey) {
        self.entries.remove(key);
    }

    /// Stops tracking the results of a deleted check.
    fn forget_check(&mut self, namespace: &str, check: &str) {
        self.entries
            .retain(|key, _| !(key.0 == namespace && key.2 == check));
    }

    fn retain(&mut self, keep: impl Fn(&EventKey) -> bool) {
        self.entries.retain(|key, _| keep(key));
    }

    /// The entity/checks overdue at `now`; `ttl_of` gives the ttl in force (the check's, which
    /// may have changed since the result).
    fn due<'a>(
        &'a self,
        now: i64,
        mut ttl_of: impl FnMut(&'a EventKey, &'a Tracked) -> i64,
    ) -> Vec<TtlDue> {
        self.entries
            .iter()
            .filter(|(key, tracked)| {
                ttl_due(
                    tracked.last_seen,
                    ttl_of(key, tracked),
                    tracked.raised_at,
                    now,
                )
            })
            .map(|(key, tracked)| TtlDue {
                key: key.clone(),
                silence: now - tracked.last_seen,
                revision: tracked.revision,
            })
            .collect()
    }
}

enum RaiseOutcome {
    Raised,
    /// The stored event is not the one the decision was based on.
    Changed,
    Failed(String),
}

/// Stores the TTL event of an overdue entity/check: its last event, status 1, Sensu's output.
async fn raise_ttl(state: &Agents, due: &TtlDue, now: i64) -> RaiseOutcome {
    let (namespace, entity, check) = &due.key;
    let event_name = format!("{entity}/{check}");
    let key = Resources::key(Kind::Event, namespace, &event_name);
    let entry = match state.resources.store().get(&key).await {
        Ok(Some(entry)) if entry.mod_revision == due.revision => entry,
        Ok(_) => return RaiseOutcome::Changed,
        Err(err) => return RaiseOutcome::Failed(err.to_string()),
    };
    let previous = match resources::decode(&entry) {
        Ok(stored) => match stored.resource.spec {
            Spec::Event(event) => *event,
            _ => return RaiseOutcome::Failed("an event key holds another kind".to_owned()),
        },
        Err(err) => return RaiseOutcome::Failed(err.to_string()),
    };
    let Some(event) = ttl_event(previous, due.silence, now) else {
        return RaiseOutcome::Changed;
    };
    match state
        .ingest
        .ingest(namespace, &event_name, event, TTL_CREATED_BY)
        .await
    {
        Ok(()) => {
            tracing::info!(%namespace, %entity, %check, silence = due.silence, "check ttl expired");
            RaiseOutcome::Raised
        }
        Err(err) => RaiseOutcome::Failed(err.to_string()),
    }
}

/// The event raised for an overdue result: the last event, failing with Sensu's output.
fn ttl_event(mut event: Event, silence: i64, now: i64) -> Option<Event> {
    let check = event.check.as_mut()?;
    check.status = 1;
    check.output = format!("Last check execution was {silence} seconds ago");
    check.executed = now;
    check.duration = None;
    check.hooks.clear();
    event.id.clear();
    event.timestamp = 0;
    event.metrics = None;
    Some(event)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use cairn_api::agent::Hello;
    use cairn_api::model::{Check, Entity};
    use cairn_api::{ObjectMeta, Resource};
    use tokio::sync::mpsc;

    use super::*;
    use crate::store::Precondition;
    use crate::testing::eventually;

    /// Keeps what the pipeline is handed.
    #[derive(Default)]
    pub(crate) struct CollectingSink(pub(crate) parking_lot::Mutex<Vec<(String, Event)>>);

    impl crate::events::ingest::EventSink for CollectingSink {
        fn submit(&self, namespace: &str, event: Event) {
            self.0.lock().push((namespace.to_owned(), event));
        }
    }

    /// An `Agents` over a fresh store in `dir`, and the sink its events go to.
    pub(crate) async fn test_state(dir: &std::path::Path) -> (Agents, Arc<CollectingSink>) {
        let store: Arc<dyn Store> =
            Arc::new(crate::store::RedbStore::open(dir.join("store.redb")).unwrap());
        let resources = Resources::new(store);
        let (auth, _task) = crate::auth::cache::AuthCache::start(resources.clone())
            .await
            .unwrap();
        let sink = Arc::new(CollectingSink::default());
        let secrets = crate::secrets::Secrets::new(
            resources.clone(),
            crate::secrets::SecretsConfig::default(),
        );
        let ingest = crate::events::ingest::Ingest {
            resources: resources.clone(),
            check_states: Arc::default(),
            sink: Arc::clone(&sink) as Arc<dyn crate::events::ingest::EventSink>,
            stored: Arc::default(),
            silences: Arc::new(crate::events::silences::Silences::empty()),
        };
        let state = Agents {
            secrets,
            resources,
            auth,
            ingest,
            sessions: Sessions::new(),
            // Never used here: the scheduler and the watchdog sign nothing.
            agent_pki: Arc::new(crate::agents::join::AgentPki::from_parts(
                crate::pki::CertifiedKeyPem {
                    cert_pem: String::new(),
                    key_pem: String::new(),
                },
                String::new(),
                "00".repeat(32),
            )),
            revocations: crate::agents::join::Revocations::empty(),
            // Its queue is dropped: a test that fires ad hoc requests makes its own.
            adhoc: adhoc_queue().0,
            js: cairn_api::js::Engine::new(cairn_api::js::EngineConfig::default())
                .expect("JavaScript workers"),
        };
        (state, sink)
    }

    /// The stored event `<entity>/<check>` in `default` and who wrote it.
    pub(crate) async fn stored_event(
        state: &Agents,
        entity: &str,
        check: &str,
    ) -> Option<(Event, String)> {
        let stored = state
            .resources
            .get(Kind::Event, "default", &format!("{entity}/{check}"))
            .await
            .unwrap()?;
        match stored.resource.spec {
            Spec::Event(event) => Some((*event, stored.resource.metadata.created_by)),
            _ => None,
        }
    }

    fn check(interval: i64, cron: &str, subscriptions: &[&str]) -> CheckConfig {
        CheckConfig {
            metadata: Some(ObjectMeta::named("default", "c")),
            command: "true".into(),
            interval,
            cron: cron.into(),
            subscriptions: subscriptions.iter().map(|s| (*s).to_owned()).collect(),
            publish: true,
            ..CheckConfig::default()
        }
    }

    fn key(name: &str) -> NameKey {
        ("default".to_owned(), name.to_owned())
    }

    /// Runs the timetable second by second over `from..=to` and returns the firings.
    fn simulate(timetable: &mut Timetable, from: i64, to: i64) -> Vec<(String, i64, u64)> {
        (from..=to)
            .flat_map(|now| timetable.due(now))
            .map(|firing| (firing.key.1, firing.at, firing.number))
            .collect()
    }

    #[test]
    fn splay_offsets_are_within_the_interval_and_deterministic() {
        for interval in [1, 2, 7, 10, 60, 3600, 86_400] {
            for idx in 0..200 {
                let name = format!("check-{idx}");
                let offset = splay_offset("default", &name, interval);
                assert!(
                    (0..interval).contains(&offset),
                    "{name}/{interval}: {offset}"
                );
                assert_eq!(offset, splay_offset("default", &name, interval));
            }
        }
        // Fixed values (FNV-1a of "default/cpu" and "prod/cpu"): a change of hash would move every
        // check's schedule on upgrade.
        assert_eq!(splay_offset("default", "cpu", 60), 3);
        assert_eq!(splay_offset("prod", "cpu", 60), 37);
        // Checks spread over the interval.
        let distinct: HashSet<i64> = (0..100)
            .map(|idx| splay_offset("default", &format!("check-{idx}"), 60))
            .collect();
        assert!(distinct.len() > 30, "{distinct:?}");
    }

    #[test]
    fn next_interval_fire_is_on_the_grid() {
        assert_eq!(next_interval_fire(100, 10, 3), 103);
        assert_eq!(next_interval_fire(103, 10, 3), 103);
        assert_eq!(next_interval_fire(104, 10, 3), 113);
        assert_eq!(next_interval_fire(0, 10, 0), 0);
        for now in 1_700_000_000..1_700_000_100 {
            let next = next_interval_fire(now, 60, 14);
            assert!(next >= now && next - now < 60);
            assert_eq!((next - 14) % 60, 0);
        }
    }

    #[test]
    fn interval_check_fires_every_interval_at_its_splay() {
        let mut timetable = Timetable::default();
        let start = 1_700_000_000;
        timetable.upsert(key("c"), check(10, "", &["linux"]), start);
        let offset = splay_offset("default", "c", 10);
        let firings = simulate(&mut timetable, start, start + 100);
        let times: Vec<i64> = firings.iter().map(|(_, at, _)| *at).collect();
        assert_eq!(times.len(), 10, "{times:?}");
        assert!(times[0] > start && times[0] <= start + 10);
        for pair in times.windows(2) {
            assert_eq!(pair[1] - pair[0], 10);
        }
        for (_, at, number) in &firings {
            assert_eq!((at - offset) % 10, 0);
            assert_eq!(i64::try_from(*number).unwrap(), (at - offset) / 10);
        }
        // The same check on another "backend" (or after a restart) fires at the same times.
        let mut other = Timetable::default();
        other.upsert(key("c"), check(10, "", &["linux"]), start + 37);
        let later: Vec<i64> = simulate(&mut other, start + 37, start + 100)
            .into_iter()
            .map(|(_, at, _)| at)
            .collect();
        assert!(
            later.iter().all(|at| times.contains(at)),
            "{later:?} {times:?}"
        );
    }

    #[test]
    fn a_late_tick_fires_once_and_resumes_on_the_grid() {
        let mut timetable = Timetable::default();
        let start = 1_000;
        timetable.upsert(key("c"), check(10, "", &["linux"]), start);
        // The loop stalls for 95 s: one firing, not nine.
        let firings = timetable.due(start + 95);
        assert_eq!(firings.len(), 1);
        let offset = splay_offset("default", "c", 10);
        let next = simulate(&mut timetable, start + 96, start + 110);
        assert_eq!(next.len(), 1, "{next:?}");
        assert!(next[0].1 > start + 95);
        assert_eq!((next[0].1 - offset) % 10, 0);
    }

    #[test]
    fn changes_take_effect_and_deleted_or_unpublished_checks_stop() {
        let mut timetable = Timetable::default();
        let start = 5_000;
        timetable.upsert(key("c"), check(10, "", &["linux"]), start);
        assert_eq!(simulate(&mut timetable, start, start + 30).len(), 3);

        // Same timing, other subscriptions: the queued firing stays, with the new config.
        timetable.upsert(key("c"), check(10, "", &["db"]), start + 30);
        let firings = timetable.due(start + 40);
        assert_eq!(firings.len(), 1);
        assert_eq!(firings[0].config.subscriptions, ["db"]);
        assert_eq!(timetable.queue.len(), 1);

        // A new interval: the old grid's firings are skipped.
        timetable.upsert(key("c"), check(30, "", &["db"]), start + 40);
        let offset = splay_offset("default", "c", 30);
        let firings = simulate(&mut timetable, start + 41, start + 130);
        assert_eq!(firings.len(), 3, "{firings:?}");
        assert!(firings.iter().all(|(_, at, _)| (at - offset) % 30 == 0));

        // Unpublished, then without subscriptions, then deleted: nothing fires.
        let mut unpublished = check(30, "", &["db"]);
        unpublished.publish = false;
        timetable.upsert(key("c"), unpublished, start + 130);
        assert!(simulate(&mut timetable, start + 131, start + 300).is_empty());
        timetable.upsert(key("c"), check(30, "", &[]), start + 300);
        assert!(simulate(&mut timetable, start + 301, start + 400).is_empty());
        timetable.upsert(key("c"), check(30, "", &["db"]), start + 400);
        timetable.remove(&key("c"));
        assert!(simulate(&mut timetable, start + 401, start + 500).is_empty());
        assert!(timetable.config("default", "c").is_none());
    }

    #[test]
    fn stale_queue_entries_are_swept() {
        let mut timetable = Timetable::default();
        for round in 0..3000 {
            // Alternating intervals: every upsert changes the timing.
            timetable.upsert(key("c"), check(10 + round % 2, "", &["linux"]), 0);
        }
        assert!(timetable.queue.len() <= 2 * timetable.checks.len() + 1025);
    }

    #[test]
    fn cron_schedules_fire_in_their_zone() {
        // 2024-01-01T00:00:00Z, a Monday.
        let midnight = 1_704_067_200;
        let next = |cron: &str, after: i64| {
            let config = check(0, cron, &["linux"]);
            Schedule::of("default", "c", &config)
                .unwrap()
                .unwrap()
                .next_after(after)
        };
        assert_eq!(next("*/5 * * * *", midnight), Some(midnight + 300));
        assert_eq!(next("*/5 * * * *", midnight - 1), Some(midnight));
        assert_eq!(
            next("CRON_TZ=UTC 30 2 * * *", midnight),
            Some(midnight + 9000)
        );
        assert_eq!(
            next("0 8 * * FRI", midnight),
            Some(midnight + 4 * 86_400 + 8 * 3600)
        );
        // 09:00 in Tokyo (UTC+9) is 00:00 UTC; in New York in January (UTC-5), 14:00 UTC.
        assert_eq!(
            next("CRON_TZ=Asia/Tokyo 0 9 * * *", midnight),
            Some(midnight + 86_400)
        );
        assert_eq!(
            next("TZ=America/New_York 0 9 * * *", midnight),
            Some(midnight + 14 * 3600)
        );
        let unknown = Schedule::of(
            "default",
            "c",
            &check(0, "TZ=Nowhere/Else 0 9 * * *", &["linux"]),
        );
        assert!(unknown.unwrap_err().contains("not an IANA time zone"));
    }

    #[test]
    fn subdued_firings_are_marked_and_the_schedule_goes_on() {
        // 2024-01-01T00:00:00Z, a Monday; subdued from 00:10 to 00:20 that day only.
        let midnight = 1_704_067_200;
        let mut timetable = Timetable::default();
        let mut config = check(0, "*/5 * * * *", &["linux"]);
        config.subdues = vec![serde_json::json!({
            "begin": "2024-01-01T00:10:00Z",
            "end": "2024-01-01T00:20:00Z",
        })];
        timetable.upsert(key("c"), config, midnight - 1);
        let marked: Vec<(i64, bool)> = (midnight - 1..=midnight + 1800)
            .flat_map(|now| timetable.due(now))
            .map(|firing| (firing.at - midnight, firing.subdued))
            .collect();
        assert_eq!(
            marked,
            [
                (0, false),
                (300, false),
                // The window's ends are not in it, as Sensu's.
                (600, false),
                (900, true),
                (1200, false),
                (1500, false),
                (1800, false)
            ]
        );
    }

    #[test]
    fn cron_check_fires_at_each_occurrence() {
        let midnight = 1_704_067_200;
        let mut timetable = Timetable::default();
        timetable.upsert(key("c"), check(0, "*/5 * * * *", &["linux"]), midnight - 1);
        let firings = simulate(&mut timetable, midnight - 1, midnight + 900);
        let times: Vec<(i64, u64)> = firings
            .iter()
            .map(|(_, at, number)| (*at, *number))
            .collect();
        assert_eq!(
            times,
            [
                (midnight, 0),
                (midnight + 300, 1),
                (midnight + 600, 2),
                (midnight + 900, 3)
            ]
        );
        // An invalid schedule is not scheduled (and does not panic).
        timetable.upsert(key("bad"), check(0, "nope", &["linux"]), midnight);
        assert!(timetable.checks[&key("bad")].schedule.is_none());
    }

    fn hello(name: &str, subscriptions: &[&str]) -> Hello {
        Hello {
            name: name.to_owned(),
            subscriptions: subscriptions.iter().map(|s| (*s).to_owned()).collect(),
            ..Hello::default()
        }
    }

    fn dispatcher(sessions: &Arc<Sessions>) -> Dispatcher {
        Dispatcher {
            sessions: Arc::clone(sessions),
            stats: Arc::new(SchedulerStats::default()),
            hooks: HashMap::new(),
            warned_hooks: HashSet::new(),
            assets: HashMap::new(),
            paced: BTreeMap::new(),
            undeliverable: Vec::new(),
        }
    }

    fn firing(config: CheckConfig, number: u64) -> Firing {
        Firing {
            key: key("c"),
            config: Arc::new(config),
            at: 0,
            number,
            adhoc: false,
            subdued: false,
        }
    }

    fn drain(receiver: &mut mpsc::Receiver<BackendMessage>) -> Vec<CheckRequest> {
        let mut requests = Vec::new();
        while let Ok(message) = receiver.try_recv() {
            match message {
                BackendMessage::CheckRequest(request) => requests.push(*request),
                other => panic!("unexpected {other:?}"),
            }
        }
        requests
    }

    #[test]
    fn large_firings_are_spread_over_at_most_half_the_interval() {
        assert_eq!(fanout_slices(1, 10), (1, 1));
        assert_eq!(fanout_slices(FANOUT_PER_SECOND, 10), (1, FANOUT_PER_SECOND));
        assert_eq!(fanout_slices(FANOUT_PER_SECOND + 1, 10), (2, 1_001));
        assert_eq!(fanout_slices(10_000, 10), (5, 2_000));
        // Capped at half the interval: the rate goes up instead.
        assert_eq!(fanout_slices(50_000, 10), (5, 10_000));
        assert_eq!(fanout_slices(50_000, 1), (1, 50_000));
        // Cron: 30 s at most.
        assert_eq!(fanout_slices(100_000, 0), (30, 3_334));
    }

    #[test]
    fn a_large_firing_goes_out_in_slices_at_later_ticks() {
        let sessions = Sessions::new();
        let total = FANOUT_PER_SECOND * 2 + 10;
        let (mut registered, mut receivers) = (Vec::new(), Vec::new());
        for index in 0..total {
            let (session, receiver) = sessions.register(
                "default",
                &hello(&format!("agent-{index:05}"), &["linux"]),
                true,
            );
            registered.push(session);
            receivers.push(receiver);
        }
        let mut dispatcher = dispatcher(&sessions);
        let issued = |receivers: &mut Vec<mpsc::Receiver<BackendMessage>>| -> Vec<Option<i64>> {
            receivers
                .iter_mut()
                .map(|receiver| {
                    let requests = drain(receiver);
                    assert!(requests.len() <= 1);
                    requests.first().map(|request| request.issued)
                })
                .collect()
        };
        dispatcher.fire(&[firing(check(10, "", &["linux"]), 0)], 100);
        let first = issued(&mut receivers);
        let sent_now = first.iter().filter(|at| **at == Some(100)).count();
        assert_eq!(sent_now, total.div_ceil(3));
        // Entity order: the first slice is the first names.
        assert!(first[..sent_now].iter().all(Option::is_some));
        dispatcher.fire(&[], 101);
        let second = issued(&mut receivers);
        assert_eq!(
            second.iter().filter(|at| **at == Some(101)).count(),
            sent_now
        );
        // A late tick sends everything due at once, issued then.
        dispatcher.fire(&[], 105);
        let third = issued(&mut receivers);
        assert_eq!(
            third.iter().filter(|at| **at == Some(105)).count(),
            total - 2 * sent_now
        );
        assert!(dispatcher.paced.is_empty());
        assert_eq!(
            dispatcher.stats.requests_sent.load(Ordering::Relaxed),
            u64::try_from(total).expect("small")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn secrets_are_resolved_before_sending_and_failures_become_events() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _sink) = test_state(dir.path()).await;
        let sessions = Arc::clone(&state.sessions);
        let (_web, mut web) = sessions.register("default", &hello("web", &["linux"]), true);
        // An unauthenticated session (no client certificate): never gets secrets.
        let (_dev, mut dev) = sessions.register("default", &hello("dev", &["linux"]), false);
        // Unique to this test process, so parallel tests cannot interfere.
        let variable = format!("SCHEDULER_TEST_{}", std::process::id());
        std::env::set_var(&variable, "env-secret-value");
        let put = |resource: Resource| {
            let state = state.clone();
            async move {
                state
                    .resources
                    .put(&resource, Precondition::None)
                    .await
                    .unwrap();
            }
        };
        put(Resource::new(
            ObjectMeta::named("", "env"),
            Spec::EnvProvider(cairn_api::model::EnvProvider {
                allow: vec![cairn_api::model::EnvAllow {
                    variables: vec!["SCHEDULER_TEST_*".to_owned()],
                    namespaces: Vec::new(),
                }],
            }),
        ))
        .await;
        put(Resource::new(
            ObjectMeta::named("default", "token"),
            Spec::Secret(cairn_api::model::Secret {
                id: variable.clone(),
                provider: "env".to_owned(),
            }),
        ))
        .await;
        let secret_ref = |name: &str, secret: &str| cairn_api::model::SecretRef {
            name: name.to_owned(),
            secret: secret.to_owned(),
        };
        let mut hook = HookConfig {
            command: "true".to_owned(),
            timeout: 5,
            ..HookConfig::default()
        };
        hook.secrets = vec![secret_ref("HOOK_TOKEN", "token")];
        put(Resource::new(
            ObjectMeta::named("default", "on-fail"),
            Spec::HookConfig(hook),
        ))
        .await;
        let mut good = check(1, "", &["linux"]);
        good.metadata = None;
        good.secrets = vec![secret_ref("TOKEN", "token")];
        good.check_hooks = vec![BTreeMap::from([(
            "non-zero".to_owned(),
            vec!["on-fail".to_owned()],
        )])];
        put(Resource::new(
            ObjectMeta::named("default", "with-secret"),
            Spec::CheckConfig(good),
        ))
        .await;
        let (stop, shutdown) = watch::channel(false);
        let (stats, task) = spawn(
            state.clone(),
            Arc::clone(&sessions),
            adhoc_queue().1,
            shutdown,
        );

        let message = tokio::time::timeout(Duration::from_secs(5), web.recv())
            .await
            .expect("a check request within 5 s")
            .expect("the session is open");
        let BackendMessage::CheckRequest(request) = message else {
            panic!("expected a check request, got {message:?}");
        };
        assert_eq!(request.secrets.len(), 1);
        assert_eq!(request.secrets[0].name, "TOKEN");
        assert_eq!(request.secrets[0].value, "env-secret-value");
        assert_eq!(request.hook_secrets["on-fail"][0].name, "HOOK_TOKEN");
        // The unauthenticated session got nothing, and its entity a failure event instead.
        let refused = eventually(
            "the mTLS refusal event",
            Duration::from_secs(10),
            || async { stored_event(&state, "dev", "with-secret").await },
        )
        .await
        .0;
        let refused = refused.check.unwrap();
        assert_eq!(refused.status, 3);
        assert!(refused.output.contains("mutual TLS"), "{}", refused.output);
        while let Ok(message) = dev.try_recv() {
            assert!(
                !matches!(message, BackendMessage::CheckRequest(_)),
                "secrets went to an unauthenticated session: {message:?}"
            );
        }

        // A check naming a Secret that does not exist is not sent; its entity gets an event
        // naming the secret.
        let mut broken = check(1, "", &["linux"]);
        broken.metadata = None;
        broken.secrets = vec![secret_ref("API_KEY", "no-such-secret")];
        put(Resource::new(
            ObjectMeta::named("default", "broken"),
            Spec::CheckConfig(broken),
        ))
        .await;
        let failed = eventually("the failure event", Duration::from_secs(10), || async {
            stored_event(&state, "web", "broken").await
        })
        .await
        .0;
        let failed = failed.check.unwrap();
        assert_eq!(failed.status, 3);
        assert!(
            failed.output.contains("check not sent") && failed.output.contains("no-such-secret"),
            "{}",
            failed.output
        );
        assert!(!failed.output.contains("env-secret-value"));
        assert!(stats.requests_undeliverable.load(Ordering::Relaxed) >= 2);
        std::env::remove_var(&variable);

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the scheduler stops on shutdown")
            .unwrap();
    }

    #[test]
    fn round_robin_index_rotates() {
        let picks: Vec<usize> = (0..7).map(|number| round_robin_index(number, 3)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(round_robin_index(5, 1), 0);
    }

    #[test]
    fn requests_go_to_matching_sessions_and_round_robin_rotates() {
        let sessions = Sessions::new();
        let (_a, mut a) = sessions.register("default", &hello("a", &["linux"]), true);
        let (_c, mut c) = sessions.register("default", &hello("c", &["linux"]), true);
        let (_b, mut b) = sessions.register("default", &hello("b", &["linux", "db"]), true);
        let (_x, mut x) = sessions.register("other", &hello("x", &["linux"]), true);
        let mut dispatcher = dispatcher(&sessions);

        dispatcher.fire(&[firing(check(10, "", &["linux"]), 0)], 77);
        for receiver in [&mut a, &mut b, &mut c] {
            let requests = drain(receiver);
            assert_eq!(requests.len(), 1);
            assert_eq!(requests[0].issued, 77);
            assert_eq!(
                requests[0].config.metadata,
                Some(ObjectMeta::named("default", "c"))
            );
            assert!(requests[0].secrets.is_empty());
        }
        assert!(drain(&mut x).is_empty(), "another namespace");

        let mut round_robin = check(10, "", &["linux"]);
        round_robin.round_robin = true;
        let firings: Vec<Firing> = (0..6)
            .map(|number| firing(round_robin.clone(), number))
            .collect();
        dispatcher.fire(&firings, 78);
        // Sorted by entity: a, b, c, a, b, c.
        assert_eq!(drain(&mut a).len(), 2);
        assert_eq!(drain(&mut b).len(), 2);
        assert_eq!(drain(&mut c).len(), 2);
        dispatcher.fire(&[firing(round_robin.clone(), 4)], 79);
        assert_eq!(drain(&mut b).len(), 1);

        let stats = &dispatcher.stats;
        assert_eq!(stats.firings.load(Ordering::Relaxed), 8);
        assert_eq!(stats.requests_sent.load(Ordering::Relaxed), 10);
        assert_eq!(stats.requests_dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn adhoc_round_robin_firings_rotate_over_this_backends_sessions() {
        let sessions = Sessions::new();
        let (_a, mut a) = sessions.register("default", &hello("a", &["linux"]), true);
        let (_b, mut b) = sessions.register("default", &hello("b", &["linux"]), true);
        let mut dispatcher = dispatcher(&sessions);
        let mut round_robin = check(3600, "", &["linux"]);
        round_robin.round_robin = true;
        let adhoc = |number| Firing {
            adhoc: true,
            ..firing(round_robin.clone(), number)
        };
        dispatcher.fire(&[adhoc(0), adhoc(1), adhoc(2)], 50);
        assert_eq!(drain(&mut a).len(), 2);
        assert_eq!(drain(&mut b).len(), 1);
        // Not round robin: every matching session, as a scheduled firing.
        let everyone = Firing {
            adhoc: true,
            ..firing(check(3600, "", &["linux"]), 0)
        };
        dispatcher.fire(&[everyone], 51);
        assert_eq!(drain(&mut a).len(), 1);
        assert_eq!(drain(&mut b).len(), 1);
    }

    #[tokio::test]
    async fn adhoc_requests_fire_at_once_and_leave_the_schedule_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (mut state, _sink) = test_state(dir.path()).await;
        let (adhoc, queue) = adhoc_queue();
        state.adhoc = adhoc.clone();
        let sessions = Arc::clone(&state.sessions);
        let (_web, mut web) = sessions.register("default", &hello("web", &["linux"]), true);
        let (_db, mut db) = sessions.register("default", &hello("db", &["db"]), true);
        // Never scheduled: not published.
        let mut config = check(3600, "", &["linux"]);
        config.publish = false;
        config.metadata = Some(ObjectMeta::named("default", "backup"));
        let (stop, shutdown) = watch::channel(false);
        let (stats, task) = spawn(state.clone(), Arc::clone(&sessions), queue, shutdown);

        let request = |subscriptions: &[&str]| {
            let mut config = config.clone();
            if !subscriptions.is_empty() {
                config.subscriptions = subscriptions.iter().map(|s| (*s).to_owned()).collect();
            }
            AdhocRequest {
                namespace: "default".into(),
                config,
                creator: "admin".into(),
                reason: "test".into(),
            }
        };
        adhoc.request(request(&[])).unwrap();
        let message = tokio::time::timeout(Duration::from_secs(5), web.recv())
            .await
            .expect("the ad hoc request within 5 s")
            .expect("the session is open");
        let BackendMessage::CheckRequest(sent) = message else {
            panic!("expected a check request, got {message:?}");
        };
        assert_eq!(
            sent.config.metadata,
            Some(ObjectMeta::named("default", "backup"))
        );
        adhoc.request(request(&["entity:db"])).unwrap();
        tokio::time::timeout(Duration::from_secs(5), db.recv())
            .await
            .expect("the request to entity:db within 5 s")
            .expect("the session is open");
        // Nothing more: an ad hoc request schedules nothing.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(web.try_recv().is_err(), "fired again");
        assert!(db.try_recv().is_err(), "fired again");
        assert_eq!(stats.requests_sent.load(Ordering::Relaxed), 2);

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the scheduler stops on shutdown")
            .unwrap();
        assert!(
            matches!(adhoc.request(request(&[])), Err(AdhocError::Stopped)),
            "a stopped scheduler refuses"
        );
    }

    #[test]
    fn a_full_adhoc_queue_refuses_without_waiting() {
        let (adhoc, _queue) = adhoc_queue();
        let request = || AdhocRequest {
            namespace: "default".into(),
            config: check(60, "", &["linux"]),
            creator: String::new(),
            reason: String::new(),
        };
        for _ in 0..ADHOC_QUEUE {
            adhoc.request(request()).unwrap();
        }
        assert!(matches!(
            adhoc.request(request()),
            Err(AdhocError::QueueFull)
        ));
    }

    #[test]
    fn a_full_or_closed_session_is_counted_not_waited_for() {
        let sessions = Sessions::new();
        let (_full, mut full) = sessions.register("default", &hello("full", &["linux"]), true);
        let (_gone, gone) = sessions.register("default", &hello("gone", &["linux"]), true);
        drop(gone);
        let mut dispatcher = dispatcher(&sessions);
        let firings: Vec<Firing> = (0..crate::agents::sessions::SESSION_QUEUE + 5)
            .map(|number| firing(check(10, "", &["linux"]), u64::try_from(number).unwrap()))
            .collect();
        dispatcher.fire(&firings, 1);
        let stats = &dispatcher.stats;
        let queue = u64::try_from(crate::agents::sessions::SESSION_QUEUE).unwrap();
        assert_eq!(stats.requests_sent.load(Ordering::Relaxed), queue);
        // 5 over the queue for one session, every one for the closed session.
        assert_eq!(
            stats.requests_dropped.load(Ordering::Relaxed),
            5 + queue + 5
        );
        assert_eq!(
            drain(&mut full).len(),
            crate::agents::sessions::SESSION_QUEUE
        );
    }

    #[test]
    fn hooks_are_resolved_and_missing_ones_skipped() {
        let sessions = Sessions::new();
        let (_a, mut a) = sessions.register("default", &hello("a", &["linux"]), true);
        let mut dispatcher = dispatcher(&sessions);
        let hook = HookConfig {
            metadata: Some(ObjectMeta::named("default", "ps")),
            command: "ps aux".into(),
            timeout: 10,
            ..HookConfig::default()
        };
        dispatcher
            .hooks
            .entry("default".into())
            .or_default()
            .insert("ps".into(), hook.clone());
        let mut config = check(10, "", &["linux"]);
        config.check_hooks = vec![
            BTreeMap::from([(
                "critical".to_owned(),
                vec!["ps".to_owned(), "gone".to_owned()],
            )]),
            BTreeMap::from([("warning".to_owned(), vec!["ps".to_owned()])]),
        ];
        dispatcher.fire(&[firing(config.clone(), 0)], 1);
        dispatcher.fire(&[firing(config, 1)], 2);
        let requests = drain(&mut a);
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].hooks, [hook]);
        assert_eq!(dispatcher.warned_hooks.len(), 1, "warned once");
    }

    #[test]
    fn assets_of_the_check_and_its_hooks_are_sent_once_and_a_missing_one_fails_the_check() {
        let sessions = Sessions::new();
        let (_a, mut a) = sessions.register("default", &hello("a", &["linux"]), true);
        let mut dispatcher = dispatcher(&sessions);
        let asset = |name: &str| Asset {
            metadata: Some(ObjectMeta::named("default", name)),
            url: format!("https://assets.example/{name}.tar.gz"),
            sha512: "ab".repeat(64),
            ..Asset::default()
        };
        for name in ["tools", "hook-tools"] {
            dispatcher
                .assets
                .entry("default".into())
                .or_default()
                .insert(name.into(), asset(name));
        }
        dispatcher
            .hooks
            .entry("default".into())
            .or_default()
            .insert(
                "ps".into(),
                HookConfig {
                    metadata: Some(ObjectMeta::named("default", "ps")),
                    command: "ps".into(),
                    runtime_assets: vec!["hook-tools".into(), "tools".into()],
                    ..HookConfig::default()
                },
            );
        let mut config = check(10, "", &["linux"]);
        config.runtime_assets = vec!["tools".into(), "tools".into()];
        config.check_hooks = vec![BTreeMap::from([(
            "critical".to_owned(),
            vec!["ps".to_owned()],
        )])];
        dispatcher.fire(&[firing(config.clone(), 0)], 1);
        let requests = drain(&mut a);
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].assets, [asset("tools"), asset("hook-tools")]);

        // Another namespace's asset of the same name is not this one.
        config.runtime_assets = vec!["tools".into(), "gone".into()];
        dispatcher.fire(&[firing(config, 1)], 2);
        assert!(drain(&mut a).is_empty(), "not sent");
        let failed = dispatcher.take_undeliverable();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].entities, ["a"]);
        assert!(
            failed[0]
                .reason
                .contains(r#"runtime asset "gone", which does not exist in namespace "default""#),
            "{}",
            failed[0].reason
        );
    }

    #[test]
    fn ttl_raises_once_per_expiry_then_clears_on_a_result() {
        assert!(!ttl_due(100, 30, None, 130));
        assert!(ttl_due(100, 30, None, 131));
        assert!(!ttl_due(100, 0, None, 10_000));

        let mut tracker = TtlTracker::default();
        let key: EventKey = ("default".into(), "web".into(), "backup".into());
        tracker.result(&key, 30, 100, 7);
        let ttl_of = |_: &EventKey, tracked: &Tracked| tracked.event_ttl;
        let due_at = |tracker: &TtlTracker, now: i64| tracker.due(now, ttl_of);
        assert!(due_at(&tracker, 130).is_empty());
        assert_eq!(
            due_at(&tracker, 131),
            [TtlDue {
                key: key.clone(),
                silence: 31,
                revision: 7
            }]
        );
        tracker.mark_raised(&key, 131);
        // Our own event comes back through the watch: not a result.
        tracker.raised_stored(&key, 30, 131, 8);
        assert_eq!(tracker.entries[&key].last_seen, 100);
        for now in 132..161 {
            assert!(
                due_at(&tracker, now).is_empty(),
                "raised once, not at {now}"
            );
        }
        // Still silent a whole ttl later: raised again.
        assert_eq!(due_at(&tracker, 161).len(), 1);
        assert_eq!(due_at(&tracker, 161)[0].silence, 61);
        tracker.mark_raised(&key, 161);
        // A fresh result clears it.
        tracker.result(&key, 30, 170, 9);
        assert_eq!(tracker.entries[&key].raised_at, None);
        assert!(due_at(&tracker, 200).is_empty());
        assert_eq!(due_at(&tracker, 201).len(), 1);
        // The check's ttl in force wins over the result's.
        assert!(tracker.due(201, |_, _| 0).is_empty());
        // A deleted check stops.
        tracker.forget_check("default", "backup");
        assert!(due_at(&tracker, 10_000).is_empty());
    }

    #[test]
    fn ttl_raise_listed_after_a_restart_is_not_raised_again_at_once() {
        let mut tracker = TtlTracker::default();
        let key: EventKey = ("default".into(), "web".into(), "backup".into());
        tracker.raised_stored(&key, 30, 500, 3);
        assert!(tracker.due(520, |_, tracked| tracked.event_ttl).is_empty());
        let due = tracker.due(530, |_, tracked| tracked.event_ttl);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].silence, 60);
    }

    #[test]
    fn ttl_event_fails_the_last_result() {
        let event = Event {
            id: "4a4e1a9c-0000-4000-8000-000000000000".into(),
            timestamp: 90,
            check: Some(Check {
                metadata: Some(ObjectMeta::named("default", "backup")),
                status: 0,
                output: "ok".into(),
                executed: 90,
                ttl: 30,
                handlers: vec!["mail".into()],
                ..Check::default()
            }),
            ..Event::default()
        };
        let raised = ttl_event(event, 41, 131).unwrap();
        let check = raised.check.unwrap();
        assert_eq!(check.status, 1);
        assert_eq!(check.output, "Last check execution was 41 seconds ago");
        assert_eq!(check.executed, 131);
        assert_eq!(check.handlers, ["mail"]);
        assert!(raised.id.is_empty());
        assert_eq!(raised.timestamp, 0);
        assert!(ttl_event(Event::default(), 1, 1).is_none());
    }

    #[test]
    fn keys_are_classified() {
        assert_eq!(
            classify("res/checks/default/cpu"),
            Some(Watched::Check("default", "cpu"))
        );
        assert_eq!(
            classify("res/hooks/prod/ps"),
            Some(Watched::Hook("prod", "ps"))
        );
        assert_eq!(
            classify("res/events/default/web/cpu"),
            Some(Watched::Event("default", "web", "cpu"))
        );
        assert_eq!(classify("res/events/default/web"), None);
        assert_eq!(
            classify("res/entities/default/web"),
            Some(Watched::Entity("default", "web"))
        );
        assert_eq!(classify("res/entities/default"), None);
        assert_eq!(classify("other/checks/default/cpu"), None);
        assert_eq!(
            Resources::key(Kind::CheckConfig, "default", "cpu"),
            "res/checks/default/cpu"
        );
    }

    #[test]
    fn event_probe_reads_ttl_and_creator() {
        let document = serde_json::json!({
            "type": "Event",
            "api_version": "core/v2",
            "metadata": {"namespace": "default", "name": "web/backup", "created_by": TTL_CREATED_BY},
            "spec": {"check": {"ttl": 30, "executed": 12, "output": "x", "hooks": [{"ttl": 1}]},
                     "entity": {"metadata": {"name": "web"}}}
        });
        let probe: EventProbe = serde_json::from_value(document).unwrap();
        assert_eq!(probe.metadata.created_by, TTL_CREATED_BY);
        let check = probe.spec.check.unwrap();
        assert_eq!((check.ttl, check.executed), (30, 12));
    }

    #[tokio::test]
    async fn the_loop_sends_requests_raises_ttls_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _sink) = test_state(dir.path()).await;
        let sessions = Arc::clone(&state.sessions);
        let (_web, mut web) = sessions.register("default", &hello("web", &["linux"]), true);
        let mut config = check(1, "", &["linux"]);
        config.metadata = None;
        let resource = Resource::new(
            ObjectMeta::named("default", "cpu"),
            Spec::CheckConfig(config),
        );
        state
            .resources
            .put(&resource, Precondition::None)
            .await
            .unwrap();
        let (stop, shutdown) = watch::channel(false);
        let (stats, task) = spawn(
            state.clone(),
            Arc::clone(&sessions),
            adhoc_queue().1,
            shutdown,
        );

        let message = tokio::time::timeout(Duration::from_secs(5), web.recv())
            .await
            .expect("a check request within 5 s: is the listed check scheduled?")
            .expect("the session is open");
        let BackendMessage::CheckRequest(request) = message else {
            panic!("expected a check request, got {message:?}");
        };
        assert_eq!(
            request.config.metadata,
            Some(ObjectMeta::named("default", "cpu"))
        );
        assert!(stats.requests_sent.load(Ordering::Relaxed) >= 1);

        // A result for a check the backend does not schedule, with a ttl of its own.
        let event = Event {
            entity: Some(Entity {
                metadata: Some(ObjectMeta::named("default", "web")),
                ..Entity::default()
            }),
            check: Some(Check {
                metadata: Some(ObjectMeta::named("default", "backup")),
                ttl: 1,
                output: "done".into(),
                ..Check::default()
            }),
            ..Event::default()
        };
        state
            .ingest
            .ingest("default", "web/backup", event, "test")
            .await
            .unwrap();
        let raised = eventually("the ttl event", Duration::from_secs(10), || async {
            stored_event(&state, "web", "backup")
                .await
                .filter(|(_, created_by)| created_by == TTL_CREATED_BY)
        })
        .await
        .0;
        let check = raised.check.unwrap();
        assert_eq!(check.status, 1);
        assert!(
            check.output.starts_with("Last check execution was "),
            "{}",
            check.output
        );
        assert_eq!(check.history.len(), 2);
        assert!(stats.ttl_events.load(Ordering::Relaxed) >= 1);

        // The check is deleted: its requests stop.
        state
            .resources
            .delete(Kind::CheckConfig, "default", "cpu", Precondition::None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        while web.try_recv().is_ok() {}
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(web.try_recv().is_err(), "a deleted check still fires");

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the scheduler stops on shutdown")
            .unwrap();
    }
}
