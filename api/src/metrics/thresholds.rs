//! `output_metric_thresholds` (Sensu 6.5+): limits on extracted points that set the check's
//! status, as Sensu's agent evaluates them (`evaluateOutputMetricThresholds` in
//! `agent/check_handler.go`).
//!
//! Only evaluated when the command's status is 0, at least one point was extracted and at least
//! one threshold is set ([`applies`]). For each threshold, each point with its name and all its
//! tags is compared with each rule: below `min` or above `max` raises the status to the rule's
//! `status` (a rule whose `min` is violated, or does not parse, is not checked against its `max`;
//! a bound that does not parse ends that rule). A threshold that matches no point raises the
//! status to its `null_status` when that is set. The result is the highest status reached.
//!
//! Every comparison is recorded as an event annotation
//! `sensu.io/output_metric_thresholds/<name>[.<tag value>…]/<min|max|null-status>/<ok|warning|critical|unknown>`
//! with a sentence like `The value of disk_rate exceeded the configured threshold (max: 50000.0,
//! actual: 99999).`, and one summary annotation `sensu.io/notifications/<status>`: the sentence
//! of the rule that set the final status, or (Sensu's quirk, kept) of the last rule found within
//! its bounds after it.

use std::collections::BTreeMap;

use serde_json::Value;

use super::MetricPoint;
use crate::model::{MetricThreshold, MetricThresholdRule};

/// The prefix of the per-comparison annotations.
pub const ANNOTATION_PREFIX: &str = "sensu.io/output_metric_thresholds/";

/// The prefix of the summary annotation.
pub const NOTIFICATION_PREFIX: &str = "sensu.io/notifications/";

/// What the thresholds decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evaluation {
    /// The check's new status.
    pub status: u32,
    /// Annotations to add to the event's metadata.
    pub annotations: BTreeMap<String, String>,
}

/// Whether Sensu evaluates thresholds for this result: status 0, some points, some thresholds.
pub fn applies(status: u32, points: &[MetricPoint], thresholds: &[MetricThreshold]) -> bool {
    status == 0 && !points.is_empty() && !thresholds.is_empty()
}

/// Evaluates `thresholds` against `points` (see the module documentation); call it when
/// [`applies`] holds.
pub fn evaluate(points: &[MetricPoint], thresholds: &[MetricThreshold]) -> Evaluation {
    let mut evaluation = Evaluation::default();
    let mut summary = String::new();
    for threshold in thresholds {
        let mut matched = false;
        for point in points.iter().filter(|point| matches(threshold, point)) {
            matched = true;
            for rule in &threshold.thresholds {
                let Some(stop) = check_bound(
                    threshold,
                    rule,
                    Bound::Min,
                    point,
                    &mut evaluation,
                    &mut summary,
                ) else {
                    continue;
                };
                if stop {
                    continue;
                }
                check_bound(
                    threshold,
                    rule,
                    Bound::Max,
                    point,
                    &mut evaluation,
                    &mut summary,
                );
            }
        }
        let null_status = threshold.null_status.unwrap_or(0);
        if !matched && null_status > 0 {
            let sentence = null_sentence(threshold, null_status);
            evaluation.annotations.insert(
                annotation_key(threshold, "null-status", null_status),
                sentence.clone(),
            );
            if evaluation.status < null_status {
                evaluation.status = null_status;
                summary = sentence;
            }
        }
    }
    if !summary.is_empty() {
        evaluation.annotations.insert(
            format!("{NOTIFICATION_PREFIX}{}", caption(evaluation.status)),
            summary,
        );
    }
    evaluation
}

