//! Store benchmark (issue 8): events per second stored through the REST API by a backend on the
//! embedded store and by one on a real 3-member etcd cluster, beside what that etcd cluster
//! takes on its own.
//!
//! - **(a) embedded**: a release `cairn-backend` initialised and started as usual (redb in its
//!   data dir, every event committed with fsync before its 201).
//! - **(b) etcd**: a release `cairn-backend` with `--store etcd` on a 3-member cluster
//!   ([`EtcdClusterConfig`], etcd's default Raft timings: heartbeat 100 ms, election timeout
//!   1 s, so that a loaded machine does not elect new leaders mid-round; each member's WAL fsyncs
//!   on the same disk).
//! - Both get the same load: `CAIRN_BENCH_CONCURRENCY` (default 64) clients, each its own
//!   keep-alive HTTP/1.1 TLS connection, posting to `/api/core/v2/namespaces/default/events`
//!   with an admin API key as fast as answers come; client `i` posts entity `bench-i` with
//!   checks `check-000` to `check-099` and statuses 0/1/2 in turn, so no two clients write one
//!   key. A success is a 201.
//! - **(c) raw etcd puts**: the engine's own ceiling on the same cluster: the same number of
//!   concurrent tasks doing plain puts with etcd-client (one client balanced over the three
//!   members, as the backend connects) of a value as large as a stored event, over the same
//!   key spread (`/bench-raw/<task>/<0..99>`). The value is a stored event itself: before the
//!   rounds, 25 results of one check (a full history of 21) are posted to the etcd backend and
//!   its key is read back raw from etcd.
//! - **(d) etcdctl put**: the same value through `etcdctl put`, one process per put, the same
//!   concurrency (Debian's `etcd-client` package; without `etcdctl` the row is skipped, saying
//!   how to install it).
//!
//! Each measurement is a warm-up (`CAIRN_BENCH_WARMUP_SECONDS`, default 2) and then a measured
//! window (`CAIRN_BENCH_SECONDS`, default 10); there are `CAIRN_BENCH_ROUNDS` rounds (default
//! 3), and within each round the rows run one after another, the first row moving on by one
//! every round, so that no row always runs first or last. Figures are the median rate of the
//! rounds and latency percentiles over every measured request. CPU per event is the backend's
//! and the three etcd members' own, from `/proc`, in the measured windows. More than 0.1%
//! failed requests in a row fails the bench. `CAIRN_BENCH_ROWS` (e.g. `etcd,raw`) runs some
//! rows only.
//!
//! Run with `cargo bench -p cairn-tests --bench store`.

// A bench binary reports on stdout; that is its whole output.
#![allow(clippy::print_stdout)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cairn_tests::bench::{
    admin_api_key, env_number, event_bodies, event_body, http_client, load_average, measure,
    median, percentile, post_event, post_load, sorted, LoadConfig, PostTarget, Round, CHECKS,
    EVENTS_PATH, REQUEST_TIMEOUT, STATUSES,
};
use cairn_tests::etcd::{self, EtcdCluster, EtcdClusterConfig};
use cairn_tests::{Backend, BackendOptions};
use etcd_client::GetOptions;
use reqwest::{Method, StatusCode};

const ENV_SECONDS: &str = "CAIRN_BENCH_SECONDS";
const ENV_WARMUP_SECONDS: &str = "CAIRN_BENCH_WARMUP_SECONDS";
const ENV_ROUNDS: &str = "CAIRN_BENCH_ROUNDS";
const ENV_CONCURRENCY: &str = "CAIRN_BENCH_CONCURRENCY";
const ENV_ROWS: &str = "CAIRN_BENCH_ROWS";

