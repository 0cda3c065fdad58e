//! Change notices between nodes, on PostgreSQL's `LISTEN/NOTIFY` (one channel that every node
//! listens on; `docs/cluster.md` says why not a channel per node or a forward). The node that
//! takes a callback or a disconnect writes the row, then notifies; the user's owner reloads the
//! row, brings its actor up to date and pushes. A notice is only a hint: the row is the truth,
//! so a notice lost while the listening connection was down is made up for by reloading every
//! held shard once it is back. Only notices sealed by a node are heard (`sealed`): any role
//! that can connect to the database can `NOTIFY`. Must not touch: the rows themselves (it
//! reads the actors' starting rows through the store), actors' state.

use std::{sync::Arc, time::Duration};

use sea_orm::sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Node, sealed::Notice};
use crate::{store::cluster::CHANGES_CHANNEL, sync::resume_unfinished_syncs};

/// Pause before listening again after the connection failed.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Where notices lead.
#[derive(Clone)]
pub struct NoticeTargets {
    /// Its store, ownership, supervisor and sync dispatcher; its `notices` open what is heard
    /// (anything not sealed by a node is dropped).
    pub node: Node,
    /// Wakes the lease loop.
    pub wake: Arc<Notify>,
}

/// Listens on the changes channel until `stop`, reconnecting after failures; `listening` is
/// told once the first `LISTEN` is in place. Every time it is (re)established the held shards
/// are reloaded: a change whose notice went out while nothing listened is then read from its
/// row. The node claims its first shards after `listening` (`join`), so on a normal start
/// nothing is held yet and the reload is empty.
pub async fn listen(
    url: String,
    targets: NoticeTargets,
    stop: CancellationToken,
    listening: tokio::sync::oneshot::Sender<()>,
) {
    let mut listening = Some(listening);
    while !stop.is_cancelled() {
        let mut listener = match connect(&url).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for cluster notices, retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RECONNECT_DELAY) => continue,
                }
            }
        };
        if let Some(listening) = listening.take() {
            let _ = listening.send(());
        }
        catch_up(&targets);
        loop {
            let notice = tokio::select! {
                _ = stop.cancelled() => return,
                notice = listener.try_recv() => notice,
            };
            match notice {
                Ok(Some(notice)) => handle(&targets, notice.payload()).await,
                // The connection dropped and was made again: notices may have been missed.
                Ok(None) => catch_up(&targets),
                Err(e) => {
                    tracing::warn!(error = %e, "cluster notices interrupted, listening again");
                    break;
                }
            }
        }
    }
}

async fn connect(url: &str) -> Result<PgListener, sea_orm::sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANGES_CHANNEL).await?;
    Ok(listener)
}

/// Reloads every held shard's users and queues their unfinished pushes.
fn catch_up(targets: &NoticeTargets) {
    let held = targets.node.ownership.held_shards();
    if !held.is_empty() {
        tracing::info!(
            shards = held.len(),
            "reloading held shards after missed notices"
        );
        targets.node.supervisor.shards_gained(held, false);
    }
}

async fn handle(targets: &NoticeTargets, payload: &str) {
    let Some(notice) = targets.node.notices.open(payload) else {
        return;
    };
    match notice {
        Notice::Rebalance => targets.wake.notify_one(),
        Notice::Resync => {
            let targets = targets.clone();
            tokio::spawn(async move {
                let held = targets.node.ownership.held_shards();
                if let Err(e) = resume_unfinished_syncs(
                    &targets.node.store,
                    &targets.node.sync,
                    false,
                    Some(&held),
                )
                .await
                {
                    tracing::error!(error = %e, "resync could not queue every user");
                }
            });
        }
        Notice::User(user_id) => user_changed(targets, &user_id).await,
    }
}

/// Brings the owner's actor and the microservice up to the user's row.
async fn user_changed(targets: &NoticeTargets, user_id: &str) {
    if !targets.node.ownership.holds(user_id) {
        return;
    }
    match targets.node.store.actor_start(user_id).await {
        Ok(Some(start)) => targets.node.supervisor.user_connected(start),
        Ok(None) => targets.node.supervisor.user_disconnected(user_id),
        Err(e) => {
            tracing::warn!(userId = %user_id, error = %e, "cannot read a changed user's row");
            return;
        }
    }
    targets.node.sync.changed(user_id);
}
