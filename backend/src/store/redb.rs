//! The embedded store: one redb file, one writer thread that commits queued writes together
//! (group commit), and a bounded change log that lets watches resume from a past revision.
//!
//! Tables: `kv` (key → record), `log` (revision → change) and `meta` (current revision, last
//! compacted revision, file format).
//! A write is answered only after its transaction is committed with `Durability::Immediate`
//! (fsync); its change is then broadcast to live watchers.

use std::collections::VecDeque;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::thread;

use ::redb::{Database, Durability, ReadTransaction, ReadableTable, TableDefinition};
use futures::stream::{self, BoxStream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, trace, warn};

use super::{Entry, ListPage, Precondition, Result, Revision, Store, StoreError, WatchEvent};

/// Writes that may wait for the writer thread.
///
/// When it is full, `put` and `delete` wait for room (backpressure), so memory stays bounded.
/// It holds several batches, so while one batch commits the next one can fill up completely.
const WRITE_QUEUE_CAPACITY: usize = 1024;

/// The most writes committed in one transaction (one fsync).
///
/// Bounds the size of a commit and how long the first write of a batch waits for the others.
const MAX_BATCH: usize = 256;

/// Committed batches buffered for live watchers.
///
/// A watcher that falls further behind does not block the writer: it replays the gap from the
/// change log, and gets `Compacted` only once the log no longer has it.
const WATCH_BUFFER_BATCHES: usize = 1024;

/// The memory redb may use to cache the file's pages by default (redb's own default is
/// 1 GiB): 128 MiB suits a small host and holds the working set of thousands of entities.
/// `cairn-backend start --store-cache-mib` sets it.
pub const DEFAULT_CACHE_BYTES: usize = 128 << 20;

/// Revisions kept in the change log; a watch from an older revision gets `Compacted`.
const LOG_RETENTION: u64 = 100_000;

/// Change-log entries read in one read transaction while a watch replays.
const REPLAY_PAGE: usize = 1024;

/// The largest key plus value accepted, far above the API's 512 KiB request limit.
const MAX_RECORD_BYTES: usize = 64 << 20;

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The last revision written.
const META_REVISION: &str = "revision";
/// Every log entry up to and including this revision has been removed.
const META_COMPACTED: &str = "compacted";
/// The layout of the tables and records below.
const META_FORMAT: &str = "format";
const FORMAT_VERSION: u64 = 1;

const LOG_PUT: u8 = 0;
const LOG_DELETE: u8 = 1;

/// The embedded [`Store`]: one redb file, written by one thread that commits concurrent writes
/// together.
///
/// Cheap to clone; all clones share the file and the writer.
///
/// # Guarantees
///
/// A write is acknowledged only after its transaction is committed with fsync, so it survives
/// a crash of the process or the machine.
///
/// # Caveats
///
/// The file can be open in one `RedbStore` at a time: redb locks it.
/// Dropping the last clone waits for the writer to finish its current batch; [`RedbStore::close`]
/// does the same without blocking.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

/// The settings that tests shrink; production uses [`Tuning::DEFAULT`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    pub(crate) cache_bytes: usize,
    pub(crate) write_queue: usize,
    pub(crate) watch_buffer: usize,
    pub(crate) log_retention: u64,
}

/// A key plus value over [`MAX_RECORD_BYTES`] was refused.
#[derive(Debug, thiserror::Error)]
#[error("value of {key} is too large: {size} bytes, limit {limit}")]
struct ValueTooLarge {
    key: String,
    size: usize,
    limit: usize,
}

