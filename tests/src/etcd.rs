//! A real etcd cluster on loopback for the tests and benchmarks of the etcd store (issue 8): N
//! members of Debian's `etcd` (3.4), each with its data directory and its log in one temporary
//! directory, optionally requiring client certificates; every member is killed on drop.
//!
//! etcd needs explicit URLs and cannot report a port-0 bind, so each port is found free by
//! binding port 0 just before the start; when one was taken in the meantime (a member logs
//! "address already in use"), the whole cluster starts again on new ports with a new cluster
//! token. The cluster is ready when every member answers a linearizable read, which needs an
//! elected leader and that member's part in the quorum; nothing waits a fixed time.

use std::ffi::OsString;
use std::fs::File;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::openbao::random_hex;
use crate::wait::Poll;
use crate::ExternalProgram;

/// How long a starting cluster (or a restarted member) may take to answer a linearizable read.
const START_LIMIT: Duration = Duration::from_secs(30);

/// Cluster starts tried before giving up when a chosen port was taken in the meantime.
const START_ATTEMPTS: usize = 5;

/// How long [`EtcdCluster::start_member`] retries while its old ports cannot be bound again.
const RESTART_LIMIT: Duration = Duration::from_secs(20);

/// One readiness probe (a linearizable read); past it, the probe counts as not answered.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a client of the harness may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Heartbeat and election timeout of a test cluster: short, so that the first leader is
/// elected within a second and a lost leader is replaced quickly.
const TEST_HEARTBEAT: Duration = Duration::from_millis(25);
const TEST_ELECTION_TIMEOUT: Duration = Duration::from_millis(250);

/// Lines of a member's log quoted when it fails.
const LOG_TAIL_LINES: usize = 40;

/// What etcd logs when it cannot bind a listener because the port is taken.
const PORT_TAKEN: &str = "address already in use";

/// Whether a test needing etcd should run: `true` when `etcd` runs; `false` (the caller
/// returns early, saying so) when it is missing.
///
/// # Panics
/// When `etcd` is missing and [`ENV_REQUIRE_DEPS`](crate::openbao::ENV_REQUIRE_DEPS) is set:
/// there, a skip would hide a test.
pub fn required() -> bool {
    ExternalProgram {
        name: "etcd",
        version_arg: "--version",
        install: "apt-get install etcd-server",
    }
    .required()
}

/// How to start an [`EtcdCluster`]: the number of members, client-certificate TLS, and the
/// Raft timings.
#[derive(Debug, Clone)]
pub struct EtcdClusterConfig {
    members: usize,
    tls: bool,
    heartbeat: Duration,
    election_timeout: Duration,
    extra_args: Vec<String>,
}

impl EtcdClusterConfig {
    /// `members` members over plain HTTP, with the short test timings (heartbeat 25 ms,
    /// election timeout 250 ms).
    ///
    /// # Panics
    /// When `members` is 0.
    pub fn new(members: usize) -> EtcdClusterConfig {
        assert!(members > 0, "an etcd cluster needs at least one member");
        EtcdClusterConfig {
            members,
            tls: false,
            heartbeat: TEST_HEARTBEAT,
            election_timeout: TEST_ELECTION_TIMEOUT,
            extra_args: Vec::new(),
        }
    }

    /// Client URLs over HTTPS that require a client certificate (`--client-cert-auth`): a CA, a
    /// server certificate for `127.0.0.1` and `localhost` and a client certificate for the
    /// backend are written into the cluster's directory; see [`EtcdCluster::tls_files`]. Peers
    /// still talk plain HTTP on loopback.
    pub fn tls(mut self) -> EtcdClusterConfig {
        self.tls = true;
        self
    }

    /// Other Raft timings, e.g. etcd's defaults (100 ms, 1 s) for a benchmark that loads the
    /// machine enough to make the test timings elect new leaders.
    pub fn timings(mut self, heartbeat: Duration, election_timeout: Duration) -> EtcdClusterConfig {
        self.heartbeat = heartbeat;
        self.election_timeout = election_timeout;
        self
    }

