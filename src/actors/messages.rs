//! Messages of the supervisor and of the user token actors, and the plain data they carry.
//! Nothing outside `actors` sees an actor's state: it sends these and reads the replies.

use chrono::{DateTime, Utc};
use ractor::RpcReplyPort;
use serde::Serialize;

use crate::store::{ActorSeed, TokenChange};

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

/// Where a user actor stands (CONTRACT section 4).
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
    pub user_id: String,
    pub status: ActorStatus,
    pub token_expiry: Option<DateTime<Utc>>,
    pub next_refresh_at: Option<DateTime<Utc>>,
    pub last_refresh_at: Option<DateTime<Utc>>,
    pub refresh_count: i64,
    pub restarts: u32,
}

/// A hibernating user's state: what the actor needs to resume, in a compact form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub token_expiry: Option<DateTime<Utc>>,
    /// The refresh the actor had planned (jitter included), kept so waking does not move it.
    pub next_refresh_at: Option<DateTime<Utc>>,
    pub last_refresh_at: Option<DateTime<Utc>>,
    pub version: i64,
    pub refresh_count: i64,
    pub restarts: u32,
    pub needs_reconnect: bool,
    /// Failed refreshes in a row: a user parked while it waits to retry resumes its backoff
    /// where it was when woken.
    pub failures: u32,
}

impl Parked {
    pub fn from_seed(seed: &ActorSeed, restarts: u32, planned: Option<DateTime<Utc>>) -> Self {
        Self {
            token_expiry: seed.token_expiry,
            next_refresh_at: planned.filter(|_| !seed.needs_reconnect),
            last_refresh_at: seed.last_refresh_at,
            version: seed.version,
            refresh_count: seed.refresh_count,
            restarts,
            needs_reconnect: seed.needs_reconnect,
            failures: 0,
        }
    }

    pub fn seed(&self, user_id: &str) -> ActorSeed {
        ActorSeed {
            user_id: user_id.to_string(),
            token_expiry: self.token_expiry,
            needs_reconnect: self.needs_reconnect,
            version: self.version,
            refresh_count: self.refresh_count,
            last_refresh_at: self.last_refresh_at,
        }
    }

    pub fn status(&self) -> ActorStatus {
        if self.needs_reconnect {
            ActorStatus::NeedsReconnect
        } else {
            ActorStatus::Hibernating
        }
    }

    pub fn info(&self, user_id: &str) -> ActorInfo {
        ActorInfo {
            user_id: user_id.to_string(),
            status: self.status(),
            token_expiry: self.token_expiry,
            next_refresh_at: self.next_refresh_at,
            last_refresh_at: self.last_refresh_at,
            refresh_count: self.refresh_count,
            restarts: self.restarts,
        }
    }
}

/// How a refresh job ended; sent back to the actor that started it.
#[derive(Debug)]
pub enum RefreshOutcome {
    Refreshed(TokenChange),
    /// Network, timeout, 5xx, or the database was unavailable: retry with backoff.
    Transient(String),
    /// Google refused for a reason that is not the user's (e.g. `invalid_client`).
    Rejected(String),
    /// The grant is gone; tokens were cleared and the user must reconnect.
    Revoked,
    /// A newer change won the race; here is the row as it is now (`None`: not connected).
    Superseded(Option<ActorSeed>),
}

impl RefreshOutcome {
    /// Short name for spans and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Refreshed(_) => "ok",
            Self::Transient(_) => "transient",
            Self::Rejected(_) => "rejected",
            Self::Revoked => "revoked",
            Self::Superseded(_) => "superseded",
        }
    }
}

/// Messages of one user's token actor.
pub enum UserTokenMsg {
    /// New tokens were saved for this user (a consent completed).
    TokensChanged(TokenChange),
    /// Refresh the access token now.
    Refresh(RefreshReason),
    /// A refresh job finished.
    RefreshFinished(RefreshOutcome),
    /// Report state for the admin API.
    Info(RpcReplyPort<ActorInfo>),
    /// Fault injection for supervision tests: the handler panics.
    Crash,
    /// The supervisor accepts the actor's offer to hibernate: the actor answers its parked
    /// state if it is still idle (and is then stopped), or `None` if work came in meanwhile.
    ConfirmPark(RpcReplyPort<Option<Parked>>),
}

/// Messages of the root supervisor.
pub enum SupervisorMsg {
    /// A consent completed and the tokens are saved: run (or update) the user's actor.
    UserConnected { seed: ActorSeed },
    /// The user disconnected: stop the actor.
    UserDisconnected { user_id: String },
    /// Park a page of users loaded from the database, for the wake schedule to start their
    /// actors; replies when done.
    Adopt(Vec<ActorSeed>, RpcReplyPort<()>),
    /// Start (or restart) one user's actor from a freshly loaded row.
    AdoptOne { seed: ActorSeed },
    /// The initial load finished.
    Loaded,
    /// An idle actor offers to park its state and stop.
    Hibernate { actor: ractor::ActorId },
    /// The wake schedule's timer fired.
    WakeDue,
    /// A crashed actor's backoff ran out: reload its row and start it again.
    Respawn { user_id: String },
    /// Forward a message to one user's actor; replies whether the actor exists.
    Forward {
        user_id: String,
        message: UserTokenMsg,
        reply: RpcReplyPort<bool>,
    },
    /// One user's registry entry.
    Get {
        user_id: String,
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
    Live(ractor::ActorRef<UserTokenMsg>),
    /// Hibernating: answered from the parked state, no actor asked.
    Parked {
        user_id: String,
        parked: Parked,
    },
    /// Crashed and waiting out its restart backoff.
    Restarting {
        user_id: String,
        restarts: u32,
    },
}
