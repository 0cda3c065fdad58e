//! Signed-in console sessions, kept so that signing out ends a session on every node and an
//! operator can end them all (issue 19, L3). The cookie stays signed; a session is live only
//! while its row exists. The id is stored as its SHA-256, so reading this table does not give
//! anyone a session.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("console_sessions")
                    .if_not_exists()
                    .col(string_len("id_hash", 64).primary_key())
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone("expires_at"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("console_sessions").to_owned())
            .await
    }
}
