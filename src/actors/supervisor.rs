//! The root supervisor: the actor that wires the [`registry`](super::registry) (every user
//! this process runs, live or parked, as Erlang hibernates processes and Orleans deactivates
//! idle grains), the [`wake schedule`](super::schedule) (which brings a parked user back to life
//! shortly before its refresh, budgeted by the refreshes in progress, so a backlog waits parked
//! rather than as a crowd of live actors queued for a refresh permit), the
//! [`restart policy`](super::restart) (a failed actor starts again from its database row after a
//! delay that grows while it keeps failing) and the [`loader`](super::loader). It owns the
//! actors' lifecycle: spawning, parking, waking, restarting and dropping them on disconnect.
//! Which users this process runs is decided by the [`Ownership`](crate::cluster::Ownership)
//! of the context alone: on a cluster node, the users of the shards it leases, loaded when a
//! renewal gains a shard and dropped when one is lost. Must not touch: an actor's state (it sends messages),
//! the store (the loader reads rows).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::task::JoinHandle;

use super::{
    context::ActorContext,
    loader,
    messages::{Parked, SupervisorMsg, UserTokenMsg},
    registry::{Registry, Slot},
    restart::RestartPolicy,
    schedule::{WakeSchedule, delay_until},
    user_token::{UserTokenActor, UserTokenArgs, planned_refresh},
};
use crate::{
    ids::{Shard, UserId},
    store::ActorStart,
};

/// How long the supervisor waits for an actor to confirm that it parks.
const CONFIRM_PARK_TIMEOUT: Duration = Duration::from_secs(2);

/// The supervisor actor type.
pub struct TokenSupervisor;

/// What the supervisor starts with.
pub struct SupervisorArgs {
    pub ctx: Arc<ActorContext>,
    /// Set once every user of the initial load has its slot.
    pub loaded: Arc<AtomicBool>,
}

/// The pending `WakeDue` message of the wake schedule.
type WakeTimer = JoinHandle<Result<(), ractor::MessagingErr<SupervisorMsg>>>;

