//! The reference microservice's own tables on PostgreSQL (its tests on SQLite live with the
//! sandbox crate; these need the suite's PostgreSQL harness): the seed's contract, the version
//! check under concurrency, and the contract checker's every case.

use rand::seq::SliceRandom;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokenwarden_sandbox::{MicroserviceConfig, ReferenceMicroservice, bind_loopback};

use crate::support::{Backend, TestDatabase, postgres_available};

const EXPIRY: &str = "2025-12-13T10:30:00Z";

fn tokens_body(access: &str) -> Value {
    json!({
        "access_token": access,
        "refresh_token": "1//refresh",
        "token_expiry": EXPIRY,
        "scope": "https://www.googleapis.com/auth/calendar",
    })
}

#[tokio::test]
async fn contract_holds_on_postgres() {
    if !postgres_available().await {
        return;
    }
    let db = TestDatabase::create(Backend::Postgres).await;
    let ms = ReferenceMicroservice::start(
        MicroserviceConfig {
            database_url: db.url.clone(),
            ..Default::default()
        },
        bind_loopback().await.unwrap(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let connect = format!(
        "{}/api/users/pg-user/google-calendar/connect",
        ms.base_url()
    );
    for access in ["one", "two"] {
        let answer = http
            .post(&connect)
            .json(&tokens_body(access))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
    }
    let stored = ms.stored("pg-user").await.unwrap().unwrap();
    assert_eq!(
        (stored.access_token.as_str(), stored.token_expiry.as_str()),
        ("two", EXPIRY)
    );
    assert_eq!(ms.stored_count().await.unwrap(), 1);
    let delete = format!("{}/api/google-tokens/pg-user", ms.base_url());
    assert_eq!(
        http.delete(&delete).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        http.delete(&delete).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    ms.stop().await;
}

/// Pushes `access` for `user` at `version`; the status answered.
async fn push_version(
    http: &reqwest::Client,
    ms: &ReferenceMicroservice,
    user: &str,
    access: &str,
    version: u64,
) -> StatusCode {
    http.post(format!(
        "{}/api/users/{user}/google-calendar/connect",
        ms.base_url()
    ))
    .header("Token-Version", version.to_string())
    .json(&tokens_body(access))
    .send()
    .await
    .unwrap()
    .status()
}

#[tokio::test]
async fn versions_hold_on_postgres() {
    if !postgres_available().await {
        return;
    }
    let db = TestDatabase::create(Backend::Postgres).await;
    let ms = ReferenceMicroservice::start(
        MicroserviceConfig {
            database_url: db.url.clone(),
            ..Default::default()
        },
        bind_loopback().await.unwrap(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();

    // A stale push is refused and changes nothing.
    assert_eq!(
        push_version(&http, &ms, "pg-stale", "two", 2).await,
        StatusCode::OK
    );
    assert_eq!(
        push_version(&http, &ms, "pg-stale", "one", 1).await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        ms.stored("pg-stale").await.unwrap().unwrap().access_token,
        "two"
    );
    assert_eq!(ms.token_version("pg-stale").await.unwrap(), Some(2));
    // A versioned DELETE leaves a tombstone that refuses the late push.
    let delete = http
        .delete(format!("{}/api/google-tokens/pg-stale", ms.base_url()))
        .header("Token-Version", "4")
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), StatusCode::OK);
    assert_eq!(
        push_version(&http, &ms, "pg-stale", "three", 3).await,
        StatusCode::CONFLICT
    );
    assert!(ms.stored("pg-stale").await.unwrap().is_none());

    // Concurrent pushes of versions 1..=20 in random order end on 20, every round.
    for round in 0..3 {
        let user = format!("pg-race-{round}");
        let mut versions: Vec<u64> = (1..=20).collect();
        versions.shuffle(&mut rand::thread_rng());
        let pushes = versions.into_iter().map(|version| {
            let (http, ms, user) = (http.clone(), ms.clone(), user.clone());
            tokio::spawn(async move {
                let status = push_version(&http, &ms, &user, &format!("v{version}"), version).await;
                (version, status)
            })
        });
        for push in pushes.collect::<Vec<_>>() {
            let (version, status) = push.await.unwrap();
            assert!(
                status == StatusCode::OK || status == StatusCode::CONFLICT,
                "version {version}: {status}"
            );
            if version == 20 {
                assert_eq!(status, StatusCode::OK);
            }
        }
        assert_eq!(ms.stored(&user).await.unwrap().unwrap().access_token, "v20");
        assert_eq!(ms.token_version(&user).await.unwrap(), Some(20));
    }
    ms.stop().await;
}

/// The contract checker passes every case against the reference microservice on PostgreSQL,
/// bearer and signature included.
#[tokio::test]
async fn contract_checker_passes_on_postgres() {
    if !postgres_available().await {
        return;
    }
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let db = TestDatabase::create(Backend::Postgres).await;
    let ms = ReferenceMicroservice::start(
        MicroserviceConfig {
            database_url: db.url.clone(),
            bearer_token: Some("pg-token".into()),
            signing_secret: Some(SECRET.into()),
            ..Default::default()
        },
        bind_loopback().await.unwrap(),
    )
    .await
    .unwrap();
    let mut args = tokenwarden_check::CheckArgs::new(ms.base_url());
    args.token = Some("pg-token".into());
    args.signing_secret = Some(SECRET.into());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = tokenwarden_check::run(args, &mut out, &mut err).await;
    let out = String::from_utf8(out).unwrap();
    assert_eq!(code, 0, "{out}{}", String::from_utf8_lossy(&err));
    assert_eq!(out.lines().last(), Some("20 passed, 0 failed"), "{out}");
    assert_eq!(ms.stored_count().await.unwrap(), 0);
    ms.stop().await;
}
