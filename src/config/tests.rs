//! The configuration's unit tests: values parsed through clap as `serve` parses them.

use clap::{Args, FromArgMatches};

use super::*;

fn complete() -> ServeArgs {
    let local = |path: &str| Url::parse(&format!("http://127.0.0.1:1/{path}")).unwrap();
    ServeArgs {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        database_url: "sqlite::memory:".into(),
        database_session_url: None,
        google_client_id: Some("id".into()),
        google_client_secret: Some("secret".into()),
        google_auth_url: local("auth"),
        google_token_url: local("token"),
        google_revoke_url: local("revoke"),
        google_userinfo_url: local("userinfo"),
        microservice_url: Some("http://127.0.0.1:4000/".into()),
        frontend_url: Url::parse("http://localhost:5173/").unwrap(),
        auth_jwt_secret: Some("jwt".into()),
        admin_token: Some("an-admin-token-of-32-characters!".into()),
        token_encryption_key: Some(
            base64::engine::general_purpose::STANDARD
                .encode([7u8; 32])
                .into(),
        ),
        telemetry: TelemetryArgs {
            log_format: LogFormat::Json,
            ..TelemetryArgs::default()
        },
        ..ServeArgs::default()
    }
}

/// `serve` given `--flag value` on its command line (the environment as it is): the settings,
/// or the error line as `serve` prints it, without its `error: `.
fn parse_flag(flag: &str, value: &str) -> Result<ServeArgs, String> {
    let command = ServeArgs::augment_args(clap::Command::new("serve").no_binary_name(true));
    let matches = command
        .try_get_matches_from([format!("--{flag}"), value.to_string()])
        .map_err(|e| {
            let shown = e.to_string();
            assert_eq!(shown.trim().lines().count(), 1, "{shown}");
            shown.trim().trim_start_matches("error: ").to_string()
        })?;
    Ok(ServeArgs::from_arg_matches(&matches).expect("matches of this command"))
}

#[test]
fn complete_settings_parse_and_trailing_slashes_go() {
    let config = complete().into_config().expect("valid");
    assert_eq!(
        config.microservice.url.as_ref().map(BaseUrl::as_str),
        Some("http://127.0.0.1:4000")
    );
    assert_eq!(config.frontend_url, "http://localhost:5173");
    assert_eq!(
        config.google.scopes.last().map(String::as_str),
        Some("email")
    );
    assert_eq!(config.telemetry.log_format, LogFormat::Json);
}

#[test]
fn missing_secret_names_its_variable() {
    let mut args = complete();
    args.admin_token = None;
    let err = args.into_config().unwrap_err().to_string();
    assert_eq!(err, "ADMIN_TOKEN is required but not set");
}

#[test]
fn a_short_admin_token_is_refused_without_echoing_it() {
    let mut args = complete();
    args.admin_token = Some("hunter2".into());
    let err = args.into_config().unwrap_err().to_string();
    assert_eq!(
        err,
        "ADMIN_TOKEN is malformed: it has 7 characters, at least 32 are required \
         (for example: openssl rand -base64 32)"
    );
    let mut args = complete();
    args.admin_token = Some("x".repeat(32).into());
    assert!(args.into_config().is_ok());
}

#[test]
fn short_key_is_refused_without_echoing_it() {
    let mut args = complete();
    args.token_encryption_key = Some("c2hvcnQ=".into());
    let err = args.into_config().unwrap_err().to_string();
    assert!(
        err.starts_with("TOKEN_ENCRYPTION_KEY is malformed"),
        "{err}"
    );
    assert!(!err.contains("c2hvcnQ="));
}

