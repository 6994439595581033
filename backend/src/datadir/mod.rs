//! The backend's data directory: where each file lives, and writing a new one safely for
//! `cairn-backend init`; and which store the backend uses (`store.json`).
//!
//! ```text
//! DIR/
//!   cluster.json              name, creation time, CA fingerprint; written last
//!   store.json                the store engine and, for etcd, its endpoints, key prefix and
//!                             TLS file paths (never a secret); written before cluster.json;
//!                             a data dir without it (from before store.json) is embedded
//!   store.redb                the embedded store (written by `store`); none with etcd
//!   tls/ca.pem, ca.key        the cluster CA: signs the API and agent-listener certificates
//!   tls/api.pem, api.key      the REST API's server certificate
//!   tls/agent-ca.pem, .key    the agent CA: signs agents' client certificates
//!   tls/agent-listener.pem    the agent listener's server certificate (signed by the cluster CA)
//!   tls/agent-listener.key
//!   jwt/private.pem           the ES256 token signing key (PKCS#8; a SEC1 key given to init is converted)
//!   jwt/public.pem            its public key (SubjectPublicKeyInfo)
//! ```
//!
//! Private keys are `0600`, certificates, `cluster.json` and `store.json` `0644`, directories
//! `0700`.
//!
//! With the etcd store, the cluster's state lives in etcd and the data dir holds only
//! certificates, keys and settings: a second backend joins the same cluster by starting with a
//! copy of the first one's data dir.

pub mod tls;

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_api::validate::check_name;
use cairn_api::Kind;
use serde::{Deserialize, Serialize};

use crate::pki::{self, CertifiedKeyPem, JwtKeyPair, PkiError};

/// Subject common name of the REST API's server certificate.
pub const API_CERT_COMMON_NAME: &str = "cairn-api";

/// Subject common name of the agent listener's server certificate.
pub const AGENT_LISTENER_COMMON_NAME: &str = "cairn-agent-listener";

/// Mode of every directory `init` creates.
const DIR_MODE: u32 = 0o700;
/// Mode of private keys.
const SECRET_MODE: u32 = 0o600;
/// Mode of certificates, public keys, `cluster.json` and `store.json`.
const PUBLIC_MODE: u32 = 0o644;

/// The etcd key prefix unless `--etcd-prefix` says otherwise.
pub const DEFAULT_ETCD_PREFIX: &str = "/cairn/";

/// `Result` with [`DataDirError`] as the default error.
pub type Result<T, E = DataDirError> = std::result::Result<T, E>;

/// A backend data directory: knows where each file lives, owns none of their contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

/// What `init` needs to know to write a new data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitFiles {
    /// The cluster's name: recorded in `cluster.json` and in the CAs' names. Must be a valid
    /// federation `Cluster` name.
    pub cluster_name: String,
    /// Extra names the API and agent listener certificates are valid for (DNS names or IP
    /// addresses); `localhost`, `127.0.0.1` and `::1` are always added.
    pub hostnames: Vec<String>,
    /// A shared JWT key pair to copy in, as `(private key file, public key file)`; `None`
    /// generates a new pair. See [`InitFiles::jwt_key_files`] to build it from two flags.
    pub jwt: Option<(PathBuf, PathBuf)>,
}

/// What `init` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitSummary {
    /// The SHA-256 fingerprint of the cluster CA's certificate (64 lowercase hex digits), which
    /// join tokens carry.
    pub ca_fingerprint_sha256: String,
    /// Every file written, in the order written; `cluster.json` is last.
    pub files: Vec<PathBuf>,
    /// Whether the JWT key pair was copied from the given files rather than generated.
    pub jwt_key_copied: bool,
}

/// The contents of `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The cluster's name.
    pub name: String,
    /// When `init` ran, in seconds since the Unix epoch.
    pub created_at: u64,
    /// The SHA-256 fingerprint of `tls/ca.pem`, 64 lowercase hex digits.
    pub ca_fingerprint_sha256: String,
}

/// Which engine holds the cluster's state (`--store`, and the `engine` of `store.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreEngine {
    /// redb, one file (`store.redb`) in the data dir: one backend.
    Embedded,
    /// An etcd cluster, shared by every backend of the cluster.
    Etcd,
}

/// Which store a backend opens and how it reaches it: the contents of `store.json`, which
/// `init` writes and `start` reads.
///
/// The JSON is flat, tagged by `engine`: `{"engine": "embedded"}`, or
/// `{"engine": "etcd", "endpoints": [...], "prefix": "/cairn/", "tls": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "engine", rename_all = "lowercase")]
pub enum StoreSettings {
    /// The embedded store, `store.redb` in the data dir.
    Embedded,
    /// An etcd cluster.
    Etcd(EtcdSettings),
}

/// Where the etcd store connects and which keys it owns; build with [`EtcdSettings::new`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdSettings {
    /// Client URLs of the etcd members: all `http://`, or all `https://` with [`Self::tls`].
    /// None carries a user name or password.
    pub endpoints: Vec<String>,
    /// The key prefix that holds the cluster's keys; not empty, ends with `/`.
    pub prefix: String,
    /// Client certificate authentication to etcd; `None` for plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EtcdTlsFiles>,
}

/// The files of client certificate TLS to etcd (`--etcd-trusted-ca-file`, `--etcd-cert-file`,
/// `--etcd-key-file`), as absolute paths: only the paths are recorded, never the contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdTlsFiles {
    /// The CA that signed the etcd members' certificates (PEM).
    pub trusted_ca_file: PathBuf,
    /// This backend's client certificate (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
}

/// The store flags of `init` or `start` as given on the command line; `None` for a flag not
/// given. [`StoreFlags::for_init`] and [`StoreFlags::for_start`] turn them into
/// [`StoreSettings`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreFlags {
    /// `--store`.
    pub engine: Option<StoreEngine>,
    /// `--etcd-endpoints`.
    pub etcd_endpoints: Option<Vec<String>>,
    /// `--etcd-prefix`.
    pub etcd_prefix: Option<String>,
    /// `--etcd-trusted-ca-file`, `--etcd-cert-file` and `--etcd-key-file`, which come together.
    pub etcd_tls: Option<EtcdTlsFiles>,
}

