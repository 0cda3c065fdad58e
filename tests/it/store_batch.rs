//! The batched hot path of the store (`src/store/batch.rs`): many users refreshing and
//! acknowledged at once share one statement per batch, and each still gets the answer the
//! single-row, version-conditional write would have given. Real SQLite file and PostgreSQL.

use chrono::{Duration, Utc};
use futures::future::join_all;
use secrecy::{ExposeSecret, SecretString};
use tokenwarden::{
    crypto::TokenCipher,
    store::{Expected, SeedUser, Store},
};

use crate::{
    on_both_backends,
    support::{Backend, TestDatabase},
};

const USERS: usize = 40;

fn user(i: usize) -> String {
    format!("batch-user-{i:03}")
}

async fn seeded_store(db: &TestDatabase) -> Store {
    let store = Store::connect(&db.url, TokenCipher::new(&[7u8; 32]))
        .await
        .expect("store");
    let users: Vec<SeedUser> = (0..USERS)
        .map(|i| SeedUser {
            user_id: user(i),
            access_token: format!("old-access-{i}"),
            refresh_token: format!("old-refresh-{i}"),
            expires_at: Utc::now() + Duration::minutes(5),
            scope: "calendar".into(),
        })
        .collect();
    store.seed_users(&users).await.expect("seed");
    store
}

/// Even users save at their current version (1); odd users claim a version that a newer
/// change has moved past, so their answer must be void and their row untouched.
async fn concurrent_saves_keep_the_version_check(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let store = seeded_store(&db).await;
    let expiry = Utc::now() + Duration::minutes(60);
    let saves = (0..USERS).map(|i| {
        let store = store.clone();
        async move {
            let expected = if i % 2 == 0 { 1 } else { 7 };
            let access = SecretString::from(format!("new-access-{i}"));
            let rotated = (i % 4 == 0).then(|| SecretString::from(format!("new-refresh-{i}")));
            let scope = (i % 4 == 2).then_some("calendar openid");
            store
                .save_refreshed(
                    &user(i),
                    Expected {
                        version: expected,
                        epoch: None,
                    },
                    &access,
                    rotated.as_ref(),
                    expiry,
                    scope,
                )
                .await
        }
    });
    let answers = join_all(saves).await;
    for (i, answer) in answers.into_iter().enumerate() {
        let change = answer.expect("save");
        if i % 2 == 0 {
            let change = change.unwrap_or_else(|| panic!("user {i} at its version was not saved"));
            assert_eq!(change.version, 2);
            assert_eq!(change.token_expiry, Some(expiry));
        } else {
            assert!(change.is_none(), "user {i} with a stale version was saved");
        }
    }
    let rows = store.audit_page(None, 1000).await.expect("audit");
    assert_eq!(rows.len(), USERS);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.user_id, user(i));
        let credentials = store
            .refresh_credentials(&row.user_id)
            .await
            .expect("read")
            .expect("connected");
        let refresh = credentials.refresh_token.expose_secret().to_string();
        if i % 2 == 0 {
            assert_eq!(
                row.access_token.as_deref(),
                Some(&*format!("new-access-{i}"))
            );
            assert_eq!((row.token_version, row.refresh_count), (2, 1));
            assert_eq!(row.sync_state, "pending");
            let expected_refresh = if i % 4 == 0 {
                "new-refresh"
            } else {
                "old-refresh"
            };
            assert_eq!(refresh, format!("{expected_refresh}-{i}"));
            let stored = store.user(&row.user_id).await.unwrap().unwrap();
            let scope = if i % 4 == 2 {
                "calendar openid"
            } else {
                "calendar"
            };
            assert_eq!(stored.google_scope.as_deref(), Some(scope));
        } else {
            assert_eq!(
                row.access_token.as_deref(),
                Some(&*format!("old-access-{i}"))
            );
            assert_eq!((row.token_version, row.refresh_count), (1, 0));
            assert_eq!(row.sync_state, "synced");
            assert_eq!(refresh, format!("old-refresh-{i}"));
        }
    }
    // Acknowledgements, batched too: only one for the row's current version counts.
    let acks = (0..USERS).map(|i| {
        let store = store.clone();
        async move {
            let version = if i % 2 == 0 { 2 } else { 5 };
            store.mark_synced(&user(i), version, None).await
        }
    });
    for result in join_all(acks).await {
        result.expect("ack");
    }
    for (i, row) in store
        .audit_page(None, 1000)
        .await
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_eq!(row.sync_state, "synced", "user {i}");
        let acknowledged = if i % 2 == 0 { 2 } else { 1 };
        assert_eq!(row.synced_version, acknowledged, "user {i}");
    }
    // A user the database has never seen reads as absent, beside ones it has.
    let reads = join_all(["nobody", "batch-user-000"].map(|id| store.user(id))).await;
    assert!(reads[0].as_ref().unwrap().is_none());
    assert!(reads[1].as_ref().unwrap().is_some());
}
on_both_backends!(concurrent_saves_keep_the_version_check);

