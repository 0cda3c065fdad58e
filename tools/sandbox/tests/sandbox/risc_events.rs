//! The sandbox's RISC control sending each event of docs/contract.md section 10 as Google would
//! (claims, subject formats, token identifiers in every base64 flavour), and the forged SETs and
//! raw bodies a receiver's tests need; each SET is checked with `jsonwebtoken` and the JWKS.

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha512};
use tokenwarden_sandbox::{RiscEvent, SandboxGoogleConfig, SetOptions, SetSigning};

use super::risc::{Receiver, fetch_jwks, register, verify_set};
use super::{client, connect, google, google_with, text};

const OAUTH: &str = "https://schemas.openid.net/secevent/oauth/event-type/";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";

/// `POST /sandbox/risc/send` with `body`; returns the status and the answer.
async fn send(google: &tokenwarden_sandbox::SandboxGoogle, body: Value) -> (StatusCode, Value) {
    let response = client()
        .post(format!("{}/sandbox/risc/send", google.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

/// The one event of a SET's claims: (type, body).
fn only_event(claims: &Value) -> (String, Value) {
    let events = claims["events"].as_object().unwrap();
    assert_eq!(events.len(), 1, "{claims}");
    let (kind, body) = events.iter().next().unwrap();
    (kind.clone(), body.clone())
}

#[tokio::test]
async fn each_account_event_names_the_account_by_iss_and_sub() {
    let google = google().await;
    let receiver = Receiver::start().await;
    register(&google, &receiver.url).await;
    connect(&google).await;
    let issuer = google.base_url();
    let cases = [
        (
            json!({"event": "tokens_revoked", "sub": "1"}),
            format!("{OAUTH}tokens-revoked"),
        ),
        (
            json!({"event": "sessions_revoked", "sub": "1"}),
            format!("{RISC}sessions-revoked"),
        ),
        (
            json!({"event": "account_enabled", "sub": "1"}),
            format!("{RISC}account-enabled"),
        ),
        (
            json!({"event": "account_credential_change_required", "sub": "1"}),
            format!("{RISC}account-credential-change-required"),
        ),
        (
            json!({"event": "account_disabled", "sub": "1", "reason": "hijacking"}),
            format!("{RISC}account-disabled"),
        ),
    ];
    let jwks = fetch_jwks(&google).await;
    for (body, kind) in cases {
        let (status, sent) = send(&google, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{sent}");
        assert_eq!(
            (&sent["status"], &sent["event_type"]),
            (&json!(202), &json!(kind))
        );
        // The grant's client is the audience when no client id is configured.
        let claims = verify_set(text(&sent, "body").as_str(), &jwks, &issuer, "the-client");
        assert!(claims.get("exp").is_none());
        assert_eq!(claims["jti"], sent["jti"]);
        let (got_kind, event) = only_event(&claims);
        assert_eq!(got_kind, kind);
        assert_eq!(
            event["subject"],
            json!({"subject_type": "iss-sub", "iss": issuer, "sub": "1"})
        );
        if body["event"] == "account_disabled" {
            assert_eq!(event["reason"], json!("hijacking"));
        }
    }
    let received = receiver.received();
    assert_eq!(received.len(), 5);
    assert!(
        received
            .iter()
            .all(|(ct, _)| ct == "application/secevent+jwt")
    );
    let jtis: std::collections::HashSet<_> =
        google.risc_sent().into_iter().map(|s| s.jti).collect();
    assert_eq!(jtis.len(), 5, "each SET has its own jti");
}

#[tokio::test]
async fn token_revoked_names_the_refresh_token_by_prefix_or_double_sha512() {
    let google = google().await;
    let receiver = Receiver::start().await;
    register(&google, &receiver.url).await;
    let refresh_token = text(&connect(&google).await, "refresh_token");
    let digest = Sha512::digest(Sha512::digest(refresh_token.as_bytes()));
    let jwks = fetch_jwks(&google).await;
    let cases = [
        (
            json!({"token_identifier_alg": "prefix"}),
            refresh_token[..16].to_owned(),
        ),
        (json!({}), STANDARD.encode(digest)),
        (json!({"padding": false}), STANDARD_NO_PAD.encode(digest)),
        (json!({"url_safe": true}), URL_SAFE.encode(digest)),
        (
            json!({"url_safe": true, "padding": false}),
            URL_SAFE_NO_PAD.encode(digest),
        ),
    ];
    for (extra, identifier) in cases {
        let mut body = json!({"event": "token_revoked", "refresh_token": refresh_token});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, sent) = send(&google, body).await;
        assert_eq!(status, StatusCode::OK, "{sent}");
        assert!(
            !text(&sent, "body").contains(&refresh_token),
            "the token itself is never sent"
        );
        let claims = verify_set(
            &text(&sent, "body"),
            &jwks,
            &google.base_url(),
            "the-client",
        );
        let (kind, event) = only_event(&claims);
        assert_eq!(kind, format!("{OAUTH}token-revoked"));
        let alg = if identifier.len() == 16 {
            "prefix"
        } else {
            "hash_base64_sha512_sha512"
        };
        assert_eq!(
            event["subject"],
            json!({
                "subject_type": "oauth_token",
                "token_type": "refresh_token",
                "token_identifier_alg": alg,
                "token": identifier,
            })
        );
    }
}

#[tokio::test]
async fn options_override_claims_and_the_audience_is_the_configured_client() {
    let google = google_with(SandboxGoogleConfig {
        client_id: Some("configured-client".into()),
        risc_issuer: Some("https://accounts.google.com/".into()),
        ..Default::default()
    })
    .await;
    let receiver = Receiver::start().await;
    register(&google, &receiver.url).await;
    let jwks = fetch_jwks(&google).await;
    let issuer = "https://accounts.google.com/";

    let event = RiscEvent::Verification { state: None };
    let sent = google
        .send_risc_event(event.clone(), SetOptions::default())
        .await
        .unwrap();
    let claims = verify_set(&sent.body, &jwks, issuer, "configured-client");
    assert_eq!(only_event(&claims).1, json!({}));

    // The same jti twice, a list audience, an exp: all as asked.
    let options = SetOptions {
        jti: Some("same-jti".into()),
        aud: Some(json!(["other", "configured-client"])),
        exp: Some(chrono::Utc::now().timestamp() - 60),
        ..Default::default()
    };
    for _ in 0..2 {
        let sent = google
            .send_risc_event(event.clone(), options.clone())
            .await
            .unwrap();
        let claims: Value = jsonwebtoken::dangerous::insecure_decode(&sent.body)
            .unwrap()
            .claims;
        assert_eq!(claims["jti"], json!("same-jti"));
        assert_eq!(claims["aud"], json!(["other", "configured-client"]));
        assert!(claims["exp"].is_i64());
    }
    // Delivered elsewhere than the registered receiver.
    let other = Receiver::start().await;
    let options = SetOptions {
        url: Some(other.url.clone()),
        ..Default::default()
    };
    google.send_risc_event(event, options).await.unwrap();
    assert_eq!((receiver.received().len(), other.received().len()), (3, 1));
}

#[tokio::test]
async fn forged_sets_fail_verification_against_the_jwks() {
    let google = google().await;
    let receiver = Receiver::start().await;
    register(&google, &receiver.url).await;
    let event = || RiscEvent::TokensRevoked { sub: "1".into() };
    let kid = google.risc_key_id().await.unwrap();
    let jwks = fetch_jwks(&google).await;
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let validation = || {
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_required_spec_claims::<&str>(&[]);
        v.validate_exp = false;
        v.validate_aud = false;
        v
    };

    let signed = |signing| SetOptions {
        signing,
        ..Default::default()
    };
    let foreign = google
        .send_risc_event(event(), signed(SetSigning::ForeignKey))
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(&foreign.body).unwrap();
    assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
    assert!(jsonwebtoken::decode::<Value>(&foreign.body, &key, &validation()).is_err());

    let unknown = google
        .send_risc_event(event(), signed(SetSigning::UnknownKid))
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(&unknown.body).unwrap();
    assert!(jwks.find(header.kid.as_deref().unwrap()).is_none());

    let hs = google
        .send_risc_event(event(), signed(SetSigning::Hs256))
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(&hs.body).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::HS256);
    assert!(jsonwebtoken::decode::<Value>(&hs.body, &key, &validation()).is_err());

    // Retired: refused until a rotation retired a key, then signed with the old kid.
    let (status, _) = send(
        &google,
        json!({"event": "tokens_revoked", "sub": "1", "signing": "retired"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    google.rotate_risc_key().await.unwrap();
    let retired = google
        .send_risc_event(event(), signed(SetSigning::Retired))
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(&retired.body).unwrap();
    assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
    assert!(fetch_jwks(&google).await.find(&kid).is_none());

    // After the rotation the current key signs, and the old JWKS no longer verifies it.
    let claims = google.risc_set_claims(&event(), &SetOptions::default());
    let own = google
        .sign_risc_set(&claims, SetSigning::Current)
        .await
        .unwrap();
    assert!(
        jsonwebtoken::decode::<Value>(&own, &key, &validation()).is_err(),
        "rotated"
    );
}

#[tokio::test]
async fn raw_bodies_are_sent_as_is_and_answers_recorded() {
    let google = google().await;
    let receiver = Receiver::start().await;
    // No receiver registered and no url: a conflict, nothing sent.
    let response = client()
        .post(format!("{}/sandbox/risc/raw", google.base_url()))
        .json(&json!({"body": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);

    register(&google, &receiver.url).await;
    receiver.answer(400);
    let response = client()
        .post(format!("{}/sandbox/risc/raw", google.base_url()))
        .json(&json!({"body": "not.a.jwt", "content_type": "text/plain"}))
        .send()
        .await
        .unwrap();
    let sent: Value = response.json().await.unwrap();
    assert_eq!(sent["status"], json!(400));
    let sent = google
        .send_raw_risc_body("eyJhbGciOiJub25lIn0.e30.", "application/secevent+jwt", None)
        .await
        .unwrap();
    assert_eq!(sent.status, Some(400));
    assert_eq!(
        receiver.received(),
        vec![
            ("text/plain".to_owned(), "not.a.jwt".to_owned()),
            (
                "application/secevent+jwt".to_owned(),
                "eyJhbGciOiJub25lIn0.e30.".to_owned()
            ),
        ]
    );
    // An unreachable receiver is an answer too.
    let sent = google
        .send_raw_risc_body("x", "text/plain", Some("http://127.0.0.1:9/nothing"))
        .await
        .unwrap();
    assert!(sent.status.is_none() && sent.error.is_some());
    assert_eq!(google.risc_sent().len(), 3);
}
