//! Workers against a real store and an in-memory downstream.

use std::sync::atomic::Ordering;

use cairn_api::meta::LABEL_REPLICATED_FROM;
use cairn_api::{ObjectMeta, Resource};

use super::*;
use crate::federation::replicator::downstream::tests::{check, FakeDownstream};
use crate::store::Precondition;
use crate::testing::eventually;

const WAIT: Duration = Duration::from_secs(10);
const LABEL: &str = "gw/checks";

struct FakeConnector(Arc<FakeDownstream>);

impl Connector for FakeConnector {
    fn connect(&self, _name: &str, _cluster: &Cluster) -> Result<Arc<dyn Downstream>, String> {
        Ok(Arc::clone(&self.0) as Arc<dyn Downstream>)
    }
}

/// A store, a fake downstream, and a worker (or removal) running against them.
struct Harness {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    resources: Resources,
    fake: Arc<FakeDownstream>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn spec(namespace: &str, selector: &str, interval: u32) -> Replicator {
    Replicator {
        cluster: "alpha".into(),
        resource: "CheckConfig".into(),
        namespace: namespace.into(),
        label_selector: selector.into(),
        replication_interval_seconds: interval,
        ..Replicator::default()
    }
}

fn alpha() -> Cluster {
    Cluster {
        api_urls: vec!["https://alpha.example:8080".into()],
        ca_cert: String::new(),
    }
}

fn labelled(mut resource: Resource, value: &str) -> Resource {
    resource
        .metadata
        .labels
        .insert(LABEL_REPLICATED_FROM.into(), value.into());
    resource
}

fn with_labels(mut resource: Resource, labels: &[(&str, &str)]) -> Resource {
    for (key, value) in labels {
        resource
            .metadata
            .labels
            .insert((*key).to_owned(), (*value).to_owned());
    }
    resource
}

fn command_of(resource: &Resource) -> String {
    match &resource.spec {
        Spec::CheckConfig(check) => check.command.clone(),
        other => panic!("not a check: {other:?}"),
    }
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::RedbStore::open(dir.path().join("store.redb")).unwrap());
        let fake = Arc::new(FakeDownstream::default());
        let shared = Arc::new(Shared {
            store: Arc::clone(&store),
            gateway: "gw".into(),
            connector: Arc::new(FakeConnector(Arc::clone(&fake))),
            backoff: Backoff::new(
                Duration::from_millis(10),
                Duration::from_millis(100),
                cairn_api::backoff::Jitter::Equal,
            ),
        });
        let (stop, _) = watch::channel(false);
        Harness {
            _dir: dir,
            resources: Resources::new(Arc::clone(&store)),
            store,
            fake,
            shared,
            stop,
            task: None,
        }
    }

    fn start(&mut self, spec: Replicator) {
        let config = WorkerConfig {
            name: "checks".into(),
            spec,
            cluster: Some(alpha()),
        };
        self.task = Some(tokio::spawn(run(
            Arc::clone(&self.shared),
            config,
            self.stop.subscribe(),
        )));
    }

    /// Stops the worker the way a shutdown does (it writes its record), and waits for it.
    async fn shut_down(&mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        }
        self.stop.send_replace(false);
    }

    async fn put(&self, resource: &Resource) -> Revision {
        self.resources
            .put(resource, Precondition::None)
            .await
            .unwrap()
    }

    async fn delete(&self, namespace: &str, name: &str) {
        self.resources
            .delete(Kind::CheckConfig, namespace, name, Precondition::None)
            .await
            .unwrap();
    }

    async fn record(&self) -> Option<Record> {
        status::load(self.store.as_ref(), "checks").await.unwrap()
    }

    /// Waits for the downstream's copy of `default/<name>` to satisfy `probe`.
    async fn copy_where(&self, name: &str, what: &str, probe: impl Fn(Option<Resource>) -> bool) {
        let key = format!("res/checks/default/{name}");
        eventually(what, WAIT, || {
            let found = probe(self.fake.get(&key));
            async move { found.then_some(()) }
        })
        .await;
    }

    /// Waits for the record to satisfy `probe`.
    async fn record_where(&self, what: &str, probe: impl Fn(&Record) -> bool) -> Record {
        eventually(what, WAIT, || async {
            self.record().await.filter(|record| probe(record))
        })
        .await
    }
}

