//! Create, read, update, delete and list of stored resources, and the few endpoints that
//! change one field of one (a check's hooks) or keep a setting (Tessen).

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::Value;

use cairn_api::{Kind, Resource, Spec};

use super::users::{authorize_user, prepare_user};
use super::{
    decode_body, etag, if_match, key_text, kind_matches, refuse_invalid, require_namespace,
    response_body, with_inert_warnings, write,
};
use crate::auth::rbac::{Caller, Verb};
use crate::http::{authorize, forbidden, parse_json, read_body, ApiError, AppState};
use crate::store::keyspace;
use crate::store::resources::Resources;
use crate::store::Precondition;

pub(super) async fn list(
    state: &AppState,
    caller: &Caller,
    kind: Kind,
    namespace: Option<&str>,
    query: &str,
) -> Result<Response, ApiError> {
    // A caller who may not list namespaces sees those where a binding names it, as on Sensu
    // (so a namespaced user's client finds its namespaces instead of a 403).
    let visible_namespaces =
        match authorize(state, caller, Verb::List, kind.plural(), namespace, None) {
            Ok(()) => None,
            Err(_) if kind == Kind::Namespace => {
                Some(state.auth.snapshot().bound_namespaces(caller))
            }
            Err(refused) => return Err(refused),
        };
    let params = Query::parse(query)?;
    let start_after = params
        .continue_token
        .as_deref()
        .map(|token| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| ApiError::invalid("invalid continue token"))
        })
        .transpose()?;
    let (items, more) = state
        .resources
        .list(kind, namespace, start_after.as_deref(), params.limit)
        .await?;
    let last_key = items.last().map(|(key, _)| key.clone());
    let body: Vec<Value> = items
        .iter()
        .filter(|(_, stored)| kind_matches(kind, &stored.resource))
        .filter(|(_, stored)| params.selects(&stored.resource))
        .filter(|(_, stored)| {
            visible_namespaces
                .as_ref()
                .is_none_or(|visible| visible.contains(stored.resource.name()))
        })
        .map(|(_, stored)| response_body(&stored.resource))
        .collect();
    let mut response = Json(body).into_response();
    if let (true, Some(last_key)) = (more, last_key) {
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last_key);
        response.headers_mut().insert(
            "sensu-continue",
            HeaderValue::from_str(&token).expect("base64 is a valid header"),
        );
    }
    Ok(response)
}

pub(super) async fn list_filtered(
    state: &AppState,
    caller: &Caller,
    kind: Kind,
    namespace: &str,
    name_prefix: &str,
) -> Result<Response, ApiError> {
    authorize(
        state,
        caller,
        Verb::List,
        kind.plural(),
        Some(namespace),
        None,
    )?;
    let (items, _) = state.resources.list(kind, Some(namespace), None, 0).await?;
    let prefix = Resources::key(kind, namespace, name_prefix);
    let body: Vec<Value> = items
        .iter()
        .filter(|(key, _)| key.starts_with(&prefix))
        .map(|(_, stored)| response_body(&stored.resource))
        .collect();
    Ok(Json(body).into_response())
}

/// List parameters: `limit`, `continue`, `labelSelector`.
struct Query {
    limit: usize,
    continue_token: Option<String>,
    selector: cairn_api::selector::LabelSelector,
}

impl Query {
    fn parse(query: &str) -> Result<Query, ApiError> {
        let mut out = Query {
            limit: 0,
            continue_token: None,
            selector: cairn_api::selector::LabelSelector::default(),
        };
        for (key, value) in url_pairs(query) {
            match key.as_str() {
                "limit" => {
                    out.limit = value.parse().map_err(|_| {
                        ApiError::invalid(format!("limit {value:?} is not a number"))
                    })?;
                }
                "continue" => out.continue_token = Some(value),
                "labelSelector" => {
                    out.selector = cairn_api::selector::LabelSelector::parse(&value)
                        .map_err(ApiError::invalid)?;
                }
                _ => {}
            }
        }
        Ok(out)
    }

