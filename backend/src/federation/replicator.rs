//! One-way replicators (issue 7, federation): a gateway backend copies chosen resources to downstream
//! clusters that share its JWT signing key, and nothing flows back.
//!
//! - The manager ([`spawn`]) keeps the stored `Replicator`s and `Cluster`s in view (a list,
//!   then a watch of each) and runs one worker per replicator; a changed definition or a
//!   re-registered cluster restarts it, a deleted replicator has its copies removed.
//! - A worker (`worker.rs`) resyncs, follows the store's changes and pushes them through the
//!   downstream's REST API (`downstream.rs`) as [`REPLICATOR_USERNAME`] with a 5-minute token,
//!   resyncs every `replication_interval_seconds`, and backs off (`backoff.rs`) when the
//!   downstream fails.
//! - Copies carry `cairn.io/replicated-from: <gateway>/<replicator>` (`plan.rs`); a replicator
//!   only ever overwrites or deletes resources carrying its own value.
//! - Each replicator's record (`status.rs`), at `federation/replicators/<name>` in the store,
//!   holds the revision it has replicated up to, where it resumes after a restart, and its
//!   status, which [`routes`] serve.

mod backoff;
mod downstream;
mod plan;
mod status;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use cairn_api::model::{Cluster, Replicator};
use cairn_api::{Kind, Spec};

use self::downstream::HttpConnector;
pub use self::downstream::REPLICATOR_USERNAME;
use self::status::STATUS_PREFIX;
pub use self::status::{
    Counts, ErrorNote, ReplicatorState, ReplicatorStatus, ResourceErrorNote, ResyncNote,
};
use self::worker::{Shared, WorkerConfig};
use crate::auth::rbac::Verb;
use crate::http::{authenticate, authorize, ApiError, AppState};
use crate::store::resources::{self, Resources};
use crate::store::{Revision, Store, StoreError, WatchEvent};

/// `GET`: the status of every replicator (`[ReplicatorStatus]`).
pub const STATUS_LIST_PATH: &str = "/api/cairn/v1/replicators";

/// Pause before loading the definitions again after a store failure.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Runs the replicators on this backend while it leads [`crate::coord::Role::Replicators`]:
/// starts their manager when it becomes the leader, stops it when it no longer is, until
/// `shutdown` holds `true`. Of the backends sharing a store, one replicates at a time; a new
/// leader resumes from the revisions the last one persisted.
pub fn spawn_when_leading(
    state: &AppState,
    mut leading: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let state = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = crate::shutdown::requested(&mut shutdown) => return,
                led = leading.wait_for(|leading| *leading) => if led.is_err() { return },
            }
            let (stop, stopped) = watch::channel(false);
            let manager = spawn(&state, stopped);
            tokio::select! {
                () = crate::shutdown::requested(&mut shutdown) => {}
                _ = leading.wait_for(|leading| !*leading) => {}
            }
            stop.send_replace(true);
            if let Err(err) = manager.await {
                tracing::error!(error = %err, "replicator manager failed");
            }
            if *shutdown.borrow() {
                return;
            }
        }
    })
}

/// Starts the replicators of this backend: their manager task, which runs until `shutdown`
/// holds `true`.
///
/// # Caveats
/// Every backend sharing one store would replicate (harmlessly, twice); run it on one (see
/// [`spawn_when_leading`]).
pub fn spawn(state: &AppState, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    let shared = Arc::new(Shared {
        store: Arc::clone(state.resources.store()),
        gateway: state.issuer.issuer().to_owned(),
        connector: Arc::new(HttpConnector {
            issuer: Arc::clone(&state.issuer),
            budget: state.downstream_budget.clone(),
        }),
        backoff: backoff::downstream(),
    });
    tokio::spawn(manage(shared, shutdown))
}

