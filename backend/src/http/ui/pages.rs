//! The other pages: clusters, entities, checks, handlers, silences, namespaces, GitOps syncs
//! and replicators, each a list over the clusters shown (one, or all), read through the API as
//! the user.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use serde_json::Value;

use super::events::{all_events, ClusterProblem, EventRow};
use super::{
    ago, check_form, encode_segment, format_time, open_page, output_preview, see_other, text_of,
    Chrome, Common, Page, REFUSED_FORM,
};
use crate::auth::rbac::Verb;
use crate::http::federation::{cluster_healths, federated_rows, LocalRows, Row};
use crate::http::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui/clusters", get(clusters_page))
        .route("/ui/entities", get(entities_page))
        .route(
            "/ui/entities/{cluster}/{namespace}/{name}",
            get(entity_page),
        )
        .route(
            "/ui/entities/{cluster}/{namespace}/{name}/delete",
            post(delete_entity),
        )
        .route("/ui/checks", get(checks_page))
        .route("/ui/handlers", get(handlers_page))
        .route("/ui/silences", get(silences_page))
        .route(
            "/ui/silences/{cluster}/{namespace}/{name}/delete",
            post(delete_silence),
        )
        .route("/ui/namespaces", get(namespaces_page))
        .route("/ui/gitops", get(gitops_page))
        .route("/ui/replicators", get(replicators_page))
}

/// One cell of a table: text, and a link when it leads somewhere.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cell {
    pub(crate) text: String,
    pub(crate) href: String,
    /// A CSS class (a status colour, `git` for a resource managed from Git).
    pub(crate) class: String,
    /// A tooltip.
    pub(crate) title: String,
}

impl Cell {
    fn text(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            ..Cell::default()
        }
    }

    fn link(text: impl Into<String>, href: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            href: href.into(),
            ..Cell::default()
        }
    }

    fn class(mut self, class: impl Into<String>) -> Cell {
        self.class = class.into();
        self
    }

    fn title(mut self, title: impl Into<String>) -> Cell {
        self.title = title.into();
        self
    }
}

/// A row: its cells, and the cluster it belongs to.
#[derive(Debug, Clone)]
pub(crate) struct TableRow {
    pub(crate) cluster: String,
    pub(crate) cells: Vec<Cell>,
    /// The delete form's action, when the user may delete the row's resource.
    pub(crate) delete: String,
}

#[derive(Template)]
#[template(path = "table.html")]
struct TablePage {
    chrome: Chrome,
    heading: String,
    intro: String,
    table_id: String,
    columns: Vec<&'static str>,
    rows: Vec<TableRow>,
    problems: Vec<ClusterProblem>,
    empty: String,
}

/// The `name` cell of a resource, marked when it is managed from Git: the next sync reverts
/// an edit made anywhere else.
fn name_cell(resource: &Value) -> Cell {
    let meta = &resource["metadata"];
    let name = text_of(&meta["name"]);
    let managed = meta["labels"]["cairn.io/managed-by"].as_str();
    match managed {
        Some(owner) => {
            let source = meta["annotations"]["cairn.io/source"]
                .as_str()
                .or_else(|| meta["labels"]["cairn.io/source"].as_str())
                .unwrap_or("");
            let cell = match source_link(source) {
                Some(href) => Cell::link(name, href),
                None => Cell::text(name),
            };
            cell.class("git").title(format!(
                "managed from Git by {owner}{}: an edit made here is reverted by the next sync",
                if source.is_empty() {
                    String::new()
                } else {
                    format!(" ({source})")
                }
            ))
        }
        None => Cell::text(name),
    }
}

