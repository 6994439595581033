//! Dry runs (`cairnctl event test`, beyond Sensu): what the pipeline would do with an event,
//! without running a handler. Every workflow the event would take is listed with the verdict
//! of each of its filters (all of them, not only up to the first that drops it), the mutator
//! and, when the filters pass, the bytes the handler would get: the mutator does run (a pipe
//! mutator as its contained process), since its output is the point. Nothing is stored, no
//! handler runs, no silence is deleted.

use cairn_api::model::{Event, ResourceReference};
use serde::Serialize;

use super::mutate::{Payload, MUTATOR_JSON};
use super::workflow::Workflow;
use super::{EventContext, Pipeline};

/// The most of a mutated output a report carries: 1 MiB; the rest is counted, not shown.
pub(crate) const MAX_SHOWN_OUTPUT: usize = 1024 * 1024;

/// What to try the event against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// The handlers and pipelines the event names itself.
    Named,
    /// One handler, as if the event named only it (its filters and mutator apply).
    Handler(String),
    /// One `core/v2 Pipeline`, as if the event named only it.
    Pipeline(String),
}

/// One workflow's verdict.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct WorkflowReport {
    /// The pipeline and workflow, or none for the event's own handlers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// The workflow's name within its pipeline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// The handler.
    pub handler: String,
    /// Its type (`pipe`, `tcp`, `udp`).
    pub handler_type: String,
    /// Each filter in order, with whether the event passes it.
    pub filters: Vec<FilterReport>,
    /// Whether every filter passes: the handler would run.
    pub passes: bool,
    /// The mutator (`json` when none is named).
    pub mutator: String,
    /// What the handler would get (cut to [`MAX_SHOWN_OUTPUT`] bytes, invalid UTF-8 replaced);
    /// only when `passes` and the mutator succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Bytes of the output not shown.
    #[serde(skip_serializing_if = "is_zero")]
    pub output_cut: usize,
    /// Why the mutator failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One filter's verdict.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct FilterReport {
    /// The filter.
    pub name: String,
    /// Whether the event passes it.
    pub passed: bool,
}

fn is_zero(value: &usize) -> bool {
    *value == 0
}

// === impl Pipeline ===

impl Pipeline {
    /// Tries `event` (already processed as ingestion would) against `target` in `namespace`.
    pub(crate) async fn dry_run(
        &self,
        namespace: &str,
        mut event: Event,
        target: &Target,
    ) -> Vec<WorkflowReport> {
        // What the pipeline would see: the entity's `redact` applied, as `submit` does.
        cairn_api::redact::redact_event_entity(&mut event);
        if let Some(check) = event.check.as_mut() {
            match target {
                Target::Named => {}
                Target::Handler(name) => {
                    check.handlers = vec![name.clone()];
                    check.pipelines.clear();
                    event.pipelines.clear();
                    event.metrics = None;
                }
                Target::Pipeline(name) => {
                    check.handlers.clear();
                    check.pipelines.clear();
                    event.metrics = None;
                    event.pipelines = vec![ResourceReference {
                        name: name.clone(),
                        type_name: "Pipeline".to_owned(),
                        api_version: "core/v2".to_owned(),
                    }];
                }
            }
        }
        let dispatcher = &self.dispatcher;
        let mut context = EventContext::default();
        let entity = std::sync::Arc::new(event.entity.clone().unwrap_or_default());
        let mut reports = Vec::new();
        for workflow in dispatcher.workflows(namespace, &event).await {
            let Workflow {
                pipeline,
                filters,
                mutator,
                handler_name,
                handler,
            } = workflow;
            let mut verdicts = Vec::with_capacity(filters.len());
            for name in &filters {
                let passed = dispatcher
                    .passes_filter(namespace, name, &event, &mut context)
                    .await;
                verdicts.push(FilterReport {
                    name: name.clone(),
                    passed,
                });
            }
            let passes = verdicts.iter().all(|verdict| verdict.passed);
            let (pipeline, workflow) = pipeline.unzip();
            let mut report = WorkflowReport {
                pipeline,
                workflow,
                handler: handler_name,
                handler_type: handler.handler_type.clone(),
                filters: verdicts,
                passes,
                mutator: if mutator.is_empty() {
                    MUTATOR_JSON.to_owned()
                } else {
                    mutator.clone()
                },
                output: None,
                output_cut: 0,
                error: None,
            };
            if passes {
                let output = match dispatcher
                    .plan_payload(namespace, &mutator, &event, &entity, &mut context.json)
                    .await
                {
                    Ok(Payload::Ready(bytes)) => Ok(bytes),
                    Ok(Payload::Mutate {
                        mutator,
                        event_json,
                        entity,
                        ..
                    }) => dispatcher
                        .mutate(namespace, &mutator, &entity, event_json)
                        .await
                        .map_err(|error| super::ErrorChain(&error).to_string()),
                    Err(error) => Err(error.to_string()),
                };
                match output {
                    Ok(bytes) => {
                        let shown = bytes.len().min(MAX_SHOWN_OUTPUT);
                        report.output = Some(String::from_utf8_lossy(&bytes[..shown]).into_owned());
                        report.output_cut = bytes.len() - shown;
                    }
                    Err(error) => report.error = Some(error),
                }
            }
            reports.push(report);
        }
        reports
    }
}
