//! The full connect path: consent URL, sandbox consent, callback, encrypted storage, push.

use std::time::Duration;

use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::Value;
use tokenwarden::ids::TokenVersion;
use url::Url;

use crate::{
    on_both_backends,
    support::{Backend, Options, TestApp, eventually, location, log_lines_with, logs},
};

async fn full_connect(backend: Backend) {
    let t = TestApp::on(backend).await;
    let auth_url = t.start_connect("alice").await;
    let url = Url::parse(&auth_url).unwrap();
    let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(query["access_type"], "offline");
    assert_eq!(query["prompt"], "consent");
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(
        query["code_challenge"].len(),
        43,
        "S256 challenge is 32 bytes base64url"
    );
    assert_eq!(query["response_type"], "code");
    assert_eq!(query["client_id"], crate::support::CLIENT_ID);
    assert!(query["state"].len() >= 32);
    let scopes: Vec<&str> = query["scope"].split(' ').collect();
    for scope in [
        "https://www.googleapis.com/auth/calendar",
        "https://www.googleapis.com/auth/calendar.events",
        "openid",
        "email",
    ] {
        assert!(scopes.contains(&scope), "{scope} in {scopes:?}");
    }

    let started = std::time::Instant::now();
    let callback = t.follow_consent(&auth_url).await;
    assert_eq!(callback.status(), StatusCode::FOUND);
    assert_eq!(
        location(&callback),
        "http://frontend.test/dashboard/integrations?google=connected"
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    let status = t.status("alice").await;
    assert_eq!(status["connected"], true);
    assert_eq!(status["needs_reconnect"], false);
    assert_eq!(status["calendar_id"], "primary");
    assert!(
        status["google_email"]
            .as_str()
            .unwrap()
            .ends_with("@sandbox.test")
    );
    let granted = status["scope"].as_str().unwrap();
    assert!(
        granted.contains("https://www.googleapis.com/auth/userinfo.email"),
        "granted scope is stored: {granted}"
    );
    let expiry = status["token_expiry"].as_str().unwrap();
    assert!(expiry.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(expiry).is_ok());
    assert!(status.get("access_token").is_none() && status.get("refresh_token").is_none());

    // The microservice receives exactly the seed's body, with the tokens Google issued. It
    // records a request once answered, which may be a moment after its tokens are visible.
    let ms = t.microservice.clone();
    assert!(
        eventually(Duration::from_secs(5), || async {
            ms.stored("alice").await.unwrap().is_some()
                && ms.received().iter().any(|r| r.method == "POST")
        })
        .await
    );
    let posts: Vec<_> = t
        .microservice
        .received()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].path, "/api/users/alice/google-calendar/connect");
    let body = posts[0].body.clone().unwrap();
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 4, "exactly the seed's fields: {keys:?}");
    let access = body["access_token"].as_str().unwrap();
    let refresh = body["refresh_token"].as_str().unwrap();
    assert!(t.google.is_access_token_valid(access));
    assert!(t.google.is_refresh_token_valid(refresh));
    assert_eq!(body["token_expiry"], status["token_expiry"]);
    assert_eq!(body["scope"], status["scope"]);
    assert_eq!(
        t.stored_access_token("alice").await.as_deref(),
        Some(access)
    );

    // At rest: ciphertext only.
    assert_tokens_not_in_database(&t, &[access, refresh]).await;
    let sync_done = {
        let t = &t;
        eventually(Duration::from_secs(5), || async {
            t.status("alice").await["sync"]["state"] == "synced"
        })
        .await
    };
    assert!(sync_done);
    assert_eq!(
        log_lines_with(&["Tokens synced to microservice successfully", "alice"]).len(),
        1
    );
    assert_eq!(
        log_lines_with(&["Syncing Google Calendar tokens to microservice", "alice"]).len(),
        1
    );
    for token in t.google.issued_tokens() {
        assert!(!logs().contains(&token), "a token reached the logs");
    }
    t.shutdown().await;
}
on_both_backends!(full_connect);

/// Reads every token column back raw: none may hold a token string, each must be ciphertext.
pub async fn assert_tokens_not_in_database(t: &TestApp, tokens: &[&str]) {
    let db = t.app().store.connection();
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT google_access_token, google_refresh_token FROM users",
        ))
        .await
        .unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        for column in ["google_access_token", "google_refresh_token"] {
            let value: Option<String> = row.try_get("", column).unwrap();
            if let Some(value) = value {
                let format = value.split(':').next().unwrap_or_default();
                assert!(
                    format.starts_with('v') && format.len() < value.len(),
                    "{column} is ciphertext"
                );
                for token in tokens {
                    assert!(!value.contains(token));
                }
            }
        }
    }
    if let Some(path) = t.db.sqlite_path() {
        // The whole file, WAL included: the raw token string appears nowhere.
        for suffix in ["", "-wal"] {
            let file = format!("{}{suffix}", path.display());
            if let Ok(bytes) = std::fs::read(&file) {
                let text = String::from_utf8_lossy(&bytes);
                for token in tokens {
                    assert!(!text.contains(token), "token found in {file}");
                }
            }
        }
    }
}

