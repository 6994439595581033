//! The typed HTTP client of the Cairn (and Sensu) REST API, used by `cairnctl` and the tests.
//!
//! HTTPS only, trusting the cluster's CA (never the system roots): a backend's certificate is
//! made by its own CA at `init`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::{Kind, Resource};

/// How long one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How a client authenticates.
#[derive(Clone)]
pub enum Credentials {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// `Authorization: Key <api key>`.
    ApiKey(String),
    /// Nothing (for `/health`, `/version`, `/auth`).
    None,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a credential.
        match self {
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Credentials::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
            Credentials::None => f.write_str("None"),
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file is not usable. Not helped by a retry.
    #[error("invalid CA certificate: {0}")]
    InvalidCa(String),
    /// The backend could not be reached or the connection broke. A retry may help.
    #[error("request to {url} failed: {}", cause_chain(source))]
    RequestFailed {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The backend answered with an error status; `message` is its `{"message"}`.
    #[error("{status}: {message}")]
    Status {
        /// HTTP status.
        status: StatusCode,
        /// The server's message.
        message: String,
    },
    /// The backend's answer was not what the API promises.
    #[error("unexpected response from {url}: {reason}")]
    UnexpectedResponse {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Tokens from `/auth` and `/auth/token`.
#[derive(Debug, Clone, Deserialize)]
pub struct Tokens {
    /// The access token (JWT).
    pub access_token: String,
    /// Its expiry, unix seconds.
    pub expires_at: u64,
    /// The single-use refresh token.
    pub refresh_token: String,
}

/// A client bound to one backend URL.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// Put before the path of every API request (not `/auth…`): a federation gateway's proxy
    /// to one of its clusters, or nothing.
    path_prefix: String,
    credentials: Credentials,
}

/// The path of the federation gateway's proxy to its registered cluster `cluster`: an API path
/// appended to it is forwarded to that cluster with the caller's own credentials.
pub fn cluster_proxy_prefix(cluster: &str) -> String {
    format!("/api/cairn/v1/clusters/{cluster}/proxy")
}

// === impl Client ===

impl Client {
    /// A client for `base_url` (e.g. `https://127.0.0.1:8080`) trusting only `ca_pem`.
    ///
    /// # Errors
    /// [`ClientError::InvalidCa`] when the PEM holds no usable certificate.
    pub fn new(base_url: &str, ca_pem: &str, credentials: Credentials) -> Result<Client> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config_trusting(ca_pem)?)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|err| ClientError::InvalidCa(err.to_string()))?;
        Ok(Client {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            path_prefix: String::new(),
            credentials,
        })
    }

    /// The same client with other credentials.
    pub fn with_credentials(&self, credentials: Credentials) -> Client {
        Client {
            credentials,
            ..self.clone()
        }
    }

    /// The same client with every API request sent through the federation gateway's proxy to
    /// its registered cluster `cluster` (see [`cluster_proxy_prefix`]). Logging in and
    /// refreshing tokens ([`Client::login`], [`Client::refresh`]) still go to the gateway,
    /// which calls the cluster with a token it mints for it.
    pub fn via_cluster(&self, cluster: &str) -> Client {
        Client {
            path_prefix: cluster_proxy_prefix(cluster),
            ..self.clone()
        }
    }

    /// Logs in with a username and password (`GET /auth`).
    ///
    /// # Errors
    /// [`ClientError::Status`] 401 on bad credentials.
    pub async fn login(&self, username: &str, password: &str) -> Result<Tokens> {
        let url = format!("{}/auth", self.base);
        let response = self
            .http
            .get(&url)
            .basic_auth(username, Some(password))
            .send()
            .await
            .map_err(|source| ClientError::RequestFailed {
                url: url.clone(),
                source,
            })?;
        parse_json(&url, check(response).await?).await
    }

