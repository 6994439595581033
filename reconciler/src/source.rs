//! Where manifests come from: a folder, or one commit of a Git repository read straight from
//! its tree (no checkout), so that a sync applies exactly one commit.
//!
//! Layout: any tree of YAML/JSON files. SensuFlow's layout is understood: a namespaced document
//! under `namespaces/<ns>/` that names no namespace belongs to `<ns>`; `cluster/` holds
//! cluster-wide types. `--path SUBDIR` scopes a repository or folder to a subtree.

use std::path::{Path, PathBuf};

use cairn_api::codec::{self, Manifests};
use cairn_api::{FieldPath, Issue, Location, Problem, Resource};

use crate::fetch;

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A folder on disk, read as it is now.
    Folder(PathBuf),
    /// A Git repository (a local path, bare or not, or a `file://`, `https://` or `ssh://` URL)
    /// at a reference (branch, tag, `HEAD` or a commit id).
    Git {
        /// Path or URL.
        repo: String,
        /// The reference to resolve.
        reference: String,
    },
}

/// How to read a [`Source`].
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Only read below this folder of the source (`--path`).
    pub subdir: Option<String>,
    /// Namespace for namespaced documents that name none outside `namespaces/<ns>/`.
    pub default_namespace: String,
    /// Where remote repositories are fetched to; [`fetch::default_cache_dir`] when `None`.
    pub cache_dir: Option<PathBuf>,
}

/// A resource the source declares, and the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    /// The resource, its namespace filled in.
    pub resource: Resource,
    /// The file, relative to the source's root (the repository root for Git).
    pub path: String,
}

/// What one read of a source found.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Everything the codec found, problems included; locations name files relative to the root.
    pub manifests: Manifests,
    /// The valid resources, namespaces filled in, in file order.
    pub declared: Vec<Declared>,
    /// How the source is named in `cairn.io/source` (the folder, the repository path or URL).
    pub origin: String,
    /// The commit read (full hex id), for Git sources.
    pub commit: Option<String>,
}

impl Snapshot {
    /// `cairn.io/source` for a file: `<origin>@<commit>:<path>` (`<origin>:<path>` for folders).
    pub fn source_annotation(&self, path: &str) -> String {
        match &self.commit {
            Some(commit) => format!("{}@{commit}:{path}", self.origin),
            None => format!("{}:{path}", self.origin),
        }
    }

    /// Errors in the manifests (unsupported types count as errors unless allowed).
    pub fn error_count(&self, allow_unsupported: bool) -> usize {
        self.manifests.error_count()
            + if allow_unsupported {
                0
            } else {
                self.manifests.unsupported.len()
            }
    }
}

/// Why a source could not be read at all. Never the same as an empty source: a sync that
/// cannot read its source applies and prunes nothing.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The folder is missing or unreadable.
    #[error("cannot read folder {path}: {reason}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The repository could not be opened or fetched.
    #[error("cannot open repository {repo}: {reason}")]
    Repository {
        /// Path or URL.
        repo: String,
        /// Why.
        reason: String,
    },
    /// The reference does not name a commit.
    #[error("{repo}: reference {reference:?} does not name a commit: {reason}")]
    Reference {
        /// Path or URL.
        repo: String,
        /// The reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// `--path` does not name a folder of the source.
    #[error("{repo}: --path {subdir:?} is not a folder at {at}")]
    Subdir {
        /// Path or URL.
        repo: String,
        /// The sub-folder asked for.
        subdir: String,
        /// The commit or folder.
        at: String,
    },
    /// Remote repositories: the fetch failed.
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
}

impl Source {
    /// A folder, or a repository when `git` is set.
    pub fn from_args(folder: Option<PathBuf>, git: Option<String>, reference: &str) -> Source {
        match (git, folder) {
            (Some(repo), _) => Source::Git {
                repo,
                reference: reference.to_owned(),
            },
            (None, Some(folder)) => Source::Folder(folder),
            (None, None) => Source::Folder(PathBuf::from(".")),
        }
    }

    /// How the source reads in messages (credentials removed from URLs).
    pub fn describe(&self) -> String {
        match self {
            Source::Folder(path) => path.display().to_string(),
            Source::Git { repo, reference } => {
                format!("{} at {reference}", fetch::redact_url(repo))
            }
        }
    }

    /// How the source is named in records: the folder, or the repository's path or URL
    /// (credentials removed).
    pub fn origin(&self) -> String {
        match self {
            Source::Folder(path) => path.display().to_string(),
            Source::Git { repo, .. } => fetch::redact_url(repo),
        }
    }

    /// Whether this names a remote repository (fetched into the cache).
    pub fn is_remote(&self) -> bool {
        matches!(self, Source::Git { repo, .. } if fetch::is_url(repo))
    }

