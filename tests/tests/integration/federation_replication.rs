//! One-way replication across real backend processes that share one JWT key pair: a gateway
//! replicates the checks of `default` to a downstream `alpha` registered on it.
//!
//! A check created on the gateway appears on alpha; an edit made on alpha's copy is reverted
//! at the next resync; alpha's own check is never touched; deletes follow; alpha killed while
//! the gateway changes converges once it is back; the status API and `cairnctl get
//! replicators` show where each replicator stands; a cluster registered with the wrong CA
//! shows its TLS failure; deleting the replicator removes its copies.

use std::time::Duration;

use cairn_api::client::Client;
use cairn_api::meta::LABEL_REPLICATED_FROM;
use cairn_api::model::CheckConfig;
use cairn_api::{Kind, ObjectMeta, Resource, Spec};
use cairn_tests::{
    check_replicator, cluster_registration, eventually, matching, Backend, FederationKeys,
};
use serde_json::Value;

use crate::common::cairnctl;

/// How long replication may take before a test gives up: far above the resync interval and
/// the largest backoff (15 s), so that a failure means it did not converge.
const CONVERGE: Duration = Duration::from_secs(45);

const REPLICATOR: &str = "checks-to-alpha";

fn check(name: &str, command: &str) -> Resource {
    let mut metadata = ObjectMeta::named("default", name);
    metadata.labels.insert("team".into(), "ops".into());
    metadata
        .annotations
        .insert("runbook".into(), "https://wiki.example/disk".into());
    Resource::new(
        metadata,
        Spec::CheckConfig(CheckConfig {
            command: command.to_owned(),
            interval: 60,
            subscriptions: vec!["linux".into()],
            ..CheckConfig::default()
        }),
    )
}

fn command_of(resource: &Resource) -> &str {
    match &resource.spec {
        Spec::CheckConfig(check) => &check.command,
        other => panic!("not a check: {other:?}"),
    }
}

/// The check `name` in alpha's `default`, or `None`; a failed read is `None` too (alpha may be
/// restarting), so callers poll.
async fn on_alpha(alpha: &Client, name: &str) -> Option<Resource> {
    alpha
        .get_resource(Kind::CheckConfig, "default", name)
        .await
        .ok()
        .flatten()
}

/// Alpha's checks carrying the replication label.
async fn copies_on_alpha(alpha: &Client) -> Option<Vec<String>> {
    let checks = alpha
        .list_resources(Kind::CheckConfig, "default")
        .await
        .ok()?;
    Some(
        checks
            .into_iter()
            .filter(|check| check.metadata.labels.contains_key(LABEL_REPLICATED_FROM))
            .map(|check| check.metadata.name)
            .collect(),
    )
}

