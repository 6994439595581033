//! Storing an event, from the REST API or an agent session alike: the state machine of
//! [`crate::events::rules`] applied against the stored event of the same entity/check, a write guarded by
//! that event's revision, the proxy entity created on first sight, then the pipeline.

use cairn_api::model::Event;
use cairn_api::{Kind, ObjectMeta, Resource, Spec};

use crate::http::{ApiError, AppState};
use crate::store::resources::Resources;
use crate::store::Precondition;

/// Stores `event` (already checked for shape: entity and check named, namespace set) as
/// `event_name` (`<entity>/<check>`) in `namespace`, creates its proxy entity when new, counts it
/// and hands it to the pipeline.
///
/// # Errors
/// The API error to answer with: an invalid event (400), a conflict after repeated concurrent
/// writes (409), or a store failure.
pub async fn ingest(
    state: &AppState,
    namespace: &str,
    event_name: &str,
    event: Event,
    created_by: &str,
) -> Result<(), ApiError> {
    let event = store_event(state, created_by, namespace, event_name, event).await?;
    state
        .metrics
        .events_ingested
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ensure_entity(state, namespace, &event).await?;
    state.events.submit(namespace, event);
    Ok(())
}

/// How often [`store_event`] recomputes an event whose previous result changed under it.
const EVENT_WRITE_ATTEMPTS: usize = 8;

/// Processes `incoming` against the stored event of the same entity/check and stores the
/// result, guarded by the stored revision so that concurrent results for one check each land in
/// the history; returns the stored event.
async fn store_event(
    state: &AppState,
    created_by: &str,
    namespace: &str,
    event_name: &str,
    incoming: Event,
) -> Result<Event, ApiError> {
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
                        _ => return Err(ApiError::internal("an event key holds another kind")),
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
        .ok_or_else(|| ApiError::internal("event consumed before its last attempt"))?;
        let now = crate::clock::unix_now();
        let event = crate::events::rules::process_event(previous.as_ref(), this_attempt, now)
            .map_err(|err| ApiError::invalid(err.to_string()))?;
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
            Err(crate::store::resources::ResourceError::Store(
                crate::store::StoreError::PreconditionFailed { .. },
            )) => {
                tracing::debug!(%key, attempt, "event changed while processing; recomputing");
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(ApiError::conflict(format!(
        "event {namespace}/{event_name} kept changing under {EVENT_WRITE_ATTEMPTS} attempts to store it; retry"
    )))
}

/// Creates the (proxy) entity of an event the first time it is seen.
async fn ensure_entity(state: &AppState, namespace: &str, event: &Event) -> Result<(), ApiError> {
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
    if state.resources.store().get(&key).await?.is_some() {
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
    match state.resources.put(&resource, Precondition::Absent).await {
        // Another event created it first.
        Err(crate::store::resources::ResourceError::Store(
            crate::store::StoreError::PreconditionFailed { .. },
        )) => Ok(()),
        other => other.map(|_| ()).map_err(ApiError::from),
    }
}