    /// Trades a (possibly expired) access token and a refresh token for new tokens
    /// (`POST /auth/token`). The refresh token works once.
    ///
    /// # Errors
    /// [`ClientError::Status`] 401 when the refresh token is unknown, used or expired.
    pub async fn refresh(&self, access_token: &str, refresh_token: &str) -> Result<Tokens> {
        let url = format!("{}/auth/token", self.base);
        let response = self
            .http
            .post(&url)
            .bearer_auth(access_token)
            .json(&serde_json::json!({"refresh_token": refresh_token}))
            .send()
            .await
            .map_err(|source| ClientError::RequestFailed {
                url: url.clone(),
                source,
            })?;
        parse_json(&url, check(response).await?).await
    }

    /// Sends a request with a JSON body (or none) and returns the raw response after checking
    /// its status. `path` goes through the cluster proxy when the client has one
    /// ([`Client::via_cluster`]).
    ///
    /// # Errors
    /// [`ClientError::Status`] on a 4xx/5xx answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::Response> {
        let url = format!("{}{}{path}", self.base, self.path_prefix);
        let mut request = self.http.request(method, &url);
        request = match &self.credentials {
            Credentials::Bearer(token) => request.bearer_auth(token),
            Credentials::ApiKey(key) => request.header("Authorization", format!("Key {key}")),
            Credentials::None => request,
        };
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::RequestFailed { url, source })?;
        check(response).await
    }

    /// `GET` a JSON document.
    ///
    /// # Errors
    /// As [`Client::send`], or a body that is not JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        let response = self.send(Method::GET, path, None).await?;
        let url = response.url().to_string();
        parse_json(&url, response).await
    }

    /// Creates or replaces a resource (`PUT` at its path).
    ///
    /// # Errors
    /// As [`Client::send`].
    pub async fn put_resource(&self, resource: &Resource) -> Result<()> {
        let kind = resource.kind();
        let path = kind.item_path(resource.namespace(), resource.name());
        self.send(Method::PUT, &path, Some(&resource.to_wire()))
            .await
            .map(|_| ())
    }

    /// Reads one resource; `None` on 404.
    ///
    /// # Errors
    /// As [`Client::send`], or a body that does not decode.
    pub async fn get_resource(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Resource>> {
        let path = kind.item_path(namespace, name);
        match self.get_json(&path).await {
            Ok(body) => decode(kind, &path, body).map(Some),
            Err(ClientError::Status {
                status: StatusCode::NOT_FOUND,
                ..
            }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Lists every resource of `kind` in `namespace`, following `Sensu-Continue` pages.
    ///
    /// # Errors
    /// As [`Client::send`], or a body that does not decode.
    pub async fn list_resources(&self, kind: Kind, namespace: &str) -> Result<Vec<Resource>> {
        self.list_selected(kind, Some(namespace), None).await
    }

    /// Lists every resource of `kind` in `namespace`, or in every namespace when `None` (one
    /// request path for all of them, as Sensu's `/api/core/v2/checks`), keeping those that
    /// match a Sensu label selector (`key==value`, `key!=value`, `key in (a, b)`, joined by
    /// `&&`) when one is given.
    ///
    /// # Errors
    /// As [`Client::send`], or a body that does not decode.
    pub async fn list_selected(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        selector: Option<&str>,
    ) -> Result<Vec<Resource>> {
        let collection = match namespace {
            Some(namespace) => kind.collection_path(namespace),
            None => format!("{}/{}", kind.group_prefix(), kind.plural()),
        };
        let mut query = String::from("limit=500");
        if let Some(selector) = selector {
            query.push_str("&labelSelector=");
            query.push_str(&percent_encode(selector));
        }
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!("{collection}?{query}");
            if let Some(token) = &token {
                path.push_str(&format!("&continue={token}"));
            }
            let response = self.send(Method::GET, &path, None).await?;
            token = response
                .headers()
                .get("sensu-continue")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            let body = parse_json(&path, response).await?;
            let Value::Array(items) = body else {
                return Err(ClientError::UnexpectedResponse {
                    url: path,
                    reason: "expected a JSON array".into(),
                });
            };
            for item in items {
                let item_kind = match item.get("type").and_then(Value::as_str) {
                    Some("Env") => Kind::EnvProvider,
                    Some("VaultProvider") => Kind::VaultProvider,
                    _ => kind,
                };
                out.push(decode(item_kind, &path, item)?);
            }
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// Records one GitOps sync (`POST /api/cairn/v1/gitops/syncs`) and returns it as stored,
    /// with its `id`, `recorded_at` and `recorded_by`.
    ///
    /// # Errors
    /// As [`Client::send`] (400 naming the field of a record over a bound), or an answer that
    /// does not decode.
    pub async fn record_sync(
        &self,
        record: &crate::gitops::SyncRecord,
    ) -> Result<crate::gitops::SyncRecord> {
        let body = serde_json::to_value(record)
            .expect("a record of strings, numbers and enums always encodes to JSON");
        let response = self
            .send(Method::POST, crate::gitops::SYNCS_PATH, Some(&body))
            .await?;
        let url = response.url().to_string();
        parse_json(&url, response).await
    }

    /// The newest GitOps sync records, newest first (`GET /api/cairn/v1/gitops/syncs`).
    ///
    /// # Errors
    /// As [`Client::send`], or an answer that does not decode.
    pub async fn list_syncs(&self, limit: usize) -> Result<Vec<crate::gitops::SyncRecord>> {
        let path = format!("{}?limit={limit}", crate::gitops::SYNCS_PATH);
        let response = self.send(Method::GET, &path, None).await?;
        let url = response.url().to_string();
        parse_json(&url, response).await
    }

    /// Deletes a resource; `false` when it did not exist.
    ///
    /// # Errors
    /// As [`Client::send`].
    pub async fn delete_resource(&self, kind: Kind, namespace: &str, name: &str) -> Result<bool> {
        match self
            .send(Method::DELETE, &kind.item_path(namespace, name), None)
            .await
        {
            Ok(_) => Ok(true),
            Err(ClientError::Status {
                status: StatusCode::NOT_FOUND,
                ..
            }) => Ok(false),
            Err(err) => Err(err),
        }
    }
}

/// A TLS client configuration (ring provider) that trusts only the certificates in `ca_pem`.
///
/// # Errors
/// [`ClientError::InvalidCa`] when the PEM holds no usable certificate.
pub fn tls_config_trusting(ca_pem: &str) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let mut reader = std::io::BufReader::new(ca_pem.as_bytes());
    for cert in rustls_pemfile::certs(&mut reader) {
        let cert = cert.map_err(|err| ClientError::InvalidCa(err.to_string()))?;
        roots
            .add(cert)
            .map_err(|err| ClientError::InvalidCa(err.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ClientError::InvalidCa("no certificate in the PEM".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| ClientError::InvalidCa(err.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client for plain `http://` endpoints on loopback (a watcher's `/status`): its TLS
/// configuration trusts no certificate, so it can never be talked into an unverified `https://`.
///
/// # Errors
/// When reqwest cannot build the client.
pub fn plain_http_client(timeout: std::time::Duration) -> Result<reqwest::Client> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| ClientError::InvalidCa(err.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .build()
        .map_err(|err| ClientError::InvalidCa(err.to_string()))
}

fn decode(kind: Kind, url: &str, body: Value) -> Result<Resource> {
    Resource::from_wire(kind, body).map_err(|issue| ClientError::UnexpectedResponse {
        url: url.to_owned(),
        reason: issue.to_string(),
    })
}

async fn check(response: reqwest::Response) -> Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    let message = error_message_of(&text).unwrap_or(text);
    Err(ClientError::Status { status, message })
}

/// The `message` of an error body (`{"message", "code"}`; Sensu's middleware capitalises its
/// keys, so either), or `None` when the body is not one.
pub fn error_message_of(body: &str) -> Option<String> {
    serde_json::from_str::<Value>(body).ok().and_then(|body| {
        body.get("message")
            .or_else(|| body.get("Message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    })
}

async fn parse_json<T: serde::de::DeserializeOwned>(
    url: &str,
    response: reqwest::Response,
) -> Result<T> {
    let bytes = response
        .bytes()
        .await
        .map_err(|source| ClientError::RequestFailed {
            url: url.to_owned(),
            source,
        })?;
    serde_json::from_slice(&bytes).map_err(|err| ClientError::UnexpectedResponse {
        url: url.to_owned(),
        reason: err.to_string(),
    })
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for a query value or one
/// path segment (a name holding `:`, `*` or `/`).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

pub use crate::problem::cause_chain;