#[tokio::test]
async fn a_first_resync_copies_the_selection_and_leaves_the_downstream_own_alone() {
    let mut harness = Harness::new();
    harness
        .put(&with_labels(
            check("default", "web", "check-http"),
            &[("team", "ops")],
        ))
        .await;
    harness
        .put(&with_labels(
            check("default", "db", "check-db"),
            &[("team", "dba")],
        ))
        .await;
    harness
        .put(&with_labels(
            check("other", "web", "check-http"),
            &[("team", "ops")],
        ))
        .await;
    harness
        .put(&with_labels(
            check("default", "shadowed", "from-gw"),
            &[("team", "ops")],
        ))
        .await;
    // On the downstream already: its own check, one of the same name as a source, an orphan
    // copy of ours, and another replicator's copy.
    let own = check("default", "local", "local-only");
    let shadowing = check("default", "shadowed", "local-version");
    harness.fake.insert(own.clone());
    harness.fake.insert(shadowing.clone());
    harness
        .fake
        .insert(labelled(check("default", "orphan", "x"), LABEL));
    let foreign = labelled(check("default", "foreign", "x"), "gw/other");
    harness.fake.insert(foreign.clone());

    harness.start(spec("default", "team == ops", 30));
    let record = harness
        .record_where("the first resync", |record| record.counts.resyncs == 1)
        .await;

    let copy = harness.fake.get("res/checks/default/web").expect("copied");
    assert_eq!(copy.metadata.labels[LABEL_REPLICATED_FROM], LABEL);
    assert_eq!(copy.metadata.labels["team"], "ops");
    assert!(
        harness.fake.get("res/checks/default/db").is_none(),
        "not selected"
    );
    assert!(
        harness.fake.get("res/checks/other/web").is_none(),
        "other namespace"
    );
    assert!(
        harness.fake.get("res/checks/default/orphan").is_none(),
        "orphan deleted"
    );
    assert_eq!(harness.fake.get("res/checks/default/local"), Some(own));
    assert_eq!(
        harness.fake.get("res/checks/default/shadowed"),
        Some(shadowing)
    );
    assert_eq!(
        harness.fake.get("res/checks/default/foreign"),
        Some(foreign)
    );

    let resync = record.last_resync.unwrap();
    assert_eq!((resync.puts, resync.deletes, resync.errors), (1, 1, 1));
    assert_eq!(record.state, ReplicatorState::Ok);
    assert_eq!(record.label, LABEL);
    assert!(record.revision > 0);
    assert_eq!(record.resource_errors.len(), 1);
    assert_eq!(
        record.resource_errors[0].resource,
        "res/checks/default/shadowed"
    );
    assert!(
        record.resource_errors[0].message.contains("without"),
        "{:?}",
        record.resource_errors
    );
    harness.shut_down().await;
}

#[tokio::test]
async fn changes_flow_as_they_come_and_leaving_the_selection_removes_the_copy() {
    let mut harness = Harness::new();
    harness.start(spec("default", "team == ops", 30));
    harness
        .record_where("the first resync", |record| record.counts.resyncs == 1)
        .await;

    let web = with_labels(check("default", "web", "v1"), &[("team", "ops")]);
    harness.put(&web).await;
    harness
        .copy_where("web", "web created", |copy: Option<Resource>| {
            copy.is_some_and(|copy| command_of(&copy) == "v1")
        })
        .await;
    harness
        .put(&with_labels(
            check("default", "web", "v2"),
            &[("team", "ops")],
        ))
        .await;
    harness
        .copy_where("web", "web updated", |copy: Option<Resource>| {
            copy.is_some_and(|copy| command_of(&copy) == "v2")
        })
        .await;
    // Relabelled out of the selection: the copy goes.
    harness
        .put(&with_labels(
            check("default", "web", "v3"),
            &[("team", "dev")],
        ))
        .await;
    harness
        .copy_where("web", "web removed", |copy: Option<Resource>| {
            copy.is_none()
        })
        .await;
    // Back in, then deleted on the gateway.
    harness
        .put(&with_labels(
            check("default", "web", "v4"),
            &[("team", "ops")],
        ))
        .await;
    harness
        .copy_where("web", "web back", |copy: Option<Resource>| copy.is_some())
        .await;
    harness.delete("default", "web").await;
    harness
        .copy_where("web", "web deleted", |copy: Option<Resource>| {
            copy.is_none()
        })
        .await;

    // A resource of the downstream's own is never deleted, even when a gateway resource of the
    // same name goes.
    let own = check("default", "local", "mine");
    harness.fake.insert(own.clone());
    harness
        .put(&with_labels(
            check("default", "local", "gw"),
            &[("team", "ops")],
        ))
        .await;
    harness.delete("default", "local").await;
    let revision = harness.store.revision().await.unwrap();
    let record = harness
        .record_where("caught up", |record| {
            record.revision >= revision && record.pending == 0
        })
        .await;
    assert_eq!(harness.fake.get("res/checks/default/local"), Some(own));
    assert_eq!(record.state, ReplicatorState::Ok);
    assert!(
        record.counts.puts >= 3 && record.counts.deletes >= 2,
        "{:?}",
        record.counts
    );
    harness.shut_down().await;
}

