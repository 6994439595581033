//! What the load benchmarks (`benches/` here and cairn-backend's `benches/ingest.rs`) share:
//! knobs from the environment, the wall clock in unix seconds, a process's CPU time and RSS from
//! `/proc`, order statistics, and the closed-loop event load (timed rounds of concurrent
//! workers, the bodies they post, their HTTP clients).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_api::client::Client;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// A positive number from the environment variable `name`, else `default`.
pub fn env_number<T>(name: &str, default: T) -> T
where
    T: std::str::FromStr + PartialOrd + Default,
{
    std::env::var(name)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .filter(|value| *value > T::default())
        .unwrap_or(default)
}

/// Now, in unix seconds.
pub fn unix_now() -> f64 {
    unix(SystemTime::now())
}

/// `at` in unix seconds.
pub fn unix(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Sleeps this thread until the unix time `at` (at once when it passed).
pub fn sleep_until_unix(at: f64) {
    let left = at - unix_now();
    if left > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(left));
    }
}

/// `VmRSS` of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status_field(&status, "VmRSS:")
}

/// A KiB field (`VmRSS:`, `VmHWM:`) of `/proc/<pid>/status`; 0 when absent.
pub fn status_field(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of a process, seconds (clock ticks of 1/100 s, Linux's USER_HZ).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |idx: usize| {
        fields
            .get(idx)
            .and_then(|text| text.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Fields 14 and 15 of stat (utime, stime); `after_name` starts at field 3.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The value at quantile `q` of sorted values (nearest rank); NaN when there are none.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `values` in ascending order.
pub fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// The median (upper middle for an even count); NaN when there are none.
pub fn median(values: Vec<f64>) -> f64 {
    let values = sorted(values);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

// === event load ===

/// Where the event loads post (the real API path).
pub const EVENTS_PATH: &str = "/api/core/v2/namespaces/default/events";
/// Check names each load client cycles over: its keys.
pub const CHECKS: usize = 100;
/// Statuses each load client cycles over (0, 1, 2).
pub const STATUSES: usize = 3;
/// Distinct bodies per client: the check and status cycles repeat together after this many.
pub const BODIES_PER_CLIENT: usize = CHECKS * STATUSES;
/// How long one request of a load may take before it counts as an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Failure messages a [`Round`] keeps for the report.
const KEPT_ERRORS: usize = 5;

/// How a closed-loop load runs.
#[derive(Debug, Clone, Copy)]
pub struct LoadConfig {
    /// Workers, each making one call after another.
    pub concurrency: usize,
    /// Load before the measured window (connections, TLS handshakes, caches); not counted.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
}

/// The counts and latencies of one load in one round (or, merged, of several).
#[derive(Debug, Default)]
pub struct Round {
    /// Successes completed inside the measured window.
    pub ok: u64,
    /// Failures completed inside the measured window.
    pub errors: u64,
    /// Successes over the whole round, warm-up included.
    pub ok_all: u64,
    /// Failures over the whole round, warm-up included.
    pub errors_all: u64,
    /// Latencies of the successes inside the window, microseconds.
    pub latencies: Vec<u32>,
    /// The first few failures, for the report.
    pub messages: Vec<String>,
    /// CPU seconds (user + system) that each watched group of processes used in the measured
    /// window, in the order [`measure`] was given them.
    cpu: Vec<f64>,
}

impl Round {
    /// Adds `other`'s counts, latencies, CPU time and (up to a few) failures to these.
    pub fn merge(&mut self, other: Round) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.ok_all += other.ok_all;
        self.errors_all += other.errors_all;
        self.latencies.extend(other.latencies);
        if self.cpu.len() < other.cpu.len() {
            self.cpu.resize(other.cpu.len(), 0.0);
        }
        for (total, seconds) in self.cpu.iter_mut().zip(other.cpu) {
            *total += seconds;
        }
        for message in other.messages {
            if self.messages.len() < KEPT_ERRORS {
                self.messages.push(message);
            }
        }
    }

    /// CPU seconds of the watched group `group` in the measured window; 0 for a group that was
    /// not watched.
    pub fn cpu_seconds(&self, group: usize) -> f64 {
        self.cpu.get(group).copied().unwrap_or(0.0)
    }
}

/// Where an HTTP load posts, with which `Authorization`, what a success answers, and the TLS
/// configuration of its clients.
#[derive(Debug, Clone)]
pub struct PostTarget {
    /// The URL every request posts to.
    pub url: String,
    /// The `Authorization` header's value.
    pub authorization: String,
    /// The status of a success; any other is a failure.
    pub success: StatusCode,
    /// The clients' TLS configuration.
    pub tls: rustls::ClientConfig,
}

/// Runs `op(worker, n)` in `load.concurrency` tasks, each one call after another (`n` counts
/// a worker's calls from 0), through the warm-up and the measured window; counts what completed
/// in the window, and the CPU time of each group of processes in `watched` in it.
///
/// `op` names a failure with `Err`.
///
/// # Panics
/// When a load task or the CPU sampler panicked.
pub async fn measure<F, Fut>(load: LoadConfig, watched: Vec<Vec<u32>>, op: F) -> Round
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let start = Instant::now();
    let window_start = start + load.warmup;
    let window_end = window_start + load.duration;
    let cpu = tokio::spawn(async move {
        let sample = |pids: &[u32]| pids.iter().map(|&pid| cpu_seconds(pid)).sum::<f64>();
        tokio::time::sleep_until(window_start.into()).await;
        let before: Vec<f64> = watched.iter().map(|pids| sample(pids)).collect();
        tokio::time::sleep_until(window_end.into()).await;
        watched
            .iter()
            .zip(before)
            .map(|(pids, before)| sample(pids) - before)
            .collect::<Vec<f64>>()
    });
    let op = Arc::new(op);
    let mut tasks = Vec::with_capacity(load.concurrency);
    for worker in 0..load.concurrency {
        let op = Arc::clone(&op);
        tasks.push(tokio::spawn(async move {
            let mut round = Round {
                latencies: Vec::with_capacity(16 * 1024),
                ..Round::default()
            };
            let mut n: u64 = 0;
            while Instant::now() < window_end {
                let began = Instant::now();
                let outcome = op(worker, n).await;
                n += 1;
                let done = Instant::now();
                let in_window = done >= window_start && done <= window_end;
                match outcome {
                    Ok(()) => {
                        round.ok_all += 1;
                        if in_window {
                            round.ok += 1;
                            let micros = (done - began).as_micros();
                            round
                                .latencies
                                .push(u32::try_from(micros).unwrap_or(u32::MAX));
                        }
                    }
                    Err(message) => {
                        round.errors_all += 1;
                        if in_window {
                            round.errors += 1;
                        }
                        if round.messages.len() < KEPT_ERRORS {
                            round.messages.push(message);
                        }
                    }
                }
            }
            round
        }));
    }
    let mut total = Round::default();
    for task in tasks {
        total.merge(task.await.expect("a load task panicked"));
    }
    total.cpu = cpu.await.expect("the CPU sampler panicked");
    total
}

/// [`measure`] with HTTP posts: each worker posts its own `bodies[worker]` in turn to `target`
/// over its own keep-alive connection ([`http_client`]).
///
/// # Panics
/// When `bodies` has fewer lists than workers, or as [`measure`].
pub async fn post_load<B>(
    load: LoadConfig,
    watched: Vec<Vec<u32>>,
    target: &PostTarget,
    bodies: &Arc<Vec<Vec<B>>>,
) -> Round
where
    B: Clone + Into<reqwest::Body> + Send + Sync + 'static,
{
    let clients: Arc<Vec<reqwest::Client>> = Arc::new(
        (0..load.concurrency)
            .map(|_| http_client(&target.tls))
            .collect(),
    );
    let target = Arc::new(target.clone());
    let bodies = Arc::clone(bodies);
    measure(load, watched, move |worker, n| {
        let (clients, target, bodies) = (clients.clone(), target.clone(), bodies.clone());
        async move {
            let mine = &bodies[worker];
            let body = mine[(n % mine.len() as u64) as usize].clone();
            post_event(&clients[worker], &target, body).await
        }
    })
    .await
}

/// One POST of `body` to `target`; `Err` names the failure.
pub async fn post_event(
    http: &reqwest::Client,
    target: &PostTarget,
    body: impl Into<reqwest::Body>,
) -> Result<(), String> {
    let response = http
        .post(&target.url)
        .header(AUTHORIZATION, &target.authorization)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|err| format!("request failed: {err}"))?;
    let status = response.status();
    // Read the whole answer, so the connection goes back to the pool.
    let text = response
        .text()
        .await
        .map_err(|err| format!("reading the answer failed: {err}"))?;
    if status == target.success {
        Ok(())
    } else {
        Err(format!("{status}: {text}"))
    }
}

/// A load client: one keep-alive HTTP/1.1 connection over `tls`, [`REQUEST_TIMEOUT`] per
/// request.
///
/// # Panics
/// When the client cannot be built.
pub fn http_client(tls: &rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls.clone())
        .http1_only()
        .pool_max_idle_per_host(1)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("build a load client")
}

