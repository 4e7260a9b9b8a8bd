//! Serving the API to callers that may be hostile: at most so many
//! connections at once, a request head within a time (which also closes
//! keep-alive connections that sit idle), and a request body within a time,
//! on top of the body size limit SigV4 applies.
//!
//! One connection past the cap is accepted and closed at once, not left in
//! the kernel's backlog: a waiting client would hang with its own timeouts
//! running and learn nothing, while a closed one retries (the AWS SDKs and
//! CLI retry a reset connection) and the backlog never fills with clients
//! that have long gone.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body as AxumBody;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tower::ServiceExt as _;

/// How long a stopping emberd waits for requests in flight to finish.
const DRAIN: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug, Clone)]
pub struct ApiLimits {
    /// API connections served at once; one more is closed as soon as it
    /// is accepted.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_api_connections: u32,
    /// Seconds an API client has to send a request's head; a keep-alive
    /// connection with no new request for that long is closed too.
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    pub api_header_timeout: Duration,
    /// Seconds an API client has to send a request's body, from the end of
    /// its head.
    #[arg(long, default_value = "60", value_parser = parse_seconds)]
    pub api_body_timeout: Duration,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|e| format!("{text:?} is not a number of seconds: {e}"))?;
    if !(seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!("{text} is not between 0 and 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets the
/// requests in flight finish (for a while).
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: ApiLimits,
    shutdown: impl Future<Output = ()>,
) where
    L: axum::serve::Listener,
    L::Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    L::Addr: Debug,
{
    let slots = Arc::new(Semaphore::new(limits.max_api_connections as usize));
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(?peer, "too many API connections: closed this one");
            continue;
        };
        let connection = Connection {
            app: app.clone(),
            limits: limits.clone(),
            stopping: stopping.clone(),
            _slot: slot,
        };
        tokio::spawn(connection.serve(io));
    }
    let _ = stop.send(true);
    if tokio::time::timeout(DRAIN, slots.acquire_many(limits.max_api_connections))
        .await
        .is_err()
    {
        tracing::warn!("API requests still in flight at shutdown");
    }
}

struct Connection {
    app: Router,
    limits: ApiLimits,
    stopping: watch::Receiver<bool>,
    /// Its place under `--max-api-connections`, freed when it ends.
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    async fn serve<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (app, body_timeout) = (self.app.clone(), self.limits.api_body_timeout);
        let service = service_fn(move |request: hyper::Request<Incoming>| {
            let request = request.map(|body| AxumBody::new(Deadline::new(body, body_timeout)));
            let app = app.clone();
            async move {
                match app.oneshot(request).await {
                    Ok(response) => Ok::<_, Infallible>(response),
                    Err(never) => match never {},
                }
            }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.api_header_timeout)
            .keep_alive(true)
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let served = tokio::select! {
            served = connection.as_mut() => served,
            // The flag only ever turns on; a dropped sender is a stop too.
            _ = self.stopping.changed() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = served {
            tracing::debug!(error = %e, "API connection ended");
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body was not in within its time")]
struct BodyTimedOut;

/// A request body that fails once its time is up, so a client sending it
/// a byte at a time cannot hold a request (and its connection) forever.
struct Deadline {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
}

impl Deadline {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Deadline {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl Body for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_positive_and_bounded() {
        assert_eq!(parse_seconds("2.5").unwrap(), Duration::from_millis(2500));
        for bad in ["0", "-1", "NaN", "inf", "1e9", "soon"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }
}
