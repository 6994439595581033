//! Manifest parse + validate throughput (issue 2): `cairn_api::codec` against plain
//! `serde_yaml` parsing of the same bytes into `serde_yaml::Value`, in the same run, on a
//! generated repo of 10,000 resources; run with `cargo bench -p cairn-api --bench parse`
//! (set `CAIRN_BENCH_ITERATIONS` to change the number of timed iterations, default 7).

// A bench binary reports on stdout; that is its whole output.
#![allow(clippy::print_stdout)]

use std::fmt::Write as _;
use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_api::codec::{load_path, load_str, manifest_files};
use cairn_api::resource::{Decoded, Resource};
use cairn_api::validate::validate;
use serde::Deserialize as _;

/// Files in the generated repo.
const FILES: usize = 500;
/// Documents per file.
const DOCS_PER_FILE: usize = 20;
/// Resources in the generated repo.
const RESOURCES: usize = FILES * DOCS_PER_FILE;
/// Namespaces (one folder each) the files are spread over.
const TEAMS: usize = 25;
/// Timed iterations unless `CAIRN_BENCH_ITERATIONS` says otherwise.
const DEFAULT_ITERATIONS: usize = 7;
/// The issue's goal for ours/baseline throughput.
const GOAL: f64 = 0.5;

/// The kinds of the documents of a file, in order: 10 checks, 3 handlers, 3 filters, 2 assets
/// and 2 secrets, interleaved the way a team's manifest file groups related resources.
const LAYOUT: [Doc; DOCS_PER_FILE] = [
    Doc::Asset,
    Doc::Secret,
    Doc::Filter,
    Doc::Handler,
    Doc::Check,
    Doc::Check,
    Doc::Check,
    Doc::Check,
    Doc::Filter,
    Doc::Handler,
    Doc::Check,
    Doc::Check,
    Doc::Asset,
    Doc::Secret,
    Doc::Filter,
    Doc::Handler,
    Doc::Check,
    Doc::Check,
    Doc::Check,
    Doc::Check,
];

#[derive(Clone, Copy)]
enum Doc {
    Check,
    Handler,
    Asset,
    Secret,
    Filter,
}

/// Check templates: name stem, command, runtime asset, output metric format.
const CHECKS: [(&str, &str, &str, &str); 8] = [
    (
        "cpu",
        "check-cpu-usage -w 75 -c 90",
        "sensu/check-cpu-usage:0.2.2",
        "",
    ),
    (
        "memory",
        "check-memory-usage -w 80 -c 95",
        "sensu/check-memory-usage:0.2.0",
        "",
    ),
    (
        "disk",
        "check-disk-usage -w 85 -c 95 --exclude-fs-type tmpfs,overlay",
        "sensu/check-disk-usage:0.6.0",
        "",
    ),
    (
        "http",
        "http-check --url https://{{ .labels.fqdn }}/healthz --timeout 10",
        "sensu/http-checks:0.7.0",
        "",
    ),
    (
        "node-exporter",
        "sensu-prometheus-collector -exporter-url http://localhost:9100/metrics",
        "sensu/sensu-prometheus-collector:1.3.3",
        "influxdb_line",
    ),
    (
        "nginx-metrics",
        "metrics-nginx.rb --url http://127.0.0.1:8080/nginx_status",
        "sensu-plugins/sensu-plugins-nginx:3.1.2",
        "graphite_plaintext",
    ),
    (
        "ntp",
        "check-ntp --warning 50 --critical 100",
        "sensu/check-ntp:0.1.0",
        "",
    ),
    (
        "postgres-replication",
        "check-postgres-replication.rb -m db-primary -s db-replica -d postgres -w 5 -c 10",
        "sensu-plugins/sensu-plugins-postgres:4.1.0",
        "",
    ),
];

