//! Bad input gets the right status or redirect, a JSON error body, and writes nothing.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::Value;

use crate::support::{ADMIN_TOKEN, JWT_SECRET, TestApp, jwt_for, location};

const ERROR_BASE: &str = "http://frontend.test/dashboard/integrations?google=error&reason=";

async fn callback(t: &TestApp, query: &str) -> String {
    let response = t
        .http
        .get(format!(
            "{}/api/integrations/google/callback?{query}",
            t.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND, "{query}");
    location(&response)
}

async fn no_users_written(t: &TestApp) {
    let (_, list) = t.admin(Method::GET, "/admin/actors").await;
    assert_eq!(list["total"], 0);
    assert!(t.microservice.received().is_empty());
}

#[tokio::test]
async fn callback_refuses_bad_state() {
    let t = TestApp::spawn().await;
    assert_eq!(
        callback(&t, "code=abc").await,
        format!("{ERROR_BASE}invalid_state")
    );
    assert_eq!(
        callback(&t, "code=abc&state=unknown").await,
        format!("{ERROR_BASE}invalid_state")
    );
    assert_eq!(callback(&t, "").await, format!("{ERROR_BASE}invalid_state"));
    let long = "x".repeat(5000);
    assert_eq!(
        callback(&t, &format!("code=a&state={long}")).await,
        format!("{ERROR_BASE}invalid_state")
    );

    // Reused: the first use succeeds, the replay is refused.
    let auth_url = t.start_connect("paul").await;
    let consent = t.http.get(&auth_url).send().await.unwrap();
    let callback_url = location(&consent);
    let first = t.http.get(&callback_url).send().await.unwrap();
    assert!(location(&first).ends_with("google=connected"));
    let replay = t.http.get(&callback_url).send().await.unwrap();
    assert_eq!(location(&replay), format!("{ERROR_BASE}invalid_state"));

    // Expired: a state older than its ten minutes.
    t.app()
        .store
        .create_oauth_state(
            "old-state",
            "quinn",
            &SecretString::from("v".repeat(43)),
            None,
            chrono::Utc::now() - chrono::Duration::seconds(1),
        )
        .await
        .unwrap();
    assert_eq!(
        callback(&t, "code=abc&state=old-state").await,
        format!("{ERROR_BASE}invalid_state")
    );
    assert!(t.app().store.user("quinn").await.unwrap().is_none());
    t.shutdown().await;
}

#[tokio::test]
async fn callback_reports_access_denied() {
    let t = TestApp::spawn().await;
    let auth_url = t.start_connect("rita").await;
    let consent = t
        .http
        .get(format!("{auth_url}&deny=1"))
        .send()
        .await
        .unwrap();
    let response = t.http.get(location(&consent)).send().await.unwrap();
    assert_eq!(location(&response), format!("{ERROR_BASE}access_denied"));
    assert!(t.app().store.user("rita").await.unwrap().is_none());
    // Whatever Google says, it is never echoed raw.
    assert_eq!(
        callback(&t, "error=%3Cscript%3E").await,
        format!("{ERROR_BASE}oauth_error")
    );
    no_users_written(&t).await;
    t.shutdown().await;
}

#[tokio::test]
async fn callback_with_a_bad_code_fails_the_exchange() {
    let t = TestApp::spawn().await;
    let auth_url = t.start_connect("sam").await;
    let state = url::Url::parse(&auth_url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .to_string();
    assert_eq!(
        callback(&t, &format!("code=forged&state={state}")).await,
        format!("{ERROR_BASE}exchange_failed")
    );
    no_users_written(&t).await;
    t.shutdown().await;
}

async fn expect_error(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("JSON error body");
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{body}"
    );
    body
}

#[tokio::test]
async fn user_routes_refuse_bad_tokens() {
    let t = TestApp::spawn().await;
    let connect = format!("{}/api/integrations/google/connect", t.url);
    let status = format!("{}/api/integrations/google/status", t.url);
    let bad_tokens = [
        None,
        Some("garbage".to_string()),
        Some(jwt_for("tina", "wrong-secret", 3600)),
        Some(jwt_for("tina", JWT_SECRET, -10)),
        Some(jwt_for("bad/user", JWT_SECRET, 3600)),
    ];
    for token in bad_tokens {
        for (method, url) in [
            (Method::POST, &connect),
            (Method::GET, &status),
            (
                Method::DELETE,
                &format!("{}/api/integrations/google", t.url),
            ),
        ] {
            let mut request = t.http.request(method, url.as_str());
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            expect_error(request.send().await.unwrap(), StatusCode::UNAUTHORIZED).await;
        }
    }
    no_users_written(&t).await;
    t.shutdown().await;
}

#[tokio::test]
async fn admin_routes_refuse_wrong_tokens() {
    let t = TestApp::spawn().await;
    for path in ["/admin/actors", "/admin/actors/x"] {
        for token in [
            None,
            Some("wrong"),
            Some(&ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]),
        ] {
            let mut request = t.http.get(format!("{}{path}", t.url));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            expect_error(request.send().await.unwrap(), StatusCode::UNAUTHORIZED).await;
        }
    }
    // A user's JWT is not an admin token.
    let response = t
        .http
        .post(format!("{}/admin/resync", t.url))
        .bearer_auth(t.jwt("ursula"))
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::UNAUTHORIZED).await;
    t.shutdown().await;
}

#[tokio::test]
async fn malformed_and_oversized_requests() {
    let t = TestApp::spawn().await;
    for query in ["limit=abc", "limit=0", "limit=-1"] {
        let response = t
            .http
            .get(format!("{}/admin/actors?{query}", t.url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        expect_error(response, StatusCode::BAD_REQUEST).await;
    }
    let big = vec![b'x'; 1024 * 1024];
    let response = t
        .http
        .post(format!("{}/api/integrations/google/connect", t.url))
        .bearer_auth(t.jwt("victor"))
        .body(big)
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    let response = t
        .http
        .get(format!("{}/no/such/route", t.url))
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::NOT_FOUND).await;
    assert!(t.app().store.user("victor").await.unwrap().is_none());
    // The service is still healthy after all of it.
    let health = t
        .http
        .get(format!("{}/healthz", t.url))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    t.shutdown().await;
}

/// A body of undeclared length (`Transfer-Encoding: chunked`) over the limit gets the same JSON
/// 413 as one whose `Content-Length` says so, on a route that ignores its body (connect) and on
/// one that reads it (the console's sign-in form), where axum answered in plain text; a small
/// chunked body still reaches its handler.
#[tokio::test]
async fn an_oversized_chunked_body_gets_the_json_413() {
    let t = TestApp::spawn().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<axum::body::Body>();
    let chunked = |chunks: usize| {
        let stream =
            futures::stream::iter((0..chunks).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 4096])));
        axum::body::Body::from_stream(stream)
    };
    let post = |path: &str, chunks: usize| {
        http::Request::post(format!("{}{path}", t.url))
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", t.jwt("chunky")),
            )
            .body(chunked(chunks))
            .unwrap()
    };
    for path in ["/api/integrations/google/connect", "/console"] {
        let response = client.request(post(path, 32)).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        assert!(
            response.headers()[http::header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{path}"
        );
        let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 4096)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "payload_too_large", "{path}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let small = client
        .request(post("/api/integrations/google/connect", 2))
        .await
        .unwrap();
    assert_eq!(small.status(), StatusCode::OK);
    assert!(t.app().store.user("chunky").await.unwrap().is_none());
    t.shutdown().await;
}
