//! `cairnctl watch SOURCE`: keeps the backend in sync with a source.
//!
//! One loop ([`drive`]) owns syncing, so one sync runs at a time. Triggers are flags in
//! [`Triggers`], so any number that arrive during a sync coalesce into one follow-up sync,
//! which reads the newest commit:
//!
//! - a local repository: an inotify watch on its refs, `packed-refs` and `HEAD` (a push syncs
//!   at once);
//! - a folder: a recursive watch, debounced by `--debounce-ms`;
//! - a remote repository: a poll every `--interval` seconds;
//! - `POST /webhook` on `--webhook-listen` (see [`crate::webhook`]);
//! - `--self-heal`: a sync after that many seconds without one, repairing out-of-band edits;
//! - after a failure, a retry with exponential backoff and equal jitter (`cairn_api::backoff`:
//!   a ceiling of 1 s doubling to 60 s, each delay between half the ceiling and the ceiling).
//!
//! Ref changes and polls sync only when the commit moved or the last sync failed; the start,
//! webhooks, self-heal and retries always sync.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use cairn_api::backoff::{Backoff, Jitter};

use crate::cli::WatchArgs;
use crate::config::EnvSource;
use crate::ctl::{self, CtlError, Report};
use crate::exit::Outcome;
use crate::fetch;
use crate::gitops;
use crate::source::{ReadOptions, Source};
use crate::state::{lock, SharedState, WatchState};
use crate::sync::{self, SyncCounts, SyncReport, SyncResult};
use crate::trigger::{Reasons, Trigger, Triggers};
use crate::webhook;

/// The first retry after a failure waits this long; each further failure doubles it.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Retries never wait longer than this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A folder that never stops changing still syncs after this many debounce periods.
const DEBOUNCE_MAX_PERIODS: u32 = 10;

/// Timing of the loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// First retry delay.
    pub(crate) backoff_base: Duration,
    /// Longest retry delay.
    pub(crate) backoff_max: Duration,
    /// Sync after this long without a sync.
    pub(crate) self_heal: Option<Duration>,
}

impl Policy {
    /// The retry delays: `backoff_base` doubling up to `backoff_max`, each drawn in the upper
    /// half below its ceiling (equal jitter: watchers of one backend spread out, and a retry
    /// never comes at once).
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(self.backoff_base, self.backoff_max, Jitter::Equal)
    }
}

/// What the loop drives: the backend sync, and the cheap check of the source's commit.
pub(crate) trait Engine {
    /// The commit the source names now (`None` for folders).
    async fn resolve(&self) -> Result<Option<String>, String>;
    /// One whole sync.
    async fn sync(&self) -> SyncReport;
}

/// Where the loop reports each sync.
#[derive(Debug, Clone, Default)]
pub(crate) struct Output {
    /// Print the summary to stdout and errors to stderr.
    pub(crate) print: bool,
    /// Write the state here after each change.
    pub(crate) status_file: Option<PathBuf>,
}

impl Output {
    /// Writes the state to the status file, if any; a failure is logged, not fatal.
    async fn save(&self, state: &SharedState) {
        let Some(path) = self.status_file.clone() else {
            return;
        };
        let snapshot = lock(state).clone();
        let shown = path.display().to_string();
        let written = tokio::task::spawn_blocking(move || write_status_file(&path, &snapshot))
            .await
            .map_err(std::io::Error::other)
            .and_then(|written| written);
        if let Err(err) = written {
            tracing::warn!("cannot write the status file {shown}: {err}");
        }
    }

    /// Reports a finished sync: stdout, stderr, logs, status file.
    async fn finished(&self, report: &SyncReport, state: &SharedState, retry_in: Option<Duration>) {
        let summary = report.summary();
        for line in &report.lines {
            tracing::info!("{line}");
        }
        let commit = report.commit.as_deref();
        match retry_in {
            _ if report.ok() => tracing::info!(commit, "sync: {summary}"),
            Some(delay) => tracing::warn!(
                commit,
                failures = lock(state).consecutive_failures,
                "sync failed: {summary}; retrying in {:.1} s unless a change comes first",
                delay.as_secs_f64()
            ),
            None => tracing::warn!(commit, "sync failed: {summary}"),
        }
        if self.print {
            print_line(&summary);
            for error in &report.errors {
                eprintln!("{error}");
            }
        }
        self.save(state).await;
    }
}

/// Writes one line to stdout and flushes it. A reader that went away is not worth stopping
/// the watcher for.
fn print_line(line: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        tracing::debug!("cannot write to stdout: {err}");
    }
}

/// Writes the state as JSON to `path` atomically: a temporary file in the same folder, synced,
/// then renamed over `path`, so a reader never sees half a file.
///
/// # Errors
/// When the folder is not writable.
pub fn write_status_file(path: &Path, state: &WatchState) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let temporary = temporary_path(path, name);
    let mut text = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    text.push(b'\n');
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

