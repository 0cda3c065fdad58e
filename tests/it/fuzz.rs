//! Property tests (proptest) on the three parsers that take outside input: the OAuth
//! callback's query, the user JWT check, and Google's token responses. Each property runs a
//! bounded number of cases (the whole file takes a few seconds) and fails on any panic.
//! Failing cases found while writing them are kept as plain regression tests at the end.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, http::StatusCode, response::IntoResponse, routing::post};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::{
    prelude::*,
    test_runner::{Config as ProptestConfig, TestCaseError, TestRunner},
};
use reqwest::Method;
use sea_orm::{EntityTrait, PaginatorTrait};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokenwarden::{
    config::GoogleConfig,
    google::{GoogleClient, GoogleError, TokenSet},
    http::{valid_user_id, verify_jwt},
    store::entity::{oauth_state, user},
};
use tokenwarden_sandbox::bind_loopback;

use crate::support::{JWT_SECRET, TestApp, location};

/// Every `reason` the callback may redirect with (docs/api.md, "reason codes").
const REASONS: [&str; 13] = [
    "access_denied",
    "invalid_scope",
    "invalid_request",
    "unauthorized_client",
    "google_unavailable",
    "oauth_error",
    "invalid_state",
    "missing_code",
    "exchange_failed",
    "no_refresh_token",
    "server_error",
    "browser_mismatch",
    "missing_scope",
];
const ERROR_BASE: &str = "http://frontend.test/dashboard/integrations?google=error&reason=";

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// (a) The callback's query.

/// One query parameter: a name the callback reads (or not), and any value.
fn param(states: Vec<String>) -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![
        3 => Just("state".to_string()),
        3 => Just("code".to_string()),
        2 => Just("error".to_string()),
        1 => Just("scope".to_string()),
        1 => "[A-Za-z_]{0,8}",
    ];
    let value = prop_oneof![
        3 => any::<String>(),
        2 => "[A-Za-z0-9_-]{0,64}",
        1 => proptest::sample::select(states),
        1 => proptest::sample::select(REASONS.map(String::from).to_vec()),
        1 => "x{129,6000}",
    ];
    (name, value)
}

/// A whole query: well-formed pairs (percent-encoded), or raw printable junk.
fn query(states: Vec<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::collection::vec(param(states), 0..6).prop_map(|pairs| {
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish()
        }),
        2 => "[ -~]{0,300}",
        1 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(|bytes| {
            bytes.iter().map(|b| format!("%{b:02X}")).collect::<String>()
        }),
    ]
}

async fn callback_location(t: &TestApp, query: &str) -> Result<String, TestCaseError> {
    let raw = format!("{}/api/integrations/google/callback?{query}", t.url);
    let Ok(url) = url::Url::parse(&raw) else {
        // Not sendable by any client; nothing to test.
        return Err(TestCaseError::reject("not a URL"));
    };
    let response = t.http.get(url).send().await.unwrap();
    prop_assert_eq!(response.status(), StatusCode::FOUND, "{}", query);
    Ok(location(&response))
}

