//! Metrics extraction end to end: a real agent runs checks printing each of Sensu's five
//! `output_metric_format`s, with `output_metric_tags` holding entity tokens, and a real backend
//! routes the results to the pipe handler named in `output_metric_handlers`, which writes each
//! event it gets into a file; plus `output_metric_thresholds` raising a status and
//! `discard_output` blanking the output.

use std::path::Path;
use std::time::Duration;

use cairn_api::client::Client;
use cairn_tests::{eventually, AgentInstall, Backend};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const NS: &str = "default";
const ENTITY: &str = "metrics-01";

/// A check's result reaching its handler: an agent's first run, the session and the pipeline.
const WAIT: Duration = Duration::from_secs(40);

async fn put(admin: &Client, plural: &str, name: &str, mut body: Value) {
    body["metadata"] = json!({"name": name, "namespace": NS});
    let path = format!("/api/core/v2/namespaces/{NS}/{plural}/{name}");
    let response = admin
        .send(Method::PUT, &path, Some(&body))
        .await
        .unwrap_or_else(|err| panic!("PUT {path}: {err}"));
    assert!(response.status().is_success(), "PUT {path}: {response:?}");
}

async fn join_token(admin: &Client) -> String {
    let body = json!({"ttl_seconds": 600, "uses": 1, "subscriptions": ["linux"], "namespace": NS});
    let response = admin
        .send(Method::POST, "/api/cairn/v1/jointokens", Some(&body))
        .await
        .expect("create a join token");
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.expect("the token as JSON");
    created["token"].as_str().expect("a token").to_owned()
}

/// A check printing `output`, its points tagged with the entity's name and `region` label.
fn check(output: &str, format: &str) -> Value {
    json!({
        "command": format!("printf '{output}'"),
        "interval": 2,
        "subscriptions": ["linux"],
        "publish": true,
        "output_metric_format": format,
        "output_metric_handlers": ["h"],
        "output_metric_tags": [
            {"name": "host", "value": "{{ .name }}"},
            {"name": "region", "value": "{{ .labels.region | default \"none\" }}"},
        ],
    })
}

/// Every event the handler wrote so far, by check name (the last one of each).
fn handled(dir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .filter_map(|text| serde_json::from_str(&text).ok())
        .collect()
}

/// Waits for an event of `check` at the handler, and returns it.
async fn event_of(dir: &Path, check: &str, agent: &cairn_tests::Agent, backend: &Backend) -> Value {
    eventually(
        &format!("the handler getting {check}'s metrics"),
        WAIT,
        || async {
            handled(dir)
                .into_iter()
                .find(|event| event["check"]["metadata"]["name"] == check)
                .ok_or_else(|| {
                    format!(
                        "agent log:\n{}\nbackend log:\n{}",
                        agent.log(),
                        backend.log()
                    )
                })
        },
    )
    .await
}

