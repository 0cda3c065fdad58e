//! A row of `sync_acks`: the version of a user's tokens the microservice last acknowledged,
//! kept apart from the wide `users` row so that an acknowledgement is a narrow write.

use sea_orm::entity::prelude::*;

use crate::ids::{TokenVersion, UserId};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "sync_acks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: UserId,
    /// The user's `token_version` the microservice acknowledged; the user is in sync while it
    /// equals that version.
    pub synced_version: TokenVersion,
    pub synced_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
