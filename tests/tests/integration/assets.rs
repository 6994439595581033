//! Runtime assets end to end (issue 19, item 1): assets packaged in the test with Debian's
//! `tar` (scripts and copies of Debian binaries), served by a local HTTPS server under a CA of
//! its own (the agent's `assets.trusted_ca_file`), scheduled by a real backend and run by a
//! real agent over mutual TLS: the asset's binary on `PATH`, a wrong sha512 refused with
//! nothing unpacked, plain HTTP refused, the cache kept across an agent restart, fifty checks
//! at once making one download, and five checks of the shared corpus (their commands and
//! `runtime_assets` as written) against assets packaged here, since the corpus' Bonsai URLs
//! are not reachable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cairn_agent::assets::Assets;
use cairn_agent::exec::{ExecLimits, Executor};
use cairn_api::agent::CheckRequest;
use cairn_api::assets::CacheConfig;
use cairn_api::client::Client;
use cairn_api::model::{Asset, CheckConfig, Entity};
use cairn_api::{codec, ObjectMeta, Spec};
use cairn_tests::fake_cluster::{read_head, FakeCluster};
use cairn_tests::{eventually, Agent, AgentInstall, Backend};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha512};
use tokio::io::AsyncWriteExt;

const NS: &str = "default";
/// How long a scheduled check may take to show its first result.
const WITHIN: Duration = Duration::from_secs(60);

// === the asset server ===

/// An HTTPS server of asset archives by path, counting the requests of each path.
pub(super) struct AssetServer {
    server: FakeCluster,
    requests: Arc<Mutex<HashMap<String, usize>>>,
}

