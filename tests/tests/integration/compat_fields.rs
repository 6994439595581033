//! What a Sensu API client sees (issue 15, item 1): a real backend, sent the minimal bodies a
//! Sensu client sends, answers with every field Sensu's JSON has (`null` for unset lists, maps
//! and pointers, objects for the structs Sensu holds by value), never a Vault token or a
//! password hash; and a client that sends back what it got changes nothing.

use cairn_tests::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The REST API as a plain HTTP client drives it: raw JSON bodies, a bearer token.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn new(backend: &Backend) -> Api {
        let http = backend.http();
        let (_, token) = backend.login("admin", cairn_tests::ADMIN_PASSWORD).await;
        Api {
            http,
            base: backend.url.clone(),
            token,
        }
    }

    /// Sends `body` (raw JSON text) and returns the status and the answer's text.
    async fn send(&self, method: Method, path: &str, body: &str) -> (StatusCode, String) {
        let response = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap_or_else(|err| panic!("{method} {path}: {err}"));
        let status = response.status();
        let text = response.text().await.expect("the answer's body");
        (status, text)
    }

    /// `PUT`s `body` and expects 201.
    async fn put(&self, path: &str, body: &str) {
        let (status, text) = self.send(Method::PUT, path, body).await;
        assert_eq!(status, StatusCode::CREATED, "PUT {path} {body}: {text}");
    }

    /// `GET`s `path` as JSON, with its text.
    async fn get(&self, path: &str) -> (Value, String) {
        let (status, text) = self.send(Method::GET, path, "").await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {text}");
        let body = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{text}: {err}"));
        (body, text)
    }

    /// `PUT`s the body a `GET` of `path` gave back unchanged: 201, and a second `GET` gives
    /// the same body.
    async fn send_back(&self, path: &str, got: &Value) {
        self.put(path, &got.to_string()).await;
        let (again, _) = self.get(path).await;
        assert_eq!(&again, got, "{path} changed when its body was sent back");
    }
}

fn null(value: &Value, pointer: &str) {
    assert_eq!(
        value.pointer(pointer),
        Some(&Value::Null),
        "{pointer} should be present and null in {value:#}"
    );
}

fn absent(value: &Value, pointer: &str) {
    assert_eq!(
        value.pointer(pointer),
        None,
        "{pointer} should be left out (omitempty) in {value:#}"
    );
}

