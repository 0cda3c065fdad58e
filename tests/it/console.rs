//! The operator console (docs/contract.md section 4a), over real HTTP as a browser would use it:
//! the sign-in form, the session cookie's attributes and checks, the pages reached by their links,
//! the two actions, the cross-site defences, the action log, and that no page shows a token.

use std::time::Duration;

use reqwest::{Client, Method, StatusCode, header, redirect::Policy};

use crate::{
    on_both_backends,
    support::{ADMIN_TOKEN, Backend, Options, TestApp, eventually, location, log_lines_with},
};

/// A browser of its own: keeps cookies, does not follow redirects (tests look at them).
pub(crate) fn browser() -> Client {
    Client::builder()
        .redirect(Policy::none())
        .cookie_store(true)
        .build()
        .unwrap()
}

/// The value of the hidden field `name` in `html` (the first one).
pub(crate) fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_string()
}

/// Whether the answer sets a session cookie (the sign-in form's own cookie is not one).
pub(crate) fn sets_session(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .any(|v| v.as_bytes().starts_with(b"tw_console="))
}

/// The `href` of the link whose text is exactly `text`.
fn link(html: &str, text: &str) -> Option<String> {
    let end = html.find(&format!(">{text}</a>"))?;
    let start = html[..end].rfind("<a href=\"")? + "<a href=\"".len();
    Some(html[start..end].trim_end_matches('"').replace("&amp;", "&"))
}

pub(crate) async fn text(response: reqwest::Response) -> String {
    response.text().await.unwrap()
}

