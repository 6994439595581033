//! The store: keys and values under one global revision, guarded writes, listing by prefix and
//! watches that resume from a revision without gaps.
//!
//! [`Store`] is the one interface the rest of the backend uses (as `Arc<dyn Store>`).
//! [`RedbStore`] is the embedded implementation (one redb file, group commit); `EtcdStore`
//! (feature `etcd`) keeps the same keys under a prefix in etcd, with etcd's own revisions and
//! watches.
//! Both must pass the shared suite in `conformance` (compiled for tests, or public with the
//! `conformance` feature).
//! [`StoreHealth`] tracks whether a store that can become unreachable (etcd) answers.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
#[cfg(feature = "etcd")]
mod etcd;
mod health;
pub mod keyspace;
mod redb;
pub mod reflector;
pub mod resources;
pub mod sweep;

use futures::stream::BoxStream;

/// Real etcd members for the tests of other modules.
#[cfg(all(test, feature = "etcd"))]
pub(crate) use self::etcd::testing as etcd_testing;
#[cfg(feature = "etcd")]
pub use self::etcd::{EtcdConfig, EtcdError, EtcdStore, EtcdTls};
pub use self::health::{ProbeConfig, StoreHealth, StoreStatus};
pub use self::redb::{RedbStore, DEFAULT_CACHE_BYTES};

/// A global revision: strictly increasing, one per successful write.
///
/// The first write of a fresh store gets revision 1; 0 means "nothing written yet".
pub type Revision = u64;

/// A key with its value and the revisions that created and last modified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The full key.
    pub key: String,
    /// The value as written.
    pub value: Vec<u8>,
    /// The revision of the put that created the key (after its last delete, if any).
    pub create_revision: Revision,
    /// The revision of the last put of the key.
    pub mod_revision: Revision,
}

/// What must hold about a key for a write to go ahead (optimistic concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Write unconditionally.
    None,
    /// The key must not exist.
    Absent,
    /// The key's `mod_revision` must equal this revision.
    ///
    /// An absent key has `mod_revision` 0, so `Revision(0)` behaves like [`Precondition::Absent`].
    Revision(Revision),
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was created or updated; the entry is as of this write, so its `mod_revision` is
    /// the revision of the change.
    Put(Entry),
    /// The key was deleted at `revision`.
    Delete {
        /// The deleted key.
        key: String,
        /// The revision of the delete.
        revision: Revision,
    },
}

/// One page of a [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// The entries, in key order.
    pub entries: Vec<Entry>,
    /// The store's revision when the page was read; a watch from it misses nothing after the
    /// page.
    pub revision: Revision,
    /// Whether more keys under the prefix follow the last entry.
    pub more: bool,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The precondition did not hold.
    ///
    /// Expected under concurrent writers; the caller decides (409 or 412). Retrying the same
    /// write does not help: read the key again first. Carries the current `mod_revision`
    /// (0 if the key is absent).
    #[error("precondition failed for {key}: current revision {current}")]
    PreconditionFailed {
        /// The key whose precondition failed.
        key: String,
        /// The key's current `mod_revision`, 0 if it is absent.
        current: Revision,
    },
    /// The watch asked for a revision that was compacted away.
    ///
    /// Expected for a watcher that fell far behind. Retrying the watch does not help: list again
    /// and watch from the list's revision.
    #[error("revision {requested} is compacted; oldest kept is {oldest}")]
    Compacted {
        /// The first revision the watch needed.
        requested: Revision,
        /// The oldest revision the store can still replay.
        oldest: Revision,
    },
    /// The store was closed.
    ///
    /// Expected during shutdown; a retry does not help.
    #[error("store is closed")]
    Closed,
    /// The storage engine failed (I/O, corruption, a value too large).
    ///
    /// Unexpected. A retry may help for I/O errors; walk `source()` to decide.
    #[error("storage failure: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store cannot be reached or has no quorum (etcd down, a network partition, a lost
    /// majority of members), or it did not answer in time.
    ///
    /// Expected during outages; retry later, with a delay. A write that failed this way may or
    /// may not have taken effect. The source names the endpoints and the failed request.
    #[error("store is unreachable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The result type of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A key/value store with a global revision, guarded writes and gap-free watches.
///
/// Implementations: [`RedbStore`] (embedded) and, with the `etcd` feature, `EtcdStore`. Every implementation passes the `conformance`
/// suite.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The entry at `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Entry>>;

    /// Keys starting with `prefix`, strictly after `start_after` when given, at most `limit`
    /// (0 = no limit).
    ///
    /// # Guarantees
    ///
    /// One page is one consistent snapshot at `ListPage::revision`. Pages of a paged listing
    /// may come from different snapshots.
    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize)
        -> Result<ListPage>;

    /// Writes `value` at `key` when `precondition` holds and returns the new revision.
    ///
    /// # Guarantees
    ///
    /// The write is durable when this returns `Ok`.
    ///
    /// # Errors
    ///
    /// [`StoreError::PreconditionFailed`] when the precondition does not hold; nothing is
    /// written and no revision is used.
    async fn put(&self, key: &str, value: Vec<u8>, precondition: Precondition) -> Result<Revision>;

    /// Deletes `key` when `precondition` holds.
    ///
    /// Returns `Ok(Some(revision))` when the key was deleted, `Ok(None)` when it was absent (with
    /// [`Precondition::None`] or [`Precondition::Absent`]; an absent key uses no revision).
    ///
    /// # Errors
    ///
    /// [`StoreError::PreconditionFailed`] when the precondition does not hold.
    async fn delete(&self, key: &str, precondition: Precondition) -> Result<Option<Revision>>;

    /// Every change under `prefix` with revision > `after`, in revision order, then live
    /// changes, with no gap and no duplicate.
    ///
    /// # Errors
    ///
    /// [`StoreError::Compacted`] when changes after `after` are no longer kept, either at once or
    /// as a stream item when a slow consumer falls that far behind.
    ///
    /// # Caveats
    ///
    /// The stream ends (`None`) when the store closes, and right after it yields an `Err`: the
    /// caller lists again and starts a new watch. A slow consumer never blocks writers.
    async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<BoxStream<'static, Result<WatchEvent>>>;

    /// The current global revision: that of the last write, 0 for a store never written.
    async fn revision(&self) -> Result<Revision>;
}

// === impl WatchEvent ===

impl WatchEvent {
    /// The key that changed.
    pub fn key(&self) -> &str {
        match self {
            Self::Put(entry) => &entry.key,
            Self::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        match self {
            Self::Put(entry) => entry.mod_revision,
            Self::Delete { revision, .. } => *revision,
        }
    }
}

// === impl StoreError ===

impl StoreError {
    /// Wraps an engine error.
    pub(crate) fn backend(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(error))
    }

    /// Wraps the error of a store that could not be reached.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Unavailable(Box::new(error))
    }

    /// Whether the store could not be reached: an outage, not a fault; a later retry may work.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Counters of the store's commits, shown on `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Transactions committed (or attempted).
    pub commits: std::sync::atomic::AtomicU64,
    /// Writes in those transactions.
    pub writes: std::sync::atomic::AtomicU64,
    /// Time spent committing, microseconds (includes the fsync).
    pub commit_micros: std::sync::atomic::AtomicU64,
}

impl StoreStats {
    pub(crate) fn record(&self, writes: usize, elapsed: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.commits.fetch_add(1, Relaxed);
        self.writes
            .fetch_add(u64::try_from(writes).unwrap_or(u64::MAX), Relaxed);
        self.commit_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }
}