/// Lists `path` (all namespaces) on every shown cluster as the user: the rows, and the
/// clusters that failed.
async fn list_everywhere(
    page: &Page<'_>,
    path: &str,
) -> (Vec<(String, Value)>, Vec<ClusterProblem>) {
    let api = page.api();
    let clusters = page.shown_clusters();
    let lists = futures::future::join_all(clusters.iter().map(|cluster| {
        let api = &api;
        async move {
            let listed =
                tokio::time::timeout(super::PAGE_TIMEOUT, api.list::<Value>(cluster, path))
                    .await
                    .unwrap_or_else(|_| {
                        Err(super::api::CallError::new(
                            StatusCode::GATEWAY_TIMEOUT,
                            "no answer in time",
                        ))
                    });
            (cluster.clone(), listed)
        }
    }))
    .await;
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for (cluster, listed) in lists {
        match listed {
            Ok(items) => rows.extend(items.into_iter().map(|item| (cluster.clone(), item))),
            Err(err) => problems.push(ClusterProblem {
                cluster,
                message: err.message,
            }),
        }
    }
    (rows, problems)
}

fn namespace_of(resource: &Value) -> String {
    text_of(&resource["metadata"]["namespace"])
}

// === clusters ===

#[derive(Debug, Clone)]
struct ClusterRow {
    name: String,
    healthy: bool,
    version: String,
    latency: String,
    error: String,
    gateway: bool,
    counts: [usize; 4],
}

#[derive(Template)]
#[template(path = "clusters.html")]
struct ClustersPage {
    chrome: Chrome,
    rows: Vec<ClusterRow>,
    problems: Vec<ClusterProblem>,
}

async fn clusters_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<Common>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let common = query.map(|q| q.0).unwrap_or_default();
    let page = match open_page(&state, &headers, &uri, "clusters", "Clusters", &common).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    if !page.may(Verb::List, cairn_api::Kind::Cluster.plural(), None) {
        let message = format!(
            "user {} may not list clusters",
            page.session.caller.username
        );
        return page.error(StatusCode::FORBIDDEN, &message);
    }
    let healths = cluster_healths(&state);
    let events = all_events(&page, None, None);
    let (healths, events) = tokio::join!(healths, events);
    let healths = match healths {
        Ok(healths) => healths,
        Err(err) => return page.error(err.status, &err.message),
    };
    let (events, problems) = events.unwrap_or_else(|err| {
        (
            Vec::new(),
            vec![ClusterProblem {
                cluster: String::new(),
                message: format!("events: {}", err.message),
            }],
        )
    });
    let count = |cluster: &str| {
        let mut counts = [0usize; 4];
        for row in events.iter().filter(|row| row.cluster == cluster) {
            counts[match row.status {
                0 => 0,
                1 => 1,
                2 => 2,
                _ => 3,
            }] += 1;
        }
        counts
    };
    let local = state.issuer.issuer().to_owned();
    let store_problem = state.store_health.unreachable();
    let mut rows = vec![ClusterRow {
        counts: count(&local),
        name: local,
        healthy: store_problem.is_none(),
        version: format!("cairn {}", env!("CARGO_PKG_VERSION")),
        latency: "-".to_owned(),
        error: store_problem.unwrap_or_default(),
        gateway: true,
    }];
    for health in healths {
        rows.push(ClusterRow {
            counts: count(&health.name),
            version: health
                .version
                .as_ref()
                .and_then(|version| {
                    version["cairn_backend"]
                        .as_str()
                        .map(|v| format!("cairn {v}"))
                        .or_else(|| {
                            version["sensu_backend"]
                                .as_str()
                                .map(|v| format!("sensu {v}"))
                        })
                })
                .unwrap_or_else(|| "-".to_owned()),
            latency: health
                .latency_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms")),
            error: health.error.unwrap_or_default(),
            healthy: health.healthy,
            name: health.name,
            gateway: false,
        });
    }
    let clusters = ClustersPage {
        chrome: page.chrome.clone(),
        rows,
        problems,
    };
    page.render(StatusCode::OK, &clusters)
}

// === entities ===

