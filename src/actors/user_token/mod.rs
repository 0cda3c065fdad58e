//! The per-user token actor: the only code allowed to refresh a user's access token, which
//! removes double refreshes by construction. It keeps only its [`Schedule`] in memory (never a
//! token value), schedules its own refresh `lead` (minus jitter) before expiry, and runs each
//! refresh as a separate task whose outcome comes back as a message, so the mailbox (Stop
//! included) is never blocked by Google or the database. When idle it offers the supervisor to
//! park its state ([`Parked`]) and stop. Must not touch: other users, the supervisor's registry.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rand::Rng;
use tokio::task::JoinHandle;
use tracing::Instrument;

mod grant;

use super::{
    context::ActorContext,
    messages::{ActorStatus, Parked, RefreshOutcome, RefreshReason, SupervisorMsg, UserTokenMsg},
    schedule::{NextDue, Schedule, delay_until},
};
use crate::{
    cluster::NotActing, config::RefreshConfig, history::Activity, ids::UserId, retry::Backoff,
};

/// How soon a refresh that waited for its lease looks again.
pub(super) const LEASE_RECHECK: Duration = Duration::from_secs(1);

/// Refusals that are not the user's fault (e.g. a wrong client secret) are retried, but
/// slowly: hammering Google will not fix the configuration.
const REJECTED_RETRY_MAX: Duration = Duration::from_secs(15 * 60);

/// When a token expiring at `expiry` should be refreshed: `lead` before it, minus a random
/// jitter (at most `jitter_max`, and at most half the lead) so that users connected together
/// do not refresh together.
pub fn planned_at(config: &RefreshConfig, expiry: DateTime<Utc>) -> DateTime<Utc> {
    let jitter_cap = config.jitter_max.min(config.lead / 2);
    let jitter = rand::thread_rng().gen_range(Duration::ZERO..=jitter_cap);
    expiry - chrono::Duration::from_std(config.lead + jitter).unwrap_or_default()
}

/// [`planned_at`] for an optional expiry.
pub fn planned_refresh(
    config: &RefreshConfig,
    expiry: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    expiry.map(|e| planned_at(config, e))
}

/// The actor type; all state lives in [`UserTokenState`].
pub struct UserTokenActor;

/// What the actor starts from.
pub struct UserTokenArgs {
    pub user_id: UserId,
    /// Where the user stands: its planned refresh (kept, so waking does not move it; with
    /// failures, that is its retry) and whether it waits for a reconnect.
    pub parked: Parked,
    pub restarts: u32,
    pub ctx: Arc<ActorContext>,
}

/// Private state of one user's actor.
pub struct UserTokenState {
    user_id: UserId,
    status: ActorStatus,
    /// `next_refresh_at` is the refresh the timer is armed for (kept while one runs).
    schedule: Schedule,
    timer: Option<JoinHandle<Result<(), ractor::MessagingErr<UserTokenMsg>>>>,
    restarts: u32,
    /// The reason of the refresh in flight, if one is.
    in_flight: Option<RefreshReason>,
    /// Whether a job for the grant's warning or end is in flight.
    deadline_in_flight: bool,
    /// The planned time of the scheduled refresh in flight, for its lateness.
    planned_for_in_flight: Option<DateTime<Utc>>,
    /// Set once the actor has offered to hibernate; the supervisor stops it soon after.
    hibernation_offered: bool,
    ctx: Arc<ActorContext>,
}

impl Actor for UserTokenActor {
    type Msg = UserTokenMsg;
    type State = UserTokenState;
    type Arguments = UserTokenArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: UserTokenArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let Parked {
            schedule,
            needs_reconnect,
        } = args.parked;
        Ok(UserTokenState {
            status: if needs_reconnect {
                ActorStatus::NeedsReconnect
            } else if schedule.failures > 0 {
                ActorStatus::Retrying
            } else {
                ActorStatus::Active
            },
            user_id: args.user_id.clone(),
            schedule,
            timer: None,
            restarts: args.restarts,
            in_flight: None,
            deadline_in_flight: false,
            planned_for_in_flight: None,
            hibernation_offered: false,
            ctx: args.ctx,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.metrics.actor_status(state.status.as_str(), 1);
        state.resume(&myself);
        state.maybe_hibernate(&myself);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.cancel_timer();
        state.ctx.metrics.actor_status(state.status.as_str(), -1);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            UserTokenMsg::TokensChanged(start) => state.new_grant(&myself, &start),
            UserTokenMsg::Deadline => state.deadline(&myself),
            UserTokenMsg::DeadlineFinished(outcome) => state.finish_deadline(&myself, outcome),
            UserTokenMsg::Refresh(reason) => state.start_refresh(&myself, reason),
            UserTokenMsg::RefreshFinished(outcome) => state.finish_refresh(&myself, outcome),
            UserTokenMsg::Info(reply) => {
                let info = state
                    .schedule
                    .info(&state.user_id, state.status, state.restarts);
                let _ = reply.send(info);
            }
            #[cfg(feature = "test-util")]
            UserTokenMsg::Crash => panic!("fault injected into user token actor"),
            UserTokenMsg::ConfirmPark(reply) => {
                let parked = state.confirm_park();
                let parking = parked.is_some();
                let _ = reply.send(parked);
                if parking {
                    // The supervisor stops us next; nothing more to offer.
                    return Ok(());
                }
            }
        }
        state.maybe_hibernate(&myself);
        Ok(())
    }
}

