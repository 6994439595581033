//! What the agent does with a check's metric fields, as Sensu's agent does it
//! (`agent/check_handler.go`): token substitution in the metric tags before the run, then
//! extraction of the points from the output ([`cairn_api::metrics`]) and the thresholds after it.

use std::collections::BTreeMap;

use cairn_api::metrics::{self, thresholds, Input, MetricPoint};
use cairn_api::model::{Check, Entity};
use cairn_api::tokens::{self, TokenError};
use serde_json::{Map, Value};
use tracing::warn;

/// The metrics of a check result and the event annotations the thresholds wrote.
#[derive(Debug, Default)]
pub(crate) struct Extracted {
    /// `event.metrics`: `None` when the check neither extracts metrics nor names metric handlers.
    pub(crate) metrics: Option<Value>,
    /// For the event's `metadata.annotations`.
    pub(crate) annotations: BTreeMap<String, String>,
}

/// Substitutes the tokens of the check's `command`, `output_metric_tags` and
/// `output_metric_thresholds` (names and tag names and values) with the entity's fields, as
/// Sensu substitutes the check configuration before the run; a token that does not match (and
/// has no `default`), or that would write a shell metacharacter into the command
/// ([`tokens::substitute_command`]), fails the check: status 3, not run.
///
/// # Errors
/// The output of the failed check: `error while substituting check tokens: <field>: <error>`.
pub(crate) fn substitute_tokens(check: &mut Check, entity: &Entity) -> Result<(), String> {
    let fail = |field: String, error: TokenError| {
        format!("error while substituting check tokens: {field}: {error}")
    };
    let data = tokens::has_tokens(&check.command).then(|| tokens::entity_data(entity));
    // On clones, so that a failure leaves the check as configured (as Sensu's does). The
    // command runs in a shell: its tokens may not write shell metacharacters.
    let mut command = check.command.clone();
    if let Some(data) = &data {
        command = tokens::substitute_command_value(&command, data)
            .map_err(|error| fail("command".to_owned(), error))?;
    }
    let mut data = data;
    let mut substitute = |text: &mut String, field: &dyn Fn() -> String| {
        if !tokens::has_tokens(text) {
            return Ok(());
        }
        let data = data.get_or_insert_with(|| tokens::entity_data(entity));
        *text = tokens::substitute_value(text, data).map_err(|error| fail(field(), error))?;
        Ok::<(), String>(())
    };
    let mut tags = check.output_metric_tags.clone();
    let mut thresholds = check.output_metric_thresholds.clone();
    for (idx, tag) in tags.iter_mut().enumerate() {
        substitute(&mut tag.name, &|| format!("output_metric_tags[{idx}].name"))?;
        substitute(&mut tag.value, &|| {
            format!("output_metric_tags[{idx}].value")
        })?;
    }
    for (idx, threshold) in thresholds.iter_mut().enumerate() {
        substitute(&mut threshold.name, &|| {
            format!("output_metric_thresholds[{idx}].name")
        })?;
        for (tag_idx, tag) in threshold.tags.iter_mut().enumerate() {
            substitute(&mut tag.name, &|| {
                format!("output_metric_thresholds[{idx}].tags[{tag_idx}].name")
            })?;
            substitute(&mut tag.value, &|| {
                format!("output_metric_thresholds[{idx}].tags[{tag_idx}].value")
            })?;
        }
    }
    check.command = command;
    check.output_metric_tags = tags;
    check.output_metric_thresholds = thresholds;
    Ok(())
}

/// A hook's command with the entity's tokens substituted, as Sensu substitutes hooks (values
/// holding shell metacharacters refused, as in check commands).
///
/// # Errors
/// The hook's output: `error while substituting hook tokens: command: <error>`.
pub(crate) fn substitute_hook_command(command: &str, entity: &Entity) -> Result<String, String> {
    tokens::substitute_command(command, entity)
        .map_err(|error| format!("error while substituting hook tokens: command: {error}"))
}

/// Extracts the points of the check's output and applies its thresholds (which may change
/// `check.status`); `now` is unix seconds.
///
/// As Sensu: `metrics` is set when `output_metric_format` or `output_metric_handlers` is;
/// `points` only with a format (an unknown one is logged and gives none; lines that give no
/// point are logged and skipped); thresholds only when the status is 0 and points were found.
pub(crate) fn extract(check: &mut Check, now: i64) -> Extracted {
    let format = check.output_metric_format.as_str();
    if format.is_empty() && check.output_metric_handlers.is_empty() {
        return Extracted::default();
    }
    let name = check
        .metadata
        .as_ref()
        .map_or("", |meta| meta.name.as_str())
        .to_owned();
    let points = if format.is_empty() {
        Vec::new()
    } else {
        points(&name, format, check, now)
    };
    let mut extracted = Extracted::default();
    if thresholds::applies(check.status, &points, &check.output_metric_thresholds) {
        let evaluation = thresholds::evaluate(&points, &check.output_metric_thresholds);
        check.status = evaluation.status;
        extracted.annotations = evaluation.annotations;
    }
    let mut metrics = Map::new();
    if !check.output_metric_handlers.is_empty() {
        metrics.insert(
            "handlers".to_owned(),
            Value::from(check.output_metric_handlers.clone()),
        );
    }
    if !points.is_empty() {
        let points = serde_json::to_value(points).unwrap_or(Value::Null);
        metrics.insert("points".to_owned(), points);
    }
    extracted.metrics = Some(Value::Object(metrics));
    extracted
}

