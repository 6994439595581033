//! Reconnection delays: exponential backoff with full jitter, so that many agents whose backend
//! restarted do not all come back at the same moment.

use std::time::Duration;

/// The first delay's ceiling.
pub const BASE: Duration = Duration::from_secs(1);
/// The largest ceiling.
pub const MAX: Duration = Duration::from_secs(60);

/// Exponential backoff with full jitter: the n-th delay is uniform in
/// `[0, min(MAX, BASE · 2ⁿ)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

// === impl Backoff ===

impl Backoff {
    /// A backoff from `base` doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The ceiling of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay (random), and a step up for the one after.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(random_u64())
    }

    /// [`Backoff::next_delay`] with the randomness given, for tests.
    pub fn next_delay_with(&mut self, random: u64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        jitter(ceiling, random)
    }

    /// A delay for a refusal that will not go away by itself soon: between half the maximum
    /// and the maximum. The backoff stays at its ceiling.
    pub fn slow_delay(&mut self) -> Duration {
        self.slow_delay_with(random_u64())
    }

    /// [`Backoff::slow_delay`] with the randomness given, for tests.
    pub fn slow_delay_with(&mut self, random: u64) -> Duration {
        self.attempt = self.attempt.max(20);
        let half = self.max / 2;
        half + jitter(self.max - half, random)
    }

    /// Back to the first delay (after a session that was established).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(BASE, MAX)
    }
}

/// A duration uniform in `[0, ceiling]` from `random`, at millisecond resolution.
fn jitter(ceiling: Duration, random: u64) -> Duration {
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(random % millis.saturating_add(1))
}

/// A random number from the operating system (a constant when it is unavailable, which only
/// removes the jitter).
pub fn random_u64() -> u64 {
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
    fn ceilings_double_up_to_the_maximum() {
        let mut backoff = Backoff::default();
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(backoff.ceiling().as_secs());
            backoff.next_delay();
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        for _ in 0..100 {
            backoff.next_delay();
        }
        assert_eq!(backoff.ceiling(), MAX);
        backoff.reset();
        assert_eq!(backoff.ceiling(), BASE);
    }

    #[test]
    fn delays_stay_within_the_ceiling() {
        let mut backoff = Backoff::default();
        for attempt in 0..12 {
            let ceiling = backoff.ceiling();
            let low = backoff.clone().next_delay_with(0);
            let high = backoff.clone().next_delay_with(u64::MAX - 1);
            assert_eq!(low, Duration::ZERO, "attempt {attempt}");
            assert!(high <= ceiling, "attempt {attempt}: {high:?} > {ceiling:?}");
            let delay = backoff.next_delay();
            assert!(
                delay <= ceiling,
                "attempt {attempt}: {delay:?} > {ceiling:?}"
            );
        }
    }

    #[test]
    fn delays_are_jittered() {
        // 200 draws from [0, 60 s] at millisecond resolution: all equal is practically
        // impossible unless the jitter is missing.
        let mut backoff = Backoff::default();
        for _ in 0..10 {
            backoff.next_delay();
        }
        let delays: std::collections::BTreeSet<_> =
            (0..200).map(|_| backoff.next_delay()).collect();
        assert!(delays.len() > 100, "{}", delays.len());
        assert!(delays.iter().all(|delay| *delay <= MAX));
        let mean = delays.iter().map(Duration::as_secs_f64).sum::<f64>() / delays.len() as f64;
        assert!((15.0..45.0).contains(&mean), "mean {mean}");
    }

    #[test]
    fn slow_delays_are_between_half_and_the_maximum() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.slow_delay_with(0), MAX / 2);
        assert!(backoff.slow_delay_with(u64::MAX - 1) <= MAX);
        for _ in 0..50 {
            let delay = backoff.slow_delay();
            assert!(delay >= MAX / 2 && delay <= MAX, "{delay:?}");
        }
        assert_eq!(backoff.ceiling(), MAX);
    }
}
