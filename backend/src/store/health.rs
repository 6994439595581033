//! Whether the store answers: for a store that can become unreachable (etcd), a background probe
//! keeps a state that `/health` reports and that the API reads to refuse writes at once during
//! an outage, instead of letting each wait out the store's request timeout.
//!
//! The state recovers by itself: the probe keeps asking, and the first answer after an outage
//! marks the store reachable again. Transitions are logged once each (a WARN when the store
//! becomes unreachable, an INFO when it answers again), not per probe.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Store;

/// How often the probe asks the store for its revision.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How long one probe waits for an answer; shorter than the store's own request timeout, so
/// that an outage shows within a few seconds.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the store answered its last probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreStatus {
    /// The store answered (or is not probed).
    Reachable,
    /// The store did not answer its last two probes.
    Unreachable {
        /// Why, naming the store (its endpoints) and the failure; never a credential.
        reason: String,
    },
}

/// Settings of [`StoreHealth::spawn_probe`].
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// The store as log lines and reasons name it, for example `etcd at https://10.0.0.1:2379`.
    pub name: String,
    /// The time between two probes.
    pub interval: Duration,
    /// How long one probe waits for the store.
    pub timeout: Duration,
}

/// The store's health, shared by the API (through `AppState`) and its probe.
///
/// # Guarantees
///
/// A store that is not probed (the embedded store, which has no outages of its own) is always
/// [`StoreStatus::Reachable`]; `/health` then asks the store itself.
#[derive(Debug)]
pub struct StoreHealth {
    probed: bool,
    status: watch::Sender<StoreStatus>,
}

// === impl ProbeConfig ===

impl ProbeConfig {
    /// A probe every [`PROBE_INTERVAL`] that waits up to [`PROBE_TIMEOUT`].
    pub fn new(name: impl Into<String>) -> ProbeConfig {
        ProbeConfig {
            name: name.into(),
            interval: PROBE_INTERVAL,
            timeout: PROBE_TIMEOUT,
        }
    }
}

// === impl StoreHealth ===

impl StoreHealth {
    /// The health of a store nobody probes: always reachable.
    pub fn unprobed() -> Arc<StoreHealth> {
        Arc::new(StoreHealth {
            probed: false,
            status: watch::channel(StoreStatus::Reachable).0,
        })
    }

    /// Starts probing `store` in the background: every `config.interval`, a
    /// [`Store::revision`] that must answer within `config.timeout`.
    ///
    /// The store counts as reachable at first (it has just been connected). The probe task
    /// holds neither the store nor the returned health: it ends once either is dropped.
    pub fn spawn_probe(store: &Arc<dyn Store>, config: ProbeConfig) -> Arc<StoreHealth> {
        let health = Arc::new(StoreHealth {
            probed: true,
            status: watch::channel(StoreStatus::Reachable).0,
        });
        tokio::spawn(probe(
            Arc::downgrade(store),
            Arc::downgrade(&health),
            config,
        ));
        health
    }

    /// Whether a probe keeps this state current.
    pub fn is_probed(&self) -> bool {
        self.probed
    }

    /// The state as of the last probe.
    pub fn status(&self) -> StoreStatus {
        self.status.borrow().clone()
    }

    /// Why the store is unreachable, or `None` while it answers.
    pub fn unreachable(&self) -> Option<String> {
        match &*self.status.borrow() {
            StoreStatus::Reachable => None,
            StoreStatus::Unreachable { reason } => Some(reason.clone()),
        }
    }

    /// A receiver that sees every change of the state.
    pub fn subscribe(&self) -> watch::Receiver<StoreStatus> {
        self.status.subscribe()
    }

    /// A probed health that no task updates, for tests that set the state themselves.
    #[cfg(test)]
    pub(crate) fn detached() -> Arc<StoreHealth> {
        Arc::new(StoreHealth {
            probed: true,
            status: watch::channel(StoreStatus::Reachable).0,
        })
    }

    /// Waits until the state satisfies `done`; panics naming `what` after `limit`.
    #[cfg(test)]
    pub(crate) async fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&StoreStatus) -> bool,
    ) {
        let mut states = self.subscribe();
        let waited = tokio::time::timeout(limit, states.wait_for(|status| done(status)))
            .await
            .map(|changed| changed.is_ok());
        match waited {
            Ok(true) => {}
            Ok(false) => panic!("the health state was dropped while waiting for {what}"),
            Err(_) => panic!(
                "the probe did not report {what} within {limit:?}; state: {:?}",
                self.status()
            ),
        }
    }

    /// Records a probe's outcome; returns the state it replaced.
    pub(crate) fn record(&self, status: StoreStatus) -> StoreStatus {
        self.status.send_replace(status)
    }
}

/// The probe loop: asks, records, logs transitions, until the store or the health is gone.
async fn probe(store: Weak<dyn Store>, health: Weak<StoreHealth>, config: ProbeConfig) {
    let mut unreachable_since: Option<Instant> = None;
    let mut failures = 0u32;
    loop {
        tokio::time::sleep(config.interval).await;
        let Some(probed) = store.upgrade() else {
            return;
        };
        let outcome = tokio::time::timeout(config.timeout, probed.revision()).await;
        drop(probed);
        let status = match outcome {
            Ok(Ok(_)) => StoreStatus::Reachable,
            Ok(Err(err)) => StoreStatus::Unreachable {
                reason: reason(&err),
            },
            Err(_) => StoreStatus::Unreachable {
                reason: format!("{} did not answer within {:?}", config.name, config.timeout),
            },
        };
        let Some(health) = health.upgrade() else {
            return;
        };
        // One failed probe may be a leader election the store rides out (its requests are
        // made again meanwhile); only a second one in a row is an outage.
        failures = match status {
            StoreStatus::Reachable => 0,
            StoreStatus::Unreachable { .. } => failures + 1,
        };
        if failures == 1 {
            continue;
        }
        health.record(status.clone());
        match (&status, unreachable_since) {
            (StoreStatus::Unreachable { reason }, None) => {
                unreachable_since = Some(Instant::now());
                tracing::warn!(
                    store = %config.name,
                    %reason,
                    "the store is unreachable; writes are refused with 503 until it answers again"
                );
            }
            (StoreStatus::Reachable, Some(since)) => {
                unreachable_since = None;
                tracing::info!(
                    store = %config.name,
                    unreachable_for = ?since.elapsed(),
                    "the store answers again"
                );
            }
            _ => {}
        }
    }
}