fn temporary_path(path: &Path, name: &std::ffi::OsStr) -> PathBuf {
    path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ))
}

/// Records a finished sync in the state; returns the retry delay when it failed.
fn record(state: &SharedState, report: &SyncReport, backoff: &mut Backoff) -> Option<Duration> {
    let mut state = lock(state);
    let now = sync::unix_now();
    state.syncing = false;
    state.syncs += 1;
    state.updated_at = now;
    let retry_in = if report.ok() {
        state.consecutive_failures = 0;
        state.last_success_commit = report.commit.clone();
        state.last_success_at = Some(report.started_at);
        state.next_retry_at = None;
        backoff.reset();
        None
    } else {
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        let delay = backoff.next_delay();
        state.next_retry_at = Some(now + delay.as_secs_f64().ceil() as u64);
        Some(delay)
    };
    state.last_sync = Some(report.clone());
    retry_in
}

/// Resolves when the stop counter reaches `count` (signals received); never when the signal
/// listener is gone.
async fn stopped(stop: &mut watch::Receiver<u32>, count: u32) {
    if stop.wait_for(|received| *received >= count).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The watch loop: the initial sync, then one sync per batch of triggers, until `stop`
/// counts one signal (the running sync finishes first) or two (it is abandoned).
pub(crate) async fn drive<E: Engine>(
    engine: &E,
    triggers: &Triggers,
    state: &SharedState,
    policy: &Policy,
    output: &Output,
    mut stop: watch::Receiver<u32>,
) {
    triggers.fire(Trigger::Start);
    let mut retry_at: Option<Instant> = None;
    let mut heal_at: Option<Instant> = None;
    let mut backoff = policy.backoff();
    loop {
        let reasons = tokio::select! {
            biased;
            () = stopped(&mut stop, 1) => break,
            reasons = triggers.next() => reasons,
            () = sleep_until(retry_at) => Reasons::of(Trigger::Retry),
            () = sleep_until(heal_at) => Reasons::of(Trigger::SelfHeal),
        };
        let reasons = reasons.union(triggers.take());
        let (failing, last_commit) = {
            let state = lock(state);
            (
                state.failing(),
                state
                    .last_sync
                    .as_ref()
                    .and_then(|report| report.commit.clone()),
            )
        };
        if !reasons.forced() && !failing {
            let resolved = tokio::select! {
                biased;
                () = stopped(&mut stop, 1) => break,
                resolved = engine.resolve() => resolved,
            };
            match resolved {
                Ok(Some(commit)) if last_commit.as_deref() == Some(commit.as_str()) => {
                    tracing::debug!(%commit, "{}: the commit has not moved", reasons.describe());
                    continue;
                }
                Ok(_) => {}
                // The sync reads the source again and records why it cannot.
                Err(err) => tracing::debug!("cannot resolve the commit: {err}"),
            }
        }
        {
            let mut state = lock(state);
            state.syncing = true;
            state.last_trigger = Some(reasons.describe());
            state.updated_at = sync::unix_now();
        }
        output.save(state).await;
        tracing::info!(trigger = %reasons.describe(), "syncing");
        let report = tokio::select! {
            biased;
            () = stopped(&mut stop, 2) => {
                tracing::warn!("stopped during a sync; the next run repairs what it left");
                break;
            }
            report = engine.sync() => report,
        };
        let retry_in = record(state, &report, &mut backoff);
        retry_at = retry_in.map(|delay| Instant::now() + delay);
        heal_at = policy.self_heal.map(|period| Instant::now() + period);
        output.finished(&report, state, retry_in).await;
        if *stop.borrow() >= 1 {
            break;
        }
    }
    {
        let mut state = lock(state);
        state.syncing = false;
        state.next_retry_at = None;
        state.updated_at = sync::unix_now();
    }
    output.save(state).await;
}

/// The real engine: connects (refreshing tokens) and syncs with the command line's options.
struct Live<'a> {
    env: &'a dyn EnvSource,
    args: &'a WatchArgs,
    source: Source,
    read: ReadOptions,
}

impl Engine for Live<'_> {
    async fn resolve(&self) -> Result<Option<String>, String> {
        let source = self.source.clone();
        let read = self.read.clone();
        match tokio::task::spawn_blocking(move || source.resolve_commit(&read)).await {
            Ok(resolved) => resolved.map_err(|err| err.to_string()),
            Err(err) => Err(err.to_string()),
        }
    }

    async fn sync(&self) -> SyncReport {
        let started = std::time::Instant::now();
        let started_at = sync::unix_now();
        let mut report = match ctl::connect(self.env).await {
            Ok((client, namespace)) => {
                let (source, read) = gitops::source_of(&self.args.source, &namespace);
                let mut options =
                    gitops::options_of(&self.args.source, Some(&self.args.prune), false);
                options.progress = false;
                sync::sync_and_record(&client, &source, &read, &options).await
            }
            Err(err) => SyncReport {
                source: describe(&self.source),
                commit: None,
                started_at,
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                result: SyncResult::BackendUnreachable,
                counts: SyncCounts::default(),
                errors: vec![format!("cannot connect to the backend: {err}")],
                lines: Vec::new(),
            },
        };
        report.source = fetch::redact_url(&report.source);
        report
    }
}

