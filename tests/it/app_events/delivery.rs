//! Delivery end to end: the service POSTs what the store holds to the reference receiver over
//! real HTTP on loopback, signed, retried under the same `webhook-id`, no sooner than a
//! `Retry-After` asks, in order per user, and drops what stayed undelivered for 72 hours.

use std::time::Duration;

use chrono::Utc;
use standardwebhooks::Webhook;
use tokenwarden::store::{AppEvent, AppEventType};
use tokenwarden_sandbox::{
    AppEventsReceiver, AppEventsReceiverConfig, ReceivedEvent, ReceiverMode, bind_loopback,
};

use super::connected;
use crate::{
    on_both_backends,
    support::{Backend, Options, TestApp, eventually, log_lines_with},
};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn receiver(signing_secret: Option<&str>) -> AppEventsReceiver {
    AppEventsReceiver::start(
        AppEventsReceiverConfig {
            signing_secret: signing_secret.map(str::to_string),
            ..Default::default()
        },
        bind_loopback().await.unwrap(),
    )
    .await
    .unwrap()
}

async fn app(receiver: &AppEventsReceiver, signing_secret: Option<&str>) -> TestApp {
    TestApp::spawn_with(Options {
        app_events_url: Some(receiver.events_url()),
        app_events_signing_secret: signing_secret.map(str::to_string),
        ..Options::default()
    })
    .await
}

async fn wait_for_events(receiver: &AppEventsReceiver, count: usize) -> Vec<ReceivedEvent> {
    let arrived = eventually(Duration::from_secs(15), || async {
        receiver.events().len() >= count
    })
    .await;
    assert!(arrived, "{count} events arrive: {:?}", receiver.attempts());
    receiver.events()
}

fn metric(t: &TestApp, event_type: &str, result: &str) -> u64 {
    let labels = format!("type=\"{event_type}\",result=\"{result}\"");
    t.app()
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("tokenwarden_app_events_total") && l.contains(&labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_app_signed_and_verifiable() {
    let receiver = receiver(Some(SECRET)).await;
    let t = app(&receiver, Some(SECRET)).await;
    let at = Utc::now();
    let mut event = connected("alice", at);
    event.authorization_expires_at = Some(at + chrono::Duration::days(7));
    assert!(t.app().store.record_app_event(&event).await.unwrap());

    let got = wait_for_events(&receiver, 1).await.remove(0);
    assert_eq!(got.status, 200);
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    let id = got.webhook_id.clone().unwrap();
    assert!(id.starts_with("msg_"), "{id}");
    let seconds = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(
        got.body.clone().unwrap(),
        serde_json::json!({
            "type": "connection.connected",
            "user_id": "alice",
            "occurred_at": seconds(at),
            "google_email": "alice@example.com",
            "reason": null,
            "authorization_expires_at": seconds(at + chrono::Duration::days(7)),
        })
    );
    // Verifiable by anyone with the secret, over the exact bytes sent.
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("webhook-id", &got.webhook_id),
        ("webhook-timestamp", &got.webhook_timestamp),
        ("webhook-signature", &got.webhook_signature),
    ] {
        headers.insert(name, value.as_deref().unwrap().parse().unwrap());
    }
    let key = Webhook::new(SECRET).unwrap();
    key.verify(got.raw_body.as_bytes(), &headers).unwrap();
    let other = Webhook::new("whsec_c2Vjb25kLXNlY3JldC1vZi10aGUtcm90YXRpb24=").unwrap();
    assert!(other.verify(got.raw_body.as_bytes(), &headers).is_err());

    let delivered = eventually(Duration::from_secs(5), || async {
        let recent = t.app().store.recent_app_events("alice", 10).await.unwrap();
        recent.first().is_some_and(|e| e.delivered_at.is_some())
    })
    .await;
    assert!(delivered, "recorded as delivered");
    assert_eq!(metric(&t, "connection.connected", "delivered"), 1);
    let logged = log_lines_with(&["Event delivered to the app", &id, "alice"]);
    assert_eq!(logged.len(), 1, "{logged:?}");
    t.shutdown().await;
}

/// 429 with `Retry-After: 2`, then 500, then 200: three attempts under one `webhook-id`, the
/// second no sooner than 2 s after the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_keep_the_id_and_wait_as_long_as_retry_after_asks() {
    let receiver = receiver(None).await;
    receiver.set_mode(ReceiverMode::TooManyRequests { retry_after: 2 });
    let t = app(&receiver, None).await;
    let attempts = |n: usize| {
        let receiver = receiver.clone();
        async move {
            let ok = eventually(Duration::from_secs(15), || async {
                receiver.attempts().len() >= n
            })
            .await;
            assert!(ok, "{n} attempts: {:?}", receiver.attempts());
        }
    };
    t.app()
        .store
        .record_app_event(&connected("alice", Utc::now()))
        .await
        .unwrap();
    attempts(1).await;
    receiver.set_mode(ReceiverMode::Error500);
    attempts(2).await;
    receiver.set_mode(ReceiverMode::Healthy);
    wait_for_events(&receiver, 1).await;

    let seen = receiver.attempts();
    let statuses: Vec<u16> = seen.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [429, 500, 200]);
    assert!(seen.iter().all(|a| a.webhook_id == seen[0].webhook_id));
    let gap = (seen[1].received_at - seen[0].received_at)
        .to_std()
        .unwrap();
    assert!(
        gap >= Duration::from_secs(2),
        "Retry-After honoured: {gap:?}"
    );
    let gap = (seen[2].received_at - seen[1].received_at)
        .to_std()
        .unwrap();
    assert!(gap <= Duration::from_secs(4), "second wait 2 s: {gap:?}");
    assert_eq!(metric(&t, "connection.connected", "failed"), 2);
    // One warning for the two failures: within 10 s of a warning, failures are counted and
    // named by the next one instead of flooding the log during an outage.
    let warned = log_lines_with(&["Failed to deliver event to the app", "retryInSecs"]);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("429"), "{warned:?}");
    t.shutdown().await;
}

