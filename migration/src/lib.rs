//! Database migrations of tokenwarden, run by `tokenwarden migrate` and at every start of
//! `serve`. Each migration is one file named `mYYYYMMDD_NNNNNN_verb_noun.rs`; the same DDL runs
//! on SQLite and PostgreSQL, so nothing here may use backend-specific SQL.

pub use sea_orm_migration::prelude::*;

mod m20261126_000001_create_users;
mod m20261126_000002_create_oauth_states;
mod m20261130_000003_add_browser_binding;

/// Every migration, in the order they apply.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_create_users::Migration),
            Box::new(m20261126_000002_create_oauth_states::Migration),
            Box::new(m20261130_000003_add_browser_binding::Migration),
        ]
    }
}