/// The store file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("failed to open store file {path}")]
struct OpenFailed {
    path: PathBuf,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// A commit failure shared by every write of the failed batch.
#[derive(Debug, thiserror::Error)]
#[error("commit of a batch of {writes} writes failed")]
struct CommitFailed {
    writes: usize,
    #[source]
    source: Arc<::redb::Error>,
}

/// A redb error, boxed because `redb::Error` is large and the error path is cold.
#[derive(Debug)]
struct EngineError(Box<::redb::Error>);

struct Inner {
    // Field order matters: `requests` is dropped before `_writer` joins the thread, which is what
    // makes the thread stop.
    requests: mpsc::Sender<Command>,
    /// `None` once closed.
    open: Mutex<Option<Open>>,
    stats: Arc<super::StoreStats>,
    _writer: WriterThread,
}

/// What readers and new watchers need while the store is open.
struct Open {
    database: Arc<Database>,
    events: broadcast::Sender<Batch>,
}

/// The changes of one commit, in revision order.
type Batch = Arc<[WatchEvent]>;

struct WriterThread(Option<thread::JoinHandle<()>>);

enum Command {
    Write(WriteRequest),
    /// Stop taking writes, finish the queued ones, release the file, then answer.
    Close(oneshot::Sender<()>),
}

struct WriteRequest {
    op: WriteOp,
    reply: oneshot::Sender<Result<Option<Revision>>>,
}

enum WriteOp {
    Put {
        key: String,
        value: Vec<u8>,
        precondition: Precondition,
    },
    Delete {
        key: String,
        precondition: Precondition,
    },
}

/// The one owner of write transactions.
struct Writer {
    database: Arc<Database>,
    requests: mpsc::Receiver<Command>,
    events: broadcast::Sender<Batch>,
    log_retention: u64,
    stats: Arc<super::StoreStats>,
}

/// A value in the `kv` table.
struct Record {
    create_revision: Revision,
    mod_revision: Revision,
    value: Vec<u8>,
}

/// The state of one watch stream, advanced by [`Watcher::next`].
struct Watcher {
    /// Weak, so that a forgotten stream does not keep the file open.
    database: Weak<Database>,
    prefix: String,
    /// Subscribed before the first log read, so no commit falls between the log and the feed.
    events: broadcast::Receiver<Batch>,
    /// Every change up to this revision has been queued or skipped.
    seen_through: Revision,
    pending: VecDeque<WatchEvent>,
    phase: Phase,
}

enum Phase {
    /// Reading the change log after `seen_through`.
    Replay,
    /// Reading the live feed, skipping what the replay already covered.
    Live,
    /// The stream has ended.
    Done,
}

/// One read of the change log.
enum LogPage {
    Events {
        events: Vec<WatchEvent>,
        /// Every change up to here was read.
        through: Revision,
        /// Whether the log holds nothing after `through` in the snapshot.
        at_end: bool,
    },
    /// The log no longer holds the revision after the one asked for.
    Compacted { compacted: Revision },
}

// === impl RedbStore ===

impl RedbStore {
    /// Opens the store file at `path`, creating it if needed.
    ///
    /// Blocks while the file is opened, which includes a repair after an unclean shutdown; call
    /// it from `spawn_blocking` when that matters.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] when the file cannot be opened or created, is already open, or
    /// is not a store file of a known format.
    pub fn open(path: impl AsRef<Path>) -> Result<RedbStore> {
        Self::open_with(path.as_ref(), Tuning::DEFAULT)
    }

    /// [`RedbStore::open`] with a page cache of `cache_bytes` (instead of
    /// [`DEFAULT_CACHE_BYTES`]).
    ///
    /// # Errors
    ///
    /// As [`RedbStore::open`].
    pub fn open_with_cache(path: impl AsRef<Path>, cache_bytes: usize) -> Result<RedbStore> {
        Self::open_with(
            path.as_ref(),
            Tuning {
                cache_bytes,
                ..Tuning::DEFAULT
            },
        )
    }

    pub(crate) fn open_with(path: &Path, tuning: Tuning) -> Result<RedbStore> {
        let open_failed = |source: Box<dyn std::error::Error + Send + Sync>| {
            StoreError::backend(OpenFailed {
                path: path.to_owned(),
                source,
            })
        };
        let database =
            open_database(path, tuning.cache_bytes).map_err(|error| open_failed(error.into()))?;
        init_tables(&database).map_err(open_failed)?;
        let database = Arc::new(database);

        let (request_sender, request_receiver) = mpsc::channel(tuning.write_queue);
        let (events, _) = broadcast::channel(tuning.watch_buffer);
        let stats = Arc::new(super::StoreStats::default());
        let writer = Writer {
            database: Arc::clone(&database),
            requests: request_receiver,
            events: events.clone(),
            log_retention: tuning.log_retention,
            stats: Arc::clone(&stats),
        };
        let handle = thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(|error| open_failed(error.into()))?;
        info!(path = %path.display(), "store opened");
        Ok(RedbStore {
            inner: Arc::new(Inner {
                requests: request_sender,
                open: Mutex::new(Some(Open { database, events })),
                stats,
                _writer: WriterThread(Some(handle)),
            }),
        })
    }

    /// Commit counters, for `/metrics`.
    pub fn stats(&self) -> Arc<super::StoreStats> {
        Arc::clone(&self.inner.stats)
    }

