//! The root supervisor: starts one user token actor per user this process runs, restarts a
//! failed one from its database row (with a backoff that grows while it keeps failing), and
//! stops one on disconnect. Which users this process runs is decided by [`UserScope`] alone,
//! so that several nodes can later share one database by lease.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::{
    context::ActorContext,
    messages::{ActorEntry, ActorPage, SupervisorMsg, UserTokenMsg},
    user_token::{UserTokenActor, UserTokenArgs},
};
use crate::store::ActorSeed;

/// Rows loaded per page at start, so a million users never sit in memory at once.
const LOAD_PAGE: u64 = 1000;
/// A failure this long after the previous one starts the backoff over.
const CRASH_WINDOW: Duration = Duration::from_secs(60);
const RESTART_BASE: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(30);

/// Which users this process runs actors for. Today every user; a multi-node deployment will
/// answer from its leases instead.
#[derive(Debug, Clone, Default)]
pub enum UserScope {
    #[default]
    All,
}

impl UserScope {
    pub fn owns(&self, _user_id: &str) -> bool {
        match self {
            Self::All => true,
        }
    }
}

/// The supervisor actor type.
pub struct TokenSupervisor;

/// What the supervisor starts with.
pub struct SupervisorArgs {
    pub ctx: Arc<ActorContext>,
    pub scope: UserScope,
    /// Set once every actor of the initial load is running.
    pub loaded: Arc<AtomicBool>,
}

#[derive(Default)]
struct RestartRecord {
    total: u32,
    /// Failures in the current crash streak.
    streak: u32,
    last: Option<Instant>,
    waiting: bool,
}

/// Private state of the supervisor.
pub struct SupervisorState {
    ctx: Arc<ActorContext>,
    scope: UserScope,
    loaded: Arc<AtomicBool>,
    actors: BTreeMap<String, ActorRef<UserTokenMsg>>,
    users_by_actor: HashMap<ActorId, String>,
    restarts: HashMap<String, RestartRecord>,
}

impl Actor for TokenSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState {
            ctx: args.ctx,
            scope: args.scope,
            loaded: args.loaded,
            actors: BTreeMap::new(),
            users_by_actor: HashMap::new(),
            restarts: HashMap::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Loading runs beside the mailbox so that connects and admin calls are served while a
        // large fleet is still coming up.
        tokio::spawn(load_all(myself, state.ctx.clone()));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            // Adopted in the handler (no database read), so any admin call queued after the
            // callback's message already finds the actor.
            SupervisorMsg::UserConnected { seed } => state.adopt(&myself, seed).await,
            SupervisorMsg::UserDisconnected { user_id } => {
                if let Some(actor) = state.actors.remove(&user_id) {
                    state.users_by_actor.remove(&actor.get_id());
                    actor.stop(Some("disconnected".into()));
                }
                state.restarts.remove(&user_id);
                state.sync_gauge();
            }
            SupervisorMsg::Adopt(seeds, reply) => {
                for seed in seeds {
                    state.adopt(&myself, seed).await;
                }
                let _ = reply.send(());
            }
            SupervisorMsg::AdoptOne { seed } => state.adopt(&myself, seed).await,
            SupervisorMsg::Loaded => {
                state.loaded.store(true, Ordering::SeqCst);
                tracing::info!(actors = state.actors.len(), "all user actors loaded");
            }
            SupervisorMsg::Respawn { user_id } => {
                if let Some(record) = state.restarts.get_mut(&user_id)
                    && record.waiting
                {
                    record.waiting = false;
                    reload(&myself, &state.ctx, user_id);
                }
            }
            SupervisorMsg::Forward {
                user_id,
                message,
                reply,
            } => {
                let sent = state
                    .actors
                    .get(&user_id)
                    .is_some_and(|actor| actor.send_message(message).is_ok());
                let _ = reply.send(sent);
            }
            SupervisorMsg::Get { user_id, reply } => {
                let _ = reply.send(state.entry(&user_id));
            }
            SupervisorMsg::List {
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(state.page(after, limit));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // The default would stop the supervisor when a child dies; a user's failure must
        // never take the others down.
        match event {
            SupervisionEvent::ActorFailed(cell, error) => state.on_failed(&myself, &cell, &error),
            SupervisionEvent::ActorTerminated(cell, _, _) => state.on_terminated(&cell),
            _ => {}
        }
        Ok(())
    }
}

