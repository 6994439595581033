//! The event pipeline is bounded in bytes (issue 14, finding 4): a real backend with a handler
//! that never keeps up receives 500 events of 400 KiB through the REST API. Every event is
//! stored and acknowledged; the pipeline holds at most `--pipeline-queue-mib` of them, drops
//! and counts the rest, and the backend's memory stays near that bound.

use std::time::Duration;

use cairn_api::client::Client;
use cairn_tests::bench::rss_kib;
use cairn_tests::{metrics, Backend, BackendOptions};
use reqwest::Method;
use serde_json::json;

/// Events sent, and the size of each one's check output.
const EVENTS: usize = 500;
const OUTPUT_BYTES: usize = 400 * 1024;
/// The pipeline's limit for this test, MiB.
const QUEUE_MIB: u64 = 16;
/// The embedded store's page cache for this test, MiB.
const STORE_CACHE_MIB: u64 = 16;
/// The most the backend's RSS may grow over the run, MiB: the pipeline's bytes twice (an event
/// in memory and its JSON for the handlers), the store's cache, allocator slack and the
/// requests in flight. Measured: +26 MiB; with only the count bounded (`--pipeline-queue-mib
/// 100000`), +210 MiB.
const RSS_GROWTH_LIMIT_MIB: u64 = 80;

async fn put(admin: &Client, path: &str, body: &serde_json::Value) {
    let response = admin
        .send(Method::PUT, path, Some(body))
        .await
        .unwrap_or_else(|err| panic!("PUT {path}: {err}"));
    assert!(response.status().is_success(), "PUT {path}: {response:?}");
}

/// Stores event `idx`: a failing check `probe-<idx % 10>` of the proxy entity `target` with
/// [`OUTPUT_BYTES`] of output, handled by `slow`.
async fn send_event(admin: &Client, idx: usize) {
    let check = format!("probe-{}", idx % 10);
    let event = json!({
        "entity": {"entity_class": "proxy", "metadata": {"name": "target"}},
        "check": {
            "metadata": {"name": check},
            "status": 2,
            "interval": 60,
            "handlers": ["slow"],
            "output": "x".repeat(OUTPUT_BYTES),
        },
    });
    put(
        admin,
        &format!("/api/core/v2/namespaces/default/events/target/{check}"),
        &event,
    )
    .await;
}

/// The value of the counter `name` in the metrics text (0 when absent).
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_behind_a_slow_handler_are_bounded_in_bytes() {
    // The store's page cache is kept small too, so that what grows is the pipeline's.
    let backend = Backend::start_with(BackendOptions::default().args([
        "--pipeline-queue-mib",
        &QUEUE_MIB.to_string(),
        "--store-cache-mib",
        &STORE_CACHE_MIB.to_string(),
    ]));
    let admin = backend.admin().await;
    // A handler that never keeps up: each run sleeps far beyond the test.
    put(
        &admin,
        "/api/core/v2/namespaces/default/handlers/slow",
        &json!({
            "metadata": {"name": "slow", "namespace": "default"},
            "type": "pipe",
            "command": "sleep 300",
            "timeout": 600,
        }),
    )
    .await;
    // Warm up: the first events of each check (entity creation, the store's first pages).
    for idx in 0..20 {
        send_event(&admin, idx).await;
    }
    let rss_before = rss_kib(backend.pid());

    // 500 more from four clients at once; each is stored (2xx) whatever the pipeline does.
    let senders = (0..4).map(|client| {
        let admin = admin.clone();
        async move {
            for idx in (client..EVENTS).step_by(4) {
                send_event(&admin, idx).await;
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(300), futures::future::join_all(senders))
        .await
        .expect("500 events sent within 5 minutes");
    let rss_after = rss_kib(backend.pid());

    let metrics = metrics(&admin).await;
    let queued = counter(&metrics, "cairn_pipeline_events_queued_total");
    let dropped = counter(&metrics, "cairn_pipeline_events_dropped_bytes_total");
    let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
    eprintln!(
        "RSS {} MiB -> {} MiB (+{growth_mib} MiB); {queued} queued, {dropped} dropped",
        rss_before / 1024,
        rss_after / 1024
    );
    // At most 16 MiB of 400 KiB events fit: the rest were dropped and counted.
    let fit = QUEUE_MIB * 1024 * 1024 / OUTPUT_BYTES as u64;
    assert!(
        queued <= fit && queued >= 10,
        "{queued} events queued; {fit} fit in {QUEUE_MIB} MiB"
    );
    assert!(
        dropped + queued >= (EVENTS + 20) as u64,
        "{dropped} dropped + {queued} queued of {} events",
        EVENTS + 20
    );
    assert!(
        growth_mib < RSS_GROWTH_LIMIT_MIB,
        "the backend grew by {growth_mib} MiB (limit {RSS_GROWTH_LIMIT_MIB} MiB)"
    );
}
