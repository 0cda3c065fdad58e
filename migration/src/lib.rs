//! Database migrations of tokenwarden, run by `tokenwarden migrate` and at every start of
//! `serve`. Each migration is one file named `mYYYYMMDD_NNNNNN_verb_noun.rs`; the same DDL runs
//! on SQLite and PostgreSQL, so nothing here may use backend-specific SQL, with one exception
//! said in its file (a PostgreSQL storage parameter that SQLite has no counterpart for).

pub use sea_orm_migration::prelude::*;

mod m20261126_000001_create_users;
mod m20261126_000002_create_oauth_states;
mod m20261130_000003_add_browser_binding;
mod m20261130_000004_add_cluster;
mod m20261130_000005_drop_sync_state_index;
mod m20261207_000006_create_console_sessions;
mod m20261207_000007_create_app_events;
mod m20261207_000008_add_grant_life;
mod m20261207_000009_add_risc;
mod m20261207_000010_add_sync_acks;

/// Shards every user falls into, fixed at the migration that created them (docs/contract.md section
/// 8): 256 leases per cluster keep a share even for a handful of nodes and cost one small row
/// update each per renewal.
pub const SHARD_COUNT: u32 = 256;

/// The shard of `user_id` among `shard_count`: CRC-32 of the id's bytes, a function that
/// never changes, since rows keep the shard they were given.
pub fn shard_of(user_id: &str, shard_count: u32) -> u32 {
    crc32fast::hash(user_id.as_bytes()) % Ord::max(shard_count, 1)
}

/// Every migration, in the order they apply.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_create_users::Migration),
            Box::new(m20261126_000002_create_oauth_states::Migration),
            Box::new(m20261130_000003_add_browser_binding::Migration),
            Box::new(m20261130_000004_add_cluster::Migration),
            Box::new(m20261130_000005_drop_sync_state_index::Migration),
            Box::new(m20261207_000006_create_console_sessions::Migration),
            Box::new(m20261207_000007_create_app_events::Migration),
            Box::new(m20261207_000008_add_grant_life::Migration),
            Box::new(m20261207_000009_add_risc::Migration),
            Box::new(m20261207_000010_add_sync_acks::Migration),
        ]
    }
}
