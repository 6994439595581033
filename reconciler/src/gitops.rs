//! `cairnctl diff` and `cairnctl apply`: one sync of a source against the configured backend.

use crate::cli::{ApplyArgs, DiffArgs, DiffFormat, PruneArgs, SourceArgs};
use crate::config::EnvSource;
use crate::ctl::{self, CtlError, Report};
use crate::exit::Outcome;
use crate::plan;
use crate::source::{ReadOptions, Source};
use crate::sync::{self, SyncOptions, SyncResult};

/// Refuses source flags that do not go together (clap's `requires` does not hold across the
/// flattened arguments): `--ref` without `--git`.
///
/// # Errors
/// [`CtlError::Usage`] naming the flag.
pub fn check_source_args(args: &SourceArgs) -> Result<(), CtlError> {
    if args.reference.is_some() && args.git.is_none() {
        return Err(CtlError::Usage(
            "--ref needs --git: a folder source has no refs".to_owned(),
        ));
    }
    Ok(())
}

/// The source and read options named by the command line; `namespace` is the configured
/// default when `--namespace` is not given.
pub fn source_of(args: &SourceArgs, default_namespace: &str) -> (Source, ReadOptions) {
    let source = Source::from_args(
        args.folder.clone(),
        args.git.clone(),
        args.reference.as_deref().unwrap_or("HEAD"),
    );
    let read = ReadOptions {
        subdir: args.path.clone(),
        default_namespace: args
            .namespace
            .clone()
            .unwrap_or_else(|| default_namespace.to_owned()),
        cache_dir: args.cache_dir.clone(),
    };
    (source, read)
}

/// Sync options from the command line.
pub fn options_of(source: &SourceArgs, prune: Option<&PruneArgs>, dry_run: bool) -> SyncOptions {
    let mut options = SyncOptions {
        owner: source.owner.clone(),
        allow_unsupported: source.allow_unsupported,
        dry_run,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ..SyncOptions::default()
    };
    if let Some(prune) = prune {
        options.prune = prune.prune;
        options.max_prune_percent = prune.max_prune_percent;
        options.force_prune = prune.force_prune;
        options.concurrency = usize::from(prune.concurrency);
    }
    options
}

/// `cairnctl diff SOURCE`: exit 0 in sync, 2 drift found, 1 error.
///
/// # Errors
/// Configuration errors; everything else is in the report.
pub async fn diff(env: &dyn EnvSource, args: &DiffArgs) -> Result<Report, CtlError> {
    check_source_args(&args.source)?;
    let (client, default_namespace) = ctl::connect(env).await?;
    let (source, read) = source_of(&args.source, &default_namespace);
    let options = options_of(&args.source, None, true);
    match sync::plan(&client, &source, &read, &options).await {
        Ok((snapshot, plan)) => {
            let lines = match args.output {
                DiffFormat::Json => vec![plan::render_json(&plan, &snapshot).to_string()],
                DiffFormat::Text => {
                    plan::render_text(&plan, &snapshot, plan::colour_stdout(), args.verbose)
                }
            };
            Ok(Report {
                lines,
                errors: Vec::new(),
                outcome: if plan.in_sync() {
                    Outcome::Success
                } else {
                    Outcome::Drift
                },
            })
        }
        Err(report) => Ok(failed(&report, args.output)),
    }
}

fn failed(report: &sync::SyncReport, format: DiffFormat) -> Report {
    let lines = match format {
        DiffFormat::Json => vec![serde_json::json!({
            "source": report.source,
            "commit": report.commit,
            "error": report.result,
            "errors": report.errors,
        })
        .to_string()],
        DiffFormat::Text => Vec::new(),
    };
    let mut errors = report.errors.clone();
    errors.push(report.summary());
    Report {
        lines,
        errors,
        outcome: Outcome::Failure,
    }
}

/// `cairnctl apply SOURCE [--prune] [--dry-run]`: exit 0 when everything applied, 1 otherwise.
///
/// # Errors
/// Configuration errors; everything else is in the report.
pub async fn apply(env: &dyn EnvSource, args: &ApplyArgs) -> Result<Report, CtlError> {
    check_source_args(&args.source)?;
    let (client, default_namespace) = ctl::connect(env).await?;
    let (source, read) = source_of(&args.source, &default_namespace);
    let options = options_of(&args.source, Some(&args.prune), args.dry_run);
    // A real apply is recorded on the backend (the web UI's GitOps page); a dry run is not.
    let report = sync::sync_and_record(&client, &source, &read, &options).await;
    let mut lines = report.lines.clone();
    lines.push(report.summary());
    Ok(Report {
        lines,
        errors: report.errors.clone(),
        outcome: match report.result {
            SyncResult::Applied | SyncResult::InSync => Outcome::Success,
            _ => Outcome::Failure,
        },
    })
}
