//! Build contexts: Dockerfile, `.dockerignore`, source selection, digests
//! and the COPY tar, read back with the `tar` crate.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ember_artifact::{ArtifactError, Compression, Context, EntryKind};

fn write(root: &Path, rel: &str, data: &[u8], mode: u32) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, data).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A context like an unpacked artifact would be.
fn sample() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(r, "Dockerfile", b"FROM scratch\nCOPY . /app/\n", 0o644);
    write(
        r,
        ".dockerignore",
        b"# build junk\n*.md\n!README.md\nsecret/\n**/*.pyc\n",
        0o644,
    );
    write(r, "README.md", b"readme", 0o644);
    write(r, "NOTES.md", b"notes", 0o644);
    write(r, "app.py", b"print('hi')\n", 0o644);
    write(r, "tool.py", b"tool", 0o600);
    write(r, "run.sh", b"#!/bin/sh\n", 0o755);
    write(r, "secret/key", b"k", 0o600);
    write(r, "src/lib.py", b"lib", 0o644);
    write(r, "src/lib.pyc", b"bytecode", 0o644);
    write(r, "src/pkg/mod.py", b"mod", 0o644);
    std::os::unix::fs::symlink("../app.py", r.join("src/app-link")).unwrap();
    std::os::unix::fs::symlink("src", r.join("src-link")).unwrap();
    dir
}

fn select_names(ctx: &Context, patterns: &[&str]) -> Result<Vec<String>, ArtifactError> {
    let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
    Ok(ctx
        .select(&patterns)?
        .into_iter()
        .map(|s| s.name.to_string_lossy().into_owned())
        .collect())
}

#[derive(Debug, PartialEq)]
struct TarEntry {
    kind: char,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    data: String,
}

fn read_tar(bytes: &[u8]) -> BTreeMap<String, TarEntry> {
    let mut archive = tar::Archive::new(bytes);
    let mut out = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let header = entry.header().clone();
        let kind = match header.entry_type() {
            tar::EntryType::Regular => 'f',
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            other => panic!("unexpected {other:?}"),
        };
        let data = if kind == 'l' {
            entry
                .link_name()
                .unwrap()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        } else {
            let mut raw = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut raw).unwrap();
            String::from_utf8_lossy(&raw).into_owned()
        };
        out.insert(
            path,
            TarEntry {
                kind,
                mode: header.mode().unwrap(),
                uid: header.uid().unwrap(),
                gid: header.gid().unwrap(),
                mtime: header.mtime().unwrap(),
                data,
            },
        );
    }
    out
}

fn copy_tar(
    ctx: &Context,
    sources: &[&str],
    dest: &str,
    owner: Option<(u32, u32)>,
) -> BTreeMap<String, TarEntry> {
    let patterns: Vec<String> = sources.iter().map(|p| p.to_string()).collect();
    let selected = ctx.select(&patterns).unwrap();
    let mut bytes = Vec::new();
    let result = ctx
        .write_copy_tar(&selected, dest, owner, false, &mut bytes)
        .unwrap();
    assert_eq!(result.bytes, bytes.len() as u64);
    assert!(result.archives.is_empty());
    read_tar(&bytes)
}

#[test]
fn open_reads_size_and_dockerfile() {
    let dir = sample();
    let ctx = Context::open(dir.path()).unwrap();
    assert_eq!(ctx.root(), dir.path());
    let expected: u64 = [26, 46, 6, 5, 12, 4, 10, 1, 3, 8, 3].iter().sum();
    assert_eq!(ctx.total_bytes(), expected);
    assert_eq!(ctx.dockerfile().unwrap(), "FROM scratch\nCOPY . /app/\n");

    let empty = tempfile::tempdir().unwrap();
    let ctx = Context::open(empty.path()).unwrap();
    assert!(matches!(ctx.dockerfile(), Err(ArtifactError::NoDockerfile)));
    write(
        empty.path(),
        "Dockerfile",
        &vec![b'#'; 1024 * 1024 + 1],
        0o644,
    );
    assert!(matches!(
        ctx.dockerfile(),
        Err(ArtifactError::DockerfileTooLarge { .. })
    ));
    write(empty.path(), "Dockerfile", b"FROM \xff\n", 0o644);
    assert!(matches!(
        ctx.dockerfile(),
        Err(ArtifactError::DockerfileNotUtf8)
    ));
    assert!(Context::open(&empty.path().join("nope")).is_err());
}

