//! The outbox of events to the app (docs/contract.md section 9, docs/app-events.md: Events to the app): what an
//! event is ([`AppEvent`]), the handle that says whether events are on and wakes their
//! deliverer ([`AppEvents`]), and every query on `app_events`. An event is inserted in the same
//! transaction as the change of the user's connection that causes it
//! ([`Store::insert_app_event`]), so a crash delays it but never loses it; the deliverer
//! (`crate::events`) reads the due ones and records each attempt here.
//!
//! Delivered rows stay until 72 hours after their delivery, so the console of any node shows a
//! user's recent events, delivered or not; undelivered ones are dropped 72 hours after they
//! were stored. Must not touch: HTTP, the `users` table, or when an event is due to whom
//! (callers build the events; the deliverer decides what to send).

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Select,
    sea_query::{Expr, ExprTrait, Query},
};
use tokio::sync::Notify;

use super::{
    Store, StoreError,
    entity::app_event::{self, Column as C},
};
use crate::ids::{Shard, UserId};

/// How long an event is kept: an undelivered one is dropped at this age (counted and logged
/// by the deliverer), a delivered one is forgotten this long after its delivery.
pub const APP_EVENT_MAX_AGE: Duration = Duration::from_secs(72 * 3600);

/// `last_error` is cut to this many characters: enough to read, bounded on disk.
const LAST_ERROR_CHARS: usize = 500;

/// What happened to a user's connection, as the app receives it in `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppEventType {
    /// A callback stored a grant (a first connect or a reconnect).
    Connected,
    /// The grant ended; the event carries the reason.
    NeedsReconnect,
    /// The user or an operator disconnected.
    Disconnected,
    /// A time-limited grant nears its end.
    AuthorizationExpiring,
}

impl AppEventType {
    pub const ALL: [Self; 4] = [
        Self::Connected,
        Self::NeedsReconnect,
        Self::Disconnected,
        Self::AuthorizationExpiring,
    ];

    /// The wire string (also the stored one and the metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connection.connected",
            Self::NeedsReconnect => "connection.needs_reconnect",
            Self::Disconnected => "connection.disconnected",
            Self::AuthorizationExpiring => "connection.authorization_expiring",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == value)
    }
}

/// Why a user must reconnect: the `reason` of a `connection.needs_reconnect` (stored with
/// the user's row too).
pub use super::entity::user::ReconnectReason;

/// One event to the app, before it is stored. Never a token value: these fields are all the
/// app receives besides the event's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppEvent {
    pub event_type: AppEventType,
    pub user_id: UserId,
    pub occurred_at: DateTime<Utc>,
    /// The account's address, where known.
    pub google_email: Option<String>,
    /// Set on `NeedsReconnect` only.
    pub reason: Option<ReconnectReason>,
    /// The end of a time-limited grant, where there is one.
    pub authorization_expires_at: Option<DateTime<Utc>>,
}

impl AppEvent {
    /// An event with the three optional fields `null`; set those that apply.
    pub fn new(event_type: AppEventType, user_id: &str, occurred_at: DateTime<Utc>) -> Self {
        Self {
            event_type,
            user_id: user_id.into(),
            occurred_at,
            google_email: None,
            reason: None,
            authorization_expires_at: None,
        }
    }
}

/// An event as stored: pending (`delivered_at` is `None`) or delivered.
pub type StoredAppEvent = app_event::Model;

impl app_event::Model {
    /// The event's type, if this version of the service knows it (a newer one may have
    /// written the row; it is delivered as written all the same).
    pub fn kind(&self) -> Option<AppEventType> {
        AppEventType::parse(&self.event_type)
    }
}

/// Whether events are on (`APP_EVENTS_URL` set) and the deliverer's wake-up call; cheap to
/// clone, every clone shares both.
#[derive(Clone, Debug)]
pub struct AppEvents {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    enabled: bool,
    wake: Notify,
}

impl AppEvents {
    pub fn new(enabled: bool) -> Self {
        Self {
            inner: Arc::new(Shared {
                enabled,
                wake: Notify::new(),
            }),
        }
    }

    /// Whether events are stored and sent; when not, every insert stores nothing.
    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    /// Tells the deliverer an event was committed, so it goes out now rather than at the next
    /// poll. Call it after the commit: a wake before it may find nothing yet. A wake while the
    /// deliverer is busy is kept for its next wait.
    pub fn wake(&self) {
        if self.inner.enabled {
            self.inner.wake.notify_one();
        }
    }

    /// Resolves at the next [`Self::wake`] (or at once if one came since the last wait).
    pub async fn woken(&self) {
        self.inner.wake.notified().await;
    }
}

impl Default for AppEvents {
    /// Off.
    fn default() -> Self {
        Self::new(false)
    }
}

impl Store {
    /// This store with events on or off (`APP_EVENTS_URL` set or not); off by default.
    pub fn with_app_events(mut self, enabled: bool) -> Self {
        self.app_events = AppEvents::new(enabled);
        self
    }

