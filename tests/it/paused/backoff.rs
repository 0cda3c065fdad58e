//! Waits after failures, on a paused clock: a refresh Google keeps failing backs off doubling
//! (less up to a fifth of jitter) and parks through the long waits without starting over; a
//! crashing actor is restarted after a doubling wait, and a quiet minute resets it.

use std::time::Duration;

use tokenwarden_sandbox::RefreshMode;

use super::{PausedClock, hourly, paused_test, real_wait, until};
use crate::support::{Backend, Options, TestApp};

/// `REFRESH_RETRY_BASE_MS` of the test configuration.
const RETRY_BASE: Duration = Duration::from_millis(100);
/// `RESTART_BACKOFF`'s first wait.
const RESTART_BASE: Duration = Duration::from_millis(100);
/// How much earlier or later than its plan the test looks for an attempt.
const SLACK: Duration = Duration::from_millis(10);

async fn status_of(t: &TestApp, user: &str) -> String {
    let actor = t.actor(user).await;
    let status = actor.as_ref().and_then(|a| a["status"].as_str());
    status.unwrap_or_default().to_string()
}

/// Moves the clock to just before the earliest the next event may come and checks it has not,
/// then to just after the latest and waits for it.
async fn next_within<F, Fut>(
    clock: &PausedClock,
    earliest: Duration,
    latest: Duration,
    happened: F,
) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    clock.advance(earliest - SLACK).await;
    real_wait(Duration::from_millis(30)).await;
    assert!(!happened().await, "came before {earliest:?}");
    clock.advance(latest - earliest + 2 * SLACK).await;
    until(happened).await
}

/// Google answers 500 to every refresh: the retries wait 0.1, 0.2, 0.4 ... 12.8 s (each less
/// up to 20 %), the user parks while its retry is more than 10 s away, resumes the doubling
/// when woken instead of starting over, and refreshes once Google is back, without ever
/// being asked to reconnect.
async fn a_failing_refresh_backs_off_doubling_and_parks_through_long_waits(
    backend: Backend,
    clock: PausedClock,
) {
    let t = TestApp::spawn_with(hourly(backend)).await;
    t.connect("iris").await;
    t.google.set_refresh_mode(RefreshMode::Error500);
    // The sandbox counts a failure before the actor has planned its retry: wait for both.
    let failed = |count: u64| {
        let t = &t;
        move || async move {
            t.google.stats().refresh_failures_injected == count
                && matches!(
                    status_of(t, "iris").await.as_str(),
                    "retrying" | "hibernating"
                )
        }
    };
    let (status, _) = t
        .admin(reqwest::Method::POST, "/admin/actors/iris/refresh")
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    assert!(until(failed(1)).await, "the forced refresh fails");

    for attempt in 1..=8u64 {
        let wait = RETRY_BASE * 2u32.pow(attempt as u32 - 1);
        if wait > Duration::from_secs(10) {
            let parked = until(|| async { status_of(&t, "iris").await == "hibernating" }).await;
            assert!(parked, "parks while its retry is {wait:?} away");
        }
        let retried = next_within(&clock, wait.mul_f64(0.8), wait, failed(attempt + 1)).await;
        assert!(retried, "retry {attempt} within {wait:?}");
    }
    assert_eq!(t.status("iris").await["needs_reconnect"], false);

    t.google.set_refresh_mode(RefreshMode::Ok);
    let wait = RETRY_BASE * 2u32.pow(8);
    let refreshed = next_within(&clock, wait.mul_f64(0.8), wait, || async {
        t.actor("iris")
            .await
            .is_some_and(|a| a["refresh_count"] == 1 && a["status"] != "retrying")
    })
    .await;
    assert!(refreshed, "refreshed at the next retry once Google is back");
    let status = t.status("iris").await;
    assert_eq!(status["connected"], true);
    assert_eq!(status["reconnect_reason"], serde_json::Value::Null);
    clock.thaw();
    t.shutdown().await;
}
paused_test!(a_failing_refresh_backs_off_doubling_and_parks_through_long_waits);

/// A crashing actor waits 100, 200, 400, 800 ms before each restart (shown as `retrying`
/// meanwhile), a minute without a crash starts the streak over, and the restarted actor keeps
/// its refresh plan and refreshes on it.
async fn a_crashing_actor_restarts_after_a_doubling_wait(backend: Backend, clock: PausedClock) {
    let t = TestApp::spawn_with(Options {
        // Live all the time: a crash is injected into a running actor.
        hibernate_after_secs: 86_400,
        ..hourly(backend)
    })
    .await;
    t.connect("zoe").await;
    let plan = t.actor("zoe").await.expect("actor")["next_refresh_at"].clone();
    let restarted = |count: u64| {
        let t = &t;
        move || async move {
            t.actor("zoe")
                .await
                .is_some_and(|a| a["restarts"] == count && a["status"] != "retrying")
        }
    };
    for (crash, wait) in [100u64, 200, 400, 800].into_iter().enumerate() {
        let crash = crash as u64 + 1;
        assert!(
            t.app().supervisor.inject_crash("zoe").await,
            "crash {crash}"
        );
        let waiting = until(|| async {
            t.actor("zoe")
                .await
                .is_some_and(|a| a["restarts"] == crash && a["status"] == "retrying")
        })
        .await;
        assert!(waiting, "waiting out the backoff is shown");
        let wait = Duration::from_millis(wait);
        assert!(
            next_within(&clock, wait, wait, restarted(crash)).await,
            "restarted {wait:?} after crash {crash}"
        );
    }

    clock.advance(Duration::from_secs(61)).await;
    assert!(t.app().supervisor.inject_crash("zoe").await);
    assert!(
        next_within(&clock, RESTART_BASE, RESTART_BASE, restarted(5)).await,
        "a quiet minute starts the streak over"
    );
    assert_eq!(t.actor("zoe").await.unwrap()["next_refresh_at"], plan);
    clock
        .advance_to(super::time_of(&plan) + super::SHOWN_SECOND)
        .await;
    let refreshing = until(|| async {
        t.actor("zoe")
            .await
            .is_some_and(|a| a["refresh_count"] == 1)
    })
    .await;
    assert!(refreshing, "the restarted actor refreshes on its plan");
    clock.thaw();
    t.shutdown().await;
}
paused_test!(a_crashing_actor_restarts_after_a_doubling_wait);
