//! Metrics extraction from check output, as Sensu Go's agent does it (`agent/transformers`):
//! one parser per `output_metric_format`, and the `output_metric_thresholds` evaluation.
//!
//! Pure functions: no I/O, no clock (the caller passes the times), no logging (what a line did
//! wrong comes back as data, [`Extraction::problems`]). Sensu's behaviour, format by format:
//!
//! | format               | file            | a bad line                      | timestamp when absent |
//! |----------------------|-----------------|---------------------------------|-----------------------|
//! | `graphite_plaintext` | `graphite.rs`   | skipped                         | required              |
//! | `influxdb_line`      | `influx.rs`     | skipped                         | now (s)               |
//! | `nagios_perfdata`    | `nagios.rs`     | skipped (no perfdata: nothing)  | `executed` (s), always|
//! | `opentsdb_line`      | `opentsdb.rs`   | skipped                         | required              |
//! | `prometheus_text`    | `prometheus.rs` | parsing stops (earlier kept)    | now (s)               |
//!
//! Timestamps are unix seconds, as Sensu's points carry them: influx nanosecond (or any longer
//! than 10 digits) timestamps are cut to their first 10 digits, 13-digit OpenTSDB timestamps are
//! divided by 1000, Prometheus milliseconds are divided by 1000; other values are kept as written.
//!
//! # Bounds
//!
//! - At most [`MAX_POINTS`] (10,000) points per output; the rest are counted in
//!   [`Extraction::dropped`], not parsed further. (Sensu has no bound.)
//! - The line formats (graphite, influx, opentsdb) read lines of at most [`MAX_LINE`] bytes, as
//!   Sensu's `bufio.Scanner` does: a longer line ends the extraction there, as it does in Sensu.
//! - At most [`MAX_PROBLEMS`] problems are described; the rest are counted.
//!
//! # Caveats
//!
//! A value that is not finite (`NaN`, `±Inf`, or out of range) is skipped with a problem: Sensu
//! keeps an infinite one and then cannot encode the event as JSON at all (Prometheus `NaN` samples
//! Sensu skips too). Points come in the order of the output; Sensu's Prometheus parser walks Go
//! maps, so its order (of families and of tags) is random.

mod graphite;
mod influx;
mod nagios;
mod opentsdb;
mod prometheus;
pub mod thresholds;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::model::MetricTag;

/// Points kept per output.
pub const MAX_POINTS: usize = 10_000;

/// Longest line the line formats read, bytes (Sensu's `bufio.MaxScanTokenSize` less the newline).
pub const MAX_LINE: usize = 64 * 1024 - 1;

/// Problems described per output.
pub const MAX_PROBLEMS: usize = 100;

/// The formats, as `output_metric_format` names them.
pub const FORMATS: [&str; 5] = [
    graphite::FORMAT,
    influx::FORMAT,
    nagios::FORMAT,
    opentsdb::FORMAT,
    prometheus::FORMAT,
];

/// One point of `metrics.points`, written as Sensu writes a `MetricPoint`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    /// Metric name.
    pub name: String,
    /// Always finite; written as an integer when it is one (`42`, not `42.0`), as Go writes it.
    #[serde(serialize_with = "go_number")]
    pub value: f64,
    /// Unix seconds.
    pub timestamp: i64,
    /// `{name, value}` tags, from the output and then the check's `output_metric_tags`.
    pub tags: Vec<MetricTag>,
}

/// Writes a float as Go's `encoding/json` does for the values that matter: an integral value
/// (below 2^53, where it is exact) without a fraction.
fn go_number<S: serde::Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if value.fract() == 0.0 && value.abs() < EXACT {
        // In range and integral: the cast is exact.
        serializer.serialize_i64(*value as i64)
    } else {
        serializer.serialize_f64(*value)
    }
}

/// What the parsers need besides the output.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The check's `output_metric_tags`, already token-substituted.
    pub tags: &'a [MetricTag],
    /// When the command started, unix s (`check.executed`): the nagios timestamp.
    pub executed: i64,
    /// Now, unix s: the timestamp of points that carry none (influx, prometheus).
    pub now: i64,
}

