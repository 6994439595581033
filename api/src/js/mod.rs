//! Sensu's JavaScript, sandboxed: filter expressions (SQEs), `javascript` mutators and other
//! boolean expressions, evaluated by QuickJS (`rquickjs`) on a small pool of worker threads.
//!
//! [`Engine`] owns the pool; each worker owns one QuickJS runtime and context, a cache of
//! compiled expressions and the limits of [`EngineConfig`]. [`check_syntax`] only parses, for
//! validation and lint, without the pool.
//!
//! # Sandbox
//!
//! QuickJS has no I/O without its `std` and `os` modules, which are not built in: no file,
//! network, process, timer or module loader is reachable, and no host function is exposed but
//! the pure built-ins below. What each evaluation gets fresh, and what is reset after it:
//!
//! - its bindings (`event`, `entity`, ...) are parsed from JSON for that evaluation only and
//!   passed as parameters of the compiled function, never shared;
//! - globals it creates (`x = 1`, or a mutator's `env_vars`) are deleted after it;
//! - the standard built-ins (`Object`, `Array`, `String`, `RegExp`, `JSON`, `Math`, `Date`, ...,
//!   their prototypes) and Sensu's functions are frozen, so no evaluation can change them for
//!   the next (assigning `Array.prototype.some` silently does nothing, as frozen objects do).
//!
//! # Sensu's built-ins
//!
//! As documented in Sensu's "Sensu query expressions reference" (6.9): `hour`, `minute`,
//! `second`, `weekday` (Sunday is 0) of a unix time in UTC, and `seconds_since(t)` (seconds
//! between now and `t`, a float). `sensu` is an empty object, as in open-source Sensu (its
//! store functions such as `sensu.CheckDependencies` are commercial and not provided here).
//!
//! # Caveats
//!
//! An expression is compiled as `return (<expression>)` in a function of its bindings; a
//! program that is not an expression (statements, `a; b`) falls back to a direct `eval` in that
//! function each time, which gives the value of its last statement as Otto does, parsed per
//! evaluation. Filter `libraries` (the JavaScript of runtime assets) get a fresh context per
//! evaluation: correct, not fast; assets are not served yet.

mod builtins;
mod worker;

use std::fmt;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_channel::oneshot;

/// Worker threads by default.
pub const DEFAULT_WORKERS: usize = 2;
/// Jobs waiting for a worker by default; past it a call fails at once with
/// [`JsError::QueueFull`].
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// Time one evaluation may take by default (Sensu has no limit for filters).
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_millis(100);
/// Memory of one worker's runtime by default: enough for events of a few MiB.
pub const DEFAULT_MEMORY_LIMIT: usize = 32 * 1024 * 1024;
/// JavaScript stack of one worker by default (the worker thread's own stack is larger).
pub const DEFAULT_STACK_LIMIT: usize = 512 * 1024;
/// Compiled expressions kept per worker by default; the cache is cleared when full.
pub const DEFAULT_CACHE_ENTRIES: usize = 4096;

/// Settings of an [`Engine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Worker threads, each with its own runtime; at least 1.
    pub workers: usize,
    /// Jobs that may wait for a worker; at least 1.
    pub queue_capacity: usize,
    /// Longest one evaluation (one call of [`Engine::filter`], [`Engine::mutate`] or
    /// [`Engine::evaluate_bool`]) may run.
    pub time_limit: Duration,
    /// Bytes one worker's runtime may allocate.
    pub memory_limit: usize,
    /// Bytes of JavaScript stack.
    pub stack_limit: usize,
    /// Compiled expressions cached per worker (keyed by source and binding names).
    pub cache_entries: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: DEFAULT_WORKERS,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            time_limit: DEFAULT_TIME_LIMIT,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            stack_limit: DEFAULT_STACK_LIMIT,
            cache_entries: DEFAULT_CACHE_ENTRIES,
        }
    }
}

