//! The one shutdown signal of the backend's tasks.
//!
//! [`crate::app`] makes one [`watch`] channel of `bool` and hands a receiver ([`Shutdown`]) to
//! every task; sending `true` asks them all to stop. [`requested`] is the one way to wait for
//! it. A dropped sender is *not* a request: the owner keeps the sender for as long as the
//! tasks run and sends `true` before dropping it, so a task whose sender went away early (a
//! test that dropped it) keeps running instead of stopping at a moment nobody chose.

use tokio::sync::watch;

/// What every task holds to learn that it must stop.
pub(crate) type Shutdown = watch::Receiver<bool>;

/// What the owner holds to ask every task to stop (`send_replace(true)`).
pub(crate) type ShutdownTrigger = watch::Sender<bool>;

/// A new signal, not requested yet.
pub(crate) fn channel() -> (ShutdownTrigger, Shutdown) {
    watch::channel(false)
}

/// Resolves once shutdown is requested; never when the sender is dropped without asking.
pub(crate) async fn requested(shutdown: &mut Shutdown) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_request_is_seen_and_a_dropped_sender_is_not_one() {
        let (trigger, mut shutdown) = channel();
        let mut other = shutdown.clone();
        let waiting = tokio::spawn(async move { requested(&mut other).await });
        trigger.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the request is seen")
            .expect("the waiter ran");
        // Already requested: resolves at once.
        tokio::time::timeout(Duration::from_secs(5), requested(&mut shutdown))
            .await
            .expect("resolves at once");

        let (trigger, mut shutdown) = channel();
        drop(trigger);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), requested(&mut shutdown))
                .await
                .is_err(),
            "a dropped sender does not stop anything"
        );
    }
}
