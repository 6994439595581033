//! Unpacking an asset archive: Sensu's formats (a tar archive, optionally gzip'd; told apart by
//! their magic bytes, not the URL), with every entry checked before anything is written.
//!
//! # Guarantees
//!
//! Nothing is written outside the destination folder:
//!
//! - absolute paths and `..` components are refused;
//! - an entry whose path passes through a symlink (one made by an earlier entry) is refused,
//!   and so is an entry that would replace a symlink or turn a directory into a link;
//! - a symlink's target must be relative and, read from the link's folder, stay inside: only
//!   leading `..` components, no deeper than the link's folder (`lib/libfoo.so -> libfoo.so.1`
//!   and `bin/tool -> ../libexec/tool` are fine);
//! - a hard link's target must be a regular file the archive already wrote;
//! - device, fifo and other special entries are refused;
//! - setuid, setgid and sticky bits are dropped; owners are not restored;
//! - the bytes written and the number of entries are capped ([`UnpackLimits`]), and so is the
//!   whole decompressed stream (headers and metadata entries included), against gzip bombs.
//!
//! A refused archive leaves a partial tree in the destination; the caller unpacks into a
//! temporary folder and removes it on error.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Default cap on the bytes an archive unpacks to: 512 MiB.
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 512 * 1024 * 1024;
/// Default cap on the entries of an archive.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

/// Bounds of one unpacking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes of file content written, summed over the entries.
    pub max_bytes: u64,
    /// Entries (files, folders, links).
    pub max_entries: usize,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

