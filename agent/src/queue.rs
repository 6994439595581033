//! The on-disk event queue: every event the agent sends waits here until the backend
//! acknowledges it, across disconnections and restarts.
//!
//! One JSON file per event, named `<sequence>-<id>.json` with a zero-padded, monotonically
//! increasing sequence, written under a temporary name, synced and renamed into place. Events
//! leave in sequence order; a file is deleted only when the backend acknowledges its id. The
//! queue is bounded by a count and a size; when full, the oldest events are dropped with a
//! warning.
//!
//! Nothing secret is ever written here: events carry check output that the executor already
//! redacted, and never the secret values of a check request.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use cairn_api::model::Event;

use crate::fsutil::{self, PRIVATE_MODE};

/// The default bound on the number of events.
pub const DEFAULT_MAX_EVENTS: usize = 10_000;
/// The default bound on the queue's size, bytes.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// How large the queue may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most events kept.
    pub max_events: usize,
    /// Most bytes kept (the sum of the files' sizes).
    pub max_bytes: u64,
}

impl Default for QueueLimits {
    fn default() -> QueueLimits {
        QueueLimits {
            max_events: DEFAULT_MAX_EVENTS,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// One queued event as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuedEvent {
    /// The id the backend acknowledges.
    pub id: String,
    /// The event.
    pub event: Event,
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A file or the folder could not be read or written.
    #[error("event queue {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A queued file is not a queued event (it is removed).
    #[error("event queue {}: not a queued event: {message}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// One event is larger than the whole queue may be.
    #[error("the event is {size} bytes, more than the queue's bound of {max} bytes")]
    TooLarge {
        /// The event's size.
        size: u64,
        /// The bound.
        max: u64,
    },
}

/// What [`EventQueue::push`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The new event's id.
    pub id: String,
    /// Its sequence number.
    pub seq: u64,
    /// The ids of the oldest events dropped to make room.
    pub dropped: Vec<String>,
}

#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    id: String,
    bytes: u64,
}

/// The queue. Not synchronised: the agent keeps it behind a mutex.
#[derive(Debug)]
pub struct EventQueue {
    dir: PathBuf,
    limits: QueueLimits,
    entries: VecDeque<Entry>,
    bytes: u64,
    next_seq: u64,
}

// === impl EventQueue ===

impl EventQueue {
    /// Opens (creating it, mode 0700) the queue in `dir`, with the events a previous run left,
    /// in order. Leftover temporary files are removed; the bound is applied.
    ///
    /// # Errors
    ///
    /// [`QueueError::Io`] when the folder cannot be created or read.
    pub fn open(dir: &Path, limits: QueueLimits) -> Result<EventQueue, QueueError> {
        let io_error = |source| QueueError::Io {
            path: dir.to_owned(),
            source,
        };
        fsutil::create_dir_private(dir).map_err(io_error)?;
        let mut entries = Vec::new();
        for item in fs::read_dir(dir).map_err(io_error)? {
            let item = item.map_err(io_error)?;
            let name = item.file_name().to_string_lossy().into_owned();
            if fsutil::is_temp_name(&name) {
                let _ = fs::remove_file(item.path());
                continue;
            }
            let Some((seq, id)) = parse_name(&name) else {
                tracing::warn!(file = %item.path().display(), "ignoring a file that is not a queued event");
                continue;
            };
            let bytes = item.metadata().map_err(io_error)?.len();
            entries.push(Entry { seq, id, bytes });
        }
        entries.sort_by_key(|entry| entry.seq);
        let next_seq = entries.last().map_or(1, |entry| entry.seq + 1);
        let bytes = entries.iter().map(|entry| entry.bytes).sum();
        let mut queue = EventQueue {
            dir: dir.to_owned(),
            limits,
            entries: entries.into(),
            bytes,
            next_seq,
        };
        let dropped = queue.make_room(0, 0)?;
        if !dropped.is_empty() {
            tracing::warn!(
                dropped = dropped.len(),
                "the event queue was over its bound; dropped the oldest events"
            );
        }
        Ok(queue)
    }

    /// Appends `event` with a new UUID id (also set as the event's `id` when it has none),
    /// durably, dropping the oldest events if the queue is full.
    ///
    /// # Errors
    ///
    /// [`QueueError::Io`] when the file cannot be written; [`QueueError::TooLarge`] when the
    /// event alone exceeds the byte bound.
    pub fn push(&mut self, mut event: Event) -> Result<Pushed, QueueError> {
        let id = uuid::Uuid::new_v4().to_string();
        if event.id.is_empty() {
            event.id.clone_from(&id);
        }
        let record = QueuedEvent {
            id: id.clone(),
            event,
        };
        let json = serde_json::to_vec(&record).expect("events are plain data and serialise");
        let size = json.len() as u64;
        if size > self.limits.max_bytes {
            return Err(QueueError::TooLarge {
                size,
                max: self.limits.max_bytes,
            });
        }
        let dropped = self.make_room(1, size)?;
        for dropped_id in &dropped {
            tracing::warn!(id = %dropped_id, "event queue full; dropped the oldest event");
        }
        let seq = self.next_seq;
        let path = self.dir.join(file_name(seq, &id));
        fsutil::write_atomic(&path, &json, PRIVATE_MODE)
            .map_err(|source| QueueError::Io { path, source })?;
        self.next_seq += 1;
        self.entries.push_back(Entry {
            seq,
            id: id.clone(),
            bytes: size,
        });
        self.bytes += size;
        Ok(Pushed { id, seq, dropped })
    }

