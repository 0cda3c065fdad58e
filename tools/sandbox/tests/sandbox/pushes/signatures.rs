//! Standard Webhooks signatures on the reference microservice (docs/contract.md section 5a):
//! verified over the exact body with one secret or, during a rotation, several; and bound to the
//! request, so a push captured on the wire is refused (`401`) when replayed for another user, with
//! another version, or as a DELETE, and the victim keeps their tokens.

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use standardwebhooks::Webhook;
use tokenwarden_sandbox::{MicroserviceConfig, ReferenceMicroservice};

use super::{Answer, Push, Wire, access_token, connect, delete, deliver, send, wire};
use crate::{client, microservice, microservice_with, tokens_body};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const OTHER_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const UNKNOWN_SECRET: &str = "whsec_3Kx1n1K8Rb2Fq1j4x0Zq8w2e3r4t5y6u";

async fn signing_microservice(secrets: &str, bearer: Option<&str>) -> ReferenceMicroservice {
    microservice_with(MicroserviceConfig {
        signing_secret: Some(secrets.to_owned()),
        bearer_token: bearer.map(str::to_owned),
        sandbox_controls: true,
        ..Default::default()
    })
    .await
}

/// A `401` for a signed body that does not name this request's user and version, or does
/// not fit its method.
fn is_unbound(answer: &Answer) -> bool {
    answer.0 == StatusCode::UNAUTHORIZED
        && answer.1["success"] == false
        && answer.1["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Invalid webhook payload: "))
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

    // A DELETE is signed over its body naming the user and the version; signed over an empty
    // body, as before that binding, it is refused.
    let delete_push = Push {
        version: Some("4".into()),
        ..Push::signed(SECRET)
    };
    let unbound = Push {
        unbound: true,
        ..Push::signed(SECRET)
    };
    assert!(is_unbound(&delete(&ms, "u", &unbound).await));
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
        ..Push::version(1)
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
    let captured = wire(
        &Method::POST,
        "someone-else",
        Some(&tokens_body("ya29.replayed-token")),
        &Push::signed(SECRET),
    );
    let replayed = deliver(&ms, Method::POST, user, &captured, &Push::default()).await;
    assert!(is_unbound(&replayed.unwrap()));
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let replays: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("signed body not bound to it") && l.contains(user))
        .collect();
    assert_eq!(replays.len(), 1, "{text}");
    assert!(
        replays[0].contains("the signed user_id is not the URL's user"),
        "{}",
        replays[0]
    );
    assert!(!text.contains("ya29.replayed-token"), "a token leaked");
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

/// Issue 19: alice's signed push, replayed unchanged to mallory's URL, gave mallory alice's
/// tokens; replayed with `Token-Version: 9223372036854775807` it pinned alice so every later
/// real push got `409`; a signed DELETE replayed against mallory deleted mallory. The signature
/// covers the body only, so the body names its user and version, and a replay disagrees.
#[tokio::test]
async fn a_captured_push_replayed_for_another_user_or_version_is_refused() {
    let ms = signing_microservice(SECRET, None).await;
    let alices = wire(
        &Method::POST,
        "alice",
        Some(&tokens_body("alice-v1")),
        &Push::signed(SECRET),
    );
    let none = Push::default();
    let sent = deliver(&ms, Method::POST, "alice", &alices, &none).await;
    assert_eq!(sent.unwrap().0, StatusCode::OK);

    let for_mallory = deliver(&ms, Method::POST, "mallory", &alices, &none).await;
    assert!(is_unbound(&for_mallory.unwrap()));
    assert_eq!(access_token(&ms, "mallory").await, None);
    assert_eq!(ms.token_version("mallory").await.unwrap(), None);

    let pinning = alices.clone().with_version("9223372036854775807");
    let pinned = deliver(&ms, Method::POST, "alice", &pinning, &none).await;
    assert!(is_unbound(&pinned.unwrap()));
    let unversioned = Wire {
        headers: (alices.headers.iter())
            .filter(|(name, _)| *name != "Token-Version")
            .cloned()
            .collect(),
        ..alices.clone()
    };
    let answer = deliver(&ms, Method::POST, "alice", &unversioned, &none).await;
    assert!(
        is_unbound(&answer.unwrap()),
        "a signed push needs its version"
    );
    assert_eq!(ms.token_version("alice").await.unwrap(), Some(1));
    // Alice's next real push is taken: she was not pinned.
    let next = Push {
        version: Some("2".into()),
        ..Push::signed(SECRET)
    };
    assert_eq!(
        connect(&ms, "alice", "alice-v2", &next).await.0,
        StatusCode::OK
    );
    assert_eq!(
        access_token(&ms, "alice").await.as_deref(),
        Some("alice-v2")
    );
}

