//! `prometheus_text`: the Prometheus text exposition format, as Sensu reads it (its
//! `transformers/prometheus.go` on `expfmt.TextParser` of `prometheus/common` v0.26, whose
//! state machine this follows byte for byte).
//!
//! - `# HELP name text` and `# TYPE name counter|gauge|summary|histogram|untyped` describe a
//!   family; other comments and blank lines are skipped. A sample is `name[{label="value",…}]
//!   value [timestamp_ms]`, separated by blanks or tabs, ending with `\n`.
//! - The first error stops parsing; what was parsed before it is kept (Sensu logs the error and
//!   uses those families). Among the errors: a value that is not a float, a second HELP or TYPE
//!   for a family, a TYPE after its samples, a blank after the value without a timestamp, and a
//!   last line without `\n` (its sample is lost; with a timestamp, only the timestamp is).
//! - A summary's `name{quantile="q"}`, `name_sum` and `name_count` lines (a histogram's
//!   `name_bucket{le="b"}`, `_sum`, `_count`) with the same other labels are one metric, which
//!   gives the points `name` (with `quantile`) or `name_bucket` (with `le`, plus `le="+Inf"` with
//!   the count when no bucket has it), then `name_sum` and `name_count`.
//! - Each point's tags: the labels as written, `quantile`/`le`, `prom_type` (the family's type),
//!   `prom_help` (when the family has help), then the check's tags; a later tag with the name of
//!   an earlier one replaces its value in place (Sensu's tags are a Go map).
//! - Timestamps are milliseconds, divided by 1000 (truncated); without one, `now`. `NaN` samples
//!   are skipped, as Sensu does.

use std::collections::HashMap;

use super::{go_format_float, go_parse_float, go_parse_int, Input, MetricPoint, MetricTag, Sink};

pub(super) const FORMAT: &str = "prometheus_text";

pub(super) fn parse(output: &str, input: &Input<'_>, sink: &mut Sink) {
    let mut parser = Parser::new(output.as_bytes());
    if let Err(stop) = parser.run() {
        let reason = match stop {
            Stop::Eof => "unexpected end of input stream".to_owned(),
            Stop::Error(message) => message,
        };
        sink.problem(
            parser.line,
            format!(
                "text format parsing error in line {}: {reason}",
                parser.line
            ),
        );
    }
    for family in &parser.families {
        family.samples(input, sink);
    }
}

/// A family's type, as `# TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Summary,
    Untyped,
    Histogram,
}

#[derive(Debug)]
struct Family {
    name: String,
    kind: Option<Kind>,
    help: Option<String>,
    metrics: Vec<Metric>,
}

#[derive(Debug, Default)]
struct Metric {
    labels: Vec<(String, String)>,
    timestamp_ms: Option<i64>,
    value: Value,
}

/// What a metric holds; `Unset` gives no sample (a line whose value did not parse).
#[derive(Debug, Default)]
enum Value {
    #[default]
    Unset,
    Simple(f64),
    /// A summary (`entries` are quantile and value) or a histogram (upper bound and count).
    Aggregate {
        entries: Vec<(f64, f64)>,
        sum: f64,
        count: u64,
    },
}

/// Why parsing stopped.
enum Stop {
    /// The input ended where more was expected.
    Eof,
    Error(String),
}

type Step = Result<State, Stop>;

/// The parser's states (`stateFn`s in Go); `Done` ends a successful parse.
#[derive(Clone, Copy)]
enum State {
    StartOfLine,
    StartComment,
    ReadingMetricName,
    ReadingLabels,
    StartLabelName,
    StartLabelValue,
    ReadingValue,
    StartTimestamp,
    ReadingHelp,
    ReadingType,
    Done,
}