    /// Stops the store for every clone: queued writes are committed and answered, later calls
    /// get [`StoreError::Closed`], watch streams end, and the file is released.
    ///
    /// Closing twice is harmless.
    pub async fn close(&self) {
        drop(self.inner.open.lock().take());
        let (done_sender, done) = oneshot::channel();
        if self
            .inner
            .requests
            .send(Command::Close(done_sender))
            .await
            .is_ok()
        {
            // An error means the writer is gone already, which is what we wait for.
            let _ = done.await;
        }
    }

    fn database(&self) -> Result<Arc<Database>> {
        self.inner
            .open
            .lock()
            .as_ref()
            .map(|open| Arc::clone(&open.database))
            .ok_or(StoreError::Closed)
    }

    /// Runs `read` in a read transaction on a blocking thread.
    async fn read<T, F>(&self, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, EngineError> + Send + 'static,
    {
        let database = self.database()?;
        tokio::task::spawn_blocking(move || {
            let transaction = database.begin_read()?;
            read(&transaction)
        })
        .await
        .map_err(StoreError::backend)?
        .map_err(StoreError::from)
    }

    /// Runs `read` in a read transaction on the calling thread: for point reads, which take
    /// about a microsecond, where a hand-off to a blocking thread costs ten times that.
    fn read_inline<T>(
        &self,
        read: impl FnOnce(&ReadTransaction) -> Result<T, EngineError>,
    ) -> Result<T> {
        let database = self.database()?;
        let run = || -> Result<T, EngineError> {
            let transaction = database.begin_read()?;
            read(&transaction)
        };
        run().map_err(StoreError::from)
    }

    async fn write(&self, op: WriteOp) -> Result<Option<Revision>> {
        let (reply, response) = oneshot::channel();
        self.inner
            .requests
            .send(Command::Write(WriteRequest { op, reply }))
            .await
            .map_err(|_| StoreError::Closed)?;
        // The writer drops the reply only when it stops without answering.
        response.await.map_err(|_| StoreError::Closed)?
    }
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        self.read_inline(|transaction| {
            let kv = transaction.open_table(KV)?;
            Ok(load_record(&kv, key)?.map(|record| record.into_entry(key.to_owned())))
        })
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage> {
        let prefix = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        self.read(move |transaction| {
            let revision = load_meta(&transaction.open_table(META)?, META_REVISION)?;
            let kv = transaction.open_table(KV)?;
            let start = match start_after.as_deref() {
                Some(after) if after >= prefix.as_str() => Bound::Excluded(after),
                _ => Bound::Included(prefix.as_str()),
            };
            let mut entries = Vec::new();
            let mut more = false;
            for item in kv.range::<&str>((start, Bound::Unbounded))? {
                let (key, bytes) = item?;
                let key = key.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                if limit != 0 && entries.len() == limit {
                    more = true;
                    break;
                }
                entries.push(Record::decode(key, bytes.value())?.into_entry(key.to_owned()));
            }
            Ok(ListPage {
                entries,
                revision,
                more,
            })
        })
        .await
    }

    async fn put(&self, key: &str, value: Vec<u8>, precondition: Precondition) -> Result<Revision> {
        let size = key.len() + value.len();
        if size > MAX_RECORD_BYTES {
            return Err(StoreError::backend(ValueTooLarge {
                key: key.to_owned(),
                size,
                limit: MAX_RECORD_BYTES,
            }));
        }
        let op = WriteOp::Put {
            key: key.to_owned(),
            value,
            precondition,
        };
        let revision = self.write(op).await?;
        Ok(revision.expect("a put that succeeds always gets a revision"))
    }

    async fn delete(&self, key: &str, precondition: Precondition) -> Result<Option<Revision>> {
        let op = WriteOp::Delete {
            key: key.to_owned(),
            precondition,
        };
        self.write(op).await
    }

    async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<BoxStream<'static, Result<WatchEvent>>> {
        let (database, events) = {
            let open = self.inner.open.lock();
            let open = open.as_ref().ok_or(StoreError::Closed)?;
            (Arc::clone(&open.database), open.events.subscribe())
        };
        let mut watcher = Watcher {
            database: Arc::downgrade(&database),
            prefix: prefix.to_owned(),
            events,
            seen_through: after,
            pending: VecDeque::new(),
            phase: Phase::Replay,
        };
        // The first page is read here so that a compacted `after` fails the call itself.
        let page = read_log_page(database, watcher.prefix.clone(), after).await?;
        watcher.accept_page(page)?;
        let stream = stream::unfold(watcher, |mut watcher| async move {
            let item = watcher.next().await?;
            Some((item, watcher))
        });
        Ok(stream.boxed())
    }