async fn entities_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<Common>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let common = query.map(|q| q.0).unwrap_or_default();
    let page = match open_page(&state, &headers, &uri, "entities", "Entities", &common).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    let only = Some(page.chrome.cluster.as_str()).filter(|name| !name.is_empty());
    let entities = federated_rows(
        &state,
        &page.session.caller,
        cairn_api::Kind::Entity,
        None,
        only,
        LocalRows::Wire,
    );
    // Each entity's keepalive status is its keepalive event's.
    let events = all_events(&page, None, only);
    let (list, events) = tokio::join!(entities, events);
    let list = match list {
        Ok(list) => list,
        Err(err) => return page.error(err.status, &err.message),
    };
    let keepalives: std::collections::HashMap<(String, String, String), u32> = events
        .map(|(rows, _)| rows)
        .unwrap_or_default()
        .into_iter()
        .filter(|row| row.check == "keepalive")
        .map(|row| ((row.cluster, row.namespace, row.entity), row.status))
        .collect();
    let problems = list
        .errors
        .iter()
        .map(|failure| ClusterProblem {
            cluster: failure.cluster.clone(),
            message: failure.message.clone(),
        })
        .collect();
    let mut rows = Vec::new();
    for item in &list.items {
        let entity: Value = match &item.resource {
            Row::Local(value) => value.clone(),
            // Asked for in the wire form.
            Row::Stored(_) => continue,
            Row::Relayed(raw) => match serde_json::from_str(raw.get()) {
                Ok(value) => value,
                Err(_) => continue,
            },
        };
        let namespace = namespace_of(&entity);
        let name = text_of(&entity["metadata"]["name"]);
        let last_seen = entity["last_seen"].as_i64().unwrap_or(0);
        rows.push(TableRow {
            cluster: item.cluster.to_string(),
            delete: String::new(),
            cells: vec![
                Cell::text(item.cluster.to_string()),
                Cell::text(namespace.clone()),
                Cell::link(
                    name.clone(),
                    format!(
                        "/ui/entities/{}/{}/{}",
                        encode_segment(&item.cluster),
                        encode_segment(&namespace),
                        encode_segment(&name)
                    ),
                ),
                Cell::text(text_of(&entity["entity_class"])),
                Cell::text(text_of(&entity["system"]["os"])),
                Cell::text(text_of(&entity["subscriptions"])),
                Cell::text(format!("{} {}", format_time(last_seen), ago(last_seen))),
                match keepalives.get(&(item.cluster.to_string(), namespace.clone(), name.clone())) {
                    Some(status) => {
                        Cell::text(super::status_word(*status)).class(super::status_class(*status))
                    }
                    None => Cell::text("-").title("no keepalive event (a proxy entity)"),
                },
            ],
        });
    }
    rows.sort_by(|a, b| {
        (&a.cluster, &a.cells[1].text, &a.cells[2].text).cmp(&(
            &b.cluster,
            &b.cells[1].text,
            &b.cells[2].text,
        ))
    });
    let table = TablePage {
        chrome: page.chrome.clone(),
        heading: "Entities".to_owned(),
        intro: "Every entity the clusters shown hold, agents and proxies.".to_owned(),
        table_id: "entities".to_owned(),
        columns: vec![
            "Cluster",
            "Namespace",
            "Name",
            "Class",
            "OS",
            "Subscriptions",
            "Last seen",
            "Keepalive",
        ],
        rows,
        problems,
        empty: "No entities.".to_owned(),
    };
    page.render(StatusCode::OK, &table)
}

#[derive(Template)]
#[template(path = "entity.html")]
struct EntityPage {
    chrome: Chrome,
    cluster: String,
    namespace: String,
    name: String,
    class: String,
    os: String,
    platform: String,
    hostname: String,
    subscriptions: String,
    last_seen: String,
    keepalive: String,
    keepalive_class: String,
    events: Vec<EventRow>,
    delete: String,
    silence: bool,
}

