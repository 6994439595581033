//! `graphite_plaintext`: `path value timestamp` lines (Sensu's `transformers/graphite.go`).
//!
//! The output is trimmed and read line by line; a line must be exactly three fields separated
//! by single spaces, a float value and an integer timestamp (kept as written; there is no
//! default), else it is skipped. Every point gets the check's tags.

use super::{go_parse_float, go_parse_int, go_trim, scan_lines, Input, MetricPoint, Sink};

pub(super) const FORMAT: &str = "graphite_plaintext";

pub(super) fn parse(output: &str, input: &Input<'_>, sink: &mut Sink) {
    for (number, line) in scan_lines(go_trim(output), sink) {
        let fields: Vec<&str> = line.split(' ').collect();
        let [path, value, timestamp] = fields[..] else {
            sink.problem(
                number,
                "graphite plain text format requires exactly 3 arguments".to_owned(),
            );
            continue;
        };
        let Some(value) = go_parse_float(value) else {
            sink.problem(
                number,
                format!("metric value is invalid, second argument must be a float: {value}"),
            );
            continue;
        };
        let Some(timestamp) = go_parse_int(timestamp) else {
            sink.problem(
                number,
                format!("metric timestamp is invalid, third argument must be an int: {timestamp}"),
            );
            continue;
        };
        sink.point(
            number,
            MetricPoint {
                name: path.to_owned(),
                value,
                timestamp,
                tags: input.tags.to_vec(),
            },
        );
    }
}