impl UserTokenState {
    /// Changes status, keeping the per-status gauge in step.
    fn set_status(&mut self, status: ActorStatus) {
        if status != self.status {
            self.ctx.metrics.actor_status(self.status.as_str(), -1);
            self.ctx.metrics.actor_status(status.as_str(), 1);
            self.status = status;
        }
    }

    fn cancel_timer(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }

    /// Arms the timer for the refresh planned before the actor started (a woken user keeps its
    /// plan, or its retry), or plans one.
    fn resume(&mut self, myself: &ActorRef<UserTokenMsg>) {
        let planned = self
            .schedule
            .next_refresh_at
            .filter(|_| self.status != ActorStatus::NeedsReconnect);
        match planned {
            Some(at) => {
                // Only a woken retry has failures here: every success and new grant resets them.
                let reason = if self.schedule.failures > 0 {
                    RefreshReason::Retry
                } else {
                    RefreshReason::Scheduled
                };
                self.arm(myself, at, reason);
            }
            None => self.schedule(myself),
        }
    }

    /// Arms the timer for the next proactive refresh (none while waiting for a reconnect).
    fn schedule(&mut self, myself: &ActorRef<UserTokenMsg>) {
        self.cancel_timer();
        let Some(expiry) = self
            .schedule
            .token_expiry
            .filter(|_| self.status != ActorStatus::NeedsReconnect)
        else {
            self.schedule.next_refresh_at = None;
            return;
        };
        let at = planned_at(&self.ctx.refresh, expiry);
        self.arm(myself, at, RefreshReason::Scheduled);
    }

    /// Offers the supervisor to park this actor when nothing is due soon: a refresh far away,
    /// or none at all while waiting for a reconnect.
    fn maybe_hibernate(&mut self, myself: &ActorRef<UserTokenMsg>) {
        // Still `Refreshing` without a refresh in flight: stopping (disconnected meanwhile).
        if self.hibernation_offered
            || self.in_flight.is_some()
            || self.deadline_in_flight
            || self.status == ActorStatus::Refreshing
        {
            return;
        }
        // The same rule as the supervisor's for a user it takes in, so that one it starts live
        // does not park at once.
        let idle = self.schedule.is_idle(
            self.status == ActorStatus::NeedsReconnect,
            crate::clock::now(),
            self.ctx.refresh.hibernate_after,
        );
        if idle {
            self.offer_hibernation(myself);
        }
    }

    fn offer_hibernation(&mut self, myself: &ActorRef<UserTokenMsg>) {
        let Some(supervisor) = myself.try_get_supervisor() else {
            return;
        };
        let offer = SupervisorMsg::Hibernate {
            actor: myself.get_id(),
        };
        self.hibernation_offered = supervisor.send_message(offer).is_ok();
    }

    /// The parked form of this actor's state, if it is still idle.
    fn confirm_park(&mut self) -> Option<Parked> {
        let offered = std::mem::take(&mut self.hibernation_offered);
        if !offered || self.in_flight.is_some() || self.deadline_in_flight {
            return None;
        }
        self.cancel_timer();
        Some(Parked {
            schedule: self.schedule.clone(),
            needs_reconnect: self.status == ActorStatus::NeedsReconnect,
        })
    }

    /// Plans the refresh (or retry) at `at` and arms the timer for what comes first: that
    /// refresh, or the grant's warning or end.
    fn arm(&mut self, myself: &ActorRef<UserTokenMsg>, at: DateTime<Utc>, reason: RefreshReason) {
        self.schedule.next_refresh_at = Some(at);
        self.arm_next(myself, reason);
    }

    fn arm_next(&mut self, myself: &ActorRef<UserTokenMsg>, reason: RefreshReason) {
        self.cancel_timer();
        let Some((at, due)) = self.schedule.next_due() else {
            return;
        };
        let delay = delay_until(crate::clock::now(), at);
        self.timer = Some(match due {
            NextDue::Refresh => myself.send_after(delay, move || UserTokenMsg::Refresh(reason)),
            NextDue::Warn | NextDue::Expire => myself.send_after(delay, || UserTokenMsg::Deadline),
        });
    }

