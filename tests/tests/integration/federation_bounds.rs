//! Issue 14, finding 5: a hostile downstream cannot exhaust the gateway. A real gateway process
//! has HTTPS servers on loopback registered as clusters that answer far more than any real
//! cluster would (pages of 20 MiB, pages without end, an answer without end), served lazily so
//! that this test stays small; a real `alpha` backend is the healthy cluster beside them.
//!
//! - The federated view answers in bounded time, names the hostile cluster as failed with the
//!   bound it went over and the limit, and still has alpha's rows.
//! - A cluster whose pages of 500 are large but whose rows are real gets all its rows, in
//!   smaller pages.
//! - The proxy answers 502 naming the cluster and the limit instead of relaying an answer
//!   without end.
//! - A replicator to a hostile cluster records the failure in its status (naming the cluster,
//!   the bound and the limit) and backs off; it neither crashes nor loops hot.
//! - Throughout, the gateway's peak RSS (`VmHWM`) grows by less than [`RSS_GROWTH_LIMIT_KIB`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::client::Client;
use cairn_api::Kind;
use cairn_tests::fake_cluster::{read_head, FakeCluster};
use cairn_tests::{check_replicator, cluster_registration, eventually, Backend, FederationKeys};
use serde_json::{json, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A MiB.
const MIB: usize = 1024 * 1024;

/// How much the gateway's peak RSS may grow over a whole test: far above what the bounds let
/// it hold (a request's 64 MiB, an answer's 8 MiB), far below what the hostile clusters send.
const RSS_GROWTH_LIMIT_KIB: u64 = 200 * 1024;

/// How long a federated request or a proxied one may take: below the view's 30-second listing
/// timeout, so that an answer within it was cut by a bound.
const ANSWER_WITHIN: Duration = Duration::from_secs(25);

/// How long a replicator may take to report the failure in its status.
const REPORTED_WITHIN: Duration = Duration::from_secs(30);

/// The most bytes a hostile server sends in one answer, so that a gateway without bounds
/// (the code before the fix) is hurt, not the machine running the test.
const ANSWER_CAP: usize = 1024 * MIB;

/// How a hostile (or merely large) cluster answers every `GET`.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// `pages` pages of `page_bytes` each, rows of `row_bytes` (at least 2: `{}`), chained by
    /// `Sensu-Continue`; `limit` is ignored.
    Pages {
        pages: usize,
        page_bytes: usize,
        row_bytes: usize,
    },
    /// Pages of one row, each with a `Sensu-Continue` to the next, without end.
    EndlessPages,
    /// One answer that never ends (a list of `{}` rows, cut at [`ANSWER_CAP`]).
    EndlessAnswer,
    /// `rows` rows of `row_bytes` each, `limit` at a time, as a real cluster pages them.
    Rows { rows: usize, row_bytes: usize },
}

/// A fake cluster that answers as its [`Behaviour`] says and records every request's target.
struct Hostile {
    url: String,
    ca: String,
    targets: Arc<std::sync::Mutex<Vec<String>>>,
    _server: FakeCluster,
}

impl Hostile {
    async fn start(behaviour: Behaviour) -> Hostile {
        let targets = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = Arc::clone(&targets);
        let server = FakeCluster::start(move |mut stream| {
            let recorded = Arc::clone(&recorded);
            async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                recorded
                    .lock()
                    .expect("not poisoned")
                    .push(head.target.clone());
                // The gateway hanging up ends the answer: that is the point.
                let _ = answer(&mut stream, behaviour, &head.target).await;
                let _ = stream.shutdown().await;
            }
        })
        .await;
        Hostile {
            url: server.url.clone(),
            ca: server.ca.clone(),
            targets,
            _server: server,
        }
    }

    fn targets(&self) -> Vec<String> {
        self.targets.lock().expect("not poisoned").clone()
    }
}

