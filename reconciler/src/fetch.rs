//! Remote repositories (`file://`, `https://`, `ssh://`, `user@host:path`): fetched with git2
//! into a cache folder, one bare repository per URL, so that a source reads a commit's tree
//! without a checkout.
//!
//! Each fetch mirrors the remote's branches into `refs/remotes/origin/*` and its tags into
//! `refs/tags/*` (pruning what the remote deleted), and points the cache's `HEAD` (detached) at
//! the commit the remote advertises as `HEAD`. A full commit id that no branch or tag reaches is
//! fetched on its own when the remote allows it.
//!
//! Credentials come from the environment and are never written into messages or logs:
//! - `https://`: `CAIRN_GIT_TOKEN` as the password, `CAIRN_GIT_USERNAME` as the user name
//!   (else the URL's user name, else `x-access-token`);
//! - `ssh://` and `user@host:path`: the SSH agent first, then the private key in
//!   `CAIRN_GIT_SSH_KEY` (with `CAIRN_GIT_SSH_PASSPHRASE` when set). Host keys are checked by
//!   libgit2 against `~/.ssh/known_hosts`; unknown hosts are refused.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, FetchOptions, FetchPrune,
    ProxyOptions, RemoteCallbacks, Repository,
};
use sha2::{Digest, Sha256};

/// Why a remote repository could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The fetch failed: the remote is unreachable, refused, or authentication failed.
    #[error("cannot fetch {url}: {reason}")]
    Failed {
        /// The URL (without credentials).
        url: String,
        /// Why (git's message, without credentials).
        reason: String,
    },
    /// The cache folder (or the bare repository in it) could not be created or opened.
    #[error("cannot prepare cache folder {path} for {url}: {reason}")]
    Cache {
        /// The URL (without credentials).
        url: String,
        /// The folder.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The fetch worked but the reference names nothing in the remote repository.
    #[error("{url}: reference {reference:?} names nothing after fetching: {reason}")]
    Reference {
        /// The URL (without credentials).
        url: String,
        /// The reference asked for.
        reference: String,
        /// Why.
        reason: String,
    },
}

/// The refspecs every fetch uses: branches as remote-tracking branches, tags as tags.
const REFSPECS: [&str; 2] = [
    "+refs/heads/*:refs/remotes/origin/*",
    "+refs/tags/*:refs/tags/*",
];

/// Where each fetch records the commit the remote advertises as `HEAD`.
const REMOTE_HEAD: &str = "refs/cairn/remote-head";

/// Where the cache's `HEAD` points when the remote advertises no `HEAD` (an unborn branch, so
/// that `HEAD` resolves to nothing rather than to a stale commit).
const NO_REMOTE_HEAD: &str = "refs/heads/cairn-remote-has-no-head";

/// How many times one connection may ask for credentials before giving up (libgit2 asks again
/// after every rejected credential, forever).
const MAX_CREDENTIAL_REQUESTS: u32 = 4;

/// At most this many characters of the URL name a cache folder (before the hash).
const MAX_READABLE_NAME: usize = 80;

/// Whether `repo` is a URL (or scp-like `user@host:path`) rather than a local path.
///
/// URLs: `scheme://…` (`file`, `http`, `https`, `ssh`, `git`, …) and the scp-like
/// `[user@]host:path` form, where a `:` comes before any `/` and what precedes it holds an `@`
/// or is a host name. Local paths (`/srv/repo.git`, `./repo`, `repo`, `C:\repo`) are not URLs.
pub fn is_url(repo: &str) -> bool {
    scheme_end(repo).is_some() || is_scp_like(repo)
}

/// The index just after `scheme://`, when `url` starts with a valid scheme.
fn scheme_end(url: &str) -> Option<usize> {
    let index = url.find("://")?;
    let scheme = &url[..index];
    let mut chars = scheme.chars();
    let first = chars.next()?;
    let valid = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(index + 3)
}

