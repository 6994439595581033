//! Filters of the shared corpus of real Sensu manifests
//! (`../shared/corpus/sensu/`, from Sensu's own documentation) behave as their documentation
//! says (issue 18): each is loaded from its file unchanged and applied to a real backend, events
//! are sent through the REST API, and pipe handlers that record what they get show which events
//! passed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_api::client::Client;
use cairn_api::{codec, Resource};
use cairn_tests::{eventually, Backend};
use reqwest::Method;
use serde_json::{json, Value};

/// What a handler run may take at most on a loaded machine.
const HANDLER_WAIT: Duration = Duration::from_secs(30);

/// Monday 5 March 2018, 10:00:00 UTC (inside `nine_to_fiver`'s hours).
const MONDAY_10: i64 = 1_520_244_000;
/// Monday 5 March 2018, 18:51:53 UTC (Sensu's docs' example; after hours).
const MONDAY_18: i64 = 1_520_275_913;
/// Sunday 4 March 2018, 10:00:00 UTC.
const SUNDAY_10: i64 = 1_520_157_600;

/// The corpus file `name` of Sensu's documentation.
fn docs_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpus/sensu/sensu-docs")
        .join(format!(
            "content__sensu-go__6.14__observability-pipeline__{name}"
        ))
}

/// The resources of a corpus file, in namespace `default`, checked to load without error.
fn corpus(name: &str) -> Vec<Resource> {
    let path = docs_file(name);
    let manifests = codec::load_path(&path);
    assert_eq!(
        manifests.error_count(),
        0,
        "{}: {:?}",
        path.display(),
        manifests.problems
    );
    manifests
        .resources
        .into_iter()
        .map(|loaded| {
            let mut resource = loaded.resource;
            resource.metadata.namespace = "default".to_owned();
            resource
        })
        .collect()
}

async fn apply(admin: &Client, resources: &[Resource]) {
    for resource in resources {
        admin
            .put_resource(resource)
            .await
            .unwrap_or_else(|err| panic!("PUT {}: {err}", resource.key()));
    }
}

pub(super) async fn put(admin: &Client, path: &str, body: &Value) {
    let response = admin
        .send(Method::PUT, path, Some(body))
        .await
        .unwrap_or_else(|err| panic!("PUT {path}: {err}"));
    assert!(response.status().is_success(), "PUT {path}: {response:?}");
}

/// A pipe handler `name` that writes what it gets to a new file `<dir>/<name>.<random>`,
/// after the filters `filters` and the mutator `mutator`.
pub(super) async fn recorder(
    admin: &Client,
    dir: &Path,
    name: &str,
    filters: &[&str],
    mutator: &str,
) {
    let handler = json!({
        "metadata": {"name": name, "namespace": "default"},
        "type": "pipe",
        "command": format!("cat > \"$(mktemp -p '{}' '{name}.XXXXXX')\"", dir.display()),
        "filters": filters,
        "mutator": mutator,
        "timeout": 10,
    });
    put(
        admin,
        &format!("/api/core/v2/namespaces/default/handlers/{name}"),
        &handler,
    )
    .await;
}

/// Stores the event of `entity`/`check`, with the check fields `check` merged in.
pub(super) async fn send(admin: &Client, entity: Value, check: Value) -> Value {
    let entity_name = entity["metadata"]["name"]
        .as_str()
        .expect("an entity name")
        .to_owned();
    let check_name = check["metadata"]["name"]
        .as_str()
        .expect("a check name")
        .to_owned();
    let mut event = json!({"entity": entity, "check": check});
    if let Some(timestamp) = event["check"].get("timestamp").cloned() {
        event["timestamp"] = timestamp;
        event["check"]
            .as_object_mut()
            .expect("a check object")
            .remove("timestamp");
    }
    put(
        admin,
        &format!("/api/core/v2/namespaces/default/events/{entity_name}/{check_name}"),
        &event,
    )
    .await;
    event
}

pub(super) fn proxy(name: &str, labels: Value) -> Value {
    json!({"entity_class": "proxy", "metadata": {"name": name, "labels": labels}})
}

/// The files handler `name` wrote so far, their text.
pub(super) fn recorded(dir: &Path, name: &str) -> Vec<String> {
    let prefix = format!("{name}.");
    let mut texts: Vec<String> = std::fs::read_dir(dir)
        .expect("read the handlers' folder")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .collect();
    texts.sort();
    texts
}

