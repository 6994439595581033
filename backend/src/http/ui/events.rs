//! The events pages: every cluster's events merged (the landing page), one event's detail, and
//! the actions on it (resolve, silence, delete, re-run), each an API call as the user.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use serde_json::Value;

use super::{
    ago, check_form, encode_segment, format_time, open_page, output_preview, see_other,
    status_class, status_word, text_of, Chrome, Common, Page, REFUSED_FORM,
};
use crate::auth::rbac::Verb;
use crate::http::federation::{federated_rows, LocalRows, Row};
use crate::http::AppState;

/// Rows per page of the events list.
pub(crate) const PAGE_ROWS: usize = 50;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui/", get(events_page))
        .route("/ui/events", get(events_page))
        .route("/ui/events/rows", get(events_rows))
        .route(
            "/ui/events/{cluster}/{namespace}/{entity}/{check}",
            get(event_page),
        )
        .route(
            "/ui/events/{cluster}/{namespace}/{entity}/{check}/{action}",
            post(event_action),
        )
        .route("/ui/silences", post(create_silence))
}

// === the list ===

/// The events list's query: the common one and the filters.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct EventsQuery {
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    done: String,
    #[serde(default)]
    namespace: String,
    /// `ok`, `warning`, `critical`, `unknown`, `non-ok`, or empty for any.
    #[serde(default)]
    status: String,
    /// Free text, matched case-insensitively against cluster, namespace, entity, check and
    /// output.
    #[serde(default)]
    q: String,
    /// 1-based.
    #[serde(default)]
    page: usize,
}

/// The part of an event's wire form a list row shows: decoded without building a tree.
#[derive(Debug, Deserialize)]
struct EventWire {
    #[serde(default)]
    timestamp: i64,
    entity: EntityWire,
    check: CheckWire,
}

/// An event as the store holds it: the wrapped document, the event in its `spec`.
#[derive(Debug, Deserialize)]
struct StoredEvent {
    #[serde(default)]
    metadata: Option<MetaWire>,
    spec: EventWire,
}

impl StoredEvent {
    /// The event, its check's namespace filled from the document's when the stored form left
    /// it out.
    fn into_wire(self) -> EventWire {
        let mut wire = self.spec;
        if wire.check.metadata.namespace.is_empty() && wire.entity.metadata.namespace.is_empty() {
            if let Some(meta) = self.metadata {
                wire.check.metadata.namespace = meta.namespace;
            }
        }
        wire
    }
}

#[derive(Debug, Deserialize)]
struct EntityWire {
    metadata: MetaWire,
}

#[derive(Debug, Deserialize)]
struct CheckWire {
    metadata: MetaWire,
    #[serde(default)]
    status: u32,
    #[serde(default)]
    output: String,
    #[serde(default)]
    is_silenced: bool,
}

#[derive(Debug, Deserialize)]
struct MetaWire {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
}

/// One row of the events list.
#[derive(Debug, Clone)]
pub(crate) struct EventRow {
    pub(crate) cluster: String,
    pub(crate) namespace: String,
    pub(crate) entity: String,
    pub(crate) check: String,
    pub(crate) status: u32,
    pub(crate) timestamp: i64,
    pub(crate) output: String,
    pub(crate) silenced: bool,
}

impl EventRow {
    fn from_wire(cluster: &str, wire: EventWire) -> EventRow {
        let output = output_preview(&wire.check.output);
        let namespace = if wire.check.metadata.namespace.is_empty() {
            wire.entity.metadata.namespace
        } else {
            wire.check.metadata.namespace
        };
        EventRow {
            cluster: cluster.to_owned(),
            namespace,
            entity: wire.entity.metadata.name,
            check: wire.check.metadata.name,
            status: wire.check.status,
            timestamp: wire.timestamp,
            output,
            silenced: wire.check.is_silenced,
        }
    }

