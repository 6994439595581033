//! The conformance suite every [`Store`] implementation must pass.
//!
//! An implementation runs it by giving [`store_conformance_tests!`](crate::store_conformance_tests)
//! an expression that makes a fresh [`Harness`], from its own test module:
//!
//! ```ignore
//! #[cfg(test)]
//! mod tests {
//!     crate::store_conformance_tests!(MyHarness::new());
//! }
//! ```
//!
//! Each test gets its own harness, hence its own empty data.
//! The suite assumes it is the only writer to that data: revisions are checked to increase by
//! exactly one per write, relative to [`Store::revision`] at the start.
//! It does not assume that the first revision is 1, so a store with a shared revision counter
//! (etcd) can run it against a fresh key space.
//!
//! The module is compiled for tests, and is public with the `conformance` feature.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};

use super::{Entry, Precondition, Result, Revision, Store, StoreError, WatchEvent};

/// How long any single test may take before it is declared hung.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a watch may take to deliver its next event before the test fails.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Opens the store under test on one test's data.
pub trait Harness: Send + Sync {
    /// Opens the store.
    ///
    /// Called again after every handle of the previous store was dropped, it must open the same
    /// data (the reopen test relies on it).
    fn open(&self) -> BoxFuture<'_, Result<Arc<dyn Store>>>;
}

/// Expands to one `#[tokio::test]` per conformance check, each with a fresh harness from
/// `$harness` (an expression evaluated once per test, whose value implements [`Harness`]).
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! store_conformance_tests {
    ($harness:expr) => {
        $crate::store_conformance_tests!(@tests $harness;
            revision_counts_writes,
            get_put_delete,
            put_absent_on_existing_key_fails,
            put_with_stale_revision_fails,
            delete_preconditions,
            list_pages_in_key_order,
            list_prefixes_do_not_leak,
            watch_replays_history_then_live,
            watch_from_middle_revision_has_no_gap_or_duplicate,
            watch_filters_by_prefix,
            concurrent_puts_get_distinct_revisions,
            slow_watcher_does_not_block_writers,
            reopen_keeps_everything,
            watch_ends_when_store_is_dropped,
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $harness;
                $crate::store::conformance::$name(&harness).await;
            }
        )*
    };
}

/// Each write uses exactly one revision; failed preconditions and absent deletes use none.
pub async fn revision_counts_writes(harness: &(impl Harness + ?Sized)) {
    bounded("revision_counts_writes", async {
        let store = open(harness).await;
        let base = ok(store.revision().await);
        assert_eq!(put(&store, "rev/a", "1").await, base + 1);
        assert_eq!(put(&store, "rev/b", "1").await, base + 2);
        assert_eq!(put(&store, "rev/a", "2").await, base + 3);
        assert_eq!(
            ok(store.delete("rev/b", Precondition::None).await),
            Some(base + 4)
        );
        assert_eq!(ok(store.revision().await), base + 4);

        let refused = store
            .put("rev/a", b"3".to_vec(), Precondition::Absent)
            .await;
        expect_precondition_failed(refused, "rev/a", base + 3);
        assert_eq!(
            ok(store.delete("rev/missing", Precondition::None).await),
            None
        );
        assert_eq!(
            ok(store.revision().await),
            base + 4,
            "failed writes must not use a revision"
        );
    })
    .await;
}

/// Put, update, get, delete and re-create one key.
pub async fn get_put_delete(harness: &(impl Harness + ?Sized)) {
    bounded("get_put_delete", async {
        let store = open(harness).await;
        assert_eq!(ok(store.get("gpd/key").await), None);

        let created = put(&store, "gpd/key", "one").await;
        assert_eq!(
            ok(store.get("gpd/key").await),
            Some(entry("gpd/key", "one", created, created))
        );

        let updated = put(&store, "gpd/key", "two").await;
        assert!(updated > created);
        assert_eq!(
            ok(store.get("gpd/key").await),
            Some(entry("gpd/key", "two", created, updated)),
            "an update keeps create_revision and moves mod_revision"
        );

        let deleted = ok(store.delete("gpd/key", Precondition::None).await);
        assert_eq!(deleted, Some(updated + 1));
        assert_eq!(ok(store.get("gpd/key").await), None);

        let recreated = put(&store, "gpd/key", "three").await;
        assert_eq!(
            ok(store.get("gpd/key").await),
            Some(entry("gpd/key", "three", recreated, recreated)),
            "a key created again after a delete starts a new life"
        );

        let empty = ok(store.put("gpd/empty", Vec::new(), Precondition::None).await);
        assert_eq!(
            ok(store.get("gpd/empty").await),
            Some(entry("gpd/empty", "", empty, empty))
        );
    })
    .await;
}

