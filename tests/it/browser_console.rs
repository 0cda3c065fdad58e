//! The operator console (docs/contract.md section 4a) in a real browser: a wrong token refused,
//! sign-in, the users page finds a connected user, "Refresh now" moves the refresh count, a form
//! posted from another origin is refused, sign-out ends the session.
//!
//! The forged forms are served from another loopback port: the same site as the console
//! (ports don't count for cookies), so Chromium sends the `SameSite=Strict` session cookie with
//! them and only the console's own checks stand in the way.

use std::time::Duration;

use anyhow::Context;
use axum::{Router, response::Html, routing::get};
use fantoccini::Locator;

use crate::browser::{Browser, within_limit};
use crate::support::{ADMIN_TOKEN, TestApp, log_lines_with};

const USER: &str = "console-user";
const PASSWORD: Locator<'static> = Locator::Css("input[type=password][name=admin_token]");
const SIGN_IN: Locator<'static> = Locator::Css("form[action='/console'] button[type=submit]");
const SIGN_OUT: Locator<'static> =
    Locator::Css("form[action='/console/sign-out'] button[type=submit]");
const REFRESH_NOW: Locator<'static> = Locator::Css("form[action$='/refresh'] button[type=submit]");
const REFRESH_CSRF: Locator<'static> = Locator::Css("form[action$='/refresh'] input[name=csrf]");
/// The "Refresh count" cell of a user's page.
const REFRESH_COUNT: Locator<'static> = Locator::XPath("//tr[th='Refresh count']/td");
const HEADING: Locator<'static> = Locator::Css("main h1");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_signs_in_refreshes_refuses_forgeries_and_signs_out() {
    const TEST: &str = "console_signs_in_refreshes_refuses_forgeries_and_signs_out";
    within_limit(TEST, async {
        let Some(mut browser) = Browser::start(TEST).await else {
            return;
        };
        let t = TestApp::spawn().await;
        t.connect(USER).await;
        let result = walk_through(&mut browser, &t).await;
        if result.is_err() {
            eprintln!(
                "the console's warnings:\n{}",
                log_lines_with(&["console refused"]).join("\n")
            );
        }
        browser.finish(result).await;
        t.shutdown().await;
    })
    .await;
}

async fn refresh_count(t: &TestApp) -> anyhow::Result<u64> {
    let actor = t.actor(USER).await.context("the user's actor")?;
    actor["refresh_count"]
        .as_u64()
        .context("refresh_count in the admin API")
}