/// How a source reads in the state and logs: [`Source::describe`] with any credentials in a
/// repository URL left out (`/status` is served to anyone who can reach it).
fn describe(source: &Source) -> String {
    match source {
        Source::Git { repo, reference } => {
            format!("{} at {reference}", fetch::redact_url(repo))
        }
        Source::Folder(_) => source.describe(),
    }
}

/// Runs the watcher until interrupted.
///
/// # Errors
/// Configuration errors, or a listener that cannot bind.
pub async fn run(env: &dyn EnvSource, args: &WatchArgs) -> Result<Report, CtlError> {
    if args.self_heal == Some(0) {
        return Err(CtlError::Usage(
            "--self-heal must be at least 1 second".to_owned(),
        ));
    }
    gitops::check_source_args(&args.source)?;
    // The namespace only matters to the sync, which takes the configured one.
    let (source, read) = gitops::source_of(&args.source, "default");
    if source.is_remote() && args.interval == 0 {
        return Err(CtlError::Usage(
            "--interval must be at least 1 second".to_owned(),
        ));
    }
    if let (Source::Folder(folder), Some(status_file)) = (&source, &args.status_file) {
        refuse_status_file_in_folder(folder, args.source.path.as_deref(), status_file)?;
    }
    let state: SharedState = Arc::new(Mutex::new(WatchState::new(
        describe(&source),
        sync::unix_now(),
    )));
    let output = Output {
        print: true,
        status_file: args.status_file.clone(),
    };
    if let Some(path) = &args.status_file {
        // Found out now, not after the first sync, when the file cannot be written.
        write_status_file(path, &lock(&state)).map_err(|err| {
            CtlError::Usage(format!(
                "cannot write the status file {}: {err}",
                path.display()
            ))
        })?;
    }
    let policy = Policy {
        backoff_base: BACKOFF_BASE,
        backoff_max: BACKOFF_MAX,
        self_heal: args.self_heal.map(Duration::from_secs),
    };
    let engine = Live {
        env,
        args,
        source: source.clone(),
        read: read.clone(),
    };

    if args.once {
        let report = engine.sync().await;
        {
            let mut state = lock(&state);
            state.last_trigger = Some(Trigger::Start.name().to_owned());
        }
        record(&state, &report, &mut policy.backoff());
        // Nothing will retry.
        lock(&state).next_retry_at = None;
        output.finished(&report, &state, None).await;
        return Ok(Report {
            lines: Vec::new(),
            errors: Vec::new(),
            outcome: if report.ok() {
                Outcome::Success
            } else {
                Outcome::Failure
            },
        });
    }

    let secret = match &args.webhook_secret_file {
        Some(path) => Some(webhook::Secret::from_file(path)?),
        None => None,
    };
    let triggers = Arc::new(Triggers::default());
    let (stop_sender, stop) = watch::channel(0u32);
    let signals = listen_for_signals(stop_sender)?;
    let mut tasks = vec![signals];

    let listener = match args.webhook_listen {
        Some(addr) => {
            if secret.is_none() {
                tracing::warn!(
                    "--webhook-listen without --webhook-secret-file: POST /webhook answers 404; \
                     /status and /healthz are served"
                );
            }
            let listener = webhook::bind(addr).await?;
            let local = listener.local_addr().unwrap_or(addr);
            print_line(&format!("webhook listening on http://{local}"));
            tracing::info!("listening on http://{local}");
            let app = webhook::App {
                triggers: Arc::clone(&triggers),
                state: Arc::clone(&state),
                secret,
                deliveries: Arc::default(),
            };
            Some(webhook::serve(listener, app))
        }
        None => None,
    };

    let ignored = ignored_paths(args.status_file.as_deref());
    let (watcher, mut watch_tasks) = start_watching(&source, args, &triggers, ignored).await?;
    tasks.append(&mut watch_tasks);

    drive(&engine, &triggers, &state, &policy, &output, stop).await;

    drop(watcher);
    for task in &tasks {
        task.abort();
    }
    if let Some(listener) = listener {
        listener.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(Report {
        lines: Vec::new(),
        errors: Vec::new(),
        outcome: Outcome::Success,
    })
}

/// A status file named like a manifest inside the folder the sync reads would be read as an
/// (invalid) manifest, and fail every sync.
fn refuse_status_file_in_folder(
    folder: &Path,
    subdir: Option<&str>,
    status_file: &Path,
) -> Result<(), CtlError> {
    let Some(status) = ignored_paths(Some(status_file)).into_iter().next() else {
        return Ok(());
    };
    let Ok(root) = std::fs::canonicalize(folder) else {
        // The watch setup reports a missing folder.
        return Ok(());
    };
    let read = match subdir {
        Some(subdir) => std::fs::canonicalize(root.join(subdir)).unwrap_or(root),
        None => root,
    };
    if status.starts_with(&read) && cairn_api::codec::is_manifest_name(&status) {
        return Err(CtlError::Usage(format!(
            "--status-file {} is inside the folder the sync reads, which would read it as a \
             manifest; put it elsewhere",
            status_file.display()
        )));
    }
    Ok(())
}

/// Counts SIGINT and SIGTERM into `stop`: the first stops the watcher after the running sync,
/// the second at once.
fn listen_for_signals(stop: watch::Sender<u32>) -> Result<JoinHandle<()>, CtlError> {
    #[cfg(unix)]
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|err| CtlError::Usage(format!("cannot listen for SIGTERM: {err}")))?;
    Ok(tokio::spawn(async move {
        loop {
            #[cfg(unix)]
            let received = tokio::select! {
                received = tokio::signal::ctrl_c() => received.is_ok(),
                received = terminate.recv() => received.is_some(),
            };
            #[cfg(not(unix))]
            let received = tokio::signal::ctrl_c().await.is_ok();
            if !received {
                return;
            }
            stop.send_modify(|count| *count += 1);
            if *stop.borrow() == 1 {
                tracing::info!(
                    "stopping after the running sync, if any; signal again to stop at once"
                );
            }
        }
    }))
}

