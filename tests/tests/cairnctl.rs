//! `cairnctl` against a real backend process: configure, users, groups, API keys, create -f on
//! the example manifests, get in every format, delete — as an operator types them.

use std::path::{Path, PathBuf};
use std::process::Output;

use cairn_tests::{command, Backend, ADMIN_PASSWORD};

/// Runs cairnctl with its config in `config_dir` and returns (exit code, stdout, stderr).
fn cairnctl(config_dir: &Path, args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command("cairnctl")
        .args(args)
        .env("CAIRN_CONFIG_DIR", config_dir)
        .env_remove("CAIRN_URL")
        .env_remove("CAIRN_API_KEY")
        .output()
        .expect("run cairnctl");
    (
        status.code().expect("exited normally"),
        String::from_utf8(stdout).expect("utf-8"),
        String::from_utf8(stderr).expect("utf-8"),
    )
}

fn ok(config_dir: &Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = cairnctl(config_dir, args);
    assert_eq!(code, 0, "cairnctl {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

fn manifests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

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

    ok(
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
            ADMIN_PASSWORD,
        ],
    );
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