    /// Whether events are on, and the deliverer's wake-up call.
    pub fn app_events(&self) -> &AppEvents {
        &self.app_events
    }

    /// Stores `event` through `conn`, a transaction of the change that causes it, so both are
    /// committed or neither; answers whether it was stored (not when events are off). Call it
    /// after the statement that writes the user's row: that write's row lock orders two
    /// concurrent changes of one user, and so the ids of their events. Wake the deliverer
    /// ([`AppEvents::wake`]) after the commit.
    pub async fn insert_app_event<C: ConnectionTrait>(
        &self,
        conn: &C,
        event: &AppEvent,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        if !self.app_events.enabled() {
            return Ok(false);
        }
        insert(conn, event, self.shard_of(&event.user_id), now).await?;
        Ok(true)
    }

    /// Stores `event` through `txn`, the transaction of the change that causes it, commits
    /// both, then wakes the deliverer if the event was stored.
    pub async fn commit_with_event(
        &self,
        txn: sea_orm::DatabaseTransaction,
        event: &AppEvent,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let stored = self.insert_app_event(&txn, event, now).await?;
        txn.commit().await?;
        if stored {
            self.app_events.wake();
        }
        Ok(())
    }

    /// Stores `event` on its own (no change in the same write) and wakes the deliverer;
    /// answers whether it was stored (not when events are off).
    pub async fn record_app_event(&self, event: &AppEvent) -> Result<bool, StoreError> {
        let stored = self
            .insert_app_event(&self.db, event, crate::clock::now())
            .await?;
        if stored {
            self.app_events.wake();
        }
        Ok(stored)
    }

