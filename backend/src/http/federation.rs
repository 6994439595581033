//! The federated view: the health of the registered clusters, events and entities of every
//! cluster in one list, and any API call aimed at a registered cluster, each as the caller so
//! that every downstream's RBAC decides what its part shows.
//!
//! The caller's own credential (token or API key) is never sent to a downstream: each
//! downstream request carries a token minted for it (issue 13), signed with the shared key,
//! naming the caller (username and groups; an API key's user; a caller of another cluster
//! keeps that cluster as the issuer), meant for that one cluster (`aud` = the `Cluster`'s name,
//! which must be the downstream's `--cluster-name`) and living [`FEDERATED_TOKEN_TTL`]. A
//! cluster that records it can replay it nowhere else, and for a minute at most.
//!
//! - `GET /api/cairn/v1/clusters` (RBAC: `list clusters`) — every registered `Cluster` with its
//!   health, probed concurrently:
//!   `[{"name", "api_urls", "healthy", "version", "error", "latency_ms"}]`, by name. `version`
//!   is the downstream's `/version` document (or `null`), `error` says what failed (or is
//!   `null`), `latency_ms` is the `/health` round trip (or `null` without an answer).
//! - `GET /api/cairn/v1/federation/events` and `…/entities`, optional `?namespace=NS` (every
//!   namespace without it). The caller must be allowed to list them here; each registered
//!   cluster is asked as the caller. The answer is one document:
//!   `{"items": [{"cluster", "resource"}], "errors": [{"cluster", "status", "message"}]}`:
//!   this cluster's rows first (its cluster name is its token issuer name), then each
//!   downstream's by cluster name; `resource` is the REST wire form. A cluster that refuses
//!   (`status` 401/403), fails, or cannot be reached (`status` `null`) adds an entry to
//!   `errors` instead of failing the call.
//! - `/api/cairn/v1/clusters/{name}/proxy/{*path}`, any method — forwards the method, path,
//!   query and JSON body as the caller to the cluster and relays the status, the headers that
//!   matter (`content-type`, `etag`, `sensu-continue`, `location`) and the body. Here the
//!   caller only has to be authenticated; the downstream authorises. The path must be a
//!   canonical `/api/…` path (no `\`, no encoded `.`, `/`, `\` or `%`, no `;`, no `.`, `..` or
//!   empty segments), so that what the downstream and anything in front of it resolve is what
//!   was checked here; anything else is refused with 400 and nothing is sent. `/auth…` is never
//!   forwarded: one logs in (and refreshes tokens) at the gateway.
//!
//! What a downstream answers is bounded (issue 14, finding 5; see [`super::client`] and
//! [`super::budget`]): one answer at most [`RESPONSE_LIMIT`] (a listing's page over it is
//! asked again with half as many items), one listing at most
//! [`super::client::PAGES_LIMIT`] pages, one federated request at most [`REQUEST_LIMIT`] over
//! all its clusters, and all requests together at most
//! [`super::budget::DOWNSTREAM_BUDGET`] at once. A cluster that goes over a bound is an entry
//! of `errors` naming it, the bound and the limit, and the other clusters keep their rows; the
//! proxy answers 502 with that message (503 when the gateway's budget is full). A federated
//! request's rows are relayed as the JSON text they came as, never parsed into a tree.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::time::Instant;

use cairn_api::model::Cluster;
use cairn_api::{Kind, Spec};

use crate::auth::rbac::{Caller, Verb};
use crate::auth::{AuthError, Grant, FEDERATED_TOKEN_TTL};
use crate::federation::budget::{Allowance, Exceeded, REQUEST_LIMIT};
use crate::federation::client::{path_of, ClusterClient, ClusterError, Listing, RESPONSE_LIMIT};
use crate::http::{authenticate, authorize, parse_json, read_body, ApiError, AppState};

/// The registered clusters and their health.
pub(crate) const CLUSTERS_PATH: &str = "/api/cairn/v1/clusters";

/// How long the probe of one cluster (`/health` and `/version`) may take in all, failover
/// over its URLs included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long listing one downstream cluster may take in all (every page).
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
// A listing's one token outlives the listing.
const _: () = assert!(FETCH_TIMEOUT.as_secs() < FEDERATED_TOKEN_TTL.as_secs());
/// Items per page asked of a downstream (fewer for a page over
/// [`super::client::RESPONSE_LIMIT`]).
const PAGE_SIZE: usize = 500;
/// Headers of a downstream answer the proxy relays.
const RELAYED_HEADERS: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::ETAG,
    header::LOCATION,
    HeaderName::from_static("sensu-continue"),
];