    fn selects(&self, resource: &Resource) -> bool {
        self.selector.matches(&resource.metadata.labels)
    }
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                crate::http::percent::decode_query_component(key),
                crate::http::percent::decode_query_component(value),
            )
        })
        .collect()
}

pub(super) async fn create(
    state: &AppState,
    caller: &Caller,
    kind: Kind,
    namespace: Option<&str>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(state, body).await?;
    let mut resource = decode_body(kind, namespace, None, caller, &bytes)?;
    authorize(
        state,
        caller,
        Verb::Create,
        kind.plural(),
        namespace,
        Some(resource.name()),
    )?;
    require_namespace(state, kind, resource.namespace()).await?;
    prepare_user(state, &mut resource).await?;
    write(state, &resource, Precondition::Absent).await?;
    Ok(with_inert_warnings(
        StatusCode::CREATED.into_response(),
        &resource,
    ))
}

/// One resource as its URL names it (`namespace` is empty for a cluster-wide kind).
#[derive(Debug, Clone, Copy)]
pub(super) struct Item<'a> {
    pub(super) kind: Kind,
    pub(super) namespace: &'a str,
    pub(super) name: &'a str,
}

impl Item<'_> {
    /// The namespace RBAC scopes it by: none for a cluster-wide kind.
    fn scope(&self) -> Option<&str> {
        Some(self.namespace).filter(|_| self.kind.is_namespaced())
    }

    /// The 404 naming it.
    fn not_found(&self) -> ApiError {
        ApiError::not_found(format!(
            "{} not found",
            key_text(self.kind, self.namespace, self.name)
        ))
    }
}

/// `GET` one resource, with its revision as the `ETag`.
pub(super) async fn get(
    state: &AppState,
    caller: &Caller,
    item: Item<'_>,
) -> Result<Response, ApiError> {
    let Item {
        kind,
        namespace,
        name,
    } = item;
    let scope = item.scope();
    let existing = state.resources.get(kind, namespace, name).await?;
    if kind == Kind::User {
        authorize_user(state, caller, Verb::Get, name)?;
    } else {
        authorize(state, caller, Verb::Get, kind.plural(), scope, Some(name))?;
    }
    let stored = existing
        .filter(|stored| kind_matches(kind, &stored.resource))
        .ok_or_else(|| item.not_found())?;
    let mut response = Json(response_body(&stored.resource)).into_response();
    response
        .headers_mut()
        .insert(header::ETAG, etag(stored.revision));
    Ok(response)
}

/// `PUT` one resource: creates or replaces it (201), guarded by `If-Match` when given.
pub(super) async fn replace(
    state: &AppState,
    caller: &Caller,
    item: Item<'_>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Item {
        kind,
        namespace,
        name,
    } = item;
    let scope = item.scope();
    let existing = state.resources.get(kind, namespace, name).await?;
    let verb = if existing.is_some() {
        Verb::Update
    } else {
        Verb::Create
    };
    // One message whether the resource exists or not, so a refused caller cannot tell.
    authorize(state, caller, verb, kind.plural(), scope, Some(name))
        .map_err(|_| forbidden(caller, "create or update", kind.plural(), scope, Some(name)))?;
    let bytes = read_body(state, body).await?;
    let mut resource = decode_body(kind, Some(namespace), Some(name), caller, &bytes)?;
    require_namespace(state, kind, namespace).await?;
    prepare_user(state, &mut resource).await?;
    keep_redacted(existing.as_ref(), &mut resource);
    keeps_agent_managed(existing.as_ref(), &resource)?;
    let precondition = match (if_match(headers)?, &existing) {
        (Some(wanted), Some(stored)) if wanted != stored.revision => {
            return Err(ApiError::conflict(format!(
                "{} has resource version {}, not {wanted}",
                resource.key(),
                stored.revision
            )))
        }
        (Some(wanted), _) => Precondition::Revision(wanted),
        (None, _) => Precondition::None,
    };
    write(state, &resource, precondition).await?;
    Ok(with_inert_warnings(
        StatusCode::CREATED.into_response(),
        &resource,
    ))
}

