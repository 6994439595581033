//! Helpers shared by the asset tests (archives built in memory, a counting HTTP server) and
//! the tests of build selection and the environment.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha512};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::js::EngineConfig;
use crate::model::{Asset, AssetBuild, Entity, System};
use crate::ObjectMeta;

/// One raw tar entry: written without the tar crate's path checks, so attacks can be built.
pub(crate) struct RawEntry {
    pub(crate) path: &'static str,
    pub(crate) kind: tar::EntryType,
    pub(crate) data: Vec<u8>,
    pub(crate) link: &'static str,
    pub(crate) mode: u32,
}

pub(crate) fn file(path: &'static str, data: &[u8], mode: u32) -> RawEntry {
    RawEntry {
        path,
        kind: tar::EntryType::Regular,
        data: data.to_vec(),
        link: "",
        mode,
    }
}

pub(crate) fn dir(path: &'static str) -> RawEntry {
    RawEntry {
        path,
        kind: tar::EntryType::Directory,
        data: Vec::new(),
        link: "",
        mode: 0o755,
    }
}

pub(crate) fn link(path: &'static str, kind: tar::EntryType, target: &'static str) -> RawEntry {
    RawEntry {
        path,
        kind,
        data: Vec::new(),
        link: target,
        mode: 0o777,
    }
}