/// Which line of a summary or histogram the current sample is.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Part {
    #[default]
    Other,
    Count,
    Sum,
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
    current: u8,
    line: usize,
    token: Vec<u8>,
    families: Vec<Family>,
    by_name: HashMap<String, usize>,
    family: usize,
    /// The metric being read, before it is placed (`None` once placed: then `placed`).
    pending: Metric,
    placed: Option<usize>,
    /// The label whose value is being read, an index into `pending.labels`, or `None` for a
    /// `quantile`/`le` label that is not kept as a label.
    label: Option<usize>,
    label_name: String,
    /// Summary and histogram identity: the labels (with the family name), sorted.
    identity: Vec<(String, String)>,
    grouped: HashMap<(usize, Vec<(String, String)>), usize>,
    quantile: f64,
    bucket: f64,
    part: Part,
}

// === impl Parser ===

impl<'a> Parser<'a> {
    fn new(bytes: &'a [u8]) -> Parser<'a> {
        Parser {
            bytes,
            pos: 0,
            current: 0,
            line: 0,
            token: Vec::new(),
            families: Vec::new(),
            by_name: HashMap::new(),
            family: 0,
            pending: Metric::default(),
            placed: None,
            label: None,
            label_name: String::new(),
            identity: Vec::new(),
            grouped: HashMap::new(),
            quantile: f64::NAN,
            bucket: f64::NAN,
            part: Part::Other,
        }
    }

    fn run(&mut self) -> Result<(), Stop> {
        let mut state = State::StartOfLine;
        loop {
            state = match state {
                State::StartOfLine => self.start_of_line(),
                State::StartComment => self.start_comment(),
                State::ReadingMetricName => self.reading_metric_name(),
                State::ReadingLabels => Ok(self.reading_labels()),
                State::StartLabelName => self.start_label_name(),
                State::StartLabelValue => self.start_label_value(),
                State::ReadingValue => self.reading_value(),
                State::StartTimestamp => self.start_timestamp(),
                State::ReadingHelp => self.reading_help(),
                State::ReadingType => self.reading_type(),
                State::Done => return Ok(()),
            }?;
        }
    }

    /// Go's `buf.ReadByte` into `currentByte`.
    fn read(&mut self) -> Result<(), Stop> {
        match self.bytes.get(self.pos) {
            Some(&byte) => {
                self.current = byte;
                self.pos += 1;
                Ok(())
            }
            None => Err(Stop::Eof),
        }
    }

    fn skip_blank_tab(&mut self) -> Result<(), Stop> {
        loop {
            self.read()?;
            if !is_blank_or_tab(self.current) {
                return Ok(());
            }
        }
    }

    fn skip_blank_tab_if_current_blank_tab(&mut self) -> Result<(), Stop> {
        if is_blank_or_tab(self.current) {
            self.skip_blank_tab()?;
        }
        Ok(())
    }

    fn token_text(&self) -> String {
        String::from_utf8_lossy(&self.token).into_owned()
    }

    fn read_token_until_whitespace(&mut self) -> Result<(), Stop> {
        self.token.clear();
        while !is_blank_or_tab(self.current) && self.current != b'\n' {
            self.token.push(self.current);
            self.read()?;
        }
        Ok(())
    }

    fn read_token_until_newline(&mut self, escapes: bool) -> Result<(), Stop> {
        self.token.clear();
        let mut escaped = false;
        loop {
            if escapes && escaped {
                self.push_escaped(false)?;
                escaped = false;
            } else {
                match self.current {
                    b'\n' => return Ok(()),
                    b'\\' if escapes => escaped = true,
                    other => self.token.push(other),
                }
            }
            self.read()?;
        }
    }

    /// The byte after a backslash: `\\`, `n` and (in label values) `"` are escapes.
    fn push_escaped(&mut self, quote: bool) -> Result<(), Stop> {
        match self.current {
            b'\\' => self.token.push(b'\\'),
            b'"' if quote => self.token.push(b'"'),
            b'n' => self.token.push(b'\n'),
            other => {
                return Err(Stop::Error(format!(
                    "invalid escape sequence '\\{}'",
                    char::from(other)
                )))
            }
        }
        Ok(())
    }

    fn read_token_as_name(
        &mut self,
        start: fn(u8) -> bool,
        rest: fn(u8) -> bool,
    ) -> Result<(), Stop> {
        self.token.clear();
        if !start(self.current) {
            return Ok(());
        }
        loop {
            self.token.push(self.current);
            self.read()?;
            if !rest(self.current) {
                return Ok(());
            }
        }
    }

    fn read_token_as_metric_name(&mut self) -> Result<(), Stop> {
        self.read_token_as_name(
            |byte| byte.is_ascii_alphabetic() || byte == b'_' || byte == b':',
            |byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b':',
        )
    }

    fn read_token_as_label_name(&mut self) -> Result<(), Stop> {
        self.read_token_as_name(
            |byte| byte.is_ascii_alphabetic() || byte == b'_',
            |byte| byte.is_ascii_alphanumeric() || byte == b'_',
        )
    }

    fn read_token_as_label_value(&mut self) -> Result<(), Stop> {
        self.token.clear();
        let mut escaped = false;
        loop {
            self.read()?;
            if escaped {
                self.push_escaped(true)?;
                escaped = false;
                continue;
            }
            match self.current {
                b'"' => return Ok(()),
                b'\n' => {
                    return Err(Stop::Error(format!(
                        "label value {:?} contains unescaped new-line",
                        self.token_text()
                    )))
                }
                b'\\' => escaped = true,
                other => self.token.push(other),
            }
        }
    }

    fn kind(&self) -> Option<Kind> {
        self.families[self.family].kind
    }

    /// Go's `setOrCreateCurrentMF` for the name in `token`.
    fn set_or_create_family(&mut self) {
        self.part = Part::Other;
        let name = self.token_text();
        if let Some(&idx) = self.by_name.get(&name) {
            self.family = idx;
            return;
        }
        let part = if name.ends_with("_count") {
            Part::Count
        } else if name.ends_with("_sum") {
            Part::Sum
        } else {
            Part::Other
        };
        let summary_name = name
            .strip_suffix("_count")
            .or_else(|| name.strip_suffix("_sum"))
            .unwrap_or(&name);
        if let Some(&idx) = self.by_name.get(summary_name) {
            if self.families[idx].kind == Some(Kind::Summary) {
                self.family = idx;
                self.part = part;
                return;
            }
        }
        let histogram_name = name
            .strip_suffix("_count")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_bucket"))
            .unwrap_or(&name);
        if let Some(&idx) = self.by_name.get(histogram_name) {
            if self.families[idx].kind == Some(Kind::Histogram) {
                self.family = idx;
                self.part = part;
                return;
            }
        }
        self.family = self.families.len();
        self.by_name.insert(name.clone(), self.family);
        self.families.push(Family {
            name,
            kind: None,
            help: None,
            metrics: Vec::new(),
        });
    }

    fn start_of_line(&mut self) -> Step {
        self.line += 1;
        match self.skip_blank_tab() {
            Ok(()) => {}
            Err(Stop::Eof) => return Ok(State::Done),
            Err(other) => return Err(other),
        }
        Ok(match self.current {
            b'#' => State::StartComment,
            b'\n' => State::StartOfLine,
            _ => State::ReadingMetricName,
        })
    }

    fn start_comment(&mut self) -> Step {
        self.skip_blank_tab()?;
        if self.current == b'\n' {
            return Ok(State::StartOfLine);
        }
        self.read_token_until_whitespace()?;
        if self.current == b'\n' {
            return Ok(State::StartOfLine);
        }
        let keyword = self.token.clone();
        if keyword != b"HELP" && keyword != b"TYPE" {
            while self.current != b'\n' {
                self.read()?;
            }
            return Ok(State::StartOfLine);
        }
        self.skip_blank_tab()?;
        self.read_token_as_metric_name()?;
        if self.current == b'\n' {
            return Ok(State::StartOfLine);
        }
        if !is_blank_or_tab(self.current) {
            return Err(Stop::Error("invalid metric name in comment".to_owned()));
        }
        self.set_or_create_family();
        self.skip_blank_tab()?;
        if self.current == b'\n' {
            return Ok(State::StartOfLine);
        }
        Ok(if keyword == b"HELP" {
            State::ReadingHelp
        } else {
            State::ReadingType
        })
    }

    fn reading_metric_name(&mut self) -> Step {
        self.read_token_as_metric_name()?;
        if self.token.is_empty() {
            return Err(Stop::Error("invalid metric name".to_owned()));
        }
        self.set_or_create_family();
        let family = &mut self.families[self.family];
        if family.kind.is_none() {
            family.kind = Some(Kind::Untyped);
        }
        self.pending = Metric::default();
        self.placed = None;
        self.skip_blank_tab_if_current_blank_tab()?;
        Ok(State::ReadingLabels)
    }

    fn reading_labels(&mut self) -> State {
        if matches!(self.kind(), Some(Kind::Summary | Kind::Histogram)) {
            self.identity = vec![(
                "__name__".to_owned(),
                self.families[self.family].name.clone(),
            )];
            self.quantile = f64::NAN;
            self.bucket = f64::NAN;
        }
        if self.current == b'{' {
            State::StartLabelName
        } else {
            State::ReadingValue
        }
    }

    fn start_label_name(&mut self) -> Step {
        self.skip_blank_tab()?;
        if self.current == b'}' {
            self.skip_blank_tab()?;
            return Ok(State::ReadingValue);
        }
        self.read_token_as_label_name()?;
        if self.token.is_empty() {
            return Err(Stop::Error(format!(
                "invalid label name for metric {:?}",
                self.families[self.family].name
            )));
        }
        let name = self.token_text();
        if name == "__name__" {
            return Err(Stop::Error(
                "label name \"__name__\" is reserved".to_owned(),
            ));
        }
        let special = (self.kind() == Some(Kind::Summary) && name == "quantile")
            || (self.kind() == Some(Kind::Histogram) && name == "le");
        self.label = if special {
            None
        } else {
            self.pending.labels.push((name.clone(), String::new()));
            Some(self.pending.labels.len() - 1)
        };
        self.label_name = name;
        self.skip_blank_tab_if_current_blank_tab()?;
        if self.current != b'=' {
            return Err(Stop::Error(format!(
                "expected '=' after label name, found {:?}",
                char::from(self.current)
            )));
        }
        Ok(State::StartLabelValue)
    }

    fn start_label_value(&mut self) -> Step {
        self.skip_blank_tab()?;
        if self.current != b'"' {
            return Err(Stop::Error(format!(
                "expected '\"' at start of label value, found {:?}",
                char::from(self.current)
            )));
        }
        self.read_token_as_label_value()?;
        let value = self.token_text();
        if let Some(idx) = self.label {
            self.pending.labels[idx].1.clone_from(&value);
        }
        match self.kind() {
            Some(Kind::Summary) if self.label_name == "quantile" => {
                self.quantile = go_parse_float(&value).ok_or_else(|| {
                    Stop::Error(format!(
                        "expected float as value for 'quantile' label, got {value:?}"
                    ))
                })?;
            }
            Some(Kind::Histogram) if self.label_name == "le" => {
                self.bucket = go_parse_float(&value).ok_or_else(|| {
                    Stop::Error(format!(
                        "expected float as value for 'le' label, got {value:?}"
                    ))
                })?;
            }
            Some(Kind::Summary | Kind::Histogram) => {
                set_label(&mut self.identity, &self.label_name, &value);
            }
            _ => {}
        }
        self.skip_blank_tab()?;
        match self.current {
            b',' => Ok(State::StartLabelName),
            b'}' => {
                self.skip_blank_tab()?;
                Ok(State::ReadingValue)
            }
            _ => Err(Stop::Error(format!(
                "unexpected end of label value {value:?}"
            ))),
        }
    }

    /// The metric of this line: for a summary or histogram the one of the same labels when
    /// there is one, else the pending metric, appended to the family.
    fn place(&mut self) -> usize {
        let family = self.family;
        if matches!(self.kind(), Some(Kind::Summary | Kind::Histogram)) {
            let mut identity = self.identity.clone();
            identity.sort();
            if let Some(&idx) = self.grouped.get(&(family, identity.clone())) {
                return idx;
            }
            let idx = self.push_pending();
            self.grouped.insert((family, identity), idx);
            return idx;
        }
        self.push_pending()
    }

    fn push_pending(&mut self) -> usize {
        let metrics = &mut self.families[self.family].metrics;
        metrics.push(std::mem::take(&mut self.pending));
        metrics.len() - 1
    }

    fn reading_value(&mut self) -> Step {
        let idx = self.place();
        self.placed = Some(idx);
        self.read_token_until_whitespace()?;
        let text = self.token_text();
        let Some(value) = go_parse_float(&text) else {
            return Err(Stop::Error(format!(
                "expected float as value, got {text:?}"
            )));
        };
        let kind = self.kind();
        let (part, quantile, bucket) = (self.part, self.quantile, self.bucket);
        let metric = &mut self.families[self.family].metrics[idx];
        match kind {
            Some(Kind::Counter | Kind::Gauge | Kind::Untyped) | None => {
                metric.value = Value::Simple(value);
            }
            Some(Kind::Summary | Kind::Histogram) => {
                if !matches!(metric.value, Value::Aggregate { .. }) {
                    metric.value = Value::Aggregate {
                        entries: Vec::new(),
                        sum: 0.0,
                        count: 0,
                    };
                }
                // A summary's quantile value is a float; a bucket's count is a `uint64`.
                let (marker, entry) = if kind == Some(Kind::Summary) {
                    (quantile, value)
                } else {
                    (bucket, go_uint64(value) as f64)
                };
                if let Value::Aggregate {
                    entries,
                    sum,
                    count,
                } = &mut metric.value
                {
                    match part {
                        Part::Count => *count = go_uint64(value),
                        Part::Sum => *sum = value,
                        Part::Other if !marker.is_nan() => entries.push((marker, entry)),
                        Part::Other => {}
                    }
                }
            }
        }
        if self.current == b'\n' {
            return Ok(State::StartOfLine);
        }
        Ok(State::StartTimestamp)
    }

    fn start_timestamp(&mut self) -> Step {
        self.skip_blank_tab()?;
        self.read_token_until_whitespace()?;
        let text = self.token_text();
        let Some(timestamp) = go_parse_int(&text) else {
            return Err(Stop::Error(format!(
                "expected integer as timestamp, got {text:?}"
            )));
        };
        if let Some(idx) = self.placed {
            self.families[self.family].metrics[idx].timestamp_ms = Some(timestamp);
        }
        self.read_token_until_newline(false)?;
        if !self.token.is_empty() {
            return Err(Stop::Error(format!(
                "spurious string after timestamp: {:?}",
                self.token_text()
            )));
        }
        Ok(State::StartOfLine)
    }

    /// The error of a second HELP or TYPE line: `what` with the family's name.
    fn repeated(&self, what: &str, after: &str) -> Stop {
        Stop::Error(format!(
            "{what} for metric name {:?}{after}",
            self.families[self.family].name
        ))
    }

    fn reading_help(&mut self) -> Step {
        if self.families[self.family].help.is_some() {
            return Err(self.repeated("second HELP line", ""));
        }
        self.read_token_until_newline(true)?;
        self.families[self.family].help = Some(self.token_text());
        Ok(State::StartOfLine)
    }

    fn reading_type(&mut self) -> Step {
        if self.families[self.family].kind.is_some() {
            return Err(self.repeated("second TYPE line", ", or TYPE reported after samples"));
        }
        self.read_token_until_newline(false)?;
        let text = self.token_text();
        let kind = match text.to_uppercase().as_str() {
            "COUNTER" => Kind::Counter,
            "GAUGE" => Kind::Gauge,
            "SUMMARY" => Kind::Summary,
            "UNTYPED" => Kind::Untyped,
            "HISTOGRAM" => Kind::Histogram,
            _ => return Err(Stop::Error(format!("unknown metric type {text:?}"))),
        };
        self.families[self.family].kind = Some(kind);
        Ok(State::StartOfLine)
    }
}

// === impl Family ===

impl Family {
    /// Go's `expfmt.ExtractSamples`, then Sensu's `Transform`.
    fn samples(&self, input: &Input<'_>, sink: &mut Sink) {
        let kind = self.kind.unwrap_or(Kind::Untyped);
        let type_name = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
            Kind::Untyped => "untyped",
            Kind::Histogram => "histogram",
        };
        for metric in &self.metrics {
            let timestamp = metric.timestamp_ms.map_or(input.now, |ms| {
                // Go: `TimeFromUnixNano(ms * 1e6)` (wrapping), then `Unix()`.
                ms.wrapping_mul(1_000_000) / 1_000_000 / 1000
            });
            let emit =
                |sink: &mut Sink, name: String, extra: Option<(&str, String)>, value: f64| {
                    if value.is_nan() {
                        return;
                    }
                    let mut tags: Vec<MetricTag> = Vec::new();
                    for (label, label_value) in &metric.labels {
                        set_tag(&mut tags, label, label_value);
                    }
                    if let Some((label, label_value)) = &extra {
                        set_tag(&mut tags, label, label_value);
                    }
                    set_tag(&mut tags, "prom_type", type_name);
                    if let Some(help) = self.help.as_deref().filter(|help| !help.is_empty()) {
                        set_tag(&mut tags, "prom_help", help);
                    }
                    for check_tag in input.tags {
                        set_tag(&mut tags, &check_tag.name, &check_tag.value);
                    }
                    sink.point(
                        0,
                        MetricPoint {
                            name: name.replace('\n', ""),
                            value,
                            timestamp,
                            tags,
                        },
                    );
                };
            match &metric.value {
                Value::Unset => {}
                Value::Simple(value) => {
                    if matches!(kind, Kind::Counter | Kind::Gauge | Kind::Untyped) {
                        emit(sink, self.name.clone(), None, *value);
                    }
                }
                Value::Aggregate {
                    entries,
                    sum,
                    count,
                } => {
                    let (entry_name, label) = if kind == Kind::Summary {
                        (self.name.clone(), "quantile")
                    } else {
                        (format!("{}_bucket", self.name), "le")
                    };
                    let mut infinity_seen = false;
                    for (marker, value) in entries {
                        infinity_seen |= *marker == f64::INFINITY;
                        let extra = Some((label, go_format_float(*marker)));
                        emit(sink, entry_name.clone(), extra, *value);
                    }
                    emit(sink, format!("{}_sum", self.name), None, *sum);
                    emit(sink, format!("{}_count", self.name), None, *count as f64);
                    if kind == Kind::Histogram && !infinity_seen {
                        let extra = Some((label, "+Inf".to_owned()));
                        emit(sink, entry_name, extra, *count as f64);
                    }
                }
            }
        }
    }
}

fn is_blank_or_tab(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

/// Go's `uint64(float64)` as amd64 does it for the values that matter: truncation, saturating.
fn go_uint64(value: f64) -> u64 {
    // `as` saturates and maps NaN to 0.
    value as u64
}

/// Sets `name` in a label set kept in order: replaces the value in place, else appends.
fn set_label(labels: &mut Vec<(String, String)>, name: &str, value: &str) {
    match labels.iter_mut().find(|(label, _)| label == name) {
        Some(entry) => value.clone_into(&mut entry.1),
        None => labels.push((name.to_owned(), value.to_owned())),
    }
}

fn set_tag(tags: &mut Vec<MetricTag>, name: &str, value: &str) {
    match tags.iter_mut().find(|tag| tag.name == name) {
        Some(tag) => value.clone_into(&mut tag.value),
        None => tags.push(MetricTag {
            name: name.to_owned(),
            value: value.to_owned(),
        }),
    }
}
