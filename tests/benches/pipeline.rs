//! Event pipeline benchmark (issue 18): what a JavaScript filter and a mutator cost per event,
//! against the same handler with no filter, in one run on one backend.
//!
//! - **Setup**: one release `cairn-backend` on loopback, an admin API key, and a TCP sink in
//!   this process (a listener on port 0 that reads each connection to its end and counts it).
//!   Two `tcp` handlers send to the sink:
//!   (a) `bare`: no filter (Sensu's `json` mutator, the default);
//!   (b) `js`: the stored filter `bench-js` (`allow`, two expressions using a regex, a function
//!   over the check's history and the `hour` built-in; every bench event passes it);
//!   (c) `jsmut`: that filter, then the JavaScript mutator `bench-js-mut` (sets the output,
//!   returns the event as JSON);
//!   (d) `pipemut`: that filter, then the pipe mutator `bench-pipe-mut` (`cat`: one contained
//!   process per event).
//! - **Measured**: `CAIRN_BENCH_ROUNDS` (default 5) rounds; in each, for every handler in turn,
//!   `CAIRN_BENCH_EVENTS` events (default 2,000) naming it are
//!   posted through the REST API (16 in flight, distinct entity/check pairs, status 2), and
//!   the round ends when the sink has received every one. Per handler and round: the wall
//!   time from the first post to the last delivery (events/s end to end) and the backend's
//!   CPU time over it (`/proc`), per event. Ingestion costs the same in every case, so the
//!   difference of CPU per event to `bare` is what the filter costs.
//! - **Filter evaluations per second**: `cairn_api::js::Engine` alone in this process, the
//!   same two expressions on the same event JSON, one caller at a time and 8 at once.
//!
//! Reported: medians over the rounds, and the ratios to `bare`.
//! Run with `cargo bench -p cairn-tests --bench pipeline`.

#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::client::tls_config_trusting;
use cairn_tests::bench::{
    admin_api_key, cpu_seconds, env_number, http_client, load_average, median, post_event,
    PostTarget, EVENTS_PATH,
};
use cairn_tests::Backend;
use futures::stream::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// The filter every bench event passes: a regex, a function over the history, a built-in.
const FILTER_EXPRESSIONS: [&str; 2] = [
    "/^bench-[0-9]+$/.test(event.entity.metadata.name) && hour(event.timestamp) < 24",
    "event.check.history.some(function (entry) { return entry.status != 0; })",
];
/// Posts in flight.
const IN_FLIGHT: usize = 16;
/// How long a round may wait for the sink after its last post.
const DELIVERY_WAIT: Duration = Duration::from_secs(120);

/// One handler under test.
struct Case {
    handler: &'static str,
}

const CASES: [Case; 4] = [
    Case { handler: "bare" },
    Case { handler: "js" },
    Case { handler: "jsmut" },
    Case { handler: "pipemut" },
];

/// The sink's count of complete deliveries.
#[derive(Default)]
struct Sink {
    delivered: AtomicU64,
}

async fn start_sink() -> (u16, Arc<Sink>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the sink");
    let port = listener.local_addr().expect("the sink's address").port();
    let sink = Arc::new(Sink::default());
    let counting = Arc::clone(&sink);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let sink = Arc::clone(&counting);
            tokio::spawn(async move {
                let mut buffer = vec![0_u8; 64 * 1024];
                let mut received = 0_usize;
                loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) => break,
                        Ok(read) => received += read,
                        Err(_) => return,
                    }
                }
                if received > 0 {
                    sink.delivered.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    (port, sink)
}

async fn put(admin: &cairn_api::client::Client, path: &str, body: serde_json::Value) {
    let response = admin
        .send(Method::PUT, path, Some(&body))
        .await
        .unwrap_or_else(|err| panic!("PUT {path}: {err}"));
    assert_eq!(response.status(), StatusCode::CREATED, "PUT {path}");
}

async fn configure(admin: &cairn_api::client::Client, sink_port: u16) {
    let base = "/api/core/v2/namespaces/default";
    put(
        admin,
        &format!("{base}/filters/bench-js"),
        json!({"metadata": {"name": "bench-js", "namespace": "default"}, "action": "allow", "expressions": FILTER_EXPRESSIONS}),
    )
    .await;
    put(
        admin,
        &format!("{base}/mutators/bench-js-mut"),
        json!({"metadata": {"name": "bench-js-mut", "namespace": "default"}, "type": "javascript", "eval": "event.check.output = 'mutated'; return JSON.stringify(event);"}),
    )
    .await;
    put(
        admin,
        &format!("{base}/mutators/bench-pipe-mut"),
        json!({"metadata": {"name": "bench-pipe-mut", "namespace": "default"}, "command": "cat", "timeout": 10}),
    )
    .await;
    let socket = json!({"host": "127.0.0.1", "port": sink_port});
    for (name, filters, mutator) in [
        ("bare", json!([]), ""),
        ("js", json!(["bench-js"]), ""),
        ("jsmut", json!(["bench-js"]), "bench-js-mut"),
        ("pipemut", json!(["bench-js"]), "bench-pipe-mut"),
    ] {
        put(
            admin,
            &format!("{base}/handlers/{name}"),
            json!({"metadata": {"name": name, "namespace": "default"}, "type": "tcp", "socket": socket, "timeout": 10, "filters": filters, "mutator": mutator}),
        )
        .await;
    }
}

