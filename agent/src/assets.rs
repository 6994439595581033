//! Runtime assets of checks and hooks on the agent: the `assets:` section of `agent.yaml` made
//! into a [`cairn_api::assets::RuntimeAssets`] under `<cache_dir>/assets/`, and
//! [`Assets::prepare`], which turns the `runtime_assets` of a check or hook into leased,
//! unpacked builds and the environment its command runs with.
//!
//! Idle cost: nothing is read from disk, no HTTP client is built and no JavaScript engine is
//! started until a first check names an asset (the engine only for an asset with filters).

use cairn_api::assets::{self, AssetCache, AssetError, CacheConfig, RuntimeAssets};
use cairn_api::model::{Asset, Entity};

use crate::config::{AssetsConfig, FieldProblem};

pub use cairn_api::assets::Prepared;

/// The cache's folder inside `assets.cache_dir`.
pub const ASSETS_DIR_NAME: &str = "assets";

/// The agent's runtime assets; shared by every check.
#[derive(Debug)]
pub struct Assets(RuntimeAssets);

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
            let pem = assets::read_trusted_ca(path).map_err(|message| FieldProblem {
                field: "assets.trusted_ca_file".to_owned(),
                message,
            })?;
            cache_config.fetch.trusted_ca_pem = Some(pem);
        }
        Ok(Assets::new(cache_config))
    }

    /// Assets cached as `config` says.
    pub fn new(config: CacheConfig) -> Assets {
        Assets(RuntimeAssets::new(config))
    }

    /// The cache.
    pub fn cache(&self) -> &AssetCache {
        self.0.cache()
    }

    /// Whether the filter engine was started.
    pub fn filter_engine_started(&self) -> bool {
        self.0.filter_engine_started()
    }

    /// [`RuntimeAssets::prepare`] for a check or hook: `names` among the request's `assets`,
    /// in front of the agent's own `PATH`, `LD_LIBRARY_PATH` and `CPATH`.
    ///
    /// # Errors
    /// As [`RuntimeAssets::prepare`].
    pub async fn prepare(
        &self,
        names: &[String],
        assets: &[Asset],
        entity: &Entity,
    ) -> Result<Prepared, AssetError> {
        self.0
            .prepare(names, assets, entity, |name| std::env::var(name).ok())
            .await
    }
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