    async fn revision(&self) -> Result<Revision> {
        self.read(|transaction| load_meta(&transaction.open_table(META)?, META_REVISION))
            .await
    }
}

// === impl EngineError ===

impl EngineError {
    fn corrupt(message: String) -> Self {
        EngineError(Box::new(::redb::Error::Corrupted(message)))
    }
}

impl<E: Into<::redb::Error>> From<E> for EngineError {
    fn from(error: E) -> Self {
        EngineError(Box::new(error.into()))
    }
}

impl From<EngineError> for StoreError {
    fn from(error: EngineError) -> Self {
        StoreError::Backend(error.0)
    }
}

// === impl Tuning ===

impl Tuning {
    pub(crate) const DEFAULT: Tuning = Tuning {
        cache_bytes: DEFAULT_CACHE_BYTES,
        write_queue: WRITE_QUEUE_CAPACITY,
        watch_buffer: WATCH_BUFFER_BATCHES,
        log_retention: LOG_RETENTION,
    };
}

// === impl WriterThread ===

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            if handle.join().is_err() {
                warn!("store writer thread panicked");
            }
        }
    }
}

// === impl Writer ===

impl Writer {
    fn run(mut self) {
        let mut closers = Vec::new();
        while let Some(command) = self.requests.blocking_recv() {
            let mut batch = Vec::new();
            let mut next = Some(command);
            while let Some(command) = next {
                match command {
                    Command::Write(request) => batch.push(request),
                    Command::Close(done) => {
                        // Refuse new writes; the queued ones still arrive and are committed.
                        self.requests.close();
                        closers.push(done);
                    }
                }
                next = if batch.len() < MAX_BATCH {
                    self.requests.try_recv().ok()
                } else {
                    None
                };
            }
            if !batch.is_empty() {
                self.commit(batch);
            }
        }
        debug!("store writer stopped");
        // Release the file before telling `close` that we are done.
        drop(self);
        for done in closers {
            let _ = done.send(());
        }
    }

    /// Applies `batch` in one transaction, commits it, answers every write and publishes the
    /// changes.
    fn commit(&self, batch: Vec<WriteRequest>) {
        let writes = batch.len();
        let (ops, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|request| (request.op, request.reply))
            .unzip();
        let started = std::time::Instant::now();
        let applied = self.apply(ops);
        self.stats.record(writes, started.elapsed());
        match applied {
            Ok((outcomes, changes)) => {
                trace!(writes, changes = changes.len(), "committed batch");
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    // The caller may have gone away; the write stands anyway.
                    let _ = reply.send(outcome);
                }
                if !changes.is_empty() {
                    // An error only means that nobody is watching.
                    let _ = self.events.send(changes.into());
                }
            }
            Err(EngineError(error)) => {
                let error: Arc<::redb::Error> = Arc::new(*error);
                for reply in replies {
                    let _ = reply.send(Err(StoreError::backend(CommitFailed {
                        writes,
                        source: Arc::clone(&error),
                    })));
                }
            }
        }
    }

    /// Runs `ops` in order in one write transaction and commits it.
    ///
    /// Returns each op's outcome and the changes made. A failed precondition is an outcome; an
    /// engine error fails the whole batch and nothing is written.
    #[allow(clippy::type_complexity)]
    fn apply(
        &self,
        ops: Vec<WriteOp>,
    ) -> Result<(Vec<Result<Option<Revision>>>, Vec<WatchEvent>), EngineError> {
        let mut transaction = self.database.begin_write()?;
        transaction.set_durability(Durability::Immediate);
        let mut outcomes = Vec::with_capacity(ops.len());
        let mut changes = Vec::with_capacity(ops.len());
        {
            let mut kv = transaction.open_table(KV)?;
            let mut log = transaction.open_table(LOG)?;
            let mut meta = transaction.open_table(META)?;
            let mut revision = load_meta(&meta, META_REVISION)?;
            for op in ops {
                let outcome = match op {
                    WriteOp::Put {
                        key,
                        value,
                        precondition,
                    } => {
                        let current = load_revisions(&kv, &key)?;
                        let current_revision = current.map_or(0, |(_, mod_revision)| mod_revision);
                        if precondition_holds(precondition, current_revision) {
                            revision += 1;
                            let record = Record {
                                create_revision: current.map_or(revision, |(create, _)| create),
                                mod_revision: revision,
                                value,
                            };
                            kv.insert(key.as_str(), record.encode().as_slice())?;
                            log.insert(revision, encode_log_put(&key, &record).as_slice())?;
                            changes.push(WatchEvent::Put(record.into_entry(key)));
                            Ok(Some(revision))
                        } else {
                            Err(StoreError::PreconditionFailed {
                                key,
                                current: current_revision,
                            })
                        }
                    }
                    WriteOp::Delete { key, precondition } => {
                        let current_revision =
                            load_revisions(&kv, &key)?.map_or(0, |(_, mod_revision)| mod_revision);
                        if !precondition_holds(precondition, current_revision) {
                            Err(StoreError::PreconditionFailed {
                                key,
                                current: current_revision,
                            })
                        } else if current_revision == 0 {
                            Ok(None)
                        } else {
                            revision += 1;
                            kv.remove(key.as_str())?;
                            log.insert(revision, encode_log_delete(&key).as_slice())?;
                            changes.push(WatchEvent::Delete { key, revision });
                            Ok(Some(revision))
                        }
                    }
                };
                outcomes.push(outcome);
            }
            if !changes.is_empty() {
                meta.insert(META_REVISION, revision)?;
                self.compact(&mut log, &mut meta, revision)?;
            }
        }
        if changes.is_empty() {
            // Only failed preconditions or absent deletes: nothing to make durable.
            transaction.abort()?;
        } else {
            transaction.commit()?;
        }
        Ok((outcomes, changes))
    }

    /// Drops log entries older than the retention window.
    fn compact(
        &self,
        log: &mut ::redb::Table<u64, &[u8]>,
        meta: &mut ::redb::Table<&str, u64>,
        revision: Revision,
    ) -> Result<(), EngineError> {
        let compacted = load_meta(meta, META_COMPACTED)?;
        let target = revision.saturating_sub(self.log_retention);
        if target > compacted {
            log.retain_in(compacted + 1..=target, |_, _| false)?;
            meta.insert(META_COMPACTED, target)?;
        }
        Ok(())
    }
}

