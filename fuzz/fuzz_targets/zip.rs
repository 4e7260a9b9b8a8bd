//! The code-artifact zip path (`file://` zip → `fetch` → the unpacked
//! tree → the `COPY` tar written from it), into a temp dir. Checked: nothing
//! lands outside the destination, a failed fetch leaves nothing behind,
//! and the tar for `COPY . /app/` holds only paths under `app/`.
#![no_main]

use std::fs;
use std::path::{Component, Path};
use std::sync::OnceLock;

use ember_artifact::{fetch, ArtifactSource, Limits, SourcePolicy};
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let zip = tmp.path().join("in.zip");
    fs::write(&zip, data).expect("the zip is written");
    let dest = tmp.path().join("out");
    // Small bounds keep each run fast; the bound checks run all the same.
    let limits = Limits {
        max_entries: 64,
        max_total_bytes: 1 << 20,
        max_file_bytes: 256 << 10,
        max_path_len: 512,
        max_depth: 16,
        sources: SourcePolicy::default()
            .with_file_roots(&[tmp.path().to_path_buf()])
            .expect("the temp dir is a root"),
        ..Limits::default()
    };
    let fetched = runtime().block_on(fetch(&ArtifactSource::ZipFile(zip), &dest, &limits));

    let mut outside = Vec::new();
    for entry in walkdir::WalkDir::new(tmp.path()).min_depth(1) {
        let entry = entry.expect("the temp dir walks");
        let rel = entry.path().strip_prefix(tmp.path()).expect("under tmp");
        if rel != Path::new("in.zip") && !rel.starts_with("out") {
            outside.push(rel.to_path_buf());
        }
    }
    assert!(
        outside.is_empty(),
        "written outside the destination: {outside:?}"
    );

    let context = match fetched {
        Ok(context) => context,
        Err(_) => {
            assert!(!dest.exists(), "a failed fetch left {}", dest.display());
            return;
        }
    };
    let real_dest = dest.canonicalize().expect("the destination resolves");
    for entry in walkdir::WalkDir::new(&dest) {
        let entry = entry.expect("the tree walks");
        if let Ok(real) = entry.path().canonicalize() {
            assert!(
                real.starts_with(&real_dest),
                "{} resolves to {}",
                entry.path().display(),
                real.display()
            );
        }
        if entry.path_is_symlink() {
            let target = fs::read_link(entry.path()).expect("a link reads");
            assert!(
                stays_inside(
                    entry.path().strip_prefix(&dest).expect("under dest"),
                    &target
                ),
                "{} -> {} leaves the tree",
                entry.path().display(),
                target.display()
            );
        }
    }
    let _ = context.dockerfile();
    let Ok(selected) = context.select(&[".".to_string()]) else {
        return;
    };
    let mut tar_bytes = Vec::new();
    if context
        .write_copy_tar(&selected, "/app/", Some((1000, 1000)), true, &mut tar_bytes)
        .is_err()
    {
        return;
    }
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    for entry in archive.entries().expect("our own tar reads") {
        let entry = entry.expect("our own tar entry reads");
        let path = entry.path().expect("a tar path").into_owned();
        assert!(path.starts_with("app"), "{}", path.display());
        assert!(
            path.components().all(|c| matches!(c, Component::Normal(_))),
            "{}",
            path.display()
        );
        assert_eq!(entry.header().uid().ok(), Some(1000));
    }
});

/// Whether the symlink at `link` (relative to the tree) pointing at
/// `target` resolves inside the tree, lexically.
fn stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = link.components().count().saturating_sub(1);
    for part in target.components() {
        match part {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth == 0 => return false,
            Component::ParentDir => depth -= 1,
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}