/// Why a data directory could not be written or read.
///
/// Every variant but `CertificatesFailed` on an internal fault is expected: it describes the
/// directory or the operator's input, and a retry without a change fails the same way.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// `init` found `cluster.json`: the directory is in use and nothing was touched.
    #[error("data dir {} is already initialised ({} exists); refusing to overwrite", root.display(), cluster_file.display())]
    AlreadyInitialised {
        /// The data directory.
        root: PathBuf,
        /// Its `cluster.json`.
        cluster_file: PathBuf,
    },
    /// `init` found its own files without `cluster.json`: an earlier `init` stopped half-way.
    #[error("{} already exists but {} does not: an earlier init of {} did not finish; remove the data dir and run init again", path.display(), cluster_file.display(), root.display())]
    InterruptedInit {
        /// The file or directory that is in the way.
        path: PathBuf,
        /// The missing `cluster.json`.
        cluster_file: PathBuf,
        /// The data directory.
        root: PathBuf,
    },
    /// `start` found no `cluster.json`.
    #[error("data dir {} is not initialised: run cairn-backend init", root.display())]
    NotInitialised {
        /// The data directory.
        root: PathBuf,
    },
    /// The cluster name breaks the federation `Cluster` naming rule.
    #[error("cluster name `{name}` is invalid: {reason}")]
    InvalidClusterName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Only one of the two JWT key files was given.
    #[error("--jwt-private-key-file and --jwt-public-key-file must be given together; {missing} is missing")]
    JwtKeyFilesIncomplete {
        /// The flag that was not given.
        missing: &'static str,
    },
    /// The given JWT key files are not an ES256 key pair.
    #[error("jwt key pair {} and {} is not usable", private_key.display(), public_key.display())]
    JwtKeyPairInvalid {
        /// The private key file.
        private_key: PathBuf,
        /// The public key file.
        public_key: PathBuf,
        /// What is wrong.
        #[source]
        source: PkiError,
    },
    /// Making the CAs, certificates or JWT keys failed: a bad hostname (expected) or a crypto
    /// fault (internal).
    #[error("failed to create the cluster's certificates and keys")]
    CertificatesFailed(#[source] PkiError),
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    ReadFailed {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A directory could not be created.
    #[error("cannot create directory {}", path.display())]
    CreateDirFailed {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file could not be written (or its directory synced).
    #[error("cannot write {}", path.display())]
    WriteFailed {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// `cluster.json` is not what `init` writes.
    #[error("cannot parse {}", path.display())]
    ClusterFileInvalid {
        /// `cluster.json`.
        path: PathBuf,
        /// What the JSON parser reported.
        #[source]
        source: serde_json::Error,
    },
    /// `tls/ca.pem` holds no certificate.
    #[error("cannot read the ca certificate in {}", path.display())]
    CaCertInvalid {
        /// `tls/ca.pem`.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: PkiError,
    },
    /// The store flags do not describe a usable store (etcd flags without `--store etcd`, a
    /// missing or malformed endpoint, TLS files with plain HTTP endpoints).
    #[error("{problem}")]
    StoreFlagsInvalid {
        /// What is wrong, naming the flag.
        problem: String,
    },
    /// `store.json` is not valid JSON or not what `init` writes.
    #[error("cannot parse {}", path.display())]
    StoreFileUnparsable {
        /// `store.json`.
        path: PathBuf,
        /// What the JSON parser reported.
        #[source]
        source: serde_json::Error,
    },
    /// `store.json` parses but describes no usable store.
    #[error("{} is invalid: {problem}", path.display())]
    StoreFileInvalid {
        /// `store.json`.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// `start` was asked for another engine than the data dir's: it would open another, empty
    /// store rather than the cluster's.
    #[error("data dir {} uses the {recorded} store ({recorded_in}), but --store {requested} was given: refusing to start on a store that does not hold this cluster; leave out --store, or init a new data dir for the {requested} store", root.display())]
    StoreEngineMismatch {
        /// The data directory.
        root: PathBuf,
        /// Where the engine is recorded (`store.json`, or its absence).
        recorded_in: String,
        /// The engine the data dir records.
        recorded: StoreEngine,
        /// The engine asked for.
        requested: StoreEngine,
    },
    /// `start` was asked for another etcd prefix than the data dir's: another cluster's keys,
    /// or none.
    #[error("data dir {} uses etcd prefix {recorded} ({}), but --etcd-prefix {requested} was given: refusing to start on keys that do not hold this cluster; leave out --etcd-prefix", root.display(), store_file.display())]
    StorePrefixMismatch {
        /// The data directory.
        root: PathBuf,
        /// `store.json`.
        store_file: PathBuf,
        /// The prefix it records.
        recorded: String,
        /// The prefix asked for.
        requested: String,
    },
    /// `tls/ca.pem` is not the CA that `cluster.json` records, so join tokens would pin the
    /// wrong certificate.
    #[error("the ca certificate {} does not match the fingerprint recorded in {}", ca_cert.display(), cluster_file.display())]
    CaFingerprintMismatch {
        /// `tls/ca.pem`.
        ca_cert: PathBuf,
        /// `cluster.json`.
        cluster_file: PathBuf,
    },
}

// === impl DataDir ===

impl DataDir {
    /// A data directory rooted at `root`; nothing is read or created.
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `tls/ca.pem`: the cluster CA's certificate, which API clients and agents trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.tls_dir().join("ca.pem")
    }

    /// `tls/ca.key`: the cluster CA's private key. Secret.
    pub fn ca_key(&self) -> PathBuf {
        self.tls_dir().join("ca.key")
    }

    /// `tls/api.pem`: the REST API's server certificate.
    pub fn api_cert(&self) -> PathBuf {
        self.tls_dir().join("api.pem")
    }

    /// `tls/api.key`: the REST API's private key. Secret.
    pub fn api_key(&self) -> PathBuf {
        self.tls_dir().join("api.key")
    }

    /// `tls/agent-ca.pem`: the agent CA's certificate; agents' client certificates chain to it.
    pub fn agent_ca_cert(&self) -> PathBuf {
        self.tls_dir().join("agent-ca.pem")
    }

    /// `tls/agent-ca.key`: the agent CA's private key, which signs agents' CSRs. Secret.
    pub fn agent_ca_key(&self) -> PathBuf {
        self.tls_dir().join("agent-ca.key")
    }

    /// `tls/agent-listener.pem`: the agent listener's server certificate.
    pub fn agent_listener_cert(&self) -> PathBuf {
        self.tls_dir().join("agent-listener.pem")
    }

    /// `tls/agent-listener.key`: the agent listener's private key. Secret.
    pub fn agent_listener_key(&self) -> PathBuf {
        self.tls_dir().join("agent-listener.key")
    }

    /// `jwt/private.pem`: the ES256 token signing key (PKCS#8). Secret.
    pub fn jwt_private_key(&self) -> PathBuf {
        self.jwt_dir().join("private.pem")
    }

    /// `jwt/public.pem`: the ES256 token verification key (SubjectPublicKeyInfo).
    pub fn jwt_public_key(&self) -> PathBuf {
        self.jwt_dir().join("public.pem")
    }

    /// `cluster.json`: its presence marks an initialised directory.
    pub fn cluster_file(&self) -> PathBuf {
        self.root.join("cluster.json")
    }

    /// `store.redb`: the embedded store.
    pub fn store_file(&self) -> PathBuf {
        self.root.join("store.redb")
    }

    /// `store.json`: which store the backend uses ([`StoreSettings`]).
    pub fn store_settings_file(&self) -> PathBuf {
        self.root.join("store.json")
    }

    fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }

    fn jwt_dir(&self) -> PathBuf {
        self.root.join("jwt")
    }

    /// Where `cluster.json` is written before it is renamed into place.
    fn cluster_file_tmp(&self) -> PathBuf {
        self.root.join(".cluster.json.tmp")
    }
}

// === impl InitFiles ===

impl InitFiles {
    /// Pairs the `--jwt-private-key-file` and `--jwt-public-key-file` values: both or neither.
    ///
    /// # Errors
    ///
    /// [`DataDirError::JwtKeyFilesIncomplete`] when only one is given.
    pub fn jwt_key_files(
        private_key: Option<PathBuf>,
        public_key: Option<PathBuf>,
    ) -> Result<Option<(PathBuf, PathBuf)>> {
        match (private_key, public_key) {
            (Some(private_key), Some(public_key)) => Ok(Some((private_key, public_key))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(DataDirError::JwtKeyFilesIncomplete {
                missing: "--jwt-public-key-file",
            }),
            (None, Some(_)) => Err(DataDirError::JwtKeyFilesIncomplete {
                missing: "--jwt-private-key-file",
            }),
        }
    }
}

// === impl StoreEngine ===

impl std::fmt::Display for StoreEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreEngine::Embedded => "embedded",
            StoreEngine::Etcd => "etcd",
        })
    }
}

