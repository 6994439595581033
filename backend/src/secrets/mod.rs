//! Secrets: resolving `secrets: [{name, secret}]` of checks, handlers and mutators into
//! environment variables, through the `Env` and `VaultProvider` providers, with a TTL cache.
//!
//! A reference names a `Secret` in the request's namespace; the `Secret` names a provider
//! (cluster-wide, stored under `res/providers/<name>` whichever its type) and a
//! provider-specific `id`:
//!
//! - `Env`: `id` is a variable of the backend's environment, served only when the provider's
//!   allow list (`spec.allow`) names it for the Secret's namespace, and never a `CAIRN_*` one
//!   ([`EnvProvider::check`]). Read on every resolution and not cached: the value is already
//!   in this process's memory, a look-up costs nothing, and a second copy would only add a
//!   place where it lives.
//! - `VaultProvider`: `id` is a KV path and field ([`vault::SecretPath`]). Values are cached in
//!   memory ([`cache`]) for the Vault lease when it has one, at most
//!   [`SecretsConfig::max_ttl`]; concurrent resolutions of one value make one read, and a
//!   failure is remembered and retried with backoff.
//!
//! Values are never stored, logged or put into an error: [`SecretError`] names the secret, the
//! provider and what went wrong.

mod bucket;
mod cache;
mod duration;
mod vault;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_api::agent::SecretValue;
use cairn_api::model::{EnvProvider, SecretRef, Spec, VaultClient};
use cairn_api::Kind;
use parking_lot::Mutex;

use self::cache::{Backoff, Cache, CacheKey, Fetched, Outcome};
use self::vault::{KvVersion, SecretPath, Vault, VaultError};
use crate::store::resources::Resources;
use crate::store::Revision;

