//! Secrets: resolving `secrets: [{name, secret}]` of checks, hooks, handlers and mutators into
//! environment variables, through the `Env` and `VaultProvider` providers, with a TTL cache.
//!
//! STUB: the interface the rest of the backend is wired against; the implementation follows.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::agent::SecretValue;
use cairn_api::model::SecretRef;

use crate::resources::Resources;

/// Settings of the secrets resolver.
#[derive(Debug, Clone)]
pub struct SecretsConfig {
    /// The longest a resolved value is cached (a Vault lease shorter than this wins).
    pub max_ttl: Duration,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        SecretsConfig {
            max_ttl: Duration::from_secs(60),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct SecretStats {
    /// Reads that reached a provider (a Vault KV read, an environment look-up).
    pub provider_reads: AtomicU64,
    /// Resolutions answered from the cache.
    pub cache_hits: AtomicU64,
    /// Resolutions that failed.
    pub failures: AtomicU64,
}

/// Why a secret could not be resolved. Names the secret, never its value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("secret \"{secret}\" (for {name}){}: {reason}", provider.as_ref().map(|p| format!(" from provider \"{p}\"")).unwrap_or_default())]
pub struct SecretError {
    /// The environment variable the value was for.
    pub name: String,
    /// The `Secret` resource.
    pub secret: String,
    /// The provider, once known.
    pub provider: Option<String>,
    /// What went wrong.
    pub reason: String,
}

/// Resolves secret references.
pub struct Secrets {
    resources: Resources,
    config: SecretsConfig,
    stats: SecretStats,
}

impl Secrets {
    /// A resolver reading `Secret` and provider resources from `resources`.
    pub fn new(resources: Resources, config: SecretsConfig) -> Arc<Secrets> {
        Arc::new(Secrets {
            resources,
            config,
            stats: SecretStats::default(),
        })
    }

    /// Resolves every reference of `refs` in `namespace`, all or nothing; empty values are
    /// left out (as Sensu).
    ///
    /// # Errors
    /// The first reference that cannot be resolved.
    pub async fn resolve(
        &self,
        namespace: &str,
        refs: &[SecretRef],
    ) -> Result<Vec<SecretValue>, SecretError> {
        let _ = (&self.resources, &self.config, namespace);
        match refs.first() {
            None => Ok(Vec::new()),
            Some(first) => Err(SecretError {
                name: first.name.clone(),
                secret: first.secret.clone(),
                provider: None,
                reason: "not implemented".to_owned(),
            }),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> &SecretStats {
        &self.stats
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
