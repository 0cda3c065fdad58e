//! Queries on `oauth_states`: one-time, expiring records that bind a consent round-trip to
//! the user who started it.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use secrecy::{ExposeSecret, SecretString};

use super::{Store, StoreError, entity::oauth_state};
use crate::ids::UserId;

/// A state record that was just consumed.
pub struct TakenState {
    pub user_id: UserId,
    pub pkce_verifier: SecretString,
    /// Hash of the browser-binding cookie the round-trip must present; `None` if made
    /// while binding was off.
    pub browser_hash: Option<String>,
    pub expires_at: DateTime<Utc>,
}

pub(super) fn verifier_context(state: &str) -> String {
    format!("pkce_verifier:{state}")
}

impl Store {
    /// Records a new state with its PKCE verifier and the hash of its browser-binding cookie.
    #[tracing::instrument(name = "db.create_state", skip_all)]
    pub async fn create_oauth_state(
        &self,
        state: &str,
        user_id: &str,
        pkce_verifier: &SecretString,
        browser_hash: Option<String>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let model = oauth_state::ActiveModel {
            state: Set(state.to_string()),
            user_id: Set(user_id.into()),
            pkce_verifier: Set(self
                .cipher
                .encrypt(pkce_verifier.expose_secret(), &verifier_context(state))),
            browser_hash: Set(browser_hash),
            expires_at: Set(expires_at),
            created_at: Set(Utc::now()),
        };
        oauth_state::Entity::insert(model).exec(&self.db).await?;
        Ok(())
    }

    /// Consumes a state: only the one caller whose delete removed the row gets it, so a state
    /// can never be used twice, even by two racing callbacks. Expiry is the caller's check.
    ///
    /// Reads before it deletes. The callback is unauthenticated, so anyone can send invented
    /// states; a delete of one would still queue for the write lock (on SQLite the whole
    /// database's, held by the batched writer or another process's `rotate-key`, for up to the
    /// busy timeout) on the one pooled connection, and the service would serve nobody while it
    /// waits. A read of an absent key takes no lock in WAL mode, so an unknown state costs one
    /// index lookup and no write; a known one costs that read and its one delete.
    #[tracing::instrument(name = "db.take_state", skip_all)]
    pub async fn take_oauth_state(&self, state: &str) -> Result<Option<TakenState>, StoreError> {
        let Some(row) = oauth_state::Entity::find_by_id(state).one(&self.db).await? else {
            return Ok(None);
        };
        // The row never changes once made, so what was read is what the delete removes; of
        // two callbacks that both read it, only the one whose delete removed it goes on.
        let deleted = oauth_state::Entity::delete_by_id(state)
            .exec(&self.db)
            .await?
            .rows_affected;
        if deleted == 0 {
            return Ok(None);
        }
        Ok(Some(TakenState {
            pkce_verifier: self
                .cipher
                .decrypt(&row.pkce_verifier, &verifier_context(state))?,
            user_id: row.user_id,
            browser_hash: row.browser_hash,
            expires_at: row.expires_at,
        }))
    }

    /// Deletes states that expired before `now`; returns how many.
    pub async fn purge_expired_states(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let result = oauth_state::Entity::delete_many()
            .filter(oauth_state::Column::ExpiresAt.lt(now))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }
}
