//! The local event API, for scripts on the host (Sensu's agent API on port 3031).
//!
//! - `POST /events`: a Sensu event as JSON (the core/v2 wire form, as the backend's
//!   `/api/core/v2/namespaces/{ns}/events` takes it). It needs a check with a name, or metrics.
//!   A valid event is answered 202 and handed to the agent on the channel; the entity the event
//!   carries, if any, is passed along as is, and the agent sets its own. A missing `timestamp`
//!   is set to now. Errors are `{"message": …}`: 400 naming what is wrong, 413 over
//!   [`EVENT_BODY_LIMIT`], 503 `queue full` when the channel is full (the client may retry).
//! - `GET /healthz`: 200 `ok` while the agent is connected to a backend, else 503 `not connected
//!   to a backend`.
//!
//! Only local programs may use it, never a web page the host's browser shows: every request
//! must name a loopback host in `Host` (`127.0.0.1`, `localhost` or `[::1]`, with any port),
//! which defeats DNS rebinding, and must carry no `Origin` header (browsers send one on
//! cross-site requests; curl and scripts do not): 403 otherwise. `POST /events` also needs
//! `Content-Type: application/json` (415 otherwise), as Sensu's docs send it, so that an HTML
//! form (`text/plain`, `application/x-www-form-urlencoded`) cannot post an event.
//!
//! Sensu's TCP/UDP check-result socket (port 3030) is [`crate::socket`]; its events are checked
//! here too ([`check_event`]).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cairn_api::model::{Entity, Event};
use cairn_api::problem::Segment;
use cairn_api::{FieldPath, Kind, ObjectMeta, Resource, Spec};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::debug;

/// Largest event body accepted, bytes.
pub const EVENT_BODY_LIMIT: usize = 512 * 1024;

/// Serves the local API on `listener` until the listener fails.
///
/// Events go to `events`; `health` says whether the agent is connected to a backend.
///
/// # Errors
/// What accepting connections on the listener fails with.
pub async fn serve(
    listener: TcpListener,
    events: mpsc::Sender<Event>,
    health: Arc<AtomicBool>,
) -> io::Result<()> {
    axum::serve(listener, router(events, health)).await
}

#[derive(Clone)]
struct LocalApi {
    events: mpsc::Sender<Event>,
    health: Arc<AtomicBool>,
}

fn router(events: mpsc::Sender<Event>, health: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/events", post(post_event))
        .route("/healthz", get(healthz))
        .layer(axum::middleware::from_fn(local_callers_only))
        .with_state(LocalApi { events, health })
}

/// Refuses requests a browser could make on a web page's behalf (see the module docs).
async fn local_callers_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(refusal) = foreign_caller(request.headers()) {
        debug!(message = %refusal.message, "local API refused a request");
        return refusal.into_response();
    }
    next.run(request).await
}

/// Why a request does not come from a local program, if it does not.
fn foreign_caller(headers: &HeaderMap) -> Option<Refusal> {
    let forbidden = |message: String| Refusal {
        status: StatusCode::FORBIDDEN,
        message,
    };
    if headers.contains_key(header::ORIGIN) {
        return Some(forbidden(
            "requests with an Origin header (from a web page) are refused: the local API is for programs on this host".to_owned(),
        ));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !is_loopback_host(host) {
        return Some(forbidden(format!(
            "Host \"{host}\" is not a loopback address: use 127.0.0.1, localhost or [::1]"
        )));
    }
    None
}

/// Whether a `Host` header names the loopback interface: `127.0.0.1`, `localhost` or
/// `[::1]`, each with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((name, rest)) if rest.is_empty() || is_port(rest) => return name == "::1",
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if is_port(&format!(":{port}")) => name,
            Some(_) => return false,
            None => host,
        },
    };
    name == "127.0.0.1" || name.eq_ignore_ascii_case("localhost")
}

fn is_port(text: &str) -> bool {
    text.strip_prefix(':')
        .is_some_and(|port| !port.is_empty() && port.parse::<u16>().is_ok())
}

/// A refused request: status and `{"message"}`.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    fn too_large() -> Refusal {
        Refusal {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the event is larger than {} KiB", EVENT_BODY_LIMIT / 1024),
        }
    }

    fn unavailable(message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "message": self.message })),
        )
            .into_response()
    }
}

async fn post_event(State(api): State<LocalApi>, headers: HeaderMap, body: Body) -> Response {
    match accept_event(&api, &headers, body).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(refusal) => {
            debug!(status = %refusal.status, message = %refusal.message, "local API refused an event");
            refusal.into_response()
        }
    }
}

async fn accept_event(api: &LocalApi, headers: &HeaderMap, body: Body) -> Result<(), Refusal> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > EVENT_BODY_LIMIT as u64) {
        return Err(Refusal::too_large());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(Refusal {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: "an event must be sent as Content-Type: application/json".to_owned(),
        });
    }
    let bytes = axum::body::to_bytes(body, EVENT_BODY_LIMIT)
        .await
        .map_err(|_| Refusal::too_large())?;
    let event = parse_event(&bytes)?;
    api.events.try_send(event).map_err(|error| match error {
        mpsc::error::TrySendError::Full(_) => Refusal::unavailable("queue full"),
        mpsc::error::TrySendError::Closed(_) => Refusal::unavailable("the agent is shutting down"),
    })
}