/// Why an evaluation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsError {
    /// Every worker is busy and the queue holds [`EngineConfig::queue_capacity`] jobs; expected
    /// under bursts, a later call may succeed.
    #[error("the JavaScript queue is full ({capacity} jobs)")]
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
    },
    /// The workers are gone (they only stop when the engine is dropped, or on a bug); retrying
    /// does not help.
    #[error("the JavaScript engine is not running")]
    Stopped,
    /// A binding is not JSON; a bug of the caller.
    #[error("binding {name} is not valid JSON: {message}")]
    InvalidBinding {
        /// The binding's name.
        name: String,
        /// The parser's message.
        message: String,
    },
    /// A library (runtime asset script) failed to load.
    #[error("library {index} failed: {message}")]
    Library {
        /// Its position in the list.
        index: usize,
        /// What it threw.
        message: String,
    },
    /// The source does not parse.
    #[error("{0}")]
    Syntax(String),
    /// The source threw (a `TypeError` reading a field of `undefined`, ...).
    #[error("{0}")]
    Exception(String),
    /// A filter expression returned something other than `true` or `false`.
    #[error("expression returned {found}, not true or false")]
    NotBoolean {
        /// The JavaScript type it returned.
        found: String,
    },
    /// A mutator returned something other than a string, `undefined` or `null`.
    #[error("bad mutator result: got {found}, want string or undefined")]
    BadMutatorResult {
        /// The JavaScript type it returned.
        found: String,
    },
    /// The evaluation ran past [`EngineConfig::time_limit`] and was interrupted.
    #[error("time limit of {0:?} exceeded")]
    TimeLimit(Duration),
    /// The runtime ran past [`EngineConfig::memory_limit`]; the worker starts a new one.
    #[error("memory limit of {0} bytes exceeded")]
    MemoryLimit(usize),
    /// The JavaScript stack ran past [`EngineConfig::stack_limit`] (deep recursion).
    #[error("stack limit of {0} bytes exceeded")]
    StackLimit(usize),
}

/// What a filter's expressions gave, Sensu-style: see [`Engine::filter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether every expression evaluated returned `true`, ignoring those that failed.
    pub matched: bool,
    /// The expressions that failed, by index, in order.
    pub errors: Vec<(usize, JsError)>,
}

/// What [`check_syntax`] parses a source as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A filter expression (a JavaScript program whose value is the result).
    Expression,
    /// A mutator's `eval`: the body of a function (it may `return`).
    Script,
}

/// A pool of sandboxed QuickJS workers; cheap to clone, all clones share the pool.
///
/// The workers stop when the last clone is dropped and the queue is empty.
#[derive(Clone)]
pub struct Engine {
    sender: SyncSender<worker::Job>,
    queue_capacity: usize,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("queue_capacity", &self.queue_capacity)
            .finish_non_exhaustive()
    }
}

// === impl Engine ===

impl Engine {
    /// Starts the worker threads.
    ///
    /// # Errors
    /// When a thread cannot be spawned.
    pub fn new(config: EngineConfig) -> std::io::Result<Engine> {
        let queue_capacity = config.queue_capacity.max(1);
        let (sender, receiver) = mpsc::sync_channel(queue_capacity);
        let receiver = Arc::new(Mutex::new(receiver));
        let config = Arc::new(config);
        for idx in 0..config.workers.max(1) {
            worker::spawn(idx, Arc::clone(&config), Arc::clone(&receiver))?;
        }
        Ok(Engine {
            sender,
            queue_capacity,
        })
    }

