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
//!   status, which `crate::http::replicators` serves.

mod backoff;
mod downstream;
mod plan;
pub(crate) mod status;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use cairn_api::model::{Cluster, Replicator};
use cairn_api::{Kind, Spec};

use self::downstream::HttpConnector;
pub(crate) use self::status::ReplicatorStatus;
use self::worker::{Shared, WorkerConfig};
use crate::federation::Federation;
use crate::store::keyspace;
use crate::store::resources::{self, Resources};
use crate::store::{Revision, Store, StoreError, WatchEvent};

/// Pause before loading the definitions again after a store failure.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Runs the replicators on this backend while it leads [`crate::coord::Role::Replicators`]:
/// starts their manager when it becomes the leader, stops it when it no longer is, until
/// `shutdown` holds `true`. Of the backends sharing a store, one replicates at a time; a new
/// leader resumes from the revisions the last one persisted.
pub(crate) fn spawn_when_leading(
    federation: &Federation,
    mut leading: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let federation = federation.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = crate::shutdown::requested(&mut shutdown) => return,
                led = leading.wait_for(|leading| *leading) => if led.is_err() { return },
            }
            let (stop, stopped) = crate::shutdown::channel();
            let manager = spawn(&federation, stopped);
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
pub(crate) fn spawn(federation: &Federation, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    let shared = Arc::new(Shared {
        store: Arc::clone(federation.resources.store()),
        gateway: federation.issuer.issuer().to_owned(),
        connector: Arc::new(HttpConnector {
            issuer: Arc::clone(&federation.issuer),
            budget: federation.budget.clone(),
        }),
        backoff: backoff::downstream(),
    });
    tokio::spawn(manage(shared, shutdown))
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
    let records = store.list(keyspace::REPLICATOR_STATUS, None, 0).await?;
    let orphans = records
        .entries
        .iter()
        .filter_map(|entry| entry.key.strip_prefix(keyspace::REPLICATOR_STATUS))
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
}
