//! The replicator status routes: `GET /api/cairn/v1/replicators`,
//! `GET /api/cairn/v1/replicators/{name}` and
//! `GET /api/enterprise/federation/v1/replicators/{name}/status` (the same as the second).
//! The replicators themselves are [`crate::federation::replicator`]'s.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};

use cairn_api::model::Replicator;
use cairn_api::{Kind, Spec};

use crate::auth::rbac::Verb;
use crate::federation::replicator::status::{self};
use crate::federation::replicator::ReplicatorStatus;
use crate::http::{authenticate, authorize, ApiError, AppState};
use crate::store::keyspace;

/// `GET`: the status of every replicator (`[ReplicatorStatus]`).
pub(crate) const STATUS_LIST_PATH: &str = "/api/cairn/v1/replicators";

/// The replicator status routes, merged into the API router:
/// `GET /api/cairn/v1/replicators`, `GET /api/cairn/v1/replicators/{name}` and
/// `GET /api/enterprise/federation/v1/replicators/{name}/status` (the same as the second).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(STATUS_LIST_PATH, get(replicators_list))
        .route("/api/cairn/v1/replicators/{name}", get(replicators_get))
        .route(
            "/api/enterprise/federation/v1/replicators/{name}/status",
            get(replicators_get),
        )
}

/// `GET /api/cairn/v1/replicators`: every replicator's status, by name (deleted ones too
/// while their copies are being removed). Needs `list` on `replicators`.
///
/// # Errors
/// 401/403 for the caller, store failures.
async fn replicators_list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<ReplicatorStatus>>, ApiError> {
    let caller = authenticate(&state, &headers)?;
    authorize(
        &state,
        &caller,
        Verb::List,
        Kind::Replicator.plural(),
        None,
        None,
    )?;
    let store = state.resources.store();
    let gateway_revision = store.revision().await?;
    let (listed, _) = state
        .resources
        .list(Kind::Replicator, None, None, 0)
        .await?;
    let specs: BTreeMap<String, Replicator> = listed
        .into_iter()
        .filter_map(|(_, stored)| match stored.resource.spec {
            Spec::Replicator(spec) => Some((stored.resource.metadata.name, spec)),
            _ => None,
        })
        .collect();
    let page = store.list(keyspace::REPLICATOR_STATUS, None, 0).await?;
    let records: BTreeMap<String, status::Record> = page
        .entries
        .iter()
        .filter_map(|entry| status::decode(&entry.key, &entry.value))
        .map(|record| (record.name.clone(), record))
        .collect();
    let now_ms = status::unix_millis();
    let mut names: Vec<&String> = specs.keys().chain(records.keys()).collect();
    names.sort();
    names.dedup();
    Ok(Json(
        names
            .into_iter()
            .map(|name| {
                status::status_of(
                    name,
                    specs.get(name),
                    records.get(name),
                    gateway_revision,
                    now_ms,
                )
            })
            .collect(),
    ))
}