/// The replicator status routes, merged into the API router:
/// `GET /api/cairn/v1/replicators`, `GET /api/cairn/v1/replicators/{name}` and
/// `GET /api/enterprise/federation/v1/replicators/{name}/status` (the same as the second).
pub fn routes() -> Router<AppState> {
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
    let page = store.list(STATUS_PREFIX, None, 0).await?;
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

// === the manager ===

/// The definitions the manager acts on.
#[derive(Debug, Default)]
struct View {
    replicators: BTreeMap<String, Replicator>,
    clusters: BTreeMap<String, Cluster>,
}

/// A loaded view, the revisions to watch each prefix from, and the records of replicators
/// that no longer exist (deleted while this backend was down).
struct Loaded {
    view: View,
    replicators_revision: Revision,
    clusters_revision: Revision,
    orphans: Vec<String>,
}

async fn manage(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut manager = Manager {
        shared: Arc::clone(&shared),
        workers: HashMap::new(),
        removals: HashMap::new(),
        shutdown: shutdown.clone(),
    };
    let replicators_prefix = Resources::prefix(Kind::Replicator, None);
    let clusters_prefix = Resources::prefix(Kind::Cluster, None);
    'load: loop {
        let loaded = match load(shared.store.as_ref()).await {
            Ok(loaded) => loaded,
            Err(StoreError::Closed) => return,
            Err(err) => {
                tracing::error!(error = %err, "cannot load the replicators; retrying");
                tokio::select! {
                    () = crate::shutdown::requested(&mut shutdown) => return,
                    () = tokio::time::sleep(RETRY_DELAY) => continue 'load,
                }
            }
        };
        let mut view = loaded.view;
        manager.reconcile(&view).await;
        for name in loaded.orphans {
            if !view.replicators.contains_key(&name) && !manager.removals.contains_key(&name) {
                manager.start_removal(name);
            }
        }
        let watches = futures::future::try_join(
            shared
                .store
                .watch(&replicators_prefix, loaded.replicators_revision),
            shared
                .store
                .watch(&clusters_prefix, loaded.clusters_revision),
        )
        .await;
        let (mut replicator_changes, mut cluster_changes) = match watches {
            Ok(watches) => watches,
            Err(StoreError::Closed) => return,
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the replicators; reloading");
                tokio::select! {
                    () = crate::shutdown::requested(&mut shutdown) => return,
                    () = tokio::time::sleep(RETRY_DELAY) => continue 'load,
                }
            }
        };
        loop {
            let change = tokio::select! {
                () = crate::shutdown::requested(&mut shutdown) => return,
                change = replicator_changes.next() => change,
                change = cluster_changes.next() => change,
            };
            match change {
                Some(Ok(event)) => view.apply(&event),
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "replicator view fell behind; reloading");
                    continue 'load;
                }
                None => continue 'load,
            }
            manager.reconcile(&view).await;
        }
    }
}

/// Lists the replicators, the clusters and the records.
async fn load(store: &dyn Store) -> Result<Loaded, StoreError> {
    let mut view = View::default();
    let replicators = store
        .list(&Resources::prefix(Kind::Replicator, None), None, 0)
        .await?;
    for entry in &replicators.entries {
        view.apply(&WatchEvent::Put(entry.clone()));
    }
    let clusters = store
        .list(&Resources::prefix(Kind::Cluster, None), None, 0)
        .await?;
    for entry in &clusters.entries {
        view.apply(&WatchEvent::Put(entry.clone()));
    }
    let records = store.list(STATUS_PREFIX, None, 0).await?;
    let orphans = records
        .entries
        .iter()
        .filter_map(|entry| entry.key.strip_prefix(STATUS_PREFIX))
        .filter(|name| !view.replicators.contains_key(*name))
        .map(str::to_owned)
        .collect();
    Ok(Loaded {
        view,
        replicators_revision: replicators.revision,
        clusters_revision: clusters.revision,
        orphans,
    })
}

// === impl View ===

impl View {
    /// Applies a change of `res/replicators/` or `res/clusters/`.
    fn apply(&mut self, event: &WatchEvent) {
        let replicators = Resources::prefix(Kind::Replicator, None);
        let clusters = Resources::prefix(Kind::Cluster, None);
        let key = event.key();
        let (is_replicator, name) = if let Some(name) = key.strip_prefix(&replicators) {
            (true, name)
        } else if let Some(name) = key.strip_prefix(&clusters) {
            (false, name)
        } else {
            return;
        };
        let spec = match event {
            WatchEvent::Put(entry) => match resources::decode(entry) {
                Ok(stored) => Some(stored.resource.spec),
                Err(err) => {
                    tracing::warn!(%key, error = %err, "unreadable definition ignored");
                    None
                }
            },
            WatchEvent::Delete { .. } => None,
        };
        match (is_replicator, spec) {
            (true, Some(Spec::Replicator(spec))) => {
                self.replicators.insert(name.to_owned(), spec);
            }
            (true, _) => {
                self.replicators.remove(name);
            }
            (false, Some(Spec::Cluster(cluster))) => {
                self.clusters.insert(name.to_owned(), cluster);
            }
            (false, _) => {
                self.clusters.remove(name);
            }
        }
    }