#[test]
fn select_follows_glob_and_ignore_rules() {
    let dir = sample();
    let ctx = Context::open(dir.path()).unwrap();
    assert_eq!(
        select_names(&ctx, &["*.py"]).unwrap(),
        ["app.py", "tool.py"]
    );
    assert_eq!(
        select_names(&ctx, &["/app.py", "src/../run.sh"]).unwrap(),
        ["app.py", "run.sh"]
    );
    assert_eq!(
        select_names(&ctx, &["src/*"]).unwrap(),
        ["src/app-link", "src/lib.py", "src/pkg"]
    );
    assert_eq!(
        select_names(&ctx, &["[a-s]*.py", "?un.sh"]).unwrap(),
        ["app.py", "run.sh"]
    );
    assert_eq!(
        select_names(&ctx, &["*.md"]).unwrap(),
        ["README.md"],
        "ignored NOTES.md, re-included README.md"
    );

    for missing in [
        "nothing-here",
        "*.rs",
        "secret",
        "secret/key",
        "NOTES.md",
        "src/lib.pyc",
    ] {
        let err = select_names(&ctx, &[missing]).unwrap_err();
        assert!(
            matches!(err, ArtifactError::NoMatch { ref pattern } if pattern == missing),
            "{missing}: {err}"
        );
    }
    for escaping in ["../x", "src/../../x", "/../etc/passwd"] {
        let err = select_names(&ctx, &[escaping]).unwrap_err();
        assert!(
            matches!(err, ArtifactError::SourceEscapes { .. }),
            "{escaping}: {err}"
        );
    }
    assert!(matches!(
        select_names(&ctx, &["src/[a"]),
        Err(ArtifactError::BadPattern { .. })
    ));

    // The root's contents skip what .dockerignore excludes.
    let patterns = vec![".".to_string()];
    let root = ctx.select(&patterns).unwrap();
    assert_eq!(root.len(), 1);
    assert_eq!(root[0].source.kind, EntryKind::Dir);
    let paths: Vec<String> = root[0]
        .contents
        .iter()
        .map(|e| e.path.to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        paths,
        [
            ".dockerignore",
            "Dockerfile",
            "README.md",
            "app.py",
            "run.sh",
            "src",
            "src/app-link",
            "src/lib.py",
            "src/pkg",
            "src/pkg/mod.py",
            "src-link",
            "tool.py"
        ]
    );

    // A symlink source is followed, inside the context.
    let linked = ctx.select(&["src-link".to_string()]).unwrap();
    assert_eq!(linked[0].name, PathBuf::from("src-link"));
    assert_eq!(linked[0].source.path, PathBuf::from("src"));
    std::os::unix::fs::symlink("/etc", dir.path().join("bad-link")).unwrap();
    assert!(matches!(
        ctx.select(&["bad-link".to_string()]),
        Err(ArtifactError::SymlinkEscapes { .. })
    ));
}

