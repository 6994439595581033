//! `cairnctl silenced create|list|delete`, `cairnctl event resolve` and `cairnctl event test`
//! against a real backend, as sensuctl users type them, and a user without rights who cannot
//! resolve or dry-run.

use reqwest::Method;
use serde_json::{json, Value};

use cairn_tests::{create_user, Backend, ADMIN_PASSWORD};

use crate::common::{cairnctl, configure, ok};

const SILENCED: &str = "/api/core/v2/namespaces/default/silenced";
const EVENT: &str = "/api/core/v2/namespaces/default/events/web-01/disk";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silences_and_resolves_through_cairnctl() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let config = tempfile::tempdir().expect("tempdir");
    let config_dir = config.path();
    configure(config_dir, &backend, "admin", ADMIN_PASSWORD);

    // Neither --subscription nor --check: refused, nothing sent.
    let (code, _, stderr) = cairnctl(config_dir, &["silenced", "create", "-r", "why"]);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("needs --subscription, --check, or both"),
        "{stderr}"
    );
    let listed = admin.get_json(SILENCED).await.expect("list silenced");
    assert_eq!(listed, json!([]), "nothing was created");

    let created = ok(
        config_dir,
        &[
            "silenced",
            "create",
            "-s",
            "linux",
            "-b",
            "2023-11-14T22:13:20Z",
            "-x",
            "-r",
            "maintenance",
        ],
    );
    assert_eq!(created.trim(), "Created");
    let listed: Value =
        serde_json::from_str(&ok(config_dir, &["silenced", "list", "--format", "json"]))
            .expect("json");
    let entries = listed.as_array().expect("a list");
    assert_eq!(entries.len(), 1, "{listed:#}");
    let entry = &entries[0];
    assert_eq!(entry["metadata"]["name"], "linux:*", "{entry:#}");
    assert_eq!(entry["subscription"], "linux", "{entry:#}");
    assert_eq!(entry["begin"], 1_700_000_000, "{entry:#}");
    assert_eq!(entry["expire_on_resolve"], true, "{entry:#}");
    assert_eq!(entry["expire"], -1, "{entry:#}");
    assert_eq!(entry["creator"], "admin", "{entry:#}");
    assert_eq!(entry["reason"], "maintenance", "{entry:#}");
    let table = ok(config_dir, &["silenced", "list"]);
    assert!(
        table.lines().any(|line| line.starts_with("linux:*")
            && line.contains("2023-11-14 22:13:20 +0000 UTC")
            && line.contains("never")
            && line.contains("maintenance")),
        "{table}"
    );
    let everywhere = ok(
        config_dir,
        &["silenced", "list", "--all-namespaces", "-o", "json"],
    );
    assert!(everywhere.contains("linux:*"), "{everywhere}");

    // Deleted by its parts, the name built as Sensu builds it (and percent-encoded).
    assert_eq!(
        ok(
            config_dir,
            &["silenced", "delete", "--subscription", "linux"]
        )
        .trim(),
        "Deleted"
    );
    let listed = admin.get_json(SILENCED).await.expect("list silenced");
    assert_eq!(listed, json!([]), "deleted");
    let (code, _, stderr) = cairnctl(config_dir, &["silenced", "delete", "linux:*"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("silenced entry linux:* not found in namespace default"),
        "{stderr}"
    );
    // And by name.
    ok(
        config_dir,
        &["silenced", "create", "-c", "disk", "-e", "600"],
    );
    ok(config_dir, &["silenced", "delete", "*:disk"]);
    let listed = admin.get_json(SILENCED).await.expect("list silenced");
    assert_eq!(listed, json!([]), "deleted by name");

    // A failing event, resolved by hand.
    admin
        .send(
            Method::PUT,
            EVENT,
            Some(&json!({
                "entity": {"entity_class": "proxy", "metadata": {"name": "web-01"}},
                "check": {"metadata": {"name": "disk"}, "status": 2, "output": "CRITICAL: 95% used",
                          "interval": 60},
            })),
        )
        .await
        .expect("put event");
    let before = unix_now();
    assert_eq!(
        ok(config_dir, &["event", "resolve", "web-01", "disk"]).trim(),
        "Resolved"
    );
    let stored = admin.get_json(EVENT).await.expect("get event");
    assert_eq!(stored["check"]["status"], 0, "{stored:#}");
    assert_eq!(
        stored["check"]["output"], "Resolved manually by cairnctl",
        "{stored:#}"
    );
    let executed = stored["check"]["executed"].as_i64().expect("executed");
    assert!(executed >= before, "{stored:#}");
    assert!(stored["timestamp"].as_i64().expect("timestamp") >= before);

    // A missing event: the error names it and its namespace.
    let (code, _, stderr) = cairnctl(config_dir, &["event", "resolve", "web-01", "nope"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("event web-01/nope not found in namespace default"),
        "{stderr}"
    );
    let (code, _, stderr) = cairnctl(
        config_dir,
        &["event", "resolve", "web-01", "disk", "-n", "elsewhere"],
    );
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("namespace elsewhere"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_rights_cannot_resolve() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    admin
        .send(
            Method::PUT,
            EVENT,
            Some(&json!({
                "entity": {"entity_class": "proxy", "metadata": {"name": "web-01"}},
                "check": {"metadata": {"name": "disk"}, "status": 2, "output": "CRITICAL",
                          "interval": 60},
            })),
        )
        .await
        .expect("put event");
    create_user(&admin, "stranger", "stranger-password").await;
    let config = tempfile::tempdir().expect("tempdir");
    let config_dir = config.path();
    configure(config_dir, &backend, "stranger", "stranger-password");

    let (code, _, stderr) = cairnctl(config_dir, &["event", "resolve", "web-01", "disk"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cannot resolve event web-01/disk in namespace default")
            && stderr.contains("403"),
        "{stderr}"
    );
    let (code, _, stderr) = cairnctl(config_dir, &["silenced", "create", "-c", "disk"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cannot create silenced entry *:disk in namespace default")
            && stderr.contains("403"),
        "{stderr}"
    );
    let event_file = config_dir.join("event.json");
    std::fs::write(
        &event_file,
        r#"{"entity": {"metadata": {"name": "web-01"}}, "check": {"metadata": {"name": "disk"}, "status": 2}}"#,
    )
    .expect("write the event");
    let event_path = event_file.to_string_lossy().into_owned();
    let (code, _, stderr) = cairnctl(config_dir, &["event", "test", "--event", &event_path]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("403"),
        "a dry run needs rights too: {stderr}"
    );
    let stored = admin.get_json(EVENT).await.expect("get event");
    assert_eq!(stored["check"]["status"], 2, "unchanged: {stored:#}");
    let listed = admin.get_json(SILENCED).await.expect("list silenced");
    assert_eq!(listed, json!([]), "nothing created");
}

/// `cairnctl event test`: a handler with a JavaScript filter and a JavaScript mutator, and a
/// pipeline; the report names each filter's verdict and what the handler would get, and
/// nothing is stored or handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_test_shows_filters_mutation_and_payload_without_handling() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let config = tempfile::tempdir().expect("tempdir");
    let config_dir = config.path();
    configure(config_dir, &backend, "admin", ADMIN_PASSWORD);
    let marker = config_dir.join("handled");
    let base = "/api/core/v2/namespaces/default";
    for (path, body) in [
        (
            "filters/critical",
            json!({"action": "allow", "expressions": ["event.check.status == 2"]}),
        ),
        (
            "filters/prod",
            json!({"action": "allow", "expressions": ["/^prod-/.test(event.entity.metadata.name)"]}),
        ),
        (
            "mutators/shout",
            json!({"type": "javascript", "eval": "return 'ALERT ' + event.check.metadata.name.toUpperCase();"}),
        ),
        (
            "handlers/page",
            json!({"type": "pipe", "command": format!("touch '{}'", marker.display()), "filters": ["critical", "prod"], "mutator": "shout"}),
        ),
        (
            "pipelines/all",
            json!({"workflows": [{"name": "everything", "handler": {"name": "page", "type": "Handler", "api_version": "core/v2"}}]}),
        ),
    ] {
        let name = path.rsplit('/').next().unwrap_or_default();
        let mut body = body;
        body["metadata"] = json!({"name": name, "namespace": "default"});
        admin
            .send(Method::PUT, &format!("{base}/{path}"), Some(&body))
            .await
            .unwrap_or_else(|err| panic!("PUT {path}: {err}"));
    }
    let event_file = config_dir.join("event.yaml");
    std::fs::write(
        &event_file,
        "type: Event\napi_version: core/v2\nmetadata: {namespace: default}\nspec:\n  entity: {entity_class: proxy, metadata: {name: prod-web}}\n  check: {metadata: {name: disk}, status: 2, interval: 60}\n",
    )
    .expect("write the event");
    let event_path = event_file.to_string_lossy().into_owned();

    let text = ok(
        config_dir,
        &["event", "test", "--event", &event_path, "--handler", "page"],
    );
    assert!(
        text.contains("the event's handlers: handler page (pipe): would run"),
        "{text}"
    );
    assert!(
        text.contains("  filter critical: passes\n  filter prod: passes"),
        "{text}"
    );
    assert!(text.contains("  mutator shout"), "{text}");
    assert!(text.contains("    ALERT DISK"), "{text}");

    let report: Value = serde_json::from_str(&ok(
        config_dir,
        &[
            "event",
            "test",
            "--event",
            &event_path,
            "--pipeline",
            "all",
            "-o",
            "json",
        ],
    ))
    .expect("a JSON report");
    assert_eq!(report[0]["pipeline"], "all");
    assert_eq!(report[0]["workflow"], "everything");
    assert_eq!(
        report[0]["mutator"], "json",
        "a workflow without a mutator sends JSON"
    );
    let payload: Value = serde_json::from_str(report[0]["output"].as_str().unwrap_or_default())
        .expect("the event's JSON");
    assert_eq!(
        payload["check"]["occurrences"], 1,
        "processed as ingestion would"
    );

    // An OK event from a host outside prod: both filters drop it, and the report says which.
    std::fs::write(
        &event_file,
        r#"{"entity": {"entity_class": "proxy", "metadata": {"name": "stage-web"}}, "check": {"metadata": {"name": "disk"}, "status": 0, "interval": 60}}"#,
    )
    .expect("write the event");
    let text = ok(
        config_dir,
        &["event", "test", "--event", &event_path, "--handler", "page"],
    );
    assert!(text.contains("filtered out"), "{text}");
    assert!(
        text.contains("filter critical: drops it") && text.contains("filter prod: drops it"),
        "{text}"
    );

    // Nothing stored, nothing handled.
    let stored = admin
        .get_json(&format!("{base}/events"))
        .await
        .expect("list events");
    assert_eq!(stored, json!([]));
    assert!(!marker.exists(), "no handler ran");
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
