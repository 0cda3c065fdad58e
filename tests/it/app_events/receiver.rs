//! The reference receiver checks what an app should: the signature with its secret, a body of
//! exactly the six keys, a `webhook-id` kept once; it lists what it accepted on `GET /events`
//! and misbehaves on request (`POST /sandbox/control`).

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use standardwebhooks::Webhook;
use tokenwarden_sandbox::{AppEventsReceiver, AppEventsReceiverConfig, bind_loopback};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn event() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "connection.disconnected", "user_id": "alice",
        "occurred_at": "2025-12-13T10:30:00Z", "google_email": null, "reason": null,
        "authorization_expires_at": null,
    }))
    .unwrap()
}

async fn post(url: &str, id: &str, body: &[u8], secret: Option<&str>) -> StatusCode {
    let mut request = Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id);
    if let Some(secret) = secret {
        let now = chrono::Utc::now().timestamp();
        let signature = Webhook::new(secret).unwrap().sign(id, now, body).unwrap();
        request = request
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", signature);
    }
    request.body(body.to_vec()).send().await.unwrap().status()
}

#[tokio::test]
async fn the_receiver_checks_keeps_once_lists_and_misbehaves_on_request() {
    let receiver = AppEventsReceiver::start(
        AppEventsReceiverConfig {
            signing_secret: Some(SECRET.into()),
            sandbox_controls: true,
            ..Default::default()
        },
        bind_loopback().await.unwrap(),
    )
    .await
    .unwrap();
    let url = receiver.events_url();
    let other = "whsec_c2Vjb25kLXNlY3JldC1vZi10aGUtcm90YXRpb24=";
    assert_eq!(
        post(&url, "msg_1", &event(), None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&url, "msg_1", &event(), Some(other)).await,
        StatusCode::UNAUTHORIZED
    );
    let mut extra: Value = serde_json::from_slice(&event()).unwrap();
    extra["access_token"] = json!("ya29.x");
    let extra = serde_json::to_vec(&extra).unwrap();
    assert_eq!(
        post(&url, "msg_1", &extra, Some(SECRET)).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post(&url, "msg_1", &event(), Some(SECRET)).await,
        StatusCode::OK
    );
    assert_eq!(
        post(&url, "msg_1", &event(), Some(SECRET)).await,
        StatusCode::OK
    );
    assert_eq!(receiver.events().len(), 1, "a duplicate id is kept once");
    assert_eq!(receiver.attempts().len(), 5);
    assert!(receiver.attempts()[4].duplicate);

    let listed: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["webhook_id"], "msg_1");
    assert_eq!(listed[0]["body"]["type"], "connection.disconnected");

    let control = format!("{}/sandbox/control", receiver.base_url());
    let set = |mode: Value| {
        let control = control.clone();
        async move {
            let answer = Client::new()
                .post(&control)
                .json(&mode)
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), StatusCode::OK);
        }
    };
    set(json!({"mode": "too_many_requests", "retry_after": 7})).await;
    let answer = Client::new().post(&url).body(event()).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.headers()["retry-after"], "7");
    set(json!({"mode": "error500"})).await;
    assert_eq!(
        post(&url, "msg_2", &event(), Some(SECRET)).await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    set(json!({"mode": "healthy"})).await;
    assert_eq!(
        post(&url, "msg_2", &event(), Some(SECRET)).await,
        StatusCode::OK
    );

    receiver.stop().await;
    assert!(Client::new().get(&url).send().await.is_err(), "down");
    receiver.restart().await.unwrap();
    assert_eq!(receiver.events().len(), 2, "kept across the outage");
    receiver.stop().await;
}
