//! Secrets end to end (issue 6), against a real OpenBao dev server: the Vault walk-through (a
//! KV v2 value reaching a pipe handler's environment and, from there, a local HTTP receiver),
//! certificate auth to OpenBao over TLS, a check on a real mutual-TLS agent that sees its secret
//! with the value redacted from its output, rotation after the cache TTL, an OpenBao outage
//! reported as a status 3 event and recovered from, an `Env` secret in a hook; each test ends
//! with a leak audit of every file, log line and API answer of its processes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_api::client::{Client, ClientError, Credentials};
use cairn_tests::openbao::{self, random_hex, OpenBao, OpenBaoConfig};
use cairn_tests::{command, eventually, metrics, text_matching, Agent, Backend, BackendOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "default";

/// The `env` secrets provider's REST path.
const ENV_PROVIDER_PATH: &str = "/api/enterprise/secrets/v1/providers/env";

// === secret values ===

/// A value no test, binary or log would contain by chance.
fn distinctive(label: &str) -> String {
    format!("s3cr3t-{label}-{}", random_hex(16))
}

fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// A shell snippet setting `sha` to the SHA-256 of the variable `name`'s value, so that a
/// command can tell which value it saw without the value itself being in the command.
fn sha_of(name: &str) -> String {
    format!("sha=$(printf %s \"${name}\" | sha256sum | cut -d' ' -f1)")
}

// === the backend and its REST API ===

/// A backend logging at debug level into files, for the leak audit; `extra` adds `start`
/// arguments and environment variables.
fn debug_backend(extra: impl FnOnce(BackendOptions) -> BackendOptions) -> Backend {
    Backend::start_with(extra(
        BackendOptions::default()
            .env("CAIRN_LOG", "debug")
            .capture_logs(),
    ))
}

async fn put(client: &Client, path: &str, body: &Value) {
    client
        .send(Method::PUT, path, Some(body))
        .await
        .unwrap_or_else(|err| panic!("PUT {path}: {err}\n{body:#}"));
}

/// `GET` a document; `None` for a 404.
async fn get_opt(client: &Client, path: &str) -> Option<Value> {
    match client.get_json(path).await {
        Ok(value) => Some(value),
        Err(ClientError::Status { status, .. }) if status == StatusCode::NOT_FOUND => None,
        Err(err) => panic!("GET {path}: {err}"),
    }
}

/// Applies a `VaultProvider` (cluster-wide) with `client` as its `spec.client`.
async fn apply_vault_provider(admin: &Client, name: &str, client: Value) {
    let provider = json!({
        "type": "VaultProvider",
        "api_version": "secrets/v1",
        "metadata": {"name": name},
        "spec": {"client": client},
    });
    put(
        admin,
        &format!("/api/enterprise/secrets/v1/providers/{name}"),
        &provider,
    )
    .await;
}

/// Applies a `Secret` in the default namespace.
/// The `env` provider with the allow list `allow` (`spec.allow`).
async fn apply_env_provider(admin: &Client, allow: Value) {
    put(
        admin,
        ENV_PROVIDER_PATH,
        &json!({"type": "Env", "api_version": "secrets/v1", "metadata": {"name": "env"}, "spec": {"allow": allow}}),
    )
    .await;
}

async fn apply_secret(admin: &Client, name: &str, id: &str, provider: &str) {
    let secret = json!({
        "type": "Secret",
        "api_version": "secrets/v1",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"id": id, "provider": provider},
    });
    put(
        admin,
        &format!("/api/enterprise/secrets/v1/namespaces/{NS}/secrets/{name}"),
        &secret,
    )
    .await;
}

/// Applies a `core/v2` resource of `plural` (`checks`, `handlers`, `hooks`) named `name`.
async fn apply_core(admin: &Client, plural: &str, name: &str, spec: Value) {
    let mut body = spec;
    body["metadata"] = json!({"name": name, "namespace": NS});
    put(
        admin,
        &format!("/api/core/v2/namespaces/{NS}/{plural}/{name}"),
        &body,
    )
    .await;
}

/// A pipe handler posting the variable `variable` (first line) and the event (the rest) to
/// `url` with curl: the value goes through a pipe, never into an argument.
fn posting_handler(variable: &str, secret: &str, url: &str) -> Value {
    json!({
        "type": "pipe",
        "command": format!("{{ printenv {variable}; cat; }} | curl -sS --fail --data-binary @- {url}"),
        "filters": ["is_incident"],
        "timeout": 10,
        "secrets": [{"name": variable, "secret": secret}],
    })
}

/// Stores an event of a proxy entity through the REST API, its check naming `handlers`.
async fn post_event(admin: &Client, entity: &str, check: &str, status: u32, handlers: &[&str]) {
    let event = json!({
        "entity": {"entity_class": "proxy", "metadata": {"name": entity}},
        "check": {
            "metadata": {"name": check},
            "status": status,
            "output": format!("status {status}"),
            "handlers": handlers,
            "interval": 60,
        },
    });
    let response = admin
        .send(
            Method::PUT,
            &format!("/api/core/v2/namespaces/{NS}/events/{entity}/{check}"),
            Some(&event),
        )
        .await
        .unwrap_or_else(|err| panic!("PUT event {entity}/{check}: {err}"));
    assert!(
        response.status().is_success(),
        "PUT event {entity}/{check}: {}",
        response.status()
    );
}

