//! Reading users for the supervisor: the initial load, page by page, and the reload of one
//! user's row before its crashed actor starts again. Both run beside the supervisor's mailbox
//! (so connects and admin calls are served meanwhile), retry database failures with the shared
//! [`Backoff`], and hand the rows back as messages. Must not touch: the registry or any actor.

use std::{sync::Arc, time::Duration};

use ractor::ActorRef;

use super::{context::ActorContext, messages::SupervisorMsg};
use crate::{
    ids::{Shard, UserId},
    retry::Backoff,
};

/// Rows loaded per page at start, so a million users never sit in memory at once as rows.
const LOAD_PAGE: u64 = 1000;
/// A page that cannot be read is tried again every second, for as long as it takes: the
/// service is not ready without its users. Exact, since there is one loader.
const LOAD_RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).exact();
/// A crashed user's row is tried this many times before the user is given up until the next
/// restart of the service.
const RELOAD_ATTEMPTS: u32 = 10;
/// 100 ms doubling to 1 s between those tries, jittered: after a database outage many crashed
/// users reload together.
const RELOAD_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));

/// Loads one user's row off the mailbox, then hands it back to be adopted.
pub fn reload(myself: &ActorRef<SupervisorMsg>, ctx: &Arc<ActorContext>, user_id: UserId) {
    let myself = myself.clone();
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let row = RELOAD_RETRY
            .retry(
                Some(RELOAD_ATTEMPTS),
                || ctx.store.actor_start(&user_id),
                |e, attempt| {
                    tracing::warn!(userId = %user_id, error = %e, attempt, "cannot load user row, retrying");
                },
            )
            .await;
        match row {
            Ok(Some(start)) => {
                let _ = myself.send_message(SupervisorMsg::AdoptOne { start });
            }
            // Disconnected meanwhile: nothing to restart.
            Ok(None) => {}
            Err(_) => {
                tracing::error!(userId = %user_id, "gave up loading user row; the user's actor starts at the next restart");
            }
        }
    });
}

/// Pages through every user an actor should run for (of `shards` only, when given) and hands
/// each page to the supervisor, waiting for it to be adopted before reading the next. A
/// database failure is retried. A cluster node then queues the shards' unfinished pushes (the
/// previous owner may have left some). `announce`: tell the supervisor when done.
pub async fn load_all(
    myself: ActorRef<SupervisorMsg>,
    ctx: Arc<ActorContext>,
    shards: Option<Vec<Shard>>,
    announce: bool,
) {
    let started = tokio::time::Instant::now();
    let loaded = match shards.as_deref() {
        Some([]) => 0,
        _ => match load_pages(&myself, &ctx, shards.as_deref()).await {
            Some(loaded) => loaded,
            None => return,
        },
    };
    tracing::info!(
        users = loaded,
        elapsedMs = started.elapsed().as_millis() as u64,
        "user rows loaded"
    );
    if let Some(shards) = shards.as_deref().filter(|s| !s.is_empty()) {
        let resumed =
            crate::sync::resume_unfinished_syncs(&ctx.store, &ctx.sync, false, Some(shards)).await;
        if let Err(e) = resumed {
            tracing::warn!(error = %e, "cannot list the unfinished pushes of gained shards");
        }
    }
    if announce {
        let _ = myself.send_message(SupervisorMsg::Loaded);
    }
}

/// The pages of [`load_all`]; `None` if the supervisor stopped meanwhile.
async fn load_pages(
    myself: &ActorRef<SupervisorMsg>,
    ctx: &ActorContext,
    shards: Option<&[Shard]>,
) -> Option<usize> {
    let mut after: Option<UserId> = None;
    let mut loaded = 0usize;
    loop {
        let page = LOAD_RETRY
            .retry(
                None,
                || ctx.store.actor_starts(after.as_deref(), LOAD_PAGE, shards),
                |e, _| tracing::warn!(error = %e, "cannot load users, retrying"),
            )
            .await;
        // Without a limit on tries only a success comes back.
        let Ok(page) = page else { return None };
        let Some(last) = page.last() else { break };
        after = Some(last.user_id.clone());
        loaded += page.len();
        let full = page.len() as u64 == LOAD_PAGE;
        if myself
            .call(|reply| SupervisorMsg::Adopt(page, reply), None)
            .await
            .is_err()
        {
            return None;
        }
        if !full {
            break;
        }
    }
    Some(loaded)
}
