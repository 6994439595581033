//! What Sensu's own clients send, byte for byte, against a real backend (issue 15): password
//! hashes from `sensuctl user hash-password`, the user actions and their status codes, the
//! roles Sensu seeds, hook types Sensu does not validate, Tessen, and the namespaces a
//! namespaced user can reach. Each request body is the JSON text the client sends.

use std::time::Duration;

use cairn_tests::{eventually, text_matching, Backend, BackendOptions};
use reqwest::Method;
use serde_json::{json, Value};

/// A raw HTTPS client of `backend`: requests are sent as given, answers read whole.
struct Raw {
    http: reqwest::Client,
    url: String,
}

impl Raw {
    fn new(backend: &Backend) -> Raw {
        let http = backend.http();
        Raw {
            http,
            url: backend.url.clone(),
        }
    }

    /// Sends `method path` with the bearer `token` and the JSON text `body`; the status and
    /// the body of the answer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_owned());
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|err| panic!("{method} {path}: {err}"));
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    async fn put(&self, path: &str, token: &str, body: &str) -> (u16, String) {
        self.send(Method::PUT, path, token, Some(body)).await
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let (status, text) = self.send(Method::GET, path, token, None).await;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// The status of `GET /auth` with Basic credentials (Sensu's login).
    async fn login_status(&self, username: &str, password: &str) -> u16 {
        self.http
            .get(format!("{}/auth", self.url))
            .basic_auth(username, Some(password))
            .send()
            .await
            .map(|response| response.status().as_u16())
            .unwrap_or(0)
    }

    /// Logs in with Basic credentials; the access token.
    async fn token(&self, username: &str, password: &str) -> String {
        let response = self
            .http
            .get(format!("{}/auth", self.url))
            .basic_auth(username, Some(password))
            .send()
            .await
            .expect("GET /auth");
        assert_eq!(response.status(), 200, "{username} logs in");
        let tokens: Value = response.json().await.expect("the tokens");
        tokens["access_token"]
            .as_str()
            .expect("an access token")
            .to_owned()
    }
}

