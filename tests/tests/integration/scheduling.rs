//! Scheduling with a real backend and a real agent over mutual TLS: a subdued check is not
//! sent while its window holds (and `cairnctl check execute` still runs it, as Sensu's ad hoc
//! runs do), `check execute` runs a check at once on the subscriptions it names, a
//! subscription added through the API (`cairnctl entity update`) gets its check at once, and
//! deleting the entity deletes its events; a proxy check fans out over the entities its
//! `entity_attributes` match, and an agent cannot write proxy results nobody asked for.

use std::time::Duration;

use cairn_tests::{eventually, metrics, Backend};
use serde_json::json;

use crate::agent::{
    enrol, entity_path, event_path, get_opt, local_http, post_local, put_check, start_agent,
    wait_connected, wait_event,
};
use crate::common::Ctl;
use reqwest::Method;

const AGENT: &str = "sched-1";

/// The stored entity has what `entity update` gave it: subscription `web`, label `tier=front`.
async fn assert_api_changes(admin: &cairn_api::client::Client) {
    let entity = get_opt(admin, &entity_path(AGENT))
        .await
        .expect("the entity");
    let subscriptions = entity["subscriptions"].as_array();
    assert!(
        subscriptions.is_some_and(|subscriptions| subscriptions.contains(&json!("web"))),
        "{entity:#}"
    );
    assert_eq!(entity["metadata"]["labels"]["tier"], "front", "{entity:#}");
}

