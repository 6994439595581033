//! Event ingest over HTTPS (issue 3): events per second that the real backend stores (each one
//! committed with fsync before its 201) under 64 concurrent keep-alive HTTPS clients, against a
//! bare axum HTTPS handler that only parses the same JSON and answers 200, in the same process
//! and the same run, alternating round by round.
//!
//! Run with `cargo bench -p cairn-backend --bench ingest`.
//! `CAIRN_BENCH_ROUNDS` sets the rounds per side (default 3), `CAIRN_BENCH_SECONDS` the
//! measured seconds per round (default 10, after 2 s of warm-up), and `CAIRN_BENCH_SIDE`
//! (`ours`, `baseline` or `both`, the default) runs one side alone, for profiling.
//!
//! Both servers use the certificate and rustls configuration of one freshly initialised data
//! directory (`tls::api_server_config`) and the accept loop of `server.rs` (tokio-rustls plus
//! hyper-util's auto builder); the load generator runs in the same process on the same cores, so
//! both sides are limited by it alike and the ratio is the figure that matters.
//! Any failed request is reported, and an error rate above 0.1% fails the bench.
//! Ours's rounds also report the store's commit counters from `/metrics`, and after the rounds
//! the bench times the steps of one event, one call at a time, on a store of its own.

// A bench binary reports on stdout; that is its whole output.
#![allow(clippy::print_stdout)]

use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use cairn_api::client::{Client, Credentials};
use cairn_api::model::{Event, Namespace};
use cairn_api::{Kind, ObjectMeta, Resource, Spec};
use cairn_backend::app::DEFAULT_BODY_LIMIT;
use cairn_backend::app::{self, InitConfig, StartConfig};
use cairn_backend::datadir::DataDir;
use cairn_backend::store::resources::{self, Resources};
use cairn_backend::store::{Precondition, RedbStore, Store};
use cairn_tests::bench::{
    admin_api_key, event_bodies, load_average, post_load, LoadConfig, PostTarget, Round,
    BODIES_PER_CLIENT, CHECKS, EVENTS_PATH,
};

/// Concurrent clients, each with its own keep-alive connection.
const CLIENTS: usize = 64;
/// Rounds per side unless `CAIRN_BENCH_ROUNDS` says otherwise.
const DEFAULT_ROUNDS: usize = 3;
/// Measured seconds per round unless `CAIRN_BENCH_SECONDS` says otherwise.
const DEFAULT_SECONDS: u64 = 10;
/// Load before the measured window of every round (connections, TLS handshakes, caches).
const WARMUP: Duration = Duration::from_secs(2);
/// Errors over all requests above this fail the bench.
const MAX_ERROR_RATE: f64 = 0.001;
/// The goal for ours/baseline events per second.
const RATIO_GOAL: f64 = 0.5;
/// The goal for durable events per second on 2 cores.
const RATE_GOAL: f64 = 20_000.0;
/// The administrator `init` creates.
const ADMIN: &str = "admin";
/// Their password.
const ADMIN_PASSWORD: &str = "bench-admin-password";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Ours,
    Baseline,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Ours => "ours: cairn-backend POST events (stored, fsync)",
            Side::Baseline => "baseline: axum, parse JSON, 200",
        }
    }
}

/// The processes whose CPU time a [`Round`] holds: only this one, which runs both servers and
/// the load generator.
const PROCESS_CPU: usize = 0;

/// Everything one side did over all rounds.
#[derive(Default)]
struct Totals {
    rates: Vec<f64>,
    all: Round,
    /// The store's commits during ours's rounds (warm-up included).
    store: StoreCounters,
}

/// The store's commit counters from the backend's `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
struct StoreCounters {
    commits: u64,
    writes: u64,
    commit_seconds: f64,
}

impl StoreCounters {
    fn minus(&self, earlier: &StoreCounters) -> StoreCounters {
        StoreCounters {
            commits: self.commits - earlier.commits,
            writes: self.writes - earlier.writes,
            commit_seconds: self.commit_seconds - earlier.commit_seconds,
        }
    }

    fn add(&mut self, other: &StoreCounters) {
        self.commits += other.commits;
        self.writes += other.writes;
        self.commit_seconds += other.commit_seconds;
    }
}

