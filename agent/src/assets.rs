//! Runtime assets of checks and hooks on the agent: the `assets:` section of `agent.yaml` made
//! into a [`cairn_api::assets::AssetCache`] under `<cache_dir>/assets/`, and [`Assets::prepare`],
//! which turns the `runtime_assets` of a check or hook into leased, unpacked builds and the
//! environment its command runs with.
//!
//! Idle cost: nothing is read from disk, no HTTP client is built and no JavaScript engine is
//! started until a first check names an asset (the engine only for an asset with filters).

use cairn_api::assets::{self, AssetCache, AssetError, AssetLease, BuildSelector, CacheConfig};
use cairn_api::js::EngineConfig;
use cairn_api::model::{Asset, Entity};

use crate::config::{AssetsConfig, FieldProblem};

/// The cache's folder inside `assets.cache_dir`.
pub const ASSETS_DIR_NAME: &str = "assets";
/// Jobs that may wait for the filter engine's one worker.
const FILTER_QUEUE: usize = 256;
/// Memory of the filter engine's runtime: filters see one entity, never an event.
const FILTER_MEMORY: usize = 8 * 1024 * 1024;

/// The agent's runtime assets; shared by every check.
#[derive(Debug)]
pub struct Assets {
    cache: AssetCache,
    selector: BuildSelector,
}

/// The builds a command uses, leased until this is dropped, and the variables they add.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Held, not read: the builds stay in the cache until this is dropped.
    _leases: Vec<AssetLease>,
    /// `PATH`, `LD_LIBRARY_PATH`, `CPATH` and `<NAME>_PLUGIN_PATH`, as Sensu sets them.
    pub env: Vec<(String, String)>,
}

// === impl Assets ===

impl Assets {
    /// The cache the `assets:` section describes. The trusted CA file is read now, so a bad
    /// one stops the agent at start.
    ///
    /// # Errors
    /// A [`FieldProblem`] naming `assets.trusted_ca_file` when it cannot be read or holds no
    /// certificate.
    pub fn from_config(config: &AssetsConfig) -> Result<Assets, FieldProblem> {
        let mut cache_config = CacheConfig::new(config.cache_dir.join(ASSETS_DIR_NAME));
        cache_config.max_bytes = config.max_cache_bytes;
        cache_config.max_assets = config.max_cache_assets;
        cache_config.fetch.allow_http = config.allow_http;
        if let Some(path) = &config.trusted_ca_file {
            cache_config.fetch.trusted_ca_pem = Some(read_ca(path)?);
        }
        Ok(Assets::new(cache_config))
    }

    /// Assets cached as `config` says.
    pub fn new(config: CacheConfig) -> Assets {
        Assets {
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

    /// The builds of the assets `names` (a check's or hook's `runtime_assets`, in order, each
    /// once) among the request's `assets`, chosen for `entity`, downloaded when the cache does
    /// not have them, and the environment they give.
    ///
    /// An asset none of whose builds' filters match the entity is skipped, as Sensu's agent
    /// skips it.
    ///
    /// # Errors
    /// The first asset that is not ready, as a message naming it and the reason (never a
    /// header value): not in the request, a filter that fails, an unmatched header token, a
    /// refused URL, a failed download, a sha512 mismatch, a refused archive, or a failure
    /// still in its backoff (with when the next try is).
    pub async fn prepare(
        &self,
        names: &[String],
        assets: &[Asset],
        entity: &Entity,
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
            let build = match assets::resolve(&self.selector, asset, entity).await {
                Ok(build) => build,
                // As Sensu's agent: an asset whose filters match no build of this entity is not
                // installed, and the command runs without it (a check may name one asset per
                // platform). A filter that fails to evaluate is an error.
                Err(AssetError::NoMatchingBuild { errors, .. }) if errors.is_empty() => {
                    tracing::debug!(asset = %name, "no build matches the entity; asset skipped");
                    continue;
                }
                Err(error) => return Err(error),
            };
            leases.push(self.cache.fetch(name, &build).await?);
        }
        let env = assets::asset_env(&leases, |name| std::env::var(name).ok());
        Ok(Prepared {
            _leases: leases,
            env,
        })
    }
}

fn read_ca(path: &std::path::Path) -> Result<String, FieldProblem> {
    let problem = |message: String| FieldProblem {
        field: "assets.trusted_ca_file".to_owned(),
        message,
    };
    let pem = std::fs::read_to_string(path)
        .map_err(|error| problem(format!("cannot read {}: {error}", path.display())))?;
    let mut reader = std::io::BufReader::new(pem.as_bytes());
    let certs = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| problem(format!("{} is not PEM: {error}", path.display())))?;
    if certs.is_empty() {
        return Err(problem(format!("{} holds no certificate", path.display())));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_trusted_ca_file_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = AssetsConfig {
            cache_dir: dir.path().to_owned(),
            trusted_ca_file: Some(dir.path().join("missing.pem")),
            ..AssetsConfig::default()
        };
        let problem = Assets::from_config(&config).unwrap_err().to_string();
        assert!(
            problem.starts_with("assets.trusted_ca_file: cannot read "),
            "{problem}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        config.trusted_ca_file = Some(empty);
        let problem = Assets::from_config(&config).unwrap_err().to_string();
        assert!(problem.ends_with("holds no certificate"), "{problem}");
        config.trusted_ca_file = None;
        let assets = Assets::from_config(&config).unwrap();
        assert_eq!(assets.cache().dir(), dir.path().join("assets"));
        assert!(!assets.filter_engine_started());
        // Nothing is created before a first use.
        assert!(!dir.path().join("assets").exists());
    }
}
