//! `cairnctl` against a real backend process: configure, users, groups, API keys, create -f on
//! the example manifests, get in every format, delete — as an operator types them.

use cairn_tests::{command, Backend, ADMIN_PASSWORD};

use crate::common::{cairnctl, configure, manifests, ok};

#[test]
fn operator_flow_through_cairnctl() {
    let backend = Backend::start();
    let config = tempfile::tempdir().expect("tempdir");
    let config_dir = config.path();
    let ca_file = backend.ca_file();
    let ca = ca_file.to_str().expect("utf-8 path");

    // Not configured yet: a usage error that says what to run.
    let (code, _, stderr) = cairnctl(config_dir, &["get", "checks"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("cairnctl configure"), "{stderr}");

    // Wrong password: refused, nothing saved.
    let (code, _, stderr) = cairnctl(
        config_dir,
        &[
            "configure",
            "--url",
            &backend.url,
            "--ca-file",
            ca,
            "--username",
            "admin",
            "--password",
            "wrong-password",
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");

    configure(config_dir, &backend, "admin", ADMIN_PASSWORD);
    let saved = config_dir.join("cairnctl.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&saved)
            .expect("config saved")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "the config holds tokens");
    }

    ok(
        config_dir,
        &[
            "user",
            "create",
            "webinar",
            "--password",
            "webinar-password",
            "--groups",
            "ops",
        ],
    );
    ok(
        config_dir,
        &["user", "add-group", "webinar", "cluster-admins"],
    );
    let users = ok(config_dir, &["user", "list"]);
    assert!(
        users.contains("webinar  ops,cluster-admins  false"),
        "{users}"
    );
    let granted = ok(config_dir, &["api-key", "grant", "webinar"]);
    let key = granted.trim().rsplit('/').next().expect("a key").to_owned();
    assert_eq!(key.len(), 36, "{granted}");

    // The key works for cairnctl too, through the environment.
    let created = command("cairnctl")
        .args(["create", "-f"])
        .arg(manifests())
        .env("CAIRN_CONFIG_DIR", config_dir)
        .env("CAIRN_API_KEY", &key)
        .output()
        .expect("run create");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let stdout = String::from_utf8(created.stdout).expect("utf-8");
    assert!(stdout.contains("created namespaces/demo"), "{stdout}");
    assert!(stdout.contains("created checks/demo/uptime"), "{stdout}");

    let table = ok(config_dir, &["get", "checks", "-n", "demo"]);
    assert!(
        table.lines().any(|line| line.starts_with("uptime")
            && line.contains("demo")
            && line.contains("webinar")),
        "{table}"
    );
    let yaml = ok(
        config_dir,
        &["get", "checks", "uptime", "-n", "demo", "-o", "yaml"],
    );
    assert!(
        yaml.contains("type: CheckConfig") && yaml.contains("command: uptime"),
        "{yaml}"
    );
    // What get -o yaml prints, create -f takes back.
    let round_trip = config.path().join("uptime.yaml");
    std::fs::write(&round_trip, &yaml).expect("write");
    ok(
        config_dir,
        &["create", "-f", round_trip.to_str().expect("utf-8")],
    );

    // Invalid input: nothing applied, the error names the file and line.
    let bad = config.path().join("bad.yaml");
    std::fs::write(&bad, "type: CheckConfig\napi_version: core/v2\nmetadata:\n  name: new-check\n  namespace: demo\nspec:\n  command: x\n  intreval: 10\n").expect("write");
    let (code, _, stderr) = cairnctl(config_dir, &["create", "-f", bad.to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("bad.yaml:8:3: document 1: spec.intreval: unknown field"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was applied"), "{stderr}");
    let (code, _, _) = cairnctl(config_dir, &["get", "checks", "new-check", "-n", "demo"]);
    assert_eq!(code, 1);

    ok(config_dir, &["delete", "checks", "uptime", "-n", "demo"]);
    let (code, _, stderr) = cairnctl(config_dir, &["delete", "checks", "uptime", "-n", "demo"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not found"), "{stderr}");

    // Disabling the user stops its API key at once.
    ok(config_dir, &["user", "disable", "webinar"]);
    let refused = command("cairnctl")
        .args(["get", "namespaces"])
        .env("CAIRN_CONFIG_DIR", config_dir)
        .env("CAIRN_API_KEY", &key)
        .output()
        .expect("run get");
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
}

fn parse_json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("not one JSON value ({err}):\n{text}"))
}

/// The objects of a stream of JSON objects written one after another.
fn json_stream(text: &str) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<serde_json::Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|err| panic!("not a JSON stream ({err}):\n{text}"))
}

/// The cells of the table row whose first cell is `first`.
fn table_row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|line| line.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first} in\n{table}"))
        .split("  ")
        .map(str::trim)
        .filter(|cell| !cell.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sensuctl_names_formats_and_tables() {
    use cairn_api::client::Client;
    use reqwest::Method;
    use serde_json::json;

    let backend = Backend::start();
    let admin: Client = backend.admin().await;
    let config = tempfile::tempdir().expect("tempdir");
    let config_dir = config.path();
    configure(config_dir, &backend, "admin", ADMIN_PASSWORD);

    for (name, command) in [("disk", "df -h"), ("cpu", "uptime")] {
        admin
            .send(
                Method::PUT,
                &format!("/api/core/v2/namespaces/default/checks/{name}"),
                Some(&json!({
                    "metadata": {"name": name, "namespace": "default", "labels": {"team": "ops"}},
                    "command": command, "interval": 60, "subscriptions": ["linux"],
                    "handlers": [], "publish": true,
                })),
            )
            .await
            .unwrap_or_else(|err| panic!("create the check {name}: {err}"));
    }

    // Every way sensuctl names a type.
    for type_name in [
        "check",
        "checks",
        "CheckConfig",
        "check_config",
        "core/v2.CheckConfig",
    ] {
        let table = ok(config_dir, &["get", type_name, "disk"]);
        assert_eq!(
            table_row(&table, "disk"),
            ["disk", "default", "admin"],
            "{type_name}"
        );
        assert!(!table.contains("cpu"), "{type_name}: {table}");
    }
    let table = ok(config_dir, &["get", "role-bindings"]);
    assert!(table.starts_with("NAME"), "{table}");
    let table = ok(config_dir, &["get", "cluster-role", "cluster-admin"]);
    assert_eq!(table_row(&table, "cluster-admin")[0], "cluster-admin");

    // -o json: the bare REST object (spec fields at the top), an array for a list.
    let disk = parse_json(&ok(
        config_dir,
        &["get", "core/v2.CheckConfig", "disk", "-o", "json"],
    ));
    assert_eq!(disk["command"], "df -h", "{disk:#}");
    assert_eq!(disk["metadata"]["name"], "disk", "{disk:#}");
    assert_eq!(disk["metadata"]["labels"]["team"], "ops", "{disk:#}");
    assert!(
        disk.get("spec").is_none() && disk.get("type").is_none(),
        "{disk:#}"
    );
    let listed = parse_json(&ok(config_dir, &["get", "checks", "--format", "json"]));
    let names: Vec<&str> = listed
        .as_array()
        .unwrap_or_else(|| panic!("a list is an array: {listed:#}"))
        .iter()
        .filter_map(|check| check["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{listed:#}");
    assert!(
        names.contains(&"disk") && names.contains(&"cpu"),
        "{listed:#}"
    );
    assert!(listed
        .as_array()
        .is_some_and(|checks| checks.iter().any(|check| check == &disk)));
    // Non-core groups speak the wrapped form on the wire, so their json is wrapped too.
    let env = parse_json(&ok(config_dir, &["get", "provider", "env", "-o", "json"]));
    assert_eq!(env["type"], "Env", "{env:#}");
    let tabular = ok(config_dir, &["get", "providers", "-o", "tabular"]);
    assert_eq!(table_row(&tabular, "env")[0], "env");

    // -o wrapped-json: what create -f takes back; for several, objects one after another.
    let wrapped = ok(config_dir, &["get", "checks", "-o", "wrapped-json"]);
    let documents = json_stream(&wrapped);
    assert_eq!(documents.len(), 2, "{wrapped}");
    for document in &documents {
        assert_eq!(document["type"], "CheckConfig", "{document:#}");
        assert_eq!(document["api_version"], "core/v2", "{document:#}");
        assert!(document["spec"]["command"].is_string(), "{document:#}");
        assert!(document["spec"].get("metadata").is_none(), "{document:#}");
    }
    let yaml = ok(config_dir, &["get", "check", "disk", "-o", "yaml"]);
    assert!(
        yaml.contains("type: CheckConfig") && yaml.contains("spec:"),
        "{yaml}"
    );
    let dumped = config_dir.join("checks.json");
    std::fs::write(&dumped, &wrapped).expect("write");
    for name in ["disk", "cpu"] {
        ok(config_dir, &["delete", "check", name]);
    }
    let (code, _, stderr) = cairnctl(config_dir, &["get", "check", "disk"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(parse_json(&ok(config_dir, &["get", "checks", "-o", "json"])) == json!([]));
    let created = ok(
        config_dir,
        &["create", "-f", dumped.to_str().expect("utf-8")],
    );
    assert!(created.contains("created checks/default/disk"), "{created}");
    assert!(created.contains("created checks/default/cpu"), "{created}");
    let restored = parse_json(&ok(config_dir, &["get", "check", "disk", "-o", "json"]));
    assert_eq!(restored, disk);
    assert_eq!(
        json_stream(&ok(config_dir, &["get", "checks", "-o", "wrapped-json"])),
        documents
    );

    // Events and entities as sensuctl lists them; only the first line of an output.
    admin
        .send(
            Method::POST,
            "/api/core/v2/namespaces/default/events",
            Some(&json!({
                "entity": {"entity_class": "proxy", "metadata": {"name": "web-01"},
                           "subscriptions": ["linux"]},
                "check": {"metadata": {"name": "disk"}, "status": 2, "interval": 60,
                          "output": "CRITICAL: 95% used\nsda1 95% /var\n"},
            })),
        )
        .await
        .expect("post an event");
    let events = ok(config_dir, &["get", "events"]);
    let headings: Vec<&str> = table_row(&events, "ENTITY");
    assert_eq!(
        headings,
        ["ENTITY", "CHECK", "STATUS", "LAST SEEN", "OUTPUT"],
        "{events}"
    );
    let row = table_row(&events, "web-01");
    assert_eq!(row[..3], ["web-01", "disk", "2"], "{events}");
    assert!(row[3].ends_with("+0000 UTC"), "{events}");
    assert_eq!(row[4], "CRITICAL: 95% used…", "{events}");
    assert!(!events.contains("sda1"), "{events}");
    let event = parse_json(&ok(
        config_dir,
        &["get", "event", "web-01/disk", "-o", "json"],
    ));
    assert_eq!(
        event["check"]["output"], "CRITICAL: 95% used\nsda1 95% /var\n",
        "{event:#}"
    );
    let entities = ok(config_dir, &["get", "entities"]);
    assert_eq!(
        table_row(&entities, "ID"),
        ["ID", "CLASS", "OS", "SUBSCRIPTIONS", "LAST SEEN"],
        "{entities}"
    );
    let row = table_row(&entities, "web-01");
    assert_eq!(row[1], "proxy", "{entities}");
    assert!(
        row.iter()
            .any(|cell| cell.split(',').any(|sub| sub == "linux")),
        "{entities}"
    );
    let last_seen = row.last().copied().unwrap_or_default();
    assert!(
        last_seen == "N/A" || last_seen.ends_with("+0000 UTC"),
        "{entities}"
    );

    // Names that name nothing: a usage error naming the name and what is accepted.
    let (code, stdout, stderr) = cairnctl(config_dir, &["get", "chekcs"]);
    assert_eq!(code, 64, "{stdout}\n{stderr}");
    assert!(stderr.contains("\"chekcs\""), "{stderr}");
    assert!(
        stderr.contains("check(s)") && stderr.contains("entity/entities"),
        "{stderr}"
    );
    let (code, _, stderr) = cairnctl(config_dir, &["delete", "core/v2.Secret", "x"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("core/v2.Secret"), "{stderr}");
    let (code, _, stderr) = cairnctl(config_dir, &["get", "tessen"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("does not model"), "{stderr}");
    // A name cannot walk the request to another path: this would read the user list.
    let (code, stdout, stderr) = cairnctl(config_dir, &["get", "check", "../../../users"]);
    assert_eq!(code, 64, "{stdout}\n{stderr}");
    assert!(!stdout.contains("admin"), "{stdout}");
    let (code, _, stderr) = cairnctl(config_dir, &["get", "event", "web-01"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("ENTITY/CHECK"), "{stderr}");
    let (code, _, stderr) = cairnctl(config_dir, &["get", "checks", "-o", "xml"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("wrapped-json"), "{stderr}");
}

#[test]
fn completion_scripts() {
    let config = tempfile::tempdir().expect("tempdir");
    let bash = ok(config.path(), &["completion", "bash"]);
    assert!(bash.contains("cairnctl"), "{bash}");
    for word in ["completion", "wrapped-json", "--namespace"] {
        assert!(bash.contains(word), "{word} not completed");
    }
    let script = config.path().join("cairnctl.bash");
    std::fs::write(&script, &bash).expect("write");
    let checked = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("run bash -n");
    assert!(
        checked.status.success(),
        "bash -n refused the script: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    // And a real bash sources it and registers the completion.
    let sourced = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p cairnctl",
            script.display()
        ))
        .output()
        .expect("run bash");
    assert!(
        sourced.status.success() && String::from_utf8_lossy(&sourced.stdout).contains("cairnctl"),
        "{}",
        String::from_utf8_lossy(&sourced.stderr)
    );
    for shell in ["zsh", "fish"] {
        let script = ok(config.path(), &["completion", shell]);
        assert!(script.contains("cairnctl"), "{shell}: {script}");
    }
    let (code, _, stderr) = cairnctl(config.path(), &["completion", "tcsh"]);
    assert_eq!(code, 64, "{stderr}");
}