    /// Removes the event with `id`; `false` when it is not queued (acknowledged before, or
    /// dropped).
    ///
    /// # Errors
    ///
    /// [`QueueError::Io`] when the file cannot be removed.
    pub fn ack(&mut self, id: &str) -> Result<bool, QueueError> {
        let Some(position) = self.entries.iter().position(|entry| entry.id == id) else {
            return Ok(false);
        };
        let entry = self.entries.remove(position).expect("the position exists");
        self.bytes -= entry.bytes;
        self.remove_file(&entry)?;
        Ok(true)
    }

    /// The sequence number and id of the first event after `after` (the first event when
    /// `None`).
    pub fn next_after(&self, after: Option<u64>) -> Option<(u64, String)> {
        let start = match after {
            Some(seq) => self.entries.partition_point(|entry| entry.seq <= seq),
            None => 0,
        };
        self.entries
            .get(start)
            .map(|entry| (entry.seq, entry.id.clone()))
    }

    /// Reads the queued event `seq`/`id`. A file that does not parse is removed from the
    /// queue and reported as [`QueueError::Corrupt`].
    ///
    /// # Errors
    ///
    /// [`QueueError::Io`] or [`QueueError::Corrupt`].
    pub fn read(&mut self, seq: u64, id: &str) -> Result<QueuedEvent, QueueError> {
        let path = self.dir.join(file_name(seq, id));
        let bytes = fs::read(&path).map_err(|source| QueueError::Io {
            path: path.clone(),
            source,
        })?;
        match serde_json::from_slice::<QueuedEvent>(&bytes) {
            Ok(record) if record.id == id => Ok(record),
            Ok(_) => {
                self.ack(id)?;
                Err(QueueError::Corrupt {
                    path,
                    message: "the id inside differs from the file name".into(),
                })
            }
            Err(err) => {
                self.ack(id)?;
                Err(QueueError::Corrupt {
                    path,
                    message: err.to_string(),
                })
            }
        }
    }

    /// The ids in order.
    pub fn ids(&self) -> Vec<String> {
        self.entries.iter().map(|entry| entry.id.clone()).collect()
    }

    /// How many events are queued.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The queued events' total size, bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Drops the oldest events until `count` more events of `size` bytes fit.
    fn make_room(&mut self, count: usize, size: u64) -> Result<Vec<String>, QueueError> {
        let mut dropped = Vec::new();
        while !self.entries.is_empty()
            && (self.entries.len() + count > self.limits.max_events
                || self.bytes + size > self.limits.max_bytes)
        {
            let entry = self.entries.pop_front().expect("not empty");
            self.bytes -= entry.bytes;
            self.remove_file(&entry)?;
            dropped.push(entry.id);
        }
        Ok(dropped)
    }

    fn remove_file(&self, entry: &Entry) -> Result<(), QueueError> {
        let path = self.dir.join(file_name(entry.seq, &entry.id));
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(QueueError::Io { path, source }),
        }
    }
}

fn file_name(seq: u64, id: &str) -> String {
    format!("{seq:020}-{id}.json")
}

fn parse_name(name: &str) -> Option<(u64, String)> {
    let stem = name.strip_suffix(".json")?;
    let (seq, id) = stem.split_once('-')?;
    if seq.len() != 20 || id.is_empty() || id.contains(['/', '\\']) {
        return None;
    }
    Some((seq.parse().ok()?, id.to_owned()))
}

#[cfg(test)]
mod tests {
    use cairn_api::model::Check;

    use super::*;

    fn event(output: &str) -> Event {
        Event {
            check: Some(Check {
                output: output.to_owned(),
                ..Check::default()
            }),
            ..Event::default()
        }
    }

    fn output(record: &QueuedEvent) -> &str {
        &record.event.check.as_ref().unwrap().output
    }

    fn outputs(queue: &mut EventQueue) -> Vec<String> {
        let mut all = Vec::new();
        let mut cursor = None;
        while let Some((seq, id)) = queue.next_after(cursor) {
            all.push(output(&queue.read(seq, &id).unwrap()).to_owned());
            cursor = Some(seq);
        }
        all
    }

