//! Runtime assets, as Sensu's agent (and backend) uses them: choose the build of a `core/v2`
//! [`Asset`] whose filters match the entity ([`BuildSelector`], JavaScript on [`crate::js`]),
//! substitute tokens in its headers ([`resolve`]), download it over HTTPS with its sha512
//! checked as it arrives ([`Fetcher`]), unpack it with every path checked ([`archive`]) into a
//! content-addressed cache shared by every caller ([`AssetCache`]), and build the environment
//! a command runs with ([`asset_env`]); [`RuntimeAssets`] puts these together for a caller.
//!
//! Nothing here knows the agent: the caller passes the entity and the names.

pub mod archive;
mod build;
mod cache;
mod download;
mod runtime;

use std::fmt;
use std::time::Duration;

pub use archive::{ArchiveError, UnpackLimits};
pub use build::{resolve, BuildSelector};
pub use cache::{
    AssetCache, AssetLease, CacheConfig, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX,
    DEFAULT_MAX_ASSETS, DEFAULT_MAX_CACHE_BYTES, DEFAULT_WAIT_TIMEOUT,
};
pub use download::{
    FetchConfig, Fetcher, FetcherError, DEFAULT_DOWNLOAD_TIMEOUT, DEFAULT_MAX_DOWNLOAD_BYTES,
};
pub use runtime::{read_trusted_ca, Prepared, RuntimeAssets};

#[cfg(doc)]
use crate::model::Asset;

/// The build of an asset chosen for an entity, its header tokens substituted.
#[derive(Clone, PartialEq, Eq)]
pub struct ResolvedBuild {
    /// Where the archive is.
    pub url: String,
    /// Its sha512, 128 lowercase hex digits (checked by [`resolve`]).
    pub sha512: String,
    /// Headers sent with the download; values never appear in `Debug` or in an error.
    pub headers: Vec<(String, String)>,
}

impl fmt::Debug for ResolvedBuild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("ResolvedBuild")
            .field("url", &self.url)
            .field("sha512", &self.sha512)
            .field("headers", &names)
            .finish()
    }
}

