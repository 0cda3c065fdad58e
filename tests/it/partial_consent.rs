//! A consent in which the user unticked a calendar scope (docs/api.md: Partial consent):
//! nothing stored, nothing pushed, `reason=missing_scope`; the partial grant is
//! revoked only when the user had no connection to lose.

use std::time::Duration;

use reqwest::StatusCode;

use crate::{
    on_both_backends,
    support::{Backend, TestApp, eventually, location},
};

const MISSING_SCOPE: &str =
    "http://frontend.test/dashboard/integrations?google=error&reason=missing_scope";
const EVENTS_SCOPE: &str = "https://www.googleapis.com/auth/calendar.events";

async fn first_consent_without_a_calendar_scope_stores_nothing(backend: Backend) {
    let t = TestApp::on(backend).await;
    t.google.set_untick_scopes(&[EVENTS_SCOPE]);
    let auth_url = t.start_connect("erin").await;
    let answer = t.follow_consent(&auth_url).await;
    assert_eq!(answer.status(), StatusCode::FOUND);
    assert_eq!(location(&answer), MISSING_SCOPE);

    let status = t.status("erin").await;
    assert_eq!(status["connected"], false);
    assert!(t.app().store.user("erin").await.unwrap().is_none());
    assert!(t.microservice.received().is_empty(), "nothing pushed");
    assert!(t.actor("erin").await.is_none(), "no actor");
    // The partial grant is not left alive at Google.
    let stats = t.google.stats();
    assert_eq!(
        (stats.grants, stats.revocations, stats.active_grants),
        (1, 1, 0)
    );

    // Ticking everything afterwards connects as usual.
    t.google.set_untick_scopes(&[]);
    t.connect("erin").await;
    assert_eq!(t.status("erin").await["connected"], true);
    t.shutdown().await;
}
on_both_backends!(first_consent_without_a_calendar_scope_stores_nothing);

async fn partial_reconsent_keeps_the_existing_connection(backend: Backend) {
    let t = TestApp::on(backend).await;
    t.connect("frank").await;
    let pushed = eventually(Duration::from_secs(5), || async {
        t.microservice.stored("frank").await.unwrap().is_some()
    })
    .await;
    assert!(pushed, "the first connect reached the microservice");
    let before = t.status("frank").await;
    let token_before = t.stored_access_token("frank").await.unwrap();
    let pushes_before = t.microservice.received().len();

    t.google.set_untick_scopes(&[EVENTS_SCOPE]);
    let auth_url = t.start_connect("frank").await;
    let answer = t.follow_consent(&auth_url).await;
    assert_eq!(location(&answer), MISSING_SCOPE);

    // The good connection stays as it was, at Google, here and at the microservice.
    let after = t.status("frank").await;
    assert_eq!(after["connected"], true);
    assert_eq!(after["scope"], before["scope"]);
    assert_eq!(after["token_expiry"], before["token_expiry"]);
    assert_eq!(t.stored_access_token("frank").await.unwrap(), token_before);
    assert!(t.google.is_access_token_valid(&token_before));
    assert_eq!(t.google.stats().revocations, 0, "nothing revoked");
    assert_eq!(
        t.microservice.received().len(),
        pushes_before,
        "nothing pushed"
    );
    let held = t.microservice.stored("frank").await.unwrap().unwrap();
    assert_eq!(held.access_token, token_before);
    t.shutdown().await;
}
on_both_backends!(partial_reconsent_keeps_the_existing_connection);
