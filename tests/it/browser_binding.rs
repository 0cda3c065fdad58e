//! The OAuth state is bound to the browser that started the flow (docs/api.md: The browser-binding
//! cookie; RFC 9700 section 4.7): a consent link forwarded to someone else must not attach
//! their Google account to the sender's user.

use reqwest::{Client, Method, StatusCode, header, redirect::Policy};
use sea_orm::EntityTrait;
use tokenwarden::store::entity::oauth_state;

use crate::{
    on_both_backends,
    support::{Backend, Options, TestApp, location},
};

const ERROR_BASE: &str = "http://frontend.test/dashboard/integrations?google=error&reason=";
const CONNECTED: &str = "http://frontend.test/dashboard/integrations?google=connected";

/// A browser of its own: no cookies of the test's main client.
fn other_browser() -> Client {
    Client::builder().redirect(Policy::none()).build().unwrap()
}

/// `POST /connect` for `user` from a cookie-less client; the consent URL and the one
/// `name=value` cookie the answer set.
async fn connect_capturing_cookie(t: &TestApp, user: &str) -> (String, String) {
    let response = other_browser()
        .post(format!("{}/api/integrations/google/connect", t.url))
        .bearer_auth(t.jwt(user))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookies: Vec<String> = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let pair = cookies[0].split(';').next().unwrap().trim().to_string();
    let body: serde_json::Value = response.json().await.unwrap();
    (body["auth_url"].as_str().unwrap().to_string(), pair)
}

/// Where the sandbox's consent sends the browser back to.
async fn callback_url(client: &Client, auth_url: &str) -> String {
    location(&client.get(auth_url).send().await.unwrap())
}

async fn forwarded_consent_link_is_refused(backend: Backend) {
    let t = TestApp::on(backend).await;
    // Mallory starts a consent in her browser and sends the link to a colleague.
    let auth_url = t.start_connect("mallory").await;
    let victim = other_browser();
    let back = callback_url(&victim, &auth_url).await;
    let answer = victim.get(&back).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::FOUND);
    assert_eq!(location(&answer), format!("{ERROR_BASE}browser_mismatch"));

    // Nothing stored, nothing exchanged, nothing pushed.
    assert!(t.app().store.user("mallory").await.unwrap().is_none());
    assert_eq!(t.status("mallory").await["connected"], false);
    assert_eq!(
        t.google.stats().code_exchanges,
        0,
        "the code was never spent"
    );
    assert!(t.microservice.received().is_empty());
    // The state is spent: not even Mallory's own browser can finish it now.
    let replay = t.http.get(&back).send().await.unwrap();
    assert_eq!(location(&replay), format!("{ERROR_BASE}invalid_state"));
    assert!(t.app().store.user("mallory").await.unwrap().is_none());
    t.shutdown().await;
}
on_both_backends!(forwarded_consent_link_is_refused);

#[tokio::test]
async fn the_starting_browser_completes_and_the_cookie_is_as_the_contract_says() {
    let t = TestApp::spawn().await;
    let (auth_url, pair) = connect_capturing_cookie(&t, "alice").await;
    let response = other_browser()
        .post(format!("{}/api/integrations/google/connect", t.url))
        .bearer_auth(t.jwt("alice"))
        .send()
        .await
        .unwrap();
    let set_cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
    for attribute in [
        "HttpOnly",
        "SameSite=Lax",
        "Path=/api/integrations/google/callback",
        "Max-Age=600",
    ] {
        assert!(set_cookie.contains(attribute), "{attribute}: {set_cookie}");
    }
    assert!(
        !set_cookie.contains("Secure"),
        "http redirect URI: {set_cookie}"
    );

    let browser = other_browser();
    let back = callback_url(&browser, &auth_url).await;
    let answer = browser
        .get(&back)
        .header(header::COOKIE, &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(location(&answer), CONNECTED);
    // The round-trip is over: its cookie is removed.
    let cleared = answer.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cleared.starts_with(&format!("{}=;", pair.split('=').next().unwrap())));
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(t.status("alice").await["connected"], true);
    t.shutdown().await;
}