/// `[user@]host:path` with the `:` before any `/` (git's rule), and not a drive letter.
fn is_scp_like(repo: &str) -> bool {
    if scheme_end(repo).is_some() {
        return false;
    }
    // `[::1]:path`: the host is an IPv6 address in brackets.
    if let Some(rest) = repo.strip_prefix('[') {
        return rest.split_once("]:").is_some_and(|(host, path)| {
            !host.is_empty() && !host.contains('/') && !path.is_empty()
        });
    }
    let Some(colon) = repo.find(':') else {
        return false;
    };
    if repo[..colon].contains(['/', '\\']) {
        return false;
    }
    let (before, after) = (&repo[..colon], &repo[colon + 1..]);
    if before.is_empty() || after.is_empty() {
        return false;
    }
    if let Some(at) = before.rfind('@') {
        return at > 0 && at + 1 < before.len();
    }
    // A single letter is a Windows drive (`C:\repo`, `C:repo`), not a host.
    before.len() > 1
        && !before.starts_with(['-', '.'])
        && before
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// The byte range of `userinfo@` in a URL (scheme or scp-like), if any.
fn userinfo_span(url: &str) -> Option<(usize, usize)> {
    if let Some(start) = scheme_end(url) {
        let rest = &url[start..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let at = rest[..authority_end].rfind('@')?;
        return Some((start, start + at + 1));
    }
    if is_scp_like(url) {
        let head_end = url.find('/').unwrap_or(url.len());
        let at = url[..head_end].rfind('@')?;
        return Some((0, at + 1));
    }
    None
}

/// The password in the URL's userinfo (`user:password@`), if any.
fn url_password(url: &str) -> Option<&str> {
    let (start, end) = userinfo_span(url)?;
    let userinfo = &url[start..end - 1];
    userinfo.find(':').map(|colon| &userinfo[colon + 1..])
}

/// `url` without any userinfo (`user:password@`), for messages and logs.
///
/// `https://user:secret@host/x` reads `https://host/x`; `git@host:org/repo` reads
/// `host:org/repo`. Anything that is not a URL is returned unchanged.
pub fn redact_url(url: &str) -> String {
    match userinfo_span(url) {
        Some((start, end)) => format!("{}{}", &url[..start], &url[end..]),
        None => url.to_owned(),
    }
}

/// `url` without the password of its userinfo (the user name is kept): what the cache stores
/// as `origin` and what names its folder, so that no secret is written to disk.
fn strip_password(url: &str) -> String {
    match (userinfo_span(url), url_password(url)) {
        (Some((start, end)), Some(_)) => {
            let userinfo = &url[start..end - 1];
            let user = userinfo.split(':').next().unwrap_or_default();
            if user.is_empty() {
                redact_url(url)
            } else {
                format!("{}{user}@{}", &url[..start], &url[end..])
            }
        }
        _ => url.to_owned(),
    }
}

/// `$XDG_CACHE_HOME/cairn/repos`, else `~/.cache/cairn/repos`, else a folder in the temp dir.
pub fn default_cache_dir() -> PathBuf {
    cache_dir_from(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
}

/// [`default_cache_dir`] from the values of `XDG_CACHE_HOME` and `HOME`. Relative or empty
/// values are ignored, as the XDG specification asks.
fn cache_dir_from(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> PathBuf {
    let usable =
        |value: Option<OsString>| value.map(PathBuf::from).filter(|path| path.is_absolute());
    if let Some(cache) = usable(xdg_cache_home) {
        return cache.join("cairn").join("repos");
    }
    if let Some(home) = usable(home) {
        return home.join(".cache").join("cairn").join("repos");
    }
    std::env::temp_dir().join("cairn-repos")
}

/// The cache folder's name for a URL: a readable part (host and path, `[A-Za-z0-9._-]` only),
/// `-`, and the first 16 hex digits of the SHA-256 of the URL (its password left out).
fn folder_name(url: &str) -> String {
    let keyed = strip_password(url);
    let digest = Sha256::digest(keyed.as_bytes());
    let hash = &hex::encode(digest)[..16];
    let redacted = redact_url(url);
    let location = match scheme_end(&redacted) {
        Some(start) => &redacted[start..],
        None => redacted.as_str(),
    };
    let mut readable = String::with_capacity(location.len());
    for c in location.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
            readable.push(c);
        } else if !readable.ends_with('_') {
            readable.push('_');
        }
    }
    let trimmed = readable.trim_matches(['.', '_', '-']);
    let start = trimmed.len().saturating_sub(MAX_READABLE_NAME);
    let readable = trimmed[start..].trim_start_matches(['.', '_', '-']);
    if readable.is_empty() {
        hash.to_owned()
    } else {
        format!("{readable}-{hash}")
    }
}

/// Fetches `reference` of `url` into a bare repository under `cache_dir` and returns its path.
///
/// After a successful fetch `reference` resolves in the returned repository either as it is
/// (`HEAD`, a tag, a commit id) or as `refs/remotes/origin/<reference>` (a branch).
///
/// # Errors
/// [`FetchError`] when the cache cannot be prepared, when the remote cannot be reached, refuses
/// or rejects the credentials, and when `reference` names nothing in the remote repository.
pub fn fetch(url: &str, reference: &str, cache_dir: &Path) -> Result<PathBuf, FetchError> {
    let shown = redact_url(url);
    let cache_error = |path: &Path, reason: String| FetchError::Cache {
        url: shown.clone(),
        path: path.to_owned(),
        reason,
    };
    create_private_dir_all(cache_dir).map_err(|err| cache_error(cache_dir, err.to_string()))?;
    let name = folder_name(url);
    let folder = cache_dir.join(&name);

    // One fetch at a time per cache folder in this process.
    let key = cache_dir
        .canonicalize()
        .map_err(|err| cache_error(cache_dir, err.to_string()))?
        .join(&name);
    let lock = folder_lock(key);
    let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);

    let repository =
        open_or_init(cache_dir, &folder, &name).map_err(|reason| cache_error(&folder, reason))?;
    set_origin(&repository, url).map_err(|err| cache_error(&folder, err.message().to_owned()))?;

    let secrets = Secrets::from_env();
    let failed = |err: git2::Error| FetchError::Failed {
        url: shown.clone(),
        reason: scrub(err.message(), url, &secrets),
    };
    tracing::debug!(url = %shown, folder = %folder.display(), reference, "fetching");
    let remote_head = fetch_refs(&repository, url, &shown, &secrets).map_err(failed)?;

    // HEAD: detached at the commit the remote advertises, or unborn if it advertises none.
    match remote_head {
        Some(head) => repository.set_head_detached(head).map_err(failed)?,
        None => repository.set_head(NO_REMOTE_HEAD).map_err(failed)?,
    }

    // A commit id that no branch or tag reaches: ask for it.
    if is_full_commit_id(reference) && resolve(&repository, reference).is_err() {
        if let Ok(oid) = git2::Oid::from_str(reference) {
            if let Err(err) = fetch_object(&repository, url, &shown, &secrets, oid) {
                return Err(FetchError::Reference {
                    url: shown.clone(),
                    reference: reference.to_owned(),
                    reason: scrub(err.message(), url, &secrets),
                });
            }
        }
    }

    resolve(&repository, reference).map_err(|err| FetchError::Reference {
        url: shown.clone(),
        reference: reference.to_owned(),
        reason: scrub(err.message(), url, &secrets),
    })?;
    tracing::debug!(url = %shown, folder = %folder.display(), reference, "fetched");
    Ok(folder)
}

/// Resolves `reference` as `source.rs` does: as it is, else as a remote-tracking branch.
fn resolve<'r>(
    repository: &'r Repository,
    reference: &str,
) -> Result<git2::Object<'r>, git2::Error> {
    repository
        .revparse_single(reference)
        .or_else(|_| repository.revparse_single(&format!("refs/remotes/origin/{reference}")))
}

