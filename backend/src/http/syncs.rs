//! The GitOps sync records (the web UI's GitOps page): `POST /api/cairn/v1/gitops/syncs`
//! (`cairnctl apply` and `cairnctl watch` record each sync that reached the backend),
//! `GET /api/cairn/v1/gitops/syncs[?limit=N]` (newest first) and
//! `GET /api/cairn/v1/gitops/syncs/{id}`. The record is [`cairn_api::gitops::SyncRecord`].
//!
//! Records are kept under [`keyspace::GITOPS_SYNCS`], keyed by their time-ordered id; only
//! the newest [`KEPT_RECORDS`] are kept: every write deletes the older ones.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use cairn_api::gitops::{SyncRecord, SYNCS_PATH, SYNCS_RESOURCE};

use crate::auth::rbac::Verb;
use crate::http::{authenticate, authorize, parse_json, read_body, ApiError, AppState};
use crate::store::{keyspace, Precondition, Store};

/// Records kept: after each write the older ones are deleted, so the prefix holds at most this
/// many (plus those of writes in flight), each at most the API's body limit.
pub(crate) const KEPT_RECORDS: usize = 100;
/// Records a list returns when `?limit` is not given.
const DEFAULT_LIMIT: usize = 20;

/// The sync record routes, merged into the API router.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(SYNCS_PATH, get(syncs_list).post(syncs_create))
        .route("/api/cairn/v1/gitops/syncs/{id}", get(syncs_get))
}

/// `?limit=N` of a list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
}

/// `POST /api/cairn/v1/gitops/syncs`: stores a record with its `id`, `recorded_at` and
/// `recorded_by` (the caller) and answers 201 with it. Needs `create` on `gitopssyncs`.
///
/// # Errors
/// 401/403 for the caller, 400 naming the field of a record that is malformed or over a bound
/// ([`SyncRecord::check`]), 413 over the body limit, store failures.
async fn syncs_create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<SyncRecord>), ApiError> {
    let caller = authenticate(&state, &headers)?;
    authorize(&state, &caller, Verb::Create, SYNCS_RESOURCE, None, None)?;
    let bytes = read_body(&state, body).await?;
    let mut record = SyncRecord::from_client(parse_json(&bytes)?)
        .map_err(|issue| ApiError::invalid(issue.to_string()))?;
    let id = new_id()?;
    record.id = Some(id.clone());
    record.recorded_at = Some(crate::clock::unix_now());
    record.recorded_by = Some(caller.username.clone());
    let value = serde_json::to_vec(&record).map_err(ApiError::internal)?;
    let store = state.resources.store();
    store
        .put(&record_key(&id), value, Precondition::Absent)
        .await?;
    prune(store.as_ref(), KEPT_RECORDS).await?;
    Ok((StatusCode::CREATED, Json(record)))
}

