//! Safe file writing: files are created with their final mode from the start, written under a
//! temporary name, synced and renamed into place, so a reader never sees half a file and a
//! private key is never readable by others, not even for a moment.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of private files (the key).
pub const PRIVATE_MODE: u32 = 0o600;
/// Mode of public files (certificates, configuration, the unit).
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of the directories the agent creates.
pub const DIR_MODE: u32 = 0o700;

/// Writes `contents` to `path` atomically with exactly `mode`: a temporary file in the same
/// directory is created with `mode` (exclusively, so nothing else can have it open), written,
/// synced and renamed over `path`; the directory is synced afterwards.
///
/// # Errors
///
/// The I/O error; the temporary file is removed when anything fails.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_path(path)?;
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed `mode`; make it exact (never wider than asked).
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(parent(path))
}

/// Makes a directory's entries (files created, renamed or removed in it) durable.
///
/// # Errors
///
/// The I/O error.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents with [`DIR_MODE`]; an existing directory is left as it
/// is.
///
/// # Errors
///
/// The I/O error.
pub fn create_dir_private(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Whether `path` names a temporary file made by [`write_atomic`].
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file name", path.display()),
        )
    })?;
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(io::Error::other)?;
    let tmp = format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        hex::encode(random)
    );
    Ok(parent(path).join(tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_with_the_mode_and_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("agent.key");
        write_atomic(&path, b"one", PRIVATE_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(mode(&path), 0o600);
        write_atomic(&path, b"two", PRIVATE_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["agent.key"]);
        assert!(is_temp_name(".agent.key.tmp-1-ab"));
        assert!(!is_temp_name("agent.key"));
    }
}
