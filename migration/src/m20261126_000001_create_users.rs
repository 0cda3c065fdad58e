//! The `users` table: the seed's Google Calendar columns plus the version counter and the
//! durable sync state that let a restart resume unfinished pushes to the microservice.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("users")
                    .if_not_exists()
                    .col(string_len("user_id", 50).primary_key())
                    // Token columns hold AES-256-GCM ciphertext, never plaintext.
                    .col(text_null("google_access_token"))
                    .col(text_null("google_refresh_token"))
                    .col(timestamp_with_time_zone_null("google_token_expiry"))
                    .col(boolean("google_calendar_connected").default(false))
                    .col(string_len("google_calendar_id", 255).default("primary"))
                    .col(string_len_null("google_email", 255))
                    .col(text_null("google_scope"))
                    .col(boolean("needs_reconnect").default(false))
                    // Bumped on every token change; the microservice is in sync when
                    // `synced_version` has caught up with it.
                    .col(big_integer("token_version").default(0))
                    .col(string_len("sync_state", 16).default("none"))
                    .col(integer("sync_attempts").default(0))
                    .col(text_null("sync_last_error"))
                    .col(big_integer("synced_version").default(0))
                    .col(timestamp_with_time_zone_null("synced_at"))
                    .col(timestamp_with_time_zone_null("last_refresh_at"))
                    .col(big_integer("refresh_count").default(0))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone("updated_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_users_sync_state")
                    .table("users")
                    .col("sync_state")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("users").to_owned())
            .await
    }
}
