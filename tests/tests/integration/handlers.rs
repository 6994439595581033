//! Pipe handlers run contained (issue 13, finding 5): a namespace editor's handler tries what
//! an attacker would (the backend's `/proc` entries, the data dir's keys and store, its own
//! environment) against a real backend, and each attempt is refused; a backend running as root
//! refuses to run pipe handlers unless told how (`--handler-user`, `--allow-root-handlers`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use cairn_api::client::Client;
use cairn_tests::{eventually, metrics, running_as_root, text_matching, Backend, BackendOptions};
use reqwest::Method;
use serde_json::json;

/// The `PATH` every handler gets (`contain::HANDLER_PATH`).
const HANDLER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a handler run may take at most on a loaded machine.
const HANDLER_WAIT: Duration = Duration::from_secs(20);

async fn put_handler(admin: &Client, name: &str, command: &str) {
    let handler = json!({
        "metadata": {"name": name, "namespace": "default"},
        "type": "pipe",
        "command": command,
        "env_vars": ["GREETING=hello"],
        "timeout": 10,
    });
    let path = format!("/api/core/v2/namespaces/default/handlers/{name}");
    let response = admin
        .send(Method::PUT, &path, Some(&handler))
        .await
        .unwrap_or_else(|err| panic!("PUT {path}: {err}"));
    assert!(response.status().is_success(), "PUT {path}: {response:?}");
}

/// Stores a failing event of a proxy entity whose check names `handler`.
async fn fire(admin: &Client, handler: &str) {
    let event = json!({
        "entity": {"entity_class": "proxy", "metadata": {"name": "target"}},
        "check": {"metadata": {"name": "probe"}, "status": 2, "output": "down", "handlers": [handler], "interval": 60},
    });
    let path = "/api/core/v2/namespaces/default/events/target/probe";
    let response = admin
        .send(Method::PUT, path, Some(&event))
        .await
        .unwrap_or_else(|err| panic!("PUT {path}: {err}"));
    assert!(response.status().is_success(), "PUT {path}: {response:?}");
}

/// Waits for the file `path` that a handler writes last (by renaming it into place).
async fn wait_file(path: &Path, backend: &Backend) -> String {
    eventually(
        &format!("the handler writing {}", path.display()),
        HANDLER_WAIT,
        || async {
            std::fs::read_to_string(path).map_err(|_| format!("backend log:\n{}", backend.log()))
        },
    )
    .await
}

/// Waits until the backend's log has `needle`.
async fn wait_log(backend: &Backend, needle: &str) -> String {
    eventually(
        &format!("the backend logging {needle:?}"),
        HANDLER_WAIT,
        || async { text_matching(backend.log(), |log| log.contains(needle)) },
    )
    .await
}

/// A directory any user may write into, for a handler running as another user.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod 777");
    dir
}

/// The attack of the finding, as a shell script: find the data dir on the backend's command
/// line (`$PPID` is the backend), then try its environment, its keys and its store; write one
/// line per attempt (`read PATH` or `denied PATH`), the environment and the user into `out`.
fn attack(out: &Path) -> String {
    let out = out.display();
    format!(
        r#"data=$(tr '\0' '\n' < /proc/$PPID/cmdline | sed -n '/^--data-dir$/{{n;p;}}')
{{
  for target in /proc/$PPID/environ "$data/jwt/private.pem" "$data/tls/api.key" "$data/tls/ca.key" "$data/tls/agent-ca.key" "$data/store.redb" "$data/cluster.json"; do
    if head -c 1 "$target" > /dev/null 2>&1; then echo "read $target"; else echo "denied $target"; fi
  done
  if ls "$data" > /dev/null 2>&1; then echo "listed $data"; else echo "denied listing $data"; fi
  if touch "$data/planted" 2> /dev/null; then echo "wrote $data/planted"; else echo "denied writing $data/planted"; fi
}} > {out}/report.tmp
printf '%s\n' "$data" > {out}/data-dir
env > {out}/env
{{ id -u; id -G; }} > {out}/user
mv {out}/report.tmp {out}/report"#
    )
}

/// The keys of `env`'s output.
fn keys(env: &str) -> Vec<&str> {
    env.lines()
        .filter_map(|line| line.split_once('=').map(|(key, _)| key))
        .collect()
}

/// Runs the attack in a handler of `backend` and checks that it found the data dir (the command
/// line is world-readable, as for `ps`) and got nothing from it; returns the handler's user
/// (`id -u`, then `id -G`). A handler running as root (`--allow-root-handlers`) keeps
/// `CAP_SYS_PTRACE` and so reads the backend's environment despite non-dumpable (documented);
/// `environ_protected` is false for that case.
async fn attack_is_contained(backend: &Backend, out: &Path, environ_protected: bool) -> String {
    let admin = backend.admin().await;
    put_handler(&admin, "attack", &attack(out)).await;
    fire(&admin, "attack").await;
    let report = wait_file(&out.join("report"), backend).await;

    let data_dir = std::fs::read_to_string(out.join("data-dir")).expect("data-dir");
    assert_eq!(
        Path::new(data_dir.trim()),
        backend.data_dir,
        "the handler did not find the data dir"
    );
    let escaped: Vec<&str> = report
        .lines()
        .filter(|line| !line.starts_with("denied "))
        .filter(|line| environ_protected || !line.ends_with("/environ"))
        .collect();
    assert!(
        escaped.is_empty(),
        "the handler got out: {escaped:?}\n{report}"
    );
    assert!(!backend.data_dir.join("planted").exists());

    let env = std::fs::read_to_string(out.join("env")).expect("env");
    assert!(
        !env.contains("attack-canary"),
        "the backend's environment leaked:\n{env}"
    );
    assert!(env.lines().any(|line| line == "GREETING=hello"), "{env}");
    assert!(
        env.lines()
            .any(|line| line == format!("PATH={HANDLER_PATH}")),
        "{env}"
    );
    // Only what the handler defines, PATH, and what `sh` itself sets.
    let unexpected: Vec<&str> = keys(&env)
        .into_iter()
        .filter(|key| !["GREETING", "PATH", "PWD", "SHLVL", "_", "OLDPWD"].contains(key))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected variables {unexpected:?}:\n{env}"
    );
    std::fs::read_to_string(out.join("user")).expect("user")
}

