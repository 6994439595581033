//! Sensu's ad hoc check execution: `POST /api/core/v2/namespaces/{ns}/checks/{check}/execute`
//! asks the scheduler to send the check to its agents now (the web UI's "re-run").

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use cairn_api::Kind;

use crate::agents::scheduler::{self, AdhocError, AdhocRequest};
use crate::auth::rbac::{Caller, Verb};
use crate::http::{authorize, read_body, ApiError, AppState};

/// Sensu's `AdhocRequest`: the check (as `check`, or `metadata.name` as newer sensuctl sends
/// it), the subscriptions to send it to instead of its own, who asked and why.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ExecuteBody {
    check: Option<String>,
    metadata: Option<ExecuteMeta>,
    subscriptions: Vec<String>,
    creator: String,
    reason: String,
}

/// What an `AdhocRequest`'s `metadata` may say; only the name and namespace are read.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ExecuteMeta {
    name: String,
    namespace: String,
    labels: std::collections::BTreeMap<String, String>,
    annotations: std::collections::BTreeMap<String, String>,
    created_by: String,
}

/// `POST …/checks/{check}/execute`: 202 `{"issued": <unix seconds>}` once the request is
/// queued for the scheduler, which sends it at once to this backend's sessions that match the
/// subscriptions (the check's own unless the body names others; one of them for a round-robin
/// check). An unpublished check runs too. Needs `create` on `checks` (as Sensu).
///
/// # Errors
/// 403 for the caller, 400 for a body that is not an `AdhocRequest` or names another check
/// or namespace, 404 for a check that does not exist, 503 while [`scheduler::ADHOC_QUEUE`]
/// requests wait (or the scheduler has stopped), store failures.
pub(super) async fn checks_execute(
    state: &AppState,
    caller: &Caller,
    namespace: &str,
    check: &str,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(
        state,
        caller,
        Verb::Create,
        Kind::CheckConfig.plural(),
        Some(namespace),
        Some(check),
    )?;
    let bytes = read_body(state, body).await?;
    let request: ExecuteBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        ExecuteBody::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|err| ApiError::invalid(format!("invalid AdhocRequest: {err}")))?
    };
    let named = [
        ("check", request.check.as_deref()),
        (
            "metadata.name",
            request.metadata.as_ref().map(|meta| meta.name.as_str()),
        ),
    ];
    for (field, name) in named {
        if let Some(name) = name.filter(|name| !name.is_empty() && *name != check) {
            return Err(ApiError::invalid(format!(
                "{field}: \"{name}\" does not match the check of the URI ({check})"
            )));
        }
    }
    if let Some(other) = request
        .metadata
        .as_ref()
        .map(|meta| meta.namespace.as_str())
        .filter(|other| !other.is_empty() && *other != namespace)
    {
        return Err(ApiError::invalid(format!(
            "metadata.namespace: \"{other}\" does not match the namespace of the URI ({namespace})"
        )));
    }
    if let Some(idx) = request.subscriptions.iter().position(String::is_empty) {
        return Err(ApiError::invalid(format!(
            "subscriptions[{idx}]: must not be empty"
        )));
    }
    let stored = state
        .resources
        .get(Kind::CheckConfig, namespace, check)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("checks {namespace}/{check} not found")))?;
    let mut config = scheduler::request_config(stored.resource)
        .ok_or_else(|| ApiError::internal("a check key holds another kind"))?;
    if !request.subscriptions.is_empty() {
        config.subscriptions = request.subscriptions;
    }
    let creator = if request.creator.is_empty() {
        caller.username.clone()
    } else {
        request.creator
    };
    state
        .agents
        .adhoc
        .request(AdhocRequest {
            namespace: namespace.to_owned(),
            config,
            creator,
            reason: request.reason,
        })
        .map_err(|err| match err {
            AdhocError::QueueFull | AdhocError::Stopped => ApiError::busy(err.to_string()),
        })?;
    let issued = crate::clock::unix_now();
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "issued": issued })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use axum::http::Method;
    use serde_json::{json, Value};

    use crate::http::tests::Fixture;

    fn check(name: &str) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "default"},
            "command": "true",
            "interval": 3600,
            "subscriptions": ["linux"],
        })
    }

    #[tokio::test]
    async fn executions_are_queued_checked_and_refused() {
        let mut fixture = Fixture::new("alpha").await;
        let (adhoc, mut queue) = crate::agents::scheduler::adhoc_queue();
        fixture.state.agents.adhoc = adhoc;
        let admin = fixture.token_from("alpha", "admin", &[]);
        let checks = "/api/core/v2/namespaces/default/checks";
        let (status, _) = fixture
            .call(Method::POST, checks, &admin, Some(check("cpu")))
            .await;
        assert_eq!(status, axum::http::StatusCode::CREATED);
        let execute = format!("{checks}/cpu/execute");

        let (status, body) = fixture
            .call(
                Method::POST,
                &execute,
                &admin,
                Some(json!({"check": "cpu", "subscriptions": ["entity:web1"], "reason": "ui"})),
            )
            .await;
        assert_eq!(status, axum::http::StatusCode::ACCEPTED, "{body}");
        assert!(
            body["issued"].as_i64().is_some_and(|issued| issued > 0),
            "{body}"
        );
        let queued = queue.try_recv().expect("the request is queued");
        assert_eq!(queued.namespace, "default");
        assert_eq!(queued.config.subscriptions, ["entity:web1"]);
        assert_eq!(queued.creator, "admin");
        assert_eq!(queued.reason, "ui");
        assert_eq!(
            queued.config.metadata.map(|meta| meta.name),
            Some("cpu".to_owned())
        );

        // No body: the check's own subscriptions.
        let (status, _) = fixture.call(Method::POST, &execute, &admin, None).await;
        assert_eq!(status, axum::http::StatusCode::ACCEPTED);
        assert_eq!(
            queue.try_recv().expect("queued").config.subscriptions,
            ["linux"]
        );

        let refusals = [
            (
                json!({"check": "mem"}),
                400,
                "check: \"mem\" does not match the check of the URI (cpu)",
            ),
            (
                json!({"metadata": {"name": "mem"}}),
                400,
                "metadata.name: \"mem\" does not match the check of the URI (cpu)",
            ),
            (json!({"colour": "red"}), 400, "invalid AdhocRequest"),
        ];
        for (body, code, message) in refusals {
            let (status, answer) = fixture
                .call(Method::POST, &execute, &admin, Some(body))
                .await;
            assert_eq!(status.as_u16(), code, "{answer}");
            assert!(
                answer["message"].as_str().unwrap().starts_with(message),
                "{answer}"
            );
        }
        let (status, answer) = fixture
            .call(
                Method::POST,
                &format!("{checks}/nope/execute"),
                &admin,
                None,
            )
            .await;
        assert_eq!(status, axum::http::StatusCode::NOT_FOUND, "{answer}");

        // A viewer reads checks but may not execute them.
        fixture.bind_group("viewers", "view").await;
        let viewer = fixture.token_from("gateway", "val", &["viewers"]);
        let (status, answer) = fixture.call(Method::POST, &execute, &viewer, None).await;
        assert_eq!(status, axum::http::StatusCode::FORBIDDEN, "{answer}");
        assert!(queue.try_recv().is_none(), "nothing else was queued");

        // A full queue is a 503, not a wait.
        for _ in 0..crate::agents::scheduler::ADHOC_QUEUE {
            let (status, _) = fixture.call(Method::POST, &execute, &admin, None).await;
            assert_eq!(status, axum::http::StatusCode::ACCEPTED);
        }
        let (status, answer) = fixture.call(Method::POST, &execute, &admin, None).await;
        assert_eq!(
            status,
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "{answer}"
        );
    }
}
