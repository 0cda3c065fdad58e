//! The reference microservice's side of docs/contract.md section 5a: `Token-Version` (stale pushes
//! refused with 409, tombstones, malformed versions, senders that do not version, concurrent
//! pushes) and the helpers that build and send pushes; the stall mode that makes a timed-out push
//! land late is in `stalls`, Standard Webhooks signatures and their binding to the request in
//! `signatures`.

mod signatures;
mod stalls;

use std::time::Duration;

use rand::seq::SliceRandom;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use standardwebhooks::Webhook;
use tokenwarden_sandbox::{MicroserviceConfig, ReferenceMicroservice};

use super::{EXPIRY, client, microservice, microservice_with, tokens_body};

/// One push as a test builds it: what to send beyond the method, the user and the body.
#[derive(Default)]
struct Push {
    version: Option<String>,
    /// Secrets to sign with (each adds a signature to `webhook-signature`). A signed body names
    /// its user and version, as tokenwarden signs it.
    sign_with: Vec<&'static str>,
    /// Signs the body as given, without naming its user and version (a sender from before
    /// the binding).
    unbound: bool,
    /// Seconds added to now for `webhook-timestamp`.
    timestamp_offset: i64,
    /// Bytes sent instead of the signed body (a tampered push).
    tampered_body: Option<Vec<u8>>,
    bearer: Option<&'static str>,
    timeout: Option<Duration>,
}

impl Push {
    fn version(n: u64) -> Self {
        Self {
            version: Some(n.to_string()),
            ..Self::default()
        }
    }

    /// Signed with `secret` at version 1.
    fn signed(secret: &'static str) -> Self {
        Self {
            sign_with: vec![secret],
            ..Self::version(1)
        }
    }
}

/// The body the microservice answered, parsed; `Null` when it was not JSON.
type Answer = (StatusCode, Value);

