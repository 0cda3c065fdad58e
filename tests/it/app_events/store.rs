//! The outbox's queries on SQLite and PostgreSQL: only each user's first undelivered event is
//! due, a failure waits its turn, shards restrict a node to its own users, old events go, an
//! event rolled back with its change never existed, and nothing is stored when events are off.

use chrono::{DateTime, Duration, DurationRound, Utc};
use sea_orm::TransactionTrait;
use tokenwarden::{
    crypto::TokenCipher,
    store::{AppEvent, AppEventType, ReconnectReason, Store},
};

use super::connected;
use crate::{
    on_both_backends,
    support::{Backend, TestDatabase},
};

async fn store(db: &TestDatabase, events: bool) -> Store {
    Store::connect(&db.url, TokenCipher::new(&[7u8; 32]))
        .await
        .unwrap()
        .with_app_events(events)
}

/// Stores `event` as written at `now`.
async fn put(store: &Store, event: &AppEvent, now: DateTime<Utc>) {
    let stored = store
        .insert_app_event(store.connection(), event, now)
        .await
        .unwrap();
    assert!(stored);
}

fn ids(events: &[tokenwarden::store::StoredAppEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| (e.user_id.to_string(), e.event_type.clone()))
        .collect()
}

async fn the_first_undelivered_event_of_each_user_is_due(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let store = store(&db, true).await;
    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    put(&store, &connected("alice", now), now).await;
    let mut gone = AppEvent::new(AppEventType::NeedsReconnect, "alice", now);
    gone.reason = Some(ReconnectReason::Revoked);
    put(&store, &gone, now).await;
    put(&store, &connected("bob", now), now).await;

    let due = store.due_app_events(now, None, 10).await.unwrap();
    assert_eq!(
        ids(&due),
        [
            ("alice".into(), "connection.connected".into()),
            ("bob".into(), "connection.connected".into())
        ],
        "alice's second event waits for her first"
    );
    assert!(due[0].event_id.starts_with("msg_"));
    assert_ne!(due[0].event_id, due[1].event_id);
    assert_eq!(store.due_app_events(now, None, 1).await.unwrap().len(), 1);
    assert_eq!(store.pending_app_events(None).await.unwrap(), 3);

    // Alice's first fails: it waits, and her second with it; Bob's goes on.
    let later = now + Duration::seconds(10);
    let long = "e".repeat(2000);
    store.app_event_failed(&due[0], later, &long).await.unwrap();
    let due_now = store.due_app_events(now, None, 10).await.unwrap();
    assert_eq!(
        ids(&due_now),
        [("bob".into(), "connection.connected".into())]
    );
    store.app_event_delivered(due_now[0].id, now).await.unwrap();
    assert!(
        store
            .due_app_events(now, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.next_app_event_due(None).await.unwrap(), Some(later));

    let retried = store.due_app_events(later, None, 10).await.unwrap();
    assert_eq!(
        ids(&retried),
        [("alice".into(), "connection.connected".into())]
    );
    assert_eq!(retried[0].attempts, 1);
    assert_eq!(retried[0].event_id, due[0].event_id, "the same id again");
    assert_eq!(retried[0].last_error.as_ref().map(String::len), Some(500));
    store
        .app_event_delivered(retried[0].id, later)
        .await
        .unwrap();
    let next = store.due_app_events(later, None, 10).await.unwrap();
    assert_eq!(
        ids(&next),
        [("alice".into(), "connection.needs_reconnect".into())]
    );
    assert_eq!(next[0].reason.as_deref(), Some("revoked"));
    assert_eq!(store.pending_app_events(None).await.unwrap(), 1);

    // The console's list: newest first, delivered ones included.
    let recent = store.recent_app_events("alice", 10).await.unwrap();
    assert_eq!(recent.len(), 2);
    assert_eq!(recent[0].event_type, "connection.needs_reconnect");
    assert_eq!(recent[1].delivered_at, Some(later));
}
on_both_backends!(the_first_undelivered_event_of_each_user_is_due);

async fn shards_restrict_a_node_to_its_users(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let store = store(&db, true).await;
    let now = Utc::now();
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    for user in &users {
        put(&store, &connected(user, now), now).await;
    }
    let shard = store.shard_of(&users[0]);
    let mine: Vec<&String> = users
        .iter()
        .filter(|u| store.shard_of(u) == shard)
        .collect();
    let due = store
        .due_app_events(now, Some(&[shard]), 100)
        .await
        .unwrap();
    assert_eq!(due.len(), mine.len());
    assert!(due.iter().all(|e| e.shard == shard));
    assert!(
        store
            .due_app_events(now, Some(&[]), 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.next_app_event_due(Some(&[])).await.unwrap(), None);
    assert_eq!(
        store.pending_app_events(Some(&[shard])).await.unwrap(),
        mine.len() as u64
    );
    assert_eq!(
        store.due_app_events(now, None, 100).await.unwrap().len(),
        40
    );
}
on_both_backends!(shards_restrict_a_node_to_its_users);

async fn events_older_than_72_hours_go(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let store = store(&db, true).await;
    let now = Utc::now();
    let long_ago = now - Duration::hours(73);
    put(&store, &connected("old", long_ago), long_ago).await;
    put(&store, &connected("delivered", long_ago), long_ago).await;
    let delivered = store.due_app_events(now, None, 10).await.unwrap();
    let delivered = delivered.iter().find(|e| e.user_id == "delivered").unwrap();
    store
        .app_event_delivered(delivered.id, long_ago + Duration::minutes(1))
        .await
        .unwrap();
    assert!(
        store
            .record_app_event(&connected("new", now))
            .await
            .unwrap()
    );

    // 71 hours on, nothing is old enough.
    let early = long_ago + Duration::hours(71);
    assert!(
        store
            .expire_app_events(early, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let dropped = store.expire_app_events(now, None, 10).await.unwrap();
    assert_eq!(
        dropped
            .iter()
            .map(|e| e.user_id.as_str())
            .collect::<Vec<_>>(),
        ["old"]
    );
    assert!(store.recent_app_events("old", 10).await.unwrap().is_empty());
    assert!(
        store
            .recent_app_events("delivered", 10)
            .await
            .unwrap()
            .is_empty(),
        "delivered rows are forgotten 72 hours after their delivery"
    );
    assert_eq!(store.recent_app_events("new", 10).await.unwrap().len(), 1);
    assert!(
        store
            .expire_app_events(now, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}
on_both_backends!(events_older_than_72_hours_go);

async fn an_event_is_stored_with_its_change_or_not_at_all(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let store = store(&db, true).await;
    let now = Utc::now();
    let txn = store.connection().begin().await.unwrap();
    assert!(
        store
            .insert_app_event(&txn, &connected("alice", now), now)
            .await
            .unwrap()
    );
    txn.rollback().await.unwrap();
    assert!(
        store
            .recent_app_events("alice", 10)
            .await
            .unwrap()
            .is_empty()
    );
    let txn = store.connection().begin().await.unwrap();
    store
        .insert_app_event(&txn, &connected("alice", now), now)
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(store.recent_app_events("alice", 10).await.unwrap().len(), 1);

    // Off (APP_EVENTS_URL unset): nothing is stored, in a transaction or not.
    let off = store.clone().with_app_events(false);
    assert!(!off.record_app_event(&connected("bob", now)).await.unwrap());
    assert!(
        !off.insert_app_event(off.connection(), &connected("bob", now), now)
            .await
            .unwrap()
    );
    assert!(store.recent_app_events("bob", 10).await.unwrap().is_empty());
}
on_both_backends!(an_event_is_stored_with_its_change_or_not_at_all);
