//! Events to the app survive what the outbox is for (docs/contract.md section 9: "a crash, a
//! restart or a node's loss delays it but never loses it"; "at least once and, for one user, in
//! order"), from real changes through the front door:
//!
//! - the real `tokenwarden serve` binary stores a `connection.connected` the app refuses, is
//!   SIGKILLed, and restarted on the same database: the event arrives from the new process,
//!   under the `webhook-id` every earlier attempt carried;
//! - connect, disconnect and reconnect of one user back to back while the app answers 500:
//!   once it answers 200 the three arrive in the order the changes happened, each sent only
//!   after the one before it was delivered.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokenwarden::{crypto::TokenCipher, store::Store};
use tokenwarden_sandbox::{
    AppEventsReceiver, AppEventsReceiverConfig, ReceivedEvent, ReceiverMode, bind_loopback,
};

use crate::{
    on_both_backends,
    process::{Served, client, connect_at, free_port, sandboxes},
    support::{Backend, ENCRYPTION_KEY, Options, TestApp, TestDatabase, eventually},
};

async fn receiver() -> AppEventsReceiver {
    AppEventsReceiver::start(
        AppEventsReceiverConfig::default(),
        bind_loopback().await.unwrap(),
    )
    .await
    .unwrap()
}

/// Every POST the receiver got for `user_id`, oldest first, whatever it answered.
fn attempts_of(receiver: &AppEventsReceiver, user_id: &str) -> Vec<ReceivedEvent> {
    receiver
        .attempts()
        .into_iter()
        .filter(|a| a.body.as_ref().is_some_and(|b| b["user_id"] == user_id))
        .collect()
}

/// The events of `user_id` the receiver accepted, each once, in order of arrival.
fn accepted_of(receiver: &AppEventsReceiver, user_id: &str) -> Vec<ReceivedEvent> {
    receiver
        .events()
        .into_iter()
        .filter(|e| e.body.as_ref().is_some_and(|b| b["user_id"] == user_id))
        .collect()
}

fn type_of(event: &ReceivedEvent) -> &str {
    event
        .body
        .as_ref()
        .and_then(|b| b["type"].as_str())
        .unwrap()
}

/// The database as the service sees it, opened from the test (the service writes it; the
/// test only reads the outbox).
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

async fn an_event_stored_before_a_sigkill_arrives_after_the_restart(backend: Backend) {
    let (google, microservice) = sandboxes(Duration::from_secs(3600)).await;
    let receiver = receiver().await;
    // The app answers 500 first, so the attempts before the kill show their webhook-id.
    receiver.set_mode(ReceiverMode::Error500);
    let db = TestDatabase::create(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().await;
    let extra = [("APP_EVENTS_URL", receiver.events_url())];
    let start = || {
        Served::start(
            dir.path(),
            port,
            &db.url,
            ENCRYPTION_KEY,
            &google,
            &microservice,
            &extra,
        )
    };
    let mut served = start().await;
    connect_at(&client(), &served.url, "alice").await;
    let refused = eventually(Duration::from_secs(10), || async {
        attempts_of(&receiver, "alice").len() >= 2
    })
    .await;
    assert!(refused, "two refused attempts:\n{}", served.output());
    // Then the app goes away entirely (connections refused), and the service dies.
    receiver.stop().await;
    served.signal("KILL");
    let status = served.wait_exit(Duration::from_secs(5)).await;
    assert!(status.is_some_and(|s| !s.success()), "killed: {status:?}");
    let store = open_store(&db).await;
    let stored = store.recent_app_events("alice", 10).await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].delivered_at.is_none(), "undelivered at the kill");
    assert_eq!(stored[0].event_type, "connection.connected");

    receiver.set_mode(ReceiverMode::Healthy);
    receiver.restart().await.unwrap();
    assert!(
        receiver.events().is_empty(),
        "nothing accepted before the restart"
    );
    let served = start().await;
    let arrived = eventually(Duration::from_secs(20), || async {
        !accepted_of(&receiver, "alice").is_empty()
    })
    .await;
    assert!(arrived, "delivered after the restart:\n{}", served.output());
    let accepted = accepted_of(&receiver, "alice");
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(type_of(&accepted[0]), "connection.connected");
    let attempts = attempts_of(&receiver, "alice");
    let id = stored[0].event_id.clone();
    assert!(
        attempts
            .iter()
            .all(|a| a.webhook_id.as_deref() == Some(&id)),
        "one webhook-id on every attempt, before and after the kill: {attempts:?}"
    );
    assert!(attempts.iter().any(|a| a.status == 200));
    let recorded = eventually(Duration::from_secs(5), || async {
        let events = store.recent_app_events("alice", 10).await.unwrap();
        events.len() == 1 && events[0].delivered_at.is_some()
    })
    .await;
    assert!(recorded, "recorded as delivered");
    println!(
        "FAULT app-event-sigkill backend={backend:?} attempts={} (refused before the kill \
         and the one that landed after the restart)",
        attempts.len()
    );
}
on_both_backends!(an_event_stored_before_a_sigkill_arrives_after_the_restart);

async fn connect_disconnect_reconnect_reach_the_app_in_order(backend: Backend) {
    let receiver = receiver().await;
    receiver.set_mode(ReceiverMode::Error500);
    let t = TestApp::spawn_with(Options {
        backend,
        app_events_url: Some(receiver.events_url()),
        ..Options::default()
    })
    .await;
    // Three changes back to back, each its own request: no waiting between them.
    t.connect("alice").await;
    assert_eq!(t.disconnect("alice").await.0, StatusCode::OK);
    t.connect("alice").await;
    let refused = eventually(Duration::from_secs(10), || async {
        attempts_of(&receiver, "alice").len() >= 2
    })
    .await;
    assert!(refused, "{:?}", receiver.attempts());
    receiver.set_mode(ReceiverMode::Healthy);
    let arrived = eventually(Duration::from_secs(20), || async {
        accepted_of(&receiver, "alice").len() >= 3
    })
    .await;
    let accepted = accepted_of(&receiver, "alice");
    assert!(arrived, "three events: {:?}", receiver.attempts());
    let types: Vec<&str> = accepted.iter().map(type_of).collect();
    assert_eq!(
        types,
        [
            "connection.connected",
            "connection.disconnected",
            "connection.connected"
        ]
    );
    // Each event is first tried only after the one before it was accepted.
    let attempts = attempts_of(&receiver, "alice");
    for pair in accepted.windows(2) {
        let done = attempts
            .iter()
            .position(|a| a.status == 200 && a.webhook_id == pair[0].webhook_id)
            .unwrap();
        let first_try = attempts
            .iter()
            .position(|a| a.webhook_id == pair[1].webhook_id)
            .unwrap();
        assert!(first_try > done, "{attempts:?}");
    }
    let refused_ids: Vec<&Option<String>> = attempts
        .iter()
        .filter(|a| a.status == 500)
        .map(|a| &a.webhook_id)
        .collect();
    assert!(
        refused_ids.iter().all(|id| **id == accepted[0].webhook_id),
        "only the first event was tried while the app refused: {attempts:?}"
    );
    let bodies: Vec<&Value> = accepted.iter().filter_map(|e| e.body.as_ref()).collect();
    assert!(bodies.iter().all(|b| b["reason"].is_null()), "{bodies:?}");
    t.shutdown().await;
}
on_both_backends!(connect_disconnect_reconnect_reach_the_app_in_order);