/// What `sensuctl user hash-password PASSWORD` prints: Go's bcrypt at its default cost, 10.
fn sensu_hash(password: &str) -> String {
    bcrypt::hash_with_result(password, 10)
        .expect("bcrypt")
        .format_for_version(bcrypt::Version::TwoA)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensu_password_hashes_create_reset_and_change_passwords_and_are_upgraded() {
    let backend = Backend::start_with(
        BackendOptions::default()
            .env("CAIRN_LOG", "info")
            .capture_logs(),
    );
    let raw = Raw::new(&backend);
    let admin = raw.token("admin", cairn_tests::ADMIN_PASSWORD).await;

    // `sensuctl user create alice --password-hash …` / a client's PUT with only the hash.
    let body = format!(
        r#"{{"username":"alice","password_hash":"{}","groups":["ops"],"disabled":false}}"#,
        sensu_hash("P@ssw0rd!")
    );
    assert_eq!(
        raw.put("/api/core/v2/users/alice", &admin, &body).await.0,
        201
    );
    // The hash is never returned, nor anything that looks like one.
    let (status, alice) = raw.get("/api/core/v2/users/alice", &admin).await;
    assert_eq!(status, 200);
    assert!(!alice.to_string().contains("$2a$"), "{alice}");
    assert_eq!(raw.login_status("alice", "P@ssw0rd?").await, 401);
    assert_eq!(raw.login_status("alice", "P@ssw0rd!").await, 200);
    // The first login replaced the bcrypt hash with argon2, and the password still works.
    eventually(
        "the hash upgrade is logged",
        Duration::from_secs(10),
        || async {
            text_matching(backend.log(), |log| {
                log.contains("password hash upgraded to argon2")
            })
        },
    )
    .await;
    assert_eq!(backend.log().matches("password hash upgraded").count(), 1);
    assert_eq!(raw.login_status("alice", "P@ssw0rd!").await, 200);
    assert_eq!(backend.log().matches("password hash upgraded").count(), 1);

    // Hashes that are not hashes, or that would make each login cost minutes, change nothing.
    let costly = sensu_hash("whatever1").replacen("$10$", "$31$", 1);
    for (hash, expected) in [
        (costly.as_str(), "bcrypt cost 31 exceeds the limit 14"),
        ("P@ssw0rd!", "not a password hash"),
        ("$2a$10$tooshort", "not a valid bcrypt hash"),
    ] {
        let body = format!(r#"{{"username":"mallory","password_hash":"{hash}","groups":[]}}"#);
        let (status, message) = raw.put("/api/core/v2/users/mallory", &admin, &body).await;
        assert_eq!(status, 400, "{message}");
        assert!(message.contains(expected), "{message}");
        assert!(!message.contains(hash), "the hash is not echoed: {message}");
    }
    assert_eq!(raw.get("/api/core/v2/users/mallory", &admin).await.0, 404);
    // A user with neither a password nor a hash is refused.
    let (status, message) = raw
        .put(
            "/api/core/v2/users/mallory",
            &admin,
            r#"{"username":"mallory","groups":[]}"#,
        )
        .await;
    assert_eq!(status, 400);
    assert!(message.contains("password or a password_hash"), "{message}");

    // `sensuctl user reset-password alice --new-password …`: the hash of the new one.
    let body = format!(
        r#"{{"username":"alice","password_hash":"{}"}}"#,
        sensu_hash("Reset#2026")
    );
    let (status, message) = raw
        .put("/api/core/v2/users/alice/reset_password", &admin, &body)
        .await;
    assert_eq!(status, 201, "{message}");
    assert_eq!(raw.login_status("alice", "P@ssw0rd!").await, 401);
    assert_eq!(raw.login_status("alice", "Reset#2026").await, 200);
    // The body's user must be the URI's.
    let (status, message) = raw
        .put(
            "/api/core/v2/users/alice/reset_password",
            &admin,
            &body.replace("alice", "admin"),
        )
        .await;
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("does not match"), "{message}");

    // `sensuctl user change-password` as alice: the current password and the new hash.
    let alice = raw.token("alice", "Reset#2026").await;
    let change = |current: &str, new: &str| {
        format!(
            r#"{{"username":"alice","password":"{current}","password_hash":"{}"}}"#,
            sensu_hash(new)
        )
    };
    // A wrong current password (a stolen token alone) changes nothing.
    let (status, message) = raw
        .put(
            "/api/core/v2/users/alice/password",
            &alice,
            &change("guess-guess", "Stolen#2026"),
        )
        .await;
    assert_eq!(status, 400, "{message}");
    assert_eq!(raw.login_status("alice", "Stolen#2026").await, 401);
    let (status, message) = raw
        .put(
            "/api/core/v2/users/alice/password",
            &alice,
            &change("Reset#2026", "Changed#2026"),
        )
        .await;
    assert_eq!(status, 201, "{message}");
    assert_eq!(raw.login_status("alice", "Reset#2026").await, 401);
    assert_eq!(raw.login_status("alice", "Changed#2026").await, 200);
    // The web UI's form: the new password in clear.
    let (status, message) = raw
        .put(
            "/api/core/v2/users/alice/password",
            &alice,
            r#"{"username":"alice","password":"Changed#2026","password_new":"Clear#2026!"}"#,
        )
        .await;
    assert_eq!(status, 201, "{message}");
    assert_eq!(raw.login_status("alice", "Clear#2026!").await, 200);

    // Another user may change neither alice's password nor reset it.
    cairn_tests::create_user(&backend.admin().await, "bob", "bob-password").await;
    let bob = raw.token("bob", "bob-password").await;
    let (status, _) = raw
        .put(
            "/api/core/v2/users/alice/password",
            &bob,
            &change("Clear#2026!", "Bobs#choice"),
        )
        .await;
    assert_eq!(status, 403);
    let body = format!(
        r#"{{"username":"alice","password_hash":"{}"}}"#,
        sensu_hash("Bobs#choice")
    );
    let (status, _) = raw
        .put("/api/core/v2/users/alice/reset_password", &bob, &body)
        .await;
    assert_eq!(status, 403);
    assert_eq!(raw.login_status("alice", "Bobs#choice").await, 401);
    assert_eq!(raw.login_status("alice", "Clear#2026!").await, 200);
    // No password and no hash anywhere in the log.
    let log = backend.log();
    for secret in [
        "P@ssw0rd!",
        "Reset#2026",
        "Changed#2026",
        "Clear#2026!",
        "$2a$10$",
    ] {
        assert!(!log.contains(secret), "the log holds {secret}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_actions_answer_sensu_status_codes_and_seeded_roles_are_sensus() {
    let backend = Backend::start();
    let raw = Raw::new(&backend);
    let admin = raw.token("admin", cairn_tests::ADMIN_PASSWORD).await;
    cairn_tests::create_user(&backend.admin().await, "carol", "carol-password").await;

    // Sensu answers a PUT without a body with 201 and a DELETE with 204; clients check that.
    let send = |method: Method, path: &'static str| {
        let raw = &raw;
        let admin = admin.clone();
        async move { raw.send(method, path, &admin, None).await.0 }
    };
    assert_eq!(
        send(Method::PUT, "/api/core/v2/users/carol/groups/dev").await,
        201
    );
    assert_eq!(
        send(Method::PUT, "/api/core/v2/users/carol/groups/ops").await,
        201
    );
    assert_eq!(
        send(Method::DELETE, "/api/core/v2/users/carol/groups/dev").await,
        204
    );
    let (_, carol) = raw.get("/api/core/v2/users/carol", &admin).await;
    assert_eq!(carol["groups"], json!(["ops"]));
    assert_eq!(
        send(Method::DELETE, "/api/core/v2/users/carol/groups").await,
        204
    );
    assert_eq!(send(Method::DELETE, "/api/core/v2/users/carol").await, 204);
    assert_eq!(raw.login_status("carol", "carol-password").await, 401);
    assert_eq!(
        send(Method::PUT, "/api/core/v2/users/carol/reinstate").await,
        201
    );
    assert_eq!(raw.login_status("carol", "carol-password").await, 200);
    assert_eq!(
        send(Method::PUT, "/api/core/v2/users/nobody/reinstate").await,
        404
    );
    // `sensuctl logout`: 200, and the refresh token is spent.
    let tokens: Value = raw
        .http
        .get(format!("{}/auth", raw.url))
        .basic_auth("carol", Some("carol-password"))
        .send()
        .await
        .expect("GET /auth")
        .json()
        .await
        .expect("tokens");
    let body = json!({"refresh_token": tokens["refresh_token"]}).to_string();
    let access = tokens["access_token"].as_str().unwrap_or_default();
    assert_eq!(
        raw.send(Method::POST, "/auth/logout", access, Some(&body))
            .await
            .0,
        200
    );
    assert_eq!(
        raw.send(Method::POST, "/auth/token", access, Some(&body))
            .await
            .0,
        401
    );

    // PATCH takes a merge patch; JSON Patch is refused as Sensu does, and changes nothing.
    raw.put(
        "/api/core/v2/namespaces/default/handlers/keep",
        &admin,
        r#"{"type":"pipe","command":"cat","metadata":{"name":"keep","namespace":"default"}}"#,
    )
    .await;
    let patch = |content_type: &'static str, body: &'static str| {
        let raw = &raw;
        let admin = admin.clone();
        async move {
            let response = raw
                .http
                .patch(format!(
                    "{}/api/core/v2/namespaces/default/handlers/keep",
                    raw.url
                ))
                .bearer_auth(admin)
                .header("Content-Type", content_type)
                .body(body)
                .send()
                .await
                .expect("PATCH");
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
    };
    let (status, message) = patch(
        "application/json-patch+json",
        r#"[{"op":"replace","path":"/command","value":"rm -rf /"}]"#,
    )
    .await;
    assert_eq!(status, 400);
    assert!(message.contains("JSON Patch is not supported"), "{message}");
    let (status, patched) = patch("application/merge-patch+json", r#"{"command":"tee"}"#).await;
    assert_eq!(status, 200, "{patched}");
    let (_, handler) = raw
        .get("/api/core/v2/namespaces/default/handlers/keep", &admin)
        .await;
    assert_eq!(handler["command"], "tee");

    // The roles and bindings Sensu seeds, with Sensu's rules; no `agent` user.
    let (status, role) = raw
        .get("/api/core/v2/clusterroles/system:agent", &admin)
        .await;
    assert_eq!(status, 200, "{role}");
    assert_eq!(role["rules"][0]["verbs"], json!(["*"]));
    assert_eq!(role["rules"][0]["resources"], json!(["events"]));
    let (_, role) = raw
        .get("/api/core/v2/clusterroles/system:user", &admin)
        .await;
    assert_eq!(role["rules"][0]["verbs"], json!(["get", "update"]));
    assert_eq!(role["rules"][0]["resources"], json!(["localselfuser"]));
    for (binding, group) in [
        ("system:agent", "system:agents"),
        ("system:user", "system:users"),
        ("cluster-admin", "cluster-admins"),
    ] {
        let (status, body) = raw
            .get(
                &format!("/api/core/v2/clusterrolebindings/{binding}"),
                &admin,
            )
            .await;
        assert_eq!(status, 200, "{binding}: {body}");
        assert_eq!(body["role_ref"]["name"], binding);
        assert_eq!(body["subjects"][0]["type"], "Group");
        assert_eq!(body["subjects"][0]["name"], group);
    }
    assert_eq!(raw.get("/api/core/v2/users/agent", &admin).await.0, 404);
    assert_eq!(raw.login_status("agent", "P@ssw0rd!").await, 401);

    // `system:user` is what lets a user read itself and change its own password: with the
    // binding gone, carol can do neither (so the seeded role is not decoration).
    let carol = raw.token("carol", "carol-password").await;
    assert_eq!(raw.get("/api/core/v2/users/carol", &carol).await.0, 200);
    assert_eq!(raw.get("/api/core/v2/users/admin", &carol).await.0, 403);
    assert_eq!(
        raw.send(
            Method::DELETE,
            "/api/core/v2/clusterrolebindings/system:user",
            &admin,
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(raw.get("/api/core/v2/users/carol", &carol).await.0, 403);
    let (status, _) = raw
        .put(
            "/api/core/v2/users/carol/password",
            &carol,
            r#"{"username":"carol","password":"carol-password","password_new":"carol-new-pw"}"#,
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(raw.login_status("carol", "carol-password").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_tessen_and_the_namespaces_a_user_can_reach() {
    let backend = Backend::start();
    let raw = Raw::new(&backend);
    let admin = raw.token("admin", cairn_tests::ADMIN_PASSWORD).await;

    // A check whose hook type Sensu does not validate (a client's test uses `error`).
    let (status, message) = raw
        .put(
            "/api/core/v2/namespaces/default/checks/with-hooks",
            &admin,
            r#"{"command":"true","interval":60,"subscriptions":["linux"],"publish":false,
                "check_hooks":[{"error":["restart"]},{"non-zero":["dump"]}],
                "metadata":{"name":"with-hooks","namespace":"default"}}"#,
        )
        .await;
    assert_eq!(status, 201, "{message}");
    let (_, check) = raw
        .get("/api/core/v2/namespaces/default/checks/with-hooks", &admin)
        .await;
    assert_eq!(
        check["check_hooks"],
        json!([{"error": ["restart"]}, {"non-zero": ["dump"]}])
    );
    // `sensuctl check set-hooks`: Sensu's hooks subresource of a check.
    let hooks_path = "/api/core/v2/namespaces/default/checks/with-hooks/hooks";
    let (status, message) = raw
        .put(
            &format!("{hooks_path}/non-zero"),
            &admin,
            r#"{"type":"non-zero","hooks":["dump","page"]}"#,
        )
        .await;
    assert_eq!(status, 201, "{message}");
    let (status, message) = raw
        .put(
            &format!("{hooks_path}/critical"),
            &admin,
            r#"{"type":"critical","hooks":["page"]}"#,
        )
        .await;
    assert_eq!(status, 201, "{message}");
    let (status, _) = raw
        .send(
            Method::DELETE,
            &format!("{hooks_path}/non-zero/hook/dump"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (_, check) = raw
        .get("/api/core/v2/namespaces/default/checks/with-hooks", &admin)
        .await;
    assert_eq!(
        check["check_hooks"],
        json!([{"error": ["restart"]}, {"non-zero": ["page"]}, {"critical": ["page"]}])
    );
    // The body's type must be the URI's; a hook name must be a name.
    let (status, message) = raw
        .put(
            &format!("{hooks_path}/ok"),
            &admin,
            r#"{"type":"critical","hooks":["x"]}"#,
        )
        .await;
    assert_eq!(status, 400, "{message}");
    let (status, message) = raw
        .put(
            &format!("{hooks_path}/ok"),
            &admin,
            r#"{"type":"ok","hooks":["a b"]}"#,
        )
        .await;
    assert_eq!(status, 400, "{message}");

    // Silenced entries by subscription and by check, as Sensu's extra routes list them.
    for body in [
        r#"{"subscription":"linux","check":"cpu","metadata":{"namespace":"default"}}"#,
        r#"{"subscription":"linux","metadata":{"namespace":"default"}}"#,
        r#"{"check":"cpu","metadata":{"namespace":"default"}}"#,
    ] {
        let (status, message) = raw
            .send(
                Method::POST,
                "/api/core/v2/namespaces/default/silenced",
                &admin,
                Some(body),
            )
            .await;
        assert_eq!(status, 201, "{message}");
    }
    let silenced_names = |list: Value| -> Vec<String> {
        let mut names: Vec<String> = list
            .as_array()
            .unwrap_or_else(|| panic!("a list: {list}"))
            .iter()
            .map(|entry| {
                entry["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        names.sort();
        names
    };
    let (status, list) = raw
        .get(
            "/api/core/v2/namespaces/default/silenced/subscriptions/linux",
            &admin,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(silenced_names(list), ["linux:*", "linux:cpu"]);
    let (_, list) = raw.get("/api/core/v2/silenced/checks/cpu", &admin).await;
    assert_eq!(silenced_names(list), ["*:cpu", "linux:cpu"]);

    // Tessen: the "disable Tessen" step of Sensu playbooks.
    assert_eq!(
        raw.get("/api/core/v2/tessen", &admin).await,
        (200, json!({"opt_out": false}))
    );
    assert_eq!(
        raw.put("/api/core/v2/tessen", &admin, r#"{"opt_out":true}"#)
            .await
            .0,
        201
    );
    assert_eq!(
        raw.get("/api/core/v2/tessen", &admin).await,
        (200, json!({"opt_out": true}))
    );
    let (status, message) = raw
        .put("/api/core/v2/tessen", &admin, r#"{"opt_out":"yes"}"#)
        .await;
    assert_eq!(status, 400, "{message}");
    cairn_tests::create_user(&backend.admin().await, "dave", "dave-password").await;
    let dave = raw.token("dave", "dave-password").await;
    assert_eq!(
        raw.put("/api/core/v2/tessen", &dave, r#"{"opt_out":false}"#)
            .await
            .0,
        403
    );
    assert_eq!(
        raw.put(
            &format!("{hooks_path}/ok"),
            &dave,
            r#"{"type":"ok","hooks":["x"]}"#
        )
        .await
        .0,
        403
    );
    assert_eq!(
        raw.get("/api/core/v2/tessen", &admin).await,
        (200, json!({"opt_out": true}))
    );

    // Namespaces: a user bound in team-a sees team-a, and only it; one bound nowhere sees
    // none (not a 403); the admin sees all.
    let client = backend.admin().await;
    for namespace in ["team-a", "team-b"] {
        let (status, message) = raw
            .put(
                &format!("/api/core/v2/namespaces/{namespace}"),
                &admin,
                &format!(r#"{{"name":"{namespace}"}}"#),
            )
            .await;
        assert_eq!(status, 201, "{message}");
    }
    cairn_tests::create_user(&client, "erin", "erin-password").await;
    let (status, message) = raw
        .put(
            "/api/core/v2/namespaces/team-a/rolebindings/erin-view",
            &admin,
            r#"{"role_ref":{"type":"ClusterRole","name":"view"},
                "subjects":[{"type":"User","name":"erin"}],
                "metadata":{"name":"erin-view","namespace":"team-a"}}"#,
        )
        .await;
    assert_eq!(status, 201, "{message}");
    let names = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap_or_else(|| panic!("a list: {list}"))
            .iter()
            .map(|namespace| namespace["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let erin = raw.token("erin", "erin-password").await;
    let (status, list) = raw.get("/api/core/v2/namespaces", &erin).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(names(&list), ["team-a"]);
    let (status, list) = raw.get("/api/core/v2/namespaces", &dave).await;
    assert_eq!((status, names(&list)), (200, Vec::<String>::new()));
    // Seeing the name does not open the namespace: erin still cannot read team-b.
    assert_eq!(
        raw.get("/api/core/v2/namespaces/team-b/checks", &erin)
            .await
            .0,
        403
    );
    let (_, list) = raw.get("/api/core/v2/namespaces", &admin).await;
    let mut all = names(&list);
    all.sort();
    assert_eq!(all, ["default", "team-a", "team-b"]);
}
