//! The outbox of events to the app (docs/contract.md section 9): one row per change of a user's
//! connection, written in the same transaction as the change, delivered in `id` order per user
//! by the owner of the row's shard, kept a while after delivery for the console, and dropped
//! 72 hours after it was stored either way.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("app_events")
                    .if_not_exists()
                    // Assigned at insert: the order of one user's events.
                    .col(big_pk_auto("id"))
                    // The `webhook-id`: `msg_` and 32 hex digits.
                    .col(string_len_uniq("event_id", 64))
                    .col(string_len("user_id", 50))
                    // `migration::shard_of`, as `users.shard`: whose lease delivers it.
                    .col(integer("shard"))
                    .col(string_len("event_type", 64))
                    .col(timestamp_with_time_zone("occurred_at"))
                    .col(string_len_null("google_email", 255))
                    .col(string_len_null("reason", 32))
                    .col(timestamp_with_time_zone_null("authorization_expires_at"))
                    .col(integer("attempts").default(0))
                    .col(timestamp_with_time_zone("next_attempt_at"))
                    .col(text_null("last_error"))
                    // Null until the app answered 2xx; delivered rows stay for the console.
                    .col(timestamp_with_time_zone_null("delivered_at"))
                    .col(timestamp_with_time_zone("created_at"))
                    .to_owned(),
            )
            .await?;
        // A user's events in order: whether an event is its user's first undelivered one,
        // and the console's list.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_app_events_user_id_id")
                    .table("app_events")
                    .col("user_id")
                    .col("id")
                    .to_owned(),
            )
            .await?;
        // What is due: undelivered rows (`delivered_at IS NULL`) by their next attempt, without
        // walking the delivered rows kept for the console; also the purge of delivered rows.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_app_events_delivered_at_next_attempt_at")
                    .table("app_events")
                    .col("delivered_at")
                    .col("next_attempt_at")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("app_events").to_owned())
            .await
    }
}