/// The value of the metric `name` (summed over its label sets).
///
/// # Panics
/// When `/metrics` does not have it.
fn metric(text: &str, name: &str) -> f64 {
    let samples: Vec<f64> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let series_name = series.split('{').next()?;
            (series_name == name).then(|| value.parse().ok())?
        })
        .collect();
    assert!(!samples.is_empty(), "no {name} in /metrics:\n{text}");
    samples.iter().sum()
}

/// Waits until the event `entity/check` satisfies `accept`, and returns it.
async fn wait_event(
    admin: &Client,
    (entity, check): (&str, &str),
    within: Duration,
    what: &str,
    detail: impl Fn() -> String,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("/api/core/v2/namespaces/{NS}/events/{entity}/{check}");
    eventually(what, within, || async {
        match get_opt(admin, &path).await {
            Some(event) if accept(&event) => Ok(event),
            event => {
                let check = event.as_ref().map(|event| &event["check"]);
                let brief = check.map(|check| {
                    json!({"status": check["status"], "output": check["output"], "hooks": check["hooks"]})
                });
                Err(format!("last event's check: {brief:#?}\n{}", detail()))
            }
        }
    })
    .await
}

fn output_of(event: &Value) -> &str {
    event["check"]["output"].as_str().unwrap_or_default()
}

/// The statuses of an event's history, oldest first.
fn statuses(event: &Value) -> Vec<u64> {
    event["check"]["history"]
        .as_array()
        .map(|history| {
            history
                .iter()
                .map(|entry| entry["status"].as_u64().unwrap_or(u64::MAX))
                .collect()
        })
        .unwrap_or_default()
}

// === a local HTTP receiver ===

/// A tiny HTTP server on 127.0.0.1:0 that answers 200 to everything and records each
/// request's path and body.
struct Receiver {
    addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("the receiver's address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let recorded = Arc::clone(&recorded);
                tokio::spawn(async move {
                    if let Some(request) = serve_one(stream).await {
                        recorded.lock().expect("the receiver's lock").push(request);
                    }
                });
            }
        });
        Receiver {
            addr,
            requests,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `(path, body)` of every request so far.
    fn requests(&self) -> Vec<(String, String)> {
        self.requests.lock().expect("the receiver's lock").clone()
    }

    /// The bodies posted to `path`.
    fn bodies(&self, path: &str) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|(posted, _)| posted == path)
            .map(|(_, body)| body)
            .collect()
    }

    /// Waits for a body posted to `path` that satisfies `accept`, and returns it.
    async fn wait_body(
        &self,
        path: &str,
        within: Duration,
        what: &str,
        detail: impl Fn() -> String,
        accept: impl Fn(&str) -> bool,
    ) -> String {
        eventually(what, within, || async {
            self.bodies(path)
                .into_iter()
                .find(|body| accept(body))
                .ok_or_else(|| format!("received: {:#?}\n{}", self.requests(), detail()))
        })
        .await
    }
}

/// Reads one HTTP/1.1 request (headers, then `Content-Length` bytes), answers 200 and closes.
async fn serve_one(mut stream: tokio::net::TcpStream) -> Option<(String, String)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end + 4;
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let path = head.split_whitespace().nth(1)?.to_owned();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let length: usize = header("content-length")?.parse().ok()?;
    if header("expect").is_some_and(|expect| expect.eq_ignore_ascii_case("100-continue")) {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .ok()?;
    }
    while buffer.len() < head_end + length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    let body = String::from_utf8_lossy(&buffer[head_end..head_end + length]).into_owned();
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await;
    let _ = stream.shutdown().await;
    Some((path, body))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// A handler's post: the variable's value (first line) and the event.
fn split_post(body: &str) -> (&str, Value) {
    let (value, event) = body.split_once('\n').unwrap_or((body, ""));
    let event = serde_json::from_str(event)
        .unwrap_or_else(|err| panic!("the handler did not post the event ({err}): {body}"));
    (value, event)
}

/// Runs `cairnctl configure` (admin) and `cairnctl create -f` of `manifest` against `backend`,
/// with a configuration of its own.
fn cairnctl_create(backend: &Backend, manifest: &str) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("walkthrough.yaml");
    std::fs::write(&file, manifest).expect("write the manifest");
    let ctl = |args: &[&std::ffi::OsStr]| {
        let mut ctl = command("cairnctl");
        ctl.env("CAIRN_CONFIG_DIR", dir.path()).env("NO_COLOR", "1");
        for variable in [
            "CAIRN_URL",
            "CAIRN_CA_FILE",
            "CAIRN_API_KEY",
            "CAIRN_NAMESPACE",
        ] {
            ctl.env_remove(variable);
        }
        ctl.args(args).output().expect("run cairnctl")
    };
    let ca = backend.ca_file();
    let configured = ctl(&[
        "configure".as_ref(),
        "--url".as_ref(),
        backend.url.as_ref(),
        "--ca-file".as_ref(),
        ca.as_os_str(),
        "--username".as_ref(),
        "admin".as_ref(),
        "--password".as_ref(),
        cairn_tests::ADMIN_PASSWORD.as_ref(),
    ]);
    assert!(
        configured.status.success(),
        "cairnctl configure: {}",
        stderr(&configured)
    );
    ctl(&["create".as_ref(), "-f".as_ref(), file.as_os_str()])
}

