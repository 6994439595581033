//! Resource routes: Sensu's `/api/core/v2/…` and `/api/enterprise/<group>/<version>/…` paths.
//! [`endpoint`] turns a request into one [`endpoint::Endpoint`]; [`dispatch`] authenticates,
//! runs it in a span named after it, and counts it. The handlers: [`crud`] (stored resources),
//! [`users`] (users, their actions and API keys), [`events`] (events sent to the API),
//! [`execute`] (ad hoc check executions).

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tracing::Instrument;

use cairn_api::validate::validate;
use cairn_api::{Kind, Resource, Spec};

use super::{authenticate, parse_json, ApiError, AppState};
use crate::auth::rbac::Caller;
use crate::store::Precondition;

mod crud;
mod endpoint;
mod events;
mod execute;
mod users;

pub(crate) use endpoint::Endpoint;
pub(crate) use events::decode_event;

/// Every `/api/…` request that no fixed route took: parsed into its [`Endpoint`] (404 when the
/// path is none of Sensu's), authenticated, then run in a span named after the endpoint and
/// counted in [`crate::http::ApiMetrics::endpoint_requests`].
pub(super) async fn dispatch(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Some(target) = endpoint::parse(parts.uri.path()) else {
        return ApiError::not_found("not found").into_response();
    };
    let caller = match authenticate(&state, &parts.headers) {
        Ok(caller) => caller,
        Err(err) => return err.into_response(),
    };
    let endpoint = match Endpoint::route(&parts.method, target) {
        Ok(endpoint) => endpoint,
        Err(err) => return err.into_response(),
    };
    state.metrics.endpoint_requests[endpoint.index()].fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "endpoint",
        name = endpoint.name(),
        kind = endpoint.kind().plural()
    );
    let query = parts.uri.query().unwrap_or("");
    run(&state, &caller, &parts.headers, query, endpoint, body)
        .instrument(span)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Runs one endpoint for an authenticated caller.
async fn run(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    query: &str,
    endpoint: Endpoint,
    body: Body,
) -> Result<Response, ApiError> {
    match endpoint {
        Endpoint::List { kind, namespace } => {
            crud::list(state, caller, kind, namespace.as_deref(), query).await
        }
        Endpoint::Create { kind, namespace } => {
            crud::create(state, caller, kind, namespace.as_deref(), body).await
        }
        Endpoint::CreateApiKey => users::apikeys_create(state, caller, body).await,
        Endpoint::PutEvent { namespace, name } => {
            events::events_put(state, caller, &namespace, name.as_deref(), body).await
        }
        Endpoint::Get(path) => crud::get(state, caller, path.as_item()).await,
        Endpoint::Replace(path) => {
            crud::replace(state, caller, path.as_item(), headers, body).await
        }
        Endpoint::Patch(path) => crud::patch(state, caller, path.as_item(), headers, body).await,
        Endpoint::Delete(path) => crud::delete(state, caller, path.as_item()).await,
        Endpoint::ListEntityEvents { namespace, entity } => {
            let prefix = format!("{entity}/");
            crud::list_filtered(state, caller, Kind::Event, &namespace, &prefix).await
        }
        Endpoint::ListSilencedBy {
            namespace,
            by_check,
            value,
        } => crud::silenced_by(state, caller, namespace.as_deref(), by_check, &value).await,
        Endpoint::AddCheckHooks {
            namespace,
            check,
            hook_type,
        } => crud::check_hooks_add(state, caller, &namespace, &check, &hook_type, body).await,
        Endpoint::RemoveCheckHook {
            namespace,
            check,
            hook_type,
            hook,
        } => crud::check_hooks_remove(state, caller, &namespace, &check, &hook_type, &hook).await,
        Endpoint::ExecuteCheck { namespace, check } => {
            execute::checks_execute(state, caller, &namespace, &check, body).await
        }
        Endpoint::GetTessen => crud::tessen_get(state, caller).await,
        Endpoint::PutTessen => crud::tessen_put(state, caller, body).await,
        Endpoint::User { name, action } => {
            users::users_action(state, caller, &name, action, body).await
        }
    }
}

