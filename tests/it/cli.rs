//! The real binary: configuration errors name their variable on one line, `migrate` works,
//! and `serve` runs the whole path against the sandbox servers.

use std::{process::Command, time::Duration};

use tokenwarden_sandbox::{SandboxGoogleConfig, bind_loopback};

use crate::process::{Served, tokenwarden};
use crate::support::{
    ADMIN_TOKEN, Backend, CLIENT_ID, CLIENT_SECRET, ENCRYPTION_KEY, JWT_SECRET, TestDatabase,
    eventually,
};

fn required_env(command: &mut Command) -> &mut Command {
    command
        .env("GOOGLE_CALENDAR_CLIENT_ID", CLIENT_ID)
        .env("GOOGLE_CALENDAR_CLIENT_SECRET", CLIENT_SECRET)
        .env("AUTH_JWT_SECRET", JWT_SECRET)
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TOKEN_ENCRYPTION_KEY", ENCRYPTION_KEY)
}

#[test]
fn missing_or_malformed_variables_are_named_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let output = tokenwarden(dir.path()).arg("serve").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("GOOGLE_CALENDAR_CLIENT_ID"), "{stderr}");

    let output = required_env(&mut tokenwarden(dir.path()))
        .env("TOKEN_ENCRYPTION_KEY", "dG9vIHNob3J0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("TOKEN_ENCRYPTION_KEY"), "{stderr}");
    assert!(!stderr.contains("dG9vIHNob3J0"), "the value is not echoed");

    // An admin token short enough to guess (issue 19, M2) stops serve before it listens.
    let output = required_env(&mut tokenwarden(dir.path()))
        .env("ADMIN_TOKEN", "hunter2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("ADMIN_TOKEN is malformed") && stderr.contains("at least 32"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "the value is not echoed");

    let output = required_env(&mut tokenwarden(dir.path()))
        .env(
            "GOOGLE_CALENDAR_MICROSERVICE_SIGNING_SECRET",
            "whsec_c2VjcmV0,not-a-webhook-secret",
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("GOOGLE_CALENDAR_MICROSERVICE_SIGNING_SECRET is malformed"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("c2VjcmV0") && !stderr.contains("not-a-webhook"),
        "{stderr}"
    );

    let output = required_env(&mut tokenwarden(dir.path()))
        .env("REFRESH_LEAD_SECS", "soon")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("REFRESH_LEAD_SECS") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
}

#[test]
fn migrate_applies_and_help_lists_commands() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let output = tokenwarden(dir.path())
        .arg("migrate")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", db.display()),
        )
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(db.exists());
    let help = tokenwarden(dir.path()).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for command in ["serve", "demo", "migrate", "sandbox-google", "microservice"] {
        assert!(text.contains(command), "{command} in --help");
    }
}

