//! The `VaultProvider`: reads from Vault's (or OpenBao's) KV engines over its HTTP API.
//!
//! One [`Vault`] is built per provider resource and store revision: the HTTP client (TLS roots,
//! client certificate, expected server name, timeout), the credentials (a token, or a
//! certificate login whose token is kept until most of its lease has passed), the retry policy
//! and the rate limit. [`SecretPath`] is a `Secret`'s `id` parsed for one KV version.
//!
//! Nothing here logs or formats a secret value or a token: tokens are wrapped in [`Token`],
//! whose `Debug` is redacted, and error messages are made from Vault's `errors` array, never
//! from a response body that may hold `data`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio::time::Instant;

use super::bucket::TokenBucket;
use super::cache::Backoff;
use super::duration::parse_duration;
use super::SecretStats;
use crate::store::Revision;

/// The header Vault reads its token from.
const TOKEN_HEADER: &str = "X-Vault-Token";

/// The request timeout when the provider's `timeout` is empty or zero (Sensu's default).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The delays between attempts of one request: 100 ms doubling, at most 5 s.
const RETRY_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(5),
};

/// A certificate login's token is used for this share of its lease, then renewed by logging in
/// again, so that a read never carries a token about to expire.
const LOGIN_RENEW_FRACTION: f64 = 0.8;

/// The largest response body read from Vault; a KV secret is a few KiB at most.
const MAX_BODY: usize = 1024 * 1024;

/// Why a Vault read failed. Every message names the Vault address or the path, never a value.
#[derive(Debug, thiserror::Error)]
pub(super) enum VaultError {
    /// The provider's settings cannot be used (a bad URL, duration or TLS file). Expected; fails
    /// the same way until the provider resource or the file is fixed.
    #[error("secret provider not available: {0}")]
    InvalidProvider(String),
    /// The `Secret`'s `id` is not a Vault path and field. Expected; fails until the `Secret` is
    /// fixed.
    #[error("invalid secret info: id \"{id}\" {reason}")]
    InvalidId {
        /// The id.
        id: String,
        /// What is wrong, with the expected form.
        reason: String,
    },
    /// Vault could not be reached, or the connection broke or timed out, on every attempt. A
    /// later retry may help.
    #[error("vault at {address} is unreachable: {reason}")]
    Unreachable {
        /// The provider's address.
        address: String,
        /// The transport error and its causes.
        reason: String,
    },
    /// Vault refused the token (403). Expected while the token or its policy is wrong.
    #[error("permission denied reading {path} from vault at {address}{errors}")]
    PermissionDenied {
        /// The provider's address.
        address: String,
        /// The API path read.
        path: String,
        /// Vault's `errors`, formatted by [`vault_errors`].
        errors: String,
    },
    /// Nothing at the path (404). Expected until the secret is written.
    #[error("secret not found: nothing at {path} in vault at {address}{errors}")]
    NotFound {
        /// The provider's address.
        address: String,
        /// The API path read.
        path: String,
        /// Vault's `errors` and `warnings`, formatted by [`vault_errors`].
        errors: String,
    },
    /// Another error status, after the retries for 5xx and 429 ran out.
    #[error("vault at {address} answered {status} for {path}{errors}")]
    Status {
        /// The provider's address.
        address: String,
        /// The API path.
        path: String,
        /// The status.
        status: StatusCode,
        /// Vault's `errors`, formatted by [`vault_errors`].
        errors: String,
    },
    /// The secret at the path has no such field. Expected until the secret is written.
    #[error("secret not found: field \"{field}\" is not in {path} in vault at {address}")]
    FieldNotFound {
        /// The provider's address.
        address: String,
        /// The API path read.
        path: String,
        /// The field.
        field: String,
    },
    /// The field holds an object or a list, not a value an environment variable can take.
    #[error("field \"{field}\" of {path} in vault at {address} is not a string")]
    NotAString {
        /// The provider's address.
        address: String,
        /// The API path read.
        path: String,
        /// The field.
        field: String,
    },
    /// A 2xx answer that is not what Vault sends.
    #[error("unexpected response from vault at {address} for {path}: {reason}")]
    UnexpectedResponse {
        /// The provider's address.
        address: String,
        /// The API path.
        path: String,
        /// What was wrong (never the body).
        reason: String,
    },
    /// The certificate login (`auth/cert/login`) failed.
    #[error("certificate login to vault at {address} failed: {reason}")]
    LoginFailed {
        /// The provider's address.
        address: String,
        /// Why, as one of the other variants would say it.
        reason: String,
    },
}

