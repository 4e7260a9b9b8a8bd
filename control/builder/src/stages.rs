//! Multi-stage builds on the builder's side: every stage as one list, the
//! cache keys of their steps, which stages the image needs, and taking the
//! files `COPY --from` names out of an earlier stage.
//!
//! The files leave the source stage as tars its own build VM writes (so
//! the host never reads a stage's filesystem) and are streamed to bounded
//! files in the build's folder; the next stage's VM unpacks them.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use ember_dockerfile::{BaseRef, BuildPlan, Step, StepKind};
use ember_vmm::agent::{AgentClient, ExecRequest, OutputStream};

use crate::cache::CacheKey;

/// One stage as the builder runs it; the last one is the image.
pub struct StageWork<'a> {
    pub index: usize,
    pub name: Option<&'a str>,
    /// The base image at the root of the stage (its parent's, if it has one).
    pub base: &'a BaseRef,
    pub parent: Option<usize>,
    pub steps: &'a [Step],
    /// The cache key after each step.
    pub keys: Vec<String>,
    /// The key of the stage's filesystem: after its last step, or its
    /// parent's (or base's) when it has none.
    pub top: CacheKey,
}

impl StageWork<'_> {
    /// How the log and errors name the stage; empty for a single stage.
    pub fn label(&self, stages: usize) -> String {
        match (stages, self.name) {
            (1, _) => String::new(),
            (_, Some(name)) => format!("stage {} ({name}) ", self.index),
            (_, None) => format!("stage {} ", self.index),
        }
    }
}

/// Every stage of `plan` in order, its keys not worked out yet
/// (`root_of`: the key of a base image's filesystem).
pub fn stages<'a>(
    plan: &'a BuildPlan,
    root_of: impl Fn(&BaseRef) -> CacheKey,
) -> Vec<StageWork<'a>> {
    let earlier = plan
        .stages
        .iter()
        .map(|s| (s.name.as_deref(), &s.base, s.parent, &s.steps[..]));
    earlier
        .chain(std::iter::once((
            None,
            &plan.base,
            plan.parent,
            &plan.steps[..],
        )))
        .enumerate()
        .map(|(index, (name, base, parent, steps))| StageWork {
            index,
            name,
            base,
            parent,
            steps,
            keys: Vec::new(),
            top: root_of(base),
        })
        .collect()
}

/// The stages the image needs: the last, and every stage it builds on or
/// copies from, transitively. As BuildKit does, the others are not built.
pub fn needed(stages: &[StageWork<'_>]) -> BTreeSet<usize> {
    let mut needed = BTreeSet::new();
    let mut todo = vec![stages.len() - 1];
    while let Some(i) = todo.pop() {
        if !needed.insert(i) {
            continue;
        }
        let stage = &stages[i];
        todo.extend(stage.parent);
        for step in stage.steps {
            if let StepKind::Copy {
                from: Some(source), ..
            } = &step.kind
            {
                todo.push(*source);
            }
        }
    }
    needed
}

/// Writes the tar of one `COPY --from` source, as the source stage's VM
/// makes it, to `dest` on the host; at most `max_bytes`.
pub async fn export(
    agent: &AgentClient,
    source: &str,
    dest: &Path,
    max_bytes: u64,
) -> Result<u64, String> {
    let (parent, name) = match source.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((parent, name)) => (parent, name),
        None => ("/", source),
    };
    let mut file = std::fs::File::create(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    let mut written = 0u64;
    let mut write_error = None;
    let mut stderr = Vec::new();
    // `./NAME`, so that a name starting with '-' is never an option.
    let req = ExecRequest {
        argv: vec![
            "tar".into(),
            "-c".into(),
            "-f".into(),
            "-".into(),
            "-C".into(),
            parent.into(),
            format!("./{name}"),
        ],
        ..Default::default()
    };
    let exited = agent
        .exec_streaming(req, |stream, bytes| match stream {
            OutputStream::Stdout => {
                written += bytes.len() as u64;
                if written <= max_bytes && write_error.is_none() {
                    if let Err(e) = file.write_all(bytes) {
                        write_error = Some(e);
                    }
                }
            }
            OutputStream::Stderr => {
                if stderr.len() < 1000 {
                    stderr.extend_from_slice(bytes);
                }
            }
        })
        .await
        .map_err(|e| format!("the source stage's build VM failed: {e}"))?;
    if let Some(e) = write_error {
        return Err(format!("{}: {e}", dest.display()));
    }
    if written > max_bytes {
        return Err(format!(
            "{source} takes more than the {max_bytes} bytes left of the artifact size limit as a tar"
        ));
    }
    match exited {
        (Some(0), _) => Ok(written),
        _ => Err(format!(
            "{source} could not be read from the stage: {}",
            String::from_utf8_lossy(&stderr).trim()
        )),
    }
}

/// Where the tar of source `n` of step `step` of stage `stage` waits.
pub fn export_path(work_dir: &Path, stage: usize, step: usize, n: usize) -> PathBuf {
    work_dir.join(format!("from-{stage}-{step}-{n}.tar"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stages_the_image_uses_are_needed() {
        let plan = ember_dockerfile::plan(
            "FROM busybox AS a\nRUN true\n\
             FROM busybox AS unused\nRUN true\n\
             FROM a AS b\nRUN true\n\
             FROM busybox AS c\nRUN true\n\
             FROM b\nCOPY --from=c /x /x\n",
            &Default::default(),
        )
        .unwrap();
        let root = CacheKey::new("busybox", "1", "agent");
        let all = stages(&plan, |_| root.clone());
        assert_eq!(all.len(), 5);
        assert_eq!(
            needed(&all).into_iter().collect::<Vec<_>>(),
            vec![0, 2, 3, 4]
        );
        assert_eq!(all[1].label(5), "stage 1 (unused) ");
        assert_eq!(all[4].label(1), "");
    }
}