/// `Absent` on an existing key fails with its current revision and writes nothing.
pub async fn put_absent_on_existing_key_fails(harness: &(impl Harness + ?Sized)) {
    bounded("put_absent_on_existing_key_fails", async {
        let store = open(harness).await;
        let created = ok(store
            .put("abs/key", b"first".to_vec(), Precondition::Absent)
            .await);
        let refused = store
            .put("abs/key", b"second".to_vec(), Precondition::Absent)
            .await;
        expect_precondition_failed(refused, "abs/key", created);
        assert_eq!(
            ok(store.get("abs/key").await),
            Some(entry("abs/key", "first", created, created))
        );
    })
    .await;
}

/// `Revision(r)` succeeds only when `r` is the key's `mod_revision` (0 for an absent key).
pub async fn put_with_stale_revision_fails(harness: &(impl Harness + ?Sized)) {
    bounded("put_with_stale_revision_fails", async {
        let store = open(harness).await;
        let first = put(&store, "cas/key", "one").await;
        let second = ok(store
            .put("cas/key", b"two".to_vec(), Precondition::Revision(first))
            .await);
        let stale = store
            .put("cas/key", b"three".to_vec(), Precondition::Revision(first))
            .await;
        expect_precondition_failed(stale, "cas/key", second);
        assert_eq!(
            ok(store.get("cas/key").await),
            Some(entry("cas/key", "two", first, second))
        );

        let missing = store
            .put("cas/missing", b"x".to_vec(), Precondition::Revision(second))
            .await;
        expect_precondition_failed(missing, "cas/missing", 0);
        let created = ok(store
            .put("cas/missing", b"x".to_vec(), Precondition::Revision(0))
            .await);
        assert_eq!(
            ok(store.get("cas/missing").await),
            Some(entry("cas/missing", "x", created, created)),
            "Revision(0) on an absent key behaves like Absent"
        );
    })
    .await;
}

/// Deletes honour their precondition and keep the key when it fails.
pub async fn delete_preconditions(harness: &(impl Harness + ?Sized)) {
    bounded("delete_preconditions", async {
        let store = open(harness).await;
        let first = put(&store, "del/key", "one").await;
        let second = put(&store, "del/key", "two").await;

        let stale = store.delete("del/key", Precondition::Revision(first)).await;
        expect_precondition_failed(stale, "del/key", second);
        let absent = store.delete("del/key", Precondition::Absent).await;
        expect_precondition_failed(absent, "del/key", second);
        assert!(
            ok(store.get("del/key").await).is_some(),
            "a failed delete must keep the key"
        );

        let deleted = ok(store
            .delete("del/key", Precondition::Revision(second))
            .await);
        assert_eq!(deleted, Some(second + 1));
        assert_eq!(ok(store.get("del/key").await), None);

        assert_eq!(ok(store.delete("del/key", Precondition::None).await), None);
        assert_eq!(
            ok(store.delete("del/key", Precondition::Absent).await),
            None
        );
        let gone = store
            .delete("del/key", Precondition::Revision(second))
            .await;
        expect_precondition_failed(gone, "del/key", 0);
    })
    .await;
}

