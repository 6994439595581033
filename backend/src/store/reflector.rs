//! One list-then-watch loop for every view the backend keeps of a part of the store (in the
//! manner of kube-runtime's reflector): the auth view, the agent revocations, the members and
//! presence of coordination, and the scheduler's checks, hooks and events.
//!
//! A [`View`] knows how to load itself and apply a change; the [`Reflector`] owns the rest:
//! load, watch from the revision read before the load (so the watch replays whatever the load
//! missed: applying a change twice leaves a view as applying it once), apply changes in order,
//! and load again when the watch falls behind (a compacted revision) or ends. Failures are
//! retried with backoff (250 ms doubling to 5 s, equal jitter), until shutdown or until the
//! store closes. The reflector holds one watch stream and nothing else; what a view holds is
//! the view's to bound.

use std::sync::Arc;
use std::time::Duration;

use cairn_api::backoff::{Backoff, Jitter};
use futures::stream::BoxStream;
use futures::StreamExt;

use super::resources::{ResourceError, Resources};
use super::{Revision, Store, StoreError, WatchEvent};
use crate::shutdown::{self, Shutdown};

/// The first retry after a failed load or watch.
pub const RETRY_BASE: Duration = Duration::from_millis(250);
/// The longest wait between retries.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// What a reflector keeps current.
#[async_trait::async_trait]
pub trait View: Send {
    /// Loads the view afresh and returns the revision to watch from. Read the revision
    /// *before* listing (or take a single listing's own revision).
    ///
    /// # Errors
    /// A store failure; the reflector retries ([`StoreError::Closed`] stops it).
    async fn reload(&mut self, store: &dyn Store) -> Result<Revision, StoreError>;

    /// Applies one change the watch saw, in revision order.
    fn apply(&mut self, change: &WatchEvent);
}

/// A view shared behind an `Arc` (one writer, the reflector's task; many readers) and loaded
/// from typed resources: the auth view, the silenced entries.
#[async_trait::async_trait]
pub trait SharedView: Send + Sync + 'static {
    /// Loads the view afresh and returns the revision it was read at (see [`View::reload`]).
    ///
    /// # Errors
    /// A store failure or a record that does not decode; the reflector retries.
    async fn reload(&self, resources: &Resources) -> Result<Revision, ResourceError>;

    /// Applies one change, in revision order.
    fn apply(&self, change: &WatchEvent);
}

/// Keeps `view`, loaded at `revision`, current with the keys under `prefix` for as long as the
/// backend runs: the task is aborted, not asked, at shutdown.
pub fn keep_current<V: SharedView>(
    view: Arc<V>,
    resources: Resources,
    prefix: impl Into<String>,
    what: &'static str,
    revision: Revision,
) -> tokio::task::JoinHandle<()> {
    let reflector = Reflector::new(Arc::clone(resources.store()), prefix, what).loaded_at(revision);
    let (_, never) = crate::shutdown::channel();
    tokio::spawn(reflector.run(Shared { view, resources }, never))
}

/// A [`SharedView`] as a [`View`].
struct Shared<V> {
    view: Arc<V>,
    resources: Resources,
}

#[async_trait::async_trait]
impl<V: SharedView> View for Shared<V> {
    async fn reload(&mut self, _: &dyn Store) -> Result<Revision, StoreError> {
        self.view
            .reload(&self.resources)
            .await
            .map_err(|err| match err {
                ResourceError::Store(err) => err,
                corrupt => StoreError::Backend(Box::new(corrupt)),
            })
    }

    fn apply(&mut self, change: &WatchEvent) {
        self.view.apply(change);
    }
}

/// Keeps a [`View`] current with one prefix of the store.
pub struct Reflector {
    store: Arc<dyn Store>,
    prefix: String,
    what: &'static str,
    backoff: Backoff,
    /// A revision the view was loaded at by its owner: the first sync watches from it
    /// instead of loading again.
    loaded_at: Option<Revision>,
    changes: Option<BoxStream<'static, Result<WatchEvent, StoreError>>>,
}

impl std::fmt::Debug for Reflector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reflector")
            .field("prefix", &self.prefix)
            .field("what", &self.what)
            .field("watching", &self.changes.is_some())
            .finish_non_exhaustive()
    }
}

impl Reflector {
    /// A reflector of the keys under `prefix`; `what` names the view in logs.
    pub fn new(store: Arc<dyn Store>, prefix: impl Into<String>, what: &'static str) -> Reflector {
        Reflector {
            store,
            prefix: prefix.into(),
            what,
            backoff: Backoff::new(RETRY_BASE, RETRY_MAX, Jitter::Equal),
            loaded_at: None,
            changes: None,
        }
    }

    /// The view was loaded already (by its owner, to report a failed start), at `revision`:
    /// the first [`Reflector::sync`] watches from there.
    pub fn loaded_at(mut self, revision: Revision) -> Reflector {
        self.loaded_at = Some(revision);
        self
    }

    /// Loads `view` (unless it is current) and opens the watch, retrying with backoff until
    /// both succeed. `false` when shutdown was requested or the store closed: stop.
    pub async fn sync(&mut self, view: &mut dyn View, shutdown: &mut Shutdown) -> bool {
        loop {
            if self.changes.is_some() {
                return true;
            }
            let revision = match self.loaded_at.take() {
                Some(revision) => revision,
                None => match view.reload(self.store.as_ref()).await {
                    Ok(revision) => revision,
                    Err(StoreError::Closed) => return false,
                    Err(err) => {
                        tracing::warn!(view = self.what, error = %err, "cannot load the view; retrying");
                        if self.pause(shutdown).await {
                            return false;
                        }
                        continue;
                    }
                },
            };
            match self.store.watch(&self.prefix, revision).await {
                Ok(changes) => {
                    self.changes = Some(changes);
                    self.backoff.reset();
                    return true;
                }
                Err(StoreError::Closed) => return false,
                Err(err) => {
                    tracing::warn!(view = self.what, error = %err, "cannot watch the store; loading again");
                    if self.pause(shutdown).await {
                        return false;
                    }
                }
            }
        }
    }

