//! The HTTP listener of `cairnctl watch --webhook-listen ADDR` (plain HTTP):
//!
//! - `POST /webhook`: a GitHub push webhook, signed with `X-Hub-Signature-256: sha256=<hex>`,
//!   the HMAC-SHA256 of the raw body under the shared secret. A good signature starts a sync
//!   (202); a bad or missing one is refused (401) and starts nothing. Bodies over 1 MiB are
//!   refused (413). A signed delivery seen before (the same body, whatever its
//!   `X-GitHub-Delivery` says, since that header is not signed) is answered 200 and starts
//!   nothing: a captured delivery cannot be replayed to make the watcher sync again and again.
//!   [`Deliveries`] remembers them for [`REPLAY_WINDOW`], at most [`MAX_REMEMBERED_DELIVERIES`].
//!   Without `--webhook-secret-file` the route answers 404.
//! - `GET /status`: the watcher's state as JSON ([`crate::state::WatchState`]).
//! - `GET /healthz`: `ok`.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::ctl::CtlError;
use crate::state::{self, SharedState, WatchState};
use crate::trigger::{Trigger, Triggers};

/// The largest webhook body accepted; GitHub caps its payloads at 25 MB but a push to a
/// manifests repository is far smaller.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// GitHub's signature header.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// How long a signed delivery is remembered as seen: a replay within it starts no sync.
/// GitHub signs only the body, and every push's body differs (its `before`, `after` and
/// commit times), so a body seen again is a replay or a manual redelivery.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// The most deliveries remembered (32 bytes and an instant each, under 1 MiB in all); the
/// oldest are forgotten first.
pub const MAX_REMEMBERED_DELIVERIES: usize = 10_000;

/// The signed deliveries seen within [`REPLAY_WINDOW`], by the SHA-256 of their body.
#[derive(Debug, Default)]
pub(crate) struct Deliveries {
    seen: Mutex<SeenDeliveries>,
}

#[derive(Debug, Default)]
struct SeenDeliveries {
    digests: HashSet<[u8; 32]>,
    order: VecDeque<([u8; 32], Instant)>,
}

impl Deliveries {
    /// Records a verified body; `false` when it was already seen within the window.
    fn first_time(&self, body: &[u8], now: Instant) -> bool {
        let digest: [u8; 32] = Sha256::digest(body).into();
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some((oldest, at)) = seen.order.front().copied() {
            let expired = now.saturating_duration_since(at) > REPLAY_WINDOW;
            if !expired && seen.order.len() < MAX_REMEMBERED_DELIVERIES {
                break;
            }
            seen.order.pop_front();
            seen.digests.remove(&oldest);
        }
        if !seen.digests.insert(digest) {
            return false;
        }
        seen.order.push_back((digest, now));
        true
    }
}

/// The webhook's shared secret. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// A secret from its bytes.
    pub fn new(bytes: &[u8]) -> Secret {
        Secret(Arc::from(bytes))
    }

    /// Reads `--webhook-secret-file`: its contents without trailing whitespace (the newline
    /// an editor or `echo` leaves).
    ///
    /// # Errors
    /// When the file cannot be read or holds nothing but whitespace.
    pub fn from_file(path: &Path) -> Result<Secret, CtlError> {
        let bytes = std::fs::read(path).map_err(|err| CtlError::ReadFailed {
            path: path.to_owned(),
            reason: format!("cannot read the webhook secret: {err}"),
        })?;
        let secret = bytes.trim_ascii_end();
        if secret.is_empty() {
            return Err(CtlError::Usage(format!(
                "the webhook secret file {} is empty",
                path.display()
            )));
        }
        Ok(Secret::new(secret))
    }
}

/// Why a webhook's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` header.
    #[error("no X-Hub-Signature-256 header")]
    Missing,
    /// The header is not `sha256=` and hex.
    #[error("X-Hub-Signature-256 is not sha256=<hex>")]
    Malformed,
    /// The HMAC does not match: another secret, or a changed body.
    #[error("the signature does not match")]
    Mismatch,
}

/// Checks GitHub's `X-Hub-Signature-256` header (`sha256=<hex>`) against the HMAC-SHA256 of
/// `body` under `secret`, in constant time.
///
/// # Errors
/// [`SignatureError`] when the header is missing, malformed or does not match.
pub fn verify_signature(
    secret: &Secret,
    body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_digest = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    let signature = hex::decode(hex_digest).map_err(|_| SignatureError::Malformed)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&signature)
        .map_err(|_| SignatureError::Mismatch)
}

/// What the handlers share with the watch loop.
#[derive(Debug, Clone)]
pub(crate) struct App {
    /// Where a verified webhook asks for a sync.
    pub(crate) triggers: Arc<Triggers>,
    /// What `/status` serves.
    pub(crate) state: SharedState,
    /// `None`: `/webhook` is off.
    pub(crate) secret: Option<Secret>,
    /// The deliveries already acted on, so that a replay starts nothing.
    pub(crate) deliveries: Arc<Deliveries>,
}

