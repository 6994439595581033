//! The in-memory cache of values read from providers: a TTL per value, one read at a time per
//! key (single flight), and failures remembered with exponential backoff.
//!
//! A thousand agents running the same check ask for the same `(provider, id)` at about the same
//! moment. The first caller reads from the provider while holding the key's flight lock; the
//! others wait on that lock and then find the value it stored, so Vault sees one read per TTL.
//! A failed read is remembered the same way until its backoff ends, so an outage costs Vault one
//! request per key per backoff step instead of one per check request.
//!
//! Values live here only (never in the store or on disk), and an expired value is dropped by the
//! next sweep.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::store::Revision;

/// How often lookups sweep expired entries out of the map.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What a cached value is for: a provider and the provider-specific id of a secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct CacheKey {
    /// The provider's name.
    pub(super) provider: String,
    /// The `Secret`'s `id`.
    pub(super) id: String,
}

/// A value read from a provider and how long it may be served.
pub(super) struct Fetched {
    /// The value.
    pub(super) value: String,
    /// How long it may be served from the cache.
    pub(super) ttl: Duration,
}

/// Where a value came from.
#[derive(PartialEq, Eq)]
pub(super) enum Outcome {
    /// From the cache (including a value another caller's read just stored).
    Hit(String),
    /// From the provider, read by this call.
    Fetched(String),
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a value.
        match self {
            Outcome::Hit(_) => f.write_str("Hit(*****)"),
            Outcome::Fetched(_) => f.write_str("Fetched(*****)"),
        }
    }
}

/// A failed read, fresh or remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Failure {
    /// Why the read failed.
    pub(super) reason: String,
    /// How long until the next read is allowed.
    pub(super) retry_in: Duration,
    /// Whether this answer was remembered from an earlier read rather than made by this call.
    pub(super) remembered: bool,
}

/// Exponential backoff: `initial`, doubling after each consecutive failure, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Backoff {
    /// The first delay.
    pub(super) initial: Duration,
    /// The longest delay.
    pub(super) max: Duration,
}

/// The cache.
pub(super) struct Cache {
    slots: Mutex<Slots>,
    backoff: Backoff,
}

struct Slots {
    map: HashMap<CacheKey, Arc<Slot>>,
    last_sweep: Instant,
}

/// One key: its state, and the lock a reader holds while it reads from the provider.
#[derive(Default)]
struct Slot {
    flight: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

/// What is known about one key, for the provider revision it was learnt at.
#[derive(Default)]
enum State {
    #[default]
    Empty,
    Fresh {
        revision: Revision,
        value: String,
        expires_at: Instant,
    },
    Failed {
        revision: Revision,
        reason: String,
        failures: u32,
        retry_at: Instant,
    },
}

// === impl Backoff ===

impl Backoff {
    /// The delay after `failures` consecutive failures (the first failure is 1).
    pub(super) fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

// === impl Cache ===

impl Cache {
    /// An empty cache whose failures back off by `backoff`.
    pub(super) fn new(backoff: Backoff) -> Cache {
        Cache {
            slots: Mutex::new(Slots {
                map: HashMap::new(),
                last_sweep: Instant::now(),
            }),
            backoff,
        }
    }