impl SupervisorState {
    async fn adopt(&mut self, myself: &ActorRef<SupervisorMsg>, seed: ActorSeed) {
        if !self.scope.owns(&seed.user_id) {
            return;
        }
        if let Some(actor) = self.actors.get(&seed.user_id) {
            // Already running (a connect raced the load): bring it up to date instead.
            let change = crate::store::TokenChange {
                version: seed.version,
                token_expiry: seed.token_expiry,
            };
            if !seed.needs_reconnect {
                let _ = actor.send_message(UserTokenMsg::TokensChanged(change));
            }
            return;
        }
        let user_id = seed.user_id.clone();
        let restarts = self.restarts.get(&user_id).map_or(0, |r| r.total);
        let args = UserTokenArgs {
            seed,
            restarts,
            ctx: self.ctx.clone(),
        };
        match Actor::spawn_linked(None, UserTokenActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.users_by_actor.insert(actor.get_id(), user_id.clone());
                self.actors.insert(user_id, actor);
            }
            Err(e) => tracing::error!(userId = %user_id, error = %e, "cannot start user actor"),
        }
        self.sync_gauge();
    }

    fn on_failed(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        cell: &ActorCell,
        error: &ActorProcessingErr,
    ) {
        let Some(user_id) = self.users_by_actor.remove(&cell.get_id()) else {
            return;
        };
        self.actors.remove(&user_id);
        self.sync_gauge();
        self.ctx.metrics.actor_restarts.inc();
        let record = self.restarts.entry(user_id.clone()).or_default();
        let now = Instant::now();
        record.streak = match record.last {
            Some(last) if now.duration_since(last) < CRASH_WINDOW => record.streak + 1,
            _ => 1,
        };
        record.last = Some(now);
        record.total += 1;
        record.waiting = true;
        let delay = RESTART_BASE
            .saturating_mul(1 << record.streak.saturating_sub(1).min(16))
            .min(RESTART_MAX);
        tracing::error!(
            userId = %user_id,
            error = %error,
            restarts = record.total,
            restartInMs = delay.as_millis() as u64,
            "user actor failed, restarting"
        );
        myself.send_after(delay, move || SupervisorMsg::Respawn { user_id });
    }

    fn on_terminated(&mut self, cell: &ActorCell) {
        if let Some(user_id) = self.users_by_actor.remove(&cell.get_id()) {
            self.actors.remove(&user_id);
            self.sync_gauge();
        }
    }

    fn entry(&self, user_id: &str) -> Option<ActorEntry> {
        if let Some(actor) = self.actors.get(user_id) {
            return Some(ActorEntry::Live(actor.clone()));
        }
        self.restarts
            .get(user_id)
            .filter(|r| r.waiting)
            .map(|r| ActorEntry::Restarting {
                user_id: user_id.to_string(),
                restarts: r.total,
            })
    }

    fn page(&self, after: Option<String>, limit: usize) -> ActorPage {
        use std::ops::Bound::{Excluded, Unbounded};
        let waiting: BTreeMap<&String, u32> = self
            .restarts
            .iter()
            .filter(|(_, r)| r.waiting)
            .map(|(user, r)| (user, r.total))
            .collect();
        let lower = after.map_or(Unbounded, Excluded);
        let mut live = self.actors.range((lower.clone(), Unbounded)).peekable();
        let mut restarting = waiting
            .iter()
            .filter(|(user, _)| match &lower {
                Excluded(after) => user.as_str() > after.as_str(),
                _ => true,
            })
            .peekable();
        let mut entries = Vec::with_capacity(limit.min(1000));
        while entries.len() < limit {
            let take_live = match (live.peek(), restarting.peek()) {
                (Some((a, _)), Some((b, _))) => a.as_str() < b.as_str(),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_live {
                let (_, actor) = live.next().expect("peeked");
                entries.push(ActorEntry::Live(actor.clone()));
            } else {
                let (user, restarts) = restarting.next().expect("peeked");
                entries.push(ActorEntry::Restarting {
                    user_id: (*user).clone(),
                    restarts: *restarts,
                });
            }
        }
        ActorPage {
            entries,
            total: self.actors.len() + waiting.len(),
        }
    }

    fn sync_gauge(&self) {
        self.ctx.metrics.actors.set(self.actors.len() as i64);
    }
}

/// Loads one user's row off the mailbox, then hands it back to be adopted.
fn reload(myself: &ActorRef<SupervisorMsg>, ctx: &Arc<ActorContext>, user_id: String) {
    let myself = myself.clone();
    let ctx = ctx.clone();
    tokio::spawn(async move {
        for attempt in 1..=10u32 {
            match ctx.store.actor_seed(&user_id).await {
                Ok(Some(seed)) => {
                    let _ = myself.send_message(SupervisorMsg::AdoptOne { seed });
                    return;
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(userId = %user_id, error = %e, attempt, "cannot load user row, retrying");
                    tokio::time::sleep(RESTART_BASE * attempt).await;
                }
            }
        }
        tracing::error!(userId = %user_id, "gave up loading user row; the user's actor starts at the next restart");
    });
}

/// Pages through every user an actor should run for and hands each page to the supervisor,
/// waiting for it to be adopted before reading the next. A database failure is retried.
async fn load_all(myself: ActorRef<SupervisorMsg>, ctx: Arc<ActorContext>) {
    let started = Instant::now();
    let mut after: Option<String> = None;
    let mut loaded = 0usize;
    loop {
        let page = match ctx.store.actor_seeds(after.as_deref(), LOAD_PAGE).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load users, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(last) = page.last() else { break };
        after = Some(last.user_id.clone());
        loaded += page.len();
        let full = page.len() as u64 == LOAD_PAGE;
        if myself
            .call(|reply| SupervisorMsg::Adopt(page, reply), None)
            .await
            .is_err()
        {
            return;
        }
        if !full {
            break;
        }
    }
    tracing::info!(
        users = loaded,
        elapsedMs = started.elapsed().as_millis() as u64,
        "user rows loaded"
    );
    let _ = myself.send_message(SupervisorMsg::Loaded);
}
