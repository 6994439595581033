//! Accounts, names and what the API tells a refused caller, tried as an attacker would against
//! a real backend over HTTPS (issue 13, findings 8 and 11–15): passwords change only with the
//! current one, names are ASCII as in Sensu, `/metrics` needs a credential unless served on its
//! own address, a 403 never says whether the resource exists, federated clusters are reached
//! only over https, and a shared JWT key made as Sensu's docs make it is accepted.

use std::process::Command;

use cairn_api::client::Credentials;
use cairn_tests::{create_user, eventually, grant_api_key, status_of, Backend, BackendOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Binds `user` to the cluster role `role` in namespace `default`.
async fn bind_in_default(admin: &cairn_api::client::Client, user: &str, role: &str) {
    admin
        .send(
            Method::PUT,
            &format!("/api/core/v2/namespaces/default/rolebindings/{user}-{role}"),
            Some(&json!({
                "metadata": {"name": format!("{user}-{role}"), "namespace": "default"},
                "role_ref": {"type": "ClusterRole", "name": role},
                "subjects": [{"type": "User", "name": user}],
            })),
        )
        .await
        .unwrap_or_else(|err| panic!("bind {user} to {role}: {err}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_changes_only_with_the_current_one_and_an_api_key_alone_cannot() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    create_user(&admin, "alice", "alice-original-pw").await;
    create_user(&admin, "bob", "bob-original-pw").await;
    let anonymous = backend.client(Credentials::None);
    let alice_token = anonymous
        .login("alice", "alice-original-pw")
        .await
        .expect("alice logs in")
        .access_token;
    let alice = backend.client(Credentials::Bearer(alice_token));
    let alice_key = backend.client(Credentials::ApiKey(grant_api_key(&admin, "alice").await));
    let path = "/api/core/v2/users/alice/password";

    // A stolen token or API key alone: the new password without the current one. Before the
    // fix, `password` alone was taken as the new password.
    for (who, client) in [("token", &alice), ("api key", &alice_key)] {
        for body in [
            json!({"username": "alice", "password_new": "attacker-chosen-1"}),
            json!({"username": "alice", "password": "attacker-chosen-1"}),
        ] {
            let (status, message) = status_of(client.send(Method::PUT, path, Some(&body)).await);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{who}, {body}: {message}");
        }
        let wrong = json!({"username": "alice", "password": "not-her-password", "password_new": "attacker-chosen-1"});
        let (status, message) = status_of(client.send(Method::PUT, path, Some(&wrong)).await);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{who}: {message}");
        assert_eq!(message, "password: does not match the current password");
    }
    assert!(
        anonymous.login("alice", "attacker-chosen-1").await.is_err(),
        "a refused change took effect"
    );
    let (status, message) = status_of(
        alice
            .send(
                Method::PUT,
                path,
                Some(&json!({"username": "alice", "password_new": "attacker-chosen-1"})),
            )
            .await,
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message.starts_with("password: the current password is required"),
        "{message}"
    );

    // A user may not reset a password (her own or another's) without the current one.
    for target in ["alice", "bob"] {
        let (status, message) = status_of(
            alice
                .send(
                    Method::PUT,
                    &format!("/api/core/v2/users/{target}/reset_password"),
                    Some(&json!({"username": target, "password_new": "attacker-chosen-1"})),
                )
                .await,
        );
        assert_eq!(status, StatusCode::FORBIDDEN, "reset {target}: {message}");
    }

    // Sensu's own call, with the current password, works; the old password stops working.
    alice
        .send(
            Method::PUT,
            path,
            Some(&json!({"username": "alice", "password": "alice-original-pw", "password_new": "alice-second-pw"})),
        )
        .await
        .expect("change with the current password");
    anonymous
        .login("alice", "alice-second-pw")
        .await
        .expect("the new password works");
    assert!(anonymous.login("alice", "alice-original-pw").await.is_err());

    // An administrator resets another user's password without knowing it.
    admin
        .send(
            Method::PUT,
            "/api/core/v2/users/bob/reset_password",
            Some(&json!({"username": "bob", "password_new": "bob-reset-pw-1"})),
        )
        .await
        .expect("admin resets bob");
    anonymous
        .login("bob", "bob-reset-pw-1")
        .await
        .expect("bob's reset password works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_names_are_refused_by_the_api() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    // A Cyrillic `е` in `dеv`, a full-width `ｐ` in `ｐrod`: Sensu's `\w` is ASCII.
    for name in ["d\u{0435}v", "\u{ff50}rod"] {
        let encoded: String = name
            .bytes()
            .map(|byte| {
                if byte.is_ascii_alphanumeric() {
                    char::from(byte).to_string()
                } else {
                    format!("%{byte:02X}")
                }
            })
            .collect();
        let (status, message) = status_of(
            admin
                .send(
                    Method::PUT,
                    &format!("/api/core/v2/namespaces/{encoded}"),
                    Some(&json!({"name": name})),
                )
                .await,
        );
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "namespace {name}: {message}"
        );
        assert!(
            message.contains("(allowed: ASCII letters, digits, _ . - :)"),
            "{message}"
        );
        let (status, message) = status_of(
            admin
                .send(
                    Method::PUT,
                    &format!("/api/core/v2/namespaces/default/checks/{encoded}"),
                    Some(&json!({
                        "metadata": {"name": name, "namespace": "default"},
                        "command": "true", "interval": 60, "subscriptions": ["linux"],
                    })),
                )
                .await,
        );
        assert_eq!(status, StatusCode::BAD_REQUEST, "check {name}: {message}");
    }
    let namespaces = admin
        .get_json("/api/core/v2/namespaces")
        .await
        .expect("list namespaces");
    let names: Vec<&str> = namespaces
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|namespace| namespace["name"].as_str())
        .collect();
    assert_eq!(names, ["default"], "a look-alike namespace was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_credential_unless_served_on_their_own_address() {
    let backend = Backend::start_with(
        BackendOptions::default()
            .args(["--metrics-listen", "127.0.0.1:0"])
            .capture_logs(),
    );
    let admin = backend.admin().await;
    create_user(&admin, "watcher", "watcher-pw-1").await;
    bind_in_default(&admin, "watcher", "view").await;

    let (status, _) = status_of(
        backend
            .client(Credentials::None)
            .send(Method::GET, "/metrics", None)
            .await,
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED, "anonymous /metrics");
    let (status, _) = status_of(
        backend
            .client(Credentials::Bearer("not-a-token".into()))
            .send(Method::GET, "/metrics", None)
            .await,
    );
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "/metrics with a bad token"
    );
    let viewer = backend.client(Credentials::ApiKey(grant_api_key(&admin, "watcher").await));
    let text = viewer
        .send(Method::GET, "/metrics", None)
        .await
        .expect("a viewer's API key reads /metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(text.contains("cairn_events_ingested_total"), "{text}");

    // The separate address: /metrics without a credential, over plain HTTP, and nothing else.
    let stdout = backend
        .log_files()
        .into_iter()
        .find(|path| path.ends_with("stdout.log"))
        .expect("a stdout log");
    let metrics_url = eventually(
        "the backend to print its metrics address",
        std::time::Duration::from_secs(10),
        || async {
            let printed = std::fs::read_to_string(&stdout).unwrap_or_default();
            printed
                .lines()
                .find_map(|line| line.strip_prefix("metrics listening on "))
                .map(|url| url.trim().to_owned())
                .ok_or(printed)
        },
    )
    .await;
    assert!(
        metrics_url.starts_with("http://127.0.0.1:"),
        "{metrics_url}"
    );
    let plain = cairn_api::client::plain_http_client(std::time::Duration::from_secs(10))
        .expect("a plain HTTP client");
    let response = plain.get(&metrics_url).send().await.expect("scrape");
    assert_eq!(response.status(), StatusCode::OK);
    let scraped = response.text().await.expect("scraped text");
    assert!(scraped.contains("cairn_events_ingested_total"), "{scraped}");
    let base = metrics_url.trim_end_matches("/metrics");
    for path in ["/api/core/v2/namespaces", "/auth", "/health"] {
        let response = plain
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("request");
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "{path} on the metrics address"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_does_not_say_whether_the_resource_exists() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    create_user(&admin, "peeker", "peeker-pw-1").await;
    bind_in_default(&admin, "peeker", "view").await;
    admin
        .send(
            Method::PUT,
            "/api/core/v2/namespaces/default/checks/exists",
            Some(&json!({
                "metadata": {"name": "exists", "namespace": "default"},
                "command": "true", "interval": 60, "subscriptions": ["linux"],
            })),
        )
        .await
        .expect("create the check");
    let token = backend
        .client(Credentials::None)
        .login("peeker", "peeker-pw-1")
        .await
        .expect("login")
        .access_token;
    let peeker = backend.client(Credentials::Bearer(token));

    // PUT of a check that exists and of one that does not: the same refusal, bar the name.
    let put = |name: &'static str| {
        let peeker = peeker.clone();
        async move {
            let body = json!({
                "metadata": {"name": name, "namespace": "default"},
                "command": "true", "interval": 60, "subscriptions": ["linux"],
            });
            status_of(
                peeker
                    .send(
                        Method::PUT,
                        &format!("/api/core/v2/namespaces/default/checks/{name}"),
                        Some(&body),
                    )
                    .await,
            )
        }
    };
    let (existing_status, existing) = put("exists").await;
    let (missing_status, missing) = put("absent").await;
    assert_eq!(existing_status, StatusCode::FORBIDDEN);
    assert_eq!(missing_status, StatusCode::FORBIDDEN);
    assert_eq!(
        existing.replace("exists", "NAME"),
        missing.replace("absent", "NAME"),
        "the two refusals differ"
    );

    // User actions: the same 403 for a user that exists and one that does not.
    for action in ["reinstate", "reset_password", "groups/cluster-admins"] {
        let mut answers = Vec::new();
        for user in ["admin", "no-such-user"] {
            let (status, message) = status_of(
                peeker
                    .send(
                        Method::PUT,
                        &format!("/api/core/v2/users/{user}/{action}"),
                        Some(&json!({"password_new": "whatever-pw-1"})),
                    )
                    .await,
            );
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{action} on {user}: {message}"
            );
            answers.push(message.replace(user, "NAME"));
        }
        assert_eq!(answers[0], answers[1], "{action}: the two refusals differ");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_are_reached_only_over_https() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let cluster = |url: &str| {
        json!({
            "type": "Cluster",
            "api_version": "federation/v1",
            "metadata": {"name": "alpha"},
            "spec": {"api_urls": [url]},
        })
    };
    let (status, message) = status_of(
        admin
            .send(
                Method::PUT,
                "/api/enterprise/federation/v1/clusters/alpha",
                Some(&cluster("http://127.0.0.1:8080")),
            )
            .await,
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
    assert!(message.contains("is plain http"), "{message}");
    let (status, _) = status_of(
        admin
            .send(
                Method::GET,
                "/api/enterprise/federation/v1/clusters/alpha",
                None,
            )
            .await,
    );
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the refused cluster was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_jwt_key_made_with_openssl_ecparam_is_accepted() {
    let keys = tempfile::tempdir().expect("tempdir");
    let private = keys.path().join("jwt_private.pem");
    let public = keys.path().join("jwt_public.pem");
    // As Sensu's federation docs make the shared key: a SEC1 `EC PRIVATE KEY`.
    let run = |args: &[&std::ffi::OsStr]| {
        let output = Command::new("openssl")
            .args(args)
            .output()
            .expect("run openssl");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&[
        "ecparam".as_ref(),
        "-genkey".as_ref(),
        "-name".as_ref(),
        "prime256v1".as_ref(),
        "-noout".as_ref(),
        "-out".as_ref(),
        private.as_os_str(),
    ]);
    run(&[
        "ec".as_ref(),
        "-in".as_ref(),
        private.as_os_str(),
        "-pubout".as_ref(),
        "-out".as_ref(),
        public.as_os_str(),
    ]);
    let written = std::fs::read_to_string(&private).expect("read the key");
    assert!(
        written.starts_with("-----BEGIN EC PRIVATE KEY-----"),
        "{written}"
    );

    let backend = Backend::start_with(BackendOptions::default().init_args([
        "--jwt-private-key-file".as_ref(),
        private.as_os_str(),
        "--jwt-public-key-file".as_ref(),
        public.as_os_str(),
    ]));
    let admin = backend.admin().await;
    let namespaces: Value = admin
        .get_json("/api/core/v2/namespaces")
        .await
        .expect("a token signed with the shared key works");
    assert!(namespaces.is_array());
    let stored = std::fs::read_to_string(backend.data_dir.join("jwt/private.pem"))
        .expect("read the stored key");
    assert!(
        stored.starts_with("-----BEGIN PRIVATE KEY-----"),
        "the data dir holds PKCS#8"
    );
}