/// The form a resource is returned in: the wire form, without credentials (a user's password
/// and hash, a Vault provider's token), which the API never returns.
pub(super) fn response_body(resource: &Resource) -> Value {
    let mut resource = resource.clone();
    match &mut resource.spec {
        Spec::User(user) => {
            user.password.clear();
            user.password_hash.clear();
        }
        Spec::VaultProvider(vault) => vault.client.token.clear(),
        // An entity's `redact` (Sensu's GetRedactedEntity): never shown, in the entity or in
        // the events that embed it.
        Spec::Entity(entity) => {
            cairn_api::redact::redact_entity_meta(&mut resource.metadata, &entity.redact);
        }
        Spec::Event(event) => cairn_api::redact::redact_event_entity(event),
        _ => {}
    }
    resource.to_wire()
}

pub(super) fn etag(revision: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).expect("a quoted number is a valid header")
}

/// `If-Match: "<revision>"` as a precondition.
pub(super) fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::invalid("If-Match is not text"))?;
    text.trim()
        .trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| ApiError::invalid(format!("If-Match {text:?} is not a resource version")))
}

pub(super) fn kind_matches(kind: Kind, resource: &Resource) -> bool {
    // `providers` holds both Env and VaultProvider.
    resource.kind() == kind || resource.kind().plural() == kind.plural()
}

/// Decodes and checks a body for `kind` at (`namespace`, `name`) from the URL.
pub(super) fn decode_body(
    kind: Kind,
    namespace: Option<&str>,
    name: Option<&str>,
    caller: &Caller,
    bytes: &[u8],
) -> Result<Resource, ApiError> {
    let body = parse_json(bytes)?;
    let wire_kind = if kind == Kind::EnvProvider || kind == Kind::VaultProvider {
        // `providers` takes either; the wrapped body names which.
        match body.get("type").and_then(Value::as_str) {
            Some("Env") => Kind::EnvProvider,
            _ => Kind::VaultProvider,
        }
    } else {
        kind
    };
    let mut resource = Resource::from_wire(wire_kind, body)
        .map_err(|issue| ApiError::invalid(issue.to_string()))?;
    if let Spec::User(user) = &resource.spec {
        // A user is named by its username.
        if resource.metadata.name.is_empty() {
            resource.metadata.name = user.username.clone();
        }
    }
    if let Some(namespace) = namespace.filter(|_| kind.is_namespaced()) {
        if resource.metadata.namespace.is_empty() {
            resource.metadata.namespace = namespace.to_owned();
        } else if resource.metadata.namespace != namespace {
            return Err(ApiError::invalid(format!(
                "the namespace of the resource ({}) does not match the namespace of the URI ({namespace})",
                resource.metadata.namespace
            )));
        }
    }
    if kind.is_namespaced() && resource.metadata.namespace.is_empty() {
        return Err(ApiError::invalid("namespace must be set"));
    }
    if let Some(name) = name {
        if resource.metadata.name.is_empty() {
            resource.metadata.name = name.to_owned();
            if let Spec::Namespace(namespace) = &mut resource.spec {
                namespace.name = name.to_owned();
            }
        } else if resource.metadata.name != name {
            return Err(ApiError::invalid(format!(
                "the name of the resource ({}) does not match the name of the URI ({name})",
                resource.metadata.name
            )));
        }
    }
    refuse_invalid(&resource)?;
    resource.metadata.created_by = caller.username.clone();
    if let Spec::Silenced(silenced) = &mut resource.spec {
        // As Sensu: the creator, a start (now when unset) and an absolute expiry.
        let now = crate::clock::unix_now();
        silenced.creator = caller.username.clone();
        if silenced.begin == 0 {
            silenced.begin = now;
        }
        if silenced.expire > 0 {
            silenced.expire_at = silenced.begin.saturating_add(silenced.expire);
        }
    }
    Ok(resource)
}

