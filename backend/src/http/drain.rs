//! Every answer reaches the client whole, even one given before the request body was read
//! (a 401, 403, 404 or 413 that did not need the body).
//!
//! Over HTTP/2, dropping a request body that is still arriving before the response has been
//! sent resets the stream with `CANCEL`, and curl (which speaks HTTP/2 over TLS by default)
//! reports `(92) Stream error in the HTTP/2 framing layer` instead of the answer. Over HTTP/1.1,
//! closing a connection with unread bytes in it makes the kernel send a TCP reset that can
//! overtake the answer. So [`finish_request_body`] notices a body that the handler left unread,
//! reads the rest of it (at most [`DRAIN_MAX_BYTES`], for at most [`DRAIN_TIMEOUT`]) and throws
//! it away, chunk by chunk (nothing is kept), and, when it could not read it all, keeps the
//! rest of it alive inside the response until the response has been sent: h2 then ends the
//! stream with `NO_ERROR` after the answer, as RFC 9113 §8.1 asks, and HTTP/1.1 closes the
//! connection after the answer (`Connection: close`). An HTTP/1.1 client that asked
//! `Expect: 100-continue` and was answered before the handler read anything has not sent its
//! body yet: it gets the answer at once, on a connection that then closes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{header, HeaderValue, Version};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use parking_lot::Mutex;

/// The longest an unread request body is read (and discarded) for before answering.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The most bytes of an unread body read (and discarded) before answering; past it the rest
/// is left to the connection's end. Discarded as it arrives, so memory stays one chunk.
pub(crate) const DRAIN_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Wraps the request body so that what the handler leaves unread comes back here, and finishes
/// it before the response goes out (see the module docs).
pub(super) async fn finish_request_body(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let awaits_continue = parts.version <= Version::HTTP_11
        && parts
            .headers
            .get(header::EXPECT)
            .is_some_and(|expect| expect.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let left = Arc::new(Mutex::new(None));
    let tracked = TrackedBody {
        inner: Some(body),
        read: 0,
        left: Arc::clone(&left),
    };
    let response = next
        .run(Request::from_parts(parts, Body::new(tracked)))
        .await;
    let Some((unread, already_read)) = left.lock().take() else {
        return response;
    };
    let drained = if awaits_continue && already_read == 0 {
        // Never asked for (no 100 Continue went out): the client has not sent it.
        Drained::Partly(unread)
    } else {
        drain(unread, DRAIN_MAX_BYTES.saturating_sub(already_read)).await
    };
    match drained {
        Drained::Whole => response,
        Drained::Partly(rest) => {
            let (mut parts, body) = response.into_parts();
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Response::from_parts(
                parts,
                Body::new(HoldingBody {
                    inner: body,
                    _held: rest,
                }),
            )
        }
    }
}

/// What [`drain`] managed.
enum Drained {
    /// The body ended (or failed, which ends it too).
    Whole,
    /// It was still arriving at the byte or time limit; here is the rest.
    Partly(Body),
}

/// Reads and discards `body` up to `budget` bytes, within [`DRAIN_TIMEOUT`].
async fn drain(mut body: Body, budget: usize) -> Drained {
    let mut remaining = budget;
    let reading = async {
        loop {
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None | Some(Err(_)) => return true,
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        if data.len() > remaining {
                            return false;
                        }
                        remaining -= data.len();
                    }
                }
            }
        }
    };
    match tokio::time::timeout(DRAIN_TIMEOUT, reading).await {
        Ok(true) => Drained::Whole,
        Ok(false) | Err(_) => Drained::Partly(body),
    }
}

/// The request body as the handler sees it; what it drops unread goes back to the middleware
/// with the number of bytes it did read.
struct TrackedBody {
    inner: Option<Body>,
    read: usize,
    left: Arc<Mutex<Option<(Body, usize)>>>,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let n_bytes = frame.data_ref().map_or(0, Bytes::len);
                self.read = self.read.saturating_add(n_bytes);
            }
            // Ended or failed: nothing is left to finish.
            Poll::Ready(None | Some(Err(_))) => self.inner = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            if !inner.is_end_stream() {
                *self.left.lock() = Some((inner, self.read));
            }
        }
    }
}

/// A response body that keeps the unfinished request body alive until the response is sent.
struct HoldingBody {
    inner: Body,
    _held: Body,
}

impl HttpBody for HoldingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
