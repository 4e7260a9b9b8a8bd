//! `ember-agent unpack-oci-layer` in a real guest whose root disk starts
//! empty, the way a build VM applies a pulled image's layers: in order,
//! whiteouts honoured, and never reaching the guest's own tmpfs mounts.

use crate::common;

use std::io::Write;
use std::process::Command;

use ember_vmm::agent::{AgentClient, ExecRequest};
use ember_vmm::Hypervisor;

const LAYER: &str = "/.ember-oci-layer";

/// A gzip layer: regular files `(path, contents)`, then character devices.
fn gzip_layer(files: &[(&str, &str)], devices: &[&str]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, contents) in files {
        let mut header = tar::Header::new_ustar();
        header.set_path(path).unwrap();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder.append(&header, contents.as_bytes()).unwrap();
    }
    for path in devices {
        let mut header = tar::Header::new_ustar();
        header.set_path(path).unwrap();
        header.set_entry_type(tar::EntryType::Char);
        header.set_size(0);
        header.set_mode(0o666);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder.append(&header, &b""[..]).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&tar).unwrap();
    gzip.finish().unwrap()
}

/// Uploads and applies one layer; returns (exit code, stdout, stderr).
async fn unpack(agent: &AgentClient, layer: &[u8]) -> (Option<i32>, String, String) {
    agent.write_file_from(LAYER, layer, 0o600).await.unwrap();
    let out = agent
        .exec(ExecRequest {
            argv: ["/proc/1/exe", "unpack-oci-layer", "gzip", LAYER]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    (out.code, out.stdout_str(), out.stderr_str())
}

async fn read(agent: &AgentClient, path: &str) -> Option<String> {
    let bytes = agent.read_file(path, 1 << 20).await.ok()?;
    Some(String::from_utf8(bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_apply_in_order_to_an_empty_root_disk_alone() {
    let env = common::env().await;
    let disk_dir = tempfile::tempdir().unwrap();
    let empty = disk_dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let image = disk_dir.path().join("root.ext4");
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-E", "root_owner=0:0", "-F", "-d"])
        .arg(&empty)
        .arg(&image)
        .arg("256M")
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let config = ember_vmm::VmConfig::new("oci-layer", &env.kernel, &env.initramfs, &image);
    let vm = env.hv.boot(config).await.unwrap();
    let agent = vm.agent();

    let first = gzip_layer(
        &[
            ("etc/hello", "hi"),
            ("etc/gone", "bye"),
            ("app/old", "old"),
            // Lands on the root disk, not in the guest's /tmp tmpfs.
            ("tmp/marker", "disk"),
        ],
        &[],
    );
    let (code, stdout, stderr) = unpack(agent, &first).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let stats: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(stats["entries"], 4, "{stdout}");
    assert_eq!(read(agent, "/etc/hello").await.as_deref(), Some("hi"));
    assert_eq!(
        read(agent, "/tmp/marker").await,
        None,
        "the layer reached the tmpfs"
    );
    assert_eq!(
        read(agent, LAYER).await,
        None,
        "the uploaded layer is left on the disk"
    );

    let second = gzip_layer(
        &[
            ("etc/.wh.gone", ""),
            ("app/.wh..wh..opq", ""),
            ("app/new", "new"),
        ],
        &[],
    );
    let (code, stdout, stderr) = unpack(agent, &second).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(stdout.contains("\"whiteouts\":2"), "{stdout}");
    assert_eq!(read(agent, "/etc/gone").await, None);
    assert_eq!(read(agent, "/app/old").await, None);
    assert_eq!(read(agent, "/app/new").await.as_deref(), Some("new"));
    assert_eq!(read(agent, "/etc/hello").await.as_deref(), Some("hi"));

    let hostile = gzip_layer(&[], &["dev/evil"]);
    let (code, _, stderr) = unpack(agent, &hostile).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("\"dev/evil\" is a device node"), "{stderr}");
    vm.stop().await.unwrap();
}