    /// What the worker of replicator `name` should run with.
    fn config(&self, name: &str, spec: &Replicator) -> WorkerConfig {
        WorkerConfig {
            name: name.to_owned(),
            spec: spec.clone(),
            cluster: self.clusters.get(&spec.cluster).cloned(),
        }
    }
}

// === impl Manager ===

/// The workers and removals running.
struct Manager {
    shared: Arc<Shared>,
    workers: HashMap<String, Running>,
    removals: HashMap<String, JoinHandle<()>>,
    shutdown: watch::Receiver<bool>,
}

struct Running {
    config: WorkerConfig,
    task: JoinHandle<()>,
}

impl Manager {
    /// Makes the running workers match the view: one per replicator with its current
    /// definition and cluster; the copies of a deleted one are removed.
    async fn reconcile(&mut self, view: &View) {
        self.removals.retain(|_, task| !task.is_finished());
        for (name, spec) in &view.replicators {
            let config = view.config(name, spec);
            let current = self
                .workers
                .get(name)
                .is_some_and(|running| running.config == config && !running.task.is_finished());
            if current {
                continue;
            }
            if let Some(old) = self.workers.remove(name) {
                tracing::info!(replicator = %name, "replicator changed; restarting it");
                stop(old.task).await;
            }
            if let Some(removal) = self.removals.remove(name) {
                // Created again: the new worker takes over the old copies.
                stop(removal).await;
            }
            let task = tokio::spawn(worker::run(
                Arc::clone(&self.shared),
                config.clone(),
                self.shutdown.clone(),
            ));
            self.workers.insert(name.clone(), Running { config, task });
        }
        let gone: Vec<String> = self
            .workers
            .keys()
            .filter(|name| !view.replicators.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(old) = self.workers.remove(&name) {
                stop(old.task).await;
            }
            tracing::info!(replicator = %name, "replicator deleted; removing its copies");
            self.start_removal(name);
        }
    }

    fn start_removal(&mut self, name: String) {
        let task = tokio::spawn(worker::remove(
            Arc::clone(&self.shared),
            name.clone(),
            self.shutdown.clone(),
        ));
        self.removals.insert(name, task);
    }
}

/// Stops a task and waits until it no longer runs (its record writes are then all queued).
async fn stop(task: JoinHandle<()>) {
    task.abort();
    // Cancelled (or it had ended); a panic was already reported by the runtime.
    let _ = task.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Precondition;

    async fn put_definition(store: &Arc<dyn Store>, resource: &cairn_api::Resource) {
        Resources::new(Arc::clone(store))
            .put(resource, Precondition::None)
            .await
            .unwrap();
    }

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

    fn cluster(name: &str, url: &str) -> cairn_api::Resource {
        cairn_api::Resource::new(
            cairn_api::ObjectMeta::named("", name),
            Spec::Cluster(Cluster {
                api_urls: vec![url.into()],
                ca_cert: String::new(),
            }),
        )
    }

    #[tokio::test]
    async fn the_view_follows_definitions_and_finds_orphaned_records() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::RedbStore::open(dir.path().join("store.redb")).unwrap());
        put_definition(&store, &replicator("checks", "alpha")).await;
        put_definition(&store, &cluster("alpha", "https://alpha:8080")).await;
        store
            .put(
                &status::status_key("gone"),
                serde_json::to_vec(&status::Record {
                    name: "gone".into(),
                    ..status::Record::default()
                })
                .unwrap(),
                Precondition::None,
            )
            .await
            .unwrap();
        store
            .put(
                &status::status_key("checks"),
                b"{}".to_vec(),
                Precondition::None,
            )
            .await
            .unwrap();
        let loaded = load(store.as_ref()).await.unwrap();
        assert_eq!(loaded.orphans, ["gone"]);
        let mut view = loaded.view;
        let config = view.config("checks", &view.replicators["checks"].clone());
        assert_eq!(
            config
                .cluster
                .as_ref()
                .map(|cluster| cluster.api_urls.clone()),
            Some(vec!["https://alpha:8080".to_owned()])
        );
        view.apply(&WatchEvent::Delete {
            key: "res/clusters/alpha".into(),
            revision: 99,
        });
        let config = view.config("checks", &view.replicators["checks"].clone());
        assert_eq!(
            config.cluster, None,
            "a replicator whose cluster is gone waits"
        );
        view.apply(&WatchEvent::Delete {
            key: "res/replicators/checks".into(),
            revision: 100,
        });
        assert!(view.replicators.is_empty());
        // Other keys are not the view's business.
        view.apply(&WatchEvent::Delete {
            key: "res/checks/default/x".into(),
            revision: 101,
        });
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