// === agents ===

/// An installed agent: its config dir (which also holds its queue and its log).
struct Install {
    dir: PathBuf,
    _root: tempfile::TempDir,
}

/// Mints a single-use join token granting `linux` and installs the agent `name` with it.
async fn enrol(backend: &Backend, admin: &Client, name: &str) -> Install {
    let response = admin
        .send(
            Method::POST,
            "/api/cairn/v1/jointokens",
            Some(&json!({"ttl_seconds": 600, "uses": 1, "subscriptions": ["linux"], "namespace": NS})),
        )
        .await
        .expect("create a join token");
    let body: Value = response.json().await.expect("the token as JSON");
    let token = body["token"].as_str().expect("a join token").to_owned();
    let root = tempfile::tempdir().expect("tempdir");
    let install = Install {
        dir: root.path().join("etc-cairn-agent"),
        _root: root,
    };
    let output = command("cairn-agent")
        .env("CAIRN_JOIN_TOKEN", &token)
        .arg("install")
        .args(["--backend-url", &backend.url, "--name", name])
        .args(["--agent-url", &format!("wss://{}", backend.agent_addr)])
        .arg("--config-dir")
        .arg(&install.dir)
        .arg("--systemd-unit")
        .arg(install._root.path().join("cairn-agent.service"))
        .output()
        .expect("run cairn-agent install");
    assert!(
        output.status.success(),
        "install {name} failed: {}",
        stderr(&output)
    );
    install
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Starts the installed agent with its local API on a free port, logging at debug level.
async fn start_agent(install: &Install) -> Agent {
    let config = install.dir.join("agent.yaml");
    let text = std::fs::read_to_string(&config).expect("read agent.yaml");
    let mut lines: Vec<String> = text
        .lines()
        .filter(|line| !line.starts_with("local_api:"))
        .map(str::to_owned)
        .collect();
    lines.push("local_api: 127.0.0.1:0".to_owned());
    std::fs::write(&config, lines.join("\n") + "\n").expect("write agent.yaml");
    let agent = Agent::start_with_env(&config, &[("CAIRN_LOG", "debug")]);
    let http = cairn_api::client::plain_http_client(Duration::from_secs(5)).expect("HTTP client");
    let healthz = format!("http://{}/healthz", agent.local_api);
    eventually("the agent connecting", Duration::from_secs(20), || async {
        if http
            .get(&healthz)
            .send()
            .await
            .is_ok_and(|response| response.status() == StatusCode::OK)
        {
            Ok(())
        } else {
            Err(agent.log())
        }
    })
    .await;
    agent
}

// === the leak audit ===

/// Everything a leak audit searches: labelled blobs (API answers, files).
#[derive(Default)]
struct Evidence {
    blobs: Vec<(String, Vec<u8>)>,
}

impl Evidence {
    /// The answers of the API to every `GET` that could show a secret.
    async fn api(&mut self, admin: &Client, entity_checks: &[(&str, &str)]) {
        let mut paths = vec![
            "/api/enterprise/secrets/v1/providers".to_owned(),
            "/api/enterprise/secrets/v1/secrets".to_owned(),
            format!("/api/enterprise/secrets/v1/namespaces/{NS}/secrets"),
            format!("/api/core/v2/namespaces/{NS}/events"),
            format!("/api/core/v2/namespaces/{NS}/entities"),
            format!("/api/core/v2/namespaces/{NS}/checks"),
            format!("/api/core/v2/namespaces/{NS}/hooks"),
            format!("/api/core/v2/namespaces/{NS}/handlers"),
        ];
        for (entity, check) in entity_checks {
            paths.push(format!(
                "/api/core/v2/namespaces/{NS}/events/{entity}/{check}"
            ));
        }
        for path in paths {
            match admin.send(Method::GET, &path, None).await {
                Ok(response) => {
                    let body = response.bytes().await.expect("a body").to_vec();
                    self.blobs.push((format!("GET {path}"), body));
                }
                // Not every Sensu listing is served (all namespaces' secrets, say).
                Err(ClientError::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
                    eprintln!("leak audit: GET {path} is a 404");
                }
                Err(err) => panic!("GET {path}: {err}"),
            }
        }
        // Each provider and secret by name too.
        for collection in [
            "/api/enterprise/secrets/v1/providers".to_owned(),
            format!("/api/enterprise/secrets/v1/namespaces/{NS}/secrets"),
        ] {
            let all = admin.get_json(&collection).await.expect("a list");
            for resource in all.as_array().into_iter().flatten() {
                let Some(name) = resource["metadata"]["name"].as_str() else {
                    continue;
                };
                let path = format!("{collection}/{name}");
                let body = admin.get_json(&path).await.expect("a resource");
                self.blobs
                    .push((format!("GET {path}"), body.to_string().into_bytes()));
            }
        }
    }

    /// Every file under `path` (or the file itself).
    fn files(&mut self, path: &Path) {
        if path.is_dir() {
            let entries = std::fs::read_dir(path)
                .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
            for entry in entries.filter_map(Result::ok) {
                self.files(&entry.path());
            }
        } else if let Ok(bytes) = std::fs::read(path) {
            self.blobs.push((path.display().to_string(), bytes));
        }
    }

    /// Fails the test listing every blob that holds any of `needles` (`(label, value)`).
    fn assert_clean(&self, needles: &[(&str, &str)]) {
        let mut hits = String::new();
        for (source, bytes) in &self.blobs {
            for (label, needle) in needles {
                let Some(at) = find(bytes, needle.as_bytes()) else {
                    continue;
                };
                let from = at.saturating_sub(200);
                let to = (at + needle.len() + 200).min(bytes.len());
                let _ = writeln!(
                    hits,
                    "{label} in {source}: …{}…",
                    String::from_utf8_lossy(&bytes[from..to])
                );
            }
        }
        assert!(
            hits.is_empty(),
            "secret values leaked ({} sources searched):\n{hits}",
            self.blobs.len()
        );
        eprintln!(
            "leak audit: {} sources ({} bytes) clean of {} values",
            self.blobs.len(),
            self.blobs
                .iter()
                .map(|(_, bytes)| bytes.len())
                .sum::<usize>(),
            needles.len()
        );
    }
}

/// The logs of a backend, which must exist and be non-empty (else the audit proves nothing).
fn backend_logs(evidence: &mut Evidence, backend: &Backend) {
    let files = backend.log_files();
    assert!(!files.is_empty(), "the backend's logs are not captured");
    for file in files {
        evidence.files(&file);
    }
    assert!(
        backend.log().contains("DEBUG"),
        "the backend did not log at debug level, so the audit of its log proves little:\n{}",
        backend.log()
    );
}

// === the tests ===

/// The walk-through: a KV v2 value in OpenBao, a `VaultProvider` with a read-only token, a
/// `Secret`, and a pipe handler whose `secrets` put the value in its environment; the handler
/// posts it to a local receiver on the incident and again on its resolution, from one OpenBao
/// read (the cache's TTL is the default 60 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_walkthrough_slack_handler_posts_the_webhook() {
    if !openbao::required() {
        return;
    }
    let bao = OpenBao::start().await;
    let webhook = distinctive("webhook");
    bao.kv_put(
        "sensu/slack",
        json!({"webhook_url": webhook, "channel": "#demo"}),
    )
    .await;
    let token = bao.read_token().await;
    let backend = debug_backend(|options| options);
    let admin = backend.admin().await;
    let receiver = Receiver::start().await;

    // Applied as an operator would: `cairnctl create -f` of the walk-through's YAML.
    let handler = posting_handler(
        "SLACK_WEBHOOK_URL",
        "sensu-slack-webhook",
        &receiver.url("/slack"),
    );
    let manifest = format!(
        "type: VaultProvider
api_version: secrets/v1
metadata:
  name: vault
spec:
  client:
    address: {address}
    token: {token}
    version: v2
    max_retries: 2
    timeout: 20s
---
type: Secret
api_version: secrets/v1
metadata:
  name: sensu-slack-webhook
  namespace: default
spec:
  id: secret/sensu/slack#webhook_url
  provider: vault
---
type: Handler
api_version: core/v2
metadata:
  name: slack
  namespace: default
spec:
  type: pipe
  command: {command}
  filters: [is_incident]
  timeout: 10
  secrets:
    - name: SLACK_WEBHOOK_URL
      secret: sensu-slack-webhook
",
        address = bao.url(),
        command = handler["command"],
    );
    let created = cairnctl_create(&backend, &manifest);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&created.stdout),
        stderr(&created)
    );
    assert!(created.status.success(), "cairnctl create -f: {printed}");
    for resource in [
        "providers/vault",
        "secrets/default/sensu-slack-webhook",
        "handlers/default/slack",
    ] {
        assert!(
            printed.contains(&format!("created {resource}")),
            "{resource} not created: {printed}"
        );
    }

    // The incident: the handler posts the webhook URL it found in its environment.
    post_event(&admin, "i-424242", "my-app", 2, &["slack"]).await;
    let detail = || backend.log();
    let body = receiver
        .wait_body(
            "/slack",
            Duration::from_secs(15),
            "the slack handler posting the incident",
            detail,
            |body| body.contains("\"status\":2"),
        )
        .await;
    let (posted, event) = split_post(&body);
    assert_eq!(posted, webhook, "the handler's SLACK_WEBHOOK_URL");
    assert_eq!(event["check"]["status"], 2, "{event:#}");

    // The resolution runs the handler again, with the same value.
    post_event(&admin, "i-424242", "my-app", 0, &["slack"]).await;
    let body = receiver
        .wait_body(
            "/slack",
            Duration::from_secs(15),
            "the slack handler posting the resolution",
            detail,
            |body| body.contains("\"status\":0"),
        )
        .await;
    let (posted, _) = split_post(&body);
    assert_eq!(
        posted, webhook,
        "the handler's SLACK_WEBHOOK_URL on resolution"
    );
    assert_eq!(
        receiver.bodies("/slack").len(),
        2,
        "{:#?}",
        receiver.requests()
    );
    let stored = get_opt(
        &admin,
        &format!("/api/core/v2/namespaces/{NS}/events/i-424242/my-app"),
    )
    .await
    .expect("the event");
    assert_eq!(stored["check"]["status"], 0, "{stored:#}");
    assert_eq!(statuses(&stored), vec![2, 0], "{stored:#}");

    // One OpenBao read served both runs (the TTL is 60 s).
    let text = metrics(&admin).await;
    assert_eq!(
        metric(&text, "cairn_secret_provider_reads_total"),
        1.0,
        "{text}"
    );
    assert!(
        metric(&text, "cairn_secret_cache_hits_total") >= 1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "cairn_secret_failures_total"), 0.0, "{text}");

    // The leak audit: the value (and the Vault token) in no API answer and no log; the value
    // in no file of the data dir either (the token is stored there, by design, in the provider).
    let mut evidence = Evidence::default();
    evidence
        .blobs
        .push(("cairnctl create's output".to_owned(), printed.into_bytes()));
    evidence.api(&admin, &[("i-424242", "my-app")]).await;
    let mut backend = backend;
    backend.stop();
    backend_logs(&mut evidence, &backend);
    evidence.assert_clean(&[("the webhook", &webhook), ("the Vault token", &token)]);
    let mut evidence = Evidence::default();
    evidence.files(&backend.data_dir);
    evidence.files(bao.log_file());
    evidence.assert_clean(&[("the webhook", &webhook)]);
}