async fn entity_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path((cluster, namespace, name)): Path<(String, String, String)>,
    query: Result<Query<Common>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let mut common = query.map(|q| q.0).unwrap_or_default();
    common.cluster = cluster.clone();
    let mut page = match open_page(&state, &headers, &uri, "entities", "Entity", &common).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    page.chrome.path = "/ui/entities".to_owned();
    let page = match page.of_cluster(&cluster) {
        Ok(page) => page,
        Err(response) => return response,
    };
    let api = page.api();
    let entity_path = format!(
        "/api/core/v2/namespaces/{}/entities/{}",
        encode_segment(&namespace),
        encode_segment(&name)
    );
    let events_path = format!(
        "/api/core/v2/namespaces/{}/events/{}",
        encode_segment(&namespace),
        encode_segment(&name)
    );
    let (entity, events) = tokio::join!(
        api.get::<Value>(&cluster, &entity_path),
        api.get::<Vec<Value>>(&cluster, &events_path)
    );
    let entity = match entity {
        Ok(entity) => entity,
        Err(err) => return page.error(err.status, &err.message),
    };
    let mut rows: Vec<EventRow> = events
        .unwrap_or_default()
        .iter()
        .map(|event| EventRow {
            cluster: cluster.clone(),
            namespace: namespace.clone(),
            entity: name.clone(),
            check: text_of(&event["check"]["metadata"]["name"]),
            status: u32::try_from(event["check"]["status"].as_u64().unwrap_or(3)).unwrap_or(3),
            timestamp: event["timestamp"].as_i64().unwrap_or(0),
            output: output_preview(&text_of(&event["check"]["output"])),
            silenced: event["check"]["is_silenced"].as_bool().unwrap_or(false),
        })
        .collect();
    rows.sort_by(|a, b| a.check.cmp(&b.check));
    let keepalive = rows.iter().find(|row| row.check == "keepalive");
    let (keepalive_word, keepalive_class) = match keepalive {
        Some(row) => (row.word().to_owned(), row.class().to_owned()),
        None => ("no keepalive".to_owned(), "unknown".to_owned()),
    };
    let last_seen = entity["last_seen"].as_i64().unwrap_or(0);
    let ns = Some(namespace.as_str());
    let detail = EntityPage {
        chrome: page.chrome.clone(),
        class: text_of(&entity["entity_class"]),
        os: text_of(&entity["system"]["os"]),
        platform: text_of(&entity["system"]["platform"]),
        hostname: text_of(&entity["system"]["hostname"]),
        subscriptions: text_of(&entity["subscriptions"]),
        last_seen: format!("{} {}", format_time(last_seen), ago(last_seen)),
        keepalive: keepalive_word,
        keepalive_class,
        events: rows,
        delete: if page.may(Verb::Delete, "entities", ns) {
            format!(
                "/ui/entities/{}/{}/{}/delete",
                encode_segment(&cluster),
                encode_segment(&namespace),
                encode_segment(&name)
            )
        } else {
            String::new()
        },
        silence: page.may(Verb::Create, "silenced", ns),
        cluster,
        namespace,
        name,
    };
    page.render(StatusCode::OK, &detail)
}

#[derive(Debug, Deserialize)]
struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

async fn delete_entity(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path((cluster, namespace, name)): Path<(String, String, String)>,
    form: Result<Form<CsrfOnly>, axum::extract::rejection::FormRejection>,
) -> Response {
    let path = format!(
        "/api/core/v2/namespaces/{}/entities/{}",
        encode_segment(&namespace),
        encode_segment(&name)
    );
    let back = format!(
        "/ui/entities?cluster={}&done=entity-deleted",
        encode_segment(&cluster)
    );
    delete_action(&state, &headers, &uri, &cluster, &path, &back, form).await
}

async fn delete_silence(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path((cluster, namespace, name)): Path<(String, String, String)>,
    form: Result<Form<CsrfOnly>, axum::extract::rejection::FormRejection>,
) -> Response {
    let path = format!(
        "/api/core/v2/namespaces/{}/silenced/{}",
        encode_segment(&namespace),
        encode_segment(&name)
    );
    let back = format!(
        "/ui/silences?cluster={}&done=unsilenced",
        encode_segment(&cluster)
    );
    delete_action(&state, &headers, &uri, &cluster, &path, &back, form).await
}