/// For each of `clients` clients, the bodies it cycles through ([`BODIES_PER_CLIENT`]): its own
/// entity `bench-<client>`, check `n % 100`, status `n % 3`.
pub fn event_bodies(clients: usize) -> Vec<Vec<Vec<u8>>> {
    (0..clients)
        .map(|client| {
            (0..BODIES_PER_CLIENT)
                .map(|n| {
                    event_body(
                        &format!("bench-{client:02}"),
                        &format!("check-{:03}", n % CHECKS),
                        n % STATUSES,
                    )
                })
                .collect()
        })
        .collect()
}

/// A proxy entity's check result, as a producer of results would post it.
pub fn event_body(entity: &str, check: &str, status: usize) -> Vec<u8> {
    let output = match status {
        0 => format!("OK: {check} on {entity} is fine"),
        1 => format!("WARNING: {check} on {entity} is at 85%"),
        _ => format!("CRITICAL: {check} on {entity} is at 97%"),
    };
    let event = json!({
        "entity": {
            "entity_class": "proxy",
            "metadata": {"name": entity, "namespace": "default", "labels": {"team": "bench"}},
            "subscriptions": ["linux"],
        },
        "check": {
            "metadata": {"name": check, "namespace": "default"},
            "command": format!("{check} --warning 80 --critical 95"),
            "interval": 60,
            "subscriptions": ["linux"],
            "status": status,
            "output": output,
            "duration": 0.012,
        },
    });
    serde_json::to_vec(&event).expect("a JSON value serializes")
}

/// Creates an API key for the admin that `admin` is logged in as, and returns it (the last
/// segment of the answer's `Location`).
///
/// # Panics
/// When the backend refuses or answers without the key.
pub async fn admin_api_key(admin: &Client) -> String {
    let response = admin
        .send(
            Method::POST,
            "/api/core/v2/apikeys",
            Some(&json!({"username": "admin"})),
        )
        .await
        .unwrap_or_else(|err| panic!("create an API key: {err}"));
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "creating an API key should answer 201"
    );
    response
        .headers()
        .get(LOCATION)
        .and_then(|location| location.to_str().ok())
        .and_then(|location| location.rsplit('/').next())
        .expect("the API key as the last segment of Location")
        .to_owned()
}

/// `/proc/loadavg`, to show whether something else was using the machine.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}
