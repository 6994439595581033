//! Retry delays: exponential backoff with jitter, so that many clients (agents after a backend
//! restart, replicators of one gateway) do not come back at the same moment. One implementation
//! for the agent's reconnects and the gateway's replicators.

use std::time::Duration;

/// How a delay is drawn below its ceiling `c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `[0, c]`: the widest spread (a fleet reconnecting).
    Full,
    /// Uniform in `[c/2, c]`: spread, and never (almost) zero.
    Equal,
}

/// Exponential backoff: the n-th delay's ceiling is `min(max, base · 2ⁿ)`, the delay is drawn
/// below it by the [`Jitter`].
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: Jitter,
    attempt: u32,
}

impl Backoff {
    /// A backoff from `base` doubling up to `max`.
    pub fn new(base: Duration, max: Duration, jitter: Jitter) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            jitter,
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
        match self.jitter {
            Jitter::Full => uniform(ceiling, random),
            Jitter::Equal => {
                let half = ceiling / 2;
                half + uniform(ceiling - half, random)
            }
        }
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
        half + uniform(self.max - half, random)
    }

    /// Whether a delay was handed out since the last reset (a failure streak is on).
    pub fn failing(&self) -> bool {
        self.attempt > 0
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A duration uniform in `[0, ceiling]` from `random`, at millisecond resolution.
fn uniform(ceiling: Duration, random: u64) -> Duration {
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
    fn ceilings_double_up_to_the_maximum_and_reset() {
        let mut backoff = Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            Jitter::Full,
        );
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(backoff.ceiling().as_secs());
            backoff.next_delay();
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        for _ in 0..100 {
            backoff.next_delay();
        }
        assert_eq!(backoff.ceiling(), Duration::from_secs(60));
        assert!(backoff.failing());
        backoff.reset();
        assert!(!backoff.failing());
        assert_eq!(backoff.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_spans_zero_to_the_ceiling() {
        let mut backoff = Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            Jitter::Full,
        );
        for attempt in 0..12 {
            let ceiling = backoff.ceiling();
            assert_eq!(
                backoff.clone().next_delay_with(0),
                Duration::ZERO,
                "{attempt}"
            );
            let high = backoff.clone().next_delay_with(u64::MAX - 1);
            assert!(high <= ceiling, "attempt {attempt}: {high:?} > {ceiling:?}");
            let delay = backoff.next_delay();
            assert!(
                delay <= ceiling,
                "attempt {attempt}: {delay:?} > {ceiling:?}"
            );
        }
        // 200 draws from [0, 60 s] at millisecond resolution: all equal is practically
        // impossible unless the jitter is missing.
        let delays: std::collections::BTreeSet<_> =
            (0..200).map(|_| backoff.next_delay()).collect();
        assert!(delays.len() > 100, "{}", delays.len());
    }

    #[test]
    fn equal_jitter_stays_in_the_upper_half() {
        let mut backoff = Backoff::new(
            Duration::from_millis(250),
            Duration::from_secs(15),
            Jitter::Equal,
        );
        for attempt in 0..12 {
            let ceiling = backoff.ceiling();
            let low = backoff.clone().next_delay_with(0);
            let high = backoff.clone().next_delay_with(u64::MAX - 1);
            assert_eq!(low, ceiling / 2, "attempt {attempt}");
            assert!(high <= ceiling && high > low, "attempt {attempt}");
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
        }
    }

    #[test]
    fn slow_delays_sit_between_half_the_maximum_and_the_maximum() {
        let mut backoff = Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            Jitter::Full,
        );
        assert_eq!(backoff.slow_delay_with(0), Duration::from_secs(30));
        assert!(backoff.slow_delay() <= Duration::from_secs(60));
        assert_eq!(backoff.ceiling(), Duration::from_secs(60));
    }
}
