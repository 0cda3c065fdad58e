//! Proactive refresh: before expiry, saved first, pushed after; rotation; revocation.

use std::time::Duration;

use reqwest::Method;

use crate::{
    on_both_backends,
    support::{Backend, Options, TestApp, eventually},
};
use tokenwarden_sandbox::RefreshMode;

/// Tokens live 3 s and are refreshed 2 s before expiry: a refresh about every second.
fn short_lived(backend: Backend) -> Options {
    Options {
        backend,
        token_lifetime: Duration::from_secs(3),
        refresh_lead_secs: 2,
        ..Options::default()
    }
}

async fn microservice_access_token(t: &TestApp, user: &str) -> Option<String> {
    t.microservice
        .stored(user)
        .await
        .unwrap()
        .map(|s| s.access_token)
}

async fn refreshes_before_expiry_and_pushes(backend: Backend) {
    let t = TestApp::spawn_with(short_lived(backend)).await;
    t.connect("erin").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            microservice_access_token(&t, "erin").await.is_some()
        })
        .await
    );
    let first = microservice_access_token(&t, "erin").await.unwrap();
    let first_expiry = t.google.access_token_expires_at(&first).unwrap();

    let refreshed = eventually(Duration::from_secs(6), || async {
        microservice_access_token(&t, "erin")
            .await
            .is_some_and(|a| a != first)
    })
    .await;
    assert!(refreshed, "the microservice received a refreshed token");
    // Refreshed ahead of time: the first token had not expired when it was replaced.
    assert!(chrono::Utc::now() < first_expiry + chrono::Duration::seconds(1));
    let second = microservice_access_token(&t, "erin").await.unwrap();
    assert!(t.google.is_access_token_valid(&second));
    assert_eq!(
        t.stored_access_token("erin").await.as_deref(),
        Some(second.as_str())
    );

    let actor = t.actor("erin").await.unwrap();
    assert!(actor["refresh_count"].as_i64().unwrap() >= 1);
    assert!(actor["last_refresh_at"].is_string());
    assert!(actor["next_refresh_at"].is_string());
    // Google was never asked twice at once for the same user, and every refresh succeeded.
    assert_eq!(t.google.stats().refresh_failures_injected, 0);
    t.shutdown().await;
}
on_both_backends!(refreshes_before_expiry_and_pushes);

async fn rotated_refresh_token_is_stored_and_pushed(backend: Backend) {
    let t = TestApp::spawn_with(short_lived(backend)).await;
    t.google.set_rotation(true, Duration::from_millis(500));
    t.connect("frank").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            t.microservice.stored("frank").await.unwrap().is_some()
        })
        .await
    );
    let first = t
        .microservice
        .stored("frank")
        .await
        .unwrap()
        .unwrap()
        .refresh_token;
    let rotated = eventually(Duration::from_secs(8), || async {
        t.microservice
            .stored("frank")
            .await
            .unwrap()
            .is_some_and(|s| s.refresh_token != first)
    })
    .await;
    assert!(
        rotated,
        "the rotated refresh token reached the microservice"
    );
    // Keep refreshing past the grace period: every refresh must use the newest token.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = t.microservice.stored("frank").await.unwrap().unwrap();
    assert!(t.google.is_refresh_token_valid(&now.refresh_token));
    let stats = t.google.stats();
    assert!(stats.refreshes >= 2, "{stats:?}");
    assert_eq!(
        stats.stale_refresh_uses, 0,
        "no refresh used an outdated token: {stats:?}"
    );
    t.shutdown().await;
}
on_both_backends!(rotated_refresh_token_is_stored_and_pushed);

async fn invalid_grant_marks_needs_reconnect(backend: Backend) {
    let t = TestApp::spawn_with(short_lived(backend)).await;
    t.connect("gina").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            t.microservice.stored("gina").await.unwrap().is_some()
        })
        .await
    );
    let stored = t.microservice.stored("gina").await.unwrap().unwrap();
    assert!(
        t.google.revoke_grant_of(&stored.refresh_token),
        "user revokes access at Google"
    );

    let flagged = eventually(Duration::from_secs(6), || async {
        t.status("gina").await["needs_reconnect"] == true
    })
    .await;
    assert!(flagged);
    let status = t.status("gina").await;
    assert_eq!(status["connected"], false);
    assert!(status["token_expiry"].is_null());
    let actor = t.actor("gina").await.expect("actor listed");
    assert_eq!(actor["status"], "needs_reconnect");
    assert!(actor["next_refresh_at"].is_null());
    let deleted = eventually(Duration::from_secs(5), || async {
        t.microservice.stored("gina").await.unwrap().is_none()
            && t.microservice
                .received()
                .iter()
                .any(|r| r.method == "DELETE")
    })
    .await;
    assert!(deleted, "DELETE reached the microservice");
    assert!(
        t.microservice
            .received()
            .iter()
            .any(|r| r.method == "DELETE" && r.path == "/api/google-tokens/gina")
    );
    assert!(
        t.stored_access_token("gina").await.is_none(),
        "tokens cleared"
    );

    // Connecting again clears the flag and the actor resumes.
    t.connect("gina").await;
    let status = t.status("gina").await;
    assert_eq!(
        (
            status["connected"].clone(),
            status["needs_reconnect"].clone()
        ),
        (true.into(), false.into())
    );
    let resumed = eventually(Duration::from_secs(3), || async {
        t.actor("gina")
            .await
            .is_some_and(|a| a["status"] != "needs_reconnect")
    })
    .await;
    assert!(resumed);
    t.shutdown().await;
}
on_both_backends!(invalid_grant_marks_needs_reconnect);

#[tokio::test]
async fn transient_google_failures_retry_without_needs_reconnect() {
    let t = TestApp::spawn_with(short_lived(Backend::Sqlite)).await;
    t.connect("hank").await;
    t.google.set_refresh_mode(RefreshMode::Error500);
    let retrying = eventually(Duration::from_secs(5), || async {
        t.actor("hank")
            .await
            .is_some_and(|a| a["status"] == "retrying")
    })
    .await;
    assert!(retrying);
    // The second try comes 100 ms after the first (the backoff's numbers are unit-tested in
    // `retry`); a second is plenty to see it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(t.google.stats().refresh_failures_injected >= 2, "retried");
    assert_eq!(t.status("hank").await["needs_reconnect"], false);
    assert_eq!(t.status("hank").await["connected"], true);
    let before = t.google.stats().refreshes;
    t.google.set_refresh_mode(RefreshMode::Ok);
    let recovered = eventually(Duration::from_secs(5), || async {
        t.google.stats().refreshes > before
            && t.actor("hank")
                .await
                .is_some_and(|a| a["status"] == "active")
    })
    .await;
    assert!(recovered, "refreshed once Google came back");
    t.shutdown().await;
}

#[tokio::test]
async fn forced_refresh_is_accepted_and_happens() {
    let t = TestApp::spawn().await;
    t.connect("ivan").await;
    let before = t.google.stats().refreshes;
    let (status, _) = t.admin(Method::POST, "/admin/actors/ivan/refresh").await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    assert!(
        eventually(Duration::from_secs(5), || async {
            t.google.stats().refreshes > before
        })
        .await
    );
    let (status, _) = t.admin(Method::POST, "/admin/actors/nobody/refresh").await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);
    t.shutdown().await;
}
