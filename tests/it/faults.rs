//! Faults survived: the microservice down, flapping or hanging, Google failing or hanging, the
//! process killed with SIGKILL, the database locked, and a SIGTERM while a push is in flight.
//! Each test runs ~20 users with 3 s tokens refreshed 2 s before expiry (a refresh about every
//! second per user), injects the fault, ends it, and then checks that nothing was lost: every
//! user is still connected with a refresh token Google accepts, and the microservice holds
//! exactly the database's access token for everyone. Each prints one `FAULT ...` line with its
//! measurements (copied into docs/reliability.md).

use std::time::{Duration, Instant};

use reqwest::Method;
use secrecy::ExposeSecret;
use tokenwarden::{
    crypto::TokenCipher,
    store::{Store, SyncSnapshot},
};
use tokenwarden_sandbox::{FaultMode, ReferenceMicroservice, RefreshMode, SandboxGoogle};

use crate::{
    on_both_backends,
    process::{Served, client, connect_at, free_port, sandboxes},
    support::{
        Backend, ENCRYPTION_KEY, Options, TestApp, TestDatabase, eventually, inconsistent_users,
    },
};

/// Users per fault.
const USERS: usize = 20;
/// Longest a recovery may take before the test fails.
const RECOVERY_LIMIT: Duration = Duration::from_secs(15);

fn burst(backend: Backend) -> Options {
    Options {
        backend,
        token_lifetime: Duration::from_secs(3),
        refresh_lead_secs: 2,
        ..Options::default()
    }
}

fn user_ids(prefix: &str) -> Vec<String> {
    (0..USERS).map(|i| format!("{prefix}-{i:02}")).collect()
}

async fn connect_all(t: &TestApp, users: &[String]) {
    for user in users {
        t.connect(user).await;
    }
}

/// Whether every user holds a token issued after [`calm_down`], so no refresh is due soon.
async fn settled(store: &Store, users: &[String]) -> bool {
    let soon = chrono::Utc::now() + chrono::Duration::minutes(10);
    for user in users {
        let expiry = store
            .user(user)
            .await
            .ok()
            .flatten()
            .and_then(|row| row.google_token_expiry);
        if expiry.is_none_or(|at| at < soon) {
            return false;
        }
    }
    true
}

/// Waits until the microservice holds the database's access token for every user (once the
/// system is at rest, see [`calm_down`]); returns how long that took.
async fn wait_consistent(t: &TestApp, users: &[String]) -> Duration {
    let started = Instant::now();
    let consistent = eventually(RECOVERY_LIMIT, || async {
        inconsistent_users(t, users).await.is_empty()
            && (t.google.controls().token_lifetime_secs < 3600
                || settled(&t.app().store, users).await)
    })
    .await;
    assert!(
        consistent,
        "still inconsistent after {RECOVERY_LIMIT:?}: {:?}",
        inconsistent_users(t, users).await
    );
    started.elapsed()
}

/// Ends the refresh churn so the system can come to rest: tokens issued from now on live an
/// hour, so each actor refreshes once more (within a second) and then waits.
fn calm_down(google: &SandboxGoogle) {
    google.set_token_lifetime(Duration::from_secs(3600));
}

/// Nothing lost: every user is connected, not flagged for reconnection, holds a refresh token
/// Google accepts and an access token Google issued and still honours; the microservice holds
/// the same access token; no refresh ever used a superseded refresh token. Returns
/// (tokens lost, syncs lost), both asserted zero.
async fn assert_nothing_lost(t: &TestApp, users: &[String]) -> (usize, usize) {
    let mut tokens_lost = Vec::new();
    for user in users {
        let status = t.status(user).await;
        let snapshot = t.app().store.sync_snapshot(user).await.unwrap();
        let usable = match &snapshot {
            Some(SyncSnapshot::Connected { tokens, .. }) => {
                t.google
                    .is_refresh_token_valid(tokens.refresh_token.expose_secret())
                    && t.google
                        .is_access_token_valid(tokens.access_token.expose_secret())
            }
            _ => false,
        };
        if !usable || status["connected"] != true || status["needs_reconnect"] != false {
            tokens_lost.push(user.clone());
        }
    }
    let syncs_lost = inconsistent_users(t, users).await;
    assert!(tokens_lost.is_empty(), "tokens lost: {tokens_lost:?}");
    assert!(syncs_lost.is_empty(), "syncs lost: {syncs_lost:?}");
    assert_eq!(t.google.stats().stale_refresh_uses, 0);
    assert_in_order(t, users);
    (tokens_lost.len(), syncs_lost.len())
}