/// An app that is down (connections refused) gets the event once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_is_down_gets_the_event_when_back() {
    let receiver = receiver(None).await;
    let t = app(&receiver, None).await;
    receiver.stop().await;
    t.app()
        .store
        .record_app_event(&connected("alice", Utc::now()))
        .await
        .unwrap();
    let failed = eventually(Duration::from_secs(10), || async {
        metric(&t, "connection.connected", "failed") >= 1
    })
    .await;
    assert!(failed);
    let refused = log_lines_with(&["Failed to deliver event to the app", "connection failed"]);
    assert!(!refused.is_empty(), "{refused:?}");
    receiver.restart().await.unwrap();
    wait_for_events(&receiver, 1).await;
    t.shutdown().await;
}

/// Two quick events of one user, the first refused for a while: the second is not sent
/// before the first is delivered, and the app sees them in order. Another user's event is
/// not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_events_arrive_in_order() {
    let receiver = receiver(None).await;
    receiver.set_mode(ReceiverMode::Error500);
    let t = app(&receiver, None).await;
    let store = &t.app().store;
    let now = Utc::now();
    store
        .record_app_event(&connected("alice", now))
        .await
        .unwrap();
    let gone = AppEvent::new(AppEventType::Disconnected, "alice", now);
    store.record_app_event(&gone).await.unwrap();
    let refused = eventually(Duration::from_secs(10), || async {
        receiver.attempts().len() >= 2
    })
    .await;
    assert!(refused);
    receiver.set_mode(ReceiverMode::Healthy);
    store
        .record_app_event(&connected("bob", now))
        .await
        .unwrap();
    let events = wait_for_events(&receiver, 3).await;

    let of_alice: Vec<String> = events
        .iter()
        .filter_map(|e| e.body.as_ref())
        .filter(|b| b["user_id"] == "alice")
        .map(|b| b["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        of_alice,
        ["connection.connected", "connection.disconnected"]
    );
    let attempts = receiver.attempts();
    let first_done = attempts
        .iter()
        .position(|a| a.status == 200 && a.body.as_ref().unwrap()["user_id"] == "alice")
        .unwrap();
    let second_id = &events
        .iter()
        .find(|e| e.body.as_ref().unwrap()["type"] == "connection.disconnected")
        .unwrap()
        .webhook_id;
    let second_tried = attempts
        .iter()
        .position(|a| &a.webhook_id == second_id)
        .unwrap();
    assert!(second_tried > first_done, "{attempts:?}");
    t.shutdown().await;
}

/// An event undelivered for 72 hours (stored that long ago) is dropped, logged and counted,
/// and never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_72_hours_old_is_dropped() {
    let receiver = receiver(None).await;
    let t = app(&receiver, None).await;
    let store = &t.app().store;
    let long_ago = Utc::now() - chrono::Duration::hours(72) - chrono::Duration::seconds(5);
    let old = connected("alice", long_ago);
    store
        .insert_app_event(store.connection(), &old, long_ago)
        .await
        .unwrap();
    store.app_events().wake();
    store
        .record_app_event(&connected("bob", Utc::now()))
        .await
        .unwrap();
    let dropped = eventually(Duration::from_secs(10), || async {
        metric(&t, "connection.connected", "dropped") == 1
    })
    .await;
    assert!(dropped, "{}", t.app().metrics.render());
    let events = wait_for_events(&receiver, 1).await;
    assert_eq!(events[0].body.as_ref().unwrap()["user_id"], "bob");
    assert!(
        store
            .recent_app_events("alice", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        receiver
            .attempts()
            .iter()
            .all(|a| a.body.as_ref().unwrap()["user_id"] == "bob")
    );
    let logged = log_lines_with(&["Event to the app dropped", "alice"]);
    assert_eq!(logged.len(), 1, "{logged:?}");
    t.shutdown().await;
}

/// Without `APP_EVENTS_URL` nothing is stored, and nothing is sent.
async fn nothing_is_stored_without_app_events_url(backend: Backend) {
    let t = TestApp::on(backend).await;
    let store = &t.app().store;
    assert!(!store.app_events().enabled());
    assert!(
        !store
            .record_app_event(&connected("alice", Utc::now()))
            .await
            .unwrap()
    );
    assert!(
        store
            .recent_app_events("alice", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.pending_app_events(None).await.unwrap(), 0);
    t.shutdown().await;
}
on_both_backends!(nothing_is_stored_without_app_events_url);
