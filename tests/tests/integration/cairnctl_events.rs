//! `cairnctl silenced create|list|delete` and `cairnctl event resolve` against a real backend,
//! as sensuctl users type them, and a user without rights who cannot resolve.

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
    let stored = admin.get_json(EVENT).await.expect("get event");
    assert_eq!(stored["check"]["status"], 2, "unchanged: {stored:#}");
    let listed = admin.get_json(SILENCED).await.expect("list silenced");
    assert_eq!(listed, json!([]), "nothing created");
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