fn points(check_name: &str, format: &str, check: &Check, now: i64) -> Vec<MetricPoint> {
    let input = Input {
        tags: &check.output_metric_tags,
        executed: check.executed,
        now,
    };
    match metrics::extract(format, &check.output, &input) {
        Ok(extraction) => {
            let skipped = extraction.problems.len() + extraction.more_problems;
            if let Some(first) = extraction.problems.first() {
                warn!(
                    check = check_name,
                    format,
                    skipped,
                    first = %first,
                    "parts of the check output gave no metric point"
                );
            }
            if extraction.dropped > 0 {
                warn!(
                    check = check_name,
                    dropped = extraction.dropped,
                    "the check output has more than {} metric points; the rest are dropped",
                    metrics::MAX_POINTS
                );
            }
            extraction.points
        }
        Err(error) => {
            warn!(check = check_name, %error, "unable to extract metrics");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use cairn_api::model::{MetricTag, MetricThreshold, MetricThresholdRule};
    use cairn_api::ObjectMeta;
    use serde_json::json;

    use super::*;

    fn tag(name: &str, value: &str) -> MetricTag {
        MetricTag {
            name: name.to_owned(),
            value: value.to_owned(),
        }
    }

    fn check(format: &str, output: &str) -> Check {
        Check {
            metadata: Some(ObjectMeta::named("default", "m")),
            output_metric_format: format.to_owned(),
            output: output.to_owned(),
            executed: 100,
            ..Check::default()
        }
    }

    #[test]
    fn metrics_only_when_asked() {
        let mut plain = check("", "a 1 2");
        assert!(extract(&mut plain, 5).metrics.is_none());

        let mut handlers_only = check("", "a 1 2");
        handlers_only.output_metric_handlers = vec!["h".into()];
        assert_eq!(
            extract(&mut handlers_only, 5).metrics,
            Some(json!({"handlers": ["h"]}))
        );

        let mut graphite = check("graphite_plaintext", "a 1 2\nbad");
        graphite.output_metric_tags = vec![tag("k", "v")];
        assert_eq!(
            extract(&mut graphite, 5).metrics,
            Some(
                json!({"points": [{"name": "a", "value": 1, "timestamp": 2, "tags": [{"name": "k", "value": "v"}]}]})
            )
        );

        let mut unknown = check("json", "{}");
        assert_eq!(extract(&mut unknown, 5).metrics, Some(json!({})));
    }

    #[test]
    fn thresholds_apply_only_to_status_zero() {
        let threshold = MetricThreshold {
            name: "a".into(),
            thresholds: vec![MetricThresholdRule {
                max: Some(json!("0.5")),
                status: 2,
                ..MetricThresholdRule::default()
            }],
            ..MetricThreshold::default()
        };
        let mut ok = check("graphite_plaintext", "a 1 2");
        ok.output_metric_thresholds = vec![threshold.clone()];
        let extracted = extract(&mut ok, 5);
        assert_eq!(ok.status, 2);
        assert!(extracted
            .annotations
            .contains_key("sensu.io/output_metric_thresholds/a/max/critical"));

        let mut warning = ok.clone();
        warning.status = 1;
        let extracted = extract(&mut warning, 5);
        assert_eq!(warning.status, 1);
        assert!(extracted.annotations.is_empty());
    }

    #[test]
    fn tokens_in_tags_are_substituted_or_fail_the_check() {
        let mut entity = Entity {
            metadata: Some(ObjectMeta::named("default", "web-01")),
            ..Entity::default()
        };
        let mut tagged = check("graphite_plaintext", "");
        tagged.output_metric_tags = vec![tag("host", "{{ .name }}")];
        substitute_tokens(&mut tagged, &entity).unwrap();
        assert_eq!(tagged.output_metric_tags, [tag("host", "web-01")]);

        let mut missing = check("graphite_plaintext", "");
        let configured = vec![
            tag("host", "{{ .name }}"),
            tag("region", "{{ .labels.region }}"),
        ];
        missing.output_metric_tags = configured.clone();
        assert_eq!(
            substitute_tokens(&mut missing, &entity),
            Err("error while substituting check tokens: output_metric_tags[1].value: unmatched token: .labels.region: map has no entry for key \"labels\"".to_owned())
        );
        assert_eq!(
            missing.output_metric_tags, configured,
            "unchanged on failure"
        );
        entity
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .insert("region".into(), "eu".into());
        substitute_tokens(&mut missing, &entity).unwrap();
        assert_eq!(
            missing.output_metric_tags,
            [tag("host", "web-01"), tag("region", "eu")]
        );
    }
}
