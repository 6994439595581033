//! One sync: read the source, validate every document, list the backend's state, plan, check
//! the prune guard, apply. `diff`, `apply` and `watch` are all made of this.

use serde::{Deserialize, Serialize};

use cairn_api::client::Client;

use crate::apply::{self, ApplyOptions};
use crate::plan::{self, Plan};
use crate::source::{ReadOptions, Snapshot, Source, SourceError};

/// `cairn.io/managed-by` when `--owner` is not given.
pub const DEFAULT_OWNER: &str = "cairnctl";

/// How a sync behaves.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// The ownership label's value.
    pub owner: String,
    /// Delete owned resources the source no longer has.
    pub prune: bool,
    /// Plan only; change nothing.
    pub dry_run: bool,
    /// Prune even when the guard would refuse.
    pub force_prune: bool,
    /// Refuse to prune more than this percentage of the managed resources.
    pub max_prune_percent: u8,
    /// Skip documents of unmodelled Sensu types instead of failing.
    pub allow_unsupported: bool,
    /// Requests in flight at once within one apply rank.
    pub concurrency: usize,
    /// Draw a progress bar (stderr is a terminal).
    pub progress: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            owner: DEFAULT_OWNER.to_owned(),
            prune: false,
            dry_run: false,
            force_prune: false,
            max_prune_percent: 50,
            allow_unsupported: false,
            concurrency: 16,
            progress: false,
        }
    }
}

/// How a sync ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncResult {
    /// Everything planned was applied (or, for a dry run, planned).
    Applied,
    /// Nothing to do.
    InSync,
    /// The source could not be read; nothing was applied or pruned.
    SourceUnreadable,
    /// Some documents are invalid; nothing was applied.
    Invalid,
    /// The backend could not be read; nothing was applied.
    BackendUnreachable,
    /// Some resources failed, or the prune guard refused; the rest was applied.
    PartlyFailed,
}

/// Counts of one sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCounts {
    /// Created.
    pub created: usize,
    /// Updated.
    pub updated: usize,
    /// Deleted.
    pub deleted: usize,
    /// Unchanged.
    pub unchanged: usize,
    /// Failed.
    pub failed: usize,
}

/// The record of one sync, as `cairnctl status` and the watcher's `/status` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncReport {
    /// What was read.
    pub source: String,
    /// The commit, for Git sources.
    pub commit: Option<String>,
    /// Unix seconds at start.
    pub started_at: u64,
    /// Wall time, milliseconds.
    pub duration_ms: u64,
    /// How it ended.
    pub result: SyncResult,
    /// Counts.
    pub counts: SyncCounts,
    /// Every error, with file and line for invalid documents.
    pub errors: Vec<String>,
    /// One line per change made (or planned, for a dry run).
    #[serde(skip)]
    pub lines: Vec<String>,
}

impl SyncReport {
    /// Whether the sync ended without error.
    pub fn ok(&self) -> bool {
        matches!(self.result, SyncResult::Applied | SyncResult::InSync)
    }

    /// A line for logs and the terminal.
    pub fn summary(&self) -> String {
        let at = match &self.commit {
            Some(commit) => format!("{} at {}", self.source, plan::short(commit)),
            None => self.source.clone(),
        };
        let counts = &self.counts;
        format!(
            "{at}: {}: {} created, {} updated, {} deleted, {} unchanged, {} failed ({} ms)",
            match self.result {
                SyncResult::Applied => "applied",
                SyncResult::InSync => "in sync",
                SyncResult::SourceUnreadable => "source unreadable, nothing applied",
                SyncResult::Invalid => "invalid manifests, nothing applied",
                SyncResult::BackendUnreachable => "backend unreachable, nothing applied",
                SyncResult::PartlyFailed => "errors",
            },
            counts.created,
            counts.updated,
            counts.deleted,
            counts.unchanged,
            counts.failed,
            self.duration_ms
        )
    }
}

