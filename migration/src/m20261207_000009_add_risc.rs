//! Google's security events (docs/contract.md section 10): what matching them needs, kept with each
//! connection (the Google account's `sub`, and two identifiers of the current refresh token: the
//! SHA-256 of its 16-character prefix and its double SHA-512, never the token itself), and the
//! record of every valid event (`risc_events`, one row per `jti`, which also makes acting on a
//! duplicate impossible: the insert that wins acts).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for mut column in [
            string_len_null("google_sub", 255),
            string_len_null("refresh_token_prefix_hash", 64),
            string_len_null("refresh_token_hash", 128),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table("users")
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        for (name, column) in [
            ("idx_users_google_sub", "google_sub"),
            (
                "idx_users_refresh_token_prefix_hash",
                "refresh_token_prefix_hash",
            ),
            ("idx_users_refresh_token_hash", "refresh_token_hash"),
        ] {
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name(name)
                        .table("users")
                        .col(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table("risc_events")
                    .if_not_exists()
                    .col(string_len("jti", 255).primary_key())
                    .col(string_len("event_type", 255))
                    .col(string_len_null("user_id", 50))
                    .col(timestamp_with_time_zone("received_at"))
                    .col(string_len("outcome", 64))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_risc_events_received_at")
                    .table("risc_events")
                    .col("received_at")
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_risc_events_user_id")
                    .table("risc_events")
                    .col("user_id")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("risc_events").to_owned())
            .await?;
        for column in [
            "google_sub",
            "refresh_token_prefix_hash",
            "refresh_token_hash",
        ] {
            manager
                .alter_table(Table::alter().table("users").drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}
