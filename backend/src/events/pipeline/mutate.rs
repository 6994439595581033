//! Mutators: what a handler receives instead of the event's JSON.
//!
//! As in sensu-go (`backend/pipeline/mutator/`): the built-ins `json` (the default: the event
//! in Sensu's full JSON form) and `only_check_output` (`check.output` as is) are picked by name
//! before any stored `Mutator`; a stored one is a `pipe` mutator (a command that reads the
//! event's JSON on stdin and whose stdout is what the handler gets) or a `javascript` one (its
//! `eval` is a function body run by the sandboxed engine of [`cairn_api::js`]; a string it
//! returns is sent as is, anything else as JSON). A mutator that fails (missing, exits non-zero,
//! times out, throws, writes more than [`MAX_MUTATED_BYTES`]) stops its workflow: the handler is
//! not run, the failure is logged and counted, never the event's contents.
//!
//! A `pipe` mutator is contained exactly as a `pipe` handler ([`super::contain`]): the same
//! minimal environment (`HANDLER_PATH`, its `env_vars`, then its `secrets`), the same
//! Landlock rules keeping it from the backend's data directory and keys, its own process group
//! killed at the timeout and after it exits.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::agent::SecretValue;
use cairn_api::model::{Entity, Event, Mutator, Wire};
use cairn_api::process::{self, Ended, RunConfig, Streams};
use cairn_api::redact::Redactor;
use tracing::debug;

use super::contain::ContainError;
use super::{pipe_environment, Dispatcher, OUTPUT_DRAIN_TIMEOUT, OUTPUT_LOG_LIMIT};

/// Built-in mutator: the event as JSON (what a handler with no mutator gets).
pub(crate) const MUTATOR_JSON: &str = "json";
/// Built-in mutator: only `check.output`.
pub(crate) const MUTATOR_ONLY_CHECK_OUTPUT: &str = "only_check_output";

/// The most a mutator may hand to its handler: 16 MiB. More is an error (the handler is not
/// run), so a runaway mutator cannot hold the backend's memory; Sensu's own event limit is
/// far below it.
pub(crate) const MAX_MUTATED_BYTES: usize = 16 * 1024 * 1024;

/// What a workflow's handler gets, decided when its filters passed.
pub(super) enum Payload {
    /// Bytes ready now: a built-in mutator's output.
    Ready(Arc<[u8]>),
    /// A stored mutator still to run, in the handler's task (it may take up to its timeout, so
    /// it does not hold up the dispatcher). The event's JSON is its input.
    Mutate {
        name: String,
        mutator: Box<Mutator>,
        event_json: Arc<[u8]>,
        /// The event's entity, which the mutator's asset builds are chosen for.
        entity: Arc<Entity>,
    },
}

