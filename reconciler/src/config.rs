//! `cairnctl`'s saved connection (URL, CA file, tokens, namespace) and its environment
//! overrides.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Backend URL override.
pub const ENV_URL: &str = "CAIRN_URL";
/// CA file override.
pub const ENV_CA_FILE: &str = "CAIRN_CA_FILE";
/// API key: when set, used instead of the saved tokens.
pub const ENV_API_KEY: &str = "CAIRN_API_KEY";
/// Namespace override.
pub const ENV_NAMESPACE: &str = "CAIRN_NAMESPACE";
/// Where the config file lives (default `$XDG_CONFIG_HOME/cairn` or `~/.config/cairn`).
pub const ENV_CONFIG_DIR: &str = "CAIRN_CONFIG_DIR";
/// A cluster registered on the (gateway) backend: every API request goes through the
/// gateway's proxy to it (`--cluster` sets it too).
pub const ENV_CLUSTER: &str = "CAIRN_CLUSTER";

const CONFIG_FILE: &str = "cairnctl.json";

/// Why the configuration could not be used. None is helped by retrying as is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Nothing says where the backend is.
    #[error("no backend configured: run `cairnctl configure --url URL --ca-file F --username U --password P` or set {ENV_URL} and {ENV_CA_FILE}")]
    NotConfigured,
    /// The config file could not be read or written.
    #[error("{path}: {reason}")]
    FileFailed {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// What `cairnctl configure` saves.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Saved {
    /// Backend URL.
    pub url: String,
    /// The cluster CA file.
    pub ca_file: PathBuf,
    /// Default namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The access token.
    #[serde(default)]
    pub access_token: String,
    /// Its expiry, unix seconds.
    #[serde(default)]
    pub expires_at: u64,
    /// The single-use refresh token.
    #[serde(default)]
    pub refresh_token: String,
}

fn default_namespace() -> String {
    "default".to_owned()
}

/// Reads settings from the environment; tests hand a map instead.
pub trait EnvSource {
    /// The value of `key`, when set and not empty.
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|value| !value.is_empty())
    }
}

/// An environment with some keys set from the command line: a flag wins over the variable
/// of the same meaning (`--cluster` over `CAIRN_CLUSTER`), without touching the process
/// environment.
#[derive(Debug, Clone)]
pub struct Overlay<E> {
    base: E,
    values: Vec<(&'static str, String)>,
}

impl<E: EnvSource> Overlay<E> {
    /// `base` as is, until [`Overlay::set`] adds values.
    pub fn new(base: E) -> Overlay<E> {
        Overlay {
            base,
            values: Vec::new(),
        }
    }

