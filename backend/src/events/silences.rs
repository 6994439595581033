//! The in-memory view of silenced entries that ingestion marks events against, kept current by a
//! watch on the store ([`reflector::keep_current`] over `res/silenced/`), and the sweep that deletes
//! entries once they expire.
//!
//! As in Sensu, an event is marked when it is stored: `check.silenced` lists the entries that
//! match it ([`rules::is_silenced_by`]) and `check.is_silenced` is set when there is one; a
//! resolution first deletes the matching entries that have `expire_on_resolve`, so the
//! resolution itself is not silenced by them and reaches the handlers. An entry whose `begin`
//! is in the future matches nothing until then (a scheduled silence).
//!
//! An API write of a silenced entry answers only once this view has it
//! ([`Silences::wait_for`]), so an event stored right after a silence is created is silenced.
//!
//! Bounds: the view holds at most [`MAX_ENTRIES`] entries (a few hundred bytes each, so about
//! 50 MiB at the limit); past it, new entries are logged as an error and not taken, which only
//! thousands of times more silences than any real installation has could reach.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::model::{Event, Silenced};
use cairn_api::{Kind, Spec};
use parking_lot::RwLock;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::events::rules;
use crate::shutdown::Shutdown;
use crate::store::reflector::{self, SharedView};
use crate::store::resources::{self, Resources};
use crate::store::{Precondition, Revision, StoreError, WatchEvent};

/// Entries the view holds at most.
pub(crate) const MAX_ENTRIES: usize = 100_000;

/// How often expired entries are looked for; an expired entry already matches no event (the
/// expiry is checked at each match), the sweep only removes it from the store and the API.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How long a writer waits for the view to catch up before answering anyway.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// The entries of one namespace: `(name, entry)` pairs as [`rules`] takes them, shared with
/// every event marked against them (no copy per event), and each one's store revision at the
/// same index (the precondition of its deletion).
#[derive(Debug, Clone, Default)]
struct Namespace {
    pairs: Arc<[(String, Silenced)]>,
    revisions: Arc<[Revision]>,
}

impl Namespace {
    fn of(entries: Vec<(String, Silenced, Revision)>) -> Namespace {
        let (pairs, revisions): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .map(|(name, silenced, revision)| ((name, silenced), revision))
            .unzip();
        Namespace {
            pairs: Arc::from(pairs),
            revisions: Arc::from(revisions),
        }
    }

    fn entries(&self) -> impl Iterator<Item = (&str, &Silenced, Revision)> {
        self.pairs
            .iter()
            .zip(self.revisions.iter())
            .map(|((name, silenced), revision)| (name.as_str(), silenced, *revision))
    }
}

/// Entries by namespace.
type Snapshot = HashMap<String, Namespace>;

/// The silenced entries of every namespace, as of `applied`.
pub(crate) struct Silences {
    snapshot: RwLock<Arc<Snapshot>>,
    applied: watch::Sender<Revision>,
}

impl std::fmt::Debug for Silences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Silences")
            .field("applied", &*self.applied.borrow())
            .finish_non_exhaustive()
    }
}

// === impl Silences ===

impl Silences {
    /// Loads the view and starts the task that keeps it current.
    ///
    /// # Errors
    /// When the initial load fails.
    pub(crate) async fn start(
        resources: Resources,
    ) -> Result<(Arc<Silences>, JoinHandle<()>), resources::ResourceError> {
        let silences = Arc::new(Silences::empty());
        let revision = silences.reload(&resources).await?;
        let task = reflector::keep_current(
            Arc::clone(&silences),
            resources,
            Resources::prefix(Kind::Silenced, None),
            "silenced entries",
            revision,
        );
        Ok((silences, task))
    }

    /// A view with no entries that nothing keeps current (for tests of other parts).
    pub(crate) fn empty() -> Silences {
        let (applied, _) = watch::channel(0);
        Silences {
            snapshot: RwLock::new(Arc::default()),
            applied,
        }
    }

    /// The entries of `namespace` as `(name, entry)` pairs, as [`rules`] takes them.
    pub(crate) fn in_namespace(&self, namespace: &str) -> Arc<[(String, Silenced)]> {
        self.namespace(namespace).pairs
    }

