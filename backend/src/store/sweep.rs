//! Removing expired records: one pass over a prefix, and the task that runs it periodically.
//! Join tokens and refresh tokens are swept this way, so that neither grows without bound.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{Precondition, Store, StoreError};

/// Whether a stored value has expired at `now` (unix seconds); `None` when it cannot be read
/// (it is then left in place and logged).
pub type IsExpired = fn(value: &[u8], now: u64) -> Option<bool>;

/// Deletes every record under `prefix` that `is_expired` says has expired at `now`, each
/// guarded by the revision it was read at (a record changed meanwhile is left for the next
/// pass); returns how many were removed.
///
/// # Errors
/// A store failure other than a lost guard.
pub async fn delete_expired(
    store: &dyn Store,
    prefix: &str,
    now: u64,
    is_expired: IsExpired,
) -> Result<usize, StoreError> {
    let page = store.list(prefix, None, 0).await?;
    let mut removed = 0;
    for entry in page.entries {
        match is_expired(&entry.value, now) {
            Some(true) => {}
            Some(false) => continue,
            None => {
                tracing::warn!(key = %entry.key, "unreadable record left in place");
                continue;
            }
        }
        match store
            .delete(&entry.key, Precondition::Revision(entry.mod_revision))
            .await
        {
            Ok(_) => removed += 1,
            // Changed or removed meanwhile: the next sweep looks again.
            Err(StoreError::PreconditionFailed { .. }) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(removed)
}

/// Starts the task that runs [`delete_expired`] over `prefix` every `every` (the first pass at
/// once), logging what it removed as `what`; it ends when the store closes.
pub fn spawn_sweeper(
    store: Arc<dyn Store>,
    what: &'static str,
    prefix: &'static str,
    every: Duration,
    is_expired: IsExpired,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            match delete_expired(
                store.as_ref(),
                prefix,
                crate::clock::unix_now_u64(),
                is_expired,
            )
            .await
            {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, what, "expired records removed"),
                Err(StoreError::Closed) => return,
                Err(err) => tracing::warn!(error = %err, what, "cannot sweep expired records"),
            }
        }
    })
}
