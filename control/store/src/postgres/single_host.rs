//! One emberd per Postgres database, until hosts can share one: a session
//! advisory lock held on a connection of its own. A second emberd would
//! recover the first's VMs as its own, so it is refused at start. The
//! lock lasts as long as its session: when Postgres restarts or the
//! connection drops, a keeper task takes it again.

use std::time::Duration;

use tokio::sync::oneshot;

use super::tls::Connector;
use crate::StoreError;

/// The lock's key: "ember" and 1 (the migration lock is "ember" alone).
const KEY: i64 = 0x0065_6d62_6572_0001;
const RETAKE_EVERY: Duration = Duration::from_secs(2);

/// Held while the store lives; dropping it ends the keeper, whose session
/// end releases the lock.
pub(super) struct SingleHost {
    _stop: oneshot::Sender<()>,
}

enum Taken {
    Yes(tokio_postgres::Client, ConnectionTask),
    ByAnother,
}

type ConnectionTask = tokio::task::JoinHandle<()>;

async fn take(config: &tokio_postgres::Config, tls: &Connector) -> Result<Taken, StoreError> {
    let (client, connection) = config.connect(tls.clone()).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("the state database's single-host lock session ended: {e}");
        }
    });
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&KEY])
        .await?
        .try_get(0)?;
    Ok(if locked {
        Taken::Yes(client, task)
    } else {
        task.abort();
        Taken::ByAnother
    })
}

/// Takes the lock or fails naming why; then drops the claims a dead
/// predecessor left pending (as SQLite does at open: nobody will answer
/// them) and keeps the lock for as long as the returned guard lives.
pub(super) async fn claim(
    config: &tokio_postgres::Config,
    tls: &Connector,
) -> Result<SingleHost, StoreError> {
    let mut config = config.clone();
    config.application_name("emberd (single-host lock)");
    let (client, task) = match take(&config, tls).await? {
        Taken::Yes(client, task) => (client, task),
        Taken::ByAnother => {
            return Err(StoreError::Conflict(
                "another emberd already uses this Postgres database; hosts cannot share one \
                 yet (node leases are not built), so give each emberd its own database"
                    .into(),
            ))
        }
    };
    client
        .execute("DELETE FROM idempotency WHERE pending", &[])
        .await?;
    let (stop, mut stopped) = oneshot::channel::<()>();
    let tls = tls.clone();
    tokio::spawn(async move {
        let mut held = Some((client, task));
        loop {
            if let Some((_, task)) = held.as_mut() {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = task => {
                        held = None;
                        tracing::error!(
                            "the single-host lock on the state database was lost with its \
                             session; taking it again"
                        );
                    }
                }
                continue;
            }
            tokio::select! {
                _ = &mut stopped => return,
                _ = tokio::time::sleep(RETAKE_EVERY) => {}
            }
            match take(&config, &tls).await {
                Ok(Taken::Yes(client, task)) => {
                    tracing::info!("the single-host lock on the state database is held again");
                    held = Some((client, task));
                }
                Ok(Taken::ByAnother) => tracing::error!(
                    "another emberd took this state database while its lock was lost; \
                     stop one of them"
                ),
                Err(e) => tracing::warn!("taking the single-host lock again: {e}"),
            }
        }
    });
    Ok(SingleHost { _stop: stop })
}
