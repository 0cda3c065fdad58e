//! A row of `oauth_states`: one pending consent round-trip.

use sea_orm::entity::prelude::*;

use crate::ids::UserId;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "oauth_states")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub state: String,
    pub user_id: UserId,
    /// Ciphertext of the PKCE verifier.
    pub pkce_verifier: String,
    /// SHA-256 (hex) of the browser-binding cookie's value; `None` when binding is off.
    pub browser_hash: Option<String>,
    pub expires_at: DateTimeUtc,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