/// Results posted for the event whose stored size sets the raw value size: more than
/// `check.history` keeps (21), so the stored event is as large as a steady one.
const SIZE_RESULTS: usize = 25;
/// The prefix the etcd backend keeps its keys under (the backend's default).
const BACKEND_PREFIX: &str = "/cairn/";
/// Errors over all requests of a row above this fail the bench.
const MAX_ERROR_RATE: f64 = 0.001;
/// etcd's default Raft timings.
const HEARTBEAT: Duration = Duration::from_millis(100);
const ELECTION_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Row {
    Embedded,
    EtcdBackend,
    RawPuts,
    Etcdctl,
}

impl Row {
    const ALL: [Row; 4] = [Row::Embedded, Row::EtcdBackend, Row::RawPuts, Row::Etcdctl];

    fn label(self) -> &'static str {
        match self {
            Row::Embedded => "(a) backend, embedded store: POST events",
            Row::EtcdBackend => "(b) backend, 3-member etcd: POST events",
            Row::RawPuts => "(c) etcd-client puts, same value size",
            Row::Etcdctl => "(d) etcdctl put, same value size",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Row::Embedded => "embedded",
            Row::EtcdBackend => "etcd",
            Row::RawPuts => "raw",
            Row::Etcdctl => "etcdctl",
        }
    }
}

/// The process groups whose CPU time a [`Round`] holds: the backend's (rows (a) and (b)) and
/// the etcd members'.
const BACKEND_CPU: usize = 0;
const ETCD_CPU: usize = 1;

/// Everything one row did over all rounds.
#[derive(Default)]
struct Totals {
    rates: Vec<f64>,
    all: Round,
}

/// A backend under load: where to post, with which key, and its process.
struct HttpTarget {
    post: PostTarget,
    pid: u32,
}

fn main() {
    let load = LoadConfig {
        concurrency: env_number(ENV_CONCURRENCY, 64),
        warmup: Duration::from_secs(env_number(ENV_WARMUP_SECONDS, 2)),
        duration: Duration::from_secs(env_number(ENV_SECONDS, 10)),
    };
    let rounds: usize = env_number(ENV_ROUNDS, 3);
    let rows: Vec<Row> = match std::env::var(ENV_ROWS) {
        Ok(text) => text
            .split(',')
            .map(|name| {
                Row::ALL
                    .into_iter()
                    .find(|row| row.name() == name.trim())
                    .unwrap_or_else(|| {
                        panic!("{ENV_ROWS}: unknown row {name:?} (embedded, etcd, raw, etcdctl)")
                    })
            })
            .collect(),
        Err(_) => Row::ALL.to_vec(),
    };
    if !etcd::required() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    runtime.block_on(run(load, rounds, rows));
}