// === impl StoreSettings ===

impl StoreSettings {
    /// The engine these settings open.
    pub fn engine(&self) -> StoreEngine {
        match self {
            StoreSettings::Embedded => StoreEngine::Embedded,
            StoreSettings::Etcd(_) => StoreEngine::Etcd,
        }
    }

    /// Refuses to open `requested` in a data dir that records `self`: another engine, or
    /// another etcd prefix, would be another (usually empty) store.
    ///
    /// # Errors
    ///
    /// [`DataDirError::StoreEngineMismatch`] or [`DataDirError::StorePrefixMismatch`].
    pub fn check_same_store(&self, dir: &DataDir, requested: &StoreSettings) -> Result<()> {
        match (self, requested) {
            (StoreSettings::Etcd(recorded), StoreSettings::Etcd(requested))
                if recorded.prefix != requested.prefix =>
            {
                Err(DataDirError::StorePrefixMismatch {
                    root: dir.root.clone(),
                    store_file: dir.store_settings_file(),
                    recorded: recorded.prefix.clone(),
                    requested: requested.prefix.clone(),
                })
            }
            _ if self.engine() != requested.engine() => Err(DataDirError::StoreEngineMismatch {
                root: dir.root.clone(),
                recorded_in: recorded_in(dir)?,
                recorded: self.engine(),
                requested: requested.engine(),
            }),
            _ => Ok(()),
        }
    }
}

// === impl EtcdSettings ===

impl EtcdSettings {
    /// Checked settings: endpoints trimmed, the prefix ending with `/`, TLS paths absolute.
    ///
    /// # Errors
    ///
    /// What is wrong, as a message naming the flag: no endpoint; an endpoint that is not an
    /// `http://` or `https://` URL or carries a user name or password; `https://` without the
    /// TLS files or `http://` with them; an empty prefix.
    pub fn new(
        endpoints: Vec<String>,
        prefix: String,
        tls: Option<EtcdTlsFiles>,
    ) -> std::result::Result<EtcdSettings, String> {
        let endpoints = endpoints
            .into_iter()
            .map(|endpoint| endpoint.trim().to_owned())
            .collect();
        let tls = match tls {
            Some(tls) => Some(EtcdTlsFiles {
                trusted_ca_file: absolute(tls.trusted_ca_file, "--etcd-trusted-ca-file")?,
                cert_file: absolute(tls.cert_file, "--etcd-cert-file")?,
                key_file: absolute(tls.key_file, "--etcd-key-file")?,
            }),
            None => None,
        };
        let prefix = match prefix.trim() {
            "" => String::new(),
            trimmed if trimmed.ends_with('/') => trimmed.to_owned(),
            trimmed => format!("{trimmed}/"),
        };
        let settings = EtcdSettings {
            endpoints,
            prefix,
            tls,
        };
        settings.check()?;
        Ok(settings)
    }

    /// The endpoints comma-separated, as logs and errors show them.
    pub fn joined_endpoints(&self) -> String {
        self.endpoints.join(",")
    }

    /// Checks what [`EtcdSettings::new`] guarantees, for settings read from `store.json`.
    fn check(&self) -> std::result::Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("no etcd endpoint given (--etcd-endpoints)".to_owned());
        }
        for endpoint in &self.endpoints {
            let (scheme, rest) = if let Some(rest) = endpoint.strip_prefix("https://") {
                ("https", rest)
            } else if let Some(rest) = endpoint.strip_prefix("http://") {
                ("http", rest)
            } else {
                return Err(format!(
                    "etcd endpoint `{}` is not an http:// or https:// URL (--etcd-endpoints)",
                    shown_endpoint(endpoint)
                ));
            };
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            if authority.contains('@') {
                return Err(format!(
                    "etcd endpoint `{}` carries a user name or password, which is not supported: \
                     authenticate with --etcd-cert-file and --etcd-key-file",
                    shown_endpoint(endpoint)
                ));
            }
            if authority.is_empty() {
                return Err(format!(
                    "etcd endpoint `{endpoint}` names no host (--etcd-endpoints)"
                ));
            }
            match (scheme, &self.tls) {
                ("https", None) => {
                    return Err(format!(
                        "etcd endpoint `{endpoint}` is https: give --etcd-trusted-ca-file, \
                         --etcd-cert-file and --etcd-key-file for client certificate TLS"
                    ))
                }
                ("http", Some(_)) => {
                    return Err(format!(
                        "etcd endpoint `{endpoint}` is plain http, but TLS files are given: \
                         client certificate TLS needs https:// endpoints"
                    ))
                }
                _ => {}
            }
        }
        if self.prefix.is_empty() {
            return Err(
                "the etcd prefix is empty: give one such as /cairn/ (--etcd-prefix); \
                 the whole key space is not supported"
                    .to_owned(),
            );
        }
        if !self.prefix.ends_with('/') {
            return Err(format!(
                "the etcd prefix `{}` does not end with /",
                self.prefix
            ));
        }
        Ok(())
    }
}

// === impl StoreFlags ===

impl StoreFlags {
    /// The settings `init` records: the embedded store unless `--store etcd`, which needs
    /// `--etcd-endpoints` and takes `--etcd-prefix` (default [`DEFAULT_ETCD_PREFIX`]) and the
    /// TLS files.
    ///
    /// # Errors
    ///
    /// [`DataDirError::StoreFlagsInvalid`]: etcd flags without `--store etcd`, `--store etcd`
    /// without endpoints, or settings [`EtcdSettings::new`] refuses.
    pub fn for_init(self) -> Result<StoreSettings> {
        match self.engine.unwrap_or(StoreEngine::Embedded) {
            StoreEngine::Embedded => {
                self.refuse_etcd_flags("without --store etcd")?;
                Ok(StoreSettings::Embedded)
            }
            StoreEngine::Etcd => {
                let Some(endpoints) = self.etcd_endpoints else {
                    return Err(invalid_flags(
                        "--store etcd needs --etcd-endpoints (the etcd members' client URLs, \
                         comma-separated)",
                    ));
                };
                let prefix = self
                    .etcd_prefix
                    .unwrap_or_else(|| DEFAULT_ETCD_PREFIX.to_owned());
                EtcdSettings::new(endpoints, prefix, self.etcd_tls)
                    .map(StoreSettings::Etcd)
                    .map_err(invalid_flags)
            }
        }
    }

