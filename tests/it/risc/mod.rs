//! Google's security events (docs/contract.md section 10) at the receiver, over real HTTP: a Google
//! stand-in (`Transmitter`, a real server on loopback serving the RISC configuration and a JWKS,
//! with test keys kept beside this file) signs SETs as Google does; the service must act on the
//! valid ones within 2 s and refuse the rest with RFC 8935's codes, changing nothing.
//!
//! - `actions`: each event type by account and by token, on both backends;
//! - `refusals`: every way a SET is invalid, duplicates, and the key set's refetch bound.

mod actions;
mod refusals;
mod sandbox;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::get};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::{CLIENT_ID, Options, TestApp, eventually};

/// The key the stand-in publishes, and one it does not.
pub const KEY_DER: &[u8] = include_bytes!("test_key.der");
pub const OTHER_KEY_DER: &[u8] = include_bytes!("other_key.der");
pub const PUBLIC_PEM: &str = include_str!("test_key.pub.pem");
/// The public key's modulus (base64url), as the JWKS carries it.
const MODULUS: &str = "wLxV2LA_v1HNCSp_JUO0eD0CGxFqVUVGLLQcM70bOX9Go0f7uXQtmBd0msWGEGeg-aG_Q0U7xRedmYYcbb-frAKwImj5VYk3Cu3vs40ZGYyZ02vtIY6xfLs-CY0ftH0STq8GM_1NfSLBOAwlZWfNiOpXdYtIB6CvJSD_Yq-fN29SxfmUC63N7-FQLgBWa49hsvXgdB7HqAp6Io5VG7ZPQ3cPW-aG2573X34LOUkmVZGGx6faeXPBU2HB-32YiNpO2HFhbf3HAh6ctCjQpQl-X_xydDHmtDM4L5BVKEwN1APhEhOsByfDPhPblzczK7-j5w-ji9mwgXmBumC33PpT-w";
pub const KID: &str = "test-key-1";
pub const ISSUER: &str = "https://accounts.google.test";
pub const OAUTH: &str = "https://schemas.openid.net/secevent/oauth/event-type/";
pub const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";

/// A Google stand-in serving the RISC configuration and the key set, counting fetches.
pub struct Transmitter {
    pub base: String,
    pub jwks_fetches: Arc<AtomicUsize>,
}

impl Transmitter {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        let fetches = Arc::new(AtomicUsize::new(0));
        let config = json!({
            "issuer": ISSUER,
            "jwks_uri": format!("{base}/jwks"),
            "delivery_methods_supported": ["https://schemas.openid.net/secevent/risc/delivery-method/push"],
        });
        let router = Router::new()
            .route(
                "/.well-known/risc-configuration",
                get(move || async move { Json(config) }),
            )
            .route(
                "/jwks",
                get(|State(fetches): State<Arc<AtomicUsize>>| async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    Json(json!({"keys": [{
                        "kty": "RSA", "alg": "RS256", "use": "sig", "kid": KID,
                        "n": MODULUS, "e": "AQAB"
                    }]}))
                }),
            )
            .with_state(fetches.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self {
            base,
            jwks_fetches: fetches,
        }
    }

    pub fn configuration_url(&self) -> String {
        format!("{}/.well-known/risc-configuration", self.base)
    }
}

/// The claims of a SET as Google sends it: no `exp`.
pub fn claims(event_type: &str, event: Value) -> Value {
    json!({
        "iss": ISSUER,
        "aud": CLIENT_ID,
        "iat": chrono::Utc::now().timestamp(),
        "jti": format!("jti-{}", rand::random::<u64>()),
        "events": { event_type: event },
    })
}

/// `claims` signed RS256 with `key_der` (PKCS#1) under `kid`.
pub fn sign_with(claims: &Value, key_der: &[u8], kid: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_string());
    header.typ = Some("secevent+jwt".into());
    let key = EncodingKey::from_rsa_der(key_der);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// `claims` signed as Google would.
pub fn sign(claims: &Value) -> String {
    sign_with(claims, KEY_DER, KID)
}

pub fn account(sub: &str) -> Value {
    json!({"subject": {"subject_type": "iss-sub", "iss": ISSUER, "sub": sub}})
}

pub fn token(alg: &str, value: &str) -> Value {
    json!({"subject": {"subject_type": "oauth_token", "token_type": "refresh_token",
        "token_identifier_alg": alg, "token": value}})
}

/// The Google account id (`sub`) `user` is connected with, as the sandbox issued it.
pub async fn sub_of(t: &TestApp, user: &str) -> String {
    let email = t.status(user).await["google_email"]
        .as_str()
        .expect("a connected user's email")
        .to_string();
    t.google
        .grant(&tokenwarden_sandbox::GrantSelector::Email(email))
        .expect("the grant")
        .sub
}

/// A service wired to a stand-in, with `alice` connected.
pub async fn app_with_alice(options: Options) -> (TestApp, Transmitter) {
    let transmitter = Transmitter::start().await;
    let t = TestApp::spawn_with(Options {
        risc_configuration_url: Some(transmitter.configuration_url()),
        ..options
    })
    .await;
    t.connect("alice").await;
    let pushed = eventually(Duration::from_secs(5), || async {
        t.microservice.stored("alice").await.unwrap().is_some()
    })
    .await;
    assert!(pushed);
    (t, transmitter)
}

/// POSTs a SET body as Google does; the status and the body.
pub async fn post(t: &TestApp, body: impl Into<reqwest::Body>) -> (u16, String) {
    let response = t
        .http
        .post(format!("{}/api/integrations/google/risc", t.url))
        .header("content-type", "application/secevent+jwt")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}
