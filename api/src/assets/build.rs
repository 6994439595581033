//! Choosing an asset's build for an entity and substituting its header tokens.
//!
//! As Sensu: an asset is either one build (`url`, `sha512`, `filters`, `headers` at the top)
//! or a list (`builds`), and the first build whose filters all return `true` for the entity
//! wins. Filters are JavaScript over `entity` (`entity.system.os == 'linux'`), evaluated on a
//! [`crate::js::Engine`] started only when a first asset has filters.

use std::sync::{Arc, OnceLock};

use serde_json::Value;

use super::{AssetError, ResolvedBuild};
use crate::js::{Engine, EngineConfig};
use crate::model::{Asset, AssetBuild, Entity, Wire};
use crate::tokens;

/// Evaluates build filters; the engine starts on the first asset that has filters.
#[derive(Debug)]
pub struct BuildSelector {
    config: EngineConfig,
    engine: OnceLock<Engine>,
}

// === impl BuildSelector ===

impl BuildSelector {
    /// A selector whose engine, once started, has `config`.
    pub fn new(config: EngineConfig) -> BuildSelector {
        BuildSelector {
            config,
            engine: OnceLock::new(),
        }
    }

    /// Whether the engine was started (for tests of the agent's idle footprint).
    pub fn engine_started(&self) -> bool {
        self.engine.get().is_some()
    }

    fn engine(&self, asset: &str) -> Result<&Engine, AssetError> {
        if let Some(engine) = self.engine.get() {
            return Ok(engine);
        }
        let engine =
            Engine::new(self.config.clone()).map_err(|error| AssetError::FilterEngine {
                asset: asset.to_owned(),
                reason: error.to_string(),
            })?;
        // A concurrent caller may have won; its engine is kept and this one stops.
        let _ = self.engine.set(engine);
        Ok(self
            .engine
            .get()
            .expect("the engine was set just above, by this caller or another"))
    }

    /// The first build of `asset` whose filters match `entity`.
    ///
    /// # Errors
    /// [`AssetError::NoBuild`], [`AssetError::NoMatchingBuild`] (with the filters that failed
    /// to evaluate), [`AssetError::FilterEngine`].
    pub async fn select(&self, asset: &Asset, entity: &Entity) -> Result<AssetBuild, AssetError> {
        let name = asset_name(asset);
        let builds = builds(asset);
        if builds.is_empty() {
            return Err(AssetError::NoBuild {
                asset: name.to_owned(),
            });
        }
        let mut errors = Vec::new();
        let mut view: Option<Arc<[u8]>> = None;
        for (idx, build) in builds.iter().enumerate() {
            if build.filters.is_empty() {
                return Ok(build.clone());
            }
            let engine = self.engine(name)?;
            let view = view.get_or_insert_with(|| entity_view(entity)).clone();
            let bindings = vec![("entity".to_owned(), view)];
            match engine.evaluate_bool(build.filters.clone(), bindings).await {
                Ok(true) => return Ok(build.clone()),
                Ok(false) => {}
                Err(error) => errors.push(format!("build {idx}: {error}")),
            }
        }
        Err(AssetError::NoMatchingBuild {
            asset: name.to_owned(),
            errors,
        })
    }
}

/// The build of `asset` for `entity`, with the sha512 checked and header tokens substituted
/// against the entity (the same tokens as check commands: [`crate::tokens`]).
///
/// # Errors
/// As [`BuildSelector::select`], and [`AssetError::InvalidSha512`],
/// [`AssetError::HeaderToken`] (naming the header and the token, never the value).
pub async fn resolve(
    selector: &BuildSelector,
    asset: &Asset,
    entity: &Entity,
) -> Result<ResolvedBuild, AssetError> {
    let name = asset_name(asset);
    let build = selector.select(asset, entity).await?;
    let sha512 = build.sha512.trim().to_ascii_lowercase();
    if sha512.len() != 128 || !sha512.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(AssetError::InvalidSha512 {
            asset: name.to_owned(),
        });
    }
    let mut headers = Vec::with_capacity(build.headers.len());
    for (header, template) in &build.headers {
        let value =
            tokens::substitute(template, entity).map_err(|error| AssetError::HeaderToken {
                asset: name.to_owned(),
                header: header.clone(),
                reason: error.to_string(),
            })?;
        headers.push((header.clone(), value));
    }
    Ok(ResolvedBuild {
        url: build.url.trim().to_owned(),
        sha512,
        headers,
    })
}

/// The asset's name (`metadata.name`), or `""`.
pub(super) fn asset_name(asset: &Asset) -> &str {
    asset
        .metadata
        .as_ref()
        .map_or("", |meta| meta.name.as_str())
}

/// The builds: the top-level one when it has a URL, then `builds`.
fn builds(asset: &Asset) -> Vec<AssetBuild> {
    let mut builds = Vec::with_capacity(asset.builds.len() + 1);
    if !asset.url.is_empty() || !asset.sha512.is_empty() {
        builds.push(AssetBuild {
            url: asset.url.clone(),
            sha512: asset.sha512.clone(),
            filters: asset.filters.clone(),
            headers: asset.headers.clone(),
        });
    }
    builds.extend(asset.builds.iter().cloned());
    builds
}

/// The entity as filters see it: Sensu's wire form with the metadata fields (`name`,
/// `namespace`, `labels`, …) also lifted onto it, as Go's embedded `ObjectMeta` is.
fn entity_view(entity: &Entity) -> Arc<[u8]> {
    let mut view = serde_json::to_value(Wire(entity)).unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut view {
        if let Some(Value::Object(metadata)) = fields.get("metadata").cloned() {
            for (key, value) in metadata {
                fields.entry(key).or_insert(value);
            }
        }
    }
    Arc::from(serde_json::to_vec(&view).unwrap_or_else(|_| b"{}".to_vec()))
}