/// Decodes and checks a posted event.
fn parse_event(bytes: &[u8]) -> Result<Event, Refusal> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|error| {
        Refusal::bad_request(format!(
            "malformed JSON at line {} column {}: {error}",
            error.line(),
            error.column()
        ))
    })?;
    let resource = Resource::from_wire(Kind::Event, value)
        .map_err(|issue| Refusal::bad_request(issue.to_string()))?;
    let Spec::Event(event) = resource.spec else {
        return Err(Refusal::bad_request("the body is not an event"));
    };
    let mut event = *event;
    if resource.metadata != ObjectMeta::default() {
        event.metadata = Some(resource.metadata);
    }
    check_event(event).map_err(Refusal::bad_request)
}

/// Checks an event from a local program (the local API's or the socket's) as the backend will,
/// the agent's entity standing in for the one it sets, and sets a missing `timestamp` to now.
///
/// # Errors
/// What is wrong, naming the field (`check.metadata.name: must not be empty`).
pub(crate) fn check_event(mut event: Event) -> Result<Event, String> {
    // The agent sets the entity, so check the rest with a stand-in.
    let mut probe = event.clone();
    probe.entity = Some(Entity {
        metadata: Some(ObjectMeta::named("", "local")),
        ..Entity::default()
    });
    let probe = Resource::new(ObjectMeta::default(), Spec::Event(Box::new(probe)));
    if let Some(issue) = cairn_api::validate::validate(&probe)
        .into_iter()
        .find(cairn_api::Issue::is_error)
    {
        let path = without_spec(&issue.path);
        return Err(if path.is_root() {
            issue.message
        } else {
            format!("{path}: {}", issue.message)
        });
    }
    if event.timestamp == 0 {
        event.timestamp = unix_now();
    }
    Ok(event)
}

/// Validation speaks of a manifest (`spec.check…`); the posted body has no `spec`.
fn without_spec(path: &FieldPath) -> FieldPath {
    let segments = match path.segments() {
        [Segment::Key(first), rest @ ..] if first == "spec" => rest,
        segments => segments,
    };
    segments
        .iter()
        .fold(FieldPath::root(), |path, segment| match segment {
            Segment::Key(key) => path.key(key),
            Segment::Index(idx) => path.index(*idx),
        })
}

