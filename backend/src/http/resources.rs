//! Resource routes: Sensu's `/api/core/v2/…` and `/api/enterprise/<group>/<version>/…` paths,
//! parsed by hand because names may hold `/` (assets, `<entity>/<check>` events).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::Value;

use cairn_api::model::{ApiKey, Entity, Event, User};
use cairn_api::validate::validate;
use cairn_api::{Kind, ObjectMeta, Resource, Spec};

use super::{authenticate, authorize, forbidden, parse_json, read_body, ApiError, AppState};
use crate::auth;
use crate::auth::rbac::{Caller, Verb};
use crate::store::resources::Resources;
use crate::store::Precondition;

/// What a path addresses.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// A collection; `namespace` is `None` for cluster-wide kinds and all-namespace lists.
    Collection {
        kind: Kind,
        namespace: Option<String>,
    },
    /// One resource.
    Item {
        kind: Kind,
        namespace: String,
        name: String,
    },
    /// `users/{name}/{action}[/{group}]`.
    UserAction {
        name: String,
        action: String,
        group: Option<String>,
    },
    /// `namespaces/{ns}/events/{entity}`: the events of one entity.
    EntityEvents { namespace: String, entity: String },
    /// `[namespaces/{ns}/]silenced/{subscriptions|checks}/{value}`: the silenced entries of a
    /// subscription or a check.
    SilencedBy {
        namespace: Option<String>,
        by_check: bool,
        value: String,
    },
    /// `tessen`: Sensu's telemetry opt-out, kept for playbooks that set it.
    Tessen,
    /// `namespaces/{ns}/checks/{check}/hooks/{type}[/hook/{hook}]`: Sensu's way to add hooks to
    /// a check (`PUT`) or remove one (`DELETE`).
    CheckHooks {
        namespace: String,
        check: String,
        hook_type: String,
        hook: Option<String>,
    },
}

const GROUPS: [(&str, &str); 3] = [
    ("/api/core/v2/", cairn_api::kind::CORE_V2),
    ("/api/enterprise/secrets/v1/", cairn_api::kind::SECRETS_V1),
    (
        "/api/enterprise/federation/v1/",
        cairn_api::kind::FEDERATION_V1,
    ),
];

fn kind_in(group: &str, plural: &str) -> Option<Kind> {
    // Env and VaultProvider share `providers`; the stored or sent document says which.
    Kind::ALL
        .iter()
        .copied()
        .find(|kind| kind.api_version() == group && kind.plural() == plural)
}

fn parse(path: &str) -> Option<Target> {
    let (prefix, group) = GROUPS.iter().find(|(prefix, _)| path.starts_with(prefix))?;
    let rest = path[prefix.len()..].trim_end_matches('/');
    // Segments are percent-decoded one by one, so an encoded `/` stays inside a name (and is
    // then refused by the name rules) rather than changing the route.
    let decoded: Vec<String> = rest
        .split('/')
        .map(crate::http::percent::decode_path_segment)
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["namespaces"] if *group == cairn_api::kind::CORE_V2 => Some(Target::Collection {
            kind: Kind::Namespace,
            namespace: None,
        }),
        ["namespaces", name] if *group == cairn_api::kind::CORE_V2 => Some(Target::Item {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: (*name).to_owned(),
        }),
        ["namespaces", namespace, "silenced", field @ ("subscriptions" | "checks"), value]
            if *group == cairn_api::kind::CORE_V2 =>
        {
            Some(Target::SilencedBy {
                namespace: Some((*namespace).to_owned()),
                by_check: *field == "checks",
                value: (*value).to_owned(),
            })
        }
        ["silenced", field @ ("subscriptions" | "checks"), value]
            if *group == cairn_api::kind::CORE_V2 =>
        {
            Some(Target::SilencedBy {
                namespace: None,
                by_check: *field == "checks",
                value: (*value).to_owned(),
            })
        }
        ["namespaces", namespace, "checks", check, "hooks", hook_type, rest @ ..]
            if *group == cairn_api::kind::CORE_V2 =>
        {
            let hook = match rest {
                [] => None,
                ["hook", hook] => Some((*hook).to_owned()),
                _ => return None,
            };
            Some(Target::CheckHooks {
                namespace: (*namespace).to_owned(),
                check: (*check).to_owned(),
                hook_type: (*hook_type).to_owned(),
                hook,
            })
        }
        ["namespaces", namespace, plural, name @ ..] => {
            let kind = kind_in(group, plural).filter(|kind| kind.is_namespaced())?;
            let namespace = (*namespace).to_owned();
            match (kind, name) {
                (_, []) => Some(Target::Collection {
                    kind,
                    namespace: Some(namespace),
                }),
                (Kind::Event, [entity]) => Some(Target::EntityEvents {
                    namespace,
                    entity: (*entity).to_owned(),
                }),
                _ => Some(Target::Item {
                    kind,
                    namespace,
                    name: name.join("/"),
                }),
            }
        }
        ["tessen"] if *group == cairn_api::kind::CORE_V2 => Some(Target::Tessen),
        ["users", name, action, group_name @ ..] if *group == cairn_api::kind::CORE_V2 => {
            Some(Target::UserAction {
                name: (*name).to_owned(),
                action: (*action).to_owned(),
                group: group_name.first().map(|group| (*group).to_owned()),
            })
        }
        [plural] => {
            let kind = kind_in(group, plural)?;
            Some(Target::Collection {
                kind,
                namespace: None,
            })
        }
        [plural, name @ ..] => {
            let kind = kind_in(group, plural).filter(|kind| !kind.is_namespaced())?;
            Some(Target::Item {
                kind,
                namespace: String::new(),
                name: name.join("/"),
            })
        }
        _ => None,
    }
}

