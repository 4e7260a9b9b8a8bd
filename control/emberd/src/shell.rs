//! The shell a microVM's endpoint serves at `GET /shell` (the proxy does
//! the WebSocket, its framing and the shell token; see ember-proxy's
//! `shell.rs`): a login shell on a guest terminal, started through the
//! agent, its resize and exit status handed to the proxy.

use async_trait::async_trait;

use ember_proxy::{ShellControl, ShellError, ShellExit, TerminalSize};
use ember_vmm::agent::{AgentError, AgentStream, ExecRequest, PtyControl, TtySize};
use ember_vmm::Vm;

/// Starts `/bin/sh -l` in `/` on a terminal of `size`.
pub async fn start(
    vm: &dyn Vm,
    size: TerminalSize,
) -> Result<(AgentStream, PtyShellControl), AgentError> {
    let session = vm
        .agent()
        .exec_pty(ExecRequest {
            argv: vec!["/bin/sh".into(), "-l".into()],
            cwd: Some("/".into()),
            tty: Some(TtySize {
                rows: size.rows,
                cols: size.cols,
            }),
            ..Default::default()
        })
        .await?;
    let (stream, control) = session.into_parts();
    Ok((stream, PtyShellControl(control)))
}

pub struct PtyShellControl(PtyControl);

#[async_trait]
impl ShellControl for PtyShellControl {
    async fn resize(&self, size: TerminalSize) -> Result<(), ShellError> {
        self.0
            .resize(size.rows, size.cols)
            .await
            .map_err(|e| ShellError(e.to_string()))
    }

    async fn wait(&self) -> Result<ShellExit, ShellError> {
        let exit = self.0.wait().await.map_err(|e| ShellError(e.to_string()))?;
        Ok(ShellExit {
            code: exit.code,
            signal: exit.signal,
        })
    }
}
