//! Test support for `tests/store_crash.rs`, not an operator tool: opens the embedded store and
//! writes until it is killed, acknowledging each write on stdout.
//!
//! Usage: `store-crash-writer <store file> <round> [max writes]`.
//! Eight tasks put keys `k/<round>/000001`, `k/<round>/000002`, … (value `v/<round>/<n>`) and
//! print `ack <key> <revision>` (flushed) only after the put returned, so every printed line
//! names a write the store has acknowledged as durable.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use cairn_backend::store::{Precondition, RedbStore, Store};

/// Concurrent writers, so that commits carry several writes each.
const WRITERS: usize = 8;

/// The default bound on writes, far more than the test waits for before it kills the process.
const DEFAULT_MAX_WRITES: u64 = 1_000_000;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("store-crash-writer: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, round, max_writes) = match args.as_slice() {
        [path, round] => (path, round, DEFAULT_MAX_WRITES),
        [path, round, max] => (path, round, max.parse().context("bad max writes")?),
        _ => bail!("usage: store-crash-writer <store file> <round> [max writes]"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the runtime")?;
    let store = RedbStore::open(path).with_context(|| format!("failed to open {path}"))?;
    runtime.block_on(write_until_killed(store, round.clone(), max_writes))
}

async fn write_until_killed(
    store: RedbStore,
    round: String,
    max_writes: u64,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(1));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let store = store.clone();
            let round = round.clone();
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n > max_writes {
                        return anyhow::Ok(());
                    }
                    let key = format!("k/{round}/{n:06}");
                    let value = format!("v/{round}/{n}").into_bytes();
                    let revision = store
                        .put(&key, value, Precondition::None)
                        .await
                        .with_context(|| format!("failed to put {key}"))?;
                    let mut stdout = std::io::stdout().lock();
                    writeln!(stdout, "ack {key} {revision}")
                        .and_then(|()| stdout.flush())
                        .context("failed to write an ack")?;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.context("writer task panicked")??;
    }
    store.close().await;
    Ok(())
}