/// The federated view's routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(CLUSTERS_PATH, get(clusters_list))
        .route(
            "/api/cairn/v1/clusters/{name}/proxy/{*path}",
            any(clusters_proxy),
        )
        .route("/api/cairn/v1/federation/events", get(federation_events))
        .route(
            "/api/cairn/v1/federation/entities",
            get(federation_entities),
        )
}

/// One registered cluster's health, as `GET /api/cairn/v1/clusters` returns it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClusterHealth {
    pub(crate) name: String,
    pub(crate) api_urls: Vec<String>,
    pub(crate) healthy: bool,
    pub(crate) version: Option<Value>,
    pub(crate) error: Option<String>,
    pub(crate) latency_ms: Option<u64>,
}

/// The federated list's answer.
#[derive(Debug, Default, Serialize)]
pub(crate) struct FederatedList {
    pub(crate) items: Vec<FederatedItem>,
    pub(crate) errors: Vec<ClusterFailure>,
    /// The downstream bytes its rows stand for, charged to the gateway's budget until the
    /// answer has been written out (it is dropped with the list).
    #[serde(skip)]
    held: Option<Allowance>,
}

/// One row of the federated list.
#[derive(Debug, Serialize)]
pub(crate) struct FederatedItem {
    /// Shared by the cluster's rows.
    #[serde(serialize_with = "serialize_name")]
    pub(crate) cluster: Arc<str>,
    pub(crate) resource: Row,
}

fn serialize_name<S: serde::Serializer>(name: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(name)
}

/// A resource of the federated list in its REST wire form.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Row {
    /// One of this cluster's.
    Local(Value),
    /// One of this cluster's as the store holds it (the wrapped document's JSON, not the wire
    /// form): for the web UI, which reads a few fields of each and skips decoding the resource
    /// (most of the gateway's time for a list of thousands). Never serialized: only
    /// [`LocalRows::Stored`] asks for it, and the API never does.
    #[serde(skip_serializing)]
    Stored(Vec<u8>),
    /// A downstream's, relayed as it came (its JSON text, checked but not parsed into a
    /// tree: several times smaller).
    Relayed(Box<RawValue>),
}

/// The form of this cluster's own rows in a federated list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalRows {
    /// The REST wire form ([`Row::Local`]): the API's answer.
    Wire,
    /// The stored document ([`Row::Stored`]): the web UI's.
    Stored,
}

/// A cluster that contributed no rows, and why.
#[derive(Debug, Serialize)]
pub(crate) struct ClusterFailure {
    pub(crate) cluster: String,
    /// The downstream's HTTP status; `None` when it gave no (usable) answer.
    pub(crate) status: Option<u16>,
    pub(crate) message: String,
}

/// The query of the federated list.
#[derive(Debug, Deserialize)]
struct FederationQuery {
    namespace: Option<String>,
}

// === handlers ===

async fn clusters_list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<ClusterHealth>>, ApiError> {
    let caller = authenticate(&state, &headers)?;
    authorize(
        &state,
        &caller,
        Verb::List,
        Kind::Cluster.plural(),
        None,
        None,
    )?;
    Ok(Json(cluster_healths(&state).await?))
}

/// Every registered cluster's health, probed concurrently, by name (the caller is authorized).
pub(crate) async fn cluster_healths(state: &AppState) -> Result<Vec<ClusterHealth>, ApiError> {
    let clusters = registered_clusters(state).await?;
    let probes = clusters
        .into_iter()
        .map(|(name, cluster)| probe(state, name, cluster));
    Ok(futures::future::join_all(probes).await)
}

async fn federation_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<FederationQuery>, QueryRejection>,
) -> Result<Json<FederatedList>, ApiError> {
    federated_list(&state, &headers, Kind::Event, query).await
}

async fn federation_entities(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<FederationQuery>, QueryRejection>,
) -> Result<Json<FederatedList>, ApiError> {
    federated_list(&state, &headers, Kind::Entity, query).await
}