    /// Reads the source once.
    ///
    /// # Errors
    /// [`SourceError`] when the source cannot be read at all. Invalid manifests are not an
    /// error here: they are in the snapshot's problems.
    pub fn read(&self, options: &ReadOptions) -> Result<Snapshot, SourceError> {
        match self {
            Source::Folder(root) => read_folder(root, options),
            Source::Git { repo, reference } => {
                let git_dir = if fetch::is_url(repo) {
                    let cache = options
                        .cache_dir
                        .clone()
                        .unwrap_or_else(fetch::default_cache_dir);
                    fetch::fetch(repo, reference, &cache)?
                } else {
                    PathBuf::from(repo)
                };
                read_git(repo, &git_dir, reference, options)
            }
        }
    }

    /// The commit the reference names now, without reading the tree (Git sources only).
    ///
    /// # Errors
    /// As [`Source::read`].
    pub fn resolve_commit(&self, options: &ReadOptions) -> Result<Option<String>, SourceError> {
        match self {
            Source::Folder(_) => Ok(None),
            Source::Git { repo, reference } => {
                let git_dir = if fetch::is_url(repo) {
                    let cache = options
                        .cache_dir
                        .clone()
                        .unwrap_or_else(fetch::default_cache_dir);
                    fetch::fetch(repo, reference, &cache)?
                } else {
                    PathBuf::from(repo)
                };
                let repository = open(repo, &git_dir)?;
                let commit = peel(repo, &repository, reference)?;
                Ok(Some(commit.id().to_string()))
            }
        }
    }
}

fn read_folder(root: &Path, options: &ReadOptions) -> Result<Snapshot, SourceError> {
    let folder_error = |reason: String| SourceError::Folder {
        path: root.to_owned(),
        reason,
    };
    let metadata = std::fs::metadata(root).map_err(|err| folder_error(err.to_string()))?;
    if !metadata.is_dir() {
        return Err(folder_error("not a folder".to_owned()));
    }
    // A folder that cannot be listed is unreadable, not empty.
    std::fs::read_dir(root).map_err(|err| folder_error(err.to_string()))?;
    let scoped = match &options.subdir {
        Some(subdir) => {
            let scoped = root.join(subdir);
            if !scoped.is_dir() {
                return Err(SourceError::Subdir {
                    repo: root.display().to_string(),
                    subdir: subdir.clone(),
                    at: "the folder".to_owned(),
                });
            }
            scoped
        }
        None => root.to_owned(),
    };
    let mut manifests = Manifests::default();
    let files =
        codec::manifest_files(&scoped).map_err(|problem| folder_error(problem.to_string()))?;
    for file in files {
        let relative = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .to_string_lossy()
            .replace('\\', "/");
        let mut loaded = codec::load_file(&file);
        for location in locations_mut(&mut loaded) {
            location.file = relative.clone();
        }
        manifests.extend(loaded);
    }
    Ok(finish(manifests, root.display().to_string(), None, options))
}

fn locations_mut(manifests: &mut Manifests) -> impl Iterator<Item = &mut Location> {
    manifests
        .resources
        .iter_mut()
        .map(|loaded| &mut loaded.location)
        .chain(
            manifests
                .unsupported
                .iter_mut()
                .map(|document| &mut document.location),
        )
        .chain(
            manifests
                .problems
                .iter_mut()
                .map(|problem| &mut problem.location),
        )
}

fn open(repo: &str, git_dir: &Path) -> Result<git2::Repository, SourceError> {
    let error = |err: git2::Error| SourceError::Repository {
        repo: repo.to_owned(),
        reason: err.message().to_owned(),
    };
    let repository = git2::Repository::open(git_dir).map_err(error)?;
    // In a `pre-receive` hook the pushed objects are still in git's quarantine folder.
    if let Some(quarantine) = std::env::var_os("GIT_QUARANTINE_PATH") {
        repository
            .odb()
            .and_then(|odb| odb.add_disk_alternate(&quarantine.to_string_lossy()))
            .map_err(error)?;
    }
    Ok(repository)
}

fn peel<'r>(
    repo: &str,
    repository: &'r git2::Repository,
    reference: &str,
) -> Result<git2::Commit<'r>, SourceError> {
    let reference_error = |reason: String| SourceError::Reference {
        repo: repo.to_owned(),
        reference: reference.to_owned(),
        reason,
    };
    // A fetched remote keeps its branches under refs/remotes/origin/.
    let branch = reference.strip_prefix("refs/heads/").unwrap_or(reference);
    let object = repository
        .revparse_single(reference)
        .or_else(|_| repository.revparse_single(&format!("refs/remotes/origin/{branch}")))
        .map_err(|err| reference_error(err.message().to_owned()))?;
    object
        .peel_to_commit()
        .map_err(|err| reference_error(err.message().to_owned()))
}

