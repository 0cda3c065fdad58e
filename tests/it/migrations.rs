//! The migrations on a real database: all of them apply, the newest (the narrow
//! acknowledgements of `m20261207_000010_add_sync_acks`) rolls back and applies again, and on
//! PostgreSQL the two tables every refresh updates keep the free room on each page that lets
//! those updates stay heap-only (`users` 15 %, `sync_acks` 20 %).

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

use crate::{
    on_both_backends,
    support::{Backend, TestDatabase},
};

/// The `fillfactor` storage parameter of `table`, if it was set.
async fn fillfactor(db: &DatabaseConnection, table: &str) -> Option<String> {
    table_fillfactor(db, table).await.expect("the table exists")
}

/// The `fillfactor` of `table` (inner `None`: not set), or `None` when there is no such table.
async fn table_fillfactor(db: &DatabaseConnection, table: &str) -> Option<Option<String>> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT array_to_string(reloptions, ',') AS options FROM pg_class \
                 WHERE relname = '{table}' AND relkind = 'r'"
            ),
        ))
        .await
        .expect("pg_class")?;
    let options: Option<String> = row.try_get("", "options").expect("options");
    Some(options.and_then(|options| {
        options
            .split(',')
            .find_map(|o| o.strip_prefix("fillfactor=").map(str::to_string))
    }))
}

async fn the_newest_migration_rolls_back_and_applies_again(backend: Backend) {
    let test_db = TestDatabase::create(backend).await;
    let db = Database::connect(test_db.url.as_str())
        .await
        .expect("connect");
    let pending = || async { Migrator::get_pending_migrations(&db).await.unwrap().len() };
    Migrator::up(&db, None)
        .await
        .expect("every migration applies");
    let postgres = backend == Backend::Postgres;
    if postgres {
        assert_eq!(fillfactor(&db, "users").await.as_deref(), Some("85"));
        assert_eq!(fillfactor(&db, "sync_acks").await.as_deref(), Some("80"));
    }
    Migrator::down(&db, Some(1))
        .await
        .expect("the newest rolls back");
    assert_eq!(pending().await, 1);
    if postgres {
        assert_eq!(
            table_fillfactor(&db, "sync_acks").await,
            None,
            "its table is gone"
        );
    }
    Migrator::up(&db, None).await.expect("and applies again");
    assert_eq!(pending().await, 0);
    if postgres {
        assert_eq!(fillfactor(&db, "users").await.as_deref(), Some("85"));
        assert_eq!(fillfactor(&db, "sync_acks").await.as_deref(), Some("80"));
    }
}
on_both_backends!(the_newest_migration_rolls_back_and_applies_again);