async fn healthz(State(api): State<LocalApi>) -> Response {
    if api.health.load(Ordering::Acquire) {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to a backend",
        )
            .into_response()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    struct Server {
        addr: SocketAddr,
        events: mpsc::Receiver<Event>,
        health: Arc<AtomicBool>,
        task: tokio::task::JoinHandle<io::Result<()>>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn start(capacity: usize) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sender, events) = mpsc::channel(capacity);
        let health = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(serve(listener, sender, Arc::clone(&health)));
        Server {
            addr,
            events,
            health,
            task,
        }
    }

    /// One HTTP/1.1 exchange; returns the status and the body.
    async fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(body).await.unwrap();
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.unwrap();
            let response = String::from_utf8(response).unwrap();
            let (head, body) = response.split_once("\r\n\r\n").expect(&response);
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|status| status.parse().ok())
                .expect(head);
            (status, body.to_owned())
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the server answers")
    }

    async fn post(addr: SocketAddr, body: &[u8]) -> (u16, String) {
        let head = format!(
            "POST /events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        exchange(addr, &head, body).await
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        exchange(addr, &head, b"").await
    }

    fn message(body: &str) -> String {
        let json: serde_json::Value = serde_json::from_str(body).expect(body);
        json["message"].as_str().expect(body).to_owned()
    }

    #[tokio::test]
    async fn a_valid_event_is_accepted_and_handed_on() {
        let mut server = start(4).await;
        let body = br#"{"check": {"metadata": {"name": "backup"}, "status": 1, "output": "late"}}"#;
        let (status, _) = post(server.addr, body).await;
        assert_eq!(status, 202);
        let event = tokio::time::timeout(Duration::from_secs(5), server.events.recv())
            .await
            .unwrap()
            .unwrap();
        let check = event.check.unwrap();
        assert_eq!(check.metadata.unwrap().name, "backup");
        assert_eq!((check.status, check.output.as_str()), (1, "late"));
        assert!(event.timestamp > 0);
        assert!(event.entity.is_none());

        let metrics = br#"{"metrics": {"points": [{"name": "x", "value": 1, "timestamp": 1}]}, "timestamp": 7}"#;
        assert_eq!(post(server.addr, metrics).await.0, 202);
        let event = server.events.recv().await.unwrap();
        assert_eq!(event.timestamp, 7);
        assert!(event.metrics.is_some());
    }

    #[tokio::test]
    async fn browsers_cannot_post_events_cross_site_or_by_dns_rebinding() {
        let mut server = start(8).await;
        let body = br#"{"check": {"metadata": {"name": "forged"}, "status": 2}}"#;
        let send = |host: &str, extra: &str, content_type: &str| {
            format!(
                "POST /events HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Type: {content_type}\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
        };
        for (head, expected) in [
            // The attack as reported: a form post from a page, through a rebound name.
            (
                send(
                    "evil.example",
                    "Origin: http://evil.example\r\n",
                    "text/plain",
                ),
                403,
            ),
            (
                send(
                    "127.0.0.1:3031",
                    "Origin: http://evil.example\r\n",
                    "application/json",
                ),
                403,
            ),
            (
                send("127.0.0.1:3031", "Origin: null\r\n", "application/json"),
                403,
            ),
            (send("evil.example:3031", "", "application/json"), 403),
            (send("127.0.0.1.evil.example", "", "application/json"), 403),
            (send("localhost", "", "text/plain"), 415),
            (
                send("localhost", "", "application/x-www-form-urlencoded"),
                415,
            ),
        ] {
            let (status, response) = exchange(server.addr, &head, body).await;
            assert_eq!(status, expected, "{head}: {response}");
        }
        assert!(
            server.events.try_recv().is_err(),
            "a refused request was handed on"
        );
        for host in [
            "127.0.0.1:3031",
            "localhost",
            "LOCALHOST:1",
            "[::1]:3031",
            "[::1]",
        ] {
            let (status, response) = exchange(
                server.addr,
                &send(host, "", "application/json; charset=utf-8"),
                body,
            )
            .await;
            assert_eq!(status, 202, "{host}: {response}");
        }
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:3031",
            "localhost",
            "Localhost:80",
            "[::1]",
            "[::1]:3031",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "127.0.0.1.nip.io",
            "127.0.0.2",
            "localhost:",
            "localhost:x",
            "[::1]x",
            "[::2]:1",
            "0.0.0.0:3031",
            "127.0.0.1:99999",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[tokio::test]
    async fn invalid_events_are_refused_with_a_message() {
        let server = start(4).await;
        for (body, expected) in [
            (&b"{\"check\": "[..], "malformed JSON at line 1"),
            (&b"[1]"[..], "expected a JSON object"),
            (
                &br#"{"check": {"metadata": {"name": "x"}, "status": "bad"}}"#[..],
                "check.status",
            ),
            (
                &br#"{"check": {"metadata": {"name": "x"}, "outptu": "typo"}}"#[..],
                "unknown field \"outptu\"",
            ),
            (
                &br#"{"check": {"status": 1}}"#[..],
                "check.metadata.name: must not be empty",
            ),
            (
                &br#"{"timestamp": 5}"#[..],
                "check: an event needs a check or metrics",
            ),
        ] {
            let (status, response) = post(server.addr, body).await;
            assert_eq!(status, 400, "{response}");
            let message = message(&response);
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
    }

    #[tokio::test]
    async fn oversized_events_are_refused() {
        let server = start(4).await;
        // The declared length alone is enough; nothing of the body is sent.
        let head = format!(
            "POST /events HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            EVENT_BODY_LIMIT + 1
        );
        let (status, response) = exchange(server.addr, &head, b"").await;
        assert_eq!(status, 413);
        assert_eq!(message(&response), "the event is larger than 512 KiB");

        // A body without a declared length is cut off at the limit.
        let (sender, _events) = mpsc::channel(1);
        let api = LocalApi {
            events: sender,
            health: Arc::new(AtomicBool::new(true)),
        };
        let body = Body::from(vec![b' '; EVENT_BODY_LIMIT + 1]);
        let mut json = HeaderMap::new();
        json.insert(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        );
        let response = post_event(State(api.clone()), json.clone(), body).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // At the limit is fine (and then only the JSON is wrong).
        let mut padded = vec![b' '; EVENT_BODY_LIMIT - 40];
        padded.extend_from_slice(br#"{"check":{"metadata":{"name":"x"}}}"#);
        let response = post_event(State(api), json, Body::from(padded)).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }

    #[tokio::test]
    async fn a_full_queue_is_503() {
        let server = start(1).await;
        let body = br#"{"check": {"metadata": {"name": "x"}}}"#;
        assert_eq!(post(server.addr, body).await.0, 202);
        let (status, response) = post(server.addr, body).await;
        assert_eq!(status, 503);
        assert_eq!(message(&response), "queue full");
    }

    #[tokio::test]
    async fn healthz_follows_the_backend_connection() {
        let server = start(1).await;
        assert_eq!(
            get(server.addr, "/healthz").await,
            (503, "not connected to a backend".to_owned())
        );
        server.health.store(true, Ordering::Release);
        assert_eq!(get(server.addr, "/healthz").await, (200, "ok".to_owned()));
    }
}
