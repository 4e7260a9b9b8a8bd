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
}

pub const EXAMPLES: &[Example] = &[
    Example {
        name: "hello-http",
        base: "busybox",
        egress: false,
        app_file: "start.sh",
    },
    Example {
        name: "python-counter",
        base: "debian12-minimal",
        egress: true,
        app_file: "app.py",
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
    for n in 0..3 {
        if n == 2 {
            // A code change: the steps before the COPY come from the cache.
            let file = source.join(example.app_file);
            let mut text = std::fs::read_to_string(&file)?;
            text.push_str("\n# edited by the benchmark\n");
            std::fs::write(&file, text)?;
        }
        let log = BuildLog::create(&work.join(format!("build-{n}.log")))?;
        let t = Instant::now();
        let out = builder
            .build(&build(n), &log)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.reason()))?;
        times.push(t.elapsed().as_secs_f64());
        outputs.push(out);
    }
    let _ = std::fs::remove_dir_all(&work);
    let cold = &outputs[0];
    Ok(json!({
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
    }))
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