/// The value of the counter `name` on `/metrics`.
fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subdues_check_execute_and_entity_updates_reach_a_real_agent() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let ctl = Ctl::configure(&backend);
    let install = enrol(&backend, &admin, AGENT).await;
    let agent = start_agent(&install, &[]);
    wait_connected(&agent).await;

    // A check subdued for this whole century, and a control that runs beside it.
    let spec = |command: &str, subscriptions: &[&str]| json!({"command": command, "interval": 1, "subscriptions": subscriptions, "publish": true});
    let mut subdued = spec("echo subdued ran", &["linux"]);
    subdued["subdues"] = json!([{"begin": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"}]);
    put_check(&admin, "subdued", subdued).await;
    put_check(&admin, "control", spec("echo control ran", &["linux"])).await;
    wait_event(
        &admin,
        Some(&agent),
        (AGENT, "control"),
        Duration::from_secs(20),
        "control runs",
        |event| {
            event["check"]["history"]
                .as_array()
                .is_some_and(|history| history.len() >= 3)
        },
    )
    .await;
    assert!(
        get_opt(&admin, &event_path(AGENT, "subdued"))
            .await
            .is_none(),
        "the subdued check ran"
    );
    let skipped = counter(&metrics(&admin).await, "cairn_check_subdued_firings_total");
    assert!(skipped >= 2, "subdued firings counted: {skipped}");

    // An ad hoc run goes through the window, as Sensu's.
    ctl.expect(0, &["check", "execute", "subdued", "--reason", "test"]);
    let event = wait_event(
        &admin,
        Some(&agent),
        (AGENT, "subdued"),
        Duration::from_secs(10),
        "the ad hoc run",
        |_| true,
    )
    .await;
    assert_eq!(
        event["check"]["output"].as_str().map(str::trim),
        Some("subdued ran")
    );

    // `check execute` on the subscriptions it names, not the check's own.
    put_check(&admin, "adhoc", json!({"command": "echo adhoc ran", "interval": 3600, "subscriptions": ["nobody"], "publish": false})).await;
    let entity_sub = format!("entity:{AGENT}");
    let run = ctl.expect(
        0,
        &["check", "execute", "adhoc", "--subscriptions", &entity_sub],
    );
    assert!(run.stdout.contains("Issued"), "{run:#?}");
    wait_event(
        &admin,
        Some(&agent),
        (AGENT, "adhoc"),
        Duration::from_secs(10),
        "adhoc on entity:",
        |event| event["check"]["output"].as_str().map(str::trim) == Some("adhoc ran"),
    )
    .await;
    let missing = ctl.expect(1, &["check", "execute", "no-such-check"]);
    assert!(
        missing.stderr.contains("404") || missing.stderr.contains("not found"),
        "{missing:#?}"
    );

    // A subscription added through the API gets its check at once.
    // Its command's token reads the label set through the API: the agent gets the stored
    // entity's labels from the backend (a backend-managed entity).
    put_check(
        &admin,
        "web-only",
        spec("echo web ran on tier {{ .labels.tier }}", &["web"]),
    )
    .await;
    assert!(get_opt(&admin, &event_path(AGENT, "web-only"))
        .await
        .is_none());
    let run = ctl.expect(
        0,
        &[
            "entity",
            "update",
            AGENT,
            "--add-subscription",
            "web",
            "--label",
            "tier=front",
        ],
    );
    assert!(run.stdout.contains("added subscription web"), "{run:#?}");
    let web = wait_event(
        &admin,
        Some(&agent),
        (AGENT, "web-only"),
        Duration::from_secs(15),
        "the new subscription's check",
        |_| true,
    )
    .await;
    assert_eq!(
        web["check"]["output"].as_str().map(str::trim),
        Some("web ran on tier front"),
        "{web:#}"
    );
    assert_eq!(web["entity"]["metadata"]["labels"]["tier"], "front");
    assert_api_changes(&admin).await;
    // The agent reconnecting (its agent.yaml still says only `linux`) leaves the API's changes
    // alone: a backend-managed entity, as Sensu's.
    drop(agent);
    let agent = start_agent(&install, &[]);
    wait_connected(&agent).await;
    assert_api_changes(&admin).await;

    // Deleting the entity deletes its events (the agent stopped first, so none come back).
    drop(agent);
    ctl.expect(0, &["delete", "entity", AGENT]);
    eventually(
        "no events of the entity",
        Duration::from_secs(5),
        || async {
            let events = admin
                .get_json(&format!("/api/core/v2/namespaces/default/events/{AGENT}"))
                .await
                .map_err(|err| err.to_string())?;
            match events.as_array().map(Vec::len) {
                Some(0) => Ok(()),
                _ => Err(format!("events left: {events:#}")),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_check_fans_out_over_twenty_entities_and_forged_proxy_results_are_refused() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let install = enrol(&backend, &admin, "prober").await;
    let agent = start_agent(&install, &[]);
    wait_connected(&agent).await;
    // site-0 … site-19 are web sites; site-20 is not; site-21's url label (set by whoever may
    // write entities) tries to inject a command.
    let injected = install.file("injected");
    for index in 0..22 {
        let kind = if index == 20 { "network" } else { "website" };
        let name = format!("site-{index}");
        let url = if index == 21 {
            format!("https://x.example/; touch {}", injected.display())
        } else {
            format!("https://{name}.example")
        };
        let body = json!({
            "entity_class": "proxy",
            "metadata": {
                "name": name,
                "namespace": "default",
                "labels": {"proxy_type": kind, "url": url},
            },
        });
        admin
            .send(
                Method::PUT,
                &format!("/api/core/v2/namespaces/default/entities/{name}"),
                Some(&body),
            )
            .await
            .expect("PUT a proxy entity");
    }
    put_check(
        &admin,
        "site-http",
        json!({
            "command": "echo checking {{ .labels.url }}",
            "interval": 3600,
            "subscriptions": ["linux"],
            "publish": false,
            "proxy_requests": {
                "entity_attributes": ["entity.entity_class == 'proxy'", "entity.labels.proxy_type == 'website'"],
                "splay": false,
            },
        }),
    )
    .await;
    let ctl = Ctl::configure(&backend);
    ctl.expect(0, &["check", "execute", "site-http"]);
    for index in 0..20 {
        let entity = format!("site-{index}");
        let event = wait_event(
            &admin,
            Some(&agent),
            (&entity, "site-http"),
            Duration::from_secs(30),
            "a proxy result",
            |_| true,
        )
        .await;
        assert_eq!(
            event["check"]["output"].as_str().map(str::trim),
            Some(format!("checking https://site-{index}.example").as_str()),
            "{event:#}"
        );
        assert_eq!(event["check"]["proxy_entity_name"], entity.as_str());
        assert_eq!(event["check"]["processed_by"], "prober");
        assert_eq!(event["entity"]["entity_class"], "proxy");
    }
    assert!(
        get_opt(&admin, &event_path("site-20", "site-http"))
            .await
            .is_none(),
        "the entity the attributes do not match got a request"
    );
    let refused = wait_event(
        &admin,
        Some(&agent),
        ("site-21", "site-http"),
        Duration::from_secs(15),
        "the injected entity's refusal",
        |_| true,
    )
    .await;
    assert_eq!(refused["check"]["status"], 3, "{refused:#}");
    assert!(
        refused["check"]["output"].as_str().is_some_and(
            |output| output.contains("token .labels.url holds ';', a shell metacharacter")
        ),
        "{refused:#}"
    );
    assert!(!injected.exists(), "the injected command ran");
    assert!(
        get_opt(&admin, &event_path("prober", "site-http"))
            .await
            .is_none(),
        "a proxy result was stored on the agent's own entity"
    );

    // A result for another entity (a local program's, through the agent) lands on an existing
    // proxy entity, but creates no entity that no stored check names, and never lands on an
    // agent's entity (the agent's own included).
    put_check(
        &admin,
        "plain",
        json!({"command": "true", "interval": 3600, "subscriptions": ["linux"], "publish": false}),
    )
    .await;
    let http = local_http();
    for (check, target) in [
        ("plain", "ghost"),
        ("forged", "ghost-2"),
        ("site-http", "prober"),
        ("plain", "site-0"),
    ] {
        let forged = json!({"check": {"metadata": {"name": check}, "status": 2, "output": "from elsewhere", "proxy_entity_name": target}});
        let (status, body) = post_local(&http, &agent, &forged).await;
        assert!(status.is_success(), "{status} {body}");
    }
    let landed = wait_event(
        &admin,
        Some(&agent),
        ("site-0", "plain"),
        Duration::from_secs(15),
        "the result for an existing proxy entity",
        |_| true,
    )
    .await;
    assert_eq!(landed["check"]["processed_by"], "prober");
    // Sent before it, so handled by now.
    for (entity, check) in [
        ("ghost", "plain"),
        ("ghost-2", "forged"),
        ("prober", "site-http"),
    ] {
        assert!(
            get_opt(&admin, &event_path(entity, check)).await.is_none(),
            "a proxy result {entity}/{check} was stored"
        );
    }
    for entity in ["ghost", "ghost-2"] {
        assert!(
            get_opt(&admin, &entity_path(entity)).await.is_none(),
            "a result created the entity {entity}"
        );
    }
    // The agent logs each refusal as it reads it, maybe after the event sent later is stored.
    eventually(
        "the refusals in the agent's log",
        Duration::from_secs(10),
        || async {
            let log = agent.log();
            if log.contains("there is no entity ghost") && log.contains("prober is an agent entity")
            {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;
}