// === impl Record ===

impl Record {
    /// `create_revision`, `mod_revision` (little-endian u64s), then the value.
    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(16 + self.value.len());
        bytes.extend_from_slice(&self.create_revision.to_le_bytes());
        bytes.extend_from_slice(&self.mod_revision.to_le_bytes());
        bytes.extend_from_slice(&self.value);
        bytes
    }

    fn decode(key: &str, bytes: &[u8]) -> Result<Record, EngineError> {
        let mut reader = Reader::new(bytes, key);
        Ok(Record {
            create_revision: reader.u64()?,
            mod_revision: reader.u64()?,
            value: reader.rest().to_vec(),
        })
    }

    fn into_entry(self, key: String) -> Entry {
        Entry {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
        }
    }
}

// === impl Watcher ===

impl Watcher {
    /// The next item of the stream; `None` once it has ended.
    async fn next(&mut self) -> Option<Result<WatchEvent>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            match self.phase {
                Phase::Done => return None,
                Phase::Replay => {
                    // A store that is gone ends the stream like a closed feed does.
                    let database = self.database.upgrade()?;
                    let page = read_log_page(database, self.prefix.clone(), self.seen_through);
                    if let Err(error) = page.await.and_then(|page| self.accept_page(page)) {
                        self.phase = Phase::Done;
                        return Some(Err(error));
                    }
                }
                Phase::Live => match self.events.recv().await {
                    Ok(batch) => {
                        for event in batch.iter() {
                            if event.revision() > self.seen_through
                                && event.key().starts_with(self.prefix.as_str())
                            {
                                self.pending.push_back(event.clone());
                            }
                        }
                        if let Some(last) = batch.last() {
                            self.seen_through = self.seen_through.max(last.revision());
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        debug!(
                            prefix = %self.prefix,
                            skipped,
                            "watcher fell behind; replaying from the change log"
                        );
                        self.phase = Phase::Replay;
                    }
                    Err(broadcast::error::RecvError::Closed) => self.phase = Phase::Done,
                },
            }
        }
    }

    fn accept_page(&mut self, page: LogPage) -> Result<()> {
        match page {
            LogPage::Events {
                events,
                through,
                at_end,
            } => {
                self.pending.extend(events);
                self.seen_through = through;
                if at_end {
                    self.phase = Phase::Live;
                }
                Ok(())
            }
            LogPage::Compacted { compacted } => Err(StoreError::Compacted {
                requested: self.seen_through + 1,
                oldest: compacted + 1,
            }),
        }
    }
}

// === helpers ===

