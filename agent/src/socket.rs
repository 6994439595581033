//! The agent socket (Sensu's `agent/sockets.go`): Sensu 1.x check results as JSON over TCP and
//! UDP on one port, `127.0.0.1:3030` by default (`socket:` in `agent.yaml`), for scripts that
//! still write `echo '{"name": "backup", "status": 1, "output": "late"}' | nc 127.0.0.1 3030`.
//! Sensu deprecates it in favour of the local API ([`crate::localapi`]); it is here for the
//! scripts that still use it.
//!
//! - **Payload** (Sensu's socket event format). A JSON object with `name` and `output` (both
//!   required, non-empty), and optionally `status`, `command`, `subscribers`, `interval`
//!   (default 1), `issued`, `executed` (default now), `duration`, `handlers` (or `handler`),
//!   and `source` (or `client`): an entity other than this agent's, sent on as the check's
//!   `proxy_entity_name`, so the backend stores the result on that proxy entity (which must
//!   exist, unless a stored check of that name names it).
//!   Other fields are ignored, as Sensu's. The result becomes a core/v2 event checked as the
//!   local API checks its events ([`crate::localapi::check_event`]) and goes on the same
//!   channel; the backend ties it to the agent's entity as it does local API events.
//! - **TCP.** One result per connection. The agent reads until the bytes so far are a complete
//!   JSON value, answers `ok` (handed on) or `invalid` (not JSON, not a check result, refused
//!   by validation, or the queue full) and closes. A message containing `ping` between
//!   whitespace (Sensu's `\s+ping\s+`) is answered `pong`, unless it starts with `{` (Sensu
//!   takes a result whose output says ` ping ` for a ping and drops it). A connection that sends nothing
//!   complete within [`TCP_READ_TIMEOUT`] (Sensu's 500 ms for the whole message), or more than
//!   [`TCP_MESSAGE_LIMIT`] bytes, is answered `invalid`; beyond [`MAX_CONNECTIONS`] at once,
//!   further connections are closed at once, unanswered.
//! - **UDP.** One result per datagram, never answered (as Sensu); pings are ignored, and a
//!   datagram over [`UDP_DATAGRAM_LIMIT`] bytes (Sensu reads 1,500) or that is not a valid result
//!   is dropped with a warning. Unlike Sensu's, the listener carries on after a bad datagram.
//!
//! Loopback only unless `socket.allow_non_loopback` is set (the socket has no authentication:
//! whoever reaches it sends events as this agent), and then the start logs a warning.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::model::{Check, Event};
use cairn_api::ObjectMeta;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn};

/// How long a TCP connection may take to send its whole message (Sensu's
/// `TCPSocketReadDeadline`).
pub const TCP_READ_TIMEOUT: Duration = Duration::from_millis(500);
/// Largest TCP message, bytes (the local API's event limit).
pub const TCP_MESSAGE_LIMIT: usize = crate::localapi::EVENT_BODY_LIMIT;
/// Largest UDP datagram taken, bytes.
pub const UDP_DATAGRAM_LIMIT: usize = 16 * 1024;
/// TCP connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Attempts to find a port free for both TCP and UDP when the port is 0.
const BIND_ATTEMPTS: usize = 16;

/// The bounds of the socket; [`SocketLimits::default`] has the constants above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLimits {
    /// Time to send a whole TCP message.
    pub tcp_read_timeout: Duration,
    /// Largest TCP message, bytes.
    pub tcp_message_limit: usize,
    /// Largest UDP datagram, bytes.
    pub udp_datagram_limit: usize,
    /// TCP connections served at once.
    pub max_connections: usize,
}