/// Private state of the supervisor.
pub struct SupervisorState {
    ctx: Arc<ActorContext>,
    loaded: Arc<AtomicBool>,
    registry: Registry,
    restarts: RestartPolicy,
    /// The one timer of the wake schedule (when it fires, the schedule knows).
    wake_timer: Option<WakeTimer>,
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
        let refresh = &args.ctx.refresh;
        let wakes = WakeSchedule::new(refresh.hibernate_after, refresh.concurrency);
        Ok(SupervisorState {
            registry: Registry::new(wakes, args.ctx.metrics.clone()),
            ctx: args.ctx,
            loaded: args.loaded,
            restarts: RestartPolicy::default(),
            wake_timer: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Loading runs beside the mailbox so that connects and admin calls are served while a
        // large fleet is still coming up. A cluster node loads shards as its leases come.
        if !state.ctx.ownership.is_cluster() {
            tokio::spawn(loader::load_all(myself, state.ctx.clone(), None, true));
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.wake_timer.take() {
            timer.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // The wall clock is read once per message: every decision below takes it as `now`.
        let now = crate::clock::now();
        match message {
            // Adopted in the handler (no database read), so any admin call queued after the
            // callback's message already finds the user.
            SupervisorMsg::UserConnected { start } | SupervisorMsg::AdoptOne { start } => {
                state.adopt(&myself, start, true, now).await;
                state.arm_wake_timer(&myself, now);
            }
            SupervisorMsg::UserDisconnected { user_id } => state.forget(&user_id),
            SupervisorMsg::Adopt(starts, reply) => {
                for start in starts {
                    state.adopt(&myself, start, false, now).await;
                }
                state.arm_wake_timer(&myself, now);
                let _ = reply.send(());
            }
            SupervisorMsg::Loaded => {
                state.loaded.store(true, Ordering::SeqCst);
                tracing::info!(
                    users = state.registry.len(),
                    hibernating = state.registry.parked(),
                    "all user actors loaded"
                );
            }
            SupervisorMsg::ShardsGained { shards, initial } => {
                tokio::spawn(loader::load_all(
                    myself,
                    state.ctx.clone(),
                    Some(shards),
                    initial,
                ));
            }
            SupervisorMsg::ShardsLost(shards) => state.drop_shards(&shards),
            SupervisorMsg::Respawn { user_id } => {
                if matches!(state.registry.get(&user_id), Some(Slot::Restarting)) {
                    loader::reload(&myself, &state.ctx, user_id);
                }
            }
            SupervisorMsg::Hibernate { actor } => state.park(&myself, actor, now).await,
            SupervisorMsg::WakeDue => state.wake_due(&myself, now).await,
            SupervisorMsg::Forward {
                user_id,
                message,
                reply,
            } => {
                let sent = match state.live(&myself, &user_id).await {
                    Some(actor) => actor.send_message(message).is_ok(),
                    None => false,
                };
                let _ = reply.send(sent);
            }
            SupervisorMsg::Get { user_id, reply } => {
                let _ = reply.send(state.registry.entry(&user_id, &state.restarts));
            }
            SupervisorMsg::List {
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(state.registry.page(after, limit, &state.restarts));
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
    /// Takes a user in: a running actor is brought up to date. Otherwise `eager` (a connect, a
    /// restart after a crash) starts the actor unless it would park at once; the initial load
    /// parks every user, overdue ones included, and leaves the wake schedule to bring them up
    /// within its budget, since a million live actors would not fit.
    async fn adopt(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        start: ActorStart,
        eager: bool,
        now: DateTime<Utc>,
    ) {
        if !self.ctx.ownership.holds(&start.user_id) {
            return;
        }
        if let Some(Slot::Live(actor)) = self.registry.get(&start.user_id) {
            // A row that needs a reconnect (a grant ended by another node or a security
            // event) is news too: the actor stops its plans.
            let _ = actor.send_message(UserTokenMsg::TokensChanged(start));
            return;
        }
        let user_id = self.registry.key(&start.user_id);
        let planned = planned_refresh(&self.ctx.refresh, start.token_expiry);
        let parked = Parked::from_start(&start, planned, self.ctx.warning);
        if eager && !parked.is_idle(now, self.ctx.refresh.hibernate_after) {
            self.spawn(myself, user_id, parked).await;
        } else {
            self.registry.put(user_id, Slot::Parked(parked));
        }
    }

    /// Starts the user's actor from `parked` (where it left off, or its row) in place of its
    /// slot. If it cannot start, the slot stays as it was.
    async fn spawn(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        user_id: UserId,
        parked: Parked,
    ) -> Option<ActorRef<UserTokenMsg>> {
        let args = UserTokenArgs {
            user_id: user_id.clone(),
            parked,
            restarts: self.restarts.total(&user_id),
            ctx: self.ctx.clone(),
        };
        match Actor::spawn_linked(None, UserTokenActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.registry.put(user_id, Slot::Live(actor.clone()));
                Some(actor)
            }
            Err(e) => {
                tracing::error!(userId = %user_id, error = %e, "cannot start user actor");
                None
            }
        }
    }

    /// The user's live actor, waking it if it hibernates.
    async fn live(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        user_id: &str,
    ) -> Option<ActorRef<UserTokenMsg>> {
        match self.registry.get(user_id)? {
            Slot::Live(actor) => Some(actor.clone()),
            Slot::Restarting => None,
            Slot::Parked(parked) => {
                let parked = parked.clone();
                let user_id = self.registry.key(user_id);
                self.spawn(myself, user_id, parked).await
            }
        }
    }

    /// A live actor offered to hibernate. Its confirmation is awaited here, so no message
    /// from the supervisor can slip in between "idle" and "stopped"; messages already queued
    /// at the actor run first and make it decline.
    async fn park(&mut self, myself: &ActorRef<SupervisorMsg>, actor: ActorId, now: DateTime<Utc>) {
        let Some(user_id) = self.registry.user_of(&actor) else {
            return;
        };
        let Some(Slot::Live(live)) = self.registry.get(&user_id) else {
            return;
        };
        let live = live.clone();
        let answer = live
            .call(UserTokenMsg::ConfirmPark, Some(CONFIRM_PARK_TIMEOUT))
            .await;
        let Ok(ractor::rpc::CallResult::Success(Some(parked))) = answer else {
            return;
        };
        // Replacing the live slot unregisters the actor, so its termination is not mistaken for
        // a user that stopped by itself.
        self.registry.put(user_id, Slot::Parked(parked));
        live.stop(Some("hibernating".into()));
        self.arm_wake_timer(myself, now);
    }

    /// Wakes parked users whose wake time has come, most overdue first, as many as the
    /// refreshes in progress leave room for; the rest stay parked until a later tick.
    async fn wake_due(&mut self, myself: &ActorRef<SupervisorMsg>, now: DateTime<Utc>) {
        self.wake_timer = None;
        let refreshing = self.ctx.refreshing.load(Ordering::Relaxed);
        let (due, backlog) = self.registry.take_due(now, refreshing);
        for (user_id, parked) in due {
            self.spawn(myself, user_id, parked).await;
        }
        self.ctx.backlog.store(backlog, Ordering::Relaxed);
        self.arm_wake_timer(myself, now);
    }

    /// Keeps one timer set for the earliest wake time, or for the next tick while a backlog
    /// drains.
    fn arm_wake_timer(&mut self, myself: &ActorRef<SupervisorMsg>, now: DateTime<Utc>) {
        let Some(fire_at) = self.registry.arm_wakes() else {
            return;
        };
        if let Some(timer) = self.wake_timer.take() {
            timer.abort();
        }
        let delay = delay_until(now, fire_at);
        self.wake_timer = Some(myself.send_after(delay, || SupervisorMsg::WakeDue));
    }

    /// Drops every user of `shards` (their leases went to other nodes).
    fn drop_shards(&mut self, shards: &[Shard]) {
        let ownership = &self.ctx.ownership;
        let users = self
            .registry
            .users_matching(|user_id| shards.contains(&ownership.shard_of(user_id)));
        for user_id in &users {
            self.forget(user_id);
        }
        tracing::info!(
            shards = shards.len(),
            users = users.len(),
            "users of lost shards dropped"
        );
    }

    fn forget(&mut self, user_id: &str) {
        if let Some(Slot::Live(actor)) = self.registry.take(user_id) {
            actor.stop(Some("disconnected".into()));
        }
        self.restarts.forget(user_id);
    }

    fn on_failed(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        cell: &ActorCell,
        error: &ActorProcessingErr,
    ) {
        let Some(user_id) = self.registry.user_of(&cell.get_id()) else {
            return;
        };
        self.registry.put(user_id.clone(), Slot::Restarting);
        self.ctx.metrics.actor_restarts.inc();
        let delay = self.restarts.failed(&user_id, tokio::time::Instant::now());
        tracing::error!(
            userId = %user_id,
            error = %error,
            restarts = self.restarts.total(&user_id),
            restartInMs = delay.as_millis() as u64,
            "user actor failed, restarting"
        );
        myself.send_after(delay, move || SupervisorMsg::Respawn { user_id });
    }

    fn on_terminated(&mut self, cell: &ActorCell) {
        // A hibernated or disconnected actor was already unregistered; this is one that
        // stopped by itself (no longer connected).
        if let Some(user_id) = self.registry.user_of(&cell.get_id()) {
            self.registry.take(&user_id);
        }
    }
}