/// Sensu's `CheckStatusToCaption`.
pub fn caption(status: u32) -> &'static str {
    match status {
        0 => "ok",
        1 => "warning",
        2 => "critical",
        _ => "unknown",
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bound {
    Min,
    Max,
}

/// Compares `point` with one bound of `rule`, recording the annotation. `None`: the bound did
/// not parse (the rule ends); `Some(true)`: a `min` was violated (the rule ends); `Some(false)`:
/// go on (also when the bound is not set).
fn check_bound(
    threshold: &MetricThreshold,
    rule: &MetricThresholdRule,
    bound: Bound,
    point: &MetricPoint,
    evaluation: &mut Evaluation,
    summary: &mut String,
) -> Option<bool> {
    let (text, measure) = match bound {
        Bound::Min => (bound_text(rule.min.as_ref()), "min"),
        Bound::Max => (bound_text(rule.max.as_ref()), "max"),
    };
    if text.is_empty() {
        return Some(false);
    }
    let limit: f64 = super::go_parse_float(&text)?;
    let exceeded = match bound {
        Bound::Min => point.value < limit,
        Bound::Max => point.value > limit,
    };
    let sentence = sentence(threshold, measure, point.value, &text, exceeded);
    if exceeded {
        evaluation.annotations.insert(
            annotation_key(threshold, measure, rule.status),
            sentence.clone(),
        );
        if evaluation.status < rule.status {
            evaluation.status = rule.status;
            *summary = sentence;
        }
    } else {
        evaluation
            .annotations
            .insert(annotation_key(threshold, measure, 0), sentence.clone());
        *summary = sentence;
    }
    Some(exceeded && bound == Bound::Min)
}

/// A bound as Sensu holds it: a string, trimmed (its validation trims); a number as written.
fn bound_text(bound: Option<&Value>) -> String {
    match bound {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.trim().to_owned(),
        Some(other) => other.to_string(),
    }
}

/// Sensu's `MatchesMetricPoint`: the same name and every threshold tag on the point.
fn matches(threshold: &MetricThreshold, point: &MetricPoint) -> bool {
    threshold.name == point.name
        && threshold.tags.iter().all(|tag| {
            point
                .tags
                .iter()
                .any(|point_tag| point_tag.name == tag.name && point_tag.value == tag.value)
        })
}

fn annotation_key(threshold: &MetricThreshold, measure: &str, status: u32) -> String {
    let mut key = format!("{ANNOTATION_PREFIX}{}", threshold.name);
    for tag in &threshold.tags {
        key.push('.');
        key.push_str(&tag.value);
    }
    format!("{key}/{measure}/{}", caption(status))
}

fn sentence(
    threshold: &MetricThreshold,
    measure: &str,
    value: f64,
    limit: &str,
    exceeded: bool,
) -> String {
    let tags: Vec<String> = threshold
        .tags
        .iter()
        .map(|tag| format!("{}={}", tag.name, tag.value))
        .collect();
    let mut text = format!("The value of {}", threshold.name);
    if !tags.is_empty() {
        text.push_str(&format!(" ({})", tags.join(",")));
    }
    text.push_str(if exceeded {
        " exceeded the configured threshold ("
    } else {
        " is within the configured threshold ("
    });
    // Rust's `Display` is Go's `FormatFloat(v, 'f', -1, 64)`: shortest digits, no exponent.
    text.push_str(&format!("{measure}: {limit}, actual: {value})."));
    text
}

fn null_sentence(threshold: &MetricThreshold, null_status: u32) -> String {
    let tags: Vec<String> = threshold
        .tags
        .iter()
        .map(|tag| format!("{}=\"{}\"", tag.name, tag.value))
        .collect();
    let mut text = format!(
        "{} : no metric matching \"{}\"",
        caption(null_status).to_uppercase(),
        threshold.name
    );
    if !tags.is_empty() {
        text.push_str(&format!(" ({})", tags.join(", ")));
    }
    text.push_str(" was found");
    for rule in &threshold.thresholds {
        let min = bound_text(rule.min.as_ref());
        let max = bound_text(rule.max.as_ref());
        text.push_str("; expected ");
        if !min.is_empty() {
            text.push_str(&format!("min: {min}"));
        }
        if !min.is_empty() && !max.is_empty() {
            text.push_str(" - ");
        }
        if !max.is_empty() {
            text.push_str(&format!("max: {max}"));
        }
        text.push_str(&format!(" (status: {})", caption(rule.status)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MetricTag;

    fn point(name: &str, value: f64, tags: &[(&str, &str)]) -> MetricPoint {
        MetricPoint {
            name: name.to_owned(),
            value,
            timestamp: 1,
            tags: tags
                .iter()
                .map(|(name, value)| MetricTag {
                    name: (*name).to_owned(),
                    value: (*value).to_owned(),
                })
                .collect(),
        }
    }

    fn rule(min: &str, max: &str, status: u32) -> MetricThresholdRule {
        let bound = |text: &str| (!text.is_empty()).then(|| Value::String(text.to_owned()));
        MetricThresholdRule {
            min: bound(min),
            max: bound(max),
            status,
        }
    }

    fn threshold(name: &str, null_status: u32, rules: Vec<MetricThresholdRule>) -> MetricThreshold {
        MetricThreshold {
            name: name.to_owned(),
            tags: Vec::new(),
            thresholds: rules,
            null_status: (null_status > 0).then_some(null_status),
        }
    }

    /// Sensu's `TestEvaluateOutputMetricThresholds` cases: status and annotation keys.
    fn check(points: &[MetricPoint], thresholds: &[MetricThreshold], status: u32, keys: &[&str]) {
        let evaluation = evaluate(points, thresholds);
        assert_eq!(evaluation.status, status, "{evaluation:?}");
        let mut want: Vec<String> = keys
            .iter()
            .map(|key| {
                if key.starts_with("notifications/") {
                    format!("sensu.io/{key}")
                } else {
                    format!("{ANNOTATION_PREFIX}{key}")
                }
            })
            .collect();
        want.sort();
        let got: Vec<String> = evaluation.annotations.keys().cloned().collect();
        assert_eq!(got, want);
    }

    #[test]
    fn sensu_documented_cases() {
        let disk = point("disk_rate", 99999.0, &[]);
        let net = point("network_rate", 100001.0, &[("device", "eth0")]);
        let one = std::slice::from_ref(&disk);
        let both = [disk.clone(), net];

        check(
            one,
            &[threshold("disk_rate", 0, vec![rule("200000.0", "", 2)])],
            2,
            &["notifications/critical", "disk_rate/min/critical"],
        );
        check(
            one,
            &[threshold("disk_rate", 0, vec![rule("", "50000.0", 2)])],
            2,
            &["notifications/critical", "disk_rate/max/critical"],
        );
        check(
            one,
            &[threshold("disk_rate", 0, vec![rule("50000.0", "", 2)])],
            0,
            &["notifications/ok", "disk_rate/min/ok"],
        );
        check(
            one,
            &[threshold("disk_rate", 0, vec![rule("", "200000.0", 2)])],
            0,
            &["notifications/ok", "disk_rate/max/ok"],
        );
        check(
            one,
            &[threshold(
                "disk_rate",
                0,
                vec![rule("200000.0", "", 1), rule("", "75000.0", 2)],
            )],
            2,
            &[
                "notifications/critical",
                "disk_rate/min/warning",
                "disk_rate/max/critical",
            ],
        );
        check(
            one,
            &[threshold(
                "disk_rate",
                0,
                vec![rule("200000.0", "", 1), rule("", "200000.0", 2)],
            )],
            1,
            &[
                "notifications/warning",
                "disk_rate/min/warning",
                "disk_rate/max/ok",
            ],
        );
        check(
            one,
            &[threshold(
                "not_a_disk_rate",
                1,
                vec![rule("", "200000.0", 2)],
            )],
            1,
            &[
                "notifications/warning",
                "not_a_disk_rate/null-status/warning",
            ],
        );
        check(
            &both,
            &[threshold("disk_rate", 1, vec![rule("", "200000.0", 2)])],
            0,
            &["notifications/ok", "disk_rate/max/ok"],
        );
        check(
            &both,
            &[threshold("disk_rate", 1, vec![rule("", "50000.0", 2)])],
            2,
            &["notifications/critical", "disk_rate/max/critical"],
        );
        check(
            &both,
            &[
                threshold("disk_rate", 1, vec![rule("", "50000.0", 2)]),
                threshold("network_rate", 0, vec![rule("", "40000", 3)]),
            ],
            3,
            &[
                "notifications/unknown",
                "disk_rate/max/critical",
                "network_rate/max/unknown",
            ],
        );
    }

    #[test]
    fn sentences_and_tags() {
        let points = [point(
            "network_rate",
            100001.0,
            &[("device", "eth0"), ("host", "a")],
        )];
        let mut tagged = threshold("network_rate", 0, vec![rule("", "40000", 2)]);
        tagged.tags = vec![MetricTag {
            name: "device".into(),
            value: "eth0".into(),
        }];
        let evaluation = evaluate(&points, &[tagged.clone()]);
        assert_eq!(evaluation.status, 2);
        assert_eq!(
            evaluation.annotations["sensu.io/output_metric_thresholds/network_rate.eth0/max/critical"],
            "The value of network_rate (device=eth0) exceeded the configured threshold (max: 40000, actual: 100001)."
        );
        assert_eq!(
            evaluation.annotations["sensu.io/notifications/critical"],
            "The value of network_rate (device=eth0) exceeded the configured threshold (max: 40000, actual: 100001)."
        );

        // A tag the point lacks: no match, so the null status applies.
        tagged.tags[0].value = "eth1".into();
        tagged.null_status = Some(1);
        tagged.thresholds = vec![rule("5", "75", 1), rule("2", "", 2)];
        let evaluation = evaluate(&points, &[tagged]);
        assert_eq!(evaluation.status, 1);
        assert_eq!(
            evaluation.annotations["sensu.io/notifications/warning"],
            "WARNING : no metric matching \"network_rate\" (device=\"eth1\") was found; expected min: 5 - max: 75 (status: warning); expected min: 2 (status: critical)"
        );
    }

    #[test]
    fn numbers_and_unparsable_bounds() {
        let points = [point("load", 7.5, &[])];
        let numeric = MetricThresholdRule {
            min: None,
            max: Some(serde_json::json!(5)),
            status: 1,
        };
        let evaluation = evaluate(&points, &[threshold("load", 0, vec![numeric])]);
        assert_eq!(evaluation.status, 1);
        assert!(evaluation.annotations["sensu.io/notifications/warning"]
            .contains("(max: 5, actual: 7.5)"));

        // An unparsable min ends the rule before its max.
        let evaluation = evaluate(&points, &[threshold("load", 0, vec![rule("x", "1", 2)])]);
        assert_eq!(evaluation, Evaluation::default());

        assert!(!applies(
            1,
            &points,
            &[threshold("load", 0, vec![rule("", "1", 2)])]
        ));
        assert!(!applies(
            0,
            &[],
            &[threshold("load", 0, vec![rule("", "1", 2)])]
        ));
        assert!(!applies(0, &points, &[]));
        assert!(applies(
            0,
            &points,
            &[threshold("load", 0, vec![rule("", "1", 2)])]
        ));
    }
}