/// Issue 13, finding 5: an editor's pipe handler read the backend's command line, copied the JWT
/// signing key from the data dir and could mint a cluster-admin token. Here it runs as the
/// backend's user (root on CI, allowed by `--allow-root-handlers`, which the harness passes);
/// the same attack as `nobody` follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_handler_cannot_reach_the_backends_keys_store_or_environment() {
    let backend = Backend::start_with(
        BackendOptions::default()
            .env("CAIRN_ATTACK_CANARY", "attack-canary-in-the-backend")
            .env("CAIRN_LOG", "info")
            .capture_logs(),
    );
    let out = tempfile::tempdir().expect("tempdir");
    attack_is_contained(&backend, out.path(), !running_as_root()).await;
    let log = backend.log();
    assert!(log.contains("handler containment"), "{log}");
}

/// `--handler-user nobody`: handlers run as that user, without supplementary groups, and are
/// contained all the same. Only root can switch users; another backend refuses the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_handler_user_runs_handlers_as_that_user() {
    if !running_as_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        let init = cairn_tests::command("cairn-backend")
            .arg("init")
            .arg("--data-dir")
            .arg(&data_dir)
            .env("CAIRN_ADMIN_PASSWORD", cairn_tests::ADMIN_PASSWORD)
            .output()
            .expect("run cairn-backend init");
        assert!(init.status.success(), "{init:?}");
        let started = cairn_tests::command("cairn-backend")
            .args([
                "start",
                "--api-listen",
                "127.0.0.1:0",
                "--handler-user",
                "nobody",
            ])
            .arg("--data-dir")
            .arg(&data_dir)
            .output()
            .expect("run cairn-backend start");
        let stderr = String::from_utf8_lossy(&started.stderr);
        assert_eq!(started.status.code(), Some(64), "{stderr}");
        assert!(
            stderr.contains("needs the backend to run as root"),
            "{stderr}"
        );
        return;
    }
    let backend = Backend::start_with(
        BackendOptions::default()
            .without_root_handlers()
            .args(["--handler-user", "nobody"])
            .env("CAIRN_ATTACK_CANARY", "attack-canary-in-the-backend")
            .env("CAIRN_LOG", "info")
            .capture_logs(),
    );
    let out = shared_dir();
    let user = attack_is_contained(&backend, out.path(), true).await;
    assert_eq!(
        user.lines().collect::<Vec<_>>(),
        ["65534", "65534"],
        "{user}"
    );
    let log = backend.log();
    assert!(log.contains("uid 65534"), "{log}");
}

/// A backend running as root without `--handler-user` or `--allow-root-handlers` starts, says
/// at start that pipe handlers are refused, and refuses each run with a logged reason and a
/// counter; the handler never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_root_pipe_handlers_are_refused_without_a_flag() {
    let backend = Backend::start_with(
        BackendOptions::default()
            .without_root_handlers()
            .capture_logs(),
    );
    let admin = backend.admin().await;
    let out = shared_dir();
    let marker = out.path().join("ran");
    put_handler(&admin, "marker", &format!("touch {}", marker.display())).await;
    fire(&admin, "marker").await;
    if !running_as_root() {
        wait_file(&marker, &backend).await;
        return;
    }
    let log = wait_log(&backend, "handler not run").await;
    assert!(
        log.contains(
            "pipe handlers do not run as root without --handler-user or --allow-root-handlers"
        ),
        "{log}"
    );
    assert!(
        log.contains("pipe handlers are refused"),
        "the start log says so:\n{log}"
    );
    assert!(!marker.exists(), "the refused handler ran");
    let metrics = metrics(&admin).await;
    assert!(
        metrics
            .lines()
            .any(|line| line == "cairn_handler_refused_total 1"),
        "{metrics}"
    );
}

/// Issue 16: a backend asked to stop (SIGTERM) lets the handlers of the events it stored
/// finish, within the pipeline's grace period (10 s), instead of killing them with the
/// process: the handler here is still sleeping when the signal comes, and its output is there
/// after the backend exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_16_shutdown_drains_the_handler_pipeline() {
    let mut backend = Backend::start_with(
        BackendOptions::default()
            .env("CAIRN_LOG", "info")
            .capture_logs(),
    );
    let admin = backend.admin().await;
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().display();
    put_handler(
        &admin,
        "slow",
        &format!(
            "touch {dir}/started; sleep 2; cat > {dir}/event.tmp; mv {dir}/event.tmp {dir}/event"
        ),
    )
    .await;
    fire(&admin, "slow").await;
    wait_file(&out.path().join("started"), &backend).await;
    assert!(
        !out.path().join("event").exists(),
        "the handler finished before the backend was asked to stop; the test proves nothing"
    );
    backend.stop();
    let event = std::fs::read_to_string(out.path().join("event")).unwrap_or_else(|err| {
        panic!(
            "the handler's output is missing after shutdown ({err}); backend log:\n{}",
            backend.log()
        )
    });
    assert!(event.contains("\"output\":\"down\""), "{event}");
    let log = backend.log();
    assert!(log.contains("event pipeline drained"), "{log}");
}