async fn clusters_proxy(State(state): State<AppState>, request: Request) -> Response {
    match proxy(&state, request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

/// Why the proxy relays no downstream answer.
#[derive(Debug)]
enum ProxyError {
    /// The gateway refused the request (authentication, a bad path, an unknown cluster).
    Refused(ApiError),
    /// The cluster could not be asked or gave no complete answer: 502. Expected while a
    /// cluster is down or misregistered; a retry may help.
    Downstream(ClusterError),
}

impl From<ApiError> for ProxyError {
    fn from(err: ApiError) -> ProxyError {
        ProxyError::Refused(err)
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        match self {
            ProxyError::Refused(err) => err.into_response(),
            ProxyError::Downstream(err) => {
                // A full budget is the gateway's own state, not the cluster's.
                let status = match &err {
                    ClusterError::OverLimit {
                        exceeded: Exceeded::Budget(_),
                        ..
                    } => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::BAD_GATEWAY,
                };
                (
                    status,
                    Json(serde_json::json!({"message": err.to_string(), "code": 0})),
                )
                    .into_response()
            }
        }
    }
}

// === the cluster registry ===

/// Every registered `Cluster`, by name.
async fn registered_clusters(state: &AppState) -> Result<Vec<(String, Cluster)>, ApiError> {
    let (items, _) = state.resources.list(Kind::Cluster, None, None, 0).await?;
    let mut clusters: Vec<(String, Cluster)> = items
        .into_iter()
        .filter_map(|(_, stored)| match stored.resource.spec {
            Spec::Cluster(cluster) => Some((stored.resource.metadata.name, cluster)),
            _ => None,
        })
        .collect();
    clusters.sort_by(|left, right| left.0.cmp(&right.0));
    Ok(clusters)
}

/// Probes `/health` and `/version` of one cluster, at the same time, within
/// [`PROBE_TIMEOUT`].
async fn probe(state: &AppState, name: String, cluster: Cluster) -> ClusterHealth {
    let mut health = ClusterHealth {
        name,
        api_urls: cluster.api_urls.clone(),
        healthy: false,
        version: None,
        error: None,
        latency_ms: None,
    };
    let client = match ClusterClient::new(&health.name, &cluster) {
        Ok(client) => client,
        Err(err) => {
            health.error = Some(err.to_string());
            return health;
        }
    };
    let started = Instant::now();
    let health_probe = async {
        let answer = client.send(Method::GET, "/health", None, None).await;
        (answer, started.elapsed())
    };
    let version_probe = client.send(Method::GET, "/version", None, None);
    let both = tokio::time::timeout(PROBE_TIMEOUT, async {
        tokio::join!(health_probe, version_probe)
    });
    let Ok(((health_answer, latency), version_answer)) = both.await else {
        health.error = Some(format!(
            "cluster {}: no answer within {}s",
            health.name,
            PROBE_TIMEOUT.as_secs()
        ));
        return health;
    };
    let mut problems = Vec::new();
    match health_answer {
        Ok(response) => {
            health.latency_ms = Some(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX));
            let status = response.status();
            health.healthy = status.is_success();
            if !health.healthy {
                problems.push(format!("/health answered {status}"));
            }
        }
        Err(err) => problems.push(err.to_string()),
    }
    match version_answer {
        Ok(response) if response.status().is_success() => {
            let mut share = state.downstream_budget.allowance(RESPONSE_LIMIT).share();
            match client
                .read(response, "GET /version", &mut share)
                .await
                .map_err(|err| err.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<Value>(&bytes)
                        .map_err(|err| format!("/version is not JSON: {err}"))
                }) {
                Ok(version) => health.version = Some(version),
                Err(problem) => problems.push(problem),
            }
        }
        Ok(response) => problems.push(format!("/version answered {}", response.status())),
        // Unreachable for /health too: the same failure, said once.
        Err(_) if health.latency_ms.is_none() => {}
        Err(err) => problems.push(err.to_string()),
    }
    if !problems.is_empty() {
        health.error = Some(problems.join("; "));
    }
    health
}

// === the federated list ===

async fn federated_list(
    state: &AppState,
    headers: &HeaderMap,
    kind: Kind,
    query: Result<Query<FederationQuery>, QueryRejection>,
) -> Result<Json<FederatedList>, ApiError> {
    let caller = authenticate(state, headers)?;
    let Query(query) = query.map_err(|err| ApiError::invalid(err.body_text()))?;
    let namespace = query.namespace.filter(|namespace| !namespace.is_empty());
    federated_rows(state, &caller, kind, namespace, None, LocalRows::Wire)
        .await
        .map(Json)
}