    fn namespace(&self, namespace: &str) -> Namespace {
        self.snapshot
            .read()
            .get(namespace)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until the view includes `revision` (bounded; a slow view is logged, not fatal).
    pub(crate) async fn wait_for(&self, revision: Revision) {
        let mut applied = self.applied.subscribe();
        let caught_up =
            tokio::time::timeout(CATCH_UP_TIMEOUT, applied.wait_for(|seen| *seen >= revision));
        if caught_up.await.is_err() {
            tracing::warn!(revision, "silenced view did not catch up in time");
        }
    }
}

#[async_trait::async_trait]
impl SharedView for Silences {
    async fn reload(&self, resources: &Resources) -> Result<Revision, resources::ResourceError> {
        let revision = resources.store().revision().await?;
        let (items, _) = resources.list(Kind::Silenced, None, None, 0).await?;
        let mut by_namespace: HashMap<String, Vec<(String, Silenced, Revision)>> = HashMap::new();
        let mut count = 0_usize;
        for (_, stored) in items {
            let Spec::Silenced(silenced) = stored.resource.spec else {
                continue;
            };
            if count >= MAX_ENTRIES {
                tracing::error!(
                    limit = MAX_ENTRIES,
                    "more silenced entries than the view holds; the rest are not applied"
                );
                break;
            }
            count += 1;
            by_namespace
                .entry(stored.resource.metadata.namespace.clone())
                .or_default()
                .push((stored.resource.metadata.name, silenced, stored.revision));
        }
        let snapshot = by_namespace
            .into_iter()
            .map(|(namespace, entries)| (namespace, Namespace::of(entries)))
            .collect();
        *self.snapshot.write() = Arc::new(snapshot);
        self.applied.send_replace(revision);
        Ok(revision)
    }

    fn apply(&self, change: &WatchEvent) {
        let (key, revision) = match change {
            WatchEvent::Put(entry) => (entry.key.as_str(), entry.mod_revision),
            WatchEvent::Delete { key, revision } => (key.as_str(), *revision),
        };
        let (namespace, name) = Resources::split_key(Kind::Silenced, key);
        let mut next = Snapshot::clone(&self.snapshot.read());
        let mut entries: Vec<(String, Silenced, Revision)> = next
            .get(namespace)
            .map(|current| {
                current
                    .entries()
                    .map(|(name, silenced, revision)| (name.to_owned(), silenced.clone(), revision))
                    .collect()
            })
            .unwrap_or_default();
        let before = entries.len();
        entries.retain(|(held, _, _)| held != name);
        // An entry replaced in place does not count against the limit.
        let replaced = before - entries.len();
        if let WatchEvent::Put(entry) = change {
            match resources::decode(entry) {
                Ok(stored) => {
                    if let Spec::Silenced(silenced) = stored.resource.spec {
                        let total: usize = next.values().map(|entries| entries.pairs.len()).sum();
                        if total - replaced >= MAX_ENTRIES {
                            tracing::error!(
                                limit = MAX_ENTRIES,
                                namespace,
                                name,
                                "the silenced view is full; this entry is not applied"
                            );
                        } else {
                            entries.push((name.to_owned(), silenced, entry.mod_revision));
                        }
                    }
                }
                Err(err) => tracing::error!(error = %err, "unreadable silenced entry"),
            }
        }
        if entries.is_empty() {
            next.remove(namespace);
        } else {
            next.insert(namespace.to_owned(), Namespace::of(entries));
        }
        *self.snapshot.write() = Arc::new(next);
        self.applied.send_replace(revision);
    }
}

impl Silences {
    /// Marks `event` (in `namespace`, about to be stored) as Sensu does: deletes the matching
    /// `expire_on_resolve` entries when it is a resolution, then lists the remaining matches in
    /// `check.silenced` and sets `check.is_silenced` when there is one (never clearing a flag the
    /// event came with, as Sensu).
    ///
    /// With `resources` `None` (a dry run) nothing is deleted, but the event is marked as if
    /// the entries were.
    pub(crate) async fn mark(
        &self,
        resources: Option<&Resources>,
        namespace: &str,
        event: &mut Event,
    ) {
        let now = crate::clock::unix_now();
        let entries = self.namespace(namespace);
        if entries.pairs.is_empty() || event.check.is_none() {
            return;
        }
        let pairs = &entries.pairs;
        let resolved = rules::silenced_to_delete_on_resolve(event, pairs, now);
        for name in &resolved {
            let revision = entries
                .entries()
                .find(|(held, _, _)| held == name)
                .map_or(0, |(_, _, revision)| revision);
            let Some(resources) = resources else {
                continue;
            };
            match resources
                .delete(
                    Kind::Silenced,
                    namespace,
                    name,
                    Precondition::Revision(revision),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(namespace, silenced = %name, "silence expired on resolution")
                }
                // Changed or deleted meanwhile (another backend, the API): it stays as it is now.
                Err(resources::ResourceError::Store(StoreError::PreconditionFailed { .. })) => {}
                Err(err) => tracing::warn!(
                    namespace,
                    silenced = %name,
                    error = %err,
                    "cannot delete a silence on resolution"
                ),
            }
        }
        let mut matched = rules::is_silenced_by(event, pairs, now);
        matched.retain(|name| !resolved.contains(name));
        if let Some(check) = event.check.as_mut() {
            if !matched.is_empty() {
                check.is_silenced = true;
            }
            check.silenced = matched;
        }
    }

