//! The refresh plan over hours of paused time: an idle actor parks, is woken for its refresh,
//! refreshes before the token expires and parks again; a time-limited grant ends at its end.

use std::time::Duration;

use super::{PausedClock, SHOWN_SECOND, hourly, paused_test, time_of, until};
use crate::support::{Backend, Options, TestApp};

async fn microservice_token(t: &TestApp, user: &str) -> Option<String> {
    let stored = t
        .microservice
        .stored(user)
        .await
        .expect("microservice store");
    stored.map(|s| s.access_token)
}

async fn status_of(t: &TestApp, user: &str) -> (String, i64) {
    let actor = t.actor(user).await.expect("the user's actor");
    let status = actor["status"].as_str().unwrap_or_default().to_string();
    (status, actor["refresh_count"].as_i64().unwrap_or(-1))
}

/// An actor whose refresh is 55 minutes away parks at once, stays parked (and Google is not
/// called) until just before its refresh, refreshes on time, before the token expires, pushes
/// the new token, parks again, and does the same an hour later; a message wakes it at once.
async fn idle_actors_hibernate_and_wake_for_their_refresh(backend: Backend, clock: PausedClock) {
    let t = TestApp::spawn_with(hourly(backend)).await;
    t.connect("hugo").await;
    let first_expiry = time_of(&t.status("hugo").await["token_expiry"]);
    let parked = until(|| async { status_of(&t, "hugo").await == ("hibernating".into(), 0) }).await;
    assert!(parked, "an actor whose refresh is 55 minutes away parks");
    let planned = time_of(&t.actor("hugo").await.unwrap()["next_refresh_at"]);
    assert_eq!(
        planned,
        first_expiry - chrono::Duration::seconds(300),
        "REFRESH_LEAD_SECS before expiry"
    );
    let first_token = microservice_token(&t, "hugo")
        .await
        .expect("pushed at connect");
    let metrics = t.metrics().await;
    let parked_gauge = "tokenwarden_actors_by_status{node=\"test-node\",status=\"hibernating\"} 1";
    assert!(metrics.contains(parked_gauge), "{metrics}");

    clock
        .advance_to(planned - chrono::Duration::seconds(10))
        .await;
    super::real_wait(Duration::from_millis(50)).await;
    assert_eq!(t.google.stats().refreshes, 0, "nothing before the plan");
    assert_eq!(status_of(&t, "hugo").await.0, "hibernating");

    clock.advance_to(planned + SHOWN_SECOND).await;
    let refreshed = until(|| async {
        microservice_token(&t, "hugo")
            .await
            .is_some_and(|token| token != first_token)
    })
    .await;
    assert!(refreshed, "woken, refreshed and pushed at the planned time");
    let actor = t.actor("hugo").await.unwrap();
    let refreshed_at = time_of(&actor["last_refresh_at"]);
    assert!(
        refreshed_at >= planned && refreshed_at <= planned + SHOWN_SECOND,
        "refreshed at {refreshed_at}, planned {planned}"
    );
    assert!(refreshed_at < first_expiry, "before the token expired");
    assert_eq!(t.google.stats().refreshes, 1);
    let parked_again =
        until(|| async { status_of(&t, "hugo").await == ("hibernating".into(), 1) }).await;
    assert!(parked_again, "parks again after the refresh");

    let second_plan = time_of(&t.actor("hugo").await.unwrap()["next_refresh_at"]);
    assert!(second_plan > refreshed_at + chrono::Duration::seconds(3000));
    clock.advance_to(second_plan + SHOWN_SECOND).await;
    let again = until(|| async { status_of(&t, "hugo").await.1 == 2 }).await;
    assert!(again, "the next hour's refresh");

    let (status, _) = t
        .admin(reqwest::Method::POST, "/admin/actors/hugo/refresh")
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    let woken = until(|| async { t.google.stats().refreshes == 3 }).await;
    assert!(
        woken,
        "a message wakes a parked actor at once, with the clock standing still"
    );
    clock.thaw();
    t.shutdown().await;
}
paused_test!(idle_actors_hibernate_and_wake_for_their_refresh);

/// A grant that ends before the token's first refresh ends at that moment, on the parked
/// user's deadline, without a call to Google: `needs_reconnect` with `authorization_expired`,
/// the microservice's copy deleted. (The sandbox Google keeps real time, so a refresh answer's
/// end would move with the paused clock: the refresh path's end is tested in `grant_life`.)
async fn a_time_limited_grant_ends_at_its_end_without_asking_google(
    backend: Backend,
    clock: PausedClock,
) {
    let t = TestApp::spawn_with(Options {
        grant_lifetime: Duration::from_secs(1800),
        ..hourly(backend)
    })
    .await;
    t.connect("gina").await;
    let end = time_of(&t.status("gina").await["authorization_expires_at"]);
    let left = (end - clock.now()).num_seconds();
    assert!(
        (1798..=1800).contains(&left),
        "ends in 30 minutes: {left} s"
    );
    let parked = until(|| async { status_of(&t, "gina").await.0 == "hibernating" }).await;
    assert!(parked, "parked until its end");

    clock.advance_to(end - chrono::Duration::seconds(1)).await;
    super::real_wait(Duration::from_millis(50)).await;
    assert_eq!(
        t.status("gina").await["connected"],
        true,
        "not before the end"
    );

    clock.advance_to(end + SHOWN_SECOND).await;
    let ended = until(|| async {
        let status = t.status("gina").await;
        status["needs_reconnect"] == true && status["reconnect_reason"] == "authorization_expired"
    })
    .await;
    assert!(ended, "ended at its end");
    let deleted = until(|| async { microservice_token(&t, "gina").await.is_none() }).await;
    assert!(deleted, "the microservice's copy is deleted");
    assert_eq!(t.google.stats().refreshes, 0, "no call to Google");
    clock.thaw();
    t.shutdown().await;
}
paused_test!(a_time_limited_grant_ends_at_its_end_without_asking_google);