/// Handler templates: name stem, command, runtime asset, secret env var.
const HANDLERS: [(&str, &str, &str, &str); 3] = [
    (
        "slack",
        "sensu-slack-handler --channel \"#ops-alerts\" --username sensu --icon-url https://docs.sensu.io/images/sensu-logo-icon-dark@2x.png",
        "sensu/sensu-slack-handler:1.5.0",
        "SLACK_WEBHOOK_URL",
    ),
    (
        "pagerduty",
        "sensu-pagerduty-handler --dedup-key-template \"{{.Entity.Name}}-{{.Check.Name}}\" --status-map '{\"critical\": [2], \"warning\": [1]}'",
        "sensu/sensu-pagerduty-handler:2.2.0",
        "PAGERDUTY_TOKEN",
    ),
    (
        "influxdb",
        "sensu-influxdb-handler --addr http://influxdb.monitoring.svc:8086 --db-name sensu",
        "sensu/sensu-influxdb-handler:3.7.0",
        "INFLUXDB_PASSWORD",
    ),
];

/// Filter templates: name stem, action, expressions.
const FILTERS: [(&str, &str, &[&str]); 3] = [
    (
        "fatigue-check",
        "allow",
        &["event.check.occurrences == 1 || event.check.occurrences % 30 == 0"],
    ),
    (
        "production-only",
        "allow",
        &[
            "event.entity.labels.environment == 'production'",
            "event.check.status != 0 || event.check.occurrences_watermark > 1",
        ],
    ),
    (
        "business-hours",
        "deny",
        &[
            "hour(event.check.issued) < 9",
            "hour(event.check.issued) > 17",
            "weekday(event.check.issued) == 0 || weekday(event.check.issued) == 6",
        ],
    ),
];

/// Asset templates: namespace/name on Bonsai, version.
const ASSETS: [(&str, &str); 4] = [
    ("sensu/check-cpu-usage", "0.2.2"),
    ("sensu/sensu-slack-handler", "1.5.0"),
    ("sensu/http-checks", "0.7.0"),
    ("sensu/sensu-prometheus-collector", "1.3.3"),
];

/// Platforms an asset has builds for.
const PLATFORMS: [(&str, &str); 3] = [("linux", "amd64"), ("linux", "arm64"), ("darwin", "amd64")];

fn main() {
    let iterations = iterations();
    let repo = tempfile::Builder::new()
        .prefix("cairn-parse-bench-")
        .tempdir()
        .expect("create a temp dir for the generated repo");
    let bytes = generate(repo.path());
    let files = manifest_files(repo.path()).expect("list the generated repo");
    assert_eq!(
        files.len(),
        FILES,
        "the generated repo should hold {FILES} files"
    );
    let texts: Vec<(String, String)> = files
        .iter()
        .map(|file| {
            let text = fs::read_to_string(file).expect("read a generated manifest file");
            (file.display().to_string(), text)
        })
        .collect();
    check_repo(repo.path(), &texts);

    println!("Manifest parse + validate (issue 2)");
    println!(
        "repo: {RESOURCES} resources in {FILES} files ({DOCS_PER_FILE} documents each, {TEAMS} namespace folders), {:.2} MB of YAML",
        megabytes(bytes)
    );
    println!("iterations: {iterations} timed after 1 warm-up; medians below");
    println!();

    // With files: listing, reading, splitting, parsing, decoding, validating.
    let (ours_path, base_path) = paired(
        iterations,
        || ours_files(repo.path()),
        || baseline_files(repo.path()),
    );
    // Pre-read strings: parsing (and for ours decoding and validating) only.
    let (ours_text, base_text) = paired(
        iterations,
        || ours_strings(&texts),
        || baseline_strings(&texts),
    );

    println!(
        "| {:<44} | {:>10} | {:>10} | {:>8} | {:>14} |",
        "measurement", "median ms", "docs/s", "MB/s", "ours/baseline"
    );
    println!(
        "|{:-<46}|{:->11}:|{:->11}:|{:->9}:|{:->15}:|",
        "", "", "", "", ""
    );
    row(
        "ours: codec::load_path(dir)",
        ours_path,
        bytes,
        Some(ratio(ours_path, base_path)),
    );
    row(
        "baseline: read files + serde_yaml::Value",
        base_path,
        bytes,
        None,
    );
    row(
        "ours: codec::load_str on pre-read text",
        ours_text,
        bytes,
        Some(ratio(ours_text, base_text)),
    );
    row(
        "baseline: serde_yaml::Value on pre-read text",
        base_text,
        bytes,
        None,
    );
    println!();
    for (label, ours, base) in [
        ("with file IO", ours_path, base_path),
        ("pre-read text", ours_text, base_text),
    ] {
        let ratio = ratio(ours, base);
        let verdict = if ratio >= GOAL { "meets" } else { "MISSES" };
        println!("ratio {label}: {ratio:.2} ({verdict} the goal of >= {GOAL})");
    }
    println!();

    phases(iterations, &texts, bytes);
}