    /// The value of `key` for provider `revision`: from the cache while it is fresh, else from
    /// `fetch`, run by one caller at a time per key; a failure is remembered until its backoff
    /// ends.
    ///
    /// A cached answer learnt at another provider revision is ignored (and a failure streak
    /// starts over): the provider changed, so its old answers say nothing.
    ///
    /// # Errors
    /// The failure of this call's `fetch`, or a remembered one.
    pub(super) async fn get<F, Fut>(
        &self,
        key: CacheKey,
        revision: Revision,
        fetch: F,
    ) -> Result<Outcome, Failure>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched, String>>,
    {
        let slot = self.slot(key);
        if let Some(answer) = slot.cached(revision, Instant::now()) {
            return answer;
        }
        let _flight = slot.flight.lock().await;
        // Whoever held the flight lock before may have stored the answer.
        if let Some(answer) = slot.cached(revision, Instant::now()) {
            return answer;
        }
        let failures = slot.failures(revision);
        let result = fetch().await;
        let now = Instant::now();
        let mut state = slot.state.lock();
        match result {
            Ok(fetched) => {
                *state = State::Fresh {
                    revision,
                    value: fetched.value.clone(),
                    expires_at: now + fetched.ttl,
                };
                Ok(Outcome::Fetched(fetched.value))
            }
            Err(reason) => {
                let failures = failures.saturating_add(1);
                let retry_in = self.backoff.delay(failures);
                *state = State::Failed {
                    revision,
                    reason: reason.clone(),
                    failures,
                    retry_at: now + retry_in,
                };
                Err(Failure {
                    reason,
                    retry_in,
                    remembered: false,
                })
            }
        }
    }

    /// How many keys the cache holds (fresh, failed or being read).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.slots.lock().map.len()
    }

    fn slot(&self, key: CacheKey) -> Arc<Slot> {
        let now = Instant::now();
        let mut slots = self.slots.lock();
        if now.saturating_duration_since(slots.last_sweep) >= SWEEP_INTERVAL {
            slots.last_sweep = now;
            // A failure streak is forgotten once it has been quiet for the longest backoff.
            let forget_failures_after = self.backoff.max;
            slots.map.retain(|_, slot| {
                Arc::strong_count(slot) > 1 || slot.is_live(now, forget_failures_after)
            });
        }
        Arc::clone(slots.map.entry(key).or_default())
    }
}

// === impl Slot ===

impl Slot {
    fn cached(&self, revision: Revision, now: Instant) -> Option<Result<Outcome, Failure>> {
        match &*self.state.lock() {
            State::Fresh {
                revision: learnt_at,
                value,
                expires_at,
            } if *learnt_at == revision && now < *expires_at => {
                Some(Ok(Outcome::Hit(value.clone())))
            }
            State::Failed {
                revision: learnt_at,
                reason,
                retry_at,
                ..
            } if *learnt_at == revision && now < *retry_at => Some(Err(Failure {
                reason: reason.clone(),
                retry_in: *retry_at - now,
                remembered: true,
            })),
            _ => None,
        }
    }

    /// Consecutive failures so far at `revision`.
    fn failures(&self, revision: Revision) -> u32 {
        match &*self.state.lock() {
            State::Failed {
                revision: learnt_at,
                failures,
                ..
            } if *learnt_at == revision => *failures,
            _ => 0,
        }
    }