async fn status(gateway: &Client, name: &str) -> Value {
    gateway
        .get_json(&format!("/api/cairn/v1/replicators/{name}"))
        .await
        .unwrap_or_else(|err| panic!("the status of replicator {name}: {err}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn replication_walk_through() {
    let keys_dir = tempfile::tempdir().expect("tempdir");
    let keys = FederationKeys::generate(keys_dir.path());
    let gateway = Backend::start_federated("gateway", &keys);
    let mut alpha = Backend::start_federated("alpha", &keys);
    let gateway_admin = gateway.admin().await;
    let alpha_admin = alpha.admin().await;

    // Alpha's own check, and one of the same name as a gateway check to come.
    let local = check("alpha-local", "alpha's own");
    alpha_admin
        .put_resource(&local)
        .await
        .expect("alpha's check");
    let shadow = check("shadowed", "alpha's version");
    alpha_admin
        .put_resource(&shadow)
        .await
        .expect("alpha's check");

    gateway_admin
        .put_resource(&cluster_registration("alpha", &alpha.url, &alpha.ca()))
        .await
        .expect("register alpha on the gateway");
    gateway_admin
        .put_resource(&check_replicator(REPLICATOR, "alpha"))
        .await
        .expect("create the replicator");

    // A check created on the gateway appears on alpha, as a labelled copy.
    gateway_admin
        .put_resource(&check("disk", "check-disk -w 80"))
        .await
        .expect("create disk on the gateway");
    let copy = eventually("disk on alpha", CONVERGE, || async {
        on_alpha(&alpha_admin, "disk").await.ok_or("no disk")
    })
    .await;
    assert_eq!(command_of(&copy), "check-disk -w 80");
    assert_eq!(
        copy.metadata
            .labels
            .get(LABEL_REPLICATED_FROM)
            .map(String::as_str),
        Some("gateway/checks-to-alpha")
    );
    assert_eq!(copy.metadata.labels["team"], "ops");
    assert_eq!(
        copy.metadata.annotations["runbook"],
        "https://wiki.example/disk"
    );
    assert_eq!(copy.metadata.created_by, "cairn:replicator");

    // A gateway check whose name alpha already uses is not written over.
    gateway_admin
        .put_resource(&check("shadowed", "the gateway's version"))
        .await
        .expect("create shadowed on the gateway");
    let refused = eventually("the refusal of shadowed", CONVERGE, || async {
        let status = status(&gateway_admin, REPLICATOR).await;
        status["resource_errors"]
            .as_array()
            .filter(|errors| !errors.is_empty())
            .cloned()
            .ok_or(status)
    })
    .await;
    assert_eq!(
        refused[0]["resource"], "res/checks/default/shadowed",
        "{refused:?}"
    );
    let shadowed = on_alpha(&alpha_admin, "shadowed")
        .await
        .expect("still there");
    assert_eq!(command_of(&shadowed), "alpha's version");
    assert!(!shadowed.metadata.labels.contains_key(LABEL_REPLICATED_FROM));

    // An edit made on alpha's copy is reverted by the next resync (every second).
    let mut edited = copy.clone();
    if let Spec::CheckConfig(check) = &mut edited.spec {
        check.command = "edited on alpha".into();
    }
    alpha_admin
        .put_resource(&edited)
        .await
        .expect("edit the copy on alpha");
    eventually("the edit reverted", CONVERGE, || async {
        let copy = on_alpha(&alpha_admin, "disk").await;
        matching(copy, |copy| {
            copy.as_ref()
                .is_some_and(|copy| command_of(copy) == "check-disk -w 80")
        })
    })
    .await;

    // An update and a delete on the gateway follow.
    gateway_admin
        .put_resource(&check("disk", "check-disk -w 90"))
        .await
        .expect("update disk");
    eventually("the update on alpha", CONVERGE, || async {
        let copy = on_alpha(&alpha_admin, "disk").await;
        matching(copy, |copy| {
            copy.as_ref()
                .is_some_and(|copy| command_of(copy) == "check-disk -w 90")
        })
    })
    .await;
    gateway_admin
        .delete_resource(Kind::CheckConfig, "default", "disk")
        .await
        .expect("delete disk");
    eventually("disk deleted on alpha", CONVERGE, || async {
        matching(on_alpha(&alpha_admin, "disk").await, Option::is_none)
    })
    .await;

    // Alpha goes away while the gateway changes; it converges once it is back.
    gateway_admin
        .put_resource(&check("doomed", "x"))
        .await
        .expect("create doomed");
    eventually("doomed on alpha", CONVERGE, || async {
        on_alpha(&alpha_admin, "doomed").await.ok_or("no doomed")
    })
    .await;
    tokio::task::block_in_place(|| alpha.stop());
    for idx in 0..20 {
        gateway_admin
            .put_resource(&check(&format!("outage-{idx}"), "during the outage"))
            .await
            .expect("create a check during the outage");
    }
    gateway_admin
        .delete_resource(Kind::CheckConfig, "default", "doomed")
        .await
        .expect("delete doomed");
    let backing_off = eventually("the replicator backing off", CONVERGE, || async {
        matching(status(&gateway_admin, REPLICATOR).await, |status| {
            status["state"] == "backing_off"
        })
    })
    .await;
    assert!(
        backing_off["last_error"]["message"].is_string(),
        "{backing_off:#}"
    );
    tokio::task::block_in_place(|| alpha.restart());
    let alpha_admin = alpha.admin().await;
    eventually("alpha caught up", CONVERGE, || async {
        matching(copies_on_alpha(&alpha_admin).await, |copies| {
            copies.as_ref().is_some_and(|copies| {
                let all = (0..20).all(|idx| copies.contains(&format!("outage-{idx}")));
                all && !copies.contains(&"doomed".to_owned())
            })
        })
    })
    .await;

    // The status API says where it stands, at both paths.
    let ok = eventually("the replicator ok", CONVERGE, || async {
        matching(status(&gateway_admin, REPLICATOR).await, |status| {
            status["state"] == "ok" && status["pending"] == 0
        })
    })
    .await;
    assert_eq!(ok["cluster"], "alpha");
    assert_eq!(ok["resource"], "CheckConfig");
    assert_eq!(ok["label"], "gateway/checks-to-alpha");
    assert!(ok["last_revision"].as_u64().unwrap_or(0) > 0, "{ok:#}");
    assert!(ok["counts"]["puts"].as_u64().unwrap_or(0) >= 22, "{ok:#}");
    assert!(ok["counts"]["deletes"].as_u64().unwrap_or(0) >= 2, "{ok:#}");
    assert!(ok["last_resync"]["at"].as_u64().unwrap_or(0) > 0, "{ok:#}");
    let enterprise = gateway_admin
        .get_json(&format!(
            "/api/enterprise/federation/v1/replicators/{REPLICATOR}/status"
        ))
        .await
        .expect("the status at the enterprise path");
    assert_eq!(enterprise["name"], REPLICATOR);
    let all = gateway_admin
        .get_json("/api/cairn/v1/replicators")
        .await
        .expect("every replicator's status");
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all:#}");

    // Alpha's own check was never touched.
    let untouched = on_alpha(&alpha_admin, "alpha-local")
        .await
        .expect("alpha's own check");
    assert_eq!(command_of(&untouched), "alpha's own");
    assert_eq!(untouched.metadata.created_by, "admin");

    // A cluster registered with another CA (the gateway's own): the TLS failure is the status.
    gateway_admin
        .put_resource(&cluster_registration(
            "alpha-wrong-ca",
            &alpha.url,
            &gateway.ca(),
        ))
        .await
        .expect("register alpha with the wrong CA");
    gateway_admin
        .put_resource(&check_replicator("to-wrong-ca", "alpha-wrong-ca"))
        .await
        .expect("create the replicator to the wrong CA");
    let failing = eventually("the TLS failure in the status", CONVERGE, || async {
        matching(status(&gateway_admin, "to-wrong-ca").await, |status| {
            status["last_error"]["message"]
                .as_str()
                .is_some_and(|message| message.contains("certificate"))
        })
    })
    .await;
    assert_eq!(failing["state"], "backing_off", "{failing:#}");

    // cairnctl shows both, with their state and the error.
    let config_dir = tempfile::tempdir().expect("tempdir");
    let ca_file = gateway.ca_file();
    let (code, stdout, stderr) = cairnctl(
        config_dir.path(),
        &[
            "configure",
            "--url",
            &gateway.url,
            "--ca-file",
            ca_file.to_str().expect("utf-8 path"),
            "--username",
            "admin",
            "--password",
            cairn_tests::ADMIN_PASSWORD,
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, table, stderr) = cairnctl(config_dir.path(), &["get", "replicators"]);
    assert_eq!(code, 0, "{table}{stderr}");
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "CLUSTER",
            "RESOURCE",
            "LAST-REVISION",
            "LAG",
            "STATE",
            "LAST-ERROR"
        ],
        "{table}"
    );
    let row = lines
        .iter()
        .find(|line| line.starts_with(REPLICATOR))
        .unwrap_or_else(|| panic!("no row for {REPLICATOR}:\n{table}"));
    assert!(
        row.contains("alpha") && row.contains("CheckConfig"),
        "{table}"
    );
    let wrong = lines
        .iter()
        .find(|line| line.starts_with("to-wrong-ca"))
        .unwrap_or_else(|| panic!("no row for to-wrong-ca:\n{table}"));
    assert!(
        wrong.contains("backing_off") && wrong.contains("certificate"),
        "{table}"
    );

    // Deleting the replicator removes its copies, and only them.
    gateway_admin
        .delete_resource(Kind::Replicator, "", REPLICATOR)
        .await
        .expect("delete the replicator");
    eventually("the copies removed", CONVERGE, || async {
        matching(copies_on_alpha(&alpha_admin).await, |copies| {
            copies.as_ref().is_some_and(Vec::is_empty)
        })
    })
    .await;
    assert!(on_alpha(&alpha_admin, "alpha-local").await.is_some());
    assert!(on_alpha(&alpha_admin, "shadowed").await.is_some());
    eventually("the record gone", CONVERGE, || async {
        match gateway_admin
            .get_json(&format!("/api/cairn/v1/replicators/{REPLICATOR}"))
            .await
        {
            Ok(record) => Err(record),
            Err(_) => Ok(()),
        }
    })
    .await;
}
