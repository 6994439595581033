//! Helpers for Cairn's end-to-end tests: finding the workspace's binaries and running them.
//!
//! `CARGO_BIN_EXE_*` only covers a package's own binaries, so the binaries of `cairn-backend`,
//! `cairn-agent` and `cairn-reconciler` are found in the target directory beside the test
//! executable. `cargo test` builds only the binaries of packages with integration tests, and
//! not at all when only this package is tested, so the helper runs `cargo build --bins` once
//! per test process (a no-op when they are current) so that no test runs a stale binary.
//!
//! [`openbao`] runs a real OpenBao dev server for the secrets tests; [`etcd`] runs a real etcd
//! cluster for the etcd store's; [`fake_cluster`] serves scripted downstream clusters for the
//! federation tests; [`browser`] drives Debian's Chromium for the web UI's tests.
//! [`eventually`] and [`eventually_blocking`] are how every test waits for an outcome that
//! comes asynchronously.

pub mod bench;
pub mod browser;
pub mod etcd;
pub mod fake_cluster;
pub mod fleet;
pub mod openbao;
mod wait;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use cairn_api::client::{Client, Credentials};

pub use wait::{eventually, eventually_blocking, matching, text_matching};

static BUILD_BINARIES: Once = Once::new();

/// The path of a workspace binary (`cairn-backend`, `cairn-agent`, `cairnctl`).
///
/// # Panics
/// When the binary has not been built, with a message saying how to build it.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executables live in target/<profile>/deps");
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    {
        BUILD_BINARIES.call_once(|| {
            let cargo = option_env!("CARGO").unwrap_or("cargo");
            let mut build = Command::new(cargo);
            build.args(["build", "--workspace", "--bins"]);
            if profile_dir.ends_with("release") {
                build.arg("--release");
            }
            let status = build
                .status()
                .expect("run cargo build for the workspace binaries");
            assert!(status.success(), "cargo build --workspace --bins failed");
        });
    }
    assert!(
        path.is_file(),
        "{} is missing after `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// The agent binary as it ships to hosts: Cargo.toml's `agent` profile (built for size), built
/// here when missing or stale (benchmarks measure this one, not the test build).
///
/// # Panics
/// When the build fails.
pub fn shipped_agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    // target/<profile>/deps/<test> → target/
    let target_dir = exe
        .ancestors()
        .nth(3)
        .expect("test executables live in target/<profile>/deps");
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let status = Command::new(cargo)
        .args(["build", "--profile", "agent", "-p", "cairn-agent"])
        .status()
        .expect("run cargo build --profile agent");
    assert!(
        status.success(),
        "cargo build --profile agent -p cairn-agent failed"
    );
    let path = target_dir
        .join("agent")
        .join(format!("cairn-agent{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing after the build",
        path.display()
    );
    path
}

/// A `Command` for a workspace binary, with logs kept quiet unless `CAIRN_LOG` is set.
pub fn command(name: &str) -> Command {
    let mut command = Command::new(binary(name));
    if std::env::var_os("CAIRN_LOG").is_none() {
        command.env("CAIRN_LOG", "warn");
    }
    command
}

/// A program from outside the workspace that some tests need (etcd, OpenBao's `bao`) and that
/// the test command installs.
pub(crate) struct ExternalProgram {
    /// The command on `PATH`.
    pub(crate) name: &'static str,
    /// An argument that makes it print its version and exit 0.
    pub(crate) version_arg: &'static str,
    /// How to install it, quoted in the messages.
    pub(crate) install: &'static str,
}

impl ExternalProgram {
    /// Whether a test needing the program should run: `true` when it runs; `false` (the caller
    /// returns early, saying so) when it is missing.
    ///
    /// # Panics
    /// When the program is missing and [`openbao::ENV_REQUIRE_DEPS`] is set: there, a skip would
    /// hide a test.
    pub(crate) fn required(&self) -> bool {
        let ExternalProgram {
            name,
            version_arg,
            install,
        } = self;
        let runs = Command::new(name)
            .arg(version_arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !runs {
            let env_require_deps = openbao::ENV_REQUIRE_DEPS;
            assert!(
                std::env::var_os(env_require_deps).is_none(),
                "`{name}` is not on PATH but {env_require_deps} is set (install it with `{install}`)"
            );
            eprintln!("skipped: `{name}` is not on PATH ({install})");
        }
        runs
    }
}

/// The admin password every test backend is initialised with.
pub const ADMIN_PASSWORD: &str = "correct-horse-battery";

/// Extra settings for [`Backend::start_with`]: arguments added to `cairn-backend start` (and
/// to `init`), environment variables of that process, and whether its output is kept in files.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    init_args: Vec<OsString>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    capture_logs: bool,
    without_root_handlers: bool,
    agent_listen: Option<String>,
}

impl BackendOptions {
    /// Where the agent listener binds (`--agent-listen`) instead of 127.0.0.1:0, e.g.
    /// `0.0.0.0:0`.
    pub fn agent_listen(mut self, addr: &str) -> BackendOptions {
        self.agent_listen = Some(addr.to_owned());
        self
    }

    /// Adds an argument to `cairn-backend start` (after the listen addresses and data dir).
    pub fn arg(mut self, arg: impl Into<OsString>) -> BackendOptions {
        self.args.push(arg.into());
        self
    }

    /// Adds several arguments to `cairn-backend start`, as [`BackendOptions::arg`] does.
    pub fn args<I>(self, args: I) -> BackendOptions
    where
        I: IntoIterator,
        I::Item: Into<OsString>,
    {
        args.into_iter().fold(self, BackendOptions::arg)
    }

    /// Adds an argument to `cairn-backend init` (after the data dir), e.g. `--store etcd`.
    /// [`Backend::start_with`] runs `init`; [`Backend::join`] and [`Backend::restart`] do not.
    pub fn init_arg(mut self, arg: impl Into<OsString>) -> BackendOptions {
        self.init_args.push(arg.into());
        self
    }

    /// Adds several arguments to `cairn-backend init`, as [`BackendOptions::init_arg`] does.
    pub fn init_args<I>(self, args: I) -> BackendOptions
    where
        I: IntoIterator,
        I::Item: Into<OsString>,
    {
        args.into_iter().fold(self, BackendOptions::init_arg)
    }

    /// Sets an environment variable of the `start` process (`CAIRN_LOG` here wins over the
    /// quiet default of [`command`]).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> BackendOptions {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Appends the process's stdout and stderr to `stdout.log` and `stderr.log` beside its data
    /// directory (over restarts too) instead of inheriting the test's stderr; see
    /// [`Backend::log_files`].
    pub fn capture_logs(mut self) -> BackendOptions {
        self.capture_logs = true;
        self
    }

    /// Leaves out `--allow-root-handlers`, which `start` otherwise gets when the tests run as
    /// root (as on CI), so that the pipe handlers of the tests run as they did before the
    /// backend refused root handlers by default (issue 13).
    pub fn without_root_handlers(mut self) -> BackendOptions {
        self.without_root_handlers = true;
        self
    }
}

/// Where a backend started with [`BackendOptions::capture_logs`] writes.
#[derive(Debug, Clone)]
struct LogFiles {
    stdout: PathBuf,
    stderr: PathBuf,
}

/// The JWT key pair the backends of one federation share: a P-256 private key (PKCS#8 PEM)
/// and its public key (SubjectPublicKeyInfo PEM), as files for `cairn-backend init`.
#[derive(Debug, Clone)]
pub struct FederationKeys {
    /// The private key file.
    pub private_key_file: PathBuf,
    /// The public key file.
    pub public_key_file: PathBuf,
}

impl FederationKeys {
    /// A fresh P-256 key pair written into `dir` (`jwt-private.pem`, `jwt-public.pem`).
    ///
    /// # Panics
    /// When the key cannot be made or written.
    pub fn generate(dir: &Path) -> FederationKeys {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key pair");
        let keys = FederationKeys {
            private_key_file: dir.join("jwt-private.pem"),
            public_key_file: dir.join("jwt-public.pem"),
        };
        std::fs::write(&keys.private_key_file, key.serialize_pem()).expect("write private key");
        std::fs::write(&keys.public_key_file, key.public_key_pem()).expect("write public key");
        keys
    }
}

/// A backend process on a free port, killed on drop.
pub struct Backend {
    child: Child,
    /// The API URL, read from the process.
    pub url: String,
    /// The agent listener's `host:port` (mutual TLS WebSocket), read from the process.
    pub agent_addr: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    options: BackendOptions,
    logs: Option<LogFiles>,
    _dir: tempfile::TempDir,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Backend {
    /// Initialises a data dir and starts `cairn-backend start` on 127.0.0.1:0.
    pub fn start() -> Backend {
        Backend::start_with(BackendOptions::default())
    }

    /// [`Backend::start`] with extra `start` arguments, environment variables and, when asked,
    /// its output kept in files. [`Backend::restart`] uses the same options.
    pub fn start_with(options: BackendOptions) -> Backend {
        Backend::init_and_start(&[], options)
    }

    /// A backend of a federation: initialised as the cluster `cluster_name` with the shared
    /// JWT key pair `keys` (`init --cluster-name --jwt-private-key-file --jwt-public-key-file`),
    /// so that it accepts the tokens of every other backend started with the same keys.
    pub fn start_federated(cluster_name: &str, keys: &FederationKeys) -> Backend {
        let init_args: Vec<OsString> = vec![
            "--cluster-name".into(),
            cluster_name.into(),
            "--jwt-private-key-file".into(),
            keys.private_key_file.clone().into(),
            "--jwt-public-key-file".into(),
            keys.public_key_file.clone().into(),
        ];
        Backend::init_and_start(&init_args, BackendOptions::default())
    }

    /// Runs `cairn-backend init` with `init_args` and the options' init arguments added, then
    /// starts the backend.
    fn init_and_start(init_args: &[OsString], options: BackendOptions) -> Backend {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        let output = command("cairn-backend")
            .args(["init", "--data-dir"])
            .arg(&data_dir)
            .args(init_args)
            .args(&options.init_args)
            .env("CAIRN_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .output()
            .expect("run cairn-backend init");
        assert!(
            output.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Backend::launch(dir, data_dir, options)
    }

    /// A second backend of `first`'s cluster (both on one shared store, such as etcd): a copy
    /// of `first`'s data directory (recursively, file modes kept) in a new temp dir, and
    /// `cairn-backend start` on it on 127.0.0.1:0 with `options`, without running `init`
    /// (`options`' init arguments are not used).
    ///
    /// # Panics
    /// When the copy fails or the backend does not report its addresses.
    pub fn join(first: &Backend, options: BackendOptions) -> Backend {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        copy_dir(&first.data_dir, &data_dir).unwrap_or_else(|err| {
            panic!(
                "copy the data dir {} to {}: {err}",
                first.data_dir.display(),
                data_dir.display()
            )
        });
        Backend::launch(dir, data_dir, options)
    }

    /// Starts `cairn-backend start` on the ready `data_dir` inside `dir`, on 127.0.0.1:0.
    fn launch(dir: tempfile::TempDir, data_dir: PathBuf, options: BackendOptions) -> Backend {
        let logs = options.capture_logs.then(|| LogFiles {
            stdout: dir.path().join("stdout.log"),
            stderr: dir.path().join("stderr.log"),
        });
        let (child, url, agent_addr) = spawn_backend(
            &data_dir,
            "127.0.0.1:0",
            options.agent_listen.as_deref().unwrap_or("127.0.0.1:0"),
            &options,
            logs.as_ref(),
        )
        .unwrap_or_else(|printed| panic!("backend did not report its address; {printed}"));
        Backend {
            child,
            url,
            agent_addr,
            data_dir,
            options,
            logs,
            _dir: dir,
        }
    }

    /// The process id of the running `cairn-backend start`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The files holding its stdout and stderr, when started with
    /// [`BackendOptions::capture_logs`]; empty otherwise.
    pub fn log_files(&self) -> Vec<PathBuf> {
        self.logs
            .iter()
            .flat_map(|logs| [logs.stdout.clone(), logs.stderr.clone()])
            .collect()
    }

    /// What it wrote to stderr so far (every run), when its logs are captured.
    pub fn log(&self) -> String {
        self.logs
            .as_ref()
            .and_then(|logs| std::fs::read_to_string(&logs.stderr).ok())
            .unwrap_or_default()
    }

    /// The `host:port` the backend listens on.
    pub fn addr(&self) -> &str {
        self.url
            .strip_prefix("https://")
            .unwrap_or(&self.url)
            .trim_end_matches('/')
    }

    /// Stops the backend (SIGTERM, then SIGKILL after 10 s) and waits for it to exit. Its data
    /// directory is kept; [`Backend::restart`] starts it again on the same address.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the backend (SIGKILL), as a crash would end it, and waits for it; a no-op when it
    /// has exited. Its data directory is kept; [`Backend::restart`] starts it again.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the backend if it runs, and starts it again on the same address with the same data
    /// directory. Retries for up to 20 s while the port cannot be bound yet.
    ///
    /// # Panics
    /// When it does not come up on the same address in time.
    pub fn restart(&mut self) {
        self.stop();
        let addr = self.addr().to_owned();
        let agent_addr = self.agent_addr.clone();
        let (child, url, agent) = eventually_blocking(
            &format!("the backend restarting on {addr}"),
            Duration::from_secs(20),
            || {
                spawn_backend(
                    &self.data_dir,
                    &addr,
                    &agent_addr,
                    &self.options,
                    self.logs.as_ref(),
                )
                .inspect_err(|printed| {
                    eprintln!("backend restart on {addr} failed ({printed}); retrying");
                })
            },
        );
        assert_eq!(url, self.url, "the backend came back on another address");
        assert_eq!(agent, self.agent_addr, "the agent listener moved");
        self.child = child;
    }

    /// The cluster CA file.
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.join("tls/ca.pem")
    }

    /// The cluster CA, PEM.
    pub fn ca(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("tls/ca.pem")).expect("read the CA")
    }

    /// A plain HTTPS client of this backend (raw requests, as a Sensu API client sends them):
    /// trusts only the cluster CA, 30 s per request.
    pub fn http(&self) -> reqwest::Client {
        let tls = cairn_api::client::tls_config_trusting(&self.ca()).expect("a TLS config");
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("an HTTP client")
    }

    /// A client of this backend.
    pub fn client(&self, credentials: Credentials) -> Client {
        Client::new(&self.url, &self.ca(), credentials).expect("client")
    }

    /// A client logged in as the admin.
    pub async fn admin(&self) -> Client {
        self.login("admin", ADMIN_PASSWORD).await.0
    }

    /// Logs in as `username` and returns a client with the access token, and the token.
    ///
    /// # Panics
    /// When the login fails.
    pub async fn login(&self, username: &str, password: &str) -> (Client, String) {
        let anonymous = self.client(Credentials::None);
        let tokens = anonymous
            .login(username, password)
            .await
            .unwrap_or_else(|err| panic!("{username} logs in at {}: {err}", self.url));
        let client = anonymous.with_credentials(Credentials::Bearer(tokens.access_token.clone()));
        (client, tokens.access_token)
    }
}

/// A federation gateway's registration of the cluster `name` at `url`, whose API is trusted
/// under the CA `ca_cert` (PEM) only.
pub fn cluster_registration(name: &str, url: &str, ca_cert: &str) -> cairn_api::Resource {
    cairn_api::Resource::new(
        cairn_api::ObjectMeta::named("", name),
        cairn_api::Spec::Cluster(cairn_api::model::Cluster {
            api_urls: vec![url.to_owned()],
            ca_cert: ca_cert.to_owned(),
        }),
    )
}

/// A Replicator `name` of the checks of `default` to the cluster `cluster`, resyncing every
/// second.
pub fn check_replicator(name: &str, cluster: &str) -> cairn_api::Resource {
    cairn_api::Resource::new(
        cairn_api::ObjectMeta::named("", name),
        cairn_api::Spec::Replicator(cairn_api::model::Replicator {
            cluster: cluster.to_owned(),
            api_version: "core/v2".into(),
            resource: "CheckConfig".into(),
            namespace: "default".into(),
            replication_interval_seconds: 1,
            ..cairn_api::model::Replicator::default()
        }),
    )
}

/// The HTTP status with which a client call was refused.
///
/// # Panics
/// When the call succeeded or failed without an answer.
pub fn error_status<T: std::fmt::Debug>(
    result: Result<T, cairn_api::client::ClientError>,
) -> reqwest::StatusCode {
    match result {
        Err(cairn_api::client::ClientError::Status { status, .. }) => status,
        other => panic!("expected an error status, got {other:?}"),
    }
}

/// The status and message of a call: the response's status (and no message) when it
/// succeeded, the refusal's status and message when it was refused.
///
/// # Panics
/// When the call failed without an answer (a transport error).
pub fn status_of(
    result: Result<reqwest::Response, cairn_api::client::ClientError>,
) -> (reqwest::StatusCode, String) {
    match result {
        Ok(response) => (response.status(), String::new()),
        Err(cairn_api::client::ClientError::Status { status, message }) => (status, message),
        Err(err) => panic!("request failed: {err}"),
    }
}

/// Creates each of `namespaces`, as `admin`.
///
/// # Panics
/// When the backend refuses one.
pub async fn create_namespaces(admin: &Client, namespaces: &[&str]) {
    for namespace in namespaces {
        admin
            .send(
                reqwest::Method::PUT,
                &format!("/api/core/v2/namespaces/{namespace}"),
                Some(&serde_json::json!({"name": namespace})),
            )
            .await
            .unwrap_or_else(|err| panic!("create namespace {namespace}: {err}"));
    }
}

/// Creates the local user `name` with `password` and no groups, as `admin`.
///
/// # Panics
/// When the backend refuses.
pub async fn create_user(admin: &Client, name: &str, password: &str) {
    admin
        .send(
            reqwest::Method::POST,
            "/api/core/v2/users",
            Some(&serde_json::json!({"username": name, "password": password, "groups": []})),
        )
        .await
        .unwrap_or_else(|err| panic!("create user {name}: {err}"));
}

/// Grants an API key for `username`, as `admin`, and returns it (from the `Location` header).
///
/// # Panics
/// When the backend refuses or names no key.
pub async fn grant_api_key(admin: &Client, username: &str) -> String {
    let response = admin
        .send(
            reqwest::Method::POST,
            "/api/core/v2/apikeys",
            Some(&serde_json::json!({"username": username})),
        )
        .await
        .unwrap_or_else(|err| panic!("grant an API key to {username}: {err}"));
    response
        .headers()
        .get("location")
        .and_then(|value| value.to_str().ok())
        .and_then(|location| location.rsplit('/').next())
        .expect("the key in the Location header")
        .to_owned()
}

/// The `/metrics` text of the backend `client` talks to (as a user allowed to read it).
///
/// # Panics
/// When the request fails.
pub async fn metrics(client: &Client) -> String {
    client
        .send(reqwest::Method::GET, "/metrics", None)
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics as text")
}

/// Whether this process runs as root (so the backends it starts do too).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|proc| proc.uid() == 0)
}

/// Copies the directory `from` to `to` (which must not exist) recursively, keeping the
/// permission bits of files and directories and copying symbolic links as links.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            copy_dir(&source, &target)?;
        } else if file_type.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target)?;
        } else {
            // `fs::copy` copies the permission bits too.
            std::fs::copy(&source, &target)?;
        }
    }
    // Last, so that a directory without write permission could still be filled.
    std::fs::set_permissions(to, std::fs::metadata(from)?.permissions())
}

