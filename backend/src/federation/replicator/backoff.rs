//! Retry delays after a downstream failure: exponential, jittered, capped, reset by success.

use std::time::Duration;

/// The first delay's ceiling.
pub(crate) const BASE: Duration = Duration::from_millis(250);
/// The largest ceiling: a downstream that comes back is caught up within this (plus jitter).
pub(crate) const MAX: Duration = Duration::from_secs(15);

/// Exponential backoff with "equal jitter": the n-th delay is uniform in `[c/2, c]` where
/// `c = min(MAX, BASE · 2ⁿ)`, so that several replicators of one gateway do not retry in step
/// and a delay is never zero.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

// === impl Backoff ===

impl Backoff {
    /// A backoff from `base` doubling up to `max`.
    pub(crate) fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The ceiling of the next delay.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay (random), and a step up for the one after.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.next_delay_with(random_u64())
    }

    /// [`Backoff::next_delay`] with the randomness given, for tests.
    pub(crate) fn next_delay_with(&mut self, random: u64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(random % spread.saturating_add(1))
    }

    /// Whether a delay was handed out since the last reset (a failure streak is on).
    pub(crate) fn failing(&self) -> bool {
        self.attempt > 0
    }

    /// Back to the first delay, after a request that succeeded.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(BASE, MAX)
    }
}

/// A random number from the operating system (a constant when it is unavailable, which only
/// removes the jitter).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_maximum_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(4));
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            ceilings.push(backoff.ceiling().as_millis());
            backoff.next_delay();
        }
        assert_eq!(ceilings, [250, 500, 1000, 2000, 4000, 4000, 4000, 4000]);
        for _ in 0..100 {
            backoff.next_delay();
        }
        assert_eq!(backoff.ceiling(), Duration::from_secs(4));
        assert!(backoff.failing());
        backoff.reset();
        assert!(!backoff.failing());
        assert_eq!(backoff.ceiling(), Duration::from_millis(250));
    }

    #[test]
    fn delays_are_jittered_within_half_and_all_of_the_ceiling() {
        let mut backoff = Backoff::default();
        for attempt in 0..12 {
            let ceiling = backoff.ceiling();
            let low = backoff.clone().next_delay_with(0);
            let high = backoff.clone().next_delay_with(u64::MAX - 1);
            assert_eq!(low, ceiling / 2, "attempt {attempt}");
            assert!(high <= ceiling, "attempt {attempt}: {high:?} > {ceiling:?}");
            assert!(high > low, "attempt {attempt}: no spread");
            backoff.next_delay();
        }
        // Real randomness stays in range too.
        let mut backoff = Backoff::default();
        for _ in 0..50 {
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
        }
    }
}
