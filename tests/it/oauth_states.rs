//! The callback's `state` (issue 19, L2): an invented one is answered from a read, without
//! SQLite's write lock, so an unauthenticated caller cannot park the one pooled connection
//! behind another writer; a real one is still taken once, even by two racing callbacks.

use std::time::{Duration, Instant};

use sea_orm::sqlx::{self, ConnectOptions as _, sqlite::SqliteConnectOptions};
use secrecy::SecretString;

use crate::{
    on_both_backends,
    support::{Backend, TestApp, location},
};

const INVALID_STATE: &str =
    "http://frontend.test/dashboard/integrations?google=error&reason=invalid_state";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invented_state_waits_for_no_write_lock() {
    let t = TestApp::spawn().await;
    let path = t.db.sqlite_path().expect("SQLite");
    // Another writer (say `rotate-key` in another process) holds SQLite's write lock.
    let mut holder = SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let started = Instant::now();
    // A delete would wait out the 10 s busy timeout (then fail with `server_error`).
    let answer = t
        .http
        .get(format!(
            "{}/api/integrations/google/callback?code=abc&state={}",
            t.url,
            "A".repeat(43)
        ))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("an invented state is answered while another writer holds the lock");
    assert_eq!(location(&answer), INVALID_STATE);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    // Once the lock is free, a real consent goes through.
    t.connect("after-lock").await;
    t.shutdown().await;
}

async fn racing_takes_of_one_state_succeed_once(backend: Backend) {
    let t = TestApp::on(backend).await;
    let store = &t.app().store;
    for round in 0..20 {
        let state = format!("race-{round}");
        store
            .create_oauth_state(
                &state,
                "racer",
                &SecretString::from("v".repeat(43)),
                None,
                chrono::Utc::now() + chrono::Duration::minutes(10),
            )
            .await
            .unwrap();
        let (a, b) = tokio::join!(
            store.take_oauth_state(&state),
            store.take_oauth_state(&state)
        );
        let taken = [a.unwrap(), b.unwrap()];
        assert_eq!(
            taken.iter().filter(|t| t.is_some()).count(),
            1,
            "round {round}: exactly one take wins"
        );
        let winner = taken.into_iter().flatten().next().unwrap();
        assert_eq!(winner.user_id, "racer");
        assert!(store.take_oauth_state(&state).await.unwrap().is_none());
    }
    t.shutdown().await;
}
on_both_backends!(racing_takes_of_one_state_succeed_once);
