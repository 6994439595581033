//! Web UI benchmark (issue 17): how long the events page takes with 10,000 events across three
//! clusters, beside the REST API's merged list of the same events measured in the same run.
//! The goal: the page answers in < 300 ms.
//!
//! - **Setup**: three release `cairn-backend`s on loopback ([`Backend::start_federated`]):
//!   `gateway`, `alpha` and `beta`, sharing one fresh P-256 JWT key pair; alpha and beta are
//!   registered on the gateway as `Cluster`s with their CAs. Namespaces `default`, `prod` and
//!   `staging` exist on each. `CAIRN_BENCH_EVENTS` (default 10,000) events are split evenly
//!   over the three clusters and posted through each cluster's own REST API
//!   (`POST /api/core/v2/namespaces/{ns}/events`, an admin API key, 32 in flight in all):
//!   proxy entities of 10 checks each (`check-disk`, `check-cpu`, …), the entities spread over
//!   the namespaces, statuses 70% OK, 15% warning, 10% critical, 5% unknown, outputs of about
//!   200 bytes as a Nagios-style plugin writes them (a summary line and a perfdata line).
//! - **The page**: a reqwest client logs in at the gateway's `POST /ui/login` (HTTPS trusting
//!   the cluster CA only, no `Origin` header, redirects not followed) and keeps the
//!   `__Host-cairn-session-gateway` cookie it is given, taking any renewed one from later answers. It
//!   logs in again before each round (untimed), so that no access token nears its end inside
//!   a round and no measured request renews the session.
//! - **Measured**, one request at a time on one keep-alive connection per client, each timed
//!   from sending until the whole body is read:
//!   (a) `GET /ui/events`, the first page over all clusters;
//!   (b) `GET /ui/events?status=critical&q=disk`, a filtered page;
//!   (c) `GET /ui/events?page=N`, the last page;
//!   (d) baseline: `GET /api/cairn/v1/federation/events` on the gateway with an admin API key,
//!   the REST API's merged list of the same events (the same `federated_rows` call the page
//!   makes, all three clusters, every namespace), serialized whole as JSON.
//!   `CAIRN_BENCH_ROUNDS` (default 5) rounds of `CAIRN_BENCH_REQUESTS` (default 20) requests
//!   of each, interleaved request by request so that all four see the same machine; before
//!   the first round, 3 of each are a warm-up (connections, caches) and not counted. Every
//!   page answer is checked: 200, the count line names the expected total (computed here from
//!   the posted events), and the expected number of rows; the baseline's first answer must
//!   hold every event and no cluster error.
//!   Reported per round: p50 and p95 (nearest rank) of each; over the run: the median of the
//!   rounds' p50, p95 over every request, the ratio of each page's median p50 to the
//!   baseline's, and the CPU time the gateway and the two downstreams spent per request
//!   (`/proc`, sampled around each request; clock ticks of 10 ms summed over the requests).
//!   The client is on loopback: the figures are the full request time as the client sees it,
//!   an upper bound of the server's time.
//!
//! Run with `cargo bench -p cairn-tests --bench ui`. Knobs: `CAIRN_BENCH_EVENTS`,
//! `CAIRN_BENCH_ROUNDS`, `CAIRN_BENCH_REQUESTS`.

#![allow(clippy::print_stdout)]

use std::time::Instant;

use cairn_api::client::{tls_config_trusting, Client, Credentials};
use cairn_tests::bench::{
    admin_api_key, cpu_seconds, env_number, load_average, median, percentile, sorted,
    REQUEST_TIMEOUT,
};
use cairn_tests::{
    cluster_registration, create_namespaces, Backend, FederationKeys, ADMIN_PASSWORD,
};
use futures::stream::StreamExt;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ENV_EVENTS: &str = "CAIRN_BENCH_EVENTS";
const ENV_ROUNDS: &str = "CAIRN_BENCH_ROUNDS";
const ENV_REQUESTS: &str = "CAIRN_BENCH_REQUESTS";