/// The points of one output and what went wrong on the way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extraction {
    /// At most [`MAX_POINTS`].
    pub points: Vec<MetricPoint>,
    /// Points not kept because of [`MAX_POINTS`].
    pub dropped: usize,
    /// At most [`MAX_PROBLEMS`] of the lines or metrics that were skipped, and why.
    pub problems: Vec<Problem>,
    /// Problems not described because of [`MAX_PROBLEMS`].
    pub more_problems: usize,
}

/// A line or metric of the output that gave no point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line (nagios: 1-based perfdata item).
    pub line: usize,
    /// What was wrong, lower case.
    pub reason: String,
}

/// The format is none of [`FORMATS`]; expected only for a check the API did not validate, and a
/// retry does not help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("output metric format \"{0}\" is not supported")]
pub struct UnsupportedFormat(pub String);

/// Extracts the points of `output` in `format`.
///
/// # Errors
/// [`UnsupportedFormat`] for an unknown format (Sensu logs it and sends no points). Bad lines
/// are not errors: they are skipped (see the module documentation) and listed in the result.
///
/// # Guarantees
/// Never panics; at most [`MAX_POINTS`] points; work linear in the output's length.
pub fn extract(
    format: &str,
    output: &str,
    input: &Input<'_>,
) -> Result<Extraction, UnsupportedFormat> {
    let mut sink = Sink::default();
    match format {
        graphite::FORMAT => graphite::parse(output, input, &mut sink),
        influx::FORMAT => influx::parse(output, input, &mut sink),
        nagios::FORMAT => nagios::parse(output, input, &mut sink),
        opentsdb::FORMAT => opentsdb::parse(output, input, &mut sink),
        prometheus::FORMAT => prometheus::parse(output, input, &mut sink),
        other => return Err(UnsupportedFormat(other.to_owned())),
    }
    Ok(sink.extraction)
}

// === impl Problem ===

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Where the parsers put points and problems, enforcing the bounds.
#[derive(Default)]
struct Sink {
    extraction: Extraction,
}

// === impl Sink ===

impl Sink {
    /// Whether no more points are kept; the parsers stop then.
    fn full(&self) -> bool {
        self.extraction.points.len() >= MAX_POINTS
    }

    /// Keeps the point when its value is finite and there is room.
    fn point(&mut self, line: usize, point: MetricPoint) {
        if !point.value.is_finite() {
            self.problem(line, format!("value of {:?} is not finite", point.name));
        } else if self.full() {
            self.extraction.dropped += 1;
        } else {
            self.extraction.points.push(point);
        }
    }

    fn problem(&mut self, line: usize, reason: String) {
        if self.extraction.problems.len() < MAX_PROBLEMS {
            self.extraction.problems.push(Problem { line, reason });
        } else {
            self.extraction.more_problems += 1;
        }
    }
}

/// The lines of `text` as Go's `bufio.Scanner` with `ScanLines` yields them: split at `\n`, one
/// trailing `\r` dropped, a last line without `\n` included when not empty; a line longer than
/// [`MAX_LINE`] ends the iteration with a problem (Sensu's `bufio.ErrTooLong`).
fn scan_lines<'a>(text: &'a str, sink: &mut Sink) -> Vec<(usize, &'a str)> {
    let mut lines = Vec::new();
    let mut rest = text;
    let mut number = 0;
    while !rest.is_empty() {
        number += 1;
        let (line, next) = match rest.find('\n') {
            Some(idx) => (&rest[..idx], &rest[idx + 1..]),
            None => (rest, ""),
        };
        if line.len() > MAX_LINE {
            sink.problem(
                number,
                format!("line longer than {MAX_LINE} bytes; the rest of the output is not read"),
            );
            break;
        }
        lines.push((number, line.strip_suffix('\r').unwrap_or(line)));
        rest = next;
    }
    lines
}