/// `PATCH` one resource with a JSON merge patch; answers the merged resource.
pub(super) async fn patch(
    state: &AppState,
    caller: &Caller,
    item: Item<'_>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Item {
        kind,
        namespace,
        name,
    } = item;
    let scope = item.scope();
    let existing = state.resources.get(kind, namespace, name).await?;
    authorize(
        state,
        caller,
        Verb::Update,
        kind.plural(),
        scope,
        Some(name),
    )?;
    patch_content_type(headers)?;
    let stored = existing.ok_or_else(|| item.not_found())?;
    if let Some(wanted) = if_match(headers)? {
        if wanted != stored.revision {
            return Err(ApiError::precondition(format!(
                "resource version is {}, not {wanted}",
                stored.revision
            )));
        }
    }
    let bytes = read_body(state, body).await?;
    let patch = parse_json(&bytes)?;
    let mut merged = stored.resource.to_wire();
    merge_patch(&mut merged, &patch);
    let merged_bytes = serde_json::to_vec(&merged).expect("a JSON value always serializes");
    let mut resource = decode_body(
        stored.resource.kind(),
        Some(namespace),
        Some(name),
        caller,
        &merged_bytes,
    )?;
    prepare_user(state, &mut resource).await?;
    keep_redacted(Some(&stored), &mut resource);
    keeps_agent_managed(Some(&stored), &resource)?;
    write(state, &resource, Precondition::Revision(stored.revision)).await?;
    Ok(with_inert_warnings(
        Json(response_body(&resource)).into_response(),
        &resource,
    ))
}

/// An entity written back as the API showed it keeps the values its `redact` masks (see
/// [`cairn_api::redact::keep_redacted_values`]).
fn keep_redacted(existing: Option<&crate::store::resources::Stored>, resource: &mut Resource) {
    let (Some(stored), Spec::Entity(entity)) = (existing, &resource.spec) else {
        return;
    };
    let redact = entity.redact.clone();
    cairn_api::redact::keep_redacted_values(
        &mut resource.metadata,
        &stored.resource.metadata,
        &redact,
    );
}

/// Refuses a write that changes the subscriptions, labels or annotations of an agent-managed
/// entity (Sensu's `agent-managed-entity`): its agent's configuration owns them and would put
/// them back at its next connection, so the change would only seem to work.
///
/// # Errors
/// 409 naming the entity and where to change them instead.
fn keeps_agent_managed(
    existing: Option<&crate::store::resources::Stored>,
    resource: &Resource,
) -> Result<(), ApiError> {
    let Some(stored) = existing else {
        return Ok(());
    };
    let (Spec::Entity(old), Spec::Entity(new)) = (&stored.resource.spec, &resource.spec) else {
        return Ok(());
    };
    let old_meta = &stored.resource.metadata;
    if !crate::entity::agent_managed(old_meta) {
        return Ok(());
    }
    let meta = &resource.metadata;
    if old.subscriptions != new.subscriptions
        || old_meta.labels != meta.labels
        || old_meta.annotations != meta.annotations
    {
        return Err(ApiError::conflict(format!(
            "entity {}/{} is managed by its agent (agent_managed_entity in its agent.yaml): its \
             subscriptions, labels and annotations come from that configuration; change them \
             there, or turn agent_managed_entity off to manage them through the API",
            meta.namespace, meta.name
        )));
    }
    Ok(())
}