/// The gateway first, then the downstreams registered on it.
const CLUSTERS: [&str; 3] = ["gateway", "alpha", "beta"];
const NAMESPACES: [&str; 3] = ["default", "prod", "staging"];
/// Each entity's checks: its events.
const CHECKS: [&str; 10] = [
    "check-disk",
    "check-cpu",
    "check-memory",
    "check-load",
    "check-http",
    "check-ntp",
    "check-dns",
    "check-swap",
    "check-postgres",
    "check-nginx",
];
/// Events posted at once while setting up, over all clusters.
const POST_CONCURRENCY: usize = 32;
/// Requests of each kind before the first round, not counted.
const WARMUP: usize = 3;
/// The UI's rows per page (`PAGE_ROWS` of `backend/src/http/ui/events.rs`).
const PAGE_ROWS: usize = 50;
/// The filtered page's free text: only `check-disk`'s names and outputs hold it.
const FILTER_TEXT: &str = "disk";
/// The gateway's session cookie (`__Host-cairn-session-<cluster>`).
const SESSION_COOKIE: &str = "__Host-cairn-session-gateway";
const GOAL_MS: f64 = 300.0;

/// The check status of the `idx`-th event of a cluster: 70% OK, 15% warning, 10% critical,
/// 5% unknown; shifted by the entity, so that every check gets every status.
fn status_of(idx: usize) -> u32 {
    match (idx + idx / CHECKS.len()) % 20 {
        0..=13 => 0,
        14..=16 => 1,
        17 | 18 => 2,
        _ => 3,
    }
}

/// What the `idx`-th event of a cluster is about: its namespace, entity and check.
fn event_key(cluster: &str, idx: usize) -> (&'static str, String, &'static str) {
    let entity = idx / CHECKS.len();
    (
        NAMESPACES[entity % NAMESPACES.len()],
        format!("{cluster}-host-{entity:04}"),
        CHECKS[idx % CHECKS.len()],
    )
}

/// A plugin's output of about 200 bytes: a summary line and a perfdata line.
fn output(check: &str, entity: &str, status: u32, idx: usize) -> String {
    let word = match status {
        0 => "OK",
        1 => "WARNING",
        2 => "CRITICAL",
        _ => "UNKNOWN",
    };
    let value = match status {
        0 => 40 + idx % 30,
        1 => 80 + idx % 10,
        2 => 95 + idx % 5,
        _ => 0,
    };
    let (what, perf) = match check {
        "check-disk" => (
            format!("disk /var at {value}% used ({value}.4 GiB of 100 GiB), inodes 12% used"),
            format!("/var={value}.4GiB;80;95;0;100 inodes=12%;80;95"),
        ),
        "check-http" => (
            format!(
                "HTTP/1.1 200 OK - 5123 bytes in 0.{value:03} second response time on https://{entity}/healthz"
            ),
            format!("time=0.{value:03}s;0.5;1.0;0 size=5123B;;;0"),
        ),
        _ => (
            format!("{check} on {entity} reads {value}% (warning at 80%, critical at 95%), sampled over 60s"),
            format!("value={value}%;80;95;0;100 samples=60"),
        ),
    };
    let status_text = if status == 3 {
        format!("{word} - the plugin timed out after 10s; last reading: {what}")
    } else {
        format!("{word} - {what}")
    };
    format!("{status_text}\n| {perf}\n")
}

/// The `idx`-th event of `cluster`, as a producer of results posts it, and its namespace.
fn event_body(cluster: &str, idx: usize) -> (&'static str, Value) {
    let (namespace, entity, check) = event_key(cluster, idx);
    let status = status_of(idx);
    let body = json!({
        "entity": {
            "entity_class": "proxy",
            "metadata": {
                "name": entity,
                "namespace": namespace,
                "labels": {"team": format!("team-{}", idx % 7), "region": "eu-west-1"},
            },
            "subscriptions": ["linux", format!("entity:{entity}")],
        },
        "check": {
            "metadata": {"name": check, "namespace": namespace},
            "command": format!("/usr/lib/nagios/plugins/{check} -w 80 -c 95"),
            "interval": 60,
            "subscriptions": ["linux"],
            "status": status,
            "output": output(check, &entity, status, idx),
            "duration": 0.012,
        },
    });
    (namespace, body)
}

