//! The backend's shape, checked on its sources in the manner of rust-analyzer's `tidy`:
//!
//! - the modules form layers, each depending only on those below it (so there is no import
//!   cycle): `app` > `http` > {`agents`, `federation`} > {`events`, `auth`} > {`secrets`,
//!   `coord`, `datadir`} > `store` > {`clock`, `shutdown`, `entity`, `pki`, `listen`};
//! - only `http/` (and `app/`, which mounts it) speaks HTTP: no other module names `axum`,
//!   `AppState` or `ApiError`.
//!
//! Test modules are held to the same rules: a test that needs a layer above builds what it
//! needs from below, or lives in the layer above.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The layer of each top-level module; a module may use its own and lower layers' modules.
const LAYERS: &[(&str, u8)] = &[
    ("app", 7),
    ("http", 6),
    ("agents", 5),
    ("federation", 5),
    ("events", 4),
    ("auth", 4),
    ("secrets", 3),
    ("coord", 3),
    ("datadir", 3),
    ("store", 2),
    ("clock", 1),
    ("shutdown", 1),
    ("entity", 1),
    ("pki", 1),
    ("listen", 1),
    ("testing", 1),
];

/// Modules that may speak HTTP.
const HTTP_MODULES: &[&str] = &["app", "http"];

/// What only [`HTTP_MODULES`] may name.
const HTTP_ONLY: &[&str] = &["axum", "AppState", "ApiError"];

fn layer(module: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == module)
        .map(|(_, rank)| *rank)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|err| panic!("read {}: {err}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`None` for the crate root and binaries).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" | "bin" => None,
        name => Some(name.trim_end_matches(".rs").to_owned()),
    }
}

/// The words of `text` outside comments (line comments only: the sources use no block
/// comments), with the line each is on.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(index, line)| {
        let code = line.find("//").map_or(line, |at| &line[..at]);
        (index + 1, code)
    })
}

fn is_word_at(line: &str, at: usize, word: &str) -> bool {
    let before = line[..at].chars().next_back();
    let after = line[at + word.len()..].chars().next();
    let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    !ident(before) && !ident(after)
}

#[test]
fn the_backend_is_layered_and_only_http_speaks_http() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut problems = BTreeSet::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let shown = file
            .strip_prefix(&src)
            .expect("under src")
            .display()
            .to_string();
        let Some(rank) = layer(&module) else {
            problems.insert(format!(
                "{shown}: module `{module}` has no layer in tests/tidy.rs (and ARCHITECTURE.md)"
            ));
            continue;
        };
        let text = fs::read_to_string(file).expect("a readable source");
        for (number, line) in code_lines(&text) {
            let mut rest = line;
            let mut offset = 0;
            while let Some(at) = rest.find("crate::") {
                let start = offset + at + "crate::".len();
                let used: String = line[start..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let is_macro = line[start + used.len()..].starts_with('!');
                if used != module && !is_macro {
                    match layer(&used) {
                        Some(used_rank) if used_rank < rank => {}
                        Some(_) => {
                            problems.insert(format!(
                                "{shown}:{number}: `{module}` uses `{used}`, which is not below it"
                            ));
                        }
                        None => {
                            problems.insert(format!(
                                "{shown}:{number}: `{module}` uses `crate::{used}`, which has no layer"
                            ));
                        }
                    }
                }
                offset = start;
                rest = &line[start..];
            }
            if !HTTP_MODULES.contains(&module.as_str()) {
                for word in HTTP_ONLY {
                    let mut from = 0;
                    while let Some(at) = line[from..].find(word) {
                        if is_word_at(line, from + at, word) {
                            problems.insert(format!(
                                "{shown}:{number}: `{word}` outside http/ (domain code does not speak HTTP)"
                            ));
                        }
                        from += at + word.len();
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} layering problems:\n{}",
        problems.len(),
        problems.into_iter().collect::<Vec<_>>().join("\n")
    );
}