#[test]
fn callback_answers_any_query_with_a_known_reason_and_writes_nothing() {
    let rt = runtime();
    let t = rt.block_on(TestApp::spawn());
    // Real states (one-time: the first case that uses one consumes it).
    let states: Vec<String> = rt.block_on(async {
        let mut states = Vec::new();
        for i in 0..10 {
            let auth_url = t.start_connect(&format!("fz-{i}")).await;
            let url = url::Url::parse(&auth_url).unwrap();
            let state = url.query_pairs().find(|(k, _)| k == "state").unwrap().1;
            states.push(state.to_string());
        }
        states
    });
    let result = runner(256).run(&query(states), |query| {
        let location = rt.block_on(callback_location(&t, &query))?;
        let reason = location.strip_prefix(ERROR_BASE);
        prop_assert!(reason.is_some(), "{} -> {}", query, location);
        prop_assert!(
            REASONS.contains(&reason.unwrap()),
            "{} -> unknown reason in {}",
            query,
            location
        );
        Ok(())
    });
    rt.block_on(async {
        let db = t.app().store.connection();
        assert_eq!(
            user::Entity::find().count(db).await.unwrap(),
            0,
            "no user row"
        );
        assert!(t.microservice.received().is_empty());
        let (_, actors) = t.admin(Method::GET, "/admin/actors").await;
        assert_eq!(actors["total"], 0);
        // Only the states made above ever existed; used ones are gone.
        assert!(oauth_state::Entity::find().count(db).await.unwrap() <= 10);
    });
    rt.block_on(t.shutdown());
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// (b) The JWT check.

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn sign(alg: Algorithm, claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn valid_token() -> String {
    sign(
        Algorithm::HS256,
        &json!({"sub": "alice", "exp": now() + 3600}),
        JWT_SECRET.as_bytes(),
    )
}

/// A change to a token: replace, delete or insert one character, or cut it short.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, char),
    Delete(usize),
    Insert(usize, char),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let c = prop_oneof![
        proptest::char::ranges(vec!['A'..='Z', 'a'..='z', '0'..='9'].into()),
        Just('.'),
        Just('-'),
        Just('_'),
        Just('='),
        any::<char>(),
    ];
    prop_oneof![
        (any::<usize>(), c.clone()).prop_map(|(i, c)| Mutation::Replace(i, c)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), c).prop_map(|(i, c)| Mutation::Insert(i, c)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(token: &str, mutations: &[Mutation]) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    for m in mutations {
        let len = chars.len().max(1);
        match *m {
            Mutation::Replace(i, c) if !chars.is_empty() => chars[i % len] = c,
            Mutation::Delete(i) if !chars.is_empty() => {
                chars.remove(i % len);
            }
            Mutation::Insert(i, c) => chars.insert(i % (chars.len() + 1), c),
            Mutation::Truncate(i) => chars.truncate(i % len),
            _ => {}
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn jwt_check_refuses_arbitrary_strings(token in prop_oneof![any::<String>(), "[A-Za-z0-9_.=-]{0,400}"]) {
        prop_assert!(verify_jwt(&token, JWT_SECRET.as_bytes()).is_err());
    }

    #[test]
    fn jwt_check_refuses_every_mutation_of_a_valid_token(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let original = valid_token();
        let mutated = mutate(&original, &mutations);
        let result = verify_jwt(&mutated, JWT_SECRET.as_bytes());
        if mutated == original {
            prop_assert_eq!(result.ok(), Some("alice".into()));
        } else {
            prop_assert!(result.is_err(), "accepted a changed token: {}", mutated);
        }
    }

    #[test]
    fn jwt_check_accepts_exactly_hs256_right_key_future_exp_valid_sub(
        sub in prop_oneof!["[A-Za-z0-9._@-]{1,50}", any::<String>()],
        exp in prop_oneof![Just(None), (5i64..1_000_000).prop_map(Some), (-1_000_000i64..-5).prop_map(Some)],
        alg in proptest::sample::select(vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]),
        right_key in any::<bool>(),
        extra in proptest::collection::btree_map("[a-z]{1,6}", any::<i32>(), 0..3),
    ) {
        let mut claims = json!({"sub": sub});
        for (k, v) in &extra {
            if k != "sub" && k != "exp" {
                claims[k] = json!(v);
            }
        }
        if let Some(offset) = exp {
            claims["exp"] = json!(now() + offset);
        }
        let secret: &[u8] = if right_key { JWT_SECRET.as_bytes() } else { b"another-secret-entirely" };
        let token = sign(alg, &claims, secret);
        let should_pass = alg == Algorithm::HS256
            && right_key
            && exp.is_some_and(|o| o > 0)
            && valid_user_id(&sub);
        let result = verify_jwt(&token, JWT_SECRET.as_bytes());
        prop_assert_eq!(result.is_ok(), should_pass, "{:?}", claims);
        if let Ok(who) = result {
            prop_assert_eq!(who, sub);
        }
    }

    #[test]
    fn jwt_check_refuses_alg_none_and_odd_exp(
        header in prop_oneof![
            Just(r#"{"alg":"none","typ":"JWT"}"#.to_string()),
            Just(r#"{"alg":"None"}"#.to_string()),
            Just(r#"{"alg":"HS256","crit":["x"]}"#.to_string()),
            "\\{\"alg\":\"[A-Za-z0-9]{0,8}\"\\}",
        ],
        exp in prop_oneof![
            Just(json!(null)), Just(json!("9999999999")), Just(json!(1e300)), Just(json!(-1)),
            Just(json!(u64::MAX)), Just(json!([1])), any::<f64>().prop_map(|f| json!(f)),
        ],
        signature in "[A-Za-z0-9_-]{0,64}",
    ) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = json!({"sub": "alice", "exp": exp});
        let token = format!(
            "{}.{}.{}",
            b64.encode(header.as_bytes()),
            b64.encode(claims.to_string().as_bytes()),
            signature
        );
        prop_assert!(verify_jwt(&token, JWT_SECRET.as_bytes()).is_err());
        // Signed for real, an exp that is not a whole future number is still refused.
        let signed = sign(Algorithm::HS256, &claims, JWT_SECRET.as_bytes());
        if let Ok(who) = verify_jwt(&signed, JWT_SECRET.as_bytes()) {
            prop_assert_eq!(who, "alice");
            let n = exp.as_f64().unwrap_or(0.0);
            prop_assert!(n > now() as f64, "accepted exp {}", exp);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (c) Google's token responses.

/// What the fake token endpoint answers next.
#[derive(Clone)]
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, String::from_utf8_lossy(&self.body))
    }
}

/// A token endpoint on loopback that answers whatever it is told to.
struct FakeTokenEndpoint {
    addr: SocketAddr,
    next: Arc<Mutex<Answer>>,
}

impl FakeTokenEndpoint {
    async fn start() -> Self {
        let next = Arc::new(Mutex::new(Answer {
            status: 200,
            body: Vec::new(),
        }));
        let answer = next.clone();
        let router = Router::new().route(
            "/token",
            post(move || {
                let answer = answer.lock().unwrap().clone();
                async move {
                    (
                        StatusCode::from_u16(answer.status).unwrap(),
                        [("content-type", "application/json")],
                        answer.body,
                    )
                        .into_response()
                }
            }),
        );
        let listener = bind_loopback().await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { addr, next }
    }

    fn client(&self) -> GoogleClient {
        let base = format!("http://{}", self.addr);
        let url = |path: &str| url::Url::parse(&format!("{base}{path}")).unwrap();
        GoogleClient::new(&GoogleConfig {
            client_id: "fuzz-client".into(),
            client_secret: SecretString::from("fuzz-secret"),
            redirect_uri: url("/callback"),
            scopes: vec!["openid".into()],
            required_scopes: Vec::new(),
            auth_url: url("/auth"),
            token_url: url("/token"),
            revoke_url: url("/revoke"),
            userinfo_url: url("/userinfo"),
            timeout: Duration::from_secs(2),
        })
        .unwrap()
    }
}

/// A token-looking secret; the property checks none of these reaches an error message.
fn secret_token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{12,40}".prop_map(|s| format!("ya29.SECRET{s}"))
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::from),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field that is a secret token most of the time, else anything.
fn token_field() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        4 => secret_token().prop_map(|s| Some(Value::from(s))),
        1 => json_leaf().prop_map(Some),
        1 => Just(None),
    ]
}

/// Bodies shaped like Google's answers, with every field possibly wrong.
fn token_shaped() -> impl Strategy<Value = Value> {
    let expires_in = prop_oneof![
        Just(None),
        (0u64..100_000).prop_map(|n| Some(json!(n))),
        (0u32..20).prop_map(|e| Some(json!(10u64.pow(e)))),
        any::<u64>().prop_map(|n| Some(json!(n))),
        any::<i64>().prop_map(|n| Some(json!(n))),
        json_leaf().prop_map(Some),
    ];
    let token_type = prop_oneof![
        Just(Some(json!("Bearer"))),
        Just(Some(json!("bearer"))),
        Just(None),
        json_leaf().prop_map(Some),
    ];
    let error = prop_oneof![
        3 => Just(None),
        1 => proptest::sample::select(vec![
            "invalid_grant", "invalid_client", "invalid_request", "unauthorized_client",
            "unsupported_grant_type", "invalid_scope", "admin_policy_enforced", "deleted_client",
            "internal_failure", "temporarily_unavailable",
        ]).prop_map(|e| Some(json!(e))),
        1 => "[a-z_]{1,20}".prop_map(|e| Some(json!(e))),
    ];
    (
        token_field(),
        token_field(),
        token_field(),
        expires_in,
        token_type,
        prop_oneof![Just(None), ".{0,40}".prop_map(|s| Some(json!(s)))],
        error,
        prop_oneof![
            Just(None),
            secret_token().prop_map(|s| Some(json!(format!("about {s}"))))
        ],
    )
        .prop_map(
            |(access, refresh, id, expires_in, token_type, scope, error, description)| {
                let mut body = serde_json::Map::new();
                for (name, value) in [
                    ("access_token", access),
                    ("refresh_token", refresh),
                    ("id_token", id),
                    ("expires_in", expires_in),
                    ("token_type", token_type),
                    ("scope", scope),
                    ("error", error),
                    ("error_description", description),
                ] {
                    if let Some(value) = value {
                        body.insert(name.into(), value);
                    }
                }
                Value::Object(body)
            },
        )
}

fn answer() -> impl Strategy<Value = Answer> {
    let status = proptest::sample::select(vec![
        200u16, 200, 200, 201, 400, 401, 403, 404, 429, 500, 503,
    ]);
    let body = prop_oneof![
        5 => token_shaped().prop_map(|v| v.to_string().into_bytes()),
        2 => any_json().prop_map(|v| v.to_string().into_bytes()),
        1 => proptest::collection::vec(any::<u8>(), 0..256),
        1 => Just(Vec::new()),
    ];
    (status, body).prop_map(|(status, body)| Answer { status, body })
}

/// The token-like strings of a body: the token fields and the description, wherever they
/// are long enough to be a secret (the `error` code itself is meant to be reported).
fn secrets_in(body: &[u8]) -> Vec<String> {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    [
        "access_token",
        "refresh_token",
        "id_token",
        "error_description",
    ]
    .iter()
    .filter_map(|name| fields.get(*name)?.as_str())
    .filter(|s| s.len() >= 12)
    .map(String::from)
    .collect()
}

/// The answer, classified, must never panic, and errors must not carry the body's secrets.
fn check_answer(
    answer: &Answer,
    result: Result<TokenSet, GoogleError>,
) -> Result<(), TestCaseError> {
    match result {
        Ok(tokens) => {
            prop_assert!((200..300).contains(&answer.status), "{:?}", answer);
            let body: Value = serde_json::from_slice(&answer.body).unwrap();
            prop_assert_eq!(
                Some(tokens.access_token.expose_secret()),
                body["access_token"].as_str()
            );
            prop_assert!(tokens.expires_at > chrono::Utc::now() - chrono::Duration::seconds(5));
            // Debug never shows a token either.
            let shown = format!("{tokens:?}");
            // A fuzzed token of a character or two occurs in any text by chance, so short
            // ones are covered by the field never being shown at all.
            prop_assert!(!shown.contains("access_token"));
            let secret = tokens.access_token.expose_secret();
            prop_assert!(secret.len() < 12 || !shown.contains(secret));
        }
        Err(e) => {
            let message = e.to_string();
            let debug = format!("{e:?}");
            for secret in secrets_in(&answer.body) {
                prop_assert!(
                    !message.contains(&secret) && !debug.contains(&secret),
                    "error echoes the body: {}",
                    message
                );
            }
            if matches!(answer.status, 429 | 500..=599) {
                prop_assert!(matches!(e, GoogleError::Transient(_)), "{:?}", e);
            }
        }
    }
    Ok(())
}

#[test]
fn token_responses_are_classified_never_panic_never_echo_tokens() {
    let rt = runtime();
    let endpoint = rt.block_on(FakeTokenEndpoint::start());
    let google = endpoint.client();
    let result = runner(384).run(&(answer(), any::<bool>()), |(answer, refresh)| {
        *endpoint.next.lock().unwrap() = answer.clone();
        let result = rt.block_on(async {
            if refresh {
                google
                    .refresh("fuzz-user", &SecretString::from("1//refresh-token"))
                    .await
            } else {
                google
                    .exchange_code("fuzz-user", "4/code", &SecretString::from("v".repeat(43)))
                    .await
            }
        });
        check_answer(&answer, result)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Regression cases: edge answers kept as plain tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_response_edge_cases() {
    let endpoint = FakeTokenEndpoint::start().await;
    let google = endpoint.client();
    let cases: Vec<(u16, String)> = vec![
        // Lifetimes past the calendar's end must not overflow the expiry.
        (200, json!({"access_token": "ya29.SECRETlongfuture", "token_type": "Bearer", "expires_in": 100_000_000_000_000u64}).to_string()),
        (200, json!({"access_token": "ya29.SECRETmaxfuture", "token_type": "Bearer", "expires_in": u64::MAX}).to_string()),
        (200, json!({"access_token": "ya29.SECRETnegative", "token_type": "Bearer", "expires_in": -1}).to_string()),
        (200, json!({"access_token": "ya29.SECRETzero", "token_type": "Bearer", "expires_in": 0}).to_string()),
        (200, json!({"access_token": "ya29.SECRETfloat", "token_type": "Bearer", "expires_in": 3599.9}).to_string()),
        (200, json!({"access_token": 12345678901234u64, "token_type": "Bearer"}).to_string()),
        (200, json!({"token_type": "Bearer", "refresh_token": "1//SECRETonlyrefresh"}).to_string()),
        (400, json!({"error": "invalid_grant", "error_description": "ya29.SECRETdescription"}).to_string()),
        (400, json!({"error": 7, "access_token": "ya29.SECRETwitherror"}).to_string()),
        (200, "ya29.SECRETplaintext".to_string()),
        (200, String::new()),
    ];
    for (status, body) in cases {
        let answer = Answer {
            status,
            body: body.into_bytes(),
        };
        *endpoint.next.lock().unwrap() = answer.clone();
        let result = google
            .refresh("fuzz-user", &SecretString::from("1//refresh-token"))
            .await;
        eprintln!("{answer:?} -> {:?}", result.as_ref().map(|t| t.expires_at));
        if let Err(e) = check_answer(&answer, result) {
            panic!("{answer:?}: {e}");
        }
    }
}
