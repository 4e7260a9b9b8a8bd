//! `ember-agent unpack-oci-layer <none|gzip|zstd> FILE`: applies one OCI
//! image layer to the build VM's root disk. The host runs it through exec
//! as `/proc/1/exe`, once per layer, in order.
//!
//! The layer is hostile, so it is applied in a mount namespace of its own
//! where every mount but `/` is detached: whatever it names, it reaches
//! only the root disk, never `/proc`, `/sys`, `/dev` or the tmpfs mounts.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::path::Path;

use ember_oci_layer::{apply_layer, Compression, LayerStats, Limits};

pub(crate) const SUBCOMMAND: &str = "unpack-oci-layer";

/// Exit status 0 with one JSON line of stats on stdout, or 1 with the
/// reason on stderr.
pub(crate) fn run(args: &[OsString]) -> i32 {
    match unpack(args) {
        Ok(stats) => {
            let line = serde_json::json!({
                "entries": stats.entries,
                "bytes": stats.bytes,
                "whiteouts": stats.whiteouts,
            });
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("{SUBCOMMAND}: {e}");
            1
        }
    }
}

fn unpack(args: &[OsString]) -> Result<LayerStats, String> {
    let [compression, path] = args else {
        return Err(format!("usage: {SUBCOMMAND} <none|gzip|zstd> FILE"));
    };
    let compression: Compression = compression
        .to_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("{e}"))?;
    let path = Path::new(path);
    let mut layer = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    // The open fd keeps it readable; its blocks are freed when we exit, and
    // the layer's own entries can never meet it on the disk.
    std::fs::remove_file(path).map_err(|e| format!("removing {}: {e}", path.display()))?;
    isolate_root_disk()?;
    let stats = apply_layer(Path::new("/"), &mut layer, compression, &Limits::default())
        .map_err(|e| e.to_string())?;
    // SAFETY: sync has no preconditions; it flushes the layer to the disk
    // before the host moves on to the next step.
    unsafe { libc::sync() };
    Ok(stats)
}

/// Leaves `/` as the only mount this process sees. Any failure is an
/// error: the layer is never applied with a pseudo filesystem in reach.
fn isolate_root_disk() -> Result<(), String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let mut points = mount_points(&mountinfo);
    // SAFETY: unshare with CLONE_NEWNS only changes this process's mount
    // namespace; it takes no pointers.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(format!(
            "unshare(CLONE_NEWNS): {}",
            std::io::Error::last_os_error()
        ));
    }
    // Private first, so the detaching below never propagates back to the
    // agent's own namespace.
    // SAFETY: the pointers are NUL-terminated literals or null, as mount(2)
    // accepts for a propagation change.
    let private = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if private != 0 {
        return Err(format!(
            "making / private: {}",
            std::io::Error::last_os_error()
        ));
    }
    // Deepest first: a child mount's path is always longer than its parent's.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points.iter().filter(|p| p.as_str() != "/") {
        let c_point = CString::new(point.as_str())
            .map_err(|_| format!("mount point {point:?} holds a NUL"))?;
        // SAFETY: c_point is a valid NUL-terminated path for the call.
        if unsafe { libc::umount2(c_point.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(format!(
                "detaching {point}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// The mount points in a mountinfo text (the fifth field), unescaped.
pub(crate) fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
        .collect()
}

/// The kernel writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::mount_points;

    #[test]
    fn mount_points_are_the_fifth_field_unescaped() {
        let info = "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                    23 22 0:5 / /proc rw - proc proc rw\n\
                    24 22 0:20 / /my\\040dir rw - tmpfs tmpfs rw\n";
        assert_eq!(mount_points(info), ["/", "/proc", "/my dir"]);
    }
}