/// Every `/api/…` request that no fixed route took.
pub(super) async fn dispatch(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Some(target) = parse(parts.uri.path()) else {
        return ApiError::not_found("not found").into_response();
    };
    let caller = match authenticate(&state, &parts.headers) {
        Ok(caller) => caller,
        Err(err) => return err.into_response(),
    };
    let query = parts.uri.query().unwrap_or("");
    let result = match target {
        Target::Collection { kind, namespace } => match parts.method {
            Method::GET => list(&state, &caller, kind, namespace.as_deref(), query).await,
            Method::POST if kind == Kind::Event => match namespace {
                Some(namespace) => events_put(&state, &caller, &namespace, None, body).await,
                None => Err(ApiError::invalid("events are created in a namespace")),
            },
            Method::POST if kind == Kind::ApiKey => apikeys_create(&state, &caller, body).await,
            Method::POST => create(&state, &caller, kind, namespace.as_deref(), body).await,
            _ => Err(method_not_allowed()),
        },
        Target::Item {
            kind: Kind::Event,
            namespace,
            name,
        } => match parts.method {
            Method::PUT | Method::POST => {
                events_put(&state, &caller, &namespace, Some(&name), body).await
            }
            Method::GET | Method::DELETE => {
                item(
                    &state,
                    &caller,
                    &parts.method,
                    &parts.headers,
                    Kind::Event,
                    &namespace,
                    &name,
                    body,
                )
                .await
            }
            _ => Err(method_not_allowed()),
        },
        Target::Item {
            kind,
            namespace,
            name,
        } => {
            item(
                &state,
                &caller,
                &parts.method,
                &parts.headers,
                kind,
                &namespace,
                &name,
                body,
            )
            .await
        }
        Target::EntityEvents { namespace, entity } => {
            let prefix = format!("{entity}/");
            list_filtered(&state, &caller, Kind::Event, &namespace, &prefix).await
        }
        Target::CheckHooks {
            namespace,
            check,
            hook_type,
            hook,
        } => match (&parts.method, hook) {
            (&Method::PUT, None) => {
                check_hooks_add(&state, &caller, &namespace, &check, &hook_type, body).await
            }
            (&Method::DELETE, Some(hook)) => {
                check_hooks_remove(&state, &caller, &namespace, &check, &hook_type, &hook).await
            }
            _ => Err(method_not_allowed()),
        },
        Target::SilencedBy {
            namespace,
            by_check,
            value,
        } => match parts.method {
            Method::GET => {
                silenced_by(&state, &caller, namespace.as_deref(), by_check, &value).await
            }
            _ => Err(method_not_allowed()),
        },
        Target::Tessen => match parts.method {
            Method::GET => tessen_get(&state, &caller).await,
            Method::PUT => tessen_put(&state, &caller, body).await,
            _ => Err(method_not_allowed()),
        },
        Target::UserAction {
            name,
            action,
            group,
        } => {
            users_action(
                &state,
                &caller,
                &parts.method,
                &name,
                &action,
                group.as_deref(),
                body,
            )
            .await
        }
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: super::Code::InvalidArgument,
        message: "method not allowed".into(),
    }
}

