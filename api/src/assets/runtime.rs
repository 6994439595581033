//! [`RuntimeAssets`]: a cache and a build selector together, and
//! [`RuntimeAssets::prepare`], which turns a resource's `runtime_assets` into leased,
//! unpacked builds and the environment its command runs with. The agent (checks, hooks) and
//! the backend (handlers, mutators, filters) both use it; each passes its own entity, assets
//! and inherited environment.
//!
//! Idle cost: nothing is read from disk, no HTTP client is built and no JavaScript engine is
//! started until a first caller names an asset (the engine only for an asset with filters).

use std::path::Path;

use crate::js::EngineConfig;
use crate::model::{Asset, Entity};

use super::{asset_env, resolve, AssetCache, AssetError, AssetLease, BuildSelector, CacheConfig};

/// Jobs that may wait for the filter engine's one worker.
const FILTER_QUEUE: usize = 256;
/// Memory of the filter engine's runtime: filters see one entity, never an event.
const FILTER_MEMORY: usize = 8 * 1024 * 1024;

/// Runtime assets shared by every command of a process.
#[derive(Debug)]
pub struct RuntimeAssets {
    cache: AssetCache,
    selector: BuildSelector,
}

/// The builds a command uses, leased until this is dropped, and the variables they add.
#[derive(Debug, Default)]
pub struct Prepared {
    leases: Vec<AssetLease>,
    /// `PATH`, `LD_LIBRARY_PATH`, `CPATH` and `<NAME>_PLUGIN_PATH`, as Sensu sets them.
    pub env: Vec<(String, String)>,
}

impl Prepared {
    /// The leased builds, in the order the resource names them.
    pub fn leases(&self) -> &[AssetLease] {
        &self.leases
    }

    /// The value `env` gives `variable`, if any.
    pub fn var(&self, variable: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(key, _)| key == variable)
            .map(|(_, value)| value.as_str())
    }
}

// === impl RuntimeAssets ===

impl RuntimeAssets {
    /// Assets cached as `config` says.
    pub fn new(config: CacheConfig) -> RuntimeAssets {
        RuntimeAssets {
            cache: AssetCache::new(config),
            selector: BuildSelector::new(EngineConfig {
                workers: 1,
                queue_capacity: FILTER_QUEUE,
                memory_limit: FILTER_MEMORY,
                ..EngineConfig::default()
            }),
        }
    }

    /// The cache.
    pub fn cache(&self) -> &AssetCache {
        &self.cache
    }

    /// Whether the filter engine was started.
    pub fn filter_engine_started(&self) -> bool {
        self.selector.engine_started()
    }

    /// The builds of the assets `names` (a resource's `runtime_assets`, in order, each once)
    /// among `assets`, chosen for `entity`, downloaded when the cache does not have them, and
    /// the environment they give, in front of the `PATH`, `LD_LIBRARY_PATH` and `CPATH` that
    /// `inherited` reads.
    ///
    /// An asset none of whose builds' filters match the entity is skipped, as Sensu skips it.
    ///
    /// # Errors
    /// The first asset that is not ready, as a message naming it and the reason (never a
    /// header value): not among `assets`, a filter that fails, an unmatched header token, a
    /// refused URL, a failed download, a sha512 mismatch, a refused archive, or a failure
    /// still in its backoff (with when the next try is).
    pub async fn prepare(
        &self,
        names: &[String],
        assets: &[Asset],
        entity: &Entity,
        inherited: impl Fn(&str) -> Option<String> + Send,
    ) -> Result<Prepared, AssetError> {
        let mut leases: Vec<AssetLease> = Vec::with_capacity(names.len());
        for name in names {
            if leases.iter().any(|lease| lease.name() == name) {
                continue;
            }
            let asset = assets
                .iter()
                .find(|asset| {
                    asset
                        .metadata
                        .as_ref()
                        .is_some_and(|meta| &meta.name == name)
                })
                .ok_or_else(|| AssetError::NotProvided {
                    asset: name.clone(),
                })?;
            let build = match resolve(&self.selector, asset, entity).await {
                Ok(build) => build,
                // As Sensu: an asset whose filters match no build of this entity is not
                // installed, and the command runs without it (a resource may name one asset
                // per platform). A filter that fails to evaluate is an error.
                Err(AssetError::NoMatchingBuild { errors, .. }) if errors.is_empty() => {
                    tracing::debug!(asset = %name, "no build matches the entity; asset skipped");
                    continue;
                }
                Err(error) => return Err(error),
            };
            leases.push(self.cache.fetch(name, &build).await?);
        }
        let env = asset_env(&leases, inherited);
        Ok(Prepared { leases, env })
    }
}

/// The PEM file of CAs trusted for downloads besides the system roots (the agent's
/// `assets.trusted_ca_file`, the backend's `--assets-trusted-ca-file`), read and checked.
///
/// # Errors
/// A message naming the file when it cannot be read, is not PEM or holds no certificate.
pub fn read_trusted_ca(path: &Path) -> Result<String, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let mut reader = std::io::BufReader::new(pem.as_bytes());
    let certs = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{} is not PEM: {error}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(pem)
}
