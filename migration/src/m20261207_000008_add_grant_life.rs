//! The grant's whole life (docs/contract.md section 9): why a user must reconnect
//! (`reconnect_reason`, set with `needs_reconnect`), when a time-limited grant ends
//! (`authorization_expires_at`, null for ongoing access), and whether the app was already warned of
//! that end (once per grant). SQLite alters one column per statement, so each is its own.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut warned = boolean("authorization_warned");
        warned.default(false);
        for mut column in [
            string_len_null("reconnect_reason", 32),
            timestamp_with_time_zone_null("authorization_expires_at"),
            warned,
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
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            "reconnect_reason",
            "authorization_expires_at",
            "authorization_warned",
        ] {
            manager
                .alter_table(Table::alter().table("users").drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}
