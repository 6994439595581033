//! `influxdb_line`: `measurement[,tag=value…] field=value[,field=value…] [timestamp]` lines
//! (Sensu's `transformers/influx_db.go`).
//!
//! The output is trimmed and read line by line. A line splits at unescaped spaces into two or
//! three parts; the first at unescaped commas into the measurement and `key=value` tags, the
//! second into `key=value` fields whose values must be floats (`1i`, strings and booleans are
//! not: the line is skipped). Each field is one point named `measurement.field`, with the line's
//! tags and then the check's. A timestamp longer than 10 characters is cut to its first 10
//! (nanoseconds to seconds); without one the point gets `now`.
//!
//! Escapes are Sensu's, not InfluxDB's: a backslash before the separator being split on keeps
//! it in the part, and then every other single backslash is removed (`\\` is one backslash).

use super::{go_parse_float, go_parse_int, go_trim, scan_lines, tag, Input, MetricPoint, Sink};

pub(super) const FORMAT: &str = "influxdb_line";

pub(super) fn parse(output: &str, input: &Input<'_>, sink: &mut Sink) {
    'lines: for (number, line) in scan_lines(go_trim(output), sink) {
        let parts = split_unescaped(line, ' ');
        if parts.len() != 2 && parts.len() != 3 {
            sink.problem(
                number,
                "influxdb line format requires 2 arguments with a 3rd (optional) timestamp"
                    .to_owned(),
            );
            continue;
        }
        let measurement_and_tags = split_unescaped(&parts[0], ',');
        let measurement = unescape(&measurement_and_tags[0]);
        let mut tags = Vec::with_capacity(measurement_and_tags.len() - 1 + input.tags.len());
        for tag_text in &measurement_and_tags[1..] {
            let pair = split_unescaped(tag_text, '=');
            let [key, value] = &pair[..] else {
                sink.problem(
                    number,
                    "metric tag set is invalid, must contain a key=value pair".to_owned(),
                );
                continue 'lines;
            };
            tags.push(tag(&unescape(key), &unescape(value)));
        }
        tags.extend_from_slice(input.tags);

        let mut fields = Vec::new();
        for field_text in split_unescaped(&parts[1], ',') {
            let pair = split_unescaped(&field_text, '=');
            let [key, value] = &pair[..] else {
                sink.problem(
                    number,
                    "metric field set is invalid, must contain a key=value pair".to_owned(),
                );
                continue 'lines;
            };
            let Some(value) = go_parse_float(value) else {
                sink.problem(
                    number,
                    format!("metric field value is invalid, must be a float: {value}"),
                );
                continue 'lines;
            };
            fields.push((unescape(key), value));
        }

        let timestamp = match parts.get(2) {
            Some(text) => {
                // Sensu cuts bytes; a cut inside a character cannot parse as an integer anyway.
                let cut = text.as_bytes().get(..10).unwrap_or(text.as_bytes());
                match std::str::from_utf8(cut).ok().and_then(go_parse_int) {
                    Some(timestamp) => timestamp,
                    None => {
                        let shown = String::from_utf8_lossy(cut);
                        sink.problem(
                            number,
                            format!("metric timestamp is invalid, third argument must be an int: {shown}"),
                        );
                        continue;
                    }
                }
            }
            None => input.now,
        };
        for (key, value) in fields {
            sink.point(
                number,
                MetricPoint {
                    name: format!("{measurement}.{key}"),
                    value,
                    timestamp,
                    tags: tags.clone(),
                },
            );
        }
    }
}

/// Sensu's `splitWithoutEscaped`: `\<sep>` is hidden as NUL, the text split at `sep`, and every
/// NUL (also one the text had) written back as `sep`.
fn split_unescaped(text: &str, sep: char) -> Vec<String> {
    let escaped = format!("\\{sep}");
    text.replace(&escaped, "\0")
        .split(sep)
        .map(|segment| segment.replace('\0', sep.encode_utf8(&mut [0; 4])))
        .collect()
}

/// Sensu's `unescape`: `\\` is a backslash, any other backslash is dropped (a NUL in the text
/// becomes a backslash, as in Sensu).
fn unescape(text: &str) -> String {
    text.replace("\\\\", "\0")
        .replace('\\', "")
        .replace('\0', "\\")
}
