//! Check execution: runs the command of a [`CheckRequest`] and its hooks and builds the event.
//!
//! Semantics, following Sensu's agent (`agent/check_handler.go`) where the brief does not say
//! otherwise:
//!
//! - **Concurrency.** At most [`ExecLimits::max_concurrency`] checks run at once; further
//!   requests wait for a slot. A check (keyed by namespace, check name and entity name, so that
//!   proxy checks for different entities are distinct) never runs twice at once: a request that
//!   arrives while the same check is running or waiting for a slot is not run and answered at
//!   once with a status 3 event whose output says the check is still running. Sensu drops such
//!   a request silently; [`Executor::run`] always returns an event, and an overlapping run means
//!   the check takes longer than its interval, which the operator should see.
//! - **Process.** `sh -c <command>` in a process group of its own, on the shared runner
//!   ([`cairn_api::process`], which the backend's pipe handlers use too). The environment is the
//!   agent's, plus the check's `env_vars` (`KEY=VALUE`; a malformed entry fails the check with
//!   status 3 naming it), plus the request's secrets (which win). Secrets are only ever put in
//!   the environment: never in the arguments, never logged. stdin is `/dev/null`, or with
//!   `stdin: true` the JSON `{"entity": …, "check": …}` (the check configuration without its
//!   secret references).
//! - **Output.** stdout and stderr share one pipe, so they interleave as the command writes
//!   them. The output is cut to `max_output_size` bytes when set, else [`DEFAULT_MAX_OUTPUT`], on
//!   a UTF-8 boundary; the number of bytes cut is recorded in the check's label
//!   [`LABEL_OUTPUT_TRUNCATED`] (Sensu's label for the same thing). Every occurrence of every
//!   non-empty secret value is replaced with `*****`, in check and hook output alike, before the
//!   output is cut, so a cut never leaves part of a secret behind.
//! - **Timeout.** `timeout` seconds (0 = none): the whole process group gets `SIGKILL` and the
//!   result is status 2 (as Sensu) with output `Execution timed out after N seconds` followed
//!   by what the command wrote until then. When the shell exits, processes it left behind in
//!   its group die with it: while they keep the output open, their output is read for at most
//!   [`OUTPUT_GRACE`] more (never past the timeout), then the group is killed and a note added;
//!   those that closed their output are killed at once. (Sensu leaves the latter running; a
//!   check here leaks no process, unless it leaves the group on purpose with `setsid`.)
//! - **Status.** Exit codes 0, 1 and 2 are the status; any other code, death by a signal, or a
//!   command that cannot be started is 3 (unknown). The output names the signal or the OS
//!   error.
//! - **Hooks.** After the check, the hooks its `check_hooks` select for the result run one
//!   after the other with their own command, timeout (60 s when 0, Sensu's default) and stdin
//!   (the event so far, as JSON). A selector is `ok` (0), `warning` (1), `critical` (2),
//!   `unknown` (anything else), `non-zero`, or an exact exit code `0`…`255`; selectors are
//!   matched against the command's real exit code, so `127` can select a hook although the
//!   status is 3, and a timeout counts as 2. Hooks get the agent's environment only (Sensu gives
//!   them no `env_vars` or secrets; here a hook gets the secrets the backend resolved for it in
//!   `hook_secrets`, and its output is redacted of every value of the request). Each result goes into `check.hooks` as the hook
//!   configuration plus `duration`, `executed`, `issued`, `output` and `status`, Sensu's shape.
//!   A selected hook the request does not carry yields a status 3 result saying so.
//! - **Runtime assets** (`assets.rs`). Before the command runs, the assets its
//!   `runtime_assets` name are taken from the request (the backend resolves them), their build
//!   chosen for the entity, downloaded into the shared cache unless it has them, and leased
//!   until the command ends; each asset's `bin`, `lib` and `include` are prepended to `PATH`,
//!   `LD_LIBRARY_PATH` and `CPATH` in `runtime_assets` order, and `<NAME>_PLUGIN_PATH` names
//!   its folder, as Sensu's agent sets them (then `env_vars` and secrets, which win). An asset
//!   that is not ready fails the check with status 3 naming it and the reason, and the command
//!   does not run. A hook's `runtime_assets` work the same way for the hook.
//! - **Event.** The given entity, the check built from the configuration plus `status`,
//!   `output`, `issued`, `executed` (start, unix s) and `duration` (s), `timestamp` = now. The id
//!   and `processed_by` are the caller's.
//! - **Metrics** (`extract.rs`, Sensu's order). Before the run, tokens in `output_metric_tags`
//!   and `output_metric_thresholds` are substituted with the entity's fields (an unmatched one
//!   fails the check with status 3, not run). After it, the points are extracted from the output
//!   (`output_metric_format`) into `event.metrics` with `output_metric_handlers`; when the status
//!   is 0, `output_metric_thresholds` may raise it and annotate the event; then the hooks run
//!   (for that status), and `discard_output` blanks the output last.
//! - **Allow list** ([`crate::allowlist`], Sensu's `allow-list`). With one, a check or hook
//!   command it does not allow is not run (status 3 saying why), and a check gets its
//!   `env_vars` only when its entry has `enable_env`.
//!
//! Dropping the future of [`Executor::run`] kills the process group of what is running.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_api::agent::{CheckRequest, SecretValue};
use cairn_api::model::{Check, CheckConfig, Entity, Event, HookConfig, Wire};
use cairn_api::process::{self, Ended, Finished, RunConfig, RunError, Streams};
use cairn_api::ObjectMeta;
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::allowlist::AllowList;
use crate::assets::Assets;
use crate::extract;

/// Output kept when the check sets no `max_output_size`, bytes.
pub const DEFAULT_MAX_OUTPUT: usize = 1024 * 1024;

/// Timeout of a hook whose `timeout` is 0 (Sensu's default).
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// How long output is still read after the shell exited while processes it left behind keep
/// the output open; then they are killed.
pub const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// The check label recording how many output bytes were cut.
pub const LABEL_OUTPUT_TRUNCATED: &str = "sensu.io/output_truncated_bytes";

use cairn_api::redact::Redactor;
pub use cairn_api::redact::REDACTED;

const STATUS_CRITICAL: u32 = 2;
const STATUS_UNKNOWN: u32 = 3;

/// Limits of an [`Executor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecLimits {
    /// Checks running at once (hooks included); 0 is taken as 1.
    pub max_concurrency: usize,
}

/// Runs check requests; cheap to clone (clones share the limits and the running checks).
#[derive(Debug, Clone)]
pub struct Executor {
    shared: Arc<Shared>,
    /// The command allow list (`allowlist.rs`); `None` runs every command.
    allow_list: Option<Arc<AllowList>>,
}