/// Listing returns keys in order and pages with `start_after`, `limit` and `more`.
pub async fn list_pages_in_key_order(harness: &(impl Harness + ?Sized)) {
    bounded("list_pages_in_key_order", async {
        let store = open(harness).await;
        for key in [
            "list/c", "list/a", "list/e", "list/b", "list/d", "list", "lisz", "lisa",
        ] {
            put(&store, key, key).await;
        }
        let all = ["list/a", "list/b", "list/c", "list/d", "list/e"];

        let page = ok(store.list("list/", None, 0).await);
        assert_eq!(keys(&page.entries), all);
        assert!(!page.more);
        assert_eq!(page.revision, ok(store.revision().await));
        assert_eq!(page.entries[0].value, b"list/a");

        let check = |start_after: Option<&'static str>, limit, expected: &[&str], more| {
            let store = Arc::clone(&store);
            let expected: Vec<String> = expected.iter().map(|key| key.to_string()).collect();
            async move {
                let page = ok(store.list("list/", start_after, limit).await);
                assert_eq!(
                    (keys(&page.entries), page.more),
                    (expected, more),
                    "list(\"list/\", {start_after:?}, {limit})"
                );
            }
        };
        check(None, 2, &all[..2], true).await;
        check(Some("list/b"), 2, &all[2..4], true).await;
        check(Some("list/d"), 2, &all[4..], false).await;
        check(Some("list/c"), 2, &all[3..], false).await;
        check(Some("list/bb"), 1, &all[2..3], true).await;
        check(Some("a"), 0, &all, false).await;
        check(Some("list/e"), 0, &[], false).await;
        check(Some("zzz"), 3, &[], false).await;
        check(None, 5, &all, false).await;
    })
    .await;
}

/// A prefix matches by bytes: `a/` sees neither `ab/` nor `a`.
pub async fn list_prefixes_do_not_leak(harness: &(impl Harness + ?Sized)) {
    bounded("list_prefixes_do_not_leak", async {
        let store = open(harness).await;
        for key in ["a/1", "ab/1", "a", "a/2", "b/1", "a0"] {
            put(&store, key, key).await;
        }
        let list = |prefix: &'static str| {
            let store = Arc::clone(&store);
            async move { keys(&ok(store.list(prefix, None, 0).await).entries) }
        };
        assert_eq!(list("a/").await, ["a/1", "a/2"]);
        assert_eq!(list("ab/").await, ["ab/1"]);
        assert_eq!(list("b").await, ["b/1"]);
        assert_eq!(list("c").await, Vec::<String>::new());
        assert_eq!(list("").await, ["a", "a/1", "a/2", "a0", "ab/1", "b/1"]);
    })
    .await;
}

/// A watch from before the first write replays every change, then delivers live ones.
pub async fn watch_replays_history_then_live(harness: &(impl Harness + ?Sized)) {
    bounded("watch_replays_history_then_live", async {
        let store = open(harness).await;
        let base = ok(store.revision().await);
        let a1 = put(&store, "w/a", "1").await;
        let b1 = put(&store, "w/b", "1").await;
        let deleted = ok(store.delete("w/a", Precondition::None).await).expect("w/a exists");
        let b2 = put(&store, "w/b", "2").await;

        let mut watch = ok(store.watch("w/", base).await);
        let replayed = next_events(&mut watch, 4).await;
        assert_eq!(
            replayed,
            [
                WatchEvent::Put(entry("w/a", "1", a1, a1)),
                WatchEvent::Put(entry("w/b", "1", b1, b1)),
                WatchEvent::Delete {
                    key: "w/a".to_owned(),
                    revision: deleted,
                },
                WatchEvent::Put(entry("w/b", "2", b1, b2)),
            ]
        );

        let c1 = put(&store, "w/c", "1").await;
        put(&store, "other/x", "1").await;
        let b3 = put(&store, "w/b", "3").await;
        assert_eq!(
            next_events(&mut watch, 2).await,
            [
                WatchEvent::Put(entry("w/c", "1", c1, c1)),
                WatchEvent::Put(entry("w/b", "3", b1, b3)),
            ],
            "live events follow the replay without duplicate or leak"
        );
    })
    .await;
}

/// A watch from a middle revision, started while writes go on, sees every later revision once.
pub async fn watch_from_middle_revision_has_no_gap_or_duplicate(harness: &(impl Harness + ?Sized)) {
    bounded(
        "watch_from_middle_revision_has_no_gap_or_duplicate",
        async {
            let store = open(harness).await;
            let mut middle = 0;
            for n in 0..20 {
                let revision = put(&store, &format!("mid/{n:03}"), "x").await;
                if n == 9 {
                    middle = revision;
                }
            }
            let writer = {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    for n in 20..60 {
                        put(&store, &format!("mid/{n:03}"), "x").await;
                    }
                })
            };
            let mut watch = ok(store.watch("mid/", middle).await);
            let events = next_events(&mut watch, 50).await;
            writer.await.expect("writer task panicked");
            let revisions: Vec<Revision> = events.iter().map(WatchEvent::revision).collect();
            let expected: Vec<Revision> = (middle + 1..=middle + 50).collect();
            assert_eq!(
                revisions, expected,
                "watch must have no gap and no duplicate"
            );
            let keys: Vec<&str> = events.iter().map(WatchEvent::key).collect();
            let expected_keys: Vec<String> = (10..60).map(|n| format!("mid/{n:03}")).collect();
            assert_eq!(keys, expected_keys);
        },
    )
    .await;
}

