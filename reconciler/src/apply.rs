//! Carries out a [`Plan`]: `PUT`s in dependency order (namespaces first, replicators last),
//! several at a time within one rank and never across ranks, then deletes in reverse order.
//! A failure of one resource is reported and the rest still applied.

use std::sync::atomic::{AtomicUsize, Ordering};

use futures::stream::{self, StreamExt};

use cairn_api::client::{Client, ClientError};
use cairn_api::ResourceKey;

use crate::plan::{describe, Action, Change, Plan};

/// How to apply.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions {
    /// Delete prune candidates too.
    pub prune: bool,
    /// Requests in flight at once within one rank.
    pub concurrency: usize,
    /// Draw a progress bar on stderr (a terminal only).
    pub progress: bool,
}

/// What applying did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Resources created.
    pub created: usize,
    /// Resources updated.
    pub updated: usize,
    /// Resources deleted.
    pub deleted: usize,
    /// Per-resource failures, in plan order: the resource and the backend's answer.
    pub failed: Vec<(ResourceKey, String)>,
    /// One line per change made, in plan order.
    pub lines: Vec<String>,
}

/// Applies every create and update of `plan`, and its deletes when `options.prune` is set.
pub async fn apply(client: &Client, plan: &Plan, options: ApplyOptions) -> Applied {
    let work: Vec<&Change> = plan
        .changes
        .iter()
        .filter(|change| match change.action {
            Action::Create | Action::Update => true,
            Action::Delete => options.prune,
            Action::Unchanged => false,
        })
        .collect();
    let bar = (options.progress && work.len() > 1).then(|| {
        let bar = indicatif::ProgressBar::new(work.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} {per_sec} {elapsed_precise} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let done = AtomicUsize::new(0);
    let mut applied = Applied::default();
    // Consecutive changes of one rank and direction form a batch; batches run one after another.
    let mut start = 0;
    while start < work.len() {
        let batch_key = batch_of(work[start]);
        let end = work[start..]
            .iter()
            .position(|change| batch_of(change) != batch_key)
            .map_or(work.len(), |offset| start + offset);
        let results: Vec<(usize, Result<(), ClientError>)> =
            stream::iter(work[start..end].iter().enumerate())
                .map(|(index, change)| {
                    let bar = bar.as_ref();
                    let done = &done;
                    async move {
                        let result = run(client, change).await;
                        done.fetch_add(1, Ordering::Relaxed);
                        if let Some(bar) = bar {
                            bar.inc(1);
                        }
                        (index, result)
                    }
                })
                .buffer_unordered(options.concurrency.max(1))
                .collect()
                .await;
        let mut results = results;
        results.sort_by_key(|(index, _)| *index);
        for (index, result) in results {
            let change = work[start + index];
            let name = describe(&change.key);
            match result {
                Ok(()) => {
                    let done = match change.action {
                        Action::Create => {
                            applied.created += 1;
                            "created"
                        }
                        Action::Update => {
                            applied.updated += 1;
                            "updated"
                        }
                        Action::Delete => {
                            applied.deleted += 1;
                            "deleted"
                        }
                        Action::Unchanged => "unchanged",
                    };
                    applied.lines.push(format!("{done} {name}"));
                }
                Err(err) => {
                    applied.failed.push((
                        change.key.clone(),
                        format!("failed to {} {name}: {err}", change.action.as_str()),
                    ));
                }
            }
        }
        start = end;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    applied
}

fn batch_of(change: &Change) -> (bool, usize) {
    (
        change.action == Action::Delete,
        change.key.kind.apply_rank(),
    )
}

async fn run(client: &Client, change: &Change) -> Result<(), ClientError> {
    match change.action {
        Action::Create | Action::Update => match &change.desired {
            Some(resource) => client.put_resource(resource).await,
            None => Ok(()),
        },
        Action::Delete => client
            .delete_resource(change.key.kind, &change.key.namespace, &change.key.name)
            .await
            // Already gone is what we wanted.
            .map(|_| ()),
        Action::Unchanged => Ok(()),
    }
}
