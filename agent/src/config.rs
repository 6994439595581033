//! `agent.yaml`: the agent's configuration, written by `cairn-agent install` and read by
//! `cairn-agent start`.
//!
//! Relative paths in the file are resolved against the file's directory. Every error names the
//! file and the field.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use reqwest::Url;
use serde::{Deserialize, Serialize};

use cairn_api::agent::{
    DEFAULT_KEEPALIVE_CRITICAL_TIMEOUT, DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_WARNING_TIMEOUT,
};
use cairn_api::validate::check_name;
use cairn_api::Kind;

/// Where `install` writes and `start` reads by default.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/cairn-agent";
/// The configuration file's name inside the configuration directory.
pub const CONFIG_FILE_NAME: &str = "agent.yaml";
/// The private key's file name.
pub const KEY_FILE_NAME: &str = "agent.key";
/// The client certificate's file name.
pub const CERT_FILE_NAME: &str = "agent.pem";
/// The cluster CA's file name.
pub const CA_FILE_NAME: &str = "ca.pem";
/// The event queue's folder name.
pub const QUEUE_DIR_NAME: &str = "queue";
/// The environment variable that names the configuration file for `start`.
pub const ENV_CONFIG: &str = "CAIRN_AGENT_CONFIG";
/// The local API's default address.
pub const DEFAULT_LOCAL_API: &str = "127.0.0.1:3031";
/// The namespace when the file names none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// How many checks may run at once by default.
pub const DEFAULT_MAX_CONCURRENCY: usize = 16;
/// The asset cache's folder name (beside the configuration file) when `assets.cache_dir` is
/// not set.
pub const CACHE_DIR_NAME: &str = "cache";
/// The asset cache's bound in bytes of unpacked content by default (1 GiB).
pub const DEFAULT_MAX_CACHE_BYTES: u64 = cairn_api::assets::DEFAULT_MAX_CACHE_BYTES;
/// The asset cache's bound in assets by default.
pub const DEFAULT_MAX_CACHE_ASSETS: usize = cairn_api::assets::DEFAULT_MAX_ASSETS;
/// The smallest `assets.max_cache_bytes` accepted.
const MIN_CACHE_BYTES: u64 = 1024 * 1024;
/// The port of the agent listener, used when `install` derives the agent URL from the API URL.
pub const DEFAULT_AGENT_PORT: u16 = 8081;
/// The agent socket's default host (Sensu's `socket-host`).
pub const DEFAULT_SOCKET_HOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The agent socket's default port (Sensu's `socket-port`), TCP and UDP alike.
pub const DEFAULT_SOCKET_PORT: u16 = 3030;

/// The default configuration file: [`DEFAULT_CONFIG_DIR`]/[`CONFIG_FILE_NAME`].
pub fn default_config_file() -> PathBuf {
    Path::new(DEFAULT_CONFIG_DIR).join(CONFIG_FILE_NAME)
}

