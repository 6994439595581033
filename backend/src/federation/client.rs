//! HTTPS to a registered downstream `Cluster`: TLS that trusts only the cluster's CA (its
//! `ca_cert` PEM), a short timeout, and failover over its `api_urls` in order; and the one way
//! the gateway reads a downstream's answers (issue 14, finding 5): [`ClusterClient::read`]
//! takes at most [`RESPONSE_LIMIT`] of one answer, charged to a [`Share`] of the request's
//! budget as it arrives, and [`ClusterClient::list`] follows `Sensu-Continue` for at most
//! [`PAGES_LIMIT`] pages. Nothing else reads a downstream's body.

use std::time::Duration;

use cairn_api::model::Cluster;
use reqwest::{Method, Response, StatusCode};
use serde_json::value::RawValue;

use super::budget::{Exceeded, Share, MIB, ROW_COST};

/// How long one request to a downstream may take, its answer's body included.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest downstream answer the gateway reads: one page of a listing, one proxied answer,
/// one resource. 8 MiB holds a page of 500 events of 16 KiB each, or of 1,000 resources of
/// 8 KiB each (a check definition's wire form is 0.3 to 2 KiB); a listing whose page is larger
/// asks for that page again with half as many items, down to one (a resource is at most the
/// API's 512 KiB request limit).
pub(crate) const RESPONSE_LIMIT: usize = 8 * MIB;

/// The most pages one listing reads, the pages asked again with fewer items included: 200,
/// that is 100,000 rows of the federated view's pages of 500, or 200,000 copies of a
/// replicator's pages of 1,000. A `Sensu-Continue` chain that goes on fails the listing.
pub(crate) const PAGES_LIMIT: usize = 200;

/// Why a downstream cluster could not be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ClusterError {
    /// The `Cluster` resource cannot be used (no URL, no or bad CA).
    #[error("cluster {cluster}: {reason}")]
    Config {
        /// The cluster's name.
        cluster: String,
        /// What is wrong.
        reason: String,
    },
    /// No URL of the cluster answered (TLS failures included: a certificate that does not
    /// chain to the registered CA fails here, naming the cause).
    #[error("cluster {cluster}: unreachable: {reason}")]
    Unreachable {
        /// The cluster's name.
        cluster: String,
        /// Each URL's failure, joined.
        reason: String,
    },
    /// A listing's page was answered with a status other than 2xx (elsewhere any status is an
    /// answer, left to the caller). Expected for a caller the cluster refuses (401/403); a
    /// retry helps only for 408, 429 and 5xx.
    #[error("cluster {cluster}: {what}: {status}: {message}")]
    Status {
        /// The cluster's name.
        cluster: String,
        /// The request, as `METHOD /path` (no query).
        what: String,
        /// The status.
        status: StatusCode,
        /// The `message` of its body, or the start of the body.
        message: String,
    },
    /// An answer went over a bound ([`Exceeded`] says which, and the limit): the cluster
    /// answers more than the gateway holds for one answer, listing or request. Expected from a
    /// broken or hostile cluster, or a request that asks too much; a retry helps only when it
    /// was the gateway's budget, held by other requests.
    #[error("cluster {cluster}: {what}: {exceeded}")]
    OverLimit {
        /// The cluster's name.
        cluster: String,
        /// The request, as `METHOD /path` (no query).
        what: String,
        /// The bound.
        exceeded: Exceeded,
    },
    /// An answer could not be read whole (the connection broke, the timeout passed) or is not
    /// what was asked for (a listing that is no JSON list). A retry may help.
    #[error("cluster {cluster}: {what}: {reason}")]
    BadAnswer {
        /// The cluster's name.
        cluster: String,
        /// The request, as `METHOD /path` (no query).
        what: String,
        /// What is wrong.
        reason: String,
    },
}

/// One listing of a downstream collection, for [`ClusterClient::list`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Listing<'a> {
    /// The collection's path, with a query of its own when it needs one (`labelSelector=…`)
    /// but without `limit` and `continue`.
    pub(crate) path: &'a str,
    /// Items per page asked for first.
    pub(crate) page_size: usize,
}

/// A client for one downstream cluster.
#[derive(Clone)]
pub(crate) struct ClusterClient {
    name: String,
    urls: Vec<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClient")
            .field("name", &self.name)
            .field("urls", &self.urls)
            .finish_non_exhaustive()
    }
}

