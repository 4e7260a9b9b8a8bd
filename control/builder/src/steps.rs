//! Runs a Dockerfile's steps inside the build VM: `RUN` as a guest
//! process, `COPY`/`ADD` as a tar the guest unpacks, `WORKDIR` as a
//! directory. Nothing from the artifact is ever executed or unpacked on
//! the host.

use std::path::{Path, PathBuf};

use ember_artifact::{Compression, Context, EntryKind};
use ember_dockerfile::{Step, StepKind};
use ember_vmm::agent::{AgentClient, ExecRequest};

use crate::log::BuildLog;
use crate::users::{Accounts, Identity};

/// Where a step's tar waits in the guest while it is unpacked.
const GUEST_TAR: &str = "/.ember-build-copy.tar";
/// Docker's default for processes whose environment names no PATH.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a step whose output filled the build log failed.
fn log_cap_reached(log: &BuildLog) -> String {
    format!(
        "its output passed the build log's cap of {} (--build-log-max-mib), so the step was \
         stopped; send long output to a file instead of the log",
        crate::log::describe_bytes(log.max_bytes())
    )
}

/// Runs one step; the error is the reason, for the build's stateReason.
/// `exported` holds a `COPY --from` step's sources, one tar each.
pub async fn run_step(
    agent: &AgentClient,
    context: &Context,
    step: &Step,
    (scratch, exported): (&Path, &[PathBuf]),
    log: &BuildLog,
) -> Result<(), String> {
    match &step.kind {
        StepKind::Run {
            argv,
            env,
            workdir,
            user,
        } => {
            let id = identity(agent, user.as_deref()).await?;
            let req = ExecRequest {
                argv: argv.clone(),
                env: process_env(env, id.as_ref()),
                cwd: Some(workdir.clone()),
                uid: id.as_ref().map(|i| i.uid),
                gid: id.as_ref().map(|i| i.gid),
                ..Default::default()
            };
            let exec = agent.exec_streaming(req, |stream, bytes| log.output(stream, bytes));
            // A step whose output hits the log's cap is stopped there (the
            // build VM goes with the failed build), not left running blind.
            let exited = tokio::select! {
                exited = exec => exited,
                () = log.truncated() => return Err(log_cap_reached(log)),
            };
            log.flush_output();
            if log.is_truncated() {
                return Err(log_cap_reached(log));
            }
            let (code, signal) = exited.map_err(|e| format!("the build VM's agent failed: {e}"))?;
            match (code, signal) {
                (Some(0), _) => Ok(()),
                (Some(c), _) => Err(format!("the command exited with code {c}")),
                (None, Some(s)) => Err(format!("the command was killed by signal {s}")),
                (None, None) => Err("the command ended without an exit status".into()),
            }
        }
        StepKind::Copy {
            sources,
            dest,
            chown,
            extract_archives,
            from,
        } => {
            let owner = match chown {
                Some(spec) => {
                    let id = Accounts::load(agent).await.resolve(spec)?;
                    Some((id.uid, id.gid))
                }
                None => None,
            };
            if from.is_some() {
                return copy_from_stage(agent, sources, exported, dest, owner, log).await;
            }
            copy(
                agent,
                context,
                sources,
                dest,
                owner,
                *extract_archives,
                scratch,
                log,
            )
            .await
        }
        StepKind::Workdir { path, user } => {
            let mut script = format!("mkdir -p -- {}", shell_quote(path));
            if let Some(id) = identity(agent, user.as_deref()).await? {
                script.push_str(&format!(
                    " && chown {}:{} -- {}",
                    id.uid,
                    id.gid,
                    shell_quote(path)
                ));
            }
            guest_sh(agent, &script).await
        }
    }
}

async fn identity(agent: &AgentClient, user: Option<&str>) -> Result<Option<Identity>, String> {
    match user {
        None => Ok(None),
        Some(spec) => Accounts::load(agent).await.resolve(spec).map(Some),
    }
}

