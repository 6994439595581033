//! `cairn-api` without features does no network I/O and starts no process (ARCHITECTURE.md):
//! only the modules behind a feature may name the crates and std modules that do.

use std::path::Path;

/// Modules behind a feature, and what they may use.
const FEATURE_MODULES: [&str; 3] = ["client.rs", "process.rs", "logging.rs"];

/// What does network I/O or starts processes.
const IO: [&str; 6] = [
    "reqwest",
    "tokio",
    "nix::",
    "std::net",
    "std::process",
    "TcpStream",
];

#[test]
fn only_the_feature_modules_do_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    let mut read = 0;
    for entry in std::fs::read_dir(&src).expect("api/src") {
        let path = entry.expect("an entry").path();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("");
        if !name.ends_with(".rs") || FEATURE_MODULES.contains(&name) {
            continue;
        }
        read += 1;
        let text = std::fs::read_to_string(&path).expect("a source file");
        for (idx, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            // `reqwest::Url` parses; it does no I/O (and sits behind `client` too).
            let code = code.replace("reqwest::Url", "Url");
            for word in IO {
                if code.contains(word) {
                    problems.push(format!("src/{name}:{}: {word}", idx + 1));
                }
            }
        }
    }
    assert!(read >= 10, "read only {read} files of {}", src.display());
    assert!(
        problems.is_empty(),
        "I/O outside the feature modules:\n{}",
        problems.join("\n")
    );
}