/// The agent's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The entity name; must equal the certificate's CN.
    pub name: String,
    /// The entity's namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Subscriptions.
    #[serde(default)]
    pub subscriptions: Vec<String>,
    /// Entity labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Entity annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The backends' agent WebSocket URLs (`wss://host:8081`), tried in order.
    pub backend_urls: Vec<String>,
    /// The backend's REST API URL (`https://host:8080`), where the agent enrolled.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_url: String,
    /// Seconds between keepalives.
    #[serde(default = "default_keepalive_interval")]
    pub keepalive_interval: u32,
    /// Seconds without a keepalive before the backend raises a warning.
    #[serde(default = "default_keepalive_warning_timeout")]
    pub keepalive_warning_timeout: u32,
    /// Seconds without a keepalive before a critical; 0 for none.
    #[serde(default = "default_keepalive_critical_timeout")]
    pub keepalive_critical_timeout: u32,
    /// Delete the entity when its keepalive goes critical.
    #[serde(default)]
    pub deregister: bool,
    /// This configuration owns the entity's subscriptions, labels and annotations (Sensu's
    /// `agent-managed-entity`): they replace the stored ones at every connection and the API
    /// cannot change them. Off (the default): they are taken from here only when the entity is
    /// first created, and then managed through the API (`cairnctl entity update`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub agent_managed_entity: bool,
    /// `core/v2 Pipeline`s the keepalive events of this agent run (Sensu's
    /// `keepalive-pipelines`), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keepalive_pipelines: Vec<String>,
    /// The private key (PEM, PKCS#8).
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
    /// The client certificate (PEM).
    #[serde(default = "default_cert_file")]
    pub cert_file: PathBuf,
    /// The cluster CA, the only one trusted for the backend's agent listener (PEM).
    #[serde(default = "default_ca_file")]
    pub ca_file: PathBuf,
    /// The on-disk event queue.
    #[serde(default = "default_queue_dir")]
    pub queue_dir: PathBuf,
    /// The local event API's address; loopback only (port 0 picks a free port).
    #[serde(default = "default_local_api")]
    pub local_api: SocketAddr,
    /// How many checks may run at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,

    // --- agent extras (issue 19, item 7): keepalive and deregistration handlers, the agent
    // socket, the command allow list ---
    /// Handlers the keepalive events of this agent name (Sensu's `keepalive-handlers`); empty
    /// keeps what the entity has (`keepalive` when nothing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keepalive_handlers: Vec<String>,
    /// The handler the backend runs when it deregisters this agent's entity (Sensu's
    /// `deregistration-handler`); empty keeps what the entity has.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub deregistration_handler: String,
    /// The TCP and UDP check-result socket (Sensu's `socket-*` settings).
    #[serde(default, skip_serializing_if = "SocketSettings::is_default")]
    pub socket: SocketSettings,
    /// The command allow list file (Sensu's `allow-list`, YAML or JSON); when set, only the check
    /// and hook commands it allows run. Unset: every command runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_list: Option<PathBuf>,
    /// Runtime assets: where they are cached and which servers are trusted.
    #[serde(default, skip_serializing_if = "AssetsConfig::is_default")]
    pub assets: AssetsConfig,
}

/// `socket:` in `agent.yaml`: Sensu's agent TCP/UDP socket for 1.x-style check results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketSettings {
    /// The address to listen on (Sensu's `socket-host`); loopback unless
    /// `allow_non_loopback` says otherwise.
    #[serde(default = "default_socket_host")]
    pub host: IpAddr,
    /// The port, TCP and UDP (Sensu's `socket-port`); 0 picks a free one.
    #[serde(default = "default_socket_port")]
    pub port: u16,
    /// No socket at all (Sensu's `disable-sockets`).
    #[serde(default)]
    pub disable: bool,
    /// Allow `host` to be an address other programs than this host's reach: whoever reaches
    /// the socket can send events as this agent, with no authentication.
    #[serde(default)]
    pub allow_non_loopback: bool,
}

fn default_socket_host() -> IpAddr {
    DEFAULT_SOCKET_HOST
}
fn default_socket_port() -> u16 {
    DEFAULT_SOCKET_PORT
}

impl Default for SocketSettings {
    fn default() -> SocketSettings {
        SocketSettings {
            host: DEFAULT_SOCKET_HOST,
            port: DEFAULT_SOCKET_PORT,
            disable: false,
            allow_non_loopback: false,
        }
    }
}

/// The `assets:` section: runtime assets of checks and hooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetsConfig {
    /// A PEM file of CA certificates trusted for asset URLs besides the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Whether plain `http://` asset URLs are allowed (default false: they are refused).
    #[serde(default)]
    pub allow_http: bool,
    /// The cache's folder (Sensu's `cache-dir`); assets go in its `assets/` folder. Default:
    /// `cache` beside the configuration file.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// Bytes of unpacked assets the cache keeps at most; the least recently used go first.
    #[serde(default = "default_max_cache_bytes")]
    pub max_cache_bytes: u64,
    /// Assets the cache keeps at most.
    #[serde(default = "default_max_cache_assets")]
    pub max_cache_assets: usize,
}

