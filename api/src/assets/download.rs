//! Downloading an asset build: HTTPS trusting the system's roots plus an optional PEM file,
//! plain HTTP only when allowed (redirects included), the build's headers, and the sha512
//! computed as the bytes arrive into a temporary file, which is capped in bytes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha512};
use tokio::io::AsyncWriteExt;

use super::{AssetError, ResolvedBuild};

/// Default cap on the bytes of one download: 256 MiB.
pub const DEFAULT_MAX_DOWNLOAD_BYTES: u64 = 256 * 1024 * 1024;
/// Default time one download may take, connection to last byte.
pub const DEFAULT_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// Time to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Redirects followed at most.
const MAX_REDIRECTS: usize = 5;

/// Settings of a [`Fetcher`].
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// PEM certificates trusted besides the system's roots (`assets.trusted_ca_file`).
    pub trusted_ca_pem: Option<String>,
    /// Whether `http://` URLs are allowed (`assets.allow_http`).
    pub allow_http: bool,
    /// Bytes one download may have.
    pub max_bytes: u64,
    /// Time one download may take.
    pub timeout: Duration,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            trusted_ca_pem: None,
            allow_http: false,
            max_bytes: DEFAULT_MAX_DOWNLOAD_BYTES,
            timeout: DEFAULT_DOWNLOAD_TIMEOUT,
        }
    }
}

/// Why a [`Fetcher`] cannot be built; a configuration problem, not helped by a retry.
#[derive(Debug, thiserror::Error)]
pub enum FetcherError {
    /// The trusted CA file holds no usable certificate.
    #[error("the trusted CA PEM is unusable: {0}")]
    InvalidCa(String),
    /// The HTTP client cannot be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Downloads builds; cheap to clone.
#[derive(Debug, Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    allow_http: bool,
    max_bytes: u64,
}

// === impl Fetcher ===

impl Fetcher {
    /// A fetcher with its own TLS roots: the system's plus `trusted_ca_pem`.
    ///
    /// # Errors
    /// [`FetcherError`] when the PEM holds no certificate or the client cannot be built.
    pub fn new(config: &FetchConfig) -> Result<Fetcher, FetcherError> {
        let mut roots = rustls::RootCertStore::empty();
        // Certificates of the system store that do not parse are skipped, as Go's pool does.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(pem) = &config.trusted_ca_pem {
            let mut reader = std::io::BufReader::new(pem.as_bytes());
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut reader) {
                let cert = cert.map_err(|error| FetcherError::InvalidCa(error.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|error| FetcherError::InvalidCa(error.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(FetcherError::InvalidCa("no certificate in the PEM".into()));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| FetcherError::Client(error.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let allow_http = config.allow_http;
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else if attempt.url().scheme() != "https" && !allow_http {
                attempt.error("redirected to a plain http URL and assets.allow_http is false")
            } else {
                attempt.follow()
            }
        });
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(redirects)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(config.timeout)
            .user_agent(concat!("cairn-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| FetcherError::Client(error.to_string()))?;
        Ok(Fetcher {
            http,
            allow_http: config.allow_http,
            max_bytes: config.max_bytes,
        })
    }

    /// Downloads `build` into `dest` (created, or truncated), checking the sha512 as the bytes
    /// arrive. Returns the bytes downloaded.
    ///
    /// # Errors
    /// [`AssetError::HttpRefused`], [`AssetError::InvalidUrl`], [`AssetError::DownloadFailed`],
    /// [`AssetError::HttpStatus`], [`AssetError::TooLarge`], [`AssetError::DigestMismatch`]
    /// (the file is then removed), [`AssetError::Io`]. No message holds a header value.
    pub async fn download(
        &self,
        asset: &str,
        build: &ResolvedBuild,
        dest: &Path,
    ) -> Result<u64, AssetError> {
        let url = self.check_url(asset, &build.url)?;
        let shown = shown_url(&url);
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &build.headers {
            let header_name =
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    AssetError::InvalidHeader {
                        asset: asset.to_owned(),
                        header: name.clone(),
                    }
                })?;
            let mut header_value = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                AssetError::InvalidHeader {
                    asset: asset.to_owned(),
                    header: name.clone(),
                }
            })?;
            header_value.set_sensitive(true);
            headers.insert(header_name, header_value);
        }
        let failed = |error: reqwest::Error| AssetError::DownloadFailed {
            asset: asset.to_owned(),
            url: shown.clone(),
            reason: reqwest_reason(error),
        };
        let mut response = self
            .http
            .get(url.clone())
            .headers(headers)
            .send()
            .await
            .map_err(failed)?;
        let status = response.status();
        if !status.is_success() {
            return Err(AssetError::HttpStatus {
                asset: asset.to_owned(),
                url: shown,
                status: status.as_u16(),
            });
        }
        let too_large = || AssetError::TooLarge {
            asset: asset.to_owned(),
            limit: self.max_bytes,
        };
        if response
            .content_length()
            .is_some_and(|length| length > self.max_bytes)
        {
            return Err(too_large());
        }
        let io_error = |source: std::io::Error| AssetError::Io {
            asset: asset.to_owned(),
            what: "write the download".to_owned(),
            source,
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(io_error)?;
        let mut digest = Sha512::new();
        let mut bytes: u64 = 0;
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            bytes = bytes.saturating_add(chunk.len() as u64);
            if bytes > self.max_bytes {
                drop(file);
                let _ = tokio::fs::remove_file(dest).await;
                return Err(too_large());
            }
            digest.update(&chunk);
            file.write_all(&chunk).await.map_err(io_error)?;
        }
        file.flush().await.map_err(io_error)?;
        file.sync_all().await.map_err(io_error)?;
        drop(file);
        let found = hex::encode(digest.finalize());
        if !found.eq_ignore_ascii_case(&build.sha512) {
            let _ = tokio::fs::remove_file(dest).await;
            return Err(AssetError::DigestMismatch {
                asset: asset.to_owned(),
                expected: build.sha512.clone(),
                found,
            });
        }
        Ok(bytes)
    }

    /// The URL parsed, `https` (or `http` when allowed) only.
    fn check_url(&self, asset: &str, url: &str) -> Result<reqwest::Url, AssetError> {
        let parsed = reqwest::Url::parse(url).map_err(|error| AssetError::InvalidUrl {
            asset: asset.to_owned(),
            reason: error.to_string(),
        })?;
        match parsed.scheme() {
            "https" => Ok(parsed),
            "http" if self.allow_http => Ok(parsed),
            "http" => Err(AssetError::HttpRefused {
                asset: asset.to_owned(),
                url: shown_url(&parsed),
            }),
            other => Err(AssetError::InvalidUrl {
                asset: asset.to_owned(),
                reason: format!("scheme {other:?} is not https"),
            }),
        }
    }
}

/// The URL without credentials, for messages.
pub(super) fn shown_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// The error and its causes, without the URL (shown separately, without credentials).
fn reqwest_reason(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !reason.contains(&text) {
            reason.push_str(": ");
            reason.push_str(&text);
        }
        source = cause.source();
    }
    reason
}
