//! One wide row write per refresh (issue 24). Two changes to what a refresh writes:
//!
//! - **Acknowledgements get a narrow table of their own**, `sync_acks` (user id, the version
//!   the microservice acknowledged, when). Before, each push's acknowledgement rewrote the
//!   user's whole `users` row, tokens included: on PostgreSQL a second full row version per
//!   refresh, its WAL, and pages filling twice as fast (more pruning, more updates that could
//!   not stay heap-only). A user is in sync when its `sync_acks` version
//!   equals its `token_version`; `users.sync_state` keeps the other outcomes (pending, failed,
//!   skipped). Users already in sync are copied over.
//! - **The columns every refresh changes move to the end of `users`** (expiry, version,
//!   refresh count and time, `updated_at`, the access token's ciphertext). PostgreSQL logs an
//!   update that stays on its page as the changed bytes between the unchanged head and tail of
//!   the row; with the access token second and the rest after the refresh token, email and
//!   scope, a refresh logged those unchanged columns too (benches/issue24.md has the
//!   `pg_walinspect` figures). A column moves by adding its copy, filling it,
//!   dropping the old one and renaming the copy, so the same DDL runs on SQLite, where it
//!   changes nothing but the order. `updated_at` had no default; its copy needs one to be
//!   added to existing rows on SQLite (every insert sets it anyway).
//!
//! On PostgreSQL `sync_acks` keeps a fifth of each page free so that an acknowledgement can
//! stay heap-only (the same storage parameter as `users`, issue 12), the one statement that is
//! not the same on both backends.

use sea_orm_migration::{
    prelude::*,
    schema::*,
    sea_orm::{ConnectionTrait, DbBackend},
};

/// Percent of each heap page of `sync_acks` PostgreSQL fills on insert.
const SYNC_ACKS_FILLFACTOR: u8 = 80;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The columns a refresh writes, in their new order at the end of `users`.
const MOVED: [&str; 6] = [
    "google_token_expiry",
    "token_version",
    "refresh_count",
    "last_refresh_at",
    "updated_at",
    "google_access_token",
];

/// The definition of a moved column, under the name `as_name`.
fn definition(column: &str, as_name: &str) -> ColumnDef {
    let as_name = Alias::new(as_name);
    match column {
        "token_version" | "refresh_count" => big_integer(as_name).default(0).to_owned(),
        "updated_at" => timestamp_with_time_zone(as_name)
            .default("1970-01-01T00:00:00Z")
            .to_owned(),
        "google_access_token" => text_null(as_name),
        _ => timestamp_with_time_zone_null(as_name),
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("sync_acks")
                    .if_not_exists()
                    .col(string_len("user_id", 50).primary_key())
                    .col(big_integer("synced_version").default(0))
                    .col(timestamp_with_time_zone_null("synced_at"))
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        if db.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared(&format!(
                "ALTER TABLE sync_acks SET (fillfactor = {SYNC_ACKS_FILLFACTOR})"
            ))
            .await?;
        }
        db.execute_unprepared(
            "INSERT INTO sync_acks (user_id, synced_version, synced_at) \
             SELECT user_id, synced_version, synced_at FROM users \
             WHERE sync_state = 'synced' AND synced_version = token_version",
        )
        .await?;
        move_to_end(manager).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The column order stays: no query depends on it.
        manager
            .drop_table(Table::drop().table("sync_acks").to_owned())
            .await
    }
}

/// Moves each of [`MOVED`] to the end of `users`, in that order, keeping its values.
async fn move_to_end(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let mut names = Vec::new();
    for name in MOVED {
        let copy = format!("{name}_moved");
        manager
            .alter_table(
                Table::alter()
                    .table("users")
                    .add_column(definition(name, &copy))
                    .to_owned(),
            )
            .await?;
        names.push((name, copy));
    }
    let sets: Vec<String> = names
        .iter()
        .map(|(name, copy)| format!("{copy} = {name}"))
        .collect();
    manager
        .get_connection()
        .execute_unprepared(&format!("UPDATE users SET {}", sets.join(", ")))
        .await?;
    for (name, copy) in &names {
        manager
            .alter_table(Table::alter().table("users").drop_column(*name).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("users")
                    .rename_column(Alias::new(copy.as_str()), *name)
                    .to_owned(),
            )
            .await?;
    }
    Ok(())
}
