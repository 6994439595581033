//! Pipelines and silences through a real backend (issue 18): a `core/v2 Pipeline` with two
//! workflows, a JavaScript filter using a function and a regular expression, and a pipe
//! mutator delivers the mutated event only where the filters allow; silences that are
//! scheduled, that expire on resolution and that expire by time suppress and release events as
//! Sensu's do. Handlers are pipe handlers that record what they get.

use std::time::Duration;

use cairn_api::client::Client;
use cairn_tests::{eventually, Backend};
use reqwest::Method;
use serde_json::{json, Value};

use super::corpus_pipeline::{
    events_of, proxy, put, recorded, recorder, send, settle, wait_recorded,
};

async fn get(admin: &Client, path: &str) -> Option<Value> {
    match admin.send(Method::GET, path, None).await {
        Ok(response) => Some(response.json().await.expect("a JSON body")),
        Err(cairn_api::client::ClientError::Status { status, .. })
            if status == reqwest::StatusCode::NOT_FOUND =>
        {
            None
        }
        Err(err) => panic!("GET {path}: {err}"),
    }
}

async fn silence(admin: &Client, subscription: &str, check: &str, extra: Value) {
    let name = format!(
        "{}:{}",
        if subscription.is_empty() {
            "*"
        } else {
            subscription
        },
        if check.is_empty() { "*" } else { check }
    );
    let mut body = json!({
        "metadata": {"name": name, "namespace": "default"},
        "subscription": subscription,
        "check": check,
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    put(
        admin,
        &format!(
            "/api/core/v2/namespaces/default/silenced/{}",
            name.replace(':', "%3A").replace('*', "%2A")
        ),
        &body,
    )
    .await;
}

/// The stored event of `entity`/`check`.
async fn stored_event(admin: &Client, entity: &str, check: &str) -> Value {
    get(
        admin,
        &format!("/api/core/v2/namespaces/default/events/{entity}/{check}"),
    )
    .await
    .unwrap_or_else(|| panic!("event {entity}/{check} is stored"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_with_two_workflows_filters_mutates_and_handles() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // A function, a regular expression and an array method, as Sensu's filters write them.
    put(
        &admin,
        "/api/core/v2/namespaces/default/filters/prod_disks",
        &json!({
            "metadata": {"name": "prod_disks", "namespace": "default"},
            "action": "allow",
            "expressions": [
                "(function (name) { return /^disk-[a-z]+$/.test(name); })(event.check.metadata.name)",
                "['production', 'staging'].indexOf(event.entity.metadata.labels.env) === 0",
            ],
        }),
    )
    .await;
    // A pipe mutator: reads the event's JSON, writes a summary line.
    put(
        &admin,
        "/api/core/v2/namespaces/default/mutators/summary",
        &json!({
            "metadata": {"name": "summary", "namespace": "default"},
            "command": "printf 'summary %s ' \"$PREFIX\"; grep -o '\"status\":[0-9]*' | head -n 1",
            "env_vars": ["PREFIX=ops"],
            "timeout": 10,
        }),
    )
    .await;
    recorder(&admin, dir.path(), "pager", &[], "").await;
    recorder(&admin, dir.path(), "archive", &[], "").await;
    recorder(&admin, dir.path(), "sentinel", &[], "").await;
    put(
        &admin,
        "/api/core/v2/namespaces/default/pipelines/disks",
        &json!({
            "metadata": {"name": "disks", "namespace": "default"},
            "workflows": [
                {"name": "page_production_disks",
                 "filters": [{"name": "is_incident", "type": "EventFilter", "api_version": "core/v2"},
                             {"name": "prod_disks", "type": "EventFilter", "api_version": "core/v2"}],
                 "mutator": {"name": "summary", "type": "Mutator", "api_version": "core/v2"},
                 "handler": {"name": "pager", "type": "Handler", "api_version": "core/v2"}},
                {"name": "archive_everything",
                 "handler": {"name": "archive", "type": "Handler", "api_version": "core/v2"}},
            ],
        }),
    )
    .await;
    let pipelines = json!([{"name": "disks", "type": "Pipeline", "api_version": "core/v2"}]);
    let cases = [
        ("prod-1", "production", "disk-root", 2),
        ("prod-1", "production", "disk-42", 2),
        ("stage-1", "staging", "disk-root", 2),
        ("prod-2", "production", "disk-var", 0),
    ];
    for (entity, env, check, status) in cases {
        send(&admin, proxy(entity, json!({"env": env})), json!({"metadata": {"name": check}, "status": status, "interval": 60, "pipelines": pipelines})).await;
    }
    settle(&admin, &backend, dir.path(), 1).await;
    let archived = events_of(&wait_recorded(&backend, dir.path(), "archive", 4).await);
    assert_eq!(archived.len(), 4, "the second workflow has no filter");
    let paged = wait_recorded(&backend, dir.path(), "pager", 1).await;
    assert_eq!(
        paged,
        ["summary ops \"status\":2\n"],
        "only prod-1/disk-root passes both filters, mutated by the pipe mutator"
    );
    // Nothing more arrives once the pipeline is idle.
    settle(&admin, &backend, dir.path(), 2).await;
    assert_eq!(recorded(dir.path(), "pager").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn silences_suppress_and_release_as_sensu_does() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    recorder(&admin, dir.path(), "alert", &["not_silenced"], "").await;
    recorder(&admin, dir.path(), "sentinel", &[], "").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    let web = |name: &str| json!({"entity_class": "proxy", "subscriptions": ["web"], "metadata": {"name": name}});
    let check = |name: &str, status: u64| json!({"metadata": {"name": name}, "status": status, "interval": 60, "handlers": ["alert"]});

    // Scheduled: begins in an hour, so it silences nothing now.
    silence(&admin, "web", "scheduled", json!({"begin": now + 3600})).await;
    // expire_on_resolve: silences the incident, goes when it resolves.
    silence(&admin, "", "flappy", json!({"expire_on_resolve": true})).await;
    // Expires after one second, then the sweep deletes it.
    silence(&admin, "entity:web-3", "", json!({"expire": 1})).await;

    send(&admin, web("web-1"), check("scheduled", 2)).await;
    let scheduled = stored_event(&admin, "web-1", "scheduled").await;
    assert_eq!(scheduled["check"]["is_silenced"], false, "{scheduled}");

    send(&admin, web("web-2"), check("flappy", 2)).await;
    let incident = stored_event(&admin, "web-2", "flappy").await;
    assert_eq!(incident["check"]["is_silenced"], true);
    assert_eq!(incident["check"]["silenced"], json!(["*:flappy"]));
    send(&admin, web("web-2"), check("flappy", 0)).await;
    let resolved = stored_event(&admin, "web-2", "flappy").await;
    assert_eq!(resolved["check"]["is_silenced"], false, "{resolved}");
    assert!(
        get(
            &admin,
            "/api/core/v2/namespaces/default/silenced/%2A%3Aflappy"
        )
        .await
        .is_none(),
        "the resolution deleted its expire_on_resolve silence"
    );
    send(&admin, web("web-2"), check("flappy", 2)).await;

    settle(&admin, &backend, dir.path(), 1).await;
    let alerts = events_of(&wait_recorded(&backend, dir.path(), "alert", 3).await);
    let mut seen: Vec<(String, u64)> = alerts
        .iter()
        .map(|event| {
            (
                event["check"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                event["check"]["status"].as_u64().unwrap_or(99),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("flappy".to_owned(), 0),
            ("flappy".to_owned(), 2),
            ("scheduled".to_owned(), 2)
        ],
        "the silenced incident was suppressed; its resolution and the next incident were not"
    );

    // The one-second silence expires and is swept away.
    eventually(
        "the expired silence to be deleted",
        Duration::from_secs(15),
        || async {
            match get(
                &admin,
                "/api/core/v2/namespaces/default/silenced/entity%3Aweb-3%3A%2A",
            )
            .await
            {
                None => Ok(()),
                Some(entry) => Err(format!("still there: {entry}")),
            }
        },
    )
    .await;
    send(&admin, web("web-3"), check("after-expiry", 2)).await;
    let after = stored_event(&admin, "web-3", "after-expiry").await;
    assert_eq!(after["check"]["is_silenced"], false);
}
