//! The root supervisor: every user this process runs has a slot here, either a live user
//! token actor or, while the user's next refresh is far away, a compact parked state
//! ("hibernating", as Erlang hibernates processes and Orleans deactivates idle grains). One
//! wake schedule brings a parked user back to life shortly before its refresh, or at once when
//! a message for it arrives. Scheduled wake-ups are budgeted by the refreshes in progress, so a
//! backlog of overdue users (a slow Google, the initial load) waits parked rather than as a
//! crowd of live actors queued for a refresh permit. The supervisor restarts a failed actor
//! from its database row (with a backoff that grows while it keeps failing) and drops a user
//! on disconnect. Which users this process runs is decided by [`UserScope`] alone, so that
//! several nodes can later share one database by lease.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::task::JoinHandle;

use super::{
    context::ActorContext,
    messages::{ActorEntry, ActorPage, Parked, SupervisorMsg, UserTokenMsg},
    user_token::{UserTokenActor, UserTokenArgs, planned_refresh},
};
use crate::store::ActorSeed;

/// Rows loaded per page at start, so a million users never sit in memory at once as rows.
const LOAD_PAGE: u64 = 1000;
/// A failure this long after the previous one starts the backoff over.
const CRASH_WINDOW: Duration = Duration::from_secs(60);
const RESTART_BASE: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// The wake budget's floor, so that a small `REFRESH_CONCURRENCY` still wakes users in
/// batches worth a tick.
const WAKE_HIGH_WATER_MIN: usize = 256;
/// Users woken per refresh permit: enough queued at the semaphore to keep every permit busy
/// until the next tick, few enough that a backlog costs a few thousand live actors at most.
const WAKE_PER_PERMIT: usize = 4;
/// The pause between wake ticks while a backlog drains: long enough for the users just woken
/// to start their refreshes and show in the count, short enough not to leave permits idle.
const WAKE_BACKLOG_TICK: Duration = Duration::from_millis(20);

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
    /// Set once every user of the initial load has its slot.
    pub loaded: Arc<AtomicBool>,
}

/// The pending `WakeDue` message of the wake schedule.
type WakeTimer = JoinHandle<Result<(), ractor::MessagingErr<SupervisorMsg>>>;

/// One user, as the supervisor holds it.
enum Slot {
    Live(ActorRef<UserTokenMsg>),
    Parked(Parked),
    /// Crashed, waiting out its restart backoff.
    Restarting,
}

#[derive(Default)]
struct RestartRecord {
    total: u32,
    /// Failures in the current crash streak.
    streak: u32,
    last: Option<Instant>,
}

