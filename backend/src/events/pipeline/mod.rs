//! The event pipeline: runs the handlers an event names (filters, then `pipe`, `tcp` and `udp`
//! handlers) on a dispatcher task, so that ingestion never waits for a handler.
//!
//! The API calls [`Pipeline::submit`], which only puts the event into a bounded queue. The
//! dispatcher takes events in order, expands `set` handlers, evaluates filters and spawns each
//! handler run, with at most [`PipelineConfig::max_concurrent_handlers`] in flight. Handlers,
//! filters and silences are looked up through a [`HandlerResolver`], so this module does not know
//! the store.
//!
//! Stored filters are JavaScript, evaluated in `filter.rs` by the sandboxed engine of
//! [`cairn_api::js`].
//!
//! Runtime assets (`assets.rs`): a `pipe` handler's or mutator's `runtime_assets` are fetched
//! into the shared [`RuntimeAssets`] cache and put on its `PATH`, `LD_LIBRARY_PATH` and
//! `CPATH`; a filter's give it their `*.js` files as libraries.

mod assets;
pub mod contain;
pub(crate) mod dryrun;
mod filter;
pub(crate) use filter::entity_view;
mod mutate;
mod workflow;

use std::collections::HashSet;
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_api::agent::SecretValue;
use cairn_api::assets::RuntimeAssets;
use cairn_api::js::Engine;
use cairn_api::model::SecretRef;
use cairn_api::model::{
    Asset, Entity, Event, EventFilter, Handler, HandlerSocket, Mutator,
    Pipeline as PipelineResource, Silenced, Wire,
};
use cairn_api::process::{self, Ended, RunConfig, Streams};
use cairn_api::redact::Redactor;
use parking_lot::{Mutex, RwLock};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tracing::{debug, info, warn, warn_span, Instrument};

use crate::clock::unix_now;
use crate::events::pipeline::contain::{ContainError, Containment, HANDLER_PATH};
use crate::events::rules;
use mutate::{MutateError, Payload};
use workflow::Workflow;

/// Events waiting for the dispatcher by default. An event is a few KiB, so a full queue holds
/// tens of MiB; at a thousand events a second it absorbs ten seconds of stalled handlers before
/// [`Pipeline::submit`] starts refusing.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;

/// Bytes of events (counted as their JSON) the pipeline holds by default: those waiting in the
/// queue and those the running handlers still read. 64 MiB suits a small host; in memory an
/// event takes about its JSON size again, so this bounds the pipeline near 128 MiB however
/// large the events are (with only the count bounded, 1,000 events of 400 KiB behind a slow
/// handler took the backend from 57 to 887 MiB). `--pipeline-queue-mib` sets it.
pub const DEFAULT_QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// Handler runs in flight by default. Each `pipe` run is a process, so this also bounds the
/// backend's children.
pub(crate) const DEFAULT_MAX_CONCURRENT_HANDLERS: usize = 32;

/// Timeout of a handler whose `timeout` is 0; Sensu documents 60 s for `tcp` and `udp`.
pub(crate) const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`Pipeline::shutdown`] lets queued events and running handlers finish by default.
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Built-in filter: passes incidents and resolutions ([`rules::is_incident`]).
pub(crate) const FILTER_IS_INCIDENT: &str = "is_incident";
/// Built-in filter: passes events no silenced entry matches.
pub(crate) const FILTER_NOT_SILENCED: &str = "not_silenced";
/// Built-in filter: passes events with metrics ([`rules::has_metrics`]).
pub(crate) const FILTER_HAS_METRICS: &str = "has_metrics";

/// How much of a handler's stdout and of its stderr is kept for the debug log.
const OUTPUT_LOG_LIMIT: usize = 4 * 1024;

/// How long output is still read after a `pipe` handler exits: a background process that
/// inherited its stdout can keep the pipe open long after. Then the handler's process group is
/// killed (it is killed after every exit, so that no background process outlives a handler).
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// How long shutdown waits for the dispatcher after killing what still runs at the end of the
/// grace period.
const ABORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Distinct warnings remembered for warn-once (broken filters, missing handlers); past this many
/// they are logged every time, which only happens with thousands of broken resources.
const WARN_ONCE_CAPACITY: usize = 4096;

/// Settings of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineConfig {
    /// Events that may wait for the dispatcher; when the queue is full, [`Pipeline::submit`]
    /// refuses with [`PipelineError::QueueFull`]. At least 1.
    pub queue_capacity: usize,
    /// Bytes of events (their JSON size) held at once, queued or read by running handlers;
    /// beyond it [`Pipeline::submit`] refuses with [`PipelineError::QueueBytes`].
    pub queue_bytes: usize,
    /// Handler runs (processes and socket sends) in flight at once; the dispatcher waits for a
    /// free slot, so a full pool fills the queue rather than memory. At least 1.
    pub max_concurrent_handlers: usize,
    /// Timeout of a handler whose `timeout` is 0.
    pub default_handler_timeout: Duration,
    /// How long [`Pipeline::shutdown`] lets queued events and running handlers finish before it
    /// kills what still runs.
    pub shutdown_grace: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            max_concurrent_handlers: DEFAULT_MAX_CONCURRENT_HANDLERS,
            default_handler_timeout: DEFAULT_HANDLER_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// Counters for `/metrics`; all only ever grow.
#[derive(Debug, Default)]
pub(crate) struct PipelineStats {
    /// Events accepted into the queue.
    pub queued: AtomicU64,
    /// Events refused because the queue was full (by count).
    pub dropped_queue_full: AtomicU64,
    /// Events refused because the pipeline held its limit in bytes.
    pub dropped_queue_bytes: AtomicU64,
    /// Stored mutators run (`pipe` and `javascript`; the built-ins are not counted).
    pub mutator_runs: AtomicU64,
    /// Mutators that failed (missing, refused, non-zero exit, timeout, a JavaScript error, too
    /// much output); each stops its workflow before the handler.
    pub mutator_failures: AtomicU64,
    /// Handler runs started (`pipe`, `tcp` and `udp`), after filtering.
    pub handler_runs: AtomicU64,
    /// Handler runs that failed: spawn errors, non-zero exits, timeouts, send errors, unknown
    /// types and unsupported mutators. Includes [`PipelineStats::handler_timeouts`].
    pub handler_failures: AtomicU64,
    /// Handler runs killed at their timeout.
    pub handler_timeouts: AtomicU64,
    /// `pipe` handler runs refused because the backend runs as root without
    /// `--handler-user` or `--allow-root-handlers`. Included in
    /// [`PipelineStats::handler_failures`].
    pub handler_refused: AtomicU64,
    /// Filter expressions that failed (did not parse, threw, returned neither `true` nor
    /// `false`, or passed a limit of the JavaScript engine); each is skipped, as in Sensu.
    pub filter_errors: AtomicU64,
}

/// Why the pipeline refused an event or did not stop cleanly.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum PipelineError {
    /// The queue is full because handlers fall behind. Expected under bursts: the event is not
    /// handled (it is still stored); submitting later events may succeed once the queue drains.
    #[error("the event pipeline queue is full")]
    QueueFull,
    /// The events held (queued or being handled) would exceed the pipeline's limit in bytes.
    /// As with [`PipelineError::QueueFull`], the event is stored but not handled.
    #[error(
        "the event pipeline holds its limit of {limit} bytes of events; this event has {size}"
    )]
    QueueBytes {
        /// The limit ([`PipelineConfig::queue_bytes`]).
        limit: usize,
        /// The refused event's JSON size.
        size: usize,
    },
    /// The pipeline is shutting down or its dispatcher stopped; retrying does not help.
    #[error("the event pipeline is not running")]
    NotRunning,
    /// Shutdown's grace period ran out: queued events were dropped and running handlers killed.
    #[error("the event pipeline did not drain within {grace:?}")]
    DrainTimedOut {
        /// The grace period that ran out.
        grace: Duration,
    },
}

/// Looks up what the pipeline needs by name; the backend implements it over the store.
#[async_trait]
pub(crate) trait HandlerResolver: Send + Sync {
    /// The handler `name` in `namespace`, if it exists.
    async fn handler(&self, namespace: &str, name: &str) -> Option<Handler>;
    /// The event filter `name` in `namespace`, if it exists.
    async fn filter(&self, namespace: &str, name: &str) -> Option<EventFilter>;
    /// The asset `name` in `namespace` with its metadata, if it exists. The default has none.
    async fn asset(&self, namespace: &str, name: &str) -> Option<Asset> {
        let _ = (namespace, name);
        None
    }
    /// The mutator `name` in `namespace`, if it exists. The default has none.
    async fn mutator(&self, namespace: &str, name: &str) -> Option<Mutator> {
        let _ = (namespace, name);
        None
    }
    /// The `core/v2 Pipeline` `name` in `namespace`, if it exists. The default has none.
    async fn pipeline(&self, namespace: &str, name: &str) -> Option<PipelineResource> {
        let _ = (namespace, name);
        None
    }
    /// Every silenced entry in `namespace`, with its name (shared, not copied per event).
    async fn silenced(&self, namespace: &str) -> Arc<[(String, Silenced)]>;
    /// The values of a handler's `secrets` in `namespace`, all or nothing.
    ///
    /// # Errors
    /// Why one could not be resolved, naming it and never a value. The default resolves
    /// nothing: any reference is an error.
    async fn secrets(
        &self,
        namespace: &str,
        refs: &[SecretRef],
    ) -> Result<Vec<SecretValue>, String> {
        let _ = namespace;
        match refs.first() {
            None => Ok(Vec::new()),
            Some(first) => Err(format!(
                "secret \"{}\" (for {}): no secrets provider is configured",
                first.secret, first.name
            )),
        }
    }
}

