//! One-time OAuth `state` records: each binds a consent round-trip to the user who started it
//! and carries that round-trip's PKCE verifier (encrypted).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("oauth_states")
                    .if_not_exists()
                    .col(string_len("state", 128).primary_key())
                    .col(string_len("user_id", 50))
                    .col(text("pkce_verifier"))
                    .col(timestamp_with_time_zone("expires_at"))
                    .col(timestamp_with_time_zone("created_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_oauth_states_expires_at")
                    .table("oauth_states")
                    .col("expires_at")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("oauth_states").to_owned())
            .await
    }
}
