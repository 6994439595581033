//! `POST /api/cairn/v1/namespaces/{namespace}/events/test` (beyond Sensu; `cairnctl event
//! test`): what the pipeline would do with an event, without storing it or running a handler.
//!
//! The body is `{"event": <an event as POST …/events takes it>, "handler": NAME}` or
//! `{"event": …, "pipeline": NAME}` (or neither: the handlers and pipelines the event names).
//! The event is processed as ingestion would process it now (against the stored event of its
//! entity and check, with the silences in force), then tried by
//! [`Pipeline::dry_run`](crate::events::pipeline::Pipeline::dry_run); the answer is its
//! report per workflow: each filter's verdict, the mutator and the output the handler would
//! get.
//!
//! Who may: a caller who may `create` events and `update` mutators in the namespace. The
//! second because the mutators run, and what a mutator outputs (its secrets included, if it
//! writes them) is shown to the caller; someone who may change mutators could already make one
//! send its secrets anywhere.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use cairn_api::Kind;
use serde::Deserialize;

use crate::auth::rbac::Verb;
use crate::events::pipeline::dryrun::{Target, WorkflowReport};
use crate::http::{authenticate, authorize, parse_json, read_body, ApiError, AppState};

/// The route.
pub(crate) const EVENT_TEST_PATH: &str = "/api/cairn/v1/namespaces/{namespace}/events/test";

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRequest {
    event: serde_json::Value,
    #[serde(default)]
    handler: Option<String>,
    #[serde(default)]
    pipeline: Option<String>,
}

/// The route, merged into the API router.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route(EVENT_TEST_PATH, post(events_test))
}

async fn events_test(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(namespace): Path<String>,
    body: Body,
) -> Result<Json<Vec<WorkflowReport>>, ApiError> {
    let caller = authenticate(&state, &headers)?;
    authorize(
        &state,
        &caller,
        Verb::Create,
        "events",
        Some(&namespace),
        None,
    )?;
    authorize(
        &state,
        &caller,
        Verb::Update,
        Kind::Mutator.plural(),
        Some(&namespace),
        None,
    )?;
    super::resources::require_namespace(&state, Kind::Event, &namespace).await?;
    let bytes = read_body(&state, body).await?;
    let request: TestRequest = serde_json::from_value(parse_json(&bytes)?)
        .map_err(|err| ApiError::invalid(format!("the test request: {err}")))?;
    let target = match (request.handler, request.pipeline) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "name a handler or a pipeline to test against, not both",
            ))
        }
        (Some(handler), None) => Target::Handler(handler),
        (None, Some(pipeline)) => Target::Pipeline(pipeline),
        (None, None) => Target::Named,
    };
    let (event, entity, check) = super::resources::decode_event(&namespace, None, request.event)?;
    let Some(check) = check else {
        return Err(ApiError::invalid(
            "event.check: a test needs an event with a check",
        ));
    };
    let Some(pipeline) = state.pipeline.as_ref() else {
        return Err(ApiError::internal("the event pipeline is not running"));
    };
    let event = state
        .ingest
        .preview(
            &namespace,
            &format!("{entity}/{check}"),
            event,
            &caller.username,
        )
        .await?;
    Ok(Json(pipeline.dry_run(&namespace, event, &target).await))
}
