//! What several areas share: `cairnctl` run with a configuration of its own, and the
//! workspace's example manifests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cairn_tests::{command, Backend, ADMIN_PASSWORD};
use serde_json::Value;

/// The `CAIRN_*` variables cairnctl reads besides its config directory, removed from its
/// environment so that the caller's settings do not leak into a test.
const CAIRNCTL_ENV: [&str; 7] = [
    "CAIRN_URL",
    "CAIRN_CA_FILE",
    "CAIRN_API_KEY",
    "CAIRN_NAMESPACE",
    "CAIRN_CLUSTER",
    "CAIRN_GIT_TOKEN",
    "CAIRN_GIT_SSH_KEY",
];

/// The workspace's `manifests/`, which tests load directly (they keep no private copies).
pub(crate) fn manifests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// A `cairnctl` command with its config in `config_dir`, no colours and none of the caller's
/// `CAIRN_*` settings.
pub(crate) fn cairnctl_command(config_dir: &Path) -> Command {
    let mut command = command("cairnctl");
    command
        .env("CAIRN_CONFIG_DIR", config_dir)
        .env("NO_COLOR", "1");
    for variable in CAIRNCTL_ENV {
        command.env_remove(variable);
    }
    command
}

/// Runs cairnctl with its config in `config_dir` and returns (exit code, stdout, stderr).
pub(crate) fn cairnctl(config_dir: &Path, args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cairnctl_command(config_dir)
        .args(args)
        .output()
        .expect("run cairnctl");
    (
        status.code().expect("exited normally"),
        String::from_utf8(stdout).expect("utf-8"),
        String::from_utf8(stderr).expect("utf-8"),
    )
}

/// Runs cairnctl like [`cairnctl`], asserts that it succeeded and returns its stdout.
pub(crate) fn ok(config_dir: &Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = cairnctl(config_dir, args);
    assert_eq!(code, 0, "cairnctl {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// Logs cairnctl, its config in `config_dir`, in to `backend` as `username`.
pub(crate) fn configure(config_dir: &Path, backend: &Backend, username: &str, password: &str) {
    let ca_file = backend.ca_file();
    ok(
        config_dir,
        &[
            "configure",
            "--url",
            &backend.url,
            "--ca-file",
            ca_file.to_str().expect("utf-8 path"),
            "--username",
            username,
            "--password",
            password,
        ],
    );
}

// === impl Ctl ===

/// `cairnctl` with its own configuration, logged in to one backend as the admin.
pub(crate) struct Ctl {
    config: tempfile::TempDir,
}

impl Ctl {
    /// A fresh configuration, logged in to `backend` as the admin.
    pub(crate) fn configure(backend: &Backend) -> Ctl {
        let ctl = Ctl {
            config: tempfile::tempdir().expect("tempdir"),
        };
        configure(ctl.config.path(), backend, "admin", ADMIN_PASSWORD);
        ctl
    }

    /// A cairnctl command with this configuration (see [`cairnctl_command`]).
    pub(crate) fn command(&self) -> Command {
        cairnctl_command(self.config.path())
    }

    /// Runs cairnctl with `args` to the end.
    pub(crate) fn output(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run cairnctl")
    }

    /// Runs cairnctl with `args` and keeps what it printed.
    pub(crate) fn run(&self, args: &[&str]) -> Run {
        Run::of(self.output(args))
    }

    /// Runs and checks the exit code.
    pub(crate) fn expect(&self, code: i32, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(run.code, code, "cairnctl {args:?}:\n{run:#?}");
        run
    }
}

// === impl Run ===

/// What a finished command printed.
#[derive(Debug)]
pub(crate) struct Run {
    /// Its exit code.
    pub(crate) code: i32,
    /// Its stdout, lossily decoded.
    pub(crate) stdout: String,
    /// Its stderr, lossily decoded.
    pub(crate) stderr: String,
}

impl Run {
    /// The exit code and the decoded output of `output`.
    pub(crate) fn of(output: Output) -> Run {
        Run {
            code: output.status.code().expect("exited normally"),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Stdout as one JSON document.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|err| panic!("stdout is not one JSON document ({err}):\n{self:#?}"))
    }
}
