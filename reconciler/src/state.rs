//! The watcher's state: what `GET /status` serves and `--status-file` holds, shared by the
//! watch loop ([`crate::watch`]) and the HTTP listener ([`crate::webhook`]).

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::sync::SyncReport;

/// The watcher's state, as `GET /status` serves it and `--status-file` holds it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WatchState {
    /// What is watched (credentials in URLs redacted).
    pub source: String,
    /// Unix seconds the watcher started.
    pub started_at: u64,
    /// Unix seconds of the last change to this state.
    pub updated_at: u64,
    /// Whether a sync is running now.
    pub syncing: bool,
    /// Syncs run since the start.
    pub syncs: u64,
    /// Failed syncs since the last successful one.
    pub consecutive_failures: u32,
    /// What started the last sync (`start`, `change`, `poll`, `webhook`, `self-heal`,
    /// `retry`, comma-separated when several coalesced).
    pub last_trigger: Option<String>,
    /// The last sync's record.
    pub last_sync: Option<SyncReport>,
    /// The commit of the last successful sync (Git sources).
    pub last_success_commit: Option<String>,
    /// Unix seconds the last successful sync started.
    pub last_success_at: Option<u64>,
    /// Unix seconds of the next retry, while failing.
    pub next_retry_at: Option<u64>,
}

impl WatchState {
    pub(crate) fn new(source: String, now: u64) -> WatchState {
        WatchState {
            source,
            started_at: now,
            updated_at: now,
            ..WatchState::default()
        }
    }

    /// Whether the last sync (if any) failed.
    pub fn failing(&self) -> bool {
        self.last_sync.as_ref().is_some_and(|report| !report.ok())
    }
}

/// The state shared by the loop and the HTTP listener.
pub(crate) type SharedState = Arc<Mutex<WatchState>>;

/// Locks the state; a panic elsewhere while holding it leaves plain data, still usable.
pub(crate) fn lock(state: &Mutex<WatchState>) -> MutexGuard<'_, WatchState> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
