//! Finding pushes that never finished: at start (a shutdown or a crash left them `pending` or
//! `failed` in the database) and on an operator's resync. Queues them on the dispatcher like
//! any change; must not push anything itself.

use std::time::Duration;

use super::SyncDispatcher;
use crate::{
    ids::{Shard, UserId},
    retry::Backoff,
    store::Store,
};

/// Rows read per page when resuming syncs.
const RESUME_PAGE: u64 = 1000;
/// Tries at start to list the unfinished syncs, 2 s apart: about a minute for the database
/// to come back before the service gives up on resuming (the next start tries again).
const START_ATTEMPTS: u32 = 30;
const START_RETRY: Duration = Duration::from_secs(2);

/// Queues a sync for every user whose last change the microservice has not acknowledged (of
/// `shards` only, when given). `include_skipped` also catches up users connected while no
/// microservice was configured.
pub async fn resume_unfinished_syncs(
    store: &Store,
    sync: &SyncDispatcher,
    include_skipped: bool,
    shards: Option<&[Shard]>,
) -> anyhow::Result<usize> {
    let mut after: Option<UserId> = None;
    let mut queued = 0;
    loop {
        let page = store
            .unfinished_syncs(after.as_deref(), RESUME_PAGE, include_skipped, shards)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.clone());
        queued += page.len();
        for user_id in &page {
            sync.changed(user_id);
        }
        if (page.len() as u64) < RESUME_PAGE {
            break;
        }
    }
    Ok(queued)
}

/// [`resume_unfinished_syncs`] at start, retried while the database does not answer.
pub async fn resume_at_start(store: &Store, sync: &SyncDispatcher, include_skipped: bool) {
    let policy = Backoff::new(START_RETRY, START_RETRY).exact();
    let resumed = policy
        .retry(
            Some(START_ATTEMPTS),
            || resume_unfinished_syncs(store, sync, include_skipped, None),
            |e, attempt| {
                tracing::warn!(error = %e, attempt, "cannot list unfinished syncs, retrying");
            },
        )
        .await;
    if let Ok(users @ 1..) = resumed {
        tracing::info!(users, "resuming unfinished syncs");
    }
}
