//! `POST /api/integrations/google/connect` is limited per user: a burst of
//! `CONNECTS_PER_MINUTE`, then `429` with a JSON error and `Retry-After`, while other users and
//! other routes are unaffected.

use reqwest::StatusCode;
use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::Value;
use tokenwarden::{http::CONNECTS_PER_MINUTE, store::entity::oauth_state};

use crate::support::TestApp;

async fn post_connect(t: &TestApp, user: &str) -> reqwest::Response {
    t.http
        .post(format!("{}/api/integrations/google/connect", t.url))
        .bearer_auth(t.jwt(user))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn connect_is_rate_limited_per_user() {
    let t = TestApp::spawn().await;
    for _ in 0..CONNECTS_PER_MINUTE {
        assert_eq!(post_connect(&t, "rl-alice").await.status(), StatusCode::OK);
    }
    let limited = post_connect(&t, "rl-alice").await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("whole seconds");
    // One token comes back every 60 / CONNECTS_PER_MINUTE seconds.
    assert!(
        (1..=u64::from(60 / CONNECTS_PER_MINUTE)).contains(&retry_after),
        "{retry_after}"
    );
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    // Refused requests stored nothing: one state per accepted request.
    let states = oauth_state::Entity::find()
        .count(t.app().store.connection())
        .await
        .unwrap();
    assert_eq!(states, u64::from(CONNECTS_PER_MINUTE));
    // Still limited on the next try, and other users and routes are not.
    assert_eq!(
        post_connect(&t, "rl-alice").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(post_connect(&t, "rl-bob").await.status(), StatusCode::OK);
    assert_eq!(t.status("rl-alice").await["connected"], false);
    // The limit sits behind authentication: a bad token is a 401, not a 429.
    let anonymous = t
        .http
        .post(format!("{}/api/integrations/google/connect", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    t.shutdown().await;
}
