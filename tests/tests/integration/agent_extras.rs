//! The agent extras Sensu users rely on (issue 19, item 7), through a real backend and a real
//! agent over mutual TLS: the TCP/UDP agent socket, the command allow list, and the keepalive
//! and deregistration handlers named in `agent.yaml`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use cairn_tests::{eventually, Agent, Backend};
use serde_json::{json, Value};
use sha2::{Digest, Sha512};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::agent::{
    enrol, entity_path, get_opt, put_check, put_resource, set_config, wait_event, wait_keepalive,
    Install,
};

/// Starts the installed agent with `settings`, its local API and socket on free ports and its
/// log in JSON (so that the socket's address can be read from it).
fn start_agent(install: &Install, settings: &[(&str, &str)]) -> Agent {
    let mut all = vec![
        ("local_api", "127.0.0.1:0"),
        ("socket", "{port: 0}"),
        ("keepalive_interval", "1"),
    ];
    all.extend_from_slice(settings);
    set_config(&install.config(), &all);
    Agent::start_with_env(&install.config(), &[("CAIRN_LOG_FORMAT", "json")])
}

/// The address the agent's socket listens on, from its log line `agent socket listening`.
async fn socket_addr(agent: &Agent) -> String {
    eventually(
        "the agent socket listening",
        Duration::from_secs(10),
        || async {
            agent
                .log()
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|line| {
                    line["fields"]["message"]
                        .as_str()
                        .is_some_and(|message| message.starts_with("agent socket listening"))
                })
                .and_then(|line| line["fields"]["addr"].as_str().map(str::to_owned))
                .ok_or_else(|| agent.log())
        },
    )
    .await
}

/// One TCP exchange with the socket: the message, then the whole answer.
async fn send_tcp(addr: &str, message: &str) -> String {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .expect("connect to the socket");
        stream
            .write_all(message.as_bytes())
            .await
            .expect("write the result");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .await
            .expect("read the answer");
        answer
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the socket answers within 10 s")
}