async fn run(load: LoadConfig, rounds: usize, mut rows: Vec<Row>) {
    let etcdctl_runs = Command::new("etcdctl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if rows.contains(&Row::Etcdctl) && !etcdctl_runs {
        println!(
            "etcdctl is not on PATH: skipping row (d) only (install it with `apt-get install etcd-client`)"
        );
        rows.retain(|row| *row != Row::Etcdctl);
    }

    let cluster = EtcdClusterConfig::new(3)
        .timings(HEARTBEAT, ELECTION_TIMEOUT)
        // Several GB of history over a full run: room for it, and old revisions dropped.
        .arg("--quota-backend-bytes=8589934592")
        .arg("--auto-compaction-mode=periodic")
        .arg("--auto-compaction-retention=1m")
        .start();
    let etcd_pids: Vec<u32> = (0..cluster.len())
        .filter_map(|idx| cluster.member_pid(idx))
        .collect();

    let embedded = Backend::start_with(BackendOptions::default().capture_logs());
    let embedded_target = http_target(&embedded).await;
    // Without row (b), the value of rows (c) and (d) is the event as the embedded backend's
    // REST API returns it.
    let etcd_backend = rows.contains(&Row::EtcdBackend).then(|| {
        Backend::start_with(
            BackendOptions::default()
                .init_args(cluster.backend_args())
                .args(cluster.backend_args())
                .capture_logs(),
        )
    });
    let etcd_target = match &etcd_backend {
        Some(backend) => Some(http_target(backend).await),
        None => None,
    };
    let (stored_value, rest_size) = match (&etcd_backend, &etcd_target) {
        (Some(backend), Some(target)) => stored_event(backend, target, Some(&cluster)).await,
        _ => stored_event(&embedded, &embedded_target, None).await,
    };
    let raw_client = cluster.client().await;
    let bodies = Arc::new(event_bodies(load.concurrency));
    let body_bytes: usize = bodies.iter().flatten().map(Vec::len).sum();

    println!("Store: etcd vs embedded (issue 8)");
    println!(
        "load: {} concurrent clients/tasks; HTTP rows: one keep-alive HTTP/1.1 TLS connection each, {CHECKS} checks per client, statuses 0/1/2, {:.0} bytes per body on average",
        load.concurrency,
        body_bytes as f64 / bodies.iter().map(Vec::len).sum::<usize>() as f64
    );
    let source = if etcd_backend.is_some() {
        "in etcd"
    } else {
        "as the embedded backend's REST API returns it (row (b) not run)"
    };
    println!(
        "raw value: a stored event with a full history, {} bytes {source} ({rest_size} bytes as the REST API returns it)",
        stored_value.len()
    );
    println!(
        "etcd: 3 members on loopback ({}), heartbeat {} ms, election timeout {} ms",
        etcd_version(),
        HEARTBEAT.as_millis(),
        ELECTION_TIMEOUT.as_millis()
    );
    println!(
        "rounds: {rounds}, rows rotating, each {} s measured after {} s warm-up; medians below",
        load.duration.as_secs(),
        load.warmup.as_secs()
    );
    println!(
        "machine: {} CPUs, load average before: {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        load_average()
    );
    println!();

    let mut totals: Vec<Totals> = rows.iter().map(|_| Totals::default()).collect();
    for round in 0..rounds {
        for offset in 0..rows.len() {
            let idx = (round + offset) % rows.len();
            let row = rows[idx];
            let result = match row {
                Row::Embedded => http_load(&embedded_target, &bodies, load, &etcd_pids).await,
                Row::EtcdBackend => {
                    let target = etcd_target
                        .as_ref()
                        .expect("the etcd backend runs for row (b)");
                    http_load(target, &bodies, load, &etcd_pids).await
                }
                Row::RawPuts => raw_load(&raw_client, &stored_value, load, &etcd_pids).await,
                Row::Etcdctl => {
                    etcdctl_load(&cluster.endpoints_arg(), &stored_value, load, &etcd_pids).await
                }
            };
            let rate = result.ok as f64 / load.duration.as_secs_f64();
            println!(
                "round {}: {:<42} {:>8.0} /s  ({} ok, {} errors in the window; {} errors in the round)",
                round + 1,
                row.label(),
                rate,
                result.ok,
                result.errors,
                result.errors_all
            );
            for message in &result.messages {
                println!("         error: {message}");
            }
            totals[idx].rates.push(rate);
            totals[idx].all.merge(result);
        }
    }
    println!();
    report(&rows, &totals);
    println!("load average after: {}", load_average());

    let failed: Vec<String> = rows
        .iter()
        .zip(&totals)
        .filter_map(|(row, totals)| {
            let all = totals.all.ok_all + totals.all.errors_all;
            (all == 0 || totals.all.errors_all as f64 / all as f64 > MAX_ERROR_RATE).then(|| {
                format!(
                    "{}: {} of {all} requests failed (limit {:.1}%)",
                    row.label(),
                    totals.all.errors_all,
                    MAX_ERROR_RATE * 100.0
                )
            })
        })
        .collect();
    if !failed.is_empty() {
        for backend in std::iter::once(&embedded).chain(&etcd_backend) {
            println!("backend {} log:\n{}", backend.url, backend.log());
        }
    }
    assert!(
        failed.is_empty(),
        "store bench failed:\n{}",
        failed.join("\n")
    );
}

