//! The checker against the reference microservice (every case passes) and against broken
//! microservices (exactly the cases about what they break fail), through the library's entry
//! point, as `tokenwarden check-microservice` runs it. The broken ones are real HTTP servers
//! started here: a double that ignores versions and signatures, and a proxy that verifies
//! signatures the way microservices did before docs/contract.md section 5a bound a signed body to
//! its request.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{delete, post},
};
use serde_json::{Value, json};
use tokenwarden_check::{CheckArgs, Report};
use tokenwarden_sandbox::{MicroserviceConfig, ReferenceMicroservice, bind_loopback};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const NEW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN: &str = "ms-bearer-token";

const VERSION_CASES: [&str; 3] = ["stale-version", "late-after-delete", "concurrent-versions"];
const SIGNATURE_CASES: [&str; 3] = ["signature-missing", "signature-tampered", "signature-old"];
const REPLAY_CASES: [&str; 4] = [
    "replay-user",
    "replay-version",
    "replay-delete-user",
    "replay-as-delete",
];

async fn reference(config: MicroserviceConfig) -> ReferenceMicroservice {
    ReferenceMicroservice::start(config, bind_loopback().await.unwrap())
        .await
        .unwrap()
}

/// Runs the checker as the binary does; the exit code, what it printed and its errors.
async fn run(args: CheckArgs) -> (u8, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = tokenwarden_check::run(args, &mut out, &mut err).await;
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

/// Runs the checker and returns its results as well.
async fn check(args: CheckArgs) -> (Report, String) {
    let mut out = Vec::new();
    let report = tokenwarden_check::check(args, &mut out).await.unwrap();
    (report, String::from_utf8(out).unwrap())
}

fn args(url: &str, token: Option<&str>, secret: Option<&str>) -> CheckArgs {
    let mut args = CheckArgs::new(url);
    args.token = token.map(str::to_owned);
    args.signing_secret = secret.map(str::to_owned);
    args
}

#[tokio::test]
async fn the_reference_microservice_passes_every_case_and_cleans_up() {
    let ms = reference(MicroserviceConfig::default()).await;
    let (code, out, err) = run(args(&ms.base_url(), None, None)).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.is_empty(), "{err}");
    assert_eq!(out.lines().last(), Some("11 passed, 0 failed"), "{out}");
    assert!(
        out.contains("note: bearer-missing and bearer-wrong not run"),
        "{out}"
    );
    assert!(out.contains("note: signature-missing"), "{out}");
    let header = out.lines().find(|l| l.starts_with("case")).unwrap();
    for column in ["expected", "got", "pass"] {
        assert!(header.contains(column), "{header}");
    }
    for case in ["connect", "missing-scope", "delete-unknown"]
        .into_iter()
        .chain(VERSION_CASES)
    {
        let row = out.lines().find(|l| l.starts_with(case)).unwrap();
        assert!(row.ends_with("yes"), "{row}");
    }
    // Every case deleted its user; only tombstones of versions remain.
    assert_eq!(ms.stored_count().await.unwrap(), 0);
    let users: HashSet<String> = ms.received().into_iter().map(|r| r.user_id).collect();
    assert_eq!(users.len(), 11, "one user per case: {users:?}");
    for user in &users {
        assert!(
            user.starts_with("tokenwarden-check-") && user.len() <= 50,
            "{user}"
        );
    }
}

#[tokio::test]
async fn with_bearer_and_signing_every_case_passes_mid_rotation_too() {
    let ms = reference(MicroserviceConfig {
        bearer_token: Some(TOKEN.into()),
        signing_secret: Some(format!("{SECRET},{NEW_SECRET}")),
        ..Default::default()
    })
    .await;
    for secret in [SECRET, NEW_SECRET, &format!("{NEW_SECRET},{SECRET}")] {
        let (code, out, _) = run(args(&ms.base_url(), Some(TOKEN), Some(secret))).await;
        assert_eq!(code, 0, "{out}");
        assert_eq!(out.lines().last(), Some("20 passed, 0 failed"), "{out}");
        assert!(!out.contains("note:"), "{out}");
    }
    // Every push carried a version; all but the ones meant to lack them carried a signature
    // and the bearer.
    for request in ms.received() {
        assert!(request.token_version.is_some(), "{request:?}");
        let user = request.user_id.as_str();
        if !user.contains("-signature-missing-") {
            assert!(request.webhook_signature.is_some(), "{request:?}");
        }
        if !user.contains("-bearer-") || request.status != 401 {
            assert_eq!(
                request.authorization.as_deref(),
                Some("Bearer ms-bearer-token"),
                "{request:?}"
            );
        }
    }
    assert_eq!(ms.stored_count().await.unwrap(), 0);
}