#[test]
fn copy_tar_has_docker_copy_semantics() {
    let dir = sample();
    let ctx = Context::open(dir.path()).unwrap();

    // One file to a path without '/': that path.
    let tar = copy_tar(&ctx, &["run.sh"], "/usr/local/bin/start", None);
    let names: Vec<&String> = tar.keys().collect();
    assert_eq!(names, ["usr/local/bin/start"]);
    let e = &tar["usr/local/bin/start"];
    assert_eq!(
        (e.kind, e.mode, e.uid, e.gid, e.mtime),
        ('f', 0o755, 0, 0, 0)
    );
    assert_eq!(e.data, "#!/bin/sh\n");

    // One file to a directory.
    let tar = copy_tar(&ctx, &["tool.py"], "/opt/", Some((1000, 1001)));
    let e = &tar["opt/tool.py"];
    assert_eq!((e.mode, e.uid, e.gid), (0o600, 1000, 1001));

    // A directory source copies its contents, not itself.
    let tar = copy_tar(&ctx, &["src"], "/srv", Some((7, 8)));
    let names: Vec<&str> = tar.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["srv/app-link", "srv/lib.py", "srv/pkg", "srv/pkg/mod.py"]
    );
    assert_eq!(tar["srv/pkg"].kind, 'd');
    assert_eq!(tar["srv/pkg"].uid, 7);
    assert_eq!(tar["srv/app-link"].kind, 'l');
    assert_eq!(tar["srv/app-link"].data, "../app.py");

    // Several sources (here from a glob) land under the directory.
    let tar = copy_tar(&ctx, &["*.py", "run.sh"], "/app/", None);
    let names: Vec<&str> = tar.keys().map(String::as_str).collect();
    assert_eq!(names, ["app/app.py", "app/run.sh", "app/tool.py"]);

    // The whole context to the guest's root.
    let tar = copy_tar(&ctx, &["."], "/", None);
    assert!(tar.contains_key("app.py") && tar.contains_key("src/pkg/mod.py"));
    assert!(!tar
        .keys()
        .any(|k| k.contains("secret") || k.ends_with(".pyc") || k == "NOTES.md"));

    // Several sources need a destination ending in '/'.
    let selected = ctx
        .select(&["app.py".to_string(), "run.sh".to_string()])
        .unwrap();
    let err = ctx
        .write_copy_tar(&selected, "/app", None, false, &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, ArtifactError::BadDestination { .. }), "{err}");
    let err = ctx
        .write_copy_tar(&selected, "relative/", None, false, &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, ArtifactError::BadDestination { .. }), "{err}");

    // Reproducible: the same sources give the same bytes.
    let selected = ctx.select(&[".".to_string()]).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    ctx.write_copy_tar(&selected, "/app/", None, false, &mut a)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    ctx.write_copy_tar(&selected, "/app/", None, false, &mut b)
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn digest_tracks_content_only() {
    let dir = sample();
    let ctx = Context::open(dir.path()).unwrap();
    let digest = |patterns: &[&str]| {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        ctx.digest(&ctx.select(&patterns).unwrap()).unwrap()
    };
    let before = digest(&["src"]);
    assert_eq!(before.len(), 64);
    assert_eq!(before, digest(&["src"]));
    assert_ne!(
        before,
        digest(&["src-link"]),
        "the source name is part of the key"
    );

    // Unselected and ignored files do not matter.
    write(dir.path(), "app.py", b"changed", 0o644);
    write(dir.path(), "src/lib.pyc", b"other bytecode", 0o644);
    assert_eq!(before, digest(&["src"]));

    write(dir.path(), "src/pkg/mod.py", b"mod2", 0o644);
    let changed = digest(&["src"]);
    assert_ne!(before, changed);
    std::fs::set_permissions(
        dir.path().join("src/pkg/mod.py"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let chmodded = digest(&["src"]);
    assert_ne!(changed, chmodded);
    write(dir.path(), "src/new.py", b"", 0o644);
    assert_ne!(chmodded, digest(&["src"]));
}

#[test]
fn add_reports_local_archives_instead_of_copying_them() {
    let dir = sample();
    let r = dir.path();
    let mut plain = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(2);
    header.set_mode(0o644);
    plain
        .append_data(&mut header, "inner.txt", &b"hi"[..])
        .unwrap();
    write(r, "bundle.tar", &plain.into_inner().unwrap(), 0o644);
    write(r, "bundle.tgz", b"\x1f\x8b\x08\x00rest", 0o644);
    write(r, "bundle.tbz", b"BZh91AY&SY", 0o644);
    write(r, "bundle.txz", b"\xfd7zXZ\x00rest", 0o644);
    let ctx = Context::open(r).unwrap();
    let patterns: Vec<String> = ["bundle.*", "app.py"]
        .iter()
        .map(|p| p.to_string())
        .collect();
    let selected = ctx.select(&patterns).unwrap();

    let mut bytes = Vec::new();
    let result = ctx
        .write_copy_tar(&selected, "/opt/", None, true, &mut bytes)
        .unwrap();
    let archives: Vec<(PathBuf, String, Compression)> = ["tar", "tbz", "tgz", "txz"]
        .iter()
        .zip([
            Compression::None,
            Compression::Bzip2,
            Compression::Gzip,
            Compression::Xz,
        ])
        .map(|(ext, c)| (r.join(format!("bundle.{ext}")), "/opt".to_string(), c))
        .collect();
    assert_eq!(result.archives, archives);
    let names: Vec<String> = read_tar(&bytes).into_keys().collect();
    assert_eq!(names, ["opt/app.py"], "archives are not in the tar");

    // COPY (no extraction) copies them as files.
    let mut bytes = Vec::new();
    let result = ctx
        .write_copy_tar(&selected, "/opt/", None, false, &mut bytes)
        .unwrap();
    assert!(result.archives.is_empty());
    assert_eq!(read_tar(&bytes).len(), 5);
}