/// A delete form's post: checked, then `DELETE path` on `cluster` as the user.
async fn delete_action(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    cluster: &str,
    path: &str,
    back: &str,
    form: Result<Form<CsrfOnly>, axum::extract::rejection::FormRejection>,
) -> Response {
    let csrf = form.map(|Form(form)| form.csrf).unwrap_or_default();
    let common = Common {
        cluster: cluster.to_owned(),
        done: String::new(),
    };
    let page = match open_page(state, headers, uri, "", "Delete", &common).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    if !check_form(&page, headers, uri, &csrf) {
        return page.error(StatusCode::FORBIDDEN, REFUSED_FORM);
    }
    let page = match page.of_cluster(cluster) {
        Ok(page) => page,
        Err(response) => return response,
    };
    match page.api().call(cluster, Method::DELETE, path, None).await {
        Ok(_) => {
            tracing::info!(user = %page.session.caller.username, %cluster, %path, "web UI delete");
            see_other(back, page.session.set_cookie.clone())
        }
        Err(err) => page.error(err.status, &err.message),
    }
}

// === checks, handlers, namespaces ===

async fn checks_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<Common>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let common = query.map(|q| q.0).unwrap_or_default();
    let page = match open_page(&state, &headers, &uri, "checks", "Checks", &common).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    let (items, problems) = list_everywhere(&page, "/api/core/v2/checks").await;
    let rows = items
        .iter()
        .map(|(cluster, check)| TableRow {
            cluster: cluster.clone(),
            delete: String::new(),
            cells: vec![
                Cell::text(cluster.clone()),
                Cell::text(namespace_of(check)),
                name_cell(check),
                Cell::text(text_of(&check["command"])),
                Cell::text(
                    match check["cron"].as_str().filter(|cron| !cron.is_empty()) {
                        Some(cron) => format!("cron {cron}"),
                        None => format!("{}s", check["interval"].as_u64().unwrap_or(0)),
                    },
                ),
                Cell::text(text_of(&check["subscriptions"])),
                Cell::text(text_of(&check["handlers"])),
                Cell::text(if check["publish"].as_bool().unwrap_or(false) {
                    "yes"
                } else {
                    "no"
                }),
            ],
        })
        .collect();
    let table = TablePage {
        chrome: page.chrome.clone(),
        heading: "Checks".to_owned(),
        intro: "Check definitions. Those marked Git are managed by a reconciler: change them in their repository.".to_owned(),
        table_id: "checks".to_owned(),
        columns: vec!["Cluster", "Namespace", "Name", "Command", "Schedule", "Subscriptions", "Handlers", "Published"],
        rows,
        problems,
        empty: "No checks.".to_owned(),
    };
    page.render(StatusCode::OK, &table)
}

async fn handlers_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<Common>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let common = query.map(|q| q.0).unwrap_or_default();
    let page = match open_page(&state, &headers, &uri, "handlers", "Handlers", &common).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    let (items, problems) = list_everywhere(&page, "/api/core/v2/handlers").await;
    let rows = items
        .iter()
        .map(|(cluster, handler)| {
            let kind = text_of(&handler["type"]);
            let target = match kind.as_str() {
                "pipe" => text_of(&handler["command"]),
                "set" => text_of(&handler["handlers"]),
                _ => format!(
                    "{}:{}",
                    text_of(&handler["socket"]["host"]),
                    text_of(&handler["socket"]["port"])
                ),
            };
            TableRow {
                cluster: cluster.clone(),
                delete: String::new(),
                cells: vec![
                    Cell::text(cluster.clone()),
                    Cell::text(namespace_of(handler)),
                    name_cell(handler),
                    Cell::text(kind),
                    Cell::text(target),
                    Cell::text(text_of(&handler["filters"])),
                    Cell::text(format!("{}s", handler["timeout"].as_u64().unwrap_or(0))),
                ],
            }
        })
        .collect();
    let table = TablePage {
        chrome: page.chrome.clone(),
        heading: "Handlers".to_owned(),
        intro: "Where events go. Those marked Git are managed by a reconciler.".to_owned(),
        table_id: "handlers".to_owned(),
        columns: vec![
            "Cluster",
            "Namespace",
            "Name",
            "Type",
            "Command / target",
            "Filters",
            "Timeout",
        ],
        rows,
        problems,
        empty: "No handlers.".to_owned(),
    };
    page.render(StatusCode::OK, &table)
}