#[derive(Debug)]
struct Shared {
    /// One permit per running check.
    slots: Semaphore,
    /// Checks running or waiting for a slot.
    running: Mutex<HashSet<RunKey>>,
    /// Runtime assets; `None` refuses every check or hook that names one.
    assets: Option<Arc<Assets>>,
}

/// Namespace, check name, entity name.
type RunKey = (String, String, String);

// === impl Executor ===

impl Executor {
    /// An executor with the given limits.
    pub fn new(limits: ExecLimits) -> Executor {
        Executor::with_assets(limits, None)
    }

    /// An executor whose checks and hooks may use runtime assets from `assets`.
    pub fn with_assets(limits: ExecLimits, assets: Option<Arc<Assets>>) -> Executor {
        Executor {
            shared: Arc::new(Shared {
                slots: Semaphore::new(limits.max_concurrency.max(1)),
                running: Mutex::new(HashSet::new()),
                assets,
            }),
            allow_list: None,
        }
    }

    /// This executor, running only the check and hook commands `allow_list` allows.
    pub fn with_allow_list(mut self, allow_list: Option<AllowList>) -> Executor {
        self.allow_list = allow_list.map(Arc::new);
        self
    }

    /// Runs the check (and its hooks) for `entity` and returns the event, with an empty id.
    ///
    /// Never fails: whatever goes wrong becomes a status 3 event saying what (see the module
    /// documentation).
    pub async fn run(&self, request: &CheckRequest, entity: &Entity) -> Event {
        let config = &request.config;
        let mut base = Check::from_config(config, request.issued);
        let (namespace, name) = config.metadata.as_ref().map_or(("", ""), |meta| {
            (meta.namespace.as_str(), meta.name.as_str())
        });
        if name.is_empty() {
            return refused(entity, base, "the check request names no check".to_owned());
        }
        // A proxy check runs once per proxy entity: each is its own run.
        let entity_name = if request.config.proxy_entity_name.is_empty() {
            entity
                .metadata
                .as_ref()
                .map_or("", |meta| meta.name.as_str())
        } else {
            request.config.proxy_entity_name.as_str()
        };
        let key = (
            namespace.to_owned(),
            name.to_owned(),
            entity_name.to_owned(),
        );
        let Some(_claim) = Claim::new(&self.shared, key) else {
            debug!(check = name, "check is still running; request skipped");
            return refused(
                entity,
                base,
                format!("check {name} is still running; this request was not run"),
            );
        };
        let Ok(_permit) = self.shared.slots.acquire().await else {
            return refused(entity, base, "the executor is closed".to_owned());
        };
        let redactor = Redactor::of_request(request);
        if let Err(message) = extract::substitute_tokens(&mut base, entity) {
            return refused(entity, base, redactor.redact_str(&message));
        }
        if base.command.trim().is_empty() {
            return refused(entity, base, format!("check {name} has no command"));
        }
        // The command after token substitution (the event carries it as run, as Sensu's).
        let command = base.command.clone();
        // Leased until the command is done, so the cache keeps them.
        let assets = self.shared.assets.as_deref();
        let prepared = match prepare_assets(assets, &config.runtime_assets, request, entity).await {
            Ok(prepared) => prepared,
            Err(message) => return refused(entity, base, redactor.redact_str(&message)),
        };
        // The allow list (allowlist.rs): a command not on it does not run. Its program is
        // looked up on the PATH the command gets, its assets' `bin/` included.
        let env_vars = match crate::allowlist::admit_check(
            self.allow_list.as_deref(),
            &command,
            &config.env_vars,
            env_path(&prepared.env),
        )
        .await
        {
            Ok(env_vars) => env_vars,
            Err(denied) => {
                return refused(entity, base, redactor.redact_str(&denied.check_output()))
            }
        };
        let env = match check_env(env_vars, &request.secrets) {
            Ok(env) => [prepared.env.as_slice(), env.as_slice()].concat(),
            Err(message) => return refused(entity, base, redactor.redact_str(&message)),
        };
        let stdin = if config.stdin {
            let payload = StdinPayload {
                entity,
                check: &CheckConfig {
                    secrets: Vec::new(),
                    ..config.clone()
                },
            };
            match serde_json::to_vec(&Wire(&payload)) {
                Ok(json) => Some(json),
                Err(error) => {
                    return refused(
                        entity,
                        base,
                        format!("failed to encode the stdin JSON: {error}"),
                    )
                }
            }
        } else {
            None
        };
        let max_output = output_limit(config.max_output_size);
        let outcome = execute(Run {
            command: &command,
            timeout_secs: u64::try_from(config.timeout).unwrap_or(0),
            env: &env,
            stdin,
            max_output,
            redactor: &redactor,
        })
        .await;
        debug!(
            check = name,
            status = outcome.status,
            duration = outcome.duration,
            "check finished"
        );

        let mut check = base;
        check.status = outcome.status;
        check.output = outcome.output;
        check.executed = outcome.executed;
        check.duration = Some(outcome.duration);
        if outcome.truncated > 0 {
            check
                .metadata
                .get_or_insert_with(ObjectMeta::default)
                .labels
                .insert(
                    LABEL_OUTPUT_TRUNCATED.to_owned(),
                    outcome.truncated.to_string(),
                );
        }
        drop(prepared);
        let extracted = extract::extract(&mut check, unix_now());
        // Hooks run for the status the thresholds set, as in Sensu; a changed status is matched
        // as its own exit code.
        let code = if check.status == outcome.status {
            outcome.code
        } else {
            i32::try_from(check.status).ok()
        };
        let selected = selected_hooks(&config.check_hooks, check.status, code);
        if !selected.is_empty() {
            check.hooks = run_hooks(
                &selected,
                request,
                entity,
                &check,
                max_output,
                &redactor,
                HookGates {
                    allow_list: self.allow_list.as_deref(),
                    assets,
                },
            )
            .await;
        }
        if check.discard_output {
            check.output.clear();
        }
        let mut event = event(entity, check);
        event.metrics = extracted.metrics;
        if !extracted.annotations.is_empty() {
            let namespace = config
                .metadata
                .as_ref()
                .map_or("", |meta| meta.namespace.as_str());
            event
                .metadata
                .get_or_insert_with(|| ObjectMeta::named(namespace, ""))
                .annotations
                .extend(extracted.annotations);
        }
        event
    }
}

/// The `PATH` the runtime assets set (their `bin/` before the agent's), if any: where the
/// allow list looks a program up.
fn env_path(env: &[(String, String)]) -> Option<&str> {
    env.iter()
        .rev()
        .find(|(name, _)| name == "PATH")
        .map(|(_, value)| value.as_str())
}

