use std::time::Duration;

use super::*;
use crate::assets::tests::{file, gzip, serve, sha512_hex, tar_bytes, Server};

/// A lease on a build that is not on disk (for the environment's test).
pub(crate) fn lease(cache: &AssetCache, name: &str, sha512: &str) -> AssetLease {
    cache.inner.state.lock().entries.insert(
        sha512.to_owned(),
        Entry {
            bytes: 0,
            last_used: 0,
            leases: 1,
        },
    );
    AssetLease {
        inner: Arc::clone(&cache.inner),
        name: name.to_owned(),
        sha512: sha512.to_owned(),
        path: cache.dir().join(sha512),
    }
}

/// A gzip'd tar with `bin/<tool>` printing `text`.
fn tool_archive(tool: &'static str, text: &str) -> Vec<u8> {
    let script = format!("#!/bin/sh\necho {text}\n");
    let path: &'static str = Box::leak(format!("bin/{tool}").into_boxed_str());
    gzip(&tar_bytes(&[file(path, script.as_bytes(), 0o755)]))
}

fn config(dir: &Path) -> CacheConfig {
    let mut config = CacheConfig::new(dir.join("assets"));
    config.fetch.allow_http = true;
    config.backoff_base = Duration::from_millis(200);
    config.backoff_max = Duration::from_millis(400);
    config
}

async fn served(body: Vec<u8>) -> (Server, ResolvedBuild) {
    let sha512 = sha512_hex(&body);
    let server = serve(200, body, Duration::ZERO).await;
    let build = ResolvedBuild {
        url: server.url.clone(),
        sha512,
        headers: Vec::new(),
    };
    (server, build)
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn a_build_is_downloaded_unpacked_and_leased() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut build) = served(tool_archive("hello", "hi")).await;
    build.headers = vec![("Authorization".to_owned(), "Bearer s3cr3t".to_owned())];
    let cache = AssetCache::new(config(dir.path()));
    let lease = cache.fetch("hello", &build).await.unwrap();
    assert_eq!(*server.headers.lock(), ["Bearer s3cr3t"]);
    assert_eq!(lease.path(), dir.path().join("assets").join(&build.sha512));
    let script = std::fs::read_to_string(lease.path().join("bin/hello")).unwrap();
    assert_eq!(script, "#!/bin/sh\necho hi\n");
    drop(lease);
    cache.fetch("hello", &build).await.unwrap();
    assert_eq!(server.count(), 1);
    assert_eq!(
        leftovers(&dir.path().join("assets").join(".tmp")),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_digest_mismatch_unpacks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut build) = served(tool_archive("hello", "hi")).await;
    build.sha512 = sha512_hex(b"something else");
    let cache = AssetCache::new(config(dir.path()));
    let error = cache.fetch("hello", &build).await.unwrap_err();
    assert!(
        matches!(error, AssetError::DigestMismatch { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.starts_with("asset hello: sha512 mismatch: expected "),
        "{message}"
    );
    assert_eq!(server.count(), 1);
    let assets = dir.path().join("assets");
    assert_eq!(leftovers(&assets), [".tmp"]);
    assert_eq!(leftovers(&assets.join(".tmp")), Vec::<String>::new());
    assert!(cache.installed().is_empty());
}

#[tokio::test]
async fn concurrent_callers_share_one_download() {
    let dir = tempfile::tempdir().unwrap();
    let body = tool_archive("hello", "hi");
    let sha512 = sha512_hex(&body);
    // A slow answer, so that every caller arrives while the download runs.
    let server = serve(200, body, Duration::from_millis(300)).await;
    let build = ResolvedBuild {
        url: server.url.clone(),
        sha512,
        headers: Vec::new(),
    };
    let cache = AssetCache::new(config(dir.path()));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (cache, build) = (cache.clone(), build.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .fetch("hello", &build)
                .await
                .map(|lease| lease.path().to_owned())
        }));
    }
    for task in tasks {
        let path = task.await.unwrap().unwrap();
        assert!(path.join("bin/hello").is_file());
    }
    assert_eq!(server.count(), 1);
    assert_eq!(cache.downloads_started(), 1);
}

