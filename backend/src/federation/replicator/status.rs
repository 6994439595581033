//! A replicator's record: the revision it has replicated up to (where it resumes after a
//! restart) and how it is doing (state, errors, counts, the last resync).
//!
//! One record per replicator lives in the store at `federation/replicators/<name>` — outside
//! `res/`, so it is no resource — written by the replicator's task at most once a second while
//! something changes, and at once when its state changes. The status API reads it from there.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use cairn_api::model::Replicator;

use crate::store::keyspace;
use crate::store::{Precondition, Revision, Store, StoreError};

/// The most per-resource errors a record keeps (the most recent).
const RESOURCE_ERRORS_KEPT: usize = 50;

/// How often, at most, a record is written while only counts and the revision move.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How a replicator is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ReplicatorState {
    /// Not started yet (no record).
    #[default]
    Starting,
    /// A full resync runs, or changes wait to be pushed.
    Syncing,
    /// Caught up: every change seen was pushed.
    Ok,
    /// The downstream failed; waiting before the next attempt (`next_retry_at`), or making
    /// it (the state stays until an attempt succeeds).
    BackingOff,
    /// The replicator cannot run as defined (its cluster is not registered or unusable); it
    /// starts again when the definition changes.
    Error,
    /// The replicator was deleted; its copies are being deleted from the downstream.
    Deleting,
}

/// An error and when it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ErrorNote {
    /// What failed.
    pub message: String,
    /// When, unix seconds.
    pub at: u64,
}

/// An error about one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResourceErrorNote {
    /// The gateway's key of the resource (`res/<plural>/<namespace>/<name>`).
    pub resource: String,
    /// What the downstream said.
    pub message: String,
    /// When, unix seconds.
    pub at: u64,
}

/// Counters since the replicator's record was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Counts {
    /// Copies written.
    pub puts: u64,
    /// Copies deleted.
    pub deletes: u64,
    /// Failures: per-resource refusals and downstream failures.
    pub errors: u64,
    /// Full resyncs completed.
    pub resyncs: u64,
}

/// The last completed full resync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct ResyncNote {
    /// When it ended, unix seconds.
    pub at: u64,
    /// How long it took, milliseconds.
    pub duration_ms: u64,
    /// Copies created or rewritten.
    pub puts: u64,
    /// Copies deleted.
    pub deletes: u64,
    /// Copies that already matched.
    pub unchanged: u64,
    /// Resources the downstream refused.
    pub errors: u64,
}

/// The stored record of one replicator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Record {
    /// The replicator's name.
    pub(crate) name: String,
    /// The definition `revision` was reached under: a different one asks for a full resync
    /// (and, for another cluster or type, removing the copies made under this one).
    pub(crate) spec: Replicator,
    /// The cluster's API URLs `revision` was reached with (another cluster behind the same
    /// name asks for a full resync).
    pub(crate) cluster_urls: Vec<String>,
    /// The label value on this replicator's copies.
    pub(crate) label: String,
    /// Every change of the gateway up to this revision has been pushed (0: never synced).
    pub(crate) revision: Revision,
    /// How it is doing.
    pub(crate) state: ReplicatorState,
    /// Changes seen and not yet pushed.
    pub(crate) pending: u64,
    /// When the oldest of them was seen, unix milliseconds.
    pub(crate) oldest_pending_ms: Option<u64>,
    /// The last error of any kind.
    pub(crate) last_error: Option<ErrorNote>,
    /// The resources the downstream refuses now, most recent first.
    pub(crate) resource_errors: Vec<ResourceErrorNote>,
    /// Counters.
    pub(crate) counts: Counts,
    /// The last completed resync.
    pub(crate) last_resync: Option<ResyncNote>,
    /// While backing off: when the next attempt is, unix seconds.
    pub(crate) next_retry_at: Option<u64>,
    /// When the record was last written, unix seconds.
    pub(crate) updated_at: u64,
}

/// A replicator's status, as `GET /api/cairn/v1/replicators[/{name}]` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReplicatorStatus {
    /// The replicator.
    pub name: String,
    /// The destination cluster.
    pub cluster: String,
    /// The replicated type's group.
    pub api_version: String,
    /// The replicated type.
    pub resource: String,
    /// Only this namespace; empty for all.
    pub namespace: String,
    /// Only resources matching this; empty for all.
    pub label_selector: String,
    /// The `cairn.io/replicated-from` value on its copies.
    pub label: String,
    /// How it is doing.
    pub state: ReplicatorState,
    /// Every change up to this gateway revision has been pushed.
    pub last_revision: Revision,
    /// The gateway's revision now.
    pub gateway_revision: Revision,
    /// `gateway_revision - last_revision`: every write since, including writes this
    /// replicator does not copy (so only `pending` says whether it is behind).
    pub lag_revisions: u64,
    /// Age of the oldest change not yet pushed, seconds (0 when none waits).
    pub lag_seconds: f64,
    /// Changes seen and not yet pushed.
    pub pending: u64,
    /// The last error of any kind.
    pub last_error: Option<ErrorNote>,
    /// The resources the downstream refuses now.
    pub resource_errors: Vec<ResourceErrorNote>,
    /// Counters.
    pub counts: Counts,
    /// The last completed resync.
    pub last_resync: Option<ResyncNote>,
    /// While backing off: when the next attempt is, unix seconds.
    pub next_retry_at: Option<u64>,
    /// When the status was last recorded, unix seconds (0: never).
    pub updated_at: u64,
}