/// The environment a process sees: the image's, plus PATH and HOME the
/// way Docker supplies them when the image leaves them out.
pub fn process_env(env: &[(String, String)], id: Option<&Identity>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(env.len() + 2);
    for (k, v) in env {
        out.retain(|(ek, _)| ek != k);
        out.push((k.clone(), v.clone()));
    }
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    if !out.iter().any(|(k, _)| k == "HOME") {
        let home = match id {
            Some(i) => i.home.clone().unwrap_or_else(|| "/".into()),
            None => "/root".into(),
        };
        out.push(("HOME".into(), home));
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn copy(
    agent: &AgentClient,
    context: &Context,
    sources: &[String],
    dest: &str,
    owner: Option<(u32, u32)>,
    extract_archives: bool,
    scratch: &Path,
    log: &BuildLog,
) -> Result<(), String> {
    let selected = context.select(sources).map_err(|e| e.to_string())?;
    let tar_path = scratch.join("copy.tar");
    // Reading the context and writing the tar is blocking file work; the
    // runtime is multi-threaded, so it may block this worker in place.
    let tar = tokio::task::block_in_place(|| {
        let mut file = std::fs::File::create(&tar_path).map_err(|e| e.to_string())?;
        context
            .write_copy_tar(&selected, dest, owner, extract_archives, &mut file)
            .map_err(|e| e.to_string())
    })?;
    // The tar carries only what is copied; a directory destination is
    // made (and given to `--chown`'s owner) here, as Docker does.
    let dest_is_dir = dest.ends_with('/')
        || selected.len() > 1
        || selected
            .iter()
            .any(|s| matches!(s.source.kind, EntryKind::Dir));
    if dest_is_dir {
        let mut script = format!("mkdir -p -- {}", shell_quote(dest));
        if let Some((uid, gid)) = owner {
            script.push_str(&format!(" && chown {uid}:{gid} -- {}", shell_quote(dest)));
        }
        guest_sh(agent, &script).await?;
    }
    upload(agent, &tar_path).await?;
    log.line(&format!("  sending {} bytes", tar.bytes));
    let unpacked = guest_sh(
        agent,
        &format!("tar -x -f {GUEST_TAR} -C / ; rc=$?; rm -f {GUEST_TAR}; exit $rc"),
    )
    .await;
    let _ = std::fs::remove_file(&tar_path);
    unpacked?;
    for (archive, into, compression) in &tar.archives {
        log.line(&format!("  extracting {} into {into}", archive.display()));
        upload(agent, &context.root().join(archive)).await?;
        let flag = match compression {
            Compression::None => "",
            Compression::Gzip => "-z",
            Compression::Bzip2 => "-j",
            Compression::Xz => "-J",
        };
        let into = shell_quote(into);
        guest_sh(
            agent,
            &format!(
                "mkdir -p -- {into} && tar -x {flag} -f {GUEST_TAR} -C {into}; rc=$?; rm -f {GUEST_TAR}; exit $rc"
            ),
        )
        .await?;
    }
    Ok(())
}

/// Where `COPY --from` unpacks a source in the guest before placing it.
const GUEST_STAGING: &str = "/.ember-build-from";

/// Places each source's tar (made by the source stage's VM) by Docker's
/// rules: a directory's contents go into `dest`, a file goes into `dest`
/// when that names a directory (a trailing `/`), or becomes `dest`. The
/// guest unpacks and moves; `--chown` applies to what was copied only.
async fn copy_from_stage(
    agent: &AgentClient,
    sources: &[String],
    exported: &[PathBuf],
    dest: &str,
    owner: Option<(u32, u32)>,
    log: &BuildLog,
) -> Result<(), String> {
    if exported.len() != sources.len() {
        return Err("the files of the source stage were not exported".into());
    }
    let quoted_dest = shell_quote(dest);
    let parent_of_dest = shell_quote(dest.rsplit_once('/').map_or("/", |(p, _)| p));
    for (source, tar) in sources.iter().zip(exported) {
        let name = source.rsplit('/').next().unwrap_or(source);
        let staged = shell_quote(&format!("{GUEST_STAGING}/{name}"));
        upload(agent, tar).await?;
        let bytes = std::fs::metadata(tar).map(|m| m.len()).unwrap_or(0);
        log.line(&format!("  copying {source} ({bytes} bytes as a tar)"));
        let chown = match owner {
            Some((uid, gid)) => format!("chown -hR {uid}:{gid} {staged} && "),
            None => String::new(),
        };
        let chown_dest = match owner {
            Some((uid, gid)) => format!(" && chown {uid}:{gid} {quoted_dest}"),
            None => String::new(),
        };
        let place = if dest.ends_with('/') {
            format!("mkdir -p {quoted_dest}{chown_dest} && cp -a {staged} {quoted_dest}")
        } else {
            format!("mkdir -p {parent_of_dest} && cp -a {staged} {quoted_dest}")
        };
        let script = format!(
            "rm -rf {GUEST_STAGING} && mkdir {GUEST_STAGING} && tar -x -f {GUEST_TAR} -C {GUEST_STAGING} && {chown}\
             if [ -d {staged} ] && [ ! -L {staged} ]; then mkdir -p {quoted_dest}{chown_dest} && cp -a {staged}/. {quoted_dest}; \
             else {place}; fi; rc=$?; rm -rf {GUEST_STAGING} {GUEST_TAR}; exit $rc"
        );
        let placed = guest_sh(agent, &script).await;
        let _ = std::fs::remove_file(tar);
        placed?;
    }
    Ok(())
}

async fn upload(agent: &AgentClient, path: &Path) -> Result<(), String> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    agent
        .write_file_from(GUEST_TAR, file, 0o600)
        .await
        .map(|_| ())
        .map_err(|e| format!("sending files into the build VM failed: {e}"))
}

/// Runs an Ember-written shell snippet in the guest; output goes in the error.
pub async fn guest_sh(agent: &AgentClient, script: &str) -> Result<(), String> {
    let out = agent
        .sh(script)
        .await
        .map_err(|e| format!("the build VM's agent failed: {e}"))?;
    if out.success() {
        Ok(())
    } else {
        Err(format!(
            "`{script}` failed: {}",
            out.stderr_str()
                .trim()
                .chars()
                .take(1000)
                .collect::<String>()
        ))
    }
}

/// Single-quotes a word for `sh`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_gets_docker_defaults_and_later_values_win() {
        let env = vec![
            ("A".to_string(), "1".to_string()),
            ("A".to_string(), "2".to_string()),
        ];
        let out = process_env(&env, None);
        assert_eq!(out[0], ("PATH".into(), DEFAULT_PATH.into()));
        assert!(out.contains(&("A".into(), "2".into())));
        assert!(!out.contains(&("A".into(), "1".into())));
        assert!(out.contains(&("HOME".into(), "/root".into())));
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}