    /// Evaluates a filter's expressions against the event, as Sensu does: in order, each must
    /// return `true` or `false`, and evaluation stops at the first `false`. An expression that
    /// throws, does not parse or returns another value is recorded in [`Verdict::errors`] and
    /// skipped (Sensu logs it and `continue`s); [`Verdict::matched`] is whether every other
    /// expression evaluated was `true`.
    ///
    /// `libraries` are the JavaScript sources of the filter's runtime assets, evaluated first
    /// (empty while Cairn serves no assets).
    ///
    /// # Errors
    /// [`JsError::QueueFull`], [`JsError::Stopped`], [`JsError::InvalidBinding`] when
    /// `event_json` is not JSON, [`JsError::Library`].
    pub async fn filter(
        &self,
        expressions: Vec<String>,
        libraries: Vec<String>,
        event_json: Arc<[u8]>,
    ) -> Result<Verdict, JsError> {
        let bindings = vec![("event".to_owned(), event_json)];
        self.predicates(expressions, libraries, bindings).await
    }

    /// Evaluates boolean expressions with the given JSON bindings (for example `entity` for a
    /// proxy check's `entity_attributes`): `true` when every expression returns `true`.
    ///
    /// # Errors
    /// As [`Engine::filter`], and the first expression that fails (strict: unlike a filter,
    /// a failing expression is an error, as Sensu's entity matching counts it as no match).
    pub async fn evaluate_bool(
        &self,
        expressions: Vec<String>,
        bindings: Vec<(String, Arc<[u8]>)>,
    ) -> Result<bool, JsError> {
        let verdict = self.predicates(expressions, Vec::new(), bindings).await?;
        match verdict.errors.into_iter().next() {
            Some((_, error)) => Err(error),
            None => Ok(verdict.matched),
        }
    }

    /// Runs a `javascript` mutator as Sensu does: `eval` is the body of a function that sees
    /// `event` (the event's JSON) and each `env_vars` entry `KEY=VALUE` as a global string
    /// `KEY`. When it returns a string, that string is the handler's input; when it returns
    /// `undefined` or `null`, the event as the script left it, as JSON.
    ///
    /// # Errors
    /// [`JsError::BadMutatorResult`] for any other value; what it threw; the limits;
    /// [`JsError::QueueFull`], [`JsError::Stopped`], [`JsError::InvalidBinding`].
    pub async fn mutate(
        &self,
        eval: String,
        env_vars: Vec<String>,
        event_json: Arc<[u8]>,
    ) -> Result<Vec<u8>, JsError> {
        match self
            .submit(worker::Task::Mutate {
                eval,
                env_vars,
                event: event_json,
            })
            .await?
        {
            worker::Reply::Mutated(bytes) => Ok(bytes),
            worker::Reply::Verdict(_) => Err(JsError::Stopped),
        }
    }

    async fn predicates(
        &self,
        expressions: Vec<String>,
        libraries: Vec<String>,
        bindings: Vec<(String, Arc<[u8]>)>,
    ) -> Result<Verdict, JsError> {
        match self
            .submit(worker::Task::Predicates {
                expressions,
                libraries,
                bindings,
            })
            .await?
        {
            worker::Reply::Verdict(verdict) => Ok(verdict),
            worker::Reply::Mutated(_) => Err(JsError::Stopped),
        }
    }

    async fn submit(&self, task: worker::Task) -> Result<worker::Reply, JsError> {
        let (reply, answer) = oneshot::channel();
        match self.sender.try_send(worker::Job { task, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(JsError::QueueFull {
                    capacity: self.queue_capacity,
                })
            }
            Err(TrySendError::Disconnected(_)) => return Err(JsError::Stopped),
        }
        answer.await.map_err(|_canceled| JsError::Stopped)?
    }
}

/// Whether `source` parses as `kind`, without running it and without an [`Engine`] (for
/// validation and lint). Starts a small runtime of its own per call (well under a
/// millisecond), limited as an [`Engine`]'s by default.
///
/// # Errors
/// The parser's message, such as `SyntaxError: unexpected token in expression: '='`.
pub fn check_syntax(source: &str, kind: SourceKind) -> Result<(), String> {
    worker::check_syntax(source, kind)
}

#[cfg(test)]
mod tests;