/// Timed iterations, from `CAIRN_BENCH_ITERATIONS` or the default.
fn iterations() -> usize {
    match std::env::var("CAIRN_BENCH_ITERATIONS") {
        Ok(value) => {
            let iterations: usize = value
                .trim()
                .parse()
                .expect("CAIRN_BENCH_ITERATIONS must be a positive integer");
            assert!(iterations > 0, "CAIRN_BENCH_ITERATIONS must be at least 1");
            iterations
        }
        Err(_) => DEFAULT_ITERATIONS,
    }
}

/// Asserts that the repo is what the bench claims to measure: every document a valid resource
/// for ours, and every document a YAML document for the baseline.
fn check_repo(repo: &Path, texts: &[(String, String)]) {
    let loaded = load_path(repo);
    if !loaded.problems.is_empty() || loaded.resources.len() != RESOURCES {
        for problem in loaded.problems.iter().take(20) {
            eprintln!("{problem}");
        }
        panic!(
            "the generated repo must load as {RESOURCES} resources with no problems; got {} resources, {} unsupported, {} problems over {} documents",
            loaded.resources.len(),
            loaded.unsupported.len(),
            loaded.problems.len(),
            loaded.documents,
        );
    }
    assert_eq!(loaded.documents, RESOURCES, "documents seen by load_path");
    assert_eq!(loaded.files, FILES, "files read by load_path");
    assert_eq!(ours_strings(texts), RESOURCES, "resources from load_str");
    assert_eq!(
        baseline_strings(texts),
        RESOURCES,
        "documents seen by serde_yaml"
    );
    assert_eq!(
        baseline_files(repo),
        RESOURCES,
        "documents seen by serde_yaml"
    );
}

/// Runs `ours` and `baseline` once as a warm-up and then `iterations` times each, alternating
/// (and swapping which goes first every iteration) so machine noise hits both; returns the
/// median of each.
fn paired(
    iterations: usize,
    mut ours: impl FnMut() -> usize,
    mut baseline: impl FnMut() -> usize,
) -> (Duration, Duration) {
    black_box(ours());
    black_box(baseline());
    let mut ours_times = Vec::with_capacity(iterations);
    let mut base_times = Vec::with_capacity(iterations);
    for iteration in 0..iterations {
        if iteration % 2 == 0 {
            ours_times.push(time(&mut ours));
            base_times.push(time(&mut baseline));
        } else {
            base_times.push(time(&mut baseline));
            ours_times.push(time(&mut ours));
        }
    }
    (median(ours_times), median(base_times))
}

/// Times one call; the count it returns must be every resource, so nothing is skipped.
fn time(run: &mut impl FnMut() -> usize) -> Duration {
    let start = Instant::now();
    let count = black_box(run());
    let elapsed = start.elapsed();
    assert_eq!(count, RESOURCES, "a timed run lost documents");
    elapsed
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    let mid = times.len() / 2;
    if times.len() % 2 == 0 {
        (times[mid - 1] + times[mid]) / 2
    } else {
        times[mid]
    }
}

/// Ours, from the folder: `load_path` lists, reads, splits, parses, decodes and validates.
fn ours_files(repo: &Path) -> usize {
    let loaded = load_path(repo);
    let count = loaded.resources.len();
    black_box(loaded);
    count
}

/// The baseline, from the folder: the same listing, then every file read and every document
/// parsed into a `serde_yaml::Value`.
fn baseline_files(repo: &Path) -> usize {
    let files = manifest_files(repo).expect("list the generated repo");
    let mut count = 0;
    for file in files {
        let text = fs::read_to_string(&file).expect("read a generated manifest file");
        count += yaml_values(&text);
    }
    count
}