impl AssetServer {
    /// Serves `files` (path → bytes), each answer after `delay`; unknown paths get a 404.
    pub(super) async fn start(files: HashMap<String, Vec<u8>>, delay: Duration) -> AssetServer {
        let files = Arc::new(files);
        let requests = Arc::new(Mutex::new(HashMap::new()));
        let counts = Arc::clone(&requests);
        let server = FakeCluster::start(move |mut stream| {
            let (files, counts) = (Arc::clone(&files), Arc::clone(&counts));
            async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                *counts
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(head.target.clone())
                    .or_insert(0) += 1;
                tokio::time::sleep(delay).await;
                let (status, body) = match files.get(&head.target) {
                    Some(body) => ("200 OK", body.clone()),
                    None => ("404 Not Found", b"not found".to_vec()),
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/octet-stream\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
            }
        })
        .await;
        AssetServer { server, requests }
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url)
    }

    pub(super) fn ca(&self) -> &str {
        &self.server.ca
    }

    /// Requests of `path` so far.
    pub(super) fn count(&self, path: &str) -> usize {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

// === packaging ===

/// What goes into an archive at a path.
pub(super) enum Content {
    /// A shell script (mode 0755).
    Script(String),
    /// A copy of a binary of this Debian system (mode 0755).
    Copy(&'static str),
}

/// A gzip'd tar of `files`, made by Debian's `tar` (the format Sensu's assets use).
pub(super) fn package(files: &[(&str, Content)]) -> Vec<u8> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    for (path, content) in files {
        let target = tree.join(path);
        std::fs::create_dir_all(target.parent().expect("a parent")).expect("mkdir");
        match content {
            Content::Script(text) => std::fs::write(&target, text).expect("write a script"),
            Content::Copy(binary) => {
                std::fs::copy(binary, &target).unwrap_or_else(|err| panic!("copy {binary}: {err}"));
            }
        }
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let archive = dir.path().join("asset.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed");
    std::fs::read(&archive).expect("read the archive")
}

pub(super) fn script(text: &str) -> Content {
    Content::Script(format!("#!/bin/sh\n{text}\n"))
}

pub(super) fn sha512_hex(bytes: &[u8]) -> String {
    hex::encode(Sha512::digest(bytes))
}

// === the backend and the agent ===

async fn put(admin: &Client, plural: &str, name: &str, mut body: Value) {
    body["metadata"] = json!({"name": name, "namespace": NS});
    let path = format!("/api/core/v2/namespaces/{NS}/{plural}/{}", name);
    let response = admin
        .send(Method::PUT, &path, Some(&body))
        .await
        .unwrap_or_else(|err| panic!("PUT {plural}/{name}: {err}"));
    assert!(response.status().is_success(), "PUT {path}: {response:?}");
}

async fn put_asset(admin: &Client, name: &str, url: &str, sha512: &str) {
    put(admin, "assets", name, json!({"url": url, "sha512": sha512})).await;
}

/// A check on the agent's `linux` subscription, every 2 s.
async fn put_check(admin: &Client, name: &str, command: &str, assets: &[&str]) {
    put(
        admin,
        "checks",
        name,
        json!({
            "command": command,
            "subscriptions": ["linux"],
            "interval": 2,
            "timeout": 10,
            "publish": true,
            "runtime_assets": assets,
        }),
    )
    .await;
}

/// Mints a single-use join token granting `linux`.
async fn join_token(admin: &Client) -> String {
    let response = admin
        .send(
            Method::POST,
            "/api/cairn/v1/jointokens",
            Some(&json!({"ttl_seconds": 600, "uses": 1, "subscriptions": ["linux"], "namespace": NS})),
        )
        .await
        .expect("create a join token");
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.expect("the token as JSON");
    body["token"].as_str().expect("a token").to_owned()
}

/// An installed agent whose `assets:` section trusts `ca` and caches under its own folder.
struct AssetAgent {
    agent: Agent,
    cache: PathBuf,
    install: AgentInstall,
}

async fn start_agent(backend: &Backend, admin: &Client, name: &str, ca: &str) -> AssetAgent {
    let token = join_token(admin).await;
    let install = AgentInstall::install(backend, &token, name);
    std::fs::write(install.config_dir.join("assets-ca.pem"), ca).expect("write the CA");
    let cache = install.config_dir.join("cache");
    let mut yaml = std::fs::read_to_string(install.config()).expect("read agent.yaml");
    yaml.push_str("assets:\n  trusted_ca_file: assets-ca.pem\n  cache_dir: cache\n");
    std::fs::write(install.config(), yaml).expect("write agent.yaml");
    let agent = install.start();
    AssetAgent {
        agent,
        cache: cache.join("assets"),
        install,
    }
}

/// Waits until the event of `check` on `entity` satisfies `accept`.
async fn wait_event(
    admin: &Client,
    agent: &Agent,
    (entity, check): (&str, &str),
    what: &str,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("/api/core/v2/namespaces/{NS}/events/{entity}/{check}");
    eventually(what, WITHIN, || async {
        let event = match admin.send(Method::GET, &path, None::<&Value>).await {
            Ok(response) if response.status() == StatusCode::OK => {
                response.json::<Value>().await.ok()
            }
            _ => None,
        };
        match event {
            Some(event) if accept(&event) => Ok(event),
            event => Err(format!(
                "last event: {event:#?}\nagent log:\n{}",
                agent.log()
            )),
        }
    })
    .await
}

fn status_of(event: &Value) -> u64 {
    event["check"]["status"].as_u64().unwrap_or(u64::MAX)
}

fn output_of(event: &Value) -> String {
    event["check"]["output"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The names in a folder, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packaged_asset_runs_from_path_and_bad_ones_are_refused() {
    let hello = package(&[(
        "bin/hello-asset",
        script("echo \"hello from $(command -v hello-asset) in $HELLO_PLUGIN_PATH\""),
    )]);
    let other = package(&[("bin/hello-asset", script("echo tampered"))]);
    let hello_sha = sha512_hex(&hello);
    // What the tampered asset says it is: nothing the server has (had it named hello's sha512,
    // the cache would rightly serve it hello's tree, content-addressed).
    let declared = sha512_hex(b"the archive its publisher built");
    let files = HashMap::from([
        ("/hello.tar.gz".to_owned(), hello.clone()),
        ("/tampered.tar.gz".to_owned(), other.clone()),
    ]);
    let server = AssetServer::start(files, Duration::ZERO).await;
    let backend = Backend::start();
    let admin = backend.admin().await;
    put_asset(&admin, "hello", &server.url("/hello.tar.gz"), &hello_sha).await;
    // The archive served is another one than the sha512 says.
    put_asset(
        &admin,
        "tampered",
        &server.url("/tampered.tar.gz"),
        &declared,
    )
    .await;
    let plain_sha = sha512_hex(b"an archive on a plain http server");
    put_asset(
        &admin,
        "plain",
        "http://127.0.0.1:9/plain.tar.gz",
        &plain_sha,
    )
    .await;
    put_check(&admin, "hello", "hello-asset", &["hello"]).await;
    put_check(&admin, "tampered", "hello-asset", &["tampered"]).await;
    put_check(&admin, "plain", "hello-asset", &["plain"]).await;
    let name = "assets-01";
    let agent = start_agent(&backend, &admin, name, server.ca()).await;

    // The asset's binary is on PATH, and its folder in HELLO_PLUGIN_PATH.
    let tree = agent.cache.join(&hello_sha);
    let first = wait_event(
        &admin,
        &agent.agent,
        (name, "hello"),
        "the hello check",
        |event| status_of(event) == 0,
    )
    .await;
    assert_eq!(
        output_of(&first),
        format!(
            "hello from {} in {}\n",
            tree.join("bin/hello-asset").display(),
            tree.display()
        )
    );
    // Runs after the first use the cache: one download.
    let executed = first["check"]["executed"].as_i64().unwrap_or_default();
    wait_event(
        &admin,
        &agent.agent,
        (name, "hello"),
        "a second run",
        |event| event["check"]["executed"].as_i64().unwrap_or_default() > executed,
    )
    .await;
    assert_eq!(server.count("/hello.tar.gz"), 1);

    // The wrong sha512 is a status 3 naming the asset; the command does not run.
    let tampered = wait_event(
        &admin,
        &agent.agent,
        (name, "tampered"),
        "the tampered check",
        |event| status_of(event) == 3,
    )
    .await;
    let output = output_of(&tampered);
    assert!(
        output.starts_with(&format!(
            "asset tampered: sha512 mismatch: expected {declared}, downloaded {}",
            sha512_hex(&other)
        )),
        "{output}"
    );
    assert!(!output.contains("tampered\n"), "the command ran: {output}");

    // Plain HTTP is refused without `assets.allow_http`, before any connection.
    let plain = wait_event(
        &admin,
        &agent.agent,
        (name, "plain"),
        "the plain check",
        |event| status_of(event) == 3,
    )
    .await;
    // The first run says it; later ones, in the backoff, say it with when the next try is.
    let output = output_of(&plain);
    assert!(
        output.starts_with(
            "asset plain: http://127.0.0.1:9/plain.tar.gz is plain http and assets.allow_http is \
             false"
        ),
        "{output}"
    );

    // Nothing of the tampered archive was unpacked: the cache holds the good build only.
    assert_eq!(
        names_in(&agent.cache),
        [".tmp".to_owned(), hello_sha.clone()]
    );
    assert_eq!(names_in(&agent.cache.join(".tmp")), Vec::<String>::new());

    // The cache survives a restart: started again, the agent runs the check from it.
    let mut agent = agent;
    assert!(
        agent.agent.terminate().is_some(),
        "the agent stops on SIGTERM"
    );
    let stopped = unix_now();
    agent.agent = agent.install.start();
    let again = wait_event(
        &admin,
        &agent.agent,
        (name, "hello"),
        "a run after the restart",
        |event| event["check"]["executed"].as_i64().unwrap_or_default() > stopped,
    )
    .await;
    assert_eq!(status_of(&again), 0, "{again:#}");
    assert_eq!(
        server.count("/hello.tar.gz"),
        1,
        "no download after the restart"
    );
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_checks_at_once_make_one_download() {
    // Through the agent's own executor (the backend does not fire fifty checks in the same
    // instant), with real processes and a slow server, so every check waits for the download.
    let tool = package(&[("bin/shared-tool", script("echo \"shared $1\""))]);
    let sha512 = sha512_hex(&tool);
    let files = HashMap::from([("/shared.tar.gz".to_owned(), tool)]);
    let server = AssetServer::start(files, Duration::from_millis(500)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = CacheConfig::new(dir.path().join("assets"));
    config.fetch.trusted_ca_pem = Some(server.ca().to_owned());
    let assets = Arc::new(Assets::new(config));
    let executor = Executor::with_assets(
        ExecLimits {
            max_concurrency: 50,
        },
        Some(assets.clone()),
    );
    let asset = Asset {
        metadata: Some(ObjectMeta::named(NS, "shared")),
        url: server.url("/shared.tar.gz"),
        sha512,
        ..Asset::default()
    };
    let entity = Entity {
        metadata: Some(ObjectMeta::named(NS, "host-1")),
        entity_class: "agent".to_owned(),
        system: Some(cairn_agent::facts::collect()),
        ..Entity::default()
    };
    let runs = (0..50).map(|idx| {
        let request = CheckRequest {
            config: CheckConfig {
                metadata: Some(ObjectMeta::named(NS, &format!("check-{idx}"))),
                command: format!("shared-tool {idx}"),
                timeout: 30,
                runtime_assets: vec!["shared".to_owned()],
                ..CheckConfig::default()
            },
            assets: vec![asset.clone()],
            issued: 1,
            ..CheckRequest::default()
        };
        let (executor, entity) = (executor.clone(), entity.clone());
        tokio::spawn(async move { executor.run(&request, &entity).await })
    });
    let events = futures::future::join_all(runs).await;
    for (idx, event) in events.into_iter().enumerate() {
        let check = event.expect("the run").check.expect("a check");
        assert_eq!((check.status, check.output), (0, format!("shared {idx}\n")));
    }
    assert_eq!(server.count("/shared.tar.gz"), 1);
    assert_eq!(assets.cache().downloads_started(), 1);
}

/// A check of the shared corpus, the archive its asset is packaged as here, and what its run
/// gives.
struct CorpusCase {
    /// The corpus file, under `shared/corpus/sensu/`.
    file: &'static str,
    /// Its archive (for each of its `runtime_assets` that should be installed).
    files: Vec<(&'static str, Content)>,
    /// The status its wrapper exits with.
    status: u64,
    /// Text its output holds.
    output: &'static str,
}

/// The corpus file's check: its name and configuration.
fn corpus_check(file: &str) -> (String, CheckConfig) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpus/sensu")
        .join(file);
    let manifests = codec::load_path(&path);
    manifests
        .resources
        .into_iter()
        .find_map(|loaded| match loaded.resource.spec {
            Spec::CheckConfig(check) => Some((loaded.resource.metadata.name, check)),
            _ => None,
        })
        .unwrap_or_else(|| {
            panic!(
                "no CheckConfig in {}: {:?}",
                path.display(),
                manifests.problems
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_checks_run_with_assets_packaged_from_debian_binaries() {
    let cases = vec![
        // http-checks: Debian's curl inside the asset, run by the wrapper.
        CorpusCase {
            file: "sensu-docs/content__sensu-go__6.14__observability-pipeline__observe-entities__monitor-external-resources.md__block00.yml",
            files: vec![
                ("libexec/curl", Content::Copy("/usr/bin/curl")),
                (
                    "bin/http-check",
                    script(
                        "\"$HTTP_CHECKS_PLUGIN_PATH/libexec/curl\" --version >/dev/null \
                         || exit 2\necho \"http-check OK: $2 (curl from the asset)\"",
                    ),
                ),
            ],
            status: 0,
            output: "http-check OK: https://sensu.io (curl from the asset)",
        },
        // check-cpu-usage: Debian's cat inside the asset reads /proc/stat.
        CorpusCase {
            file: "sensu-docs/content__sensu-go__6.14__observability-pipeline__observe-schedule__monitor-server-resources.md__block00.yml",
            files: vec![
                ("libexec/cat", Content::Copy("/usr/bin/cat")),
                (
                    "bin/check-cpu-usage",
                    script(
                        "line=$(\"$CHECK_CPU_USAGE_PLUGIN_PATH/libexec/cat\" /proc/stat | head -n 1)\n\
                         case \"$line\" in cpu*) echo \"check-cpu-usage OK: $*\";; *) exit 2;; esac",
                    ),
                ),
            ],
            status: 0,
            output: "check-cpu-usage OK: -w 75 -c 90",
        },
        // sensu/monitoring-plugins' check_load: a wrapper that warns, around Debian's cat.
        CorpusCase {
            file: "thevictorgreen-devopsify-sensu-bootstrap/_.sensu__namespaces__management__checks__check-cpu.yaml",
            files: vec![
                ("bin/cat", Content::Copy("/usr/bin/cat")),
                (
                    "bin/check_load",
                    script(
                        "load=$(cat /proc/loadavg) || exit 3\n\
                         echo \"WARNING - load average: ${load%% *} ($*)|load1=${load%% *}\"; exit 1",
                    ),
                ),
            ],
            status: 1,
            output: "WARNING - load average: ",
        },
        // check-nginx names three platform assets; only the Debian one's filters match this
        // host, the others are skipped as Sensu skips them.
        CorpusCase {
            file: "calebhailey-monitoring-k8s-workloads/sensu__checks__check-nginx.yaml",
            files: vec![
                ("bin/curl", Content::Copy("/usr/bin/curl")),
                (
                    "bin/check_http",
                    script("command -v curl >/dev/null || exit 3\necho \"HTTP OK: $* via $(command -v curl)\""),
                ),
            ],
            status: 0,
            output: "HTTP OK: -H 127.0.0.1 -N via ",
        },
        // sensu/monitoring-plugins:2.6.0's check_ntp_time, with Nagios perfdata.
        CorpusCase {
            file: "calebhailey-2018-sensu-summit-demo/lessons__2__checks__ntp.yaml",
            files: vec![
                ("bin/date", Content::Copy("/usr/bin/date")),
                (
                    "bin/check_ntp_time",
                    script("date -u +%s >/dev/null || exit 3\necho \"NTP OK: Offset 0.001 secs ($*)|offset=0.001s;0.5;1.0;\""),
                ),
            ],
            status: 0,
            output: "NTP OK: Offset 0.001 secs (-H time.nist.gov --warn 0.5 --critical 1.0)",
        },
    ];

    // Package each case's archive, and serve it for every asset its check names.
    let mut files = HashMap::new();
    let mut checks = Vec::new();
    for (idx, case) in cases.iter().enumerate() {
        let archive = package(&case.files);
        let path = format!("/case-{idx}.tar.gz");
        files.insert(path.clone(), archive.clone());
        checks.push((corpus_check(case.file), path, sha512_hex(&archive)));
    }
    let server = AssetServer::start(files, Duration::ZERO).await;
    let backend = Backend::start();
    let admin = backend.admin().await;
    let name = "corpus-01";
    for ((check_name, check), path, sha512) in &checks {
        for asset in &check.runtime_assets {
            let mut body = json!({"url": server.url(path), "sha512": sha512});
            // check-nginx's three assets keep their corpus filters (alpine, centos, debian).
            if let Some(platform) = ["alpine", "centos", "debian"]
                .into_iter()
                .find(|platform| asset == &format!("monitoring-plugins-{platform}"))
            {
                body["filters"] = json!([
                    "entity.system.os == 'linux'",
                    format!("entity.system.platform == '{platform}'"),
                ]);
                if platform != "debian" {
                    body["url"] = json!(server.url(&format!("/never-{platform}.tar.gz")));
                }
            }
            put(&admin, "assets", asset, body).await;
        }
        // The corpus check as written (command, runtime_assets, metric format), on the agent's
        // subscription, every 2 s, without the corpus' handlers and hooks (not defined here).
        let spec = json!({
            "command": check.command,
            "runtime_assets": check.runtime_assets,
            "output_metric_format": check.output_metric_format,
            "subscriptions": ["linux"],
            "interval": 2,
            "timeout": 10,
            "publish": true,
        });
        put(&admin, "checks", check_name, spec).await;
    }
    let agent = start_agent(&backend, &admin, name, server.ca()).await;

    for (((check_name, check), path, sha512), case) in checks.iter().zip(&cases) {
        let event = wait_event(
            &admin,
            &agent.agent,
            (name, check_name),
            check_name,
            |event| event["check"]["status"].is_u64(),
        )
        .await;
        let output = output_of(&event);
        assert_eq!(status_of(&event), case.status, "{check_name}: {output}");
        assert!(output.contains(case.output), "{check_name}: {output}");
        assert_eq!(
            event["check"]["command"],
            json!(check.command),
            "{check_name}"
        );
        assert!(
            agent.cache.join(sha512).join("bin").is_dir(),
            "{check_name}"
        );
        assert_eq!(server.count(path), 1, "{check_name}: one download");
    }
    for platform in ["alpine", "centos"] {
        assert_eq!(
            server.count(&format!("/never-{platform}.tar.gz")),
            0,
            "{platform}"
        );
    }
    // check-nginx's PATH found the Debian asset's curl.
    let nginx = wait_event(
        &admin,
        &agent.agent,
        (name, "check-nginx"),
        "check-nginx",
        |_| true,
    )
    .await;
    assert!(
        output_of(&nginx).contains(&agent.cache.display().to_string()),
        "{nginx:#}"
    );
    // The ntp check's perfdata became metrics.
    let ntp = wait_event(&admin, &agent.agent, (name, "ntp"), "ntp", |_| true).await;
    assert!(
        ntp["metrics"]["points"]
            .as_array()
            .is_some_and(|points| !points.is_empty()),
        "{ntp:#}"
    );
}
