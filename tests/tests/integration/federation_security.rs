//! Issue 13, federation: every identity stays inside what it was granted, across real backend
//! processes sharing one JWT key pair and a recording HTTPS server that a user allowed only to
//! create `clusters` registers as a cluster of her own.
//!
//! - The gateway's view and proxy never send the caller's own credential (token or API key)
//!   to a cluster: each request carries a token minted for that cluster alone (`aud`) that
//!   lives a minute at most, and that token is refused anywhere else, the gateway included.
//! - The proxy sends only canonical `/api/…` paths: backslashes, encoded dots, slashes and
//!   backslashes, dot and empty segments are refused with 400 and nothing reaches the cluster.
//! - A ClusterRoleBinding naming a gateway user, replicated to alpha, binds that user at alpha
//!   through the proxy; alpha's own bindings of a user of that name, and bindings another
//!   gateway replicated, do not.

use std::sync::Arc;
use std::time::Duration;

use cairn_api::client::{Client, Credentials};
use cairn_api::meta::LABEL_REPLICATED_FROM;
use cairn_api::model::{Replicator, Role, RoleBinding, RoleRef, Rule, Subject};
use cairn_api::{Kind, ObjectMeta, Resource, Spec};
use cairn_tests::fake_cluster::{read_head, FakeCluster};
use cairn_tests::{
    cluster_registration, error_status, eventually, Backend, FederationKeys, ADMIN_PASSWORD,
};
use reqwest::{Method, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long replication may take: far above a watched change's push.
const WITHIN: Duration = Duration::from_secs(30);

/// One request the recording server received.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    target: String,
    authorization: Option<String>,
}

/// A fake cluster recording every request and answering each with `200 []`.
struct Recorder {
    url: String,
    ca: String,
    requests: Arc<std::sync::Mutex<Vec<Recorded>>>,
    _server: FakeCluster,
}

impl Recorder {
    async fn start() -> Recorder {
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        let server = FakeCluster::start(move |mut stream| {
            let recorded = Arc::clone(&recorded);
            async move {
                let Some(request) = read_request(&mut stream).await else {
                    return;
                };
                recorded.lock().expect("not poisoned").push(request);
                let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                              content-length: 2\r\nconnection: close\r\n\r\n[]";
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        })
        .await;
        Recorder {
            url: server.url.clone(),
            ca: server.ca.clone(),
            requests,
            _server: server,
        }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("not poisoned").clone()
    }
}

/// Reads one HTTP/1.1 request (head and a `content-length` body) and records its request
/// line and `Authorization` header.
async fn read_request<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<Recorded> {
    let head = read_head(stream).await?;
    let length: usize = head
        .header("content-length")
        .and_then(|length| length.parse().ok())
        .unwrap_or(0);
    let mut body = head.body_read;
    let mut chunk = [0u8; 4096];
    while body < length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            break;
        }
        body += read;
    }
    Some(Recorded {
        method: head.method.clone(),
        target: head.target.clone(),
        authorization: head.header("authorization"),
    })
}

