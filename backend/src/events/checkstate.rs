//! What the next result of a check needs from the last stored one, kept in memory by store
//! revision so that ingestion does not decode the stored event every time.
//!
//! [`crate::events::rules::process_event`] reads only the previous check's history, occurrences,
//! watermark, `last_ok` and state. The cache holds that much per event key together with the
//! store revision it was written at; a lookup names the revision the store has now, so a hit is
//! exactly what decoding the stored event would give, whoever wrote it (another request, another
//! backend on a shared store, a DELETE). A miss costs one decode, as without the cache.
//!
//! It also serialises the writers of one event key inside this process ([`CheckStateCache::
//! write_lock`]): results for one check that arrive together are stored one after the other
//! instead of racing on the revision precondition, so a burst never exhausts the retries. Writers
//! in other processes (backends on a shared store) are still caught by the precondition.

use std::collections::HashMap;
use std::sync::Mutex;

use cairn_api::model::{Check, Event};

use crate::store::Revision;

/// How many event keys the cache holds by default (about 0.5 KiB each with a full history).
pub(crate) const DEFAULT_CAPACITY: usize = 100_000;

/// Check state of the last stored event per event key (`res/events/<ns>/<entity>/<check>`).
#[derive(Debug)]
pub(crate) struct CheckStateCache {
    entries: Mutex<HashMap<String, (Revision, Check)>>,
    capacity: usize,
    writers: Box<[tokio::sync::Mutex<()>]>,
}

/// How many write locks the event keys are spread over: enough that two busy keys rarely share
/// one, few enough to cost nothing (a lock is a few words).
const WRITE_STRIPES: usize = 1024;

impl CheckStateCache {
    /// An empty cache holding at most `capacity` keys (at least 1).
    pub(crate) fn new(capacity: usize) -> CheckStateCache {
        CheckStateCache {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            writers: (0..WRITE_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// Waits for the right to read-process-write the event under `key` in this process; held
    /// across the read of the previous event and the guarded write of the new one.
    pub(crate) async fn write_lock(&self, key: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        // The remainder is below WRITE_STRIPES, so it fits a usize on every target.
        let stripe = usize::try_from(hasher.finish() % WRITE_STRIPES as u64).unwrap_or(0);
        self.writers[stripe].lock().await
    }

    /// The previous event for `key` as [`crate::events::rules::process_event`] needs it, when the cache
    /// holds it at exactly `revision`.
    pub(crate) fn previous(&self, key: &str, revision: Revision) -> Option<Event> {
        let entries = self.lock();
        let (cached_revision, check) = entries.get(key)?;
        (*cached_revision == revision).then(|| Event {
            check: Some(check.clone()),
            ..Event::default()
        })
    }

    /// Remembers the check state of `event`, stored at `revision` under `key`.
    ///
    /// Keeps the newer revision when two writers race; drops an arbitrary key when full.
    pub(crate) fn remember(&self, key: &str, revision: Revision, event: &Event) {
        let Some(check) = event.check.as_ref() else {
            return;
        };
        let state = Check {
            history: check.history.clone(),
            occurrences: check.occurrences,
            occurrences_watermark: check.occurrences_watermark,
            last_ok: check.last_ok,
            state: check.state.clone(),
            ..Check::default()
        };
        let mut entries = self.lock();
        if let Some((cached_revision, cached)) = entries.get_mut(key) {
            if *cached_revision < revision {
                *cached_revision = revision;
                *cached = state;
            }
            return;
        }
        if entries.len() >= self.capacity {
            if let Some(victim) = entries.keys().next().cloned() {
                entries.remove(&victim);
            }
        }
        entries.insert(key.to_owned(), (revision, state));
    }

    #[cfg(test)]
    /// How many keys the cache holds.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Revision, Check)>> {
        // The map is consistent after every statement, so a panic elsewhere cannot corrupt it.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for CheckStateCache {
    fn default() -> Self {
        CheckStateCache::new(DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::rules::process_event;
    use cairn_api::meta::ObjectMeta;
    use cairn_api::model::Entity;

    fn result(status: u32, executed: i64) -> Event {
        Event {
            entity: Some(Entity {
                metadata: Some(ObjectMeta::named("default", "web-1")),
                ..Entity::default()
            }),
            check: Some(Check {
                metadata: Some(ObjectMeta::named("default", "disk")),
                status,
                executed,
                output: "some output".to_owned(),
                interval: 60,
                ..Check::default()
            }),
            ..Event::default()
        }
    }

    #[test]
    fn a_hit_processes_exactly_like_the_full_previous_event() {
        let cache = CheckStateCache::new(10);
        let mut full: Option<Event> = None;
        for (revision, status) in [0u32, 0, 2, 2, 1, 0, 2].into_iter().enumerate() {
            let revision = revision as u64 + 1;
            let previous = full
                .as_ref()
                .map(|_| cache.previous("k", revision - 1).expect("cached"));
            let from_cache =
                process_event(previous.as_ref(), result(status, 100 + revision as i64), 1)
                    .expect("valid");
            let from_full = process_event(full.as_ref(), result(status, 100 + revision as i64), 1)
                .expect("valid");
            let (mut a, mut b) = (from_cache.clone(), from_full.clone());
            a.id.clear();
            b.id.clear();
            assert_eq!(a, b, "revision {revision}");
            cache.remember("k", revision, &from_full);
            full = Some(from_full);
        }
    }

    #[test]
    fn another_revision_is_a_miss() {
        let cache = CheckStateCache::new(10);
        let event = process_event(None, result(2, 5), 1).expect("valid");
        cache.remember("k", 7, &event);
        assert!(cache.previous("k", 7).is_some());
        assert!(cache.previous("k", 8).is_none());
        assert!(cache.previous("other", 7).is_none());
        // An older write arriving late does not replace the newer state.
        cache.remember(
            "k",
            3,
            &process_event(None, result(0, 5), 1).expect("valid"),
        );
        let kept = cache.previous("k", 7).expect("still cached");
        assert_eq!(kept.check.expect("check").state, "failing");
    }

    #[tokio::test]
    async fn one_key_has_one_writer_at_a_time() {
        let cache = CheckStateCache::new(10);
        let held = cache.write_lock("k").await;
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), cache.write_lock("k"))
                .await
                .is_err(),
            "a second writer of the same key got in"
        );
        drop(held);
        let _again = cache.write_lock("k").await;
    }

    #[test]
    fn capacity_is_a_bound() {
        let cache = CheckStateCache::new(3);
        let event = process_event(None, result(0, 5), 1).expect("valid");
        for key in 0..10 {
            cache.remember(&format!("k{key}"), 1, &event);
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.previous("k9", 1).is_some());
    }
}