/// Certificate auth: OpenBao's TLS listener (its own CA), `auth/cert` with the client CA
/// registered for a read policy; a `VaultProvider` with `tls` and no token reads a KV v2 value
/// into a handler. A provider with a client certificate from another CA fails: its handler is
/// not run, a warning names the secret and the failures counter goes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_certificate_auth_over_tls() {
    if !openbao::required() {
        return;
    }
    let bao = OpenBaoConfig::default().tls().start().await;
    let cert_auth = bao.cert_auth().clone();
    let routing_key = distinctive("routing-key");
    bao.kv_put("sensu/pagerduty", json!({"routing_key": routing_key}))
        .await;
    // OpenBao itself refuses the stranger's certificate, so a failure below is the provider's
    // setting, not a broken server.
    let refused = bao
        .cert_login(&cert_auth.stranger_cert, &cert_auth.stranger_key)
        .await;
    assert!(
        refused.is_err(),
        "OpenBao accepted the stranger: {refused:?}"
    );

    let backend = debug_backend(|options| options);
    let admin = backend.admin().await;
    let receiver = Receiver::start().await;
    let path = |path: &Path| path.display().to_string();
    for (provider, cert, key) in [
        ("vault-tls", &cert_auth.client_cert, &cert_auth.client_key),
        (
            "vault-stranger",
            &cert_auth.stranger_cert,
            &cert_auth.stranger_key,
        ),
    ] {
        apply_vault_provider(
            &admin,
            provider,
            json!({
                "address": bao.tls_url(),
                "version": "v2",
                "tls": {
                    "ca_cert": path(&cert_auth.ca_cert),
                    "client_cert": path(cert),
                    "client_key": path(key),
                },
                "max_retries": 0,
                "timeout": "20s",
            }),
        )
        .await;
    }
    let id = "secret/sensu/pagerduty#routing_key";
    apply_secret(&admin, "pagerduty-routing-key", id, "vault-tls").await;
    apply_secret(&admin, "stranger-routing-key", id, "vault-stranger").await;
    apply_core(
        &admin,
        "handlers",
        "pagerduty",
        posting_handler(
            "PD_ROUTING_KEY",
            "pagerduty-routing-key",
            &receiver.url("/pagerduty"),
        ),
    )
    .await;
    apply_core(
        &admin,
        "handlers",
        "pagerduty-stranger",
        posting_handler(
            "PD_ROUTING_KEY",
            "stranger-routing-key",
            &receiver.url("/stranger"),
        ),
    )
    .await;

    // The stranger first: its secret fails, a warning names it, the counter goes up.
    post_event(&admin, "db-1", "disk", 2, &["pagerduty-stranger"]).await;
    eventually(
        "a warning naming the secret stranger-routing-key",
        Duration::from_secs(20),
        || async {
            text_matching(backend.log(), |log| {
                log.lines()
                    .any(|line| line.contains("WARN") && line.contains("stranger-routing-key"))
            })
        },
    )
    .await;
    let text = metrics(&admin).await;
    assert!(
        metric(&text, "cairn_secret_failures_total") >= 1.0,
        "{text}"
    );

    // The registered certificate reads the value into the handler.
    post_event(&admin, "db-1", "cpu", 2, &["pagerduty"]).await;
    let body = receiver
        .wait_body(
            "/pagerduty",
            Duration::from_secs(20),
            "the pagerduty handler posting with a value read over certificate auth",
            || backend.log(),
            |body| body.contains("\"cpu\""),
        )
        .await;
    let (posted, _) = split_post(&body);
    assert_eq!(posted, routing_key, "the handler's PD_ROUTING_KEY");
    // The stranger's handler never ran (its secret had failed before the good run).
    assert!(
        receiver.bodies("/stranger").is_empty(),
        "the handler ran without its secret: {:#?}",
        receiver.requests()
    );
    let text = metrics(&admin).await;
    assert!(
        metric(&text, "cairn_secret_provider_reads_total") >= 1.0,
        "{text}"
    );

    let mut evidence = Evidence::default();
    evidence
        .api(&admin, &[("db-1", "disk"), ("db-1", "cpu")])
        .await;
    let mut backend = backend;
    backend.stop();
    backend_logs(&mut evidence, &backend);
    evidence.files(&backend.data_dir);
    evidence.files(bao.log_file());
    evidence.assert_clean(&[("the routing key", &routing_key)]);
}

