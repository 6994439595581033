//! Runtime assets in the pipeline: the `runtime_assets` of a `pipe` handler or mutator, looked
//! up in the namespace, their builds chosen for the event's entity and fetched into the shared
//! cache ([`RuntimeAssets::prepare`]), give the command's `PATH`, `LD_LIBRARY_PATH` and `CPATH`
//! (in front of [`HANDLER_PATH`]); those of a filter give its expressions the `*.js` files they
//! hold, as Sensu loads them, at most [`MAX_FILTER_LIBRARY_BYTES`] in all.
//!
//! A missing asset, a failed download or a sha512 mismatch fails that one run, with the asset
//! and the reason; the cache backs off before trying a failed build again.

use std::path::{Path, PathBuf};

use cairn_api::assets::Prepared;
use cairn_api::model::Entity;

use super::contain::HANDLER_PATH;
use super::Dispatcher;

#[cfg(doc)]
use cairn_api::assets::RuntimeAssets;

/// Bytes of JavaScript the assets of one filter may give it, all files together: a filter
/// whose assets hold more fails (as if its expressions failed). 4 MiB is far above any
/// library a filter needs and bounds what each evaluation copies into the engine.
pub(crate) const MAX_FILTER_LIBRARY_BYTES: usize = 4 * 1024 * 1024;

/// Folders walked at most in one asset for its `*.js` files (an asset is a few folders).
const MAX_LIBRARY_DIRS: usize = 1024;

// === impl Dispatcher ===

impl Dispatcher {
    /// The builds of `names` (a handler's, mutator's or filter's `runtime_assets`) in
    /// `namespace`, chosen for `entity`, leased, and the variables they add in front of
    /// [`HANDLER_PATH`].
    ///
    /// # Errors
    /// The first asset that is not ready, with the reason: it does not exist in the namespace,
    /// its download failed, its sha512 does not match, its archive was refused, ...
    pub(super) async fn prepare_assets(
        &self,
        namespace: &str,
        names: &[String],
        entity: &Entity,
    ) -> Result<Prepared, String> {
        if names.is_empty() {
            return Ok(Prepared::default());
        }
        let mut assets = Vec::with_capacity(names.len());
        for name in names {
            match self.resolver.asset(namespace, name).await {
                Some(asset) => assets.push(asset),
                None => {
                    return Err(format!(
                        "runtime asset \"{name}\" does not exist in namespace \"{namespace}\""
                    ))
                }
            }
        }
        self.assets
            .prepare(names, &assets, entity, |variable| {
                (variable == "PATH").then(|| HANDLER_PATH.to_owned())
            })
            .await
            .map_err(|error| error.to_string())
    }

    /// The JavaScript libraries of a filter's `runtime_assets`: every `*.js` file of each
    /// asset, in the order the filter names the assets, each asset's files by path.
    ///
    /// # Errors
    /// As [`Dispatcher::prepare_assets`], a file that cannot be read, or more than
    /// [`MAX_FILTER_LIBRARY_BYTES`] in all.
    pub(super) async fn filter_libraries(
        &self,
        namespace: &str,
        names: &[String],
        entity: &Entity,
    ) -> Result<Vec<String>, String> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let prepared = self.prepare_assets(namespace, names, entity).await?;
        let roots: Vec<PathBuf> = prepared
            .leases()
            .iter()
            .map(|lease| lease.path().to_owned())
            .collect();
        // Read while the builds are leased.
        let libraries = tokio::task::spawn_blocking(move || read_libraries(&roots))
            .await
            .map_err(|error| format!("reading the filter's asset libraries failed: {error}"))?;
        drop(prepared);
        libraries
    }
}

/// The `*.js` files under each of `roots`, read in path order, bounded in total.
fn read_libraries(roots: &[PathBuf]) -> Result<Vec<String>, String> {
    let mut total = 0_usize;
    let mut libraries = Vec::new();
    for root in roots {
        for file in js_files(root)? {
            let source = std::fs::read_to_string(&file)
                .map_err(|error| format!("cannot read {}: {error}", file.display()))?;
            total = total.saturating_add(source.len());
            if total > MAX_FILTER_LIBRARY_BYTES {
                return Err(format!(
                    "the filter's assets hold more than {MAX_FILTER_LIBRARY_BYTES} bytes of JavaScript"
                ));
            }
            libraries.push(source);
        }
    }
    Ok(libraries)
}

/// The regular `*.js` files beneath `root` (links not followed), sorted by path.
fn js_files(root: &Path) -> Result<Vec<PathBuf>, String> {
    let mut pending = vec![root.to_owned()];
    let mut files = Vec::new();
    let mut walked = 0_usize;
    while let Some(dir) = pending.pop() {
        walked += 1;
        if walked > MAX_LIBRARY_DIRS {
            return Err(format!(
                "{} has more than {MAX_LIBRARY_DIRS} folders",
                root.display()
            ));
        }
        let entries = std::fs::read_dir(&dir)
            .map_err(|error| format!("cannot list {}: {error}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|error| format!("cannot list {}: {error}", dir.display()))?;
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() && path.extension().is_some_and(|ext| ext == "js") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}