#[tokio::test]
async fn a_captured_delete_or_a_push_replayed_as_a_delete_is_refused() {
    let ms = signing_microservice(SECRET, None).await;
    let none = Push::default();
    for user in ["alice", "mallory"] {
        let answer = connect(&ms, user, &format!("{user}-v1"), &Push::signed(SECRET)).await;
        assert_eq!(answer.0, StatusCode::OK, "{answer:?}");
    }
    let at_2 = Push {
        version: Some("2".into()),
        ..Push::signed(SECRET)
    };
    let alices_delete = wire(&Method::DELETE, "alice", None, &at_2);
    let replayed = deliver(&ms, Method::DELETE, "mallory", &alices_delete, &none).await;
    assert!(is_unbound(&replayed.unwrap()));
    assert_eq!(
        access_token(&ms, "mallory").await.as_deref(),
        Some("mallory-v1")
    );
    assert_eq!(ms.token_version("mallory").await.unwrap(), Some(1));

    // Alice's next connect, captured before it lands, sent as a DELETE of alice.
    let alices_post = wire(
        &Method::POST,
        "alice",
        Some(&tokens_body("alice-v2")),
        &at_2,
    );
    let as_delete = deliver(&ms, Method::DELETE, "alice", &alices_post, &none).await;
    assert!(is_unbound(&as_delete.unwrap()));
    assert_eq!(
        access_token(&ms, "alice").await.as_deref(),
        Some("alice-v1")
    );
    // A DELETE's body posted as a connect does not fit either.
    let as_post = deliver(&ms, Method::POST, "alice", &alices_delete, &none).await;
    assert!(is_unbound(&as_post.unwrap()));

    // Each, sent as signed, is taken.
    let deleted = deliver(&ms, Method::DELETE, "alice", &alices_delete, &none).await;
    assert_eq!(deleted.unwrap().0, StatusCode::OK);
    assert_eq!(access_token(&ms, "alice").await, None);
    assert_eq!(
        access_token(&ms, "mallory").await.as_deref(),
        Some("mallory-v1")
    );
}

/// Without a signing secret nothing is bound: the seed's bodies are taken as before, and so are
/// a sender's bound ones (the POST's two extra keys, a DELETE's JSON body).
#[tokio::test]
async fn unsigned_pushes_take_seed_and_bound_bodies_alike() {
    let ms = microservice().await;
    assert_eq!(
        connect(&ms, "u", "seed", &Push::version(1)).await.0,
        StatusCode::OK
    );
    let mut bound: Value = tokens_body("bound");
    bound["user_id"] = json!("u");
    bound["token_version"] = json!(2);
    let answer = send(&ms, Method::POST, "u", Some(&bound), &Push::version(2)).await;
    assert_eq!(answer.unwrap().0, StatusCode::OK);
    assert_eq!(access_token(&ms, "u").await.as_deref(), Some("bound"));
    let body = json!({"user_id": "u", "token_version": 3});
    let answer = send(&ms, Method::DELETE, "u", Some(&body), &Push::version(3)).await;
    assert_eq!(answer.unwrap().0, StatusCode::OK);
    assert_eq!(access_token(&ms, "u").await, None);
}
