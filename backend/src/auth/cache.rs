//! The in-memory view of users, API keys, roles, bindings and namespaces that every request is
//! authenticated and authorized against, kept current by a watch on the store.
//!
//! One writer (the watch task) and many cheap readers. A handler that changes one of these
//! resources waits until the view has caught up with its write, so a disabled user's next
//! request is refused, on this backend and (through the store's watch) on every other one.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use cairn_api::Kind;

use crate::auth::rbac::AuthSnapshot;
use crate::store::keyspace;
use crate::store::reflector::{self, SharedView};
use crate::store::resources::{self, Resources};
use crate::store::{Revision, WatchEvent};

/// The kinds the view holds (namespaces too: every namespaced request checks one exists).
const AUTH_KINDS: [Kind; 7] = [
    Kind::Namespace,
    Kind::User,
    Kind::ApiKey,
    Kind::ClusterRole,
    Kind::ClusterRoleBinding,
    Kind::Role,
    Kind::RoleBinding,
];

/// How long a writer waits for the view to catch up before answering anyway.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// Users, keys, roles and bindings, as of `applied` revision.
pub(crate) struct AuthCache {
    snapshot: RwLock<Arc<AuthSnapshot>>,
    applied: watch::Sender<Revision>,
}

// === impl AuthCache ===

impl AuthCache {
    /// Loads the view and starts the task that keeps it current.
    ///
    /// # Errors
    /// When the initial load fails.
    pub(crate) async fn start(
        resources: Resources,
    ) -> Result<(Arc<AuthCache>, JoinHandle<()>), resources::ResourceError> {
        let (applied, _) = watch::channel(0);
        let cache = Arc::new(AuthCache {
            snapshot: RwLock::new(Arc::default()),
            applied,
        });
        let revision = cache.reload(&resources).await?;
        let task = reflector::keep_current(
            Arc::clone(&cache),
            resources,
            keyspace::RESOURCES,
            "auth view",
            revision,
        );
        Ok((cache, task))
    }

    /// The current view.
    pub(crate) fn snapshot(&self) -> Arc<AuthSnapshot> {
        Arc::clone(&self.snapshot.read())
    }

    /// Waits until the view includes `revision` (bounded; a slow view is logged, not fatal).
    pub(crate) async fn wait_for(&self, revision: Revision) {
        let mut applied = self.applied.subscribe();
        let caught_up =
            tokio::time::timeout(CATCH_UP_TIMEOUT, applied.wait_for(|seen| *seen >= revision));
        if caught_up.await.is_err() {
            tracing::warn!(revision, "auth view did not catch up in time");
        }
    }
}

#[async_trait::async_trait]
impl SharedView for AuthCache {
    async fn reload(&self, resources: &Resources) -> Result<Revision, resources::ResourceError> {
        let revision = resources.store().revision().await?;
        let mut snapshot = AuthSnapshot::default();
        for kind in AUTH_KINDS {
            let (items, _) = resources.list(kind, None, None, 0).await?;
            for (_, stored) in items {
                snapshot.upsert(&stored.resource);
            }
        }
        *self.snapshot.write() = Arc::new(snapshot);
        self.applied.send_replace(revision);
        Ok(revision)
    }

    fn apply(&self, event: &WatchEvent) {
        let (key, revision) = match event {
            WatchEvent::Put(entry) => (entry.key.as_str(), entry.mod_revision),
            WatchEvent::Delete { key, revision } => (key.as_str(), *revision),
        };
        if let Some(kind) = auth_kind(key) {
            let mut next = AuthSnapshot::clone(&self.snapshot.read());
            match event {
                WatchEvent::Put(entry) => match resources::decode(entry) {
                    Ok(stored) => next.upsert(&stored.resource),
                    Err(err) => tracing::error!(error = %err, "unreadable auth resource"),
                },
                WatchEvent::Delete { .. } => {
                    let (namespace, name) = Resources::split_key(kind, key);
                    next.remove(kind, namespace, name);
                }
            }
            *self.snapshot.write() = Arc::new(next);
        }
        self.applied.send_replace(revision);
    }
}

fn auth_kind(key: &str) -> Option<Kind> {
    let rest = key.strip_prefix(keyspace::RESOURCES)?;
    let plural = rest.split('/').next()?;
    AUTH_KINDS.into_iter().find(|kind| kind.plural() == plural)
}
