//! Soak benchmark (issue 14): ten minutes of mixed, partly hostile load on one release
//! `cairn-backend` (embedded store), sampling its memory, open files and `/health` latency
//! every 10 s.
//!
//! The load, all at once and until the end:
//! - **Events**: `CAIRN_SOAK_EVENT_CLIENTS` (default 8) clients, each owning one proxy entity
//!   with 50 checks, `PUT` events at `CAIRN_SOAK_EVENTS_PER_SECOND` (default 400) in all; each
//!   event names the handler `sink` (a pipe handler, `cat > /dev/null`, behind the built-in
//!   `is_incident` filter). Five checks of the fifty flip between critical and OK on every
//!   event, the rest stay OK, so about one event in ten starts a contained handler process.
//!   Each event's output carries its sequence number; the last acknowledged (2xx) one of every
//!   entity and check is remembered.
//! - **API reads**: 2 clients listing the events and the checks of `default`, 10 times a second
//!   each.
//! - **Wrong passwords**: 4 clients logging in as `admin` with a wrong password, back to back
//!   (the login throttle makes them wait).
//! - **Idle connections**: 200 TCP connections that never start TLS, opened again whenever the
//!   backend closes them (after its 10 s handshake timeout).
//! - **Slow connections**: 20 TLS connections sending a request's headers one line per second,
//!   never finishing, opened again whenever the backend closes them (10 s header timeout).
//!
//! Every 10 s: the backend's RSS (`VmRSS`), its open file descriptors (`/proc/PID/fd`), and
//! the p99 and max of `GET /health` timed every 50 ms on a keep-alive connection of its own
//! over that window. Before the load starts, 10 s of the same `/health` probe on the idle
//! backend is the baseline the loaded p99 is read against (same run, same machine).
//!
//! At the end the load stops and every entity and check is read back: its stored event must
//! carry the last acknowledged sequence number (a lost acknowledged event fails the run).
//!
//! Goals: RSS after the warm-up (the first 60 s) grows by at most 10%, `/health` p99 stays
//! under 50 ms in every window, no acknowledged event is lost.
//!
//! Run with `cargo bench -p cairn-tests --bench soak`. Knobs: `CAIRN_SOAK_SECONDS` (default
//! 600), `CAIRN_SOAK_EVENTS_PER_SECOND`, `CAIRN_SOAK_EVENT_CLIENTS`, and `CAIRN_SOAK_LOADS`
//! (default `events,handler,reads,logins,idle,slow`: leave one out to see what it costs;
//! without `handler` the events name no handler), `CAIRN_SOAK_BACKEND_ARGS` (more arguments
//! of `cairn-backend start`, split at spaces).

#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::client::{Client, Credentials};
use cairn_tests::bench::{admin_api_key, env_number, load_average, percentile, rss_kib, sorted};
use cairn_tests::Backend;
use reqwest::Method;
use serde_json::json;
use tokio::io::AsyncWriteExt;

const CHECKS_PER_ENTITY: usize = 50;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const WARMUP: Duration = Duration::from_secs(60);
const HEALTH_EVERY: Duration = Duration::from_millis(50);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
const IDLE_CONNECTIONS: usize = 200;
const SLOW_CONNECTIONS: usize = 20;
const WRONG_PASSWORD_CLIENTS: usize = 4;
const READ_CLIENTS: usize = 2;

/// Counters the load tasks keep.
#[derive(Default)]
struct Counts {
    events_acked: AtomicU64,
    events_failed: AtomicU64,
    reads: AtomicU64,
    logins_refused: AtomicU64,
    idle_reopened: AtomicU64,
    slow_reopened: AtomicU64,
}

