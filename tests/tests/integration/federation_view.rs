//! The operators' federation walk-through across real backend processes that share one JWT key
//! pair: a gateway and a downstream `alpha` registered on it (issue 7).
//!
//! On the gateway, a read-only user bound by a ClusterRoleBinding, and replicators that copy
//! ClusterRoles and ClusterRoleBindings to alpha, so that alpha binds the user's group without
//! anyone touching alpha's RBAC. That user lists both clusters' events in one view and can
//! create nothing anywhere; its gateway token is refused at alpha itself (it is meant for the
//! gateway), while the gateway's view and proxy reach alpha with tokens minted for alpha; an admin known only to the gateway creates a check in alpha through
//! the gateway's proxy, mints a join token there, and an agent of alpha runs the check, whose
//! event stays in alpha; forged tokens are refused; a cluster registered with the wrong CA
//! shows its TLS failure in `cairnctl cluster list`.

use std::time::Duration;

use cairn_api::client::{Client, Credentials};
use cairn_api::Kind;
use cairn_tests::{cluster_registration, error_status, eventually, AgentInstall};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{cairnctl, configure, ok, post_event, ViewerFederation, VIEWER_PASSWORD};

/// How long a wait on replication or on the agent may take: far above a watched change's push
/// and an agent's enrolment and first 1-second check, so that a failure means it did not
/// happen.
const WITHIN: Duration = Duration::from_secs(30);

/// The entity name of alpha's agent.
const AGENT: &str = "alpha-agent";

/// A token for the gateway's cluster-admins signed with a key of nobody's federation, meant
/// for `audience` so that only the key is wrong.
fn forged_token(issuer: &str, audience: &str) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key pair");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let claims = json!({
        "sub": "admin", "exp": now + 300, "iat": now, "iss": issuer, "aud": audience, "jti": "forged",
        "groups": ["cluster-admins", "system:users"],
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("EC key"),
    )
    .expect("sign")
}