/// A check with a Vault secret on a real mutual-TLS agent: it sees the value (its output says
/// which by a digest) and the value is redacted from its output; a rotated value is seen after
/// the cache TTL (1 s here); with OpenBao down the check is not sent and a status 3 event names
/// the secret, the backend staying up; OpenBao back, the check recovers on its own. Then the
/// leak audit of the backend's and the agent's files and logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_check_sees_vault_secret_redacted_through_rotation_and_outage() {
    if !openbao::required() {
        return;
    }
    let mut bao = OpenBao::start().await;
    let (first, second) = (distinctive("api-token"), distinctive("api-token-rotated"));
    let (first_sha, second_sha) = (sha256_hex(&first), sha256_hex(&second));
    bao.kv_put("cairn/agent", json!({"api_token": first})).await;
    // Failed reads are retried after at most 2 s, so recovery does not wait on a long backoff
    // when OpenBao's restart is slow on a loaded machine.
    let mut backend = debug_backend(|options| {
        options
            .arg("--secrets-cache-ttl")
            .arg("1")
            .arg("--secrets-retry-max")
            .arg("2")
    });
    let admin = backend.admin().await;
    apply_vault_provider(
        &admin,
        "vault",
        json!({
            "address": bao.url(),
            "token": bao.root_token(),
            "version": "v2",
            "max_retries": 0,
            "timeout": "5s",
        }),
    )
    .await;
    apply_secret(&admin, "api-token", "secret/cairn/agent#api_token", "vault").await;

    let name = "secrets-01";
    let install = enrol(&backend, &admin, name).await;
    let mut agent = start_agent(&install).await;
    // Exit 0 only for one of the two values; the output names which by its digest.
    let command = format!(
        "{}; echo \"token=$API_TOKEN sha=$sha\"; case $sha in {first_sha}|{second_sha}) exit 0;; *) exit 2;; esac",
        sha_of("API_TOKEN")
    );
    apply_core(
        &admin,
        "checks",
        "uses-token",
        json!({
            "command": command,
            "interval": 1,
            "timeout": 10,
            "subscriptions": ["linux"],
            "publish": true,
            "secrets": [{"name": "API_TOKEN", "secret": "api-token"}],
        }),
    )
    .await;
    let key = (name, "uses-token");
    let logs = || {
        format!(
            "agent log:\n{}\nbackend log:\n{}",
            agent.log(),
            backend.log()
        )
    };

    // The check sees the value; its output has it redacted.
    let event = wait_event(
        &admin,
        key,
        Duration::from_secs(20),
        "the check run with the first value",
        logs,
        |event| output_of(event).contains(&first_sha),
    )
    .await;
    assert_eq!(event["check"]["status"], 0, "{event:#}");
    assert_eq!(
        output_of(&event).trim(),
        format!("token=***** sha={first_sha}"),
        "{event:#}"
    );
    let text = event.to_string();
    assert!(
        !text.contains(&first),
        "the value is in the event: {event:#}"
    );

    // Rotation: seen after the TTL.
    bao.kv_put("cairn/agent", json!({"api_token": second}))
        .await;
    let rotated = Instant::now();
    let event = wait_event(
        &admin,
        key,
        Duration::from_secs(15),
        "the check run with the rotated value",
        logs,
        |event| output_of(event).contains(&second_sha),
    )
    .await;
    eprintln!("rotated value seen after {:?}", rotated.elapsed());
    assert_eq!(event["check"]["status"], 0, "{event:#}");
    assert_eq!(
        output_of(&event).trim(),
        format!("token=***** sha={second_sha}"),
        "{event:#}"
    );

    // OpenBao down: a status 3 event names the secret and why, never the value.
    bao.stop();
    let stopped = Instant::now();
    let event = wait_event(
        &admin,
        key,
        Duration::from_secs(20),
        "a status 3 event naming the secret while OpenBao is down",
        logs,
        |event| event["check"]["status"] == 3,
    )
    .await;
    eprintln!(
        "status 3 stored {:?} after OpenBao stopped",
        stopped.elapsed()
    );
    let output = output_of(&event);
    assert!(output.contains("secret \"api-token\""), "{event:#}");
    assert!(
        output.contains(&bao.addr()) || output.to_lowercase().contains("connection refused"),
        "the output should say why (the address or the refused connection): {output}"
    );
    assert!(!event.to_string().contains(&second), "{event:#}");
    let health = backend
        .client(Credentials::None)
        .send(Method::GET, "/health", None)
        .await
        .expect("/health while OpenBao is down");
    assert_eq!(health.status(), StatusCode::OK);
    let text = metrics(&admin).await;
    assert!(
        metric(&text, "cairn_secret_failures_total") >= 1.0,
        "{text}"
    );

    // OpenBao back (its dev storage is in memory: the value is written again): the check
    // recovers on its own.
    bao.restart().await;
    bao.kv_put("cairn/agent", json!({"api_token": second}))
        .await;
    let back = Instant::now();
    let event = wait_event(
        &admin,
        key,
        Duration::from_secs(60),
        "the check recovering once OpenBao is back",
        logs,
        |event| event["check"]["status"] == 0,
    )
    .await;
    eprintln!("recovered {:?} after OpenBao came back", back.elapsed());
    assert_eq!(
        output_of(&event).trim(),
        format!("token=***** sha={second_sha}"),
        "{event:#}"
    );
    let history = statuses(&event);
    let failed = history
        .iter()
        .position(|&status| status == 3)
        .unwrap_or_else(|| panic!("no status 3 in the history {history:?}"));
    assert!(
        history[failed..].ends_with(&[0]),
        "the outage, then a recovery: {history:?}"
    );

    // The leak audit: neither value anywhere; the root token in no log or API answer.
    let mut evidence = Evidence::default();
    evidence.api(&admin, &[key]).await;
    let exit = agent.terminate();
    assert!(exit.is_some_and(|status| status.success()), "{exit:?}");
    backend.stop();
    backend_logs(&mut evidence, &backend);
    evidence.files(&agent.log_file);
    assert!(
        agent.log().contains("DEBUG"),
        "the agent did not log at debug level:\n{}",
        agent.log()
    );
    evidence.assert_clean(&[
        ("the first value", &first),
        ("the rotated value", &second),
        ("the Vault token", bao.root_token()),
    ]);
    let mut evidence = Evidence::default();
    evidence.files(&backend.data_dir);
    evidence.files(&install.dir);
    evidence.files(bao.log_file());
    evidence.assert_clean(&[("the first value", &first), ("the rotated value", &second)]);
}

