//! Messages of the supervisor and of the user token actors, and the plain data they carry.
//! Nothing outside `actors` sees an actor's state: it sends these and reads the replies.

use chrono::{DateTime, Utc};
use ractor::RpcReplyPort;
use serde::Serialize;

use super::schedule::Schedule;
use crate::{
    cluster::NotActing,
    ids::{Shard, UserId},
    store::{ActorStart, ReconnectReason, TokenChange},
};

/// Why a refresh starts (an attribute of the refresh's logs and spans).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshReason {
    /// The actor's own timer, ahead of expiry.
    Scheduled,
    /// An operator asked (`POST /admin/actors/{id}/refresh`).
    Forced,
    /// A backoff after a failed attempt ran out.
    Retry,
}

impl RefreshReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Forced => "forced",
            Self::Retry => "retry",
        }
    }
}

/// Where a user actor stands (docs/api.md: Admin routes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorStatus {
    Active,
    Refreshing,
    Retrying,
    NeedsReconnect,
    /// Parked: the next event is far away; woken before the refresh or by a message.
    Hibernating,
}

impl ActorStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Refreshing => "refreshing",
            Self::Retrying => "retrying",
            Self::NeedsReconnect => "needs_reconnect",
            Self::Hibernating => "hibernating",
        }
    }
}

/// What `/admin/actors` shows of one actor (the sync part comes from the database).
#[derive(Debug, Clone, Serialize)]
pub struct ActorInfo {
    pub user_id: UserId,
    pub status: ActorStatus,
    pub token_expiry: Option<DateTime<Utc>>,
    pub next_refresh_at: Option<DateTime<Utc>>,
    pub last_refresh_at: Option<DateTime<Utc>>,
    pub refresh_count: i64,
    pub restarts: u32,
    pub reconnect_reason: Option<ReconnectReason>,
    pub authorization_expires_at: Option<DateTime<Utc>>,
}

/// One actor's info as the admin API shows it, with `restarting` for one in restart backoff
/// (which has no schedule to show).
pub enum ActorView {
    Live(ActorInfo),
    Restarting { user_id: UserId, restarts: u32 },
}

impl ActorView {
    pub fn user_id(&self) -> &UserId {
        match self {
            Self::Live(info) => &info.user_id,
            Self::Restarting { user_id, .. } => user_id,
        }
    }
}

/// A user's state at rest: its [`Schedule`] and whether it waits for a reconnect. A hibernating
/// user is kept as this, and an actor starts from it (a new one from its row, a woken one from
/// where it parked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub schedule: Schedule,
    pub needs_reconnect: bool,
}

impl Parked {
    /// A user as loaded from its row, with the refresh planned for it.
    pub fn from_start(
        start: &ActorStart,
        planned: Option<DateTime<Utc>>,
        warning: Option<std::time::Duration>,
    ) -> Self {
        Self {
            schedule: Schedule::from_start(start, planned, warning),
            needs_reconnect: start.needs_reconnect,
        }
    }

    /// The status shown while parked.
    pub fn status(&self) -> ActorStatus {
        if self.needs_reconnect {
            ActorStatus::NeedsReconnect
        } else {
            ActorStatus::Hibernating
        }
    }

    /// When a parked user is woken: for its refresh, or its grant's warning or end,
    /// whichever comes first; never while it waits for a reconnect.
    pub fn wake_plan(&self) -> Option<DateTime<Utc>> {
        self.schedule
            .next_due()
            .map(|(at, _)| at)
            .filter(|_| !self.needs_reconnect)
    }

    /// Whether an actor in this state would park at once (see [`Schedule::is_idle`]).
    pub fn is_idle(&self, now: DateTime<Utc>, hibernate_after: std::time::Duration) -> bool {
        self.schedule
            .is_idle(self.needs_reconnect, now, hibernate_after)
    }
}

/// How a refresh job ended; sent back to the actor that started it.
#[derive(Debug)]
pub enum RefreshOutcome {
    /// Saved; with the grant's new end when Google's answer carried one.
    Refreshed(TokenChange, Option<DateTime<Utc>>),
    /// Network, timeout, 5xx, or the database was unavailable: retry with backoff.
    Transient(String),
    /// Google refused for a reason that is not the user's (e.g. `invalid_client`).
    Rejected(String),
    /// The grant is gone; tokens were cleared and the user must reconnect.
    /// The grant is over (Google revoked it, or a time-limited grant ended): the tokens are
    /// cleared and the user must reconnect, for this reason.
    Revoked(ReconnectReason),
    /// A newer change won the race; here is the row as it is now (`None`: not connected).
    Superseded(Option<ActorStart>),
    /// Not this node's to do now: the lease is elsewhere, or not known valid (see
    /// [`NotActing`](crate::cluster::NotActing)). Nothing was written.
    NotHere(crate::cluster::NotActing),
}

