//! The disk layers of a build's stages: their cache keys, and running the
//! steps not found in the cache in a build VM, one frozen layer per step.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ember_artifact::Context;
use ember_dockerfile::StepKind;
use ember_vmm::{Network, Vm, VmConfig};

use crate::log::BuildLog;
use crate::stages::{self, StageWork};
use crate::{short, step_stage, steps, BuildError, BuildSpec, Builder, SLIRP_RESOLV_CONF};

impl Builder {
    /// Works out every stage's step keys, in order (a stage's keys start
    /// from its parent's filesystem, and a COPY --from covers its source).
    pub(crate) fn stage_keys(
        &self,
        stages: &mut [StageWork<'_>],
        context: &Context,
    ) -> Result<(), BuildError> {
        let count = stages.len();
        for i in 0..count {
            let mut key = match stages[i].parent {
                Some(p) => stages[p].top.clone(),
                None => stages[i].top.clone(),
            };
            let label = stages[i].label(count);
            let mut keys = Vec::with_capacity(stages[i].steps.len());
            for (n, step) in stages[i].steps.iter().enumerate() {
                key.add(&serde_json::to_string(&step.kind).unwrap_or_default());
                match &step.kind {
                    StepKind::Copy {
                        from: Some(source), ..
                    } => {
                        let source_key = stages
                            .get(*source)
                            .filter(|_| *source < i)
                            .map(|s| s.top.hex())
                            .ok_or_else(|| {
                                BuildError::new(
                                    step_stage(&label, stages[i].steps, n),
                                    "COPY --from names no earlier stage",
                                )
                            })?;
                        key.add(&source_key);
                    }
                    StepKind::Copy { sources, .. } => {
                        let digest = context
                            .select(sources)
                            .and_then(|sel| context.digest(&sel))
                            .map_err(|e| {
                                BuildError::new(
                                    step_stage(&label, stages[i].steps, n),
                                    e.to_string(),
                                )
                            })?;
                        key.add(&digest);
                    }
                    _ => {}
                }
                keys.push(key.hex());
            }
            stages[i].keys = keys;
            stages[i].top = key;
        }
        Ok(())
    }

    /// The root filesystem of stage `index` after all its steps, from
    /// `start`. The longest run of leading steps found in the cache is
    /// reused; the build VM boots on that layer and runs the rest, freezing
    /// one cached layer per step, so a changed step re-runs only from there
    /// on. Layers of the steps that succeeded are kept even when a later
    /// step fails. Returns the top layer and how many steps were cached.
    pub(crate) async fn layer(
        &self,
        spec: &BuildSpec,
        (stages, index): (&[StageWork<'_>], usize),
        start: &Path,
        context: &Context,
        tops: &[Option<PathBuf>],
        log: &BuildLog,
    ) -> Result<(PathBuf, usize), BuildError> {
        let stage = &stages[index];
        let label = stage.label(stages.len());
        let total = stage.steps.len();
        let (done, start) = (0..total)
            .rev()
            .find_map(|i| self.cache.layer(&stage.keys[i]).map(|p| (i + 1, p)))
            .unwrap_or((0, start.to_path_buf()));
        for (i, step) in stage.steps.iter().enumerate().take(done) {
            log.line(&format!(
                "{label}step {}/{total} CACHED {}",
                i + 1,
                step.instruction
            ));
        }
        if done == total {
            return Ok((start, done));
        }
        let exported = self
            .export_copies(spec, (stages, index), done, tops, log)
            .await?;
        log.line(&format!(
            "{label}booting the build VM ({} MiB, egress {})",
            self.config.build_memory_mib,
            if spec.egress { "internet" } else { "off" }
        ));
        let vm = self
            .boot_build_vm(
                &format!("build-{}-{index}", short(&spec.id)),
                &start,
                spec.egress,
            )
            .await?;
        let mut frozen = Vec::new();
        let result = self
            .run_steps(
                vm.as_ref(),
                spec,
                (stage, &label, &exported),
                context,
                done,
                &mut frozen,
                log,
            )
            .await;
        self.stop_and_publish(vm.as_ref(), &frozen).await?;
        result.map(|top| (top, done))
    }

    /// Stops a VM that froze disk layers and publishes them under their
    /// keys. Only a layer whose VM is gone is final: then other builds may
    /// find it (kept for the steps that succeeded, whatever came after).
    pub(crate) async fn stop_and_publish(
        &self,
        vm: &dyn Vm,
        frozen: &[(String, PathBuf)],
    ) -> Result<(), BuildError> {
        match vm.stop().await {
            Ok(()) => {
                for (key, layer) in frozen {
                    self.cache
                        .publish_layer(key, layer)
                        .map_err(|e| BuildError::new("save layer", e.to_string()))?;
                }
            }
            Err(e) => tracing::warn!(error = %e, "build VM did not stop; its layers stay private"),
        }
        Ok(())
    }

    pub(crate) async fn boot_build_vm(
        &self,
        name: &str,
        rootfs: &Path,
        egress: bool,
    ) -> Result<Arc<dyn Vm>, BuildError> {
        let mut vm_config =
            VmConfig::new(name, &self.config.kernel, &self.config.initramfs, rootfs);
        vm_config.mem_mib = self.config.build_memory_mib;
        vm_config.vcpus = self.config.build_vcpus;
        vm_config.network = if egress {
            Network::Internet
        } else {
            Network::None
        };
        self.hv
            .boot(vm_config)
            .await
            .map_err(|e| BuildError::new("boot build VM", e.to_string()))
    }

    /// Takes the sources of the stage's COPY --from steps (from step
    /// `first` on) out of their stages: one VM per step, booted on the
    /// source stage's filesystem, without network, stopped afterwards.
    /// Returns, per step, one tar per source.
    async fn export_copies(
        &self,
        spec: &BuildSpec,
        (stages, index): (&[StageWork<'_>], usize),
        first: usize,
        tops: &[Option<PathBuf>],
        log: &BuildLog,
    ) -> Result<Vec<Vec<PathBuf>>, BuildError> {
        let stage = &stages[index];
        let label = stage.label(stages.len());
        let mut exported = vec![Vec::new(); stage.steps.len()];
        for (n, step) in stage.steps.iter().enumerate().skip(first) {
            let StepKind::Copy {
                from: Some(source),
                sources,
                ..
            } = &step.kind
            else {
                continue;
            };
            let fail = |m: String| BuildError::new(step_stage(&label, stage.steps, n), m);
            let rootfs = tops
                .get(*source)
                .cloned()
                .flatten()
                .ok_or_else(|| fail("the source stage was not built".into()))?;
            log.line(&format!(
                "{label}step {}: taking {} out of {}",
                n + 1,
                sources.join(" "),
                stages[*source].label(stages.len()).trim_end()
            ));
            let vm = self
                .boot_build_vm(
                    &format!("build-{}-{index}-from-{n}", short(&spec.id)),
                    &rootfs,
                    false,
                )
                .await?;
            let mut tars = Vec::with_capacity(sources.len());
            let mut result = Ok(());
            // One bound for all the sources of a step, the artifact's.
            let mut budget = self.config.limits.max_total_bytes;
            for (k, path) in sources.iter().enumerate() {
                let dest = stages::export_path(&spec.work_dir, index, n, k);
                match stages::export(vm.agent(), path, &dest, budget).await {
                    Ok(bytes) => {
                        budget = budget.saturating_sub(bytes);
                        tars.push(dest);
                    }
                    Err(e) => {
                        result = Err(fail(e));
                        break;
                    }
                }
            }
            let _ = vm.stop().await;
            result?;
            exported[n] = tars;
        }
        Ok(exported)
    }

    /// Runs steps `first..` of a stage in the build VM, freezing a cached
    /// layer after each; returns the top layer.
    #[allow(clippy::too_many_arguments)]
    async fn run_steps(
        &self,
        vm: &dyn Vm,
        spec: &BuildSpec,
        (stage, label, exported): (&StageWork<'_>, &str, &[Vec<PathBuf>]),
        context: &Context,
        first: usize,
        frozen: &mut Vec<(String, PathBuf)>,
        log: &BuildLog,
    ) -> Result<PathBuf, BuildError> {
        let agent = vm.agent();
        if spec.egress {
            // The guest resolves through the user-mode network's DNS relay.
            agent
                .write_file("/etc/resolv.conf", SLIRP_RESOLV_CONF, 0o644)
                .await
                .map_err(|e| BuildError::new("network set-up", e.to_string()))?;
        }
        let total = stage.steps.len();
        let mut top = PathBuf::new();
        for (i, step) in stage.steps.iter().enumerate().skip(first) {
            log.line(&format!(
                "{label}step {}/{total} {}",
                i + 1,
                step.instruction
            ));
            let t = Instant::now();
            let tars = exported.get(i).map_or(&[][..], |t| &t[..]);
            if let Err(e) = steps::run_step(agent, context, step, (&spec.work_dir, tars), log).await
            {
                // A closed agent is the VM ending: its exit shows a moment
                // later.
                let ended = if agent.is_closed() {
                    vm.wait_exited(std::time::Duration::from_secs(2)).await
                } else {
                    vm.exited()
                };
                let why = match ended {
                    Some(how) => format!("{e}; the build VM's QEMU ended ({how})"),
                    None => e,
                };
                return Err(BuildError::new(step_stage(label, stage.steps, i), why));
            }
            let save = |m: String| BuildError::new("save layer", m);
            steps::guest_sh(agent, "sync").await.map_err(save)?;
            let dest = self.cache.new_layer_path(&stage.keys[i], &spec.id);
            vm.checkpoint_disk(&dest)
                .await
                .map_err(|e| save(e.to_string()))?;
            frozen.push((stage.keys[i].clone(), dest.clone()));
            top = dest;
            log.line(&format!(
                "{label}step {}/{total} done in {:.1} s",
                i + 1,
                t.elapsed().as_secs_f64()
            ));
        }
        Ok(top)
    }
}