async fn namespaces_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<Common>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let common = query.map(|q| q.0).unwrap_or_default();
    let page = match open_page(&state, &headers, &uri, "namespaces", "Namespaces", &common).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    let (items, problems) = list_everywhere(&page, "/api/core/v2/namespaces").await;
    let rows = items
        .iter()
        .map(|(cluster, namespace)| {
            let name = text_of(&namespace["name"]);
            TableRow {
                cluster: cluster.clone(),
                delete: String::new(),
                cells: vec![
                    Cell::text(cluster.clone()),
                    Cell::link(
                        name.clone(),
                        format!(
                            "/ui/events?cluster={}&namespace={}",
                            encode_segment(cluster),
                            encode_segment(&name)
                        ),
                    ),
                ],
            }
        })
        .collect();
    let table = TablePage {
        chrome: page.chrome.clone(),
        heading: "Namespaces".to_owned(),
        intro: "The namespaces you can reach on each cluster.".to_owned(),
        table_id: "namespaces".to_owned(),
        columns: vec!["Cluster", "Namespace"],
        rows,
        problems,
        empty: "No namespaces.".to_owned(),
    };
    page.render(StatusCode::OK, &table)
}

// === silences ===

#[derive(Template)]
#[template(path = "silences.html")]
struct SilencesPage {
    chrome: Chrome,
    rows: Vec<TableRow>,
    problems: Vec<ClusterProblem>,
    /// Clusters where a silence may be created (the form's choice).
    may_create: bool,
    form_cluster: String,
}

async fn silences_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<Common>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let common = query.map(|q| q.0).unwrap_or_default();
    let page = match open_page(&state, &headers, &uri, "silences", "Silences", &common).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    let (items, problems) = list_everywhere(&page, "/api/core/v2/silenced").await;
    let rows = items
        .iter()
        .map(|(cluster, silence)| {
            let namespace = namespace_of(silence);
            let name = text_of(&silence["metadata"]["name"]);
            let expire = silence["expire"].as_i64().unwrap_or(-1);
            let begin = silence["begin"].as_i64().unwrap_or(0);
            let expires = if expire > 0 {
                format_time(begin + expire)
            } else {
                "never".to_owned()
            };
            TableRow {
                cluster: cluster.clone(),
                delete: if page.may(Verb::Delete, "silenced", Some(&namespace)) {
                    format!(
                        "/ui/silences/{}/{}/{}/delete",
                        encode_segment(cluster),
                        encode_segment(&namespace),
                        encode_segment(&name)
                    )
                } else {
                    String::new()
                },
                cells: vec![
                    Cell::text(cluster.clone()),
                    Cell::text(namespace),
                    name_cell(silence),
                    Cell::text(text_of(&silence["subscription"])),
                    Cell::text(text_of(&silence["check"])),
                    Cell::text(expires),
                    Cell::text(text_of(&silence["creator"])),
                    Cell::text(text_of(&silence["reason"])),
                ],
            }
        })
        .collect();
    let form_cluster = if page.chrome.cluster.is_empty() {
        state.issuer.issuer().to_owned()
    } else {
        page.chrome.cluster.clone()
    };
    let silences = SilencesPage {
        chrome: page.chrome.clone(),
        rows,
        problems,
        may_create: page.may(Verb::Create, "silenced", None)
            || page.may(Verb::Create, "silenced", Some("default")),
        form_cluster,
    };
    page.render(StatusCode::OK, &silences)
}

// === GitOps and replicators ===

/// A link to the file a resource came from, for a `cairn.io/source` of
/// `<repo>@<commit>:<path>` whose repository is an `https://` URL (GitHub, GitLab, Gitea and
/// Forgejo all serve `/blob/<commit>/<path>`); nothing for a local or SSH repository.
pub(crate) fn source_link(source: &str) -> Option<String> {
    let (repo, rest) = source.rsplit_once('@')?;
    let (commit, path) = rest.split_once(':')?;
    let repo = repo.strip_prefix("https://")?;
    let repo = repo.trim_end_matches('/').trim_end_matches(".git");
    let path = path.trim_start_matches('/');
    let commit_ok = !commit.is_empty() && commit.bytes().all(|byte| byte.is_ascii_alphanumeric());
    let safe = |text: &str| {
        !text.is_empty()
            && text
                .bytes()
                .all(|byte| byte.is_ascii_graphic() && !matches!(byte, b'"' | b'<' | b'>' | b'\\'))
    };
    (commit_ok && safe(repo) && safe(path)).then(|| format!("https://{repo}/blob/{commit}/{path}"))
}

