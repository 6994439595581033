//! Joining, as use cases over [`Agents`]: create, list and delete join tokens, bootstrap an
//! agent (a join token and a CSR traded for a certificate bound to its namespace and entity),
//! and revoke one. The rules they apply (digests, uses, the agent CA, revocation records) are
//! [`super::join`]'s; `http/join.rs` reads the requests and maps [`EnrolError`] to statuses.

use cairn_api::agent::{BootstrapRequest, BootstrapResponse, JoinToken};
use cairn_api::validate::check_name;
use cairn_api::Kind;

use super::join::*;
use super::Agents;
use crate::clock::unix_now_u64 as unix_now;
use crate::pki::PkiError;
use crate::store::keyspace;
use crate::store::{Precondition, StoreError};

/// Why a joining request failed; nothing was changed by it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EnrolError {
    /// The join token is refused (401): malformed, of another cluster, unknown, expired or
    /// used up.
    #[error("{0}")]
    Refused(String),
    /// A field of the request is wrong (400; the message names it).
    #[error("{0}")]
    Invalid(String),
    /// What the request names does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// Another request got there first (409; the message says whether a retry helps).
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something that should not fail did (500; the detail is logged, not sent).
    #[error("{0}")]
    Internal(String),
}

impl From<TokenRequestError> for EnrolError {
    fn from(err: TokenRequestError) -> EnrolError {
        match err {
            TokenRequestError::Invalid(message) => EnrolError::Invalid(message),
            TokenRequestError::UnknownNamespace(_) => EnrolError::NotFound(err.to_string()),
        }
    }
}

impl From<ConsumeError> for EnrolError {
    fn from(err: ConsumeError) -> EnrolError {
        match err {
            ConsumeError::Refused(refusal) => EnrolError::Refused(refusal.to_string()),
            ConsumeError::Contended(_) => EnrolError::Conflict(err.to_string()),
            ConsumeError::Store(detail) => EnrolError::Internal(detail),
        }
    }
}

/// A join token just created: the one time its secret is seen.
#[derive(Debug)]
pub(crate) struct CreatedToken {
    /// The token as the operator hands it to an installer (`cairn-join.<id>.<secret>.<ca>`).
    pub token: JoinToken,
    /// Expiry, unix seconds.
    pub expires_at: u64,
}