/// How many events each cluster holds: `total` split evenly, the first ones one more.
fn split(total: usize) -> Vec<usize> {
    (0..CLUSTERS.len())
        .map(|nth| total / CLUSTERS.len() + usize::from(nth < total % CLUSTERS.len()))
        .collect()
}

/// How many of the posted events the filtered page matches, as its filter reads them: status
/// critical, and the text in the cluster, namespace, entity, check or the output's first line.
fn filtered_count(per_cluster: &[usize]) -> usize {
    CLUSTERS
        .iter()
        .zip(per_cluster)
        .map(|(cluster, &count)| {
            (0..count)
                .filter(|&idx| {
                    let (namespace, entity, check) = event_key(cluster, idx);
                    let status = status_of(idx);
                    let text = output(check, &entity, status, idx);
                    let first = text.lines().next().unwrap_or("");
                    status == 2
                        && [cluster, namespace, entity.as_str(), check, first]
                            .iter()
                            .any(|field| field.to_lowercase().contains(FILTER_TEXT))
                })
                .count()
        })
        .sum()
}

/// A client of one keep-alive HTTP/1.1 connection trusting `ca` only, following no redirect.
fn http_client(ca: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls_config_trusting(ca).expect("the cluster CA"))
        .http1_only()
        .pool_max_idle_per_host(1)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("build an HTTP client")
}

/// `text` percent-encoded for a form field.
fn form_value(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// The session cookie's value in a `Set-Cookie` answer, when it sets one (not a clearing).
fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(|value| value.split(';').next())
        .filter_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
        .find(|value| !value.is_empty())
        .map(str::to_owned)
}

/// A browser's session of the gateway's UI: its connection and its cookie.
struct UiSession {
    http: reqwest::Client,
    base: String,
    cookie: String,
    /// Answers that carried a renewed cookie.
    renewals: usize,
}

impl UiSession {
    async fn login(base: &str, ca: &str) -> UiSession {
        let mut session = UiSession {
            http: http_client(ca),
            base: base.trim_end_matches('/').to_owned(),
            cookie: String::new(),
            renewals: 0,
        };
        session.log_in_again().await;
        session
    }

    /// `POST /ui/login` as the admin (no `Origin`: a same-origin form post may leave it out).
    async fn log_in_again(&mut self) {
        let response = self
            .http
            .post(format!("{}/ui/login", self.base))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(format!(
                "username=admin&password={}&next=",
                form_value(ADMIN_PASSWORD)
            ))
            .send()
            .await
            .expect("POST /ui/login");
        assert_eq!(
            response.status(),
            StatusCode::SEE_OTHER,
            "the UI login should answer 303"
        );
        self.cookie = session_cookie(&response).expect("the login sets the session cookie");
    }

    /// `GET path` with the cookie: the status and the body.
    async fn get(&mut self, path: &str) -> Result<(StatusCode, String), String> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, format!("{SESSION_COOKIE}={}", self.cookie))
            .send()
            .await
            .map_err(|err| format!("GET {path}: {err}"))?;
        if let Some(cookie) = session_cookie(&response) {
            self.cookie = cookie;
            self.renewals += 1;
        }
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|err| format!("GET {path}: reading the answer: {err}"))?;
        Ok((status, body))
    }
}

/// `GET path` on the gateway's REST API with an API key: the status and the body.
async fn api_get(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    path: &str,
) -> Result<(StatusCode, String), String> {
    let response = http
        .get(format!("{base}{path}"))
        .header(AUTHORIZATION, format!("Key {key}"))
        .send()
        .await
        .map_err(|err| format!("GET {path}: {err}"))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|err| format!("GET {path}: reading the answer: {err}"))?;
    Ok((status, body))
}

