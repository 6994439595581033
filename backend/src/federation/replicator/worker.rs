//! One replicator at work, and the removal of a deleted replicator's copies.
//!
//! A worker runs a full resync (unless it resumes from its record), then follows the
//! gateway's store from the revision it reached and pushes each change as it comes, up to
//! [`PUSH_CONCURRENCY`] at once and one at a time per resource; every
//! `replication_interval_seconds` it resyncs again. When the downstream fails it waits (a
//! jittered, growing delay) and catches up from the revision it had reached; when its watch
//! falls behind the store's history it resyncs.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use cairn_api::model::{Cluster, Replicator};
use cairn_api::{Kind, Spec};

use super::backoff::Backoff;
use super::downstream::{push, Connector, Downstream, DownstreamError, Pushed};
use super::plan::{self, Change, Desired, Scope};
use super::status::{self, Record, ReplicatorState, ResyncNote, StatusBook, FLUSH_INTERVAL};
use crate::store::resources::{self, Resources};
use crate::store::{Revision, Store, StoreError, WatchEvent};

/// Pushes of the watch's changes in flight at once (never two for one resource).
pub(crate) const PUSH_CONCURRENCY: usize = 16;

/// Requests in flight at once during a resync: its steps are independent resources, and the
/// downstream's store commits concurrent writes together.
pub(crate) const RESYNC_CONCURRENCY: usize = 32;

/// Changes waiting to be pushed, at most: the watch is not read further meanwhile (the store
/// keeps its history; a watcher that falls too far behind resyncs).
const MAX_QUEUED: usize = 10_000;

/// Listings (each followed by deletes) a removal makes at most.
const REMOVAL_ROUNDS: usize = 3;

/// Pause before reading the record again after a store failure.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// What every worker and removal shares.
pub(crate) struct Shared {
    /// The gateway's store.
    pub(crate) store: Arc<dyn Store>,
    /// The gateway's cluster name (the first part of the replication label).
    pub(crate) gateway: String,
    /// Makes downstream clients.
    pub(crate) connector: Arc<dyn Connector>,
    /// The backoff every worker starts with.
    pub(crate) backoff: Backoff,
}

/// What a worker runs for: the replicator and its cluster as registered now. Another value
/// (a changed definition, a re-registered cluster) means another worker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkerConfig {
    /// The replicator's name.
    pub(crate) name: String,
    /// Its definition.
    pub(crate) spec: Replicator,
    /// Its destination, `None` while no cluster of that name is registered.
    pub(crate) cluster: Option<Cluster>,
}

/// Runs one replicator until `shutdown` holds `true` (or the task is aborted).
pub(crate) async fn run(
    shared: Arc<Shared>,
    config: WorkerConfig,
    shutdown: watch::Receiver<bool>,
) {
    let span = tracing::info_span!(
        "replicate",
        replicator = %config.name,
        cluster = %config.spec.cluster
    );
    start(shared, config, shutdown).instrument(span).await;
}