/// `DELETE` one resource (204); a user is disabled instead, as Sensu does, and a namespace
/// must be empty.
pub(super) async fn delete(
    state: &AppState,
    caller: &Caller,
    item: Item<'_>,
) -> Result<Response, ApiError> {
    let Item {
        kind,
        namespace,
        name,
    } = item;
    let scope = item.scope();
    let existing = state.resources.get(kind, namespace, name).await?;
    authorize(
        state,
        caller,
        Verb::Delete,
        kind.plural(),
        scope,
        Some(name),
    )?;
    let Some(stored) = existing else {
        return Err(item.not_found());
    };
    if kind == Kind::User {
        // Sensu disables users rather than removing them.
        let mut resource = stored.resource;
        if let Spec::User(user) = &mut resource.spec {
            user.disabled = true;
        }
        write(state, &resource, Precondition::Revision(stored.revision)).await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if kind == Kind::Namespace {
        ensure_namespace_empty(state, name).await?;
    }
    let revision = state
        .resources
        .delete(
            kind,
            namespace,
            name,
            Precondition::Revision(stored.revision),
        )
        .await?;
    if let Some(revision) = revision {
        super::wait_for_views(state, kind, revision).await;
    }
    if kind == Kind::Entity {
        // As Sensu: an entity's events go with it.
        crate::agents::watchdog::delete_events(&state.resources, namespace, name)
            .await
            .map_err(|err| {
                ApiError::internal(format!(
                    "entity {namespace}/{name} was deleted, but not all of its events: {err}"
                ))
            })?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn ensure_namespace_empty(state: &AppState, namespace: &str) -> Result<(), ApiError> {
    for kind in Kind::ALL
        .iter()
        .copied()
        .filter(|kind| kind.is_namespaced())
    {
        let (items, _) = state.resources.list(kind, Some(namespace), None, 1).await?;
        if !items.is_empty() {
            return Err(ApiError::conflict(format!(
                "namespace is not empty: it still has {}",
                kind.plural()
            )));
        }
    }
    Ok(())
}

/// The `Content-Type` of a PATCH: a JSON merge patch (`application/merge-patch+json`, or
/// none, as Sensu takes it; `application/json` too). JSON Patch is refused as Sensu does.
fn patch_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let media_type = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        "" | "application/merge-patch+json" | "application/json" => Ok(()),
        "application/json-patch+json" => Err(ApiError::invalid(
            "Content-Type: JSON Patch is not supported; send a JSON merge patch \
             (application/merge-patch+json)",
        )),
        other => Err(ApiError::invalid(format!(
            "Content-Type: {other:?} is not accepted; send application/merge-patch+json"
        ))),
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// `GET [namespaces/{ns}/]silenced/{subscriptions|checks}/{value}`: the silenced entries for
/// one subscription or one check, as Sensu lists them.
pub(super) async fn silenced_by(
    state: &AppState,
    caller: &Caller,
    namespace: Option<&str>,
    by_check: bool,
    value: &str,
) -> Result<Response, ApiError> {
    let plural = Kind::Silenced.plural();
    authorize(state, caller, Verb::List, plural, namespace, None)?;
    let (items, _) = state
        .resources
        .list(Kind::Silenced, namespace, None, 0)
        .await?;
    let body: Vec<Value> = items
        .iter()
        .filter(|(_, stored)| match &stored.resource.spec {
            Spec::Silenced(silenced) if by_check => silenced.check == value,
            Spec::Silenced(silenced) => silenced.subscription == value,
            _ => false,
        })
        .map(|(_, stored)| response_body(&stored.resource))
        .collect();
    Ok(Json(body).into_response())
}

/// Sensu's `HookList`, the body of `PUT …/checks/{check}/hooks/{type}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HookList {
    #[serde(rename = "type", default)]
    hook_type: String,
    #[serde(default)]
    hooks: Vec<String>,
}

/// `PUT …/checks/{check}/hooks/{type}` with `{"type", "hooks"}`: adds the hooks to the check's
/// list of that type (each once), or adds the list; 201, as Sensu.
pub(super) async fn check_hooks_add(
    state: &AppState,
    caller: &Caller,
    namespace: &str,
    check: &str,
    hook_type: &str,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(
        state,
        caller,
        Verb::Update,
        Kind::CheckConfig.plural(),
        Some(namespace),
        Some(check),
    )?;
    let bytes = read_body(state, body).await?;
    let list: HookList = serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::invalid(format!("invalid HookList: {err}")))?;
    if !list.hook_type.is_empty() && list.hook_type != hook_type {
        return Err(ApiError::invalid(format!(
            "type: \"{}\" does not match the hook type of the URI ({hook_type})",
            list.hook_type
        )));
    }
    update_check(state, caller, namespace, check, |hooks| {
        match hooks.iter_mut().find_map(|entry| entry.get_mut(hook_type)) {
            Some(names) => {
                for hook in &list.hooks {
                    if !names.contains(hook) {
                        names.push(hook.clone());
                    }
                }
            }
            None => hooks.push(std::collections::BTreeMap::from([(
                hook_type.to_owned(),
                list.hooks.clone(),
            )])),
        }
    })
    .await?;
    Ok(StatusCode::CREATED.into_response())
}

/// `DELETE …/checks/{check}/hooks/{type}/hook/{hook}`: removes the hook from the check's list
/// of that type (and the list once empty); 204.
pub(super) async fn check_hooks_remove(
    state: &AppState,
    caller: &Caller,
    namespace: &str,
    check: &str,
    hook_type: &str,
    hook: &str,
) -> Result<Response, ApiError> {
    authorize(
        state,
        caller,
        Verb::Update,
        Kind::CheckConfig.plural(),
        Some(namespace),
        Some(check),
    )?;
    update_check(state, caller, namespace, check, |hooks| {
        for entry in hooks.iter_mut() {
            if let Some(names) = entry.get_mut(hook_type) {
                names.retain(|name| name != hook);
            }
        }
        hooks.retain(|entry| entry.values().any(|names| !names.is_empty()));
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Changes the `check_hooks` of a stored check, validates the result and writes it guarded by
/// the revision it read.
async fn update_check(
    state: &AppState,
    caller: &Caller,
    namespace: &str,
    check: &str,
    change: impl FnOnce(&mut Vec<std::collections::BTreeMap<String, Vec<String>>>),
) -> Result<(), ApiError> {
    let stored = state
        .resources
        .get(Kind::CheckConfig, namespace, check)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("checks {namespace}/{check} not found")))?;
    let mut resource = stored.resource;
    let Spec::CheckConfig(config) = &mut resource.spec else {
        return Err(ApiError::internal("a check key holds another kind"));
    };
    change(&mut config.check_hooks);
    refuse_invalid(&resource)?;
    resource.metadata.created_by = caller.username.clone();
    write(state, &resource, Precondition::Revision(stored.revision)).await?;
    Ok(())
}

/// Sensu's `TessenConfig`. Cairn sends no telemetry whatever it says; the endpoint exists so
/// that the "disable Tessen" step of Sensu playbooks succeeds and reads back what it wrote.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TessenConfig {
    opt_out: bool,
}

/// `GET /api/core/v2/tessen`: `{"opt_out": …}`, false until set (as Sensu).
pub(super) async fn tessen_get(state: &AppState, caller: &Caller) -> Result<Response, ApiError> {
    authorize(state, caller, Verb::Get, "tessen", None, None)?;
    let config = match state.resources.store().get(keyspace::TESSEN).await? {
        Some(entry) => serde_json::from_slice(&entry.value).map_err(ApiError::internal)?,
        None => TessenConfig::default(),
    };
    Ok(Json(config).into_response())
}

/// `PUT /api/core/v2/tessen` `{"opt_out": true}`: 201, as Sensu.
pub(super) async fn tessen_put(
    state: &AppState,
    caller: &Caller,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(state, caller, Verb::Update, "tessen", None, None)?;
    let bytes = read_body(state, body).await?;
    let config: TessenConfig = serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::invalid(format!("invalid TessenConfig: {err}")))?;
    let value = serde_json::to_vec(&config).expect("a TessenConfig always serializes");
    state
        .resources
        .store()
        .put(keyspace::TESSEN, value, Precondition::None)
        .await?;
    Ok(StatusCode::CREATED.into_response())
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::*;
    use crate::http::tests::Fixture;

    #[tokio::test]
    async fn an_agent_managed_entity_refuses_api_changes_and_a_deleted_entity_takes_its_events() {
        let fixture = Fixture::new("alpha").await;
        let admin = fixture.token_from("alpha", "admin", &[]);
        let path = "/api/core/v2/namespaces/default/entities/web-1";
        let entity = |labels: Value, subscriptions: Value| {
            serde_json::json!({
                "metadata": {"name": "web-1", "namespace": "default", "labels": labels},
                "entity_class": "agent",
                "subscriptions": subscriptions,
            })
        };
        let managed = serde_json::json!({"sensu.io/managed_by": "sensu-agent"});
        let (status, body) = fixture
            .call(
                Method::PUT,
                path,
                &admin,
                Some(entity(managed.clone(), serde_json::json!(["linux"]))),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = fixture
            .call(
                Method::PUT,
                path,
                &admin,
                Some(entity(managed.clone(), serde_json::json!(["linux", "web"]))),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body.to_string().contains("managed by its agent"), "{body}");
        let (status, _) = fixture
            .call(
                Method::PATCH,
                path,
                &admin,
                Some(serde_json::json!({"metadata": {"labels": {"tier": "x"}}})),
            )
            .await;
        assert_ne!(status, StatusCode::OK, "a merge patch is refused too");
        let (_, stored) = fixture.call(Method::GET, path, &admin, None).await;
        assert_eq!(
            stored["subscriptions"],
            serde_json::json!(["linux"]),
            "nothing changed"
        );

        // A redacted label is shown masked, and writing the masked value back keeps it.
        let path_db = "/api/core/v2/namespaces/default/entities/db-1";
        let db = serde_json::json!({
            "metadata": {"name": "db-1", "namespace": "default", "labels": {"password": "hunter2", "region": "eu"}},
            "entity_class": "proxy",
        });
        let (status, _) = fixture.call(Method::PUT, path_db, &admin, Some(db)).await;
        assert_eq!(status, StatusCode::CREATED);
        let (_, mut shown) = fixture.call(Method::GET, path_db, &admin, None).await;
        assert_eq!(shown["metadata"]["labels"]["password"], "REDACTED");
        assert_eq!(shown["metadata"]["labels"]["region"], "eu");
        shown["metadata"]["labels"]["region"] = serde_json::json!("us");
        let (status, _) = fixture
            .call(Method::PUT, path_db, &admin, Some(shown))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let stored = fixture
            .state
            .resources
            .get(Kind::Entity, "default", "db-1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.resource.metadata.labels["password"], "hunter2");
        assert_eq!(stored.resource.metadata.labels["region"], "us");

        // An event of the entity goes when the entity goes.
        let event = serde_json::json!({
            "entity": {"metadata": {"name": "web-1", "namespace": "default"}, "entity_class": "agent"},
            "check": {"metadata": {"name": "cpu", "namespace": "default"}, "status": 1, "output": "x", "interval": 60},
        });
        let events = "/api/core/v2/namespaces/default/events/web-1/cpu";
        let (status, body) = fixture.call(Method::PUT, events, &admin, Some(event)).await;
        assert!(status.is_success(), "{status} {body}");
        let db_event = serde_json::json!({
            "entity": {"metadata": {"name": "db-1", "namespace": "default", "labels": {"password": "hunter2"}}, "entity_class": "proxy"},
            "check": {"metadata": {"name": "cpu", "namespace": "default"}, "status": 0, "output": "x", "interval": 60},
        });
        let db_events = "/api/core/v2/namespaces/default/events/db-1/cpu";
        let (status, _) = fixture
            .call(Method::PUT, db_events, &admin, Some(db_event))
            .await;
        assert!(status.is_success());
        let (_, shown) = fixture.call(Method::GET, db_events, &admin, None).await;
        assert_eq!(
            shown["entity"]["metadata"]["labels"]["password"], "REDACTED",
            "{shown}"
        );
        let (status, _) = fixture.call(Method::DELETE, path, &admin, None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = fixture.call(Method::GET, events, &admin, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn selectors_and_patches() {
        assert!(Query::parse("labelSelector=team%20%3D%3D%20ops").is_ok());
        assert!(Query::parse("labelSelector=bogus").is_err());
        let mut target = serde_json::json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut target, &serde_json::json!({"a": null, "b": {"c": 5}}));
        assert_eq!(target, serde_json::json!({"b": {"c": 5, "d": 3}}));
        assert_eq!(
            crate::http::percent::decode_query_component("team%20%3D%3D%20ops"),
            "team == ops"
        );
    }
}
