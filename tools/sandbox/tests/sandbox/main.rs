//! The sandbox Google provider and the reference microservice, driven over real HTTP on
//! loopback the way tokenwarden and the load tests drive them. One test binary; `pushes`
//! holds the microservice's versioned and signed pushes (docs/contract.md section 5a) and its stall
//! mode, `group_commit` many concurrent versioned pushes applied together, `grants` the Google
//! provider's time-limited grants and refusal modes (docs/contract.md section 9), `risc` and
//! `risc_events` the Google provider as a RISC transmitter (docs/contract.md section 10).

mod grants;
mod group_commit;
mod pushes;
mod risc;
mod risc_events;

use std::time::{Duration, Instant};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use reqwest::{Client, StatusCode, redirect::Policy};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokenwarden_sandbox::{
    FaultMode, MicroserviceConfig, ReferenceMicroservice, RefreshMode, SandboxGoogle,
    SandboxGoogleConfig, bind_loopback,
};

const REDIRECT_URI: &str = "http://localhost:3000/api/integrations/google/callback";
const SCOPES: &str = "https://www.googleapis.com/auth/calendar openid email";
const GRANTED: &str = "https://www.googleapis.com/auth/calendar openid https://www.googleapis.com/auth/userinfo.email";
const VERIFIER: &str = "a-code-verifier-that-is-long-enough-for-rfc-7636-0123456789";

fn client() -> Client {
    Client::builder().redirect(Policy::none()).build().unwrap()
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

async fn google_with(config: SandboxGoogleConfig) -> SandboxGoogle {
    SandboxGoogle::start(config, bind_loopback().await.unwrap())
        .await
        .unwrap()
}

async fn google() -> SandboxGoogle {
    google_with(SandboxGoogleConfig::default()).await
}

/// The standard authorization parameters, with `extra` added or overriding.
fn auth_params<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, String)> {
    let mut params: Vec<(&str, String)> = vec![
        ("client_id", "the-client".into()),
        ("redirect_uri", REDIRECT_URI.into()),
        ("response_type", "code".into()),
        ("scope", SCOPES.into()),
        ("state", "xyz-state".into()),
        ("code_challenge", challenge(VERIFIER)),
        ("code_challenge_method", "S256".into()),
        ("access_type", "offline".into()),
        ("prompt", "consent".into()),
    ];
    for (name, value) in extra {
        params.retain(|(n, _)| n != name);
        params.push((name, (*value).to_owned()));
    }
    params
}