fn is_full_commit_id(reference: &str) -> bool {
    reference.len() == 40 && reference.bytes().all(|b| b.is_ascii_hexdigit())
}

fn has_object(repository: &Repository, oid: git2::Oid) -> bool {
    repository.odb().is_ok_and(|odb| odb.exists(oid))
}

/// Creates `path` and its missing parents, readable by the owner only (on Unix).
fn create_private_dir_all(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

/// The in-process lock of one cache folder.
fn folder_lock(key: PathBuf) -> Arc<Mutex<()>> {
    static LOCKS: Mutex<BTreeMap<PathBuf, Arc<Mutex<()>>>> = Mutex::new(BTreeMap::new());
    let mut locks = LOCKS.lock().unwrap_or_else(PoisonError::into_inner);
    Arc::clone(locks.entry(key).or_default())
}

/// Opens the bare repository in `folder`, or creates it (in a temporary folder first, renamed
/// into place, so that a failed creation never leaves half a repository behind).
fn open_or_init(cache_dir: &Path, folder: &Path, name: &str) -> Result<Repository, String> {
    match Repository::open_bare(folder) {
        Ok(repository) => return Ok(repository),
        Err(err) if folder.exists() => {
            if err.code() != git2::ErrorCode::NotFound {
                return Err(err.message().to_owned());
            }
            // Not a repository (an earlier creation was interrupted): start again.
            tracing::debug!(folder = %folder.display(), "cache folder is not a repository; recreating it");
            std::fs::remove_dir_all(folder).map_err(|err| err.to_string())?;
        }
        Err(_) => {}
    }
    let temporary = cache_dir.join(format!(".{name}.tmp-{}", std::process::id()));
    if temporary.exists() {
        std::fs::remove_dir_all(&temporary).map_err(|err| err.to_string())?;
    }
    create_private_dir_all(&temporary).map_err(|err| err.to_string())?;
    let created = Repository::init_bare(&temporary).map_err(|err| err.message().to_owned());
    let renamed = created.and_then(|repository| {
        drop(repository);
        std::fs::rename(&temporary, folder).map_err(|err| err.to_string())
    });
    if let Err(reason) = renamed {
        let _ = std::fs::remove_dir_all(&temporary);
        // Another process may have created it meanwhile.
        return Repository::open_bare(folder).map_err(|_| reason);
    }
    Repository::open_bare(folder).map_err(|err| err.message().to_owned())
}

/// Sets (or replaces) the `origin` remote's URL, its password left out.
fn set_origin(repository: &Repository, url: &str) -> Result<(), git2::Error> {
    let stored = strip_password(url);
    match repository.find_remote("origin") {
        Ok(remote) if remote.url() == Some(stored.as_str()) => Ok(()),
        Ok(_) => repository.remote_set_url("origin", &stored),
        Err(_) => repository
            .remote_with_fetch("origin", &stored, REFSPECS[0])
            .map(drop),
    }
}

/// Fetches branches and tags (pruning), and returns the commit the remote advertises as `HEAD`.
///
/// The remote's `HEAD` is fetched into [`REMOTE_HEAD`] (so a detached `HEAD` that no branch
/// reaches comes too, and the ref is pruned when the remote has no `HEAD`). This avoids
/// `Remote::list`, which git2 0.20 turns into undefined behaviour for a remote with no refs.
///
/// The fetch goes through an anonymous remote on the full URL, so that credentials in the URL
/// are used but never written to the cache's configuration.
fn fetch_refs(
    repository: &Repository,
    url: &str,
    shown: &str,
    secrets: &Secrets,
) -> Result<Option<git2::Oid>, git2::Error> {
    let mut remote = repository.remote_anonymous(url)?;
    let mut options = FetchOptions::new();
    options
        .remote_callbacks(callbacks(shown, secrets))
        .proxy_options(proxy())
        .prune(FetchPrune::On)
        .download_tags(AutotagOption::All)
        .update_fetchhead(false);
    let head_refspec = format!("+HEAD:{REMOTE_HEAD}");
    let refspecs = [REFSPECS[0], REFSPECS[1], head_refspec.as_str()];
    remote.fetch(&refspecs, Some(&mut options), Some("cairn: fetch"))?;
    let head = match repository.find_reference(REMOTE_HEAD) {
        Ok(reference) => reference.target(),
        Err(err) if err.code() == git2::ErrorCode::NotFound => None,
        Err(err) => return Err(err),
    };
    tracing::debug!(url = %shown, head = ?head.map(|oid| oid.to_string()), "fetched refs");
    Ok(head)
}

/// Fetches one object by id (servers that allow it: GitHub, GitLab, local repositories).
fn fetch_object(
    repository: &Repository,
    url: &str,
    shown: &str,
    secrets: &Secrets,
    oid: git2::Oid,
) -> Result<(), git2::Error> {
    tracing::debug!(url = %shown, %oid, "fetching a commit by id");
    let mut remote = repository.remote_anonymous(url)?;
    let mut options = FetchOptions::new();
    options
        .remote_callbacks(callbacks(shown, secrets))
        .proxy_options(proxy())
        .prune(FetchPrune::Off)
        .download_tags(AutotagOption::None)
        .update_fetchhead(false);
    remote.fetch(&[oid.to_string()], Some(&mut options), Some("cairn: fetch"))?;
    if has_object(repository, oid) {
        Ok(())
    } else {
        Err(git2::Error::from_str(&format!(
            "the remote did not send {oid}"
        )))
    }
}

fn proxy() -> ProxyOptions<'static> {
    let mut proxy = ProxyOptions::new();
    proxy.auto();
    proxy
}

