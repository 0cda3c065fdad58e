//! `POST /api/integrations/google/connect` is limited per user: a burst of
//! `CONNECTS_PER_MINUTE`, then `429` with a JSON error and `Retry-After`, while other users and
//! other routes are unaffected. The unauthenticated callback is limited per client address.

use reqwest::StatusCode;
use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::Value;
use tokenwarden::{
    http::{CALLBACKS_PER_MINUTE, CONNECTS_PER_MINUTE},
    store::entity::oauth_state,
};

use crate::support::{TestApp, location};

const ERROR_BASE: &str = "http://frontend.test/dashboard/integrations?google=error&reason=";

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

async fn callback_from(t: &TestApp, query: &str, forwarded_for: Option<&str>) -> String {
    let mut request = t.http.get(format!(
        "{}/api/integrations/google/callback?{query}",
        t.url
    ));
    if let Some(client) = forwarded_for {
        request = request.header("x-forwarded-for", client);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    location(&response)
}

/// The unauthenticated callback is limited per client address: a burst of
/// `CALLBACKS_PER_MINUTE`, then a redirect with `reason=rate_limited` that reads and spends
/// nothing. The test runs on loopback, which counts as a proxy in front of the service, so
/// the client is the address that proxy appends to `X-Forwarded-For`.
#[tokio::test]
async fn callback_is_rate_limited_per_client_address() {
    let t = TestApp::spawn().await;
    let invented = "code=abc&state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let invalid = format!("{ERROR_BASE}invalid_state");
    let limited = format!("{ERROR_BASE}rate_limited");
    // The client's own claim comes first; the proxy's entry is the last one.
    let flooder = Some("198.51.100.1, 203.0.113.7");
    for _ in 0..CALLBACKS_PER_MINUTE {
        assert_eq!(callback_from(&t, invented, flooder).await, invalid);
    }
    assert_eq!(callback_from(&t, invented, flooder).await, limited);
    // Changing the claimed part changes nothing.
    let claim = Some("192.0.2.99, 203.0.113.7");
    assert_eq!(callback_from(&t, invented, claim).await, limited);
    // Another client, and the proxy's own requests (loopback naming no client), are not limited.
    assert_eq!(
        callback_from(&t, invented, Some("203.0.113.8")).await,
        invalid
    );
    assert_eq!(callback_from(&t, invented, None).await, invalid);

    // A real consent refused by the limit is not spent: it finishes from elsewhere.
    let auth_url = t.start_connect("rl-carol").await;
    let consent = t.http.get(&auth_url).send().await.unwrap();
    let back = location(&consent);
    let query = back.split_once('?').unwrap().1;
    assert_eq!(callback_from(&t, query, flooder).await, limited);
    assert_eq!(t.status("rl-carol").await["connected"], false);
    assert_eq!(
        callback_from(&t, query, Some("203.0.113.9")).await,
        "http://frontend.test/dashboard/integrations?google=connected"
    );
    t.shutdown().await;
}