/// Posts every cluster's share of the events through its own API; how many were refused.
async fn post_events(clients: &[Client], per_cluster: &[usize]) -> usize {
    let work: Vec<(usize, usize)> = per_cluster
        .iter()
        .enumerate()
        .flat_map(|(nth, &count)| (0..count).map(move |idx| (nth, idx)))
        .collect();
    let outcomes: Vec<bool> = futures::stream::iter(work)
        .map(|(nth, idx)| async move {
            let (namespace, body) = event_body(CLUSTERS[nth], idx);
            let path = format!("/api/core/v2/namespaces/{namespace}/events");
            match clients[nth].send(Method::POST, &path, Some(&body)).await {
                Ok(_) => true,
                Err(err) => {
                    println!("{}: event {idx} refused: {err}", CLUSTERS[nth]);
                    false
                }
            }
        })
        .buffer_unordered(POST_CONCURRENCY)
        .collect()
        .await;
    outcomes.into_iter().filter(|ok| !ok).count()
}

/// One kind of measured request.
struct Variant {
    label: &'static str,
    path: String,
    /// A UI page, or the REST API baseline.
    page: bool,
    /// The total the page's count line must name, and the rows it must show.
    expect_total: usize,
    expect_rows: usize,
}

/// What was measured of one variant.
#[derive(Default)]
struct Measured {
    /// Milliseconds, per round.
    rounds: Vec<Vec<f64>>,
    /// Answers that were not what they should be, and the first message.
    wrong: usize,
    first_wrong: Option<String>,
    /// CPU seconds over the counted requests: the gateway's, the downstreams'.
    gateway_cpu: f64,
    downstream_cpu: f64,
    requests: usize,
}

/// The total named by the events page's count line (`Events 1–50 of 10000, worst first.`),
/// and the rows of its table.
fn page_counts(body: &str) -> Option<(usize, usize)> {
    let line = body
        .split_once("id=\"events-count\">")?
        .1
        .split_once("</p>")?
        .0;
    let total = if line.starts_with("No events match") {
        0
    } else {
        line.split_once(" of ")?
            .1
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?
    };
    Some((total, body.matches("<tr class=\"event ").count()))
}

/// Whether an answer is the right one; `Err` says what is wrong.
fn check_answer(variant: &Variant, status: StatusCode, body: &str) -> Result<(), String> {
    if status != StatusCode::OK {
        return Err(format!(
            "{}: {status}: {}",
            variant.label,
            body.chars().take(200).collect::<String>()
        ));
    }
    if !variant.page {
        return Ok(());
    }
    if body.contains("id=\"cluster-errors\"") {
        return Err(format!("{}: the page names cluster errors", variant.label));
    }
    match page_counts(body) {
        Some(counts) if counts == (variant.expect_total, variant.expect_rows) => Ok(()),
        other => Err(format!(
            "{}: (total, rows) {other:?}, expected ({}, {})",
            variant.label, variant.expect_total, variant.expect_rows
        )),
    }
}

/// The baseline's answer holds `events` items and no cluster error.
fn check_baseline(body: &str, events: usize) {
    let list: Value = serde_json::from_str(body).expect("the federated list is JSON");
    let items = list["items"].as_array().map_or(0, Vec::len);
    let errors = list["errors"].as_array().map_or(0, Vec::len);
    assert_eq!(
        (items, errors),
        (events, 0),
        "the federated list should hold every event and no error: {}",
        list["errors"]
    );
    println!(
        "baseline answer: {items} items, {} bytes ({:.0} bytes per event)",
        body.len(),
        body.len() as f64 / events as f64
    );
}

/// Everything a measured request needs.
struct Bench {
    ui: UiSession,
    api: reqwest::Client,
    base: String,
    key: String,
    gateway_pid: u32,
    downstream_pids: Vec<u32>,
}

impl Bench {
    /// One request of `variant`, timed: milliseconds and the CPU seconds of the gateway and
    /// the downstreams, or what was wrong.
    async fn once(&mut self, variant: &Variant) -> Result<(f64, f64, f64), String> {
        let downstream = |pids: &[u32]| pids.iter().map(|&pid| cpu_seconds(pid)).sum::<f64>();
        let (gateway_before, downstream_before) = (
            cpu_seconds(self.gateway_pid),
            downstream(&self.downstream_pids),
        );
        let started = Instant::now();
        let (status, body) = if variant.page {
            self.ui.get(&variant.path).await?
        } else {
            api_get(&self.api, &self.base, &self.key, &variant.path).await?
        };
        let millis = started.elapsed().as_secs_f64() * 1e3;
        let gateway = cpu_seconds(self.gateway_pid) - gateway_before;
        let downstreams = downstream(&self.downstream_pids) - downstream_before;
        check_answer(variant, status, &body)?;
        Ok((millis, gateway, downstreams))
    }
}