/// Per user, the pushes the microservice accepted carry expiries that never go backwards: it
/// never took an older token after a newer one.
fn assert_in_order(t: &TestApp, users: &[String]) {
    let received = t.microservice.received();
    for user in users {
        let expiries: Vec<String> = received
            .iter()
            .filter(|r| &r.user_id == user && r.method == "POST" && r.status == 200)
            .filter_map(|r| r.body.as_ref()?["token_expiry"].as_str().map(String::from))
            .collect();
        assert!(!expiries.is_empty(), "{user} was pushed");
        assert!(
            expiries.windows(2).all(|w| w[0] <= w[1]),
            "{user}'s pushes went back in time: {expiries:?}"
        );
    }
}

async fn sync_states(t: &TestApp, users: &[String]) -> Vec<String> {
    let mut states = Vec::new();
    for user in users {
        states.push(
            t.status(user).await["sync"]["state"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
    }
    states
}

async fn actors_with_status(t: &TestApp, status: &str) -> usize {
    let (_, list) = t.admin(Method::GET, "/admin/actors?limit=1000").await;
    list["actors"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|a| a["status"] == status).count())
}

async fn microservice_down_during_a_refresh_burst(backend: Backend) {
    let t = TestApp::spawn_with(burst(backend)).await;
    let users = user_ids("down");
    connect_all(&t, &users).await;
    wait_consistent(&t, &users).await;
    let before = t.google.stats().refreshes;

    let outage = Duration::from_secs(3);
    t.microservice.stop().await;
    tokio::time::sleep(outage).await;
    let refreshed = t.google.stats().refreshes - before;
    assert!(refreshed >= USERS as u64, "refreshes went on: {refreshed}");
    let waiting = sync_states(&t, &users)
        .await
        .iter()
        .filter(|s| *s == "failed" || *s == "pending")
        .count();
    assert!(waiting > 0, "pushes are waiting for the microservice");

    calm_down(&t.google);
    t.microservice.restart().await.unwrap();
    let recovery = wait_consistent(&t, &users).await;
    let (tokens_lost, syncs_lost) = assert_nothing_lost(&t, &users).await;
    eprintln!(
        "FAULT microservice_down backend={backend:?} lasted={outage:?} users={USERS} \
         refreshes_during={refreshed} pushes_waiting={waiting} tokens_lost={tokens_lost} \
         syncs_lost={syncs_lost} recovery={recovery:?}"
    );
    t.shutdown().await;
}
on_both_backends!(microservice_down_during_a_refresh_burst);

async fn microservice_flapping_during_refresh_bursts(backend: Backend) {
    let t = TestApp::spawn_with(Options {
        microservice_timeout_ms: 300,
        ..burst(backend)
    })
    .await;
    let users = user_ids("flap");
    connect_all(&t, &users).await;
    wait_consistent(&t, &users).await;

    let phases = [
        (FaultMode::FlakyEveryOther, Duration::from_secs(3)),
        (FaultMode::ErrorRate(0.3), Duration::from_secs(3)),
        (FaultMode::Hang, Duration::from_secs(2)),
    ];
    let started = Instant::now();
    for (mode, lasts) in phases {
        t.microservice.set_mode(mode);
        tokio::time::sleep(lasts).await;
    }
    calm_down(&t.google);
    t.microservice.set_mode(FaultMode::Healthy);
    let lasted = started.elapsed();
    let recovery = wait_consistent(&t, &users).await;
    let injected = t
        .microservice
        .received()
        .iter()
        .filter(|r| r.injected_fault)
        .count();
    assert!(injected >= USERS, "faults were injected: {injected}");
    let (tokens_lost, syncs_lost) = assert_nothing_lost(&t, &users).await;
    eprintln!(
        "FAULT microservice_flapping backend={backend:?} lasted={lasted:?} users={USERS} \
         injected_failures={injected} tokens_lost={tokens_lost} syncs_lost={syncs_lost} \
         recovery={recovery:?}"
    );
    t.shutdown().await;
}
on_both_backends!(microservice_flapping_during_refresh_bursts);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_failing_or_hanging_on_refresh() {
    let t = TestApp::spawn_with(burst(Backend::Sqlite)).await;
    let users = user_ids("goog");
    connect_all(&t, &users).await;
    wait_consistent(&t, &users).await;

    let started = Instant::now();
    t.google.set_refresh_mode(RefreshMode::Error500);
    let retrying = eventually(Duration::from_secs(3), || async {
        actors_with_status(&t, "retrying").await > 0
    })
    .await;
    assert!(retrying, "actors back off and retry");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Google timing out (the test's Google timeout is 2 s).
    t.google.set_refresh_mode(RefreshMode::Hang);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        actors_with_status(&t, "needs_reconnect").await,
        0,
        "a transient failure never asks for a reconnect"
    );
    let injected = t.google.stats().refresh_failures_injected;
    assert!(injected >= USERS as u64, "{injected}");
    calm_down(&t.google);
    t.google.set_refresh_mode(RefreshMode::Ok);
    let lasted = started.elapsed();
    let back = Instant::now();
    // Every access token expired during the outage; each actor gets a new one.
    let refreshed = eventually(RECOVERY_LIMIT, || async {
        let mut all = true;
        for user in &users {
            all &= t
                .stored_access_token(user)
                .await
                .is_some_and(|a| t.google.is_access_token_valid(&a));
        }
        all
    })
    .await;
    assert!(refreshed, "every token refreshed once Google is back");
    wait_consistent(&t, &users).await;
    let recovery = back.elapsed();
    let (tokens_lost, syncs_lost) = assert_nothing_lost(&t, &users).await;
    let settled = eventually(Duration::from_secs(5), || async {
        actors_with_status(&t, "retrying").await == 0
    })
    .await;
    assert!(settled, "no actor left retrying");
    assert_eq!(actors_with_status(&t, "needs_reconnect").await, 0);
    eprintln!(
        "FAULT google_500_then_hang backend=Sqlite lasted={lasted:?} users={USERS} \
         refresh_failures={injected} tokens_lost={tokens_lost} syncs_lost={syncs_lost} \
         recovery={recovery:?}"
    );
    t.shutdown().await;
}

/// Holds the database so that no token can be saved: SQLite's write lock from another
/// connection, or an exclusive lock on `users` in PostgreSQL (never the shared server
/// itself: other tests use it).
async fn database_locked_for_a_few_seconds(backend: Backend) {
    use sea_orm::{ConnectionTrait, Database, TransactionTrait};
    let t = TestApp::spawn_with(burst(backend)).await;
    let users = user_ids("dblk");
    connect_all(&t, &users).await;
    wait_consistent(&t, &users).await;
    let readyz = || async {
        t.http
            .get(format!("{}/readyz", t.url))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(readyz().await, 200);
    let before = t.google.stats().refreshes;

    let locker = Database::connect(t.db.url.as_str()).await.unwrap();
    let txn = locker.begin().await.unwrap();
    let lock = match backend {
        Backend::Sqlite => "UPDATE users SET updated_at = updated_at WHERE 1 = 0",
        Backend::Postgres => "LOCK TABLE users IN ACCESS EXCLUSIVE MODE",
    };
    txn.execute_unprepared(lock).await.unwrap();
    let locked_at = Instant::now();
    let not_ready = eventually(Duration::from_secs(2), || async { readyz().await == 503 }).await;
    assert!(
        not_ready,
        "/readyz says 503 while the database cannot take writes"
    );
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(locked_at.elapsed())).await;
    txn.rollback().await.unwrap();
    let lasted = locked_at.elapsed();
    let released = Instant::now();
    let ready = eventually(Duration::from_secs(5), || async { readyz().await == 200 }).await;
    assert!(ready, "/readyz says 200 again by itself");
    let ready_after = released.elapsed();
    calm_down(&t.google);
    let recovery = wait_consistent(&t, &users).await + ready_after;
    let (tokens_lost, syncs_lost) = assert_nothing_lost(&t, &users).await;
    let refreshed = t.google.stats().refreshes - before;
    assert!(refreshed >= USERS as u64, "refreshes went on: {refreshed}");
    eprintln!(
        "FAULT database_locked backend={backend:?} lasted={lasted:?} users={USERS} \
         readyz_503_until_released=true ready_again_after={ready_after:?} \
         tokens_lost={tokens_lost} syncs_lost={syncs_lost} recovery={recovery:?}"
    );
    t.shutdown().await;
}
on_both_backends!(database_locked_for_a_few_seconds);

/// The database as the service sees it, opened from the test.
async fn open_store(db: &TestDatabase) -> Store {
    use base64::Engine;
    let key: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(ENCRYPTION_KEY)
        .unwrap()
        .try_into()
        .unwrap();
    Store::connect(&db.url, TokenCipher::new(&key))
        .await
        .unwrap()
}

/// Users whose stored refresh token Google refuses, or whose microservice copy is not the
/// database's.
async fn unfinished(
    store: &Store,
    google: &SandboxGoogle,
    microservice: &ReferenceMicroservice,
    users: &[String],
) -> (Vec<String>, Vec<String>) {
    let (mut unusable, mut unsynced) = (Vec::new(), Vec::new());
    for user in users {
        match store.sync_snapshot(user).await.unwrap() {
            Some(SyncSnapshot::Connected { tokens, .. }) => {
                if !google.is_refresh_token_valid(tokens.refresh_token.expose_secret()) {
                    unusable.push(user.clone());
                }
                let held = microservice
                    .stored(user)
                    .await
                    .unwrap()
                    .map(|s| s.access_token);
                if held.as_deref() != Some(tokens.access_token.expose_secret()) {
                    unsynced.push(user.clone());
                }
            }
            _ => {
                unusable.push(user.clone());
                unsynced.push(user.clone());
            }
        }
    }
    (unusable, unsynced)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_refreshes_and_syncs() {
    let (google, microservice) = sandboxes(Duration::from_secs(3)).await;
    // Rotating refresh tokens make a kill between Google's answer and the save dangerous:
    // the rotated token is lost, and only the old one's grace period saves the user.
    google.set_rotation(true, Duration::from_secs(30));
    // Pushes and refreshes take a while, so some are in flight when the process dies.
    microservice.set_latency(Duration::from_millis(500));
    google.set_latency(Duration::from_millis(200));
    let db = TestDatabase::create(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().await;
    let extra = [("REFRESH_LEAD_SECS", "2".to_string())];
    let mut served = Served::start(
        dir.path(),
        port,
        &db.url,
        ENCRYPTION_KEY,
        &google,
        &microservice,
        &extra,
    )
    .await;
    let http = client();
    let users = user_ids("kill");
    for user in &users {
        connect_at(&http, &served.url, user).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let store = open_store(&db).await;
    // Kill while pushes are unfinished (the state the database shows mid-flight).
    let busy = eventually(Duration::from_secs(5), || async {
        store
            .unfinished_syncs(None, 1000, false, None)
            .await
            .unwrap()
            .len()
            >= USERS / 4
    })
    .await;
    assert!(busy, "pushes were under way");
    let refreshes = google.stats().refreshes;
    assert!(refreshes > 0, "refreshes were running");
    served.signal("KILL");
    let status = served
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("killed");
    assert!(!status.success());
    let (_, unsynced_at_kill) = unfinished(&store, &google, &microservice, &users).await;
    let pending_at_kill = store
        .unfinished_syncs(None, 1000, false, None)
        .await
        .unwrap()
        .len();

    calm_down(&google);
    microservice.set_latency(Duration::ZERO);
    google.set_latency(Duration::ZERO);
    let restarted = Instant::now();
    let served = Served::start(
        dir.path(),
        port,
        &db.url,
        ENCRYPTION_KEY,
        &google,
        &microservice,
        &extra,
    )
    .await;
    let recovered = eventually(RECOVERY_LIMIT, || async {
        let (unusable, unsynced) = unfinished(&store, &google, &microservice, &users).await;
        unusable.is_empty() && unsynced.is_empty() && settled(&store, &users).await
    })
    .await;
    let recovery = restarted.elapsed();
    let (unusable, unsynced) = unfinished(&store, &google, &microservice, &users).await;
    assert!(
        recovered,
        "after restart: unusable refresh tokens {unusable:?}, unsynced {unsynced:?}\n{}",
        served.output()
    );
    assert_eq!(google.stats().stale_refresh_uses, 0);
    eprintln!(
        "FAULT sigkill backend=Sqlite users={USERS} refreshes_before_kill={refreshes} \
         pushes_unfinished_at_kill={pending_at_kill} microservice_behind_at_kill={} \
         tokens_lost={} syncs_lost={} recovery_after_restart={recovery:?}",
        unsynced_at_kill.len(),
        unusable.len(),
        unsynced.len()
    );
    drop(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_push_in_flight_finish() {
    let (google, microservice) = sandboxes(Duration::from_secs(3600)).await;
    let db = TestDatabase::create(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().await;
    let mut served = Served::start(
        dir.path(),
        port,
        &db.url,
        ENCRYPTION_KEY,
        &google,
        &microservice,
        &[],
    )
    .await;
    let http = client();
    connect_at(&http, &served.url, "term-user").await;
    let store = open_store(&db).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            unfinished(&store, &google, &microservice, &["term-user".into()])
                .await
                .1
                .is_empty()
        })
        .await
    );
    // A forced refresh whose push takes a second: SIGTERM arrives while it is in flight.
    microservice.set_latency(Duration::from_secs(1));
    let refreshes = google.stats().refreshes;
    let forced = http
        .post(format!("{}/admin/actors/term-user/refresh", served.url))
        .bearer_auth(crate::support::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(forced.status(), 202);
    assert!(
        eventually(Duration::from_secs(3), || async {
            google.stats().refreshes > refreshes
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pushed_before_term = microservice
        .received()
        .iter()
        .filter(|r| r.user_id == "term-user")
        .count();
    let signalled = Instant::now();
    served.signal("TERM");
    let status = served
        .wait_exit(Duration::from_secs(12))
        .await
        .expect("exited within the 10 s grace");
    let took = signalled.elapsed();
    assert!(status.success(), "exit 0: {status:?}\n{}", served.output());
    // The push in flight was delivered and recorded before the exit, not left for later.
    let (unusable, unsynced) =
        unfinished(&store, &google, &microservice, &["term-user".into()]).await;
    assert!(
        unusable.is_empty() && unsynced.is_empty(),
        "{}",
        served.output()
    );
    let row = store.user("term-user").await.unwrap().unwrap();
    let sync = store
        .sync_infos(std::slice::from_ref(&row.user_id))
        .await
        .unwrap();
    assert_eq!(sync["term-user"].state, "synced", "{}", served.output());
    assert_eq!(sync["term-user"].version, row.token_version);
    assert!(
        microservice
            .received()
            .iter()
            .filter(|r| r.user_id == "term-user")
            .count()
            > pushed_before_term
    );
    eprintln!(
        "FAULT sigterm_during_push backend=Sqlite users=1 push_latency=1s exit=0 \
         shutdown_took={took:?} tokens_lost=0 syncs_lost=0"
    );
}