impl ClusterClient {
    /// A client for the cluster `name` as registered.
    ///
    /// # Errors
    /// [`ClusterError::Config`] when it has no API URL, or its `ca_cert` is missing or holds no
    /// certificate (an `https://` URL is never trusted on any other root).
    pub(crate) fn new(name: &str, cluster: &Cluster) -> Result<ClusterClient, ClusterError> {
        let config = |reason: String| ClusterError::Config {
            cluster: name.to_owned(),
            reason,
        };
        if cluster.api_urls.is_empty() {
            return Err(config("no api_urls".to_owned()));
        }
        if cluster.ca_cert.trim().is_empty() {
            return Err(config(
                "ca_cert holds no certificate: register the cluster with the PEM of its CA"
                    .to_owned(),
            ));
        }
        let tls = cairn_api::client::tls_config_trusting(&cluster.ca_cert)
            .map_err(|err| config(format!("ca_cert: {err}")))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|err| config(err.to_string()))?;
        Ok(ClusterClient {
            name: name.to_owned(),
            urls: cluster
                .api_urls
                .iter()
                .map(|url| url.trim_end_matches('/').to_owned())
                .collect(),
            http,
        })
    }

    /// Sends `method path` (path with its query, starting with `/`) with `bearer` as the
    /// `Authorization` header value (`Bearer …` or `Key …`) when given, and a JSON body; tries
    /// each URL in turn until one answers. Any HTTP status is an answer.
    ///
    /// # Errors
    /// [`ClusterError::Unreachable`] when no URL answered.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, ClusterError> {
        let mut failures = Vec::new();
        for url in &self.urls {
            let mut request = self.http.request(method.clone(), format!("{url}{path}"));
            if let Some(authorization) = authorization {
                let mut value =
                    reqwest::header::HeaderValue::from_str(authorization).map_err(|_| {
                        ClusterError::Config {
                            cluster: self.name.clone(),
                            reason: "the authorization is not a valid header value".to_owned(),
                        }
                    })?;
                value.set_sensitive(true);
                request = request.header(reqwest::header::AUTHORIZATION, value);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(response) => return Ok(response),
                Err(err) => {
                    failures.push(format!("{url}: {}", cairn_api::problem::cause_chain(&err)))
                }
            }
        }
        Err(ClusterError::Unreachable {
            cluster: self.name.clone(),
            reason: failures.join("; "),
        })
    }

    /// Reads the body of `response`, the answer to `what` (`METHOD /path`), into memory: at
    /// most [`RESPONSE_LIMIT`] bytes, each chunk charged to `share` as it arrives. An answer
    /// whose `content-length` is over the limit is refused before any of it is read.
    ///
    /// # Errors
    /// [`ClusterError::OverLimit`] when the answer is over [`RESPONSE_LIMIT`] or `share` cannot
    /// take it (the request's limit, the gateway's budget); [`ClusterError::BadAnswer`] when
    /// it cannot be read whole. Nothing stays charged for a failed read.
    pub(crate) async fn read(
        &self,
        mut response: Response,
        what: &str,
        share: &mut Share,
    ) -> Result<Vec<u8>, ClusterError> {
        let over = |exceeded: Exceeded| ClusterError::OverLimit {
            cluster: self.name.clone(),
            what: what.to_owned(),
            exceeded,
        };
        let declared = response.content_length().unwrap_or(0);
        if declared > RESPONSE_LIMIT as u64 {
            return Err(over(Exceeded::Response(RESPONSE_LIMIT)));
        }
        let mut answer = share.sibling();
        let mut bytes = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(err) => {
                    return Err(ClusterError::BadAnswer {
                        cluster: self.name.clone(),
                        what: what.to_owned(),
                        reason: format!(
                            "reading the answer failed: {}",
                            cairn_api::problem::cause_chain(&err)
                        ),
                    })
                }
            };
            if bytes.len() + chunk.len() > RESPONSE_LIMIT {
                return Err(over(Exceeded::Response(RESPONSE_LIMIT)));
            }
            answer.charge(chunk.len()).await.map_err(over)?;
            bytes.extend_from_slice(&chunk);
        }
        share.absorb(answer);
        Ok(bytes)
    }

    /// Lists a collection with `GET`, page by page following `Sensu-Continue`, each request
    /// with `authorization()` as its `Authorization` header, and hands each page's rows to
    /// `rows`; every page is read with [`ClusterClient::read`] into `share`. A page over
    /// [`RESPONSE_LIMIT`] is asked again with half as many items; at most [`PAGES_LIMIT`]
    /// pages are read.
    ///
    /// # Errors
    /// [`ClusterError::Config`] with what `authorization()` said; [`ClusterError::Status`] for
    /// a page answered with another status than 2xx; [`ClusterError::OverLimit`] over a bound;
    /// [`ClusterError::BadAnswer`] for a page that is no JSON list; and what
    /// [`ClusterClient::send`] returns.
    pub(crate) async fn list(
        &self,
        listing: Listing<'_>,
        share: &mut Share,
        mut authorization: impl FnMut() -> Result<String, String>,
        mut rows: impl FnMut(Vec<Box<RawValue>>),
    ) -> Result<(), ClusterError> {
        let collection = path_of(listing.path);
        let query = listing.path.split_once('?').map(|(_, query)| query);
        let what = format!("GET {collection}");
        let mut page_size = listing.page_size.max(1);
        let mut continue_token: Option<String> = None;
        for _ in 0..PAGES_LIMIT {
            let mut path = format!("{collection}?limit={page_size}");
            if let Some(query) = query {
                path.push('&');
                path.push_str(query);
            }
            if let Some(token) = &continue_token {
                path.push_str("&continue=");
                path.push_str(&encode_query(token));
            }
            let authorization = authorization().map_err(|reason| ClusterError::Config {
                cluster: self.name.clone(),
                reason,
            })?;
            let response = self
                .send(Method::GET, &path, Some(&authorization), None)
                .await?;
            let status = response.status();
            let next = response
                .headers()
                .get("sensu-continue")
                .and_then(|value| value.to_str().ok())
                .filter(|token| !token.is_empty())
                .map(str::to_owned);
            let bytes = match self.read(response, &what, share).await {
                Err(ClusterError::OverLimit {
                    exceeded: Exceeded::Response(_),
                    ..
                }) if status.is_success() && page_size > 1 => {
                    page_size /= 2;
                    tracing::debug!(
                        cluster = %self.name,
                        %what,
                        page_size,
                        "a page is over the answer limit; asking for fewer items"
                    );
                    continue;
                }
                read => read?,
            };
            if !status.is_success() {
                return Err(ClusterError::Status {
                    cluster: self.name.clone(),
                    what,
                    status,
                    message: error_message(&bytes),
                });
            }
            let page: Vec<Box<RawValue>> =
                serde_json::from_slice(&bytes).map_err(|err| ClusterError::BadAnswer {
                    cluster: self.name.clone(),
                    what: what.clone(),
                    reason: format!("the answer is not a JSON list: {err}"),
                })?;
            drop(bytes);
            share
                .charge(page.len().saturating_mul(ROW_COST))
                .await
                .map_err(|exceeded| ClusterError::OverLimit {
                    cluster: self.name.clone(),
                    what: what.clone(),
                    exceeded,
                })?;
            rows(page);
            match next {
                Some(token) => continue_token = Some(token),
                None => return Ok(()),
            }
        }
        Err(ClusterError::OverLimit {
            cluster: self.name.clone(),
            what,
            exceeded: Exceeded::Pages(PAGES_LIMIT),
        })
    }
}