/// Ours, on pre-read text.
fn ours_strings(texts: &[(String, String)]) -> usize {
    let mut count = 0;
    for (name, text) in texts {
        let loaded = load_str(name, text);
        count += loaded.resources.len();
        black_box(loaded);
    }
    count
}

/// The baseline, on pre-read text.
fn baseline_strings(texts: &[(String, String)]) -> usize {
    texts.iter().map(|(_, text)| yaml_values(text)).sum()
}

/// Parses every document of `text` into a `serde_yaml::Value`; returns how many.
fn yaml_values(text: &str) -> usize {
    let mut count = 0;
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(document).expect("generated YAML parses");
        black_box(value);
        count += 1;
    }
    count
}

/// Times the stages of ours separately through the public API, on pre-read text, to show
/// where the time goes. It runs the codec's pipeline document by document (so each document
/// is still hot in cache when it is decoded and validated) with a clock around each stage:
/// splitting on `---` lines, YAML into `serde_json::Value` (what the codec parses into),
/// `Resource::from_document`, and `validate`. The rest of `load_str` is its bookkeeping
/// (locations, the type set, the result lists) and dropping the result.
fn phases(iterations: usize, texts: &[(String, String)], bytes: usize) {
    const STAGES: [&str; 4] = [
        "split on --- lines",
        "YAML into serde_json::Value",
        "Resource::from_document",
        "validate",
    ];
    // Per round: the stages, and `load_str` itself run in the same round (alternating which
    // goes first) so that the rest is computed from timings that saw the same machine noise.
    let mut rounds: Vec<[Duration; 4]> = Vec::with_capacity(iterations);
    let mut whole: Vec<Duration> = Vec::with_capacity(iterations);
    let mut rests: Vec<f64> = Vec::with_capacity(iterations);
    // The first round is the warm-up.
    for round in 0..=iterations {
        let (stages, load) = if round % 2 == 0 {
            let stages = staged(texts);
            (stages, time(&mut || ours_strings(texts)))
        } else {
            let load = time(&mut || ours_strings(texts));
            (staged(texts), load)
        };
        if round > 0 {
            rests.push(millis(load) - millis(stages.iter().sum()));
            rounds.push(stages);
            whole.push(load);
        }
    }
    let ours_text = median(whole);
    rests.sort_by(f64::total_cmp);
    let rest_ms = rests[rests.len() / 2];
    let medians: Vec<Duration> = (0..STAGES.len())
        .map(|stage| median(rounds.iter().map(|round| round[stage]).collect()))
        .collect();

    println!(
        "Where ours spends its time (pre-read text, medians, each stage clocked per document):"
    );
    println!();
    println!(
        "| {:<44} | {:>10} | {:>10} | {:>8} | {:>14} |",
        "stage", "median ms", "docs/s", "MB/s", "share of ours"
    );
    println!(
        "|{:-<46}|{:->11}:|{:->11}:|{:->9}:|{:->15}:|",
        "", "", "", "", ""
    );
    row_share(
        "codec::load_str, in the same rounds",
        ours_text,
        bytes,
        ours_text,
    );
    for (label, elapsed) in STAGES.iter().zip(&medians) {
        row_share(label, *elapsed, bytes, ours_text);
    }
    println!(
        "| {:<44} | {:>10.1} | {:>10} | {:>8} | {:>13.0}% |",
        "rest of load_str (bookkeeping, drops)",
        rest_ms,
        "",
        "",
        100.0 * rest_ms / millis(ours_text)
    );
}

