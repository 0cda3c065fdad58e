//! The Google client against the sandbox Google over real HTTP (docs/contract.md section 9): the
//! end of a time-limited grant read from the code exchange and from refreshes, and every failure
//! classified with its reason; then, through the whole service, a refusal that is not the
//! user's (`invalid_client`) counted by reason and never asking the user to reconnect.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode, redirect::Policy};
use secrecy::SecretString;
use tokenwarden::{
    config::GoogleConfig,
    google::{FailureReason, GoogleClient, GoogleError, TokenSet},
};
use tokenwarden_sandbox::{
    GrantSelector, RefreshMode, SandboxGoogle, SandboxGoogleConfig, bind_loopback,
};

use crate::support::{CLIENT_ID, CLIENT_SECRET, TestApp, eventually, location};

async fn sandbox(grant_lifetime: Duration) -> SandboxGoogle {
    let config = SandboxGoogleConfig {
        client_id: Some(CLIENT_ID.into()),
        client_secret: Some(CLIENT_SECRET.into()),
        grant_lifetime,
        ..Default::default()
    };
    SandboxGoogle::start(config, bind_loopback().await.unwrap())
        .await
        .unwrap()
}

/// A client configured as `serve` configures it, pointed at `google`.
fn client_for(google: &SandboxGoogle, secret: &str, timeout: Duration) -> GoogleClient {
    let url = |u: String| url::Url::parse(&u).unwrap();
    GoogleClient::new(&GoogleConfig {
        client_id: CLIENT_ID.into(),
        client_secret: SecretString::from(secret.to_owned()),
        redirect_uri: url("http://127.0.0.1:9/api/integrations/google/callback".into()),
        scopes: vec![
            "https://www.googleapis.com/auth/calendar".into(),
            "openid".into(),
        ],
        required_scopes: Vec::new(),
        auth_url: url(google.auth_url()),
        token_url: url(google.token_url()),
        revoke_url: url(google.revoke_url()),
        userinfo_url: url(google.userinfo_url()),
        timeout,
    })
    .unwrap()
}

/// Consents through the sandbox and exchanges the code, as the callback does.
async fn connect(client: &GoogleClient) -> TokenSet {
    let consent = client.consent("some-state");
    let browser = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let answer = browser.get(consent.url.as_str()).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::FOUND);
    let callback = url::Url::parse(&location(&answer)).unwrap();
    let code = callback
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("a code");
    client
        .exchange_code("u", &code, &consent.pkce_verifier)
        .await
        .unwrap()
}

fn refresh_token_of(tokens: &TokenSet) -> SecretString {
    tokens.refresh_token.clone().expect("a refresh token")
}

fn selector(refresh_token: &SecretString) -> GrantSelector {
    use secrecy::ExposeSecret;
    GrantSelector::RefreshToken(refresh_token.expose_secret().to_owned())
}

/// `a` and `b` differ by less than `by`.
fn close(a: DateTime<Utc>, b: DateTime<Utc>, by: Duration) -> bool {
    (a - b).abs().to_std().unwrap() < by
}

#[tokio::test]
async fn the_exchange_and_refreshes_give_the_grants_end() {
    let google = sandbox(Duration::from_secs(3600)).await;
    let client = client_for(&google, CLIENT_SECRET, Duration::from_secs(5));
    let before = Utc::now();
    let tokens = connect(&client).await;
    let after = Utc::now();
    let end = tokens
        .authorization_expires_at
        .expect("a time-limited grant");
    let hour = chrono::Duration::hours(1);
    assert!(before + hour - chrono::Duration::seconds(1) <= end && end <= after + hour);
    let refresh_token = refresh_token_of(&tokens);
    let grant = google.grant(&selector(&refresh_token)).unwrap();
    assert!(close(
        end,
        grant.expires_at.unwrap(),
        Duration::from_secs(1)
    ));

    // Every refresh answer repeats it (in whole seconds left, so to within a second).
    let refreshed = client.refresh("u", &refresh_token).await.unwrap();
    let again = refreshed.authorization_expires_at.expect("repeated");
    assert!(close(
        again,
        grant.expires_at.unwrap(),
        Duration::from_millis(1100)
    ));

    // Moved by Google: the next answer says so.
    google.set_grant_end(&selector(&refresh_token), Some(Duration::from_secs(60)));
    let moved = client.refresh("u", &refresh_token).await.unwrap();
    let moved = moved.authorization_expires_at.unwrap();
    assert!(close(
        moved,
        Utc::now() + chrono::Duration::seconds(60),
        Duration::from_secs(2)
    ));

    // A refresh answer without the field is no news, not ongoing access: `None`, which the
    // caller reads as "keep what is stored".
    google.set_grant_end(&selector(&refresh_token), None);
    let quiet = client.refresh("u", &refresh_token).await.unwrap();
    assert_eq!(quiet.authorization_expires_at, None);

    // At the end Google refuses the refresh token: the user's grant is over.
    google.set_grant_end(&selector(&refresh_token), Some(Duration::ZERO));
    let error = client.refresh("u", &refresh_token).await.unwrap_err();
    assert!(matches!(error, GoogleError::Revoked(_)), "{error:?}");
    assert_eq!(error.reason(), FailureReason::InvalidGrant);
    google.shutdown().await;
}