/// Reads a slice of an encoded record; running out of bytes means the file is corrupt.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'a str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'a str) -> Self {
        Reader { bytes, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], EngineError> {
        if self.bytes.len() < n {
            return Err(EngineError::corrupt(format!(
                "store record {} is truncated",
                self.what
            )));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, EngineError> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(
            bytes.try_into().expect("take returned 8 bytes"),
        ))
    }

    fn u8(&mut self) -> Result<u8, EngineError> {
        Ok(self.take(1)?[0])
    }

    fn string(&mut self) -> Result<String, EngineError> {
        let len = self.u64()?;
        let len = usize::try_from(len).map_err(|_| self.corrupt("length"))?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.corrupt("key"))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    fn corrupt(&self, field: &str) -> EngineError {
        EngineError::corrupt(format!("store record {} has a bad {field}", self.what))
    }
}

fn open_database(path: &Path, cache_bytes: usize) -> Result<Database, ::redb::DatabaseError> {
    let path_text = path.display().to_string();
    // redb runs its repair pass when it creates a file too; only an existing file can have been
    // shut down uncleanly, so only then is the pass worth a warning.
    let existed = std::fs::metadata(path).is_ok_and(|metadata| metadata.len() > 0);
    ::redb::Builder::new()
        // The v3 format is the one later redb versions read without a migration.
        .create_with_file_format_v3(true)
        .set_cache_size(cache_bytes)
        .set_repair_callback(move |session| {
            if !existed {
                return;
            }
            warn!(
                path = %path_text,
                progress = session.progress(),
                "repairing store file after an unclean shutdown"
            );
        })
        .create(path)
}

/// Creates the tables of a new file and checks the format of an existing one.
fn init_tables(database: &Database) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let transaction = database.begin_write()?;
    {
        transaction.open_table(KV)?;
        transaction.open_table(LOG)?;
        let mut meta = transaction.open_table(META)?;
        let format = meta.get(META_FORMAT)?.map(|guard| guard.value());
        match format {
            None => {
                meta.insert(META_FORMAT, FORMAT_VERSION)?;
            }
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(format!(
                    "unsupported store format {other}, this build reads {FORMAT_VERSION}"
                )
                .into())
            }
        }
    }
    transaction.commit()?;
    Ok(())
}

fn precondition_holds(precondition: Precondition, current_revision: Revision) -> bool {
    match precondition {
        Precondition::None => true,
        Precondition::Absent => current_revision == 0,
        Precondition::Revision(expected) => current_revision == expected,
    }
}

