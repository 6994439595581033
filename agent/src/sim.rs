//! Simulated agents for load tests: many agent sessions in one process.
//!
//! [`run`] keeps one simulated agent's session with the backend the way [`crate::session::run`]
//! does, with the agent's own pieces: the connection is [`crate::session::connect`] (TLS 1.3
//! with the agent's client certificate, the cluster CA as the only root, the WebSocket with the
//! agent's frame limits), the hello is [`crate::session::hello`], the event's entity is
//! [`crate::session::entity`] and the event is completed by [`crate::start::complete`]. Like the
//! real session it sends a keepalive and a ping every `keepalive_interval`, gives up on a
//! backend silent for three intervals (at least [`MIN_DEAD_AFTER`]), sends events with a UUID
//! id and keeps them until acknowledged (sent again on the next session, or after
//! [`ACK_TIMEOUT`]), and reconnects with the same backoff.
//!
//! Two things differ, so that thousands of them fit in one process and the load tool measures
//! the backend rather than itself:
//!
//! - a check request is answered in-process at once with a passing result (status 0, output
//!   `ok`, the check as the request configures it, `issued` from the request) instead of
//!   forking the command through [`crate::exec::Executor`];
//! - unacknowledged events are kept in memory instead of the on-disk queue, and there is no
//!   certificate renewal and no local API.
//!
//! What happens is reported to an [`Observer`], with the timing of every check request.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use cairn_api::agent::{AgentMessage, BackendMessage, CheckRequest};
use cairn_api::model::{Check, Entity, Event, System};

use crate::config::AgentConfig;
use crate::install::cause_chain;
use crate::session::{
    self, SessionError, ACK_TIMEOUT, CLOSE_TIMEOUT, CONNECT_TIMEOUT, EVENT_WINDOW, MIN_DEAD_AFTER,
    SEND_TIMEOUT, STABLE_SESSION, WELCOME_TIMEOUT,
};

type Sink = SplitSink<WebSocketStream<TlsStream<TcpStream>>, Message>;
type Source = SplitStream<WebSocketStream<TlsStream<TcpStream>>>;

/// The output of every simulated check.
pub const SIM_OUTPUT: &str = "ok\n";

/// One simulated agent.
#[derive(Debug, Clone)]
pub struct SimAgent {
    /// Its configuration: name, backend URLs, key, certificate and CA files, subscriptions,
    /// keepalive interval.
    pub config: Arc<AgentConfig>,
    /// The host facts of its hello and entity (collected once for all of them, say).
    pub system: System,
}

/// When things happened to one check request, wall-clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckTiming {
    /// The request's `issued` (unix seconds, set by the backend's scheduler).
    pub issued: i64,
    /// When the request arrived.
    pub received: SystemTime,
    /// When its event was last sent.
    pub sent: SystemTime,
    /// When the acknowledgement arrived (the backend acknowledges after storing).
    pub acked: SystemTime,
}

/// Told what happens to simulated agents; called from their tasks, so it must be quick.
pub trait Observer: Send + Sync {
    /// A session was established (the welcome arrived).
    fn connected(&self, _name: &str) {}
    /// An established session failed or ended.
    fn disconnected(&self, _name: &str, _reason: &str) {}
    /// An attempt failed before the session was established (connection, TLS, hello).
    fn failed(&self, _name: &str, _reason: &str) {}
    /// An event was acknowledged.
    fn acked(&self, _name: &str, _timing: &CheckTiming) {}
    /// The backend refused a message (not fatally).
    fn refused(&self, _name: &str, _reason: &str) {}
}

/// An event waiting for its acknowledgement.
struct Pending {
    id: String,
    event: Event,
    issued: i64,
    received: SystemTime,
    /// When it was sent in the current session.
    sent: Option<(SystemTime, Instant)>,
}

