//! The actors: one root [`supervisor`] and one [`user_token`] actor per user. [`Supervisor`]
//! is the handle the rest of the service uses; it only sends messages.
//!
//! Layout:
//! - [`supervisor`]: the root actor; wires the pieces below and owns the actors' lifecycle.
//! - [`registry`]: every user's slot (live, parked, restarting), the admin views, the gauges.
//! - [`schedule`]: timing as plain data (a user's plan, the wake schedule and its budget).
//! - [`restart`]: the restart policy of crashed actors.
//! - [`loader`]: the initial paged load and the reload of one row.
//! - [`user_token`]: the per-user actor; [`context`]: what they share; [`messages`].
//! - [`refresh`]: the refresh of one user, in steps; [`deadline`]: the end of a time-limited
//!   grant. Both are jobs an actor starts and that run outside its mailbox.

mod context;
mod deadline;
mod loader;
pub mod messages;
mod refresh;
mod registry;
mod restart;
mod schedule;
mod supervisor;
mod user_token;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ractor::{Actor, ActorRef};

pub use context::ActorContext;
use messages::{ActorEntry, SupervisorMsg, UserTokenMsg};
pub use messages::{ActorInfo, ActorStatus, ActorView, RefreshReason};
use supervisor::{SupervisorArgs, TokenSupervisor};

use crate::{
    ids::{Shard, UserId},
    store::ActorStart,
};

/// How long an admin call waits for an actor to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Handle to the running supervisor.
#[derive(Clone)]
pub struct Supervisor {
    actor: ActorRef<SupervisorMsg>,
    loaded: Arc<AtomicBool>,
}

impl Supervisor {
    /// Starts the supervisor, which then loads every user from the database (on a cluster
    /// node: the users of each shard its leases gain).
    pub async fn start(ctx: Arc<ActorContext>) -> anyhow::Result<Self> {
        let loaded = Arc::new(AtomicBool::new(false));
        let args = SupervisorArgs {
            ctx,
            loaded: loaded.clone(),
        };
        let (actor, _) = Actor::spawn(None, TokenSupervisor, args).await?;
        Ok(Self { actor, loaded })
    }

    /// Stops every user actor, then the supervisor.
    pub async fn stop(&self) {
        self.actor
            .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10)))
            .await;
        let _ = self
            .actor
            .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10)))
            .await;
    }

    /// True once every user of the initial load has its slot (most of them parked).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::SeqCst)
    }

    /// New tokens were saved for the user of `start`.
    pub fn user_connected(&self, start: ActorStart) {
        let _ = self
            .actor
            .send_message(SupervisorMsg::UserConnected { start });
    }

    /// A lease renewal gained `shards` (see [`SupervisorMsg::ShardsGained`]).
    pub fn shards_gained(&self, shards: Vec<Shard>, initial: bool) {
        let _ = self
            .actor
            .send_message(SupervisorMsg::ShardsGained { shards, initial });
    }

    /// A lease renewal lost `shards`.
    pub fn shards_lost(&self, shards: Vec<Shard>) {
        let _ = self.actor.send_message(SupervisorMsg::ShardsLost(shards));
    }

    /// `user_id` disconnected.
    pub fn user_disconnected(&self, user_id: &str) {
        let _ = self.actor.send_message(SupervisorMsg::UserDisconnected {
            user_id: user_id.into(),
        });
    }

    /// Asks the user's actor to refresh now; false if there is no such actor.
    pub async fn refresh_now(&self, user_id: &str) -> bool {
        self.forward(user_id, UserTokenMsg::Refresh(RefreshReason::Forced))
            .await
    }

    /// Makes the user's actor panic (supervision tests and fault drills).
    #[cfg(feature = "test-util")]
    pub async fn inject_crash(&self, user_id: &str) -> bool {
        self.forward(user_id, UserTokenMsg::Crash).await
    }

    async fn forward(&self, user_id: &str, message: UserTokenMsg) -> bool {
        let user_id = UserId::from(user_id);
        matches!(
            self.actor
                .call(
                    |reply| SupervisorMsg::Forward {
                        user_id,
                        message,
                        reply
                    },
                    Some(ASK_TIMEOUT)
                )
                .await,
            Ok(ractor::rpc::CallResult::Success(true))
        )
    }

    /// A page of actors ordered by user id after `after`, and the total count.
    pub async fn list(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> anyhow::Result<(Vec<ActorView>, usize)> {
        let page = match self
            .actor
            .call(
                |reply| SupervisorMsg::List {
                    after,
                    limit,
                    reply,
                },
                Some(ASK_TIMEOUT),
            )
            .await?
        {
            ractor::rpc::CallResult::Success(page) => page,
            _ => anyhow::bail!("supervisor did not answer"),
        };
        let views = futures::future::join_all(page.entries.into_iter().map(view)).await;
        Ok((views.into_iter().flatten().collect(), page.total))
    }

    /// One user's actor, if it runs (or waits to restart).
    pub async fn get(&self, user_id: &str) -> anyhow::Result<Option<ActorView>> {
        let user_id = UserId::from(user_id);
        match self
            .actor
            .call(
                |reply| SupervisorMsg::Get { user_id, reply },
                Some(ASK_TIMEOUT),
            )
            .await?
        {
            ractor::rpc::CallResult::Success(Some(entry)) => Ok(view(entry).await),
            ractor::rpc::CallResult::Success(None) => Ok(None),
            _ => anyhow::bail!("supervisor did not answer"),
        }
    }
}

async fn view(entry: ActorEntry) -> Option<ActorView> {
    match entry {
        ActorEntry::Live(actor) => match actor.call(UserTokenMsg::Info, Some(ASK_TIMEOUT)).await {
            Ok(ractor::rpc::CallResult::Success(info)) => Some(ActorView::Live(info)),
            // Stopped between the listing and the question: it is gone.
            _ => None,
        },
        ActorEntry::Known(view) => Some(view),
    }
}
