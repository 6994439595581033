//! Stored filters (Sensu's `EventFilter`): their JavaScript expressions, evaluated by the
//! sandboxed engine of [`cairn_api::js`] against the event as Sensu's filters see it.
//!
//! Errors are handled as sensu-go's `backend/pipeline/filter/legacy.go` does: an expression
//! that fails (does not parse, throws, returns neither `true` nor `false`, passes a limit) is
//! logged and skipped (`continue`), so an `allow` filter whose every expression fails lets the
//! event through and such a `deny` filter drops it. (Sensu's docs say the filter "evaluates to
//! false"; its code is what runs.) Each failure counts in
//! [`PipelineStats::filter_errors`](super::PipelineStats::filter_errors).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cairn_api::js::JsError;
use cairn_api::model::Event;
use serde_json::{Map, Value as Json};
use tracing::warn;

use super::{Dispatcher, EventContext};
use crate::events::rules;

// === impl Dispatcher ===

impl Dispatcher {
    /// Evaluates a stored filter: `allow` passes when every expression matches, `deny` passes
    /// unless every expression matches, expressions that fail being skipped (see the module
    /// doc). A missing filter or an unknown action drops the event.
    pub(super) async fn stored_filter(
        &self,
        namespace: &str,
        filter_name: &str,
        event: &Event,
        context: &mut EventContext,
    ) -> bool {
        let Some(filter) = self.resolver.filter(namespace, filter_name).await else {
            if self.warned.first(&["filter", namespace, filter_name]) {
                warn!(
                    namespace,
                    filter = filter_name,
                    "handler names a filter that does not exist; events are dropped"
                );
            }
            return false;
        };
        let view = Arc::clone(context.view.get_or_insert_with(|| event_view(event)));
        // The `*.js` files of the filter's `runtime_assets`, loaded before its expressions as
        // Sensu loads them; a filter whose assets cannot be had fails as a whole.
        let entity = event.entity.clone().unwrap_or_default();
        let libraries = match self
            .filter_libraries(namespace, &filter.runtime_assets, &entity)
            .await
        {
            Ok(libraries) => libraries,
            Err(reason) => {
                self.stats.filter_errors.fetch_add(1, Ordering::Relaxed);
                warn!(
                    namespace,
                    filter = filter_name,
                    error = %reason,
                    "filter not evaluated: its runtime assets are not ready; the event is dropped"
                );
                return false;
            }
        };
        let (all_match, errors) = match self
            .js
            .filter(filter.expressions.clone(), libraries, view)
            .await
        {
            Ok(verdict) => (verdict.matched, verdict.errors),
            // No expression could run (queue full, bad JSON): each one failed, as in Sensu when
            // its VM cannot be set up.
            Err(error) => (
                true,
                (0..filter.expressions.len())
                    .map(|idx| (idx, error.clone()))
                    .collect(),
            ),
        };
        for (idx, error) in errors {
            self.stats.filter_errors.fetch_add(1, Ordering::Relaxed);
            let source = filter.expressions.get(idx).map_or("", String::as_str);
            if self
                .warned
                .first(&["expression", namespace, filter_name, source])
            {
                warn!(
                    namespace,
                    filter = filter_name,
                    expression = idx,
                    error = %loggable(&error),
                    "filter expression failed; it is skipped, as Sensu does"
                );
            }
        }
        match filter.action.as_str() {
            "allow" => all_match,
            "deny" => !all_match,
            action => {
                if self
                    .warned
                    .first(&["action", namespace, filter_name, action])
                {
                    warn!(
                        namespace,
                        filter = filter_name,
                        action,
                        "filter has an unknown action; events are dropped"
                    );
                }
                false
            }
        }
    }
}

/// The error as logged: what the engine said, but not a value the expression threw itself
/// (`throw event.check.output` would put event contents in the log).
pub(super) fn loggable(error: &JsError) -> String {
    const ENGINE_ERRORS: [&str; 5] = [
        "TypeError: ",
        "ReferenceError: ",
        "RangeError: ",
        "SyntaxError: ",
        "InternalError: ",
    ];
    match error {
        JsError::Exception(text) if !ENGINE_ERRORS.iter().any(|name| text.starts_with(name)) => {
            "the expression threw a value of its own".to_owned()
        }
        other => other.to_string(),
    }
}

