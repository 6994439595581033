//! The federated view across real backend processes that share one JWT key pair: a gateway and
//! a downstream `alpha` registered on it. A read-only user of the gateway lists both clusters'
//! events in one view and can create nothing anywhere; an admin known only to the gateway
//! creates a check in alpha through the gateway's proxy; forged tokens are refused; a cluster
//! registered with the wrong CA shows its TLS failure in `cairnctl cluster list`.

use std::path::{Path, PathBuf};
use std::process::Output;

use cairn_api::client::{Client, ClientError, Credentials};
use cairn_api::model::Cluster;
use cairn_api::{Kind, ObjectMeta, Resource, Spec};
use cairn_tests::{command, Backend, FederationKeys};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The federation-viewer's demo password (see the manifest's comment).
const VIEWER_PASSWORD: &str = "view-only-demo";

fn manifests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// A fresh P-256 key pair as the files `cairn-backend init` takes.
fn shared_keys(dir: &Path) -> FederationKeys {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key pair");
    let keys = FederationKeys {
        private_key_file: dir.join("jwt-private.pem"),
        public_key_file: dir.join("jwt-public.pem"),
    };
    std::fs::write(&keys.private_key_file, key.serialize_pem()).expect("write private key");
    std::fs::write(&keys.public_key_file, key.public_key_pem()).expect("write public key");
    keys
}

/// Runs cairnctl with its config in `config_dir` and returns (exit code, stdout, stderr).
fn cairnctl(config_dir: &Path, args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command("cairnctl")
        .args(args)
        .env("CAIRN_CONFIG_DIR", config_dir)
        .env_remove("CAIRN_URL")
        .env_remove("CAIRN_API_KEY")
        .env_remove("CAIRN_CLUSTER")
        .output()
        .expect("run cairnctl");
    (
        status.code().expect("exited normally"),
        String::from_utf8(stdout).expect("utf-8"),
        String::from_utf8(stderr).expect("utf-8"),
    )
}

fn ok(config_dir: &Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = cairnctl(config_dir, args);
    assert_eq!(code, 0, "cairnctl {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

fn configure(config_dir: &Path, backend: &Backend, username: &str, password: &str) {
    let ca_file = backend.ca_file();
    ok(
        config_dir,
        &[
            "configure",
            "--url",
            &backend.url,
            "--ca-file",
            ca_file.to_str().expect("utf-8 path"),
            "--username",
            username,
            "--password",
            password,
        ],
    );
}

/// Logs in at `backend` and returns a client with the access token.
async fn login(backend: &Backend, username: &str, password: &str) -> (Client, String) {
    let anonymous = backend.client(Credentials::None);
    let tokens = anonymous
        .login(username, password)
        .await
        .unwrap_or_else(|err| panic!("{username} logs in at {}: {err}", backend.url));
    let client = anonymous.with_credentials(Credentials::Bearer(tokens.access_token.clone()));
    (client, tokens.access_token)
}

fn status_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> StatusCode {
    match result {
        Err(ClientError::Status { status, .. }) => status,
        other => panic!("expected an error status, got {other:?}"),
    }
}

async fn post_event(client: &Client, entity: &str) {
    let event = json!({
        "entity": {"entity_class": "proxy", "metadata": {"name": entity}},
        "check": {"metadata": {"name": "disk"}, "status": 1, "output": "83% used", "interval": 60},
    });
    client
        .send(
            Method::POST,
            "/api/core/v2/namespaces/default/events",
            Some(&event),
        )
        .await
        .unwrap_or_else(|err| panic!("post the event of {entity}: {err}"));
}

fn register(name: &str, url: &str, ca_cert: String) -> Resource {
    Resource::new(
        ObjectMeta::named("", name),
        Spec::Cluster(Cluster {
            api_urls: vec![url.to_owned()],
            ca_cert,
        }),
    )
}

/// A token for the gateway's cluster-admins signed with a key of nobody's federation.
fn forged_token(issuer: &str) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key pair");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let claims = json!({
        "sub": "admin", "exp": now + 300, "iat": now, "iss": issuer, "jti": "forged",
        "groups": ["cluster-admins", "system:users"],
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("EC key"),
    )
    .expect("sign")
}