fn read_git(
    repo: &str,
    git_dir: &Path,
    reference: &str,
    options: &ReadOptions,
) -> Result<Snapshot, SourceError> {
    let repository = open(repo, git_dir)?;
    let commit = peel(repo, &repository, reference)?;
    let commit_id = commit.id().to_string();
    let tree = commit.tree().map_err(|err| SourceError::Repository {
        repo: repo.to_owned(),
        reason: err.message().to_owned(),
    })?;
    let (tree, prefix) = match &options.subdir {
        Some(subdir) => {
            let subdir = subdir.trim_matches('/');
            let entry = tree
                .get_path(Path::new(subdir))
                .ok()
                .filter(|entry| entry.kind() == Some(git2::ObjectType::Tree));
            let Some(entry) = entry else {
                return Err(SourceError::Subdir {
                    repo: repo.to_owned(),
                    subdir: subdir.to_owned(),
                    at: commit_id,
                });
            };
            let subtree =
                repository
                    .find_tree(entry.id())
                    .map_err(|err| SourceError::Repository {
                        repo: repo.to_owned(),
                        reason: err.message().to_owned(),
                    })?;
            (subtree, format!("{subdir}/"))
        }
        None => (tree, String::new()),
    };
    let mut blobs: Vec<(String, git2::Oid)> = Vec::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        let Some(name) = entry.name() else {
            return git2::TreeWalkResult::Ok;
        };
        if entry.kind() == Some(git2::ObjectType::Tree) && name == ".git" {
            return git2::TreeWalkResult::Skip;
        }
        if entry.kind() == Some(git2::ObjectType::Blob) && codec::is_manifest_name(Path::new(name))
        {
            blobs.push((format!("{prefix}{dir}{name}"), entry.id()));
        }
        // Submodules (commit entries) are skipped: their manifests are not in this commit.
        git2::TreeWalkResult::Ok
    })
    .map_err(|err| SourceError::Repository {
        repo: repo.to_owned(),
        reason: err.message().to_owned(),
    })?;
    blobs.sort();
    let mut manifests = Manifests::default();
    for (path, oid) in blobs {
        let loaded = match repository.find_blob(oid) {
            Ok(blob) if blob.size() as u64 > codec::MAX_FILE_BYTES => problem(
                &path,
                format!(
                    "file is {} bytes; the limit is {} bytes",
                    blob.size(),
                    codec::MAX_FILE_BYTES
                ),
            ),
            Ok(blob) => match std::str::from_utf8(blob.content()) {
                Ok(text) => codec::load_str(&path, text),
                Err(err) => problem(&path, format!("not UTF-8 text: {err}")),
            },
            Err(err) => problem(&path, format!("cannot read blob: {}", err.message())),
        };
        manifests.extend(loaded);
    }
    Ok(finish(
        manifests,
        fetch::redact_url(repo),
        Some(commit.id().to_string()),
        options,
    ))
}

fn problem(path: &str, message: String) -> Manifests {
    Manifests {
        files: 1,
        problems: vec![Problem {
            location: Location::file(path),
            issue: Issue::error(FieldPath::root(), message),
        }],
        ..Manifests::default()
    }
}

/// Fills in namespaces by layout and collects the declared resources.
fn finish(
    manifests: Manifests,
    origin: String,
    commit: Option<String>,
    options: &ReadOptions,
) -> Snapshot {
    let default_namespace = if options.default_namespace.is_empty() {
        "default"
    } else {
        options.default_namespace.as_str()
    };
    let declared = manifests
        .resources
        .iter()
        .map(|loaded| {
            let mut resource = loaded.resource.clone();
            if resource.kind().is_namespaced() && resource.metadata.namespace.is_empty() {
                resource.metadata.namespace = layout_namespace(&loaded.location.file)
                    .unwrap_or(default_namespace)
                    .to_owned();
            }
            Declared {
                resource,
                path: loaded.location.file.clone(),
            }
        })
        .collect();
    Snapshot {
        manifests,
        declared,
        origin,
        commit,
    }
}

/// `<ns>` for a file under a `namespaces/<ns>/` folder (at any depth, as SensuFlow allows a
/// repository to keep its manifests below a sub-folder).
pub fn layout_namespace(path: &str) -> Option<&str> {
    let segments: Vec<&str> = path.split('/').collect();
    segments
        .windows(3)
        .find(|window| window[0] == "namespaces")
        .map(|window| window[1])
        .filter(|namespace| !namespace.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_namespace_reads_sensuflow_folders() {
        assert_eq!(
            layout_namespace("namespaces/demo/checks/a.yaml"),
            Some("demo")
        );
        assert_eq!(
            layout_namespace(".sensu/namespaces/prod/handlers.yaml"),
            Some("prod")
        );
        assert_eq!(layout_namespace("cluster/namespaces.yaml"), None);
        assert_eq!(layout_namespace("namespaces/file.yaml"), None);
        assert_eq!(layout_namespace("checks/a.yaml"), None);
    }
}
