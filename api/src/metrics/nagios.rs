//! `nagios_perfdata`: `text | label=value[UOM];warn;crit;min;max …` (Sensu's
//! `transformers/nagios.go`).
//!
//! The output must contain exactly one `|` (none, or a second one for multi-line perfdata,
//! gives no points at all). What follows it is trimmed and split at single spaces; each item up
//! to its first `;` must be one `label=value`. The unit of measure and anything else that is not
//! a digit, `-` or `.` is removed from the value before it is parsed (so `5ms` is 5, `1e3` is
//! 13 and `U` is skipped). The label is kept as written (quotes included). Every point gets the
//! check's `executed` time and the check's tags.

use super::{go_parse_float, go_trim, Input, MetricPoint, Sink};

pub(super) const FORMAT: &str = "nagios_perfdata";

pub(super) fn parse(output: &str, input: &Input<'_>, sink: &mut Sink) {
    let sections: Vec<&str> = output.split('|').collect();
    let [_, perfdata] = sections[..] else {
        sink.problem(
            1,
            "nagios perfdata format requires at least one performance data metric".to_owned(),
        );
        return;
    };
    for (idx, item) in go_trim(perfdata).split(' ').enumerate() {
        let number = idx + 1;
        let item = go_trim(item);
        if item.is_empty() {
            continue;
        }
        let before_thresholds = item.split(';').next().unwrap_or_default();
        let parts: Vec<&str> = before_thresholds.split('=').collect();
        let [label, value] = parts[..] else {
            sink.problem(number, format!("invalid nagios perfdata metric: {item:?}"));
            continue;
        };
        let digits: String = value
            .chars()
            .filter(|c| c.is_ascii_digit() || matches!(c, '-' | '.'))
            .collect();
        let Some(number_value) = go_parse_float(&digits) else {
            sink.problem(
                number,
                format!("invalid nagios perfdata metric value: {value:?}"),
            );
            continue;
        };
        sink.point(
            number,
            MetricPoint {
                name: label.replace(' ', "_"),
                value: number_value,
                timestamp: input.executed,
                tags: input.tags.to_vec(),
            },
        );
    }
}
