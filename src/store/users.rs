//! Queries on `users`. Every token change bumps `token_version` and marks the sync pending in
//! the same statement, so the durable sync state can never lag behind the tokens. Writes that
//! follow a read are conditional on the version read, which turns a lost update into a visible
//! "superseded" answer.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, TransactionTrait, sea_query::Expr};
use secrecy::{ExposeSecret, SecretString};

use crate::{ids::TokenVersion, token_ids::RefreshTokenIds};

use super::{
    AppEvent, AppEventType, Store, StoreError,
    batch::{self, RefreshedRow, Write},
    cluster::Fence,
    entity::user::{self, SyncState},
};

/// Tokens from a code exchange, ready to be saved.
pub struct NewTokens {
    pub access_token: SecretString,
    /// `None` when Google sent none; the stored one is kept.
    pub refresh_token: Option<SecretString>,
    pub expires_at: DateTime<Utc>,
    pub scope: String,
    pub email: Option<String>,
    /// When this grant ends (Google's `refresh_token_expires_in`); `None` is ongoing access,
    /// which clears an end stored for an earlier grant.
    pub authorization_expires_at: Option<DateTime<Utc>>,
    /// The Google account's id (userinfo's `sub`); `None` keeps the one known.
    pub google_sub: Option<String>,
}

/// Tokens as they are now, decrypted, for a push to the microservice.
pub struct StoredTokens {
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    pub token_expiry: DateTime<Utc>,
    pub scope: String,
}

/// The result of a token write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenChange {
    pub version: TokenVersion,
    pub token_expiry: Option<DateTime<Utc>>,
}

/// What a refresh-path write expects of the row: its version as read, and the writer's lease
/// of the row's shard (the fence; `None` on a single node).
#[derive(Debug, Clone)]
pub struct Expected {
    pub version: TokenVersion,
    pub fence: Option<Fence>,
}

/// What a refresh's answer brings to save.
pub struct RefreshAnswer<'a> {
    pub access_token: &'a SecretString,
    /// A rotated refresh token; `None` keeps the stored one.
    pub rotated_refresh_token: Option<&'a SecretString>,
    pub expires_at: DateTime<Utc>,
    /// `None` keeps the stored scope.
    pub scope: Option<&'a str>,
    /// The grant's new end; `None` keeps the stored one.
    pub authorization_end: Option<DateTime<Utc>>,
    /// The identifiers of the refresh token held after the refresh (the rotated one, else
    /// the one used), for security events to match; `None` keeps the stored ones.
    pub token_ids: Option<RefreshTokenIds>,
}

/// What a refresh needs.
pub struct RefreshCredentials {
    pub refresh_token: SecretString,
    pub version: TokenVersion,
    /// When the grant ends, if it is time-limited: no refresh may be asked at or after it.
    pub authorization_expires_at: Option<DateTime<Utc>>,
    /// Whether the refresh token's identifiers are stored (rows from before they were kept
    /// have none until a refresh writes them).
    pub token_ids_stored: bool,
}

/// What the microservice should hold for a user at `version`.
pub enum SyncSnapshot {
    Connected {
        version: TokenVersion,
        tokens: StoredTokens,
    },
    Disconnected {
        version: TokenVersion,
    },
}

impl SyncSnapshot {
    pub fn version(&self) -> TokenVersion {
        match self {
            Self::Connected { version, .. } | Self::Disconnected { version } => *version,
        }
    }
}

/// Bounded retries of an optimistic write that lost a race.
pub(super) const WRITE_ATTEMPTS: usize = 5;

pub(super) fn access_context(user_id: &str) -> String {
    format!("google_access_token:{user_id}")
}

pub(super) fn refresh_context(user_id: &str) -> String {
    format!("google_refresh_token:{user_id}")
}

impl Store {
    /// The refresh token of a connected user, with the version it belongs to.
    #[tracing::instrument(name = "db.read_refresh_token", skip_all, fields(user.id = %user_id))]
    pub async fn refresh_credentials(
        &self,
        user_id: &str,
    ) -> Result<Option<RefreshCredentials>, StoreError> {
        let Some(row) = self.user(user_id).await? else {
            return Ok(None);
        };
        let Some(sealed) = row
            .google_refresh_token
            .filter(|_| row.google_calendar_connected)
        else {
            return Ok(None);
        };
        Ok(Some(RefreshCredentials {
            refresh_token: self.cipher.decrypt(&sealed, &refresh_context(user_id))?,
            version: row.token_version,
            authorization_expires_at: row.authorization_expires_at,
            token_ids_stored: row.refresh_token_hash.is_some()
                && row.refresh_token_prefix_hash.is_some(),
        }))
    }

    /// Saves a refresh's answer if the row is still at `expected_version`; `None` means a
    /// newer change (a reconnect, a disconnect) got there first and this answer is void.
    #[tracing::instrument(name = "db.save_refreshed", skip_all, fields(user.id = %user_id))]
    pub async fn save_refreshed(
        &self,
        user_id: &str,
        expected: Expected,
        answer: RefreshAnswer<'_>,
    ) -> Result<Option<TokenChange>, StoreError> {
        let RefreshAnswer {
            access_token,
            rotated_refresh_token,
            expires_at,
            scope,
            authorization_end,
            token_ids,
        } = answer;
        let Expected {
            version: expected_version,
            fence,
        } = expected;
        let now = crate::clock::now();
        let row = RefreshedRow {
            user_id: user_id.into(),
            expected_version,
            access: self
                .cipher
                .encrypt(access_token.expose_secret(), &access_context(user_id)),
            rotated_refresh: rotated_refresh_token.map(|rotated| {
                self.cipher
                    .encrypt(rotated.expose_secret(), &refresh_context(user_id))
            }),
            expires_at,
            scope: scope.map(str::to_string),
            authorization_end,
            token_ids,
            now,
            fence,
        };
        let saved = self
            .writes
            .call(Write::Refreshed(row))
            .await
            .unwrap_or_else(|| Err(batch::lost()))?;
        Ok(saved.then_some(TokenChange {
            version: expected_version.next(),
            token_expiry: Some(expires_at),
        }))
    }

