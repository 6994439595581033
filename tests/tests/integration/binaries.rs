//! Every binary of the workspace starts, answers `--version` and `--help`, and refuses an
//! unknown subcommand with a usage error.

use cairn_tests::command;

const BINARIES: [(&str, &[&str]); 3] = [
    ("cairn-backend", &["init", "start"]),
    ("cairn-agent", &["install", "start"]),
    ("cairnctl", &["lint"]),
];

#[test]
fn binaries_print_version_and_help() {
    for (name, subcommands) in BINARIES {
        let output = command(name)
            .arg("--version")
            .output()
            .expect("run --version");
        assert!(
            output.status.success(),
            "{name} --version failed: {output:?}"
        );
        let stdout = String::from_utf8(output.stdout).expect("utf-8");
        assert_eq!(
            stdout.trim(),
            format!("{name} {}", env!("CARGO_PKG_VERSION"))
        );

        let output = command(name).arg("--help").output().expect("run --help");
        assert!(output.status.success(), "{name} --help failed: {output:?}");
        let help = String::from_utf8(output.stdout).expect("utf-8");
        for subcommand in subcommands {
            assert!(
                help.contains(subcommand),
                "{name} --help does not list {subcommand}:\n{help}"
            );
        }

        let output = command(name)
            .arg("no-such-command")
            .output()
            .expect("run bad subcommand");
        assert!(
            !output.status.success(),
            "{name} accepted an unknown subcommand"
        );
        let stderr = String::from_utf8(output.stderr).expect("utf-8");
        assert!(
            stderr.contains("no-such-command"),
            "{name} did not name the bad subcommand: {stderr}"
        );
    }
}
