//! Events sent to the API: Sensu's `POST …/events` and `PUT|POST …/events/{entity}/{check}`,
//! handed to ingest as the agents' events are.

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use cairn_api::model::{Entity, Event};
use cairn_api::{Kind, ObjectMeta, Resource, Spec};

use super::require_namespace;
use crate::auth::rbac::{Caller, Verb};
use crate::http::{authorize, parse_json, read_body, ApiError, AppState};

/// `POST …/events` and `PUT|POST …/events/{entity}/{check}`: store the event with its state,
/// create the proxy entity on first sight, then hand it to the pipeline.
pub(super) async fn events_put(
    state: &AppState,
    caller: &Caller,
    namespace: &str,
    name: Option<&str>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(state, body).await?;
    let (mut event, entity_name, check_name) = decode_event(namespace, name, parse_json(&bytes)?)?;
    authorize(
        state,
        caller,
        Verb::Create,
        "events",
        Some(namespace),
        Some(&entity_name),
    )?;
    require_namespace(state, Kind::Event, namespace).await?;
    for meta in [
        event
            .entity
            .as_mut()
            .and_then(|entity| entity.metadata.as_mut()),
        event
            .check
            .as_mut()
            .and_then(|check| check.metadata.as_mut()),
    ]
    .into_iter()
    .flatten()
    {
        meta.created_by = caller.username.clone();
    }
    let event_name = format!(
        "{entity_name}/{}",
        check_name.as_deref().unwrap_or("metrics")
    );
    state
        .ingest
        .ingest(namespace, &event_name, event, &caller.username)
        .await?;
    Ok(StatusCode::CREATED.into_response())
}

/// An event as a client sends it, in `namespace` and (when the URI names them) for
/// `entity/check`: decoded, its entity's and check's names filled from the URI and checked
/// against it. Returns the event with its entity's and check's names.
///
/// # Errors
/// A 400 naming what is wrong, a 404 for a URI that does not name `entity/check`.
pub(crate) fn decode_event(
    namespace: &str,
    name: Option<&str>,
    body: serde_json::Value,
) -> Result<(Event, String, Option<String>), ApiError> {
    let resource = Resource::from_wire(Kind::Event, body)
        .map_err(|issue| ApiError::invalid(issue.to_string()))?;
    let Spec::Event(event) = resource.spec else {
        return Err(ApiError::internal("decoded an event as another kind"));
    };
    let mut event: Event = *event;
    if !resource.metadata.namespace.is_empty() && resource.metadata.namespace != namespace {
        return Err(ApiError::invalid(format!(
            "the namespace of the event ({}) does not match the namespace of the URI ({namespace})",
            resource.metadata.namespace
        )));
    }
    let (url_entity, url_check) = match name.map(|name| name.split_once('/')) {
        Some(Some((entity, check))) => (Some(entity), Some(check)),
        Some(None) => {
            return Err(ApiError::not_found(
                "events are addressed as events/{entity}/{check}",
            ))
        }
        None => (None, None),
    };
    let entity = event.entity.get_or_insert_with(Entity::default);
    let entity_meta = entity.metadata.get_or_insert_with(ObjectMeta::default);
    fill_name(&mut entity_meta.name, url_entity, "entity")?;
    entity_meta.namespace = namespace.to_owned();
    let entity_name = entity_meta.name.clone();
    if let Some(check) = event.check.as_mut() {
        let check_meta = check.metadata.get_or_insert_with(ObjectMeta::default);
        fill_name(&mut check_meta.name, url_check, "check")?;
        check_meta.namespace = namespace.to_owned();
    } else if url_check.is_some() {
        return Err(ApiError::invalid(
            "check: the URI names a check but the event has none",
        ));
    }
    let check_name = event
        .check
        .as_ref()
        .and_then(|check| check.metadata.as_ref())
        .map(|meta| meta.name.clone());
    Ok((event, entity_name, check_name))
}

fn fill_name(name: &mut String, from_url: Option<&str>, what: &str) -> Result<(), ApiError> {
    match from_url {
        Some(url_name) if name.is_empty() => *name = url_name.to_owned(),
        Some(url_name) if name != url_name => {
            return Err(ApiError::invalid(format!(
                "the {what} name of the event ({name}) does not match the URI ({url_name})"
            )))
        }
        _ => {}
    }
    if let Some(problem) = cairn_api::validate::check_name(Kind::Entity, name) {
        return Err(ApiError::invalid(format!(
            "{what}.metadata.name: {problem}"
        )));
    }
    Ok(())
}