/// A push as it goes on the wire, so a test can capture it and replay it elsewhere.
#[derive(Clone, Debug)]
struct Wire {
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

impl Wire {
    /// The same push with its `Token-Version` header replaced.
    fn with_version(mut self, version: &str) -> Self {
        self.headers.retain(|(name, _)| *name != "Token-Version");
        self.headers.push(("Token-Version", version.to_owned()));
        self
    }
}

/// Builds `push` as a sender would put it on the wire: the body (bound to `user` and the
/// version when signed), the version and the signatures.
fn wire(method: &Method, user: &str, body: Option<&Value>, push: &Push) -> Wire {
    let mut headers = Vec::new();
    if let Some(version) = &push.version {
        headers.push(("Token-Version", version.clone()));
    }
    let mut body = body.cloned();
    if !push.sign_with.is_empty() && !push.unbound {
        let version: Value = push
            .version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
            .into();
        let binding = json!({"user_id": user, "token_version": version});
        body = Some(match (method, body) {
            (&Method::DELETE, _) | (_, None) => binding,
            (_, Some(mut body)) => {
                body["user_id"] = binding["user_id"].clone();
                body["token_version"] = binding["token_version"].clone();
                body
            }
        });
    }
    let bytes = body
        .map(|b| serde_json::to_vec(&b).unwrap())
        .unwrap_or_default();
    if !push.sign_with.is_empty() {
        let id = format!("msg_{user}_{}", push.version.as_deref().unwrap_or("0"));
        let timestamp = chrono::Utc::now().timestamp() + push.timestamp_offset;
        let signatures: Vec<String> = push
            .sign_with
            .iter()
            .map(|secret| {
                Webhook::new(secret)
                    .unwrap()
                    .sign(&id, timestamp, &bytes)
                    .unwrap()
            })
            .collect();
        headers.push(("webhook-id", id));
        headers.push(("webhook-timestamp", timestamp.to_string()));
        headers.push(("webhook-signature", signatures.join(" ")));
    }
    Wire {
        body: bytes,
        headers,
    }
}

/// Sends `wire` with `method` to `user`'s URL; `push` says which bearer, timeout and tampered
/// body go with it.
async fn deliver(
    ms: &ReferenceMicroservice,
    method: Method,
    user: &str,
    wire: &Wire,
    push: &Push,
) -> reqwest::Result<Answer> {
    let url = if method == Method::DELETE {
        format!("{}/api/google-tokens/{user}", ms.base_url())
    } else {
        format!("{}/api/users/{user}/google-calendar/connect", ms.base_url())
    };
    let mut request = client().request(method, url);
    for (name, value) in &wire.headers {
        request = request.header(*name, value);
    }
    if let Some(token) = push.bearer {
        request = request.bearer_auth(token);
    }
    if let Some(timeout) = push.timeout {
        request = request.timeout(timeout);
    }
    if !wire.body.is_empty() {
        request = request.header("content-type", "application/json");
    }
    let response = request
        .body(push.tampered_body.clone().unwrap_or(wire.body.clone()))
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

async fn send(
    ms: &ReferenceMicroservice,
    method: Method,
    user: &str,
    body: Option<&Value>,
    push: &Push,
) -> reqwest::Result<Answer> {
    let wire = wire(&method, user, body, push);
    deliver(ms, method, user, &wire, push).await
}

async fn connect(ms: &ReferenceMicroservice, user: &str, access: &str, push: &Push) -> Answer {
    send(ms, Method::POST, user, Some(&tokens_body(access)), push)
        .await
        .unwrap()
}

async fn delete(ms: &ReferenceMicroservice, user: &str, push: &Push) -> Answer {
    send(ms, Method::DELETE, user, None, push).await.unwrap()
}

async fn access_token(ms: &ReferenceMicroservice, user: &str) -> Option<String> {
    ms.stored(user).await.unwrap().map(|t| t.access_token)
}

fn is_conflict(answer: &Answer) -> bool {
    answer.0 == StatusCode::CONFLICT
        && answer.1["success"] == false
        && answer.1["message"].as_str().is_some_and(|m| !m.is_empty())
}

#[tokio::test]
async fn stale_versions_are_refused_without_change() {
    let ms = microservice().await;
    let ok = connect(&ms, "u", "second", &Push::version(2)).await;
    assert_eq!(
        ok,
        (
            StatusCode::OK,
            json!({"success": true, "message": "Google Calendar connected successfully", "user_id": "u", "token_expiry": EXPIRY})
        )
    );
    let stale = connect(&ms, "u", "first", &Push::version(1)).await;
    assert!(is_conflict(&stale), "{stale:?}");
    assert_eq!(
        stale.1["message"],
        "Stale Token-Version 1: version 2 is already held for this user"
    );
    let again = connect(&ms, "u", "second-again", &Push::version(2)).await;
    assert!(
        is_conflict(&again),
        "the same version is not newer: {again:?}"
    );
    assert_eq!(access_token(&ms, "u").await.as_deref(), Some("second"));
    assert_eq!(ms.token_version("u").await.unwrap(), Some(2));

    assert_eq!(
        connect(&ms, "u", "third", &Push::version(3)).await.0,
        StatusCode::OK
    );
    assert_eq!(access_token(&ms, "u").await.as_deref(), Some("third"));
    assert_eq!(ms.token_version("u").await.unwrap(), Some(3));
    let received = ms.received();
    assert_eq!(
        received
            .iter()
            .map(|r| (r.token_version.as_deref(), r.status))
            .collect::<Vec<_>>(),
        [
            (Some("2"), 200),
            (Some("1"), 409),
            (Some("2"), 409),
            (Some("3"), 200)
        ]
    );
    // The sandbox read shows the version next to the tokens.
    let shown: Value = client()
        .get(format!("{}/api/users/u/google-calendar", ms.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["token_version"], 3);
}

#[tokio::test]
async fn a_delete_leaves_its_version_behind() {
    let ms = microservice().await;
    assert_eq!(
        connect(&ms, "u", "first", &Push::version(1)).await.0,
        StatusCode::OK
    );
    let deleted = delete(&ms, "u", &Push::version(3)).await;
    assert_eq!(
        deleted,
        (
            StatusCode::OK,
            json!({"success": true, "message": "Google Calendar disconnected successfully", "user_id": "u"})
        )
    );
    // A push that was overtaken by the disconnect lands late: refused, nothing comes back.
    let late = connect(&ms, "u", "late", &Push::version(2)).await;
    assert!(is_conflict(&late), "{late:?}");
    assert_eq!(access_token(&ms, "u").await, None);
    assert!(is_conflict(&delete(&ms, "u", &Push::version(3)).await));
    // Newer, but nothing to delete: 404 as before, and the version is recorded all the same.
    assert_eq!(
        delete(&ms, "u", &Push::version(4)).await,
        (
            StatusCode::NOT_FOUND,
            json!({"success": false, "message": "No tokens found for user"})
        )
    );
    assert_eq!(ms.token_version("u").await.unwrap(), Some(4));
    assert!(is_conflict(
        &connect(&ms, "u", "stale", &Push::version(4)).await
    ));

    // A user never seen: 404, with a tombstone.
    assert_eq!(
        delete(&ms, "never", &Push::version(5)).await.0,
        StatusCode::NOT_FOUND
    );
    assert!(is_conflict(
        &connect(&ms, "never", "old", &Push::version(5)).await
    ));
    assert_eq!(
        connect(&ms, "never", "new", &Push::version(6)).await.0,
        StatusCode::OK
    );
    assert_eq!(access_token(&ms, "never").await.as_deref(), Some("new"));
}

#[tokio::test]
async fn malformed_versions_are_bad_requests() {
    let ms = microservice().await;
    for bad in [
        "0",
        "-1",
        "+2",
        "1.5",
        "abc",
        "",
        "99999999999999999999",
        "1 2",
    ] {
        let push = Push {
            version: Some(bad.to_owned()),
            ..Push::default()
        };
        let answer = connect(&ms, "u", "a", &push).await;
        assert_eq!(
            answer,
            (
                StatusCode::BAD_REQUEST,
                json!({"success": false, "message": "Invalid Token-Version: must be one positive integer"})
            ),
            "{bad:?}"
        );
        assert_eq!(
            delete(&ms, "u", &push).await.0,
            StatusCode::BAD_REQUEST,
            "{bad:?}"
        );
    }
    // Two Token-Version headers are as ambiguous as a malformed one.
    let twice = client()
        .post(format!(
            "{}/api/users/u/google-calendar/connect",
            ms.base_url()
        ))
        .header("Token-Version", "1")
        .header("Token-Version", "2")
        .json(&tokens_body("a"))
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), StatusCode::BAD_REQUEST);
    assert_eq!(ms.stored_count().await.unwrap(), 0);
    assert_eq!(ms.token_version("u").await.unwrap(), None);
}

#[tokio::test]
async fn pushes_without_a_version_are_accepted_as_before() {
    let ms = microservice().await;
    assert_eq!(
        connect(&ms, "u", "versioned", &Push::version(5)).await.0,
        StatusCode::OK
    );
    // A sender that does not version is not compared: it replaces what is there.
    assert_eq!(
        connect(&ms, "u", "unversioned", &Push::default()).await.0,
        StatusCode::OK
    );
    assert_eq!(access_token(&ms, "u").await.as_deref(), Some("unversioned"));
    assert_eq!(ms.token_version("u").await.unwrap(), Some(5));
    assert_eq!(delete(&ms, "u", &Push::default()).await.0, StatusCode::OK);
    assert_eq!(
        delete(&ms, "u", &Push::default()).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(ms.token_version("u").await.unwrap(), Some(5));
    assert_eq!(
        connect(&ms, "other", "plain", &Push::default()).await.0,
        StatusCode::OK
    );
    assert_eq!(ms.token_version("other").await.unwrap(), None);
}

/// Pushes versions 1..=20 of one user at once, in random order; returns each version's status.
async fn push_twenty_at_once(ms: &ReferenceMicroservice, user: &str) -> Vec<(u64, StatusCode)> {
    let mut versions: Vec<u64> = (1..=20).collect();
    versions.shuffle(&mut rand::thread_rng());
    let mut pushes = tokio::task::JoinSet::new();
    for version in versions {
        let ms = ms.clone();
        let user = user.to_owned();
        pushes.spawn(async move {
            let answer = connect(&ms, &user, &format!("v{version}"), &Push::version(version)).await;
            (version, answer.0)
        });
    }
    let mut statuses = pushes.join_all().await;
    statuses.sort();
    statuses
}

async fn concurrent_pushes_end_on_the_newest(ms: &ReferenceMicroservice, rounds: usize) {
    for round in 0..rounds {
        let user = format!("racer-{round}");
        let statuses = push_twenty_at_once(ms, &user).await;
        for (version, status) in &statuses {
            assert!(
                *status == StatusCode::OK || *status == StatusCode::CONFLICT,
                "version {version}: {status}"
            );
        }
        assert_eq!(statuses.last(), Some(&(20, StatusCode::OK)));
        assert_eq!(access_token(ms, &user).await.as_deref(), Some("v20"));
        assert_eq!(ms.token_version(&user).await.unwrap(), Some(20));
        assert!(is_conflict(
            &connect(ms, &user, "again", &Push::version(20)).await
        ));
    }
}

#[tokio::test]
async fn concurrent_versions_end_on_the_newest_in_memory() {
    let ms = microservice().await;
    concurrent_pushes_end_on_the_newest(&ms, 3).await;
}

#[tokio::test]
async fn concurrent_versions_end_on_the_newest_on_a_pooled_sqlite_file() {
    let dir = std::env::temp_dir().join(format!("sandbox-ms-race-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ms.db");
    let _ = std::fs::remove_file(&path);
    let ms = microservice_with(MicroserviceConfig {
        database_url: format!("sqlite://{}?mode=rwc", path.display()),
        ..Default::default()
    })
    .await;
    concurrent_pushes_end_on_the_newest(&ms, 3).await;
    ms.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
