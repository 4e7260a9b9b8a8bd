//! The last stage of a build: boot the built root filesystem, start the
//! app, wait until it is ready, let it validate itself, snapshot it.

use std::time::{Duration, Instant};

use ember_dockerfile::ImageConfig;
use ember_vmm::agent::ExecRequest;
use ember_vmm::Vm;

use crate::guest_http;
use crate::hooks::{self, Hook, Poll};
use crate::log::BuildLog;
use crate::steps::process_env;
use crate::users::Accounts;
use crate::{BuildError, BuildSpec};

/// The app's stdout and stderr, inside the guest's own disk.
pub const APP_LOG: &str = "/var/log/ember-app.log";
/// How long an app without a ready hook gets to accept on its port.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(300);
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How long a reaped app's exit status may take to be recorded.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(2);

/// Starts the app and returns once it is ready and validated.
pub async fn start_and_wait(
    vm: &dyn Vm,
    spec: &BuildSpec,
    config: &ImageConfig,
    log: &BuildLog,
) -> Result<(), BuildError> {
    let agent = vm.agent();
    let argv = config.command().ok_or_else(|| {
        BuildError::new(
            "start app",
            "the Dockerfile has neither CMD nor ENTRYPOINT: there is no app to start",
        )
    })?;
    let id = match &config.user {
        Some(u) => Some(
            Accounts::load(agent)
                .await
                .resolve(u)
                .map_err(|e| BuildError::new("start app", e))?,
        ),
        None => None,
    };
    let mut env = config.env.clone();
    env.extend(spec.environment.iter().cloned());
    // The agent itself (PID 1, `/proc/1/exe`) makes the folder: the image
    // may have no shell.
    let made = agent
        .exec(ExecRequest {
            argv: vec!["/proc/1/exe".into(), "mkdir-p".into(), "/var/log".into()],
            ..Default::default()
        })
        .await
        .map_err(|e| BuildError::new("start app", format!("the build VM's agent failed: {e}")))?;
    if !made.success() {
        return Err(BuildError::new(
            "start app",
            format!("making /var/log: {}", made.stderr_str().trim()),
        ));
    }
    let pid = agent
        .spawn_detached(ExecRequest {
            argv: argv.clone(),
            env: process_env(&env, id.as_ref()),
            cwd: Some(config.workdir.clone()),
            uid: id.as_ref().map(|i| i.uid),
            gid: id.as_ref().map(|i| i.gid),
            log_path: Some(APP_LOG.into()),
            main: true,
            ..Default::default()
        })
        .await
        .map_err(|e| BuildError::new("start app", format!("could not start {argv:?}: {e}")))?;
    log.line(&format!("started {argv:?} as pid {pid}"));

    let started = Instant::now();
    let hooks = &spec.hooks;
    match (hooks.ready, hooks.port) {
        (Some(timeout), Some(port)) => {
            log.line(&format!(
                "waiting for POST {} on port {port} to answer 200",
                Hook::Ready.path()
            ));
            run_build_hook(vm, port, Hook::Ready, timeout, pid).await?
        }
        _ => match config.exposed_ports.first() {
            Some(&port) => {
                log.line(&format!(
                    "waiting for the app to accept connections on port {port}"
                ));
                let timeout = hooks.ready_timeout.unwrap_or(DEFAULT_READY_TIMEOUT);
                wait_port(vm, port, timeout, pid).await?
            }
            None => log.line("no ready hook and no EXPOSE: snapshotting once the app runs"),
        },
    }
    log.line(&format!(
        "app ready after {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    if let (Some(timeout), Some(port)) = (hooks.validate, hooks.port) {
        log.line(&format!(
            "calling POST {} on port {port}",
            Hook::Validate.path()
        ));
        run_build_hook(vm, port, Hook::Validate, timeout, pid).await?;
    }
    ensure_alive(vm, pid).await
}

/// `ready` or `validate`: 200 goes on, 503 is asked again until the
/// timeout, any other answer fails the build at once.
async fn run_build_hook(
    vm: &dyn Vm,
    port: u16,
    hook: Hook,
    timeout: Duration,
    pid: u32,
) -> Result<(), BuildError> {
    let stage = format!("{} hook", hook.title().to_ascii_lowercase());
    match hooks::poll(vm.agent(), port, hook, timeout, || ensure_alive(vm, pid)).await? {
        Poll::Done => Ok(()),
        Poll::Failed(failure) => Err(BuildError::new(stage, failure.to_string())
            .with_app_log(vm)
            .await),
        Poll::TimedOut(last) => Err(BuildError::new(
            stage,
            format!(
                "{} hook check failed: POST {} on port {port} did not answer 200 within {} s ({last})",
                hook.title(),
                hook.path(),
                timeout.as_secs()
            ),
        )
        .with_app_log(vm)
        .await),
    }
}

async fn wait_port(vm: &dyn Vm, port: u16, timeout: Duration, pid: u32) -> Result<(), BuildError> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if guest_http::port_accepts(vm.agent(), port).await {
            return Ok(());
        }
        ensure_alive(vm, pid).await?;
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    Err(BuildError::new(
        "readiness",
        format!("nothing accepted connections on port {port} within {timeout:?}"),
    )
    .with_app_log(vm)
    .await)
}

/// Fails when the app has exited: a snapshot of a dead app is useless.
async fn ensure_alive(vm: &dyn Vm, pid: u32) -> Result<(), BuildError> {
    // The agent's own `alive`, not `kill -0`: the image may have no shell.
    let out = vm
        .agent()
        .exec(ExecRequest {
            argv: vec!["/proc/1/exe".into(), "alive".into(), pid.to_string()],
            ..Default::default()
        })
        .await;
    match out {
        Ok(o) if o.success() => Ok(()),
        _ => Err(BuildError::new("start app", app_exited(vm).await)
            .with_app_log(vm)
            .await),
    }
}

/// "the app exited", with its exit code when the agent has it (it keeps
/// the main process's status; an agent that predates that does not).
async fn app_exited(vm: &dyn Vm) -> String {
    match tokio::time::timeout(EXIT_STATUS_WAIT, vm.agent().wait_main_exit()).await {
        Ok(Ok(status)) => format!("the app exited with code {}", status.shell_code()),
        _ => "the app exited".to_string(),
    }
}

/// The end of the app's own log, for failure reasons.
pub async fn app_log_tail(vm: &dyn Vm) -> Vec<String> {
    match vm.agent().read_file(APP_LOG, 1 << 20).await {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<String> = text
                .lines()
                .map(|l| l.chars().take(300).collect())
                .collect();
            lines[lines.len().saturating_sub(10)..].to_vec()
        }
        Err(_) => Vec::new(),
    }
}
