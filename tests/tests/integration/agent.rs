//! The agent end to end, against a real backend: `cairn-agent install` with a join token, then
//! `cairn-agent start` — its entity, scheduled checks (and a timeout that kills the whole
//! process group), the local event API; refusals at every step of enrolment and of the mutual
//! TLS session (with nothing registered), the revocation of a live agent, an on-disk queue that
//! survives a backend restart without losing or duplicating an event, and keepalive warning,
//! critical and resolution.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::agent::{AgentMessage, BackendMessage, Hello, AGENT_PATH, PROTOCOL_VERSION};
use cairn_api::client::{plain_http_client, Client, ClientError};
use cairn_tests::{command, eventually, text_matching, Agent, Backend, BackendOptions};
use futures::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use reqwest::{Method, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::common::Ctl;

pub(super) const NS: &str = "default";

// === the REST API ===

pub(super) fn entity_path(name: &str) -> String {
    format!("/api/core/v2/namespaces/{NS}/entities/{name}")
}

pub(super) fn event_path(entity: &str, check: &str) -> String {
    format!("/api/core/v2/namespaces/{NS}/events/{entity}/{check}")
}

/// `GET` a document; `None` for a 404.
pub(super) async fn get_opt(client: &Client, path: &str) -> Option<Value> {
    match client.get_json(path).await {
        Ok(value) => Some(value),
        Err(ClientError::Status { status, .. }) if status == StatusCode::NOT_FOUND => None,
        Err(err) => panic!("GET {path}: {err}"),
    }
}

async fn assert_no_entity(client: &Client, name: &str) {
    let entity = get_opt(client, &entity_path(name)).await;
    assert!(
        entity.is_none(),
        "entity {name} was registered: {entity:#?}"
    );
}

pub(super) async fn put_check(client: &Client, name: &str, spec: Value) {
    put_resource(client, "checks", name, spec).await;
}

/// `PUT`s the core/v2 resource `plural/name` of [`NS`] with `spec` (its metadata added).
pub(super) async fn put_resource(client: &Client, plural: &str, name: &str, spec: Value) {
    let mut body = spec;
    body["metadata"] = json!({"name": name, "namespace": NS});
    client
        .send(
            Method::PUT,
            &format!("/api/core/v2/namespaces/{NS}/{plural}/{name}"),
            Some(&body),
        )
        .await
        .unwrap_or_else(|err| panic!("PUT {plural}/{name}: {err}"));
}

/// Mints a join token through the API; returns the token and its id.
async fn mint_token(admin: &Client, uses: u32, subscriptions: &[&str]) -> (String, String) {
    let response = admin
        .send(
            Method::POST,
            "/api/cairn/v1/jointokens",
            Some(&json!({
                "ttl_seconds": 600,
                "uses": uses,
                "subscriptions": subscriptions,
                "namespace": NS,
            })),
        )
        .await
        .expect("create a join token");
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.expect("the token as JSON");
    let field = |name: &str| {
        body[name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} in {body}"))
            .to_owned()
    };
    (field("token"), field("id"))
}

/// The history of an event as `(status, executed)`.
fn history(event: &Value) -> Vec<(u64, i64)> {
    event["check"]["history"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|entry| {
                    (
                        entry["status"].as_u64().unwrap_or(u64::MAX),
                        entry["executed"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

// === installing and running agents ===

/// An agent installation: its config dir inside a temp dir that also holds what the test
/// writes beside it.
pub(super) struct Install {
    name: String,
    dir: PathBuf,
    unit: PathBuf,
    pub(super) root: tempfile::TempDir,
}

impl Install {
    pub(super) fn config(&self) -> PathBuf {
        self.dir.join("agent.yaml")
    }

    pub(super) fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.file(name))
            .unwrap_or_else(|err| panic!("read {}: {err}", self.file(name).display()))
    }

    /// Whether `install` wrote anything.
    fn wrote_anything(&self) -> bool {
        self.dir.exists() || self.unit.exists()
    }

    /// How many events wait in the on-disk queue.
    fn queued(&self) -> usize {
        std::fs::read_dir(self.file("queue"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|entry| entry.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    }
}

/// Runs `cairn-agent install` for `name` into a new temp dir, the token in `CAIRN_JOIN_TOKEN`.
fn run_install(backend: &Backend, token: &str, name: &str) -> (Install, Output) {
    run_install_with(backend, token, name, false)
}

/// [`run_install`], the token given with `--token` when `token_flag`.
fn run_install_with(
    backend: &Backend,
    token: &str,
    name: &str,
    token_flag: bool,
) -> (Install, Output) {
    let agent_url = format!("wss://{}", backend.agent_addr);
    install_against(
        &backend.url,
        token,
        name,
        token_flag,
        &["--agent-url", &agent_url],
    )
}

/// Runs `cairn-agent install` for `name` against the API at `backend_url` into a new temp dir,
/// with `args` added; the token in `CAIRN_JOIN_TOKEN`, or with `--token` when `token_flag`.
fn install_against(
    backend_url: &str,
    token: &str,
    name: &str,
    token_flag: bool,
    args: &[&str],
) -> (Install, Output) {
    let root = tempfile::tempdir().expect("tempdir");
    let install = Install {
        name: name.to_owned(),
        dir: root.path().join("etc-cairn-agent"),
        unit: root.path().join("cairn-agent.service"),
        root,
    };
    let mut install_command = command("cairn-agent");
    if token_flag {
        install_command.env_remove("CAIRN_JOIN_TOKEN");
    } else {
        install_command.env("CAIRN_JOIN_TOKEN", token);
    }
    let output = install_command
        .arg("install")
        .args(["--backend-url", backend_url, "--name", name])
        .args(args)
        .arg("--config-dir")
        .arg(&install.dir)
        .arg("--systemd-unit")
        .arg(&install.unit)
        .args(if token_flag {
            vec!["--token", token]
        } else {
            vec![]
        })
        .output()
        .expect("run cairn-agent install");
    (install, output)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Installs `name` with a fresh single-use token granting `linux`.
pub(super) async fn enrol(backend: &Backend, admin: &Client, name: &str) -> Install {
    let (token, _) = mint_token(admin, 1, &["linux"]).await;
    let (install, output) = run_install(backend, &token, name);
    assert!(
        output.status.success(),
        "install {name} failed: {}",
        stderr(&output)
    );
    install
}

/// Sets top-level scalar fields of `agent.yaml` (replacing the line of the field, or appending).
pub(super) fn set_config(config: &Path, settings: &[(&str, &str)]) {
    let text = std::fs::read_to_string(config).expect("read agent.yaml");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for (key, value) in settings {
        let line = format!("{key}: {value}");
        let prefix = format!("{key}:");
        match lines.iter().position(|line| line.starts_with(&prefix)) {
            Some(idx) => lines[idx] = line,
            None => lines.push(line),
        }
    }
    std::fs::write(config, lines.join("\n") + "\n").expect("write agent.yaml");
}

/// Starts the installed agent with its local API on a free port and `settings` applied.
pub(super) fn start_agent(install: &Install, settings: &[(&str, &str)]) -> Agent {
    let mut all = vec![("local_api", "127.0.0.1:0")];
    all.extend_from_slice(settings);
    set_config(&install.config(), &all);
    Agent::start(&install.config())
}

pub(super) fn local_http() -> reqwest::Client {
    plain_http_client(Duration::from_secs(5)).expect("a plain HTTP client")
}

/// Whether the agent's `/healthz` says it is connected to a backend.
async fn healthy(http: &reqwest::Client, agent: &Agent) -> bool {
    http.get(format!("http://{}/healthz", agent.local_api))
        .send()
        .await
        .is_ok_and(|response| response.status() == StatusCode::OK)
}

pub(super) async fn wait_connected(agent: &Agent) {
    let http = local_http();
    eventually("the agent connecting", Duration::from_secs(20), || async {
        if healthy(&http, agent).await {
            Ok(())
        } else {
            Err(agent.log())
        }
    })
    .await;
}

/// `POST /events` on the agent's local API; returns the status and body.
pub(super) async fn post_local(
    http: &reqwest::Client,
    agent: &Agent,
    event: &Value,
) -> (StatusCode, String) {
    let response = http
        .post(format!("http://{}/events", agent.local_api))
        .json(event)
        .send()
        .await
        .expect("POST to the local API");
    let status = response.status();
    (status, response.text().await.unwrap_or_default())
}

/// Waits until the event `entity/check` satisfies `accept`, and returns it.
pub(super) async fn wait_event(
    client: &Client,
    agent: Option<&Agent>,
    (entity, check): (&str, &str),
    within: Duration,
    what: &str,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    let path = event_path(entity, check);
    eventually(what, within, || async {
        match get_opt(client, &path).await {
            Some(event) if accept(&event) => Ok(event),
            event => Err(format!(
                "last event: {event:#?}\nagent log:\n{}",
                agent.map(Agent::log).unwrap_or_default()
            )),
        }
    })
    .await
}

/// Gone (`kill(pid, 0)` fails with ESRCH) or a zombie waiting to be reaped.
fn is_dead(pid: i32) -> bool {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Err(nix::errno::Errno::ESRCH) => true,
        _ => std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let (_, rest) = stat.rsplit_once(')')?;
                rest.split_whitespace().next()?.chars().next()
            })
            .is_none_or(|state| state == 'Z' || state == 'X'),
    }
}

fn pids_in(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

// === speaking the session protocol ourselves ===

/// A TLS 1.3 client configuration trusting only `ca_pem`, with the client certificate and key
/// (PEM) when given.
fn session_tls(ca_pem: &str, identity: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("a CA certificate")).expect("a root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("the client certificate");
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("the client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("a usable client certificate")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn hello(name: &str) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        name: name.to_owned(),
        namespace: NS.to_owned(),
        subscriptions: vec!["linux".to_owned()],
        keepalive_interval: 20,
        keepalive_warning_timeout: 120,
        keepalive_critical_timeout: 180,
        agent_version: "e2e-test".to_owned(),
        ..Hello::default()
    }
}

/// Connects to the agent listener as an agent does (TLS, WebSocket upgrade at `/agentconnect`),
/// sends `hello`, and returns the backend's first message; `Err` says which step failed.
async fn open_session(
    agent_addr: &str,
    tls: Arc<rustls::ClientConfig>,
    hello: Hello,
) -> Result<BackendMessage, String> {
    let exchange = async {
        let host = agent_addr
            .rsplit_once(':')
            .map_or(agent_addr, |(host, _)| host)
            .to_owned();
        let server_name = ServerName::try_from(host).map_err(|err| err.to_string())?;
        let tcp = tokio::net::TcpStream::connect(agent_addr)
            .await
            .map_err(|err| format!("TCP: {err}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(|err| format!("TLS: {err}"))?;
        let url = format!("wss://{agent_addr}{AGENT_PATH}");
        let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .map_err(|err| format!("WebSocket: {err}"))?;
        let hello = serde_json::to_string(&AgentMessage::Hello(Box::new(hello)))
            .expect("serialise the hello");
        ws.send(Message::text(hello))
            .await
            .map_err(|err| format!("send the hello: {err}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let message = serde_json::from_str::<BackendMessage>(text.as_str())
                        .map_err(|err| format!("not a backend message ({err}): {text}"))?;
                    let _ = ws.close(None).await;
                    return Ok(message);
                }
                Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(format!("read: {err}")),
                None => return Err("the connection ended".to_owned()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .unwrap_or_else(|_| Err("no answer within 15 s".to_owned()))
}

/// [`open_session`], expecting TLS and the upgrade to succeed and the hello to be refused
/// (fatally); returns the reason.
async fn refused_hello(agent_addr: &str, tls: Arc<rustls::ClientConfig>, hello: Hello) -> String {
    let answer = open_session(agent_addr, tls, hello)
        .await
        .expect("TLS and the upgrade succeed; the hello is refused");
    match answer {
        BackendMessage::Refused { reason, fatal } => {
            assert!(fatal, "a non-fatal refusal: {reason}");
            reason
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A client certificate (and its key, PEM) for `name` of the namespace [`NS`] (its URI SAN
/// `cairn:agent:<NS>/<name>` unless `bound` is false, as certificates were before they named
/// their namespace), signed by `issuer`, valid over `validity` (rcgen's default, 1975 to 4096,
/// when `None`).
fn client_cert(
    name: &str,
    issuer: &Issuer<'_, KeyPair>,
    validity: Option<(i32, i32)>,
    bound: bool,
) -> (String, String) {
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    if bound {
        let uri = format!("cairn:agent:{NS}/{name}");
        params.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from(uri).expect("an ASCII URI"),
        )];
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    if let Some((from, to)) = validity {
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(to, 1, 1);
    }
    let cert = params
        .signed_by(&key, issuer)
        .expect("sign the certificate");
    (cert.pem(), key.serialize_pem())
}

/// A new self-signed CA named `common_name`.
fn self_signed_ca(common_name: &str) -> Issuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Issuer::new(params, KeyPair::generate().expect("a key"))
}

/// The backend's agent CA, from its data dir.
fn agent_ca(backend: &Backend) -> (String, Issuer<'static, KeyPair>) {
    let tls = backend.data_dir.join("tls");
    let cert = std::fs::read_to_string(tls.join("agent-ca.pem")).expect("agent-ca.pem");
    let key = std::fs::read_to_string(tls.join("agent-ca.key")).expect("agent-ca.key");
    let key = KeyPair::from_pem(&key).expect("the agent CA key");
    let issuer = Issuer::from_ca_cert_pem(&cert, key).expect("the agent CA");
    (cert, issuer)
}

/// The common name of the first certificate in `pem`.
fn common_name(pem: &str) -> String {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("a certificate");
    let mut names = cert.subject().iter_common_name();
    let name = names
        .next()
        .and_then(|name| name.as_str().ok())
        .expect("a common name")
        .to_owned();
    assert!(names.next().is_none(), "more than one CN in {pem}");
    name
}

// === the tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_run_check_and_timeout() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let name = "web-01";

    let (token, _) = mint_token(&admin, 1, &["linux"]).await;
    let (install, output) = run_install(&backend, &token, name);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    assert!(output.status.success(), "install failed: {printed}");
    let secret = token.split('.').nth(2).expect("the token's secret");
    assert!(
        !printed.contains(secret),
        "install printed the secret: {printed}"
    );

    // What install wrote.
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&install.file("agent.key")), 0o600, "agent.key's mode");
    assert_eq!(mode(&install.dir), 0o700, "the config dir's mode");
    assert_eq!(common_name(&install.read("agent.pem")), name);
    assert_eq!(
        CertificateDer::from_pem_slice(install.read("ca.pem").as_bytes()).expect("ca.pem"),
        CertificateDer::from_pem_slice(backend.ca().as_bytes()).expect("the cluster CA"),
        "ca.pem is the cluster CA"
    );
    let yaml = install.read("agent.yaml");
    assert!(yaml.contains(&format!("name: {name}")), "{yaml}");
    assert!(yaml.contains("linux"), "the token's subscription: {yaml}");
    let unit = std::fs::read_to_string(&install.unit).expect("the systemd unit");
    assert!(
        unit.contains(&install.config().display().to_string()),
        "{unit}"
    );

    // Running: the entity registers itself.
    let agent = start_agent(&install, &[]);
    let entity = eventually("the agent's entity", Duration::from_secs(20), || async {
        get_opt(&admin, &entity_path(name))
            .await
            .ok_or_else(|| agent.log())
    })
    .await;
    assert_eq!(entity["entity_class"], "agent", "{entity:#}");
    assert!(
        entity["system"]["hostname"]
            .as_str()
            .is_some_and(|hostname| !hostname.is_empty()),
        "no host name: {entity:#}"
    );
    let subscriptions: Vec<&str> = entity["subscriptions"]
        .as_array()
        .map(|all| all.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for expected in ["linux", &format!("entity:{name}")] {
        assert!(
            subscriptions.contains(&expected),
            "{expected} missing from {subscriptions:?}"
        );
    }

    // A scheduled check runs on the agent and its result is stored.
    put_check(
        &admin,
        "hello",
        json!({
            "command": "echo hello",
            "interval": 1,
            "subscriptions": ["linux"],
            "publish": true,
        }),
    )
    .await;
    let event = wait_event(
        &admin,
        Some(&agent),
        (name, "hello"),
        Duration::from_secs(10),
        "the hello check's result",
        |event| {
            event["check"]["output"]
                .as_str()
                .is_some_and(|out| out.trim() == "hello")
        },
    )
    .await;
    assert_eq!(event["check"]["status"], 0, "{event:#}");
    assert_eq!(event["entity"]["metadata"]["name"], name, "{event:#}");

    // A check over its timeout: status 2, "timed out", and its children killed.
    let pid_file = install.root.path().join("slow.pids");
    put_check(
        &admin,
        "slow",
        json!({
            "command": format!("sleep 30 & echo $! >> '{}'; wait", pid_file.display()),
            "interval": 2,
            "timeout": 1,
            "subscriptions": ["linux"],
            "publish": true,
        }),
    )
    .await;
    let event = wait_event(
        &admin,
        Some(&agent),
        (name, "slow"),
        Duration::from_secs(10),
        "the slow check's result",
        |event| event["check"]["status"] == 2,
    )
    .await;
    let output = event["check"]["output"].as_str().unwrap_or_default();
    assert!(output.contains("timed out"), "{event:#}");
    let me = i32::try_from(std::process::id()).expect("a pid");
    assert!(!is_dead(me), "is_dead must tell a live process");
    let first = *pids_in(&pid_file)
        .first()
        .expect("the slow check recorded its sleep");
    assert!(
        is_dead(first),
        "the timed-out run's `sleep 30` (pid {first}) still runs"
    );
    // No more runs; every sleep any run started is gone once the last run timed out.
    admin
        .delete_resource(cairn_api::Kind::CheckConfig, NS, "slow")
        .await
        .expect("delete the slow check");
    eventually(
        "every `sleep 30` killed",
        Duration::from_secs(10),
        || async {
            match pids_in(&pid_file).into_iter().find(|&pid| !is_dead(pid)) {
                Some(alive) => Err(format!("pid {alive} still runs")),
                None => Ok(()),
            }
        },
    )
    .await;

    // The local API: an event posted on the host is stored for this entity.
    let http = local_http();
    let (status, body) = post_local(
        &http,
        &agent,
        &json!({"check": {
            "metadata": {"name": "local-report"},
            "status": 1,
            "output": "posted locally",
        }}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let event = wait_event(
        &admin,
        Some(&agent),
        (name, "local-report"),
        Duration::from_secs(10),
        "the locally posted event",
        |_| true,
    )
    .await;
    assert_eq!(event["check"]["output"], "posted locally", "{event:#}");
    assert_eq!(event["check"]["status"], 1, "{event:#}");
    assert_eq!(event["entity"]["metadata"]["name"], name, "{event:#}");
    assert_eq!(event["entity"]["entity_class"], "agent", "{event:#}");

    // A malformed event is refused with a message.
    let (status, body) = post_local(&http, &agent, &json!({"check": {"status": 0}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("message"), "{body}");

    // SIGTERM stops it cleanly.
    let mut agent = agent;
    let exit = agent.terminate();
    assert!(
        exit.is_some_and(|status| status.success()),
        "SIGTERM: {exit:?}\n{}",
        agent.log()
    );
}

/// A token past its expiry is refused, and nothing is registered. Join tokens live at least
/// 60 s, so this test waits out one minute (in parallel with the others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_join_token_is_refused() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let response = admin
        .send(
            Method::POST,
            "/api/cairn/v1/jointokens",
            Some(&json!({"ttl_seconds": 60, "uses": 5, "namespace": NS})),
        )
        .await
        .expect("create a join token");
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.expect("the token as JSON");
    let token = body["token"].as_str().expect("a token").to_owned();
    let expires_at = body["expires_at"].as_u64().expect("expires_at");
    // A clock, not a readiness: the token expires when the backend's clock passes expires_at.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    tokio::time::sleep(Duration::from_secs(expires_at.saturating_sub(now) + 1)).await;
    let (install, output) = run_install(&backend, &token, "expired-token");
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("join token expired"), "{text}");
    let secret = token.split('.').nth(2).unwrap_or("-");
    assert!(!text.contains(secret), "the secret was printed: {text}");
    assert!(!install.wrote_anything());
    assert_no_entity(&admin, "expired-token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_join_tokens_register_nothing() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let refused = |install: &Install, output: &Output, phrase: &str, token: &str| {
        let text = stderr(output);
        assert_eq!(
            output.status.code(),
            Some(1),
            "install {} should fail: {text}",
            install.name
        );
        assert!(text.contains(phrase), "expected {phrase:?} in: {text}");
        let secret = token.split('.').nth(2).unwrap_or("-");
        assert!(!text.contains(secret), "the secret was printed: {text}");
        assert!(
            !install.wrote_anything(),
            "install {} wrote files although it failed",
            install.name
        );
    };

    // A deleted token is unknown.
    let (token, id) = mint_token(&admin, 1, &[]).await;
    let response = admin
        .send(
            Method::DELETE,
            &format!("/api/cairn/v1/jointokens/{id}"),
            None,
        )
        .await
        .expect("delete the token");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (deleted, output) = run_install(&backend, &token, "deleted-token");
    refused(&deleted, &output, "join token unknown", &token);

    // A single-use token works once.
    let (token, _) = mint_token(&admin, 1, &[]).await;
    let (first, output) = run_install(&backend, &token, "first-use");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(first.config().exists());
    let (second, output) = run_install(&backend, &token, "second-use");
    refused(&second, &output, "join token used up", &token);

    // A token pinning another CA: the agent does not trust this backend.
    let (token, _) = mint_token(&admin, 1, &[]).await;
    let (head, fingerprint) = token.rsplit_once('.').expect("a fingerprint");
    let other = if fingerprint.starts_with('0') {
        "1".repeat(64)
    } else {
        "0".repeat(64)
    };
    let forged = format!("{head}.{other}");
    let (pinned, output) = run_install(&backend, &forged, "other-ca");
    refused(
        &pinned,
        &output,
        "the backend's CA does not match the join token",
        &forged,
    );
    // That attempt never reached the backend: the token is still unused (given with --token).
    let (unspent, output) = run_install_with(&backend, &token, "unspent", true);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(unspent.config().exists());

    // A malformed token is a usage error.
    let (malformed, output) = run_install(&backend, "cairn-join.nope", "malformed");
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("invalid join token"),
        "{}",
        stderr(&output)
    );
    assert!(!malformed.wrote_anything());

    for name in [
        "deleted-token",
        "second-use",
        "other-ca",
        "malformed",
        "first-use",
        "unspent",
    ] {
        assert_no_entity(&admin, name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tls_sessions_register_nothing() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let ca = backend.ca();
    let addr = backend.agent_addr.as_str();
    let (agent_ca_pem, agent_ca) = agent_ca(&backend);

    // No client certificate.
    let failure = open_session(addr, session_tls(&ca, None), hello("no-cert"))
        .await
        .expect_err("a session without a client certificate");
    assert!(failure.contains("CertificateRequired"), "{failure}");

    // Certificates from other CAs: one of its own name (an unknown issuer), and one with the
    // agent CA's very name (its signature does not verify).
    for (cn, issuer, alert) in [
        ("intruder", "another agent CA".to_owned(), "UnknownCA"),
        ("impostor", common_name(&agent_ca_pem), "DecryptError"),
    ] {
        let (cert, key) = client_cert(cn, &self_signed_ca(&issuer), None, true);
        let failure = open_session(addr, session_tls(&ca, Some((&cert, &key))), hello(cn))
            .await
            .expect_err("a session with a certificate from another CA");
        assert!(failure.contains(alert), "{cn}: {failure}");
    }

    // An expired certificate from the agent CA.
    let (cert, key) = client_cert("expired-agent", &agent_ca, Some((2000, 2001)), true);
    let failure = open_session(
        addr,
        session_tls(&ca, Some((&cert, &key))),
        hello("expired-agent"),
    )
    .await
    .expect_err("a session with an expired certificate");
    assert!(failure.contains("CertificateExpired"), "{failure}");

    // A current certificate from the agent CA that does not name its namespace (as they were
    // issued before certificates were bound to one): told to re-enrol.
    let (cert, key) = client_cert("unbound", &agent_ca, None, false);
    let reason = refused_hello(
        addr,
        session_tls(&ca, Some((&cert, &key))),
        hello("unbound"),
    )
    .await;
    assert!(
        reason.contains("does not name its namespace")
            && reason.contains("re-enrol the agent with a new join token"),
        "{reason}"
    );

    // Control: the same path with a current certificate from the agent CA is welcomed.
    let (cert, key) = client_cert("forged-ok", &agent_ca, None, true);
    let welcome = open_session(
        addr,
        session_tls(&ca, Some((&cert, &key))),
        hello("forged-ok"),
    )
    .await
    .expect("a session with a current certificate from the agent CA");
    assert_eq!(
        welcome,
        BackendMessage::Welcome {
            entity: "forged-ok".into()
        }
    );

    // An installed agent's certificate with a hello for another name.
    let install = enrol(&backend, &admin, "cn-owner").await;
    let (cert, key) = (install.read("agent.pem"), install.read("agent.key"));
    let reason = refused_hello(
        addr,
        session_tls(&ca, Some((&cert, &key))),
        hello("someone-else"),
    )
    .await;
    assert!(
        reason.contains("someone-else") && reason.contains("cn-owner"),
        "the refusal should name both names: {reason}"
    );

    for name in [
        "no-cert",
        "intruder",
        "expired-agent",
        "unbound",
        "someone-else",
        "cn-owner",
    ] {
        assert_no_entity(&admin, name).await;
    }
    // Control: with its own name, the certificate is welcomed and the entity registered.
    let welcome = open_session(
        addr,
        session_tls(&ca, Some((&cert, &key))),
        hello("cn-owner"),
    )
    .await
    .expect("the installed agent's certificate");
    assert_eq!(
        welcome,
        BackendMessage::Welcome {
            entity: "cn-owner".into()
        }
    );
    assert!(get_opt(&admin, &entity_path("cn-owner")).await.is_some());
    assert!(get_opt(&admin, &entity_path("forged-ok")).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_agent_is_dropped_at_once() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let name = "doomed-01";
    let install = enrol(&backend, &admin, name).await;
    let mut agent = start_agent(&install, &[]);
    wait_connected(&agent).await;
    eventually("the agent's entity", Duration::from_secs(10), || async {
        get_opt(&admin, &entity_path(name))
            .await
            .ok_or_else(|| agent.log())
    })
    .await;

    let ctl = Ctl::configure(&backend);
    let output = ctl.output(&["agent", "revoke", name]);
    let revoked = Instant::now();
    assert!(output.status.success(), "revoke: {}", stderr(&output));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains(&format!("revoked agent {NS}/{name}")),
        "{printed}"
    );

    // The live session is refused and dropped at once.
    let http = local_http();
    eventually(
        "the revoked session dropped",
        Duration::from_secs(3),
        || async {
            if healthy(&http, &agent).await || !agent.log().contains("certificate revoked") {
                Err(agent.log())
            } else {
                Ok(())
            }
        },
    )
    .await;
    eprintln!("revoked session dropped after {:?}", revoked.elapsed());

    // A fresh connection with the same certificate is refused.
    let (cert, key) = (install.read("agent.pem"), install.read("agent.key"));
    let reason = refused_hello(
        &backend.agent_addr,
        session_tls(&backend.ca(), Some((&cert, &key))),
        hello(name),
    )
    .await;
    assert!(reason.contains("revoked"), "{reason}");
    // And the agent stays disconnected.
    assert!(!healthy(&http, &agent).await, "{}", agent.log());
    let exit = agent.terminate();
    assert!(exit.is_some_and(|status| status.success()), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_restart_no_loss_no_dup() {
    const EVENTS: i64 = 20;
    const EXECUTED_BASE: i64 = 1_700_000_000;
    let mut backend = Backend::start();
    let admin = backend.admin().await;
    let name = "queue-01";
    let install = enrol(&backend, &admin, name).await;
    let agent = start_agent(&install, &[]);
    wait_connected(&agent).await;

    backend.stop();
    let http = local_http();
    for n in 1..=EVENTS {
        let (status, body) = post_local(
            &http,
            &agent,
            &json!({"check": {
                "metadata": {"name": "queued"},
                "status": 0,
                "output": format!("n={n}"),
                "executed": EXECUTED_BASE + n,
            }}),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "event {n}: {body}");
    }
    // They wait on disk while the backend is down.
    eventually(
        "20 events in the on-disk queue",
        Duration::from_secs(5),
        || async {
            match install.queued() {
                queued if queued < 20 => Err(format!("{queued} queued\n{}", agent.log())),
                _ => Ok(()),
            }
        },
    )
    .await;

    let down = Instant::now();
    backend.restart();
    let admin = backend.admin().await;
    let event = wait_event(
        &admin,
        Some(&agent),
        (name, "queued"),
        Duration::from_secs(40),
        "the queued events delivered after the restart",
        |event| event["check"]["output"] == format!("n={EVENTS}"),
    )
    .await;
    eprintln!(
        "queued events delivered {:?} after the restart",
        down.elapsed()
    );
    // Every acknowledgement came back: nothing is left to resend.
    eventually("the queue emptied", Duration::from_secs(15), || async {
        match install.queued() {
            0 => Ok(()),
            queued => Err(format!("{queued} queued\n{}", agent.log())),
        }
    })
    .await;
    let event = get_opt(&admin, &event_path(name, "queued"))
        .await
        .unwrap_or_else(|| panic!("the queued event vanished; before: {event:#}"));
    let expected: Vec<(u64, i64)> = (1..=EVENTS).map(|n| (0, EXECUTED_BASE + n)).collect();
    assert_eq!(history(&event), expected, "{event:#}");
    assert_eq!(event["check"]["occurrences"], EVENTS, "{event:#}");
    assert_eq!(event["entity"]["metadata"]["name"], name, "{event:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_warning_critical_and_resolution() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let name = "beat-01";
    let install = enrol(&backend, &admin, name).await;
    let mut agent = start_agent(
        &install,
        &[
            ("keepalive_interval", "1"),
            ("keepalive_warning_timeout", "3"),
            ("keepalive_critical_timeout", "5"),
        ],
    );
    let keepalive = (name, "keepalive");
    wait_event(
        &admin,
        Some(&agent),
        keepalive,
        Duration::from_secs(20),
        "a passing keepalive",
        |event| event["check"]["status"] == 0,
    )
    .await;

    let exit = agent.terminate();
    let stopped = Instant::now();
    assert!(
        exit.is_some_and(|status| status.success()),
        "SIGTERM: {exit:?}"
    );
    // When the warning was first seen; a `Cell` because every probe's future writes it.
    let warning = std::cell::Cell::new(None);
    let event = eventually(
        "keepalive warning then critical",
        Duration::from_secs(12),
        || async {
            let event = get_opt(&admin, &event_path(name, "keepalive")).await;
            let status = event.as_ref().map(|event| event["check"]["status"].clone());
            if status == Some(json!(1)) && warning.get().is_none() {
                warning.set(Some(stopped.elapsed()));
            }
            match event {
                Some(event) if status == Some(json!(2)) => Ok(event),
                event => Err(format!("last event: {event:#?}\n{}", agent.log())),
            }
        },
    )
    .await;
    let warning = warning.get();
    let critical = stopped.elapsed();
    eprintln!("keepalive warning after {warning:?}, critical after {critical:?}");
    let statuses: Vec<u64> = history(&event)
        .into_iter()
        .map(|(status, _)| status)
        .collect();
    assert!(
        statuses.ends_with(&[1, 2]),
        "a warning, then a critical: {statuses:?}"
    );
    let warning = warning.expect("the warning was stored before the critical");
    assert!(
        warning >= Duration::from_millis(1500),
        "the warning came {warning:?} after the agent stopped; its warning timeout is 3 s"
    );
    assert!(
        critical >= warning,
        "critical {critical:?} before warning {warning:?}"
    );

    // Back: the keepalive resolves.
    drop(agent);
    let agent = Agent::start(&install.config());
    let event = wait_event(
        &admin,
        Some(&agent),
        keepalive,
        Duration::from_secs(15),
        "the keepalive resolved",
        |event| event["check"]["status"] == 0,
    )
    .await;
    let statuses: Vec<u64> = history(&event)
        .into_iter()
        .map(|(status, _)| status)
        .collect();
    assert!(
        statuses.ends_with(&[1, 2, 0]),
        "warning, critical, resolution: {statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairnctl_mints_replace_and_pinned_tokens() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let name = "cli-01";
    enrol(&backend, &admin, name).await;
    let ctl = Ctl::configure(&backend);
    let output = ctl.output(&[
        "agent",
        "token",
        "create",
        "--replace",
        name,
        "--subscriptions",
        "linux",
        "--pin-subscriptions",
    ]);
    assert!(output.status.success(), "token create: {}", stderr(&output));
    let printed = String::from_utf8_lossy(&output.stdout);
    let token = printed.lines().next().expect("the token").trim().to_owned();
    let listed = ctl.output(&["agent", "token", "list"]);
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert!(listing.contains("linux (pinned)"), "{listing}");

    // Enrolling over the live entity works with that token only.
    let (plain, _) = mint_token(&admin, 1, &["linux"]).await;
    let (refused, output) = run_install(&backend, &plain, name);
    assert!(!output.status.success() && !refused.wrote_anything());
    assert!(
        stderr(&output).contains("--replace cli-01"),
        "{}",
        stderr(&output)
    );
    let (replaced, output) = run_install(&backend, &token, name);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(replaced.read("agent.yaml").contains("linux"));
}

// === agent URLs from the bootstrap answer (issue 15, item 9) ===

/// The agent URLs `install` wrote into `agent.yaml`.
fn configured_urls(install: &Install) -> Vec<String> {
    cairn_agent::config::AgentConfig::load(&install.config())
        .expect("agent.yaml loads")
        .backend_urls
}

/// The port of a `host:port` or URL.
fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

/// Waits until the agent `name` has an entity and a passing keepalive event in the API: its
/// mutual-TLS session is up and the watchdog stored its keepalive. Returns the event.
pub(super) async fn wait_keepalive(admin: &Client, agent: &Agent, name: &str) -> Value {
    let event = wait_event(
        admin,
        Some(agent),
        (name, "keepalive"),
        Duration::from_secs(20),
        "a passing keepalive over the session",
        |event| event["check"]["status"] == 0,
    )
    .await;
    assert!(get_opt(admin, &entity_path(name)).await.is_some());
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_connects_to_the_agent_url_the_backend_names() {
    // The agent listener on a free port of its own (127.0.0.1:0), unrelated to the API's.
    let backend = Backend::start();
    let api_port = port_of(&backend.url);
    let agent_port = port_of(&backend.agent_addr);
    assert_ne!(api_port, agent_port);
    let admin = backend.admin().await;
    let name = "urls-01";
    let (token, _) = mint_token(&admin, 1, &["linux"]).await;
    let (install, output) = install_against(&backend.url, &token, name, false, &[]);
    assert!(output.status.success(), "install: {}", stderr(&output));
    let expected = format!("wss://127.0.0.1:{agent_port}");
    assert_eq!(configured_urls(&install), [expected.as_str()]);
    assert!(
        stderr(&output).contains(&format!("agent urls: {expected} (named by the backend)")),
        "{}",
        stderr(&output)
    );
    let agent = start_agent(&install, &[("keepalive_interval", "1")]);
    wait_keepalive(&admin, &agent, name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_on_every_address_names_the_host_the_agent_used() {
    let backend = Backend::start_with(BackendOptions::default().agent_listen("0.0.0.0:0"));
    let agent_port = port_of(&backend.agent_addr);
    let admin = backend.admin().await;
    let name = "urls-any";
    let (token, _) = mint_token(&admin, 1, &["linux"]).await;
    // The host name the agent reaches the API by (the certificates name localhost), with the
    // agent listener's port.
    let api_url = format!("https://localhost:{}", port_of(&backend.url));
    let (install, output) = install_against(&api_url, &token, name, false, &[]);
    assert!(output.status.success(), "install: {}", stderr(&output));
    assert_eq!(
        configured_urls(&install),
        [format!("wss://localhost:{agent_port}")]
    );
    let agent = start_agent(&install, &[("keepalive_interval", "1")]);
    wait_keepalive(&admin, &agent, name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertised_agent_urls_are_the_answer_and_agent_url_overrides_them() {
    // Nothing listens at the advertised URL: an agent that used it would never connect.
    let advertised = "wss://agents.example.invalid:9443";
    let backend =
        Backend::start_with(BackendOptions::default().args(["--agent-advertise-url", advertised]));
    let admin = backend.admin().await;
    let (token, _) = mint_token(&admin, 2, &["linux"]).await;

    let (told, output) = install_against(&backend.url, &token, "adv-01", false, &[]);
    assert!(output.status.success(), "install: {}", stderr(&output));
    assert_eq!(configured_urls(&told), [advertised]);

    let real = format!("wss://{}", backend.agent_addr);
    let (overridden, output) = install_against(
        &backend.url,
        &token,
        "adv-02",
        false,
        &["--agent-url", &real],
    );
    assert!(output.status.success(), "install: {}", stderr(&output));
    assert_eq!(configured_urls(&overridden), [real.as_str()]);
    assert!(
        stderr(&output).contains(&format!("agent urls: {real} (--agent-url)")),
        "{}",
        stderr(&output)
    );
    let agent = start_agent(&overridden, &[("keepalive_interval", "1")]);
    wait_keepalive(&admin, &agent, "adv-02").await;

    // A bad --agent-advertise-url stops `start` before it binds or opens the store.
    let refused = command("cairn-backend")
        .args(["start", "--api-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&backend.data_dir)
        .args([
            "--agent-advertise-url",
            "https://agents.example.invalid:9443",
        ])
        .output()
        .expect("run cairn-backend start");
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains(
            "--agent-advertise-url: \"https://agents.example.invalid:9443\" must be a wss:// URL"
        ),
        "{}",
        stderr(&refused)
    );
}

/// A bootstrap request with the `Host` header `host`, over HTTP/1.1 (where the header is the
/// authority); returns the status and the answer.
async fn bootstrap_with_host(
    backend: &Backend,
    host: &str,
    token: &str,
    name: &str,
) -> (StatusCode, Value) {
    let mut tls = cairn_api::client::tls_config_trusting(&backend.ca()).expect("the cluster CA");
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .http1_only()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP/1.1 client");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .expect("a CSR");
    let response = http
        .post(format!(
            "{}{}",
            backend.url,
            cairn_api::agent::BOOTSTRAP_PATH
        ))
        .header(reqwest::header::HOST, host)
        .json(&json!({"token": token, "name": name, "csr_pem": csr}))
        .send()
        .await
        .expect("the bootstrap request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_host_headers_never_become_agent_urls() {
    let backend = Backend::start_with(BackendOptions::default().agent_listen("0.0.0.0:0"));
    let agent_port = port_of(&backend.agent_addr);
    let admin = backend.admin().await;
    let (token, _) = mint_token(&admin, 20, &["linux"]).await;

    // A well-formed host the sender chose comes back to that sender only, on the listener's
    // port whatever port it named.
    let (status, answer) =
        bootstrap_with_host(&backend, "attacker.example:1", &token, "host-ok").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["agent_urls"],
        json!([format!("wss://attacker.example:{agent_port}")])
    );

    let long = format!("{}.example", "a".repeat(250));
    for (index, host) in [
        "user:pw@cairn.example:8080",
        "cairn.example/evil",
        "cairn.example:80:80",
        "cairn.example:99999",
        "1.2.3",
        "0.0.0.0",
        "[::]",
        "[::1",
        "-bad-.example",
        "a_b.example",
        long.as_str(),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("host-bad-{index}");
        let (status, answer) = bootstrap_with_host(&backend, host, &token, &name).await;
        // Refused by the HTTP layer, or enrolled with no agent URL: never a URL made of it.
        assert!(
            status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
            "{host}: {status} {answer}"
        );
        assert!(
            answer.get("agent_urls").is_none(),
            "{host}: {status} {answer}"
        );
    }
    // Still serving.
    let (status, answer) = bootstrap_with_host(&backend, "localhost", &token, "host-last").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["agent_urls"],
        json!([format!("wss://localhost:{agent_port}")])
    );
}

// === the keepalive handler (issue 15, item 10) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_events_need_no_keepalive_handler_and_run_one_that_exists() {
    let backend = Backend::start_with(
        BackendOptions::default()
            .capture_logs()
            .env("CAIRN_LOG", "info")
            .env("CAIRN_LOG_FORMAT", "json"),
    );
    // The log lines (JSON) as (level, message, handler field).
    let lines = |log: &str| -> Vec<(String, String, String)> {
        log.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .map(|line| {
                let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
                (
                    text(&line["level"]),
                    text(&line["fields"]["message"]),
                    text(&line["fields"]["handler"]),
                )
            })
            .collect()
    };
    let admin = backend.admin().await;
    let name = "ka-01";
    let install = enrol(&backend, &admin, name).await;
    let agent = start_agent(&install, &[("keepalive_interval", "1")]);
    let event = wait_keepalive(&admin, &agent, name).await;
    // As Sensu: the event names `keepalive`, defined or not.
    assert_eq!(event["check"]["handlers"], json!(["keepalive"]));
    // The pipeline saw it and ignored the missing handler with an info line, not a warning.
    let ignored = |log: &str| {
        lines(log).iter().any(|(level, message, handler)| {
            level == "INFO"
                && message == "handler does not exist, will be ignored"
                && handler == "keepalive"
        })
    };
    eventually(
        "the pipeline ignoring `keepalive`",
        Duration::from_secs(10),
        || async { text_matching(backend.log(), ignored) },
    )
    .await;
    let warned = |log: &str| {
        lines(log)
            .into_iter()
            .filter(|(level, message, _)| level == "WARN" && message.contains("does not exist"))
            .collect::<Vec<_>>()
    };
    assert_eq!(warned(&backend.log()), []);

    // Once a `keepalive` handler exists, the next keepalive event runs it.
    let out = install.root.path().join("keepalive-event.json");
    let command = format!(
        "cat > '{0}.tmp' && mv '{0}.tmp' '{0}'",
        out.to_string_lossy()
    );
    put_resource(
        &admin,
        "handlers",
        "keepalive",
        json!({"type": "pipe", "command": command, "timeout": 10}),
    )
    .await;
    let handled: Value = eventually(
        "the keepalive handler running",
        Duration::from_secs(15),
        || async {
            std::fs::read_to_string(&out)
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok())
                .ok_or_else(|| backend.log())
        },
    )
    .await;
    assert_eq!(handled["check"]["metadata"]["name"], "keepalive");
    assert_eq!(handled["entity"]["metadata"]["name"], name);
    assert_eq!(warned(&backend.log()), []);
}

/// Sensu's registration event: an agent's first connection runs the `registration` handler
/// once, with check `registration` at status 1 (a reconnection registering nothing is the
/// backend's unit test `the_first_connection_of_an_agent_raises_a_registration_event_only`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_connection_runs_the_registration_handler_once() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let records = tempfile::tempdir().expect("tempdir");
    let command = format!(
        "cat > \"$(mktemp -p '{}' 'registration.XXXXXX')\"",
        records.path().display()
    );
    put_resource(
        &admin,
        "handlers",
        "registration",
        json!({"type": "pipe", "command": command, "timeout": 10}),
    )
    .await;
    let registered = || -> Vec<Value> {
        std::fs::read_dir(records.path())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
                    .filter_map(|text| serde_json::from_str(&text).ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let name = "reg-01";
    let install = enrol(&backend, &admin, name).await;
    let agent = start_agent(&install, &[("keepalive_interval", "1")]);
    let events: Vec<Value> = eventually(
        "the registration handler running",
        Duration::from_secs(20),
        || async {
            let events = registered();
            if events.is_empty() {
                Err(backend.log())
            } else {
                Ok(events)
            }
        },
    )
    .await;
    assert_eq!(events[0]["check"]["metadata"]["name"], "registration");
    assert_eq!(events[0]["check"]["status"], 1);
    assert_eq!(events[0]["check"]["handlers"], json!(["registration"]));
    assert_eq!(events[0]["entity"]["metadata"]["name"], name);

    // Its keepalives that follow register nothing more.
    wait_keepalive(&admin, &agent, name).await;
    assert_eq!(registered().len(), 1, "keepalives are no registrations");
}

/// Sensu's ad hoc execution (the web UI's "re-run"): a check on a one-hour interval runs at
/// once on the subscriptions asked for; a viewer may not ask, and an unknown check is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adhoc_execution_runs_a_check_now() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let name = "adhoc-01";
    let install = enrol(&backend, &admin, name).await;
    let agent = start_agent(&install, &[]);
    wait_connected(&agent).await;
    put_check(
        &admin,
        "hourly",
        json!({"command": "echo ran-now", "interval": 3600, "publish": true,
               "subscriptions": ["linux"]}),
    )
    .await;
    let execute = format!("/api/core/v2/namespaces/{NS}/checks/hourly/execute");
    let response = admin
        .send(
            Method::POST,
            &execute,
            Some(
                &json!({"check": "hourly", "subscriptions": [format!("entity:{name}")],
                         "reason": "integration test"}),
            ),
        )
        .await
        .expect("execute the check");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer: Value = response.json().await.expect("the answer as JSON");
    let issued = answer["issued"].as_i64().expect("issued, unix seconds");
    let event = wait_event(
        &admin,
        Some(&agent),
        (name, "hourly"),
        Duration::from_secs(15),
        "the ad hoc result",
        |event| event["check"]["issued"].as_i64() >= Some(issued - 1),
    )
    .await;
    assert!(
        event["check"]["output"]
            .as_str()
            .is_some_and(|output| output.contains("ran-now")),
        "{event:#}"
    );

    cairn_tests::create_user(&admin, "viewer", "viewer-password").await;
    admin
        .send(
            Method::PUT,
            "/api/core/v2/clusterrolebindings/viewer",
            Some(&json!({"metadata": {"name": "viewer"},
                         "role_ref": {"type": "ClusterRole", "name": "view"},
                         "subjects": [{"type": "User", "name": "viewer"}]})),
        )
        .await
        .expect("bind the viewer");
    let (viewer, _) = backend.login("viewer", "viewer-password").await;
    let (status, message) = cairn_tests::status_of(viewer.send(Method::POST, &execute, None).await);
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
    let unknown = format!("/api/core/v2/namespaces/{NS}/checks/nope/execute");
    let (status, message) = cairn_tests::status_of(admin.send(Method::POST, &unknown, None).await);
    assert_eq!(status, StatusCode::NOT_FOUND, "{message}");
    let (status, message) = cairn_tests::status_of(
        admin
            .send(Method::POST, &execute, Some(&json!({"check": "other"})))
            .await,
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
}