impl RefreshOutcome {
    /// Short name for spans and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Refreshed(..) => "ok",
            Self::Transient(_) => "transient",
            Self::Rejected(_) => "rejected",
            Self::Revoked(_) => "revoked",
            Self::Superseded(_) => "superseded",
            Self::NotHere(_) => "not_owner",
        }
    }

    /// The error of a failed attempt, if it has one to tell.
    pub fn error(&self) -> Option<&str> {
        match self {
            Self::Transient(e) | Self::Rejected(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the attempt failed (a superseded one did not: newer tokens won).
    pub fn failed(&self) -> bool {
        matches!(
            self,
            Self::Transient(_) | Self::Rejected(_) | Self::Revoked(_)
        )
    }
}

/// How a job for a time-limited grant's warning or end ended.
#[derive(Debug)]
pub enum DeadlineOutcome {
    /// The grant ended: the tokens are cleared and the user needs a reconnect.
    Expired(TokenChange),
    /// The app's warning is stored (or was already).
    Warned,
    /// The row changed meanwhile (a reconnect, or a refresh answer that moved the end): start
    /// again from it; `None` when the user is gone.
    Superseded(Option<ActorStart>),
    /// Not done now (the database, or the lease being renewed): look again soon.
    Later(String),
    /// Another node owns the user now.
    NotHere(NotActing),
}

/// Messages of one user's token actor.
pub enum UserTokenMsg {
    /// New tokens were saved for this user (a consent completed): the row as saved.
    TokensChanged(ActorStart),
    /// The grant's warning or end may be due (the timer armed for it fired).
    Deadline,
    /// A job run for the grant's warning or end finished.
    DeadlineFinished(DeadlineOutcome),
    /// Refresh the access token now.
    Refresh(RefreshReason),
    /// A refresh job finished.
    RefreshFinished(RefreshOutcome),
    /// Report state for the admin API.
    Info(RpcReplyPort<ActorInfo>),
    /// Fault injection for supervision tests: the handler panics.
    #[cfg(feature = "test-util")]
    Crash,
    /// The supervisor accepts the actor's offer to hibernate: the actor answers its parked
    /// state if it is still idle (and is then stopped), or `None` if work came in meanwhile.
    ConfirmPark(RpcReplyPort<Option<Parked>>),
}

/// Messages of the root supervisor.
pub enum SupervisorMsg {
    /// A consent completed and the tokens are saved: update the user's live actor, or take the
    /// user in (parked if its refresh is far away, else live).
    UserConnected { start: ActorStart },
    /// The user disconnected: stop the actor.
    UserDisconnected { user_id: UserId },
    /// Park a page of users loaded from the database, for the wake schedule to start their
    /// actors; replies when done.
    Adopt(Vec<ActorStart>, RpcReplyPort<()>),
    /// Take one user in again from a freshly loaded row after a crash (as a connect does).
    AdoptOne { start: ActorStart },
    /// The initial load finished.
    Loaded,
    /// A cluster renewal gained these shards: load their users (parked). `initial`: the
    /// node's first claim, after which it is ready.
    ShardsGained { shards: Vec<Shard>, initial: bool },
    /// A cluster renewal lost these shards: drop their users.
    ShardsLost(Vec<Shard>),
    /// An idle actor offers to park its state and stop.
    Hibernate { actor: ractor::ActorId },
    /// The wake schedule's timer fired.
    WakeDue,
    /// A crashed actor's backoff ran out: reload its row and start it again.
    Respawn { user_id: UserId },
    /// Forward a message to one user's actor; replies whether the actor exists.
    Forward {
        user_id: UserId,
        message: UserTokenMsg,
        reply: RpcReplyPort<bool>,
    },
    /// One user's registry entry.
    Get {
        user_id: UserId,
        reply: RpcReplyPort<Option<ActorEntry>>,
    },
    /// A page of actors ordered by user id, after the cursor.
    List {
        after: Option<String>,
        limit: usize,
        reply: RpcReplyPort<ActorPage>,
    },
}

/// A page of actors as the supervisor knows them; the caller asks each for its info.
pub struct ActorPage {
    pub entries: Vec<ActorEntry>,
    pub total: usize,
}

/// One user in the supervisor's registry.
pub enum ActorEntry {
    /// A live actor, to be asked for its info.
    Live(ractor::ActorRef<UserTokenMsg>),
    /// Parked or restarting: answered by the supervisor, no actor asked.
    Known(ActorView),
}
