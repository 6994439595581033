//! One sync: read the source, validate every document, list the backend's state, plan, check
//! the prune guard, apply. `diff`, `apply` and `watch` are all made of this.

use serde::{Deserialize, Serialize};

use cairn_api::client::Client;
use cairn_api::gitops::{self, ResourceAction, SyncOutcome, SyncRecord, SyncedResource};
use cairn_api::meta::ANNOTATION_SOURCE;
use cairn_api::ResourceKey;

use crate::apply::{self, ApplyOptions};
use crate::plan::{self, Action, Plan};
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

/// The fields the backend will store but not act on ([`cairn_api::inert`]), one line each
/// with its file and line, so that a review of `cairnctl diff` shows them too.
fn inert_warnings(manifests: &cairn_api::codec::Manifests) -> Vec<String> {
    manifests
        .problems
        .iter()
        .filter(|problem| {
            !problem.is_error()
                && problem
                    .issue
                    .message
                    .starts_with(cairn_api::inert::INERT_PREFIX)
        })
        .map(ToString::to_string)
        .collect()
}

/// One whole sync: [`plan`], the prune guard, then [`apply::apply`] unless a dry run.
pub async fn sync(
    client: &Client,
    source: &Source,
    read: &ReadOptions,
    options: &SyncOptions,
) -> SyncReport {
    run(client, source, read, options).await.0
}

/// [`sync`], then, when it was a real apply (not a dry run) that reached the backend, its
/// record posted to the backend (`POST /api/cairn/v1/gitops/syncs`, see [`record_of`]):
/// what `cairnctl apply` and `cairnctl watch` run.
///
/// # Caveats
/// A record the backend does not take is a warning (through `tracing`, on stderr) and never
/// fails the sync.
pub async fn sync_and_record(
    client: &Client,
    source: &Source,
    read: &ReadOptions,
    options: &SyncOptions,
) -> SyncReport {
    let (report, changed) = run(client, source, read, options).await;
    let Some(changed) = changed.filter(|_| !options.dry_run) else {
        return report;
    };
    let Some(record) = record_of(&report, read.subdir.as_deref(), changed, unix_now()) else {
        return report;
    };
    if let Err(err) = client.record_sync(&record).await {
        tracing::warn!(
            source = %record.source,
            commit = record.commit.as_deref().unwrap_or(""),
            error = %err,
            "the sync was not recorded on the backend"
        );
    }
    report
}

/// The record of a sync that reached the backend, `None` for one that did not (the source
/// unreadable or invalid, the backend unreachable). `changed` lists the resources created,
/// updated or deleted; the first [`gitops::MAX_RESOURCES`] are kept and an error says how many
/// were left out; errors and strings are cut to the bounds of [`SyncRecord::check`].
pub fn record_of(
    report: &SyncReport,
    path: Option<&str>,
    mut changed: Vec<SyncedResource>,
    finished_at: u64,
) -> Option<SyncRecord> {
    let counts = &report.counts;
    let result = match report.result {
        SyncResult::Applied => SyncOutcome::Applied,
        SyncResult::InSync => SyncOutcome::Unchanged,
        SyncResult::PartlyFailed if counts.created + counts.updated + counts.deleted > 0 => {
            SyncOutcome::Partial
        }
        SyncResult::PartlyFailed => SyncOutcome::Failed,
        SyncResult::SourceUnreadable | SyncResult::Invalid | SyncResult::BackendUnreachable => {
            return None
        }
    };
    let mut errors: Vec<String> = report
        .errors
        .iter()
        .map(|error| fit(error, gitops::MAX_ERROR_BYTES))
        .collect();
    // Room for the two notes below.
    if errors.len() > gitops::MAX_ERRORS - 2 {
        let left_out = errors.len() - (gitops::MAX_ERRORS - 2);
        errors.truncate(gitops::MAX_ERRORS - 2);
        errors.push(format!("and {left_out} more errors"));
    }
    if changed.len() > gitops::MAX_RESOURCES {
        errors.push(format!(
            "{} resources changed; the record lists the first {}",
            changed.len(),
            gitops::MAX_RESOURCES
        ));
        changed.truncate(gitops::MAX_RESOURCES);
    }
    for resource in &mut changed {
        for text in [
            &mut resource.kind,
            &mut resource.namespace,
            &mut resource.name,
            &mut resource.source,
        ] {
            *text = fit(text, gitops::MAX_STRING_BYTES);
        }
    }
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let seconds = |at: u64| i64::try_from(at).unwrap_or(i64::MAX);
    Some(SyncRecord {
        id: None,
        recorded_at: None,
        recorded_by: None,
        source: fit(
            &crate::fetch::redact_url(&report.source),
            gitops::MAX_STRING_BYTES,
        ),
        commit: report
            .commit
            .as_deref()
            .map(|commit| fit(commit, gitops::MAX_STRING_BYTES)),
        path: path.map(|path| fit(path, gitops::MAX_STRING_BYTES)),
        result,
        dry_run: false,
        counts: gitops::SyncCounts {
            created: count(counts.created),
            updated: count(counts.updated),
            deleted: count(counts.deleted),
            unchanged: count(counts.unchanged),
            failed: count(counts.failed),
        },
        errors,
        resources: changed,
        started_at: seconds(report.started_at),
        finished_at: seconds(finished_at.max(report.started_at)),
    })
}