/// Paths whose changes are the watcher's own writes: the status file and its temporary file.
fn ignored_paths(status_file: Option<&Path>) -> Vec<PathBuf> {
    let Some(path) = status_file else {
        return Vec::new();
    };
    let Some(name) = path.file_name() else {
        return Vec::new();
    };
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let folder = std::fs::canonicalize(&folder).unwrap_or(folder);
    let path = folder.join(name);
    let temporary = temporary_path(&path, name);
    vec![path, temporary]
}

/// Which changes start a sync.
#[derive(Debug, Clone)]
enum Filter {
    /// A repository: its refs, `packed-refs` and `HEAD`.
    Git {
        git_dir: PathBuf,
        common_dir: PathBuf,
    },
    /// A folder: anything but reads, `.git/` and the watcher's own files.
    Folder {
        root: PathBuf,
        ignored: Vec<PathBuf>,
    },
}

impl Filter {
    fn wants(&self, event: &notify::Event) -> bool {
        use notify::event::{AccessKind, AccessMode, EventKind};
        if event.need_rescan() {
            return true;
        }
        if let EventKind::Access(access) = event.kind {
            // Opens and reads (ours included) change nothing; a closed writer is a change.
            if access != AccessKind::Close(AccessMode::Write) {
                return false;
            }
        }
        match self {
            Filter::Git {
                git_dir,
                common_dir,
            } => event.paths.iter().any(|path| {
                let lock = path
                    .extension()
                    .is_some_and(|extension| extension == "lock");
                !lock
                    && (path.starts_with(common_dir.join("refs"))
                        || path == &common_dir.join("packed-refs")
                        || path == &git_dir.join("HEAD"))
            }),
            Filter::Folder { root, ignored } => event.paths.iter().any(|path| {
                let in_git = path
                    .strip_prefix(root)
                    .unwrap_or(path)
                    .components()
                    .any(|component| component.as_os_str() == ".git");
                !in_git && !ignored.iter().any(|ignored| ignored == path)
            }),
        }
    }
}

