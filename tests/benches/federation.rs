//! Federation benchmark (issue 7): how fast a gateway's one-way replicator makes a change
//! visible on its downstream, and how long a full resync of 10,000 resources takes, each beside
//! a baseline measured in the same run.
//!
//! - **Setup**: two release `cairn-backend`s on loopback ([`Backend::start_federated`]), `gateway`
//!   and `alpha`, sharing one fresh P-256 JWT key pair; alpha is registered on the gateway as a
//!   `Cluster` with its CA (`<data_dir>/tls/ca.pem`). Every request of this process uses an
//!   admin API key of the backend it talks to (access tokens live 5 minutes, less than a run).
//! - **Change → visible**: a replicator for the `CheckConfig`s of namespace `latency` (Sensu's
//!   default resync interval, 30 s, so a periodic resync may fall inside the window and is part
//!   of what is measured). `CAIRN_BENCH_CHANGES` (default 1,000) changes made one at a time on
//!   the gateway, alternately the create of a check and an update of its command; each is timed
//!   from the start of the gateway's `PUT` until a `GET` of the item on alpha returns the new
//!   command, polled every 1 ms. A change not visible after 5 s counts as an error and is left
//!   out of the percentiles. Reported: p50, p99 (nearest rank) and max.
//!   Baseline: the same `PUT` + `GET`-until-visible loop sent to alpha directly (namespace
//!   `latency-baseline`, nothing replicated), interleaved change by change with the replicated
//!   loop so that both see the same machine. The first 10 changes of each loop are a warm-up
//!   (connections, caches) and not counted.
//! - **Full resync**: `CAIRN_BENCH_RESOURCES` (default 10,000) checks created in namespace
//!   `resync` on the gateway (16 in flight) before any replicator exists; then, per round
//!   (`CAIRN_BENCH_ROUNDS`, default 3), the replicator for that namespace is created and timed
//!   from the start of its `PUT` until alpha holds every copy. The end is seen by polling the
//!   replicator's status (`GET /api/cairn/v1/replicators/{name}`, every 10 ms) until it records
//!   a completed resync: the resync writes each copy and waits for alpha's acknowledgement (a
//!   committed write) before it records that, so alpha holds them all at that moment. A listing
//!   of alpha's copies (paged, `limit=500`, by the replication label) then confirms the count;
//!   were any missing, the listing is repeated every 250 ms and its time is the end instead.
//!   Polling alpha's count during the resync would take a large share of its CPU on this
//!   machine and slow the thing measured. The status's `last_resync.duration_ms` (the worker's
//!   own clock: listing both sides, planning, pushing) is reported beside the wall time.
//!   Between rounds the replicator is deleted, which removes its copies; the next round starts
//!   once alpha has none left and the replicator's record is gone.
//!   Baseline, every round while alpha holds no copies: the same checks `PUT` straight into a
//!   fresh alpha namespace, 32 in flight (the resync's own concurrency), from the first request
//!   to the last answer; they are deleted again (untimed) before the next round. It is run
//!   twice: with the admin's API key (the baseline the ratio and the goal are read against),
//!   and with a bearer token of alpha's admin (logged in just before), because the replicator
//!   authenticates each request with a JWT, whose ES256 verification on alpha costs far more
//!   than an API key lookup; the second shows how much of the gap that is.
//!   Reported: the median over rounds of each, and ours / baseline.
//!
//! The checks are ordinary ones (labels, command, interval, subscriptions, handlers) with
//! `publish: false`, so that neither backend's scheduler fires thousands of them meanwhile.
//!
//! Run with `cargo bench -p cairn-tests --bench federation`. Knobs: `CAIRN_BENCH_CHANGES`,
//! `CAIRN_BENCH_RESOURCES`, `CAIRN_BENCH_ROUNDS`.

#![allow(clippy::print_stdout)]

use std::future::Future;
use std::time::{Duration, Instant};

use cairn_api::client::{Client, ClientError, Credentials};
use cairn_api::meta::LABEL_REPLICATED_FROM;
use cairn_api::model::{CheckConfig, Cluster, Namespace, Replicator};
use cairn_api::{Kind, ObjectMeta, Resource, Spec};
use cairn_tests::bench::{admin_api_key, env_number};
use cairn_tests::{Backend, FederationKeys};
use futures::stream::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

