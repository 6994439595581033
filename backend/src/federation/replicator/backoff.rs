//! Retry delays after a downstream failure: exponential, jittered, capped, reset by success.

use std::time::Duration;

/// The first delay's ceiling.
pub(crate) const BASE: Duration = Duration::from_millis(250);
/// The largest ceiling: a downstream that comes back is caught up within this (plus jitter).
pub(crate) const MAX: Duration = Duration::from_secs(15);

pub(crate) use cairn_api::backoff::Backoff;
use cairn_api::backoff::Jitter;

/// A downstream's retry backoff, "equal jitter": the n-th delay is uniform in `[c/2, c]` where
/// `c = min(MAX, BASE · 2ⁿ)`, so that several replicators of one gateway do not retry in step
/// and a delay is never zero.
pub(crate) fn downstream() -> Backoff {
    Backoff::new(BASE, MAX, Jitter::Equal)
}
