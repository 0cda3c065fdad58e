//! The operator console's queries: users searched by id or email, in two groups (those
//! waiting for a reconnect, then the rest), the sync backlog, the refreshes due next, and the
//! resync of one user. Hands out [`UserListing`] views, never a token column.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait, Func, LikeExpr},
};

use super::{
    Store, StoreError,
    entity::{
        sync_ack,
        user::{self, ReconnectReason, SyncState},
    },
    views::SyncInfo,
};
use crate::ids::UserId;

/// One user as the console lists them: no token values, no ciphertext.
#[derive(Debug, Clone)]
pub struct UserListing {
    pub user_id: UserId,
    pub google_email: Option<String>,
    pub connected: bool,
    pub needs_reconnect: bool,
    /// Why the user must reconnect; `None` while connected (as status shows it).
    pub reconnect_reason: Option<ReconnectReason>,
    /// When a time-limited grant ends; `None` for ongoing access.
    pub authorization_expires_at: Option<DateTime<Utc>>,
    pub token_expiry: Option<DateTime<Utc>>,
    pub refresh_count: i64,
    pub last_refresh_at: Option<DateTime<Utc>>,
    pub sync: SyncInfo,
}

impl UserListing {
    fn of(row: user::Model, acks: &HashMap<UserId, sync_ack::Model>) -> Self {
        Self {
            sync: SyncInfo::of(&row, acks.get(&row.user_id)),
            user_id: row.user_id,
            google_email: row.google_email,
            connected: row.google_calendar_connected,
            needs_reconnect: row.needs_reconnect,
            reconnect_reason: row.reconnect_reason.filter(|_| row.needs_reconnect),
            authorization_expires_at: row.authorization_expires_at,
            token_expiry: row.google_token_expiry,
            refresh_count: row.refresh_count,
            last_refresh_at: row.last_refresh_at,
        }
    }
}

/// Pushes not yet acknowledged by the microservice.
#[derive(Debug, Clone, Default)]
pub struct SyncBacklog {
    /// Users whose latest change is `pending` or `failed`.
    pub users: u64,
    /// When the longest-waiting of them was last written: its change is at least this old.
    pub oldest: Option<DateTime<Utc>>,
}

const UNFINISHED: [SyncState; 2] = [SyncState::Pending, SyncState::Failed];

impl Store {
    /// A page of users ordered by user id after `after`, of one group: those waiting for a
    /// reconnect, or the others. Without `text`, the others are the connected users; with it,
    /// disconnected users whose row remains are found too, and both groups keep only users
    /// whose id or email contains `text` (ignoring case).
    pub async fn console_users(
        &self,
        text: Option<&str>,
        needs_reconnect: bool,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<UserListing>, StoreError> {
        let mut query = user::Entity::find()
            .filter(user::Column::NeedsReconnect.eq(needs_reconnect))
            .order_by_asc(user::Column::UserId)
            .limit(limit);
        match text.map(str::trim).filter(|t| !t.is_empty()) {
            Some(text) => {
                // A substring search scans the table: fine for an operator's occasional look.
                let pattern = format!("%{}%", escape_like(&text.to_lowercase()));
                let matches = |column: user::Column| {
                    Expr::expr(Func::lower(Expr::col(column)))
                        .like(LikeExpr::new(pattern.clone()).escape('\\'))
                };
                query = query.filter(
                    Condition::any()
                        .add(matches(user::Column::UserId))
                        .add(matches(user::Column::GoogleEmail)),
                );
            }
            None if !needs_reconnect => {
                query = query.filter(user::Column::GoogleCalendarConnected.eq(true));
            }
            None => {}
        }
        if let Some(after) = after {
            query = query.filter(user::Column::UserId.gt(after));
        }
        let rows = query.all(&self.db).await?;
        self.listings(rows).await
    }

    /// One user as the console shows them, if the user has a row.
    pub async fn console_user(&self, user_id: &str) -> Result<Option<UserListing>, StoreError> {
        let Some(row) = self.user(user_id).await? else {
            return Ok(None);
        };
        Ok(self.listings(vec![row]).await?.pop())
    }

    /// How many users wait for a push, and since when: one pass over the table (no index
    /// covers `sync_state`, whose changes would then cost every refresh its in-place update).
    pub async fn sync_backlog(&self) -> Result<SyncBacklog, StoreError> {
        let (users, oldest) = user::Entity::find()
            .select_only()
            .expr(Expr::col(user::Column::UserId).count())
            .expr(Expr::col(user::Column::UpdatedAt).min())
            .filter(user::Column::SyncState.is_in(UNFINISHED.iter().copied()))
            .filter(super::sync_state::not_acknowledged())
            .into_tuple::<(i64, Option<DateTime<Utc>>)>()
            .one(&self.db)
            .await?
            .unwrap_or((0, None));
        Ok(SyncBacklog {
            users: u64::try_from(users).unwrap_or(0),
            oldest,
        })
    }

    /// The connected users whose access tokens expire first: the refreshes due next.
    pub async fn expiring_first(&self, limit: u64) -> Result<Vec<UserListing>, StoreError> {
        let rows = user::Entity::find()
            .filter(user::Column::GoogleCalendarConnected.eq(true))
            .filter(user::Column::NeedsReconnect.eq(false))
            .filter(user::Column::GoogleTokenExpiry.is_not_null())
            .order_by_asc(user::Column::GoogleTokenExpiry)
            .order_by_asc(user::Column::UserId)
            .limit(limit)
            .all(&self.db)
            .await?;
        self.listings(rows).await
    }

    /// Marks one user's current state for a fresh push (the caller then tells the sync);
    /// false if the user has no row.
    pub async fn queue_resync(&self, user_id: &str) -> Result<bool, StoreError> {
        let result = user::Entity::update_many()
            .col_expr(user::Column::SyncState, Expr::value(SyncState::Pending))
            .col_expr(user::Column::SyncAttempts, Expr::value(0))
            .filter(user::Column::UserId.eq(user_id))
            .exec(&self.db)
            .await?;
        self.forget_acks(Some(user_id)).await?;
        Ok(result.rows_affected == 1)
    }
}

impl Store {
    /// The rows as the console lists them, each with its acknowledgement.
    async fn listings(&self, rows: Vec<user::Model>) -> Result<Vec<UserListing>, StoreError> {
        let ids: Vec<UserId> = rows.iter().map(|r| r.user_id.clone()).collect();
        let acks = self.acks_of(&ids).await?;
        Ok(rows
            .into_iter()
            .map(|r| UserListing::of(r, &acks))
            .collect())
    }
}

/// `text` with LIKE's wildcards and the escape character itself taken literally.
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape_like;

    #[test]
    fn like_wildcards_are_taken_literally() {
        assert_eq!(escape_like("a_b%c\\d"), "a\\_b\\%c\\\\d");
        assert_eq!(escape_like("alice@x.test"), "alice@x.test");
    }
}