const ENV_CHANGES: &str = "CAIRN_BENCH_CHANGES";
const ENV_RESOURCES: &str = "CAIRN_BENCH_RESOURCES";
const ENV_ROUNDS: &str = "CAIRN_BENCH_ROUNDS";

const GATEWAY: &str = "gateway";
const ALPHA: &str = "alpha";
const LATENCY_NAMESPACE: &str = "latency";
const LATENCY_BASELINE_NAMESPACE: &str = "latency-baseline";
const RESYNC_NAMESPACE: &str = "resync";
const LATENCY_REPLICATOR: &str = "latency-to-alpha";
const RESYNC_REPLICATOR: &str = "resync-to-alpha";

/// Changes of each latency loop made before the measured ones (even, so that the measured
/// ones still start with a create).
const WARMUP_CHANGES: usize = 10;
/// A change not visible on alpha after this long is an error.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often alpha's item is read while waiting for a change.
const VISIBLE_POLL: Duration = Duration::from_millis(1);
/// How often the replicator's status is read while waiting for a resync.
const STATUS_POLL: Duration = Duration::from_millis(10);
/// How often alpha's copies are counted while waiting for them to appear or go.
const COUNT_POLL: Duration = Duration::from_millis(250);
/// How long setup steps and a resync or removal may take before the run gives up: far above
/// the goals, so that hitting it means it did not converge.
const CONVERGE: Duration = Duration::from_secs(300);
/// Requests in flight while creating the checks on the gateway.
const GATEWAY_CONCURRENCY: usize = 16;
/// Requests in flight in the resync baseline: the replicator's `RESYNC_CONCURRENCY`.
const BASELINE_CONCURRENCY: usize = 32;

const GOAL_P99_MS: f64 = 250.0;
const GOAL_RESYNC_S: f64 = 5.0;

/// A client of `backend` authenticated with a new API key of its admin.
async fn api_key_client(backend: &Backend) -> Client {
    let key = admin_api_key(&backend.admin().await).await;
    backend.client(Credentials::ApiKey(key))
}

fn namespace_resource(name: &str) -> Resource {
    Resource::new(
        ObjectMeta::named("", name),
        Spec::Namespace(Namespace {
            name: name.to_owned(),
        }),
    )
}

fn check(namespace: &str, name: &str, command: &str, idx: usize) -> Resource {
    let mut metadata = ObjectMeta::named(namespace, name);
    metadata
        .labels
        .insert("team".into(), format!("team-{}", idx % 7));
    Resource::new(
        metadata,
        Spec::CheckConfig(CheckConfig {
            command: command.to_owned(),
            interval: 30 + i64::try_from(idx % 60).expect("below 60"),
            subscriptions: vec!["linux".into()],
            handlers: vec!["log".into()],
            // Not scheduled: the scheduler firing thousands of checks would share the two
            // cores with what is measured.
            publish: false,
            ..CheckConfig::default()
        }),
    )
}

/// The `idx`-th check of the resync set, in `namespace`.
fn bulk_check(namespace: &str, idx: usize) -> Resource {
    check(
        namespace,
        &format!("check-{idx:05}"),
        &format!("check-disk --warn 80 --id {idx}"),
        idx,
    )
}

fn register(name: &str, backend: &Backend) -> Resource {
    Resource::new(
        ObjectMeta::named("", name),
        Spec::Cluster(Cluster {
            api_urls: vec![backend.url.clone()],
            ca_cert: backend.ca(),
        }),
    )
}

fn replicator(name: &str, namespace: &str) -> Resource {
    Resource::new(
        ObjectMeta::named("", name),
        Spec::Replicator(Replicator {
            cluster: ALPHA.to_owned(),
            api_version: "core/v2".into(),
            resource: "CheckConfig".into(),
            namespace: namespace.to_owned(),
            ..Replicator::default()
        }),
    )
}

/// The label value on the copies of replicator `name`.
fn copy_label(name: &str) -> String {
    format!("{GATEWAY}/{name}")
}

/// Polls `probe` every `every` until it gives a value; panics naming `what` after `limit`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, every: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// The command of check `name` on `client`; `None` when missing or unreadable.
async fn command_on(client: &Client, namespace: &str, name: &str) -> Option<String> {
    let resource = client
        .get_resource(Kind::CheckConfig, namespace, name)
        .await
        .ok()
        .flatten()?;
    match resource.spec {
        Spec::CheckConfig(check) => Some(check.command),
        _ => None,
    }
}

