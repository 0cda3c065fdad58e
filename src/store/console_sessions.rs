//! Queries on `console_sessions`: which console sessions are live. A session starts at sign-in
//! and ends at its expiry, at sign-out, or when an operator ends every session; every node
//! reads the same rows, so an ended session ends everywhere at once. Keys are SHA-256 hashes
//! of the session ids: the rows alone never make a usable cookie.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use sha2::{Digest, Sha256};

use super::{Store, StoreError, entity::console_session};

fn id_hash(session_id: &str) -> String {
    hex::encode(Sha256::digest(session_id.as_bytes()))
}

impl Store {
    /// Records a new session, and drops the ones that expired (the table stays as small as
    /// the number of live sessions).
    pub async fn start_console_session(
        &self,
        session_id: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        console_session::Entity::delete_many()
            .filter(console_session::Column::ExpiresAt.lte(now))
            .exec(&self.db)
            .await?;
        let model = console_session::ActiveModel {
            id_hash: Set(id_hash(session_id)),
            created_at: Set(now),
            expires_at: Set(expires_at),
        };
        console_session::Entity::insert(model)
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Whether the session is live at `now`: started, not ended, not expired.
    pub async fn console_session_live(
        &self,
        session_id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let found = console_session::Entity::find_by_id(id_hash(session_id))
            .filter(console_session::Column::ExpiresAt.gt(now))
            .select_only()
            .column(console_session::Column::IdHash)
            .into_tuple::<String>()
            .one(&self.db)
            .await?;
        Ok(found.is_some())
    }

    /// Ends one session (sign-out).
    pub async fn end_console_session(&self, session_id: &str) -> Result<(), StoreError> {
        console_session::Entity::delete_by_id(id_hash(session_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Ends every session; returns how many were live or expired-but-kept.
    pub async fn end_all_console_sessions(&self) -> Result<u64, StoreError> {
        let result = console_session::Entity::delete_many()
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }
}
