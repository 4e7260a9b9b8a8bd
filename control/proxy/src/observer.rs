//! What the proxy tells whoever watches it (emberd's metrics): every
//! answer's status and, when the proxy answered itself, its
//! `x-aws-proxy-error` code; every byte to and from clients, upgraded
//! connections included. The proxy keeps no counters of its own.

use std::sync::Arc;

use http::StatusCode;

use crate::tap::{Direction, Tap};

/// Called on the request path: implementations must be cheap and must not
/// block (atomic counters).
pub trait ProxyObserver: Send + Sync + 'static {
    /// A request was answered with `status`; `proxy_error` is the
    /// `x-aws-proxy-error` value when the proxy answered instead of the app.
    fn answered(&self, status: StatusCode, proxy_error: Option<&str>);
    /// Bytes read from a client.
    fn bytes_in(&self, n: u64);
    /// Bytes written to a client.
    fn bytes_out(&self, n: u64);
}

/// The observer a proxy reports to; by default, no one.
#[derive(Clone, Default)]
pub struct Observer(Option<Arc<dyn ProxyObserver>>);

impl Observer {
    pub fn new(observer: Arc<dyn ProxyObserver>) -> Self {
        Observer(Some(observer))
    }

    pub(crate) fn answered(&self, status: StatusCode, proxy_error: Option<&str>) {
        if let Some(o) = &self.0 {
            o.answered(status, proxy_error);
        }
    }

    /// Wraps a client connection so its bytes are counted.
    pub(crate) fn count<I>(&self, io: I) -> Tap<I, impl FnMut(Direction, usize) + Send + Unpin> {
        let observer = self.0.clone();
        Tap::new(io, move |direction, n| {
            if let Some(o) = &observer {
                match direction {
                    Direction::Read => o.bytes_in(n as u64),
                    Direction::Written => o.bytes_out(n as u64),
                }
            }
        })
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Observer(set)"
        } else {
            "Observer(none)"
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[derive(Default)]
    struct Tally {
        read: AtomicU64,
        written: AtomicU64,
    }

    impl ProxyObserver for Tally {
        fn answered(&self, _: StatusCode, _: Option<&str>) {}
        fn bytes_in(&self, n: u64) {
            self.read.fetch_add(n, Ordering::Relaxed);
        }
        fn bytes_out(&self, n: u64) {
            self.written.fetch_add(n, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn every_byte_each_way_is_reported() {
        let tally = Arc::new(Tally::default());
        let (mut client, server) = tokio::io::duplex(16);
        let mut counted = Observer::new(tally.clone()).count(server);
        client.write_all(b"hello").await.unwrap();
        drop(client.shutdown().await);
        let mut got = Vec::new();
        counted.read_to_end(&mut got).await.unwrap();
        counted.write_all(b"a longer answer").await.unwrap();
        assert_eq!(got, b"hello");
        assert_eq!(tally.read.load(Ordering::Relaxed), 5);
        assert_eq!(tally.written.load(Ordering::Relaxed), 15);
    }
}