    fn files(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn append_ack_and_order() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("queue");
        let mut queue = EventQueue::open(&dir, QueueLimits::default()).unwrap();
        assert!(queue.is_empty());
        let ids: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|out| queue.push(event(out)).unwrap().id)
            .collect();
        assert_eq!(queue.ids(), ids);
        assert_eq!(outputs(&mut queue), ["a", "b", "c"]);
        let (seq, id) = queue.next_after(None).unwrap();
        let first = queue.read(seq, &id).unwrap();
        assert_eq!(first.id, ids[0]);
        assert_eq!(first.event.id, ids[0], "the event gets the id too");

        assert!(queue.ack(&ids[1]).unwrap());
        assert!(!queue.ack(&ids[1]).unwrap(), "a second ack is a no-op");
        assert!(!queue.ack("unknown").unwrap());
        assert_eq!(outputs(&mut queue), ["a", "c"]);
        assert_eq!(files(&dir), 2);
        assert_eq!(queue.len(), 2);

        // The cursor skips what was already sent.
        let (first_seq, _) = queue.next_after(None).unwrap();
        let (next_seq, next_id) = queue.next_after(Some(first_seq)).unwrap();
        assert_eq!(next_id, ids[2]);
        assert_eq!(queue.next_after(Some(next_seq)), None);

        // A queue file is private.
        for item in fs::read_dir(&dir).unwrap() {
            use std::os::unix::fs::PermissionsExt;
            let mode = item.unwrap().metadata().unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn survives_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("queue");
        let mut queue = EventQueue::open(&dir, QueueLimits::default()).unwrap();
        let first = queue.push(event("one")).unwrap();
        queue.push(event("two")).unwrap();
        queue.push(event("three")).unwrap();
        queue.ack(&first.id).unwrap();
        let bytes = queue.bytes();
        drop(queue);
        // A write interrupted before its rename leaves a temporary file.
        fs::write(dir.join(".00000000000000000009-x.json.tmp-1-ab"), "{").unwrap();

        let mut queue = EventQueue::open(&dir, QueueLimits::default()).unwrap();
        assert_eq!(outputs(&mut queue), ["two", "three"]);
        assert_eq!(queue.bytes(), bytes);
        assert_eq!(files(&dir), 2, "the temporary file is gone");
        let pushed = queue.push(event("four")).unwrap();
        assert_eq!(pushed.seq, 4, "sequence numbers keep increasing");
        assert_eq!(outputs(&mut queue), ["two", "three", "four"]);
    }

    #[test]
    fn bound_drops_the_oldest() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("queue");
        let limits = QueueLimits {
            max_events: 3,
            max_bytes: DEFAULT_MAX_BYTES,
        };
        let mut queue = EventQueue::open(&dir, limits).unwrap();
        let ids: Vec<String> = (0..5)
            .map(|n| queue.push(event(&n.to_string())).unwrap().id)
            .collect();
        assert_eq!(outputs(&mut queue), ["2", "3", "4"]);
        assert_eq!(files(&dir), 3);
        let pushed = queue.push(event("5")).unwrap();
        assert_eq!(pushed.dropped, [ids[2].clone()]);

        // By size: each event is the same size, so room for two.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("queue");
        let mut probe = EventQueue::open(&dir, QueueLimits::default()).unwrap();
        probe.push(event("x")).unwrap();
        let size = probe.bytes();
        drop(probe);
        fs::remove_dir_all(&dir).unwrap();
        let limits = QueueLimits {
            max_events: 100,
            max_bytes: size * 2 + size / 2,
        };
        let mut queue = EventQueue::open(&dir, limits).unwrap();
        for n in 0..4 {
            queue.push(event(&n.to_string())).unwrap();
        }
        assert_eq!(outputs(&mut queue), ["2", "3"]);
        assert!(queue.bytes() <= limits.max_bytes);
        let huge = queue.push(event(&"x".repeat(size as usize * 3)));
        assert!(matches!(huge, Err(QueueError::TooLarge { .. })), "{huge:?}");
        assert_eq!(
            outputs(&mut queue),
            ["2", "3"],
            "a refused event drops nothing"
        );

        // Reopening with a smaller bound applies it.
        drop(queue);
        let queue = EventQueue::open(
            &dir,
            QueueLimits {
                max_events: 1,
                max_bytes: DEFAULT_MAX_BYTES,
            },
        )
        .unwrap();
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn corrupt_files_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("queue");
        let mut queue = EventQueue::open(&dir, QueueLimits::default()).unwrap();
        let bad = queue.push(event("bad")).unwrap();
        queue.push(event("good")).unwrap();
        fs::write(dir.join(file_name(bad.seq, &bad.id)), "not json").unwrap();
        let err = queue.read(bad.seq, &bad.id).unwrap_err();
        assert!(matches!(err, QueueError::Corrupt { .. }), "{err:?}");
        assert_eq!(outputs(&mut queue), ["good"]);
        fs::write(dir.join("README"), "not an event").unwrap();
        let queue = EventQueue::open(&dir, QueueLimits::default()).unwrap();
        assert_eq!(queue.len(), 1);
    }
}