/// Change `idx` of a latency loop: written through `writer`, timed until `reader` serves it;
/// `None` when it is not visible within [`CHANGE_TIMEOUT`].
async fn timed_change(
    writer: &Client,
    reader: &Client,
    namespace: &str,
    idx: usize,
) -> Option<Duration> {
    // Even changes create a check, odd ones update the check just created.
    let name = format!("lat-{:05}", idx / 2);
    let command = format!("echo change-{idx}");
    let resource = check(namespace, &name, &command, idx);
    let started = Instant::now();
    writer
        .put_resource(&resource)
        .await
        .unwrap_or_else(|err| panic!("put check {namespace}/{name}: {err}"));
    let deadline = started + CHANGE_TIMEOUT;
    loop {
        if command_on(reader, namespace, &name).await.as_deref() == Some(command.as_str()) {
            return Some(started.elapsed());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(VISIBLE_POLL).await;
    }
}

/// `PUT`s every resource, `concurrency` at once; the time from the first request to the last
/// answer.
async fn put_all(client: &Client, resources: &[Resource], concurrency: usize) -> Duration {
    let started = Instant::now();
    futures::stream::iter(resources)
        .map(|resource| async move {
            client.put_resource(resource).await.unwrap_or_else(|err| {
                panic!(
                    "put check {}/{}: {err}",
                    resource.namespace(),
                    resource.name()
                )
            });
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    started.elapsed()
}

/// Deletes every resource, `concurrency` at once.
async fn delete_all(client: &Client, resources: &[Resource], concurrency: usize) {
    futures::stream::iter(resources)
        .map(|resource| async move {
            client
                .delete_resource(resource.kind(), resource.namespace(), resource.name())
                .await
                .unwrap_or_else(|err| {
                    panic!(
                        "delete check {}/{}: {err}",
                        resource.namespace(),
                        resource.name()
                    )
                });
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
}

/// How many copies of replicator `name` alpha's `namespace` holds, listed page by page
/// (`limit=500`) by their label; `None` when the listing fails.
async fn count_copies(alpha: &Client, namespace: &str, name: &str) -> Option<usize> {
    let selector = format!("{LABEL_REPLICATED_FROM} == {}", copy_label(name));
    alpha
        .list_selected(Kind::CheckConfig, Some(namespace), Some(&selector))
        .await
        .ok()
        .map(|copies| copies.len())
}

/// Replicator `name`'s status; `Ok(None)` once it is gone (404).
async fn status(gateway: &Client, name: &str) -> Result<Option<Value>, ClientError> {
    match gateway
        .get_json(&format!("/api/cairn/v1/replicators/{name}"))
        .await
    {
        Ok(status) => Ok(Some(status)),
        Err(ClientError::Status {
            status: StatusCode::NOT_FOUND,
            ..
        }) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Deletes replicator `name` and waits until alpha's `namespace` holds none of its copies and
/// its record is gone; the time that took.
async fn remove_replicator(
    gateway: &Client,
    alpha: &Client,
    name: &str,
    namespace: &str,
) -> Duration {
    let started = Instant::now();
    gateway
        .delete_resource(Kind::Replicator, "", name)
        .await
        .unwrap_or_else(|err| panic!("delete replicator {name}: {err}"));
    wait_for(
        &format!("the copies of replicator {name} removed from alpha"),
        CONVERGE,
        COUNT_POLL,
        || async {
            let left = count_copies(alpha, namespace, name).await?;
            let gone = matches!(status(gateway, name).await, Ok(None));
            (left == 0 && gone).then_some(())
        },
    )
    .await;
    started.elapsed()
}

/// p50, p99 (nearest rank) and max of `values`; zeros when empty.
fn percentiles(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = |quantile: f64| {
        let idx = (quantile * sorted.len() as f64).ceil() as usize;
        sorted
            .get(idx.saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    (
        rank(0.50),
        rank(0.99),
        sorted.last().copied().unwrap_or_default(),
    )
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// What the change → visible loops measured, milliseconds.
struct Latency {
    replicated: Vec<f64>,
    replicated_errors: usize,
    baseline: Vec<f64>,
    baseline_errors: usize,
}

/// One resync round.
struct ResyncRound {
    /// Replicator `PUT` → alpha holds every copy.
    wall: Duration,
    /// The status's `last_resync`.
    note: Value,
    /// The listing that confirmed alpha's count.
    confirm: Duration,
    /// Replicator `DELETE` → no copy left on alpha, record gone.
    removal: Duration,
    /// The same checks `PUT` into alpha directly, with an API key.
    baseline: Duration,
    /// The same again with a bearer token.
    baseline_token: Duration,
}

async fn measure_latency(gateway: &Client, alpha: &Client, changes: usize) -> Latency {
    let mut latency = Latency {
        replicated: Vec::with_capacity(changes),
        replicated_errors: 0,
        baseline: Vec::with_capacity(changes),
        baseline_errors: 0,
    };
    for idx in 0..WARMUP_CHANGES + changes {
        let replicated = timed_change(gateway, alpha, LATENCY_NAMESPACE, idx).await;
        let baseline = timed_change(alpha, alpha, LATENCY_BASELINE_NAMESPACE, idx).await;
        if idx < WARMUP_CHANGES {
            continue;
        }
        match replicated {
            Some(elapsed) => latency.replicated.push(elapsed.as_secs_f64() * 1e3),
            None => latency.replicated_errors += 1,
        }
        match baseline {
            Some(elapsed) => latency.baseline.push(elapsed.as_secs_f64() * 1e3),
            None => latency.baseline_errors += 1,
        }
    }
    latency
}

async fn resync_round(
    gateway: &Client,
    alpha: &Client,
    alpha_backend: &Backend,
    resources: usize,
    round: usize,
) -> ResyncRound {
    let label = copy_label(RESYNC_REPLICATOR);
    let started = Instant::now();
    gateway
        .put_resource(&replicator(RESYNC_REPLICATOR, RESYNC_NAMESPACE))
        .await
        .expect("create the resync replicator");
    let note = wait_for(
        "the replicator's first resync",
        CONVERGE,
        STATUS_POLL,
        || async {
            let status = status(gateway, RESYNC_REPLICATOR).await.ok()??;
            status
                .get("last_resync")
                .filter(|note| !note.is_null())
                .cloned()
        },
    )
    .await;
    let resynced = started.elapsed();
    let confirm_started = Instant::now();
    let count = count_copies(alpha, RESYNC_NAMESPACE, RESYNC_REPLICATOR).await;
    let confirm = confirm_started.elapsed();
    let wall = if count == Some(resources) {
        resynced
    } else {
        println!(
            "round {round}: the resync ended with {count:?} of {resources} copies {label} on alpha ({note}); counting until all are there"
        );
        wait_for("every copy on alpha", CONVERGE, COUNT_POLL, || async {
            (count_copies(alpha, RESYNC_NAMESPACE, RESYNC_REPLICATOR).await == Some(resources))
                .then_some(())
        })
        .await;
        started.elapsed()
    };
    let removal = remove_replicator(gateway, alpha, RESYNC_REPLICATOR, RESYNC_NAMESPACE).await;

    // The baseline, with alpha holding no copies again.
    let namespace_name = format!("baseline-{round}");
    alpha
        .put_resource(&namespace_resource(&namespace_name))
        .await
        .unwrap_or_else(|err| panic!("create namespace {namespace_name} on alpha: {err}"));
    let checks: Vec<Resource> = (0..resources)
        .map(|idx| bulk_check(&namespace_name, idx))
        .collect();
    let baseline = put_all(alpha, &checks, BASELINE_CONCURRENCY).await;
    delete_all(alpha, &checks, BASELINE_CONCURRENCY).await;
    // A token lives 5 minutes: a fresh one for each round.
    let alpha_token = alpha_backend.admin().await;
    let baseline_token = put_all(&alpha_token, &checks, BASELINE_CONCURRENCY).await;
    delete_all(alpha, &checks, BASELINE_CONCURRENCY).await;
    ResyncRound {
        wall,
        note,
        confirm,
        removal,
        baseline,
        baseline_token,
    }
}

fn main() {
    let changes: usize = env_number(ENV_CHANGES, 1_000);
    let resources: usize = env_number(ENV_RESOURCES, 10_000);
    let rounds: usize = env_number(ENV_ROUNDS, 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    let keys_dir = tempfile::tempdir().expect("tempdir for the jwt keys");
    let keys = FederationKeys::generate(keys_dir.path());
    let gateway_backend = Backend::start_federated(GATEWAY, &keys);
    let alpha_backend = Backend::start_federated(ALPHA, &keys);
    let run_started = Instant::now();
    println!("Federation benchmark (issue 7)");
    println!(
        "gateway {} and alpha {} (release cairn-backend, loopback); {changes} changes, {resources} resources, {rounds} rounds",
        gateway_backend.url, alpha_backend.url
    );

    runtime.block_on(async {
        let gateway = api_key_client(&gateway_backend).await;
        let alpha = api_key_client(&alpha_backend).await;
        for name in [LATENCY_NAMESPACE, RESYNC_NAMESPACE] {
            gateway
                .put_resource(&namespace_resource(name))
                .await
                .unwrap_or_else(|err| panic!("create namespace {name} on the gateway: {err}"));
        }
        for name in [LATENCY_NAMESPACE, LATENCY_BASELINE_NAMESPACE, RESYNC_NAMESPACE] {
            alpha
                .put_resource(&namespace_resource(name))
                .await
                .unwrap_or_else(|err| panic!("create namespace {name} on alpha: {err}"));
        }
        gateway
            .put_resource(&register(ALPHA, &alpha_backend))
            .await
            .expect("register alpha on the gateway");

        // 1. Change → visible.
        gateway
            .put_resource(&replicator(LATENCY_REPLICATOR, LATENCY_NAMESPACE))
            .await
            .expect("create the latency replicator");
        wait_for(
            "the latency replicator's first resync",
            CONVERGE,
            STATUS_POLL,
            || async {
                let status = status(&gateway, LATENCY_REPLICATOR).await.ok()??;
                (status["state"] == "ok").then_some(())
            },
        )
        .await;
        let latency_started = Instant::now();
        let latency = measure_latency(&gateway, &alpha, changes).await;
        let latency_time = latency_started.elapsed();
        // The record is written at most once a second: wait for the last pushes to be counted.
        let pushed = u64::try_from(WARMUP_CHANGES + changes).expect("a count fits in u64");
        let latency_status = wait_for(
            "the latency replicator's counts",
            Duration::from_secs(10),
            STATUS_POLL,
            || async {
                let status = status(&gateway, LATENCY_REPLICATOR).await.ok()??;
                (status["counts"]["puts"].as_u64() >= Some(pushed)).then_some(status)
            },
        )
        .await;
        println!(
            "change → visible: {changes} + {changes} changes (+ {WARMUP_CHANGES} + {WARMUP_CHANGES} warm-up) in {:.1} s; replicator counts {}, last error {}",
            latency_time.as_secs_f64(),
            latency_status["counts"],
            latency_status["last_error"]
        );
        // Its copies go, so that the resync rounds run alone.
        remove_replicator(&gateway, &alpha, LATENCY_REPLICATOR, LATENCY_NAMESPACE).await;

        // 2. Full resync.
        let checks: Vec<Resource> = (0..resources)
            .map(|idx| bulk_check(RESYNC_NAMESPACE, idx))
            .collect();
        let created = put_all(&gateway, &checks, GATEWAY_CONCURRENCY).await;
        println!(
            "created {resources} checks on the gateway in {:.2} s ({GATEWAY_CONCURRENCY} in flight)",
            created.as_secs_f64()
        );
        let mut results = Vec::with_capacity(rounds);
        for round in 0..rounds {
            let result = resync_round(&gateway, &alpha, &alpha_backend, resources, round).await;
            println!(
                "round {round}: resync wall {:.3} s (status duration_ms {}, puts {}, errors {}; confirming list {:.3} s), removal {:.2} s, baseline put {:.3} s (bearer token {:.3} s)",
                result.wall.as_secs_f64(),
                result.note["duration_ms"],
                result.note["puts"],
                result.note["errors"],
                result.confirm.as_secs_f64(),
                result.removal.as_secs_f64(),
                result.baseline.as_secs_f64(),
                result.baseline_token.as_secs_f64()
            );
            results.push(result);
        }
        summary(&latency, &results, changes, resources, rounds);
    });
    println!(
        "measured in {:.1} s (from both backends up); command: {ENV_CHANGES}={changes} {ENV_RESOURCES}={resources} {ENV_ROUNDS}={rounds} cargo bench -p cairn-tests --bench federation",
        run_started.elapsed().as_secs_f64()
    );
}

fn summary(
    latency: &Latency,
    results: &[ResyncRound],
    changes: usize,
    resources: usize,
    rounds: usize,
) {
    let (p50, p99, max) = percentiles(&latency.replicated);
    let (base_p50, base_p99, base_max) = percentiles(&latency.baseline);
    let wall: Vec<f64> = results
        .iter()
        .map(|round| round.wall.as_secs_f64())
        .collect();
    let worker: Vec<f64> = results
        .iter()
        .map(|round| round.note["duration_ms"].as_f64().unwrap_or(f64::NAN) / 1e3)
        .collect();
    let baseline: Vec<f64> = results
        .iter()
        .map(|round| round.baseline.as_secs_f64())
        .collect();
    let baseline_token: Vec<f64> = results
        .iter()
        .map(|round| round.baseline_token.as_secs_f64())
        .collect();
    let (wall_s, worker_s, baseline_s) = (median(&wall), median(&worker), median(&baseline));
    let token_s = median(&baseline_token);
    let resync_errors: u64 = results
        .iter()
        .map(|round| round.note["errors"].as_u64().unwrap_or(0))
        .sum();
    println!();
    println!("Summary");
    let resync_label = format!("full resync of {resources}, wall s (median)");
    let goal_p99 = format!("< {GOAL_P99_MS} ms");
    let goal_resync = format!("< {GOAL_RESYNC_S} s");
    println!(
        "| {:<46} | {:>10} | {:>10} | {:>13} | {:<9} |",
        "measurement", "ours", "baseline", "ours/baseline", "goal"
    );
    println!(
        "|{:-<48}|{:->11}:|{:->11}:|{:->14}:|{:-<11}|",
        "", "", "", "", ""
    );
    row("change → visible p50, ms", p50, base_p50, 2, "");
    row("change → visible p99, ms", p99, base_p99, 2, &goal_p99);
    row("change → visible max, ms", max, base_max, 2, "");
    row(&resync_label, wall_s, baseline_s, 3, &goal_resync);
    row(
        "full resync, status duration_ms as s (median)",
        worker_s,
        baseline_s,
        3,
        "",
    );
    row(
        "full resync, wall s, vs bearer-token baseline",
        wall_s,
        token_s,
        3,
        "",
    );
    println!(
        "change → visible: {} of {changes} replicated changes timed out (> {} s), {} of {changes} baseline changes",
        latency.replicated_errors,
        CHANGE_TIMEOUT.as_secs(),
        latency.baseline_errors
    );
    println!(
        "baselines: change → visible = PUT + GET-until-visible on alpha directly; resync = the same {resources} checks PUT into a fresh alpha namespace, {BASELINE_CONCURRENCY} in flight, with an API key (the last row: with a bearer token)"
    );
    println!(
        "resync rounds (s): wall {}; status {}; baseline {}; bearer-token baseline {}; refused resources {resync_errors}",
        join(&wall),
        join(&worker),
        join(&baseline),
        join(&baseline_token)
    );
    println!(
        "ratios > 1 mean slower than the baseline; resync figures are medians of {rounds} rounds."
    );
    let latency_ok = p99 < GOAL_P99_MS && latency.replicated_errors == 0;
    println!(
        "goal change → visible p99 < {GOAL_P99_MS} ms (no timeouts): {p99:.2} ms, {} timeouts, {}",
        latency.replicated_errors,
        met(latency_ok)
    );
    let resync_ok = wall_s < GOAL_RESYNC_S && resync_errors == 0;
    println!(
        "goal full resync of {resources} < {GOAL_RESYNC_S} s: {wall_s:.3} s (median wall), {}",
        met(resync_ok)
    );
}

/// One line of the summary table, figures with `decimals` decimals.
fn row(label: &str, ours: f64, baseline: f64, decimals: usize, goal: &str) {
    println!(
        "| {label:<46} | {ours:>10.decimals$} | {baseline:>10.decimals$} | {:>13.2} | {goal:<9} |",
        ours / baseline
    );
}

fn join(values: &[f64]) -> String {
    values
        .iter()
        .map(|value| format!("{value:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}