/// The events of one round of `handler`: distinct entity/check pairs, status 2.
fn bodies(handler: &str, round: usize, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|n| {
            let event = json!({
                "entity": {"entity_class": "proxy", "metadata": {"name": format!("bench-{}", n % 100), "namespace": "default"}},
                "check": {
                    "metadata": {"name": format!("{handler}-{round}-{}", n / 100), "namespace": "default"},
                    "command": "check-http --url https://example.com",
                    "interval": 60,
                    "status": 2,
                    "output": "CRITICAL: example.com answered 503 in 0.20 s",
                    "handlers": [handler],
                },
            });
            serde_json::to_vec(&event).expect("a JSON value serializes")
        })
        .collect()
}

/// One round of one case: wall seconds and backend CPU seconds until every event was delivered.
async fn round(
    backend_pid: u32,
    target: &PostTarget,
    sink: &Sink,
    handler: &str,
    round: usize,
    count: usize,
) -> (f64, f64) {
    let bodies = bodies(handler, round, count);
    let clients: Vec<reqwest::Client> = (0..IN_FLIGHT).map(|_| http_client(&target.tls)).collect();
    let before = sink.delivered.load(Ordering::Relaxed);
    let cpu_before = cpu_seconds(backend_pid);
    let start = Instant::now();
    let results: Vec<Result<(), String>> = futures::stream::iter(bodies.into_iter().enumerate())
        .map(|(n, body)| {
            let client = clients[n % IN_FLIGHT].clone();
            async move { post_event(&client, target, body).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let failed: Vec<&String> = results
        .iter()
        .filter_map(|result| result.as_ref().err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} posts failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    let wanted = before + count as u64;
    let deadline = Instant::now() + DELIVERY_WAIT;
    while sink.delivered.load(Ordering::Relaxed) < wanted {
        assert!(
            Instant::now() < deadline,
            "{handler}: {} of {count} delivered after {DELIVERY_WAIT:?}",
            sink.delivered.load(Ordering::Relaxed) - before
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (
        start.elapsed().as_secs_f64(),
        cpu_seconds(backend_pid) - cpu_before,
    )
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let rounds: usize = env_number("CAIRN_BENCH_ROUNDS", 5);
    let events: usize = env_number("CAIRN_BENCH_EVENTS", 2_000);
    println!("load average before: {}", load_average());

    evaluations_per_second().await;

    let backend = Backend::start();
    let admin = backend.admin().await;
    let key = admin_api_key(&admin).await;
    let (sink_port, sink) = start_sink().await;
    configure(&admin, sink_port).await;
    let target = PostTarget {
        url: format!("{}{EVENTS_PATH}", backend.url),
        authorization: format!("Key {key}"),
        success: StatusCode::CREATED,
        tls: tls_config_trusting(&backend.ca()).expect("a TLS config"),
    };
    // Warm-up: connections, caches, the JS workers' compiled expressions.
    for case in &CASES {
        round(backend.pid(), &target, &sink, case.handler, 0, 100).await;
    }
    let mut walls: Vec<Vec<f64>> = vec![Vec::new(); CASES.len()];
    let mut cpus: Vec<Vec<f64>> = vec![Vec::new(); CASES.len()];
    for r in 1..=rounds {
        for (idx, case) in CASES.iter().enumerate() {
            let count = events.max(1);
            let (wall, cpu) = round(backend.pid(), &target, &sink, case.handler, r, count).await;
            println!(
                "round {r} {:>7}: {count} events, {:8.0} events/s end to end, backend CPU {:6.1} µs/event",
                case.handler,
                count as f64 / wall,
                cpu * 1e6 / count as f64
            );
            walls[idx].push(count as f64 / wall);
            cpus[idx].push(cpu * 1e6 / count as f64);
        }
    }
    let bare_rate = median(walls[0].clone());
    let bare_cpu = median(cpus[0].clone());
    println!("\nmedians over {rounds} rounds:");
    for (idx, case) in CASES.iter().enumerate() {
        let rate = median(walls[idx].clone());
        let cpu = median(cpus[idx].clone());
        println!(
            "  {:>7}: {rate:8.0} events/s ({:.2} of bare), backend CPU {cpu:6.1} µs/event ({:.2} of bare, {:+.1} µs)",
            case.handler,
            rate / bare_rate,
            cpu / bare_cpu,
            cpu - bare_cpu
        );
    }
    println!("load average after: {}", load_average());
}

/// Filter evaluations per second on the engine alone, one caller and 8 at once.
async fn evaluations_per_second() {
    let engine = cairn_api::js::Engine::new(cairn_api::js::EngineConfig::default())
        .expect("the JavaScript engine starts");
    let event = bodies("bare", 0, 1).remove(0);
    let mut event: serde_json::Value = serde_json::from_slice(&event).expect("the event");
    event["timestamp"] = json!(1_520_244_000);
    event["check"]["history"] = json!([{"status": 0, "executed": 1}, {"status": 2, "executed": 2}]);
    let event: Arc<[u8]> = serde_json::to_vec(&event).expect("the event").into();
    let expressions: Vec<String> = FILTER_EXPRESSIONS.iter().map(|e| (*e).to_owned()).collect();
    let total: usize = env_number("CAIRN_BENCH_EVALUATIONS", 20_000);
    for callers in [1_usize, 8] {
        let mut rates = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            let results: Vec<bool> = futures::stream::iter(0..total)
                .map(|_| {
                    let engine = engine.clone();
                    let expressions = expressions.clone();
                    let event = Arc::clone(&event);
                    async move {
                        engine
                            .filter(expressions, Vec::new(), event)
                            .await
                            .expect("the bench filter evaluates")
                            .matched
                    }
                })
                .buffer_unordered(callers)
                .collect()
                .await;
            assert!(results.iter().all(|passed| *passed));
            rates.push(total as f64 / start.elapsed().as_secs_f64());
        }
        println!(
            "filter evaluations, {callers} caller(s): {:.0}/s (median of 5 runs of {total})",
            median(rates)
        );
    }
}
