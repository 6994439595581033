//! The content-addressed asset cache: `<dir>/<sha512>/` holds one unpacked build.
//!
//! # Guarantees
//!
//! - A build is downloaded at most once at a time, however many callers want it: the first
//!   starts the download in a task of its own (so a caller that gives up does not cancel it
//!   for the others) and every caller waits for it, at most [`CacheConfig::wait_timeout`].
//! - Nothing is unpacked unless the download's sha512 matches ([`super::Fetcher`]); the tree
//!   is unpacked into `<dir>/.tmp/` and moved to `<dir>/<sha512>` by one `rename`, so a crash
//!   never leaves a half-unpacked build under its final name. `.tmp` is emptied on start.
//! - The folders found on start are the cache (it survives restarts); a folder's size is
//!   measured then, and the least recently used order starts from the folders' times.
//! - The cache holds at most [`CacheConfig::max_bytes`] of unpacked content and
//!   [`CacheConfig::max_assets`] builds; to make room, the least recently used builds no
//!   [`AssetLease`] holds are removed. A build that does not fit beside those in use is
//!   refused ([`AssetError::CacheFull`]).
//! - A failure is remembered per asset and build, with exponential backoff
//!   ([`crate::backoff`]): until the next try, callers get [`AssetError::BackingOff`] at once,
//!   with the failure's message and the time left.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{watch, OnceCell};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::archive::{self, UnpackLimits};
use super::download::{FetchConfig, Fetcher};
use super::{AssetError, ResolvedBuild};
use crate::backoff::{random_u64, Backoff, Jitter};

/// Default bound of the cache's unpacked content: 1 GiB.
pub const DEFAULT_MAX_CACHE_BYTES: u64 = 1024 * 1024 * 1024;
/// Default bound of the builds the cache holds.
pub const DEFAULT_MAX_ASSETS: usize = 256;
/// Default time a caller waits for a download another caller started.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(360);
/// Default first delay after a failed build.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Default longest delay after failures.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The temporary folder inside the cache's folder.
const TMP_DIR: &str = ".tmp";

/// Settings of an [`AssetCache`].
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The cache's folder (created when missing).
    pub dir: PathBuf,
    /// Bytes of unpacked content held at most.
    pub max_bytes: u64,
    /// Builds held at most.
    pub max_assets: usize,
    /// Time a caller waits for a download in progress.
    pub wait_timeout: Duration,
    /// First delay after a failure.
    pub backoff_base: Duration,
    /// Longest delay after failures.
    pub backoff_max: Duration,
    /// Bounds of one archive.
    pub unpack: UnpackLimits,
    /// The downloads' settings.
    pub fetch: FetchConfig,
}

impl CacheConfig {
    /// The defaults, in `dir`.
    pub fn new(dir: PathBuf) -> CacheConfig {
        CacheConfig {
            dir,
            max_bytes: DEFAULT_MAX_CACHE_BYTES,
            max_assets: DEFAULT_MAX_ASSETS,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
            unpack: UnpackLimits::default(),
            fetch: FetchConfig::default(),
        }
    }
}

/// The cache; cheap to clone (clones share it). Nothing is read from disk and no HTTP client
/// is built until the first [`AssetCache::fetch`].
#[derive(Debug, Clone)]
pub struct AssetCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: CacheConfig,
    /// The folder scanned, once.
    loaded: OnceCell<Result<(), String>>,
    fetcher: OnceLock<Result<Fetcher, String>>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Installed builds by sha512.
    entries: HashMap<String, Entry>,
    /// Downloads in progress by sha512; `true` once done.
    flights: HashMap<String, watch::Receiver<bool>>,
    /// Failed builds by asset name and sha512.
    failures: HashMap<(String, String), Failure>,
    /// The use clock of the LRU order.
    tick: u64,
    /// Downloads started, ever.
    downloads: u64,
}

#[derive(Debug)]
struct Entry {
    bytes: u64,
    last_used: u64,
    leases: usize,
}

#[derive(Debug)]
struct Failure {
    message: String,
    next_try: Instant,
    backoff: Backoff,
}

/// A build in use: it is not evicted while the lease lives.
#[derive(Debug)]
pub struct AssetLease {
    inner: Arc<Inner>,
    name: String,
    sha512: String,
    path: PathBuf,
}

// === impl AssetLease ===

