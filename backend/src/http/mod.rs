//! The Sensu-compatible REST API: routes, authentication, and the handlers for resources,
//! events, users, API keys and tokens.

mod drain;
mod error;
mod eventtest;
mod federation;
mod join;
mod percent;
mod replicators;
mod resources;
mod syncs;
mod ui;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use cairn_api::{Kind, Resource, Spec};
use serde_json::Value;

pub(crate) use self::error::{ApiError, Code, InternalFault};
pub(crate) use self::ui::Sessions as UiSessions;
use crate::auth::cache::AuthCache;
use crate::auth::rbac::{self, Caller, Verb};
use crate::auth::{self, TokenIssuer, TokenOrigin};
use crate::store::keyspace;
use crate::store::resources::Resources;
use crate::store::Precondition;

/// The default request body limit (Sensu's `api-request-limit`).
pub const DEFAULT_BODY_LIMIT: usize = 512 * 1024;

/// A web UI session's longest life by default (`--ui-session-ttl`), the refresh token's.
pub const DEFAULT_UI_SESSION_TTL: std::time::Duration = ui::DEFAULT_SESSION_TTL;

/// Everything a handler needs.
#[derive(Clone)]
pub(crate) struct AppState {
    /// Typed resources over the store.
    pub resources: Resources,
    /// Users, keys, roles and bindings.
    pub auth: Arc<AuthCache>,
    /// Signs and verifies tokens.
    pub issuer: Arc<TokenIssuer>,
    /// Stores events (`POST`/`PUT` of events) and hands them to the pipeline.
    pub ingest: crate::events::ingest::Ingest,
    /// The agent side: sessions, joining, the agent CA, revocations, secrets.
    pub agents: crate::agents::Agents,
    /// The handler pipeline, for dry runs (`None` only in unit tests of other parts).
    pub pipeline: Option<Arc<crate::events::pipeline::Pipeline>>,
    /// Request counters.
    pub metrics: Arc<ApiMetrics>,
    /// Largest accepted body, bytes.
    pub body_limit: usize,
    /// Whether the store answers: probed for etcd, read by `/health` and by the write guard.
    pub store_health: Arc<crate::store::StoreHealth>,
    /// Password hashing and checks, off the async workers and throttled.
    pub passwords: Arc<crate::auth::passwords::Passwords>,
    /// The bytes of downstream clusters' answers the gateway may hold at once (the federated
    /// view, the proxy, the replicators).
    pub downstream_budget: crate::federation::budget::Budget,
    /// The web UI's sessions.
    pub ui_sessions: Arc<ui::Sessions>,
}

/// Counters behind `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct ApiMetrics {
    /// Requests answered, by status class (1xx..5xx → index 1..5).
    pub responses: [AtomicU64; 6],
    /// Requests of each resource endpoint, by [`resources::Endpoint::index`].
    pub endpoint_requests: [AtomicU64; resources::Endpoint::NAMES.len()],
    /// Sum of request latencies, microseconds.
    pub latency_micros_sum: AtomicU64,
    /// Requests under each latency bucket bound (see [`LATENCY_BUCKETS_MS`]).
    pub latency_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    /// Events stored (shared with [`crate::events::ingest::Ingest::stored`]).
    pub events_ingested: Arc<AtomicU64>,
    /// The handler pipeline's counters, once it runs.
    pub pipeline: std::sync::OnceLock<Arc<crate::events::pipeline::PipelineStats>>,
    /// The scheduler's counters, once it runs.
    pub scheduler: std::sync::OnceLock<Arc<crate::agents::scheduler::SchedulerStats>>,
    /// The store's commit counters, when the store keeps them.
    pub store: std::sync::OnceLock<Arc<crate::store::StoreStats>>,
}

/// Upper bounds of the request latency histogram, milliseconds.
pub(crate) const LATENCY_BUCKETS_MS: [u64; 8] = [1, 5, 10, 25, 50, 100, 500, 2500];

/// The router with every route and middleware; tests call it with `oneshot`.
pub(crate) fn app(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics_authenticated))
        .route("/auth", get(auth_login))
        .route("/auth/test", get(auth_test))
        .route("/auth/token", post(auth_refresh))
        .route("/auth/logout", post(auth_logout))
        // The join token is the credential: no Authorization header.
        .route(
            cairn_api::agent::BOOTSTRAP_PATH,
            post(join::bootstrap_handler),
        )
        .route(
            "/api/cairn/v1/jointokens",
            get(join::list_tokens_handler).post(join::create_token_handler),
        )
        .route(
            "/api/cairn/v1/jointokens/{id}",
            delete(join::delete_token_handler),
        )
        .route(
            "/api/cairn/v1/agents/{namespace}/{name}/revoke",
            post(join::revoke_handler),
        )
        .merge(replicators::routes())
        .merge(eventtest::routes())
        .merge(syncs::routes())
        .merge(federation::routes())
        .merge(ui::routes(state.clone()))
        .fallback(resources::dispatch)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_writes_while_store_unreachable,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        // Outermost: an early answer still reaches the client whole (HTTP/2 included).
        .layer(middleware::from_fn(drain::finish_request_body))
        .with_state(state)
}