    /// Up to `limit` events due at `now`, each the first undelivered event of its user (the
    /// next one waits until it is delivered or dropped), soonest due first; only of `shards`
    /// when given (a cluster node's own).
    pub async fn due_app_events(
        &self,
        now: DateTime<Utc>,
        shards: Option<&[Shard]>,
        limit: u64,
    ) -> Result<Vec<StoredAppEvent>, StoreError> {
        if shards.is_some_and(<[Shard]>::is_empty) {
            return Ok(Vec::new());
        }
        Ok(heads(shards)
            .filter(C::NextAttemptAt.lte(now))
            .order_by_asc(C::NextAttemptAt)
            .order_by_asc(C::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// When the soonest of the first undelivered events of `shards`' users (all users when
    /// `None`) is due; `None` when nothing is pending.
    pub async fn next_app_event_due(
        &self,
        shards: Option<&[Shard]>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        if shards.is_some_and(<[Shard]>::is_empty) {
            return Ok(None);
        }
        Ok(heads(shards)
            .select_only()
            .column(C::NextAttemptAt)
            .order_by_asc(C::NextAttemptAt)
            .limit(1)
            .into_tuple::<DateTime<Utc>>()
            .one(&self.db)
            .await?)
    }

    /// The app answered `2xx` to event `id`.
    pub async fn app_event_delivered(&self, id: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
        app_event::Entity::update_many()
            .col_expr(C::DeliveredAt, Expr::value(now))
            .filter(C::Id.eq(id))
            .filter(C::DeliveredAt.is_null())
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// An attempt at `event` failed: count it, keep the error (cut short) and try again at
    /// `next_attempt_at`. The user's later events are moved to that time too, so that while
    /// the first one waits they are not read again and again only to be found blocked.
    pub async fn app_event_failed(
        &self,
        event: &StoredAppEvent,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), StoreError> {
        let error: String = error.chars().take(LAST_ERROR_CHARS).collect();
        app_event::Entity::update_many()
            .col_expr(C::Attempts, Expr::col(C::Attempts).add(1))
            .col_expr(C::NextAttemptAt, Expr::value(next_attempt_at))
            .col_expr(C::LastError, Expr::value(Some(error)))
            .filter(C::Id.eq(event.id))
            .filter(C::DeliveredAt.is_null())
            .exec(&self.db)
            .await?;
        app_event::Entity::update_many()
            .col_expr(C::NextAttemptAt, Expr::value(next_attempt_at))
            .filter(C::UserId.eq(event.user_id.as_str()))
            .filter(C::Id.gt(event.id))
            .filter(C::DeliveredAt.is_null())
            .filter(C::NextAttemptAt.lt(next_attempt_at))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Drops up to `limit` undelivered events of `shards` (all when `None`) stored more than
    /// [`APP_EVENT_MAX_AGE`] before `now` and returns them (to be logged and counted), and
    /// forgets the delivered ones delivered that long ago.
    pub async fn expire_app_events(
        &self,
        now: DateTime<Utc>,
        shards: Option<&[Shard]>,
        limit: u64,
    ) -> Result<Vec<StoredAppEvent>, StoreError> {
        if shards.is_some_and(<[Shard]>::is_empty) {
            return Ok(Vec::new());
        }
        let cutoff = now - APP_EVENT_MAX_AGE;
        let expired = in_shards(app_event::Entity::find(), shards)
            .filter(C::DeliveredAt.is_null())
            .filter(C::CreatedAt.lt(cutoff))
            .order_by_asc(C::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        if !expired.is_empty() {
            app_event::Entity::delete_many()
                .filter(C::Id.is_in(expired.iter().map(|e| e.id)))
                .filter(C::DeliveredAt.is_null())
                .exec(&self.db)
                .await?;
        }
        let mut forget = app_event::Entity::delete_many().filter(C::DeliveredAt.lt(cutoff));
        if let Some(shards) = shards {
            forget = forget.filter(C::Shard.is_in(shards.iter().copied()));
        }
        forget.exec(&self.db).await?;
        Ok(expired)
    }

    /// How many events of `shards` (all when `None`) are not delivered yet.
    pub async fn pending_app_events(&self, shards: Option<&[Shard]>) -> Result<u64, StoreError> {
        if shards.is_some_and(<[Shard]>::is_empty) {
            return Ok(0);
        }
        Ok(in_shards(app_event::Entity::find(), shards)
            .filter(C::DeliveredAt.is_null())
            .count(&self.db)
            .await?)
    }

    /// `user_id`'s last `limit` events, pending and delivered, newest first (the console's).
    pub async fn recent_app_events(
        &self,
        user_id: &str,
        limit: u64,
    ) -> Result<Vec<StoredAppEvent>, StoreError> {
        Ok(app_event::Entity::find()
            .filter(C::UserId.eq(user_id))
            .order_by_desc(C::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }
}

/// Inserts `event` as a new pending row of `shard`, due at once. Callers check that events are
/// on ([`AppEvents::enabled`]); [`Store::insert_app_event`] does.
pub(super) async fn insert<C: ConnectionTrait>(
    conn: &C,
    event: &AppEvent,
    shard: Shard,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let row = app_event::ActiveModel {
        id: NotSet,
        event_id: Set(new_event_id()),
        user_id: Set(event.user_id.clone()),
        shard: Set(shard),
        event_type: Set(event.event_type.as_str().to_string()),
        occurred_at: Set(event.occurred_at),
        google_email: Set(event.google_email.clone()),
        reason: Set(event.reason.map(|r| r.as_str().to_string())),
        authorization_expires_at: Set(event.authorization_expires_at),
        attempts: Set(0),
        next_attempt_at: Set(now),
        last_error: Set(None),
        delivered_at: Set(None),
        created_at: Set(now),
    };
    app_event::Entity::insert(row)
        .exec_without_returning(conn)
        .await?;
    Ok(())
}

/// `msg_` and 128 random bits: the event's `webhook-id`, the same on every attempt.
fn new_event_id() -> String {
    format!("msg_{}", hex::encode(rand::random::<[u8; 16]>()))
}

/// Undelivered events that are the first undelivered event of their user, of `shards`.
fn heads(shards: Option<&[Shard]>) -> Select<app_event::Entity> {
    let earlier = Query::select()
        .expr(Expr::val(1))
        .from_as("app_events", "earlier")
        .and_where(Expr::col(("earlier", "user_id")).equals(("app_events", "user_id")))
        .and_where(Expr::col(("earlier", "delivered_at")).is_null())
        .and_where(Expr::col(("earlier", "id")).lt(Expr::col(("app_events", "id"))))
        .to_owned();
    in_shards(app_event::Entity::find(), shards)
        .filter(C::DeliveredAt.is_null())
        .filter(Expr::not_exists(earlier))
}

fn in_shards(
    query: Select<app_event::Entity>,
    shards: Option<&[Shard]>,
) -> Select<app_event::Entity> {
    match shards {
        Some(shards) => query.filter(C::Shard.is_in(shards.iter().copied())),
        None => query,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_round_trip() {
        let types: Vec<&str> = AppEventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            types,
            [
                "connection.connected",
                "connection.needs_reconnect",
                "connection.disconnected",
                "connection.authorization_expiring"
            ]
        );
        for t in AppEventType::ALL {
            assert_eq!(AppEventType::parse(t.as_str()), Some(t));
        }
        for r in ReconnectReason::ALL {
            assert_eq!(ReconnectReason::parse(r.as_str()), Some(r));
        }
        assert_eq!(AppEventType::parse("connection.other"), None);
    }

    #[test]
    fn event_ids_are_webhook_ids_and_differ() {
        let a = new_event_id();
        assert!(a.starts_with("msg_") && a.len() == 36, "{a}");
        assert_ne!(a, new_event_id());
    }

    #[tokio::test]
    async fn a_wake_before_the_wait_is_kept_and_off_wakes_nothing() {
        let on = AppEvents::new(true);
        on.wake();
        tokio::time::timeout(Duration::from_secs(1), on.woken())
            .await
            .expect("the wake was kept");
        let off = AppEvents::default();
        off.wake();
        let waited = tokio::time::timeout(Duration::from_millis(20), off.woken()).await;
        assert!(waited.is_err(), "off never wakes");
    }
}