/// The rows of `kind` of every cluster (this one's first) as `caller` sees them, in one
/// namespace or all; with `only`, of that one cluster (this one's name or a registered one).
/// The federated list of the API and the web UI's lists.
///
/// # Errors
/// 400 for a bad namespace name, 403 when the caller may not list `kind` here, a store failure.
pub(crate) async fn federated_rows(
    state: &AppState,
    caller: &Caller,
    kind: Kind,
    namespace: Option<String>,
    only: Option<&str>,
    local_rows: LocalRows,
) -> Result<FederatedList, ApiError> {
    if let Some(namespace) = &namespace {
        // It goes into downstream paths: only a valid name.
        if let Some(problem) = cairn_api::validate::check_name(Kind::Namespace, namespace) {
            return Err(ApiError::invalid(format!("namespace: {problem}")));
        }
    }
    authorize(
        state,
        caller,
        Verb::List,
        kind.plural(),
        namespace.as_deref(),
        None,
    )?;
    let local_name: Arc<str> = Arc::from(state.issuer.issuer());
    let mut clusters = registered_clusters(state).await?;
    if let Some(only) = only {
        clusters.retain(|(name, _)| name == only);
    }
    let with_local = only.is_none_or(|only| only == &*local_name);
    let path = match &namespace {
        Some(namespace) => kind.collection_path(namespace),
        None => format!("{}/{}", kind.group_prefix(), kind.plural()),
    };
    // Every cluster's pages count against one allowance: the request's whole downstream read.
    let allowance = state.downstream_budget.allowance(REQUEST_LIMIT);
    let downstream = futures::future::join_all(clusters.into_iter().map(|(name, cluster)| {
        let path = path.as_str();
        let allowance = &allowance;
        async move {
            let rows = match tokio::time::timeout(
                FETCH_TIMEOUT,
                fetch_all(state, caller, &name, &cluster, path, allowance),
            )
            .await
            {
                Ok(rows) => rows,
                Err(_) => Err(ClusterFailure {
                    cluster: name.clone(),
                    status: None,
                    message: format!(
                        "cluster {name}: no complete answer within {}s",
                        FETCH_TIMEOUT.as_secs()
                    ),
                }),
            };
            (name, rows)
        }
    }));
    // The downstreams are asked while the local rows are read.
    let local = async {
        if !with_local {
            return Ok::<Vec<Row>, ApiError>(Vec::new());
        }
        match local_rows {
            LocalRows::Wire => Ok(state
                .resources
                .list(kind, namespace.as_deref(), None, 0)
                .await?
                .0
                .into_iter()
                .filter(|(_, stored)| stored.resource.kind() == kind)
                .map(|(_, stored)| Row::Local(stored.resource.to_wire()))
                .collect()),
            LocalRows::Stored => Ok(state
                .resources
                .store()
                .list(
                    &crate::store::resources::Resources::prefix(kind, namespace.as_deref()),
                    None,
                    0,
                )
                .await
                .map_err(ApiError::from)?
                .entries
                .into_iter()
                .map(|entry| Row::Stored(entry.value))
                .collect()),
        }
    };
    let (local, downstream) = tokio::join!(local, downstream);
    let local: Vec<Row> = local?;
    let mut list = FederatedList::default();
    list.items
        .extend(local.into_iter().map(|resource| FederatedItem {
            cluster: Arc::clone(&local_name),
            resource,
        }));
    for (name, rows) in downstream {
        match rows {
            Ok(rows) => {
                let name: Arc<str> = Arc::from(name);
                list.items
                    .extend(rows.into_iter().map(|resource| FederatedItem {
                        cluster: Arc::clone(&name),
                        resource: Row::Relayed(resource),
                    }));
            }
            Err(failure) => {
                tracing::debug!(cluster = %failure.cluster, error = %failure.message, "cluster left out of the federated list");
                list.errors.push(failure);
            }
        }
    }
    list.held = Some(allowance);
    Ok(list)
}