#[test]
fn several_keys_parse_current_first_and_bad_ones_are_named_by_position() {
    let b64 = |b: u8| base64::engine::general_purpose::STANDARD.encode([b; 32]);
    let mut args = complete();
    args.token_encryption_key = Some(format!("{} , {},{}", b64(1), b64(2), b64(3)).into());
    let config = args.into_config().expect("valid");
    assert_eq!(config.encryption_key, [1u8; 32]);
    assert_eq!(config.old_encryption_keys, vec![[2u8; 32], [3u8; 32]]);
    let shown = format!("{config:?}");
    assert!(
        !shown.contains(&b64(1)) && !shown.contains("[1, 1, 1"),
        "{shown}"
    );

    for (value, needle) in [
        (
            format!("{},c2hvcnQ=", b64(1)),
            "key 2 of 2: decodes to 5 bytes",
        ),
        (format!("{},", b64(1)), "key 2 of 2 is empty"),
        (format!("@@@,{}", b64(1)), "key 1 of 2: not valid base64"),
    ] {
        let mut args = complete();
        args.token_encryption_key = Some(value.clone().into());
        let err = args.into_config().unwrap_err().to_string();
        assert!(
            err.starts_with("TOKEN_ENCRYPTION_KEY is malformed"),
            "{err}"
        );
        assert!(err.contains(needle), "{err}");
        assert!(!err.contains(&b64(1)), "{err}");
    }
}

#[test]
fn browser_binding_is_on_unless_switched_off() {
    assert!(complete().into_config().expect("valid").browser_binding);
    for off in ["off", "false", "0", " OFF "] {
        let mut args = complete();
        args.oauth_browser_binding = parse_flag("oauth-browser-binding", off)
            .expect("valid")
            .oauth_browser_binding;
        assert!(!args.into_config().expect("valid").browser_binding, "{off}");
    }
    let err = parse_flag("oauth-browser-binding", "maybe")
        .err()
        .expect("refused");
    assert!(
        err.starts_with("OAUTH_BROWSER_BINDING is malformed"),
        "{err}"
    );
}

#[test]
fn connection_limits_parse_and_zero_is_refused_by_name() {
    let config = complete().into_config().expect("valid");
    assert_eq!(config.http.header_read_timeout, Duration::from_secs(10));
    assert_eq!(config.http.max_connections, 10000);
    let err = parse_flag("http-header-read-timeout-secs", "0")
        .err()
        .expect("refused");
    assert!(
        err.starts_with("HTTP_HEADER_READ_TIMEOUT_SECS is malformed"),
        "{err}"
    );
    let err = parse_flag("http-max-connections", "many")
        .err()
        .expect("refused");
    assert!(
        err.starts_with("HTTP_MAX_CONNECTIONS is malformed"),
        "{err}"
    );
}