/// `GET /api/cairn/v1/gitops/syncs[?limit=N]`: the newest records first, `limit` of them
/// (default 20, at most [`KEPT_RECORDS`]). Needs `list` on `gitopssyncs`.
///
/// # Errors
/// 401/403 for the caller, 400 for a bad `limit`, store failures.
async fn syncs_list(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<SyncRecord>>, ApiError> {
    let caller = authenticate(&state, &headers)?;
    authorize(&state, &caller, Verb::List, SYNCS_RESOURCE, None, None)?;
    let Query(query) = query.map_err(|rejection| {
        ApiError::invalid(format!("invalid query: {}", rejection.body_text()))
    })?;
    let limit = match query.limit {
        None => DEFAULT_LIMIT,
        Some(limit @ 1..=KEPT_RECORDS) => limit,
        Some(limit) => {
            return Err(ApiError::invalid(format!(
                "limit: must be between 1 and {KEPT_RECORDS}, found {limit}"
            )))
        }
    };
    let page = state
        .resources
        .store()
        .list(keyspace::GITOPS_SYNCS, None, 0)
        .await?;
    let records = page
        .entries
        .iter()
        .rev()
        .filter_map(|entry| decode(&entry.key, &entry.value))
        .take(limit)
        .collect();
    Ok(Json(records))
}

/// `GET /api/cairn/v1/gitops/syncs/{id}`. Needs `get` on `gitopssyncs`.
///
/// # Errors
/// 401/403 for the caller, 404 for an id not (or no longer) kept, store failures.
async fn syncs_get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<SyncRecord>, ApiError> {
    let caller = authenticate(&state, &headers)?;
    authorize(&state, &caller, Verb::Get, SYNCS_RESOURCE, None, Some(&id))?;
    let not_found = || ApiError::not_found(format!("sync {id} not found"));
    // An id holds no `/`: it would name a key of no record.
    if id.contains('/') {
        return Err(not_found());
    }
    let entry = state
        .resources
        .store()
        .get(&record_key(&id))
        .await?
        .ok_or_else(not_found)?;
    decode(&entry.key, &entry.value)
        .map(Json)
        .ok_or_else(|| ApiError::internal(format!("unreadable sync record {id}")))
}

/// A new record id: zero-padded unix milliseconds, `-`, eight random hex digits, so that ids
/// (and keys) sort by the time they were made and two records of one millisecond differ.
fn new_id() -> Result<String, ApiError> {
    let millis = crate::federation::replicator::status::unix_millis();
    let suffix =
        crate::agents::join::random_string(8, b"0123456789abcdef").map_err(ApiError::internal)?;
    Ok(format!("{millis:013}-{suffix}"))
}

fn record_key(id: &str) -> String {
    format!("{}{id}", keyspace::GITOPS_SYNCS)
}

/// A stored record; `None` (logged) for one that does not decode.
fn decode(key: &str, value: &[u8]) -> Option<SyncRecord> {
    match serde_json::from_slice(value) {
        Ok(record) => Some(record),
        Err(err) => {
            tracing::warn!(%key, error = %err, "unreadable sync record skipped");
            None
        }
    }
}

/// Deletes all but the newest `keep` records.
///
/// # Errors
/// Store failures; a record another writer deleted first is not one.
async fn prune(store: &dyn Store, keep: usize) -> Result<(), ApiError> {
    let page = store.list(keyspace::GITOPS_SYNCS, None, 0).await?;
    let excess = page.entries.len().saturating_sub(keep);
    for entry in &page.entries[..excess] {
        store.delete(&entry.key, Precondition::None).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::tests::{bearer, Fixture};

    fn record(commit: &str) -> serde_json::Value {
        serde_json::json!({
            "source": "file:///srv/config", "commit": commit, "path": null,
            "result": "applied", "dry_run": false,
            "counts": {"created": 1, "updated": 0, "deleted": 0, "unchanged": 3, "failed": 0},
            "errors": [],
            "resources": [{"kind": "CheckConfig", "namespace": "default", "name": "cpu",
                           "action": "created",
                           "source": "file:///srv/config@abc:checks/cpu.yaml"}],
            "started_at": 1_700_000_000, "finished_at": 1_700_000_001,
        })
    }

    async fn create(
        state: &AppState,
        token: &str,
        body: serde_json::Value,
    ) -> Result<SyncRecord, ApiError> {
        syncs_create(
            State(state.clone()),
            bearer(token),
            Body::from(body.to_string()),
        )
        .await
        .map(|(status, Json(record))| {
            assert_eq!(status, StatusCode::CREATED);
            record
        })
    }

    async fn list(
        state: &AppState,
        token: &str,
        limit: Option<usize>,
    ) -> Result<Vec<SyncRecord>, ApiError> {
        syncs_list(
            State(state.clone()),
            bearer(token),
            Ok(Query(ListQuery { limit })),
        )
        .await
        .map(|Json(records)| records)
    }

    #[tokio::test]
    async fn records_are_stored_listed_newest_first_and_read_back() {
        let fixture = Fixture::new("alpha").await;
        let state = &fixture.state;
        let admin = fixture.token_from("alpha", "admin", &[]);
        let first = create(state, &admin, record("aaa")).await.unwrap();
        let second = create(state, &admin, record("bbb")).await.unwrap();
        assert_eq!(first.recorded_by.as_deref(), Some("admin"));
        assert!(first.recorded_at.is_some());
        let (first_id, second_id) = (first.id.clone().unwrap(), second.id.clone().unwrap());
        assert!(first_id < second_id, "{first_id} sorts before {second_id}");
        assert_eq!(first.counts.unchanged, 3);

        let listed = list(state, &admin, None).await.unwrap();
        let commits: Vec<_> = listed.iter().map(|r| r.commit.as_deref()).collect();
        assert_eq!(commits, [Some("bbb"), Some("aaa")]);
        assert_eq!(list(state, &admin, Some(1)).await.unwrap().len(), 1);
        for limit in [0, KEPT_RECORDS + 1] {
            let refused = list(state, &admin, Some(limit)).await.unwrap_err();
            assert_eq!(refused.status, StatusCode::BAD_REQUEST);
            assert!(
                refused.message.starts_with("limit: "),
                "{}",
                refused.message
            );
        }

        let Json(read) = syncs_get(State(state.clone()), Path(first_id.clone()), bearer(&admin))
            .await
            .unwrap();
        assert_eq!(read, first);
        let missing = syncs_get(
            State(state.clone()),
            Path("0000000000000-nope".into()),
            bearer(&admin),
        )
        .await
        .unwrap_err();
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn bad_records_get_a_400_naming_the_field() {
        let fixture = Fixture::new("alpha").await;
        let admin = fixture.token_from("alpha", "admin", &[]);
        let cases: [(&str, serde_json::Value); 4] = [
            ("counts.created", serde_json::json!("many")),
            ("resources[0].action", serde_json::json!("renamed")),
            ("errors[0]", serde_json::json!(["x".repeat(5000)])),
            ("recorded_by", serde_json::json!("mallory")),
        ];
        for (field, value) in cases {
            let mut body = record("abc");
            match field {
                "counts.created" => body["counts"]["created"] = value,
                "resources[0].action" => body["resources"][0]["action"] = value,
                "errors[0]" => body["errors"] = value,
                _ => body[field] = value,
            }
            let refused = create(&fixture.state, &admin, body).await.unwrap_err();
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{field}");
            assert!(
                refused.message.starts_with(&format!("{field}: ")),
                "{field}: {}",
                refused.message
            );
        }
        let Err(refused) = create(&fixture.state, &admin, serde_json::json!([1])).await else {
            panic!("an array is no record");
        };
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert!(list(&fixture.state, &admin, None).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn only_the_newest_records_are_kept() {
        let fixture = Fixture::new("alpha").await;
        let admin = fixture.token_from("alpha", "admin", &[]);
        let mut ids = Vec::new();
        for n in 0..KEPT_RECORDS + 5 {
            let created = create(&fixture.state, &admin, record(&format!("c{n}")))
                .await
                .unwrap();
            ids.push(created.id.unwrap());
        }
        let store = fixture.state.resources.store();
        let kept = store.list(keyspace::GITOPS_SYNCS, None, 0).await.unwrap();
        let kept: Vec<String> = kept
            .entries
            .iter()
            .map(|entry| entry.key[keyspace::GITOPS_SYNCS.len()..].to_owned())
            .collect();
        assert_eq!(kept, ids[5..]);
        let newest = list(&fixture.state, &admin, Some(KEPT_RECORDS))
            .await
            .unwrap();
        assert_eq!(newest.len(), KEPT_RECORDS);
        assert_eq!(newest[0].commit.as_deref(), Some("c104"));
    }

    #[tokio::test]
    async fn the_routes_authorise_with_gitopssyncs() {
        let fixture = Fixture::new("alpha").await;
        let state = &fixture.state;
        let admin = fixture.token_from("alpha", "admin", &[]);
        create(state, &admin, record("abc")).await.unwrap();

        // Sensu's `view` covers namespaced resources only, as for replicators and clusters.
        fixture.bind_group("viewers", "view").await;
        let viewer = fixture.token_from("gateway", "val", &["viewers"]);
        let refused = list(state, &viewer, None).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);

        // A role that reads the records: lists and gets, but may not record.
        fixture
            .put(cairn_api::Resource::new(
                cairn_api::ObjectMeta::named("", "gitops-reader"),
                cairn_api::Spec::ClusterRole(cairn_api::model::Role {
                    metadata: None,
                    rules: vec![cairn_api::model::Rule {
                        verbs: vec!["get".into(), "list".into()],
                        resources: vec![SYNCS_RESOURCE.into()],
                        resource_names: Vec::new(),
                    }],
                }),
            ))
            .await;
        fixture.bind_group("readers", "gitops-reader").await;
        let reader = fixture.token_from("gateway", "rita", &["readers"]);
        assert_eq!(list(state, &reader, None).await.unwrap().len(), 1);
        let refused = create(state, &reader, record("def")).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert_eq!(
            refused.message,
            "user rita of cluster gateway may not create gitopssyncs"
        );
        let anonymous = syncs_list(
            State(state.clone()),
            HeaderMap::new(),
            Ok(Query(ListQuery { limit: None })),
        )
        .await
        .unwrap_err();
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    }
}