/// Binds the listener.
///
/// # Errors
/// [`CtlError::Usage`] naming the address when it cannot be bound.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, CtlError> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| CtlError::Usage(format!("cannot listen on {addr}: {err}")))
}

/// The routes.
pub(crate) fn router(app: App) -> Router {
    let webhook = if app.secret.is_some() {
        post(receive)
    } else {
        any(disabled)
    };
    Router::new()
        .route("/webhook", webhook)
        .route("/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::new(app))
}

/// A running listener.
#[derive(Debug)]
pub(crate) struct Listener {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Listener {
    /// Stops accepting, lets requests in flight finish (for a few seconds at most).
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// Serves `app` on `listener` until [`Listener::shutdown`].
pub(crate) fn serve(listener: TcpListener, app: App) -> Listener {
    let (stop, stopped) = oneshot::channel::<()>();
    let service = router(app).into_make_service_with_connect_info::<SocketAddr>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, service)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
        if let Err(err) = served {
            tracing::warn!("the webhook listener stopped: {err}");
        }
    });
    Listener { stop, task }
}

async fn receive(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let Some(secret) = &app.secret else {
        return disabled().await;
    };
    let header = headers
        .get(SIGNATURE_HEADER)
        .map(|value| value.to_str().unwrap_or_default());
    if let Err(err) = verify_signature(secret, &body, header) {
        tracing::warn!(%peer, "refused a webhook: {err}");
        return (StatusCode::UNAUTHORIZED, "invalid signature\n");
    }
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let event = header_text("x-github-event");
    let delivery = header_text("x-github-delivery");
    if !app.deliveries.first_time(&body, Instant::now()) {
        tracing::warn!(%peer, event, delivery, "webhook replayed (this signed body was already received); not syncing");
        return (StatusCode::OK, "already received; not syncing again\n");
    }
    if event == "ping" {
        tracing::info!(%peer, delivery, "webhook ping");
        return (StatusCode::OK, "pong\n");
    }
    tracing::info!(%peer, event, delivery, "webhook accepted; syncing");
    app.triggers.fire(Trigger::Webhook);
    (StatusCode::ACCEPTED, "sync queued\n")
}

async fn disabled() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "webhook disabled: the watcher runs without --webhook-secret-file\n",
    )
}