/// Waits until handler `name` wrote `count` files, and returns them.
pub(super) async fn wait_recorded(
    backend: &Backend,
    dir: &Path,
    name: &str,
    count: usize,
) -> Vec<String> {
    eventually(
        &format!("{count} runs of handler {name}"),
        HANDLER_WAIT,
        || async {
            let texts = recorded(dir, name);
            // A file is complete once `cat` exits; the handler's run then ends. An empty file
            // is a run still writing.
            if texts.len() >= count && texts.iter().all(|text| !text.is_empty()) {
                Ok(texts)
            } else {
                Err(format!(
                    "{} so far; backend log:\n{}",
                    texts.len(),
                    backend.log()
                ))
            }
        },
    )
    .await
}

/// The JSON events handler `name` got.
pub(super) fn events_of(texts: &[String]) -> Vec<Value> {
    texts
        .iter()
        .map(|text| serde_json::from_str(text).unwrap_or_else(|err| panic!("{text}: {err}")))
        .collect()
}

/// The names of the checks of the events handler `name` got, sorted.
pub(super) fn checks_of(texts: &[String]) -> Vec<String> {
    let mut names: Vec<String> = events_of(texts)
        .iter()
        .map(|event| {
            event["check"]["metadata"]["name"]
                .as_str()
                .expect("a check name")
                .to_owned()
        })
        .collect();
    names.sort();
    names
}

/// Sends one more event to the unfiltered handler `sentinel` and waits for it: the pipeline
/// takes events in order and decides the filters of each before taking the next, so every
/// event sent before has been filtered by then.
pub(super) async fn settle(admin: &Client, backend: &Backend, dir: &Path, round: usize) {
    send(
        admin,
        proxy("sentinel", json!({})),
        json!({"metadata": {"name": format!("sentinel-{round}")}, "status": 2, "interval": 60, "handlers": ["sentinel"]}),
    )
    .await;
    wait_recorded(backend, dir, "sentinel", round).await;
}

/// `filters.md`: labels in an allow and a deny filter (`production_filter`,
/// `not_production`), occurrence filtering (`filter_interval_60_hourly`) and the time
/// built-ins (`nine_to_fiver`: `weekday`, `hour`).
#[tokio::test(flavor = "multi_thread")]
async fn corpus_filters_pass_what_their_documentation_says() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let files = [
        (
            "observe-filter__filters.md__block02.yml",
            "metrics-checks-only",
        ),
        (
            "observe-filter__filters.md__block14.yml",
            "production_filter",
        ),
        ("observe-filter__filters.md__block16.yml", "not_production"),
        (
            "observe-filter__filters.md__block20.yml",
            "filter_interval_60_hourly",
        ),
        ("observe-filter__filters.md__block26.yml", "nine_to_fiver"),
    ];
    for (file, name) in files {
        let resources = corpus(file);
        assert_eq!(resources[0].name(), name, "{file}");
        apply(&admin, &resources).await;
        recorder(&admin, dir.path(), &format!("rec-{name}"), &[name], "").await;
    }
    recorder(&admin, dir.path(), "sentinel", &[], "").await;

    let to = |handler: &str| json!([format!("rec-{handler}")]);
    let none = json!({});
    // production_filter allows, not_production denies, production entities.
    for (entity, environment) in [("prod-1", "production"), ("stage-1", "staging")] {
        for filter in ["production_filter", "not_production"] {
            send(&admin, proxy(entity, json!({"environment": environment})), json!({"metadata": {"name": format!("{filter}-{entity}")}, "status": 2, "interval": 60, "handlers": to(filter)})).await;
        }
    }
    // filter_interval_60_hourly: the first occurrence of a 60 s check, not the second; never
    // a 30 s check.
    for (check, interval, times) in [("hourly-60", 60, 2), ("hourly-30", 30, 1)] {
        for _ in 0..times {
            send(&admin, proxy("host-b", none.clone()), json!({"metadata": {"name": check}, "status": 2, "interval": interval, "handlers": to("filter_interval_60_hourly")})).await;
        }
    }
    // nine_to_fiver: weekdays 9 to 17 UTC, by the event's timestamp.
    for (check, timestamp) in [
        ("monday-10", MONDAY_10),
        ("monday-18", MONDAY_18),
        ("sunday-10", SUNDAY_10),
    ] {
        send(&admin, proxy("host-c", none.clone()), json!({"metadata": {"name": check}, "status": 2, "interval": 60, "timestamp": timestamp, "handlers": to("nine_to_fiver")})).await;
    }
    // Not here: `metrics-checks-only` and `us-west-events` (`….match(/…/)`), whose result is
    // an array or null; Cairn follows sensu-go's source (a non-boolean result skips the
    // expression, so the allow filter passes every event), which contradicts Sensu's docs.
    settle(&admin, &backend, dir.path(), 1).await;

    let expected: [(&str, &[&str]); 4] = [
        ("production_filter", &["production_filter-prod-1"]),
        ("not_production", &["not_production-stage-1"]),
        ("filter_interval_60_hourly", &["hourly-60"]),
        ("nine_to_fiver", &["monday-10"]),
    ];
    for (filter, passed) in expected {
        let handler = format!("rec-{filter}");
        let texts = wait_recorded(&backend, dir.path(), &handler, passed.len()).await;
        assert_eq!(checks_of(&texts), passed, "events through {filter}");
    }
}