/// The running pipeline: a bounded queue in front of one dispatcher task.
///
/// Dropping it without [`Pipeline::shutdown`] also stops the dispatcher once the queue and the
/// running handlers are done, with no time limit.
pub(crate) struct Pipeline {
    /// Shared with the dispatcher task, for dry runs ([`Pipeline::dry_run`]).
    dispatcher: Arc<Dispatcher>,
    /// `None` once shutdown started.
    sender: RwLock<Option<mpsc::Sender<Job>>>,
    /// Bytes of events held now (queued and being handled), at most `queue_bytes`.
    held_bytes: Arc<AtomicUsize>,
    queue_bytes: usize,
    stats: Arc<PipelineStats>,
    shutdown_grace: Duration,
    /// Set to `true` to kill what still runs.
    abort: watch::Sender<bool>,
    /// Becomes `true` when the dispatcher returns.
    finished: watch::Receiver<bool>,
}

/// One queued event.
struct Job {
    namespace: String,
    event: Event,
    /// Its share of the pipeline's bytes, given back when the event and every handler run
    /// reading it are done.
    charge: Charge,
}

/// Bytes counted against [`PipelineConfig::queue_bytes`], given back on drop.
struct Charge {
    held: Arc<AtomicUsize>,
    bytes: usize,
}

impl Charge {
    /// Counts `bytes` more in `held`, unless that would pass `limit`.
    fn take(held: &Arc<AtomicUsize>, bytes: usize, limit: usize) -> Option<Charge> {
        held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            now.checked_add(bytes).filter(|total| *total <= limit)
        })
        .ok()
        .map(|_| Charge {
            held: Arc::clone(held),
            bytes,
        })
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The size of `event` as the JSON handlers get (Sensu's full form), counted without building
/// it.
fn json_size(event: &Event) -> usize {
    struct Counter(usize);
    impl io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Serialising the model cannot fail (see `payload`); a failure would count what was
    // written so far.
    let _ = serde_json::to_writer(&mut counter, &Wire(event));
    counter.0
}

// === impl Pipeline ===

impl Pipeline {
    /// Starts the dispatcher task and returns the pipeline with the task's handle.
    ///
    /// The handle completes when the dispatcher stops, after [`Pipeline::shutdown`] or when the
    /// pipeline is dropped and the queue drained.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime.
    pub(crate) fn start(
        config: PipelineConfig,
        containment: Arc<Containment>,
        resolver: Arc<dyn HandlerResolver>,
        js: Engine,
        assets: Arc<RuntimeAssets>,
    ) -> (Pipeline, JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let (abort, abort_receiver) = watch::channel(false);
        let (finished_sender, finished) = watch::channel(false);
        let stats = Arc::new(PipelineStats::default());
        let dispatcher = Arc::new(Dispatcher {
            resolver,
            stats: Arc::clone(&stats),
            slots: Arc::new(Semaphore::new(config.max_concurrent_handlers.max(1))),
            default_timeout: config.default_handler_timeout,
            containment,
            js,
            assets,
            warned: WarnOnce::default(),
        });
        let task =
            tokio::spawn(Arc::clone(&dispatcher).run(receiver, abort_receiver, finished_sender));
        let pipeline = Pipeline {
            dispatcher,
            sender: RwLock::new(Some(sender)),
            held_bytes: Arc::new(AtomicUsize::new(0)),
            queue_bytes: config.queue_bytes,
            stats,
            shutdown_grace: config.shutdown_grace,
            abort,
            finished,
        };
        (pipeline, task)
    }

    /// Queues the event for its handlers without waiting.
    ///
    /// # Errors
    ///
    /// [`PipelineError::QueueFull`] when the queue is full (counted in
    /// [`PipelineStats::dropped_queue_full`]), [`PipelineError::QueueBytes`] when the events
    /// held would pass the limit in bytes (counted in [`PipelineStats::dropped_queue_bytes`]),
    /// [`PipelineError::NotRunning`] after shutdown.
    pub(crate) fn submit(&self, namespace: String, mut event: Event) -> Result<(), PipelineError> {
        // The entity's `redact` applies to what filters, mutators and handlers see, as in
        // Sensu's pipeline (the stored event keeps the values).
        cairn_api::redact::redact_event_entity(&mut event);
        let sender = self.sender.read();
        let Some(sender) = sender.as_ref() else {
            return Err(PipelineError::NotRunning);
        };
        let size = json_size(&event);
        let Some(charge) = Charge::take(&self.held_bytes, size, self.queue_bytes) else {
            self.stats
                .dropped_queue_bytes
                .fetch_add(1, Ordering::Relaxed);
            return Err(PipelineError::QueueBytes {
                limit: self.queue_bytes,
                size,
            });
        };
        match sender.try_send(Job {
            namespace,
            event,
            charge,
        }) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                Err(PipelineError::QueueFull)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PipelineError::NotRunning),
        }
    }

    /// The counters, shared with the dispatcher.
    pub(crate) fn stats(&self) -> Arc<PipelineStats> {
        Arc::clone(&self.stats)
    }

    /// Stops accepting events, then waits up to the grace period for the queued events and the
    /// running handlers.
    ///
    /// # Errors
    ///
    /// [`PipelineError::DrainTimedOut`] when the grace period ran out; the remaining queued
    /// events were dropped and the running handlers killed (with their process groups).
    pub(crate) async fn shutdown(&self) -> Result<(), PipelineError> {
        drop(self.sender.write().take());
        let mut finished = self.finished.clone();
        if tokio::time::timeout(self.shutdown_grace, wait_finished(&mut finished))
            .await
            .is_ok()
        {
            return Ok(());
        }
        self.abort.send_replace(true);
        if tokio::time::timeout(ABORT_TIMEOUT, wait_finished(&mut finished))
            .await
            .is_err()
        {
            warn!("event pipeline dispatcher did not stop after abort");
        }
        Err(PipelineError::DrainTimedOut {
            grace: self.shutdown_grace,
        })
    }
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("stats", &self.stats)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish_non_exhaustive()
    }
}

async fn wait_finished(finished: &mut watch::Receiver<bool>) {
    // An error means the dispatcher is gone (it panicked), which also counts as finished.
    let _ = finished.wait_for(|finished| *finished).await;
}

/// The dispatcher's shared state; handler runs hold an `Arc` of it.
struct Dispatcher {
    resolver: Arc<dyn HandlerResolver>,
    stats: Arc<PipelineStats>,
    /// One permit per handler run in flight.
    slots: Arc<Semaphore>,
    default_timeout: Duration,
    /// How `pipe` handler processes are contained.
    containment: Arc<Containment>,
    /// Evaluates stored filters' JavaScript.
    js: Engine,
    /// The runtime assets of handlers, mutators and filters.
    assets: Arc<RuntimeAssets>,
    warned: WarnOnce,
}

/// What is computed at most once per event while its filters are evaluated.
#[derive(Default)]
struct EventContext {
    silenced: Option<bool>,
    /// The event as filters see it, as JSON ([`filter::event_view`]).
    view: Option<Arc<[u8]>>,
    json: Option<Arc<[u8]>>,
}

