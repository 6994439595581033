//! One worker thread: a QuickJS runtime and context with its limits, its compiled expressions,
//! and the loop that takes jobs from the shared queue.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use rquickjs::context::EvalOptions;
use rquickjs::function::Args;
use rquickjs::{
    CatchResultExt, CaughtError, Context, Ctx, FromJs, Function, Persistent, Runtime, Value,
};

use super::builtins::{SEAL, SENSU_FUNCTIONS};
use super::{EngineConfig, JsError, SourceKind, Verdict};

/// The worker thread's own stack beyond the JavaScript stack limit, for the interpreter's C
/// frames and ours.
const THREAD_STACK_MARGIN: usize = 4 * 1024 * 1024;

/// Memory of the runtime [`check_syntax`] starts.
const CHECK_MEMORY_LIMIT: usize = 8 * 1024 * 1024;

/// QuickJS's messages for its limits (`JS_ThrowOutOfMemory`, `JS_ThrowStackOverflow`); the
/// engine gives no other way to tell them from a script's own exceptions.
const OUT_OF_MEMORY: &str = "out of memory";
const STACK_OVERFLOW: &str = "Maximum call stack size exceeded";

/// What a job asks.
pub(super) enum Task {
    /// Boolean expressions over JSON bindings ([`super::Engine::filter`]).
    Predicates {
        expressions: Vec<String>,
        libraries: Vec<String>,
        bindings: Vec<(String, Arc<[u8]>)>,
    },
    /// A mutator's script ([`super::Engine::mutate`]).
    Mutate {
        eval: String,
        env_vars: Vec<String>,
        event: Arc<[u8]>,
    },
}

/// A job's answer.
pub(super) enum Reply {
    Verdict(Verdict),
    Mutated(Vec<u8>),
}

/// A task and where its answer goes.
pub(super) struct Job {
    pub(super) task: Task,
    pub(super) reply: oneshot::Sender<Result<Reply, JsError>>,
}

/// Starts worker `idx`; it stops when every sender of the queue is gone.
pub(super) fn spawn(
    idx: usize,
    config: Arc<EngineConfig>,
    receiver: Arc<Mutex<Receiver<Job>>>,
) -> io::Result<()> {
    thread::Builder::new()
        .name(format!("cairn-js-{idx}"))
        .stack_size(config.stack_limit.saturating_add(THREAD_STACK_MARGIN))
        .spawn(move || run(&config, &receiver))
        .map(drop)
}

fn run(config: &EngineConfig, receiver: &Mutex<Receiver<Job>>) {
    let mut sandbox: Option<Sandbox> = None;
    loop {
        // Only one idle worker waits in `recv`, the others wait for the lock.
        let job = match receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv()
        {
            Ok(job) => job,
            Err(_disconnected) => return,
        };
        let result = match &mut sandbox {
            Some(sandbox) => sandbox.run(config, job.task),
            None => match Sandbox::new(config, &[]) {
                Ok(fresh) => sandbox.insert(fresh).run(config, job.task),
                Err(error) => Err(error),
            },
        };
        if sandbox
            .as_ref()
            .is_some_and(|sandbox| sandbox.exhausted.get())
        {
            // A runtime that ran out of memory is not trusted further: start a new one.
            sandbox = None;
        }
        // The caller may have stopped waiting.
        let _ = job.reply.send(result);
    }
}

/// Parses `source` as `kind` in a runtime of its own.
pub(super) fn check_syntax(source: &str, kind: SourceKind) -> Result<(), String> {
    let config = EngineConfig {
        memory_limit: CHECK_MEMORY_LIMIT,
        cache_entries: 1,
        ..EngineConfig::default()
    };
    let mut sandbox = Sandbox::new(&config, &[]).map_err(|error| error.to_string())?;
    sandbox.start(config.time_limit);
    let result = match kind {
        SourceKind::Expression => sandbox.expression(&["event"], source).map(drop),
        SourceKind::Script => sandbox.script(source).map(drop),
    };
    result.map_err(|error| error.to_string())
}

/// A compiled expression or script, or why it does not compile.
type Compiled = Result<Persistent<Function<'static>>, JsError>;

