//! Agent scale benchmark (issue 5): N simulated agents on one backend, keepalive 20 s, each
//! running a 10 s check; the largest N the machine sustains with a p99 request → event latency
//! under 1 s, the backend's RSS per session, and the real agent binary's idle RSS.
//!
//! - **Backend**: the release `cairn-backend` ([`Backend::start`]), alone in its process.
//! - **Agents**: `cairn_agent::sim::run`, many sessions in this process. Each is a real session
//!   built from the agent's own code (`session::connect`: TLS 1.3 with its own P-256 client
//!   certificate, the WebSocket; `session::hello`; keepalive + ping every 20 s; events with a UUID
//!   id kept until acknowledged), except that a check request is answered in-process at once
//!   with a passing result instead of forking the command, and unacknowledged events stay in
//!   memory instead of the on-disk queue: forking 1,000 shells a second and fsyncing 2,000 queue
//!   files a second on the same 2 cores would measure fork and the disk, not Cairn.
//! - **Certificates**: minted here with rcgen, signed directly by the backend's agent CA
//!   (`data_dir/tls/agent-ca.{pem,key}`) the way `pki::sign_csr` makes them (`CN=<name>`,
//!   `clientAuth`, a P-256 key per agent, `notBefore` back-dated 5 min, a random serial). The
//!   bootstrap endpoint is not in the loop (one join token per use would make setup the
//!   benchmark); the real agent below enrols through a join token.
//! - **Check**: `sim-check-<k>`, interval 10 s, published, subscription `sim-<k>`; agent `i`
//!   subscribes to `sim-<i % K>` (`CAIRN_BENCH_CHECKS`, default K = 1: one fleet-wide check, so
//!   every agent's request fires in the same second, the burst Sensu's model makes).
//! - **Latency**: per check request, from its `issued` (the whole second of the scheduler's
//!   firing; the scheduler ticks 1 ms after the second turns) to the agent receiving the
//!   backend's acknowledgement of the event, which the backend sends after the event is
//!   durably stored (fsync). So it covers scheduling, dispatch to the session, the agent, the
//!   ingest and the store commit, on the wall clock of this one machine. Samples are every
//!   request issued in a window (`CAIRN_BENCH_WINDOW_SECS`, default 60, rounded up to whole
//!   check intervals, so each agent owes exactly window/10 events); a request whose
//!   acknowledgement has not arrived 20 s after the window counts as an error. Each firing is
//!   one run: a step is sustained when the median over its firings of the per-firing p99 is
//!   under 1 s and nothing failed; the p99 pooled over the whole window is reported beside it.
//! - **Ramp**: N over `CAIRN_BENCH_STEPS` (default 500,1000,2000,4000,6000,8000,10000, capped by
//!   `CAIRN_BENCH_MAX_AGENTS`, default 10,000); sessions are added between steps (in batches of
//!   500 connecting at once) and kept; the ramp stops at the first step that is not sustained
//!   (any failed or dropped session, refused or missing event counts as an error).
//! - **RSS**: the backend's `VmRSS` (from `/proc`) idle before any simulated agent connects and
//!   at the end of each step's window; per session = the growth over N (entity and event state
//!   in the store's cache included).
//! - **Baseline** (same run, before the backend ramp): a bare server in its own process (this
//!   binary re-executed) with the agent listener's own TLS configuration (same certificate, TLS
//!   1.3, client certificates from the agent CA) and tokio-tungstenite with the same limits.
//!   Every 2 s it sends every connection a request; the client (the agent's `session::connect`,
//!   same certificates) answers with a message the size of the simulated event, and the server
//!   answers that with a short ack: the same exchange without scheduling, parsing, the store or
//!   the fsync. Ratios: RSS per session over its RSS per connection, and p99 over its p99
//!   (median over rounds) at the same N.
//! - **Real agent**: the binary as shipped (Cargo.toml's `agent` profile, built for size),
//!   `cairn-agent install` with a join token, then `cairn-agent start`; its
//!   `VmRSS` 10 s after its session is up, idle (no check subscribes it). No baseline: the
//!   figure is absolute, against the 10 MiB goal.
//!
//! Run with `cargo bench -p cairn-tests --bench agents`. Knobs: `CAIRN_BENCH_MAX_AGENTS`,
//! `CAIRN_BENCH_WINDOW_SECS`, `CAIRN_BENCH_STEPS` (comma-separated), `CAIRN_BENCH_CHECKS`,
//! `CAIRN_BENCH_SETTLE_SECS` (default 15, between connecting and the window),
//! `CAIRN_BENCH_BASELINE_ROUNDS` (default 5), `CAIRN_BENCH_SKIP_BASELINE=1`.
//! `CAIRN_BENCH_IDLE_ONLY=1` measures only the real agent's idle RSS with its socket on and a
//! runtime asset run once, against the same agent with neither (`CAIRN_BENCH_IDLE_ROUNDS`,
//! default 3).

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cairn_agent::config::AgentConfig;
use cairn_agent::sim::{self, CheckTiming, Observer, SimAgent};
use cairn_api::agent::AgentMessage;
use cairn_api::model::{Check, CheckConfig, Event};
use cairn_api::{Kind, ObjectMeta, Resource, Spec};
use cairn_tests::bench::{
    cpu_seconds, env_number, median, percentile, rss_kib, sleep_until_unix, sorted, status_field,
    unix, unix_now,
};
use cairn_tests::{fleet, Backend};
use futures::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Set in the environment of this binary re-executed as the baseline server: the agent
/// listener's TLS directory.
const BARE_SERVER_ENV: &str = "CAIRN_BENCH_BARE_SERVER_TLS_DIR";
const CHECK_INTERVAL: i64 = 10;
const KEEPALIVE_INTERVAL: u32 = 20;
const CONNECT_BATCH: usize = 500;
const BARE_PERIOD_MS: u64 = 2000;
const GOAL_AGENTS: usize = 10_000;
const GOAL_P99_S: f64 = 1.0;
const GOAL_AGENT_RSS_MIB: f64 = 10.0;
/// How long after the window acknowledgements may still arrive.
const DRAIN: Duration = Duration::from_secs(20);
/// File descriptors this process needs beyond one per session.
const FD_SPARE: u64 = 512;