    pub(crate) fn word(&self) -> &'static str {
        status_word(self.status)
    }

    pub(crate) fn class(&self) -> &'static str {
        status_class(self.status)
    }

    pub(crate) fn last_seen(&self) -> String {
        format_time(self.timestamp)
    }

    pub(crate) fn ago(&self) -> String {
        ago(self.timestamp)
    }

    pub(crate) fn href(&self) -> String {
        event_href(&self.cluster, &self.namespace, &self.entity, &self.check)
    }

    /// Worst first: critical, warning, unknown, then OK.
    fn severity(&self) -> u8 {
        match self.status {
            2 => 0,
            1 => 1,
            0 => 3,
            _ => 2,
        }
    }

    fn matches(&self, query: &EventsQuery, needle: &str) -> bool {
        let status_ok = match query.status.as_str() {
            "" => true,
            "non-ok" => self.status != 0,
            word => status_class(self.status) == word,
        };
        let namespace_ok = query.namespace.is_empty() || self.namespace == query.namespace;
        let text_ok = needle.is_empty()
            || [
                &self.cluster,
                &self.namespace,
                &self.entity,
                &self.check,
                &self.output,
            ]
            .iter()
            .any(|field| field.to_lowercase().contains(needle));
        status_ok && namespace_ok && text_ok
    }
}

pub(crate) fn event_href(cluster: &str, namespace: &str, entity: &str, check: &str) -> String {
    format!(
        "/ui/events/{}/{}/{}/{}",
        encode_segment(cluster),
        encode_segment(namespace),
        encode_segment(entity),
        encode_segment(check)
    )
}

/// A cluster whose rows are missing, and why.
#[derive(Debug, Clone)]
pub(crate) struct ClusterProblem {
    pub(crate) cluster: String,
    pub(crate) message: String,
}

/// Every event the user may see on the clusters `only` names (all, for `None`), and the
/// clusters that could not be read.
pub(crate) async fn all_events(
    page: &Page<'_>,
    namespace: Option<String>,
    only: Option<&str>,
) -> Result<(Vec<EventRow>, Vec<ClusterProblem>), crate::http::ApiError> {
    let list = federated_rows(
        page.state,
        &page.session.caller,
        cairn_api::Kind::Event,
        namespace,
        only,
        LocalRows::Stored,
    )
    .await?;
    let mut rows = Vec::with_capacity(list.items.len());
    let mut problems: Vec<ClusterProblem> = list
        .errors
        .iter()
        .map(|failure| ClusterProblem {
            cluster: failure.cluster.clone(),
            message: failure.message.clone(),
        })
        .collect();
    for item in &list.items {
        let decoded = match &item.resource {
            Row::Local(value) => EventWire::deserialize(value).map_err(|err| err.to_string()),
            Row::Relayed(raw) => serde_json::from_str(raw.get()).map_err(|err| err.to_string()),
            Row::Stored(bytes) => serde_json::from_slice::<StoredEvent>(bytes)
                .map(StoredEvent::into_wire)
                .map_err(|err| err.to_string()),
        };
        match decoded {
            Ok(wire) => rows.push(EventRow::from_wire(&item.cluster, wire)),
            Err(err) => {
                if !problems
                    .iter()
                    .any(|problem| *problem.cluster == *item.cluster)
                {
                    problems.push(ClusterProblem {
                        cluster: item.cluster.to_string(),
                        message: format!("an event is not what it should be: {err}"),
                    });
                }
            }
        }
    }
    Ok((rows, problems))
}

#[derive(Template)]
#[template(path = "events.html")]
struct EventsPage {
    chrome: Chrome,
    body: EventsBody,
    namespace: String,
    status: String,
    q: String,
    namespaces: Vec<String>,
}

/// The table's body: what the refresh fetches again.
#[derive(Template)]
#[template(path = "events_rows.html")]
struct EventsBody {
    rows: Vec<EventRow>,
    total: usize,
    shown_from: usize,
    shown_to: usize,
    page: usize,
    prev: Option<String>,
    next: Option<String>,
    refresh: String,
    problems: Vec<ClusterProblem>,
}

async fn events_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    render_events(&state, &headers, &uri, query.map(|q| q.0), false).await
}

async fn events_rows(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    render_events(&state, &headers, &uri, query.map(|q| q.0), true).await
}

