//! The manifest codec: reads files and folders of YAML and JSON manifests the way `sensuctl
//! create` does, and writes resources back as YAML or a JSON stream.
//!
//! Reading never fails as a whole: [`Manifests`] holds the good resources and a list of
//! problems, each placed at its file, document, line and field.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::locate::locate;
use crate::problem::{FieldPath, Issue, Location, Problem};
use crate::resource::{Decoded, Resource, UnsupportedType};
use crate::validate::validate;

/// The largest document accepted, in bytes: the REST API's default request limit.
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;
/// The largest file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Extensions read from folders.
pub const MANIFEST_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// A valid resource and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedResource {
    /// File, document and line.
    pub location: Location,
    /// The resource.
    pub resource: Resource,
}

/// A document of a type Cairn does not model, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedDocument {
    /// File, document and line.
    pub location: Location,
    /// Its api_version and type.
    pub unsupported: UnsupportedType,
}

/// What reading some manifests found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifests {
    /// Valid resources, in file order.
    pub resources: Vec<LoadedResource>,
    /// Documents of unmodelled types.
    pub unsupported: Vec<UnsupportedDocument>,
    /// Errors and warnings. A document with an error is not in `resources`.
    pub problems: Vec<Problem>,
    /// Documents seen, valid or not.
    pub documents: usize,
    /// Every `api_version/type` seen, valid or not (`(none)` when a document has no
    /// api_version).
    pub types: BTreeSet<String>,
    /// Files read.
    pub files: usize,
}

// === impl Manifests ===

impl Manifests {
    /// Number of problems that are errors.
    pub fn error_count(&self) -> usize {
        self.problems
            .iter()
            .filter(|problem| problem.is_error())
            .count()
    }

    /// Adds what another read found.
    pub fn extend(&mut self, other: Manifests) {
        self.resources.extend(other.resources);
        self.unsupported.extend(other.unsupported);
        self.problems.extend(other.problems);
        self.documents += other.documents;
        self.types.extend(other.types);
        self.files += other.files;
    }

    fn problem(&mut self, location: Location, issue: Issue) {
        self.problems.push(Problem { location, issue });
    }
}