/// Starts what fires [`Trigger::Change`] or [`Trigger::Poll`] for `source`; the watcher must
/// be kept alive as long as the loop runs.
async fn start_watching(
    source: &Source,
    args: &WatchArgs,
    triggers: &Arc<Triggers>,
    ignored: Vec<PathBuf>,
) -> Result<(Option<notify::RecommendedWatcher>, Vec<JoinHandle<()>>), CtlError> {
    let interval = Duration::from_secs(args.interval.max(1));
    let (filter, paths, debounce) = match source {
        Source::Git { repo, .. } if source.is_remote() => {
            tracing::info!(
                "polling {} every {} s",
                fetch::redact_url(repo),
                interval.as_secs()
            );
            return Ok((None, vec![poll(Arc::clone(triggers), interval)]));
        }
        Source::Git { repo, .. } => {
            let opened = {
                let repo = repo.clone();
                tokio::task::spawn_blocking(move || {
                    git2::Repository::open(&repo)
                        .map(|repository| {
                            (
                                repository.path().to_owned(),
                                repository.commondir().to_owned(),
                            )
                        })
                        .map_err(|err| err.message().to_owned())
                })
                .await
                .map_err(|err| err.to_string())
                .and_then(|opened| opened)
            };
            let (git_dir, common_dir) = opened
                .map_err(|reason| CtlError::Usage(format!("cannot watch {repo}: {reason}")))?;
            let mut paths = vec![
                (common_dir.join("refs"), notify::RecursiveMode::Recursive),
                (git_dir.clone(), notify::RecursiveMode::NonRecursive),
            ];
            if common_dir != git_dir {
                paths.push((common_dir.clone(), notify::RecursiveMode::NonRecursive));
            }
            (
                Filter::Git {
                    git_dir,
                    common_dir,
                },
                paths,
                None,
            )
        }
        Source::Folder(folder) => {
            let root = std::fs::canonicalize(folder).map_err(|err| {
                CtlError::Usage(format!("cannot watch {}: {err}", folder.display()))
            })?;
            if !root.is_dir() {
                return Err(CtlError::Usage(format!(
                    "cannot watch {}: not a folder",
                    folder.display()
                )));
            }
            (
                Filter::Folder {
                    root: root.clone(),
                    ignored,
                },
                vec![(root, notify::RecursiveMode::Recursive)],
                Some(Duration::from_millis(args.debounce_ms)),
            )
        }
    };
    let (sender, receiver) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event| {
        // The loop is gone when this fails; nothing to do.
        let _ = sender.send(event);
    })
    .and_then(|mut watcher| {
        for (path, mode) in &paths {
            notify::Watcher::watch(&mut watcher, path, *mode)?;
        }
        Ok(watcher)
    });
    match watcher {
        Ok(watcher) => {
            tracing::info!(
                "watching {} for changes",
                paths
                    .iter()
                    .map(|(path, _)| path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let pump = tokio::spawn(pump(receiver, filter, debounce, Arc::clone(triggers)));
            Ok((Some(watcher), vec![pump]))
        }
        Err(err) => {
            // E.g. the inotify watch limit: polling still keeps the backend in sync.
            tracing::warn!(
                "cannot watch for changes ({err}); polling every {} s instead",
                interval.as_secs()
            );
            Ok((None, vec![poll(Arc::clone(triggers), interval)]))
        }
    }
}

/// Fires [`Trigger::Poll`] every `interval` (the start has its own sync).
fn poll(triggers: Arc<Triggers>, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            triggers.fire(Trigger::Poll);
        }
    })
}