async fn render_events(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    query: Result<EventsQuery, axum::extract::rejection::QueryRejection>,
    rows_only: bool,
) -> Response {
    let started = std::time::Instant::now();
    let common = match &query {
        Ok(query) => Common {
            cluster: query.cluster.clone(),
            done: query.done.clone(),
        },
        Err(_) => Common::default(),
    };
    let page = match open_page(state, headers, uri, "events", "Events", &common).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    let query = match query {
        Ok(query) => query,
        Err(err) => {
            return page.error(
                StatusCode::BAD_REQUEST,
                &format!("the filters are not understood: {}", err.body_text()),
            )
        }
    };
    let namespace = Some(query.namespace.clone()).filter(|ns| !ns.is_empty());
    let only = Some(page.chrome.cluster.as_str()).filter(|name| !name.is_empty());
    let (mut rows, problems) =
        match tokio::time::timeout(super::PAGE_TIMEOUT, all_events(&page, namespace, only)).await {
            Ok(Ok(found)) => found,
            Ok(Err(err)) => return page.error(err.status, &err.message),
            Err(_) => {
                return page.error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the events could not be read in time",
                )
            }
        };
    let mut namespaces: Vec<String> = rows.iter().map(|row| row.namespace.clone()).collect();
    namespaces.sort();
    namespaces.dedup();
    let needle = query.q.trim().to_lowercase();
    rows.retain(|row| row.matches(&query, &needle));
    rows.sort_by(|a, b| {
        a.severity()
            .cmp(&b.severity())
            .then(b.timestamp.cmp(&a.timestamp))
            .then_with(|| a.cluster.cmp(&b.cluster))
            .then_with(|| a.namespace.cmp(&b.namespace))
            .then_with(|| a.entity.cmp(&b.entity))
            .then_with(|| a.check.cmp(&b.check))
    });
    let total = rows.len();
    let pages = total.div_ceil(PAGE_ROWS).max(1);
    let number = query.page.clamp(1, pages);
    let from = (number - 1) * PAGE_ROWS;
    let shown: Vec<EventRow> = rows.into_iter().skip(from).take(PAGE_ROWS).collect();
    let link = |to: usize, rows: bool| {
        let mut out = format!("/ui/events{}?page={to}", if rows { "/rows" } else { "" });
        for (name, value) in [
            ("cluster", page.chrome.cluster.as_str()),
            ("namespace", query.namespace.as_str()),
            ("status", query.status.as_str()),
            ("q", query.q.as_str()),
        ] {
            if !value.is_empty() {
                out.push_str(&format!("&{name}={}", encode_segment(value)));
            }
        }
        out
    };
    let body = EventsBody {
        total,
        shown_from: if total == 0 { 0 } else { from + 1 },
        shown_to: from + shown.len(),
        rows: shown,
        page: number,
        prev: (number > 1).then(|| link(number - 1, false)),
        next: (number < pages).then(|| link(number + 1, false)),
        refresh: link(number, true),
        problems,
    };
    let mut response = if rows_only {
        page.render(StatusCode::OK, &body)
    } else {
        let events = EventsPage {
            chrome: page.chrome.clone(),
            body,
            namespace: query.namespace,
            status: query.status,
            q: query.q,
            namespaces,
        };
        page.render(StatusCode::OK, &events)
    };
    // How long the server took (session, every cluster's events, filtering, rendering), for
    // the browser's developer tools and the UI bench.
    if let Ok(timing) = axum::http::HeaderValue::from_str(&format!(
        "page;dur={:.1}",
        started.elapsed().as_secs_f64() * 1000.0
    )) {
        response.headers_mut().insert("server-timing", timing);
    }
    response
}

// === one event ===

#[derive(Template)]
#[template(path = "event.html")]
struct EventPage {
    chrome: Chrome,
    cluster: String,
    namespace: String,
    entity: String,
    check: String,
    status: u32,
    output: String,
    /// Each entry's CSS class and tooltip, oldest first.
    history: Vec<(&'static str, String)>,
    last_seen: String,
    occurrences: u64,
    command: String,
    interval: String,
    subscriptions: String,
    handlers: String,
    silenced_by: String,
    entity_class: String,
    entity_os: String,
    entity_subscriptions: String,
    href: String,
    entity_href: String,
    may_resolve: bool,
    may_silence: bool,
    may_delete: bool,
    may_rerun: bool,
}

impl EventPage {
    fn word(&self) -> &'static str {
        status_word(self.status)
    }

    fn class(&self) -> &'static str {
        status_class(self.status)
    }
}

/// The API path of one event.
fn event_path(namespace: &str, entity: &str, check: &str) -> String {
    format!(
        "/api/core/v2/namespaces/{}/events/{}/{}",
        encode_segment(namespace),
        encode_segment(entity),
        encode_segment(check)
    )
}

