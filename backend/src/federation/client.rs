//! HTTPS to a registered downstream `Cluster`: TLS that trusts only the cluster's CA (its
//! `ca_cert` PEM), a short timeout, and failover over its `api_urls` in order.

use std::time::Duration;

use cairn_api::model::Cluster;
use reqwest::{Method, Response};

/// How long one request to a downstream may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a downstream cluster could not be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
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
}

/// A client for one downstream cluster.
#[derive(Clone)]
pub struct ClusterClient {
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
    pub fn new(name: &str, cluster: &Cluster) -> Result<ClusterClient, ClusterError> {
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

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `method path` (path with its query, starting with `/`) with `bearer` as the
    /// `Authorization` header value (`Bearer …` or `Key …`) when given, and a JSON body; tries
    /// each URL in turn until one answers. Any HTTP status is an answer.
    ///
    /// # Errors
    /// [`ClusterError::Unreachable`] when no URL answered.
    pub async fn send(
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
