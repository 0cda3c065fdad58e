//! Each event of docs/contract.md section 10's table from its real subject: the grant ends (tokens
//! cleared, DELETE at the microservice, `security_event`) within 2 s for `tokens-revoked`,
//! `account-disabled` and a `token-revoked` naming the current refresh token, by prefix or by
//! hash in every alphabet; the other events change nothing; a rotated-away token changes
//! nothing.

use std::time::Duration;

use base64::{Engine, engine::general_purpose};
use sha2::{Digest, Sha512};

use super::{OAUTH, RISC, account, app_with_alice, claims, post, sign, sub_of, token};
use crate::{
    on_both_backends,
    support::{Backend, Options, TestApp, eventually},
};

/// Posts `event_type` with `event` and checks the grant ends within 2 s.
async fn ends_the_grant(t: &TestApp, event_type: &str, event: serde_json::Value) {
    let (status, body) = post(t, sign(&claims(event_type, event))).await;
    assert_eq!((status, body.as_str()), (202, ""));
    let ended = eventually(Duration::from_secs(2), || async {
        t.status("alice").await["reconnect_reason"] == "security_event"
    })
    .await;
    assert!(ended, "{event_type}: {}", t.status("alice").await);
    let deleted = eventually(Duration::from_secs(2), || async {
        t.microservice.stored("alice").await.unwrap().is_none()
    })
    .await;
    assert!(deleted, "{event_type}: the DELETE reached the microservice");
    assert_eq!(t.status("alice").await["connected"], false);
}

async fn account_events_end_the_grant(backend: Backend) {
    for event in ["tokens-revoked", "account-disabled"] {
        let (t, _g) = app_with_alice(Options {
            backend,
            ..Options::default()
        })
        .await;
        let uri = if event == "tokens-revoked" {
            format!("{OAUTH}{event}")
        } else {
            format!("{RISC}{event}")
        };
        let mut payload = account(&sub_of(&t, "alice").await);
        payload["reason"] = "hijacking".into();
        ends_the_grant(&t, &uri, payload).await;
        let (_, actor) = t.admin(reqwest::Method::GET, "/admin/actors/alice").await;
        assert_eq!(actor["status"], "needs_reconnect", "{actor}");
        assert_eq!(actor["reconnect_reason"], "security_event");
        t.shutdown().await;
    }
}
on_both_backends!(account_events_end_the_grant);

async fn a_token_revoked_names_the_current_token_in_every_form(backend: Backend) {
    type Form = fn(&str) -> String;
    let forms: [(&str, Form); 5] = [
        ("prefix", |t| t.chars().take(16).collect()),
        ("hash_base64_sha512_sha512", |t| {
            general_purpose::STANDARD.encode(Sha512::digest(Sha512::digest(t.as_bytes())))
        }),
        ("hash_base64_sha512_sha512", |t| {
            general_purpose::STANDARD_NO_PAD.encode(Sha512::digest(Sha512::digest(t.as_bytes())))
        }),
        ("hash_base64_sha512_sha512", |t| {
            general_purpose::URL_SAFE.encode(Sha512::digest(Sha512::digest(t.as_bytes())))
        }),
        ("hash_base64_sha512_sha512", |t| {
            general_purpose::URL_SAFE_NO_PAD.encode(Sha512::digest(Sha512::digest(t.as_bytes())))
        }),
    ];
    for (alg, form) in forms {
        let (t, _g) = app_with_alice(Options {
            backend,
            ..Options::default()
        })
        .await;
        let refresh = t
            .microservice
            .stored("alice")
            .await
            .unwrap()
            .unwrap()
            .refresh_token;
        ends_the_grant(
            &t,
            &format!("{OAUTH}token-revoked"),
            token(alg, &form(&refresh)),
        )
        .await;
        t.shutdown().await;
    }
}
on_both_backends!(a_token_revoked_names_the_current_token_in_every_form);

