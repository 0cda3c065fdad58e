//! The sandbox Google as a RISC transmitter (docs/contract.md section 10), its Google-facing half:
//! the configuration document, the JWKS (rotation, fetch counting), the stream management API's
//! authentication and `stream:verify` delivering a verification SET to a receiver. The test
//! receiver is a tiny axum server that records what it is sent; SETs are checked with
//! `jsonwebtoken` against the JWKS the sandbox serves. `risc_events` covers each event.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU16, Ordering},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode as AxumStatus},
    routing::post,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokenwarden_sandbox::{
    RiscEvent, SandboxGoogle, SandboxGoogleArgs, SandboxGoogleConfig, ServiceAccountKeyFile,
    SetOptions, bind_loopback,
    google::{PUSH_DELIVERY, RISC_API_AUDIENCE, SUPPORTED_EVENTS, SigningKey},
};

use super::{Cli, Command, client, google, google_with};

pub(crate) const EMAIL: &str = "risc@tw-test.iam.gserviceaccount.com";

/// A SET receiver on loopback that records each request and answers `status` (202).
pub(crate) struct Receiver {
    pub(crate) url: String,
    got: Arc<Mutex<Vec<(String, String)>>>,
    status: Arc<AtomicU16>,
}

impl Receiver {
    pub(crate) async fn start() -> Self {
        type Shared = (Arc<Mutex<Vec<(String, String)>>>, Arc<AtomicU16>);
        async fn take(
            State((got, status)): State<Shared>,
            headers: HeaderMap,
            body: Bytes,
        ) -> AxumStatus {
            let content_type = headers
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body = String::from_utf8_lossy(&body).into_owned();
            got.lock().unwrap().push((content_type, body));
            AxumStatus::from_u16(status.load(Ordering::SeqCst)).unwrap()
        }
        let got = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(202));
        let listener = bind_loopback().await.unwrap();
        let url = format!("http://{}/risc", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/risc", post(take))
            .with_state((got.clone(), status.clone()));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, got, status }
    }

    /// Everything received: (content type, body).
    pub(crate) fn received(&self) -> Vec<(String, String)> {
        self.got.lock().unwrap().clone()
    }

    pub(crate) fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

