//! Fields Cairn stores but does not act on (`cairn_api::inert`): a real backend answers a write
//! that sets one with a `Warning` header naming the field, and a write that sets none without.

use cairn_tests::Backend;
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread")]
async fn writes_setting_inert_fields_are_answered_with_a_warning_per_field() {
    let backend = Backend::start();
    let http = backend.http();
    let (_, token) = backend.login("admin", cairn_tests::ADMIN_PASSWORD).await;
    let put = |name: &str, extra: &str| {
        let body = format!(
            r#"{{"command": "true", "interval": 60, "subscriptions": ["web"], "metadata": {{"name": "{name}", "namespace": "default"}}{extra}}}"#
        );
        http.put(format!(
            "{}/api/core/v2/namespaces/default/checks/{name}",
            backend.url
        ))
        .bearer_auth(&token)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
    };

    let answer = put(
        "with-assets",
        r#", "runtime_assets": ["http-checks"], "proxy_entity_name": "site""#,
    )
    .await
    .expect("PUT a check with inert fields");
    assert_eq!(answer.status(), StatusCode::CREATED);
    let warnings: Vec<String> = answer
        .headers()
        .get_all(reqwest::header::WARNING)
        .iter()
        .map(|value| value.to_str().expect("an ASCII header").to_owned())
        .collect();
    assert_eq!(
        warnings,
        [
            "299 cairn \"spec.proxy_entity_name: accepted but not acted on: Cairn does not run proxy checks yet; results are stored on the agent's own entity\"",
            "299 cairn \"spec.runtime_assets: accepted but not acted on: Cairn does not download runtime assets yet; the command runs without them\"",
        ]
    );

    let answer = put("plain", "").await.expect("PUT a plain check");
    assert_eq!(answer.status(), StatusCode::CREATED);
    assert!(answer.headers().get(reqwest::header::WARNING).is_none());
}
