//! Pushes the microservice can trust (docs/microservice.md: Writing a microservice): every push carries the
//! user's `Token-Version`, a late push is refused by version instead of overwriting a newer
//! one, and with a signing secret every push is signed and verified by the reference
//! microservice; a signed body names its user and version, so the signature covers them
//! (docs/contract.md section 5a) while an unsigned body stays exactly the seed's.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use tokenwarden_sandbox::{FaultMode, ReceivedRequest};

use crate::{
    on_both_backends,
    support::{Backend, Options, TestApp, eventually},
};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SECRET: &str = "whsec_c2Vjb25kLXNlY3JldC1vZi10aGUtcm90YXRpb24=";

fn pushes_of(t: &TestApp, user: &str) -> Vec<ReceivedRequest> {
    t.microservice
        .received()
        .into_iter()
        .filter(|r| r.user_id == user)
        .collect()
}

/// The keys of the seed's connect body, sorted.
const SEED_KEYS: [&str; 4] = ["access_token", "refresh_token", "scope", "token_expiry"];

/// The keys of a recorded JSON body, sorted; empty when it had none.
fn body_keys(request: &ReceivedRequest) -> Vec<&str> {
    let mut keys: Vec<&str> = request
        .body
        .as_ref()
        .and_then(|b| b.as_object())
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    keys
}

fn version(request: &ReceivedRequest) -> i64 {
    request
        .token_version
        .as_deref()
        .expect("every push carries Token-Version")
        .parse()
        .expect("a number")
}