/// An `Env` secret (a variable of the backend's environment only) in a hook's environment (a
/// Cairn extension): the hook sees it, and its output has it redacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_secret_reaches_a_hook_redacted() {
    const VARIABLE: &str = "E2E_HOOK_TOKEN";
    assert!(
        std::env::var_os(VARIABLE).is_none(),
        "{VARIABLE} must be set in the backend's environment only"
    );
    let value = distinctive("hook-token");
    let value_sha = sha256_hex(&value);
    let mut backend = debug_backend(|options| options.env(VARIABLE, &value));
    let admin = backend.admin().await;
    apply_env_provider(
        &admin,
        json!([{"variables": ["E2E_HOOK_*"], "namespaces": [NS]}]),
    )
    .await;
    apply_secret(&admin, "hook-token", VARIABLE, "env").await;
    apply_core(
        &admin,
        "hooks",
        "show-token",
        json!({
            "command": format!(
                "{}; echo \"hook=$HOOK_TOKEN sha=$sha\"; test \"$sha\" = {value_sha}",
                sha_of("HOOK_TOKEN")
            ),
            "timeout": 10,
            "secrets": [{"name": "HOOK_TOKEN", "secret": "hook-token"}],
        }),
    )
    .await;
    let name = "secrets-02";
    let install = enrol(&backend, &admin, name).await;
    let mut agent = start_agent(&install).await;
    apply_core(
        &admin,
        "checks",
        "hooked",
        json!({
            "command": "echo checked",
            "interval": 1,
            "timeout": 10,
            "subscriptions": ["linux"],
            "publish": true,
            "check_hooks": [{"ok": ["show-token"]}],
        }),
    )
    .await;
    let key = (name, "hooked");
    let logs = || {
        format!(
            "agent log:\n{}\nbackend log:\n{}",
            agent.log(),
            backend.log()
        )
    };
    let event = wait_event(
        &admin,
        key,
        Duration::from_secs(20),
        "the check's hook run",
        logs,
        |event| {
            event["check"]["hooks"]
                .as_array()
                .is_some_and(|hooks| !hooks.is_empty())
        },
    )
    .await;
    let hook = &event["check"]["hooks"][0];
    assert_eq!(
        hook["output"].as_str().unwrap_or_default().trim(),
        format!("hook=***** sha={value_sha}"),
        "{event:#}"
    );
    assert_eq!(hook["status"], 0, "{event:#}");
    assert!(!event.to_string().contains(&value), "{event:#}");

    stop_and_audit(
        &admin,
        &[key],
        (&mut agent, &install),
        &mut backend,
        &[("the hook's value", &value)],
    )
    .await;
}

