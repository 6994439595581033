//! Fields Cairn stores but does not act on (`cairn_api::inert`): a real backend answers a write
//! that sets one with a `Warning` header naming the field. Since issue 19 none is left, so the
//! fields that were on the list (entity `redact`, handler assets, a check's assets, proxy
//! fields, subdues and cron zone) must come back without one.

use cairn_tests::Backend;
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread")]
async fn writes_setting_fields_that_were_inert_are_answered_without_a_warning() {
    let backend = Backend::start();
    let http = backend.http();
    let (_, token) = backend.login("admin", cairn_tests::ADMIN_PASSWORD).await;
    let put = |plural: &str, name: &str, spec: &str| {
        let body =
            format!(r#"{{{spec}, "metadata": {{"name": "{name}", "namespace": "default"}}}}"#);
        http.put(format!(
            "{}/api/core/v2/namespaces/default/{plural}/{name}",
            backend.url
        ))
        .bearer_auth(&token)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
    };
    let warnings = |answer: &reqwest::Response| -> Vec<String> {
        answer
            .headers()
            .get_all(reqwest::header::WARNING)
            .iter()
            .map(|value| value.to_str().expect("an ASCII header").to_owned())
            .collect()
    };

    // An entity's redact is acted on now (masked in answers and in the pipeline).
    let answer = put(
        "entities",
        "web-1",
        r#""entity_class": "proxy", "subscriptions": ["web"], "redact": ["password"]"#,
    )
    .await
    .expect("PUT an entity with redact");
    assert_eq!(answer.status(), StatusCode::CREATED);
    assert!(warnings(&answer).is_empty(), "{:?}", warnings(&answer));

    // A handler's runtime assets are acted on now (the backend fetches them).
    let answer = put(
        "handlers",
        "slack",
        r#""type": "pipe", "command": "sensu-slack-handler", "runtime_assets": ["sensu-slack-handler"]"#,
    )
    .await
    .expect("PUT a handler");
    assert_eq!(answer.status(), StatusCode::CREATED);
    assert!(warnings(&answer).is_empty(), "{:?}", warnings(&answer));

    // What checks set is all acted on now: assets, proxy checks, subdues, cron zones.
    let answer = put(
        "checks",
        "with-assets",
        r#""command": "true", "cron": "CRON_TZ=Europe/Paris 0 9 * * *", "subscriptions": ["web"], "runtime_assets": ["http-checks"], "proxy_entity_name": "site", "subdues": [{"begin": "2026-01-01T17:00:00+01:00", "end": "2026-01-02T08:00:00+01:00", "repeat": ["weekdays"]}]"#,
    )
    .await
    .expect("PUT a check");
    assert_eq!(answer.status(), StatusCode::CREATED);
    assert!(warnings(&answer).is_empty(), "{:?}", warnings(&answer));
}