#[tokio::test]
async fn a_resync_reverts_edits_of_copies() {
    let mut harness = Harness::new();
    harness.put(&check("default", "web", "gateway")).await;
    harness.start(spec("default", "", 1));
    harness
        .copy_where("web", "web copied", |copy: Option<Resource>| copy.is_some())
        .await;
    let mut edited = harness.fake.get("res/checks/default/web").unwrap();
    if let Spec::CheckConfig(check) = &mut edited.spec {
        check.command = "edited on alpha".into();
    }
    harness.fake.insert(edited);
    harness
        .copy_where("web", "web reverted", |copy: Option<Resource>| {
            copy.is_some_and(|copy| command_of(&copy) == "gateway")
        })
        .await;
    // A copy deleted by hand comes back too.
    harness
        .fake
        .resources
        .lock()
        .remove("res/checks/default/web");
    harness
        .copy_where("web", "web recreated", |copy: Option<Resource>| {
            copy.is_some()
        })
        .await;
    harness.shut_down().await;
}

#[tokio::test]
async fn an_outage_is_backed_off_then_caught_up_without_losing_a_change() {
    let mut harness = Harness::new();
    harness.start(spec("default", "", 3600));
    harness
        .record_where("the first resync", |record| record.counts.resyncs == 1)
        .await;
    *harness.fake.down.lock() = Some("alpha unreachable: connection refused".into());
    for idx in 0..20 {
        harness
            .put(&check("default", &format!("c{idx}"), "during the outage"))
            .await;
    }
    harness.delete("default", "c3").await;
    let record = harness
        .record_where("backing off", |record| {
            record.state == ReplicatorState::BackingOff
        })
        .await;
    let error = record.last_error.unwrap();
    assert!(error.message.contains("connection refused"), "{error:?}");
    assert!(record.next_retry_at.is_some());
    assert!(record.counts.errors >= 1);

    *harness.fake.down.lock() = None;
    let revision = harness.store.revision().await.unwrap();
    let record = harness
        .record_where("caught up", |record| {
            record.state == ReplicatorState::Ok && record.revision >= revision
        })
        .await;
    for idx in (0..20).filter(|idx| *idx != 3) {
        assert!(
            harness
                .fake
                .get(&format!("res/checks/default/c{idx}"))
                .is_some(),
            "c{idx} lost"
        );
    }
    assert!(harness.fake.get("res/checks/default/c3").is_none());
    assert_eq!(
        record.counts.resyncs, 1,
        "caught up from the watch, no resync"
    );
    harness.shut_down().await;
}

#[tokio::test]
async fn a_restart_resumes_from_the_recorded_revision_without_resending() {
    let mut harness = Harness::new();
    for idx in 0..10 {
        harness
            .put(&check("default", &format!("c{idx}"), "v1"))
            .await;
    }
    harness.start(spec("default", "", 3600));
    harness
        .record_where("the first resync", |record| record.counts.resyncs == 1)
        .await;
    harness.shut_down().await;
    let stopped_at = harness.record().await.unwrap();

    // Changes while the replicator is down.
    harness.put(&check("default", "c0", "v2")).await;
    harness.put(&check("default", "new", "v1")).await;
    harness.delete("default", "c9").await;
    let writes_before = harness.fake.writes.load(Ordering::SeqCst);
    let requests_before = harness.fake.requests.load(Ordering::SeqCst);

    harness.start(spec("default", "", 3600));
    let revision = harness.store.revision().await.unwrap();
    let record = harness
        .record_where("caught up after the restart", |record| {
            record.revision >= revision && record.pending == 0
        })
        .await;
    harness
        .copy_where("c0", "c0 updated", |copy: Option<Resource>| {
            copy.is_some_and(|copy| command_of(&copy) == "v2")
        })
        .await;
    assert!(harness.fake.get("res/checks/default/new").is_some());
    assert!(harness.fake.get("res/checks/default/c9").is_none());
    assert_eq!(
        record.counts.resyncs, stopped_at.counts.resyncs,
        "no resync"
    );
    // Two writes (c0, new); no resend of the other eight.
    assert_eq!(
        harness.fake.writes.load(Ordering::SeqCst) - writes_before,
        2
    );
    // c0: create refused then look, then put (3); new: create (1); c9: look, delete (2).
    let requests = harness.fake.requests.load(Ordering::SeqCst) - requests_before;
    assert!(requests <= 6, "{requests} requests");
    harness.shut_down().await;
}

