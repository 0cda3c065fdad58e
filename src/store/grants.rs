//! The end of a grant (docs/contract.md section 9): a user who must reconnect, and why (Google
//! revoked the grant, a time-limited grant reached its end, a security event), and the one warning
//! that a time-limited grant nears its end. Each write is conditional on the version the caller
//! acts on and fenced like every refresh-path write. Must not touch: the token values (it only
//! clears them).

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, TransactionTrait, sea_query::Expr};

use super::{
    AppEvent, AppEventType, Store, StoreError, TokenChange,
    cluster::Fence,
    entity::user::{self, ReconnectReason},
    sync_state::fenced,
    users::{cleared, with_pending_sync},
};
use crate::ids::TokenVersion;

impl Store {
    /// The grant is gone for `reason`: clear the tokens, flag the user for reconnection with
    /// that reason and queue the deletion at the microservice. `None` if a newer change got
    /// there first.
    #[tracing::instrument(name = "db.mark_needs_reconnect", skip_all, fields(user.id = %user_id))]
    pub async fn mark_needs_reconnect(
        &self,
        user_id: &str,
        expected_version: TokenVersion,
        fence: Option<Fence>,
        reason: ReconnectReason,
    ) -> Result<Option<TokenChange>, StoreError> {
        self.end_grant(user_id, expected_version, fence, reason, None)
            .await
    }

    /// A time-limited grant reached its end at `now`: as [`Self::mark_needs_reconnect`] with
    /// `authorization_expired`, and only if the stored end has passed (a refresh answer or a
    /// reconnect may have moved it since the caller looked).
    #[tracing::instrument(name = "db.expire_authorization", skip_all, fields(user.id = %user_id))]
    pub async fn expire_authorization(
        &self,
        user_id: &str,
        expected_version: TokenVersion,
        fence: Option<Fence>,
        now: DateTime<Utc>,
    ) -> Result<Option<TokenChange>, StoreError> {
        let reason = ReconnectReason::AuthorizationExpired;
        self.end_grant(user_id, expected_version, fence, reason, Some(now))
            .await
    }

    async fn end_grant(
        &self,
        user_id: &str,
        expected_version: TokenVersion,
        fence: Option<Fence>,
        reason: ReconnectReason,
        ended_by: Option<DateTime<Utc>>,
    ) -> Result<Option<TokenChange>, StoreError> {
        let version = expected_version.next();
        let now = crate::clock::now();
        let update = cleared(user::Entity::update_many())
            .col_expr(user::Column::NeedsReconnect, Expr::value(true))
            .col_expr(user::Column::ReconnectReason, Expr::value(reason.as_str()));
        let mut update = fenced(with_pending_sync(update, version, now), fence)
            .filter(user::Column::UserId.eq(user_id))
            .filter(user::Column::TokenVersion.eq(expected_version));
        if let Some(ended_by) = ended_by {
            update = update.filter(user::Column::AuthorizationExpiresAt.lte(ended_by));
        }
        // The app's event is written by the same transaction as the change (docs/contract.md
        // section 9).
        let txn = self.db.begin().await?;
        let Some(row) = update.exec_with_returning(&txn).await?.into_iter().next() else {
            return Ok(None);
        };
        let mut event = AppEvent::new(AppEventType::NeedsReconnect, user_id, now);
        event.google_email = row.google_email;
        event.reason = Some(reason);
        event.authorization_expires_at = row.authorization_expires_at;
        self.commit_with_event(txn, &event, now).await?;
        Ok(Some(TokenChange {
            version,
            token_expiry: None,
        }))
    }

    /// Records that the app was warned of the current grant's end (once per grant). `false`
    /// when there was nothing to warn of any more: already warned, no end, or no grant.
    #[tracing::instrument(name = "db.mark_authorization_warned", skip_all, fields(user.id = %user_id))]
    pub async fn mark_authorization_warned(
        &self,
        user_id: &str,
        fence: Option<Fence>,
    ) -> Result<bool, StoreError> {
        let now = crate::clock::now();
        let update = user::Entity::update_many()
            .col_expr(user::Column::AuthorizationWarned, Expr::value(true))
            .filter(user::Column::UserId.eq(user_id))
            .filter(user::Column::AuthorizationWarned.eq(false))
            .filter(user::Column::AuthorizationExpiresAt.is_not_null())
            .filter(user::Column::GoogleCalendarConnected.eq(true));
        let txn = self.db.begin().await?;
        let Some(row) = fenced(update, fence)
            .exec_with_returning(&txn)
            .await?
            .into_iter()
            .next()
        else {
            return Ok(false);
        };
        let mut event = AppEvent::new(AppEventType::AuthorizationExpiring, user_id, now);
        event.google_email = row.google_email;
        event.authorization_expires_at = row.authorization_expires_at;
        self.commit_with_event(txn, &event, now).await?;
        Ok(true)
    }
}
