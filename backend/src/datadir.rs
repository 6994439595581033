//! The backend's data directory: where each file lives, and writing a new one safely for
//! `cairn-backend init`.
//!
//! ```text
//! DIR/
//!   cluster.json              name, creation time, CA fingerprint; written last
//!   store.redb                the embedded store (written by `store`)
//!   tls/ca.pem, ca.key        the cluster CA: signs the API and agent-listener certificates
//!   tls/api.pem, api.key      the REST API's server certificate
//!   tls/agent-ca.pem, .key    the agent CA: signs agents' client certificates
//!   tls/agent-listener.pem    the agent listener's server certificate (signed by the cluster CA)
//!   tls/agent-listener.key
//!   jwt/private.pem           the ES256 token signing key (PKCS#8)
//!   jwt/public.pem            its public key (SubjectPublicKeyInfo)
//! ```
//!
//! Private keys are `0600`, certificates and `cluster.json` `0644`, directories `0700`.

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
/// Mode of certificates, public keys and `cluster.json`.
const PUBLIC_MODE: u32 = 0o644;

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
    let pair = JwtKeyPair {
        private_pem: read(private_key)?,
        public_pem: read(public_key)?,
    };
    pki::check_jwt_keypair(&pair.private_pem, &pair.public_pem).map_err(|source| {
        DataDirError::JwtKeyPairInvalid {
            private_key: private_key.to_owned(),
            public_key: public_key.to_owned(),
            source,
        }
    })?;
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
}