#[tokio::test]
async fn a_changed_definition_resyncs_and_a_moved_one_removes_the_old_copies() {
    let mut harness = Harness::new();
    harness.put(&check("default", "a", "x")).await;
    harness.put(&check("other", "b", "x")).await;
    harness.start(spec("default", "", 3600));
    harness
        .record_where("the first resync", |record| record.counts.resyncs == 1)
        .await;
    assert!(harness.fake.get("res/checks/default/a").is_some());
    harness.shut_down().await;

    // Every namespace now: a full resync picks up `other/b`.
    harness.start(spec("", "", 3600));
    harness
        .record_where("a resync under the new definition", |record| {
            record.counts.resyncs == 2 && record.spec.namespace.is_empty()
        })
        .await;
    assert!(harness.fake.get("res/checks/other/b").is_some());
    harness.shut_down().await;

    // Only `other`: the resync deletes the copy in `default`, whose source is still there.
    harness.start(spec("other", "", 3600));
    harness
        .record_where("a resync under the narrower definition", |record| {
            record.counts.resyncs == 3
        })
        .await;
    assert!(harness.fake.get("res/checks/default/a").is_none());
    assert!(harness.fake.get("res/checks/other/b").is_some());
    harness.shut_down().await;

    // Another type: the check copies are removed from the (registered) cluster first.
    harness
        .put(&Resource::new(
            ObjectMeta::named("", "alpha"),
            Spec::Cluster(alpha()),
        ))
        .await;
    let hook = Resource::new(
        ObjectMeta::named("other", "h"),
        Spec::HookConfig(cairn_api::model::HookConfig {
            command: "true".into(),
            ..cairn_api::model::HookConfig::default()
        }),
    );
    harness.put(&hook).await;
    harness.start(Replicator {
        resource: "HookConfig".into(),
        ..spec("other", "", 3600)
    });
    harness
        .record_where("a resync of the hooks", |record| {
            record.counts.resyncs == 4 && record.spec.resource == "HookConfig"
        })
        .await;
    assert!(
        harness.fake.get("res/checks/other/b").is_none(),
        "old copies removed"
    );
    assert!(harness.fake.get("res/hooks/other/h").is_some());
    harness.shut_down().await;
}

#[tokio::test]
async fn removing_a_replicator_deletes_only_its_copies_and_its_record() {
    let mut harness = Harness::new();
    harness.put(&check("default", "a", "x")).await;
    harness.put(&check("default", "b", "x")).await;
    harness.start(spec("default", "", 3600));
    harness
        .record_where("the first resync", |record| record.counts.resyncs == 1)
        .await;
    harness.shut_down().await;
    let own = check("default", "local", "x");
    harness.fake.insert(own.clone());
    let foreign = labelled(check("default", "foreign", "x"), "gw/other");
    harness.fake.insert(foreign.clone());
    // The cluster must still be registered for the copies to be found.
    harness
        .put(&Resource::new(
            ObjectMeta::named("", "alpha"),
            Spec::Cluster(alpha()),
        ))
        .await;

    let (_stop, shutdown) = watch::channel(false);
    tokio::time::timeout(
        WAIT,
        remove(Arc::clone(&harness.shared), "checks".into(), shutdown),
    )
    .await
    .unwrap();
    assert!(harness.fake.get("res/checks/default/a").is_none());
    assert!(harness.fake.get("res/checks/default/b").is_none());
    assert_eq!(harness.fake.get("res/checks/default/local"), Some(own));
    assert_eq!(
        harness.fake.get("res/checks/default/foreign"),
        Some(foreign)
    );
    assert!(harness.record().await.is_none(), "the record is gone");
}