/// Why an asset is not ready. Every message names the asset and never holds a header value.
///
/// Retrying the same asset helps for [`AssetError::DownloadFailed`], [`AssetError::HttpStatus`]
/// (5xx), [`AssetError::Io`], [`AssetError::WaitTimedOut`] and [`AssetError::CacheFull`]; the
/// others come from the asset's definition or its archive, and a retry gives the same answer
/// until the asset or its server changes. [`AssetCache`] remembers every failure of a build
/// and answers with [`AssetError::BackingOff`] until its next try.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// The request names an asset it does not carry.
    #[error("asset {asset} was not sent with the request")]
    NotProvided {
        /// The asset.
        asset: String,
    },
    /// The asset has no build (neither `url` and `sha512` nor `builds`).
    #[error("asset {asset} has no build (no url and no builds)")]
    NoBuild {
        /// The asset.
        asset: String,
    },
    /// No build's filters match the entity.
    #[error("asset {asset}: no build matches the entity{}", filter_notes(.errors))]
    NoMatchingBuild {
        /// The asset.
        asset: String,
        /// Filters that failed to evaluate, as `build N: filter "…": why`.
        errors: Vec<String>,
    },
    /// The JavaScript engine for the filters cannot start.
    #[error("asset {asset}: cannot start the filter engine: {reason}")]
    FilterEngine {
        /// The asset.
        asset: String,
        /// Why.
        reason: String,
    },
    /// The sha512 is not 128 hex digits.
    #[error("asset {asset}: sha512 is not 128 hex digits")]
    InvalidSha512 {
        /// The asset.
        asset: String,
    },
    /// A header's tokens do not substitute (the message names the token, not the value).
    #[error("asset {asset}: header {header}: {reason}")]
    HeaderToken {
        /// The asset.
        asset: String,
        /// The header's name.
        header: String,
        /// The token error.
        reason: String,
    },
    /// A header's name or value is not valid in HTTP.
    #[error("asset {asset}: header {header} is not a valid HTTP header")]
    InvalidHeader {
        /// The asset.
        asset: String,
        /// The header's name.
        header: String,
    },
    /// The URL does not parse or is not `https`.
    #[error("asset {asset}: invalid url: {reason}")]
    InvalidUrl {
        /// The asset.
        asset: String,
        /// Why.
        reason: String,
    },
    /// A plain `http://` URL while `allow_http` is off.
    #[error("asset {asset}: {url} is plain http and assets.allow_http is false")]
    HttpRefused {
        /// The asset.
        asset: String,
        /// The URL, without credentials.
        url: String,
    },
    /// The request failed (connection, TLS, timeout).
    #[error("asset {asset}: download of {url} failed: {reason}")]
    DownloadFailed {
        /// The asset.
        asset: String,
        /// The URL, without credentials.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("asset {asset}: download of {url} failed: HTTP status {status}")]
    HttpStatus {
        /// The asset.
        asset: String,
        /// The URL, without credentials.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The download is larger than allowed.
    #[error("asset {asset}: the download is larger than {limit} bytes")]
    TooLarge {
        /// The asset.
        asset: String,
        /// The limit.
        limit: u64,
    },
    /// The bytes do not have the asset's sha512; nothing was unpacked.
    #[error("asset {asset}: sha512 mismatch: expected {expected}, downloaded {found}")]
    DigestMismatch {
        /// The asset.
        asset: String,
        /// The asset's sha512.
        expected: String,
        /// The download's.
        found: String,
    },
    /// The archive was refused.
    #[error("asset {asset}: {source}")]
    Archive {
        /// The asset.
        asset: String,
        /// Why.
        #[source]
        source: ArchiveError,
    },
    /// A file operation of the cache failed.
    #[error("asset {asset}: cannot {what}: {source}")]
    Io {
        /// The asset.
        asset: String,
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The asset does not fit the cache beside the assets in use.
    #[error("asset {asset}: the cache cannot hold it ({reason})")]
    CacheFull {
        /// The asset.
        asset: String,
        /// The bound.
        reason: String,
    },
    /// Another caller's download of the same build did not finish in time.
    #[error("asset {asset}: timed out after {} s waiting for its download", .waited.as_secs())]
    WaitTimedOut {
        /// The asset.
        asset: String,
        /// How long.
        waited: Duration,
    },
    /// The last try failed and the next is not due yet.
    #[error("{reason}; next try in {} s", .retry_in.as_secs().max(1))]
    BackingOff {
        /// The asset.
        asset: String,
        /// The last failure's message (it names the asset).
        reason: String,
        /// Until the next try.
        retry_in: Duration,
    },
}

fn filter_notes(errors: &[String]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        format!(" ({})", errors.join("; "))
    }
}

/// The variables an asset set adds, as Sensu's agent sets them: each asset's `bin`, `lib` and
/// `include` folders, in the order given, before the inherited `PATH`, `LD_LIBRARY_PATH` and
/// `CPATH` (read through `inherited`), and `<NAME>_PLUGIN_PATH` with each asset's folder (the
/// name upper-cased, every character but letters and digits as `_`).
pub fn asset_env(
    leases: &[AssetLease],
    inherited: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    if leases.is_empty() {
        return Vec::new();
    }
    let mut env = Vec::with_capacity(3 + leases.len());
    for (variable, folder) in [
        ("PATH", "bin"),
        ("LD_LIBRARY_PATH", "lib"),
        ("CPATH", "include"),
    ] {
        let mut parts: Vec<String> = leases
            .iter()
            .map(|lease| lease.path().join(folder).display().to_string())
            .collect();
        if let Some(existing) = inherited(variable).filter(|value| !value.is_empty()) {
            parts.push(existing);
        }
        env.push((variable.to_owned(), parts.join(":")));
    }
    for lease in leases {
        env.push((
            plugin_path_variable(lease.name()),
            lease.path().display().to_string(),
        ));
    }
    env
}

/// `sensu/check-cpu-usage` → `SENSU_CHECK_CPU_USAGE_PLUGIN_PATH`.
fn plugin_path_variable(name: &str) -> String {
    let key: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{key}_PLUGIN_PATH")
}

#[cfg(test)]
mod tests;
