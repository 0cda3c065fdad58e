//! The events' variables as the real binary reads them: a malformed one stops `serve` with one
//! line naming it and never echoing it, and `--help` shows neither the secret nor the URL's
//! credentials, for `serve` and the reference receiver alike.

use crate::process::tokenwarden;
use crate::support::{ADMIN_TOKEN, CLIENT_ID, CLIENT_SECRET, ENCRYPTION_KEY, JWT_SECRET};

const SECRET: &str = "hunter2secret";

fn serve_with(var: &str, value: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = tokenwarden(dir.path())
        .env("GOOGLE_CALENDAR_CLIENT_ID", CLIENT_ID)
        .env("GOOGLE_CALENDAR_CLIENT_SECRET", CLIENT_SECRET)
        .env("AUTH_JWT_SECRET", JWT_SECRET)
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TOKEN_ENCRYPTION_KEY", ENCRYPTION_KEY)
        .env(var, value)
        .output()
        .unwrap();
    assert!(!output.status.success(), "{var}={value} refused");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("{var} is malformed")), "{stderr}");
    stderr
}

#[test]
fn malformed_event_settings_stop_serve_naming_them() {
    let stderr = serve_with(
        "APP_EVENTS_URL",
        &format!("ftp://u:{SECRET}@app.test/events"),
    );
    assert!(!stderr.contains(SECRET), "{stderr}");
    let stderr = serve_with("APP_EVENTS_SIGNING_SECRET", &format!("whsec_{SECRET}!"));
    assert!(!stderr.contains(SECRET), "{stderr}");
    serve_with("APP_EVENTS_TIMEOUT_MS", "0");
    serve_with("AUTHORIZATION_EXPIRY_WARNING_SECS", "3 days");
}

#[test]
fn help_shows_neither_the_secret_nor_the_urls_credentials() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["serve", "--help"][..], &["app-events-receiver", "--help"]] {
        let output = tokenwarden(dir.path())
            .args(args)
            .env(
                "APP_EVENTS_URL",
                format!("https://u:{SECRET}@app.test/events"),
            )
            .env("APP_EVENTS_SIGNING_SECRET", SECRET)
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{args:?}: {help}");
        assert!(!help.contains(SECRET), "{args:?}: {help}");
        assert!(help.contains("APP_EVENTS_SIGNING_SECRET"), "{help}");
    }
    let help = tokenwarden(dir.path()).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("app-events-receiver"));
}
