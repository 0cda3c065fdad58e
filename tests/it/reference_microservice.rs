//! The reference microservice's own table on PostgreSQL (its tests on SQLite live with the
//! sandbox crate; this one needs the suite's PostgreSQL harness).

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