#[test]
fn userinfo_is_stripped_from_shown_urls() {
    for (url, shown) in [
        (
            "https://user:pass@ms.example/base",
            "https://ms.example/base",
        ),
        ("https://user@ms.example", "https://ms.example"),
        ("http://u:p%40ss@127.0.0.1:4000", "http://127.0.0.1:4000"),
        ("http://a@b:c@[::1]:4000/x?y=z", "http://[::1]:4000/x?y=z"),
        (
            "https://ms.example/users/a@b?c=d@e",
            "https://ms.example/users/a@b?c=d@e",
        ),
        ("https://ms.example", "https://ms.example"),
        ("not a url", "not a url"),
    ] {
        assert_eq!(without_userinfo(url), shown, "{url}");
    }
    let mut args = complete();
    args.microservice_url = Some("https://tw:hunter2@ms.example".into());
    let shown = format!("{:?}", args.into_config().expect("valid"));
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn malformed_number_names_its_variable() {
    let err = parse_flag("refresh-lead-secs", "soon")
        .err()
        .expect("refused");
    assert!(err.starts_with("REFRESH_LEAD_SECS is malformed"), "{err}");
    assert_eq!(
        parse_flag("refresh-lead-secs", "0")
            .expect("valid")
            .refresh_lead_secs,
        Secs(0)
    );
}

#[test]
fn malformed_urls_are_named_without_echoing_them() {
    let err = parse_flag("google-token-url", "ftp://u:hunter2@x")
        .err()
        .expect("refused");
    assert!(
        err.starts_with("GOOGLE_OAUTH_TOKEN_URL is malformed"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    let err = parse_flag("listen-addr", "localhost")
        .err()
        .expect("refused");
    assert!(err.starts_with("LISTEN_ADDR is malformed"), "{err}");
}

#[test]
fn defaults_are_the_documented_ones() {
    let config = ServeArgs {
        google_client_id: Some("id".into()),
        google_client_secret: Some("secret".into()),
        auth_jwt_secret: Some("jwt".into()),
        admin_token: Some("an-admin-token-of-32-characters!".into()),
        token_encryption_key: complete().token_encryption_key,
        ..ServeArgs::default()
    }
    .into_config()
    .expect("valid");
    assert_eq!(config.listen_addr.to_string(), "127.0.0.1:3000");
    assert_eq!(config.database_url, "sqlite://tokenwarden.db?mode=rwc");
    assert_eq!(config.database_session_url, config.database_url);
    assert_eq!(
        config.google.token_url.as_str(),
        "https://oauth2.googleapis.com/token"
    );
    assert_eq!(config.google.timeout, Duration::from_secs(10));
    assert_eq!(config.microservice.url, None);
    assert_eq!(config.microservice.retry_max, Duration::from_secs(60));
    assert_eq!(config.refresh.lead, Duration::from_secs(300));
    assert_eq!(config.refresh.jitter_max, Duration::from_secs(30));
    assert_eq!(config.refresh.concurrency, 64);
    assert_eq!(config.refresh.hibernate_after, Duration::from_secs(60));
    assert_eq!(config.frontend_url, "http://localhost:5173");
    assert!(config.browser_binding);
    assert!(
        config.app_events.is_none(),
        "no events unless APP_EVENTS_URL is set"
    );
    assert_eq!(
        config.authorization_expiry_warning,
        Duration::from_secs(259_200)
    );
    assert_eq!(config.telemetry.log_format, LogFormat::Pretty);
    assert_eq!(config.telemetry.service_name, "tokenwarden");
    let shown = format!(
        "{:?}",
        TelemetryArgs {
            otel_endpoint: Some("https://u:hunter2@collector.example".into()),
            ..TelemetryArgs::default()
        }
    );
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn app_events_parse_and_never_show_their_secrets() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut args = complete();
    args.app_events_url = Some(" https://u:hunter2@app.test/hooks/tokenwarden ".into());
    args.app_events_signing_secret = Some(format!("{secret},{secret}").into());
    let config = args.into_config().expect("valid");
    let events = config.app_events.clone().expect("on");
    assert_eq!(
        events.url.as_str(),
        "https://u:hunter2@app.test/hooks/tokenwarden"
    );
    assert_eq!(events.timeout, Duration::from_secs(10));
    assert!(events.signer.is_some());
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("MfKQ"),
        "{shown}"
    );
    assert!(
        shown.contains("https://app.test/hooks/tokenwarden"),
        "{shown}"
    );

    // Empty means unset, as compose files write it.
    let mut args = complete();
    args.app_events_url = Some("  ".into());
    assert!(args.into_config().unwrap().app_events.is_none());

    let mut args = complete();
    args.app_events_url = Some("http://127.0.0.1:4200/events".into());
    args.app_events_signing_secret = Some("not-a-secret".into());
    let err = args.into_config().unwrap_err().to_string();
    assert_eq!(
        err,
        "APP_EVENTS_SIGNING_SECRET is malformed: secret 1 of 1 does not start with whsec_"
    );
    for (flag, value, var) in [
        ("app-events-timeout-ms", "0", "APP_EVENTS_TIMEOUT_MS"),
        (
            "authorization-expiry-warning-secs",
            "soon",
            "AUTHORIZATION_EXPIRY_WARNING_SECS",
        ),
    ] {
        let err = parse_flag(flag, value).err().expect("refused");
        assert!(err.starts_with(&format!("{var} is malformed")), "{err}");
    }
}