/// Raises the soft limit of open files to the hard limit; returns the soft limit in force.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource as Limit};
    let (soft, hard) = getrlimit(Limit::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard && setrlimit(Limit::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

// ------------------------------------------------------------------------------------------
// What the simulated agents report
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Sample {
    issued: i64,
    /// issued → request received, s.
    dispatch: f64,
    /// event sent → acknowledged, s.
    store: f64,
    /// issued → acknowledged, s.
    total: f64,
}

#[derive(Default)]
struct Recorder {
    live: AtomicUsize,
    disconnects: AtomicU64,
    failures: AtomicU64,
    refusals: AtomicU64,
    samples: Mutex<Vec<Sample>>,
    last_problem: Mutex<String>,
}

impl Recorder {
    fn problem(&self, name: &str, reason: &str) {
        *self
            .last_problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = format!("{name}: {reason}");
    }

    fn errors(&self) -> u64 {
        self.disconnects.load(Ordering::Relaxed)
            + self.failures.load(Ordering::Relaxed)
            + self.refusals.load(Ordering::Relaxed)
    }
}

impl Observer for Recorder {
    fn connected(&self, _name: &str) {
        self.live.fetch_add(1, Ordering::Relaxed);
    }

    fn disconnected(&self, name: &str, reason: &str) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.disconnects.fetch_add(1, Ordering::Relaxed);
        self.problem(name, reason);
    }

    fn failed(&self, name: &str, reason: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.problem(name, reason);
    }

    fn acked(&self, _name: &str, timing: &CheckTiming) {
        let issued = timing.issued as f64;
        let sample = Sample {
            issued: timing.issued,
            dispatch: unix(timing.received) - issued,
            store: unix(timing.acked) - unix(timing.sent),
            total: unix(timing.acked) - issued,
        };
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sample);
    }

    fn refused(&self, name: &str, reason: &str) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
        self.problem(name, reason);
    }
}

// ------------------------------------------------------------------------------------------
// Certificates and configurations of the simulated agents
// ------------------------------------------------------------------------------------------

fn agent_config(name: &str, url: &str, dir: &Path, ca_file: &Path, group: usize) -> AgentConfig {
    let mut config = fleet::agent_config(
        name,
        vec![url.to_owned()],
        dir,
        ca_file,
        vec![format!("sim-{group}")],
    );
    config.keepalive_interval = KEEPALIVE_INTERVAL;
    config
}

/// The message a simulated agent sends for one check result, for the baseline's size.
fn event_message(config: &AgentConfig, system: cairn_api::model::System) -> String {
    let entity = cairn_agent::session::entity(config, system);
    let check = CheckConfig {
        metadata: Some(ObjectMeta::named("default", "sim-check-0")),
        command: "true".into(),
        interval: CHECK_INTERVAL,
        subscriptions: vec!["sim-0".into()],
        publish: true,
        timeout: 10,
        ..CheckConfig::default()
    };
    let mut check: Check = serde_json::to_value(&check)
        .and_then(serde_json::from_value)
        .expect("a check config is a check");
    let now = cairn_agent::certs::now_unix();
    check.issued = now;
    check.executed = now;
    check.duration = Some(0.0);
    check.output = sim::SIM_OUTPUT.into();
    check.processed_by = config.name.clone();
    let event = Event {
        timestamp: now,
        entity: Some(entity),
        check: Some(check),
        id: "00000000-0000-0000-0000-000000000000".into(),
        ..Event::default()
    };
    serde_json::to_string(&AgentMessage::Event {
        id: event.id.clone(),
        event: Box::new(event),
    })
    .expect("serialise")
}

// ------------------------------------------------------------------------------------------
// The baseline: a bare TLS WebSocket request/reply server in its own process
// ------------------------------------------------------------------------------------------

const BARE_ACK: &str = r#"{"type":"ack","id":"00000000-0000-0000-0000-000000000000"}"#;

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(cairn_api::agent::MAX_MESSAGE_BYTES))
        .max_frame_size(Some(cairn_api::agent::MAX_MESSAGE_BYTES))
        .read_buffer_size(cairn_api::agent::READ_BUFFER_BYTES)
}