    /// Answers `key` with `value` when `value` is given and not empty.
    pub fn set(mut self, key: &'static str, value: Option<String>) -> Overlay<E> {
        if let Some(value) = value.filter(|value| !value.is_empty()) {
            self.values.push((key, value));
        }
        self
    }
}

impl<E: EnvSource> EnvSource for Overlay<E> {
    fn get(&self, key: &str) -> Option<String> {
        self.values
            .iter()
            .rev()
            .find(|(set, _)| *set == key)
            .map(|(_, value)| value.clone())
            .or_else(|| self.base.get(key))
    }
}

/// The effective connection: saved settings with environment overrides applied.
#[derive(Debug, Clone)]
pub struct Effective {
    /// The saved file (possibly empty) and where it lives.
    pub saved: Saved,
    /// The config file path.
    pub path: PathBuf,
    /// An API key from the environment, which takes precedence over tokens.
    pub api_key: Option<String>,
    /// The registered cluster every API request is aimed at through the gateway's proxy
    /// (`--cluster` / `CAIRN_CLUSTER`); `None` talks to the configured backend itself.
    pub cluster: Option<String>,
}

/// The config file path.
pub fn config_path(env: &dyn EnvSource) -> PathBuf {
    let dir = env
        .get(ENV_CONFIG_DIR)
        .map(PathBuf::from)
        .or_else(|| {
            env.get("XDG_CONFIG_HOME")
                .map(|dir| PathBuf::from(dir).join("cairn"))
        })
        .or_else(|| {
            env.get("HOME")
                .map(|home| PathBuf::from(home).join(".config/cairn"))
        })
        .unwrap_or_else(|| PathBuf::from(".cairn"));
    dir.join(CONFIG_FILE)
}

/// Loads the saved config (if any) and applies the environment.
///
/// # Errors
/// [`ConfigError::NotConfigured`] when no URL or CA is known; a file error when the file is
/// unreadable.
pub fn load(env: &dyn EnvSource) -> Result<Effective, ConfigError> {
    let path = config_path(env);
    let mut saved = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| ConfigError::FileFailed {
            path: path.clone(),
            reason: format!("not a cairnctl config: {err}"),
        })?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Saved::default(),
        Err(err) => {
            return Err(ConfigError::FileFailed {
                path,
                reason: err.to_string(),
            })
        }
    };
    if let Some(url) = env.get(ENV_URL) {
        saved.url = url;
    }
    if let Some(ca_file) = env.get(ENV_CA_FILE) {
        saved.ca_file = PathBuf::from(ca_file);
    }
    if let Some(namespace) = env.get(ENV_NAMESPACE) {
        saved.namespace = namespace;
    }
    if saved.namespace.is_empty() {
        saved.namespace = default_namespace();
    }
    if saved.url.is_empty() || saved.ca_file.as_os_str().is_empty() {
        return Err(ConfigError::NotConfigured);
    }
    Ok(Effective {
        saved,
        path,
        api_key: env.get(ENV_API_KEY),
        cluster: env.get(ENV_CLUSTER),
    })
}

/// Writes the config with mode 0600 (it holds tokens).
///
/// # Errors
/// A file error naming the path.
pub fn save(path: &Path, saved: &Saved) -> Result<(), ConfigError> {
    let fail = |reason: String| ConfigError::FileFailed {
        path: path.to_owned(),
        reason,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|err| fail(err.to_string()))?;
    }
    let text = serde_json::to_vec_pretty(saved).expect("the config always serializes");
    let temporary = path.with_extension("json.tmp");
    {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut file = options
            .open(&temporary)
            .map_err(|err| fail(err.to_string()))?;
        file.write_all(&text).map_err(|err| fail(err.to_string()))?;
        file.sync_all().map_err(|err| fail(err.to_string()))?;
    }
    std::fs::rename(&temporary, path).map_err(|err| fail(err.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Clone)]
    struct MapEnv(HashMap<&'static str, String>);

    impl EnvSource for MapEnv {
        fn get(&self, key: &str) -> Option<String> {
            self.0.get(key).cloned()
        }
    }

    #[test]
    fn the_cluster_flag_wins_over_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let env = MapEnv(HashMap::from([
            (ENV_CONFIG_DIR, dir.path().display().to_string()),
            (ENV_URL, "https://gateway:8080".to_owned()),
            (ENV_CA_FILE, "/ca.pem".to_owned()),
            (ENV_CLUSTER, "from-env".to_owned()),
        ]));
        let check = |flag: Option<&str>, expected: Option<&str>| {
            let overlay = Overlay::new(env.clone()).set(ENV_CLUSTER, flag.map(str::to_owned));
            let effective = load(&overlay).unwrap();
            assert_eq!(effective.cluster.as_deref(), expected, "flag {flag:?}");
            assert_eq!(effective.saved.url, "https://gateway:8080");
        };
        check(Some("alpha"), Some("alpha"));
        check(None, Some("from-env"));
        // An empty flag is no flag.
        check(Some(""), Some("from-env"));
        let mut without = env.clone();
        without.0.remove(ENV_CLUSTER);
        assert_eq!(load(&Overlay::new(without)).unwrap().cluster, None);
    }
}