/// The runtime assets `names` of a check or hook, ready; nothing when it names none.
///
/// # Errors
/// A message naming the asset and the reason.
async fn prepare_assets(
    assets: Option<&Assets>,
    names: &[String],
    request: &CheckRequest,
    entity: &Entity,
) -> Result<crate::assets::Prepared, String> {
    if names.is_empty() {
        return Ok(crate::assets::Prepared::default());
    }
    let Some(assets) = assets else {
        return Err(format!(
            "runtime assets are not enabled on this agent (asked for {})",
            names.join(", ")
        ));
    };
    assets
        .prepare(names, &request.assets, entity)
        .await
        .map_err(|error| error.to_string())
}

/// Marks a check as running until dropped.
struct Claim {
    shared: Arc<Shared>,
    key: RunKey,
}

// === impl Claim ===

impl Claim {
    /// `None` when the check is already running.
    fn new(shared: &Arc<Shared>, key: RunKey) -> Option<Claim> {
        let mut running = shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !running.insert(key.clone()) {
            return None;
        }
        Some(Claim {
            shared: Arc::clone(shared),
            key,
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// What a check command with `stdin: true` reads, written in Sensu's full form (`Wire`).
#[derive(Serialize)]
struct StdinPayload<'a, C: Serialize> {
    entity: &'a Entity,
    check: &'a C,
}

fn event(entity: &Entity, check: Check) -> Event {
    Event {
        timestamp: unix_now(),
        entity: Some(entity.clone()),
        check: Some(check),
        ..Event::default()
    }
}

/// A status 3 event for a request that was not run.
fn refused(entity: &Entity, mut check: Check, output: String) -> Event {
    check.status = STATUS_UNKNOWN;
    check.output = output;
    check.executed = unix_now();
    check.duration = Some(0.0);
    event(entity, check)
}

fn output_limit(max_output_size: i64) -> usize {
    match usize::try_from(max_output_size) {
        Ok(limit) if limit > 0 => limit,
        _ => DEFAULT_MAX_OUTPUT,
    }
}

/// The variables added to the agent's environment: `env_vars`, then the secrets.
///
/// # Errors
/// A message naming the malformed `env_vars` entry, or the variable name of a bad secret
/// (never its value).
fn check_env(
    env_vars: &[String],
    secrets: &[SecretValue],
) -> Result<Vec<(String, String)>, String> {
    let mut env = Vec::with_capacity(env_vars.len() + secrets.len());
    for entry in env_vars {
        match entry.split_once('=') {
            Some((key, value)) if valid_env_name(key) => {
                env.push((key.to_owned(), value.to_owned()));
            }
            _ => {
                return Err(format!(
                    "invalid env_vars entry {entry:?}: expected KEY=VALUE with a non-empty KEY"
                ))
            }
        }
    }
    for secret in secrets {
        if !valid_env_name(&secret.name) {
            return Err(format!(
                "invalid secret environment variable name {:?}",
                secret.name
            ));
        }
        env.push((secret.name.clone(), secret.value.clone()));
    }
    Ok(env)
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}

/// One command to run.
struct Run<'a> {
    command: &'a str,
    /// 0 for none.
    timeout_secs: u64,
    /// Added to the agent's environment.
    env: &'a [(String, String)],
    /// Written to stdin; `None` for `/dev/null`.
    stdin: Option<Vec<u8>>,
    max_output: usize,
    redactor: &'a Redactor,
}

/// What running a command gave.
struct Outcome {
    status: u32,
    /// The exit code when the command exited by itself.
    code: Option<i32>,
    /// Redacted and cut.
    output: String,
    /// Output bytes cut.
    truncated: usize,
    /// Start, unix s.
    executed: i64,
    /// Seconds.
    duration: f64,
}

/// Runs the command on the shared runner ([`process::run`]) and maps how it ended to a status.
async fn execute(run: Run<'_>) -> Outcome {
    let executed = unix_now();
    let started = Instant::now();
    let mut command = process::shell(run.command);
    command.envs(run.env.iter().map(|(key, value)| (key, value)));
    let config = RunConfig {
        stdin: run.stdin.map(Arc::from),
        timeout: (run.timeout_secs > 0).then(|| Duration::from_secs(run.timeout_secs)),
        max_output: run.max_output,
        streams: Streams::Combined,
        grace: OUTPUT_GRACE,
        redactor: Some(run.redactor),
    };
    let (status, code, output, truncated) = match process::run(command, &config).await {
        Ok(Finished { ended, output, .. }) => {
            let truncated = output.truncated_bytes;
            let (status, code, output) = outcome_of(ended, output.text, run.timeout_secs);
            (status, code, output, truncated)
        }
        Err(error) => {
            let (RunError::PipeFailed(source) | RunError::SpawnFailed(source)) = &error;
            warn!(%source, "failed to run a command");
            (
                STATUS_UNKNOWN,
                None,
                format!("failed to run the command: {source}"),
                0,
            )
        }
    };
    Outcome {
        status,
        code,
        output,
        truncated,
        executed,
        duration: started.elapsed().as_secs_f64(),
    }
}

/// The status, the exit code when the command exited by itself, and the output with notes.
fn outcome_of(ended: Ended, body: String, timeout_secs: u64) -> (u32, Option<i32>, String) {
    match ended {
        Ended::Exited {
            status,
            leftovers_killed,
        } => {
            let mut output = body;
            if let Some(signal) = status.signal() {
                let name =
                    Signal::try_from(signal).map_or_else(|_| signal.to_string(), |s| s.to_string());
                append_note(&mut output, &format!("terminated by signal {name}"));
            }
            if leftovers_killed {
                append_note(
                    &mut output,
                    "processes left behind by the command kept its output open and were killed",
                );
            }
            let code = status.code();
            let status = match code {
                Some(code @ 0..=2) => code.unsigned_abs(),
                _ => STATUS_UNKNOWN,
            };
            (status, code, output)
        }
        Ended::TimedOut => (
            STATUS_CRITICAL,
            None,
            format!("Execution timed out after {timeout_secs} seconds\n{body}"),
        ),
        Ended::WaitFailed(error) => {
            warn!(%error, "failed to wait for a command");
            let mut output = format!("failed to run the command: {error}");
            if !body.is_empty() {
                output.push('\n');
                output.push_str(&body);
            }
            (STATUS_UNKNOWN, None, output)
        }
    }
}

fn append_note(output: &mut String, note: &str) {
    if !output.is_empty() && !output.ends_with('\n') {
        output.push('\n');
    }
    output.push('<');
    output.push_str(note);
    output.push('>');
}

/// Whether the `check_hooks` selector matches: against the exit code when the command exited
/// by itself, else against the status.
fn hook_selected(selector: &str, status: u32, code: Option<i32>) -> bool {
    let value = code.map_or(i64::from(status), i64::from);
    match selector.trim().to_ascii_lowercase().as_str() {
        "ok" => value == 0,
        "warning" => value == 1,
        "critical" => value == 2,
        "unknown" => !(0..=2).contains(&value),
        "non-zero" => value != 0,
        number => number.parse::<i64>().is_ok_and(|number| number == value),
    }
}

/// The hook names selected for the result, in order, each once.
fn selected_hooks(
    check_hooks: &[BTreeMap<String, Vec<String>>],
    status: u32,
    code: Option<i32>,
) -> Vec<String> {
    let mut selected: Vec<String> = Vec::new();
    for (selector, names) in check_hooks.iter().flatten() {
        if !hook_selected(selector, status, code) {
            continue;
        }
        for name in names {
            if !selected.contains(name) {
                selected.push(name.clone());
            }
        }
    }
    selected
}

/// What decides whether and how a hook runs besides the hook itself: the allow list and the
/// runtime assets of the executor.
#[derive(Clone, Copy)]
struct HookGates<'a> {
    allow_list: Option<&'a AllowList>,
    assets: Option<&'a Assets>,
}

async fn run_hooks(
    names: &[String],
    request: &CheckRequest,
    entity: &Entity,
    check: &Check,
    max_output: usize,
    redactor: &Redactor,
    gates: HookGates<'_>,
) -> Vec<serde_json::Value> {
    let HookGates { allow_list, assets } = gates;
    let mut results = Vec::with_capacity(names.len());
    for name in names {
        let hook = request.hooks.iter().find(|hook| {
            hook.metadata
                .as_ref()
                .is_some_and(|meta| &meta.name == name)
        });
        let Some(hook) = hook else {
            warn!(hook = %name, "the check selects a hook the request does not carry");
            let missing = HookConfig {
                metadata: Some(ObjectMeta::named(
                    check.metadata.as_ref().map_or("", |meta| &meta.namespace),
                    name,
                )),
                ..HookConfig::default()
            };
            results.push(hook_refused(
                &missing,
                request.issued,
                format!("hook {name} was not sent with the check request"),
            ));
            continue;
        };
        if hook.command.trim().is_empty() {
            results.push(hook_refused(
                hook,
                request.issued,
                format!("hook {name} has no command"),
            ));
            continue;
        }
        let stdin = if hook.stdin {
            match serde_json::to_vec(&Wire(&StdinPayload { entity, check })) {
                Ok(json) => Some(json),
                Err(error) => {
                    results.push(hook_refused(
                        hook,
                        request.issued,
                        format!("failed to encode the stdin JSON: {error}"),
                    ));
                    continue;
                }
            }
        } else {
            None
        };
        let timeout_secs = match u64::try_from(hook.timeout) {
            Ok(secs) if secs > 0 => secs,
            _ => DEFAULT_HOOK_TIMEOUT.as_secs(),
        };
        let hook_secrets = request
            .hook_secrets
            .get(name)
            .map_or(&[][..], Vec::as_slice);
        // Each way a hook does not run (a token, its assets, the allow list, its secrets) is
        // one result through `hook_refused`.
        let ready = async {
            let command = extract::substitute_hook_command(&hook.command, entity)?;
            let prepared = prepare_assets(assets, &hook.runtime_assets, request, entity).await?;
            crate::allowlist::admit_hook(allow_list, &command, env_path(&prepared.env))
                .await
                .map_err(|denied| denied.hook_output())?;
            let env = check_env(&[], hook_secrets)?;
            let env = [prepared.env.as_slice(), env.as_slice()].concat();
            Ok::<_, String>((command, prepared, env))
        };
        let (hook_command, _prepared, env) = match ready.await {
            Ok(ready) => ready,
            Err(message) => {
                results.push(hook_refused(
                    hook,
                    request.issued,
                    redactor.redact_str(&message),
                ));
                continue;
            }
        };
        let outcome = execute(Run {
            command: &hook_command,
            timeout_secs,
            env: &env,
            stdin,
            max_output,
            redactor,
        })
        .await;
        debug!(hook = %name, status = outcome.status, "hook finished");
        results.push(hook_result(
            hook,
            request.issued,
            outcome.status,
            outcome.output,
            outcome.executed,
            outcome.duration,
        ));
    }
    results
}

/// Sensu's hook result: the hook configuration plus the run's fields.
/// The result of a hook that did not run: status 3 with `output` saying why.
fn hook_refused(hook: &HookConfig, issued: i64, output: String) -> serde_json::Value {
    hook_result(hook, issued, STATUS_UNKNOWN, output, unix_now(), 0.0)
}

fn hook_result(
    hook: &HookConfig,
    issued: i64,
    status: u32,
    output: String,
    executed: i64,
    duration: f64,
) -> serde_json::Value {
    let mut value = serde_json::to_value(hook)
        .ok()
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
    if let Some(fields) = value.as_object_mut() {
        fields.insert("duration".to_owned(), duration.into());
        fields.insert("executed".to_owned(), executed.into());
        fields.insert("issued".to_owned(), issued.into());
        fields.insert("output".to_owned(), output.into());
        fields.insert("status".to_owned(), status.into());
    }
    value
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use nix::errno::Errno;
    use nix::unistd::Pid;

    use super::*;

    fn entity() -> Entity {
        Entity {
            metadata: Some(ObjectMeta::named("default", "host-1")),
            entity_class: "agent".to_owned(),
            subscriptions: vec!["linux".to_owned()],
            ..Entity::default()
        }
    }

    fn config(name: &str, command: &str) -> CheckConfig {
        CheckConfig {
            metadata: Some(ObjectMeta::named("default", name)),
            command: command.to_owned(),
            interval: 60,
            subscriptions: vec!["linux".to_owned()],
            handlers: vec!["slack".to_owned()],
            timeout: 20,
            ..CheckConfig::default()
        }
    }

    fn request(config: CheckConfig) -> CheckRequest {
        CheckRequest {
            config,
            hooks: Vec::new(),
            issued: 1_700_000_000,
            ..CheckRequest::default()
        }
    }

    fn executor(max_concurrency: usize) -> Executor {
        Executor::new(ExecLimits { max_concurrency })
    }

    /// Runs one check, failing the test rather than hanging.
    async fn run(executor: &Executor, request: &CheckRequest) -> Check {
        let event = tokio::time::timeout(Duration::from_secs(60), executor.run(request, &entity()))
            .await
            .expect("the check finishes");
        assert_eq!(event.entity, Some(entity()));
        event.check.expect("the event has a check")
    }

    async fn run_command(command: &str) -> Check {
        run(&executor(4), &request(config("probe", command))).await
    }

    fn quoted(path: &Path) -> String {
        format!("'{}'", path.display())
    }

    fn read_pids(path: &Path) -> Vec<i32> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
            .map(|pid| pid.parse().expect("a pid"))
            .collect()
    }