/// Calls the authorization endpoint and returns the redirect's query pairs.
async fn authorize(google: &SandboxGoogle, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let response = client()
        .get(google.auth_url())
        .query(&auth_params(extra))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = response.headers()["location"].to_str().unwrap();
    assert!(location.starts_with(REDIRECT_URI), "{location}");
    url::Url::parse(location)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn pair<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn new_code(google: &SandboxGoogle, extra: &[(&str, &str)]) -> String {
    let pairs = authorize(google, extra).await;
    pair(&pairs, "code").unwrap().to_owned()
}

async fn post_token(google: &SandboxGoogle, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = client()
        .post(google.token_url())
        .form(form)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn exchange(google: &SandboxGoogle, code: &str, verifier: &str) -> (StatusCode, Value) {
    post_token(
        google,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", verifier),
            ("client_id", "the-client"),
        ],
    )
    .await
}

async fn refresh(google: &SandboxGoogle, refresh_token: &str) -> (StatusCode, Value) {
    post_token(
        google,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await
}

/// Walks the whole code flow and returns the token response.
async fn connect(google: &SandboxGoogle) -> Value {
    let code = new_code(google, &[]).await;
    let (status, body) = exchange(google, &code, VERIFIER).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn text(value: &Value, field: &str) -> String {
    value[field].as_str().unwrap().to_owned()
}

async fn userinfo(google: &SandboxGoogle, access_token: &str) -> (StatusCode, Value) {
    let response = client()
        .get(google.userinfo_url())
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test]
async fn code_flow_with_pkce_issues_tokens_once() {
    let google = google().await;
    let pairs = authorize(&google, &[("login_hint", "ada@example.com")]).await;
    assert_eq!(pair(&pairs, "state"), Some("xyz-state"));
    let code = pair(&pairs, "code").unwrap().to_owned();

    let (status, body) =
        exchange(&google, &code, "the-wrong-verifier-0123456789-0123456789-x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert!(body["error_description"].is_string());

    // A failed attempt spends the code, so a fresh one is needed.
    let code = new_code(&google, &[("login_hint", "ada@example.com")]).await;
    let (status, body) = exchange(&google, &code, VERIFIER).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(text(&body, "access_token").starts_with("ya29.sandbox-"));
    assert!(text(&body, "refresh_token").starts_with("1//sandbox-"));
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], GRANTED);
    assert!(body["id_token"].is_string());

    let (status, again) = exchange(&google, &code, VERIFIER).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(again["error"], "invalid_grant");

    let (status, info) = userinfo(&google, &text(&body, "access_token")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["email"], "ada@example.com");
    assert_eq!(info["email_verified"], true);
    assert!(info["sub"].is_string());

    let stats = google.stats();
    assert_eq!(stats.codes_issued, 2);
    assert_eq!(stats.code_exchanges, 1);
    assert_eq!((stats.grants, stats.active_grants), (1, 1));
    let issued = google.issued_tokens();
    assert!(issued.contains(&text(&body, "access_token")));
    assert!(issued.contains(&text(&body, "refresh_token")));
    google.shutdown().await;
}

#[tokio::test]
async fn exchange_checks_redirect_uri_and_verifier_presence() {
    let google = google().await;
    let code = new_code(&google, &[]).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", "http://localhost:9999/elsewhere"),
        ("code_verifier", VERIFIER),
    ];
    let (status, body) = post_token(&google, &form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    let code = new_code(&google, &[]).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT_URI),
    ];
    let (status, body) = post_token(&google, &form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn anonymous_users_get_numbered_sandbox_addresses() {
    let google = google().await;
    let first = connect(&google).await;
    let second = connect(&google).await;
    let (_, a) = userinfo(&google, &text(&first, "access_token")).await;
    let (_, b) = userinfo(&google, &text(&second, "access_token")).await;
    assert_eq!(a["email"], "sandbox-user-1@sandbox.test");
    assert_eq!(b["email"], "sandbox-user-2@sandbox.test");
    assert_ne!(a["sub"], b["sub"]);
}

#[tokio::test]
async fn authorization_rejects_bad_requests_with_json() {
    let google = google_with(SandboxGoogleConfig {
        client_id: Some("the-client".into()),
        ..Default::default()
    })
    .await;
    let cases: Vec<Vec<(&str, String)>> = vec![
        auth_params(&[])
            .into_iter()
            .filter(|(n, _)| *n != "redirect_uri")
            .collect(),
        auth_params(&[])
            .into_iter()
            .filter(|(n, _)| *n != "code_challenge")
            .collect(),
        auth_params(&[("code_challenge_method", "plain")]),
        auth_params(&[("client_id", "someone-else")]),
    ];
    for params in cases {
        let response = client()
            .get(google.auth_url())
            .query(&params)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{params:?}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{body}");
    }
    assert_eq!(google.stats().codes_issued, 0);
}

#[tokio::test]
async fn deny_redirects_with_access_denied() {
    let google = google().await;
    let pairs = authorize(&google, &[("deny", "1")]).await;
    assert_eq!(pair(&pairs, "error"), Some("access_denied"));
    assert_eq!(pair(&pairs, "state"), Some("xyz-state"));
    assert_eq!(pair(&pairs, "code"), None);

    google.set_deny(true);
    let pairs = authorize(&google, &[]).await;
    assert_eq!(pair(&pairs, "error"), Some("access_denied"));
    google.set_deny(false);
    assert!(pair(&authorize(&google, &[]).await, "code").is_some());
}

#[tokio::test]
async fn configured_client_is_checked_by_basic_or_form() {
    let google = google_with(SandboxGoogleConfig {
        client_id: Some("the-client".into()),
        client_secret: Some("s3cret:with+odd=chars".into()),
        ..Default::default()
    })
    .await;
    let tokens = connect_with_basic(&google, "s3cret%3Awith%2Bodd%3Dchars").await;
    assert_eq!(tokens.0, StatusCode::OK, "{}", tokens.1);

    let (status, body) = connect_with_basic(&google, "wrong").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    assert!(body["error_description"].is_string());

    let refresh_token = text(&tokens.1, "refresh_token");
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.as_str()),
        ("client_id", "the-client"),
        ("client_secret", "s3cret:with+odd=chars"),
    ];
    assert_eq!(post_token(&google, &form).await.0, StatusCode::OK);
    let (status, body) = refresh(&google, &refresh_token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
}

/// The code flow authenticating with HTTP Basic, the secret already form-urlencoded.
async fn connect_with_basic(google: &SandboxGoogle, encoded_secret: &str) -> (StatusCode, Value) {
    let code = new_code(google, &[]).await;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("the-client:{encoded_secret}"));
    let response = client()
        .post(google.token_url())
        .header("authorization", format!("Basic {credentials}"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test]
async fn refresh_issues_a_new_access_token() {
    let google = google().await;
    let tokens = connect(&google).await;
    let (status, body) = refresh(&google, &text(&tokens, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ne!(body["access_token"], tokens["access_token"]);
    assert!(body.get("refresh_token").is_none());
    assert_eq!(body["scope"], GRANTED);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert!(google.is_access_token_valid(&text(&body, "access_token")));
    assert!(google.is_access_token_valid(&text(&tokens, "access_token")));
    assert!(google.is_refresh_token_valid(&text(&tokens, "refresh_token")));
    assert_eq!(google.stats().refreshes, 1);

    let (status, body) = refresh(&google, "1//sandbox-never-issued").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
    );
}

#[tokio::test]
async fn access_tokens_expire_after_their_lifetime() {
    let google = google().await;
    google.set_token_lifetime(Duration::from_secs(1));
    let tokens = connect(&google).await;
    assert_eq!(tokens["expires_in"], 1);
    let access = text(&tokens, "access_token");
    assert!(google.is_access_token_valid(&access));
    let expires_at = google.access_token_expires_at(&access).unwrap();
    assert!(expires_at > chrono::Utc::now());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!google.is_access_token_valid(&access));
    assert_eq!(userinfo(&google, &access).await.0, StatusCode::UNAUTHORIZED);
    assert!(google.is_refresh_token_valid(&text(&tokens, "refresh_token")));
}

#[tokio::test]
async fn rotation_keeps_the_old_token_for_the_grace_then_refuses_it() {
    let google = google().await;
    let tokens = connect(&google).await;
    let first = text(&tokens, "refresh_token");
    google.set_rotation(true, Duration::from_secs(1));

    let (status, body) = refresh(&google, &first).await;
    assert_eq!(status, StatusCode::OK);
    let second = text(&body, "refresh_token");
    assert_ne!(first, second);
    assert!(google.is_refresh_token_valid(&first));

    // Within the grace the old token still works and hands back the current one.
    let (status, body) = refresh(&google, &first).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text(&body, "refresh_token"), second);
    let stats = google.stats();
    assert_eq!(
        (stats.superseded_refresh_uses, stats.stale_refresh_uses),
        (1, 0)
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!google.is_refresh_token_valid(&first));
    let (status, body) = refresh(&google, &first).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let stats = google.stats();
    assert_eq!(
        (stats.superseded_refresh_uses, stats.stale_refresh_uses),
        (2, 1)
    );

    let (status, body) = refresh(&google, &second).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["refresh_token"].is_string());
}