/// The store key of a replicator's record.
pub(crate) fn status_key(name: &str) -> String {
    format!("{}{name}", keyspace::REPLICATOR_STATUS)
}

/// Reads a replicator's record; an unreadable one counts as none (it is rewritten).
///
/// # Errors
/// Store failures.
pub(crate) async fn load(store: &dyn Store, name: &str) -> Result<Option<Record>, StoreError> {
    Ok(store
        .get(&status_key(name))
        .await?
        .and_then(|entry| decode(&entry.key, &entry.value)))
}

/// Decodes a stored record; `None` (and a warning) when it does not decode.
pub(crate) fn decode(key: &str, value: &[u8]) -> Option<Record> {
    match serde_json::from_slice(value) {
        Ok(record) => Some(record),
        Err(err) => {
            tracing::warn!(%key, error = %err, "unreadable replicator record ignored");
            None
        }
    }
}

/// Unix milliseconds now.
pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The status of a replicator from its definition (`None` once deleted) and record (`None`
/// before its task first wrote one).
pub(crate) fn status_of(
    name: &str,
    spec: Option<&Replicator>,
    record: Option<&Record>,
    gateway_revision: Revision,
    now_ms: u64,
) -> ReplicatorStatus {
    let fallback = Record::default();
    let record = record.unwrap_or(&fallback);
    let spec = spec.unwrap_or(&record.spec);
    let lag_seconds = match (record.pending, record.oldest_pending_ms) {
        (0, _) | (_, None) => 0.0,
        (_, Some(since)) => now_ms.saturating_sub(since) as f64 / 1000.0,
    };
    ReplicatorStatus {
        name: name.to_owned(),
        cluster: spec.cluster.clone(),
        api_version: spec.api_version.clone(),
        resource: spec.resource.clone(),
        namespace: spec.namespace.clone(),
        label_selector: spec.label_selector.clone(),
        label: record.label.clone(),
        state: record.state,
        last_revision: record.revision,
        gateway_revision,
        lag_revisions: gateway_revision.saturating_sub(record.revision),
        lag_seconds,
        pending: record.pending,
        last_error: record.last_error.clone(),
        resource_errors: record.resource_errors.clone(),
        counts: record.counts,
        last_resync: record.last_resync,
        next_retry_at: record.next_retry_at,
        updated_at: record.updated_at,
    }
}

// === impl StatusBook ===

/// A replicator's record in memory, written to the store when it matters: the only writer of
/// one record is the task that holds its book.
pub(crate) struct StatusBook {
    store: Arc<dyn Store>,
    key: String,
    /// The record as it is now.
    pub(crate) record: Record,
    dirty: bool,
    flushed_at: Option<tokio::time::Instant>,
}

impl StatusBook {
    /// A book for `record` (loaded, or a new one).
    pub(crate) fn new(store: Arc<dyn Store>, record: Record) -> StatusBook {
        StatusBook {
            key: status_key(&record.name),
            store,
            record,
            dirty: true,
            flushed_at: None,
        }
    }

    /// Sets the state; a change is written at the next flush.
    pub(crate) fn set_state(&mut self, state: ReplicatorState) {
        if self.record.state != state {
            self.record.state = state;
            if state != ReplicatorState::BackingOff {
                self.record.next_retry_at = None;
            }
            self.dirty = true;
        }
    }

    /// Records an error of the replicator as a whole.
    pub(crate) fn error(&mut self, message: String) {
        self.record.counts.errors += 1;
        self.record.last_error = Some(ErrorNote {
            message,
            at: crate::clock::unix_now_u64(),
        });
        self.dirty = true;
    }

    /// Enters backoff after `message`, the next attempt `delay` from now.
    pub(crate) fn backing_off(&mut self, message: String, delay: Duration) {
        self.error(message);
        self.set_state(ReplicatorState::BackingOff);
        self.record.next_retry_at = Some(crate::clock::unix_now_u64() + delay.as_secs().max(1));
    }

    /// Records the downstream's refusal of one resource (replacing an earlier one for it).
    pub(crate) fn resource_error(&mut self, resource: &str, message: String) {
        let at = crate::clock::unix_now_u64();
        self.record.counts.errors += 1;
        self.record.last_error = Some(ErrorNote {
            message: format!("{resource}: {message}"),
            at,
        });
        self.record
            .resource_errors
            .retain(|note| note.resource != resource);
        self.record.resource_errors.insert(
            0,
            ResourceErrorNote {
                resource: resource.to_owned(),
                message,
                at,
            },
        );
        self.record.resource_errors.truncate(RESOURCE_ERRORS_KEPT);
        self.dirty = true;
    }

    /// Whether the downstream's refusal of `resource` with `message` is already recorded.
    pub(crate) fn has_resource_error(&self, resource: &str, message: &str) -> bool {
        self.record
            .resource_errors
            .iter()
            .any(|note| note.resource == resource && note.message == message)
    }

    /// Forgets the refusal of a resource that has since been pushed (or gone).
    pub(crate) fn resource_ok(&mut self, resource: &str) {
        let before = self.record.resource_errors.len();
        self.record
            .resource_errors
            .retain(|note| note.resource != resource);
        if self.record.resource_errors.len() != before {
            self.dirty = true;
        }
    }

    /// Counts a write.
    pub(crate) fn put_done(&mut self) {
        self.record.counts.puts += 1;
        self.dirty = true;
    }

    /// Counts a delete.
    pub(crate) fn delete_done(&mut self) {
        self.record.counts.deletes += 1;
        self.dirty = true;
    }

    /// Sets the replicated revision and what waits.
    pub(crate) fn progress(&mut self, revision: Revision, pending: u64, oldest_ms: Option<u64>) {
        let oldest_ms = oldest_ms.filter(|_| pending > 0);
        if (
            self.record.revision,
            self.record.pending,
            self.record.oldest_pending_ms,
        ) != (revision, pending, oldest_ms)
        {
            self.record.revision = revision;
            self.record.pending = pending;
            self.record.oldest_pending_ms = oldest_ms;
            self.dirty = true;
        }
    }

    /// Records a completed resync reached at `revision` under `spec` and `cluster_urls`.
    pub(crate) fn resynced(
        &mut self,
        spec: &Replicator,
        cluster_urls: &[String],
        revision: Revision,
        note: ResyncNote,
    ) {
        self.record.spec = spec.clone();
        self.record.cluster_urls = cluster_urls.to_vec();
        self.record.revision = revision;
        self.record.pending = 0;
        self.record.oldest_pending_ms = None;
        self.record.counts.resyncs += 1;
        self.record.last_resync = Some(note);
        self.dirty = true;
    }

    /// Writes the record when it changed since the last write.
    pub(crate) async fn flush(&mut self) {
        if !self.dirty {
            return;
        }
        self.record.updated_at = crate::clock::unix_now_u64();
        let value = serde_json::to_vec(&self.record).expect("a record always serializes");
        match self.store.put(&self.key, value, Precondition::None).await {
            Ok(_) => {
                self.dirty = false;
                self.flushed_at = Some(tokio::time::Instant::now());
            }
            // The next flush tries again.
            Err(err) => tracing::warn!(error = %err, "cannot record the replicator's status"),
        }
    }

    /// [`StatusBook::flush`], unless the last write is less than [`FLUSH_INTERVAL`] old.
    pub(crate) async fn flush_soon(&mut self) {
        let recent = self
            .flushed_at
            .is_some_and(|at| at.elapsed() < FLUSH_INTERVAL);
        if !recent {
            self.flush().await;
        }
    }

    /// Deletes the record (the replicator and its copies are gone).
    ///
    /// # Errors
    /// Store failures.
    pub(crate) async fn remove(self) -> Result<(), StoreError> {
        self.store
            .delete(&self.key, Precondition::None)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &std::path::Path) -> Arc<dyn Store> {
        Arc::new(crate::store::RedbStore::open(dir.join("store.redb")).unwrap())
    }

    fn record(name: &str) -> Record {
        Record {
            name: name.to_owned(),
            spec: Replicator {
                cluster: "alpha".into(),
                resource: "CheckConfig".into(),
                ..Replicator::default()
            },
            label: format!("gw/{name}"),
            ..Record::default()
        }
    }

    #[test]
    fn resource_errors_are_kept_per_resource_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = StatusBook::new(store(dir.path()), record("r"));
        book.resource_error("res/checks/default/a", "bad".into());
        book.resource_error("res/checks/default/b", "worse".into());
        book.resource_error("res/checks/default/a", "still bad".into());
        let listed: Vec<_> = book
            .record
            .resource_errors
            .iter()
            .map(|note| (note.resource.as_str(), note.message.as_str()))
            .collect();
        assert_eq!(
            listed,
            [
                ("res/checks/default/a", "still bad"),
                ("res/checks/default/b", "worse")
            ]
        );
        assert_eq!(book.record.counts.errors, 3);
        assert_eq!(
            book.record.last_error.as_ref().unwrap().message,
            "res/checks/default/a: still bad"
        );
        book.resource_ok("res/checks/default/a");
        assert_eq!(book.record.resource_errors.len(), 1);
        for idx in 0..200 {
            book.resource_error(&format!("res/checks/default/{idx}"), "x".into());
        }
        assert_eq!(book.record.resource_errors.len(), RESOURCE_ERRORS_KEPT);
        assert_eq!(
            book.record.resource_errors[0].resource,
            "res/checks/default/199"
        );
    }

    #[test]
    fn backoff_sets_the_retry_time_and_leaving_it_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = StatusBook::new(store(dir.path()), record("r"));
        book.backing_off("alpha unreachable".into(), Duration::from_secs(4));
        assert_eq!(book.record.state, ReplicatorState::BackingOff);
        let retry = book.record.next_retry_at.unwrap();
        assert!(retry >= crate::clock::unix_now_u64() + 3, "{retry}");
        assert_eq!(
            book.record.last_error.as_ref().unwrap().message,
            "alpha unreachable"
        );
        book.set_state(ReplicatorState::Ok);
        assert_eq!(book.record.next_retry_at, None);
        // The last error stays for the operator to read.
        assert!(book.record.last_error.is_some());
    }

    #[tokio::test]
    async fn records_survive_in_the_store_and_are_written_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let mut book = StatusBook::new(Arc::clone(&store), record("r"));
        book.progress(42, 3, Some(1_000));
        book.put_done();
        book.flush().await;
        let written = store.revision().await.unwrap();
        book.flush().await;
        book.flush_soon().await;
        assert_eq!(store.revision().await.unwrap(), written, "nothing changed");
        book.progress(42, 3, Some(1_000));
        book.flush().await;
        assert_eq!(store.revision().await.unwrap(), written, "same progress");
        // A change within the flush interval waits for `flush_soon`'s next chance.
        book.delete_done();
        book.flush_soon().await;
        assert_eq!(store.revision().await.unwrap(), written);
        book.flush().await;
        assert!(store.revision().await.unwrap() > written);

        let loaded = load(store.as_ref(), "r").await.unwrap().unwrap();
        assert_eq!(loaded.revision, 42);
        assert_eq!(loaded.pending, 3);
        assert_eq!(loaded.counts.puts, 1);
        assert_eq!(loaded.counts.deletes, 1);
        assert_eq!(loaded.spec.resource, "CheckConfig");
        assert!(load(store.as_ref(), "other").await.unwrap().is_none());

        // Garbage at the key reads as no record.
        store
            .put(&status_key("bad"), b"not json".to_vec(), Precondition::None)
            .await
            .unwrap();
        assert!(load(store.as_ref(), "bad").await.unwrap().is_none());

        let book = StatusBook::new(Arc::clone(&store), loaded);
        book.remove().await.unwrap();
        assert!(load(store.as_ref(), "r").await.unwrap().is_none());
    }

    #[test]
    fn status_combines_the_definition_the_record_and_the_gateway_revision() {
        let mut stored = record("r");
        stored.revision = 90;
        stored.pending = 2;
        stored.oldest_pending_ms = Some(10_000);
        stored.state = ReplicatorState::Syncing;
        let current = Replicator {
            namespace: "default".into(),
            ..stored.spec.clone()
        };
        let status = status_of("r", Some(&current), Some(&stored), 100, 12_500);
        assert_eq!(
            status.namespace, "default",
            "the definition wins over the record"
        );
        assert_eq!(status.lag_revisions, 10);
        assert!((status.lag_seconds - 2.5).abs() < 1e-9);
        assert_eq!(status.state, ReplicatorState::Syncing);

        let starting = status_of("new", Some(&current), None, 100, 0);
        assert_eq!(starting.state, ReplicatorState::Starting);
        assert_eq!(starting.last_revision, 0);
        assert_eq!(starting.lag_seconds, 0.0);

        stored.state = ReplicatorState::Deleting;
        let deleting = status_of("r", None, Some(&stored), 100, 0);
        assert_eq!(
            deleting.cluster, "alpha",
            "a deleted one shows its recorded definition"
        );
        let json = serde_json::to_value(&deleting).unwrap();
        assert_eq!(json["state"], "deleting");
        assert_eq!(json["counts"]["puts"], 0);
    }
}
