//! Waiting for an outcome that comes asynchronously: the one polling loop of the tests.
//!
//! [`eventually`] (async) and [`eventually_blocking`] (for tests that run no runtime) call a
//! probe until it gives a value, with a short backoff between calls, and fail the test naming
//! what they waited for and what the probe saw last once the limit passes. A bare sleep in a
//! test is a guess; a probe says what "ready" means.

use std::fmt::{Debug, Display};
use std::future::Future;
use std::time::{Duration, Instant};

/// The wait after the first failed probe; each later wait doubles, up to [`POLL_MAX`].
const POLL_FIRST: Duration = Duration::from_millis(10);

/// The longest wait between two probes, short against every limit the tests use.
const POLL_MAX: Duration = Duration::from_millis(200);

/// Calls `probe` until it returns `Ok`, and returns that value.
///
/// `Err` carries what the probe saw (an error, a state, a log) for the failure message. The
/// probe runs at least once, and once more after the limit when it was still waiting.
///
/// # Panics
/// When `limit` passes and the probe still gives `Err`: the message names `what`, the limit and
/// the last `Err`.
///
/// # Caveats
/// Each call's future may borrow what the closure borrows (`|| async { client.get(..).await }`),
/// not what the closure owns: state written across calls goes in a `Cell`, and a client that
/// needs `&mut` is cloned per call.
pub async fn eventually<T, E, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut poll = Poll::new(what, limit);
    loop {
        let delay = match probe().await {
            Ok(value) => return value,
            Err(last) => poll.delay(&last),
        };
        tokio::time::sleep(delay).await;
    }
}

/// The blocking twin of [`eventually`], for tests that drive blocking clients.
///
/// # Panics
/// When `limit` passes and the probe still gives `Err`: the message names `what`, the limit and
/// the last `Err`.
pub fn eventually_blocking<T, E, F>(what: &str, limit: Duration, mut probe: F) -> T
where
    E: Display,
    F: FnMut() -> Result<T, E>,
{
    let mut poll = Poll::new(what, limit);
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) => std::thread::sleep(poll.delay(&last)),
        }
    }
}

/// `Ok(value)` when `condition` holds for it, else an `Err` that shows it: the probe of a wait
/// for a value to reach a state, e.g. `matching(status().await, |s| s["state"] == "ok")`.
///
/// # Errors
/// When `condition` does not hold, with `value` in `Debug` form.
pub fn matching<T: Debug>(value: T, condition: impl FnOnce(&T) -> bool) -> Result<T, String> {
    if condition(&value) {
        Ok(value)
    } else {
        Err(format!("{value:#?}"))
    }
}

/// [`matching`] for text (a log, a file), which the failure message quotes as it is.
///
/// # Errors
/// When `condition` does not hold, with the text.
pub fn text_matching(text: String, condition: impl FnOnce(&str) -> bool) -> Result<String, String> {
    if condition(&text) {
        Ok(text)
    } else {
        Err(text)
    }
}

// === impl Poll ===

/// The deadline and the backoff of one wait, for the harness's own loops that a probe closure
/// cannot express (those that need `&mut self` between polls).
pub(crate) struct Poll {
    what: String,
    started: Instant,
    limit: Duration,
    delay: Duration,
}

impl Poll {
    /// A wait for `what` of at most `limit`, from now.
    pub(crate) fn new(what: impl Into<String>, limit: Duration) -> Poll {
        Poll {
            what: what.into(),
            started: Instant::now(),
            limit,
            delay: POLL_FIRST,
        }
    }

    /// How long to wait before the next probe, after one that saw `last`; never past the limit.
    ///
    /// # Panics
    /// When the limit passed, naming what it waited for and `last`.
    pub(crate) fn delay(&mut self, last: &dyn Display) -> Duration {
        let elapsed = self.started.elapsed();
        assert!(
            elapsed < self.limit,
            "timed out after {:?} waiting for {}; last seen:\n{last}",
            self.limit,
            self.what
        );
        let delay = self.delay.min(self.limit - elapsed);
        self.delay = (self.delay * 2).min(POLL_MAX);
        delay
    }

    /// A sleep of [`Poll::delay`] (a future that holds on to neither `self` nor `last`).
    ///
    /// # Panics
    /// When the limit passed.
    pub(crate) fn tick(&mut self, last: &dyn Display) -> tokio::time::Sleep {
        tokio::time::sleep(self.delay(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_value() {
        let mut calls = 0;
        let value = eventually_blocking("the third call", Duration::from_secs(5), || {
            calls += 1;
            if calls == 3 {
                Ok(calls)
            } else {
                Err(format!("call {calls}"))
            }
        });
        assert_eq!(value, 3);
    }

    #[tokio::test]
    async fn waits_asynchronously() {
        let mut calls = 0;
        let value = eventually("the second call", Duration::from_secs(5), || {
            calls += 1;
            let seen = calls;
            async move { matching(seen, |&seen| seen == 2) }
        })
        .await;
        assert_eq!(value, 2);
    }

    #[test]
    #[should_panic(expected = "waiting for nothing; last seen:\nstill nothing")]
    fn names_what_and_the_last_observation() {
        eventually_blocking::<(), _, _>("nothing", Duration::from_millis(50), || {
            Err("still nothing")
        });
    }

    #[test]
    fn backs_off_up_to_the_cap() {
        let mut poll = Poll::new("x", Duration::from_secs(60));
        let delays: Vec<_> = (0..8).map(|_| poll.delay(&"y")).collect();
        assert_eq!(delays[0], POLL_FIRST);
        assert_eq!(delays[1], POLL_FIRST * 2);
        assert_eq!(delays[7], POLL_MAX);
    }
}