    /// Deletes the entries that expired by `now`; returns how many.
    async fn sweep(&self, resources: &Resources, now: i64) -> usize {
        let expired: Vec<(String, String, Revision)> = self
            .snapshot
            .read()
            .iter()
            .flat_map(|(namespace, entries)| {
                entries
                    .entries()
                    .filter(|(_, silenced, _)| rules::has_expired(silenced, now))
                    .map(|(name, _, revision)| (namespace.clone(), name.to_owned(), revision))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut deleted = 0;
        for (namespace, name, revision) in expired {
            match resources
                .delete(
                    Kind::Silenced,
                    &namespace,
                    &name,
                    Precondition::Revision(revision),
                )
                .await
            {
                Ok(_) => deleted += 1,
                Err(resources::ResourceError::Store(StoreError::PreconditionFailed { .. })) => {}
                Err(err) => {
                    tracing::warn!(namespace, silenced = %name, error = %err, "cannot delete an expired silence");
                }
            }
        }
        deleted
    }
}

/// Deletes expired entries every [`SWEEP_INTERVAL`] until `stop`.
pub(crate) fn spawn_sweeper(
    silences: Arc<Silences>,
    resources: Resources,
    mut stop: Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = crate::shutdown::requested(&mut stop) => return,
                _ = ticks.tick() => {}
            }
            let deleted = silences.sweep(&resources, crate::clock::unix_now()).await;
            if deleted > 0 {
                tracing::debug!(deleted, "expired silences deleted");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use cairn_api::model::{Check, Entity};
    use cairn_api::{ObjectMeta, Resource};

    use super::*;
    use crate::store::{RedbStore, Store};

    async fn resources() -> (tempfile::TempDir, Resources) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path().join("s.redb")).unwrap());
        (dir, Resources::new(store))
    }

    async fn put(resources: &Resources, silenced: Silenced) -> Revision {
        let name = silenced.canonical_name();
        let resource = Resource::new(
            ObjectMeta::named("default", &name),
            Spec::Silenced(silenced),
        );
        resources.put(&resource, Precondition::None).await.unwrap()
    }

    fn event(status: u32, history: &[u32]) -> Event {
        Event {
            entity: Some(Entity {
                metadata: Some(ObjectMeta::named("default", "web-1")),
                entity_class: "agent".to_owned(),
                subscriptions: vec!["web".to_owned()],
                ..Entity::default()
            }),
            check: Some(Check {
                metadata: Some(ObjectMeta::named("default", "check-http")),
                status,
                subscriptions: vec!["web".to_owned()],
                history: history
                    .iter()
                    .map(|status| cairn_api::model::CheckHistory {
                        status: *status,
                        executed: 1,
                    })
                    .collect(),
                ..Check::default()
            }),
            ..Event::default()
        }
    }

    #[tokio::test]
    async fn events_are_marked_and_resolutions_expire_their_entries() {
        let (_dir, resources) = resources().await;
        let (silences, task) = Silences::start(resources.clone()).await.unwrap();
        put(
            &resources,
            Silenced {
                subscription: "web".to_owned(),
                expire_on_resolve: true,
                ..Silenced::default()
            },
        )
        .await;
        let revision = put(
            &resources,
            Silenced {
                check: "check-http".to_owned(),
                begin: crate::clock::unix_now() + 3600,
                ..Silenced::default()
            },
        )
        .await;
        silences.wait_for(revision).await;
        assert_eq!(silences.in_namespace("default").len(), 2);

        let mut failing = event(2, &[2]);
        silences
            .mark(Some(&resources), "default", &mut failing)
            .await;
        let check = failing.check.unwrap();
        assert!(check.is_silenced);
        assert_eq!(check.silenced, ["web:*"], "the scheduled one has not begun");

        let mut resolved = event(0, &[2, 0]);
        silences
            .mark(Some(&resources), "default", &mut resolved)
            .await;
        let check = resolved.check.unwrap();
        assert!(!check.is_silenced, "the resolution is handled");
        assert!(check.silenced.is_empty());
        let gone = resources
            .get(Kind::Silenced, "default", "web:*")
            .await
            .unwrap();
        assert!(gone.is_none(), "expire_on_resolve deleted the entry");
        task.abort();
    }

    #[tokio::test]
    async fn the_sweep_deletes_expired_entries_only() {
        let (_dir, resources) = resources().await;
        let (silences, task) = Silences::start(resources.clone()).await.unwrap();
        let now = crate::clock::unix_now();
        put(
            &resources,
            Silenced {
                subscription: "old".to_owned(),
                begin: now - 100,
                expire: 10,
                expire_at: now - 90,
                ..Silenced::default()
            },
        )
        .await;
        let revision = put(
            &resources,
            Silenced {
                subscription: "forever".to_owned(),
                begin: now - 100,
                ..Silenced::default()
            },
        )
        .await;
        silences.wait_for(revision).await;
        assert_eq!(silences.sweep(&resources, now).await, 1);
        let left: Vec<_> = resources
            .list(Kind::Silenced, Some("default"), None, 0)
            .await
            .unwrap()
            .0
            .into_iter()
            .map(|(_, stored)| stored.resource.metadata.name)
            .collect();
        assert_eq!(left, ["forever:*"]);
        task.abort();
    }
}
