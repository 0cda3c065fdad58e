//! Time-limited grants (docs/contract.md section 9) in the sandbox Google: the `grant_lifetime`
//! setting (flag, config, control), `refresh_token_expires_in` in the answers, Google's
//! `invalid_grant` from the end on, the per-grant control `POST /sandbox/grant` that sets, moves
//! and clears an end, the timing of refresh requests; and the refusal modes that are not the user's
//! doing.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokenwarden_sandbox::{
    GrantSelector, RefreshMode, SandboxGoogle, SandboxGoogleArgs, SandboxGoogleConfig,
};

use super::{Cli, Command, client, connect, google, google_with, new_code, refresh, text};

/// What Google answers a refresh token it no longer honours.
fn expired() -> Value {
    json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
}

async fn grant_control(google: &SandboxGoogle, body: Value) -> (StatusCode, Value) {
    let response = client()
        .post(format!("{}/sandbox/grant", google.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

/// Walks the code flow for `email` and returns the token answer.
async fn connect_as(google: &SandboxGoogle, email: &str) -> Value {
    let code = new_code(google, &[("login_hint", email)]).await;
    let (status, body) = super::exchange(google, &code, super::VERIFIER).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn ongoing_access_answers_carry_no_end() {
    let google = google().await;
    let tokens = connect(&google).await;
    assert!(tokens.get("refresh_token_expires_in").is_none(), "{tokens}");
    let (status, body) = refresh(&google, &text(&tokens, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.get("refresh_token_expires_in").is_none(), "{body}");
    let grant = google
        .grant(&GrantSelector::RefreshToken(text(&tokens, "refresh_token")))
        .unwrap();
    assert_eq!((grant.expires_at, grant.expires_in_secs), (None, None));
}

#[tokio::test]
async fn a_time_limited_grant_ends_with_invalid_grant() {
    let google = google_with(SandboxGoogleConfig {
        grant_lifetime: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let tokens = connect(&google).await;
    assert_eq!(tokens["refresh_token_expires_in"], 2);
    let refresh_token = text(&tokens, "refresh_token");

    let (status, body) = refresh(&google, &refresh_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Whole seconds left, rounded down: never a promise past the end.
    let left = body["refresh_token_expires_in"].as_u64().unwrap();
    assert!(left <= 2, "{body}");
    assert!(google.is_refresh_token_valid(&refresh_token));
    assert_eq!(google.stats().refreshes_after_grant_end, 0);

    let grant = google
        .grant(&GrantSelector::RefreshToken(refresh_token.clone()))
        .unwrap();
    let end = grant.expires_at.unwrap();
    let wait = (end - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(50)).await;

    assert_eq!(
        refresh(&google, &refresh_token).await,
        (StatusCode::BAD_REQUEST, expired())
    );
    assert!(!google.is_refresh_token_valid(&refresh_token));
    let stats = google.stats();
    assert_eq!((stats.refreshes, stats.refreshes_after_grant_end), (1, 1));
    let grant = google
        .grant(&GrantSelector::RefreshToken(refresh_token))
        .unwrap();
    assert_eq!(grant.expires_in_secs, Some(0));
    assert_eq!(grant.refresh_requests.len(), 2);
    assert!(grant.refresh_requests[0] < end && grant.refresh_requests[1] >= end);
    // An ended grant is not a revoked one: the user never withdrew anything.
    assert!(!grant.revoked);
}

#[tokio::test]
async fn the_grant_control_sets_moves_and_clears_the_end() {
    let google = google().await;
    let tokens = connect_as(&google, "ada@example.com").await;
    let refresh_token = text(&tokens, "refresh_token");

    let (status, view) = grant_control(
        &google,
        json!({"email": "ada@example.com", "expires_in_secs": 600}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["email"], "ada@example.com");
    assert!(view["expires_at"].is_string(), "{view}");
    let left = view["expires_in_secs"].as_u64().unwrap();
    assert!((599..=600).contains(&left), "{view}");
    let (_, body) = refresh(&google, &refresh_token).await;
    let left = body["refresh_token_expires_in"].as_u64().unwrap();
    assert!((598..=600).contains(&left), "{body}");

    // Moved to now: the next refresh finds the grant over.
    let (status, view) = grant_control(
        &google,
        json!({"refresh_token": refresh_token, "expires_in_secs": 0}),
    )
    .await;
    assert_eq!(
        (status, &view["expires_in_secs"]),
        (StatusCode::OK, &json!(0))
    );
    assert_eq!(
        refresh(&google, &refresh_token).await,
        (StatusCode::BAD_REQUEST, expired())
    );
    let stats: Value = client()
        .get(format!("{}/sandbox/stats", google.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["refreshes_after_grant_end"], 1, "{stats}");

    // Moved later again, by the grant's sub: refreshes work and say so.
    let sub = view["sub"].as_str().unwrap().to_owned();
    let (status, _) = grant_control(&google, json!({"sub": sub, "expires_in_secs": 60})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = refresh(&google, &refresh_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["refresh_token_expires_in"].as_u64().unwrap() <= 60);

    // Cleared: ongoing access, no field in the answers.
    let (status, view) = grant_control(&google, json!({"sub": sub, "expires_in_secs": null})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&view["expires_at"], &view["expires_in_secs"]),
        (&Value::Null, &Value::Null)
    );
    let (status, body) = refresh(&google, &refresh_token).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.get("refresh_token_expires_in").is_none(), "{body}");

    // Without `expires_in_secs` the control only reads; the arrivals were kept while timed.
    let (status, view) = grant_control(&google, json!({"sub": sub})).await;
    assert_eq!(
        (status, &view["expires_at"]),
        (StatusCode::OK, &Value::Null)
    );
    assert_eq!(view["refresh_requests"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn an_email_names_the_accounts_newest_grant() {
    let google = google().await;
    let first = connect_as(&google, "bo@example.com").await;
    let second = connect_as(&google, "bo@example.com").await;
    let (status, _) = grant_control(
        &google,
        json!({"email": "bo@example.com", "expires_in_secs": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        refresh(&google, &text(&second, "refresh_token")).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        refresh(&google, &text(&first, "refresh_token")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_grant_control_refuses_bad_requests() {
    let google = google().await;
    let tokens = connect_as(&google, "cy@example.com").await;
    let refresh_token = text(&tokens, "refresh_token");
    for bad in [
        json!({}),
        json!({"expires_in_secs": 5}),
        json!({"email": "cy@example.com", "sub": "1"}),
        json!({"email": "cy@example.com", "expires_in_secs": -1}),
        json!({"email": "cy@example.com", "later": true}),
    ] {
        let (status, body) = grant_control(&google, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["error"], "invalid_request", "{bad}");
    }
    // A malformed body is refused without quoting it back: a value there may be a token.
    let (status, body) = grant_control(
        &google,
        json!({"email": "cy@example.com", "expires_in_secs": refresh_token}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!body.to_string().contains(&refresh_token), "{body}");
    for unknown in [
        json!({"email": "nobody@example.com"}),
        json!({"sub": "99"}),
        json!({"sub": "0"}),
        json!({"refresh_token": "1//sandbox-never-issued"}),
    ] {
        let (status, body) = grant_control(&google, unknown.clone()).await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::NOT_FOUND, &json!("not_found")),
            "{unknown}"
        );
    }
    assert_eq!(refresh(&google, &refresh_token).await.0, StatusCode::OK);
    // The selector's Debug never shows a token.
    let shown = format!("{:?}", GrantSelector::RefreshToken(refresh_token.clone()));
    assert!(!shown.contains(&refresh_token), "{shown}");
}

#[tokio::test]
async fn grant_lifetime_is_a_control_too() {
    let google = google().await;
    let response = client()
        .post(format!("{}/sandbox/control", google.base_url()))
        .json(&json!({"grant_lifetime_secs": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap()["grant_lifetime_secs"],
        30
    );
    assert_eq!(connect(&google).await["refresh_token_expires_in"], 30);
    google.set_grant_lifetime(Duration::ZERO);
    assert_eq!(google.controls().grant_lifetime_secs, 0);
    assert!(
        connect(&google)
            .await
            .get("refresh_token_expires_in")
            .is_none()
    );
}

#[tokio::test]
async fn refusal_modes_answer_as_google_and_consume_nothing() {
    let google = google().await;
    let refresh_token = text(&connect(&google).await, "refresh_token");
    let cases = [
        (
            RefreshMode::InvalidClient,
            "invalid_client",
            StatusCode::UNAUTHORIZED,
        ),
        (
            RefreshMode::DeletedClient,
            "deleted_client",
            StatusCode::UNAUTHORIZED,
        ),
        (
            RefreshMode::AdminPolicyEnforced,
            "admin_policy_enforced",
            StatusCode::BAD_REQUEST,
        ),
        (
            RefreshMode::RateLimited,
            "rate_limit_exceeded",
            StatusCode::TOO_MANY_REQUESTS,
        ),
    ];
    for (mode, error, status) in cases {
        google.set_refresh_mode(mode);
        let (got, body) = refresh(&google, &refresh_token).await;
        assert_eq!((got, &body["error"]), (status, &json!(error)), "{mode:?}");
        assert!(body["error_description"].is_string(), "{body}");
    }
    let response = client()
        .post(format!("{}/sandbox/control", google.base_url()))
        .json(&json!({"refresh_mode": "invalid_client"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        refresh(&google, &refresh_token).await.0,
        StatusCode::UNAUTHORIZED
    );

    google.set_refresh_mode(RefreshMode::Ok);
    assert_eq!(refresh(&google, &refresh_token).await.0, StatusCode::OK);
    let stats = google.stats();
    assert_eq!((stats.refresh_failures_injected, stats.refreshes), (5, 1));
}

#[test]
fn the_grant_lifetime_flag_defaults_to_ongoing_access() {
    use clap::Parser;
    let parse = |args: &[&str]| -> SandboxGoogleArgs {
        let Command::SandboxGoogle(google) = Cli::try_parse_from(args).unwrap().command else {
            panic!("wrong subcommand");
        };
        google
    };
    assert_eq!(parse(&["tw", "sandbox-google"]).grant_lifetime_secs, 0);
    let args = parse(&["tw", "sandbox-google", "--grant-lifetime-secs", "45"]);
    assert_eq!(args.grant_lifetime_secs, 45);
    assert!(format!("{args:?}").contains("grant_lifetime_secs: 45"));
    let command = <SandboxGoogleArgs as clap::Args>::augment_args(clap::Command::new("g"));
    let flag = command
        .get_arguments()
        .find(|a| a.get_id() == "grant_lifetime_secs")
        .unwrap();
    assert_eq!(
        flag.get_env(),
        Some(std::ffi::OsStr::new("SANDBOX_GRANT_LIFETIME_SECS"))
    );
}