    /// Adds a flag to every member's command line (after the harness's own), e.g.
    /// `--quota-backend-bytes=...` for a benchmark that writes a lot.
    pub fn arg(mut self, arg: impl Into<String>) -> EtcdClusterConfig {
        self.extra_args.push(arg.into());
        self
    }

    /// Starts the members and waits until each answers a linearizable read. It blocks the
    /// calling thread (the probes run on a thread of their own), so it may be called from a
    /// test's async body as from plain code.
    ///
    /// # Panics
    /// When `etcd` cannot run, a member exits or does not answer within 30 s (the message names
    /// it and quotes its log), or the chosen ports keep being taken.
    pub fn start(self) -> EtcdCluster {
        let dir = tempfile::Builder::new()
            .prefix("cairn-etcd-")
            .tempdir()
            .expect("a temp dir for etcd");
        let tls = self
            .tls
            .then(|| TlsFiles::generate(dir.path()).expect("certificates for etcd"));
        let members = (0..self.members)
            .map(|idx| Member {
                name: format!("m{idx}"),
                client_port: 0,
                peer_port: 0,
                data_dir: dir.path().join(format!("m{idx}")),
                log_file: dir.path().join(format!("m{idx}.log")),
                log_offset: 0,
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster {
            members,
            tls,
            config: self,
            token: String::new(),
            dir,
        };
        block_on(cluster.start_all());
        cluster
    }
}

/// The client-certificate files of a TLS cluster, PEM, in its directory.
#[derive(Debug, Clone)]
struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// One member: its fixed name, ports and files, and its process while it runs.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log_file: PathBuf,
    /// Where the current run's output starts in `log_file`.
    log_offset: u64,
    child: Option<Child>,
}

/// Why a start did not come up.
enum StartFailed {
    /// A member could not bind a chosen port: another process took it first.
    PortTaken { member: usize },
}

/// A running etcd cluster on loopback; every member is killed (SIGKILL) on drop.
pub struct EtcdCluster {
    members: Vec<Member>,
    tls: Option<TlsFiles>,
    config: EtcdClusterConfig,
    /// `--initial-cluster-token`, new for every start on new ports.
    token: String,
    dir: tempfile::TempDir,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for idx in 0..self.members.len() {
            self.kill(idx);
        }
    }
}

// === impl EtcdCluster ===

impl EtcdCluster {
    /// `members` members over plain HTTP with the short test timings; see
    /// [`EtcdClusterConfig::start`].
    ///
    /// # Panics
    /// As [`EtcdClusterConfig::start`].
    pub fn start(members: usize) -> EtcdCluster {
        EtcdClusterConfig::new(members).start()
    }

    /// `members` members that require a client certificate; see [`EtcdClusterConfig::tls`] and
    /// [`EtcdCluster::tls_files`].
    ///
    /// # Panics
    /// As [`EtcdClusterConfig::start`].
    pub fn start_tls(members: usize) -> EtcdCluster {
        EtcdClusterConfig::new(members).tls().start()
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always `false`: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The client URL of member `idx` (`http://127.0.0.1:N`, or `https://` with TLS).
    ///
    /// # Panics
    /// When there is no member `idx`.
    pub fn endpoint(&self, idx: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.member(idx).client_port)
    }

