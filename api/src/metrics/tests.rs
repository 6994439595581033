//! Parser tests: Sensu's own cases (its `transformers/*_test.go`) and the edges its code implies.

use super::*;

const NOW: i64 = 1_700_000_100;
const EXECUTED: i64 = 1_700_000_000;

fn input(tags: &[MetricTag]) -> Input<'_> {
    Input {
        tags,
        executed: EXECUTED,
        now: NOW,
    }
}

/// `name value timestamp tag=value,…` per point, one per line.
fn render(extraction: &Extraction) -> String {
    extraction
        .points
        .iter()
        .map(|point| {
            let tags: Vec<String> = point
                .tags
                .iter()
                .map(|tag| format!("{}={}", tag.name, tag.value))
                .collect();
            format!(
                "{} {} {} {}\n",
                point.name,
                point.value,
                point.timestamp,
                tags.join(",")
            )
        })
        .collect()
}

fn check(format: &str, output: &str, expect: &str) {
    check_tagged(format, output, &[], expect);
}

fn check_tagged(format: &str, output: &str, tags: &[MetricTag], expect: &str) {
    let extraction = extract(format, output, &input(tags)).expect("a known format");
    assert_eq!(
        render(&extraction),
        expect,
        "{format}: {output:?}\n{:?}",
        extraction.problems
    );
}

