//! The whole loop with the sandbox Google as the transmitter (docs/contract.md section 10): it
//! signs a SET with its own key and pushes it to the service's receiver; the grant ends within 2 s.
//! After the sandbox rotates its key, the next SET (new `kid`) is accepted after one refetch.

use std::time::Duration;

use tokenwarden_sandbox::{RiscEvent, SetOptions};

use super::sub_of;

use crate::support::{Options, TestApp, eventually};

/// The harness points the service at the sandbox's RISC configuration by default.
async fn app() -> TestApp {
    TestApp::spawn_with(Options::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_revokes_a_grant_and_rotates_its_key() {
    let t = app().await;
    for user in ["alice", "bob"] {
        t.connect(user).await;
    }
    let receiver = format!("{}/api/integrations/google/risc", t.url);
    let to_us = || SetOptions {
        url: Some(receiver.clone()),
        ..SetOptions::default()
    };
    let sent = t
        .google
        .send_risc_event(
            RiscEvent::TokensRevoked {
                sub: sub_of(&t, "alice").await,
            },
            to_us(),
        )
        .await
        .unwrap();
    assert_eq!(sent.status, Some(202), "{sent:?}");
    let ended = eventually(Duration::from_secs(2), || async {
        t.status("alice").await["reconnect_reason"] == "security_event"
    })
    .await;
    assert!(ended, "{}", t.status("alice").await);
    let fetched = t.google.risc_jwks_fetches();
    t.google.rotate_risc_key().await.unwrap();
    // A SET with the new kid within 10 s of the last fetch is refused (invalid_key; Google
    // sends it again later) without a fetch; after that, one refetch takes the new key.
    let early = t
        .google
        .send_risc_event(
            RiscEvent::TokensRevoked {
                sub: sub_of(&t, "bob").await,
            },
            to_us(),
        )
        .await
        .unwrap();
    assert_eq!(early.status, Some(400), "{early:?}");
    assert_eq!(
        t.google.risc_jwks_fetches(),
        fetched,
        "no refetch within 10 s"
    );
    tokio::time::sleep(tokenwarden::risc::keys::REFETCH_AFTER).await;
    let sent = t
        .google
        .send_risc_event(
            RiscEvent::TokensRevoked {
                sub: sub_of(&t, "bob").await,
            },
            to_us(),
        )
        .await
        .unwrap();
    assert_eq!(sent.status, Some(202), "the new kid is fetched: {sent:?}");
    assert_eq!(t.google.risc_jwks_fetches(), fetched + 1, "one refetch");
    let ended = eventually(Duration::from_secs(2), || async {
        t.status("bob").await["reconnect_reason"] == "security_event"
    })
    .await;
    assert!(ended);
    t.shutdown().await;
}