    /// The user disconnects: clear the tokens and queue the deletion at the microservice.
    /// Returns `None` if the user was not connected, else the refresh token that was stored
    /// (for revocation at Google), or `Some(None)` when there is none to revoke: none stored,
    /// or one that no configured key opens (logged, the disconnect goes on without it).
    #[tracing::instrument(name = "db.disconnect", skip_all, fields(user.id = %user_id))]
    pub async fn disconnect(
        &self,
        user_id: &str,
    ) -> Result<Option<Option<SecretString>>, StoreError> {
        for _ in 0..WRITE_ATTEMPTS {
            let Some(row) = self.user(user_id).await? else {
                return Ok(None);
            };
            if !row.google_calendar_connected {
                return Ok(None);
            }
            // Opened before the row is cleared, and a failure is not an error: failing after
            // the clear would leave the disconnect half done (the caller would answer 500
            // before stopping the actor and deleting the microservice's copy, and a retry
            // would find nothing connected).
            let revocable = row
                .google_refresh_token
                .as_deref()
                .map(|sealed| self.cipher.decrypt(sealed, &refresh_context(user_id)));
            // A disconnected user has no grant: no reason to reconnect, no end to wait for.
            let update = cleared(user::Entity::update_many())
                .col_expr(user::Column::NeedsReconnect, Expr::value(false))
                .col_expr(
                    user::Column::ReconnectReason,
                    Expr::value(Option::<String>::None),
                )
                .col_expr(
                    user::Column::AuthorizationExpiresAt,
                    Expr::value(Option::<DateTime<Utc>>::None),
                )
                .col_expr(user::Column::AuthorizationWarned, Expr::value(false));
            let now = crate::clock::now();
            let update = with_pending_sync(update, row.token_version.next(), now)
                .filter(user::Column::UserId.eq(user_id))
                .filter(user::Column::TokenVersion.eq(row.token_version));
            // The app's event is written by the same transaction (docs/contract.md section 9).
            let txn = self.db.begin().await?;
            if update.exec(&txn).await?.rows_affected == 1 {
                let mut event = AppEvent::new(AppEventType::Disconnected, user_id, now);
                event.google_email = row.google_email.clone();
                self.commit_with_event(txn, &event, now).await?;
                return Ok(Some(revocable.and_then(|opened| {
                    opened
                        .inspect_err(|e| {
                            tracing::warn!(
                                userId = %user_id,
                                error = %e,
                                "stored refresh token cannot be decrypted, so it cannot be \
                                 revoked at Google; disconnecting without revocation"
                            );
                        })
                        .ok()
                })));
            }
        }
        Err(StoreError::Contended)
    }

    /// What the microservice should hold for this user right now; `None` if no row.
    #[tracing::instrument(name = "db.read_tokens", skip_all, fields(user.id = %user_id))]
    pub async fn sync_snapshot(&self, user_id: &str) -> Result<Option<SyncSnapshot>, StoreError> {
        let Some(row) = self.user(user_id).await? else {
            return Ok(None);
        };
        let version = row.token_version;
        let tokens = match (
            row.google_calendar_connected,
            row.google_access_token,
            row.google_refresh_token,
            row.google_token_expiry,
        ) {
            (true, Some(access), Some(refresh), Some(expiry)) => StoredTokens {
                access_token: self.cipher.decrypt(&access, &access_context(user_id))?,
                refresh_token: self.cipher.decrypt(&refresh, &refresh_context(user_id))?,
                token_expiry: expiry,
                scope: row.google_scope.unwrap_or_default(),
            },
            _ => return Ok(Some(SyncSnapshot::Disconnected { version })),
        };
        Ok(Some(SyncSnapshot::Connected { version, tokens }))
    }
}

/// Adds the columns every token change sets: the new version and a fresh pending sync.
pub(super) fn with_pending_sync(
    update: sea_orm::UpdateMany<user::Entity>,
    version: TokenVersion,
    now: DateTime<Utc>,
) -> sea_orm::UpdateMany<user::Entity> {
    update
        .col_expr(user::Column::TokenVersion, Expr::value(version))
        .col_expr(user::Column::SyncState, Expr::value(SyncState::Pending))
        .col_expr(user::Column::SyncAttempts, Expr::value(0))
        .col_expr(
            user::Column::SyncLastError,
            Expr::value(Option::<String>::None),
        )
        .col_expr(user::Column::UpdatedAt, Expr::value(now))
}

/// Adds the columns that forget a connection's tokens.
pub(super) fn cleared(
    update: sea_orm::UpdateMany<user::Entity>,
) -> sea_orm::UpdateMany<user::Entity> {
    update
        .col_expr(
            user::Column::GoogleAccessToken,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            user::Column::GoogleRefreshToken,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            user::Column::GoogleTokenExpiry,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(user::Column::GoogleCalendarConnected, Expr::value(false))
}