/// Private state of the supervisor.
pub struct SupervisorState {
    ctx: Arc<ActorContext>,
    scope: UserScope,
    loaded: Arc<AtomicBool>,
    slots: BTreeMap<Arc<str>, Slot>,
    users_by_actor: HashMap<ActorId, Arc<str>>,
    /// Only users that ever failed: most never do.
    restarts: HashMap<Arc<str>, RestartRecord>,
    /// Parked users by wake time (ms since the epoch).
    wake_schedule: BTreeSet<(i64, Arc<str>)>,
    /// The one timer of the wake schedule, and when it fires.
    wake_timer: Option<(i64, WakeTimer)>,
    /// While a backlog drains, no wake tick before this (ms since the epoch): without it every
    /// overdue user parked meanwhile would pull the next tick in to "now".
    wake_not_before: i64,
    parked_count: i64,
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
            slots: BTreeMap::new(),
            users_by_actor: HashMap::new(),
            restarts: HashMap::new(),
            wake_schedule: BTreeSet::new(),
            wake_timer: None,
            wake_not_before: 0,
            parked_count: 0,
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

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((_, timer)) = state.wake_timer.take() {
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
        match message {
            // Adopted in the handler (no database read), so any admin call queued after the
            // callback's message already finds the user.
            SupervisorMsg::UserConnected { seed } => state.adopt(&myself, seed, true).await,
            SupervisorMsg::UserDisconnected { user_id } => state.forget(&user_id),
            SupervisorMsg::Adopt(seeds, reply) => {
                for seed in seeds {
                    state.adopt(&myself, seed, false).await;
                }
                state.arm_wake_timer(&myself);
                let _ = reply.send(());
            }
            SupervisorMsg::AdoptOne { seed } => state.adopt(&myself, seed, true).await,
            SupervisorMsg::Loaded => {
                state.loaded.store(true, Ordering::SeqCst);
                tracing::info!(
                    users = state.slots.len(),
                    hibernating = state.parked_count,
                    "all user actors loaded"
                );
            }
            SupervisorMsg::Respawn { user_id } => {
                if matches!(state.slots.get(user_id.as_str()), Some(Slot::Restarting)) {
                    reload(&myself, &state.ctx, user_id);
                }
            }
            SupervisorMsg::Hibernate { actor } => state.park(&myself, actor).await,
            SupervisorMsg::WakeDue => state.wake_due(&myself).await,
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

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

impl SupervisorState {
    /// Takes a user in: a running actor is brought up to date. Otherwise `eager` (a connect, a
    /// restart after a crash) starts the actor, which decides for itself whether to hibernate;
    /// the initial load parks every user, overdue ones included, and leaves the wake schedule
    /// to bring them up within its budget, since a million live actors would not fit.
    async fn adopt(&mut self, myself: &ActorRef<SupervisorMsg>, seed: ActorSeed, eager: bool) {
        if !self.scope.owns(&seed.user_id) {
            return;
        }
        if let Some(Slot::Live(actor)) = self.slots.get(seed.user_id.as_str()) {
            if !seed.needs_reconnect {
                let change = crate::store::TokenChange {
                    version: seed.version,
                    token_expiry: seed.token_expiry,
                };
                let _ = actor.send_message(UserTokenMsg::TokensChanged(change));
            }
            return;
        }
        let user_id: Arc<str> = Arc::from(seed.user_id.as_str());
        let restarts = self.restarts.get(&user_id).map_or(0, |r| r.total);
        let parked = Parked::from_seed(
            &seed,
            restarts,
            planned_refresh(&self.ctx.refresh, seed.token_expiry),
        );
        if eager {
            self.spawn(myself, user_id, seed, parked.next_refresh_at, 0)
                .await;
        } else {
            self.set_parked(myself, user_id, parked);
        }
    }

    fn hibernate_after(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.ctx.refresh.hibernate_after).unwrap_or_default()
    }

    /// How long before its refresh a parked user is woken.
    fn wake_ahead(&self) -> chrono::Duration {
        (self.hibernate_after() / 2).min(chrono::Duration::seconds(5))
    }

    async fn spawn(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        user_id: Arc<str>,
        seed: ActorSeed,
        planned: Option<DateTime<Utc>>,
        failures: u32,
    ) -> Option<ActorRef<UserTokenMsg>> {
        self.unpark(&user_id);
        let restarts = self.restarts.get(&user_id).map_or(0, |r| r.total);
        let args = UserTokenArgs {
            seed,
            planned,
            restarts,
            failures,
            ctx: self.ctx.clone(),
        };
        match Actor::spawn_linked(None, UserTokenActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.users_by_actor.insert(actor.get_id(), user_id.clone());
                self.slots.insert(user_id, Slot::Live(actor.clone()));
                self.sync_gauge();
                Some(actor)
            }
            Err(e) => {
                tracing::error!(userId = %user_id, error = %e, "cannot start user actor");
                None
            }
        }
    }

    /// Starts a parked user's actor where it left off: its planned refresh (or retry) and
    /// its failure count.
    async fn wake(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        user_id: Arc<str>,
        parked: Parked,
    ) -> Option<ActorRef<UserTokenMsg>> {
        let seed = parked.seed(&user_id);
        self.spawn(
            myself,
            user_id,
            seed,
            parked.next_refresh_at,
            parked.failures,
        )
        .await
    }

    /// The user's live actor, waking it if it hibernates.
    async fn live(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        user_id: &str,
    ) -> Option<ActorRef<UserTokenMsg>> {
        match self.slots.get(user_id)? {
            Slot::Live(actor) => Some(actor.clone()),
            Slot::Restarting => None,
            Slot::Parked(parked) => {
                let parked = parked.clone();
                self.wake(myself, Arc::from(user_id), parked).await
            }
        }
    }

    /// A live actor offered to hibernate. Its confirmation is awaited here, so no message
    /// from the supervisor can slip in between "idle" and "stopped"; messages already queued
    /// at the actor run first and make it decline.
    async fn park(&mut self, myself: &ActorRef<SupervisorMsg>, actor: ActorId) {
        let Some(user_id) = self.users_by_actor.get(&actor).cloned() else {
            return;
        };
        let Some(Slot::Live(live)) = self.slots.get(&user_id) else {
            return;
        };
        let live = live.clone();
        let answer = live
            .call(UserTokenMsg::ConfirmPark, Some(Duration::from_secs(2)))
            .await;
        let Ok(ractor::rpc::CallResult::Success(Some(parked))) = answer else {
            return;
        };
        self.users_by_actor.remove(&actor);
        live.stop(Some("hibernating".into()));
        self.set_parked(myself, user_id, parked);
        self.arm_wake_timer(myself);
    }

    fn set_parked(&mut self, _myself: &ActorRef<SupervisorMsg>, user_id: Arc<str>, parked: Parked) {
        self.unpark(&user_id);
        if let Some(at) = parked.next_refresh_at.filter(|_| !parked.needs_reconnect) {
            let wake_at = millis(at - self.wake_ahead());
            self.wake_schedule.insert((wake_at, user_id.clone()));
        }
        self.ctx.metrics.actor_status(parked.status().as_str(), 1);
        self.parked_count += 1;
        self.slots.insert(user_id, Slot::Parked(parked));
        self.sync_gauge();
    }

    /// Removes a parked user's wake entry and gauge count, if it was parked.
    fn unpark(&mut self, user_id: &Arc<str>) {
        if let Some(Slot::Parked(parked)) = self.slots.get(user_id) {
            if let Some(at) = parked.next_refresh_at.filter(|_| !parked.needs_reconnect) {
                let wake_at = millis(at - self.wake_ahead());
                self.wake_schedule.remove(&(wake_at, user_id.clone()));
            }
            self.ctx.metrics.actor_status(parked.status().as_str(), -1);
            self.parked_count -= 1;
        }
    }

    /// How many woken users may be on their way to Google at once (see [`WAKE_PER_PERMIT`]).
    fn wake_high_water(&self) -> usize {
        WAKE_HIGH_WATER_MIN.max(WAKE_PER_PERMIT.saturating_mul(self.ctx.refresh.concurrency))
    }

    /// Wakes parked users whose wake time has come, most overdue first, as many as the
    /// refreshes in progress leave room for; the rest stay parked until a later tick.
    async fn wake_due(&mut self, myself: &ActorRef<SupervisorMsg>) {
        self.wake_timer = None;
        let now = millis(Utc::now());
        let refreshing = self.ctx.refreshing.load(Ordering::Relaxed);
        let mut budget = self.wake_high_water().saturating_sub(refreshing);
        let mut backlog = false;
        while let Some((wake_at, user_id)) = self.wake_schedule.first().cloned() {
            if wake_at > now {
                break;
            }
            if budget == 0 {
                self.wake_not_before = now + WAKE_BACKLOG_TICK.as_millis() as i64;
                backlog = true;
                break;
            }
            match self.slots.get(&user_id) {
                Some(Slot::Parked(parked)) => {
                    let parked = parked.clone();
                    // Waking unparks, which removes the wake entry with the slot.
                    self.wake(myself, user_id, parked).await;
                    budget -= 1;
                }
                // Not parked any more, so nothing to wake; dropped so it cannot stall the
                // schedule.
                _ => {
                    self.wake_schedule.remove(&(wake_at, user_id));
                }
            }
        }
        self.ctx.backlog.store(backlog, Ordering::Relaxed);
        self.arm_wake_timer(myself);
    }

    /// Keeps one timer set for the earliest wake time, or for the next tick while a backlog
    /// drains.
    fn arm_wake_timer(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let Some(&(earliest, _)) = self.wake_schedule.first() else {
            return;
        };
        let fire_at = earliest.max(self.wake_not_before);
        if self
            .wake_timer
            .as_ref()
            .is_some_and(|(at, _)| *at <= fire_at)
        {
            return;
        }
        if let Some((_, timer)) = self.wake_timer.take() {
            timer.abort();
        }
        let delay = Duration::from_millis((fire_at - millis(Utc::now())).max(0) as u64);
        let timer = myself.send_after(delay, || SupervisorMsg::WakeDue);
        self.wake_timer = Some((fire_at, timer));
    }

    fn forget(&mut self, user_id: &str) {
        let key: Arc<str> = Arc::from(user_id);
        self.unpark(&key);
        if let Some(Slot::Live(actor)) = self.slots.remove(user_id) {
            self.users_by_actor.remove(&actor.get_id());
            actor.stop(Some("disconnected".into()));
        }
        self.restarts.remove(user_id);
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
        self.slots.insert(user_id.clone(), Slot::Restarting);
        self.ctx.metrics.actor_restarts.inc();
        let record = self.restarts.entry(user_id.clone()).or_default();
        let now = Instant::now();
        record.streak = match record.last {
            Some(last) if now.duration_since(last) < CRASH_WINDOW => record.streak + 1,
            _ => 1,
        };
        record.last = Some(now);
        record.total += 1;
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
        let user_id = user_id.to_string();
        myself.send_after(delay, move || SupervisorMsg::Respawn { user_id });
    }

    fn on_terminated(&mut self, cell: &ActorCell) {
        // A hibernated or disconnected actor was already unregistered; this is one that
        // stopped by itself (no longer connected).
        if let Some(user_id) = self.users_by_actor.remove(&cell.get_id()) {
            self.slots.remove(&user_id);
            self.sync_gauge();
        }
    }

    fn entry_of(&self, user_id: &Arc<str>, slot: &Slot) -> ActorEntry {
        match slot {
            Slot::Live(actor) => ActorEntry::Live(actor.clone()),
            Slot::Parked(parked) => ActorEntry::Parked {
                user_id: user_id.to_string(),
                parked: parked.clone(),
            },
            Slot::Restarting => ActorEntry::Restarting {
                user_id: user_id.to_string(),
                restarts: self.restarts.get(user_id).map_or(0, |r| r.total),
            },
        }
    }

    fn entry(&self, user_id: &str) -> Option<ActorEntry> {
        let (key, slot) = self.slots.get_key_value(user_id)?;
        Some(self.entry_of(key, slot))
    }

    fn page(&self, after: Option<String>, limit: usize) -> ActorPage {
        use std::ops::Bound::{Excluded, Unbounded};
        let lower = after.map_or(Unbounded, |a| Excluded(Arc::<str>::from(a)));
        let entries = self
            .slots
            .range((lower, Unbounded))
            .take(limit)
            .map(|(user_id, slot)| self.entry_of(user_id, slot))
            .collect();
        ActorPage {
            entries,
            total: self.slots.len(),
        }
    }

    fn sync_gauge(&self) {
        self.ctx.metrics.actors.set(self.slots.len() as i64);
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