/// Writes an executable shell script.
fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write a script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn sha512_hex(path: &Path) -> String {
    hex::encode(Sha512::digest(
        std::fs::read(path).expect("read the script"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_results_over_tcp_and_udp_become_events() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let name = "sock-01";
    let install = enrol(&backend, &admin, name).await;
    let agent = start_agent(&install, &[]);
    let addr = socket_addr(&agent).await;
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    wait_keepalive(&admin, &agent, name).await;

    // TCP: Sensu's `echo '{…}' | nc 127.0.0.1 3030`, answered `ok`.
    let answer = send_tcp(
        &addr,
        r#"{"name": "tcp-check", "status": 1, "output": "over tcp", "handlers": ["none"]}"#,
    )
    .await;
    assert_eq!(answer, "ok");
    assert_eq!(send_tcp(&addr, r#"{"name": "no-output"}"#).await, "invalid");
    assert_eq!(send_tcp(&addr, " ping ").await, "pong");
    let event = wait_event(
        &admin,
        Some(&agent),
        (name, "tcp-check"),
        Duration::from_secs(20),
        "the TCP result stored as an event",
        |event| event["check"]["output"] == "over tcp",
    )
    .await;
    assert_eq!(event["check"]["status"], 1);
    assert_eq!(event["check"]["interval"], 1);
    assert_eq!(event["check"]["handlers"], json!(["none"]));
    assert_eq!(event["entity"]["metadata"]["name"], name);

    // UDP: unanswered; sent again until it is stored (a datagram may be lost).
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
    let datagram = br#"{"name": "udp-check", "status": 2, "output": "over udp"}"#;
    let event: Value = eventually(
        "the UDP result stored as an event",
        Duration::from_secs(20),
        || async {
            client
                .send_to(datagram, &addr)
                .await
                .map_err(|err| err.to_string())?;
            get_opt(&admin, &super::agent::event_path(name, "udp-check"))
                .await
                .filter(|event| event["check"]["output"] == "over udp")
                .ok_or_else(|| agent.log())
        },
    )
    .await;
    assert_eq!(event["check"]["status"], 2);
    assert_eq!(event["entity"]["metadata"]["name"], name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_runs_what_it_allows_only() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let name = "allow-01";
    let install = enrol(&backend, &admin, name).await;
    let root = install.root.path().to_owned();
    let allowed = root.join("allowed.sh");
    script(&allowed, "echo \"allowed greeting=$GREETING\"");
    let tampered = root.join("tampered.sh");
    script(
        &tampered,
        &format!("touch '{}'", root.join("tampered-ran").display()),
    );
    let forbidden_marker = root.join("forbidden-ran");
    let hook_marker = root.join("hook-ran");
    let allow_list = root.join("allow-list.yaml");
    std::fs::write(
        &allow_list,
        format!(
            "- exec: {allowed}\n  args: [\"\"]\n  sha512: {sha}\n\
             - exec: {allowed}\n  args: [\"--env\"]\n  sha512: {sha}\n  enable_env: true\n\
             - exec: {tampered}\n  args: [\"\"]\n  sha512: {wrong}\n",
            allowed = allowed.display(),
            tampered = tampered.display(),
            sha = sha512_hex(&allowed),
            wrong = "0".repeat(128),
        ),
    )
    .expect("write the allow list");
    let allow_list_setting = allow_list.display().to_string();
    let agent = start_agent(&install, &[("allow_list", &allow_list_setting)]);
    wait_keepalive(&admin, &agent, name).await;

    put_resource(
        &admin,
        "hooks",
        "not-listed",
        json!({"command": format!("touch '{}'", hook_marker.display()), "timeout": 10}),
    )
    .await;
    let check = |command: String| {
        json!({
            "command": command,
            "interval": 1,
            "subscriptions": ["linux"],
            "publish": true,
            "env_vars": ["GREETING=hello"],
        })
    };
    let mut allowed_check = check(allowed.display().to_string());
    allowed_check["check_hooks"] = json!([{"0": ["not-listed"]}]);
    put_check(&admin, "allowed", allowed_check).await;
    put_check(
        &admin,
        "allowed-env",
        check(format!("{} --env", allowed.display())),
    )
    .await;
    put_check(
        &admin,
        "forbidden",
        check(format!("touch '{}'", forbidden_marker.display())),
    )
    .await;
    put_check(&admin, "tampered", check(tampered.display().to_string())).await;

    let wait = |check: &'static str, what: &'static str, accept: fn(&Value) -> bool| {
        wait_event(
            &admin,
            Some(&agent),
            (name, check),
            Duration::from_secs(30),
            what,
            accept,
        )
    };
    // On the list: it runs, without its env_vars (the entry has no enable_env) …
    let event = wait("allowed", "the allowed check run", |event| {
        event["check"]["status"] == 0
    })
    .await;
    assert_eq!(event["check"]["output"], "allowed greeting=\n");
    // … and the hook it selects, not on the list, does not run.
    let hook = &event["check"]["hooks"][0];
    assert_eq!(hook["status"], 3, "{hook}");
    let hook_output = hook["output"].as_str().unwrap_or_default();
    assert!(
        hook_output.starts_with(
            "check hook command denied by the agent allow list: command not on the allow list: touch"
        ),
        "{hook_output}"
    );
    // With enable_env, the env_vars are passed.
    let event = wait("allowed-env", "the allowed check with env run", |event| {
        event["check"]["status"] == 0
    })
    .await;
    assert_eq!(event["check"]["output"], "allowed greeting=hello\n");
    // Not on the list: status 3, not run.
    let event = wait("forbidden", "the forbidden check refused", |event| {
        event["check"]["status"] == 3
    })
    .await;
    let output = event["check"]["output"].as_str().unwrap_or_default();
    assert!(
        output.starts_with(
            "check command denied by the agent allow list: command not on the allow list: touch"
        ),
        "{output}"
    );
    // On the list with another sha512: refused, not run.
    let event = wait("tampered", "the tampered check refused", |event| {
        event["check"]["status"] == 3
    })
    .await;
    let output = event["check"]["output"].as_str().unwrap_or_default();
    assert!(
        output.contains("not the one the allow list names"),
        "{output}"
    );
    assert!(!forbidden_marker.exists(), "the forbidden check ran");
    assert!(
        !root.join("tampered-ran").exists(),
        "the tampered script ran"
    );
    assert!(!hook_marker.exists(), "the hook not on the list ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_allow_list_stops_the_start_naming_file_and_entry() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let install = enrol(&backend, &admin, "allow-bad").await;
    let allow_list = install.root.path().join("allow.json");
    std::fs::write(&allow_list, r#"[{"exec": "/bin/true", "args": []}]"#).expect("write");
    set_config(
        &install.config(),
        &[
            ("local_api", "127.0.0.1:0"),
            ("allow_list", &allow_list.display().to_string()),
        ],
    );
    let output = cairn_tests::command("cairn-agent")
        .arg("start")
        .arg("--config")
        .arg(install.config())
        .env_remove("CAIRN_AGENT_CONFIG")
        .output()
        .expect("run cairn-agent start");
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: entry 0 (\"/bin/true\"): args: must list at least one argument text",
            allow_list.display()
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_and_deregistration_handlers_come_from_agent_yaml() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let name = "dereg-01";
    let records = tempfile::tempdir().expect("tempdir");
    let recorder = |file: &str| {
        let out = records.path().join(file);
        json!({
            "type": "pipe",
            "command": format!("cat > '{0}.tmp' && mv '{0}.tmp' '{0}'", out.display()),
            "timeout": 10,
        })
    };
    put_resource(&admin, "handlers", "ka-record", recorder("keepalive.json")).await;
    put_resource(
        &admin,
        "handlers",
        "dereg-record",
        recorder("deregistration.json"),
    )
    .await;
    let install = enrol(&backend, &admin, name).await;
    let mut agent = start_agent(
        &install,
        &[
            ("keepalive_handlers", "[ka-record]"),
            ("deregistration_handler", "dereg-record"),
            ("deregister", "true"),
            ("keepalive_warning_timeout", "2"),
            ("keepalive_critical_timeout", "0"),
        ],
    );
    let keepalive = wait_keepalive(&admin, &agent, name).await;
    assert_eq!(keepalive["check"]["handlers"], json!(["ka-record"]));
    let entity = get_opt(&admin, &entity_path(name))
        .await
        .expect("the entity");
    assert_eq!(entity["keepalive_handlers"], json!(["ka-record"]));
    assert_eq!(entity["deregistration"]["handler"], "dereg-record");
    let read = |file: &str| -> Option<Value> {
        std::fs::read_to_string(records.path().join(file))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
    };
    let handled: Value = eventually(
        "the keepalive handler from agent.yaml running",
        Duration::from_secs(20),
        || async { read("keepalive.json").ok_or_else(|| backend.log()) },
    )
    .await;
    assert_eq!(handled["check"]["metadata"]["name"], "keepalive");
    assert_eq!(handled["entity"]["metadata"]["name"], name);

    // The agent stops; at the warning timeout its entity is deregistered and the handler runs.
    let _ = agent.terminate();
    let handled: Value = eventually(
        "the deregistration handler from agent.yaml running",
        Duration::from_secs(30),
        || async { read("deregistration.json").ok_or_else(|| backend.log()) },
    )
    .await;
    assert_eq!(handled["check"]["metadata"]["name"], "deregistration");
    assert_eq!(handled["check"]["handlers"], json!(["dereg-record"]));
    assert_eq!(handled["entity"]["metadata"]["name"], name);
    assert!(get_opt(&admin, &entity_path(name)).await.is_none());
}
