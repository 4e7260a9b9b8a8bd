//! An OCI layer applied to a temp root that already holds hostile lower
//! layer entries: symlinks out of the root, relative and absolute, both
//! pointing at a canary directory beside it. Checked after every layer,
//! applied or refused: nothing exists outside the root but the canary, and
//! the canary is unchanged (content, mode, owner).
#![no_main]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use ember_oci_layer::{apply_layer, Compression, Limits};
use libfuzzer_sys::fuzz_target;

const CANARY: &[u8] = b"outside the root";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, layer)) = data.split_first() else {
        return;
    };
    let compression = match mode % 3 {
        0 => Compression::None,
        1 => Compression::Gzip,
        _ => Compression::Zstd,
    };
    let tmp = tempfile::tempdir().expect("a temp dir");
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    fs::create_dir(&root).expect("the root");
    fs::create_dir(&outside).expect("the canary dir");
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).expect("canary dir mode");
    fs::write(outside.join("canary"), CANARY).expect("the canary");
    fs::set_permissions(outside.join("canary"), fs::Permissions::from_mode(0o644))
        .expect("canary mode");
    // What a lower layer may have left: links a naive extractor follows
    // out of the root. In-root resolution sends them elsewhere.
    symlink("../outside", root.join("up")).expect("a relative link");
    symlink(&outside, root.join("abs")).expect("an absolute link");
    fs::create_dir(root.join("d")).expect("a dir");
    symlink("../../outside/canary", root.join("d/canary")).expect("a link to the canary");

    let mut file = tempfile::tempfile().expect("a temp file");
    file.write_all(layer).expect("the layer is written");
    let limits = Limits {
        max_entries: 256,
        max_uncompressed_bytes: 4 << 20,
        max_path_len: 1024,
        max_link_target_len: 1024,
        max_xattr_value_bytes: 4096,
    };
    let _ = apply_layer(&root, &mut file, compression, &limits);

    let mut stray = Vec::new();
    for entry in walkdir::WalkDir::new(tmp.path()).min_depth(1) {
        let entry = entry.expect("the temp dir walks");
        let rel = entry.path().strip_prefix(tmp.path()).expect("under tmp");
        if !rel.starts_with("root")
            && rel != Path::new("outside")
            && rel != Path::new("outside/canary")
        {
            stray.push(rel.to_path_buf());
        }
    }
    assert!(stray.is_empty(), "written outside the root: {stray:?}");
    let dir = fs::symlink_metadata(&outside).expect("the canary dir is still there");
    assert!(dir.is_dir() && dir.mode() & 0o7777 == 0o755 && dir.uid() == own_uid());
    let canary = fs::symlink_metadata(outside.join("canary")).expect("the canary is still there");
    assert!(canary.is_file() && canary.mode() & 0o7777 == 0o644 && canary.uid() == own_uid());
    assert_eq!(
        fs::read(outside.join("canary")).expect("the canary reads"),
        CANARY
    );
});

fn own_uid() -> u32 {
    fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}