const SHA512: &str = "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12\
                      ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_comes_back_with_every_sensu_field_and_can_be_sent_back() {
    let backend = Backend::start();
    let api = Api::new(&backend).await;

    // A check with only what a client must send.
    let check = "/api/core/v2/namespaces/default/checks/cpu";
    api.put(
        check,
        r#"{"command": "check-cpu.sh", "interval": 60, "subscriptions": ["linux"],
            "metadata": {"name": "cpu", "namespace": "default"}}"#,
    )
    .await;
    let (got, _) = api.get(check).await;
    for key in [
        "/runtime_assets",
        "/env_vars",
        "/check_hooks",
        "/secrets",
        "/pipelines",
        "/output_metric_handlers",
        "/subdue",
    ] {
        null(&got, key);
    }
    assert_eq!(got["handlers"], json!([]), "{got:#}");
    assert_eq!(got["subscriptions"], json!(["linux"]));
    assert_eq!(
        (&got["proxy_entity_name"], &got["output_metric_format"]),
        (&json!(""), &json!(""))
    );
    assert_eq!((&got["ttl"], &got["publish"]), (&json!(0), &json!(false)));
    for key in [
        "/cron",
        "/proxy_requests",
        "/max_output_size",
        "/discard_output",
    ] {
        absent(&got, key);
    }
    api.send_back(check, &got).await;

    // Lists and PATCH answers carry the same fields.
    let (list, _) = api.get("/api/core/v2/namespaces/default/checks").await;
    null(&list, "/0/runtime_assets");
    let (status, text) = api.send(Method::PATCH, check, r#"{"timeout": 10}"#).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let patched: Value = serde_json::from_str(&text).expect("a JSON answer");
    assert_eq!(patched["timeout"], 10);
    null(&patched, "/check_hooks");

    // An asset with one build at the top level, and one with builds.
    let single = "/api/core/v2/namespaces/default/assets/single";
    api.put(
        single,
        &format!(
            r#"{{"url": "https://assets.example.com/a.tar.gz", "sha512": "{SHA512}",
                 "metadata": {{"name": "single", "namespace": "default"}}}}"#
        ),
    )
    .await;
    let (got, _) = api.get(single).await;
    for key in ["/builds", "/filters", "/headers"] {
        null(&got, key);
    }
    api.send_back(single, &got).await;
    let multi = "/api/core/v2/namespaces/default/assets/multi";
    api.put(
        multi,
        &format!(
            r#"{{"builds": [{{"url": "https://assets.example.com/b.tar.gz", "sha512": "{SHA512}"}}],
                 "metadata": {{"name": "multi", "namespace": "default"}}}}"#
        ),
    )
    .await;
    let (got, _) = api.get(multi).await;
    for key in [
        "/builds/0/filters",
        "/builds/0/headers",
        "/filters",
        "/headers",
    ] {
        null(&got, key);
    }
    for key in ["/url", "/sha512"] {
        absent(&got, key);
    }
    api.send_back(multi, &got).await;

    // A role's rules.
    let role = "/api/core/v2/namespaces/default/roles/viewer";
    api.put(
        role,
        r#"{"rules": [{"verbs": ["get", "list"], "resources": ["checks"]}],
            "metadata": {"name": "viewer", "namespace": "default"}}"#,
    )
    .await;
    let (got, _) = api.get(role).await;
    null(&got, "/rules/0/resource_names");
    api.send_back(role, &got).await;

    // A Vault provider (wrapped on the wire): its client's tls, never its token.
    let vault = "/api/enterprise/secrets/v1/providers/vault";
    api.put(
        vault,
        r#"{"type": "VaultProvider", "api_version": "secrets/v1", "metadata": {"name": "vault"},
            "spec": {"client": {"address": "https://vault.example.com:8200",
                                "token": "s.do-not-return-me", "version": "v2"}}}"#,
    )
    .await;
    let (got, text) = api.get(vault).await;
    null(&got, "/spec/client/tls");
    null(&got, "/spec/client/rate_limiter");
    assert_eq!(got["spec"]["client"]["max_retries"], 2);
    absent(&got, "/spec/client/token");
    assert!(!text.contains("do-not-return-me"), "{text}");
    let (_, listed) = api.get("/api/enterprise/secrets/v1/providers").await;
    assert!(!listed.contains("do-not-return-me"), "{listed}");
    api.send_back(vault, &got).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_and_events_come_back_with_every_sensu_field() {
    let backend = Backend::start();
    let api = Api::new(&backend).await;

    let entity = "/api/core/v2/namespaces/default/entities/db-1";
    api.put(
        entity,
        r#"{"entity_class": "proxy", "metadata": {"name": "db-1", "namespace": "default"}}"#,
    )
    .await;
    let (got, _) = api.get(entity).await;
    // Sensu holds `system`, its `network` and `deregistration` by value: objects, not null.
    null(&got, "/system/network/interfaces");
    null(&got, "/system/processes");
    assert_eq!(got["system"]["libc_type"], "", "{got:#}");
    assert_eq!(got["deregistration"], json!({}));
    assert_eq!(
        (&got["last_seen"], &got["sensu_agent_version"]),
        (&json!(0), &json!(""))
    );
    absent(&got, "/user");
    api.send_back(entity, &got).await;

    let event = "/api/core/v2/namespaces/default/events/db-1/backup";
    api.put(
        event,
        r#"{"entity": {"entity_class": "proxy", "metadata": {"name": "db-1", "namespace": "default"}},
            "check": {"metadata": {"name": "backup"}, "status": 1, "output": "late", "interval": 60}}"#,
    )
    .await;
    let (got, _) = api.get(event).await;
    assert_eq!(got["check"]["handlers"], json!([]), "{got:#}");
    for key in [
        "/check/env_vars",
        "/check/runtime_assets",
        "/check/check_hooks",
        "/check/scheduler",
        "/pipelines",
        "/entity/system/network/interfaces",
    ] {
        null(&got, key);
    }
    assert_eq!(got["check"]["is_silenced"], false);
    assert_eq!(got["check"]["occurrences"], 1);
    assert!(got["check"]["history"].is_array(), "{got:#}");
    assert!(got["sequence"].is_number(), "{got:#}");
    let (list, _) = api.get("/api/core/v2/namespaces/default/events").await;
    null(&list, "/0/check/env_vars");

    // Sent back, the event is a new result for the same check: the history grows by one, the
    // rest of the check and the entity stay as they were, with the same keys.
    api.put(event, &got.to_string()).await;
    let (again, _) = api.get(event).await;
    assert_eq!(
        again["check"]["history"].as_array().map(Vec::len),
        got["check"]["history"]
            .as_array()
            .map(|history| history.len() + 1),
        "{again:#}"
    );
    let result_fields = [
        "history",
        "occurrences",
        "occurrences_watermark",
        "last_ok",
        "executed",
        "issued",
        "total_state_change",
        "state",
    ];
    let mut before = got.clone();
    let mut after = again.clone();
    for event in [&mut before, &mut after] {
        let event = event.as_object_mut().expect("an object");
        for key in ["timestamp", "id", "sequence"] {
            event.remove(key);
        }
        let check = event["check"].as_object_mut().expect("a check");
        for key in result_fields {
            check.remove(key);
        }
        let entity = event["entity"].as_object_mut().expect("an entity");
        entity.remove("last_seen");
    }
    assert_eq!(
        after, before,
        "the event sent back changed more than its result"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_come_back_without_password_or_hash_and_can_be_sent_back() {
    let backend = Backend::start();
    let api = Api::new(&backend).await;
    let (status, text) = api
        .send(
            Method::POST,
            "/api/core/v2/users",
            r#"{"username": "alice", "password": "alice-password-1"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let user = "/api/core/v2/users/alice";
    let (got, text) = api.get(user).await;
    absent(&got, "/password");
    absent(&got, "/password_hash");
    assert!(!text.contains("argon2"), "{text}");
    assert_eq!(got["disabled"], false);
    api.send_back(user, &got).await;
    // Sending the user back without a password keeps the password.
    backend.login("alice", "alice-password-1").await;
}