fn main() {
    let events: usize = env_number(ENV_EVENTS, 10_000);
    let rounds: usize = env_number(ENV_ROUNDS, 5);
    let requests: usize = env_number(ENV_REQUESTS, 20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    let keys_dir = tempfile::tempdir().expect("tempdir for the jwt keys");
    let keys = FederationKeys::generate(keys_dir.path());
    let backends: Vec<Backend> = CLUSTERS
        .iter()
        .map(|name| Backend::start_federated(name, &keys))
        .collect();
    let gateway = &backends[0];
    println!("Web UI benchmark (issue 17): the events page");
    println!(
        "gateway {}, alpha {}, beta {} (release cairn-backend, loopback); {events} events, {rounds} rounds of {requests} requests; load average before: {}",
        backends[0].url,
        backends[1].url,
        backends[2].url,
        load_average()
    );
    let per_cluster = split(events);

    runtime.block_on(async {
        let mut clients = Vec::with_capacity(backends.len());
        let mut keys = Vec::with_capacity(backends.len());
        for backend in &backends {
            let admin = backend.admin().await;
            let others: Vec<&str> = NAMESPACES[1..].to_vec();
            create_namespaces(&admin, &others).await;
            let key = admin_api_key(&admin).await;
            clients.push(backend.client(Credentials::ApiKey(key.clone())));
            keys.push(key);
        }
        for (name, backend) in CLUSTERS.iter().zip(&backends).skip(1) {
            clients[0]
                .put_resource(&cluster_registration(name, &backend.url, &backend.ca()))
                .await
                .unwrap_or_else(|err| panic!("register {name} on the gateway: {err}"));
        }
        let started = Instant::now();
        let refused = post_events(&clients, &per_cluster).await;
        assert_eq!(refused, 0, "every event should be accepted");
        println!(
            "posted {events} events ({} per cluster) in {:.2} s, {POST_CONCURRENCY} in flight",
            per_cluster
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join("/"),
            started.elapsed().as_secs_f64()
        );

        let last_page = events.div_ceil(PAGE_ROWS).max(1);
        let filtered = filtered_count(&per_cluster);
        assert!(filtered > 0, "the filtered page should match some events");
        println!("the filtered page matches {filtered} events; the last page is {last_page}");
        let variants = [
            Variant {
                label: "UI events page 1",
                path: "/ui/events".to_owned(),
                page: true,
                expect_total: events,
                expect_rows: events.min(PAGE_ROWS),
            },
            Variant {
                label: "UI filtered (critical, q=disk)",
                path: format!("/ui/events?status=critical&q={FILTER_TEXT}"),
                page: true,
                expect_total: filtered,
                expect_rows: filtered.min(PAGE_ROWS),
            },
            Variant {
                label: "UI last page",
                path: format!("/ui/events?page={last_page}"),
                page: true,
                expect_total: events,
                expect_rows: events - (last_page - 1) * PAGE_ROWS,
            },
            Variant {
                label: "baseline: REST federated list",
                path: "/api/cairn/v1/federation/events".to_owned(),
                page: false,
                expect_total: events,
                expect_rows: 0,
            },
        ];
        let mut bench = Bench {
            ui: UiSession::login(&gateway.url, &gateway.ca()).await,
            api: http_client(&gateway.ca()),
            base: gateway.url.trim_end_matches('/').to_owned(),
            key: keys[0].clone(),
            gateway_pid: gateway.pid(),
            downstream_pids: backends[1..].iter().map(Backend::pid).collect(),
        };
        let (status, body) = api_get(&bench.api, &bench.base, &bench.key, &variants[3].path)
            .await
            .expect("the federated list");
        assert_eq!(status, StatusCode::OK, "the federated list: {body}");
        check_baseline(&body, events);
        for variant in &variants {
            for _ in 0..WARMUP {
                if let Err(err) = bench.once(variant).await {
                    panic!("warm-up: {err}");
                }
            }
        }

        let mut measured: Vec<Measured> = variants.iter().map(|_| Measured::default()).collect();
        for round in 0..rounds {
            bench.ui.log_in_again().await;
            for entry in &mut measured {
                entry.rounds.push(Vec::with_capacity(requests));
            }
            for _ in 0..requests {
                for (variant, entry) in variants.iter().zip(&mut measured) {
                    match bench.once(variant).await {
                        Ok((millis, gateway_cpu, downstream_cpu)) => {
                            entry.rounds[round].push(millis);
                            entry.gateway_cpu += gateway_cpu;
                            entry.downstream_cpu += downstream_cpu;
                            entry.requests += 1;
                        }
                        Err(err) => {
                            entry.wrong += 1;
                            entry.first_wrong.get_or_insert(err);
                        }
                    }
                }
            }
            let line: Vec<String> = variants
                .iter()
                .zip(&measured)
                .map(|(variant, entry)| {
                    let times = sorted(entry.rounds[round].clone());
                    format!(
                        "{} p50 {:.1} / p95 {:.1} ms",
                        variant.label,
                        percentile(&times, 0.50),
                        percentile(&times, 0.95)
                    )
                })
                .collect();
            println!("round {round}: {}", line.join("; "));
        }
        summary(&variants, &measured, &bench, events, rounds, requests);
    });
    println!(
        "command: {ENV_EVENTS}={events} {ENV_ROUNDS}={rounds} {ENV_REQUESTS}={requests} cargo bench -p cairn-tests --bench ui; load average after: {}",
        load_average()
    );
}

fn summary(
    variants: &[Variant],
    measured: &[Measured],
    bench: &Bench,
    events: usize,
    rounds: usize,
    requests: usize,
) {
    let p50s = |entry: &Measured| {
        entry
            .rounds
            .iter()
            .map(|times| percentile(&sorted(times.clone()), 0.50))
            .collect::<Vec<f64>>()
    };
    let baseline = measured
        .last()
        .map_or(f64::NAN, |entry| median(p50s(entry)));
    println!();
    println!("Summary ({events} events over 3 clusters; {rounds} rounds of {requests} requests of each, one at a time)");
    println!();
    println!(
        "| request | p50 ms, median of rounds | p50 per round | p95 ms, all | p50 / baseline | gateway CPU ms/request | downstreams CPU ms/request | wrong answers |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|");
    for (variant, entry) in variants.iter().zip(measured) {
        let per_round = p50s(entry);
        let p50 = median(per_round.clone());
        let all = sorted(entry.rounds.iter().flatten().copied().collect());
        let count = entry.requests.max(1) as f64;
        println!(
            "| {} (`{}`) | {p50:.1} | {} | {:.1} | {:.2} | {:.1} | {:.1} | {} |",
            variant.label,
            variant.path,
            per_round
                .iter()
                .map(|value| format!("{value:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
            percentile(&all, 0.95),
            p50 / baseline,
            entry.gateway_cpu / count * 1e3,
            entry.downstream_cpu / count * 1e3,
            entry.wrong
        );
    }
    for (variant, entry) in variants.iter().zip(measured) {
        if let Some(err) = &entry.first_wrong {
            println!("{}: first wrong answer: {err}", variant.label);
        }
    }
    println!();
    println!(
        "Times are the full request as the client on loopback sees it (send to the last byte of the body): an upper bound of the server's time. CPU: /proc clock ticks (10 ms) summed over the counted requests. Session renewals inside measured requests: {}.",
        bench.ui.renewals
    );
    let page = measured
        .first()
        .map_or(f64::NAN, |entry| median(p50s(entry)));
    let wrong: usize = measured.iter().map(|entry| entry.wrong).sum();
    let met = page < GOAL_MS && wrong == 0;
    println!(
        "goal: the events page (first page, all clusters) answers in < {GOAL_MS} ms: {page:.1} ms (median of the rounds' p50), {}",
        if met { "met" } else { "NOT met" }
    );
}
