//! Where each user's push to the microservice stands: the acknowledgement (batched with the
//! refreshes' writes, into the narrow `sync_acks` row), a skipped or failed attempt (on the
//! `users` row), and the lists of unfinished pushes that a start, a gained shard or a resync
//! queue again. A user is in sync while its acknowledged version equals its `token_version`;
//! otherwise `users.sync_state` says what happened last. Every record is conditional on the
//! version it is about, and fenced by the writer's lease (epoch and process token) on a
//! cluster. Must not touch: token columns.

use std::collections::HashMap;

use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait, Query, SimpleExpr},
};

use super::{
    Store, StoreError,
    batch::{self, Write},
    cluster::Fence,
    entity::{
        sync_ack,
        user::{self, SyncState},
    },
};
use crate::ids::{Shard, TokenVersion, UserId};

impl Store {
    /// Records the microservice's acknowledgement of `version` (ignored if already stale).
    #[tracing::instrument(name = "db.record_sync", skip_all, fields(user.id = %user_id))]
    pub async fn mark_synced(
        &self,
        user_id: &str,
        version: TokenVersion,
        fence: Option<Fence>,
    ) -> Result<(), StoreError> {
        let ack = Write::Synced {
            user_id: user_id.into(),
            version,
            now: crate::clock::now(),
            fence,
        };
        self.writes
            .call(ack)
            .await
            .unwrap_or_else(|| Err(batch::lost()))
            .map(|_| ())
    }

    /// Records that sync is skipped (no microservice configured) for `version`.
    pub async fn mark_sync_skipped(
        &self,
        user_id: &str,
        version: TokenVersion,
        fence: Option<Fence>,
    ) -> Result<(), StoreError> {
        self.set_sync_outcome(user_id, version, SyncState::Skipped, None, fence)
            .await
    }

    /// Records a failed attempt at pushing `version`.
    pub async fn mark_sync_failed(
        &self,
        user_id: &str,
        version: TokenVersion,
        error: &str,
        fence: Option<Fence>,
    ) -> Result<(), StoreError> {
        self.set_sync_outcome(user_id, version, SyncState::Failed, Some(error), fence)
            .await
    }