/// Go's `strings.TrimSpace`: Unicode white space at both ends (the same set as Rust's).
fn go_trim(text: &str) -> &str {
    text.trim_matches(char::is_whitespace)
}

/// Go's `strconv.ParseFloat(text, 64)`, errors and out-of-range values as `None`.
///
/// Decimal with optional sign, fraction and exponent; `inf`/`infinity` with optional sign and
/// `nan` without, any case; hexadecimal mantissa with a `p` exponent. No underscores (Go allows
/// them only with a base prefix, and then only between digits; not supported here).
pub(crate) fn go_parse_float(text: &str) -> Option<f64> {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    if unsigned.len() != text.len() && unsigned.eq_ignore_ascii_case("nan") {
        return None;
    }
    if let Some(hex) = unsigned
        .strip_prefix("0x")
        .or_else(|| unsigned.strip_prefix("0X"))
    {
        let value = parse_hex_float(hex)?;
        return Some(if text.starts_with('-') { -value } else { value });
    }
    let lower = unsigned.to_ascii_lowercase();
    let special = matches!(lower.as_str(), "inf" | "infinity" | "nan");
    if !special
        && !unsigned
            .bytes()
            .all(|byte| byte.is_ascii_digit() || matches!(byte, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    let value: f64 = text.parse().ok()?;
    // Go reports overflow as an error (`ErrRange`); Rust gives an infinity.
    if value.is_infinite() && !special {
        return None;
    }
    Some(value)
}

/// The value of a Go hexadecimal float after its `0x`: hex digits with an optional point, then
/// a mandatory `p` and a decimal exponent.
fn parse_hex_float(text: &str) -> Option<f64> {
    let (mantissa, exponent) = text.split_once(['p', 'P'])?;
    let exponent: i32 = exponent.parse().ok()?;
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let mut value = 0f64;
    for digit in whole.chars() {
        value = value * 16.0 + f64::from(digit.to_digit(16)?);
    }
    let mut scale = 1.0 / 16.0;
    for digit in fraction.chars() {
        value += f64::from(digit.to_digit(16)?) * scale;
        scale /= 16.0;
    }
    let value = value * 2f64.powi(exponent);
    value.is_finite().then_some(value)
}

/// Go's `strconv.ParseInt(text, 10, 64)`.
fn go_parse_int(text: &str) -> Option<i64> {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A float as Go's `fmt` `%v` writes it (`strconv` `'g'` with the shortest precision, so an
/// exponent from 1e6 on and below 1e-4): `0.5`, `100000`, `1e+06`, `1e-05`, `+Inf`, `NaN`.
pub(crate) fn go_format_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    if value == 0.0 {
        return if value.is_sign_negative() { "-0" } else { "0" }.to_owned();
    }
    // Rust's `{:e}` is the shortest round-trip representation: `d.ddde±x`.
    let scientific = format!("{:e}", value.abs());
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` always writes an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` writes a decimal exponent");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if value < 0.0 { "-" } else { "" };
    if !(-4..6).contains(&exponent) {
        let (first, rest) = digits.split_at(1);
        let point = if rest.is_empty() { "" } else { "." };
        let exponent_sign = if exponent < 0 { '-' } else { '+' };
        return format!(
            "{sign}{first}{point}{rest}e{exponent_sign}{:02}",
            exponent.unsigned_abs()
        );
    }
    let count = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    if exponent < 0 {
        let zeros = "0".repeat(usize::try_from(-exponent - 1).unwrap_or(0));
        format!("{sign}0.{zeros}{digits}")
    } else if exponent + 1 >= count {
        let zeros = "0".repeat(usize::try_from(exponent + 1 - count).unwrap_or(0));
        format!("{sign}{digits}{zeros}")
    } else {
        let (whole, fraction) = digits.split_at(usize::try_from(exponent + 1).unwrap_or(0));
        format!("{sign}{whole}.{fraction}")
    }
}

fn tag(name: &str, value: &str) -> MetricTag {
    MetricTag {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

#[cfg(test)]
mod tests;
