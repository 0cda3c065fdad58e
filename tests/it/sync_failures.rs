//! A failing microservice never breaks the OAuth flow, and every change still arrives.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokenwarden_sandbox::FaultMode;

use crate::support::{Options, TestApp, eventually, location, log_lines_with, logs};

async fn connect_quickly(t: &TestApp, user: &str) {
    let auth_url = t.start_connect(user).await;
    let started = Instant::now();
    let callback = t.follow_consent(&auth_url).await;
    let took = started.elapsed();
    assert_eq!(callback.status(), StatusCode::FOUND);
    assert!(location(&callback).ends_with("google=connected"));
    assert!(took < Duration::from_secs(1), "callback took {took:?}");
}

async fn delivered_after_recovery(t: &TestApp, user: &str) {
    let delivered = eventually(Duration::from_secs(10), || async {
        t.microservice.stored(user).await.unwrap().is_some()
    })
    .await;
    assert!(delivered, "sync delivered after recovery");
    let synced = eventually(Duration::from_secs(5), || async {
        t.status(user).await["sync"]["state"] == "synced"
    })
    .await;
    assert!(synced);
    let stored = t.microservice.stored(user).await.unwrap().unwrap();
    assert_eq!(
        t.stored_access_token(user).await.unwrap(),
        stored.access_token
    );
}

#[tokio::test]
async fn microservice_down_then_back() {
    let t = TestApp::spawn().await;
    t.microservice.stop().await;
    connect_quickly(&t, "jane").await;
    let failed = eventually(Duration::from_secs(5), || async {
        log_lines_with(&["Failed to sync tokens to microservice", "jane"]).len() >= 2
    })
    .await;
    assert!(failed, "failure logged and retried:\n{}", logs());
    let status = t.status("jane").await;
    assert_eq!(status["sync"]["state"], "failed");
    assert!(status["sync"]["last_error"].is_string());
    let line = &log_lines_with(&["Failed to sync tokens to microservice", "jane"])[0];
    for field in ["userId", "microserviceUrl", "error", "details"] {
        assert!(line.contains(field), "{field} in {line}");
    }
    t.microservice.restart().await.unwrap();
    delivered_after_recovery(&t, "jane").await;
    t.shutdown().await;
}

#[tokio::test]
async fn microservice_answering_500() {
    let t = TestApp::spawn().await;
    t.microservice.set_mode(FaultMode::Error500);
    connect_quickly(&t, "kate").await;
    let failed = eventually(Duration::from_secs(5), || async {
        t.microservice
            .received()
            .iter()
            .filter(|r| r.user_id == "kate")
            .count()
            >= 2
    })
    .await;
    assert!(failed, "retried");
    assert!(!log_lines_with(&["Failed to sync tokens to microservice", "kate", "500"]).is_empty());
    t.microservice.set_mode(FaultMode::Healthy);
    delivered_after_recovery(&t, "kate").await;
    t.shutdown().await;
}

#[tokio::test]
async fn microservice_hanging_past_the_timeout() {
    let t = TestApp::spawn_with(Options {
        microservice_timeout_ms: 300,
        ..Options::default()
    })
    .await;
    t.microservice.set_mode(FaultMode::Hang);
    connect_quickly(&t, "liam").await;
    let timed_out = eventually(Duration::from_secs(5), || async {
        !log_lines_with(&["Failed to sync tokens to microservice", "liam", "timeout"]).is_empty()
    })
    .await;
    assert!(timed_out, "timeout logged:\n{}", logs());
    t.microservice.set_mode(FaultMode::Healthy);
    delivered_after_recovery(&t, "liam").await;
    t.shutdown().await;
}

#[tokio::test]
async fn bearer_token_is_sent_to_the_microservice() {
    let t = TestApp::spawn_with(Options {
        microservice_token: Some("ms-secret".into()),
        ..Options::default()
    })
    .await;
    t.connect("mia").await;
    delivered_after_recovery(&t, "mia").await;
    let auth = t.microservice.received()[0].authorization.clone();
    assert_eq!(auth.as_deref(), Some("Bearer ms-secret"));
    t.shutdown().await;
}

/// Credentials in `GOOGLE_CALENDAR_MICROSERVICE_URL` never reach the logs (docs/reliability.md,
/// Security: Low 2): the seed's sync and failure lines show the URL without its userinfo.
#[tokio::test]
async fn microservice_url_credentials_stay_out_of_logs() {
    let t = TestApp::spawn_with(Options {
        microservice_userinfo: Some("tw:hunter2secret".into()),
        ..Options::default()
    })
    .await;
    t.connect("ulla").await;
    let synced = eventually(Duration::from_secs(5), || async {
        t.microservice.stored("ulla").await.unwrap().is_some()
    })
    .await;
    assert!(synced);
    t.microservice.set_mode(FaultMode::Error500);
    t.admin(reqwest::Method::POST, "/admin/actors/ulla/refresh")
        .await;
    let failed = eventually(Duration::from_secs(5), || async {
        !log_lines_with(&["Failed to sync tokens to microservice", "ulla"]).is_empty()
    })
    .await;
    assert!(failed, "failure logged:\n{}", logs());
    let base = t.microservice.base_url();
    for message in [
        "Syncing Google Calendar tokens to microservice",
        "Failed to sync tokens to microservice",
    ] {
        let lines = log_lines_with(&[message, "ulla"]);
        assert!(!lines.is_empty(), "{message}");
        assert!(lines.iter().all(|l| l.contains(&base)), "{lines:?}");
    }
    let leaked: Vec<String> = logs()
        .lines()
        .filter(|l| l.contains("hunter2secret"))
        .map(str::to_string)
        .collect();
    assert!(leaked.is_empty(), "password in logs: {leaked:?}");
    t.shutdown().await;
}