/// One run of the codec's pipeline over `texts`, document by document, with a clock around
/// each stage: split, parse, decode, validate.
fn staged(texts: &[(String, String)]) -> [Duration; 4] {
    let mut stages = [Duration::ZERO; 4];
    let mut count = 0;
    for (_, text) in texts {
        let start = Instant::now();
        let chunks = split_documents(text);
        stages[0] += start.elapsed();
        for chunk in chunks {
            let start = Instant::now();
            let value: serde_json::Value =
                serde_yaml::from_str(chunk).expect("generated YAML parses");
            let parsed = Instant::now();
            let decoded = Resource::from_document(value);
            let decoded_at = Instant::now();
            let resource = match decoded {
                Ok(Decoded::Resource(resource)) => resource,
                Ok(Decoded::Unsupported(unsupported)) => {
                    panic!("generated document decoded as {unsupported}")
                }
                Err(issue) => panic!("generated document does not decode: {issue}"),
            };
            let issues = validate(&resource);
            let validated = Instant::now();
            stages[1] += parsed - start;
            stages[2] += decoded_at - parsed;
            stages[3] += validated - decoded_at;
            assert!(issues.is_empty(), "generated resources validate cleanly");
            black_box(resource);
            count += 1;
        }
    }
    assert_eq!(count, RESOURCES, "documents run through the stages");
    stages
}

/// The codec's document split (private there), repeated here to time it on its own: chunks
/// between lines that start with `---`, skipping chunks of only blanks and comments.
fn split_documents(text: &str) -> Vec<&str> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with("---") {
            chunks.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    chunks.push(&text[start..]);
    chunks.retain(|chunk| {
        chunk.lines().any(|line| {
            let line = line.trim();
            !line.is_empty() && !line.starts_with('#')
        })
    });
    chunks
}

fn row(label: &str, elapsed: Duration, bytes: usize, ratio: Option<f64>) {
    let ratio = ratio.map_or(String::new(), |ratio| format!("{ratio:.2}"));
    println!(
        "| {label:<44} | {:>10.1} | {:>10.0} | {:>8.2} | {ratio:>14} |",
        millis(elapsed),
        docs_per_second(elapsed),
        megabytes_per_second(bytes, elapsed),
    );
}

/// A row of the stage table: time, throughput and share of `whole`.
fn row_share(label: &str, elapsed: Duration, bytes: usize, whole: Duration) {
    println!(
        "| {label:<44} | {:>10.1} | {:>10.0} | {:>8.2} | {:>13.0}% |",
        millis(elapsed),
        docs_per_second(elapsed),
        megabytes_per_second(bytes, elapsed),
        100.0 * elapsed.as_secs_f64() / whole.as_secs_f64()
    );
}

/// Throughput of ours over throughput of the baseline.
fn ratio(ours: Duration, baseline: Duration) -> f64 {
    baseline.as_secs_f64() / ours.as_secs_f64()
}

fn millis(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1e3
}

fn docs_per_second(elapsed: Duration) -> f64 {
    RESOURCES as f64 / elapsed.as_secs_f64()
}

/// MB are 10^6 bytes.
fn megabytes(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

fn megabytes_per_second(bytes: usize, elapsed: Duration) -> f64 {
    megabytes(bytes) / elapsed.as_secs_f64()
}

/// Writes the repo under `root`: `namespaces/team-NN/manifests-NNN.yaml`, each file a header
/// comment and `DOCS_PER_FILE` documents, each starting with `---`. Returns the bytes written.
fn generate(root: &Path) -> usize {
    let mut rng = SplitMix64(0x00c0_ffee_ca12_0002);
    let mut total = 0;
    for file in 0..FILES {
        let team = file % TEAMS;
        let namespace = format!("team-{team:02}");
        let dir: PathBuf = root.join("namespaces").join(&namespace);
        fs::create_dir_all(&dir).expect("create a namespace folder in the temp repo");
        let mut text = String::new();
        writeln!(
            text,
            "# Monitoring for {namespace}, part {file}. Applied by cairn; edit and open a pull request."
        )
        .expect("write to a String");
        for (slot, doc) in LAYOUT.iter().enumerate() {
            let index = file * DOCS_PER_FILE + slot;
            text.push_str("---\n");
            let ctx = Ctx {
                index,
                team,
                namespace: &namespace,
            };
            match doc {
                Doc::Check => check(&mut text, &ctx, &mut rng),
                Doc::Handler => handler(&mut text, &ctx),
                Doc::Asset => asset(&mut text, &ctx, &mut rng),
                Doc::Secret => secret(&mut text, &ctx),
                Doc::Filter => filter(&mut text, &ctx),
            }
        }
        total += text.len();
        let path = dir.join(format!("manifests-{file:03}.yaml"));
        fs::write(&path, text).expect("write a generated manifest file");
    }
    total
}

/// What a document generator needs to know about its place in the repo.
struct Ctx<'a> {
    /// Global document number, for unique names.
    index: usize,
    team: usize,
    namespace: &'a str,
}