#[tokio::test]
async fn a_failure_backs_off_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(503, b"down".to_vec(), Duration::ZERO).await;
    let build = ResolvedBuild {
        url: server.url.clone(),
        sha512: "d".repeat(128),
        headers: Vec::new(),
    };
    let cache = AssetCache::new(config(dir.path()));
    let first = cache.fetch("flaky", &build).await.unwrap_err().to_string();
    assert!(first.ends_with("HTTP status 503"), "{first}");
    let second = cache.fetch("flaky", &build).await.unwrap_err();
    let AssetError::BackingOff {
        reason, retry_in, ..
    } = &second
    else {
        panic!("{second}");
    };
    assert_eq!(reason, &first);
    assert!(*retry_in <= Duration::from_millis(200), "{retry_in:?}");
    assert!(second.to_string().contains("; next try in 1 s"), "{second}");
    assert_eq!(server.count(), 1, "no request while backing off");
    tokio::time::sleep(*retry_in + Duration::from_millis(20)).await;
    let third = cache.fetch("flaky", &build).await.unwrap_err();
    assert!(matches!(third, AssetError::HttpStatus { .. }), "{third}");
    assert_eq!(server.count(), 2);
}

#[tokio::test]
async fn plain_http_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (server, build) = served(tool_archive("hello", "hi")).await;
    let mut config = config(dir.path());
    config.fetch.allow_http = false;
    let cache = AssetCache::new(config);
    let error = cache.fetch("hello", &build).await.unwrap_err().to_string();
    assert_eq!(
        error,
        format!(
            "asset hello: {} is plain http and assets.allow_http is false",
            server.url
        )
    );
    assert_eq!(server.count(), 0);
}

#[tokio::test]
async fn the_cache_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (server, build) = served(tool_archive("hello", "hi")).await;
    {
        let cache = AssetCache::new(config(dir.path()));
        cache.fetch("hello", &build).await.unwrap();
    }
    // A crash's leftovers in `.tmp` are cleared on start.
    let tmp = dir.path().join("assets/.tmp");
    std::fs::create_dir_all(tmp.join("half")).unwrap();
    let cache = AssetCache::new(config(dir.path()));
    let lease = cache.fetch("hello", &build).await.unwrap();
    assert!(lease.path().join("bin/hello").is_file());
    assert_eq!(server.count(), 1);
    assert_eq!(cache.downloads_started(), 0);
    assert_eq!(leftovers(&tmp), Vec::<String>::new());
}

#[tokio::test]
async fn the_least_recently_used_unleased_build_is_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_assets = 2;
    let cache = AssetCache::new(config);
    let (_a_server, a) = served(tool_archive("a", "a")).await;
    let (_b_server, b) = served(tool_archive("b", "b")).await;
    let (_c_server, c) = served(tool_archive("c", "c")).await;
    drop(cache.fetch("a", &a).await.unwrap());
    drop(cache.fetch("b", &b).await.unwrap());
    drop(cache.fetch("a", &a).await.unwrap());
    drop(cache.fetch("c", &c).await.unwrap());
    let mut installed = cache.installed();
    installed.sort();
    let mut expected = vec![a.sha512.clone(), c.sha512.clone()];
    expected.sort();
    assert_eq!(installed, expected);
    assert!(!cache.dir().join(&b.sha512).exists());

    // Builds in use are never evicted: with both held, a third does not fit.
    let _hold_a = cache.fetch("a", &a).await.unwrap();
    let _hold_c = cache.fetch("c", &c).await.unwrap();
    let error = cache.fetch("b", &b).await.unwrap_err().to_string();
    assert!(
        error.starts_with("asset b: the cache cannot hold it"),
        "{error}"
    );
    assert!(cache.dir().join(&a.sha512).join("bin/a").is_file());
}

#[tokio::test]
async fn the_byte_bound_evicts_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    // Each tool is 23 bytes; room for two.
    config.max_bytes = 50;
    let cache = AssetCache::new(config);
    let (_a_server, a) = served(tool_archive("a", "aaaaaaa")).await;
    let (_b_server, b) = served(tool_archive("b", "bbbbbbb")).await;
    let (_c_server, c) = served(tool_archive("c", "ccccccc")).await;
    for (name, build) in [("a", &a), ("b", &b), ("c", &c)] {
        drop(cache.fetch(name, build).await.unwrap());
    }
    let installed = cache.installed();
    assert_eq!(installed.len(), 2, "{installed:?}");
    assert!(!installed.contains(&a.sha512));
}
