//! Workflows: the routes an event takes, each a list of filters, a mutator and a handler
//! (Sensu's `PipelineWorkflow`).
//!
//! As in sensu-go (`backend/pipeline/adapterv1.go`), an event's workflows are those of its
//! "legacy pipeline", one per handler its `check.handlers` and `metrics.handlers` name (sets
//! expanded, the handler's own `filters` and `mutator`), then those of every `core/v2 Pipeline`
//! the event or its check names in `pipelines`, in order. Unlike sensu-go, one workflow's
//! failure does not stop the next: each workflow runs on its own, as Sensu's docs describe.
//!
//! A reference Cairn cannot follow (a type other than `Pipeline`, `EventFilter`, `Mutator` or
//! `Handler` of `core/v2`, a missing pipeline or handler, a handler set) skips the workflow
//! and warns once; a workflow is never run with one of its filters left out.

use std::collections::HashSet;

use cairn_api::model::{Event, Handler, ResourceReference};
use tracing::warn;

use super::Dispatcher;

/// One route of an event.
pub(super) struct Workflow {
    /// The pipeline it belongs to (`None`: the event's handlers) and its name, for logs.
    pub(super) pipeline: Option<(String, String)>,
    /// Filter names: built-ins or stored `EventFilter`s.
    pub(super) filters: Vec<String>,
    /// Mutator name; empty for `json`.
    pub(super) mutator: String,
    /// The handler's name.
    pub(super) handler_name: String,
    /// The handler (never a set).
    pub(super) handler: Handler,
}

/// The `core/v2` group a reference with no `api_version` is in.
const CORE_V2: &str = "core/v2";

/// Whether `reference` is of `core/v2` and `type_name` (an empty type counting as it when
/// `type_optional`).
fn is_core(reference: &ResourceReference, type_name: &str, type_optional: bool) -> bool {
    let api = if reference.api_version.is_empty() {
        CORE_V2
    } else {
        &reference.api_version
    };
    let type_matches =
        reference.type_name == type_name || (type_optional && reference.type_name.is_empty());
    api == CORE_V2 && type_matches
}

/// The pipelines the event names, `pipelines` then `check.pipelines`, each once.
fn pipeline_references(event: &Event) -> Vec<&ResourceReference> {
    let mut seen = HashSet::new();
    event
        .pipelines
        .iter()
        .chain(event.check.iter().flat_map(|check| check.pipelines.iter()))
        .filter(|reference| {
            seen.insert((
                reference.name.as_str(),
                reference.type_name.as_str(),
                reference.api_version.as_str(),
            ))
        })
        .collect()
}

// === impl Dispatcher ===

impl Dispatcher {
    /// Every workflow of the event, in order (see the module doc).
    pub(super) async fn workflows(&self, namespace: &str, event: &Event) -> Vec<Workflow> {
        let names = super::handler_names(event);
        let mut workflows: Vec<Workflow> = self
            .expand(namespace, &names)
            .await
            .into_iter()
            .map(|(handler_name, handler)| Workflow {
                pipeline: None,
                filters: handler.filters.clone(),
                mutator: handler.mutator.clone(),
                handler_name,
                handler,
            })
            .collect();
        for reference in pipeline_references(event) {
            self.pipeline_workflows(namespace, reference, &mut workflows)
                .await;
        }
        workflows
    }

    async fn pipeline_workflows(
        &self,
        namespace: &str,
        reference: &ResourceReference,
        workflows: &mut Vec<Workflow>,
    ) {
        let name = reference.name.as_str();
        if !is_core(reference, "Pipeline", true) {
            if self.warned.first(&["pipeline-type", namespace, name]) {
                warn!(
                    namespace,
                    pipeline = name,
                    type_name = %reference.type_name,
                    api_version = %reference.api_version,
                    "event names a pipeline of a type Cairn does not run; it is skipped"
                );
            }
            return;
        }
        let Some(pipeline) = self.resolver.pipeline(namespace, name).await else {
            if self.warned.first(&["pipeline", namespace, name]) {
                warn!(
                    namespace,
                    pipeline = name,
                    "event names a pipeline that does not exist"
                );
            }
            return;
        };
        if pipeline.workflows.is_empty() && self.warned.first(&["no-workflows", namespace, name]) {
            warn!(namespace, pipeline = name, "pipeline has no workflows");
        }
        for workflow in &pipeline.workflows {
            let label = (name.to_owned(), workflow.name.clone());
            let skip = |what: &str, detail: &str| {
                if self
                    .warned
                    .first(&["workflow", namespace, name, &workflow.name, what])
                {
                    warn!(
                        namespace,
                        pipeline = name,
                        workflow = %workflow.name,
                        reason = what,
                        detail,
                        "pipeline workflow skipped"
                    );
                }
            };
            let mut filters = Vec::with_capacity(workflow.filters.len());
            let mut followable = true;
            for filter in &workflow.filters {
                if is_core(filter, "EventFilter", false) {
                    filters.push(filter.name.clone());
                } else {
                    skip("a filter is not a core/v2 EventFilter", &filter.name);
                    followable = false;
                }
            }
            let mutator = match &workflow.mutator {
                None => String::new(),
                Some(mutator) if is_core(mutator, "Mutator", false) => mutator.name.clone(),
                Some(mutator) => {
                    skip("its mutator is not a core/v2 Mutator", &mutator.name);
                    followable = false;
                    String::new()
                }
            };
            let Some(handler_ref) = workflow.handler.as_ref() else {
                skip("it has no handler", "");
                continue;
            };
            if !is_core(handler_ref, "Handler", false) {
                skip("its handler is not a core/v2 Handler", &handler_ref.name);
                continue;
            }
            if !followable {
                continue;
            }
            let Some(handler) = self.resolver.handler(namespace, &handler_ref.name).await else {
                skip("its handler does not exist", &handler_ref.name);
                continue;
            };
            if handler.handler_type == "set" {
                skip(
                    "its handler is a set (a workflow names one handler)",
                    &handler_ref.name,
                );
                continue;
            }
            workflows.push(Workflow {
                pipeline: Some(label),
                filters,
                mutator,
                handler_name: handler_ref.name.clone(),
                handler,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(name: &str, type_name: &str, api_version: &str) -> ResourceReference {
        ResourceReference {
            name: name.into(),
            type_name: type_name.into(),
            api_version: api_version.into(),
        }
    }

    #[test]
    fn core_references_default_their_group_and_optionally_their_type() {
        assert!(is_core(&reference("p", "Pipeline", ""), "Pipeline", false));
        assert!(is_core(&reference("p", "", "core/v2"), "Pipeline", true));
        assert!(!is_core(&reference("p", "", ""), "Handler", false));
        assert!(!is_core(
            &reference("h", "TCPStreamHandler", "pipeline/v1"),
            "Handler",
            false
        ));
        assert!(!is_core(
            &reference("h", "Handler", "pipeline/v1"),
            "Handler",
            false
        ));
    }

    #[test]
    fn pipelines_of_the_event_and_its_check_are_taken_once_each() {
        let check = cairn_api::model::Check {
            pipelines: vec![
                reference("a", "Pipeline", "core/v2"),
                reference("b", "Pipeline", "core/v2"),
            ],
            ..Default::default()
        };
        let event = Event {
            pipelines: vec![reference("a", "Pipeline", "core/v2")],
            check: Some(check),
            ..Default::default()
        };
        let names: Vec<_> = pipeline_references(&event)
            .iter()
            .map(|reference| reference.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
    }
}
