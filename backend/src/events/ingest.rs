//! Storing an event, from the REST API or an agent session alike: the state machine of
//! [`crate::events::rules`] applied against the stored event of the same entity/check, a write
//! guarded by that event's revision, marked against the silenced entries
//! ([`crate::events::silences`]), the proxy entity created on first sight, then the pipeline
//! (an [`EventSink`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_api::model::Event;
use cairn_api::{Kind, ObjectMeta, Resource, Spec};

use crate::events::checkstate::CheckStateCache;
use crate::events::silences::Silences;
use crate::store::resources::{ResourceError, Resources};
use crate::store::{Precondition, StoreError};

/// Receives stored events for the handler pipeline. Must not block.
pub(crate) trait EventSink: Send + Sync {
    /// Hands over an event; a full queue is the sink's to count and report.
    fn submit(&self, namespace: &str, event: Event);
}

/// What storing an event needs: the store, the check-state cache and where stored events go.
#[derive(Clone)]
pub(crate) struct Ingest {
    /// Typed resources over the store.
    pub resources: Resources,
    /// Check state of the last stored event per entity/check, by store revision.
    pub check_states: Arc<CheckStateCache>,
    /// Where events go after they are stored (the pipeline).
    pub sink: Arc<dyn EventSink>,
    /// Events stored so far (`cairn_events_ingested_total`).
    pub stored: Arc<AtomicU64>,
    /// The silenced entries events are marked against.
    pub silences: Arc<Silences>,
}

/// Why an event was not stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IngestError {
    /// The event itself is wrong (Sensu's rules refuse it): sending it again cannot help.
    #[error("{0}")]
    Invalid(String),
    /// Concurrent writes of the same entity/check kept winning; another attempt may succeed.
    #[error("{0}")]
    Contended(String),
    /// The store failed (unreachable, or a record that does not decode).
    #[error(transparent)]
    Store(#[from] ResourceError),
}

impl From<StoreError> for IngestError {
    fn from(err: StoreError) -> IngestError {
        IngestError::Store(ResourceError::Store(err))
    }
}

impl IngestError {
    /// Whether sending the same event again is pointless (the event is at fault, not the
    /// backend): an agent drops such an event instead of keeping it for the next session.
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(self, IngestError::Invalid(_))
    }
}

impl Ingest {
    /// Stores `event` (already checked for shape: entity and check named, namespace set) as
    /// `event_name` (`<entity>/<check>`) in `namespace`, creates its proxy entity when new,
    /// counts it and hands it to the pipeline.
    ///
    /// # Errors
    /// [`IngestError`]: an invalid event, repeated concurrent writes, or a store failure.
    pub(crate) async fn ingest(
        &self,
        namespace: &str,
        event_name: &str,
        event: Event,
        created_by: &str,
    ) -> Result<(), IngestError> {
        let mut event = store_event(self, created_by, namespace, event_name, event).await?;
        self.stored.fetch_add(1, Ordering::Relaxed);
        ensure_entity(&self.resources, namespace, &event).await?;
        // Handlers and mutators read the event as Sensu writes it, `metadata.namespace` and
        // `created_by` included (the stored spec keeps them in the resource's metadata).
        with_namespace(&mut event, namespace, created_by);
        self.sink.submit(namespace, event);
        Ok(())
    }
}

impl Ingest {
    /// The event as [`Ingest::ingest`] would store and hand it on now, without storing it or
    /// deleting any silence (for dry runs).
    ///
    /// # Errors
    /// [`IngestError::Invalid`] for an event Sensu's rules refuse, store failures.
    pub(crate) async fn preview(
        &self,
        namespace: &str,
        event_name: &str,
        event: Event,
        created_by: &str,
    ) -> Result<Event, IngestError> {
        let previous = match self
            .resources
            .get(Kind::Event, namespace, event_name)
            .await?
        {
            Some(stored) => match stored.resource.spec {
                Spec::Event(previous) => Some(*previous),
                _ => None,
            },
            None => None,
        };
        let mut event =
            crate::events::rules::process_event(previous.as_ref(), event, crate::clock::unix_now())
                .map_err(|err| IngestError::Invalid(err.to_string()))?;
        self.silences.mark(None, namespace, &mut event).await;
        with_namespace(&mut event, namespace, created_by);
        Ok(event)
    }
}

