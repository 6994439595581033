//! The agent-joining routes: join tokens (`/api/cairn/v1/jointokens`), the bootstrap that
//! trades a token and a CSR for a certificate ([`cairn_api::agent::BOOTSTRAP_PATH`]), and
//! revocations. The rules (token digests, uses, the agent CA, revocation records) are
//! [`crate::agents::join`]'s; this module reads requests and answers them.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;

use cairn_api::agent::{BootstrapRequest, BootstrapResponse, JoinToken};
use cairn_api::validate::check_name;
use cairn_api::Kind;

use crate::agents::join::*;
use crate::auth::rbac::Verb;
use crate::clock::unix_now_u64 as unix_now;
use crate::http::{authenticate, authorize, parse_json, read_body, ApiError, AppState};
use crate::pki::PkiError;
use crate::store::keyspace;
use crate::store::{Precondition, StoreError};

impl From<TokenRequestError> for ApiError {
    fn from(err: TokenRequestError) -> ApiError {
        match err {
            TokenRequestError::Invalid(message) => ApiError::invalid(message),
            TokenRequestError::UnknownNamespace(_) => ApiError::not_found(err.to_string()),
        }
    }
}

impl From<ConsumeError> for ApiError {
    fn from(err: ConsumeError) -> ApiError {
        match err {
            ConsumeError::Refused(refusal) => ApiError::unauthenticated(refusal.to_string()),
            ConsumeError::Contended(_) => ApiError::conflict(err.to_string()),
            ConsumeError::Store(detail) => ApiError::internal(detail),
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
    let snapshot = state.auth.snapshot();
    let spec = validate_create(request, |namespace| snapshot.has_namespace(namespace))?;
    let now = unix_now();
    let expires_at = now + spec.ttl_seconds;
    let store = state.resources.store();
    for _ in 0..TOKEN_WRITE_ATTEMPTS {
        let id = random_string(ID_LEN, ID_ALPHABET).map_err(ApiError::internal)?;
        let secret = random_string(SECRET_LEN, SECRET_ALPHABET).map_err(ApiError::internal)?;
        let record = JoinTokenRecord {
            digest: secret_digest(&secret),
            namespace: spec.namespace.clone(),
            subscriptions: spec.subscriptions.clone(),
            expires_at,
            uses_left: spec.uses,
            created_by: caller.username.clone(),
            created_at: now,
            replace: spec.replace.clone(),
            pin_subscriptions: spec.pin_subscriptions,
        };
        let value = serde_json::to_vec(&record).map_err(ApiError::internal)?;
        match store
            .put(&token_key(&id), value, Precondition::Absent)
            .await
        {
            Ok(_) => {}
            // A 16-character id repeating is all but impossible; draw again.
            Err(StoreError::PreconditionFailed { .. }) => continue,
            Err(err) => return Err(err.into()),
        }
        tracing::info!(
            token_id = %id,
            namespace = %spec.namespace,
            uses = spec.uses,
            ttl_seconds = spec.ttl_seconds,
            replace = spec.replace.as_deref().unwrap_or(""),
            pin_subscriptions = spec.pin_subscriptions,
            by = %caller.username,
            "join token created"
        );
        let token = JoinToken {
            id: id.clone(),
            secret,
            ca_fingerprint: state.agents.agent_pki.ca_fingerprint().to_owned(),
        };
        let body = serde_json::json!({
            "token": token.encode(),
            "id": id,
            "expires_at": expires_at,
        });
        return Ok((StatusCode::CREATED, Json(body)).into_response());
    }
    Err(ApiError::internal("could not draw an unused join token id"))
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
    let page = state
        .resources
        .store()
        .list(keyspace::JOIN_TOKENS, None, 0)
        .await?;
    let mut tokens = Vec::with_capacity(page.entries.len());
    for entry in page.entries {
        let id = entry.key[keyspace::JOIN_TOKENS.len()..].to_owned();
        let record = match decode_record(&entry.key, &entry.value) {
            Ok(record) => record,
            Err(err) => {
                tracing::warn!(error = %err, "join token left out of the list");
                continue;
            }
        };
        tokens.push(JoinTokenInfo {
            id,
            namespace: record.namespace,
            subscriptions: record.subscriptions,
            expires_at: record.expires_at,
            uses_left: record.uses_left,
            created_by: record.created_by,
            created_at: record.created_at,
            replace: record.replace,
            pin_subscriptions: record.pin_subscriptions,
        });
    }
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
    let deleted = if id.contains('/') {
        None
    } else {
        state
            .resources
            .store()
            .delete(&token_key(&id), Precondition::None)
            .await?
    };
    match deleted {
        Some(_) => {
            tracing::info!(token_id = %id, by = %caller.username, "join token deleted");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        None => Err(ApiError::not_found(format!("join token {id} not found"))),
    }
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
    let token = JoinToken::parse(&request.token).map_err(|err| {
        ApiError::unauthenticated(TokenRefusal::Malformed(err.to_string()).to_string())
    })?;
    if !constant_time_eq(
        token.ca_fingerprint.as_bytes(),
        state.agents.agent_pki.ca_fingerprint().as_bytes(),
    ) {
        tracing::info!(token_id = %token.id, "bootstrap refused: join token of another cluster");
        return Err(ApiError::unauthenticated(
            TokenRefusal::OtherCluster.to_string(),
        ));
    }
    let name = request.name.as_str();
    if let Some(problem) = check_name(Kind::Entity, name) {
        return Err(ApiError::invalid(format!("name: {problem}")));
    }
    if request.csr_pem.trim().is_empty() {
        return Err(ApiError::invalid(
            "csr_pem: a certificate signing request is required",
        ));
    }
    let store = state.resources.store().as_ref();
    let record = match peek_join_token(store, &token, unix_now()).await {
        Ok(record) => record,
        Err(err) => {
            tracing::info!(token_id = %token.id, entity = name, reason = %err, "bootstrap refused");
            return Err(err.into());
        }
    };
    if !state.auth.snapshot().has_namespace(&record.namespace) {
        return Err(ApiError::invalid(format!(
            "the namespace \"{}\" of join token {} no longer exists",
            record.namespace, token.id
        )));
    }
    let namespace = record.namespace.clone();
    let previous = load_cert_record(store, &namespace, name).await?;
    let now = unix_now();
    let replacing = match &previous {
        Some((current, _)) => {
            let revocation = load_revocation(store, &namespace, name).await?;
            if !current.is_live(revocation.as_ref(), i64::try_from(now).unwrap_or(i64::MAX)) {
                None
            } else if record.replace.as_deref() == Some(name) {
                Some(current.clone())
            } else {
                tracing::info!(token_id = %token.id, namespace = %namespace, entity = name, "bootstrap refused: the entity has a live certificate");
                return Err(ApiError::conflict(live_certificate_refusal(
                    &namespace, name, current,
                )));
            }
        }
        None => None,
    };
    wait_past_revocation(&state.agents.revocations, &namespace, name).await;
    if let Some(replaced) = &replacing {
        // The revocation that retires the replaced certificate covers its issue second; the new
        // one must be younger.
        wait_past(replaced.issued_at).await;
    }
    let issued = state
        .agents
        .agent_pki
        .sign(&request.csr_pem, &namespace, name)
        .map_err(|err| match err {
            PkiError::InvalidCsr(_) => {
                ApiError::invalid(format!("csr_pem: {}", describe_pki_error(&err)))
            }
            other => ApiError::internal(describe_pki_error(&other)),
        })?;
    let pinned = record
        .pin_subscriptions
        .then(|| record.subscriptions.clone());
    let cert_record = issued.record(&token.id, pinned);
    let written = match put_cert_record(store, &namespace, name, &cert_record, &previous).await {
        Ok(written) => written,
        Err(StoreError::PreconditionFailed { .. }) => {
            tracing::info!(token_id = %token.id, namespace = %namespace, entity = name, "bootstrap refused: a concurrent bootstrap of the same entity won");
            return Err(ApiError::conflict(format!(
                "entity \"{namespace}/{name}\" was enrolled by another bootstrap at the same moment; nothing was changed by this one"
            )));
        }
        Err(err) => return Err(err.into()),
    };
    let record = match consume_join_token(store, &token, unix_now()).await {
        Ok(record) => record,
        Err(err) => {
            tracing::info!(token_id = %token.id, entity = name, reason = %err, "bootstrap refused");
            restore_cert_record(store, &namespace, name, previous.as_ref(), written).await;
            return Err(err.into());
        }
    };
    if let Some(replaced) = &replacing {
        let by = format!("join token {} (replace {name})", token.id);
        retire_replaced(state.resources.store(), &namespace, name, replaced, &by).await?;
    }
    let agent_urls = state
        .agents
        .agent_pki
        .agent_urls
        .for_request(request_authority(&uri, &headers));
    if agent_urls.is_empty() && state.agents.agent_pki.agent_urls != AgentUrls::Unknown {
        // The request's own host was unusable; the agent falls back to its guess.
        tracing::debug!(token_id = %token.id, entity = name, "bootstrap answer names no agent URL: the request named no usable host");
    }
    tracing::info!(
        token_id = %token.id,
        namespace = %record.namespace,
        entity = name,
        serial = %cert_record.serial,
        replaced = replacing.is_some(),
        uses_left = record.uses_left,
        "agent bootstrapped"
    );
    Ok(Json(BootstrapResponse {
        cert_pem: issued.cert_pem,
        agent_ca_pem: state.agents.agent_pki.agent_ca.cert_pem.clone(),
        ca_pem: state.agents.agent_pki.ca_pem.clone(),
        subscriptions: record.subscriptions,
        namespace: record.namespace,
        agent_urls,
    })
    .into_response())
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
    if let Some(problem) = check_name(Kind::Namespace, &namespace) {
        return Err(ApiError::invalid(format!("namespace: {problem}")));
    }
    if let Some(problem) = check_name(Kind::Entity, &name) {
        return Err(ApiError::invalid(format!("name: {problem}")));
    }
    if !state.auth.snapshot().has_namespace(&namespace) {
        return Err(ApiError::not_found(format!(
            "namespace \"{namespace}\" not found"
        )));
    }
    let store = state.resources.store().as_ref();
    let revoked_at = i64::try_from(unix_now()).unwrap_or(i64::MAX);
    // Name the entity's current certificate; read the record again once the revocation is
    // stored, so that a renewal that signed meanwhile is named too (a renewal reads the
    // revocation after writing the record, so one of the two sees the other).
    let mut named = Vec::new();
    if let Some((record, _)) = load_cert_record(store, &namespace, &name).await? {
        named.push(record.certificate());
    }
    let (mut revocation, mut revision) = merge_revocation(
        store,
        &namespace,
        &name,
        revoked_at,
        &caller.username,
        &named,
    )
    .await?;
    if let Some((record, _)) = load_cert_record(store, &namespace, &name).await? {
        if !revocation.certificates.contains(&record.certificate()) {
            (revocation, revision) = merge_revocation(
                store,
                &namespace,
                &name,
                revoked_at,
                &caller.username,
                &[record.certificate()],
            )
            .await?;
        }
    }
    // Answer once this backend's view (and so the drop of a live session) has it.
    state.agents.revocations.wait_for(revision).await;
    tracing::info!(namespace = %namespace, entity = %name, by = %caller.username, certificates = revocation.certificates.len(), "agent revoked");
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