/// A tar archive of `entries`, names written into the header as they are.
pub(crate) fn tar_bytes(entries: &[RawEntry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        {
            let bytes = header.as_mut_bytes();
            bytes[..100].fill(0);
            bytes[..entry.path.len()].copy_from_slice(entry.path.as_bytes());
            bytes[157..257].fill(0);
            bytes[157..157 + entry.link.len()].copy_from_slice(entry.link.as_bytes());
        }
        header.set_entry_type(entry.kind);
        header.set_mode(entry.mode);
        header.set_size(entry.data.len() as u64);
        header.set_cksum();
        builder.append(&header, entry.data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

pub(crate) fn sha512_hex(bytes: &[u8]) -> String {
    hex::encode(Sha512::digest(bytes))
}

/// A plain HTTP server on loopback that answers every request with `status` and `body`
/// after `delay`, and counts requests and the `authorization` headers it saw.
pub(crate) struct Server {
    pub(crate) url: String,
    pub(crate) requests: Arc<AtomicUsize>,
    pub(crate) headers: Arc<parking_lot::Mutex<Vec<String>>>,
}

impl Server {
    pub(crate) fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

pub(crate) async fn serve(status: u16, body: Vec<u8>, delay: Duration) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let headers = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let body = Arc::new(body);
    let (count, seen) = (requests.clone(), headers.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (count, seen, body) = (count.clone(), seen.clone(), body.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let text = String::from_utf8_lossy(&request).to_string();
                for line in text.lines() {
                    if let Some(value) = line.strip_prefix("authorization: ") {
                        seen.lock().push(value.to_owned());
                    }
                }
                tokio::time::sleep(delay).await;
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Server {
        url: format!("http://{addr}/asset.tar.gz"),
        requests,
        headers,
    }
}

fn entity(os: &str, arch: &str) -> Entity {
    let mut labels = BTreeMap::new();
    labels.insert("token".to_owned(), "s3cr3t".to_owned());
    Entity {
        metadata: Some(ObjectMeta {
            labels,
            ..ObjectMeta::named("default", "host-1")
        }),
        entity_class: "agent".to_owned(),
        system: Some(System {
            os: os.to_owned(),
            arch: arch.to_owned(),
            platform: "debian".to_owned(),
            ..System::default()
        }),
        ..Entity::default()
    }
}

fn build(url: &str, filters: &[&str]) -> AssetBuild {
    AssetBuild {
        url: url.to_owned(),
        sha512: "a".repeat(128),
        filters: filters.iter().map(|filter| (*filter).to_owned()).collect(),
        headers: BTreeMap::new(),
    }
}

fn selector() -> BuildSelector {
    BuildSelector::new(EngineConfig {
        workers: 1,
        ..EngineConfig::default()
    })
}

#[tokio::test]
async fn the_first_build_whose_filters_match_wins() {
    let asset = Asset {
        metadata: Some(ObjectMeta::named("default", "multi")),
        builds: vec![
            build("https://x/windows", &["entity.system.os == 'windows'"]),
            build(
                "https://x/linux-arm",
                &[
                    "entity.system.os == 'linux'",
                    "entity.system.arch == 'arm64'",
                ],
            ),
            build(
                "https://x/linux-amd64",
                &[
                    "entity.system.os == 'linux'",
                    "entity.system.arch == 'amd64'",
                ],
            ),
            build("https://x/any", &[]),
        ],
        ..Asset::default()
    };
    let selector = selector();
    let chosen = resolve(&selector, &asset, &entity("linux", "amd64"))
        .await
        .unwrap();
    assert_eq!(chosen.url, "https://x/linux-amd64");
    let chosen = resolve(&selector, &asset, &entity("darwin", "arm64"))
        .await
        .unwrap();
    assert_eq!(chosen.url, "https://x/any");

    // Metadata is lifted as Sensu's embedded ObjectMeta is.
    let named = Asset {
        metadata: Some(ObjectMeta::named("default", "named")),
        builds: vec![build("https://x/named", &["entity.name == 'host-1'"])],
        ..Asset::default()
    };
    assert!(resolve(&selector, &named, &entity("linux", "amd64"))
        .await
        .is_ok());
}

#[tokio::test]
async fn no_matching_build_names_the_asset_and_the_engine_starts_only_for_filters() {
    let selector = selector();
    let plain = Asset {
        metadata: Some(ObjectMeta::named("default", "plain")),
        url: "https://x/plain".to_owned(),
        sha512: "B".repeat(128),
        ..Asset::default()
    };
    let chosen = resolve(&selector, &plain, &entity("linux", "amd64"))
        .await
        .unwrap();
    assert_eq!(chosen.sha512, "b".repeat(128), "lower-cased");
    assert!(!selector.engine_started());

    let windows_only = Asset {
        metadata: Some(ObjectMeta::named("default", "win")),
        builds: vec![
            build("https://x/w", &["entity.system.os == 'windows'"]),
            build("https://x/broken", &["entity.system.nope.deeper == 1"]),
        ],
        ..Asset::default()
    };
    let error = resolve(&selector, &windows_only, &entity("linux", "amd64"))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with("asset win: no build matches the entity (build 1: "),
        "{message}"
    );
    assert!(selector.engine_started());

    let empty = Asset {
        metadata: Some(ObjectMeta::named("default", "empty")),
        ..Asset::default()
    };
    let error = resolve(&selector, &empty, &entity("linux", "amd64"))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "asset empty has no build (no url and no builds)"
    );

    let short = Asset {
        metadata: Some(ObjectMeta::named("default", "short")),
        url: "https://x/plain".to_owned(),
        sha512: "../../etc".to_owned(),
        ..Asset::default()
    };
    let error = resolve(&selector, &short, &entity("linux", "amd64"))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "asset short: sha512 is not 128 hex digits"
    );
}

#[tokio::test]
async fn header_tokens_are_substituted_and_never_shown() {
    let selector = selector();
    let mut asset = Asset {
        metadata: Some(ObjectMeta::named("default", "private")),
        url: "https://x/private".to_owned(),
        sha512: "c".repeat(128),
        ..Asset::default()
    };
    asset.headers.insert(
        "Authorization".to_owned(),
        "Bearer {{ .labels.token }}".to_owned(),
    );
    let chosen = resolve(&selector, &asset, &entity("linux", "amd64"))
        .await
        .unwrap();
    assert_eq!(
        chosen.headers,
        [("Authorization".to_owned(), "Bearer s3cr3t".to_owned())]
    );
    assert!(!format!("{chosen:?}").contains("s3cr3t"));

    asset.headers.insert(
        "Authorization".to_owned(),
        "Bearer {{ .labels.missing }}".to_owned(),
    );
    let error = resolve(&selector, &asset, &entity("linux", "amd64"))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with("asset private: header Authorization: unmatched token"),
        "{message}"
    );
    assert!(!message.contains("Bearer"), "{message}");
}

#[test]
fn the_environment_prepends_each_asset_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cache = AssetCache::new(CacheConfig::new(dir.path().to_owned()));
    let leases = vec![
        cache::tests::lease(&cache, "sensu/check-cpu-usage", "a"),
        cache::tests::lease(&cache, "other", "b"),
    ];
    let env = asset_env(&leases, |name| {
        (name == "PATH").then(|| "/usr/bin:/bin".to_owned())
    });
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let expected = vec![
        (
            "PATH".to_owned(),
            format!(
                "{}:{}:/usr/bin:/bin",
                a.join("bin").display(),
                b.join("bin").display()
            ),
        ),
        (
            "LD_LIBRARY_PATH".to_owned(),
            format!("{}:{}", a.join("lib").display(), b.join("lib").display()),
        ),
        (
            "CPATH".to_owned(),
            format!(
                "{}:{}",
                a.join("include").display(),
                b.join("include").display()
            ),
        ),
        (
            "SENSU_CHECK_CPU_USAGE_PLUGIN_PATH".to_owned(),
            a.display().to_string(),
        ),
        ("OTHER_PLUGIN_PATH".to_owned(), b.display().to_string()),
    ];
    assert_eq!(env, expected);
    assert!(asset_env(&[], |_| None).is_empty());
}