/// `entity/check` of an event in the REST wire form.
fn event_name(event: &Value) -> String {
    format!(
        "{}/{}",
        event["entity"]["metadata"]["name"].as_str().unwrap_or("?"),
        event["check"]["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The rows of a federated list of events as `(cluster, entity/check)`, in order.
fn event_rows(view: &Value) -> Vec<(String, String)> {
    view["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {view:#}"))
        .iter()
        .map(|item| {
            (
                item["cluster"].as_str().unwrap_or_default().to_owned(),
                event_name(&item["resource"]),
            )
        })
        .collect()
}

fn row(cluster: &str, event: &str) -> (String, String) {
    (cluster.to_owned(), event.to_owned())
}

/// The `entity/check` names of a cluster's own events in `default`.
async fn own_events(client: &Client) -> Vec<String> {
    client
        .get_json("/api/core/v2/namespaces/default/events")
        .await
        .expect("list the events of default")
        .as_array()
        .expect("an array of events")
        .iter()
        .map(event_name)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn federated_view_walk_through() {
    let ViewerFederation {
        gateway,
        alpha,
        gateway_admin,
        alpha_admin,
        ..
    } = ViewerFederation::start().await;
    post_event(&gateway_admin, "gateway-host").await;
    post_event(&alpha_admin, "alpha-host").await;

    // The viewer logs in at the gateway and reads both clusters in one list.
    let (viewer, viewer_token) = gateway.login("federation-viewer", VIEWER_PASSWORD).await;
    let view = viewer
        .get_json("/api/cairn/v1/federation/events?namespace=default")
        .await
        .expect("the federated view of events");
    assert_eq!(view["errors"], json!([]), "{view:#}");
    assert_eq!(
        event_rows(&view),
        [
            row("gateway", "gateway-host/disk"),
            row("alpha", "alpha-host/disk")
        ],
        "{view:#}"
    );
    let entities = viewer
        .get_json("/api/cairn/v1/federation/entities")
        .await
        .expect("the federated view of entities in every namespace");
    assert_eq!(entities["items"].as_array().map(Vec::len), Some(2));

    // The gateway's token is meant for the gateway: alpha refuses it (issue 13). Through the
    // gateway's proxy, alpha gets a token minted for it and judges it by its own bindings.
    let direct = alpha
        .client(Credentials::Bearer(viewer_token.clone()))
        .get_json("/api/core/v2/namespaces/default/events")
        .await;
    assert_eq!(error_status(direct), StatusCode::UNAUTHORIZED);

    // It can create nothing: not on the gateway, not on alpha through the proxy. (The check is
    // the one alpha's agent runs later: every second, for the subscription `linux`.)
    let check = cairn_api::codec::load_str(
        "inline.yaml",
        "type: CheckConfig\napi_version: core/v2\nmetadata:\n  name: disk-alpha\n  namespace: default\nspec:\n  command: echo disk fine on alpha\n  interval: 1\n  publish: true\n  subscriptions: [linux]\n",
    );
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    let check = check.resources[0].resource.clone();
    assert_eq!(
        error_status(viewer.put_resource(&check).await),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        error_status(viewer.via_cluster("alpha").put_resource(&check).await),
        StatusCode::FORBIDDEN
    );
    // Nor a join token (an agent identity), here or there.
    for target in [viewer.clone(), viewer.via_cluster("alpha")] {
        let minted = target
            .send(Method::POST, "/api/cairn/v1/jointokens", Some(&json!({})))
            .await;
        assert_eq!(error_status(minted), StatusCode::FORBIDDEN);
    }
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
    assert_eq!(error_status(direct_login), StatusCode::UNAUTHORIZED);

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
    // The events table: ENTITY and CHECK after CLUSTER.
    let has_row = |cells: [&str; 3]| {
        lines
            .iter()
            .any(|line| line.split_whitespace().take(3).eq(cells))
    };
    assert!(has_row(["gateway", "gateway-host", "disk"]), "{table}");
    assert!(has_row(["alpha", "alpha-host", "disk"]), "{table}");
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
    assert_eq!(error_status(direct_login), StatusCode::UNAUTHORIZED);
    // `/auth` is never proxied: one logs in at the gateway.
    let auth_via_proxy = gateway
        .client(Credentials::Bearer(viewer_token.clone()))
        .via_cluster("alpha")
        .get_json("/auth")
        .await;
    assert_eq!(error_status(auth_via_proxy), StatusCode::BAD_REQUEST);

    // An agent of alpha runs the check. The same admin mints its join token at alpha through
    // the gateway, so the token pins alpha's CA and is recorded at alpha only.
    let (gateway_only_admin, _) = gateway
        .login("gateway-admin", "gateway-admin-password")
        .await;
    let minted: Value = gateway_only_admin
        .via_cluster("alpha")
        .send(
            Method::POST,
            "/api/cairn/v1/jointokens",
            Some(&json!({"uses": 1, "subscriptions": ["linux"], "namespace": "default"})),
        )
        .await
        .expect("mint a join token at alpha through the gateway")
        .json()
        .await
        .expect("the join token as JSON");
    let token = minted["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {minted:#}"));
    let tokens_on_alpha = alpha_admin
        .get_json("/api/cairn/v1/jointokens")
        .await
        .expect("alpha's join tokens");
    assert_eq!(
        tokens_on_alpha[0]["id"], minted["id"],
        "{tokens_on_alpha:#}"
    );
    assert_eq!(
        tokens_on_alpha[0]["created_by"], "gateway-admin",
        "{tokens_on_alpha:#}"
    );
    let tokens_on_gateway = gateway_admin
        .get_json("/api/cairn/v1/jointokens")
        .await
        .expect("the gateway's join tokens");
    assert_eq!(tokens_on_gateway, json!([]));
    // The agent enrolls at alpha itself (its API and agent listener); it is dropped before its
    // installation directory.
    let install = AgentInstall::install(&alpha, token, AGENT);
    let agent = install.start();
    let event_path = format!("/api/core/v2/namespaces/default/events/{AGENT}/disk-alpha");
    let event = eventually("alpha's agent running disk-alpha", WITHIN, || async {
        match alpha_admin.get_json(&event_path).await {
            Ok(event)
                if event["check"]["output"]
                    .as_str()
                    .is_some_and(|output| output.trim() == "disk fine on alpha") =>
            {
                Ok(event)
            }
            other => Err(format!("{other:?}\nthe agent's log:\n{}", agent.log())),
        }
    })
    .await;
    assert_eq!(event["check"]["status"], 0, "{event:#}");
    assert_eq!(event["entity"]["entity_class"], "agent", "{event:#}");
    // The event exists in alpha only: not among the gateway's own events, yet in the
    // federated view, marked alpha.
    let gateway_events = own_events(&gateway_admin).await;
    assert_eq!(gateway_events, ["gateway-host/disk"]);
    assert_eq!(
        error_status(gateway_admin.get_json(&event_path).await),
        StatusCode::NOT_FOUND
    );
    assert!(
        own_events(&alpha_admin)
            .await
            .contains(&format!("{AGENT}/disk-alpha")),
        "alpha's events"
    );
    let view = viewer
        .get_json("/api/cairn/v1/federation/events?namespace=default")
        .await
        .expect("the federated view of events");
    let rows = event_rows(&view);
    assert!(
        rows.contains(&row("alpha", &format!("{AGENT}/disk-alpha"))),
        "{view:#}"
    );
    assert_eq!(
        rows.iter()
            .filter(|(cluster, _)| cluster == "gateway")
            .count(),
        1,
        "the gateway's one event: {view:#}"
    );
    drop(agent);
    drop(install);

    // Tokens signed with another key are refused by alpha and by the gateway's proxy, whatever
    // issuer they claim.
    for issuer in ["gateway", "alpha"] {
        let direct = alpha
            .client(Credentials::Bearer(forged_token(issuer, "alpha")))
            .get_json("/api/core/v2/namespaces")
            .await;
        assert_eq!(error_status(direct), StatusCode::UNAUTHORIZED, "{issuer}");
        let proxied = gateway
            .client(Credentials::Bearer(forged_token(issuer, "gateway")))
            .via_cluster("alpha")
            .get_json("/api/core/v2/namespaces")
            .await;
        assert_eq!(error_status(proxied), StatusCode::UNAUTHORIZED, "{issuer}");
    }

    // A cluster registered with the wrong CA (the gateway's own) shows its TLS failure.
    gateway_admin
        .put_resource(&cluster_registration(
            "alpha-wrong-ca",
            &alpha.url,
            &gateway.ca(),
        ))
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
    // Each cluster's rows in key order; alpha's agent may have added its keepalive event.
    let rows: Vec<(String, String)> = event_rows(&view)
        .into_iter()
        .filter(|(_, event)| !event.ends_with("/keepalive"))
        .collect();
    assert_eq!(
        rows,
        [
            row("gateway", "gateway-host/disk"),
            row("alpha", &format!("{AGENT}/disk-alpha")),
            row("alpha", "alpha-host/disk")
        ],
        "{view:#}"
    );
    assert_eq!(view["errors"][0]["cluster"], "alpha-wrong-ca", "{view:#}");
    let (code, stdout, stderr) =
        cairnctl(viewer_config.path(), &["get", "events", "--all-clusters"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let has_row = |cells: [&str; 3]| {
        stdout
            .lines()
            .any(|line| line.split_whitespace().take(3).eq(cells))
    };
    assert!(has_row(["alpha", "alpha-host", "disk"]), "{stdout}");
    assert!(has_row(["alpha", AGENT, "disk-alpha"]), "{stdout}");
    assert!(
        stderr.contains("cluster alpha-wrong-ca not listed"),
        "{stderr}"
    );
}
