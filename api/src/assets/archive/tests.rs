use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::assets::tests::{dir, file, gzip, link, tar_bytes, RawEntry};

/// Unpacks `entries` (as a gzip'd tar) into a fresh folder.
fn unpack_entries(
    entries: &[RawEntry],
    limits: UnpackLimits,
) -> (tempfile::TempDir, Result<Unpacked, ArchiveError>) {
    let root = tempfile::tempdir().unwrap();
    let archive = root.path().join("archive");
    std::fs::write(&archive, gzip(&tar_bytes(entries))).unwrap();
    let dest = root.path().join("tree");
    std::fs::create_dir(&dest).unwrap();
    let result = unpack(&archive, &dest, limits);
    (root, result)
}

fn refused(entries: &[RawEntry]) -> String {
    let (_root, result) = unpack_entries(entries, UnpackLimits::default());
    result.unwrap_err().to_string()
}

#[test]
fn a_good_archive_unpacks_with_its_links_and_without_setuid() {
    let entries = [
        dir("./"),
        dir("bin/"),
        file("bin/tool", b"#!/bin/sh\necho ok\n", 0o4755),
        file("lib/libfoo.so.1", b"ELF", 0o2644),
        link("lib/libfoo.so", tar::EntryType::Symlink, "libfoo.so.1"),
        link("bin/helper", tar::EntryType::Symlink, "../lib/libfoo.so.1"),
        link("bin/same", tar::EntryType::Link, "bin/tool"),
    ];
    let (root, result) = unpack_entries(&entries, UnpackLimits::default());
    let unpacked = result.unwrap();
    assert_eq!(unpacked.entries, 7);
    assert_eq!(unpacked.bytes, 21);
    let tree = root.path().join("tree");
    let mode = std::fs::metadata(tree.join("bin/tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "setuid dropped");
    let mode = std::fs::metadata(tree.join("lib/libfoo.so.1"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o644, "setgid dropped");
    assert_eq!(std::fs::read(tree.join("lib/libfoo.so")).unwrap(), b"ELF");
    assert_eq!(std::fs::read(tree.join("bin/helper")).unwrap(), b"ELF");
    assert_eq!(
        std::fs::read(tree.join("bin/same")).unwrap(),
        b"#!/bin/sh\necho ok\n"
    );
}

#[test]
fn a_plain_tar_unpacks_and_other_formats_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let archive = root.path().join("archive.tar");
    std::fs::write(&archive, tar_bytes(&[file("bin/x", b"x", 0o755)])).unwrap();
    let dest = root.path().join("tree");
    std::fs::create_dir(&dest).unwrap();
    unpack(&archive, &dest, UnpackLimits::default()).unwrap();
    assert!(dest.join("bin/x").is_file());

    std::fs::write(&archive, b"PK\x03\x04 a zip file").unwrap();
    let error = unpack(&archive, &dest, UnpackLimits::default()).unwrap_err();
    assert!(matches!(error, ArchiveError::UnknownFormat), "{error}");
}

#[test]
fn an_absolute_path_is_refused() {
    assert_eq!(
        refused(&[file("/etc/evil", b"x", 0o644)]),
        "entry \"/etc/evil\" has an absolute path"
    );
}

#[test]
fn a_parent_component_is_refused() {
    assert_eq!(
        refused(&[file("bin/../../evil", b"x", 0o644)]),
        "entry \"bin/../../evil\" has a `..` component"
    );
}

#[test]
fn a_symlink_escaping_the_asset_is_refused() {
    for target in ["../../etc", "/etc", "lib/../../..", "..", ""] {
        let error = refused(&[link("evil", tar::EntryType::Symlink, target)]);
        assert!(
            error.starts_with("link \"evil\" points outside the asset"),
            "{target}: {error}"
        );
    }
    let error = refused(&[link("bin/evil", tar::EntryType::Symlink, "../../x")]);
    assert!(error.contains("points outside"), "{error}");
}

#[test]
fn writing_through_a_symlink_is_refused() {
    // The link itself stays inside, but nothing may be written through it.
    let error = refused(&[
        dir("sub/"),
        link("bin", tar::EntryType::Symlink, "sub"),
        file("bin/tool", b"x", 0o755),
    ]);
    assert_eq!(
        error,
        "entry \"bin/tool\" passes through or replaces a symlink"
    );
    // Nor may a file replace a link (the write would follow it).
    let error = refused(&[
        file("real", b"x", 0o644),
        link("alias", tar::EntryType::Symlink, "real"),
        file("alias", b"y", 0o644),
    ]);
    assert_eq!(
        error,
        "entry \"alias\" passes through or replaces a symlink"
    );
    // Nor a link replace a folder that later entries go into.
    let error = refused(&[dir("bin/"), link("bin", tar::EntryType::Symlink, "lib")]);
    assert_eq!(error, "link entry \"bin\" would replace a folder");
}

#[test]
fn a_hard_link_escaping_the_asset_is_refused() {
    let error = refused(&[link("passwd", tar::EntryType::Link, "/etc/passwd")]);
    assert_eq!(
        error,
        "link \"passwd\" points outside the asset (\"/etc/passwd\")"
    );
    let error = refused(&[link("passwd", tar::EntryType::Link, "../../etc/passwd")]);
    assert!(error.contains("points outside"), "{error}");
    let error = refused(&[link("ghost", tar::EntryType::Link, "not/in/archive")]);
    assert!(
        error.contains("which is not a file of the archive"),
        "{error}"
    );
}

#[test]
fn special_entries_are_refused() {
    let mut fifo = file("pipe", b"", 0o644);
    fifo.kind = tar::EntryType::Fifo;
    assert_eq!(
        refused(&[fifo]),
        "entry \"pipe\" is a fifo, which an asset cannot hold"
    );
    let mut device = file("dev", b"", 0o644);
    device.kind = tar::EntryType::Block;
    assert!(refused(&[device]).contains("block device"));
}

#[test]
fn too_many_bytes_are_refused() {
    let limits = UnpackLimits {
        max_bytes: 10,
        max_entries: 100,
    };
    let (_root, result) = unpack_entries(
        &[file("a", b"123456", 0o644), file("b", b"123456", 0o644)],
        limits,
    );
    assert_eq!(
        result.unwrap_err().to_string(),
        "the archive unpacks to more than 10 bytes"
    );
}

#[test]
fn too_many_entries_are_refused() {
    let limits = UnpackLimits {
        max_bytes: 1000,
        max_entries: 2,
    };
    let (_root, result) = unpack_entries(&[dir("a/"), dir("b/"), dir("c/")], limits);
    assert_eq!(
        result.unwrap_err().to_string(),
        "the archive has more than 2 entries"
    );
}

#[test]
fn a_stream_inflating_past_the_cap_is_refused() {
    // A huge PAX header: no content bytes, but a tar stream far larger than the bounds allow.
    let mut pax = file("pax", &vec![b'x'; 3 * 1024 * 1024], 0o644);
    pax.kind = tar::EntryType::XHeader;
    let limits = UnpackLimits {
        max_bytes: 1024,
        max_entries: 10,
    };
    let (_root, result) = unpack_entries(&[pax, file("a", b"1", 0o644)], limits);
    assert_eq!(
        result.unwrap_err().to_string(),
        "the archive unpacks to more than 1024 bytes"
    );
}