/// `text` cut to at most `limit` bytes, on a character boundary.
fn fit(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The resources of `plan` that applying changed: its creates and updates (and deletes when
/// pruning), less those that failed, with their `cairn.io/source`.
fn changed_resources(plan: &Plan, prune: bool, failed: &[ResourceKey]) -> Vec<SyncedResource> {
    plan.changes
        .iter()
        .filter(|change| !failed.contains(&change.key))
        .filter_map(|change| {
            let (action, resource) = match change.action {
                Action::Create => (ResourceAction::Created, change.desired.as_ref()),
                Action::Update => (ResourceAction::Updated, change.desired.as_ref()),
                Action::Delete if prune => (ResourceAction::Deleted, change.live.as_ref()),
                Action::Delete | Action::Unchanged => return None,
            };
            let source = resource
                .and_then(|resource| {
                    let meta = &resource.metadata;
                    meta.annotations
                        .get(ANNOTATION_SOURCE)
                        .or_else(|| meta.labels.get(ANNOTATION_SOURCE))
                })
                .cloned()
                .unwrap_or_default();
            Some(SyncedResource {
                kind: change.key.kind.type_name().to_owned(),
                namespace: change.key.namespace.clone(),
                name: change.key.name.clone(),
                action,
                source,
            })
        })
        .collect()
}

/// One sync, and the resources it changed when it reached the backend (`None` when it did
/// not: the source unreadable or invalid, the backend unreachable).
async fn run(
    client: &Client,
    source: &Source,
    read: &ReadOptions,
    options: &SyncOptions,
) -> (SyncReport, Option<Vec<SyncedResource>>) {
    let started = std::time::Instant::now();
    let started_at = unix_now();
    let (snapshot, plan) = match plan(client, source, read, options).await {
        Ok(planned) => planned,
        Err(report) => return (*report, None),
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
        lines: inert_warnings(&snapshot.manifests),
    };
    let mut changed = Vec::new();
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
        let failed: Vec<ResourceKey> = applied.failed.iter().map(|(key, _)| key.clone()).collect();
        changed = changed_resources(&plan, prune, &failed);
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
    (report, Some(changed))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn report(result: SyncResult, counts: SyncCounts, errors: usize) -> SyncReport {
        SyncReport {
            source: "https://user:hunter2@git.example.com/config.git".into(),
            commit: Some("c0ffee".into()),
            started_at: 100,
            duration_ms: 1500,
            result,
            counts,
            errors: (0..errors).map(|n| format!("error {n}")).collect(),
            lines: Vec::new(),
        }
    }

    fn resource(name: &str) -> SyncedResource {
        SyncedResource {
            kind: "CheckConfig".into(),
            namespace: "default".into(),
            name: name.into(),
            action: ResourceAction::Created,
            source: "x".repeat(2000),
        }
    }

    #[test]
    fn records_say_how_the_sync_ended_within_the_bounds() {
        let applied = SyncCounts {
            created: 1,
            ..SyncCounts::default()
        };
        let record = record_of(
            &report(SyncResult::Applied, applied, 0),
            Some("prod"),
            vec![resource("cpu")],
            102,
        )
        .unwrap();
        assert_eq!(record.result, SyncOutcome::Applied);
        assert_eq!(record.source, "https://git.example.com/config.git");
        assert_eq!(
            (
                record.path.as_deref(),
                record.started_at,
                record.finished_at
            ),
            (Some("prod"), 100, 102)
        );
        assert_eq!(record.resources[0].source.len(), gitops::MAX_STRING_BYTES);
        record.check().unwrap();

        let outcome = |result, counts| {
            record_of(&report(result, counts, 1), None, Vec::new(), 101).map(|r| r.result)
        };
        assert_eq!(
            outcome(SyncResult::InSync, SyncCounts::default()),
            Some(SyncOutcome::Unchanged)
        );
        assert_eq!(
            outcome(SyncResult::PartlyFailed, applied),
            Some(SyncOutcome::Partial)
        );
        assert_eq!(
            outcome(SyncResult::PartlyFailed, SyncCounts::default()),
            Some(SyncOutcome::Failed)
        );
        assert_eq!(outcome(SyncResult::BackendUnreachable, applied), None);
        assert_eq!(outcome(SyncResult::Invalid, applied), None);

        let many = (0..gitops::MAX_RESOURCES + 3)
            .map(|n| resource(&format!("c{n}")))
            .collect();
        let record = record_of(
            &report(SyncResult::PartlyFailed, applied, 500),
            None,
            many,
            101,
        )
        .unwrap();
        record.check().unwrap();
        assert_eq!(record.resources.len(), gitops::MAX_RESOURCES);
        assert_eq!(record.errors.len(), gitops::MAX_ERRORS);
        assert_eq!(record.errors[98], "and 402 more errors");
        assert_eq!(
            record.errors[99],
            "2003 resources changed; the record lists the first 2000"
        );
    }
}
