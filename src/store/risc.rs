//! Queries for Google's security events (docs/contract.md section 10): the record of each valid
//! event (one row per `jti`: the insert that wins is the one that acts, on any node), the users an
//! event's subject names (by account id, or by an identifier of their current refresh token), the
//! end of a grant for a security event (a front-door write: no lease, the version bump
//! supersedes any refresh in flight), and the pruning of records older than their keep.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, sea_query::OnConflict,
};

use super::{
    ActorStart, Store, StoreError,
    entity::{
        risc_event,
        user::{self, ReconnectReason},
    },
    users::WRITE_ATTEMPTS,
};

/// What names a user in a security event.
#[derive(Debug, Clone)]
pub enum RiscSubject {
    /// The Google account's id.
    Account(String),
    /// SHA-256 (hex) of a refresh token's 16-character prefix.
    TokenPrefixHash(String),
    /// A refresh token's double SHA-512, in the stored form.
    TokenHash(String),
}

impl Store {
    /// Records a valid event; `false` when its `jti` was recorded before (by this node or
    /// another): then nothing is done again.
    pub async fn record_risc_event(
        &self,
        jti: &str,
        event_type: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let row = risc_event::ActiveModel {
            jti: sea_orm::ActiveValue::Set(jti.to_string()),
            event_type: sea_orm::ActiveValue::Set(event_type.to_string()),
            user_id: sea_orm::ActiveValue::Set(None),
            received_at: sea_orm::ActiveValue::Set(now),
            outcome: sea_orm::ActiveValue::Set("received".into()),
        };
        let inserted = risc_event::Entity::insert(row)
            .on_conflict(
                OnConflict::column(risc_event::Column::Jti)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(inserted == 1)
    }

    /// What was done about an event, and for whom.
    pub async fn finish_risc_event(
        &self,
        jti: &str,
        user_id: Option<&str>,
        outcome: &str,
    ) -> Result<(), StoreError> {
        risc_event::Entity::update_many()
            .col_expr(
                risc_event::Column::UserId,
                sea_orm::sea_query::Expr::value(user_id.map(str::to_string)),
            )
            .col_expr(
                risc_event::Column::Outcome,
                sea_orm::sea_query::Expr::value(outcome.to_string()),
            )
            .filter(risc_event::Column::Jti.eq(jti))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// A user's recorded events, newest first.
    pub async fn risc_events_of(
        &self,
        user_id: &str,
        limit: u64,
    ) -> Result<Vec<risc_event::Model>, StoreError> {
        Ok(risc_event::Entity::find()
            .filter(risc_event::Column::UserId.eq(user_id))
            .order_by_desc(risc_event::Column::ReceivedAt)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// The user the subject names, if one is known here: `(user_id, has a live grant)`.
    pub async fn risc_user(
        &self,
        subject: &RiscSubject,
    ) -> Result<Option<(String, bool)>, StoreError> {
        let filter = match subject {
            RiscSubject::Account(sub) => user::Column::GoogleSub.eq(sub.clone()),
            RiscSubject::TokenPrefixHash(hash) => {
                user::Column::RefreshTokenPrefixHash.eq(hash.clone())
            }
            RiscSubject::TokenHash(hash) => user::Column::RefreshTokenHash.eq(hash.clone()),
        };
        let found = user::Entity::find()
            .select_only()
            .columns([user::Column::UserId, user::Column::GoogleCalendarConnected])
            .filter(filter)
            // Several rows may share an account (two app users who consented with one Google
            // account): the connected one first, then the same user every time.
            .order_by_desc(user::Column::GoogleCalendarConnected)
            .order_by_asc(user::Column::UserId)
            .into_tuple::<(String, bool)>()
            .one(&self.db)
            .await?;
        Ok(found)
    }

    /// Ends the user's grant for a security event: tokens cleared, `needs_reconnect` with
    /// `security_event`, the DELETE queued, the app's event written in the same transaction.
    /// `None` when the user has no live grant (then nothing changes).
    pub async fn end_grant_for_security_event(
        &self,
        user_id: &str,
    ) -> Result<Option<ActorStart>, StoreError> {
        for _ in 0..WRITE_ATTEMPTS {
            let Some(row) = self.user(user_id).await? else {
                return Ok(None);
            };
            if !row.google_calendar_connected {
                return Ok(None);
            }
            let reason = ReconnectReason::SecurityEvent;
            if self
                .mark_needs_reconnect(user_id, row.token_version, None, reason)
                .await?
                .is_some()
            {
                return self.actor_start(user_id).await;
            }
        }
        Err(StoreError::Contended)
    }

    /// Deletes up to `batch` records received before `before`; returns how many. Small
    /// batches on the `received_at` index, so pruning never holds the store for long.
    pub async fn prune_risc_events(
        &self,
        before: DateTime<Utc>,
        batch: u64,
    ) -> Result<u64, StoreError> {
        let old: Vec<String> = risc_event::Entity::find()
            .select_only()
            .column(risc_event::Column::Jti)
            .filter(risc_event::Column::ReceivedAt.lt(before))
            .order_by_asc(risc_event::Column::ReceivedAt)
            .limit(batch)
            .into_tuple()
            .all(&self.db)
            .await?;
        if old.is_empty() {
            return Ok(0);
        }
        let result = risc_event::Entity::delete_many()
            .filter(risc_event::Column::Jti.is_in(old))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }
}