/// A runtime and its context. Fields drop in order: the persistent values before the context
/// and the runtime that own them.
struct Sandbox {
    cache: HashMap<String, Compiled>,
    reset: Persistent<Function<'static>>,
    context: Context,
    runtime: Runtime,
    /// When the running evaluation must stop; read by the interrupt handler.
    deadline: Rc<Cell<Option<Instant>>>,
    time_limit: Duration,
    memory_limit: usize,
    stack_limit: usize,
    cache_entries: usize,
    /// Set once the runtime hit its memory limit or could not be reset.
    exhausted: Cell<bool>,
}

// === impl Sandbox ===

impl Sandbox {
    /// A runtime with the limits of `config`, Sensu's functions, `libraries`, then sealed.
    fn new(config: &EngineConfig, libraries: &[String]) -> Result<Sandbox, JsError> {
        let stopped = |_| JsError::Stopped;
        let runtime = Runtime::new().map_err(stopped)?;
        runtime.set_memory_limit(config.memory_limit);
        runtime.set_max_stack_size(config.stack_limit);
        let deadline: Rc<Cell<Option<Instant>>> = Rc::new(Cell::new(None));
        let watched = Rc::clone(&deadline);
        runtime.set_interrupt_handler(Some(Box::new(move || {
            watched
                .get()
                .is_some_and(|deadline| Instant::now() >= deadline)
        })));
        let context = Context::full(&runtime).map_err(stopped)?;
        deadline.set(Some(Instant::now() + config.time_limit));
        let reset = context.with(|ctx| -> Result<_, JsError> {
            let library_error = |index, error: CaughtError<'_>| JsError::Library {
                index,
                message: error.to_string(),
            };
            eval::<()>(&ctx, SENSU_FUNCTIONS)
                .catch(&ctx)
                .map_err(|error| library_error(0, error))?;
            for (index, library) in libraries.iter().enumerate() {
                eval::<()>(&ctx, library.as_str())
                    .catch(&ctx)
                    .map_err(|error| library_error(index, error))?;
            }
            let reset: Function = eval(&ctx, SEAL)
                .catch(&ctx)
                .map_err(|error| library_error(libraries.len(), error))?;
            Ok(Persistent::save(&ctx, reset))
        })?;
        deadline.set(None);
        Ok(Sandbox {
            cache: HashMap::new(),
            reset,
            context,
            runtime,
            deadline,
            time_limit: config.time_limit,
            memory_limit: config.memory_limit,
            stack_limit: config.stack_limit,
            cache_entries: config.cache_entries.max(1),
            exhausted: Cell::new(false),
        })
    }

    fn run(&mut self, config: &EngineConfig, task: Task) -> Result<Reply, JsError> {
        match task {
            Task::Predicates {
                expressions,
                libraries,
                bindings,
            } if !libraries.is_empty() => {
                // Libraries change the globals: they get a context of their own (see the
                // module's caveats).
                let mut fresh = Sandbox::new(config, &libraries)?;
                fresh.start(self.time_limit);
                let verdict = fresh.predicates(&expressions, &bindings);
                Ok(Reply::Verdict(verdict?))
            }
            Task::Predicates {
                expressions,
                bindings,
                ..
            } => {
                self.start(self.time_limit);
                let verdict = self.predicates(&expressions, &bindings);
                self.finish();
                Ok(Reply::Verdict(verdict?))
            }
            Task::Mutate {
                eval,
                env_vars,
                event,
            } => {
                self.start(self.time_limit);
                let mutated = self.mutate(&eval, &env_vars, &event);
                self.finish();
                Ok(Reply::Mutated(mutated?))
            }
        }
    }

    fn start(&self, limit: Duration) {
        self.deadline.set(Some(Instant::now() + limit));
    }

    /// Deletes the globals the evaluation added and stops the clock.
    fn finish(&mut self) {
        let reset = self.reset.clone();
        let outcome = self.context.with(|ctx| -> Result<(), JsError> {
            let reset = reset.restore(&ctx).map_err(|_| JsError::Stopped)?;
            reset.call::<_, ()>(()).map_err(|_| JsError::Stopped)
        });
        if outcome.is_err() {
            // Not reset (out of time or memory): do not reuse these globals.
            self.exhausted.set(true);
        }
        self.deadline.set(None);
    }

    fn predicates(
        &mut self,
        expressions: &[String],
        bindings: &[(String, Arc<[u8]>)],
    ) -> Result<Verdict, JsError> {
        let names: Vec<&str> = bindings.iter().map(|(name, _)| name.as_str()).collect();
        let mut verdict = Verdict {
            matched: true,
            errors: Vec::new(),
        };
        for (idx, source) in expressions.iter().enumerate() {
            let outcome = self.expression(&names, source).and_then(|function| {
                let context = self.context.clone();
                context.with(|ctx| {
                    let function = function.restore(&ctx).map_err(|_| JsError::Stopped)?;
                    let mut args = Args::new(ctx.clone(), bindings.len());
                    for (name, json) in bindings {
                        let value =
                            ctx.json_parse(json.to_vec()).catch(&ctx).map_err(
                                |error| match self.failure(error) {
                                    JsError::Exception(message) | JsError::Syntax(message) => {
                                        JsError::InvalidBinding {
                                            name: name.clone(),
                                            message,
                                        }
                                    }
                                    limit => limit,
                                },
                            )?;
                        args.push_arg(value).map_err(|_| JsError::Stopped)?;
                    }
                    let value: Value = args
                        .apply(&function)
                        .catch(&ctx)
                        .map_err(|error| self.failure(error))?;
                    value.as_bool().ok_or_else(|| JsError::NotBoolean {
                        found: type_name(&value),
                    })
                })
            });
            match outcome {
                Ok(true) => {}
                Ok(false) => {
                    verdict.matched = false;
                    break;
                }
                Err(error @ JsError::InvalidBinding { .. }) => return Err(error),
                Err(error) => verdict.errors.push((idx, error)),
            }
        }
        Ok(verdict)
    }

    fn mutate(
        &mut self,
        source: &str,
        env_vars: &[String],
        event: &[u8],
    ) -> Result<Vec<u8>, JsError> {
        let function = self.script(source)?;
        let context = self.context.clone();
        context.with(|ctx| {
            let function = function.restore(&ctx).map_err(|_| JsError::Stopped)?;
            let event = ctx
                .json_parse(event.to_vec())
                .catch(&ctx)
                .map_err(|error| match self.failure(error) {
                    JsError::Exception(message) | JsError::Syntax(message) => {
                        JsError::InvalidBinding {
                            name: "event".to_owned(),
                            message,
                        }
                    }
                    limit => limit,
                })?;
            let globals = ctx.globals();
            for (key, value) in env_vars.iter().filter_map(|entry| entry.split_once('=')) {
                if !key.is_empty() {
                    // A read-only built-in keeps its value, as in a frozen global.
                    let _ = globals.set(key, value);
                }
            }
            let value: Value = function
                .call((event.clone(),))
                .catch(&ctx)
                .map_err(|error| self.failure(error))?;
            if value.is_undefined() || value.is_null() {
                let json = ctx
                    .json_stringify(event)
                    .catch(&ctx)
                    .map_err(|error| self.failure(error))?;
                let text = match json {
                    Some(text) => text.to_string().map_err(|_| JsError::Stopped)?,
                    None => String::new(),
                };
                return Ok(text.into_bytes());
            }
            match value.as_string() {
                Some(text) => Ok(text.to_string().map_err(|_| JsError::Stopped)?.into_bytes()),
                None => Err(JsError::BadMutatorResult {
                    found: type_name(&value),
                }),
            }
        })
    }

    /// The function `(names...) => (source)`, compiled once per source.
    fn expression(
        &mut self,
        names: &[&str],
        source: &str,
    ) -> Result<Persistent<Function<'static>>, JsError> {
        let params = names.join(", ");
        let key = format!("expression\u{0}{params}\u{0}{source}");
        self.compiled(key, |sandbox, ctx| {
            let fast = format!("(function ({params}) {{ return ({source}\n); }})");
            if let Ok(function) = eval::<Function>(ctx, &fast) {
                return Ok(function);
            }
            // Statements: check they parse as a function body, then run them with a direct
            // `eval`, whose value is the last statement's, as Otto's `Run` gives.
            eval::<Function>(ctx, &format!("(function ({params}) {{ {source}\n}})"))
                .catch(ctx)
                .map_err(|error| sandbox.failure(error))?;
            let factory: Function = eval(
                ctx,
                &format!(
                    "(function (source) {{ return function ({params}) {{ return eval(source); }}; }})"
                ),
            )
                .catch(ctx)
                .map_err(|error| sandbox.failure(error))?;
            factory
                .call((source,))
                .catch(ctx)
                .map_err(|error| sandbox.failure(error))
        })
    }

    /// A mutator's `eval` as the body of `function (event)`, as Sensu wraps it.
    fn script(&mut self, source: &str) -> Result<Persistent<Function<'static>>, JsError> {
        let key = format!("script\u{0}{source}");
        self.compiled(key, |sandbox, ctx| {
            eval::<Function>(ctx, &format!("(function (event) {{ {source}\n}})"))
                .catch(ctx)
                .map_err(|error| sandbox.failure(error))
        })
    }

    fn compiled(
        &mut self,
        key: String,
        compile: impl for<'js> FnOnce(&Sandbox, &Ctx<'js>) -> Result<Function<'js>, JsError>,
    ) -> Result<Persistent<Function<'static>>, JsError> {
        if let Some(compiled) = self.cache.get(&key) {
            return compiled.clone();
        }
        let context = self.context.clone();
        let compiled = context
            .with(|ctx| compile(self, &ctx).map(|function| Persistent::save(&ctx, function)));
        // Limits are not a property of the source: do not remember them.
        if matches!(
            compiled,
            Ok(_) | Err(JsError::Syntax(_) | JsError::Exception(_))
        ) {
            if self.cache.len() >= self.cache_entries {
                self.cache.clear();
            }
            self.cache.insert(key, compiled.clone());
        }
        compiled
    }

    /// What a caught failure was: a limit, or what the source threw.
    fn failure(&self, error: CaughtError<'_>) -> JsError {
        if self
            .deadline
            .get()
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return JsError::TimeLimit(self.time_limit);
        }
        let (name, text) = match &error {
            CaughtError::Exception(exception) => {
                let name: Option<String> = exception.get("name").ok();
                let message = exception.message().unwrap_or_default();
                let text = match &name {
                    Some(name) if !name.is_empty() => format!("{name}: {message}"),
                    _ => message,
                };
                (name, text)
            }
            other => (None, other.to_string()),
        };
        if text.contains(OUT_OF_MEMORY) {
            self.exhausted.set(true);
            return JsError::MemoryLimit(self.memory_limit);
        }
        if text.contains(STACK_OVERFLOW) {
            return JsError::StackLimit(self.stack_limit);
        }
        if name.as_deref() == Some("SyntaxError") {
            return JsError::Syntax(text);
        }
        JsError::Exception(text)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // The persistent values must go before the runtime; fields drop in order, but a
        // failed reset may leave garbage the collector should see first.
        self.cache.clear();
        self.runtime.run_gc();
    }
}

/// Evaluates `source` as a global script in sloppy mode, as Otto runs Sensu's JavaScript
/// (rquickjs's default is strict).
fn eval<'js, V: FromJs<'js>>(ctx: &Ctx<'js>, source: &str) -> rquickjs::Result<V> {
    let mut options = EvalOptions::default();
    options.strict = false;
    ctx.eval_with_options(source, options)
}

/// The JavaScript `typeof` of `value` (`null` for null), for messages.
fn type_name(value: &Value<'_>) -> String {
    let name = if value.is_null() {
        "null"
    } else if value.is_undefined() {
        "undefined"
    } else if value.is_bool() {
        "boolean"
    } else if value.is_number() {
        "number"
    } else if value.is_string() {
        "string"
    } else if value.is_function() {
        "function"
    } else if value.is_symbol() {
        "symbol"
    } else if value.is_big_int() {
        "bigint"
    } else {
        "object"
    };
    name.to_owned()
}
