//! Runtime assets on the backend (issue 19, item 1): a real backend started with
//! `--assets-trusted-ca-file` fetches, over HTTPS from a local server under a CA of its own,
//! the assets of a pipe handler (its command a script of the asset, which gets the event on
//! stdin through a mutator that is itself a script of the same asset) and of a filter (a
//! JavaScript function its expression calls); a handler whose asset has a wrong sha512 fails
//! with the asset and the reason in the log, nothing of it unpacked, and the other handlers of
//! the event still run. The handlers are contained as always: the cache is outside the data
//! dir, so they can run what it holds.

use std::collections::HashMap;
use std::time::Duration;

use cairn_tests::{eventually, Backend, BackendOptions};
use serde_json::{json, Value};

use super::assets::{package, script, sha512_hex, AssetServer};
use super::corpus_pipeline::{events_of, proxy, put, recorder, send, wait_recorded};

/// How long a handler run may take to show.
const WITHIN: Duration = Duration::from_secs(30);

fn namespaced(plural: &str, name: &str) -> String {
    format!("/api/core/v2/namespaces/default/{plural}/{name}")
}

#[tokio::test(flavor = "multi_thread")]
async fn handlers_mutators_and_filters_run_with_their_assets() {
    let tools = package(&[
        (
            "bin/record-event",
            script("cat > \"$1\"\nprintf '%s\\n' \"$PATH\" > \"$1.path\""),
        ),
        ("bin/shout", script("printf 'mutated:'\ncat")),
    ]);
    let library = package(&[(
        "lib/severity.js",
        script_text("function is_critical(event) { return event.check.status == 2; }"),
    )]);
    let tools_sha = sha512_hex(&tools);
    let library_sha = sha512_hex(&library);
    let server = AssetServer::start(
        HashMap::from([
            ("/tools.tar.gz".to_owned(), tools),
            ("/library.tar.gz".to_owned(), library),
        ]),
        Duration::ZERO,
    )
    .await;
    let work = tempfile::tempdir().expect("tempdir");
    let ca = work.path().join("assets-ca.pem");
    std::fs::write(&ca, server.ca()).expect("write the CA");
    let out = work.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    let backend = Backend::start_with(
        BackendOptions::default()
            .arg("--assets-trusted-ca-file")
            .arg(&ca)
            .capture_logs(),
    );
    let admin = backend.admin().await;

    let asset = |name: &str, url: String, sha512: &str| json!({"metadata": {"name": name, "namespace": "default"}, "url": url, "sha512": sha512});
    put(
        &admin,
        &namespaced("assets", "tools"),
        &asset("tools", server.url("/tools.tar.gz"), &tools_sha),
    )
    .await;
    put(
        &admin,
        &namespaced("assets", "severity"),
        &asset("severity", server.url("/library.tar.gz"), &library_sha),
    )
    .await;
    let wrong_sha = "ab".repeat(64);
    put(
        &admin,
        &namespaced("assets", "broken"),
        &asset("broken", server.url("/tools.tar.gz"), &wrong_sha),
    )
    .await;
    put(
        &admin,
        &namespaced("mutators", "shouting"),
        &json!({
            "metadata": {"name": "shouting", "namespace": "default"},
            "command": "shout",
            "runtime_assets": ["tools"],
        }),
    )
    .await;
    let handled = out.join("handled");
    put(
        &admin,
        &namespaced("handlers", "from-asset"),
        &json!({
            "metadata": {"name": "from-asset", "namespace": "default"},
            "type": "pipe",
            "command": format!("record-event '{}'", handled.display()),
            "mutator": "shouting",
            "runtime_assets": ["tools"],
            "timeout": 10,
        }),
    )
    .await;
    let broken_ran = out.join("broken-ran");
    put(
        &admin,
        &namespaced("handlers", "broken"),
        &json!({
            "metadata": {"name": "broken", "namespace": "default"},
            "type": "pipe",
            "command": format!("touch '{}'", broken_ran.display()),
            "runtime_assets": ["broken"],
            "timeout": 10,
        }),
    )
    .await;
    put(
        &admin,
        &namespaced("filters", "critical"),
        &json!({
            "metadata": {"name": "critical", "namespace": "default"},
            "action": "allow",
            "expressions": ["is_critical(event)"],
            "runtime_assets": ["severity"],
        }),
    )
    .await;
    recorder(&admin, &out, "critical-only", &["critical"], "").await;

    // A warning first: the filter drops it; the pipeline takes events in order.
    let check = |name: &str, status: u64, handlers: Value| json!({"metadata": {"name": name}, "status": status, "output": "x", "handlers": handlers});
    send(
        &admin,
        proxy("web-1", json!({})),
        check("disk", 1, json!(["critical-only"])),
    )
    .await;
    send(
        &admin,
        proxy("web-1", json!({})),
        check("http", 2, json!(["from-asset", "critical-only", "broken"])),
    )
    .await;

    let filtered = wait_recorded(&backend, &out, "critical-only", 1).await;
    let events = events_of(&filtered);
    assert_eq!(events.len(), 1, "{filtered:?}");
    assert_eq!(events[0]["check"]["metadata"]["name"], "http");

    let got = eventually("the asset's handler ran", WITHIN, || async {
        match std::fs::read_to_string(&handled) {
            Ok(text) if text.ends_with('}') => Ok(text),
            _ => Err(format!("not yet; backend log:\n{}", backend.log())),
        }
    })
    .await;
    let json = got
        .strip_prefix("mutated:")
        .unwrap_or_else(|| panic!("the mutator did not run: {got}"));
    let event: Value = serde_json::from_str(json).expect("the event on stdin");
    assert_eq!(event["check"]["metadata"]["name"], "http");
    let path = std::fs::read_to_string(handled.with_extension("path")).expect("the PATH");
    let cache = backend.data_dir.with_file_name("data-assets");
    let cache = cache.canonicalize().expect("the cache folder");
    assert!(
        path.starts_with(&format!("{}/", cache.display())),
        "PATH {path} does not start with the cache {}",
        cache.display()
    );

    let log = eventually("the broken handler failed", WITHIN, || async {
        let log = backend.log();
        if log.contains("sha512") && log.contains("asset broken") {
            Ok(log)
        } else {
            Err(format!("not yet; backend log:\n{log}"))
        }
    })
    .await;
    assert!(!broken_ran.exists(), "the broken handler ran");
    let builds: Vec<String> = std::fs::read_dir(&cache)
        .expect("list the cache")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    assert!(
        builds.iter().all(|name| !name.starts_with("abab")),
        "the refused build was unpacked: {builds:?}\n{log}"
    );
    assert_eq!(builds.len(), 2, "{builds:?}");
    // The mutator and the handler share one download of `tools`, and the broken asset's
    // download was refused once (a retry waits for its backoff).
    assert_eq!(server.count("/tools.tar.gz"), 2, "{log}");
    assert_eq!(server.count("/library.tar.gz"), 1);
}

/// `text` as the contents of a file that is not a script (a library).
fn script_text(text: &str) -> super::assets::Content {
    super::assets::Content::Script(text.to_owned())
}
