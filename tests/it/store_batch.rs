//! The batched hot path of the store (`src/store/batch.rs`): many users refreshing and
//! acknowledged at once share one statement per batch, and each still gets the answer the
//! single-row, version-conditional write would have given. Real SQLite file and PostgreSQL.

use chrono::{Duration, Utc};
use futures::future::join_all;
use sea_orm::{ConnectionTrait, Database};
use secrecy::{ExposeSecret, SecretString};
use tokenwarden::store::RefreshAnswer;
use tokenwarden::{
    crypto::TokenCipher,
    ids::{Epoch, TokenVersion, UserId},
    store::{BulkUser, Expected, Store, cluster::Fence},
};

use crate::{
    on_both_backends,
    support::{Backend, TestDatabase},
};

const USERS: usize = 40;

fn user(i: usize) -> UserId {
    UserId::from(format!("batch-user-{i:03}"))
}

fn v(version: i64) -> TokenVersion {
    TokenVersion::new(version)
}

async fn seeded_store(db: &TestDatabase) -> Store {
    let store = Store::connect(&db.url, TokenCipher::new(&[7u8; 32]))
        .await
        .expect("store");
    let users: Vec<BulkUser> = (0..USERS)
        .map(|i| BulkUser {
            user_id: user(i),
            access_token: format!("old-access-{i}"),
            refresh_token: format!("old-refresh-{i}"),
            expires_at: Utc::now() + Duration::minutes(5),
            scope: "calendar".into(),
        })
        .collect();
    store.insert_users(&users).await.expect("seed");
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
            let expected = v(if i % 2 == 0 { 1 } else { 7 });
            let access = SecretString::from(format!("new-access-{i}"));
            let rotated = (i % 4 == 0).then(|| SecretString::from(format!("new-refresh-{i}")));
            let scope = (i % 4 == 2).then_some("calendar openid");
            store
                .save_refreshed(
                    &user(i),
                    Expected {
                        version: expected,
                        fence: None,
                    },
                    RefreshAnswer {
                        access_token: &access,
                        rotated_refresh_token: rotated.as_ref(),
                        expires_at: expiry,
                        scope,
                        authorization_end: None,
                        token_ids: None,
                    },
                )
                .await
        }
    });
    let answers = join_all(saves).await;
    for (i, answer) in answers.into_iter().enumerate() {
        let change = answer.expect("save");
        if i % 2 == 0 {
            let change = change.unwrap_or_else(|| panic!("user {i} at its version was not saved"));
            assert_eq!(change.version, v(2));
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
            assert_eq!((row.token_version, row.refresh_count), (v(2), 1));
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
            assert_eq!((row.token_version, row.refresh_count), (v(1), 0));
            assert_eq!(row.sync_state, "synced");
            assert_eq!(refresh, format!("old-refresh-{i}"));
        }
    }
    // Acknowledgements, batched too: only one for the row's current version counts.
    let acks = (0..USERS).map(|i| {
        let store = store.clone();
        async move {
            let version = v(if i % 2 == 0 { 2 } else { 5 });
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
        let acknowledged = v(if i % 2 == 0 { 2 } else { 1 });
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
    let save = |i: usize, fence: Option<Fence>| {
        let store = store.clone();
        async move {
            let access = SecretString::from(format!("mixed-access-{i}"));
            let expected = Expected {
                version: v(1),
                fence,
            };
            store
                .save_refreshed(&user(i), expected, answer(&access, expiry))
                .await
                .expect("save")
                .is_some()
        }
    };
    let ack = |i: usize, fence: Option<Fence>| {
        let store = store.clone();
        async move { store.mark_synced(&user(i), v(1), fence).await.expect("ack") }
    };
    let stale = || {
        Some(Fence {
            epoch: Epoch::new(999),
            owner_token: "no-such-process".into(),
        })
    };
    let refreshes = (0..10).map(|i| save(i, None));
    let fenced = (20..24).map(|i| save(i, stale()));
    let acks = (0..5).chain(10..20).map(|i| ack(i, None));
    let fenced_acks = (24..28).map(|i| ack(i, stale()));
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
                assert_eq!(row.token_version, v(2), "user {i} refreshed");
                assert_eq!(
                    row.sync_state, "pending",
                    "user {i}: its new version is unsent"
                );
                assert_eq!(row.synced_version, v(1), "user {i}");
            }
            10..20 => assert_eq!(row.sync_state, "synced", "user {i} acknowledged"),
            _ => {
                assert_eq!(row.token_version, v(1), "user {i} untouched by the fence");
                assert_eq!(
                    row.access_token.as_deref(),
                    Some(&*format!("old-access-{i}"))
                );
            }
        }
    }
}
on_both_backends!(mixed_batches_keep_every_condition);