    /// The client URLs of every member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len())
            .map(|idx| self.endpoint(idx))
            .collect()
    }

    /// The client URLs comma-joined, as `--etcd-endpoints` takes them.
    pub fn endpoints_arg(&self) -> String {
        self.endpoints().join(",")
    }

    /// The CA, client certificate and client key files (PEM) of a TLS cluster; `None` over
    /// plain HTTP.
    pub fn tls_files(&self) -> Option<(&Path, &Path, &Path)> {
        self.tls
            .as_ref()
            .map(|tls| (tls.ca.as_path(), tls.cert.as_path(), tls.key.as_path()))
    }

    /// The `cairn-backend` arguments (`init` and `start` take the same) for this cluster:
    /// `--store etcd --etcd-endpoints <all>` and, with TLS, the client certificate files. The
    /// prefix is left at the backend's default unless the caller adds `--etcd-prefix`.
    pub fn backend_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--store".into(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            self.endpoints_arg().into(),
        ];
        if let Some(tls) = &self.tls {
            args.extend([
                "--etcd-cert-file".into(),
                tls.cert.clone().into(),
                "--etcd-key-file".into(),
                tls.key.clone().into(),
                "--etcd-trusted-ca-file".into(),
                tls.ca.clone().into(),
            ]);
        }
        args
    }

    /// Connect options for a client of this cluster: a short connect timeout and, with TLS,
    /// the CA and the client certificate.
    ///
    /// # Panics
    /// When the certificate files cannot be read.
    pub fn connect_options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT);
        if let Some(tls) = &self.tls {
            let read = |path: &Path| {
                std::fs::read(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
            };
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(read(&tls.ca)))
                    .identity(Identity::from_pem(read(&tls.cert), read(&tls.key))),
            );
        }
        options
    }

    /// A client of every member (etcd-client balances over them).
    ///
    /// # Panics
    /// When the client cannot be built.
    pub async fn client(&self) -> Client {
        let endpoints = self.endpoints();
        Client::connect(&endpoints, Some(self.connect_options()))
            .await
            .unwrap_or_else(|err| panic!("etcd client of {endpoints:?}: {err}"))
    }

    /// A client of member `idx` alone.
    ///
    /// # Panics
    /// When there is no member `idx` or the client cannot be built.
    pub async fn member_client(&self, idx: usize) -> Client {
        let endpoint = self.endpoint(idx);
        Client::connect([&endpoint], Some(self.connect_options()))
            .await
            .unwrap_or_else(|err| panic!("etcd client of member {idx} ({endpoint}): {err}"))
    }

    /// The process id of member `idx`; `None` while it is killed.
    pub fn member_pid(&self, idx: usize) -> Option<u32> {
        self.member(idx).child.as_ref().map(Child::id)
    }

    /// Everything member `idx` logged, over every run.
    pub fn member_log(&self, idx: usize) -> String {
        std::fs::read_to_string(&self.member(idx).log_file).unwrap_or_default()
    }

    /// The cluster's temporary directory (members' data and logs, certificates).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills member `idx` (SIGKILL) and waits for it; a no-op when it is not running. Its data
    /// directory and ports are kept for [`EtcdCluster::start_member`].
    pub fn kill(&mut self, idx: usize) {
        if let Some(mut child) = self.members[idx].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts killed member `idx` again on its ports with its data directory and waits until it
    /// answers a linearizable read (so a quorum must be up). Retries for up to 20 s while a port
    /// cannot be bound again. Blocks the calling thread, as [`EtcdClusterConfig::start`] does.
    ///
    /// # Panics
    /// When the member runs already, or does not come back in time (the message quotes its log).
    pub fn start_member(&mut self, idx: usize) {
        assert!(
            self.member(idx).child.is_none(),
            "etcd member {idx} is running; kill it first"
        );
        block_on(self.restart_member(idx));
    }

    // === starting ===

    /// See [`EtcdCluster::start_member`].
    async fn restart_member(&mut self, idx: usize) {
        let mut poll = Poll::new(
            format!("etcd member {idx} binding its ports again"),
            RESTART_LIMIT,
        );
        loop {
            self.spawn(idx);
            match self.wait_ready(&[idx]).await {
                Ok(()) => return,
                Err(StartFailed::PortTaken { member }) => {
                    eprintln!("etcd member {member}: a port is still taken; retrying");
                    self.kill(idx);
                    poll.tick(&self.describe(member)).await;
                }
            }
        }
    }

    fn member(&self, idx: usize) -> &Member {
        self.members.get(idx).unwrap_or_else(|| {
            panic!(
                "no etcd member {idx}: the cluster has {}",
                self.members.len()
            )
        })
    }

    /// Starts every member on new ports until none was taken, then waits for all.
    async fn start_all(&mut self) {
        for attempt in 1..=START_ATTEMPTS {
            self.token = format!("cairn-test-{}", random_hex(8));
            let ports = free_ports(2 * self.members.len());
            for (member, pair) in self.members.iter_mut().zip(ports.chunks(2)) {
                member.client_port = pair[0];
                member.peer_port = pair[1];
                // Nothing of a failed attempt may survive into a cluster with another token.
                let _ = std::fs::remove_dir_all(&member.data_dir);
            }
            for idx in 0..self.members.len() {
                self.spawn(idx);
            }
            let all: Vec<usize> = (0..self.members.len()).collect();
            match self.wait_ready(&all).await {
                Ok(()) => return,
                Err(StartFailed::PortTaken { member }) => {
                    eprintln!(
                        "etcd member {member}: a chosen port was taken (attempt {attempt} of {START_ATTEMPTS}); starting on new ports"
                    );
                    for idx in all {
                        self.kill(idx);
                    }
                }
            }
        }
        panic!("etcd did not start in {START_ATTEMPTS} attempts: its ports kept being taken");
    }

    /// The command line of member `idx`. With an existing data directory etcd ignores the
    /// `--initial-*` flags and rejoins with what it stored.
    fn args(&self, idx: usize) -> Vec<String> {
        let member = self.member(idx);
        let client_url = self.endpoint(idx);
        let peer_url = |member: &Member| format!("http://127.0.0.1:{}", member.peer_port);
        let initial_cluster = self
            .members
            .iter()
            .map(|member| format!("{}={}", member.name, peer_url(member)))
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec![
            format!("--name={}", member.name),
            format!("--data-dir={}", member.data_dir.display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={}", peer_url(member)),
            format!("--initial-advertise-peer-urls={}", peer_url(member)),
            format!("--initial-cluster={initial_cluster}"),
            "--initial-cluster-state=new".to_owned(),
            format!("--initial-cluster-token={}", self.token),
            format!("--heartbeat-interval={}", self.config.heartbeat.as_millis()),
            format!(
                "--election-timeout={}",
                self.config.election_timeout.as_millis()
            ),
            "--logger=zap".to_owned(),
            "--log-outputs=stderr".to_owned(),
        ];
        if self.tls.is_some() {
            let file = |name: &str| self.dir.path().join(name).display().to_string();
            args.extend([
                format!("--cert-file={}", file(SERVER_CERT)),
                format!("--key-file={}", file(SERVER_KEY)),
                format!("--trusted-ca-file={}", file(CA_CERT)),
                "--client-cert-auth".to_owned(),
            ]);
        }
        args.extend(self.config.extra_args.iter().cloned());
        args
    }

    /// Starts the process of member `idx`, its output appended to its log file.
    fn spawn(&mut self, idx: usize) {
        let args = self.args(idx);
        let member = &mut self.members[idx];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log_file)
            .unwrap_or_else(|err| panic!("open {}: {err}", member.log_file.display()));
        member.log_offset = log.metadata().map_or(0, |meta| meta.len());
        let mut command = Command::new("etcd");
        // An ETCD_* variable of the caller's environment would override a flag.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(key);
            }
        }
        let spawned = command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the etcd log file handle"))
            .stderr(log)
            .spawn();
        member.child = Some(match spawned {
            Ok(child) => child,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!(
                "etcd is not on PATH (apt-get install etcd-server; scripts/test installs it)"
            ),
            Err(err) => panic!("cannot start etcd member {idx}: {err}"),
        });
    }

    /// Polls a linearizable read at each of `members` until it answers. A member that exits
    /// is an error: `PortTaken` when it says a port was taken, else a panic quoting its log.
    async fn wait_ready(&mut self, members: &[usize]) -> Result<(), StartFailed> {
        for &idx in members {
            let mut client = self.member_client(idx).await;
            let mut poll = Poll::new(
                format!(
                    "etcd member {idx} ({}) answering a linearizable read",
                    self.endpoint(idx)
                ),
                START_LIMIT,
            );
            loop {
                self.check_running()?;
                let probe = client.get("cairn-probe", Some(GetOptions::new().with_count_only()));
                if let Ok(Ok(_)) = tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                    break;
                }
                poll.tick(&self.describe(idx)).await;
            }
        }
        Ok(())
    }

    /// Fails when a member that should run has exited.
    fn check_running(&mut self) -> Result<(), StartFailed> {
        for idx in 0..self.members.len() {
            let Some(child) = self.members[idx].child.as_mut() else {
                continue;
            };
            let Some(status) = child.try_wait().expect("wait for etcd") else {
                continue;
            };
            self.members[idx].child = None;
            if self.run_log(idx).contains(PORT_TAKEN) {
                return Err(StartFailed::PortTaken { member: idx });
            }
            panic!(
                "etcd member {idx} exited with {status}\n{}",
                self.describe(idx)
            );
        }
        Ok(())
    }

    /// What member `idx` logged in its current (or last) run.
    fn run_log(&self, idx: usize) -> String {
        let member = self.member(idx);
        let mut bytes = Vec::new();
        if let Ok(mut file) = File::open(&member.log_file) {
            if file.seek(SeekFrom::Start(member.log_offset)).is_ok() {
                let _ = file.read_to_end(&mut bytes);
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The state of the cluster for a failure message: each member's endpoint and whether it
    /// runs, and the tail of member `idx`'s log.
    fn describe(&self, idx: usize) -> String {
        let states: Vec<String> = (0..self.members.len())
            .map(|other| {
                let state = if self.members[other].child.is_some() {
                    "running"
                } else {
                    "not running"
                };
                format!("member {other} ({}): {state}", self.endpoint(other))
            })
            .collect();
        let log = self.run_log(idx);
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        format!(
            "{}\nlast {LOG_TAIL_LINES} lines of member {idx}'s log ({}):\n{tail}",
            states.join("\n"),
            self.member(idx).log_file.display()
        )
    }
}

/// Runs `future` to completion on a runtime of its own on a new thread, and waits for it: the
/// harness's blocking calls work from plain code and from inside a test's runtime alike. A
/// panic in `future` is raised again here.
fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("etcd-harness".to_owned())
            .spawn_scoped(scope, || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the etcd probes")
                    .block_on(future)
            })
            .expect("start the etcd harness thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `n` distinct ports that were free a moment ago: all bound to port 0 at once (so no two are
/// the same), read back, and released for etcd to bind.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("a bound address").port())
        .collect()
}

// === TLS ===

const CA_CERT: &str = "ca.pem";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server-key.pem";
const CLIENT_CERT: &str = "client.pem";
const CLIENT_KEY: &str = "client-key.pem";

impl TlsFiles {
    /// A CA, a server certificate for `127.0.0.1` and `localhost`, and a client certificate for
    /// `cairn-backend`, written into `dir`.
    fn generate(dir: &Path) -> Result<TlsFiles, rcgen::Error> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = name("cairn-test etcd CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = ca_params.self_signed(&ca_key)?.pem();
        let ca = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate()?;
        let mut server =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        server.distinguished_name = name("etcd");
        server.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        // etcd's gRPC gateway dials its own client URL with the server certificate, which
        // `--client-cert-auth` then checks as a client certificate.
        server.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        server.use_authority_key_identifier_extension = true;
        let server_cert = server.signed_by(&server_key, &ca)?;

        let client_key = KeyPair::generate()?;
        let mut client = CertificateParams::default();
        client.distinguished_name = name("cairn-backend");
        client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client.use_authority_key_identifier_extension = true;
        let client_cert = client.signed_by(&client_key, &ca)?;

        let write = |file: &str, text: &str| {
            let path = dir.join(file);
            std::fs::write(&path, text).unwrap_or_else(|err| panic!("write {file}: {err}"));
            path
        };
        write(SERVER_CERT, &server_cert.pem());
        write(SERVER_KEY, &server_key.serialize_pem());
        Ok(TlsFiles {
            ca: write(CA_CERT, &ca_pem),
            cert: write(CLIENT_CERT, &client_cert.pem()),
            key: write(CLIENT_KEY, &client_key.serialize_pem()),
        })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}