async fn refresh_now(t: &TestApp, user: &str) {
    let (status, _) = t
        .admin(Method::POST, &format!("/admin/actors/{user}/refresh"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

/// Waits until the microservice holds exactly the database's access token for `user`.
async fn mirrored(t: &TestApp, user: &str) -> bool {
    eventually(Duration::from_secs(10), || async {
        let held = t
            .microservice
            .stored(user)
            .await
            .unwrap()
            .map(|s| s.access_token);
        held.is_some() && held == t.stored_access_token(user).await
    })
    .await
}

async fn versions_increase_across_refresh_disconnect_and_reconnect(backend: Backend) {
    let t = TestApp::on(backend).await;
    t.connect("vera").await;
    assert!(mirrored(&t, "vera").await);
    refresh_now(&t, "vera").await;
    let refreshed = eventually(Duration::from_secs(10), || async {
        pushes_of(&t, "vera").len() >= 2
    })
    .await;
    assert!(refreshed && mirrored(&t, "vera").await);
    assert_eq!(t.disconnect("vera").await.0, StatusCode::OK);
    let deleted = eventually(Duration::from_secs(10), || async {
        pushes_of(&t, "vera").iter().any(|r| r.method == "DELETE")
    })
    .await;
    assert!(deleted);
    t.connect("vera").await;
    assert!(mirrored(&t, "vera").await);

    let pushes = pushes_of(&t, "vera");
    let methods: Vec<&str> = pushes.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["POST", "POST", "DELETE", "POST"], "{pushes:?}");
    let versions: Vec<i64> = pushes.iter().map(version).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing across disconnect and reconnect: {versions:?}"
    );
    assert_eq!(
        t.microservice.token_version("vera").await.unwrap(),
        versions.last().map(|v| *v as u64)
    );
    // No secret configured: nothing signed, and the bodies are exactly the seed's.
    assert!(pushes.iter().all(|r| r.webhook_signature.is_none()));
    for push in &pushes {
        if push.method == "POST" {
            assert_eq!(body_keys(push), SEED_KEYS, "{push:?}");
        } else {
            assert_eq!(push.body, None, "an unsigned DELETE has no body: {push:?}");
        }
    }
    t.shutdown().await;
}
on_both_backends!(versions_increase_across_refresh_disconnect_and_reconnect);

/// A push that timed out on our side is applied by the microservice later, after a newer one:
/// the version makes it harmless. (Without `Token-Version` the late push overwrote the newer
/// token and the microservice ended one refresh behind the database.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_lands_late_does_not_overwrite_a_newer_one() {
    let t = TestApp::spawn_with(Options {
        microservice_timeout_ms: 300,
        ..Options::default()
    })
    .await;
    t.connect("lara").await;
    assert!(mirrored(&t, "lara").await);

    // The next push is held by the microservice past our timeout.
    t.microservice.set_mode(FaultMode::StallThenApply);
    refresh_now(&t, "lara").await;
    let held = eventually(Duration::from_secs(10), || async {
        t.microservice.stalled() >= 1
    })
    .await;
    assert!(held, "the refresh's push is held");
    // The microservice recovers: our retry delivers that change, a newer refresh follows.
    t.microservice.set_mode(FaultMode::Healthy);
    assert!(
        mirrored(&t, "lara").await,
        "the retry delivered the held change"
    );
    refresh_now(&t, "lara").await;
    let newer = eventually(Duration::from_secs(10), || async {
        let (held, db) = (
            t.microservice
                .stored("lara")
                .await
                .unwrap()
                .map(|s| s.access_token),
            t.stored_access_token("lara").await,
        );
        t.microservice.stalled() >= 1 && held == db && pushes_of(&t, "lara").len() >= 3
    })
    .await;
    assert!(
        newer,
        "the newer refresh was pushed while the old push is still held"
    );

    // Now the held push lands, late.
    let late = t.microservice.stalled();
    let recorded = pushes_of(&t, "lara").len();
    t.microservice.release_stalled();
    let landed = eventually(Duration::from_secs(10), || async {
        t.microservice.stalled() == 0 && pushes_of(&t, "lara").len() >= recorded + late
    })
    .await;
    assert!(landed, "{:?}", pushes_of(&t, "lara"));
    assert_eq!(
        t.microservice
            .stored("lara")
            .await
            .unwrap()
            .map(|s| s.access_token),
        t.stored_access_token("lara").await,
        "the microservice still holds the newest token"
    );
    let refused = pushes_of(&t, "lara")[recorded..]
        .iter()
        .all(|r| r.status == 409);
    assert!(refused, "the late push was refused by version");
    assert_eq!(t.status("lara").await["sync"]["state"], "synced");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_pushes_are_verified_and_carry_one_id_per_change() {
    let t = TestApp::spawn_with(Options {
        // A rotation in progress: we sign with both, the microservice knows the new one.
        signing_secret: Some(format!("{SECRET},{OTHER_SECRET}")),
        microservice_signing_secret: Some(SECRET.into()),
        ..Options::default()
    })
    .await;
    t.connect("sam").await;
    assert!(mirrored(&t, "sam").await);
    refresh_now(&t, "sam").await;
    let refreshed = eventually(Duration::from_secs(10), || async {
        pushes_of(&t, "sam").len() >= 2
    })
    .await;
    assert!(refreshed && mirrored(&t, "sam").await);
    let pushes = pushes_of(&t, "sam");
    assert!(pushes.iter().all(|r| r.status == 200), "{pushes:?}");
    for push in &pushes {
        let signatures = push.webhook_signature.as_deref().expect("signed");
        assert_eq!(
            signatures.split(' ').count(),
            2,
            "one per secret: {signatures}"
        );
        assert!(push.webhook_timestamp.is_some());
        assert_eq!(
            push.webhook_id.as_deref(),
            Some(
                tokenwarden::sync::message_id(
                    "sam",
                    tokenwarden::ids::TokenVersion::new(version(push))
                )
                .as_str()
            )
        );
    }
    assert_ne!(pushes[0].webhook_id, pushes[1].webhook_id);
    t.shutdown().await;
}

/// The signature covers the body only, so a signed body names its user and version: the POST
/// carries the seed's four fields and both, the DELETE exactly both, and the reference
/// microservice (which refuses a signed body that disagrees with the request) takes them.
/// Before, the bodies were the seed's and a captured push could be replayed for anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_bodies_name_their_user_and_version() {
    let t = TestApp::spawn_with(Options {
        signing_secret: Some(SECRET.into()),
        microservice_signing_secret: Some(SECRET.into()),
        ..Options::default()
    })
    .await;
    t.connect("bea").await;
    assert!(mirrored(&t, "bea").await);
    assert_eq!(t.disconnect("bea").await.0, StatusCode::OK);
    let deleted = eventually(Duration::from_secs(10), || async {
        pushes_of(&t, "bea")
            .iter()
            .any(|r| r.method == "DELETE" && r.status == 200)
    })
    .await;
    assert!(deleted, "{:?}", pushes_of(&t, "bea"));
    assert_eq!(t.microservice.stored("bea").await.unwrap(), None);

    let pushes = pushes_of(&t, "bea");
    let methods: Vec<&str> = pushes.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["POST", "DELETE"], "{pushes:?}");
    assert!(pushes.iter().all(|r| r.status == 200), "{pushes:?}");
    for push in &pushes {
        let body = push.body.as_ref().expect("a signed push has a JSON body");
        assert_eq!(body["user_id"], "bea", "{push:?}");
        assert_eq!(
            body["token_version"].as_i64(),
            Some(version(push)),
            "a JSON number equal to Token-Version: {push:?}"
        );
    }
    let mut post_keys = SEED_KEYS.to_vec();
    post_keys.extend(["token_version", "user_id"]);
    post_keys.sort_unstable();
    assert_eq!(body_keys(&pushes[0]), post_keys);
    assert_eq!(body_keys(&pushes[1]), ["token_version", "user_id"]);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_a_retried_sync_failure_until_a_restart_with_the_right_one() {
    let mut t = TestApp::spawn_with(Options {
        signing_secret: Some(OTHER_SECRET.into()),
        microservice_signing_secret: Some(SECRET.into()),
        ..Options::default()
    })
    .await;
    t.connect("wes").await;
    let failing = eventually(Duration::from_secs(10), || async {
        let status = t.status("wes").await;
        status["sync"]["state"] == "failed" && pushes_of(&t, "wes").len() >= 2
    })
    .await;
    assert!(failing, "{}", t.status("wes").await);
    let status = t.status("wes").await;
    let last_error = status["sync"]["last_error"].as_str().unwrap();
    assert!(last_error.contains("401"), "{last_error}");
    assert!(t.microservice.stored("wes").await.unwrap().is_none());
    // Every retry of the one change carries the same id.
    let pushes = pushes_of(&t, "wes");
    assert!(pushes.iter().all(|r| r.status == 401));
    assert!(pushes.iter().all(|r| r.webhook_id == pushes[0].webhook_id));

    t.options.signing_secret = Some(SECRET.into());
    t.restart().await;
    assert!(mirrored(&t, "wes").await, "pushed once the secrets agree");
    assert_eq!(t.status("wes").await["sync"]["state"], "synced");
    t.shutdown().await;
}
