//! The demo page in a real browser: the `tokenwarden demo` binary, Chromium typing a user and
//! clicking through the consent. The OAuth state is bound to the browser by a cookie the demo
//! passes through, so this proves the flow works where it matters: in a browser that applies
//! its own cookie rules. The page lists the events the app received as they arrive, and
//! "Google revokes this grant" (a security event from the sandbox Google, docs/contract.md section
//! 10) leaves the user needing a reconnect.

use fantoccini::Locator;

use crate::browser::{Browser, within_limit};
use crate::process::DemoProcess;

const USER: &str = "browser-user";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_connects_refreshes_and_disconnects() {
    const TEST: &str = "demo_page_connects_refreshes_and_disconnects";
    within_limit(TEST, async {
        let Some(mut browser) = Browser::start(TEST).await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let demo = DemoProcess::start(dir.path()).await;
        let result = walk_through(&mut browser, &demo).await;
        if result.is_err() {
            eprintln!("the demo printed:\n{}", demo.output());
        }
        browser.finish(result).await;
    })
    .await;
}

/// The microservice's copy of the access token as the page shows it (cut short).
fn shown_access_token(copy: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(copy).ok()?;
    value["access_token"].as_str().map(str::to_string)
}

async fn walk_through(browser: &mut Browser, demo: &DemoProcess) -> anyhow::Result<()> {
    let page = &demo.page_url;
    let row = format!("#actors tr[data-user=\"{USER}\"]");
    let refreshes = format!("{row} td[data-field=\"refresh_count\"]");

    browser.goto(&format!("{page}/")).await?;
    browser
        .wait_text(Locator::Css("#connection"), "the first poll", |t| {
            t == "not connected"
        })
        .await?;
    browser.screenshot("page").await?;

    // Connect: the page asks the demo's backend for a consent URL (which passes the service's
    // binding cookie on), the sandbox consents at once, the service's callback checks the
    // cookie and sends the browser back to the page.
    browser.fill(Locator::Css("#user"), USER).await?;
    browser.click(Locator::Css("#connect")).await?;
    browser
        .wait_url("the way back to the page", |url| {
            url.starts_with(page.as_str()) && url.contains("google=connected")
        })
        .await?;
    browser
        .wait_text(Locator::Css("#banner"), "the connected banner", |t| {
            t == "Google Calendar connected"
        })
        .await?;
    browser
        .wait_text(Locator::Css("#connection"), "connected", |t| {
            t == "connected"
        })
        .await?;
    browser
        .wait_text(Locator::Css(&row), "the user's actor", |t| t.contains(USER))
        .await?;
    let copy = browser
        .wait_text(Locator::Css("#copy"), "the microservice's copy", |t| {
            shown_access_token(t).is_some()
        })
        .await?;
    let before = shown_access_token(&copy).expect("checked above");
    anyhow::ensure!(
        before.starts_with("ya29.") && before.contains('…'),
        "the page shows the token cut short, not {before:?}"
    );
    // The app was told, and the page lists it.
    browser
        .wait_text(
            Locator::Css("#events tr[data-type=\"connection.connected\"]"),
            "the connected event on the page",
            |t| t.contains("connection.connected"),
        )
        .await?;
    let count_before: u64 = browser.text_now(Locator::Css(&refreshes)).await?.parse()?;
    browser.screenshot("connected").await?;

    browser.click(Locator::Css("#refresh")).await?;
    browser
        .wait_text(Locator::Css("#banner"), "the refresh answer", |t| {
            t == "refresh queued"
        })
        .await?;
    let copy = browser
        .wait_text(
            Locator::Css("#copy"),
            "a new token in the microservice's copy",
            |t| shown_access_token(t).is_some_and(|token| token != before),
        )
        .await?;
    browser
        .wait_text(Locator::Css(&refreshes), "the refresh count to move", |t| {
            t.parse::<u64>().is_ok_and(|n| n > count_before)
        })
        .await?;
    let after = shown_access_token(&copy).expect("checked above");
    anyhow::ensure!(after != before);
    browser.screenshot("refreshed").await?;

    browser.click(Locator::Css("#disconnect")).await?;
    browser
        .wait_text(Locator::Css("#banner"), "the disconnect answer", |t| {
            t == "Google Calendar disconnected successfully"
        })
        .await?;
    browser
        .wait_text(Locator::Css("#connection"), "not connected", |t| {
            t == "not connected"
        })
        .await?;
    browser
        .wait_text(Locator::Css("#copy"), "the copy removed", |t| t == "null")
        .await?;
    browser
        .wait_text(Locator::Css(&row), "the actor gone", str::is_empty)
        .await?;
    browser
        .wait_text(
            Locator::Css("#events tr:first-child td[data-field=\"type\"]"),
            "the disconnected event, newest first",
            |t| t == "connection.disconnected",
        )
        .await?;
    browser.screenshot("disconnected").await?;

    // Connected again, then Google revokes the grant: the sandbox sends `tokens-revoked` for
    // the account to the service's receiver, which ends the grant.
    browser.click(Locator::Css("#connect")).await?;
    browser
        .wait_url("the way back after reconnecting", |url| {
            url.starts_with(page.as_str()) && url.contains("google=connected")
        })
        .await?;
    browser
        .wait_text(Locator::Css("#copy"), "the copy of the new grant", |t| {
            shown_access_token(t).is_some()
        })
        .await?;
    browser.click(Locator::Css("#google-revokes")).await?;
    browser
        .wait_text(Locator::Css("#banner"), "the receiver's 202", |t| {
            t.contains("tokens-revoked") && t.ends_with("202")
        })
        .await?;
    browser
        .wait_text(Locator::Css("#connection"), "needs reconnect", |t| {
            t == "needs reconnect: security_event"
        })
        .await?;
    browser
        .wait_text(
            Locator::Css("#copy"),
            "the copy removed by Google's event",
            |t| t == "null",
        )
        .await?;
    browser
        .wait_text(
            Locator::Css("#events tr:first-child td[data-field=\"type\"]"),
            "the needs_reconnect event, newest first",
            |t| t == "connection.needs_reconnect",
        )
        .await?;
    browser
        .wait_text(
            Locator::Css("#events tr:first-child td[data-field=\"reason\"]"),
            "its reason",
            |t| t == "security_event",
        )
        .await?;
    browser.screenshot("google-revoked").await?;
    Ok(())
}