#[tokio::test]
async fn an_exchange_without_an_end_is_ongoing_access() {
    let google = sandbox(Duration::ZERO).await;
    let client = client_for(&google, CLIENT_SECRET, Duration::from_secs(5));
    let tokens = connect(&client).await;
    assert_eq!(tokens.authorization_expires_at, None);
    let refreshed = client
        .refresh("u", &refresh_token_of(&tokens))
        .await
        .unwrap();
    assert_eq!(refreshed.authorization_expires_at, None);
    google.shutdown().await;
}

/// Which variant an error is, as a word for the assertions' messages.
fn kind(error: &GoogleError) -> &'static str {
    match error {
        GoogleError::Transient(_) => "transient",
        GoogleError::Revoked(_) => "revoked",
        GoogleError::Rejected(_) => "rejected",
    }
}

#[tokio::test]
async fn refresh_failures_are_classified_by_reason() {
    let google = sandbox(Duration::ZERO).await;
    let client = client_for(&google, CLIENT_SECRET, Duration::from_millis(500));
    let refresh_token = refresh_token_of(&connect(&client).await);
    let cases = [
        (
            RefreshMode::InvalidGrant,
            "revoked",
            FailureReason::InvalidGrant,
        ),
        (
            RefreshMode::AdminPolicyEnforced,
            "revoked",
            FailureReason::AdminPolicyEnforced,
        ),
        (
            RefreshMode::InvalidClient,
            "rejected",
            FailureReason::InvalidClient,
        ),
        (
            RefreshMode::DeletedClient,
            "rejected",
            FailureReason::DeletedClient,
        ),
        (
            RefreshMode::RateLimited,
            "transient",
            FailureReason::RateLimited,
        ),
        (
            RefreshMode::Error500,
            "transient",
            FailureReason::ServerError,
        ),
        (RefreshMode::Hang, "transient", FailureReason::Timeout),
    ];
    for (mode, expected_kind, reason) in cases {
        google.set_refresh_mode(mode);
        let error = client.refresh("u", &refresh_token).await.unwrap_err();
        assert_eq!(
            (kind(&error), error.reason()),
            (expected_kind, reason),
            "{mode:?}"
        );
    }
    google.set_refresh_mode(RefreshMode::Ok);
    assert!(client.refresh("u", &refresh_token).await.is_ok());

    // A wrong client secret is Google's real `invalid_client`: our fault, not the user's.
    let wrong = client_for(&google, "not-the-secret", Duration::from_secs(5));
    let error = wrong.refresh("u", &refresh_token).await.unwrap_err();
    assert_eq!(
        (kind(&error), error.reason()),
        ("rejected", FailureReason::InvalidClient)
    );

    google.shutdown().await;
    let error = client.refresh("u", &refresh_token).await.unwrap_err();
    assert_eq!(
        (kind(&error), error.reason()),
        ("transient", FailureReason::Network)
    );
}

async fn metrics(t: &TestApp) -> String {
    t.metrics().await
}

#[tokio::test]
async fn invalid_client_is_counted_and_never_asks_the_user_to_reconnect() {
    let t = TestApp::spawn().await;
    t.connect("ivy").await;
    let series = |reason: &str| {
        format!(
            "tokenwarden_google_refresh_failures_total{{node=\"test-node\",reason=\"{reason}\"}}"
        )
    };
    // Every reason's series exists from the start, at zero.
    assert!(
        metrics(&t)
            .await
            .contains(&format!("{} 0", series("invalid_grant")))
    );

    t.google.set_refresh_mode(RefreshMode::InvalidClient);
    t.admin(Method::POST, "/admin/actors/ivy/refresh").await;
    let counted = eventually(Duration::from_secs(5), || async {
        metrics(&t)
            .await
            .contains(&format!("{} 1", series("invalid_client")))
    })
    .await;
    assert!(counted, "{}", metrics(&t).await);
    let status = t.status("ivy").await;
    assert_eq!(
        (&status["needs_reconnect"], &status["connected"]),
        (&false.into(), &true.into())
    );
    let actor = t.actor("ivy").await.unwrap();
    assert_ne!(actor["status"], "needs_reconnect");
    assert!(
        metrics(&t)
            .await
            .contains(&format!("{} 0", series("invalid_grant")))
    );
    t.shutdown().await;
}