/// The KV secrets engine version of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KvVersion {
    /// `GET /v1/<path>`, the fields in `.data`.
    V1,
    /// `GET /v1/<mount>/data/<path>`, the fields in `.data.data`.
    V2,
}

/// A `Secret`'s `id` parsed for one KV version: the API path (below `/v1/`) and the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SecretPath {
    segments: Vec<String>,
    field: String,
}

/// What one read gave.
pub(super) struct Read {
    /// The field's value.
    pub(super) value: String,
    /// Vault's `lease_duration` (zero for KV v2 and for KV v1 without a `ttl`).
    pub(super) lease: Duration,
}

/// A Vault token. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
struct Token(String);

/// A Vault client for one provider at one store revision.
pub(super) struct Vault {
    revision: Revision,
    /// The provider's address as configured, for messages.
    address: String,
    /// The address to send requests to: the configured one, with the host replaced by
    /// `tls.cname` when that is set.
    base: Url,
    http: reqwest::Client,
    version: KvVersion,
    credentials: Credentials,
    max_retries: u32,
    limiter: Option<TokenBucket>,
}

enum Credentials {
    /// `client.token`.
    Token(Token),
    /// A certificate login over mutual TLS; the token it gave, while it lasts.
    Certificate(tokio::sync::Mutex<Option<Login>>),
}

struct Login {
    token: Token,
    /// When to log in again; `None` for a token without a lease.
    renew_at: Option<Instant>,
}

/// Where a token came from, to know whether a 403 may be cured by logging in again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenSource {
    Configured,
    CachedLogin,
    FreshLogin,
}

/// Connects to the address's host whatever name the URL carries, so that TLS can check (and
/// send as SNI) `tls.cname` while the TCP connection goes where `address` says.
struct ConnectTo {
    host: String,
}

// === impl KvVersion ===

impl KvVersion {
    /// `v1` or `v2`; empty is Sensu's default, `v2`.
    pub(super) fn parse(version: &str) -> Result<KvVersion, VaultError> {
        match version {
            "v1" => Ok(KvVersion::V1),
            "v2" | "" => Ok(KvVersion::V2),
            other => Err(VaultError::InvalidProvider(format!(
                "version \"{other}\" is not one of v1, v2"
            ))),
        }
    }
}

impl std::fmt::Display for KvVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvVersion::V1 => "v1",
            KvVersion::V2 => "v2",
        })
    }
}

// === impl SecretPath ===

impl SecretPath {
    /// Parses an id: `<path>#<field>` for either version (under KV v2 the first segment of the
    /// path is the mount: `secret/sensu/slack#webhook_url` reads `secret/data/sensu/slack`), or
    /// `<mount>#<path>#<field>` (Sensu 6.1+, for mounts whose path has several segments).
    ///
    /// # Errors
    /// [`VaultError::InvalidId`] naming the id and the expected forms.
    pub(super) fn parse(id: &str, version: KvVersion) -> Result<SecretPath, VaultError> {
        let invalid = |why: &str| {
            let forms = match version {
                KvVersion::V1 => "<path>#<field>",
                KvVersion::V2 => "<mount>/<path>#<field> or <mount>#<path>#<field>",
            };
            VaultError::InvalidId {
                id: id.to_owned(),
                reason: format!("{why}; a KV {version} id is {forms}"),
            }
        };
        let parts: Vec<&str> = id.split('#').collect();
        let (mount, path, field) = match parts.as_slice() {
            [path, field] => (None, *path, *field),
            [mount, path, field] => (Some(*mount), *path, *field),
            [_] => return Err(invalid("has no '#' before the field")),
            _ => return Err(invalid("has too many '#'")),
        };
        if field.is_empty() {
            return Err(invalid("names no field"));
        }
        let split = |text: &str| -> Result<Vec<String>, VaultError> {
            let text = text.trim_matches('/');
            if text.is_empty() {
                return Err(invalid("names no path"));
            }
            let segments: Vec<String> = text.split('/').map(str::to_owned).collect();
            if segments
                .iter()
                .any(|segment| segment.is_empty() || segment == "." || segment == "..")
            {
                return Err(invalid("has an empty, '.' or '..' path segment"));
            }
            Ok(segments)
        };
        let segments = match (version, mount) {
            (KvVersion::V1, None) => split(path)?,
            (KvVersion::V1, Some(mount)) => [split(mount)?, split(path)?].concat(),
            (KvVersion::V2, None) => {
                let mut segments = split(path)?;
                if segments.len() < 2 {
                    return Err(invalid("names a mount but no path below it"));
                }
                segments.insert(1, "data".to_owned());
                segments
            }
            (KvVersion::V2, Some(mount)) => {
                [split(mount)?, vec!["data".to_owned()], split(path)?].concat()
            }
        };
        Ok(SecretPath {
            segments,
            field: field.to_owned(),
        })
    }

