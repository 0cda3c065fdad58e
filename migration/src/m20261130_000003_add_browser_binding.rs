//! Binds each pending consent to the browser that started it (RFC 9700, section 4.7): the
//! hash of a random value that the connect response also sets as a cookie. Null for states
//! made while `OAUTH_BROWSER_BINDING=off`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("oauth_states")
                    .add_column(string_len_null("browser_hash", 64))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("oauth_states")
                    .drop_column("browser_hash")
                    .to_owned(),
            )
            .await
    }
}