    /// The settings `start` opens: what the data dir records (`recorded`, from
    /// [`read_store_settings`]), with the endpoints and TLS files of the flags, when given,
    /// instead of the recorded ones (etcd has moved).
    ///
    /// # Errors
    ///
    /// [`DataDirError::StoreEngineMismatch`] when `--store` names another engine than the
    /// recorded one, [`DataDirError::StorePrefixMismatch`] for another `--etcd-prefix`, and
    /// [`DataDirError::StoreFlagsInvalid`] for etcd flags on an embedded data dir or settings
    /// [`EtcdSettings::new`] refuses.
    pub fn for_start(self, dir: &DataDir, recorded: StoreSettings) -> Result<StoreSettings> {
        if let Some(requested) = self.engine {
            if requested != recorded.engine() {
                return Err(DataDirError::StoreEngineMismatch {
                    root: dir.root.clone(),
                    recorded_in: recorded_in(dir)?,
                    recorded: recorded.engine(),
                    requested,
                });
            }
        }
        match recorded {
            StoreSettings::Embedded => {
                self.refuse_etcd_flags(&format!(
                    "for data dir {}, which uses the embedded store",
                    dir.root.display()
                ))?;
                Ok(StoreSettings::Embedded)
            }
            StoreSettings::Etcd(recorded) => {
                let prefix = match self.etcd_prefix {
                    Some(given) => {
                        let given = EtcdSettings::new(
                            recorded.endpoints.clone(),
                            given,
                            recorded.tls.clone(),
                        )
                        .map_err(invalid_flags)?
                        .prefix;
                        if given != recorded.prefix {
                            return Err(DataDirError::StorePrefixMismatch {
                                root: dir.root.clone(),
                                store_file: dir.store_settings_file(),
                                recorded: recorded.prefix,
                                requested: given,
                            });
                        }
                        given
                    }
                    None => recorded.prefix,
                };
                let endpoints = self.etcd_endpoints.unwrap_or(recorded.endpoints);
                let tls = self.etcd_tls.or(recorded.tls);
                EtcdSettings::new(endpoints, prefix, tls)
                    .map(StoreSettings::Etcd)
                    .map_err(invalid_flags)
            }
        }
    }

    /// Refuses the etcd flags that were given; `context` says why they do not apply.
    fn refuse_etcd_flags(&self, context: &str) -> Result<()> {
        let mut given = Vec::new();
        if self.etcd_endpoints.is_some() {
            given.push("--etcd-endpoints");
        }
        if self.etcd_prefix.is_some() {
            given.push("--etcd-prefix");
        }
        if self.etcd_tls.is_some() {
            given.push("--etcd-trusted-ca-file, --etcd-cert-file, --etcd-key-file");
        }
        if given.is_empty() {
            return Ok(());
        }
        Err(invalid_flags(format!(
            "{} given {context}: the etcd flags apply to the etcd store only",
            given.join(", ")
        )))
    }
}

/// Creates a new data directory: the cluster CA, the API server certificate, the agent CA, the
/// agent listener's server certificate, the JWT key pair (copied or generated) and, last,
/// `cluster.json`.
///
/// # Guarantees
///
/// - Every input is checked and all key material is made in memory before anything is
///   created, so bad input (a taken directory, a bad name or hostname, a mismatched JWT pair)
///   leaves the file system untouched.
/// - No existing file is ever overwritten: files are opened with `create_new`.
/// - Private keys are `0600`, other files `0644` and new directories `0700`, whatever the
///   umask.
/// - `cluster.json` appears, atomically, only after every other file is written and synced.
///   A directory without it is not initialised, and `init` refuses to reuse one that holds a
///   half-written set ([`DataDirError::InterruptedInit`]).
///
/// # Caveats
///
/// The server certificates are valid for one year and nothing renews them yet.
pub fn write_init_files(dir: &DataDir, init: &InitFiles) -> Result<InitSummary> {
    write_init_files_for_store(dir, init, &StoreSettings::Embedded)
}

/// [`write_init_files`] for a data dir that uses `store`, recorded in `store.json` (written
/// just before `cluster.json`, so that an initialised data dir always says which store it
/// uses), with the same guarantees.
///
/// # Errors
///
/// As [`write_init_files`].
pub fn write_init_files_for_store(
    dir: &DataDir,
    init: &InitFiles,
    store: &StoreSettings,
) -> Result<InitSummary> {
    let cluster_file = dir.cluster_file();
    if exists(&cluster_file)? {
        return Err(DataDirError::AlreadyInitialised {
            root: dir.root.clone(),
            cluster_file,
        });
    }
    if let Some(reason) = check_name(Kind::Cluster, &init.cluster_name) {
        return Err(DataDirError::InvalidClusterName {
            name: init.cluster_name.clone(),
            reason,
        });
    }
    let (jwt, jwt_key_copied) = match &init.jwt {
        Some((private_key, public_key)) => (read_jwt_keypair(private_key, public_key)?, true),
        None => (
            pki::generate_jwt_keypair().map_err(DataDirError::CertificatesFailed)?,
            false,
        ),
    };
    let material = Material::generate(&init.cluster_name, &init.hostnames, jwt)
        .map_err(DataDirError::CertificatesFailed)?;
    let cluster = ClusterInfo {
        name: init.cluster_name.clone(),
        created_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since_epoch| since_epoch.as_secs()),
        ca_fingerprint_sha256: pki::fingerprint_sha256(&material.ca.cert_pem)
            .map_err(DataDirError::CertificatesFailed)?,
    };

    let mut writer = Writer {
        dir,
        files: Vec::new(),
    };
    writer.create_root()?;
    writer.create_dir(&dir.tls_dir())?;
    writer.create_dir(&dir.jwt_dir())?;
    writer.write_pair(&dir.ca_cert(), &dir.ca_key(), &material.ca)?;
    writer.write_pair(&dir.api_cert(), &dir.api_key(), &material.api)?;
    writer.write_pair(
        &dir.agent_ca_cert(),
        &dir.agent_ca_key(),
        &material.agent_ca,
    )?;
    writer.write_pair(
        &dir.agent_listener_cert(),
        &dir.agent_listener_key(),
        &material.agent_listener,
    )?;
    writer.write_file(
        &dir.jwt_private_key(),
        &material.jwt.private_pem,
        SECRET_MODE,
    )?;
    writer.write_file(&dir.jwt_public_key(), &material.jwt.public_pem, PUBLIC_MODE)?;
    writer.sync_dir(&dir.tls_dir())?;
    writer.sync_dir(&dir.jwt_dir())?;
    let mut store_json = serde_json::to_string_pretty(store)
        .expect("StoreSettings has only strings and paths, which always serialize");
    store_json.push('\n');
    writer.write_file(&dir.store_settings_file(), &store_json, PUBLIC_MODE)?;
    writer.write_cluster_file(&cluster)?;

    Ok(InitSummary {
        ca_fingerprint_sha256: cluster.ca_fingerprint_sha256,
        files: writer.files,
        jwt_key_copied,
    })
}