/// The corpus file `name` of Sensu's documentation, in another section than the filters'.
fn docs_section_file(section: &str, name: &str) -> Vec<Resource> {
    corpus(&format!("{section}__{name}"))
}

/// `mutators.md`: the two JavaScript mutators (`add_org_sec_ops` adds an attribute,
/// `add_origination_attribute` one built from the event); `pipelines.md`: `incident_alerts`,
/// whose one workflow runs `is_incident`, `not_silenced` and `state_change_only`
/// (`filters.md`) then a mutator `add_labels` and a handler `email` (here a recorder, and a
/// JavaScript `add_labels` of ours, as the docs leave both to the reader).
#[tokio::test(flavor = "multi_thread")]
async fn corpus_mutators_and_pipelines_do_what_their_documentation_says() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let transform = "observe-transform";
    let process = "observe-process";
    for (section, file) in [
        (transform, "mutators.md__block10.yml"),
        (transform, "mutators.md__block12.yml"),
        (process, "pipelines.md__block00.yml"),
        ("observe-filter", "filters.md__block18.yml"),
    ] {
        apply(&admin, &docs_section_file(section, file)).await;
    }
    put(
        &admin,
        "/api/core/v2/namespaces/default/mutators/add_labels",
        &json!({
            "metadata": {"name": "add_labels", "namespace": "default"},
            "type": "javascript",
            "eval": "event.check.metadata.labels = {routed: 'incident_alerts'}; return JSON.stringify(event);",
        }),
    )
    .await;
    recorder(&admin, dir.path(), "sec", &[], "add_org_sec_ops").await;
    recorder(
        &admin,
        dir.path(),
        "origin",
        &[],
        "add_origination_attribute",
    )
    .await;
    recorder(&admin, dir.path(), "email", &[], "").await;
    recorder(&admin, dir.path(), "sentinel", &[], "").await;

    send(&admin, proxy("host-m", json!({})), json!({"metadata": {"name": "disk"}, "status": 1, "interval": 60, "handlers": ["sec", "origin"]})).await;
    let sec = events_of(&wait_recorded(&backend, dir.path(), "sec", 1).await);
    assert_eq!(sec[0]["organization"], "sec_ops", "{}", sec[0]);
    assert_eq!(
        sec[0]["check"]["status"], 1,
        "the rest of the event is kept"
    );
    let origin = events_of(&wait_recorded(&backend, dir.path(), "origin", 1).await);
    assert_eq!(origin[0]["origination"], "defaultdisk", "{}", origin[0]);

    // incident_alerts: OK (not an incident), critical (an incident, first occurrence),
    // critical again (not a state change), then a new check's warning once silenced.
    let alerting = |name: &str, status: u64| {
        json!({"metadata": {"name": name}, "status": status, "interval": 60,
               "subscriptions": ["web"],
               "pipelines": [{"name": "incident_alerts", "type": "Pipeline", "api_version": "core/v2"}]})
    };
    let web = || json!({"entity_class": "proxy", "subscriptions": ["web"], "metadata": {"name": "web-1"}});
    for status in [0, 2, 2] {
        send(&admin, web(), alerting("http", status)).await;
    }
    put(
        &admin,
        "/api/core/v2/namespaces/default/silenced/web:quiet",
        &json!({"metadata": {"name": "web:quiet", "namespace": "default"}, "subscription": "web", "check": "quiet"}),
    )
    .await;
    send(&admin, web(), alerting("quiet", 2)).await;
    settle(&admin, &backend, dir.path(), 1).await;
    let emails = events_of(&wait_recorded(&backend, dir.path(), "email", 1).await);
    assert_eq!(
        emails.len(),
        1,
        "only the first critical passed: {emails:?}"
    );
    assert_eq!(emails[0]["check"]["metadata"]["name"], "http");
    assert_eq!(emails[0]["check"]["status"], 2);
    assert_eq!(
        emails[0]["check"]["metadata"]["labels"]["routed"], "incident_alerts",
        "the workflow's mutator ran"
    );
}