    fn start_refresh(&mut self, myself: &ActorRef<UserTokenMsg>, reason: RefreshReason) {
        // One refresh at a time, and none without a grant: a duplicate request is absorbed.
        if self.in_flight.is_some()
            || self.deadline_in_flight
            || self.status == ActorStatus::NeedsReconnect
        {
            return;
        }
        // Lateness is measured when the refresh is done (saved), against this plan.
        self.planned_for_in_flight = self
            .schedule
            .next_refresh_at
            .filter(|_| reason == RefreshReason::Scheduled);
        if let Some(expiry) = self.schedule.token_expiry {
            let left = (expiry - crate::clock::now()).num_milliseconds().max(0) as f64 / 1000.0;
            self.ctx.metrics.remaining_lifetime.observe(left);
        }
        self.cancel_timer();
        self.in_flight = Some(reason);
        self.set_status(ActorStatus::Refreshing);
        // A root span: the timer, not a request, started this work.
        let span = tracing::info_span!(
            parent: None,
            "actor.refresh",
            user.id = %self.user_id,
            refresh.reason = reason.as_str(),
            refresh.outcome = tracing::field::Empty,
        );
        let ctx = self.ctx.clone();
        let user_id = self.user_id.clone();
        let myself = myself.clone();
        tokio::spawn(
            async move {
                let outcome = ctx.refresh(&user_id).await;
                tracing::Span::current().record("refresh.outcome", outcome.label());
                let _ = myself.send_message(UserTokenMsg::RefreshFinished(outcome));
            }
            .instrument(span),
        );
    }

    fn finish_refresh(&mut self, myself: &ActorRef<UserTokenMsg>, outcome: RefreshOutcome) {
        let reason = self.in_flight.take().unwrap_or(RefreshReason::Scheduled);
        self.ctx.metrics.refresh(reason.as_str(), outcome.label());
        // A refresh that did not run here is no event of the user's.
        if !matches!(outcome, RefreshOutcome::NotHere(_)) {
            self.ctx.history.record(
                &self.user_id,
                Activity::Refresh(reason.as_str()),
                outcome.label(),
                outcome.failed(),
                outcome.error(),
            );
        }
        if let (Some(planned), RefreshOutcome::Refreshed(..)) =
            (self.planned_for_in_flight.take(), &outcome)
        {
            let late = (crate::clock::now() - planned)
                .to_std()
                .unwrap_or(Duration::ZERO);
            self.ctx
                .metrics
                .refresh_lateness
                .observe(late.as_secs_f64());
        }
        match outcome {
            RefreshOutcome::Refreshed(change, end) => {
                self.grant_end_moved(end);
                let schedule = &mut self.schedule;
                schedule.version = change.version;
                schedule.token_expiry = change.token_expiry;
                schedule.last_refresh_at = Some(crate::clock::now());
                schedule.refresh_count += 1;
                schedule.failures = 0;
                self.set_status(ActorStatus::Active);
                tracing::info!(userId = %self.user_id, tokenExpiry = ?self.schedule.token_expiry, "access token refreshed");
                self.schedule(myself);
                if self.ctx.backlog.load(std::sync::atomic::Ordering::Relaxed) {
                    self.offer_hibernation(myself);
                }
            }
            RefreshOutcome::Transient(error) => {
                self.retry_later(myself, &error, self.ctx.refresh.retry_max);
            }
            RefreshOutcome::Rejected(error) => {
                self.retry_later(
                    myself,
                    &error,
                    REJECTED_RETRY_MAX.max(self.ctx.refresh.retry_max),
                );
            }
            RefreshOutcome::Revoked(reason) => self.grant_ended(reason),
            RefreshOutcome::NotHere(NotActing::NotHeld) => {
                // The supervisor drops this user too, when the renewal that lost the shard
                // tells it.
                myself.stop(Some("shard moved to another node".into()));
            }
            RefreshOutcome::NotHere(NotActing::Uncertain) => {
                // Not a failure: the lease is being renewed or handed over. Look again soon,
                // the same refresh.
                self.set_status(if self.schedule.failures > 0 {
                    ActorStatus::Retrying
                } else {
                    ActorStatus::Active
                });
                let at = crate::clock::now()
                    + chrono::Duration::from_std(LEASE_RECHECK).unwrap_or_default();
                self.arm(myself, at, reason);
            }
            RefreshOutcome::Superseded(start) => {
                match start {
                    // Newer tokens than the ones that failed: start afresh.
                    Some(start) => self.new_grant(myself, &start),
                    // Disconnected meanwhile; the supervisor stops us too.
                    None => myself.stop(Some("no longer connected".into())),
                }
            }
        }
    }

    fn retry_later(&mut self, myself: &ActorRef<UserTokenMsg>, error: &str, cap: Duration) {
        self.schedule.failures += 1;
        self.set_status(ActorStatus::Retrying);
        let delay = Backoff::new(self.ctx.refresh.retry_base, cap).delay(self.schedule.failures);
        tracing::warn!(
            userId = %self.user_id,
            error = %error,
            attempt = self.schedule.failures,
            retryInMs = delay.as_millis() as u64,
            "token refresh failed, will retry"
        );
        let at = crate::clock::now() + chrono::Duration::from_std(delay).unwrap_or_default();
        self.arm(myself, at, RefreshReason::Retry);
    }
}
