//! Every way a SET is invalid is refused with `400` and RFC 8935's code, changing nothing; a
//! duplicate `jti` is answered `202` and acted on once; a flood of unknown `kid`s fetches the
//! key set at most once per 10 s.

use std::{sync::atomic::Ordering, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::{
    KID, OAUTH, OTHER_KEY_DER, PUBLIC_PEM, account, app_with_alice, claims, post, sign, sign_with,
};
use crate::support::{Options, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_sets_are_refused_with_their_code_and_change_nothing() {
    let (t, g) = app_with_alice(Options::default()).await;
    let revoke = |c: &mut serde_json::Value| c.clone();
    let base = claims(&format!("{OAUTH}tokens-revoked"), account("any"));
    let unsigned = {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(base.to_string());
        format!("{header}.{payload}.")
    };
    let hs256 = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(KID.into());
        jsonwebtoken::encode(
            &header,
            &base,
            &EncodingKey::from_secret(PUBLIC_PEM.as_bytes()),
        )
        .unwrap()
    };
    let with = |key: &str, value: serde_json::Value| {
        let mut c = revoke(&mut base.clone());
        c[key] = value;
        sign(&c)
    };
    let without = |key: &str| {
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove(key);
        sign(&c)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "bad signature",
            sign_with(&base, OTHER_KEY_DER, KID),
            "invalid_key",
        ),
        ("alg none", unsigned, "invalid_key"),
        ("HS256 with the public key", hs256, "invalid_key"),
        (
            "unknown kid",
            sign_with(&base, OTHER_KEY_DER, "another-kid"),
            "invalid_key",
        ),
        (
            "wrong iss",
            with("iss", json!("https://evil.example")),
            "invalid_issuer",
        ),
        (
            "wrong aud",
            with("aud", json!("another-client")),
            "invalid_audience",
        ),
        (
            "past exp",
            with("exp", json!(chrono::Utc::now().timestamp() - 60)),
            "invalid_request",
        ),
        ("no jti", without("jti"), "invalid_request"),
        ("no iat", without("iat"), "invalid_request"),
        ("not a JWT", "hello".to_string(), "invalid_request"),
        ("oversized", "a".repeat(70 * 1024), "invalid_request"),
    ];
    for (name, body, err) in cases {
        let (status, text) = post(&t, body).await;
        assert_eq!(status, 400, "{name}: {text}");
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["err"], err, "{name}: {body}");
        assert!(
            body["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}"
        );
    }
    // An audience list that contains the client is fine.
    let (status, _) = post(&t, with("aud", json!(["other", crate::support::CLIENT_ID]))).await;
    assert_eq!(status, 202);
    assert!(
        t.app()
            .store
            .risc_events_of("alice", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(t.status("alice").await["connected"], true);
    // The unknown kid fetched the key set again once; more of them within 10 s do not.
    let fetched = g.jwks_fetches.load(Ordering::SeqCst);
    for _ in 0..20 {
        post(&t, sign_with(&base, OTHER_KEY_DER, "flood-kid")).await;
    }
    assert_eq!(
        g.jwks_fetches.load(Ordering::SeqCst),
        fetched,
        "no refetch within 10 s"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_jti_is_acted_on_once() {
    let (t, _g) = app_with_alice(Options::default()).await;
    let sub = super::sub_of(&t, "alice").await;
    let set = sign(&claims(&format!("{OAUTH}tokens-revoked"), account(&sub)));
    let (a, b) = tokio::join!(post(&t, set.clone()), post(&t, set.clone()));
    assert_eq!((a.0, b.0), (202, 202));
    let ended = eventually(Duration::from_secs(2), || async {
        t.status("alice").await["reconnect_reason"] == "security_event"
    })
    .await;
    assert!(ended);
    // Reconnected, the same SET again changes nothing.
    t.connect("alice").await;
    assert_eq!(post(&t, set).await.0, 202);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(t.status("alice").await["connected"], true);
    let history = t.app().store.risc_events_of("alice", 10).await.unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    let metrics = t.app().metrics.render();
    assert!(metrics.contains("outcome=\"duplicate\""), "{metrics}");
    t.shutdown().await;
}