#[tokio::test]
async fn a_microservice_that_ignores_versions_fails_exactly_the_version_cases() {
    let url = spawn_double(Double::default()).await;
    let (report, out) = check(args(&url, None, None)).await;
    assert_eq!(report.failed_cases(), VERSION_CASES, "{out}");
    assert_eq!(report.exit_code(), 1);
    assert_eq!(out.lines().last(), Some("8 passed, 3 failed"), "{out}");
    let stale = out
        .lines()
        .find(|l| l.starts_with("stale-version"))
        .unwrap();
    assert!(stale.contains("200, 409, 409, 200") && stale.contains("200, 200, 200, 200"));
    assert!(stale.ends_with("NO"), "{stale}");
    let (code, _, _) = run(args(&url, None, None)).await;
    assert_eq!(code, 1);

    // With a bearer check of its own it still fails those and only those.
    let url = spawn_double(Double {
        bearer: Some(TOKEN.into()),
        ..Double::default()
    })
    .await;
    let (report, out) = check(args(&url, Some(TOKEN), None)).await;
    assert_eq!(report.failed_cases(), VERSION_CASES, "{out}");
}

#[tokio::test]
async fn a_microservice_that_accepts_unsigned_pushes_fails_exactly_the_signature_cases() {
    // The reference started without a secret takes any push, signed or not.
    let ms = reference(MicroserviceConfig::default()).await;
    let (report, out) = check(args(&ms.base_url(), None, Some(SECRET))).await;
    let expected: Vec<&str> = SIGNATURE_CASES.into_iter().chain(REPLAY_CASES).collect();
    assert_eq!(report.failed_cases(), expected, "{out}");
    assert_eq!(report.exit_code(), 1);
    assert_eq!(out.lines().last(), Some("11 passed, 7 failed"), "{out}");

    // One that verifies with another secret refuses everything the checker signs.
    let other = reference(MicroserviceConfig {
        signing_secret: Some(NEW_SECRET.into()),
        ..Default::default()
    })
    .await;
    let (report, _) = check(args(&other.base_url(), None, Some(SECRET))).await;
    assert!(report.failed() > 3, "{:?}", report.failed_cases());
}

/// Issue 19: a microservice that verified signatures over the body but not what the body was
/// for took alice's push replayed for mallory, with a pinning version, and a captured DELETE
/// replayed against anyone; the checker passed it 14/14. Now exactly the replay cases fail.
#[tokio::test]
async fn a_microservice_that_does_not_bind_signed_bodies_fails_exactly_the_replay_cases() {
    let upstream = reference(MicroserviceConfig::default()).await;
    let url = spawn_unbound_verifier(upstream.base_url()).await;
    let (code, out, _) = run(args(&url, None, Some(SECRET))).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(out.lines().last(), Some("14 passed, 4 failed"), "{out}");
    let (report, out) = check(args(&url, None, Some(SECRET))).await;
    assert_eq!(report.failed_cases(), REPLAY_CASES, "{out}");
    let replayed = out.lines().find(|l| l.starts_with("replay-user")).unwrap();
    assert!(replayed.contains("200, 401, 404") && replayed.contains("200, 200, 200"));
    assert!(replayed.ends_with("NO"), "{replayed}");
    // The same cases pass against the reference microservice, which binds them.
    let bound = reference(MicroserviceConfig {
        signing_secret: Some(SECRET.into()),
        ..Default::default()
    })
    .await;
    let (report, out) = check(args(&bound.base_url(), None, Some(SECRET))).await;
    assert_eq!(report.exit_code(), 0, "{out}");
    for case in REPLAY_CASES {
        let row = out.lines().find(|l| l.starts_with(case)).unwrap();
        assert!(row.ends_with("yes"), "{row}");
    }
    assert_eq!(
        bound.stored_count().await.unwrap(),
        0,
        "the cases cleaned up"
    );
}

#[tokio::test]
async fn a_microservice_without_a_bearer_check_fails_exactly_the_bearer_cases() {
    let ms = reference(MicroserviceConfig::default()).await;
    let (report, out) = check(args(&ms.base_url(), Some(TOKEN), None)).await;
    assert_eq!(
        report.failed_cases(),
        ["bearer-missing", "bearer-wrong"],
        "{out}"
    );
}

#[tokio::test]
async fn an_unreachable_microservice_fails_every_case() {
    let port = bind_loopback().await.unwrap().local_addr().unwrap().port();
    let (code, out, _) = run(args(&format!("http://127.0.0.1:{port}"), None, None)).await;
    assert_eq!(code, 1);
    assert_eq!(out.lines().last(), Some("0 passed, 11 failed"), "{out}");
    assert!(out.contains("error ("), "{out}");
}

#[tokio::test]
async fn unusable_flags_exit_2_without_showing_secrets() {
    let cases = [
        args("localhost:4000", None, None),
        args("http://127.0.0.1:4000", None, Some("not-a-whsec-secret")),
        args("http://127.0.0.1:4000", None, Some("whsec_%%hidden%%")),
        CheckArgs {
            user_prefix: "a-prefix-far-too-long-for-user-ids".into(),
            ..CheckArgs::new("http://127.0.0.1:4000")
        },
    ];
    for bad in cases {
        let (code, out, err) = run(bad).await;
        assert_eq!(code, 2, "{err}");
        assert!(out.is_empty(), "{out}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(
            !err.contains("hidden") && !err.contains("not-a-whsec"),
            "{err}"
        );
    }
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: CheckArgs,
}