async fn status(State(app): State<Arc<App>>) -> Json<WatchState> {
    Json(state::lock(&app.state).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures::FutureExt;

    use crate::sync::{SyncCounts, SyncReport, SyncResult};
    use crate::trigger::Reasons;

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn githubs_documented_example_verifies() {
        // The example in GitHub's "Validating webhook deliveries".
        let secret = Secret::new(b"It's a Secret to Everybody");
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            verify_signature(&secret, b"Hello, World!", Some(header)),
            Ok(())
        );
        assert_eq!(
            sign(b"It's a Secret to Everybody", b"Hello, World!"),
            header
        );
    }

    #[test]
    fn signatures_are_checked() {
        let secret = Secret::new(b"s3cret");
        let body = br#"{"ref":"refs/heads/main","after":"0123abc"}"#;
        let good = sign(b"s3cret", body);
        assert_eq!(verify_signature(&secret, body, Some(&good)), Ok(()));
        assert_eq!(
            verify_signature(
                &secret,
                body,
                Some(&good.to_uppercase().replace("SHA256=", "sha256="))
            ),
            Ok(()),
            "hex case does not matter"
        );
        // Another secret, a changed body, a truncated digest.
        let other = sign(b"not the secret", body);
        assert_eq!(
            verify_signature(&secret, body, Some(&other)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&secret, b"{}", Some(&good)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&secret, body, Some(&good[..good.len() - 2])),
            Err(SignatureError::Mismatch)
        );
        // The bare hex without its prefix, GitHub's old SHA-1 header, junk, nothing.
        assert_eq!(
            verify_signature(&secret, body, Some(good.trim_start_matches("sha256="))),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(&secret, body, Some("sha1=0123456789abcdef")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(&secret, body, Some("sha256=not-hex")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(&secret, body, None),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn the_secret_file_is_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret \n").unwrap();
        let secret = Secret::from_file(&path).unwrap();
        assert_eq!(&*secret.0, b"s3cret");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        std::fs::write(&path, " \n").unwrap();
        let empty = Secret::from_file(&path).unwrap_err().to_string();
        assert!(
            empty.contains("empty") && empty.contains("secret"),
            "{empty}"
        );
        let missing = Secret::from_file(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope"), "{missing}");
    }

    struct Served {
        url: String,
        triggers: Arc<Triggers>,
        listener: Listener,
    }

    async fn start(secret: Option<&[u8]>) -> Served {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let triggers = Arc::new(Triggers::default());
        let state: SharedState = Arc::default();
        {
            let mut state = state::lock(&state);
            state.source = "repo.git at main".to_owned();
            state.last_sync = Some(SyncReport {
                source: "repo.git".to_owned(),
                commit: Some("abc".to_owned()),
                started_at: 7,
                duration_ms: 3,
                result: SyncResult::InSync,
                counts: SyncCounts::default(),
                errors: Vec::new(),
                lines: Vec::new(),
            });
        }
        let app = App {
            triggers: Arc::clone(&triggers),
            state,
            secret: secret.map(Secret::new),
            deliveries: Arc::default(),
        };
        Served {
            url,
            triggers,
            listener: serve(listener, app),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_signed_webhooks_trigger_a_sync() {
        let served = start(Some(b"s3cret")).await;
        let client = crate::status::http_client().unwrap();
        let body = br#"{"ref":"refs/heads/main"}"#.to_vec();
        let post = |signature: Option<String>, body: Vec<u8>| {
            let mut request = client
                .post(format!("{}/webhook", served.url))
                .header("x-github-event", "push")
                .body(body);
            if let Some(signature) = signature {
                request = request.header("X-Hub-Signature-256", signature);
            }
            request.send()
        };

        let refused = post(None, body.clone()).await.unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        let refused = post(Some(sign(b"wrong", &body)), body.clone())
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            served.triggers.next().now_or_never(),
            None,
            "refused webhooks trigger nothing"
        );

        let too_big = vec![b'x'; MAX_BODY_BYTES + 1];
        let refused = post(Some(sign(b"s3cret", &too_big)), too_big)
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(served.triggers.next().now_or_never(), None);

        let accepted = post(Some(sign(b"s3cret", &body)), body.clone())
            .await
            .unwrap();
        assert_eq!(accepted.status(), StatusCode::ACCEPTED);
        assert_eq!(
            served.triggers.next().now_or_never(),
            Some(Reasons::of(Trigger::Webhook))
        );

        // The captured delivery, replayed (with or without another delivery id, which GitHub
        // does not sign): answered, but no second sync.
        for delivery in ["72d3162e-cc78-11e3-81ab-4c9367dc0958", "another-id"] {
            let replayed = client
                .post(format!("{}/webhook", served.url))
                .header("x-github-event", "push")
                .header("x-github-delivery", delivery)
                .header("X-Hub-Signature-256", sign(b"s3cret", &body))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(replayed.status(), StatusCode::OK, "replay as {delivery}");
            assert_eq!(
                served.triggers.next().now_or_never(),
                None,
                "a replayed delivery started a sync"
            );
        }
        // The next push (another body) syncs.
        let next = br#"{"ref":"refs/heads/main","after":"b"}"#.to_vec();
        let accepted = post(Some(sign(b"s3cret", &next)), next).await.unwrap();
        assert_eq!(accepted.status(), StatusCode::ACCEPTED);
        assert_eq!(
            served.triggers.next().now_or_never(),
            Some(Reasons::of(Trigger::Webhook))
        );

        let get = client
            .get(format!("{}/webhook", served.url))
            .send()
            .await
            .unwrap();
        assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
        served.listener.shutdown().await;
    }

    #[test]
    fn deliveries_are_forgotten_after_the_window_and_beyond_the_bound() {
        let deliveries = Deliveries::default();
        let start = Instant::now();
        assert!(deliveries.first_time(b"a", start));
        assert!(!deliveries.first_time(b"a", start + Duration::from_secs(60)));
        assert!(deliveries.first_time(b"a", start + REPLAY_WINDOW + Duration::from_secs(1)));
        let bounded = Deliveries::default();
        for idx in 0..=MAX_REMEMBERED_DELIVERIES {
            assert!(bounded.first_time(idx.to_string().as_bytes(), start));
        }
        let seen = bounded.seen.lock().unwrap();
        assert_eq!(seen.order.len(), MAX_REMEMBERED_DELIVERIES);
        assert_eq!(seen.digests.len(), MAX_REMEMBERED_DELIVERIES);
        drop(seen);
        // The oldest went first.
        assert!(bounded.first_time(b"0", start));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_and_health_are_served_and_webhook_is_off_without_a_secret() {
        let served = start(None).await;
        let client = crate::status::http_client().unwrap();
        let body = b"{}".to_vec();
        let response = client
            .post(format!("{}/webhook", served.url))
            .header("X-Hub-Signature-256", sign(b"anything", &body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(served.triggers.next().now_or_never(), None);

        let health = client
            .get(format!("{}/healthz", served.url))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        assert_eq!(health.text().await.unwrap().trim(), "ok");

        let status: WatchState = client
            .get(format!("{}/status", served.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(status.source, "repo.git at main");
        assert_eq!(
            status.last_sync.and_then(|report| report.commit).as_deref(),
            Some("abc")
        );

        // `cairnctl status --url` reads the same, with or without the path.
        for url in [format!("{}/status", served.url), served.url.clone()] {
            let args = crate::cli::StatusArgs {
                status_file: None,
                url: Some(url),
                json: false,
            };
            let report = crate::status::run(&args).await.unwrap();
            let text = report.lines.join("\n");
            assert!(text.contains("repo.git at main"), "{text}");
            assert!(text.contains("in sync"), "{text}");
        }
        served.listener.shutdown().await;
    }

    #[tokio::test]
    async fn a_taken_address_is_a_usage_error_naming_it() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err();
        assert!(matches!(err, CtlError::Usage(_)));
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        drop(taken);
    }
}