impl Agents {
    /// Creates a join token for `request`, by `created_by`; the store keeps only the secret's
    /// digest.
    ///
    /// # Errors
    /// [`EnrolError::Invalid`] or [`EnrolError::NotFound`] for the request, store failures.
    pub(crate) async fn create_join_token(
        &self,
        request: CreateJoinToken,
        created_by: &str,
    ) -> Result<CreatedToken, EnrolError> {
        let snapshot = self.auth.snapshot();
        let spec = validate_create(request, |namespace| snapshot.has_namespace(namespace))?;
        let now = unix_now();
        let expires_at = now + spec.ttl_seconds;
        let store = self.resources.store();
        for _ in 0..TOKEN_WRITE_ATTEMPTS {
            let id = random_string(ID_LEN, ID_ALPHABET)
                .map_err(|err| EnrolError::Internal(err.to_string()))?;
            let secret = random_string(SECRET_LEN, SECRET_ALPHABET)
                .map_err(|err| EnrolError::Internal(err.to_string()))?;
            let record = JoinTokenRecord {
                digest: secret_digest(&secret),
                namespace: spec.namespace.clone(),
                subscriptions: spec.subscriptions.clone(),
                expires_at,
                uses_left: spec.uses,
                created_by: created_by.to_owned(),
                created_at: now,
                replace: spec.replace.clone(),
                pin_subscriptions: spec.pin_subscriptions,
            };
            let value =
                serde_json::to_vec(&record).map_err(|err| EnrolError::Internal(err.to_string()))?;
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
                by = %created_by,
                "join token created"
            );
            let token = JoinToken {
                id,
                secret,
                ca_fingerprint: self.agent_pki.ca_fingerprint().to_owned(),
            };
            return Ok(CreatedToken { token, expires_at });
        }
        Err(EnrolError::Internal(
            "could not draw an unused join token id".to_owned(),
        ))
    }

    /// Every join token, without secrets (an unreadable record is left out and logged).
    ///
    /// # Errors
    /// Store failures.
    pub(crate) async fn list_join_tokens(&self) -> Result<Vec<JoinTokenInfo>, EnrolError> {
        let page = self
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
        Ok(tokens)
    }

    /// Deletes join token `id`, by `deleted_by`.
    ///
    /// # Errors
    /// [`EnrolError::NotFound`] for an unknown id, store failures.
    pub(crate) async fn delete_join_token(
        &self,
        id: &str,
        deleted_by: &str,
    ) -> Result<(), EnrolError> {
        let deleted = if id.contains('/') {
            None
        } else {
            self.resources
                .store()
                .delete(&token_key(id), Precondition::None)
                .await?
        };
        match deleted {
            Some(_) => {
                tracing::info!(token_id = %id, by = %deleted_by, "join token deleted");
                Ok(())
            }
            None => Err(EnrolError::NotFound(format!("join token {id} not found"))),
        }
    }

    /// Bootstraps an agent: checks the join token, signs the CSR for the token's namespace and
    /// the requested entity, records the certificate, then spends one use of the token (the
    /// record is undone when that fails). `authority` is the host the request reached, for the
    /// agent URLs of the answer.
    ///
    /// # Errors
    /// [`EnrolError::Refused`] for a token problem, [`EnrolError::Invalid`] for a bad name, CSR
    /// or gone namespace, [`EnrolError::Conflict`] for a live certificate or concurrent
    /// bootstraps; nothing is written on any of them.
    pub(crate) async fn bootstrap(
        &self,
        request: BootstrapRequest,
        authority: Option<&str>,
    ) -> Result<BootstrapResponse, EnrolError> {
        let token = JoinToken::parse(&request.token).map_err(|err| {
            EnrolError::Refused(TokenRefusal::Malformed(err.to_string()).to_string())
        })?;
        if !constant_time_eq(
            token.ca_fingerprint.as_bytes(),
            self.agent_pki.ca_fingerprint().as_bytes(),
        ) {
            tracing::info!(token_id = %token.id, "bootstrap refused: join token of another cluster");
            return Err(EnrolError::Refused(TokenRefusal::OtherCluster.to_string()));
        }
        let name = request.name.as_str();
        if let Some(problem) = check_name(Kind::Entity, name) {
            return Err(EnrolError::Invalid(format!("name: {problem}")));
        }
        if request.csr_pem.trim().is_empty() {
            return Err(EnrolError::Invalid(
                "csr_pem: a certificate signing request is required".to_owned(),
            ));
        }
        let store = self.resources.store().as_ref();
        let record = match peek_join_token(store, &token, unix_now()).await {
            Ok(record) => record,
            Err(err) => {
                tracing::info!(token_id = %token.id, entity = name, reason = %err, "bootstrap refused");
                return Err(err.into());
            }
        };
        if !self.auth.snapshot().has_namespace(&record.namespace) {
            return Err(EnrolError::Invalid(format!(
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
                    return Err(EnrolError::Conflict(live_certificate_refusal(
                        &namespace, name, current,
                    )));
                }
            }
            None => None,
        };
        wait_past_revocation(&self.revocations, &namespace, name).await;
        if let Some(replaced) = &replacing {
            // The revocation that retires the replaced certificate covers its issue second;
            // the new one must be younger.
            wait_past(replaced.issued_at).await;
        }
        let issued = self
            .agent_pki
            .sign(&request.csr_pem, &namespace, name)
            .map_err(|err| match err {
                PkiError::InvalidCsr(_) => {
                    EnrolError::Invalid(format!("csr_pem: {}", describe_pki_error(&err)))
                }
                other => EnrolError::Internal(describe_pki_error(&other)),
            })?;
        let pinned = record
            .pin_subscriptions
            .then(|| record.subscriptions.clone());
        let cert_record = issued.record(&token.id, pinned);
        let written = match put_cert_record(store, &namespace, name, &cert_record, &previous).await
        {
            Ok(written) => written,
            Err(StoreError::PreconditionFailed { .. }) => {
                tracing::info!(token_id = %token.id, namespace = %namespace, entity = name, "bootstrap refused: a concurrent bootstrap of the same entity won");
                return Err(EnrolError::Conflict(format!(
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
            retire_replaced(self.resources.store(), &namespace, name, replaced, &by).await?;
        }
        let agent_urls = self.agent_pki.agent_urls.for_request(authority);
        if agent_urls.is_empty() && self.agent_pki.agent_urls != AgentUrls::Unknown {
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
        Ok(BootstrapResponse {
            cert_pem: issued.cert_pem,
            agent_ca_pem: self.agent_pki.agent_ca.cert_pem.clone(),
            ca_pem: self.agent_pki.ca_pem.clone(),
            subscriptions: record.subscriptions,
            namespace: record.namespace,
            agent_urls,
        })
    }

    /// Revokes the agent `namespace/name`, by `by`: every certificate it holds now, and any
    /// older; answers once this backend's view (and so the drop of a live session) has it.
    ///
    /// # Errors
    /// [`EnrolError::Invalid`] for a bad name, [`EnrolError::NotFound`] for a missing
    /// namespace, store failures.
    pub(crate) async fn revoke(
        &self,
        namespace: &str,
        name: &str,
        by: &str,
    ) -> Result<Revocation, EnrolError> {
        if let Some(problem) = check_name(Kind::Namespace, namespace) {
            return Err(EnrolError::Invalid(format!("namespace: {problem}")));
        }
        if let Some(problem) = check_name(Kind::Entity, name) {
            return Err(EnrolError::Invalid(format!("name: {problem}")));
        }
        if !self.auth.snapshot().has_namespace(namespace) {
            return Err(EnrolError::NotFound(format!(
                "namespace \"{namespace}\" not found"
            )));
        }
        let store = self.resources.store().as_ref();
        let revoked_at = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        // Name the entity's current certificate; read the record again once the revocation is
        // stored, so that a renewal that signed meanwhile is named too (a renewal reads the
        // revocation after writing the record, so one of the two sees the other).
        let mut named = Vec::new();
        if let Some((record, _)) = load_cert_record(store, namespace, name).await? {
            named.push(record.certificate());
        }
        let (mut revocation, mut revision) =
            merge_revocation(store, namespace, name, revoked_at, by, &named).await?;
        if let Some((record, _)) = load_cert_record(store, namespace, name).await? {
            if !revocation.certificates.contains(&record.certificate()) {
                (revocation, revision) = merge_revocation(
                    store,
                    namespace,
                    name,
                    revoked_at,
                    by,
                    &[record.certificate()],
                )
                .await?;
            }
        }
        self.revocations.wait_for(revision).await;
        tracing::info!(namespace = %namespace, entity = %name, by = %by, certificates = revocation.certificates.len(), "agent revoked");
        Ok(revocation)
    }
}