#[tokio::test]
async fn a_removal_retries_while_the_downstream_is_down() {
    let mut harness = Harness::new();
    harness.put(&check("default", "a", "x")).await;
    harness
        .put(&Resource::new(
            ObjectMeta::named("", "alpha"),
            Spec::Cluster(alpha()),
        ))
        .await;
    harness.start(spec("default", "", 3600));
    harness
        .record_where("the first resync", |record| record.counts.resyncs == 1)
        .await;
    harness.shut_down().await;
    *harness.fake.down.lock() = Some("alpha is down".into());
    let (_stop, shutdown) = watch::channel(false);
    let removal = tokio::spawn(remove(
        Arc::clone(&harness.shared),
        "checks".into(),
        shutdown,
    ));
    let record = harness
        .record_where("a failed removal", |record| {
            record.state == ReplicatorState::Deleting && record.last_error.is_some()
        })
        .await;
    assert!(record.next_retry_at.is_some());
    assert!(harness.fake.get("res/checks/default/a").is_some());
    *harness.fake.down.lock() = None;
    tokio::time::timeout(WAIT, removal).await.unwrap().unwrap();
    assert!(harness.fake.get("res/checks/default/a").is_none());
    assert!(harness.record().await.is_none());
}

#[tokio::test]
async fn a_replicator_without_its_cluster_reports_why() {
    let harness = Harness::new();
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(run(
        Arc::clone(&harness.shared),
        WorkerConfig {
            name: "checks".into(),
            spec: spec("default", "", 30),
            cluster: None,
        },
        shutdown,
    ));
    let record = harness
        .record_where("an error", |record| record.state == ReplicatorState::Error)
        .await;
    assert!(record
        .last_error
        .unwrap()
        .message
        .contains("cluster alpha is not registered"),);
    stop.send_replace(true);
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_per_resource_refusal_does_not_stop_the_rest() {
    let mut harness = Harness::new();
    harness.fake.rejects.lock().insert(
        "res/checks/default/bad".into(),
        "namespace \"default\" not found".into(),
    );
    harness.start(spec("default", "", 3600));
    harness
        .record_where("the first resync", |record| record.counts.resyncs == 1)
        .await;
    harness.put(&check("default", "bad", "x")).await;
    harness.put(&check("default", "good", "x")).await;
    harness
        .copy_where("good", "good copied", |copy: Option<Resource>| {
            copy.is_some()
        })
        .await;
    let record = harness
        .record_where("the refusal recorded", |record| {
            !record.resource_errors.is_empty()
        })
        .await;
    assert_eq!(record.resource_errors[0].resource, "res/checks/default/bad");
    assert!(record.resource_errors[0].message.contains("not found"));
    assert_ne!(record.state, ReplicatorState::BackingOff);
    // Once accepted, the refusal is forgotten.
    harness.fake.rejects.lock().clear();
    harness.put(&check("default", "bad", "y")).await;
    harness
        .record_where("the refusal cleared", |record| {
            record.resource_errors.is_empty()
        })
        .await;
    harness.shut_down().await;
}

// === the queue ===

fn change(key: &str, revision: Revision) -> Change {
    Change {
        key: key.into(),
        namespace: "default".into(),
        name: key.into(),
        revision,
        desired: Desired::Absent,
    }
}

#[test]
fn the_queue_keeps_the_latest_change_per_key_and_one_in_flight() {
    let mut queue = Queue::new(10);
    assert_eq!(queue.watermark(), 10);
    queue.push(change("a", 11));
    queue.push(change("b", 12));
    queue.push(change("a", 13));
    queue.seen(13);
    assert_eq!(queue.len(), 2, "a's changes coalesce");
    let first = queue.next_ready().unwrap();
    assert_eq!((first.key.as_str(), first.revision), ("a", 13));
    // a is in flight; a new change of a waits behind it, b goes first.
    queue.push(change("a", 14));
    queue.seen(14);
    let second = queue.next_ready().unwrap();
    assert_eq!(second.key, "b");
    assert!(queue.next_ready().is_none(), "a is still in flight");
    assert_eq!(queue.watermark(), 11, "below b (12) and a in flight (13)");
    queue.done("b");
    assert_eq!(queue.watermark(), 12);
    queue.done("a");
    let third = queue.next_ready().unwrap();
    assert_eq!((third.key.as_str(), third.revision), ("a", 14));
    assert_eq!(queue.watermark(), 13);
    queue.done("a");
    assert!(queue.is_empty());
    assert_eq!(
        queue.watermark(),
        14,
        "nothing waits: the last revision seen"
    );
    assert_eq!(queue.oldest_ms(), None);
}

#[test]
fn the_queue_remembers_when_a_key_first_waited() {
    let mut queue = Queue::new(0);
    queue.push(change("a", 1));
    let since = queue.oldest_ms().unwrap();
    let _ = queue.next_ready();
    queue.push(change("a", 2));
    assert_eq!(queue.oldest_ms(), Some(since), "still the first wait");
}
