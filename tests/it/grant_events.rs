//! Events to the app from real changes (docs/contract.md section 9): each stored in the write of
//! the change that causes it and delivered to the reference receiver over loopback. A time-limited
//! grant tells the app `connected`, then `authorization_expiring` (at once when the grant arrives
//! already inside the warning window), then `needs_reconnect` with `authorization_expired`; a
//! revoked grant `needs_reconnect` with `revoked`; a disconnect `disconnected`. No event ever
//! carries a token value.

use std::time::Duration;

use serde_json::Value;
use tokenwarden_sandbox::{AppEventsReceiver, AppEventsReceiverConfig, bind_loopback};

use crate::{
    on_both_backends,
    support::{Backend, Options, TestApp, eventually},
};

async fn receiver() -> AppEventsReceiver {
    AppEventsReceiver::start(
        AppEventsReceiverConfig::default(),
        bind_loopback().await.unwrap(),
    )
    .await
    .unwrap()
}

fn options(backend: Backend, receiver: &AppEventsReceiver, grant: u64, warning: u64) -> Options {
    Options {
        backend,
        token_lifetime: Duration::from_secs(2),
        refresh_lead_secs: 1,
        hibernate_after_secs: 1,
        grant_lifetime: Duration::from_secs(grant),
        app_events_url: Some(receiver.events_url()),
        authorization_expiry_warning_secs: warning,
        ..Options::default()
    }
}

/// The bodies of the events of `user_id` received so far, in order of arrival.
fn bodies(receiver: &AppEventsReceiver, user_id: &str) -> Vec<Value> {
    receiver
        .events()
        .into_iter()
        .filter(|e| !e.duplicate)
        .filter_map(|e| e.body)
        .filter(|b| b["user_id"] == user_id)
        .collect()
}

async fn wait_for(receiver: &AppEventsReceiver, user_id: &str, count: usize) -> Vec<Value> {
    let arrived = eventually(Duration::from_secs(20), || async {
        bodies(receiver, user_id).len() >= count
    })
    .await;
    let got = bodies(receiver, user_id);
    assert!(arrived, "{count} events for {user_id}: {got:?}");
    got
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// No token the sandbox issued appears in any event body.
fn no_tokens_in(t: &TestApp, receiver: &AppEventsReceiver) {
    let issued = t.google.issued_tokens();
    assert!(!issued.is_empty());
    for event in receiver.events() {
        for token in &issued {
            assert!(
                !event.raw_body.contains(token.as_str()),
                "a token in {}",
                event.raw_body
            );
        }
    }
}

async fn a_time_limited_grant_tells_the_app_each_step(backend: Backend) {
    let receiver = receiver().await;
    let t = TestApp::spawn_with(options(backend, &receiver, 6, 3)).await;
    t.connect("alice").await;
    let status = t.status("alice").await;
    let events = wait_for(&receiver, "alice", 3).await;
    assert_eq!(
        types(&events),
        [
            "connection.connected",
            "connection.authorization_expiring",
            "connection.needs_reconnect"
        ]
    );
    for event in &events {
        assert_eq!(event.as_object().unwrap().len(), 6, "{event}");
        assert_eq!(event["google_email"], status["google_email"]);
        assert_eq!(
            event["authorization_expires_at"],
            status["authorization_expires_at"]
        );
    }
    assert_eq!(events[0]["reason"], Value::Null);
    assert_eq!(events[1]["reason"], Value::Null);
    assert_eq!(events[2]["reason"], "authorization_expired");
    assert_eq!(
        t.status("alice").await["reconnect_reason"],
        "authorization_expired"
    );
    // Once per grant: nothing more arrives.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(bodies(&receiver, "alice").len(), 3);
    no_tokens_in(&t, &receiver);
    t.shutdown().await;
}
on_both_backends!(a_time_limited_grant_tells_the_app_each_step);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_already_inside_the_warning_window_warns_at_once() {
    let receiver = receiver().await;
    let t = TestApp::spawn_with(options(Backend::Sqlite, &receiver, 3600, 7200)).await;
    t.connect("bob").await;
    let events = wait_for(&receiver, "bob", 2).await;
    assert_eq!(
        types(&events),
        ["connection.connected", "connection.authorization_expiring"]
    );
    let (_, actor) = t.admin(reqwest::Method::GET, "/admin/actors/bob").await;
    assert_eq!(actor["status"], "active", "still connected: {actor}");
    t.shutdown().await;
}

async fn revocation_and_disconnect_reach_the_app(backend: Backend) {
    let receiver = receiver().await;
    let t = TestApp::spawn_with(options(backend, &receiver, 0, 259_200)).await;
    t.connect("carol").await;
    // The user revokes access at Google: the next refresh meets invalid_grant.
    let pushed = eventually(Duration::from_secs(5), || async {
        t.microservice.stored("carol").await.unwrap().is_some()
    })
    .await;
    assert!(pushed);
    let stored = t.microservice.stored("carol").await.unwrap().unwrap();
    assert!(t.google.revoke_grant_of(&stored.refresh_token));
    let events = wait_for(&receiver, "carol", 2).await;
    assert_eq!(
        types(&events),
        ["connection.connected", "connection.needs_reconnect"]
    );
    assert_eq!(events[1]["reason"], "revoked");
    assert_eq!(events[1]["authorization_expires_at"], Value::Null);
    assert_eq!(t.status("carol").await["reconnect_reason"], "revoked");
    // Back, then gone by the user's own hand.
    t.connect("carol").await;
    t.disconnect("carol").await;
    let events = wait_for(&receiver, "carol", 4).await;
    assert_eq!(
        types(&events)[2..],
        ["connection.connected", "connection.disconnected"]
    );
    assert_eq!(events[3]["reason"], Value::Null);
    no_tokens_in(&t, &receiver);
    t.shutdown().await;
}
on_both_backends!(revocation_and_disconnect_reach_the_app);