async fn other_events_and_old_tokens_change_nothing(backend: Backend) {
    let (t, _g) = app_with_alice(Options {
        backend,
        ..Options::default()
    })
    .await;
    let sub = sub_of(&t, "alice").await;
    for event in [
        "sessions-revoked",
        "account-enabled",
        "account-credential-change-required",
    ] {
        let (status, _) = post(&t, sign(&claims(&format!("{RISC}{event}"), account(&sub)))).await;
        assert_eq!(status, 202);
    }
    let mut verification = serde_json::json!({"state": "hello"});
    verification["subject"] = account(&sub)["subject"].clone();
    assert_eq!(
        post(
            &t,
            sign(&claims(&format!("{RISC}verification"), verification))
        )
        .await
        .0,
        202
    );
    // A token the user no longer holds, and an unknown account.
    let old = "1//0-a-token-that-was-rotated-away";
    assert_eq!(
        post(
            &t,
            sign(&claims(
                &format!("{OAUTH}token-revoked"),
                token("prefix", &old[..16])
            ))
        )
        .await
        .0,
        202
    );
    assert_eq!(
        post(
            &t,
            sign(&claims(
                &format!("{OAUTH}tokens-revoked"),
                account("nobody-here")
            ))
        )
        .await
        .0,
        202
    );
    // Each is recorded (the four naming alice with her user id); none ends the grant.
    let recorded = eventually(Duration::from_secs(3), || async {
        let history = t.app().store.risc_events_of("alice", 10).await.unwrap();
        history.len() == 4 && history.iter().all(|e| e.outcome != "received")
    })
    .await;
    let history = t.app().store.risc_events_of("alice", 10).await.unwrap();
    assert!(recorded, "four events named alice: {history:?}");
    let status = t.status("alice").await;
    assert_eq!(status["connected"], true, "{status}");
    assert_eq!(status["reconnect_reason"], serde_json::Value::Null);
    assert!(t.microservice.stored("alice").await.unwrap().is_some());
    assert!(history.iter().all(|e| e.outcome == "recorded"));
    t.shutdown().await;
}
on_both_backends!(other_events_and_old_tokens_change_nothing);

/// A refresh that rotates the token moves the identifiers: a `token-revoked` for the old token
/// changes nothing, one for the new token ends the grant.
async fn a_rotated_away_token_changes_nothing(backend: Backend) {
    let (t, _g) = app_with_alice(Options {
        backend,
        token_lifetime: Duration::from_secs(2),
        refresh_lead_secs: 1,
        ..Options::default()
    })
    .await;
    t.google.set_rotation(true, Duration::from_millis(500));
    let old = t
        .microservice
        .stored("alice")
        .await
        .unwrap()
        .unwrap()
        .refresh_token;
    let rotated = eventually(Duration::from_secs(8), || async {
        t.microservice
            .stored("alice")
            .await
            .unwrap()
            .is_some_and(|s| s.refresh_token != old)
    })
    .await;
    assert!(rotated, "a refresh rotated the token");
    // No more rotations: the token read next stays the user's current one.
    t.google.set_rotation(false, Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let uri = format!("{OAUTH}token-revoked");
    for alg in ["prefix", "hash_base64_sha512_sha512"] {
        let id = if alg == "prefix" {
            old.chars().take(16).collect()
        } else {
            general_purpose::STANDARD.encode(Sha512::digest(Sha512::digest(old.as_bytes())))
        };
        // The sandbox's tokens share their first characters; a prefix names the old token
        // only if the new one starts otherwise.
        let new = t
            .microservice
            .stored("alice")
            .await
            .unwrap()
            .unwrap()
            .refresh_token;
        if alg == "prefix" && new.starts_with(&id) {
            continue;
        }
        assert_eq!(post(&t, sign(&claims(&uri, token(alg, &id)))).await.0, 202);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        t.status("alice").await["connected"],
        true,
        "the old token names nobody"
    );
    let new = t
        .microservice
        .stored("alice")
        .await
        .unwrap()
        .unwrap()
        .refresh_token;
    let hash =
        general_purpose::URL_SAFE_NO_PAD.encode(Sha512::digest(Sha512::digest(new.as_bytes())));
    ends_the_grant(&t, &uri, token("hash_base64_sha512_sha512", &hash)).await;
    t.shutdown().await;
}
on_both_backends!(a_rotated_away_token_changes_nothing);