/// Refreshes and acknowledgements queued together share batches (on PostgreSQL, one
/// statement): users 0..10 refresh at their version, users 10..20 are acknowledged at theirs,
/// users 0..5 also get an acknowledgement of the version their refresh is leaving (void), and
/// users 20..24 write with an epoch their shard does not have (refused by the fence).
async fn mixed_batches_keep_every_condition(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let store = seeded_store(&db).await;
    let expiry = Utc::now() + Duration::minutes(60);
    let save = |i: usize, epoch: Option<i64>| {
        let store = store.clone();
        async move {
            let access = SecretString::from(format!("mixed-access-{i}"));
            let expected = Expected { version: 1, epoch };
            store
                .save_refreshed(&user(i), expected, &access, None, expiry, None)
                .await
                .expect("save")
                .is_some()
        }
    };
    let ack = |i: usize, epoch: Option<i64>| {
        let store = store.clone();
        async move { store.mark_synced(&user(i), 1, epoch).await.expect("ack") }
    };
    let refreshes = (0..10).map(|i| save(i, None));
    let fenced = (20..24).map(|i| save(i, Some(999)));
    let acks = (0..5).chain(10..20).map(|i| ack(i, None));
    let fenced_acks = (24..28).map(|i| ack(i, Some(999)));
    let (saved, refused, (), ()) = futures::join!(
        join_all(refreshes),
        join_all(fenced),
        async {
            join_all(acks).await;
        },
        async {
            join_all(fenced_acks).await;
        },
    );
    assert!(
        saved.iter().all(|s| *s),
        "every refresh at its version saved"
    );
    assert!(refused.iter().all(|s| !*s), "every fenced refresh refused");
    let rows = store.audit_page(None, 1000).await.expect("audit");
    for (i, row) in rows.iter().enumerate().take(28) {
        match i {
            0..10 => {
                assert_eq!(row.token_version, 2, "user {i} refreshed");
                assert_eq!(
                    row.sync_state, "pending",
                    "user {i}: its new version is unsent"
                );
                assert_eq!(row.synced_version, 1, "user {i}");
            }
            10..20 => assert_eq!(row.sync_state, "synced", "user {i} acknowledged"),
            _ => {
                assert_eq!(row.token_version, 1, "user {i} untouched by the fence");
                assert_eq!(
                    row.access_token.as_deref(),
                    Some(&*format!("old-access-{i}"))
                );
            }
        }
    }
}
on_both_backends!(mixed_batches_keep_every_condition);

/// sqlx 0.9.0 leaves Nagle's algorithm on, and a write batch longer than one TCP segment then
/// waits 40 ms for PostgreSQL's delayed ACK (`src/store/nodelay.rs`). Every connection the
/// store holds to the server, after it has served concurrent batches, has `TCP_NODELAY` set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_do_not_wait_for_delayed_acks() {
    if !crate::support::postgres_available().await {
        return;
    }
    let db = TestDatabase::create(Backend::Postgres).await;
    let store = seeded_store(&db).await;
    // Reads in two parallel batches and the writer's batch: more than one pooled connection.
    let reads = (0..USERS).map(|i| {
        let store = store.clone();
        async move { store.refresh_credentials(&user(i)).await.expect("read") }
    });
    assert!(join_all(reads).await.iter().all(Option::is_some));
    let port = url::Url::parse(&db.url)
        .expect("url")
        .port()
        .unwrap_or(5432);
    let (sockets, all_without_delay) = tokenwarden::store::database_sockets_without_delay(port);
    assert!(sockets >= 1, "the store holds no connection to port {port}");
    assert!(
        all_without_delay,
        "{sockets} connections to PostgreSQL, not all with TCP_NODELAY"
    );
}