fn callbacks<'a>(shown: &str, secrets: &Secrets) -> RemoteCallbacks<'a> {
    let mut credentials = Credentials::new(shown, secrets.clone());
    let mut callbacks = RemoteCallbacks::new();
    callbacks.credentials(move |_url, username_from_url, allowed| {
        credentials.next(username_from_url, allowed)
    });
    // Host keys and TLS certificates: libgit2's own checks (known_hosts, the CA store) decide.
    callbacks.certificate_check(|_certificate, _host| {
        Ok(CertificateCheckStatus::CertificatePassthrough)
    });
    callbacks
}

/// Credentials from the environment. Deliberately not `Debug`: it holds secrets.
#[derive(Clone, Default)]
struct Secrets {
    /// `CAIRN_GIT_TOKEN`.
    token: Option<String>,
    /// `CAIRN_GIT_USERNAME`.
    username: Option<String>,
    /// `CAIRN_GIT_SSH_KEY`.
    ssh_key: Option<PathBuf>,
    /// `CAIRN_GIT_SSH_PASSPHRASE`.
    ssh_passphrase: Option<String>,
}

impl Secrets {
    fn from_env() -> Secrets {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        Secrets {
            token: var("CAIRN_GIT_TOKEN"),
            username: var("CAIRN_GIT_USERNAME"),
            ssh_key: std::env::var_os("CAIRN_GIT_SSH_KEY")
                .filter(|value| !value.is_empty())
                .map(PathBuf::from),
            ssh_passphrase: var("CAIRN_GIT_SSH_PASSPHRASE"),
        }
    }

    fn values(&self) -> impl Iterator<Item = &str> {
        self.token
            .iter()
            .chain(&self.ssh_passphrase)
            .map(String::as_str)
    }
}

/// Removes credentials from a message: the URL's userinfo, its password, and the secrets from
/// the environment, wherever git may have copied them.
fn scrub(message: &str, url: &str, secrets: &Secrets) -> String {
    let mut scrubbed = if url.is_empty() {
        message.to_owned()
    } else {
        message.replace(url, &redact_url(url))
    };
    let password = url_password(url).filter(|password| !password.is_empty());
    for secret in password.into_iter().chain(secrets.values()) {
        scrubbed = scrubbed.replace(secret, "***");
    }
    scrubbed
}

/// Answers libgit2's credential requests for one connection, each kind of credential once, and
/// gives up (rather than loop forever) when they are all rejected.
struct Credentials {
    shown: String,
    secrets: Secrets,
    requests: u32,
    tried_agent: bool,
    tried_key: bool,
    tried_token: bool,
}

impl Credentials {
    fn new(shown: &str, secrets: Secrets) -> Credentials {
        Credentials {
            shown: shown.to_owned(),
            secrets,
            requests: 0,
            tried_agent: false,
            tried_key: false,
            tried_token: false,
        }
    }