/// Lists `path` on one cluster as `caller` (a token minted for each page), following
/// `Sensu-Continue`, within the bounds of [`ClusterClient::list`] and `allowance`. The rows'
/// bytes stay charged to `allowance` when it succeeds; a failed cluster's are given back.
async fn fetch_all(
    state: &AppState,
    caller: &Caller,
    name: &str,
    cluster: &Cluster,
    path: &str,
    allowance: &Allowance,
) -> Result<Vec<Box<RawValue>>, ClusterFailure> {
    let failure = |err: ClusterError| ClusterFailure {
        cluster: name.to_owned(),
        status: match &err {
            ClusterError::Status { status, .. } => Some(status.as_u16()),
            _ => None,
        },
        message: err.to_string(),
    };
    let client = ClusterClient::new(name, cluster).map_err(failure)?;
    // One token for every page of this listing (it lives 60 s, the listing at most 30 s), so
    // the downstream verifies it once and its verified-token cache answers the other pages.
    let authorization =
        downstream_authorization(state, caller, name).map_err(|err| ClusterFailure {
            cluster: name.to_owned(),
            status: None,
            message: err.to_string(),
        })?;
    let mut share = allowance.share();
    let mut rows = Vec::new();
    client
        .list(
            Listing {
                path,
                page_size: PAGE_SIZE,
            },
            &mut share,
            || Ok(authorization.clone()),
            |page| rows.extend(page),
        )
        .await
        .map_err(failure)?;
    share.keep();
    Ok(rows)
}

/// The `Authorization` header value for one request of `caller` to the cluster `cluster`: a
/// token minted for it alone (see the module's doc), never the caller's own credential.
///
/// # Errors
/// [`AuthError::AudienceIsSelf`] for a `Cluster` registered under this cluster's own name
/// (whoever serves it would get tokens valid here); otherwise only when this backend cannot
/// sign (an internal fault: it always holds its key).
fn downstream_authorization(
    state: &AppState,
    caller: &Caller,
    cluster: &str,
) -> Result<String, AuthError> {
    let token = state.issuer.issue_for(&Grant {
        subject: &caller.username,
        groups: &caller.groups,
        origin: caller.federated_from.as_deref(),
        audience: cluster,
        ttl: FEDERATED_TOKEN_TTL,
    })?;
    Ok(format!("Bearer {}", token.token))
}

// === the proxy ===

/// Where a proxied request goes: the registered cluster and the path (with its query) there.
#[derive(Debug, PartialEq, Eq)]
struct ProxyTarget {
    cluster: String,
    path_and_query: String,
}

async fn proxy(state: &AppState, request: Request) -> Result<Response, ProxyError> {
    let (parts, body) = request.into_parts();
    let target = proxy_target(parts.uri.path(), parts.uri.query())?;
    // The gateway only checks who is calling; the downstream decides what they may do.
    let caller = authenticate(state, &parts.headers)?;
    let cluster = match state
        .resources
        .get(Kind::Cluster, "", &target.cluster)
        .await
        .map_err(ApiError::from)?
        .map(|stored| stored.resource.spec)
    {
        Some(Spec::Cluster(cluster)) => cluster,
        _ => {
            return Err(ApiError::not_found(format!(
                "cluster {} is not registered",
                target.cluster
            ))
            .into())
        }
    };
    let bytes = read_body(state, body).await?;
    let json_body = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(parse_json(&bytes)?)
    };
    let client = ClusterClient::new(&target.cluster, &cluster).map_err(ProxyError::Downstream)?;
    let authorization =
        downstream_authorization(state, &caller, &target.cluster).map_err(|err| match err {
            AuthError::AudienceIsSelf { .. } => ApiError::conflict(err.to_string()),
            err => ApiError::internal(err),
        })?;
    let response = client
        .send(
            parts.method.clone(),
            &target.path_and_query,
            Some(&authorization),
            json_body.as_ref(),
        )
        .await
        .map_err(ProxyError::Downstream)?;
    let status = response.status();
    tracing::debug!(
        cluster = %target.cluster,
        method = %parts.method,
        path = %target.path_and_query,
        %status,
        "proxied"
    );
    let mut relayed = HeaderMap::new();
    for name in RELAYED_HEADERS {
        if let Some(value) = response.headers().get(&name) {
            relayed.insert(name, value.clone());
        }
    }
    let what = format!("{} {}", parts.method, path_of(&target.path_and_query));
    let mut share = state.downstream_budget.allowance(RESPONSE_LIMIT).share();
    let bytes = client
        .read(response, &what, &mut share)
        .await
        .map_err(ProxyError::Downstream)?;
    let mut answer = Response::new(Body::from(bytes));
    *answer.status_mut() = status;
    *answer.headers_mut() = relayed;
    Ok(answer)
}