    /// Whether the slot still says something worth keeping at `now`.
    fn is_live(&self, now: Instant, forget_failures_after: Duration) -> bool {
        match &*self.state.lock() {
            State::Empty => false,
            State::Fresh { expires_at, .. } => now < *expires_at,
            State::Failed { retry_at, .. } => now < *retry_at + forget_failures_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    const BACKOFF: Backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };

    fn key(id: &str) -> CacheKey {
        CacheKey {
            provider: "vault".to_owned(),
            id: id.to_owned(),
        }
    }

    fn value(text: &str, ttl: Duration) -> Result<Fetched, String> {
        Ok(Fetched {
            value: text.to_owned(),
            ttl,
        })
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let delays: Vec<u64> = (1..=9).map(|n| BACKOFF.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(BACKOFF.delay(0), Duration::from_secs(1));
        assert_eq!(BACKOFF.delay(u32::MAX), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn serves_a_value_until_its_ttl_ends() {
        let cache = Cache::new(BACKOFF);
        let ttl = Duration::from_secs(10);
        let got = cache.get(key("a"), 1, || async { value("one", ttl) }).await;
        assert_eq!(got, Ok(Outcome::Fetched("one".into())));
        tokio::time::advance(Duration::from_secs(9)).await;
        let got = cache.get(key("a"), 1, || async { value("two", ttl) }).await;
        assert_eq!(got, Ok(Outcome::Hit("one".into())));
        tokio::time::advance(Duration::from_secs(1)).await;
        let got = cache.get(key("a"), 1, || async { value("two", ttl) }).await;
        assert_eq!(got, Ok(Outcome::Fetched("two".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_provider_revision_is_a_miss() {
        let cache = Cache::new(BACKOFF);
        let ttl = Duration::from_secs(10);
        let _ = cache.get(key("a"), 1, || async { value("one", ttl) }).await;
        let got = cache.get(key("a"), 2, || async { value("two", ttl) }).await;
        assert_eq!(got, Ok(Outcome::Fetched("two".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_gets_read_once() {
        let cache = Arc::new(Cache::new(BACKOFF));
        let reads = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let cache = Arc::clone(&cache);
            let reads = Arc::clone(&reads);
            tasks.push(tokio::spawn(async move {
                cache
                    .get(key("a"), 1, || async {
                        reads.fetch_add(1, Ordering::SeqCst);
                        // A slow provider: every other caller arrives during the read.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        value("one", Duration::from_secs(10))
                    })
                    .await
            }));
        }
        let mut fetched = 0;
        for task in tasks {
            match task.await.expect("task") {
                Ok(Outcome::Fetched(_)) => fetched += 1,
                Ok(Outcome::Hit(text)) => assert_eq!(text, "one"),
                Err(failure) => panic!("{failure:?}"),
            }
        }
        assert_eq!(fetched, 1);
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_remembered_with_growing_backoff_and_success_resets() {
        let cache = Cache::new(BACKOFF);
        let fail = || async { Err::<Fetched, _>("vault is down".to_owned()) };

        let first = cache.get(key("a"), 1, fail).await.expect_err("fails");
        assert_eq!(first.retry_in, Duration::from_secs(1));
        assert!(!first.remembered);

        // Within the backoff the failure is answered without a read.
        tokio::time::advance(Duration::from_millis(400)).await;
        let remembered = cache
            .get(key("a"), 1, || async {
                panic!("no read during the backoff");
                #[allow(unreachable_code)]
                value("never", Duration::ZERO)
            })
            .await
            .expect_err("remembered");
        assert!(remembered.remembered);
        assert_eq!(remembered.reason, "vault is down");
        assert_eq!(remembered.retry_in, Duration::from_millis(600));

        tokio::time::advance(Duration::from_millis(600)).await;
        let second = cache.get(key("a"), 1, fail).await.expect_err("fails");
        assert_eq!(second.retry_in, Duration::from_secs(2));
        tokio::time::advance(Duration::from_secs(2)).await;
        let third = cache.get(key("a"), 1, fail).await.expect_err("fails");
        assert_eq!(third.retry_in, Duration::from_secs(4));

        tokio::time::advance(Duration::from_secs(4)).await;
        let ttl = Duration::from_millis(10);
        let got = cache.get(key("a"), 1, || async { value("one", ttl) }).await;
        assert_eq!(got, Ok(Outcome::Fetched("one".into())));
        tokio::time::advance(ttl).await;
        let after_success = cache.get(key("a"), 1, fail).await.expect_err("fails");
        assert_eq!(after_success.retry_in, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn sweeps_expired_values() {
        let cache = Cache::new(BACKOFF);
        let ttl = Duration::from_millis(100);
        let _ = cache.get(key("a"), 1, || async { value("one", ttl) }).await;
        assert_eq!(cache.len(), 1);
        tokio::time::advance(SWEEP_INTERVAL).await;
        let _ = cache
            .get(key("b"), 1, || async {
                value("two", Duration::from_secs(60))
            })
            .await;
        // "a" expired and was swept; "b" is fresh.
        assert_eq!(cache.len(), 1);
    }
}
