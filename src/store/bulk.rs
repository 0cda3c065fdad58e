//! Bulk operations for load tests and audits: seeding many connected users in one statement
//! per page, and reading every user's current state back for end-of-run checks. Not used by
//! the service's request paths.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use secrecy::{ExposeSecret, SecretString};

use crate::{
    ids::{TokenVersion, UserId},
    token_ids::RefreshTokenIds,
};

use super::{
    NewTokens, Store, StoreError,
    entity::{
        sync_ack,
        user::{self, SyncState},
    },
};

/// One user to seed, as a completed consent would have left it.
pub struct BulkUser {
    pub user_id: UserId,
    pub access_token: String,
    pub refresh_token: String,
    pub expires_at: DateTime<Utc>,
    pub scope: String,
}

/// One user's state, decrypted, for audits.
pub struct AuditRow {
    pub user_id: UserId,
    pub access_token: Option<String>,
    pub token_expiry: Option<DateTime<Utc>>,
    pub sync_state: SyncState,
    pub token_version: TokenVersion,
    pub synced_version: TokenVersion,
    pub refresh_count: i64,
}

impl Store {
    /// Inserts connected users in one statement, marked as already pushed at version 1 (the
    /// caller seeds the microservice with the same tokens), and their acknowledgements in
    /// another. `users.sync_state` is `pending`, as a refresh leaves it: the acknowledgement
    /// lives in `sync_acks` (so a load test starts from the steady state's rows).
    pub async fn insert_users(&self, users: &[BulkUser]) -> Result<(), StoreError> {
        if users.is_empty() {
            return Ok(());
        }
        let now = crate::clock::now();
        let models = users.iter().map(|u| {
            let tokens = NewTokens {
                access_token: SecretString::from(u.access_token.clone()),
                refresh_token: None,
                expires_at: u.expires_at,
                scope: u.scope.clone(),
                email: None,
                authorization_expires_at: None,
                google_sub: None,
            };
            // Sealed and identified as a consent leaves it, so a load test's first refreshes
            // do not write the (indexed) identifiers.
            let refresh = self
                .cipher
                .encrypt(&u.refresh_token, &super::users::refresh_context(&u.user_id));
            let ids = RefreshTokenIds::of(&u.refresh_token);
            let mut row = self.new_connection_row(&u.user_id, &tokens, (refresh, ids), now);
            row.synced_version = Set(TokenVersion::new(1));
            row.synced_at = Set(Some(now));
            row
        });
        user::Entity::insert_many(models).exec(&self.db).await?;
        let acks = users.iter().map(|u| sync_ack::ActiveModel {
            user_id: Set(u.user_id.clone()),
            synced_version: Set(TokenVersion::new(1)),
            synced_at: Set(Some(now)),
        });
        sync_ack::Entity::insert_many(acks).exec(&self.db).await?;
        Ok(())
    }

    /// A page of every user's state, ordered by user id, after `after`.
    pub async fn audit_page(
        &self,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let mut query = user::Entity::find()
            .order_by_asc(user::Column::UserId)
            .limit(limit);
        if let Some(after) = after {
            query = query.filter(user::Column::UserId.gt(after));
        }
        let rows = query.all(&self.db).await?;
        let ids: Vec<UserId> = rows.iter().map(|r| r.user_id.clone()).collect();
        let acks = self.acks_of(&ids).await?;
        rows.into_iter()
            .map(|row| {
                let access_token = match &row.google_access_token {
                    Some(sealed) => Some(
                        self.cipher
                            .decrypt(sealed, &super::users::access_context(&row.user_id))?
                            .expose_secret()
                            .to_string(),
                    ),
                    None => None,
                };
                let sync = super::SyncInfo::of(&row, acks.get(&row.user_id));
                Ok(AuditRow {
                    access_token,
                    token_expiry: row.google_token_expiry,
                    sync_state: sync.state,
                    token_version: row.token_version,
                    synced_version: sync.version,
                    refresh_count: row.refresh_count,
                    user_id: row.user_id,
                })
            })
            .collect()
    }
}