/// Stops `agent` (which must exit cleanly) and `backend`, then audits the API answers for
/// `entity_checks`, the backend's logs and every file of both for `needles`.
async fn stop_and_audit(
    admin: &Client,
    entity_checks: &[(&str, &str)],
    (agent, install): (&mut Agent, &Install),
    backend: &mut Backend,
    needles: &[(&str, &str)],
) {
    let mut evidence = Evidence::default();
    evidence.api(admin, entity_checks).await;
    let exit = agent.terminate();
    assert!(exit.is_some_and(|status| status.success()), "{exit:?}");
    backend.stop();
    backend_logs(&mut evidence, backend);
    evidence.files(&backend.data_dir);
    evidence.files(&install.dir);
    evidence.assert_clean(needles);
}

/// Issue 13, finding 6: the `env` provider served any variable of the backend's environment to
/// any namespace. Now a variable outside the allow list, one allowed for another namespace
/// only, and a `CAIRN_*` one (even where the list's pattern covers it) each give a status 3
/// event naming the allow list (or the rule), and no value reaches anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_env_secrets_outside_the_allow_list_are_refused() {
    let outside = distinctive("outside");
    let prod_only = distinctive("prod-only");
    let own = distinctive("own");
    let mut backend = debug_backend(|options| {
        options
            .env("E2E_OUTSIDE_TOKEN", &outside)
            .env("E2E_PROD_TOKEN", &prod_only)
            .env("CAIRN_E2E_OWN_TOKEN", &own)
    });
    let admin = backend.admin().await;
    apply_env_provider(
        &admin,
        json!([
            {"variables": ["E2E_PROD_*"], "namespaces": ["prod"]},
            {"variables": ["E2E_ALLOWED_*", "CAIRN_E2E_*"]},
        ]),
    )
    .await;
    let cases = [
        (
            "outside",
            "E2E_OUTSIDE_TOKEN",
            "environment variable \"E2E_OUTSIDE_TOKEN\" is not in the allow list of the Env provider \"env\" (spec.allow) for namespace \"default\"",
        ),
        (
            "prod-only",
            "E2E_PROD_TOKEN",
            "environment variable \"E2E_PROD_TOKEN\" is not in the allow list of the Env provider \"env\" (spec.allow) for namespace \"default\"",
        ),
        (
            "own",
            "CAIRN_E2E_OWN_TOKEN",
            "environment variable \"CAIRN_E2E_OWN_TOKEN\" is never served",
        ),
    ];
    let name = "secrets-env-refused";
    let install = enrol(&backend, &admin, name).await;
    let mut agent = start_agent(&install).await;
    for (secret, variable, _) in cases {
        apply_secret(&admin, secret, variable, "env").await;
        apply_core(
            &admin,
            "checks",
            secret,
            json!({
                "command": format!("echo \"got ${variable}\""),
                "interval": 1,
                "timeout": 10,
                "subscriptions": ["linux"],
                "publish": true,
                "secrets": [{"name": variable, "secret": secret}],
            }),
        )
        .await;
    }
    let logs = || {
        format!(
            "agent log:\n{}\nbackend log:\n{}",
            agent.log(),
            backend.log()
        )
    };
    for (secret, _, reason) in cases {
        let event = wait_event(
            &admin,
            (name, secret),
            Duration::from_secs(20),
            "the refused secret's status 3 event",
            logs,
            |event| event["check"]["status"] == 3,
        )
        .await;
        let output = output_of(&event);
        assert!(output.contains(&format!("secret \"{secret}\"")), "{output}");
        assert!(output.contains(reason), "{output}");
    }

    let keys: Vec<(&str, &str)> = cases.iter().map(|(secret, _, _)| (name, *secret)).collect();
    stop_and_audit(
        &admin,
        &keys,
        (&mut agent, &install),
        &mut backend,
        &[
            ("the variable outside the list", &outside),
            ("the variable of another namespace", &prod_only),
            ("the CAIRN_ variable", &own),
        ],
    )
    .await;
}