/// Reads manifests from `text`, named `file` in problems: documents split on lines that start
/// with `---`; a document starting with `{` is a stream of concatenated JSON objects; every
/// resource is decoded and validated.
pub fn load_str(file: &str, text: &str) -> Manifests {
    let mut manifests = Manifests {
        files: 1,
        ..Manifests::default()
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for chunk in split_documents(text) {
        let body = chunk.text.trim_start();
        if body.starts_with('{') || body.starts_with('[') {
            load_json_chunk(file, &chunk, &mut manifests);
        } else {
            load_yaml_chunk(file, &chunk, &mut manifests);
        }
    }
    manifests
}

/// Reads a file, or every `.yaml`, `.yml` and `.json` file under a folder (recursively, in
/// byte order of their paths, skipping `.git`).
pub fn load_path(path: &Path) -> Manifests {
    let mut manifests = Manifests::default();
    match manifest_files(path) {
        Ok(files) => {
            for file in files {
                manifests.extend(load_file(&file));
            }
        }
        Err(problem) => manifests.problems.push(problem),
    }
    manifests
}

/// Reads one file (see [`load_str`]).
pub fn load_file(path: &Path) -> Manifests {
    let name = path.display().to_string();
    match read_manifest_file(path) {
        Ok(text) => load_str(&name, &text),
        Err(issue) => {
            let mut manifests = Manifests {
                files: 1,
                ..Manifests::default()
            };
            manifests.problem(Location::file(&name), issue);
            manifests
        }
    }
}

/// Writes resources as multi-document YAML, each document starting with `---`.
pub fn to_yaml(resources: &[Resource]) -> String {
    let mut out = String::new();
    for resource in resources {
        out.push_str("---\n");
        out.push_str(
            &serde_yaml::to_string(&resource.to_document())
                .expect("a JSON value always serializes to YAML"),
        );
    }
    out
}

/// Writes resources as a stream of concatenated JSON objects, as `sensuctl dump` does.
pub fn to_json_stream(resources: &[Resource]) -> String {
    let mut out = String::new();
    for resource in resources {
        out.push_str(
            &serde_json::to_string_pretty(&resource.to_document())
                .expect("a JSON value always serializes"),
        );
        out.push('\n');
    }
    out
}

/// Lists the manifest files under `path` (or `path` itself when it is a file).
///
/// # Errors
/// A problem naming the path when it cannot be read.
pub fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, Problem> {
    let name = path.display().to_string();
    let metadata = fs::metadata(path).map_err(|err| Problem {
        location: Location::file(&name),
        issue: Issue::error(FieldPath::root(), format!("cannot read: {err}")),
    })?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let mut pending = vec![path.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = fs::read_dir(&dir).map_err(|err| Problem {
            location: Location::file(&dir.display().to_string()),
            issue: Issue::error(FieldPath::root(), format!("cannot read folder: {err}")),
        })?;
        for entry in entries {
            let entry = entry.map_err(|err| Problem {
                location: Location::file(&dir.display().to_string()),
                issue: Issue::error(FieldPath::root(), format!("cannot read folder: {err}")),
            })?;
            let entry_path = entry.path();
            // `file_type` does not follow symlinks, so a link to a folder cannot loop.
            let file_type = entry.file_type().map_err(|err| Problem {
                location: Location::file(&entry_path.display().to_string()),
                issue: Issue::error(FieldPath::root(), format!("cannot read: {err}")),
            })?;
            if file_type.is_dir() {
                if entry.file_name() != ".git" {
                    pending.push(entry_path);
                }
            } else if is_manifest_name(&entry_path) {
                files.push(entry_path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Whether a file name has a manifest extension.
pub fn is_manifest_name(path: &Path) -> bool {
    path.extension()
        .and_then(|extension| extension.to_str())
        .is_some_and(|extension| MANIFEST_EXTENSIONS.contains(&extension))
}

fn read_manifest_file(path: &Path) -> Result<String, Issue> {
    let metadata = fs::metadata(path)
        .map_err(|err| Issue::error(FieldPath::root(), format!("cannot read: {err}")))?;
    if metadata.len() > MAX_FILE_BYTES {
        return Err(Issue::error(
            FieldPath::root(),
            format!(
                "file is {} bytes; the limit is {MAX_FILE_BYTES} bytes",
                metadata.len()
            ),
        ));
    }
    let bytes = fs::read(path)
        .map_err(|err| Issue::error(FieldPath::root(), format!("cannot read: {err}")))?;
    String::from_utf8(bytes).map_err(|err| {
        Issue::error(
            FieldPath::root(),
            format!("not valid UTF-8 (byte {})", err.utf8_error().valid_up_to()),
        )
    })
}

/// A piece of a file between `---` lines.
struct Chunk<'a> {
    text: &'a str,
    /// 1-based line of the chunk's first line in the file.
    first_line: usize,
}

/// Splits on every line that starts with `---`, as sensuctl does (text after `---` on that
/// line is dropped). Chunks with nothing but blanks and comments are skipped.
fn split_documents(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        if line.starts_with("---") {
            chunks.push(Chunk {
                text: &text[start..offset],
                first_line: start_line,
            });
            start = offset + line.len();
            start_line = idx + 2;
        }
        offset += line.len();
    }
    chunks.push(Chunk {
        text: &text[start..],
        first_line: start_line,
    });
    chunks.retain(|chunk| {
        chunk.text.lines().any(|line| {
            let line = line.trim();
            !line.is_empty() && !line.starts_with('#')
        })
    });
    chunks
}

/// 1-based line of the first line with content in `text`.
fn first_content_line(text: &str) -> usize {
    text.lines()
        .position(|line| {
            let line = line.trim();
            !line.is_empty() && !line.starts_with('#')
        })
        .map_or(1, |idx| idx + 1)
}

fn load_yaml_chunk(file: &str, chunk: &Chunk<'_>, manifests: &mut Manifests) {
    manifests.documents += 1;
    let mut location = Location {
        file: file.to_owned(),
        document: manifests.documents,
        line: chunk.first_line + first_content_line(chunk.text) - 1,
        column: None,
    };
    if chunk.text.len() > MAX_DOCUMENT_BYTES {
        let issue = oversized(chunk.text.len());
        manifests.problem(location, issue);
        return;
    }
    match serde_yaml::from_str::<Value>(chunk.text) {
        Ok(value) => load_document(value, chunk.text, chunk.first_line, location, manifests),
        Err(err) => {
            if let Some(mark) = err.location() {
                location.line = chunk.first_line + mark.line() - 1;
                location.column = Some(mark.column());
            }
            let issue = Issue::error(
                FieldPath::root(),
                format!("invalid YAML: {}", yaml_message(&err)),
            );
            manifests.problem(location, issue);
        }
    }
}

fn load_json_chunk(file: &str, chunk: &Chunk<'_>, manifests: &mut Manifests) {
    let line_at = |offset: usize| chunk.first_line + chunk.text[..offset].matches('\n').count();
    let mut stream = serde_json::Deserializer::from_str(chunk.text).into_iter::<Value>();
    let mut start = 0;
    loop {
        // Skip the white space between objects so `start` points at the object itself.
        start += chunk.text[start..].len() - chunk.text[start..].trim_start().len();
        let Some(next) = stream.next() else { break };
        let end = stream.byte_offset();
        manifests.documents += 1;
        let location = Location {
            file: file.to_owned(),
            document: manifests.documents,
            line: line_at(start.min(chunk.text.len())),
            column: None,
        };
        match next {
            Ok(_) if end - start > MAX_DOCUMENT_BYTES => {
                manifests.problem(location, oversized(end - start));
            }
            Ok(Value::Array(_)) => manifests.problem(
                location,
                Issue::error(
                    FieldPath::root(),
                    "a JSON array is not a resource; write one object per resource, one after another",
                ),
            ),
            Ok(value) => {
                let text = &chunk.text[start..end];
                load_document(value, text, line_at(start), location, manifests);
            }
            Err(err) => {
                let location = Location {
                    line: chunk.first_line + err.line().saturating_sub(1),
                    column: Some(err.column()),
                    ..location
                };
                manifests.problem(
                    location,
                    Issue::error(FieldPath::root(), format!("invalid JSON: {}", json_message(&err))),
                );
                // A JSON stream cannot be resynchronised after a syntax error.
                break;
            }
        }
        start = end;
    }
}

/// Decodes and validates one parsed document. `text` is its source, which starts at line
/// `first_line` of the file, for placing problems on the line of their field.
fn load_document(
    value: Value,
    text: &str,
    first_line: usize,
    location: Location,
    manifests: &mut Manifests,
) {
    // A missing field has no position; point at the nearest enclosing field that exists.
    let place = |issue: &Issue| {
        let mut path = Some(issue.path.clone());
        while let Some(candidate) = path {
            if let Some((line, column)) = locate(text, &candidate) {
                return Location {
                    line: first_line + line - 1,
                    column: Some(column),
                    ..location.clone()
                };
            }
            path = candidate.parent();
        }
        location.clone()
    };
    if let Some(type_name) = value.get("type").and_then(Value::as_str) {
        let api_version = value
            .get("api_version")
            .and_then(Value::as_str)
            .unwrap_or("(none)");
        manifests.types.insert(format!("{api_version}/{type_name}"));
    }
    match Resource::from_document(value) {
        Ok(Decoded::Resource(resource)) => {
            let issues = validate(&resource);
            let refused = issues.iter().any(Issue::is_error);
            for issue in issues {
                manifests.problem(place(&issue), issue);
            }
            if !refused {
                manifests
                    .resources
                    .push(LoadedResource { location, resource });
            }
        }
        Ok(Decoded::Unsupported(unsupported)) => {
            manifests.unsupported.push(UnsupportedDocument {
                location,
                unsupported,
            });
        }
        Err(issue) => {
            let at = place(&issue);
            manifests.problem(at, issue);
        }
    }
}

fn oversized(len: usize) -> Issue {
    Issue::error(
        FieldPath::root(),
        format!("document is {len} bytes; the limit is {MAX_DOCUMENT_BYTES} bytes"),
    )
}

/// serde_yaml's message without its own position, which is relative to the chunk.
fn yaml_message(err: &serde_yaml::Error) -> String {
    let message = err.to_string();
    match message.find(" at line ") {
        Some(idx) => message[..idx].to_owned(),
        None => message,
    }
}

fn json_message(err: &serde_json::Error) -> String {
    let message = err.to_string();
    match message.find(" at line ") {
        Some(idx) => message[..idx].to_owned(),
        None => message,
    }
}

// === impl Location ===

impl Location {
    /// A whole-file location (document 0, line 0), for problems that are not in a document.
    pub fn file(file: &str) -> Location {
        Location {
            file: file.to_owned(),
            document: 0,
            line: 0,
            column: None,
        }
    }
}
