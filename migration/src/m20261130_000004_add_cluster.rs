//! Several nodes on one PostgreSQL (docs/contract.md section 8): the fixed shard count, one lease
//! row per shard, the live nodes, and each user's shard. The tables exist on SQLite too (the same
//! DDL runs everywhere) but only a PostgreSQL cluster reads them. Existing users get their
//! shard here, computed by [`crate::shard_of`] like every later insert.

use sea_orm_migration::{
    prelude::*,
    schema::*,
    sea_orm::{ConnectionTrait, Statement},
};

use crate::{SHARD_COUNT, shard_of};

/// Users given their shard per statement in the backfill.
const BACKFILL_PAGE: usize = 1000;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("cluster_settings")
                    .if_not_exists()
                    .col(integer("id").primary_key())
                    .col(integer("shard_count"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("shard_leases")
                    .if_not_exists()
                    .col(integer("shard").primary_key())
                    .col(string_len_null("owner_node", 255))
                    .col(string_len_null("owner_token", 64))
                    // Incremented by every change of owner: the fence of refresh-path writes.
                    .col(big_integer("epoch").default(0))
                    .col(timestamp_with_time_zone_null("expires_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("cluster_nodes")
                    .if_not_exists()
                    .col(string_len("process_token", 64).primary_key())
                    .col(string_len("node_id", 255))
                    .col(string_len("advertise_url", 1024))
                    .col(timestamp_with_time_zone("started_at"))
                    .col(timestamp_with_time_zone("last_seen"))
                    .col(timestamp_with_time_zone("expires_at"))
                    .col(big_integer("actors").default(0))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("users")
                    .add_column(integer("shard").default(0))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_users_shard")
                    .table("users")
                    .col("shard")
                    .col("user_id")
                    .to_owned(),
            )
            .await?;
        let settings = Query::insert()
            .into_table("cluster_settings")
            .columns(["id", "shard_count"])
            .values_panic([1.into(), (SHARD_COUNT as i32).into()])
            .to_owned();
        manager.exec_stmt(settings).await?;
        let mut leases = Query::insert();
        leases
            .into_table("shard_leases")
            .columns(["shard", "epoch"]);
        for shard in 0..SHARD_COUNT {
            leases.values_panic([(shard as i32).into(), 0i64.into()]);
        }
        manager.exec_stmt(leases.to_owned()).await?;
        backfill_shards(manager).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_users_shard")
                    .table("users")
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("users")
                    .drop_column("shard")
                    .to_owned(),
            )
            .await?;
        for table in ["cluster_nodes", "shard_leases", "cluster_settings"] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

/// Gives every existing user its shard, a page of users per statement.
async fn backfill_shards(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let backend = db.get_database_backend();
    let ids: Vec<String> = db
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT user_id FROM users ORDER BY user_id",
        ))
        .await?
        .into_iter()
        .map(|row| row.try_get::<String>("", "user_id"))
        .collect::<Result<_, _>>()?;
    for page in ids.chunks(BACKFILL_PAGE) {
        let mut case = CaseStatement::new();
        for id in page {
            case = case.case(
                Expr::col("user_id").eq(id.as_str()),
                shard_of(id, SHARD_COUNT) as i32,
            );
        }
        let update = Query::update()
            .table("users")
            .value("shard", case)
            .and_where(Expr::col("user_id").is_in(page.iter().map(String::as_str)))
            .to_owned();
        manager.exec_stmt(update).await?;
    }
    Ok(())
}
