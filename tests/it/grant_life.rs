//! The grant's whole life (docs/contract.md section 9) through the whole service: a time-limited
//! grant from the sandbox Google refreshes until its end and not at or after it, then the user
//! needs a reconnect with reason `authorization_expired` and the microservice gets its DELETE; a
//! refresh answer that moves the end moves the deadline; a reconnect with ongoing access clears it;
//! a revoked grant says `revoked`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use tokenwarden_sandbox::GrantSelector;

use crate::{
    on_both_backends,
    support::{Backend, Options, TestApp, eventually},
};

fn time_limited(backend: Backend, grant_lifetime: Duration) -> Options {
    Options {
        backend,
        token_lifetime: Duration::from_secs(2),
        refresh_lead_secs: 1,
        hibernate_after_secs: 1,
        grant_lifetime,
        ..Options::default()
    }
}

fn end_of(status: &serde_json::Value) -> Option<DateTime<Utc>> {
    status["authorization_expires_at"]
        .as_str()
        .map(|s| s.parse().expect("RFC 3339"))
}

async fn a_time_limited_grant_refreshes_until_its_end_then_needs_a_reconnect(backend: Backend) {
    let t = TestApp::spawn_with(time_limited(backend, Duration::from_secs(6))).await;
    let connected_at = Utc::now();
    t.connect("alice").await;
    let status = t.status("alice").await;
    assert_eq!(status["connected"], true);
    assert_eq!(status["reconnect_reason"], serde_json::Value::Null);
    let end = end_of(&status).expect("a time-limited grant shows its end");
    let lifetime = (end - connected_at).num_seconds();
    assert!(
        (4..=6).contains(&lifetime),
        "end {lifetime} s after connecting"
    );
    let (_, actor) = t.admin(Method::GET, "/admin/actors/alice").await;
    assert_eq!(
        actor["authorization_expires_at"],
        status["authorization_expires_at"]
    );

    let ended = eventually(Duration::from_secs(20), || async {
        t.status("alice").await["needs_reconnect"] == true
    })
    .await;
    assert!(ended, "the grant ended: {}", t.status("alice").await);
    assert!(Utc::now() >= end, "not before the end");
    let status = t.status("alice").await;
    assert_eq!(status["connected"], false);
    assert_eq!(status["reconnect_reason"], "authorization_expired");
    let stats = t.google.stats();
    assert!(stats.refreshes >= 2, "refreshes went on: {stats:?}");
    assert_eq!(
        stats.refreshes_after_grant_end, 0,
        "no refresh at or after the end"
    );
    // The microservice got its DELETE.
    let deleted = eventually(Duration::from_secs(10), || async {
        t.microservice.stored("alice").await.unwrap().is_none()
    })
    .await;
    assert!(deleted);
    assert!(
        t.microservice
            .received()
            .iter()
            .any(|r| r.method == "DELETE" && r.user_id == "alice")
    );
    let (_, actor) = t.admin(Method::GET, "/admin/actors/alice").await;
    assert_eq!(actor["status"], "needs_reconnect");
    assert_eq!(actor["reconnect_reason"], "authorization_expired");
    t.shutdown().await;
}
on_both_backends!(a_time_limited_grant_refreshes_until_its_end_then_needs_a_reconnect);

async fn a_moved_end_moves_the_deadline_and_ongoing_access_clears_it(backend: Backend) {
    let t = TestApp::spawn_with(time_limited(backend, Duration::from_secs(4))).await;
    t.connect("bob").await;
    let first_end = end_of(&t.status("bob").await).expect("an end");
    let email = t.status("bob").await["google_email"]
        .as_str()
        .unwrap()
        .to_string();
    // Google extends the grant; the next refresh answer says so.
    t.google
        .set_grant_end(
            &GrantSelector::Email(email.clone()),
            Some(Duration::from_secs(3600)),
        )
        .expect("the grant");
    let moved = eventually(Duration::from_secs(10), || async {
        end_of(&t.status("bob").await)
            .is_some_and(|end| end > first_end + chrono::Duration::minutes(30))
    })
    .await;
    assert!(
        moved,
        "the refresh answer moved the end: {}",
        t.status("bob").await
    );
    // Past the first end, still connected and refreshing.
    tokio::time::sleep_until(
        tokio::time::Instant::now()
            + (first_end - Utc::now() + chrono::Duration::seconds(2))
                .to_std()
                .unwrap_or_default(),
    )
    .await;
    let status = t.status("bob").await;
    assert_eq!(status["connected"], true, "{status}");
    assert_eq!(status["needs_reconnect"], false);
    // A reconnect with ongoing access clears the end.
    t.google.set_grant_lifetime(Duration::ZERO);
    t.connect("bob").await;
    let status = t.status("bob").await;
    assert_eq!(status["authorization_expires_at"], serde_json::Value::Null);
    let (_, actor) = t.admin(Method::GET, "/admin/actors/bob").await;
    assert_eq!(actor["authorization_expires_at"], serde_json::Value::Null);
    t.shutdown().await;
}
on_both_backends!(a_moved_end_moves_the_deadline_and_ongoing_access_clears_it);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_grant_reconnects_and_the_reason_goes() {
    let t = TestApp::spawn_with(time_limited(Backend::Sqlite, Duration::from_secs(3))).await;
    t.connect("carol").await;
    let ended = eventually(Duration::from_secs(15), || async {
        t.status("carol").await["reconnect_reason"] == "authorization_expired"
    })
    .await;
    assert!(ended);
    t.google.set_grant_lifetime(Duration::ZERO);
    t.connect("carol").await;
    let status = t.status("carol").await;
    assert_eq!(status["connected"], true);
    assert_eq!(status["needs_reconnect"], false);
    assert_eq!(status["reconnect_reason"], serde_json::Value::Null);
    assert_eq!(status["authorization_expires_at"], serde_json::Value::Null);
    let (_, actor) = t.admin(Method::GET, "/admin/actors/carol").await;
    assert_eq!(actor["status"], "active", "{actor}");
    assert_eq!(actor["reconnect_reason"], serde_json::Value::Null);
    t.shutdown().await;
}