#[tokio::test]
async fn revoking_any_token_revokes_the_whole_grant() {
    let google = google().await;
    let tokens = connect(&google).await;
    let other = connect(&google).await;
    let (access, refresh_token) = (
        text(&tokens, "access_token"),
        text(&tokens, "refresh_token"),
    );

    let response = client()
        .post(google.revoke_url())
        .form(&[("token", access.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({}));

    let (status, body) = refresh(&google, &refresh_token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error_description"],
        "Token has been expired or revoked."
    );
    assert!(!google.is_access_token_valid(&access));
    assert!(!google.is_refresh_token_valid(&refresh_token));
    assert_eq!(
        userinfo(&google, &access).await,
        (StatusCode::UNAUTHORIZED, json!({"error": "invalid_token"}))
    );
    assert_eq!(
        refresh(&google, &text(&other, "refresh_token")).await.0,
        StatusCode::OK
    );

    let response = client()
        .post(google.revoke_url())
        .form(&[("token", "not-a-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"error": "invalid_token"})
    );

    assert_eq!(
        google.revoked_tokens(),
        vec![access, "not-a-token".to_owned()]
    );
    let stats = google.stats();
    assert_eq!(
        (stats.revocations, stats.grants, stats.active_grants),
        (1, 2, 1)
    );

    assert!(google.revoke_grant_of(&text(&other, "refresh_token")));
    assert!(!google.revoke_grant_of(&text(&other, "refresh_token")));
    let (status, _) = refresh(&google, &text(&other, "refresh_token")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(google.stats().active_grants, 0);
}

#[tokio::test]
async fn refresh_modes_inject_failures() {
    let google = google().await;
    let refresh_token = text(&connect(&google).await, "refresh_token");

    google.set_refresh_mode(RefreshMode::Error500);
    let answer = refresh(&google, &refresh_token).await;
    assert_eq!(
        answer,
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "internal_failure"})
        )
    );

    google.set_refresh_mode(RefreshMode::InvalidGrant);
    let (status, body) = refresh(&google, &refresh_token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    google.set_refresh_mode(RefreshMode::Ok);
    google.set_error_rate(1.0);
    assert_eq!(
        refresh(&google, &refresh_token).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    google.set_error_rate(0.0);

    google.set_refresh_mode(RefreshMode::Hang);
    let timed_out = Client::new()
        .post(google.token_url())
        .timeout(Duration::from_millis(300))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.as_str()),
        ])
        .send()
        .await
        .unwrap_err();
    assert!(timed_out.is_timeout());

    // A hanging request is released (with a 500) as soon as the mode changes.
    let pending = tokio::spawn({
        let google = google.clone();
        let refresh_token = refresh_token.clone();
        async move { refresh(&google, &refresh_token).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    google.set_refresh_mode(RefreshMode::Ok);
    let (status, _) = tokio::time::timeout(Duration::from_secs(2), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);

    assert_eq!(refresh(&google, &refresh_token).await.0, StatusCode::OK);
    let stats = google.stats();
    assert_eq!((stats.refresh_failures_injected, stats.refreshes), (5, 1));
    assert!(google.is_refresh_token_valid(&refresh_token));
}

#[tokio::test]
async fn latency_delays_token_answers() {
    let google = google().await;
    let refresh_token = text(&connect(&google).await, "refresh_token");
    google.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(refresh(&google, &refresh_token).await.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn omit_refresh_token_answers_without_one() {
    let google = google().await;
    google.set_omit_refresh_token(true);
    let tokens = connect(&google).await;
    assert!(tokens.get("refresh_token").is_none());
    assert!(google.is_access_token_valid(&text(&tokens, "access_token")));
}

#[tokio::test]
async fn controls_and_stats_over_http() {
    let google = google().await;
    let control_url = format!("{}/sandbox/control", google.base_url());
    let response = client()
        .post(&control_url)
        .json(&json!({"refresh_mode": "invalid_grant", "latency_ms": 5, "rotate_refresh_tokens": true, "rotation_grace_secs": 2, "omit_refresh_token": true, "untick_scopes": ["email"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let controls: Value = response.json().await.unwrap();
    assert_eq!(
        controls,
        json!({
            "refresh_mode": "invalid_grant", "latency_ms": 5, "error_rate": 0.0,
            "rotate_refresh_tokens": true, "rotation_grace_secs": 2, "token_lifetime_secs": 3600,
            "deny": false, "omit_refresh_token": true, "untick_scopes": ["email"],
            "grant_lifetime_secs": 0
        })
    );
    assert_eq!(google.controls().refresh_mode, RefreshMode::InvalidGrant);

    for bad in [
        json!({"error_rate": 1.5}),
        json!({"refresh_mode": "sideways"}),
        json!({"nope": 1}),
    ] {
        let response = client().post(&control_url).json(&bad).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }

    connect(&google).await;
    let stats: Value = client()
        .get(format!("{}/sandbox/stats", google.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for counter in [
        "codes_issued",
        "code_exchanges",
        "refreshes",
        "refresh_failures_injected",
        "revocations",
        "stale_refresh_uses",
        "superseded_refresh_uses",
        "grants",
        "active_grants",
    ] {
        assert!(stats[counter].is_u64(), "{counter} in {stats}");
    }
    assert_eq!(stats["code_exchanges"], 1);
}

#[tokio::test]
async fn record_issued_off_keeps_no_token_list() {
    let google = google_with(SandboxGoogleConfig {
        record_issued: false,
        ..Default::default()
    })
    .await;
    let tokens = connect(&google).await;
    assert!(google.issued_tokens().is_empty());
    assert!(google.is_access_token_valid(&text(&tokens, "access_token")));
}

#[tokio::test]
async fn shutdown_frees_the_port() {
    let google = google().await;
    let url = google.token_url();
    google.shutdown().await;
    assert!(client().post(url).send().await.unwrap_err().is_connect());
}

// The reference microservice.

const EXPIRY: &str = "2025-12-13T10:30:00Z";

async fn microservice_with(config: MicroserviceConfig) -> ReferenceMicroservice {
    ReferenceMicroservice::start(config, bind_loopback().await.unwrap())
        .await
        .unwrap()
}

/// A microservice with its test routes, as the tests and the demo run it.
async fn microservice() -> ReferenceMicroservice {
    microservice_with(MicroserviceConfig {
        sandbox_controls: true,
        ..Default::default()
    })
    .await
}

fn tokens_body(access: &str) -> Value {
    json!({
        "access_token": access,
        "refresh_token": "1//refresh",
        "token_expiry": EXPIRY,
        "scope": "https://www.googleapis.com/auth/calendar",
    })
}

async fn push(ms: &ReferenceMicroservice, user: &str, body: &Value) -> (StatusCode, Value) {
    let response = client()
        .post(format!(
            "{}/api/users/{user}/google-calendar/connect",
            ms.base_url()
        ))
        .json(body)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn remove(ms: &ReferenceMicroservice, user: &str) -> (StatusCode, Value) {
    let response = client()
        .delete(format!("{}/api/google-tokens/{user}", ms.base_url()))
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn fetch(ms: &ReferenceMicroservice, user: &str) -> (StatusCode, Value) {
    let response = client()
        .get(format!(
            "{}/api/users/{user}/google-calendar",
            ms.base_url()
        ))
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test]
async fn connect_get_and_delete_answer_the_contract_bodies() {
    let ms = microservice().await;
    let answer = push(&ms, "user-1", &tokens_body("ya29.first")).await;
    assert_eq!(
        answer,
        (
            StatusCode::OK,
            json!({"success": true, "message": "Google Calendar connected successfully", "user_id": "user-1", "token_expiry": EXPIRY})
        )
    );
    assert_eq!(
        push(&ms, "user-1", &tokens_body("ya29.second")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        push(&ms, "user-2", &tokens_body("ya29.other")).await.0,
        StatusCode::OK
    );
    assert_eq!(ms.stored_count().await.unwrap(), 2);

    let stored = ms.stored("user-1").await.unwrap().unwrap();
    assert_eq!(stored.access_token, "ya29.second");
    assert_eq!(stored.refresh_token, "1//refresh");
    assert_eq!(stored.token_expiry, EXPIRY);
    assert_eq!(stored.scope, "https://www.googleapis.com/auth/calendar");

    let (status, body) = fetch(&ms, "user-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user_id"], "user-1");
    assert_eq!(body["access_token"], "ya29.second");
    assert_eq!(body["token_expiry"], EXPIRY);
    assert!(body["updated_at"].as_str().unwrap().ends_with('Z'));

    let answer = remove(&ms, "user-1").await;
    assert_eq!(
        answer,
        (
            StatusCode::OK,
            json!({"success": true, "message": "Google Calendar disconnected successfully", "user_id": "user-1"})
        )
    );
    let not_found = json!({"success": false, "message": "No tokens found for user"});
    assert_eq!(
        remove(&ms, "user-1").await,
        (StatusCode::NOT_FOUND, not_found.clone())
    );
    assert_eq!(
        fetch(&ms, "user-1").await,
        (StatusCode::NOT_FOUND, not_found)
    );
    assert!(ms.stored("user-1").await.unwrap().is_none());
    assert_eq!(ms.stored_count().await.unwrap(), 1);
}

#[tokio::test]
async fn connect_rejects_incomplete_or_malformed_bodies() {
    let ms = microservice().await;
    let missing = json!({"refresh_token": "r", "token_expiry": EXPIRY, "access_token": ""});
    assert_eq!(
        push(&ms, "u", &missing).await,
        (
            StatusCode::BAD_REQUEST,
            json!({"success": false, "message": "Missing required fields: access_token, scope"})
        )
    );
    let mut bad_expiry = tokens_body("a");
    bad_expiry["token_expiry"] = json!("next tuesday");
    assert_eq!(
        push(&ms, "u", &bad_expiry).await,
        (
            StatusCode::BAD_REQUEST,
            json!({"success": false, "message": "Invalid token_expiry: must be an ISO 8601 timestamp"})
        )
    );
    let response = client()
        .post(format!(
            "{}/api/users/u/google-calendar/connect",
            ms.base_url()
        ))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], false);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid JSON body")
    );

    let long_user = "x".repeat(51);
    assert_eq!(
        push(&ms, &long_user, &tokens_body("a")).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(ms.stored_count().await.unwrap(), 0);
}

#[tokio::test]
async fn bearer_token_is_required_when_configured() {
    let ms = microservice_with(MicroserviceConfig {
        bearer_token: Some("ms-secret".into()),
        ..Default::default()
    })
    .await;
    let unauthorized = json!({"success": false, "message": "Unauthorized"});
    assert_eq!(
        push(&ms, "u", &tokens_body("a")).await,
        (StatusCode::UNAUTHORIZED, unauthorized.clone())
    );
    let url = format!("{}/api/google-tokens/u", ms.base_url());
    let response = client()
        .delete(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.json::<Value>().await.unwrap(), unauthorized);

    let response = client()
        .post(format!(
            "{}/api/users/u/google-calendar/connect",
            ms.base_url()
        ))
        .bearer_auth("ms-secret")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .json(&tokens_body("a"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let received = ms.received();
    assert_eq!(received.len(), 3);
    let last = received.last().unwrap();
    assert_eq!(
        (
            last.method.as_str(),
            last.path.as_str(),
            last.user_id.as_str()
        ),
        ("POST", "/api/users/u/google-calendar/connect", "u")
    );
    assert_eq!(last.authorization.as_deref(), Some("Bearer ms-secret"));
    assert_eq!(
        last.traceparent.as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(last.body, Some(tokens_body("a")));
    assert_eq!((last.status, last.injected_fault), (200, false));
    assert_eq!(received[0].status, 401);
    assert_eq!(received[1].method, "DELETE");
}

#[tokio::test]
async fn bearer_token_refuses_wrong_tokens_of_any_length() {
    let ms = microservice_with(MicroserviceConfig {
        bearer_token: Some("ms-secret".into()),
        ..Default::default()
    })
    .await;
    let url = format!("{}/api/users/u/google-calendar/connect", ms.base_url());
    let attempt = |token: Option<&'static str>| {
        let mut request = client().post(&url).json(&tokens_body("a"));
        if let Some(token) = token {
            request = request.header("authorization", token);
        }
        async move { request.send().await.unwrap().status() }
    };
    for wrong in [
        "Bearer ms-secreX",
        "Bearer MS-SECRET",
        "Bearer ms-secre",
        "Bearer ms-secret-and-more",
        "Bearer ",
        "bearer ms-secret",
        "ms-secret",
    ] {
        assert_eq!(
            attempt(Some(wrong)).await,
            StatusCode::UNAUTHORIZED,
            "{wrong}"
        );
    }
    assert_eq!(attempt(None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(ms.stored_count().await.unwrap(), 0);
    assert_eq!(attempt(Some("Bearer ms-secret")).await, StatusCode::OK);

    // Timing is not observable in a test: check that the comparison is the constant-time one.
    let source = include_str!("../../src/microservice/mod.rs");
    let check = &source[source.find("fn authorized(").unwrap()..];
    let check = &check[..check.find("\n    }\n").unwrap()];
    assert!(check.contains("secrets_match("), "{check}");
    assert!(!check.contains("=="), "{check}");
}

#[tokio::test]
async fn test_routes_exist_only_with_sandbox_controls() {
    let ms = microservice_with(MicroserviceConfig::default()).await;
    let control_url = format!("{}/sandbox/control", ms.base_url());
    let not_found = json!({"success": false, "message": "Not found"});
    let response = client()
        .post(&control_url)
        .json(&json!({"mode": "error500"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.json::<Value>().await.unwrap(), not_found);
    // The contract's routes work, and the refused control changed nothing.
    assert_eq!(
        push(&ms, "u", &tokens_body("ya29.hidden")).await.0,
        StatusCode::OK
    );
    assert_eq!(fetch(&ms, "u").await, (StatusCode::NOT_FOUND, not_found));
    assert_eq!(remove(&ms, "u").await.0, StatusCode::OK);
    assert_eq!(remove(&ms, "u").await.0, StatusCode::NOT_FOUND);
    assert!(
        ms.received()
            .iter()
            .all(|r| r.path.ends_with("/connect") || r.path.starts_with("/api/google-tokens/")),
        "refused test routes never reach the handlers"
    );

    let ms = microservice().await;
    assert_eq!(
        push(&ms, "u", &tokens_body("ya29.shown")).await.0,
        StatusCode::OK
    );
    let (status, body) = fetch(&ms, "u").await;
    assert_eq!(
        (status, &body["access_token"]),
        (StatusCode::OK, &json!("ya29.shown"))
    );
    let response = client()
        .post(format!("{}/sandbox/control", ms.base_url()))
        .json(&json!({"mode": "error500"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        push(&ms, "u", &tokens_body("ya29.next")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[tokio::test]
async fn fault_modes_fail_without_touching_the_store() {
    let ms = microservice().await;
    ms.set_mode(FaultMode::Error500);
    let (status, body) = push(&ms, "u", &tokens_body("a")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["success"], false);
    assert_eq!(ms.stored_count().await.unwrap(), 0);
    assert!(ms.received()[0].injected_fault);

    ms.set_mode(FaultMode::FlakyEveryOther);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(push(&ms, "u", &tokens_body("a")).await.0.as_u16());
    }
    assert_eq!(statuses, [500, 200, 500, 200]);

    ms.set_mode(FaultMode::ErrorRate(1.0));
    assert_eq!(
        push(&ms, "u", &tokens_body("b")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    ms.set_mode(FaultMode::ErrorRate(0.0));
    assert_eq!(push(&ms, "u", &tokens_body("b")).await.0, StatusCode::OK);

    ms.set_mode(FaultMode::Hang);
    let timed_out = Client::new()
        .delete(format!("{}/api/google-tokens/u", ms.base_url()))
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    assert!(timed_out.is_timeout());
    let pending = tokio::spawn({
        let ms = ms.clone();
        async move { remove(&ms, "u").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    ms.set_mode(FaultMode::Healthy);
    let (status, _) = tokio::time::timeout(Duration::from_secs(2), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(ms.stored("u").await.unwrap().unwrap().access_token, "b");

    ms.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(fetch(&ms, "u").await.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn controls_over_http() {
    let ms = microservice().await;
    let url = format!("{}/sandbox/control", ms.base_url());
    let response = client()
        .post(&url)
        .json(&json!({"mode": "error_rate", "error_rate": 1.0, "latency_ms": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"mode": "error_rate", "error_rate": 1.0, "latency_ms": 0, "stalled": 0})
    );
    assert_eq!(
        push(&ms, "u", &tokens_body("a")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    for bad in [
        json!({"mode": "error_rate"}),
        json!({"mode": "broken"}),
        json!({"error_rate": 2.0}),
    ] {
        let response = client().post(&url).json(&bad).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    client()
        .post(&url)
        .json(&json!({"mode": "healthy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(push(&ms, "u", &tokens_body("a")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn stop_refuses_connections_and_restart_keeps_the_data() {
    let ms = microservice().await;
    let http = client();
    let connect_url = format!("{}/api/users/u/google-calendar/connect", ms.base_url());
    let ok = http
        .post(&connect_url)
        .json(&tokens_body("kept"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);

    ms.stop().await;
    // The same client, with its pooled keep-alive connection, must not get through either.
    let refused = http
        .post(&connect_url)
        .json(&tokens_body("lost"))
        .send()
        .await
        .unwrap_err();
    assert!(refused.is_connect(), "{refused:?}");

    ms.restart().await.unwrap();
    let (status, body) = fetch(&ms, "u").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["access_token"], "kept");
    let again = http
        .post(&connect_url)
        .json(&tokens_body("new"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(ms.stored("u").await.unwrap().unwrap().access_token, "new");
}

#[tokio::test]
async fn stop_releases_hanging_requests() {
    let ms = microservice().await;
    ms.set_mode(FaultMode::Hang);
    let pending = tokio::spawn({
        let ms = ms.clone();
        async move {
            client()
                .delete(format!("{}/api/google-tokens/u", ms.base_url()))
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    ms.stop().await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let answer = tokio::time::timeout(Duration::from_secs(2), pending)
        .await
        .unwrap()
        .unwrap();
    assert!(answer.is_err() || answer.unwrap().status() == StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn sqlite_file_database_with_a_pool() {
    let path = std::env::temp_dir().join(format!("sandbox-ms-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let config = MicroserviceConfig {
        database_url: format!("sqlite://{}?mode=rwc", path.display()),
        record_requests: false,
        ..Default::default()
    };
    let ms = microservice_with(config.clone()).await;
    for user in ["a", "b", "c"] {
        assert_eq!(push(&ms, user, &tokens_body(user)).await.0, StatusCode::OK);
    }
    assert!(ms.received().is_empty());
    ms.stop().await;

    // A second instance on the same file sees the rows: they really are on disk.
    let reopened = microservice_with(config).await;
    assert_eq!(reopened.stored_count().await.unwrap(), 3);
    let with_offset = json!({"access_token": "x", "refresh_token": "y", "token_expiry": "2025-12-13T12:30:00+02:00", "scope": "s"});
    let (status, body) = push(&reopened, "a", &with_offset).await;
    assert_eq!(
        (status, body["token_expiry"].as_str()),
        (StatusCode::OK, Some("2025-12-13T12:30:00+02:00"))
    );
    assert_eq!(
        reopened.stored("a").await.unwrap().unwrap().token_expiry,
        EXPIRY
    );
    reopened.stop().await;
    let _ = std::fs::remove_file(&path);
}

#[derive(clap::Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    SandboxGoogle(tokenwarden_sandbox::SandboxGoogleArgs),
    Microservice(tokenwarden_sandbox::MicroserviceArgs),
}

#[test]
fn command_line_flags_parse_with_defaults() {
    use clap::Parser;
    let Command::SandboxGoogle(google) = Cli::try_parse_from(["tw", "sandbox-google"])
        .unwrap()
        .command
    else {
        panic!("wrong subcommand");
    };
    assert_eq!(google.listen.to_string(), "127.0.0.1:4100");
    assert_eq!(
        (google.token_lifetime_secs, google.rotation_grace_secs),
        (3600, 30)
    );
    assert!(!google.rotate_refresh_tokens);
    let args = [
        "tw",
        "sandbox-google",
        "--rotate-refresh-tokens",
        "--latency-ms",
        "5",
        "--error-rate",
        "0.5",
        "--client-secret",
        "hidden",
    ];
    let Command::SandboxGoogle(google) = Cli::try_parse_from(args).unwrap().command else {
        panic!("wrong subcommand");
    };
    assert!(google.rotate_refresh_tokens);
    assert_eq!((google.latency_ms, google.error_rate), (5, 0.5));
    assert!(!format!("{google:?}").contains("hidden"));

    let Command::Microservice(ms) = Cli::try_parse_from(["tw", "microservice"]).unwrap().command
    else {
        panic!("wrong subcommand");
    };
    assert_eq!(ms.listen.to_string(), "127.0.0.1:4000");
    assert_eq!(ms.database_url, "sqlite::memory:");
    assert!(!ms.sandbox_controls, "test routes are off unless asked for");
    let Command::Microservice(ms) =
        Cli::try_parse_from(["tw", "microservice", "--sandbox-controls"])
            .unwrap()
            .command
    else {
        panic!("wrong subcommand");
    };
    assert!(ms.sandbox_controls);

    // `--help` never prints the secrets it read from the environment.
    let command = <tokenwarden_sandbox::MicroserviceArgs as clap::Args>::augment_args(
        clap::Command::new("ms"),
    );
    for secret in ["token", "signing_secret", "database_url"] {
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == secret)
            .unwrap();
        assert!(arg.is_hide_env_values_set(), "{secret}");
    }
}

#[tokio::test]
async fn run_serves_until_stopped() {
    let listen = bind_loopback().await.unwrap().local_addr().unwrap();
    let args = tokenwarden_sandbox::MicroserviceArgs {
        listen,
        database_url: "sqlite::memory:".into(),
        token: None,
        signing_secret: None,
        sandbox_controls: false,
    };
    let server = tokio::spawn(tokenwarden_sandbox::microservice::run(args));
    let url = format!("http://{listen}/api/google-tokens/nobody");
    let mut answer = None;
    for _ in 0..50 {
        if let Ok(response) = client().delete(&url).send().await {
            answer = Some(response.status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(answer, Some(StatusCode::NOT_FOUND));
    // The subcommand serves no test routes unless asked.
    let control = client()
        .post(format!("http://{listen}/sandbox/control"))
        .json(&json!({"mode": "hang"}))
        .send()
        .await
        .unwrap();
    assert_eq!(control.status(), StatusCode::NOT_FOUND);
    server.abort();
}