fn problems(format: &str, output: &str) -> Vec<String> {
    extract(format, output, &input(&[]))
        .expect("a known format")
        .problems
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn check_tag(name: &str, value: &str) -> MetricTag {
    tag(name, value)
}

#[test]
fn graphite() {
    let format = "graphite_plaintext";
    check(
        format,
        "metric.value 1 123456789",
        "metric.value 1 123456789 \n",
    );
    check(
        format,
        "metric.value 1 123456789\n",
        "metric.value 1 123456789 \n",
    );
    check(
        format,
        "metric.value 1 123456789\nmetric.value 0 0",
        "metric.value 1 123456789 \nmetric.value 0 0 \n",
    );
    check(
        format,
        "metric.value 1 123456789\nfoo",
        "metric.value 1 123456789 \n",
    );
    check(format, "", "");
    check(format, "foo bar", "");
    check(format, "metric.value one 123456789", "");
    check(format, "metric.value 1 noon", "");
    // Double spaces make four fields; CRLF line ends are fine; floats may be 1e3.
    check(format, "a  1 2\r\nb 1e3 5\r\n", "b 1000 5 \n");
    check_tagged(
        format,
        "metric.value 1 123456789",
        &[check_tag("instance", "hostname")],
        "metric.value 1 123456789 instance=hostname\n",
    );
    assert_eq!(
        problems(format, "x 1 2\nfoo bar\nx y 2"),
        [
            "line 2: graphite plain text format requires exactly 3 arguments",
            "line 3: metric value is invalid, second argument must be a float: y",
        ]
    );
}

#[test]
fn influx() {
    let format = "influxdb_line";
    check(
        format,
        "weather,location=us-midwest temperature=82,humidity=71 1465839830100400200",
        "weather.temperature 82 1465839830 location=us-midwest\nweather.humidity 71 1465839830 location=us-midwest\n",
    );
    check(format, "cpu value=0.5", &format!("cpu.value 0.5 {NOW} \n"));
    check_tagged(
        format,
        "cpu,host=a value=1 12",
        &[check_tag("env", "prod")],
        "cpu.value 1 12 host=a,env=prod\n",
    );
    // Escaped separators, and Sensu's unescaping.
    check(
        format,
        r"my\ cpu,ho\,st=a\ b us\=er=1 5",
        "my cpu.us=er 1 5 ho,st=a b\n",
    );
    // An integer field (`1i`), a string, a bad tag and a bad timestamp skip the line.
    check(
        format,
        "a x=1i 5\nb x=\"s\" 5\nc,t x=1 5\nd x=1 noon\ne x=2 5",
        "e.x 2 5 \n",
    );
    check(format, "too many parts here now", "");
}

#[test]
fn nagios() {
    let format = "nagios_perfdata";
    check(
        format,
        "PING ok - Packet loss = 0%, RTA = 0.80 ms | percent_packet_loss=0, rta=0.80",
        &format!("percent_packet_loss 0 {EXECUTED} \nrta 0.8 {EXECUTED} \n"),
    );
    check(
        format,
        "OK | time=0.5s;1;2;0;10 size=512B;;;0 'quoted label'=3",
        &format!("time 0.5 {EXECUTED} \nsize 512 {EXECUTED} \nlabel' 3 {EXECUTED} \n"),
    );
    // The unit and every other non-numeric character goes: 1e3 is 13.
    check(
        format,
        "x | a=1e3 b=-5.5% c=U",
        &format!("a 13 {EXECUTED} \nb -5.5 {EXECUTED} \n"),
    );
    check_tagged(
        format,
        "x | a=1",
        &[check_tag("k", "v")],
        &format!("a 1 {EXECUTED} k=v\n"),
    );
    // No perfdata, or a second `|`, gives nothing.
    check(format, "just text", "");
    check(format, "x | a=1 | b=2", "");
    check(format, "x | a==1 b", "");
}

#[test]
fn opentsdb() {
    let format = "opentsdb_line";
    check(
        format,
        "sys.cpu.user 1356998400 42.5 host=webserver01 cpu=0",
        "sys.cpu.user 42.5 1356998400 host=webserver01,cpu=0\n",
    );
    check(format, "a 1356998400123 1 h=x", "a 1 1356998400 h=x\n");
    check_tagged(
        format,
        "a 5 1 h=x",
        &[check_tag("env", "prod")],
        "a 1 5 h=x,env=prod\n",
    );
    check(
        format,
        "a 5 1\nb 5 x h=x\nc x 1 h=x\nd 5 1 h\ne 5 1 h=x",
        "e 1 5 h=x\n",
    );
}

#[test]
fn prometheus() {
    let format = "prometheus_text";
    check(
        format,
        "# HELP http_requests_total The total.\n# TYPE http_requests_total counter\nhttp_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\nhttp_requests_total{method=\"post\",code=\"400\"}    3 1395066363000\n",
        "http_requests_total 1027 1395066363 method=post,code=200,prom_type=counter,prom_help=The total.\nhttp_requests_total 3 1395066363 method=post,code=400,prom_type=counter,prom_help=The total.\n",
    );
    check(
        format,
        "metric_without_timestamp_and_labels 12.47\n",
        &format!("metric_without_timestamp_and_labels 12.47 {NOW} prom_type=untyped\n"),
    );
    // Escapes in label values, and the check's tags replace a label of the same name.
    check_tagged(
        format,
        "msdos_file_access_time_seconds{path=\"C:\\\\DIR\\\\FILE.TXT\",error=\"Cannot find file:\\n\\\"FILE.TXT\\\"\",env=\"x\"} 1.458255915e9\n",
        &[check_tag("env", "prod")],
        &format!("msdos_file_access_time_seconds 1458255915 {NOW} path=C:\\DIR\\FILE.TXT,error=Cannot find file:\n\"FILE.TXT\",env=prod,prom_type=untyped\n"),
    );
    // Summary and histogram.
    check(
        format,
        "# TYPE rpc summary\nrpc{quantile=\"0.5\"} 4773\nrpc{quantile=\"0.99\"} 76656\nrpc_sum 1.7560473e+07\nrpc_count 2693\n",
        &format!("rpc 4773 {NOW} quantile=0.5,prom_type=summary\nrpc 76656 {NOW} quantile=0.99,prom_type=summary\nrpc_sum 17560473 {NOW} prom_type=summary\nrpc_count 2693 {NOW} prom_type=summary\n"),
    );
    check(
        format,
        "# TYPE lat histogram\nlat_bucket{le=\"0.05\"} 24054\nlat_bucket{le=\"1\"} 33444\nlat_sum 53423\nlat_count 144320\n",
        &format!("lat_bucket 24054 {NOW} le=0.05,prom_type=histogram\nlat_bucket 33444 {NOW} le=1,prom_type=histogram\nlat_sum 53423 {NOW} prom_type=histogram\nlat_count 144320 {NOW} prom_type=histogram\nlat_bucket 144320 {NOW} le=+Inf,prom_type=histogram\n"),
    );
    // The first error stops parsing; earlier samples stay. NaN is skipped.
    check(
        format,
        "a 1\nb NaN\nc x\nd 4\n",
        &format!("a 1 {NOW} prom_type=untyped\n"),
    );
    assert_eq!(
        problems(format, "a 1\nc x\nd 4\n"),
        ["line 2: text format parsing error in line 2: expected float as value, got \"x\""]
    );
    // A last line without a newline loses its sample (Sensu's parser needs the `\n`).
    check(
        format,
        "a 1\nb 2",
        &format!("a 1 {NOW} prom_type=untyped\n"),
    );
    // A blank after the value is read as the start of a timestamp: an error after the value.
    check(
        format,
        "a 1 \nb 2\n",
        &format!("a 1 {NOW} prom_type=untyped\n"),
    );
    // TYPE after samples is an error.
    check(
        format,
        "a 1\n# TYPE a gauge\nb 2\n",
        &format!("a 1 {NOW} prom_type=untyped\n"),
    );
}

#[test]
fn unknown_formats_are_refused() {
    assert_eq!(
        extract("json", "{}", &input(&[])),
        Err(UnsupportedFormat("json".to_owned()))
    );
}

#[test]
fn points_are_bounded() {
    let output: String = (0..MAX_POINTS + 5)
        .map(|idx| format!("m{idx} 1 2\n"))
        .collect();
    let extraction = extract("graphite_plaintext", &output, &input(&[])).unwrap();
    assert_eq!(extraction.points.len(), MAX_POINTS);
    assert_eq!(extraction.dropped, 5);

    let bad: String = (0..MAX_PROBLEMS + 7).map(|_| "x\n").collect::<String>() + "y 1 2";
    let extraction = extract("graphite_plaintext", &bad, &input(&[])).unwrap();
    assert_eq!(extraction.points.len(), 1);
    assert_eq!(extraction.problems.len(), MAX_PROBLEMS);
    assert_eq!(extraction.more_problems, 7);
}

#[test]
fn a_line_over_the_bound_ends_extraction() {
    let long = "x".repeat(MAX_LINE + 1);
    let output = format!("a 1 2\n{long} 1 2\nb 1 2");
    let extraction = extract("graphite_plaintext", &output, &input(&[])).unwrap();
    assert_eq!(render(&extraction), "a 1 2 \n");
    assert!(extraction.problems[0].reason.contains("longer than"));
}

#[test]
fn non_finite_values_are_skipped() {
    check(
        "graphite_plaintext",
        "a inf 1\nb NaN 1\nc 1e400 1\nd 2 1",
        "d 2 1 \n",
    );
}

#[test]
fn go_numbers() {
    assert_eq!(go_parse_float("0x1p-2"), Some(0.25));
    assert_eq!(go_parse_float("-0x1.8p1"), Some(-3.0));
    assert_eq!(go_parse_float("+nan"), None);
    assert!(go_parse_float("NaN").is_some_and(f64::is_nan));
    assert_eq!(go_parse_float("-Inf"), Some(f64::NEG_INFINITY));
    assert_eq!(go_parse_float("1_0"), None);
    assert_eq!(go_parse_float(".5"), Some(0.5));
    assert_eq!(go_parse_float(""), None);
    assert_eq!(go_parse_int("+5"), Some(5));
    assert_eq!(go_parse_int("5.0"), None);
    for (value, text) in [
        (0.5, "0.5"),
        (100_000.0, "100000"),
        (123_456.0, "123456"),
        (1_234_567.0, "1.234567e+06"),
        (1e6, "1e+06"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-2.5, "-2.5"),
        (f64::INFINITY, "+Inf"),
        (1e21, "1e+21"),
    ] {
        assert_eq!(go_format_float(value), text, "{value}");
    }
}

#[test]
fn points_serialise_as_sensu_writes_them() {
    let point = MetricPoint {
        name: "a".into(),
        value: 1.5,
        timestamp: 7,
        tags: vec![check_tag("k", "v")],
    };
    assert_eq!(
        serde_json::to_string(&point).unwrap(),
        r#"{"name":"a","value":1.5,"timestamp":7,"tags":[{"name":"k","value":"v"}]}"#
    );
    let whole = MetricPoint {
        value: 42.0,
        ..point
    };
    assert!(serde_json::to_string(&whole)
        .unwrap()
        .contains(r#""value":42,"#));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9_.]{0,20}"
    }

    fn key() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9_]{0,10}"
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            (-1_000_000i64..1_000_000).prop_map(|int| int as f64),
            -1e12f64..1e12,
        ]
    }

    fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
        proptest::collection::vec((key(), key()), 0..4)
    }

    proptest! {
        #[test]
        fn no_input_panics_and_points_stay_bounded(output in any::<String>(), idx in 0usize..5) {
            let extraction = extract(FORMATS[idx], &output, &input(&[])).unwrap();
            prop_assert!(extraction.points.len() <= MAX_POINTS);
            prop_assert!(extraction.problems.len() <= MAX_PROBLEMS);
            prop_assert!(extraction.points.iter().all(|point| point.value.is_finite()));
        }

        #[test]
        fn line_noise_does_not_panic(
            output in "[a-z0-9 ,=.{}\"\\\\#|;\n\t_-]{0,200}",
            idx in 0usize..5,
        ) {
            let extraction = extract(FORMATS[idx], &output, &input(&[])).unwrap();
            prop_assert!(extraction.points.len() <= MAX_POINTS);
        }

        #[test]
        fn graphite_round_trips(name in name(), value in value(), timestamp in any::<i64>()) {
            let line = format!("{name} {value} {timestamp}");
            let tags = [check_tag("k", "v")];
            let extraction = extract("graphite_plaintext", &line, &input(&tags)).unwrap();
            prop_assert_eq!(extraction.points, vec![MetricPoint { name, value, timestamp, tags: tags.to_vec() }]);
        }

        #[test]
        fn opentsdb_round_trips(
            name in name(),
            value in value(),
            timestamp in 0i64..1_000_000_000,
            tags in pairs().prop_filter("one tag at least", |tags| !tags.is_empty()),
        ) {
            let tag_text: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let line = format!("{name} {timestamp} {value} {}", tag_text.join(" "));
            let extraction = extract("opentsdb_line", &line, &input(&[])).unwrap();
            let want: Vec<MetricTag> = tags.iter().map(|(k, v)| tag(k, v)).collect();
            prop_assert_eq!(extraction.points, vec![MetricPoint { name, value, timestamp, tags: want }]);
        }

        #[test]
        fn influx_round_trips(
            measurement in key(),
            tags in pairs(),
            fields in proptest::collection::vec((key(), value()), 1..4),
            timestamp in proptest::option::of(0i64..9_999_999_999),
        ) {
            let mut line = measurement.clone();
            for (k, v) in &tags {
                line.push_str(&format!(",{k}={v}"));
            }
            let field_text: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
            line.push(' ');
            line.push_str(&field_text.join(","));
            if let Some(timestamp) = timestamp {
                line.push_str(&format!(" {timestamp}"));
            }
            let extraction = extract("influxdb_line", &line, &input(&[])).unwrap();
            let want_tags: Vec<MetricTag> = tags.iter().map(|(k, v)| tag(k, v)).collect();
            let want: Vec<MetricPoint> = fields
                .iter()
                .map(|(k, v)| MetricPoint {
                    name: format!("{measurement}.{k}"),
                    value: *v,
                    timestamp: timestamp.unwrap_or(NOW),
                    tags: want_tags.clone(),
                })
                .collect();
            prop_assert_eq!(extraction.points, want);
        }

        #[test]
        fn prometheus_round_trips(
            name in "[a-z_][a-z0-9_]{0,15}",
            labels in proptest::collection::btree_map(key(), "[a-zA-Z0-9 \"\\\\\n]{0,8}", 0..4),
            value in value(),
            timestamp_ms in proptest::option::of(0i64..4_000_000_000_000),
        ) {
            let label_text: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
                .collect();
            let mut line = name.clone();
            if !labels.is_empty() {
                line.push_str(&format!("{{{}}}", label_text.join(",")));
            }
            line.push_str(&format!(" {value}"));
            if let Some(ms) = timestamp_ms {
                line.push_str(&format!(" {ms}"));
            }
            line.push('\n');
            let extraction = extract("prometheus_text", &line, &input(&[])).unwrap();
            let mut want_tags: Vec<MetricTag> = labels.iter().filter(|(k, _)| k.as_str() != "prom_type").map(|(k, v)| tag(k, v)).collect();
            let type_at = labels.keys().position(|k| k == "prom_type");
            match type_at {
                Some(at) => want_tags.insert(at, tag("prom_type", "untyped")),
                None => want_tags.push(tag("prom_type", "untyped")),
            }
            let want = MetricPoint {
                name,
                value,
                timestamp: timestamp_ms.map_or(NOW, |ms| ms / 1000),
                tags: want_tags,
            };
            prop_assert_eq!(extraction.points, vec![want]);
        }
    }
}