async fn start(shared: Arc<Shared>, config: WorkerConfig, mut shutdown: watch::Receiver<bool>) {
    let Some(previous) = load_record(&shared, &config.name, &mut shutdown).await else {
        return;
    };
    let label = cairn_api::meta::replicated_from_label(&shared.gateway, &config.name);
    let record = previous.clone().unwrap_or_else(|| Record {
        name: config.name.clone(),
        spec: config.spec.clone(),
        label: label.clone(),
        ..Record::default()
    });
    let mut book = StatusBook::new(Arc::clone(&shared.store), record);
    let setup = Scope::of(&config.spec).and_then(|scope| {
        let cluster = config.cluster.as_ref().ok_or_else(|| {
            format!(
                "cluster {} is not registered: create the federation/v1 Cluster first",
                config.spec.cluster
            )
        })?;
        let downstream = shared.connector.connect(&config.spec.cluster, cluster)?;
        Ok((scope, downstream, cluster.api_urls.clone()))
    });
    let (scope, downstream, cluster_urls) = match setup {
        Ok(setup) => setup,
        Err(message) => {
            tracing::error!(error = %message, "replicator cannot run");
            book.error(message);
            book.set_state(ReplicatorState::Error);
            book.flush().await;
            // The manager starts a new worker when the definition or the cluster changes.
            crate::shutdown::requested(&mut shutdown).await;
            return;
        }
    };
    let mut backoff = shared.backoff.clone();
    if let Some(previous) = &previous {
        let moved = previous.spec.cluster != config.spec.cluster
            || Scope::of(&previous.spec).map(|old| old.kind).ok() != Some(scope.kind)
            || previous.label != label;
        if moved
            && !remove_previous(&shared, previous, &mut book, &mut backoff, &mut shutdown).await
        {
            return;
        }
    }
    let resume = previous
        .as_ref()
        .filter(|previous| {
            previous.revision > 0
                && previous.spec == config.spec
                && previous.cluster_urls == cluster_urls
                && previous.label == label
        })
        .map(|previous| previous.revision);
    book.record.label = label.clone();
    let interval = Duration::from_secs(u64::from(config.spec.replication_interval_seconds.max(1)));
    match resume {
        Some(revision) => tracing::info!(revision, "replicator resumes"),
        None => tracing::info!("replicator starts with a full resync"),
    }
    let worker = Worker {
        kind: scope.kind,
        scope,
        label: Arc::from(label),
        downstream,
        cluster_urls,
        spec: config.spec,
        store: Arc::clone(&shared.store),
        book,
        copies: HashSet::new(),
        copies_complete: false,
        acked: HashMap::new(),
        backoff,
        interval,
        next_resync: Instant::now() + interval,
        shutdown,
    };
    worker.run(resume).await;
}