#[tokio::test(flavor = "multi_thread")]
async fn federated_view_walk_through() {
    let keys_dir = tempfile::tempdir().expect("tempdir");
    let keys = shared_keys(keys_dir.path());
    let gateway = Backend::start_federated("gateway", &keys);
    let alpha = Backend::start_federated("alpha", &keys);
    let gateway_admin = gateway.admin().await;
    let alpha_admin = alpha.admin().await;

    // The read-only operator: on the gateway the manifest's user, role and binding; alpha has
    // no such user, only the role and the binding of its group (as a replicator would copy).
    let viewer_manifest = manifests().join("cluster/rbac/federation-viewer.yaml");
    let loaded = cairn_api::codec::load_path(&viewer_manifest);
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    for resource in loaded.resources.iter().map(|loaded| &loaded.resource) {
        gateway_admin
            .put_resource(resource)
            .await
            .unwrap_or_else(|err| panic!("put {} on the gateway: {err}", resource.key()));
        if resource.kind() != Kind::User {
            alpha_admin
                .put_resource(resource)
                .await
                .unwrap_or_else(|err| panic!("put {} on alpha: {err}", resource.key()));
        }
    }
    gateway_admin
        .put_resource(&register("alpha", &alpha.url, alpha.ca()))
        .await
        .expect("register alpha on the gateway");
    post_event(&gateway_admin, "gateway-host").await;
    post_event(&alpha_admin, "alpha-host").await;

    // The viewer logs in at the gateway and reads both clusters in one list.
    let (viewer, viewer_token) = login(&gateway, "federation-viewer", VIEWER_PASSWORD).await;
    let view = viewer
        .get_json("/api/cairn/v1/federation/events?namespace=default")
        .await
        .expect("the federated view of events");
    assert_eq!(view["errors"], json!([]), "{view:#}");
    let rows: Vec<(String, String)> = view["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            (
                item["cluster"].as_str().unwrap_or_default().to_owned(),
                item["resource"]["entity"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("gateway".to_owned(), "gateway-host".to_owned()),
            ("alpha".to_owned(), "alpha-host".to_owned())
        ],
        "{view:#}"
    );
    let entities = viewer
        .get_json("/api/cairn/v1/federation/entities")
        .await
        .expect("the federated view of entities in every namespace");
    assert_eq!(entities["items"].as_array().map(Vec::len), Some(2));

    // The gateway's token works at alpha itself (shared key), judged by alpha's bindings.
    let direct = alpha
        .client(Credentials::Bearer(viewer_token.clone()))
        .get_json("/api/core/v2/namespaces/default/events")
        .await
        .expect("the gateway's token lists alpha's events");
    assert_eq!(direct.as_array().map(Vec::len), Some(1));

    // It can create nothing: not on the gateway, not on alpha through the proxy.
    let check = cairn_api::codec::load_str(
        "inline.yaml",
        "type: CheckConfig\napi_version: core/v2\nmetadata:\n  name: disk-alpha\n  namespace: default\nspec:\n  command: check-disk -w 80\n  interval: 60\n  subscriptions: [linux]\n",
    );
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    let check = check.resources[0].resource.clone();
    assert_eq!(
        status_of(viewer.put_resource(&check).await),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status_of(viewer.via_cluster("alpha").put_resource(&check).await),
        StatusCode::FORBIDDEN
    );
    // Reading through the proxy is what alpha allows it.
    let proxied = viewer
        .via_cluster("alpha")
        .list_resources(Kind::Event, "default")
        .await
        .expect("alpha's events through the proxy");
    assert_eq!(proxied.len(), 1);

    // The viewer does not exist at alpha: logging in there directly fails.
    let direct_login = alpha
        .client(Credentials::None)
        .login("federation-viewer", VIEWER_PASSWORD)
        .await;
    assert_eq!(status_of(direct_login), StatusCode::UNAUTHORIZED);

    // cairnctl shows both clusters with a CLUSTER column.
    let viewer_config = tempfile::tempdir().expect("tempdir");
    configure(
        viewer_config.path(),
        &gateway,
        "federation-viewer",
        VIEWER_PASSWORD,
    );
    let table = ok(viewer_config.path(), &["get", "events", "--all-clusters"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("CLUSTER"), "{table}");
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("gateway") && line.contains("gateway-host/disk")),
        "{table}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("alpha") && line.contains("alpha-host/disk")),
        "{table}"
    );
    let table = ok(viewer_config.path(), &["get", "entities", "--all-clusters"]);
    assert!(
        table.lines().any(|line| line.starts_with("alpha")
            && line.split_whitespace().nth(1) == Some("alpha-host")),
        "{table}"
    );
    let (code, _, stderr) = cairnctl(viewer_config.path(), &["get", "checks", "--all-clusters"]);
    assert_eq!(code, 64, "{stderr}");

    // An admin defined only on the gateway creates a check in alpha through the proxy.
    gateway_admin
        .send(
            Method::POST,
            "/api/core/v2/users",
            Some(&json!({
                "username": "gateway-admin",
                "password": "gateway-admin-password",
                "groups": ["cluster-admins"],
            })),
        )
        .await
        .expect("create gateway-admin on the gateway");
    let admin_config = tempfile::tempdir().expect("tempdir");
    configure(
        admin_config.path(),
        &gateway,
        "gateway-admin",
        "gateway-admin-password",
    );
    let check_file = admin_config.path().join("disk-alpha.yaml");
    std::fs::write(&check_file, cairn_api::codec::to_yaml(&[check])).expect("write the check");
    let created = ok(
        admin_config.path(),
        &[
            "--cluster",
            "alpha",
            "create",
            "-f",
            check_file.to_str().expect("utf-8 path"),
        ],
    );
    assert!(created.contains("created"), "{created}");
    let on_alpha = alpha_admin
        .get_resource(Kind::CheckConfig, "default", "disk-alpha")
        .await
        .expect("read alpha")
        .expect("the check exists on alpha");
    assert_eq!(on_alpha.metadata.created_by, "gateway-admin");
    assert!(gateway_admin
        .get_resource(Kind::CheckConfig, "default", "disk-alpha")
        .await
        .expect("read the gateway")
        .is_none());
    let listed = ok(
        admin_config.path(),
        &["--cluster", "alpha", "get", "checks"],
    );
    assert!(listed.contains("disk-alpha"), "{listed}");
    let listed = ok(admin_config.path(), &["get", "checks"]);
    assert!(!listed.contains("disk-alpha"), "{listed}");
    // The gateway's admin does not exist at alpha either.
    let direct_login = alpha
        .client(Credentials::None)
        .login("gateway-admin", "gateway-admin-password")
        .await;
    assert_eq!(status_of(direct_login), StatusCode::UNAUTHORIZED);
    // `/auth` is never proxied: one logs in at the gateway.
    let auth_via_proxy = gateway
        .client(Credentials::Bearer(viewer_token.clone()))
        .via_cluster("alpha")
        .get_json("/auth")
        .await;
    assert_eq!(status_of(auth_via_proxy), StatusCode::BAD_REQUEST);

    // Tokens signed with another key are refused by alpha and by the gateway's proxy, whatever
    // issuer they claim.
    for issuer in ["gateway", "alpha"] {
        let forged = forged_token(issuer);
        let direct = alpha
            .client(Credentials::Bearer(forged.clone()))
            .get_json("/api/core/v2/namespaces")
            .await;
        assert_eq!(status_of(direct), StatusCode::UNAUTHORIZED, "{issuer}");
        let proxied = gateway
            .client(Credentials::Bearer(forged))
            .via_cluster("alpha")
            .get_json("/api/core/v2/namespaces")
            .await;
        assert_eq!(status_of(proxied), StatusCode::UNAUTHORIZED, "{issuer}");
    }

    // A cluster registered with the wrong CA (the gateway's own) shows its TLS failure.
    gateway_admin
        .put_resource(&register("alpha-wrong-ca", &alpha.url, gateway.ca()))
        .await
        .expect("register alpha with the wrong CA");
    let clusters = ok(admin_config.path(), &["cluster", "list"]);
    let lines: Vec<&str> = clusters.lines().collect();
    assert_eq!(lines.len(), 3, "{clusters}");
    assert!(lines[0].starts_with("NAME"), "{clusters}");
    let alpha_row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        alpha_row[..3],
        ["alpha", alpha.url.as_str(), "true"],
        "{clusters}"
    );
    assert_eq!(alpha_row.len(), 4, "a version and no error: {clusters}");
    assert!(lines[2].starts_with("alpha-wrong-ca"), "{clusters}");
    assert!(lines[2].contains("false"), "{clusters}");
    assert!(lines[2].contains("certificate"), "{clusters}");
    let health: Value = gateway_admin
        .get_json("/api/cairn/v1/clusters")
        .await
        .expect("cluster health");
    assert_eq!(health[0]["healthy"], true);
    assert!(
        health[0]["version"]["cairn_backend"].is_string(),
        "{health:#}"
    );
    assert!(health[0]["latency_ms"].is_u64(), "{health:#}");
    assert_eq!(health[1]["healthy"], false);
    // The viewer's role lists clusters too (get/list on everything).
    let seen = viewer
        .get_json("/api/cairn/v1/clusters")
        .await
        .expect("the viewer lists clusters");
    assert_eq!(seen.as_array().map(Vec::len), Some(2));
    // And the broken registration is an error entry in the view, not a failure of it.
    let view = viewer
        .get_json("/api/cairn/v1/federation/events?namespace=default")
        .await
        .expect("the federated view with a broken cluster");
    assert_eq!(view["items"].as_array().map(Vec::len), Some(2), "{view:#}");
    assert_eq!(view["errors"][0]["cluster"], "alpha-wrong-ca", "{view:#}");
    let (code, stdout, stderr) =
        cairnctl(viewer_config.path(), &["get", "events", "--all-clusters"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.contains("alpha-host/disk"), "{stdout}");
    assert!(
        stderr.contains("cluster alpha-wrong-ca not listed"),
        "{stderr}"
    );
}