/// A watch sees only keys under its prefix, in replay and live.
pub async fn watch_filters_by_prefix(harness: &(impl Harness + ?Sized)) {
    bounded("watch_filters_by_prefix", async {
        let store = open(harness).await;
        let base = ok(store.revision().await);
        for key in ["f/1", "fy/1", "g/1", "f", "f/2"] {
            put(&store, key, key).await;
        }
        let mut watch = ok(store.watch("f/", base).await);
        let replayed = next_events(&mut watch, 2).await;
        assert_eq!(
            replayed.iter().map(WatchEvent::key).collect::<Vec<_>>(),
            ["f/1", "f/2"]
        );
        for key in ["fy/2", "g/2", "f/3"] {
            put(&store, key, key).await;
        }
        ok(store.delete("fy/1", Precondition::None).await);
        ok(store.delete("f/1", Precondition::None).await);
        let live = next_events(&mut watch, 2).await;
        assert_eq!(
            live.iter().map(WatchEvent::key).collect::<Vec<_>>(),
            ["f/3", "f/1"]
        );
        assert!(matches!(live[1], WatchEvent::Delete { .. }));
    })
    .await;
}

/// 64 tasks × 50 puts: every write gets its own revision, all are visible, and a watch sees
/// them all in revision order.
pub async fn concurrent_puts_get_distinct_revisions(harness: &(impl Harness + ?Sized)) {
    const TASKS: usize = 64;
    const PUTS: usize = 50;
    bounded("concurrent_puts_get_distinct_revisions", async {
        let store = open(harness).await;
        let base = ok(store.revision().await);
        let mut watch = ok(store.watch("conc/", base).await);
        let written = concurrent_puts(&store, "conc", TASKS, PUTS).await;

        let total = (TASKS * PUTS) as u64;
        let revisions: Vec<Revision> = written.values().copied().collect();
        let mut sorted = revisions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), revisions.len(), "two writes got one revision");
        assert_eq!(
            sorted,
            (base + 1..=base + total).collect::<Vec<_>>(),
            "revisions must be contiguous"
        );
        assert_eq!(ok(store.revision().await), base + total);

        let page = ok(store.list("conc/", None, 0).await);
        assert_eq!(page.entries.len(), written.len());
        for entry in &page.entries {
            assert_eq!(written.get(&entry.key), Some(&entry.mod_revision));
            assert_eq!(entry.value, entry.key.as_bytes());
        }

        let events = next_events(&mut watch, written.len()).await;
        for (event, expected) in events.iter().zip(base + 1..) {
            assert_eq!(event.revision(), expected, "watch out of order");
            assert_eq!(written.get(event.key()), Some(&expected));
        }
    })
    .await;
}

/// A watch nobody reads does not block writers; when read later it delivers every change in
/// order, or reports that it fell behind (then ends), but never skips silently.
pub async fn slow_watcher_does_not_block_writers(harness: &(impl Harness + ?Sized)) {
    const TASKS: usize = 32;
    const PUTS: usize = 100;
    bounded("slow_watcher_does_not_block_writers", async {
        let store = open(harness).await;
        let base = ok(store.revision().await);
        let mut watch = ok(store.watch("slow/", base).await);
        concurrent_puts(&store, "slow", TASKS, PUTS).await;

        let mut expected = base + 1;
        let end = base + (TASKS * PUTS) as u64;
        while expected <= end {
            match next_item(&mut watch).await {
                Ok(event) => {
                    assert_eq!(event.revision(), expected, "watch skipped or repeated");
                    expected += 1;
                }
                Err(StoreError::Compacted { .. }) => {
                    let after = tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await;
                    assert!(
                        matches!(after, Ok(None)),
                        "a watch must end after reporting an error"
                    );
                    return;
                }
                Err(error) => panic!("watch failed: {error:#?}"),
            }
        }
    })
    .await;
}

