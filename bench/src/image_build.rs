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

use crate::local_registry;

/// An example folder and what its build needs.
pub struct Example {
    pub name: &'static str,
    pub base: &'static str,
    pub egress: bool,
    /// A file a COPY step copies: edited for the code-change rebuild.
    pub app_file: &'static str,
    /// Its `Dockerfile.in` starts FROM a registry image: the bench serves
    /// it from a local registry of its own (see `local_registry`), and the
    /// first build starts with an empty layer cache.
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
        name: "hello-oci",
        base: "busybox",
        egress: false,
        app_file: "hello.txt",
        registry: true,
    },
];

pub async fn run(
    data_dir: &Path,
    agent: &Path,
    accel: AccelChoice,
    example: &Example,
) -> anyhow::Result<serde_json::Value> {
    if example.registry {
        // Said before any set-up, so the other benchmarks still run.
        if let Some(missing) = local_registry::missing_tools() {
            return Ok(error_line(example, &missing));
        }
    }
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
    // A private copy, so the code-change rebuild can edit it.
    let source = work.join("source");
    copy_tree(&Path::new("examples").join(example.name), &source)?;
    let registry = if example.registry {
        let debs = data_dir.join("assets/busybox/debs");
        match local_registry::serve_images(&work.join("registry"), &debs, &source) {
            Ok(served) => Some(served),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&work);
                return Ok(error_line(example, &format!("{e:#}")));
            }
        }
    } else {
        None
    };
    let builder = if let Some(served) = &registry {
        let empty_root = {
            let assets = assets.clone();
            tokio::task::spawn_blocking(move || assets.ensure_empty_rootfs())
                .await??
                .image
        };
        builder.with_registry(ember_builder::RegistryBases {
            client: ember_registry::RegistryClient::new(
                &ember_registry::RegistryOptions {
                    insecure_registries: vec![served.registry.host.clone()],
                    ..Default::default()
                },
                ember_registry::PullLimits::default(),
            )?,
            blobs: ember_registry::BlobCache::new(&blobs)?,
            empty_root,
        })
    } else {
        builder
    };
    let build = |n: usize, source: &Path| BuildSpec {
        id: format!("bench-{n}"),
        artifact: ArtifactSource::Directory(source.to_path_buf()),
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
    let mut pull_s = Vec::new();
    for n in 0..3 {
        if n == 2 {
            // A code change: the steps before the COPY come from the cache.
            let file = source.join(example.app_file);
            let mut text = std::fs::read_to_string(&file)?;
            text.push_str("\n# edited by the benchmark\n");
            std::fs::write(&file, text)?;
        }
        let timed = timed_build(&builder, &build(n, &source), &work, &blobs).await?;
        times.push(timed.seconds);
        fetched.push(timed.fetched);
        pull_s.push(timed.pull_s);
        match timed.output {
            Ok(out) => outputs.push(out),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&work);
                anyhow::bail!("{e}")
            }
        }
    }
    // A second image sharing the lower layers: only its own layer is
    // fetched, the others come from the layer cache.
    let shared = match &registry {
        Some(served) => {
            let timed = timed_build(&builder, &build(3, &served.v2_source), &work, &blobs).await?;
            if let Err(e) = timed.output {
                let _ = std::fs::remove_dir_all(&work);
                anyhow::bail!("the shared-layer image: {e}");
            }
            Some(timed)
        }
        None => None,
    };
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
    if let (Some(served), Some(shared)) = (&registry, &shared) {
        line["cold_layer_bytes_fetched"] = json!(fetched[0]);
        line["rebuild_layer_bytes_fetched"] = json!(fetched[1] + fetched[2]);
        line["image_layers"] = json!(served.images.layers);
        line["image_compressed_bytes"] = json!(served.images.compressed_bytes);
        if let Some(s) = pull_s[0] {
            line["pull_s"] = json!(s);
        }
        line["shared_image_build_s"] = json!(round2(shared.seconds));
        line["shared_image_layer_bytes_fetched"] = json!(shared.fetched);
        line["shared_image_own_layer_bytes"] = json!(served.images.v2_only_bytes);
    }
    Ok(line)
}

fn error_line(example: &Example, reason: &str) -> serde_json::Value {
    json!({"bench": "image_build", "example": example.name, "error": reason})
}

struct TimedBuild {
    seconds: f64,
    /// Layer bytes the build added to the layer cache.
    fetched: u64,
    /// The pull's own time, as the build log states it.
    pull_s: Option<f64>,
    /// The build's failure reason on `Err`.
    output: Result<ember_builder::BuildOutput, String>,
}

async fn timed_build(
    builder: &Builder,
    spec: &BuildSpec,
    work: &Path,
    blobs: &Path,
) -> anyhow::Result<TimedBuild> {
    let log_path = work.join(format!("{}.log", spec.id));
    let log = BuildLog::create(&log_path)?;
    let cached_bytes = dir_bytes(&blobs.join("sha256"));
    let t = Instant::now();
    let output = builder.build(spec, &log).await;
    let seconds = t.elapsed().as_secs_f64();
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    Ok(TimedBuild {
        seconds,
        fetched: dir_bytes(&blobs.join("sha256")).saturating_sub(cached_bytes),
        pull_s: pull_seconds(&log_text),
        output: output.map_err(|e| e.reason()),
    })
}

/// X of the builder's `pulled REF (DIGEST) in X s: …` line.
fn pull_seconds(log: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains("pulled "))?;
    let (_, rest) = line.split_once(") in ")?;
    rest.split_once(" s:")?.0.trim().parse().ok()
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
