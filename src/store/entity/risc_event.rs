//! A row of `risc_events`: one valid security event from Google, by its `jti`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "risc_events")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub jti: String,
    /// The event type URI.
    pub event_type: String,
    /// The user it matched, if any.
    pub user_id: Option<String>,
    pub received_at: DateTimeUtc,
    /// What was done (`received` until the action is over).
    pub outcome: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