    /// `(state, pgrp)` of a live process, from `/proc/<pid>/stat`.
    fn proc_stat(pid: i32) -> Option<(char, i32)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let state = fields.first()?.chars().next()?;
        let pgrp = fields.get(2)?.parse().ok()?;
        Some((state, pgrp))
    }

    /// Gone (`kill(pid, 0)` fails with ESRCH) or a zombie waiting for init to reap it.
    fn is_dead(pid: i32) -> bool {
        match nix::sys::signal::kill(Pid::from_raw(pid), None) {
            Err(Errno::ESRCH) => true,
            _ => proc_stat(pid).is_none_or(|(state, _)| state == 'Z' || state == 'X'),
        }
    }

    /// Live (non-zombie) processes in the group.
    fn group_members(pgid: i32) -> Vec<i32> {
        std::fs::read_dir("/proc")
            .expect("procfs")
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| {
                proc_stat(pid)
                    .is_some_and(|(state, pgrp)| pgrp == pgid && state != 'Z' && state != 'X')
            })
            .collect()
    }

    async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn hook(name: &str, command: &str) -> HookConfig {
        HookConfig {
            metadata: Some(ObjectMeta::named("default", name)),
            command: command.to_owned(),
            timeout: 10,
            ..HookConfig::default()
        }
    }

    fn hook_names(check: &Check) -> Vec<String> {
        check
            .hooks
            .iter()
            .map(|hook| {
                hook["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_check_naming_assets_fails_without_them() {
        let mut config = config("probe", "echo ran");
        config.runtime_assets = vec!["tools".to_owned()];
        let check = run(&executor(1), &request(config.clone())).await;
        assert_eq!(check.status, 3);
        assert_eq!(
            check.output,
            "runtime assets are not enabled on this agent (asked for tools)"
        );

        let dir = tempfile::tempdir().unwrap();
        let assets = Arc::new(crate::assets::Assets::new(
            cairn_api::assets::CacheConfig::new(dir.path().join("assets")),
        ));
        let with_assets =
            Executor::with_assets(ExecLimits { max_concurrency: 1 }, Some(assets.clone()));
        let check = run(&with_assets, &request(config.clone())).await;
        assert_eq!(check.status, 3);
        assert_eq!(check.output, "asset tools was not sent with the request");

        let mut plain = request(config);
        plain.assets = vec![cairn_api::model::Asset {
            metadata: Some(ObjectMeta::named("default", "tools")),
            url: "http://127.0.0.1:9/tools.tar.gz".to_owned(),
            sha512: "e".repeat(128),
            ..cairn_api::model::Asset::default()
        }];
        let check = run(&with_assets, &plain).await;
        assert_eq!(check.status, 3);
        assert_eq!(
            check.output,
            "asset tools: http://127.0.0.1:9/tools.tar.gz is plain http and assets.allow_http \
             is false"
        );
        assert!(!assets.filter_engine_started());

        // A hook naming an asset the request lacks fails alone; the check's result stands.
        let mut hooked = super::tests::config("probe", "exit 1");
        hooked.check_hooks = vec![BTreeMap::from([(
            "warning".to_owned(),
            vec!["diag".to_owned()],
        )])];
        let mut with_hook = request(hooked);
        let mut diag = hook("diag", "echo diag");
        diag.runtime_assets = vec!["missing".to_owned()];
        with_hook.hooks = vec![diag];
        let check = run(&with_assets, &with_hook).await;
        assert_eq!(check.status, 1);
        assert_eq!(check.hooks[0]["status"], 3);
        assert_eq!(
            check.hooks[0]["output"],
            "asset missing was not sent with the request"
        );
    }

    #[tokio::test]
    async fn exit_codes_map_to_statuses() {
        for (command, status) in [
            ("exit 0", 0),
            ("exit 1", 1),
            ("exit 2", 2),
            ("exit 3", 3),
            ("exit 42", 3),
            ("exit 255", 3),
            ("kill -KILL $$", 3),
        ] {
            let check = run_command(command).await;
            assert_eq!(check.status, status, "{command}: {}", check.output);
        }
        let check = run_command("kill -TERM $$").await;
        assert!(check.output.contains("SIGTERM"), "{}", check.output);
    }

    #[tokio::test]
    async fn the_event_carries_the_configuration_and_the_result() {
        let before = unix_now();
        let check = run_command("echo one; echo two >&2; echo three; sleep 0.1").await;
        assert_eq!(check.status, 0);
        assert_eq!(check.output, "one\ntwo\nthree\n", "interleaved as written");
        let meta = check.metadata.clone().unwrap();
        assert_eq!(
            (meta.namespace.as_str(), meta.name.as_str()),
            ("default", "probe")
        );
        assert_eq!(check.interval, 60);
        assert_eq!(check.handlers, ["slack"]);
        assert_eq!(check.subscriptions, ["linux"]);
        assert_eq!(check.timeout, 20);
        assert_eq!(check.issued, 1_700_000_000);
        assert!(check.executed >= before && check.executed <= unix_now());
        let duration = check.duration.unwrap();
        assert!((0.1..10.0).contains(&duration), "{duration}");
        assert!(check.hooks.is_empty());
    }

    #[tokio::test]
    async fn a_command_that_cannot_start_is_unknown() {
        // A NUL byte cannot go into the environment: the spawn itself fails.
        let mut config = config("probe", "true");
        config.env_vars = vec!["BROKEN=a\0b".to_owned()];
        let check = run(&executor(1), &request(config)).await;
        assert_eq!(check.status, 3);
        assert!(
            check.output.starts_with("failed to run the command: "),
            "{}",
            check.output
        );

        let check = run_command("  ").await;
        assert_eq!(check.status, 3);
        assert_eq!(check.output, "check probe has no command");

        let mut nameless = request(config_named_nothing());
        nameless.config.command = "true".to_owned();
        let check = run(&executor(1), &nameless).await;
        assert_eq!(check.status, 3);
        assert_eq!(check.output, "the check request names no check");
    }

    fn config_named_nothing() -> CheckConfig {
        CheckConfig::default()
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let command = format!(
            "echo $$ > {file}; sleep 100 & echo $! >> {file}; sleep 100 & echo $! >> {file}; \
             echo partial; wait",
            file = quoted(&pids)
        );
        let mut config = config("slow", &command);
        config.timeout = 1;
        let started = Instant::now();
        let check = run(&executor(1), &request(config)).await;
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(check.status, 2);
        assert_eq!(
            check.output,
            "Execution timed out after 1 seconds\npartial\n"
        );

        let pids = read_pids(&pids);
        assert_eq!(pids.len(), 3, "{pids:?}");
        let shell = pids[0];
        for &pid in &pids {
            wait_until(&format!("process {pid} to die"), || is_dead(pid)).await;
        }
        assert_eq!(group_members(shell), Vec::<i32>::new());
    }

    #[tokio::test]
    async fn processes_left_holding_the_output_are_killed_after_a_grace() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let command = format!(
            "sleep 100 & echo $! > {file}; echo done; exit 1",
            file = quoted(&pids)
        );
        let mut config = config("leaky", &command);
        config.timeout = 0;
        let started = Instant::now();
        let check = run(&executor(1), &request(config)).await;
        let elapsed = started.elapsed();
        assert!(
            elapsed >= OUTPUT_GRACE && elapsed < OUTPUT_GRACE * 3,
            "{elapsed:?}"
        );
        assert_eq!(check.status, 1);
        assert!(
            check.output.starts_with("done\n<processes left behind"),
            "{}",
            check.output
        );
        for pid in read_pids(&pids) {
            wait_until(&format!("process {pid} to die"), || is_dead(pid)).await;
        }
    }

    #[tokio::test]
    async fn processes_left_behind_with_their_output_closed_die_with_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let command = format!(
            "sleep 100 > /dev/null 2>&1 & echo $! > {file}; echo done",
            file = quoted(&pids)
        );
        let started = Instant::now();
        let check = run_command(&command).await;
        assert!(started.elapsed() < OUTPUT_GRACE, "{:?}", started.elapsed());
        assert_eq!((check.status, check.output.as_str()), (0, "done\n"));
        for pid in read_pids(&pids) {
            wait_until(&format!("process {pid} to die"), || is_dead(pid)).await;
        }
    }

    #[tokio::test]
    async fn output_is_cut_to_max_output_size_on_a_char_boundary() {
        let mut cut = config("cut", "printf 0123456789abcdef");
        cut.max_output_size = 10;
        let check = run(&executor(1), &request(cut)).await;
        assert_eq!(check.output, "0123456789");
        let labels = &check.metadata.unwrap().labels;
        assert_eq!(
            labels.get(LABEL_OUTPUT_TRUNCATED).map(String::as_str),
            Some("6")
        );

        // "é" is two bytes; cutting at 5 would split it.
        let mut split = config("split", "printf 'aaaa\\303\\251zz'");
        split.max_output_size = 5;
        let check = run(&executor(1), &request(split)).await;
        assert_eq!(check.output, "aaaa");

        let mut fits = config("fits", "printf 0123456789");
        fits.max_output_size = 10;
        let check = run(&executor(1), &request(fits)).await;
        assert_eq!(check.output, "0123456789");
        assert!(check.metadata.unwrap().labels.is_empty());

        let check = run_command("head -c 3000000 /dev/zero | tr '\\0' a; exit 2").await;
        assert_eq!(check.status, 2);
        assert_eq!(check.output.len(), DEFAULT_MAX_OUTPUT);
        assert!(check.output.bytes().all(|byte| byte == b'a'));
    }

    fn secret(name: &str, value: &str) -> SecretValue {
        SecretValue {
            name: name.to_owned(),
            value: value.to_owned(),
        }
    }

    #[tokio::test]
    async fn secrets_reach_the_environment_and_are_redacted_from_output() {
        let mut with_secret = request(config(
            "secretive",
            "echo \"token=$SECRET_X\"; echo \"$SECRET_X\" >&2; echo \"${#SECRET_X}\"",
        ));
        with_secret.secrets = vec![secret("SECRET_X", "hunter2-value"), secret("EMPTY", "")];
        let check = run(&executor(1), &with_secret).await;
        assert_eq!(check.output, "token=*****\n*****\n13\n");

        // Not in argv: the shell's command line shows no secret.
        let mut argv = request(config("argv", "cat /proc/$$/cmdline | tr '\\0' ' '"));
        argv.secrets = vec![secret("SECRET_X", "hunter2-value")];
        let check = run(&executor(1), &argv).await;
        assert!(check.output.starts_with("sh -c cat"), "{}", check.output);
        assert!(!check.output.contains(REDACTED), "{}", check.output);

        // A secret across the cut is replaced whole, leaving no prefix of it.
        let mut across = request(config("across", "printf 'abcs3cr3tvalue-tail'"));
        across.config.max_output_size = 8;
        across.secrets = vec![secret("S", "s3cr3tvalue")];
        let check = run(&executor(1), &across).await;
        assert_eq!(check.output, "abc*****");

        // Secrets never go into the stdin JSON.
        let mut stdin = request(config("stdin-secret", "cat"));
        stdin.config.stdin = true;
        stdin.secrets = vec![secret("SECRET_X", "hunter2-value")];
        let check = run(&executor(1), &stdin).await;
        assert!(!check.output.contains(REDACTED), "{}", check.output);
    }

    #[tokio::test]
    async fn stdin_gets_the_entity_and_check_json_only_when_asked() {
        let mut with_stdin = config("reader", "cat");
        with_stdin.stdin = true;
        with_stdin.secrets = vec![cairn_api::model::SecretRef {
            name: "TOKEN".to_owned(),
            secret: "token".to_owned(),
        }];
        let check = run(&executor(1), &request(with_stdin)).await;
        assert_eq!(check.status, 0);
        let json: serde_json::Value = serde_json::from_str(&check.output).expect(&check.output);
        assert_eq!(json["entity"]["metadata"]["name"], "host-1");
        assert_eq!(json["check"]["metadata"]["name"], "reader");
        assert_eq!(json["check"]["command"], "cat");
        assert_eq!(json["check"]["stdin"], true);
        // Sensu's full form: the secret references are cleared, unset lists are null.
        assert_eq!(json["check"]["secrets"], serde_json::Value::Null, "{json}");
        assert_eq!(json["check"]["env_vars"], serde_json::Value::Null, "{json}");
        assert_eq!(
            json["check"]["runtime_assets"],
            serde_json::Value::Null,
            "{json}"
        );
        assert!(json["entity"]["system"].is_object(), "{json}");

        let check = run_command("cat; echo end").await;
        assert_eq!(check.output, "end\n", "stdin is /dev/null");
    }

    #[tokio::test]
    async fn env_vars_are_set_and_a_malformed_one_fails_the_check() {
        let mut good = config("env", "echo \"$GREETING\"; echo \"${PATH:+inherited}\"");
        good.env_vars = vec!["GREETING=hello=world".to_owned()];
        let check = run(&executor(1), &request(good)).await;
        assert_eq!(check.output, "hello=world\ninherited\n");

        let mut bad = config("env", "echo ran");
        bad.env_vars = vec!["GOOD=1".to_owned(), "NOT_AN_ASSIGNMENT".to_owned()];
        let check = run(&executor(1), &request(bad)).await;
        assert_eq!(check.status, 3);
        assert!(
            check.output.contains("\"NOT_AN_ASSIGNMENT\""),
            "{}",
            check.output
        );
        assert!(!check.output.contains("ran"));
    }

    #[tokio::test]
    async fn hooks_run_for_the_statuses_they_name() {
        let hooks = vec![
            hook("on-ok", "echo ok-hook"),
            hook("on-warning", "echo warning-hook"),
            hook("on-critical", "echo critical-hook; exit 1"),
            hook("on-fail", "echo fail-hook"),
            hook("on-unknown", "echo unknown-hook ${HOOK_TOKEN:-unset}"),
            hook("on-127", "echo not-found-hook"),
            HookConfig {
                stdin: true,
                ..hook("reads-event", "cat")
            },
            hook(
                "leaky",
                "echo hunter2-value; test \"$HOOK_TOKEN\" = hook-secret-9 && echo \"saw $HOOK_TOKEN\"",
            ),
        ];
        let check_hooks: Vec<BTreeMap<String, Vec<String>>> = vec![
            BTreeMap::from([("0".to_owned(), vec!["on-ok".to_owned()])]),
            BTreeMap::from([("warning".to_owned(), vec!["on-warning".to_owned()])]),
            BTreeMap::from([(
                "critical".to_owned(),
                vec![
                    "on-critical".to_owned(),
                    "reads-event".to_owned(),
                    "missing".to_owned(),
                ],
            )]),
            BTreeMap::from([("non-zero".to_owned(), vec!["on-fail".to_owned()])]),
            // Selected twice for status 2; runs once.
            BTreeMap::from([("2".to_owned(), vec!["on-critical".to_owned()])]),
            BTreeMap::from([(
                "unknown".to_owned(),
                vec!["on-unknown".to_owned(), "leaky".to_owned()],
            )]),
            BTreeMap::from([("127".to_owned(), vec!["on-127".to_owned()])]),
        ];
        let run_with = |command: &str| {
            let mut config = config("hooked", command);
            config.check_hooks = check_hooks.clone();
            let mut request = request(config);
            request.hooks = hooks.clone();
            request.secrets = vec![secret("SECRET_X", "hunter2-value")];
            request.hook_secrets = BTreeMap::from([(
                "leaky".to_owned(),
                vec![secret("HOOK_TOKEN", "hook-secret-9")],
            )]);
            request
        };
        let executor = executor(1);

        let check = run(&executor, &run_with("exit 0")).await;
        assert_eq!(hook_names(&check), ["on-ok"]);
        let result = &check.hooks[0];
        assert_eq!(result["output"], "ok-hook\n");
        assert_eq!(result["status"], 0);
        assert_eq!(result["command"], "echo ok-hook");
        assert_eq!(result["issued"], 1_700_000_000);
        assert!(result["executed"].as_i64().unwrap() > 0);
        assert!(result["duration"].as_f64().unwrap() >= 0.0);

        let check = run(&executor, &run_with("exit 1")).await;
        assert_eq!(hook_names(&check), ["on-warning", "on-fail"]);

        let check = run(&executor, &run_with("exit 2")).await;
        assert_eq!(
            hook_names(&check),
            ["on-critical", "reads-event", "missing", "on-fail"]
        );
        assert_eq!(check.hooks[0]["output"], "critical-hook\n");
        assert_eq!(check.hooks[0]["status"], 1);
        let event: serde_json::Value =
            serde_json::from_str(check.hooks[1]["output"].as_str().unwrap()).unwrap();
        assert_eq!(event["check"]["status"], 2);
        assert_eq!(event["entity"]["metadata"]["name"], "host-1");
        assert_eq!(check.hooks[2]["status"], 3);
        assert_eq!(
            check.hooks[2]["output"],
            "hook missing was not sent with the check request"
        );

        let check = run(&executor, &run_with("exit 127")).await;
        assert_eq!(check.status, 3);
        assert_eq!(
            hook_names(&check),
            ["on-fail", "on-unknown", "leaky", "on-127"]
        );
        assert_eq!(
            check.hooks[2]["output"], "*****\nsaw *****\n",
            "a hook gets its own secrets, and its output is redacted"
        );
        assert_eq!(
            check.hooks[1]["output"], "unknown-hook unset\n",
            "a hook does not get another hook's secrets"
        );

        let mut timed_out = run_with("sleep 30");
        timed_out.config.timeout = 1;
        let check = run(&executor, &timed_out).await;
        assert_eq!(check.status, 2);
        assert_eq!(
            hook_names(&check),
            ["on-critical", "reads-event", "missing", "on-fail"]
        );
    }

    #[test]
    fn hook_selectors() {
        assert!(hook_selected("ok", 0, Some(0)));
        assert!(hook_selected("0", 0, Some(0)));
        assert!(!hook_selected("non-zero", 0, Some(0)));
        assert!(hook_selected("CRITICAL", 2, None));
        assert!(hook_selected("unknown", 3, None));
        assert!(hook_selected("unknown", 3, Some(42)));
        assert!(hook_selected("42", 3, Some(42)));
        assert!(!hook_selected("3", 3, Some(42)));
        assert!(!hook_selected("bogus", 3, Some(42)));
    }

    /// A command that marks itself started, then waits for `release` (or its timeout).
    fn blocking_command(dir: &Path, name: &str) -> String {
        format!(
            "touch {started}; while [ ! -e {release} ]; do sleep 0.02; done; echo {name}",
            started = quoted(&dir.join(format!("started-{name}"))),
            release = quoted(&dir.join("release")),
        )
    }

    fn started(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|entry| Some(entry.ok()?.path()))
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("started-"))
            })
            .collect()
    }

    #[tokio::test]
    async fn at_most_max_concurrency_checks_run_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let executor = executor(2);
        let mut tasks = Vec::new();
        for idx in 0..3 {
            let executor = executor.clone();
            let mut config = config(
                &format!("c{idx}"),
                &blocking_command(dir.path(), &idx.to_string()),
            );
            config.timeout = 15;
            tasks.push(tokio::spawn(async move {
                executor.run(&request(config), &entity()).await
            }));
        }
        wait_until("two checks to start", || started(dir.path()).len() == 2).await;
        // The third must not start while both slots are taken.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(started(dir.path()).len(), 2, "{:?}", started(dir.path()));
        std::fs::write(dir.path().join("release"), "").unwrap();
        for task in tasks {
            let event = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the check finishes")
                .unwrap();
            let check = event.check.unwrap();
            assert_eq!(check.status, 0, "{}", check.output);
        }
        assert_eq!(started(dir.path()).len(), 3);
    }

    #[tokio::test]
    async fn the_same_check_does_not_run_twice_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let executor = executor(4);
        let mut config = config("single", &blocking_command(dir.path(), "first"));
        config.timeout = 15;
        let first = {
            let executor = executor.clone();
            let config = config.clone();
            tokio::spawn(async move { executor.run(&request(config), &entity()).await })
        };
        wait_until("the first run to start", || started(dir.path()).len() == 1).await;

        let check = run(&executor, &request(config.clone())).await;
        assert_eq!(check.status, 3);
        assert_eq!(
            check.output,
            "check single is still running; this request was not run"
        );

        // Another entity (a proxy check) is another check.
        let mut proxy = entity();
        proxy.metadata = Some(ObjectMeta::named("default", "proxy-1"));
        let mut other = config.clone();
        other.command = "echo proxy".to_owned();
        let event = executor.run(&request(other), &proxy).await;
        assert_eq!(event.check.unwrap().output, "proxy\n");

        std::fs::write(dir.path().join("release"), "").unwrap();
        let event = tokio::time::timeout(Duration::from_secs(30), first)
            .await
            .expect("the first run finishes")
            .unwrap();
        assert_eq!(event.check.unwrap().output, "first\n");

        // Once done, the check runs again.
        let check = run(&executor, &request(config)).await;
        assert_eq!((check.status, check.output.as_str()), (0, "first\n"));
    }

    #[tokio::test]
    async fn dropping_a_run_kills_its_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let command = format!(
            "echo $$ > {file}; sleep 100 & echo $! >> {file}; wait",
            file = quoted(&pids)
        );
        let executor = executor(1);
        let request = request(config("dropped", &command));
        let entity = entity();
        let mut run = Box::pin(executor.run(&request, &entity));
        let waited = tokio::time::timeout(Duration::from_millis(500), &mut run).await;
        assert!(waited.is_err(), "the check is still running");
        wait_until("both pids", || read_pids(&pids).len() == 2).await;
        drop(run);
        for pid in read_pids(&pids) {
            wait_until(&format!("process {pid} to die"), || is_dead(pid)).await;
        }
    }

    #[tokio::test]
    async fn metrics_thresholds_hooks_and_discarded_output() {
        let mut metered = config("metered", "printf 'disk.used 91 1700000000\\n'");
        metered.output_metric_format = "graphite_plaintext".to_owned();
        metered.output_metric_handlers = vec!["influx".to_owned()];
        metered.output_metric_tags = vec![cairn_api::model::MetricTag {
            name: "host".to_owned(),
            value: "{{ .name }}".to_owned(),
        }];
        metered.output_metric_thresholds = vec![cairn_api::model::MetricThreshold {
            name: "disk.used".to_owned(),
            thresholds: vec![cairn_api::model::MetricThresholdRule {
                max: Some(serde_json::json!("90")),
                status: 2,
                ..Default::default()
            }],
            ..Default::default()
        }];
        metered.check_hooks = vec![BTreeMap::from([(
            "critical".to_owned(),
            vec!["on-critical".to_owned()],
        )])];
        metered.discard_output = true;
        let mut metered_request = request(metered);
        metered_request.hooks = vec![HookConfig {
            stdin: true,
            ..hook("on-critical", "cat")
        }];
        let event = executor(1).run(&metered_request, &entity()).await;
        let check = event.check.as_ref().unwrap();
        assert_eq!(check.status, 2, "the threshold raised the status");
        assert_eq!(check.output, "", "discarded after extraction");
        assert_eq!(check.output_metric_tags[0].value, "host-1");
        assert_eq!(
            event.metrics,
            Some(serde_json::json!({
                "handlers": ["influx"],
                "points": [{"name": "disk.used", "value": 91, "timestamp": 1_700_000_000_i64,
                            "tags": [{"name": "host", "value": "host-1"}]}],
            }))
        );
        let annotations = &event.metadata.as_ref().unwrap().annotations;
        assert_eq!(
            annotations["sensu.io/notifications/critical"],
            "The value of disk.used exceeded the configured threshold (max: 90, actual: 91)."
        );
        assert_eq!(
            hook_names(check),
            ["on-critical"],
            "hooks run for the new status"
        );
        let seen: serde_json::Value =
            serde_json::from_str(check.hooks[0]["output"].as_str().unwrap()).unwrap();
        assert_eq!(
            seen["check"]["output"], "disk.used 91 1700000000\n",
            "hooks see the output"
        );

        let mut unmatched = config("tokens", "echo ran");
        unmatched.output_metric_format = "graphite_plaintext".to_owned();
        unmatched.output_metric_tags = vec![cairn_api::model::MetricTag {
            name: "region".to_owned(),
            value: "{{ .labels.region }}".to_owned(),
        }];
        let check = run(&executor(1), &request(unmatched)).await;
        assert_eq!(check.status, 3);
        assert!(check.output.starts_with("error while substituting check tokens: output_metric_tags[0].value: unmatched token"), "{}", check.output);
    }

    #[tokio::test]
    async fn tokens_in_commands_and_hooks_are_substituted_or_fail_the_run() {
        let mut labelled = entity();
        labelled
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .insert("disk".to_owned(), "/var".to_owned());
        let run_for = |request: CheckRequest, entity: Entity| async move {
            executor(1).run(&request, &entity).await.check.unwrap()
        };
        let mut configured = config(
            "tokens",
            "echo {{ .name }} {{ .labels.disk }} {{ .labels.missing | default \"none\" }}; exit 2",
        );
        configured.check_hooks = vec![BTreeMap::from([(
            "critical".to_owned(),
            vec!["where".to_owned(), "broken".to_owned()],
        )])];
        let mut with_hooks = request(configured);
        with_hooks.hooks = vec![
            hook("where", "echo hook on {{ .name }}"),
            hook("broken", "echo {{ .labels.nope }}"),
        ];
        let check = run_for(with_hooks, labelled.clone()).await;
        assert_eq!(check.output, "host-1 /var none\n");
        assert_eq!(
            check.command, "echo host-1 /var none; exit 2",
            "the event carries the command as run"
        );
        let outputs: Vec<&str> = check
            .hooks
            .iter()
            .map(|hook| hook["output"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(outputs[0], "hook on host-1\n");
        assert!(
            outputs[1]
                .starts_with("error while substituting hook tokens: command: unmatched token"),
            "{outputs:?}"
        );

        // An unmatched token without a default: not run, status 3, naming the token.
        let marker = tempfile::tempdir().unwrap();
        let ran = marker.path().join("ran");
        let unmatched = config(
            "unmatched",
            &format!("touch '{}' {{{{ .labels.rack }}}}", ran.display()),
        );
        let check = run_for(request(unmatched), labelled).await;
        assert_eq!(check.status, 3);
        assert!(
            check.output.starts_with(
                "error while substituting check tokens: command: unmatched token: .labels.rack"
            ),
            "{}",
            check.output
        );
        assert!(!ran.exists(), "the command did not run");
    }

    #[test]
    fn redaction_prefers_the_longest_secret() {
        let redactor = Redactor::of_secrets(&[secret("A", "abc"), secret("B", "abcdef")]);
        assert_eq!(redactor.redact_str("xabcdefyabc"), "x*****y*****");
        assert_eq!(Redactor::of_secrets(&[]).redact_str("plain"), "plain");
    }
}