fn load_meta(meta: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64, EngineError> {
    Ok(meta.get(name)?.map_or(0, |guard| guard.value()))
}

fn load_record(
    kv: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Record>, EngineError> {
    kv.get(key)?
        .map(|guard| Record::decode(key, guard.value()))
        .transpose()
}

/// The `(create_revision, mod_revision)` of `key`, without copying its value.
fn load_revisions(
    kv: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<(Revision, Revision)>, EngineError> {
    let Some(guard) = kv.get(key)? else {
        return Ok(None);
    };
    let mut reader = Reader::new(guard.value(), key);
    Ok(Some((reader.u64()?, reader.u64()?)))
}

/// `LOG_PUT`, `create_revision`, key length, key, value.
fn encode_log_put(key: &str, record: &Record) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + 8 + 8 + key.len() + record.value.len());
    bytes.push(LOG_PUT);
    bytes.extend_from_slice(&record.create_revision.to_le_bytes());
    bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
    bytes.extend_from_slice(key.as_bytes());
    bytes.extend_from_slice(&record.value);
    bytes
}

/// `LOG_DELETE`, key length, key.
fn encode_log_delete(key: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + 8 + key.len());
    bytes.push(LOG_DELETE);
    bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

fn decode_log(revision: Revision, bytes: &[u8]) -> Result<WatchEvent, EngineError> {
    let what = format!("log/{revision}");
    let mut reader = Reader::new(bytes, &what);
    match reader.u8()? {
        LOG_PUT => {
            let create_revision = reader.u64()?;
            let key = reader.string()?;
            Ok(WatchEvent::Put(Entry {
                key,
                value: reader.rest().to_vec(),
                create_revision,
                mod_revision: revision,
            }))
        }
        LOG_DELETE => Ok(WatchEvent::Delete {
            key: reader.string()?,
            revision,
        }),
        _ => Err(reader.corrupt("kind")),
    }
}

/// Reads up to [`REPLAY_PAGE`] log entries after `after`, keeping those under `prefix`.
async fn read_log_page(
    database: Arc<Database>,
    prefix: String,
    after: Revision,
) -> Result<LogPage> {
    tokio::task::spawn_blocking(move || -> Result<LogPage, EngineError> {
        let transaction = database.begin_read()?;
        let meta = transaction.open_table(META)?;
        let compacted = load_meta(&meta, META_COMPACTED)?;
        if after < compacted {
            return Ok(LogPage::Compacted { compacted });
        }
        let current = load_meta(&meta, META_REVISION)?;
        let log = transaction.open_table(LOG)?;
        let mut events = Vec::new();
        let mut through = after;
        let mut scanned = 0;
        for item in log.range::<u64>((Bound::Excluded(after), Bound::Unbounded))? {
            let (revision, bytes) = item?;
            let revision = revision.value();
            let event = decode_log(revision, bytes.value())?;
            if event.key().starts_with(prefix.as_str()) {
                events.push(event);
            }
            through = revision;
            scanned += 1;
            if scanned == REPLAY_PAGE {
                break;
            }
        }
        let at_end = scanned < REPLAY_PAGE;
        if at_end {
            // The log holds every revision of the snapshot, so nothing up to `current` is
            // missing; `after` may also lie beyond it.
            through = through.max(current);
        }
        Ok(LogPage::Events {
            events,
            through,
            at_end,
        })
    })
    .await
    .map_err(StoreError::backend)?
    .map_err(StoreError::from)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use futures::future::BoxFuture;
    use tempfile::TempDir;

    use super::*;
    use crate::store::conformance::Harness;

    /// A redb store in a fresh temporary directory; `open` reopens the same file.
    struct RedbHarness {
        dir: TempDir,
        tuning: Tuning,
    }

    impl RedbHarness {
        fn new() -> Self {
            Self::with(Tuning::DEFAULT)
        }

        fn with(tuning: Tuning) -> Self {
            let dir = tempfile::tempdir().expect("create a temporary directory");
            RedbHarness { dir, tuning }
        }

        fn path(&self) -> PathBuf {
            self.dir.path().join("store.redb")
        }

        fn store(&self) -> RedbStore {
            RedbStore::open_with(&self.path(), self.tuning).unwrap()
        }
    }

    impl Harness for RedbHarness {
        fn open(&self) -> BoxFuture<'_, Result<Arc<dyn Store>>> {
            Box::pin(async move {
                let store = RedbStore::open_with(&self.path(), self.tuning)?;
                Ok(Arc::new(store) as Arc<dyn Store>)
            })
        }
    }

    crate::store_conformance_tests!(RedbHarness::new());

    const TIMEOUT: Duration = Duration::from_secs(60);

    async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
        match tokio::time::timeout(TIMEOUT, future).await {
            Ok(value) => value,
            Err(_) => panic!("{what} did not finish within {TIMEOUT:?}"),
        }
    }

    async fn put(store: &RedbStore, key: &str) -> Revision {
        store
            .put(key, key.as_bytes().to_vec(), Precondition::None)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn fresh_store_starts_at_revision_zero() {
        let harness = RedbHarness::new();
        let store = harness.store();
        assert_eq!(store.revision().await.unwrap(), 0);
        assert_eq!(put(&store, "a").await, 1);
        let page = store.list("", None, 0).await.unwrap();
        assert_eq!(page.revision, 1);
    }

    #[tokio::test]
    async fn watch_from_compacted_revision_fails() {
        let harness = RedbHarness::with(Tuning {
            log_retention: 10,
            ..Tuning::DEFAULT
        });
        let store = harness.store();
        for n in 0..30 {
            put(&store, &format!("c/{n:02}")).await;
        }
        match store.watch("c/", 5).await {
            Err(StoreError::Compacted { requested, oldest }) => {
                assert_eq!((requested, oldest), (6, 21));
            }
            Err(other) => panic!("expected Compacted, got {other:?}"),
            Ok(_) => panic!("expected Compacted, got a stream"),
        }
        let mut watch = store.watch("c/", 20).await.unwrap();
        let event = bounded("watch", watch.next()).await.unwrap().unwrap();
        assert_eq!(event.revision(), 21);
        assert_eq!(event.key(), "c/20");
    }

    #[tokio::test]
    async fn watcher_behind_retention_gets_compacted_then_ends() {
        let harness = RedbHarness::with(Tuning {
            watch_buffer: 1,
            log_retention: 10,
            ..Tuning::DEFAULT
        });
        let store = harness.store();
        let mut watch = store.watch("", 0).await.unwrap();
        // Sequential writes are one batch each, so the one-slot feed overflows.
        for n in 0..30 {
            put(&store, &format!("k/{n:02}")).await;
        }
        match bounded("watch", watch.next()).await {
            Some(Err(StoreError::Compacted { requested, oldest })) => {
                assert_eq!((requested, oldest), (1, 21));
            }
            other => panic!("expected Compacted, got {other:?}"),
        }
        assert!(bounded("watch end", watch.next()).await.is_none());
    }

    #[tokio::test]
    async fn lagging_watcher_catches_up_from_the_log() {
        let harness = RedbHarness::with(Tuning {
            watch_buffer: 1,
            ..Tuning::DEFAULT
        });
        let store = harness.store();
        let mut watch = store.watch("k/", 0).await.unwrap();
        for n in 0..50 {
            put(&store, &format!("k/{n:02}")).await;
            put(&store, &format!("other/{n:02}")).await;
        }
        for n in 0..50u64 {
            let event = bounded("watch", watch.next()).await.unwrap().unwrap();
            assert_eq!(event.revision(), 2 * n + 1);
        }
        let last = put(&store, "k/live").await;
        let event = bounded("watch", watch.next()).await.unwrap().unwrap();
        assert_eq!(event.revision(), last);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_write_queue_does_not_deadlock() {
        let harness = RedbHarness::with(Tuning {
            write_queue: 1,
            ..Tuning::DEFAULT
        });
        let store = harness.store();
        let tasks: Vec<_> = (0..64)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(async move {
                    for n in 0..10 {
                        put(&store, &format!("q/{task:02}/{n}")).await;
                    }
                })
            })
            .collect();
        bounded("64 writers on a one-slot queue", async {
            for task in tasks {
                task.await.unwrap();
            }
        })
        .await;
        assert_eq!(store.revision().await.unwrap(), 640);
    }

    #[tokio::test]
    async fn close_stops_every_clone_and_releases_the_file() {
        let harness = RedbHarness::new();
        let store = harness.store();
        let other = store.clone();
        put(&store, "a").await;
        let mut watch = store.watch("", 1).await.unwrap();
        bounded("close", store.close()).await;

        assert!(matches!(
            other.put("b", Vec::new(), Precondition::None).await,
            Err(StoreError::Closed)
        ));
        assert!(matches!(other.get("a").await, Err(StoreError::Closed)));
        assert!(matches!(other.watch("", 0).await, Err(StoreError::Closed)));
        assert!(bounded("watch end", watch.next()).await.is_none());
        bounded("second close", other.close()).await;

        let reopened = harness.store();
        assert_eq!(reopened.get("a").await.unwrap().unwrap().mod_revision, 1);
    }

    #[tokio::test]
    async fn second_open_of_one_file_fails() {
        let harness = RedbHarness::new();
        let _store = harness.store();
        let error = match RedbStore::open(harness.path()) {
            Ok(_) => panic!("a second open of the same file must fail"),
            Err(error) => error,
        };
        assert!(matches!(error, StoreError::Backend(_)));
        let message = format!("{error}: {}", std::error::Error::source(&error).unwrap());
        assert!(message.contains("store.redb"), "{message}");
    }

    #[tokio::test]
    async fn too_large_value_is_refused_alone() {
        let harness = RedbHarness::new();
        let store = harness.store();
        let error = store
            .put("big", vec![0; MAX_RECORD_BYTES + 1], Precondition::None)
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Backend(_)));
        assert_eq!(put(&store, "small").await, 1);
    }

    /// Not a benchmark with a verdict: prints the write rate of 64 concurrent writers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_throughput() {
        const TASKS: usize = 64;
        const PUTS: usize = 500;
        let harness = RedbHarness::new();
        let store = harness.store();
        let started = Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(async move {
                    for n in 0..PUTS {
                        let key = format!("tp/{task:02}/{n:04}");
                        store
                            .put(&key, vec![b'x'; 256], Precondition::None)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        bounded("throughput writers", async {
            for task in tasks {
                task.await.unwrap();
            }
        })
        .await;
        let elapsed = started.elapsed();
        let writes = (TASKS * PUTS) as f64;
        eprintln!(
            "group commit: {} writes in {elapsed:?} = {:.0} writes/s",
            TASKS * PUTS,
            writes / elapsed.as_secs_f64()
        );
        assert_eq!(store.revision().await.unwrap(), (TASKS * PUTS) as u64);
    }
}