/// Writes `metadata:` with the labels every team puts on its resources.
fn metadata(text: &mut String, ctx: &Ctx<'_>, name: &str, annotations: &[(&str, String)]) {
    let environment = if ctx.team % 5 == 0 {
        "staging"
    } else {
        "production"
    };
    writeln!(
        text,
        "metadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    app.kubernetes.io/part-of: monitoring\n    cairn.io/managed-by: cairn\n    environment: {environment}\n    team: {ns}",
        ns = ctx.namespace
    )
    .expect("write to a String");
    if !annotations.is_empty() {
        text.push_str("  annotations:\n");
        for (key, value) in annotations {
            writeln!(text, "    {key}: {value}").expect("write to a String");
        }
    }
}

fn header(text: &mut String, type_name: &str, api_version: &str) {
    writeln!(text, "type: {type_name}\napi_version: {api_version}").expect("write to a String");
}

fn check(text: &mut String, ctx: &Ctx<'_>, rng: &mut SplitMix64) {
    let (stem, command, runtime_asset, metric_format) = CHECKS[ctx.index % CHECKS.len()];
    let name = format!("check-{stem}-{:05}", ctx.index);
    header(text, "CheckConfig", "core/v2");
    metadata(
        text,
        ctx,
        &name,
        &[
            (
                "runbook",
                format!("https://runbooks.example.com/{}/{stem}", ctx.namespace),
            ),
            ("fatigue_check/occurrences", "\"3\"".to_owned()),
            ("fatigue_check/interval", "\"1800\"".to_owned()),
        ],
    );
    text.push_str("spec:\n");
    writeln!(text, "  command: {command}").expect("write to a String");
    // One check in ten runs on a cron schedule instead of an interval.
    if ctx.index % 10 == 7 {
        text.push_str("  cron: \"*/5 * * * *\"\n  interval: 0\n");
    } else {
        let interval = [30, 60, 60, 120, 300][(rng.next() % 5) as usize];
        writeln!(text, "  interval: {interval}").expect("write to a String");
        if ctx.index % 3 == 0 {
            writeln!(text, "  ttl: {}", interval * 3).expect("write to a String");
        }
    }
    writeln!(
        text,
        "  timeout: 30\n  publish: true\n  round_robin: false\n  stdin: false\n  subscriptions:\n  - system/{os}\n  - {ns}",
        ns = ctx.namespace,
        os = if ctx.index % 4 == 0 { "windows" } else { "linux" },
    )
    .expect("write to a String");
    writeln!(
        text,
        "  handlers:\n  - slack-{ns}\n  - pagerduty-{ns}",
        ns = ctx.namespace
    )
    .expect("write to a String");
    writeln!(text, "  runtime_assets:\n  - {runtime_asset}").expect("write to a String");
    writeln!(
        text,
        "  env_vars:\n  - \"CHECK_LANG=en_US.UTF-8\"\n  - PATH=/opt/sensu/embedded/bin:/usr/local/bin:/usr/bin:/bin\n  - SENSU_TEAM={}",
        ctx.namespace
    )
    .expect("write to a String");
    if ctx.index % 5 == 1 {
        text.push_str("  secrets:\n  - name: DB_PASSWORD\n    secret: postgres-monitor-password\n");
    }
    if ctx.index % 20 == 4 {
        text.push_str(
            "  proxy_requests:\n    entity_attributes:\n    - entity.entity_class == 'proxy'\n    - entity.labels.proxy_type == 'website'\n    splay: true\n    splay_coverage: 90\n",
        );
    }
    if !metric_format.is_empty() {
        writeln!(
            text,
            "  output_metric_format: {metric_format}\n  output_metric_handlers:\n  - influxdb-{ns}\n  output_metric_tags:\n  - name: team\n    value: {ns}\n  - name: region\n    value: eu-west-1",
            ns = ctx.namespace
        )
        .expect("write to a String");
    }
    text.push_str("  high_flap_threshold: 60\n  low_flap_threshold: 20\n");
}