/// One 10 s sample.
struct Sample {
    at: Duration,
    rss_mib: f64,
    fds: usize,
    health_p99_ms: f64,
    health_max_ms: f64,
    health_failures: usize,
    events: u64,
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Times `GET /health` every 50 ms until `stop`; returns (latencies in ms, failures).
async fn probe_health(client: &Client, stop: Instant) -> (Vec<f64>, usize) {
    let mut latencies = Vec::new();
    let mut failures = 0;
    let mut ticks = tokio::time::interval(HEALTH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < stop {
        ticks.tick().await;
        let started = Instant::now();
        let answered =
            tokio::time::timeout(HEALTH_TIMEOUT, client.send(Method::GET, "/health", None)).await;
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        match answered {
            Ok(Ok(response)) if response.status().is_success() => latencies.push(elapsed),
            _ => {
                failures += 1;
                latencies.push(elapsed);
            }
        }
    }
    (latencies, failures)
}

async fn send_events(
    client: Client,
    entity: String,
    handler: &'static str,
    every: Duration,
    running: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> HashMap<String, u64> {
    let mut acked = HashMap::new();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    while running.load(Ordering::Relaxed) {
        ticks.tick().await;
        seq += 1;
        let check = format!("soak-{}", seq % CHECKS_PER_ENTITY as u64);
        let event = json!({
            "entity": {"entity_class": "proxy", "metadata": {"name": entity}},
            "check": {
                "metadata": {"name": check},
                // Mostly OK, as a fleet is: a tenth of the checks flip between critical and
                // OK on every event, so about a tenth of the events are incidents or
                // resolutions that the handler's `is_incident` filter passes.
                "status": if seq % 20 == 0 { 2 } else { 0 },
                "interval": 60,
                "handlers": if handler.is_empty() { vec![] } else { vec![handler] },
                "output": format!("seq {seq}"),
            },
        });
        let path = format!("/api/core/v2/namespaces/default/events/{entity}/{check}");
        match client.send(Method::PUT, &path, Some(&event)).await {
            Ok(response) if response.status().is_success() => {
                acked.insert(check, seq);
                counts.events_acked.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                counts.events_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    acked
}

async fn read_api(client: Client, running: Arc<AtomicBool>, counts: Arc<Counts>) {
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    let mut idx = 0_u64;
    while running.load(Ordering::Relaxed) {
        ticks.tick().await;
        idx += 1;
        let path = if idx % 2 == 0 {
            "/api/core/v2/namespaces/default/events?limit=100"
        } else {
            "/api/core/v2/namespaces/default/checks"
        };
        if let Ok(response) = client.send(Method::GET, path, None).await {
            if response.status().is_success() && response.bytes().await.is_ok() {
                counts.reads.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn wrong_passwords(client: Client, running: Arc<AtomicBool>, counts: Arc<Counts>) {
    while running.load(Ordering::Relaxed) {
        if client.login("admin", "not the password").await.is_err() {
            counts.logins_refused.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Holds one TCP connection that never speaks; opens another when the backend closes it.
async fn idle_connection(addr: String, running: Arc<AtomicBool>, counts: Arc<Counts>) {
    use tokio::io::AsyncReadExt;
    while running.load(Ordering::Relaxed) {
        let Ok(mut socket) = tokio::net::TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut buf = [0u8; 16];
        let _ = tokio::time::timeout(Duration::from_secs(30), socket.read(&mut buf)).await;
        counts.idle_reopened.fetch_add(1, Ordering::Relaxed);
    }
}

/// Drips a request's headers one line per second until the backend closes the connection.
async fn slow_connection(
    addr: String,
    tls: Arc<rustls::ClientConfig>,
    running: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    let connector = tokio_rustls::TlsConnector::from(tls);
    while running.load(Ordering::Relaxed) {
        let Ok(socket) = tokio::net::TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a server name");
        let Ok(mut stream) = connector.connect(name, socket).await else {
            continue;
        };
        if stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .is_ok()
        {
            for idx in 0..60 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let line = format!("X-Drip-{idx}: a\r\n");
                if !running.load(Ordering::Relaxed)
                    || stream.write_all(line.as_bytes()).await.is_err()
                {
                    break;
                }
            }
        }
        counts.slow_reopened.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::main]
async fn main() {
    let seconds: u64 = env_number("CAIRN_SOAK_SECONDS", 600);
    let rate: u64 = env_number("CAIRN_SOAK_EVENTS_PER_SECOND", 400);
    let event_clients: u64 = env_number("CAIRN_SOAK_EVENT_CLIENTS", 8);
    let duration = Duration::from_secs(seconds);
    let loads = std::env::var("CAIRN_SOAK_LOADS")
        .unwrap_or_else(|_| "events,handler,reads,logins,idle,slow".to_owned());
    let load = |name: &str| loads.split(',').any(|one| one.trim() == name);
    let handler_name = if load("handler") { "sink" } else { "" };

    let backend_args: Vec<String> = std::env::var("CAIRN_SOAK_BACKEND_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let backend = Backend::start_with(cairn_tests::BackendOptions::default().args(backend_args));
    let pid = backend.pid();
    let admin = backend.admin().await;
    let key = admin_api_key(&admin).await;
    let client = backend.client(Credentials::ApiKey(key));
    let handler = json!({
        "metadata": {"name": "sink", "namespace": "default"},
        "type": "pipe",
        "command": "cat > /dev/null",
        "filters": ["is_incident"],
        "timeout": 10,
    });
    let answer = client
        .send(
            Method::PUT,
            "/api/core/v2/namespaces/default/handlers/sink",
            Some(&handler),
        )
        .await
        .expect("create the handler");
    assert!(
        answer.status().is_success(),
        "create the handler: {answer:?}"
    );

    // Baseline: /health on the idle backend.
    let health_client = backend.client(Credentials::None);
    let (idle, _) = probe_health(&health_client, Instant::now() + SAMPLE_EVERY).await;
    let idle = sorted(idle);
    let idle_p99 = percentile(&idle, 0.99);
    println!(
        "soak: {seconds} s, loads {loads}: {rate} events/s from {event_clients} clients, \
         {READ_CLIENTS} readers, {WRONG_PASSWORD_CLIENTS} wrong-password clients, \
         {IDLE_CONNECTIONS} idle and {SLOW_CONNECTIONS} slow connections; load before: {}",
        load_average()
    );
    println!(
        "baseline (idle backend, 10 s): /health p50 {:.2} ms, p99 {idle_p99:.2} ms, RSS {:.1} MiB, {} fds",
        percentile(&idle, 0.5),
        rss_kib(pid) as f64 / 1024.0,
        open_fds(pid)
    );

    let running = Arc::new(AtomicBool::new(true));
    let counts = Arc::new(Counts::default());
    let every = Duration::from_secs_f64(event_clients as f64 / rate.max(1) as f64);
    let senders: Vec<_> = (0..if load("events") { event_clients } else { 0 })
        .map(|idx| {
            tokio::spawn(send_events(
                client.clone(),
                format!("soak-entity-{idx}"),
                handler_name,
                every,
                Arc::clone(&running),
                Arc::clone(&counts),
            ))
        })
        .collect();
    let mut others = Vec::new();
    for _ in 0..if load("reads") { READ_CLIENTS } else { 0 } {
        others.push(tokio::spawn(read_api(
            client.clone(),
            Arc::clone(&running),
            Arc::clone(&counts),
        )));
    }
    for _ in 0..if load("logins") {
        WRONG_PASSWORD_CLIENTS
    } else {
        0
    } {
        others.push(tokio::spawn(wrong_passwords(
            backend.client(Credentials::None),
            Arc::clone(&running),
            Arc::clone(&counts),
        )));
    }
    for _ in 0..if load("idle") { IDLE_CONNECTIONS } else { 0 } {
        others.push(tokio::spawn(idle_connection(
            backend.addr().to_owned(),
            Arc::clone(&running),
            Arc::clone(&counts),
        )));
    }
    let tls =
        Arc::new(cairn_api::client::tls_config_trusting(&backend.ca()).expect("a TLS config"));
    for _ in 0..if load("slow") { SLOW_CONNECTIONS } else { 0 } {
        others.push(tokio::spawn(slow_connection(
            backend.addr().to_owned(),
            Arc::clone(&tls),
            Arc::clone(&running),
            Arc::clone(&counts),
        )));
    }

    let started = Instant::now();
    let mut samples = Vec::new();
    println!(
        "{:>6} {:>9} {:>5} {:>10} {:>10} {:>6} {:>9}",
        "t (s)", "RSS MiB", "fds", "p99 ms", "max ms", "fails", "events"
    );
    while started.elapsed() < duration {
        let window_end = Instant::now() + SAMPLE_EVERY;
        let (latencies, failures) = probe_health(&health_client, window_end).await;
        let latencies = sorted(latencies);
        let sample = Sample {
            at: started.elapsed(),
            rss_mib: rss_kib(pid) as f64 / 1024.0,
            fds: open_fds(pid),
            health_p99_ms: percentile(&latencies, 0.99),
            health_max_ms: latencies.last().copied().unwrap_or(f64::NAN),
            health_failures: failures,
            events: counts.events_acked.load(Ordering::Relaxed),
        };
        println!(
            "{:>6.0} {:>9.1} {:>5} {:>10.2} {:>10.2} {:>6} {:>9}",
            sample.at.as_secs_f64(),
            sample.rss_mib,
            sample.fds,
            sample.health_p99_ms,
            sample.health_max_ms,
            sample.health_failures,
            sample.events
        );
        samples.push(sample);
    }

    running.store(false, Ordering::Relaxed);
    let mut acked: Vec<(String, HashMap<String, u64>)> = Vec::new();
    for (idx, sender) in senders.into_iter().enumerate() {
        acked.push((
            format!("soak-entity-{idx}"),
            sender.await.expect("an event sender"),
        ));
    }
    for task in others {
        task.abort();
    }
    // Every acknowledged event is stored: the latest of each check is the last acknowledged.
    let mut lost = 0_usize;
    let mut checked = 0_usize;
    for (entity, checks) in &acked {
        for (check, seq) in checks {
            let path = format!("/api/core/v2/namespaces/default/events/{entity}/{check}");
            let stored = client.get_json(&path).await;
            let output = stored
                .as_ref()
                .ok()
                .and_then(|event| event.pointer("/check/output"))
                .and_then(|output| output.as_str())
                .map(str::to_owned);
            checked += 1;
            if output.as_deref() != Some(format!("seq {seq}").as_str()) {
                lost += 1;
                println!("lost: {entity}/{check} acknowledged seq {seq}, stored {output:?}");
            }
        }
    }

    let after_warmup: Vec<&Sample> = samples.iter().filter(|s| s.at >= WARMUP).collect();
    let warm_rss = after_warmup.first().map_or(f64::NAN, |s| s.rss_mib);
    let last_rss = samples.last().map_or(f64::NAN, |s| s.rss_mib);
    let max_rss = after_warmup
        .iter()
        .map(|s| s.rss_mib)
        .fold(f64::NAN, f64::max);
    let worst_p99 = samples
        .iter()
        .map(|s| s.health_p99_ms)
        .fold(f64::NAN, f64::max);
    let median_p99 = cairn_tests::bench::median(samples.iter().map(|s| s.health_p99_ms).collect());
    let max_fds = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let health_failures: usize = samples.iter().map(|s| s.health_failures).sum();
    let elapsed = started.elapsed().as_secs_f64();
    println!();
    println!(
        "events acknowledged {} ({:.0}/s), failed {}; reads {}; wrong-password logins refused {}; \
         idle connections closed and reopened {}; slow connections closed and reopened {}",
        counts.events_acked.load(Ordering::Relaxed),
        counts.events_acked.load(Ordering::Relaxed) as f64 / elapsed,
        counts.events_failed.load(Ordering::Relaxed),
        counts.reads.load(Ordering::Relaxed),
        counts.logins_refused.load(Ordering::Relaxed),
        counts.idle_reopened.load(Ordering::Relaxed),
        counts.slow_reopened.load(Ordering::Relaxed),
    );
    println!(
        "RSS after warm-up {warm_rss:.1} MiB, max after {max_rss:.1} MiB, last {last_rss:.1} MiB: \
         last / after warm-up {:.3}, max / after warm-up {:.3} (goal <= 1.10)",
        last_rss / warm_rss,
        max_rss / warm_rss
    );
    println!(
        "/health p99 per 10 s window: median {median_p99:.2} ms, worst {worst_p99:.2} ms (goal < 50); \
         worst / idle baseline {:.1}; probe failures {health_failures}",
        worst_p99 / idle_p99
    );
    println!("open fds: max {max_fds}");
    if let Ok(metrics) = client.send(Method::GET, "/metrics", None).await {
        let text = metrics.text().await.unwrap_or_default();
        for line in text
            .lines()
            .filter(|line| line.starts_with("cairn_pipeline") || line.starts_with("cairn_handler"))
        {
            println!("metrics: {line}");
        }
    }
    println!("acknowledged events checked {checked}, lost {lost} (goal 0)");
    println!("load after: {}", load_average());
    let met = max_rss / warm_rss <= 1.10 && worst_p99 < 50.0 && lost == 0 && health_failures == 0;
    println!("goals {}", if met { "met" } else { "NOT met" });
}