/// Answers one request as `behaviour` says: `200`, a JSON list of rows streamed in chunks as
/// it is made, no `content-length` (the body ends when the connection closes).
async fn answer<S: AsyncWrite + Unpin>(
    stream: &mut S,
    behaviour: Behaviour,
    target: &str,
) -> std::io::Result<()> {
    let query = |name: &str| {
        target
            .split_once('?')
            .and_then(|(_, query)| {
                query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
            })
            .and_then(|value| {
                value
                    .strip_prefix('p')
                    .unwrap_or(value)
                    .parse::<usize>()
                    .ok()
            })
    };
    let page = query("continue").unwrap_or(0);
    let (rows, row_bytes, next) = match behaviour {
        Behaviour::Pages {
            pages,
            page_bytes,
            row_bytes,
        } => (
            page_bytes / (row_bytes + 1),
            row_bytes,
            (page + 1 < pages).then_some(page + 1),
        ),
        Behaviour::EndlessPages => (1, 2, Some(page + 1)),
        Behaviour::EndlessAnswer => (ANSWER_CAP / 3, 2, None),
        Behaviour::Rows {
            rows: total,
            row_bytes,
        } => {
            let limit = query("limit").unwrap_or(total);
            let end = total.min(page + limit);
            (end - page, row_bytes, (end < total).then_some(end))
        }
    };
    let mut head = String::from("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n");
    if let Some(next) = next {
        head.push_str(&format!("sensu-continue: p{next}\r\n"));
    }
    head.push_str("connection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    write_rows(stream, &row(row_bytes), rows).await
}

/// A JSON object of about `bytes` bytes (`{}` for 2).
fn row(bytes: usize) -> String {
    let frame = r#"{"metadata":{"name":"row","namespace":"default"},"pad":""}"#;
    if bytes < frame.len() {
        return "{}".to_owned();
    }
    let pad = "x".repeat(bytes - frame.len());
    format!(r#"{{"metadata":{{"name":"row","namespace":"default"}},"pad":"{pad}"}}"#)
}

/// Writes `[row,row,…]` with `rows` rows, 64 KiB at a time.
async fn write_rows<S: AsyncWrite + Unpin>(
    stream: &mut S,
    row: &str,
    rows: usize,
) -> std::io::Result<()> {
    const CHUNK: usize = 64 * 1024;
    let mut buffer = Vec::with_capacity(CHUNK + row.len() + 2);
    buffer.push(b'[');
    for idx in 0..rows {
        if idx > 0 {
            buffer.push(b',');
        }
        buffer.extend_from_slice(row.as_bytes());
        if buffer.len() >= CHUNK {
            stream.write_all(&buffer).await?;
            buffer.clear();
        }
    }
    buffer.push(b']');
    stream.write_all(&buffer).await
}

/// The peak RSS of a process so far (`VmHWM`), KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    cairn_tests::bench::status_field(&status, "VmHWM:")
}

/// Checks that the gateway's peak RSS grew by less than [`RSS_GROWTH_LIMIT_KIB`] since
/// `baseline` (KiB), `what` having run since.
fn assert_rss_growth(gateway: &Backend, baseline: u64, what: &str) {
    let peak = peak_rss_kib(gateway.pid());
    eprintln!(
        "gateway peak RSS: {} MiB before {what}, {} MiB after",
        baseline / 1024,
        peak / 1024
    );
    assert!(
        peak.saturating_sub(baseline) < RSS_GROWTH_LIMIT_KIB,
        "the gateway's peak RSS grew from {baseline} KiB to {peak} KiB with {what}"
    );
}

/// A gateway and a healthy `alpha` (one entity of its own) registered on it.
struct Federation {
    gateway: Backend,
    admin: Client,
    _alpha: Backend,
    _keys: tempfile::TempDir,
}

impl Federation {
    async fn start() -> Federation {
        let keys_dir = tempfile::tempdir().expect("tempdir");
        let keys = FederationKeys::generate(keys_dir.path());
        let gateway = Backend::start_federated("gateway", &keys);
        let alpha = Backend::start_federated("alpha", &keys);
        let admin = gateway.admin().await;
        alpha
            .admin()
            .await
            .send(
                reqwest::Method::PUT,
                "/api/core/v2/namespaces/default/entities/alpha-host",
                Some(&json!({
                    "metadata": {"name": "alpha-host", "namespace": "default"},
                    "entity_class": "proxy",
                })),
            )
            .await
            .expect("an entity on alpha");
        register(&admin, "alpha", &alpha.url, &alpha.ca()).await;
        Federation {
            gateway,
            admin,
            _alpha: alpha,
            _keys: keys_dir,
        }
    }
}

async fn register(admin: &Client, name: &str, url: &str, ca: &str) {
    admin
        .put_resource(&cluster_registration(name, url, ca))
        .await
        .unwrap_or_else(|err| panic!("register the cluster {name}: {err}"));
}

async fn unregister(admin: &Client, name: &str) {
    admin
        .delete_resource(Kind::Cluster, "", name)
        .await
        .unwrap_or_else(|err| panic!("unregister the cluster {name}: {err}"));
}

/// The federated list of entities, and how long it took.
async fn federated_entities(federation: &Federation) -> (Value, Duration) {
    let started = Instant::now();
    let view = tokio::time::timeout(
        ANSWER_WITHIN,
        federation
            .admin
            .get_json("/api/cairn/v1/federation/entities"),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the federated view did not answer within {ANSWER_WITHIN:?} (the gateway's peak RSS: \
             {} MiB)",
            peak_rss_kib(federation.gateway.pid()) / 1024
        )
    })
    .expect("the federated view answers");
    (view, started.elapsed())
}