async fn walk_through(browser: &mut Browser, t: &TestApp) -> anyhow::Result<()> {
    let console = format!("{}/console", t.url);

    // Without a session: the sign-in form, one password field.
    browser.goto(&console).await?;
    browser.find(PASSWORD).await?;
    let fields = browser.count(Locator::Css("input[type=password]")).await?;
    anyhow::ensure!(fields == 1, "one password field, not {fields}");
    browser.screenshot("sign-in").await?;

    // A wrong token: the form again, with an error, and no way in.
    browser.fill(PASSWORD, "not-the-admin-token").await?;
    browser.click(SIGN_IN).await?;
    browser
        .wait_text(Locator::Css("[role=alert]"), "the error", |t| {
            t == "Wrong admin token."
        })
        .await?;
    browser.find(PASSWORD).await?;
    anyhow::ensure!(
        browser
            .text_now(Locator::LinkText("Users"))
            .await?
            .is_empty(),
        "no console after a wrong token"
    );
    browser.screenshot("wrong-token").await?;

    // The right token: the console.
    browser.fill(PASSWORD, ADMIN_TOKEN).await?;
    browser.click(SIGN_IN).await?;
    browser
        .wait_text(HEADING, "the overview", |t| t == "Overview")
        .await?;
    browser.screenshot("overview").await?;

    // Users, searched with q: the connected user.
    browser.click(Locator::LinkText("Users")).await?;
    browser
        .wait_text(HEADING, "the users page", |t| t == "Users")
        .await?;
    browser.fill(Locator::Css("input[name=q]"), USER).await?;
    browser
        .click(Locator::Css(
            "form[action='/console/users'] button[type=submit]",
        ))
        .await?;
    browser
        .wait_url("the search", |url| url.contains(&format!("q={USER}")))
        .await?;
    browser
        .wait_text(Locator::Css("main table"), "the user's row", |t| {
            t.contains(USER) && t.contains("@sandbox.test") && t.contains("synced")
        })
        .await?;
    browser.screenshot("users").await?;

    // The user's page: Refresh now moves the count, on the page and in the actor.
    browser.click(Locator::LinkText(USER)).await?;
    browser
        .wait_text(HEADING, "the user's page", |t| t == format!("User {USER}"))
        .await?;
    let before = refresh_count(t).await?;
    browser
        .wait_text(REFRESH_COUNT, "the refresh count", |t| {
            t == before.to_string()
        })
        .await?;
    browser.click(REFRESH_NOW).await?;
    browser
        .wait_text(Locator::Css("[role=status]"), "the flash", |t| {
            t.starts_with("Refresh requested")
        })
        .await?;
    browser
        .wait_text_reloading(REFRESH_COUNT, "the refresh count to move", |t| {
            t.parse::<u64>().is_ok_and(|n| n > before)
        })
        .await?;
    let counted = refresh_count(t).await?;
    anyhow::ensure!(
        counted > before,
        "the actor refreshed: {before} -> {counted}"
    );
    browser.screenshot("refreshed").await?;

    // Forged forms from another origin of the same site: one without the CSRF token, one
    // carrying this session's real token (as if it had leaked), so the origin check alone
    // must refuse it.
    let leaked = browser
        .attr(REFRESH_CSRF, "value")
        .await?
        .context("the refresh form's csrf")?;
    let attacker = serve_forged_forms(&format!("{console}/users/{USER}/refresh"), &leaked).await?;
    let refused_before = log_lines_with(&["cross_site_refused"]).len();
    for (n, form) in ["forged", "leaked"].into_iter().enumerate() {
        browser.goto(&attacker).await?;
        browser.find(Locator::Id(form)).await?;
        if n == 0 {
            browser.screenshot("forged-form").await?;
        }
        browser
            .click(Locator::Css(&format!("#{form} button")))
            .await?;
        browser
            .wait_text(Locator::Css("main"), "the console's refusal", |t| {
                t.contains("This form was sent from another site.")
            })
            .await?;
        anyhow::ensure!(
            browser.current_url().await?.starts_with(&console),
            "the refusal came from the console"
        );
        browser.screenshot(&format!("{form}-refused")).await?;
    }
    let refusals = log_lines_with(&["cross_site_refused"]).len() - refused_before;
    anyhow::ensure!(refusals == 2, "two cross-site posts logged, not {refusals}");
    // Nothing was queued: give a refresh that slipped through time to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = refresh_count(t).await?;
    anyhow::ensure!(
        after == counted,
        "no refresh from a forged form: {counted} -> {after}"
    );

    // Sign out: the form again, and the pages need a new sign-in.
    browser.goto(&console).await?;
    browser.click(SIGN_OUT).await?;
    browser.find(PASSWORD).await?;
    browser.goto(&format!("{console}/users?q={USER}")).await?;
    browser
        .wait_url("the way back to sign-in", |url| url == console)
        .await?;
    browser.find(PASSWORD).await?;
    browser.screenshot("signed-out").await?;
    Ok(())
}

/// Serves, on a loopback port of its own, a page with two forms posting to `action`: `forged`
/// with a made-up CSRF token, `leaked` with `csrf`. Returns the page's address.
async fn serve_forged_forms(action: &str, csrf: &str) -> anyhow::Result<String> {
    let csrf = csrf.replace('&', "&amp;").replace('"', "&quot;");
    let page = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Win a prize</title></head>
<body><h1>Win a prize</h1>
<form id="forged" method="post" action="{action}">
<input type="hidden" name="csrf" value="made-up"><button type="submit">Claim it</button></form>
<form id="leaked" method="post" action="{action}">
<input type="hidden" name="csrf" value="{csrf}"><button type="submit">Claim it again</button></form>
</body></html>"#
    );
    let listener = tokenwarden_sandbox::bind_loopback().await?;
    let url = format!("http://{}/", listener.local_addr()?);
    let router = Router::new().route("/", get(move || async move { Html(page) }));
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(url)
}
