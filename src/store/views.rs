//! Reads that hand out views of a user's row without its token columns: what status and
//! admin show, what an actor starts from. Only [`Store::user`] returns the raw row (ciphertext
//! included), for the store's own writes and for tests and tools; the other rooms of the
//! service take these views. Must not decrypt anything (that is `users`' job).

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect,
    sea_query::ExprTrait,
};

use super::{
    Store, StoreError, batch,
    entity::{
        sync_ack,
        user::{self, ReconnectReason, SyncState},
    },
};
use crate::ids::{Shard, TokenVersion, UserId};

/// What a user actor starts from: schedule data only, never token values.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct ActorStart {
    pub user_id: UserId,
    pub token_expiry: Option<DateTime<Utc>>,
    pub needs_reconnect: bool,
    /// Why, when `needs_reconnect`.
    pub reconnect_reason: Option<ReconnectReason>,
    /// When a time-limited grant ends.
    pub authorization_expires_at: Option<DateTime<Utc>>,
    /// Whether the app was already warned of that end.
    pub authorization_warned: bool,
    pub version: TokenVersion,
    pub refresh_count: i64,
    pub last_refresh_at: Option<DateTime<Utc>>,
}

impl From<user::Model> for ActorStart {
    fn from(row: user::Model) -> Self {
        Self {
            user_id: row.user_id,
            token_expiry: row.google_token_expiry,
            needs_reconnect: row.needs_reconnect,
            reconnect_reason: row.reconnect_reason,
            authorization_expires_at: row.authorization_expires_at,
            authorization_warned: row.authorization_warned,
            version: row.token_version,
            refresh_count: row.refresh_count,
            last_refresh_at: row.last_refresh_at,
        }
    }
}

/// Where a user's push stands, as status and admin show it: the `users` row's record merged
/// with the narrow acknowledgement of `sync_acks`.
#[derive(Debug, Clone, Default)]
pub struct SyncInfo {
    pub state: SyncState,
    pub synced_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// The version the microservice last acknowledged (0 for none).
    pub version: TokenVersion,
}

impl SyncInfo {
    /// In sync when the microservice acknowledged the row's current version; otherwise the
    /// outcome `users` recorded last (pending, failed, skipped, or none yet).
    pub fn of(row: &user::Model, ack: Option<&sync_ack::Model>) -> Self {
        match ack.filter(|a| {
            a.synced_version == row.token_version && a.synced_version > TokenVersion::NONE
        }) {
            Some(ack) => Self {
                state: SyncState::Synced,
                synced_at: ack.synced_at,
                attempts: 0,
                last_error: None,
                version: ack.synced_version,
            },
            None => Self {
                state: row.sync_state,
                synced_at: Ord::max(row.synced_at, ack.and_then(|a| a.synced_at)),
                attempts: row.sync_attempts,
                last_error: row.sync_last_error.clone(),
                version: Ord::max(
                    row.synced_version,
                    ack.map_or(TokenVersion::NONE, |a| a.synced_version),
                ),
            },
        }
    }
}

/// A user's connection as the status route shows it: no token values, no ciphertext.
#[derive(Debug, Clone)]
pub struct ConnectionStatus {
    pub connected: bool,
    pub google_email: Option<String>,
    pub calendar_id: String,
    pub token_expiry: Option<DateTime<Utc>>,
    pub scope: Option<String>,
    pub needs_reconnect: bool,
    /// Why the user must reconnect; `None` while connected.
    pub reconnect_reason: Option<ReconnectReason>,
    /// When a time-limited grant ends; `None` for ongoing access.
    pub authorization_expires_at: Option<DateTime<Utc>>,
    pub sync: SyncInfo,
}

impl ConnectionStatus {
    fn of(row: user::Model, ack: Option<&sync_ack::Model>) -> Self {
        Self {
            sync: SyncInfo::of(&row, ack),
            connected: row.google_calendar_connected,
            google_email: row.google_email,
            calendar_id: row.google_calendar_id,
            token_expiry: row.google_token_expiry,
            scope: row.google_scope,
            needs_reconnect: row.needs_reconnect,
            reconnect_reason: row.reconnect_reason.filter(|_| row.needs_reconnect),
            authorization_expires_at: row.authorization_expires_at,
        }
    }
}

impl Store {
    /// One user's row, if any, ciphertext columns included: for the store itself, tests and
    /// tools. The service's other rooms take the views below.
    pub async fn user(&self, user_id: &str) -> Result<Option<user::Model>, StoreError> {
        self.reads
            .call(user_id.into())
            .await
            .unwrap_or_else(|| Err(batch::lost()))
    }

    /// A user's connection as status shows it, if the user has a row.
    pub async fn connection_status(
        &self,
        user_id: &str,
    ) -> Result<Option<ConnectionStatus>, StoreError> {
        let Some(row) = self.user(user_id).await? else {
            return Ok(None);
        };
        let ack = self.acks_of(std::slice::from_ref(&row.user_id)).await?;
        Ok(Some(ConnectionStatus::of(row, ack.get(user_id))))
    }

    /// A page of users an actor should run for (connected, or waiting for a reconnect),
    /// ordered by user id, after `after`; only those of `shards` when given.
    pub async fn actor_starts(
        &self,
        after: Option<&str>,
        limit: u64,
        shards: Option<&[Shard]>,
    ) -> Result<Vec<ActorStart>, StoreError> {
        // Only the schedule columns: at a million users, decoding the token ciphertexts too
        // would double the load time for data the actors never hold.
        let mut query = user::Entity::find()
            .select_only()
            .columns([
                user::Column::UserId,
                user::Column::NeedsReconnect,
                user::Column::ReconnectReason,
                user::Column::AuthorizationExpiresAt,
                user::Column::AuthorizationWarned,
                user::Column::RefreshCount,
                user::Column::LastRefreshAt,
            ])
            .column_as(user::Column::GoogleTokenExpiry, "token_expiry")
            .column_as(user::Column::TokenVersion, "version")
            .filter(
                user::Column::GoogleCalendarConnected
                    .eq(true)
                    .or(user::Column::NeedsReconnect.eq(true)),
            )
            .order_by_asc(user::Column::UserId)
            .limit(limit);
        if let Some(after) = after {
            query = query.filter(user::Column::UserId.gt(after));
        }
        if let Some(shards) = shards {
            query = query.filter(user::Column::Shard.is_in(shards.iter().copied()));
        }
        Ok(query.into_model::<ActorStart>().all(&self.db).await?)
    }

    /// One user's actor start, if an actor should run for them.
    pub async fn actor_start(&self, user_id: &str) -> Result<Option<ActorStart>, StoreError> {
        Ok(self
            .user(user_id)
            .await?
            .filter(|row| row.google_calendar_connected || row.needs_reconnect)
            .map(ActorStart::from))
    }

    /// The sync state of each of `user_ids` that has a row.
    pub async fn sync_infos(
        &self,
        user_ids: &[UserId],
    ) -> Result<std::collections::HashMap<UserId, SyncInfo>, StoreError> {
        if user_ids.is_empty() {
            return Ok(Default::default());
        }
        let rows = user::Entity::find()
            .filter(user::Column::UserId.is_in(user_ids.iter().cloned()))
            .all(&self.db)
            .await?;
        let acks = self.acks_of(user_ids).await?;
        Ok(rows
            .iter()
            .map(|row| {
                let info = SyncInfo::of(row, acks.get(&row.user_id));
                (row.user_id.clone(), info)
            })
            .collect())
    }
}
