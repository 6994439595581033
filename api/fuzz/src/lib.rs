//! What every fuzz target checks: the parser of one `output_metric_format` never panics on any
//! output and keeps its bounds; token substitution never panics on any template.

use cairn_api::metrics::{self, Input, MetricTag};

/// Extracts the points of `data` (as text, lossily) in `format` and checks the guarantees of
/// [`metrics::extract`]: at most `MAX_POINTS` points, all finite, at most `MAX_PROBLEMS`
/// problems, and points that serialise to JSON.
pub fn extract(format: &str, data: &[u8]) {
    let output = String::from_utf8_lossy(data);
    let tags = [MetricTag {
        name: "host".to_owned(),
        value: "fuzz".to_owned(),
    }];
    let input = Input {
        tags: &tags,
        executed: 1_700_000_000,
        now: 1_700_000_001,
    };
    let extraction = metrics::extract(format, &output, &input).expect("a known format");
    assert!(extraction.points.len() <= metrics::MAX_POINTS);
    assert!(extraction.problems.len() <= metrics::MAX_PROBLEMS);
    assert!(extraction.points.iter().all(|point| point.value.is_finite()));
    serde_json::to_vec(&extraction.points).expect("points serialise");
}

/// Substitutes the tokens of `data` (as text, lossily) with a fixed entity.
pub fn substitute(data: &[u8]) {
    let template = String::from_utf8_lossy(data);
    let entity: cairn_api::model::Entity = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-01", "namespace": "default", "labels": {"region": "eu"}},
        "entity_class": "agent",
        "subscriptions": ["linux"],
        "system": {"os": "linux", "hostname": "web-01"},
    }))
    .expect("a valid entity");
    let _ = cairn_api::tokens::substitute(&template, &entity);
}