/// `--help` shows the environment's value of plain settings but never of secrets or of URLs
/// that may carry credentials (docs/reliability.md, Security: Low 2).
#[test]
fn help_never_shows_secrets_or_credentials_in_urls() {
    const SECRET: &str = "hunter2secret";
    let dir = tempfile::tempdir().unwrap();
    let database = format!("postgres://u:{SECRET}@127.0.0.1:1/x");
    let web = format!("https://u:{SECRET}@example.test/base");
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["migrate", "--help"],
        &["rotate-key", "--help"],
        &["demo", "--help"],
        &["loadtest", "--help"],
        &["microservice", "--help"],
        &["sandbox-google", "--help"],
        &["check-microservice", "--help"],
    ] {
        let mut command = tokenwarden(dir.path());
        command.args(args).env("LISTEN_ADDR", "127.0.0.1:3999");
        for var in [
            "DATABASE_URL",
            "DEMO_DATABASE_URL",
            "LOADTEST_DATABASE_URL",
            "MICROSERVICE_DATABASE_URL",
        ] {
            command.env(var, &database);
        }
        for var in [
            "GOOGLE_CALENDAR_MICROSERVICE_URL",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "GOOGLE_OAUTH_AUTH_URL",
            "GOOGLE_OAUTH_TOKEN_URL",
            "GOOGLE_OAUTH_REVOKE_URL",
            "GOOGLE_USERINFO_URL",
        ] {
            command.env(var, &web);
        }
        for var in [
            "GOOGLE_CALENDAR_CLIENT_SECRET",
            "GOOGLE_CALENDAR_MICROSERVICE_TOKEN",
            "GOOGLE_CALENDAR_MICROSERVICE_SIGNING_SECRET",
            "MICROSERVICE_SIGNING_SECRET",
            "AUTH_JWT_SECRET",
            "ADMIN_TOKEN",
            "TOKEN_ENCRYPTION_KEY",
        ] {
            command.env(var, SECRET);
        }
        let output = command.output().unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{args:?}: {help}");
        let shown: Vec<&str> = help.lines().filter(|l| l.contains(SECRET)).collect();
        assert!(shown.is_empty(), "{args:?} shows a secret: {shown:?}");
        if args[0] == "serve" {
            assert!(help.contains("[env: DATABASE_URL"), "{help}");
            // Plain settings still show the value they will take.
            assert!(help.contains("LISTEN_ADDR=127.0.0.1:3999"), "{help}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_connects_and_stops_on_sigterm() {
    let (google, microservice) =
        crate::process::sandboxes(SandboxGoogleConfig::default().token_lifetime).await;
    let db = TestDatabase::create(Backend::Sqlite).await;
    let port = bind_loopback().await.unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    // Starts `serve` and waits for `/readyz` 200.
    let mut served = Served::start(
        dir.path(),
        port,
        &db.url,
        ENCRYPTION_KEY,
        &google,
        &microservice,
        &[],
    )
    .await;
    let url = served.url.clone();
    crate::process::connect_at(&crate::process::client(), &url, "cli-user").await;
    let synced = eventually(Duration::from_secs(5), || async {
        microservice.stored("cli-user").await.unwrap().is_some()
    })
    .await;
    assert!(synced);

    // SIGTERM: a clean exit with status 0.
    served.signal("TERM");
    let exited = served.wait_exit(Duration::from_secs(10)).await;
    assert!(exited.expect("exited within 10 s").success());
}

/// The demo's page proxies connect as a main app's backend would; a browser that keeps
/// cookies must still finish the flow (the binding cookie is passed through). The app's
/// events reach the demo's receiver and the page's state; a grant the page makes end soon
/// goes connected, authorization_expiring, needs_reconnect (authorization_expired), and the
/// microservice's copy goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_connects_a_browser_through_the_binding_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let demo = crate::process::DemoProcess::start(dir.path()).await;
    let page = demo.page_url.clone();

    let browser = crate::process::client();
    let landed = demo_connect(&browser, &page, "demo-user").await;
    let state = || demo_state(&browser, &page, "demo-user");
    let types = event_types;
    // The demo signs its pushes and its microservice verifies them: the copy arrives.
    let mirrored = eventually(Duration::from_secs(10), || async {
        state().await["microservice"].is_object()
    })
    .await;
    // The demo signs its events too, and its receiver verifies them.
    let told = eventually(Duration::from_secs(10), || async {
        types(&state().await) == ["connection.connected"]
    })
    .await;
    let ended = browser
        .post(format!("{page}/demo/grant-end"))
        .json(&serde_json::json!({"user_id": "demo-user", "ends_in_secs": 3}))
        .send()
        .await
        .unwrap();
    let ended_status = ended.status();
    let lifecycle = [
        "connection.needs_reconnect",
        "connection.authorization_expiring",
        "connection.connected",
    ];
    let expired = eventually(Duration::from_secs(30), || async {
        let state = state().await;
        types(&state) == lifecycle && state["microservice"].is_null()
    })
    .await;
    let last = state().await;
    let receiver_url = demo
        .output()
        .lines()
        .find_map(|l| l.trim().strip_prefix("app events receiver:"))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string);
    let listed = match &receiver_url {
        Some(url) => browser.get(url).send().await.unwrap().text().await.unwrap(),
        None => String::new(),
    };
    let output = demo.output();
    drop(demo);
    assert_eq!(
        landed,
        format!("{page}/dashboard/integrations?google=connected")
    );
    assert!(mirrored, "the signed push reached the demo's microservice");
    assert!(told, "the connect reached the page's events: {last}");
    assert!(ended_status.is_success(), "grant-end: {ended_status}");
    assert!(expired, "the grant's life on the page: {last}");
    assert_eq!(last["app_events"][0]["reason"], "authorization_expired");
    assert_eq!(last["status"]["reconnect_reason"], "authorization_expired");
    assert!(
        receiver_url.is_some(),
        "the receiver's URL is printed:\n{output}"
    );
    assert!(
        listed.contains("connection.authorization_expiring"),
        "GET on the receiver lists the events: {listed}"
    );
}