    #[tracing::instrument(name = "db.record_sync", skip_all, fields(user.id = %user_id))]
    async fn set_sync_outcome(
        &self,
        user_id: &str,
        version: TokenVersion,
        state: SyncState,
        error: Option<&str>,
        fence: Option<Fence>,
    ) -> Result<(), StoreError> {
        let now = crate::clock::now();
        let mut update = user::Entity::update_many()
            .col_expr(user::Column::SyncState, Expr::value(state))
            .col_expr(
                user::Column::SyncLastError,
                Expr::value(error.map(str::to_string)),
            )
            .col_expr(user::Column::UpdatedAt, Expr::value(now));
        update = if error.is_some() {
            update.col_expr(
                user::Column::SyncAttempts,
                Expr::col(user::Column::SyncAttempts).add(1),
            )
        } else {
            update
                .col_expr(user::Column::SyncAttempts, Expr::value(0))
                .col_expr(user::Column::SyncedVersion, Expr::value(version))
                .col_expr(user::Column::SyncedAt, Expr::value(now))
        };
        fenced(update, fence)
            .filter(user::Column::UserId.eq(user_id))
            .filter(user::Column::TokenVersion.eq(version))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// A page of user ids whose last change has not reached the microservice yet; with
    /// `include_skipped`, also those skipped while no microservice was configured.
    pub async fn unfinished_syncs(
        &self,
        after: Option<&str>,
        limit: u64,
        include_skipped: bool,
        shards: Option<&[Shard]>,
    ) -> Result<Vec<UserId>, StoreError> {
        let states: &[SyncState] = if include_skipped {
            &[SyncState::Pending, SyncState::Failed, SyncState::Skipped]
        } else {
            &[SyncState::Pending, SyncState::Failed]
        };
        let mut query = user::Entity::find()
            .select_only()
            .column(user::Column::UserId)
            .filter(user::Column::SyncState.is_in(states.iter().copied()))
            .filter(not_acknowledged())
            .order_by_asc(user::Column::UserId)
            .limit(limit);
        if let Some(after) = after {
            query = query.filter(user::Column::UserId.gt(after));
        }
        if let Some(shards) = shards {
            query = query.filter(user::Column::Shard.is_in(shards.iter().copied()));
        }
        Ok(query.into_tuple::<UserId>().all(&self.db).await?)
    }

    /// Marks every connected user's tokens for a fresh push; returns how many.
    pub async fn queue_resync_all(&self) -> Result<u64, StoreError> {
        let result = user::Entity::update_many()
            .col_expr(user::Column::SyncState, Expr::value(SyncState::Pending))
            .col_expr(user::Column::SyncAttempts, Expr::value(0))
            .filter(user::Column::GoogleCalendarConnected.eq(true))
            .exec(&self.db)
            .await?;
        self.forget_acks(None).await?;
        Ok(result.rows_affected)
    }

    /// The acknowledgements of `user_ids` that have one.
    pub(super) async fn acks_of(
        &self,
        user_ids: &[UserId],
    ) -> Result<HashMap<UserId, sync_ack::Model>, StoreError> {
        if user_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let acks = sync_ack::Entity::find()
            .filter(sync_ack::Column::UserId.is_in(user_ids.iter().cloned()))
            .all(&self.db)
            .await?;
        Ok(acks.into_iter().map(|a| (a.user_id.clone(), a)).collect())
    }

    /// Forgets that the microservice holds the current version of one user (or of every
    /// connected user), so that a resync pushes it again; when it was acknowledged stays.
    pub(super) async fn forget_acks(&self, user_id: Option<&str>) -> Result<(), StoreError> {
        let mut forget = sync_ack::Entity::update_many()
            .col_expr(sync_ack::Column::SyncedVersion, Expr::value(0i64));
        forget = match user_id {
            Some(user_id) => forget.filter(sync_ack::Column::UserId.eq(user_id)),
            None => forget.filter(
                sync_ack::Column::UserId.in_subquery(
                    Query::select()
                        .column(user::Column::UserId)
                        .from(user::Entity)
                        .and_where(Expr::col(user::Column::GoogleCalendarConnected).eq(true))
                        .to_owned(),
                ),
            ),
        };
        forget.exec(&self.db).await?;
        Ok(())
    }
}

/// The condition on `users` that its current version has not been acknowledged.
pub(super) fn not_acknowledged() -> SimpleExpr {
    Expr::exists(
        Query::select()
            .expr(Expr::val(1))
            .from("sync_acks")
            .and_where(Expr::col(("sync_acks", "user_id")).equals(("users", "user_id")))
            .and_where(
                Expr::col(("sync_acks", "synced_version")).equals(("users", "token_version")),
            )
            .to_owned(),
    )
    .not()
}

/// Makes a refresh-path write conditional on the writer still holding its shard's lease: the
/// shard's epoch and owner's process token are both the writer's (the fence of docs/contract.md
/// section 8; the token tells apart two owners given one epoch by a database failover that lost a
/// claim). No condition on a single node.
pub(super) fn fenced(
    update: sea_orm::UpdateMany<user::Entity>,
    fence: Option<Fence>,
) -> sea_orm::UpdateMany<user::Entity> {
    match fence {
        Some(fence) => update.filter(Expr::exists(
            sea_orm::sea_query::Query::select()
                .expr(Expr::val(1))
                .from("shard_leases")
                .and_where(Expr::col(("shard_leases", "shard")).equals(("users", "shard")))
                .and_where(Expr::col(("shard_leases", "epoch")).eq(fence.epoch))
                .and_where(
                    Expr::col(("shard_leases", "owner_token")).eq(fence.owner_token.to_string()),
                )
                .to_owned(),
        )),
        None => update,
    }
}