/// `path` (with its query, if any) without its query: what messages name.
pub(crate) fn path_of(path: &str) -> &str {
    path.split_once('?').map_or(path, |(path, _)| path)
}

/// Longest downstream message kept in an error.
const MESSAGE_LIMIT: usize = 300;

/// The `message` of a Sensu error body (`{"message", "code"}`, either capitalisation), or the
/// start of the text; at most [`MESSAGE_LIMIT`] characters.
pub(crate) fn error_message(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let message =
        cairn_api::client::error_message_of(&text).unwrap_or_else(|| text.trim().to_owned());
    if message.chars().count() > MESSAGE_LIMIT {
        let cut: String = message.chars().take(MESSAGE_LIMIT).collect();
        format!("{cut}…")
    } else {
        message
    }
}

/// Percent-encodes `text` for a query value (everything but unreserved characters).
pub(crate) fn encode_query(text: &str) -> String {
    encode(text, |byte| {
        byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
    })
}

/// Percent-encodes every byte of `text` that `keep` does not keep.
pub(crate) fn encode(text: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if keep(byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_without_a_ca_or_url_is_refused() {
        let no_url = Cluster::default();
        assert!(matches!(
            ClusterClient::new("alpha", &no_url),
            Err(ClusterError::Config { .. })
        ));
        let no_ca = Cluster {
            api_urls: vec!["https://127.0.0.1:1".to_owned()],
            ca_cert: String::new(),
        };
        let err = ClusterClient::new("alpha", &no_ca).expect_err("no CA");
        assert!(err.to_string().contains("ca_cert"), "{err}");
    }
}