    /// The API path below `/v1/`, e.g. `secret/data/sensu/slack`.
    pub(super) fn api_path(&self) -> String {
        self.segments.join("/")
    }

    /// The field.
    pub(super) fn field(&self) -> &str {
        &self.field
    }
}

// === impl Vault ===

impl Vault {
    /// Builds the client of a provider at `revision`; reads the TLS files it names.
    ///
    /// # Errors
    /// [`VaultError::InvalidProvider`] for a bad address, timeout, version or TLS file, or
    /// when there are no credentials.
    pub(super) fn new(
        revision: Revision,
        client: &cairn_api::model::VaultClient,
    ) -> Result<Vault, VaultError> {
        let invalid = VaultError::InvalidProvider;
        let address = client.address.trim_end_matches('/').to_owned();
        let mut base = Url::parse(&address)
            .map_err(|err| invalid(format!("address \"{address}\" is not a URL: {err}")))?;
        let https = match base.scheme() {
            "https" => true,
            "http" => false,
            other => {
                return Err(invalid(format!(
                    "address \"{address}\" has scheme {other}, not http or https"
                )))
            }
        };
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(invalid(format!("address \"{address}\" has no host")));
        }
        let version = KvVersion::parse(&client.version)?;
        let timeout = match client.timeout.as_str() {
            "" => DEFAULT_TIMEOUT,
            text => match parse_duration(text).map_err(invalid)? {
                Duration::ZERO => DEFAULT_TIMEOUT,
                timeout => timeout,
            },
        };
        let tls = client.tls.clone().unwrap_or_default();
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(https, &tls)?)
            .timeout(timeout)
            .connect_timeout(timeout);
        if https && !tls.cname.is_empty() {
            // An IPv6 host comes in brackets, which a resolver does not take.
            let host = base
                .host_str()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            if tls.cname.parse::<std::net::IpAddr>().is_ok() {
                return Err(invalid(format!(
                    "tls.cname \"{}\" must be a DNS name",
                    tls.cname
                )));
            }
            base.set_host(Some(&tls.cname))
                .map_err(|err| invalid(format!("tls.cname \"{}\": {err}", tls.cname)))?;
            builder = builder.dns_resolver(Arc::new(ConnectTo { host }));
        }
        let http = builder
            .build()
            .map_err(|err| invalid(format!("cannot build the HTTP client: {}", chain(&err))))?;
        let credentials = if !client.token.is_empty() {
            HeaderValue::from_str(&client.token)
                .map_err(|_| invalid("the token has characters a header cannot carry".into()))?;
            Credentials::Token(Token(client.token.clone()))
        } else if !tls.client_cert.is_empty() && !tls.client_key.is_empty() && https {
            Credentials::Certificate(tokio::sync::Mutex::new(None))
        } else {
            return Err(invalid(
                "no credentials: set client.token, or tls.client_cert and tls.client_key with an \
                 https address for certificate auth"
                    .into(),
            ));
        };
        let limiter = client
            .rate_limiter
            .as_ref()
            .and_then(|limiter| TokenBucket::new(limiter.limit, limiter.burst, Instant::now()));
        Ok(Vault {
            revision,
            address,
            base,
            http,
            version,
            credentials,
            max_retries: client.max_retries,
            limiter,
        })
    }

    /// The store revision of the provider this client was built from.
    pub(super) fn revision(&self) -> Revision {
        self.revision
    }

    /// Reads one field.
    ///
    /// # Errors
    /// See [`VaultError`]; a 403 with a login token kept from earlier logs in again once.
    pub(super) async fn read(
        &self,
        path: &SecretPath,
        stats: &SecretStats,
    ) -> Result<Read, VaultError> {
        let api_path = path.api_path();
        let (mut token, mut source) = self.token(stats).await?;
        let mut response = self.send(Method::GET, &path.segments, Some(&token)).await?;
        if response.status == StatusCode::FORBIDDEN && source == TokenSource::CachedLogin {
            tracing::debug!(address = %self.address, "vault refused the login token; logging in again");
            self.forget_login(&token).await;
            (token, source) = self.token(stats).await?;
            debug_assert_eq!(source, TokenSource::FreshLogin);
            response = self.send(Method::GET, &path.segments, Some(&token)).await?;
        }
        let body = match response.status {
            status if status.is_success() => response.json(&self.address, &api_path)?,
            StatusCode::FORBIDDEN => {
                return Err(VaultError::PermissionDenied {
                    address: self.address.clone(),
                    path: api_path,
                    errors: vault_errors(&response.body),
                })
            }
            StatusCode::NOT_FOUND => {
                return Err(VaultError::NotFound {
                    address: self.address.clone(),
                    path: api_path,
                    errors: vault_errors(&response.body),
                })
            }
            status => {
                return Err(VaultError::Status {
                    address: self.address.clone(),
                    path: api_path,
                    status,
                    errors: vault_errors(&response.body),
                })
            }
        };
        let lease = Duration::from_secs(body["lease_duration"].as_u64().unwrap_or(0));
        let data = match self.version {
            KvVersion::V1 => &body["data"],
            KvVersion::V2 => &body["data"]["data"],
        };
        let fields = match data {
            Value::Object(fields) => fields,
            // KV v2 answers `data: null` for a deleted or destroyed version.
            Value::Null => {
                return Err(VaultError::NotFound {
                    address: self.address.clone(),
                    path: api_path,
                    errors: " (no data: deleted or destroyed)".to_owned(),
                })
            }
            _ => {
                return Err(VaultError::UnexpectedResponse {
                    address: self.address.clone(),
                    path: api_path,
                    reason: "the secret's data is not an object".to_owned(),
                })
            }
        };
        let value = match fields.get(path.field()) {
            None => {
                return Err(VaultError::FieldNotFound {
                    address: self.address.clone(),
                    path: api_path,
                    field: path.field().to_owned(),
                })
            }
            Some(Value::String(text)) => text.clone(),
            Some(Value::Null) => String::new(),
            Some(Value::Bool(flag)) => flag.to_string(),
            Some(Value::Number(number)) => number.to_string(),
            Some(Value::Array(_) | Value::Object(_)) => {
                return Err(VaultError::NotAString {
                    address: self.address.clone(),
                    path: api_path,
                    field: path.field().to_owned(),
                })
            }
        };
        Ok(Read { value, lease })
    }

    /// The token to send, logging in first when the certificate login's token is missing or
    /// due for renewal.
    async fn token(&self, stats: &SecretStats) -> Result<(Token, TokenSource), VaultError> {
        let login = match &self.credentials {
            Credentials::Token(token) => return Ok((token.clone(), TokenSource::Configured)),
            Credentials::Certificate(login) => login,
        };
        // Held across the login: concurrent readers wait for one login instead of each doing
        // their own.
        let mut login = login.lock().await;
        if let Some(current) = login.as_ref() {
            if current
                .renew_at
                .is_none_or(|renew_at| Instant::now() < renew_at)
            {
                return Ok((current.token.clone(), TokenSource::CachedLogin));
            }
        }
        let fresh = self.login(stats).await?;
        let token = fresh.token.clone();
        *login = Some(fresh);
        Ok((token, TokenSource::FreshLogin))
    }

    /// Drops the kept login token, unless another reader already replaced it.
    async fn forget_login(&self, token: &Token) {
        if let Credentials::Certificate(login) = &self.credentials {
            let mut login = login.lock().await;
            if login
                .as_ref()
                .is_some_and(|current| current.token == *token)
            {
                *login = None;
            }
        }
    }

    /// `POST /v1/auth/cert/login` over mutual TLS (the client certificate is in the TLS config).
    async fn login(&self, stats: &SecretStats) -> Result<Login, VaultError> {
        let failed = |reason: String| VaultError::LoginFailed {
            address: self.address.clone(),
            reason,
        };
        stats
            .logins
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let segments = ["auth", "cert", "login"].map(str::to_owned);
        let response = self
            .send(Method::POST, &segments, None)
            .await
            .map_err(|err| match err {
                VaultError::Unreachable { reason, .. } => failed(format!("unreachable: {reason}")),
                other => failed(other.to_string()),
            })?;
        if !response.status.is_success() {
            return Err(failed(format!(
                "{}{}",
                response.status,
                vault_errors(&response.body)
            )));
        }
        let body = response
            .json(&self.address, "auth/cert/login")
            .map_err(|err| failed(err.to_string()))?;
        let Some(client_token) = body["auth"]["client_token"]
            .as_str()
            .filter(|t| !t.is_empty())
        else {
            return Err(failed("the answer has no auth.client_token".to_owned()));
        };
        if HeaderValue::from_str(client_token).is_err() {
            return Err(failed(
                "the token has characters a header cannot carry".to_owned(),
            ));
        }
        let lease = body["auth"]["lease_duration"].as_u64().unwrap_or(0);
        let renew_at = (lease > 0)
            .then(|| Instant::now() + Duration::from_secs(lease).mul_f64(LOGIN_RENEW_FRACTION));
        tracing::debug!(address = %self.address, lease_seconds = lease, "logged in to vault with a certificate");
        Ok(Login {
            token: Token(client_token.to_owned()),
            renew_at,
        })
    }

    /// Sends one request, retrying transport errors, 5xx and 429 up to `max_retries` times
    /// with backoff; every attempt waits for the rate limit.
    ///
    /// # Errors
    /// [`VaultError::Unreachable`] when the last attempt did not get an answer; an error status
    /// is not an error here.
    async fn send(
        &self,
        method: Method,
        segments: &[String],
        token: Option<&Token>,
    ) -> Result<Answer, VaultError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in Vault::new: the address can be a base")
            .pop_if_empty()
            .push("v1")
            .extend(segments);
        let mut attempt: u32 = 0;
        loop {
            if let Some(limiter) = &self.limiter {
                limiter.acquire().await;
            }
            let mut request = self.http.request(method.clone(), url.clone());
            if let Some(token) = token {
                let mut value =
                    HeaderValue::from_str(&token.0).expect("checked when the token was taken");
                value.set_sensitive(true);
                request = request.header(TOKEN_HEADER, value);
            }
            if method == Method::POST {
                request = request.header(CONTENT_TYPE, "application/json").body("{}");
            }
            let outcome = match request.send().await {
                Ok(response) => read_answer(response).await,
                Err(err) => Err(err),
            };
            let retryable = match &outcome {
                Ok(answer) => {
                    answer.status.is_server_error()
                        || answer.status == StatusCode::TOO_MANY_REQUESTS
                }
                Err(_) => true,
            };
            if !retryable || attempt >= self.max_retries {
                return outcome.map_err(|err| VaultError::Unreachable {
                    address: self.address.clone(),
                    reason: chain(&err.without_url()),
                });
            }
            attempt += 1;
            let delay = RETRY_BACKOFF.delay(attempt);
            match &outcome {
                Ok(answer) => {
                    tracing::debug!(address = %self.address, status = %answer.status, attempt, ?delay, "vault request failed; retrying")
                }
                Err(err) => {
                    tracing::debug!(address = %self.address, error = %chain(err), attempt, ?delay, "vault request failed; retrying")
                }
            }
            tokio::time::sleep(delay).await;
        }
    }
}