    fn next(
        &mut self,
        username_from_url: Option<&str>,
        allowed: CredentialType,
    ) -> Result<Cred, git2::Error> {
        self.requests += 1;
        if self.requests > MAX_CREDENTIAL_REQUESTS {
            return Err(self.give_up(format!(
                "gave up after {MAX_CREDENTIAL_REQUESTS} credential requests"
            )));
        }
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(username_from_url.unwrap_or("git"));
        }
        if allowed.contains(CredentialType::SSH_KEY) {
            let user = username_from_url.unwrap_or("git");
            if !self.tried_agent {
                self.tried_agent = true;
                tracing::debug!(url = %self.shown, user, "authenticating with the ssh agent");
                return Cred::ssh_key_from_agent(user);
            }
            if !self.tried_key {
                if let Some(key) = &self.secrets.ssh_key {
                    self.tried_key = true;
                    tracing::debug!(url = %self.shown, user, key = %key.display(), "authenticating with CAIRN_GIT_SSH_KEY");
                    return Cred::ssh_key(user, None, key, self.secrets.ssh_passphrase.as_deref());
                }
            }
            let tried = if self.tried_key {
                "neither the ssh agent nor the key in CAIRN_GIT_SSH_KEY was accepted"
            } else {
                "the ssh agent offered no accepted key and CAIRN_GIT_SSH_KEY is not set"
            };
            return Err(self.give_up(format!("ssh authentication as {user:?} failed: {tried}")));
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            if !self.tried_token {
                if let Some(token) = &self.secrets.token {
                    self.tried_token = true;
                    let user = self
                        .secrets
                        .username
                        .as_deref()
                        .or(username_from_url)
                        .unwrap_or("x-access-token");
                    tracing::debug!(url = %self.shown, user, "authenticating with CAIRN_GIT_TOKEN");
                    return Cred::userpass_plaintext(user, token);
                }
            }
            let reason = if self.tried_token {
                "the token in CAIRN_GIT_TOKEN was rejected"
            } else {
                "the remote asks for credentials and CAIRN_GIT_TOKEN is not set"
            };
            return Err(self.give_up(format!("authentication failed: {reason}")));
        }
        Err(self.give_up(format!(
            "the remote asks for credentials of a kind Cairn does not provide ({allowed:?})"
        )))
    }

    fn give_up(&self, reason: String) -> git2::Error {
        tracing::debug!(url = %self.shown, %reason, "giving up authentication");
        git2::Error::new(
            git2::ErrorCode::Auth,
            git2::ErrorClass::Net,
            format!("{}: {reason}", self.shown),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use git2::{Oid, Signature};

    /// A non-bare source repository whose HEAD is `refs/heads/main`.
    struct Upstream {
        _dir: tempfile::TempDir,
        repository: Repository,
        url: String,
    }

    impl Upstream {
        fn new() -> Upstream {
            let dir = tempfile::tempdir().unwrap();
            let repository = Repository::init(dir.path()).unwrap();
            repository.set_head("refs/heads/main").unwrap();
            let url = format!("file://{}", dir.path().display());
            Upstream {
                _dir: dir,
                repository,
                url,
            }
        }

        /// Commits `content` as `file.yaml` on top of `parent` and points `reference` at it.
        fn commit(&self, reference: Option<&str>, parent: Option<Oid>, content: &str) -> Oid {
            let repository = &self.repository;
            let blob = repository.blob(content.as_bytes()).unwrap();
            let mut builder = repository.treebuilder(None).unwrap();
            builder.insert("file.yaml", blob, 0o100_644).unwrap();
            let tree = repository.find_tree(builder.write().unwrap()).unwrap();
            let signature = Signature::now("Test", "test@example.com").unwrap();
            let parents: Vec<git2::Commit<'_>> = parent
                .map(|oid| repository.find_commit(oid).unwrap())
                .into_iter()
                .collect();
            let parents: Vec<&git2::Commit<'_>> = parents.iter().collect();
            let oid = repository
                .commit(None, &signature, &signature, content, &tree, &parents)
                .unwrap();
            if let Some(reference) = reference {
                repository.reference(reference, oid, true, "test").unwrap();
            }
            oid
        }

        fn tag(&self, name: &str, oid: Oid) {
            let object = self.repository.find_object(oid, None).unwrap();
            self.repository
                .tag_lightweight(name, &object, true)
                .unwrap();
        }

        fn annotated_tag(&self, name: &str, oid: Oid) {
            let object = self.repository.find_object(oid, None).unwrap();
            let signature = Signature::now("Test", "test@example.com").unwrap();
            self.repository
                .tag(name, &object, &signature, "release", true)
                .unwrap();
        }
    }

    /// The commit `reference` names in the cache, resolved as `source.rs` does.
    fn commit_of(git_dir: &Path, reference: &str) -> Option<Oid> {
        let repository = Repository::open_bare(git_dir).unwrap();
        let object = resolve(&repository, reference).ok()?;
        let commit = object.peel_to_commit().unwrap().id();
        Some(commit)
    }

    #[test]
    fn fetch_resolves_head_branches_tags_and_commits() {
        let upstream = Upstream::new();
        let first = upstream.commit(Some("refs/heads/main"), None, "first");
        let second = upstream.commit(Some("refs/heads/main"), Some(first), "second");
        let feature = upstream.commit(Some("refs/heads/feature"), Some(first), "feature");
        upstream.tag("v1", first);
        upstream.annotated_tag("v2", second);
        let cache = tempfile::tempdir().unwrap();

        let git_dir = fetch(&upstream.url, "HEAD", cache.path()).unwrap();
        assert!(git_dir.starts_with(cache.path()));
        assert!(Repository::open_bare(&git_dir).unwrap().is_bare());
        assert_eq!(commit_of(&git_dir, "HEAD"), Some(second));
        assert_eq!(commit_of(&git_dir, "main"), Some(second));
        assert_eq!(commit_of(&git_dir, "feature"), Some(feature));
        assert_eq!(commit_of(&git_dir, "v1"), Some(first));
        assert_eq!(commit_of(&git_dir, "v2"), Some(second));
        assert_eq!(commit_of(&git_dir, &first.to_string()), Some(first));
        assert_eq!(commit_of(&git_dir, "missing"), None);

        // Every reference kind is accepted by fetch itself, into the same folder.
        for reference in ["main", "feature", "v1", "v2", &first.to_string()] {
            assert_eq!(
                fetch(&upstream.url, reference, cache.path()).unwrap(),
                git_dir
            );
        }
        // `origin` is recorded.
        let repository = Repository::open_bare(&git_dir).unwrap();
        assert_eq!(
            repository.find_remote("origin").unwrap().url(),
            Some(upstream.url.as_str())
        );
    }

    #[test]
    fn fetch_again_sees_new_commits_and_prunes() {
        let upstream = Upstream::new();
        let first = upstream.commit(Some("refs/heads/main"), None, "first");
        let topic = upstream.commit(Some("refs/heads/topic"), Some(first), "topic");
        let gone = upstream.commit(Some("refs/heads/gone"), Some(first), "gone");
        upstream.tag("old", first);
        let cache = tempfile::tempdir().unwrap();
        let git_dir = fetch(&upstream.url, "HEAD", cache.path()).unwrap();
        assert_eq!(commit_of(&git_dir, "HEAD"), Some(first));
        assert_eq!(commit_of(&git_dir, "topic"), Some(topic));
        assert_eq!(commit_of(&git_dir, "gone"), Some(gone));
        assert_eq!(commit_of(&git_dir, "old"), Some(first));

        // Upstream moves on: a new commit on main, topic force-pushed, a branch and a tag deleted.
        let second = upstream.commit(Some("refs/heads/main"), Some(first), "second");
        let rewritten = upstream.commit(Some("refs/heads/topic"), None, "rewritten");
        upstream
            .repository
            .find_reference("refs/heads/gone")
            .unwrap()
            .delete()
            .unwrap();
        upstream
            .repository
            .find_reference("refs/tags/old")
            .unwrap()
            .delete()
            .unwrap();

        assert_eq!(fetch(&upstream.url, "main", cache.path()).unwrap(), git_dir);
        assert_eq!(commit_of(&git_dir, "HEAD"), Some(second));
        assert_eq!(commit_of(&git_dir, "main"), Some(second));
        assert_eq!(commit_of(&git_dir, "topic"), Some(rewritten));
        assert_eq!(commit_of(&git_dir, "gone"), None);
        assert_eq!(commit_of(&git_dir, "old"), None);

        // A deleted branch or tag is an error naming the reference, not a stale commit.
        for reference in ["gone", "old"] {
            let error = fetch(&upstream.url, reference, cache.path()).unwrap_err();
            assert!(matches!(error, FetchError::Reference { .. }), "{error}");
            assert!(
                error.to_string().contains(&format!("{reference:?}")),
                "{error}"
            );
        }
    }

    #[test]
    fn fetch_asks_for_a_commit_no_branch_reaches() {
        let upstream = Upstream::new();
        let first = upstream.commit(Some("refs/heads/main"), None, "first");
        // Only a ref outside refs/heads and refs/tags reaches it (like refs/pull/1/head).
        let hidden = upstream.commit(Some("refs/pull/1/head"), Some(first), "hidden");
        let cache = tempfile::tempdir().unwrap();

        let git_dir = fetch(&upstream.url, &hidden.to_string(), cache.path()).unwrap();
        assert_eq!(commit_of(&git_dir, &hidden.to_string()), Some(hidden));

        // Asking for one commit by id works on its own (libgit2's local transport sends more
        // than it is asked for, so the commit is checked for, not just the fetch's result).
        let empty = tempfile::tempdir().unwrap();
        let repository = Repository::init_bare(empty.path()).unwrap();
        fetch_object(
            &repository,
            &upstream.url,
            &upstream.url,
            &Secrets::default(),
            hidden,
        )
        .unwrap();
        assert!(has_object(&repository, hidden));

        // A commit the remote does not have is an error naming it.
        let unknown = "0123456789abcdef0123456789abcdef01234567";
        let error = fetch(&upstream.url, unknown, cache.path()).unwrap_err();
        assert!(matches!(error, FetchError::Reference { .. }), "{error}");
        assert!(error.to_string().contains(unknown), "{error}");
        assert!(error.to_string().contains("did not send"), "{error}");
    }

    #[test]
    fn fetch_follows_a_detached_remote_head() {
        let upstream = Upstream::new();
        let first = upstream.commit(Some("refs/heads/main"), None, "first");
        let detached = upstream.commit(None, Some(first), "detached");
        upstream.repository.set_head_detached(detached).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let git_dir = fetch(&upstream.url, "HEAD", cache.path()).unwrap();
        assert_eq!(commit_of(&git_dir, "HEAD"), Some(detached));
        assert_eq!(commit_of(&git_dir, "main"), Some(first));
    }

    #[test]
    fn an_empty_remote_has_no_head() {
        let upstream = Upstream::new();
        let cache = tempfile::tempdir().unwrap();
        let error = fetch(&upstream.url, "HEAD", cache.path()).unwrap_err();
        assert!(matches!(error, FetchError::Reference { .. }), "{error}");
        assert!(error.to_string().contains("\"HEAD\""), "{error}");
    }

    #[test]
    fn an_unreachable_remote_is_an_error() {
        let cache = tempfile::tempdir().unwrap();
        let error = fetch("file:///nonexistent/cairn-repo", "HEAD", cache.path()).unwrap_err();
        assert!(matches!(error, FetchError::Failed { .. }), "{error}");
        assert!(
            error.to_string().contains("file:///nonexistent/cairn-repo"),
            "{error}"
        );

        // Credentials in the URL appear neither in the error nor in the cache's configuration.
        let url = "https://user:hunter2secret@127.0.0.1:1/org/repo.git";
        let error = fetch(url, "HEAD", cache.path()).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, FetchError::Failed { .. }), "{message}");
        assert!(
            message.contains("https://127.0.0.1:1/org/repo.git"),
            "{message}"
        );
        assert!(!message.contains("hunter2secret"), "{message}");
        assert!(!message.contains("user:"), "{message}");
        let git_dir = cache.path().join(folder_name(url));
        let config = std::fs::read_to_string(git_dir.join("config")).unwrap();
        assert!(!config.contains("hunter2secret"), "{config}");
        assert!(
            config.contains("https://user@127.0.0.1:1/org/repo.git"),
            "{config}"
        );
    }

    #[test]
    fn concurrent_fetches_share_the_folder_safely() {
        let upstream = Upstream::new();
        let first = upstream.commit(Some("refs/heads/main"), None, "first");
        let cache = tempfile::tempdir().unwrap();
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| fetch(&upstream.url, "main", cache.path())))
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap())
                .collect()
        });
        for result in results {
            let git_dir = result.unwrap();
            assert_eq!(commit_of(&git_dir, "main"), Some(first));
        }
        // One repository, no temporary folders left behind.
        assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn created_cache_folders_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let upstream = Upstream::new();
        upstream.commit(Some("refs/heads/main"), None, "first");
        let parent = tempfile::tempdir().unwrap();
        let cache = parent.path().join("cairn").join("repos");
        let git_dir = fetch(&upstream.url, "HEAD", &cache).unwrap();
        for folder in [parent.path().join("cairn"), cache, git_dir] {
            let mode = std::fs::metadata(&folder).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", folder.display());
        }
    }

    #[test]
    fn redact_url_strips_userinfo() {
        let cases = [
            ("https://user:secret@host/x", "https://host/x"),
            ("https://token@host/x", "https://host/x"),
            (
                "https://user:p@ss@host:8443/x?y=1",
                "https://host:8443/x?y=1",
            ),
            (
                "ssh://git@host:22/org/repo.git",
                "ssh://host:22/org/repo.git",
            ),
            ("git@github.com:org/repo.git", "github.com:org/repo.git"),
            ("https://host/a@b", "https://host/a@b"),
            ("https://host/x", "https://host/x"),
            ("file:///srv/repo.git", "file:///srv/repo.git"),
            ("/srv/user@x:repo", "/srv/user@x:repo"),
        ];
        for (url, expected) in cases {
            assert_eq!(redact_url(url), expected, "{url}");
        }
        assert!(!redact_url("https://user:secret@host/x").contains("secret"));
    }

    #[test]
    fn strip_password_keeps_the_user() {
        assert_eq!(
            strip_password("https://user:secret@host/x"),
            "https://user@host/x"
        );
        assert_eq!(strip_password("https://:secret@host/x"), "https://host/x");
        assert_eq!(strip_password("git@host:org/repo"), "git@host:org/repo");
        assert_eq!(strip_password("https://host/x"), "https://host/x");
    }

    #[test]
    fn scrub_removes_credentials_from_messages() {
        let url = "https://user:secret@host/x";
        let secrets = Secrets {
            token: Some("tok3n-value".to_owned()),
            ssh_passphrase: Some("phrase-value".to_owned()),
            ..Secrets::default()
        };
        let message = format!("failed to fetch {url}: secret rejected, tok3n-value, phrase-value");
        let scrubbed = scrub(&message, url, &secrets);
        assert_eq!(
            scrubbed,
            "failed to fetch https://host/x: *** rejected, ***, ***"
        );
    }

    #[test]
    fn is_url_tells_urls_from_paths() {
        let cases = [
            ("file:///srv/repo.git", true),
            ("http://host/repo", true),
            ("https://github.com/org/repo.git", true),
            ("ssh://git@host:2222/org/repo.git", true),
            ("git://host/repo.git", true),
            ("git+ssh://host/repo.git", true),
            ("git@github.com:org/repo.git", true),
            ("user@host:path", true),
            ("github.com:org/repo.git", true),
            ("[::1]:repo.git", true),
            ("/srv/repo.git", false),
            ("./repo", false),
            ("../repo.git", false),
            ("repo", false),
            ("repo.git", false),
            ("/srv/a:b", false),
            ("./user@host:path", false),
            ("C:\\repo", false),
            ("C:/repo", false),
            ("host:", false),
            (":path", false),
            ("@host:path", false),
            ("", false),
        ];
        for (repo, expected) in cases {
            assert_eq!(is_url(repo), expected, "{repo:?}");
        }
    }

    #[test]
    fn default_cache_dir_follows_xdg_then_home() {
        let some = |value: &str| Some(OsString::from(value));
        assert_eq!(
            cache_dir_from(some("/xdg"), some("/home/u")),
            PathBuf::from("/xdg/cairn/repos")
        );
        assert_eq!(
            cache_dir_from(None, some("/home/u")),
            PathBuf::from("/home/u/.cache/cairn/repos")
        );
        assert_eq!(
            cache_dir_from(some("relative"), some("/home/u")),
            PathBuf::from("/home/u/.cache/cairn/repos")
        );
        assert_eq!(
            cache_dir_from(some(""), None),
            std::env::temp_dir().join("cairn-repos")
        );
        assert!(
            default_cache_dir().ends_with("cairn/repos")
                || default_cache_dir().ends_with("cairn-repos")
        );
    }

    #[test]
    fn folder_names_are_readable_safe_and_distinct() {
        let url = "https://user:secret@github.com/org/repo.git";
        let name = folder_name(url);
        let (readable, hash) = name.rsplit_once('-').unwrap();
        assert_eq!(readable, "github.com_org_repo.git");
        let expected = hex::encode(Sha256::digest(b"https://user@github.com/org/repo.git"));
        assert_eq!(hash, &expected[..16]);
        assert!(!name.contains("secret") && !name.contains("user"));

        for url in [
            "file:///..",
            "git@host:../../etc",
            "https://host/a b/c%20d?x=1#y",
            "file:///",
        ] {
            let name = folder_name(url);
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
                "{name}"
            );
            assert!(!name.starts_with('.'), "{name}");
            assert!(name.len() >= 16, "{name}");
        }
        assert_ne!(
            folder_name("https://host/org/repo"),
            folder_name("https://host/org/repo.git")
        );
        assert!(folder_name(&format!("https://host/{}", "x".repeat(500))).len() <= 97);
    }

    #[test]
    fn credential_requests_give_up() {
        let secrets = Secrets {
            token: Some("tok3n-value".to_owned()),
            ..Secrets::default()
        };
        let mut https = Credentials::new("https://host/x", secrets);
        let first = https.next(None, CredentialType::USER_PASS_PLAINTEXT);
        assert!(first.is_ok());
        let error = https
            .next(None, CredentialType::USER_PASS_PLAINTEXT)
            .err()
            .unwrap();
        assert!(
            error.message().contains("https://host/x"),
            "{}",
            error.message()
        );
        assert!(
            error.message().contains("CAIRN_GIT_TOKEN"),
            "{}",
            error.message()
        );
        assert!(
            !error.message().contains("tok3n-value"),
            "{}",
            error.message()
        );

        let mut anonymous = Credentials::new("https://host/x", Secrets::default());
        let error = anonymous
            .next(Some("bob"), CredentialType::USER_PASS_PLAINTEXT)
            .err()
            .unwrap();
        assert!(error.message().contains("not set"), "{}", error.message());

        // SSH: the agent, then the key file, then an error; never an endless loop.
        let secrets = Secrets {
            ssh_key: Some(PathBuf::from("/nonexistent/id_ed25519")),
            ..Secrets::default()
        };
        let mut ssh = Credentials::new("host:org/repo", secrets);
        assert!(ssh.next(None, CredentialType::USERNAME).is_ok());
        assert!(ssh.next(Some("git"), CredentialType::SSH_KEY).is_ok());
        assert!(ssh.tried_agent && !ssh.tried_key);
        assert!(ssh.next(Some("git"), CredentialType::SSH_KEY).is_ok());
        assert!(ssh.tried_key);
        assert!(ssh.next(Some("git"), CredentialType::SSH_KEY).is_err());

        let mut looping = Credentials::new("host:org/repo", Secrets::default());
        let results: Vec<bool> = (0..10)
            .map(|_| looping.next(None, CredentialType::USERNAME).is_ok())
            .collect();
        assert_eq!(
            results.iter().filter(|ok| **ok).count(),
            MAX_CREDENTIAL_REQUESTS as usize
        );
    }
}