fn report(rows: &[Row], totals: &[Totals]) {
    println!(
        "| {:<42} | {:>9} | {:>7} | {:>7} | {:>9} | {:>6} | {:>14} | {:>11} |",
        "measurement",
        "median /s",
        "p50 ms",
        "p99 ms",
        "ok",
        "errors",
        "backend CPU µs",
        "etcd CPU µs"
    );
    println!(
        "|{:-<44}|{:->10}:|{:->8}:|{:->8}:|{:->10}:|{:->7}:|{:->15}:|{:->12}:|",
        "", "", "", "", "", "", "", ""
    );
    for (row, totals) in rows.iter().zip(totals) {
        let latencies = sorted(
            totals
                .all
                .latencies
                .iter()
                .map(|&micros| f64::from(micros) / 1000.0)
                .collect(),
        );
        let per_event = |seconds: f64| {
            if seconds <= 0.0 || totals.all.ok == 0 {
                "–".to_owned()
            } else {
                format!("{:.0}", seconds * 1e6 / totals.all.ok as f64)
            }
        };
        let backend_cpu = if matches!(row, Row::Embedded | Row::EtcdBackend) {
            per_event(totals.all.cpu_seconds(BACKEND_CPU))
        } else {
            "–".to_owned()
        };
        let etcd_cpu = if *row == Row::Embedded {
            "–".to_owned()
        } else {
            per_event(totals.all.cpu_seconds(ETCD_CPU))
        };
        println!(
            "| {:<42} | {:>9.0} | {:>7.2} | {:>7.2} | {:>9} | {:>6} | {:>14} | {:>11} |",
            row.label(),
            median(totals.rates.clone()),
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            totals.all.ok,
            totals.all.errors,
            backend_cpu,
            etcd_cpu
        );
    }
    println!();
    let rate = |row: Row| {
        rows.iter()
            .position(|other| *other == row)
            .map(|idx| median(totals[idx].rates.clone()))
    };
    for (label, numerator, denominator) in [
        (
            "etcd backend / embedded backend",
            Row::EtcdBackend,
            Row::Embedded,
        ),
        (
            "etcd backend / raw etcd puts",
            Row::EtcdBackend,
            Row::RawPuts,
        ),
        ("etcd backend / etcdctl put", Row::EtcdBackend, Row::Etcdctl),
    ] {
        if let (Some(top), Some(bottom)) = (rate(numerator), rate(denominator)) {
            println!("{label:<33} {:.2}", top / bottom);
        }
    }
    for (row, totals) in rows.iter().zip(totals) {
        let rounds: Vec<String> = totals
            .rates
            .iter()
            .map(|rate| format!("{rate:.0}"))
            .collect();
        println!("rounds of {}: {}", row.name(), rounds.join(", "));
    }
}

// === targets ===

/// Logs in to `backend` as the admin, creates an API key, and builds the load's TLS config.
async fn http_target(backend: &Backend) -> HttpTarget {
    let key = admin_api_key(&backend.admin().await).await;
    let mut tls =
        cairn_api::client::tls_config_trusting(&backend.ca()).expect("a client TLS config");
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    HttpTarget {
        post: PostTarget {
            url: format!("{}{EVENTS_PATH}", backend.url.trim_end_matches('/')),
            authorization: format!("Key {key}"),
            success: StatusCode::CREATED,
            tls,
        },
        pid: backend.pid(),
    }
}