fn handler(text: &mut String, ctx: &Ctx<'_>) {
    let (stem, command, runtime_asset, env) = HANDLERS[ctx.index % HANDLERS.len()];
    let name = format!("{stem}-{}-{:05}", ctx.namespace, ctx.index);
    header(text, "Handler", "core/v2");
    metadata(
        text,
        ctx,
        &name,
        &[(
            "sensu.io/plugins/slack/config/channel",
            format!("\"#{}-alerts\"", ctx.namespace),
        )],
    );
    writeln!(
        text,
        "spec:\n  type: pipe\n  command: >-\n    {command}\n  timeout: 10\n  filters:\n  - is_incident\n  - not_silenced\n  - fatigue-check-{ns}",
        ns = ctx.namespace
    )
    .expect("write to a String");
    writeln!(text, "  runtime_assets:\n  - {runtime_asset}").expect("write to a String");
    writeln!(
        text,
        "  secrets:\n  - name: {env}\n    secret: {stem}-{ns}-token",
        ns = ctx.namespace
    )
    .expect("write to a String");
    text.push_str("  env_vars:\n  - SENSU_HANDLER_LOG_LEVEL=info\n");
}

fn asset(text: &mut String, ctx: &Ctx<'_>, rng: &mut SplitMix64) {
    let (bonsai, version) = ASSETS[ctx.index % ASSETS.len()];
    let name = format!("{bonsai}-{:05}", ctx.index);
    let short = bonsai.rsplit('/').next().unwrap_or(bonsai);
    header(text, "Asset", "core/v2");
    metadata(
        text,
        ctx,
        &name,
        &[
            (
                "io.sensu.bonsai.url",
                format!("https://bonsai.sensu.io/assets/{bonsai}"),
            ),
            ("io.sensu.bonsai.version", version.to_owned()),
            ("io.sensu.bonsai.tier", "Supported".to_owned()),
        ],
    );
    text.push_str("spec:\n  builds:\n");
    for (os, arch) in PLATFORMS {
        writeln!(
            text,
            "  - url: https://assets.bonsai.sensu.io/{hash}/{short}_{version}_{os}_{arch}.tar.gz\n    sha512: {sha}\n    filters:\n    - entity.system.os == '{os}'\n    - entity.system.arch == '{arch}'",
            hash = rng.hex(40),
            sha = rng.hex(128),
        )
        .expect("write to a String");
    }
}

fn secret(text: &mut String, ctx: &Ctx<'_>) {
    let (stem, _, _, env) = HANDLERS[ctx.index % HANDLERS.len()];
    let name = format!("{stem}-{}-token-{:05}", ctx.namespace, ctx.index);
    header(text, "Secret", "secrets/v1");
    metadata(text, ctx, &name, &[]);
    writeln!(text, "spec:\n  id: {env}\n  provider: env").expect("write to a String");
}

fn filter(text: &mut String, ctx: &Ctx<'_>) {
    let (stem, action, expressions) = FILTERS[ctx.index % FILTERS.len()];
    let name = format!("{stem}-{}-{:05}", ctx.namespace, ctx.index);
    header(text, "EventFilter", "core/v2");
    metadata(text, ctx, &name, &[]);
    writeln!(text, "spec:\n  action: {action}\n  expressions:").expect("write to a String");
    for expression in expressions {
        writeln!(text, "  - \"{expression}\"").expect("write to a String");
    }
}

/// A small deterministic generator, so every run measures the same bytes.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `len` lower-case hex digits.
    fn hex(&mut self, len: usize) -> String {
        let mut out = String::with_capacity(len + 16);
        while out.len() < len {
            write!(out, "{:016x}", self.next()).expect("write to a String");
        }
        out.truncate(len);
        out
    }
}