/// Counts and times every request and logs internal faults once.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let metrics = &state.metrics;
    let class = usize::from(response.status().as_u16() / 100).min(5);
    metrics.responses[class].fetch_add(1, Ordering::Relaxed);
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    metrics
        .latency_micros_sum
        .fetch_add(micros, Ordering::Relaxed);
    for (idx, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
        if micros <= bound * 1000 {
            metrics.latency_buckets[idx].fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(InternalFault(detail)) = response.extensions().get::<InternalFault>() {
        tracing::error!(%method, %path, error = %detail, "request failed");
    }
    response
}

/// While the store's probe finds it unreachable, answers writes (POST, PUT, PATCH, DELETE)
/// at once with 503 and `Retry-After`, rather than letting each wait out the store's request
/// timeout. Reads still try: they may succeed once the store is back, before the next probe.
async fn refuse_writes_while_store_unreachable(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match write_refusal(&state, request.method()) {
        Some(refusal) => refusal.into_response(),
        None => next.run(request).await,
    }
}

/// The 503 for a write while the store's probe finds it unreachable, `None` otherwise.
fn write_refusal(state: &AppState, method: &axum::http::Method) -> Option<ApiError> {
    use axum::http::Method;
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let reason = state.store_health.unreachable()?;
    Some(ApiError::store_unavailable(&reason))
}

/// Authenticates a request from its `Authorization` header: `Bearer <jwt>` or `Key <api key>`.
///
/// A token this cluster issued, and an API key, act as the live local user: a disabled or
/// deleted user is refused. A token another cluster of the federation issued with the shared
/// key acts as a federated caller with the token's subject and groups (see
/// [`Caller::federated`]); the user need not exist here. Every token must be meant for this
/// cluster (its `aud`, see [`TokenIssuer::verify`]).
///
/// # Errors
/// 401 when the header is missing or the credential is invalid, expired, meant for another
/// cluster (or none), or belongs to a disabled or deleted local user.
pub(crate) fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| ApiError::unauthenticated("bad credentials"))?;
    if let Some(token) = header.strip_prefix("Bearer ") {
        return authenticate_bearer(state, token.trim());
    }
    let snapshot = state.auth.snapshot();
    let username = if let Some(key) = header.strip_prefix("Key ") {
        snapshot
            .api_key_user(key.trim())
            .map(str::to_owned)
            .ok_or_else(|| ApiError::unauthenticated("invalid credentials"))?
    } else {
        return Err(ApiError::unauthenticated("bad credentials"));
    };
    snapshot
        .caller(&username)
        .ok_or_else(|| ApiError::unauthenticated("invalid credentials"))
}

/// Authenticates an access token (the API's `Bearer` header, the web UI's session): see
/// [`authenticate`].
///
/// # Errors
/// 401 `token expired`, for a token meant for another cluster, or an invalid one.
pub(crate) fn authenticate_bearer(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    let username = {
        let claims = match state.issuer.verify(token) {
            Ok(claims) => claims,
            Err(auth::AuthError::TokenExpired) => {
                return Err(ApiError::unauthenticated("token expired"))
            }
            // Signed by the shared key but not meant for this cluster: saying so helps an
            // operator find a `Cluster` registered under another name than its cluster's.
            Err(
                err @ (auth::AuthError::AudienceMismatch { .. } | auth::AuthError::AudienceMissing),
            ) => return Err(ApiError::unauthenticated(err.to_string())),
            Err(_) => return Err(ApiError::unauthenticated("invalid credentials")),
        };
        match state.issuer.origin(&claims) {
            TokenOrigin::Local => claims.sub,
            TokenOrigin::Federated { issuer } => {
                return Ok(Caller::federated(&claims.sub, &claims.groups, &issuer))
            }
        }
    };
    state
        .auth
        .snapshot()
        .caller(&username)
        .ok_or_else(|| ApiError::unauthenticated("invalid credentials"))
}

