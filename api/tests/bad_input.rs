//! Crafted bad manifests: each is refused with a message that names the file, document, line
//! and field, and nothing of the bad document is accepted.
//!
//! Messages are `expect_test` snapshots; refresh with `UPDATE_EXPECT=1 cargo test`.

use std::time::{Duration, Instant};

use cairn_api::codec;
use expect_test::{expect, Expect};

/// Loads `input` as `bad.yaml` and compares every problem line, plus the number of accepted
/// resources, with `expected`.
fn check(input: &str, expected: Expect) {
    let manifests = codec::load_str("bad.yaml", input);
    let mut out: Vec<String> = manifests.problems.iter().map(ToString::to_string).collect();
    out.extend(
        manifests
            .unsupported
            .iter()
            .map(|document| document.unsupported.to_string()),
    );
    out.push(format!("accepted: {}", manifests.resources.len()));
    expected.assert_eq(&out.join("\n"));
}

const CHECK_HEAD: &str = "type: CheckConfig
api_version: core/v2
metadata:
  name: cpu
  namespace: default
spec:
";

fn check_with(spec_lines: &str) -> String {
    format!("{CHECK_HEAD}{spec_lines}")
}

#[test]
fn yaml_syntax_error_has_line_and_column() {
    check(
        "type: CheckConfig
api_version: core/v2
metadata:
  name: cpu
spec:
  command: true
   interval: 10
",
        expect![[r#"
            error: bad.yaml:7:12: document 1: invalid YAML: mapping values are not allowed in this context
            accepted: 0"#]],
    );
}

#[test]
fn syntax_error_in_second_document_points_into_the_file() {
    check(
        "type: Namespace
api_version: core/v2
spec:
  name: ops
---
type: Namespace
api_version: core/v2
spec: [name: dev
",
        expect![[r#"
            error: bad.yaml:9:1: document 2: invalid YAML: did not find expected ',' or ']'
            accepted: 1"#]],
    );
}

#[test]
fn unknown_type() {
    check(
        "type: Chek\napi_version: core/v2\nmetadata: {name: cpu}\nspec: {}\n",
        expect![[r#"
            error: bad.yaml:1:1: document 1: type: unknown type "Chek" in api_version core/v2
            accepted: 0"#]],
    );
}

#[test]
fn unknown_api_version() {
    check(
        "type: CheckConfig\napi_version: core/v9\nmetadata: {name: cpu}\nspec: {}\n",
        expect![[r#"
            error: bad.yaml:2:1: document 1: api_version: unknown api_version "core/v9"
            accepted: 0"#]],
    );
}

#[test]
fn unknown_spec_field_is_an_error_with_a_suggestion() {
    check(
        &check_with("  command: check-cpu\n  intreval: 10\n"),
        expect![[r#"
            error: bad.yaml:8:3: document 1: spec.intreval: unknown field "intreval" (did you mean "interval"?)
            accepted: 0"#]],
    );
}

#[test]
fn legacy_fields_are_accepted_with_a_warning() {
    check(
        &check_with("  command: check-cpu\n  interval: 10\n  subdue:\n    days: {}\n"),
        expect![[r#"
            warning: bad.yaml:9:3: document 1: spec.subdue: legacy field; ignored (sensuctl strips it too)
            accepted: 1"#]],
    );
}

#[test]
fn any_hook_type_is_accepted_as_sensu_does_with_a_warning_when_it_matches_no_status() {
    // A Sensu API client's test creates a check with the hook type `error`: Sensu 6.9 takes
    // it (its hooks never run), so Cairn does too, and says so.
    check(
        &check_with(
            "  command: check-cpu\n  interval: 10\n  check_hooks:\n  - error: [restart]\n  - NON-ZERO: [dump]\n  - 2: [page]\n",
        ),
        expect![[r#"
            warning: bad.yaml:10:5: document 1: spec.check_hooks[0].error: hook type "error" matches no check status, so these hooks never run; the types that do are 0-255, ok, warning, critical, unknown and non-zero
            accepted: 1"#]],
    );
    check(
        &check_with("  command: check-cpu\n  interval: 10\n  check_hooks:\n  - ' ': [restart]\n"),
        expect![[r#"
            error: bad.yaml:10:5: document 1: spec.check_hooks[0]. : the hook type must not be empty
            accepted: 0"#]],
    );
}

#[test]
fn missing_name() {
    check(
        "type: Handler\napi_version: core/v2\nmetadata:\n  namespace: default\nspec:\n  type: pipe\n  command: cat\n",
        expect![[r#"
            error: bad.yaml:3:1: document 1: metadata.name: must not be empty
            accepted: 0"#]],
    );
}

#[test]
fn bad_names() {
    let name_cases = [
        (
            "a/b",
            expect![[r#"
            error: bad.yaml:4:3: document 1: metadata.name: "a/b" cannot contain spaces or special characters (allowed: ASCII letters, digits, _ . - :)
            accepted: 0"#]],
        ),
        (
            "..",
            expect![[r#"
            error: bad.yaml:4:3: document 1: metadata.name: ".." is not a valid name
            accepted: 0"#]],
        ),
        (
            "\"check cpu\"",
            expect![[r#"
            error: bad.yaml:4:3: document 1: metadata.name: "check cpu" cannot contain spaces or special characters (allowed: ASCII letters, digits, _ . - :)
            accepted: 0"#]],
        ),
        // Look-alikes of ASCII names (Go's `\w`, which Sensu's rule uses, is ASCII only): a
        // Cyrillic `е` and a full-width `ｐ`.
        (
            "d\u{0435}v",
            expect![[r#"
            error: bad.yaml:4:3: document 1: metadata.name: "dеv" cannot contain spaces or special characters (allowed: ASCII letters, digits, _ . - :)
            accepted: 0"#]],
        ),
        (
            "\u{ff50}rod",
            expect![[r#"
            error: bad.yaml:4:3: document 1: metadata.name: "ｐrod" cannot contain spaces or special characters (allowed: ASCII letters, digits, _ . - :)
            accepted: 0"#]],
        ),
        (
            &"a".repeat(65),
            expect![[r#"
            error: bad.yaml:4:3: document 1: metadata.name: is 65 characters long; the limit is 64
            accepted: 0"#]],
        ),
    ];
    for (name, expected) in name_cases {
        let input = format!(
            "type: CheckConfig\napi_version: core/v2\nmetadata:\n  name: {name}\nspec:\n  command: x\n  interval: 10\n"
        );
        check(&input, expected);
    }
}

#[test]
fn look_alike_namespaces_are_refused_everywhere_a_namespace_is_named() {
    check(
        "type: Namespace\napi_version: core/v2\nmetadata:\n  name: \u{ff50}rod\nspec: {}\n---\ntype: CheckConfig\napi_version: core/v2\nmetadata:\n  name: cpu\n  namespace: d\u{0435}v\nspec:\n  command: x\n  interval: 10\n",
        expect![[r#"
            error: bad.yaml:5:1: document 1: spec.name: "ｐrod" cannot contain spaces or special characters (allowed: ASCII letters, digits, _ . - :)
            error: bad.yaml:11:3: document 2: metadata.namespace: "dеv" cannot contain spaces or special characters (allowed: ASCII letters, digits, _ . - :)
            accepted: 0"#]],
    );
}

#[test]
fn cluster_urls_must_be_https() {
    let cluster = |url: &str| {
        format!("type: Cluster\napi_version: federation/v1\nmetadata:\n  name: alpha\nspec:\n  api_urls:\n    - {url}\n")
    };
    check(
        &cluster("http://alpha.example.com:8080"),
        expect![[r#"
            error: bad.yaml:7:7: document 1: spec.api_urls[0]: "http://alpha.example.com:8080" is plain http: a cluster's API must be served over https, since tokens are sent to it
            accepted: 0"#]],
    );
    check(
        &cluster("https://user@alpha.example.com"),
        expect![[r#"
            error: bad.yaml:7:7: document 1: spec.api_urls[0]: "https://user@alpha.example.com" is not an https URL with a host (https://HOST[:PORT])
            accepted: 0"#]],
    );
    check(
        &cluster("https://alpha.example.com:8080"),
        expect!["accepted: 1"],
    );
}

#[test]
fn interval_and_cron_both_set() {
    check(
        &check_with("  command: check-cpu\n  interval: 10\n  cron: \"*/5 * * * *\"\n"),
        expect![[r#"
            error: bad.yaml:9:3: document 1: spec.cron: must only specify either an interval or a cron schedule
            accepted: 0"#]],
    );
}

#[test]
fn negative_timeout() {
    check(
        &check_with("  command: check-cpu\n  interval: 10\n  timeout: -5\n"),
        expect![[r#"
            error: bad.yaml:9:3: document 1: spec.timeout: must not be negative, found -5
            accepted: 0"#]],
    );
}

#[test]
fn ttl_not_above_interval() {
    check(
        &check_with("  command: check-cpu\n  interval: 60\n  ttl: 30\n"),
        expect![[r#"
            error: bad.yaml:9:3: document 1: spec.ttl: ttl must be greater than check interval
            accepted: 0"#]],
    );
}

#[test]
fn pipe_handler_without_command() {
    check(
        "type: Handler\napi_version: core/v2\nmetadata:\n  name: slack\nspec:\n  type: pipe\n  timeout: 10\n",
        expect![[r#"
            error: bad.yaml:5:1: document 1: spec.command: a pipe handler needs a command
            accepted: 0"#]],
    );
}

#[test]
fn secret_reference_without_secret() {
    check(
        &check_with("  command: check-cpu\n  interval: 10\n  secrets:\n    - name: PD_TOKEN\n"),
        expect![[r#"
            error: bad.yaml:10:7: document 1: spec.secrets[0].secret: missing field "secret" (the Secret's name)
            accepted: 0"#]],
    );
}

#[test]
fn wrong_type_names_the_field() {
    check(
        &check_with("  command: check-cpu\n  interval: ten\n"),
        expect![[r#"
            error: bad.yaml:8:3: document 1: spec.interval: invalid type: string "ten", expected an integer
            accepted: 0"#]],
    );
}

#[test]
fn cluster_wide_type_with_namespace() {
    check(
        "type: ClusterRole\napi_version: core/v2\nmetadata:\n  name: ops\n  namespace: default\nspec:\n  rules:\n    - verbs: [get]\n      resources: [checks]\n",
        expect![[r#"
            error: bad.yaml:5:3: document 1: metadata.namespace: ClusterRole is cluster-wide and cannot have a namespace
            accepted: 0"#]],
    );
}

#[test]
fn json_array_is_refused() {
    check(
        "[{\"type\": \"Namespace\", \"api_version\": \"core/v2\", \"spec\": {\"name\": \"a\"}}]",
        expect![[r#"
            error: bad.yaml:1: document 1: a JSON array is not a resource; write one object per resource, one after another
            accepted: 0"#]],
    );
}

#[test]
fn json_stream_error_points_at_second_object() {
    check(
        "{\"type\": \"Namespace\", \"api_version\": \"core/v2\", \"spec\": {\"name\": \"a\"}}\n{\"type\": \"Namespace\",\n \"api_version\": \"core/v2\",\n \"spec\": {\"name\": \"b\", \"nmae\": 1}}\n",
        expect![[r#"
            error: bad.yaml:4:24: document 2: spec.nmae: unknown field "nmae" (did you mean "name"?)
            accepted: 1"#]],
    );
}

#[test]
fn unsupported_types_get_one_line_each() {
    check(
        "type: ldap\napi_version: authentication/v2\nmetadata: {name: corp}\nspec: {}\n---\ntype: TessenConfig\napi_version: core/v2\nspec: {opt_out: true}\n",
        expect![[r#"
            unsupported: authentication/v2/ldap
            unsupported: core/v2/TessenConfig
            accepted: 0"#]],
    );
}

#[test]
fn one_bad_document_does_not_block_the_others() {
    check(
        "type: Namespace\napi_version: core/v2\nspec: {name: ok}\n---\ntype: Namespace\napi_version: core/v2\nspec: {name: \"not ok\"}\n---\ntype: Namespace\napi_version: core/v2\nspec: {name: fine}\n",
        expect![[r#"
            error: bad.yaml:7:8: document 2: spec.name: "not ok" cannot contain spaces or special characters (allowed: ASCII letters, digits, _ . - :)
            accepted: 2"#]],
    );
}

#[test]
fn ten_megabyte_document_is_refused_by_size() {
    let padding = "  # padding\n".repeat(10 * 1024 * 1024 / 12);
    let input = format!("{}{padding}  interval: 10\n", check_with("  command: x\n"));
    let started = Instant::now();
    let manifests = codec::load_str("big.yaml", &input);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let lines: Vec<String> = manifests.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [format!(
            "error: big.yaml:1: document 1: document is {} bytes; the limit is 524288 bytes",
            input.len()
        )]
    );
    assert!(manifests.resources.is_empty());
}

#[test]
fn billion_laughs_is_refused_quickly() {
    let bomb = r#"type: CheckConfig
api_version: core/v2
metadata:
  name: lol
  annotations:
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
spec:
  command: x
  interval: 10
"#;
    let started = Instant::now();
    let manifests = codec::load_str("bomb.yaml", bomb);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let lines: Vec<String> = manifests.problems.iter().map(ToString::to_string).collect();
    expect!["error: bomb.yaml:1: document 1: invalid YAML: repetition limit exceeded"]
        .assert_eq(&lines.join("\n"));
    assert!(manifests.resources.is_empty());
}

#[test]
fn deep_nesting_is_refused() {
    let depth = 10_000;
    let input = format!(
        "type: CheckConfig\napi_version: core/v2\nmetadata: {{name: deep}}\nspec:\n  command: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let manifests = codec::load_str("deep.yaml", &input);
    assert_eq!(manifests.error_count(), 1, "{:?}", manifests.problems);
    assert!(manifests.resources.is_empty());
}