/// The form a resource is returned in: the wire form, without credentials (a user's password
/// and hash, a Vault provider's token), which the API never returns.
fn response_body(resource: &Resource) -> Value {
    let mut resource = resource.clone();
    match &mut resource.spec {
        Spec::User(user) => {
            user.password.clear();
            user.password_hash.clear();
        }
        Spec::VaultProvider(vault) => vault.client.token.clear(),
        _ => {}
    }
    resource.to_wire()
}

fn etag(revision: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).expect("a quoted number is a valid header")
}

/// `If-Match: "<revision>"` as a precondition.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
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

async fn list(
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

fn kind_matches(kind: Kind, resource: &Resource) -> bool {
    // `providers` holds both Env and VaultProvider.
    resource.kind() == kind || resource.kind().plural() == kind.plural()
}

async fn list_filtered(
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

/// Decodes and checks a body for `kind` at (`namespace`, `name`) from the URL.
fn decode_body(
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

/// A 400 naming the first error Sensu's rules (and Cairn's) find in `resource`.
fn refuse_invalid(resource: &Resource) -> Result<(), ApiError> {
    match validate(resource)
        .into_iter()
        .find(|issue| issue.is_error())
    {
        Some(error) => Err(ApiError::invalid(error.to_string())),
        None => Ok(()),
    }
}

async fn require_namespace(state: &AppState, kind: Kind, namespace: &str) -> Result<(), ApiError> {
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

/// Prepares a user or a Vault provider for storage (a provider sent without its token keeps
/// the stored one). For a user: a clear-text `password` becomes an argon2 hash; a
/// `password_hash` alone (Sensu's bcrypt from `sensuctl user hash-password`, or argon2) is
/// checked and kept as given, to be upgraded to argon2 at the user's next login; with neither,
/// the stored hash is kept, and a new user needs one of them.
async fn prepare_user(state: &AppState, resource: &mut Resource) -> Result<(), ApiError> {
    if let Spec::VaultProvider(vault) = &mut resource.spec {
        // The API never returns a Vault provider's token, so a client that sends back what it
        // read sends none: the stored token is kept, as a user's stored hash is.
        if vault.client.token.is_empty() {
            if let Some(existing) = state
                .resources
                .get(Kind::VaultProvider, "", resource.metadata.name.as_str())
                .await?
            {
                if let Spec::VaultProvider(existing) = existing.resource.spec {
                    vault.client.token = existing.client.token;
                }
            }
        }
        return Ok(());
    }
    let Spec::User(user) = &mut resource.spec else {
        return Ok(());
    };
    if !user.password.is_empty() {
        user.password_hash = state.passwords.hash(&user.password).await?;
        user.password.clear();
    } else if !user.password_hash.is_empty() {
        auth::check_password_hash(&user.password_hash)
            .map_err(|message| ApiError::invalid(format!("password_hash: {message}")))?;
    } else if let Some(existing) = state.resources.get(Kind::User, "", &user.username).await? {
        if let Spec::User(existing) = existing.resource.spec {
            user.password_hash = existing.password_hash;
        }
    } else {
        return Err(ApiError::invalid(
            "password: a new user needs a password or a password_hash",
        ));
    }
    Ok(())
}

/// Sensu's pseudo-resource for a user's own record: `get` reads it and `update` changes its
/// password. The seeded `system:user` ClusterRole grants both to every local user (group
/// `system:users`).
const LOCAL_SELF_USER: &str = "localselfuser";

/// Authorizes `verb` on the user `name`: as `users`, or as `localselfuser` when the caller is
/// that user of this cluster (a federated caller of the same name is somebody else).
fn authorize_user(
    state: &AppState,
    caller: &Caller,
    verb: Verb,
    name: &str,
) -> Result<(), ApiError> {
    if caller.is_local_user(name)
        && authorize(state, caller, verb, LOCAL_SELF_USER, None, Some(name)).is_ok()
    {
        return Ok(());
    }
    authorize(state, caller, verb, Kind::User.plural(), None, Some(name))
}

/// A string field of a JSON body that may be absent (or `null`), but not of another type.
fn optional_str<'a>(body: &'a Value, field: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ApiError::invalid(format!("{field}: must be a string"))),
    }
}

/// Writes and, for auth resources, waits until authentication sees the write.
async fn write(
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
    state.auth.wait_for(revision).await;
    Ok(revision)
}

async fn create(
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
    Ok(StatusCode::CREATED.into_response())
}

#[allow(clippy::too_many_arguments)]
async fn item(
    state: &AppState,
    caller: &Caller,
    method: &Method,
    headers: &HeaderMap,
    kind: Kind,
    namespace: &str,
    name: &str,
    body: Body,
) -> Result<Response, ApiError> {
    let scope = Some(namespace).filter(|_| kind.is_namespaced());
    let existing = state.resources.get(kind, namespace, name).await?;
    match *method {
        Method::GET => {
            if kind == Kind::User {
                authorize_user(state, caller, Verb::Get, name)?;
            } else {
                authorize(state, caller, Verb::Get, kind.plural(), scope, Some(name))?;
            }
            let stored = existing
                .filter(|stored| kind_matches(kind, &stored.resource))
                .ok_or_else(|| {
                    ApiError::not_found(format!("{} not found", key_text(kind, namespace, name)))
                })?;
            let mut response = Json(response_body(&stored.resource)).into_response();
            response
                .headers_mut()
                .insert(header::ETAG, etag(stored.revision));
            Ok(response)
        }
        Method::PUT => {
            let verb = if existing.is_some() {
                Verb::Update
            } else {
                Verb::Create
            };
            // One message whether the resource exists or not, so a refused caller cannot tell.
            authorize(state, caller, verb, kind.plural(), scope, Some(name)).map_err(|_| {
                forbidden(caller, "create or update", kind.plural(), scope, Some(name))
            })?;
            let bytes = read_body(state, body).await?;
            let mut resource = decode_body(kind, Some(namespace), Some(name), caller, &bytes)?;
            require_namespace(state, kind, namespace).await?;
            prepare_user(state, &mut resource).await?;
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
            Ok(StatusCode::CREATED.into_response())
        }
        Method::PATCH => {
            authorize(
                state,
                caller,
                Verb::Update,
                kind.plural(),
                scope,
                Some(name),
            )?;
            patch_content_type(headers)?;
            let stored = existing.ok_or_else(|| {
                ApiError::not_found(format!("{} not found", key_text(kind, namespace, name)))
            })?;
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
            write(state, &resource, Precondition::Revision(stored.revision)).await?;
            Ok(Json(response_body(&resource)).into_response())
        }
        Method::DELETE => {
            authorize(
                state,
                caller,
                Verb::Delete,
                kind.plural(),
                scope,
                Some(name),
            )?;
            let Some(stored) = existing else {
                return Err(ApiError::not_found(format!(
                    "{} not found",
                    key_text(kind, namespace, name)
                )));
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
                state.auth.wait_for(revision).await;
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(method_not_allowed()),
    }
}

fn key_text(kind: Kind, namespace: &str, name: &str) -> String {
    if kind.is_namespaced() {
        format!("{} {namespace}/{name}", kind.plural())
    } else {
        format!("{} {name}", kind.plural())
    }
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

async fn apikeys_create(
    state: &AppState,
    caller: &Caller,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(
        state,
        caller,
        Verb::Create,
        Kind::ApiKey.plural(),
        None,
        None,
    )?;
    let bytes = read_body(state, body).await?;
    let body = parse_json(&bytes)?;
    let username = body
        .get("username")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("username: missing field \"username\""))?;
    if state.auth.snapshot().user(username).is_none() {
        return Err(ApiError::not_found(format!(
            "user \"{username}\" not found"
        )));
    }
    let key = auth::new_uuid();
    let mut metadata = ObjectMeta::named("", &key);
    metadata.created_by = caller.username.clone();
    let resource = Resource::new(
        metadata,
        Spec::ApiKey(ApiKey {
            metadata: None,
            username: username.to_owned(),
            created_at: crate::clock::unix_now(),
        }),
    );
    write(state, &resource, Precondition::Absent).await?;
    let location = format!("/api/core/v2/apikeys/{key}");
    let mut response = StatusCode::CREATED.into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("a UUID path is a valid header"),
    );
    Ok(response)
}

async fn users_action(
    state: &AppState,
    caller: &Caller,
    method: &Method,
    name: &str,
    action: &str,
    group: Option<&str>,
    body: Body,
) -> Result<Response, ApiError> {
    // Users may change their own password (`update localselfuser`, which the seeded
    // `system:user` role grants); everything else needs `update users`. Authorized before the
    // lookup, so that a refused caller cannot tell which users exist.
    if action == "password" {
        authorize_user(state, caller, Verb::Update, name)?;
    } else {
        authorize(state, caller, Verb::Update, "users", None, Some(name))?;
    }
    let stored = state
        .resources
        .get(Kind::User, "", name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user \"{name}\" not found")))?;
    let Spec::User(mut user) = stored.resource.spec.clone() else {
        return Err(ApiError::internal("a user key holds another kind"));
    };
    match (method.clone(), action, group) {
        (Method::PUT, "password" | "reset_password", None) => {
            let bytes = read_body(state, body).await?;
            let body = parse_json(&bytes)?;
            if let Some(named) = optional_str(&body, "username")? {
                if named != name {
                    return Err(ApiError::invalid(format!(
                        "username: \"{named}\" does not match the user of the URI ({name})"
                    )));
                }
            }
            // As in Sensu: `password` changes a password and needs the current one in
            // `password`, whoever asks (so a stolen token or API key alone cannot change it);
            // `reset_password` is an administrator's (`update users`) and needs only the new
            // one. The new one comes in clear (`password_new`, the web UI's way) or as a hash
            // (`password_hash`, what sensuctl 6 sends after hashing it with bcrypt).
            if action == "password" {
                let current = optional_str(&body, "password")?.ok_or_else(|| {
                    ApiError::invalid(
                        "password: the current password is required to change a password \
                         (an administrator sets another user's with reset_password)",
                    )
                })?;
                if !state.passwords.verify(current, &user.password_hash).await? {
                    return Err(ApiError::invalid(
                        "password: does not match the current password",
                    ));
                }
            }
            let new_password = optional_str(&body, "password_new")?;
            let new_hash = optional_str(&body, "password_hash")?;
            user.password_hash =
                match (new_password, new_hash) {
                    (Some(new_password), None) => {
                        if new_password.chars().count() < 8 {
                            return Err(ApiError::invalid(
                                "password_new: must be at least 8 characters",
                            ));
                        }
                        state.passwords.hash(new_password).await?
                    }
                    (None, Some(new_hash)) => {
                        auth::check_password_hash(new_hash).map_err(|message| {
                            ApiError::invalid(format!("password_hash: {message}"))
                        })?;
                        new_hash.to_owned()
                    }
                    (Some(_), Some(_)) => return Err(ApiError::invalid(
                        "password_new and password_hash: give the new password one way, not both",
                    )),
                    (None, None) => return Err(ApiError::invalid(
                        "password_hash: missing; the new password is required, as password_hash \
                         (bcrypt, from `sensuctl user hash-password`) or password_new (clear text)",
                    )),
                };
        }
        (Method::PUT, "reinstate", None) => user.disabled = false,
        (Method::PUT, "groups", Some(group)) => {
            if !user.groups.iter().any(|existing| existing == group) {
                user.groups.push(group.to_owned());
            }
        }
        (Method::DELETE, "groups", Some(group)) => user.groups.retain(|existing| existing != group),
        (Method::DELETE, "groups", None) => user.groups.clear(),
        _ => return Err(ApiError::not_found("not found")),
    }
    let resource = Resource::new(
        stored.resource.metadata.clone(),
        Spec::User(User { ..user }),
    );
    write(state, &resource, Precondition::Revision(stored.revision)).await?;
    // As Sensu answers an action without a body: 201 for a PUT, 204 for a DELETE.
    if *method == Method::PUT {
        Ok(StatusCode::CREATED.into_response())
    } else {
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}

/// `GET [namespaces/{ns}/]silenced/{subscriptions|checks}/{value}`: the silenced entries for
/// one subscription or one check, as Sensu lists them.
async fn silenced_by(
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
async fn check_hooks_add(
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
async fn check_hooks_remove(
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

/// Where the Tessen opt-out is kept.
const TESSEN_KEY: &str = "config/tessen";

/// Sensu's `TessenConfig`. Cairn sends no telemetry whatever it says; the endpoint exists so
/// that the "disable Tessen" step of Sensu playbooks succeeds and reads back what it wrote.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TessenConfig {
    opt_out: bool,
}

/// `GET /api/core/v2/tessen`: `{"opt_out": …}`, false until set (as Sensu).
async fn tessen_get(state: &AppState, caller: &Caller) -> Result<Response, ApiError> {
    authorize(state, caller, Verb::Get, "tessen", None, None)?;
    let config = match state.resources.store().get(TESSEN_KEY).await? {
        Some(entry) => serde_json::from_slice(&entry.value).map_err(ApiError::internal)?,
        None => TessenConfig::default(),
    };
    Ok(Json(config).into_response())
}

/// `PUT /api/core/v2/tessen` `{"opt_out": true}`: 201, as Sensu.
async fn tessen_put(state: &AppState, caller: &Caller, body: Body) -> Result<Response, ApiError> {
    authorize(state, caller, Verb::Update, "tessen", None, None)?;
    let bytes = read_body(state, body).await?;
    let config: TessenConfig = serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::invalid(format!("invalid TessenConfig: {err}")))?;
    let value = serde_json::to_vec(&config).expect("a TessenConfig always serializes");
    state
        .resources
        .store()
        .put(TESSEN_KEY, value, Precondition::None)
        .await?;
    Ok(StatusCode::CREATED.into_response())
}

/// `POST …/events` and `PUT|POST …/events/{entity}/{check}`: store the event with its state,
/// create the proxy entity on first sight, then hand it to the pipeline.
async fn events_put(
    state: &AppState,
    caller: &Caller,
    namespace: &str,
    name: Option<&str>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(state, body).await?;
    let body = parse_json(&bytes)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths() {
        assert_eq!(parse("/api/core/v2/tessen"), Some(Target::Tessen));
        assert_eq!(
            parse("/api/core/v2/namespaces/default/silenced/subscriptions/linux"),
            Some(Target::SilencedBy {
                namespace: Some("default".into()),
                by_check: false,
                value: "linux".into(),
            })
        );
        assert_eq!(
            parse("/api/core/v2/silenced/checks/cpu"),
            Some(Target::SilencedBy {
                namespace: None,
                by_check: true,
                value: "cpu".into(),
            })
        );
        assert_eq!(
            parse("/api/core/v2/namespaces/default/silenced/linux:cpu"),
            Some(Target::Item {
                kind: Kind::Silenced,
                namespace: "default".into(),
                name: "linux:cpu".into(),
            })
        );
        assert_eq!(
            parse("/api/core/v2/namespaces/default/checks/cpu/hooks/non-zero/hook/dump"),
            Some(Target::CheckHooks {
                namespace: "default".into(),
                check: "cpu".into(),
                hook_type: "non-zero".into(),
                hook: Some("dump".into()),
            })
        );
        assert_eq!(
            parse("/api/core/v2/namespaces/default/checks/cpu/hooks/non-zero/extra"),
            None
        );
        assert_eq!(parse("/api/enterprise/secrets/v1/tessen"), None);
        assert_eq!(
            parse("/api/core/v2/namespaces/default/checks/cpu"),
            Some(Target::Item {
                kind: Kind::CheckConfig,
                namespace: "default".into(),
                name: "cpu".into()
            })
        );
        assert_eq!(
            parse("/api/core/v2/namespaces/default/assets/sensu/http-checks:0.7.0"),
            Some(Target::Item {
                kind: Kind::Asset,
                namespace: "default".into(),
                name: "sensu/http-checks:0.7.0".into()
            })
        );
        assert_eq!(
            parse("/api/core/v2/namespaces/default/events/i-1/my-app"),
            Some(Target::Item {
                kind: Kind::Event,
                namespace: "default".into(),
                name: "i-1/my-app".into()
            })
        );
        assert_eq!(
            parse("/api/core/v2/namespaces"),
            Some(Target::Collection {
                kind: Kind::Namespace,
                namespace: None
            })
        );
        assert_eq!(
            parse("/api/core/v2/checks"),
            Some(Target::Collection {
                kind: Kind::CheckConfig,
                namespace: None
            })
        );
        assert_eq!(
            parse("/api/enterprise/secrets/v1/providers/vault"),
            Some(Target::Item {
                kind: Kind::EnvProvider,
                namespace: String::new(),
                name: "vault".into()
            })
        );
        assert_eq!(parse("/api/core/v2/namespaces/default/nothings"), None);
        assert_eq!(parse("/api/core/v2/checks/cpu"), None);
        assert_eq!(
            parse("/api/core/v2/users/bob/groups/ops"),
            Some(Target::UserAction {
                name: "bob".into(),
                action: "groups".into(),
                group: Some("ops".into())
            })
        );
    }

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
