//! Zip artifacts from disk: good ones unpack, hostile ones are refused
//! without writing outside the destination.

use crate::common;

use std::os::unix::fs::PermissionsExt;

use crate::common::{relative_files, Item, Work};
use ember_artifact::{fetch, ArtifactError, ArtifactSource, Limits};

async fn fetch_zip(
    work: &Work,
    items: &[Item<'_>],
    limits: &Limits,
) -> Result<ember_artifact::Context, ArtifactError> {
    let zip = work.write_zip(items);
    fetch(&ArtifactSource::ZipFile(zip), &work.dest(), limits).await
}

async fn assert_refused(items: &[Item<'_>], what: &str) -> ArtifactError {
    let work = Work::new();
    let err = fetch_zip(&work, items, &Limits::default()).await.err();
    let err = err.unwrap_or_else(|| panic!("{what}: accepted"));
    assert!(!work.dest().exists(), "{what}: dest left behind");
    work.assert_contained();
    err
}

#[tokio::test]
async fn a_good_zip_unpacks_with_modes() {
    let work = Work::new();
    let ctx = fetch_zip(
        &work,
        &[
            Item::File("Dockerfile", b"FROM scratch\n"),
            Item::Dir("app/"),
            Item::FileMode("app/run.sh", b"#!/bin/sh\n", 0o755),
            Item::FileMode("app/private", b"k", 0o600),
            Item::FileAttrs("app/suid", b"x", 0o104_755 << 16),
            Item::File("deep/er/file.txt", b"hello"),
            Item::Symlink("app/link", "../deep/er/file.txt"),
        ],
        &Limits::default(),
    )
    .await
    .unwrap();
    let root = work.dest();
    assert_eq!(ctx.root(), root);
    assert_eq!(
        relative_files(&root),
        [
            "Dockerfile",
            "app",
            "app/link",
            "app/private",
            "app/run.sh",
            "app/suid",
            "deep",
            "deep/er",
            "deep/er/file.txt"
        ]
    );
    let mode = |p: &str| {
        std::fs::metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("app/run.sh"), 0o755);
    assert_eq!(mode("app/private"), 0o600);
    assert_eq!(mode("app/suid"), 0o755, "setuid stripped");
    assert_eq!(mode("Dockerfile") & 0o777, 0o644);
    assert_eq!(
        std::fs::read_link(root.join("app/link")).unwrap().to_str(),
        Some("../deep/er/file.txt")
    );
    assert_eq!(ctx.total_bytes(), 13 + 10 + 1 + 1 + 5);
    assert_eq!(ctx.dockerfile().unwrap(), "FROM scratch\n");
    work.assert_contained();
}

#[tokio::test]
async fn zip_slip_is_refused() {
    for name in ["../x", "/etc/x", "a/../../x", "a/../x"] {
        let err = assert_refused(&[Item::File("ok", b"1"), Item::File(name, b"evil")], name).await;
        assert!(
            matches!(err, ArtifactError::UnsafeEntry { ref entry, .. } if entry == name),
            "{name}: {err}"
        );
    }
}

#[tokio::test]
async fn symlink_escapes_are_refused() {
    let err = assert_refused(&[Item::Symlink("link", "/etc")], "absolute link").await;
    assert!(err.to_string().contains("link"), "{err}");
    assert_refused(&[Item::Symlink("a/link", "../../etc")], "relative escape").await;
    assert_refused(
        &[Item::Symlink("s", "."), Item::Symlink("x", "s/s/../..")],
        "link through link",
    )
    .await;
    // Even a link that stays inside must not be written through.
    let err = assert_refused(
        &[
            Item::Dir("sub/"),
            Item::Symlink("link", "sub"),
            Item::File("link/passwd", b"evil"),
        ],
        "write through link",
    )
    .await;
    assert!(err.to_string().contains("link/passwd"), "{err}");
}

#[tokio::test]
async fn zip_bomb_stops_early() {
    // 64 MiB of zeros deflates to ~64 KiB: a ratio around 1000.
    let zeros = vec![0u8; 64 << 20];
    let work = Work::new();
    let zip = work.write_zip(&[Item::File("bomb", &zeros)]);
    let zip_len = std::fs::metadata(&zip).unwrap().len();
    assert!(zip_len < 512 * 1024, "test zip is {zip_len} bytes");
    let err = fetch(
        &ArtifactSource::ZipFile(zip),
        &work.dest(),
        &Limits::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ArtifactError::EntryRatioTooHigh { .. }),
        "{err}"
    );
    assert!(!work.dest().exists());
    work.assert_contained();

    // A plain size cap also holds, whatever sizes the archive declares.
    let work = Work::new();
    let limits = Limits {
        max_file_bytes: 1 << 20,
        max_ratio: 10_000,
        ..Limits::default()
    };
    let err = fetch_zip(&work, &[Item::File("big", &zeros)], &limits)
        .await
        .unwrap_err();
    assert!(matches!(err, ArtifactError::EntryTooLarge { .. }), "{err}");
    assert!(!work.dest().exists());

    // And so does the total over many small entries.
    let work = Work::new();
    let limits = Limits {
        max_total_bytes: 1000,
        ..Limits::default()
    };
    let chunk = [7u8; 300];
    let err = fetch_zip(
        &work,
        &[
            Item::File("a", &chunk),
            Item::File("b", &chunk),
            Item::File("c", &chunk),
            Item::File("d", &chunk),
        ],
        &limits,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ArtifactError::TooLarge { limit: 1000 }),
        "{err}"
    );
}

