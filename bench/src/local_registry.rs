//! The registry example's registry: Debian's `docker-registry` on a free
//! loopback port, serving two images the bench writes and pushes with
//! `skopeo`, so the example needs no internet.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use crate::oci_image::{incompressible, Layer, LayerBuilder, Layout};

/// The tools the example runs, as their Debian packages are named.
const TOOLS: &[&str] = &["docker-registry", "skopeo", "dpkg-deb"];
/// The busybox applets the image's programs and Ember's COPY use.
const APPLETS: &[&str] = &[
    "sh", "httpd", "tar", "sync", "chown", "mkdir", "cat", "echo", "ls", "rm",
];
/// Layer 2: big enough that fetching and unpacking it shows in the times.
const DATA_FILES: usize = 8;
const DATA_FILE_BYTES: usize = 4 << 20;
/// The repository both images are pushed to, as tags `v1` and `v2`.
pub const REPOSITORY: &str = "bench/app";

/// What is missing from PATH, as an install hint, or None.
pub fn missing_tools() -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|tool| !std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not found: install the Debian packages of the same names (scripts/install-deps.sh does)",
            missing.join(", ")
        )
    })
}

/// A running registry; dropping it stops it, on every path out.
pub struct LocalRegistry {
    pub host: String,
    child: Child,
    log: PathBuf,
}

impl LocalRegistry {
    /// Starts one with its storage under `dir`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let host = format!("127.0.0.1:{port}");
        std::fs::create_dir_all(dir)?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {host}\n",
                dir.join("storage").display()
            ),
        )?;
        let log = dir.join("registry.log");
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .stdin(Stdio::null())
            .spawn()
            .context("starting docker-registry")?;
        let mut registry = Self { host, child, log };
        // Readiness, not timing: it listens within seconds, or is broken.
        for _ in 0..600 {
            if TcpStream::connect(&registry.host).is_ok() {
                return Ok(registry);
            }
            if let Some(status) = registry.child.try_wait()? {
                anyhow::bail!("docker-registry exited ({status}): {}", registry.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("docker-registry never listened: {}", registry.log_text())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Pushes `layout`'s `tag` as `REPOSITORY:tag`, blobs as written.
    pub fn push(&self, layout: &Path, tag: &str) -> anyhow::Result<()> {
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--quiet", "--preserve-digests"])
            .arg("--dest-tls-verify=false")
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{REPOSITORY}:{tag}", self.host))
            .output()
            .context("running skopeo")?;
        anyhow::ensure!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The registry, serving both images, and the example's sources that
/// start FROM them.
pub struct Served {
    pub registry: LocalRegistry,
    pub images: BenchImages,
    /// The example FROM `v2`; the caller's `source` is FROM `v1`.
    pub v2_source: PathBuf,
}

/// Starts a registry under `dir`, pushes both images to it, and writes
/// `source`'s Dockerfile from its `Dockerfile.in` (`@IMAGE@` is the `v1`
/// reference), plus a copy FROM `v2`.
pub fn serve_images(dir: &Path, debs: &Path, source: &Path) -> anyhow::Result<Served> {
    let (layout, images) = write_images(dir, debs)?;
    let registry = LocalRegistry::start(&dir.join("registry"))?;
    for tag in ["v1", "v2"] {
        registry.push(layout.dir(), tag)?;
    }
    let template_path = source.join("Dockerfile.in");
    let template = std::fs::read_to_string(&template_path)
        .with_context(|| format!("reading {}", template_path.display()))?;
    std::fs::remove_file(&template_path)?;
    let v2_source = dir.join("source-v2");
    crate::image_build::copy_tree(source, &v2_source)?;
    for (tree, tag) in [(source, "v1"), (v2_source.as_path(), "v2")] {
        let image = format!("{}/{REPOSITORY}:{tag}", registry.host);
        std::fs::write(tree.join("Dockerfile"), template.replace("@IMAGE@", &image))?;
    }
    Ok(Served {
        registry,
        images,
        v2_source,
    })
}

/// The two pushed images, as the JSON line reports them.
pub struct BenchImages {
    pub layers: usize,
    /// Of `v1`'s layer blobs.
    pub compressed_bytes: u64,
    /// Of the layer only `v2` has.
    pub v2_only_bytes: u64,
}

/// Writes `v1` (busybox, data, a page) and `v2` (the same two lower
/// layers, another page) into an OCI layout at `dir`. `debs` holds
/// Debian's busybox-static package, as the managed busybox base keeps it.
pub fn write_images(dir: &Path, debs: &Path) -> anyhow::Result<(Layout, BenchImages)> {
    let busybox = static_busybox(debs, &dir.join("busybox"))?;
    let mut root = LayerBuilder::new()
        .dir("bin")?
        .file("bin/busybox", &busybox, 0o755)?;
    for applet in APPLETS {
        root = root.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    // The agent writes /etc/resolv.conf when the image boots.
    let root = root.dir("etc")?.dir("tmp")?.finish()?;
    let mut data = LayerBuilder::new().dir("data")?;
    for n in 0..DATA_FILES {
        let bytes = incompressible(DATA_FILE_BYTES, n as u64 + 1);
        data = data.file(&format!("data/part-{n}.bin"), &bytes, 0o644)?;
    }
    let data = data.finish()?;
    let page = |text: &str| -> anyhow::Result<Layer> {
        LayerBuilder::new()
            .dir("www")?
            .file("www/index.html", text.as_bytes(), 0o644)?
            .finish()
    };
    let (page_v1, page_v2) = (
        page("<h1>bench app v1</h1>\n")?,
        page("<h1>bench app v2</h1>\n")?,
    );
    let run = json!({
        "Env": ["PATH=/bin"],
        "Cmd": ["httpd", "-f", "-p", "8080", "-h", "/www"],
        "ExposedPorts": {"8080/tcp": {}},
    });
    let mut layout = Layout::create(&dir.join("layout"))?;
    layout.image("v1", run.clone(), &[&root, &data, &page_v1])?;
    layout.image("v2", run, &[&root, &data, &page_v2])?;
    let images = BenchImages {
        layers: 3,
        compressed_bytes: [&root, &data, &page_v1]
            .iter()
            .map(|l| l.compressed_bytes())
            .sum(),
        v2_only_bytes: page_v2.compressed_bytes(),
    };
    Ok((layout, images))
}

/// `bin/busybox` out of the newest `busybox-static_*.deb` in `debs`.
fn static_busybox(debs: &Path, scratch: &Path) -> anyhow::Result<Vec<u8>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(debs)
        .with_context(|| format!("reading {} (make setup fetches it)", debs.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("busybox-static_") && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    let deb = found
        .pop()
        .with_context(|| format!("no busybox-static_*.deb in {}", debs.display()))?;
    std::fs::create_dir_all(scratch)?;
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(scratch)
        .output()
        .context("running dpkg-deb")?;
    anyhow::ensure!(
        out.status.success(),
        "dpkg-deb -x {} failed: {}",
        deb.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let busybox = scratch.join("bin/busybox");
    std::fs::read(&busybox).with_context(|| format!("reading {}", busybox.display()))
}