/// Why a handler run failed.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("failed to start sh")]
    Spawn(#[source] io::Error),
    #[error("failed to wait for the handler process")]
    Wait(#[source] io::Error),
    #[error("exited with {0}")]
    Exit(ExitStatus),
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    #[error("handler has no socket")]
    MissingSocket,
    #[error("invalid socket port {0}")]
    InvalidPort(u32),
    #[error("failed to send the event to {address}")]
    Send {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("unknown handler type {0:?}")]
    UnknownType(String),
    #[error("refused")]
    Refused(#[source] ContainError),
    #[error("{0}")]
    Assets(String),
}

// === impl Dispatcher ===

impl Dispatcher {
    async fn run(
        self: Arc<Self>,
        mut receiver: mpsc::Receiver<Job>,
        mut abort: watch::Receiver<bool>,
        finished: watch::Sender<bool>,
    ) {
        let mut running = JoinSet::new();
        let aborted = tokio::select! {
            () = self.drain(&mut receiver, &mut running) => false,
            () = crate::shutdown::requested(&mut abort) => true,
        };
        if aborted {
            receiver.close();
            let mut abandoned = 0_usize;
            while receiver.try_recv().is_ok() {
                abandoned += 1;
            }
            warn!(
                abandoned_events = abandoned,
                running_handlers = running.len(),
                "event pipeline shutdown grace ran out; killing running handlers"
            );
            // Dropping a run kills its process group (see `cairn_api::process`).
            running.shutdown().await;
        }
        finished.send_replace(true);
    }

    /// Dispatches until the queue is closed and empty, then waits for the running handlers.
    async fn drain(
        self: &Arc<Self>,
        receiver: &mut mpsc::Receiver<Job>,
        running: &mut JoinSet<()>,
    ) {
        while let Some(job) = receiver.recv().await {
            self.dispatch(job, running).await;
            while let Some(result) = running.try_join_next() {
                log_join_error(result);
            }
        }
        while let Some(result) = running.join_next().await {
            log_join_error(result);
        }
    }

    async fn dispatch(self: &Arc<Self>, job: Job, running: &mut JoinSet<()>) {
        let Job {
            namespace,
            event,
            charge,
        } = job;
        // Shared by the handler runs: the event's bytes count until the last one is done.
        let charge = Arc::new(charge);
        let workflows = self.workflows(&namespace, &event).await;
        if workflows.is_empty() {
            return;
        }
        let mut context = EventContext::default();
        let entity = Arc::new(event.entity.clone().unwrap_or_default());
        for workflow in workflows {
            let Workflow {
                pipeline,
                filters,
                mutator,
                handler_name: name,
                handler,
            } = workflow;
            if !self
                .passes_filters(&namespace, &name, &filters, &event, &mut context)
                .await
            {
                continue;
            }
            let payload = match self
                .plan_payload(&namespace, &mutator, &event, &entity, &mut context.json)
                .await
            {
                Ok(payload) => payload,
                Err(error) => {
                    self.stats.mutator_failures.fetch_add(1, Ordering::Relaxed);
                    if self.warned.first(&["mutator", &namespace, &name, &mutator]) {
                        warn!(
                            namespace = %namespace,
                            handler = %name,
                            mutator = %mutator,
                            error = %error,
                            "handler not run: its mutator failed"
                        );
                    }
                    continue;
                }
            };
            let slot = Arc::clone(&self.slots)
                .acquire_owned()
                .await
                .expect("the handler semaphore is never closed");
            // At WARN, not INFO, so that the handler's identity accompanies its failure warnings
            // even when only warnings are logged.
            let (pipeline, workflow) = pipeline.unwrap_or_default();
            let span = warn_span!(
                "handler",
                namespace = %namespace,
                name = %name,
                handler_type = %handler.handler_type,
                pipeline = %pipeline,
                workflow = %workflow,
            );
            let dispatcher = Arc::clone(self);
            let namespace = namespace.clone();
            let charge = Arc::clone(&charge);
            let entity = Arc::clone(&entity);
            running.spawn(
                async move {
                    if let Some(payload) = dispatcher.finish_payload(&namespace, payload).await {
                        dispatcher
                            .stats
                            .handler_runs
                            .fetch_add(1, Ordering::Relaxed);
                        dispatcher
                            .run_handler(&namespace, &handler, &entity, payload)
                            .await;
                    }
                    drop(slot);
                    drop(charge);
                }
                .instrument(span),
            );
        }
    }

    /// The bytes for the handler: a built-in mutator's at once, a stored mutator's once it ran
    /// (`None` when it failed, logged and counted).
    async fn finish_payload(&self, namespace: &str, payload: Payload) -> Option<Arc<[u8]>> {
        match payload {
            Payload::Ready(bytes) => Some(bytes),
            Payload::Mutate {
                name,
                mutator,
                event_json,
                entity,
            } => match self.mutate(namespace, &mutator, &entity, event_json).await {
                Ok(bytes) => Some(bytes),
                Err(error) => {
                    self.stats.mutator_failures.fetch_add(1, Ordering::Relaxed);
                    if matches!(error, MutateError::Refused(_)) {
                        self.stats.handler_refused.fetch_add(1, Ordering::Relaxed);
                    }
                    warn!(mutator = %name, error = %ErrorChain(&error), "handler not run: its mutator failed");
                    None
                }
            },
        }
    }

    /// Resolves the names, replacing each `set` handler by its members (one level, as Sensu:
    /// nested sets are skipped) and dropping duplicates.
    async fn expand(&self, namespace: &str, names: &[String]) -> Vec<(String, Handler)> {
        let mut seen = HashSet::new();
        let mut expanded = Vec::new();
        for name in names {
            let Some(handler) = self.resolve_handler(namespace, name, None).await else {
                continue;
            };
            if handler.handler_type != "set" {
                if seen.insert(name.clone()) {
                    expanded.push((name.clone(), handler));
                }
                continue;
            }
            for member in &handler.handlers {
                let Some(member_handler) =
                    self.resolve_handler(namespace, member, Some(name)).await
                else {
                    continue;
                };
                if member_handler.handler_type == "set" {
                    if self.warned.first(&["nested-set", namespace, name, member]) {
                        warn!(
                            namespace,
                            handler = %name,
                            member = %member,
                            "handler set contains another set; nested sets are not expanded"
                        );
                    }
                    continue;
                }
                if seen.insert(member.clone()) {
                    expanded.push((member.clone(), member_handler));
                }
            }
        }
        expanded
    }

    /// The handler `name`, directly named by the event or a member of the set `set`. A missing
    /// one is logged once as Sensu logs it: at info when the event names it (every keepalive
    /// event names `keepalive`, which need not exist), as a warning when a set names it.
    async fn resolve_handler(
        &self,
        namespace: &str,
        name: &str,
        set: Option<&str>,
    ) -> Option<Handler> {
        let handler = self.resolver.handler(namespace, name).await;
        if handler.is_none() {
            match set {
                None if self.warned.first(&["handler", namespace, name]) => {
                    info!(namespace, handler = %name, "handler does not exist, will be ignored");
                }
                Some(set) if self.warned.first(&["set-member", namespace, set, name]) => {
                    warn!(namespace, handler = %set, member = %name, "handler set names a handler that does not exist");
                }
                _ => {}
            }
        }
        handler
    }

    async fn passes_filters(
        &self,
        namespace: &str,
        handler_name: &str,
        filters: &[String],
        event: &Event,
        context: &mut EventContext,
    ) -> bool {
        for filter_name in filters {
            if !self
                .passes_filter(namespace, filter_name, event, context)
                .await
            {
                debug!(
                    namespace,
                    handler = handler_name,
                    filter = %filter_name,
                    "event filtered"
                );
                return false;
            }
        }
        true
    }

    /// Whether the event passes one filter: a built-in or a stored one.
    async fn passes_filter(
        &self,
        namespace: &str,
        filter_name: &str,
        event: &Event,
        context: &mut EventContext,
    ) -> bool {
        match filter_name {
            FILTER_IS_INCIDENT => rules::is_incident(event),
            FILTER_HAS_METRICS => rules::has_metrics(event),
            FILTER_NOT_SILENCED => !self.is_silenced(namespace, event, context).await,
            _ => {
                self.stored_filter(namespace, filter_name, event, context)
                    .await
            }
        }
    }

    async fn is_silenced(
        &self,
        namespace: &str,
        event: &Event,
        context: &mut EventContext,
    ) -> bool {
        if let Some(silenced) = context.silenced {
            return silenced;
        }
        let flagged = event.check.as_ref().is_some_and(|check| check.is_silenced);
        let silenced = flagged || {
            let entries = self.resolver.silenced(namespace).await;
            !rules::is_silenced_by(event, &entries, unix_now()).is_empty()
        };
        context.silenced = Some(silenced);
        silenced
    }

    async fn run_handler(
        &self,
        namespace: &str,
        handler: &Handler,
        entity: &Entity,
        payload: Arc<[u8]>,
    ) {
        let limit = match u64::try_from(handler.timeout) {
            Ok(seconds) if seconds > 0 => Duration::from_secs(seconds),
            _ => self.default_timeout,
        };
        if handler.handler_type == "pipe" && self.containment.refuses_handlers() {
            self.stats.handler_failures.fetch_add(1, Ordering::Relaxed);
            self.stats.handler_refused.fetch_add(1, Ordering::Relaxed);
            warn!(reason = %ContainError::RootRefused, "handler not run");
            return;
        }
        // Resolved per run (the secrets cache makes that one provider read per TTL); a handler
        // whose secrets fail is not run rather than run without them.
        let secrets = if handler.handler_type == "pipe" && !handler.secrets.is_empty() {
            match self.resolver.secrets(namespace, &handler.secrets).await {
                Ok(secrets) => secrets,
                Err(reason) => {
                    self.stats.handler_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %reason, "handler not run: its secrets could not be resolved");
                    return;
                }
            }
        } else {
            Vec::new()
        };
        let outcome = match handler.handler_type.as_str() {
            "pipe" => match self
                .prepare_assets(namespace, &handler.runtime_assets, entity)
                .await
            {
                // Leased until the run is over, so the cache cannot evict the builds it uses.
                Ok(prepared) => {
                    self.run_pipe(handler, &secrets, &prepared.env, &payload, limit)
                        .await
                }
                Err(reason) => Err(RunError::Assets(reason)),
            },
            "tcp" => send_tcp(handler.socket.as_ref(), &payload, limit).await,
            "udp" => send_udp(handler.socket.as_ref(), &payload, limit).await,
            other => Err(RunError::UnknownType(other.to_owned())),
        };
        match outcome {
            Ok(()) => debug!("handler finished"),
            Err(error) => {
                self.stats.handler_failures.fetch_add(1, Ordering::Relaxed);
                if matches!(error, RunError::TimedOut(_)) {
                    self.stats.handler_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                warn!(error = %ErrorChain(&error), "handler failed");
            }
        }
    }

    /// Runs `sh -c <command>` contained ([`Containment::command`]) on the shared runner
    /// ([`process::run`]) in its own process group with the payload on stdin; on timeout, and
    /// once the handler exited (so background processes it left die with it), the whole group
    /// is killed. The environment is
    /// [`HANDLER_PATH`], the handler's `env_vars`, then its secrets (which win, as in Sensu),
    /// nothing of the backend's; the output it logs has the secret values redacted.
    async fn run_pipe(
        &self,
        handler: &Handler,
        secrets: &[SecretValue],
        assets_env: &[(String, String)],
        payload: &Arc<[u8]>,
        limit: Duration,
    ) -> Result<(), RunError> {
        // The runner sets stdio and the process group; the containment is in the command.
        let command = self
            .containment
            .command(
                &handler.command,
                pipe_environment(&handler.env_vars, secrets, assets_env),
            )
            .map_err(RunError::Refused)?;
        let redactor = Redactor::of_secrets(secrets);
        let config = RunConfig {
            stdin: Some(Arc::clone(payload)),
            timeout: Some(limit),
            max_output: OUTPUT_LOG_LIMIT,
            streams: Streams::Separate,
            grace: OUTPUT_DRAIN_TIMEOUT,
            redactor: Some(&redactor),
        };
        let finished = process::run(command, &config).await.map_err(|error| {
            let (process::RunError::PipeFailed(source) | process::RunError::SpawnFailed(source)) =
                error;
            RunError::Spawn(source)
        })?;
        let stderr = finished.stderr.unwrap_or_default();
        if !finished.output.text.is_empty() || !stderr.text.is_empty() {
            debug!(
                stdout = %finished.output.text,
                stderr = %stderr.text,
                "handler output"
            );
        }
        match finished.ended {
            Ended::Exited {
                status,
                leftovers_killed,
            } => {
                if leftovers_killed {
                    debug!(
                        "processes the handler left behind kept its output open and were killed"
                    );
                }
                if status.success() {
                    Ok(())
                } else {
                    Err(RunError::Exit(status))
                }
            }
            Ended::TimedOut => Err(RunError::TimedOut(limit)),
            Ended::WaitFailed(error) => Err(RunError::Wait(error)),
        }
    }
}

/// Remembers which warnings were logged, so a broken resource warns once, not once per event.
#[derive(Default)]
struct WarnOnce(Mutex<HashSet<String>>);

// === impl WarnOnce ===

impl WarnOnce {
    /// Whether this is the first time for `key`.
    fn first(&self, key: &[&str]) -> bool {
        let key = key.join("\u{0}");
        let mut warned = self.0.lock();
        if warned.len() >= WARN_ONCE_CAPACITY {
            return !warned.contains(&key);
        }
        warned.insert(key)
    }
}

/// Formats an error with its sources, `outer: inner: ...`.
struct ErrorChain<'a>(&'a dyn StdError);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

fn log_join_error(result: Result<(), JoinError>) {
    if let Err(error) = result {
        if error.is_panic() {
            warn!(%error, "handler task panicked");
        }
    }
}

/// The handlers an event names: `check.handlers`, then `metrics.handlers`.
fn handler_names(event: &Event) -> Vec<String> {
    let mut names = event
        .check
        .as_ref()
        .map_or_else(Vec::new, |check| check.handlers.clone());
    let metric_handlers = event
        .metrics
        .as_ref()
        .and_then(|metrics| metrics.get("handlers"))
        .and_then(serde_json::Value::as_array);
    if let Some(metric_handlers) = metric_handlers {
        names.extend(
            metric_handlers
                .iter()
                .filter_map(serde_json::Value::as_str)
                .map(str::to_owned),
        );
    }
    names
}

/// The whole environment of a `pipe` handler or mutator: [`HANDLER_PATH`] (with its runtime
/// assets' `bin` folders in front) and the assets' other variables (`assets_env`, from
/// [`cairn_api::assets::asset_env`]), its `env_vars`, then its secrets (which win, as in
/// Sensu), nothing of the backend's. Malformed `env_vars` entries are skipped with a warning
/// that gives only their count (one may well be a secret value).
fn pipe_environment<'a>(
    env_vars: &'a [String],
    secrets: &'a [SecretValue],
    assets_env: &'a [(String, String)],
) -> Vec<(&'a str, &'a str)> {
    let (env_vars, skipped) = parse_env_vars(env_vars);
    if skipped > 0 {
        warn!(skipped, "ignored env_vars entries that are not KEY=VALUE");
    }
    let path = assets_env
        .iter()
        .find(|(key, _)| key == "PATH")
        .map_or(HANDLER_PATH, |(_, value)| value.as_str());
    std::iter::once(("PATH", path))
        .chain(
            assets_env
                .iter()
                .filter(|(key, _)| key != "PATH")
                .map(|(key, value)| (key.as_str(), value.as_str())),
        )
        .chain(env_vars)
        .chain(
            secrets
                .iter()
                .filter(|secret| !secret.value.is_empty())
                .map(|secret| (secret.name.as_str(), secret.value.as_str())),
        )
        .collect()
}