/// Why an archive was refused. None of these is helped by a retry of the same archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Neither a tar archive nor a gzip stream.
    #[error("the archive is neither a tar nor a gzip'd tar (Sensu's asset formats)")]
    UnknownFormat,
    /// An entry names an absolute path.
    #[error("entry {0:?} has an absolute path")]
    AbsolutePath(String),
    /// An entry's path has a `..` component.
    #[error("entry {0:?} has a `..` component")]
    ParentDir(String),
    /// An entry's path passes through, or replaces, a symlink.
    #[error("entry {0:?} passes through or replaces a symlink")]
    ThroughSymlink(String),
    /// A link entry would replace a folder.
    #[error("link entry {0:?} would replace a folder")]
    ReplacesFolder(String),
    /// A symlink or hard link points outside the asset.
    #[error("link {path:?} points outside the asset ({target:?})")]
    LinkEscapes {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// A hard link names something that is not a regular file of the archive.
    #[error("hard link {path:?} names {target:?}, which is not a file of the archive")]
    BadHardLink {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// A device, fifo or other special entry.
    #[error("entry {path:?} is a {kind}, which an asset cannot hold")]
    SpecialEntry {
        /// The entry.
        path: String,
        /// What it is.
        kind: String,
    },
    /// The content is over [`UnpackLimits::max_bytes`].
    #[error("the archive unpacks to more than {limit} bytes")]
    TooManyBytes {
        /// The limit.
        limit: u64,
    },
    /// More entries than [`UnpackLimits::max_entries`].
    #[error("the archive has more than {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: usize,
    },
    /// The archive is corrupt or cannot be read.
    #[error("cannot read the archive: {0}")]
    Read(#[source] io::Error),
    /// Writing the tree failed (disk full, permissions).
    #[error("cannot write {path:?}: {source}")]
    Write {
        /// The entry.
        path: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// What an unpacking wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    /// Bytes of file content.
    pub bytes: u64,
    /// Entries.
    pub entries: usize,
}

/// The two formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Tar,
    Gzip,
}

/// Unpacks the archive at `archive` into the existing folder `dest` (blocking I/O).
///
/// # Errors
/// [`ArchiveError`]: the first entry refused, or the I/O error.
pub fn unpack(archive: &Path, dest: &Path, limits: UnpackLimits) -> Result<Unpacked, ArchiveError> {
    let mut file = File::open(archive).map_err(ArchiveError::Read)?;
    let mut magic = [0u8; 512];
    let read = read_up_to(&mut file, &mut magic).map_err(ArchiveError::Read)?;
    let format = sniff(&magic[..read]).ok_or(ArchiveError::UnknownFormat)?;
    let file = File::open(archive).map_err(ArchiveError::Read)?;
    let reader = BufReader::new(file);
    match format {
        Format::Tar => unpack_tar(reader, dest, limits),
        Format::Gzip => unpack_tar(flate2::read::GzDecoder::new(reader), dest, limits),
    }
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// gzip by its two magic bytes; tar by `ustar` at offset 257 (POSIX and GNU headers).
fn sniff(head: &[u8]) -> Option<Format> {
    if head.starts_with(&[0x1f, 0x8b]) {
        return Some(Format::Gzip);
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        return Some(Format::Tar);
    }
    None
}

fn unpack_tar(
    reader: impl Read,
    dest: &Path,
    limits: UnpackLimits,
) -> Result<Unpacked, ArchiveError> {
    // The whole tar stream is capped too, headers and padding included: metadata entries
    // (PAX, GNU long names) are read into memory by the tar reader, and a gzip stream can
    // inflate a thousandfold.
    let stream_cap = limits
        .max_bytes
        .saturating_add((limits.max_entries as u64).saturating_mul(STREAM_BYTES_PER_ENTRY))
        .saturating_add(STREAM_SLACK);
    let reader = Capped {
        inner: reader,
        left: stream_cap,
    };
    let mut archive = tar::Archive::new(reader);
    let read_error = |error: io::Error| {
        if error
            .get_ref()
            .is_some_and(|inner| inner.is::<StreamCapExceeded>())
        {
            ArchiveError::TooManyBytes {
                limit: limits.max_bytes,
            }
        } else {
            ArchiveError::Read(error)
        }
    };
    let mut written = Unpacked {
        bytes: 0,
        entries: 0,
    };
    // Regular files this archive wrote, for hard links.
    let mut files: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        written.entries += 1;
        if written.entries > limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let raw = entry.path().map_err(read_error)?.into_owned();
        let shown = raw.display().to_string();
        let Some(relative) = clean_path(&raw, &shown)? else {
            // `.` or `./`: the root itself.
            continue;
        };
        let target = dest.join(&relative);
        check_parents(dest, &relative, &shown)?;
        let existing = fs::symlink_metadata(&target).ok();
        if existing
            .as_ref()
            .is_some_and(|meta| meta.file_type().is_symlink())
        {
            return Err(ArchiveError::ThroughSymlink(shown));
        }
        let write_error = |source: io::Error| ArchiveError::Write {
            path: shown.clone(),
            source,
        };
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                if existing.as_ref().is_some_and(|meta| !meta.is_dir()) {
                    fs::remove_file(&target).map_err(write_error)?;
                }
                fs::create_dir_all(&target).map_err(write_error)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(write_error)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().map_err(read_error)?;
                let remaining = limits.max_bytes.saturating_sub(written.bytes);
                if size > remaining {
                    return Err(ArchiveError::TooManyBytes {
                        limit: limits.max_bytes,
                    });
                }
                if existing.as_ref().is_some_and(|meta| meta.is_dir()) {
                    return Err(write_error(io::Error::other(
                        "a folder of that name exists",
                    )));
                }
                if existing.is_some() {
                    fs::remove_file(&target).map_err(write_error)?;
                }
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(write_error)?;
                // The header's size bounds what the reader yields; `take` makes the cap hold
                // whatever the reader does.
                let copied =
                    io::copy(&mut (&mut entry).take(remaining), &mut file).map_err(read_error)?;
                written.bytes += copied;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(write_error)?;
                files.insert(relative);
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(read_error)?
                    .map(|link| link.into_owned())
                    .unwrap_or_default();
                if existing.as_ref().is_some_and(|meta| meta.is_dir()) {
                    return Err(ArchiveError::ReplacesFolder(shown));
                }
                check_symlink_target(&relative, &link, &shown)?;
                if existing.is_some() {
                    fs::remove_file(&target).map_err(write_error)?;
                }
                std::os::unix::fs::symlink(&link, &target).map_err(write_error)?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(read_error)?
                    .map(|link| link.into_owned())
                    .unwrap_or_default();
                let link_shown = link.display().to_string();
                let escapes = || ArchiveError::LinkEscapes {
                    path: shown.clone(),
                    target: link_shown.clone(),
                };
                let source = match clean_path(&link, &link_shown) {
                    Ok(Some(source)) => source,
                    _ => return Err(escapes()),
                };
                if !files.contains(&source) {
                    return Err(ArchiveError::BadHardLink {
                        path: shown,
                        target: link_shown,
                    });
                }
                check_parents(dest, &source, &link_shown)?;
                let source_path = dest.join(&source);
                let is_file =
                    fs::symlink_metadata(&source_path).is_ok_and(|meta| meta.file_type().is_file());
                if !is_file {
                    return Err(ArchiveError::BadHardLink {
                        path: shown,
                        target: link_shown,
                    });
                }
                if existing.as_ref().is_some_and(|meta| meta.is_dir()) {
                    return Err(ArchiveError::ReplacesFolder(shown));
                }
                if existing.is_some() {
                    fs::remove_file(&target).map_err(write_error)?;
                }
                fs::hard_link(&source_path, &target).map_err(write_error)?;
                files.insert(relative);
            }
            // Metadata entries the reader normally folds into the next entry.
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => {
                return Err(ArchiveError::SpecialEntry {
                    path: shown,
                    kind: entry_kind(other),
                })
            }
        }
    }
    Ok(written)
}