/// Sends `GET target` to `backend` exactly as written (no URL normalisation, unlike a URL
/// parser would do) with `authorization`, and returns the status and the body.
async fn raw_get(backend: &Backend, target: &str, authorization: &str) -> (u16, String) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(backend.ca().as_bytes()) {
        roots.add(cert.expect("the CA")).expect("a usable root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let addr = backend.addr().to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect to the backend");
    let host = addr
        .rsplit_once(':')
        .map_or(addr.as_str(), |(host, _)| host);
    let server_name = ServerName::try_from(host.to_owned()).expect("a server name");
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .expect("TLS to the backend");
    let request = format!(
        "GET {target} HTTP/1.1\r\nhost: {addr}\r\nauthorization: {authorization}\r\n\
         connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut answer = Vec::new();
    // A peer that closes without close_notify still gave its answer.
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn cluster_role(name: &str, verbs: &[&str], resources: &[&str]) -> Resource {
    let strings = |items: &[&str]| items.iter().map(|item| (*item).to_owned()).collect();
    Resource::new(
        ObjectMeta::named("", name),
        Spec::ClusterRole(Role {
            metadata: None,
            rules: vec![Rule {
                verbs: strings(verbs),
                resources: strings(resources),
                resource_names: Vec::new(),
            }],
        }),
    )
}

/// A ClusterRoleBinding `name` of the user `user` to the cluster role `role`, with `labels`.
fn user_binding(name: &str, role: &str, user: &str, labels: &[(&str, &str)]) -> Resource {
    let mut metadata = ObjectMeta::named("", name);
    for (key, value) in labels {
        metadata
            .labels
            .insert((*key).to_owned(), (*value).to_owned());
    }
    Resource::new(
        metadata,
        Spec::ClusterRoleBinding(RoleBinding {
            metadata: None,
            role_ref: RoleRef {
                type_name: "ClusterRole".into(),
                name: role.into(),
            },
            subjects: vec![Subject {
                type_name: "User".into(),
                name: user.into(),
            }],
        }),
    )
}

/// Creates the user `username` with `password` and no groups through `admin`.
async fn create_user(admin: &Client, username: &str, password: &str) {
    admin
        .send(
            Method::POST,
            "/api/core/v2/users",
            Some(&json!({"username": username, "password": password, "groups": []})),
        )
        .await
        .unwrap_or_else(|err| panic!("create the user {username}: {err}"));
}

async fn put(client: &Client, resource: &Resource) {
    client
        .put_resource(resource)
        .await
        .unwrap_or_else(|err| panic!("put {}: {err}", resource.key()));
}

/// The claims of a JWT verified with the federation's public key, for the audience
/// `audience` (the signature and `exp` are checked; the test looks at the rest).
fn claims_of(token: &str, keys: &FederationKeys, audience: &str) -> Value {
    let public = std::fs::read(&keys.public_key_file).expect("read the public key");
    let key = jsonwebtoken::DecodingKey::from_ec_pem(&public).expect("an EC public key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[audience]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap_or_else(|err| {
            panic!("{token} is not a token of the federation for {audience}: {err}")
        })
        .claims
}

fn a_check(name: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "default"},
        "command": "true",
        "interval": 60,
        "subscriptions": ["linux"],
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn issue_13_the_view_and_the_proxy_never_send_the_callers_credential() {
    let keys_dir = tempfile::tempdir().expect("tempdir");
    let keys = FederationKeys::generate(keys_dir.path());
    let gateway = Backend::start_federated("gateway", &keys);
    let alpha = Backend::start_federated("alpha", &keys);
    let recorder = Recorder::start().await;
    let (admin, admin_token) = gateway.login("admin", ADMIN_PASSWORD).await;
    let api_key = cairn_tests::bench::admin_api_key(&admin).await;
    let admin_by_key = gateway.client(Credentials::ApiKey(api_key.clone()));

    // Mallory may create clusters and nothing else; she registers her own server.
    create_user(&admin, "mallory", "mallory-password").await;
    put(
        &admin,
        &cluster_role("cluster-registrar", &["create"], &["clusters"]),
    )
    .await;
    put(
        &admin,
        &user_binding("cluster-registrar", "cluster-registrar", "mallory", &[]),
    )
    .await;
    let (mallory, _) = gateway.login("mallory", "mallory-password").await;
    put(
        &mallory,
        &cluster_registration("harvest", &recorder.url, &recorder.ca),
    )
    .await;
    put(
        &admin,
        &cluster_registration("alpha", &alpha.url, &alpha.ca()),
    )
    .await;

    // The admin uses the federated view and the proxy, with the token and with the API key.
    for client in [&admin, &admin_by_key] {
        let view = client
            .get_json("/api/cairn/v1/federation/events")
            .await
            .expect("the federated view");
        let errors = view["errors"].as_array().expect("errors");
        assert!(
            !errors.iter().any(|error| error["cluster"] == "harvest"),
            "harvest answers every request: {view:#}"
        );
        client
            .via_cluster("harvest")
            .get_json("/api/core/v2/namespaces")
            .await
            .expect("the proxy to harvest");
        client
            .via_cluster("harvest")
            .send(
                Method::PUT,
                "/api/core/v2/namespaces/default/checks/cpu",
                Some(&a_check("cpu")),
            )
            .await
            .expect("a write through the proxy to harvest");
    }

    let requests = recorder.requests();
    assert_eq!(
        requests.len(),
        6,
        "a list, a read, a write, twice: {requests:#?}"
    );
    let mut tokens = Vec::new();
    for request in &requests {
        let authorization = request
            .authorization
            .as_deref()
            .unwrap_or_else(|| panic!("no credential in {request:?}"));
        assert_ne!(
            authorization,
            format!("Bearer {admin_token}"),
            "{request:?}"
        );
        assert!(!authorization.contains(&admin_token), "{request:?}");
        assert!(!authorization.contains(&api_key), "{request:?}");
        let token = authorization
            .strip_prefix("Bearer ")
            .unwrap_or_else(|| panic!("not a bearer token: {request:?}"));
        let claims = claims_of(token, &keys, "harvest");
        assert_eq!(claims["aud"], "harvest", "{claims}");
        assert_eq!(claims["sub"], "admin", "{claims}");
        assert_eq!(claims["iss"], "gateway", "{claims}");
        let lifetime =
            claims["exp"].as_u64().unwrap_or(u64::MAX) - claims["iat"].as_u64().unwrap_or(0);
        assert!(lifetime <= 60, "lives {lifetime}s: {claims}");
        tokens.push(token.to_owned());
    }
    assert!(
        requests.iter().any(|request| request.method == "PUT"
            && request.target == "/api/core/v2/namespaces/default/checks/cpu"),
        "{requests:#?}"
    );

    // What harvest recorded is refused everywhere else: at the gateway, at alpha, and through
    // the gateway's proxy to alpha.
    let harvested = tokens.last().expect("a token");
    for (target, client) in [
        (
            "the gateway",
            gateway.client(Credentials::Bearer(harvested.clone())),
        ),
        (
            "alpha",
            alpha.client(Credentials::Bearer(harvested.clone())),
        ),
        (
            "alpha through the proxy",
            gateway
                .client(Credentials::Bearer(harvested.clone()))
                .via_cluster("alpha"),
        ),
    ] {
        let replayed = client.get_json("/api/core/v2/namespaces").await;
        assert_eq!(error_status(replayed), StatusCode::UNAUTHORIZED, "{target}");
        let escalation = client
            .put_resource(&user_binding(
                "mallory-admin",
                "cluster-admin",
                "mallory",
                &[],
            ))
            .await;
        assert_eq!(
            error_status(escalation),
            StatusCode::UNAUTHORIZED,
            "{target}"
        );
    }
    // Alpha accepts what the gateway mints for it, whichever credential the caller used.
    for client in [&admin, &admin_by_key] {
        let view = client
            .get_json("/api/cairn/v1/federation/events")
            .await
            .expect("the federated view");
        assert_eq!(view["errors"], json!([]), "{view:#}");
        client
            .via_cluster("alpha")
            .get_json("/api/core/v2/namespaces")
            .await
            .expect("the proxy to alpha");
    }
    // The gateway's own login token is meant for the gateway: alpha refuses it.
    let direct = alpha
        .client(Credentials::Bearer(admin_token.clone()))
        .get_json("/api/core/v2/namespaces")
        .await;
    assert_eq!(error_status(direct), StatusCode::UNAUTHORIZED);
    assert!(admin
        .get_resource(Kind::ClusterRoleBinding, "", "mallory-admin")
        .await
        .expect("read the gateway")
        .is_none());

    // A cluster registered under the gateway's own name is sent nothing: a token for it
    // would be valid at the gateway itself.
    put(
        &mallory,
        &cluster_registration("gateway", &recorder.url, &recorder.ca),
    )
    .await;
    let seen = recorder.requests().len();
    let view = admin
        .get_json("/api/cairn/v1/federation/events")
        .await
        .expect("the federated view");
    let errors = view["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{view:#}");
    assert_eq!(errors[0]["cluster"], "gateway", "{view:#}");
    let message = errors[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("own name"), "{message}");
    let proxied = admin
        .via_cluster("gateway")
        .get_json("/api/core/v2/namespaces")
        .await;
    assert_eq!(error_status(proxied), StatusCode::CONFLICT);
    let requests = recorder.requests();
    assert_eq!(requests.len(), seen + 1, "harvest only: {requests:#?}");
    let last = requests
        .last()
        .and_then(|request| request.authorization.as_deref());
    let token = last.and_then(|header| header.strip_prefix("Bearer "));
    let claims = claims_of(token.expect("a bearer token"), &keys, "harvest");
    assert_eq!(claims["aud"], "harvest");
}

#[tokio::test(flavor = "multi_thread")]
async fn issue_13_the_proxy_sends_only_canonical_api_paths() {
    let gateway = Backend::start();
    let recorder = Recorder::start().await;
    let (admin, admin_token) = gateway.login("admin", ADMIN_PASSWORD).await;
    put(
        &admin,
        &cluster_registration("alpha", &recorder.url, &recorder.ca),
    )
    .await;
    let bearer = format!("Bearer {admin_token}");

    let proxy = "/api/cairn/v1/clusters/alpha/proxy";
    for (path, problem) in [
        ("/api\\..\\..\\admin\\console", "a backslash"),
        ("/api/%2e%2e/%2e%2e/admin/console", "an encoded dot (%2e)"),
        ("/api/%2E%2E/auth", "an encoded dot (%2e)"),
        ("/api/.%2e/admin", "an encoded dot (%2e)"),
        ("/api%2f..%2f..%2fadmin%2fconsole", "an encoded slash (%2f)"),
        ("/api/x%2F..%2F..%2Fauth", "an encoded slash (%2f)"),
        ("/api/%5c..%5c..%5cadmin", "an encoded backslash (%5c)"),
        ("/api/%5C..%5Cauth", "an encoded backslash (%5c)"),
        ("/api/%252e%252e/admin", "an encoded percent sign (%25)"),
        ("/api/../admin/console", ". or .. segments"),
        ("/api/./core/v2/namespaces", ". or .. segments"),
        ("/api//admin", "empty segments"),
        ("/api/core/v2/namespaces/", "empty segments"),
        ("/admin/console", "an /api/... path"),
        ("/version", "an /api/... path"),
        ("/auth", "/auth"),
        ("/auth/token", "/auth"),
    ] {
        let (status, body) = raw_get(&gateway, &format!("{proxy}{path}"), &bearer).await;
        assert_eq!(status, 400, "{path}: {body}");
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|body| body["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("{path}: no message in {body}"));
        assert!(
            message.starts_with("the proxied path") && message.contains(problem),
            "{path}: {message}"
        );
    }
    assert_eq!(recorder.requests().len(), 0, "{:#?}", recorder.requests());

    // A canonical path goes down as it came (so the silence above is the check's).
    let (status, body) = raw_get(
        &gateway,
        &format!("{proxy}/api/core/v2/namespaces/default/silenced/linux:*?limit=5"),
        &bearer,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let requests = recorder.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(
        requests[0].target,
        "/api/core/v2/namespaces/default/silenced/linux:*?limit=5"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn issue_13_replicated_user_bindings_bind_the_gateways_users_only() {
    let keys_dir = tempfile::tempdir().expect("tempdir");
    let keys = FederationKeys::generate(keys_dir.path());
    let gateway = Backend::start_federated("gateway", &keys);
    let alpha = Backend::start_federated("alpha", &keys);
    let gateway_admin = gateway.admin().await;
    let alpha_admin = alpha.admin().await;

    // The walk-through: a viewer defined only on the gateway, bound by a ClusterRoleBinding
    // naming the user, replicated to alpha.
    create_user(&gateway_admin, "viewer", "viewer-password").await;
    put(
        &gateway_admin,
        &user_binding("viewer", "view", "viewer", &[("federate", "yes")]),
    )
    .await;
    put(
        &gateway_admin,
        &cluster_registration("alpha", &alpha.url, &alpha.ca()),
    )
    .await;
    put(
        &gateway_admin,
        &Resource::new(
            ObjectMeta::named("", "bindings-to-alpha"),
            Spec::Replicator(Replicator {
                cluster: "alpha".into(),
                api_version: "core/v2".into(),
                resource: "ClusterRoleBinding".into(),
                label_selector: "federate == yes".into(),
                ..Replicator::default()
            }),
        ),
    )
    .await;
    let copy = eventually(
        "the viewer's binding replicated to alpha",
        WITHIN,
        || async {
            alpha_admin
                .get_resource(Kind::ClusterRoleBinding, "", "viewer")
                .await
                .expect("read alpha")
                .ok_or("alpha holds None")
        },
    )
    .await;
    assert_eq!(
        copy.metadata
            .labels
            .get(LABEL_REPLICATED_FROM)
            .map(String::as_str),
        Some("gateway/bindings-to-alpha")
    );

    // The gateway's viewer reads alpha through the proxy, and may do no more.
    let (viewer, _) = gateway.login("viewer", "viewer-password").await;
    let at_alpha = viewer.via_cluster("alpha");
    let events = at_alpha
        .get_json("/api/core/v2/namespaces/default/events")
        .await
        .expect("the replicated user binding lets the gateway's viewer read alpha");
    assert_eq!(events, json!([]));
    let checks = "/api/core/v2/namespaces/default/checks";
    let created = at_alpha
        .send(Method::POST, checks, Some(&a_check("viewer-check")))
        .await;
    assert_eq!(error_status(created), StatusCode::FORBIDDEN);

    // Alpha's own binding of its own `viewer` to edit: it binds alpha's viewer, not the
    // gateway's.
    create_user(&alpha_admin, "viewer", "alpha-viewer-password").await;
    put(
        &alpha_admin,
        &user_binding("local-viewer", "edit", "viewer", &[]),
    )
    .await;
    let (alpha_viewer, _) = alpha.login("viewer", "alpha-viewer-password").await;
    alpha_viewer
        .send(Method::POST, checks, Some(&a_check("local-check")))
        .await
        .expect("alpha's local binding binds alpha's viewer");
    let created = at_alpha
        .send(Method::POST, checks, Some(&a_check("viewer-check")))
        .await;
    assert_eq!(error_status(created), StatusCode::FORBIDDEN);

    // A binding replicated from another gateway (beta) binds beta's viewer, not this one's.
    put(
        &alpha_admin,
        &user_binding(
            "beta-viewer-admin",
            "cluster-admin",
            "viewer",
            &[(LABEL_REPLICATED_FROM, "beta/bindings")],
        ),
    )
    .await;
    let users = at_alpha.get_json("/api/core/v2/users").await;
    assert_eq!(error_status(users), StatusCode::FORBIDDEN);
    let users = alpha_viewer.get_json("/api/core/v2/users").await;
    assert_eq!(
        error_status(users),
        StatusCode::FORBIDDEN,
        "nor alpha's own viewer"
    );
    // The replicated binding of the gateway's viewer does not bind alpha's viewer either:
    // without its local binding, alpha's viewer reads nothing.
    alpha_admin
        .delete_resource(Kind::ClusterRoleBinding, "", "local-viewer")
        .await
        .expect("delete alpha's local binding");
    let events = alpha_viewer
        .get_json("/api/core/v2/namespaces/default/events")
        .await;
    assert_eq!(error_status(events), StatusCode::FORBIDDEN);
    at_alpha
        .get_json("/api/core/v2/namespaces/default/events")
        .await
        .expect("the gateway's viewer still reads alpha");
}