/// `GET /api/cairn/v1/replicators/{name}` and
/// `GET /api/enterprise/federation/v1/replicators/{name}/status`. Needs `get` on
/// `replicators`.
///
/// # Errors
/// 401/403 for the caller, 404 for a replicator that neither exists nor is being removed,
/// store failures.
async fn replicators_get(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<ReplicatorStatus>, ApiError> {
    let caller = authenticate(&state, &headers)?;
    authorize(
        &state,
        &caller,
        Verb::Get,
        Kind::Replicator.plural(),
        None,
        Some(&name),
    )?;
    let store = state.resources.store();
    let gateway_revision = store.revision().await?;
    let spec = match state.resources.get(Kind::Replicator, "", &name).await? {
        Some(stored) => match stored.resource.spec {
            Spec::Replicator(spec) => Some(spec),
            _ => None,
        },
        None => None,
    };
    let record = status::load(store.as_ref(), &name).await?;
    if spec.is_none() && record.is_none() {
        return Err(ApiError::not_found(format!("replicator {name} not found")));
    }
    Ok(Json(status::status_of(
        &name,
        spec.as_ref(),
        record.as_ref(),
        gateway_revision,
        status::unix_millis(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federation::replicator::status::{Counts, ReplicatorState};
    use crate::store::Precondition;

    fn replicator(name: &str, cluster: &str) -> cairn_api::Resource {
        cairn_api::Resource::new(
            cairn_api::ObjectMeta::named("", name),
            Spec::Replicator(Replicator {
                cluster: cluster.into(),
                resource: "CheckConfig".into(),
                ..Replicator::default()
            }),
        )
    }

    #[tokio::test]
    async fn the_status_routes_authorise_and_report_definition_and_record() {
        use crate::http::tests::{bearer, Fixture};
        let fixture = Fixture::new("gw").await;
        let state = fixture.state.clone();
        fixture.put(replicator("checks", "alpha")).await;
        let admin = bearer(&state.issuer.issue("admin", &[]).unwrap().token);

        // Defined, no record yet: starting.
        let Json(status) = replicators_get(
            State(state.clone()),
            Path("checks".to_owned()),
            admin.clone(),
        )
        .await
        .unwrap();
        assert_eq!(status.state, ReplicatorState::Starting);
        assert_eq!(
            (status.cluster.as_str(), status.resource.as_str()),
            ("alpha", "CheckConfig")
        );

        let store = state.resources.store();
        let record = status::Record {
            name: "checks".into(),
            label: "gw/checks".into(),
            revision: 5,
            state: ReplicatorState::Ok,
            counts: Counts {
                puts: 3,
                ..Counts::default()
            },
            ..status::Record::default()
        };
        let deleting = status::Record {
            name: "gone".into(),
            spec: Replicator {
                cluster: "beta".into(),
                ..Replicator::default()
            },
            state: ReplicatorState::Deleting,
            ..status::Record::default()
        };
        for record in [&record, &deleting] {
            store
                .put(
                    &status::status_key(&record.name),
                    serde_json::to_vec(record).unwrap(),
                    Precondition::None,
                )
                .await
                .unwrap();
        }
        let Json(status) = replicators_get(
            State(state.clone()),
            Path("checks".to_owned()),
            admin.clone(),
        )
        .await
        .unwrap();
        let gateway_revision = store.revision().await.unwrap();
        assert_eq!(status.state, ReplicatorState::Ok);
        assert_eq!(status.last_revision, 5);
        assert_eq!(status.label, "gw/checks");
        assert_eq!(status.counts.puts, 3);
        assert_eq!(status.gateway_revision, gateway_revision);
        assert_eq!(status.lag_revisions, gateway_revision - 5);

        let Json(all) = replicators_list(State(state.clone()), admin.clone())
            .await
            .unwrap();
        let listed: Vec<_> = all
            .iter()
            .map(|status| (status.name.as_str(), status.state, status.cluster.as_str()))
            .collect();
        assert_eq!(
            listed,
            [
                ("checks", ReplicatorState::Ok, "alpha"),
                ("gone", ReplicatorState::Deleting, "beta")
            ]
        );

        let missing = replicators_get(State(state.clone()), Path("nope".to_owned()), admin)
            .await
            .unwrap_err();
        assert_eq!(missing.status, axum::http::StatusCode::NOT_FOUND);

        // A caller without a binding for replicators, and no caller at all.
        let nobody = bearer(&fixture.token_from("other-cluster", "bob", &[]));
        let refused = replicators_list(State(state.clone()), nobody.clone())
            .await
            .unwrap_err();
        assert_eq!(refused.status, axum::http::StatusCode::FORBIDDEN);
        let refused = replicators_get(State(state.clone()), Path("checks".to_owned()), nobody)
            .await
            .unwrap_err();
        assert_eq!(refused.status, axum::http::StatusCode::FORBIDDEN);
        let anonymous = replicators_list(State(state), HeaderMap::new())
            .await
            .unwrap_err();
        assert_eq!(anonymous.status, axum::http::StatusCode::UNAUTHORIZED);
    }
}
