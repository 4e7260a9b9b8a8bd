//! One emberd per node id on a Postgres database: a session advisory lock
//! on `ember-node:<id>`, held on a connection of its own. Two emberds
//! running as one node would each take the other's VMs for their own and
//! bump each other's epoch, so a second is refused at registration;
//! emberds with different ids share the database. The lock lasts as long
//! as its session: when Postgres restarts or the connection drops, a
//! keeper task takes it again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio_postgres::AsyncMessage;

use super::tls::Connector;
use crate::placement::PLACED_CHANNEL;
use crate::StoreError;

const RETAKE_EVERY: Duration = Duration::from_secs(2);

// The key is derived in SQL so any tool can find a node's lock in
// `pg_locks` with the same expression.
const TAKE: &str = "SELECT pg_try_advisory_lock(hashtextextended('ember-node:' || $1, 0))";

/// Held while the store is this node's; dropping it ends the keeper,
/// whose session end releases the lock.
pub(super) struct NodeLock {
    pub(super) node_id: String,
    _stop: oneshot::Sender<()>,
}

enum Taken {
    Yes(tokio_postgres::Client, ConnectionTask),
    ByAnother,
}

type ConnectionTask = tokio::task::JoinHandle<()>;

/// The lock's session also LISTENs for placements on this node: it
/// lives as long as the node, and a notification that names the node
/// wakes `placed`.
async fn take(
    config: &tokio_postgres::Config,
    tls: &Connector,
    node_id: &str,
    placed: &Arc<Notify>,
) -> Result<Taken, StoreError> {
    let (client, mut connection) = config.connect(tls.clone()).await?;
    let (me, wake) = (node_id.to_string(), Arc::clone(placed));
    let task = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if n.channel() == PLACED_CHANNEL && n.payload() == me {
                        wake.notify_one();
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!("the state database's node lock session ended: {e}");
                    return;
                }
                None => return,
            }
        }
    });
    let locked: bool = client.query_one(TAKE, &[&node_id]).await?.try_get(0)?;
    if !locked {
        task.abort();
        return Ok(Taken::ByAnother);
    }
    client
        .batch_execute(&format!("LISTEN {PLACED_CHANNEL}"))
        .await?;
    // Placements made while the session was down were not heard.
    placed.notify_one();
    Ok(Taken::Yes(client, task))
}

/// Takes `node_id`'s lock or fails naming why, and keeps it for as long
/// as the returned guard lives.
pub(super) async fn claim(
    config: &tokio_postgres::Config,
    tls: &Connector,
    node_id: &str,
    placed: Arc<Notify>,
) -> Result<NodeLock, StoreError> {
    let mut config = config.clone();
    config.application_name(format!("emberd (node lock {node_id})"));
    let (client, task) = match take(&config, tls, node_id, &placed).await? {
        Taken::Yes(client, task) => (client, task),
        Taken::ByAnother => {
            return Err(StoreError::Conflict(format!(
                "another emberd already runs as node {node_id} on this Postgres database; give \
                 each emberd its own --node-id"
            )))
        }
    };
    let (stop, mut stopped) = oneshot::channel::<()>();
    let tls = tls.clone();
    let id = node_id.to_string();
    tokio::spawn(async move {
        let mut held = Some((client, task));
        loop {
            if let Some((_, task)) = held.as_mut() {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = task => {
                        held = None;
                        tracing::error!(
                            node = %id,
                            "the node lock on the state database was lost with its session; \
                             taking it again"
                        );
                    }
                }
                continue;
            }
            tokio::select! {
                _ = &mut stopped => return,
                _ = tokio::time::sleep(RETAKE_EVERY) => {}
            }
            match take(&config, &tls, &id, &placed).await {
                Ok(Taken::Yes(client, task)) => {
                    tracing::info!(node = %id, "the node lock on the state database is held again");
                    held = Some((client, task));
                }
                // The lease still fences: the other emberd's registration
                // bumped the epoch, so this one's renewals report it lost.
                Ok(Taken::ByAnother) => tracing::error!(
                    node = %id,
                    "another emberd took this node id while its lock was lost; stop one of them"
                ),
                Err(e) => tracing::warn!(node = %id, "taking the node lock again: {e}"),
            }
        }
    });
    Ok(NodeLock {
        node_id: node_id.to_string(),
        _stop: stop,
    })
}