/// Why the store failed a probe: the chain of causes, without the `StoreError` layer's own
/// words when it only says "unreachable".
fn reason(error: &super::StoreError) -> String {
    match error {
        super::StoreError::Unavailable(source) => cairn_api::problem::cause_chain(source.as_ref()),
        other => cairn_api::problem::cause_chain(other),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use futures::stream::BoxStream;

    use super::*;
    use crate::store::{ListPage, Precondition, Result, Revision, StoreError, WatchEvent};

    /// How long a test waits for the probe to see a change.
    const TRANSITION_LIMIT: Duration = Duration::from_secs(30);

    /// A store whose `revision` fails while `down` is set; nothing else is used.
    #[derive(Default)]
    struct Switchable {
        down: AtomicBool,
    }

    #[async_trait::async_trait]
    impl Store for Switchable {
        async fn get(&self, _: &str) -> Result<Option<crate::store::Entry>> {
            unreachable!("the probe only reads the revision")
        }
        async fn list(&self, _: &str, _: Option<&str>, _: usize) -> Result<ListPage> {
            unreachable!("the probe only reads the revision")
        }
        async fn put(&self, _: &str, _: Vec<u8>, _: Precondition) -> Result<Revision> {
            unreachable!("the probe only reads the revision")
        }
        async fn delete(&self, _: &str, _: Precondition) -> Result<Option<Revision>> {
            unreachable!("the probe only reads the revision")
        }
        async fn watch(
            &self,
            _: &str,
            _: Revision,
        ) -> Result<BoxStream<'static, Result<WatchEvent>>> {
            unreachable!("the probe only reads the revision")
        }
        async fn revision(&self) -> Result<Revision> {
            if self.down.load(Ordering::SeqCst) {
                Err(StoreError::unavailable(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "test store is down",
                )))
            } else {
                Ok(7)
            }
        }
    }

    fn fast(name: &str) -> ProbeConfig {
        ProbeConfig {
            name: name.to_owned(),
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn unprobed_health_is_always_reachable() {
        let health = StoreHealth::unprobed();
        assert!(!health.is_probed());
        assert_eq!(health.status(), StoreStatus::Reachable);
        assert_eq!(health.unreachable(), None);
    }

    #[tokio::test]
    async fn probe_flips_to_unreachable_and_back() {
        let switchable = Arc::new(Switchable::default());
        let store: Arc<dyn Store> = switchable.clone();
        let health = StoreHealth::spawn_probe(&store, fast("test store"));
        assert!(health.is_probed());
        assert_eq!(health.status(), StoreStatus::Reachable);

        switchable.down.store(true, Ordering::SeqCst);
        health
            .wait_until("unreachable", TRANSITION_LIMIT, |status| {
                *status != StoreStatus::Reachable
            })
            .await;
        let reason = health.unreachable().unwrap();
        assert!(reason == "test store is down", "{reason}");

        switchable.down.store(false, Ordering::SeqCst);
        health
            .wait_until("reachable", TRANSITION_LIMIT, |status| {
                *status == StoreStatus::Reachable
            })
            .await;
    }

    #[tokio::test]
    async fn probe_ends_when_the_store_is_dropped() {
        let store: Arc<dyn Store> = Arc::new(Switchable::default());
        let health = StoreHealth::spawn_probe(&store, fast("test store"));
        let weak = Arc::downgrade(&store);
        drop(store);
        // The probe holds the store only while it asks, so the store goes once nothing else
        // holds it.
        let deadline = Instant::now() + TRANSITION_LIMIT;
        while weak.upgrade().is_some() {
            assert!(Instant::now() < deadline, "the probe keeps the store alive");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(health.status(), StoreStatus::Reachable);
    }

    #[cfg(feature = "etcd")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn probe_of_etcd_flips_when_etcd_is_killed_and_restarted() {
        let Some(mut etcd) = crate::store::etcd_testing::Etcd::start().await else {
            return;
        };
        let store: Arc<dyn Store> = Arc::new(etcd.store("/cairn/").await);
        let name = format!("etcd at {}", etcd.client_url);
        let config = ProbeConfig {
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
            ..ProbeConfig::new(name)
        };
        let health = StoreHealth::spawn_probe(&store, config);
        assert_eq!(health.status(), StoreStatus::Reachable);

        etcd.kill();
        health
            .wait_until(
                "unreachable once etcd is killed",
                TRANSITION_LIMIT,
                |status| *status != StoreStatus::Reachable,
            )
            .await;
        let reason = health.unreachable().unwrap();
        assert!(reason.contains(&etcd.client_url), "{reason}");

        etcd.restart().await;
        health
            .wait_until("reachable once etcd is back", TRANSITION_LIMIT, |status| {
                *status == StoreStatus::Reachable
            })
            .await;
    }
}
