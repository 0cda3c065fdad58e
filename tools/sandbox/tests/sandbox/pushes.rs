//! The reference microservice's side of CONTRACT 5a: `Token-Version` (stale pushes refused
//! with 409, tombstones, malformed versions, senders that do not version, concurrent pushes),
//! Standard Webhooks signatures, and the stall mode that makes a timed-out push land late.

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use rand::seq::SliceRandom;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use standardwebhooks::Webhook;
use tokenwarden_sandbox::{FaultMode, MicroserviceConfig, ReferenceMicroservice};

use super::{EXPIRY, client, microservice, microservice_with, tokens_body};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const OTHER_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const UNKNOWN_SECRET: &str = "whsec_3Kx1n1K8Rb2Fq1j4x0Zq8w2e3r4t5y6u";

/// One push as a test builds it: what to send beyond the method, the user and the body.
#[derive(Default)]
struct Push {
    version: Option<String>,
    /// Secrets to sign with (each adds a signature to `webhook-signature`).
    sign_with: Vec<&'static str>,
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

    fn signed(secret: &'static str) -> Self {
        Self {
            sign_with: vec![secret],
            ..Self::default()
        }
    }
}

/// The body the microservice answered, parsed; `Null` when it was not JSON.
type Answer = (StatusCode, Value);