/// Turns file events into [`Trigger::Change`]: at once, or after `debounce` without a further
/// change (at most [`DEBOUNCE_MAX_PERIODS`] periods after the first).
async fn pump(
    mut events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    filter: Filter,
    debounce: Option<Duration>,
    triggers: Arc<Triggers>,
) {
    let wanted = |event: notify::Result<notify::Event>| match event {
        Ok(event) => filter.wants(&event),
        Err(err) => {
            tracing::warn!("file watch error: {err}; syncing to be safe");
            true
        }
    };
    while let Some(event) = events.recv().await {
        if !wanted(event) {
            continue;
        }
        if let Some(quiet) = debounce.filter(|quiet| !quiet.is_zero()) {
            let latest = Instant::now() + quiet * DEBOUNCE_MAX_PERIODS;
            let mut settle = Instant::now() + quiet;
            // Until the quiet period passes (or the channel closes).
            while let Ok(Some(event)) =
                tokio::time::timeout_at(settle.min(latest), events.recv()).await
            {
                if wanted(event) {
                    settle = Instant::now() + quiet;
                }
            }
        }
        triggers.fire(Trigger::Change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicU32, Ordering};

    use futures::FutureExt;

    const PATIENCE: Duration = Duration::from_secs(10);

    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Resolved,
        Syncing(u32, String),
    }

    /// An engine whose syncs wait for the test's word and report the commit it sets.
    struct Scripted {
        commit: Mutex<String>,
        fail: Mutex<Vec<bool>>,
        syncs: AtomicU32,
        seen: mpsc::UnboundedSender<Seen>,
        release: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
        state: SharedState,
    }

    impl Engine for Scripted {
        async fn resolve(&self) -> Result<Option<String>, String> {
            let _ = self.seen.send(Seen::Resolved);
            Ok(Some(self.commit.lock().unwrap().clone()))
        }

        async fn sync(&self) -> SyncReport {
            let number = self.syncs.fetch_add(1, Ordering::SeqCst) + 1;
            let trigger = lock(&self.state).last_trigger.clone().unwrap_or_default();
            // Read before the test hears of the sync, as a real sync reads the source before
            // it applies: a push during the wait is not in this sync.
            let commit = self.commit.lock().unwrap().clone();
            let _ = self.seen.send(Seen::Syncing(number, trigger));
            self.release.lock().await.recv().await;
            let fail = {
                let mut fail = self.fail.lock().unwrap();
                if fail.is_empty() {
                    false
                } else {
                    fail.remove(0)
                }
            };
            SyncReport {
                source: "test".to_owned(),
                commit: Some(commit),
                started_at: 1,
                duration_ms: 0,
                result: if fail {
                    SyncResult::BackendUnreachable
                } else {
                    SyncResult::Applied
                },
                counts: SyncCounts::default(),
                errors: Vec::new(),
                lines: Vec::new(),
            }
        }
    }

    struct Harness {
        engine: Arc<Scripted>,
        triggers: Arc<Triggers>,
        state: SharedState,
        seen: mpsc::UnboundedReceiver<Seen>,
        release: mpsc::UnboundedSender<()>,
        stop: watch::Sender<u32>,
        task: JoinHandle<()>,
    }

    impl Harness {
        fn start(policy: Policy, fail: Vec<bool>) -> Harness {
            let (seen_sender, seen) = mpsc::unbounded_channel();
            let (release, release_receiver) = mpsc::unbounded_channel();
            let state: SharedState = Arc::default();
            let engine = Arc::new(Scripted {
                commit: Mutex::new("a".to_owned()),
                fail: Mutex::new(fail),
                syncs: AtomicU32::new(0),
                seen: seen_sender,
                release: tokio::sync::Mutex::new(release_receiver),
                state: Arc::clone(&state),
            });
            let triggers = Arc::new(Triggers::default());
            let (stop, stop_receiver) = watch::channel(0);
            let task = {
                let engine = Arc::clone(&engine);
                let triggers = Arc::clone(&triggers);
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    drive(
                        &*engine,
                        &triggers,
                        &state,
                        &policy,
                        &Output::default(),
                        stop_receiver,
                    )
                    .await;
                })
            };
            Harness {
                engine,
                triggers,
                state,
                seen,
                release,
                stop,
                task,
            }
        }

        async fn next(&mut self) -> Seen {
            tokio::time::timeout(PATIENCE, self.seen.recv())
                .await
                .expect("the loop did not move")
                .expect("the loop ended")
        }

        fn set_commit(&self, commit: &str) {
            *self.engine.commit.lock().unwrap() = commit.to_owned();
        }

        async fn finish(self) -> u32 {
            self.stop.send_modify(|count| *count += 1);
            tokio::time::timeout(PATIENCE, self.task)
                .await
                .expect("the loop did not stop")
                .expect("the loop panicked");
            self.engine.syncs.load(Ordering::SeqCst)
        }
    }

    fn quiet_policy() -> Policy {
        Policy {
            backoff_base: Duration::from_secs(3600),
            backoff_max: Duration::from_secs(3600),
            self_heal: None,
        }
    }

    #[test]
    fn retries_back_off_from_one_second_to_a_minute_with_equal_jitter() {
        let policy = Policy {
            backoff_base: BACKOFF_BASE,
            backoff_max: BACKOFF_MAX,
            self_heal: None,
        };
        let mut backoff = policy.backoff();
        let mut ceilings = Vec::new();
        for _ in 0..9 {
            let ceiling = backoff.ceiling();
            ceilings.push(ceiling.as_secs());
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), BACKOFF_BASE);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_during_a_sync_makes_exactly_one_follow_up() {
        let mut harness = Harness::start(quiet_policy(), Vec::new());
        assert_eq!(harness.next().await, Seen::Syncing(1, "start".to_owned()));
        // Ten pushes while the first sync runs.
        harness.set_commit("b");
        for _ in 0..10 {
            harness.triggers.fire(Trigger::Change);
        }
        harness.release.send(()).unwrap();
        // The follow-up sees the commit moved, and syncs once.
        assert_eq!(harness.next().await, Seen::Resolved);
        assert_eq!(harness.next().await, Seen::Syncing(2, "change".to_owned()));
        harness.release.send(()).unwrap();
        // A change that does not move the commit only resolves; had the burst left a second
        // batch behind, a third sync would show here first.
        harness.triggers.fire(Trigger::Change);
        assert_eq!(harness.next().await, Seen::Resolved);
        let state = lock(&harness.state).clone();
        assert_eq!(state.syncs, 2);
        assert_eq!(state.last_success_commit.as_deref(), Some("b"));
        assert!(!state.syncing);
        assert_eq!(harness.finish().await, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhooks_during_a_sync_force_one_follow_up() {
        let mut harness = Harness::start(quiet_policy(), Vec::new());
        assert_eq!(harness.next().await, Seen::Syncing(1, "start".to_owned()));
        for _ in 0..10 {
            harness.triggers.fire(Trigger::Webhook);
        }
        harness.release.send(()).unwrap();
        // Same commit, but a webhook syncs anyway, without resolving.
        assert_eq!(harness.next().await, Seen::Syncing(2, "webhook".to_owned()));
        harness.release.send(()).unwrap();
        harness.triggers.fire(Trigger::Change);
        assert_eq!(harness.next().await, Seen::Resolved);
        assert_eq!(harness.finish().await, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failure_retries_after_the_backoff() {
        let policy = Policy {
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(20),
            self_heal: None,
        };
        let mut harness = Harness::start(policy, vec![true]);
        assert_eq!(harness.next().await, Seen::Syncing(1, "start".to_owned()));
        harness.release.send(()).unwrap();
        // No trigger: the retry timer starts the second sync.
        assert_eq!(harness.next().await, Seen::Syncing(2, "retry".to_owned()));
        {
            let state = lock(&harness.state);
            assert_eq!(state.consecutive_failures, 1);
            assert!(state.next_retry_at.is_some());
            assert!(state.failing());
        }
        harness.release.send(()).unwrap();
        harness.triggers.fire(Trigger::Change);
        assert_eq!(harness.next().await, Seen::Resolved);
        {
            let state = lock(&harness.state);
            assert_eq!(state.consecutive_failures, 0);
            assert_eq!(state.next_retry_at, None);
            assert_eq!(state.last_success_commit.as_deref(), Some("a"));
        }
        assert_eq!(harness.finish().await, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_during_backoff_syncs_at_once() {
        // An hour of backoff: only the trigger can start the second sync in time.
        let mut harness = Harness::start(quiet_policy(), vec![true]);
        assert_eq!(harness.next().await, Seen::Syncing(1, "start".to_owned()));
        harness.release.send(()).unwrap();
        // Same commit, but the last sync failed: no resolve, straight to a sync.
        harness.triggers.fire(Trigger::Change);
        assert_eq!(harness.next().await, Seen::Syncing(2, "change".to_owned()));
        harness.release.send(()).unwrap();
        assert_eq!(harness.finish().await, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn self_heal_syncs_without_a_change() {
        let policy = Policy {
            self_heal: Some(Duration::from_millis(20)),
            ..quiet_policy()
        };
        let mut harness = Harness::start(policy, Vec::new());
        assert_eq!(harness.next().await, Seen::Syncing(1, "start".to_owned()));
        harness.release.send(()).unwrap();
        assert_eq!(
            harness.next().await,
            Seen::Syncing(2, "self-heal".to_owned())
        );
        harness.release.send(()).unwrap();
        assert!(harness.finish().await >= 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_signal_lets_the_running_sync_finish() {
        let mut harness = Harness::start(quiet_policy(), Vec::new());
        assert_eq!(harness.next().await, Seen::Syncing(1, "start".to_owned()));
        harness.stop.send_modify(|count| *count += 1);
        harness.triggers.fire(Trigger::Webhook);
        harness.release.send(()).unwrap();
        tokio::time::timeout(PATIENCE, &mut harness.task)
            .await
            .expect("the loop did not stop")
            .unwrap();
        let state = lock(&harness.state).clone();
        assert_eq!(
            state.syncs, 1,
            "the first sync was recorded, no second began"
        );
        assert!(!state.syncing);
    }

    #[test]
    fn the_status_file_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let mut state = WatchState::new("repo.git at main".to_owned(), 100);
        state.last_sync = Some(SyncReport {
            source: "repo.git".to_owned(),
            commit: Some("0123456789abcdef0123456789abcdef01234567".to_owned()),
            started_at: 101,
            duration_ms: 12,
            result: SyncResult::PartlyFailed,
            counts: SyncCounts {
                created: 1,
                failed: 1,
                ..SyncCounts::default()
            },
            errors: vec!["checks/a: refused".to_owned()],
            lines: Vec::new(),
        });
        state.consecutive_failures = 2;
        state.next_retry_at = Some(105);
        write_status_file(&path, &state).unwrap();
        // Rewriting replaces the file whole.
        state.syncs = 3;
        write_status_file(&path, &state).unwrap();
        let read: WatchState = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            serde_json::to_value(&read).unwrap(),
            serde_json::to_value(&state).unwrap()
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("status.json")]);
        // A folder that does not exist is an error, not a panic.
        assert!(write_status_file(&dir.path().join("missing/status.json"), &state).is_err());
    }

    #[test]
    fn descriptions_leave_credentials_out() {
        let source = |repo: &str| Source::Git {
            repo: repo.to_owned(),
            reference: "main".to_owned(),
        };
        assert_eq!(
            describe(&source(
                "https://x-access-token:ghp_secret@github.com/o/r.git"
            )),
            "https://github.com/o/r.git at main"
        );
        assert_eq!(describe(&source("/srv/repo.git")), "/srv/repo.git at main");
        assert_eq!(
            describe(&Source::Folder(PathBuf::from("manifests"))),
            "manifests"
        );
    }

    #[test]
    fn a_status_file_among_the_manifests_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("manifests");
        std::fs::create_dir_all(folder.join("sub")).unwrap();
        let inside = folder.join("status.json");
        let err = refuse_status_file_in_folder(&folder, None, &inside).unwrap_err();
        assert!(err.to_string().contains("status.json"), "{err}");
        assert!(refuse_status_file_in_folder(&folder, None, &folder.join("status.txt")).is_ok());
        assert!(refuse_status_file_in_folder(&folder, Some("sub"), &inside).is_ok());
        assert!(
            refuse_status_file_in_folder(&folder, None, &dir.path().join("status.json")).is_ok()
        );
    }

    fn event(kind: notify::EventKind, path: &Path) -> notify::Event {
        notify::Event::new(kind).add_path(path.to_owned())
    }

    #[test]
    fn the_git_filter_sees_ref_updates_only() {
        use notify::event::{AccessKind, CreateKind, ModifyKind, RenameMode};
        let filter = Filter::Git {
            git_dir: PathBuf::from("/r.git"),
            common_dir: PathBuf::from("/r.git"),
        };
        let renamed = notify::EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(filter.wants(&event(renamed, Path::new("/r.git/refs/heads/main"))));
        assert!(filter.wants(&event(renamed, Path::new("/r.git/packed-refs"))));
        assert!(filter.wants(&event(renamed, Path::new("/r.git/HEAD"))));
        let created = notify::EventKind::Create(CreateKind::File);
        assert!(!filter.wants(&event(created, Path::new("/r.git/refs/heads/main.lock"))));
        assert!(!filter.wants(&event(created, Path::new("/r.git/FETCH_HEAD"))));
        let opened = notify::EventKind::Access(AccessKind::Open(notify::event::AccessMode::Any));
        assert!(!filter.wants(&event(opened, Path::new("/r.git/refs/heads/main"))));
    }

    #[test]
    fn the_folder_filter_skips_reads_git_and_own_files() {
        use notify::event::{AccessKind, AccessMode, DataChange, ModifyKind};
        let filter = Filter::Folder {
            root: PathBuf::from("/m"),
            ignored: vec![PathBuf::from("/m/status.json")],
        };
        let written = notify::EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(filter.wants(&event(written, Path::new("/m/checks/a.yaml"))));
        assert!(!filter.wants(&event(written, Path::new("/m/.git/index"))));
        assert!(!filter.wants(&event(written, Path::new("/m/status.json"))));
        let read = notify::EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert!(!filter.wants(&event(read, Path::new("/m/checks/a.yaml"))));
        let closed = notify::EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(filter.wants(&event(closed, Path::new("/m/checks/a.yaml"))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_file_events_fires_once_after_the_quiet_period() {
        use notify::event::{DataChange, ModifyKind};
        let (sender, receiver) = mpsc::unbounded_channel();
        let triggers = Arc::new(Triggers::default());
        let filter = Filter::Folder {
            root: PathBuf::from("/m"),
            ignored: Vec::new(),
        };
        let task = tokio::spawn(pump(
            receiver,
            filter,
            Some(Duration::from_millis(50)),
            Arc::clone(&triggers),
        ));
        let written = notify::EventKind::Modify(ModifyKind::Data(DataChange::Any));
        for _ in 0..20 {
            sender
                .send(Ok(event(written, Path::new("/m/a.yaml"))))
                .unwrap();
        }
        let batch = tokio::time::timeout(PATIENCE, triggers.next())
            .await
            .expect("the burst fired");
        assert_eq!(batch, Reasons::of(Trigger::Change));
        // The channel closing ends the pump; the burst fired exactly once.
        drop(sender);
        tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
        assert_eq!(triggers.next().now_or_never(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ref_update_in_a_bare_repository_fires_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let repository = git2::Repository::init_bare(dir.path()).unwrap();
        let (git_dir, common_dir) = (
            repository.path().to_owned(),
            repository.commondir().to_owned(),
        );
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = sender.send(event);
        })
        .unwrap();
        std::fs::create_dir_all(common_dir.join("refs/heads")).unwrap();
        notify::Watcher::watch(
            &mut watcher,
            &common_dir.join("refs"),
            notify::RecursiveMode::Recursive,
        )
        .unwrap();
        notify::Watcher::watch(&mut watcher, &git_dir, notify::RecursiveMode::NonRecursive)
            .unwrap();
        let triggers = Arc::new(Triggers::default());
        let task = tokio::spawn(pump(
            receiver,
            Filter::Git {
                git_dir,
                common_dir,
            },
            None,
            Arc::clone(&triggers),
        ));
        // What `git push` does: write the ref through a lock file.
        let signature = git2::Signature::now("t", "t@example.com").unwrap();
        let tree = {
            let builder = repository.treebuilder(None).unwrap();
            let oid = builder.write().unwrap();
            repository.find_tree(oid).unwrap()
        };
        repository
            .commit(
                Some("refs/heads/main"),
                &signature,
                &signature,
                "first",
                &tree,
                &[],
            )
            .unwrap();
        let batch = tokio::time::timeout(PATIENCE, triggers.next())
            .await
            .expect("the ref update fired");
        assert_eq!(batch, Reasons::of(Trigger::Change));
        drop(watcher);
        task.abort();
    }
}