/// The value of an unlabelled sample in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
}

/// The store's counters before or after one of ours's rounds; `None` for the baseline, or
/// when the backend does not report them.
async fn store_counters(client: &Client, side: Side) -> Option<StoreCounters> {
    if side != Side::Ours {
        return None;
    }
    let text = cairn_tests::metrics(client).await;
    Some(StoreCounters {
        commits: metric(&text, "cairn_store_commits_total")? as u64,
        writes: metric(&text, "cairn_store_writes_total")? as u64,
        commit_seconds: metric(&text, "cairn_store_commit_seconds_total")?,
    })
}

fn main() -> std::process::ExitCode {
    // The server runs pipe handlers contained: this binary is its own helper (see `contain`),
    // as the backend's is; without this a probe would start the bench again, and again.
    let mut args = std::env::args_os().skip(1);
    if args
        .next()
        .is_some_and(|arg| arg == cairn_backend::app::contain::EXEC_ARG)
    {
        return cairn_backend::app::contain::exec_main(args);
    }
    let rounds = env_number("CAIRN_BENCH_ROUNDS", DEFAULT_ROUNDS as u64);
    let rounds = usize::try_from(rounds).expect("CAIRN_BENCH_ROUNDS fits in usize");
    let seconds = env_number("CAIRN_BENCH_SECONDS", DEFAULT_SECONDS);
    let sides = match std::env::var("CAIRN_BENCH_SIDE").as_deref() {
        Ok("ours") => vec![Side::Ours],
        Ok("baseline") => vec![Side::Baseline],
        Ok("both") | Err(_) => vec![Side::Ours, Side::Baseline],
        Ok(other) => panic!("CAIRN_BENCH_SIDE must be ours, baseline or both, not {other:?}"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    runtime.block_on(run(rounds, Duration::from_secs(seconds), &sides));
    std::process::ExitCode::SUCCESS
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(value) if value > 0 => value,
            _ => panic!("{name} must be a positive integer, not {text:?}"),
        },
        Err(_) => default,
    }
}

