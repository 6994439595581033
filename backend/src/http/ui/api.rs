//! The UI's calls of the REST API: each one a request run through the API's own router in
//! process, as the session's user (its access token), so the API's handlers, RBAC and errors
//! decide everything, and a call for another cluster goes through the gateway's proxy
//! (`/api/cairn/v1/clusters/{name}/proxy/…`), whose downstream token is minted for that one
//! cluster; the session's cookie and token never leave this backend.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tower::ServiceExt;

use super::session::Session;
use crate::http::AppState;

/// The most bytes of one API answer the UI reads (a downstream's answer through the proxy is
/// at most 8 MiB already).
const ANSWER_LIMIT: usize = 16 * 1024 * 1024;
/// Items per page when the UI lists a collection.
const PAGE_SIZE: usize = 500;
/// The most pages the UI follows for one list (`Sensu-Continue`): 10,000 items.
const PAGES_LIMIT: usize = 20;

/// A failed call, as the page shows it.
#[derive(Debug, Clone)]
pub(crate) struct CallError {
    /// The API's status (502 for a cluster that could not be asked).
    pub(crate) status: StatusCode,
    /// The API's message.
    pub(crate) message: String,
}

impl CallError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> CallError {
        CallError {
            status,
            message: message.into(),
        }
    }
}

/// The API, as one session's user.
pub(crate) struct Api<'a> {
    state: &'a AppState,
    session: &'a Session,
}

impl<'a> Api<'a> {
    pub(crate) fn new(state: &'a AppState, session: &'a Session) -> Api<'a> {
        Api { state, session }
    }

    /// This cluster's name (its token issuer).
    pub(crate) fn local(&self) -> &str {
        self.state.issuer.issuer()
    }

    /// Sends `method path` (a canonical `/api/…` path with its query) to `cluster` and returns
    /// the status, the `Sensu-Continue` header and the body, any status included.
    async fn send(
        &self,
        cluster: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Option<String>, axum::body::Bytes), CallError> {
        let uri = if cluster == self.local() {
            path.to_owned()
        } else {
            format!(
                "/api/cairn/v1/clusters/{}/proxy{path}",
                super::encode_segment(cluster)
            )
        };
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, &self.session.authorization);
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(body).map_err(internal)?)
            }
            None => Body::empty(),
        };
        let request = request.body(body).map_err(internal)?;
        let response = crate::http::app(self.state.clone())
            .oneshot(request)
            .await
            .map_err(internal)?;
        let status = response.status();
        let more = response
            .headers()
            .get("sensu-continue")
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.is_empty())
            .map(str::to_owned);
        let bytes = axum::body::to_bytes(response.into_body(), ANSWER_LIMIT)
            .await
            .map_err(|_| {
                CallError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("an answer of cluster {cluster} is over {ANSWER_LIMIT} bytes"),
                )
            })?;
        Ok((status, more, bytes))
    }

    /// Sends a request and fails unless the status is a success; returns the body.
    pub(crate) async fn call(
        &self,
        cluster: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<axum::body::Bytes, CallError> {
        let (status, _, bytes) = self.send(cluster, method, path, body).await?;
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(failure(cluster, status, &bytes))
        }
    }

    /// `GET path` on `cluster`, decoded.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        cluster: &str,
        path: &str,
    ) -> Result<T, CallError> {
        let bytes = self.call(cluster, Method::GET, path, None).await?;
        serde_json::from_slice(&bytes).map_err(|err| {
            CallError::new(
                StatusCode::BAD_GATEWAY,
                format!("cluster {cluster} answered GET {path} with a body that is not what it should be: {err}"),
            )
        })
    }

    /// Every item of the collection at `path` on `cluster`, following `Sensu-Continue` for at
    /// most [`PAGES_LIMIT`] pages of [`PAGE_SIZE`].
    pub(crate) async fn list<T: DeserializeOwned>(
        &self,
        cluster: &str,
        path: &str,
    ) -> Result<Vec<T>, CallError> {
        let mut items = Vec::new();
        let mut next: Option<String> = None;
        for _ in 0..PAGES_LIMIT {
            let mut page = format!("{path}?limit={PAGE_SIZE}");
            if let Some(token) = &next {
                page.push_str("&continue=");
                page.push_str(&super::encode_segment(token));
            }
            let (status, more, bytes) = self.send(cluster, Method::GET, &page, None).await?;
            if !status.is_success() {
                return Err(failure(cluster, status, &bytes));
            }
            let rows: Vec<T> = serde_json::from_slice(&bytes).map_err(|err| {
                CallError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("cluster {cluster} answered GET {path} with a list that is not what it should be: {err}"),
                )
            })?;
            items.extend(rows);
            match more {
                Some(token) => next = Some(token),
                None => return Ok(items),
            }
        }
        Err(CallError::new(
            StatusCode::BAD_GATEWAY,
            format!("cluster {cluster}: {path} has more than {PAGES_LIMIT} pages of {PAGE_SIZE}"),
        ))
    }
}

/// The error of a call the API answered with `status`: its message.
fn failure(cluster: &str, status: StatusCode, body: &[u8]) -> CallError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|body| body["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("cluster {cluster} answered {status}"));
    CallError::new(status, message)
}

fn internal(err: impl std::fmt::Display) -> CallError {
    tracing::error!(error = %err, "the web UI could not call the API");
    CallError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}