/// One change a sync made.
#[derive(Debug, Clone)]
struct SyncChange {
    action: String,
    kind: String,
    namespace: String,
    name: String,
    source: String,
    href: String,
}

/// One recorded sync.
#[derive(Debug, Clone)]
struct SyncView {
    cluster: String,
    finished: String,
    source: String,
    commit: String,
    result: String,
    class: &'static str,
    counts: String,
    errors: Vec<String>,
    changes: Vec<SyncChange>,
    more: usize,
    by: String,
    dry_run: bool,
}

#[derive(Template)]
#[template(path = "gitops.html")]
struct GitopsPage {
    chrome: Chrome,
    syncs: Vec<SyncView>,
    problems: Vec<ClusterProblem>,
}

/// The most changes of one sync the page lists.
const CHANGES_SHOWN: usize = 200;

fn sync_view(cluster: &str, sync: &Value) -> SyncView {
    let counts = &sync["counts"];
    let result = text_of(&sync["result"]);
    let all = sync["resources"].as_array().cloned().unwrap_or_default();
    let changes = all
        .iter()
        .take(CHANGES_SHOWN)
        .map(|item| {
            let source = text_of(&item["source"]);
            SyncChange {
                action: text_of(&item["action"]),
                kind: text_of(&item["kind"]),
                namespace: text_of(&item["namespace"]),
                name: text_of(&item["name"]),
                href: source_link(&source).unwrap_or_default(),
                source,
            }
        })
        .collect();
    SyncView {
        cluster: cluster.to_owned(),
        finished: format_time(sync["finished_at"].as_i64().unwrap_or(0)),
        source: text_of(&sync["source"]),
        commit: text_of(&sync["commit"]),
        class: match result.as_str() {
            "applied" | "unchanged" => "ok",
            "partial" => "warning",
            _ => "critical",
        },
        result,
        counts: format!(
            "{} created, {} updated, {} deleted, {} unchanged, {} failed",
            counts["created"].as_u64().unwrap_or(0),
            counts["updated"].as_u64().unwrap_or(0),
            counts["deleted"].as_u64().unwrap_or(0),
            counts["unchanged"].as_u64().unwrap_or(0),
            counts["failed"].as_u64().unwrap_or(0)
        ),
        errors: sync["errors"]
            .as_array()
            .map(|errors| errors.iter().map(text_of).collect())
            .unwrap_or_default(),
        more: all.len().saturating_sub(CHANGES_SHOWN),
        changes,
        by: text_of(&sync["recorded_by"]),
        dry_run: sync["dry_run"].as_bool().unwrap_or(false),
    }
}

async fn gitops_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<Common>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let common = query.map(|q| q.0).unwrap_or_default();
    let page = match open_page(&state, &headers, &uri, "gitops", "GitOps", &common).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    let api = page.api();
    let clusters = page.shown_clusters();
    let answers = futures::future::join_all(clusters.iter().map(|cluster| {
        let api = &api;
        async move {
            (
                cluster.clone(),
                api.get::<Vec<Value>>(cluster, "/api/cairn/v1/gitops/syncs?limit=20")
                    .await,
            )
        }
    }))
    .await;
    let mut syncs = Vec::new();
    let mut problems = Vec::new();
    for (cluster, answer) in answers {
        match answer {
            Ok(records) => syncs.extend(records.iter().map(|sync| sync_view(&cluster, sync))),
            Err(err) => problems.push(ClusterProblem {
                cluster,
                message: err.message,
            }),
        }
    }
    syncs.sort_by(|a, b| b.finished.cmp(&a.finished));
    let gitops = GitopsPage {
        chrome: page.chrome.clone(),
        syncs,
        problems,
    };
    page.render(StatusCode::OK, &gitops)
}

