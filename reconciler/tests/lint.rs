//! `cairnctl lint` as a user runs it: the real binary on files in a temporary folder, checking
//! its output and exit code.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Run {
    code: i32,
    stdout: String,
}

fn cairnctl(args: &[&str], dir: &Path, stdin: Option<&str>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cairnctl");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("wait for cairnctl");
    let stdout = String::from_utf8(stdout).expect("utf-8 stdout");
    let code = status.code().expect("cairnctl exited normally");
    if !stderr.is_empty() {
        eprintln!("stderr: {}", String::from_utf8_lossy(&stderr));
    }
    Run { code, stdout }
}

fn write(dir: &Path, relative: &str, text: &str) {
    let path = dir.join(relative);
    std::fs::create_dir_all(path.parent().expect("has a parent")).expect("create folder");
    std::fs::write(path, text).expect("write manifest");
}

/// Compares line by line and prints both sides on mismatch.
fn assert_lines(actual: &str, expected: &str) {
    if actual.trim_end() != expected.trim_end() {
        panic!("output differs\n--- expected\n{expected}\n--- actual\n{actual}");
    }
}

const GOOD_CHECK: &str = "type: CheckConfig
api_version: core/v2
metadata:
  name: cpu
spec:
  command: check-cpu
  interval: 10
";

#[test]
fn clean_folder_passes_with_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "checks/cpu.yaml", GOOD_CHECK);
    write(
        dir.path(),
        "ns.json",
        r#"{"type": "Namespace", "api_version": "core/v2", "spec": {"name": "ops"}}"#,
    );
    write(dir.path(), "README.md", "not a manifest");
    let run = cairnctl(&["lint", "."], dir.path(), None);
    assert_lines(&run.stdout, "2 documents, 2 types, 0 errors");
    assert_eq!(run.code, 0);
}

#[test]
fn reports_every_error_not_just_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "a.yaml",
        &GOOD_CHECK.replace("interval: 10", "intreval: 10"),
    );
    write(
        dir.path(),
        "b.yaml",
        "type: Handler\napi_version: core/v2\nmetadata:\n  name: slack\nspec:\n  type: pipe\n---\ntype: Namespace\napi_version: core/v2\nspec:\n  name: ok\n",
    );
    let run = cairnctl(&["lint", "a.yaml", "b.yaml"], dir.path(), None);
    assert_lines(
        &run.stdout,
        r#"error: a.yaml:7:3: document 1: spec.intreval: unknown field "intreval" (did you mean "interval"?)
error: b.yaml:5:1: document 1: spec.command: a pipe handler needs a command
3 documents, 3 types, 2 errors"#,
    );
    assert_eq!(run.code, 1);
}

#[test]
fn unsupported_types_fail_unless_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "auth.yaml",
        "type: ldap\napi_version: authentication/v2\nmetadata:\n  name: corp\nspec: {}\n",
    );
    let run = cairnctl(&["lint", "auth.yaml"], dir.path(), None);
    assert_lines(
        &run.stdout,
        "unsupported: authentication/v2/ldap (auth.yaml:1: document 1)\n1 documents, 1 types, 1 errors",
    );
    assert_eq!(run.code, 1);

    let run = cairnctl(
        &["lint", "--allow-unsupported", "auth.yaml"],
        dir.path(),
        None,
    );
    assert_lines(
        &run.stdout,
        "warning: auth.yaml:1: document 1: skipped unsupported: authentication/v2/ldap\n1 documents, 1 types, 0 errors",
    );
    assert_eq!(run.code, 0);
}

#[test]
fn reads_standard_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = cairnctl(&["lint", "-"], dir.path(), Some(GOOD_CHECK));
    assert_lines(&run.stdout, "1 documents, 1 types, 0 errors");
    assert_eq!(run.code, 0);
}

#[test]
fn missing_path_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = cairnctl(&["lint", "nope"], dir.path(), None);
    assert!(
        run.stdout.starts_with("error: nope: cannot read: "),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.ends_with("0 documents, 0 types, 1 errors\n"),
        "{}",
        run.stdout
    );
    assert_eq!(run.code, 1);
}

#[test]
fn no_paths_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = cairnctl(&["lint"], dir.path(), None);
    assert_eq!(
        run.code, 64,
        "usage errors exit 64, not 2 (which diff uses for drift)"
    );
}

#[test]
fn example_manifests_are_valid() {
    let manifests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let run = cairnctl(
        &["lint", manifests.to_str().expect("utf-8 path")],
        Path::new("."),
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stdout.ends_with(" errors\n") && run.stdout.contains(", 0 errors"),
        "{}",
        run.stdout
    );
}

#[test]
fn version_and_help() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = cairnctl(&["--version"], dir.path(), None);
    assert_eq!(
        run.stdout,
        format!("cairnctl {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(run.code, 0);
    let run = cairnctl(&["--help"], dir.path(), None);
    assert!(run.stdout.contains("lint"), "{}", run.stdout);
    assert_eq!(run.code, 0);
}

/// A field that was accepted but not acted on before issue 19 (a check's `runtime_assets`)
/// passes without a warning now that agents fetch assets.
#[test]
fn runtime_assets_are_no_longer_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "cpu.yaml",
        &format!("{GOOD_CHECK}  runtime_assets: [cpu-checks]\n"),
    );
    let run = cairnctl(&["lint", "cpu.yaml"], dir.path(), None);
    assert_lines(&run.stdout, "1 documents, 1 types, 0 errors");
    assert_eq!(run.code, 0);
}

#[test]
fn javascript_that_does_not_parse_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "filters.yaml",
        "type: EventFilter\napi_version: core/v2\nmetadata:\n  name: office\nspec:\n  action: allow\n  expressions:\n  - hour(event.timestamp) >= 9\n  - event.check.status == = 2\n---\ntype: Mutator\napi_version: core/v2\nmetadata:\n  name: js\nspec:\n  type: javascript\n  eval: 'return JSON.stringify(event'\n",
    );
    let run = cairnctl(&["lint", "filters.yaml"], dir.path(), None);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[0].starts_with("error: filters.yaml:")
            && lines[0].contains("spec.expressions[1]: SyntaxError: "),
        "{}",
        run.stdout
    );
    assert!(
        lines[1].starts_with("error: filters.yaml:")
            && lines[1].contains("document 2: spec.eval: SyntaxError: "),
        "{}",
        run.stdout
    );
    assert_eq!(lines.len(), 3, "{}", run.stdout);
}