#[tokio::test]
async fn overall_ratio_is_capped() {
    // Many entries each just under the per-entry floor, together far
    // beyond the archive's size times the ratio.
    let block = vec![0u8; 1 << 20];
    let names: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
    let items: Vec<Item> = names.iter().map(|n| Item::File(n, &block)).collect();
    let err = assert_refused(&items, "overall ratio").await;
    assert!(matches!(err, ArtifactError::RatioTooHigh { .. }), "{err}");
}

#[tokio::test]
async fn too_many_entries() {
    let names: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
    let items: Vec<Item> = names.iter().map(|n| Item::File(n, b"x")).collect();
    let work = Work::new();
    let limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    let err = fetch_zip(&work, &items, &limits).await.unwrap_err();
    assert!(
        matches!(err, ArtifactError::TooManyEntries { limit: 10 }),
        "{err}"
    );
    assert!(!work.dest().exists());
    // Implicit parent directories count as entries too.
    let work = Work::new();
    let deep = "a/b/c/d/e/f/g/h/i/j/k/file";
    let err = fetch_zip(&work, &[Item::File(deep, b"x")], &limits)
        .await
        .unwrap_err();
    assert!(matches!(err, ArtifactError::TooManyEntries { .. }), "{err}");
}

#[tokio::test]
async fn odd_entries_are_refused() {
    // The writer refuses duplicate names, so rename one in the bytes.
    let mut bytes = common::zip_bytes(&[Item::File("dupA", b"1"), Item::File("dupB", b"2")]);
    for at in 0..bytes.len() - 4 {
        if &bytes[at..at + 4] == b"dupB" {
            bytes[at + 3] = b'A';
        }
    }
    let work = Work::new();
    std::fs::create_dir_all(work.dir.path().join("work")).unwrap();
    let dup = work.dir.path().join("dup.zip");
    std::fs::write(&dup, bytes).unwrap();
    let err = fetch(
        &ArtifactSource::ZipFile(dup),
        &work.dest(),
        &Limits::default(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("duplicate"), "{err}");
    assert!(!work.dest().exists());
    assert_refused(
        &[Item::File("a", b"1"), Item::File("./a", b"2")],
        "duplicate after cleaning",
    )
    .await;
    assert_refused(
        &[Item::File("a", b"1"), Item::File("a/b", b"2")],
        "through a file",
    )
    .await;
    assert_refused(
        &[Item::FileAttrs("dev", b"", 0o020_644 << 16)],
        "char device",
    )
    .await;
    assert_refused(&[Item::FileAttrs("fifo", b"", 0o010_644 << 16)], "fifo").await;
    let deep = "d/".repeat(65) + "f";
    assert_refused(&[Item::File(&deep, b"x")], "too deep").await;
    let work = Work::new();
    std::fs::create_dir_all(work.dir.path().join("work")).unwrap();
    let junk = work.dir.path().join("junk.zip");
    std::fs::write(&junk, b"this is not a zip").unwrap();
    let err = fetch(
        &ArtifactSource::ZipFile(junk),
        &work.dest(),
        &Limits::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ArtifactError::BadZip(_)), "{err}");
    assert!(!work.dest().exists());
}

#[tokio::test]
async fn encrypted_entries_are_refused() {
    // Set the "encrypted" general-purpose flag bit by hand in both headers
    // of a stored entry; the writer cannot make encrypted entries without
    // the crypto features.
    let mut bytes = common::zip_bytes(&[Item::File("secret", b"data")]);
    let mut patched = 0;
    for sig in [[0x50u8, 0x4b, 3, 4], [0x50, 0x4b, 1, 2]] {
        let at = bytes.windows(4).position(|w| w == sig).unwrap();
        let flag_at = at + if sig[2] == 3 { 6 } else { 8 };
        bytes[flag_at] |= 1;
        patched += 1;
    }
    assert_eq!(patched, 2);
    let work = Work::new();
    std::fs::create_dir_all(work.dir.path().join("work")).unwrap();
    let zip = work.dir.path().join("enc.zip");
    std::fs::write(&zip, bytes).unwrap();
    let err = fetch(
        &ArtifactSource::ZipFile(zip),
        &work.dest(),
        &Limits::default(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("secret"), "{err}");
    assert!(!work.dest().exists());
}

#[tokio::test]
async fn existing_destination_is_left_alone() {
    let work = Work::new();
    let zip = work.write_zip(&[Item::File("a", b"1")]);
    std::fs::create_dir(work.dest()).unwrap();
    std::fs::write(work.dest().join("keep"), b"mine").unwrap();
    let err = fetch(
        &ArtifactSource::ZipFile(zip),
        &work.dest(),
        &Limits::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ArtifactError::DestinationExists(_)), "{err}");
    assert_eq!(std::fs::read(work.dest().join("keep")).unwrap(), b"mine");
}
