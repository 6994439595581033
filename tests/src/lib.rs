//! Helpers for Cairn's end-to-end tests: finding the workspace's binaries and running them.
//!
//! `CARGO_BIN_EXE_*` only covers a package's own binaries, so the binaries of `cairn-backend`,
//! `cairn-agent` and `cairn-reconciler` are found in the target directory beside the test
//! executable. `cargo test` builds only the binaries of packages with integration tests, and
//! not at all when only this package is tested, so the helper runs `cargo build --bins` once
//! per test process (a no-op when they are current) so that no test runs a stale binary.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Once;

static BUILD_BINARIES: Once = Once::new();

/// The path of a workspace binary (`cairn-backend`, `cairn-agent`, `cairnctl`).
///
/// # Panics
/// When the binary has not been built, with a message saying how to build it.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executables live in target/<profile>/deps");
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    {
        BUILD_BINARIES.call_once(|| {
            let cargo = option_env!("CARGO").unwrap_or("cargo");
            let mut build = Command::new(cargo);
            build.args(["build", "--workspace", "--bins"]);
            if profile_dir.ends_with("release") {
                build.arg("--release");
            }
            let status = build
                .status()
                .expect("run cargo build for the workspace binaries");
            assert!(status.success(), "cargo build --workspace --bins failed");
        });
    }
    assert!(
        path.is_file(),
        "{} is missing after `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// A `Command` for a workspace binary, with logs kept quiet unless `CAIRN_LOG` is set.
pub fn command(name: &str) -> Command {
    let mut command = Command::new(binary(name));
    if std::env::var_os("CAIRN_LOG").is_none() {
        command.env("CAIRN_LOG", "warn");
    }
    command
}