impl Default for AssetsConfig {
    fn default() -> Self {
        AssetsConfig {
            trusted_ca_file: None,
            allow_http: false,
            cache_dir: default_cache_dir(),
            max_cache_bytes: default_max_cache_bytes(),
            max_cache_assets: default_max_cache_assets(),
        }
    }
}

// === impl SocketSettings ===

impl SocketSettings {
    /// The address to listen on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    fn is_default(&self) -> bool {
        *self == SocketSettings::default()
    }
}

// === impl AssetsConfig ===

impl AssetsConfig {
    fn is_default(&self) -> bool {
        *self == AssetsConfig::default()
    }
}

fn default_cache_dir() -> PathBuf {
    PathBuf::from(CACHE_DIR_NAME)
}
fn default_max_cache_bytes() -> u64 {
    DEFAULT_MAX_CACHE_BYTES
}
fn default_max_cache_assets() -> usize {
    DEFAULT_MAX_CACHE_ASSETS
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_owned()
}
fn default_keepalive_interval() -> u32 {
    DEFAULT_KEEPALIVE_INTERVAL
}
fn default_keepalive_warning_timeout() -> u32 {
    DEFAULT_KEEPALIVE_WARNING_TIMEOUT
}
fn default_keepalive_critical_timeout() -> u32 {
    DEFAULT_KEEPALIVE_CRITICAL_TIMEOUT
}
fn default_key_file() -> PathBuf {
    PathBuf::from(KEY_FILE_NAME)
}
fn default_cert_file() -> PathBuf {
    PathBuf::from(CERT_FILE_NAME)
}
fn default_ca_file() -> PathBuf {
    PathBuf::from(CA_FILE_NAME)
}
fn default_queue_dir() -> PathBuf {
    PathBuf::from(QUEUE_DIR_NAME)
}
fn default_local_api() -> SocketAddr {
    DEFAULT_LOCAL_API
        .parse()
        .expect("the default local API address parses")
}
fn default_max_concurrency() -> usize {
    DEFAULT_MAX_CONCURRENCY
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the agent configuration {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML for the configuration (the message names the field and line).
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A field has a value the agent cannot use.
    #[error("{}: {field}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field path, e.g. `backend_urls[1]`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// A field problem found by [`AgentConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// The field path.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

// === impl AgentConfig ===

impl AgentConfig {
    /// A configuration with the defaults for everything but the name and the backend URLs.
    pub fn new(name: &str, backend_urls: Vec<String>) -> AgentConfig {
        AgentConfig {
            name: name.to_owned(),
            namespace: default_namespace(),
            subscriptions: Vec::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            backend_urls,
            api_url: String::new(),
            keepalive_interval: default_keepalive_interval(),
            keepalive_warning_timeout: default_keepalive_warning_timeout(),
            keepalive_critical_timeout: default_keepalive_critical_timeout(),
            deregister: false,
            agent_managed_entity: false,
            keepalive_pipelines: Vec::new(),
            key_file: default_key_file(),
            cert_file: default_cert_file(),
            ca_file: default_ca_file(),
            queue_dir: default_queue_dir(),
            local_api: default_local_api(),
            max_concurrency: default_max_concurrency(),
            keepalive_handlers: Vec::new(),
            deregistration_handler: String::new(),
            socket: SocketSettings::default(),
            allow_list: None,
            assets: AssetsConfig::default(),
        }
    }

    /// Reads, parses and checks `path`, resolving relative paths against its directory.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the file (and the field, when one is wrong).
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        AgentConfig::parse(&text, &base).map_err(|err| match err {
            ParseError::Syntax(message) => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            ParseError::Field(problem) => ConfigError::Invalid {
                path: path.to_owned(),
                field: problem.field,
                message: problem.message,
            },
        })
    }

    /// Parses the YAML text of a configuration; relative paths are resolved against `base`.
    ///
    /// # Errors
    ///
    /// [`ParseError`]: the parser's message, or the first field problem.
    pub fn parse(text: &str, base: &Path) -> Result<AgentConfig, ParseError> {
        if text.trim().is_empty() {
            return Err(ParseError::Syntax("the file is empty".to_owned()));
        }
        let mut config: AgentConfig =
            serde_yaml::from_str(text).map_err(|err| ParseError::Syntax(err.to_string()))?;
        if let Some(problem) = config.validate().into_iter().next() {
            return Err(ParseError::Field(problem));
        }
        for path in [
            &mut config.key_file,
            &mut config.cert_file,
            &mut config.ca_file,
            &mut config.queue_dir,
            &mut config.assets.cache_dir,
        ] {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        if let Some(path) = config.allow_list.as_mut() {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        if let Some(path) = config.assets.trusted_ca_file.as_mut() {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        Ok(config)
    }

    /// Every field problem, in field order.
    pub fn validate(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        let mut problem = |field: String, message: String| {
            problems.push(FieldProblem { field, message });
        };
        if let Some(message) = check_name(Kind::Entity, &self.name) {
            problem("name".into(), message);
        }
        if let Some(message) = check_name(Kind::Namespace, &self.namespace) {
            problem("namespace".into(), message);
        }
        for (index, subscription) in self.subscriptions.iter().enumerate() {
            if let Some(message) = check_subscription(subscription) {
                problem(format!("subscriptions[{index}]"), message);
            }
        }
        if self.backend_urls.is_empty() {
            problem(
                "backend_urls".into(),
                "must name at least one backend (wss://host:8081)".into(),
            );
        }
        for (index, url) in self.backend_urls.iter().enumerate() {
            if let Err(message) = parse_agent_url(url) {
                problem(format!("backend_urls[{index}]"), message);
            }
        }
        if !self.api_url.is_empty() {
            if let Err(message) = parse_api_url(&self.api_url) {
                problem("api_url".into(), message);
            }
        }
        if self.keepalive_interval == 0 {
            problem(
                "keepalive_interval".into(),
                "must be at least 1 second".into(),
            );
        }
        if self.keepalive_warning_timeout < self.keepalive_interval {
            problem(
                "keepalive_warning_timeout".into(),
                format!(
                    "must be at least keepalive_interval ({} s)",
                    self.keepalive_interval
                ),
            );
        }
        if self.keepalive_critical_timeout != 0
            && self.keepalive_critical_timeout < self.keepalive_warning_timeout
        {
            problem(
                "keepalive_critical_timeout".into(),
                "must be 0 (none) or at least keepalive_warning_timeout".into(),
            );
        }
        for (field, path) in [
            ("key_file", &self.key_file),
            ("cert_file", &self.cert_file),
            ("ca_file", &self.ca_file),
            ("queue_dir", &self.queue_dir),
        ] {
            if path.as_os_str().is_empty() {
                problem(field.into(), "must not be empty".into());
            }
        }
        if !self.local_api.ip().is_loopback() {
            problem(
                "local_api".into(),
                format!(
                    "{} is not a loopback address (the agent listens on 127.0.0.1 only)",
                    self.local_api
                ),
            );
        }
        if self.max_concurrency == 0 {
            problem("max_concurrency".into(), "must be at least 1".into());
        }
        // --- agent extras (issue 19, item 7) ---
        for (index, handler) in self.keepalive_handlers.iter().enumerate() {
            if let Some(message) = check_name(Kind::Handler, handler) {
                problem(format!("keepalive_handlers[{index}]"), message);
            }
        }
        if !self.deregistration_handler.is_empty() {
            if let Some(message) = check_name(Kind::Handler, &self.deregistration_handler) {
                problem("deregistration_handler".into(), message);
            }
        }
        if !self.socket.host.is_loopback() && !self.socket.allow_non_loopback {
            problem(
                "socket.host".into(),
                format!(
                    "{} is not a loopback address: anyone who reaches it can send events as this \
                     agent; set socket.allow_non_loopback: true to listen there anyway",
                    self.socket.host
                ),
            );
        }
        if self
            .allow_list
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            problem("allow_list".into(), "must not be empty".into());
        }
        let assets = &self.assets;
        if assets
            .trusted_ca_file
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            problem(
                "assets.trusted_ca_file".into(),
                "must not be empty (leave it out to trust the system's roots only)".into(),
            );
        }
        if assets.cache_dir.as_os_str().is_empty() {
            problem("assets.cache_dir".into(), "must not be empty".into());
        }
        if assets.max_cache_bytes < MIN_CACHE_BYTES {
            problem(
                "assets.max_cache_bytes".into(),
                format!("must be at least {MIN_CACHE_BYTES} (1 MiB)"),
            );
        }
        if assets.max_cache_assets == 0 {
            problem(
                "assets.max_cache_assets".into(),
                "must be at least 1".into(),
            );
        }
        problems
    }

    /// The configuration as YAML.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("the configuration is plain data and serialises")
    }
}

/// Why configuration text does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not YAML, or not the configuration's shape (the message names the field and line).
    #[error("{0}")]
    Syntax(String),
    /// A field's value is unusable.
    #[error("{0}")]
    Field(FieldProblem),
}