/// Issue 13, finding 6: providers are cluster-wide, so a namespace admin (the `admin` cluster
/// role bound in one namespace) may manage that namespace's Secrets but cannot widen the `env`
/// provider's allow list; a cluster admin can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_only_a_cluster_role_changes_the_env_provider() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    admin
        .send(
            Method::POST,
            "/api/core/v2/users",
            Some(&json!({"username": "ns-admin", "password": "ns-admin-password", "groups": []})),
        )
        .await
        .expect("create user");
    put(
        &admin,
        &format!("/api/core/v2/namespaces/{NS}/rolebindings/ns-admin"),
        &json!({"metadata": {"name": "ns-admin", "namespace": NS}, "role_ref": {"type": "ClusterRole", "name": "admin"}, "subjects": [{"type": "User", "name": "ns-admin"}]}),
    )
    .await;
    let anonymous = backend.client(Credentials::None);
    let tokens = anonymous
        .login("ns-admin", "ns-admin-password")
        .await
        .expect("login");
    let ns_admin = anonymous.with_credentials(Credentials::Bearer(tokens.access_token));

    // The namespace admin manages the namespace's Secrets...
    apply_secret(&ns_admin, "mine", "HOME", "env").await;
    let path = format!("/api/enterprise/secrets/v1/namespaces/{NS}/secrets/mine");
    assert!(
        get_opt(&admin, &path).await.is_some(),
        "the namespace admin's secret"
    );
    // ...but not the provider that decides what they resolve to.
    let widened = json!({"type": "Env", "api_version": "secrets/v1", "metadata": {"name": "env"}, "spec": {"allow": [{"variables": ["*"]}]}});
    let refused = ns_admin
        .send(Method::PUT, ENV_PROVIDER_PATH, Some(&widened))
        .await;
    assert!(
        matches!(
            &refused,
            Err(ClientError::Status { status, .. }) if *status == StatusCode::FORBIDDEN
        ),
        "{refused:?}"
    );
    let seeded = get_opt(&admin, ENV_PROVIDER_PATH)
        .await
        .expect("seeded provider");
    // Nothing allowed: `allow` (Cairn's extension of Sensu's empty Env spec) is left out
    // when empty, so the provider reads as Sensu's `spec: {}`.
    assert_eq!(seeded["spec"], json!({}), "{seeded:#}");
    put(&admin, ENV_PROVIDER_PATH, &widened).await;
    let widened = get_opt(&admin, ENV_PROVIDER_PATH).await.expect("provider");
    assert_eq!(
        widened["spec"]["allow"][0]["variables"],
        json!(["*"]),
        "{widened:#}"
    );
}
