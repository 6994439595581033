//! Crash safety of the embedded store: a writer process is killed with SIGKILL in the middle of
//! a stream of acknowledged writes; after reopening, every acknowledged write is there, the
//! revisions are consistent and the store takes new writes.
//!
//! The writer is the `store-crash-writer` test-support binary of this package.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use cairn_backend::store::{Precondition, RedbStore, Revision, Store, WatchEvent};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Kill-and-reopen cycles on the same file.
const ROUNDS: usize = 3;

/// Acknowledged writes to see before the kill.
const ACKS_BEFORE_KILL: usize = 2_000;

/// How long the writer may take to acknowledge one write (it includes opening the file, with a
/// repair after the previous kill).
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the rest of the ack stream may take to drain after the kill.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// key → (revision, value) of every acknowledged write.
type Acked = BTreeMap<String, (Revision, Vec<u8>)>;

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("store.redb");
    let mut acked = Acked::new();
    for round in 1..=ROUNDS {
        let lines = kill_writer_midway(&path, round).await;
        acked.extend(parse_acks(round, &lines));
        verify_after_crash(&path, round, &acked).await;
    }
}

/// Runs the writer for `round`, kills it after [`ACKS_BEFORE_KILL`] acks and returns every ack
/// line it printed, including those still in the pipe.
async fn kill_writer_midway(path: &Path, round: usize) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_store-crash-writer"))
        .arg(path)
        .arg(round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start store-crash-writer");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let mut acks = Vec::new();

    while acks.len() < ACKS_BEFORE_KILL {
        let line = match tokio::time::timeout(ACK_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => panic!(
                "round {round}: store-crash-writer exited after {} acks (see its stderr above)",
                acks.len()
            ),
            Ok(Err(error)) => panic!("round {round}: reading the writer's stdout failed: {error}"),
            Err(_) => panic!(
                "round {round}: no ack within {ACK_TIMEOUT:?} after {} acks: the writer hung",
                acks.len()
            ),
        };
        acks.push(line);
    }

    // `start_kill` sends SIGKILL on Unix: no destructor, no flush, no clean close.
    child
        .start_kill()
        .expect("send SIGKILL to store-crash-writer");
    let status = tokio::time::timeout(DRAIN_TIMEOUT, child.wait())
        .await
        .expect("store-crash-writer did not die after SIGKILL")
        .expect("wait for store-crash-writer");
    assert!(
        !status.success(),
        "round {round}: the writer was not killed: {status}"
    );

    // Lines already in the pipe were printed after their put returned: they are acks too.
    loop {
        match tokio::time::timeout(DRAIN_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(line))) => acks.push(line),
            Ok(Ok(None)) => break,
            Ok(Err(error)) => panic!("round {round}: reading the rest of the acks failed: {error}"),
            Err(_) => panic!("round {round}: the writer's stdout did not close after the kill"),
        }
    }
    acks
}

/// Parses the ack lines of `round`.
fn parse_acks(round: usize, lines: &[String]) -> Acked {
    lines
        .iter()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let [word, key, revision] = fields.as_slice() else {
                panic!("round {round}: malformed ack line {line:?}");
            };
            assert_eq!(*word, "ack", "round {round}: malformed ack line {line:?}");
            let revision: Revision = revision
                .parse()
                .unwrap_or_else(|_| panic!("round {round}: bad revision in {line:?}"));
            let n = key.rsplit('/').next().expect("split yields one part");
            let n: u64 = n.parse().expect("key ends in a number");
            let value = format!("v/{round}/{n}").into_bytes();
            (key.to_string(), (revision, value))
        })
        .collect()
}

/// Reopens the store and checks every ack of every round so far.
async fn verify_after_crash(path: &Path, round: usize, acked: &Acked) {
    let store = RedbStore::open(path)
        .unwrap_or_else(|error| panic!("round {round}: the store does not reopen: {error:#?}"));
    let revision = store.revision().await.expect("read the revision");

    let mut revisions = HashSet::new();
    for (key, (acked_revision, value)) in acked {
        let entry = store
            .get(key)
            .await
            .expect("read an acked key")
            .unwrap_or_else(|| {
                panic!("round {round}: acked write {key} at revision {acked_revision} is lost")
            });
        assert_eq!(
            (entry.mod_revision, entry.create_revision, &entry.value),
            (*acked_revision, *acked_revision, value),
            "round {round}: {key} differs from its ack"
        );
        assert!(
            revisions.insert(*acked_revision),
            "round {round}: revision {acked_revision} was acked twice"
        );
        assert!(
            *acked_revision <= revision,
            "round {round}: acked revision {acked_revision} is beyond the store's {revision}"
        );
    }

    // The change log holds every revision from 1 to the current one exactly once.
    let mut watch = store.watch("", 0).await.expect("watch from the start");
    for expected in 1..=revision {
        let event = tokio::time::timeout(ACK_TIMEOUT, watch.next())
            .await
            .expect("the change log replays promptly")
            .expect("the watch does not end")
            .expect("the change log reads back");
        assert_eq!(
            event.revision(),
            expected,
            "round {round}: the change log has a gap or duplicate"
        );
        if let WatchEvent::Put(entry) = &event {
            if let Some((acked_revision, value)) = acked.get(&entry.key) {
                if *acked_revision == expected {
                    assert_eq!(
                        &entry.value, value,
                        "round {round}: log value of {}",
                        entry.key
                    );
                }
            }
        }
    }
    drop(watch);

    let fresh = store
        .put(
            &format!("fresh/{round}"),
            b"after the crash".to_vec(),
            Precondition::Absent,
        )
        .await
        .expect("a fresh write after the crash");
    assert_eq!(
        fresh,
        revision + 1,
        "round {round}: the first write after reopening"
    );
    store.close().await;
}