/// Dropping the store and opening it again keeps keys, revisions and history.
pub async fn reopen_keeps_everything(harness: &(impl Harness + ?Sized)) {
    bounded("reopen_keeps_everything", async {
        let store = open(harness).await;
        let base = ok(store.revision().await);
        put(&store, "re/a", "1").await;
        put(&store, "re/b", "1").await;
        put(&store, "re/a", "2").await;
        ok(store.delete("re/b", Precondition::None).await);
        put(&store, "re/c", "1").await;
        let revision = ok(store.revision().await);
        let listed = ok(store.list("re/", None, 0).await);
        let history = next_events(&mut ok(store.watch("re/", base).await), 5).await;
        drop(store);

        let store = open(harness).await;
        assert_eq!(ok(store.revision().await), revision);
        assert_eq!(ok(store.list("re/", None, 0).await), listed);
        let replayed = next_events(&mut ok(store.watch("re/", base).await), 5).await;
        assert_eq!(replayed, history, "history must survive a reopen");
        assert_eq!(put(&store, "re/d", "1").await, revision + 1);
    })
    .await;
}

/// A watch stream ends once every handle of its store is dropped.
pub async fn watch_ends_when_store_is_dropped(harness: &(impl Harness + ?Sized)) {
    bounded("watch_ends_when_store_is_dropped", async {
        let store = open(harness).await;
        let base = ok(store.revision().await);
        put(&store, "end/a", "1").await;
        let mut watch = ok(store.watch("end/", base).await);
        assert_eq!(next_events(&mut watch, 1).await.len(), 1);
        drop(store);
        let end = tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await;
        assert!(
            matches!(end, Ok(None)),
            "the watch must end when the store is dropped, got {end:?}"
        );
    })
    .await;
}

// === helpers ===

async fn bounded(name: &str, test: impl Future<Output = ()>) {
    if tokio::time::timeout(TEST_TIMEOUT, test).await.is_err() {
        panic!("conformance test {name} did not finish in {TEST_TIMEOUT:?}: a write or watch hung");
    }
}

async fn open(harness: &(impl Harness + ?Sized)) -> Arc<dyn Store> {
    ok(harness.open().await)
}

#[track_caller]
fn ok<T>(result: Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("store call failed: {error:#?}"),
    }
}

async fn put(store: &Arc<dyn Store>, key: &str, value: &str) -> Revision {
    ok(store
        .put(key, value.as_bytes().to_vec(), Precondition::None)
        .await)
}

/// `tasks` tasks put `puts` keys each, concurrently; returns key → revision.
async fn concurrent_puts(
    store: &Arc<dyn Store>,
    prefix: &str,
    tasks: usize,
    puts: usize,
) -> BTreeMap<String, Revision> {
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let store = Arc::clone(store);
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                let mut written = Vec::with_capacity(puts);
                for n in 0..puts {
                    let key = format!("{prefix}/{task:03}/{n:04}");
                    let revision = put(&store, &key, &key).await;
                    written.push((key, revision));
                }
                written
            })
        })
        .collect();
    let mut written = BTreeMap::new();
    for handle in handles {
        written.extend(handle.await.expect("writer task panicked"));
    }
    written
}

#[track_caller]
fn expect_precondition_failed<T: Debug>(result: Result<T>, key: &str, current: Revision) {
    match result {
        Err(StoreError::PreconditionFailed {
            key: failed_key,
            current: failed_current,
        }) => assert_eq!(
            (failed_key.as_str(), failed_current),
            (key, current),
            "PreconditionFailed names the key and its current revision"
        ),
        other => panic!("expected PreconditionFailed for {key}, got {other:?}"),
    }
}

async fn next_item(watch: &mut BoxStream<'static, Result<WatchEvent>>) -> Result<WatchEvent> {
    match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("watch ended while events were expected"),
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}: an event was lost"),
    }
}

async fn next_events(
    watch: &mut BoxStream<'static, Result<WatchEvent>>,
    n_items: usize,
) -> Vec<WatchEvent> {
    let mut events = Vec::with_capacity(n_items);
    while events.len() < n_items {
        events.push(ok(next_item(watch).await));
    }
    events
}

fn entry(key: &str, value: &str, create_revision: Revision, mod_revision: Revision) -> Entry {
    Entry {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        create_revision,
        mod_revision,
    }
}

fn keys(entries: &[Entry]) -> Vec<String> {
    entries.iter().map(|entry| entry.key.clone()).collect()
}