/// Checks RBAC; 403 names the verb and resource.
///
/// # Errors
/// 403 when the caller's roles do not allow it.
pub(crate) fn authorize(
    state: &AppState,
    caller: &Caller,
    verb: Verb,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<(), ApiError> {
    let request = rbac::Request {
        verb,
        resource,
        namespace,
        name,
    };
    if state.auth.snapshot().authorize(caller, request) {
        return Ok(());
    }
    Err(forbidden(
        caller,
        &verb.to_string(),
        resource,
        namespace,
        name,
    ))
}

/// The 403 for `caller` refused `verbs` (as text, e.g. `create or update`) on a resource. It
/// names only what the request named, never whether the resource exists.
pub(crate) fn forbidden(
    caller: &Caller,
    verbs: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> ApiError {
    let scope = match namespace {
        Some(namespace) => format!(" in namespace {namespace}"),
        None => String::new(),
    };
    let origin = match &caller.federated_from {
        Some(issuer) => format!(" of cluster {issuer}"),
        None => String::new(),
    };
    ApiError::forbidden(format!(
        "user {}{origin} may not {verbs} {resource}{}{scope}",
        caller.username,
        name.map(|name| format!("/{name}")).unwrap_or_default()
    ))
}

/// `GET /health`: 200 while the store answers, 503 with the reason in `ClusterHealth[].Err`
/// while it does not. A probed store (etcd) is judged by its last probe, so this answers at
/// once during an outage and turns 200 again by itself; the embedded store is asked directly.
async fn health(State(state): State<AppState>) -> Response {
    let problem = if state.store_health.is_probed() {
        state.store_health.unreachable()
    } else {
        state
            .resources
            .store()
            .revision()
            .await
            .err()
            .map(|err| cairn_api::problem::cause_chain(&err))
    };
    let healthy = problem.is_none();
    let body = serde_json::json!({
        "Alarms": null,
        "ClusterHealth": [{
            "MemberID": 0,
            "MemberIDHex": "0",
            "Name": "cairn",
            "Err": problem.unwrap_or_default(),
            "Healthy": healthy,
        }],
        "Header": {"cluster_id": 0, "member_id": 0, "raft_term": 0},
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn version() -> Json<Value> {
    Json(serde_json::json!({
        "sensu_backend": "6.9.2",
        "cairn_backend": env!("CARGO_PKG_VERSION"),
        "api_groups": {"core/v2": true, "secrets/v1": true, "federation/v1": true},
    }))
}

/// The router of `--metrics-listen`: `/metrics` alone, without authentication, for a
/// Prometheus scraper on an address the operator keeps private (loopback, a management
/// network). Served over plain HTTP; nothing else of the API is reachable through it.
pub(crate) fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

/// `GET /metrics` on the API: any authenticated caller (a viewer's token or API key) may read
/// it; the counters say how busy the cluster is and which handlers fail, so they are not for
/// anonymous callers.
async fn metrics_authenticated(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?;
    Ok(metrics_text(State(state)).await)
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let metrics = &state.metrics;
    let mut out = String::new();
    out.push_str("# HELP cairn_http_responses_total HTTP responses by status class.\n");
    out.push_str("# TYPE cairn_http_responses_total counter\n");
    for class in 1..=5 {
        out.push_str(&format!(
            "cairn_http_responses_total{{class=\"{class}xx\"}} {}\n",
            metrics.responses[class].load(Ordering::Relaxed)
        ));
    }
    out.push_str("# HELP cairn_http_request_duration_seconds Request latency.\n");
    out.push_str("# TYPE cairn_http_request_duration_seconds histogram\n");
    let count: u64 = (1..=5)
        .map(|class| metrics.responses[class].load(Ordering::Relaxed))
        .sum();
    for (idx, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
        out.push_str(&format!(
            "cairn_http_request_duration_seconds_bucket{{le=\"{}\"}} {}\n",
            *bound as f64 / 1000.0,
            metrics.latency_buckets[idx].load(Ordering::Relaxed)
        ));
    }
    out.push_str(&format!(
        "cairn_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n"
    ));
    out.push_str(&format!(
        "cairn_http_request_duration_seconds_sum {}\n",
        metrics.latency_micros_sum.load(Ordering::Relaxed) as f64 / 1e6
    ));
    out.push_str(&format!(
        "cairn_http_request_duration_seconds_count {count}\n"
    ));
    out.push_str(
        "# HELP cairn_api_endpoint_requests_total Authenticated requests of each resource endpoint.\n",
    );
    out.push_str("# TYPE cairn_api_endpoint_requests_total counter\n");
    for (idx, name) in resources::Endpoint::NAMES.iter().enumerate() {
        out.push_str(&format!(
            "cairn_api_endpoint_requests_total{{endpoint=\"{name}\"}} {}\n",
            metrics.endpoint_requests[idx].load(Ordering::Relaxed)
        ));
    }
    out.push_str("# HELP cairn_events_ingested_total Events stored.\n");
    out.push_str("# TYPE cairn_events_ingested_total counter\n");
    out.push_str(&format!(
        "cairn_events_ingested_total {}\n",
        metrics.events_ingested.load(Ordering::Relaxed)
    ));
    if let Some(store) = metrics.store.get() {
        let commits = store.commits.load(Ordering::Relaxed);
        out.push_str("# HELP cairn_store_commits_total Store transactions committed.\n");
        out.push_str("# TYPE cairn_store_commits_total counter\n");
        out.push_str(&format!("cairn_store_commits_total {commits}\n"));
        out.push_str("# HELP cairn_store_writes_total Writes in committed store transactions.\n");
        out.push_str("# TYPE cairn_store_writes_total counter\n");
        out.push_str(&format!(
            "cairn_store_writes_total {}\n",
            store.writes.load(Ordering::Relaxed)
        ));
        out.push_str(
            "# HELP cairn_store_commit_seconds_total Time spent committing (with fsync).\n",
        );
        out.push_str("# TYPE cairn_store_commit_seconds_total counter\n");
        out.push_str(&format!(
            "cairn_store_commit_seconds_total {}\n",
            store.commit_micros.load(Ordering::Relaxed) as f64 / 1e6
        ));
    }
    if let Some(pipeline) = metrics.pipeline.get() {
        let counters = [
            (
                "cairn_pipeline_events_queued_total",
                "Events queued for handlers.",
                &pipeline.queued,
            ),
            (
                "cairn_pipeline_events_dropped_total",
                "Events not handled because the handler queue was full (by count).",
                &pipeline.dropped_queue_full,
            ),
            (
                "cairn_pipeline_events_dropped_bytes_total",
                "Events not handled because the pipeline held its limit in bytes.",
                &pipeline.dropped_queue_bytes,
            ),
            (
                "cairn_handler_runs_total",
                "Handler runs started.",
                &pipeline.handler_runs,
            ),
            (
                "cairn_handler_failures_total",
                "Handler runs that failed.",
                &pipeline.handler_failures,
            ),
            (
                "cairn_handler_timeouts_total",
                "Handler runs killed at their timeout.",
                &pipeline.handler_timeouts,
            ),
            (
                "cairn_handler_refused_total",
                "Pipe handler runs refused: the backend runs as root without a handler user.",
                &pipeline.handler_refused,
            ),
            (
                "cairn_mutator_runs_total",
                "Stored mutators run (pipe and javascript).",
                &pipeline.mutator_runs,
            ),
            (
                "cairn_mutator_failures_total",
                "Mutators that failed; the handler after each was not run.",
                &pipeline.mutator_failures,
            ),
            (
                "cairn_filter_errors_total",
                "Filter expressions that failed and were skipped, as in Sensu.",
                &pipeline.filter_errors,
            ),
        ];
        for (name, help, value) in counters {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            out.push_str(&format!("{name} {}\n", value.load(Ordering::Relaxed)));
        }
    }
    let secrets = state.agents.secrets.stats();
    let mut counters = vec![
        (
            "cairn_secret_provider_reads_total",
            "Secret values read from their provider (a Vault read, an environment look-up).",
            &secrets.provider_reads,
        ),
        (
            "cairn_secret_cache_hits_total",
            "Secret resolutions answered from the in-memory cache.",
            &secrets.cache_hits,
        ),
        (
            "cairn_secret_failures_total",
            "Secret resolutions that failed.",
            &secrets.failures,
        ),
    ];
    if let Some(scheduler) = metrics.scheduler.get() {
        counters.extend([
            (
                "cairn_check_firings_total",
                "Check firings (one per check per scheduled time).",
                &scheduler.firings,
            ),
            (
                "cairn_check_requests_sent_total",
                "Check requests queued for agent sessions.",
                &scheduler.requests_sent,
            ),
            (
                "cairn_check_requests_dropped_total",
                "Check requests not queued: the session was full or closed.",
                &scheduler.requests_dropped,
            ),
            (
                "cairn_check_requests_undeliverable_total",
                "Check requests not sent: secrets failed or the session lacks mutual TLS.",
                &scheduler.requests_undeliverable,
            ),
            (
                "cairn_ttl_events_total",
                "Events raised by the check TTL watchdog.",
                &scheduler.ttl_events,
            ),
            (
                "cairn_check_subdued_firings_total",
                "Scheduled check firings not sent because a subdue window held the time.",
                &scheduler.subdued_firings,
            ),
        ]);
    }
    for (name, help, value) in counters {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
        out.push_str(&format!("{name} {}\n", value.load(Ordering::Relaxed)));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The client's address, which the API listener puts into every request's extensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub std::net::SocketAddr);

/// Checks HTTP Basic credentials against the user store ([`crate::auth::passwords`]: hashing off the
/// async workers, failed logins throttled by address and user).
async fn basic_caller(
    state: &AppState,
    headers: &HeaderMap,
    client: Option<Extension<ClientAddr>>,
) -> Result<Caller, ApiError> {
    let encoded = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .ok_or_else(|| ApiError::unauthenticated("bad credentials"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| ApiError::unauthenticated("bad credentials"))?;
    let (username, password) = decoded
        .split_once(':')
        .ok_or_else(|| ApiError::unauthenticated("bad credentials"))?;
    let address = client.map(|Extension(ClientAddr(addr))| addr.ip());
    password_caller(state, username, password, address).await
}

/// Checks a username and password against the user store, throttled by `address` and user
/// (the API's Basic credentials and the web UI's login form alike).
///
/// # Errors
/// 401 `bad credentials` for a wrong password, an unknown or a disabled user (the same answer
/// for each); 503 when the hashing threads stay busy.
pub(crate) async fn password_caller(
    state: &AppState,
    username: &str,
    password: &str,
    address: Option<std::net::IpAddr>,
) -> Result<Caller, ApiError> {
    let snapshot = state.auth.snapshot();
    // An unknown or disabled user is checked against a dummy hash: the same work, the same
    // answer, so the timing says nothing about which users exist.
    let hash = snapshot
        .user(username)
        .filter(|user| !user.disabled)
        .map(|user| user.password_hash.clone());
    if !state
        .passwords
        .check_login(address, username, password, hash.as_deref())
        .await?
    {
        return Err(ApiError::unauthenticated("bad credentials"));
    }
    if let Some(hash) = hash.filter(|hash| auth::needs_rehash(hash)) {
        upgrade_password_hash(state, username, password, &hash).await;
    }
    snapshot
        .caller(username)
        .ok_or_else(|| ApiError::unauthenticated("bad credentials"))
}

/// Replaces a user's hash that is not current argon2 (a bcrypt hash brought from Sensu, say)
/// with a fresh one, now that a login proved the password. The write is guarded by the stored
/// revision and the hash that was checked, so a password changed meanwhile is never
/// overwritten; a failure is logged and the login succeeds all the same.
async fn upgrade_password_hash(state: &AppState, username: &str, password: &str, checked: &str) {
    let upgraded: Result<bool, ApiError> = async {
        let Some(stored) = state.resources.get(Kind::User, "", username).await? else {
            return Ok(false);
        };
        let Spec::User(mut user) = stored.resource.spec.clone() else {
            return Ok(false);
        };
        if user.password_hash != checked {
            return Ok(false);
        }
        user.password_hash = state.passwords.hash(password).await?;
        let resource = Resource::new(stored.resource.metadata.clone(), Spec::User(user));
        let revision = state
            .resources
            .put(&resource, Precondition::Revision(stored.revision))
            .await?;
        state.auth.wait_for(revision).await;
        Ok(true)
    }
    .await;
    match upgraded {
        Ok(true) => tracing::info!(user = %username, "password hash upgraded to argon2"),
        Ok(false) => {}
        Err(err) => {
            tracing::warn!(user = %username, error = %err.message, "failed to upgrade the password hash");
        }
    }
}

async fn issue_tokens(state: &AppState, caller: &Caller) -> Result<Json<Value>, ApiError> {
    let now = crate::clock::unix_now_u64();
    let pair = issue_token_pair(
        state,
        caller,
        auth::ACCESS_TOKEN_TTL,
        now + auth::REFRESH_TOKEN_TTL.as_secs(),
    )
    .await?;
    Ok(Json(serde_json::json!({
        "access_token": pair.access_token,
        "expires_at": pair.expires_at,
        "refresh_token": pair.refresh_token,
    })))
}

/// An access token and the single-use refresh token that renews it.
#[derive(Debug, Clone)]
pub(crate) struct TokenPair {
    pub(crate) access_token: String,
    /// When the access token expires, Unix seconds.
    pub(crate) expires_at: u64,
    pub(crate) refresh_token: String,
}

/// Issues `caller` an access token living `access_ttl` (cut to end by `refresh_expires_at`)
/// and a refresh token that expires at `refresh_expires_at` (Unix seconds), recorded in the
/// store by its digest: `/auth`, `/auth/token` and the web UI's sessions.
///
/// # Errors
/// A store failure; an internal fault when this backend cannot sign.
pub(crate) async fn issue_token_pair(
    state: &AppState,
    caller: &Caller,
    access_ttl: std::time::Duration,
    refresh_expires_at: u64,
) -> Result<TokenPair, ApiError> {
    let left = refresh_expires_at.saturating_sub(crate::clock::unix_now_u64());
    let access_ttl = access_ttl.min(std::time::Duration::from_secs(left.max(1)));
    let access = state
        .issuer
        .issue_lasting(&caller.username, &caller.groups, access_ttl)
        .map_err(ApiError::internal)?;
    let refresh_token = auth::random_token(32);
    let record = serde_json::json!({
        "username": caller.username,
        "expires_at": refresh_expires_at,
    });
    let key = refresh_key(&refresh_token);
    let value = serde_json::to_vec(&record).expect("a JSON value always serializes");
    state
        .resources
        .store()
        .put(&key, value, Precondition::Absent)
        .await?;
    Ok(TokenPair {
        access_token: access.token,
        expires_at: access.expires_at,
        refresh_token,
    })
}

/// How often expired refresh tokens are removed from the store.
pub(crate) const REFRESH_SWEEP_INTERVAL: std::time::Duration =
    std::time::Duration::from_secs(60 * 60);

/// The store key of a refresh token's record (by its digest).
pub(crate) fn refresh_key(token: &str) -> String {
    format!("{}{}", keyspace::REFRESH_TOKENS, auth::token_digest(token))
}

/// Whether a refresh token record has expired at `now`.
fn refresh_expired(value: &[u8], now: u64) -> Option<bool> {
    let record: Value = serde_json::from_slice(value).ok()?;
    Some(record["expires_at"].as_u64()? < now)
}

/// Starts the task that removes expired refresh tokens every hour (a token is used at most
/// once, but one never used stayed in the store forever).
pub(crate) fn spawn_refresh_sweeper(
    store: Arc<dyn crate::store::Store>,
) -> tokio::task::JoinHandle<()> {
    crate::store::sweep::spawn_sweeper(
        store,
        "refresh tokens",
        keyspace::REFRESH_TOKENS,
        REFRESH_SWEEP_INTERVAL,
        refresh_expired,
    )
}

async fn auth_login(
    State(state): State<AppState>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = basic_caller(&state, &headers, client).await?;
    issue_tokens(&state, &caller).await
}

async fn auth_test(
    State(state): State<AppState>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    basic_caller(&state, &headers, client)
        .await
        .map(|_| StatusCode::OK)
}

#[derive(serde::Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

/// Takes a refresh token out of the store, once: a second use finds it gone; returns its user.
///
/// # Errors
/// 401 for a refresh token that is unknown, used already or expired; a store failure.
pub(crate) async fn consume_refresh(state: &AppState, token: &str) -> Result<String, ApiError> {
    consume_refresh_record(state, token)
        .await
        .map(|record| record.username)
}

/// A refresh token's record: whose it is and when it expires (Unix seconds).
#[derive(Debug)]
pub(crate) struct RefreshRecord {
    pub(crate) username: String,
    pub(crate) expires_at: u64,
}

/// [`consume_refresh`], with the record's expiry (a web UI session ends with it).
///
/// # Errors
/// As [`consume_refresh`].
pub(crate) async fn consume_refresh_record(
    state: &AppState,
    token: &str,
) -> Result<RefreshRecord, ApiError> {
    let store = state.resources.store();
    let key = refresh_key(token);
    let entry = store
        .get(&key)
        .await?
        .ok_or_else(|| ApiError::unauthenticated("invalid refresh token"))?;
    // Guarded delete: of two concurrent uses, exactly one wins.
    match store
        .delete(&key, Precondition::Revision(entry.mod_revision))
        .await
    {
        Ok(Some(_)) => {}
        Ok(None) | Err(crate::store::StoreError::PreconditionFailed { .. }) => {
            return Err(ApiError::unauthenticated("invalid refresh token"))
        }
        Err(err) => return Err(err.into()),
    }
    let record: Value = serde_json::from_slice(&entry.value).map_err(ApiError::internal)?;
    let expires_at = record["expires_at"].as_u64().unwrap_or(0);
    if expires_at < crate::clock::unix_now_u64() {
        return Err(ApiError::unauthenticated("refresh token expired"));
    }
    let username = record["username"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| ApiError::internal("refresh record without user"))?;
    Ok(RefreshRecord {
        username,
        expires_at,
    })
}

async fn auth_refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: RefreshBody = serde_json::from_slice(&body)
        .map_err(|err| ApiError::invalid(format!("invalid request body: {err}")))?;
    let access = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthenticated("bad credentials"))?;
    let claims = state
        .issuer
        .verify_ignoring_expiry(access.trim())
        .map_err(|_| ApiError::unauthenticated("invalid credentials"))?;
    // Refresh tokens stay local: only this cluster's own access tokens are refreshed here, and
    // the refresh token is left untouched for the cluster that issued it.
    if let TokenOrigin::Federated { issuer } = state.issuer.origin(&claims) {
        return Err(ApiError::unauthenticated(format!(
            "the access token was issued by cluster {issuer}: refresh it there"
        )));
    }
    let username = consume_refresh(&state, &body.refresh_token).await?;
    if username != claims.sub {
        return Err(ApiError::unauthenticated(
            "the tokens belong to different users",
        ));
    }
    let caller = state
        .auth
        .snapshot()
        .caller(&username)
        .ok_or_else(|| ApiError::unauthenticated("invalid credentials"))?;
    issue_tokens(&state, &caller).await
}

async fn auth_logout(State(state): State<AppState>, body: Bytes) -> Result<StatusCode, ApiError> {
    let body: RefreshBody = serde_json::from_slice(&body)
        .map_err(|err| ApiError::invalid(format!("invalid request body: {err}")))?;
    // 200 with no body, as Sensu's logout answers.
    consume_refresh(&state, &body.refresh_token)
        .await
        .map(|_| StatusCode::OK)
}

/// Reads a request body up to the limit.
pub(crate) async fn read_body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, state.body_limit)
        .await
        .map_err(|_| ApiError::too_large(state.body_limit))
}

/// Parses a JSON body, naming the position of a syntax error.
pub(crate) fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|err| {
        ApiError::invalid(format!(
            "malformed JSON at line {} column {}: {err}",
            err.line(),
            err.column()
        ))
    })
}

#[cfg(test)]
pub(crate) mod tests {

    /// An `AppState` over a fresh store in `dir` (the agents' test state, a throwaway JWT key),
    /// and the sink its events go to.
    pub(crate) async fn test_state(
        dir: &std::path::Path,
    ) -> (
        AppState,
        Arc<crate::agents::scheduler::tests::CollectingSink>,
    ) {
        let (agents, sink) = crate::agents::scheduler::tests::test_state(dir).await;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let issuer = TokenIssuer::from_pem(
            Some(&key.serialize_pem()),
            &key.public_key_pem(),
            "cairn-test",
        )
        .unwrap();
        let state = AppState {
            resources: agents.resources.clone(),
            auth: Arc::clone(&agents.auth),
            issuer: Arc::new(issuer),
            ingest: agents.ingest.clone(),
            metrics: Arc::default(),
            body_limit: DEFAULT_BODY_LIMIT,
            store_health: crate::store::StoreHealth::unprobed(),
            passwords: Arc::new(crate::auth::passwords::Passwords::with_workers(1).unwrap()),
            downstream_budget: crate::federation::budget::Budget::new(
                crate::federation::budget::DOWNSTREAM_BUDGET,
            ),
            ui_sessions: Arc::new(ui::Sessions::new(ui::DEFAULT_SESSION_TTL, "cairn-test")),
            pipeline: None,
            agents,
        };
        (state, sink)
    }
    use axum::http::Method;
    use cairn_api::model::{RoleBinding, RoleRef, Subject, User};
    use cairn_api::{ObjectMeta, Resource, Spec};

    use super::*;
    use crate::auth::rbac::GROUP_CLUSTER_ADMINS;

    /// A backend's state over a fresh store seeded as `init` seeds it (default roles, the
    /// `admin` user, the `default` namespace), whose tokens are issued by `cluster` with a key
    /// pair the test knows.
    pub(crate) struct Fixture {
        pub(crate) state: AppState,
        /// The signing key (PKCS#8 PEM), shared with the "other clusters" of a test.
        pub(crate) private_pem: String,
        pub(crate) public_pem: String,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        pub(crate) async fn new(cluster: &str) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let (mut state, _sink) = tests::test_state(dir.path()).await;
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let (private_pem, public_pem) = (key.serialize_pem(), key.public_key_pem());
            state.issuer =
                Arc::new(TokenIssuer::from_pem(Some(&private_pem), &public_pem, cluster).unwrap());
            let fixture = Fixture {
                state,
                private_pem,
                public_pem,
                _dir: dir,
            };
            let hash = auth::hash_password("admin-password").unwrap();
            for resource in rbac::default_resources("admin", &hash) {
                fixture.put(resource).await;
            }
            fixture
                .put(Resource::new(
                    ObjectMeta::named("", "default"),
                    Spec::Namespace(cairn_api::model::Namespace {
                        name: "default".into(),
                    }),
                ))
                .await;
            fixture
        }

        /// Stores a resource and waits until authentication sees it.
        pub(crate) async fn put(&self, resource: Resource) {
            let revision = self
                .state
                .resources
                .put(&resource, Precondition::None)
                .await
                .unwrap();
            self.state.auth.wait_for(revision).await;
        }

        /// A token signed with this backend's (shared) key as the cluster `issuer` issues it
        /// for this backend (its audience).
        pub(crate) fn token_from(&self, issuer: &str, username: &str, groups: &[&str]) -> String {
            let other =
                TokenIssuer::from_pem(Some(&self.private_pem), &self.public_pem, issuer).unwrap();
            let groups: Vec<String> = groups.iter().map(|group| (*group).to_owned()).collect();
            if issuer == self.state.issuer.issuer() {
                return other.issue(username, &groups).unwrap().token;
            }
            other
                .issue_for(&auth::Grant {
                    subject: username,
                    groups: &groups,
                    origin: None,
                    audience: self.state.issuer.issuer(),
                    ttl: auth::ACCESS_TOKEN_TTL,
                })
                .unwrap()
                .token
        }

        /// Binds `group` to the cluster role `role` with a ClusterRoleBinding.
        pub(crate) async fn bind_group(&self, group: &str, role: &str) {
            self.put(crate::auth::rbac::cluster_role_binding(group, role, group))
                .await;
        }

        /// Sends a request through the resource routes.
        pub(crate) async fn call(
            &self,
            method: Method,
            uri: &str,
            token: &str,
            body: Option<Value>,
        ) -> (StatusCode, Value) {
            let request = axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(body.map_or_else(Body::empty, |body| Body::from(body.to_string())))
                .unwrap();
            let response = resources::dispatch(State(self.state.clone()), request).await;
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        }
    }

    pub(crate) fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    fn check(name: &str) -> Value {
        serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "command": "true",
            "interval": 60,
            "subscriptions": ["linux"],
        })
    }

    fn local_user(name: &str, groups: &[&str], disabled: bool) -> Resource {
        Resource::new(
            ObjectMeta::named("", name),
            Spec::User(User {
                username: name.into(),
                password_hash: auth::hash_password("bob-password").unwrap(),
                groups: groups.iter().map(|group| (*group).to_owned()).collect(),
                disabled,
                ..User::default()
            }),
        )
    }

    #[tokio::test]
    async fn tokens_of_another_cluster_are_authorised_by_their_groups() {
        let alpha = Fixture::new("alpha").await;
        alpha.bind_group("federation-viewers", "view").await;
        // The gateway's viewer does not exist on alpha: its token's groups speak for it.
        let viewer = alpha.token_from("gateway", "federation-viewer", &["federation-viewers"]);
        let caller = authenticate(&alpha.state, &bearer(&viewer)).unwrap();
        assert_eq!(caller.username, "federation-viewer");
        assert_eq!(caller.federated_from.as_deref(), Some("gateway"));

        let events = "/api/core/v2/namespaces/default/events";
        let (status, body) = alpha.call(Method::GET, events, &viewer, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let checks = "/api/core/v2/namespaces/default/checks";
        let (status, body) = alpha
            .call(Method::POST, checks, &viewer, Some(check("cpu")))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(
            body["message"],
            "user federation-viewer of cluster gateway may not create checks/cpu in namespace default"
        );

        // A group alpha does not bind: authenticated, but allowed nothing.
        let stranger = alpha.token_from("gateway", "eve", &["strangers"]);
        let (status, _) = alpha.call(Method::GET, events, &stranger, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        // The replicators' identity: cluster-admins, bound on every cluster by default.
        let replicator = alpha.token_from("gateway", "cairn:replicator", &[GROUP_CLUSTER_ADMINS]);
        let (status, body) = alpha
            .call(Method::POST, checks, &replicator, Some(check("cpu")))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (_, body) = alpha
            .call(Method::GET, &format!("{checks}/cpu"), &replicator, None)
            .await;
        assert_eq!(body["metadata"]["created_by"], "cairn:replicator");
    }

    #[tokio::test]
    async fn each_endpoint_is_counted_under_its_name() {
        let alpha = Fixture::new("alpha").await;
        let admin = alpha.token_from("alpha", "admin", &[GROUP_CLUSTER_ADMINS]);
        let checks = "/api/core/v2/namespaces/default/checks";
        let (status, _) = alpha
            .call(Method::POST, checks, &admin, Some(check("cpu")))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        for _ in 0..2 {
            let (status, _) = alpha
                .call(Method::GET, &format!("{checks}/cpu"), &admin, None)
                .await;
            assert_eq!(status, StatusCode::OK);
        }
        // Refused before it is routed: a method the path does not take is not an endpoint.
        let (status, _) = alpha
            .call(Method::POST, "/api/core/v2/tessen", &admin, None)
            .await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        let response = metrics_text(State(alpha.state.clone())).await;
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let count = |endpoint: &str| {
            let series = format!("cairn_api_endpoint_requests_total{{endpoint=\"{endpoint}\"}} ");
            text.lines()
                .find_map(|line| line.strip_prefix(series.as_str()))
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
                .to_owned()
        };
        assert_eq!(count("create"), "1");
        assert_eq!(count("get"), "2");
        assert_eq!(count("put_tessen"), "0");
    }

    #[tokio::test]
    async fn own_tokens_still_read_the_live_user_record() {
        let alpha = Fixture::new("alpha").await;
        // Claims say cluster-admins, but alpha's own tokens speak for its users as they are now.
        alpha.put(local_user("bob", &[], false)).await;
        let bob = alpha.token_from("alpha", "bob", &[GROUP_CLUSTER_ADMINS]);
        let caller = authenticate(&alpha.state, &bearer(&bob)).unwrap();
        assert_eq!(caller.federated_from, None);
        assert_eq!(caller.groups, ["system:users"]);
        let (status, _) = alpha
            .call(
                Method::POST,
                "/api/core/v2/namespaces/default/checks",
                &bob,
                Some(check("cpu")),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        alpha.put(local_user("bob", &[], true)).await;
        let err = authenticate(&alpha.state, &bearer(&bob)).unwrap_err();
        assert_eq!(err.status, StatusCode::UNAUTHORIZED);
        let ghost = alpha.token_from("alpha", "ghost", &[GROUP_CLUSTER_ADMINS]);
        let err = authenticate(&alpha.state, &bearer(&ghost)).unwrap_err();
        assert_eq!(err.status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn a_vault_provider_sent_back_as_read_keeps_its_token() {
        let alpha = Fixture::new("alpha").await;
        let admin = alpha.token_from("alpha", "admin", &[]);
        let path = "/api/enterprise/secrets/v1/providers/vault";
        let provider = serde_json::json!({
            "type": "VaultProvider", "api_version": "secrets/v1", "metadata": {"name": "vault"},
            "spec": {"client": {"address": "https://vault.example.com:8200",
                                "token": "s.stored-token", "version": "v2"}},
        });
        let (status, _) = alpha.call(Method::PUT, path, &admin, Some(provider)).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, read) = alpha.call(Method::GET, path, &admin, None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!read.to_string().contains("stored-token"), "{read}");
        // What a client read, sent back unchanged (no token): the stored token stays.
        let (status, _) = alpha.call(Method::PUT, path, &admin, Some(read)).await;
        assert_eq!(status, StatusCode::CREATED);
        let token = |stored: Option<crate::store::resources::Stored>| match stored
            .map(|s| s.resource.spec)
        {
            Some(Spec::VaultProvider(vault)) => vault.client.token,
            other => panic!("not a vault provider: {other:?}"),
        };
        let stored = alpha
            .state
            .resources
            .get(Kind::VaultProvider, "", "vault")
            .await
            .unwrap();
        assert_eq!(token(stored), "s.stored-token");
        // A new token replaces it.
        let (status, _) = alpha
            .call(
                Method::PUT,
                path,
                &admin,
                Some(serde_json::json!({
                    "type": "VaultProvider", "api_version": "secrets/v1",
                    "metadata": {"name": "vault"},
                    "spec": {"client": {"address": "https://vault.example.com:8200",
                                        "token": "s.new-token", "version": "v2"}},
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let stored = alpha
            .state
            .resources
            .get(Kind::VaultProvider, "", "vault")
            .await
            .unwrap();
        assert_eq!(token(stored), "s.new-token");
    }

    #[tokio::test]
    async fn federated_callers_are_not_local_users_of_the_same_name() {
        let alpha = Fixture::new("alpha").await;
        alpha.put(local_user("bob", &[], false)).await;
        alpha
            .put(Resource::new(
                ObjectMeta::named("", "bob-admin"),
                Spec::ClusterRoleBinding(RoleBinding {
                    metadata: None,
                    role_ref: RoleRef {
                        type_name: "ClusterRole".into(),
                        name: "cluster-admin".into(),
                    },
                    subjects: vec![Subject {
                        type_name: "User".into(),
                        name: "bob".into(),
                    }],
                }),
            ))
            .await;
        let gateway_bob = alpha.token_from("gateway", "bob", &[]);
        // Neither alpha's binding of its own bob nor bob's right to change his own password.
        let (status, _) = alpha
            .call(Method::GET, "/api/core/v2/users", &gateway_bob, None)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = alpha
            .call(
                Method::PUT,
                "/api/core/v2/users/bob/password",
                &gateway_bob,
                Some(serde_json::json!({"password_new": "taken-over!"})),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn forged_tokens_are_refused() {
        let alpha = Fixture::new("alpha").await;
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        for issuer in ["gateway", "alpha"] {
            let forger = TokenIssuer::from_pem(
                Some(&other.serialize_pem()),
                &other.public_key_pem(),
                issuer,
            )
            .unwrap();
            let token = forger
                .issue("admin", &[GROUP_CLUSTER_ADMINS.to_owned()])
                .unwrap();
            let err = authenticate(&alpha.state, &bearer(&token.token)).unwrap_err();
            assert_eq!(err.status, StatusCode::UNAUTHORIZED, "{issuer}");
            assert_eq!(err.message, "invalid credentials");
        }
    }

    #[tokio::test]
    async fn refresh_only_takes_this_clusters_own_tokens() {
        let alpha = Fixture::new("alpha").await;
        let admin = alpha.state.auth.snapshot().caller("admin").unwrap();
        let Json(tokens) = issue_tokens(&alpha.state, &admin).await.unwrap();
        let refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
        let body =
            || Bytes::from(serde_json::json!({ "refresh_token": refresh_token }).to_string());

        let federated = alpha.token_from("gateway", "admin", &[GROUP_CLUSTER_ADMINS]);
        let err = auth_refresh(State(alpha.state.clone()), bearer(&federated), body())
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            err.message,
            "the access token was issued by cluster gateway: refresh it there"
        );
        // The refresh token was not spent by the refused attempt.
        let own = tokens["access_token"].as_str().unwrap();
        let Json(refreshed) = auth_refresh(State(alpha.state.clone()), bearer(own), body())
            .await
            .unwrap();
        assert!(refreshed["access_token"].is_string());
    }

    #[tokio::test]
    async fn unreachable_store_fails_health_and_writes_until_it_answers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut state, _sink) = tests::test_state(dir.path()).await;
        let store_health = crate::store::StoreHealth::detached();
        state.store_health = Arc::clone(&store_health);
        let health_of = |state: AppState| async move {
            let response = health(State(state)).await;
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            (status, body["ClusterHealth"][0].clone())
        };

        let (status, member) = health_of(state.clone()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(member["Healthy"], true);
        assert_eq!(member["Err"], "");
        assert!(write_refusal(&state, &Method::PUT).is_none());

        let reason = "etcd at http://10.0.0.1:2379 (prefix /cairn/) did not answer within 2s";
        store_health.record(crate::store::StoreStatus::Unreachable {
            reason: reason.to_owned(),
        });
        let (status, member) = health_of(state.clone()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(member["Healthy"], false);
        assert_eq!(member["Err"], reason);
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            let refusal = write_refusal(&state, &method).expect("a write is refused");
            let response = refusal.into_response();
            assert_eq!(
                response.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{method}"
            );
            assert!(response.headers().contains_key(header::RETRY_AFTER));
        }
        assert!(
            write_refusal(&state, &Method::GET).is_none(),
            "reads still try"
        );

        store_health.record(crate::store::StoreStatus::Reachable);
        let (status, _) = health_of(state.clone()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(write_refusal(&state, &Method::DELETE).is_none());
    }

    #[tokio::test]
    async fn expired_refresh_tokens_are_swept_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn crate::store::Store> =
            Arc::new(crate::store::RedbStore::open(dir.path().join("s.redb")).unwrap());
        let now = crate::clock::unix_now_u64();
        for (token, expires_at) in [("old", now - 1), ("live", now + 3600)] {
            let value = serde_json::to_vec(&serde_json::json!({
                "username": "admin",
                "expires_at": expires_at,
            }))
            .unwrap();
            store
                .put(&refresh_key(token), value, Precondition::Absent)
                .await
                .unwrap();
        }
        store
            .put(
                &format!("{}junk", keyspace::REFRESH_TOKENS),
                b"not json".to_vec(),
                Precondition::Absent,
            )
            .await
            .unwrap();
        let removed = crate::store::sweep::delete_expired(
            store.as_ref(),
            keyspace::REFRESH_TOKENS,
            now,
            refresh_expired,
        )
        .await
        .unwrap();
        assert_eq!(removed, 1);
        let left: Vec<String> = store
            .list(keyspace::REFRESH_TOKENS, None, 0)
            .await
            .unwrap()
            .entries
            .into_iter()
            .map(|entry| entry.key)
            .collect();
        assert_eq!(left.len(), 2);
        assert!(left.contains(&refresh_key("live")));
        assert!(!left.contains(&refresh_key("old")));
    }
}