    /// The next change. `None` when there is no watch, or the watch fell behind or ended: the
    /// next [`Reflector::sync`] loads the view again. Cancel-safe (a change is never lost to a
    /// `select!` that picked another branch).
    pub async fn change(&mut self) -> Option<WatchEvent> {
        let changes = self.changes.as_mut()?;
        match changes.next().await {
            Some(Ok(change)) => Some(change),
            Some(Err(err)) => {
                tracing::warn!(view = self.what, error = %err, "the view fell behind the store; loading again");
                self.changes = None;
                None
            }
            None => {
                tracing::debug!(view = self.what, "the watch ended; loading again");
                self.changes = None;
                None
            }
        }
    }

    /// Keeps `view` current until shutdown is requested or the store closes.
    pub async fn run(mut self, mut view: impl View, mut shutdown: Shutdown) {
        while self.sync(&mut view, &mut shutdown).await {
            loop {
                let change = tokio::select! {
                    biased;
                    () = shutdown::requested(&mut shutdown) => return,
                    change = self.change() => change,
                };
                match change {
                    Some(change) => view.apply(&change),
                    None => break,
                }
            }
        }
    }

    /// Waits out the next backoff delay; `true` when shutdown was requested meanwhile.
    async fn pause(&mut self, shutdown: &mut Shutdown) -> bool {
        let delay = self.backoff.next_delay();
        tokio::select! {
            () = shutdown::requested(shutdown) => true,
            () = tokio::time::sleep(delay) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::{Precondition, RedbStore};

    /// A view of `v/` as a map, counting its loads.
    #[derive(Default)]
    struct Map {
        entries: BTreeMap<String, Vec<u8>>,
        loads: usize,
    }

    #[async_trait::async_trait]
    impl View for Map {
        async fn reload(&mut self, store: &dyn Store) -> Result<Revision, StoreError> {
            let revision = store.revision().await?;
            let page = store.list("v/", None, 0).await?;
            self.entries = page
                .entries
                .into_iter()
                .map(|entry| (entry.key, entry.value))
                .collect();
            self.loads += 1;
            Ok(revision)
        }

        fn apply(&mut self, change: &WatchEvent) {
            match change {
                WatchEvent::Put(entry) => {
                    self.entries.insert(entry.key.clone(), entry.value.clone());
                }
                WatchEvent::Delete { key, .. } => {
                    self.entries.remove(key);
                }
            }
        }
    }

    #[tokio::test]
    async fn a_view_is_loaded_then_follows_every_change_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path().join("s.redb")).unwrap());
        store
            .put("v/a", b"1".to_vec(), Precondition::None)
            .await
            .unwrap();
        store
            .put("other/x", b"x".to_vec(), Precondition::None)
            .await
            .unwrap();
        let (_trigger, mut shutdown) = shutdown::channel();
        let mut reflector = Reflector::new(Arc::clone(&store), "v/", "test");
        let mut view = Map::default();
        assert!(reflector.sync(&mut view, &mut shutdown).await);
        assert_eq!(view.entries.keys().collect::<Vec<_>>(), ["v/a"]);
        store
            .put("v/b", b"2".to_vec(), Precondition::None)
            .await
            .unwrap();
        store.delete("v/a", Precondition::None).await.unwrap();
        for _ in 0..2 {
            let change = tokio::time::timeout(Duration::from_secs(5), reflector.change())
                .await
                .expect("a change in time")
                .expect("the watch is open");
            view.apply(&change);
        }
        assert_eq!(view.entries.keys().collect::<Vec<_>>(), ["v/b"]);
        assert_eq!(view.loads, 1);
        // Synced already: no second load.
        assert!(reflector.sync(&mut view, &mut shutdown).await);
        assert_eq!(view.loads, 1);
    }

    #[tokio::test]
    async fn a_loaded_view_is_watched_from_its_revision_without_loading_again() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path().join("s.redb")).unwrap());
        let mut view = Map::default();
        let revision = view.reload(store.as_ref()).await.unwrap();
        // Written between the owner's load and the reflector's start: replayed by the watch.
        store
            .put("v/late", b"1".to_vec(), Precondition::None)
            .await
            .unwrap();
        let (_trigger, mut shutdown) = shutdown::channel();
        let mut reflector = Reflector::new(Arc::clone(&store), "v/", "test").loaded_at(revision);
        assert!(reflector.sync(&mut view, &mut shutdown).await);
        let change = tokio::time::timeout(Duration::from_secs(5), reflector.change())
            .await
            .unwrap()
            .unwrap();
        view.apply(&change);
        assert_eq!(view.entries.keys().collect::<Vec<_>>(), ["v/late"]);
        assert_eq!(view.loads, 1);
    }

    #[tokio::test]
    async fn run_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path().join("s.redb")).unwrap());
        let (trigger, shutdown) = shutdown::channel();
        let task = tokio::spawn(Reflector::new(store, "v/", "test").run(Map::default(), shutdown));
        trigger.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops in time")
            .expect("did not panic");
    }
}