async fn replicators_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<Common>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let common = query.map(|q| q.0).unwrap_or_default();
    let page = match open_page(
        &state,
        &headers,
        &uri,
        "replicators",
        "Replicators",
        &common,
    )
    .await
    {
        Ok(page) => page,
        Err(response) => return response,
    };
    let local = state.issuer.issuer().to_owned();
    let statuses = match page
        .api()
        .get::<Vec<Value>>(&local, "/api/cairn/v1/replicators")
        .await
    {
        Ok(statuses) => statuses,
        Err(err) => return page.error(err.status, &err.message),
    };
    let rows = statuses
        .iter()
        .filter(|status| {
            page.chrome.cluster.is_empty()
                || page.chrome.cluster == local
                || status["spec"]["cluster"].as_str() == Some(page.chrome.cluster.as_str())
        })
        .map(|status| {
            let state_word = text_of(&status["state"]);
            TableRow {
                cluster: text_of(&status["spec"]["cluster"]),
                delete: String::new(),
                cells: vec![
                    Cell::text(text_of(&status["name"])),
                    Cell::text(text_of(&status["spec"]["cluster"])),
                    Cell::text(format!(
                        "{} {}",
                        text_of(&status["spec"]["api_version"]),
                        text_of(&status["spec"]["type"])
                    )),
                    Cell::text(state_word.clone()).class(match state_word.as_str() {
                        "synced" | "watching" | "idle" | "running" => "ok",
                        "backing_off" | "failed" => "critical",
                        _ => "warning",
                    }),
                    Cell::text(format!(
                        "{} pending{}",
                        status["pending"].as_u64().unwrap_or(0),
                        status["oldest_pending_ms"]
                            .as_u64()
                            .map_or_else(String::new, |ms| format!(", oldest {ms} ms"))
                    )),
                    Cell::text(text_of(&status["last_error"]["message"])),
                    Cell::text(format_time(status["updated_at"].as_i64().unwrap_or(0))),
                ],
            }
        })
        .collect();
    let table = TablePage {
        chrome: page.chrome.clone(),
        heading: "Replicators".to_owned(),
        intro: format!(
            "The replicators of {local}, copying resources one way to the clusters below it."
        ),
        table_id: "replicators".to_owned(),
        columns: vec![
            "Name",
            "Cluster",
            "Resource",
            "State",
            "Lag",
            "Last error",
            "Updated",
        ],
        rows,
        problems: Vec::new(),
        empty: "No replicators.".to_owned(),
    };
    page.render(StatusCode::OK, &table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_managed_resources_are_marked() {
        let managed = serde_json::json!({"metadata": {"name": "cpu", "labels": {"cairn.io/managed-by": "ops"}, "annotations": {"cairn.io/source": "checks/cpu.yaml"}}});
        let cell = name_cell(&managed);
        assert_eq!(cell.class, "git");
        assert!(cell.title.contains("checks/cpu.yaml"), "{}", cell.title);
        let plain = serde_json::json!({"metadata": {"name": "cpu"}});
        assert_eq!(name_cell(&plain).class, "");
    }

    #[test]
    fn sources_link_to_https_repositories_only() {
        assert_eq!(
            source_link("https://github.com/acme/monitoring.git@0a1b2c:checks/cpu.yaml").as_deref(),
            Some("https://github.com/acme/monitoring/blob/0a1b2c/checks/cpu.yaml")
        );
        for local in [
            "file:///srv/repo@0a1b2c:checks/cpu.yaml",
            "/srv/repo@0a1b2c:checks/cpu.yaml",
            "git@github.com:acme/m.git@0a1b2c:x.yaml",
            "https://github.com/acme/m@not-a-commit!:x.yaml",
            "https://github.com/acme/m@0a1b2c:\"><script>",
            "no source",
        ] {
            assert_eq!(source_link(local), None, "{local}");
        }
    }

    #[test]
    fn lists_read_as_text() {
        assert_eq!(text_of(&serde_json::json!(["a", "b"])), "a, b");
        assert_eq!(text_of(&serde_json::json!(null)), "");
        assert_eq!(text_of(&serde_json::json!(5)), "5");
    }
}