/// The agent listener's TLS configuration, as `tls::agent_server_config` builds it.
fn bare_tls(tls_dir: &Path) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |file: &str| -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(tls_dir.join(file))
            .expect("read certificates")
            .collect::<Result<_, _>>()
            .expect("parse certificates")
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs("agent-ca.pem") {
        roots.add(cert).expect("agent CA");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let mut chain = certs("agent-listener.pem");
    chain.extend(certs("ca.pem"));
    let key = PrivateKeyDer::from_pem_file(tls_dir.join("agent-listener.key")).expect("key");
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The baseline server's `main`: prints its address, serves until stdin closes.
fn bare_server(tls_dir: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let acceptor = tokio_rustls::TlsAcceptor::from(bare_tls(tls_dir));
    std::thread::spawn(|| {
        let mut buf = [0u8; 64];
        while std::io::stdin().read(&mut buf).is_ok_and(|read| read > 0) {}
        std::process::exit(0);
    });
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "bare listening on {addr}").expect("stdout");
        stdout.flush().expect("stdout");
        drop(stdout);
        let (tick_tx, tick_rx) = watch::channel(0u64);
        tokio::spawn(async move {
            loop {
                let now = (unix_now() * 1000.0) as u64;
                let next = (now / BARE_PERIOD_MS + 1) * BARE_PERIOD_MS;
                tokio::time::sleep(Duration::from_millis(next - now)).await;
                let _ = tick_tx.send(next);
            }
        });
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(bare_connection(tcp, acceptor.clone(), tick_rx.clone()));
        }
    });
}

async fn bare_connection(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    mut tick: watch::Receiver<u64>,
) {
    let _ = tcp.set_nodelay(true);
    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
    else {
        return;
    };
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tls, Some(ws_config())).await
    else {
        return;
    };
    tick.borrow_and_update();
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(_))) => {
                    if ws.send(Message::text(BARE_ACK)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {
                    if ws.flush().await.is_err() {
                        return;
                    }
                }
            },
            changed = tick.changed() => {
                if changed.is_err() {
                    return;
                }
                let issued = *tick.borrow_and_update();
                if ws.send(Message::text(issued.to_string())).await.is_err() {
                    return;
                }
            }
        }
    }
}

struct BareServer {
    child: Child,
    addr: String,
}

