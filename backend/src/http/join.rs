//! The agent-joining routes: join tokens (`/api/cairn/v1/jointokens`), the bootstrap that
//! trades a token and a CSR for a certificate ([`cairn_api::agent::BOOTSTRAP_PATH`]), and
//! revocations. The use cases are [`crate::agents::enrol`]'s (the rules under them
//! [`crate::agents::join`]'s); this module reads requests and answers them.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;

use cairn_api::agent::BootstrapRequest;

use crate::agents::enrol::EnrolError;
use crate::agents::join::{CreateJoinToken, AGENTS_RESOURCE, JOIN_TOKENS_RESOURCE};
use crate::auth::rbac::Verb;
use crate::http::{authenticate, authorize, parse_json, read_body, ApiError, AppState};

impl From<EnrolError> for ApiError {
    fn from(err: EnrolError) -> ApiError {
        match err {
            EnrolError::Refused(message) => ApiError::unauthenticated(message),
            EnrolError::Invalid(message) => ApiError::invalid(message),
            EnrolError::NotFound(message) => ApiError::not_found(message),
            EnrolError::Conflict(message) => ApiError::conflict(message),
            EnrolError::Store(err) => ApiError::from(err),
            EnrolError::Internal(detail) => ApiError::internal(detail),
        }
    }
}

/// The authority a request reached: HTTP/2's `:authority` (in the URI), else the `Host` header;
/// `None` when there is neither, or the header is not visible ASCII.
fn request_authority<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    match uri.authority() {
        Some(authority) => Some(authority.as_str()),
        None => headers.get(header::HOST)?.to_str().ok(),
    }
}

/// `POST /api/cairn/v1/jointokens`.
///
/// # Errors
/// 401/403 for the caller, 400/404 for the body, store failures.
pub(crate) async fn create_token_handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers)?;
    authorize(
        &state,
        &caller,
        Verb::Create,
        JOIN_TOKENS_RESOURCE,
        None,
        None,
    )?;
    let bytes = read_body(&state, body).await?;
    // An empty body asks for the defaults.
    let request: CreateJoinToken = if bytes.iter().all(u8::is_ascii_whitespace) {
        CreateJoinToken::default()
    } else {
        serde_json::from_value(parse_json(&bytes)?)
            .map_err(|err| ApiError::invalid(format!("invalid join token request: {err}")))?
    };
    let created = state
        .agents
        .create_join_token(request, &caller.username)
        .await?;
    let body = serde_json::json!({
        "token": created.token.encode(),
        "id": created.token.id,
        "expires_at": created.expires_at,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /api/cairn/v1/jointokens`.
///
/// # Errors
/// 401/403 for the caller, store failures.
pub(crate) async fn list_tokens_handler(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers)?;
    authorize(
        &state,
        &caller,
        Verb::List,
        JOIN_TOKENS_RESOURCE,
        None,
        None,
    )?;
    let tokens = state.agents.list_join_tokens().await?;
    Ok(Json(tokens).into_response())
}

/// `DELETE /api/cairn/v1/jointokens/{id}`.
///
/// # Errors
/// 401/403 for the caller, 404 for an unknown id, store failures.
pub(crate) async fn delete_token_handler(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers)?;
    authorize(
        &state,
        &caller,
        Verb::Delete,
        JOIN_TOKENS_RESOURCE,
        None,
        Some(&id),
    )?;
    state
        .agents
        .delete_join_token(&id, &caller.username)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST` [`cairn_api::agent::BOOTSTRAP_PATH`]: no authentication header; the join token is the credential.
///
/// # Errors
/// 401 for a token problem, 400 for a bad name, CSR or body, 409 when concurrent bootstraps
/// keep racing for one token; nothing is written on any of them.
pub(crate) async fn bootstrap_handler(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&state, body).await?;
    // Every field is a string, so a serde error never echoes the token.
    let request: BootstrapRequest = serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::invalid(format!("invalid bootstrap request: {err}")))?;
    let answer = state
        .agents
        .bootstrap(request, request_authority(&uri, &headers))
        .await?;
    Ok(Json(answer).into_response())
}

/// `POST /api/cairn/v1/agents/{namespace}/{name}/revoke`.
///
/// # Errors
/// 401/403 for the caller, 400 for a bad name, 404 for a missing namespace, store failures.
pub(crate) async fn revoke_handler(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers)?;
    authorize(
        &state,
        &caller,
        Verb::Delete,
        AGENTS_RESOURCE,
        Some(&namespace),
        Some(&name),
    )?;
    let revocation = state
        .agents
        .revoke(&namespace, &name, &caller.username)
        .await?;
    Ok(Json(serde_json::json!({
        "namespace": namespace,
        "name": name,
        "revoked_at": revocation.revoked_at,
        "revoked_by": revocation.by,
        "certificates": revocation.certificates,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_is_http2s_then_the_host_header() {
        let mut headers = HeaderMap::new();
        let origin_form: Uri = "/api/cairn/v1/agents/bootstrap".parse().unwrap();
        assert_eq!(request_authority(&origin_form, &headers), None);
        headers.insert(header::HOST, "cairn.example.com:8080".parse().unwrap());
        assert_eq!(
            request_authority(&origin_form, &headers),
            Some("cairn.example.com:8080")
        );
        let absolute: Uri = "https://other.example:8080/api/cairn/v1/agents/bootstrap"
            .parse()
            .unwrap();
        assert_eq!(
            request_authority(&absolute, &headers),
            Some("other.example:8080")
        );
        // A header that is not visible ASCII is no authority.
        headers.insert(
            header::HOST,
            axum::http::HeaderValue::from_bytes(b"h\xc3\xb4st").unwrap(),
        );
        assert_eq!(request_authority(&origin_form, &headers), None);
    }
}