impl AssetLease {
    /// The unpacked build's folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The asset's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for AssetLease {
    fn drop(&mut self) {
        let mut state = self.inner.state.lock();
        state.tick += 1;
        let tick = state.tick;
        if let Some(entry) = state.entries.get_mut(&self.sha512) {
            entry.leases = entry.leases.saturating_sub(1);
            entry.last_used = tick;
        }
    }
}

// === impl AssetCache ===

impl AssetCache {
    /// A cache with `config`; see the type's documentation.
    pub fn new(config: CacheConfig) -> AssetCache {
        AssetCache {
            inner: Arc::new(Inner {
                config,
                loaded: OnceCell::new(),
                fetcher: OnceLock::new(),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The cache's folder.
    pub fn dir(&self) -> &Path {
        &self.inner.config.dir
    }

    /// Downloads started since the cache was made (for tests and metrics).
    pub fn downloads_started(&self) -> u64 {
        self.inner.state.lock().downloads
    }

    /// The sha512s of the builds held, in no order.
    pub fn installed(&self) -> Vec<String> {
        self.inner.state.lock().entries.keys().cloned().collect()
    }

    /// The build of asset `name`, downloaded and unpacked unless the cache has it, leased for
    /// as long as the caller keeps the lease.
    ///
    /// # Errors
    /// [`AssetError`]: the download's, the archive's, [`AssetError::CacheFull`],
    /// [`AssetError::WaitTimedOut`], and [`AssetError::BackingOff`] while an earlier failure's
    /// delay runs.
    pub async fn fetch(&self, name: &str, build: &ResolvedBuild) -> Result<AssetLease, AssetError> {
        let inner = &self.inner;
        let loaded = inner
            .loaded
            .get_or_init(|| {
                let dir = inner.config.dir.clone();
                async move {
                    tokio::task::spawn_blocking(move || scan(&dir))
                        .await
                        .map_err(|error| error.to_string())
                        .and_then(|scanned| scanned.map_err(|error| error.to_string()))
                        .map(|found| inner.adopt(found))
                }
            })
            .await;
        if let Err(reason) = loaded {
            return Err(AssetError::Io {
                asset: name.to_owned(),
                what: format!("open the cache {}", inner.config.dir.display()),
                source: std::io::Error::other(reason.clone()),
            });
        }
        let key = (name.to_owned(), build.sha512.clone());
        let deadline = Instant::now() + inner.config.wait_timeout;
        loop {
            let waiter = {
                let mut state = inner.state.lock();
                state.tick += 1;
                let tick = state.tick;
                if let Some(entry) = state.entries.get_mut(&build.sha512) {
                    entry.leases += 1;
                    entry.last_used = tick;
                    return Ok(AssetLease {
                        inner: Arc::clone(inner),
                        name: name.to_owned(),
                        sha512: build.sha512.clone(),
                        path: inner.config.dir.join(&build.sha512),
                    });
                }
                if let Some(failure) = state.failures.get(&key) {
                    let now = Instant::now();
                    if failure.next_try > now {
                        return Err(AssetError::BackingOff {
                            asset: name.to_owned(),
                            reason: failure.message.clone(),
                            retry_in: failure.next_try - now,
                        });
                    }
                }
                match state.flights.get(&build.sha512) {
                    Some(receiver) => Wait::Other(receiver.clone()),
                    None => {
                        let (sender, receiver) = watch::channel(false);
                        state.flights.insert(build.sha512.clone(), receiver);
                        state.downloads += 1;
                        Wait::Own(tokio::spawn(flight(
                            Arc::clone(inner),
                            name.to_owned(),
                            build.clone(),
                            sender,
                        )))
                    }
                }
            };
            let mut waiter = match waiter {
                // The caller that started the download gets its own error, typed; the others
                // find the failure remembered and get it as `BackingOff`.
                Wait::Own(task) => match tokio::time::timeout_at(deadline, task).await {
                    Ok(Ok(Err(error))) => return Err(error),
                    Ok(Ok(Ok(()))) | Ok(Err(_)) => continue,
                    Err(_) => {
                        return Err(AssetError::WaitTimedOut {
                            asset: name.to_owned(),
                            waited: inner.config.wait_timeout,
                        })
                    }
                },
                Wait::Other(receiver) => receiver,
            };
            // Done, or the flight's sender dropped (it always says done first): look again.
            let waited = tokio::time::timeout_at(deadline, async {
                let _ = waiter.wait_for(|done| *done).await;
            })
            .await;
            if waited.is_err() {
                return Err(AssetError::WaitTimedOut {
                    asset: name.to_owned(),
                    waited: inner.config.wait_timeout,
                });
            }
        }
    }
}

// === impl Inner ===

impl Inner {
    /// Takes the builds found on disk, oldest first, and evicts down to the bounds.
    fn adopt(&self, found: Vec<(String, u64)>) {
        let victims = {
            let mut state = self.state.lock();
            for (sha512, bytes) in found {
                state.tick += 1;
                let tick = state.tick;
                state.entries.insert(
                    sha512,
                    Entry {
                        bytes,
                        last_used: tick,
                        leases: 0,
                    },
                );
            }
            let victims = evictions(&state, &self.config, 0, 0).unwrap_or_default();
            for victim in &victims {
                state.entries.remove(victim);
            }
            victims
        };
        info!(
            dir = %self.config.dir.display(),
            assets = self.state.lock().entries.len(),
            "asset cache opened"
        );
        for victim in victims {
            remove_build(&self.config.dir, &victim);
        }
    }

    fn fetcher(&self) -> Result<&Fetcher, String> {
        self.fetcher
            .get_or_init(|| Fetcher::new(&self.config.fetch).map_err(|error| error.to_string()))
            .as_ref()
            .map_err(String::clone)
    }

    /// Downloads, verifies, unpacks and installs one build.
    async fn install(&self, name: &str, build: &ResolvedBuild) -> Result<(), AssetError> {
        let fetcher = self
            .fetcher()
            .map_err(|reason| AssetError::DownloadFailed {
                asset: name.to_owned(),
                url: build.url.clone(),
                reason,
            })?;
        let tmp_root = self.config.dir.join(TMP_DIR);
        let io_error = |what: &str| {
            let what = what.to_owned();
            move |source| AssetError::Io {
                asset: name.to_owned(),
                what,
                source,
            }
        };
        tokio::fs::create_dir_all(&tmp_root)
            .await
            .map_err(io_error("create the temporary folder"))?;
        let stem = format!("{}-{:016x}", &build.sha512[..16], random_u64());
        let download = tmp_root.join(format!("{stem}.download"));
        let tree = tmp_root.join(&stem);
        let result = self
            .install_from(name, build, fetcher, &download, &tree)
            .await;
        let _ = tokio::fs::remove_file(&download).await;
        if result.is_err() {
            let _ = tokio::fs::remove_dir_all(&tree).await;
        }
        result
    }

    async fn install_from(
        &self,
        name: &str,
        build: &ResolvedBuild,
        fetcher: &Fetcher,
        download: &Path,
        tree: &Path,
    ) -> Result<(), AssetError> {
        let downloaded = fetcher.download(name, build, download).await?;
        debug!(
            asset = name,
            bytes = downloaded,
            "asset downloaded and verified"
        );
        tokio::fs::create_dir(tree)
            .await
            .map_err(|source| AssetError::Io {
                asset: name.to_owned(),
                what: "create the temporary folder".to_owned(),
                source,
            })?;
        let limits = self.config.unpack;
        let (archive_path, tree_path) = (download.to_owned(), tree.to_owned());
        let unpacked =
            tokio::task::spawn_blocking(move || archive::unpack(&archive_path, &tree_path, limits))
                .await
                .map_err(|error| AssetError::Io {
                    asset: name.to_owned(),
                    what: "unpack".to_owned(),
                    source: std::io::Error::other(error.to_string()),
                })?
                .map_err(|source| AssetError::Archive {
                    asset: name.to_owned(),
                    source,
                })?;
        let victims = {
            let mut state = self.state.lock();
            let victims = evictions(&state, &self.config, unpacked.bytes, 1).map_err(|reason| {
                AssetError::CacheFull {
                    asset: name.to_owned(),
                    reason,
                }
            })?;
            for victim in &victims {
                state.entries.remove(victim);
            }
            // Moved aside under the lock, so the final names only ever hold what the state
            // knows; removed below, outside it.
            let mut trash = Vec::with_capacity(victims.len());
            for victim in &victims {
                let aside = self
                    .config
                    .dir
                    .join(TMP_DIR)
                    .join(format!("evicted-{victim}"));
                if std::fs::rename(self.config.dir.join(victim), &aside).is_ok() {
                    trash.push(aside);
                }
            }
            let final_path = self.config.dir.join(&build.sha512);
            // A leftover under the final name (not in the state) is replaced.
            if final_path.exists() {
                let _ = std::fs::remove_dir_all(&final_path);
            }
            std::fs::rename(tree, &final_path).map_err(|source| AssetError::Io {
                asset: name.to_owned(),
                what: "move the unpacked asset into the cache".to_owned(),
                source,
            })?;
            state.tick += 1;
            let tick = state.tick;
            state.entries.insert(
                build.sha512.clone(),
                Entry {
                    bytes: unpacked.bytes,
                    last_used: tick,
                    leases: 0,
                },
            );
            trash
        };
        for aside in victims {
            debug!(path = %aside.display(), "evicting an asset");
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(aside)).await;
        }
        info!(
            asset = name,
            bytes = unpacked.bytes,
            entries = unpacked.entries,
            "asset installed"
        );
        Ok(())
    }
}

/// How a caller waits for a download.
enum Wait {
    /// It started it.
    Own(tokio::task::JoinHandle<Result<(), AssetError>>),
    /// Another caller did.
    Other(watch::Receiver<bool>),
}

/// One download, in a task of its own; always marks the flight done.
async fn flight(
    inner: Arc<Inner>,
    name: String,
    build: ResolvedBuild,
    sender: watch::Sender<bool>,
) -> Result<(), AssetError> {
    struct Done<'a> {
        inner: &'a Inner,
        sha512: &'a str,
        sender: watch::Sender<bool>,
    }
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.inner.state.lock().flights.remove(self.sha512);
            let _ = self.sender.send(true);
        }
    }
    let _done = Done {
        inner: &inner,
        sha512: &build.sha512,
        sender,
    };
    let result = inner.install(&name, &build).await;
    let mut state = inner.state.lock();
    let key = (name.clone(), build.sha512.clone());
    match &result {
        Ok(()) => {
            state.failures.remove(&key);
        }
        Err(error) => {
            let config = &inner.config;
            let failure = state.failures.entry(key).or_insert_with(|| Failure {
                message: String::new(),
                next_try: Instant::now(),
                backoff: Backoff::new(config.backoff_base, config.backoff_max, Jitter::Equal),
            });
            let delay = failure.backoff.next_delay();
            failure.message = error.to_string();
            failure.next_try = Instant::now() + delay;
            warn!(asset = %name, %error, retry_in = ?delay, "asset failed");
        }
    }
    drop(state);
    result
}

