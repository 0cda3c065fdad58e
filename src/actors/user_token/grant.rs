//! The user actor's side of the grant's life (docs/contract.md section 9): taking in a new grant,
//! the moments of a time-limited grant (its warning, its end) and a grant that ended. The timer
//! fires [`UserTokenMsg::Deadline`] at the earliest of the warning, the end and the refresh
//! (`Schedule::next_due`); the jobs run outside the mailbox (`actors::deadline`) and come back
//! as [`UserTokenMsg::DeadlineFinished`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::ActorRef;
use tracing::Instrument;

use super::{LEASE_RECHECK, UserTokenState};
use crate::{
    actors::{
        messages::{ActorStatus, DeadlineOutcome, RefreshReason, UserTokenMsg},
        schedule::{NextDue, warn_at},
    },
    cluster::NotActing,
    store::{ActorStart, ReconnectReason},
};

/// How soon a deadline job that could not run (the database) is tried again.
const DEADLINE_RETRY: Duration = Duration::from_secs(5);

impl UserTokenState {
    /// Starts again from the user's row as saved (a new consent, or a change that won over
    /// this actor's work).
    pub(super) fn new_grant(&mut self, myself: &ActorRef<UserTokenMsg>, start: &ActorStart) {
        let schedule = &mut self.schedule;
        schedule.failures = 0;
        schedule.version = start.version;
        schedule.token_expiry = start.token_expiry;
        schedule.reconnect_reason = start.reconnect_reason.filter(|_| start.needs_reconnect);
        schedule.authorization_expires_at = start.authorization_expires_at;
        schedule.warn_at = warn_at(
            start.authorization_expires_at,
            self.ctx.warning,
            start.authorization_warned,
        );
        self.set_status(if start.needs_reconnect {
            ActorStatus::NeedsReconnect
        } else {
            ActorStatus::Active
        });
        self.schedule(myself);
    }

    /// A refresh answer named the grant's end (`None`: it said nothing, the end stays). An
    /// end moved before the warning went out moves the warning; a grant that was ongoing and
    /// now has an end gets its warning.
    pub(super) fn grant_end_moved(&mut self, end: Option<DateTime<Utc>>) {
        let schedule = &mut self.schedule;
        let Some(end) = end.filter(|end| schedule.authorization_expires_at != Some(*end)) else {
            return;
        };
        let had_end = schedule.authorization_expires_at.is_some();
        schedule.authorization_expires_at = Some(end);
        if schedule.warn_at.is_some() || !had_end {
            schedule.warn_at = warn_at(Some(end), self.ctx.warning, false);
        }
    }

    /// The grant is over: the user waits for a reconnect, with nothing scheduled.
    pub(super) fn grant_ended(&mut self, reason: ReconnectReason) {
        match reason {
            ReconnectReason::AuthorizationExpired => tracing::warn!(
                userId = %self.user_id,
                reason = reason.as_str(),
                "time-limited Google grant ended; user must reconnect"
            ),
            _ => tracing::warn!(
                userId = %self.user_id,
                reason = reason.as_str(),
                "Google grant revoked; user must reconnect"
            ),
        }
        self.set_status(ActorStatus::NeedsReconnect);
        let schedule = &mut self.schedule;
        schedule.reconnect_reason = Some(reason);
        schedule.token_expiry = None;
        schedule.next_refresh_at = None;
        schedule.warn_at = None;
        self.cancel_timer();
    }

    /// The timer fired for the grant's warning or end: run the job that is due, if one is
    /// (the plan may have moved since the timer was armed).
    pub(super) fn deadline(&mut self, myself: &ActorRef<UserTokenMsg>) {
        if self.in_flight.is_some()
            || self.deadline_in_flight
            || self.status == ActorStatus::NeedsReconnect
        {
            return;
        }
        let now = crate::clock::now();
        let due = match self.schedule.next_due() {
            Some((at, due @ (NextDue::Warn | NextDue::Expire))) if at <= now => due,
            _ => {
                self.arm_next(myself, self.next_refresh_reason());
                return;
            }
        };
        self.cancel_timer();
        self.deadline_in_flight = true;
        let span = tracing::info_span!(
            parent: None,
            "actor.grant_deadline",
            user.id = %self.user_id,
            deadline = if due == NextDue::Expire { "end" } else { "warning" },
        );
        let (ctx, user_id, version) = (
            self.ctx.clone(),
            self.user_id.clone(),
            self.schedule.version,
        );
        let myself = myself.clone();
        tokio::spawn(
            async move {
                let outcome = if due == NextDue::Expire {
                    ctx.expire_authorization(&user_id, version).await
                } else {
                    ctx.warn_authorization(&user_id).await
                };
                let _ = myself.send_message(UserTokenMsg::DeadlineFinished(outcome));
            }
            .instrument(span),
        );
    }

    pub(super) fn finish_deadline(
        &mut self,
        myself: &ActorRef<UserTokenMsg>,
        outcome: DeadlineOutcome,
    ) {
        self.deadline_in_flight = false;
        match outcome {
            DeadlineOutcome::Expired(change) => {
                self.schedule.version = change.version;
                self.grant_ended(ReconnectReason::AuthorizationExpired);
            }
            DeadlineOutcome::Warned => {
                tracing::info!(
                    userId = %self.user_id,
                    authorizationExpiresAt = ?self.schedule.authorization_expires_at,
                    "time-limited Google grant ends soon; the app is told"
                );
                self.schedule.warn_at = None;
                self.arm_next(myself, self.next_refresh_reason());
            }
            // The row moved on (a reconnect, a refresh answer that moved the end): start from
            // it, unless it is the row this actor already had, which only a fence or a clock
            // disagreement refuses; then look again later rather than at once.
            DeadlineOutcome::Superseded(Some(start)) if start.version != self.schedule.version => {
                self.new_grant(myself, &start);
            }
            DeadlineOutcome::Superseded(Some(_)) => self.deadline_later(myself, DEADLINE_RETRY),
            DeadlineOutcome::Superseded(None) | DeadlineOutcome::NotHere(NotActing::NotHeld) => {
                myself.stop(Some("no longer this node's or no longer connected".into()));
            }
            DeadlineOutcome::NotHere(NotActing::Uncertain) => {
                self.deadline_later(myself, LEASE_RECHECK);
            }
            DeadlineOutcome::Later(error) => {
                tracing::warn!(userId = %self.user_id, error = %error, "grant deadline not handled yet, will retry");
                self.deadline_later(myself, DEADLINE_RETRY);
            }
        }
    }

    fn deadline_later(&mut self, myself: &ActorRef<UserTokenMsg>, after: Duration) {
        self.cancel_timer();
        self.timer = Some(myself.send_after(after, || UserTokenMsg::Deadline));
    }

    /// The reason the planned refresh runs for: a retry while failures are counted.
    fn next_refresh_reason(&self) -> RefreshReason {
        if self.schedule.failures > 0 {
            RefreshReason::Retry
        } else {
            RefreshReason::Scheduled
        }
    }
}