/// A database failover to an asynchronous standby can lose the claim that took an epoch, and
/// the same epoch is then issued again to another process. Each refresh-path write (the
/// refreshed tokens, the needs-reconnect flag, the sync records) is refused when the lease row
/// has the writer's epoch but names another process, and written when it names the writer.
async fn the_fence_checks_the_owner_with_the_epoch(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let store = seeded_store(&db).await;
    let sql = Database::connect(db.url.as_str()).await.expect("connect");
    let users: Vec<UserId> = (0..4).map(user).collect();
    for id in &users {
        // The row as the new primary has it: this epoch, claimed by another process.
        sql.execute_unprepared(&format!(
            "UPDATE shard_leases SET epoch = 5, owner_node = 'other-node', \
             owner_token = 'other-process' WHERE shard = {}",
            store.shard_of(id)
        ))
        .await
        .expect("lease row");
    }
    let fence = |owner: &str| {
        Some(Fence {
            epoch: Epoch::new(5),
            owner_token: owner.into(),
        })
    };
    let expiry = Utc::now() + Duration::minutes(60);
    let access = SecretString::from("fenced-access".to_string());
    let save = |id: &str, owner: &str| {
        let expected = Expected {
            version: v(1),
            fence: fence(owner),
        };
        let (store, id, access) = (store.clone(), id.to_string(), access.clone());
        async move {
            store
                .save_refreshed(&id, expected, answer(&access, expiry))
                .await
                .expect("save")
        }
    };
    let revoke = |id: &str, owner: &str| {
        let (store, id, fence) = (store.clone(), id.to_string(), fence(owner));
        async move {
            store
                .mark_needs_reconnect(
                    &id,
                    v(1),
                    fence,
                    tokenwarden::store::ReconnectReason::Revoked,
                )
                .await
                .expect("revoke")
        }
    };
    // Every write sets `updated_at`, so whole rows show whether anything was written.
    let rows = |store: Store, users: Vec<UserId>| async move {
        let mut rows = Vec::new();
        for id in &users {
            rows.push(store.user(id).await.expect("read").expect("row"));
        }
        rows
    };

    let before = rows(store.clone(), users.clone()).await;
    assert!(save(&users[0], "this-process").await.is_none());
    assert!(revoke(&users[1], "this-process").await.is_none());
    store
        .mark_sync_failed(&users[2], v(1), "refused", fence("this-process"))
        .await
        .expect("failed");
    store
        .mark_synced(&users[3], v(1), fence("this-process"))
        .await
        .expect("ack");
    store
        .mark_sync_skipped(&users[3], v(1), fence("this-process"))
        .await
        .expect("skipped");
    assert_eq!(
        rows(store.clone(), users.clone()).await,
        before,
        "no write under another process's lease"
    );

    // The process the row names writes.
    assert!(save(&users[0], "other-process").await.is_some());
    assert!(revoke(&users[1], "other-process").await.is_some());
    store
        .mark_sync_failed(&users[2], v(1), "failed", fence("other-process"))
        .await
        .expect("failed");
    let attempts = store.user(&users[2]).await.unwrap().unwrap().sync_attempts;
    assert_eq!(attempts, 1, "the owner's failure record counts");
}
on_both_backends!(the_fence_checks_the_owner_with_the_epoch);

/// An acknowledgement writes only its narrow `sync_acks` row (issue 24): the `users` row,
/// tokens and all, stays as it was; the user reads as in sync and drops out of the unfinished
/// pushes that a restart resumes; a stale acknowledgement changes nothing; a resync of every
/// user brings it back.
async fn an_acknowledgement_leaves_the_users_row_alone(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let store = seeded_store(&db).await;
    let id = user(0);
    let access = SecretString::from("acked-access".to_string());
    let expected = Expected {
        version: v(1),
        fence: None,
    };
    let expiry = Utc::now() + Duration::minutes(60);
    let saved = store.save_refreshed(&id, expected, answer(&access, expiry));
    assert!(saved.await.expect("save").is_some());
    let unfinished = || async {
        let ids = store.unfinished_syncs(None, 1000, false, None).await;
        ids.expect("unfinished").contains(&id)
    };
    let sync = || async {
        let infos = store.sync_infos(std::slice::from_ref(&id)).await;
        let info = infos.expect("sync infos").remove(&id).expect("a row");
        (info.state.as_str(), info.version)
    };
    assert!(unfinished().await, "the refresh's push is unfinished");
    assert_eq!(sync().await, ("pending", v(1)));

    let before = store.user(&id).await.unwrap().unwrap();
    store.mark_synced(&id, v(2), None).await.expect("ack");
    let after = store.user(&id).await.unwrap().unwrap();
    assert_eq!(
        after, before,
        "the acknowledgement left the users row alone"
    );
    assert_eq!(sync().await, ("synced", v(2)));
    assert!(!unfinished().await, "nothing to resume after a restart");
    store.mark_synced(&id, v(1), None).await.expect("stale ack");
    assert_eq!(
        sync().await,
        ("synced", v(2)),
        "a stale acknowledgement is ignored"
    );

    assert!(store.queue_resync_all().await.expect("resync") >= 1);
    assert_eq!(sync().await.0, "pending");
    assert!(unfinished().await, "a resync pushes it again");
}
on_both_backends!(an_acknowledgement_leaves_the_users_row_alone);

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

/// A plain refresh answer: a new access token, nothing else changed.
fn answer(
    access: &secrecy::SecretString,
    expiry: chrono::DateTime<chrono::Utc>,
) -> RefreshAnswer<'_> {
    RefreshAnswer {
        access_token: access,
        rotated_refresh_token: None,
        expires_at: expiry,
        scope: None,
        authorization_end: None,
        token_ids: None,
    }
}

/// Seeded users carry their refresh token's identifiers, as a consent leaves them, so a load
/// test's first refreshes write only what a refresh changes (the identifiers are indexed: a
/// write of them cannot stay on its page, which made a third of the measured WAL).
async fn seeded_users_are_found_by_their_refresh_token(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let store = seeded_store(&db).await;
    let ids = tokenwarden::token_ids::RefreshTokenIds::of("old-refresh-3");
    for subject in [
        tokenwarden::store::RiscSubject::TokenHash(ids.hash),
        tokenwarden::store::RiscSubject::TokenPrefixHash(ids.prefix_hash),
    ] {
        let found = store.risc_user(&subject).await.expect("lookup");
        assert_eq!(found, Some((user(3).to_string(), true)));
    }
}
on_both_backends!(seeded_users_are_found_by_their_refresh_token);
