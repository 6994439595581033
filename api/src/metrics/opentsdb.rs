//! `opentsdb_line`: `name timestamp value tag=value [tag=value …]` lines (Sensu's
//! `transformers/opentsdb.go`).
//!
//! The output is trimmed and read line by line; fields are separated by single spaces, at least
//! one tag is required, and every tag must be one `key=value` (else the line is skipped). A
//! 13-digit timestamp is taken as milliseconds and divided by 1000; any other is kept. The line's
//! tags come first, then the check's.

use super::{go_parse_float, go_parse_int, go_trim, scan_lines, tag, Input, MetricPoint, Sink};

pub(super) const FORMAT: &str = "opentsdb_line";

pub(super) fn parse(output: &str, input: &Input<'_>, sink: &mut Sink) {
    'lines: for (number, line) in scan_lines(go_trim(output), sink) {
        let fields: Vec<&str> = line.split(' ').collect();
        let [name, timestamp_text, value, ref tag_fields @ ..] = fields[..] else {
            sink.problem(
                number,
                format!("invalid opentsdb metric, at least 4 arguments are required: {line}"),
            );
            continue;
        };
        if tag_fields.is_empty() {
            sink.problem(
                number,
                format!("invalid opentsdb metric, at least 4 arguments are required: {line}"),
            );
            continue;
        }
        let Some(mut timestamp) = go_parse_int(timestamp_text) else {
            sink.problem(
                number,
                format!("invalid opentsdb metric timestamp, must be an integer: {timestamp_text}"),
            );
            continue;
        };
        if timestamp_text.len() == 13 {
            timestamp /= 1000;
        }
        let Some(value) = go_parse_float(value) else {
            sink.problem(number, format!("invalid opentsdb metric value, must be an integer or a floating point value: {value}"));
            continue;
        };
        let mut tags = Vec::with_capacity(tag_fields.len() + input.tags.len());
        for field in tag_fields {
            let parts: Vec<&str> = field.split('=').collect();
            let [key, tag_value] = parts[..] else {
                sink.problem(number, format!("invalid opentsdb metric tag: {field}"));
                continue 'lines;
            };
            tags.push(tag(key, tag_value));
        }
        tags.extend_from_slice(input.tags);
        sink.point(
            number,
            MetricPoint {
                name: name.to_owned(),
                value,
                timestamp,
                tags,
            },
        );
    }
}