async fn reconnect_without_refresh_token_keeps_the_stored_one(backend: Backend) {
    let t = TestApp::on(backend).await;
    t.connect("bob").await;
    let ms = t.microservice.clone();
    assert!(
        eventually(Duration::from_secs(5), || async {
            ms.stored("bob").await.unwrap().is_some()
        })
        .await
    );
    let first = t.microservice.stored("bob").await.unwrap().unwrap();
    t.google.set_omit_refresh_token(true);
    t.connect("bob").await;
    let ms = t.microservice.clone();
    let first_access = first.access_token.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let ms = ms.clone();
            let first_access = first_access.clone();
            async move {
                ms.stored("bob")
                    .await
                    .unwrap()
                    .is_some_and(|s| s.access_token != first_access)
            }
        })
        .await
    );
    let second = t.microservice.stored("bob").await.unwrap().unwrap();
    assert_eq!(
        second.refresh_token, first.refresh_token,
        "stored refresh token kept"
    );
    assert!(t.google.is_refresh_token_valid(&second.refresh_token));
    t.shutdown().await;
}
on_both_backends!(reconnect_without_refresh_token_keeps_the_stored_one);

#[tokio::test]
async fn first_connect_without_refresh_token_is_refused() {
    let t = TestApp::spawn().await;
    t.google.set_omit_refresh_token(true);
    let auth_url = t.start_connect("carol").await;
    let callback = t.follow_consent(&auth_url).await;
    assert_eq!(callback.status(), StatusCode::FOUND);
    assert_eq!(
        location(&callback),
        "http://frontend.test/dashboard/integrations?google=error&reason=no_refresh_token"
    );
    assert_eq!(t.status("carol").await["connected"], false);
    assert!(
        t.app().store.user("carol").await.unwrap().is_none(),
        "nothing written"
    );
    t.shutdown().await;
}

#[tokio::test]
async fn no_microservice_url_skips_sync_with_the_seed_warning() {
    let t = TestApp::spawn_with(Options {
        with_microservice: false,
        ..Options::default()
    })
    .await;
    t.connect("dave").await;
    let skipped = eventually(Duration::from_secs(5), || async {
        !log_lines_with(&[
            "GOOGLE_CALENDAR_MICROSERVICE_URL not configured, skipping token sync",
            "dave",
        ])
        .is_empty()
    })
    .await;
    assert!(skipped, "seed's skip warning logged:\n{}", logs());
    let status: Value = t.status("dave").await;
    assert_eq!(status["connected"], true);
    assert!(t.microservice.received().is_empty());
    t.shutdown().await;
}

/// A consent that brings a refresh token is saved by one upsert: a reconnect of a known user
/// bumps the version once per consent even when several race, keeps the email when the new
/// consent has none, keeps the refresh history, and clears `needs_reconnect`.
async fn reconnects_update_the_row_in_place(backend: Backend) {
    use chrono::Utc;
    use secrecy::{ExposeSecret, SecretString};
    use tokenwarden::{
        crypto::TokenCipher,
        store::{NewTokens, Store},
    };
    let db = crate::support::TestDatabase::create(backend).await;
    let store = Store::connect(&db.url, TokenCipher::new(&[9u8; 32]))
        .await
        .expect("store");
    let consent = |n: usize, email: Option<&str>| NewTokens {
        access_token: SecretString::from(format!("access-{n}")),
        refresh_token: Some(SecretString::from(format!("refresh-{n}"))),
        expires_at: Utc::now() + chrono::Duration::hours(1),
        scope: "calendar openid email".into(),
        email: email.map(str::to_string),
        authorization_expires_at: None,
        google_sub: None,
    };
    let first = store
        .save_connection("erin", &consent(0, Some("erin@example.com")))
        .await
        .expect("first connect");
    assert_eq!(first.version, TokenVersion::new(1));
    assert!(
        store
            .mark_needs_reconnect(
                "erin",
                TokenVersion::new(1),
                None,
                tokenwarden::store::ReconnectReason::Revoked
            )
            .await
            .expect("revoke")
            .is_some()
    );
    let racing = (1..=6).map(|n| {
        let store = store.clone();
        async move { store.save_connection("erin", &consent(n, None)).await }
    });
    let mut versions: Vec<i64> = futures::future::join_all(racing)
        .await
        .into_iter()
        .map(|seed| seed.expect("reconnect").version.get())
        .collect();
    versions.sort_unstable();
    // The revocation made version 2; each consent then got a version of its own.
    assert_eq!(versions, (3..=8).collect::<Vec<i64>>());
    let row = store.user("erin").await.expect("read").expect("row");
    assert_eq!(row.token_version, TokenVersion::new(8));
    assert!(row.google_calendar_connected && !row.needs_reconnect);
    assert_eq!(row.google_email.as_deref(), Some("erin@example.com"));
    let credentials = store
        .refresh_credentials("erin")
        .await
        .expect("read")
        .expect("connected");
    assert_eq!(credentials.version, TokenVersion::new(8));
    assert!(
        credentials
            .refresh_token
            .expose_secret()
            .starts_with("refresh-"),
        "a consent's own refresh token is stored"
    );
}
on_both_backends!(reconnects_update_the_row_in_place);