/// Starts `cairn-backend start` on `listen` (API) and `agent_listen` and reads the addresses it
/// reports. On failure (it exited without reporting them), the child has been reaped and the
/// error says what it printed.
fn spawn_backend(
    data_dir: &Path,
    listen: &str,
    agent_listen: &str,
    options: &BackendOptions,
    logs: Option<&LogFiles>,
) -> Result<(Child, String, String), String> {
    let append = |path: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|err| panic!("open {}: {err}", path.display()))
    };
    let stderr = match logs {
        Some(logs) => Stdio::from(append(&logs.stderr)),
        None => Stdio::inherit(),
    };
    let mut stdout_log = logs.map(|logs| append(&logs.stdout));
    let mut child = command("cairn-backend")
        .args([
            "start",
            "--api-listen",
            listen,
            "--agent-listen",
            agent_listen,
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(
            (!options.without_root_handlers && running_as_root())
                .then_some("--allow-root-handlers"),
        )
        .args(&options.args)
        .envs(options.env.iter().cloned())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start cairn-backend");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut reader = BufReader::new(stdout);
    let (mut api_line, mut agent_line) = (String::new(), String::new());
    let read = reader
        .read_line(&mut api_line)
        .and_then(|_| reader.read_line(&mut agent_line));
    let api = api_line.trim().strip_prefix("api listening on ");
    let agent = agent_line.trim().strip_prefix("agent listening on ");
    if let Some(file) = stdout_log.as_mut() {
        let _ = file.write_all(format!("{api_line}{agent_line}").as_bytes());
    }
    match (api, agent) {
        (Some(url), Some(agent)) if read.is_ok() => {
            let (url, agent) = (url.to_owned(), agent.to_owned());
            // Keep draining stdout so that later lines never meet a closed pipe.
            std::thread::spawn(move || {
                let mut sink = String::new();
                while reader.read_line(&mut sink).is_ok_and(|read| read > 0) {
                    if let Some(file) = stdout_log.as_mut() {
                        let _ = file.write_all(sink.as_bytes());
                    }
                    sink.clear();
                }
            });
            Ok((child, url, agent))
        }
        _ => {
            let _ = child.kill();
            let status = child.wait();
            let log = logs
                .and_then(|logs| std::fs::read_to_string(&logs.stderr).ok())
                .map(|log| format!("; its stderr:\n{log}"))
                .unwrap_or_default();
            Err(format!(
                "it printed {api_line:?} {agent_line:?} and exited with {status:?}{log}"
            ))
        }
    }
}

/// A `cairn-agent start` process, stopped on drop (SIGTERM, then SIGKILL). Its stderr (the
/// log, at `info` unless `CAIRN_LOG` says otherwise) is appended to a file beside its
/// configuration.
pub struct Agent {
    child: Child,
    /// The local API's `host:port`, read from the process.
    pub local_api: String,
    /// The configuration file it was started with.
    pub config: PathBuf,
    /// Where its stderr goes.
    pub log_file: PathBuf,
}

impl Drop for Agent {
    /// SIGTERM first, so that the agent kills the checks it runs; SIGKILL after 5 s.
    fn drop(&mut self) {
        self.stop_within(Duration::from_secs(5));
    }
}

impl Agent {
    /// Starts `cairn-agent start --config <config>` and waits for the local API's address.
    ///
    /// # Panics
    /// When the agent exits before it reports the address; the message holds its log.
    pub fn start(config: &Path) -> Agent {
        Agent::start_with_env(config, &[])
    }

    /// [`Agent::start`] with extra environment variables (`CAIRN_LOG` here wins).
    ///
    /// # Panics
    /// When the agent exits before it reports the address; the message holds its log.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Agent {
        // Agents of concurrent tests must not contend for the agent socket's fixed default
        // port (3030): one that sets no `socket:` gets a free port.
        let text = std::fs::read_to_string(config).expect("read agent.yaml");
        if !text.lines().any(|line| line.starts_with("socket:")) {
            std::fs::write(config, text.trim_end().to_owned() + "\nsocket: {port: 0}\n")
                .expect("write agent.yaml");
        }
        let log_file = config.with_file_name("agent.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .expect("open the agent's log file");
        let mut child = Command::new(binary("cairn-agent"))
            .arg("start")
            .arg("--config")
            .arg(config)
            .env(
                "CAIRN_LOG",
                std::env::var("CAIRN_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .env_remove("CAIRN_AGENT_CONFIG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start cairn-agent");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let read = reader.read_line(&mut line);
        match line.trim().strip_prefix("local api listening on ") {
            Some(addr) if read.is_ok() => {
                let local_api = addr.to_owned();
                std::thread::spawn(move || {
                    let mut sink = String::new();
                    while reader.read_line(&mut sink).is_ok_and(|read| read > 0) {
                        sink.clear();
                    }
                });
                Agent {
                    child,
                    local_api,
                    config: config.to_owned(),
                    log_file,
                }
            }
            _ => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "the agent printed {line:?} and exited with {status:?}; its log:\n{}",
                    std::fs::read_to_string(&log_file).unwrap_or_default()
                );
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the agent logged so far (every run with this configuration).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to 10 s for the agent to exit; returns its exit status, or
    /// `None` when it had to be killed.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        self.stop_within(Duration::from_secs(10))
    }

    fn stop_within(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

/// An agent enrolled by `cairn-agent install` with a join token: its configuration directory
/// and systemd unit live in a temporary directory, removed on drop (drop the [`Agent`] first).
pub struct AgentInstall {
    /// The entity name it enrolled as.
    pub name: String,
    /// The directory `install` wrote (`agent.yaml`, its key and certificate, the cluster CA).
    pub config_dir: PathBuf,
    _root: tempfile::TempDir,
}

impl AgentInstall {
    /// Runs `cairn-agent install` as `name` against `backend` (its API for the bootstrap, its
    /// agent listener for sessions), the join token in `CAIRN_JOIN_TOKEN`.
    ///
    /// # Panics
    /// When the install fails; the message holds what it printed.
    pub fn install(backend: &Backend, token: &str, name: &str) -> AgentInstall {
        AgentInstall::try_install(backend, token, name).unwrap_or_else(|printed| {
            panic!(
                "cairn-agent install {name} against {} failed: {printed}",
                backend.url
            )
        })
    }

    /// [`AgentInstall::install`], returning what the install printed when it fails.
    ///
    /// # Errors
    /// The install's stdout and stderr when it exits unsuccessfully.
    pub fn try_install(backend: &Backend, token: &str, name: &str) -> Result<AgentInstall, String> {
        let root = tempfile::tempdir().expect("tempdir");
        let config_dir = root.path().join("etc-cairn-agent");
        let output = command("cairn-agent")
            .arg("install")
            .args(["--backend-url", &backend.url, "--name", name])
            .args(["--agent-url", &format!("wss://{}", backend.agent_addr)])
            .arg("--config-dir")
            .arg(&config_dir)
            .arg("--systemd-unit")
            .arg(root.path().join("cairn-agent.service"))
            .env("CAIRN_JOIN_TOKEN", token)
            .env_remove("CAIRN_AGENT_CONFIG")
            .output()
            .expect("run cairn-agent install");
        if !output.status.success() {
            return Err(format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(AgentInstall {
            name: name.to_owned(),
            config_dir,
            _root: root,
        })
    }

    /// The configuration file `install` wrote.
    pub fn config(&self) -> PathBuf {
        self.config_dir.join("agent.yaml")
    }

    /// Starts the agent with its local API on a free port (`local_api: 127.0.0.1:0` written
    /// into `agent.yaml`, replacing any other value).
    ///
    /// # Panics
    /// As [`Agent::start`], or when `agent.yaml` cannot be rewritten.
    pub fn start(&self) -> Agent {
        let config = self.config();
        let text = std::fs::read_to_string(&config).expect("read agent.yaml");
        let mut lines: Vec<&str> = text
            .lines()
            .filter(|line| !line.starts_with("local_api:"))
            .collect();
        lines.push("local_api: 127.0.0.1:0");
        std::fs::write(&config, lines.join("\n") + "\n").expect("write agent.yaml");
        Agent::start(&config)
    }
}
