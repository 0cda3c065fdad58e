//! Saving a completed consent (docs/contract.md section 3): the tokens of a first connect or a
//! reconnect, in one statement when Google sent a refresh token, else conditional on the version
//! read so the stored refresh token is kept. With app events on, the `connection.connected` event
//! is written in the same transaction (docs/contract.md section 9). Must not touch: the refresh
//! path.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, TransactionTrait, sea_query::Expr,
};
use secrecy::{ExposeSecret, SecretString};

use crate::{ids::TokenVersion, token_ids::RefreshTokenIds};

use super::{
    ActorStart, AppEvent, AppEventType, Store, StoreError,
    entity::user::{self, SyncState},
    users::{NewTokens, WRITE_ATTEMPTS, access_context, refresh_context, with_pending_sync},
};

impl Store {
    /// Saves the tokens of a completed consent (insert or update), keeping the stored refresh
    /// token when Google sent none. Fails with `NoRefreshToken` when there is none at all.
    /// Returns what the user's actor needs to (re)start.
    #[tracing::instrument(name = "db.save_connection", skip_all, fields(user.id = %user_id))]
    pub async fn save_connection(
        &self,
        user_id: &str,
        tokens: &NewTokens,
    ) -> Result<ActorStart, StoreError> {
        if let Some(refresh) = &tokens.refresh_token {
            return self.upsert_connection(user_id, tokens, refresh).await;
        }
        // Bounded: each round lost a race to another write of the same user.
        for _ in 0..WRITE_ATTEMPTS {
            if let Some(change) = self.try_save_connection(user_id, tokens).await? {
                return Ok(change);
            }
        }
        Err(StoreError::Contended)
    }