/// Parses `/api/cairn/v1/clusters/{name}/proxy/{path}` (the raw path, still percent-encoded,
/// so that an encoded `/` in a name stays one) into the cluster and the downstream path.
///
/// # Errors
/// 404 for a path that is no proxy path; 400 for a bad cluster name, `/auth…` (log in at the
/// gateway) and a downstream path that is not canonical (see [`check_proxied_path`]).
fn proxy_target(path: &str, query: Option<&str>) -> Result<ProxyTarget, ApiError> {
    let not_found = || ApiError::not_found("not found");
    let rest = path
        .strip_prefix(CLUSTERS_PATH)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or_else(not_found)?;
    let (cluster, downstream) = rest.split_once("/proxy/").ok_or_else(not_found)?;
    let cluster = crate::http::percent::decode_path_segment(cluster);
    if let Some(problem) = cairn_api::validate::check_name(Kind::Cluster, &cluster) {
        return Err(ApiError::invalid(format!("cluster name: {problem}")));
    }
    check_proxied_path(downstream)
        .map_err(|problem| ApiError::invalid(format!("the proxied path {problem}")))?;
    let mut path_and_query = format!("/{downstream}");
    if let Some(query) = query.filter(|query| !query.is_empty()) {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    Ok(ProxyTarget {
        cluster,
        path_and_query,
    })
}

/// Checks that `path` (the proxied path without its leading `/`, still percent-encoded) is a
/// canonical `api/…` path: what a downstream, or a reverse proxy or base path in front of it,
/// resolves must be the very path checked here, so nothing that a decoder or normaliser could
/// turn into another path passes (issue 13): no backslash, no encoded dot, slash, backslash
/// or percent sign, no `;` (path parameters), no control character, no `.`, `..` or empty
/// segment.
///
/// # Errors
/// What is wrong, to follow "the proxied path".
fn check_proxied_path(path: &str) -> Result<(), String> {
    let bytes = path.as_bytes();
    for (idx, byte) in bytes.iter().enumerate() {
        match byte {
            b'\\' => return Err("may not hold a backslash (\\)".to_owned()),
            b';' => return Err("may not hold path parameters (;)".to_owned()),
            byte if byte.is_ascii_control() => {
                return Err("may not hold a control character".to_owned())
            }
            b'%' => {
                let decoded = path
                    .get(idx + 1..idx + 3)
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| "holds an invalid percent escape".to_owned())?;
                let what = match decoded {
                    b'.' => "an encoded dot (%2e)",
                    b'/' => "an encoded slash (%2f)",
                    b'\\' => "an encoded backslash (%5c)",
                    b'%' => "an encoded percent sign (%25)",
                    b';' => "an encoded semicolon (%3b)",
                    byte if byte.is_ascii_control() => "an encoded control character",
                    _ => continue,
                };
                return Err(format!("may not hold {what}"));
            }
            _ => {}
        }
    }
    let segments: Vec<&str> = path.split('/').collect();
    if segments.iter().any(|segment| segment.is_empty()) {
        return Err("may not hold empty segments (// or a trailing /)".to_owned());
    }
    if segments
        .iter()
        .any(|segment| *segment == "." || *segment == "..")
    {
        return Err("may not hold . or .. segments".to_owned());
    }
    if segments.first().is_some_and(|first| {
        crate::http::percent::decode_path_segment(first).eq_ignore_ascii_case("auth")
    }) {
        return Err(
            "may not be /auth: log in and refresh tokens at the gateway, which makes every \
             request to a cluster with a token for it"
                .to_owned(),
        );
    }
    if segments.first() != Some(&"api") || segments.len() < 2 {
        return Err("must be an /api/... path".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::http::Method;
    use cairn_api::{ObjectMeta, Resource};

    use super::*;
    use crate::http::tests::{bearer, Fixture};

    fn target(path: &str, query: Option<&str>) -> Result<(String, String), String> {
        proxy_target(path, query)
            .map(|target| (target.cluster, target.path_and_query))
            .map_err(|err| format!("{} {}", err.status.as_u16(), err.message))
    }

    #[test]
    fn proxy_paths() {
        let ok = |cluster: &str, path: &str| Ok((cluster.to_owned(), path.to_owned()));
        assert_eq!(
            target(
                "/api/cairn/v1/clusters/alpha/proxy/api/core/v2/namespaces/default/checks",
                Some("limit=5&continue=abc")
            ),
            ok(
                "alpha",
                "/api/core/v2/namespaces/default/checks?limit=5&continue=abc"
            )
        );
        // Harmless escapes stay encoded on their way down; silenced names keep their `:*`.
        assert_eq!(
            target(
                "/api/cairn/v1/clusters/alpha/proxy/api/core/v2/namespaces/default/silenced/linux:*",
                None
            ),
            ok("alpha", "/api/core/v2/namespaces/default/silenced/linux:*")
        );
        assert_eq!(
            target(
                "/api/cairn/v1/clusters/alpha/proxy/api/core/v2/namespaces/default/entities/a%20b",
                Some("")
            ),
            ok("alpha", "/api/core/v2/namespaces/default/entities/a%20b")
        );
        let proxy = "/api/cairn/v1/clusters/alpha/proxy/";
        for (refused, problem) in [
            ("auth", "may not be /auth"),
            ("auth/token", "may not be /auth"),
            ("%61uth/test", "may not be /auth"),
            ("version", "must be an /api/... path"),
            ("admin/console", "must be an /api/... path"),
            ("api", "must be an /api/... path"),
            ("%61pi/core/v2/namespaces", "must be an /api/... path"),
            ("api/../auth", "may not hold . or .. segments"),
            ("api/./core/v2/namespaces", "may not hold . or .. segments"),
            ("api/core/v2/namespaces/..", "may not hold . or .. segments"),
            ("api/%2e%2e/auth", "may not hold an encoded dot (%2e)"),
            ("api/%2E%2E/auth", "may not hold an encoded dot (%2e)"),
            ("api/.%2e/admin", "may not hold an encoded dot (%2e)"),
            (
                "api/core%2f..%2f..%2fadmin",
                "may not hold an encoded slash (%2f)",
            ),
            (
                "api/core%2F..%2F..%2Fadmin",
                "may not hold an encoded slash (%2f)",
            ),
            ("api\\..\\..\\admin\\console", "may not hold a backslash"),
            ("api/%5c../admin", "may not hold an encoded backslash (%5c)"),
            ("api/%5C../admin", "may not hold an encoded backslash (%5c)"),
            (
                "api/%252e%252e/auth",
                "may not hold an encoded percent sign (%25)",
            ),
            ("api/..;/admin", "may not hold path parameters (;)"),
            ("api/x%3b/admin", "may not hold an encoded semicolon (%3b)"),
            ("api/x%00", "may not hold an encoded control character"),
            ("api/x%zz", "holds an invalid percent escape"),
            ("api/x%2", "holds an invalid percent escape"),
            ("/auth", "may not hold empty segments"),
            ("api//core", "may not hold empty segments"),
            ("api/core/v2/namespaces/", "may not hold empty segments"),
        ] {
            let err = target(&format!("{proxy}{refused}"), None).unwrap_err();
            assert!(
                err.starts_with(&format!("400 the proxied path {problem}")),
                "{refused}: {err}"
            );
        }
        let err = target("/api/cairn/v1/clusters/Not%20A%20Name/proxy/api/x", None).unwrap_err();
        assert!(err.starts_with("400 cluster name"), "{err}");
    }

    fn test_ca() -> String {
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .unwrap()
            .cert
            .pem()
    }

    async fn register(fixture: &Fixture, name: &str, cluster: Cluster) {
        fixture
            .put(Resource::new(
                ObjectMeta::named("", name),
                Spec::Cluster(cluster),
            ))
            .await;
    }

    /// A port nothing listens on: bound, then closed.
    fn closed_port_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("https://{addr}")
    }

    #[tokio::test]
    async fn cluster_health_reports_each_failure() {
        let gateway = Fixture::new("gateway").await;
        register(
            &gateway,
            "down",
            Cluster {
                api_urls: vec![closed_port_url()],
                ca_cert: test_ca(),
            },
        )
        .await;
        register(
            &gateway,
            "broken",
            Cluster {
                api_urls: vec!["https://127.0.0.1:1".to_owned()],
                ca_cert: String::new(),
            },
        )
        .await;
        let admin = gateway.token_from("gateway", "admin", &[]);
        let Json(clusters) = clusters_list(State(gateway.state.clone()), bearer(&admin))
            .await
            .unwrap();
        let names: Vec<&str> = clusters.iter().map(|health| health.name.as_str()).collect();
        assert_eq!(names, ["broken", "down"]);
        let broken = &clusters[0];
        assert!(!broken.healthy);
        assert!(
            broken.error.as_deref().unwrap().contains("ca_cert"),
            "{broken:?}"
        );
        let down = &clusters[1];
        assert!(!down.healthy);
        assert_eq!(down.version, None);
        assert_eq!(down.latency_ms, None);
        assert!(
            down.error.as_deref().unwrap().contains("unreachable"),
            "{down:?}"
        );
        let body = serde_json::to_value(down).unwrap();
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "api_urls",
                "error",
                "healthy",
                "latency_ms",
                "name",
                "version"
            ]
        );

        // `list clusters` is needed: a user bound to `view` has no cluster-wide rights.
        gateway.bind_group("viewers", "view").await;
        let viewer = gateway.token_from("elsewhere", "viewer", &["viewers"]);
        let err = clusters_list(State(gateway.state.clone()), bearer(&viewer))
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn the_federated_list_keeps_local_rows_when_a_cluster_fails() {
        let gateway = Fixture::new("gateway").await;
        let admin = gateway.token_from("gateway", "admin", &[]);
        let (status, body) = gateway
            .call(
                Method::PUT,
                "/api/core/v2/namespaces/default/entities/web-1",
                &admin,
                Some(serde_json::json!({
                    "metadata": {"name": "web-1", "namespace": "default"},
                    "entity_class": "proxy",
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        register(
            &gateway,
            "down",
            Cluster {
                api_urls: vec![closed_port_url()],
                ca_cert: test_ca(),
            },
        )
        .await;

        let query = |namespace: Option<&str>| {
            Ok(Query(FederationQuery {
                namespace: namespace.map(str::to_owned),
            }))
        };
        for namespace in [Some("default"), None] {
            let Json(list) = federation_entities(
                State(gateway.state.clone()),
                bearer(&admin),
                query(namespace),
            )
            .await
            .unwrap();
            let body = serde_json::to_value(&list).unwrap();
            assert_eq!(body["items"].as_array().unwrap().len(), 1, "{body}");
            assert_eq!(body["items"][0]["cluster"], "gateway");
            assert_eq!(body["items"][0]["resource"]["metadata"]["name"], "web-1");
            assert_eq!(body["errors"].as_array().unwrap().len(), 1, "{body}");
            assert_eq!(body["errors"][0]["cluster"], "down");
            assert_eq!(body["errors"][0]["status"], Value::Null);
            let message = body["errors"][0]["message"].as_str().unwrap();
            assert!(message.contains("unreachable"), "{message}");
        }

        // The local part needs `list entities` here.
        let stranger = gateway.token_from("elsewhere", "eve", &["strangers"]);
        let err = federation_entities(
            State(gateway.state.clone()),
            bearer(&stranger),
            query(Some("default")),
        )
        .await
        .unwrap_err();
        assert_eq!(err.status, StatusCode::FORBIDDEN);
        let err = federation_events(
            State(gateway.state.clone()),
            bearer(&admin),
            query(Some("../auth")),
        )
        .await
        .unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn the_proxy_needs_a_caller_and_a_registered_cluster() {
        let gateway = Fixture::new("gateway").await;
        let request = |token: Option<&str>, path: &str| {
            let mut builder = axum::http::Request::builder().method(Method::GET).uri(path);
            if let Some(token) = token {
                builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            builder.body(Body::empty()).unwrap()
        };
        let path = "/api/cairn/v1/clusters/alpha/proxy/api/core/v2/namespaces";
        let response = clusters_proxy(State(gateway.state.clone()), request(None, path)).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let admin = gateway.token_from("gateway", "admin", &[]);
        let response =
            clusters_proxy(State(gateway.state.clone()), request(Some(&admin), path)).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);

        register(
            &gateway,
            "alpha",
            Cluster {
                api_urls: vec![closed_port_url()],
                ca_cert: test_ca(),
            },
        )
        .await;
        let response =
            clusters_proxy(State(gateway.state.clone()), request(Some(&admin), path)).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .starts_with("cluster alpha: unreachable"),
            "{body}"
        );
    }
}