/// The points of `event` as `name value timestamp tag=value,…` lines.
fn points(event: &Value) -> Vec<String> {
    event["metrics"]["points"]
        .as_array()
        .unwrap_or_else(|| panic!("no points in {event:#}"))
        .iter()
        .map(|point| {
            let tags: Vec<String> = point["tags"]
                .as_array()
                .map(|tags| {
                    tags.iter()
                        .map(|tag| {
                            format!(
                                "{}={}",
                                tag["name"].as_str().unwrap_or("?"),
                                tag["value"].as_str().unwrap_or("?")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "{} {} {} {}",
                point["name"].as_str().unwrap_or("?"),
                point["value"],
                point["timestamp"],
                tags.join(",")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_format_reaches_the_metric_handler_with_tokens_thresholds_and_discarded_output() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().display();
    put(
        &admin,
        "handlers",
        "h",
        json!({
            "type": "pipe",
            "command": format!("cat > {dir}/event.$$.tmp && mv {dir}/event.$$.tmp {dir}/event.$$.json"),
            "timeout": 10,
        }),
    )
    .await;

    let checks = [
        (
            "graphite",
            check(
                r"app.requests 42 1700000000\napp.errors 1.5 1700000001\n",
                "graphite_plaintext",
            ),
        ),
        (
            "influx",
            check(
                r"cpu,core=0 user=12.5,system=3 1700000000123456789\n",
                "influxdb_line",
            ),
        ),
        (
            "nagios",
            check(
                r"DISK OK - free space | /=2643MB;5948;5958;0;5968 /boot=68MB\n",
                "nagios_perfdata",
            ),
        ),
        (
            "opentsdb",
            check(r"sys.load 1700000000123 0.75 dc=1\n", "opentsdb_line"),
        ),
        (
            "prometheus",
            check(
                r#"# HELP temp_celsius Temperature.\n# TYPE temp_celsius gauge\ntemp_celsius{room="a"} 21.5 1700000000999\n"#,
                "prometheus_text",
            ),
        ),
    ];
    for (name, spec) in &checks {
        put(&admin, "checks", name, spec.clone()).await;
    }
    let mut thresholds = check(r"disk.used 95 1700000000\n", "graphite_plaintext");
    thresholds["output_metric_thresholds"] = json!([
        {"name": "disk.used", "thresholds": [{"max": "90", "status": 2}]},
    ]);
    put(&admin, "checks", "thresholds", thresholds).await;
    let mut discard = check(r"kept.metric 7 1700000000\n", "graphite_plaintext");
    discard["discard_output"] = json!(true);
    put(&admin, "checks", "discard", discard).await;

    let install = AgentInstall::install(&backend, &join_token(&admin).await, ENTITY);
    let config = install.config();
    let yaml = std::fs::read_to_string(&config).expect("agent.yaml");
    assert!(!yaml.contains("labels:"), "{yaml}");
    std::fs::write(&config, format!("{yaml}labels:\n  region: eu-west-1\n")).expect("agent.yaml");
    let agent = install.start();

    let tags = format!("host={ENTITY},region=eu-west-1");
    let graphite = event_of(out.path(), "graphite", &agent, &backend).await;
    assert_eq!(
        points(&graphite),
        [
            format!("app.requests 42 1700000000 {tags}"),
            format!("app.errors 1.5 1700000001 {tags}"),
        ]
    );
    assert_eq!(graphite["metrics"]["handlers"], json!(["h"]));
    assert_eq!(graphite["check"]["status"], 0);
    assert_eq!(
        graphite["check"]["output_metric_tags"][0]["value"], ENTITY,
        "the event carries the substituted tags, as Sensu's does"
    );

    let influx = event_of(out.path(), "influx", &agent, &backend).await;
    assert_eq!(
        points(&influx),
        [
            format!("cpu.user 12.5 1700000000 core=0,{tags}"),
            format!("cpu.system 3 1700000000 core=0,{tags}"),
        ]
    );

    let nagios = event_of(out.path(), "nagios", &agent, &backend).await;
    let executed = &nagios["check"]["executed"];
    assert!(
        executed.as_i64().is_some_and(|at| at > 1_700_000_000),
        "{nagios:#}"
    );
    assert_eq!(
        points(&nagios),
        [
            format!("/ 2643 {executed} {tags}"),
            format!("/boot 68 {executed} {tags}"),
        ]
    );

    let opentsdb = event_of(out.path(), "opentsdb", &agent, &backend).await;
    assert_eq!(
        points(&opentsdb),
        [format!("sys.load 0.75 1700000000 dc=1,{tags}")]
    );

    let prometheus = event_of(out.path(), "prometheus", &agent, &backend).await;
    assert_eq!(
        points(&prometheus),
        [format!(
            "temp_celsius 21.5 1700000000 room=a,prom_type=gauge,prom_help=Temperature.,{tags}"
        )]
    );

    let raised = event_of(out.path(), "thresholds", &agent, &backend).await;
    assert_eq!(raised["check"]["status"], 2, "{raised:#}");
    assert_eq!(
        raised["metadata"]["annotations"]["sensu.io/notifications/critical"],
        "The value of disk.used exceeded the configured threshold (max: 90, actual: 95).",
        "{raised:#}"
    );
    assert_eq!(points(&raised), [format!("disk.used 95 1700000000 {tags}")]);

    let discarded = event_of(out.path(), "discard", &agent, &backend).await;
    assert_eq!(
        points(&discarded),
        [format!("kept.metric 7 1700000000 {tags}")]
    );
    assert!(
        discarded["check"]["output"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{discarded:#}"
    );
    assert_eq!(
        graphite["check"]["output"], "app.requests 42 1700000000\napp.errors 1.5 1700000001\n",
        "output is kept without discard_output"
    );
    drop(agent);
}