#[test]
fn flags_read_the_environment_and_hide_secrets_in_help() {
    use clap::{CommandFactory, Parser};
    let cli = Cli::try_parse_from([
        "check",
        "http://127.0.0.1:4000",
        "--token",
        "t",
        "--signing-secret",
        SECRET,
        "--user-prefix",
        "ci-",
        "--timeout-ms",
        "500",
    ])
    .unwrap();
    assert_eq!(
        (
            cli.args.url.as_str(),
            cli.args.token.as_deref(),
            cli.args.user_prefix.as_str(),
            cli.args.timeout_ms
        ),
        ("http://127.0.0.1:4000", Some("t"), "ci-", 500)
    );
    let defaults = Cli::try_parse_from(["check", "http://x"]).unwrap().args;
    assert_eq!(defaults.user_prefix, "tokenwarden-check-");
    assert_eq!((defaults.token, defaults.signing_secret), (None, None));

    let command = Cli::command();
    for id in [
        "url",
        "token",
        "signing_secret",
        "user_prefix",
        "timeout_ms",
    ] {
        let arg = command.get_arguments().find(|a| a.get_id() == id).unwrap();
        assert!(arg.get_env().is_some(), "{id} reads the environment");
        assert!(arg.get_help().is_some(), "{id} is explained");
    }
    for secret in ["url", "token", "signing_secret"] {
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == secret)
            .unwrap();
        assert!(arg.is_hide_env_values_set(), "{secret}");
    }
}

/// A test double that keeps SEED.md's contract (bodies, 400s, 404, optionally the bearer) but
/// ignores `Token-Version` and signatures: it answers 200 to everything valid.
#[derive(Clone, Default)]
struct Double {
    bearer: Option<String>,
    users: Arc<Mutex<HashSet<String>>>,
}

async fn spawn_double(double: Double) -> String {
    let listener = bind_loopback().await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = Router::new()
        .route(
            "/api/users/{user_id}/google-calendar/connect",
            post(double_connect),
        )
        .route("/api/google-tokens/{user_id}", delete(double_delete))
        .with_state(double);
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"success": false, "message": message}))).into_response()
}

impl Double {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.bearer else {
            return true;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {expected}"))
    }
}

async fn double_connect(
    State(double): State<Double>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !double.authorized(&headers) {
        return refuse(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "Invalid JSON");
    };
    let field = |name: &str| body[name].as_str().filter(|s| !s.is_empty());
    if ["access_token", "refresh_token", "token_expiry", "scope"]
        .iter()
        .any(|name| field(name).is_none())
    {
        return refuse(StatusCode::BAD_REQUEST, "Missing required fields");
    }
    let expiry = field("token_expiry").unwrap_or_default();
    if chrono::DateTime::parse_from_rfc3339(expiry).is_err() {
        return refuse(StatusCode::BAD_REQUEST, "Invalid token_expiry");
    }
    double.users.lock().unwrap().insert(user_id.clone());
    Json(json!({
        "success": true,
        "message": "Google Calendar connected successfully",
        "user_id": user_id,
        "token_expiry": expiry,
    }))
    .into_response()
}

async fn double_delete(
    State(double): State<Double>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !double.authorized(&headers) {
        return refuse(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    if !double.users.lock().unwrap().remove(&user_id) {
        return refuse(StatusCode::NOT_FOUND, "No tokens found for user");
    }
    Json(json!({
        "success": true,
        "message": "Google Calendar disconnected successfully",
        "user_id": user_id,
    }))
    .into_response()
}

/// A microservice as they were before docs/contract.md section 5a bound a signed body to its
/// request: it verifies the Standard Webhooks signature over the body (401 otherwise), then applies
/// the push, here by handing it to `upstream` (a reference microservice without a secret).
async fn spawn_unbound_verifier(upstream: String) -> String {
    let listener = bind_loopback().await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = Router::new()
        .fallback(unbound_verifier)
        .with_state(upstream);
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

async fn unbound_verifier(
    State(upstream): State<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = standardwebhooks::Webhook::new(SECRET).unwrap();
    if key.verify(&body, &headers).is_err() {
        return refuse(StatusCode::UNAUTHORIZED, "Invalid webhook signature");
    }
    let mut forwarded = reqwest::Client::new()
        .request(method, format!("{upstream}{uri}"))
        .body(body);
    for name in ["token-version", "content-type"] {
        if let Some(value) = headers.get(name) {
            forwarded = forwarded.header(name, value.as_bytes());
        }
    }
    let answer = forwarded.send().await.unwrap();
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
    let body = answer.bytes().await.unwrap();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