/// Why a mutator failed; never carries the event or its output.
#[derive(Debug, thiserror::Error)]
pub(super) enum MutateError {
    #[error("mutator does not exist")]
    Missing,
    #[error("unknown mutator type {0:?}")]
    UnknownType(String),
    #[error("its secrets could not be resolved: {0}")]
    Secrets(String),
    #[error("refused")]
    Refused(#[source] ContainError),
    #[error("{0}")]
    Assets(String),
    #[error("failed to start sh")]
    Spawn(#[source] std::io::Error),
    #[error("failed to wait for the mutator process")]
    Wait(#[source] std::io::Error),
    #[error("exited with {0}")]
    Exit(std::process::ExitStatus),
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    #[error("wrote more than {MAX_MUTATED_BYTES} bytes")]
    TooLarge,
    #[error("javascript: {0}")]
    Js(String),
}

/// The event in Sensu's full JSON form, as handlers and mutators read it (`.check.handlers`
/// even when empty).
pub(super) fn event_json(event: &Event) -> Arc<[u8]> {
    // Serialising the model cannot fail: it has string keys and no fallible `Serialize` impls.
    serde_json::to_vec(&Wire(event))
        .expect("an event always serialises to JSON")
        .into()
}

// === impl Dispatcher ===

impl Dispatcher {
    /// What the handler gets through the mutator `name` (empty: `json`): the built-ins at once,
    /// a stored mutator as [`Payload::Mutate`] to run later.
    ///
    /// # Errors
    /// [`MutateError::Missing`] when no such mutator exists.
    pub(super) async fn plan_payload(
        &self,
        namespace: &str,
        name: &str,
        event: &Event,
        entity: &Arc<Entity>,
        json: &mut Option<Arc<[u8]>>,
    ) -> Result<Payload, MutateError> {
        match name {
            "" | MUTATOR_JSON => Ok(Payload::Ready(Arc::clone(
                json.get_or_insert_with(|| event_json(event)),
            ))),
            MUTATOR_ONLY_CHECK_OUTPUT => {
                let output = event.check.as_ref().map_or("", |check| &check.output);
                Ok(Payload::Ready(Arc::from(output.as_bytes())))
            }
            _ => {
                let mutator = self
                    .resolver
                    .mutator(namespace, name)
                    .await
                    .ok_or(MutateError::Missing)?;
                Ok(Payload::Mutate {
                    name: name.to_owned(),
                    mutator: Box::new(mutator),
                    event_json: Arc::clone(json.get_or_insert_with(|| event_json(event))),
                    entity: Arc::clone(entity),
                })
            }
        }
    }

    /// Runs a stored mutator on the event's JSON and returns what it made.
    pub(super) async fn mutate(
        &self,
        namespace: &str,
        mutator: &Mutator,
        entity: &Entity,
        event_json: Arc<[u8]>,
    ) -> Result<Arc<[u8]>, MutateError> {
        self.stats.mutator_runs.fetch_add(1, Ordering::Relaxed);
        let limit = match u64::try_from(mutator.timeout) {
            Ok(seconds) if seconds > 0 => Duration::from_secs(seconds),
            _ => self.default_timeout,
        };
        match mutator.mutator_type.as_str() {
            "" | "pipe" => {
                if self.containment.refuses_handlers() {
                    return Err(MutateError::Refused(ContainError::RootRefused));
                }
                let secrets = if mutator.secrets.is_empty() {
                    Vec::new()
                } else {
                    self.resolver
                        .secrets(namespace, &mutator.secrets)
                        .await
                        .map_err(MutateError::Secrets)?
                };
                // Leased until the run is over, so the cache cannot evict the builds it uses.
                let prepared = self
                    .prepare_assets(namespace, &mutator.runtime_assets, entity)
                    .await
                    .map_err(MutateError::Assets)?;
                self.mutate_pipe(mutator, &secrets, &prepared.env, event_json, limit)
                    .await
            }
            "javascript" => {
                let run =
                    self.js
                        .mutate(mutator.eval.clone(), mutator.env_vars.clone(), event_json);
                // The engine has its own limit per evaluation; this bounds the wait for a
                // worker too.
                match tokio::time::timeout(limit, run).await {
                    Ok(Ok(bytes)) if bytes.len() > MAX_MUTATED_BYTES => Err(MutateError::TooLarge),
                    Ok(Ok(bytes)) => Ok(bytes.into()),
                    Ok(Err(error)) => Err(MutateError::Js(super::filter::loggable(&error))),
                    Err(_elapsed) => Err(MutateError::TimedOut(limit)),
                }
            }
            other => Err(MutateError::UnknownType(other.to_owned())),
        }
    }

    /// `sh -c <command>`, contained as a `pipe` handler, with the event's JSON on stdin; its
    /// stdout, whole and unredacted, is the result. Its stderr is logged at debug with the
    /// secret values redacted.
    async fn mutate_pipe(
        &self,
        mutator: &Mutator,
        secrets: &[SecretValue],
        assets_env: &[(String, String)],
        event_json: Arc<[u8]>,
        limit: Duration,
    ) -> Result<Arc<[u8]>, MutateError> {
        let command = self
            .containment
            .command(
                &mutator.command,
                pipe_environment(&mutator.env_vars, secrets, assets_env),
            )
            .map_err(MutateError::Refused)?;
        let config = RunConfig {
            stdin: Some(event_json),
            timeout: Some(limit),
            // One byte past the limit tells an output that is too large from one that fits.
            max_output: MAX_MUTATED_BYTES + 1,
            streams: Streams::Separate,
            grace: OUTPUT_DRAIN_TIMEOUT,
            // The output is data for the handler: a secret the mutator puts in it on purpose
            // must reach the handler as it is. Only the logged stderr is redacted, below.
            redactor: None,
        };
        let finished = process::run(command, &config).await.map_err(|error| {
            let (process::RunError::PipeFailed(source) | process::RunError::SpawnFailed(source)) =
                error;
            MutateError::Spawn(source)
        })?;
        if let Some(stderr) = finished.stderr.as_ref().filter(|err| !err.text.is_empty()) {
            let redactor = Redactor::of_secrets(secrets);
            let (text, _) = redactor.redact_cut(stderr.text.as_bytes(), OUTPUT_LOG_LIMIT);
            debug!(stderr = %String::from_utf8_lossy(&text), "mutator stderr");
        }
        match finished.ended {
            Ended::Exited { status, .. } if status.success() => {
                let output = finished.output;
                if output.truncated_bytes > 0 || output.text.len() > MAX_MUTATED_BYTES {
                    return Err(MutateError::TooLarge);
                }
                Ok(Arc::from(output.text.into_bytes()))
            }
            Ended::Exited { status, .. } => Err(MutateError::Exit(status)),
            Ended::TimedOut => Err(MutateError::TimedOut(limit)),
            Ended::WaitFailed(error) => Err(MutateError::Wait(error)),
        }
    }
}
