//! One claim per `clientToken`: the first request acts, a concurrent
//! retry waits for its answer, and a failed request frees the token.

use std::sync::Arc;
use std::time::Duration;

use ember_api::{ApiError, ErrorKind};
use ember_store::{Claim, StateStore};

use super::internal;
use crate::now;

/// How long a retry waits for the first request with its token; builds
/// and runs answer once their rows exist, well within this.
const WAIT_FOR_FIRST: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

pub enum Outcome {
    /// This request holds the token: act, then record.
    Act(Claimed),
    /// The token's first answer, to give again.
    Replay(String),
}

/// A held claim; dropped without [`Claimed::record`] (an error, a
/// reply not worth keeping, a cancelled request) it frees the token.
pub struct Claimed {
    store: Arc<dyn StateStore>,
    op: &'static str,
    token: String,
    hash: String,
    recorded: bool,
}

impl Claimed {
    pub async fn take(
        store: &Arc<dyn StateStore>,
        op: &'static str,
        token: &str,
        hash: &str,
    ) -> Result<Outcome, ApiError> {
        let conflict = || {
            ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "clientToken {token:?} was already used for a {op} request with different parameters"
                ),
            )
        };
        let deadline = tokio::time::Instant::now() + WAIT_FOR_FIRST;
        loop {
            match store
                .claim_idempotency(op, token, hash, now())
                .await
                .map_err(internal)?
            {
                Claim::Claimed => {
                    return Ok(Outcome::Act(Claimed {
                        store: Arc::clone(store),
                        op,
                        token: token.to_string(),
                        hash: hash.to_string(),
                        recorded: false,
                    }))
                }
                Claim::Answered { params_hash, .. } | Claim::InFlight { params_hash }
                    if params_hash != hash =>
                {
                    return Err(conflict())
                }
                Claim::Answered { reply, .. } => return Ok(Outcome::Replay(reply)),
                Claim::InFlight { .. } if tokio::time::Instant::now() >= deadline => {
                    return Err(ApiError::new(
                        ErrorKind::Conflict,
                        format!(
                            "a {op} request with clientToken {token:?} is still in progress; retry later"
                        ),
                    ))
                }
                Claim::InFlight { .. } => tokio::time::sleep(POLL).await,
            }
        }
    }

    pub async fn record(mut self, reply: &str, now: f64) -> Result<(), ember_store::StoreError> {
        self.store
            .record_idempotent_reply(self.op, &self.token, &self.hash, reply, now)
            .await?;
        self.recorded = true;
        Ok(())
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        // Drop cannot wait: the release runs as its own task. A retry that
        // comes first sees the claim in flight a moment longer and polls.
        let (store, op, token) = (
            Arc::clone(&self.store),
            self.op,
            std::mem::take(&mut self.token),
        );
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                op,
                "no runtime to free a clientToken claim; it expires with its window"
            );
            return;
        };
        runtime.spawn(async move {
            if let Err(e) = store.release_idempotency(op, &token).await {
                tracing::warn!(error = %e, op, "could not free a clientToken claim");
            }
        });
    }
}