/// Checks a subscription name; `None` when it is fine.
pub fn check_subscription(subscription: &str) -> Option<String> {
    check_name(Kind::Role, subscription)
}

/// Parses an agent WebSocket URL: `wss://host[:port][/]` (the one check, shared with the
/// backend's `--agent-advertise-url`).
pub use cairn_api::agent::parse_agent_url;

/// Parses the REST API URL: `https://host[:port][/]`.
///
/// # Errors
///
/// A message saying what is wrong.
pub fn parse_api_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|err| format!("{text:?} is not a URL ({err})"))?;
    if url.scheme() != "https" {
        return Err(format!("{text:?} must be an https:// URL"));
    }
    if url.host().is_none() {
        return Err(format!("{text:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{text:?} must not carry credentials"));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(format!(
            "{text:?} must be the backend's base URL, without a path"
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "name: web-01\nbackend_urls: [\"wss://cairn.example.com:8081\"]\n";

    fn parse(text: &str) -> Result<AgentConfig, ParseError> {
        AgentConfig::parse(text, Path::new("/etc/cairn-agent"))
    }

    fn error(text: &str) -> String {
        parse(text).expect_err(text).to_string()
    }

    #[test]
    fn minimal_file_gets_the_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.name, "web-01");
        assert_eq!(config.namespace, "default");
        assert_eq!(config.keepalive_interval, 20);
        assert_eq!(config.keepalive_warning_timeout, 120);
        assert_eq!(config.keepalive_critical_timeout, 180);
        assert_eq!(config.local_api.to_string(), "127.0.0.1:3031");
        assert_eq!(config.key_file, Path::new("/etc/cairn-agent/agent.key"));
        assert_eq!(config.queue_dir, Path::new("/etc/cairn-agent/queue"));
        assert_eq!(config.max_concurrency, DEFAULT_MAX_CONCURRENCY);
        assert_eq!(config.assets.cache_dir, Path::new("/etc/cairn-agent/cache"));
        assert!(!config.assets.allow_http);
        assert_eq!(config.assets.trusted_ca_file, None);
        assert_eq!(config.assets.max_cache_bytes, 1024 * 1024 * 1024);
        assert_eq!(config.assets.max_cache_assets, 256);
    }

    #[test]
    fn the_assets_section() {
        let config = parse(&format!(
            "{MINIMAL}assets:\n  trusted_ca_file: assets-ca.pem\n  allow_http: true\n  \
             cache_dir: /var/cache/cairn-agent\n  max_cache_bytes: 2097152\n"
        ))
        .unwrap();
        assert_eq!(
            config.assets.trusted_ca_file.as_deref(),
            Some(Path::new("/etc/cairn-agent/assets-ca.pem"))
        );
        assert!(config.assets.allow_http);
        assert_eq!(config.assets.cache_dir, Path::new("/var/cache/cairn-agent"));
        assert_eq!(config.assets.max_cache_bytes, 2_097_152);
        assert_eq!(
            error(&format!("{MINIMAL}assets:\n  max_cache_bytes: 10\n")),
            "assets.max_cache_bytes: must be at least 1048576 (1 MiB)"
        );
        assert_eq!(
            error(&format!("{MINIMAL}assets:\n  max_cache_assets: 0\n")),
            "assets.max_cache_assets: must be at least 1"
        );
        assert_eq!(
            error(&format!("{MINIMAL}assets:\n  cache_dir: \"\"\n")),
            "assets.cache_dir: must not be empty"
        );
        let unknown = error(&format!("{MINIMAL}assets:\n  alow_http: true\n"));
        assert!(unknown.contains("unknown field `alow_http`"), "{unknown}");
    }

    #[test]
    fn round_trips_through_yaml() {
        let mut config = AgentConfig::new("web-01", vec!["wss://[::1]:8081".into()]);
        config.key_file = "/abs/agent.key".into();
        config.cert_file = "/abs/agent.pem".into();
        config.ca_file = "/abs/ca.pem".into();
        config.queue_dir = "/abs/queue".into();
        config.assets.cache_dir = "/abs/cache".into();
        config.subscriptions = vec!["linux".into()];
        config.labels.insert("team".into(), "ops".into());
        assert_eq!(parse(&config.to_yaml()).unwrap(), config);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(error(""), "the file is empty");
        let unknown = error(&format!("{MINIMAL}nmae: x\n"));
        assert!(unknown.contains("unknown field `nmae`"), "{unknown}");
        assert!(unknown.contains("line 3"), "{unknown}");
        let wrong_type = error(&format!("{MINIMAL}keepalive_interval: soon\n"));
        assert!(
            wrong_type.starts_with("keepalive_interval: invalid type"),
            "{wrong_type}"
        );
        let missing = error("name: web-01\n");
        assert!(
            missing.contains("missing field `backend_urls`"),
            "{missing}"
        );
        assert!(error("- a\n- b\n").contains("invalid type"));
        assert_eq!(
            error("name: web/01\nbackend_urls: [\"wss://h:8081\"]\n"),
            format!(
                "name: {}",
                check_name(Kind::Entity, "web/01").expect("invalid")
            )
        );
        assert_eq!(
            error("name: web-01\nbackend_urls: []\n"),
            "backend_urls: must name at least one backend (wss://host:8081)"
        );
        assert_eq!(
            error("name: web-01\nbackend_urls: [\"wss://h:8081\", \"https://h:8081\"]\n"),
            "backend_urls[1]: \"https://h:8081\" must be a wss:// URL (the agent session always uses TLS)"
        );
        assert_eq!(
            error(&format!("{MINIMAL}local_api: 0.0.0.0:3031\n")),
            "local_api: 0.0.0.0:3031 is not a loopback address (the agent listens on 127.0.0.1 only)"
        );
        let bad_addr = error(&format!("{MINIMAL}local_api: localhost\n"));
        assert!(bad_addr.starts_with("local_api: "), "{bad_addr}");
        assert_eq!(
            error(&format!("{MINIMAL}keepalive_interval: 0\n")),
            "keepalive_interval: must be at least 1 second"
        );
        assert_eq!(
            error(&format!("{MINIMAL}subscriptions: [linux, \"\"]\n")),
            "subscriptions[1]: must not be empty"
        );
        assert_eq!(
            error(&format!("{MINIMAL}max_concurrency: 0\n")),
            "max_concurrency: must be at least 1"
        );
    }

    #[test]
    fn agent_extras_parse_and_check() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.socket, SocketSettings::default());
        assert_eq!(config.socket.addr().to_string(), "127.0.0.1:3030");
        assert_eq!(config.allow_list, None);
        assert!(config.keepalive_handlers.is_empty());
        assert!(
            !config.to_yaml().contains("socket"),
            "defaults are left out"
        );

        let config = parse(&format!(
            "{MINIMAL}keepalive_handlers: [slack, pager]\nderegistration_handler: cleanup\n\
             socket: {{port: 0, disable: true}}\nallow_list: allow.yaml\n"
        ))
        .unwrap();
        assert_eq!(config.keepalive_handlers, ["slack", "pager"]);
        assert_eq!(config.deregistration_handler, "cleanup");
        assert_eq!(config.socket.port, 0);
        assert!(config.socket.disable);
        assert_eq!(
            config.allow_list.as_deref(),
            Some(Path::new("/etc/cairn-agent/allow.yaml"))
        );
        assert_eq!(parse(&config.to_yaml()).unwrap(), config);

        assert_eq!(
            error(&format!("{MINIMAL}socket: {{host: 0.0.0.0}}\n")),
            "socket.host: 0.0.0.0 is not a loopback address: anyone who reaches it can send \
             events as this agent; set socket.allow_non_loopback: true to listen there anyway"
        );
        let open = parse(&format!(
            "{MINIMAL}socket: {{host: 0.0.0.0, allow_non_loopback: true}}\n"
        ))
        .unwrap();
        assert!(!open.socket.host.is_loopback());
        let typo = error(&format!("{MINIMAL}socket: {{prot: 1}}\n"));
        assert!(typo.contains("unknown field `prot`"), "{typo}");
        let bad_handler = error(&format!("{MINIMAL}keepalive_handlers: [\"a b\"]\n"));
        assert!(
            bad_handler.starts_with("keepalive_handlers[0]: "),
            "{bad_handler}"
        );
        let bad_handler = error(&format!("{MINIMAL}deregistration_handler: \"x/y\"\n"));
        assert!(
            bad_handler.starts_with("deregistration_handler: "),
            "{bad_handler}"
        );
    }

    #[test]
    fn load_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("agent.yaml");
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "cannot read the agent configuration {}",
                path.display()
            )),
            "{err}"
        );
        std::fs::write(&path, format!("{MINIMAL}keepalive_interval: 0\n")).unwrap();
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}: keepalive_interval: must be at least 1 second",
                path.display()
            )
        );
        std::fs::write(&path, MINIMAL).unwrap();
        let config = AgentConfig::load(&path).unwrap();
        assert_eq!(config.ca_file, tmp.path().join("ca.pem"));
    }

    #[test]
    fn urls() {
        assert!(parse_agent_url("wss://10.0.0.1:8081").is_ok());
        assert!(parse_agent_url("ws://10.0.0.1:8081").is_err());
        assert!(parse_agent_url("wss://user:pw@h:8081").is_err());
        let long = format!("wss://{}.example:8081", "a".repeat(1024));
        let err = parse_agent_url(&long).unwrap_err();
        assert!(err.ends_with("is longer than 1024 bytes"), "{err}");
        assert!(err.len() < 200, "{err}");
        assert!(parse_api_url("https://h:8080").is_ok());
        assert!(parse_api_url("https://h:8080/").is_ok());
        assert!(parse_api_url("https://h:8080/api").is_err());
        assert!(parse_api_url("http://h:8080").is_err());
        assert!(parse_api_url("h:8080").is_err());
    }
}