/// The event as Sensu's filters see it (sensu-go's `dynamic.Synthesize`), as JSON: the
/// `metadata` fields `name`, `namespace`, `labels`, `annotations` and `created_by` lifted onto
/// the event, its entity and its check (Go embeds `ObjectMeta`); the zero values the wire form
/// omits put back (so `event.check.occurrences == 0` works); and the computed attributes
/// `has_check`, `has_metrics`, `is_incident`, `is_resolution` and `is_silenced`. Unlike Sensu,
/// `metadata` itself stays too, so `event.check.metadata.name` also works.
pub(super) fn event_view(event: &Event) -> Arc<[u8]> {
    let mut view = serde_json::to_value(event).unwrap_or(Json::Null);
    if let Some(object) = view.as_object_mut() {
        lift_metadata(object);
        fill(
            object,
            &[("timestamp", Json::from(0)), ("id", Json::from(""))],
        );
        let check = event.check.as_ref();
        let extras = [
            ("has_check", check.is_some()),
            ("has_metrics", rules::has_metrics(event)),
            ("is_incident", rules::is_incident(event)),
            ("is_resolution", rules::is_resolution(event)),
            (
                "is_silenced",
                check.is_some_and(|check| !check.silenced.is_empty()),
            ),
        ];
        for (key, value) in extras {
            object.insert(key.to_owned(), Json::from(value));
        }
        if let Some(entity) = object.get_mut("entity").and_then(Json::as_object_mut) {
            lift_metadata(entity);
            fill(entity, &[("last_seen", Json::from(0))]);
        }
        if let Some(check) = object.get_mut("check").and_then(Json::as_object_mut) {
            lift_metadata(check);
            fill(
                check,
                &[
                    ("issued", Json::from(0)),
                    ("executed", Json::from(0)),
                    ("occurrences", Json::from(0)),
                    ("occurrences_watermark", Json::from(0)),
                    ("last_ok", Json::from(0)),
                    ("total_state_change", Json::from(0)),
                    ("output", Json::from("")),
                    ("state", Json::from("")),
                    ("is_silenced", Json::from(false)),
                ],
            );
        }
    }
    // Serialising a JSON value cannot fail.
    serde_json::to_vec(&view)
        .expect("a JSON value always serialises")
        .into()
}

/// An entity as expressions over it see it (a proxy check's `entity_attributes`): its wire
/// form with `metadata` lifted as in [`event_view`], so `entity.entity_class == 'proxy'` and
/// `entity.labels.proxy_type == 'website'` work.
pub(crate) fn entity_view(entity: &cairn_api::model::Entity) -> Arc<[u8]> {
    let mut view = serde_json::to_value(cairn_api::model::Wire(entity)).unwrap_or(Json::Null);
    if let Some(object) = view.as_object_mut() {
        lift_metadata(object);
    }
    serde_json::to_vec(&view)
        .expect("a JSON value always serialises")
        .into()
}

fn lift_metadata(object: &mut Map<String, Json>) {
    let metadata = object
        .get("metadata")
        .and_then(Json::as_object)
        .cloned()
        .unwrap_or_default();
    for key in ["name", "namespace", "created_by"] {
        let value = metadata.get(key).cloned().unwrap_or_else(|| Json::from(""));
        object.entry(key).or_insert(value);
    }
    for key in ["labels", "annotations"] {
        let value = metadata
            .get(key)
            .cloned()
            .unwrap_or_else(|| Json::Object(Map::new()));
        object.entry(key).or_insert(value);
    }
}