/// Signs `browser` in through the form; returns the sign-in answer.
pub(crate) async fn sign_in_with(t: &TestApp, browser: &Client, token: &str) -> reqwest::Response {
    let form = text(
        browser
            .get(format!("{}/console", t.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let csrf = hidden(&form, "csrf");
    browser
        .post(format!("{}/console", t.url))
        .form(&[("admin_token", token), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap()
}

/// A signed-in browser and the overview it was shown.
pub(crate) async fn signed_in(t: &TestApp) -> (Client, String) {
    let b = browser();
    let response = sign_in_with(t, &b, ADMIN_TOKEN).await;
    assert_eq!(response.status(), StatusCode::OK);
    (b, text(response).await)
}

pub(crate) async fn get(b: &Client, url: String) -> (StatusCode, String) {
    let response = b.get(url).send().await.unwrap();
    (response.status(), text(response).await)
}

#[tokio::test]
async fn the_sign_in_form_has_one_password_field() {
    let t = TestApp::spawn().await;
    let response = browser()
        .get(format!("{}/console", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!sets_session(&response), "no session before signing in");
    let headers = response.headers().clone();
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
    let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(policy.contains("default-src 'none'") && policy.contains("form-action 'self'"));
    let html = text(response).await;
    assert_eq!(html.matches("type=\"password\"").count(), 1, "{html}");
    assert!(html.contains("name=\"admin_token\""));
    assert!(html.contains("<form method=\"post\" action=\"/console\">"));
    assert!(!hidden(&html, "csrf").is_empty());
    assert!(!html.contains(">Users</a>"), "no console before signing in");
    t.shutdown().await;
}

#[tokio::test]
async fn a_wrong_token_shows_the_form_again_with_an_error_and_no_cookie() {
    let t = TestApp::spawn().await;
    let b = browser();
    let typed = "not-the-admin-token-9f8e7d";
    let response = sign_in_with(&t, &b, typed).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(!sets_session(&response));
    let html = text(response).await;
    assert!(html.contains("Wrong admin token."), "{html}");
    assert_eq!(html.matches("type=\"password\"").count(), 1);
    assert!(!html.contains(typed), "the typed token is not echoed");
    assert_eq!(log_lines_with(&["sign_in_failed"]).len(), 1);
    t.shutdown().await;
}

async fn a_good_token_sets_the_session_cookie_and_shows_the_console(backend: Backend) {
    let t = TestApp::on(backend).await;
    let b = browser();
    let response = sign_in_with(&t, &b, ADMIN_TOKEN).await;
    assert_eq!(response.status(), StatusCode::OK);
    let set_cookie = response.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    for attribute in [
        "tw_console=",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=28800",
        "Expires=",
    ] {
        assert!(
            set_cookie.contains(attribute),
            "{attribute} in {set_cookie}"
        );
    }
    assert!(
        !set_cookie.contains("Secure"),
        "the test service's URL is http"
    );
    assert!(
        !set_cookie.contains(ADMIN_TOKEN),
        "the cookie does not hold the token"
    );
    let html = text(response).await;
    assert!(link(&html, "Users").is_some(), "{html}");
    assert!(html.contains("Sign out") && !html.contains("type=\"password\""));
    // The cookie alone opens the console from now on.
    let (status, html) = get(&b, format!("{}/console", t.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("<h1>Overview</h1>") && html.contains("<svg"));
    t.shutdown().await;
}
on_both_backends!(a_good_token_sets_the_session_cookie_and_shows_the_console);

#[tokio::test]
async fn tampered_expired_and_foreign_cookies_are_refused() {
    let t = TestApp::spawn().await;
    // The cookie value as a browser holds it, read from the sign-in's answer.
    let fresh = sign_in_with(&t, &browser(), ADMIN_TOKEN).await;
    let set_cookie = fresh.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    let pair = set_cookie.split(';').next().unwrap().to_string();
    let plain = Client::builder().redirect(Policy::none()).build().unwrap();
    let with_cookie = |cookie: String| {
        let plain = plain.clone();
        let url = t.url.clone();
        async move {
            let response = plain
                .get(format!("{url}/console"))
                .header(header::COOKIE, cookie)
                .send()
                .await
                .unwrap();
            text(response).await
        }
    };
    assert!(
        with_cookie(pair.clone())
            .await
            .contains("<h1>Overview</h1>")
    );
    let mut tampered = pair.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'1' { b'2' } else { b'1' };
    let expired = tokenwarden::http::forge_console_cookie(
        ADMIN_TOKEN,
        chrono::Utc::now() - chrono::Duration::seconds(1),
    );
    let foreign = tokenwarden::http::forge_console_cookie(
        "another-admin-token",
        chrono::Utc::now() + chrono::Duration::hours(1),
    );
    for cookie in [String::from_utf8(tampered).unwrap(), expired, foreign] {
        let html = with_cookie(cookie.clone()).await;
        assert!(html.contains("type=\"password\""), "{cookie} refused");
        let response = plain
            .get(format!("{}/console/users", t.url))
            .header(header::COOKIE, cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&response), "/console");
    }
    t.shutdown().await;
}

async fn the_users_page_is_reached_by_its_link_and_searches_by_id_and_email(backend: Backend) {
    let t = TestApp::on(backend).await;
    for user in ["carol", "cedric"] {
        t.connect(user).await;
    }
    let email = t.status("cedric").await["google_email"]
        .as_str()
        .unwrap()
        .to_string();
    let (b, overview) = signed_in(&t).await;
    let users = link(&overview, "Users").expect("a link named Users");
    let (status, html) = get(&b, format!("{}{users}", t.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(">carol</a>") && html.contains(">cedric</a>"));
    assert!(html.contains("name=\"q\""));
    let search = |q: String| {
        let b = b.clone();
        let url = format!("{}/console/users", t.url);
        async move {
            let response = b.get(url).query(&[("q", q)]).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            text(response).await
        }
    };
    let by_id = search("carol".into()).await;
    assert!(by_id.contains(">carol</a>") && !by_id.contains(">cedric</a>"));
    let by_email = search(email.to_uppercase()).await;
    assert!(by_email.contains(">cedric</a>") && !by_email.contains(">carol</a>"));
    assert!(by_email.contains(&email));
    let none = search("%".into()).await;
    assert!(
        none.contains("No user matches."),
        "LIKE wildcards are literal"
    );
    let (_, filtered) = get(
        &b,
        format!("{}/console/users?status=needs_reconnect", t.url),
    )
    .await;
    assert!(filtered.contains("No user matches."));
    // Each row links to the user's page.
    let page = link(&by_id, "carol").unwrap();
    let (status, html) = get(&b, format!("{}{page}", t.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Refresh now") && html.contains("Resync"));
    let (status, _) = get(&b, format!("{}/console/users/nobody", t.url)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    t.shutdown().await;
}
on_both_backends!(the_users_page_is_reached_by_its_link_and_searches_by_id_and_email);

/// Posts one of the user page's forms with the page's CSRF token.
async fn press(t: &TestApp, b: &Client, user: &str, action: &str) -> reqwest::Response {
    let (_, page) = get(b, format!("{}/console/users/{user}", t.url)).await;
    let csrf = hidden(&page, "csrf");
    b.post(format!("{}/console/users/{user}/{action}", t.url))
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap()
}

async fn refresh_now_moves_the_refresh_count(backend: Backend) {
    let t = TestApp::on(backend).await;
    t.connect("rita").await;
    let (b, _) = signed_in(&t).await;
    let response = press(&t, &b, "rita", "refresh").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/console/users/rita?done=refresh");
    let refreshed = eventually(Duration::from_secs(5), || async {
        t.actor("rita")
            .await
            .is_some_and(|a| a["refresh_count"] == 1)
    })
    .await;
    assert!(refreshed);
    let (_, page) = get(&b, format!("{}/console/users/rita?done=refresh", t.url)).await;
    assert!(page.contains("Refresh requested"), "the flash message");
    assert!(
        page.contains("refresh (forced)"),
        "the history shows it: {page}"
    );
    assert!(log_lines_with(&["refresh_now", "rita", "127.0.0.1"]).len() == 1);
    t.shutdown().await;
}
on_both_backends!(refresh_now_moves_the_refresh_count);

async fn resync_pushes_the_user_again(backend: Backend) {
    let t = TestApp::on(backend).await;
    t.connect("sam").await;
    let synced = || async { t.status("sam").await["sync"]["state"] == "synced" };
    assert!(eventually(Duration::from_secs(5), synced).await);
    let pushes = || t.microservice.received().len();
    let before = pushes();
    let (b, _) = signed_in(&t).await;
    let response = press(&t, &b, "sam", "resync").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/console/users/sam?done=resync");
    assert!(eventually(Duration::from_secs(5), || async { pushes() > before }).await);
    assert!(eventually(Duration::from_secs(5), synced).await);
    let (_, page) = get(&b, format!("{}/console/users/sam", t.url)).await;
    assert!(
        page.contains("push"),
        "the history shows the pushes: {page}"
    );
    assert!(log_lines_with(&["resync", "sam"]).len() == 1);
    t.shutdown().await;
}
on_both_backends!(resync_pushes_the_user_again);

#[tokio::test]
async fn posts_without_the_csrf_token_or_from_another_site_are_refused() {
    let t = TestApp::spawn().await;
    t.connect("tess").await;
    let (b, overview) = signed_in(&t).await;
    let csrf = hidden(&overview, "csrf");
    let refresh = format!("{}/console/users/tess/refresh", t.url);
    let post = |form: Vec<(&'static str, String)>, headers: Vec<(&'static str, &'static str)>| {
        let mut request = b.post(&refresh).form(&form);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(post(vec![], vec![]).await, StatusCode::FORBIDDEN);
    let wrong = vec![("csrf", "bm90LXRoZS10b2tlbg".to_string())];
    assert_eq!(post(wrong, vec![]).await, StatusCode::FORBIDDEN);
    let good = || vec![("csrf", csrf.clone())];
    let foreign = vec![("origin", "http://evil.example")];
    assert_eq!(post(good(), foreign).await, StatusCode::FORBIDDEN);
    let cross = vec![("sec-fetch-site", "cross-site")];
    assert_eq!(post(good(), cross).await, StatusCode::FORBIDDEN);
    let no_body = b.post(&refresh).send().await.unwrap().status();
    assert_eq!(no_body, StatusCode::FORBIDDEN);
    // None of them refreshed; the same form from this origin does.
    assert!(log_lines_with(&["refresh_now", "tess"]).is_empty());
    let origin = t.url.clone();
    let own = b
        .post(&refresh)
        .header("origin", origin)
        .header("sec-fetch-site", "same-origin")
        .form(&good())
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::SEE_OTHER);
    // A cross-site sign-in gets no cookie, even with the right token.
    let form = text(
        browser()
            .get(format!("{}/console", t.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let response = browser()
        .post(format!("{}/console", t.url))
        .header("origin", "http://evil.example")
        .form(&[
            ("admin_token", ADMIN_TOKEN),
            ("csrf", &hidden(&form, "csrf")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.headers().get(header::SET_COOKIE).is_none());
    // A signed-in session's sign-out needs the token too.
    let sign_out = format!("{}/console/sign-out", t.url);
    let response = b.post(&sign_out).form(&[("x", "y")]).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    t.shutdown().await;
}

#[tokio::test]
async fn sign_out_ends_the_session() {
    let t = TestApp::spawn().await;
    let (b, overview) = signed_in(&t).await;
    let response = b
        .post(format!("{}/console/sign-out", t.url))
        .header("x-forwarded-for", "203.0.113.9")
        .form(&[("csrf", hidden(&overview, "csrf"))])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/console");
    let cleared = response.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cleared.starts_with("tw_console=;") && cleared.contains("Max-Age=0"));
    let (_, html) = get(&b, format!("{}/console", t.url)).await;
    assert!(html.contains("type=\"password\""), "signed out");
    let logged = log_lines_with(&["sign_out", "127.0.0.1", "203.0.113.9"]);
    assert_eq!(
        logged.len(),
        1,
        "the peer and X-Forwarded-For are both logged"
    );
    t.shutdown().await;
}

async fn no_page_shows_a_token_value(backend: Backend) {
    let t = TestApp::spawn_with(Options {
        backend,
        token_lifetime: Duration::from_secs(3),
        refresh_lead_secs: 2,
        ..Options::default()
    })
    .await;
    t.connect("uma").await;
    let refreshed = eventually(Duration::from_secs(6), || async {
        t.actor("uma")
            .await
            .is_some_and(|a| a["refresh_count"].as_i64() >= Some(1))
    })
    .await;
    assert!(refreshed);
    let (b, overview) = signed_in(&t).await;
    let mut pages = vec![overview];
    for path in [
        "/console",
        "/console/users",
        "/console/users?q=uma",
        "/console/users/uma",
    ] {
        pages.push(get(&b, format!("{}{path}", t.url)).await.1);
    }
    let tokens = t.google.issued_tokens();
    assert!(
        tokens.len() >= 3,
        "an access, a refresh and a refreshed access token"
    );
    for page in &pages {
        assert!(page.contains("uma") || page.contains("Overview"));
        for token in &tokens {
            assert!(!page.contains(token.as_str()), "a token in a page");
            let prefix = tokenwarden::crypto::redacted(token);
            assert!(!page.contains(&prefix), "a token's prefix in a page");
            // The random part of the token, which a partial display would show.
            let tail = &token[token.len() - 12..];
            assert!(!page.contains(tail), "part of a token in a page");
        }
    }
    t.shutdown().await;
}
on_both_backends!(no_page_shows_a_token_value);

#[tokio::test]
async fn the_console_allows_no_cross_origin_credentials() {
    let t = TestApp::spawn().await;
    let client = Client::new();
    let preflight = client
        .request(Method::OPTIONS, format!("{}/console", t.url))
        .header("origin", "http://frontend.test")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    let page = client
        .get(format!("{}/console", t.url))
        .header("origin", "http://frontend.test")
        .send()
        .await
        .unwrap();
    for response in [preflight, page] {
        let headers = response.headers();
        assert!(headers.get("access-control-allow-credentials").is_none());
        assert!(headers.get("access-control-allow-origin").is_none());
    }
    t.shutdown().await;
}