/// Sets the event's `metadata.namespace` and `created_by`, keeping what else its metadata
/// carries (the annotations of metric thresholds, the client's labels).
fn with_namespace(event: &mut Event, namespace: &str, created_by: &str) {
    let metadata = event.metadata.get_or_insert_with(ObjectMeta::default);
    namespace.clone_into(&mut metadata.namespace);
    created_by.clone_into(&mut metadata.created_by);
}

/// How often [`store_event`] recomputes an event whose previous result changed under it.
const EVENT_WRITE_ATTEMPTS: usize = 8;

/// Processes `incoming` against the stored event of the same entity/check and stores the
/// result, guarded by the stored revision so that concurrent results for one check each land in
/// the history; returns the stored event.
async fn store_event(
    state: &Ingest,
    created_by: &str,
    namespace: &str,
    event_name: &str,
    incoming: Event,
) -> Result<Event, IngestError> {
    let key = Resources::key(Kind::Event, namespace, event_name);
    // One writer per key in this process; the precondition below catches other processes.
    let _writer = state.check_states.write_lock(&key).await;
    let mut incoming = Some(incoming);
    for attempt in 1..=EVENT_WRITE_ATTEMPTS {
        let (previous, precondition) = match state.resources.store().get(&key).await? {
            None => (None, Precondition::Absent),
            Some(entry) => {
                let previous = match state.check_states.previous(&key, entry.mod_revision) {
                    Some(previous) => previous,
                    None => match crate::store::resources::decode(&entry)?.resource.spec {
                        Spec::Event(previous) => *previous,
                        _ => {
                            return Err(ResourceError::Corrupt {
                                key: key.clone(),
                                reason: "an event key holds another kind".into(),
                            }
                            .into())
                        }
                    },
                };
                (Some(previous), Precondition::Revision(entry.mod_revision))
            }
        };
        // Keep the incoming event for another attempt only when one may follow.
        let this_attempt = if attempt == EVENT_WRITE_ATTEMPTS {
            incoming.take()
        } else {
            incoming.clone()
        }
        .expect("the event is kept until the last attempt takes it");
        let now = crate::clock::unix_now();
        let mut event = crate::events::rules::process_event(previous.as_ref(), this_attempt, now)
            .map_err(|err| IngestError::Invalid(err.to_string()))?;
        state
            .silences
            .mark(Some(&state.resources), namespace, &mut event)
            .await;
        let mut event_meta = ObjectMeta::named(namespace, event_name);
        event_meta.created_by = created_by.to_owned();
        let stored = Resource::new(event_meta, Spec::Event(Box::new(event)));
        match state.resources.put(&stored, precondition).await {
            Ok(revision) => {
                let Spec::Event(event) = stored.spec else {
                    unreachable!("built as an event above");
                };
                state.check_states.remember(&key, revision, &event);
                return Ok(*event);
            }
            Err(ResourceError::Store(StoreError::PreconditionFailed { .. })) => {
                tracing::debug!(%key, attempt, "event changed while processing; recomputing");
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(IngestError::Contended(format!(
        "event {namespace}/{event_name} kept changing under {EVENT_WRITE_ATTEMPTS} attempts to store it; retry"
    )))
}

/// Creates the (proxy) entity of an event the first time it is seen.
async fn ensure_entity(
    resources: &Resources,
    namespace: &str,
    event: &Event,
) -> Result<(), ResourceError> {
    let Some(entity) = &event.entity else {
        return Ok(());
    };
    let name = entity
        .metadata
        .as_ref()
        .map(|meta| meta.name.as_str())
        .unwrap_or_default();
    // Presence only: no need to decode the stored entity.
    let key = Resources::key(Kind::Entity, namespace, name);
    if resources.store().get(&key).await?.is_some() {
        return Ok(());
    }
    let mut spec = entity.clone();
    let metadata = spec.metadata.take().unwrap_or_default();
    if spec.entity_class.is_empty() {
        spec.entity_class = "proxy".to_owned();
    }
    let implicit = format!("entity:{name}");
    if !spec.subscriptions.contains(&implicit) {
        spec.subscriptions.push(implicit);
    }
    let resource = Resource::new(
        ObjectMeta {
            namespace: namespace.to_owned(),
            ..metadata
        },
        Spec::Entity(spec),
    );
    match resources.put(&resource, Precondition::Absent).await {
        // Another event created it first.
        Err(ResourceError::Store(StoreError::PreconditionFailed { .. })) => Ok(()),
        other => other.map(|_| ()),
    }
}