fn fill(object: &mut Map<String, Json>, defaults: &[(&str, Json)]) {
    for (key, value) in defaults {
        object
            .entry(key.to_string())
            .or_insert_with(|| value.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cairn_api::js::{Engine, EngineConfig};
    use cairn_api::model::{Check, Entity};
    use cairn_api::ObjectMeta;

    use super::*;

    fn sample_event() -> Event {
        let labels = BTreeMap::from([("env".to_owned(), "prod".to_owned())]);
        Event {
            entity: Some(Entity {
                metadata: Some(ObjectMeta {
                    labels: labels.clone(),
                    ..ObjectMeta::named("default", "web-1")
                }),
                entity_class: "agent".to_owned(),
                subscriptions: vec!["linux".to_owned()],
                ..Entity::default()
            }),
            check: Some(Check {
                metadata: Some(ObjectMeta {
                    labels,
                    ..ObjectMeta::named("default", "check-http")
                }),
                status: 2,
                occurrences: 3,
                interval: 60,
                issued: 1_700_000_000,
                state: "failing".to_owned(),
                output: "CRITICAL: down".to_owned(),
                ..Check::default()
            }),
            ..Event::default()
        }
    }

    /// `Some(matched)`, or `None` when the expression fails.
    async fn check(engine: &Engine, source: &str, expect: Option<bool>) {
        let verdict = engine
            .filter(
                vec![source.to_owned()],
                Vec::new(),
                event_view(&sample_event()),
            )
            .await
            .unwrap();
        let actual = verdict.errors.is_empty().then_some(verdict.matched);
        assert_eq!(actual, expect, "{source}: {:?}", verdict.errors);
    }

    /// The cases of the evaluator this engine replaced, where JavaScript agrees with it.
    #[tokio::test]
    async fn the_event_view_in_javascript() {
        let engine = Engine::new(EngineConfig::default()).unwrap();
        let cases = [
            ("event.check.status == 2", Some(true)),
            ("event.check.status != 0", Some(true)),
            ("event.check.status === 2", Some(true)),
            ("event.check.status <= 1.5", Some(false)),
            ("event.check.status == '2'", Some(true)),
            ("event.check.status === '2'", Some(false)),
            ("event.check.occurrences_watermark == 0", Some(true)),
            ("event.check.issued > 1600000000", Some(true)),
            ("event.check.state == \"failing\"", Some(true)),
            ("event.check.name == 'check-http'", Some(true)),
            ("event.check.metadata.name == 'check-http'", Some(true)),
            ("event.entity.name == 'web-1'", Some(true)),
            ("event.entity.labels.env == 'prod'", Some(true)),
            ("event.check.labels['env'] == 'prod'", Some(true)),
            ("event.entity.labels.missing == undefined", Some(true)),
            ("event.entity.subscriptions[0] == 'linux'", Some(true)),
            ("event.entity.name < 'web-2'", Some(true)),
            ("event.timestamp == 0 && event.id == ''", Some(true)),
            ("!event.check.is_silenced", Some(true)),
            ("event.has_check && event.is_incident", Some(true)),
            ("event.is_resolution || event.has_metrics || event.is_silenced", Some(false)),
            (
                "(event.check.status == 1 || event.check.status == 2) && event.check.occurrences > 5",
                Some(false),
            ),
            (
                "event.check.occurrences % (180 / event.check.interval) == 0",
                Some(true),
            ),
            ("event.check.output.indexOf('CRITICAL') >= 0", Some(true)),
            ("hour(event.check.issued) == 22", Some(true)),
            // Errors now: JavaScript's answers, not the old evaluator's.
            ("event.check.status % 0 == 0", Some(false)),
            ("event.check.status == = 2", None),
            ("event.check.status", None),
            ("event.nothing.name == 'x'", None),
            ("(", None),
        ];
        for (source, expect) in cases {
            check(&engine, source, expect).await;
        }
    }

    #[test]
    fn thrown_values_are_not_logged() {
        assert_eq!(
            loggable(&JsError::Exception("secret output".to_owned())),
            "the expression threw a value of its own"
        );
        assert_eq!(
            loggable(&JsError::Exception(
                "TypeError: cannot read property 'name' of undefined".to_owned()
            )),
            "TypeError: cannot read property 'name' of undefined"
        );
    }
}