/// Reads the source and plans against the backend.
///
/// # Errors
/// A report (never applied) when the source is unreadable, invalid, or the backend cannot be
/// read.
pub async fn plan(
    client: &Client,
    source: &Source,
    read: &ReadOptions,
    options: &SyncOptions,
) -> Result<(Snapshot, Plan), Box<SyncReport>> {
    let started = std::time::Instant::now();
    let started_at = unix_now();
    let fail = |result: SyncResult, commit: Option<String>, errors: Vec<String>| {
        Box::new(SyncReport {
            source: source.origin(),
            commit,
            started_at,
            duration_ms: elapsed_ms(started),
            result,
            counts: SyncCounts::default(),
            errors,
            lines: Vec::new(),
        })
    };
    let snapshot = {
        let owned = source.clone();
        let read = read.clone();
        match tokio::task::spawn_blocking(move || owned.read(&read)).await {
            Ok(Ok(snapshot)) => snapshot,
            Ok(Err(err)) => {
                return Err(fail(
                    SyncResult::SourceUnreadable,
                    None,
                    vec![err.to_string()],
                ))
            }
            Err(err) => {
                return Err(fail(
                    SyncResult::SourceUnreadable,
                    None,
                    vec![SourceError::Repository {
                        repo: source.describe(),
                        reason: err.to_string(),
                    }
                    .to_string()],
                ))
            }
        }
    };
    if snapshot.error_count(options.allow_unsupported) > 0 {
        let lint = crate::lint::report(&snapshot.manifests, options.allow_unsupported);
        let mut errors = lint.lines;
        errors.push(format!("{}; nothing was applied", lint.summary));
        return Err(fail(SyncResult::Invalid, snapshot.commit.clone(), errors));
    }
    let desired = plan::desired_resources(&snapshot, &options.owner);
    let live = match plan::live_state(client, &desired, &options.owner).await {
        Ok(live) => live,
        Err(err) => {
            return Err(fail(
                SyncResult::BackendUnreachable,
                snapshot.commit.clone(),
                vec![format!("cannot read the backend's state: {err}")],
            ))
        }
    };
    let plan = plan::compute(desired, live, &options.owner);
    Ok((snapshot, plan))
}

/// One whole sync: [`plan`], the prune guard, then [`apply::apply`] unless a dry run.
pub async fn sync(
    client: &Client,
    source: &Source,
    read: &ReadOptions,
    options: &SyncOptions,
) -> SyncReport {
    let started = std::time::Instant::now();
    let started_at = unix_now();
    let (snapshot, plan) = match plan(client, source, read, options).await {
        Ok(planned) => planned,
        Err(report) => return *report,
    };
    let counts = plan.counts();
    let mut report = SyncReport {
        source: snapshot.origin.clone(),
        commit: snapshot.commit.clone(),
        started_at,
        duration_ms: 0,
        result: SyncResult::Applied,
        counts: SyncCounts {
            unchanged: counts.unchanged,
            ..SyncCounts::default()
        },
        errors: Vec::new(),
        lines: Vec::new(),
    };
    let mut prune = options.prune;
    if prune && !options.force_prune {
        if let Some(refusal) = plan.prune_refusal(options.max_prune_percent) {
            report.errors.push(refusal);
            prune = false;
        }
    }
    if options.dry_run {
        report.lines = plan::render_text(&plan, &snapshot, false, false);
        report.counts = SyncCounts {
            created: counts.create,
            updated: counts.update,
            deleted: if prune { counts.delete } else { 0 },
            unchanged: counts.unchanged,
            failed: 0,
        };
    } else {
        let applied = apply::apply(
            client,
            &plan,
            ApplyOptions {
                prune,
                concurrency: options.concurrency,
                progress: options.progress,
            },
        )
        .await;
        report.counts.created = applied.created;
        report.counts.updated = applied.updated;
        report.counts.deleted = applied.deleted;
        report.counts.failed = applied.failed.len();
        report.lines = applied.lines;
        report
            .errors
            .extend(applied.failed.into_iter().map(|(_, message)| message));
    }
    report.result = if !report.errors.is_empty() {
        SyncResult::PartlyFailed
    } else if counts.create + counts.update == 0 && (counts.delete == 0 || !options.prune) {
        SyncResult::InSync
    } else {
        SyncResult::Applied
    };
    report.duration_ms = elapsed_ms(started);
    report
}

fn elapsed_ms(started: std::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}