/// Reads `cluster.json`, and checks that `tls/ca.pem` is the CA it records.
///
/// # Errors
///
/// [`DataDirError::NotInitialised`] when `cluster.json` does not exist; otherwise an error
/// naming the file that cannot be read or parsed, or [`DataDirError::CaFingerprintMismatch`].
pub fn read_cluster(dir: &DataDir) -> Result<ClusterInfo> {
    let path = dir.cluster_file();
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(DataDirError::NotInitialised {
                root: dir.root.clone(),
            })
        }
        Err(source) => return Err(DataDirError::ReadFailed { path, source }),
    };
    let cluster: ClusterInfo =
        serde_json::from_slice(&bytes).map_err(|source| DataDirError::ClusterFileInvalid {
            path: path.clone(),
            source,
        })?;

    let ca_cert = dir.ca_cert();
    let ca_pem = fs::read_to_string(&ca_cert).map_err(|source| DataDirError::ReadFailed {
        path: ca_cert.clone(),
        source,
    })?;
    let fingerprint =
        pki::fingerprint_sha256(&ca_pem).map_err(|source| DataDirError::CaCertInvalid {
            path: ca_cert.clone(),
            source,
        })?;
    if fingerprint != cluster.ca_fingerprint_sha256 {
        return Err(DataDirError::CaFingerprintMismatch {
            ca_cert,
            cluster_file: path,
        });
    }
    Ok(cluster)
}

/// Reads `store.json`: which store the data dir's cluster uses. A data dir without it (from
/// before `store.json`) uses the embedded store.
///
/// # Errors
///
/// [`DataDirError::StoreFileUnparsable`] or [`DataDirError::StoreFileInvalid`] naming the file,
/// or [`DataDirError::ReadFailed`].
pub fn read_store_settings(dir: &DataDir) -> Result<StoreSettings> {
    let path = dir.store_settings_file();
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(StoreSettings::Embedded),
        Err(source) => return Err(DataDirError::ReadFailed { path, source }),
    };
    let settings: StoreSettings =
        serde_json::from_slice(&bytes).map_err(|source| DataDirError::StoreFileUnparsable {
            path: path.clone(),
            source,
        })?;
    if let StoreSettings::Etcd(etcd) = &settings {
        etcd.check()
            .map_err(|problem| DataDirError::StoreFileInvalid { path, problem })?;
    }
    Ok(settings)
}

/// Removes what [`write_init_files_for_store`] wrote (`summary.files`, `cluster.json` first so
/// that the directory stops counting as initialised, then `tls/` and `jwt/`), for an `init`
/// that failed after writing them. The data directory itself stays.
///
/// # Errors
///
/// [`DataDirError::WriteFailed`] naming the first file that could not be removed; the rest is
/// still attempted.
pub fn remove_init_files(dir: &DataDir, summary: &InitSummary) -> Result<()> {
    let mut first_error = None;
    let mut remove = |path: &Path, result: io::Result<()>| match result {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            first_error.get_or_insert(DataDirError::WriteFailed {
                path: path.to_owned(),
                source,
            });
        }
    };
    let cluster_file = dir.cluster_file();
    remove(&cluster_file, fs::remove_file(&cluster_file));
    for path in summary.files.iter().rev() {
        remove(path, fs::remove_file(path));
    }
    for subdir in [dir.tls_dir(), dir.jwt_dir()] {
        remove(&subdir, fs::remove_dir(&subdir));
    }
    first_error.map_or(Ok(()), Err)
}

/// Where the data dir's engine is recorded, for [`DataDirError::StoreEngineMismatch`].
fn recorded_in(dir: &DataDir) -> Result<String> {
    let path = dir.store_settings_file();
    Ok(if exists(&path)? {
        format!("recorded in {}", path.display())
    } else {
        format!(
            "it has no {}, which means the embedded store",
            path.display()
        )
    })
}

/// `path` made absolute against the working directory, so that `start` finds it from anywhere.
fn absolute(path: PathBuf, flag: &str) -> std::result::Result<PathBuf, String> {
    std::path::absolute(&path).map_err(|err| {
        format!(
            "{flag} {}: cannot make the path absolute: {err}",
            path.display()
        )
    })
}

/// An endpoint as errors show it: with any user name or password replaced by `***`.
fn shown_endpoint(endpoint: &str) -> String {
    let (scheme, rest) = match endpoint.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), endpoint),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => endpoint.to_owned(),
    }
}

fn invalid_flags(problem: impl Into<String>) -> DataDirError {
    DataDirError::StoreFlagsInvalid {
        problem: problem.into(),
    }
}

/// All key material of a new data directory, made before anything touches the disk.
struct Material {
    ca: CertifiedKeyPem,
    api: CertifiedKeyPem,
    agent_ca: CertifiedKeyPem,
    agent_listener: CertifiedKeyPem,
    jwt: JwtKeyPair,
}

// === impl Material ===

impl Material {
    fn generate(
        cluster_name: &str,
        hostnames: &[String],
        jwt: JwtKeyPair,
    ) -> Result<Material, PkiError> {
        let ca = pki::generate_ca(&format!("{cluster_name} CA"))?;
        let api = pki::issue_server_cert(&ca, API_CERT_COMMON_NAME, hostnames)?;
        let agent_listener = pki::issue_server_cert(&ca, AGENT_LISTENER_COMMON_NAME, hostnames)?;
        let agent_ca = pki::generate_ca(&format!("{cluster_name} agent CA"))?;
        Ok(Material {
            ca,
            api,
            agent_ca,
            agent_listener,
            jwt,
        })
    }
}

/// Writes the files of one `init`, remembering what it wrote.
struct Writer<'a> {
    dir: &'a DataDir,
    files: Vec<PathBuf>,
}

// === impl Writer ===

impl Writer<'_> {
    /// Creates the data directory if it does not exist; an existing one is used as it is.
    fn create_root(&self) -> Result<()> {
        let root = &self.dir.root;
        if exists(root)? {
            return Ok(());
        }
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(root)
            .and_then(|()| fs::set_permissions(root, Permissions::from_mode(DIR_MODE)))
            .map_err(|source| DataDirError::CreateDirFailed {
                path: root.clone(),
                source,
            })
    }

    /// Creates a subdirectory that must not exist yet. Creating `tls/` also serves as the lock
    /// that keeps two concurrent `init`s apart.
    fn create_dir(&self, path: &Path) -> Result<()> {
        match DirBuilder::new().mode(DIR_MODE).create(path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                return Err(self.interrupted(path));
            }
            Err(source) => {
                return Err(DataDirError::CreateDirFailed {
                    path: path.to_owned(),
                    source,
                })
            }
        }
        fs::set_permissions(path, Permissions::from_mode(DIR_MODE)).map_err(|source| {
            DataDirError::CreateDirFailed {
                path: path.to_owned(),
                source,
            }
        })
    }

    fn write_pair(&mut self, cert: &Path, key: &Path, pair: &CertifiedKeyPem) -> Result<()> {
        self.write_file(key, &pair.key_pem, SECRET_MODE)?;
        self.write_file(cert, &pair.cert_pem, PUBLIC_MODE)
    }

    /// Writes a file that must not exist yet, with exactly `mode`, and syncs it.
    fn write_file(&mut self, path: &Path, contents: &str, mode: u32) -> Result<()> {
        let write_failed = |source| DataDirError::WriteFailed {
            path: path.to_owned(),
            source,
        };
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
        {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                return Err(self.interrupted(path))
            }
            Err(source) => return Err(write_failed(source)),
        };
        // `mode` above is narrowed by the umask; this makes it exact.
        file.set_permissions(Permissions::from_mode(mode))
            .and_then(|()| file.write_all(contents.as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(write_failed)?;
        self.files.push(path.to_owned());
        Ok(())
    }

    /// Writes `cluster.json` under a temporary name and renames it into place, so that it is
    /// never seen half-written.
    fn write_cluster_file(&mut self, cluster: &ClusterInfo) -> Result<()> {
        let mut json = serde_json::to_string_pretty(cluster)
            .expect("ClusterInfo has only strings and integers, which always serialize");
        json.push('\n');
        let tmp = self.dir.cluster_file_tmp();
        self.write_file(&tmp, &json, PUBLIC_MODE)?;
        self.files.pop();

        let cluster_file = self.dir.cluster_file();
        // `tls/` was created by this `init`, so no other `init` can be renaming here.
        fs::rename(&tmp, &cluster_file).map_err(|source| DataDirError::WriteFailed {
            path: cluster_file.clone(),
            source,
        })?;
        self.sync_dir(&self.dir.root)?;
        self.files.push(cluster_file);
        Ok(())
    }

    /// Makes the directory's entries durable: a crash after this keeps the files just created.
    fn sync_dir(&self, path: &Path) -> Result<()> {
        File::open(path)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| DataDirError::WriteFailed {
                path: path.to_owned(),
                source,
            })
    }

    fn interrupted(&self, path: &Path) -> DataDirError {
        DataDirError::InterruptedInit {
            path: path.to_owned(),
            cluster_file: self.dir.cluster_file(),
            root: self.dir.root.clone(),
        }
    }
}