/// Over https the cookie is a `__Host-` cookie (issue 19, L5: a sibling subdomain cannot set
/// one), and the callback reads that name and no other. The service runs on plain loopback
/// here with an https redirect URI; the test carries the callback's query over by hand.
#[tokio::test]
async fn over_https_the_cookie_is_host_prefixed_and_read_by_that_name() {
    let mut t = TestApp::spawn().await;
    let app = t.app.take().unwrap();
    let addr = app.addr;
    app.shutdown().await;
    let mut config = t.config(addr);
    config.google.redirect_uri = "https://tw.example/api/integrations/google/callback"
        .parse()
        .unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    t.app = Some(
        tokenwarden::app::App::spawn(config, listener)
            .await
            .unwrap(),
    );

    let (auth_url, pair) = connect_capturing_cookie(&t, "hanna").await;
    assert!(pair.starts_with("__Host-tw_oauth_"), "{pair}");
    let set_cookie = other_browser()
        .post(format!("{}/api/integrations/google/connect", t.url))
        .bearer_auth(t.jwt("hanna"))
        .send()
        .await
        .unwrap()
        .headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    for attribute in ["Secure", "Path=/;", "HttpOnly", "SameSite=Lax"] {
        assert!(format!("{set_cookie};").contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Domain"), "{set_cookie}");

    let browser = other_browser();
    let back = callback_url(&browser, &auth_url).await;
    assert!(back.starts_with("https://tw.example/"), "{back}");
    let local = format!(
        "{}/api/integrations/google/callback?{}",
        t.url,
        back.split_once('?').unwrap().1
    );
    // The same value without the prefix, as a sibling subdomain could toss it in: refused.
    let tossed = pair.trim_start_matches("__Host-");
    let answer = browser
        .get(&local)
        .header(header::COOKIE, tossed)
        .send()
        .await
        .unwrap();
    assert_eq!(location(&answer), format!("{ERROR_BASE}browser_mismatch"));
    assert_eq!(t.status("hanna").await["connected"], false);

    // A fresh flow with its `__Host-` cookie completes, and that cookie is removed.
    let (auth_url, pair) = connect_capturing_cookie(&t, "hanna").await;
    let back = callback_url(&browser, &auth_url).await;
    let local = format!(
        "{}/api/integrations/google/callback?{}",
        t.url,
        back.split_once('?').unwrap().1
    );
    let answer = browser
        .get(&local)
        .header(header::COOKIE, &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(location(&answer), CONNECTED);
    let cleared = answer.headers()[header::SET_COOKIE].to_str().unwrap();
    let name = pair.split('=').next().unwrap();
    assert!(cleared.starts_with(&format!("{name}=;")), "{cleared}");
    assert!(format!("{cleared};").contains("Path=/;"), "{cleared}");
    assert_eq!(t.status("hanna").await["connected"], true);
    t.shutdown().await;
}

#[tokio::test]
async fn a_cookie_from_another_flow_is_refused() {
    let t = TestApp::spawn().await;
    let browser = other_browser();
    let (auth_a, cookie_a) = connect_capturing_cookie(&t, "bob").await;
    let (auth_b, _) = connect_capturing_cookie(&t, "bob").await;
    let (auth_c, cookie_c) = connect_capturing_cookie(&t, "bob").await;
    let a_value = cookie_a.split_once('=').unwrap().1;
    let c_name = cookie_c.split_once('=').unwrap().0;
    // B's callback with A's cookie; C's callback with A's value under C's cookie name.
    for (auth_url, cookie) in [
        (&auth_b, cookie_a.clone()),
        (&auth_c, format!("{c_name}={a_value}")),
    ] {
        let back = callback_url(&browser, auth_url).await;
        let answer = browser
            .get(&back)
            .header(header::COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(location(&answer), format!("{ERROR_BASE}browser_mismatch"));
    }
    assert!(t.app().store.user("bob").await.unwrap().is_none());
    // A's flow with A's cookie among others still works: two tabs do not clash.
    let back_a = callback_url(&browser, &auth_a).await;
    let answer = browser
        .get(&back_a)
        .header(header::COOKIE, format!("{cookie_c}; {cookie_a}"))
        .send()
        .await
        .unwrap();
    assert_eq!(location(&answer), CONNECTED);
    t.shutdown().await;
}

#[tokio::test]
async fn an_unknown_state_is_invalid_state_whatever_the_cookie() {
    let t = TestApp::spawn().await;
    let (_, cookie) = connect_capturing_cookie(&t, "carol").await;
    let answer = other_browser()
        .get(format!(
            "{}/api/integrations/google/callback?code=abc&state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            t.url
        ))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(location(&answer), format!("{ERROR_BASE}invalid_state"));
    let states = oauth_state::Entity::find()
        .all(t.app().store.connection())
        .await
        .unwrap();
    assert_eq!(states.len(), 1, "carol's own state is untouched");
    assert_eq!(states[0].browser_hash.as_ref().map(String::len), Some(64));
    assert!(!cookie.contains(states[0].browser_hash.as_ref().unwrap()));
    t.shutdown().await;
}

#[tokio::test]
async fn binding_off_sets_no_cookie_and_accepts_a_forwarded_link() {
    let t = TestApp::spawn_with(Options {
        browser_binding: false,
        ..Options::default()
    })
    .await;
    let response = other_browser()
        .post(format!("{}/api/integrations/google/connect", t.url))
        .bearer_auth(t.jwt("dave"))
        .send()
        .await
        .unwrap();
    assert!(response.headers().get(header::SET_COOKIE).is_none());
    let body: serde_json::Value = response.json().await.unwrap();
    // What the switch gives up: another browser finishes the flow.
    let victim = other_browser();
    let back = callback_url(&victim, body["auth_url"].as_str().unwrap()).await;
    let answer = victim.get(&back).send().await.unwrap();
    assert_eq!(location(&answer), CONNECTED);
    t.shutdown().await;
}

#[tokio::test]
async fn cors_allows_credentials_for_the_frontend_on_integrations_only() {
    let t = TestApp::spawn().await;
    let preflight = |path: &str| {
        t.http
            .request(Method::OPTIONS, format!("{}{path}", t.url))
            .header(header::ORIGIN, "http://frontend.test")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
            .send()
    };
    let answer = preflight("/api/integrations/google/connect").await.unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
    let headers = answer.headers();
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "http://frontend.test"
    );
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");

    for path in ["/admin/actors", "/admin/resync", "/metrics"] {
        let answer = preflight(path).await.unwrap();
        assert!(
            answer
                .headers()
                .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
                .is_none()
                && answer
                    .headers()
                    .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                    .is_none(),
            "{path}: {:?}",
            answer.headers()
        );
    }
    let admin = t
        .http
        .get(format!("{}/admin/actors", t.url))
        .header(header::ORIGIN, "http://frontend.test")
        .bearer_auth(crate::support::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), StatusCode::OK);
    assert!(
        admin
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
    // Another origin is never allowed, even on the integrations routes.
    let evil = t
        .http
        .request(
            Method::OPTIONS,
            format!("{}/api/integrations/google/connect", t.url),
        )
        .header(header::ORIGIN, "http://evil.test")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .send()
        .await
        .unwrap();
    assert_ne!(
        evil.headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .map(|v| v.to_str().unwrap().to_string()),
        Some("http://evil.test".to_string())
    );
    t.shutdown().await;
}