/// Removes the copies made under an earlier definition that named another cluster or type
/// (no other task knows of them), retrying while the downstream fails; `false` on shutdown.
async fn remove_previous(
    shared: &Shared,
    previous: &Record,
    book: &mut StatusBook,
    backoff: &mut Backoff,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    book.set_state(ReplicatorState::Syncing);
    loop {
        match remove_copies(shared, &previous.spec, &previous.label).await {
            Ok(removed) => {
                tracing::info!(
                    removed.deleted,
                    removed.left,
                    old_cluster = %previous.spec.cluster,
                    "copies of the previous definition removed"
                );
                return true;
            }
            Err(Removal::Impossible(message)) => {
                tracing::warn!(error = %message, "copies of the previous definition left in place");
                book.error(format!(
                    "copies of the previous definition left in place: {message}"
                ));
                return true;
            }
            Err(Removal::Failed(message)) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %message, ?delay, "cannot remove the copies of the previous definition; backing off");
                book.backing_off(
                    format!("removing the copies of the previous definition: {message}"),
                    delay,
                );
                book.flush().await;
                tokio::select! {
                    () = crate::shutdown::requested(shutdown) => return false,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Reads a replicator's record, retrying store failures; `None` on shutdown.
async fn load_record(
    shared: &Shared,
    name: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Option<Record>> {
    loop {
        match status::load(shared.store.as_ref(), name).await {
            Ok(record) => return Some(record),
            Err(StoreError::Closed) => return None,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the replicator's record; retrying");
                tokio::select! {
                    () = crate::shutdown::requested(shutdown) => return None,
                    () = tokio::time::sleep(STORE_RETRY) => {}
                }
            }
        }
    }
}

/// How [`Worker::follow`] ended.
#[derive(Debug)]
enum End {
    /// Stop now.
    Shutdown,
    /// The resync interval passed.
    ResyncDue,
    /// The watch asked for history the store no longer keeps.
    FellBehind,
    /// The watch ended (the store restarts it); resume at once from `watermark`.
    WatchEnded {
        /// Everything up to here was pushed.
        watermark: Revision,
    },
    /// The downstream (or the store) failed: back off, then resume from `watermark`.
    Failed {
        /// Everything up to here was pushed.
        watermark: Revision,
        /// What failed.
        message: String,
    },
}

/// Why a resync did not complete.
#[derive(Debug)]
enum Stop {
    /// Shutdown.
    Shutdown,
    /// The downstream or the store failed.
    Failed(String),
}

/// What one push's outcome was, once recorded.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Put,
    Deleted,
    Nothing,
    /// The downstream refused this resource (recorded; the rest go on).
    Rejected,
    /// The downstream failed as a whole.
    Unavailable(String),
}

/// A running replicator.
struct Worker {
    spec: Replicator,
    scope: Scope,
    kind: Kind,
    label: Arc<str>,
    downstream: Arc<dyn Downstream>,
    cluster_urls: Vec<String>,
    store: Arc<dyn Store>,
    book: StatusBook,
    /// Gateway keys whose downstream resource is known to carry this replicator's label.
    copies: HashSet<String>,
    /// Whether `copies` is all of them (true from the first resync on).
    copies_complete: bool,
    /// Per gateway key: the source revision the downstream's copy is known to match.
    acked: HashMap<String, Revision>,
    backoff: Backoff,
    interval: Duration,
    next_resync: Instant,
    shutdown: watch::Receiver<bool>,
}

// === impl Worker ===

impl Worker {
    /// Resyncs unless resuming, then follows the store; forever, until shutdown.
    async fn run(mut self, resume: Option<Revision>) {
        let mut from = resume;
        loop {
            let start = match from.take() {
                Some(revision) => revision,
                None => match self.resync().await {
                    Ok(revision) => revision,
                    Err(Stop::Shutdown) => return self.stop().await,
                    Err(Stop::Failed(message)) => {
                        if !self.back_off(message).await {
                            return self.stop().await;
                        }
                        continue;
                    }
                },
            };
            match self.follow(start).await {
                End::Shutdown => return self.stop().await,
                End::ResyncDue | End::FellBehind => {}
                End::WatchEnded { watermark } => from = Some(watermark),
                End::Failed { watermark, message } => {
                    from = Some(watermark);
                    if !self.back_off(message).await {
                        return self.stop().await;
                    }
                }
            }
        }
    }

    /// Records a failure and waits before the next attempt; `false` on shutdown.
    async fn back_off(&mut self, message: String) -> bool {
        let delay = self.backoff.next_delay();
        let repeated = self.backoff.failing()
            && self
                .book
                .record
                .last_error
                .as_ref()
                .is_some_and(|last| last.message == message);
        if repeated {
            tracing::debug!(error = %message, ?delay, "replication still failing; backing off");
        } else {
            tracing::warn!(error = %message, ?delay, "replication failed; backing off");
        }
        self.book.backing_off(message, delay);
        self.book.flush().await;
        tokio::select! {
            () = crate::shutdown::requested(&mut self.shutdown) => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    async fn stop(mut self) {
        self.book.flush().await;
    }

    /// A full resync: lists the selected resources (one snapshot) and this replicator's
    /// copies, and pushes the difference. Returns the snapshot's revision.
    async fn resync(&mut self) -> Result<Revision, Stop> {
        let started = Instant::now();
        // A retry after a failure stays `backing_off` (with its error) until it succeeds, so
        // a reader never sees a failing replicator as merely `syncing` between attempts.
        if !self.backoff.failing() {
            self.book.set_state(ReplicatorState::Syncing);
            self.book.flush().await;
        }
        // One snapshot, so that the watch goes on from its revision with nothing missed.
        let page = match self.store.list(&self.scope.prefix(), None, 0).await {
            Ok(page) => page,
            Err(StoreError::Closed) => return Err(Stop::Shutdown),
            Err(err) => {
                return Err(Stop::Failed(format!(
                    "cannot list the gateway's {}: {err}",
                    self.kind.plural()
                )))
            }
        };
        let mut desired = BTreeMap::new();
        for entry in &page.entries {
            let stored = match resources::decode(entry) {
                Ok(stored) => stored,
                Err(err) => {
                    tracing::warn!(key = %entry.key, error = %err, "unreadable resource not replicated");
                    continue;
                }
            };
            let change = self.scope.change(
                &entry.key,
                entry.mod_revision,
                Some(&stored.resource),
                &self.label,
            );
            if let Some(change) = change {
                if let Desired::Present(copy) = &change.desired {
                    let copy = (**copy).clone();
                    desired.insert(entry.key.clone(), (change, copy));
                }
            }
        }
        let listed = tokio::select! {
            () = crate::shutdown::requested(&mut self.shutdown) => return Err(Stop::Shutdown),
            listed = self.downstream.list_copies(self.kind, &self.label) => listed,
        };
        let live = listed
            .map_err(|err| Stop::Failed(format!("cannot list the downstream's copies: {err}")))?;
        let plan = plan::plan(&desired, &live);
        let stepped: HashSet<&str> = plan
            .steps
            .iter()
            .map(|step| step.change.key.as_str())
            .collect();
        self.copies = live.keys().cloned().collect();
        self.copies_complete = true;
        self.acked = desired
            .iter()
            .filter(|(key, _)| !stepped.contains(key.as_str()))
            .map(|(key, (change, _))| (key.clone(), change.revision))
            .collect();
        let mut note = ResyncNote {
            unchanged: u64::try_from(plan.unchanged).unwrap_or(u64::MAX),
            ..ResyncNote::default()
        };
        let total = plan.steps.len();
        let since = status::unix_millis();
        let mut steps = plan.steps.into_iter();
        let mut running = JoinSet::new();
        let mut failure = None;
        let mut done = 0;
        loop {
            while failure.is_none() && running.len() < RESYNC_CONCURRENCY {
                let Some(step) = steps.next() else { break };
                let downstream = Arc::clone(&self.downstream);
                let label = Arc::clone(&self.label);
                let kind = self.kind;
                running.spawn(async move {
                    let result =
                        push(downstream.as_ref(), kind, &label, &step.change, step.owned).await;
                    (step.change, result)
                });
            }
            let joined = tokio::select! {
                biased;
                () = crate::shutdown::requested(&mut self.shutdown) => return Err(Stop::Shutdown),
                joined = running.join_next() => joined,
            };
            let Some(joined) = joined else { break };
            done += 1;
            match joined {
                Ok((change, result)) => match self.outcome(&change, result) {
                    Outcome::Put => note.puts += 1,
                    Outcome::Deleted => note.deletes += 1,
                    Outcome::Nothing => {}
                    Outcome::Rejected => note.errors += 1,
                    Outcome::Unavailable(message) => {
                        failure.get_or_insert(message);
                    }
                },
                Err(err) => {
                    failure.get_or_insert(format!("a push task failed: {err}"));
                }
            }
            let left = u64::try_from(total.saturating_sub(done)).unwrap_or(u64::MAX);
            let revision = self.book.record.revision;
            self.book.progress(revision, left, Some(since));
            self.book.flush_soon().await;
        }
        if let Some(message) = failure {
            return Err(Stop::Failed(message));
        }
        let duration = started.elapsed();
        note.at = crate::clock::unix_now_u64();
        note.duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(
            revision = page.revision,
            puts = note.puts,
            deletes = note.deletes,
            unchanged = note.unchanged,
            errors = note.errors,
            ?duration,
            "resync done"
        );
        self.book
            .resynced(&self.spec, &self.cluster_urls, page.revision, note);
        self.book.set_state(ReplicatorState::Ok);
        self.book.flush().await;
        self.backoff.reset();
        self.next_resync = Instant::now() + self.interval;
        Ok(page.revision)
    }

    /// Follows the store from `from`, pushing each change, until the resync is due, the
    /// downstream fails, the watch falls behind, or shutdown.
    async fn follow(&mut self, from: Revision) -> End {
        let mut stream = match self.store.watch(&self.scope.prefix(), from).await {
            Ok(stream) => stream,
            Err(StoreError::Closed) => return End::Shutdown,
            Err(StoreError::Compacted { .. }) => {
                tracing::info!(
                    revision = from,
                    "the store no longer holds the changes since the last revision; resyncing"
                );
                return End::FellBehind;
            }
            Err(err) => {
                return End::Failed {
                    watermark: from,
                    message: format!("cannot watch the gateway's store: {err}"),
                }
            }
        };
        let mut queue = Queue::new(from);
        let mut running: JoinSet<(Change, Result<Pushed, DownstreamError>)> = JoinSet::new();
        let mut ending: Option<End> = None;
        let mut flush_tick = tokio::time::interval(FLUSH_INTERVAL);
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let resync_at = self.next_resync;
        loop {
            while ending.is_none() && running.len() < PUSH_CONCURRENCY {
                let Some(change) = queue.next_ready() else {
                    break;
                };
                let Some(owned) = self.decide(&change) else {
                    queue.done(&change.key);
                    continue;
                };
                let downstream = Arc::clone(&self.downstream);
                let label = Arc::clone(&self.label);
                let kind = self.kind;
                running.spawn(async move {
                    let result = push(downstream.as_ref(), kind, &label, &change, owned).await;
                    (change, result)
                });
            }
            if ending.is_some() && running.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                () = crate::shutdown::requested(&mut self.shutdown) => return End::Shutdown,
                Some(joined) = running.join_next(), if !running.is_empty() => match joined {
                    Ok((change, result)) => match self.outcome(&change, result) {
                        Outcome::Unavailable(message) => {
                            // Left in flight: the watermark stays below it.
                            ending.get_or_insert(End::Failed { watermark: 0, message });
                        }
                        _ => queue.done(&change.key),
                    },
                    Err(err) => {
                        ending.get_or_insert(End::Failed {
                            watermark: 0,
                            message: format!("a push task failed: {err}"),
                        });
                    }
                },
                () = tokio::time::sleep_until(resync_at), if ending.is_none() => {
                    ending = Some(End::ResyncDue);
                }
                _ = flush_tick.tick() => {}
                event = stream.next(), if ending.is_none() && queue.len() < MAX_QUEUED => match event {
                    Some(Ok(event)) => self.observe(&event, &mut queue),
                    Some(Err(StoreError::Compacted { .. })) => {
                        tracing::info!("the watch fell behind the store's history; resyncing");
                        ending = Some(End::FellBehind);
                    }
                    Some(Err(err)) => {
                        ending = Some(End::Failed {
                            watermark: 0,
                            message: format!("the gateway's store watch failed: {err}"),
                        });
                    }
                    None => ending = Some(End::WatchEnded { watermark: 0 }),
                },
            }
            self.book
                .progress(queue.watermark(), queue.len_u64(), queue.oldest_ms());
            if !matches!(ending, Some(End::Failed { .. })) {
                self.book.set_state(if queue.is_empty() {
                    ReplicatorState::Ok
                } else {
                    ReplicatorState::Syncing
                });
            }
            self.book.flush_soon().await;
        }
        let watermark = queue.watermark();
        match ending {
            Some(End::Failed { message, .. }) => End::Failed { watermark, message },
            Some(End::WatchEnded { .. }) => End::WatchEnded { watermark },
            Some(other) => other,
            None => End::WatchEnded { watermark },
        }
    }

    /// Queues the change a watch event asks for.
    fn observe(&mut self, event: &WatchEvent, queue: &mut Queue) {
        let revision = event.revision();
        let change = match event {
            WatchEvent::Put(entry) => match resources::decode(entry) {
                Ok(stored) => {
                    self.scope
                        .change(&entry.key, revision, Some(&stored.resource), &self.label)
                }
                Err(err) => {
                    tracing::warn!(key = %entry.key, error = %err, "unreadable resource not replicated");
                    self.book
                        .resource_error(&entry.key, format!("unreadable on the gateway: {err}"));
                    None
                }
            },
            WatchEvent::Delete { key, .. } => self.scope.change(key, revision, None, &self.label),
        };
        if let Some(change) = change {
            queue.push(change);
        }
        queue.seen(revision);
    }

    /// Whether a change needs a request, and if so whether the downstream's resource is
    /// known to be ours; `None` when the downstream is known to match already.
    fn decide(&mut self, change: &Change) -> Option<bool> {
        match &change.desired {
            Desired::Present(_) => {
                let current = self
                    .acked
                    .get(&change.key)
                    .is_some_and(|acked| *acked >= change.revision);
                (!current).then(|| self.copies.contains(&change.key))
            }
            Desired::Absent => {
                if self.copies_complete && !self.copies.contains(&change.key) {
                    self.acked.remove(&change.key);
                    self.book.resource_ok(&change.key);
                    None
                } else {
                    // A delete always looks at the downstream's label first.
                    Some(false)
                }
            }
        }
    }

    /// Records what a push did.
    fn outcome(&mut self, change: &Change, result: Result<Pushed, DownstreamError>) -> Outcome {
        let key = &change.key;
        match result {
            Ok(pushed) => {
                self.backoff.reset();
                self.book.resource_ok(key);
                match pushed {
                    Pushed::Put => {
                        self.copies.insert(key.clone());
                        self.acked.insert(key.clone(), change.revision);
                        self.book.put_done();
                        tracing::debug!(resource = %key, revision = change.revision, "copy written");
                        Outcome::Put
                    }
                    Pushed::Deleted => {
                        self.copies.remove(key);
                        self.acked.remove(key);
                        self.book.delete_done();
                        tracing::debug!(resource = %key, revision = change.revision, "copy deleted");
                        Outcome::Deleted
                    }
                    Pushed::Nothing => {
                        self.copies.remove(key);
                        self.acked.remove(key);
                        Outcome::Nothing
                    }
                }
            }
            Err(DownstreamError::Unavailable(message)) => Outcome::Unavailable(message),
            Err(err) => {
                let message = err.to_string();
                // Logged when it starts (or changes), not again at every resync.
                if self.book.has_resource_error(key, &message) {
                    tracing::debug!(resource = %key, error = %message, "the downstream still refuses the copy");
                } else {
                    tracing::warn!(resource = %key, error = %message, "the downstream refused the copy");
                }
                self.acked.remove(key);
                self.book.resource_error(key, message);
                Outcome::Rejected
            }
        }
    }
}

// === impl Queue ===

/// Changes seen by the watch and not yet pushed: the latest per resource, in the order they
/// came, never two in flight for one resource.
#[derive(Debug)]
struct Queue {
    order: VecDeque<String>,
    /// The latest change per queued key, and when its key was first queued (unix ms).
    pending: HashMap<String, (Change, u64)>,
    /// Keys being pushed: the revision, and when it was first queued.
    in_flight: HashMap<String, (Revision, u64)>,
    /// The revision of the last event seen.
    seen: Revision,
}

impl Queue {
    fn new(from: Revision) -> Queue {
        Queue {
            order: VecDeque::new(),
            pending: HashMap::new(),
            in_flight: HashMap::new(),
            seen: from,
        }
    }

    /// Notes an event's revision (after queueing what it asks for).
    fn seen(&mut self, revision: Revision) {
        self.seen = self.seen.max(revision);
    }

    /// Queues a change; a change already waiting for its key is replaced (the newest state
    /// is all the downstream needs).
    fn push(&mut self, change: Change) {
        match self.pending.get_mut(&change.key) {
            Some((pending, _)) => *pending = change,
            None => {
                let since = self
                    .in_flight
                    .get(&change.key)
                    .map_or_else(status::unix_millis, |(_, since)| *since);
                self.order.push_back(change.key.clone());
                self.pending.insert(change.key.clone(), (change, since));
            }
        }
    }

    /// The first queued change whose key is not in flight, now in flight.
    fn next_ready(&mut self) -> Option<Change> {
        let idx = self
            .order
            .iter()
            .position(|key| !self.in_flight.contains_key(key))?;
        let key = self.order.remove(idx)?;
        let (change, since) = self.pending.remove(&key)?;
        self.in_flight.insert(key, (change.revision, since));
        Some(change)
    }

    /// A push is over (done, refused, or nothing to do).
    fn done(&mut self, key: &str) {
        self.in_flight.remove(key);
    }

    fn len(&self) -> usize {
        self.pending.len() + self.in_flight.len()
    }

    fn len_u64(&self) -> u64 {
        u64::try_from(self.len()).unwrap_or(u64::MAX)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every change up to this revision has been pushed: just below the oldest revision
    /// still waiting or in flight (a key's waiting change supersedes its older ones), else
    /// the last revision seen.
    fn watermark(&self) -> Revision {
        self.pending
            .values()
            .map(|(change, _)| change.revision)
            .chain(self.in_flight.values().map(|(revision, _)| *revision))
            .min()
            .map_or(self.seen, |oldest| oldest.saturating_sub(1).min(self.seen))
    }

    /// When the oldest waiting change was first queued (unix ms).
    fn oldest_ms(&self) -> Option<u64> {
        self.pending
            .values()
            .map(|(_, since)| *since)
            .chain(self.in_flight.values().map(|(_, since)| *since))
            .min()
    }
}

// === removal ===

/// What [`remove_copies`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Removed {
    /// Copies deleted.
    pub(crate) deleted: usize,
    /// Copies the downstream refused to delete (left in place).
    pub(crate) left: usize,
}

/// Why [`remove_copies`] did not finish.
#[derive(Debug)]
pub(crate) enum Removal {
    /// It cannot be done: the cluster is no longer registered (or unusable), or the
    /// definition names no type. Retrying does not help.
    Impossible(String),
    /// The downstream or the store failed; a retry may help.
    Failed(String),
}

/// Deletes every resource carrying `label` of the type `spec` names from the cluster it
/// names, as registered now.
///
/// # Errors
/// [`Removal`].
pub(crate) async fn remove_copies(
    shared: &Shared,
    spec: &Replicator,
    label: &str,
) -> Result<Removed, Removal> {
    let scope = Scope::of(spec).map_err(Removal::Impossible)?;
    let resources = Resources::new(Arc::clone(&shared.store));
    let stored = resources
        .get(Kind::Cluster, "", &spec.cluster)
        .await
        .map_err(|err| Removal::Failed(format!("cannot read cluster {}: {err}", spec.cluster)))?;
    let cluster = match stored.map(|stored| stored.resource.spec) {
        Some(Spec::Cluster(cluster)) => cluster,
        _ => {
            return Err(Removal::Impossible(format!(
                "cluster {} is no longer registered",
                spec.cluster
            )))
        }
    };
    let downstream = shared
        .connector
        .connect(&spec.cluster, &cluster)
        .map_err(Removal::Impossible)?;
    let kind = scope.kind;
    let mut removed = Removed {
        deleted: 0,
        left: 0,
    };
    let mut refused: HashSet<String> = HashSet::new();
    // A push of the stopped worker still on its way may land after a listing: list again
    // until one finds nothing new (a few rounds at most).
    for _ in 0..REMOVAL_ROUNDS {
        let live = downstream
            .list_copies(kind, label)
            .await
            .map_err(|err| Removal::Failed(format!("cannot list the copies: {err}")))?;
        let targets: Vec<(String, String, String)> = live
            .keys()
            .filter(|key| !refused.contains(*key))
            .filter_map(|key| {
                let (namespace, name) = scope.split_key(key)?;
                Some((key.clone(), namespace.to_owned(), name.to_owned()))
            })
            .collect();
        if targets.is_empty() {
            break;
        }
        let mut results =
            futures::stream::iter(targets.into_iter().map(|(key, namespace, name)| {
                let downstream = Arc::clone(&downstream);
                async move {
                    let result = downstream.delete(kind, &namespace, &name).await;
                    (key, result)
                }
            }))
            .buffer_unordered(RESYNC_CONCURRENCY);
        while let Some((key, result)) = results.next().await {
            match result {
                Ok(()) => removed.deleted += 1,
                Err(DownstreamError::Unavailable(message)) => return Err(Removal::Failed(message)),
                Err(err) => {
                    tracing::warn!(resource = %key, error = %err, "the downstream refused to delete a copy; left in place");
                    refused.insert(key);
                    removed.left += 1;
                }
            }
        }
    }
    Ok(removed)
}

/// Removes a deleted replicator's copies, then its record; retries (with backoff) while the
/// downstream fails, gives up (keeping the copies) when its cluster is gone.
pub(crate) async fn remove(shared: Arc<Shared>, name: String, mut shutdown: watch::Receiver<bool>) {
    let span = tracing::info_span!("replicator_removal", replicator = %name);
    async move {
        let mut backoff = shared.backoff.clone();
        loop {
            let record = match load_record(&shared, &name, &mut shutdown).await {
                Some(Some(record)) => record,
                Some(None) | None => return,
            };
            let (spec, label) = (record.spec.clone(), record.label.clone());
            let mut book = StatusBook::new(Arc::clone(&shared.store), record);
            book.set_state(ReplicatorState::Deleting);
            book.flush().await;
            match remove_copies(&shared, &spec, &label).await {
                Ok(removed) => {
                    tracing::info!(removed.deleted, removed.left, "replicator deleted; its copies removed");
                    finish(book).await;
                    return;
                }
                Err(Removal::Impossible(message)) => {
                    tracing::warn!(error = %message, "replicator deleted; its copies cannot be removed");
                    finish(book).await;
                    return;
                }
                Err(Removal::Failed(message)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %message, ?delay, "cannot remove a deleted replicator's copies; backing off");
                    book.backing_off(message, delay);
                    // Still being deleted: the state says so, the retry time says when.
                    book.record.state = ReplicatorState::Deleting;
                    book.flush().await;
                    tokio::select! {
                        () = crate::shutdown::requested(&mut shutdown) => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
    .instrument(span)
    .await;
}

async fn finish(book: StatusBook) {
    if let Err(err) = book.remove().await {
        tracing::warn!(error = %err, "cannot delete the replicator's record");
    }
}

#[cfg(test)]
mod tests;
