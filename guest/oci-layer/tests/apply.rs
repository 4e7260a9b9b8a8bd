//! Layers made with the `tar` crate's `Builder`, applied as root to temp
//! dirs; each test checks what a user would find in the image.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use ember_oci_layer::{apply_layer, Compression, LayerError, LayerStats, Limits};
use tar::{EntryType, Header};

/// A layer under construction: entries in order, as a tar stream.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    /// The path goes into the header raw, so tests can write names the
    /// `tar` crate itself would refuse (`..`).
    fn entry(
        mut self,
        path: &str,
        kind: EntryType,
        data: &[u8],
        link: Option<&str>,
        mode: u32,
    ) -> Self {
        let mut header = Header::new_gnu();
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(1_000_000);
        header.set_uid(0);
        header.set_gid(0);
        if let Some(link) = link {
            header.set_link_name_literal(link).unwrap();
        }
        header.set_cksum();
        self.0.append(&header, data).unwrap();
        self
    }

    fn file(self, path: &str, data: &str) -> Self {
        self.entry(path, EntryType::Regular, data.as_bytes(), None, 0o644)
    }

    fn dir(self, path: &str) -> Self {
        self.entry(path, EntryType::Directory, b"", None, 0o755)
    }

    fn symlink(self, path: &str, target: &str) -> Self {
        self.entry(path, EntryType::Symlink, b"", Some(target), 0o777)
    }

    fn tar(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn apply_bytes(
    root: &Path,
    bytes: &[u8],
    compression: Compression,
    limits: &Limits,
) -> Result<LayerStats, LayerError> {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(bytes).unwrap();
    apply_layer(root, &mut file, compression, limits)
}

fn apply(root: &Path, layer: Layer) -> Result<LayerStats, LayerError> {
    apply_bytes(root, &layer.tar(), Compression::None, &Limits::default())
}

/// A root inside a parent the test also watches, to see nothing leaked.
fn sandbox() -> (tempfile::TempDir, std::path::PathBuf) {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    (outer, root)
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn whiteouts_remove_a_lower_file_and_directory() {
    let (_outer, root) = sandbox();
    apply(
        &root,
        Layer::new()
            .file("etc/keep", "k")
            .file("etc/gone", "g")
            .file("var/cache/a/b", "b"),
    )
    .unwrap();
    let stats = apply(
        &root,
        Layer::new()
            .file("etc/.wh.gone", "")
            .file("var/.wh.cache", "")
            .file("etc/new", "n"),
    )
    .unwrap();
    assert_eq!(names(&root.join("etc")), ["keep", "new"]);
    assert!(names(&root.join("var")).is_empty());
    assert_eq!(stats.whiteouts, 2);
    assert_eq!(stats.entries, 1, "whiteouts are not extracted");
}

#[test]
fn opaque_directory_keeps_only_this_layers_children() {
    let (_outer, root) = sandbox();
    apply(
        &root,
        Layer::new()
            .file("app/old", "o")
            .file("app/sub/deep", "d")
            .file("other", "x"),
    )
    .unwrap();
    apply(
        &root,
        Layer::new()
            .dir("app/")
            .file("app/new", "n")
            .file("app/.wh..wh..opq", ""),
    )
    .unwrap();
    assert_eq!(names(&root.join("app")), ["new"]);
    assert_eq!(fs::read_to_string(root.join("other")).unwrap(), "x");
}

#[test]
fn parent_components_are_refused() {
    let (outer, root) = sandbox();
    for path in ["../x", "a/../../x", "./../x"] {
        let err = apply(&root, Layer::new().file(path, "escape")).unwrap_err();
        assert!(err.to_string().contains("escapes the image root"), "{err}");
        assert!(err.to_string().contains(path), "{err}");
    }
    let err = apply(&root, Layer::new().file(".wh...", "")).unwrap_err();
    assert!(err.to_string().contains("escapes the image root"), "{err}");
    assert_eq!(names(outer.path()), ["root"]);
}

#[test]
fn symlinks_on_the_way_resolve_inside_the_root() {
    let (outer, root) = sandbox();
    let layer = Layer::new()
        .symlink("abs", "/")
        .symlink("rel", "../../..")
        .symlink("loop", "loop")
        .file("abs/x", "1")
        .file("rel/y", "2")
        .file("abs/tmp/z", "3");
    apply(&root, layer).unwrap();
    assert_eq!(fs::read_to_string(root.join("x")).unwrap(), "1");
    assert_eq!(fs::read_to_string(root.join("y")).unwrap(), "2");
    assert_eq!(fs::read_to_string(root.join("tmp/z")).unwrap(), "3");
    // The symlinks themselves are kept as written, never rewritten.
    assert_eq!(
        fs::read_link(root.join("rel")).unwrap(),
        Path::new("../../..")
    );
    assert_eq!(names(outer.path()), ["root"]);
    assert!(!Path::new("/x").exists() && !Path::new("/tmp/z").exists());

    // A whiteout through a symlink stays inside too.
    fs::write(outer.path().join("victim"), "v").unwrap();
    apply(&root, Layer::new().file("rel/.wh.victim", "")).unwrap();
    assert!(outer.path().join("victim").exists());

    let err = apply(&root, Layer::new().file("loop/x", "")).unwrap_err();
    assert!(
        err.to_string()
            .contains("too many levels of symbolic links"),
        "{err}"
    );
}

#[test]
fn a_file_never_writes_through_a_symlink_or_hard_link() {
    let (outer, root) = sandbox();
    let outside = outer.path().join("outside");
    fs::write(&outside, "host").unwrap();
    apply(
        &root,
        Layer::new()
            .file("lower", "lower")
            .symlink("link", outside.to_str().unwrap()),
    )
    .unwrap();
    apply(
        &root,
        Layer::new()
            .entry("shared", EntryType::Link, b"", Some("lower"), 0)
            .file("link", "replaced"),
    )
    .unwrap();
    apply(&root, Layer::new().file("shared", "new")).unwrap();
    assert_eq!(fs::read_to_string(&outside).unwrap(), "host");
    assert_eq!(fs::read_to_string(root.join("link")).unwrap(), "replaced");
    assert_eq!(fs::read_to_string(root.join("lower")).unwrap(), "lower");
    assert_eq!(fs::read_to_string(root.join("shared")).unwrap(), "new");
}

#[test]
fn device_nodes_are_refused_and_not_created() {
    let (_outer, root) = sandbox();
    for kind in [EntryType::Char, EntryType::Block] {
        let err = apply(
            &root,
            Layer::new().entry("dev/null", kind, b"", None, 0o666),
        )
        .unwrap_err();
        assert!(err.to_string().contains("is a device node"), "{err}");
        assert!(err.to_string().contains("dev/null"), "{err}");
    }
    assert!(names(&root).is_empty());
}

#[test]
fn hard_link_to_a_lower_file() {
    let (_outer, root) = sandbox();
    apply(&root, Layer::new().file("usr/bin/python3.11", "py")).unwrap();
    apply(
        &root,
        Layer::new().entry(
            "usr/bin/python3",
            EntryType::Link,
            b"",
            Some("usr/bin/python3.11"),
            0,
        ),
    )
    .unwrap();
    let a = fs::metadata(root.join("usr/bin/python3.11")).unwrap();
    let b = fs::metadata(root.join("usr/bin/python3")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);

    let err = apply(
        &root,
        Layer::new().entry("x", EntryType::Link, b"", Some("usr/bin"), 0),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("hard link target is a directory"),
        "{err}"
    );
    let err = apply(
        &root,
        Layer::new().entry("x", EntryType::Link, b"", Some("../etc/passwd"), 0),
    )
    .unwrap_err();
    assert!(err.to_string().contains("escapes the image root"), "{err}");
}

#[test]
fn a_file_replaces_a_directory_and_back() {
    let (_outer, root) = sandbox();
    apply(&root, Layer::new().file("a/child", "c").file("b", "file")).unwrap();
    apply(
        &root,
        Layer::new()
            .file("a", "now a file")
            .dir("b/")
            .file("b/inner", "i"),
    )
    .unwrap();
    assert_eq!(fs::read_to_string(root.join("a")).unwrap(), "now a file");
    assert_eq!(fs::read_to_string(root.join("b/inner")).unwrap(), "i");
    // A directory over a directory keeps what is in it.
    apply(
        &root,
        Layer::new().entry("b", EntryType::Directory, b"", None, 0o700),
    )
    .unwrap();
    assert_eq!(names(&root.join("b")), ["inner"]);
    assert_eq!(
        fs::metadata(root.join("b")).unwrap().permissions().mode() & 0o7777,
        0o700
    );
}

#[test]
fn setuid_owner_xattr_and_times_are_kept() {
    let (_outer, root) = sandbox();
    let mut builder = tar::Builder::new(Vec::new());
    // A file capability (v2): cap_net_bind_service, effective.
    let capability: &[u8] = &[1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    builder
        .append_pax_extensions([("SCHILY.xattr.security.capability", capability)])
        .unwrap();
    let mut header = Header::new_ustar();
    header.set_path("usr/bin/ping").unwrap();
    header.set_size(4);
    header.set_mode(0o4755);
    header.set_uid(1234);
    header.set_gid(5678);
    header.set_mtime(1_600_000_000);
    header.set_cksum();
    builder.append(&header, &b"ping"[..]).unwrap();
    let mut dir = Header::new_ustar();
    dir.set_path("usr/bin/").unwrap();
    dir.set_entry_type(EntryType::Directory);
    dir.set_mode(0o1777);
    dir.set_mtime(1_500_000_000);
    dir.set_size(0);
    dir.set_uid(0);
    dir.set_gid(0);
    dir.set_cksum();
    builder.append(&dir, &b""[..]).unwrap();
    let mut file = Header::new_ustar();
    file.set_path("usr/bin/later").unwrap();
    file.set_size(0);
    file.set_mode(0o644);
    file.set_uid(0);
    file.set_gid(0);
    file.set_mtime(0);
    file.set_cksum();
    builder.append(&file, &b""[..]).unwrap();
    apply_bytes(
        &root,
        &builder.into_inner().unwrap(),
        Compression::None,
        &Limits::default(),
    )
    .unwrap();

    let ping = root.join("usr/bin/ping");
    let meta = fs::symlink_metadata(&ping).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o4755);
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    assert_eq!(meta.mtime(), 1_600_000_000);
    let mut value = [0u8; 64];
    let n = rustix::fs::lgetxattr(&ping, "security.capability", &mut value).unwrap();
    assert_eq!(&value[..n], capability);
    let bin = fs::metadata(root.join("usr/bin")).unwrap();
    assert_eq!(bin.mode() & 0o7777, 0o1777);
    assert_eq!(
        bin.mtime(),
        1_500_000_000,
        "set after its children were added"
    );
}

#[test]
fn gzip_and_zstd_layers() {
    let tar = Layer::new()
        .file("hello", "world")
        .dir("d/")
        .symlink("d/l", "../hello")
        .tar();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&tar).unwrap();
    let gzip = gzip.finish().unwrap();
    let zstd =
        ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
    for (bytes, compression) in [(gzip, Compression::Gzip), (zstd, Compression::Zstd)] {
        let (_outer, root) = sandbox();
        let stats = apply_bytes(&root, &bytes, compression, &Limits::default()).unwrap();
        assert_eq!(fs::read_to_string(root.join("d/l")).unwrap(), "world");
        assert_eq!(
            stats,
            LayerStats {
                entries: 3,
                bytes: 5,
                whiteouts: 0
            }
        );
    }
    let (_outer, root) = sandbox();
    let err = apply_bytes(&root, &tar, Compression::Gzip, &Limits::default()).unwrap_err();
    assert!(err.to_string().contains("reading the layer"), "{err}");
}

#[test]
fn limits_are_enforced_and_named() {
    let (_outer, root) = sandbox();
    let big = "x".repeat(10_000);
    let layer = || Layer::new().file("a", &big).file("b", "1").file("c", "2");
    let cases = [
        (
            Limits {
                max_uncompressed_bytes: 8_192,
                ..Limits::default()
            },
            "uncompressed bytes per layer",
        ),
        (
            Limits {
                max_entries: 2,
                ..Limits::default()
            },
            "entries per layer",
        ),
    ];
    for (limits, what) in cases {
        let err = apply_bytes(&root, &layer().tar(), Compression::None, &limits).unwrap_err();
        assert!(err.to_string().contains(what), "{err}");
    }
    let limits = Limits {
        max_link_target_len: 3,
        ..Limits::default()
    };
    let err = apply_bytes(
        &root,
        &Layer::new().symlink("l", "long").tar(),
        Compression::None,
        &limits,
    )
    .unwrap_err();
    assert!(err.to_string().contains("link target length"), "{err}");
    let limits = Limits {
        max_path_len: 3,
        ..Limits::default()
    };
    let err = apply_bytes(
        &root,
        &Layer::new().file("long", "").tar(),
        Compression::None,
        &limits,
    )
    .unwrap_err();
    assert!(err.to_string().contains("path length"), "{err}");
}
