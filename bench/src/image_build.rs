//! `{"bench":"image_build"}`: an example image built cold (empty build
//! cache, base image already prepared), then rebuilt unchanged.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ember_artifact::ArtifactSource;
use ember_builder::{BuildLog, BuildSpec, Builder, BuilderConfig, ImageHooks};
use ember_vmm::qemu::{QemuConfig, QemuHypervisor};
use ember_vmm::{AccelChoice, Hypervisor};
use serde_json::json;

/// An example folder and what its build needs.
pub struct Example {
    pub name: &'static str,
    pub base: &'static str,
    pub egress: bool,
    /// A file a COPY step copies: edited for the code-change rebuild.
    pub app_file: &'static str,
    /// Its Dockerfile starts FROM a registry image (pulled from the
    /// internet; the first build starts with an empty layer cache).
    pub registry: bool,
}

pub const EXAMPLES: &[Example] = &[
    Example {
        name: "hello-http",
        base: "busybox",
        egress: false,
        app_file: "start.sh",
        registry: false,
    },
    Example {
        name: "python-counter",
        base: "debian12-minimal",
        egress: true,
        app_file: "app.py",
        registry: false,
    },
    Example {
        name: "python-oci",
        base: "busybox",
        egress: false,
        app_file: "app.py",
        registry: true,
    },
];

pub async fn run(
    data_dir: &Path,
    agent: &Path,
    accel: AccelChoice,
    example: &Example,
) -> anyhow::Result<serde_json::Value> {
    let assets = ember_assets::AssetStore::new(data_dir.join("assets"));
    let guest = {
        let (assets, agent) = (assets.clone(), agent.to_path_buf());
        tokio::task::spawn_blocking(move || assets.ensure_guest(&agent)).await??
    };
    let base_def = ember_builder::bases::find(example.base).context("unknown base")?;
    // The base is prepared outside the timed builds: it is a one-time cost
    // per host, not per image.
    let base = {
        let assets = assets.clone();
        tokio::task::spawn_blocking(move || ember_builder::bases::ensure(&assets, base_def))
            .await?
            .map_err(|e| anyhow::anyhow!(e))?
    };
    let work = std::env::temp_dir().join(format!("ember-bench-build-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut qemu = QemuConfig::new(work.join("state"));
    qemu.accel = accel;
    let hv: Arc<dyn Hypervisor> = Arc::new(QemuHypervisor::new(qemu).await?);
    let builder = Builder::new(
        hv,
        BuilderConfig {
            kernel: guest.kernel.clone(),
            initramfs: guest.initramfs.clone(),
            guest_version: "bench".into(),
            cache_dir: work.join("cache"),
            build_memory_mib: 1024,
            build_vcpus: 2,
            limits: Default::default(),
            timeout: Duration::from_secs(3600),
        },
    )?;
    let blobs = work.join("blobs");
    let builder = if example.registry {
        let empty_root = {
            let assets = assets.clone();
            tokio::task::spawn_blocking(move || assets.ensure_empty_rootfs())
                .await??
                .image
        };
        builder.with_registry(ember_builder::RegistryBases {
            client: ember_registry::RegistryClient::new(
                &Default::default(),
                ember_registry::PullLimits::default(),
            )?,
            blobs: ember_registry::BlobCache::new(&blobs)?,
            empty_root,
        })
    } else {
        builder
    };
    // A private copy, so the code-change rebuild can edit it.
    let source = work.join("source");
    copy_tree(&Path::new("examples").join(example.name), &source)?;
    let build = |n: usize| BuildSpec {
        id: format!("bench-{n}"),
        artifact: ArtifactSource::Directory(source.clone()),
        base: base.clone(),
        egress: example.egress,
        environment: Vec::new(),
        hooks: ImageHooks::default(),
        memory_mib: 256,
        work_dir: work.join(format!("work-{n}")),
        output_dir: work.join(format!("out-{n}")),
    };
    let mut times = Vec::new();
    let mut outputs = Vec::new();
    let mut fetched = Vec::new();
    for n in 0..3 {
        if n == 2 {
            // A code change: the steps before the COPY come from the cache.
            let file = source.join(example.app_file);
            let mut text = std::fs::read_to_string(&file)?;
            text.push_str("\n# edited by the benchmark\n");
            std::fs::write(&file, text)?;
        }
        let log = BuildLog::create(&work.join(format!("build-{n}.log")))?;
        let cached_bytes = dir_bytes(&blobs.join("sha256"));
        let t = Instant::now();
        let out = builder.build(&build(n), &log).await;
        times.push(t.elapsed().as_secs_f64());
        fetched.push(dir_bytes(&blobs.join("sha256")) - cached_bytes);
        match out {
            Ok(out) => outputs.push(out),
            Err(e) if example.registry => {
                // The registry is on the internet: say why instead of
                // failing every other benchmark with it.
                let _ = std::fs::remove_dir_all(&work);
                return Ok(json!({
                    "bench": "image_build",
                    "example": example.name,
                    "error": e.reason(),
                }));
            }
            Err(e) => anyhow::bail!("{}", e.reason()),
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    let cold = &outputs[0];
    let mut line = json!({
        "bench": "image_build",
        "example": example.name,
        "cold_build_s": round2(times[0]),
        "rebuild_unchanged_s": round3(times[1]),
        "rebuild_pct": round2(times[1] / times[0] * 100.0),
        "rebuild_steps_cached": outputs[1].cached_steps,
        "rebuild_snapshot_reused": outputs[1].snapshot_reused,
        "rebuild_code_change_s": round2(times[2]),
        "rebuild_code_change_steps_cached": format!("{}/{}", outputs[2].cached_steps, outputs[2].steps),
        "memory_snapshot_bytes": cold.memory_bytes,
        "disk_snapshot_bytes": cold.disk_bytes,
        "code_bytes": cold.code_bytes,
    });
    if example.registry {
        line["cold_layer_bytes_fetched"] = json!(fetched[0]);
        line["rebuild_layer_bytes_fetched"] = json!(fetched[1] + fetched[2]);
    }
    Ok(line)
}

/// Bytes of the files directly in `dir` (the layer cache is flat); 0 when
/// it does not exist yet.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub(crate) fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}
