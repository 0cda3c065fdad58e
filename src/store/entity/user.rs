//! A row of `users`: one person's Google Calendar connection and its sync state.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: String,
    /// Ciphertext (see `crypto`), never the token.
    pub google_access_token: Option<String>,
    /// Ciphertext (see `crypto`), never the token.
    pub google_refresh_token: Option<String>,
    pub google_token_expiry: Option<DateTimeUtc>,
    pub google_calendar_connected: bool,
    pub google_calendar_id: String,
    pub google_email: Option<String>,
    pub google_scope: Option<String>,
    pub needs_reconnect: bool,
    /// Bumped by every token change; guards writes against lost updates.
    pub token_version: i64,
    /// `none`, `pending`, `synced`, `failed` or `skipped`.
    pub sync_state: String,
    pub sync_attempts: i32,
    pub sync_last_error: Option<String>,
    /// The `token_version` the microservice last acknowledged.
    pub synced_version: i64,
    pub synced_at: Option<DateTimeUtc>,
    pub last_refresh_at: Option<DateTimeUtc>,
    pub refresh_count: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