/// The unleased builds to remove, least recently used first, so that `incoming_bytes` and
/// `incoming_assets` more fit the bounds.
///
/// # Errors
/// Which bound the builds in use keep from being met.
fn evictions(
    state: &State,
    config: &CacheConfig,
    incoming_bytes: u64,
    incoming_assets: usize,
) -> Result<Vec<String>, String> {
    let mut bytes: u64 =
        state.entries.values().map(|entry| entry.bytes).sum::<u64>() + incoming_bytes;
    let mut count = state.entries.len() + incoming_assets;
    if incoming_bytes > config.max_bytes {
        return Err(format!(
            "it unpacks to {incoming_bytes} bytes, over the cache's {} bytes",
            config.max_bytes
        ));
    }
    let mut candidates: Vec<(&String, &Entry)> = state
        .entries
        .iter()
        .filter(|(_, entry)| entry.leases == 0)
        .collect();
    candidates.sort_by_key(|(_, entry)| entry.last_used);
    let mut victims = Vec::new();
    let mut candidates = candidates.into_iter();
    while bytes > config.max_bytes || count > config.max_assets.max(1) {
        let Some((sha512, entry)) = candidates.next() else {
            return Err(format!(
                "the assets in use hold {bytes} of {} bytes and {count} of {} assets",
                config.max_bytes, config.max_assets
            ));
        };
        bytes -= entry.bytes;
        count -= 1;
        victims.push(sha512.clone());
    }
    Ok(victims)
}

/// The builds in `dir` (created when missing), oldest first, with their sizes; empties `.tmp`.
fn scan(dir: &Path) -> std::io::Result<Vec<(String, u64)>> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(TMP_DIR);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_build = name.len() == 128
            && name
                .bytes()
                .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'));
        let meta = entry.metadata()?;
        if !is_build || !meta.is_dir() {
            continue;
        }
        let modified = meta.modified().ok();
        found.push((modified, name.to_owned(), tree_bytes(&entry.path())));
    }
    found.sort();
    Ok(found
        .into_iter()
        .map(|(_, name, bytes)| (name, bytes))
        .collect())
}

/// Bytes of the regular files under `dir` (links not followed).
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(folder) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

fn remove_build(dir: &Path, sha512: &str) {
    if let Err(error) = std::fs::remove_dir_all(dir.join(sha512)) {
        warn!(%error, sha512, "cannot remove an evicted asset");
    }
}

#[cfg(test)]
pub(super) mod tests;
