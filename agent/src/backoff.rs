//! Reconnection delays: exponential backoff with full jitter (`cairn_api::backoff`), so that
//! many agents whose backend restarted do not all come back at the same moment.

use std::time::Duration;

use cairn_api::backoff::Jitter;
pub use cairn_api::backoff::{random_u64, Backoff};

/// The first delay's ceiling.
pub const BASE: Duration = Duration::from_secs(1);
/// The largest ceiling.
pub const MAX: Duration = Duration::from_secs(60);

/// The agent's reconnect backoff: the n-th delay is uniform in `[0, min(MAX, BASE · 2ⁿ)]`.
pub fn reconnect() -> Backoff {
    Backoff::new(BASE, MAX, Jitter::Full)
}