/// Connects `user` through the demo page as a browser keeping cookies would; where the
/// service's callback sent the browser.
async fn demo_connect(browser: &reqwest::Client, page: &str, user: &str) -> String {
    let answer: serde_json::Value = browser
        .post(format!("{page}/demo/connect"))
        .json(&serde_json::json!({"user_id": user}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let consent = browser
        .get(answer["auth_url"].as_str().expect("auth_url"))
        .send()
        .await
        .unwrap();
    let callback = browser
        .get(crate::support::location(&consent))
        .send()
        .await
        .unwrap();
    crate::support::location(&callback)
}

/// What the page polls for `user`.
async fn demo_state(browser: &reqwest::Client, page: &str, user: &str) -> serde_json::Value {
    browser
        .get(format!("{page}/demo/state?user_id={user}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The types of the app's events in a page state, newest first.
fn event_types(state: &serde_json::Value) -> Vec<String> {
    state["app_events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// "Google revokes this grant" (docs/contract.md section 10): the demo's sandbox Google, its RISC
/// stream registered to the demo's service, sends `tokens-revoked` for the connected account; the
/// receiver answers 202, and the page then shows the user needing a reconnect
/// (`security_event`), the microservice's copy gone and the app told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_google_revokes_the_grant_with_a_security_event() {
    let dir = tempfile::tempdir().unwrap();
    let demo = crate::process::DemoProcess::start(dir.path()).await;
    let page = demo.page_url.clone();
    let browser = crate::process::client();
    let landed = demo_connect(&browser, &page, "risc-user").await;
    let state = || demo_state(&browser, &page, "risc-user");
    let mirrored = eventually(Duration::from_secs(10), || async {
        state().await["microservice"].is_object()
    })
    .await;
    // The stream is registered in the background (key generation is slow in a debug build):
    // the demo says so on its output, or says why not.
    let registered = eventually(Duration::from_secs(30), || async {
        demo.output().contains("RISC stream registered")
            || demo.output().contains("cannot register")
    })
    .await;
    let revoked = browser
        .post(format!("{page}/demo/google-revokes"))
        .json(&serde_json::json!({"user_id": "risc-user"}))
        .send()
        .await
        .unwrap();
    let revoked_status = revoked.status();
    let revoked: serde_json::Value = revoked.json().await.unwrap_or_default();
    let ended = eventually(Duration::from_secs(5), || async {
        let state = state().await;
        state["status"]["reconnect_reason"] == "security_event"
            && state["microservice"].is_null()
            && event_types(&state).first().map(String::as_str) == Some("connection.needs_reconnect")
    })
    .await;
    let last = state().await;
    let output = demo.output();
    drop(demo);
    assert_eq!(
        landed,
        format!("{page}/dashboard/integrations?google=connected")
    );
    assert!(mirrored, "the copy reached the microservice: {last}");
    assert!(
        registered && output.contains("RISC stream registered"),
        "the demo registers the sandbox's stream to its receiver:\n{output}"
    );
    assert!(revoked_status.is_success(), "google-revokes: {revoked}");
    let message = revoked["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("tokens-revoked") && message.ends_with("202"),
        "{revoked}"
    );
    assert!(ended, "the page shows the grant ended by Google: {last}");
    assert_eq!(last["status"]["needs_reconnect"], true, "{last}");
    assert_eq!(last["app_events"][0]["reason"], "security_event", "{last}");
    assert_eq!(
        event_types(&last),
        ["connection.needs_reconnect", "connection.connected"]
    );
}
