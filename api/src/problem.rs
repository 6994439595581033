//! Problems found in manifests: what is wrong, at which field, in which file, document and line.

use std::fmt;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The document is refused.
    Error,
    /// The document is accepted; the operator should look.
    Warning,
}

/// One segment of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// Where in a document a problem is, e.g. `spec.check_hooks[0].critical`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(Vec<Segment>);

/// A problem inside one document, before it is placed in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Error or warning.
    pub severity: Severity,
    /// The field the problem is about; empty for the whole document.
    pub path: FieldPath,
    /// Lower-case message without a trailing period.
    pub message: String,
}

/// Where a document or problem sits in its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file as the user named it (or `-` for stdin).
    pub file: String,
    /// 1-based index of the document in the file.
    pub document: usize,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, when known.
    pub column: Option<usize>,
}

/// An [`Issue`] placed in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// File, document, line.
    pub location: Location,
    /// What is wrong.
    pub issue: Issue,
}

// === impl FieldPath ===

impl FieldPath {
    /// The empty path (the whole document).
    pub fn root() -> FieldPath {
        FieldPath(Vec::new())
    }

    /// A path from dotted keys, e.g. `FieldPath::keys(&["spec", "interval"])`.
    pub fn keys(keys: &[&str]) -> FieldPath {
        FieldPath(
            keys.iter()
                .map(|key| Segment::Key((*key).to_owned()))
                .collect(),
        )
    }

    /// This path plus a key.
    pub fn key(&self, key: &str) -> FieldPath {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.to_owned()));
        FieldPath(segments)
    }

    /// This path plus an index.
    pub fn index(&self, idx: usize) -> FieldPath {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(idx));
        FieldPath(segments)
    }

    /// This path followed by `other`.
    pub fn join(&self, other: &FieldPath) -> FieldPath {
        let mut segments = self.0.clone();
        segments.extend(other.0.iter().cloned());
        FieldPath(segments)
    }

    /// The path one level up; `None` for the root.
    pub fn parent(&self) -> Option<FieldPath> {
        let (_, rest) = self.0.split_last()?;
        Some(FieldPath(rest.to_vec()))
    }

    /// The segments.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// Whether this is the whole document.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn from_serde(path: &serde_path_to_error::Path) -> FieldPath {
        use serde_path_to_error::Segment as Serde;
        FieldPath(
            path.iter()
                .filter_map(|segment| match segment {
                    Serde::Seq { index } => Some(Segment::Index(*index)),
                    Serde::Map { key } => Some(Segment::Key(key.clone())),
                    Serde::Enum { variant } => Some(Segment::Key(variant.clone())),
                    Serde::Unknown => None,
                })
                .collect(),
        )
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (idx, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if idx == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

// === impl Issue ===

impl Issue {
    /// An error at `path`.
    pub fn error(path: FieldPath, message: impl Into<String>) -> Issue {
        Issue {
            severity: Severity::Error,
            path,
            message: message.into(),
        }
    }

    /// A warning at `path`.
    pub fn warning(path: FieldPath, message: impl Into<String>) -> Issue {
        Issue {
            severity: Severity::Warning,
            path,
            message: message.into(),
        }
    }

    /// Whether this refuses the document.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_root() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

// === impl Location ===

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.document == 0 {
            return write!(f, "{}", self.file);
        }
        write!(f, "{}:{}", self.file, self.line)?;
        if let Some(column) = self.column {
            write!(f, ":{column}")?;
        }
        write!(f, ": document {}", self.document)
    }
}

// === impl Problem ===

impl Problem {
    /// Whether this refuses the document.
    pub fn is_error(&self) -> bool {
        self.issue.is_error()
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.issue.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{severity}: {}: {}", self.location, self.issue)
    }
}

/// An error and its causes, innermost last (`error sending request: connection refused`);
/// reqwest's own message leaves out why a connection failed.
pub fn cause_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
