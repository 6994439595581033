//! `secrets/v1` types: secrets and the providers that resolve them.

use serde::{Deserialize, Serialize};

use super::form;

/// `secrets/v1` `Secret`: a named pointer into a provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Secret {
    /// Provider-specific id: an environment variable for `env`, `path#field` for Vault.
    pub id: String,
    /// Name of the provider resource.
    pub provider: String,
}

/// The prefix of the variables the `Env` provider never serves, whatever its allow list says:
/// the backend's own settings.
pub const ENV_NEVER_SERVED_PREFIX: &str = "CAIRN_";

/// `secrets/v1` `Env`: values come from the backend's environment, only the variables its allow
/// list names (a Cairn extension: Sensu's spec is empty and serves any variable to anyone).
///
/// ```yaml
/// spec:
///   allow:
///     - variables: ["SLACK_*"]
///       namespaces: ["prod"]
///     - variables: ["PAGERDUTY_KEY"]   # every namespace
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnvProvider {
    /// Which variables Secrets may read, and from which namespaces. Empty (the default, and
    /// what `init` seeds): none. Left out of the wire form when empty, where Sensu's spec is
    /// `{}`.
    #[serde(skip_serializing_if = "form::wire_omits")]
    pub allow: Vec<EnvAllow>,
}

/// One entry of an `Env` provider's `spec.allow`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnvAllow {
    /// Variable names; `*` matches any run of characters (`SLACK_*`).
    pub variables: Vec<String>,
    /// The namespaces whose Secrets may read them (`*` as in `variables`); empty: every
    /// namespace.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// Why the `Env` provider does not serve a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvRefusal {
    /// A `CAIRN_*` variable: never served.
    NeverServed,
    /// No entry of `spec.allow` names the variable for the namespace.
    NotAllowed,
}

// === impl EnvProvider ===

impl EnvProvider {
    /// Whether a Secret of `namespace` may read the variable `variable`.
    ///
    /// # Errors
    /// [`EnvRefusal::NeverServed`] for a `CAIRN_*` variable, [`EnvRefusal::NotAllowed`] when
    /// no entry of the allow list covers it.
    pub fn check(&self, namespace: &str, variable: &str) -> Result<(), EnvRefusal> {
        if variable.starts_with(ENV_NEVER_SERVED_PREFIX) {
            return Err(EnvRefusal::NeverServed);
        }
        let allowed = self.allow.iter().any(|entry| {
            entry
                .variables
                .iter()
                .any(|pattern| glob_matches(pattern, variable))
                && (entry.namespaces.is_empty()
                    || entry
                        .namespaces
                        .iter()
                        .any(|pattern| glob_matches(pattern, namespace)))
        });
        if allowed {
            Ok(())
        } else {
            Err(EnvRefusal::NotAllowed)
        }
    }
}

impl EnvRefusal {
    /// Why, as an error message naming `variable`, `namespace` and `provider`.
    pub fn reason(self, provider: &str, namespace: &str, variable: &str) -> String {
        match self {
            EnvRefusal::NeverServed => format!(
                "environment variable \"{variable}\" is never served: {ENV_NEVER_SERVED_PREFIX}* \
                 variables are the backend's own settings"
            ),
            EnvRefusal::NotAllowed => format!(
                "environment variable \"{variable}\" is not in the allow list of the Env \
                 provider \"{provider}\" (spec.allow) for namespace \"{namespace}\""
            ),
        }
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (none included)
/// and everything else matches itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let last = parts.pop().unwrap_or_default();
    for part in parts {
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

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
    /// TLS settings (`null` on the wire when unset, as Sensu writes it).
    #[serde(skip_serializing_if = "form::manifest_omits")]
    pub tls: Option<VaultTls>,
    /// Retries per request.
    pub max_retries: u32,
    /// Request timeout as a duration string (`60s`).
    pub timeout: String,
    /// Client-side rate limit (`null` on the wire when unset).
    #[serde(skip_serializing_if = "form::manifest_omits")]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (pattern, text, expect) in [
            ("SLACK_*", "SLACK_WEBHOOK", true),
            ("SLACK_*", "SLACK_", true),
            ("SLACK_*", "MY_SLACK_X", false),
            ("*_KEY", "PD_KEY", true),
            ("*_KEY", "PD_KEYS", false),
            ("A*B*C", "AxxBxxC", true),
            ("A*B*C", "AC", false),
            ("A*A", "A", false),
            ("*", "", true),
            ("PD", "PD", true),
            ("PD", "PDX", false),
        ] {
            assert_eq!(glob_matches(pattern, text), expect, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn the_allow_list_decides_and_cairn_variables_are_never_served() {
        let provider = EnvProvider {
            allow: vec![
                EnvAllow {
                    variables: vec!["SLACK_*".to_owned()],
                    namespaces: vec!["prod".to_owned()],
                },
                EnvAllow {
                    variables: vec!["*".to_owned()],
                    namespaces: vec!["ops-*".to_owned()],
                },
            ],
        };
        assert_eq!(provider.check("prod", "SLACK_WEBHOOK"), Ok(()));
        assert_eq!(
            provider.check("dev", "SLACK_WEBHOOK"),
            Err(EnvRefusal::NotAllowed)
        );
        assert_eq!(provider.check("ops-eu", "HOME"), Ok(()));
        assert_eq!(
            provider.check("ops-eu", "CAIRN_ADMIN_PASSWORD"),
            Err(EnvRefusal::NeverServed)
        );
        assert_eq!(
            EnvProvider::default().check("prod", "SLACK_WEBHOOK"),
            Err(EnvRefusal::NotAllowed)
        );
    }
}