/// The rows of the federated list from `cluster`.
fn rows_of(view: &Value, cluster: &str) -> usize {
    view["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|item| item["cluster"] == cluster)
        .count()
}

/// The message of `cluster`'s entry in the federated list's errors.
fn failure_of(view: &Value, cluster: &str) -> Option<String> {
    view["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .find(|error| error["cluster"] == cluster)
        .map(|error| error["message"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn issue_14_the_federated_view_and_the_proxy_bound_what_a_hostile_cluster_answers() {
    let federation = Federation::start().await;
    let (gateway, admin) = (&federation.gateway, &federation.admin);
    let (view, _) = federated_entities(&federation).await;
    assert_eq!(rows_of(&view, "alpha"), 1, "{view:#}");
    let baseline = peak_rss_kib(gateway.pid());

    // Each hostile cluster is registered beside alpha for one request, then removed.
    for (name, behaviour, bound) in [
        (
            "huge-pages",
            Behaviour::Pages {
                pages: 3,
                page_bytes: 20 * MIB,
                row_bytes: 2,
            },
            "the answer is over the limit of 8 MiB for one downstream answer",
        ),
        (
            "many-pages",
            Behaviour::Pages {
                pages: 12,
                page_bytes: 7 * MIB,
                row_bytes: 1024,
            },
            "the downstream answers of this request are over its limit of 64 MiB",
        ),
        (
            "endless-pages",
            Behaviour::EndlessPages,
            "the listing is over the limit of 200 pages",
        ),
        (
            "endless-answer",
            Behaviour::EndlessAnswer,
            "the answer is over the limit of 8 MiB for one downstream answer",
        ),
    ] {
        let hostile = Hostile::start(behaviour).await;
        register(admin, name, &hostile.url, &hostile.ca).await;
        let (view, took) = federated_entities(&federation).await;
        let peak = peak_rss_kib(gateway.pid());
        eprintln!(
            "{name}: answered in {took:?} after {} requests; gateway peak RSS {} MiB (+{} MiB)",
            hostile.targets().len(),
            peak / 1024,
            peak.saturating_sub(baseline) / 1024
        );
        let message = failure_of(&view, name)
            .unwrap_or_else(|| panic!("{name} is not reported as failed: {view:#}"));
        assert!(
            message.starts_with(&format!(
                "cluster {name}: GET /api/core/v2/entities: {bound}"
            )),
            "{name}: {message}"
        );
        assert_eq!(rows_of(&view, name), 0, "{name}: {view:#}");
        assert_eq!(rows_of(&view, "alpha"), 1, "alpha still answers: {view:#}");
        assert_eq!(failure_of(&view, "alpha"), None, "{view:#}");
        unregister(admin, name).await;
    }

    // Large rows that a page of 500 cannot hold come in smaller pages, all of them.
    let large = Hostile::start(Behaviour::Rows {
        rows: 600,
        row_bytes: 20 * 1024,
    })
    .await;
    register(admin, "large-rows", &large.url, &large.ca).await;
    let (view, _) = federated_entities(&federation).await;
    assert_eq!(failure_of(&view, "large-rows"), None, "{view:#}");
    assert_eq!(rows_of(&view, "large-rows"), 600);
    let targets = large.targets();
    assert!(
        targets.iter().any(|target| target.contains("limit=250")),
        "asked again with fewer items: {targets:#?}"
    );
    unregister(admin, "large-rows").await;

    // The proxy: an answer without end is cut at the limit, and alpha is still relayed.
    let endless = Hostile::start(Behaviour::EndlessAnswer).await;
    register(admin, "endless", &endless.url, &endless.ca).await;
    let started = Instant::now();
    let proxied = tokio::time::timeout(
        ANSWER_WITHIN,
        admin
            .via_cluster("endless")
            .send(reqwest::Method::GET, "/api/core/v2/namespaces", None),
    )
    .await
    .unwrap_or_else(|_| panic!("the proxy did not answer within {ANSWER_WITHIN:?}"));
    let (status, message) = cairn_tests::status_of(proxied);
    eprintln!("proxy to endless: {status} in {:?}", started.elapsed());
    assert_eq!(status, reqwest::StatusCode::BAD_GATEWAY, "{message}");
    assert_eq!(
        message,
        "cluster endless: GET /api/core/v2/namespaces: the answer is over the limit of 8 MiB \
         for one downstream answer"
    );
    admin
        .via_cluster("alpha")
        .get_json("/api/core/v2/namespaces")
        .await
        .expect("the proxy to alpha");

    assert_rss_growth(gateway, baseline, "the hostile clusters");
}

/// Listings the replicator started at a server: first pages of its full size (the pages
/// asked again with fewer items, and the next pages, are part of the same listing).
fn listings(hostile: &Hostile) -> usize {
    hostile
        .targets()
        .iter()
        .filter(|target| target.contains("limit=1000") && !target.contains("continue="))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn issue_14_a_replicator_to_a_hostile_cluster_records_the_failure_and_backs_off() {
    let federation = Federation::start().await;
    let (gateway, admin) = (&federation.gateway, &federation.admin);
    let baseline = peak_rss_kib(gateway.pid());
    let huge = Hostile::start(Behaviour::Pages {
        pages: 3,
        page_bytes: 20 * MIB,
        row_bytes: 2,
    })
    .await;
    let endless = Hostile::start(Behaviour::EndlessPages).await;
    let endless_answer = Hostile::start(Behaviour::EndlessAnswer).await;
    register(admin, "huge-pages", &huge.url, &huge.ca).await;
    register(admin, "endless-pages", &endless.url, &endless.ca).await;
    register(
        admin,
        "endless-answer",
        &endless_answer.url,
        &endless_answer.ca,
    )
    .await;
    for (name, cluster) in [
        ("to-huge", "huge-pages"),
        ("to-endless", "endless-pages"),
        ("to-endless-answer", "endless-answer"),
    ] {
        admin
            .put_resource(&check_replicator(name, cluster))
            .await
            .unwrap_or_else(|err| panic!("create the replicator {name}: {err}"));
    }

    for (name, bound) in [
        (
            "to-huge",
            "cluster huge-pages: GET /api/core/v2/checks: the answer is over the limit of 8 MiB \
             for one downstream answer",
        ),
        (
            "to-endless",
            "cluster endless-pages: GET /api/core/v2/checks: the listing is over the limit of \
             200 pages",
        ),
        (
            "to-endless-answer",
            "cluster endless-answer: GET /api/core/v2/checks: the answer is over the limit of \
             8 MiB for one downstream answer",
        ),
    ] {
        let status = eventually(
            &format!("{name} reporting {bound:?}"),
            REPORTED_WITHIN,
            || async {
                let observed = match admin
                    .get_json(&format!("/api/cairn/v1/replicators/{name}"))
                    .await
                {
                    Ok(status) => {
                        let message = status["last_error"]["message"].as_str().unwrap_or_default();
                        if status["state"] == "backing_off" && message.contains(bound) {
                            return Ok(status);
                        }
                        format!("{status:#}")
                    }
                    Err(err) => err.to_string(),
                };
                Err(format!(
                    "{observed}\nthe gateway's peak RSS: {} MiB",
                    peak_rss_kib(gateway.pid()) / 1024
                ))
            },
        )
        .await;
        assert!(status["next_retry_at"].is_u64(), "{status:#}");
    }

    // It backs off: from here on, a few listings in 10 s (the backoff doubles from 250 ms), not
    // a listing after another.
    let servers = [
        ("huge-pages", &huge),
        ("endless-pages", &endless),
        ("endless-answer", &endless_answer),
    ];
    let before: Vec<usize> = servers.iter().map(|(_, server)| listings(server)).collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    for ((name, server), before) in servers.iter().zip(before) {
        let after = listings(server);
        eprintln!("{name}: {} listings in 10 s of backoff", after - before);
        assert!(
            after - before <= 8,
            "{name}: {before} listings, then {after} 10 s later"
        );
    }
    admin
        .get_json("/api/cairn/v1/replicators")
        .await
        .expect("the gateway still answers");

    assert_rss_growth(gateway, baseline, "the replicators");
}