async fn get_json(url: &str) -> (StatusCode, Value) {
    let response = client().get(url).send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

/// Fetches the sandbox's JWKS over HTTP.
pub(crate) async fn fetch_jwks(google: &SandboxGoogle) -> JwkSet {
    client()
        .get(google.risc_jwks_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Verifies a SET as a receiver would (RS256, key by `kid` from `jwks`, `iss`, `aud`, no
/// `exp` required) and returns its claims.
pub(crate) fn verify_set(token: &str, jwks: &JwkSet, iss: &str, aud: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("kid in JWKS");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[iss]);
    validation.set_audience(&[aud]);
    validation.set_required_spec_claims(&["iss", "aud"]);
    validation.validate_exp = false;
    let key = DecodingKey::from_jwk(jwk).unwrap();
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap()
        .claims
}

/// Calls the stream API with an optional bearer token.
pub(crate) async fn api(
    google: &SandboxGoogle,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let url = format!("{}/v1beta/{path}", google.risc_api_url());
    let mut request = match method {
        "GET" => client().get(url),
        _ => client().post(url),
    };
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A registered service account, its bearer token, and the stream pointed at `url`.
pub(crate) async fn register(google: &SandboxGoogle, url: &str) -> ServiceAccountKeyFile {
    let account = google.create_risc_service_account(EMAIL).await.unwrap();
    let body = json!({
        "delivery": {"delivery_method": PUSH_DELIVERY, "url": url},
        "events_requested": SUPPORTED_EVENTS,
    });
    let token = account.risc_api_token().unwrap();
    let (status, answer) = api(google, "POST", "stream:update", Some(&token), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    account
}

#[tokio::test]
async fn the_configuration_names_the_issuer_jwks_and_stream_api() {
    let google = google().await;
    let (status, config) = get_json(&google.risc_configuration_url()).await;
    assert_eq!(status, StatusCode::OK);
    let base = google.base_url();
    assert_eq!(config["issuer"], json!(base));
    assert_eq!(config["jwks_uri"], json!(format!("{base}/risc/jwks")));
    assert_eq!(config["delivery_methods_supported"], json!([PUSH_DELIVERY]));
    assert_eq!(
        config["configuration_endpoint"],
        json!(format!("{base}/v1beta/stream"))
    );

    let google = google_with(SandboxGoogleConfig {
        risc_issuer: Some("https://accounts.google.com/".into()),
        ..Default::default()
    })
    .await;
    let (_, config) = get_json(&google.risc_configuration_url()).await;
    assert_eq!(config["issuer"], json!("https://accounts.google.com/"));
    assert_eq!(google.risc_issuer(), "https://accounts.google.com/");

    let off = google_with(SandboxGoogleConfig {
        risc: false,
        ..Default::default()
    })
    .await;
    for url in [off.risc_configuration_url(), off.risc_jwks_url()] {
        let response = client().get(url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn the_jwks_publishes_the_current_key_and_counts_fetches() {
    let google = google().await;
    assert_eq!(google.risc_jwks_fetches(), 0);
    let (status, jwks) = get_json(&google.risc_jwks_url()).await;
    assert_eq!(status, StatusCode::OK);
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{jwks}");
    let key = &keys[0];
    assert_eq!(
        (&key["kty"], &key["use"], &key["alg"]),
        (&json!("RSA"), &json!("sig"), &json!("RS256"))
    );
    let kid = google.risc_key_id().await.unwrap();
    assert_eq!(key["kid"], json!(kid));
    assert_eq!(key["e"], json!("AQAB"));
    // base64url of a 2048-bit modulus: 256 bytes, 342 characters, no padding.
    assert_eq!(key["n"].as_str().unwrap().len(), 342);

    fetch_jwks(&google).await;
    fetch_jwks(&google).await;
    assert_eq!(google.risc_jwks_fetches(), 3);
    let (_, state) = get_json(&format!("{}/sandbox/risc", google.base_url())).await;
    assert_eq!(state["jwks_fetches"], json!(3));
    assert_eq!(state["jwks_fetched_at"].as_array().unwrap().len(), 3);
    assert_eq!(state["kid"], json!(kid));
    // Reading the JWKS from Rust is not a fetch.
    google.risc_jwks().await.unwrap();
    assert_eq!(google.risc_jwks_fetches(), 3);
}

#[tokio::test]
async fn rotation_replaces_the_key_and_its_kid() {
    let google = google().await;
    let receiver = Receiver::start().await;
    register(&google, &receiver.url).await;
    let old = google.risc_key_id().await.unwrap();

    let response = client()
        .post(format!("{}/sandbox/risc/rotate", google.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let rotated: Value = response.json().await.unwrap();
    let new = rotated["kid"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated["previous_kid"], json!(old));
    assert_eq!(google.risc_key_id().await.unwrap(), new);

    let jwks = fetch_jwks(&google).await;
    let kids: Vec<_> = jwks.keys.iter().map(|k| k.common.key_id.clone()).collect();
    assert_eq!(kids, vec![Some(new.clone())], "the old key left the JWKS");

    let sent = google
        .send_risc_event(
            RiscEvent::SessionsRevoked { sub: "7".into() },
            SetOptions::default(),
        )
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(&sent.body).unwrap();
    assert_eq!(header.kid.as_deref(), Some(new.as_str()));
    verify_set(
        &sent.body,
        &jwks,
        &google.risc_issuer(),
        "sandbox-client-id",
    );

    assert_ne!(google.rotate_risc_key().await.unwrap(), new);
    assert_eq!(google.risc_state().rotations, 2);
}

#[tokio::test]
async fn the_stream_api_answers_401_without_the_service_accounts_jwt() {
    let google = google().await;
    let account = google.create_risc_service_account(EMAIL).await.unwrap();
    let now = chrono::Utc::now().timestamp();
    let claims = |iss: &str, sub: &str, aud: &str, exp: i64| json!({"iss": iss, "sub": sub, "aud": aud, "iat": now, "exp": exp});
    let own = SigningKey::from_pkcs8_pem(&account.private_key).unwrap();
    let other = SigningKey::generate().await.unwrap();
    let id = account.private_key_id.as_str();
    let bad = [
        ("no token", None),
        ("not a JWT", Some("not-a-jwt".to_owned())),
        (
            "another key",
            Some(
                other
                    .sign_as(id, &claims(EMAIL, EMAIL, RISC_API_AUDIENCE, now + 600))
                    .unwrap(),
            ),
        ),
        (
            "wrong audience",
            Some(
                own.sign_as(
                    id,
                    &claims(EMAIL, EMAIL, "https://risc.googleapis.com", now + 600),
                )
                .unwrap(),
            ),
        ),
        (
            "expired",
            Some(
                own.sign_as(id, &claims(EMAIL, EMAIL, RISC_API_AUDIENCE, now - 600))
                    .unwrap(),
            ),
        ),
        (
            "sub is not the account",
            Some(
                own.sign_as(id, &claims(EMAIL, "x@y", RISC_API_AUDIENCE, now + 600))
                    .unwrap(),
            ),
        ),
        (
            "unknown account",
            Some(
                own.sign_as(id, &claims("x@y", "x@y", RISC_API_AUDIENCE, now + 600))
                    .unwrap(),
            ),
        ),
    ];
    let update =
        json!({"delivery": {"delivery_method": PUSH_DELIVERY, "url": "http://127.0.0.1:9/r"}});
    for (case, token) in &bad {
        for (method, path) in [
            ("GET", "stream"),
            ("POST", "stream:update"),
            ("POST", "stream:verify"),
        ] {
            let (status, body) = api(
                &google,
                method,
                path,
                token.as_deref(),
                Some(update.clone()),
            )
            .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{case} {path}: {body}");
            assert_eq!(body["error"]["status"], json!("UNAUTHENTICATED"), "{case}");
        }
    }
    assert_eq!(google.risc_stream(), None);

    let token = account.risc_api_token().unwrap();
    let (status, body) = api(&google, "GET", "stream", Some(&token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no stream yet: {body}");
    let (status, _) = api(&google, "POST", "stream:update", Some(&token), Some(update)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn stream_update_is_validated_and_read_back() {
    let google = google().await;
    let account = google.create_risc_service_account(EMAIL).await.unwrap();
    let token = account.risc_api_token().unwrap();
    let requested = [SUPPORTED_EVENTS[0], SUPPORTED_EVENTS[6]];
    let stream = |method: &str, url: &str, events: Value| json!({"delivery": {"delivery_method": method, "url": url}, "events_requested": events});
    let bad = [
        stream(
            "https://example.com/poll",
            "http://127.0.0.1:9/r",
            json!(requested),
        ),
        stream(PUSH_DELIVERY, "not a url", json!(requested)),
        stream(
            PUSH_DELIVERY,
            "http://127.0.0.1:9/r",
            json!(["https://example.com/x"]),
        ),
    ];
    for body in bad {
        let (status, answer) =
            api(&google, "POST", "stream:update", Some(&token), Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"]["status"], json!("INVALID_ARGUMENT"));
    }
    let body = stream(PUSH_DELIVERY, "http://127.0.0.1:9/r", json!(requested));
    let (status, _) = api(&google, "POST", "stream:update", Some(&token), Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, got) = api(&google, "GET", "stream", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["delivery"]["url"], json!("http://127.0.0.1:9/r"));
    assert_eq!(got["delivery"]["delivery_method"], json!(PUSH_DELIVERY));
    assert_eq!(got["events_requested"], json!(requested));
    assert_eq!(
        google.risc_stream().unwrap().delivery.url,
        "http://127.0.0.1:9/r"
    );
}

#[tokio::test]
async fn verify_sends_a_verification_set_to_the_receiver() {
    let google = google().await;
    let receiver = Receiver::start().await;
    let account = google.create_risc_service_account(EMAIL).await.unwrap();
    let token = account.risc_api_token().unwrap();
    let verify = Some(json!({"state": "s-123"}));
    let (status, body) = api(
        &google,
        "POST",
        "stream:verify",
        Some(&token),
        verify.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no stream yet");
    assert_eq!(body["error"]["status"], json!("FAILED_PRECONDITION"));

    register(&google, &receiver.url).await;
    let (status, body) = api(
        &google,
        "POST",
        "stream:verify",
        Some(&token),
        verify.clone(),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    let (content_type, set) = &received[0];
    assert_eq!(content_type, "application/secevent+jwt");
    let jwks = fetch_jwks(&google).await;
    let claims = verify_set(set, &jwks, &google.base_url(), "sandbox-client-id");
    assert!(claims.get("exp").is_none(), "{claims}");
    assert!(claims["iat"].is_i64() && claims["jti"].as_str().unwrap().len() >= 16);
    let events = claims["events"].as_object().unwrap();
    assert_eq!(
        events["https://schemas.openid.net/secevent/risc/event-type/verification"],
        json!({"state": "s-123"})
    );
    let sent = google.risc_sent();
    assert_eq!((sent.len(), sent[0].status), (1, Some(202)));

    // A receiver refusing the SET makes verify fail, saying so.
    receiver.answer(400);
    let (status, body) = api(&google, "POST", "stream:verify", Some(&token), verify).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("400"),
        "{body}"
    );
    assert_eq!(google.risc_sent()[1].status, Some(400));
}

#[test]
fn the_risc_flags_parse_with_defaults() {
    use clap::Parser;
    let parse = |args: &[&str]| -> SandboxGoogleArgs {
        let Command::SandboxGoogle(google) = Cli::try_parse_from(args).unwrap().command else {
            panic!("wrong subcommand");
        };
        google
    };
    let args = parse(&["tw", "sandbox-google"]);
    assert!(args.risc && args.risc_issuer.is_none() && args.risc_service_account_key.is_none());
    let args = parse(&[
        "tw",
        "sandbox-google",
        "--risc",
        "false",
        "--risc-issuer",
        "https://accounts.google.com/",
    ]);
    assert!(!args.risc);
    assert_eq!(
        args.risc_issuer.as_deref(),
        Some("https://accounts.google.com/")
    );
    let command = <SandboxGoogleArgs as clap::Args>::augment_args(clap::Command::new("g"));
    let env = |id: &str| {
        command
            .get_arguments()
            .find(|a| a.get_id() == id)
            .and_then(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
    };
    assert_eq!(env("risc").as_deref(), Some("SANDBOX_RISC"));
    assert_eq!(env("risc_issuer").as_deref(), Some("SANDBOX_RISC_ISSUER"));
    assert_eq!(
        env("risc_service_account_key").as_deref(),
        Some("SANDBOX_RISC_SERVICE_ACCOUNT_KEY")
    );
}
