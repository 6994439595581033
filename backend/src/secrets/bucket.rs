//! The client-side rate limit of a `VaultProvider` (`rate_limiter: {limit, burst}`): a token
//! bucket that makes a request wait for its turn rather than fail.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// A token bucket: `burst` tokens at most, refilled at `rate` tokens per second.
///
/// A request reserves a token even when none is left (the count goes negative) and waits until
/// its token has been refilled, so waiting requests are served in the order they came, at the
/// rate, without polling (the behaviour of Go's `rate.Limiter.Wait`, which Sensu uses).
#[derive(Debug)]
pub(super) struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    updated: Instant,
}

// === impl TokenBucket ===

impl TokenBucket {
    /// A full bucket, or `None` when `limit` does not limit anything (zero, negative or not
    /// finite). A `burst` of 0 is taken as 1, or no request could ever pass.
    pub(super) fn new(limit: f64, burst: u32, now: Instant) -> Option<TokenBucket> {
        if !(limit.is_finite() && limit > 0.0) {
            return None;
        }
        let burst = f64::from(burst.max(1));
        Some(TokenBucket {
            rate: limit,
            burst,
            state: Mutex::new(BucketState {
                tokens: burst,
                updated: now,
            }),
        })
    }

    /// Takes a token at `now` and says how long to wait until it is really there.
    pub(super) fn reserve(&self, now: Instant) -> Duration {
        let mut state = self.state.lock();
        let elapsed = now.saturating_duration_since(state.updated).as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.rate).min(self.burst);
        state.updated = state.updated.max(now);
        state.tokens -= 1.0;
        if state.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.tokens / self.rate)
        }
    }

    /// Waits for a token.
    pub(super) async fn acquire(&self) {
        let wait = self.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(duration: Duration) -> u128 {
        // Rounded: the rate arithmetic is in floating point.
        (duration.as_secs_f64() * 1000.0).round() as u128
    }

    #[test]
    fn burst_passes_then_requests_wait_at_the_rate() {
        let start = Instant::now();
        let bucket = TokenBucket::new(2.0, 2, start).expect("a limit");
        assert_eq!(millis(bucket.reserve(start)), 0);
        assert_eq!(millis(bucket.reserve(start)), 0);
        // Two per second: the third waits half a second, the fourth a second.
        assert_eq!(millis(bucket.reserve(start)), 500);
        assert_eq!(millis(bucket.reserve(start)), 1000);
        // Later, the debt has been paid and the bucket refills, but never above the burst.
        let later = start + Duration::from_secs(60);
        assert_eq!(millis(bucket.reserve(later)), 0);
        assert_eq!(millis(bucket.reserve(later)), 0);
        assert_eq!(millis(bucket.reserve(later)), 500);
    }

    #[test]
    fn partial_refill_shortens_the_wait() {
        let start = Instant::now();
        let bucket = TokenBucket::new(1.0, 1, start).expect("a limit");
        assert_eq!(millis(bucket.reserve(start)), 0);
        assert_eq!(
            millis(bucket.reserve(start + Duration::from_millis(400))),
            600
        );
    }

    #[test]
    fn zero_burst_still_lets_requests_through() {
        let start = Instant::now();
        let bucket = TokenBucket::new(10.0, 0, start).expect("a limit");
        assert_eq!(millis(bucket.reserve(start)), 0);
        assert_eq!(millis(bucket.reserve(start)), 100);
    }

    #[test]
    fn no_limit_means_no_bucket() {
        let now = Instant::now();
        assert!(TokenBucket::new(0.0, 5, now).is_none());
        assert!(TokenBucket::new(-1.0, 5, now).is_none());
        assert!(TokenBucket::new(f64::INFINITY, 5, now).is_none());
        assert!(TokenBucket::new(f64::NAN, 5, now).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_waits_for_the_token() {
        let bucket = TokenBucket::new(4.0, 1, Instant::now()).expect("a limit");
        let start = Instant::now();
        bucket.acquire().await;
        bucket.acquire().await;
        bucket.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }
}