impl Drop for BareServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_bare_server(tls_dir: &Path) -> BareServer {
    let mut child = Command::new(std::env::current_exe().expect("this binary"))
        .env(BARE_SERVER_ENV, tls_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the baseline server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the baseline server's address");
    let addr = line
        .trim()
        .strip_prefix("bare listening on ")
        .unwrap_or_else(|| panic!("the baseline server printed {line:?}"))
        .to_owned();
    BareServer { child, addr }
}

#[derive(Default)]
struct BareRecorder {
    live: AtomicUsize,
    failures: AtomicU64,
    lost: AtomicU64,
    /// (issued ms, latency s)
    samples: Mutex<Vec<(u64, f64)>>,
}

async fn bare_client(
    config: Arc<AgentConfig>,
    url: String,
    event: Arc<String>,
    recorder: Arc<BareRecorder>,
    mut stop: watch::Receiver<bool>,
) {
    let connected = tokio::time::timeout(
        cairn_agent::session::CONNECT_TIMEOUT,
        cairn_agent::session::connect(&config, &url),
    )
    .await;
    let Ok(Ok(ws)) = connected else {
        recorder.failures.fetch_add(1, Ordering::Relaxed);
        return;
    };
    recorder.live.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut source) = ws.split();
    let mut outstanding: Option<u64> = None;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            message = source.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if text.starts_with('{') {
                        if let Some(issued) = outstanding.take() {
                            let latency = unix_now() - issued as f64 / 1000.0;
                            recorder
                                .samples
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push((issued, latency));
                        }
                    } else if let Ok(issued) = text.parse::<u64>() {
                        outstanding = Some(issued);
                        if sink.send(Message::text(event.as_str())).await.is_err() {
                            recorder.lost.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                Some(Ok(_)) => {}
                _ => {
                    recorder.lost.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    let _ = sink.close().await;
    recorder.live.fetch_sub(1, Ordering::Relaxed);
}

#[derive(Debug, Clone, Copy)]
struct BareStep {
    rss_per_conn_kib: f64,
    p50_s: f64,
    p99_median_s: f64,
    errors: u64,
}

/// Ramps connections to the baseline server over `steps`; per step, its RSS per connection and
/// the latency of `rounds` request rounds.
fn run_baseline(
    runtime: &tokio::runtime::Runtime,
    tls_dir: &Path,
    configs: &[Arc<AgentConfig>],
    event: &Arc<String>,
    steps: &[usize],
    rounds: usize,
) -> BTreeMap<usize, BareStep> {
    let server = start_bare_server(tls_dir);
    let pid = server.child.id();
    let url = format!("wss://{}", server.addr);
    std::thread::sleep(Duration::from_millis(500));
    let rss0 = rss_kib(pid);
    let recorder = Arc::new(BareRecorder::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut results = BTreeMap::new();
    let mut started = 0;
    for &target in steps {
        let begun = Instant::now();
        while started < target {
            let batch_end = (started + CONNECT_BATCH).min(target);
            for config in &configs[started..batch_end] {
                runtime.spawn(bare_client(
                    config.clone(),
                    url.clone(),
                    event.clone(),
                    recorder.clone(),
                    stop_rx.clone(),
                ));
            }
            started = batch_end;
            let deadline = Instant::now() + Duration::from_secs(60);
            while recorder.live.load(Ordering::Relaxed)
                + (recorder.failures.load(Ordering::Relaxed) as usize)
                < started
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let connect_s = begun.elapsed().as_secs_f64();
        let from_ms = (unix_now() * 1000.0) as u64;
        std::thread::sleep(Duration::from_millis(BARE_PERIOD_MS * rounds as u64 + 1500));
        let to_ms = (unix_now() * 1000.0) as u64 - 1500;
        let rss = rss_kib(pid);
        let mut by_round: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for (issued, latency) in recorder
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            if issued > from_ms && issued <= to_ms {
                by_round.entry(issued).or_default().push(latency);
            }
        }
        let live = recorder.live.load(Ordering::Relaxed);
        let missing: u64 = by_round
            .values()
            .map(|round| live.saturating_sub(round.len()) as u64)
            .sum();
        let p99s: Vec<f64> = by_round
            .values()
            .map(|round| percentile(&sorted(round.clone()), 0.99))
            .collect();
        let all = sorted(by_round.into_values().flatten().collect());
        let step = BareStep {
            rss_per_conn_kib: rss.saturating_sub(rss0) as f64 / target as f64,
            p50_s: percentile(&all, 0.5),
            p99_median_s: median(p99s.clone()),
            errors: recorder.failures.load(Ordering::Relaxed)
                + recorder.lost.load(Ordering::Relaxed)
                + missing,
        };
        println!(
            "baseline {target:>6} connections: connected in {connect_s:.1} s, RSS {:.1} MiB ({:.1} KiB/conn), {} rounds, p50 {:.1} ms, p99 median {:.1} ms, errors {}",
            rss as f64 / 1024.0,
            step.rss_per_conn_kib,
            p99s.len(),
            step.p50_s * 1000.0,
            step.p99_median_s * 1000.0,
            step.errors
        );
        results.insert(target, step);
        if step.errors > 0 || live < target {
            println!("baseline stopped at {target}: {live} connected");
            break;
        }
    }
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while recorder.live.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server);
    results
}

// ------------------------------------------------------------------------------------------
// The real agent's idle RSS
// ------------------------------------------------------------------------------------------

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Installs and starts a real `cairn-agent` named `name` with `extra` lines appended to its
/// `agent.yaml`; once its session is up runs `warm` (which may make it run checks), then
/// returns its VmRSS (KiB) and VmHWM after `idle`.
fn real_agent_rss(
    runtime: &tokio::runtime::Runtime,
    backend: &Backend,
    client: &cairn_api::client::Client,
    dir: &Path,
    idle: Duration,
    (name, extra): (&str, &str),
    warm: &dyn Fn(),
) -> (u64, u64) {
    let body = serde_json::json!({"ttl_seconds": 600, "uses": 1, "namespace": "default"});
    let token = runtime.block_on(async {
        let response = client
            .send(
                reqwest::Method::POST,
                "/api/cairn/v1/jointokens",
                Some(&body),
            )
            .await
            .expect("create a join token");
        let created: serde_json::Value = response.json().await.expect("token JSON");
        created["token"].as_str().expect("a token").to_owned()
    });
    let config_dir = dir.join(name);
    let shipped = cairn_tests::shipped_agent_binary();
    let output = Command::new(&shipped)
        .args(["install", "--backend-url", &backend.url, "--name", name])
        .arg("--agent-url")
        .arg(format!("wss://{}", backend.agent_addr))
        .arg("--config-dir")
        .arg(&config_dir)
        .arg("--systemd-unit")
        .arg(dir.join(format!("{name}.service")))
        .env("CAIRN_JOIN_TOKEN", token)
        .output()
        .expect("run cairn-agent install");
    assert!(
        output.status.success(),
        "cairn-agent install failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let config_file = config_dir.join("agent.yaml");
    let yaml = std::fs::read_to_string(&config_file).expect("read agent.yaml");
    let yaml: String = yaml
        .lines()
        .map(|line| {
            if line.starts_with("local_api:") {
                "local_api: 127.0.0.1:0".to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&config_file, yaml + "\n" + extra).expect("write agent.yaml");
    let mut child = Command::new(&shipped)
        .env("CAIRN_LOG", "warn")
        .args(["start", "--config"])
        .arg(&config_file)
        .env_remove("CAIRN_AGENT_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cairn-agent");
    let stdout = child.stdout.take().expect("stdout");
    let agent = KillOnDrop(child);
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut sink = String::new();
        while reader.read_line(&mut sink).is_ok_and(|read| read > 0) {
            sink.clear();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let entity = runtime
            .block_on(client.get_resource(Kind::Entity, "default", name))
            .expect("get the entity");
        if entity.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the real agent did not connect");
        std::thread::sleep(Duration::from_millis(100));
    }
    warm();
    std::thread::sleep(idle);
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", agent.0.id())).unwrap_or_default();
    (
        status_field(&status, "VmRSS:"),
        status_field(&status, "VmHWM:"),
    )
}

/// `CAIRN_BENCH_IDLE_ONLY=1`: the real agent's idle RSS with its TCP/UDP socket listening and
/// a runtime asset downloaded, unpacked and run once (then idle 10 s), against the same agent
/// with neither in the same run; `rounds` of each, alternating, medians printed.
fn idle_with_assets_and_sockets(rounds: usize) {
    // Built first: building it may take minutes, longer than the admin's token lives.
    let _ = cairn_tests::shipped_agent_binary();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let backend = Backend::start();
    let client = runtime.block_on(backend.admin());
    let dir = tempfile::tempdir().expect("tempdir");
    // An asset: bin/hello, packed by tar, served over plain HTTP (allowed for this agent).
    let tree = dir.path().join("asset");
    std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
    let hello = tree.join("bin/hello");
    std::fs::write(&hello, "#!/bin/sh\necho hello from the asset\n").expect("write");
    std::fs::set_permissions(&hello, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let archive = dir.path().join("hello.tar.gz");
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&tree)
        .arg("bin")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed");
    let bytes = std::fs::read(&archive).expect("read the archive");
    let sha512 = {
        use sha2::Digest;
        hex::encode(sha2::Sha512::digest(&bytes))
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let served = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0_u8; 4096];
            let _ = stream.read(&mut request);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                bytes.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&bytes);
        }
    });
    runtime.block_on(async {
        let asset = serde_json::json!({"metadata": {"name": "hello", "namespace": "default"}, "url": format!("http://{served}/hello.tar.gz"), "sha512": sha512});
        client
            .send(reqwest::Method::PUT, "/api/core/v2/namespaces/default/assets/hello", Some(&asset))
            .await
            .expect("PUT the asset");
    });
    let mut plain = Vec::new();
    let mut full = Vec::new();
    for round in 0..rounds {
        let name = format!("idle-plain-{round}");
        plain.push(real_agent_rss(
            &runtime,
            &backend,
            &client,
            dir.path(),
            Duration::from_secs(10),
            (&name, "socket: {disable: true}\n"),
            &|| {},
        ));
        let name = format!("idle-full-{round}");
        let check = serde_json::json!({
            "metadata": {"name": format!("asset-{round}"), "namespace": "default"},
            "command": "hello", "interval": 3600, "publish": false,
            "subscriptions": [format!("entity:{name}")], "runtime_assets": ["hello"],
        });
        let warm = || {
            runtime.block_on(async {
                let path = format!("/api/core/v2/namespaces/default/checks/asset-{round}");
                client
                    .send(reqwest::Method::PUT, &path, Some(&check))
                    .await
                    .expect("PUT the check");
                client
                    .send(
                        reqwest::Method::POST,
                        &format!("{path}/execute"),
                        Some(&serde_json::json!({})),
                    )
                    .await
                    .expect("execute the check");
                let event = format!("/api/core/v2/namespaces/default/events/{name}/asset-{round}");
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if let Ok(event) = client.get_json(&event).await {
                        let output = event["check"]["output"].as_str().unwrap_or_default();
                        assert!(
                            output.contains("hello from the asset"),
                            "the asset check failed: {event}"
                        );
                        break;
                    }
                    assert!(Instant::now() < deadline, "the asset check did not report");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        };
        full.push(real_agent_rss(
            &runtime,
            &backend,
            &client,
            dir.path(),
            Duration::from_secs(10),
            (&name, "socket: {port: 0}\nassets: {allow_http: true}\n"),
            &warm,
        ));
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    let median_of = |runs: &[(u64, u64)], pick: fn(&(u64, u64)) -> u64| {
        let mut values: Vec<u64> = runs.iter().map(pick).collect();
        values.sort_unstable();
        values[values.len() / 2]
    };
    println!("real cairn-agent idle RSS, {rounds} rounds each (VmRSS 10 s after its last check; KiB {plain:?} / {full:?})");
    let (plain_rss, full_rss) = (
        median_of(&plain, |run| run.0),
        median_of(&full, |run| run.0),
    );
    let (plain_hwm, full_hwm) = (
        median_of(&plain, |run| run.1),
        median_of(&full, |run| run.1),
    );
    println!(
        "  no socket, no asset:           VmRSS {:.2} MiB, peak {:.2} MiB",
        mib(plain_rss),
        mib(plain_hwm)
    );
    println!(
        "  socket on, an asset run once:  VmRSS {:.2} MiB, peak {:.2} MiB",
        mib(full_rss),
        mib(full_hwm)
    );
    println!(
        "  ratio {:.2} (goal: < 10 MiB with both on)",
        full_rss as f64 / plain_rss.max(1) as f64
    );
}

// ------------------------------------------------------------------------------------------
// The ramp
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Step {
    agents: usize,
    connect_s: f64,
    samples: usize,
    expected: usize,
    p50_s: f64,
    p99_s: f64,
    p99_firing_median_s: f64,
    max_s: f64,
    dispatch_p99_s: f64,
    store_p99_s: f64,
    backend_rss_kib: u64,
    per_session_kib: f64,
    /// Backend CPU time over the window, s.
    backend_cpu_s: f64,
    /// This process's (the simulated agents') CPU time over the window, s.
    tool_cpu_s: f64,
    window_s: f64,
    errors: u64,
    sustained: bool,
}

fn main() {
    if let Some(tls_dir) = std::env::var_os(BARE_SERVER_ENV) {
        bare_server(Path::new(&tls_dir));
        return;
    }
    if std::env::var("CAIRN_BENCH_IDLE_ONLY").is_ok_and(|value| value == "1") {
        idle_with_assets_and_sockets(env_number("CAIRN_BENCH_IDLE_ROUNDS", 3));
        return;
    }
    let max_agents = env_number("CAIRN_BENCH_MAX_AGENTS", GOAL_AGENTS);
    // Whole check intervals: every agent then owes exactly window / interval events.
    let window_secs = env_number("CAIRN_BENCH_WINDOW_SECS", 60) as i64;
    let window_secs = ((window_secs + CHECK_INTERVAL - 1) / CHECK_INTERVAL).max(1) * CHECK_INTERVAL;
    let checks = env_number("CAIRN_BENCH_CHECKS", 1);
    let settle = env_number("CAIRN_BENCH_SETTLE_SECS", 15) as f64;
    let rounds = env_number("CAIRN_BENCH_BASELINE_ROUNDS", 5);
    let skip_baseline = std::env::var("CAIRN_BENCH_SKIP_BASELINE").is_ok_and(|value| value == "1");
    let mut steps: Vec<usize> = std::env::var("CAIRN_BENCH_STEPS")
        .ok()
        .map(|text| {
            text.split(',')
                .filter_map(|step| step.trim().parse().ok())
                .collect()
        })
        .unwrap_or_else(|| vec![500, 1000, 2000, 4000, 6000, 8000, 10_000]);
    steps.retain(|step| *step > 0 && *step <= max_agents);
    if steps.last() != Some(&max_agents) {
        steps.push(max_agents);
    }
    steps.sort_unstable();
    steps.dedup();

    let nofile = raise_nofile();
    let fd_cap = usize::try_from(nofile.saturating_sub(FD_SPARE)).unwrap_or(usize::MAX);
    if steps.iter().any(|step| *step > fd_cap) {
        println!(
            "note: RLIMIT_NOFILE is {nofile} (hard limit); this process and the backend need one descriptor per session, so steps above {fd_cap} are dropped (raise it with `ulimit -n`)"
        );
        steps.retain(|step| *step <= fd_cap);
    }
    let max_agents = steps.last().copied().unwrap_or(0);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let backend = Backend::start();
    let pid = backend.pid();
    let client = runtime.block_on(backend.admin());
    let dir = tempfile::tempdir().expect("tempdir");

    println!("Agent scale benchmark (issue 5)");
    println!(
        "steps {steps:?}, window {window_secs} s, {checks} check(s) every {CHECK_INTERVAL} s, keepalive {KEEPALIVE_INTERVAL} s, RLIMIT_NOFILE {nofile}, {} CPUs",
        std::thread::available_parallelism().map_or(0, usize::from)
    );

    // The real agent, idle.
    let (agent_rss, agent_hwm) = real_agent_rss(
        &runtime,
        &backend,
        &client,
        dir.path(),
        Duration::from_secs(10),
        ("bench-real-agent", "socket: {disable: true}\n"),
        &|| {},
    );
    println!(
        "real cairn-agent idle 10 s after connecting: VmRSS {:.2} MiB (peak {:.2} MiB)",
        agent_rss as f64 / 1024.0,
        agent_hwm as f64 / 1024.0
    );

    // Certificates and configurations.
    let certs_dir = dir.path().join("sim");
    std::fs::create_dir_all(&certs_dir).expect("mkdir");
    let names: Vec<String> = (0..max_agents).map(|idx| format!("sim-{idx:05}")).collect();
    let minting = Instant::now();
    fleet::mint_certificates(&backend.data_dir, &certs_dir, &names);
    println!(
        "minted {} client certificates with the agent CA in {:.1} s",
        names.len(),
        minting.elapsed().as_secs_f64()
    );
    let url = format!("wss://{}", backend.agent_addr);
    let ca_file = backend.ca_file();
    let configs: Vec<Arc<AgentConfig>> = names
        .iter()
        .enumerate()
        .map(|(idx, name)| Arc::new(agent_config(name, &url, &certs_dir, &ca_file, idx % checks)))
        .collect();
    let system = cairn_agent::facts::collect();
    let event = Arc::new(event_message(&configs[0], system.clone()));
    println!("simulated event message: {} bytes", event.len());

    // The baseline.
    let baseline = if skip_baseline {
        BTreeMap::new()
    } else {
        run_baseline(
            &runtime,
            &backend.data_dir.join("tls"),
            &configs,
            &event,
            &steps,
            rounds,
        )
    };

    // The checks.
    runtime.block_on(async {
        for group in 0..checks {
            let name = format!("sim-check-{group}");
            let check = CheckConfig {
                metadata: Some(ObjectMeta::named("default", &name)),
                command: "true".into(),
                interval: CHECK_INTERVAL,
                subscriptions: vec![format!("sim-{group}")],
                publish: true,
                timeout: 10,
                ..CheckConfig::default()
            };
            let resource = Resource::new(
                ObjectMeta::named("default", &name),
                Spec::CheckConfig(check),
            );
            client
                .put_resource(&resource)
                .await
                .expect("create the check");
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    let rss0 = rss_kib(pid);
    let tool_pid = std::process::id();
    println!(
        "backend idle RSS before the simulated agents: {:.1} MiB",
        rss0 as f64 / 1024.0
    );

    // The ramp.
    let recorder = Arc::new(Recorder::default());
    let observer: Arc<dyn Observer> = recorder.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut started = 0usize;
    let mut results: Vec<Step> = Vec::new();
    let mut stop_reason = String::new();
    for &target in &steps {
        let begun = Instant::now();
        let mut connect_failed = false;
        while started < target {
            let batch_end = (started + CONNECT_BATCH).min(target);
            for config in &configs[started..batch_end] {
                let agent = SimAgent {
                    config: config.clone(),
                    system: system.clone(),
                };
                runtime.spawn(sim::run(agent, observer.clone(), stop_rx.clone()));
            }
            started = batch_end;
            let deadline = Instant::now() + Duration::from_secs(60);
            while recorder.live.load(Ordering::Relaxed) < started {
                if Instant::now() > deadline {
                    connect_failed = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if connect_failed {
                break;
            }
        }
        let connect_s = begun.elapsed().as_secs_f64();
        if connect_failed {
            stop_reason = format!(
                "only {} of {target} sessions up after 60 s; last problem: {}",
                recorder.live.load(Ordering::Relaxed),
                recorder
                    .last_problem
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
            );
            break;
        }
        // The window: whole check intervals, after the sessions settled.
        let start = ((unix_now() + settle) / CHECK_INTERVAL as f64).ceil() as i64 * CHECK_INTERVAL;
        let end = start + window_secs;
        sleep_until_unix(start as f64);
        let errors0 = recorder.errors();
        let (cpu0, tool_cpu0, at0) = (cpu_seconds(pid), cpu_seconds(tool_pid), Instant::now());
        sleep_until_unix(end as f64);
        let (cpu1, tool_cpu1, at1) = (cpu_seconds(pid), cpu_seconds(tool_pid), Instant::now());
        let rss = rss_kib(pid);
        let expected = target * (window_secs / CHECK_INTERVAL) as usize;
        let in_window = |sample: &Sample| sample.issued >= start && sample.issued < end;
        let drain_deadline = Instant::now() + DRAIN;
        loop {
            let got = recorder
                .samples
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .filter(|sample| in_window(sample))
                .count();
            if got >= expected || Instant::now() > drain_deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let window: Vec<Sample> = {
            let mut samples = recorder
                .samples
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let window = samples.iter().copied().filter(in_window).collect();
            samples.retain(|sample| sample.issued >= end);
            window
        };
        let errors = recorder.errors() - errors0 + expected.saturating_sub(window.len()) as u64;
        let totals = sorted(window.iter().map(|sample| sample.total).collect());
        let mut by_firing: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for sample in &window {
            by_firing
                .entry(sample.issued)
                .or_default()
                .push(sample.total);
        }
        let firing_p99s: Vec<f64> = by_firing
            .into_values()
            .map(|values| percentile(&sorted(values), 0.99))
            .collect();
        let elapsed = (at1 - at0).as_secs_f64();
        let step = Step {
            agents: target,
            connect_s,
            samples: window.len(),
            expected,
            p50_s: percentile(&totals, 0.5),
            p99_s: percentile(&totals, 0.99),
            p99_firing_median_s: median(firing_p99s),
            max_s: totals.last().copied().unwrap_or(f64::NAN),
            dispatch_p99_s: percentile(
                &sorted(window.iter().map(|sample| sample.dispatch).collect()),
                0.99,
            ),
            store_p99_s: percentile(
                &sorted(window.iter().map(|sample| sample.store).collect()),
                0.99,
            ),
            backend_rss_kib: rss,
            per_session_kib: rss.saturating_sub(rss0) as f64 / target as f64,
            backend_cpu_s: cpu1 - cpu0,
            tool_cpu_s: tool_cpu1 - tool_cpu0,
            window_s: elapsed,
            errors,
            sustained: false,
        };
        // Each firing is one run of the measurement: the decision uses the median of the
        // firings' p99s; the pooled p99 is reported beside it.
        let sustained = step.errors == 0 && step.p99_firing_median_s < GOAL_P99_S;
        let step = Step { sustained, ..step };
        println!(
            "{:>6} agents: connected in {:.1} s; {} of {} events; p50 {:.0} ms, p99 {:.0} ms (median of firings {:.0} ms), max {:.0} ms; issued→request p99 {:.0} ms, sent→ack p99 {:.0} ms; backend RSS {:.1} MiB, CPU {:.2} s per 10 s ({:.0} µs per check event); load tool CPU {:.2} s per 10 s; errors {}",
            step.agents,
            step.connect_s,
            step.samples,
            step.expected,
            step.p50_s * 1000.0,
            step.p99_s * 1000.0,
            step.p99_firing_median_s * 1000.0,
            step.max_s * 1000.0,
            step.dispatch_p99_s * 1000.0,
            step.store_p99_s * 1000.0,
            step.backend_rss_kib as f64 / 1024.0,
            step.backend_cpu_s / step.window_s * 10.0,
            step.backend_cpu_s / step.expected as f64 * 1e6,
            step.tool_cpu_s / step.window_s * 10.0,
            step.errors
        );
        results.push(step);
        if !sustained {
            stop_reason = if errors > 0 {
                format!(
                    "{errors} errors at {target} agents; last problem: {}",
                    recorder
                        .last_problem
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                )
            } else {
                format!("median over firings of the p99 ≥ {GOAL_P99_S} s at {target} agents")
            };
            break;
        }
    }
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while recorder.live.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }

    // The report.
    println!();
    println!(
        "| agents | connect s | events ok/expected | p50 ms | p99 ms | p99 ms, median of firings | bare p99 ms | p99 ours/bare | backend RSS MiB | KiB/session | bare KiB/conn | RSS ours/bare | backend CPU s/10 s | errors | sustained |"
    );
    println!(
        "|-------:|----------:|-------------------:|-------:|-------:|--------------------------:|------------:|--------------:|----------------:|------------:|--------------:|--------------:|------------------:|-------:|-----------|"
    );
    for step in &results {
        let bare = baseline.get(&step.agents);
        let (bare_p99, p99_ratio, bare_rss, rss_ratio) = match bare {
            Some(bare) => (
                format!("{:.1}", bare.p99_median_s * 1000.0),
                format!("{:.1}", step.p99_firing_median_s / bare.p99_median_s),
                format!("{:.1}", bare.rss_per_conn_kib),
                format!("{:.2}", step.per_session_kib / bare.rss_per_conn_kib),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {:>6} | {:>9.1} | {:>18} | {:>6.0} | {:>6.0} | {:>25.0} | {:>11} | {:>13} | {:>15.1} | {:>11.1} | {:>13} | {:>13} | {:>17.2} | {:>6} | {:<9} |",
            step.agents,
            step.connect_s,
            format!("{}/{}", step.samples, step.expected),
            step.p50_s * 1000.0,
            step.p99_s * 1000.0,
            step.p99_firing_median_s * 1000.0,
            bare_p99,
            p99_ratio,
            step.backend_rss_kib as f64 / 1024.0,
            step.per_session_kib,
            bare_rss,
            rss_ratio,
            step.backend_cpu_s / step.window_s * 10.0,
            step.errors,
            if step.sustained { "yes" } else { "no" }
        );
    }
    println!();
    println!(
        "| agents | issued→request p99 ms | event sent→ack p99 ms | max ms | backend CPU µs/event | load tool CPU s/10 s | bare p50 ms | bare errors |"
    );
    println!(
        "|-------:|----------------------:|----------------------:|-------:|---------------------:|---------------------:|------------:|------------:|"
    );
    for step in &results {
        let bare = baseline.get(&step.agents);
        println!(
            "| {:>6} | {:>21.0} | {:>21.0} | {:>6.0} | {:>20.0} | {:>20.2} | {:>11} | {:>11} |",
            step.agents,
            step.dispatch_p99_s * 1000.0,
            step.store_p99_s * 1000.0,
            step.max_s * 1000.0,
            step.backend_cpu_s / step.expected as f64 * 1e6,
            step.tool_cpu_s / step.window_s * 10.0,
            bare.map_or("-".into(), |bare| format!("{:.1}", bare.p50_s * 1000.0)),
            bare.map_or("-".into(), |bare| bare.errors.to_string()),
        );
    }
    println!();
    println!(
        "backend idle RSS {:.1} MiB before the simulated agents; KiB/session = (RSS at the end of the window − idle RSS) / agents.",
        rss0 as f64 / 1024.0
    );
    println!(
        "CPU s/10 s: CPU time over the window per check interval (the work of one firing of every agent's check, plus keepalives); on 2 cores a burst cannot finish faster than half of the backend's and this process's share together. CPU µs/event: backend CPU over the window / check events (keepalives included in the cost)."
    );
    println!(
        "p99 is over every request issued in the window ({window_secs} s = {} firings per check); the ratio uses the median over firings of the per-firing p99 against the baseline's median over {rounds} rounds of its per-round p99; ratios > 1 mean more than the baseline.",
        window_secs / CHECK_INTERVAL
    );
    if !stop_reason.is_empty() {
        println!("ramp stopped: {stop_reason}");
    }
    let sustained = results
        .iter()
        .take_while(|step| step.sustained)
        .last()
        .map_or(0, |step| step.agents);
    println!(
        "goal {GOAL_AGENTS} agents with p99 request→event < {GOAL_P99_S} s (median over firings, no errors): largest N sustained {sustained}, {}",
        if sustained >= GOAL_AGENTS {
            "met"
        } else {
            "NOT met"
        }
    );
    let agent_mib = agent_rss as f64 / 1024.0;
    println!(
        "goal real agent idle RSS < {GOAL_AGENT_RSS_MIB} MiB: {agent_mib:.2} MiB, {}",
        if agent_mib < GOAL_AGENT_RSS_MIB {
            "met"
        } else {
            "NOT met"
        }
    );
    if let Some(step) = results.iter().rev().find(|step| step.sustained) {
        println!(
            "backend RSS per session at {} agents: {:.1} KiB (no goal set)",
            step.agents, step.per_session_kib
        );
    }
    drop(backend);
    runtime.shutdown_timeout(Duration::from_secs(5));
}