/// Tar stream bytes allowed per entry besides the content: its header, a PAX or GNU header
/// before it, and padding.
const STREAM_BYTES_PER_ENTRY: u64 = 4 * 1024;
/// Tar stream bytes allowed besides: the end-of-archive blocks and a record's padding.
const STREAM_SLACK: u64 = 1024 * 1024;

/// The error a [`Capped`] reader fails with, found again by type.
#[derive(Debug, thiserror::Error)]
#[error("the archive stream is longer than allowed")]
struct StreamCapExceeded;

/// A reader that fails once more than `left` bytes were read.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        match self.left.checked_sub(read as u64) {
            Some(left) => {
                self.left = left;
                Ok(read)
            }
            None => Err(io::Error::other(StreamCapExceeded)),
        }
    }
}

fn entry_kind(kind: tar::EntryType) -> String {
    match kind {
        tar::EntryType::Char => "character device".to_owned(),
        tar::EntryType::Block => "block device".to_owned(),
        tar::EntryType::Fifo => "fifo".to_owned(),
        tar::EntryType::GNUSparse => "sparse file".to_owned(),
        other => format!("special entry (type {})", other.as_byte()),
    }
}

/// The entry's path as normal components only; `None` for the root itself.
fn clean_path(raw: &Path, shown: &str) -> Result<Option<PathBuf>, ArchiveError> {
    let mut clean = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(ArchiveError::ParentDir(shown.to_owned())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::AbsolutePath(shown.to_owned()))
            }
        }
    }
    Ok((!clean.as_os_str().is_empty()).then_some(clean))
}

/// Refuses a path whose folders include a symlink (or anything not a folder), and creates the
/// missing ones.
fn check_parents(dest: &Path, relative: &Path, shown: &str) -> Result<(), ArchiveError> {
    let mut current = dest.to_owned();
    let Some(parent) = relative.parent() else {
        return Ok(());
    };
    for component in parent.components() {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ArchiveError::ThroughSymlink(shown.to_owned()))
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(ArchiveError::Write {
                    path: shown.to_owned(),
                    source: io::Error::other("a file of that name is in the way"),
                })
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&current).map_err(|source| ArchiveError::Write {
                    path: shown.to_owned(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(ArchiveError::Write {
                    path: shown.to_owned(),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// A symlink's target stays inside: relative, `..` only at its start, and no more of them
/// than the link's folder is deep. With entries never passing through symlinks and links
/// never replacing folders, every link then resolves inside (a link it goes through is
/// inside by the same rule).
fn check_symlink_target(relative: &Path, target: &Path, shown: &str) -> Result<(), ArchiveError> {
    let escapes = || ArchiveError::LinkEscapes {
        path: shown.to_owned(),
        target: target.display().to_string(),
    };
    let depth = relative.components().count().saturating_sub(1);
    let mut ups = 0usize;
    let mut seen_normal = false;
    let mut any = false;
    for component in target.components() {
        match component {
            Component::Normal(_) => {
                seen_normal = true;
                any = true;
            }
            Component::CurDir => {}
            Component::ParentDir if !seen_normal => {
                ups += 1;
                any = true;
            }
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(escapes())
            }
        }
    }
    if !any || ups > depth {
        return Err(escapes());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