impl Default for SocketLimits {
    fn default() -> SocketLimits {
        SocketLimits {
            tcp_read_timeout: TCP_READ_TIMEOUT,
            tcp_message_limit: TCP_MESSAGE_LIMIT,
            udp_datagram_limit: UDP_DATAGRAM_LIMIT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// Whose the socket's events are: a `source` equal to `name` is this agent itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The agent's entity name.
    pub name: String,
    /// The agent's namespace.
    pub namespace: String,
}

/// The bound TCP listener and UDP socket, on the same port.
#[derive(Debug)]
pub struct AgentSocket {
    tcp: TcpListener,
    udp: UdpSocket,
    limits: SocketLimits,
}

/// A Sensu 1.x check result, as the socket takes it (unknown fields ignored, `null` as absent).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LegacyResult {
    name: Option<String>,
    status: Option<u32>,
    output: Option<String>,
    command: Option<String>,
    subscribers: Option<Vec<String>>,
    interval: Option<u32>,
    issued: Option<i64>,
    executed: Option<i64>,
    duration: Option<f64>,
    source: Option<String>,
    client: Option<String>,
    handlers: Option<Vec<String>>,
    handler: Option<String>,
}

/// What the bytes of one message are.
#[derive(Debug, PartialEq)]
enum Message {
    /// Not all there yet.
    Incomplete,
    /// A ping.
    Ping,
    /// A valid result, as an event.
    Event(Box<Event>),
    /// Anything else, and why.
    Invalid(String),
}

// === impl AgentSocket ===

impl AgentSocket {
    /// Binds TCP and UDP on `addr`; with port 0, on a port free for both.
    ///
    /// # Errors
    /// The bind that failed, naming the protocol and the address.
    pub async fn bind(addr: SocketAddr, limits: SocketLimits) -> io::Result<AgentSocket> {
        let named = |protocol: &str, at: SocketAddr, err: io::Error| {
            io::Error::new(err.kind(), format!("{protocol} {at}: {err}"))
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let tcp = TcpListener::bind(addr)
                .await
                .map_err(|err| named("tcp", addr, err))?;
            let bound = tcp.local_addr()?;
            match UdpSocket::bind(bound).await {
                Ok(udp) => return Ok(AgentSocket { tcp, udp, limits }),
                Err(_) if addr.port() == 0 && attempt < BIND_ATTEMPTS => continue,
                Err(err) => return Err(named("udp", bound, err)),
            }
        }
    }

    /// The address both listen on.
    ///
    /// # Errors
    /// When the OS cannot say.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Serves TCP connections and UDP datagrams, handing results to `events`, until dropped.
    pub async fn serve(self, events: mpsc::Sender<Event>, origin: Origin) {
        let origin = Arc::new(origin);
        let udp = serve_udp(self.udp, self.limits, events.clone(), Arc::clone(&origin));
        let tcp = serve_tcp(self.tcp, self.limits, events, origin);
        tokio::join!(udp, tcp);
    }
}

async fn serve_tcp(
    listener: TcpListener,
    limits: SocketLimits,
    events: mpsc::Sender<Event>,
    origin: Arc<Origin>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                warn!(error = %err, "agent socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(
                max = limits.max_connections,
                "agent socket: too many connections; one closed unanswered"
            );
            drop(stream);
            continue;
        };
        let events = events.clone();
        let origin = Arc::clone(&origin);
        tokio::spawn(async move {
            handle_connection(stream, limits, &events, &origin).await;
            drop(slot);
        });
    }
}

/// Reads one message from the connection and answers it (see the module docs).
async fn handle_connection(
    mut stream: TcpStream,
    limits: SocketLimits,
    events: &mpsc::Sender<Event>,
    origin: &Origin,
) {
    let deadline = Instant::now() + limits.tcp_read_timeout;
    let mut message = Vec::new();
    let mut chunk = vec![0_u8; 16 * 1024];
    let answer = loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await;
        let closed = match read {
            Err(_) => break invalid("no complete message before the read timeout"),
            Ok(Err(err)) => {
                debug!(error = %err, "agent socket: read failed");
                return;
            }
            Ok(Ok(0)) => true,
            Ok(Ok(read)) => {
                message.extend_from_slice(&chunk[..read]);
                false
            }
        };
        if message.len() > limits.tcp_message_limit {
            break invalid(&format!(
                "the message is larger than {} bytes",
                limits.tcp_message_limit
            ));
        }
        match parse_message(&message, origin) {
            Message::Incomplete if closed => break invalid("the message is not complete JSON"),
            Message::Incomplete => continue,
            Message::Ping => break "pong",
            Message::Invalid(reason) => break invalid(&reason),
            Message::Event(event) => break hand_on(events, *event),
        }
    };
    if let Err(err) = stream.write_all(answer.as_bytes()).await {
        debug!(error = %err, "agent socket: the answer could not be written");
    }
    let _ = stream.shutdown().await;
}

