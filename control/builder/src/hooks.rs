//! The lifecycle hooks an image's app serves on `hooks.port`, as AWS
//! Lambda MicroVMs calls them: `POST /aws/lambda-microvms/runtime/v1/<hook>`
//! over HTTP/1.1 from 127.0.0.1 (here: carried by the agent, so hooks need
//! no guest network card). Builds call `ready` and `validate`; running
//! microVMs `run`, `resume`, `suspend` and `terminate`.

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ember_vmm::agent::AgentClient;

use crate::guest_http::{self, GuestHttpError};

/// Where every hook lives on the hooks port.
pub const PATH_PREFIX: &str = "/aws/lambda-microvms/runtime/v1/";
/// The largest `runHookPayload` (the model's bound, checked again here
/// because the payload is spliced into the `/run` body).
pub const MAX_RUN_PAYLOAD: usize = 4096;
/// How often `ready` and `validate` are asked again after a 503.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Ready,
    Validate,
    Run,
    Resume,
    Suspend,
    Terminate,
}

impl Hook {
    pub fn path(self) -> &'static str {
        match self {
            Hook::Ready => "/aws/lambda-microvms/runtime/v1/ready",
            Hook::Validate => "/aws/lambda-microvms/runtime/v1/validate",
            Hook::Run => "/aws/lambda-microvms/runtime/v1/run",
            Hook::Resume => "/aws/lambda-microvms/runtime/v1/resume",
            Hook::Suspend => "/aws/lambda-microvms/runtime/v1/suspend",
            Hook::Terminate => "/aws/lambda-microvms/runtime/v1/terminate",
        }
    }

    /// The hook's name as the service's messages spell it.
    pub fn title(self) -> &'static str {
        match self {
            Hook::Ready => "Ready",
            Hook::Validate => "Validate",
            Hook::Run => "Run",
            Hook::Resume => "Resume",
            Hook::Suspend => "Suspend",
            Hook::Terminate => "Terminate",
        }
    }
}

/// Why a hook did not answer 2xx (200 for `ready`/`validate`).
#[derive(Debug)]
pub enum HookFailure {
    Status { hook: Hook, status: u16 },
    TimedOut { hook: Hook, timeout: Duration },
    Unreachable { hook: Hook, error: GuestHttpError },
}

impl fmt::Display for HookFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The build hooks' wording is the real service's; tools match it.
            HookFailure::Status { hook, status }
                if matches!(hook, Hook::Ready | Hook::Validate) =>
            {
                let class = match status {
                    500..=599 => "a server error (HTTP 5xx)",
                    400..=499 => "a client error (HTTP 4xx)",
                    _ => "an unexpected",
                };
                write!(
                    f,
                    "{} hook check failed: the application returned {class} response (HTTP {status} from POST {})",
                    hook.title(),
                    hook.path()
                )
            }
            HookFailure::Status { hook, status } => write!(
                f,
                "{} lifecycle hook returned HTTP status {status} (POST {})",
                hook.title(),
                hook.path()
            ),
            HookFailure::TimedOut { hook, timeout } => write!(
                f,
                "{} lifecycle hook did not answer within {} s (POST {})",
                hook.title(),
                timeout.as_secs(),
                hook.path()
            ),
            HookFailure::Unreachable { hook, error } => {
                write!(f, "{} lifecycle hook failed: {error}", hook.title())
            }
        }
    }
}

/// The `/run` body: the VM's id and the request's payload, verbatim
/// (empty when the request had none: the body is sent on every run).
pub fn run_body(microvm_id: &str, payload: Option<&str>) -> Bytes {
    let body = serde_json::json!({
        "microvmId": microvm_id,
        "runHookPayload": payload.unwrap_or(""),
    });
    Bytes::from(body.to_string())
}

/// Calls a running VM's hook once: any 2xx within `timeout` is success.
pub async fn call(
    agent: &AgentClient,
    port: u16,
    hook: Hook,
    body: Bytes,
    timeout: Duration,
) -> Result<(), HookFailure> {
    match guest_http::request(agent, port, "POST", hook.path(), body, timeout).await {
        Ok(a) if (200..300).contains(&a.status) => Ok(()),
        Ok(a) => Err(HookFailure::Status {
            hook,
            status: a.status,
        }),
        Err(GuestHttpError::Timeout { .. }) => Err(HookFailure::TimedOut { hook, timeout }),
        Err(error) => Err(HookFailure::Unreachable { hook, error }),
    }
}

/// What a `ready`/`validate` poll saw last, for the timeout's message.
pub enum Poll {
    /// 200: go on.
    Done,
    /// Any status but 200 and 503: the build fails at once.
    Failed(HookFailure),
    /// Out of time; the text says what the app answered last.
    TimedOut(String),
}

/// Asks `ready` or `validate` until it answers 200; a 503 (or nothing
/// listening yet) means "ask again". `still_alive` is checked between
/// attempts so a dead app fails fast instead of at the timeout.
pub async fn poll<F, Fut, E>(
    agent: &AgentClient,
    port: u16,
    hook: Hook,
    timeout: Duration,
    mut still_alive: F,
) -> Result<Poll, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match guest_http::request(agent, port, "POST", hook.path(), Bytes::new(), left).await {
            Ok(a) if a.status == 200 => return Ok(Poll::Done),
            Ok(a) if a.status == 503 => last = "last answer: HTTP 503".into(),
            Ok(a) => {
                return Ok(Poll::Failed(HookFailure::Status {
                    hook,
                    status: a.status,
                }))
            }
            Err(e) => last = e.to_string(),
        }
        still_alive().await?;
        tokio::time::sleep(RETRY_INTERVAL).await;
    }
    Ok(Poll::TimedOut(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_the_services() {
        for hook in [
            Hook::Ready,
            Hook::Validate,
            Hook::Run,
            Hook::Resume,
            Hook::Suspend,
            Hook::Terminate,
        ] {
            let path = hook.path();
            assert!(path.starts_with(PATH_PREFIX), "{path}");
            assert_eq!(
                &path[PATH_PREFIX.len()..],
                hook.title().to_ascii_lowercase()
            );
        }
    }

    #[test]
    fn run_body_carries_the_payload_verbatim() {
        let body = run_body("vm-1", Some("{\"a\": \"\\u00e9\"}\n"));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["microvmId"], "vm-1");
        assert_eq!(v["runHookPayload"], "{\"a\": \"\\u00e9\"}\n");
        let empty: serde_json::Value = serde_json::from_slice(&run_body("vm-2", None)).unwrap();
        assert_eq!(empty["runHookPayload"], "");
    }

    #[test]
    fn messages_name_the_hook_and_status() {
        let ready = HookFailure::Status {
            hook: Hook::Ready,
            status: 500,
        };
        assert!(ready.to_string().starts_with(
            "Ready hook check failed: the application returned a server error (HTTP 5xx) response"
        ));
        let run = HookFailure::Status {
            hook: Hook::Run,
            status: 400,
        };
        assert!(run
            .to_string()
            .starts_with("Run lifecycle hook returned HTTP status 400"));
    }
}
