//! Accepting connections within bounds, for the HTTPS API and the agent listener: at most
//! [`ConnectionLimits::max_connections`] at once (the listener stops accepting while full, so
//! the kernel's backlog holds the rest), a TLS handshake within `handshake_timeout`, request
//! headers within `header_timeout` (HTTP/1.1), and a connection with no request in flight and
//! no bytes moving for `idle_timeout` closed (HTTP/1.1 and HTTP/2 alike). Accept errors back
//! off (10 ms doubling to 1 s) instead of spinning, which matters at the file-descriptor
//! limit (`EMFILE`), and a repeated error is logged at most once per [`REPEAT_LOG_INTERVAL`]
//! with the count it stood for. [`raise_fd_limit`] lifts the soft `RLIMIT_NOFILE` to the hard
//! one at start.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bounds on the connections of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// The most connections open at once.
    pub max_connections: usize,
    /// The longest a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// The longest an HTTP/1.1 client may take to send a request's headers (on the agent
    /// listener: the WebSocket upgrade request).
    pub header_timeout: Duration,
    /// How long a connection with no request in flight and no traffic stays open.
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    /// The API's defaults: 4,096 connections (a few MiB of buffers at most, far below the fd
    /// limit once it is raised), 10 s to shake hands, 10 s for headers, 60 s idle.
    pub const API: ConnectionLimits = ConnectionLimits {
        max_connections: API_MAX_CONNECTIONS as usize,
        handshake_timeout: Duration::from_secs(10),
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
    };

    /// The agent listener's defaults: 20,000 connections (sessions and handshakes), 10 s to
    /// shake hands, 10 s for the WebSocket upgrade; a session is closed after 90 s without a
    /// frame (the backend pings every 30 s; the agent connection reads this bound).
    pub const AGENT: ConnectionLimits = ConnectionLimits {
        max_connections: AGENT_MAX_CONNECTIONS as usize,
        handshake_timeout: Duration::from_secs(10),
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(90),
    };
}

/// The API's default connection cap ([`ConnectionLimits::API`]), as `--api-max-connections`
/// takes it.
pub const API_MAX_CONNECTIONS: u32 = 4096;

/// The agent listener's default connection cap ([`ConnectionLimits::AGENT`]), as
/// `--agent-max-connections` takes it.
pub const AGENT_MAX_CONNECTIONS: u32 = 20_000;

/// The shortest time between two log lines about the same repeated problem.
pub const REPEAT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The first and the longest pause after a failed accept.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// How often a connection checks whether it has gone idle.
const IDLE_CHECK_EVERY: Duration = Duration::from_millis(500);

/// A listener that hands out connections with a slot each (see the module docs).
#[derive(Debug)]
pub(crate) struct BoundedListener {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    limits: ConnectionLimits,
    accept_errors: RepeatedLog,
    /// The listener as log lines name it: `api` or `agent`.
    name: &'static str,
}

impl BoundedListener {
    pub(crate) fn new(
        listener: TcpListener,
        limits: ConnectionLimits,
        name: &'static str,
    ) -> BoundedListener {
        BoundedListener {
            listener,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            accept_errors: RepeatedLog::new(REPEAT_LOG_INTERVAL),
            name,
        }
    }

    /// The next connection, once a slot is free; the slot is held by the returned permit.
    /// Accept errors are retried after a pause, never returned.
    pub(crate) async fn accept(&mut self) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        let permit = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .expect("the listener's semaphore is never closed");
        let mut pause = ACCEPT_BACKOFF.0;
        loop {
            match self.listener.accept().await {
                Ok((socket, peer)) => return (socket, peer, permit),
                Err(err) => {
                    if let Some(suppressed) = self.accept_errors.due(Instant::now()) {
                        tracing::warn!(
                            error = %err,
                            repeated = suppressed,
                            open = self.limits.max_connections - self.slots.available_permits(),
                            "{} listener: accept failed; backing off",
                            self.name
                        );
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(ACCEPT_BACKOFF.1);
                }
            }
        }
    }

    /// Waits (at most `grace`) until every connection has given its slot back; `false` when
    /// some were still open.
    pub(crate) async fn drained(&self, grace: Duration) -> bool {
        let all = u32::try_from(self.limits.max_connections).unwrap_or(u32::MAX);
        tokio::time::timeout(grace, self.slots.acquire_many(all))
            .await
            .is_ok()
    }
}

/// Lifts the soft limit on open files to the hard limit (systemd's default soft limit is
/// 1,024); returns the limit now in force, or `None` when it cannot be read or set.
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// Says when a repeated problem is due to be logged again, and how many times it happened
/// since the last line.
#[derive(Debug)]
pub(crate) struct RepeatedLog {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RepeatedLog {
    pub(crate) fn new(every: Duration) -> RepeatedLog {
        RepeatedLog {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(times suppressed since the last line)` when a line is due now.
    pub(crate) fn due(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// A [`RepeatedLog`] shared by tasks (the agent listener's connections, the event sinks), on
/// the clock of now.
#[derive(Debug)]
pub(crate) struct SharedRepeatedLog(parking_lot::Mutex<RepeatedLog>);

impl SharedRepeatedLog {
    pub(crate) fn new(every: Duration) -> SharedRepeatedLog {
        SharedRepeatedLog(parking_lot::Mutex::new(RepeatedLog::new(every)))
    }

    /// `Some(lines not logged since the last one)` when a line is due now.
    pub(crate) fn due(&self) -> Option<u64> {
        self.0.lock().due(Instant::now())
    }
}

/// What a connection's idle check reads: requests in flight, and when bytes last moved.
#[derive(Debug)]
pub(crate) struct Activity {
    started: Instant,
    last_millis: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            last_millis: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        let millis = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_millis.store(millis, Ordering::Relaxed);
    }

    /// Marks a request in flight until the guard drops (when its response head is ready).
    pub(crate) fn request(self: &Arc<Activity>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Whether nothing is in flight and no bytes moved for `timeout`.
    pub(crate) fn idle_for(&self, timeout: Duration) -> bool {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return false;
        }
        let last = Duration::from_millis(self.last_millis.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last) >= timeout
    }

    /// Resolves once the connection has been idle for `timeout` (checked every 500 ms).
    pub(crate) async fn until_idle(&self, timeout: Duration) {
        let mut ticks = tokio::time::interval(IDLE_CHECK_EVERY);
        loop {
            ticks.tick().await;
            if self.idle_for(timeout) {
                return;
            }
        }
    }
}

/// A request in flight on a connection (see [`Activity::request`]).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An IO stream that records when bytes last moved.
#[derive(Debug)]
pub(crate) struct TrackedIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> TrackedIo<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>) -> TrackedIo<T> {
        activity.touch();
        TrackedIo { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n_bytes)) if n_bytes > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n_bytes)) if n_bytes > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_problems_are_logged_once_per_interval_with_a_count() {
        let mut log = RepeatedLog::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(log.due(start), Some(0));
        for idx in 1..=1000 {
            assert_eq!(log.due(start + Duration::from_millis(idx)), None);
        }
        assert_eq!(log.due(start + Duration::from_secs(10)), Some(1000));
        assert_eq!(log.due(start + Duration::from_secs(11)), None);
    }

    #[test]
    fn a_connection_with_a_request_in_flight_is_never_idle() {
        let activity = Activity::new();
        assert!(activity.idle_for(Duration::ZERO));
        let request = activity.request();
        assert!(!activity.idle_for(Duration::ZERO));
        drop(request);
        assert!(activity.idle_for(Duration::ZERO));
        assert!(!activity.idle_for(Duration::from_secs(60)));
    }
}