async fn run(rounds: usize, duration: Duration, sides: &[Side]) {
    let dir = tempfile::Builder::new()
        .prefix("cairn-ingest-bench-")
        .tempdir()
        .expect("create a temp dir for the data directory");
    let data_dir = dir.path().join("data");
    app::init(&InitConfig {
        data_dir: data_dir.clone(),
        cluster_name: "bench".to_owned(),
        hostnames: Vec::new(),
        admin_username: ADMIN.to_owned(),
        admin_password: ADMIN_PASSWORD.to_owned(),
        jwt_key_files: None,
        store: cairn_backend::datadir::StoreSettings::Embedded,
    })
    .await
    .expect("initialise the data directory");
    let ca = std::fs::read_to_string(data_dir.join("tls/ca.pem")).expect("read the cluster CA");

    let (stop_ours, stopped_ours) = oneshot::channel::<()>();
    let running = app::start(
        &StartConfig {
            assets: app::AssetsSettings::default(),
            data_dir: data_dir.clone(),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            agent_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            agent_advertise_urls: Vec::new(),
            metrics_listen: None,
            api_limits: cairn_backend::listen::ConnectionLimits::API,
            agent_limits: cairn_backend::listen::ConnectionLimits::AGENT,
            body_limit: DEFAULT_BODY_LIMIT,
            pipeline: cairn_backend::app::PipelineConfig::default(),
            secrets: cairn_backend::app::SecretsConfig::default(),
            store: cairn_backend::datadir::StoreSettings::Embedded,
            store_connect_timeout: Duration::ZERO,
            store_cache_bytes: cairn_backend::store::DEFAULT_CACHE_BYTES,
            // The bench defines no handlers.
            handlers: cairn_backend::app::contain::ContainConfig::default(),
            ui_session_ttl: cairn_backend::app::DEFAULT_UI_SESSION_TTL,
        },
        async move {
            let _ = stopped_ours.await;
        },
    )
    .await
    .expect("start the backend");
    let ours_url = format!("https://127.0.0.1:{}", running.api_addr.port());
    let key = api_key(&ours_url, &ca).await;
    // `/metrics` on the API needs a credential.
    let metrics_client =
        Client::new(&ours_url, &ca, Credentials::ApiKey(key.clone())).expect("client for /metrics");

    let (stop_baseline, stopped_baseline) = oneshot::channel::<()>();
    let (baseline_addr, baseline_task) = start_baseline(&data_dir, async move {
        let _ = stopped_baseline.await;
    })
    .await;

    let tls = client_tls(&ca);
    let ours = PostTarget {
        url: format!("{ours_url}{EVENTS_PATH}"),
        authorization: format!("Key {key}"),
        success: StatusCode::CREATED,
        tls: tls.clone(),
    };
    let baseline = PostTarget {
        url: format!("https://127.0.0.1:{}{EVENTS_PATH}", baseline_addr.port()),
        authorization: format!("Key {key}"),
        success: StatusCode::OK,
        tls,
    };
    let bodies = Arc::new(bodies());
    let body_bytes: usize = bodies.iter().flatten().map(Bytes::len).sum();

    println!("Event ingest over HTTPS (issue 3)");
    println!(
        "load: {CLIENTS} clients, one keep-alive HTTP/1.1 TLS connection each, {CHECKS} checks per client, statuses 0/1/2, {:.0} bytes per event on average",
        body_bytes as f64 / (CLIENTS * BODIES_PER_CLIENT) as f64
    );
    println!(
        "rounds: {rounds} per side, alternating, each {} s measured after {} s warm-up; medians below",
        duration.as_secs(),
        WARMUP.as_secs()
    );
    println!("data dir: {}", data_dir.display());
    println!("load average before: {}", load_average());
    println!();

    let mut ours_totals = Totals::default();
    let mut baseline_totals = Totals::default();
    for round in 0..rounds {
        // Swap which side goes first, so neither always runs on a warmer machine.
        let order: Vec<Side> = if round % 2 == 0 {
            sides.to_vec()
        } else {
            sides.iter().rev().copied().collect()
        };
        for side in order {
            let (target, totals) = match side {
                Side::Ours => (&ours, &mut ours_totals),
                Side::Baseline => (&baseline, &mut baseline_totals),
            };
            let before = store_counters(&metrics_client, side).await;
            let started = Instant::now();
            let result = load(target, &bodies, duration).await;
            let elapsed = started.elapsed();
            let after = store_counters(&metrics_client, side).await;
            let rate = result.ok as f64 / duration.as_secs_f64();
            println!(
                "round {}: {:<48} {:>9.0} events/s  ({} ok, {} errors in the window; {} errors in the round)",
                round + 1,
                side.label(),
                rate,
                result.ok,
                result.errors,
                result.errors_all
            );
            if let (Some(before), Some(after)) = (before, after) {
                let delta = after.minus(&before);
                println!(
                    "         store: {} writes in {} commits ({:.1} per commit), mean commit {:.2} ms, committing {:.0}% of the round",
                    delta.writes,
                    delta.commits,
                    delta.writes as f64 / delta.commits.max(1) as f64,
                    delta.commit_seconds * 1e3 / delta.commits.max(1) as f64,
                    delta.commit_seconds * 100.0 / elapsed.as_secs_f64()
                );
                totals.store.add(&delta);
            }
            totals.rates.push(rate);
            totals.all.merge(result);
        }
    }
    println!();

    // Every 201 was a stored event: the backend's own counter must agree.
    let ingested = if sides.contains(&Side::Ours) {
        let metrics = cairn_tests::metrics(&metrics_client).await;
        let ingested = metric(&metrics, "cairn_events_ingested_total")
            .expect("cairn_events_ingested_total in /metrics");
        Some(ingested as u64)
    } else {
        None
    };

    report(sides, &ours_totals, &baseline_totals, ingested, duration);

    stop_ours.send(()).ok();
    stop_baseline.send(()).ok();
    running.wait().await;
    if let Err(err) = baseline_task.await {
        panic!("the baseline server task failed: {err}");
    }
    println!("load average after: {}", load_average());
    println!();
    if sides.contains(&Side::Ours) {
        phases(dir.path(), &bodies).await;
    }

    let mut failed = Vec::new();
    for (side, totals) in [
        (Side::Ours, &ours_totals),
        (Side::Baseline, &baseline_totals),
    ] {
        let all = totals.all.ok_all + totals.all.errors_all;
        if all > 0 && totals.all.errors_all as f64 / all as f64 > MAX_ERROR_RATE {
            failed.push(format!(
                "{}: {} of {all} requests failed, over the {:.1}% limit",
                side.label(),
                totals.all.errors_all,
                MAX_ERROR_RATE * 100.0
            ));
        }
    }
    if let Some(ingested) = ingested {
        let acknowledged = ours_totals.all.ok_all;
        if ingested < acknowledged || (ours_totals.all.errors_all == 0 && ingested != acknowledged)
        {
            failed.push(format!(
                "the backend counted {ingested} stored events but clients got {acknowledged} acknowledgements"
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "ingest bench failed:\n{}",
        failed.join("\n")
    );
}

/// Logs in as the admin and creates an API key for them (the key is the last segment of the
/// `Location` header).
async fn api_key(url: &str, ca: &str) -> String {
    let anonymous = Client::new(url, ca, Credentials::None).expect("API client");
    let tokens = anonymous
        .login(ADMIN, ADMIN_PASSWORD)
        .await
        .expect("admin login");
    let admin = anonymous.with_credentials(Credentials::Bearer(tokens.access_token));
    admin_api_key(&admin).await
}

/// The client TLS configuration: the cluster CA as the only root, ring provider, HTTP/1.1.
fn client_tls(ca: &str) -> rustls::ClientConfig {
    let config =
        cairn_backend::datadir::tls::client_config_trusting(ca).expect("a client TLS config");
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// For each client, the bodies it cycles through ([`event_bodies`]).
fn bodies() -> Vec<Vec<Bytes>> {
    event_bodies(CLIENTS)
        .into_iter()
        .map(|mine| mine.into_iter().map(Bytes::from).collect())
        .collect()
}

/// Runs the 64 clients against one target for warm-up plus `duration`, watching this
/// process's CPU time.
async fn load(target: &PostTarget, bodies: &Arc<Vec<Vec<Bytes>>>, duration: Duration) -> Round {
    let load = LoadConfig {
        concurrency: CLIENTS,
        warmup: WARMUP,
        duration,
    };
    post_load(load, vec![vec![std::process::id()]], target, bodies).await
}

/// Serves the baseline: one POST route on the events path that parses the body as JSON and
/// answers 200, over the data directory's API certificate and rustls configuration.
async fn start_baseline(
    data_dir: &Path,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let tls = cairn_backend::datadir::tls::api_server_config(&DataDir::new(data_dir))
        .expect("the API's TLS config for the baseline");
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind the baseline listener");
    let addr = listener.local_addr().expect("the baseline's address");
    let app = Router::new().route(
        "/api/core/v2/namespaces/{namespace}/events",
        post(baseline_events),
    );
    let task = tokio::spawn(serve(listener, TlsAcceptor::from(tls), app, shutdown));
    (addr, task)
}

async fn baseline_events(body: Bytes) -> StatusCode {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(value) => {
            black_box(value);
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

/// The accept loop of `server.rs`: TLS handshake per connection, then hyper-util's auto builder
/// with graceful shutdown.
async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (socket, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(socket).await else {
                return;
            };
            let builder = ConnectionBuilder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let _ = watcher.watch(connection.into_owned()).await;
        });
    }
    let _ = tokio::time::timeout(app::SHUTDOWN_GRACE, graceful.shutdown()).await;
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The `q` quantile of latencies (microseconds), in milliseconds.
fn quantile_ms(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted[index]) / 1000.0
}

fn report(
    sides: &[Side],
    ours: &Totals,
    baseline: &Totals,
    ingested: Option<u64>,
    measured: Duration,
) {
    let ours_rate = median(&ours.rates);
    let baseline_rate = median(&baseline.rates);
    let both = sides.len() == 2;
    println!(
        "| {:<48} | {:>15} | {:>7} | {:>7} | {:>9} | {:>6} | {:>12} | {:>10} | {:>13} |",
        "measurement",
        "median events/s",
        "p50 ms",
        "p99 ms",
        "ok",
        "errors",
        "CPU µs/event",
        "CPUs busy",
        "ours/baseline"
    );
    println!(
        "|{:-<50}|{:->17}|{:->9}|{:->9}|{:->11}|{:->8}|{:->14}|{:->12}|{:->15}|",
        "", ":", ":", ":", ":", ":", ":", ":", ":"
    );
    for side in sides {
        let (totals, rate) = match side {
            Side::Ours => (ours, ours_rate),
            Side::Baseline => (baseline, baseline_rate),
        };
        let mut latencies = totals.all.latencies.clone();
        latencies.sort_unstable();
        let ratio = if *side == Side::Ours && both {
            format!("{:.2}", ours_rate / baseline_rate)
        } else {
            String::new()
        };
        let windows = measured.as_secs_f64() * totals.rates.len() as f64;
        println!(
            "| {:<48} | {:>15.0} | {:>7.2} | {:>7.2} | {:>9} | {:>6} | {:>12.0} | {:>10.2} | {:>13} |",
            side.label(),
            rate,
            quantile_ms(&latencies, 0.50),
            quantile_ms(&latencies, 0.99),
            totals.all.ok,
            totals.all.errors,
            totals.all.cpu_seconds(PROCESS_CPU) * 1e6 / totals.all.ok.max(1) as f64,
            totals.all.cpu_seconds(PROCESS_CPU) / windows,
            ratio
        );
    }
    println!();
    println!("p50 and p99 are over every measured request of all rounds; ok and errors are the measured windows summed.");
    println!("CPU is the whole process's (both servers and the load generator) in the measured windows, from /proc/self/stat.");
    for side in sides {
        let totals = match side {
            Side::Ours => ours,
            Side::Baseline => baseline,
        };
        if totals.all.errors_all > 0 {
            println!(
                "{}: {} failed requests (warm-up included), first ones:",
                side.label(),
                totals.all.errors_all
            );
            for message in &totals.all.messages {
                println!("  {message}");
            }
        }
    }
    if let Some(ingested) = ingested {
        println!(
            "backend counter cairn_events_ingested_total = {ingested}; clients got {} acknowledgements (warm-up included)",
            ours.all.ok_all
        );
    }
    let store = ours.store;
    if store.commits > 0 {
        println!(
            "store, all of ours's rounds: {} writes in {} commits, {:.1} writes per commit, mean commit (with fsync) {:.2} ms",
            store.writes,
            store.commits,
            store.writes as f64 / store.commits as f64,
            store.commit_seconds * 1e3 / store.commits as f64
        );
    }
    let met = |yes: bool| if yes { "met" } else { "NOT met" };
    if both {
        let ratio = ours_rate / baseline_rate;
        println!(
            "goal ours/baseline >= {RATIO_GOAL}: {:.2}, {}",
            ratio,
            met(ratio >= RATIO_GOAL)
        );
    }
    if sides.contains(&Side::Ours) {
        println!(
            "goal >= {RATE_GOAL:.0} durable events/s: {:.0}, {}",
            ours_rate,
            met(ours_rate >= RATE_GOAL)
        );
    }
}

/// Calls a step `$n` times and gives its mean time per call in microseconds.
macro_rules! timed {
    ($n:expr, $step:expr) => {{
        let started = Instant::now();
        for _ in 0..$n {
            black_box($step);
        }
        started.elapsed().as_secs_f64() * 1e6 / $n as f64
    }};
}

/// Iterations of each CPU step in [`phases`].
const PHASE_ITERATIONS: u32 = 2_000;
/// Iterations of the lone store write in [`phases`] (each waits for an fsync).
const PHASE_WRITES: u32 = 200;
/// Results of one check posted before timing, so the stored event has a full history.
const PHASE_HISTORY: usize = 30;

/// Times, one call at a time on an idle machine, the steps that `events_put` takes for one
/// event, through the library's public functions on a store of its own, with the stored event
/// carrying a full history as in the load test.
async fn phases(dir: &Path, bodies: &[Vec<Bytes>]) {
    let store: Arc<dyn Store> = Arc::new(
        RedbStore::open(dir.join("phases.redb")).expect("open a store for the phase timings"),
    );
    let resources = Resources::new(Arc::clone(&store));
    let namespace = Resource::new(
        ObjectMeta::named("", "default"),
        Spec::Namespace(Namespace {
            name: "default".to_owned(),
        }),
    );
    resources
        .put(&namespace, Precondition::Absent)
        .await
        .expect("store the namespace");
    // Client 0's results for check-000 (every 100th body), statuses 0, 1, 2 in turn.
    let results: Vec<&Bytes> = bodies[0].iter().step_by(CHECKS).collect();
    let now = 1_700_000_000;
    let mut previous: Option<Event> = None;
    for n in 0..PHASE_HISTORY {
        let event = incoming(results[n % results.len()]);
        let event =
            cairn_backend::events::rules::process_event(previous.as_ref(), event, now + n as i64)
                .expect("a valid event");
        resources
            .put(&stored_event(&event), Precondition::None)
            .await
            .expect("store an event");
        previous = Some(event);
    }
    let previous = previous.expect("events were posted");
    let mut entity = previous.entity.clone().expect("the event has an entity");
    let entity_meta = entity.metadata.take().unwrap_or_default();
    resources
        .put(
            &Resource::new(entity_meta, Spec::Entity(entity)),
            Precondition::Absent,
        )
        .await
        .expect("store the entity");

    let body = results[0];
    let event_key = Resources::key(Kind::Event, "default", "bench-00/check-000");
    let entry = store
        .get(&event_key)
        .await
        .expect("read the stored event")
        .expect("the stored event exists");
    let value = serde_json::from_slice::<serde_json::Value>(body).expect("a JSON body");
    let stored = stored_event(&previous);

    let mut rows: Vec<(&str, f64)> = Vec::new();
    rows.push((
        "parse the body into serde_json::Value",
        timed!(
            PHASE_ITERATIONS,
            serde_json::from_slice::<serde_json::Value>(body).expect("a JSON body")
        ),
    ));
    rows.push((
        "Resource::from_wire (Value into Event)",
        timed!(
            PHASE_ITERATIONS,
            Resource::from_wire(Kind::Event, value.clone()).expect("an event")
        ),
    ));
    let mut get_rows = Vec::new();
    for (what, kind, namespace, name) in [
        (
            "Resources::get namespace (store get + decode)",
            Kind::Namespace,
            "",
            "default",
        ),
        (
            "Resources::get previous event (store get + decode)",
            Kind::Event,
            "default",
            "bench-00/check-000",
        ),
        (
            "Resources::get entity (store get + decode)",
            Kind::Entity,
            "default",
            "bench-00",
        ),
    ] {
        let mut micros = 0.0;
        for _ in 0..2 {
            let started = Instant::now();
            for _ in 0..PHASE_ITERATIONS {
                let found = resources
                    .get(kind, namespace, name)
                    .await
                    .expect("a readable resource");
                assert!(found.is_some(), "{what}: the resource should exist");
                black_box(found);
            }
            // The second pass counts: the first warms the blocking pool and the page cache.
            micros = started.elapsed().as_secs_f64() * 1e6 / f64::from(PHASE_ITERATIONS);
        }
        get_rows.push((what, micros));
    }
    rows.extend(get_rows);
    let mut raw_get = 0.0;
    for _ in 0..2 {
        let started = Instant::now();
        for _ in 0..PHASE_ITERATIONS {
            black_box(store.get(&event_key).await.expect("a readable entry"));
        }
        raw_get = started.elapsed().as_secs_f64() * 1e6 / f64::from(PHASE_ITERATIONS);
    }
    rows.push((
        "  of the event's: store.get alone (spawn_blocking, redb)",
        raw_get,
    ));
    rows.push((
        "  of the event's: resources::decode alone",
        timed!(
            PHASE_ITERATIONS,
            resources::decode(&entry).expect("a decodable entry")
        ),
    ));
    rows.push((
        "events::process_event",
        timed!(
            PHASE_ITERATIONS,
            cairn_backend::events::rules::process_event(Some(&previous), incoming(body), now)
                .expect("a valid event")
        ),
    ));
    // `incoming` is part of the step above; take its cost back out.
    let incoming_micros = timed!(PHASE_ITERATIONS, incoming(body));
    if let Some(row) = rows.last_mut() {
        row.1 = (row.1 - incoming_micros).max(0.0);
    }
    rows.push((
        "encode the event (to_document + to_vec)",
        timed!(
            PHASE_ITERATIONS,
            serde_json::to_vec(&stored.to_document()).expect("a JSON document")
        ),
    ));
    let started = Instant::now();
    for _ in 0..PHASE_WRITES {
        resources
            .put(&stored, Precondition::None)
            .await
            .expect("store the event");
    }
    let write_micros = started.elapsed().as_secs_f64() * 1e6 / f64::from(PHASE_WRITES);

    // For comparison, the same point read done inline, without the blocking pool: the store is
    // closed first so that redb can open its file here.
    drop(resources);
    drop(store);
    let inline = inline_read_micros(&dir.join("phases.redb"), &event_key);
    let row = "  of the event's: the same redb read inline";
    match inline {
        Ok(micros) => {
            let after = rows
                .iter()
                .position(|(what, _)| what.contains("store.get alone"))
                .map_or(rows.len(), |index| index + 1);
            rows.insert(after, (row, micros));
        }
        Err(err) => println!("(the inline redb read could not be timed: {err})"),
    }

    println!(
        "Steps of one event, one call at a time ({PHASE_ITERATIONS} calls each, mean; stored event {} bytes with {} history entries):",
        entry.value.len(),
        previous.check.as_ref().map_or(0, |check| check.history.len())
    );
    println!();
    println!("| {:<56} | {:>10} |", "step", "µs/call");
    println!("|{:-<58}|{:->12}|", "", ":");
    let mut sum = 0.0;
    for (what, micros) in &rows {
        if !what.starts_with("  ") {
            sum += micros;
        }
        println!("| {what:<56} | {micros:>10.1} |");
    }
    println!(
        "| {:<56} | {:>10.1} |",
        "sum of the steps above (without the write)", sum
    );
    println!(
        "| {:<56} | {:>10.1} |",
        "Resources::put event alone (a batch of one, fsync)", write_micros
    );
    println!();
}

/// Times a point read straight on the store file with redb (read transaction, table, get), as
/// `RedbStore::get` does inside `spawn_blocking`; relies on the store's `kv` table layout.
fn inline_read_micros(path: &Path, key: &str) -> Result<f64, String> {
    const KV: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("kv");
    let text = |err: &dyn std::fmt::Display| err.to_string();
    let database = redb::Database::open(path).map_err(|err| text(&err))?;
    let read = || -> Result<usize, String> {
        let transaction = database.begin_read().map_err(|err| text(&err))?;
        let table = transaction.open_table(KV).map_err(|err| text(&err))?;
        let value = table.get(key).map_err(|err| text(&err))?;
        Ok(value.map_or(0, |value| value.value().len()))
    };
    assert!(read()? > 0, "the stored event should be in the kv table");
    let started = Instant::now();
    for _ in 0..PHASE_ITERATIONS {
        black_box(read()?);
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / f64::from(PHASE_ITERATIONS))
}

/// An event body as `events_put` decodes it.
fn incoming(body: &Bytes) -> Event {
    let value = serde_json::from_slice::<serde_json::Value>(body).expect("a JSON body");
    let resource = Resource::from_wire(Kind::Event, value).expect("an event");
    let Spec::Event(event) = resource.spec else {
        panic!("an event body decoded as another kind");
    };
    let mut event = *event;
    for meta in [
        event
            .entity
            .as_mut()
            .and_then(|entity| entity.metadata.as_mut()),
        event
            .check
            .as_mut()
            .and_then(|check| check.metadata.as_mut()),
    ]
    .into_iter()
    .flatten()
    {
        meta.namespace = "default".to_owned();
        meta.created_by = ADMIN.to_owned();
    }
    event
}

/// The resource `events_put` stores for an event.
fn stored_event(event: &Event) -> Resource {
    let entity = event
        .entity
        .as_ref()
        .and_then(|entity| entity.metadata.as_ref())
        .map_or("", |meta| meta.name.as_str());
    let check = event
        .check
        .as_ref()
        .and_then(|check| check.metadata.as_ref())
        .map_or("metrics", |meta| meta.name.as_str());
    Resource::new(
        ObjectMeta::named("default", &format!("{entity}/{check}")),
        Spec::Event(Box::new(event.clone())),
    )
}
