//! Helpers for the crate's unit tests (compiled for tests only).

use std::future::Future;
use std::time::Duration;

/// [`cairn_tests::eventually`] (the one polling loop of the tests) for a probe that gives
/// `None` while it waits.
pub(crate) async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    cairn_tests::eventually(what, limit, || {
        let probed = probe();
        async move { probed.await.ok_or("not yet") }
    })
    .await
}

/// Waits until `condition` holds, polling it (see [`eventually`]).
pub(crate) async fn until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    eventually(what, limit, || {
        std::future::ready(condition().then_some(()))
    })
    .await;
}

/// The blocking twin of [`until`].
pub(crate) fn until_blocking(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    cairn_tests::eventually_blocking(what, limit, || {
        if condition() {
            Ok(())
        } else {
            Err("not yet")
        }
    });
}
