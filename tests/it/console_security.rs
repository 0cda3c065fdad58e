//! The second security review's findings on the admin surface (issue 19, M2 and L3), each
//! attacked over real HTTP: the sign-in form gives nothing to test guesses against, wrong
//! tokens are throttled per client address, the console answers only under its own host
//! names, and a session ended by signing out or by "End all sessions" is over on the server,
//! not only in the browser that ended it.

use reqwest::{Client, StatusCode, header, redirect::Policy};

use crate::{
    console::{browser, get, hidden, sign_in_with, signed_in, text},
    on_both_backends,
    support::{ADMIN_TOKEN, Backend, TestApp, log_lines_with},
};

/// The session cookie (`name=value`) an answer sets.
fn session_cookie(response: &reqwest::Response) -> String {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("tw_console="))
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_string()
}

/// Whether `cookie` (copied out of a browser) still opens the console.
async fn opens_console(t: &TestApp, cookie: &str) -> bool {
    let plain = Client::builder().redirect(Policy::none()).build().unwrap();
    let response = plain
        .get(format!("{}/console", t.url))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap();
    text(response).await.contains("<h1>Overview</h1>")
}

#[tokio::test]
async fn the_sign_in_form_gives_nothing_derived_from_the_admin_token() {
    let t = TestApp::spawn().await;
    let form = |b: Client| {
        let url = format!("{}/console", t.url);
        async move { text(b.get(url).send().await.unwrap()).await }
    };
    // Two forms shown in the same second carry different values (a value computed from the
    // admin token and the time, as before, is the same for both and can be checked offline).
    let (a, b) = (
        hidden(&form(browser()).await, "csrf"),
        hidden(&form(browser()).await, "csrf"),
    );
    assert_ne!(a, b);
    assert!(!a.contains('.'), "no expiry and tag: {a}");
    // The value only works with the cookie it came with: posted from another browser it is
    // an expired form, whatever the token.
    let stranger = browser();
    let _ = form(stranger.clone()).await;
    let response = stranger
        .post(format!("{}/console", t.url))
        .form(&[("admin_token", ADMIN_TOKEN), ("csrf", a.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(text(response).await.contains("The sign-in form expired"));
    t.shutdown().await;
}

#[tokio::test]
async fn wrong_admin_tokens_are_throttled_per_address_even_before_a_right_one() {
    let t = TestApp::spawn().await;
    let actors = format!("{}/admin/actors", t.url);
    let call = |token: &'static str| t.http.get(&actors).bearer_auth(token).send();
    assert_eq!(call(ADMIN_TOKEN).await.unwrap().status(), StatusCode::OK);
    for _ in 0..10 {
        let status = call("a-wrong-guess-of-the-admin-token!")
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let refused = call("a-wrong-guess-of-the-admin-token!").await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = refused.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    // The right token from the same address waits too: otherwise a guesser would learn which
    // guess is right from the one answer that is not a 429.
    assert_eq!(
        call(ADMIN_TOKEN).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // So does the console's sign-in: the failures are counted together.
    let response = sign_in_with(&t, &browser(), ADMIN_TOKEN).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key(header::RETRY_AFTER));
    t.shutdown().await;
}

#[tokio::test]
async fn wrong_console_sign_ins_are_throttled() {
    let t = TestApp::spawn().await;
    for _ in 0..10 {
        let response = sign_in_with(&t, &browser(), "a-wrong-guess-of-the-admin-token!").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let response = sign_in_with(&t, &browser(), ADMIN_TOKEN).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let html = text(response).await;
    assert!(html.contains("Too many wrong tokens"), "{html}");
    assert_eq!(log_lines_with(&["sign_in_throttled"]).len(), 1);
    let admin = t
        .http
        .get(format!("{}/admin/actors", t.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), StatusCode::TOO_MANY_REQUESTS);
    t.shutdown().await;
}

#[tokio::test]
async fn the_console_answers_only_under_its_own_host_names() {
    let t = TestApp::spawn().await;
    let plain = Client::builder().redirect(Policy::none()).build().unwrap();
    let with_host = |host: &'static str| {
        plain
            .get(format!("{}/console", t.url))
            .header(header::HOST, host)
            .send()
    };
    // A DNS-rebound name: another site's page whose name now points at this port.
    let rebound = with_host("attacker.example:3000").await.unwrap();
    assert_eq!(rebound.status(), StatusCode::FORBIDDEN);
    assert!(!text(rebound).await.contains("admin_token"));
    for host in ["127.0.0.1:3000", "localhost:3000", "localhost"] {
        let response = with_host(host).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{host}");
    }
    // The sign-in is refused under another name too, before the token is looked at.
    let response = plain
        .post(format!("{}/console", t.url))
        .header(header::HOST, "attacker.example")
        .form(&[("admin_token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.headers().get(header::SET_COOKIE).is_none());
    t.shutdown().await;
}

async fn signing_out_ends_the_session_for_a_copied_cookie_too(backend: Backend) {
    let t = TestApp::on(backend).await;
    let b = browser();
    let response = sign_in_with(&t, &b, ADMIN_TOKEN).await;
    assert_eq!(response.status(), StatusCode::OK);
    let copied = session_cookie(&response);
    let overview = text(response).await;
    assert!(opens_console(&t, &copied).await);
    let response = b
        .post(format!("{}/console/sign-out", t.url))
        .form(&[("csrf", hidden(&overview, "csrf"))])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    // The copy was taken before the sign-out; it is signed and unexpired, and still refused.
    assert!(!opens_console(&t, &copied).await);
    let (status, html) = get(&b, format!("{}/console/users", t.url)).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    t.shutdown().await;
}
on_both_backends!(signing_out_ends_the_session_for_a_copied_cookie_too);

async fn an_operator_ends_every_session(backend: Backend) {
    let t = TestApp::on(backend).await;
    let (first, overview) = signed_in(&t).await;
    let other = browser();
    let response = sign_in_with(&t, &other, ADMIN_TOKEN).await;
    let others_cookie = session_cookie(&response);
    assert!(opens_console(&t, &others_cookie).await);
    assert!(overview.contains("End all sessions"), "{overview}");
    // The form needs the session's CSRF token like every other.
    let end_all = format!("{}/console/sessions/end-all", t.url);
    let response = first
        .post(&end_all)
        .form(&[("x", "y")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(opens_console(&t, &others_cookie).await);
    let response = first
        .post(&end_all)
        .form(&[("csrf", hidden(&overview, "csrf"))])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(
        !opens_console(&t, &others_cookie).await,
        "the other browser"
    );
    let (_, html) = get(&first, format!("{}/console", t.url)).await;
    assert!(html.contains("type=\"password\""), "this browser too");
    assert_eq!(log_lines_with(&["end_all_sessions"]).len(), 1);
    // Signing in again works at once.
    assert_eq!(
        sign_in_with(&t, &other, ADMIN_TOKEN).await.status(),
        StatusCode::OK
    );
    t.shutdown().await;
}
on_both_backends!(an_operator_ends_every_session);
