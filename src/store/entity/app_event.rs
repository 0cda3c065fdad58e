//! A row of `app_events`: one event to the app about a user's connection, pending or
//! delivered (see `store::app_events`). Type and reason are stored as their wire strings, so a
//! row written by a newer version of the service is still delivered as written.

use sea_orm::entity::prelude::*;

use crate::ids::{Shard, UserId};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "app_events")]
pub struct Model {
    /// Assigned at insert: one user's events are delivered in this order.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The `webhook-id` of every attempt.
    pub event_id: String,
    pub user_id: UserId,
    /// The user's shard (`migration::shard_of`): the owner of its lease delivers it.
    pub shard: Shard,
    /// `connection.connected`, ...
    pub event_type: String,
    pub occurred_at: DateTimeUtc,
    pub google_email: Option<String>,
    /// The `reconnect_reason` of a `connection.needs_reconnect`.
    pub reason: Option<String>,
    pub authorization_expires_at: Option<DateTimeUtc>,
    /// Failed attempts so far.
    pub attempts: i32,
    pub next_attempt_at: DateTimeUtc,
    pub last_error: Option<String>,
    /// When the app answered `2xx`; `None` while pending.
    pub delivered_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