/// Reads both JWT key files and checks they are a matching ES256 pair.
fn read_jwt_keypair(private_key: &Path, public_key: &Path) -> Result<JwtKeyPair> {
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| DataDirError::ReadFailed {
            path: path.to_owned(),
            source,
        })
    };
    let invalid = |source| DataDirError::JwtKeyPairInvalid {
        private_key: private_key.to_owned(),
        public_key: public_key.to_owned(),
        source,
    };
    // The data dir always holds PKCS#8; a SEC1 key (as `openssl ecparam` writes it) is
    // converted on the way in.
    let pair = JwtKeyPair {
        private_pem: pki::jwt_private_key_pkcs8(&read(private_key)?).map_err(invalid)?,
        public_pem: read(public_key)?,
    };
    pki::check_jwt_keypair(&pair.private_pem, &pair.public_pem).map_err(invalid)?;
    Ok(pair)
}

/// Whether `path` exists, without following a final symlink; errors other than "not found"
/// (a permission problem, say) are reported rather than taken as "absent".
fn exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(DataDirError::ReadFailed {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use super::*;

    fn init_files(jwt: Option<(PathBuf, PathBuf)>) -> InitFiles {
        InitFiles {
            cluster_name: "test".to_owned(),
            hostnames: vec!["cairn.example.com".to_owned(), "10.1.2.3".to_owned()],
            jwt,
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Every file under `root` with its contents and modification time.
    fn snapshot(root: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime, u32)> {
        let mut files = BTreeMap::new();
        let mut dirs = vec![root.to_owned()];
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let metadata = fs::metadata(&path).unwrap();
                if metadata.is_dir() {
                    dirs.push(path.clone());
                    files.insert(
                        path,
                        (Vec::new(), metadata.modified().unwrap(), mode_of(&metadata)),
                    );
                } else {
                    let contents = fs::read(&path).unwrap();
                    files.insert(
                        path,
                        (contents, metadata.modified().unwrap(), mode_of(&metadata)),
                    );
                }
            }
        }
        files
    }

    fn mode_of(metadata: &fs::Metadata) -> u32 {
        metadata.permissions().mode() & 0o777
    }

    #[test]
    fn init_writes_every_file_with_its_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let summary = write_init_files(&dir, &init_files(None)).unwrap();

        let expected = [
            (dir.ca_key(), 0o600),
            (dir.ca_cert(), 0o644),
            (dir.api_key(), 0o600),
            (dir.api_cert(), 0o644),
            (dir.agent_ca_key(), 0o600),
            (dir.agent_ca_cert(), 0o644),
            (dir.agent_listener_key(), 0o600),
            (dir.agent_listener_cert(), 0o644),
            (dir.jwt_private_key(), 0o600),
            (dir.jwt_public_key(), 0o644),
            (dir.store_settings_file(), 0o644),
            (dir.cluster_file(), 0o644),
        ];
        let written: Vec<_> = expected.iter().map(|(path, _)| path.clone()).collect();
        assert_eq!(summary.files, written);
        for (path, want) in &expected {
            assert_eq!(mode(path), *want, "mode of {}", path.display());
        }
        for subdir in [dir.root().to_owned(), dir.tls_dir(), dir.jwt_dir()] {
            assert_eq!(mode(&subdir), 0o700, "mode of {}", subdir.display());
        }
        // Nothing else: no leftover temporary file, no store yet.
        assert_eq!(snapshot(dir.root()).len(), expected.len() + 2);
        assert!(!summary.jwt_key_copied);

        let cluster = read_cluster(&dir).unwrap();
        assert_eq!(cluster.name, "test");
        assert_eq!(cluster.ca_fingerprint_sha256, summary.ca_fingerprint_sha256);
        let ca_pem = fs::read_to_string(dir.ca_cert()).unwrap();
        assert_eq!(
            pki::fingerprint_sha256(&ca_pem).unwrap(),
            summary.ca_fingerprint_sha256
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(cluster.created_at) < 600);
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.cluster_file()).unwrap()).unwrap();
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["ca_fingerprint_sha256", "created_at", "name"]);

        pki::check_jwt_keypair(
            &fs::read_to_string(dir.jwt_private_key()).unwrap(),
            &fs::read_to_string(dir.jwt_public_key()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(dir.store_settings_file()).unwrap(),
            "{\n  \"engine\": \"embedded\"\n}\n"
        );
        assert_eq!(read_store_settings(&dir).unwrap(), StoreSettings::Embedded);
    }

    #[test]
    fn init_uses_an_existing_empty_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        write_init_files(&dir, &init_files(None)).unwrap();
        read_cluster(&dir).unwrap();
    }

    #[test]
    fn second_init_refuses_and_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        write_init_files(&dir, &init_files(None)).unwrap();
        let before = snapshot(dir.root());

        let err = write_init_files(&dir, &init_files(None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "data dir {} is already initialised ({} exists); refusing to overwrite",
                dir.root().display(),
                dir.cluster_file().display()
            )
        );
        assert_eq!(snapshot(dir.root()), before);
    }

    #[test]
    fn an_interrupted_init_is_refused_with_advice() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        write_init_files(&dir, &init_files(None)).unwrap();
        // As if init had stopped before writing cluster.json.
        fs::remove_file(dir.cluster_file()).unwrap();
        let before = snapshot(dir.root());

        let err = write_init_files(&dir, &init_files(None)).unwrap_err();
        assert!(
            matches!(err, DataDirError::InterruptedInit { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .ends_with("remove the data dir and run init again"),
            "{err}"
        );
        assert_eq!(snapshot(dir.root()), before);
        assert!(matches!(
            read_cluster(&dir),
            Err(DataDirError::NotInitialised { .. })
        ));
    }

    #[test]
    fn given_jwt_keypair_is_copied() {
        let tmp = tempfile::tempdir().unwrap();
        let pair = pki::generate_jwt_keypair().unwrap();
        let private_key = tmp.path().join("shared.key");
        let public_key = tmp.path().join("shared.pub");
        fs::write(&private_key, &pair.private_pem).unwrap();
        fs::write(&public_key, &pair.public_pem).unwrap();

        let dir = DataDir::new(tmp.path().join("data"));
        let summary = write_init_files(&dir, &init_files(Some((private_key, public_key)))).unwrap();
        assert!(summary.jwt_key_copied);
        assert_eq!(
            fs::read_to_string(dir.jwt_private_key()).unwrap(),
            pair.private_pem
        );
        assert_eq!(
            fs::read_to_string(dir.jwt_public_key()).unwrap(),
            pair.public_pem
        );
        assert_eq!(mode(&dir.jwt_private_key()), 0o600);
    }

    #[test]
    fn mismatched_jwt_keypair_is_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let pair = pki::generate_jwt_keypair().unwrap();
        let other = pki::generate_jwt_keypair().unwrap();
        let private_key = tmp.path().join("shared.key");
        let public_key = tmp.path().join("shared.pub");
        fs::write(&private_key, &pair.private_pem).unwrap();
        fs::write(&public_key, &other.public_pem).unwrap();

        let dir = DataDir::new(tmp.path().join("data"));
        let err = write_init_files(
            &dir,
            &init_files(Some((private_key.clone(), public_key.clone()))),
        )
        .unwrap_err();
        let DataDirError::JwtKeyPairInvalid { source, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(matches!(source, PkiError::JwtKeyMismatch), "{source:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "jwt key pair {} and {} is not usable",
                private_key.display(),
                public_key.display()
            )
        );
        assert!(!dir.root().exists(), "the data dir was created");
    }

    #[test]
    fn missing_jwt_key_file_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope.key");
        let dir = DataDir::new(tmp.path().join("data"));
        let err = write_init_files(&dir, &init_files(Some((missing.clone(), missing.clone()))))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot read {}", missing.display())
        );
        assert!(!dir.root().exists());
    }

    #[test]
    fn jwt_key_files_come_in_pairs() {
        let private_key = || Some(PathBuf::from("a.key"));
        let public_key = || Some(PathBuf::from("a.pub"));
        assert_eq!(InitFiles::jwt_key_files(None, None).unwrap(), None);
        assert_eq!(
            InitFiles::jwt_key_files(private_key(), public_key()).unwrap(),
            Some((PathBuf::from("a.key"), PathBuf::from("a.pub")))
        );
        let err = InitFiles::jwt_key_files(private_key(), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--jwt-private-key-file and --jwt-public-key-file must be given together; \
             --jwt-public-key-file is missing"
        );
        let err = InitFiles::jwt_key_files(None, public_key()).unwrap_err();
        assert!(err
            .to_string()
            .ends_with("--jwt-private-key-file is missing"));
    }

    #[test]
    fn bad_cluster_name_and_hostname_write_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));

        let mut init = init_files(None);
        init.cluster_name = "no spaces".to_owned();
        let err = write_init_files(&dir, &init).unwrap_err();
        assert!(
            matches!(err, DataDirError::InvalidClusterName { .. }),
            "{err:?}"
        );

        let mut init = init_files(None);
        init.hostnames.push("bad host".to_owned());
        let err = write_init_files(&dir, &init).unwrap_err();
        let DataDirError::CertificatesFailed(PkiError::InvalidHostname { hostname }) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(hostname, "bad host");
        assert!(!dir.root().exists());
    }

    #[test]
    fn certificates_chain_to_the_right_cas() {
        use x509_parser::pem::parse_x509_pem;

        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        write_init_files(&dir, &init_files(None)).unwrap();
        let read = |path: PathBuf| fs::read_to_string(path).unwrap();
        let verifies = |cert: &str, ca: &str| {
            let (_, ca) = parse_x509_pem(ca.as_bytes()).unwrap();
            let ca = ca.parse_x509().unwrap();
            let (_, cert) = parse_x509_pem(cert.as_bytes()).unwrap();
            let cert = cert.parse_x509().unwrap();
            cert.verify_signature(Some(ca.public_key())).is_ok()
        };
        let ca = read(dir.ca_cert());
        let agent_ca = read(dir.agent_ca_cert());
        assert!(verifies(&read(dir.api_cert()), &ca));
        assert!(verifies(&read(dir.agent_listener_cert()), &ca));
        assert!(!verifies(&read(dir.agent_listener_cert()), &agent_ca));
        assert!(verifies(&agent_ca, &agent_ca));
        assert_ne!(ca, agent_ca);
    }

    #[test]
    fn read_cluster_names_the_problem() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let err = read_cluster(&dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "data dir {} is not initialised: run cairn-backend init",
                tmp.path().display()
            )
        );

        write_init_files(&dir, &init_files(None)).unwrap();
        // Swap in another CA: join tokens would pin the wrong certificate.
        let other = pki::generate_ca("other").unwrap();
        fs::remove_file(dir.ca_cert()).unwrap();
        fs::write(dir.ca_cert(), &other.cert_pem).unwrap();
        let err = read_cluster(&dir).unwrap_err();
        assert!(
            matches!(err, DataDirError::CaFingerprintMismatch { .. }),
            "{err:?}"
        );

        fs::write(dir.cluster_file(), "{").unwrap();
        let err = read_cluster(&dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot parse {}", dir.cluster_file().display())
        );
    }

    fn etcd_flags(endpoints: &[&str]) -> StoreFlags {
        StoreFlags {
            engine: Some(StoreEngine::Etcd),
            etcd_endpoints: Some(endpoints.iter().map(|url| (*url).to_owned()).collect()),
            ..StoreFlags::default()
        }
    }

    fn tls_files() -> EtcdTlsFiles {
        EtcdTlsFiles {
            trusted_ca_file: "/etc/cairn/etcd/ca.pem".into(),
            cert_file: "/etc/cairn/etcd/client.pem".into(),
            key_file: "/etc/cairn/etcd/client.key".into(),
        }
    }

    /// Runs `for_init` and compares its error message, or `Ok` with the settings' JSON.
    fn check_init(flags: StoreFlags, expect: &str) {
        let got = match flags.for_init() {
            Ok(settings) => format!("Ok {}", serde_json::to_string(&settings).unwrap()),
            Err(err) => err.to_string(),
        };
        assert_eq!(got, expect);
    }

    #[test]
    fn init_store_flags() {
        check_init(StoreFlags::default(), r#"Ok {"engine":"embedded"}"#);
        check_init(
            StoreFlags {
                engine: Some(StoreEngine::Embedded),
                ..StoreFlags::default()
            },
            r#"Ok {"engine":"embedded"}"#,
        );
        check_init(
            etcd_flags(&["http://10.0.0.1:2379", " http://10.0.0.2:2379"]),
            r#"Ok {"engine":"etcd","endpoints":["http://10.0.0.1:2379","http://10.0.0.2:2379"],"prefix":"/cairn/"}"#,
        );
        check_init(
            StoreFlags {
                etcd_prefix: Some("/prod".to_owned()),
                etcd_tls: Some(tls_files()),
                ..etcd_flags(&["https://etcd.example.com:2379"])
            },
            r#"Ok {"engine":"etcd","endpoints":["https://etcd.example.com:2379"],"prefix":"/prod/","tls":{"trusted_ca_file":"/etc/cairn/etcd/ca.pem","cert_file":"/etc/cairn/etcd/client.pem","key_file":"/etc/cairn/etcd/client.key"}}"#,
        );
        check_init(
            StoreFlags {
                engine: Some(StoreEngine::Etcd),
                ..StoreFlags::default()
            },
            "--store etcd needs --etcd-endpoints (the etcd members' client URLs, comma-separated)",
        );
        check_init(
            StoreFlags {
                engine: None,
                ..etcd_flags(&["http://10.0.0.1:2379"])
            },
            "--etcd-endpoints given without --store etcd: the etcd flags apply to the etcd store only",
        );
        check_init(
            etcd_flags(&["10.0.0.1:2379"]),
            "etcd endpoint `10.0.0.1:2379` is not an http:// or https:// URL (--etcd-endpoints)",
        );
        check_init(
            etcd_flags(&["http://root:hunter2@10.0.0.1:2379"]),
            "etcd endpoint `http://***@10.0.0.1:2379` carries a user name or password, which is \
             not supported: authenticate with --etcd-cert-file and --etcd-key-file",
        );
        check_init(
            etcd_flags(&["https://10.0.0.1:2379"]),
            "etcd endpoint `https://10.0.0.1:2379` is https: give --etcd-trusted-ca-file, \
             --etcd-cert-file and --etcd-key-file for client certificate TLS",
        );
        check_init(
            StoreFlags {
                etcd_tls: Some(tls_files()),
                ..etcd_flags(&["http://10.0.0.1:2379"])
            },
            "etcd endpoint `http://10.0.0.1:2379` is plain http, but TLS files are given: \
             client certificate TLS needs https:// endpoints",
        );
        check_init(
            etcd_flags(&[""]),
            "etcd endpoint `` is not an http:// or https:// URL (--etcd-endpoints)",
        );
        check_init(
            StoreFlags {
                etcd_prefix: Some(" ".to_owned()),
                ..etcd_flags(&["http://10.0.0.1:2379"])
            },
            "the etcd prefix is empty: give one such as /cairn/ (--etcd-prefix); the whole key \
             space is not supported",
        );
    }

    #[test]
    fn relative_tls_paths_are_recorded_absolute() {
        let settings = StoreFlags {
            etcd_tls: Some(EtcdTlsFiles {
                trusted_ca_file: "ca.pem".into(),
                cert_file: "client.pem".into(),
                key_file: "client.key".into(),
            }),
            ..etcd_flags(&["https://10.0.0.1:2379"])
        }
        .for_init()
        .unwrap();
        let StoreSettings::Etcd(etcd) = settings else {
            panic!("not etcd: {settings:?}");
        };
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(etcd.tls.unwrap().cert_file, cwd.join("client.pem"));
    }

    #[test]
    fn etcd_init_records_the_store_and_start_reads_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let settings = etcd_flags(&["http://10.0.0.1:2379"]).for_init().unwrap();
        let summary = write_init_files_for_store(&dir, &init_files(None), &settings).unwrap();
        assert_eq!(summary.files.len(), 12);
        assert!(!dir.store_file().exists(), "no embedded store with etcd");
        assert_eq!(read_store_settings(&dir).unwrap(), settings);
        assert_eq!(mode(&dir.store_settings_file()), 0o644);

        // start: the recorded settings, or the flags' endpoints and TLS files instead.
        let started = StoreFlags::default()
            .for_start(&dir, settings.clone())
            .unwrap();
        assert_eq!(started, settings);
        let moved = StoreFlags {
            engine: None,
            etcd_prefix: Some("/cairn".to_owned()),
            etcd_tls: Some(tls_files()),
            ..etcd_flags(&["https://10.0.0.9:2379"])
        }
        .for_start(&dir, settings.clone())
        .unwrap();
        let StoreSettings::Etcd(moved) = moved else {
            panic!("not etcd: {moved:?}");
        };
        assert_eq!(moved.endpoints, ["https://10.0.0.9:2379"]);
        assert_eq!(moved.prefix, "/cairn/");
        assert_eq!(moved.tls, Some(tls_files()));
    }

    #[test]
    fn start_refuses_another_store_than_the_recorded_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let settings = etcd_flags(&["http://10.0.0.1:2379"]).for_init().unwrap();
        write_init_files_for_store(&dir, &init_files(None), &settings).unwrap();
        let root = dir.root().display();
        let store_file = dir.store_settings_file();

        let err = StoreFlags {
            engine: Some(StoreEngine::Embedded),
            ..StoreFlags::default()
        }
        .for_start(&dir, settings.clone())
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "data dir {root} uses the etcd store (recorded in {}), but --store embedded was \
                 given: refusing to start on a store that does not hold this cluster; leave out \
                 --store, or init a new data dir for the embedded store",
                store_file.display()
            )
        );
        // The same check, on settings built elsewhere (as `app::start` makes it).
        let err = settings
            .check_same_store(&dir, &StoreSettings::Embedded)
            .unwrap_err();
        assert!(matches!(err, DataDirError::StoreEngineMismatch { .. }));

        let err = StoreFlags {
            etcd_prefix: Some("/other/".to_owned()),
            ..StoreFlags::default()
        }
        .for_start(&dir, settings.clone())
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "data dir {root} uses etcd prefix /cairn/ ({}), but --etcd-prefix /other/ was \
                 given: refusing to start on keys that do not hold this cluster; leave out \
                 --etcd-prefix",
                store_file.display()
            )
        );

        // A data dir from before store.json is embedded.
        fs::remove_file(&store_file).unwrap();
        assert_eq!(read_store_settings(&dir).unwrap(), StoreSettings::Embedded);
        let err = etcd_flags(&["http://10.0.0.1:2379"])
            .for_start(&dir, StoreSettings::Embedded)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "data dir {root} uses the embedded store (it has no {}, which means the embedded \
                 store), but --store etcd was given: refusing to start on a store that does not \
                 hold this cluster; leave out --store, or init a new data dir for the etcd store",
                store_file.display()
            )
        );
        let err = StoreFlags {
            engine: None,
            ..etcd_flags(&["http://10.0.0.1:2379"])
        }
        .for_start(&dir, StoreSettings::Embedded)
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "--etcd-endpoints given for data dir {root}, which uses the embedded store: the \
                 etcd flags apply to the etcd store only"
            )
        );
    }

    #[test]
    fn bad_store_file_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let path = dir.store_settings_file();
        fs::write(&path, r#"{"engine": "postgres"}"#).unwrap();
        let err = read_store_settings(&dir).unwrap_err();
        assert_eq!(err.to_string(), format!("cannot parse {}", path.display()));

        fs::write(
            &path,
            r#"{"engine": "etcd", "endpoints": [], "prefix": "/cairn/"}"#,
        )
        .unwrap();
        let err = read_store_settings(&dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is invalid: no etcd endpoint given (--etcd-endpoints)",
                path.display()
            )
        );
    }

    #[test]
    fn remove_init_files_leaves_an_empty_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let summary = write_init_files(&dir, &init_files(None)).unwrap();
        remove_init_files(&dir, &summary).unwrap();
        assert!(snapshot(dir.root()).is_empty());
        // So init can run again.
        write_init_files(&dir, &init_files(None)).unwrap();
    }
}
