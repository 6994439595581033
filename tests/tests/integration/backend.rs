//! The backend as an operator meets it: `cairn-backend init`, `start` on a port-0 HTTPS
//! listener, then the REST API over real TLS: login, users, groups, API keys, RBAC, events and
//! a pipe handler that really runs, and bad input refused with a clear message.

use std::path::Path;
use std::time::Duration;

use cairn_api::client::{ClientError, Credentials};
use cairn_tests::{
    create_namespaces, eventually, status_of, text_matching, Backend, ADMIN_PASSWORD,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Waits for a file to hold `needle`, naming the likely cause on timeout.
async fn wait_for_file(path: &Path, needle: &str, what: &str) -> String {
    eventually(
        &format!("{what}: {} to hold {needle:?}", path.display()),
        Duration::from_secs(15),
        || async {
            match std::fs::read_to_string(path) {
                Ok(text) => text_matching(text, |text| text.contains(needle)),
                Err(err) => Err(err.to_string()),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_flow_with_api_key_event_and_pipe_handler() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let out = tempfile::tempdir().expect("tempdir");

    // A user, in cluster-admins, with an API key.
    admin
        .send(
            Method::POST,
            "/api/core/v2/users",
            Some(&json!({"username": "webinar", "password": "webinar-pw-1", "groups": []})),
        )
        .await
        .expect("create user");
    admin
        .send(
            Method::PUT,
            "/api/core/v2/users/webinar/groups/cluster-admins",
            None,
        )
        .await
        .expect("add group");
    let response = admin
        .send(
            Method::POST,
            "/api/core/v2/apikeys",
            Some(&json!({"username": "webinar"})),
        )
        .await
        .expect("grant api key");
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let key = location
        .rsplit('/')
        .next()
        .expect("key in location")
        .to_owned();
    let webinar = backend.client(Credentials::ApiKey(key));

    // Handlers: slack appends each event to a file; pagerduty too.
    for (name, file) in [("slack", "slack.json"), ("pagerduty", "pagerduty.json")] {
        let path = out.path().join(file);
        let handler = json!({
            "metadata": {"name": name, "namespace": "default"},
            "type": "pipe",
            "command": format!("cat >> {}; echo >> {}", path.display(), path.display()),
            "filters": ["is_incident"],
            "timeout": 10,
        });
        webinar
            .send(
                Method::PUT,
                &format!("/api/core/v2/namespaces/default/handlers/{name}"),
                Some(&handler),
            )
            .await
            .expect("put handler");
    }

    let event = |status: u32| {
        json!({
            "entity": {"entity_class": "proxy", "metadata": {"name": "i-424242"}},
            "check": {"metadata": {"name": "my-app"}, "status": status, "output": "boom", "handlers": ["slack", "pagerduty"], "interval": 60},
        })
    };
    let response = webinar
        .send(
            Method::POST,
            "/api/core/v2/namespaces/default/events",
            Some(&event(2)),
        )
        .await
        .expect("post event");
    assert_eq!(response.status(), StatusCode::CREATED);

    let stored = webinar
        .get_json("/api/core/v2/namespaces/default/events/i-424242/my-app")
        .await
        .expect("get event");
    assert_eq!(stored["check"]["status"], 2);
    assert_eq!(stored["check"]["occurrences"], 1);
    assert_eq!(stored["entity"]["metadata"]["name"], "i-424242");
    let slack = wait_for_file(
        &out.path().join("slack.json"),
        "i-424242",
        "the slack handler",
    )
    .await;
    assert!(slack.contains("\"status\":2"), "{slack}");
    wait_for_file(
        &out.path().join("pagerduty.json"),
        "i-424242",
        "the pagerduty handler",
    )
    .await;

    // The proxy entity was created on first sight.
    let entity = webinar
        .get_json("/api/core/v2/namespaces/default/entities/i-424242")
        .await
        .expect("entity");
    assert_eq!(entity["entity_class"], "proxy");

    // Resolution: status 0 runs the handler again (is_incident passes a resolution).
    webinar
        .send(
            Method::PUT,
            "/api/core/v2/namespaces/default/events/i-424242/my-app",
            Some(&event(0)),
        )
        .await
        .expect("resolve");
    wait_for_file(
        &out.path().join("slack.json"),
        "\"status\":0",
        "the resolution",
    )
    .await;
    let stored = webinar
        .get_json("/api/core/v2/namespaces/default/events/i-424242/my-app")
        .await
        .expect("get event");
    assert_eq!(stored["check"]["history"].as_array().map(Vec::len), Some(2));

    // Metrics count what happened.
    let metrics = backend
        .admin()
        .await
        .send(Method::GET, "/metrics", None)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("cairn_events_ingested_total 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_matrix_and_disabled_users() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let user = |name: &str| json!({"username": name, "password": format!("{name}-password"), "groups": []});
    for name in ["viewer", "dev"] {
        admin
            .send(Method::POST, "/api/core/v2/users", Some(&user(name)))
            .await
            .expect("create user");
    }
    admin
        .send(
            Method::PUT,
            "/api/core/v2/clusterrolebindings/viewer",
            Some(&json!({"metadata": {"name": "viewer"}, "role_ref": {"type": "ClusterRole", "name": "view"}, "subjects": [{"type": "User", "name": "viewer"}]})),
        )
        .await
        .expect("bind viewer");
    create_namespaces(&admin, &["dev", "prod"]).await;
    admin
        .send(
            Method::PUT,
            "/api/core/v2/namespaces/dev/rolebindings/dev-edit",
            Some(&json!({"metadata": {"name": "dev-edit"}, "role_ref": {"type": "ClusterRole", "name": "edit"}, "subjects": [{"type": "User", "name": "dev"}]})),
        )
        .await
        .expect("bind dev");

    let anonymous = backend.client(Credentials::None);
    let login = |name: &'static str| {
        let anonymous = anonymous.clone();
        async move {
            let tokens = anonymous
                .login(name, &format!("{name}-password"))
                .await
                .expect("login");
            anonymous.with_credentials(Credentials::Bearer(tokens.access_token))
        }
    };
    let viewer = login("viewer").await;
    let dev = login("dev").await;
    let check = json!({"command": "true", "interval": 10, "subscriptions": ["linux"]});

    assert_eq!(
        status_of(
            viewer
                .send(Method::GET, "/api/core/v2/namespaces/default/checks", None)
                .await
        )
        .0,
        StatusCode::OK
    );
    let (status, message) = status_of(
        viewer
            .send(
                Method::PUT,
                "/api/core/v2/namespaces/default/checks/cpu",
                Some(&check),
            )
            .await,
    );
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        message,
        // The same words whether checks/cpu exists or not (issue 13: no existence oracle).
        "user viewer may not create or update checks/cpu in namespace default"
    );

    assert_eq!(
        status_of(
            dev.send(
                Method::PUT,
                "/api/core/v2/namespaces/dev/checks/cpu",
                Some(&check)
            )
            .await
        )
        .0,
        StatusCode::CREATED
    );
    let (status, message) = status_of(
        dev.send(
            Method::PUT,
            "/api/core/v2/namespaces/prod/checks/cpu",
            Some(&check),
        )
        .await,
    );
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");

    // Disable the viewer: its token stops working at once; so does an API key of a deleted user.
    admin
        .send(Method::DELETE, "/api/core/v2/users/viewer", None)
        .await
        .expect("disable viewer");
    let (status, _) = status_of(
        viewer
            .send(Method::GET, "/api/core/v2/namespaces/default/checks", None)
            .await,
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        anonymous
            .login("viewer", "viewer-password")
            .await
            .map(|_| ())
            .map_err(|err| err.to_string()),
        Err("401 Unauthorized: bad credentials".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_clear_message() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let check = json!({"command": "true", "interval": 10});
    let cases: Vec<(Method, &str, Option<Value>, StatusCode, &str)> = vec![
        (Method::PUT, "/api/core/v2/namespaces/default/checks/a..b", Some(check.clone()), StatusCode::CREATED, ""),
        // Clients normalise `..` out of URLs, so it arrives in a body.
        (Method::POST, "/api/core/v2/namespaces/default/checks", Some(json!({"command": "x", "interval": 10, "metadata": {"name": ".."}})), StatusCode::BAD_REQUEST, "metadata.name: \"..\" is not a valid name"),
        (Method::PUT, "/api/core/v2/namespaces/default/checks/a/b", Some(check.clone()), StatusCode::BAD_REQUEST, "metadata.name: \"a/b\" cannot contain spaces or special characters (allowed: ASCII letters, digits, _ . - :)"),
        (Method::PUT, "/api/core/v2/namespaces/default/checks/a%2Fb", Some(check.clone()), StatusCode::BAD_REQUEST, "metadata.name: \"a/b\" cannot contain spaces or special characters (allowed: ASCII letters, digits, _ . - :)"),
        (Method::PUT, "/api/core/v2/namespaces/default/checks/cpu", Some(json!({"command": "x", "intreval": 10})), StatusCode::BAD_REQUEST, "intreval: unknown field \"intreval\" (did you mean \"interval\"?)"),
        (Method::PUT, "/api/core/v2/namespaces/default/checks/cpu", Some(json!({"command": "x", "interval": 10, "metadata": {"namespace": "prod"}})), StatusCode::BAD_REQUEST, "the namespace of the resource (prod) does not match the namespace of the URI (default)"),
        (Method::PUT, "/api/core/v2/namespaces/nope/checks/cpu", Some(check.clone()), StatusCode::NOT_FOUND, "namespace \"nope\" not found"),
        (Method::GET, "/api/core/v2/namespaces/default/widgets", None, StatusCode::NOT_FOUND, "not found"),
    ];
    for (method, path, body, expected_status, expected_message) in cases {
        let (status, message) = status_of(admin.send(method.clone(), path, body.as_ref()).await);
        assert_eq!(
            (status, message.as_str()),
            (expected_status, expected_message),
            "{method} {path}"
        );
    }
    // Malformed JSON and an oversized body, sent raw.
    let http = reqwest_client(&backend);
    let token = admin_token(&backend).await;
    let response = http
        .put(format!(
            "{}/api/core/v2/namespaces/default/checks/cpu",
            backend.url
        ))
        .bearer_auth(&token)
        .body("{\"command\": ")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("json error body");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("malformed JSON at line 1 column"),
        "{body}"
    );
    assert_eq!(body["code"], 1);
    let response = http
        .put(format!(
            "{}/api/core/v2/namespaces/default/checks/big",
            backend.url
        ))
        .bearer_auth(&token)
        .body(format!(
            "{{\"command\": \"{}\", \"interval\": 10}}",
            "x".repeat(600 * 1024)
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Nothing of the refused writes exists.
    assert!(admin
        .get_resource(cairn_api::Kind::CheckConfig, "default", "cpu")
        .await
        .expect("get")
        .is_none());
    assert!(admin
        .get_resource(cairn_api::Kind::CheckConfig, "default", "big")
        .await
        .expect("get")
        .is_none());

    // Stale resource version: 409.
    let response = admin
        .send(
            Method::GET,
            "/api/core/v2/namespaces/default/checks/a..b",
            None,
        )
        .await
        .expect("get");
    let etag = response.headers()["etag"]
        .to_str()
        .expect("etag")
        .to_owned();
    admin
        .send(
            Method::PUT,
            "/api/core/v2/namespaces/default/checks/a..b",
            Some(&check),
        )
        .await
        .expect("update");
    let stale = http
        .put(format!(
            "{}/api/core/v2/namespaces/default/checks/a..b",
            backend.url
        ))
        .bearer_auth(&token)
        .header("If-Match", etag)
        .json(&check)
        .send()
        .await
        .expect("send");
    assert_eq!(stale.status(), StatusCode::CONFLICT);

    // Tokens that must not pass.
    let (status, message) = status_of(
        backend
            .client(Credentials::Bearer("not.a.jwt".into()))
            .send(Method::GET, "/api/core/v2/namespaces", None)
            .await,
    );
    assert_eq!(
        (status, message.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid credentials")
    );
    let (status, message) = status_of(
        backend
            .client(Credentials::None)
            .send(Method::GET, "/api/core/v2/namespaces", None)
            .await,
    );
    assert_eq!(
        (status, message.as_str()),
        (StatusCode::UNAUTHORIZED, "bad credentials")
    );
}

fn reqwest_client(backend: &Backend) -> reqwest::Client {
    let tls = cairn_api::client::tls_config_trusting(&backend.ca()).expect("tls config");
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .expect("client")
}

async fn admin_token(backend: &Backend) -> String {
    backend
        .client(Credentials::None)
        .login("admin", ADMIN_PASSWORD)
        .await
        .expect("login")
        .access_token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_refresh_once_and_forged_tokens_are_refused() {
    let backend = Backend::start();
    let anonymous = backend.client(Credentials::None);
    let tokens = anonymous
        .login("admin", ADMIN_PASSWORD)
        .await
        .expect("login");

    // A refresh token works once; reusing it is refused.
    let renewed = anonymous
        .refresh(&tokens.access_token, &tokens.refresh_token)
        .await
        .expect("refresh");
    let reuse = anonymous
        .refresh(&tokens.access_token, &tokens.refresh_token)
        .await;
    assert!(
        matches!(
            reuse,
            Err(ClientError::Status {
                status: StatusCode::UNAUTHORIZED,
                ..
            })
        ),
        "{reuse:?}"
    );
    // Logout invalidates the current refresh token.
    let admin = anonymous.with_credentials(Credentials::Bearer(renewed.access_token.clone()));
    admin
        .send(
            reqwest::Method::POST,
            "/auth/logout",
            Some(&json!({"refresh_token": renewed.refresh_token})),
        )
        .await
        .expect("logout");
    let after_logout = anonymous
        .refresh(&renewed.access_token, &renewed.refresh_token)
        .await;
    assert!(
        after_logout.is_err(),
        "a logged-out refresh token still works"
    );

    // Forged tokens: alg none, HS256 keyed with the public key, a foreign key, expired. Each is
    // a 401 and nothing else. (Another issuer with our key is another cluster of the
    // federation sharing it: accepted, see below and federation_view.rs.)
    let public_pem =
        std::fs::read_to_string(backend.data_dir.join("jwt/public.pem")).expect("public key");
    let private_pem =
        std::fs::read_to_string(backend.data_dir.join("jwt/private.pem")).expect("private key");
    let foreign = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    // Every token names the cluster it is meant for (`aud`, issue 13): this one is "cairn".
    let claims = |iss: &str, exp: u64| json!({"sub": "admin", "iss": iss, "aud": "cairn", "exp": exp, "iat": now, "jti": "x", "groups": ["cluster-admins"]});
    // The same claims with another `aud`; `None` removes it.
    let with_audience = |audience: Option<&str>| {
        let mut claims = claims("cairn", now + 60);
        match audience {
            Some(audience) => claims["aud"] = json!(audience),
            None => {
                claims.as_object_mut().expect("an object").remove("aud");
            }
        }
        claims
    };
    let es256 = |pem: &str, claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).expect("ec key"),
        )
        .expect("sign")
    };
    let b64 = |bytes: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    };
    let forged = [
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(claims("cairn", now + 60).to_string().as_bytes())
            ),
        ),
        (
            "HS256",
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims("cairn", now + 60),
                &jsonwebtoken::EncodingKey::from_secret(public_pem.as_bytes()),
            )
            .expect("sign"),
        ),
        (
            "foreign key",
            es256(&foreign.serialize_pem(), claims("cairn", now + 60)),
        ),
        ("expired", es256(&private_pem, claims("cairn", now - 60))),
        ("no audience", es256(&private_pem, with_audience(None))),
        (
            "another cluster's audience",
            es256(&private_pem, with_audience(Some("elsewhere"))),
        ),
    ];
    // The real key and issuer do work, so the refusals are about the forgery alone.
    let genuine = es256(&private_pem, claims("cairn", now + 60));
    let (status, _) = status_of(
        backend
            .client(Credentials::Bearer(genuine))
            .send(reqwest::Method::GET, "/api/core/v2/namespaces", None)
            .await,
    );
    assert_eq!(status, StatusCode::OK);
    // Another issuer signing with our (shared) key: a federated caller, authorised by the
    // groups in its token (here cluster-admins), though no such user needs to exist here.
    let federated = es256(&private_pem, claims("someone-else", now + 60));
    let (status, _) = status_of(
        backend
            .client(Credentials::Bearer(federated))
            .send(reqwest::Method::GET, "/api/core/v2/namespaces", None)
            .await,
    );
    assert_eq!(status, StatusCode::OK);
    for (what, token) in forged {
        let (status, message) = status_of(
            backend
                .client(Credentials::Bearer(token))
                .send(reqwest::Method::GET, "/api/core/v2/namespaces", None)
                .await,
        );
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silenced_checks_do_not_reach_not_silenced_handlers() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let out = tempfile::tempdir().expect("tempdir");
    let path = out.path().join("pager.json");
    let handler = json!({
        "metadata": {"name": "pager"},
        "type": "pipe",
        "command": format!("cat >> {}; echo >> {}", path.display(), path.display()),
        "filters": ["is_incident", "not_silenced"],
    });
    admin
        .send(
            reqwest::Method::PUT,
            "/api/core/v2/namespaces/default/handlers/pager",
            Some(&handler),
        )
        .await
        .expect("handler");
    let silence = json!({"metadata": {"name": "*:noisy"}, "check": "noisy", "reason": "maintenance", "expire": 3600});
    admin
        .send(
            reqwest::Method::PUT,
            "/api/core/v2/namespaces/default/silenced/*:noisy",
            Some(&silence),
        )
        .await
        .expect("silence");
    let stored = admin
        .get_json("/api/core/v2/namespaces/default/silenced/*:noisy")
        .await
        .expect("get silence");
    assert_eq!(stored["creator"], "admin");
    assert!(
        stored["expire_at"].as_i64().unwrap_or(0) > stored["begin"].as_i64().unwrap_or(0),
        "{stored}"
    );

    for check in ["noisy", "real"] {
        let event = json!({
            "entity": {"metadata": {"name": "web-1"}},
            "check": {"metadata": {"name": check}, "status": 2, "handlers": ["pager"], "interval": 60},
        });
        admin
            .send(
                reqwest::Method::POST,
                "/api/core/v2/namespaces/default/events",
                Some(&event),
            )
            .await
            .expect("event");
    }
    // The pipeline takes events in order: once "real" is handled, "noisy" was already filtered.
    let text = wait_for_file(&path, "\"real\"", "the pager handler").await;
    assert!(
        !text.contains("\"noisy\""),
        "a silenced check reached the handler:\n{text}"
    );
    // Runs are counted when dispatched, in order, so this is exact: only "real" ran.
    let metrics = backend
        .admin()
        .await
        .send(reqwest::Method::GET, "/metrics", None)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("cairn_handler_runs_total 1\n"),
        "{metrics}"
    );
}

/// Results for one check that arrive at the same time each land in its history: the backend
/// stores an event only over the revision it computed it from, and recomputes otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_results_for_one_check_all_land_in_history() {
    let backend = Backend::start();
    let admin = std::sync::Arc::new(backend.admin().await);
    const RESULTS: i64 = 21; // a full history (HISTORY_LEN)
    let mut posts = tokio::task::JoinSet::new();
    for executed in 1..=RESULTS {
        let admin = std::sync::Arc::clone(&admin);
        posts.spawn(async move {
            let event = json!({
                "entity": {"metadata": {"name": "web-1"}},
                "check": {"metadata": {"name": "disk"}, "status": 1, "executed": executed, "interval": 60},
            });
            admin
                .send(
                    Method::POST,
                    "/api/core/v2/namespaces/default/events",
                    Some(&event),
                )
                .await
                .map(|response| response.status())
        });
    }
    while let Some(joined) = posts.join_next().await {
        let status = joined.expect("post task").expect("post");
        assert_eq!(status, StatusCode::CREATED);
    }
    let stored = admin
        .get_json("/api/core/v2/namespaces/default/events/web-1/disk")
        .await
        .expect("get event");
    let mut executed: Vec<i64> = stored["check"]["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|entry| entry["executed"].as_i64().expect("executed"))
        .collect();
    executed.sort_unstable();
    assert_eq!(executed, (1..=RESULTS).collect::<Vec<_>>(), "{stored}");
    assert_eq!(stored["check"]["occurrences"], RESULTS, "{stored}");
}