async fn event_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path((cluster, namespace, entity, check)): Path<(String, String, String, String)>,
    query: Result<Query<Common>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let mut common = query.map(|q| q.0).unwrap_or_default();
    common.cluster = cluster.clone();
    let mut page = match open_page(&state, &headers, &uri, "events", "Event", &common).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    // The switcher leads to the list of the cluster chosen.
    page.chrome.path = "/ui/events".to_owned();
    let page = match page.of_cluster(&cluster) {
        Ok(page) => page,
        Err(response) => return response,
    };
    let event: Value = match page
        .api()
        .get(&cluster, &event_path(&namespace, &entity, &check))
        .await
    {
        Ok(event) => event,
        Err(err) => return page.error(err.status, &err.message),
    };
    let check_doc = &event["check"];
    let entity_doc = &event["entity"];
    let history = check_doc["history"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|entry| {
                    let status = u32::try_from(entry["status"].as_u64().unwrap_or(3)).unwrap_or(3);
                    (
                        status_class(status),
                        format!(
                            "{} at {}",
                            status_word(status),
                            format_time(entry["executed"].as_i64().unwrap_or(0))
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let status = u32::try_from(check_doc["status"].as_u64().unwrap_or(3)).unwrap_or(3);
    let ns = Some(namespace.as_str());
    let detail = EventPage {
        chrome: page.chrome.clone(),
        href: event_href(&cluster, &namespace, &entity, &check),
        entity_href: format!(
            "/ui/entities/{}/{}/{}",
            encode_segment(&cluster),
            encode_segment(&namespace),
            encode_segment(&entity)
        ),
        cluster,
        namespace: namespace.clone(),
        entity,
        check,
        status,
        output: text_of(&check_doc["output"]),
        history,
        last_seen: format!(
            "{} ({})",
            format_time(event["timestamp"].as_i64().unwrap_or(0)),
            ago(event["timestamp"].as_i64().unwrap_or(0))
        ),
        occurrences: check_doc["occurrences"].as_u64().unwrap_or(0),
        command: text_of(&check_doc["command"]),
        interval: match check_doc["cron"].as_str().filter(|cron| !cron.is_empty()) {
            Some(cron) => format!("cron {cron}"),
            None => format!("every {}s", check_doc["interval"].as_u64().unwrap_or(0)),
        },
        subscriptions: text_of(&check_doc["subscriptions"]),
        handlers: text_of(&check_doc["handlers"]),
        silenced_by: text_of(&check_doc["silenced"]),
        entity_class: text_of(&entity_doc["entity_class"]),
        entity_os: text_of(&entity_doc["system"]["os"]),
        entity_subscriptions: text_of(&entity_doc["subscriptions"]),
        may_resolve: page.may(Verb::Update, "events", ns),
        may_silence: page.may(Verb::Create, "silenced", ns),
        may_delete: page.may(Verb::Delete, "events", ns),
        may_rerun: page.may(Verb::Create, "checks", ns),
    };
    page.render(StatusCode::OK, &detail)
}

// === actions ===

#[derive(Debug, Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
}

async fn event_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path((cluster, namespace, entity, check, action)): Path<(
        String,
        String,
        String,
        String,
        String,
    )>,
    form: Result<Form<ActionForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let csrf = form.map(|Form(form)| form.csrf).unwrap_or_default();
    let common = Common {
        cluster: cluster.clone(),
        done: String::new(),
    };
    let page = match open_page(&state, &headers, &uri, "events", "Event", &common).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    if !check_form(&page, &headers, &uri, &csrf) {
        return page.error(StatusCode::FORBIDDEN, REFUSED_FORM);
    }
    let page = match page.of_cluster(&cluster) {
        Ok(page) => page,
        Err(response) => return response,
    };
    let api = page.api();
    let path = event_path(&namespace, &entity, &check);
    let detail = event_href(&cluster, &namespace, &entity, &check);
    let user = page.session.caller.username.clone();
    let outcome = match action.as_str() {
        "resolve" => resolve(&api, &cluster, &path, &user)
            .await
            .map(|()| format!("{detail}?done=resolved")),
        "delete" => api
            .call(&cluster, Method::DELETE, &path, None)
            .await
            .map(|_| {
                format!(
                    "/ui/events?done=deleted&cluster={}",
                    encode_segment(&cluster)
                )
            }),
        "rerun" => {
            let body = serde_json::json!({
                "check": check,
                "subscriptions": [format!("entity:{entity}")],
                "reason": format!("re-run from the web UI by {user}"),
            });
            let execute = format!(
                "/api/core/v2/namespaces/{}/checks/{}/execute",
                encode_segment(&namespace),
                encode_segment(&check)
            );
            api.call(&cluster, Method::POST, &execute, Some(&body))
                .await
                .map(|_| format!("{detail}?done=rerun"))
        }
        _ => return page.error(StatusCode::NOT_FOUND, &format!("no action {action}")),
    };
    match outcome {
        Ok(location) => {
            tracing::info!(%user, %cluster, %namespace, %entity, %check, %action, "web UI event action");
            see_other(&location, page.session.set_cookie.clone())
        }
        Err(err) => page.error(err.status, &err.message),
    }
}

/// Resolves an event as `sensuctl event resolve` does: the stored event again, with status 0
/// and a note of who resolved it, sent through the events API (so history and handlers see it).
async fn resolve(
    api: &super::api::Api<'_>,
    cluster: &str,
    path: &str,
    user: &str,
) -> Result<(), super::api::CallError> {
    let mut event: Value = api.get(cluster, path).await?;
    let now = crate::clock::unix_now();
    event["check"]["status"] = Value::from(0);
    event["check"]["output"] = Value::from(format!("Resolved manually by {user} (web UI)"));
    event["check"]["executed"] = Value::from(now);
    event["timestamp"] = Value::from(now);
    api.call(cluster, Method::PUT, path, Some(&event)).await?;
    Ok(())
}

#[derive(Debug, Deserialize)]
struct SilenceForm {
    #[serde(default)]
    csrf: String,
    cluster: String,
    namespace: String,
    #[serde(default)]
    subscription: String,
    #[serde(default)]
    check: String,
    /// Seconds; empty for no expiry.
    #[serde(default)]
    expire: String,
    #[serde(default)]
    reason: String,
    /// Where to go back to (a UI path), else the silences page.
    #[serde(default)]
    back: String,
}

async fn create_silence(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<SilenceForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = form.map(|Form(form)| form);
    let csrf = form
        .as_ref()
        .map(|form| form.csrf.clone())
        .unwrap_or_default();
    let cluster = form
        .as_ref()
        .map(|form| form.cluster.clone())
        .unwrap_or_default();
    let common = Common {
        cluster,
        done: String::new(),
    };
    let page = match open_page(&state, &headers, &uri, "silences", "Silences", &common).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    if !check_form(&page, &headers, &uri, &csrf) {
        return page.error(StatusCode::FORBIDDEN, REFUSED_FORM);
    }
    let form = match form {
        Ok(form) => form,
        Err(err) => return page.error(StatusCode::BAD_REQUEST, &err.body_text()),
    };
    if page.chrome.cluster != form.cluster {
        return page.error(
            StatusCode::BAD_REQUEST,
            &format!("cluster {}: not a cluster of this gateway", form.cluster),
        );
    }
    let expire = match form.expire.trim() {
        "" => -1,
        text => match text.parse::<i64>() {
            Ok(seconds) if seconds > 0 => seconds,
            _ => {
                return page.error(
                    StatusCode::BAD_REQUEST,
                    &format!("expire: {text:?} is not a number of seconds above 0 (leave it empty for no expiry)"),
                )
            }
        },
    };
    let subscription = form.subscription.trim();
    let check = form.check.trim();
    if subscription.is_empty() && check.is_empty() {
        return page.error(
            StatusCode::BAD_REQUEST,
            "a silence needs a subscription (such as entity:NAME), a check, or both",
        );
    }
    let name = format!(
        "{}:{}",
        if subscription.is_empty() {
            "*"
        } else {
            subscription
        },
        if check.is_empty() { "*" } else { check }
    );
    let mut spec = serde_json::json!({
        "metadata": {"name": name, "namespace": form.namespace},
        "expire": expire,
        "expire_on_resolve": false,
        "creator": page.session.caller.username,
        "reason": form.reason.trim(),
    });
    if !subscription.is_empty() {
        spec["subscription"] = Value::from(subscription);
    }
    if !check.is_empty() {
        spec["check"] = Value::from(check);
    }
    let path = format!(
        "/api/core/v2/namespaces/{}/silenced",
        encode_segment(&form.namespace)
    );
    match page
        .api()
        .call(&form.cluster, Method::POST, &path, Some(&spec))
        .await
    {
        Ok(_) => {
            tracing::info!(user = %page.session.caller.username, cluster = %form.cluster, namespace = %form.namespace, silence = %name, "web UI silence created");
            let back = super::safe_next(&form.back);
            let back = if back.is_empty() {
                format!("/ui/silences?cluster={}", encode_segment(&form.cluster))
            } else {
                back
            };
            let joiner = if back.contains('?') { '&' } else { '?' };
            see_other(
                &format!("{back}{joiner}done=silenced"),
                page.session.set_cookie.clone(),
            )
        }
        Err(err) => page.error(err.status, &err.message),
    }
}