fn invalid(reason: &str) -> &'static str {
    debug!(reason, "agent socket: invalid message");
    "invalid"
}

/// Hands the event on: `ok`, or `invalid` when the agent cannot take it now.
fn hand_on(events: &mpsc::Sender<Event>, event: Event) -> &'static str {
    match events.try_send(event) {
        Ok(()) => "ok",
        Err(mpsc::error::TrySendError::Full(_)) => {
            warn!("agent socket: the event queue is full; a result was refused");
            "invalid"
        }
        Err(mpsc::error::TrySendError::Closed(_)) => "invalid",
    }
}

async fn serve_udp(
    socket: UdpSocket,
    limits: SocketLimits,
    events: mpsc::Sender<Event>,
    origin: Arc<Origin>,
) {
    // One byte more than the limit tells a datagram over it (the kernel cuts it to the buffer).
    let mut datagram = vec![0_u8; limits.udp_datagram_limit + 1];
    loop {
        let read = match socket.recv_from(&mut datagram).await {
            Ok((read, _)) => read,
            Err(err) => {
                warn!(error = %err, "agent socket: UDP receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if read > limits.udp_datagram_limit {
            warn!(
                limit = limits.udp_datagram_limit,
                "agent socket: a UDP datagram over the limit was dropped"
            );
            continue;
        }
        match parse_message(&datagram[..read], &origin) {
            Message::Ping => {}
            Message::Event(event) => {
                if let Err(err) = events.try_send(*event) {
                    warn!(error = %err, "agent socket: a UDP result could not be queued");
                }
            }
            Message::Incomplete => {
                warn!("agent socket: a UDP datagram that is not complete JSON was dropped");
            }
            Message::Invalid(reason) => {
                warn!(reason, "agent socket: an invalid UDP result was dropped");
            }
        }
    }
}

/// What the bytes received so far are.
fn parse_message(bytes: &[u8], origin: &Origin) -> Message {
    let json_object = bytes
        .iter()
        .find(|byte| !byte.is_ascii_whitespace())
        .is_some_and(|first| *first == b'{');
    if !json_object && is_ping(bytes) {
        return Message::Ping;
    }
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(err) if err.is_eof() => return Message::Incomplete,
        Err(err) => return Message::Invalid(format!("malformed JSON: {err}")),
    };
    if !value.is_object() {
        return Message::Invalid("a check result must be a JSON object".to_owned());
    }
    let result: LegacyResult = match serde_json::from_value(value) {
        Ok(result) => result,
        Err(err) => return Message::Invalid(format!("not a check result: {err}")),
    };
    match translate(result, origin).and_then(crate::localapi::check_event) {
        Ok(event) => Message::Event(Box::new(event)),
        Err(reason) => Message::Invalid(reason),
    }
}

/// Sensu's `\s+ping\s+`: `ping` with whitespace (space, tab, CR, LF, FF) on both sides.
fn is_ping(bytes: &[u8]) -> bool {
    let space = |byte: &u8| matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c');
    bytes
        .windows(6)
        .any(|window| space(&window[0]) && &window[1..5] == b"ping" && space(&window[5]))
}

/// Sensu's `translateToEvent`: the 1.x result as a core/v2 event.
fn translate(result: LegacyResult, origin: &Origin) -> Result<Event, String> {
    let name = result.name.unwrap_or_default();
    if name.is_empty() {
        return Err("a check name must be provided".to_owned());
    }
    let output = result.output.unwrap_or_default();
    if output.is_empty() {
        return Err("a check output must be provided".to_owned());
    }
    let source = result
        .source
        .filter(|source| !source.is_empty())
        .or(result.client)
        .unwrap_or_default();
    // Another entity's result: a proxy check result, stored by the backend on that entity.
    let proxy_entity_name = if source == origin.name {
        String::new()
    } else {
        source
    };
    let mut handlers = result.handlers.unwrap_or_default();
    if handlers.is_empty() {
        handlers.extend(result.handler.filter(|handler| !handler.is_empty()));
    }
    let executed = match result.executed.unwrap_or(0) {
        0 => crate::certs::now_unix(),
        executed => executed,
    };
    Ok(Event {
        check: Some(Check {
            proxy_entity_name,
            metadata: Some(ObjectMeta::named("", &name)),
            status: result.status.unwrap_or(0),
            output,
            command: result.command.unwrap_or_default(),
            subscriptions: result.subscribers.unwrap_or_default(),
            interval: match result.interval.unwrap_or(0) {
                0 => 1,
                interval => i64::from(interval),
            },
            issued: result.issued.unwrap_or(0),
            executed,
            duration: result.duration,
            handlers,
            ..Check::default()
        }),
        ..Event::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            name: "web-01".into(),
            namespace: "default".into(),
        }
    }

    fn parse(text: &str) -> Message {
        parse_message(text.as_bytes(), &origin())
    }

    fn event(text: &str) -> Event {
        match parse(text) {
            Message::Event(event) => *event,
            other => panic!("{text}: {other:?}"),
        }
    }

    fn invalid_reason(text: &str) -> String {
        match parse(text) {
            Message::Invalid(reason) => reason,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn a_1x_result_becomes_an_event() {
        let minimal = event(r#"{"name": "check-mysql-status", "status": 1, "output": "error!"}"#);
        assert!(
            minimal.entity.is_none(),
            "the agent's own entity is set later"
        );
        assert!(minimal.timestamp > 0);
        let check = minimal.check.unwrap();
        assert_eq!(check.metadata.unwrap().name, "check-mysql-status");
        assert_eq!((check.status, check.output.as_str()), (1, "error!"));
        assert_eq!(check.interval, 1);
        assert!(check.executed > 0);

        let full = event(
            r#"{"name": "check-http", "status": 1, "output": "404", "source": "sensu-docs-site",
                "executed": 1550013435, "duration": 1.903135228, "handlers": ["slack", "influxdb"],
                "command": "http-check --url https://sensu.io", "interval": 60,
                "subscribers": ["web"], "unknown": {"ignored": true}}"#,
        );
        assert!(full.entity.is_none(), "the agent's own, set by the agent");
        let check = full.check.unwrap();
        assert_eq!(check.proxy_entity_name, "sensu-docs-site");
        assert_eq!(check.executed, 1_550_013_435);
        assert_eq!(check.duration, Some(1.903_135_228));
        assert_eq!(check.handlers, ["slack", "influxdb"]);
        assert_eq!(check.command, "http-check --url https://sensu.io");
        assert_eq!(check.interval, 60);
        assert_eq!(check.subscriptions, ["web"]);

        // `client` and `handler`, the older names; the agent's own name is no proxy.
        let legacy = event(r#"{"name": "x", "output": "o", "client": "db", "handler": "mail"}"#);
        let legacy = legacy.check.unwrap();
        assert_eq!(legacy.proxy_entity_name, "db");
        assert_eq!(legacy.handlers, ["mail"]);
        let own = event(r#"{"name": "x", "output": "o", "source": "web-01"}"#);
        assert!(own.check.unwrap().proxy_entity_name.is_empty());
    }

    #[test]
    fn invalid_results_say_why() {
        assert_eq!(
            invalid_reason(r#"{"status": 1, "output": "o"}"#),
            "a check name must be provided"
        );
        assert_eq!(
            invalid_reason(r#"{"name": "x", "status": 1}"#),
            "a check output must be provided"
        );
        assert!(
            invalid_reason(r#"{"name": "x", "output": "o", "status": "bad"}"#)
                .starts_with("not a check result")
        );
        assert!(
            invalid_reason(r#"{"name": "x", "output": "o", "status": -1}"#)
                .starts_with("not a check result")
        );
        // The local API's validation: a name the backend refuses is refused here already.
        assert_eq!(
            invalid_reason(r#"{"name": "a/b", "output": "o"}"#),
            format!(
                "check.metadata.name: {}",
                cairn_api::validate::check_name(cairn_api::Kind::CheckConfig, "a/b").unwrap()
            )
        );
        assert!(invalid_reason("[1]").contains("JSON object"));
        assert!(invalid_reason("{\"name\": x}").starts_with("malformed JSON"));
        assert_eq!(parse("{\"name\": \"x\", "), Message::Incomplete);
        // A result that says ` ping ` is a result, not a ping.
        let event = event(r#"{"name": "net", "status": 2, "output": "host ping failed "}"#);
        assert_eq!(event.check.unwrap().output, "host ping failed ");
        assert_eq!(parse(" ping "), Message::Ping);
        assert_eq!(parse(""), Message::Incomplete);
    }

    #[test]
    fn pings_are_sensus() {
        for ping in [" ping ", "\nping\n", "x ping\t", "  ping  "] {
            assert!(is_ping(ping.as_bytes()), "{ping:?}");
        }
        for not_ping in ["ping", "ping\n", " ping", "pingping", " pong "] {
            assert!(!is_ping(not_ping.as_bytes()), "{not_ping:?}");
        }
    }

    struct Running {
        addr: SocketAddr,
        events: mpsc::Receiver<Event>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn start(limits: SocketLimits, capacity: usize) -> Running {
        let socket = AgentSocket::bind("127.0.0.1:0".parse().unwrap(), limits)
            .await
            .unwrap();
        let addr = socket.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        let (sender, events) = mpsc::channel(capacity);
        let task = tokio::spawn(socket.serve(sender, origin()));
        Running { addr, events, task }
    }

    /// Sends `message` over TCP, half-closing when `close`, and returns the whole answer.
    async fn send_tcp(addr: SocketAddr, message: &[u8], close: bool) -> String {
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(message).await.unwrap();
            if close {
                stream.shutdown().await.unwrap();
            }
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the socket answers")
    }

    async fn next_event(events: &mut mpsc::Receiver<Event>) -> Event {
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event in time")
            .expect("the channel open")
    }

    #[tokio::test]
    async fn tcp_answers_ok_invalid_and_pong() {
        let mut running = start(SocketLimits::default(), 8).await;
        let result = br#"{"name": "backup", "status": 2, "output": "late"}"#;
        // Answered as soon as the JSON is complete, without waiting for the client to close.
        assert_eq!(send_tcp(running.addr, result, false).await, "ok");
        let check = next_event(&mut running.events).await.check.unwrap();
        assert_eq!((check.status, check.output.as_str()), (2, "late"));
        // In pieces, closed by the client.
        assert_eq!(
            send_tcp(
                running.addr,
                b"{\"name\": \"b\", \"output\": \"o\"}\n",
                true
            )
            .await,
            "ok"
        );
        next_event(&mut running.events).await;
        assert_eq!(send_tcp(running.addr, b" ping ", false).await, "pong");
        assert_eq!(
            send_tcp(running.addr, b"{\"name\": \"\"}", false).await,
            "invalid"
        );
        assert_eq!(send_tcp(running.addr, b"not json", false).await, "invalid");
        assert_eq!(send_tcp(running.addr, b"{\"name\":", true).await, "invalid");
        // Nothing complete before the read timeout.
        let started = std::time::Instant::now();
        assert_eq!(
            send_tcp(running.addr, b"{\"name\":", false).await,
            "invalid"
        );
        assert!(started.elapsed() >= TCP_READ_TIMEOUT);
        assert!(
            running.events.try_recv().is_err(),
            "nothing invalid was handed on"
        );
    }

    #[tokio::test]
    async fn tcp_messages_over_the_limit_are_refused() {
        let limits = SocketLimits {
            tcp_message_limit: 1024,
            tcp_read_timeout: Duration::from_secs(10),
            ..SocketLimits::default()
        };
        let mut running = start(limits, 8).await;
        let padded = format!(
            "{}{{\"name\": \"big\", \"output\": \"o\"}}",
            " ".repeat(1024)
        );
        assert_eq!(
            send_tcp(running.addr, padded.as_bytes(), false).await,
            "invalid"
        );
        let fits = format!("{}{{\"name\": \"b\", \"output\": \"o\"}}", " ".repeat(900));
        assert_eq!(send_tcp(running.addr, fits.as_bytes(), false).await, "ok");
        next_event(&mut running.events).await;
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_unanswered() {
        let limits = SocketLimits {
            max_connections: 2,
            tcp_read_timeout: Duration::from_secs(30),
            ..SocketLimits::default()
        };
        let mut running = start(limits, 8).await;
        // Two connections hold both slots (each has sent part of a message).
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(running.addr).await.unwrap();
            stream.write_all(b"{\"name\":").await.unwrap();
            held.push(stream);
        }
        // A third is closed at once, long before the read timeout, with no answer.
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let mut stream = TcpStream::connect(running.addr).await.unwrap();
                let _ = stream.write_all(br#"{"name": "c", "output": "o"}"#).await;
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer).await;
                // The accept loop may not have seen the held ones yet; then this one got a
                // slot and an answer: try again.
                if answer.is_empty() {
                    return answer;
                }
                next_event(&mut running.events).await;
            }
        })
        .await
        .expect("refused before the read timeout");
        assert_eq!(answer, "");
        // A slot freed is a slot taken again.
        let mut first = held.remove(0);
        first.write_all(br#""a", "output": "o"}"#).await.unwrap();
        let mut answer = String::new();
        first.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "ok");
        next_event(&mut running.events).await;
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let answer =
                    send_tcp(running.addr, br#"{"name": "d", "output": "o"}"#, false).await;
                if !answer.is_empty() {
                    return answer;
                }
            }
        })
        .await
        .expect("a freed slot is taken");
        assert_eq!(answer, "ok");
    }

    #[tokio::test]
    async fn a_full_queue_is_invalid() {
        let running = start(SocketLimits::default(), 1).await;
        let result = br#"{"name": "x", "output": "o"}"#;
        assert_eq!(send_tcp(running.addr, result, false).await, "ok");
        assert_eq!(send_tcp(running.addr, result, false).await, "invalid");
    }

    #[tokio::test]
    async fn udp_results_are_handed_on_and_bad_datagrams_dropped() {
        let limits = SocketLimits {
            udp_datagram_limit: 1024,
            ..SocketLimits::default()
        };
        let mut running = start(limits, 8).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for bad in [
            &b" ping "[..],
            b"not json",
            br#"{"name": "no-output"}"#,
            format!(
                "{}{{\"name\": \"big\", \"output\": \"o\"}}",
                " ".repeat(1100)
            )
            .as_bytes(),
        ] {
            client.send_to(bad, running.addr).await.unwrap();
        }
        client
            .send_to(
                br#"{"name": "udp-check", "status": 1, "output": "via udp"}"#,
                running.addr,
            )
            .await
            .unwrap();
        // Only the good one arrives, after the bad ones: the listener carried on.
        let check = next_event(&mut running.events).await.check.unwrap();
        assert_eq!(check.metadata.unwrap().name, "udp-check");
        assert_eq!(check.output, "via udp");
        assert!(running.events.try_recv().is_err());
    }
}