    /// A consent that brought a refresh token (Google sends one with every `prompt=consent`)
    /// is one atomic `INSERT ... ON CONFLICT DO UPDATE ... RETURNING`: a connect costs one
    /// statement here instead of a read and a write, and needs no version check, since nothing
    /// of the old row decides the new one but its version, bumped in the same statement.
    async fn upsert_connection(
        &self,
        user_id: &str,
        tokens: &NewTokens,
        refresh: &SecretString,
    ) -> Result<ActorStart, StoreError> {
        use sea_orm::sea_query::{ExprTrait, OnConflict};
        use user::Column as C;
        let ids = RefreshTokenIds::of(refresh.expose_secret());
        let refresh = self
            .cipher
            .encrypt(refresh.expose_secret(), &refresh_context(user_id));
        let row = self.new_connection_row(user_id, tokens, (refresh, ids), crate::clock::now());
        let on_conflict = OnConflict::column(C::UserId)
            .update_columns([
                C::GoogleAccessToken,
                C::GoogleRefreshToken,
                C::GoogleTokenExpiry,
                C::GoogleCalendarConnected,
                C::GoogleScope,
                C::NeedsReconnect,
                C::ReconnectReason,
                C::AuthorizationExpiresAt,
                C::AuthorizationWarned,
                C::RefreshTokenPrefixHash,
                C::RefreshTokenHash,
                C::SyncState,
                C::SyncAttempts,
                C::SyncLastError,
                C::UpdatedAt,
            ])
            .value(
                C::TokenVersion,
                Expr::col((user::Entity, C::TokenVersion)).add(1),
            )
            // A consent without the account (userinfo failed) keeps the one known.
            .value(
                C::GoogleSub,
                Expr::cust(r#"COALESCE("excluded"."google_sub", "users"."google_sub")"#),
            )
            .value(
                C::GoogleEmail,
                Expr::cust(r#"COALESCE("excluded"."google_email", "users"."google_email")"#),
            )
            .to_owned();
        let insert = user::Entity::insert(row).on_conflict(on_conflict);
        if !self.app_events().enabled() {
            return Ok(ActorStart::from(
                insert.exec_with_returning(&self.db).await?,
            ));
        }
        let txn = self.db.begin().await?;
        let saved = insert.exec_with_returning(&txn).await?;
        let event = connected_event(user_id, &saved);
        self.commit_with_event(txn, &event, saved.updated_at)
            .await?;
        Ok(ActorStart::from(saved))
    }

    /// The row of a first connection, its push pending; `refresh` is the sealed refresh token.
    pub(super) fn new_connection_row(
        &self,
        user_id: &str,
        tokens: &NewTokens,
        (refresh, ids): (String, RefreshTokenIds),
        now: DateTime<Utc>,
    ) -> user::ActiveModel {
        let access = self.cipher.encrypt(
            tokens.access_token.expose_secret(),
            &access_context(user_id),
        );
        user::ActiveModel {
            user_id: Set(user_id.into()),
            google_access_token: Set(Some(access)),
            google_refresh_token: Set(Some(refresh)),
            google_token_expiry: Set(Some(tokens.expires_at)),
            google_calendar_connected: Set(true),
            google_calendar_id: Set("primary".into()),
            google_email: Set(tokens.email.clone()),
            google_scope: Set(Some(tokens.scope.clone())),
            needs_reconnect: Set(false),
            reconnect_reason: Set(None),
            authorization_expires_at: Set(tokens.authorization_expires_at),
            authorization_warned: Set(false),
            google_sub: Set(tokens.google_sub.clone()),
            refresh_token_prefix_hash: Set(Some(ids.prefix_hash)),
            refresh_token_hash: Set(Some(ids.hash)),
            token_version: Set(TokenVersion::new(1)),
            sync_state: Set(SyncState::Pending),
            sync_attempts: Set(0),
            sync_last_error: Set(None),
            synced_version: Set(TokenVersion::NONE),
            synced_at: Set(None),
            last_refresh_at: Set(None),
            refresh_count: Set(0),
            shard: Set(self.shard_of(user_id)),
            created_at: Set(now),
            updated_at: Set(now),
        }
    }

    /// A consent without a refresh token keeps the stored one: read it, then write conditional
    /// on the version read.
    async fn try_save_connection(
        &self,
        user_id: &str,
        tokens: &NewTokens,
    ) -> Result<Option<ActorStart>, StoreError> {
        let now = crate::clock::now();
        let access = self.cipher.encrypt(
            tokens.access_token.expose_secret(),
            &access_context(user_id),
        );
        // No transaction on purpose: the write below is conditional on the version read, which
        // already makes read-then-write safe, and a read transaction that upgrades to a write
        // fails at once on SQLite (SQLITE_BUSY_SNAPSHOT) when another writer got in between.
        let existing = user::Entity::find_by_id(user_id).one(&self.db).await?;
        let Some((row, refresh)) =
            existing.and_then(|row| row.google_refresh_token.clone().map(|r| (row, r)))
        else {
            return Err(StoreError::NoRefreshToken);
        };
        let version = row.token_version.next();
        let mut update = user::Entity::update_many()
            .col_expr(user::Column::GoogleAccessToken, Expr::value(access))
            .col_expr(user::Column::GoogleRefreshToken, Expr::value(refresh))
            .col_expr(
                user::Column::GoogleTokenExpiry,
                Expr::value(tokens.expires_at),
            )
            .col_expr(user::Column::GoogleCalendarConnected, Expr::value(true))
            .col_expr(user::Column::GoogleScope, Expr::value(tokens.scope.clone()))
            .col_expr(user::Column::NeedsReconnect, Expr::value(false))
            .col_expr(
                user::Column::ReconnectReason,
                Expr::value(Option::<String>::None),
            )
            .col_expr(
                user::Column::AuthorizationExpiresAt,
                Expr::value(tokens.authorization_expires_at),
            )
            .col_expr(user::Column::AuthorizationWarned, Expr::value(false));
        if let Some(sub) = &tokens.google_sub {
            update = update.col_expr(user::Column::GoogleSub, Expr::value(sub.clone()));
        }
        if let Some(email) = &tokens.email {
            update = update.col_expr(user::Column::GoogleEmail, Expr::value(email.clone()));
        }
        let update = with_pending_sync(update, version, now)
            .filter(user::Column::UserId.eq(user_id))
            .filter(user::Column::TokenVersion.eq(row.token_version));
        let txn = self.db.begin().await?;
        let Some(saved) = update.exec_with_returning(&txn).await?.into_iter().next() else {
            return Ok(None);
        };
        let event = connected_event(user_id, &saved);
        self.commit_with_event(txn, &event, saved.updated_at)
            .await?;
        Ok(Some(ActorStart {
            user_id: user_id.into(),
            token_expiry: Some(tokens.expires_at),
            needs_reconnect: false,
            reconnect_reason: None,
            authorization_expires_at: tokens.authorization_expires_at,
            authorization_warned: false,
            version,
            refresh_count: row.refresh_count,
            last_refresh_at: row.last_refresh_at,
        }))
    }
}

/// `connection.connected` for the row a consent just saved.
fn connected_event(user_id: &str, saved: &user::Model) -> AppEvent {
    let mut event = AppEvent::new(AppEventType::Connected, user_id, saved.updated_at);
    event.google_email = saved.google_email.clone();
    event.authorization_expires_at = saved.authorization_expires_at;
    event
}