/// Settings of the secrets resolver.
#[derive(Debug, Clone)]
pub struct SecretsConfig {
    /// The longest a resolved value is cached (a Vault lease shorter than this wins).
    pub max_ttl: Duration,
    /// How long a failed read is remembered (and answered from memory) after its first
    /// consecutive failure; doubled after each further one.
    pub failure_backoff: Duration,
    /// The longest a failed read is remembered.
    pub failure_backoff_max: Duration,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        SecretsConfig {
            max_ttl: Duration::from_secs(60),
            failure_backoff: Duration::from_secs(1),
            failure_backoff_max: Duration::from_secs(30),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct SecretStats {
    /// Reads that reached a provider (a Vault KV read, an environment look-up).
    pub provider_reads: AtomicU64,
    /// Resolutions answered from the cache.
    pub cache_hits: AtomicU64,
    /// Resolutions that failed.
    pub failures: AtomicU64,
    /// Vault certificate logins (`auth/cert/login`).
    pub logins: AtomicU64,
}

/// Why a secret could not be resolved. Names the secret, never its value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("secret \"{secret}\" (for {name}){}: {reason}", provider.as_ref().map(|p| format!(" from provider \"{p}\"")).unwrap_or_default())]
pub(crate) struct SecretError {
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
pub(crate) struct Secrets {
    resources: Resources,
    config: SecretsConfig,
    stats: SecretStats,
    cache: Cache,
    /// One client per Vault provider, rebuilt when the provider's revision changes.
    vaults: Mutex<HashMap<String, Arc<Vault>>>,
}

/// A `Secret` found, with its provider's spec and revision.
enum Source {
    Env {
        id: String,
        provider: EnvProvider,
    },
    Vault {
        client: Box<VaultClient>,
        revision: Revision,
        id: String,
    },
}

// === impl Secrets ===

impl Secrets {
    /// A resolver reading `Secret` and provider resources from `resources`.
    pub(crate) fn new(resources: Resources, config: SecretsConfig) -> Arc<Secrets> {
        let backoff = Backoff {
            initial: config.failure_backoff,
            max: config.failure_backoff_max.max(config.failure_backoff),
        };
        Arc::new(Secrets {
            resources,
            config,
            stats: SecretStats::default(),
            cache: Cache::new(backoff),
            vaults: Mutex::new(HashMap::new()),
        })
    }

    /// Resolves every reference of `refs` in `namespace`, all or nothing; empty values are
    /// left out (as Sensu).
    ///
    /// The references are resolved concurrently; a value read from Vault is cached (see the
    /// module docs), so resolving the same references again within the TTL reads nothing.
    ///
    /// # Errors
    /// The first reference (in the order given) that cannot be resolved: its `Secret` or
    /// provider is missing, the environment variable is not set, Vault is unreachable or
    /// refuses, or the path or field is missing. A Vault failure is remembered for a backoff
    /// (see [`SecretsConfig::failure_backoff`]) and its reason says when the next read is.
    pub(crate) async fn resolve(
        &self,
        namespace: &str,
        refs: &[SecretRef],
    ) -> Result<Vec<SecretValue>, SecretError> {
        let results = futures::future::join_all(
            refs.iter()
                .map(|reference| self.resolve_one(namespace, reference)),
        )
        .await;
        let mut values = Vec::with_capacity(results.len());
        for (reference, result) in refs.iter().zip(results) {
            let value = result?;
            if !value.is_empty() {
                values.push(SecretValue {
                    name: reference.name.clone(),
                    value,
                });
            }
        }
        Ok(values)
    }

    /// Its counters.
    pub(crate) fn stats(&self) -> &SecretStats {
        &self.stats
    }

    async fn resolve_one(
        &self,
        namespace: &str,
        reference: &SecretRef,
    ) -> Result<String, SecretError> {
        let result = self.lookup(namespace, reference).await;
        if result.is_err() {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn lookup(&self, namespace: &str, reference: &SecretRef) -> Result<String, SecretError> {
        let (provider, source) = self.source(namespace, reference).await?;
        let error = |reason: String| SecretError {
            name: reference.name.clone(),
            secret: reference.secret.clone(),
            provider: Some(provider.clone()),
            reason,
        };
        match source {
            Source::Env { id, provider: env } => {
                // Checked before the variable is looked at: a refused read learns nothing,
                // not even whether the variable is set.
                env.check(namespace, &id)
                    .map_err(|refusal| error(refusal.reason(&provider, namespace, &id)))?;
                self.stats.provider_reads.fetch_add(1, Ordering::Relaxed);
                read_env(&id).map_err(error)
            }
            Source::Vault {
                client,
                revision,
                id,
            } => {
                let version =
                    KvVersion::parse(&client.version).map_err(|err| error(err.to_string()))?;
                let path = SecretPath::parse(&id, version).map_err(|err| error(err.to_string()))?;
                let key = CacheKey {
                    provider: provider.clone(),
                    id,
                };
                let outcome = self
                    .cache
                    .get(key, revision, || async {
                        self.read_vault(&provider, revision, &client, &path)
                            .await
                            .map_err(|err| err.to_string())
                    })
                    .await;
                match outcome {
                    Ok(Outcome::Hit(value)) => {
                        self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                        Ok(value)
                    }
                    Ok(Outcome::Fetched(value)) => Ok(value),
                    Err(failure) => {
                        let when = human_duration(failure.retry_in);
                        Err(error(if failure.remembered {
                            format!(
                                "{} (failed earlier; next attempt in {when})",
                                failure.reason
                            )
                        } else {
                            format!("{} (next attempt in {when})", failure.reason)
                        }))
                    }
                }
            }
        }
    }

    /// Finds the `Secret` and its provider: the provider's name and what to read.
    async fn source(
        &self,
        namespace: &str,
        reference: &SecretRef,
    ) -> Result<(String, Source), SecretError> {
        let error = |provider: Option<&str>, reason: String| SecretError {
            name: reference.name.clone(),
            secret: reference.secret.clone(),
            provider: provider.map(str::to_owned),
            reason,
        };
        let stored = self
            .resources
            .get(Kind::Secret, namespace, &reference.secret)
            .await
            .map_err(|err| error(None, format!("cannot read the secret: {err}")))?;
        let secret = match stored.map(|stored| stored.resource.spec) {
            Some(Spec::Secret(secret)) => secret,
            Some(other) => {
                return Err(error(
                    None,
                    format!("the stored secret is a {:?}", other.kind()),
                ))
            }
            None => {
                return Err(error(
                    None,
                    format!(
                        "secret not found: no Secret \"{}\" in namespace \"{namespace}\"",
                        reference.secret
                    ),
                ))
            }
        };
        let provider = secret.provider;
        if provider.is_empty() {
            return Err(error(None, "no secret provider defined".to_owned()));
        }
        // `Env` and `VaultProvider` share the `providers` plural and are cluster-wide: both
        // live under `res/providers/<name>`, and the decoded spec says which one it is.
        let stored = self
            .resources
            .get(Kind::VaultProvider, "", &provider)
            .await
            .map_err(|err| {
                error(
                    Some(&provider),
                    format!("secret provider not available: {err}"),
                )
            })?;
        let Some(stored) = stored else {
            return Err(error(
                Some(&provider),
                format!("secret provider not found: {provider}"),
            ));
        };
        let source = match stored.resource.spec {
            Spec::EnvProvider(env) => Source::Env {
                id: secret.id,
                provider: env,
            },
            Spec::VaultProvider(vault) => Source::Vault {
                client: Box::new(vault.client),
                revision: stored.revision,
                id: secret.id,
            },
            other => {
                return Err(error(
                    Some(&provider),
                    format!(
                        "secret provider not available: a {:?} is not a provider",
                        other.kind()
                    ),
                ))
            }
        };
        Ok((provider, source))
    }

    /// One read from Vault (the cache calls this on a miss).
    async fn read_vault(
        &self,
        provider: &str,
        revision: Revision,
        client: &VaultClient,
        path: &SecretPath,
    ) -> Result<Fetched, VaultError> {
        let vault = self.vault(provider, revision, client)?;
        self.stats.provider_reads.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(provider, path = %path.api_path(), field = path.field(), "reading a secret from vault");
        let read = vault.read(path, &self.stats).await?;
        let ttl = ttl_for(read.lease, self.config.max_ttl);
        tracing::debug!(provider, path = %path.api_path(), ttl = ?ttl, "read a secret from vault");
        Ok(Fetched {
            value: read.value,
            ttl,
        })
    }

    /// The client of a Vault provider at `revision`, built on first use and again when the
    /// provider changes.
    fn vault(
        &self,
        provider: &str,
        revision: Revision,
        client: &VaultClient,
    ) -> Result<Arc<Vault>, VaultError> {
        if let Some(vault) = self.vaults.lock().get(provider) {
            if vault.revision() == revision {
                return Ok(Arc::clone(vault));
            }
        }
        // Built outside the lock: it reads the TLS files.
        let vault = Arc::new(Vault::new(revision, client)?);
        let mut vaults = self.vaults.lock();
        match vaults.get(provider) {
            // Another resolution built it meanwhile, or one for a newer revision.
            Some(current) if current.revision() >= revision => Ok(Arc::clone(current)),
            _ => {
                vaults.insert(provider.to_owned(), Arc::clone(&vault));
                Ok(vault)
            }
        }
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How long a value read with `lease` is cached: the lease when Vault gave one, at most
/// `max_ttl`; `max_ttl` for KV v2 and leaseless KV v1 values.
fn ttl_for(lease: Duration, max_ttl: Duration) -> Duration {
    if lease.is_zero() {
        max_ttl
    } else {
        lease.min(max_ttl)
    }
}

/// The `Env` provider: a variable of the backend's environment.
fn read_env(id: &str) -> Result<String, String> {
    // `std::env::var` may panic on such names.
    if id.is_empty() || id.contains(['=', '\0']) {
        return Err(format!(
            "invalid secret info: \"{id}\" is not an environment variable name"
        ));
    }
    match std::env::var(id) {
        Ok(value) => Ok(value),
        Err(std::env::VarError::NotPresent) => Err(format!(
            "secret not found: environment variable \"{id}\" is not set in the backend"
        )),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(format!("environment variable \"{id}\" is not valid UTF-8"))
        }
    }
}

/// A delay for a message: whole seconds (rounded up) from one second on, else milliseconds.
fn human_duration(duration: Duration) -> String {
    if duration >= Duration::from_secs(1) {
        let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
        format!("{seconds}s")
    } else {
        format!("{}ms", duration.as_millis().max(1))
    }
}