/// Keeps a simulated agent's session with one of its backends until `shutdown` turns true.
pub async fn run(
    agent: SimAgent,
    observer: Arc<dyn Observer>,
    mut shutdown: watch::Receiver<bool>,
) {
    let urls = agent.config.backend_urls.clone();
    if urls.is_empty() {
        observer.failed(&agent.config.name, "no backend URL is configured");
        return;
    }
    let mut backoff = crate::backoff::reconnect();
    let mut pending = Vec::new();
    let mut index = 0usize;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let url = &urls[index % urls.len()];
        let started = Instant::now();
        let mut welcomed = false;
        let outcome = session(
            &agent,
            observer.as_ref(),
            &mut pending,
            url,
            &mut shutdown,
            &mut welcomed,
        )
        .await;
        if welcomed && started.elapsed() >= STABLE_SESSION {
            backoff.reset();
        }
        let delay = match outcome {
            Ok(()) => {
                if welcomed {
                    observer.disconnected(&agent.config.name, "shutdown");
                }
                return;
            }
            Err(err) => {
                if welcomed {
                    observer.disconnected(&agent.config.name, &err.to_string());
                } else {
                    observer.failed(&agent.config.name, &err.to_string());
                }
                if matches!(err, SessionError::Refused { .. }) {
                    backoff.slow_delay()
                } else {
                    backoff.next_delay()
                }
            }
        };
        index = index.wrapping_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn session(
    agent: &SimAgent,
    observer: &dyn Observer,
    pending: &mut Vec<Pending>,
    url: &str,
    shutdown: &mut watch::Receiver<bool>,
    welcomed: &mut bool,
) -> Result<(), SessionError> {
    let config = &agent.config;
    let ws = tokio::select! {
        connected = tokio::time::timeout(CONNECT_TIMEOUT, session::connect(config, url)) => connected
            .map_err(|_| SessionError::Timeout(format!("connecting to {url} took longer than {CONNECT_TIMEOUT:?}")))??,
        _ = shutdown.changed() => return Ok(()),
    };
    let (mut sink, mut source) = ws.split();
    let hello = session::hello(config, agent.system.clone());
    send(&mut sink, &AgentMessage::Hello(Box::new(hello))).await?;
    tokio::select! {
        welcome = tokio::time::timeout(WELCOME_TIMEOUT, wait_for_welcome(&mut source)) => {
            welcome.map_err(|_| SessionError::Timeout(format!("no answer to the hello within {WELCOME_TIMEOUT:?}")))??;
        }
        _ = shutdown.changed() => {
            close(&mut sink, &mut source).await;
            return Ok(());
        }
    }
    *welcomed = true;
    observer.connected(&config.name);
    for event in pending.iter_mut() {
        event.sent = None;
    }
    let entity = session::entity(config, agent.system.clone());
    let result = exchange(
        config,
        &entity,
        observer,
        pending,
        &mut sink,
        &mut source,
        shutdown,
    )
    .await;
    if result.is_ok() {
        close(&mut sink, &mut source).await;
    }
    result
}

async fn exchange(
    config: &AgentConfig,
    entity: &Entity,
    observer: &dyn Observer,
    pending: &mut Vec<Pending>,
    sink: &mut Sink,
    source: &mut Source,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let interval = Duration::from_secs(u64::from(config.keepalive_interval.max(1)));
    let dead_after = (interval * 3).max(MIN_DEAD_AFTER);
    let mut keepalives = tokio::time::interval_at(Instant::now() + interval, interval);
    keepalives.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    loop {
        send_events(pending, sink).await?;
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            message = source.next() => {
                last_heard = Instant::now();
                match message {
                    Some(Ok(Message::Text(text))) => {
                        match serde_json::from_str::<BackendMessage>(text.as_str()) {
                            Ok(BackendMessage::CheckRequest(request)) => {
                                pending.push(check_result(&request, entity, &config.name));
                            }
                            Ok(BackendMessage::Ack { id }) => {
                                if let Some(position) = pending.iter().position(|event| event.id == id) {
                                    let event = pending.remove(position);
                                    let timing = CheckTiming {
                                        issued: event.issued,
                                        received: event.received,
                                        sent: event.sent.map_or(event.received, |(at, _)| at),
                                        acked: SystemTime::now(),
                                    };
                                    observer.acked(&config.name, &timing);
                                }
                            }
                            Ok(BackendMessage::Refused { reason, fatal }) => {
                                if fatal {
                                    return Err(SessionError::Refused { reason });
                                }
                                observer.refused(&config.name, &reason);
                            }
                            Ok(BackendMessage::Certificate { .. } | BackendMessage::Welcome { .. }) => {}
                            Err(err) => {
                                observer.refused(&config.name, &format!("a backend message does not parse: {:?}", err.classify()));
                            }
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Err(SessionError::Closed {
                            reason: frame.map(|frame| frame.reason.to_string()).unwrap_or_default(),
                        })
                    }
                    Some(Ok(_)) => {}
                    Some(Err(err)) => return Err(SessionError::WebSocket(cause_chain(&err))),
                    None => return Err(SessionError::Closed { reason: String::new() }),
                }
            }
            _ = keepalives.tick() => {
                if last_heard.elapsed() > dead_after {
                    return Err(SessionError::Timeout(format!(
                        "nothing heard from the backend for {} s",
                        last_heard.elapsed().as_secs()
                    )));
                }
                let overdue = pending
                    .iter()
                    .any(|event| event.sent.is_some_and(|(_, at)| at.elapsed() > ACK_TIMEOUT));
                if overdue {
                    for event in pending.iter_mut() {
                        event.sent = None;
                    }
                }
                let sent_at = crate::certs::now_unix();
                send(sink, &AgentMessage::Keepalive { sent_at }).await?;
                send_raw(sink, Message::Ping(Vec::new().into())).await?;
            }
        }
    }
}

/// The in-process result of a check request: status 0, [`SIM_OUTPUT`], the check as the request
/// configures it, completed as the agent completes events.
fn check_result(request: &CheckRequest, entity: &Entity, name: &str) -> Pending {
    let received = SystemTime::now();
    let now = crate::certs::now_unix();
    let mut check: Check = serde_json::to_value(&request.config)
        .and_then(serde_json::from_value)
        .unwrap_or_default();
    check.issued = request.issued;
    check.executed = now;
    check.duration = Some(0.0);
    check.status = 0;
    check.output = SIM_OUTPUT.to_owned();
    check.processed_by = name.to_owned();
    let event = Event {
        timestamp: now,
        entity: Some(entity.clone()),
        check: Some(check),
        ..Event::default()
    };
    let mut event = crate::start::complete(event, entity).unwrap_or_default();
    let id = uuid::Uuid::new_v4().to_string();
    event.id.clone_from(&id);
    Pending {
        id,
        event,
        issued: request.issued,
        received,
        sent: None,
    }
}

/// Sends the events not sent in this session yet, up to [`EVENT_WINDOW`] in flight.
async fn send_events(pending: &mut [Pending], sink: &mut Sink) -> Result<(), SessionError> {
    let in_flight = pending.iter().filter(|event| event.sent.is_some()).count();
    let room = EVENT_WINDOW.saturating_sub(in_flight);
    for event in pending
        .iter_mut()
        .filter(|event| event.sent.is_none())
        .take(room)
    {
        event.sent = Some((SystemTime::now(), Instant::now()));
        let message = AgentMessage::Event {
            id: event.id.clone(),
            event: Box::new(event.event.clone()),
        };
        send(sink, &message).await?;
    }
    Ok(())
}

async fn wait_for_welcome(source: &mut Source) -> Result<String, SessionError> {
    loop {
        match source.next().await {
            Some(Ok(Message::Text(text))) => {
                return match serde_json::from_str::<BackendMessage>(text.as_str()) {
                    Ok(BackendMessage::Welcome { entity }) => Ok(entity),
                    Ok(BackendMessage::Refused { reason, .. }) => {
                        Err(SessionError::Refused { reason })
                    }
                    Ok(_) => Err(SessionError::Protocol(
                        "the backend sent a message before its welcome".into(),
                    )),
                    Err(err) => Err(SessionError::Protocol(format!(
                        "the answer to the hello does not parse ({:?})",
                        err.classify()
                    ))),
                };
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(SessionError::Closed {
                    reason: frame
                        .map(|frame| frame.reason.to_string())
                        .unwrap_or_default(),
                })
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(SessionError::WebSocket(cause_chain(&err))),
            None => {
                return Err(SessionError::Closed {
                    reason: String::new(),
                })
            }
        }
    }
}

async fn close(sink: &mut Sink, source: &mut Source) {
    let closing = async {
        if sink.send(Message::Close(None)).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = source.next().await {
            if message.is_close() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
}

async fn send(sink: &mut Sink, message: &AgentMessage) -> Result<(), SessionError> {
    let text = serde_json::to_string(message).expect("agent messages are plain data");
    send_raw(sink, Message::Text(text.into())).await
}

async fn send_raw(sink: &mut Sink, message: Message) -> Result<(), SessionError> {
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(SessionError::WebSocket(cause_chain(&err))),
        Err(_) => Err(SessionError::Timeout(format!(
            "a write to the backend took longer than {SEND_TIMEOUT:?}"
        ))),
    }
}