// === impl Token ===

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

// === impl ConnectTo ===

impl reqwest::dns::Resolve for ConnectTo {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = self.host.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A status and a body, read in full.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

impl Answer {
    /// The body as JSON. A parse error says where, never what (the body may hold values).
    fn json(&self, address: &str, path: &str) -> Result<Value, VaultError> {
        serde_json::from_slice(&self.body).map_err(|err| VaultError::UnexpectedResponse {
            address: address.to_owned(),
            path: path.to_owned(),
            reason: format!(
                "the body is not JSON (line {}, column {})",
                err.line(),
                err.column()
            ),
        })
    }
}

/// Reads a response's status and body, refusing a body larger than [`MAX_BODY`].
async fn read_answer(mut response: reqwest::Response) -> Result<Answer, reqwest::Error> {
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_BODY {
            // The answer is not what a KV read sends; keep the start for the error array.
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer { status, body })
}

/// Vault's `errors` (and `warnings`) of an error answer, as ` (...; ...)`, or an empty string.
/// Only these arrays are read: an error answer does not carry secret data, and nothing else of
/// the body is ever shown.
fn vault_errors(body: &[u8]) -> String {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    let messages: Vec<&str> = ["errors", "warnings"]
        .iter()
        .filter_map(|key| body[*key].as_array())
        .flatten()
        .filter_map(Value::as_str)
        .filter(|message| !message.is_empty())
        .collect();
    if messages.is_empty() {
        String::new()
    } else {
        format!(": {}", messages.join("; "))
    }
}

/// The TLS configuration: `tls.ca_cert` as the only root, and the client certificate when
/// one is set. An `http://` address gets a configuration that is never used.
fn tls_config(
    https: bool,
    tls: &cairn_api::model::VaultTls,
) -> Result<rustls::ClientConfig, VaultError> {
    let invalid = VaultError::InvalidProvider;
    let mut roots = rustls::RootCertStore::empty();
    if !tls.ca_cert.is_empty() {
        let pem = read_file(&tls.ca_cert, "tls.ca_cert")?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| invalid(format!("tls.ca_cert {}: {err}", tls.ca_cert)))?;
        if certs.is_empty() {
            return Err(invalid(format!(
                "tls.ca_cert {} holds no certificate",
                tls.ca_cert
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|err| invalid(format!("tls.ca_cert {}: {err}", tls.ca_cert)))?;
        }
    } else if https {
        return Err(invalid(
            "an https address needs tls.ca_cert: Cairn trusts no system roots".to_owned(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| invalid(format!("TLS: {err}")))?
        .with_root_certificates(roots);
    let config = match (tls.client_cert.is_empty(), tls.client_key.is_empty()) {
        (true, true) => builder.with_no_client_auth(),
        (false, false) => {
            let pem = read_file(&tls.client_cert, "tls.client_cert")?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| invalid(format!("tls.client_cert {}: {err}", tls.client_cert)))?;
            if chain.is_empty() {
                return Err(invalid(format!(
                    "tls.client_cert {} holds no certificate",
                    tls.client_cert
                )));
            }
            let pem = read_file(&tls.client_key, "tls.client_key")?;
            // The error names the file only: a PEM error never needs the key's text.
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
                invalid(format!(
                    "tls.client_key {} holds no usable private key",
                    tls.client_key
                ))
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|err| {
                invalid(format!(
                    "tls.client_cert {} and tls.client_key {}: {err}",
                    tls.client_cert, tls.client_key
                ))
            })?
        }
        (false, true) => {
            return Err(invalid(
                "tls.client_cert is set without tls.client_key".into(),
            ))
        }
        (true, false) => {
            return Err(invalid(
                "tls.client_key is set without tls.client_cert".into(),
            ))
        }
    };
    Ok(config)
}

fn read_file(path: &str, field: &str) -> Result<Vec<u8>, VaultError> {
    std::fs::read(path)
        .map_err(|err| VaultError::InvalidProvider(format!("cannot read {field} {path}: {err}")))
}

/// An error and its causes, joined by `: `.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // hyper and reqwest often repeat their cause's text in their own.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: &str, version: KvVersion, expect: Result<(&str, &str), &str>) {
        let got = SecretPath::parse(id, version);
        match expect {
            Ok((path, field)) => {
                let got = got.unwrap_or_else(|err| panic!("{id}: {err}"));
                assert_eq!(
                    (got.api_path().as_str(), got.field()),
                    (path, field),
                    "{id}"
                );
            }
            Err(fragment) => {
                let message = got.expect_err(id).to_string();
                assert!(message.contains(fragment), "{id}: {message}");
                assert!(message.contains(id), "{id}: {message}");
            }
        }
    }

    #[test]
    fn parses_kv_v2_ids() {
        use KvVersion::V2;
        check(
            "secret/sensu/slack#webhook_url",
            V2,
            Ok(("secret/data/sensu/slack", "webhook_url")),
        );
        check(
            "/secret/sensu/#token",
            V2,
            Ok(("secret/data/sensu", "token")),
        );
        check(
            "secrets/sensu#ansible#token",
            V2,
            Ok(("secrets/sensu/data/ansible", "token")),
        );
        check("secret#a/b#c", V2, Ok(("secret/data/a/b", "c")));
        check("secret#x", V2, Err("names a mount but no path below it"));
        check("secret/x", V2, Err("has no '#' before the field"));
        check("a#b#c#d", V2, Err("too many '#'"));
        check("secret/x#", V2, Err("names no field"));
        check("#field", V2, Err("names no path"));
        check("secret/../sys#x", V2, Err("'..'"));
        check("secret//x#y", V2, Err("empty"));
        check(
            "secret/x",
            V2,
            Err("a KV v2 id is <mount>/<path>#<field> or <mount>#<path>#<field>"),
        );
    }

    #[test]
    fn parses_kv_v1_ids() {
        use KvVersion::V1;
        check(
            "secret/database#password",
            V1,
            Ok(("secret/database", "password")),
        );
        check("kv#db#password", V1, Ok(("kv/db", "password")));
        check("secret#password", V1, Ok(("secret", "password")));
        check("secret/database", V1, Err("a KV v1 id is <path>#<field>"));
    }

    #[test]
    fn versions() {
        assert_eq!(KvVersion::parse("v1").ok(), Some(KvVersion::V1));
        assert_eq!(KvVersion::parse("v2").ok(), Some(KvVersion::V2));
        assert_eq!(KvVersion::parse("").ok(), Some(KvVersion::V2));
        assert!(KvVersion::parse("v3").is_err());
    }

    #[test]
    fn error_arrays_are_read_and_data_never_is() {
        assert_eq!(
            vault_errors(br#"{"errors":["permission denied"]}"#),
            ": permission denied"
        );
        assert_eq!(vault_errors(br#"{"errors":[]}"#), "");
        assert_eq!(
            vault_errors(br#"{"errors":["a"],"warnings":["b"],"data":{"k":"hunter2"}}"#),
            ": a; b"
        );
        assert_eq!(vault_errors(b"<html>hunter2</html>"), "");
    }

    #[test]
    fn a_json_error_never_shows_the_body() {
        let answer = Answer {
            status: StatusCode::OK,
            body: br#"{"data":{"k":"hunter2"}"#.to_vec(),
        };
        let message = answer
            .json("http://vault", "secret/data/x")
            .expect_err("truncated")
            .to_string();
        assert!(!message.contains("hunter2"), "{message}");
    }

    fn client(address: &str) -> cairn_api::model::VaultClient {
        cairn_api::model::VaultClient {
            address: address.to_owned(),
            token: "root".to_owned(),
            ..Default::default()
        }
    }

    fn build_error(client: &cairn_api::model::VaultClient) -> String {
        match Vault::new(1, client) {
            Ok(_) => panic!("expected an error for {:?}", client.address),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn builds_clients_and_refuses_bad_settings() {
        assert!(Vault::new(1, &client("http://127.0.0.1:8200")).is_ok());
        assert!(build_error(&client("https://vault:8200")).contains("needs tls.ca_cert"));
        assert!(build_error(&client("ftp://vault")).contains("not http or https"));
        assert!(build_error(&client("vault:8200")).contains("not http or https"));
        let mut bad_timeout = client("http://vault");
        bad_timeout.timeout = "soon".into();
        assert!(build_error(&bad_timeout).contains("invalid duration \"soon\""));
        let mut no_credentials = client("http://vault");
        no_credentials.token.clear();
        assert!(build_error(&no_credentials).contains("no credentials"));
        let mut missing_ca = client("https://vault");
        missing_ca.tls = Some(cairn_api::model::VaultTls {
            ca_cert: "/nonexistent/ca.pem".into(),
            ..Default::default()
        });
        assert!(build_error(&missing_ca).contains("cannot read tls.ca_cert /nonexistent/ca.pem"));
        let mut half_pair = client("http://vault");
        half_pair.tls = Some(cairn_api::model::VaultTls {
            client_cert: "/x/cert.pem".into(),
            ..Default::default()
        });
        assert!(build_error(&half_pair).contains("without tls.client_key"));
        let mut token_in_header = client("http://vault");
        token_in_header.token = "bad\ntoken".into();
        let message = build_error(&token_in_header);
        assert!(!message.contains("bad\ntoken"), "{message}");
    }

    #[test]
    fn token_debug_is_redacted() {
        assert_eq!(
            format!("{:?}", Token("s.hunter2".into())),
            "Token(<redacted>)"
        );
    }
}
