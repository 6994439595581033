//! `secrets/v1` types: secrets and the providers that resolve them.

use serde::{Deserialize, Serialize};

/// `secrets/v1` `Secret`: a named pointer into a provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Secret {
    /// Provider-specific id: an environment variable for `env`, `path#field` for Vault.
    pub id: String,
    /// Name of the provider resource.
    pub provider: String,
}

/// `secrets/v1` `Env`: values come from the backend's environment. Its spec is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnvProvider {}

/// `secrets/v1` `VaultProvider`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultProvider {
    /// How to reach Vault.
    pub client: VaultClient,
}

/// `spec.client` of a `VaultProvider`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultClient {
    /// Vault URL.
    pub address: String,
    /// Token (omit when using certificate auth). Never logged or returned in clear.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// KV engine version: `v1` or `v2`.
    pub version: String,
    /// TLS settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<VaultTls>,
    /// Retries per request.
    pub max_retries: u32,
    /// Request timeout as a duration string (`60s`).
    pub timeout: String,
    /// Client-side rate limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl Default for VaultClient {
    fn default() -> Self {
        VaultClient {
            address: String::new(),
            token: String::new(),
            version: "v2".to_owned(),
            tls: None,
            max_retries: 2,
            timeout: "60s".to_owned(),
            rate_limiter: None,
        }
    }
}

/// TLS settings for Vault: file paths and the expected server name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultTls {
    /// CA certificate file.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ca_cert: String,
    /// Client certificate file (Vault cert auth).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client_cert: String,
    /// Client key file.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client_key: String,
    /// Expected server name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cname: String,
}

/// `{limit, burst}` of a Vault client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimiter {
    /// Requests per second.
    pub limit: f64,
    /// Burst size.
    pub burst: u32,
}

impl Eq for RateLimiter {}