/// Adds a `Warning` header (RFC 9111's form, code 299, as Kubernetes answers) to `response`
/// for each field of the written `resource` that Cairn stores but does not act on
/// ([`cairn_api::inert`]), so that API clients see what `cairnctl lint` says. Header values
/// are the field path and a fixed sentence: nothing of the request is echoed. At most one per
/// field the resource sets, so the count is bounded by the model.
pub(super) fn with_inert_warnings(mut response: Response, resource: &Resource) -> Response {
    for inert in cairn_api::inert::inert_fields(resource) {
        let text = format!(
            "299 cairn \"{}: {}: {}\"",
            inert.path,
            cairn_api::inert::INERT_PREFIX,
            inert.consequence
        );
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

/// A 400 naming the first error Sensu's rules (and Cairn's) find in `resource`.
pub(super) fn refuse_invalid(resource: &Resource) -> Result<(), ApiError> {
    match validate(resource)
        .into_iter()
        .find(|issue| issue.is_error())
    {
        Some(error) => Err(ApiError::invalid(error.to_string())),
        None => Ok(()),
    }
}

pub(crate) async fn require_namespace(
    state: &AppState,
    kind: Kind,
    namespace: &str,
) -> Result<(), ApiError> {
    if !kind.is_namespaced() {
        return Ok(());
    }
    // From memory: the auth view holds the namespaces, and writers wait for it.
    if state.auth.snapshot().has_namespace(namespace) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "namespace \"{namespace}\" not found"
        )))
    }
}

/// A string field of a JSON body that may be absent (or `null`), but not of another type.
pub(super) fn optional_str<'a>(body: &'a Value, field: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ApiError::invalid(format!("{field}: must be a string"))),
    }
}

/// Writes and, for auth resources, waits until authentication sees the write.
pub(super) async fn write(
    state: &AppState,
    resource: &Resource,
    precondition: Precondition,
) -> Result<u64, ApiError> {
    let revision = state
        .resources
        .put(resource, precondition)
        .await
        .map_err(|err| match err {
            crate::store::resources::ResourceError::Store(
                crate::store::StoreError::PreconditionFailed { current: 0, .. },
            ) => ApiError::not_found(format!("{} not found", resource.key())),
            crate::store::resources::ResourceError::Store(
                crate::store::StoreError::PreconditionFailed { .. },
            ) if precondition == Precondition::Absent => {
                ApiError::conflict(format!("{} already exists", resource.key()))
            }
            other => ApiError::from(other),
        })?;
    wait_for_views(state, resource.kind(), revision).await;
    Ok(revision)
}

/// Waits until the in-memory views that hold `kind` include `revision`, so that the write is
/// in force when the client gets its answer: the auth view (every write: it also marks the
/// revision applied) and, for a silenced entry, the one events are marked against.
pub(super) async fn wait_for_views(state: &AppState, kind: Kind, revision: u64) {
    state.auth.wait_for(revision).await;
    if kind == Kind::Silenced {
        state.ingest.silences.wait_for(revision).await;
    }
}

pub(super) fn key_text(kind: Kind, namespace: &str, name: &str) -> String {
    if kind.is_namespaced() {
        format!("{} {namespace}/{name}", kind.plural())
    } else {
        format!("{} {name}", kind.plural())
    }
}

#[cfg(test)]
mod tests {
    use cairn_api::model::User;
    use cairn_api::ObjectMeta;

    use super::*;

    #[test]
    fn responses_carry_no_credentials() {
        let mut vault = cairn_api::model::VaultProvider::default();
        vault.client.address = "https://vault:8200".into();
        vault.client.token = "s.secret-token".into();
        let resource = Resource::new(ObjectMeta::named("", "vault"), Spec::VaultProvider(vault));
        assert!(!response_body(&resource)
            .to_string()
            .contains("s.secret-token"));
        let user = Resource::new(
            ObjectMeta::named("", "bob"),
            Spec::User(User {
                username: "bob".into(),
                password_hash: "$argon2id$v=19$hash".into(),
                ..User::default()
            }),
        );
        assert!(!response_body(&user).to_string().contains("argon2"));
    }
}