async fn send(
    ms: &ReferenceMicroservice,
    method: Method,
    user: &str,
    body: Option<&Value>,
    push: &Push,
) -> reqwest::Result<Answer> {
    let url = if method == Method::DELETE {
        format!("{}/api/google-tokens/{user}", ms.base_url())
    } else {
        format!("{}/api/users/{user}/google-calendar/connect", ms.base_url())
    };
    let bytes = body
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    let mut request = client().request(method, url);
    if let Some(version) = &push.version {
        request = request.header("Token-Version", version);
    }
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
        request = request
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signatures.join(" "));
    }
    if let Some(token) = push.bearer {
        request = request.bearer_auth(token);
    }
    if let Some(timeout) = push.timeout {
        request = request.timeout(timeout);
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let response = request
        .body(push.tampered_body.clone().unwrap_or(bytes))
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
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

async fn signing_microservice(secrets: &str, bearer: Option<&str>) -> ReferenceMicroservice {
    microservice_with(MicroserviceConfig {
        signing_secret: Some(secrets.to_owned()),
        bearer_token: bearer.map(str::to_owned),
        sandbox_controls: true,
        ..Default::default()
    })
    .await
}

fn is_unauthorized(answer: &Answer) -> bool {
    answer
        == &(
            StatusCode::UNAUTHORIZED,
            json!({"success": false, "message": "Invalid webhook signature"}),
        )
}

#[tokio::test]
async fn signed_pushes_are_verified_over_the_exact_body() {
    let ms = signing_microservice(SECRET, None).await;
    let ok = connect(&ms, "u", "signed", &Push::signed(SECRET)).await;
    assert_eq!(ok.0, StatusCode::OK, "{ok:?}");
    let versioned = Push {
        version: Some("2".into()),
        ..Push::signed(SECRET)
    };
    assert_eq!(
        connect(&ms, "u", "signed-v2", &versioned).await.0,
        StatusCode::OK
    );

    let refused = [
        ("unsigned", Push::default()),
        ("another secret", Push::signed(UNKNOWN_SECRET)),
        (
            "tampered body",
            Push {
                tampered_body: Some(serde_json::to_vec(&tokens_body("tampered")).unwrap()),
                ..Push::signed(SECRET)
            },
        ),
        (
            "timestamp 10 minutes old",
            Push {
                timestamp_offset: -600,
                ..Push::signed(SECRET)
            },
        ),
        (
            "timestamp 6 minutes ahead",
            Push {
                timestamp_offset: 360,
                ..Push::signed(SECRET)
            },
        ),
    ];
    for (why, push) in &refused {
        let answer = connect(&ms, "u", "forged", push).await;
        assert!(is_unauthorized(&answer), "{why}: {answer:?}");
        assert!(is_unauthorized(&delete(&ms, "u", push).await), "{why}");
    }
    // A timestamp 4 minutes off is within the tolerance.
    let skewed = Push {
        timestamp_offset: -240,
        version: Some("3".into()),
        ..Push::signed(SECRET)
    };
    assert_eq!(connect(&ms, "u", "skewed", &skewed).await.0, StatusCode::OK);
    assert_eq!(access_token(&ms, "u").await.as_deref(), Some("skewed"));

    // Each header missing on its own.
    for missing in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let body = serde_json::to_vec(&tokens_body("x")).unwrap();
        let timestamp = chrono::Utc::now().timestamp();
        let signature = Webhook::new(SECRET)
            .unwrap()
            .sign("msg_1", timestamp, &body)
            .unwrap();
        let mut request = client()
            .post(format!(
                "{}/api/users/u/google-calendar/connect",
                ms.base_url()
            ))
            .header("content-type", "application/json");
        for (name, value) in [
            ("webhook-id", "msg_1".to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ] {
            if name != missing {
                request = request.header(name, value);
            }
        }
        let response = request.body(body).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{missing}");
    }

    // A DELETE is signed over its empty body.
    let delete_push = Push {
        version: Some("4".into()),
        ..Push::signed(SECRET)
    };
    assert_eq!(delete(&ms, "u", &delete_push).await.0, StatusCode::OK);
    assert_eq!(access_token(&ms, "u").await, None);
    // The sandbox read is not a push: no signature needed.
    let read = client()
        .get(format!("{}/api/users/u/google-calendar", ms.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn during_a_rotation_either_secret_verifies() {
    let ms = signing_microservice(&format!("{SECRET},{OTHER_SECRET}"), None).await;
    for (version, secret) in [(1, SECRET), (2, OTHER_SECRET)] {
        let push = Push {
            version: Some(version.to_string()),
            ..Push::signed(secret)
        };
        assert_eq!(
            connect(&ms, "u", secret, &push).await.0,
            StatusCode::OK,
            "{secret}"
        );
    }
    // A sender mid-rotation signs with both; one unknown signature beside a good one is fine.
    let both = Push {
        sign_with: vec![UNKNOWN_SECRET, OTHER_SECRET],
        version: Some("3".into()),
        ..Push::default()
    };
    assert_eq!(connect(&ms, "u", "both", &both).await.0, StatusCode::OK);
    assert!(is_unauthorized(
        &connect(&ms, "u", "unknown", &Push::signed(UNKNOWN_SECRET)).await
    ));
    assert_eq!(access_token(&ms, "u").await.as_deref(), Some("both"));

    // A microservice that knows only the new secret still takes a push signed by both.
    let new_only = signing_microservice(OTHER_SECRET, None).await;
    let both = Push {
        sign_with: vec![SECRET, OTHER_SECRET],
        ..Push::default()
    };
    assert_eq!(
        connect(&new_only, "u", "both", &both).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn bearer_and_signature_are_both_checked() {
    let ms = signing_microservice(SECRET, Some("ms-token")).await;
    let signed_only = Push::signed(SECRET);
    assert_eq!(
        connect(&ms, "u", "a", &signed_only).await,
        (
            StatusCode::UNAUTHORIZED,
            json!({"success": false, "message": "Unauthorized"})
        )
    );
    let bearer_only = Push {
        bearer: Some("ms-token"),
        ..Push::default()
    };
    assert!(is_unauthorized(&connect(&ms, "u", "a", &bearer_only).await));
    let both = Push {
        bearer: Some("ms-token"),
        ..Push::signed(SECRET)
    };
    assert_eq!(connect(&ms, "u", "a", &both).await.0, StatusCode::OK);
}

#[tokio::test]
async fn bad_signing_secrets_stop_the_start_without_showing_them() {
    for bad in [
        "C2FVsBQIhrscChlQIMV",
        "whsec_",
        "whsec_%%%%",
        "whsec_AAAA,nope",
    ] {
        let error = ReferenceMicroservice::start(
            MicroserviceConfig {
                signing_secret: Some(bad.to_owned()),
                ..Default::default()
            },
            tokenwarden_sandbox::bind_loopback().await.unwrap(),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{bad} was accepted"))
        .to_string();
        assert!(error.starts_with("signing secret"), "{error}");
        assert!(
            !error.contains("%%%%") && !error.contains("C2FV"),
            "{error}"
        );
    }
}

/// Everything logged in this test process, for the one test that reads the logs.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let logs = logs.clone();
            move || LogWriter(logs.clone())
        };
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .finish();
        // Fails only if another test set a global subscriber first; then nothing is captured
        // and the assertions below say so.
        let _ = tracing::subscriber::set_global_default(subscriber);
        logs
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn refusals_are_logged_with_the_reason_and_never_the_secret() {
    let logs = captured_logs();
    let ms = signing_microservice(SECRET, None).await;
    // A user of its own: under `cargo test` other tests log into the same process.
    let user = "logged-refusals";
    connect(&ms, user, "a", &Push::default()).await;
    let old = Push {
        timestamp_offset: -600,
        ..Push::signed(SECRET)
    };
    connect(&ms, user, "a", &old).await;
    connect(&ms, user, "a", &Push::signed(UNKNOWN_SECRET)).await;
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let refusals: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("bad webhook signature") && l.contains(user))
        .collect();
    assert_eq!(refusals.len(), 3, "{text}");
    assert!(refusals[0].contains("missing header id"), "{}", refusals[0]);
    assert!(
        refusals[1].contains("signature timestamp too old"),
        "{}",
        refusals[1]
    );
    assert!(refusals[2].contains("signature invalid"), "{}", refusals[2]);
    let key = SECRET.trim_start_matches("whsec_");
    assert!(!text.contains(key), "the secret leaked into the logs");
}

/// Waits (bounded) until `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn a_stalled_push_lands_late_and_is_refused_by_version() {
    let ms = microservice().await;
    ms.set_mode(FaultMode::StallThenApply);
    // The sender gives up on version 1 (its timeout), but the push is still on its way.
    let gave_up = Push {
        timeout: Some(Duration::from_millis(300)),
        ..Push::version(1)
    };
    let error = send(&ms, Method::POST, "u", Some(&tokens_body("late")), &gave_up)
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(ms.stalled(), 1);

    // Newer pushes get through once the mode is healthy; the old one stays held.
    ms.set_mode(FaultMode::Healthy);
    assert_eq!(
        connect(&ms, "u", "newer", &Push::version(2)).await.0,
        StatusCode::OK
    );
    assert_eq!(ms.stalled(), 1);

    ms.release_stalled();
    eventually("the late push is answered", || {
        ms.received().iter().any(|r| r.status == 409)
    })
    .await;
    assert_eq!(ms.stalled(), 0);
    assert_eq!(access_token(&ms, "u").await.as_deref(), Some("newer"));
    assert_eq!(ms.token_version("u").await.unwrap(), Some(2));
    let late = &ms.received()[1];
    assert_eq!(
        (
            late.token_version.as_deref(),
            late.status,
            late.injected_fault
        ),
        (Some("1"), 409, false)
    );
}

#[tokio::test]
async fn a_released_push_is_applied_and_the_controls_work_over_http() {
    let ms = microservice().await;
    let control = format!("{}/sandbox/control", ms.base_url());
    let view: Value = client()
        .post(&control)
        .json(&json!({"mode": "stall_then_apply"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        view,
        json!({"mode": "stall_then_apply", "error_rate": 0.0, "latency_ms": 0, "stalled": 0})
    );
    let pending = tokio::spawn({
        let ms = ms.clone();
        async move { connect(&ms, "u", "held", &Push::version(1)).await }
    });
    eventually("the push is held", || ms.stalled() == 1).await;
    let view: Value = client()
        .post(&control)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["stalled"], 1);
    assert_eq!(access_token(&ms, "u").await, None);

    let released = client()
        .post(&control)
        .json(&json!({"release": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(released.status(), StatusCode::OK);
    let answer = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.0, StatusCode::OK);
    assert_eq!(access_token(&ms, "u").await.as_deref(), Some("held"));

    // The mode stays: the next push is held again, until a stop lets it through.
    let pending = tokio::spawn({
        let ms = ms.clone();
        async move {
            send(
                &ms,
                Method::DELETE,
                "u",
                None,
                &Push {
                    timeout: Some(Duration::from_secs(10)),
                    ..Push::version(2)
                },
            )
            .await
        }
    });
    eventually("the delete is held", || ms.stalled() == 1).await;
    let started = std::time::Instant::now();
    ms.stop().await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let _ = tokio::time::timeout(Duration::from_secs(5), pending).await;
    eventually("the held delete is applied", || {
        ms.received().iter().any(|r| r.method == "DELETE")
    })
    .await;
    assert_eq!(ms.received().last().map(|r| r.status), Some(200));
    assert_eq!(access_token(&ms, "u").await, None);
    assert_eq!(ms.token_version("u").await.unwrap(), Some(2));
}
