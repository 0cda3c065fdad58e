//! The grant's life on the operator console (docs/contract.md section 4a, 9): a user whose
//! time-limited grant ended is listed, and shown on their page, as "needs_reconnect — authorization
//! expired" with the grant's end; their page lists their events to the app (connected, expiring,
//! needs reconnect) with how each was delivered; without `APP_EVENTS_URL` it says events are off.

use std::time::Duration;

use reqwest::StatusCode;
use tokenwarden_sandbox::{AppEventsReceiver, AppEventsReceiverConfig, bind_loopback};

use crate::{
    console::{get, signed_in},
    on_both_backends,
    support::{Backend, Options, TestApp, eventually},
};

/// The text of the table row that holds `marker`.
fn row_of<'a>(html: &'a str, marker: &str) -> &'a str {
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} in {html}"));
    let start = html[..at].rfind("<tr").unwrap();
    let end = at + html[at..].find("</tr>").unwrap();
    &html[start..end]
}

async fn an_ended_grant_shows_its_reason_end_and_events(backend: Backend) {
    let receiver = AppEventsReceiver::start(
        AppEventsReceiverConfig::default(),
        bind_loopback().await.unwrap(),
    )
    .await
    .unwrap();
    let t = TestApp::spawn_with(Options {
        backend,
        token_lifetime: Duration::from_secs(2),
        refresh_lead_secs: 1,
        hibernate_after_secs: 1,
        grant_lifetime: Duration::from_secs(3),
        app_events_url: Some(receiver.events_url()),
        ..Options::default()
    })
    .await;
    t.connect("gina").await;
    let ended = eventually(Duration::from_secs(20), || async {
        t.status("gina").await["reconnect_reason"] == "authorization_expired"
    })
    .await;
    assert!(ended, "the grant ended: {}", t.status("gina").await);
    let end = t.status("gina").await["authorization_expires_at"]
        .as_str()
        .expect("the end is kept")
        .to_string();
    // Connected, warned at once (the grant is shorter than the warning), ended.
    let delivered = eventually(Duration::from_secs(20), || async {
        receiver.events().len() >= 3
    })
    .await;
    assert!(delivered, "{:?}", receiver.events());

    let (b, _) = signed_in(&t).await;
    let (status, list) = get(&b, format!("{}/console/users?q=gina", t.url)).await;
    assert_eq!(status, StatusCode::OK);
    let row = row_of(&list, ">gina</a>");
    assert!(row.contains("needs_reconnect"), "{row}");
    assert!(row.contains("authorization expired"), "{row}");
    assert!(row.contains(&end), "the grant's end: {row}");
    assert!(row.contains(" ago)"), "with a relative time: {row}");

    let (status, page) = get(&b, format!("{}/console/users/gina", t.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(row_of(&page, ">Status<").contains("authorization expired"));
    assert!(row_of(&page, ">Grant ends<").contains(&end));
    assert!(page.contains("Events to the app"));
    for kind in [
        "connection.connected",
        "connection.authorization_expiring",
        "connection.needs_reconnect",
    ] {
        let event = row_of(&page, &format!("data-type=\"{kind}\""));
        assert!(event.contains("delivered"), "{kind} delivered: {event}");
    }
    let needs = row_of(&page, "data-type=\"connection.needs_reconnect\"");
    assert!(needs.contains("authorization expired") && needs.contains(&end));
    // Newest first.
    assert!(
        page.find("connection.needs_reconnect").unwrap()
            < page.find("connection.connected").unwrap()
    );
    for token in t.google.issued_tokens() {
        assert!(!page.contains(token.as_str()) && !list.contains(token.as_str()));
    }
    t.shutdown().await;
}
on_both_backends!(an_ended_grant_shows_its_reason_end_and_events);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_app_events_the_page_says_they_are_off() {
    let t = TestApp::spawn().await;
    t.connect("hugo").await;
    let (b, _) = signed_in(&t).await;
    let (_, page) = get(&b, format!("{}/console/users/hugo", t.url)).await;
    assert!(page.contains("Events to the app are off"), "{page}");
    assert!(
        row_of(&page, ">Grant ends<").contains("ongoing"),
        "ongoing access has no end"
    );
    let (_, list) = get(&b, format!("{}/console/users", t.url)).await;
    assert!(row_of(&list, ">hugo</a>").contains("ongoing"));
    t.shutdown().await;
}