/// Splits `KEY=VALUE` entries at the first `=`; returns the pairs and how many were skipped.
fn parse_env_vars(entries: &[String]) -> (Vec<(&str, &str)>, usize) {
    let mut skipped = 0;
    let pairs = entries
        .iter()
        .filter_map(|entry| match entry.split_once('=') {
            Some((key, value)) if !key.is_empty() => Some((key, value)),
            _ => {
                skipped += 1;
                None
            }
        })
        .collect();
    (pairs, skipped)
}

fn socket_port(socket: Option<&HandlerSocket>) -> Result<(&str, u16), RunError> {
    let socket = socket.ok_or(RunError::MissingSocket)?;
    let port = u16::try_from(socket.port).map_err(|_| RunError::InvalidPort(socket.port))?;
    Ok((socket.host.as_str(), port))
}

/// Connects, writes the payload and shuts the connection down, all within `limit`.
async fn send_tcp(
    socket: Option<&HandlerSocket>,
    payload: &[u8],
    limit: Duration,
) -> Result<(), RunError> {
    let (host, port) = socket_port(socket)?;
    let send = async {
        let mut stream = TcpStream::connect((host, port)).await?;
        stream.write_all(payload).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(limit, send).await {
        Ok(result) => result.map_err(|source| RunError::Send {
            address: format!("{host}:{port}"),
            source,
        }),
        Err(_elapsed) => Err(RunError::TimedOut(limit)),
    }
}

/// Sends the payload as one datagram within `limit`.
async fn send_udp(
    socket: Option<&HandlerSocket>,
    payload: &[u8],
    limit: Duration,
) -> Result<(), RunError> {
    let (host, port) = socket_port(socket)?;
    let send = async {
        let target = tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address for host"))?;
        let local: SocketAddr = if target.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let udp = UdpSocket::bind(local).await?;
        let sent = udp.send_to(payload, target).await?;
        if sent < payload.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "datagram was truncated",
            ));
        }
        Ok(())
    };
    match tokio::time::timeout(limit, send).await {
        Ok(result) => result.map_err(|source| RunError::Send {
            address: format!("{host}:{port}"),
            source,
        }),
        Err(_elapsed) => Err(RunError::TimedOut(limit)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::path::{Path, PathBuf};

    use cairn_api::model::{Check, Entity};
    use cairn_api::ObjectMeta;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio::time::Instant;

    use super::*;

    /// How long a test waits for an outcome before failing.
    const WAIT: Duration = Duration::from_secs(15);

    #[derive(Default)]
    struct FakeResolver {
        handlers: HashMap<String, Handler>,
        filters: HashMap<String, EventFilter>,
        silenced: Vec<(String, Silenced)>,
        /// Secret resource name → value; a missing one fails.
        secrets: HashMap<String, String>,
        mutators: HashMap<String, Mutator>,
        pipelines: HashMap<String, PipelineResource>,
        assets: HashMap<String, Asset>,
        /// The asset cache's folder; `None`: one never created (no test names an asset).
        cache_dir: Option<PathBuf>,
    }

    #[async_trait]
    impl HandlerResolver for FakeResolver {
        async fn handler(&self, _namespace: &str, name: &str) -> Option<Handler> {
            self.handlers.get(name).cloned()
        }

        async fn filter(&self, _namespace: &str, name: &str) -> Option<EventFilter> {
            self.filters.get(name).cloned()
        }

        async fn asset(&self, _namespace: &str, name: &str) -> Option<Asset> {
            self.assets.get(name).cloned()
        }

        async fn silenced(&self, _namespace: &str) -> Arc<[(String, Silenced)]> {
            Arc::from(self.silenced.clone())
        }

        async fn mutator(&self, _namespace: &str, name: &str) -> Option<Mutator> {
            self.mutators.get(name).cloned()
        }

        async fn pipeline(&self, _namespace: &str, name: &str) -> Option<PipelineResource> {
            self.pipelines.get(name).cloned()
        }

        async fn secrets(
            &self,
            _namespace: &str,
            refs: &[SecretRef],
        ) -> Result<Vec<SecretValue>, String> {
            refs.iter()
                .map(|reference| match self.secrets.get(&reference.secret) {
                    Some(value) => Ok(SecretValue {
                        name: reference.name.clone(),
                        value: value.clone(),
                    }),
                    None => Err(format!("secret \"{}\" not found", reference.secret)),
                })
                .collect()
        }
    }

    impl FakeResolver {
        fn mutator(mut self, name: &str, mutator: Mutator) -> Self {
            self.mutators.insert(name.to_owned(), mutator);
            self
        }

        fn pipeline(mut self, name: &str, pipeline: PipelineResource) -> Self {
            self.pipelines.insert(name.to_owned(), pipeline);
            self
        }

        fn handler(mut self, name: &str, handler: Handler) -> Self {
            self.handlers.insert(name.to_owned(), handler);
            self
        }

        fn filter(mut self, name: &str, action: &str, expressions: &[&str]) -> Self {
            let filter = EventFilter {
                action: action.to_owned(),
                expressions: expressions
                    .iter()
                    .map(|source| source.to_string())
                    .collect(),
                ..EventFilter::default()
            };
            self.filters.insert(name.to_owned(), filter);
            self
        }
    }

    fn config() -> PipelineConfig {
        PipelineConfig {
            queue_capacity: 16,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            max_concurrent_handlers: 4,
            default_handler_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }

    fn start(resolver: FakeResolver) -> Pipeline {
        start_with(config(), resolver)
    }

    fn start_with(config: PipelineConfig, resolver: FakeResolver) -> Pipeline {
        let js = Engine::new(cairn_api::js::EngineConfig::default()).unwrap();
        let cache_dir = resolver
            .cache_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("cairn-pipeline-tests-no-assets"));
        let mut cache = cairn_api::assets::CacheConfig::new(cache_dir);
        cache.fetch.allow_http = true;
        Pipeline::start(
            config,
            Arc::new(Containment::uncontained()),
            Arc::new(resolver),
            js,
            Arc::new(RuntimeAssets::new(cache)),
        )
        .0
    }

    fn pipe(command: String) -> Handler {
        Handler {
            handler_type: "pipe".to_owned(),
            command,
            ..Handler::default()
        }
    }

    fn filtered(handler: Handler, filters: &[&str]) -> Handler {
        Handler {
            filters: filters.iter().map(|name| name.to_string()).collect(),
            ..handler
        }
    }

    /// A `pipe` handler that stores each event it gets as its own `*.json` file in `dir`,
    /// renamed into place once complete, so concurrent runs never mix.
    fn store_in(dir: &Path) -> Handler {
        pipe(format!(
            "f=$(mktemp '{}/run.XXXXXX') && cat > \"$f\" && mv \"$f\" \"$f.json\"",
            dir.display()
        ))
    }

    /// A fresh directory for a handler's output.
    fn out_dir(temp: &tempfile::TempDir, name: &str) -> PathBuf {
        let dir = temp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    /// The events stored in `dir` so far.
    fn stored(dir: &Path) -> Vec<Event> {
        let mut events = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "json") {
                let text = std::fs::read_to_string(&path).unwrap();
                events.push(handled_event(text.as_bytes()).expect("a whole event"));
            }
        }
        events
    }

    /// The event a handler got (Sensu's full JSON form, `null` for unset lists), read the way
    /// the API reads a body; `None` when it is not (yet) a whole event.
    fn handled_event(bytes: &[u8]) -> Option<Event> {
        let body: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let resource = cairn_api::Resource::from_wire(cairn_api::Kind::Event, body).ok()?;
        let cairn_api::Spec::Event(event) = resource.spec else {
            return None;
        };
        Some(Event {
            metadata: Some(resource.metadata),
            ..*event
        })
    }

    fn event(status: u32, handlers: &[&str]) -> Event {
        Event {
            entity: Some(Entity {
                metadata: Some(ObjectMeta::named("default", "web-1")),
                entity_class: "agent".to_owned(),
                subscriptions: vec!["web".to_owned()],
                ..Entity::default()
            }),
            check: Some(Check {
                metadata: Some(ObjectMeta::named("default", "check-http")),
                status,
                interval: 60,
                subscriptions: vec!["web".to_owned()],
                handlers: handlers.iter().map(|name| name.to_string()).collect(),
                ..Check::default()
            }),
            ..Event::default()
        }
    }

    /// Runs the statuses through the state machine, as the API would before submitting.
    fn processed(statuses: &[u32], handlers: &[&str]) -> Vec<Event> {
        let mut out: Vec<Event> = Vec::new();
        for (idx, status) in statuses.iter().enumerate() {
            let now = 1_700_000_000 + 60 * idx as i64;
            let next = rules::process_event(out.last(), event(*status, handlers), now).unwrap();
            out.push(next);
        }
        out
    }

    fn submit(pipeline: &Pipeline, event: Event) {
        pipeline.submit("default".to_owned(), event).unwrap();
    }

    async fn wait_until(what: &str, condition: impl FnMut() -> bool) {
        crate::testing::until(what, WAIT, condition).await;
    }

    /// Waits until `dir` holds `count` events and returns them.
    async fn wait_for_events(dir: &Path, count: usize) -> Vec<Event> {
        let mut events = Vec::new();
        wait_until(&format!("{count} events in {}", dir.display()), || {
            events = stored(dir);
            events.len() >= count
        })
        .await;
        events
    }

    fn statuses(events: &[Event]) -> Vec<u32> {
        events
            .iter()
            .map(|event| event.check.as_ref().unwrap().status)
            .collect()
    }

    fn runs(pipeline: &Pipeline) -> u64 {
        pipeline.stats().handler_runs.load(Ordering::Relaxed)
    }

    fn temp_file(temp: &tempfile::TempDir, name: &str) -> PathBuf {
        temp.path().join(name)
    }

    #[tokio::test]
    async fn pipe_handler_gets_the_event_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let out = temp_file(&dir, "event.json");
        let resolver =
            FakeResolver::default().handler("file", pipe(format!("cat > '{}'", out.display())));
        let pipeline = start(resolver);
        submit(&pipeline, processed(&[2], &["file"]).remove(0));

        let mut received: Option<Event> = None;
        wait_until("the handler to write the event", || {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            received = handled_event(text.as_bytes());
            received.is_some()
        })
        .await;
        // Sensu's full form: every field of the check and the entity, unset lists as null.
        let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(raw["check"]["handlers"], serde_json::json!(["file"]));
        assert_eq!(raw["check"]["env_vars"], serde_json::Value::Null);
        assert!(raw["check"].get("runtime_assets").is_some(), "{raw}");
        assert!(raw["entity"]["system"].is_object(), "{raw}");
        let received = received.unwrap();
        let check = received.check.unwrap();
        assert_eq!(check.metadata.unwrap().name, "check-http");
        assert_eq!(check.status, 2);
        pipeline.shutdown().await.unwrap();
        let stats = pipeline.stats();
        assert_eq!(stats.queued.load(Ordering::Relaxed), 1);
        assert_eq!(stats.handler_runs.load(Ordering::Relaxed), 1);
        assert_eq!(stats.handler_failures.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn env_vars_reach_the_handler_on_a_minimal_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = temp_file(&dir, "env.txt");
        let handler = Handler {
            env_vars: vec![
                "GREETING=hello=world".to_owned(),
                "not-an-assignment".to_owned(),
            ],
            ..pipe(format!(
                "env > '{}.tmp' && mv '{}.tmp' '{}'",
                out.display(),
                out.display(),
                out.display()
            ))
        };
        let pipeline = start(FakeResolver::default().handler("env", handler));
        submit(&pipeline, event(0, &["env"]));

        let mut env = String::new();
        wait_until("the handler to write its environment", || {
            env = std::fs::read_to_string(&out).unwrap_or_default();
            !env.is_empty()
        })
        .await;
        let keys: Vec<&str> = env
            .lines()
            .filter_map(|line| line.split_once('=').map(|(key, _)| key))
            .collect();
        assert!(
            env.lines().any(|line| line == "GREETING=hello=world"),
            "{env}"
        );
        assert!(keys.contains(&"PATH"), "{env}");
        // Cargo sets this for the test process; handlers must not inherit it.
        assert!(!keys.contains(&"CARGO_MANIFEST_DIR"), "{env}");
        assert!(!keys.contains(&"not-an-assignment"), "{env}");
        pipeline.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn secrets_reach_the_handler_environment_and_win_over_env_vars() {
        let dir = tempfile::tempdir().unwrap();
        let out = temp_file(&dir, "secret.txt");
        let handler = Handler {
            env_vars: vec!["WEBHOOK=from-env-vars".to_owned()],
            secrets: vec![SecretRef {
                name: "WEBHOOK".to_owned(),
                secret: "slack".to_owned(),
            }],
            ..pipe(format!(
                "printenv WEBHOOK > '{}.tmp' && mv '{}.tmp' '{}'",
                out.display(),
                out.display(),
                out.display()
            ))
        };
        let missing = Handler {
            secrets: vec![SecretRef {
                name: "TOKEN".to_owned(),
                secret: "absent".to_owned(),
            }],
            ..pipe(format!("touch '{}'", temp_file(&dir, "ran").display()))
        };
        let mut resolver = FakeResolver::default()
            .handler("slack", handler)
            .handler("missing", missing);
        resolver.secrets.insert(
            "slack".to_owned(),
            "https://hooks.example/s3cr3t".to_owned(),
        );
        let pipeline = start(resolver);
        submit(&pipeline, event(2, &["missing", "slack"]));

        let mut seen = String::new();
        wait_until("the handler to write the secret", || {
            seen = std::fs::read_to_string(&out).unwrap_or_default();
            !seen.is_empty()
        })
        .await;
        assert_eq!(seen, "https://hooks.example/s3cr3t\n");
        pipeline.shutdown().await.unwrap();
        assert!(
            !temp_file(&dir, "ran").exists(),
            "a handler whose secret failed ran"
        );
        assert_eq!(pipeline.stats().handler_failures.load(Ordering::Relaxed), 1);
    }

    /// Whether `/proc/<pid>` is gone or a zombie (dead, waiting for init to reap it).
    fn is_dead(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    /// The pid a handler wrote to `path`.
    fn written_pid(path: &Path) -> u32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn a_handlers_background_processes_die_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let holding = temp_file(&dir, "holding");
        let detached = temp_file(&dir, "detached");
        let resolver = FakeResolver::default()
            // Holds the handler's stdout open: killed after the drain.
            .handler(
                "holding",
                pipe(format!("sleep 300 & echo $! > '{}'", holding.display())),
            )
            // Closed its output: killed as soon as the handler exits.
            .handler(
                "detached",
                pipe(format!(
                    "sleep 300 > /dev/null 2>&1 & echo $! > '{}'",
                    detached.display()
                )),
            );
        let pipeline = start(resolver);
        submit(&pipeline, event(2, &["holding", "detached"]));
        // Shutdown waits for both handlers to return.
        pipeline.shutdown().await.unwrap();
        let stats = pipeline.stats();
        assert_eq!(stats.handler_runs.load(Ordering::Relaxed), 2);
        assert_eq!(stats.handler_failures.load(Ordering::Relaxed), 0);
        for pidfile in [&holding, &detached] {
            let pid = written_pid(pidfile);
            wait_until(&format!("the handler's child {pid} to die"), || {
                is_dead(pid)
            })
            .await;
        }
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = temp_file(&dir, "pid");
        let handler = Handler {
            timeout: 1,
            ..pipe(format!(
                "sleep 30 & echo $! > '{}'; wait",
                pidfile.display()
            ))
        };
        let pipeline = start(FakeResolver::default().handler("slow", handler));
        submit(&pipeline, event(2, &["slow"]));

        let stats = pipeline.stats();
        wait_until("the handler to time out", || {
            stats.handler_timeouts.load(Ordering::Relaxed) == 1
        })
        .await;
        let pid = written_pid(&pidfile);
        wait_until(&format!("the handler's child {pid} to die"), || {
            is_dead(pid)
        })
        .await;
        assert_eq!(stats.handler_failures.load(Ordering::Relaxed), 1);
        pipeline.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn handlers_see_the_entity_redacted_as_sensus_do() {
        let dir = tempfile::tempdir().unwrap();
        let out = out_dir(&dir, "events");
        let pipeline = start(FakeResolver::default().handler("store", store_in(&out)));
        let mut redacted = event(2, &["store"]);
        let entity = redacted.entity.get_or_insert_with(Default::default);
        let meta = entity.metadata.get_or_insert_with(Default::default);
        meta.labels.insert("password".into(), "hunter2".into());
        meta.labels.insert("region".into(), "eu".into());
        submit(&pipeline, redacted);
        let handled = wait_for_events(&out, 1).await;
        let labels = &handled[0]
            .entity
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .labels;
        assert_eq!(labels["password"], cairn_api::redact::ENTITY_REDACTED);
        assert_eq!(labels["region"], "eu");
        pipeline.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn is_incident_drops_ok_events_but_passes_resolutions() {
        let dir = tempfile::tempdir().unwrap();
        let out = out_dir(&dir, "events");
        let resolver = FakeResolver::default()
            .handler("alert", filtered(store_in(&out), &[FILTER_IS_INCIDENT]));
        let pipeline = start(resolver);
        for processed_event in processed(&[0, 2, 0], &["alert"]) {
            submit(&pipeline, processed_event);
        }
        let handled = wait_for_events(&out, 2).await;
        let mut handled = statuses(&handled);
        handled.sort_unstable();
        assert_eq!(handled, [0, 2], "the critical event and the resolution");
        pipeline.shutdown().await.unwrap();
        assert_eq!(runs(&pipeline), 2, "the first OK event was filtered");
    }

    #[tokio::test]
    async fn not_silenced_drops_silenced_events() {
        let dir = tempfile::tempdir().unwrap();
        let silenced_out = out_dir(&dir, "silenced");
        let plain_out = out_dir(&dir, "plain");
        let mut resolver = FakeResolver::default()
            .handler(
                "quiet",
                filtered(store_in(&silenced_out), &[FILTER_NOT_SILENCED]),
            )
            .handler("loud", store_in(&plain_out));
        let entry = Silenced {
            subscription: "web".to_owned(),
            ..Silenced::default()
        };
        resolver.silenced = vec![(entry.canonical_name(), entry)];
        let pipeline = start(resolver);
        submit(&pipeline, event(2, &["quiet", "loud"]));
        wait_for_events(&plain_out, 1).await;
        pipeline.shutdown().await.unwrap();
        assert!(stored(&silenced_out).is_empty());
        assert_eq!(runs(&pipeline), 1);
    }

    #[tokio::test]
    async fn set_handler_fans_out_one_level() {
        let dir = tempfile::tempdir().unwrap();
        let first = out_dir(&dir, "first");
        let second = out_dir(&dir, "second");
        let nested = out_dir(&dir, "nested");
        let set = |members: &[&str]| Handler {
            handler_type: "set".to_owned(),
            handlers: members.iter().map(|name| name.to_string()).collect(),
            ..Handler::default()
        };
        let resolver = FakeResolver::default()
            .handler("first", store_in(&first))
            .handler("second", store_in(&second))
            .handler("nested-member", store_in(&nested))
            .handler("inner", set(&["nested-member"]))
            .handler("all", set(&["first", "second", "inner", "missing"]));
        let pipeline = start(resolver);
        // `first` is also named directly: it runs once.
        submit(&pipeline, event(2, &["all", "first"]));
        wait_for_events(&first, 1).await;
        wait_for_events(&second, 1).await;
        pipeline.shutdown().await.unwrap();
        assert!(stored(&nested).is_empty(), "nested sets are not expanded");
        assert_eq!(runs(&pipeline), 2);
    }

    /// A handler that waits until the file `gate` exists, then stores its event in `out`.
    fn gated(gate: &Path, out: &Path) -> Handler {
        Handler {
            command: format!(
                "while [ ! -e '{}' ]; do sleep 0.05; done; {}",
                gate.display(),
                store_in(out).command
            ),
            ..store_in(out)
        }
    }

    #[tokio::test]
    async fn events_held_are_bounded_in_bytes_running_ones_included() {
        let dir = tempfile::tempdir().unwrap();
        let gate = temp_file(&dir, "gate");
        let out = out_dir(&dir, "out");
        let blocking = gated(&gate, &out);
        let big = |handlers: &[&str]| {
            let mut event = event(2, handlers);
            if let Some(check) = event.check.as_mut() {
                check.output = "x".repeat(100 * 1024);
            }
            event
        };
        let size = json_size(&big(&["block"]));
        assert_eq!(
            size,
            serde_json::to_vec(&Wire(&big(&["block"]))).unwrap().len()
        );
        // Room for three events; the count limit and the handler slots are far above.
        let config = PipelineConfig {
            queue_capacity: 1_000,
            queue_bytes: 3 * size + size / 2,
            max_concurrent_handlers: 100,
            ..config()
        };
        let pipeline = start_with(config, FakeResolver::default().handler("block", blocking));
        for _ in 0..3 {
            submit(&pipeline, big(&["block"]));
        }
        // Three handler runs are blocked, holding their events: the fourth is refused, though
        // the queue itself is empty.
        match pipeline.submit("default".to_owned(), big(&["block"])) {
            Err(PipelineError::QueueBytes {
                limit,
                size: refused,
            }) => {
                assert_eq!((limit, refused), (3 * size + size / 2, size));
            }
            other => panic!("expected QueueBytes, got {other:?}"),
        }
        let stats = pipeline.stats();
        assert_eq!(stats.dropped_queue_bytes.load(Ordering::Relaxed), 1);
        assert_eq!(stats.dropped_queue_full.load(Ordering::Relaxed), 0);

        // Once the runs finish their bytes are given back.
        std::fs::write(&gate, b"").unwrap();
        wait_for_events(&out, 3).await;
        let deadline = Instant::now() + WAIT;
        while pipeline.held_bytes.load(Ordering::Acquire) != 0 {
            assert!(Instant::now() < deadline, "the bytes were never given back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..3 {
            submit(&pipeline, big(&["block"]));
        }
        wait_for_events(&out, 6).await;
        pipeline.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn full_queue_refuses_at_once_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let gate = temp_file(&dir, "gate");
        let out = out_dir(&dir, "out");
        let blocking = gated(&gate, &out);
        let config = PipelineConfig {
            queue_capacity: 1,
            max_concurrent_handlers: 1,
            ..config()
        };
        let pipeline = start_with(config, FakeResolver::default().handler("block", blocking));

        // One event runs, one waits for a handler slot inside the dispatcher, one waits in
        // the queue; the next is refused.
        let mut accepted = 0;
        let deadline = Instant::now() + WAIT;
        loop {
            let started = Instant::now();
            let result = pipeline.submit("default".to_owned(), event(2, &["block"]));
            assert!(
                started.elapsed() < Duration::from_millis(100),
                "submit must not wait"
            );
            match result {
                Ok(()) => accepted += 1,
                Err(PipelineError::QueueFull) => break,
                Err(error) => panic!("unexpected {error}"),
            }
            assert!(Instant::now() < deadline, "the queue never filled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(accepted >= 1, "accepted {accepted}");
        let stats = pipeline.stats();
        assert!(stats.dropped_queue_full.load(Ordering::Relaxed) >= 1);

        std::fs::write(&gate, b"").unwrap();
        wait_for_events(&out, accepted).await;
        submit(&pipeline, event(2, &["block"]));
        wait_for_events(&out, accepted + 1).await;
        pipeline.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn allow_filter_passes_matching_events() {
        let dir = tempfile::tempdir().unwrap();
        let out = out_dir(&dir, "critical");
        let resolver = FakeResolver::default()
            .filter("critical", "allow", &["event.check.status == 2"])
            .handler("page", filtered(store_in(&out), &["critical"]));
        let pipeline = start(resolver);
        submit(&pipeline, event(1, &["page"]));
        submit(&pipeline, event(2, &["page"]));
        let handled = wait_for_events(&out, 1).await;
        pipeline.shutdown().await.unwrap();
        assert_eq!(statuses(&handled), [2]);
        assert_eq!(runs(&pipeline), 1, "status 1 was dropped");
    }

    #[tokio::test]
    async fn deny_filter_drops_matching_events() {
        let dir = tempfile::tempdir().unwrap();
        let out = out_dir(&dir, "prod");
        let resolver = FakeResolver::default()
            .filter(
                "no-dev",
                "deny",
                &[
                    "event.entity.labels.env == 'dev'",
                    "event.check.status != 0",
                ],
            )
            .handler("page", filtered(store_in(&out), &["no-dev"]));
        let pipeline = start(resolver);
        let labelled = |env: &str| {
            let mut labelled = event(2, &["page"]);
            let metadata = labelled.entity.as_mut().unwrap().metadata.as_mut().unwrap();
            metadata.labels = BTreeMap::from([("env".to_owned(), env.to_owned())]);
            labelled
        };
        submit(&pipeline, labelled("dev"));
        submit(&pipeline, labelled("prod"));
        let handled = wait_for_events(&out, 1).await;
        pipeline.shutdown().await.unwrap();
        let entity = handled[0].entity.as_ref().unwrap();
        assert_eq!(entity.metadata.as_ref().unwrap().labels["env"], "prod");
        assert_eq!(runs(&pipeline), 1, "the dev event was denied");
    }

    /// As sensu-go's `legacy.go`: a failing expression is skipped, so an `allow` filter whose
    /// only expression fails passes the event and such a `deny` filter drops it.
    #[tokio::test]
    async fn failing_expressions_are_skipped_as_in_sensu_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = out_dir(&dir, "allowed");
        let denied = out_dir(&dir, "denied");
        let dropped = out_dir(&dir, "dropped");
        let missing = out_dir(&dir, "missing");
        let resolver = FakeResolver::default()
            .filter("broken-allow", "allow", &["event.check.status == = 2"])
            .filter(
                "broken-deny",
                "deny",
                &["event.check.status == 2", "event.check.status"],
            )
            .filter(
                "false-allow",
                "allow",
                &["event.nothing.here", "event.check.status == 1"],
            )
            .handler("allow", filtered(store_in(&allowed), &["broken-allow"]))
            .handler("deny", filtered(store_in(&denied), &["broken-deny"]))
            .handler("dropped", filtered(store_in(&dropped), &["false-allow"]))
            .handler("missing", filtered(store_in(&missing), &["no-such-filter"]));
        let pipeline = start(resolver);
        for _ in 0..2 {
            submit(
                &pipeline,
                event(2, &["allow", "deny", "dropped", "missing"]),
            );
        }
        wait_for_events(&allowed, 2).await;
        pipeline.shutdown().await.unwrap();
        assert!(
            stored(&denied).is_empty(),
            "a deny filter whose failures are skipped"
        );
        assert!(
            stored(&dropped).is_empty(),
            "the expression after the failure is false"
        );
        assert!(stored(&missing).is_empty(), "a missing filter drops");
        assert_eq!(runs(&pipeline), 2);
        let errors = pipeline.stats().filter_errors.load(Ordering::Relaxed);
        assert_eq!(errors, 6, "three failing expressions, two events");
    }

    #[tokio::test]
    async fn failures_are_counted_and_do_not_stop_the_dispatcher() {
        let dir = tempfile::tempdir().unwrap();
        let out = out_dir(&dir, "after");
        let unknown = Handler {
            handler_type: "grpc".to_owned(),
            ..Handler::default()
        };
        let resolver = FakeResolver::default()
            .handler("fails", pipe("exit 3".to_owned()))
            .handler("unknown", unknown)
            .handler(
                "mutated",
                Handler {
                    mutator: "custom".to_owned(),
                    ..store_in(&out)
                },
            )
            .handler("after", store_in(&out));
        let pipeline = start(resolver);
        submit(&pipeline, event(2, &["fails", "unknown", "mutated"]));
        submit(&pipeline, event(2, &["after"]));
        wait_for_events(&out, 1).await;
        pipeline.shutdown().await.unwrap();
        let stats = pipeline.stats();
        assert_eq!(stats.handler_failures.load(Ordering::Relaxed), 2);
        assert_eq!(
            stats.mutator_failures.load(Ordering::Relaxed),
            1,
            "custom is missing"
        );
        assert_eq!(stats.handler_timeouts.load(Ordering::Relaxed), 0);
        assert_eq!(stats.handler_runs.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn tcp_and_udp_handlers_send_the_event() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let socket_handler = |handler_type: &str, port: u16| Handler {
            handler_type: handler_type.to_owned(),
            socket: Some(HandlerSocket {
                host: "127.0.0.1".to_owned(),
                port: u32::from(port),
            }),
            ..Handler::default()
        };
        let resolver = FakeResolver::default()
            .handler(
                "tcp",
                socket_handler("tcp", tcp.local_addr().unwrap().port()),
            )
            .handler(
                "udp",
                socket_handler("udp", udp.local_addr().unwrap().port()),
            );
        let pipeline = start(resolver);
        submit(&pipeline, event(2, &["tcp", "udp"]));

        let received = tokio::time::timeout(WAIT, async {
            let (mut stream, _) = tcp.accept().await.unwrap();
            let mut over_tcp = Vec::new();
            stream.read_to_end(&mut over_tcp).await.unwrap();
            let mut datagram = vec![0_u8; 64 * 1024];
            let len = udp.recv(&mut datagram).await.unwrap();
            datagram.truncate(len);
            (over_tcp, datagram)
        })
        .await
        .expect("timed out waiting for the tcp and udp handlers");
        for bytes in [received.0, received.1] {
            let sent = handled_event(&bytes).expect("a whole event");
            assert_eq!(sent.check.unwrap().metadata.unwrap().name, "check-http");
        }
        pipeline.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_kills_handlers_past_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = temp_file(&dir, "pid");
        let config = PipelineConfig {
            shutdown_grace: Duration::from_millis(300),
            ..config()
        };
        let handler = pipe(format!(
            "sleep 30 & echo $! > '{}'; wait",
            pidfile.display()
        ));
        let pipeline = start_with(config, FakeResolver::default().handler("slow", handler));
        submit(&pipeline, event(2, &["slow"]));
        wait_until("the handler to start", || {
            std::fs::read_to_string(&pidfile).is_ok_and(|text| text.ends_with('\n'))
        })
        .await;
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();

        let result = tokio::time::timeout(WAIT, pipeline.shutdown())
            .await
            .expect("shutdown must end");
        assert_eq!(
            result,
            Err(PipelineError::DrainTimedOut {
                grace: Duration::from_millis(300)
            })
        );
        wait_until(&format!("the handler's child {pid} to die"), || {
            is_dead(pid)
        })
        .await;
        assert_eq!(
            pipeline.submit("default".to_owned(), event(2, &["slow"])),
            Err(PipelineError::NotRunning)
        );
    }

    #[test]
    fn env_vars_split_at_the_first_equals_sign() {
        let entries = [
            "A=1".to_owned(),
            "B=x=y".to_owned(),
            "C=".to_owned(),
            "=v".to_owned(),
            "D".to_owned(),
        ];
        let (pairs, skipped) = parse_env_vars(&entries);
        assert_eq!(pairs, [("A", "1"), ("B", "x=y"), ("C", "")]);
        assert_eq!(skipped, 2);
    }

    #[test]
    fn warn_once_remembers_keys() {
        let warned = WarnOnce::default();
        assert!(warned.first(&["filter", "default", "a"]));
        assert!(!warned.first(&["filter", "default", "a"]));
        assert!(warned.first(&["filter", "other", "a"]));
    }

    /// What the handlers writing into `dir` ([`store_in`]) got, as text, sorted.
    fn raw_outputs(dir: &Path) -> Vec<String> {
        let mut outputs: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .map(|path| std::fs::read_to_string(path).unwrap())
            .collect();
        outputs.sort();
        outputs
    }

    async fn wait_for_outputs(dir: &Path, count: usize) -> Vec<String> {
        let mut outputs = Vec::new();
        wait_until(&format!("{count} outputs in {}", dir.display()), || {
            outputs = raw_outputs(dir);
            outputs.len() >= count
        })
        .await;
        outputs
    }

    fn mutated(handler: Handler, mutator: &str) -> Handler {
        Handler {
            mutator: mutator.to_owned(),
            ..handler
        }
    }

    fn pipe_mutator(command: &str) -> Mutator {
        Mutator {
            command: command.to_owned(),
            ..Mutator::default()
        }
    }

    #[tokio::test]
    async fn pipe_mutator_reads_the_event_and_its_stdout_reaches_the_handler() {
        let dir = tempfile::tempdir().unwrap();
        let out = out_dir(&dir, "out");
        let resolver = FakeResolver::default()
            .mutator(
                "summary",
                Mutator {
                    // The event's JSON on stdin; env_vars and secrets in a minimal environment.
                    command: "grep -o '\"status\":[0-9]*' | head -n 1 | tr -d '\n'; \
                              printf ' %s %s %s' \"$GREETING\" \"$TOKEN\" \"${HOME:-nohome}\""
                        .to_owned(),
                    env_vars: vec!["GREETING=hi".to_owned()],
                    secrets: vec![SecretRef {
                        name: "TOKEN".to_owned(),
                        secret: "api-token".to_owned(),
                    }],
                    ..Mutator::default()
                },
            )
            .handler("file", mutated(store_in(&out), "summary"));
        let resolver = FakeResolver {
            secrets: HashMap::from([("api-token".to_owned(), "s3cret".to_owned())]),
            ..resolver
        };
        let pipeline = start(resolver);
        submit(&pipeline, event(2, &["file"]));
        let outputs = wait_for_outputs(&out, 1).await;
        pipeline.shutdown().await.unwrap();
        assert_eq!(outputs, [r#""status":2 hi s3cret nohome"#]);
        let stats = pipeline.stats();
        assert_eq!(stats.mutator_runs.load(Ordering::Relaxed), 1);
        assert_eq!(stats.mutator_failures.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn javascript_mutator_output_reaches_the_handler() {
        let dir = tempfile::tempdir().unwrap();
        let out = out_dir(&dir, "out");
        let resolver = FakeResolver::default()
            .mutator(
                "labelled",
                Mutator {
                    mutator_type: "javascript".to_owned(),
                    eval: "event.check.output = 'mutated ' + event.check.status; \
                           return JSON.stringify(event.check);"
                        .to_owned(),
                    ..Mutator::default()
                },
            )
            .handler("file", mutated(store_in(&out), "labelled"))
            .handler("plain", mutated(store_in(&out), "only_check_output"));
        let pipeline = start(resolver);
        let mut sent = event(1, &["file", "plain"]);
        sent.check.as_mut().unwrap().output = "original".to_owned();
        submit(&pipeline, sent);
        let outputs = wait_for_outputs(&out, 2).await;
        pipeline.shutdown().await.unwrap();
        // Sorted: "original" before "{".
        assert_eq!(
            outputs[0], "original",
            "only_check_output sends the output as is"
        );
        let check: serde_json::Value = serde_json::from_str(&outputs[1]).unwrap();
        assert_eq!(check["output"], "mutated 1", "{outputs:?}");
    }

    #[tokio::test]
    async fn a_failing_or_missing_mutator_stops_its_handler_only() {
        let dir = tempfile::tempdir().unwrap();
        let out = out_dir(&dir, "out");
        let resolver = FakeResolver::default()
            .mutator("broken", pipe_mutator("echo partial; exit 3"))
            .mutator(
                "throws",
                Mutator {
                    mutator_type: "javascript".to_owned(),
                    eval: "throw new Error('no');".to_owned(),
                    ..Mutator::default()
                },
            )
            .handler("a", mutated(store_in(&out), "broken"))
            .handler("b", mutated(store_in(&out), "missing"))
            .handler("c", mutated(store_in(&out), "throws"))
            .handler("d", store_in(&out));
        let pipeline = start(resolver);
        submit(&pipeline, event(2, &["a", "b", "c", "d"]));
        let outputs = wait_for_outputs(&out, 1).await;
        pipeline.shutdown().await.unwrap();
        assert_eq!(outputs.len(), 1, "only the handler without a mutator ran");
        assert!(handled_event(outputs[0].as_bytes()).is_some());
        let stats = pipeline.stats();
        assert_eq!(stats.mutator_failures.load(Ordering::Relaxed), 3);
        assert_eq!(stats.handler_runs.load(Ordering::Relaxed), 1);
    }

    fn workflow(
        name: &str,
        filters: &[&str],
        mutator: Option<&str>,
        handler: &str,
    ) -> cairn_api::model::PipelineWorkflow {
        let reference = |name: &str, type_name: &str| cairn_api::model::ResourceReference {
            name: name.to_owned(),
            type_name: type_name.to_owned(),
            api_version: "core/v2".to_owned(),
        };
        cairn_api::model::PipelineWorkflow {
            name: name.to_owned(),
            filters: filters
                .iter()
                .map(|filter| reference(filter, "EventFilter"))
                .collect(),
            mutator: mutator.map(|mutator| reference(mutator, "Mutator")),
            handler: Some(reference(handler, "Handler")),
        }
    }

    #[tokio::test]
    async fn pipeline_workflows_each_filter_mutate_and_handle() {
        let dir = tempfile::tempdir().unwrap();
        let alerts = out_dir(&dir, "alerts");
        let all = out_dir(&dir, "all");
        let legacy = out_dir(&dir, "legacy");
        let resolver = FakeResolver::default()
            .filter(
                "critical",
                "allow",
                &["[2].some(function (s) { return s == event.check.status; })"],
            )
            .mutator("upper", pipe_mutator("tr a-z A-Z"))
            .handler("page", store_in(&alerts))
            .handler("archive", store_in(&all))
            .handler("legacy", store_in(&legacy))
            .pipeline(
                "incidents",
                PipelineResource {
                    metadata: None,
                    workflows: vec![
                        workflow("page-critical", &["critical"], None, "page"),
                        workflow("archive", &[], Some("upper"), "archive"),
                        // A set is not a workflow's handler: skipped, not expanded.
                        workflow("skipped", &[], None, "missing"),
                    ],
                },
            );
        let pipeline = start(resolver);
        for status in [0, 2] {
            let mut sent = event(status, &["legacy"]);
            let check = sent.check.as_mut().unwrap();
            check.output = format!("status {status}");
            check.pipelines = vec![cairn_api::model::ResourceReference {
                name: "incidents".to_owned(),
                type_name: "Pipeline".to_owned(),
                api_version: "core/v2".to_owned(),
            }];
            submit(&pipeline, sent);
        }
        let archived = wait_for_outputs(&all, 2).await;
        let paged = wait_for_events(&alerts, 1).await;
        wait_for_outputs(&legacy, 2).await;
        pipeline.shutdown().await.unwrap();
        assert_eq!(statuses(&paged), [2], "only the critical event was paged");
        assert!(
            archived
                .iter()
                .all(|text| text.contains("\"STATUS 0\"") || text.contains("\"STATUS 2\"")),
            "the archive workflow's mutator ran on both: {archived:?}"
        );
        assert_eq!(runs(&pipeline), 5, "legacy 2, page 1, archive 2");
    }

    #[tokio::test]
    async fn a_workflow_with_a_filter_cairn_cannot_follow_is_skipped_whole() {
        let dir = tempfile::tempdir().unwrap();
        let out = out_dir(&dir, "out");
        let mut odd = workflow("odd", &[], None, "file");
        odd.filters.push(cairn_api::model::ResourceReference {
            name: "elsewhere".to_owned(),
            type_name: "EventFilter".to_owned(),
            api_version: "pipeline/v9".to_owned(),
        });
        let resolver = FakeResolver::default()
            .handler("file", store_in(&out))
            .handler("marker", store_in(&out))
            .pipeline(
                "p",
                PipelineResource {
                    metadata: None,
                    workflows: vec![odd, workflow("marker", &[], None, "marker")],
                },
            );
        let pipeline = start(resolver);
        let mut sent = event(2, &[]);
        sent.pipelines = vec![cairn_api::model::ResourceReference {
            name: "p".to_owned(),
            type_name: String::new(),
            api_version: String::new(),
        }];
        submit(&pipeline, sent);
        wait_for_outputs(&out, 1).await;
        pipeline.shutdown().await.unwrap();
        assert_eq!(
            runs(&pipeline),
            1,
            "the odd workflow did not run without its filter"
        );
    }

    // --- runtime assets ---

    /// A tar.gz of `(path, contents, mode)` files.
    fn asset_archive(files: &[(&str, &str, u32)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, contents, mode) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(contents.len() as u64);
            header.set_mode(*mode);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(&mut header, path, contents.as_bytes())
                .unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn sha512_hex(bytes: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha512::digest(bytes))
    }

    /// Serves `body` over plain HTTP to every request; returns its URL and the request count.
    async fn serve_archive(body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/asset.tar.gz", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let body = body.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0_u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(&body).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        (url, requests)
    }

    fn asset(name: &str, url: &str, sha512: &str) -> Asset {
        Asset {
            metadata: Some(ObjectMeta::named("default", name)),
            url: url.to_owned(),
            sha512: sha512.to_owned(),
            ..Asset::default()
        }
    }

    /// The builds unpacked in the cache (its entries but the temporary folder).
    fn unpacked(cache: &Path) -> Vec<String> {
        std::fs::read_dir(cache).map_or_else(
            |_| Vec::new(),
            |entries| {
                entries
                    .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|name| !name.starts_with('.'))
                    .collect()
            },
        )
    }

    #[test]
    fn asset_variables_go_before_the_handler_path_and_env_vars_still_win() {
        let assets_env = vec![
            ("PATH".to_owned(), format!("/cache/a/bin:{HANDLER_PATH}")),
            ("LD_LIBRARY_PATH".to_owned(), "/cache/a/lib".to_owned()),
            ("CPATH".to_owned(), "/cache/a/include".to_owned()),
            ("TOOLS_PLUGIN_PATH".to_owned(), "/cache/a".to_owned()),
        ];
        let env_vars = vec!["CPATH=/mine".to_owned()];
        let env = pipe_environment(&env_vars, &[], &assets_env);
        assert_eq!(
            env,
            [
                ("PATH", format!("/cache/a/bin:{HANDLER_PATH}").as_str()),
                ("LD_LIBRARY_PATH", "/cache/a/lib"),
                ("CPATH", "/cache/a/include"),
                ("TOOLS_PLUGIN_PATH", "/cache/a"),
                ("CPATH", "/mine"),
            ]
        );
        assert_eq!(pipe_environment(&[], &[], &[]), [("PATH", HANDLER_PATH)]);
    }

    #[tokio::test]
    async fn handler_and_mutator_run_programs_of_their_assets() {
        let temp = tempfile::tempdir().unwrap();
        let out = temp_file(&temp, "handled");
        let archive = asset_archive(&[
            (
                "bin/record",
                "#!/bin/sh\nprintf '%s\\n' \"$LD_LIBRARY_PATH\" > \"$1.env\"\ncat > \"$1\"\n",
                0o755,
            ),
            ("bin/shout", "#!/bin/sh\nprintf 'mutated:'; cat\n", 0o755),
        ]);
        let sha = sha512_hex(&archive);
        let (url, requests) = serve_archive(archive).await;
        let cache = temp.path().join("cache");
        let mut resolver = FakeResolver {
            cache_dir: Some(cache.clone()),
            ..FakeResolver::default()
        };
        resolver
            .assets
            .insert("tools".to_owned(), asset("tools", &url, &sha));
        let handler = Handler {
            runtime_assets: vec!["tools".to_owned()],
            mutator: "shouting".to_owned(),
            ..pipe(format!("record '{}'", out.display()))
        };
        let mutator = Mutator {
            command: "shout".to_owned(),
            runtime_assets: vec!["tools".to_owned()],
            ..Mutator::default()
        };
        let pipeline = start(
            resolver
                .handler("recorder", handler)
                .mutator("shouting", mutator),
        );
        submit(&pipeline, event(2, &["recorder"]));
        wait_until("the asset's handler ran", || out.exists()).await;
        let got = std::fs::read_to_string(&out).unwrap();
        assert!(got.starts_with("mutated:{"), "{got}");
        let lib = std::fs::read_to_string(out.with_extension("env")).unwrap();
        assert!(lib.trim().ends_with("/lib"), "{lib}");
        assert!(lib.starts_with(&cache.display().to_string()), "{lib}");
        // One download for the mutator and the handler.
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        assert_eq!(pipeline.stats().handler_failures.load(Ordering::Relaxed), 0);
        assert_eq!(pipeline.stats().mutator_failures.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_missing_asset_or_a_wrong_sha512_fails_only_that_handler() {
        let temp = tempfile::tempdir().unwrap();
        let archive = asset_archive(&[("bin/tool", "#!/bin/sh\ntrue\n", 0o755)]);
        let (url, requests) = serve_archive(archive).await;
        let cache = temp.path().join("cache");
        let mut resolver = FakeResolver {
            cache_dir: Some(cache.clone()),
            ..FakeResolver::default()
        };
        resolver
            .assets
            .insert("wrong".to_owned(), asset("wrong", &url, &"ab".repeat(64)));
        let ran = temp_file(&temp, "ran");
        let missing = Handler {
            runtime_assets: vec!["gone".to_owned()],
            ..pipe(format!("touch '{}.missing'", ran.display()))
        };
        let wrong = Handler {
            runtime_assets: vec!["wrong".to_owned()],
            ..pipe(format!("touch '{}.wrong'", ran.display()))
        };
        let plain = pipe(format!("touch '{}'", ran.display()));
        let pipeline = start(
            resolver
                .handler("missing", missing)
                .handler("wrong", wrong)
                .handler("plain", plain),
        );
        submit(&pipeline, event(2, &["missing", "wrong", "plain"]));
        wait_until("two handlers failed", || {
            pipeline.stats().handler_failures.load(Ordering::Relaxed) == 2
        })
        .await;
        wait_until("the plain handler ran", || ran.exists()).await;
        assert!(!ran.with_extension("missing").exists());
        assert!(!ran.with_extension("wrong").exists());
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        assert_eq!(unpacked(&cache), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_filter_calls_a_function_of_its_assets_javascript() {
        let temp = tempfile::tempdir().unwrap();
        let archive = asset_archive(&[
            (
                "lib/severity.js",
                "function is_critical(event) { return event.check.status == 2; }\n",
                0o644,
            ),
            ("README", "not javascript(", 0o644),
        ]);
        let sha = sha512_hex(&archive);
        let (url, _) = serve_archive(archive).await;
        let mut resolver = FakeResolver {
            cache_dir: Some(temp.path().join("cache")),
            ..FakeResolver::default()
        };
        resolver
            .assets
            .insert("severity".to_owned(), asset("severity", &url, &sha));
        let out = out_dir(&temp, "out");
        resolver = resolver
            .filter("critical", "allow", &["is_critical(event)"])
            .handler("store", filtered(store_in(&out), &["critical"]));
        resolver.filters.get_mut("critical").unwrap().runtime_assets = vec!["severity".to_owned()];
        let pipeline = start(resolver);
        submit(&pipeline, event(1, &["store"]));
        submit(&pipeline, event(2, &["store"]));
        let events = wait_for_events(&out, 1).await;
        assert_eq!(statuses(&events), [2]);
        assert_eq!(pipeline.stats().filter_errors.load(Ordering::Relaxed), 0);
        pipeline.shutdown().await.unwrap();
        assert_eq!(statuses(&stored(&out)), [2]);
    }
}