/// Posts [`SIZE_RESULTS`] results of one check to `backend` and reads the stored event back:
/// raw from etcd when it stores in `cluster`, else through the REST API. Returns those bytes
/// and the size of the REST API's answer.
async fn stored_event(
    backend: &Backend,
    target: &HttpTarget,
    cluster: Option<&EtcdCluster>,
) -> (Vec<u8>, usize) {
    let http = http_client(&target.post.tls);
    for n in 0..SIZE_RESULTS {
        let body = event_body("bench-size", "check-size", n % STATUSES);
        post_event(&http, &target.post, body)
            .await
            .unwrap_or_else(|err| panic!("post a result of check-size: {err}"));
    }
    let admin = backend.admin().await;
    let rest = admin
        .send(
            Method::GET,
            "/api/core/v2/namespaces/default/events/bench-size/check-size",
            None,
        )
        .await
        .expect("read the event back")
        .bytes()
        .await
        .expect("the event's body");
    let history = serde_json::from_slice::<serde_json::Value>(&rest).expect("an event")["check"]
        ["history"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(history, 21, "the stored event has a full history");
    let Some(cluster) = cluster else {
        return (rest.to_vec(), rest.len());
    };

    let mut client = cluster.client().await;
    let keys = client
        .get(
            BACKEND_PREFIX,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("list the backend's keys");
    let key = keys
        .kvs()
        .iter()
        .map(|kv| kv.key().to_vec())
        .find(|key| key.ends_with(b"/bench-size/check-size"))
        .unwrap_or_else(|| panic!("no key of event bench-size/check-size under {BACKEND_PREFIX}"));
    let stored = client.get(key, None).await.expect("read the stored event");
    let value = stored
        .kvs()
        .first()
        .expect("the stored event")
        .value()
        .to_vec();
    (value, rest.len())
}

// === loads ===

/// What [`measure`] watches: the backend's process (if any) and the etcd members.
fn watched(backend_pid: Option<u32>, etcd_pids: &[u32]) -> Vec<Vec<u32>> {
    let mut watched = vec![Vec::new(); 2];
    watched[BACKEND_CPU] = backend_pid.into_iter().collect();
    watched[ETCD_CPU] = etcd_pids.to_vec();
    watched
}

/// Rows (a) and (b): each worker posts its own bodies over its own keep-alive connection.
async fn http_load(
    target: &HttpTarget,
    bodies: &Arc<Vec<Vec<Vec<u8>>>>,
    load: LoadConfig,
    etcd_pids: &[u32],
) -> Round {
    post_load(
        load,
        watched(Some(target.pid), etcd_pids),
        &target.post,
        bodies,
    )
    .await
}

/// Row (c): plain puts of the stored event's bytes, one client for all tasks.
async fn raw_load(
    client: &etcd_client::Client,
    value: &[u8],
    load: LoadConfig,
    etcd_pids: &[u32],
) -> Round {
    let client = client.clone();
    let value = Arc::new(value.to_vec());
    measure(load, watched(None, etcd_pids), move |worker, n| {
        let mut kv = client.kv_client();
        let value = value.clone();
        async move {
            let key = format!("/bench-raw/{worker:02}/{:03}", n % CHECKS as u64);
            match tokio::time::timeout(REQUEST_TIMEOUT, kv.put(key, value.as_slice(), None)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(err)) => Err(format!("put failed: {err}")),
                Err(_) => Err(format!("put: no answer within {REQUEST_TIMEOUT:?}")),
            }
        }
    })
    .await
}

/// Row (d): one `etcdctl put` process per put, on the blocking pool.
async fn etcdctl_load(endpoints: &str, value: &[u8], load: LoadConfig, etcd_pids: &[u32]) -> Round {
    let endpoints = Arc::new(endpoints.to_owned());
    let value = Arc::new(String::from_utf8_lossy(value).into_owned());
    measure(load, watched(None, etcd_pids), move |worker, n| {
        let (endpoints, value) = (endpoints.clone(), value.clone());
        async move {
            let key = format!("/bench-etcdctl/{worker:02}/{:03}", n % CHECKS as u64);
            let output = tokio::task::spawn_blocking(move || {
                Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .arg(format!("--endpoints={endpoints}"))
                    .args(["put", &key, value.as_str()])
                    .stdin(Stdio::null())
                    .output()
            })
            .await
            .map_err(|err| format!("etcdctl task: {err}"))?
            .map_err(|err| format!("cannot run etcdctl: {err}"))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "etcdctl put exited with {}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ))
            }
        }
    })
    .await
}

/// `etcd --version`'s first line.
fn etcd_version() -> String {
    Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "etcd, version unknown".to_owned())
}
